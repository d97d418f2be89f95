-- `fmseg eval` on interactive datasets (data.task: interactive) in RITM's
-- layouts, with a test recipe that reads the object from the image
-- (tests/lua/recipes/test_clicks.lua), where the right numbers are known:
-- a perfect predictor needs one click (NoC 1, mIoU 100 after every click);
-- a planted error (a block of the object left out until a click lands in
-- it) costs exactly the clicks the protocol defines; GrabCut's boundary band
-- is ignored; an image without a mask and an empty mask are skipped with
-- their reasons while the run goes on; shards merge to the whole run; a
-- recipe that takes no clicks is refused before any image is read.
local tap = require("tap")
local tiny = require("tiny_data")
local core = require("fmseg.core")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local runs = require("fmseg.eval.runs")
local T = require("fmseg.tensor")

local ROOT = core.root
local RECIPE = ROOT .. "/tests/lua/recipes/test_clicks.lua"
local tmp = tiny.tmpdir("interactive")

local H, W = 40, 60
-- object a: rows 10..29, cols 15..44 (600 px), ringed by a one-pixel band
local A = { 10, 15, 30, 45 }
-- object b: rows 5..14, cols 5..24 (200 px), no band
local B = { 5, 5, 15, 25 }

local function picture(box)
  local img = T.full({ H, W, 3 }, 100, "uint8")
  img:narrow(1, box[1] + 1, box[3] - box[1]):narrow(2, box[2] + 1, box[4] - box[2]):select(3, 1):fill(255)
  img:narrow(1, box[1] + 1, box[3] - box[1]):narrow(2, box[2] + 1, box[4] - box[2]):select(3, 2):fill(0)
  img:narrow(1, box[1] + 1, box[3] - box[1]):narrow(2, box[2] + 1, box[4] - box[2]):select(3, 3):fill(0)
  return img
end

-- a grey mask: 255 on the object, 128 on a band one pixel around it (band = true)
local function grabcut_mask(box, band, value)
  local m = T.zeros({ H, W, 3 }, "uint8")
  if band then
    m:narrow(1, box[1], box[3] - box[1] + 2):narrow(2, box[2], box[4] - box[2] + 2):fill(128)
  end
  m:narrow(1, box[1] + 1, box[3] - box[1]):narrow(2, box[2] + 1, box[4] - box[2]):fill(value or 255)
  return m
end

local function grabcut_set(root)
  tiny.mkdir(root .. "/data_GT"); tiny.mkdir(root .. "/boundary_GT")
  image.save_png(root .. "/data_GT/a.png", picture(A))
  image.save_png(root .. "/boundary_GT/a.png", grabcut_mask(A, true))
  image.save_png(root .. "/data_GT/b.jpg.png", picture(B))            -- the mask goes by the first dot: "b"
  image.save_png(root .. "/boundary_GT/b.png", grabcut_mask(B, false))
  image.save_png(root .. "/data_GT/c.png", picture(B))                -- no mask
  image.save_png(root .. "/data_GT/d.png", picture(B))
  image.save_png(root .. "/boundary_GT/d.png", T.zeros({ H, W, 3 }, "uint8"))   -- an empty object
end

local function config(name, layout, root, extra)
  local path = ("%s/%s.yaml"):format(tmp, name)
  tiny.write(path, ([[
data:
  name: %s
  task: interactive
  layout: %s
  root: %s
recipe: %s
method: %s
eval:
  max_clicks: 5
  iou_thresholds: [0.8, 0.85, 0.9]
%s]]):format(layout, layout, root, RECIPE, name, extra or ""))
  return path
end

local GC = tmp .. "/GrabCut"
grabcut_set(GC)

-- ---- a perfect predictor ----------------------------------------------------------------

local rec = runs.evaluate({ config = config("perfect", "grabcut", GC), out = tmp .. "/perfect", quiet = true })
tap.eq(rec.task, "interactive", "an interactive run")
tap.eq(rec.objects, 2, "two objects scored (a, b)")
tap.eq(#rec.skipped, 2, "two items skipped")
local reasons = {}
for _, s in ipairs(rec.skipped) do reasons[s.id] = s.reason end
tap.ok((reasons.c or ""):find("no mask", 1, true) ~= nil, "an image without a mask is skipped, saying so", reasons.c)
tap.ok((reasons.d or ""):find("d.png (item d): the object mask is empty", 1, true) ~= nil,
       "an empty mask is skipped naming the file", reasons.d)
tap.eq(rec.NoC["85"], 1, "perfect predictor: NoC@85 = 1")
tap.eq(rec.NoC["90"], 1, "perfect predictor: NoC@90 = 1")
tap.eq(rec.over_max["90"], 0, "perfect predictor: no object at max_clicks")
local all100 = #rec.mIoU_per_click == 5
for _, v in ipairs(rec.mIoU_per_click) do all100 = all100 and v == 1 end
tap.ok(all100, "perfect predictor: mIoU 100 after each of the 5 clicks")
local item = json.decode(tiny.read(tmp .. "/perfect/items/a.json"))
tap.eq(#item.clicks, 5, "every click is run and kept (target_iou 1.01)")
tap.eq(table.concat(item.clicks[1], ","), "19,24,1", "the first click at the object's deepest pixel, first in row order")
tap.ok(tiny.read(tmp .. "/perfect/miou_per_click.csv"):find("^click,mIoU\n1,100%.0000\n") ~= nil,
       "miou_per_click.csv written")
local png = image.load(tmp .. "/perfect/miou_per_click.png")
tap.ok(png:size(1) > 100 and png:size(2) > 100, "miou_per_click.png drawn")
tap.ok(tiny.read(tmp .. "/perfect/metrics.md"):find("| 1.00 | 0 |", 1, true) ~= nil, "metrics.md holds the NoC table")

-- ---- a planted error ------------------------------------------------------------------------

-- object a's rightmost 5 columns (100 of its 600 px) appear only once clicked
local hole = "params:\n  hole: [10, 40, 30, 45]\n"
rec = runs.evaluate({ config = config("planted", "grabcut", GC, hole), out = tmp .. "/planted", quiet = true })
-- a: IoU 500/600 after click 1 (>= 0.80, < 0.85), click 2 in the hole, then 1; b: perfect
tap.eq(rec.NoC["80"], 1, "planted error: NoC@80 (a: 1, b: 1)")
tap.eq(rec.NoC["85"], 1.5, "planted error: NoC@85 (a: 2, b: 1)")
tap.eq(rec.NoC["90"], 1.5, "planted error: NoC@90 (a: 2, b: 1)")
tap.near(rec.mIoU_per_click[1], (500 / 600 + 1) / 2, 1e-12, "planted error: mIoU after click 1")
tap.eq(rec.mIoU_per_click[2], 1, "planted error: mIoU after click 2")
item = json.decode(tiny.read(tmp .. "/planted/items/a.json"))
tap.eq(table.concat(item.clicks[2], ","), "12,42,1", "click 2: positive, at the hole's deepest pixel (the band ignored)")

-- ---- fmseg table ------------------------------------------------------------------------------

local report = require("fmseg.eval.report")
report.command({ tmp .. "/perfect", tmp .. "/planted" }, tmp .. "/table")
local noc_md = tiny.read(tmp .. "/table/noc.md")
tap.ok(noc_md:find("| perfect | 1.00 / 1.00 |", 1, true) ~= nil, "table: NoC@85 / NoC@90 of the perfect run", noc_md)
tap.ok(noc_md:find("| planted | 1.50 / 1.50 |", 1, true) ~= nil, "table: and of the planted error", noc_md)
tap.ok(tiny.read(tmp .. "/table/noc.csv"):find("planted,grabcut,2,1.00,1.50,1.50,0,0,91.67,100.00", 1, true) ~= nil,
       "table: noc.csv with the mIoU after clicks 1 and 5")
tap.ok(image.load(tmp .. "/table/miou_per_click.png"):size(2) > 100, "table: the curves drawn")
tap.raises(function() require("fmseg.eval.html_report").render({ tmp .. "/perfect" }) end,
           "task interactive; the HTML report covers semantic and discovery runs, `fmseg table` tabulates this one",
           "fmseg report on an interactive run says what to use instead")

-- ---- stopping at the target, shards and merge ------------------------------------------------

local stop = config("stop", "grabcut", GC, hole)
rec = runs.evaluate({ config = stop, out = tmp .. "/stop", quiet = true, sets = { "eval.target_iou=0.9" } })
item = json.decode(tiny.read(tmp .. "/stop/items/a.json"))
tap.eq(#item.clicks, 2, "target_iou 0.9: an object stops at the click reaching it")
tap.eq(rec.NoC["90"], 1.5, "target_iou 0.9: the same NoC")
tap.eq(#rec.mIoU_per_click, 1, "target_iou 0.9: the curve only as far as every object went")
local cfg = config("shards", "grabcut", GC, hole)
runs.evaluate({ config = cfg, out = tmp .. "/shards", shard = { i = 1, n = 2 }, quiet = true })
runs.evaluate({ config = cfg, out = tmp .. "/shards", shard = { i = 2, n = 2 }, quiet = true })
local merged = runs.merge({ tmp .. "/shards" })
tap.eq(merged.NoC["85"], 1.5, "merge: the shards' NoC@85 is the whole run's")
tap.near(merged.mIoU_per_click[1], (500 / 600 + 1) / 2, 1e-12, "merge: and the curve")
tap.eq(#merged.skipped, 2, "merge: the skipped items of every shard")

-- ---- the other layouts ------------------------------------------------------------------------

local DV = tmp .. "/DAVIS"
tiny.mkdir(DV .. "/img"); tiny.mkdir(DV .. "/gt")
image.save_png(DV .. "/img/f1.png", picture(A))
local colour = T.zeros({ H, W, 3 }, "uint8")
colour:narrow(1, A[1] + 1, A[3] - A[1]):narrow(2, A[2] + 1, A[4] - A[2]):select(3, 2):fill(3)   -- any channel > 0
image.save_png(DV .. "/gt/f1.png", colour)
rec = runs.evaluate({ config = config("davis", "davis", DV), out = tmp .. "/davis", quiet = true })
tap.eq(rec.objects, 1, "davis: one object")
tap.eq(rec.NoC["90"], 1, "davis: any channel > 0 is the object")

local BK = tmp .. "/Berkeley"
tiny.mkdir(BK .. "/images"); tiny.mkdir(BK .. "/masks")
image.save_png(BK .. "/images/k.png", picture(B))
image.save_png(BK .. "/masks/k.png", grabcut_mask(B, false, 129))   -- > 128: the object
rec = runs.evaluate({ config = config("berkeley", "berkeley", BK), out = tmp .. "/berkeley", quiet = true })
tap.eq(rec.NoC["90"], 1, "berkeley: GrabCut's values (> 128 the object)")

-- SBD: img/<id>.jpg, inst/<id>.mat (GTinst.Segmentation), val.txt; one item per instance id
local SB = tmp .. "/SBD"
tiny.mkdir(SB .. "/img"); tiny.mkdir(SB .. "/inst")
local inst = require("fmseg.io.mat").read(ROOT .. "/tests/fixtures/mat/sbd_inst.mat", "GTinst.Segmentation")
local ih, iw = inst:size(1), inst:size(2)
image.save_jpg(SB .. "/img/2008_000002.jpg", T.full({ ih, iw, 3 }, 90, "uint8"))
tiny.sh(("cp %s/tests/fixtures/mat/sbd_inst.mat %s/inst/2008_000002.mat"):format(ROOT, SB))
tiny.write(SB .. "/val.txt", "2008_000002\n2008_000003\n")          -- the second has no files
local sbd = require("fmseg.eval.interactive_data").open({ name = "sbd", layout = "sbd", root = SB })
local ids = {}
for _, it in ipairs(sbd.items) do ids[#ids + 1] = it.id end
tap.eq(table.concat(ids, " "), "2008_000002_1 2008_000002_2 2008_000002_3 2008_000003",
       "sbd: one item per instance id, ascending; an image whose .mat is missing kept to report")
local o2 = sbd:object(2, ih, iw)
local want2 = inst:float():eq(2)
tap.eq(o2:float():eq(want2:float()):float():sum(), ih * iw, "sbd: item 2 is instance 2's pixels")
rec = runs.evaluate({ config = config("sbd", "sbd", SB), out = tmp .. "/sbd", quiet = true })
tap.eq(rec.objects, 3, "sbd: three instances scored")
tap.eq(#rec.skipped, 1, "sbd: the image without annotations skipped")
tap.ok((rec.skipped[1].reason or ""):find("2008_000003.mat", 1, true) ~= nil, "sbd: naming its .mat file",
       rec.skipped[1].reason)

-- ---- refusals ------------------------------------------------------------------------------------

local bad = tmp .. "/semantic_recipe.yaml"
tiny.write(bad, ("data:\n  name: g\n  task: interactive\n  layout: grabcut\n  root: %s\n"
  .. "recipe: %s/tests/lua/recipes/test_colors.lua\n"):format(GC, ROOT))
tap.raises(function() runs.evaluate({ config = bad, out = tmp .. "/bad", quiet = true }) end,
           "recipe test_colors segments without clicks", "a recipe without clicks is refused on an interactive dataset")
tap.ok(not tiny.sh("test -e " .. tmp .. "/bad/items/a.json"), "refused before any item is written")
local layout = tmp .. "/layout.yaml"
tiny.write(layout, ("data:\n  name: g\n  task: interactive\n  layout: coco\n  root: %s\nrecipe: %s\n"):format(GC, RECIPE))
tap.raises(function() runs.evaluate({ config = layout, out = tmp .. "/layout", quiet = true }) end,
           "data.layout must be one of berkeley, davis, grabcut, sbd", "an unknown layout is named")
tap.raises(function()
  runs.evaluate({ config = config("clicks0", "grabcut", GC, ""), out = tmp .. "/c0", quiet = true,
                  sets = { "eval.max_clicks=0" } })
end, "eval.max_clicks must be a whole number", "eval.max_clicks 0 refused")

tiny.rm(tmp)
os.exit(tap.done())
