-- fmseg.models.sd_vae — AutoencoderKL, the Stable Diffusion VAE, from a
-- diffusers vae/ directory (config.json + diffusion_pytorch_model*.safetensors).
--
--   local vae = sd_vae.load(dir .. "/vae")
--   local mean, std = vae:encode(image)     -- image (N, 3, H, W) in [-1, 1]
--   local latents = vae:latents(mean)       -- (mean - shift) * scaling_factor
--   local decoded = vae:decode(vae:unscale(latents))
--
-- ref: diffusers/models/autoencoders/autoencoder_kl.py, AutoencoderKL;
-- diffusers/models/autoencoders/vae.py, Encoder, Decoder,
-- DiagonalGaussianDistribution.
local hf = require("fmseg.io.hf")
local B = require("fmseg.models.sd_blocks")

local M = {}
local VAE = {}
VAE.__index = VAE

-- UNetMidBlock2D as the VAE builds it: resnet, [attention, resnet], one
-- head over all channels, eps 1e-6, no time embedding.
-- ref: diffusers/models/unets/unet_2d_blocks.py, UNetMidBlock2D.
local function load_mid(w, p, c, cfg)
  local spec = { in_channels = c, out_channels = c, groups = cfg.groups, eps = 1e-6, act = cfg.act }
  local mid = { resnets = { B.load_resnet(w, p .. "resnets.0.", spec) } }
  if cfg.mid_attention then
    mid.attention = B.load_spatial_attention(w, p .. "attentions.0.", {
      channels = c, head_dim = c, groups = cfg.groups, eps = 1e-6, rescale_output_factor = 1 })
  end
  mid.resnets[2] = B.load_resnet(w, p .. "resnets.1.", spec)
  return mid
end

local function mid_forward(mid, x)
  local h = B.resnet(mid.resnets[1], x)
  if mid.attention then
    local a = B.spatial_attention(mid.attention, h)
    h:free()
    h = a
  end
  local out = B.resnet(mid.resnets[2], h)
  h:free()
  return out
end

-- DownEncoderBlock2D / UpDecoderBlock2D: n resnets (the first from in_ch
-- channels), eps 1e-6, no time embedding; the caller adds the resampler.
-- ref: diffusers/models/unets/unet_2d_blocks.py, DownEncoderBlock2D, UpDecoderBlock2D
local function load_block(w, p, n, in_ch, out_ch, cfg)
  local block = { resnets = {} }
  for j = 1, n do
    block.resnets[j] = B.load_resnet(w, ("%sresnets.%d."):format(p, j - 1), {
      in_channels = j == 1 and in_ch or out_ch, out_channels = out_ch,
      groups = cfg.groups, eps = 1e-6, act = cfg.act })
  end
  return block
end

-- x: consumed → the block's resnets in turn, then its down- or upsampler
local function block_forward(block, x)
  for _, r in ipairs(block.resnets) do
    local y = B.resnet(r, x)
    x:free()
    x = y
  end
  local y
  if block.downsample then
    y = B.downsample(block.downsample, x)
  elseif block.upsample then
    y = B.upsample(block.upsample, x)
  else
    return x
  end
  x:free()
  return y
end

local function check_block_type(kind, want, which)
  if kind ~= want then
    error(("vae/config.json: %s block type '%s' is not supported (%s)"):format(which, tostring(kind), want), 0)
  end
end

-- Encoder -------------------------------------------------------------------------

-- ref: vae.py, Encoder (double_z=True): conv_in, DownEncoderBlock2D x n
-- (downsample_padding 0), mid block, GroupNorm eps 1e-6, SiLU, conv_out.
local function load_encoder(w, cfg)
  local boc = cfg.block_out_channels
  local e = { blocks = {} }
  e.conv_in = B.load_conv(w, "encoder.conv_in", cfg.in_channels, boc[1], 3)
  local out_ch = boc[1]
  for i, kind in ipairs(cfg.down_block_types) do
    check_block_type(kind, "DownEncoderBlock2D", "down")
    local in_ch = out_ch
    out_ch = boc[i]
    local p = ("encoder.down_blocks.%d."):format(i - 1)
    local block = load_block(w, p, cfg.layers_per_block, in_ch, out_ch, cfg)
    if i < #boc then block.downsample = B.load_downsample(w, p .. "downsamplers.0.", out_ch, out_ch, 0) end
    e.blocks[i] = block
  end
  e.mid = load_mid(w, "encoder.mid_block.", boc[#boc], cfg)
  e.conv_norm_out = B.load_norm(w, "encoder.conv_norm_out", boc[#boc])
  e.conv_out = B.load_conv(w, "encoder.conv_out", boc[#boc], 2 * cfg.latent_channels, 3)
  return e
end

local function encoder_forward(e, cfg, image)
  local x = B.conv(image, e.conv_in, 1, 1)
  for _, block in ipairs(e.blocks) do x = block_forward(block, x) end
  local m = mid_forward(e.mid, x)
  x:free()
  -- Encoder.conv_act is nn.SiLU whatever act_fn says
  local out = B.norm_act_conv(m, e.conv_norm_out, { groups = cfg.groups, eps = 1e-6, act = "silu" }, e.conv_out, 1)
  m:free()
  return out
end

-- Decoder -------------------------------------------------------------------------

-- ref: vae.py, Decoder (norm_type "group"): conv_in, mid block,
-- UpDecoderBlock2D x n with layers_per_block + 1 resnets, GroupNorm eps
-- 1e-6, SiLU, conv_out.
local function load_decoder(w, cfg)
  local boc = cfg.block_out_channels
  local rev = {}
  for i = #boc, 1, -1 do rev[#rev + 1] = boc[i] end
  local d = { blocks = {} }
  d.conv_in = B.load_conv(w, "decoder.conv_in", cfg.latent_channels, rev[1], 3)
  d.mid = load_mid(w, "decoder.mid_block.", rev[1], cfg)
  local out_ch = rev[1]
  for i, kind in ipairs(cfg.up_block_types) do
    check_block_type(kind, "UpDecoderBlock2D", "up")
    local prev = out_ch
    out_ch = rev[i]
    local p = ("decoder.up_blocks.%d."):format(i - 1)
    local block = load_block(w, p, cfg.layers_per_block + 1, prev, out_ch, cfg)
    if i < #boc then block.upsample = B.load_upsample(w, p .. "upsamplers.0.", out_ch, out_ch) end
    d.blocks[i] = block
  end
  d.conv_norm_out = B.load_norm(w, "decoder.conv_norm_out", boc[1])
  d.conv_out = B.load_conv(w, "decoder.conv_out", boc[1], cfg.out_channels, 3)
  return d
end

local function decoder_forward(d, cfg, z)
  local x = B.conv(z, d.conv_in, 1, 1)
  local m = mid_forward(d.mid, x)
  x:free()
  x = m
  for _, block in ipairs(d.blocks) do x = block_forward(block, x) end
  -- Decoder.conv_act is nn.SiLU
  local out = B.norm_act_conv(x, d.conv_norm_out, { groups = cfg.groups, eps = 1e-6, act = "silu" }, d.conv_out, 1)
  x:free()
  return out
end

-- AutoencoderKL -------------------------------------------------------------------

local function read_config(config)
  local function list(key)
    local v = hf.cfg(config, key)
    if type(v) ~= "table" or #v == 0 then error(("vae/config.json: '%s' must be a non-empty list"):format(key), 0) end
    return v
  end
  local cfg = {
    in_channels = hf.cfg(config, "in_channels", 3),
    out_channels = hf.cfg(config, "out_channels", 3),
    latent_channels = hf.cfg(config, "latent_channels", 4),
    block_out_channels = list("block_out_channels"),
    down_block_types = list("down_block_types"),
    up_block_types = list("up_block_types"),
    layers_per_block = hf.cfg(config, "layers_per_block", 1),
    groups = hf.cfg(config, "norm_num_groups", 32),
    act = B.check_activation(hf.cfg(config, "act_fn", "silu"), "act_fn"),
    mid_attention = hf.cfg(config, "mid_block_add_attention", true),
    use_quant_conv = hf.cfg(config, "use_quant_conv", true),
    use_post_quant_conv = hf.cfg(config, "use_post_quant_conv", true),
    scaling_factor = hf.cfg(config, "scaling_factor", 0.18215),
    shift_factor = hf.cfg(config, "shift_factor", false) or nil,
  }
  if #cfg.down_block_types ~= #cfg.block_out_channels or #cfg.up_block_types ~= #cfg.block_out_channels then
    error("vae/config.json: down_block_types, up_block_types and block_out_channels differ in length", 0)
  end
  return cfg
end

-- config: the decoded vae/config.json; w: weights with has/get/maybe
-- (fmseg.io.hf weights) holding the checkpoint's names.
function M.new(config, w)
  local cfg = read_config(config)
  local self = setmetatable({ config = cfg }, VAE)
  self.scaling_factor, self.shift_factor = cfg.scaling_factor, cfg.shift_factor
  self.encoder = load_encoder(w, cfg)
  self.decoder = load_decoder(w, cfg)
  local lc = cfg.latent_channels
  if cfg.use_quant_conv then self.quant_conv = B.load_conv(w, "quant_conv", 2 * lc, 2 * lc, 1) end
  if cfg.use_post_quant_conv then self.post_quant_conv = B.load_conv(w, "post_quant_conv", lc, lc, 1) end
  if w.check_all_used then w:check_all_used() end
  return self
end

-- dir: the vae/ folder; opts.variant ("fp16") picks the weights file.
function M.load(dir, opts) return hf.load_model(dir, M.new, opts) end

-- image: (N, in_channels, H, W) in [-1, 1] → the posterior's mean and std,
-- each (N, latent_channels, H/f, W/f).
-- ref: AutoencoderKL.encode → DiagonalGaussianDistribution(moments).
function VAE:encode(image)
  local h = encoder_forward(self.encoder, self.config, image)
  local moments = h
  if self.quant_conv then
    moments = B.conv(h, self.quant_conv)
    h:free()
  end
  local lc = self.config.latent_channels
  local mean = moments:narrow(2, 1, lc):contiguous()
  local logvar = moments:narrow(2, lc + 1, lc):clamp(-30, 20)
  moments:free()
  local std = (logvar * 0.5):exp_()
  logvar:free()
  return mean, std
end

-- The diffusion model's latents from the posterior mean (the pipelines'
-- (z - shift_factor) * scaling_factor), and back.
function VAE:latents(mean)
  local z = self.shift_factor and (mean - self.shift_factor) or mean
  return z * self.scaling_factor
end

function VAE:unscale(latents)
  local z = latents / self.scaling_factor
  if self.shift_factor then z:add_(self.shift_factor) end
  return z
end

-- z: (N, latent_channels, h, w), already unscaled → (N, out_channels, H, W)
-- ref: AutoencoderKL.decode.
function VAE:decode(z)
  if not self.post_quant_conv then return decoder_forward(self.decoder, self.config, z) end
  local x = B.conv(z, self.post_quant_conv)
  local out = decoder_forward(self.decoder, self.config, x)
  x:free()
  return out
end

return M
