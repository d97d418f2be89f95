-- fmseg.eval.oneshot — one-shot (personalised) segmentation: each class
-- brings one reference image and its mask, and a recipe that takes
-- references (`oneshot = true`, set_reference(state, image, mask): PerSAM,
-- PerSAM-F) segments the class's other images. Layout and scores as
-- ZrrSkywalker/Personalize-SAM (persam.py, eval_miou.py) has them for PerSeg:
--
--   data:
--     name: perseg
--     task: oneshot
--     layout: perseg
--     root: data/PerSeg        # Images/<class>/<nn>.jpg, Annotations/<class>/<nn>.png
--     ref_idx: "00"            # the reference of every class (persam.py --ref_idx)
--
-- Items: every annotation of every class (classes sorted, their PNGs
-- sorted) but the ones eval_miou.py skips, those whose path below
-- Annotations/ holds ref_idx ("00.png"); each predicted from its class's
-- reference. A mask is the pixels whose grey value (OpenCV's BGR2GRAY of
-- the file) is above 0, the prediction's too. Per class IoU = Σ
-- intersection / (Σ union + 1e-10) over its images, Acc = Σ intersection /
-- (Σ target + 1e-10); mIoU and mAcc average the classes.
local data = require("fmseg.eval.data")
local image = require("fmseg.image")
local fs = require("fmseg.io.fs")
local skipped = require("fmseg.eval.skipped")
local T = require("fmseg.tensor")

local M = {}

local Dataset = {}
Dataset.__index = Dataset

local function list(dir, pattern)
  local out = {}
  local p = io.popen(("ls -1 %s 2>/dev/null"):format(fs.quote(dir)))
  for name in p:lines() do
    if name:match(pattern) then out[#out + 1] = name end
  end
  p:close()
  table.sort(out)
  return out
end

function M.open(spec)
  if spec.layout ~= "perseg" then
    error(("dataset %s: data.layout must be perseg for a one-shot dataset, got %s"):format(spec.name,
      tostring(spec.layout)), 0)
  end
  local ann_root, img_root = spec.root .. "/Annotations", spec.root .. "/Images"
  for _, d in ipairs({ ann_root, img_root }) do
    if not fs.is_dir(d) then
      error(("dataset %s: %s is not a directory (PerSeg keeps Images/<class>/ and Annotations/<class>/ under "
        .. "the root; pass --data ROOT)"):format(spec.name, d), 0)
    end
  end
  local ref_idx = spec.ref_idx or "00"
  local items, classes = {}, {}
  for _, class in ipairs(list(ann_root, "^[^.]")) do           -- ".DS" files left out, as the code does
    classes[#classes + 1] = class
    local reference = { image = ("%s/%s/%s.jpg"):format(img_root, class, ref_idx),
                        mask = ("%s/%s/%s.png"):format(ann_root, class, ref_idx) }
    for _, name in ipairs(list(ann_root .. "/" .. class, "%.png$")) do
      if not (class .. "/" .. name):find(ref_idx, 1, true) then
        local stem = name:gsub("%.png$", "")
        items[#items + 1] = { id = class .. "/" .. stem, class = class, reference = reference,
                              image = ("%s/%s/%s.jpg"):format(img_root, class, stem),
                              annotation = ("%s/%s/%s"):format(ann_root, class, name) }
      end
    end
  end
  if #classes == 0 then error(("dataset %s: no class folders under %s"):format(spec.name, ann_root), 0) end
  return setmetatable({ name = spec.name, title = spec.title or spec.name, task = "oneshot", root = spec.root,
                        items = items, classes = classes }, Dataset)
end

function Dataset:image(i)
  local item = self.items[i]
  return data.read_image(item.image, "item " .. item.id)
end

-- OpenCV's BGR2GRAY of an (H, W, 3) RGB image, above 0 → (H, W) uint8 0/1
function M.grey_mask(img) return image.grey_at_least(img, image.CV2_GREY, 1) end

function Dataset:mask(i)
  local item = self.items[i]
  return M.grey_mask(data.read_image(item.annotation, "item " .. item.id))
end

-- ---- scoring ----------------------------------------------------------------------------

-- A recipe's result → the predicted mask (H, W) uint8: an instance result's
-- first mask, a semantic one's labels > 0
function M.prediction(result, h, w)
  local m
  if result.kind == "instances" then
    m = result.masks[1] or T.zeros({ h, w }, "uint8")
  elseif result.labels then
    m = result.labels:int():gt(0):byte()
  else
    error("one-shot scoring needs instances or a label map from the recipe", 0)
  end
  if m:size(1) ~= h or m:size(2) ~= w then
    error(("the prediction is %dx%d, the image %dx%d"):format(m:size(2), m:size(1), w, h), 0)
  end
  return m:byte()
end

-- pred, gt (H, W) 0/1 → intersection, union, target (intersectionAndUnion)
function M.counts(pred, gt)
  local pp, gp = pred:contiguous():ptr(), gt:contiguous():ptr()
  local inter, union, target = 0, 0, 0
  for k = 0, gt:numel() - 1 do
    local p, g = pp[k] ~= 0, gp[k] ~= 0
    if p and g then inter = inter + 1 end
    if p or g then union = union + 1 end
    if g then target = target + 1 end
  end
  return inter, union, target
end

-- Per-class sums of the records ({id, class, intersection, union, target})
function M.sums(records, classes)
  local s = {}
  for _, c in ipairs(classes) do s[c] = { intersection = 0, union = 0, target = 0, images = 0 } end
  for _, r in ipairs(records) do
    local c = s[r.class]
    if c and not r.skipped then
      c.intersection, c.union = c.intersection + r.intersection, c.union + r.union
      c.target, c.images = c.target + r.target, c.images + 1
    end
  end
  return s
end

-- classes (sorted names) and their sums → the metrics record (eval_miou.py)
function M.record_from_sums(classes, sums)
  local iou, acc = {}, {}
  local miou, macc = 0, 0
  for k, c in ipairs(classes) do
    local s = sums[c]
    iou[k] = s.intersection / (s.union + 1e-10)
    acc[k] = s.intersection / (s.target + 1e-10)
    miou, macc = miou + iou[k], macc + acc[k]
  end
  return { task = "oneshot", classes = classes, IoU = iou, Acc = acc, mIoU = miou / #classes, mAcc = macc / #classes,
           sums = sums }
end

-- records → the metrics record; skipped ones listed with their reasons
function M.totals(records, classes)
  local rec = M.record_from_sums(classes, M.sums(records, classes))
  rec.skipped = skipped.collect(records)
  return rec
end

-- Shards' metrics records → one
function M.merge(recs)
  local classes = recs[1].classes
  local sums = M.sums({}, classes)
  for _, r in ipairs(recs) do
    for _, c in ipairs(classes) do
      local a, b = sums[c], r.sums[c]
      a.intersection, a.union = a.intersection + b.intersection, a.union + b.union
      a.target, a.images = a.target + b.target, a.images + b.images
    end
  end
  local rec = M.record_from_sums(classes, sums)
  rec.skipped = skipped.merge(recs)
  return rec
end

function M.summary_lines(rec)
  local lines = { "| Class | IoU | Acc |", "| --- | ---: | ---: |" }
  for k, c in ipairs(rec.classes) do
    lines[#lines + 1] = ("| %s | %.2f | %.2f |"):format(c, 100 * rec.IoU[k], 100 * rec.Acc[k])
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = ("mIoU %.2f  mAcc %.2f (%d classes, each from its own reference)"):format(100 * rec.mIoU,
    100 * rec.mAcc, #rec.classes)
  return skipped.lines(rec.skipped, lines)
end

return M
