-- fmseg.models.sd_text — the pipeline's text_encoder/: a transformers
-- CLIPTextModel, loaded by fmseg.models.clip (load_text), with the
-- pipelines' way of reading it.
--
--   local te = sd_text.load(dir .. "/text_encoder")
--   local emb = te:forward(input_ids)        -- (N, L, hidden) last_hidden_state
--
-- te.text_model is the fmseg.models.clip text tower (encode, head, layers).
-- ref: diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py,
-- StableDiffusionPipeline.encode_prompt
local clip = require("fmseg.models.clip")

local M = {}
local TextEncoder = {}
TextEncoder.__index = TextEncoder

local function wrap(text_model)
  return setmetatable({ text_model = text_model, config = text_model.config }, TextEncoder)
end

-- new(config, weights, opts): as fmseg.models.clip new_text.
function M.new(config, weights, opts)
  return wrap(clip.new_text(config, weights, opts))
end

-- dir: the text_encoder/ folder; opts.variant ("fp16") picks the weights.
function M.load(dir, opts)
  return wrap(clip.load_text(dir, opts))
end

-- input_ids: (N, L) int32 tensor (or nested table) → last_hidden_state
-- (N, L, hidden), what the UNet cross-attends to. opts.clip_skip = k takes
-- the output of layer (layers - k) instead, through final_layer_norm, as
-- the diffusers pipelines' clip_skip does.
function TextEncoder:forward(input_ids, opts)
  local tm = self.text_model
  local out = tm:encode(input_ids, { layers = #tm.layers - (opts and opts.clip_skip or 0) })
  local y = out.last_hidden_state or tm:head(out.last)
  out.last:free()
  return y
end

return M
