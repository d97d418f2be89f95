-- fmseg.models.sd_text — the pipeline's text_encoder/: a transformers
-- CLIPTextModel (the CLIP text tower without a projection).
--
--   local te = sd_text.load(dir .. "/text_encoder")
--   local emb = te:forward(input_ids)        -- (N, L, hidden) last_hidden_state
--
-- ref: transformers/models/clip/modeling_clip.py, CLIPTextModel,
-- CLIPTextTransformer. The encoder layers are fmseg.models.transformer
-- blocks with CLIP's names, as models/clip.lua builds them; only the
-- embeddings and the final layer norm are assembled here, because clip.lua
-- builds its text tower inside CLIPModel (vision tower and projections
-- required, "text_model." prefix fixed).
--
-- Weight names: checkpoints saved by transformers 4 put everything under
-- "text_model." (SD 1.5, SD 2.x on the hub); transformers 5 saves a
-- CLIPTextModel without that prefix. Both load.
local hf = require("fmseg.hf")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local transformer = require("fmseg.models.transformer")

local M = {}
local TextEncoder = {}
TextEncoder.__index = TextEncoder

-- transformers' CLIPTextConfig defaults
local DEFAULTS = {
  vocab_size = 49408, hidden_size = 512, intermediate_size = 2048, num_hidden_layers = 12,
  num_attention_heads = 8, max_position_embeddings = 77, hidden_act = "quick_gelu",
  layer_norm_eps = 1e-5,
}

-- Checkpoint names of a CLIPEncoderLayer's modules (as in models/clip.lua).
local LAYER_NAMES = {
  ln1 = "layer_norm1", q = "self_attn.q_proj", k = "self_attn.k_proj", v = "self_attn.v_proj",
  out = "self_attn.out_proj", ln2 = "layer_norm2", fc1 = "mlp.fc1", fc2 = "mlp.fc2",
}

function M.new(config, w)
  local cfg = {}
  for k, v in pairs(DEFAULTS) do cfg[k] = hf.cfg(config, k, v) end
  local pre = w:has("text_model.embeddings.token_embedding.weight") and "text_model." or ""
  local c = cfg.hidden_size
  local self = setmetatable({ config = cfg, layers = {} }, TextEncoder)
  self.token_embedding = w:get(pre .. "embeddings.token_embedding.weight", { cfg.vocab_size, c })
  self.position_embedding = w:get(pre .. "embeddings.position_embedding.weight", { cfg.max_position_embeddings, c })
  for i = 1, cfg.num_hidden_layers do
    self.layers[i] = transformer.block(w, ("%sencoder.layers.%d."):format(pre, i - 1), LAYER_NAMES, {
      hidden = c, heads = cfg.num_attention_heads, intermediate = cfg.intermediate_size,
      eps = cfg.layer_norm_eps, act = cfg.hidden_act, qkv_bias = true })
  end
  self.final_layer_norm = { weight = w:get(pre .. "final_layer_norm.weight", { c }),
                            bias = w:get(pre .. "final_layer_norm.bias", { c }) }
  w:check_all_used(nil, { "position_ids$" })
  return self
end

-- dir: the text_encoder/ folder; opts.variant ("fp16") picks the weights.
function M.load(dir, opts)
  local d = hf.open(dir)
  return M.new(d.config, d:weights(opts and opts.variant))
end

-- input_ids: (N, L) int32 tensor (or nested table) → last_hidden_state
-- (N, L, hidden), what the UNet cross-attends to. opts.clip_skip = k takes
-- the output of layer (layers - k) instead, through final_layer_norm, as
-- the diffusers pipelines' clip_skip does.
function TextEncoder:forward(input_ids, opts)
  opts = opts or {}
  local ids = T.is_tensor(input_ids) and input_ids or T.from_table(input_ids, "int32")
  local cfg = self.config
  local len = ids:size(2)
  if len > cfg.max_position_embeddings then
    error(("text encoder: %d tokens, the model has %d positions"):format(len, cfg.max_position_embeddings), 2)
  end
  local x = transformer.embedding(self.token_embedding, ids)
  x:add_(self.position_embedding:narrow(1, 1, len))
  local layers = #self.layers - (opts.clip_skip or 0)
  local out = transformer.encode(self.layers, x, { layers = layers, causal = true })
  local ln = self.final_layer_norm
  local y = nn.layer_norm(out.last, ln.weight, ln.bias, cfg.layer_norm_eps)
  if layers > 0 then out.last:free() end  -- else out.last is x
  x:free()
  return y
end

return M
