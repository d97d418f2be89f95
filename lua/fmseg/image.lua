-- fmseg.image — decode, write and convert images.
-- Images are (H, W, 3) uint8 tensors; model inputs are (1, 3, H, W) float32.
local core = require("fmseg.core")
local T = require("fmseg.tensor")
local C, check = core.C, core.check

local M = {}

function M.load(path) return T.wrap(C.fm_image_load(path)) end

-- (H, W) uint8 indices of an 8-bit palette PNG (or grey levels)
function M.load_indices(path) return T.wrap(C.fm_image_load_indices(path)) end

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

return M
