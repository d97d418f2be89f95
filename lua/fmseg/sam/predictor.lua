-- fmseg.sam.predictor — embed an image once, prompt it many times
-- (segment-anything's SamPredictor over transformers' SamModel).
--
--   local sam = require("fmseg.models.sam")
--   local predictor = require("fmseg.sam.predictor")
--   local p = predictor.new(sam.load("sam-vit-base"))
--   p:set_image(img)                          -- (H, W, 3) uint8: runs the encoder
--   local masks, iou, low_res = p:predict({
--     points = { { 500, 375 }, { 1125, 625 } }, labels = { 1, 0 },
--     box = { 425, 600, 700, 875 },           -- x0, y0, x1, y1
--     mask_input = low_res:narrow(1, k, 1),    -- (1, 256, 256) logits of an earlier call
--     multimask = true,                        -- 3 masks; false: 1
--   })
--   -- masks (M, H, W) uint8 0/1 at the original size, iou (M), low_res (M, 256, 256)
--
-- Many prompts at once, for the automatic mask generator:
--
--   local masks, iou, low_res = p:predict_batch(points, labels, opts)
--   -- points (N, P, 2) float32, labels (N, P) (1 fg, 0 bg, -1 ignored),
--   -- opts.boxes (N, 4), opts.mask_input (N, 1, 256, 256),
--   -- opts.multimask (true), opts.return_logits (false), opts.masks (true;
--   -- false skips the upsampling: masks is nil, see upsample_logits),
--   -- opts.frame_hw ({h, w}: points and boxes are pixels of an image of
--   -- this size, e.g. a downsampled map; default the original image),
--   -- opts.mask_norm ("channels", or "rows": see models/sam.lua embed_masks),
--   -- opts.attention_similarity, opts.attention_similarity_mode,
--   -- opts.target_embedding, opts.target_embedding_final (PerSAM's decoder
--   -- options, see models/sam.lua decode_masks; off by default)
--   -- → masks (N, M, H, W) uint8 (float32 logits with return_logits),
--   --   iou (N, M), low_res (N, M, 256, 256)
--   -- opts.mask_filter = function(iou (N, M)) → ascending prompt indices:
--   -- only their masks are made (decode_masks' mask_filter); then
--   -- → nil, iou (N, M), low_res (K, M, 256, 256) of those K, the list
--
-- Coordinates are original-image pixels (x, y). Memory: the decoder holds
-- N copies of the image tokens (N x 4096 x 256 floats, 4 MB each at 1024)
-- and the outputs are N x M x H x W (x 4 bytes with return_logits); choose
-- N accordingly. The predictor holds the per-image state; the model stays
-- immutable and can serve several predictors.
local processor = require("fmseg.sam.processor")
local T = require("fmseg.tensor")

local M = {}

local Predictor = {}
Predictor.__index = Predictor

-- new(model, opts): opts.processor (a fmseg.sam.processor), or the options
-- for one (resize = "pil" | "interpolate", ...); by default the
-- preprocessor_config.json of model.path when there is one. A SAM 2 model
-- (fmseg.models.sam2) gets fmseg.sam.sam2_predictor's predictor, with opts
-- as its own (mask_threshold, max_hole_area, max_sprinkle_area).
function M.new(model, opts)
  if model.family == "sam2" then return require("fmseg.sam.sam2_predictor").new(model, opts) end
  opts = opts or {}
  local proc = opts.processor
  if not proc then
    local o = { resize = opts.resize, longest_edge = opts.longest_edge }
    if model.path then
      proc = processor.load(model.path, o)
    else
      o.longest_edge = o.longest_edge or model.config.vision.image_size
      proc = processor.new(o)
    end
  end
  return setmetatable({ model = model, processor = proc }, Predictor)
end

-- Runs the image encoder on img (H, W, 3) uint8 and keeps its embeddings.
function Predictor:set_image(img)
  local x, resized_hw, original_hw = self.processor:preprocess(img)
  return self:set_pixel_values(x, original_hw, resized_hw)
end

-- Already preprocessed input: pixel_values (1, 3, S, S) of an image of
-- original_hw {h, w} whose resized content is resized_hw (default: as the
-- processor would resize it).
function Predictor:set_pixel_values(pixel_values, original_hw, resized_hw)
  if pixel_values:size(1) ~= 1 then
    error(("sam predictor: one image at a time, got pixel_values %s"):format(
      T.shape_string(pixel_values:shape())), 2)
  end
  resized_hw = resized_hw or { processor.preprocess_shape(original_hw[1], original_hw[2],
                                                          self.processor.longest_edge) }
  self:reset_image()
  self.image_embeddings = self.model:encode_image(pixel_values)
  self.original_hw = { original_hw[1], original_hw[2] }
  self.resized_hw = { resized_hw[1], resized_hw[2] }
  return self
end

-- Drops the image's state. The embeddings are not freed here: a caller may
-- still hold them (they are 4 MB at 1024).
function Predictor:reset_image()
  self.image_embeddings, self.original_hw, self.resized_hw = nil, nil, nil
end

local function as_tensor(x, what, who)
  if x == nil then return nil end
  if T.is_tensor(x) then return x:float() end
  if type(x) ~= "table" then error(("%s: %s must be a table or a tensor"):format(who, what), 4) end
  return T.from_table(x)
end

-- One prompt of predict (points {{x, y}, ...} or (P, 2), labels, box
-- {x0, y0, x1, y1}, mask_input (1, h, w) or (1, 1, h, w)) → a batch of
-- one as predict_batch takes it: points (1, P, 2), labels (1, P) (default
-- all foreground), boxes (1, 4), mask_input (1, 1, h, w), each or nil;
-- errors name `who` and the caller of predict. Both SAM predictors' predict.
function M.single_prompt(prompt, who)
  local points = as_tensor(prompt.points, "points", who)
  local labels = as_tensor(prompt.labels, "labels", who)
  local box = as_tensor(prompt.box, "box", who)
  if points then
    if points:dim() ~= 2 or points:size(2) ~= 2 then
      error(("%s: points %s, expected {{x, y}, ...}"):format(who, T.shape_string(points:shape())), 3)
    end
    labels = labels or T.ones({ points:size(1) })
    if labels:numel() ~= points:size(1) then
      error(("%s: %d labels for %d points"):format(who, labels:numel(), points:size(1)), 3)
    end
    points, labels = points:unsqueeze(1), labels:reshape(1, points:size(1))
  end
  if box and box:numel() ~= 4 then
    error(("%s: box %s, expected {x0, y0, x1, y1}"):format(who, T.shape_string(box:shape())), 3)
  end
  local mask_input = prompt.mask_input
  if mask_input then
    local s = mask_input:shape()
    mask_input = mask_input:reshape(1, 1, s[#s - 1], s[#s])
  end
  return { points = points, labels = labels, boxes = box and box:reshape(1, 4), mask_input = mask_input }
end

-- predict(prompt) → masks (M, H, W), iou (M), low_res (M, h, w) for one
-- prompt: points {{x, y}, ...} or (P, 2), labels {1, 0, ...} or (P)
-- (default all foreground), box {x0, y0, x1, y1} or (4), mask_input
-- (1, h, w) or (1, 1, h, w) logits, multimask (true), return_logits (false),
-- attention_similarity, attention_similarity_mode, target_embedding,
-- target_embedding_final (PerSAM's decoder options, off by default: see
-- models/sam.lua decode_masks).
function Predictor:predict(prompt)
  prompt = prompt or {}
  local one = M.single_prompt(prompt, "sam predictor")
  local masks, iou, low_res = self:predict_batch(one.points, one.labels, {
    boxes = one.boxes, mask_input = one.mask_input,
    multimask = prompt.multimask, return_logits = prompt.return_logits,
    attention_similarity = prompt.attention_similarity, target_embedding = prompt.target_embedding,
    attention_similarity_mode = prompt.attention_similarity_mode,
    target_embedding_final = prompt.target_embedding_final,
  })
  return masks:select(1, 1), iou:select(1, 1), low_res:select(1, 1)
end

-- predict_batch(points (N, P, 2) | nil, labels (N, P) | nil, opts) → masks
-- (N, M, H, W), iou (N, M), low_res (N, M, h, w); see the top of the file.
function Predictor:predict_batch(points, labels, opts)
  opts = opts or {}
  if not self.image_embeddings then error("sam predictor: call set_image first", 2) end
  local proc, ohw, rhw = self.processor, self.original_hw, self.resized_hw
  -- the frame the prompt's coordinates are in, and its size once resized
  local fhw, frhw = ohw, rhw
  if opts.frame_hw then
    fhw = opts.frame_hw
    frhw = { processor.preprocess_shape(fhw[1], fhw[2], proc.longest_edge) }
  end
  local prompt = { mask_norm = opts.mask_norm }
  if points then
    if points:dim() ~= 3 or points:size(3) ~= 2 then
      error(("sam predictor: points %s, expected (N, P, 2)"):format(T.shape_string(points:shape())), 2)
    end
    local n, p = points:size(1), points:size(2)
    labels = labels and labels:float() or T.ones({ n, p })
    if labels:numel() ~= n * p then
      error(("sam predictor: labels %s for points %s"):format(T.shape_string(labels:shape()),
        T.shape_string(points:shape())), 2)
    end
    prompt.points = proc:map_coords(points:float(), fhw, frhw):unsqueeze(1)  -- (1, N, P, 2)
    prompt.labels = labels:reshape(1, n, p)
  end
  if opts.boxes then
    local boxes = opts.boxes:float()
    prompt.boxes = proc:map_boxes(boxes, fhw, frhw):reshape(1, boxes:numel() / 4, 4)
  end
  prompt.masks = opts.mask_input
  local model = self.model
  local sparse, dense = model:encode_prompt(prompt)
  local low_res, iou, picked = model:decode_masks(self.image_embeddings, sparse, dense, opts.multimask ~= false, {
    attention_similarity = opts.attention_similarity, target_embedding = opts.target_embedding,
    attention_similarity_mode = opts.attention_similarity_mode,
    target_embedding_final = opts.target_embedding_final, mask_filter = opts.mask_filter,
  })
  if picked then return nil, iou, low_res, picked end                   -- (K, M, h, w), (N, M)
  low_res, iou = low_res:select(1, 1), iou:select(1, 1)                  -- (N, M, h, w), (N, M)
  if opts.masks == false then return nil, iou, low_res end               -- see upsample_logits
  local masks = proc:postprocess_masks(low_res, rhw, ohw, { binarize = not opts.return_logits })
  return masks, iou, low_res
end

-- The part {rh, rw} of a size x size input frame (or of the low-res mask
-- frame, size = its side) an h x w image fills: the longest side at size,
-- the rest padding (bottom and right).
function Predictor:content_hw(h, w, size)
  return { processor.preprocess_shape(h, w, size) }
end

-- low_res (..., h, w) logits of the current image → (..., H, W) logits at
-- its original size, as predict_batch's return_logits masks. With
-- predict_batch's opts.masks = false, a caller upsamples only the masks it
-- keeps (the automatic mask generator: a few of 192 per batch).
function Predictor:upsample_logits(low_res)
  if not self.image_embeddings then error("sam predictor: call set_image first", 2) end
  return self.processor:postprocess_masks(low_res, self.resized_hw, self.original_hw)
end

return M
