-- fmseg.sam.sam2_transforms — SAM 2's pre- and post-processing (the original
-- sam2/utils/transforms.py, SAM2Transforms): the image squashed to the
-- model's square input (no aspect kept, no padding), ImageNet
-- normalisation; prompts scaled from image pixels to that square; low-res
-- mask logits with small holes filled and small sprinkles removed, then
-- resized straight to the image's size.
--
--   local transforms = require("fmseg.sam.sam2_transforms")
--   local tf = transforms.new({ resolution = 1024, max_hole_area = 0, max_sprinkle_area = 0 })
--   local x = tf:preprocess(img)                       -- (1, 3, 1024, 1024)
--   local pts = tf:transform_coords(points, { h, w })  -- (..., 2) x, y
--   local logits = tf:postprocess_masks(low_res, { h, w })
--
-- Sizes are {h, w} Lua tables.
local masks = require("fmseg.masks")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local M = {}

local Transforms = {}
Transforms.__index = Transforms

local IMAGENET_MEAN = { 0.485, 0.456, 0.406 }
local IMAGENET_STD = { 0.229, 0.224, 0.225 }
-- The logit a filled hole gets above the threshold, a removed sprinkle
-- below it (postprocess_masks' ±10).
local FILL_MARGIN = 10.0
-- Masks resized per call in postprocess_masks: bounds the intermediate to
-- 64 MB.
local POSTPROCESS_FLOATS = 2 ^ 24

-- new(opts): resolution (the model's image_size), mask_threshold (0),
-- max_hole_area (0: off), max_sprinkle_area (0: off), in low-res pixels;
-- antialias (true): torchvision's Resize on a float tensor antialiases
-- from torchvision 0.17 on, which sam2's requirements (torch >= 2.5.1)
-- imply; false is the older torchvision's plain bilinear.
function M.new(opts)
  opts = opts or {}
  if type(opts.resolution) ~= "number" or opts.resolution < 1 then
    error(("sam2 transforms: resolution must be a positive number, got %s"):format(tostring(opts.resolution)), 2)
  end
  return setmetatable({
    resolution = opts.resolution,
    mask_threshold = opts.mask_threshold or 0.0,
    max_hole_area = opts.max_hole_area or 0,
    max_sprinkle_area = opts.max_sprinkle_area or 0,
    antialias = opts.antialias ~= false,
  }, Transforms)
end

-- img (H, W, 3) uint8 → pixel_values (1, 3, R, R): ToTensor (/ 255),
-- Resize((R, R)) bilinear, Normalize.
-- ref: SAM2Transforms.__call__
function Transforms:preprocess(img)
  local shape = img:shape()
  if #shape ~= 3 or shape[3] ~= 3 or img:dtype() ~= "uint8" then
    error(("sam2 transforms: expected an (H, W, 3) uint8 image, got %s %s"):format(
      img:dtype(), T.shape_string(shape)), 2)
  end
  local r = self.resolution
  local x = nn.interpolate(img:float():permute(3, 1, 2):contiguous():reshape(1, 3, shape[1], shape[2]) / 255,
                           r, r, { mode = "bilinear", antialias = self.antialias })
  local mean = T.from_table(IMAGENET_MEAN):reshape(1, 3, 1, 1)
  local std = T.from_table(IMAGENET_STD):reshape(1, 3, 1, 1)
  return (x - mean) / std
end

-- coords (..., 2) x, y in pixels of an image of orig_hw → the model's
-- input frame: x / w * R, y / h * R (normalize = True).
-- ref: SAM2Transforms.transform_coords
function Transforms:transform_coords(coords, orig_hw)
  local size = T.from_table({ orig_hw[2], orig_hw[1] })
  return coords / size * self.resolution
end

-- boxes (..., 4) x0, y0, x1, y1 → the input frame, same shape.
-- ref: SAM2Transforms.transform_boxes
function Transforms:transform_boxes(boxes, orig_hw)
  local shape = boxes:shape()
  return self:transform_coords(boxes:reshape(boxes:numel() / 4, 2, 2), orig_hw):reshape(shape)
end

-- One (h, w) logit map: every 8-connected component of `region` (uint8
-- 0/1) of at most max_area pixels set to value in out.
local function set_small_components(out, region, max_area, value)
  local labels, n = masks.connected_components(region, 8)
  if n == 0 then return end
  local areas = masks.label_areas(labels, n):ptr()
  local lp, op = labels:ptr(), out:ptr()
  for i = 0, labels:numel() - 1 do
    local k = lp[i]
    if k > 0 and areas[k] <= max_area then op[i] = value end
  end
end

-- low_res (..., h, w) logits → a copy with the small holes (background
-- components, logit <= mask_threshold, of at most max_hole_area pixels)
-- at threshold + 10 and the small sprinkles (foreground components of at
-- most max_sprinkle_area) at threshold - 10; both found on the input, the
-- holes filled first. opts overrides the areas.
-- ref: SAM2Transforms.postprocess_masks (its get_connected_components:
--      8-connectivity, every component, also those touching the border)
function Transforms:fill_holes(low_res, opts)
  opts = opts or {}
  local hole, sprinkle = opts.max_hole_area or self.max_hole_area, opts.max_sprinkle_area or self.max_sprinkle_area
  local out = low_res:contiguous():clone()
  if hole <= 0 and sprinkle <= 0 then return out end
  local shape = out:shape()
  local h, w = shape[#shape - 1], shape[#shape]
  local flat, input = out:reshape(out:numel() / (h * w), h, w), low_res:contiguous():reshape(out:numel() / (h * w), h, w)
  local t = self.mask_threshold
  for i = 1, flat:size(1) do
    local map, orig = flat:select(1, i), input:select(1, i)
    if hole > 0 then set_small_components(map, orig:le(t), hole, t + FILL_MARGIN) end
    if sprinkle > 0 then set_small_components(map, orig:gt(t), sprinkle, t - FILL_MARGIN) end
  end
  return out
end

-- low_res (..., h, w) mask logits → (..., H, W) logits at orig_hw: holes
-- and sprinkles handled (fill_holes; opts.max_hole_area,
-- opts.max_sprinkle_area override the transforms'), then bilinear
-- (no antialias) to the image's size, a few masks at a time.
-- ref: SAM2Transforms.postprocess_masks
function Transforms:postprocess_masks(low_res, orig_hw, opts)
  local shape = low_res:shape()
  local h, w = shape[#shape - 1], shape[#shape]
  local oh, ow = orig_hw[1], orig_hw[2]
  local n = low_res:numel() / (h * w)
  local filled = self:fill_holes(low_res, opts):reshape(1, n, h, w)
  local out = T.new({ n, oh, ow })
  local step = math.max(1, math.floor(POSTPROCESS_FLOATS / (oh * ow)))
  for first = 1, n, step do
    local k = math.min(step, n - first + 1)
    local up = nn.interpolate(filled:narrow(2, first, k), oh, ow, { mode = "bilinear" })
    out:narrow(1, first, k):copy(up:reshape(k, oh, ow))
    up:free()
  end
  filled:free()
  shape[#shape - 1], shape[#shape] = oh, ow
  return out:reshape(shape)
end

M.Transforms = Transforms
return M
