-- k-means on DINO / DINOv2 patch features: the plain unsupervised
-- segmentation baseline (as the kmeans_baseline of deep-spectral-
-- segmentation and the k-means of Amir et al.'s "Deep ViT Features as
-- Dense Visual Descriptors" use it).
--
-- Features of one block (its output tokens, or its attention keys,
-- queries or values), CLS and registers dropped; optionally L2-normalised
-- per patch and extended with the patch's position (row, column centres
-- in [0, 1], times pos_weight); k-means++ then Lloyd (scikit-learn's
-- KMeans). k is a number, or chosen per image in [k_min, k_max]:
--   "silhouette": the k of the highest mean silhouette (Euclidean, on the
--                 clustered features; the smallest k on ties);
--   "eigengap":   the largest gap among the k_max + 1 smallest eigenvalues
--                 of the normalized Laplacian of W = max(0, cos) over the
--                 clustered features (deep-spectral-segmentation's
--                 adaptive rule, gaps before k_min left out).
-- Segment ids are renumbered by first appearance in raster order. The
-- patch grid goes to the image by nearest patch (upsample "nearest") or
-- bilinear one-hot maps and argmax ("bilinear"). → kind "segments".
--
-- The feature → labels step is R.cluster(feats, gh, gw, params), a pure
-- function of a (gh*gw, C) matrix.
local cluster = require("fmseg.cluster")
local nn = require("fmseg.nn")
local patches = require("fmseg.patches")
local T = require("fmseg.tensor")

local R = {
  name = "dino_kmeans",
  needs = { "dino" },
  defaults = {
    layer = -1,              -- 1-based block, negative from the end
    feature = "tokens",      -- tokens | keys | queries | values
    norm = true,             -- tokens through the final layernorm (get_intermediate_layers)
    normalize = true,        -- L2-normalise each patch's features
    pos_weight = 0,          -- weight of the (row, column) features; 0: none
    k = 6,                   -- clusters, or "silhouette" / "eigengap"
    k_min = 2,
    k_max = 10,
    n_init = 10,             -- scikit-learn KMeans' defaults
    max_iter = 300,
    tol = 1e-4,
    seed = 0,
    upsample = "nearest",    -- nearest | bilinear
    fit = "pad",             -- pad | crop: the image to a multiple of the patch
    resize = false,          -- shorter side in pixels, false: full size
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

-- feats (N, C), N = gh * gw → labels (gh, gw) int32 in [0, k), k
function R.cluster(feats, gh, gw, params)
  local x = R.prepare(feats, gh, gw, params)
  local k, labels = R.choose_k(x, params)
  labels = labels or kmeans(x, k, params)
  return by_appearance(labels, gh, gw), k
end

function R.setup(params, models)
  if not FEATURES[params.feature] then
    error(("dino_kmeans: feature must be tokens, keys, queries or values, got %s"):format(tostring(params.feature)), 0)
  end
  return { params = params, model = models.dino }
end

function R.segment(state, img)
  local p, model = state.params, state.model
  local x, frame = patches.input(img, model.patch_size, { fit = p.fit, resize = p.resize or nil })
  local feats = patches.features(model, x, FEATURES[p.feature], { layer = p.layer, norm = p.norm })
  local grid = R.cluster(feats, frame.gh, frame.gw, p)
  return { kind = "segments", labels = patches.to_image(grid, frame, p.upsample),
           dump = { patch_labels = grid:float() } }
end

return R
