-- SAM as an interactive segmenter driven by clicks: every click so far is a
-- point prompt (positive 1, negative 0) on the embedded image; the first
-- click takes SAM's three masks and keeps the one of highest predicted IoU
-- (one point is ambiguous), later clicks take its single mask with the
-- previous step's low-resolution logits as the mask prompt. The mask is
-- SAM's own (logits > mask_threshold 0). The clicks come from the
-- evaluation (`fmseg eval` on a dataset with data.task: interactive, RITM's
-- click simulator: fmseg.eval.interactive).
-- ref: facebookresearch/segment-anything segment_anything/predictor.py
--      (predict: point_coords / point_labels, multimask_output,
--      mask_input = low_res_logits of a previous call); Kirillov et al.,
--      Segment Anything (2023), the point-prompt evaluation that follows
--      RITM's protocol.
local predictor_mod = require("fmseg.sam.predictor")

local recipe = {
  name = "sam_clicks",
  needs = { "sam" },
  interactive = true,                 -- embed(state, img), predict(state, clicks) → mask
  defaults = {
    multimask_first = true,           -- one click: the best of SAM's three masks by predicted IoU
    mask_feedback = true,             -- later clicks: the previous low-res logits as mask_input
  },
}

function recipe.setup(params, models)
  return { params = params, predictor = predictor_mod.new(models.sam) }
end

-- Runs the image encoder once per image; the clicks of every object reuse it.
function recipe.embed(state, img)
  state.predictor:set_image(img)
  state.image_hw = { img:size(1), img:size(2) }
end

-- Starts an object: no mask prompt from an earlier click.
function recipe.reset(state) state.low_res = nil end

-- clicks {{y, x, positive}, ...} (0-based pixels) → (H, W) uint8 mask
function recipe.predict(state, clicks)
  local p = state.params
  local points, labels = {}, {}
  for i, c in ipairs(clicks) do
    points[i] = { c.x, c.y }                     -- SAM takes (x, y) pixel indices
    labels[i] = c.positive and 1 or 0
  end
  local multimask = #clicks == 1 and p.multimask_first
  local masks, iou, low_res = state.predictor:predict({
    points = points, labels = labels, multimask = multimask,
    mask_input = p.mask_feedback and state.low_res or nil,
  })
  local best, best_iou = 1, -math.huge
  for k, v in ipairs(iou:values()) do
    if v > best_iou then best, best_iou = k, v end
  end
  state.low_res = low_res:narrow(1, best, 1):contiguous()
  return masks:select(1, best):contiguous()
end

function recipe.segment()
  error("sam_clicks is interactive: it segments from clicks, in `fmseg eval` on a dataset with "
    .. "data.task: interactive (configs/sam_clicks/), or use `fmseg sam` with --point", 0)
end

return recipe
