-- Deep Spectral Methods (Melas-Kyriazi et al., CVPR 2022): eigenvectors of
-- the Laplacian of DINO patch affinities segment the image.
-- ref: lukemelas/deep-spectral-segmentation, extract/extract.py
--      (extract_features, _extract_eig, _extract_single_region_segmentations,
--      _extract_multi_region_segmentations) and extract/extract_utils.py
--      (get_border_fraction, get_diagonal)
--
-- Keys of a block (CLS dropped), L2-normalised; W = max(0, F Fᵀ) / max;
-- D = diag(row sums); the K smallest eigenpairs of (D − W) y = λ D y
-- (lapnorm; else of D − W); each eigenvector's sign is flipped when more
-- than half but not all of it is positive.
--   mode "multi_region": k-means (non_adaptive_num_segments clusters, or
--   the largest eigengap when adaptive) on the non-constant eigenvectors;
--   the segment with the most border patches becomes 0 (background).
--   → kind "segments".
--   mode "single_region": eigenvector 1 (the Fiedler vector) > threshold;
--   after the sign rule the positive side is the smaller one.
--   → kind "segments", 1 = foreground, 0 = background.
-- The official code stops at the patch grid; its CRF step
-- (_extract_crf_segmentations, not part of this recipe) first brings the
-- grid to the image: cv2.resize INTER_NEAREST to the image, then the
-- patch blocks written over the cropped part. upsample "nearest" does
-- exactly that (R.to_image; the strip beyond the crop takes cv2's rows and
-- columns, not the nearest patch's); "bilinear": bilinear one-hot.
--
-- The official code solves the eigenproblem with ARPACK (eigsh,
-- shift-invert, in float32 since the affinities are float32); ours is a
-- dense double-precision solve of the same problem: the eigenvectors
-- agree to 1e-6 of their largest entry with K <= 5 and 1.3e-5 with K = 20
-- (ARPACK's float32 convergence; tests/fixtures/methods/deep_spectral-*). Its k-means is scikit-learn's KMeans without a
-- random_state; with `seed` s ours draws numpy's stream, so the segments
-- are exactly those of a run under np.random.seed(s). Position
-- embeddings: positions "hub" resamples them as DINO's torch.hub code
-- does (what extract_features loads).
--
-- The colour affinity of the paper (image_color_lambda > 0, a KNN matting
-- affinity through pymatting) is not implemented: asking for it is an
-- error. Its default in extract_eigs is 0.
--
-- segment_features (multi_region): the semantic protocol's per-image part
-- (extract_bboxes, extract_bbox_features): result.segment_features =
-- {{id, box = {x0, y0, x1, y1} in pixels, feature = (C) CLS output}, ...}
-- for the segments > 0; `fmseg eval` with eval.protocol dataset_clusters
-- clusters them over the dataset (configs/deep_spectral/
-- deep_spectral_dino-s16_voc21-semantic.yaml). upsample "cv2" brings the
-- patch map to pixels as eval.py does when there is no CRF.
--
-- Object localisation (one box from eigenvector 1) is
-- recipes/deep_spectral_loc.lua. dump: eigenvalues, eigenvectors (K, gh,
-- gw), eigenvector (1, the Fiedler vector), segments (the label map).
--
-- Pure steps: R.eigs(feats, gh, gw, params), R.single_region(vecs, gh,
-- gw, params), R.multi_region(vals, vecs, gh, gw, params, feats),
-- R.background_first(grid), R.to_image(grid, frame).
local cluster = require("fmseg.cluster")
local nn = require("fmseg.nn")
local patches = require("fmseg.method.patches")
local T = require("fmseg.tensor")

local R = {
  name = "deep_spectral",
  needs = { "dino" },
  defaults = {
    mode = "multi_region",          -- multi_region | single_region
    -- extract_features / extract_eigs
    which_block = -1,               -- block whose qkv is read (-1: last)
    which_features = "k",           -- k, q or v
    normalize = true,               -- L2-normalise the features
    threshold_at_zero = true,       -- W = W * (W > 0)
    lapnorm = true,                 -- generalized problem with D (normalized Laplacian)
    K = 20,                         -- eigenpairs computed
    image_downsample_factor = false, -- false: the patch size (features on the patch grid)
    image_color_lambda = 0.0,       -- weight of the KNN colour affinity (not implemented)
    which_color_matrix = "knn",
    -- extract_single_region_segmentations
    threshold = 0.0,
    -- extract_multi_region_segmentations
    adaptive = false,               -- number of segments from the largest eigengap
    non_adaptive_num_segments = 4,
    infer_bg_index = true,          -- the segment touching the border most becomes 0
    kmeans_baseline = false,        -- k-means on the features instead of the eigenvectors
    num_eigenvectors = 1000000,     -- eigenvectors 1 .. num_eigenvectors go to k-means
    -- scikit-learn KMeans' defaults; seed: numpy's global seed (the official
    -- code leaves it unset)
    n_init = 10,
    max_iter = 300,
    seed = 0,
    -- the semantic protocol (`eval: {protocol: dataset_clusters}`): per segment > 0, a box
    -- around it on the patch grid (eroded num_erode, then dilated num_dilate times by a
    -- cross, never to nothing: extract_bboxes) and the DINO CLS output of that crop of the
    -- image (extract_bbox_features)
    segment_features = false,
    num_erode = 2,
    num_dilate = 5,
    upsample = "nearest",           -- nearest | bilinear | cv2 (patch grid → image; cv2:
                                    -- cv2.resize INTER_NEAREST to H x W, what the official
                                    -- eval.py does to patch-level maps without a CRF)
    resize = false,                 -- shorter side in pixels first (not in the official code)
    positions = "hub",              -- position resampling: "hub" (DINO's torch.hub code, as
                                    -- the official code runs) or "transformers" (ViTModel)
  },
}

local MODES = { multi_region = true, single_region = true }

-- feats (N, C) on a gh x gw grid → eigenvalues (K), eigenvectors (K, N') as
-- rows, gh', gw' (the grid the eigenvectors live on: the patch grid, or a
-- finer one when image_downsample_factor < patch). params.patch is the
-- patch size (needed only with image_downsample_factor).
function R.eigs(feats, gh, gw, params)
  if params.image_color_lambda > 0 then
    error("deep_spectral: image_color_lambda > 0 (the KNN colour affinity) is not implemented", 0)
  end
  local f = params.normalize and nn.normalize(feats) or feats
  local factor = params.image_downsample_factor
  if factor and factor ~= params.patch then
    -- features upsampled bilinearly to the grid of `factor`-pixel cells
    local c = f:size(2)
    local lh, lw = math.floor(gh * params.patch / factor), math.floor(gw * params.patch / factor)
    local grid = f:t():contiguous():reshape(1, c, gh, gw)
    f = nn.interpolate(grid, lh, lw, { mode = "bilinear" }):reshape(c, lh * lw):t():contiguous()
    gh, gw = lh, lw
  end
  local W = f:matmul(f, false, true)
  if params.threshold_at_zero then W = W:maximum(0) end
  W = W / W:max()
  local n = W:size(1)
  local k = math.min(params.K, n)
  local vals, vecs
  if params.lapnorm then
    -- get_diagonal: row sums below 1e-12 become 1
    vals, vecs = cluster.laplacian_eigs(W, { first = 0, count = k, min_degree = 1e-12 })
  else
    local L = cluster.diag(W:sum(2)) - W
    vals, vecs = cluster.eigh(L)
    vals, vecs = vals:narrow(1, 1, k):contiguous(), vecs:narrow(1, 1, k):contiguous()
  end
  -- sign ambiguity: flip when 0.5 < fraction positive < 1
  local frac = vecs:gt(0):mean(2):values()
  local flip = {}
  for i = 1, k do flip[i] = (frac[i] > 0.5 and frac[i] < 1) and -1 or 1 end
  vecs = vecs * T.from_table(flip):reshape(k, 1)
  return vals, vecs, gh, gw
end

-- eigenvector 1 (0-based; the second smallest) > threshold → (gh, gw) uint8
function R.single_region(vecs, gh, gw, params)
  return vecs:select(1, 2):gt(params.threshold):reshape(gh, gw):byte()
end

-- get_border_fraction + the swap: the label with the most patches on the
-- four borders (corners count twice; the smallest label on ties) trades
-- places with label 0. grid (gh, gw) int32 → a new grid.
function R.background_first(grid)
  local gh, gw = grid:size(1), grid:size(2)
  local g = grid:int():contiguous()
  local p, counts = g:ptr(), {}
  local function add(r, c) local l = p[r * gw + c]; counts[l] = (counts[l] or 0) + 1 end
  for r = 0, gh - 1 do add(r, 0); add(r, gw - 1) end
  for c = 0, gw - 1 do add(0, c); add(gh - 1, c) end
  local bg, best = nil, -1
  for l, n in pairs(counts) do
    if n > best or (n == best and l < bg) then bg, best = l, n end
  end
  if bg == 0 then return g end
  local f = g:float()
  local is_bg, is_zero = f:eq(bg), f:eq(0)
  return (f - is_bg * bg + is_zero * bg):int()
end

-- → (gh, gw) int32 segment ids in [0, n), and n. feats: the features the
-- eigenvectors came from (kmeans_baseline clusters them instead).
function R.multi_region(vals, vecs, gh, gw, params, feats)
  local n_clusters = params.adaptive and cluster.eigengap(vals) or params.non_adaptive_num_segments
  local x
  if params.kmeans_baseline then
    x = feats
  else
    local m = math.min(params.num_eigenvectors, vecs:size(1) - 1)
    x = vecs:narrow(1, 2, m):t():contiguous()   -- skip the constant one
  end
  local labels = cluster.kmeans(x, n_clusters, { n_init = params.n_init, max_iter = params.max_iter,
                                                 seed = params.seed })
  local grid = labels:reshape(gh, gw)
  if params.infer_bg_index then grid = R.background_first(grid) end
  return grid, n_clusters
end

-- cv2.resize(src, (w, h), interpolation=INTER_NEAREST) source index of
-- destination index i: floor(i * (1 / (dst / src))) in double, as resizeNN
local function cv2_nearest(i, src, dst)
  return math.min(math.floor(i * (1 / (dst / src))), src - 1)
end

-- grid (gh, gw) labels → (H, W) int32 as _extract_crf_segmentations
-- upsamples them before its CRF: cv2 nearest to H x W, then cv2 nearest to
-- the cropped H_pad x W_pad written over its top-left part. Other frames
-- (resize, image_downsample_factor) fall back to patches.to_image.
function R.to_image(grid, frame)
  local h, w, gh, gw = frame.h, frame.w, frame.gh, frame.gw
  local hp, wp = gh * frame.patch, gw * frame.patch
  if frame.rh ~= h or frame.rw ~= w or hp > h or wp > w then return patches.to_image(grid, frame, "nearest") end
  local g = grid:int():contiguous()
  local out = T.new({ h, w }, "int32")
  local gp, op = g:ptr(), out:ptr()
  for y = 0, h - 1 do
    local inside = y < hp
    local sy_pad, sy = inside and cv2_nearest(y, gh, hp), cv2_nearest(y, gh, h)
    for x = 0, w - 1 do
      if inside and x < wp then
        op[y * w + x] = gp[sy_pad * gw + cv2_nearest(x, gw, wp)]
      else
        op[y * w + x] = gp[sy * gw + cv2_nearest(x, gw, w)]
      end
    end
  end
  return out
end

-- extract_bboxes / _extract_bbox on the patch grid: for each segment id > 0
-- (ascending), its mask eroded num_erode times, then dilated num_dilate
-- times (skimage's binary_erosion / binary_dilation, a cross; a step that
-- would empty the mask is skipped), and its box in patches {x0, y0, x1, y1}
-- (x1, y1 exclusive). → { {id = s, box = {...}}, ... }
function R.segment_boxes(grid, params)
  local masks = require("fmseg.masks")
  local g = grid:int():contiguous()
  local gh, gw = g:size(1), g:size(2)
  local gp, present = g:ptr(), {}
  for i = 0, gh * gw - 1 do present[gp[i]] = true end
  local ids = {}
  for id in pairs(present) do if id > 0 then ids[#ids + 1] = id end end
  table.sort(ids)
  local out = {}
  for _, id in ipairs(ids) do
    local m = g:float():eq(id):byte()
    local function steps(n, op)
      for _ = 1, n do
        local nm = op(m, 1, "cross")
        if nm:float():sum() > 0 then m = nm end
      end
    end
    steps(params.num_erode, masks.erode)
    steps(params.num_dilate, masks.dilate)
    local mp = m:contiguous():ptr()
    local x0, y0, x1, y1 = math.huge, math.huge, -1, -1
    for r = 0, gh - 1 do
      for c = 0, gw - 1 do
        if mp[r * gw + c] ~= 0 then
          x0, y0, x1, y1 = math.min(x0, c), math.min(y0, r), math.max(x1, c), math.max(y1, r)
        end
      end
    end
    out[#out + 1] = { id = id, box = { x0, y0, x1 + 1, y1 + 1 } }
  end
  return out
end

-- extract_bbox_features: the model's output (CLS after the final norm) on
-- the crop rows y0 P .. y1 P, columns x0 P .. x1 P of the normalised image x
-- (1, 3, H', W'), positions resampled for the crop's grid. → (C) float32
function R.box_feature(model, x, box, patch, positions)
  local crop = x:narrow(3, box[2] * patch + 1, (box[4] - box[2]) * patch)
               :narrow(4, box[1] * patch + 1, (box[3] - box[1]) * patch):contiguous()
  local enc = positions == "hub" and model:hub_positions() or {}
  local out = model:encode_image(crop, enc)
  return out.last_hidden_state:select(1, 1):select(1, 1):contiguous()
end

-- grid (gh, gw) → (H, W) int32 by cv2.resize INTER_NEAREST straight to the
-- image (semantic-segmentation/dataset/voc.py, _resize_pseudolabel)
function R.to_image_cv2(grid, frame)
  local h, w, gh, gw = frame.h, frame.w, grid:size(1), grid:size(2)
  local g = grid:int():contiguous()
  local out = T.new({ h, w }, "int32")
  local gp, op = g:ptr(), out:ptr()
  for y = 0, h - 1 do
    local sy = cv2_nearest(y, gh, h)
    for x = 0, w - 1 do op[y * w + x] = gp[sy * gw + cv2_nearest(x, gw, w)] end
  end
  return out
end

function R.setup(params, models)
  if not MODES[params.mode] then
    error(("deep_spectral: mode must be multi_region or single_region, got %s"):format(tostring(params.mode)), 0)
  end
  local known = { k = true, q = true, v = true }
  if not known[params.which_features] then
    error(("deep_spectral: which_features must be k, q or v, got %s"):format(tostring(params.which_features)), 0)
  end
  if params.which_color_matrix ~= "knn" and params.which_color_matrix ~= "rw" then
    error(("deep_spectral: which_color_matrix must be knn or rw, got %s"):format(tostring(params.which_color_matrix)), 0)
  end
  if params.image_color_lambda > 0 then
    error("deep_spectral: image_color_lambda > 0 (the KNN colour affinity) is not implemented", 0)
  end
  patches.check_positions("deep_spectral", params.positions)
  local p = {}
  for k, v in pairs(params) do p[k] = v end
  p.patch = models.dino.patch_size
  return { params = p, model = models.dino }
end

-- img → the patch features of extract_features (the image cropped to a
-- multiple of the patch size), x, frame; deep_spectral_loc shares it.
function R.features(state, img)
  local p, model = state.params, state.model
  local x, frame = patches.input(img, model.patch_size, { fit = "crop", resize = p.resize or nil })
  local feats = patches.features(model, x, p.which_features, { layer = p.which_block, positions = p.positions })
  return feats, x, frame
end

function R.segment(state, img)
  local p, model = state.params, state.model
  local feats, x, frame = R.features(state, img)
  local vals, vecs, gh, gw = R.eigs(feats, frame.gh, frame.gw, p)
  if gh ~= frame.gh then
    -- eigenvectors on the finer grid of image_downsample_factor cells
    frame.patch, frame.gh, frame.gw = p.image_downsample_factor, gh, gw
  end
  local grid
  if p.mode == "single_region" then
    grid = R.single_region(vecs, gh, gw, p)
  else
    if p.kmeans_baseline and gh * gw ~= feats:size(1) then
      error("deep_spectral: kmeans_baseline needs features on the eigenvector grid (no image_downsample_factor)", 0)
    end
    grid = R.multi_region(vals, vecs, gh, gw, p, feats)
  end
  local labels
  if p.upsample == "nearest" then
    labels = R.to_image(grid, frame)
  elseif p.upsample == "cv2" then
    labels = R.to_image_cv2(grid, frame)
  else
    labels = patches.to_image(grid, frame, p.upsample)
  end
  local features
  if p.segment_features then
    if p.mode ~= "multi_region" or gh ~= frame.gh or frame.rh ~= frame.h or frame.rw ~= frame.w then
      error("deep_spectral: segment_features needs mode multi_region on the patch grid of the image "
        .. "(no resize, no image_downsample_factor)", 0)
    end
    features = R.segment_boxes(grid, p)
    for _, s in ipairs(features) do
      local b = s.box
      s.box = { b[1] * frame.patch, b[2] * frame.patch, b[3] * frame.patch, b[4] * frame.patch }
      s.feature = R.box_feature(model, x, b, frame.patch, p.positions)
    end
  end
  return {
    kind = "segments",
    labels = labels,
    segment_features = features,
    dump = { eigenvalues = vals, eigenvectors = vecs:reshape(vecs:size(1), gh, gw),
             eigenvector = vecs:select(1, 2):reshape(gh, gw), segments = labels },
  }
end

return R
