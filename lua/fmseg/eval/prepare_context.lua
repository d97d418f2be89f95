-- fmseg.eval.prepare_context — PASCAL Context's 60-label maps (59 classes
-- and background) from the Detail API's trainval_merged.json, as
-- mmsegmentation's tools/dataset_converters/pascal_context.py writes them
-- with zhanghang1989/detail-api:
--
--   Detail(json, img_dir, phase).getImgs(): the images whose `phase` is
--     "train" (then "val");
--   getMask(img): zeros of the image's height x width, then for each of
--     its annos_segmentation, in the file's order, the pixels of its RLE
--     (`segmentation` {size, counts}, pycocotools' compressed string)
--     set to its category_id;
--   _class_to_index: every value must be one of the 60 ids of _mapping
--     (sorted), and becomes its position there (np.digitize);
--   SegmentationClassContext/<file_name with jpg -> png> as 8-bit grey,
--   ImageSets/SegmentationContext/{train,val}.txt: the sorted ids.
--
-- Where the original stops at the first bad entry (an assert, a KeyError),
-- this names the entry, converts the rest and reports it in the summary.
local fs = require("fmseg.io.fs")
local json = require("fmseg.io.json")
local masks = require("fmseg.masks")
local T = require("fmseg.tensor")
local data = require("fmseg.eval.data")

local M = {}

-- mmseg's _mapping before np.sort: the Detail category ids of the 59
-- classes, 0 (background) first
M.MAPPING_IDS = {
  0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284,
  158, 159, 416, 33, 162, 420, 454, 295, 296, 427, 44, 45, 46, 308, 59,
  440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355,
  85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115,
}

-- category id -> its index in the sorted mapping (np.digitize(right=True)
-- of a value that is in the table)
local function class_index()
  local sorted = {}
  for i, v in ipairs(M.MAPPING_IDS) do sorted[i] = v end
  table.sort(sorted)
  local index, max = {}, 0
  for i, v in ipairs(sorted) do
    index[v] = i - 1
    if v > max then max = v end
  end
  local lut = {}
  for v = 0, max do lut[v] = index[v] or -1 end
  return index, lut
end

local function whole(x) return type(x) == "number" and x % 1 == 0 end

local function describe_ann(i, ann)
  return ("annos_segmentation[%d] (id %s)"):format(i, tostring(type(ann) == "table" and ann.id or "?"))
end

-- images by image_id (checked), and per image its annotations in the
-- order Detail's index has them: dicts by id, so a repeated id keeps the
-- first one's place and the last one's contents
local function index_annotations(doc, jname, rep, index)
  local imgs, order, place = {}, {}, {}
  for i, img in ipairs(doc.images) do
    if type(img) ~= "table" or not whole(img.image_id) or type(img.file_name) ~= "string"
      or not whole(img.height) or not whole(img.width) or img.height < 1 or img.width < 1 then
      rep.problem(("%s: images[%d]: needs image_id, file_name, height and width"):format(jname, i))
    else
      local at = place[img.image_id]
      if at then
        rep.problem(("%s: images[%d]: image_id %d repeats images[%d]; the last one is used, as Detail does"):format(
          jname, i, img.image_id, at.i))
        order[at.pos] = img
      else
        order[#order + 1] = img
        place[img.image_id] = { i = i, pos = #order }
      end
      imgs[img.image_id] = img
    end
  end
  local by_id, ids = {}, {}
  for i, ann in ipairs(doc.annos_segmentation) do
    if type(ann) ~= "table" or ann.id == nil then
      rep.problem(("%s: %s: not an annotation with an id"):format(jname, describe_ann(i, ann)))
    else
      if by_id[ann.id] == nil then ids[#ids + 1] = ann.id end
      by_id[ann.id] = { ann = ann, i = i }
    end
  end
  local per_image, bad = {}, {}
  for _, id in ipairs(ids) do
    local a = by_id[id]
    local ann, where = a.ann, describe_ann(a.i, a.ann)
    local img = imgs[ann.image_id]
    if img == nil then
      rep.problem(("%s: %s: image_id %s names no entry of `images`"):format(jname, where, tostring(ann.image_id)))
    elseif not whole(ann.category_id) or index[ann.category_id] == nil then
      rep.problem(("%s: %s (image %s): category_id %s is not one of PASCAL Context's 59 classes or background"):format(
        jname, where, img.file_name, tostring(ann.category_id)))
      bad[img] = true
    else
      local list = per_image[img] or {}
      list[#list + 1] = { ann = ann, where = where }
      per_image[img] = list
    end
  end
  return order, per_image, bad
end

-- the label map of one image: category ids painted in order, then indexed
local function write_mask(tmp, img, anns, lut)
  local h, w = img.height, img.width
  local labels = T.zeros({ h, w }, "int32")
  for _, a in ipairs(anns) do
    local seg = a.ann.segmentation
    if type(seg) ~= "table" or type(seg.size) ~= "table" or seg.counts == nil then
      error(("%s: segmentation must be an RLE {size, counts}"):format(a.where), 0)
    end
    if seg.size[1] ~= h or seg.size[2] ~= w then
      error(("%s: segmentation size %sx%s, the image is %dx%d"):format(a.where, tostring(seg.size[1]),
        tostring(seg.size[2]), h, w), 0)
    end
    local ok, err = pcall(masks.rle_paint, labels, seg, a.ann.category_id)
    if not ok then error(("%s: %s"):format(a.where, tostring(err)), 0) end
  end
  require("fmseg.eval.prepare").save_grey(tmp, data.remap(labels, lut))
end

local function write_split(path, ids)
  table.sort(ids)
  local lines = {}
  for i, id in ipairs(ids) do lines[i] = id .. "\n" end
  fs.mkdir_p(path:match("^(.*)/[^/]*$"))
  fs.write_atomic(path, table.concat(lines))
end

function M.convert(job)
  local prepare = require("fmseg.eval.prepare")
  local raw, root, rep = job.raw, job.root, job.rep
  local jpeg = prepare.join(raw, "JPEGImages")
  if not fs.is_dir(jpeg) then
    error(("prepare context: %s not found (expected %s)"):format(jpeg, job.entry.layout), 0)
  end
  local jpath = job.opts.json or prepare.join(raw, "trainval_merged.json")
  if not fs.exists(jpath) or fs.is_dir(jpath) then
    error(("prepare context: %s not found (expected the Detail API's trainval_merged.json: images, " ..
      "annos_segmentation with RLE segmentations; give --json FILE if it is elsewhere)"):format(jpath), 0)
  end
  local doc = json.decode_file(jpath)
  for _, key in ipairs({ "images", "annos_segmentation" }) do
    if type(doc) ~= "table" or type(doc[key]) ~= "table" then
      error(("prepare context: %s has no `%s` list (not the Detail API's trainval_merged.json)"):format(
        jpath, key), 0)
    end
  end
  local index, lut = class_index()
  local images, per_image, bad = index_annotations(doc, jpath, rep, index)
  local parts, out_dir = {}, prepare.join(root, "SegmentationClassContext")
  for _, phase in ipairs({ "train", "val" }) do
    local jobs, ids = {}, {}
    for _, img in ipairs(images) do
      if img.phase == phase then
        local target = prepare.join(out_dir, (img.file_name:gsub("jpg", "png")))
        local id = img.file_name:match("[^/]*$"):gsub("%.[^.]*$", "")
        if bad[img] then
          rep.problem(("%s: image %s left out (see above)"):format(jpath, img.file_name))
        else
          jobs[#jobs + 1] = { target = target, source = ("%s: image %s"):format(jpath, img.file_name),
                              write = function(tmp) write_mask(tmp, img, per_image[img] or {}, lut) end,
                              id = id }
        end
      end
    end
    local counts = prepare.run_jobs("context " .. phase, jobs, rep, job.quiet)
    for _, j in ipairs(jobs) do
      if fs.exists(j.target) then ids[#ids + 1] = j.id end
    end
    write_split(prepare.join(root, "ImageSets/SegmentationContext/" .. phase .. ".txt"), ids)
    counts.what = ("SegmentationClassContext/<id>.png (%s, listed in ImageSets/SegmentationContext/%s.txt)"):format(
      phase, phase)
    parts[#parts + 1] = counts
  end
  return parts
end

return M
