-- Parity of fmseg.models.vit against transformers' ViTModel (family "dino")
-- and Dinov2Model / Dinov2WithRegistersModel (family "dinov2"): every
-- layer's tokens and attention probabilities, the final layernorm, pooled
-- CLS, last-layer q/k/v and a non-square interpolated input.
local parity = require("fmseg.parity")
local vit = require("fmseg.models.vit")

local M = {}

M.inputs = { "pixel_values", "interp.pixel_values" }

function M.compute(dir, ref)
  local model = vit.load(dir)
  local out = {}
  local run = model:encode_image(ref:get("pixel_values"), { hidden_states = true, attentions = true, qkv = true })
  parity.add_encoder(out, "", run)
  out.last_hidden_state = run.last_hidden_state
  out.pooler_output = run.pooler_output

  local interp = model:encode_image(ref:get("interp.pixel_values"), { attentions = true })
  out["interp.last_hidden_state"] = interp.last_hidden_state
  out["interp.attentions.last"] = interp.attentions[#interp.attentions]
  return out
end

return M
