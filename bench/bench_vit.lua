-- bench_vit.lua — ViT image towers with random weights in the real
-- configurations: CLIP ViT-B/16 (openai/clip-vit-base-patch16) and DINO
-- ViT-S/8 (facebook/dino-vits8), one 224x224 image, ms per image.
-- Writes build/bench/vit.json for bench/torch_vit.py, which runs the same
-- shapes in PyTorch and prints the ratio.
--
--   ./fmseg run bench/bench_vit.lua [repeats]
local ffi = require("ffi")
local T = require("fmseg.tensor")
local clip = require("fmseg.models.clip")
local vit = require("fmseg.models.vit")
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

local repeats = tonumber((...)) or 10

-- Weights that are whatever shape the loader asks for: uniform noise.
local function random_weights()
  local seed = 1
  return {
    dir = "(random)",
    has = function() return true end,
    get = function(_, _, shape)
      seed = seed + 1
      return T.rand(shape, seed, -0.05, 0.05)
    end,
  }
end

local CONFIGS = {
  {
    name = "clip-vit-b16",
    build = function()
      return clip.new({
        projection_dim = 512,
        vision_config = { hidden_size = 768, intermediate_size = 3072, num_attention_heads = 12,
                          num_hidden_layers = 12, patch_size = 16, image_size = 224,
                          hidden_act = "quick_gelu", layer_norm_eps = 1e-5 },
      }, random_weights(), { text = false })
    end,
  },
  {
    name = "dino-vits8",
    build = function()
      return vit.new({ model_type = "vit", hidden_size = 384, intermediate_size = 1536,
                       num_attention_heads = 6, num_hidden_layers = 12, patch_size = 8,
                       image_size = 224, hidden_act = "gelu", layer_norm_eps = 1e-6,
                       qkv_bias = true }, random_weights())
    end,
  },
}

local results = {}
local x = T.rand({ 1, 3, 224, 224 }, 42, -2, 2)
print(("%-14s %8s %8s  (%d runs after 2 warm-up, threads %d)"):format(
  "model", "ms/img", "min ms", repeats, require("fmseg.core").C.fm_get_threads()))
for _, c in ipairs(CONFIGS) do
  local model = c.build()
  for _ = 1, 2 do model:encode_image(x) end
  local times = {}
  for i = 1, repeats do
    local t0 = now()
    local out = model:encode_image(x)
    times[i] = (now() - t0) * 1000
    out.last:free()
    collectgarbage()
  end
  table.sort(times)
  local median = times[math.floor((#times + 1) / 2)]
  results[c.name] = median
  print(("%-14s %8.1f %8.1f"):format(c.name, median, times[1]))
end

os.execute("mkdir -p build/bench")
local f = io.open("build/bench/vit.json", "w")
if f then
  f:write(json.encode(results))
  f:close()
end
