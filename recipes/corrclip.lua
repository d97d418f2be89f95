-- CorrCLIP (Zhang et al., ICCV25) — Reconstructing patch correlations in
-- CLIP: the last block's attention is rebuilt from DINO's correlations,
-- limited to the region masks of a mask generator, and two more branches
-- strengthen the features; the label map is then made consistent within
-- each region. The regions come from the config's mask source
-- (`regions: {recipe: sam_amg, ...}`): each region is a mask, painted in
-- order of area, larger over smaller; 0 is what no mask covers.
-- Per window (VFM grid fh x fw = the window / 8 for DINO ViT-B/8; CLIP
-- grid gh x gw = the window / 16):
--  1. F = normalise(q + k) of DINO's last block on the patches (the qkv
--     projection's output, ProxyCLIP's VFM input); S = F Fᵀ.
--  2. mask merging: R = the window's region ids on the VFM grid (padding
--     10000). With more than two ids, every region but the lowest id's
--     gets its mean F, normalised (f_r); DBSCAN(eps 0.2, min_samples 1)
--     on the distances max(f fᵀ) − f fᵀ merges similar regions: region r
--     of cluster c takes id 10000 + c.
--  3. scope reconstruction: patch i may attend to j when both lie in the
--     same region (the lowest id excepted), or when one of them lies in
--     the lowest id's region (unsegmented pixels) and S_ij > mean(S);
--     A = softmax(τ S) over the allowed entries (τ = 4).
--  4. semantic branch: one extra class token per region of R on CLIP's
--     grid (a copy of the class token after ln_pre), attending only to the
--     class token and its region's patches, rides along through every
--     block; the patch tokens never see them.
--  5. last block, without residual or FFN: main = out_proj(A v(x)),
--     spatial = out_proj(A v(mean of blocks L−1−n_s .. L−2's outputs)),
--     v = v_proj(ln_1 ·) on the patches, bilinearly resized to the VFM
--     grid; semantic = the full last block's output of each region token,
--     spread over its region's patches.
--  6. x = ln_post(main) + α ln_post(spatial) + β ln_post(semantic), then
--     the projection (α = 1, β = 0.5; n_s = 5, 12, 28 for 12, 24, 32
--     blocks, else L − 4).
-- Then the shared protocol (ProxyCLIP's: crop 336 / stride 112, windows
-- padded to 56, logit scale 40, short side 336), and the map correction:
-- every region but the lowest id takes its most frequent label (the
-- smallest on ties, as torch.mode).
-- ref: zdk258/CorrCLIP CorrCLIPv1/corrclip_segmentor.py (forward_feature,
--      forward_slide, predict, postprocess_result, generate_mask's sam2
--      branch for the painting order) and CorrCLIPv1/open_clip/transformer.py
--      (VisionTransformer.forward); configs/ for the protocol.
-- The official results use SAM 2 masks made beforehand (its README); here
-- the mask source is any instance recipe, SAM's automatic masks today.
-- Checked end to end against the official code by tests/fixtures/methods/
-- corrclip-* (tests/tools/methods/corrclip.py).
local cluster = require("fmseg.cluster")
local clipseg = require("fmseg.method.clipseg")
local nn = require("fmseg.nn")
local recipes = require("fmseg.method.recipes")
local T = require("fmseg.tensor")

local proxyclip = recipes.load("proxyclip")

local recipe = {
  name = "corrclip",
  needs = { "clip", "vfm" },
  regions = true,                              -- takes the mask source's instances
  defaults = clipseg.defaults({
    logit_scale = 40, prob_thd = 0.0, slide_crop = 336, slide_stride = 112, pad_multiple = 56,
    short_side = 336,
    mean = clipseg.CLIP_MEAN_255, std = clipseg.CLIP_STD_255,     -- SegDataPreProcessor
    vfm_mean = clipseg.IMAGENET_MEAN, vfm_std = clipseg.IMAGENET_STD,
    unnorm_mean = clipseg.CLIP_MEAN, unnorm_std = clipseg.CLIP_STD,
    alpha = 1.0, beta = 0.5,                   -- ALPHA, BETA: weights of the spatial and semantic branches
    tau = 4,                                   -- TAU: temperature of the reconstructed attention
    dbscan_eps = 0.2, dbscan_min_samples = 1,  -- EPS, MIN_SAMPLES of the mask merging
    spatial_layers = false,                    -- NUM_SPATIAL; false: by the tower's depth (SPATIAL)
  }),
}

-- NUM_SPATIAL by the vision tower's depth, as the official code picks it
recipe.SPATIAL = { [12] = 5, [24] = 12, [32] = 28 }
-- the id padded windows' masks take, and the first id of merged regions
local PAD_ID, MERGED_ID = 10000, 10000

-- ---- regions ---------------------------------------------------------------------------

-- instances (fmseg.method.segment's result) → (H, W) float32 region ids:
-- masks painted in order of area, ascending (stable), ids 1, 2, ... as
-- painted, so a larger mask covers a smaller one; 0 where none lies.
function recipe.region_map(instances, h, w)
  local out = T.zeros({ h, w })
  local order, areas = {}, {}
  for i, m in ipairs(instances.masks) do
    if m:size(1) ~= h or m:size(2) ~= w then
      error(("corrclip: region mask %d is %dx%d, the image %dx%d"):format(i, m:size(1), m:size(2), h, w), 0)
    end
    order[i] = i
    local r = instances.records and instances.records[i]
    areas[i] = r and r.area or m:float():sum()
  end
  table.sort(order, function(a, b) return areas[a] < areas[b] or (areas[a] == areas[b] and a < b) end)
  local op = out:ptr()
  for id, i in ipairs(order) do
    local mp = instances.masks[i]:contiguous():ptr()
    for k = 0, h * w - 1 do
      if mp[k] ~= 0 then op[k] = id end
    end
  end
  return out
end

-- ids (h, w) → (H, W), PyTorch's nearest (F.interpolate mode 'nearest')
local function nearest(ids, h, w)
  if ids:size(1) == h and ids:size(2) == w then return ids end
  return nn.interpolate(ids:reshape(1, 1, ids:size(1), ids:size(2)), h, w, { mode = "nearest" }):reshape(h, w)
end

-- the ascending distinct values of ids (a tensor) as a Lua array
local function unique(ids)
  local seen, out = {}, {}
  local p = ids:contiguous():ptr()
  for k = 0, ids:numel() - 1 do
    local v = p[k]
    if not seen[v] then seen[v] = true; out[#out + 1] = v end
  end
  table.sort(out)
  return out
end

-- The window's region ids on the VFM grid (fh, fw): the input's map cut to
-- the window, padded with PAD_ID as the window's pixels are with zeros.
function recipe.window_regions(state, fh, fw)
  local box, pad = state.window.box, state.window.pad
  local y1, x1, y2, x2 = box[1], box[2], box[3], box[4]
  local crop = state.input_regions:narrow(1, y1 + 1, y2 - y1):narrow(2, x1 + 1, x2 - x1)
  local l, r, t, b = pad[1], pad[2], pad[3], pad[4]
  local padded = T.full({ y2 - y1 + t + b, x2 - x1 + l + r }, PAD_ID)
  padded:narrow(1, t + 1, y2 - y1):narrow(2, l + 1, x2 - x1):copy(crop)
  return nearest(padded, fh, fw)
end

-- 2. mask merging: ids (fh, fw), F (N, D) normalised → ids with the
-- regions DBSCAN groups renamed MERGED_ID + cluster (a new tensor)
function recipe.merge_regions(ids, feats, eps, min_samples)
  local values = unique(ids)
  local out = ids:clone()
  if #values <= 2 then return out end
  local n, d = feats:size(1), feats:size(2)
  local ip, fp = ids:contiguous():ptr(), feats:contiguous():ptr()
  local index = {}
  for r, v in ipairs(values) do index[v] = r end
  local sums, counts = T.zeros({ #values, d }), {}
  local sp = sums:ptr()
  for r = 1, #values do counts[r] = 0 end
  for i = 0, n - 1 do
    local r = index[ip[i]]
    counts[r] = counts[r] + 1
    for c = 0, d - 1 do sp[(r - 1) * d + c] = sp[(r - 1) * d + c] + fp[i * d + c] end
  end
  for r = 1, #values do
    for c = 0, d - 1 do sp[(r - 1) * d + c] = sp[(r - 1) * d + c] / counts[r] end
  end
  -- every region but the lowest id's
  local f = nn.normalize(sums:narrow(1, 2, #values - 1):contiguous())
  local sim = f:matmul(f, false, true)
  local labels = cluster.dbscan_precomputed(sim:max() - sim, eps, min_samples)
  local rename = {}
  for r = 2, #values do
    local c = labels[r - 1]
    if c ~= -1 then rename[values[r]] = MERGED_ID + c end
  end
  local op = out:ptr()
  for i = 0, n - 1 do
    local v = rename[ip[i]]
    if v then op[i] = v end
  end
  return out
end

-- 3. scope reconstruction: S (N, N), ids (N) → A = softmax(τ S) over the
-- entries regions allow (see the top), every other entry −∞
function recipe.scope_attention(s, ids, tau)
  local n = s:size(1)
  local lowest = unique(ids)[1]
  local mean = s:mean()
  local z = s:contiguous():clone()
  local zp, ip = z:ptr(), ids:contiguous():ptr()
  for i = 0, n - 1 do
    local ri = ip[i]
    for j = 0, n - 1 do
      local rj, k = ip[j], i * n + j
      local same = ri == rj and ri ~= lowest
      local open = (ri == lowest or rj == lowest) and zp[k] > mean
      zp[k] = (same or open) and tau * zp[k] or -math.huge
    end
  end
  local a = nn.softmax(z)
  z:free()
  return a
end

-- ---- CLIP with region tokens -----------------------------------------------------------

-- 4. The additive mask of CLIP's blocks over [M region tokens; class; N
-- patches]: region token m sees the class token and its region's patches
-- (ids_g (gh*gw) on CLIP's grid, values[m] its id); the others see all but
-- the region tokens.
function recipe.region_token_mask(ids_g, values)
  local m, n = #values, ids_g:numel()
  local t = m + 1 + n
  local mask = T.zeros({ t, t })
  local mp, ip = mask:ptr(), ids_g:contiguous():ptr()
  for q = 0, t - 1 do
    for k = 0, m - 1 do mp[q * t + k] = -math.huge end
  end
  for r = 1, m do
    local row = (r - 1) * t
    for j = 0, n - 1 do
      if ip[j] ~= values[r] then mp[row + m + 1 + j] = -math.huge end
    end
  end
  return mask
end

-- v_proj(ln_1 h) of the patch tokens h (1, 1 + gh*gw, C), bilinearly
-- resized to the VFM grid → (fh*fw, C)
local function values_on(block, h, grid, vfm_grid)
  local gh, gw, fh, fw = grid[1], grid[2], vfm_grid[1], vfm_grid[2]
  local c = h:size(3)
  local v = nn.linear(block:ln1(h), block.value.weight, block.value.bias)
  local patches = v:narrow(2, 2, gh * gw):reshape(1, gh, gw, c):permute(1, 4, 2, 3):contiguous()
  local resized = nn.interpolate(patches, fh, fw, { mode = "bilinear" })
  return resized:reshape(c, fh * fw):t():contiguous()
end

function recipe.spatial_layers(params, depth)
  local n = params.spatial_layers or recipe.SPATIAL[depth] or depth - 4
  if type(n) ~= "number" or n ~= math.floor(n) or n < 1 or n > depth - 2 then
    error(("corrclip: spatial_layers = %s is outside 1..%d (a %d-block vision tower)"):format(
      tostring(n), depth - 2, depth), 0)
  end
  return n
end

-- 4.-6. x (1, 3, h, w) prepared for CLIP, A (N, N) and ids (fh, fw) on
-- the VFM grid → features (N, P)
function recipe.clip_features(state, x, attn, ids)
  local model, p = state.model, state.params
  local blocks = model.vision.layers
  local depth = #blocks
  local fh, fw = ids:size(1), ids:size(2)
  local tokens, gh, gw = model:embed_image(x, clipseg.SCLIP_POSITIONS)    -- (1, 1 + gh*gw, C)
  local ids_g = nearest(ids, gh, gw)
  local values = unique(ids_g)
  local m, c = #values, tokens:size(3)
  local parts = {}
  for r = 1, m do parts[r] = tokens:narrow(2, 1, 1) end                 -- a class token per region
  parts[m + 1] = tokens
  local h = T.cat(parts, 2)
  local mask = recipe.region_token_mask(ids_g:reshape(gh * gw), values)
  local n_spatial = recipe.spatial_layers(p, depth)
  local spatial
  for i = 1, depth - 1 do
    h = blocks[i]:forward(h, { mask = mask })
    if i >= depth - 1 - n_spatial and i <= depth - 2 then         -- blocks L-1-n_s .. L-2 (1-based)
      local out = h:narrow(2, m + 1, 1 + gh * gw)
      spatial = spatial and spatial:add_(out) or out:contiguous():clone()
    end
  end
  spatial:div_(n_spatial)
  local last = blocks[depth]
  local patches = h:narrow(2, m + 1, 1 + gh * gw):contiguous()
  -- 5. main and spatial branches through A, the semantic branch
  local main = last:out_proj(attn:matmul(values_on(last, patches, { gh, gw }, { fh, fw })):reshape(1, fh * fw, c))
  local spat = last:out_proj(attn:matmul(values_on(last, spatial, { gh, gw }, { fh, fw })):reshape(1, fh * fw, c))
  local region_tokens = last:forward(h, { mask = mask }):select(1, 1):narrow(1, 1, m):contiguous()   -- (M, C)
  local index = {}
  for r, v in ipairs(values) do index[v] = r end
  local spread = T.new({ fh * fw, c })
  local up = nearest(ids_g, fh, fw)                                     -- CLIP's grid back on the VFM's
  local sp, tp, upp = spread:ptr(), region_tokens:ptr(), up:contiguous():ptr()
  for i = 0, fh * fw - 1 do
    local r = index[upp[i]] - 1
    for k = 0, c - 1 do sp[i * c + k] = tp[r * c + k] end
  end
  -- 6. ln_post of each, weighted sum, projection
  local y = model:head(T.cat({ main, spat, spread:reshape(1, fh * fw, c) }, 1))     -- (3, N, P)
  local out = y:select(1, 1):contiguous()
  out:add_(y:select(1, 2) * p.alpha):add_(y:select(1, 3) * p.beta)
  return out
end

-- ---- the dense features ----------------------------------------------------------------

-- 1. F = normalise(q + k) of DINO's last block on the patches → (N, D), fh, fw
function recipe.vfm_correlation_features(vfm, xv)
  local opts = vfm:hub_positions()
  opts.qkv = true
  local out = vfm:encode_image(xv, opts)
  local q, k = out.qkv.q:select(1, 1), out.qkv.k:select(1, 1)
  local prefix = vfm.num_prefix_tokens
  local n = q:size(1) - prefix
  local f = q:narrow(1, prefix + 1, n) + k:narrow(1, prefix + 1, n)
  return nn.normalize(f), out.grid[1], out.grid[2]
end

function recipe.dense(state, x)
  local p = state.params
  local xv = proxyclip.vfm_input(x, p.unnorm_mean, p.unnorm_std, p.vfm_mean, p.vfm_std)
  local feats, fh, fw = recipe.vfm_correlation_features(state.vfm, xv)
  local s = feats:matmul(feats, false, true)                                -- S = F Fᵀ
  local ids = recipe.merge_regions(recipe.window_regions(state, fh, fw), feats, p.dbscan_eps,
                                   p.dbscan_min_samples)
  local attn = recipe.scope_attention(s, ids:reshape(fh * fw), p.tau)
  s:free()
  return recipe.clip_features(state, x, attn, ids), fh, fw
end

-- ---- the protocol and the map correction -------------------------------------------------

-- labels (H, W) int32 in place: every region of ids (H, W) but the lowest
-- id's takes its most frequent label, the smallest on ties (torch.mode)
function recipe.correct_labels(labels, ids)
  local values = unique(ids)
  local lp, ip = labels:ptr(), ids:contiguous():ptr()
  local n = labels:numel()
  local counts = {}
  for r = 2, #values do counts[values[r]] = {} end
  for i = 0, n - 1 do
    local c = counts[ip[i]]
    if c then c[lp[i]] = (c[lp[i]] or 0) + 1 end
  end
  local mode = {}
  for v, c in pairs(counts) do
    local best, best_n
    for label, k in pairs(c) do
      if not best or k > best_n or (k == best_n and label < best) then best, best_n = label, k end
    end
    mode[v] = best
  end
  for i = 0, n - 1 do
    local m = mode[ip[i]]
    if m then lp[i] = m end
  end
  return labels
end

function recipe.setup(params, models, classes)
  local vfm = models.vfm
  if vfm.vision_encoder or not vfm.hub_positions then
    error("corrclip: models.vfm must be DINO (CorrCLIP takes q + k of a DINO ViT's last block)", 0)
  end
  recipe.spatial_layers(params, #models.clip.vision.layers)
  local state = clipseg.setup(params, models.clip, classes, { dense = recipe.dense })
  state.vfm = vfm
  return state
end

function recipe.segment(state, img, regions)
  if not regions or regions.kind ~= "instances" then
    error("corrclip: needs region masks from `regions:` (a mask source such as sam_amg)", 0)
  end
  local h, w = img:size(1), img:size(2)
  local ids = recipe.region_map(regions, h, w)
  local ih, iw = clipseg.rescale_size(h, w, state.params.short_side, state.params.long_side or 2048)
  if (state.params.short_side or 0) <= 0 then ih, iw = h, w end
  state.input_regions = nearest(ids, ih, iw)
  local result = clipseg.segment(state, img)
  recipe.correct_labels(result.labels, ids)
  result.dump.regions = ids:int()
  return result
end

return recipe
