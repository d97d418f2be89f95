-- PAMR against a direct transcription of the reference module (shift
-- kernels with replicate padding, unbiased std, softmax over neighbours).
local tap = require("tap")
local T = require("fmseg.tensor")
local core = require("fmseg.core")
local ffi, C = core.ffi, core.C

local function naive_pamr(img, mask, iters, dils)
  local K, H, W = unpack(img:shape())
  local Cn = mask:size(1)
  local I, M = img:totable(), mask:totable()
  local function at(t, c, y, x) return t[c][math.max(1, math.min(H, y))][math.max(1, math.min(W, x))] end
  local offs = { { -1, -1 }, { -1, 0 }, { -1, 1 }, { 0, -1 }, { 0, 1 }, { 1, -1 }, { 1, 0 }, { 1, 1 } }
  local aff = {}   -- aff[y][x][p]
  for y = 1, H do
    aff[y] = {}
    for x = 1, W do
      local a = {}
      for p = 1, 8 * #dils do a[p] = 0 end
      for c = 1, K do
        local vals = {}
        for _, d in ipairs(dils) do
          for dy = -1, 1 do for dx = -1, 1 do vals[#vals + 1] = at(I, c, y + dy * d, x + dx * d) end end
        end
        local mean = 0
        for _, v in ipairs(vals) do mean = mean + v end
        mean = mean / #vals
        local var = 0
        for _, v in ipairs(vals) do var = var + (v - mean) ^ 2 end
        local sd = math.sqrt(var / (#vals - 1))
        for di, d in ipairs(dils) do
          for p, o in ipairs(offs) do
            local idx = (di - 1) * 8 + p
            a[idx] = a[idx] - math.abs(I[c][y][x] - at(I, c, y + o[1] * d, x + o[2] * d)) / (1e-8 + 0.1 * sd) / K
          end
        end
      end
      local mx, z = -math.huge, 0
      for _, v in ipairs(a) do mx = math.max(mx, v) end
      for p = 1, #a do a[p] = math.exp(a[p] - mx); z = z + a[p] end
      for p = 1, #a do a[p] = a[p] / z end
      aff[y][x] = a
    end
  end
  for _ = 1, iters do
    local nxt = {}
    for c = 1, Cn do
      nxt[c] = {}
      for y = 1, H do
        nxt[c][y] = {}
        for x = 1, W do
          local acc = 0
          for di, d in ipairs(dils) do
            for p, o in ipairs(offs) do
              acc = acc + aff[y][x][(di - 1) * 8 + p] * at(M, c, y + o[1] * d, x + o[2] * d)
            end
          end
          nxt[c][y][x] = acc
        end
      end
    end
    M = nxt
  end
  return T.from_table(M)
end

local function pamr(img, mask, iters, dils)
  local out = T.new(mask:shape())
  local d = ffi.new("int32_t[?]", #dils, dils)
  core.check(C.fm_pamr(out, img, mask, iters, d, #dils))
  return out
end

local img = T.rand({ 3, 9, 13 }, 11, -2, 2)
local mask = T.rand({ 4, 9, 13 }, 12)
tap.near(pamr(img, mask, 3, { 1, 2 }), naive_pamr(img, mask, 3, { 1, 2 }), 1e-5, "PAMR, dilations 1 and 2, 3 iterations")
tap.near(pamr(img, mask, 2, { 8, 16 }), naive_pamr(img, mask, 2, { 8, 16 }), 1e-5,
         "PAMR with dilations larger than the image (replicate padding)")
local flat = T.full({ 3, 5, 5 }, 1)
local m = T.rand({ 2, 5, 5 }, 3)
local once = pamr(flat, m, 1, { 1 })
tap.near(once, naive_pamr(flat, m, 1, { 1 }), 1e-5, "a flat image gives uniform affinities")
tap.ok(math.abs(pamr(img, mask, 4, { 1 }):sum() - mask:sum()) / mask:sum() < 0.05, "propagation keeps total mass roughly")
tap.raises(function() return pamr(img, T.rand({ 2, 4, 4 }, 1), 1, { 1 }) end, "pamr", "size mismatch is refused")
os.exit(tap.done())
