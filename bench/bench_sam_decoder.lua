-- bench_sam_decoder.lua — SAM ViT-B's mask decoder (random weights of the
-- real shapes) on a batch of single-point prompts, as the automatic mask
-- generator sends them: time per op (each nn call, keyed by its shapes),
-- the rest (adds, copies, Lua), and the batch against its GEMM floor.
-- Runs under FMSEG_BENCH_QUICK too (a few seconds).
--
--   ./fmseg run bench/bench_sam_decoder.lua [points (64)] [profile | floor (both)]
local bench = require("benchlib")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local args = { ... }
local npts = tonumber(args[1]) or 64
local what = args[2] or "both"

-- Per-op timing: wrap the nn kernels the decoder calls (after benchlib's
-- own wrappers, so the floor still records them).
local ops = {}
local profiling = false
local function shape_key(t) return T.is_tensor(t) and T.shape_string(t:shape()) or "-" end
local function wrap(name, key_args)
  local fn = nn[name]
  nn[name] = function(...)
    if not profiling then return fn(...) end
    local a = { ... }
    local parts = {}
    for _, i in ipairs(key_args) do parts[#parts + 1] = shape_key(a[i]) end
    local key = name .. " " .. table.concat(parts, " ")
    local t0 = bench.now()
    local r1, r2 = fn(...)
    local op = ops[key] or { calls = 0, time = 0 }
    op.calls, op.time = op.calls + 1, op.time + bench.now() - t0
    ops[key] = op
    return r1, r2
  end
end
wrap("linear", { 1, 2 })
wrap("attention", { 1, 2 })
wrap("layer_norm", { 1 })
wrap("layer_norm_channels", { 1 })
wrap("conv_transpose2d", { 1 })

-- The decoder's own kernels (core/sam_decoder.c), called from sam.lua
-- directly: their products join the floor (bench.hook_c) and the profile.
local core = require("fmseg.core")
local restore = bench.hook_sam_decoder()
local inner = core.C
local timed = setmetatable({}, { __index = function(_, key) return inner[key] end })
for _, name in ipairs({ "fm_sam_tokens_to_image", "fm_sam_image_to_tokens", "fm_sam_upscale_masks" }) do
  timed[name] = function(out, a, b, ...)
    if not profiling then return inner[name](out, a, b, ...) end
    local key = ("%s %s %s"):format(name, shape_key(a), shape_key(b))
    local t0 = bench.now()
    local rc = inner[name](out, a, b, ...)
    local op = ops[key] or { calls = 0, time = 0 }
    op.calls, op.time = op.calls + 1, op.time + bench.now() - t0
    ops[key] = op
    return rc
  end
end
core.C = timed
local sam = require("fmseg.models.sam")
restore()
local CONFIG = {
  vision_config = { hidden_size = 768, num_hidden_layers = 12, num_attention_heads = 12, mlp_dim = 3072 },
  prompt_encoder_config = { hidden_size = 256, image_size = 1024, patch_size = 16 },
  mask_decoder_config = { hidden_size = 256 },
}
local model = sam.new(CONFIG, bench.random_weights(0.02, 1))
local emb = T.randn({ 1, 256, 64, 64 }, 7)
local pts = T.rand({ 1, npts, 1, 2 }, 5, 0, 1024)
local sparse, dense = model:encode_prompt({ points = pts, labels = T.ones({ 1, npts, 1 }) })
local function decode()
  local m, iou = model:decode_masks(emb, sparse, dense, true)
  m:free(); iou:free()
end
decode()   -- warm-up

if what ~= "floor" then
  collectgarbage()
  profiling = true
  local t0 = bench.now()
  decode()
  local total = bench.now() - t0
  profiling = false
  local keys, covered = {}, 0
  for k in pairs(ops) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return ops[a].time > ops[b].time end)
  print(("decode_masks, %d points, load %s: %.0f ms (%.1f ms a point)"):format(npts, bench.loadavg(),
    total * 1e3, total * 1e3 / npts))
  for _, k in ipairs(keys) do
    covered = covered + ops[k].time
    print(("  %8.1f ms %3d x  %s"):format(ops[k].time * 1e3, ops[k].calls, k))
  end
  print(("  %8.1f ms        the rest (adds, copies, transposes, gelu, hypernetworks, Lua)"):format((total - covered) * 1e3))
end

if what ~= "profile" then
  local suite = bench.suite("sam_decoder")
  suite:model(("sam-vit-b decoder, %d points"):format(npts), decode, { warmup = 1, repeats = 3, breakdown = true })
  suite:finish()
end
