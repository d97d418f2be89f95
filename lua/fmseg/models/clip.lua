-- fmseg.models.clip — CLIP (transformers CLIPModel) from a Hugging Face
-- directory: openai/clip-vit-base-patch16 and every other size load the
-- same way, all shapes from config.json.
--
--   local clip = require("fmseg.models.clip")
--   local model = clip.load("clip-vit-base-patch16")   -- {variant = "fp16"}
--   local img = model:get_image_features(pixel_values)  -- (B, P), not normalised
--   local txt = model:get_text_features(input_ids)      -- (N, P)
--   local logits = model:logits(img, txt)                -- (B, N) logits_per_image
--
-- A CLIPTextModel (the text tower alone, as Stable Diffusion's
-- text_encoder/) loads with load_text; model.text is the same kind of object:
--
--   local te = clip.load_text("stable-diffusion-v1-5/text_encoder")
--   local out = te:encode(input_ids)   -- out.last_hidden_state (N, L, C),
--                                      -- out.pooler_output (N, C)
--
-- The model is immutable; every call returns new tensors.
--
-- Intermediates, for methods (MaskCLIP, SCLIP, ClearCLIP, NACLIP, ...):
--
--   local out = model:encode_image(pixel_values, {
--     layers = n,            -- run only the first n blocks (default all)
--     hidden_states = true,  -- out.hidden_states[0] = encoder input (after
--                            -- pre_layrnorm), [i] = output of block i
--     attentions = true,     -- out.attentions[i]: (B, heads, T, T) of block i
--     qkv = true,            -- out.qkv = {ln1, q, k, v} of the last run block
--     override = { [12] = function(block, x, info) return y end },
--   })
--   out.last                 -- (B, T, C) tokens after the last run block
--   out.pooler_output, out.image_embeds   -- when every block ran
--
-- Blocks are 1-based (model.vision.layers[i]; reference layer i-1). Any
-- input size works: position embeddings are interpolated bicubically to
-- the (H/patch, W/patch) grid whenever it differs from the trained one, as
-- interpolate_pos_encoding=True does (reference tensor "attentions.0" is
-- our attentions[1]).
--
-- A recipe changes one block without touching this file, from the block's
-- pieces (see fmseg.models.transformer):
--
--   local blk = model.vision.layers[#model.vision.layers]
--   local out = model:encode_image(x, { layers = #model.vision.layers - 1 })
--   local h = blk:ln1(out.last)
--   local q, k, v = blk:qkv(h)
--   local a = blk:attend(q, q, v)            -- ClearCLIP: q-q attention,
--   local tokens = blk:out_proj(a)            -- no residual, no FFN
--   local dense = model:head(tokens)          -- (B, T, P): post_layernorm +
--                                             -- visual_projection of all tokens
--
-- blk:ln1, blk:qkv, blk:attend(q, k, v, {mask, scale, probs}), blk:out_proj,
-- blk:ln2, blk:mlp and blk:forward are the whole block; `override` runs a
-- function in place of one block inside encode_image.
local hf = require("fmseg.io.hf")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local transformer = require("fmseg.models.transformer")

local param, norm_params = transformer.param, transformer.norm_params

local M = {}

-- transformers' CLIPVisionConfig / CLIPTextConfig / CLIPConfig defaults,
-- which a config.json may leave out.
local VISION_DEFAULTS = {
  hidden_size = 768, intermediate_size = 3072, num_hidden_layers = 12, num_attention_heads = 12,
  num_channels = 3, image_size = 224, patch_size = 32, hidden_act = "quick_gelu",
  layer_norm_eps = 1e-5,
}
local TEXT_DEFAULTS = {
  vocab_size = 49408, hidden_size = 512, intermediate_size = 2048, num_hidden_layers = 12,
  num_attention_heads = 8, max_position_embeddings = 77, hidden_act = "quick_gelu",
  layer_norm_eps = 1e-5, eos_token_id = 49407,
}
local PROJECTION_DIM = 512

-- Checkpoint names of a CLIPEncoderLayer's modules.
local LAYER_NAMES = {
  ln1 = "layer_norm1", q = "self_attn.q_proj", k = "self_attn.k_proj", v = "self_attn.v_proj",
  out = "self_attn.out_proj", ln2 = "layer_norm2", fc1 = "mlp.fc1", fc2 = "mlp.fc2",
}

-- ref: transformers/models/clip/modeling_clip.py, CLIPEncoder
local function encoder_layers(w, prefix, cfg)
  local layers = {}
  for i = 1, cfg.num_hidden_layers do
    layers[i] = transformer.block(w, ("%sencoder.layers.%d."):format(prefix, i - 1), LAYER_NAMES, {
      hidden = cfg.hidden_size, heads = cfg.num_attention_heads, intermediate = cfg.intermediate_size,
      eps = cfg.layer_norm_eps, act = cfg.hidden_act, qkv_bias = true,
    })
  end
  return layers
end

-- ref: transformers/models/clip/modeling_clip.py, CLIPVisionTransformer
local function vision_tower(w, cfg)
  local c, p = cfg.hidden_size, cfg.patch_size
  local grid = math.floor(cfg.image_size / p)
  local pre = "vision_model."
  return {
    config = cfg,
    embeddings = {
      class_embedding = param(w, pre .. "embeddings.class_embedding", { c }),
      patch_embedding = param(w, pre .. "embeddings.patch_embedding.weight", { c, cfg.num_channels, p, p }),
      position_embedding = param(w, pre .. "embeddings.position_embedding.weight", { grid * grid + 1, c }),
    },
    pre_layrnorm = norm_params(w, pre .. "pre_layrnorm", c),
    layers = encoder_layers(w, pre, cfg),
    post_layernorm = norm_params(w, pre .. "post_layernorm", c),
  }
end

local TextModel = {}
TextModel.__index = TextModel

-- ref: transformers/models/clip/modeling_clip.py, CLIPTextTransformer
-- pre: "text_model." inside CLIPModel; a CLIPTextModel has it or not (below).
local function text_tower(w, cfg, pre)
  local c = cfg.hidden_size
  return setmetatable({
    config = cfg,
    embeddings = {
      token_embedding = param(w, pre .. "embeddings.token_embedding.weight", { cfg.vocab_size, c }),
      position_embedding = param(w, pre .. "embeddings.position_embedding.weight",
                                 { cfg.max_position_embeddings, c }),
    },
    layers = encoder_layers(w, pre, cfg),
    final_layer_norm = norm_params(w, pre .. "final_layer_norm", c),
  }, TextModel)
end

local CLIP = {}
CLIP.__index = CLIP

-- new(config, weights, opts): config = decoded config.json, weights with
-- has(name) / get(name, shape) (fmseg.io.hf weights). opts.text = false loads
-- the vision tower only; opts.strict = false allows unknown tensors.
-- ref: transformers/models/clip/modeling_clip.py, CLIPModel
function M.new(config, weights, opts)
  opts = opts or {}
  local vcfg = hf.settings(config.vision_config or config.vision_config_dict, VISION_DEFAULTS)
  local pdim = hf.cfg(config, "projection_dim", PROJECTION_DIM)
  local self = setmetatable({ config = config, projection_dim = pdim }, CLIP)
  self.vision = vision_tower(weights, vcfg)
  self.visual_projection = { weight = param(weights, "visual_projection.weight", { pdim, vcfg.hidden_size }) }
  local used = { "vision_model.", "visual_projection." }
  if opts.text ~= false then
    local tcfg = hf.settings(config.text_config or config.text_config_dict, TEXT_DEFAULTS)
    self.text = text_tower(weights, tcfg, "text_model.")
    self.text_projection = { weight = param(weights, "text_projection.weight", { pdim, tcfg.hidden_size }) }
    self.logit_scale = param(weights, "logit_scale", {}):item()
    used = nil
  end
  if opts.strict ~= false and weights.check_all_used then
    weights:check_all_used(used, { "position_ids$" })
  end
  return self
end

-- load(path, opts): a CLIPModel directory; opts.variant ("fp16") picks
-- model.<variant>.safetensors; other opts as for new.
function M.load(path, opts) return hf.load_model(path, M.new, opts) end

-- new_text(config, weights, opts): a CLIPTextModel (the text tower alone, no
-- projection; Stable Diffusion's text_encoder/), config = its config.json.
-- transformers 4 saves its weights under "text_model." (SD 1.5 and 2.x on
-- the hub), transformers 5 without that prefix; both load. opts.strict as
-- for new.
-- ref: transformers/models/clip/modeling_clip.py, CLIPTextModel
function M.new_text(config, weights, opts)
  opts = opts or {}
  local pre = weights:has("text_model.embeddings.token_embedding.weight") and "text_model." or ""
  local model = text_tower(weights, hf.settings(config, TEXT_DEFAULTS), pre)
  if opts.strict ~= false and weights.check_all_used then
    weights:check_all_used(nil, { "position_ids$" })
  end
  return model
end

-- load_text(path, opts): a CLIPTextModel directory; opts as for load.
function M.load_text(path, opts) return hf.load_model(path, M.new_text, opts) end

-- Vision ------------------------------------------------------------------------------

-- A view of the model whose vision tower runs with other settings over the
-- same weights: settings.act (an activation name) and settings.eps (every
-- LayerNorm's eps). MaskCLIP's official port runs CLIP's ViT with exact
-- GELU and eps 1e-6, and its published numbers come from that. The model
-- itself is left as it is.
function CLIP:with_vision(settings)
  local base = self.vision
  local act, eps = settings.act, settings.eps
  if act and not nn.has_activation(act) then error(("unsupported activation '%s'"):format(act), 0) end
  local vision = setmetatable({
    config = setmetatable({ layer_norm_eps = eps or base.config.layer_norm_eps,
                            hidden_act = act or base.config.hidden_act }, { __index = base.config }),
    layers = {},
  }, { __index = base })
  for i, blk in ipairs(base.layers) do
    vision.layers[i] = setmetatable({ act = act or blk.act, eps = eps or blk.eps }, { __index = blk })
  end
  return setmetatable({ vision = vision }, { __index = self })
end

-- pixel_values (B, C, H, W) → (B, 1 + gh*gw, C), after pre_layrnorm
-- ref: transformers/models/clip/modeling_clip.py, CLIPVisionEmbeddings
-- opts.antialias_positions: PyTorch's antialiased bicubic for the position
-- embeddings (GEM's resample_abs_pos_embed) instead of transformers' plain one.
-- opts.position_offset: SCLIP's scale_factor resampling (see
-- transformer.interpolate_positions).
function CLIP:embed_image(pixel_values, opts)
  local e = self.vision.embeddings
  local patches, gh, gw = transformer.patchify(pixel_values, e.patch_embedding)
  local x = transformer.prepend(e.class_embedding, patches)
  x:add_(transformer.interpolate_positions(e.position_embedding, gh, gw,
                                            { antialias = opts and opts.antialias_positions,
                                              offset = opts and opts.position_offset }))
  local ln = self.vision.pre_layrnorm
  local h = nn.layer_norm(x, ln.weight, ln.bias, self.vision.config.layer_norm_eps)
  x:free()
  return h, gh, gw
end

-- See the top of this file for opts and the fields of the result; also
-- out.grid = {gh, gw}, the patch grid.
function CLIP:encode_image(pixel_values, opts)
  opts = opts or {}
  local x, gh, gw = self:embed_image(pixel_values, opts)
  local out = transformer.encode(self.vision.layers, x, opts, true)
  out.grid = { gh, gw }
  if (opts.layers or #self.vision.layers) == #self.vision.layers then
    local ln = self.vision.post_layernorm
    local cls = out.last:select(2, 1)
    out.pooler_output = nn.layer_norm(cls, ln.weight, ln.bias, self.vision.config.layer_norm_eps)
    out.image_embeds = nn.linear(out.pooler_output, self.visual_projection.weight)
  end
  return out
end

-- tokens (B, T, C) → (B, T, P): post_layernorm and visual_projection of
-- every token, what dense CLIP methods compare with text embeddings.
function CLIP:head(tokens)
  local ln = self.vision.post_layernorm
  local h = nn.layer_norm(tokens, ln.weight, ln.bias, self.vision.config.layer_norm_eps)
  local out = nn.linear(h, self.visual_projection.weight)
  h:free()
  return out
end

-- (B, P) image embeddings, not normalised
function CLIP:get_image_features(pixel_values)
  return self:encode_image(pixel_values).image_embeds
end

-- Text ------------------------------------------------------------------------------

local function as_ids(ids)
  if T.is_tensor(ids) then return ids:dtype() == "int32" and ids or ids:int() end
  return T.from_table(ids, "int32")
end

-- Row index (1-based) of each sequence's pooled token: the first
-- occurrence of the largest id when every row's largest id is 49407 (the
-- original CLIP vocabulary's end token), else the first eos_token_id.
-- ref: transformers/models/clip/modeling_clip.py, CLIPTextTransformer.forward
local function pooled_positions(ids, eos)
  local rows, len = ids:size(1), ids:size(2)
  local t = ids:totable()
  local all_max_is_eot = true
  for i = 1, rows do
    local m = -math.huge
    for j = 1, len do m = math.max(m, t[i][j]) end
    if m ~= 49407 then all_max_is_eot = false end
  end
  local pos = {}
  for i = 1, rows do
    local best, at = -math.huge, 1
    for j = 1, len do
      local key = all_max_is_eot and t[i][j] or (t[i][j] == eos and 1 or 0)
      if key > best then best, at = key, j end
    end
    pos[i] = at
  end
  return pos
end

-- input_ids as given → (N, L) int32, at most as long as the position table;
-- errors point at the caller of `who`.
local function text_input(cfg, input_ids, who)
  local ids = as_ids(input_ids)
  local len = ids:size(2)
  if len > cfg.max_position_embeddings then
    error(("%s: %d tokens, the model has %d positions"):format(who, len, cfg.max_position_embeddings), 3)
  end
  return ids
end

-- input_ids (N, L) int32 tensor or nested table → out with last (encoder
-- output), and when every block ran last_hidden_state (after
-- final_layer_norm) and pooler_output (N, C); opts as encode_image
-- (hidden_states[0] = embeddings). Attention is causal.
-- ref: transformers/models/clip/modeling_clip.py, CLIPTextTransformer
function TextModel:encode(input_ids, opts)
  opts = opts or {}
  local ids = text_input(self.config, input_ids, "text encoder")
  local e = self.embeddings
  local x = transformer.embedding(e.token_embedding, ids)
  x:add_(e.position_embedding:narrow(1, 1, ids:size(2)))
  local run = {}
  for k, v in pairs(opts) do run[k] = v end
  run.causal = true
  local out = transformer.encode(self.layers, x, run, true)
  if (opts.layers or #self.layers) == #self.layers then
    out.last_hidden_state = self:head(out.last)
    local rows = {}
    for i, p in ipairs(pooled_positions(ids, self.config.eos_token_id)) do
      rows[i] = out.last_hidden_state:select(1, i):select(1, p)
    end
    out.pooler_output = T.stack(rows, 1)
  end
  return out
end

-- tokens (N, L, C) → final_layer_norm of every token
function TextModel:head(tokens)
  local ln = self.final_layer_norm
  return nn.layer_norm(tokens, ln.weight, ln.bias, self.config.layer_norm_eps)
end

-- The text tower's encode, plus text_embeds (N, P) = text_projection of
-- pooler_output when every block ran.
-- ref: transformers/models/clip/modeling_clip.py, CLIPModel.get_text_features
function CLIP:encode_text(input_ids, opts)
  if not self.text then error("encode_text: this CLIP model was loaded without its text tower", 2) end
  local out = self.text:encode(text_input(self.text.config, input_ids, "encode_text"), opts)
  if out.pooler_output then
    out.text_embeds = nn.linear(out.pooler_output, self.text_projection.weight)
  end
  return out
end

-- (N, P) text embeddings, not normalised
function CLIP:get_text_features(input_ids)
  return self:encode_text(input_ids).text_embeds
end

-- Both ------------------------------------------------------------------------------

-- image_embeds (B, P), text_embeds (N, P) → logits_per_image (B, N):
-- exp(logit_scale) x cosine similarity.
-- ref: transformers/models/clip/modeling_clip.py, CLIPModel.forward
function CLIP:logits(image_embeds, text_embeds)
  local img = nn.normalize(image_embeds, 0)
  local txt = nn.normalize(text_embeds, 0)
  return img:matmul(txt, false, true, math.exp(self.logit_scale))
end

-- Everything CLIPModel.forward returns (embeddings not normalised).
function CLIP:forward(pixel_values, input_ids)
  local image_embeds = self:get_image_features(pixel_values)
  local text_embeds = self:get_text_features(input_ids)
  local logits = self:logits(image_embeds, text_embeds)
  return { image_embeds = image_embeds, text_embeds = text_embeds, logits_per_image = logits,
           logits_per_text = logits:t():contiguous() }
end

return M
