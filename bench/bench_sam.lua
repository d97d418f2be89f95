-- bench_sam.lua — SAM ViT-B (facebook/sam-vit-base's config, random
-- weights) on this machine: the image encoder at 1024x1024 (set_image), the
-- prompt path (one point, multimask; and a batch of prompts as the
-- automatic mask generator sends them), their ratio, and peak RSS. Writes
-- build/bench/sam.json for bench/torch_sam.py, which runs the same encoder
-- in PyTorch and prints the ratio.
--
--   ./fmseg run bench/bench_sam.lua [encoder repeats (1)] [prompt batch (16)]
--
-- A 1024x1024 encoder pass is ~0.9 TFLOP: tens of seconds on two cores,
-- so it runs once unless asked.
local ffi = require("ffi")
local T = require("fmseg.tensor")
local sam = require("fmseg.models.sam")
local json = require("fmseg.json")

ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } fmseg_bench_timespec;
  int clock_gettime(int clk_id, fmseg_bench_timespec *tp);
]]
local ts = ffi.new("fmseg_bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)   -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function rss_mb(field)
  local f = io.open("/proc/self/status", "r")
  local text = f:read("*a")
  f:close()
  return tonumber(text:match(field .. ":%s*(%d+)")) / 1024
end

local args = { ... }
local repeats = tonumber(args[1]) or 1
local batch = tonumber(args[2]) or 16

-- facebook/sam-vit-base's config.json (spelled out, though these are also
-- SamConfig's defaults).
local CONFIG = {
  vision_config = {
    hidden_size = 768, num_hidden_layers = 12, num_attention_heads = 12, mlp_dim = 3072,
    window_size = 14, global_attn_indexes = { 2, 5, 8, 11 }, patch_size = 16, image_size = 1024,
    output_channels = 256, num_pos_feats = 128,
  },
  prompt_encoder_config = { hidden_size = 256, image_size = 1024, patch_size = 16 },
  mask_decoder_config = { hidden_size = 256 },
}

-- Weights of whatever shape the loader asks for: views of one pool of
-- uniform noise (fast to make; 94M parameters would take a while one by
-- one), norms' scales at 1 so activations keep their size.
local function random_weights()
  local pool = T.rand({ 2 ^ 22 }, 1, -0.05, 0.05)
  local offset = 0
  return {
    dir = "(random)",
    has = function() return true end,
    get = function(_, name, shape)
      if name:match("norm%d?%.weight$") then return T.ones(shape) end
      local n = 1
      for _, s in ipairs(shape) do n = n * s end
      if offset + n > pool:numel() then offset = 0 end
      local t = pool:narrow(1, offset + 1, n):reshape(shape)
      offset = (offset + n) % 4099   -- vary the views a little
      return t
    end,
  }
end

local model = sam.new(CONFIG, random_weights())
local v = model.config.vision
print(("SAM ViT-B encoder: %dx%d, hidden %d, %d layers, %d heads, window %d, global %s; threads %d"):format(
  v.image_size, v.image_size, v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.window_size,
  table.concat(v.global_attn_indexes, ","), require("fmseg.core").C.fm_get_threads()))

local x = T.randn({ 1, 3, v.image_size, v.image_size }, 3)
local predictor = sam.predictor(model)
local rss_before = rss_mb("VmRSS")

local encoder = math.huge
for _ = 1, repeats do
  local t0 = now()
  predictor:set_pixel_values(x, { 768, 1024 })
  encoder = math.min(encoder, now() - t0)
end
local rss_encoder = rss_mb("VmHWM")
print(("encoder (set_image)   %9.1f ms   peak RSS %.0f MB"):format(encoder * 1e3, rss_encoder))

-- One prompt: a foreground point, three masks at 768x1024.
local prompt = { points = { { 500, 375 } }, labels = { 1 } }
predictor:predict(prompt)   -- warm
local one = math.huge
for _ = 1, 5 do
  local t0 = now()
  predictor:predict(prompt)
  one = math.min(one, now() - t0)
end
print(("prompt (1 point)      %9.1f ms   %.2f%% of the encoder"):format(one * 1e3, 100 * one / encoder))

-- A batch of single-point prompts, as the automatic mask generator sends.
local pts = T.rand({ batch, 1, 2 }, 5, 0, 768)
local t0 = now()
predictor:predict_batch(pts, T.ones({ batch, 1 }))
local batched = now() - t0
print(("prompt batch of %-4d  %9.1f ms   %.1f ms per prompt"):format(batch, batched * 1e3, batched * 1e3 / batch))
print(("RSS before the encoder %.0f MB, peak RSS %.0f MB after the encoder, %.0f MB at the end"):format(
  rss_before, rss_encoder, rss_mb("VmHWM")))

os.execute("mkdir -p build/bench")
local f = io.open("build/bench/sam.json", "w")
f:write(json.encode({ encoder_ms = encoder * 1e3, prompt_ms = one * 1e3, batch = batch,
                      batch_ms = batched * 1e3, peak_rss_mb = rss_encoder }))
f:close()
