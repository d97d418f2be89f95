-- SC-CLIP's steps (recipes/scclip.lua) that the fixtures cannot pin down
-- alone: the layers picked by the tower's depth (ViT-B/16's and ViT-L/14's
-- as the official code), the refusal of an index past the depth naming the
-- key, torch.quantile's float32 rank, and LOF on points whose outlier is
-- known. The whole recipe against the official code:
-- tests/fixtures/methods/scclip-*.
local tap = require("tap")
local core = require("fmseg.core")
local T = require("fmseg.tensor")

local R = dofile(core.root .. "/recipes/scclip.lua")

-- ---- layers by depth -------------------------------------------------------------------------

local b = R.layers({}, 12)
tap.eq(table.concat({ b.pre_adjust_idx, b.post_adjust_idx, b.multi_start_idx, b.multi_end_idx }, " "), "8 3 3 10",
       "ViT-B/16 (12 blocks): pre 8, post 3, fusion 3..10")
local l = R.layers({}, 24)
tap.eq(table.concat({ l.pre_adjust_idx, l.post_adjust_idx, l.multi_start_idx, l.multi_end_idx }, " "), "16 6 8 19",
       "ViT-L/14 (24 blocks): pre 16, post 6, fusion 8..19")
tap.eq(R.layers({ pre_adjust_idx = 5 }, 12).pre_adjust_idx, 5, "a given index is kept")

local function refused(params, depth, want, name)
  local ok, err = pcall(R.layers, params, depth)
  tap.ok(not ok and tostring(err):find(want, 1, true) ~= nil, name, tostring(err))
end
refused({ pre_adjust_idx = 11 }, 12, "pre_adjust_idx = 11 is outside 0..10", "an index past the depth names the key")
refused({ multi_end_idx = 12 }, 12, "multi_end_idx = 12 is outside 0..11", "the fusion's exclusive end past the depth")
refused({ multi_start_idx = 6, multi_end_idx = 6 }, 12, "must be above multi_start_idx", "an empty fusion range")
refused({}, 8, "pre_adjust_idx is not set", "a depth the official code has no layers for")
refused({ res_cls = "x" }, 12, "res_cls must be a number", "res_cls not a number")

-- ---- torch.quantile in float32 ------------------------------------------------------------------

local sorted = {}
for i = 1, 441 do sorted[i] = i end
-- 0.95 x 440 is 418 in float32 (torch's rank), 417.99999999999994 in double
tap.eq(R.quantile(sorted, 0.95), 419, "quantile: the rank in float32, as torch (element 419 of 1..441)")
tap.eq(R.quantile({ 1, 2, 3, 4 }, 0.5), 2.5, "quantile: linear between neighbours")

-- ---- LOF ------------------------------------------------------------------------------------------

-- 40 points on a small grid and one far away: the far one is the outlier
local n, pts = 41, {}
for i = 0, 39 do pts[#pts + 1] = { i % 8, math.floor(i / 8) } end
pts[#pts + 1] = { 60, 60 }
local x = T.new({ n, 2 })
for i, p in ipairs(pts) do x:ptr()[2 * (i - 1)], x:ptr()[2 * (i - 1) + 1] = p[1], p[2] end
local out = R.lof_outliers(x, 30, 0.05)
tap.ok(out[40] == true, "LOF: the far point is an outlier")
local count = 0
for _ in pairs(out) do count = count + 1 end
tap.ok(count <= 3, ("LOF: at most the top 5%% are outliers (%d)"):format(count))
tap.raises(function() R.lof_outliers(T.new({ 20, 2 }), 30, 0.05) end, "LOF needs more than lof_neighbors",
           "fewer tokens than neighbours is refused")

os.exit(tap.done())
