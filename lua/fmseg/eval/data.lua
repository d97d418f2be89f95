-- fmseg.eval.data — evaluation datasets in their public layouts, as
-- mmsegmentation prepares them (PASCAL VOC, PASCAL Context, COCO-Stuff,
-- COCO-Object, ADE20K, Cityscapes), ADE20K-Full and PASCAL Context-459 as
-- detectron2-style scripts do, and PASCAL VOC detection XML for object
-- discovery. The definitions live in configs/_base_/datasets/*.yaml:
--
--   data:
--     name: voc21                      # how runs and tables name it
--     title: VOC21                     # column header in tables (default: name)
--     task: semantic                   # semantic (mIoU) | discovery (CorLoc) |
--                                      # interactive (NoC: fmseg.eval.interactive_data) |
--                                      # oneshot (PerSeg's mIoU: fmseg.eval.oneshot) |
--                                      # referring (oIoU: fmseg.eval.referring) |
--                                      # fewshot (COCO-20i, FSS-1000, LVIS-92i episodes:
--                                      # fmseg.eval.fewshot)
--     root: data/VOCdevkit/VOC2012     # --data ROOT replaces it
--     split: ImageSets/Segmentation/val.txt  # ids, one a line; without it
--                                      # every image under `images` (recursive,
--                                      # sorted by path) is one item
--     images: JPEGImages               # <root>/<images>/<id><image_suffix>
--     image_suffix: .jpg
--     annotations: SegmentationClass   # <root>/<annotations>/<id><annotation_suffix>
--     annotation_suffix: .png
--     num_classes: 21                  # checked against `classes`
--     reduce_zero_label: false         # true: 0 -> ignore, k -> k - 1
--     label_map: ~                     # {raw: class}; unlisted values -> ignore
--     ignore_index: 255
--     background: 0                    # class index of background, or ~
--     remove_hards: false              # discovery: LOST's --no_hard
--     class_names: ~                   # display names (file or list); default:
--                                      # each class's first synonym, "background"
--                                      # for the background class
--     center_crop: false               # an evaluation protocol's centred square
--     resize: ~                        # and size (fmseg.eval.protocol; DiffSeg's)
--     short_side_crop: ~               # or CLIP's Resize(n) + CenterCrop(n) (CLIPtrase's)
--     metric_ignore_index: ~           # the value mmseg's IoUMetric skips when a
--                                      # config never sets it (255), on maps whose
--                                      # unlabelled value is ignore_index (65535): the
--                                      # pixels of class 255 skipped, the unlabelled
--                                      # ones' predictions counted in the union, as the
--                                      # official A-847 / PC-459 scores (fmseg.eval)
--     ignore_as_background: false      # unlabelled pixels scored as the background
--                                      # class (CLIPtrase's gts[gts == 255] = C);
--                                      # an image with no labelled pixel is skipped
--   classes: configs/_base_/classes/voc21.txt   # what the recipe queries
--
--   local ds = data.open(cfg, { root = "/datasets/VOC2012" })
--   for i = 1, #ds.items do
--     local img, gt = ds:image(i), ds:labels(i)   -- (H, W, 3) u8, (H, W) labels
--   end
--
-- Label maps come back as (H, W) uint8 or int32 tensors of class indices
-- in [0, num_classes) or ignore_index. Annotations are palette or grey
-- PNGs, or 16-bit TIFFs when annotation_suffix ends in .tif (ADE20K-Full,
-- PASCAL Context-459: ignore_index 65535). Problems name the path at fault
-- and what was expected there.
local config = require("fmseg.io.config")
local classes_mod = require("fmseg.method.classes")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local protocol = require("fmseg.eval.protocol")
local T = require("fmseg.tensor")
local ffi, C, check = core.ffi, core.C, core.check

local M = {}

local Dataset = {}
Dataset.__index = Dataset

local exists, is_dir, quote = fs.exists, fs.is_dir, fs.quote

local function join(a, b)
  if b == nil or b == "" then return a end
  if b:sub(1, 1) == "/" then return b end
  return (a:gsub("/+$", "")) .. "/" .. b
end

-- ---- the definition -----------------------------------------------------

local function need(spec, key, kind, name)
  local v = spec[key]
  if v == nil then error(("dataset %s: data.%s is missing"):format(name, key), 0) end
  if type(v) ~= kind then
    error(("dataset %s: data.%s must be a %s, got %s"):format(name, key, kind, tostring(v)), 0)
  end
  return v
end

local function opt(spec, key, kind, default, name)
  local v = spec[key]
  if v == nil then return default end
  if type(v) ~= kind then
    error(("dataset %s: data.%s must be a %s, got %s"):format(name, key, kind, tostring(v)), 0)
  end
  return v
end

-- The tasks whose datasets have readers of their own (one item per object,
-- per class image, per expression).
M.OWN_LAYOUTS = { interactive = "fmseg.eval.interactive_data", oneshot = "fmseg.eval.oneshot",
                  referring = "fmseg.eval.referring", fewshot = "fmseg.eval.fewshot" }

-- The `data` section and `classes` of a config, checked and filled in.
function M.spec(cfg)
  local d = config.get(cfg, "data")
  if type(d) ~= "table" then
    error("config: no `data` section (inherit one of configs/_base_/datasets/*.yaml)", 0)
  end
  local get = function(k) return config.get(cfg, "data." .. k) end
  local plain = {}
  for _, k in ipairs({ "name", "title", "task", "root", "split", "images", "image_suffix", "annotations",
                       "annotation_suffix", "num_classes", "reduce_zero_label", "label_map",
                       "ignore_index", "background", "remove_hards", "class_names",
                       "center_crop", "resize", "short_side_crop", "ignore_as_background",
                       "metric_ignore_index" }) do
    plain[k] = get(k)
  end
  local name = plain.name or "?"
  if M.OWN_LAYOUTS[plain.task] then
    -- their own layouts: fmseg.eval.interactive_data, oneshot, referring, fewshot
    return { name = need(plain, "name", "string", name), title = opt(plain, "title", "string", name, name),
             task = plain.task, root = need(plain, "root", "string", name), layout = get("layout"),
             ref_idx = get("ref_idx"), dataset = get("dataset"), split_by = get("split_by"), split = get("split"),
             benchmark = get("benchmark"), fold = get("fold"), shot = get("shot"), seed = get("seed"),
             img_size = get("img_size"), use_original_imgsize = get("use_original_imgsize") }
  end
  local s = {
    name = need(plain, "name", "string", name),
    task = opt(plain, "task", "string", "semantic", name),
    root = need(plain, "root", "string", name),
    split = opt(plain, "split", "string", nil, name),
    images = need(plain, "images", "string", name),
    image_suffix = opt(plain, "image_suffix", "string", ".jpg", name),
    annotations = need(plain, "annotations", "string", name),
    annotation_suffix = opt(plain, "annotation_suffix", "string", ".png", name),
    reduce_zero_label = opt(plain, "reduce_zero_label", "boolean", false, name),
    ignore_index = opt(plain, "ignore_index", "number", 255, name),
    background = opt(plain, "background", "number", nil, name),
    remove_hards = opt(plain, "remove_hards", "boolean", false, name),
    label_map = plain.label_map,
    center_crop = opt(plain, "center_crop", "boolean", false, name),
    resize = opt(plain, "resize", "number", nil, name),
    short_side_crop = opt(plain, "short_side_crop", "number", nil, name),
    ignore_as_background = opt(plain, "ignore_as_background", "boolean", false, name),
    metric_ignore_index = opt(plain, "metric_ignore_index", "number", nil, name),
  }
  if s.short_side_crop and (s.center_crop or s.resize) then
    error(("dataset %s: data.short_side_crop is a protocol of its own; drop center_crop / resize"):format(name), 0)
  end
  if s.short_side_crop and (s.short_side_crop < 1 or s.short_side_crop % 1 ~= 0) then
    error(("dataset %s: data.short_side_crop must be a whole number of pixels, got %s"):format(
      name, tostring(s.short_side_crop)), 0)
  end
  s.title = opt(plain, "title", "string", s.name, name)
  if s.task ~= "semantic" and s.task ~= "discovery" then
    error(("dataset %s: data.task must be semantic, discovery, interactive, oneshot, referring or fewshot, "
      .. "got %s"):format(name, s.task), 0)
  end
  if s.task == "semantic" then
    local cls = config.get(cfg, "classes")
    if not cls then error(("dataset %s: the config names no `classes` file"):format(name), 0) end
    s.classes = classes_mod.from_config(cls)
    s.num_classes = opt(plain, "num_classes", "number", #s.classes.names, name)
    if s.num_classes ~= #s.classes.names then
      error(("dataset %s: data.num_classes is %d but `classes` (%s) lists %d"):format(
        name, s.num_classes, type(cls) == "string" and cls or "inline", #s.classes.names), 0)
    end
    if s.ignore_index < s.num_classes then
      error(("dataset %s: ignore_index %d must not be a class index (0..%d)"):format(
        name, s.ignore_index, s.num_classes - 1), 0)
    end
    if s.background and (s.background < 0 or s.background >= s.num_classes) then
      error(("dataset %s: data.background %d is not a class index"):format(name, s.background), 0)
    end
    if s.ignore_as_background and not s.background then
      error(("dataset %s: data.ignore_as_background needs data.background (the class they become)"):format(name), 0)
    end
    if s.label_map and s.reduce_zero_label then
      error(("dataset %s: give label_map or reduce_zero_label, not both"):format(name), 0)
    end
    s.class_names = classes_mod.display_names(s.classes, s.background, plain.class_names)
  end
  return s
end

-- ---- listing ------------------------------------------------------------

local function read_split(path, name)
  local f = io.open(path, "r")
  if not f then
    error(("dataset %s: split file %s not found (expected image ids, one a line)"):format(name, path), 0)
  end
  local ids = {}
  for line in f:lines() do
    local id = line:match("^%s*(%S+)")
    if id then ids[#ids + 1] = id end
  end
  f:close()
  if #ids == 0 then error(("dataset %s: split file %s lists no ids"):format(name, path), 0) end
  return ids
end

-- Every file under dir ending in suffix, as ids (relative path minus the
-- suffix), sorted by path as mmsegmentation sorts them.
local function scan(dir, suffix, name)
  local p = io.popen(("find -L %s -type f -name %s 2>/dev/null"):format(quote(dir), quote("*" .. suffix)))
  local paths = {}
  for line in p:lines() do paths[#paths + 1] = line end
  p:close()
  table.sort(paths)
  local ids, prefix = {}, dir:gsub("/+$", "") .. "/"
  for i, path in ipairs(paths) do
    ids[i] = path:sub(#prefix + 1, #path - #suffix)
  end
  if #ids == 0 then
    error(("dataset %s: no images ending in %s under %s"):format(name, suffix, dir), 0)
  end
  return ids
end

local function layout_hint(s)
  local parts = { s.images .. "/<id>" .. s.image_suffix, s.annotations .. "/<id>" .. s.annotation_suffix }
  if s.split then parts[#parts + 1] = s.split end
  return table.concat(parts, ", ")
end

-- Items whose files are missing are an error that names the first few.
local function check_files(items, key, what, s, root)
  local missing = {}
  for _, it in ipairs(items) do
    if not exists(it[key]) then missing[#missing + 1] = it[key] end
  end
  if #missing > 0 then
    local shown = {}
    for i = 1, math.min(3, #missing) do shown[i] = missing[i] end
    error(("dataset %s: %d of %d %s missing under %s, e.g. %s (expected %s)"):format(
      s.name, #missing, #items, what, root, table.concat(shown, ", "), layout_hint(s)), 0)
  end
end

-- ---- opening ------------------------------------------------------------

-- cfg: a loaded config; opts.root replaces data.root.
function M.open(cfg, opts)
  opts = opts or {}
  local s = M.spec(cfg)
  local root = opts.root or s.root
  if M.OWN_LAYOUTS[s.task] then
    s.root = root
    return require(M.OWN_LAYOUTS[s.task]).open(s)
  end
  if not is_dir(root) then
    error(("dataset %s: data root %s not found (set data.root or pass --data ROOT; expected %s under it)"):format(
      s.name, root, layout_hint(s)), 0)
  end
  local image_dir, ann_dir = join(root, s.images), join(root, s.annotations)
  if not is_dir(image_dir) then
    error(("dataset %s: image folder %s not found (expected %s)"):format(s.name, image_dir, layout_hint(s)), 0)
  end
  if not is_dir(ann_dir) then
    error(("dataset %s: annotation folder %s not found (expected %s)"):format(s.name, ann_dir, layout_hint(s)), 0)
  end
  local ids = s.split and read_split(join(root, s.split), s.name) or scan(image_dir, s.image_suffix, s.name)
  local items = {}
  for i, id in ipairs(ids) do
    items[i] = { id = id, image = image_dir .. "/" .. id .. s.image_suffix,
                 annotation = ann_dir .. "/" .. id .. s.annotation_suffix }
  end
  check_files(items, "image", "images", s, root)
  check_files(items, "annotation", "annotations", s, root)
  local ds = setmetatable({ spec = s, root = root, items = items, name = s.name, title = s.title,
                            task = s.task, num_classes = s.num_classes, ignore_index = s.ignore_index,
                            metric_ignore_index = s.metric_ignore_index,
                            background = s.background, class_names = s.class_names,
                            classes = s.classes }, Dataset)
  if s.task == "semantic" then ds.lut = M.label_table(s) end
  if s.task == "discovery" and s.remove_hards then ds:drop_hards() end
  return ds
end

-- The lookup table from annotation values to class indices, or nil when
-- the files hold class indices already.
function M.label_table(s)
  local ignore = s.ignore_index
  if s.reduce_zero_label then
    local lut = {}
    for v = 0, 255 do lut[v] = v == 0 and ignore or (v == ignore and ignore or v - 1) end
    return lut
  end
  if s.label_map then
    local lut = {}
    for v = 0, 255 do lut[v] = ignore end
    for k, v in pairs(s.label_map) do
      local raw, cls = tonumber(k), tonumber(v)
      -- a class outside 0..K-1 (other than ignore) would be scored silently wrong
      local known = cls and cls % 1 == 0 and (cls == ignore or (cls >= 0 and cls < (s.num_classes or math.huge)))
      if not raw or not known or raw < 0 or raw > 255 or raw % 1 ~= 0 then
        error(("dataset %s: label_map entry %s: %s must map a value 0..255 to a class 0..%s or %d"):format(
          s.name, tostring(k), tostring(v), s.num_classes and tostring(s.num_classes - 1) or "K-1", ignore), 0)
      end
      lut[raw] = cls
    end
    return lut
  end
  return nil
end

-- Applies a 0..255 table to (H, W) labels → (H, W) int32.
function M.remap(labels, lut)
  local n = 256
  for k in pairs(lut) do if k + 1 > n then n = k + 1 end end
  local buf = ffi.new("int32_t[?]", n)
  for i = 0, n - 1 do buf[i] = lut[i] or -1 end
  local out = T.new(labels:shape(), "int32")
  check(C.fm_labels_remap(out, labels:is_contiguous() and labels or labels:contiguous(), buf, n))
  return out
end

-- An image file (H, W, 3) uint8; an error names the file and, when given,
-- what it belongs to ("item 2008_000002"): for every dataset reader.
function M.read_image(path, context)
  local ok, img = pcall(image.load, path)
  if not ok then
    error(("%s%s: %s"):format(path, context and (" (" .. context .. ")") or "", tostring(img)), 0)
  end
  return img
end

function Dataset:image(i)
  local img = M.read_image(self.items[i].image)
  if protocol.active(self.spec) then img = protocol.image(img, self.spec) end
  return img
end

-- (H, W) class indices (uint8 or int32), ignore_index where unlabelled.
function Dataset:labels(i)
  local path = self.items[i].annotation
  local ok, lab = pcall(image.load_labels, path)
  if not ok then error(("%s: %s"):format(path, tostring(lab)), 0) end
  if self.lut then
    local ok2, out = pcall(M.remap, lab, self.lut)
    if not ok2 then error(("%s: %s"):format(path, tostring(out)), 0) end
    lab = out
  end
  if protocol.active(self.spec) then lab = protocol.labels(lab, self.spec) end
  if self.spec.ignore_as_background then lab = M.ignore_as_background(lab, self.spec) end
  return lab
end

-- Unlabelled pixels → the background class, as CLIPtrase scores its
-- background datasets; labels with no labelled pixel stay as they are
-- (nothing to score: the official skips such an image).
function M.ignore_as_background(lab, s)
  lab = lab:contiguous()
  local p, n, ignore = lab:ptr(), lab:numel(), s.ignore_index
  local labelled = false
  for i = 0, n - 1 do
    if p[i] ~= ignore then labelled = true; break end
  end
  if not labelled then return lab end
  local out = lab:clone()
  local q = out:ptr()
  for i = 0, n - 1 do if q[i] == ignore then q[i] = s.background end end
  return out
end

-- ---- PASCAL VOC detection XML ---------------------------------------------

-- Objects of a VOC annotation: { name, truncated, difficult, box = {x0, y0,
-- x1, y1} } with LOST's conversion of the 1-based inclusive indices to
-- pixel-edge coordinates (xmin - 1, ymin - 1, xmax, ymax).
function M.voc_objects(text, path)
  local objects = {}
  for body in text:gmatch("<object>(.-)</object>") do
    local function field(src, tag)
      return src:match("<" .. tag .. ">%s*(.-)%s*</" .. tag .. ">")
    end
    local bnd = field(body, "bndbox")
    local coords = {}
    for k, tag in ipairs({ "xmin", "ymin", "xmax", "ymax" }) do
      coords[k] = bnd and tonumber(field(bnd, tag))
      if not coords[k] then
        error(("%s: object %d has no numeric bndbox/%s"):format(path, #objects + 1, tag), 0)
      end
    end
    objects[#objects + 1] = {
      name = field(body, "name"),
      truncated = field(body, "truncated") == "1",
      difficult = field(body, "difficult") == "1",
      box = { coords[1] - 1, coords[2] - 1, coords[3], coords[4] },
    }
  end
  if #objects == 0 then error(("%s: no <object> with a <bndbox>"):format(path), 0) end
  return objects
end

function Dataset:objects(i)
  local path = self.items[i].annotation
  local text = fs.read(path)
  if not text then error(("%s: cannot read (expected a VOC annotation XML)"):format(path), 0) end
  return M.voc_objects(text, path)
end

-- Ground-truth boxes for CorLoc; with remove_hards, truncated and difficult
-- objects are left out (LOST's extract_gt_VOC).
function Dataset:boxes(i)
  local boxes = {}
  for _, o in ipairs(self:objects(i)) do
    if not (self.spec.remove_hards and (o.truncated or o.difficult)) then boxes[#boxes + 1] = o.box end
  end
  return boxes
end

-- LOST's discard_hard_voc: images all of whose objects are truncated or
-- difficult leave the set.
function Dataset:drop_hards()
  local kept = {}
  for i, it in ipairs(self.items) do
    local hard = true
    for _, o in ipairs(self:objects(i)) do
      if not (o.truncated or o.difficult) then hard = false end
    end
    if not hard then kept[#kept + 1] = it end
  end
  self.items = kept
end

return M
