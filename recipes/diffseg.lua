-- DiffSeg (Tian et al., CVPR24) — unsupervised segmentation from Stable
-- Diffusion's self-attention. One UNet pass on the clean latent of the image
-- with the empty prompt; every query pixel's self-attention map is a
-- distribution over key pixels. Maps anchored on a grid absorb the maps
-- within a symmetric KL of them, merged maps merge again, and each pixel
-- takes the merged map that attends to it most:
--
--   image ──bilinear to image_size, [-1, 1]──▶ VAE mean × scaling_factor
--   ──UNet(t = 300, "")──▶ attn1 maps per resolution, mean over heads, layers
--   ──aggregate──▶ (Q, Q): keys bilinear to the finest resolution, each map
--        renormalised, queries repeated, resolutions weighted ∝ their size
--   ──merge──▶ anchors on a num_points² grid take the mean of the maps
--        within ½KL(a‖b) + ½KL(b‖a) < τ₁; then, greedily in order, merged
--        maps absorb each other under τ₂, τ₃, …
--   ──refine (optional)──▶ k-means from the merged maps
--   ──bilinear to image_size, argmax──▶ segments ──nearest──▶ the image's size
--
-- ref: google/diffseg diffseg/segmentor.py (DiffSeg.generate_sampling_grid,
--      get_weight_rato, aggregate_weights, KL, mask_merge, generate_masks);
--      third_party/keras_cv/diffusion_model.py (each resolution's maps are
--      the mean of its layers); benchmarks.ipynb (timestep 300, no prompt,
--      KL_THRESHOLD [1.1]*3 for COCO-Stuff and 0.9 for Cityscapes,
--      NUM_POINTS 16, REFINEMENT False); data/coco/coco_data.py (bilinear
--      resize to 512, x / 127.5 - 1). The official crops the image to a
--      centred square first (a dataset protocol); we resize the whole image
--      and return segments at its own size. Its first merge runs in float16;
--      we keep float32.
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local image = require("fmseg.image")
local cluster = require("fmseg.cluster")
local A = require("fmseg.models.sd_attention")

local recipe = {
  name = "diffseg",
  needs = { "sd" },
  -- image_size     the side the image is resized to (SD's 512; 8 latent px each)
  -- timestep       the UNet's timestep; the latent is not noised
  -- prompt         the text the UNet attends to (DiffSeg: none)
  -- num_points     anchors per side of the grid at the finest resolution
  -- kl_threshold   one τ per merging iteration; a number: that τ `iterations` times
  -- weight_ratio   false: each resolution weighted ∝ its side; else a list,
  --                finest resolution first
  -- refine         k-means refinement from the merged maps (max refine_iters)
  defaults = {
    image_size = 512, timestep = 300, prompt = "", num_points = 16,
    kl_threshold = { 1.1, 1.1, 1.1 }, iterations = 3, weight_ratio = false,
    refine = false, refine_iters = 300,
  },
}

-- Attention maps ------------------------------------------------------------------

-- The captured maps of one kind grouped by resolution, finest first: each
-- { height, width, layers, map = (queries, keys) } the mean over heads and
-- layers of batch row `row` (as diffusion_model.py sums map / layers).
function recipe.resolution_means(cap, kind, row)
  local groups, by_size = {}, {}
  for _, name in ipairs(cap.names) do
    local info = cap.info[name]
    if info.kind == kind then
      local key = info.height .. "x" .. info.width
      local mean = cap:head_mean(name)                      -- (N, q, k)
      local one = mean:select(1, row or 1):contiguous()      -- (q, k)
      mean:free()
      local g = by_size[key]
      if g then
        g.map:add_(one)
        one:free()
        g.layers = g.layers + 1
      else
        g = { height = info.height, width = info.width, layers = 1, map = one }
        by_size[key] = g
        groups[#groups + 1] = g
      end
    end
  end
  if #groups == 0 then error("diffusion attention: no " .. kind .. " maps were captured", 2) end
  for _, g in ipairs(groups) do g.map:div_(g.layers) end
  table.sort(groups, function(a, b) return a.height * a.width > b.height * b.width end)
  return groups
end

-- get_weight_rato: each resolution's weight ∝ sqrt(queries), summing to 1.
local function proportional(groups)
  local sizes, total = {}, 0
  for i, g in ipairs(groups) do
    sizes[i] = math.sqrt(g.height * g.width)
    total = total + sizes[i]
  end
  for i = 1, #sizes do sizes[i] = sizes[i] / total end
  return sizes
end

-- aggregate_weights: self-attention of every resolution → (Q, Q) at the
-- finest one (Q = h·w of it), row q the distribution over key pixels that
-- query pixel q attends. Keys bilinear, then each map renormalised to sum
-- 1, queries repeated, resolutions weighted. Returns the map and h, w.
function recipe.aggregate(cap, weight_ratio, row)
  local groups = recipe.resolution_means(cap, "attn1", row)
  local ratio = weight_ratio or proportional(groups)
  if #ratio ~= #groups then
    error(("diffseg: weight_ratio has %d entries for %d resolutions"):format(#ratio, #groups), 2)
  end
  local oh, ow = groups[1].height, groups[1].width
  local q = oh * ow
  local sum
  for i, g in ipairs(groups) do
    local n = g.height * g.width
    local one = g.map:reshape({ 1, n, n })
    g.map:free()
    local img = A.self_to_images(one, g.height, g.width, oh, ow)   -- (1, Q, oh, ow)
    one:free()
    local rows = img:reshape({ q, q })
    img:free()
    rows:div_(rows:sum(2, true))                                    -- each map sums to one
    rows:mul_(ratio[i])
    if sum then
      sum:add_(rows)
      rows:free()
    else
      sum = rows
    end
  end
  return sum, oh, ow
end

-- Anchors --------------------------------------------------------------------------

-- generate_sampling_grid for one axis of `size` pixels: n points (n ≤ size)
-- spaced (size - 1) // (n - 1) apart, centred; DiffSeg's 64 and 16 give
-- 1, 5, …, 61.
local function axis_points(size, n)
  n = math.min(n, size)
  if n == 1 then return { math.floor((size - 1) / 2) } end
  local step = math.floor((size - 1) / (n - 1))
  local start = math.floor((size - 1 - step * (n - 1)) / 2)
  local out = {}
  for i = 0, n - 1 do out[i + 1] = start + i * step end
  return out
end

-- 0-based flat indices (y·w + x) of the anchor pixels, rows outer as
-- DiffSeg's meshgrid(indexing='ij') orders them.
function recipe.sampling_grid(h, w, n)
  local ys, xs = axis_points(h, n), axis_points(w, n)
  local out = {}
  for _, y in ipairs(ys) do
    for _, x in ipairs(xs) do out[#out + 1] = y * w + x end
  end
  return out
end

-- Merging ---------------------------------------------------------------------------

-- log(p) with zeros kept finite: a zero in one map and not the other then
-- gives a large KL (no merge), where the official's -inf gives NaN (no merge).
local TINY = 1e-30
local function safe_log(p) return p:maximum(TINY):log_() end

-- Symmetric KL between the rows of p (N, D) and of q (M, D), distributions
-- over D:  ½ Σ (p - q)(log p - log q)
--        = ½ (Σ p log p + Σ q log q - p·log qᵀ - log p·qᵀ)   (N, M), two sgemms.
function recipe.sym_kl(p, q)
  local lp, lq = safe_log(p), safe_log(q)
  local ep = (p * lp):sum(2, true)                   -- (N, 1)
  local eq = (q * lq):sum(2, true)                   -- (M, 1)
  local kl = p:matmul(lq, false, true)               -- p·log qᵀ (N, M)
  local cross = lp:matmul(q, false, true)
  kl:add_(cross)
  cross:free(); lp:free(); lq:free()
  kl:neg_():add_(ep):add_(eq:reshape({ 1, eq:size(1) }))
  return kl:mul_(0.5)
end

-- Rows of x at 0-based indices → (#idx, D)
local function rows_at(x, idx)
  local parts = {}
  for i, r in ipairs(idx) do parts[i] = x:narrow(1, r + 1, 1) end
  return T.cat(parts, 1)
end

-- mask_merge, first iteration: each anchor map becomes the mean of every
-- map (all Q of them) within tau of it. attns (Q, D) → (#anchors, D).
local function merge_anchors(attns, anchors, tau)
  local a = rows_at(attns, anchors)
  local kl = recipe.sym_kl(a, attns)
  a:free()
  local near = kl:lt(tau)                              -- (A, Q) 0/1; an anchor always meets itself
  kl:free()
  local merged = near:matmul(attns)
  merged:div_(near:sum(2, true))
  near:free()
  return merged
end

-- mask_merge, later iterations: in order, each map not yet taken takes the
-- mean of every map within tau of it (taken ones included, as the official
-- does) and marks them taken. maps (K, D) → (K', D).
local function merge_greedy(maps, tau)
  local k = maps:size(1)
  local kl = recipe.sym_kl(maps, maps)
  local v = kl:values()                                -- K² numbers, K ≤ anchors
  kl:free()
  local taken, groups = {}, {}
  for i = 1, k do
    if not taken[i] then
      taken[i] = true
      local members = {}
      for j = 1, k do
        if v[(i - 1) * k + j] < tau then
          members[#members + 1] = j
          taken[j] = true
        end
      end
      groups[#groups + 1] = members
    end
  end
  local sel = T.new({ #groups, k })                    -- (K', K) rows averaging each group
  for g, members in ipairs(groups) do
    for _, j in ipairs(members) do sel:set(g, j, 1 / #members) end
  end
  local out = sel:matmul(maps)
  sel:free()
  return out
end

-- generate_masks without the upsampling: attns (Q, D) rows summing to one,
-- anchors from sampling_grid, thresholds one τ per iteration → merged maps
-- (K, D).
function recipe.merge(attns, anchors, thresholds)
  if #thresholds == 0 then error("diffseg: kl_threshold needs at least one value", 2) end
  local maps = merge_anchors(attns, anchors, thresholds[1])
  for i = 2, #thresholds do
    local next_maps = merge_greedy(maps, thresholds[i])
    maps:free()
    maps = next_maps
  end
  return maps
end

-- The optional refinement: scikit-learn KMeans(n_clusters = K, init = the
-- merged maps, n_init = 1) on every pixel's map, then each cluster's mean
-- map (clusters left empty are dropped). Lloyd steps until the labels
-- repeat, the centres move less than sklearn's tol (1e-4 × mean feature
-- variance), or max_iter.
local function assign(x, centers)
  local d = cluster.sq_distances(x, centers)           -- (Q, K)
  local labels = d:argmin(2)
  d:free()
  return labels:values()
end

local function cluster_means(x, labels, k)
  local counts = {}
  for _, l in ipairs(labels) do counts[l] = (counts[l] or 0) + 1 end
  local ids, slot = {}, {}
  for c = 0, k - 1 do
    if counts[c] then ids[#ids + 1] = c; slot[c] = #ids end
  end
  local sel = T.new({ #ids, #labels })
  for q, l in ipairs(labels) do sel:set(slot[l], q, 1 / counts[l]) end
  local out = sel:matmul(x)
  sel:free()
  return out
end

function recipe.kmeans_refine(x, centers, max_iter)
  local k = centers:size(1)
  local var = x:sub(x:mean(1, true)):pow_(2):mean()    -- mean per-feature variance
  local tol = 1e-4 * var
  local c = centers:clone()
  local labels = assign(x, c)
  for _ = 1, max_iter do
    local moved = cluster_means(x, labels, k)
    if moved:size(1) ~= k then c:free(); c = moved; k = moved:size(1); labels = assign(x, c); break end
    local shift = (moved - c):pow_(2):sum()
    c:free()
    c = moved
    local new = assign(x, c)
    local same = true
    for i = 1, #new do if new[i] ~= labels[i] then same = false; break end end
    labels = new
    if same or shift <= tol then break end
  end
  c:free()
  return cluster_means(x, labels, k)
end

-- Recipe ---------------------------------------------------------------------------

local function thresholds(p)
  if type(p.kl_threshold) == "number" then
    local out = {}
    for i = 1, p.iterations do out[i] = p.kl_threshold end
    return out
  end
  if type(p.kl_threshold) ~= "table" then error("diffseg: kl_threshold must be a number or a list", 0) end
  return p.kl_threshold
end

function recipe.setup(params, models)
  local pipe = models.sd
  return {
    params = params, pipe = pipe,
    text = pipe:encode_prompt({ params.prompt }),      -- (1, 77, D)
    thresholds = thresholds(params),
  }
end

-- (H, W, 3) uint8 → (1, 3, size, size) in [-1, 1], plain bilinear
function recipe.prepare(img, size)
  local x = image.to_chw(img)
  local r = nn.interpolate(x, size, size, { mode = "bilinear" })
  x:free()
  return r:div_(127.5):sub_(1)
end

-- (K, h, w) maps → (H, W) int32 ids: bilinear to size x size (DiffSeg's ×8),
-- argmax over maps, nearest to the image's H x W.
local function segments(maps, size, H, W)
  local k, h, w = unpack(maps:shape())
  local up = nn.interpolate(maps:reshape({ 1, k, h, w }), size, size, { mode = "bilinear" })
  local ids = up:select(1, 1):argmax(1)                 -- (size, size)
  up:free()
  if H == size and W == size then return ids end
  local f = ids:float():reshape({ 1, 1, size, size })
  local out = nn.interpolate(f, H, W, { mode = "nearest" })
  return out:reshape({ H, W }):int()
end

function recipe.segment(state, img)
  local p, pipe = state.params, state.pipe
  local x = recipe.prepare(img, p.image_size)
  local latents = pipe:encode_image(x)
  x:free()
  local cap = A.capture({ kinds = { "attn1" }, mean_heads = true })
  local eps = pipe.unet:forward(latents, p.timestep, state.text, { capture = cap })
  eps:free(); latents:free()
  local attns, h, w = recipe.aggregate(cap, p.weight_ratio or nil)
  cap:clear()
  local merged = recipe.merge(attns, recipe.sampling_grid(h, w, p.num_points), state.thresholds)
  if p.refine then
    local refined = recipe.kmeans_refine(attns, merged, p.refine_iters)
    merged:free()
    merged = refined
  end
  attns:free()
  local maps = merged:reshape({ merged:size(1), h, w })
  local labels = segments(maps, p.image_size, img:size(1), img:size(2))
  return { kind = "segments", labels = labels, dump = { maps = maps } }
end

return recipe
