-- ADE20K-Full (847 classes) and PASCAL Context-459 in their detectron2
-- layouts (configs/_base_/datasets/ade847.yaml, context459.yaml): tiny
-- datasets written here with 16-bit TIFF labels, read through the shipped
-- definitions (ids, class lists, labels as stored, 65535 ignored), then
-- `fmseg eval` end to end with a test recipe that reads its answer from
-- the image (tests/lua/recipes/test_wide_labels.lua): every number against
-- a direct count written here, classes past 255 included, predictions
-- kept as 16-bit TIFFs and shown by `fmseg report`; and the errors for
-- broken annotations.
local tap = require("tap")
local tiny = require("tiny_data")
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local T = require("fmseg.tensor")

local ROOT = core.root
local FMSEG = fs.quote(ROOT .. "/fmseg")
local RECIPE = ROOT .. "/tests/lua/recipes/test_wide_labels.lua"
local IGNORE = 65535
local q = fs.quote
local tmp = tiny.tmpdir("wide")

local function def(name) return config.load(ROOT .. "/configs/_base_/datasets/" .. name .. ".yaml") end

-- The recipe's image for a prediction: red = class / 256, green = class % 256
-- (65535: 255, 255), blue anything. Written as PNG bytes under the .jpg
-- name of the real layout (stb reads by content), so the colours survive.
local function painted(h, w, pred, rand)
  local img = T.new({ h, w, 3 }, "uint8")
  local p = img:ptr()
  for i = 0, h * w - 1 do
    p[3 * i], p[3 * i + 1], p[3 * i + 2] = math.floor(pred[i] / 256), pred[i] % 256, rand(0, 255)
  end
  return img
end

local function grid(h, w, values) return tiny.grid(h, w, values) end

-- gt over a pool of classes (some past 255) with ignored pixels; the
-- prediction mostly right, sometimes a class the gt never has, sometimes
-- unlabelled (65535)
local function make_items(rand, ids, pool, never, sizes)
  local items, truth = {}, {}
  for n, id in ipairs(ids) do
    local h, w = sizes[n][1], sizes[n][2]
    local gt, pred = {}, {}
    for i = 0, h * w - 1 do
      gt[i] = rand(0, 9) == 0 and IGNORE or pool[rand(1, #pool)]
      local r = rand(0, 99)
      pred[i] = r < 65 and (gt[i] == IGNORE and pool[1] or gt[i]) or r < 90 and pool[rand(1, #pool)]
        or r < 96 and never or IGNORE
    end
    truth[id] = { gt = gt, pred = pred, h = h, w = w }
    items[n] = { id = id, img = painted(h, w, pred, rand), gt = grid(h, w, gt) }
  end
  return items, truth
end

local function write_layout(root, layout, items)
  for _, it in ipairs(items) do
    local ipath = root .. "/" .. layout.images .. "/" .. it.id .. ".jpg"
    tiny.mkdir(ipath:match("^(.*)/"))
    image.save_png(ipath, it.img)
    local apath = root .. "/" .. layout.annotations .. "/" .. it.id .. ".tif"
    tiny.mkdir(apath:match("^(.*)/"))
    image.save_tiff16(apath, it.gt)
  end
end

-- mmseg's intersect_and_union with 65535 ignored, counted directly
local function expected_metrics(truth, k, ignore)
  local items = {}
  for _, t in pairs(truth) do items[#items + 1] = { gt = t.gt, pred = t.pred, n = t.h * t.w } end
  return tiny.direct_metrics(items, k, ignore or IGNORE)
end

local function same_numbers(got, want, what)
  local ok, why = tiny.same_metrics(got, want)
  return tap.ok(ok, what, why)
end

local function labels_equal(lab, t)
  if lab:size(1) ~= t.h or lab:size(2) ~= t.w then return false, "size" end
  local p = lab:contiguous():ptr()
  for i = 0, t.h * t.w - 1 do
    if p[i] ~= t.gt[i] then return false, ("pixel %d: %d, want %d"):format(i, p[i], t.gt[i]) end
  end
  return true
end

local CASES = {
  { name = "ade847", k = 847, title = "ADE847", first = "wall", last = "adding machine, totalizer, totaliser",
    layout = { images = "images_detectron2/validation", annotations = "annotations_detectron2/validation" },
    ids = { "ADE_val_00000002", "ADE_val_00000001", "ADE_val_00000010" },
    pool = { 0, 1, 254, 255, 256, 511, 846 }, never = 300 },
  { name = "context459", k = 459, title = "Context459", first = "accordion", last = "wool",
    layout = { images = "JPEGImages", annotations = "annotations_detectron2/pc459_val",
               split = "ImageSets/SegmentationContext/val.txt" },
    ids = { "2008_000003", "2008_000002", "2010_000001" },
    pool = { 0, 3, 255, 256, 431, 458 }, never = 257 },
}

local rand = tiny.rng(847)
for _, case in ipairs(CASES) do
  local root = tmp .. "/" .. case.name
  local items, truth = make_items(rand, case.ids, case.pool, case.never, { { 9, 13 }, { 12, 7 }, { 8, 16 } })
  write_layout(root, case.layout, items)
  if case.layout.split then tiny.write(root .. "/" .. case.layout.split, table.concat(case.ids, "\n") .. "\n") end

  local ds = data.open(def(case.name), { root = root })
  local want_ids = { unpack(case.ids) }
  if not case.layout.split then table.sort(want_ids) end   -- scanned: sorted by path, as mmseg lists them
  local got_ids = {}
  for i, it in ipairs(ds.items) do got_ids[i] = it.id end
  tap.eq(table.concat(got_ids, " "), table.concat(want_ids, " "), case.name .. ": ids in mmseg's order")
  tap.ok(ds.num_classes == case.k and #ds.class_names == case.k and ds.class_names[1] == case.first
    and ds.class_names[case.k] == case.last and ds.ignore_index == IGNORE and ds.background == nil
    and ds.title == case.title, ("%s: %d classes (%s .. %s), ignore 65535, no background"):format(case.name, case.k,
    case.first, case.last))
  local all, why = true, nil
  for i, it in ipairs(ds.items) do
    local lab = ds:labels(i)
    local ok, detail = labels_equal(lab, truth[it.id])
    if not ok then all, why = false, it.id .. ": " .. detail end
    if lab:dtype() ~= "int32" then all, why = false, "dtype " .. lab:dtype() end
  end
  tap.ok(all, case.name .. ": 16-bit labels as stored (no reduce_zero_label), 65535 kept for the ignore", why)

  -- fmseg eval end to end
  local cfg = tmp .. "/" .. case.name .. ".yaml"
  tiny.write(cfg, ("_base_: %s/configs/_base_/datasets/%s.yaml\nrecipe: %s\n"):format(ROOT, case.name, RECIPE))
  local out = tmp .. "/run_" .. case.name
  local rc, log = tiny.run(("%s eval %s --data %s -o %s --quiet"):format(FMSEG, q(cfg), q(root), q(out)))
  tap.eq(rc, 0, case.name .. ": fmseg eval runs", log)
  local got = json.decode(tiny.read(out .. "/metrics.json") or "null")
  local want = expected_metrics(truth, case.k)
  same_numbers(got, want, ("%s: aAcc, mIoU, mAcc and the %d per-class IoU / Acc as counted here (mIoU %.4f)"):format(
    case.name, case.k, want.mIoU))
  tap.ok(want.IoU[case.never + 1] == 0 and want.IoU[255 + 1] > 0 and want.IoU[2 + 1] ~= want.IoU[2 + 1],
    case.name .. ": the data has a class only predicted (IoU 0), class 255 scored, classes absent (NaN)")
  -- the official evaluations' IoUMetric: its ignore_index 255, 65535 pixels scored
  local out_mm = tmp .. "/run_mmseg_" .. case.name
  rc, log = tiny.run(("%s eval %s --data %s -o %s --quiet --set data.metric_ignore_index=255"):format(FMSEG, q(cfg),
    q(root), q(out_mm)))
  tap.eq(rc, 0, case.name .. ": fmseg eval with data.metric_ignore_index 255 runs", log)
  local mm = json.decode(tiny.read(out_mm .. "/metrics.json") or "null")
  local want_mm = expected_metrics(truth, case.k, 255)
  same_numbers(mm, want_mm, ("%s: metric_ignore_index 255 as mmseg's IoUMetric: class 255 skipped, 65535 pixels' "
    .. "predictions in the union (mIoU %.4f)"):format(case.name, want_mm.mIoU))
  local mm_255 = want_mm.IoU[255 + 1]                               -- 0 or NaN: never above 0
  tap.ok(want_mm.mIoU ~= want.mIoU and want.IoU[255 + 1] > 0 and (mm_255 ~= mm_255 or mm_255 == 0),
    case.name .. ": the two semantics differ on this data (class 255 scored, or not)",
    ("mIoU %s / %s, class 255 IoU %s / %s"):format(want.mIoU, want_mm.mIoU, want.IoU[256], want_mm.IoU[256]))
  local first = case.ids[1]
  local ok, pred = pcall(image.load_tiff, out .. "/pred/" .. first .. ".tif")
  local pred_ok = ok
  if ok then
    local p, t = pred:ptr(), truth[first]
    for i = 0, t.h * t.w - 1 do if p[i] ~= t.pred[i] then pred_ok = false end end
  end
  tap.ok(pred_ok and not fs.exists(out .. "/pred/" .. first .. ".png"),
    case.name .. ": the scored prediction is kept as a 16-bit TIFF (classes past 255, 65535 unlabelled)",
    not ok and tostring(pred) or nil)
  local page = tmp .. "/" .. case.name .. ".html"
  rc, log = tiny.run(("%s report %s -o %s --examples 1"):format(FMSEG, q(out), q(page)))
  local html = tiny.read(page) or ""
  local _, shots = html:gsub('src="data:image/png;base64,', "")
  tap.ok(rc == 0 and not html:find("prediction missing", 1, true) and shots == 6,
    case.name .. ": fmseg report shows the TIFF predictions (best and worst image: image, prediction, truth)", log)
end

-- ---- broken annotations ---------------------------------------------------------------------------

do
  local root = tmp .. "/ade847"
  local ann = root .. "/annotations_detectron2/validation/ADE_val_00000002.tif"
  local whole = fs.read(ann)
  local f = assert(io.open(ann, "wb"))
  f:write(whole:sub(1, #whole - 7))
  f:close()
  local ds = data.open(def("ade847"), { root = root })
  tap.raises(function() ds:labels(2) end, ann .. ": fm_tiff_load: " .. ann .. ": truncated (strip 0 of 1, 234 bytes",
    "a truncated TIFF: the error names the file")
  f = assert(io.open(ann, "wb"))
  f:write("not a tiff at all")
  f:close()
  tap.raises(function() ds:labels(2) end, ann .. ": fm_tiff_load: " .. ann .. ": not a TIFF file",
    "a file that is no TIFF: named")
  -- a value that is no class of the 847 and not 65535
  local lab = T.new({ 9, 13 }, "int32")
  lab:ptr()[5] = 900
  image.save_tiff16(ann, lab)
  local cfg = tmp .. "/ade847.yaml"
  local out = tmp .. "/run_bad"
  local rc, log = tiny.run(("%s eval %s --data %s -o %s --quiet"):format(FMSEG, q(cfg), q(root), q(out)))
  tap.ok(rc ~= 0 and log:find(ann, 1, true) and log:find("900", 1, true),
    "a label outside the 847 classes stops the image with the file and the value named", log)
end

tiny.rm(tmp)
os.exit(tap.done())
