-- fmseg.eval.referring — referring segmentation: RefCOCO, RefCOCO+ and
-- RefCOCOg in the original refer layout (lichengunc/refer: refer.py), read
-- without Python, and the two scores the referring literature reports:
--
--   data:
--     name: refcoco_val
--     task: referring
--     layout: refer
--     root: data/refer           # refcoco/instances.json, refcoco/refs(unc).p,
--                                # images/mscoco/images/train2014/*.jpg
--     dataset: refcoco            # refcoco | refcoco+ | refcocog
--     split_by: unc               # unc | google | umd: refs(<split_by>).p
--     split: val                  # the refs' split: val, testA, testB, test
--
-- Items: every sentence of every ref of the split, in the refs' order
-- (REFER.getRefIds(split=...), then ref['sentences']); its image is the
-- ref's image_id in instances.json, its mask the ref's annotation: its
-- polygons rasterised as pycocotools' frPyObjects and summed (REFER.getMask),
-- the pixels where the sum is 1 (the loaders of LAVT and Zero-shot-RIS,
-- `annot[ref_mask == 1] = 1`: where two polygons overlap is not the
-- object); or its RLE. A recipe that reads expressions (`referring = true`)
-- gets the sentence as source.expression (refer's 'sent': lower case, no
-- punctuation) and as written as source.raw (its 'raw', what Global-Local
-- CLIP and LAVT read). Scores: oIoU = Σ intersection /
-- Σ union over the items, mIoU = the mean of the items' IoU.
-- An item whose image is missing from instances.json or from disk, whose
-- polygon has fewer than three points, or whose mask is empty is skipped
-- with the reason naming the file and the entry; the run goes on.
local data = require("fmseg.eval.data")
local fs = require("fmseg.io.fs")
local json = require("fmseg.io.json")
local masks = require("fmseg.masks")
local pickle = require("fmseg.io.pickle")
local skipped = require("fmseg.eval.skipped")
local T = require("fmseg.tensor")

local M = {}

local Dataset = {}
Dataset.__index = Dataset

local DATASETS = { refcoco = true, ["refcoco+"] = true, refcocog = true }

function M.open(spec)
  if spec.layout ~= "refer" then
    error(("dataset %s: data.layout must be refer for a referring dataset, got %s"):format(spec.name,
      tostring(spec.layout)), 0)
  end
  if not DATASETS[spec.dataset] then
    error(("dataset %s: data.dataset must be refcoco, refcoco+ or refcocog, got %s"):format(spec.name,
      tostring(spec.dataset)), 0)
  end
  if type(spec.split) ~= "string" then
    error(("dataset %s: data.split names the refs' split (val, testA, testB, test)"):format(spec.name), 0)
  end
  local dir = spec.root .. "/" .. spec.dataset
  local refs_path = ("%s/refs(%s).p"):format(dir, spec.split_by or "unc")
  local inst_path = dir .. "/instances.json"
  for _, p in ipairs({ refs_path, inst_path }) do
    if not fs.exists(p) then
      error(("dataset %s: %s not found (the refer layout: <root>/<dataset>/instances.json and refs(<split_by>).p)")
        :format(spec.name, p), 0)
    end
  end
  local refs = pickle.load(refs_path)
  local ok, inst = pcall(json.decode, fs.read(inst_path))
  if not ok or type(inst) ~= "table" then error(("%s: not JSON: %s"):format(inst_path, tostring(inst)), 0) end
  local images, anns = {}, {}
  for _, im in ipairs(inst.images or {}) do images[im.id] = im end
  for _, a in ipairs(inst.annotations or {}) do anns[a.id] = a end
  local image_dir = spec.root .. "/images/mscoco/images/train2014"
  local items = {}
  for k, ref in ipairs(refs) do
    if type(ref) ~= "table" then error(("%s: ref %d is not a dict"):format(refs_path, k), 0) end
    if ref.split == spec.split then
      local im = images[ref.image_id]
      local where = ("%s ref %s (image %s, annotation %s)"):format(refs_path, tostring(ref.ref_id),
        tostring(ref.image_id), tostring(ref.ann_id))
      for _, sent in ipairs(ref.sentences or {}) do
        items[#items + 1] = {
          id = tostring(sent.sent_id), ref_id = ref.ref_id, expression = sent.sent or sent.raw, raw = sent.raw,
          image = im and (image_dir .. "/" .. im.file_name) or nil, info = im, ann = anns[ref.ann_id],
          where = where,
          missing = (not im and ("%s: image %s is not in %s"):format(where, tostring(ref.image_id), inst_path))
                    or (not anns[ref.ann_id] and ("%s: annotation %s is not in %s"):format(where,
                        tostring(ref.ann_id), inst_path)) or nil,
        }
      end
    end
  end
  if #items == 0 then
    error(("dataset %s: no sentence of split %s in %s"):format(spec.name, spec.split, refs_path), 0)
  end
  return setmetatable({ name = spec.name, title = spec.title or spec.name, task = "referring", root = spec.root,
                        items = items }, Dataset)
end

function Dataset:image(i)
  local item = self.items[i]
  if item.missing then error(item.missing, 0) end
  return data.read_image(item.image, item.where)
end

-- The ref's mask (H, W) uint8 0/1: its polygons rasterised and summed
-- (REFER.getMask), == 1 (ReferDataset), or its RLE.
function Dataset:mask(i)
  local item = self.items[i]
  local ann, info = item.ann, item.info
  local h, w = info.height, info.width
  local seg = ann.segmentation
  local out = T.zeros({ h, w }, "uint8")
  if type(seg) == "table" and type(seg[1]) == "table" then
    local sum = T.zeros({ h, w })
    for k, poly in ipairs(seg) do
      if #poly < 6 then
        error(("%s: polygon %d of annotation %s has %d coordinates, fewer than three points"):format(item.where, k,
          tostring(ann.id), #poly), 0)
      end
      sum:add_(masks.rle_decode(masks.rle_from_polygon(poly, h, w)):float())
    end
    out = sum:eq(1):byte()
  elseif type(seg) == "table" and seg.counts then
    out = masks.rle_decode(masks.json_to_rle(seg))
  else
    error(("%s: annotation %s has no polygons or RLE"):format(item.where, tostring(ann.id)), 0)
  end
  local any = false
  local p = out:ptr()
  for k = 0, out:numel() - 1 do if p[k] ~= 0 then any = true; break end end
  if not any then error(("%s: the mask of annotation %s is empty"):format(item.where, tostring(ann.id)), 0) end
  return out
end

-- ---- scores --------------------------------------------------------------------------------

-- records ({id, intersection, union} or {id, skipped}) → { oIoU, mIoU, ... }
function M.totals(records)
  local inter, union, sum_iou, n = 0, 0, 0, 0
  for _, r in ipairs(records) do
    if not r.skipped then
      inter, union = inter + r.intersection, union + r.union
      sum_iou, n = sum_iou + (r.union > 0 and r.intersection / r.union or 0), n + 1
    end
  end
  return { task = "referring", oIoU = union > 0 and inter / union or 0 / 0, mIoU = n > 0 and sum_iou / n or 0 / 0,
           sentences = n, sums = { intersection = inter, union = union, iou = sum_iou, n = n },
           skipped = skipped.collect(records) }
end

-- Shards' metrics records → one
function M.merge(recs)
  local s = { intersection = 0, union = 0, iou = 0, n = 0 }
  for _, r in ipairs(recs) do
    for k in pairs(s) do s[k] = s[k] + r.sums[k] end
  end
  return { task = "referring", oIoU = s.union > 0 and s.intersection / s.union or 0 / 0,
           mIoU = s.n > 0 and s.iou / s.n or 0 / 0, sentences = s.n, sums = s, skipped = skipped.merge(recs) }
end

function M.summary_lines(rec)
  local lines = { ("oIoU %.2f  mIoU %.2f (%d expressions)"):format(100 * rec.oIoU, 100 * rec.mIoU, rec.sentences) }
  return skipped.lines(rec.skipped, lines)
end

return M
