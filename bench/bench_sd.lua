-- bench_sd.lua — Stable Diffusion 1.5, random weights: one UNet evaluation
-- at a 64x64 latent (512x512 images) with 77 text tokens, and the VAE
-- encoder at 512x512, each against its GEMM floor and bench/torch_sd.py,
-- with the time per kind of op. Skipped with FMSEG_BENCH_QUICK=1.
--
--   ./fmseg run bench/bench_sd.lua [--no-unet] [--no-vae] [--capture]
--
-- --capture adds a UNet pass that keeps every attention map (heads
-- averaged), what DiffSeg asks of it. One run each: a UNet pass is ~0.8
-- TFLOP, the VAE encoder's ~1 TFLOP.
local bench = require("benchlib")
if bench.quick() then return print("bench_sd: skipped (FMSEG_BENCH_QUICK)") end
local T = require("fmseg.tensor")
local sd = require("fmseg.models.sd")

local flags = {}
for _, a in ipairs({ ... }) do flags[a] = true end

-- SD 1.5's unet/config.json and vae/config.json (stable-diffusion-v1-5)
local UNET = {
  sample_size = 64, in_channels = 4, out_channels = 4, block_out_channels = { 320, 640, 1280, 1280 },
  layers_per_block = 2, attention_head_dim = 8, cross_attention_dim = 768, norm_num_groups = 32,
  norm_eps = 1e-5, act_fn = "silu", downsample_padding = 1, mid_block_scale_factor = 1,
  flip_sin_to_cos = true, freq_shift = 0, center_input_sample = false,
  down_block_types = { "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D" },
  up_block_types = { "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D" },
}
local VAE = {
  in_channels = 3, out_channels = 3, latent_channels = 4, block_out_channels = { 128, 256, 512, 512 },
  layers_per_block = 2, norm_num_groups = 32, act_fn = "silu", scaling_factor = 0.18215,
  down_block_types = { "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D" },
  up_block_types = { "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D" },
}
local ONCE = { warmup = 0, repeats = 1, breakdown = true }

local suite = bench.suite("sd")
if not flags["--no-unet"] then
  local unet = sd.unet.new(UNET, bench.random_weights(0.02, 1))
  local x, text = T.randn({ 1, 4, 64, 64 }, 2), T.randn({ 1, 77, 768 }, 3)
  suite:model("sd1.5 unet 64x64", function() unet:forward(x, 500, text):free() end, ONCE)
  if flags["--capture"] then
    local cap = sd.attention.capture({ mean_heads = true })
    suite:model("sd1.5 unet 64x64, maps kept", function()
      unet:forward(x, 500, text, { capture = cap }):free()
      cap:clear()
    end, ONCE)
  end
end
if not flags["--no-vae"] then
  local vae = sd.vae.new(VAE, bench.random_weights(0.02, 5))
  local image = T.rand({ 1, 3, 512, 512 }, 6, -1, 1)
  suite:model("sd1.5 vae encoder 512", function()
    local mean, std = vae:encode(image)
    mean:free(); std:free()
  end, ONCE)
end
suite:finish()
