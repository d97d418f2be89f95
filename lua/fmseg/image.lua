-- fmseg.image — decode, write and convert images.
-- Images are (H, W, 3) uint8 tensors; model inputs are (1, 3, H, W) float32.
local core = require("fmseg.core")
local T = require("fmseg.tensor")
local C, check = core.C, core.check

local M = {}

function M.load(path) return T.wrap(C.fm_image_load(path)) end

-- (H, W) uint8 indices of an 8-bit palette PNG (or grey levels)
function M.load_indices(path) return T.wrap(C.fm_image_load_indices(path)) end

-- (H, W) int32 values of a TIFF label map: baseline TIFF, one 8- or 16-bit
-- sample, uncompressed or PackBits (the 16-bit maps of ADE20K-Full and
-- PASCAL Context-459, 65535 unlabelled)
function M.load_tiff(path) return T.wrap(C.fm_tiff_load(path)) end

-- A label map by its file name: .tif / .tiff (any case) through load_tiff,
-- anything else as a PNG's indices.
function M.load_labels(path)
  if path:lower():match("%.tiff?$") then return M.load_tiff(path) end
  return M.load_indices(path)
end

-- (H, W) labels in [0, 65535] → an uncompressed 16-bit greyscale TIFF, as
-- PIL writes Image.fromarray(uint16_array).save(path)
function M.save_tiff16(path, labels)
  if labels:dtype() ~= "uint8" and labels:dtype() ~= "int32" then labels = labels:int() end
  check(C.fm_tiff_save_u16(path, labels:is_contiguous() and labels or labels:contiguous()))
end

local function as_u8(img)
  if img:dtype() ~= "uint8" then img = img:byte() end
  return img:is_contiguous() and img or img:contiguous()
end

function M.save_png(path, img) check(C.fm_image_save_png(path, as_u8(img))) end

function M.save_jpg(path, img, quality) check(C.fm_image_save_jpg(path, as_u8(img), quality or 90)) end

-- JPEG when path ends in .jpg / .jpeg (any case), else PNG
function M.save(path, img)
  if path:lower():match("%.jpe?g$") then M.save_jpg(path, img) else M.save_png(path, img) end
end

-- labels: (H, W) integer tensor; palette: flat {r, g, b, r, g, b, ...}
function M.save_palette_png(path, labels, palette)
  local n = math.floor(#palette / 3)
  local buf = core.ffi.new("uint8_t[?]", math.max(#palette, 3))
  for i = 1, #palette do buf[i - 1] = palette[i] end
  if labels:dtype() == "float32" then labels = labels:int() end
  check(C.fm_image_save_palette_png(path, labels:is_contiguous() and labels or labels:contiguous(), buf, n))
end

-- (H, W, 3) uint8 → (1, 3, H, W) float32 in [0, 255]
function M.to_chw(img)
  local h, w, c = unpack(img:shape())
  return img:float():permute(3, 1, 2):contiguous():reshape(1, c, h, w)
end

-- (1, 3, H, W) or (3, H, W) float32 in [0, 255] → (H, W, 3) uint8, rounded
function M.from_chw(x)
  if x:dim() == 4 then x = x:select(1, 1) end
  return x:clamp(0, 255):round():permute(2, 3, 1):contiguous():byte()
end

-- (H, W, 3) uint8 RGB → (H, W) uint8 0/1: the pixels whose fixed-point grey
-- floor((R wr + G wg + B wb + 2^(bits−1)) / 2^bits) is at least `min`, as the
-- libraries threshold mask images: PIL's convert('L') is M.PIL_GREY (ITU-R
-- 601-2 in 16 bits), OpenCV's BGR2GRAY M.CV2_GREY (14 bits).
M.PIL_GREY = { 19595, 38470, 7471, bits = 16 }
M.CV2_GREY = { 4899, 9617, 1868, bits = 14 }
function M.grey_at_least(img, weights, min)
  local h, w = img:size(1), img:size(2)
  local out = T.zeros({ h, w }, "uint8")
  local ip, op = img:contiguous():ptr(), out:ptr()
  local wr, wg, wb, half, scale = weights[1], weights[2], weights[3], 2 ^ (weights.bits - 1), 2 ^ weights.bits
  for k = 0, h * w - 1 do
    if math.floor((ip[3 * k] * wr + ip[3 * k + 1] * wg + ip[3 * k + 2] * wb + half) / scale) >= min then op[k] = 1 end
  end
  return out
end

-- PIL-style antialiased resize of an (H, W, C) uint8 image.
function M.resize_pil(img, oh, ow, mode)
  local out = T.new({ oh, ow, img:size(3) }, "uint8")
  local code = (mode or "bicubic") == "bilinear" and C.FM_BILINEAR or C.FM_BICUBIC
  check(C.fm_image_resize_pil(out, as_u8(img), code))
  return out
end

-- The same resize as torch (and so torchvision) does it on uint8 tensors:
-- PIL's algorithm with int16 coefficients; some bytes differ from PIL's.
function M.resize_torch(img, oh, ow, mode)
  local out = T.new({ oh, ow, img:size(3) }, "uint8")
  local code = (mode or "bicubic") == "bilinear" and C.FM_BILINEAR or C.FM_BICUBIC
  check(C.fm_image_resize_torch(out, as_u8(img), code))
  return out
end

-- cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR) of an (H, W, C)
-- uint8 image, bit for bit with OpenCV 4.6 (mmcv.imresize's 'bilinear').
function M.resize_cv2(img, oh, ow)
  local out = T.new({ oh, ow, img:size(3) }, "uint8")
  check(C.fm_image_resize_cv2_linear(out, as_u8(img)))
  return out
end

-- cv2.resize(lab, (ow, oh), interpolation=cv2.INTER_NEAREST) of (H, W)
-- labels of any dtype, as OpenCV 4.6's resizeNN picks sources: index
-- floor(x * (1 / (ow / w))), at most w - 1, in double (detectron2's ADE20K-Full
-- script resizes its int32 class maps so).
function M.resize_nearest_cv2(lab, oh, ow)
  lab = lab:contiguous()
  local h, w = lab:size(1), lab:size(2)
  local function index(out, inn)
    local inv, idx = 1 / (out / inn), {}
    for i = 0, out - 1 do idx[i] = math.min(math.floor(i * inv), inn - 1) end
    return idx
  end
  local ys, xs = index(oh, h), index(ow, w)
  local out = T.new({ oh, ow }, lab:dtype())
  local src, dst = lab:ptr(), out:ptr()
  for y = 0, oh - 1 do
    local row, o = ys[y] * w, y * ow
    for x = 0, ow - 1 do dst[o + x] = src[row + xs[x]] end
  end
  return out
end

-- PIL's NEAREST resize along one axis (ImagingScaleAffine: the source
-- position starts at scale / 2 and adds scale per pixel, in double,
-- truncated): the source index of each of the `out` pixels (0-based), -1
-- past the edge (PIL leaves those 0).
function M.pil_nearest_index(out, inn)
  local scale, xo, idx = inn / out, inn / out * 0.5, {}
  for i = 0, out - 1 do
    local x = math.floor(xo)
    idx[i] = (x >= 0 and x < inn) and x or -1
    xo = xo + scale
  end
  return idx
end

-- PIL's NEAREST resize of (H, W) labels (any dtype) to (oh, ow).
function M.resize_nearest_pil(lab, oh, ow)
  lab = lab:contiguous()
  local h, w = lab:size(1), lab:size(2)
  local ys, xs = M.pil_nearest_index(oh, h), M.pil_nearest_index(ow, w)
  local out = T.new({ oh, ow }, lab:dtype())
  local src, dst = lab:ptr(), out:ptr()
  for y = 0, oh - 1 do
    local row = ys[y] * w
    for x = 0, ow - 1 do
      dst[y * ow + x] = (ys[y] >= 0 and xs[x] >= 0) and src[row + xs[x]] or 0
    end
  end
  return out
end

-- Python's round() of a number: the nearest integer, halves to the even
-- one, as the reference code computes sizes and offsets with it
-- (torchvision's CenterCrop, detectron2-style resizes, Trident's grids).
function M.round_half_even(v)
  local f = math.floor(v)
  local d = v - f
  if d > 0.5 or (d == 0.5 and f % 2 == 1) then return f + 1 end
  return f
end
local round_half_even = M.round_half_even

-- torchvision Resize(n) of a PIL image of h x w: the size it resizes to, the
-- short side n and the long one int(n * long / short)
-- (transforms.functional._compute_resized_output_size)
function M.short_side_size(h, w, n)
  if h <= w then return n, math.floor(n * w / h) end
  return math.floor(n * h / w), n
end

-- torchvision's Resize(n) + CenterCrop(n) on a PIL image, CLIP's
-- preprocessing: an (H, W, 3) uint8 image resized PIL-bicubic, or (H, W)
-- labels PIL-nearest (mode "nearest"), then the centred n x n square.
-- Returns the crop and { rh, rw, top, left } (the resized size, the
-- crop's offsets in it).
function M.short_side_crop(t, n, mode)
  local h, w = t:size(1), t:size(2)
  local rh, rw = M.short_side_size(h, w, n)
  if rh ~= h or rw ~= w then
    if mode == "nearest" then t = M.resize_nearest_pil(t, rh, rw) else t = M.resize_pil(t, rh, rw, "bicubic") end
  end
  local top, left = round_half_even((rh - n) / 2), round_half_even((rw - n) / 2)
  local crop = t:narrow(1, top + 1, n):narrow(2, left + 1, n):contiguous()
  return crop, { rh = rh, rw = rw, top = top, left = left }
end

return M
