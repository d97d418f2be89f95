-- fmseg.cluster — clustering and spectral tools over feature matrices:
-- k-means (scikit-learn's KMeans with k-means++), the silhouette score,
-- symmetric and generalized symmetric eigenproblems (LAPACK), and the
-- graph pieces that normalized cuts and spectral clustering share.
-- Thin wrappers over core/cluster.c.
--
--   local cluster = require("fmseg.cluster")
--   local labels, centers = cluster.kmeans(x, 4, { seed = 0 })   -- x (N, D)
--   local w, v = cluster.eigh(a)                  -- v:select(1, i): i-th eigenvector
--   local w, v = cluster.laplacian_eigs(W, { first = 0, count = 3 })
--
-- Labels are 0-based int32 tensors; eigenvalues ascend and eigenvectors are
-- the ROWS of v.
local core = require("fmseg.core")
local T = require("fmseg.tensor")
local ffi, C, check = core.ffi, core.C, core.check

local M = {}

local function matrix(x, what)
  if not T.is_tensor(x) then error(what .. ": expected a tensor, got " .. type(x), 3) end
  if x:dim() ~= 2 then error(what .. ": expected a matrix, got " .. T.shape_string(x:shape()), 3) end
  if x:dtype() ~= "float32" then x = x:float() end
  return x:is_contiguous() and x or x:contiguous()
end

-- x (N, D), c (K, D) → (N, K) squared Euclidean distances
function M.sq_distances(x, c)
  x, c = matrix(x, "sq_distances"), matrix(c, "sq_distances")
  local out = T.new({ x:size(1), c:size(1) })
  check(C.fm_sq_distances(out, x, c), "sq_distances")
  return out
end

-- kmeans(x (N, D), k, opts) → labels (N) int32 in [0, k), centers (K, D),
-- inertia. opts (scikit-learn's names and defaults): max_iter (300), tol
-- (1e-4), n_init (10), seed (0; below 2^32: the labels are scikit-learn's
-- KMeans(k).fit_predict(x) under np.random.seed(seed), the same numpy
-- MT19937 draws).
function M.kmeans(x, k, opts)
  opts = opts or {}
  x = matrix(x, "kmeans")
  if type(k) ~= "number" or k % 1 ~= 0 then error("kmeans: k must be an integer, got " .. tostring(k), 2) end
  local labels = T.new({ x:size(1) }, "int32")
  local centers = T.new({ k, x:size(2) })
  local inertia = ffi.new("double[1]")
  check(C.fm_kmeans(labels, centers, x, k, opts.max_iter or 300, opts.tol or 1e-4, opts.n_init or 10,
                    opts.seed or 0, inertia), "kmeans")
  return labels, centers, inertia[0]
end

-- Mean silhouette (scikit-learn's silhouette_score, Euclidean) of labels
-- (N) in [0, k) over x (N, D).
function M.silhouette(x, labels, k)
  x = matrix(x, "silhouette")
  labels = labels:dtype() == "int32" and labels:contiguous() or labels:int()
  k = k or (labels:float():max() + 1)
  local score = ffi.new("double[1]")
  check(C.fm_silhouette(score, x, labels, k), "silhouette")
  return score[0]
end

-- a (N, N) symmetric → w (N) ascending, v (N, N) rows = unit eigenvectors
function M.eigh(a)
  a = matrix(a, "eigh")
  local n = a:size(1)
  local w, v = T.new({ n }), T.new({ n, n })
  check(C.fm_eigh(w, v, a), "eigh")
  return w, v
end

-- a y = λ b y with b positive definite → w ascending, v rows b-orthonormal
-- (scipy.linalg.eigh(a, b)). opts.first (0-based) and opts.count: only
-- those eigenpairs (scipy's subset_by_index = [first, first + count - 1]),
-- solved in double precision.
function M.eigh_generalized(a, b, opts)
  opts = opts or {}
  a, b = matrix(a, "eigh_generalized"), matrix(b, "eigh_generalized")
  local n = a:size(1)
  if opts.count then
    local first = opts.first or 0
    local w, v = T.new({ opts.count }), T.new({ opts.count, n })
    check(C.fm_eigh_generalized_subset(w, v, a, b, first, opts.count), "eigh_generalized")
    return w, v
  end
  local w, v = T.new({ n }), T.new({ n, n })
  check(C.fm_eigh_generalized(w, v, a, b), "eigh_generalized")
  return w, v
end

-- Graphs -----------------------------------------------------------------------

-- d (N) → the (N, N) matrix with d on its diagonal
function M.diag(d)
  d = d:contiguous()
  local n = d:numel()
  local out = T.new({ n, n })
  local src, dst = d:ptr(), out:ptr()
  for i = 0, n - 1 do dst[i * n + i] = src[i] end
  return out
end

-- Row-wise cosine similarities: x (N, D) → (N, N) = x̂ x̂ᵀ
function M.cosine_affinity(x)
  local nn = require("fmseg.nn")
  local xn = nn.normalize(matrix(x, "cosine_affinity"))
  return xn:matmul(xn, false, true)
end

-- Normalized-cut eigenproblem of an affinity W (N, N): (D − W) y = λ D y
-- with D = diag(row sums of W) (Shi and Malik); row sums below
-- opts.min_degree (default none) are replaced by 1, as deep-spectral-
-- segmentation's get_diagonal does. opts.first / opts.count select
-- eigenpairs as in eigh_generalized. Returns w, v (rows), degrees.
function M.laplacian_eigs(W, opts)
  opts = opts or {}
  W = matrix(W, "laplacian_eigs")
  local deg = W:sum(2)
  if opts.min_degree then
    local small = deg:lt(opts.min_degree)
    deg = deg * (1 - small) + small
  end
  local D = M.diag(deg)
  local w, v = M.eigh_generalized(D - W, D, opts)
  return w, v, deg
end

-- Number of clusters from the largest gap between consecutive eigenvalues
-- w (ascending), deep-spectral-segmentation's "adaptive" rule: among the
-- gaps w[i+1] − w[i] (0-based i), leaving out i = 0, the largest gives
-- i + 1 clusters; equal gaps go to the larger i (numpy's argsort reversed).
-- k_min (default 2) leaves out the gaps that would give fewer clusters.
function M.eigengap(w, k_min)
  local vals = w:values()
  local best_i, best_gap = nil, -math.huge
  for i = math.max(1, (k_min or 2) - 1), #vals - 2 do
    local gap = vals[i + 2] - vals[i + 1]     -- 0-based w[i + 1] − w[i]
    if gap >= best_gap then best_i, best_gap = i, gap end
  end
  if not best_i then
    error(("eigengap: %d eigenvalues give no gap for %d or more clusters"):format(#vals, k_min or 2), 2)
  end
  return best_i + 1
end

return M
