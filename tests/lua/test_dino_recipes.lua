-- test_dino_recipes.lua — the DINO clustering recipes (TokenCut, LOST, Deep
-- Spectral Methods and its localisation, k-means) and their tools (fmseg.cluster,
-- fmseg.method.patches): each recipe's feature → mask step on synthetic patch
-- grids with planted objects and regions, where the right answer is
-- known exactly; then every recipe end to end through `fmseg segment` on
-- the tiny DINO / DINOv2 fixtures (random weights: only the shape of the
-- outputs is checked there).
local tap = require("tap")
local T = require("fmseg.tensor")
local cluster = require("fmseg.cluster")
local patches = require("fmseg.method.patches")
local recipes = require("fmseg.method.recipes")
local image = require("fmseg.image")
local json = require("fmseg.io.json")

local GH, GW, D = 12, 16, 32

local function params_of(recipe, over)
  local p = {}
  for k, v in pairs(recipe.defaults) do p[k] = v end
  for k, v in pairs(over or {}) do p[k] = v end
  return p
end

-- A unit vector along axis a (1-based) of D dims, or a mix of axes.
local function axis(a) local v = {} for i = 1, D do v[i] = i == a and 1 or 0 end return v end

-- (GH*GW, D) features: region_of(r, c) (0-based patch row, column) names
-- the vector of each patch; plus Gaussian noise of the given size.
local function grid_features(region_of, vectors, noise, seed)
  local x = T.randn({ GH * GW, D }, seed or 7) * (noise or 0.05)
  local p = x:ptr()
  for r = 0, GH - 1 do
    for c = 0, GW - 1 do
      local v = vectors[region_of(r, c)]
      for j = 1, D do p[(r * GW + c) * D + j - 1] = p[(r * GW + c) * D + j - 1] + v[j] end
    end
  end
  return x
end

-- (GH, GW) uint8 of a predicate over (r, c)
local function grid_mask(pred)
  local m = T.new({ GH, GW }, "uint8")
  local p = m:ptr()
  for r = 0, GH - 1 do for c = 0, GW - 1 do p[r * GW + c] = pred(r, c) and 1 or 0 end end
  return m
end

local function same(a, b) return a ~= nil and b ~= nil and (a:float() - b:float()):abs():max() == 0 end

-- labels equal truth up to a one-to-one renaming
local function same_partition(a, b)
  local pa, pb = a:int():contiguous():values(), b:int():contiguous():values()
  local f, g = {}, {}
  for i = 1, #pa do
    if f[pa[i]] == nil and g[pb[i]] == nil then f[pa[i]], g[pb[i]] = pb[i], pa[i] end
    if f[pa[i]] ~= pb[i] or g[pb[i]] ~= pa[i] then return false end
  end
  return true
end

-- The planted object: rows 3..6, columns 5..10 (0-based), 24 of 192 patches.
local function in_rect(r, c) return r >= 3 and r <= 6 and c >= 5 and c <= 10 end
-- A second copy, apart from the first: rows 8..10, columns 1..3.
local function in_rect2(r, c) return r >= 8 and r <= 10 and c >= 1 and c <= 3 end

-- fmseg.cluster ------------------------------------------------------------------------
do
  -- three blobs in 2-D, far apart
  local pts, truth = {}, {}
  local centres = { { 0, 0 }, { 10, 0 }, { 0, 10 } }
  local r = T.rng(3)
  for i = 1, 60 do
    local k = (i - 1) % 3 + 1
    pts[i] = { centres[k][1] + r() - 0.5, centres[k][2] + r() - 0.5 }
    truth[i] = k - 1
  end
  local x = T.from_table(pts)
  local labels, centers, inertia = cluster.kmeans(x, 3, { seed = 1 })
  tap.ok(labels:dtype() == "int32" and same_partition(labels, T.from_table(truth, "int32")),
    "cluster.kmeans recovers 3 planted blobs (0-based int32 labels)")
  tap.ok(centers:size(1) == 3 and inertia > 0 and inertia < 60 * 0.5, "cluster.kmeans: centres and inertia")
  local again = cluster.kmeans(x, 3, { seed = 1 })
  tap.ok(same(labels, again), "cluster.kmeans is deterministic given the seed")
  tap.ok(cluster.silhouette(x, labels, 3) > 0.9, "cluster.silhouette of separated blobs is near 1")
  tap.raises(function() cluster.kmeans(x, 61) end, "k = 61", "cluster.kmeans: k above N is an error")

  tap.eq(cluster.eigengap(T.from_table({ 0, 0, 0, 1, 1.1, 1.2 })), 3, "eigengap: largest gap after index 0")
  tap.eq(cluster.eigengap(T.from_table({ 0, 5, 5.1, 7, 7.1 })), 3,
    "eigengap: the gap at index 0 is left out (always >= 2 clusters)")
  tap.eq(cluster.eigengap(T.from_table({ 0, 0, 0, 1, 1.5, 2, 2.5 }), 4), 6,
    "eigengap with k_min 4: earlier gaps left out, equal gaps go to the larger count")

  -- Laplacian eigenvectors of two cliques joined by weak edges split them
  local W = T.full({ 6, 6 }, 0.01)
  for i = 0, 5 do for j = 0, 5 do if (i < 2) == (j < 2) then W:set(i + 1, j + 1, 1) end end end
  local w, v, deg = cluster.laplacian_eigs(W, { first = 0, count = 2 })
  tap.ok(math.abs(w:get(1)) < 1e-5 and w:get(2) > 0.01, "laplacian_eigs: eigenvalue 0 first, then the cut")
  local y = v:select(1, 2):values()
  tap.ok(y[1] * y[2] > 0 and y[3] * y[1] < 0 and y[3] * y[6] > 0, "laplacian_eigs: the Fiedler vector splits the cliques")
  local dy = 0
  for i = 1, 6 do dy = dy + y[i] * y[i] * deg:get(i) end
  tap.ok(math.abs(dy - 1) < 1e-4, "laplacian_eigs: vectors are D-orthonormal (scipy's normalisation)")
end

-- fmseg.method.patches ------------------------------------------------------------------------
do
  local img = T.new({ 37, 50, 3 }, "uint8")
  local x, frame = patches.input(img, 16, { fit = "pad" })
  tap.ok(x:size(3) == 48 and x:size(4) == 64 and frame.gh == 3 and frame.gw == 4,
    "patches.input pad: 37x50 → 48x64, a 3x4 grid")
  -- black pixels normalise to -mean/std; the padding stays 0
  tap.ok(math.abs(x:get(1, 1, 1, 1) + 0.485 / 0.229) < 1e-5 and x:get(1, 1, 40, 60) == 0,
    "patches.input: ImageNet normalisation, zero padding after it")
  local xc, fc = patches.input(img, 16, { fit = "crop" })
  tap.ok(xc:size(3) == 32 and xc:size(4) == 48 and fc.gh == 2 and fc.gw == 3, "patches.input crop: 32x48")
  local _, fr = patches.input(img, 16, { resize = 20 })
  tap.ok(fr.rh == 20 and fr.rw == 27 and fr.gh == 2 and fr.gw == 2,
         "patches.input resize: shorter side 20 (27 = int(20 * 50 / 37))")

  -- to_image: each pixel takes its patch's label; cut to the image (pad) or
  -- extended by the last patch (crop)
  local grid = T.from_table({ { 0, 1, 2, 3 }, { 4, 5, 6, 7 }, { 8, 9, 10, 11 } }, "int32")
  local lab = patches.to_image(grid, frame)
  tap.ok(lab:size(1) == 37 and lab:size(2) == 50 and lab:get(1, 1) == 0 and lab:get(16, 16) == 0
    and lab:get(17, 17) == 5 and lab:get(37, 50) == 11 and lab:get(33, 49) == 11,
    "patches.to_image (pad): the patch under each pixel")
  local labc = patches.to_image(T.from_table({ { 0, 1, 2 }, { 3, 4, 5 } }, "int32"), fc)
  tap.ok(labc:get(37, 50) == 5 and labc:get(33, 1) == 3 and labc:get(1, 49) == 2,
    "patches.to_image (crop): pixels past the grid take the last patch")
  local labb = patches.to_image(grid, frame, "bilinear")
  tap.ok(labb:get(8, 8) == 0 and labb:get(24, 24) == 5, "patches.to_image bilinear: patch centres keep their label")

  local m = T.from_table({ { 0, 1, 1, 0 }, { 0, 1, 0, 0 }, { 1, 0, 0, 1 } }, "uint8")
  local comp = patches.component(m, 1)
  tap.eq(table.concat(comp:values(), ""), "011001000000", "patches.component: the 4-connected component of the seed")
  tap.ok(patches.component(m, 0) == nil, "patches.component: nil for an unset seed")
  local box = patches.box(comp, frame)
  tap.eq(table.concat(box, ","), "16,0,48,32", "patches.box: patch extents x 16, pixel edges")
  local corner = patches.box(T.from_table({ { 0, 0, 0, 0 }, { 0, 0, 0, 0 }, { 0, 0, 0, 1 } }, "uint8"), frame)
  tap.eq(table.concat(corner, ","), "48,32,50,37", "patches.box: clipped to the image before padding")
end

-- TokenCut -----------------------------------------------------------------------------
local tokencut = recipes.load("tokencut")
do
  -- object patches near axis 2, background near axis 1: cosine ~0 < tau
  local feats = grid_features(function(r, c) return in_rect(r, c) and "o" or "b" end,
                              { o = axis(2), b = axis(1) }, 0.05)
  local cut = tokencut.ncut(feats, GH, GW, params_of(tokencut))
  tap.ok(same(cut.mask, grid_mask(in_rect)), "tokencut.ncut recovers the planted object exactly")
  tap.ok(same(cut.bipartition, grid_mask(in_rect)), "tokencut.ncut: the bipartition is the object side")
  local sr, sc = math.floor(cut.seed / GW), cut.seed % GW
  tap.ok(in_rect(sr, sc), "tokencut.ncut: the seed (argmax |y|) lies in the object")
  local ev = cut.eigenvector
  tap.ok(ev:get(5, 7) > ev:float():mean() and ev:get(1, 1) < ev:float():mean(),
    "tokencut.ncut: the eigenvector is oriented with the object above its mean")

  -- LAPACK's sign of y is arbitrary: the orientation step must make the
  -- seed's side the foreground whatever it is; several placements and
  -- noise draws give both signs
  local all = true
  for v = 1, 6 do
    local r0, c0 = (v * 5) % 8, (v * 7) % 10
    local function obj(r, c) return r >= r0 and r < r0 + 4 and c >= c0 and c < c0 + 5 end
    local fv = grid_features(function(r, c) return obj(r, c) and "o" or "b" end, { o = axis(2), b = axis(1) }, 0.05, 100 + v)
    all = all and same(tokencut.ncut(fv, GH, GW, params_of(tokencut)).mask, grid_mask(obj))
  end
  tap.ok(all, "tokencut.ncut: six placements of the object, each recovered exactly")
  -- either sign of the eigenvector: the same split
  local y = cut.eigenvector:reshape(GH * GW):contiguous()
  local flipped = tokencut.split(-y, GH, GW)
  tap.ok(same(flipped.mask, cut.mask) and same(flipped.bipartition, cut.bipartition) and flipped.seed == cut.seed,
    "tokencut.split: -y gives the same object (the seed's side is the foreground)")
  tap.ok(same(tokencut.split(y, GH, GW).mask, cut.mask), "tokencut.split: +y too")

  -- two separated objects with the same features: both on the cut's
  -- object side, but only the seed's component is the object
  local two = grid_features(function(r, c) return (in_rect(r, c) or in_rect2(r, c)) and "o" or "b" end,
                            { o = axis(2), b = axis(1) }, 0.05, 11)
  local cut2 = tokencut.ncut(two, GH, GW, params_of(tokencut))
  tap.ok(same(cut2.bipartition, grid_mask(function(r, c) return in_rect(r, c) or in_rect2(r, c) end)),
    "tokencut.ncut: two same-feature objects are both on the foreground side")
  local only1, only2 = same(cut2.mask, grid_mask(in_rect)), same(cut2.mask, grid_mask(in_rect2))
  local seed_r, seed_c = math.floor(cut2.seed / GW), cut2.seed % GW
  tap.ok((only1 and in_rect(seed_r, seed_c)) or (only2 and in_rect2(seed_r, seed_c)),
    "tokencut.ncut: the object is the connected component holding the seed, not the whole side")

  -- no_binary_graph: similarities >= tau are the weights
  local cutw = tokencut.ncut(feats, GH, GW, params_of(tokencut, { no_binary_graph = true }))
  tap.ok(same(cutw.mask, grid_mask(in_rect)), "tokencut.ncut, weighted graph: the same object")

  -- object 0.9 axis 2 + 0.45 axis 1: cosine with the background 0.45, an
  -- edge at tau = 0.2 (the graph is then complete); tau = 0.6 cuts it
  local mix = {}
  for i = 1, D do mix[i] = (i == 2 and 0.9 or 0) + (i == 1 and 0.45 or 0) end
  local f3 = grid_features(function(r, c) return in_rect(r, c) and "o" or "b" end, { o = mix, b = axis(1) }, 0.02, 5)
  local cut3 = tokencut.ncut(f3, GH, GW, params_of(tokencut, { tau = 0.6 }))
  tap.ok(same(cut3.mask, grid_mask(in_rect)), "tokencut.ncut: tau = 0.6 drops the 0.45-similar edges and cuts the object out")
end

-- LOST ---------------------------------------------------------------------------------
local lost = recipes.load("lost")
do
  -- raw keys: background patches correlate positively with each other,
  -- the object negatively with the background → the object has the lowest degree
  local neg = {}
  for i = 1, D do neg[i] = (i == 2 and 1 or 0) + (i == 1 and -0.3 or 0) end
  local feats = grid_features(function(r, c) return in_rect(r, c) and "o" or "b" end, { o = neg, b = axis(1) }, 0.05)
  local found = lost.lost(feats, GH, GW, params_of(lost))
  tap.ok(same(found.mask, grid_mask(in_rect)), "lost.lost recovers the planted object exactly")
  local sr, sc = math.floor(found.seed / GW), found.seed % GW
  tap.ok(in_rect(sr, sc), "lost.lost: the seed (lowest degree) lies in the object")
  tap.eq(#found.similars, 24, "lost.lost: the expansion keeps the 24 object patches among the 100 candidates")
  local deg = found.degree
  tap.ok(deg:get(sr + 1, sc + 1) == 23 and deg:get(1, 1) == 167,
    "lost.lost: degree = positive correlations with the other patches")

  -- k_patches below the object size: fewer patches vote, the same object
  local few = lost.lost(feats, GH, GW, params_of(lost, { k_patches = 5 }))
  tap.ok(#few.similars == 5 and same(few.mask, grid_mask(in_rect)), "lost.lost with k_patches = 5")

  -- two separated objects: only the seed's component
  local two = grid_features(function(r, c) return (in_rect(r, c) or in_rect2(r, c)) and "o" or "b" end,
                            { o = neg, b = axis(1) }, 0.05, 13)
  local f2 = lost.lost(two, GH, GW, params_of(lost))
  local r2, c2 = math.floor(f2.seed / GW), f2.seed % GW
  tap.ok((in_rect(r2, c2) and same(f2.mask, grid_mask(in_rect))) or (in_rect2(r2, c2) and same(f2.mask, grid_mask(in_rect2))),
    "lost.lost: the object is the component of map > 0 holding the seed")
  tap.ok(f2.map:get(10, 3) > 0 and f2.map:get(5, 7) > 0 and f2.map:get(1, 1) < 0,
    "lost.lost: the map is positive on both objects, negative on the background")
end

-- Deep Spectral Methods ---------------------------------------------------------------
local dsm = recipes.load("deep_spectral")
do
  local feats = grid_features(function(r, c) return in_rect(r, c) and "o" or "b" end,
                              { o = axis(2), b = axis(1) }, 0.05)
  local p = params_of(dsm, { K = 4, patch = 16 })
  local vals, vecs = dsm.eigs(feats, GH, GW, p)
  tap.ok(vals:size(1) == 4 and vecs:size(1) == 4 and vecs:size(2) == GH * GW, "deep_spectral.eigs: K eigenpairs as rows")
  tap.ok(math.abs(vals:get(1)) < 1e-4 and vals:get(2) > vals:get(1), "deep_spectral.eigs: ascending from 0")
  local frac = vecs:gt(0):mean(2):values()
  local signs_ok = true
  for k = 1, 4 do signs_ok = signs_ok and (frac[k] <= 0.5 or frac[k] == 1) end
  tap.ok(signs_ok, "deep_spectral.eigs: each eigenvector at most half positive, or all")
  tap.ok(same(dsm.single_region(vecs, GH, GW, p), grid_mask(in_rect)),
    "deep_spectral single region: Fiedler vector > 0 is the planted object")

  -- multi-region: background touching the border plus three regions
  local function three_regions(r, c)
    if in_rect(r, c) then return "a" elseif in_rect2(r, c) then return "b" end
    if r >= 2 and r <= 4 and c >= 12 and c <= 14 then return "c" end
    return "bg"
  end
  -- v_i = e_i − 0.3 Σ_{j≠i} e_j: every pair negatively correlated, so
  -- W = max(0, cos) has no edges between regions (threshold_at_zero)
  local function spread(i)
    local v = {}
    for j = 1, D do v[j] = j == i and 1 or (j <= 4 and -0.3 or 0) end
    return v
  end
  local f4 = grid_features(three_regions, { a = spread(2), b = spread(3), c = spread(4), bg = spread(1) }, 0.05, 17)
  -- K = 4: the three non-constant eigenvectors of the 4 zero eigenvalues
  -- (with more, an eigenvector of a region's inside, unit D-norm however
  -- small its eigenvalue gap, would weigh as much in k-means)
  local p4 = params_of(dsm, { K = 4, patch = 16 })
  local v4, e4 = dsm.eigs(f4, GH, GW, p4)
  local grid, n = dsm.multi_region(v4, e4, GH, GW, p4, f4)
  local truth = T.new({ GH, GW }, "int32")
  local names = { bg = 0, a = 1, b = 2, c = 3 }
  for r = 0, GH - 1 do for c = 0, GW - 1 do truth:set(r + 1, c + 1, names[three_regions(r, c)]) end end
  tap.ok(n == 4 and same_partition(grid, truth), "deep_spectral multi region: 4 planted regions recovered exactly")
  tap.ok(grid:get(1, 1) == 0 and grid:get(12, 16) == 0, "deep_spectral multi region: the border region is segment 0")
  local pa = params_of(dsm, { K = 8, patch = 16, adaptive = true, num_eigenvectors = 3 })
  local va, ea = dsm.eigs(f4, GH, GW, pa)
  local ga, na = dsm.multi_region(va, ea, GH, GW, pa, f4)
  tap.ok(na == 4 and same_partition(ga, truth),
         "deep_spectral adaptive (K = 8, num_eigenvectors = 3): the eigengap finds the 4 regions")
  local gb = dsm.multi_region(v4, e4, GH, GW, params_of(dsm, { kmeans_baseline = true }), f4)
  tap.ok(same_partition(gb, truth), "deep_spectral kmeans_baseline: k-means on the features")

  -- background index: the label on most border patches trades places with 0
  local g = T.full({ 4, 5 }, 2, "int32")
  g:set(2, 2, 0); g:set(2, 3, 0); g:set(3, 3, 1); g:set(1, 1, 1)
  local swapped = dsm.background_first(g)
  tap.eq(table.concat(swapped:values(), ","), "1,0,0,0,0,0,2,2,0,0,0,0,1,0,0,0,0,0,0,0",
    "deep_spectral.background_first: swaps the border-most label with 0")

  tap.raises(function() dsm.eigs(feats, GH, GW, params_of(dsm, { image_color_lambda = 10, patch = 16 })) end,
    "not implemented", "deep_spectral: the colour affinity is refused, not ignored")
  -- image_downsample_factor 8 with 16-pixel patches: a grid twice as fine
  local _, vf, fh, fw = dsm.eigs(feats, GH, GW, params_of(dsm, { K = 3, patch = 16, image_downsample_factor = 8 }))
  tap.ok(fh == 2 * GH and fw == 2 * GW and vf:size(2) == 4 * GH * GW,
    "deep_spectral: image_downsample_factor upsamples the features to its grid")
end

-- k-means on patches -----------------------------------------------------------------------
local km = recipes.load("dino_kmeans")
do
  local function two_regions(r, c)
    if in_rect(r, c) then return "a" elseif in_rect2(r, c) then return "b" end
    return "bg"
  end
  local feats = grid_features(two_regions, { a = axis(2), b = axis(3), bg = axis(1) }, 0.05, 19)
  local truth = T.new({ GH, GW }, "int32")
  local names = { bg = 0, a = 1, b = 2 }
  for r = 0, GH - 1 do for c = 0, GW - 1 do truth:set(r + 1, c + 1, names[two_regions(r, c)]) end end
  local labels, k = km.cluster(feats, GH, GW, params_of(km, { k = 3, order = "appearance", background = false }))
  tap.ok(k == 3 and same_partition(labels, truth), "dino_kmeans.cluster: k = 3 recovers the planted regions")
  tap.ok(labels:get(1, 1) == 0 and labels:get(4, 6) == 1 and labels:get(9, 2) == 2,
    "dino_kmeans.cluster: order = appearance numbers segments by first appearance")
  local raw = cluster.kmeans(km.prepare(feats, GH, GW, params_of(km, { k = 3 })), 3, { seed = 0 })
  local kept = km.cluster(feats, GH, GW, params_of(km, { k = 3, background = false }))
  tap.ok(same(kept, raw:reshape(GH, GW)), "dino_kmeans.cluster: order = kmeans keeps k-means' own ids")
  local bg = km.cluster(feats, GH, GW, params_of(km, { k = 3 }))
  tap.ok(same_partition(bg, truth) and bg:get(1, 1) == 0,
    "dino_kmeans.cluster: background (the default) makes the border-most segment 0")
  tap.raises(function() km.setup(params_of(km, { order = "size" }), {}) end, "order must be",
    "dino_kmeans: unknown order refused")
  local ls, ks = km.cluster(feats, GH, GW, params_of(km, { k = "silhouette" }))
  tap.ok(ks == 3 and same_partition(ls, truth), "dino_kmeans k = silhouette picks 3")
  local le, ke = km.cluster(feats, GH, GW, params_of(km, { k = "eigengap" }))
  tap.ok(ke == 3 and same_partition(le, truth), "dino_kmeans k = eigengap picks 3")
  local x = km.prepare(feats, GH, GW, params_of(km, { pos_weight = 2 }))
  tap.ok(x:size(2) == D + 2 and math.abs(x:get(GW + 3, D + 1) - 1.5 / GH * 2) < 1e-6
    and math.abs(x:get(GW + 3, D + 2) - 2.5 / GW * 2) < 1e-6,
    "dino_kmeans.prepare: (row, column) centres times pos_weight appended")
  tap.raises(function() km.setup(params_of(km, { feature = "attn" }), {}) end, "feature must be",
             "dino_kmeans: unknown feature refused")
end

-- LOST's tie order: torch.argsort(-degree, descending=True) on the CPU (torch 1.13.1)
do
  local lost_r = recipes.load("lost")
  local deg = { 3, 1, 2, 2, 0, 1, 3, 3, 2, 1, 0, 0, 2, 3, 1, 1, 2, 0, 3, 2, 1, 2, 2, 0, 1, 3, 1, 2, 0, 2, 1, 1, 3, 2, 0, 1 }
  local keys = {}
  for i = 1, #deg do keys[i - 1] = -deg[i] end
  tap.eq(table.concat(lost_r.argsort_desc(keys, #deg), ","),
    "34,4,28,23,10,11,17,1,35,31,30,26,24,20,15,14,9,5,16,2,19,12,21,22,8,33,27,3,29,0,32,6,7,25,18,13",
    "lost.argsort_desc: torch.argsort's unstable order of 36 tied degrees")
end

-- k-means draws numpy's stream: scikit-learn's labels -------------------------------------
do
  -- 24 points, KMeans(n_clusters=5).fit_predict after np.random.seed(s)
  -- (scikit-learn 1.2.1, numpy 1.24)
  local x = T.from_table({ {0.52, 1.23}, {0.5, -1.95}, {1.36, 0.67}, {-0.81, 0.87}, {0.55, 0.44}, {0.04, 0.82},
    {-1.1, -0.24}, {-0.72, 0.9}, {0.06, -0.44}, {-1.17, -0.39}, {0.01, -0.41}, {1.94, 1.51}, {-4.07, -2.83},
    {-0.26, -0.63}, {0.32, 0.33}, {3.18, -1.67}, {-0.57, 3.06}, {0.97, 0.99}, {-0.77, -2.47}, {0.25, 0.16},
    {-1.84, -1.02}, {-0.11, -1.42}, {-0.15, 0.14}, {0.05, -0.76} })
  local want = {
    [0] = "0,1,0,3,0,0,1,3,1,1,1,0,2,1,0,4,3,0,1,0,1,1,1,1",
    [1] = "3,1,3,0,3,3,1,0,1,1,1,3,2,1,3,4,0,3,1,3,1,1,3,1",
    [7] = "3,0,3,1,3,1,0,1,0,0,0,3,2,0,3,4,1,3,0,3,0,0,1,0",
  }
  for _, seed in ipairs({ 0, 1, 7 }) do
    local labels = cluster.kmeans(x, 5, { seed = seed })
    tap.eq(table.concat(labels:values(), ","), want[seed],
      ("cluster.kmeans seed %d: scikit-learn's KMeans labels under np.random.seed(%d)"):format(seed, seed))
  end
  tap.raises(function() cluster.kmeans(x, 2, { seed = 2 ^ 32 }) end, "seed", "cluster.kmeans: seeds beyond 2^32 - 1 refused")
end

-- Deep Spectral localisation and the official upsampling ----------------------------------
do
  local loc = recipes.load("deep_spectral_loc")
  local function bits(t) return table.concat(t:values(), "") end
  local y = T.from_table({ { 1, -1, 1, 1 }, { -1, 1, -1, -1 }, { -1, -1, -1, 1 } })
  tap.eq(bits(loc.localize(y)), "101101000000", "deep_spectral_loc: the largest 8-connected component of y > 0")
  tap.eq(bits(loc.localize(T.from_table({ { 1, -1, -1, 1, -1 } }))), "10000",
    "deep_spectral_loc: equal components, the first in raster order (skimage's numbering)")
  tap.eq(bits(loc.localize(T.from_table({ { 1, 1, 1, -1 } }))), "0001",
    "deep_spectral_loc: more than half set is inverted")
  tap.eq(bits(loc.localize(T.from_table({ { -1, -1 }, { -1, -1 } }))), "1111",
    "deep_spectral_loc: nothing set covers the whole image")

  -- a 2x3 grid of 4-pixel patches on a 10x13 image: the crop is 8x12; the
  -- strip beyond it takes cv2.resize's nearest rows and columns
  local grid = T.from_table({ { 0, 1, 2 }, { 3, 4, 5 } }, "int32")
  local frame = { h = 10, w = 13, rh = 10, rw = 13, gh = 2, gw = 3, patch = 4 }
  local lab = dsm.to_image(grid, frame)
  tap.ok(lab:get(1, 1) == 0 and lab:get(8, 5) == 4 and lab:get(8, 12) == 5,
    "deep_spectral.to_image: the cropped part by patch blocks")
  tap.ok(lab:get(5, 13) == 2 and lab:get(9, 5) == 3 and lab:get(10, 13) == 5,
    "deep_spectral.to_image: outside the crop, cv2 nearest of the grid to the image (row 4 → patch row 0)")
end

-- Position embeddings as the torch.hub DINO code resamples them ----------------------------
for _, name in ipairs({ "tokencut", "lost", "deep_spectral", "deep_spectral_loc", "dino_kmeans" }) do
  local r = recipes.load(name)
  tap.eq(r.defaults.positions, "hub", name .. ": positions default to the torch.hub code's (as the official code runs)")
  tap.raises(function() r.setup(params_of(r, { positions = "timm" }), { dino = { patch_size = 16 } }) end,
    "positions must be", name .. ": unknown positions refused at setup")
end
do
  local dir = tap.fixtures("dino-tiny")
  if dir then
    local model = require("fmseg.models").load("dino", dir)   -- patch 8, a 4x4 position grid
    local sq = T.randn({ 1, 3, 32, 32 }, 3)
    tap.ok(tap.rel_err(model:encode_image(sq, model:hub_positions()).last, model:encode_image(sq).last) == 0,
      "hub positions: the checkpoint's own 4x4 grid is used as it is")
    local flat = T.randn({ 1, 3, 16, 64 }, 4)                  -- 2x8: as many patches as 4x4
    local hub = model:encode_image(flat, model:hub_positions()).last
    tap.ok(tap.rel_err(hub, model:encode_image(flat).last) > 1e-3,
      "hub positions: a 2x8 grid of 16 patches is resampled by scale_factor, not by size")
    local x = patches.input(image.load(dir .. "/input.png"), model.patch_size, { resize = 40 })
    tap.raises(function() patches.features(model, x, "k", { positions = "timm" }) end, "positions must be",
      "patches.features: unknown positions refused")
  end
end

-- End to end on the fixtures ----------------------------------------------------------------
local CONFIGS = {
  { "configs/tokencut/tokencut_dino-s16_voc07.yaml", "instances" },
  { "configs/lost/lost_dino-s16_voc12.yaml", "instances" },
  { "configs/deep_spectral/deep_spectral_dino-s16_voc21.yaml", "segments" },
  { "configs/deep_spectral/deep_spectral_dino-s16_single.yaml", "segments" },
  { "configs/dino_kmeans/dino_kmeans_dino-s16_voc21.yaml", "segments" },
  { "configs/deep_spectral/deep_spectral_loc_dino-s16_voc07.yaml", "instances" },
}

local read_all = require("fmseg.io.fs").read

local tmp = os.tmpname()
os.remove(tmp)
for _, fixture in ipairs({ "dino-tiny", "dinov2-tiny", "dinov2-reg-tiny" }) do
  local dir = tap.fixtures(fixture)
  if dir then
    -- registers and CLS are dropped: one feature row per patch
    local model = require("fmseg.models").load("dino", dir)
    local img = image.load(dir .. "/input.png")
    local x, frame = patches.input(img, model.patch_size, { resize = 96 })
    local f = patches.features(model, x, "k")
    local out = model:encode_image(x, { qkv = true })
    local k = out.qkv.k:select(1, 1)
    tap.ok(f:size(1) == frame.gh * frame.gw and tap.rel_err(f, k:narrow(1, k:size(1) - f:size(1) + 1, f:size(1))) == 0,
      fixture .. ": patches.features drops the " .. model.num_prefix_tokens .. " prefix token(s)")
    for _, c in ipairs(CONFIGS) do
      local cfg, kind = c[1], c[2]
      local out_dir = ("%s-%s"):format(tmp, fixture)
      -- the fixture image is 512x512; 128 px keeps the dense eigenproblems small
      local cmd = ("./fmseg segment %s %s/input.png --set models.dino=%s --set params.resize=128 -o %s 2>/dev/null")
        :format(cfg, dir, dir, out_dir)
      local ok = os.execute(cmd)
      local summary = read_all(out_dir .. "/input.json")
      local s = summary and json.decode(summary)
      local name = ("%s on %s"):format(cfg:match("([^/]+)%.yaml$"), fixture)
      local png = io.open(out_dir .. "/input.png", "rb") and image.load_indices(out_dir .. "/input.png")
      local well = (ok == 0 or ok == true) and s and s.kind == kind and s.width == 512 and s.height == 512
        and png and png:size(1) == 512 and png:size(2) == 512 and read_all(out_dir .. "/input_overlay.png") ~= nil
      if well and kind == "instances" then
        local b = s.instances and s.instances[1] and s.instances[1].box
        well = b and #b == 4 and b[1] >= 0 and b[2] >= 0 and b[3] <= 512 and b[4] <= 512 and b[1] < b[3] and b[2] < b[4]
      end
      tap.ok(well, name .. ": label PNG, overlay and JSON written" .. (kind == "instances" and ", box inside the image" or ""),
        summary)
      os.execute(("rm -rf '%s'"):format(out_dir))
    end
  end
end

os.exit(tap.done())
