-- fmseg.models.sam2 — SAM 2's image encoder (transformers Sam2Model's
-- vision_encoder: the Hiera backbone and the FPN neck) from a Hugging Face
-- directory: facebook/sam2.1-hiera-tiny, -small, -base-plus, -large and
-- the SAM 2.0 checkpoints (whose image encoders differ only in config
-- values) load the same way, every shape from config.json.
--
--   local sam2 = require("fmseg.models.sam2")
--   local model = sam2.load("sam2.1-hiera-tiny")
--   local out = model:encode_image(pixel_values)     -- (B, 3, 1024, 1024)
--   out.vision_features   -- (B, d, 64, 64)   the lowest-resolution level kept
--   out.backbone_fpn      -- { (B, d, 256, 256), (B, d, 128, 128), (B, d, 64, 64) }
--   out.vision_pos_enc    -- the sine position encodings of those levels
--   out.trunk             -- Hiera's per-stage outputs (B, C_i, H_i, W_i)
--
-- The outputs are the original ImageEncoder's (sam2/modeling/backbones/
-- image_encoder.py), high to low resolution, after `scalp` (transformers:
-- the last num_feature_levels of the neck's levels). transformers'
-- Sam2Model.get_image_features goes on to project levels 0 and 1 with the
-- mask decoder's conv_s0 / conv_s1; that belongs to the mask decoder,
-- which is not ported yet: only vision_encoder.* tensors are read (and all
-- of them must be known), the rest of a checkpoint is left alone.
--
-- Weights keep the checkpoint's names; model.backbone.blocks[i] is
-- "vision_encoder.backbone.blocks.<i-1>.*". The model is immutable.
local hf = require("fmseg.io.hf")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local transformer = require("fmseg.models.transformer")

local param, linear_params, norm_params = transformer.param, transformer.linear_params,
  transformer.norm_params

local M = {}

-- transformers' Sam2HieraDetConfig / Sam2VisionConfig defaults (SAM 2.1
-- Hiera-tiny), for keys a config.json leaves out.
local BACKBONE_DEFAULTS = {
  hidden_size = 96, num_attention_heads = 1, num_channels = 3, image_size = { 1024, 1024 },
  patch_kernel_size = { 7, 7 }, patch_stride = { 4, 4 }, patch_padding = { 3, 3 },
  query_stride = { 2, 2 }, window_positional_embedding_background_size = { 7, 7 },
  num_query_pool_stages = 3, blocks_per_stage = { 1, 2, 7, 2 },
  embed_dim_per_stage = { 96, 192, 384, 768 }, num_attention_heads_per_stage = { 1, 2, 4, 8 },
  window_size_per_stage = { 8, 4, 14, 7 }, global_attention_blocks = { 5, 7, 9 },
  mlp_ratio = 4.0, hidden_act = "gelu", layer_norm_eps = 1e-6,
}
local VISION_DEFAULTS = {
  backbone_channel_list = { 768, 384, 192, 96 }, fpn_hidden_size = 256, fpn_kernel_size = 1,
  fpn_stride = 1, fpn_padding = 0, fpn_top_down_levels = { 2, 3 }, num_feature_levels = 3,
}
-- PositionEmbeddingSine as the neck builds it (normalize = True, scale 2π)
local SINE_TEMPERATURE, SINE_EPS = 10000, 1e-6

local function pair(v)
  if type(v) == "number" then return { v, v } end
  return { v[1], v[2] }
end

local function need(ok, msg, ...)
  if not ok then error("config.json: " .. msg:format(...), 0) end
end

local function list_string(t) return "[" .. table.concat(t, ", ") .. "]" end

-- Configuration -------------------------------------------------------------------

-- The blocks as Sam2HieraDetModel builds them: per block its stage, input
-- and output widths, heads, window (0 = global attention) and whether it
-- pools its queries. The first block of a stage keeps the previous stage's
-- width and window (the reference's blocks "lag by a block"); it pools
-- when its stage is one of the first num_query_pool_stages after stage 1.
-- ref: transformers/models/sam2/modeling_sam2.py, Sam2MultiScaleBlock.__init__;
--      sam2/modeling/backbones/hieradet.py, Hiera.__init__
local function block_plan(b)
  local global = {}
  for _, g in ipairs(b.global_attention_blocks) do global[g] = true end
  local plan, total = {}, 0
  for s, count in ipairs(b.blocks_per_stage) do
    for j = 1, count do
      local first = s > 1 and j == 1
      local spec = {
        stage = s, is_stage_end = j == count,
        dim = first and b.embed_dim_per_stage[s - 1] or b.embed_dim_per_stage[s],
        dim_out = b.embed_dim_per_stage[s],
        heads = b.num_attention_heads_per_stage[s],
        window_size = first and b.window_size_per_stage[s - 1] or b.window_size_per_stage[s],
        q_pool = first and s - 1 <= b.num_query_pool_stages,
      }
      if global[total] then spec.window_size = 0 end
      plan[#plan + 1] = spec
      total = total + 1
    end
  end
  return plan
end

local function conv_out(n, k, s, p) return math.floor((n + 2 * p - k) / s) + 1 end

-- Checks what the reference would fail on (or compute wrongly) further
-- in, and returns the grid (h, w) of each stage.
local function check_config(b, v, plan)
  local nstage = #b.blocks_per_stage
  for _, key in ipairs({ "embed_dim_per_stage", "num_attention_heads_per_stage", "window_size_per_stage" }) do
    need(#b[key] == nstage, "%s has %d entries for %d stages", key, #b[key], nstage)
  end
  need(b.embed_dim_per_stage[1] == b.hidden_size, "hidden_size %d differs from embed_dim_per_stage[1] %d",
       b.hidden_size, b.embed_dim_per_stage[1])
  for s = 1, nstage do
    need(b.embed_dim_per_stage[s] % b.num_attention_heads_per_stage[s] == 0,
         "stage %d: width %d is not a multiple of %d heads", s, b.embed_dim_per_stage[s],
         b.num_attention_heads_per_stage[s])
  end
  need(b.num_query_pool_stages >= 0 and b.num_query_pool_stages < nstage,
       "num_query_pool_stages %d, expected 0..%d", b.num_query_pool_stages, nstage - 1)
  need(nn.has_activation(b.hidden_act), "unsupported hidden_act '%s'", tostring(b.hidden_act))
  local reversed = {}
  for s = nstage, 1, -1 do reversed[#reversed + 1] = b.embed_dim_per_stage[s] end
  need(list_string(v.backbone_channel_list) == list_string(reversed),
       "backbone_channel_list %s, expected the stage widths from the last: %s",
       list_string(v.backbone_channel_list), list_string(reversed))
  need(v.fpn_hidden_size % 4 == 0, "fpn_hidden_size %d is not a multiple of 4 (sine position encoding)",
       v.fpn_hidden_size)
  need(v.num_feature_levels >= 1 and v.num_feature_levels <= nstage, "num_feature_levels %d, expected 1..%d",
       v.num_feature_levels, nstage)

  -- the token grid through the blocks
  local size, k, st, p = pair(b.image_size), pair(b.patch_kernel_size), pair(b.patch_stride), pair(b.patch_padding)
  local h, w = conv_out(size[1], k[1], st[1], p[1]), conv_out(size[2], k[2], st[2], p[2])
  local ws0 = b.window_size_per_stage[1]
  need(ws0 > 0 and h % ws0 == 0 and w % ws0 == 0,
       "the %dx%d patch grid is not a whole number of %d-wide windows (pos_embed_window)", h, w, ws0)
  local qs = pair(b.query_stride)
  local grids = {}
  for i, spec in ipairs(plan) do
    if spec.q_pool then
      local ws = spec.window_size
      need(ws > 0, "block %d pools its queries under global attention, which the reference cannot "
                   .. "unpartition (window 0)", i - 1)
      local ph, pw = math.floor(h / qs[1]), math.floor(w / qs[2])
      local ws2 = math.floor(ws / qs[1])
      need(ws2 > 0 and math.floor(ws / qs[2]) == ws2
           and math.ceil(h / ws) == math.ceil(ph / ws2) and math.ceil(w / ws) == math.ceil(pw / ws2),
           "block %d: %d-wide windows over %dx%d do not pool by %s into %d-wide windows over %dx%d",
           i - 1, ws, h, w, list_string(qs), ws2, ph, pw)
      h, w = ph, pw
    end
    if spec.is_stage_end then grids[spec.stage] = { h, w } end
  end

  -- the neck's levels (level i = stage i) and its top-down path
  local fk, fs, fp = v.fpn_kernel_size, v.fpn_stride, v.fpn_padding
  local lateral = {}
  for s = 1, nstage do
    lateral[s] = { conv_out(grids[s][1], fk, fs, fp), conv_out(grids[s][2], fk, fs, fp) }
  end
  for _, level in ipairs(v.fpn_top_down_levels) do
    local s = level + 1
    if s < nstage then
      need(lateral[s][1] == 2 * lateral[s + 1][1] and lateral[s][2] == 2 * lateral[s + 1][2],
           "fpn_top_down_levels: level %d is %dx%d, twice level %d (%dx%d) is not", level,
           lateral[s][1], lateral[s][2], level + 1, lateral[s + 1][1], lateral[s + 1][2])
    end
  end
  return grids, lateral
end

-- Loading ----------------------------------------------------------------------------

local function conv_params(w, name, oc, ic, kh, kw)
  return { weight = param(w, name .. ".weight", { oc, ic, kh, kw }), bias = param(w, name .. ".bias", { oc }) }
end

-- ref: transformers/models/sam2/modeling_sam2.py, Sam2MultiScaleBlock
local function block(w, prefix, spec, mlp_ratio)
  local hidden = math.floor(spec.dim_out * mlp_ratio)
  return {
    dim = spec.dim, dim_out = spec.dim_out, heads = spec.heads, window_size = spec.window_size,
    q_pool = spec.q_pool, is_stage_end = spec.is_stage_end,
    layer_norm1 = norm_params(w, prefix .. "layer_norm1", spec.dim),
    attn = { qkv = linear_params(w, prefix .. "attn.qkv", 3 * spec.dim_out, spec.dim, true),
             proj = linear_params(w, prefix .. "attn.proj", spec.dim_out, spec.dim_out, true) },
    layer_norm2 = norm_params(w, prefix .. "layer_norm2", spec.dim_out),
    mlp = { proj_in = linear_params(w, prefix .. "mlp.proj_in", hidden, spec.dim_out, true),
            proj_out = linear_params(w, prefix .. "mlp.proj_out", spec.dim_out, hidden, true) },
    proj = spec.dim ~= spec.dim_out and linear_params(w, prefix .. "proj", spec.dim_out, spec.dim, true) or nil,
  }
end

-- The sine position encoding of an h x w level with c channels, (1, c, h, w):
-- channels 1..c/2 encode the row, the rest the column; within each half
-- channel k (0-based) is sin (k even) or cos (k odd) of
-- pos * 2π / (n + eps) / 10000^(2 floor(k/2) / (c/2)), pos = 1..n.
-- ref: sam2/modeling/position_encoding.py, PositionEmbeddingSine._pe;
--      transformers Sam2SinePositionEmbedding
local function sine_encoding(c, h, w)
  local half = c / 2
  local function axis(n)                                    -- (half, n)
    local t = T.empty({ half, n })
    local p = t:ptr()
    for k = 0, half - 1 do
      local dim_t = SINE_TEMPERATURE ^ (2 * math.floor(k / 2) / half)
      for i = 0, n - 1 do
        local a = (i + 1) / (n + SINE_EPS) * (2 * math.pi) / dim_t
        p[k * n + i] = k % 2 == 0 and math.sin(a) or math.cos(a)
      end
    end
    return t
  end
  local zeros = T.zeros({ 1, half, h, w })
  local ys = zeros + axis(h):reshape(1, half, h, 1)
  local xs = zeros + axis(w):reshape(1, half, 1, w)
  return T.cat({ ys, xs }, 2)
end

local SAM2 = {}
SAM2.__index = SAM2

-- new(config, weights, opts): config = decoded config.json (a Sam2Model's);
-- weights with has(name) / get(name, shape) (fmseg.io.hf weights).
-- opts.strict = false allows unknown vision_encoder.* tensors.
-- ref: transformers/models/sam2/modeling_sam2.py, Sam2VisionModel, Sam2HieraDetModel
function M.new(config, weights, opts)
  opts = opts or {}
  if config.model_type ~= nil and config.model_type ~= "sam2" then
    error(("config.json: model_type '%s', expected sam2 (a Sam2Model directory)"):format(
      tostring(config.model_type)), 0)
  end
  local vision_config = config.vision_config or {}
  local v = hf.settings(vision_config, VISION_DEFAULTS)
  local b = hf.settings(vision_config.backbone_config, BACKBONE_DEFAULTS)
  local plan = block_plan(b)
  local grids, lateral = check_config(b, v, plan)
  local self = setmetatable({ config = { backbone = b, vision = v, grids = grids } }, SAM2)

  local pre = "vision_encoder.backbone."
  local c, k, bkg = b.hidden_size, pair(b.patch_kernel_size), pair(b.window_positional_embedding_background_size)
  local ws0 = b.window_size_per_stage[1]
  local backbone = {
    patch_embed = { projection = conv_params(weights, pre .. "patch_embed.projection", c, b.num_channels,
                                             k[1], k[2]) },
    pos_embed = param(weights, pre .. "pos_embed", { 1, c, bkg[1], bkg[2] }),
    pos_embed_window = param(weights, pre .. "pos_embed_window", { 1, c, ws0, ws0 }),
    blocks = {},
  }
  for i, spec in ipairs(plan) do
    backbone.blocks[i] = block(weights, ("%sblocks.%d."):format(pre, i - 1), spec, b.mlp_ratio)
  end
  self.backbone = backbone

  -- neck.convs[j] takes level #levels - j (the lowest resolution first)
  local fk, d = v.fpn_kernel_size, v.fpn_hidden_size
  local neck = { convs = {}, top_down = {}, position_encoding = {} }
  for j, ch in ipairs(v.backbone_channel_list) do
    neck.convs[j] = conv_params(weights, ("vision_encoder.neck.convs.%d"):format(j - 1), d, ch, fk, fk)
  end
  for _, level in ipairs(v.fpn_top_down_levels) do neck.top_down[level + 1] = true end
  for s, hw in ipairs(lateral) do neck.position_encoding[s] = sine_encoding(d, hw[1], hw[2]) end
  self.neck = neck
  if opts.strict ~= false and weights.check_all_used then weights:check_all_used({ "vision_encoder." }) end
  return self
end

-- load(path, opts): a Sam2Model directory (config.json + model.safetensors).
function M.load(path, opts) return hf.load_model(path, M.new, opts) end

-- Backbone ----------------------------------------------------------------------------

local window_partition, window_unpartition = transformer.window_partition, transformer.window_unpartition

-- x (B, H, W, C) → (B, H/sh, W/sw, C): max over each sh x sw cell, the
-- rows and columns past a whole cell dropped (MaxPool2d, ceil_mode False).
-- ref: hieradet.py, do_pool (nn.MaxPool2d(kernel_size=q_stride, stride=q_stride))
local function max_pool(x, stride)
  local b, h, w, c = unpack(x:shape())
  local sh, sw = stride[1], stride[2]
  local oh, ow = math.floor(h / sh), math.floor(w / sw)
  local cells = x:narrow(2, 1, oh * sh):narrow(3, 1, ow * sw):contiguous():reshape(b, oh, sh, ow, sw, c)
  return cells:max(3):max(4)                                  -- (B, oh, ow, C)
end

-- x (N, gh, gw, C) → (N, gh', gw', C_out): multi-head self-attention within
-- each grid, the queries max-pooled by `q_stride` when given (then gh' =
-- gh / stride); scale head_dim^-1/2.
-- ref: hieradet.py, MultiScaleAttention; transformers Sam2MultiScaleAttention
local function attention(attn, x, heads, q_stride)
  local n, gh, gw, c = unpack(x:shape())
  local cout = attn.proj.weight:size(1)
  local qkv = nn.linear(x:reshape(n, gh * gw, c), attn.qkv.weight, attn.qkv.bias)   -- (N, T, 3 C_out)
  local q, k, v = qkv:narrow(3, 1, cout), qkv:narrow(3, cout + 1, cout), qkv:narrow(3, 2 * cout + 1, cout)
  if q_stride then
    q = max_pool(q:contiguous():reshape(n, gh, gw, cout), q_stride)
    gh, gw = q:size(2), q:size(3)
    q = q:reshape(n, gh * gw, cout)
  end
  local o = nn.attention(q, k, v, heads)                                              -- (N, Tq, C_out)
  qkv:free()
  local y = nn.linear(o, attn.proj.weight, attn.proj.bias)
  o:free()
  return y:reshape(n, gh, gw, cout)
end

-- x (B, H, W, C) → (B, H', W', C_out).
-- ref: hieradet.py, MultiScaleBlock.forward; transformers Sam2MultiScaleBlock.forward
local function block_forward(blk, x, cfg)
  local _, h, w = unpack(x:shape())
  local q_stride = blk.q_pool and pair(cfg.query_stride) or nil
  local ln1, ln2 = blk.layer_norm1, blk.layer_norm2
  local y = nn.layer_norm(x, ln1.weight, ln1.bias, cfg.layer_norm_eps)
  -- the shortcut changes width (and is pooled) with the block
  local shortcut = x
  if blk.proj then
    local p = nn.linear(y, blk.proj.weight, blk.proj.bias)
    shortcut = q_stride and max_pool(p, q_stride) or p
  end
  local ws, hp, wp = blk.window_size
  local t = y
  if ws > 0 then t, hp, wp = window_partition(y, ws) end
  local a = attention(blk.attn, t, blk.heads, q_stride)
  if ws > 0 then
    if q_stride then
      -- the pooled windows, over the pooled grid (both use q_stride[1])
      ws = math.floor(ws / q_stride[1])
      h, w = shortcut:size(2), shortcut:size(3)
      hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
    end
    a = window_unpartition(a, ws, hp, wp, h, w)
  end
  local out = shortcut + a
  a:free()
  local z = nn.layer_norm(out, ln2.weight, ln2.bias, cfg.layer_norm_eps)
  local m = nn.activation_(nn.linear(z, blk.mlp.proj_in.weight, blk.mlp.proj_in.bias), cfg.hidden_act)
  z:free()
  local mo = nn.linear(m, blk.mlp.proj_out.weight, blk.mlp.proj_out.bias)
  m:free()
  out:add_(mo)
  mo:free()
  return out
end

-- The position embedding of an h x w patch grid, (1, h, w, C): the
-- background embedding resized bicubically to h x w plus the window
-- embedding tiled over it.
-- ref: hieradet.py, Hiera._get_pos_embed
local function position_embedding(bk, h, w)
  local pe = nn.interpolate(bk.pos_embed, h, w, { mode = "bicubic" })         -- (1, C, h, w)
  local c, ws = pe:size(2), bk.pos_embed_window:size(3)
  local tiled = pe:reshape(1, c, h / ws, ws, w / ws, ws) + bk.pos_embed_window:reshape(1, c, 1, ws, 1, ws)
  return tiled:reshape(1, c, h, w):permute(1, 3, 4, 2):contiguous()
end

-- Neck ------------------------------------------------------------------------------------

-- stages (B, C_i, H_i, W_i), high to low resolution → the neck's levels and
-- their position encodings, high to low resolution: each level is its
-- lateral convolution, plus the level below it upsampled 2x (nearest) for
-- the fpn_top_down_levels.
-- ref: image_encoder.py, FpnNeck.forward; transformers Sam2VisionNeck
local function neck_forward(neck, stages, cfg)
  local n = #stages
  local features, pos = {}, {}
  local prev
  for s = n, 1, -1 do
    local conv = neck.convs[n - s + 1]
    local lateral = nn.conv2d(stages[s], conv.weight, conv.bias,
                              { stride = cfg.fpn_stride, padding = cfg.fpn_padding })
    if neck.top_down[s] and prev then
      local up = nn.interpolate(prev, 2 * prev:size(3), 2 * prev:size(4), { mode = "nearest" })
      prev = lateral + up
      lateral:free(); up:free()
    else
      prev = lateral
    end
    features[s] = prev
    local b = prev:size(1)
    pos[s] = T.zeros({ b, 1, 1, 1 }) + neck.position_encoding[s]
  end
  return features, pos
end

-- Forward ---------------------------------------------------------------------------------

-- pixel_values (B, C, H, W), H x W = the backbone's image_size →
-- { vision_features, backbone_fpn = { levels }, vision_pos_enc = { ... },
--   trunk = { stages } }: the original ImageEncoder's outputs (backbone_fpn
-- and vision_pos_enc high to low resolution, the last `scalp` levels
-- dropped; vision_features = the last level kept) and Hiera's per-stage
-- outputs (B, C_i, H_i, W_i), before the neck.
-- ref: sam2/modeling/backbones/image_encoder.py, ImageEncoder.forward;
--      transformers Sam2VisionModel.forward
function SAM2:encode_image(pixel_values)
  local b, v, bk = self.config.backbone, self.config.vision, self.backbone
  local size = pair(b.image_size)
  local shape = pixel_values:shape()
  if #shape ~= 4 or shape[2] ~= b.num_channels or shape[3] ~= size[1] or shape[4] ~= size[2] then
    error(("sam2: pixel_values %s, expected [B, %d, %d, %d] (the backbone's image_size)"):format(
      T.shape_string(shape), b.num_channels, size[1], size[2]), 2)
  end
  local pe = bk.patch_embed.projection
  local patches = nn.conv2d(pixel_values, pe.weight, pe.bias,
                            { stride = pair(b.patch_stride), padding = pair(b.patch_padding) })
  local x = patches:permute(1, 3, 4, 2):contiguous()                        -- (B, h, w, C)
  patches:free()
  x:add_(position_embedding(bk, x:size(2), x:size(3)))
  local stages = {}
  for _, blk in ipairs(bk.blocks) do
    local y = block_forward(blk, x, b)
    x:free()
    x = y
    if blk.is_stage_end then stages[#stages + 1] = x:permute(1, 4, 2, 3):contiguous() end
    collectgarbage()
  end
  local features, pos = neck_forward(self.neck, stages, v)
  local keep = v.num_feature_levels
  local fpn, enc = {}, {}
  for i = 1, keep do fpn[i], enc[i] = features[i], pos[i] end
  return { vision_features = fpn[keep], backbone_fpn = fpn, vision_pos_enc = enc, trunk = stages }
end

return M
