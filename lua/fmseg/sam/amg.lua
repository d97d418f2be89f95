-- fmseg.sam.amg — SAM's and SAM 2's automatic mask generators: prompt a
-- grid of points, keep the confident and stable masks, remove duplicates.
-- ref: segment-anything automatic_mask_generator.py (SamAutomaticMaskGenerator)
-- and utils/amg.py; sam2/automatic_mask_generator.py
-- (SAM2AutomaticMaskGenerator); settings, filters, order of operations and
-- records are theirs.
--
--   local models = require("fmseg.models")
--   local amg = require("fmseg.sam.amg")
--   local predictor = require("fmseg.sam.predictor")
--   local gen = amg.new(predictor.new(models.load("sam", dir)), { points_per_side = 32 })
--   local records = gen:generate(img)          -- img (H, W, 3) uint8
--   -- records[i] = { segmentation = rle, area, bbox = {x, y, w, h},
--   --   predicted_iou, point_coords = {{x, y}}, stability_score,
--   --   crop_box = {x, y, w, h} }, best predicted IoU first
--
-- A SAM 2 predictor (predictor.family == "sam2", fmseg.sam.sam2_predictor)
-- gets SAM 2's generator: its defaults (M.sam2_defaults), the optional
-- mask-to-mask refinement (use_m2m), multimask_output, and
-- min_mask_region_area applied as the predictor's hole and sprinkle
-- filling of the low-res logits instead of SAM's postprocessing of the
-- final masks.
--
-- The predictor needs set_image(img) and predict_batch(points (N, 1, 2),
-- labels (N, 1), {multimask = true, return_logits = true}) → logits
-- (N, M, H, W), iou (N, M). When it also has upsample_logits (fmseg's
-- predictors), predict_batch is asked for the low-res logits only and
-- just the masks that pass the predicted-IoU filter are upsampled: the same
-- numbers, without (N, M, H, W) floats per batch.
local ffi = require("ffi")
local T = require("fmseg.tensor")
local masks = require("fmseg.masks")

local M = {}

-- SamAutomaticMaskGenerator's defaults (chosen for ViT-H).
M.defaults = {
  points_per_side = 32,          -- nil when point_grids is given
  points_per_batch = 64,
  pred_iou_thresh = 0.88,
  stability_score_thresh = 0.95,
  stability_score_offset = 1.0,
  box_nms_thresh = 0.7,
  crop_n_layers = 0,
  crop_nms_thresh = 0.7,
  crop_overlap_ratio = 512 / 1500,
  crop_n_points_downscale_factor = 1,
  point_grids = nil,             -- one list of {x, y} in [0, 1] per crop layer
  min_mask_region_area = 0,
  output_mode = "uncompressed_rle", -- or "coco_rle" (counts string), "binary_mask"
  mask_threshold = 0.0,          -- Sam.mask_threshold
  progress = true,               -- "amg: batch 3/16" on stderr; or a function(msg)
}

-- SAM2AutomaticMaskGenerator's defaults (chosen for Hiera-L): SAM's except
-- these, and two settings of its own.
M.sam2_defaults = {}
for k, v in pairs(M.defaults) do M.sam2_defaults[k] = v end
M.sam2_defaults.pred_iou_thresh = 0.8
M.sam2_defaults.output_mode = "binary_mask"
M.sam2_defaults.use_m2m = false            -- refine each mask once with itself as the mask prompt
M.sam2_defaults.multimask_output = true    -- false: one mask per point (dynamic multimask)

-- The defaults for a predictor's family.
function M.defaults_for(predictor)
  return predictor.family == "sam2" and M.sam2_defaults or M.defaults
end

-- Point grids and crops ---------------------------------------------------------

-- numpy.linspace(a, b, n): a + i * step, the last point exactly b.
local function linspace(a, b, n)
  local out = {}
  if n == 1 then return { a } end
  local step = (b - a) / (n - 1)
  for i = 0, n - 1 do out[i + 1] = i * step + a end
  out[n] = b
  return out
end

-- n x n points {x, y} in [0, 1], cell centres, x fastest (build_point_grid)
function M.build_point_grid(n)
  local offset = 1 / (2 * n)
  local side = linspace(offset, 1 - offset, n)
  local points = {}
  for i = 1, n do
    for j = 1, n do points[#points + 1] = { side[j], side[i] } end
  end
  return points
end

-- one grid per crop layer, n / scale^i points per side (build_all_layer_point_grids)
function M.build_all_layer_point_grids(n, n_layers, scale)
  local grids = {}
  for i = 0, n_layers do grids[i + 1] = M.build_point_grid(math.floor(n / scale ^ i)) end
  return grids
end

-- Crop boxes {x0, y0, x1, y1} and their layers: the image, then for layer i
-- (2^i)^2 overlapping crops, x outer, y inner (generate_crop_boxes).
function M.generate_crop_boxes(h, w, n_layers, overlap_ratio)
  local boxes, layers = { { 0, 0, w, h } }, { 0 }
  local short = math.min(h, w)
  local function crop_len(len, n, overlap) return math.ceil((overlap * (n - 1) + len) / n) end
  for layer = 0, n_layers - 1 do
    local per_side = 2 ^ (layer + 1)
    local overlap = math.floor(overlap_ratio * short * (2 / per_side))
    local cw, ch = crop_len(w, per_side, overlap), crop_len(h, per_side, overlap)
    for i = 0, per_side - 1 do
      for j = 0, per_side - 1 do
        local x0, y0 = math.floor((cw - overlap) * i), math.floor((ch - overlap) * j)
        boxes[#boxes + 1] = { x0, y0, math.min(x0 + cw, w), math.min(y0 + ch, h) }
        layers[#layers + 1] = layer + 1
      end
    end
  end
  return boxes, layers
end

-- Masks upsampled to the image's size at a time in process_batch.
local UPSAMPLE_CHUNK = 16

local function to_f32(v) return tonumber(ffi.new("float", v)) end

local function xyxy_to_xywh(b) return { b[1], b[2], b[3] - b[1], b[4] - b[2] } end

-- Mask data --------------------------------------------------------------------
-- A list of entries { rle, box = {x0, y0, x1, y1}, iou, point = {x, y},
-- stability, crop_box }, the rows of segment-anything's MaskData.

local function boxes_tensor(data, field)
  local t = T.new({ #data, 4 })
  local p = t:ptr()
  for i, e in ipairs(data) do
    local b = e[field or "box"]
    for k = 1, 4 do p[4 * (i - 1) + k - 1] = b[k] end
  end
  return t
end

local function scores_tensor(values)
  local t = T.new({ #values })
  local p = t:ptr()
  for i, v in ipairs(values) do p[i - 1] = v end
  return t
end

-- torchvision batched_nms with one category; entries in the kept order
local function nms(data, scores, threshold)
  if #data == 0 then return data end
  local keep = masks.nms(boxes_tensor(data), scores_tensor(scores), threshold)
  local out = {}
  for i, k in ipairs(keep) do out[i] = data[k] end
  return out
end

-- The generator --------------------------------------------------------------------

local Generator = {}
Generator.__index = Generator

function M.new(predictor, opts)
  local defaults, o = M.defaults_for(predictor), {}
  for k, v in pairs(defaults) do o[k] = v end
  for k, v in pairs(opts or {}) do
    if defaults[k] == nil and k ~= "point_grids" then
      if M.sam2_defaults[k] ~= nil then
        error(("amg: %s is a setting of SAM 2's generator; this model is SAM"):format(k), 0)
      end
      error(("amg: unknown setting '%s'"):format(tostring(k)), 0)
    end
    o[k] = v
  end
  if opts and opts.point_grids and opts.points_per_side == nil then o.points_per_side = nil end
  if (o.points_per_side == nil) == (o.point_grids == nil) then
    error("amg: give exactly one of points_per_side and point_grids", 2)
  end
  if o.output_mode ~= "uncompressed_rle" and o.output_mode ~= "coco_rle" and o.output_mode ~= "binary_mask" then
    error("amg: output_mode must be uncompressed_rle, coco_rle or binary_mask, got " .. tostring(o.output_mode), 2)
  end
  if o.points_per_side then
    o.point_grids = M.build_all_layer_point_grids(o.points_per_side, o.crop_n_layers,
                                                  o.crop_n_points_downscale_factor)
  elseif #o.point_grids < o.crop_n_layers + 1 then
    error(("amg: %d point grids for %d crop layers"):format(#o.point_grids, o.crop_n_layers + 1), 2)
  end
  return setmetatable({ predictor = predictor, opts = o, sam2 = predictor.family == "sam2" }, Generator)
end

function Generator:progress(msg)
  local p = self.opts.progress
  if type(p) == "function" then p(msg)
  elseif p then io.stderr:write(msg, "\n"); io.stderr:flush() end
end

-- SAM 2's hole and sprinkle filling of the low-res logits
-- (SAM2AutomaticMaskGenerator builds its predictor with max_hole_area =
-- max_sprinkle_area = min_mask_region_area), or nil.
local function fill_options(self)
  local a = self.opts.min_mask_region_area
  if self.sam2 and a > 0 then return { max_hole_area = a, max_sprinkle_area = a } end
  return nil
end

-- Logits (K, H, W) of the masks at flat indices `idx` (1-based over N x M)
-- of one predictor call; `rows` maps a prompt to its row of low_res when
-- the predictor made masks for some prompts only (predict_batch's
-- mask_filter).
local function kept_logits(self, pred, idx)
  if pred.logits then
    local l = pred.logits
    local n, m = l:size(1), l:size(2)
    return masks.index_select(l:reshape(n * m, l:size(3), l:size(4)), idx)
  end
  local low_res, rows = pred.low_res, pred.rows
  local n, m = low_res:size(1), low_res:size(2)
  if rows then
    local mapped = {}
    for i, k in ipairs(idx) do
      local p, j = math.floor((k - 1) / m) + 1, (k - 1) % m
      mapped[i] = (rows[p] - 1) * m + j + 1
    end
    idx = mapped
  end
  local picked = masks.index_select(low_res:reshape(n * m, low_res:size(3), low_res:size(4)), idx)
  local up = self.predictor:upsample_logits(picked, fill_options(self))
  picked:free()
  return up
end

-- The first step of _process_batch: the predictor's masks for points
-- (N, 1, 2) → { iou (N, M), logits (N, M, H, W) or low_res (R, M, h, w)
-- with rows (prompt → row; nil: every prompt), m }. `passes(v)`, the
-- predicted-IoU filter, lets fmseg's predictors make the masks of the
-- passing prompts only (nil: every prompt's masks).
local function predictions(self, pts, passes)
  local o, pred = self.opts, self.predictor
  local n = pts:size(1)
  -- fmseg's SAM predictor runs the IoU head first and makes masks only for
  -- the prompts with a mask that passes
  local function prompts_passing(iou_t)
    local v, mm, keep = iou_t:contiguous():values(), iou_t:size(2), {}
    for p = 1, iou_t:size(1) do
      for j = 1, mm do
        if passes(v[(p - 1) * mm + j]) then keep[#keep + 1] = p; break end
      end
    end
    return keep
  end
  local lazy = pred.upsample_logits ~= nil
  local fill = fill_options(self) or {}
  local logits, iou, low_res, picked = pred:predict_batch(pts, T.ones({ n, 1 }), {
    multimask = o.multimask_output ~= false, return_logits = true, masks = not lazy,
    mask_filter = lazy and passes and prompts_passing or nil, clamp = false,
    max_hole_area = fill.max_hole_area, max_sprinkle_area = fill.max_sprinkle_area })
  local rows
  if picked then
    rows = {}
    for r, p in ipairs(picked) do rows[p] = r end
  end
  return { iou = iou, logits = not lazy and logits or nil, low_res = low_res, rows = rows, m = iou:size(2) }
end

-- SAM 2's use_m2m: every mask of the batch (point-major) prompted again
-- with its point and its clamped low-res logits as the mask input, one
-- mask each (multimask off), points_per_batch prompts at a time → the
-- same form as predictions', M = 1 per (point, mask).
-- ref: SAM2AutomaticMaskGenerator._process_batch (use_m2m), refine_with_m2m
local function refine_with_m2m(self, pts, first)
  local pred, step = self.predictor, self.opts.points_per_batch
  local n, m = first.iou:size(1), first.m
  local low = first.low_res
  local h, w = low:size(3), low:size(4)
  local flat = pred:clamp_low_res(low:reshape(n * m, 1, h, w))
  local ious, lows = {}, {}
  for i0 = 1, n * m, step do
    local k = math.min(step, n * m - i0 + 1)
    local p = T.new({ k, 1, 2 })
    local dst, src = p:ptr(), pts:ptr()
    for j = 0, k - 1 do
      local from = math.floor((i0 - 1 + j) / m)
      dst[2 * j], dst[2 * j + 1] = src[2 * from], src[2 * from + 1]
    end
    local _, iou, lr = pred:predict_batch(p, T.ones({ k, 1 }), {
      mask_input = flat:narrow(1, i0, k):contiguous(), multimask = false, masks = false, clamp = false })
    ious[#ious + 1], lows[#lows + 1] = iou, lr
  end
  flat:free()
  return { iou = #ious == 1 and ious[1] or T.cat(ious, 1), low_res = #lows == 1 and lows[1] or T.cat(lows, 1),
           m = 1, per_point = m }
end

-- ref: SamAutomaticMaskGenerator._process_batch,
-- SAM2AutomaticMaskGenerator._process_batch. points {{x, y}, ...} in crop
-- pixels; returns entries with boxes and points still in the crop's frame
-- and RLEs in the image's.
function Generator:process_batch(points, crop_box, orig_h, orig_w)
  local o = self.opts
  local n = #points
  local pts = T.new({ n, 1, 2 })
  local pp = pts:ptr()
  for i, p in ipairs(points) do pp[2 * i - 2], pp[2 * i - 1] = p[1], p[2] end
  -- filter by predicted IoU (torch compares float32 scores with the
  -- threshold rounded to float32; so do we, for the same masks at the edge)
  local iou_thresh, stability_thresh = to_f32(o.pred_iou_thresh), to_f32(o.stability_score_thresh)
  local function passes(v) return o.pred_iou_thresh <= 0 or v > iou_thresh end
  local pred
  if o.use_m2m then
    -- the refinement sees every mask, the filters come after it
    pred = refine_with_m2m(self, pts, predictions(self, pts, nil))
  else
    pred = predictions(self, pts, passes)
  end
  local per_point = pred.per_point or pred.m
  local iou_v, idx = pred.iou:contiguous():values(), {}
  for k = 1, pred.iou:numel() do
    if passes(iou_v[k]) then idx[#idx + 1] = k end
  end
  if #idx == 0 then
    if pred.logits then pred.logits:free() end
    return {}
  end
  -- stability score and threshold, UPSAMPLE_CHUNK masks at a time: the
  -- full-size float logits of a chunk exist, never those of the batch
  -- (with the filters off that would be 192 x H x W floats)
  local stability, bins = {}, {}
  for c0 = 1, #idx, UPSAMPLE_CHUNK do
    local part = {}
    for j = c0, math.min(c0 + UPSAMPLE_CHUNK - 1, #idx) do part[#part + 1] = idx[j] end
    local kept = kept_logits(self, pred, part)
    for _, v in ipairs(masks.stability_score(kept, o.mask_threshold, o.stability_score_offset):values()) do
      stability[#stability + 1] = v
    end
    bins[#bins + 1] = masks.threshold(kept, o.mask_threshold)
    kept:free()
  end
  if pred.logits then pred.logits:free() end
  local bin = #bins == 1 and bins[1] or T.cat(bins, 1)
  local boxes = masks.masks_to_boxes(bin)
  local near = masks.near_crop_edge(boxes, crop_box, { 0, 0, orig_w, orig_h }):values()
  local bv = boxes:values()

  local out = {}
  for j, k in ipairs(idx) do
    local stable = o.stability_score_thresh <= 0 or stability[j] >= stability_thresh
    if stable and near[j] == 0 then
      local mask = masks.uncrop_masks(bin:narrow(1, j, 1), crop_box, orig_h, orig_w)
      -- entry k is one of its point's per_point masks (after m2m, each
      -- refined alone)
      out[#out + 1] = {
        rle = masks.rle_encode(mask:select(1, 1)),
        box = { bv[4 * j - 3], bv[4 * j - 2], bv[4 * j - 1], bv[4 * j] },
        iou = iou_v[k],
        point = points[math.floor((k - 1) / per_point) + 1],
        stability = stability[j],
      }
    end
  end
  bin:free()
  return out
end

-- ref: SamAutomaticMaskGenerator._process_crop
function Generator:process_crop(img, crop_box, layer, orig_h, orig_w, crop_index, n_crops)
  local o, pred = self.opts, self.predictor
  local x0, y0, x1, y1 = unpack(crop_box)
  local crop = img
  if x0 ~= 0 or y0 ~= 0 or x1 ~= orig_w or y1 ~= orig_h then
    crop = img:narrow(1, y0 + 1, y1 - y0):narrow(2, x0 + 1, x1 - x0):contiguous()
  end
  pred:set_image(crop)

  local grid, ch, cw = o.point_grids[layer + 1], y1 - y0, x1 - x0
  local points = {}
  for i, g in ipairs(grid) do points[i] = { g[1] * cw, g[2] * ch } end
  local data = {}
  local n_batches = math.ceil(#points / o.points_per_batch)
  for b = 1, n_batches do
    local first = (b - 1) * o.points_per_batch + 1
    local batch = {}
    for i = first, math.min(first + o.points_per_batch - 1, #points) do batch[#batch + 1] = points[i] end
    self:progress(n_crops > 1 and ("amg: crop %d/%d, batch %d/%d"):format(crop_index, n_crops, b, n_batches)
                  or ("amg: batch %d/%d"):format(b, n_batches))
    for _, e in ipairs(self:process_batch(batch, crop_box, orig_h, orig_w)) do data[#data + 1] = e end
    -- the batch's logits and the predictor's intermediates are C memory the
    -- collector cannot see: release them before the next batch
    collectgarbage()
  end
  if pred.reset_image then pred:reset_image() end

  -- duplicates within the crop, by predicted IoU
  local scores = {}
  for i, e in ipairs(data) do scores[i] = e.iou end
  data = nms(data, scores, o.box_nms_thresh)

  -- back to the image's frame
  for _, e in ipairs(data) do
    e.box = { e.box[1] + x0, e.box[2] + y0, e.box[3] + x0, e.box[4] + y0 }
    e.point = { e.point[1] + x0, e.point[2] + y0 }
    e.crop_box = crop_box
  end
  return data
end

-- ref: SamAutomaticMaskGenerator.postprocess_small_regions: fill small
-- holes, drop small islands, then NMS again preferring unchanged masks
-- (score 1) over changed ones (score 0); kept changed masks get their new
-- RLE and box.
function M.postprocess_small_regions(data, min_area, nms_thresh)
  if #data == 0 then return data end
  local scores, new = {}, {}
  for i, e in ipairs(data) do
    local mask = masks.rle_decode(e.rle)
    local filled, holes = masks.remove_small_regions(mask, min_area, "holes")
    local cleaned, islands = masks.remove_small_regions(filled, min_area, "islands")
    local unchanged = not holes and not islands
    scores[i] = unchanged and 1 or 0
    local b = masks.masks_to_boxes(cleaned):values()
    new[i] = { box = b, rle = not unchanged and masks.rle_encode(cleaned) or nil }
  end
  local t = T.new({ #data, 4 })
  local p = t:ptr()
  for i = 1, #data do for k = 1, 4 do p[4 * (i - 1) + k - 1] = new[i].box[k] end end
  local keep = masks.nms(t, scores_tensor(scores), nms_thresh)
  local out = {}
  for j, i in ipairs(keep) do
    local e = data[i]
    if scores[i] == 0 then e.rle, e.box = new[i].rle, new[i].box end
    out[j] = e
  end
  return out
end

-- ref: SamAutomaticMaskGenerator.generate and _generate_masks.
-- img (H, W, 3) uint8 → records, best first.
function Generator:generate(img)
  local o = self.opts
  local h, w = img:size(1), img:size(2)
  local crop_boxes, layers = M.generate_crop_boxes(h, w, o.crop_n_layers, o.crop_overlap_ratio)
  local data = {}
  for i, crop_box in ipairs(crop_boxes) do
    for _, e in ipairs(self:process_crop(img, crop_box, layers[i], h, w, i, #crop_boxes)) do
      data[#data + 1] = e
    end
  end
  -- duplicates between crops: prefer masks from smaller crops
  if #crop_boxes > 1 then
    local scores = {}
    for i, e in ipairs(data) do
      local b = e.crop_box
      scores[i] = 1 / ((b[3] - b[1]) * (b[4] - b[2]))
    end
    data = nms(data, scores, o.crop_nms_thresh)
  end
  -- SAM 2 filled the low-res logits instead (fill_options)
  if o.min_mask_region_area > 0 and not self.sam2 then
    data = M.postprocess_small_regions(data, o.min_mask_region_area,
                                       math.max(o.box_nms_thresh, o.crop_nms_thresh))
  end

  local records = {}
  for i, e in ipairs(data) do
    local seg = e.rle
    if o.output_mode == "coco_rle" then seg = masks.rle_to_json(e.rle)
    elseif o.output_mode == "binary_mask" then seg = masks.rle_decode(e.rle) end
    records[i] = {
      segmentation = seg,
      area = masks.rle_area(e.rle),
      bbox = xyxy_to_xywh(e.box),
      predicted_iou = e.iou,
      point_coords = { { e.point[1], e.point[2] } },
      stability_score = e.stability,
      crop_box = xyxy_to_xywh(e.crop_box),
    }
  end
  return records
end

return M
