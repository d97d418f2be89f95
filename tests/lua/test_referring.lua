-- Referring segmentation (data.task: referring, fmseg.eval.referring) on a
-- tiny dataset in the refer layout (tests/fixtures/refer/, refs(unc).p
-- pickled by Python, tests/tools/make_refer_fixtures.py) with a test recipe
-- that segments the colour its expression names
-- (tests/lua/recipes/test_expression.lua): every sentence of the split's
-- refs is an item, its mask the ref's polygons (two of them summed); oIoU
-- is Σ I / Σ U, mIoU the mean IoU, both against a direct count; a polygon
-- of two points and a ref whose image is missing are skipped naming the
-- refs file and the entry, the run going on; other splits are not read;
-- shards merge; a recipe without expressions is refused.
local tap = require("tap")
local tiny = require("tiny_data")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")
local image = require("fmseg.image")
local runs = require("fmseg.eval.runs")
local T = require("fmseg.tensor")

local ROOT = core.root
local tmp = tiny.tmpdir("referring")
local R = tmp .. "/refer"
tiny.sh(("mkdir -p %s/images/mscoco/images/train2014 && cp -r %s/tests/fixtures/refer/refcoco %s/"):format(R, ROOT, R))

-- image 1: a red block near ann 11's polygon, blue blocks near ann 12's; image 2: green
local function block(img, y0, x0, y1, x1, rgb)
  for c = 1, 3 do img:narrow(1, y0 + 1, y1 - y0):narrow(2, x0 + 1, x1 - x0):select(3, c):fill(rgb[c]) end
end
local im1 = T.full({ 24, 32, 3 }, 60, "uint8")
block(im1, 4, 4, 12, 14, { 255, 0, 0 })
block(im1, 2, 20, 10, 30, { 0, 0, 255 })
block(im1, 15, 20, 19, 24, { 0, 0, 255 })
local im2 = T.full({ 24, 32, 3 }, 60, "uint8")
block(im2, 3, 3, 9, 9, { 0, 255, 0 })
local dir = R .. "/images/mscoco/images/train2014/"
image.save_png(dir .. "COCO_train2014_000000000001.jpg", im1)        -- PNG bytes under the .jpg name
image.save_png(dir .. "COCO_train2014_000000000002.jpg", im2)

local cfg = tmp .. "/refcoco_val.yaml"
tiny.write(cfg, ("data:\n  name: refcoco_val\n  task: referring\n  layout: refer\n  root: %s\n  dataset: refcoco\n"
  .. "  split_by: unc\n  split: val\nrecipe: %s\n"):format(R, ROOT .. "/tests/lua/recipes/test_expression.lua"))
local ds = data.open(require("fmseg.io.config").load(cfg))
local ids = {}
for _, it in ipairs(ds.items) do ids[#ids + 1] = it.id end
tap.eq(table.concat(ids, " "), "100 101 102 103 104", "every sentence of the val refs, in order; testA's left out")
tap.eq(ds.items[2].expression, "the red one", "an item's expression is the sentence's 'sent'")

-- the direct count: the test recipe's prediction against the ref's mask
local recipe = dofile(ROOT .. "/tests/lua/recipes/test_expression.lua")
local I, U, ious = 0, 0, {}
for i = 1, 3 do
  local img = ds:image(i)
  local pred = recipe.segment(nil, img, nil, { expression = ds.items[i].expression }).masks[1]
  local gt = ds:mask(i)
  local pp, gp, inter, union = pred:ptr(), gt:ptr(), 0, 0
  for k = 0, gt:numel() - 1 do
    if pp[k] ~= 0 and gp[k] ~= 0 then inter = inter + 1 end
    if pp[k] ~= 0 or gp[k] ~= 0 then union = union + 1 end
  end
  I, U, ious[i] = I + inter, U + union, inter / union
end
local two = ds:mask(3)
tap.ok(two:float():sum() > two:narrow(1, 1, 12):float():sum(), "ref 1's mask sums both of its polygons")

local rec = runs.evaluate({ config = cfg, out = tmp .. "/run", quiet = true })
tap.eq(rec.sentences, 3, "three expressions scored")
tap.near(rec.oIoU, I / U, 1e-12, ("oIoU: Σ intersection / Σ union (%.4f)"):format(I / U))
tap.near(rec.mIoU, (ious[1] + ious[2] + ious[3]) / 3, 1e-12, "mIoU: the mean of the expressions' IoU")
tap.ok(math.abs(rec.oIoU - rec.mIoU) > 1e-3, "the two scores differ here (the checks above can fail)")
local reasons = {}
for _, sk in ipairs(rec.skipped) do reasons[sk.id] = sk.reason end
tap.ok((reasons["103"] or ""):find("refs(unc).p ref 2 (image 2, annotation 21): polygon 1 of annotation 21 has 4 "
  .. "coordinates, fewer than three points", 1, true) ~= nil, "a polygon of two points: skipped, naming the entry",
  reasons["103"])
tap.ok((reasons["104"] or ""):find("image 99 is not in", 1, true) ~= nil, "a ref whose image is missing: skipped",
  reasons["104"])
tap.ok(tiny.read(tmp .. "/run/metrics.md"):find("2 items skipped", 1, true) ~= nil, "metrics.md lists the skipped")

require("fmseg.eval.report").command({ tmp .. "/run" }, tmp .. "/table")
tap.ok((tiny.read(tmp .. "/table/oiou.md") or ""):find(("| test_expression | %.1f |"):format(100 * rec.oIoU), 1, true)
  ~= nil, "fmseg table: oiou.md holds the run's oIoU", tiny.read(tmp .. "/table/oiou.md"))

runs.evaluate({ config = cfg, out = tmp .. "/shards", shard = { i = 1, n = 2 }, quiet = true })
runs.evaluate({ config = cfg, out = tmp .. "/shards", shard = { i = 2, n = 2 }, quiet = true })
local merged = runs.merge({ tmp .. "/shards" })
tap.near(merged.oIoU, rec.oIoU, 1e-12, "merge: the shards' oIoU is the whole run's")
tap.near(merged.mIoU, rec.mIoU, 1e-12, "merge: and their mIoU")

local bad = tmp .. "/bad.yaml"
tiny.write(bad, (tiny.read(cfg):gsub("recipe: [^\n]+", "recipe: " .. ROOT .. "/tests/lua/recipes/test_clicks.lua")))
tap.raises(function() runs.evaluate({ config = bad, out = tmp .. "/bad", quiet = true }) end, "reads no expressions",
           "a recipe without expressions is refused before any image")
tap.raises(function() data.open(require("fmseg.io.config").load(cfg, { "data.dataset=refclef" })) end,
           "data.dataset must be refcoco, refcoco+ or refcocog", "an unknown refer dataset is named")

tiny.rm(tmp)
os.exit(tap.done())
