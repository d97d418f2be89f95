-- One-shot evaluation (data.task: oneshot, fmseg.eval.oneshot) on a
-- synthetic PerSeg layout where the right numbers are known, with a test
-- recipe that finds its reference's object colour
-- (tests/lua/recipes/test_reference.lua): the reference ("00") of each
-- class is set once for its images and never scored; a class's IoU is its
-- summed intersection over its summed union (eval_miou.py), not the mean
-- of its images' IoUs; masks are OpenCV's grey value > 0 (a pixel of blue
-- 1 is not the object); an image without its file is skipped with the
-- reason and the run goes on; shards merge; PerSAM runs it with the
-- reference of each class, as `fmseg segment` with ref_image / ref_mask.
local tap = require("tap")
local tiny = require("tiny_data")
local core = require("fmseg.core")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local oneshot = require("fmseg.eval.oneshot")
local runs = require("fmseg.eval.runs")
local T = require("fmseg.tensor")

local ROOT = core.root
local tmp = tiny.tmpdir("oneshot")
local PS = tmp .. "/PerSeg"
local H, W = 20, 30

-- an image of grey 50 with the object's colour on rows r0..r1-1, cols c0..c1-1
local function picture(colour, box)
  local img = T.full({ H, W, 3 }, 50, "uint8")
  for c = 1, 3 do
    img:narrow(1, box[1] + 1, box[3] - box[1]):narrow(2, box[2] + 1, box[4] - box[2]):select(3, c):fill(colour[c])
  end
  return img
end
local function mask(box, value)
  local m = T.zeros({ H, W, 3 }, "uint8")
  m:narrow(1, box[1] + 1, box[3] - box[1]):narrow(2, box[2] + 1, box[4] - box[2]):select(3, 1):fill(value or 128)
  return m
end
local function put(class, idx, img, m)
  tiny.mkdir(PS .. "/Images/" .. class); tiny.mkdir(PS .. "/Annotations/" .. class)
  if img then image.save_png(PS .. "/Images/" .. class .. "/" .. idx .. ".jpg", img) end   -- PNG bytes, .jpg name
  if m then image.save_png(PS .. "/Annotations/" .. class .. "/" .. idx .. ".png", m) end
end

local RED, GREEN = { 200, 10, 10 }, { 10, 200, 10 }
-- class "cat": reference 00; image 01 found whole (20 px of 20); image 02
-- found half (the annotation also covers 60 px of another colour)
put("cat", "00", picture(RED, { 2, 2, 6, 7 }), mask({ 2, 2, 6, 7 }))
put("cat", "01", picture(RED, { 5, 5, 9, 10 }), mask({ 5, 5, 9, 10 }))
local two = picture(RED, { 0, 0, 4, 5 })
two:narrow(1, 5, 6):narrow(2, 1, 10):copy(T.full({ 6, 10, 3 }, 90, "uint8"))   -- rows 4..9, cols 0..9: not red
put("cat", "02", two, mask({ 0, 0, 10, 10 }))                                   -- 100 px annotated, 20 red found
-- class "dog": reference 00; image 01 perfect; image 03 has no image file
put("dog", "00", picture(GREEN, { 1, 1, 5, 5 }), mask({ 1, 1, 5, 5 }))
put("dog", "01", picture(GREEN, { 10, 10, 14, 20 }), mask({ 10, 10, 14, 20 }))
put("dog", "03", nil, mask({ 1, 1, 3, 3 }))

local cfg = tmp .. "/perseg.yaml"
tiny.write(cfg, ("data:\n  name: perseg\n  task: oneshot\n  layout: perseg\n  root: %s\nrecipe: %s\n"):format(
  PS, ROOT .. "/tests/lua/recipes/test_reference.lua"))
local rec = runs.evaluate({ config = cfg, out = tmp .. "/run", quiet = true })
tap.eq(table.concat(rec.classes, " "), "cat dog", "classes sorted")
-- cat: (20 + 20) / (20 + 100) over its images; dog: 40 / 40
tap.near(rec.IoU[1], 40 / 120, 1e-9, "a class's IoU: summed intersections over summed unions")
tap.near(rec.IoU[2], 1, 1e-9, "a perfect class: IoU 1 (within eval_miou's 1e-10)")
tap.near(rec.mIoU, (40 / 120 + 1) / 2, 1e-9, "mIoU: the mean of the classes")
tap.ok(math.abs(rec.IoU[1] - (1 + 0.2) / 2) > 0.1, "the per-image mean would differ (the check above can fail)")
tap.eq(#rec.skipped, 1, "the image without its file is skipped")
tap.ok(rec.skipped[1].reason:find("dog/03.jpg", 1, true) ~= nil, "naming the file", rec.skipped[1].reason)
tap.ok(not tiny.sh("test -e " .. tmp .. "/run/items/cat/00.json"), "the reference is not scored")
local item = json.decode(tiny.read(tmp .. "/run/items/cat/02.json"))
tap.eq(("%d %d %d"):format(item.intersection, item.union, item.target), "20 100 100", "an item's counts")
tap.ok(tiny.read(tmp .. "/run/metrics.md"):find("| cat | 33.33 |", 1, true) ~= nil, "metrics.md: per-class IoU")

-- fmseg table: the one-shot row
require("fmseg.eval.report").command({ tmp .. "/run" }, tmp .. "/table")
tap.ok((tiny.read(tmp .. "/table/oneshot_miou.md") or ""):find("| test_reference | 66.7 |", 1, true) ~= nil,
       "table: oneshot_miou.md holds the run's mIoU", tiny.read(tmp .. "/table/oneshot_miou.md"))

-- shards give the same numbers
runs.evaluate({ config = cfg, out = tmp .. "/shards", shard = { i = 1, n = 2 }, quiet = true })
runs.evaluate({ config = cfg, out = tmp .. "/shards", shard = { i = 2, n = 2 }, quiet = true })
local merged = runs.merge({ tmp .. "/shards" })
tap.near(merged.mIoU, rec.mIoU, 1e-12, "merge: the shards' mIoU is the whole run's")

-- OpenCV's grey value: blue 1 rounds to 0, red 128 to 38
local g = T.zeros({ 1, 3, 3 }, "uint8")
g:ptr()[2] = 1                 -- pixel 0: (0, 0, 1)
g:ptr()[3] = 128               -- pixel 1: (128, 0, 0)
g:ptr()[6], g:ptr()[7] = 1, 1  -- pixel 2: (1, 1, 0): grey (4899 + 9617 + 8192) >> 14 = 1
tap.eq(table.concat(oneshot.grey_mask(g):values(), " "), "0 1 1", "grey_mask: cv2's BGR2GRAY > 0")

-- refused before any image: a recipe without references
local bad = tmp .. "/bad.yaml"
tiny.write(bad, ("data:\n  name: perseg\n  task: oneshot\n  layout: perseg\n  root: %s\nrecipe: %s\n"):format(
  PS, ROOT .. "/tests/lua/recipes/test_clicks.lua"))
tap.raises(function() runs.evaluate({ config = bad, out = tmp .. "/bad", quiet = true }) end,
           "takes no reference", "a recipe that takes no reference is refused")

-- PerSAM on it: each class from its own reference, as fmseg segment with ref_image / ref_mask
local SAM = ROOT .. "/tests/fixtures/methods/models/sam-persam-tiny"
local pcfg = tmp .. "/persam.yaml"
tiny.write(pcfg, ("data:\n  name: perseg\n  task: oneshot\n  layout: perseg\n  root: %s\nrecipe: persam\n"
  .. "models:\n  sam: %s\n"):format(PS, SAM))
local prec = runs.evaluate({ config = pcfg, out = tmp .. "/persam", quiet = true })
tap.eq(#prec.classes, 2, "persam: both classes scored")
local segment = require("fmseg.method.segment")
local s = segment.session({ recipe = "persam", models = { sam = SAM },
  params = { ref_image = PS .. "/Images/cat/00.jpg", ref_mask = PS .. "/Annotations/cat/00.png" } })
local direct = s:segment(image.load(PS .. "/Images/cat/02.jpg"))
local stored = image.load_indices(tmp .. "/persam/pred/cat/02.png")
tap.eq(stored:float():eq(direct.masks[1]:float()):float():sum(), H * W,
       "persam in the evaluation: the mask fmseg segment gives with the class's reference")

tiny.rm(tmp)
os.exit(tap.done())
