-- SAM's automatic mask generator as a recipe: a grid of point prompts,
-- confident and stable masks kept, duplicates removed (fmseg.sam.amg).
-- The result is class-agnostic instances: one mask per record, records in
-- segment-anything's format (segmentation as COCO RLE, area, bbox XYWH,
-- predicted_iou, point_coords, stability_score, crop_box), best predicted
-- IoU first.
-- ref: facebookresearch/segment-anything automatic_mask_generator.py
local amg = require("fmseg.sam.amg")
local masks = require("fmseg.masks")

-- SamAutomaticMaskGenerator's settings with its defaults (the ones a
-- recipe can set; the output format is the recipe's).
local SETTINGS = {
  "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
  "stability_score_offset", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh",
  "crop_overlap_ratio", "crop_n_points_downscale_factor", "min_mask_region_area",
}

local defaults = {}
for _, k in ipairs(SETTINGS) do defaults[k] = amg.defaults[k] end

local recipe = {
  name = "sam_amg",
  needs = { "sam" },
  defaults = defaults,
}

-- params → the generator's options
function recipe.generator_options(params)
  local o = { output_mode = "uncompressed_rle", progress = false }
  for _, k in ipairs(SETTINGS) do o[k] = params[k] end
  return o
end

function recipe.setup(params, models)
  local predictor = require("fmseg.models.sam").predictor(models.sam)
  return { generator = amg.new(predictor, recipe.generator_options(params)) }
end

-- records with uncompressed RLEs → the instances result
function recipe.instances(records)
  local out_masks, scores = {}, {}
  for i, r in ipairs(records) do
    out_masks[i] = masks.rle_decode(r.segmentation)
    scores[i] = r.predicted_iou
    r.segmentation = masks.rle_to_json(r.segmentation)
  end
  return { kind = "instances", masks = out_masks, scores = scores, records = records }
end

function recipe.segment(state, img)
  return recipe.instances(state.generator:generate(img))
end

return recipe
