-- k-means on DINO / DINOv2 patch features: the plain unsupervised
-- segmentation baseline. The defaults are deep-spectral-segmentation's
-- k-means baseline (extract.py, extract_multi_region_segmentations
-- --kmeans_baseline, on the keys extract_features saves): the last
-- block's keys, raw (no layernorm, no L2 normalisation), of the image
-- cropped to a multiple of the patch; scikit-learn KMeans(n_clusters=4)
-- (k-means++, n_init 10); the segment on most border patches trades ids
-- with 0 (infer_bg_index); the grid goes to the image as that code base's
-- CRF step upsamples it (deep_spectral.to_image). With `seed` s the labels
-- are scikit-learn's under np.random.seed(s) (fmseg.cluster.kmeans draws
-- numpy's MT19937 stream); the official code leaves the global seed unset.
-- The other reference, Amir et al.'s "Deep ViT Features as Dense Visual
-- Descriptors" (ShirAmir/dino-vit-features), is
-- configs/dino_kmeans/dino_kmeans_dino-s8_amir-voc21.yaml, with what it
-- leaves out listed there.
--
-- Features of one block (its output tokens, or its attention keys,
-- queries or values), CLS and registers dropped; optionally through the
-- final layernorm (norm), L2-normalised per patch (normalize) and
-- extended with the patch's position (row, column centres in [0, 1],
-- times pos_weight); k-means++ then Lloyd (scikit-learn's KMeans). k is a
-- number, or chosen per image in [k_min, k_max]:
--   "silhouette": the k of the highest mean silhouette (Euclidean, on the
--                 clustered features; the smallest k on ties);
--   "eigengap":   the largest gap among the k_max + 1 smallest eigenvalues
--                 of the normalized Laplacian of W = max(0, cos) over the
--                 clustered features (deep-spectral-segmentation's
--                 adaptive rule, gaps before k_min left out).
-- Segment ids: k-means' own (order "kmeans"), or renumbered by first
-- appearance in raster order ("appearance"); then, with background, the
-- border-most segment swapped with 0. upsample "nearest" (the official
-- upsampling when fit is "crop", the nearest patch otherwise) or
-- "bilinear" one-hot maps and argmax. → kind "segments".
--
-- The feature → labels step is R.cluster(feats, gh, gw, params), a pure
-- function of a (gh*gw, C) matrix.
local cluster = require("fmseg.cluster")
local nn = require("fmseg.nn")
local patches = require("fmseg.method.patches")
local T = require("fmseg.tensor")
local deep_spectral = require("fmseg.method.recipes").load("deep_spectral")

local R = {
  name = "dino_kmeans",
  needs = { "dino" },
  defaults = {
    layer = -1,              -- 1-based block, negative from the end
    feature = "keys",        -- tokens | keys | queries | values
    norm = false,            -- tokens through the final layernorm (get_intermediate_layers)
    normalize = false,       -- L2-normalise each patch's features
    pos_weight = 0,          -- weight of the (row, column) features; 0: none
    k = 4,                   -- clusters (non_adaptive_num_segments), or "silhouette" / "eigengap"
    k_min = 2,
    k_max = 10,
    n_init = 10,             -- scikit-learn KMeans' defaults
    max_iter = 300,
    tol = 1e-4,
    seed = 0,                -- numpy's global seed for scikit-learn's draws
    order = "kmeans",        -- kmeans | appearance: segment ids before the background swap
    background = true,       -- the border-most segment becomes 0 (infer_bg_index)
    upsample = "nearest",    -- nearest | bilinear
    fit = "crop",            -- pad | crop: the image to a multiple of the patch
    resize = false,          -- shorter side in pixels, false: full size
    positions = "hub",       -- position resampling: "hub" (DINO's torch.hub code) or
                             -- "transformers" (ViTModel)
  },
}

local FEATURES = { tokens = "tokens", keys = "k", queries = "q", values = "v" }

-- (N, C) → the matrix k-means sees
function R.prepare(feats, gh, gw, params)
  local x = params.normalize and nn.normalize(feats) or feats
  if params.pos_weight and params.pos_weight ~= 0 then
    local pos = T.new({ gh * gw, 2 })
    local p = pos:ptr()
    for r = 0, gh - 1 do
      for c = 0, gw - 1 do
        local i = r * gw + c
        p[2 * i], p[2 * i + 1] = (r + 0.5) / gh * params.pos_weight, (c + 0.5) / gw * params.pos_weight
      end
    end
    x = T.cat({ x, pos }, 2)
  end
  return x
end

local function kmeans(x, k, params)
  return cluster.kmeans(x, k, { n_init = params.n_init, max_iter = params.max_iter, tol = params.tol,
                                seed = params.seed })
end

-- The number of clusters for x (N, D), and the labels when a search made them.
function R.choose_k(x, params)
  local k, n = params.k, x:size(1)
  if type(k) == "number" then return k end
  local lo, hi = params.k_min, math.min(params.k_max, n - 1)
  if lo < 2 or hi < lo then
    error(("dino_kmeans: k_min %d .. k_max %d over %d patches"):format(params.k_min, params.k_max, n), 0)
  end
  if k == "silhouette" then
    local best, best_k, best_labels = -math.huge, nil, nil
    for kk = lo, hi do
      local labels = kmeans(x, kk, params)
      local s = cluster.silhouette(x, labels, kk)
      if s > best then best, best_k, best_labels = s, kk, labels end
    end
    return best_k, best_labels
  elseif k == "eigengap" then
    local xn = nn.normalize(x)
    local W = xn:matmul(xn, false, true):maximum(0)
    local vals = cluster.laplacian_eigs(W, { first = 0, count = math.min(hi + 1, n), min_degree = 1e-12 })
    return cluster.eigengap(vals, lo)
  end
  error(("dino_kmeans: k must be a number, \"silhouette\" or \"eigengap\", got %s"):format(tostring(k)), 0)
end

-- Renumbers labels (N) by first appearance → (gh, gw) int32.
local function by_appearance(labels, gh, gw)
  local out = T.new({ gh, gw }, "int32")
  local src, dst, map, next_id = labels:ptr(), out:ptr(), {}, 0
  for i = 0, gh * gw - 1 do
    local l = src[i]
    if not map[l] then map[l], next_id = next_id, next_id + 1 end
    dst[i] = map[l]
  end
  return out
end

local ORDERS = { kmeans = true, appearance = true }

-- feats (N, C), N = gh * gw → labels (gh, gw) int32 in [0, k), k
function R.cluster(feats, gh, gw, params)
  local x = R.prepare(feats, gh, gw, params)
  local k, labels = R.choose_k(x, params)
  labels = labels or kmeans(x, k, params)
  local grid = params.order == "appearance" and by_appearance(labels, gh, gw) or labels:reshape(gh, gw)
  if params.background then grid = deep_spectral.background_first(grid) end
  return grid, k
end

function R.setup(params, models)
  if not FEATURES[params.feature] then
    error(("dino_kmeans: feature must be tokens, keys, queries or values, got %s"):format(tostring(params.feature)), 0)
  end
  patches.check_positions("dino_kmeans", params.positions)
  if not ORDERS[params.order] then
    error(("dino_kmeans: order must be kmeans or appearance, got %s"):format(tostring(params.order)), 0)
  end
  return { params = params, model = models.dino }
end

function R.segment(state, img)
  local p, model = state.params, state.model
  local x, frame = patches.input(img, model.patch_size, { fit = p.fit, resize = p.resize or nil })
  local feats = patches.features(model, x, FEATURES[p.feature], { layer = p.layer, norm = p.norm,
                                                                  positions = p.positions })
  local grid = R.cluster(feats, frame.gh, frame.gw, p)
  local labels = p.upsample == "nearest" and deep_spectral.to_image(grid, frame)
                 or patches.to_image(grid, frame, p.upsample)
  return { kind = "segments", labels = labels, dump = { patch_labels = grid:float(), segments = labels } }
end

return R
