-- Parity of fmseg.models.sam against transformers' SamModel (fixture family
-- "sam"): the vision encoder with every layer's hidden states, the image
-- embeddings, points / box / points+box prompts with multimask and
-- single-mask outputs, and the post-processing to the original size.
local parity = require("fmseg.parity")
local processor = require("fmseg.sam.processor")
local sam = require("fmseg.models.sam")

local M = {}

M.inputs = { "pixel_values", "resized_hw", "original_hw", "prompt.points", "prompt.labels", "prompt.box" }

local function hw(t)
  local v = t:values()
  return { v[1], v[2] }
end

function M.compute(dir, ref)
  local model = sam.load(dir)
  local out = {}

  local emb, hidden = model:encode_image(ref:get("pixel_values"), { hidden_states = true })
  out.image_embeddings = emb
  parity.add_encoder(out, "vision.", { hidden_states = hidden })

  -- prompts (B, N, P, 2), labels (B, N, P), box (B, N, 4); "points_box" is
  -- the first point with the box
  local function input(name) return ref:has(name) and ref:get(name) or nil end
  local points, labels, box = input("prompt.points"), input("prompt.labels"), input("prompt.box")
  local cases = {}
  if points then cases.points = { points = points, labels = labels } end
  if box then cases.box = { boxes = box } end
  if points and box then
    cases.points_box = { points = points:narrow(3, 1, 1), labels = labels and labels:narrow(3, 1, 1), boxes = box }
  end
  for name, prompt in pairs(cases) do
    local sparse, dense = model:encode_prompt(prompt)
    for _, mode in ipairs({ "multi", "single" }) do
      local masks, iou = model:decode_masks(emb, sparse, dense, mode == "multi")
      out[name .. "." .. mode .. ".pred_masks"] = masks
      out[name .. "." .. mode .. ".iou_scores"] = iou
    end
  end

  -- low-res logits → pad size (the encoder's input), crop, original size
  local size = model.config.vision.image_size
  local proc = processor.new({ longest_edge = size, pad_size = { size, size } })
  local low = out["points.multi.pred_masks"]
  if low and ref:has("resized_hw") and ref:has("original_hw") then
    out["points.multi.masks_original_logits"] = proc:postprocess_masks(
      low:reshape(low:size(3), low:size(4), low:size(5)), hw(ref:get("resized_hw")), hw(ref:get("original_hw")))
  end
  return out
end

return M
