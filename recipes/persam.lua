-- PerSAM (Zhang et al., ICLR24), training-free: one reference image with a
-- mask of the object; in a new image, SAM's image features most like the
-- object's mean feature give a positive point (the most similar pixel) and
-- a negative one (the least similar), and a three-step cascade segments it.
-- ref: ZrrSkywalker/Personalize-SAM persam.py (persam, point_selection) and
--      per_segment_anything/predictor.py (set_image with a mask),
--      modeling/transformer.py (attn_sim, target_embedding).
--
--   1. reference: SAM features (C, h, w) of the reference image; its mask,
--      read as the official code reads it (an RGB image: a palette PNG
--      gives its colours, PerSeg's objects are (128, 0, 0)), goes through
--      SAM's image preprocessing (resize, normalise, zero pad) and a
--      bilinear resize to h x w; cells whose red channel is then > 0 are
--      under the mask. target_embedding = the mean feature there; target =
--      target_embedding L2-normalised.
--   2. target image: cosine of target with each L2-normalised feature,
--      upsampled x4 (bilinear), then to the image like mask logits; the
--      positive point at its maximum, the negative at its minimum (the
--      first of tied pixels, as torch.topk gives them).
--   3. target-guided attention: that map standardised (mean, unbiased
--      std), resized to the embedding grid (bilinear; 64 x 64 in the
--      official code, the grid of every SAM checkpoint), sigmoid: SAM's
--      decoder adds it to its token-to-image attention probabilities and
--      normalises again (decoder option attention_similarity);
--      target-semantic prompting: target_embedding added to the decoder's
--      queries (decoder option target_embedding). Both in step 1 only.
--   4. cascade: single-mask output; the same points with that output's
--      low-res logits as mask prompt, multimask, best predicted IoU; again
--      with the best mask's low-res logits and its box added, best again.
--      Where step 2's best mask is empty the official code fails (no box);
--      here that mask is the result.
--
-- output = "instances": one mask with its record; "semantic": labels 0
-- (background) / 1 (the object), scores = 1 - p, p with p = sigmoid(logit).
-- result.dump: points, box, target_embedding, attention_similarity,
-- step1_low_res, scores (what tests/fixtures/methods/persam-* compare).
local image = require("fmseg.image")
local masks = require("fmseg.masks")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local recipe = {
  name = "persam",
  needs = { "sam" },
  oneshot = true,        -- takes its reference per item in a one-shot evaluation (set_reference)
  defaults = {
    ref_image = false,   -- path of the reference image
    ref_mask = false,    -- path of its mask image (read as the official code reads it: see load_mask)
    output = "instances",  -- or "semantic"
  },
}

-- A mask file → (H, W, 3) uint8 RGB, as PerSAM reads it (cv2.imread, then
-- BGR → RGB): a palette PNG gives its colours, a grey one three equal
-- channels. What counts later is the red channel's brightness.
function recipe.load_mask(path)
  local ok, img = pcall(image.load, path)
  if not ok then error(("persam: cannot read the reference mask %s: %s"):format(path, tostring(img)), 0) end
  return img
end

-- features (1, C, h, w), the reference mask image (H, W, 3) uint8 → the
-- mask on the feature grid (h, w) 0/1, as PerSAM computes it
function recipe.mask_on_grid(proc, mask_img, h, w)
  local x = proc:preprocess(mask_img)                            -- (1, 3, S, S), normalised, zero-padded
  local red = x:narrow(2, 1, 1):contiguous()
  return nn.interpolate(red, h, w, { mode = "bilinear" }):reshape(h, w):gt(0)
end

-- features (1, C, h, w), grid mask (h, w) 0/1 → the mean (C) and the
-- maximum (C) of the features under the mask. `what` names the mask file
-- in the error.
function recipe.masked_stats(features, grid_mask, what)
  local c, hw = features:size(2), grid_mask:numel()
  local n = grid_mask:sum()
  if n == 0 then
    error(("persam: the reference mask %s covers no cell of SAM's %dx%d feature grid: after SAM's "
      .. "preprocessing its red channel must stay above the normalised 0 (object pixels bright in red, "
      .. "e.g. 255 or PerSeg's (128, 0, 0), over more than a few pixels)"):format(
      what or "", grid_mask:size(1), grid_mask:size(2)), 0)
  end
  local flat = features:reshape(c, hw)
  local m = grid_mask:float():reshape(1, hw)
  local mean = flat:matmul(m:reshape(hw, 1)):reshape(c) / n
  local max = (flat + (m - 1) * 1e30):max(2)                       -- cells off the mask never win
  return mean, max
end

-- features (1, C, h, w), grid mask (h, w) 0/1 → target feature (C),
-- L2-normalised, and the mean feature itself (PerSAM's target_embedding)
function recipe.target_feature(features, grid_mask, what)
  local mean = recipe.masked_stats(features, grid_mask, what)
  return nn.normalize(mean), mean
end

-- target (C), features (1, C, h, w) → (h, w) cosine similarities
function recipe.similarity(target, features)
  local c, h, w = features:size(2), features:size(3), features:size(4)
  local flat = features:reshape(c, h * w):t():contiguous()       -- (hw, C)
  local sim = nn.normalize(flat):matmul(target:reshape(c, 1))    -- (hw, 1)
  return sim:reshape(h, w)
end

-- sim (H, W) → positive {x, y} at the maximum, negative at the minimum
-- (first in row order)
function recipe.select_points(sim)
  local w = sim:size(2)
  local function xy(i) return { (i - 1) % w, math.floor((i - 1) / w) } end
  return xy(sim:argmax()), xy(sim:argmin())
end

-- The cascade (persam.py): predictor with the target image set → mask
-- (H, W) logits, predicted IoU, the box used in the last step (or nil), and
-- a trace {low_res = step 1's low-res logits, iou = the last step's IoU
-- predictions}. step1: decoder options for the first step only
-- (attention_similarity, target_embedding).
function recipe.cascade(predictor, pos, neg, step1)
  step1 = step1 or {}
  local points, labels = { pos, neg }, { 1, 0 }
  local _, iou1, low = predictor:predict({ points = points, labels = labels, multimask = false,
                                           attention_similarity = step1.attention_similarity,
                                           target_embedding = step1.target_embedding })
  local trace = { low_res = low, iou = iou1 }
  local _, iou, low2 = predictor:predict({ points = points, labels = labels,
                                           mask_input = low:narrow(1, 1, 1), multimask = true })
  local best = iou:argmax()
  local mask = predictor:upsample_logits(low2:narrow(1, best, 1)):select(1, 1)
  trace.iou = iou
  if mask:gt(0):sum() == 0 then                                  -- no box to add
    return mask, iou:get(best), nil, trace
  end
  local box = masks.masks_to_boxes(mask:gt(0)):values()
  local logits, iou3 = predictor:predict({ points = points, labels = labels, box = box,
                                           mask_input = low2:narrow(1, best, 1), multimask = true,
                                           return_logits = true })
  local best3 = iou3:argmax()
  trace.iou = iou3
  return logits:select(1, best3):contiguous(), iou3:get(best3), box, trace
end

-- The reference (persam.py before its test loop): the image at ref_image
-- and its mask at ref_mask, embedded by `predictor` → features (1, C, h,
-- w) of the reference, the mask on their grid (h, w), the mask image
-- (H, W, 3). `name` (the recipe's) starts the messages.
function recipe.embed_reference(predictor, ref_image, ref_mask, name)
  if not ref_image or not ref_mask then
    error(("%s: set params.ref_image and params.ref_mask (the reference image and its object mask), "
      .. "or evaluate on a one-shot dataset (data.task: oneshot), whose items bring theirs"):format(name), 0)
  end
  local ok, ref = pcall(image.load, ref_image)
  if not ok then error(("%s: cannot read the reference image %s: %s"):format(name, ref_image, ref), 0) end
  local mask_img = recipe.load_mask(ref_mask)
  if mask_img:size(1) ~= ref:size(1) or mask_img:size(2) ~= ref:size(2) then
    error(("%s: ref_mask %s is %dx%d, ref_image %s %dx%d"):format(name, ref_mask, mask_img:size(2),
      mask_img:size(1), ref_image, ref:size(2), ref:size(1)), 0)
  end
  predictor:set_image(ref)
  local feats = predictor.image_embeddings
  local grid = recipe.mask_on_grid(predictor.processor, mask_img, feats:size(3), feats:size(4))
  return feats, grid, mask_img
end

-- The checks and the predictor of setup; the reference is set now from
-- params, or per item by a one-shot evaluation (cfg's data.task: oneshot,
-- set_reference before each class's images; fewshot: before each episode).
function recipe.prepare(params, models, cfg, name, set_reference)
  if models.sam.family == "sam2" then
    error(("%s: models.sam is SAM 2; PerSAM's target-guided attention and target embedding are SAM's "
           .. "mask decoder options (a SAM directory, e.g. facebook/sam-vit-huge)"):format(name), 0)
  end
  if params.output ~= "instances" and params.output ~= "semantic" then
    error(("%s: output must be instances or semantic, got %s"):format(name, tostring(params.output)), 0)
  end
  local state = { params = params, predictor = require("fmseg.sam.predictor").new(models.sam) }
  local task = type(cfg) == "table" and type(cfg.data) == "table" and cfg.data.task
  local oneshot = task == "oneshot" or task == "fewshot"  -- the evaluation sets the references
  if not oneshot or params.ref_image or params.ref_mask then
    set_reference(state, params.ref_image, params.ref_mask)
  end
  return state
end

-- The location map: target (C) against the features of the predictor's
-- image → (H, W) cosine similarities at the image size (x4 bilinear, then
-- as mask logits are brought back).
function recipe.location(predictor, target, size_hw)
  local feats = predictor.image_embeddings
  local h, w = feats:size(3), feats:size(4)
  local sim = recipe.similarity(target, feats)
  sim = nn.interpolate(sim:reshape(1, 1, h, w), 4 * h, 4 * w, { mode = "bilinear" })
  return predictor:upsample_logits(sim):reshape(size_hw[1], size_hw[2])
end

-- Target-guided attention: sim (H, W) → (h, w) sigmoid of the standardised
-- map (unbiased std, as torch.std) resized to the embedding grid.
function recipe.attention_similarity(sim, h, w)
  local n = sim:numel()
  local mean = sim:mean()
  local d = sim - mean
  local std = math.sqrt((d * d):sum() / (n - 1))
  local z = (d / std):reshape(1, 1, sim:size(1), sim:size(2))
  return nn.interpolate(z, h, w, { mode = "bilinear" }):reshape(h, w):sigmoid_()
end

-- The reference's target feature and embedding into state.
function recipe.set_reference(state, ref_image, ref_mask)
  local feats, grid = recipe.embed_reference(state.predictor, ref_image, ref_mask, "persam")
  state.target, state.target_embedding = recipe.target_feature(feats, grid, ref_mask)
  state.predictor:reset_image()
end

function recipe.setup(params, models, _, cfg)
  return recipe.prepare(params, models, cfg, "persam", recipe.set_reference)
end

-- The result of a cascade: a semantic map or one instance, with the dump.
function recipe.result(params, logits, score, pos, neg, box, dump)
  local mask = logits:gt(0)
  if params.output == "semantic" then
    local p = logits:sigmoid()
    return { kind = "semantic", labels = mask:int(), scores = T.stack({ 1 - p, p }, 1), dump = dump }
  end
  local bin = mask:byte()
  local record = masks.instance_record(bin)
  record.predicted_iou = score
  record.point_coords, record.point_labels = neg and { pos, neg } or { pos }, neg and { 1, 0 } or { 1 }
  record.prompt_box = box
  return { kind = "instances", masks = { bin }, scores = { score }, dump = dump, records = { record } }
end

function recipe.segment(state, img)
  local predictor = state.predictor
  if not state.target then error("persam: no reference set (params.ref_image and params.ref_mask)", 0) end
  predictor:set_image(img)
  local feats = predictor.image_embeddings
  local sim = recipe.location(predictor, state.target, { img:size(1), img:size(2) })
  local pos, neg = recipe.select_points(sim)
  local attn = recipe.attention_similarity(sim, feats:size(3), feats:size(4))
  local logits, score, box, trace = recipe.cascade(predictor, pos, neg, {
    attention_similarity = attn, target_embedding = state.target_embedding })
  predictor:reset_image()
  local dump = { points = { pos, neg }, box = box and { box } or {}, target_embedding = state.target_embedding,
                 attention_similarity = attn, step1_low_res = trace.low_res, scores = trace.iou }
  return recipe.result(state.params, logits, score, pos, neg, box, dump)
end

return recipe
