-- bench_sd.lua — Stable Diffusion 1.5 on this machine, random weights:
-- one UNet evaluation at a 64x64 latent (512x512 images) and the VAE
-- encoder at 512x512. Prints wall time, GFLOP/s achieved per kind of op
-- (convolutions, linear layers, attention), and peak RSS.
--
--   ./fmseg run bench/bench_sd.lua [batch] [--no-vae] [--no-unet]
--
-- Weights are N(0, 0.02²) of SD 1.5's shapes, made once each (3.4 GB of
-- float32 for the UNet). FLOPs count multiply-adds as 2: conv 2·N·OC·OH·OW·C·KH·KW,
-- linear 2·rows·in·out, attention 4·B·H·Tq·Tk·D (q kᵀ and p v).
local ffi = require("ffi")
local T = require("fmseg.tensor")
local nn = require("fmseg.nn")
local sd = require("fmseg.models.sd")

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } fmseg_bench_timespec;
int clock_gettime(int clk, fmseg_bench_timespec *ts);
]]
local ts = ffi.new("fmseg_bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function rss_mb(field)
  local f = io.open("/proc/self/status", "r")
  local text = f:read("*a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+)")) / 1024
end

-- SD 1.5's unet/config.json and vae/config.json (stable-diffusion-v1-5).
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

-- Op accounting: wrap the nn kernels the models call.
local stats = {}
local function reset() stats = {} end
local function account(kind, flops, fn, ...)
  local t0 = now()
  local a, b = fn(...)
  local s = stats[kind] or { time = 0, flops = 0, calls = 0 }
  s.time, s.flops, s.calls = s.time + now() - t0, s.flops + flops, s.calls + 1
  stats[kind] = s
  return a, b
end
local function wrap(name, kind, flops_of)
  local orig = nn[name]
  nn[name] = function(...) return account(kind, flops_of(...), orig, ...) end
end
wrap("conv2d", "conv", function(x, w, _, opts)
  local n, _, h, wd = unpack(x:shape())
  local oc, c, kh, kw = unpack(w:shape())
  local s, p = opts and opts.stride or 1, opts and opts.padding or 0
  local oh, ow = math.floor((h + 2 * p - kh) / s) + 1, math.floor((wd + 2 * p - kw) / s) + 1
  return 2 * n * oc * oh * ow * c * kh * kw
end)
wrap("linear", "linear", function(x, w) return 2 * (x:numel() / x:size(-1)) * w:size(1) * w:size(2) end)
wrap("attention", "attention", function(q, k, v, heads)
  local b, tq, c = unpack(q:shape())
  return 2 * b * tq * k:size(2) * (c + v:size(3))
end)
wrap("group_norm", "group_norm", function() return 0 end)
wrap("layer_norm", "layer_norm", function() return 0 end)
wrap("interpolate", "interpolate", function() return 0 end)

local function report(title, wall)
  local total_flops, kinds = 0, {}
  for kind, s in pairs(stats) do
    total_flops = total_flops + s.flops
    kinds[#kinds + 1] = kind
  end
  table.sort(kinds, function(a, b) return stats[a].time > stats[b].time end)
  print(("%s: %.0f ms wall, %.1f GFLOP, %.1f GFLOP/s overall"):format(title, wall * 1e3, total_flops / 1e9,
    total_flops / 1e9 / wall))
  local covered = 0
  for _, kind in ipairs(kinds) do
    local s = stats[kind]
    covered = covered + s.time
    print(("  %-12s %5d calls %9.0f ms %8.1f GFLOP %8.1f GFLOP/s"):format(kind, s.calls, s.time * 1e3,
      s.flops / 1e9, s.time > 0 and s.flops / 1e9 / s.time or 0))
  end
  print(("  %-12s %15s %9.0f ms"):format("other", "", (wall - covered) * 1e3))
end

local args = { ... }
local batch = tonumber(args[1]) or 1
local skip = {}
for _, a in ipairs(args) do skip[a] = true end
print(("threads: %d, batch %d"):format(require("fmseg.core").C.fm_get_threads(), batch))

-- A 3x3 convolution at SD's first resolution against the GEMM it reduces
-- to: (320 x 2880) . (2880 x 4096).
do
  local x = T.randn({ 1, 320, 64, 64 }, 1)
  local w = T.randn({ 320, 320, 3, 3 }, 2)
  local b = T.randn({ 320 }, 3)
  nn.conv2d(x, w, b, { padding = 1 })
  reset()
  local t0 = now()
  for _ = 1, 3 do nn.conv2d(x, w, b, { padding = 1 }):free() end
  local conv_t = (now() - t0) / 3
  local a, m = T.randn({ 320, 2880 }, 4), T.randn({ 2880, 4096 }, 5)
  a:matmul(m):free()
  t0 = now()
  for _ = 1, 3 do a:matmul(m):free() end
  local gemm_t = (now() - t0) / 3
  local flops = 2 * 320 * 2880 * 4096
  print(("conv3x3 320->320 @64x64: %.1f ms (%.1f GFLOP/s); same-size sgemm %.1f ms (%.1f GFLOP/s)"):format(
    conv_t * 1e3, flops / conv_t / 1e9, gemm_t * 1e3, flops / gemm_t / 1e9))
end

if not skip["--no-unet"] then
  local t0 = now()
  local w = sd.random_weights(0.02, 1)
  local unet = sd.unet.new(UNET, w)
  print(("unet: %d tensors, %.0f M parameters, made in %.1f s; RSS %.0f MB"):format(w.count, w.numel / 1e6,
    now() - t0, rss_mb("VmRSS")))
  local x = T.randn({ batch, 4, 64, 64 }, 2)
  local text = T.randn({ batch, 77, 768 }, 3)
  reset()
  t0 = now()
  local eps = unet:forward(x, 500, text)
  report(("unet 64x64 latent, batch %d"):format(batch), now() - t0)
  eps:free()
  -- the same with every attention map captured (what DiffSeg keeps)
  local cap = sd.attention.capture({ mean_heads = true })
  for _, method in ipairs({ "buffer", "record" }) do
    local orig = cap[method]
    cap[method] = function(...) return account("capture", 0, orig, ...) end
  end
  reset()
  t0 = now()
  unet:forward(x, 500, text, { capture = cap }):free()
  report("unet with every map captured (heads averaged)", now() - t0)
  cap:clear()
  print(("peak RSS %.0f MB"):format(rss_mb("VmHWM")))
  unet = nil
  collectgarbage()
  collectgarbage()
end

if not skip["--no-vae"] then
  local w = sd.random_weights(0.02, 5)
  local vae = sd.vae.new(VAE, w)
  print(("vae: %d tensors, %.0f M parameters"):format(w.count, w.numel / 1e6))
  local image = T.rand({ 1, 3, 512, 512 }, 6, -1, 1)
  reset()
  local t0 = now()
  local mean, std = vae:encode(image)
  report("vae encoder 512x512", now() - t0)
  mean:free(); std:free()
  print(("peak RSS %.0f MB"):format(rss_mb("VmHWM")))
end
