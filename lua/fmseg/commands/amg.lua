-- `fmseg amg --model DIR IMAGE -o masks.json [--overlay FILE] [--points-per-side N] ...`:
-- SAM's automatic mask generator on one image. Writes the mask records as
-- a JSON list (segment-anything's scripts/amg.py --convert-to-rle format:
-- segmentation as COCO RLE, area, bbox XYWH, predicted_iou, point_coords,
-- stability_score, crop_box) and optionally an overlay of every mask.
-- Every generator setting is an option: --points-per-side 16,
-- --pred-iou-thresh 0.86, --crop-n-layers 1, --min-mask-region-area 100...
local args = require("fmseg.args")
local cli = require("fmseg.cli")
local amg = require("fmseg.sam.amg")

local M = {}

local USAGE = "amg --model DIR IMAGE -o MASKS.json [--overlay FILE] [--points-per-side N] [--SETTING VALUE ...]"

local OPTIONS = {
  { "--model", metavar = "DIR", required = true, help = "SAM model directory" },
  { "-o", "--output", metavar = "MASKS.json", help = "the mask records" },
  { "--overlay", metavar = "FILE", help = "every mask drawn over the image (PNG or JPEG)" },
  { "--output-mode", metavar = "MODE", choices = { "coco_rle", "uncompressed_rle" }, default = "coco_rle" },
  { "--quiet", type = "flag", help = "no progress lines" },
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
  OPTIONS[#OPTIONS + 1] = { "--" .. key:gsub("_", "-"), key = key, type = WHOLE[key] and "integer" or "number",
                            min = WHOLE[key], help = "default " .. tostring(amg.defaults[key]) }
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
  for _, key in ipairs(SETTINGS) do settings[key] = o[key] end
  return { model = o.model, image = o.image, output = o.output, overlay = o.overlay, settings = settings }
end

function M.run(argv)
  local opts = M.parse(argv)
  if not opts then return 0 end
  local image = require("fmseg.image")
  local json = require("fmseg.json")
  local sam = require("fmseg.models.sam")
  local img = image.load(opts.image)
  local gen = amg.new(sam.predictor(sam.load(opts.model)), opts.settings)
  local t0 = os.clock()
  local records = gen:generate(img)
  if opts.output then
    -- NaN stability (a mask with no logit above -offset, kept only when the
    -- filter is off) is written as null
    json.encode_file(opts.output, records, { nan = "null" })
    print(("wrote %s: %d masks (%.1f s CPU)"):format(opts.output, #records, os.clock() - t0))
  end
  if opts.overlay then
    local out = require("fmseg.masks").overlay(img, records, { alpha = 0.5 })
    image.save(opts.overlay, out)
    print("wrote " .. opts.overlay)
  end
  return 0
end

cli.command("amg", "amg --model DIR IMG -o MASKS.json [--overlay F]",
            "SAM automatic mask generator: every mask of an image as COCO RLE records", M.run)

return M
