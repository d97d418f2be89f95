-- fmseg.viz — what a person looks at: palettes, label PNGs, overlays with
-- a legend of class names.
local core = require("fmseg.core")
local T = require("fmseg.tensor")
local image = require("fmseg.image")
local ffi, C, check = core.ffi, core.C, core.check

local M = {}

-- PASCAL VOC's palette: colour bits of the label interleaved over R, G, B.
-- Flat {r, g, b, ...} for labels 0..n-1.
function M.voc_palette(n)
  n = n or 256
  local out = {}
  for label = 0, n - 1 do
    local r, g, b, c = 0, 0, 0, label
    for j = 7, 0, -1 do
      r = bit.bor(r, bit.lshift(bit.band(c, 1), j))
      g = bit.bor(g, bit.lshift(bit.band(bit.rshift(c, 1), 1), j))
      b = bit.bor(b, bit.lshift(bit.band(bit.rshift(c, 2), 1), j))
      c = bit.rshift(c, 3)
    end
    out[#out + 1], out[#out + 2], out[#out + 3] = r, g, b
  end
  return out
end

local function cpalette(palette)
  local buf = ffi.new("uint8_t[?]", #palette)
  for i = 1, #palette do buf[i - 1] = palette[i] end
  return buf, math.floor(#palette / 3)
end

-- labels (H, W) → palette PNG (ignored/unlabelled values keep their index)
function M.save_labels(path, labels, palette)
  image.save_palette_png(path, labels, palette or M.voc_palette(256))
end

-- img (H, W, 3) uint8, labels (H, W) → a new image: colours blended over
-- the picture, and a legend band below listing `names` present in labels.
-- opts.alpha (0.5), opts.names ({[label] = "name"} 0-based labels),
-- opts.present (set of labels to list; default: those in labels).
function M.overlay(img, labels, opts)
  opts = opts or {}
  local palette = opts.palette or M.voc_palette(256)
  local buf, n = cpalette(palette)
  local h, w = img:size(1), img:size(2)
  local lab = labels:dtype() == "int32" and labels or labels:int()
  lab = lab:is_contiguous() and lab or lab:contiguous()
  local blended = img:clone()
  check(C.fm_draw_blend_labels(blended, lab, buf, n, opts.alpha or 0.5))
  if not opts.names then return blended end

  -- Which labels are present, in label order.
  local present, counts = {}, {}
  local p = lab:ptr()
  for i = 0, lab:numel() - 1 do counts[p[i]] = (counts[p[i]] or 0) + 1 end
  for label in pairs(counts) do
    if opts.names[label] then present[#present + 1] = label end
  end
  table.sort(present)
  if #present == 0 then return blended end

  -- Legend: rows of [swatch] name, wrapped to the image width.
  local scale = w >= 480 and 2 or 1
  local row_h, pad, swatch = 10 * scale, 4 * scale, 8 * scale
  local entries, x, rows = {}, pad, 1
  for _, label in ipairs(present) do
    local text = opts.names[label]
    local width = swatch + pad + tonumber(C.fm_text_width(text, scale)) + 3 * pad
    if x + width > w and x > pad then rows, x = rows + 1, pad end
    entries[#entries + 1] = { label = label, text = text, x = x, row = rows }
    x = x + width
  end
  local band = rows * (row_h + pad) + pad
  local out = T.full({ h + band, w, 3 }, 255, "uint8")
  out:narrow(1, 1, h):copy(blended)
  for _, e in ipairs(entries) do
    local y = h + pad + (e.row - 1) * (row_h + pad)
    local r, g, b = palette[3 * e.label + 1], palette[3 * e.label + 2], palette[3 * e.label + 3]
    C.fm_draw_rect(out, e.x, y, e.x + swatch, y + swatch, r or 0, g or 0, b or 0)
    C.fm_draw_text(out, e.x + swatch + pad, y, e.text, scale, 0, 0, 0)
  end
  return out
end

return M
