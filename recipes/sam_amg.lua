-- SAM's automatic mask generator as a recipe: a grid of point prompts,
-- confident and stable masks kept, duplicates removed (fmseg.sam.amg).
-- models.sam may be SAM or SAM 2 (by its config.json): SAM 2 runs
-- SAM2AutomaticMaskGenerator's steps and defaults.
-- The result is class-agnostic instances: one mask per record, records in
-- segment-anything's format (segmentation as COCO RLE, area, bbox XYWH,
-- predicted_iou, point_coords, stability_score, crop_box), best predicted
-- IoU first. params.output_mode is the generator's (coco_rle, the default,
-- uncompressed_rle or binary_mask); the records' segmentation stays in
-- that form where JSON can hold it (binary masks become COCO RLE there),
-- and the result's dump holds every record field as a tensor (below), the
-- segmentation exactly as the generator made it.
-- ref: facebookresearch/segment-anything automatic_mask_generator.py;
--      facebookresearch/sam2 sam2/automatic_mask_generator.py
local amg = require("fmseg.sam.amg")
local masks = require("fmseg.masks")
local T = require("fmseg.tensor")

-- The generators' settings with the defaults SAM and SAM 2 share (the ones
-- a recipe can set; the output format is the recipe's).
local SETTINGS = {
  "points_per_side", "points_per_batch", "stability_score_thresh",
  "stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh",
  "crop_overlap_ratio", "crop_n_points_downscale_factor", "min_mask_region_area", "mask_threshold",
}
-- Settings whose default depends on the model (pred_iou_thresh: SAM 0.88,
-- SAM 2 0.8) or that only SAM 2's generator has (use_m2m, multimask_output):
-- left to fmseg.sam.amg unless given.
local MODEL_SETTINGS = { "pred_iou_thresh", "use_m2m", "multimask_output" }
-- SAM 2's predictor option dynamic_multimask_via_stability (default
-- config.json's, true in the released models; false is
-- build_sam2(..., apply_postprocessing=False), as CorrCLIP builds it).
local PREDICTOR_SETTINGS = { "dynamic_multimask_via_stability" }

local defaults = {}
for _, k in ipairs(SETTINGS) do defaults[k] = amg.defaults[k] end
defaults.output_mode = "coco_rle"
local extra_params = {}
for _, k in ipairs(MODEL_SETTINGS) do extra_params[k] = true end
for _, k in ipairs(PREDICTOR_SETTINGS) do extra_params[k] = true end

local recipe = {
  name = "sam_amg",
  needs = { "sam" },
  produces = "instances",          -- a mask source for `regions:` (CorrCLIP)
  defaults = defaults,
  extra_params = extra_params,
}

-- params → the generator's options
function recipe.generator_options(params)
  local o = { output_mode = params.output_mode or defaults.output_mode, progress = false }
  for _, k in ipairs(SETTINGS) do o[k] = params[k] end
  for _, k in ipairs(MODEL_SETTINGS) do o[k] = params[k] end
  return o
end

-- params → the predictor's options (SAM 2's), refused for SAM
function recipe.predictor_options(params, model)
  local o = {}
  for _, k in ipairs(PREDICTOR_SETTINGS) do
    if params[k] ~= nil and model.family ~= "sam2" then
      error(("sam_amg: %s is an option of SAM 2's predictor; models.sam is SAM"):format(k), 0)
    end
    o[k] = params[k]
  end
  return o
end

function recipe.setup(params, models)
  local predictor = require("fmseg.sam.predictor").new(models.sam, recipe.predictor_options(params, models.sam))
  return { generator = amg.new(predictor, recipe.generator_options(params)) }
end

-- The records as tensors, for `fmseg parity` and --dump (method fixtures'
-- sam_amg records): area (n) int32, bbox (n, 4) int32 XYWH, predicted_iou
-- (n), stability_score (n), point_coords (n, 2) float32, crop_box (n, 4)
-- int32 XYWH, and segmentation as the output mode gives it: binary_mask
-- (n, H, W) uint8; uncompressed_rle (n, L) int32 counts padded with -1;
-- coco_rle (n, L) uint8, the counts string's bytes padded with 0.
function recipe.record_tensors(records, mode)
  local n = #records
  local function column(field, width, dtype, get)
    local t = T.new(width == 1 and { n } or { n, width }, dtype)
    local p = t:ptr()
    for i, r in ipairs(records) do
      local v = get and get(r) or r[field]
      if width == 1 then p[i - 1] = v else for k = 1, width do p[(i - 1) * width + k - 1] = v[k] end end
    end
    return t
  end
  local out = {
    area = column("area", 1, "int32"),
    bbox = column("bbox", 4, "int32"),
    predicted_iou = column("predicted_iou", 1, "float32"),
    stability_score = column("stability_score", 1, "float32"),
    point_coords = column(nil, 2, "float32", function(r) return r.point_coords[1] end),
    crop_box = column("crop_box", 4, "int32"),
  }
  if mode == "binary_mask" then
    local h, w = 0, 0
    if n > 0 then h, w = records[1].segmentation:size(1), records[1].segmentation:size(2) end
    local seg = T.zeros({ n, h, w }, "uint8")
    for i, r in ipairs(records) do seg:select(1, i):copy(r.segmentation) end
    out.segmentation = seg
  else
    local width = 0
    for _, r in ipairs(records) do width = math.max(width, #r.segmentation.counts) end
    local text = mode == "coco_rle"
    local seg = T.full({ n, width }, text and 0 or -1, text and "uint8" or "int32")
    local p = seg:ptr()
    for i, r in ipairs(records) do
      local c = r.segmentation.counts
      for k = 1, #c do p[(i - 1) * width + k - 1] = text and c:byte(k) or c[k] end
    end
    out.segmentation = seg
  end
  return out
end

-- records (segmentation in output mode MODE) → the instances result
function recipe.instances(records, mode)
  mode = mode or "uncompressed_rle"
  local dump = recipe.record_tensors(records, mode)
  local out_masks, scores = {}, {}
  for i, r in ipairs(records) do
    if mode == "binary_mask" then
      out_masks[i] = r.segmentation
      r.segmentation = masks.rle_to_json(masks.rle_encode(r.segmentation))
    else
      out_masks[i] = masks.rle_decode(r.segmentation)
    end
    scores[i] = r.predicted_iou
  end
  return { kind = "instances", masks = out_masks, scores = scores, records = records, dump = dump }
end

function recipe.segment(state, img)
  return recipe.instances(state.generator:generate(img), state.generator.opts.output_mode)
end

return recipe
