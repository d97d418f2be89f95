-- `fmseg amg --model DIR IMAGE -o masks.json [--overlay FILE] [--points-per-side N] ...`:
-- SAM's automatic mask generator on one image. Writes the mask records as
-- a JSON list (segment-anything's scripts/amg.py --convert-to-rle format:
-- segmentation as COCO RLE, area, bbox XYWH, predicted_iou, point_coords,
-- stability_score, crop_box; --output-mode uncompressed_rle: counts as a
-- list) and optionally an overlay of every mask. --output-mode binary_mask
-- makes -o a directory as scripts/amg.py writes it without
-- --convert-to-rle: <i>.png (the mask x 255) and metadata.csv.
-- Every generator setting is an option: --points-per-side 16,
-- --pred-iou-thresh 0.86, --crop-n-layers 1, --min-mask-region-area 100...
-- A SAM 2 model (by its config.json) runs SAM 2's generator, with its
-- defaults and --use-m2m, --single-mask.
local args = require("fmseg.cli.args")
local amg = require("fmseg.sam.amg")

local M = {}

local USAGE = "amg --model DIR IMAGE -o MASKS.json [--overlay FILE] [--points-per-side N] [--SETTING VALUE ...]"

local OPTIONS = {
  { "--model", metavar = "DIR", required = true,
    help = "SAM or SAM 2 model directory, or a hub id in the cache (fmseg fetch)" },
  { "-o", "--output", metavar = "MASKS.json", help = "the mask records (binary_mask: a directory)" },
  { "--overlay", metavar = "FILE", help = "every mask drawn over the image (PNG or JPEG)" },
  { "--output-mode", metavar = "MODE", choices = { "coco_rle", "uncompressed_rle", "binary_mask" },
    default = "coco_rle" },
  { "--quiet", type = "flag", help = "no progress lines" },
  { "--use-m2m", type = "flag", help = "SAM 2: refine each mask once with itself as the mask prompt" },
  { "--single-mask", type = "flag", help = "SAM 2: one mask per point (multimask_output false)" },
}

-- Every numeric generator setting is an option (--points-per-side); the
-- counts must be whole, at least this.
local WHOLE = { points_per_side = 1, points_per_batch = 1, crop_n_layers = 0, crop_n_points_downscale_factor = 1 }
local SETTINGS = {}
for key, v in pairs(amg.defaults) do
  if type(v) == "number" then SETTINGS[#SETTINGS + 1] = key end
end
table.sort(SETTINGS)
for _, key in ipairs(SETTINGS) do
  local default, sam2 = amg.defaults[key], amg.sam2_defaults[key]
  OPTIONS[#OPTIONS + 1] = { "--" .. key:gsub("_", "-"), key = key, type = WHOLE[key] and "integer" or "number",
                            min = WHOLE[key], help = "default " .. tostring(default)
                              .. (sam2 ~= default and (", SAM 2 " .. tostring(sam2)) or "") }
end

local parser = args.parser("amg", USAGE, OPTIONS, { { "image", required = true } })

-- argv → { model, image, output, overlay, settings = amg.new's options
-- given }, or nil after printing the help
function M.parse(argv)
  local o = parser:parse(argv)
  if not o then return nil end
  if not o.output and not o.overlay then error("amg: give -o MASKS.json and/or --overlay FILE", 0) end
  local settings = { output_mode = o.output_mode }
  if o.quiet then settings.progress = false end
  if o.use_m2m then settings.use_m2m = true end
  if o.single_mask then settings.multimask_output = false end
  for _, key in ipairs(SETTINGS) do settings[key] = o[key] end
  return { model = o.model, image = o.image, output = o.output, overlay = o.overlay, settings = settings }
end

-- Python's repr of a float (the shortest digits that read back the same;
-- fixed notation from 1e-4 up to 1e16, else d.ddde-XX), how scripts/amg.py
-- writes metadata.csv.
local function py_float(v)
  if v ~= v then return "nan" end
  if v == math.huge then return "inf" elseif v == -math.huge then return "-inf" end
  local text
  for digits = 1, 17 do
    text = ("%." .. (digits - 1) .. "e"):format(v)
    if tonumber(text) == v then break end
  end
  local sign, mant, exp = text:match("^(-?)([%d.]+)e([-+]%d+)$")
  local ds, e = mant:gsub("%.", ""), tonumber(exp)
  if e >= -4 and e < 16 then
    local point = e + 1                           -- digits before the point
    if point <= 0 then return sign .. "0." .. ("0"):rep(-point) .. ds end
    if point >= #ds then return sign .. ds .. ("0"):rep(point - #ds) .. ".0" end
    return sign .. ds:sub(1, point) .. "." .. ds:sub(point + 1)
  end
  local m = #ds > 1 and (ds:sub(1, 1) .. "." .. ds:sub(2)) or ds
  return ("%s%se%s%02d"):format(sign, m, e < 0 and "-" or "+", math.abs(e))
end
M.py_float = py_float

-- scripts/amg.py write_masks_to_folder: DIR/<i>.png (mask x 255) and
-- DIR/metadata.csv, one row per record (0-based ids, no trailing newline)
function M.write_masks_to_folder(records, dir)
  local fs, image = require("fmseg.io.fs"), require("fmseg.image")
  fs.mkdir_p(dir)
  local rows = { "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
                 .. "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h" }
  for i, r in ipairs(records) do
    local m = r.segmentation
    image.save_png(("%s/%d.png"):format(dir, i - 1), (m:float() * 255):byte():reshape(m:size(1), m:size(2), 1))
    local cells = { tostring(i - 1), ("%d"):format(r.area) }
    for _, v in ipairs(r.bbox) do cells[#cells + 1] = ("%d"):format(v) end
    for _, v in ipairs(r.point_coords[1]) do cells[#cells + 1] = py_float(v) end
    cells[#cells + 1] = py_float(r.predicted_iou)
    cells[#cells + 1] = py_float(r.stability_score)
    for _, v in ipairs(r.crop_box) do cells[#cells + 1] = ("%d"):format(v) end
    rows[#rows + 1] = table.concat(cells, ",")
  end
  local f = assert(io.open(dir .. "/metadata.csv", "w"))
  f:write(table.concat(rows, "\n"))
  f:close()
end

function M.run(argv)
  local opts = M.parse(argv)
  if not opts then return 0 end
  local image = require("fmseg.image")
  local json = require("fmseg.io.json")
  local models = require("fmseg.models")
  local img = image.load(opts.image)
  -- SAM or SAM 2, by the directory's config.json
  local gen = amg.new(require("fmseg.sam.predictor").new(models.load("sam", opts.model)), opts.settings)
  local t0 = os.clock()
  local records = gen:generate(img)
  if opts.output and opts.settings.output_mode == "binary_mask" then
    M.write_masks_to_folder(records, opts.output)
    print(("wrote %s: %d masks (%.1f s CPU)"):format(opts.output, #records, os.clock() - t0))
  elseif opts.output then
    -- NaN stability (a mask with no logit above -offset, kept only when the
    -- filter is off) is written as null
    json.encode_file(opts.output, records, { nan = "null" })
    print(("wrote %s: %d masks (%.1f s CPU)"):format(opts.output, #records, os.clock() - t0))
  end
  if opts.overlay then
    local masks = require("fmseg.masks")
    local shown = records
    if opts.settings.output_mode == "binary_mask" then
      shown = {}
      for i, r in ipairs(records) do shown[i] = { segmentation = masks.rle_encode(r.segmentation), area = r.area } end
    end
    local out = masks.overlay(img, shown, { alpha = 0.5 })
    image.save(opts.overlay, out)
    print("wrote " .. opts.overlay)
  end
  return 0
end

M.usage = "amg --model DIR IMG -o MASKS.json [--overlay F]"
M.help = "SAM automatic mask generator: every mask of an image as COCO RLE records"

return M
