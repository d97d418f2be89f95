-- DiffSeg (Tian et al., CVPR24) — unsupervised segmentation from Stable
-- Diffusion's self-attention. One UNet pass on the clean latent of the image
-- with the empty prompt; every query pixel's self-attention map is a
-- distribution over key pixels. Maps anchored on a grid absorb the maps
-- within a symmetric KL of them, merged maps merge again, and each pixel
-- takes the merged map that attends to it most:
--
--   image ──(crop = center_square: the centred square)──▶ TF bilinear to
--        image_size, x · (1/127.5) − 1 ──▶ VAE mean × scaling_factor
--   ──UNet(t = 300, "")──▶ attn1 maps per resolution, mean over heads,
--        Σ map / layers over layers (diffusion_model.py's temp / 5)
--   ──aggregate──▶ (Q, Q): keys TF-bilinear to the finest resolution, each
--        map renormalised, resolutions weighted ∝ their side, queries repeated
--   ──merge──▶ anchors on a num_points² grid take the mean of the maps
--        within ½KL(a‖b) + ½KL(b‖a) < τ₁, computed in float16 as the
--        official does (below); then, greedily in order, merged maps absorb
--        each other under τ₂, τ₃, … in float64
--   ──refine (optional)──▶ k-means from the merged maps
--   ──TF bilinear to image_size, argmax──▶ segments (with crop: returned at
--        image_size, the protocol's 512x512; else nearest to the image's size)
--
-- The first merge casts anchors and maps to float16 and computes the KL op
-- by op in float16 (core/diffseg.c, fm_diffseg_kl_f16): entries below 2^-25
-- become 0, log 0 = -inf, and a KL that touches one is NaN, so such pairs
-- never merge; an anchor with a zero entry meets nothing, not even itself,
-- its merged map is 0/0 and it is dropped from the next merge, as the
-- official's NaN rows are. The float16 threshold is half(τ) (1.1 → 1.0996).
-- Later merges run in float64 (NaN where a zero meets a log, as numpy).
--
-- ref: google/diffseg diffseg/segmentor.py (DiffSeg.generate_sampling_grid,
--      get_weight_rato, aggregate_weights, KL, mask_merge, generate_masks);
--      third_party/keras_cv/diffusion_model.py (each resolution's maps are
--      the sum of map / 5 over its five layers); benchmarks.ipynb (timestep
--      300, no prompt, KL_THRESHOLD [1.1]*3 for COCO-Stuff and 0.9 for
--      Cityscapes, NUM_POINTS 16, REFINEMENT False); data/coco/coco_data.py
--      and data/cityscapes/cityscapes_data.py (centre square crop,
--      tf.image.resize to 512, Rescaling(1/127.5, -1); labels cropped and
--      resized nearest, scored at 512: configs/diffseg/*.yaml).
-- Checked against the official segmentor on our UNet's maps:
-- tests/fixtures/methods/diffseg-* (tests/tools/methods/diffseg.py).
--
-- Differences that remain (float rounding, no change of method):
-- - TF sums float16 in float16 in its kernels' own order (cub's blocks on
--   GPU); we sum the float16 terms exactly and round once. Measured on the
--   fixtures' maps with an emulation of that order (256 threads x 16 items
--   in half, then a tree): 2 of 131,072 COCO-Stuff anchor-map decisions
--   (32 anchors) and 0 of 32,768 Cityscapes ones change.
-- - With several heads, we average heads per layer as maps are captured and
--   then layers; the official sums layers per head, then averages heads
--   (float32 rounding order only; the fixtures' model has one head, where
--   both are exact).
-- - Float32 reductions (each map's sum) accumulate in double here; TF's
--   Eigen / cub order is its own (last-bit differences).
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local image = require("fmseg.image")
local cluster = require("fmseg.cluster")
local A = require("fmseg.models.sd_attention")
local core = require("fmseg.core")
local ffi, C, check = core.ffi, core.C, core.check

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
  -- crop           false: the whole image; "center_square": the centred
  --                square first, segments returned at image_size (the
  --                official protocol: data/*_data.py)
  defaults = {
    image_size = 512, timestep = 300, prompt = "", num_points = 16,
    kl_threshold = { 1.1, 1.1, 1.1 }, iterations = 3, weight_ratio = false,
    refine = false, refine_iters = 300, crop = false,
  },
}

-- Attention maps ------------------------------------------------------------------


-- x (N, C, H, W) → (N, C, oh, ow), tf.image.resize bilinear as TF computes it
local function resize_tf(x, oh, ow)
  local n, c = x:size(1), x:size(2)
  local out = T.new({ n, c, oh, ow })
  check(C.fm_resize_bilinear_tf(out, x:is_contiguous() and x or x:contiguous()))
  return out
end
recipe.resize_tf = resize_tf

-- v rounded to float32 (TF converts a float64 operand to the tensor's dtype)
local function f32(v) return tonumber(ffi.new("float", v)) end

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
-- query pixel q attends. Keys TF-bilinear, each map renormalised to sum 1,
-- times its resolution's weight (as float32), queries repeated (nearest),
-- resolutions added finest first in float32. Returns the map and h, w.
function recipe.aggregate(cap, weight_ratio, row)
  local groups = cap:resolution_means("attn1", row)
  local ratio = weight_ratio or proportional(groups)
  if #ratio ~= #groups then
    error(("diffseg: weight_ratio has %d entries for %d resolutions"):format(#ratio, #groups), 2)
  end
  local oh, ow = groups[1].height, groups[1].width
  local q = oh * ow
  local sum
  for i, g in ipairs(groups) do
    local n = g.height * g.width
    local keys = g.map:reshape({ n, 1, g.height, g.width })
    g.map:free()
    local up = resize_tf(keys, oh, ow)                               -- (n, 1, oh, ow)
    keys:free()
    local rows = up:reshape({ n, q })
    up:free()
    rows:div_(rows:sum(2, true))                                    -- each map sums to one
    rows:mul_(f32(ratio[i]))
    local full = rows
    if n ~= q then                                                  -- queries: tf.repeat
      local by_key = rows:t():contiguous():reshape({ 1, q, g.height, g.width })
      rows:free()
      local rep = nn.interpolate(by_key, oh, ow, { mode = "nearest" })
      by_key:free()
      full = rep:reshape({ q, q }):t():contiguous()
      rep:free()
    end
    if sum then
      sum:add_(full)
      full:free()
    else
      sum = full
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

-- log(p) with zeros kept finite, for sym_kl's float32 matrix form (tests,
-- diagnostics); the merges themselves follow the official's NaN semantics.
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

-- The float16 symmetric KL of the first merge: (A, D), (Q, D) → (A, Q)
-- (half values as floats, NaN where an underflowed entry meets a log).
function recipe.kl_f16(a, b)
  local out = T.new({ a:size(1), b:size(1) })
  check(C.fm_diffseg_kl_f16(out, a:is_contiguous() and a or a:contiguous(), b:is_contiguous() and b or b:contiguous()))
  return out
end

-- Merged maps in double: { k = K, d = D, v = double[K * D] } (row-major).
local function f64_maps(k, d)
  return { k = k, d = d, v = ffi.new("double[?]", math.max(k * d, 1)) }
end

local function is_nan(x) return x ~= x end

-- mask_merge, first iteration: each anchor's map becomes the mean (in
-- double) of every map (all Q of them) with float16 KL < half(tau); an
-- anchor that meets none (a zero entry: NaN KL) gets a NaN row.
-- attns (Q, D) → f64 maps (#anchors, D).
local function merge_anchors(attns, anchors, tau)
  local a = rows_at(attns, anchors)
  local kl = recipe.kl_f16(a, attns)
  a:free()
  local na, q, d = #anchors, attns:size(1), attns:size(2)
  local th = C.fm_round_half(tau)
  local member = ffi.new("uint8_t[?]", na * q)
  local kv = kl:ptr()
  for i = 0, na * q - 1 do member[i] = kv[i] < th and 1 or 0 end
  kl:free()
  local out = f64_maps(na, d)
  check(C.fm_diffseg_group_means(out.v, attns, member, na))
  return out
end

-- KL(x, y) of two double rows as the official's float64 KL:
-- Σ x (log x − log y) / 2 − Σ y (log x − log y) / 2, NaN where a zero
-- meets a log.
local function kl64(x, lx, y, ly, d)
  local s1, s2 = 0, 0
  for t = 0, d - 1 do
    local q = lx[t] - ly[t]
    s1 = s1 + x[t] * q
    s2 = s2 + y[t] * q
  end
  return s1 / 2 - s2 / 2
end

-- mask_merge, later iterations: in order, each map not yet taken takes the
-- mean of every map within tau of it (taken ones included, as the official
-- does) and marks them taken; a map that meets none (NaN) is dropped.
local function merge_greedy(m, tau)
  local k, d, v = m.k, m.d, m.v
  local logs = ffi.new("double[?]", math.max(k * d, 1))
  for i = 0, k * d - 1 do logs[i] = math.log(v[i]) end
  local taken, groups = {}, {}
  for i = 0, k - 1 do
    if not taken[i] then
      taken[i] = true
      local members = {}
      for j = 0, k - 1 do
        if kl64(v + i * d, logs + i * d, v + j * d, logs + j * d, d) < tau then members[#members + 1] = j end
      end
      if #members > 0 then
        for _, j in ipairs(members) do taken[j] = true end
        groups[#groups + 1] = members
      end
    end
  end
  local out = f64_maps(#groups, d)
  for g, members in ipairs(groups) do
    local o = out.v + (g - 1) * d
    for t = 0, d - 1 do o[t] = 0 end
    for _, j in ipairs(members) do
      local r = v + j * d
      for t = 0, d - 1 do o[t] = o[t] + r[t] end
    end
    for t = 0, d - 1 do o[t] = o[t] / #members end
  end
  return out
end

-- double maps → (K, D) float32 tensor; NaN rows (anchors dropped by a
-- single merge) left out
local function to_tensor(m)
  local keep = {}
  for i = 0, m.k - 1 do
    local bad = false
    for t = 0, m.d - 1 do if is_nan(m.v[i * m.d + t]) then bad = true; break end end
    if not bad then keep[#keep + 1] = i end
  end
  if #keep == 0 then error("diffseg: every anchor was dropped (each met only NaN KLs)", 0) end
  local out = T.new({ #keep, m.d })
  local p = out:ptr()
  for r, i in ipairs(keep) do
    for t = 0, m.d - 1 do p[(r - 1) * m.d + t] = m.v[i * m.d + t] end
  end
  return out
end

-- generate_masks without the upsampling: attns (Q, D) rows summing to one,
-- anchors from sampling_grid, thresholds one τ per iteration → merged maps
-- (K, D), float32 (rounded from the double means, as the official's float64
-- maps are cast for the upsampling).
function recipe.merge(attns, anchors, thresholds)
  if #thresholds == 0 then error("diffseg: kl_threshold needs at least one value", 2) end
  local maps = merge_anchors(attns, anchors, thresholds[1])
  for i = 2, #thresholds do maps = merge_greedy(maps, thresholds[i]) end
  return to_tensor(maps)
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

-- The centred square of an H x W image (data/*_data.py): 1-based first
-- row, first column and side.
function recipe.center_square(h, w)
  local c = math.min(h, w)
  return math.floor((h - c) / 2) + 1, math.floor((w - c) / 2) + 1, c
end

-- (H, W, 3) image (uint8, or float in [0, 255]) → (1, 3, size, size) in
-- [-1, 1]: the centred square when crop is "center_square", tf.image.resize
-- bilinear, keras Rescaling(1/127.5, offset=-1) (x · float(1/127.5) − 1).
function recipe.prepare(img, size, crop)
  if crop then
    if crop ~= "center_square" then error("diffseg: crop must be false or \"center_square\", got " .. tostring(crop), 0) end
    local y0, x0, c = recipe.center_square(img:size(1), img:size(2))
    img = img:narrow(1, y0, c):narrow(2, x0, c)
  end
  local x = image.to_chw(img)
  local r = resize_tf(x, size, size)
  x:free()
  return r:mul_(f32(1 / 127.5)):sub_(1)
end

-- (K, h, w) maps → (H, W) int32 ids: TF bilinear to size x size (DiffSeg's
-- ×8), argmax over maps (first maximum), nearest to H x W.
local function segments(maps, size, H, W)
  local k, h, w = unpack(maps:shape())
  local up = resize_tf(maps:reshape({ 1, k, h, w }), size, size)
  local ids = up:select(1, 1):argmax(1)                 -- (size, size)
  up:free()
  if H == size and W == size then return ids end
  local f = ids:float():reshape({ 1, 1, size, size })
  local out = nn.interpolate(f, H, W, { mode = "nearest" })
  return out:reshape({ H, W }):int()
end

function recipe.segment(state, img)
  local p, pipe = state.params, state.pipe
  local pixels = recipe.prepare(img, p.image_size, p.crop)
  local latents = pipe:encode_image(pixels)
  pixels:free()
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
  local H, W = img:size(1), img:size(2)
  if not p.crop then
    local labels = segments(maps, p.image_size, H, W)
    return { kind = "segments", labels = labels, dump = { maps = maps, segments = labels } }
  end
  -- the protocol's segments are the square's, at image_size; the label map
  -- at the image's size places them (nearest) in the square and extends
  -- its edge pixels over the margins
  local square = segments(maps, p.image_size, p.image_size, p.image_size)
  local y0, x0, c = recipe.center_square(H, W)
  local inner = square
  if c ~= p.image_size then
    local f = nn.interpolate(square:float():reshape({ 1, 1, p.image_size, p.image_size }), c, c, { mode = "nearest" })
    inner = f:reshape({ c, c }):int()
    f:free()
  end
  local labels = inner
  if H ~= c or W ~= c then
    labels = T.new({ H, W }, "int32")
    local src, dst = inner:ptr(), labels:ptr()
    for y = 0, H - 1 do
      local cy = math.min(math.max(y - (y0 - 1), 0), c - 1)
      for x = 0, W - 1 do
        local cx = math.min(math.max(x - (x0 - 1), 0), c - 1)
        dst[y * W + x] = src[cy * c + cx]
      end
    end
  end
  return { kind = "segments", labels = labels, dump = { maps = maps, segments = square } }
end

return recipe
