-- The click simulator and NoC of fmseg.eval.interactive against RITM's own
-- evaluation code (tests/fixtures/interactive/ritm_clicks.safetensors, made
-- by tests/tools/make_interactive_fixtures.py with isegm's Clicker,
-- evaluate_sample and compute_noc_metric): with the same stand-in "disk
-- predictor" (the pixels within r of a positive click and of no negative
-- one), every click, IoU and NoC must be the official ones. Then the
-- bookkeeping: NoC of known IoU lists, the mIoU curve, the sums shards add,
-- and refused options.
local tap = require("tap")
local core = require("fmseg.core")
local ia = require("fmseg.eval.interactive")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")

local ref = safetensors.open(core.root .. "/tests/fixtures/interactive/ritm_clicks.safetensors")

local function disk_predictor(h, w, r)
  return function(clicks)
    local out = T.zeros({ h, w }, "uint8")
    local p = out:ptr()
    for y = 0, h - 1 do
      for x = 0, w - 1 do
        local pos, neg = false, false
        for _, c in ipairs(clicks) do
          if (y - c.y) ^ 2 + (x - c.x) ^ 2 <= r * r then
            if c.positive then pos = true else neg = true end
          end
        end
        p[y * w + x] = (pos and not neg) and 1 or 0
      end
    end
    return out
  end
end

local THRESHOLDS = { 0.8, 0.85, 0.9 }
local cases = { "band", "band_stop", "two_blobs", "border", "ring", "blobs" }
local all = {}
for _, name in ipairs(cases) do
  local gt = ref:get(name .. ".gt")
  local want = ref:get(name .. ".clicks")
  local h, w = gt:size(1), gt:size(2)
  local clicks, ious = ia.evaluate_object(gt, disk_predictor(h, w, ref:get(name .. ".radius"):values()[1]),
                                          { max_clicks = 20, target_iou = ref:get(name .. ".target"):values()[1] })
  local got = {}
  for k, c in ipairs(clicks) do got[k] = ("%d,%d,%d"):format(c.y, c.x, c.positive and 1 or 0) end
  local expect = {}
  local wp = want:ptr()
  for k = 1, want:size(1) do expect[k] = ("%d,%d,%d"):format(wp[3 * k - 3], wp[3 * k - 2], wp[3 * k - 1]) end
  tap.eq(table.concat(got, " "), table.concat(expect, " "), name .. ": every click as RITM's Clicker")
  local wi = ref:get(name .. ".ious"):values()
  local worst = 0
  for k = 1, math.max(#wi, #ious) do worst = math.max(worst, math.abs((ious[k] or -1) - (wi[k] or -2))) end
  tap.ok(worst < 1e-6, name .. ": IoU after each click as get_iou", ("max difference %.3g"):format(worst))
  local noc, over = ia.noc({ ious }, THRESHOLDS, 20)
  tap.eq(table.concat(noc, " "), table.concat(ref:get(name .. ".noc"):values(), " "), name .. ": NoC@80/85/90")
  tap.eq(table.concat(over, " "), table.concat(ref:get(name .. ".over_max"):int():values(), " "),
         name .. ": objects at 20 clicks")
  all[#all + 1] = ious
end
local noc = ia.noc(all, THRESHOLDS, 20)
local want_noc = ref:get("all.noc"):values()
local diff = 0
for t = 1, 3 do diff = math.max(diff, math.abs(noc[t] - want_noc[t])) end
tap.ok(diff < 1e-6, "NoC over all cases as compute_noc_metric", ("max difference %.3g"):format(diff))

-- iou: 1 object pixel of 2 found, one false positive, the ignored pixel left out
local gt4 = T.from_table({ { 1, 1, 0, -1 } }):int()
local pred4 = T.from_table({ { 1, 0, 1, 1 } }):byte()
tap.near(ia.iou(gt4, pred4), 1 / 3, 1e-12, "iou: over the pixels not ignored (get_iou)")

-- ---- bookkeeping on known lists ------------------------------------------------------------------

local lists = { { 0.5, 0.86, 0.95 }, { 0.9, 0.91, 0.99 }, { 0.1, 0.2, 0.3 } }
local n, o = ia.noc(lists, { 0.85, 0.9 }, 3)
tap.eq(table.concat(n, " "), ("%s %s"):format((2 + 1 + 3) / 3, (3 + 1 + 3) / 3),
       "noc: first click reaching each threshold, else max_clicks")
tap.eq(table.concat(o, " "), "1 2", "noc: objects at max_clicks (reached at the last click counts too)")
local curve = ia.miou_curve(lists)
tap.near(curve[2], (0.86 + 0.91 + 0.2) / 3, 1e-12, "miou_curve: the mean after each click")
tap.eq(#ia.miou_curve({ { 1, 1 }, { 1 } }), 1, "miou_curve: as long as the shortest list")

local opts = ia.options({ max_clicks = 3, iou_thresholds = { 0.85, 0.9 } })
local rec = ia.totals({ { id = "a", ious = lists[1] }, { id = "b", ious = lists[2] },
                       { id = "c", skipped = "empty mask" } }, opts)
tap.eq(rec.objects, 2, "totals: skipped items are not scored")
tap.eq(rec.skipped[1].id, "c", "totals: skipped items are listed with their reason")
local s1 = ia.totals({ { id = "a", ious = lists[1] } }, opts)
local s2 = ia.totals({ { id = "b", ious = lists[2] }, { id = "c", ious = lists[3] } }, opts)
local whole = ia.totals({ { id = "a", ious = lists[1] }, { id = "b", ious = lists[2] }, { id = "c", ious = lists[3] } }, opts)
local merged = ia.merge({ s1, s2 })
tap.eq(merged.NoC["90"], whole.NoC["90"], "merge: shards' sums give the whole run's NoC")
tap.near(merged.mIoU_per_click[3], whole.mIoU_per_click[3], 1e-12, "merge: and its mIoU per click")
tap.ok(ia.curve_csv(whole):find("^click,mIoU\n1,50%.0000\n") ~= nil, "curve_csv: click, mIoU in percent")
tap.raises(function() ia.options({ max_clicks = 0 }) end, "eval.max_clicks must be a whole number", "max_clicks 0 refused")

os.exit(tap.done())
