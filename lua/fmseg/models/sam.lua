-- fmseg.models.sam — Segment Anything (transformers SamModel) from a Hugging
-- Face directory: facebook/sam-vit-base, -large and -huge load the same
-- way, every shape from config.json. Only network modules live here (the
-- segment-anything layout's modeling/); preprocessing and the stateful
-- predictor are fmseg.sam.processor and fmseg.sam.predictor (a layer up).
--
--   local sam = require("fmseg.models.sam")
--   local model = sam.load("sam-vit-base")
--   local emb = model:encode_image(pixel_values)      -- (B, 256, 64, 64)
--   local sparse, dense = model:encode_prompt({
--     points = pts,     -- (B, N, P, 2) x, y in input pixels (1024 frame)
--     labels = lab,     -- (B, N, P): 1 fg, 0 bg, -1 not a point, -10 padding
--     boxes = box,      -- (B, N, 4) x0, y0, x1, y1
--     masks = m,        -- (B*N | B | 1, 1, 256, 256) low-res mask logits
--   })
--   local masks, iou = model:decode_masks(emb, sparse, dense, true)
--   -- masks (B, N, 3, 256, 256) low-res logits, iou (B, N, 3); with
--   -- multimask = false: the single-mask output, (B, N, 1, ...)
--   -- PerSAM's decoder options: decode_masks(emb, sparse, dense, true,
--   --   { attention_similarity = sim, target_embedding = t })
--
-- N is the point batch: N prompts decoded at once against the same image
-- (the automatic mask generator's batches). The model is immutable; every
-- call returns new tensors. Weights keep the checkpoint's names and the
-- tables below mirror transformers' module tree (model.vision_encoder.
-- layers[i].attn.qkv.weight is "vision_encoder.layers.<i-1>.attn.qkv.weight").
local core = require("fmseg.core")
local hf = require("fmseg.io.hf")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local transformer = require("fmseg.models.transformer")

local C, check = core.C, core.check
local param, linear_params, norm_params = transformer.param, transformer.linear_params,
  transformer.norm_params

local M = {}

-- transformers' SamVisionConfig / SamPromptEncoderConfig /
-- SamMaskDecoderConfig defaults, for keys a config.json leaves out.
local VISION_DEFAULTS = {
  hidden_size = 768, output_channels = 256, num_hidden_layers = 12, num_attention_heads = 12,
  num_channels = 3, image_size = 1024, patch_size = 16, hidden_act = "gelu",
  layer_norm_eps = 1e-6, qkv_bias = true, mlp_ratio = 4.0, use_abs_pos = true,
  use_rel_pos = true, window_size = 14, global_attn_indexes = { 2, 5, 8, 11 },
  num_pos_feats = 128,
}
local PROMPT_DEFAULTS = {
  hidden_size = 256, image_size = 1024, patch_size = 16, mask_input_channels = 16,
  num_point_embeddings = 4, hidden_act = "gelu", layer_norm_eps = 1e-6,
}
local DECODER_DEFAULTS = {
  hidden_size = 256, hidden_act = "relu", mlp_dim = 2048, num_hidden_layers = 2,
  num_attention_heads = 8, attention_downsample_rate = 2, num_multimask_outputs = 3,
  iou_head_depth = 3, iou_head_hidden_dim = 256, layer_norm_eps = 1e-6,
}
-- mask_decoder_config.layer_norm_eps is the two-way blocks' layer_norm1..4
-- eps: transformers' 1e-6 by default; segment-anything's original
-- TwoWayAttentionBlock uses nn.LayerNorm's 1e-5, so a checkpoint converted
-- from the original says 1e-5 (tests/fixtures/methods/models/sam-amg-tiny).
-- Norms the reference builds without passing the config's eps: SamLayerNorm's
-- default (the neck, the mask decoder's upscaling) and nn.LayerNorm's
-- (the two-way transformer's layer_norm_final_attn).
local SAM_LAYER_NORM_EPS = 1e-6
local TORCH_LAYER_NORM_EPS = 1e-5
-- SamFeedForward depth of the output hypernetwork MLPs (fixed in the reference).
local HYPERNETWORK_DEPTH = 3

local function is_global(cfg, i0)
  for _, g in ipairs(cfg.global_attn_indexes) do
    if g == i0 then return true end
  end
  return false
end

-- Loading ----------------------------------------------------------------------

local function conv_params(w, name, oc, ic, k, bias)
  return { weight = param(w, name .. ".weight", { oc, ic, k, k }),
           bias = bias and param(w, name .. ".bias", { oc }) or nil }
end

-- ref: transformers/models/sam/modeling_sam.py, SamVisionLayer / SamVisionAttention
local function vision_layer(w, prefix, cfg, i0)
  local c, heads = cfg.hidden_size, cfg.num_attention_heads
  local grid = math.floor(cfg.image_size / cfg.patch_size)
  local window = is_global(cfg, i0) and 0 or cfg.window_size
  local input = window == 0 and grid or window   -- the attention's token grid
  local d = c / heads
  local attn = {
    qkv = linear_params(w, prefix .. "attn.qkv", 3 * c, c, cfg.qkv_bias),
    proj = linear_params(w, prefix .. "attn.proj", c, c, true),
  }
  if cfg.use_rel_pos then
    attn.rel_pos_h = param(w, prefix .. "attn.rel_pos_h", { 2 * input - 1, d })
    attn.rel_pos_w = param(w, prefix .. "attn.rel_pos_w", { 2 * input - 1, d })
  end
  return {
    window_size = window,
    layer_norm1 = norm_params(w, prefix .. "layer_norm1", c),
    attn = attn,
    layer_norm2 = norm_params(w, prefix .. "layer_norm2", c),
    mlp = { lin1 = linear_params(w, prefix .. "mlp.lin1", cfg.mlp_dim, c, true),
            lin2 = linear_params(w, prefix .. "mlp.lin2", c, cfg.mlp_dim, true) },
  }
end

-- ref: transformers/models/sam/modeling_sam.py, SamVisionEncoder
local function vision_encoder(w, cfg)
  local c, p, oc = cfg.hidden_size, cfg.patch_size, cfg.output_channels
  local grid = math.floor(cfg.image_size / p)
  local pre = "vision_encoder."
  local enc = {
    patch_embed = { projection = conv_params(w, pre .. "patch_embed.projection", c, cfg.num_channels, p, true) },
    pos_embed = cfg.use_abs_pos and param(w, pre .. "pos_embed", { 1, grid, grid, c }) or nil,
    layers = {},
    neck = {
      conv1 = conv_params(w, pre .. "neck.conv1", oc, c, 1, false),
      layer_norm1 = norm_params(w, pre .. "neck.layer_norm1", oc),
      conv2 = conv_params(w, pre .. "neck.conv2", oc, oc, 3, false),
      layer_norm2 = norm_params(w, pre .. "neck.layer_norm2", oc),
    },
  }
  for i = 1, cfg.num_hidden_layers do
    enc.layers[i] = vision_layer(w, ("%slayers.%d."):format(pre, i - 1), cfg, i - 1)
  end
  return enc
end

-- ref: transformers/models/sam/modeling_sam.py, SamPromptEncoder / SamMaskEmbedding
local function prompt_encoder(w, cfg)
  local c, mc = cfg.hidden_size, cfg.mask_input_channels
  local pre = "prompt_encoder."
  local enc = {
    point_embed = {},
    not_a_point_embed = param(w, pre .. "not_a_point_embed.weight", { 1, c }),
    no_mask_embed = param(w, pre .. "no_mask_embed.weight", { 1, c }),
    mask_embed = {
      conv1 = conv_params(w, pre .. "mask_embed.conv1", math.floor(mc / 4), 1, 2, true),
      layer_norm1 = norm_params(w, pre .. "mask_embed.layer_norm1", math.floor(mc / 4)),
      conv2 = conv_params(w, pre .. "mask_embed.conv2", mc, math.floor(mc / 4), 2, true),
      layer_norm2 = norm_params(w, pre .. "mask_embed.layer_norm2", mc),
      conv3 = conv_params(w, pre .. "mask_embed.conv3", c, mc, 1, true),
    },
  }
  -- point_embed[1..4]: reference point_embed.0 (bg) .1 (fg) .2 .3 (box corners)
  for i = 1, cfg.num_point_embeddings do
    enc.point_embed[i] = param(w, ("%spoint_embed.%d.weight"):format(pre, i - 1), { 1, c })
  end
  return enc
end

-- names: the checkpoint's names where they are not SamModel's (SAM 2's
-- Sam2Attention calls out_proj o_proj: names.out_proj = "o_proj"); the
-- table keeps SamModel's field names.
local function attention_params(w, prefix, c, internal, names)
  local out = names and names.out_proj or "out_proj"
  return {
    q_proj = linear_params(w, prefix .. ".q_proj", internal, c, true),
    k_proj = linear_params(w, prefix .. ".k_proj", internal, c, true),
    v_proj = linear_params(w, prefix .. ".v_proj", internal, c, true),
    out_proj = linear_params(w, prefix .. "." .. out, c, internal, true),
  }
end

-- ref: transformers/models/sam/modeling_sam.py, SamFeedForward
local function feed_forward(w, prefix, nin, hidden, nout, depth)
  local ff = { proj_in = linear_params(w, prefix .. ".proj_in", hidden, nin, true), layers = {},
               proj_out = linear_params(w, prefix .. ".proj_out", nout, hidden, true) }
  for i = 1, depth - 2 do
    ff.layers[i] = linear_params(w, ("%s.layers.%d"):format(prefix, i - 1), hidden, hidden, true)
  end
  return ff
end

-- The two-way transformer's weights under `pre` (e.g. "mask_decoder.transformer."):
-- cfg = {hidden_size, attention_downsample_rate, num_hidden_layers, mlp_dim};
-- names (optional): the checkpoint's names where they differ from
-- SamModel's, out_proj (see attention_params), lin1 and lin2 (the MLP's
-- two linears; SAM 2: mlp.proj_in, mlp.proj_out). The tables keep
-- SamModel's field names.
-- ref: transformers/models/sam/modeling_sam.py, SamTwoWayTransformer
local function two_way_params(w, pre, cfg, names)
  names = names or {}
  local c = cfg.hidden_size
  local internal = math.floor(c / cfg.attention_downsample_rate)
  local lin1, lin2 = names.lin1 or "mlp.lin1", names.lin2 or "mlp.lin2"
  local tr = { layers = {} }
  for i = 1, cfg.num_hidden_layers do
    local lp = ("%slayers.%d."):format(pre, i - 1)
    tr.layers[i] = {
      skip_first_layer_pe = i == 1,
      self_attn = attention_params(w, lp .. "self_attn", c, c, names),
      layer_norm1 = norm_params(w, lp .. "layer_norm1", c),
      cross_attn_token_to_image = attention_params(w, lp .. "cross_attn_token_to_image", c, internal, names),
      layer_norm2 = norm_params(w, lp .. "layer_norm2", c),
      mlp = { lin1 = linear_params(w, lp .. lin1, cfg.mlp_dim, c, true),
              lin2 = linear_params(w, lp .. lin2, c, cfg.mlp_dim, true) },
      layer_norm3 = norm_params(w, lp .. "layer_norm3", c),
      layer_norm4 = norm_params(w, lp .. "layer_norm4", c),
      cross_attn_image_to_token = attention_params(w, lp .. "cross_attn_image_to_token", c, internal, names),
    }
  end
  tr.final_attn_token_to_image = attention_params(w, pre .. "final_attn_token_to_image", c, internal, names)
  tr.layer_norm_final_attn = norm_params(w, pre .. "layer_norm_final_attn", c)
  return tr
end

-- ref: transformers/models/sam/modeling_sam.py, SamMaskDecoder / SamTwoWayTransformer
local function mask_decoder(w, cfg)
  local c = cfg.hidden_size
  local ntok = cfg.num_multimask_outputs + 1
  local pre = "mask_decoder."
  local tr = two_way_params(w, pre .. "transformer.", cfg)
  local dec = {
    iou_token = param(w, pre .. "iou_token.weight", { 1, c }),
    mask_tokens = param(w, pre .. "mask_tokens.weight", { ntok, c }),
    transformer = tr,
    upscale_conv1 = { weight = param(w, pre .. "upscale_conv1.weight", { c, math.floor(c / 4), 2, 2 }),
                      bias = param(w, pre .. "upscale_conv1.bias", { math.floor(c / 4) }) },
    upscale_layer_norm = norm_params(w, pre .. "upscale_layer_norm", math.floor(c / 4)),
    upscale_conv2 = { weight = param(w, pre .. "upscale_conv2.weight", { math.floor(c / 4), math.floor(c / 8), 2, 2 }),
                      bias = param(w, pre .. "upscale_conv2.bias", { math.floor(c / 8) }) },
    output_hypernetworks_mlps = {},
    iou_prediction_head = feed_forward(w, pre .. "iou_prediction_head", c, cfg.iou_head_hidden_dim,
                                       ntok, cfg.iou_head_depth),
  }
  for i = 1, ntok do
    dec.output_hypernetworks_mlps[i] = feed_forward(w, ("%soutput_hypernetworks_mlps.%d"):format(pre, i - 1),
                                                    c, c, math.floor(c / 8), HYPERNETWORK_DEPTH)
  end
  return dec
end

local function check_config(v, p, d)
  local function need(ok, msg, ...)
    if not ok then error("config.json: " .. msg:format(...), 0) end
  end
  need(v.hidden_size % v.num_attention_heads == 0, "vision hidden_size %d is not a multiple of %d heads",
       v.hidden_size, v.num_attention_heads)
  need(v.image_size % v.patch_size == 0, "vision image_size %d is not a multiple of patch_size %d",
       v.image_size, v.patch_size)
  need(2 * v.num_pos_feats == p.hidden_size, "2 x num_pos_feats (%d) must equal the prompt hidden_size %d",
       v.num_pos_feats, p.hidden_size)
  need(p.hidden_size == d.hidden_size and v.output_channels == d.hidden_size,
       "prompt hidden_size %d, mask decoder hidden_size %d and vision output_channels %d must agree",
       p.hidden_size, d.hidden_size, v.output_channels)
  need(d.hidden_size >= 8, "mask decoder hidden_size %d is below 8 (the upscaling keeps hidden_size // 8 channels)",
       d.hidden_size)
  need(p.mask_input_channels >= 4, "mask_input_channels %d is below 4 (mask_embed keeps mask_input_channels // 4)",
       p.mask_input_channels)
  local internal = math.floor(d.hidden_size / d.attention_downsample_rate)
  need(internal % d.num_attention_heads == 0 and d.hidden_size % d.num_attention_heads == 0,
       "mask decoder: %d heads do not divide %d / %d", d.num_attention_heads, d.hidden_size, internal)
  for _, act in ipairs({ v.hidden_act, p.hidden_act, d.hidden_act }) do
    need(nn.has_activation(act), "unsupported hidden_act '%s'", tostring(act))
  end
end

local SAM = {}
SAM.__index = SAM

-- The image-wide positional encoding (1, C, h, w) of the embedding grid,
-- computed once per model. ref: SamModel.get_image_wide_positional_embeddings
local function image_wide_positional_embeddings(self)
  local size = self.config.prompt.image_embedding_size
  local grid = T.new({ size, size, 2 })
  local p = grid:ptr()
  for y = 0, size - 1 do
    for x = 0, size - 1 do
      -- cumsum of ones minus 0.5, over the size: pixel centres in [0, 1]
      p[(y * size + x) * 2] = (x + 1 - 0.5) / size
      p[(y * size + x) * 2 + 1] = (y + 1 - 0.5) / size
    end
  end
  local pe = self:positional_encoding(grid)            -- (h, w, C)
  return pe:permute(3, 1, 2):contiguous():unsqueeze(1)  -- (1, C, h, w)
end

-- new(config, weights, opts): config = decoded config.json; weights with
-- has(name) / get(name, shape) (fmseg.io.hf weights). opts.strict = false
-- allows unknown tensors.
-- ref: transformers/models/sam/modeling_sam.py, SamModel
function M.new(config, weights, opts)
  opts = opts or {}
  local v = hf.settings(config.vision_config, VISION_DEFAULTS)
  v.mlp_dim = hf.cfg(config.vision_config or {}, "mlp_dim", math.floor(v.hidden_size * v.mlp_ratio))
  local p = hf.settings(config.prompt_encoder_config, PROMPT_DEFAULTS)
  -- SamPromptEncoderConfig derives it, whatever config.json says
  p.image_embedding_size = math.floor(p.image_size / p.patch_size)
  local d = hf.settings(config.mask_decoder_config, DECODER_DEFAULTS)
  check_config(v, p, d)
  local self = setmetatable({ config = { vision = v, prompt = p, decoder = d } }, SAM)
  -- SamPositionalEmbedding's Gaussian matrix; the prompt encoder holds a
  -- tied copy under its own name in some checkpoints
  local pe_name = "shared_image_embedding.positional_embedding"
  local tied = "prompt_encoder.shared_embedding.positional_embedding"
  if not weights:has(pe_name) and weights:has(tied) then pe_name = tied end
  self.shared_image_embedding = { positional_embedding = param(weights, pe_name, { 2, v.num_pos_feats }) }
  self.vision_encoder = vision_encoder(weights, v)
  self.prompt_encoder = prompt_encoder(weights, p)
  self.mask_decoder = mask_decoder(weights, d)
  if opts.strict ~= false and weights.check_all_used then
    weights:check_all_used(nil, { "^prompt_encoder%.shared_embedding%.positional_embedding$" })
  end
  self.image_positional_embeddings = image_wide_positional_embeddings(self)
  return self
end

-- load(path, opts): a SamModel directory (config.json + model.safetensors).
function M.load(path, opts) return hf.load_model(path, M.new, opts) end

-- Vision encoder ------------------------------------------------------------------

local window_partition, window_unpartition = transformer.window_partition, transformer.window_unpartition

-- rel_pos (L, D) resampled to the 2*size-1 relative offsets of a size-long
-- axis (linear, as F.interpolate(mode="linear")); as it is when it fits.
-- ref: SamVisionAttention.get_rel_pos (q_size == k_size)
local function get_rel_pos(rel_pos, size)
  local l, d = rel_pos:size(1), rel_pos:size(2)
  if l == 2 * size - 1 then return rel_pos end
  local x = rel_pos:t():contiguous():reshape(1, d, 1, l)
  return nn.interpolate(x, 1, 2 * size - 1):reshape(d, 2 * size - 1):t():contiguous()
end

-- x (N, gh, gw, C) → (N, gh, gw, C): multi-head self-attention over each
-- grid with decomposed relative positions (core/sam_attention.c). With
-- `keep` (a table) also keep.probs (N, heads, T, T), the softmax, and
-- keep.v (N, T, C), the values.
-- ref: transformers/models/sam/modeling_sam.py, SamVisionAttention
local function vision_attention(attn, x, heads, keep)
  local n, gh, gw, c = unpack(x:shape())
  local qkv = nn.linear(x:reshape(n, gh * gw, c), attn.qkv.weight, attn.qkv.bias) -- (N, T, 3C)
  local q, k, v = qkv:narrow(3, 1, c), qkv:narrow(3, c + 1, c), qkv:narrow(3, 2 * c + 1, c)
  local rh = attn.rel_pos_h and get_rel_pos(attn.rel_pos_h, gh)
  local rw = attn.rel_pos_w and get_rel_pos(attn.rel_pos_w, gw)
  local out = T.new({ n, gh * gw, c })
  local probs = keep and T.new({ n, heads, gh * gw, gh * gw }) or nil
  check(C.fm_sam_attention(out, q, k, v, heads, 1 / math.sqrt(c / heads), rh, rw, gh, gw, probs))
  if keep then keep.probs, keep.v = probs, v:clone() end
  q:free(); k:free(); v:free(); qkv:free()
  local y = nn.linear(out, attn.proj.weight, attn.proj.bias)
  out:free()
  return y:reshape(n, gh, gw, c)
end

-- ref: transformers/models/sam/modeling_sam.py, SamMLPBlock
local function mlp_block(mlp, x, act)
  local h = nn.activation_(nn.linear(x, mlp.lin1.weight, mlp.lin1.bias), act)
  local y = nn.linear(h, mlp.lin2.weight, mlp.lin2.bias)
  h:free()
  return y
end

-- Views handed to the collector keep their storage alive, and the collector
-- cannot see C memory: collect between stages so that one stage's buffers
-- are back before the next allocates (the big ones are freed explicitly).
local function collect() collectgarbage() end

-- x (B, h, w, C) → (B, h, w, C), updated in place and returned; `keep`
-- as vision_attention's (a global-attention layer).
-- ref: SamVisionLayer.forward
local function vision_layer_forward(layer, x, cfg, keep)
  local _, h, w = unpack(x:shape())
  local ln1, ln2 = layer.layer_norm1, layer.layer_norm2
  local y = nn.layer_norm(x, ln1.weight, ln1.bias, cfg.layer_norm_eps)
  local ws, hp, wp = layer.window_size
  if ws > 0 then
    local windows
    windows, hp, wp = window_partition(y, ws)
    y:free()
    y = windows
  end
  local a = vision_attention(layer.attn, y, cfg.num_attention_heads, keep)
  y:free()
  if ws > 0 then
    local full = window_unpartition(a, ws, hp, wp, h, w)
    a:free()
    a = full
  end
  x:add_(a)
  a:free()
  local z = nn.layer_norm(x, ln2.weight, ln2.bias, cfg.layer_norm_eps)
  local m = mlp_block(layer.mlp, z, cfg.hidden_act)
  z:free()
  x:add_(m)
  m:free()
  return x
end

-- pixel_values (B, C, S, S), S = vision image_size → image embeddings
-- (B, output_channels, S/patch, S/patch). opts.hidden_states = true also
-- returns {[0] = after the position embedding, [i] = after layer i} as
-- (B, h, w, C), the layout transformers returns. opts.attention = i (a
-- global-attention layer, 1-based) returns third { probs = (B, heads, T, T)
-- its attention softmax, v = (B, T, C) its values (heads side by side),
-- grid = {h, w} } over the T = h * w tokens (Trident's last_attn, last_v;
-- B x heads x T² floats: 805 MB for ViT-B at 1024).
-- ref: transformers/models/sam/modeling_sam.py, SamVisionEncoder
function SAM:encode_image(pixel_values, opts)
  opts = opts or {}
  local cfg, enc = self.config.vision, self.vision_encoder
  local want = opts.attention
  if want and not (enc.layers[want] and enc.layers[want].window_size == 0) then
    error(("sam: attention = %s is not a global-attention layer of 1..%d"):format(
      tostring(want), #enc.layers), 2)
  end
  local shape = pixel_values:shape()
  if #shape ~= 4 or shape[2] ~= cfg.num_channels or shape[3] ~= cfg.image_size or shape[4] ~= cfg.image_size then
    error(("sam: pixel_values %s, expected [B, %d, %d, %d] (SAM's encoder takes its fixed input size)"):format(
      T.shape_string(shape), cfg.num_channels, cfg.image_size, cfg.image_size), 2)
  end
  local pe = enc.patch_embed.projection
  local patches = nn.conv2d(pixel_values, pe.weight, pe.bias, { stride = cfg.patch_size })
  local x = patches:permute(1, 3, 4, 2):contiguous()        -- (B, h, w, C)
  patches:free()
  if enc.pos_embed then x:add_(enc.pos_embed) end
  local hidden = opts.hidden_states and { [0] = x:clone() } or nil
  local kept = want and { grid = { x:size(2), x:size(3) } } or nil
  for i, layer in ipairs(enc.layers) do
    x = vision_layer_forward(layer, x, cfg, i == want and kept or nil)
    if hidden then hidden[i] = x:clone() end
    collect()
  end
  -- ref: SamVisionNeck
  local neck = enc.neck
  local y = x:permute(1, 4, 2, 3):contiguous()               -- (B, C, h, w)
  x:free()
  y = nn.conv2d(y, neck.conv1.weight, nil)
  y = nn.layer_norm_channels(y, neck.layer_norm1.weight, neck.layer_norm1.bias, SAM_LAYER_NORM_EPS)
  y = nn.conv2d(y, neck.conv2.weight, nil, { padding = 1 })
  y = nn.layer_norm_channels(y, neck.layer_norm2.weight, neck.layer_norm2.bias, SAM_LAYER_NORM_EPS)
  collect()
  return y, hidden, kept
end

-- Prompt encoder --------------------------------------------------------------------

-- coords (..., 2) in [0, 1] → (..., 2F) random Fourier features.
-- ref: transformers/models/sam/modeling_sam.py, SamPositionalEmbedding
function SAM:positional_encoding(coords)
  local shape = coords:shape()
  local n = coords:numel() / 2
  local g = self.shared_image_embedding.positional_embedding       -- (2, F)
  local c = (coords * 2 - 1):reshape(n, 2):matmul(g)               -- (n, F)
  c = c * (2 * math.pi)
  shape[#shape] = 2 * g:size(2)
  return T.cat({ c:sin(), c:cos() }, 2):reshape(shape)
end

local POINT_LABELS = { [1] = true, [0] = true, [-1] = true, [-10] = true }

-- points (B, N, P, 2) in input pixels, labels (B, N, P) → (B, N, P', C);
-- P' = P + 1 with `pad` (SAM's not-a-point when no box is given).
-- ref: SamPromptEncoder._embed_points
function SAM:embed_points(points, labels, pad)
  local pe, cfg = self.prompt_encoder, self.config.prompt
  local b, n = unpack(points:shape())
  labels = labels:float()
  for _, l in ipairs(labels:values()) do
    if not POINT_LABELS[l] then
      error(("sam: point label %s (1 fg, 0 bg, -1 not a point, -10 padding)"):format(tostring(l)), 3)
    end
  end
  points = points + 0.5                                  -- pixel centres
  if pad then
    points = T.cat({ points, T.zeros({ b, n, 1, 2 }) }, 3)
    labels = T.cat({ labels, T.full({ b, n, 1 }, -1) }, 3)
  end
  local emb = self:positional_encoding(points / cfg.image_size)    -- (B, N, P', C)
  local function where(v) return labels:eq(v):unsqueeze(-1) end    -- (B, N, P', 1)
  local is_nap, is_pad, is_bg, is_fg = where(-1), where(-10), where(0), where(1)
  -- label -1: not_a_point_embed instead; -10: zeros; 0 / 1: + point_embed
  emb = emb * (1 - is_nap - is_pad) + pe.not_a_point_embed * is_nap
  return emb + pe.point_embed[1] * is_bg + pe.point_embed[2] * is_fg
end

-- boxes (B, N, 4) x0, y0, x1, y1 in input pixels → corners (B, N, 2, C).
-- ref: SamPromptEncoder._embed_boxes
function SAM:embed_boxes(boxes)
  local pe, cfg = self.prompt_encoder, self.config.prompt
  local b, n = boxes:size(1), boxes:size(2)
  local corners = (boxes + 0.5):reshape(b, n, 2, 2)
  local emb = self:positional_encoding(corners / cfg.image_size)
  return emb + T.cat({ pe.point_embed[3], pe.point_embed[4] }, 1)   -- (2, C): top-left, bottom-right
end

-- x (1, C, H, W) normalised as SAM's LayerNorm2d normalises an UNBATCHED
-- (C, H, W) tensor: it takes mean and variance over dim 1, which is then
-- the rows (H), per channel and column; the affine stays per channel.
-- Trident's sam_refinement hands its mask prompt over without a batch
-- dimension, so this is what its masks meet (mask_norm = "rows").
local function layer_norm_rows(x, ln, eps)
  local c, h, w = x:size(2), x:size(3), x:size(4)
  local y = nn.layer_norm_channels(x:reshape(c, h, 1, w), nil, nil, eps)   -- over H per (c, w)
  return y:mul_(ln.weight:reshape(c, 1, 1, 1)):add_(ln.bias:reshape(c, 1, 1, 1)):reshape(1, c, h, w)
end

-- masks (M, 1, 4h, 4w) low-res logits → dense embeddings (M, C, h, w).
-- mask_norm = "rows" (one mask, M = 1): layer_norm_rows instead of SAM's
-- per-pixel channel norm.
-- ref: transformers/models/sam/modeling_sam.py, SamMaskEmbedding
function SAM:embed_masks(masks, mask_norm)
  local me, cfg = self.prompt_encoder.mask_embed, self.config.prompt
  local norm = nn.layer_norm_channels
  if mask_norm == "rows" then
    if masks:size(1) ~= 1 then error("sam: mask_norm = rows takes a single mask prompt", 2) end
    norm = function(x, w, b, eps) return layer_norm_rows(x, { weight = w, bias = b }, eps) end
  elseif mask_norm ~= nil and mask_norm ~= "channels" then
    error(("sam: mask_norm must be channels or rows, got %s"):format(tostring(mask_norm)), 2)
  end
  local x = nn.conv2d(masks, me.conv1.weight, me.conv1.bias, { stride = 2 })
  x = norm(x, me.layer_norm1.weight, me.layer_norm1.bias, cfg.layer_norm_eps)
  x = nn.activation(x, cfg.hidden_act)
  x = nn.conv2d(x, me.conv2.weight, me.conv2.bias, { stride = 2 })
  x = norm(x, me.layer_norm2.weight, me.layer_norm2.bias, cfg.layer_norm_eps)
  x = nn.activation(x, cfg.hidden_act)
  return nn.conv2d(x, me.conv3.weight, me.conv3.bias)
end

-- prompt = {points (B, N, P, 2), labels (B, N, P) (default all 1),
-- boxes (B, N, 4), masks (M, 1, 4h, 4w), mask_norm (see embed_masks)},
-- coordinates in input pixels →
-- sparse (B, N, K, C) or nil when there are no points or boxes,
-- dense (M | 1, C, h, w).
-- ref: transformers/models/sam/modeling_sam.py, SamPromptEncoder.forward
function SAM:encode_prompt(prompt)
  prompt = prompt or {}
  local sparse
  if prompt.points then
    local labels = prompt.labels or T.ones({ unpack(prompt.points:shape(), 1, 3) })
    sparse = self:embed_points(prompt.points, labels, prompt.boxes == nil)
  end
  if prompt.boxes then
    local boxes = self:embed_boxes(prompt.boxes)
    if sparse and (sparse:size(1) ~= boxes:size(1) or sparse:size(2) ~= boxes:size(2)) then
      error(("sam: %d x %d point sets but %d x %d boxes: give one box per point set"):format(
        sparse:size(1), sparse:size(2), boxes:size(1), boxes:size(2)), 2)
    end
    sparse = sparse and T.cat({ sparse, boxes }, 3) or boxes
  end
  local dense
  if prompt.masks then
    dense = self:embed_masks(prompt.masks, prompt.mask_norm)
  else
    local s, c = self.config.prompt.image_embedding_size, self.config.prompt.hidden_size
    dense = T.zeros({ 1, c, s, s }) + self.prompt_encoder.no_mask_embed:reshape(1, c, 1, 1)
  end
  return sparse, dense
end

-- Mask decoder ---------------------------------------------------------------------------

-- The decoder's query tokens: out_tokens (K, C) for each of the bn
-- prompts, followed by their sparse embeddings (B, N, P, C) or nil →
-- (bn, K + P, C), and the count of dense embeddings (bn, b or 1), checked.
local function decoder_tokens(out_tokens, sparse, dense, b, bn, who)
  local c = out_tokens:size(2)
  local tokens = T.zeros({ bn, out_tokens:size(1), c }) + out_tokens
  if sparse then tokens = T.cat({ tokens, sparse:reshape(bn, sparse:size(3), c) }, 2) end
  local nd = dense:size(1)
  if nd ~= bn and nd ~= 1 and nd ~= b then
    error(("%s: dense embeddings for %d prompts, expected %d, %d or 1"):format(who, nd, bn, b), 3)
  end
  return tokens, nd
end

-- x (B, ...) → (B*n, ...), each row repeated n times in a row.
local function repeat_interleave(x, n)
  if n == 1 then return x end
  local shape = x:shape()
  local parts, u = {}, x:unsqueeze(2)
  for i = 1, n do parts[i] = u end
  shape[1] = shape[1] * n
  return T.cat(parts, 2):reshape(shape)
end

-- query (B, Tq, C), key (B, Tk, C), value (B, Tk, C) → (B, Tq, C).
-- similarity (B | 1, 1, 1, Tk) or nil: PerSAM's target-guided attention,
-- added to the softmax probabilities and normalised by a second softmax;
-- with mode "logits" added to the scores before the one softmax instead.
-- ref: transformers/models/sam/modeling_sam.py, SamAttention (attention_similarity);
--      Personalize-SAM per_segment_anything/modeling/transformer.py, Attention (attn_sim)
local function attention(a, query, key, value, heads, similarity, mode)
  local q = nn.linear(query, a.q_proj.weight, a.q_proj.bias)
  local k = nn.linear(key, a.k_proj.weight, a.k_proj.bias)
  local v = nn.linear(value, a.v_proj.weight, a.v_proj.bias)
  local o
  if similarity and mode == "logits" then
    local mask = similarity + T.zeros({ similarity:size(1), 1, q:size(2), k:size(2) })   -- (B | 1, 1, Tq, Tk)
    o = nn.attention(q, k, v, heads, { mask = mask })
    mask:free()
  elseif similarity then
    local b, tq, tk, cv = q:size(1), q:size(2), v:size(2), v:size(3)
    local _, probs = nn.attention(q, k, v, heads, { probs = true })           -- (B, H, Tq, Tk)
    local guided = nn.softmax(probs + similarity)
    probs:free()
    local vh = v:reshape(b, tk, heads, cv / heads):permute(1, 3, 2, 4):contiguous()   -- (B, H, Tk, Dv)
    o = guided:matmul(vh):permute(1, 3, 2, 4):contiguous():reshape(b, tq, cv)
    guided:free(); vh:free()
  else
    o = nn.attention(q, k, v, heads)
  end
  q:free(); k:free(); v:free()
  local y = nn.linear(o, a.out_proj.weight, a.out_proj.bias)
  o:free()
  return y
end

local function layer_norm(x, ln, eps) return nn.layer_norm(x, ln.weight, ln.bias, eps) end

-- The block's first step, the prompt tokens attending to themselves (the
-- first layer without positional encodings), then layer_norm1.
local function tokens_self_attention(layer, queries, query_pe, heads, eps)
  if layer.skip_first_layer_pe then
    queries = attention(layer.self_attn, queries, queries, queries, heads)
  else
    local q = queries + query_pe
    queries = queries + attention(layer.self_attn, q, q, queries, heads)
  end
  return layer_norm(queries, layer.layer_norm1, eps)
end

-- queries (BN, Tq, C), keys (BN, HW, C) → queries, keys; similarity: see
-- attention (the tokens-to-image attention only).
-- ref: transformers/models/sam/modeling_sam.py, SamTwoWayAttentionBlock
local function two_way_block(layer, queries, keys, query_pe, key_pe, cfg, similarity, mode)
  local heads, eps = cfg.num_attention_heads, cfg.layer_norm_eps
  queries = tokens_self_attention(layer, queries, query_pe, heads, eps)
  -- tokens attending to the image
  local q, k = queries + query_pe, keys + key_pe
  queries = layer_norm(queries + attention(layer.cross_attn_token_to_image, q, k, keys, heads, similarity, mode),
                       layer.layer_norm2, eps)
  queries = layer_norm(queries + mlp_block(layer.mlp, queries, cfg.hidden_act), layer.layer_norm3, eps)
  -- the image attending to the tokens (keys + key_pe is unchanged)
  q = queries + query_pe
  local update = attention(layer.cross_attn_image_to_token, k, q, queries, heads)
  k:free()
  local new_keys = keys + update
  update:free()
  keys = layer_norm(new_keys, layer.layer_norm4, eps)
  new_keys:free()
  return queries, keys
end

-- The decoder's cross-attentions as tall products (core/sam_decoder.c): the
-- q / k / v / out projections on the image side are folded into the few
-- prompt tokens, head by head (see sam_decoder.c for the algebra). The same
-- numbers as `attention` up to the order of float additions.

-- Per-head slices of an attention's weights, each (D, C): q[h], k[h], v[h]
-- rows h of q_proj / k_proj / v_proj, o[h] = out_proj's columns h,
-- transposed. Cut once per model and kept beside the weights.
local function head_weights(a, heads)
  if a.per_head then return a.per_head end
  local ci = a.q_proj.weight:size(1)
  local d = ci / heads
  local hw = { d = d, ci = ci, q = {}, k = {}, v = {}, o = {} }
  for h = 1, heads do
    local first = (h - 1) * d + 1
    hw.q[h] = a.q_proj.weight:narrow(1, first, d)
    hw.k[h] = a.k_proj.weight:narrow(1, first, d)
    hw.v[h] = a.v_proj.weight:narrow(1, first, d)
    hw.o[h] = a.out_proj.weight:narrow(2, first, d):t():contiguous()
  end
  a.per_head = hw
  return hw
end

-- a (M, H*D), ws[h] (D, C) → (M, H, C): row block h of a times ws[h].
local function fold_heads(a, ws)
  local m, heads = a:size(1), #ws
  local d, c = ws[1]:size(1), ws[1]:size(2)
  local out = T.empty({ m, heads, c })
  for h = 1, heads do
    local p = a:narrow(2, (h - 1) * d + 1, d):matmul(ws[h])
    out:select(2, h):copy(p)
    p:free()
  end
  return out
end

-- (BN, S, H, ...) → (BN, H*S, ...): rows grouped by head
local function heads_first(x, bn, s, heads, c)
  if c then return x:reshape(bn, s, heads, c):permute(1, 3, 2, 4):contiguous():reshape(bn, heads * s, c) end
  return x:reshape(bn, s, heads):permute(1, 3, 2):contiguous():reshape(bn, heads * s)
end

-- Tokens attending to the image: query (BN, S, C) with its positional
-- encoding, image (BN | 1, T, C), image_pe (1, T, C) → (BN, S, C), as
-- attention(a, query, image + image_pe, image).
local function tokens_to_image(a, query, image, image_pe, heads)
  local bn, s, c = unpack(query:shape())
  local hw = head_weights(a, heads)
  local d, ci = hw.d, hw.ci
  local qp = nn.linear(query, a.q_proj.weight, a.q_proj.bias)                 -- (BN, S, Ci)
  local qf = fold_heads(qp:reshape(bn * s, ci), hw.k)                          -- (BN*S, H, C)
  qp:free()
  local z = T.empty({ bn, s * heads, c })
  check(C.fm_sam_tokens_to_image(z, qf:reshape(bn, s * heads, c), image, image_pe, 1 / math.sqrt(d)))
  qf:free()
  -- o[:, head h] = Wv_h z_h + bv_h (the probabilities sum to 1)
  local zr, o = z:reshape(bn * s, heads, c), T.empty({ bn * s, ci })
  for h = 1, heads do
    local p = zr:select(2, h):matmul(hw.v[h], false, true)
    o:narrow(2, (h - 1) * d + 1, d):copy(p)
    p:free()
  end
  z:free()
  o:add_(a.v_proj.bias:reshape(1, ci))
  local y = nn.linear(o:reshape(bn, s, ci), a.out_proj.weight, a.out_proj.bias)
  o:free()
  return y
end

-- The same against one image shared by all BN prompts (the first layer
-- without mask inputs): image (1, T, C), image_k = image + image_pe. Its
-- k and v are projected once; each prompt's tokens then attend with the
-- same shapes whatever the batch, so a prompt in a batch rounds as it
-- does alone (one tall query of all prompts was no faster, and sgemm's
-- edge tiles rounded its rows by their position in it).
local function tokens_to_shared_image(a, query, image, image_k, heads)
  local bn, s = query:size(1), query:size(2)
  local k = nn.linear(image_k, a.k_proj.weight, a.k_proj.bias)               -- (1, T, Ci)
  local v = nn.linear(image, a.v_proj.weight, a.v_proj.bias)
  local ci = a.q_proj.weight:size(1)
  local o = T.empty({ bn, s, ci })
  for i = 1, bn do
    local qp = nn.linear(query:narrow(1, i, 1), a.q_proj.weight, a.q_proj.bias)
    local oi = nn.attention(qp, k, v, heads)
    o:narrow(1, i, 1):copy(oi)
    qp:free(); oi:free()
  end
  k:free(); v:free()
  local y = nn.linear(o:reshape(bn, s, ci), a.out_proj.weight, a.out_proj.bias)
  o:free()
  return y
end

-- The image attending to the tokens, then the block's residual and
-- layer_norm4: image_q + image_q_pe (BN | 1, T, C) (image tokens + their
-- encoding; image_q_pe may be nil), key (BN, S, C) (tokens + theirs),
-- value (BN, S, C), image (BN | 1, T, C)
-- → LN(image + attention(a, image_q + image_q_pe, key, value)) (BN, T, C).
local function image_to_tokens(a, image_q, image_q_pe, key, value, image, heads, ln, eps)
  local bn, s, c = unpack(key:shape())
  local hw = head_weights(a, heads)
  local d, ci = hw.d, hw.ci
  local k = nn.linear(key, a.k_proj.weight, a.k_proj.bias):reshape(bn * s, ci)
  local v = nn.linear(value, a.v_proj.weight, a.v_proj.bias):reshape(bn * s, ci)
  -- scores x . (Wq_hᵀ k_hj) + bq_h . k_hj; values Wo_h v_hj
  local kf = fold_heads(k, hw.q)                                               -- (BN*S, H, C)
  local keys = heads_first(kf, bn, s, heads, c)
  local kb = (k * a.q_proj.bias:reshape(1, ci)):reshape(bn * s, heads, d):sum(3)
  local key_bias = heads_first(kb, bn, s, heads)
  local vf = fold_heads(v, hw.o)
  local values = heads_first(vf, bn, s, heads, c)
  kf:free(); kb:free(); vf:free(); k:free(); v:free()
  local out = T.empty({ bn, image:size(2), c })
  check(C.fm_sam_image_to_tokens(out, image_q, image_q_pe, keys, key_bias, values, a.out_proj.bias, heads,
                                 1 / math.sqrt(d), image, 1, ln.weight, ln.bias, eps))
  keys:free(); key_bias:free(); values:free()
  return out
end

-- SamTwoWayAttentionBlock over the tall products: keys (BN | 1, T, C) (1:
-- shared by the prompts), key_pe (1, T, C) → queries, keys (BN, T, C).
local function two_way_block_fast(layer, queries, keys, query_pe, key_pe, cfg)
  local heads, eps = cfg.num_attention_heads, cfg.layer_norm_eps
  queries = tokens_self_attention(layer, queries, query_pe, heads, eps)
  -- keys + key_pe: made once when shared, else added block by block (a
  -- single prompt takes the shared path too, so that it gives what it
  -- gives in a batch to the last bit of the products' order)
  local shared = keys:size(1) == 1
  local image_k = shared and keys + key_pe or nil                 -- (1, T, C)
  local q = queries + query_pe
  local a = shared and tokens_to_shared_image(layer.cross_attn_token_to_image, q, keys, image_k, heads)
    or tokens_to_image(layer.cross_attn_token_to_image, q, keys, key_pe, heads)
  queries = layer_norm(queries + a, layer.layer_norm2, eps)
  queries = layer_norm(queries + mlp_block(layer.mlp, queries, cfg.hidden_act), layer.layer_norm3, eps)
  q = queries + query_pe
  local new_keys = image_to_tokens(layer.cross_attn_image_to_token, image_k or keys, not shared and key_pe or nil,
                                   q, queries, keys, heads, layer.layer_norm4, eps)
  if image_k then image_k:free() end
  return queries, new_keys
end

-- opts: attention_similarity and attention_similarity_mode (see
-- attention), target_embedding (1, 1, C) and target_embedding_final (see
-- decode_masks), out_tokens (the queries returned: the first ones, all
-- by default). src (BN | 1, T, C): 1 when every prompt sees the same
-- image tokens (then the first layer's image-side work is done once).
-- Without attention_similarity the blocks run over the tall products.
-- ref: transformers/models/sam/modeling_sam.py, SamTwoWayTransformer;
--      Personalize-SAM per_segment_anything/modeling/transformer.py, TwoWayTransformer
local function two_way_transformer(tr, tokens, src, pos, cfg, opts)
  local sim, target = opts.attention_similarity, opts.target_embedding
  local bn = tokens:size(1)
  if sim and src:size(1) ~= bn then   -- the per-prompt path wants its own copies
    local parts = {}
    for i = 1, bn do parts[i] = src end
    src = T.cat(parts, 1)
  end
  -- Target-semantic prompting: `queries += target_embedding` before every
  -- layer. Both references add it in place, and before the first layer
  -- `queries` IS the tokens tensor that also serves as the queries'
  -- positional embedding: from then on that embedding is tokens + target.
  local query_pe = target and tokens + target or tokens
  local queries, keys = tokens, src
  for _, layer in ipairs(tr.layers) do
    if target then queries = queries + target end
    local new_queries, new_keys
    if sim then
      new_queries, new_keys = two_way_block(layer, queries, keys, query_pe, pos, cfg, sim,
                                            opts.attention_similarity_mode)
    else
      new_queries, new_keys = two_way_block_fast(layer, queries, keys, query_pe, pos, cfg)
    end
    keys:free()   -- src too: the blocks hand back new keys
    queries, keys = new_queries, new_keys
  end
  -- the final attention for the output tokens only (opts.out_tokens, the
  -- first ones): nothing reads the prompt tokens' rows after it
  local nout = opts.out_tokens or queries:size(2)
  if nout < queries:size(2) then
    queries, query_pe = queries:narrow(2, 1, nout):contiguous(), query_pe:narrow(2, 1, nout):contiguous()
  end
  local q = queries + query_pe
  if target and opts.target_embedding_final ~= false then q:add_(target) end
  local out = tokens_to_image(tr.final_attn_token_to_image, q, keys, pos, cfg.num_attention_heads)
  queries = layer_norm(queries + out, tr.layer_norm_final_attn, TORCH_LAYER_NORM_EPS)
  return queries, keys
end

-- ref: transformers/models/sam/modeling_sam.py, SamFeedForward (ReLU)
local function feed_forward_forward(ff, x)
  local h = nn.linear(x, ff.proj_in.weight, ff.proj_in.bias):relu_()
  for _, l in ipairs(ff.layers) do h = nn.linear(h, l.weight, l.bias):relu_() end
  return nn.linear(h, ff.proj_out.weight, ff.proj_out.bias)
end

-- rows `idx` (1-based, ascending) of x (BN, ...), or x itself when all
local function pick_rows(x, idx)
  if #idx == x:size(1) then return x end
  local parts = {}
  for i, k in ipairs(idx) do parts[i] = x:narrow(1, k, 1) end
  return T.cat(parts, 1)
end

-- image_embeddings (B, C, h, w), sparse (B, N, K, C) or nil, dense
-- (B*N | B | 1, C, h, w), multimask → low-res mask logits (B, N, M, 4h, 4w)
-- and IoU predictions (B, N, M): M = num_multimask_outputs (mask tokens
-- 2..) with multimask, else 1 (mask token 1).
-- opts.mask_filter = function(iou (B*N, M)) → ascending list of prompts
-- (1-based over B*N): the IoU head runs first and only those prompts'
-- masks are upscaled; masks is then (#list, M, 4h, 4w) and the list comes
-- third (the automatic mask generator's predicted-IoU filter).
-- opts (all off by default), PerSAM's two decoder changes as transformers
-- names them, with Personalize-SAM's semantics (its persam.py is the
-- method; the two switches give transformers' where it differs):
--   attention_similarity  h*w values (any shape), or (B*N, h*w): added to
--     the probabilities of the layers' tokens-to-image attention, which are
--     then softmaxed again (PerSAM: the sigmoid of its standardised
--     similarity map; not the final attention);
--   attention_similarity_mode  "probabilities" (that), or "logits": added
--     to the scores before the one softmax, what transformers 5's
--     SamAttention does with it (an additive attention mask; also its 4.x
--     SDPA path, while its 4.x eager path softmaxes twice);
--   target_embedding      C values: added to the queries before every
--     layer and to q of the final attention (PerSAM: the target feature);
--     both references add it in place, which also adds it to the queries'
--     positional embedding from the first layer on (reproduced);
--   target_embedding_final  false leaves it out of the final attention's
--     q, as transformers' SamTwoWayTransformer does.
-- Without a mask input per prompt (and one image), the first layer's
-- image-side projections are computed once for all N prompts.
-- ref: transformers/models/sam/modeling_sam.py, SamMaskDecoder.forward;
--      Personalize-SAM per_segment_anything/modeling/mask_decoder.py
function SAM:decode_masks(image_embeddings, sparse, dense, multimask, opts)
  opts = opts or {}
  local dec, cfg = self.mask_decoder, self.config.decoder
  local b, c, h, w = unpack(image_embeddings:shape())
  local s = self.config.prompt.image_embedding_size
  if h ~= s or w ~= s then
    error(("sam: image embeddings %s, expected [B, %d, %d, %d]"):format(
      T.shape_string(image_embeddings:shape()), c, s, s), 2)
  end
  local n = sparse and sparse:size(2) or 1
  local bn = b * n
  local mode = opts.attention_similarity_mode
  if mode ~= nil and mode ~= "probabilities" and mode ~= "logits" then
    error(("sam: attention_similarity_mode must be probabilities or logits, got %s"):format(tostring(mode)), 2)
  end
  local tr_opts = { target_embedding_final = opts.target_embedding_final, attention_similarity_mode = mode,
                    out_tokens = 1 + dec.mask_tokens:size(1) }
  local sim, target = opts.attention_similarity, opts.target_embedding
  if sim then
    local k = sim:numel() / (h * w)
    if k ~= 1 and k ~= bn then
      error(("sam: attention_similarity %s, expected %d (= %d x %d) values, or %d per prompt"):format(
        T.shape_string(sim:shape()), h * w, h, w, h * w), 2)
    end
    tr_opts.attention_similarity = sim:float():reshape(k, 1, 1, h * w)
  end
  if target then
    if target:numel() ~= c then
      error(("sam: target_embedding %s, expected %d values"):format(T.shape_string(target:shape()), c), 2)
    end
    tr_opts.target_embedding = target:float():reshape(1, 1, c)
  end
  -- output tokens (IoU, mask tokens) followed by the prompt's tokens
  local tokens, nd = decoder_tokens(T.cat({ dec.iou_token, dec.mask_tokens }, 1), sparse, dense, b, bn, "sam")
  -- the image tokens (B*N | 1, HW, C): once when every prompt sees the same
  local shared = b == 1 and nd == 1
  local src = shared and image_embeddings or repeat_interleave(image_embeddings, n)
  if not shared and nd == b then dense = repeat_interleave(dense, n) end
  local with_dense = src + dense
  if not shared and n > 1 then src:free() end
  local nk = with_dense:size(1)
  local pos = self.image_positional_embeddings
  local keys = with_dense:reshape(nk, c, h * w):transpose(2, 3):contiguous()   -- (BN | 1, HW, C)
  with_dense:free()
  local key_pe = pos:reshape(1, c, h * w):transpose(2, 3):contiguous()     -- (1, HW, C), broadcast
  local queries
  queries, keys = two_way_transformer(dec.transformer, tokens, keys, key_pe, cfg, tr_opts)
  key_pe:free()
  local mtok = dec.mask_tokens:size(1)
  local first, count = 2, mtok - 1
  if not multimask then first, count = 1, 1 end
  local iou = feed_forward_forward(dec.iou_prediction_head, queries:select(2, 1))   -- (BN, Mt)
  iou = iou:narrow(2, first, count):contiguous()
  local picked
  if opts.mask_filter then
    picked = opts.mask_filter(iou)
    if #picked < bn and #picked > 0 then
      local k2, q2 = pick_rows(keys, picked), pick_rows(queries, picked)
      keys:free()
      keys, queries = k2, q2
    end
  end
  local nm = picked and #picked or keys:size(1)
  -- upscale the image tokens and predict a mask per mask token, in one
  -- pass (core/sam_decoder.c: nothing full size but the masks)
  local hyper = {}
  for i = first, first + count - 1 do
    hyper[#hyper + 1] = feed_forward_forward(dec.output_hypernetworks_mlps[i], queries:select(2, 1 + i))
  end
  local hyper_in = T.stack(hyper, 2)                                        -- (BN, M, C/8)
  local masks = T.empty({ nm, count, 4 * h, 4 * w })
  if nm > 0 then
    local u1, u2, ln = dec.upscale_conv1, dec.upscale_conv2, dec.upscale_layer_norm
    check(C.fm_sam_upscale_masks(masks, keys, h, w, u1.weight, u1.bias, ln.weight, ln.bias,
                                 SAM_LAYER_NORM_EPS, u2.weight, u2.bias, hyper_in))
  end
  keys:free()
  collect()
  if picked then return masks, iou, picked end
  return masks:reshape(b, n, count, 4 * h, 4 * w), iou:reshape(b, n, count)
end

-- forward(pixel_values or nil, prompt, opts) → masks, iou, image_embeddings:
-- the whole SamModel. opts.image_embeddings reuses an encoding; opts.multimask
-- (default true); the decoder options of decode_masks.
function SAM:forward(pixel_values, prompt, opts)
  opts = opts or {}
  local emb = opts.image_embeddings or self:encode_image(pixel_values)
  local sparse, dense = self:encode_prompt(prompt)
  local masks, iou = self:decode_masks(emb, sparse, dense, opts.multimask ~= false, opts)
  return masks, iou, emb
end

-- The pieces SAM 2's prompt encoder and mask decoder share with SAM's
-- (fmseg.models.sam2; its tables take the field names above):
-- prompt_methods = the SAM class, whose positional_encoding, embed_points,
-- embed_boxes and embed_masks read self.shared_image_embedding,
-- self.prompt_encoder (point_embed[1..4], not_a_point_embed, mask_embed)
-- and self.config.prompt; two_way_params and two_way_transformer (opts:
-- out_tokens; cfg: num_attention_heads, layer_norm_eps, hidden_act of
-- the blocks' MLP); feed_forward and feed_forward_forward (ReLU);
-- repeat_interleave; pick_rows (x, ascending 1-based rows → those rows);
-- decoder_tokens (the query tokens and the checked dense count).
M.shared = {
  prompt_methods = SAM, two_way_params = two_way_params, two_way_transformer = two_way_transformer,
  feed_forward = feed_forward, feed_forward_forward = feed_forward_forward,
  repeat_interleave = repeat_interleave, pick_rows = pick_rows, decoder_tokens = decoder_tokens,
}

return M
