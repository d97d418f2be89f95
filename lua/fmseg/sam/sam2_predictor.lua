-- fmseg.sam.sam2_predictor — SAM 2's image predictor: embed an image once,
-- prompt it many times (the original sam2/sam2_image_predictor.py,
-- SAM2ImagePredictor, over fmseg.models.sam2). The same methods as
-- fmseg.sam.predictor, so the automatic mask generator and the recipes
-- take either; fmseg.sam.predictor.new(model) hands a SAM 2 model here.
--
--   local sam2 = require("fmseg.models.sam2")
--   local predictor = require("fmseg.sam.sam2_predictor")
--   local p = predictor.new(sam2.load("sam2.1-hiera-tiny"), { max_hole_area = 0 })
--   p:set_image(img)                          -- (H, W, 3) uint8: runs the encoder
--   local masks, iou, low_res = p:predict({
--     points = { { 500, 375 } }, labels = { 1 },
--     box = { 425, 600, 700, 875 },           -- x0, y0, x1, y1
--     mask_input = low_res:narrow(1, k, 1),    -- (1, 256, 256) logits of an earlier call
--     multimask = true,                        -- 3 masks; false: 1 (dynamic via stability)
--   })
--   -- masks (M, H, W) uint8 0/1 at the original size, iou (M), low_res
--   -- (M, 256, 256) clamped to ±32 as the original returns them
--
--   local masks, iou, low_res = p:predict_batch(points, labels, opts)
--   -- points (N, P, 2), labels (N, P) (1 fg, 0 bg, -1 not a point),
--   -- opts.boxes (N, 4), opts.mask_input (N, 1, 256, 256), opts.multimask
--   -- (true), opts.return_logits (false), opts.masks (true; false skips the
--   -- upsampling, see upsample_logits), opts.frame_hw ({h, w}: points and
--   -- boxes are pixels of an image of this size; default the image's),
--   -- opts.clamp (true; false: the low-res logits as the decoder made them,
--   -- what the full-size masks come from), opts.max_hole_area,
--   -- opts.max_sprinkle_area (override the predictor's for this call)
--   -- → masks (N, M, H, W) uint8 (float32 logits with return_logits),
--   --   iou (N, M), low_res (N, M, 256, 256)
--   -- opts.mask_filter = function(iou (N, M)) → ascending prompt indices:
--   -- only their masks are made (decode_masks' mask_filter; not for a
--   -- single mask chosen by stability); then → nil, iou (N, M), low_res
--   -- (K, M, 256, 256) of those K, the list
--
-- Coordinates are original-image pixels (x, y). SAM's PerSAM decoder
-- options (attention_similarity, target_embedding) and its row-wise mask
-- normalisation (mask_norm "rows") have no SAM 2 counterpart and are
-- refused.
local transforms = require("fmseg.sam.sam2_transforms")
local T = require("fmseg.tensor")

local M = {}

-- _predict clamps the low-res logits it returns (a later mask_input).
M.LOW_RES_CLAMP = 32.0

local Predictor = {}
Predictor.__index = Predictor

-- new(model, opts): opts.mask_threshold (0), max_hole_area (0),
-- max_sprinkle_area (0) (SAM2ImagePredictor's arguments), antialias (true,
-- see fmseg.sam.sam2_transforms), dynamic_multimask_via_stability (default
-- config.json's; false is build_sam2(..., apply_postprocessing=False):
-- single-mask prompts keep mask token 0's mask).
function M.new(model, opts)
  opts = opts or {}
  local size = model.config.backbone.image_size
  if type(size) == "table" then
    if size[1] ~= size[2] then
      error(("sam2 predictor: image_size %dx%d; SAM 2's transforms resize to a square input"):format(
        size[1], size[2]), 2)
    end
    size = size[1]
  end
  return setmetatable({
    model = model, family = "sam2",
    mask_threshold = opts.mask_threshold or 0.0,
    dynamic_multimask = opts.dynamic_multimask_via_stability,
    transforms = transforms.new({ resolution = size, mask_threshold = opts.mask_threshold,
                                  max_hole_area = opts.max_hole_area, max_sprinkle_area = opts.max_sprinkle_area,
                                  antialias = opts.antialias }),
  }, Predictor)
end

-- Runs the image encoder on img (H, W, 3) uint8 and keeps its features.
-- ref: SAM2ImagePredictor.set_image
function Predictor:set_image(img)
  return self:set_pixel_values(self.transforms:preprocess(img), { img:size(1), img:size(2) })
end

-- Already transformed input: pixel_values (1, 3, R, R) of an image of
-- original_hw {h, w}.
function Predictor:set_pixel_values(pixel_values, original_hw)
  if pixel_values:size(1) ~= 1 then
    error(("sam2 predictor: one image at a time, got pixel_values %s"):format(
      T.shape_string(pixel_values:shape())), 2)
  end
  self:reset_image()
  self.features = self.model:image_features(self.model:encode_image(pixel_values))
  self.original_hw = { original_hw[1], original_hw[2] }
  collectgarbage()
  return self
end

-- Drops the image's state.
function Predictor:reset_image()
  self.features, self.original_hw = nil, nil
end

local PERSAM_OPTIONS = { "attention_similarity", "attention_similarity_mode", "target_embedding",
                         "target_embedding_final" }

local function refuse_sam_options(opts)
  for _, k in ipairs(PERSAM_OPTIONS) do
    if opts[k] ~= nil then
      error(("sam2 predictor: %s is a SAM decoder option (PerSAM); SAM 2's decoder has none"):format(k), 0)
    end
  end
  -- SAM 2's mask prompt is normalised over channels, as SAM intends it
  if opts.mask_norm ~= nil and opts.mask_norm ~= "channels" then
    error(("sam2 predictor: mask_norm '%s' is SAM's (Trident's unbatched mask prompt); SAM 2 takes 'channels'")
          :format(tostring(opts.mask_norm)), 0)
  end
end

-- predict(prompt) → masks (M, H, W), iou (M), low_res (M, h, w) for one
-- prompt: points {{x, y}, ...} or (P, 2), labels (default all
-- foreground), box {x0, y0, x1, y1}, mask_input (1, h, w) or (1, 1, h, w),
-- multimask (true), return_logits (false).
-- ref: SAM2ImagePredictor.predict
function Predictor:predict(prompt)
  prompt = prompt or {}
  refuse_sam_options(prompt)
  local one = require("fmseg.sam.predictor").single_prompt(prompt, "sam2 predictor")
  local masks, iou, low_res = self:predict_batch(one.points, one.labels, {
    boxes = one.boxes, mask_input = one.mask_input,
    multimask = prompt.multimask, return_logits = prompt.return_logits,
  })
  return masks:select(1, 1), iou:select(1, 1), low_res:select(1, 1)
end

-- predict_batch(points (N, P, 2) | nil, labels (N, P) | nil, opts) → masks
-- (N, M, H, W), iou (N, M), low_res (N, M, h, w); see the top of the file.
-- A box is two points labelled 2 and 3 before the prompt's points
-- (fmseg.models.sam2 encode_prompt).
-- ref: SAM2ImagePredictor._prep_prompts, _predict
function Predictor:predict_batch(points, labels, opts)
  opts = opts or {}
  refuse_sam_options(opts)
  if not self.features then error("sam2 predictor: call set_image first", 2) end
  local tf, fhw = self.transforms, opts.frame_hw or self.original_hw
  local prompt = {}
  local n
  if points then
    if points:dim() ~= 3 or points:size(3) ~= 2 then
      error(("sam2 predictor: points %s, expected (N, P, 2)"):format(T.shape_string(points:shape())), 2)
    end
    local p
    n, p = points:size(1), points:size(2)
    labels = labels and labels:float() or T.ones({ n, p })
    if labels:numel() ~= n * p then
      error(("sam2 predictor: labels %s for points %s"):format(T.shape_string(labels:shape()),
        T.shape_string(points:shape())), 2)
    end
    prompt.points = tf:transform_coords(points:float(), fhw):unsqueeze(1)      -- (1, N, P, 2)
    prompt.labels = labels:reshape(1, n, p)
  end
  if opts.boxes then
    local boxes = opts.boxes:float()
    prompt.boxes = tf:transform_boxes(boxes, fhw):reshape(1, boxes:numel() / 4, 4)
  end
  prompt.masks = opts.mask_input
  local model = self.model
  local sparse, dense = model:encode_prompt(prompt)
  local low_res, iou, _, picked = model:decode_masks(self.features, sparse, dense, opts.multimask ~= false,
                                                     { dynamic = self.dynamic_multimask, mask_filter = opts.mask_filter })
  if picked then                                                         -- (K, M, h, w), (N, M)
    if opts.clamp ~= false then low_res = self:clamp_low_res(low_res) end
    return nil, iou, low_res, picked
  end
  low_res, iou = low_res:select(1, 1), iou:select(1, 1)                 -- (N, M, h, w), (N, M)
  local masks
  if opts.masks ~= false then
    masks = tf:postprocess_masks(low_res, self.original_hw, opts)
    if not opts.return_logits then masks = masks:gt(self.mask_threshold):byte() end
  end
  if opts.clamp ~= false then low_res = low_res:clamp(-M.LOW_RES_CLAMP, M.LOW_RES_CLAMP) end
  return masks, iou, low_res
end

-- low_res (..., h, w) logits of the current image (unclamped: predict_batch
-- with clamp = false) → (..., H, W) logits at its original size, holes
-- and sprinkles handled as predict_batch's masks (opts.max_hole_area,
-- opts.max_sprinkle_area override the predictor's).
function Predictor:upsample_logits(low_res, opts)
  if not self.features then error("sam2 predictor: call set_image first", 2) end
  return self.transforms:postprocess_masks(low_res, self.original_hw, opts)
end

-- The part {rh, rw} of a size x size frame an h x w image fills: all of it
-- (SAM 2 resizes to the square, aspect not kept).
function Predictor:content_hw(_, _, size)
  return { size, size }
end

-- A low-res mask_input from logits of predict_batch(clamp = false).
function Predictor:clamp_low_res(low_res)
  return low_res:clamp(-M.LOW_RES_CLAMP, M.LOW_RES_CLAMP)
end

return M
