-- fmseg.sam.processor — SAM's pre- and post-processing (transformers'
-- SamImageProcessor and SamProcessor): the longest side resized to the
-- encoder's input, ImageNet normalisation, zero padding at the bottom and
-- right; prompts mapped from original-image pixels to the resized frame;
-- low-res mask logits brought back to the original size.
--
--   local processor = require("fmseg.sam.processor")
--   local proc = processor.new({ longest_edge = 1024 })    -- or processor.load(dir)
--   local x, resized_hw, original_hw = proc:preprocess(img)   -- (1, 3, 1024, 1024)
--   local pts = proc:map_coords(points, original_hw, resized_hw)
--   local logits = proc:postprocess_masks(low_res, resized_hw, original_hw)
--
-- Sizes are {h, w} Lua tables.
local hf = require("fmseg.io.hf")
local image = require("fmseg.image")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local M = {}

local Processor = {}
Processor.__index = Processor

-- SamImageProcessor's defaults.
local IMAGENET_MEAN = { 0.485, 0.456, 0.406 }
local IMAGENET_STD = { 0.229, 0.224, 0.225 }
local DEFAULT_SIZE = 1024
-- Logits at or below this are background (SamProcessor's mask_threshold).
M.MASK_THRESHOLD = 0.0
-- Masks interpolated per call in postprocess_masks: bounds the (k, S, S)
-- intermediate to 64 MB at S = 1024.
local POSTPROCESS_FLOATS = 2 ^ 24

-- new(opts): longest_edge (1024), pad_size ({h, w}, default square of
-- longest_edge), image_mean, image_std, rescale_factor (1/255), resize:
-- "pil" (SamImageProcessor's PIL bilinear, antialiased, on uint8) or
-- "interpolate" (torch's bilinear without antialias on floats, how the
-- fixtures made their pixel_values).
function M.new(opts)
  opts = opts or {}
  local edge = opts.longest_edge or DEFAULT_SIZE
  local self = setmetatable({
    longest_edge = edge,
    pad_size = opts.pad_size or { edge, edge },
    image_mean = opts.image_mean or IMAGENET_MEAN,
    image_std = opts.image_std or IMAGENET_STD,
    rescale_factor = opts.rescale_factor or 1 / 255,
    resize = opts.resize or "pil",
  }, Processor)
  if self.resize ~= "pil" and self.resize ~= "interpolate" then
    error(("sam processor: resize '%s' (pil or interpolate)"):format(tostring(self.resize)), 2)
  end
  return self
end

local PIL_BILINEAR = 2

-- load(dir, opts): preprocessor_config.json of a SAM directory when there
-- is one, else the defaults with longest_edge = the encoder's image_size.
function M.load(path, opts)
  local dir = hf.open(path)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.longest_edge = o.longest_edge or hf.cfg(dir.config, "vision_config.image_size", DEFAULT_SIZE)
  if dir:has_file("preprocessor_config.json") then
    local pc = dir:json("preprocessor_config.json")
    local size, pad = pc.size, pc.pad_size
    if type(size) == "table" and size.longest_edge then o.longest_edge = size.longest_edge end
    if type(pad) == "table" and pad.height then o.pad_size = o.pad_size or { pad.height, pad.width } end
    o.image_mean = o.image_mean or pc.image_mean
    o.image_std = o.image_std or pc.image_std
    o.rescale_factor = o.rescale_factor or pc.rescale_factor
    if pc.resample and pc.resample ~= PIL_BILINEAR then
      error(("%s/preprocessor_config.json: resample %s, only bilinear (2) is supported"):format(
        dir.path, tostring(pc.resample)), 0)
    end
  end
  return M.new(o)
end

-- (h, w) → the resized (h, w) with the longest side at longest_edge.
-- ref: SamImageProcessor._get_preprocess_shape
function M.preprocess_shape(h, w, longest_edge)
  local scale = longest_edge / math.max(h, w)
  return math.floor(h * scale + 0.5), math.floor(w * scale + 0.5)
end

-- img (H, W, 3) uint8 → pixel_values (1, 3, pad_h, pad_w), resized_hw,
-- original_hw. ref: SamImageProcessor.preprocess (resize, rescale,
-- normalize, pad)
function Processor:preprocess(img)
  local shape = img:shape()
  if #shape ~= 3 or shape[3] ~= 3 or img:dtype() ~= "uint8" then
    error(("sam processor: expected an (H, W, 3) uint8 image, got %s %s"):format(
      img:dtype(), T.shape_string(shape)), 2)
  end
  local h, w = shape[1], shape[2]
  local rh, rw = M.preprocess_shape(h, w, self.longest_edge)
  local ph, pw = self.pad_size[1], self.pad_size[2]
  if rh > ph or rw > pw then
    error(("sam processor: resized %dx%d exceeds pad_size %dx%d"):format(rh, rw, ph, pw), 2)
  end
  local x
  if self.resize == "pil" then
    x = image.to_chw(image.resize_pil(img, rh, rw, "bilinear"))
  else
    x = nn.interpolate(image.to_chw(img), rh, rw, { mode = "bilinear" })
  end
  local mean = T.from_table(self.image_mean):reshape(1, 3, 1, 1)
  local std = T.from_table(self.image_std):reshape(1, 3, 1, 1)
  local normed = (x * self.rescale_factor - mean) / std
  local out = T.zeros({ 1, 3, ph, pw })
  out:narrow(3, 1, rh):narrow(4, 1, rw):copy(normed)
  return out, { rh, rw }, { h, w }
end

-- coords (..., 2) x, y in original pixels → the resized frame.
-- ref: SamProcessor._normalize_coordinates
function Processor:map_coords(coords, original_hw, resized_hw)
  local scale = T.from_table({ resized_hw[2] / original_hw[2], resized_hw[1] / original_hw[1] })
  return coords * scale
end

-- boxes (..., 4) x0, y0, x1, y1 → the resized frame.
function Processor:map_boxes(boxes, original_hw, resized_hw)
  local shape = boxes:shape()
  local n = boxes:numel() / 4
  return self:map_coords(boxes:reshape(n, 2, 2), original_hw, resized_hw):reshape(shape)
end

-- low_res (..., h, w) mask logits → (..., H, W) at original_hw: bilinear
-- up to pad_size, crop to resized_hw, bilinear to original_hw; logits
-- unless opts.binarize (then uint8 0/1, logit > MASK_THRESHOLD).
-- ref: SamImageProcessor.post_process_masks
function Processor:postprocess_masks(low_res, resized_hw, original_hw, opts)
  opts = opts or {}
  local shape = low_res:shape()
  local lh, lw = shape[#shape - 1], shape[#shape]
  local n = low_res:numel() / (lh * lw)
  local ph, pw = self.pad_size[1], self.pad_size[2]
  local oh, ow = original_hw[1], original_hw[2]
  local flat = low_res:reshape(1, n, lh, lw)
  local out = T.new({ n, oh, ow }, opts.binarize and "uint8" or "float32")
  -- a few masks at a time: the pad-size intermediate is the big one
  local step = math.max(1, math.floor(POSTPROCESS_FLOATS / (ph * pw)))
  for first = 1, n, step do
    local k = math.min(step, n - first + 1)
    local up = nn.interpolate(flat:narrow(2, first, k), ph, pw, { mode = "bilinear" })
    local crop = up:narrow(3, 1, resized_hw[1]):narrow(4, 1, resized_hw[2])
    local full = nn.interpolate(crop, oh, ow, { mode = "bilinear" })
    up:free()
    crop:free()
    local part = full:reshape(k, oh, ow)
    if opts.binarize then
      out:narrow(1, first, k):copy(part:gt(M.MASK_THRESHOLD))
    else
      out:narrow(1, first, k):copy(part)
    end
    full:free()
  end
  shape[#shape - 1], shape[#shape] = oh, ow
  return out:reshape(shape)
end

M.Processor = Processor
return M
