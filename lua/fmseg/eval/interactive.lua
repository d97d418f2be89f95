-- fmseg.eval.interactive — the click-based evaluation of interactive
-- segmentation, as RITM's (SamsungLabs/ritm_interactive_segmentation,
-- isegm/inference/clicker.py, evaluation.py, utils.py) that SAM and its
-- successors report:
--
--   gt (H, W) int32: 1 the object, 0 not, -1 ignored (GrabCut's boundary band)
--   clicks: the first at the object pixel farthest from its boundary; each
--     next one in the larger error region, at its pixel farthest from the
--     region's boundary (the image border counts as boundary): positive in
--     the missed object (false negatives), negative in the false positives;
--     a pixel is clicked at most once; ties go to the first in row-major order
--   after each click the method predicts a mask; IoU over the pixels not
--   ignored; NoC@t = the first click whose IoU reaches t (max_clicks when
--   none does), averaged over objects; the mean IoU after each click.
--
--   local ia = require("fmseg.eval.interactive")
--   local clicks, ious = ia.evaluate_object(gt, function(clicks) return mask end, { max_clicks = 20 })
--   local noc, over = ia.noc({ ious1, ious2 }, { 0.85, 0.9 }, 20)
--
-- Masks are (H, W) uint8 0/1; clicks { y = row, x = column, positive = bool },
-- 0-based pixel indices.
local masks = require("fmseg.masks")
local skipped = require("fmseg.eval.skipped")
local T = require("fmseg.tensor")

local M = {}

-- gt → the object (1) and the not-ignored (≠ −1) pixels as uint8 masks
local function object_and_valid(gt)
  local g = gt:dtype() == "int32" and gt:contiguous() or gt:int()
  local h, w = g:size(1), g:size(2)
  local obj, valid = T.zeros({ h, w }, "uint8"), T.zeros({ h, w }, "uint8")
  local gp, op, vp = g:ptr(), obj:ptr(), valid:ptr()
  for i = 0, h * w - 1 do
    op[i] = gp[i] == 1 and 1 or 0
    vp[i] = gp[i] ~= -1 and 1 or 0
  end
  return obj, valid
end

-- mask (H, W) uint8 → distance of each set pixel to the nearest unset one,
-- the image border counting as unset (RITM pads by one pixel before
-- cv2.distanceTransform(DIST_L2, 0), the exact transform)
local function border_distance(mask)
  local h, w = mask:size(1), mask:size(2)
  local padded = T.zeros({ h + 2, w + 2 }, "uint8")
  padded:narrow(1, 2, h):narrow(2, 2, w):copy(mask)
  return masks.distance_transform(padded):narrow(1, 2, h):narrow(2, 2, w):contiguous()
end

-- The state of one object's clicks (RITM's Clicker).
local Clicker = {}
Clicker.__index = Clicker

function M.clicker(gt)
  local obj, valid = object_and_valid(gt)
  local h, w = obj:size(1), obj:size(2)
  return setmetatable({ obj = obj, valid = valid, h = h, w = w, clicks = {}, clicked = {} }, Clicker)
end

-- The next click for prediction pred (H, W) uint8 (all zeros before the first).
function Clicker:next_click(pred)
  local n = self.h * self.w
  local fn, fp = T.zeros({ self.h, self.w }, "uint8"), T.zeros({ self.h, self.w }, "uint8")
  local op, vp, pp = self.obj:ptr(), self.valid:ptr(), pred:contiguous():ptr()
  local fnp, fpp = fn:ptr(), fp:ptr()
  for i = 0, n - 1 do
    if vp[i] ~= 0 then
      local o, p = op[i] ~= 0, pp[i] ~= 0
      fnp[i] = (o and not p) and 1 or 0
      fpp[i] = (p and not o) and 1 or 0
    end
  end
  local dn, dp = border_distance(fn), border_distance(fp)
  local dnp, dpp = dn:ptr(), dp:ptr()
  local best_n, at_n, best_p, at_p = 0, 0, 0, 0
  for i = 0, n - 1 do
    if not self.clicked[i] then
      if dnp[i] > best_n then best_n, at_n = dnp[i], i end
      if dpp[i] > best_p then best_p, at_p = dpp[i], i end
    end
  end
  -- an empty error region leaves its maximum at 0, at pixel 0 (np.where of
  -- an all-zero map), as the official code then clicks
  local positive = best_n > best_p
  local at = positive and at_n or at_p
  return { y = math.floor(at / self.w), x = at % self.w, positive = positive }
end

function Clicker:add(click)
  self.clicks[#self.clicks + 1] = click
  self.clicked[click.y * self.w + click.x] = true
end

-- IoU of pred with the object obj over the valid pixels (uint8 maps)
local function iou_on(obj, valid, pred)
  local op, vp, pp = obj:ptr(), valid:ptr(), pred:contiguous():ptr()
  local inter, union = 0, 0
  for i = 0, obj:numel() - 1 do
    if vp[i] ~= 0 then
      local o, p = op[i] ~= 0, pp[i] ~= 0
      if o and p then inter = inter + 1 end
      if o or p then union = union + 1 end
    end
  end
  return inter / union
end

-- IoU of pred (H, W) uint8 with the object, over the pixels not ignored
-- (utils.get_iou; 0 / 0 is NaN as there)
function M.iou(gt, pred)
  local obj, valid = object_and_valid(gt)
  return iou_on(obj, valid, pred)
end

function Clicker:iou(pred) return iou_on(self.obj, self.valid, pred) end

-- evaluate_sample: clicks on gt and predict(clicks) → mask after each, until
-- the IoU reaches opts.target_iou (default 1.01: every click, RITM's
-- --iou-analysis) after at least opts.min_clicks (1), at most
-- opts.max_clicks (20). → clicks, ious (Lua arrays), the last mask.
function M.evaluate_object(gt, predict, opts)
  opts = opts or {}
  local max_clicks, min_clicks = opts.max_clicks or 20, opts.min_clicks or 1
  local target = opts.target_iou or 1.01
  local c = M.clicker(gt)
  local pred = T.zeros({ c.h, c.w }, "uint8")
  local ious = {}
  for k = 1, max_clicks do
    c:add(c:next_click(pred))
    pred = predict(c.clicks)
    if pred:size(1) ~= c.h or pred:size(2) ~= c.w then
      error(("interactive: the prediction is %dx%d, the object mask %dx%d"):format(
        pred:size(2), pred:size(1), c.w, c.h), 0)
    end
    ious[k] = c:iou(pred)
    if ious[k] >= target and k >= min_clicks then break end
  end
  return c.clicks, ious, pred
end

-- NoC per threshold over the objects' IoU lists (compute_noc_metric): the
-- first click reaching it, max_clicks when none does; → means, and how
-- many objects reached max_clicks ("≥ 20") per threshold.
function M.noc(all_ious, thresholds, max_clicks)
  local means, over = {}, {}
  for t, thr in ipairs(thresholds) do
    local sum, n_over = 0, 0
    for _, ious in ipairs(all_ious) do
      local noc = max_clicks
      for k, v in ipairs(ious) do
        if v >= thr then noc = k; break end
      end
      sum = sum + noc
      if noc == max_clicks then n_over = n_over + 1 end
    end
    means[t], over[t] = sum / #all_ious, n_over
  end
  return means, over
end

-- The mean IoU after each click 1..K over the objects, K the shortest list
-- (evaluate_model.py's --print-ious); with every click run, K = max_clicks.
function M.miou_curve(all_ious)
  local k = math.huge
  for _, ious in ipairs(all_ious) do k = math.min(k, #ious) end
  local curve = {}
  if #all_ious == 0 then return curve end
  for j = 1, k do
    local s = 0
    for _, ious in ipairs(all_ious) do s = s + ious[j] end
    curve[j] = s / #all_ious
  end
  return curve
end

-- ---- runs ---------------------------------------------------------------------------

-- The eval section's interactive settings: { max_clicks (20), target_iou
-- (1.01: every click, so that the mIoU curve is defined; RITM's NoC runs
-- stop at 0.90, which leaves NoC@80/85/90 the same), thresholds ({0.8,
-- 0.85, 0.9}: RITM's table) }.
function M.options(e)
  e = e or {}
  local o = { max_clicks = e.max_clicks or 20, target_iou = e.target_iou or 1.01, min_clicks = e.min_clicks or 1,
              thresholds = e.iou_thresholds or { 0.8, 0.85, 0.9 } }
  if type(o.max_clicks) ~= "number" or o.max_clicks < 1 or o.max_clicks % 1 ~= 0 then
    error(("eval.max_clicks must be a whole number >= 1, got %s"):format(tostring(o.max_clicks)), 0)
  end
  if type(o.target_iou) ~= "number" then
    error(("eval.target_iou must be a number, got %s"):format(tostring(o.target_iou)), 0)
  end
  return o
end

-- Item i of an interactive dataset through an interactive recipe (embed,
-- reset, predict): → its record { id, ious, clicks, positive } and the last
-- mask. The image is embedded once for all its objects (SBD lists several).
-- A data problem (ds:image, ds:object) raises { data_error = message }.
function M.score_item(ds, i, recipe, state, opts)
  local item = ds.items[i]
  if item.missing then error({ data_error = ("item %s: %s"):format(item.id, item.missing) }, 0) end
  local ok, img = pcall(ds.image, ds, i)
  if not ok then error({ data_error = tostring(img) }, 0) end
  local gt
  ok, gt = pcall(ds.object, ds, i, img:size(1), img:size(2))
  if not ok then error({ data_error = tostring(gt) }, 0) end
  if state.embedded ~= item.image then
    recipe.embed(state, img)
    state.embedded = item.image
  end
  if recipe.reset then recipe.reset(state) end
  local clicks, ious, mask = M.evaluate_object(gt, function(c) return recipe.predict(state, c) end, opts)
  local cl = {}
  for k, c in ipairs(clicks) do cl[k] = { c.y, c.x, c.positive and 1 or 0 } end
  return { id = item.id, ious = ious, clicks = cl }, mask
end

-- Sums that shards add up: objects, per threshold the NoC sum and the
-- count at max_clicks, per click the IoU sum (over the objects that have it)
local function sums(records, opts)
  local s = { objects = 0, noc_sum = {}, over_max = {}, iou_sum = {}, iou_count = {} }
  for t = 1, #opts.thresholds do s.noc_sum[t], s.over_max[t] = 0, 0 end
  for _, r in ipairs(records) do
    if r.ious then
      s.objects = s.objects + 1
      local noc, over = M.noc({ r.ious }, opts.thresholds, opts.max_clicks)
      for t = 1, #opts.thresholds do
        s.noc_sum[t] = s.noc_sum[t] + noc[t]
        s.over_max[t] = s.over_max[t] + over[t]
      end
      for k, v in ipairs(r.ious) do
        s.iou_sum[k] = (s.iou_sum[k] or 0) + v
        s.iou_count[k] = (s.iou_count[k] or 0) + 1
      end
    end
  end
  return s
end

-- sums (possibly of several shards) → the metrics record's numbers:
-- NoC = { ["85"] = mean, ... }, over_max, mIoU_per_click (clicks every
-- object reached)
function M.record_from_sums(s, opts)
  local rec = { task = "interactive", objects = s.objects, max_clicks = opts.max_clicks,
                target_iou = opts.target_iou, thresholds = opts.thresholds, NoC = {}, over_max = {},
                mIoU_per_click = {}, sums = s }
  for t, thr in ipairs(opts.thresholds) do
    local key = ("%d"):format(math.floor(thr * 100 + 0.5))
    rec.NoC[key] = s.objects > 0 and s.noc_sum[t] / s.objects or 0 / 0
    rec.over_max[key] = s.over_max[t]
  end
  for k = 1, #s.iou_sum do
    if s.iou_count[k] ~= s.objects then break end
    rec.mIoU_per_click[k] = s.iou_sum[k] / s.objects
  end
  return rec
end

-- records → the metrics record; records with `skipped` are listed, not scored
function M.totals(records, opts)
  local rec = M.record_from_sums(sums(records, opts), opts)
  rec.skipped = skipped.collect(records)
  return rec
end

-- Shards' metrics records → one (their sums added)
function M.merge(recs)
  local base = recs[1]
  local opts = { max_clicks = base.max_clicks, target_iou = base.target_iou, thresholds = base.thresholds }
  local s = { objects = 0, noc_sum = {}, over_max = {}, iou_sum = {}, iou_count = {} }
  for t = 1, #opts.thresholds do s.noc_sum[t], s.over_max[t] = 0, 0 end
  for _, r in ipairs(recs) do
    local o = r.sums
    s.objects = s.objects + o.objects
    for t = 1, #opts.thresholds do
      s.noc_sum[t] = s.noc_sum[t] + o.noc_sum[t]
      s.over_max[t] = s.over_max[t] + o.over_max[t]
    end
    for k = 1, #o.iou_sum do
      s.iou_sum[k] = (s.iou_sum[k] or 0) + o.iou_sum[k]
      s.iou_count[k] = (s.iou_count[k] or 0) + o.iou_count[k]
    end
  end
  local rec = M.record_from_sums(s, opts)
  rec.skipped = skipped.merge(recs)
  return rec
end

local function pct(x) return x ~= x and "nan" or ("%.2f"):format(100 * x) end

-- The Markdown lines of a metrics record (after the run's heading)
function M.summary_lines(rec)
  local lines = { ("%d objects, at most %d clicks each (RITM's click simulator)"):format(rec.objects, rec.max_clicks), "" }
  local head, rule, row = { "|" }, { "|" }, { "|" }
  for _, thr in ipairs(rec.thresholds) do
    local key = ("%d"):format(math.floor(thr * 100 + 0.5))
    head[#head + 1] = (" NoC@%s | >=%d@%s |"):format(key, rec.max_clicks, key)
    rule[#rule + 1] = " ---: | ---: |"
    local v = rec.NoC[key]
    row[#row + 1] = (" %s | %d |"):format(v ~= v and "nan" or ("%.2f"):format(v), rec.over_max[key])
  end
  lines[#lines + 1] = table.concat(head)
  lines[#lines + 1] = table.concat(rule)
  lines[#lines + 1] = table.concat(row)
  if #rec.mIoU_per_click > 0 then
    local parts = {}
    for _, k in ipairs({ 1, 3, 5, 10, 20 }) do
      if rec.mIoU_per_click[k] then parts[#parts + 1] = ("mIoU@%d %s"):format(k, pct(rec.mIoU_per_click[k])) end
    end
    lines[#lines + 1] = ""
    lines[#lines + 1] = table.concat(parts, "  ")
  end
  return skipped.lines(rec.skipped, lines)
end

-- mIoU per click as CSV text
function M.curve_csv(rec)
  local out = { "click,mIoU" }
  for k, v in ipairs(rec.mIoU_per_click) do out[#out + 1] = ("%d,%.4f"):format(k, 100 * v) end
  return table.concat(out, "\n") .. "\n"
end

return M
