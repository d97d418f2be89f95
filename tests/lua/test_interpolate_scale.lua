-- Resampling by torch's scale_factor (source pixels placed by 1 / scale),
-- the position-embedding resampling of the SCLIP and DINO code bases.
local tap = require("tap")
local T = require("fmseg.tensor")
local nn = require("fmseg.nn")
local transformer = require("fmseg.models.transformer")

-- torch's bicubic (A = -0.75, borders clamped, align_corners = false) with
-- src = (dst + 0.5) / scale - 0.5, written out in double.
local function cubic_weights(t)
  local a = -0.75
  local function c1(x) return ((a + 2) * x - (a + 3)) * x * x + 1 end
  local function c2(x) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a end
  return { c2(t + 1), c1(t), c1(1 - t), c2(2 - t) }
end

local function naive(x, oh, ow, sh, sw)
  local n, c, h, w = unpack(x:shape())
  local X = x:totable()
  local out = {}
  local function clamp(v, hi) return math.max(1, math.min(hi, v)) end
  for b = 1, n do
    out[b] = {}
    for ch = 1, c do
      out[b][ch] = {}
      for i = 0, oh - 1 do
        out[b][ch][i + 1] = {}
        local sy = (i + 0.5) / sh - 0.5
        local y0 = math.floor(sy)
        local wy = cubic_weights(sy - y0)
        for j = 0, ow - 1 do
          local sx = (j + 0.5) / sw - 0.5
          local x0 = math.floor(sx)
          local wx = cubic_weights(sx - x0)
          local acc = 0
          for p = 1, 4 do
            for q = 1, 4 do
              acc = acc + wy[p] * wx[q] * X[b][ch][clamp(y0 - 2 + p + 1, h)][clamp(x0 - 2 + q + 1, w)]
            end
          end
          out[b][ch][i + 1][j + 1] = acc
        end
      end
    end
  end
  return T.from_table(out)
end

local x = T.randn({ 1, 3, 4, 4 }, 5)
for _, case in ipairs({ { 5, 6 }, { 14, 7 }, { 3, 2 } }) do
  local gh, gw = case[1], case[2]
  local sh, sw = (gh + 0.1) / 4, (gw + 0.1) / 4
  local got = nn.interpolate(x, gh, gw, { mode = "bicubic", scale = { sh, sw } })
  tap.near(got, naive(x, gh, gw, sh, sw), 1e-5, ("bicubic by scale_factor to %dx%d"):format(gh, gw))
end
local by_size = nn.interpolate(x, 5, 6, { mode = "bicubic" })
local by_scale = nn.interpolate(x, 5, 6, { mode = "bicubic", scale = { 5.1 / 4, 6.1 / 4 } })
tap.ok((by_size - by_scale):abs():max() > 1e-4, "the scale changes the result (it is not the size ratio)")
tap.raises(function() return nn.interpolate(x, 5, 6, { mode = "bicubic", scale = { 0, 1 } }) end,
           "positive", "a zero scale is refused")

-- Positions: the SCLIP resampling keeps the table when the token count
-- already matches, even for another grid shape.
local pos = T.randn({ 1 + 16, 8 }, 9)
local same = transformer.interpolate_positions(pos, 2, 8, { offset = 0.1 })
tap.eq((same - pos):abs():max(), 0, "offset mode: 2x8 = 16 tokens, positions unchanged (as the SCLIP code)")
local moved = transformer.interpolate_positions(pos, 5, 3, { offset = 0.1 })
local patch = pos:narrow(1, 2, 16):reshape(1, 4, 4, 8):permute(1, 4, 2, 3):contiguous()
local want = naive(patch, 5, 3, 5.1 / 4, 3.1 / 4):permute(1, 3, 4, 2):reshape(15, 8)
tap.near(moved:narrow(1, 2, 15), want, 1e-5, "offset mode resamples the patch positions by scale_factor")
tap.eq((moved:narrow(1, 1, 1) - pos:narrow(1, 1, 1)):abs():max(), 0, "the class position is kept")

-- torch itself, where the machine has it (Debian's python3-torch)
local py = io.popen("/usr/bin/python3 -c 'import torch' 2>/dev/null && echo yes")
local has_torch = py and py:read("*l") == "yes"
if py then py:close() end
if has_torch then
  local tmp = os.tmpname()
  local vals = x:values()
  local f = io.open(tmp .. ".py", "w")
  f:write("import torch\nx = torch.tensor([" .. table.concat(vals, ",") .. "]).reshape(1,3,4,4)\n",
          "y = torch.nn.functional.interpolate(x, scale_factor=(5.1/4, 6.1/4), mode='bicubic')\n",
          "print(' '.join(repr(v) for v in y.flatten().tolist()))\n")
  f:close()
  local out = io.popen("/usr/bin/python3 " .. tmp .. ".py"):read("*a")
  os.remove(tmp .. ".py")
  local ref = {}
  for v in out:gmatch("%S+") do ref[#ref + 1] = tonumber(v) end
  local got = nn.interpolate(x, 5, 6, { mode = "bicubic", scale = { 5.1 / 4, 6.1 / 4 } })
  tap.near(got:flatten(), T.from_table(ref), 1e-5, "matches torch's F.interpolate(scale_factor=...)")
else
  tap.skip("torch cross-check", "python3-torch not installed")
end
os.exit(tap.done())
