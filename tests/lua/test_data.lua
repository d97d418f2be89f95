-- Dataset readers on tiny datasets written here in each public layout,
-- read through the shipped definitions in configs/_base_/datasets: ids and
-- their order, images, label maps after reduce_zero_label, class names,
-- VOC XML boxes, and the errors a missing or malformed dataset gives.
local tap = require("tap")
local tiny = require("tiny_data")
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")

local ROOT = core.root
local tmp = tiny.tmpdir("data")

local function dataset_cfg(name, sets)
  return config.load(ROOT .. "/configs/_base_/datasets/" .. name .. ".yaml", sets)
end

-- Random ground truth over raw annotation values [lo, hi] plus some 255s.
local function random_gt(rand, h, w, lo, hi)
  local v = {}
  for i = 0, h * w - 1 do v[i] = rand(0, 9) == 0 and 255 or rand(lo, hi) end
  return v
end

local function labels_equal(got, want_values)
  local g = got:int():contiguous()
  local p = g:ptr()
  for i = 0, g:numel() - 1 do
    if p[i] ~= want_values[i] then
      return false, ("pixel %d: got %d, want %d"):format(i, p[i], want_values[i])
    end
  end
  return true
end

-- The mapping each definition promises, written out directly.
local function expected(raw, reduce)
  local out = {}
  for i, v in pairs(raw) do
    if not reduce then out[i] = v
    elseif v == 0 or v == 255 then out[i] = 255
    else out[i] = v - 1 end
  end
  return out
end

-- name, layout (as the yaml says), raw label range, reduce, ids, classes
local CASES = {
  { name = "voc21", layout = { images = "JPEGImages", image_suffix = ".jpg", annotations = "SegmentationClass",
      annotation_suffix = ".png", split = "ImageSets/Segmentation/val.txt" },
    hi = 20, reduce = false, k = 21, ids = { "2007_000033", "2007_000042", "2007_000061" }, background = true },
  { name = "voc20", layout = { images = "JPEGImages", image_suffix = ".jpg", annotations = "SegmentationClass",
      annotation_suffix = ".png", split = "ImageSets/Segmentation/val.txt" },
    hi = 20, reduce = true, k = 20, ids = { "2007_000033", "2008_000009" } },
  { name = "context60", layout = { images = "JPEGImages", image_suffix = ".jpg",
      annotations = "SegmentationClassContext", annotation_suffix = ".png",
      split = "ImageSets/SegmentationContext/val.txt", grey = true },
    hi = 59, reduce = false, k = 60, ids = { "2008_000002", "2008_000003" }, background = true },
  { name = "context59", layout = { images = "JPEGImages", image_suffix = ".jpg",
      annotations = "SegmentationClassContext", annotation_suffix = ".png",
      split = "ImageSets/SegmentationContext/val.txt", grey = true },
    hi = 59, reduce = true, k = 59, ids = { "2008_000002", "2008_000003" } },
  { name = "coco_stuff164k", layout = { images = "images/val2017", image_suffix = ".jpg",
      annotations = "annotations/val2017", annotation_suffix = "_labelTrainIds.png", grey = true },
    hi = 170, reduce = false, k = 171, ids = { "000000000139", "000000000285", "000000000632" } },
  { name = "coco_object", layout = { images = "images/val2017", image_suffix = ".jpg",
      annotations = "annotations/val2017", annotation_suffix = "_instanceTrainIds.png", grey = true },
    hi = 80, reduce = false, k = 81, ids = { "000000000139", "000000000285" }, background = true },
  { name = "ade20k", layout = { images = "images/validation", image_suffix = ".jpg",
      annotations = "annotations/validation", annotation_suffix = ".png", grey = true },
    hi = 150, reduce = true, k = 150, ids = { "ADE_val_00000001", "ADE_val_00000002" } },
  { name = "cityscapes", layout = { images = "leftImg8bit/val", image_suffix = "_leftImg8bit.png",
      annotations = "gtFine/val", annotation_suffix = "_gtFine_labelTrainIds.png", grey = true },
    hi = 18, reduce = false, k = 19,
    ids = { "frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019", "frankfurt/frankfurt_000001_000058" } },
}

local rand = tiny.rng(7)
for ci, case in ipairs(CASES) do
  local root = ("%s/%s"):format(tmp, case.name)
  local items, raws = {}, {}
  for n, id in ipairs(case.ids) do
    local h, w = 5 + n, 7 + 2 * n   -- every image a different size
    local raw = random_gt(rand, h, w, 0, case.reduce and case.k or case.hi)
    raws[id] = { raw = raw, h = h, w = w }
    items[n] = { id = id, img = tiny.paint(h, w, nil), gt = tiny.grid(h, w, raw) }
  end
  tiny.write_layout(root, case.layout, items)

  local ds = data.open(dataset_cfg(case.name), { root = root })
  -- listed ids keep the split's order; scanned ones are sorted by path
  local want_ids = { unpack(case.ids) }
  if not case.layout.split then table.sort(want_ids) end
  local got_ids = {}
  for i, it in ipairs(ds.items) do got_ids[i] = it.id end
  tap.eq(table.concat(got_ids, " "), table.concat(want_ids, " "), case.name .. ": ids in mmseg's order")
  tap.eq(ds.num_classes, case.k, case.name .. ": " .. case.k .. " classes")
  tap.eq(#ds.class_names, case.k, case.name .. ": one display name per class")
  if case.background then
    tap.eq(ds.class_names[1], "background", case.name .. ": class 0 is shown as background")
  else
    tap.ok(ds.background == nil, case.name .. ": no background class")
  end
  local all_ok, why = true, nil
  for i, it in ipairs(ds.items) do
    local r = raws[it.id]
    local img = ds:image(i)
    if img:size(1) ~= r.h or img:size(2) ~= r.w then all_ok, why = false, "image size of " .. it.id end
    local ok, detail = labels_equal(ds:labels(i), expected(r.raw, case.reduce))
    if not ok then all_ok, why = false, it.id .. ": " .. detail end
  end
  tap.ok(all_ok, case.name .. (case.reduce and ": labels reduced (0 -> 255, k -> k - 1, 255 stays)" or ": labels as stored"), why)
  if ci == 1 then
    -- the voc21 images are JPEGs, decoded to the size written
    tap.eq(ds.items[1].image, root .. "/JPEGImages/2007_000033.jpg", "voc21: image path from root, folder, id, suffix")
  end
end

-- ---- VOC detection XML (object discovery) ----------------------------------

do
  local root = tmp .. "/voc07"
  local objs1 = { { name = "dog", box = { 1, 1, 10, 20 } }, { name = "cat", box = { 5, 6, 30, 40 }, truncated = true } }
  local objs2 = { { name = "car", box = { 3, 4, 8, 9 }, difficult = true } }   -- all hard
  local objs3 = { { name = "bus", box = { 2, 2, 12, 12 }, truncated = true }, { name = "cow", box = { 20, 20, 25, 30 } } }
  local items = {
    { id = "000005", img = tiny.paint(40, 50), xml = tiny.voc_xml("000005", 50, 40, objs1) },
    { id = "000007", img = tiny.paint(40, 50), xml = tiny.voc_xml("000007", 50, 40, objs2) },
    { id = "000009", img = tiny.paint(40, 50), xml = tiny.voc_xml("000009", 50, 40, objs3) },
  }
  tiny.write_layout(root, { images = "JPEGImages", image_suffix = ".jpg", annotations = "Annotations",
    annotation_suffix = ".xml", split = "ImageSets/Main/trainval.txt" }, items)
  local ds = data.open(dataset_cfg("voc07_corloc"), { root = root })
  tap.eq(#ds.items, 3, "voc07_corloc: three trainval images")
  local b = ds:boxes(1)
  tap.ok(#b == 2 and b[1][1] == 0 and b[1][2] == 0 and b[1][3] == 10 and b[1][4] == 20
    and b[2][1] == 4 and b[2][2] == 5 and b[2][3] == 30 and b[2][4] == 40,
    "VOC boxes: xmin, ymin shift by -1 (1-based inclusive -> pixel edges), xmax, ymax kept")
  local hard = data.open(dataset_cfg("voc07_corloc", { "data.remove_hards=true" }), { root = root })
  local ids = {}
  for i, it in ipairs(hard.items) do ids[i] = it.id end
  tap.eq(table.concat(ids, " "), "000005 000009", "remove_hards drops images whose objects are all truncated/difficult")
  local hb = hard:boxes(2)
  tap.ok(#hb == 1 and hb[1][1] == 19 and hb[1][4] == 30, "remove_hards leaves hard objects out of the ground truth")
  tap.eq(data.open(dataset_cfg("voc12_corloc"), { root = root }).title, "VOC12", "voc12_corloc inherits the VOC07 layout")
  tiny.write(root .. "/Annotations/000005.xml", "<annotation><object><name>dog</name></object></annotation>")
  tap.raises(function() ds:boxes(1) end, root .. "/Annotations/000005.xml: object 1 has no numeric bndbox/xmin",
    "an XML object without a box is refused, naming the file")
end

-- ---- what a broken dataset says ---------------------------------------------

do
  local voc = tmp .. "/voc21"
  tap.raises(function() data.open(dataset_cfg("voc21"), { root = tmp .. "/nowhere" }) end,
    "dataset voc21: data root " .. tmp .. "/nowhere not found (set data.root or pass --data ROOT; expected JPEGImages/<id>.jpg",
    "a missing root names the path and the expected layout")
  tap.raises(function() data.open(dataset_cfg("voc21")) end, "data root data/VOCdevkit/VOC2012 not found",
    "without --data the default root is named")
  os.rename(voc .. "/SegmentationClass/2007_000042.png", voc .. "/moved.png")
  tap.raises(function() data.open(dataset_cfg("voc21"), { root = voc }) end,
    "1 of 3 annotations missing under " .. voc .. ", e.g. " .. voc .. "/SegmentationClass/2007_000042.png",
    "a missing annotation is named with the count")
  os.rename(voc .. "/moved.png", voc .. "/SegmentationClass/2007_000042.png")
  os.rename(voc .. "/ImageSets/Segmentation/val.txt", voc .. "/val.txt")
  tap.raises(function() data.open(dataset_cfg("voc21"), { root = voc }) end,
    "split file " .. voc .. "/ImageSets/Segmentation/val.txt not found (expected image ids, one a line)",
    "a missing split file is named")
  os.rename(voc .. "/val.txt", voc .. "/ImageSets/Segmentation/val.txt")
  tap.raises(function() data.open(dataset_cfg("voc21"), { root = tmp .. "/cityscapes" }) end,
    "image folder " .. tmp .. "/cityscapes/JPEGImages not found", "a root with another layout names the missing folder")
  tiny.mkdir(tmp .. "/empty_ade/images/validation")
  tiny.mkdir(tmp .. "/empty_ade/annotations/validation")
  tap.raises(function() data.open(dataset_cfg("ade20k"), { root = tmp .. "/empty_ade" }) end,
    "no images ending in .jpg under " .. tmp .. "/empty_ade/images/validation", "an empty image folder is refused")
  tap.raises(function() data.open(dataset_cfg("voc21", { "data.num_classes=20" }), { root = voc }) end,
    "data.num_classes is 20 but `classes` (configs/_base_/classes/voc21.txt) lists 21",
    "a class count that disagrees with the class file is refused")
  tap.raises(function() data.open(dataset_cfg("voc21", { "data.ignore_index=3" }), { root = voc }) end,
    "ignore_index 3 must not be a class index", "an ignore index inside the classes is refused")
  tap.raises(function() data.open(config.load(ROOT .. "/configs/_base_/classes/../datasets/voc21.yaml",
      { "data.task=detect" }), { root = voc }) end,
    "data.task must be semantic, discovery, interactive, oneshot, referring or fewshot",
    "an unknown task is refused")
  tap.raises(function() data.open({ recipe = "x" }) end, "no `data` section", "a config without data is refused")
  -- a corrupt annotation names its path
  tiny.write(voc .. "/SegmentationClass/2007_000061.png", "not a png")
  local ds = data.open(dataset_cfg("voc21"), { root = voc })
  tap.raises(function() ds:labels(3) end, voc .. "/SegmentationClass/2007_000061.png", "an unreadable annotation names its path")
end

-- ---- label maps --------------------------------------------------------------

do
  local lut = data.label_table({ name = "x", ignore_index = 255, label_map = { ["7"] = 0, ["8"] = 1, ["26"] = 13 } })
  local raw = tiny.grid(1, 5, { [0] = 7, 8, 26, 0, 255 })
  local got = data.remap(raw, lut):totable()[1]
  tap.ok(got[1] == 0 and got[2] == 1 and got[3] == 13 and got[4] == 255 and got[5] == 255,
    "label_map: listed values map (Cityscapes labelIds -> trainIds style), the rest become ignore")
end

tiny.rm(tmp)
os.exit(tap.done())
