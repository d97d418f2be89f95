-- CorrCLIP's steps (recipes/corrclip.lua) on inputs whose answer is known:
-- the painting order of the region masks, the map correction's mode (the
-- smallest label on ties, as torch.mode), the mask merging's DBSCAN on
-- precomputed distances, the scope of the reconstructed attention, the
-- region tokens' attention mask, NUM_SPATIAL by depth, and the
-- misconfigurations refused before any image is read (`regions` missing
-- or given to a recipe that takes none, a mask source that makes no
-- instances, SAM as CorrCLIP's VFM). The whole recipe against the official
-- code: tests/fixtures/methods/corrclip-*.
local tap = require("tap")
local core = require("fmseg.core")
local cluster = require("fmseg.cluster")
local segment = require("fmseg.method.segment")
local T = require("fmseg.tensor")

local R = dofile(core.root .. "/recipes/corrclip.lua")
local MODELS = core.root .. "/tests/fixtures/methods/models/"

local function grid(rows)
  local h, w = #rows, #rows[1]
  local t = T.new({ h, w })
  for i = 1, h do for j = 1, w do t:ptr()[(i - 1) * w + j - 1] = rows[i][j] end end
  return t
end

local function mask(rows) return grid(rows):byte() end

-- ---- regions ---------------------------------------------------------------------------------

-- three masks: the largest (area 6) painted last covers the others where they overlap
local inst = { kind = "instances", masks = {
  mask({ { 1, 1, 1, 0 }, { 1, 1, 1, 0 }, { 0, 0, 0, 0 } }),     -- area 6: id 3
  mask({ { 0, 0, 0, 0 }, { 0, 1, 0, 0 }, { 0, 0, 0, 0 } }),     -- area 1: id 1, covered
  mask({ { 0, 0, 0, 1 }, { 0, 0, 0, 1 }, { 0, 0, 0, 0 } }),     -- area 2: id 2
} }
tap.eq(table.concat(R.region_map(inst, 3, 4):int():values(), " "), "3 3 3 2 3 3 3 2 0 0 0 0",
       "region_map: ids by ascending area, larger painted over smaller, 0 uncovered")
local tie = { kind = "instances", masks = { mask({ { 1, 0 } }), mask({ { 0, 1 } }) } }
tap.eq(table.concat(R.region_map(tie, 1, 2):int():values(), " "), "1 2", "region_map: equal areas keep their order")
tap.raises(function() R.region_map(inst, 4, 4) end, "region mask 1 is 3x4, the image 4x4",
           "region_map: a mask of another size is named")

-- ---- the map correction ----------------------------------------------------------------------

local labels = grid({ { 1, 2, 2, 5 }, { 1, 1, 3, 3 } }):int()
local ids = grid({ { 0, 4, 4, 7 }, { 4, 4, 7, 7 } })
R.correct_labels(labels, ids)
-- region 4 holds labels 2, 2, 1, 1: a tie, the smallest wins; region 7 holds 5, 3, 3
tap.eq(table.concat(labels:values(), " "), "1 1 1 3 1 1 3 3",
       "correct_labels: each region's most frequent label, the smallest on ties; the lowest id untouched")

-- ---- mask merging ----------------------------------------------------------------------------

-- DBSCAN on a precomputed matrix: 0-1 and 2 apart; eps inclusive (0.1875
-- is exact in float32; 0.2 is not, and its float32 value is above 0.2, as
-- scikit-learn sees the official code's float32 distances)
local d = grid({ { 0, 0.1875, 0.9 }, { 0.1875, 0, 0.9 }, { 0.9, 0.9, 0 } })
local db = cluster.dbscan_precomputed(d, 0.1875, 1)
tap.eq(table.concat(db, " "), "0 0 1", "dbscan_precomputed: a distance equal to eps joins")
tap.eq(table.concat(cluster.dbscan_precomputed(grid({ { 0, 0.2 }, { 0.2, 0 } }), 0.2, 1), " "), "0 1",
       "dbscan_precomputed: float32 0.2 is above eps = 0.2")
local db2 = cluster.dbscan_precomputed(d, 0.18, 2)
tap.eq(table.concat(db2, " "), "-1 -1 -1", "dbscan_precomputed: min_samples counts the diagonal")

-- regions 1 and 2 share a feature direction, 3 does not; 0 is the lowest id
local feats = grid({ { 0, 1 }, { 1, 0 }, { 1, 0 }, { 0.99, 0.01 }, { 0, 1 }, { 0, 1 } })
local merged = R.merge_regions(grid({ { 0, 1, 1, 2, 3, 3 } }), feats, 0.2, 1)
tap.eq(table.concat(merged:int():values(), " "), "0 10000 10000 10000 10001 10001",
       "merge_regions: similar regions share 10000 + their cluster, the lowest id stays")
tap.eq(table.concat(R.merge_regions(grid({ { 0, 1, 1, 1, 1, 1 } }), feats, 0.2, 1):int():values(), " "),
       "0 1 1 1 1 1", "merge_regions: two ids or fewer are left alone")

-- ---- scope reconstruction --------------------------------------------------------------------

-- four patches: 0 and 1 in region 5, 2 and 3 unsegmented (the lowest id, 2)
local s = grid({ { 1.0, 0.5, 0.9, 0.1 }, { 0.5, 1.0, 0.2, 0.3 }, { 0.9, 0.2, 1.0, 0.0 }, { 0.1, 0.3, 0.0, 1.0 } })
local a = R.scope_attention(s, T.from_table({ 5, 5, 2, 2 }), 4)
local allowed = {}
for i, v in ipairs(a:values()) do allowed[i] = v > 0 and 1 or 0 end
-- mean(S) = 0.5: an unsegmented patch attends where S > 0.5, and is attended to there
tap.eq(table.concat(allowed, ""), "1110" .. "1100" .. "1010" .. "0001",
       "scope_attention: same region, or an unsegmented end with S above its mean")
local row = a:narrow(1, 2, 1):values()
tap.near(row[1], 1 / (1 + math.exp(4 * 0.5)), 1e-6, "scope_attention: softmax of tau S over the allowed entries")

-- ---- the region tokens' mask ---------------------------------------------------------------------

local m = R.region_token_mask(T.from_table({ 3, 8, 8 }), { 3, 8 })
local seen = {}
for i, v in ipairs(m:values()) do seen[i] = v == 0 and 1 or 0 end
-- tokens: [r3, r8, cls, p1, p2, p3]
tap.eq(table.concat(seen, ""), "001100" .. "001011" .. "001111" .. "001111" .. "001111" .. "001111",
       "region_token_mask: a region token sees the class token and its patches; no one sees region tokens")

-- ---- layers by depth and misconfigurations ------------------------------------------------------------

tap.eq(R.spatial_layers({}, 12), 5, "NUM_SPATIAL: 5 for 12 blocks")
tap.eq(R.spatial_layers({}, 24), 12, "NUM_SPATIAL: 12 for 24 blocks")
tap.eq(R.spatial_layers({}, 32), 28, "NUM_SPATIAL: 28 for 32 blocks")
tap.eq(R.spatial_layers({}, 8), 4, "NUM_SPATIAL: L - 4 otherwise")
tap.raises(function() R.spatial_layers({ spatial_layers = 11 }, 12) end, "spatial_layers = 11 is outside 1..10",
           "spatial_layers past the depth names the key")

local base = {
  recipe = "corrclip", classes = { "person", "horse" },
  models = { clip = MODELS .. "clip-b16-tiny", vfm = MODELS .. "dino-b8-tiny", sam = MODELS .. "sam-amg-tiny" },
  regions = { recipe = "sam_amg", params = { points_per_side = 4 } },
}
local function with(changes, drop)
  local cfg = {}
  for k, v in pairs(base) do cfg[k] = v end
  for k, v in pairs(changes) do cfg[k] = v end
  if drop then cfg[drop] = nil end
  return cfg
end
tap.raises(function() segment.session(with({}, "regions")) end, "needs `regions`",
           "corrclip without a mask source is refused at setup")
tap.raises(function() segment.session(with({ regions = { recipe = "sclip" } })) end,
           "regions.recipe sclip does not produce instance masks", "a mask source that makes no instances")
tap.raises(function() segment.session(with({ regions = { points_per_side = 8 } })) end,
           "`regions` must be a mapping with a recipe name", "a regions step without a recipe")
tap.raises(function()
  segment.session(with({ models = { clip = base.models.clip, vfm = MODELS .. "sam-proxy-tiny", sam = base.models.sam } }))
end, "models.vfm must be DINO", "SAM as CorrCLIP's VFM is refused")
tap.raises(function()
  segment.session({ recipe = "sam_amg", models = { sam = base.models.sam }, regions = base.regions })
end, "takes no `regions`", "regions given to a recipe that takes none")
local session = segment.session(base)
tap.ok(session.regions and session.regions.recipe.name == "sam_amg", "a session runs the mask source first")

os.exit(tap.done())
