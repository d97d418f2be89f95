-- fmseg.masks — mask operations: label maps, connected components, small
-- region cleanup, COCO RLE, boxes, IoU, NMS, stability score, distance
-- transform, morphology, overlays. Thin wrappers over core/masks.c and
-- core/distance.c; segment-anything's utils/amg.py helpers keep their names
-- and results.
--
--   local masks = require("fmseg.masks")
--   local m = masks.threshold(logits, 0)           -- (H, W) uint8
--   local rle = masks.rle_encode(m)                -- {size = {h, w}, counts = {...}}
--   print(masks.rle_area(rle), masks.rle_to_json(rle).counts)
--
-- Masks are uint8 tensors (nonzero = set; other dtypes are converted).
-- An RLE is segment-anything's uncompressed form: {size = {h, w}, counts =
-- {n0, n1, ...}}, runs over the column-major pixels starting with unset.
-- Indices handed back to Lua (nms, index_select) are 1-based.
local core = require("fmseg.core")
local T = require("fmseg.tensor")
local ffi, C, check, check_ptr = core.ffi, core.C, core.check, core.check_ptr

local M = {}

local function contiguous(t) return t:is_contiguous() and t or t:contiguous() end

local function as_u8(mask, what)
  if not T.is_tensor(mask) then error((what or "mask") .. ": expected a tensor, got " .. type(mask), 3) end
  if mask:dtype() ~= "uint8" then mask = mask:byte() end
  return contiguous(mask)
end

local function as_f32(t, what)
  if not T.is_tensor(t) then error((what or "tensor") .. ": expected a tensor, got " .. type(t), 3) end
  if t:dtype() ~= "float32" then t = t:float() end
  return contiguous(t)
end

-- Label maps ---------------------------------------------------------------------

-- x (C, H, W) float32 -> (H, W) int32 channel indices (0-based, as argmax)
function M.argmax_channels(x)
  x = as_f32(x, "argmax_channels")
  if x:dim() ~= 3 then error("argmax_channels: expected (C, H, W), got " .. T.shape_string(x:shape()), 2) end
  local out = T.new({ x:size(2), x:size(3) }, "int32")
  check(C.fm_argmax_channels(out, x))
  return out
end

-- x float32 -> uint8 of the same shape, x > t
function M.threshold(x, t)
  x = as_f32(x, "threshold")
  local out = T.new(x:shape(), "uint8")
  check(C.fm_threshold(out, x, t or 0))
  return out
end

-- Connected components --------------------------------------------------------------

-- mask (H, W) -> labels (H, W) int32 (0 off the mask, 1..n), n
function M.connected_components(mask, connectivity)
  mask = as_u8(mask, "connected_components")
  local labels = T.new(mask:shape(), "int32")
  local n = C.fm_connected_components(labels, mask, connectivity or 8)
  if n < 0 then core.raise("connected_components") end
  return labels, tonumber(n)
end

-- labels (H, W) int32 in [0, n] -> (n + 1) int32 pixel counts per label
function M.label_areas(labels, n)
  labels = contiguous(labels:dtype() == "int32" and labels or labels:int())
  n = n or labels:float():max()
  local areas = T.new({ n + 1 }, "int32")
  check(C.fm_label_areas(areas, labels), "label_areas")
  return areas
end

local REGION_MODES = { holes = C.FM_HOLES, islands = C.FM_ISLANDS }

-- segment-anything's remove_small_regions(mask, area_thresh, mode):
-- mode "holes" or "islands"; returns the new mask (uint8 0/1) and whether
-- anything was small.
function M.remove_small_regions(mask, area_thresh, mode)
  local code = REGION_MODES[mode]
  if not code then error("remove_small_regions: mode must be \"holes\" or \"islands\", got " .. tostring(mode), 2) end
  mask = as_u8(mask, "remove_small_regions")
  local out = T.new(mask:shape(), "uint8")
  local rc = C.fm_remove_small_regions(out, mask, area_thresh, code)
  if rc < 0 then core.raise("remove_small_regions") end
  return out, rc == 1
end

-- COCO RLE -------------------------------------------------------------------------

local function counts_tensor(counts)
  if T.is_tensor(counts) then return contiguous(counts:dtype() == "int32" and counts or counts:int()) end
  if type(counts) == "string" then return T.wrap(C.fm_rle_from_string(counts), "rle") end
  if type(counts) ~= "table" then error("rle: counts must be a list, a string or a tensor", 3) end
  local t = T.new({ #counts }, "int32")
  local p = t:ptr()
  for i = 1, #counts do p[i - 1] = counts[i] end
  return t
end
M.counts_tensor = counts_tensor

local function counts_list(t)
  local p, out = t:ptr(), {}
  for i = 0, t:numel() - 1 do out[i + 1] = tonumber(p[i]) end
  return out
end

local function check_rle(rle, level)
  if type(rle) ~= "table" or type(rle.size) ~= "table" or rle.counts == nil then
    error("rle: expected {size = {h, w}, counts = ...}", level or 3)
  end
end

-- mask (H, W) -> rle; masks (N, H, W) -> list of rles
function M.rle_encode(mask)
  mask = as_u8(mask, "rle_encode")
  if mask:dim() == 3 then
    local out = {}
    for i = 1, mask:size(1) do out[i] = M.rle_encode(mask:select(1, i)) end
    return out
  end
  if mask:dim() ~= 2 then error("rle_encode: expected (H, W) or (N, H, W), got " .. T.shape_string(mask:shape()), 2) end
  local counts = T.wrap(C.fm_rle_encode(mask), "rle_encode")
  return { size = { mask:size(1), mask:size(2) }, counts = counts_list(counts) }
end

-- A COCO polygon {x1, y1, x2, y2, ...} -> the rle of its (h, w) mask, as
-- pycocotools' frPyObjects / annToRLE rasterise polygon segmentations (an
-- odd trailing number is dropped, as frPoly's int(len / 2) does).
function M.rle_from_polygon(polygon, h, w)
  if type(polygon) ~= "table" then error("rle_from_polygon: polygon must be a list of numbers", 2) end
  local n = math.floor(#polygon / 2)
  local xy = ffi.new("double[?]", math.max(2 * n, 1))
  for i = 1, 2 * n do
    local v = polygon[i]
    if type(v) ~= "number" then error(("rle_from_polygon: coordinate %d is not a number"):format(i), 2) end
    xy[i - 1] = v
  end
  local counts = T.wrap(C.fm_rle_from_polygon(xy, n, h, w), "rle_from_polygon")
  return { size = { h, w }, counts = counts_list(counts) }
end

-- rle (counts as a list or pycocotools string) -> (H, W) uint8
function M.rle_decode(rle)
  check_rle(rle)
  local mask = T.new({ rle.size[1], rle.size[2] }, "uint8")
  check(C.fm_rle_decode(mask, counts_tensor(rle.counts)))
  return mask
end

function M.rle_area(rle)
  check_rle(rle)
  local a = C.fm_rle_area(counts_tensor(rle.counts))
  if a < 0 then core.raise("rle_area") end
  return tonumber(a)
end

-- Writes `value` into labels (H, W) int32 at the set pixels of rle.
function M.rle_paint(labels, rle, value)
  check_rle(rle)
  check(C.fm_rle_paint(labels, counts_tensor(rle.counts), value), "rle_paint")
  return labels
end

-- uncompressed -> pycocotools compressed counts string (and back)
function M.rle_compress(rle)
  check_rle(rle)
  if type(rle.counts) == "string" then return { size = { rle.size[1], rle.size[2] }, counts = rle.counts } end
  local s = check_ptr(C.fm_rle_to_string(counts_tensor(rle.counts)), "rle_compress")
  local str = ffi.string(s)
  C.fm_free(s)
  return { size = { rle.size[1], rle.size[2] }, counts = str }
end

function M.rle_decompress(rle)
  check_rle(rle)
  if type(rle.counts) ~= "string" then return { size = { rle.size[1], rle.size[2] }, counts = rle.counts } end
  return { size = { rle.size[1], rle.size[2] }, counts = counts_list(counts_tensor(rle.counts)) }
end

-- The COCO record form ({size = {h, w}, counts = "compressed"}), what
-- segment-anything's coco_encode_rle writes to JSON.
function M.rle_to_json(rle)
  return M.rle_compress(rle)
end

-- mask (H, W) uint8 0/1 → the record fields of one instance as
-- segment-anything writes them: { segmentation = COCO RLE (JSON form),
-- area, bbox = {x, y, w, h} } (w = x1 - x0 of masks_to_boxes' inclusive
-- corners, as segment-anything's box_xyxy_to_xywh makes it)
function M.instance_record(mask)
  local rle = M.rle_encode(mask)
  local b = M.masks_to_boxes(mask):values()
  return { segmentation = M.rle_to_json(rle), area = M.rle_area(rle), bbox = { b[1], b[2], b[3] - b[1], b[4] - b[2] } }
end

-- A COCO segmentation (a decoded JSON object, counts compressed or not)
-- -> uncompressed rle. Sizes are checked against the counts.
function M.json_to_rle(obj)
  check_rle(obj)
  local rle = M.rle_decompress(obj)
  local h, w, total = rle.size[1], rle.size[2], 0
  for _, c in ipairs(rle.counts) do total = total + c end
  if total ~= h * w then
    error(("json_to_rle: counts add up to %d, size %dx%d has %d pixels"):format(total, h, w, h * w), 2)
  end
  return rle
end

-- Boxes ----------------------------------------------------------------------------

-- masks (N, H, W) -> (N, 4) float32 XYXY, inclusive pixel indices, zeros
-- for empty masks (batched_mask_to_box); (H, W) -> (4)
function M.masks_to_boxes(masks)
  masks = as_u8(masks, "masks_to_boxes")
  local single = masks:dim() == 2
  if single then masks = masks:reshape(1, masks:size(1), masks:size(2)) end
  local boxes = T.new({ masks:size(1), 4 })
  check(C.fm_masks_to_boxes(boxes, masks), "masks_to_boxes")
  return single and boxes:reshape(4) or boxes
end

local function as_boxes(b, what)
  b = as_f32(b, what)
  if b:dim() == 1 then b = b:reshape(1, 4) end
  return b
end

function M.xyxy_to_xywh(boxes)
  local single = boxes:dim() == 1
  boxes = as_boxes(boxes, "xyxy_to_xywh")
  local out = T.new(boxes:shape())
  check(C.fm_boxes_xyxy_to_xywh(out, boxes), "xyxy_to_xywh")
  return single and out:reshape(4) or out
end

-- a (N, 4), b (M, 4) XYXY -> (N, M) IoU (torchvision box_iou)
function M.box_iou(a, b)
  a, b = as_boxes(a, "box_iou"), as_boxes(b, "box_iou")
  local out = T.new({ a:size(1), b:size(1) })
  check(C.fm_box_iou(out, a, b), "box_iou")
  return out
end

-- Greedy NMS (torchvision batched_nms): boxes (N, 4), scores (N),
-- categories (N) integers or nil. Returns the kept 1-based indices, by score
-- (past 1000 boxes in the order batched_nms gives on the CPU, equal scores
-- included: see fm_nms).
function M.nms(boxes, scores, iou_threshold, categories)
  boxes, scores = as_boxes(boxes, "nms"), as_f32(scores, "nms")
  local n = boxes:size(1)
  if n == 0 then return {} end
  local cats = categories and contiguous(categories:dtype() == "int32" and categories or categories:int())
  local keep = T.new({ n }, "int32")
  local k = C.fm_nms(keep, boxes, scores, cats, iou_threshold)
  if k < 0 then core.raise("nms") end
  local p, out = keep:ptr(), {}
  for i = 0, tonumber(k) - 1 do out[i + 1] = p[i] + 1 end
  return out
end

-- logits (N, H, W) -> (N) float32 (calculate_stability_score)
function M.stability_score(logits, mask_threshold, offset)
  logits = as_f32(logits, "stability_score")
  local out = T.new({ logits:size(1) })
  check(C.fm_stability_score(out, logits, mask_threshold or 0, offset or 1), "stability_score")
  return out
end

local function box4(b, what)
  if type(b) ~= "table" or #b ~= 4 then error(what .. ": expected {x0, y0, x1, y1}", 3) end
  return ffi.new("double[4]", b)
end

-- boxes (N, 4) XYXY in crop coordinates; crop_box, orig_box {x0, y0, x1, y1}
-- -> (N) uint8, 1 for boxes near an inner crop edge (is_box_near_crop_edge)
function M.near_crop_edge(boxes, crop_box, orig_box, atol)
  boxes = as_boxes(boxes, "near_crop_edge")
  local out = T.new({ boxes:size(1) }, "uint8")
  check(C.fm_boxes_near_crop_edge(out, boxes, box4(crop_box, "near_crop_edge"),
                                  box4(orig_box, "near_crop_edge"), atol or 20), "near_crop_edge")
  return out
end

-- Gathering and uncropping ---------------------------------------------------------

-- Rows idx (1-based Lua array) of t along dim 1, as a new tensor.
function M.index_select(t, idx)
  local shape = t:shape()
  shape[1] = #idx
  local out = T.new(shape, t:dtype())
  for i, j in ipairs(idx) do out:select(1, i):copy(t:select(1, j)) end
  return out
end

-- masks (N, h, w) of a crop -> (N, H, W) of the image (uncrop_masks)
function M.uncrop_masks(masks, crop_box, h, w)
  local x0, y0, x1, y1 = unpack(crop_box)
  if x0 == 0 and y0 == 0 and x1 == w and y1 == h then return masks end
  local out = T.new({ masks:size(1), h, w }, masks:dtype())
  out:narrow(2, y0 + 1, y1 - y0):narrow(3, x0 + 1, x1 - x0):copy(masks)
  return out
end

-- Distance transform, morphology ---------------------------------------------------

-- mask (H, W) -> (H, W) float32 exact Euclidean distance of each set pixel
-- to the nearest unset one (0 on unset pixels, inf when there is none)
function M.distance_transform(mask)
  mask = as_u8(mask, "distance_transform")
  local out = T.new(mask:shape())
  check(C.fm_distance_transform(out, mask), "distance_transform")
  return out
end

local KERNELS = { square = C.FM_KERNEL_SQUARE, cross = C.FM_KERNEL_CROSS }

local function morphology(op, name)
  return function(mask, radius, kernel)
    local shape = KERNELS[kernel or "square"]
    if not shape then error(name .. ": kernel must be \"square\" or \"cross\"", 2) end
    mask = as_u8(mask, name)
    local out = T.new(mask:shape(), "uint8")
    check(C.fm_morphology(out, mask, op, radius or 1, shape), name)
    return out
  end
end
M.dilate = morphology(C.FM_DILATE, "dilate")
M.erode = morphology(C.FM_ERODE, "erode")

-- Overlays ---------------------------------------------------------------------------

-- n colours {r, g, b, ...}, random but the same for the same seed
function M.random_palette(n, seed)
  local r, out = T.rng(seed or 1234), {}
  for i = 1, 3 * n do out[i] = math.floor(r() * 200) + 55 end
  return out
end

-- img (H, W, 3) uint8 with each rle (or each record's segmentation)
-- blended in its own colour, largest first so that small masks stay on
-- top (as segment-anything's notebooks draw them). opts.alpha (0.5),
-- opts.seed. Returns a new image.
function M.overlay(img, rles, opts)
  opts = opts or {}
  local h, w = img:size(1), img:size(2)
  local items = {}
  for i, r in ipairs(rles) do
    local rle = r.segmentation or r
    check_rle(rle, 2)
    if rle.size[1] ~= h or rle.size[2] ~= w then
      error(("overlay: mask %d is %dx%d, the image %dx%d"):format(i, rle.size[1], rle.size[2], h, w), 2)
    end
    items[i] = { rle = rle, area = r.area or M.rle_area(rle), index = i }
  end
  table.sort(items, function(a, b)
    if a.area ~= b.area then return a.area > b.area end
    return a.index < b.index
  end)
  local labels = T.full({ h, w }, -1, "int32")
  for _, it in ipairs(items) do M.rle_paint(labels, it.rle, it.index - 1) end
  local palette = M.random_palette(math.max(#rles, 1), opts.seed)
  local buf = ffi.new("uint8_t[?]", #palette)
  for i = 1, #palette do buf[i - 1] = palette[i] end
  local out = contiguous(img:dtype() == "uint8" and img or img:byte()):clone()
  check(C.fm_draw_blend_labels(out, labels, buf, #rles, opts.alpha or 0.5), "overlay")
  return out
end

return M
