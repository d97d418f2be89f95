-- fmseg.cluster — clustering and spectral tools over feature matrices:
-- k-means (scikit-learn's KMeans with k-means++), the silhouette score,
-- symmetric and generalized symmetric eigenproblems (LAPACK), and the
-- graph pieces that normalized cuts and spectral clustering share: thin
-- wrappers over core/cluster.c. DBSCAN (scikit-learn's, on points or on a
-- precomputed distance matrix) is written here in Lua: it runs on a few
-- hundred rows at most (CLIPtrase's patches, CorrCLIP's regions).
--
--   local cluster = require("fmseg.cluster")
--   local labels, centers = cluster.kmeans(x, 4, { seed = 0 })   -- x (N, D)
--   local w, v = cluster.eigh(a)                  -- v:select(1, i): i-th eigenvector
--   local w, v = cluster.laplacian_eigs(W, { first = 0, count = 3 })
--
-- Labels are 0-based int32 tensors (DBSCAN's: 0-based Lua arrays, −1 for
-- noise); eigenvalues ascend and eigenvectors are the ROWS of v.
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

-- minibatch_kmeans(x (N, D), k, opts) → labels (N) int32, centers (K, D),
-- inertia: scikit-learn's MiniBatchKMeans(k, batch_size, max_iter,
-- random_state = seed, n_init, max_no_improvement, reassignment_ratio)
-- .fit_predict(x), defaults as scikit-learn 1.2's (1024, 100, 0, 3, 10,
-- 0.01). Rows are not centred (MiniBatchKMeans does not centre).
function M.minibatch_kmeans(x, k, opts)
  opts = opts or {}
  x = matrix(x, "minibatch_kmeans")
  if type(k) ~= "number" or k % 1 ~= 0 then error("minibatch_kmeans: k must be an integer, got " .. tostring(k), 2) end
  local labels = T.new({ x:size(1) }, "int32")
  local centers = T.new({ k, x:size(2) })
  local inertia = ffi.new("double[1]")
  check(C.fm_minibatch_kmeans(labels, centers, x, k, opts.batch_size or 1024, opts.max_iter or 100,
                              opts.n_init or 3, opts.max_no_improvement or 10, opts.reassignment_ratio or 0.01,
                              opts.seed or 0, inertia), "minibatch_kmeans")
  return labels, centers, inertia[0]
end

-- pca(x (N, D), n, opts) → (N, n) float32: scikit-learn's PCA(n)
-- .fit_transform(x): x minus its float32 column means, then
--   opts.solver "full": sgesdd's thin SVD, signs by svd_flip (each column
--   of U made positive at its largest |entry|), U[:, :n] * S[:n];
--   "randomized": randomized_svd (10 oversamples, 7 power iterations when
--   n < D / 10 else 4, LU normalisation) with numpy's RandomState(opts.seed)
--   (scikit-learn draws from np.random's global state: PCA(n) after
--   np.random.seed(seed));
--   "auto" (default): scikit-learn's choice, full when N and D are at most
--   500 or n >= 0.8 min(N, D), else randomized.
-- Also returns the components (n, D), the mean (D) and the solver used.
function M.pca(x, n, opts)
  opts = opts or {}
  x = matrix(x, "pca")
  local rows, d = x:size(1), x:size(2)
  if type(n) ~= "number" or n % 1 ~= 0 or n < 1 or n > math.min(rows, d) then
    error(("pca: n_components = %s must be an integer in [1, min(%d, %d)]"):format(tostring(n), rows, d), 2)
  end
  -- np.mean over axis 0 in float32: rows added in order, then divided by N
  local xc = x:clone()
  local p = xc:ptr()
  local mean = T.zeros({ d })
  local mp = mean:ptr()
  for i = 0, rows - 1 do
    for j = 0, d - 1 do mp[j] = mp[j] + p[i * d + j] end
  end
  for j = 0, d - 1 do mp[j] = mp[j] / rows end
  for i = 0, rows - 1 do
    for j = 0, d - 1 do p[i * d + j] = p[i * d + j] - mp[j] end
  end
  local solver = opts.solver or "auto"
  if solver == "auto" then
    solver = (math.max(rows, d) <= 500 or n >= 0.8 * math.min(rows, d)) and "full" or "randomized"
  end
  local k, u, s, vt
  if solver == "randomized" then
    if rows < d then error(("pca: the randomized solver here needs N >= D, got %d x %d"):format(rows, d), 2) end
    k = n
    u, s, vt = T.new({ rows, k }), T.new({ k }), T.new({ k, d })
    local n_iter = n < 0.1 * math.min(rows, d) and 7 or 4
    check(C.fm_randomized_svd(u, s, vt, xc, n, 10, n_iter, opts.seed or 0), "pca")
  elseif solver == "full" then
    k = math.min(rows, d)
    u, s, vt = T.new({ rows, k }), T.new({ k }), T.new({ k, d })
    check(C.fm_svd(u, s, vt, xc), "pca")
  else
    error(("pca: solver must be auto, full or randomized, got %s"):format(tostring(solver)), 2)
  end
  local up, sp, vp = u:ptr(), s:ptr(), vt:ptr()
  local out = T.new({ rows, n })
  local op = out:ptr()
  for j = 0, n - 1 do
    local arg, best = 0, -1
    for i = 0, rows - 1 do
      local a = math.abs(up[i * k + j])
      if a > best then arg, best = i, a end
    end
    local sign = up[arg * k + j] < 0 and -1 or 1
    for i = 0, rows - 1 do op[i * n + j] = up[i * k + j] * sign * sp[j] end
    for c = 0, d - 1 do vp[j * d + c] = vp[j * d + c] * sign end
  end
  return out, vt:narrow(1, 1, n):contiguous(), mean, solver
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

-- DBSCAN ---------------------------------------------------------------------------

-- Clusters grown from the core points in index order, as scikit-learn's
-- dbscan_inner: nbrs[i] lists i's neighbours (1-based, itself included
-- where it counts) → a Lua array of 0-based labels, −1 for noise, and the
-- number of clusters.
local function dbscan_grow(nbrs, min_samples)
  local n = #nbrs
  local labels, core_pt = {}, {}
  for i = 1, n do labels[i] = -1; core_pt[i] = #nbrs[i] >= min_samples end
  local count = 0
  for i = 1, n do
    if labels[i] == -1 and core_pt[i] then
      local stack, j = {}, i
      while true do
        if labels[j] == -1 then
          labels[j] = count
          if core_pt[j] then
            for _, v in ipairs(nbrs[j]) do
              if labels[v] == -1 then stack[#stack + 1] = v end
            end
          end
        end
        if #stack == 0 then break end
        j = stack[#stack]
        stack[#stack] = nil
      end
      count = count + 1
    end
  end
  return labels, count
end

-- dbscan(x (N, D), eps, min_samples) → labels, count: scikit-learn's
-- DBSCAN(eps, min_samples).fit_predict(x): neighbours within eps
-- (Euclidean, ≤, itself included; distances in double precision), labels
-- 0-based in a Lua array, −1 for noise.
function M.dbscan(x, eps, min_samples)
  x = matrix(x, "dbscan")
  local n, d = x:size(1), x:size(2)
  local xp = x:ptr()
  local nbrs = {}
  for i = 1, n do nbrs[i] = { i } end
  for i = 0, n - 1 do
    for j = i + 1, n - 1 do
      local s = 0.0
      local a, b = i * d, j * d
      for t = 0, d - 1 do
        local diff = xp[a + t] - xp[b + t]
        s = s + diff * diff
      end
      if math.sqrt(s) <= eps then
        local ni, nj = nbrs[i + 1], nbrs[j + 1]
        ni[#ni + 1] = j + 1
        nj[#nj + 1] = i + 1
      end
    end
  end
  return dbscan_grow(nbrs, min_samples)
end

-- dbscan_precomputed(dist (N, N), eps, min_samples) → labels, count:
-- DBSCAN(eps, min_samples, metric = 'precomputed').fit_predict(dist): j
-- is i's neighbour when dist[i][j] ≤ eps, the diagonal included as it is
-- (scikit-learn's radius_neighbors on the matrix as given).
function M.dbscan_precomputed(dist, eps, min_samples)
  dist = matrix(dist, "dbscan_precomputed")
  local n = dist:size(1)
  if dist:size(2) ~= n then
    error("dbscan_precomputed: expected a square matrix, got " .. T.shape_string(dist:shape()), 2)
  end
  local p = dist:ptr()
  local nbrs = {}
  for i = 0, n - 1 do
    local row = {}
    for j = 0, n - 1 do
      if p[i * n + j] <= eps then row[#row + 1] = j + 1 end
    end
    nbrs[i + 1] = row
  end
  return dbscan_grow(nbrs, min_samples)
end

return M
