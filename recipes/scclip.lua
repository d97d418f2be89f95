-- SC-CLIP (Bai et al., arXiv 2411.15869) — Self-Calibrated CLIP: CLIP's
-- own intermediate features calibrate its last block. With h_i the tokens
-- out of block i (i = 1 .. L-1; the code's feats_list[i-1]) and N the patch
-- tokens of a gh x gw grid:
--  1. anomaly tokens: LOF over the patches of h_{L-1} (k = 30 neighbours,
--     squared L2 distances d): kd(i) = d to i's k-th neighbour,
--     lrd(i) = k / mean_{j∈kNN(i)} max(d(i,j), kd(i)),
--     LOF(i) = mean_{j∈kNN(i)} lrd(j) / lrd(i); the tokens with LOF above
--     its (1 - contamination) quantile are outliers, each replaced by the
--     mean of its non-outlier 3x3 grid neighbours (mean_interpolation);
--     the class token is set aside.
--  2. feature calibration: F = normalise(patches of h_{pre+1}, outliers
--     resolved the same way), S = F Fᵀ; x ← agg(x, S ⊙ [S ≥ β]) with
--     agg(x, W) = (W / (W 1 + 1e-6)) x.
--  3. attention calibration, the last block reduced (no residual, no FFN):
--     attn(h) = out_proj(½ (softmax(3 (S - mean S), entries < 0 → -∞)
--               + softmax(k kᵀ/√d)) v),  k, v from ln_1(h);
--     x ← attn(x) + res_cls · cls, cls the class token of h_{L-1}.
--  4. x ← agg(x, A ⊙ [A ≥ β]), A = G Gᵀ, G = normalise(patches of
--     h_{post+1}).
--  5. multi-level fusion: R = Σ_{i=ms}^{me-1} h_{i+1} (all tokens);
--     x ← x + agg(attn(patches of R) + res_cls · R_cls, A ⊙ [A ≥ β]).
--  6. ln_post and the projection of the N patch tokens.
-- ref: SuleBai/SC-CLIP clip/model.py (VisionTransformer.forward, lof_pytorch,
--      mean_interpolation, adaptively_aggregate, custom_attn);
--      scclip_segmentor.py and configs/ for the protocol (SCLIP's: logit
--      scale 40, crop 224 / stride 112, short side 336, the 122.771 / 68.501
--      ... pixel statistics; whole-image scores upsampled once to the
--      image; PAMR only with the sliding window).
-- Layers as configs/base_config.py: ViT-B/16 (12 blocks) pre 8, post 3,
-- multi 3..10, res_cls 0.3; the ViT-L/14 (24 blocks) values it carried
-- before 0417ba9 (pre 16, post 6, multi 8..19, res_cls 0.1). Other depths
-- need all five set.
-- One difference: the official code splits an outlier's index into
-- (index // feat_w, index % feat_w) with feat_w the grid's row count,
-- right only for square grids (every window of its configs is 224 x 224;
-- a whole non-square image stops it with an IndexError, or misplaces the
-- outliers); here the column count, so such runs work.
-- LOF's distances are summed in double from the float32 tokens (the code
-- subtracts, then takes the norm, in float32); its quantile's rank is
-- rounded to float32 as torch's is, which decides whole ranks.
-- Checked end to end against the official code (SuleBai/SC-CLIP 0417ba9)
-- by tests/fixtures/methods/scclip-* (tests/tools/methods/scclip.py), on
-- clip-b16-tiny12: logits within 1.4e-6 relative, labels identical, the
-- outlier sets clear of float32 noise (a changed set fails them).
local clipseg = require("fmseg.method.clipseg")
local ffi = require("ffi")
local nn = require("fmseg.nn")

local recipe = {
  name = "scclip",
  needs = { "clip" },
  defaults = clipseg.defaults({
    mean = clipseg.CLIP_MEAN_255, std = clipseg.CLIP_STD_255,
    logit_scale = 40, prob_thd = 0.0, area_thd = 0, slide_crop = 224, slide_stride = 112,
    short_side = 336, pamr_steps = 0, pamr_dilations = { 8, 16 },
    -- false: by the vision tower's depth (LAYERS below)
    pre_adjust_idx = false, post_adjust_idx = false, multi_start_idx = false, multi_end_idx = false,
    res_cls = false,
    beta = 0.4,                                  -- VisionTransformer.beta
    lof_neighbors = 30, lof_contamination = 0.05,  -- lof_pytorch(n_neighbors, contamination)
  }),
}

-- 0-based indices into the outputs of blocks 1 .. L-1, as the official code's.
recipe.LAYERS = {
  [12] = { pre_adjust_idx = 8, post_adjust_idx = 3, multi_start_idx = 3, multi_end_idx = 10, res_cls = 0.3 },
  [24] = { pre_adjust_idx = 16, post_adjust_idx = 6, multi_start_idx = 8, multi_end_idx = 19, res_cls = 0.1 },
}
local LAYER_KEYS = { "pre_adjust_idx", "post_adjust_idx", "multi_start_idx", "multi_end_idx", "res_cls" }

-- params with the by-depth values filled in; refuses an index past the
-- tower's L-1 intermediate outputs, naming the key.
function recipe.layers(params, depth)
  local out, by_depth = {}, recipe.LAYERS[depth]
  for k, v in pairs(params) do out[k] = v end
  for _, key in ipairs(LAYER_KEYS) do
    if not out[key] then
      if not by_depth then
        error(("scclip: %s is not set and the official code has no value for a %d-block vision tower "
               .. "(it has them for 12 and 24)"):format(key, depth), 0)
      end
      out[key] = by_depth[key]
    end
  end
  local last = depth - 2                      -- feats_list holds blocks 1 .. L-1
  local function index(key, hi)
    local v = out[key]
    if type(v) ~= "number" or v ~= math.floor(v) or v < 0 or v > hi then
      error(("scclip: %s = %s is outside 0..%d (a %d-block vision tower)"):format(key, tostring(v), hi, depth), 0)
    end
  end
  index("pre_adjust_idx", last)
  index("post_adjust_idx", last)
  index("multi_start_idx", last)
  index("multi_end_idx", last + 1)            -- exclusive end
  if type(out.res_cls) ~= "number" then
    error(("scclip: res_cls must be a number, got %s"):format(tostring(out.res_cls)), 0)
  end
  if out.multi_end_idx <= out.multi_start_idx then
    error(("scclip: multi_end_idx (%d) must be above multi_start_idx (%d)"):format(
      out.multi_end_idx, out.multi_start_idx), 0)
  end
  return out
end

-- ---- 1. anomaly tokens ------------------------------------------------------------

-- torch.quantile(v, q) (linear) of ascending values: the rank q (n - 1) in
-- float32, as torch computes it in the input's dtype (0.95 x 440 is 418
-- exactly there, 417.99999999999994 in double), and its lerp.
local f32 = ffi.new("float[1]")
local function float32(v) f32[0] = v; return f32[0] end

function recipe.quantile(sorted, q)
  local n = #sorted
  local rank = float32(float32(q) * (n - 1))
  local lo = math.floor(rank)
  local w = rank - lo
  local a, b = sorted[lo + 1], sorted[math.min(lo + 2, n)]
  if w < 0.5 then return a + w * (b - a) end
  return b - (b - a) * (1 - w)
end

-- x (N, C) patch tokens → { [i] = true } of the outliers (0-based), as
-- lof_pytorch: squared L2 distances, the k nearest other tokens.
function recipe.lof_outliers(x, k, contamination)
  local n, c = x:size(1), x:size(2)
  if n < k + 1 then
    error(("scclip: %d patch tokens, LOF needs more than lof_neighbors = %d"):format(n, k), 0)
  end
  local p = x:contiguous():ptr()
  local d = {}
  for i = 0, n - 1 do d[i] = {} end
  for i = 0, n - 1 do
    d[i][i] = 0
    for j = i + 1, n - 1 do
      local s = 0
      for f = 0, c - 1 do
        local e = p[i * c + f] - p[j * c + f]
        s = s + e * e
      end
      d[i][j], d[j][i] = s, s
    end
  end
  local knn, lrd = {}, {}
  for i = 0, n - 1 do
    local order = {}
    for j = 0, n - 1 do if j ~= i then order[#order + 1] = j end end
    local row = d[i]
    table.sort(order, function(a, b) return row[a] < row[b] or (row[a] == row[b] and a < b) end)
    local kd, reach = row[order[k]], 0
    knn[i] = {}
    for r = 1, k do
      knn[i][r] = order[r]
      reach = reach + math.max(row[order[r]], kd)            -- max(d(i,j), kd(i))
    end
    lrd[i] = k / (reach / k)                                 -- lrd(i) = k / mean reach
  end
  local lof, sorted = {}, {}
  for i = 0, n - 1 do
    local s = 0
    for r = 1, k do s = s + lrd[knn[i][r]] / lrd[i] end
    lof[i] = s / k                                           -- LOF(i) = mean lrd(j) / lrd(i)
    sorted[i + 1] = lof[i]
  end
  table.sort(sorted)
  local thd = recipe.quantile(sorted, 1 - contamination)
  local out = {}
  for i = 0, n - 1 do if lof[i] > thd then out[i] = true end end
  return out
end

-- x (N, C) on a gh x gw grid → a copy where each outlier with a
-- non-outlier among its 8 neighbours is their mean (mean_interpolation)
function recipe.resolve_anomalies(x, outliers, gh, gw)
  local c = x:size(2)
  local out = x:contiguous():clone()
  local src, dst = x:contiguous():ptr(), out:ptr()
  for i in pairs(outliers) do
    local r, col = math.floor(i / gw), i % gw
    local count, sum = 0, {}
    for f = 0, c - 1 do sum[f] = 0 end
    for dr = -1, 1 do
      for dc = -1, 1 do
        local rr, cc = r + dr, col + dc
        local j = rr * gw + cc
        if (dr ~= 0 or dc ~= 0) and rr >= 0 and rr < gh and cc >= 0 and cc < gw and not outliers[j] then
          count = count + 1
          for f = 0, c - 1 do sum[f] = sum[f] + src[j * c + f] end
        end
      end
    end
    if count > 0 then
      for f = 0, c - 1 do dst[i * c + f] = sum[f] / count end
    end
  end
  return out
end

-- ---- 2.-5. calibration ---------------------------------------------------------------

-- h (N, C) → S = F Fᵀ (N, N), F the L2-normalised rows
function recipe.similarity(h)
  local f = nn.normalize(h)
  return f:matmul(f, false, true)
end

-- S (N, N) → S ⊙ [S ≥ β] (the code's simi[simi < beta] = 0)
function recipe.keep_above(s, beta) return s * s:ge(beta) end

-- agg(x, W) = (W / (W 1 + 1e-6)) x: x (N, C), W (N, N) → (N, C)
function recipe.aggregate(x, w)
  local wn = w / (w:sum(2, true) + 1e-6)
  return wn:matmul(x)
end

-- softmax over each row of 3 (S - mean S), entries below 0 at -∞
function recipe.similarity_attention(s)
  local m = (s - s:mean()) * 3.0
  local e = (m - m:max(2, true)):exp_():mul_(m:ge(0))
  return e:div_(e:sum(2, true))
end

-- attn(h) = out_proj(½ (P v + softmax(k kᵀ/√d) v)), k, v from ln_1(h):
-- h (N, C), P (N, N) shared by the heads → (N, C)
function recipe.calibrated_attention(block, h, p)
  local n, c = h:size(1), h:size(2)
  local _, k, v = block:qkv(block:ln1(h:reshape(1, n, c)))
  local a = block:attend(k, k, v)                               -- softmax(k kᵀ/√d) v
  a:add_(p:matmul(v:reshape(n, c)):reshape(1, n, c)):mul_(0.5)
  return block:out_proj(a):reshape(n, c)
end

-- ---- the dense features ---------------------------------------------------------------

local function patches(h) return h:select(1, 1):narrow(1, 2, h:size(2) - 1):contiguous() end
local function class_token(h) return h:select(1, 1):narrow(1, 1, 1):contiguous() end

-- x (1, 3, h, w) → patch features (gh*gw, P), gh, gw
function recipe.dense(state, x)
  local p, model = state.params, state.model
  local blocks = model.vision.layers
  local depth = #blocks
  local enc = { layers = depth - 1, hidden_states = true }
  for key, v in pairs(clipseg.SCLIP_POSITIONS) do enc[key] = v end
  local out = model:encode_image(x, enc)
  local hs = out.hidden_states                                  -- hs[i]: block i's output
  local gh, gw = out.grid[1], out.grid[2]
  local last = blocks[depth]
  -- 1. anomaly tokens of h_{L-1}, resolved
  local outliers = recipe.lof_outliers(patches(hs[depth - 1]), p.lof_neighbors, p.lof_contamination)
  local x_ = recipe.resolve_anomalies(patches(hs[depth - 1]), outliers, gh, gw)
  local cls = class_token(hs[depth - 1])
  -- 2. feature calibration with S of h_{pre+1}, outliers resolved
  local s = recipe.similarity(recipe.resolve_anomalies(patches(hs[p.pre_adjust_idx + 1]), outliers, gh, gw))
  x_ = recipe.aggregate(x_, recipe.keep_above(s, p.beta))
  -- 3. attention calibration in the reduced last block
  local attn_p = recipe.similarity_attention(s)
  x_ = recipe.calibrated_attention(last, x_, attn_p) + cls * p.res_cls
  -- 4. aggregation with A of h_{post+1}
  local a = recipe.keep_above(recipe.similarity(patches(hs[p.post_adjust_idx + 1])), p.beta)
  x_ = recipe.aggregate(x_, a)
  -- 5. multi-level fusion
  local r = hs[p.multi_start_idx + 1]:clone()
  for i = p.multi_start_idx + 1, p.multi_end_idx - 1 do r:add_(hs[i + 1]) end
  local fused = recipe.calibrated_attention(last, patches(r), attn_p) + class_token(r) * p.res_cls
  x_:add_(recipe.aggregate(fused, a))
  -- 6. the head on the patch tokens
  local n = gh * gw
  return model:head(x_:reshape(1, n, x_:size(2))):reshape(n, model.visual_projection.weight:size(1)), gh, gw
end

function recipe.setup(params, models, classes)
  if (params.slide_crop or 0) <= 0 and (params.pamr_steps or 0) > 0 then
    error("scclip: SC-CLIP's code runs PAMR only with the sliding window; set slide_crop or pamr_steps: 0", 0)
  end
  local p = recipe.layers(params, #models.clip.vision.layers)
  return clipseg.setup(p, models.clip, classes, { dense = recipe.dense, whole_to_image = true })
end

recipe.segment = clipseg.segment

return recipe
