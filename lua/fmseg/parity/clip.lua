-- Parity of fmseg.models.clip against transformers' CLIPModel (fixture
-- family "clip"): both towers with every layer's intermediates, logits,
-- interpolated position embeddings and the image processor.
local clip = require("fmseg.models.clip")
local clip_processor = require("fmseg.models.clip_processor")
local image = require("fmseg.image")
local parity = require("fmseg.parity")
local T = require("fmseg.tensor")

local M = {}

M.inputs = { "pixel_values", "input_ids", "interp.pixel_values" }

function M.compute(dir, ref)
  local model = clip.load(dir)
  local out = {}

  local vision = model:encode_image(ref:get("pixel_values"), { hidden_states = true, attentions = true, qkv = true })
  parity.add_encoder(out, "vision.", vision)
  out["vision.last_hidden_state"] = vision.last
  out["vision.pooler_output"] = vision.pooler_output
  out.image_embeds = vision.image_embeds

  local text = model:encode_text(ref:get("input_ids"), { hidden_states = true })
  parity.add_encoder(out, "text.", text)
  out["text.last_hidden_state"] = text.last_hidden_state
  out["text.pooler_output"] = text.pooler_output
  out.text_embeds = text.text_embeds

  out.logits_per_image = model:logits(vision.image_embeds, text.text_embeds)
  out.logit_scale = T.full({ 1 }, model.logit_scale)

  out["interp.vision.last_hidden_state"] = model:encode_image(ref:get("interp.pixel_values")).last

  local png = dir .. "/input.png"
  local f = io.open(png, "rb")
  if f then
    f:close()
    out["preprocess.pixel_values"] = clip_processor.load(dir):preprocess(image.load(png))
  end
  return out
end

return M
