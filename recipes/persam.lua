-- PerSAM (Zhang et al., ICLR24), training-free: one reference image with a
-- mask of the object; in a new image, SAM's image features most like the
-- object's mean feature give a positive point (the most similar pixel) and
-- a negative one (the least similar), and a three-step cascade segments it.
-- ref: ZrrSkywalker/Personalize-SAM persam.py (persam, point_selection) and
--      per_segment_anything/predictor.py (set_image with a mask).
--
--   1. reference: SAM features (C, h, w) of the reference image; its mask
--      goes through SAM's image preprocessing (resize, normalise, zero pad)
--      and a bilinear resize to h x w; cells whose red channel is > 0 are
--      under the mask. target = mean feature there, L2-normalised.
--   2. target image: cosine of target with each L2-normalised feature,
--      upsampled x4 (bilinear), then to the image like mask logits; the
--      positive point at its maximum, the negative at its minimum.
--   3. cascade: single-mask output; the same points with that output's
--      low-res logits as mask prompt, multimask, best predicted IoU; again
--      with the best mask's low-res logits and its box added, best again.
-- PerSAM also adds the similarity map to the decoder's token-to-image
-- attention and the target feature to its tokens; those two decoder
-- changes are not reproduced here (fmseg's SAM decoder has no hooks).
--
-- output = "instances": one mask with its record; "semantic": labels 0
-- (background) / 1 (the object), scores = 1 - p, p with p = sigmoid(logit).
local image = require("fmseg.image")
local masks = require("fmseg.masks")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local recipe = {
  name = "persam",
  needs = { "sam" },
  defaults = {
    ref_image = false,   -- path of the reference image
    ref_mask = false,    -- path of its mask (PNG; any nonzero pixel is the object)
    output = "instances",  -- or "semantic"
  },
}

-- A mask file → (H, W, 3) uint8, 255 on the object, 0 elsewhere (PerSAM
-- reads its masks as images; a palette PNG's index 0 is background).
function recipe.load_mask(path)
  local ok, idx = pcall(image.load_indices, path)
  local fg
  if ok then
    fg = idx:float():gt(0)
  else
    fg = image.load(path):float():max(3):gt(0)
  end
  local rgb = fg:mul_(255):unsqueeze(3) + T.zeros({ 1, 1, 3 })
  return rgb:byte()
end

-- features (1, C, h, w), the reference mask image (H, W, 3) uint8 → the
-- mask on the feature grid (h, w) 0/1, as PerSAM computes it
function recipe.mask_on_grid(proc, mask_img, h, w)
  local x = proc:preprocess(mask_img)                            -- (1, 3, S, S), normalised, zero-padded
  local red = x:narrow(2, 1, 1):contiguous()
  return nn.interpolate(red, h, w, { mode = "bilinear" }):reshape(h, w):gt(0)
end

-- features (1, C, h, w), grid mask (h, w) 0/1 → target feature (C), L2-normalised
function recipe.target_feature(features, grid_mask)
  local c = features:size(2)
  local n = grid_mask:sum()
  if n == 0 then
    error("persam: the reference mask covers no cell of SAM's feature grid (too small?)", 0)
  end
  local flat = features:reshape(c, grid_mask:numel())
  local mean = flat:matmul(grid_mask:reshape(grid_mask:numel(), 1)):reshape(c) / n
  return nn.normalize(mean)
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
-- (H, W) logits, predicted IoU, the box used in the last step (or nil).
function recipe.cascade(predictor, pos, neg)
  local points, labels = { pos, neg }, { 1, 0 }
  local _, _, low = predictor:predict({ points = points, labels = labels, multimask = false })
  local _, iou, low2 = predictor:predict({ points = points, labels = labels,
                                           mask_input = low:narrow(1, 1, 1), multimask = true })
  local best = iou:argmax()
  local mask = predictor:upsample_logits(low2:narrow(1, best, 1)):select(1, 1)
  if mask:gt(0):sum() == 0 then                                  -- no box to add
    return mask, iou:get(best), nil
  end
  local box = masks.masks_to_boxes(mask:gt(0)):values()
  local logits, iou3 = predictor:predict({ points = points, labels = labels, box = box,
                                           mask_input = low2:narrow(1, best, 1), multimask = true,
                                           return_logits = true })
  local best3 = iou3:argmax()
  return logits:select(1, best3):contiguous(), iou3:get(best3), box
end

function recipe.setup(params, models)
  if not params.ref_image or not params.ref_mask then
    error("persam: set params.ref_image and params.ref_mask (the reference image and its object mask)", 0)
  end
  if params.output ~= "instances" and params.output ~= "semantic" then
    error(("persam: output must be instances or semantic, got %s"):format(tostring(params.output)), 0)
  end
  local predictor = require("fmseg.models.sam").predictor(models.sam)
  local ref = image.load(params.ref_image)
  local mask_img = recipe.load_mask(params.ref_mask)
  if mask_img:size(1) ~= ref:size(1) or mask_img:size(2) ~= ref:size(2) then
    error(("persam: ref_mask is %dx%d, ref_image %dx%d"):format(mask_img:size(2), mask_img:size(1),
      ref:size(2), ref:size(1)), 0)
  end
  predictor:set_image(ref)
  local feats = predictor.image_embeddings
  local grid = recipe.mask_on_grid(predictor.processor, mask_img, feats:size(3), feats:size(4))
  local target = recipe.target_feature(feats, grid)
  predictor:reset_image()
  return { params = params, predictor = predictor, target = target }
end

function recipe.segment(state, img)
  local predictor = state.predictor
  predictor:set_image(img)
  local feats = predictor.image_embeddings
  local h, w = feats:size(3), feats:size(4)
  local sim = recipe.similarity(state.target, feats)
  sim = nn.interpolate(sim:reshape(1, 1, h, w), 4 * h, 4 * w, { mode = "bilinear" })
  sim = predictor:upsample_logits(sim):reshape(img:size(1), img:size(2))
  local pos, neg = recipe.select_points(sim)
  local logits, score, box = recipe.cascade(predictor, pos, neg)
  predictor:reset_image()
  local mask = logits:gt(0)
  if state.params.output == "semantic" then
    local p = logits:sigmoid()
    return { kind = "semantic", labels = mask:int(), scores = T.stack({ 1 - p, p }, 1) }
  end
  local bin = mask:byte()
  local rle = masks.rle_encode(bin)
  local b = masks.masks_to_boxes(bin):values()
  return {
    kind = "instances", masks = { bin }, scores = { score },
    records = { {
      segmentation = masks.rle_to_json(rle), area = masks.rle_area(rle),
      bbox = { b[1], b[2], b[3] - b[1], b[4] - b[2] }, predicted_iou = score,
      point_coords = { pos, neg }, point_labels = { 1, 0 }, prompt_box = box,
    } },
  }
end

return recipe
