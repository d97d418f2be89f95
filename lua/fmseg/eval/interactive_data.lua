-- fmseg.eval.interactive_data — the interactive segmentation benchmarks
-- in the layouts RITM's evaluation reads them (SamsungLabs/
-- ritm_interactive_segmentation isegm/data/datasets/: grabcut.py,
-- berkeley.py, davis.py, sbd.py), one item per object:
--
--   data:
--     name: grabcut
--     task: interactive
--     layout: grabcut         # grabcut | berkeley | davis | sbd
--     root: data/GrabCut      # --data ROOT replaces it
--
--   grabcut   <root>/data_GT/<name>.<ext>, <root>/boundary_GT/<stem>.<ext>:
--             values > 128 the object, 128 ignored (the boundary band),
--             1 also the object, anything else not (the code keeps values
--             under 128 and compares with 1); the mask's first channel as
--             OpenCV reads it (blue)
--   berkeley  the same with images/ and masks/
--   davis     img/ and gt/ (RITM's 345-frame DAVIS): the largest channel > 0
--   sbd       img/<id>.jpg, inst/<id>.mat (GTinst.Segmentation), ids in
--             val.txt: one item per instance id of each image, in order
--             (SBDEvaluationDataset)
--
-- Images are listed sorted by file name; a mask is found by the image
-- name's part before its first dot. ds:object(i) → (H, W) int32 with 1 the
-- object, 0 not, −1 ignored; problems (a missing or unreadable mask, one of
-- another size than its image, an object with no pixel) raise an error
-- naming the file and the item.
local data = require("fmseg.eval.data")
local fs = require("fmseg.io.fs")
local T = require("fmseg.tensor")

local M = {}

M.LAYOUTS = {
  grabcut = { images = "data_GT", masks = "boundary_GT", read = "grabcut" },
  berkeley = { images = "images", masks = "masks", read = "grabcut" },
  davis = { images = "img", masks = "gt", read = "davis" },
  sbd = { images = "img", masks = "inst", split = "val.txt", read = "sbd" },
}

local Dataset = {}
Dataset.__index = Dataset

local function list_files(dir)
  local out = {}
  local p = io.popen(("find -H %s -maxdepth 1 -type f -name '*.*' 2>/dev/null"):format(fs.quote(dir)))
  for line in p:lines() do out[#out + 1] = line:match("([^/]+)$") end
  p:close()
  table.sort(out)
  return out
end

local function first_stem(name) return name:match("^([^.]*)") end

local function grabcut_items(ds, layout)
  local images_dir, masks_dir = ds.root .. "/" .. layout.images, ds.root .. "/" .. layout.masks
  if not fs.is_dir(images_dir) then
    error(("dataset %s: %s is not a directory (the %s layout keeps images in %s/)"):format(
      ds.name, images_dir, ds.layout, layout.images), 0)
  end
  local mask_of = {}
  for _, name in ipairs(list_files(masks_dir)) do mask_of[name:match("^(.*)%.[^.]*$") or name] = name end
  local items = {}
  for _, name in ipairs(list_files(images_dir)) do
    local stem = first_stem(name)
    local mask = mask_of[stem]
    items[#items + 1] = { id = stem, image = images_dir .. "/" .. name,
                          annotation = mask and (masks_dir .. "/" .. mask) or nil,
                          missing = not mask and ("no mask %s/%s.* for %s"):format(masks_dir, stem, name) or nil }
  end
  return items
end

-- SBD: every instance id (ascending, 0 left out) of each listed image
local function sbd_items(ds, layout)
  local split = ds.root .. "/" .. layout.split
  local f = io.open(split, "r")
  if not f then error(("dataset %s: cannot read the split file %s"):format(ds.name, split), 0) end
  local items = {}
  for line in f:lines() do
    local id = line:match("^%s*(.-)%s*$")
    if id ~= "" then
      local image_path = ("%s/%s/%s.jpg"):format(ds.root, layout.images, id)
      local inst = ("%s/%s/%s.mat"):format(ds.root, layout.masks, id)
      local ok, seg = pcall(M.sbd_instances, inst)
      if not ok then
        items[#items + 1] = { id = id, image = image_path, annotation = inst, missing = tostring(seg) }
      else
        local present = {}
        local p = seg:ptr()
        for k = 0, seg:numel() - 1 do present[p[k]] = true end
        local ids = {}
        for v in pairs(present) do if v ~= 0 then ids[#ids + 1] = v end end
        table.sort(ids)
        for _, v in ipairs(ids) do
          items[#items + 1] = { id = ("%s_%d"):format(id, v), image = image_path, annotation = inst, instance = v }
        end
      end
    end
  end
  f:close()
  return items
end

-- The instance map of an SBD inst/<id>.mat (GTinst.Segmentation) as int32
function M.sbd_instances(path)
  local mat = require("fmseg.io.mat")
  local seg = mat.read(path, "GTinst.Segmentation")
  if not T.is_tensor(seg) or seg:dim() ~= 2 then
    error(("%s: GTinst.Segmentation is not a matrix"):format(path), 0)
  end
  return seg:int()
end

function M.open(spec)
  local layout = M.LAYOUTS[spec.layout]
  if not layout then
    local names = {}
    for k in pairs(M.LAYOUTS) do names[#names + 1] = k end
    table.sort(names)
    error(("dataset %s: data.layout must be one of %s for an interactive dataset, got %s"):format(
      spec.name, table.concat(names, ", "), tostring(spec.layout)), 0)
  end
  if not fs.is_dir(spec.root) then
    error(("dataset %s: data root %s is not a directory (pass --data ROOT or set data.root)"):format(
      spec.name, spec.root), 0)
  end
  local ds = setmetatable({ name = spec.name, title = spec.title or spec.name, task = "interactive",
                            root = spec.root, layout = spec.layout, read = layout.read }, Dataset)
  ds.items = layout.read == "sbd" and sbd_items(ds, layout) or grabcut_items(ds, layout)
  if #ds.items == 0 then
    error(("dataset %s: no images under %s/%s"):format(spec.name, spec.root, layout.images), 0)
  end
  return ds
end

function Dataset:image(i)
  local item = self.items[i]
  return data.read_image(item.image, "item " .. item.id)
end

-- raw mask values → the object map, as each dataset class builds it
local function grabcut_object(raw)
  local h, w = raw:size(1), raw:size(2)
  local out = T.new({ h, w }, "int32")
  local rp, op = raw:contiguous():ptr(), out:ptr()
  for k = 0, h * w - 1 do
    local v = rp[k]
    op[k] = (v > 128 or v == 1) and 1 or (v == 128 and -1 or 0)
  end
  return out
end

local function nonzero_object(raw, value)
  local h, w = raw:size(1), raw:size(2)
  local out = T.new({ h, w }, "int32")
  local rp, op = raw:contiguous():ptr(), out:ptr()
  for k = 0, h * w - 1 do
    local v = rp[k]
    op[k] = (value and v == value or (not value and v > 0)) and 1 or 0
  end
  return out
end

function Dataset:object(i, h, w)
  local item = self.items[i]
  if item.missing then error(("item %s: %s"):format(item.id, item.missing), 0) end
  local obj
  if self.read == "sbd" then
    obj = nonzero_object(M.sbd_instances(item.annotation), item.instance)
  else
    local m = data.read_image(item.annotation, "item " .. item.id)
    if self.read == "grabcut" then
      obj = grabcut_object(m:select(3, 3))            -- OpenCV's channel 0: blue
    else
      obj = nonzero_object(m:float():max(3):reshape(m:size(1), m:size(2)))
    end
  end
  if h and (obj:size(1) ~= h or obj:size(2) ~= w) then
    error(("%s (item %s): the mask is %dx%d, its image %dx%d"):format(item.annotation, item.id,
      obj:size(2), obj:size(1), w, h), 0)
  end
  local any = false
  local p = obj:ptr()
  for k = 0, obj:numel() - 1 do if p[k] == 1 then any = true; break end end
  if not any then error(("%s (item %s): the object mask is empty"):format(item.annotation, item.id), 0) end
  return obj
end

return M
