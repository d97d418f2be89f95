-- fmseg.eval.protocol — evaluation protocols that reshape a dataset's images
-- and labels before a recipe sees them, declared in a dataset section:
--
--   data:
--     center_crop: true     # the centred square (side min(H, W), offsets
--                           # (H - side) // 2, (W - side) // 2)
--     resize: 512           # then images tf.image.resize bilinear (half-pixel
--                           # centres, no antialias) to resize x resize, kept
--                           # as float32 in [0, 255]; labels nearest as TF
--                           # (source floor((i + 0.5) * in / out))
--
-- DiffSeg's evaluation does exactly this (google/diffseg
-- data/coco/coco_data.py, data/cityscapes/cityscapes_data.py
-- process_image): images and labels are cropped to the square, images
-- resized to 512 bilinear in float, labels nearest, and segments are scored
-- at 512x512.
--
--     short_side_crop: 224  # CLIP's preprocessing applied to the dataset:
--                           # torchvision Resize(224) (short side to 224,
--                           # long side int(224 * long / short); images PIL
--                           # bicubic, labels PIL nearest) then
--                           # CenterCrop(224) (offsets round((H - 224) / 2),
--                           # half to even), for images and labels alike
--
-- CLIPtrase's evaluation (leaves162/CLIPtrase clip_self_correlation.py,
-- get_image_and_gt: _transform1 / gt_transform) scores the centre crop
-- against the ground truth cut the same way.
local core = require("fmseg.core")
local image = require("fmseg.image")
local T = require("fmseg.tensor")
local ffi, C, check = core.ffi, core.C, core.check

local M = {}

-- spec: { center_crop = bool, resize = number or nil, short_side_crop =
-- number or nil } → true when it does anything
function M.active(spec) return spec.center_crop or spec.resize ~= nil or spec.short_side_crop ~= nil end

local function square(t)
  local h, w = t:size(1), t:size(2)
  local c = math.min(h, w)
  local y0, x0 = math.floor((h - c) / 2), math.floor((w - c) / 2)
  return t:narrow(1, y0 + 1, c):narrow(2, x0 + 1, c):contiguous()
end

-- (H, W, 3) image → the protocol's image ((S, S, 3) float32 when resized)
function M.image(img, spec)
  if spec.short_side_crop then return (image.short_side_crop(img, spec.short_side_crop, "bicubic")) end
  if spec.center_crop then img = square(img) end
  if not spec.resize then return img end
  local h, w, c = unpack(img:shape())
  local x = img:float():permute(3, 1, 2):contiguous():reshape({ 1, c, h, w })
  local out = T.new({ 1, c, spec.resize, spec.resize })
  check(C.fm_resize_bilinear_tf(out, x))
  x:free()
  local r = out:reshape({ c, spec.resize, spec.resize }):permute(2, 3, 1):contiguous()
  out:free()
  return r
end

local function f32(v) return tonumber(ffi.new("float", v)) end

-- TF's nearest source index along one axis (half_pixel_centers)
local function nearest_index(out, inn)
  local scale, idx = f32(inn / out), {}
  for i = 0, out - 1 do
    idx[i] = math.max(0, math.min(math.floor(f32((i + 0.5) * scale)), inn - 1))
  end
  return idx
end

-- (H, W) labels → the protocol's labels (same dtype)
function M.labels(lab, spec)
  if spec.short_side_crop then return (image.short_side_crop(lab, spec.short_side_crop, "nearest")) end
  if spec.center_crop then lab = square(lab) end
  if not spec.resize then return lab end
  lab = lab:contiguous()
  local h, w = lab:size(1), lab:size(2)
  local s = spec.resize
  local ys, xs = nearest_index(s, h), nearest_index(s, w)
  local out = T.new({ s, s }, lab:dtype())
  local src, dst = lab:ptr(), out:ptr()
  for y = 0, s - 1 do
    local row = ys[y] * w
    for x = 0, s - 1 do dst[y * s + x] = src[row + xs[x]] end
  end
  return out
end

return M
