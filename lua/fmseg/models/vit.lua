-- fmseg.models.vit — DINO (transformers ViTModel), DINOv2 (Dinov2Model)
-- and DINOv2 with registers (Dinov2WithRegistersModel) from a Hugging Face
-- directory; which one, and every shape, comes from config.json
-- (model_type "vit", "dinov2", "dinov2_with_registers").
--
--   local vit = require("fmseg.models.vit")
--   local model = vit.load("dino-vits8")
--   local out = model:encode_image(pixel_values, { attentions = true, qkv = true })
--   out.last_hidden_state     -- (B, T, C) after the final layernorm
--   out.attentions[#model.layers]   -- last block's (B, heads, T, T)
--   out.qkv.k                 -- last block's keys (B, T, C): TokenCut, LOST
--
-- Tokens are [CLS, registers..., patches...]; model.num_prefix_tokens
-- counts CLS and registers, out.grid = {gh, gw} the patch grid. Position
-- embeddings are interpolated for any input size (bicubic to
-- (H/patch, W/patch)), as interpolate_pos_encoding=True does for ViT and
-- as DINOv2 always does. With opts.position_offset (model:hub_positions()
-- gives the options) they are resampled as the torch.hub code of
-- facebookresearch/dino and dinov2 does it instead: bicubic by
-- scale_factor (g + offset) / g0, skipped only for the checkpoint's own
-- square grid; what TokenCut, LOST, Deep Spectral Methods and ProxyCLIP
-- load.
--
-- encode_image takes the options of fmseg.models.clip's encode_image
-- (layers, hidden_states, attentions, qkv, override) and returns the same
-- fields (hidden_states[0] = embedding output, [i] = output of block i,
-- last = last run block's output); when every block ran, also
-- last_hidden_state (after `layernorm`) and pooler_output (its CLS row).
-- model.layers[i] are fmseg.models.transformer blocks (ln1, qkv, attend,
-- out_proj, ln2, mlp, forward); model:head(tokens) applies the final
-- layernorm.
local hf = require("fmseg.io.hf")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local transformer = require("fmseg.models.transformer")

local param, norm_params = transformer.param, transformer.norm_params

local M = {}

-- Per model_type: checkpoint names of one encoder layer, config defaults
-- of the reference config class (a config.json may leave them out), and
-- how position embeddings are interpolated.
local KINDS = {
  vit = {
    -- ref: transformers/models/vit/modeling_vit.py, ViTLayer
    names = { ln1 = "layernorm_before", q = "attention.attention.query", k = "attention.attention.key",
              v = "attention.attention.value", out = "attention.output.dense", ln2 = "layernorm_after",
              fc1 = "intermediate.dense", fc2 = "output.dense" },
    defaults = { hidden_act = "gelu", layer_norm_eps = 1e-12, num_channels = 3, qkv_bias = true },
    antialias = false,
  },
  dinov2 = {
    -- ref: transformers/models/dinov2/modeling_dinov2.py, Dinov2Layer
    names = { ln1 = "norm1", q = "attention.attention.query", k = "attention.attention.key",
              v = "attention.attention.value", out = "attention.output.dense", ln2 = "norm2",
              fc1 = "mlp.fc1", fc2 = "mlp.fc2", ls1 = "layer_scale1", ls2 = "layer_scale2" },
    defaults = { hidden_act = "gelu", layer_norm_eps = 1e-6, num_channels = 3, qkv_bias = true,
                 mlp_ratio = 4, use_swiglu_ffn = false },
    layer_scale = true,
    antialias = false,
  },
}
-- ref: transformers/models/dinov2_with_registers/modeling_dinov2_with_registers.py
-- (same layer; registers after CLS; antialiased position interpolation)
KINDS.dinov2_with_registers = {
  names = KINDS.dinov2.names, defaults = KINDS.dinov2.defaults, layer_scale = true,
  antialias = true, registers = true,
}

local SWIGLU_NAMES = {}
for k, v in pairs(KINDS.dinov2.names) do SWIGLU_NAMES[k] = v end
SWIGLU_NAMES.fc1, SWIGLU_NAMES.fc2 = "mlp.weights_in", "mlp.weights_out"

local ViT = {}
ViT.__index = ViT

local function setting(config, kind, key)
  return hf.cfg(config, key, kind.defaults[key])
end

-- FFN width: intermediate_size (ViT) or hidden_size x mlp_ratio (DINOv2);
-- SwiGLU rounds two thirds of it up to a multiple of 8.
-- ref: transformers/models/dinov2/modeling_dinov2.py, Dinov2MLP, Dinov2SwiGLUFFN
local function ffn_width(config, kind, swiglu)
  if not kind.layer_scale then return hf.cfg(config, "intermediate_size") end
  local n = math.floor(hf.cfg(config, "hidden_size") * setting(config, kind, "mlp_ratio"))
  if swiglu then n = math.floor((math.floor(n * 2 / 3) + 7) / 8) * 8 end
  return n
end

-- new(config, weights, opts): config = decoded config.json, weights with
-- has / get(name, shape). opts.strict = false allows unknown tensors.
function M.new(config, weights, opts)
  opts = opts or {}
  local model_type = config.model_type
  local kind = KINDS[model_type]
  if not kind then
    error(("config.json: model_type '%s' is not one of vit, dinov2, dinov2_with_registers"):format(
      tostring(model_type)), 0)
  end
  local c = hf.cfg(config, "hidden_size")
  local p = hf.cfg(config, "patch_size")
  local grid = math.floor(hf.cfg(config, "image_size") / p)
  local swiglu = kind.layer_scale and setting(config, kind, "use_swiglu_ffn") or false
  local spec = {
    hidden = c, heads = hf.cfg(config, "num_attention_heads"),
    intermediate = ffn_width(config, kind, swiglu), eps = setting(config, kind, "layer_norm_eps"),
    act = setting(config, kind, "hidden_act"), qkv_bias = setting(config, kind, "qkv_bias"),
    layer_scale = kind.layer_scale, swiglu = swiglu,
  }
  local registers = kind.registers and hf.cfg(config, "num_register_tokens") or 0
  local self = setmetatable({
    config = config, model_type = model_type, kind = kind, patch_size = p, hidden_size = c,
    num_register_tokens = registers, num_prefix_tokens = 1 + registers, eps = spec.eps,
  }, ViT)
  -- ref: transformers/models/vit/modeling_vit.py, ViTEmbeddings
  self.embeddings = {
    cls_token = param(weights, "embeddings.cls_token", { 1, 1, c }),
    register_tokens = registers > 0 and param(weights, "embeddings.register_tokens", { 1, registers, c }) or nil,
    position_embeddings = param(weights, "embeddings.position_embeddings", { 1, grid * grid + 1, c }),
    projection = {
      weight = param(weights, "embeddings.patch_embeddings.projection.weight",
                     { c, setting(config, kind, "num_channels"), p, p }),
      bias = param(weights, "embeddings.patch_embeddings.projection.bias", { c }),
    },
  }
  local names = swiglu and SWIGLU_NAMES or kind.names
  self.layers = {}
  for i = 1, hf.cfg(config, "num_hidden_layers") do
    self.layers[i] = transformer.block(weights, ("encoder.layer.%d."):format(i - 1), names, spec)
  end
  self.layernorm = norm_params(weights, "layernorm", c)
  if opts.strict ~= false and weights.check_all_used then
    -- mask_token is for masked-image pre-training; ViTModel's pooler is not
    -- part of DINO's features
    weights:check_all_used(nil, { "mask_token$", "^pooler%.", "position_ids$" })
  end
  return self
end

-- load(path, opts): a directory; opts.variant ("fp16"), opts.strict as for new.
function M.load(path, opts) return hf.load_model(path, M.new, opts) end

-- pos (1 + g*g, C) → (1 + gh*gw, C) as the torch.hub code resamples it:
-- bicubic (align_corners false) by scale_factor ((gh + offset) / g,
-- (gw + offset) / g), whose output is gh x gw; unchanged only when
-- `npatch == N and w == h`, i.e. for the square g x g grid (the inputs are
-- multiples of the patch). A grid of g*g patches that is not square is
-- resampled (transformers and SCLIP skip it).
-- ref: facebookresearch/dino vision_transformer.py, VisionTransformer.interpolate_pos_encoding;
--      facebookresearch/dinov2 dinov2/models/vision_transformer.py (interpolate_offset 0.1)
local function hub_positions(pos, gh, gw, offset)
  return transformer.interpolate_positions(pos, gh, gw, { offset = offset, square_only = true })
end

-- The encode_image options that resample positions as the model's torch.hub
-- code does: DINO and DINOv2 by scale_factor with offset 0.1; the DINOv2
-- register models (interpolate_offset 0, antialiased size) as transformers.
function ViT:hub_positions()
  if self.kind.antialias then return {} end
  return { position_offset = 0.1 }
end

-- pixel_values (B, C, H, W) → tokens (B, 1 + R + gh*gw, C), gh, gw
-- ref: transformers/models/vit/modeling_vit.py, ViTEmbeddings;
--      transformers/models/dinov2_with_registers/..., Dinov2WithRegistersEmbeddings
-- opts.position_offset: the torch.hub code's scale_factor resampling
-- (hub_positions above), which the DINO recipes and ProxyCLIP use.
function ViT:embed(pixel_values, opts)
  local e = self.embeddings
  local patches, gh, gw = transformer.patchify(pixel_values, e.projection.weight, e.projection.bias)
  local x = transformer.prepend(e.cls_token, patches)
  local pos = e.position_embeddings:select(1, 1)
  local offset = opts and opts.position_offset
  x:add_(offset and hub_positions(pos, gh, gw, offset)
         or transformer.interpolate_positions(pos, gh, gw, { antialias = self.kind.antialias }))
  if e.register_tokens then
    -- registers go in after CLS, without position embeddings
    local b, n = x:size(1), x:size(2) - 1
    local regs = {}
    for i = 1, b do regs[i] = e.register_tokens end
    local y = T.cat({ x:narrow(2, 1, 1), T.cat(regs, 1), x:narrow(2, 2, n) }, 2)
    x:free()
    x = y
  end
  return x, gh, gw
end

-- See the top of this file.
-- ref: transformers/models/dinov2/modeling_dinov2.py, Dinov2Model
function ViT:encode_image(pixel_values, opts)
  opts = opts or {}
  local x, gh, gw = self:embed(pixel_values, opts)
  local out = transformer.encode(self.layers, x, opts, true)
  out.grid = { gh, gw }
  if (opts.layers or #self.layers) == #self.layers then
    out.last_hidden_state = self:head(out.last)
    out.pooler_output = out.last_hidden_state:select(2, 1):contiguous()
  end
  return out
end

-- tokens (B, T, C) → the final layernorm of every token
function ViT:head(tokens)
  return nn.layer_norm(tokens, self.layernorm.weight, self.layernorm.bias, self.eps)
end

return M
