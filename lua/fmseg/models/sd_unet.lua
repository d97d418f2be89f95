-- fmseg.models.sd_unet — UNet2DConditionModel, the Stable Diffusion 1.x /
-- 2.x denoiser, from a diffusers unet/ directory.
--
--   local unet = sd_unet.load(dir .. "/unet")
--   local eps = unet:forward(noisy_latents, 100, text_embeddings)
--   -- with the attention maps of chosen layers (see sd_attention.lua):
--   local cap = sd_attention.capture({ kinds = { "attn2" } })
--   local eps = unet:forward(noisy_latents, 100, text_embeddings, { capture = cap })
--
-- ref: diffusers/models/unets/unet_2d_condition.py, UNet2DConditionModel;
-- unet_2d_blocks.py (CrossAttnDownBlock2D, DownBlock2D,
-- UNetMidBlock2DCrossAttn, UNetMidBlock2D, CrossAttnUpBlock2D, UpBlock2D);
-- transformers/transformer_2d.py, Transformer2DModel; attention.py,
-- BasicTransformerBlock, FeedForward; activations.py, GEGLU;
-- embeddings.py, get_timestep_embedding, TimestepEmbedding.
--
-- Module paths ("down_blocks.0.attentions.1.transformer_blocks.0.attn2")
-- are the checkpoint's; attention maps are captured under the same names.
-- Everything runs in float32, so upcast_attention / upcast_softmax change
-- nothing here.
local hf = require("fmseg.io.hf")
local json = require("fmseg.io.json")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local B = require("fmseg.models.sd_blocks")

local f32 = B.f32

local M = {}
local UNet = {}
UNet.__index = UNet

-- Config ---------------------------------------------------------------------------

local function is_null(v) return v == nil or v == json.null end

-- A per-block setting given as one value or a list of one per down block.
local function per_block(config, key, default, n)
  local v = hf.cfg(config, key, default)
  if type(v) ~= "table" then
    local out = {}
    for i = 1, n do out[i] = v end
    return out
  end
  if #v ~= n then
    error(("unet/config.json: '%s' has %d entries for %d down blocks"):format(key, #v, n), 0)
  end
  return v
end

local function reversed(list)
  local out = {}
  for i = #list, 1, -1 do out[#out + 1] = list[i] end
  return out
end

-- transformer layers of each of a block's `n` Transformer2DModels: an int
-- for all, or a list of one per layer
local function per_layer(v, n)
  if type(v) == "table" then return v end
  local out = {}
  for i = 1, n do out[i] = v end
  return out
end

local UNSUPPORTED = {  -- keys that must be null/false/default for SD 1.x / 2.x
  { "class_embed_type" }, { "num_class_embeds" }, { "addition_embed_type" },
  { "encoder_hid_dim_type" }, { "encoder_hid_dim" },
  { "time_cond_proj_dim" }, { "cross_attention_norm" },
  { "dual_cross_attention", false }, { "attention_type", "default" },
  { "time_embedding_type", "positional" }, { "class_embeddings_concat", false },
}

-- Absent means diffusers' default mid block, null means none (SD 1.5's
-- config.json has no mid_block_type key).
local function mid_block_type(config)
  local v = config.mid_block_type
  if v == nil then return "UNetMidBlock2DCrossAttn" end
  if is_null(v) then return nil end
  return v
end

local function read_config(config)
  for _, u in ipairs(UNSUPPORTED) do
    local v = config[u[1]]
    if not is_null(v) and v ~= u[2] then
      error(("unet/config.json: %s = %s is not supported"):format(u[1], tostring(v)), 0)
    end
  end
  local down = hf.cfg(config, "down_block_types")
  local up = hf.cfg(config, "up_block_types")
  local boc = hf.cfg(config, "block_out_channels")
  local n = #down
  if #up ~= n or #boc ~= n then
    error("unet/config.json: down_block_types, up_block_types and block_out_channels differ in length", 0)
  end
  -- diffusers: num_attention_heads = num_attention_heads or attention_head_dim
  -- (SD 1.x configs call the head count attention_head_dim).
  local heads_key = is_null(config.num_attention_heads) and "attention_head_dim" or "num_attention_heads"
  local cfg = {
    in_channels = hf.cfg(config, "in_channels", 4),
    out_channels = hf.cfg(config, "out_channels", 4),
    center_input_sample = hf.cfg(config, "center_input_sample", false),
    flip_sin_to_cos = hf.cfg(config, "flip_sin_to_cos", true),
    freq_shift = hf.cfg(config, "freq_shift", 0),
    down_block_types = down, up_block_types = up, block_out_channels = boc,
    mid_block_type = mid_block_type(config),
    layers_per_block = per_block(config, "layers_per_block", 2, n),
    downsample_padding = hf.cfg(config, "downsample_padding", 1),
    mid_block_scale_factor = hf.cfg(config, "mid_block_scale_factor", 1),
    act = B.check_activation(hf.cfg(config, "act_fn", "silu"), "act_fn"),
    groups = hf.cfg(config, "norm_num_groups", 32),
    eps = hf.cfg(config, "norm_eps", 1e-5),
    cross_attention_dim = per_block(config, "cross_attention_dim", 1280, n),
    transformer_layers = per_block(config, "transformer_layers_per_block", 1, n),
    heads = per_block(config, heads_key, 8, n),
    only_cross_attention = per_block(config, "only_cross_attention", false, n),
    use_linear_projection = hf.cfg(config, "use_linear_projection", false),
    time_scale_shift = hf.cfg(config, "resnet_time_scale_shift", "default"),
    conv_in_kernel = hf.cfg(config, "conv_in_kernel", 3),
    conv_out_kernel = hf.cfg(config, "conv_out_kernel", 3),
    time_embed_dim = hf.cfg(config, "time_embedding_dim", false) or boc[1] * 4,
    timestep_post_act = hf.cfg(config, "timestep_post_act", false) or nil,
    time_embedding_act = hf.cfg(config, "time_embedding_act_fn", false) or nil,
  }
  local rev_tl = config.reverse_transformer_layers_per_block
  cfg.reverse_transformer_layers = not is_null(rev_tl) and rev_tl or reversed(cfg.transformer_layers)
  if cfg.timestep_post_act then B.check_activation(cfg.timestep_post_act, "timestep_post_act") end
  if cfg.time_embedding_act then B.check_activation(cfg.time_embedding_act, "time_embedding_act_fn") end
  return cfg
end

-- Attention and Transformer2DModel ----------------------------------------------------

-- ref: attention_processor.py, Attention (bias=False for q/k/v, out_bias):
-- to_q, to_k, to_v, multi-head softmax(q kᵀ / sqrt(d)) v, to_out.0.
local function load_attention(w, p, query_dim, context_dim, heads, head_dim)
  local inner = heads * head_dim
  return {
    name = p:sub(1, -2), heads = heads, head_dim = head_dim, scale = head_dim ^ -0.5,
    to_q = B.load_linear(w, p .. "to_q", query_dim, inner, false),
    to_k = B.load_linear(w, p .. "to_k", context_dim, inner, false),
    to_v = B.load_linear(w, p .. "to_v", context_dim, inner, false),
    to_out = B.load_linear(w, p .. "to_out.0", inner, query_dim, true),
  }
end

-- x: (N, T, C); context: (N, S, D) or nil for self-attention. `info` is
-- what a capture records beside the map, under the module path a.name. A
-- capture hands the kernel the buffer its probabilities go to; without one
-- the kernel keeps scores in scratch rows.
local function attention(a, x, context, run, info)
  local src = context or x
  local q = B.linear(x, a.to_q)
  local k = B.linear(src, a.to_k)
  local v = B.linear(src, a.to_v)
  local cap = run.capture
  local probs
  if cap and cap:wants(a.name, info.kind) then
    probs = cap:buffer({ q:size(1), a.heads, q:size(2), k:size(2) })
  end
  local o = nn.attention(q, k, v, a.heads, { scale = a.scale, probs = probs })
  if probs then
    cap:record(a.name, probs, info, q)  -- the capture keeps q if asked to
  else
    q:free()
  end
  k:free(); v:free()
  local out = B.linear(o, a.to_out)
  o:free()
  return out
end

-- ref: attention.py, BasicTransformerBlock (norm_type "layer_norm", eps
-- 1e-5, GEGLU feed-forward of 4x width).
local function load_basic_block(w, p, spec)
  local dim, cad = spec.dim, spec.cross_attention_dim
  local ff_inner = dim * 4
  return {
    only_cross = spec.only_cross,
    norm1 = B.load_norm(w, p .. "norm1", dim),
    attn1 = load_attention(w, p .. "attn1.", dim, spec.only_cross and cad or dim, spec.heads, spec.head_dim),
    norm2 = B.load_norm(w, p .. "norm2", dim),
    attn2 = load_attention(w, p .. "attn2.", dim, cad, spec.heads, spec.head_dim),
    norm3 = B.load_norm(w, p .. "norm3", dim),
    ff_proj = B.load_linear(w, p .. "ff.net.0.proj", dim, 2 * ff_inner, true),
    ff_out = B.load_linear(w, p .. "ff.net.2", ff_inner, dim, true),
  }
end

local LN_EPS = 1e-5 -- Transformer2DModel's norm_eps; the UNet never sets it

-- ref: activations.py, GEGLU then FeedForward's net.2:
-- (hidden, gate) = proj(x).chunk(2, -1); out = net.2(hidden * gelu(gate))
local function feed_forward(blk, x)
  local proj = B.linear(x, blk.ff_proj)
  local inner = proj:size(3) / 2
  local hidden, gate = proj:narrow(3, 1, inner), proj:narrow(3, inner + 1, inner)
  local g = gate:gelu()
  g:mul_(hidden)
  hidden:free(); gate:free(); proj:free()
  local out = B.linear(g, blk.ff_out)
  g:free()
  return out
end

-- x: (N, H*W, C) tokens; context: (N, S, D)
local function basic_block(blk, x, context, run, h, w)
  local n1 = nn.layer_norm(x, blk.norm1.weight, blk.norm1.bias, LN_EPS)
  local hs = attention(blk.attn1, n1, blk.only_cross and context or nil, run,
                       { kind = "attn1", height = h, width = w })
  n1:free()
  hs:add_(x)
  local n2 = nn.layer_norm(hs, blk.norm2.weight, blk.norm2.bias, LN_EPS)
  local a2 = attention(blk.attn2, n2, context, run, { kind = "attn2", height = h, width = w })
  n2:free()
  a2:add_(hs)
  hs:free()
  local n3 = nn.layer_norm(a2, blk.norm3.weight, blk.norm3.bias, LN_EPS)
  local out = feed_forward(blk, n3)
  n3:free()
  out:add_(a2)
  a2:free()
  return out
end

-- ref: transformer_2d.py, Transformer2DModel (continuous input): GroupNorm
-- eps 1e-6, proj_in (1x1 conv, or linear on tokens), blocks, proj_out,
-- + residual.
local function load_transformer(w, p, spec)
  local c, inner = spec.in_channels, spec.heads * spec.head_dim
  local t = { groups = spec.groups, linear = spec.use_linear_projection, blocks = {} }
  t.norm = B.load_norm(w, p .. "norm", c)
  if t.linear then
    t.proj_in = B.load_linear(w, p .. "proj_in", c, inner, true)
    t.proj_out = B.load_linear(w, p .. "proj_out", inner, c, true)
  else
    t.proj_in = B.load_conv(w, p .. "proj_in", c, inner, 1)
    t.proj_out = B.load_conv(w, p .. "proj_out", inner, c, 1)
  end
  for j = 1, spec.layers do
    t.blocks[j] = load_basic_block(w, ("%stransformer_blocks.%d."):format(p, j - 1), {
      dim = inner, heads = spec.heads, head_dim = spec.head_dim,
      cross_attention_dim = spec.cross_attention_dim, only_cross = spec.only_cross })
  end
  return t
end

-- x: (N, C, H, W) → (N, C, H, W)
local function transformer(t, x, context, run)
  local _, _, h, w = unpack(x:shape())
  local g = nn.group_norm(x, t.groups, t.norm.weight, t.norm.bias, 1e-6)
  local tokens
  if t.linear then
    local flat = B.to_tokens(g)
    tokens = B.linear(flat, t.proj_in)
    flat:free()
  else
    local proj = B.conv(g, t.proj_in)
    tokens = B.to_tokens(proj)
    proj:free()
  end
  g:free()
  for _, blk in ipairs(t.blocks) do
    local y = basic_block(blk, tokens, context, run, h, w)
    tokens:free()
    tokens = y
  end
  local out
  if t.linear then
    local y = B.linear(tokens, t.proj_out)
    out = B.to_image(y, h, w)
    y:free()
  else
    local img = B.to_image(tokens, h, w)
    out = B.conv(img, t.proj_out)
    img:free()
  end
  tokens:free()
  out:add_(x)
  return out
end

-- Blocks ---------------------------------------------------------------------------------

local function resnet_spec(cfg, ic, oc, scale)
  return { in_channels = ic, out_channels = oc, temb_channels = cfg.time_embed_dim,
           groups = cfg.groups, eps = cfg.eps, act = cfg.act, output_scale_factor = scale or 1,
           time_embedding_norm = cfg.time_scale_shift }
end

-- Transformer2DModel of a block with c channels
local function transformer_spec(cfg, c, heads, layers, cross_attention_dim, only_cross)
  return { in_channels = c, heads = heads, head_dim = math.floor(c / heads), layers = layers,
           cross_attention_dim = cross_attention_dim, groups = cfg.groups,
           use_linear_projection = cfg.use_linear_projection, only_cross = only_cross }
end

local CROSS = { CrossAttnDownBlock2D = true, CrossAttnUpBlock2D = true }

local function check_block_type(kind, allowed)
  if kind ~= allowed[1] and kind ~= allowed[2] then
    error(("unet/config.json: block type '%s' is not supported (%s, %s)"):format(
      tostring(kind), allowed[1], allowed[2]), 0)
  end
end

-- ref: unet_2d_blocks.py, CrossAttnDownBlock2D / DownBlock2D
local function load_down_block(w, cfg, i, in_ch, out_ch)
  local kind = cfg.down_block_types[i]
  check_block_type(kind, { "CrossAttnDownBlock2D", "DownBlock2D" })
  local p = ("down_blocks.%d."):format(i - 1)
  local layers = cfg.layers_per_block[i]
  local heads = cfg.heads[i]
  local tl = per_layer(cfg.transformer_layers[i], layers)
  local block = { resnets = {}, attentions = CROSS[kind] and {} or nil }
  for j = 1, layers do
    local ic = j == 1 and in_ch or out_ch
    block.resnets[j] = B.load_resnet(w, ("%sresnets.%d."):format(p, j - 1), resnet_spec(cfg, ic, out_ch))
    if block.attentions then
      block.attentions[j] = load_transformer(w, ("%sattentions.%d."):format(p, j - 1), transformer_spec(
        cfg, out_ch, heads, tl[j], cfg.cross_attention_dim[i], cfg.only_cross_attention[i]))
    end
  end
  if i < #cfg.down_block_types then
    block.downsample = B.load_downsample(w, p .. "downsamplers.0.", out_ch, out_ch, cfg.downsample_padding)
  end
  return block
end

-- ref: unet_2d_blocks.py, CrossAttnUpBlock2D / UpBlock2D. Resnet j takes
-- the running features concatenated with one skip: the down path's
-- outputs, last first.
local function load_up_block(w, cfg, i, prev_ch, out_ch, in_ch, rev)
  local kind = cfg.up_block_types[i]
  check_block_type(kind, { "CrossAttnUpBlock2D", "UpBlock2D" })
  local p = ("up_blocks.%d."):format(i - 1)
  local layers = rev.layers[i] + 1
  local heads = rev.heads[i]
  local tl = per_layer(cfg.reverse_transformer_layers[i], layers)
  local block = { resnets = {}, attentions = CROSS[kind] and {} or nil }
  for j = 1, layers do
    local skip = j == layers and in_ch or out_ch
    local ic = j == 1 and prev_ch or out_ch
    block.resnets[j] = B.load_resnet(w, ("%sresnets.%d."):format(p, j - 1), resnet_spec(cfg, ic + skip, out_ch))
    if block.attentions then
      block.attentions[j] = load_transformer(w, ("%sattentions.%d."):format(p, j - 1), transformer_spec(
        cfg, out_ch, heads, tl[j], rev.cross_attention_dim[i], rev.only_cross[i]))
    end
  end
  if i < #cfg.up_block_types then block.upsample = B.load_upsample(w, p .. "upsamplers.0.", out_ch, out_ch) end
  return block
end

-- ref: unet_2d_blocks.py, UNetMidBlock2DCrossAttn (one transformer between
-- two resnets, only_cross_attention never passed) or UNetMidBlock2D with
-- num_layers 0 (one resnet).
local function load_mid_block(w, cfg)
  local kind = cfg.mid_block_type
  if not kind then return nil end
  local n = #cfg.block_out_channels
  local c = cfg.block_out_channels[n]
  local scale = cfg.mid_block_scale_factor
  local mid = { resnets = { B.load_resnet(w, "mid_block.resnets.0.", resnet_spec(cfg, c, c, scale)) } }
  if kind == "UNetMidBlock2D" then return mid end
  if kind ~= "UNetMidBlock2DCrossAttn" then
    error(("unet/config.json: mid_block_type '%s' is not supported (UNetMidBlock2DCrossAttn, UNetMidBlock2D)")
          :format(tostring(kind)), 0)
  end
  local heads = cfg.heads[n]
  mid.attention = load_transformer(w, "mid_block.attentions.0.", transformer_spec(
    cfg, c, heads, per_layer(cfg.transformer_layers[n], 1)[1], cfg.cross_attention_dim[n], false))
  mid.resnets[2] = B.load_resnet(w, "mid_block.resnets.1.", resnet_spec(cfg, c, c, scale))
  return mid
end

-- Every attn1 / attn2 module by its path ("up_blocks.1.attentions.0.
-- transformer_blocks.0.attn2"): {to_q, to_k, to_v, to_out (weight, bias),
-- heads, head_dim, scale}. OVAM-style methods project new text through a
-- layer's to_k and score it against the queries a capture kept.
function M.index_attention(unet)
  local index = {}
  local function add(t)
    for _, blk in ipairs(t.blocks) do
      index[blk.attn1.name], index[blk.attn2.name] = blk.attn1, blk.attn2
    end
  end
  for _, blocks in ipairs({ unet.down_blocks, unet.up_blocks }) do
    for _, block in ipairs(blocks) do
      for _, t in ipairs(block.attentions or {}) do add(t) end
    end
  end
  if unet.mid_block and unet.mid_block.attention then add(unet.mid_block.attention) end
  return index
end

-- Loading -------------------------------------------------------------------------------

-- config: the decoded unet/config.json; w: weights with has/get/maybe
-- (fmseg.io.hf weights) holding the checkpoint's names.
function M.new(config, w)
  local cfg = read_config(config)
  local boc, n = cfg.block_out_channels, #cfg.block_out_channels
  local self = setmetatable({ config = cfg, down_blocks = {}, up_blocks = {} }, UNet)
  self.conv_in = B.load_conv(w, "conv_in", cfg.in_channels, boc[1], cfg.conv_in_kernel)
  self.linear_1 = B.load_linear(w, "time_embedding.linear_1", boc[1], cfg.time_embed_dim, true)
  self.linear_2 = B.load_linear(w, "time_embedding.linear_2", cfg.time_embed_dim, cfg.time_embed_dim, true)
  local out_ch = boc[1]
  for i = 1, n do
    local in_ch = out_ch
    out_ch = boc[i]
    self.down_blocks[i] = load_down_block(w, cfg, i, in_ch, out_ch)
  end
  self.mid_block = load_mid_block(w, cfg)
  local rev = { channels = reversed(boc), heads = reversed(cfg.heads), layers = reversed(cfg.layers_per_block),
                cross_attention_dim = reversed(cfg.cross_attention_dim),
                only_cross = reversed(cfg.only_cross_attention) }
  out_ch = rev.channels[1]
  self.num_upsamplers = 0
  for i = 1, n do
    local prev = out_ch
    out_ch = rev.channels[i]
    local in_ch = rev.channels[math.min(i + 1, n)]
    self.up_blocks[i] = load_up_block(w, cfg, i, prev, out_ch, in_ch, rev)
    if self.up_blocks[i].upsample then self.num_upsamplers = self.num_upsamplers + 1 end
  end
  self.conv_norm_out = B.load_norm(w, "conv_norm_out", boc[1])
  self.conv_out = B.load_conv(w, "conv_out", boc[1], cfg.out_channels, cfg.conv_out_kernel)
  if w.check_all_used then w:check_all_used() end
  self.attention_modules = M.index_attention(self)
  return self
end

-- dir: the unet/ folder; opts.variant ("fp16") picks the weights file.
function M.load(dir, opts) return hf.load_model(dir, M.new, opts) end

-- Forward ------------------------------------------------------------------------------

-- ref: embeddings.py, get_timestep_embedding (max_period 10000, scale 1),
-- in float32 step by step as torch computes it. ts: one number per row.
local function timestep_embedding(ts, dim, flip, shift)
  local half = math.floor(dim / 2)
  local freqs = {}
  local neg_log = f32(-math.log(10000))
  for i = 0, half - 1 do
    freqs[i + 1] = f32(math.exp(f32(f32(neg_log * i) / f32(half - shift))))
  end
  local rows = {}
  for r, t in ipairs(ts) do
    local row = {}
    for i = 1, half do
      local arg = f32(f32(t) * freqs[i])
      local s, c = f32(math.sin(arg)), f32(math.cos(arg))
      if flip then row[i], row[half + i] = c, s else row[i], row[half + i] = s, c end
    end
    if dim % 2 == 1 then row[dim] = 0 end
    rows[r] = row
  end
  return T.from_table(rows)
end
M.timestep_embedding = timestep_embedding

-- timesteps: a number, a list or a tensor of 1 or N values → N numbers
local function timestep_list(timesteps, n)
  local list
  if type(timesteps) == "number" then list = { timesteps }
  elseif type(timesteps) == "table" then list = timesteps
  else list = timesteps:float():values() end
  if #list == 1 then
    for i = 2, n do list[i] = list[1] end
  elseif #list ~= n then
    error(("unet: %d timesteps for a batch of %d"):format(#list, n), 3)
  end
  return list
end

-- ref: UNet2DConditionModel.get_time_embed + TimestepEmbedding:
-- linear_1 → act → linear_2 (→ post act) (→ time_embed_act)
function UNet:time_embedding(timesteps, n)
  local cfg = self.config
  local t_emb = timestep_embedding(timestep_list(timesteps, n), cfg.block_out_channels[1],
                                   cfg.flip_sin_to_cos, cfg.freq_shift)
  local h = B.linear(t_emb, self.linear_1)
  B.act_(h, cfg.act)
  local emb = B.linear(h, self.linear_2)
  if cfg.timestep_post_act then B.act_(emb, cfg.timestep_post_act) end
  if cfg.time_embedding_act then B.act_(emb, cfg.time_embedding_act) end
  return emb
end

local function down_block(block, x, emb, context, run, skips)
  for j, r in ipairs(block.resnets) do
    local y = B.resnet(r, x, emb)
    if block.attentions then
      local a = transformer(block.attentions[j], y, context, run)
      y:free()
      y = a
    end
    skips[#skips + 1] = y  -- every output is a skip, so none is freed here
    x = y
  end
  if block.downsample then
    x = B.downsample(block.downsample, x)
    skips[#skips + 1] = x
  end
  return x
end

-- x is consumed (freed), and so are the skips this block pops.
local function up_block(block, x, emb, context, run, skips, size)
  for j, r in ipairs(block.resnets) do
    local skip = table.remove(skips)
    local cat = T.cat({ x, skip }, 2)
    x:free()
    skip:free()
    x = B.resnet(r, cat, emb)
    cat:free()
    if block.attentions then
      local a = transformer(block.attentions[j], x, context, run)
      x:free()
      x = a
    end
  end
  if block.upsample then
    local u = B.upsample(block.upsample, x, size)
    x:free()
    x = u
  end
  return x
end

-- sample: (N, in_channels, h, w) noisy latents; timesteps: a number or one
-- per row; context: (N, S, cross_attention_dim) text embeddings.
-- opts.capture: an sd_attention capture that records attention maps.
-- Returns the model output (N, out_channels, h, w): ε, v or x0 as the
-- scheduler's prediction_type says.
function UNet:forward(sample, timesteps, context, opts)
  opts = opts or {}
  local cfg = self.config
  local run = { capture = opts.capture }
  local n, _, h, w = unpack(sample:shape())
  if context:size(1) ~= n then
    error(("unet: text embeddings have batch %d, the latents %d"):format(context:size(1), n), 2)
  end
  -- non-multiples of 2^upsamplers make each upsampler match its skip's size
  local factor = 2 ^ self.num_upsamplers
  local forward_size = h % factor ~= 0 or w % factor ~= 0
  local emb = self:time_embedding(timesteps, n)
  local input = sample
  if cfg.center_input_sample then input = sample * 2 - 1 end
  local x = B.conv(input, self.conv_in, 1, math.floor((cfg.conv_in_kernel - 1) / 2))
  local skips = { x }
  for _, block in ipairs(self.down_blocks) do
    x = down_block(block, x, emb, context, run, skips)
  end
  if self.mid_block then
    local mid = self.mid_block
    local y = B.resnet(mid.resnets[1], x, emb)
    if mid.attention then
      local a = transformer(mid.attention, y, context, run)
      y:free()
      local z = B.resnet(mid.resnets[2], a, emb)
      a:free()
      y = z
    end
    x = y
  else
    x = x:clone()  -- the up path frees its input; the last skip is still needed
  end
  for _, block in ipairs(self.up_blocks) do
    local take = #block.resnets
    local size
    if forward_size and block.upsample then
      local next_skip = skips[#skips - take]
      size = { next_skip:size(3), next_skip:size(4) }
    end
    x = up_block(block, x, emb, context, run, skips, size)
  end
  local out = B.norm_act_conv(x, self.conv_norm_out, cfg, self.conv_out, math.floor((cfg.conv_out_kernel - 1) / 2))
  x:free()
  emb:free()
  return out
end

return M
