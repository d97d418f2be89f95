-- Parity of fmseg.models.sam2 against facebookresearch/sam2's original code
-- (fixture family "sam2", tests/tools/make_sam2_fixtures.py): the image
-- encoder (Hiera's per-stage outputs, the FPN levels after scalp, their
-- sine position encodings, vision_features), set_image's image_embed and
-- high_res_feats, SAM2ImagePredictor._predict for the prompt cases (on the
-- batch's last image: low-res masks, IoU, object scores, the masks resized
-- to original_hw as SAM2Transforms.postprocess_masks does with
-- fill_hole_area 0: a bilinear resize) and SAM2Base._forward_sam_heads on
-- every image.
local nn = require("fmseg.nn")
local sam2 = require("fmseg.models.sam2")

local M = {}

M.inputs = { "pixel_values", "original_hw", "heads.point_coords", "heads.point_labels" }
local PROMPT_INPUTS = { "point_coords", "point_labels", "boxes", "mask_input" }
local CASES = { ["point.multi"] = { "point", true }, ["point.single"] = { "point", false },
                points = { "points", false }, box = { "box", false }, box_points = { "box_points", false },
                mask = { "mask", false } }
for _, case in pairs(CASES) do
  for _, k in ipairs(PROMPT_INPUTS) do M.inputs[#M.inputs + 1] = ("prompt.%s.%s"):format(case[1], k) end
end

function M.compute(dir, ref)
  local model = sam2.load(dir)
  local run = model:encode_image(ref:get("pixel_values"))
  local out = { vision_features = run.vision_features }
  -- the reference counts levels and stages from 0
  for i, t in ipairs(run.trunk) do out["trunk." .. (i - 1)] = t end
  for i, t in ipairs(run.backbone_fpn) do out["backbone_fpn." .. (i - 1)] = t end
  for i, t in ipairs(run.vision_pos_enc) do out["vision_pos_enc." .. (i - 1)] = t end
  local feats = model:image_features(run)
  out.image_embed = feats.image_embed
  for i, t in ipairs(feats.high_res_feats) do out["high_res_feats." .. (i - 1)] = t end

  -- the predictor's cases, on the last image
  local b = feats.image_embed:size(1)
  local one = { image_embed = feats.image_embed:narrow(1, b, 1),
                high_res_feats = { feats.high_res_feats[1]:narrow(1, b, 1), feats.high_res_feats[2]:narrow(1, b, 1) } }
  local hw = ref:get("original_hw"):values()
  for name, case in pairs(CASES) do
    local function input(k)
      local key = ("prompt.%s.%s"):format(case[1], k)
      return ref:has(key) and ref:get(key) or nil
    end
    local points, labels, boxes, masks = input("point_coords"), input("point_labels"), input("boxes"),
      input("mask_input")
    if points or boxes or masks then
      local prompt = { masks = masks }
      if points then
        prompt.points = points:reshape(1, 1, points:size(2), 2)
        prompt.labels = labels:float():reshape(1, 1, labels:size(2))
      end
      if boxes then prompt.boxes = boxes:reshape(1, 1, 4) end
      local sparse, dense = model:encode_prompt(prompt)
      local low, iou, obj = model:decode_masks(one, sparse, dense, case[2])
      local m, h, w = low:size(3), low:size(4), low:size(5)
      low = low:reshape(1, m, h, w)
      out[name .. ".low_res_masks"] = low
      out[name .. ".iou_predictions"] = iou:reshape(1, m)
      out[name .. ".object_score_logits"] = obj:reshape(1, 1)
      out[name .. ".masks"] = nn.interpolate(low, hw[1], hw[2], { mode = "bilinear" })
    end
  end

  if ref:has("heads.point_coords") then
    local heads = model:sam_heads(feats, { points = ref:get("heads.point_coords"),
                                           labels = ref:get("heads.point_labels"):float() })
    for _, k in ipairs({ "low_res_multimasks", "ious", "low_res_masks", "object_score_logits" }) do
      out["heads." .. k] = heads[k]
    end
  end
  return out
end

return M
