-- fmseg.viz — what a person looks at: palettes, label PNGs, overlays with
-- a legend of class names, and line charts (mIoU per click).
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

-- Line chart ------------------------------------------------------------------------

-- Tableau's colours, as the bar charts of fmseg.eval.report use them.
local LINE_COLOURS = { { 31, 119, 180 }, { 255, 127, 14 }, { 44, 160, 44 }, { 214, 39, 40 }, { 148, 103, 189 } }

-- a 2x2 dot for every pixel of the segment (x0, y0)-(x1, y1)
local function segment(img, x0, y0, x1, y1, rgb)
  local n = math.max(math.abs(x1 - x0), math.abs(y1 - y0), 1)
  for i = 0, n do
    local x = math.floor(x0 + (x1 - x0) * i / n + 0.5)
    local y = math.floor(y0 + (y1 - y0) * i / n + 0.5)
    C.fm_draw_rect(img, x - 1, y - 1, x + 1, y + 1, rgb[1], rgb[2], rgb[3])
  end
end

-- series { {name = "...", values = {y1, y2, ...}}, ... } over x = 1, 2, ...
-- → an (H, W, 3) uint8 chart: y from opts.ymin (0) to opts.ymax (100),
-- grid lines every opts.ystep (10), opts.title, opts.xlabel, a legend.
function M.line_chart(series, opts)
  opts = opts or {}
  local ymin, ymax, ystep = opts.ymin or 0, opts.ymax or 100, opts.ystep or 10
  local n = 1
  for _, s in ipairs(series) do n = math.max(n, #s.values) end
  local left, right, top, plot_h, bottom = 44, 16, 20 + 14 * #series, 240, 36
  local step = math.max(math.floor(480 / math.max(n - 1, 1)), 8)
  local width = left + step * math.max(n - 1, 1) + right
  local img = T.full({ top + plot_h + bottom, width, 3 }, 255, "uint8")
  local y0 = top + plot_h
  local function ypix(v) return y0 - math.floor(plot_h * (v - ymin) / (ymax - ymin) + 0.5) end
  local function xpix(k) return left + (k - 1) * step end
  for v = ymin, ymax, ystep do
    local y = ypix(v)
    local c = v == ymin and 0 or 225
    C.fm_draw_rect(img, left, y, width - right, y + 1, c, c, c)
    local label = tostring(v)
    C.fm_draw_text(img, left - 6 - tonumber(C.fm_text_width(label, 1)), y - 4, label, 1, 90, 90, 90)
  end
  C.fm_draw_rect(img, left, top, left + 1, y0 + 1, 0, 0, 0)
  for k = 1, n do
    if n <= 20 or k % 5 == 0 or k == 1 then
      local label = tostring(k)
      C.fm_draw_text(img, xpix(k) - math.floor(tonumber(C.fm_text_width(label, 1)) / 2), y0 + 6, label, 1, 90, 90, 90)
    end
  end
  if opts.title then C.fm_draw_text(img, 4, 4, opts.title, 1, 0, 0, 0) end
  if opts.xlabel then
    C.fm_draw_text(img, left + math.floor((width - left - right - tonumber(C.fm_text_width(opts.xlabel, 1))) / 2),
                   y0 + 20, opts.xlabel, 1, 0, 0, 0)
  end
  for i, s in ipairs(series) do
    local col = LINE_COLOURS[(i - 1) % #LINE_COLOURS + 1]
    local ly = 18 + (i - 1) * 14
    C.fm_draw_rect(img, left, ly, left + 10, ly + 10, col[1], col[2], col[3])
    C.fm_draw_text(img, left + 16, ly + 1, s.name or ("series " .. i), 1, 0, 0, 0)
    for k = 2, #s.values do
      segment(img, xpix(k - 1), ypix(s.values[k - 1]), xpix(k), ypix(s.values[k]), col)
    end
    if #s.values == 1 then segment(img, xpix(1), ypix(s.values[1]), xpix(1), ypix(s.values[1]), col) end
  end
  return img
end

return M
