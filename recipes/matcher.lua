-- Matcher (Liu et al., ICLR24), one-shot: a reference image with a mask of
-- the object; DINOv2 patch features match the object's patches into a new
-- image, the matched points prompt SAM in sets, and the proposals that
-- match the reference best as instances are merged.
-- ref: aim-uofa/Matcher matcher/Matcher.py (Matcher, RobustPromptSampler,
--      build_matcher_oss), matcher/k_means.py, main_oss.py (its arguments
--      and test loop), scripts/*.sh (the settings per benchmark), and its
--      segment_anything/automatic_mask_generator.py (the prompt-set path).
--
--   0. both images are resized to input_size x input_size (torchvision's
--      Resize on PIL images: bilinear, antialiased), the mask (grey > 0, as
--      fmseg's one-shot datasets read masks) by torch's nearest; an empty
--      mask becomes the central 14 x 14 block (reference_masks_verification).
--   1. features: DINOv2's patch tokens before the final norm (x_prenorm),
--      L2-normalised; the reference mask pooled to the patch grid (a patch
--      is in when any pixel is: avg_pool2d > 0).
--   2. patch-level matching: S = ref . tar^T, cost C = (1 - S) / 2; the
--      forward assignment (Hungarian, maximum similarity) of the masked
--      reference patches to target patches, then the reverse one of those
--      target patches to all reference patches; pairs whose reverse match
--      leaves the mask are dropped (unless all would be). Past 40 pairs the
--      more similar half is kept. The target patches, in the order of a
--      Python set of their indices, give the points (patch centres).
--   3. robust prompt sampler: with use_points_or_centers false the points
--      are first clustered (k-means++, torch's generator: kmeans_pp) to
--      num_centers; then every set of sample_range[1]..sample_range[2]
--      points (all combinations when there are at most 8, else
--      max_sample_iterations random.sample draws per size) is one prompt.
--   4. SAM's proposals (Matcher's SamAutomaticMaskGenerator): the dense
--      grid when dense_pred, each prompt set (all points positive, the box
--      of the points with use_box), filtered by predicted IoU and stability,
--      then box NMS (box_nms_thresh) over all, by predicted IoU.
--   5. instance-level matching, per proposal: emd = 1 - the earth mover's
--      distance (uniform weights, cost C) between the reference patches and
--      the proposal's patches (any pixel, cv2 INTER_AREA > 0); purity = the
--      matched points inside / the proposal's patch count; coverage = the
--      points inside / all points; score = alpha emd + beta purity
--      coverage^exp. Filters by coverage, emd, purity (each at most the
--      best value).
--   6. controllable merging: with use_score_filter, proposals by distance
--      1 - score, kept while below deep_score_filter and (normalised by the
--      largest) below deep_score_norm_filter, the best always, at most
--      num_merging_mask; else the num_merging_mask best scores, those above
--      topk_scores_threshold x the best. The union is the mask; it is
--      resized back to the image by nearest.
--
-- Randomness as the official evaluation has it: Python's random seeded
-- once (main_oss.py's random.seed(0) at import) and torch's generator
-- (utils.fix_randseed(0), then the two words the DataLoader's iterator
-- draws for its base seed); both streams run on across the images a
-- recipe state segments, in order. Where the official code sorts with
-- torch's unstable sort (matched pairs by similarity, proposals by score),
-- equal values keep their earlier order here. One reference per item (the
-- official code also takes n shots). When SAM keeps no proposal at all the
-- official code fails (torch.cat of nothing); here the mask is empty.
--
-- output = "instances": one mask; "semantic": labels 0 / 1. result.dump:
-- points, centers, box, proposal_area / bbox / iou / stability, emd,
-- purity, coverage, scores (per proposal), kept, merged (0-based proposal
-- indices), mask (the input_size mask); tests/fixtures/methods/matcher-*.
local image = require("fmseg.image")
local masks = require("fmseg.masks")
local nn = require("fmseg.nn")
local oneshot = require("fmseg.eval.oneshot")
local pyrandom = require("fmseg.pyrandom")
local T = require("fmseg.tensor")
local transport = require("fmseg.transport")

local f32 = pyrandom.f32

local recipe = {
  name = "matcher",
  needs = { "sam", "vfm" },
  oneshot = true,          -- takes its reference per item in a one-shot evaluation (set_reference)
  -- main_oss.py's defaults (names as Matcher's and its generator's; the
  -- per-benchmark settings of scripts/*.sh are in configs/matcher/)
  defaults = {
    ref_image = false, ref_mask = false,
    output = "instances",
    input_size = 518,              -- --img-size (Matcher's input_size)
    seed = 0,                      -- random.seed and fix_randseed
    -- the prompt sampler
    num_centers = 8, use_box = false, use_points_or_centers = false, sample_range = { 4, 6 },
    max_sample_iterations = 30,
    -- the generator (SamAutomaticMaskGenerator as build_matcher_oss builds it)
    points_per_side = 64, points_per_batch = 64, dense_pred = false,
    pred_iou_thresh = 0.88, stability_score_thresh = 0.95, stability_score_offset = 1.0,
    sel_pred_iou_thresh = 0.0, sel_stability_score_thresh = 0.0, sel_stability_score_offset = 1.0,
    box_nms_thresh = 1.0, multimask_output = false, sel_multimask_output = false,
    output_layer = 0, sel_output_layer = 3,
    -- scores, filters, merging
    alpha = 1.0, beta = 0.0, exp = 0.0,
    emd_filter = 0.0, purity_filter = 0.0, coverage_filter = 0.0,
    use_score_filter = false, deep_score_filter = 0.33, deep_score_norm_filter = 0.1,
    topk_scores_threshold = 0.7, num_merging_mask = 10,
  },
}

local IMAGENET_MEAN = { 0.485, 0.456, 0.406 }
local IMAGENET_STD = { 0.229, 0.224, 0.225 }

-- ---- 0-1. inputs and features ----------------------------------------------------------

-- img (H, W, 3) uint8 → the input_size x input_size image Matcher sees
-- (Resize((S, S)) on the PIL image, then ToTensor; x 255 gives it back
-- exactly, what SAM gets)
function recipe.resize_image(img, size)
  return image.resize_pil(img, size, size, "bilinear")
end

-- the resized image → DINOv2's input: /255, ImageNet normalisation
local function dinov2_input(img)
  local x = image.to_chw(img) / 255
  local mean = T.from_table(IMAGENET_MEAN):reshape(1, 3, 1, 1)
  local std = T.from_table(IMAGENET_STD):reshape(1, 3, 1, 1)
  return (x - mean) / std
end

-- DINOv2's patch tokens before the final norm, L2-normalised: (N, C)
function recipe.features(vfm, img)
  local out = vfm:encode_image(dinov2_input(img), vfm:hub_positions())
  local x = out.last                                   -- (1, T, C): x_prenorm
  local n = x:size(2) - vfm.num_prefix_tokens
  return nn.normalize(x:select(1, 1):narrow(1, vfm.num_prefix_tokens + 1, n):contiguous())
end

-- mask (H, W) 0/1 → (S, S) uint8 by torch's nearest (the datasets'
-- F.interpolate), the central 14 x 14 block when it is empty
function recipe.resize_mask(mask, size)
  local m = nn.interpolate(mask:float():reshape(1, 1, mask:size(1), mask:size(2)), size, size, { mode = "nearest" })
  local any = m:reshape(size, size):gt(0)
  local out = any:byte()
  if any:sum() == 0 then
    local c, op = math.floor(size / 2), out:ptr()
    for y = math.max(c - 7, 0), math.min(c + 7, size) - 1 do
      for x = math.max(c - 7, 0), math.min(c + 7, size) - 1 do op[y * size + x] = 1 end
    end
  end
  return out
end

-- mask (S, S) uint8 → the patch grid (F, F) as a list of the 0-based patch
-- indices any of whose pixels is set (avg_pool2d > 0; also cv2's
-- INTER_AREA > 0 at an integer scale); empty when none
function recipe.pool(mask, patch)
  local s = mask:size(1)
  local f = math.floor(s / patch)
  local p, on = mask:contiguous():ptr(), {}
  local hit = {}
  for y = 0, f * patch - 1 do
    local row, py = y * s, math.floor(y / patch) * f
    for x = 0, f * patch - 1 do
      if p[row + x] ~= 0 then hit[py + math.floor(x / patch)] = true end
    end
  end
  for k = 0, f * f - 1 do
    if hit[k] then on[#on + 1] = k end
  end
  return on
end

-- ---- 2. patch-level matching --------------------------------------------------------------

-- rows (0-based list) of m (R, C) → (#rows, C)
local function take_rows(m, rows)
  local c = m:size(2)
  local out = T.new({ #rows, c })
  local src, dst = m:contiguous():ptr(), out:ptr()
  for i, r in ipairs(rows) do
    for j = 0, c - 1 do dst[(i - 1) * c + j] = src[r * c + j] end
  end
  return out
end

-- The matched points: ref (Nr, C), tar (N, C) normalised features, ref_in
-- (0-based masked reference patches), grid F, patch p, size S →
-- points {{x, y}, ...} (Matcher's order), S (Nr, N), the cost C.
function recipe.patch_level_matching(ref, tar, ref_in, f, patch, size)
  local S = ref:matmul(tar, false, true)                            -- (Nr, N)
  local C = (1 - S) / 2
  local s_fwd = take_rows(S, ref_in)
  local fwd = transport.linear_sum_assignment(s_fwd, { maximize = true })
  local pairs_ = {}
  local sp = s_fwd:ptr()
  local n = S:size(2)
  for i = 1, #ref_in do pairs_[i] = { col = fwd[i] - 1, sim = sp[(i - 1) * n + fwd[i] - 1] } end
  -- reverse: the matched target patches against every reference patch
  local cols = {}
  for i, pr in ipairs(pairs_) do cols[i] = pr.col end
  local rev = transport.linear_sum_assignment(take_rows(S:t():contiguous(), cols), { maximize = true })
  local in_mask = {}
  for _, r in ipairs(ref_in) do in_mask[r] = true end
  local kept = {}
  for i, pr in ipairs(pairs_) do
    if in_mask[rev[i] - 1] then kept[#kept + 1] = pr end
  end
  if #kept == 0 then kept = pairs_ end
  -- past 40 pairs, the more similar half (a stable order among equals)
  local reduced = #kept > 40 and math.floor(#kept / 2) or #kept
  local order = {}
  for i = 1, #kept do order[i] = i end
  table.sort(order, function(a, b)
    if kept[a].sim ~= kept[b].sim then return kept[a].sim > kept[b].sim end
    return a < b
  end)
  local inds = {}
  for i = 1, reduced do inds[i] = kept[order[i]].col end
  local points = {}
  for _, idx in ipairs(pyrandom.set_order(inds)) do
    local x = (idx % f) * patch + math.floor(patch / 2)
    local y = math.floor(idx / f) * patch + math.floor(patch / 2)
    if x < size and y < size then points[#points + 1] = { x, y } end
  end
  return points, S, C
end

-- The box of the points, clipped to the image (use_box)
function recipe.points_box(points, size)
  local x0, y0, x1, y1 = math.huge, math.huge, -math.huge, -math.huge
  for _, p in ipairs(points) do
    x0, y0 = math.min(x0, p[1]), math.min(y0, p[2])
    x1, y1 = math.max(x1, p[1]), math.max(y1, p[2])
  end
  return { math.max(x0, 0), math.max(y0, 0), math.min(x1, size - 1), math.min(y1, size - 1) }
end

-- ---- 3. robust prompt sampler -----------------------------------------------------------

-- torch.cdist(X, centers) in float32 as torch 1.13 computes it on the
-- CPU: through a product (|x|^2 - 2 x.c + |c|^2, clamped at 0) when either
-- side has more than 25 rows, else sqrt(fma(dy, dy, dx^2)) per pair.
local function cdist(X, centers)
  local n, k = #X, #centers
  local out = {}
  if n > 25 or k > 25 then
    local cn = {}
    for j, c in ipairs(centers) do cn[j] = f32(f32(c[1] * c[1]) + f32(c[2] * c[2])) end
    for i, x in ipairs(X) do
      local xn = f32(f32(x[1] * x[1]) + f32(x[2] * x[2]))
      local mx, my = f32(-2 * x[1]), f32(-2 * x[2])
      local row = {}
      for j, c in ipairs(centers) do
        local acc = f32(f32(mx * c[1]) + f32(my * c[2]))
        acc = f32(f32(acc + xn) + cn[j])
        row[j] = f32(math.sqrt(math.max(acc, 0)))
      end
      out[i] = row
    end
  else
    for i, x in ipairs(X) do
      local row = {}
      for j, c in ipairs(centers) do
        local dx, dy = f32(x[1] - c[1]), f32(x[2] - c[2])
        row[j] = f32(math.sqrt(f32(dy * dy + f32(dx * dx))))
      end
      out[i] = row
    end
  end
  return out
end

-- matcher/k_means.py kmeans_pp(points, K): the first centre by
-- torch.randint, each next by torch.multinomial over the squared distance
-- (+1e-6) to the nearest centre, then up to 100 Lloyd steps (empty
-- clusters keep their centre) until the centres stop moving → centres
-- (float32 {x, y}), assignment (1-based per point)
function recipe.kmeans_pp(points, k, th)
  local X = {}
  for i, p in ipairs(points) do X[i] = { f32(p[1]), f32(p[2]) } end
  local n = #X
  local first = X[th:randint(n) + 1]
  local centers = { { first[1], first[2] } }
  for _ = 1, k - 1 do
    local d = cdist(X, centers)
    local d2, total = {}, 0
    for i = 1, n do
      local m = math.huge
      for j = 1, #centers do m = math.min(m, d[i][j]) end
      m = f32(m + f32(1e-6))
      d2[i] = f32(m * m)
      total = total + d2[i]
    end
    total = f32(total)
    local probs = {}
    for i = 1, n do probs[i] = f32(d2[i] / total) end
    local c = X[th:multinomial(probs) + 1]
    centers[#centers + 1] = { c[1], c[2] }
  end
  local assign
  for _ = 1, 100 do
    local d = cdist(X, centers)
    assign = {}
    local sx, sy, cnt = {}, {}, {}
    for j = 1, k do sx[j], sy[j], cnt[j] = 0, 0, 0 end
    for i = 1, n do
      local best, bj = math.huge, 1
      for j = 1, k do
        if d[i][j] < best then best, bj = d[i][j], j end
      end
      assign[i] = bj
      sx[bj], sy[bj], cnt[bj] = sx[bj] + X[i][1], sy[bj] + X[i][2], cnt[bj] + 1
    end
    local moved, new = false, {}
    for j = 1, k do
      if cnt[j] > 0 then new[j] = { f32(sx[j] / cnt[j]), f32(sy[j] / cnt[j]) }
      else new[j] = centers[j] end
      if new[j][1] ~= centers[j][1] or new[j][2] ~= centers[j][2] then moved = true end
    end
    if not moved then break end
    centers = new
  end
  return centers, assign
end

-- Matcher.clustering: kmeans_pp to min(num_centers, #points) centres,
-- again while a cluster is empty; centres truncated to integers
function recipe.clustering(points, num_centers, th)
  local k = math.min(num_centers, #points)
  for _ = 1, 1000 do
    local centers, assign = recipe.kmeans_pp(points, k, th)
    local seen, distinct = {}, 0
    for _, a in ipairs(assign) do
      if not seen[a] then seen[a], distinct = true, distinct + 1 end
    end
    if distinct == k then
      local out = {}
      for j, c in ipairs(centers) do
        out[j] = { c[1] >= 0 and math.floor(c[1]) or math.ceil(c[1]), c[2] >= 0 and math.floor(c[2]) or math.ceil(c[2]) }
      end
      return out
    end
  end
  error("matcher: k-means++ left a cluster empty 1000 times", 0)
end

-- RobustPromptSampler.combinations(n, k): its recursive order (0-based)
function recipe.combinations(n, k)
  if k > n then return {} end
  if k == 0 then return { {} } end
  if k == n then
    local all = {}
    for i = 0, n - 1 do all[i + 1] = i end
    return { all }
  end
  local res = {}
  for i = 0, n - 1 do
    for _, j in ipairs(recipe.combinations(i, k - 1)) do
      local c = {}
      for t, v in ipairs(j) do c[t] = v end
      c[#c + 1] = i
      res[#res + 1] = c
    end
  end
  return res
end

-- RobustPromptSampler.sample_points: per size, the list of point-index
-- sets (0-based): every combination for at most 8 points, else
-- max_sample_iterations random.sample draws
function recipe.sample_points(n, range, iterations, py)
  local groups = {}
  for i = math.min(range[1], n), math.min(range[2], n) do
    local sets
    if n > 8 then
      sets = {}
      for j = 1, iterations do sets[j] = py:sample(n, i) end
    else
      sets = recipe.combinations(n, i)
    end
    groups[#groups + 1] = { size = i, sets = sets }
  end
  return groups
end

-- ---- 4. SAM's proposals ------------------------------------------------------------------

-- One batch of prompts through the predictor (points (B, P, 2), labels all
-- positive, box or nil) → entries {rle, box, iou, stability} kept by the
-- filters; multimask / layer / thresholds as _process_batch and
-- _process_sel_batch take them.
local function process_prompts(predictor, pts, box, o)
  local b, np_ = pts:size(1), pts:size(2)
  local boxes
  if box then
    boxes = T.new({ b, 4 })
    for i = 1, b do for k = 1, 4 do boxes:set(i, k, box[k]) end end
  end
  local _, iou, low = predictor:predict_batch(pts, T.ones({ b, np_ }), {
    boxes = boxes, multimask = o.multimask, return_logits = true, masks = false })
  local m = iou:size(2)
  -- the output layer choice (only when the prompt-set path is multimask, as
  -- the official code checks sel_multimask_output in both paths)
  local first, last = 1, m
  if o.select then
    if o.layer >= 0 and o.layer <= 2 then first, last = o.layer + 1, o.layer + 1
    elseif o.layer >= 3 and o.layer <= 5 then first = o.layer - 3 + 1 end
    last = math.min(last, m)
    first = math.min(first, m)
  end
  local iv = iou:contiguous():values()
  local idx, ious = {}, {}
  local thresh = f32(o.iou_thresh)
  for p = 1, b do
    for j = first, last do
      local v = iv[(p - 1) * m + j]
      if o.iou_thresh <= 0 or v > thresh then
        idx[#idx + 1] = { p, j }
        ious[#ious + 1] = v
      end
    end
  end
  local out = {}
  local stab_t = f32(o.stability_thresh)
  for c0 = 1, #idx, 16 do
    local n = math.min(16, #idx - c0 + 1)
    local pick = T.new({ n, low:size(3), low:size(4) })
    for t = 1, n do
      local e = idx[c0 + t - 1]
      pick:select(1, t):copy(low:select(1, e[1]):select(1, e[2]))
    end
    local logits = predictor:upsample_logits(pick)                     -- (n, S, S)
    local stab = masks.stability_score(logits, 0.0, o.stability_offset):values()
    local bin = masks.threshold(logits, 0.0)
    local bx = masks.masks_to_boxes(bin):values()
    for t = 1, n do
      if o.stability_thresh <= 0 or stab[t] >= stab_t then
        out[#out + 1] = { rle = masks.rle_encode(bin:select(1, t)), iou = ious[c0 + t - 1], stability = stab[t],
                          box = { bx[4 * t - 3], bx[4 * t - 2], bx[4 * t - 1], bx[4 * t] } }
      end
    end
    logits:free()
  end
  return out
end

-- Matcher's SamAutomaticMaskGenerator.generate(image,
-- select_point_coords, select_point_labels, select_box) for one crop (the
-- whole image): the dense grid (dense_pred), then every prompt set in
-- batches of points_per_batch, then box NMS by predicted IoU → records in
-- its order. The near-crop-edge rule never applies to the whole image.
function recipe.proposals(predictor, img, point_sets, box, params)
  local s = img:size(1)
  predictor:set_image(img)
  local data = {}
  local step = params.points_per_batch
  local function run(pts, o)
    for _, e in ipairs(process_prompts(predictor, pts, o.box, o)) do data[#data + 1] = e end
    collectgarbage()
  end
  if params.dense_pred then
    local grid = require("fmseg.sam.amg").build_point_grid(params.points_per_side)
    for b0 = 1, #grid, step do
      local n = math.min(step, #grid - b0 + 1)
      local pts = T.new({ n, 1, 2 })
      for i = 1, n do
        local g = grid[b0 + i - 1]
        pts:set(i, 1, 1, g[1] * img:size(2))
        pts:set(i, 1, 2, g[2] * s)
      end
      run(pts, { multimask = params.multimask_output, select = params.sel_multimask_output,
                 layer = params.output_layer, iou_thresh = params.pred_iou_thresh,
                 stability_thresh = params.stability_score_thresh,
                 stability_offset = params.stability_score_offset })
    end
  end
  for _, sets in ipairs(point_sets) do
    for b0 = 1, #sets, step do
      local n = math.min(step, #sets - b0 + 1)
      local pts = T.new({ n, #sets[b0], 2 })
      for i = 1, n do
        for j, p in ipairs(sets[b0 + i - 1]) do
          pts:set(i, j, 1, p[1])
          pts:set(i, j, 2, p[2])
        end
      end
      run(pts, { multimask = params.sel_multimask_output, select = params.sel_multimask_output,
                 layer = params.sel_output_layer, iou_thresh = params.sel_pred_iou_thresh,
                 stability_thresh = params.sel_stability_score_thresh,
                 stability_offset = params.sel_stability_score_offset, box = box })
    end
  end
  predictor:reset_image()
  if #data == 0 then return {} end
  local boxes, scores = T.new({ #data, 4 }), T.new({ #data })
  for i, e in ipairs(data) do
    for k = 1, 4 do boxes:set(i, k, e.box[k]) end
    scores:set(i, e.iou)
  end
  local records = {}
  for i, k in ipairs(masks.nms(boxes, scores, params.box_nms_thresh)) do records[i] = data[k] end
  return records
end

-- ---- 5. instance-level matching ------------------------------------------------------------

-- RobustPromptSampler.get_mask_scores for one proposal: its mask (S, S),
-- the matched points, the cost C, the masked reference patches → purity,
-- coverage, emd (as float32 values)
function recipe.mask_scores(mask, all_points, C, ref_in, patch)
  local f = math.floor(mask:size(1) / patch)
  local cols = recipe.pool(mask, patch)
  if #cols == 0 then                                  -- an empty mask counts as all patches
    for k = 0, f * f - 1 do cols[k + 1] = k end
  end
  local cost = T.new({ #ref_in, #cols })
  local src, dst, n = C:contiguous():ptr(), cost:ptr(), C:size(2)
  for i, r in ipairs(ref_in) do
    for j, c in ipairs(cols) do dst[(i - 1) * #cols + j - 1] = src[r * n + c] end
  end
  local emd = f32(1 - transport.emd_uniform(cost))
  local h, w = mask:size(1), mask:size(2)
  local mp, inside = mask:contiguous():ptr(), 0
  for _, p in ipairs(all_points) do
    local x, y = math.min(math.max(p[1], 0), w - 1), math.min(math.max(p[2], 0), h - 1)
    if mp[y * w + x] ~= 0 then inside = inside + 1 end
  end
  local area = math.max(#cols, 1)
  local purity = f32(f32(inside / area) + f32(1e-6))
  local coverage = f32(f32(inside / #all_points) + f32(1e-6))
  return purity, coverage, emd
end

-- alpha emd + beta purity coverage^exp, in float32 as torch computes it
function recipe.score(p, emd, purity, coverage)
  local e = p.exp
  local ce
  if e == 0 then ce = 1 elseif e == 1 then ce = coverage elseif e == 2 then ce = f32(coverage * coverage)
  elseif e == 0.5 then ce = f32(math.sqrt(coverage)) else ce = f32(coverage ^ e) end
  return f32(f32(emd * f32(p.alpha)) + f32(f32(purity * f32(p.beta)) * ce))
end

-- ---- 6. filters and merging ----------------------------------------------------------------

-- The metric filters (coverage, emd, purity, each with threshold
-- min(filter, its best value)) → the kept proposal indices (1-based)
function recipe.filter(p, metrics, n)
  local kept = {}
  for i = 1, n do kept[i] = i end
  for _, name in ipairs({ "coverage", "emd", "purity" }) do
    local cfg = p[name .. "_filter"]
    if cfg > 0 and #kept > 0 then
      local best = -math.huge
      for _, i in ipairs(kept) do best = math.max(best, metrics[name][i]) end
      local t = best < f32(cfg) and best or f32(cfg)
      local next_ = {}
      for _, i in ipairs(kept) do
        if metrics[name][i] >= t then next_[#next_ + 1] = i end
      end
      kept = next_
    end
  end
  return kept
end

-- The proposals merged (1-based, in Matcher's order) among the kept
function recipe.merge(p, scores, kept)
  if #kept == 0 then return {} end
  local chosen = {}
  if p.use_score_filter then
    local d = {}
    for _, i in ipairs(kept) do d[i] = f32(1 - scores[i]) end
    local rank = { unpack(kept) }
    table.sort(rank, function(a, b) if d[a] ~= d[b] then return d[a] < d[b] end return a < b end)
    local dmin, dmax = d[rank[1]], d[rank[#rank]]
    local den = f32(dmax + f32(1e-6))
    for r, i in ipairs(rank) do
      local pass = (r == 1 or d[i] < f32(p.deep_score_filter)) and f32(f32(d[i] - dmin) / den) < f32(p.deep_score_norm_filter)
      if pass and #chosen < p.num_merging_mask then chosen[#chosen + 1] = i end
    end
  else
    local rank = { unpack(kept) }
    table.sort(rank, function(a, b) if scores[a] ~= scores[b] then return scores[a] > scores[b] end return a < b end)
    local top = math.min(p.num_merging_mask, #rank)
    local best = scores[rank[1]]
    local t = p.topk_scores_threshold
    for r = 1, top do
      local v = scores[rank[r]]
      if t > 0 then v = f32(v / best) end
      if v > f32(t) then chosen[#chosen + 1] = rank[r] end
    end
  end
  return chosen
end

-- ---- the recipe ----------------------------------------------------------------------------------

local function check_params(p)
  local function bad(msg) error("matcher: " .. msg, 0) end
  if p.output ~= "instances" and p.output ~= "semantic" then
    bad(("output must be instances or semantic, got %s"):format(tostring(p.output)))
  end
  if type(p.sample_range) ~= "table" or #p.sample_range ~= 2 or p.sample_range[1] > p.sample_range[2]
      or p.sample_range[1] < 1 then
    bad("sample_range must be {lo, hi} with 1 <= lo <= hi (Matcher's sample_range, e.g. {4, 6})")
  end
  for _, k in ipairs({ "num_centers", "max_sample_iterations", "num_merging_mask", "points_per_batch", "input_size" }) do
    if type(p[k]) ~= "number" or p[k] < 1 or p[k] % 1 ~= 0 then bad(("%s must be a positive integer"):format(k)) end
  end
end

function recipe.setup(params, models, _, cfg)
  check_params(params)
  local sam, vfm = models.sam, models.vfm
  if not sam or sam.family == "sam2" then
    error("matcher: models.sam must be SAM (a SAM directory, e.g. facebook/sam-vit-huge: Matcher prompts "
          .. "segment-anything's SAM)", 0)
  end
  if not vfm or vfm.vision_encoder or not vfm.patch_size or not tostring(vfm.vfm_type or vfm.model_type):match("^dinov2") then
    error("matcher: models.vfm must be DINOv2 (e.g. facebook/dinov2-large, Matcher's ViT-L/14)", 0)
  end
  if params.input_size % vfm.patch_size ~= 0 then
    error(("matcher: input_size %d is not a multiple of DINOv2's patch %d"):format(params.input_size,
      vfm.patch_size), 0)
  end
  local th = pyrandom.torch(params.seed)
  th:random64()                                    -- the DataLoader iterator's base seed
  local state = { params = params, vfm = vfm, predictor = require("fmseg.sam.predictor").new(sam),
                  py = pyrandom.python(params.seed), th = th }
  local task = type(cfg) == "table" and type(cfg.data) == "table" and cfg.data.task
  local one = task == "oneshot" or task == "fewshot"      -- the evaluation sets the references
  if not one or params.ref_image or params.ref_mask then
    recipe.set_reference(state, params.ref_image, params.ref_mask)
  end
  return state
end

-- Matcher.set_reference: the reference's features and its mask on the grid
function recipe.set_reference(state, ref_image, ref_mask)
  if not ref_image or not ref_mask then
    error("matcher: set params.ref_image and params.ref_mask (the reference image and its object mask), "
      .. "or evaluate on a one-shot dataset (data.task: oneshot), whose items bring theirs", 0)
  end
  local ok, ref = pcall(image.load, ref_image)
  if not ok then error(("matcher: cannot read the reference image %s: %s"):format(ref_image, ref), 0) end
  local okm, mimg = pcall(image.load, ref_mask)
  if not okm then error(("matcher: cannot read the reference mask %s: %s"):format(ref_mask, mimg), 0) end
  local s, patch = state.params.input_size, state.vfm.patch_size
  state.ref_feats = recipe.features(state.vfm, recipe.resize_image(ref, s))
  state.ref_in = recipe.pool(recipe.resize_mask(oneshot.grey_mask(mimg), s), patch)
end

local function tensor_of(list, dtype, shape)
  if #list == 0 then return T.new(shape or { 0 }, dtype) end
  return T.from_table(list, dtype)
end

function recipe.segment(state, img)
  local p = state.params
  if not state.ref_feats then error("matcher: no reference set (params.ref_image and params.ref_mask)", 0) end
  local s, patch = p.input_size, state.vfm.patch_size
  local f = math.floor(s / patch)
  local tar = recipe.resize_image(img, s)
  -- 1-2. features, patch-level matching
  local feats = recipe.features(state.vfm, tar)
  local points, _, C = recipe.patch_level_matching(state.ref_feats, feats, state.ref_in, f, patch, s)
  local box = p.use_box and recipe.points_box(points, s) or nil
  -- 3. the prompt sets
  local centers = not p.use_points_or_centers and recipe.clustering(points, p.num_centers, state.th) or nil
  local prompt_points = centers or points
  local point_sets = {}
  for _, g in ipairs(recipe.sample_points(#prompt_points, p.sample_range, p.max_sample_iterations, state.py)) do
    local sets = {}
    for i, set in ipairs(g.sets) do
      local pts = {}
      for j, k in ipairs(set) do pts[j] = prompt_points[k + 1] end
      sets[i] = pts
    end
    point_sets[#point_sets + 1] = sets
  end
  -- 4. proposals
  local records = recipe.proposals(state.predictor, tar, point_sets, box, p)
  -- 5. instance-level matching
  local metrics, scores = { purity = {}, coverage = {}, emd = {} }, {}
  local bins = {}
  for i, r in ipairs(records) do
    bins[i] = masks.rle_decode(r.rle)
    local pu, co, em = recipe.mask_scores(bins[i], points, C, state.ref_in, patch)
    metrics.purity[i], metrics.coverage[i], metrics.emd[i] = pu, co, em
    scores[i] = recipe.score(p, em, pu, co)
  end
  -- 6. filters, merging
  local kept = recipe.filter(p, metrics, #records)
  local merged = recipe.merge(p, scores, kept)
  local union = T.zeros({ s, s }, "uint8")
  local up = union:ptr()
  for _, i in ipairs(merged) do
    local bp = bins[i]:ptr()
    for k = 0, s * s - 1 do
      if bp[k] ~= 0 then up[k] = 1 end
    end
  end
  local h, w = img:size(1), img:size(2)
  local full = nn.interpolate(union:float():reshape(1, 1, s, s), h, w, { mode = "nearest" }):reshape(h, w):gt(0.5)
  -- the dump
  local area, bbox, iou, stab = {}, {}, {}, {}
  for i, r in ipairs(records) do
    area[i] = masks.rle_area(r.rle)
    local b = r.box
    bbox[i] = { b[1], b[2], b[3] - b[1], b[4] - b[2] }
    iou[i], stab[i] = r.iou, r.stability
  end
  local k0, m0 = {}, {}
  for i, v in ipairs(kept) do k0[i] = v - 1 end
  for i, v in ipairs(merged) do m0[i] = v - 1 end
  local dump = {
    points = tensor_of(points, "int32", { 0, 2 }), mask = union,
    proposal_area = tensor_of(area, "int32"), proposal_bbox = tensor_of(bbox, "int32", { 0, 4 }),
    proposal_iou = tensor_of(iou), proposal_stability = tensor_of(stab),
    emd = tensor_of(metrics.emd), purity = tensor_of(metrics.purity), coverage = tensor_of(metrics.coverage),
    scores = tensor_of(scores), kept = tensor_of(k0, "int32"), merged = tensor_of(m0, "int32"),
    centers = centers and tensor_of(centers, "int32", { 0, 2 }) or nil,
    box = box and T.from_table({ box }, "int32") or nil,
  }
  local best = #merged > 0 and scores[merged[1]] or 0
  if p.output == "semantic" then
    local m = full:float()
    return { kind = "semantic", labels = full:int(), scores = T.stack({ 1 - m, m }, 1), dump = dump }
  end
  local bin = full:byte()
  local record = masks.instance_record(bin)
  record.predicted_iou = best
  return { kind = "instances", masks = { bin }, scores = { best }, dump = dump, records = { record } }
end

return recipe
