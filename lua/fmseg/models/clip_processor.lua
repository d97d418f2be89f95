-- fmseg.models.clip_processor — CLIPImageProcessor as the checkpoint's
-- preprocessor_config.json describes it: resize of the shortest edge,
-- centre crop, rescale, normalise.
--
--   local proc = require("fmseg.models.clip_processor").load("clip-vit-base-patch16")
--   local pixel_values = proc:preprocess(image.load("cat.jpg"))  -- (1, 3, 224, 224)
--
-- transformers 5's CLIPImageProcessor is its torchvision backend (the PIL
-- one is CLIPImageProcessorPil): the resize is torch's on uint8 tensors,
-- whose int16 coefficients put some bytes one level from PIL's, the centre
-- crop pads a too-small image torchvision's way, and rescale + normalise
-- are one fused float32 step. This module follows it byte for byte
-- (bilinear as torchvision resizes on CPUs with AVX2; without, it resizes
-- bilinear in float and rounds).
-- ref: transformers/models/clip/image_processing_clip.py, CLIPImageProcessor;
--      transformers/image_processing_backends.py, TorchvisionBackend (resize,
--      center_crop, _fuse_mean_std_and_rescale_factor, _rescale_and_normalize);
--      torchvision/transforms/v2/functional/_geometry.py (resize_image,
--      _do_native_uint8_resize_on_cpu)
local hf = require("fmseg.io.hf")
local image = require("fmseg.image")
local T = require("fmseg.tensor")

local M = {}

-- PIL resample codes (Image.Resampling) that fmseg.image.resize_torch knows.
local RESAMPLE = { [2] = "bilinear", [3] = "bicubic" }

local Processor = {}
Processor.__index = Processor

-- size: int (old configs: the shortest edge), {shortest_edge = n} or
-- {height = h, width = w}
local function size_spec(size, what)
  if type(size) == "number" then return { shortest_edge = size } end
  if type(size) == "table" and (size.shortest_edge or (size.height and size.width)) then return size end
  error(("preprocessor_config.json: unsupported %s %s"):format(what, require("fmseg.io.json").encode(size)), 0)
end

-- new(cfg): cfg is a decoded preprocessor_config.json
function M.new(cfg)
  local resample = hf.cfg(cfg, "resample", 3)
  if not RESAMPLE[resample] then
    error(("preprocessor_config.json: resample %s is not supported (2 bilinear, 3 bicubic)"):format(
      tostring(resample)), 0)
  end
  local crop = hf.cfg(cfg, "crop_size", 224)
  if type(crop) == "number" then crop = { height = crop, width = crop } end
  return setmetatable({
    do_resize = hf.cfg(cfg, "do_resize", true),
    size = size_spec(hf.cfg(cfg, "size", { shortest_edge = 224 }), "size"),
    resample = RESAMPLE[resample],
    do_center_crop = hf.cfg(cfg, "do_center_crop", true),
    crop_size = crop,
    do_rescale = hf.cfg(cfg, "do_rescale", true),
    rescale_factor = hf.cfg(cfg, "rescale_factor", 1 / 255),
    do_normalize = hf.cfg(cfg, "do_normalize", true),
    image_mean = hf.cfg(cfg, "image_mean", { 0.48145466, 0.4578275, 0.40821073 }),
    image_std = hf.cfg(cfg, "image_std", { 0.26862954, 0.26130258, 0.27577711 }),
  }, Processor)
end

function M.load(path)
  local dir = hf.open(path)
  if not dir:has_file("preprocessor_config.json") then
    error(dir.path .. ": no preprocessor_config.json", 0)
  end
  return M.new(dir:json("preprocessor_config.json"))
end

-- (height, width) after resizing an h x w image
-- ref: transformers/image_transforms.py, get_resize_output_image_size
-- (default_to_square = False)
function Processor:output_size(h, w)
  local s = self.size
  if not s.shortest_edge then return s.height, s.width end
  local short, long = math.min(h, w), math.max(h, w)
  local new_short, new_long = s.shortest_edge, math.floor(s.shortest_edge * long / short)
  if w <= h then return new_long, new_short end
  return new_short, new_long
end

-- First image row (column) of a centre crop of c out of n; negative: the
-- image is smaller and starts that far inside the crop. Torchvision pads
-- (c - n) // 2 before and the rest after (numpy's center_crop would put
-- the odd pixel the other side).
local function crop_start(n, c)
  if n >= c then return math.floor((n - c) / 2) end
  return -math.floor((c - n) / 2)
end

-- img (H, W, C) uint8 → (ch, cw) centre crop, zero-padded where the image
-- is smaller. ref: transformers/image_processing_backends.py,
-- TorchvisionBackend.center_crop
local function center_crop(img, ch, cw)
  local h, w, c = unpack(img:shape())
  local top, left = crop_start(h, ch), crop_start(w, cw)
  if top >= 0 and left >= 0 then
    return img:narrow(1, top + 1, ch):narrow(2, left + 1, cw):contiguous()
  end
  local out = T.zeros({ ch, cw, c }, "uint8")
  local sy, dy = math.max(top, 0), math.max(-top, 0)
  local sx, dx = math.max(left, 0), math.max(-left, 0)
  local nh, nw = math.min(h - sy, ch - dy), math.min(w - sx, cw - dx)
  out:narrow(1, dy + 1, nh):narrow(2, dx + 1, nw):copy(img:narrow(1, sy + 1, nh):narrow(2, sx + 1, nw))
  return out
end

-- img: (H, W, 3) uint8 → pixel_values (1, 3, h, w) float32
function Processor:preprocess(img)
  if self.do_resize then
    local oh, ow = self:output_size(img:size(1), img:size(2))
    img = image.resize_torch(img, oh, ow, self.resample)
  end
  if self.do_center_crop then
    img = center_crop(img, self.crop_size.height, self.crop_size.width)
  end
  local x = image.to_chw(img)
  if self.do_normalize then
    -- with rescale, fused as (x - mean / factor) / (std / factor): float32
    -- mean and std times float32(1 / factor), as torch computes them
    local c = x:size(2)
    local mean = T.from_table(self.image_mean):reshape(1, c, 1, 1)
    local std = T.from_table(self.image_std):reshape(1, c, 1, 1)
    if self.do_rescale then
      mean:mul_(1 / self.rescale_factor)
      std:mul_(1 / self.rescale_factor)
    end
    x = (x - mean) / std
  elseif self.do_rescale then
    x:mul_(self.rescale_factor)
  end
  return x
end

return M
