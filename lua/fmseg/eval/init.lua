-- fmseg.eval — segmentation metrics with mmsegmentation's semantics, the
-- Hungarian matching of unsupervised segments (DiffSeg's protocol), and
-- CorLoc for object discovery (LOST's protocol).
--
--   local ev = require("fmseg.eval")
--   local stats = ev.stats(21)                       -- (K, K + 1) counts
--   ev.add(stats, ev.image_entries(pred, gt, 21, 255))
--   local m = ev.metrics(stats)   -- m.aAcc, m.mIoU, m.mAcc, m.IoU[c], m.Acc[c]
--
-- The confusion table has K rows (ground truth) and K + 1 columns: the last
-- column counts labelled pixels that received no class (a recipe's
-- "unlabelled" value, an unmatched segment). Row K, when used, holds the
-- pixels whose label is no class but that mmseg's IoUMetric still scores
-- (its own ignore_index 255 on 65535-unlabelled maps, data.metric_ignore_index):
-- their predictions count in area_pred, never in area_label. With area_label = row sum,
-- area_pred = column sum and tp the diagonal:
--   IoU_c = tp / (area_pred + area_label - tp), Acc_c = tp / area_label,
--   aAcc = sum tp / sum area_label;
-- a class with a zero denominator gets NaN and is left out of the means
-- (numpy's nanmean), exactly as mmseg's IoUMetric reports.
local core = require("fmseg.core")
local T = require("fmseg.tensor")
local ffi, C, check = core.ffi, core.C, core.check

local M = {}

-- ---- confusion counts ------------------------------------------------------

-- Stats over K classes: counts[g * (K + 1) + p] (0-based g in 0..K, the
-- row K of unlabelled pixels that are scored, p in 0..K), exact in doubles
-- up to 2^53 pixels.
function M.stats(k)
  local counts = {}
  for i = 0, (k + 1) * (k + 1) - 1 do counts[i] = 0 end
  return { k = k, counts = counts }
end

-- The sparse entries {{g, p, count}, ...} of a (K, P) int32 table.
function M.sparse(conf)
  local k, p = conf:size(1), conf:size(2)
  local ptr, out = conf:ptr(), {}
  for i = 0, k * p - 1 do
    local c = ptr[i]
    if c ~= 0 then out[#out + 1] = { math.floor(i / p), i % p, tonumber(c) } end
  end
  return out
end

function M.add(stats, entries)
  local k1 = stats.k + 1
  for _, e in ipairs(entries) do
    local g, p, c = e[1], e[2], e[3]
    if g < 0 or g > stats.k or p < 0 or p > stats.k then
      error(("eval: confusion entry (%d, %d) outside a %d-class table"):format(g, p, stats.k), 0)
    end
    stats.counts[g * k1 + p] = stats.counts[g * k1 + p] + c
  end
  return stats
end

-- Adds another stats table of the same size.
function M.merge(into, other)
  if into.k ~= other.k then error(("eval: cannot merge %d-class and %d-class counts"):format(into.k, other.k), 0) end
  for i, c in pairs(other.counts) do into.counts[i] = into.counts[i] + c end
  return into
end

function M.entries(stats)
  local out, k1 = {}, stats.k + 1
  for i = 0, k1 * k1 - 1 do
    local c = stats.counts[i]
    if c ~= 0 then out[#out + 1] = { math.floor(i / k1), i % k1, c } end
  end
  return out
end

local function contiguous(t) return t:is_contiguous() and t or t:contiguous() end

-- conf (K, P) int32 += counts of (gt, pred) pairs; gt == ignore skipped.
function M.confusion_add(conf, pred, gt, ignore)
  check(C.fm_confusion_add(conf, contiguous(pred), contiguous(gt), ignore))
  return conf
end

-- Labels → int32 through a table {[value] = new}; values absent from the
-- table are an error naming the pixel.
local function remap(labels, lut, n)
  local buf = ffi.new("int32_t[?]", n)
  for i = 0, n - 1 do buf[i] = lut[i] or -1 end
  local out = T.new(labels:shape(), "int32")
  check(C.fm_labels_remap(out, contiguous(labels), buf, n))
  return out
end

-- Semantic prediction vs ground truth → sparse (K, K + 1) entries. A
-- prediction equal to `ignore` means "no class" (the last column).
function M.image_entries(pred, gt, k, ignore)
  local conf = T.new({ k, k + 1 }, "int32")
  local ok, err = pcall(M.confusion_add, conf, pred, gt, ignore)
  if not ok then
    -- "unlabelled" predictions: move them to column K, refuse anything else
    local lut = {}
    for c = 0, k - 1 do lut[c] = c end
    lut[ignore] = k
    local ok2, mapped = pcall(remap, pred, lut, math.max(k, ignore + 1))
    if not ok2 then
      if tostring(err):find("pred value", 1, true) then
        error(("prediction: %s (the dataset has %d classes; %d means unlabelled)"):format(
          tostring(mapped):gsub("^labels_remap: ", ""), k, ignore), 0)
      end
      error(tostring(err), 0)
    end
    M.confusion_add(conf, mapped, gt, ignore)
  end
  return M.sparse(conf)
end

-- mmseg's IoUMetric as the official configs of ADE20K-Full and PASCAL
-- Context-459 run it: its own ignore_index (metric_ignore, 255: they never
-- set it) on maps whose unlabelled value is another (`unlabelled`,
-- 65535). Pixels labelled metric_ignore are skipped, whichever class that
-- is; pixels labelled `unlabelled` go to row K (histc leaves the label out
-- of area_label but counts the prediction in area_pred); a prediction
-- equal to `unlabelled` is "no class" (column K). → sparse entries.
function M.mmseg_entries(pred, gt, k, unlabelled, metric_ignore)
  local g_ = gt:dtype() == "int32" and gt:contiguous() or gt:int()
  local p_ = pred:dtype() == "int32" and pred:contiguous() or pred:int()
  if g_:numel() ~= p_:numel() then
    error(("eval: prediction %s and ground truth %s differ in shape"):format(T.shape_string(pred:shape()),
      T.shape_string(gt:shape())), 0)
  end
  local gp, pp = g_:ptr(), p_:ptr()
  local counts = {}
  for i = 0, g_:numel() - 1 do
    local g, q = gp[i], pp[i]
    if g ~= metric_ignore then
      if g == unlabelled then g = k
      elseif g < 0 or g >= k then
        error(("gt value %d at pixel %d is outside [0, %d) and is neither %d nor %d"):format(g, i, k, unlabelled,
          metric_ignore), 0)
      end
      if q == unlabelled then q = k
      elseif q < 0 or q >= k then
        error(("prediction: pred value %d at pixel %d is outside [0, %d) (%d means unlabelled)"):format(q, i, k,
          unlabelled), 0)
      end
      local key = g * (k + 1) + q
      counts[key] = (counts[key] or 0) + 1
    end
  end
  local out = {}
  for key, c in pairs(counts) do out[#out + 1] = { math.floor(key / (k + 1)), key % (k + 1), c } end
  table.sort(out, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  return out
end

-- ---- metrics -----------------------------------------------------------------

local function nanmean(xs)
  local sum, n = 0, 0
  for _, x in ipairs(xs) do
    if x == x then sum, n = sum + x, n + 1 end
  end
  return n > 0 and sum / n or 0 / 0
end
M.nanmean = nanmean

-- { aAcc, mIoU, mAcc, IoU = {per class}, Acc = {...}, tp, area_label,
-- area_pred = {...}, pixels } as fractions (NaN where undefined).
function M.metrics(stats)
  local k, k1, cnt = stats.k, stats.k + 1, stats.counts
  local tp, area_label, area_pred = {}, {}, {}
  for c = 0, k - 1 do
    tp[c + 1], area_label[c + 1], area_pred[c + 1] = cnt[c * k1 + c], 0, 0
  end
  for g = 0, k do                 -- row k: scored unlabelled pixels, in area_pred only
    for p = 0, k do
      local v = cnt[g * k1 + p]
      if g < k then area_label[g + 1] = area_label[g + 1] + v end
      if p < k then area_pred[p + 1] = area_pred[p + 1] + v end
    end
  end
  local iou, acc, sum_tp, pixels = {}, {}, 0, 0
  for c = 1, k do
    local union = area_pred[c] + area_label[c] - tp[c]
    iou[c] = union > 0 and tp[c] / union or 0 / 0
    acc[c] = area_label[c] > 0 and tp[c] / area_label[c] or 0 / 0
    sum_tp, pixels = sum_tp + tp[c], pixels + area_label[c]
  end
  return { aAcc = pixels > 0 and sum_tp / pixels or 0 / 0, mIoU = nanmean(iou), mAcc = nanmean(acc),
           IoU = iou, Acc = acc, tp = tp, area_label = area_label, area_pred = area_pred, pixels = pixels }
end

-- ---- Hungarian matching --------------------------------------------------------

-- Minimum-cost assignment of rows to columns (rows <= columns) by shortest
-- augmenting paths (Crouse 2016), with the tie rules of SciPy's
-- linear_sum_assignment so that equal-cost choices match what the
-- reference protocols got: columns scanned from the last, a free column
-- preferred among equal path costs. cost: flat 0-based, cost[i * nc + j].
-- Returns col4row (0-based, indexed 0..nr-1).
local function lsap(nr, nc, cost)
  local u, v, path, col4row, row4col, spc = {}, {}, {}, {}, {}, {}
  for i = 0, nr - 1 do u[i], col4row[i] = 0, -1 end
  for j = 0, nc - 1 do v[j], path[j], row4col[j] = 0, -1, -1 end
  local SR, SC, remaining = {}, {}, {}
  for cur = 0, nr - 1 do
    for i = 0, nr - 1 do SR[i] = false end
    for j = 0, nc - 1 do SC[j], spc[j] = false, math.huge; remaining[j + 1] = nc - 1 - j end
    local num_remaining, min_val, i, sink = nc, 0, cur, -1
    while sink == -1 do
      local index, lowest = -1, math.huge
      SR[i] = true
      for it = 1, num_remaining do
        local j = remaining[it]
        local r = min_val + cost[i * nc + j] - u[i] - v[j]
        if r < spc[j] then path[j], spc[j] = i, r end
        if spc[j] < lowest or (spc[j] == lowest and row4col[j] == -1) then lowest, index = spc[j], it end
      end
      min_val = lowest
      if min_val == math.huge then error("eval: assignment problem is infeasible", 0) end
      local j = remaining[index]
      if row4col[j] == -1 then sink = j else i = row4col[j] end
      SC[j] = true
      remaining[index] = remaining[num_remaining]
      num_remaining = num_remaining - 1
    end
    -- dual update, then augment along the path
    u[cur] = u[cur] + min_val
    for r = 0, nr - 1 do
      if SR[r] and r ~= cur then u[r] = u[r] + min_val - spc[col4row[r]] end
    end
    for j = 0, nc - 1 do
      if SC[j] then v[j] = v[j] - (min_val - spc[j]) end
    end
    local j = sink
    while true do
      local r = path[j]
      row4col[j] = r
      col4row[r], j = j, col4row[r]
      if r == cur then break end
    end
  end
  return col4row
end

-- Optimal assignment for a cost matrix given as rows {{...}, ...} (1-based
-- Lua tables): returns pairs {{row, col}, ...} (1-based) sorted by row,
-- min(rows, cols) of them, minimising (or with maximize, maximising) the
-- summed cost. scipy.optimize.linear_sum_assignment's contract.
function M.linear_sum_assignment(matrix, maximize)
  local nr = #matrix
  local nc = nr > 0 and #matrix[1] or 0
  if nr == 0 or nc == 0 then return {} end
  local transpose = nr > nc
  local rows, cols = transpose and nc or nr, transpose and nr or nc
  local cost, lo = {}, math.huge
  for i = 0, rows - 1 do
    for j = 0, cols - 1 do
      local x = transpose and matrix[j + 1][i + 1] or matrix[i + 1][j + 1]
      if type(x) ~= "number" or x ~= x then error("eval: cost matrix entries must be numbers, not NaN", 2) end
      if maximize then x = -x end
      cost[i * cols + j] = x
      if x < lo then lo = x end
    end
  end
  for i = 0, rows * cols - 1 do cost[i] = cost[i] - lo end
  local col4row = lsap(rows, cols, cost)
  local pairs_ = {}
  for i = 0, rows - 1 do
    if transpose then pairs_[#pairs_ + 1] = { col4row[i] + 1, i + 1 }
    else pairs_[#pairs_ + 1] = { i + 1, col4row[i] + 1 } end
  end
  table.sort(pairs_, function(a, b) return a[1] < b[1] end)
  return pairs_
end

-- Unsupervised segments vs ground truth, as DiffSeg scores them
-- (google/diffseg, diffseg/utils.py hungarian_matching): the (K, max(K, S))
-- intersection table of classes and segment ids, assignment maximising the
-- matched intersection; every class gets a column (possibly an empty
-- one), so a class absent from the image can absorb a leftover segment as
-- false positives; segments left unmatched count as misses of their
-- pixels' classes. Returns the (K, K + 1) entries and the table segment id
-- → class (unmatched → nil).
function M.match_segments(segments, gt, k, ignore)
  local seg = segments:dtype() == "int32" and segments or segments:int()
  local top = seg:numel() > 0 and seg:float():max() or 0
  local s = math.floor(top) + 1
  if s > 65536 then error(("segments: ids up to %d; expected small ids (< 65536)"):format(s - 1), 0) end
  local p = math.max(k, s)
  local hist = T.new({ k, p }, "int32")
  M.confusion_add(hist, seg, gt, ignore)
  local hp, matrix = hist:ptr(), {}
  for g = 0, k - 1 do
    local row = {}
    for j = 0, p - 1 do row[j + 1] = tonumber(hp[g * p + j]) end
    matrix[g + 1] = row
  end
  local class_of = {}
  for _, pr in ipairs(M.linear_sum_assignment(matrix, true)) do class_of[pr[2] - 1] = pr[1] - 1 end
  local counts = {}
  for g = 0, k - 1 do
    for j = 0, p - 1 do
      local c = matrix[g + 1][j + 1]
      if c ~= 0 then
        local col = class_of[j] or k
        local key = g * (k + 1) + col
        counts[key] = (counts[key] or 0) + c
      end
    end
  end
  local entries = {}
  for key, c in pairs(counts) do entries[#entries + 1] = { math.floor(key / (k + 1)), key % (k + 1), c } end
  table.sort(entries, function(a, b) return a[1] * (k + 1) + a[2] < b[1] * (k + 1) + b[2] end)
  return entries, class_of
end

-- Segment ids → matched classes (unmatched and absent ids → ignore), to
-- store what was scored.
function M.relabel_segments(segments, class_of, ignore)
  local seg = segments:dtype() == "int32" and segments or segments:int()
  local top = seg:numel() > 0 and math.floor(seg:float():max()) or 0
  local lut = {}
  for id = 0, top do lut[id] = class_of[id] or ignore end
  return remap(seg, lut, top + 1)
end

-- ---- dataset-level matching of clusters (Deep Spectral's eval.py) ----------------

-- numpy's np.mean of a float64 vector: pairwise summation (blocks of 128,
-- eight accumulators within a block), then the division.
local function np_pairwise(xs, lo, n)
  if n < 8 then
    local r = 0
    for i = lo, lo + n - 1 do r = r + xs[i] end
    return r
  elseif n <= 128 then
    local r = {}
    for j = 0, 7 do r[j] = xs[lo + j] end
    local i = 8
    while i < n - n % 8 do
      for j = 0, 7 do r[j] = r[j] + xs[lo + i + j] end
      i = i + 8
    end
    local res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for t = i, n - 1 do res = res + xs[lo + t] end
    return res
  end
  local n2 = math.floor(n / 2)
  n2 = n2 - n2 % 8
  return np_pairwise(xs, lo, n2) + np_pairwise(xs, lo + n2, n - n2)
end
function M.np_mean(xs) return np_pairwise(xs, 1, #xs) / #xs end

-- Clusters vs classes over a whole dataset, as deep-spectral-segmentation's
-- semantic-segmentation/eval.py evaluate() scores them: table[c][g] (Lua
-- tables, 0-based cluster c and class g) counts the labelled pixels of
-- cluster c and class g. With as many clusters as classes, the Hungarian
-- matching (eval_utils.hungarian_match, metric "iou") minimises
-- sum(N - IoU(c, g)) over a one-to-one assignment, N the number of
-- labelled pixels (scipy's linear_sum_assignment on that cost, unshifted);
-- otherwise each cluster takes the class of its largest IoU
-- (majority_vote). Every pixel then gets its cluster's class, and
-- IoU_g = tp / max(tp + fp + fn, 1e-8) (0, not NaN, for a class absent
-- from both), mIoU = their mean over all classes.
-- Returns { match = {{c, g}, ...}, class_of = {[c] = g}, IoU = {...} (1-based
-- by class), mIoU, pixels }.
function M.match_clusters(tbl, n_clusters, k)
  local area_c, area_g, total = {}, {}, 0
  for c = 0, n_clusters - 1 do area_c[c] = 0 end
  for g = 0, k - 1 do area_g[g] = 0 end
  for c = 0, n_clusters - 1 do
    for g = 0, k - 1 do
      local v = tbl[c][g]
      area_c[c], area_g[g], total = area_c[c] + v, area_g[g] + v, total + v
    end
  end
  local function iou(c, g)
    local tp = tbl[c][g]
    return tp / math.max(area_c[c] + area_g[g] - tp, 1e-8)
  end
  local match, class_of = {}, {}
  if n_clusters == k then
    local cost = {}
    for c = 0, k - 1 do
      for g = 0, k - 1 do cost[c * k + g] = total - iou(c, g) end
    end
    local col4row = lsap(k, k, cost)
    for c = 0, k - 1 do match[#match + 1] = { c, col4row[c] } end
  else
    for c = 0, n_clusters - 1 do
      local best, arg = -1, 0
      for g = 0, k - 1 do
        local v = iou(c, g)
        if v > best then best, arg = v, g end
      end
      match[#match + 1] = { c, arg }
    end
  end
  for _, m in ipairs(match) do class_of[m[1]] = m[2] end
  -- reordered_preds: zeros, then each matched cluster's pixels get its class
  local tp, pred_area = {}, {}
  for g = 0, k - 1 do tp[g], pred_area[g] = 0, 0 end
  for c = 0, n_clusters - 1 do
    local g_to = class_of[c] or 0
    for g = 0, k - 1 do
      local v = tbl[c][g]
      pred_area[g_to] = pred_area[g_to] + v
      if g == g_to then tp[g] = tp[g] + v end
    end
  end
  local jac = {}
  for g = 0, k - 1 do
    local union = area_g[g] + pred_area[g] - tp[g]
    jac[g + 1] = tp[g] / math.max(union, 1e-8)
  end
  return { match = match, class_of = class_of, IoU = jac, mIoU = M.np_mean(jac), pixels = total }
end

-- ---- CorLoc ------------------------------------------------------------------------

-- IoU of boxes {x0, y0, x1, y1} in pixel-edge coordinates (LOST's
-- bbox_iou without its 1e-7 guards).
function M.box_iou(a, b)
  local iw = math.max(0, math.min(a[3], b[3]) - math.max(a[1], b[1]))
  local ih = math.max(0, math.min(a[4], b[4]) - math.max(a[2], b[2]))
  local inter = iw * ih
  local union = (a[3] - a[1]) * (a[4] - a[2]) + (b[3] - b[1]) * (b[4] - b[2]) - inter
  return union > 0 and inter / union or 0
end

-- The predicted box (the recipe's first) against every ground-truth box:
-- correct when the best IoU is >= 0.5. Returns correct, best IoU.
function M.corloc_hit(pred_box, gt_boxes)
  local best = 0
  if pred_box then
    for _, g in ipairs(gt_boxes) do best = math.max(best, M.box_iou(pred_box, g)) end
  end
  return best >= 0.5, best
end

return M
