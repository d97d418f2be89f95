-- `fmseg amg --model DIR IMAGE -o masks.json [--overlay FILE] [--points-per-side N] ...`:
-- SAM's automatic mask generator on one image. Writes the mask records as
-- a JSON list (segment-anything's scripts/amg.py --convert-to-rle format:
-- segmentation as COCO RLE, area, bbox XYWH, predicted_iou, point_coords,
-- stability_score, crop_box) and optionally an overlay of every mask.
-- Every generator setting is an option: --points-per-side 16,
-- --pred-iou-thresh 0.86, --crop-n-layers 1, --min-mask-region-area 100...
local cli = require("fmseg.cli")
local amg = require("fmseg.sam.amg")

local M = {}

local USAGE = "amg --model DIR IMAGE -o MASKS.json [--overlay FILE] [--points-per-side N] [--SETTING VALUE ...]"

-- settings that take a number, by option name (--points-per-side)
local NUMERIC = {}
for key, v in pairs(amg.defaults) do
  if type(v) == "number" then NUMERIC["--" .. key:gsub("_", "-")] = key end
end

local function settings_help()
  local names = {}
  for opt, key in pairs(NUMERIC) do names[#names + 1] = ("%s (%s)"):format(opt, tostring(amg.defaults[key])) end
  table.sort(names)
  return table.concat(names, ", ")
end

function M.parse(args)
  local opts, settings, i = {}, { output_mode = "coco_rle" }, 1
  local function value(a)
    local v = args[i + 1]
    if not v then error(("amg: %s needs a value (fmseg %s)"):format(a, USAGE), 0) end
    i = i + 2
    return v
  end
  while i <= #args do
    local a = args[i]
    if a == "--model" then
      opts.model = value(a)
    elseif a == "-o" or a == "--output" then
      opts.output = value(a)
    elseif a == "--overlay" then
      opts.overlay = value(a)
    elseif a == "--output-mode" then
      settings.output_mode = value(a)
      if settings.output_mode ~= "coco_rle" and settings.output_mode ~= "uncompressed_rle" then
        error("amg: --output-mode is coco_rle or uncompressed_rle", 0)
      end
    elseif a == "--quiet" then
      settings.progress = false
      i = i + 1
    elseif NUMERIC[a] then
      local s = value(a)
      local v = tonumber(s)
      if not v then error(("amg: %s '%s' is not a number"):format(a, s), 0) end
      settings[NUMERIC[a]] = v
    elseif a:sub(1, 1) == "-" then
      error(("amg: unknown option '%s' (settings: %s)"):format(a, settings_help()), 0)
    elseif not opts.image then
      opts.image = a
      i = i + 1
    else
      error(("amg: unexpected argument '%s'"):format(a), 0)
    end
  end
  if not opts.model then error("amg: no --model given (fmseg " .. USAGE .. ")", 0) end
  if not opts.image then error("amg: no image given (fmseg " .. USAGE .. ")", 0) end
  if not opts.output and not opts.overlay then error("amg: give -o MASKS.json and/or --overlay FILE", 0) end
  for _, key in ipairs({ "points_per_side", "points_per_batch", "crop_n_layers", "crop_n_points_downscale_factor" }) do
    local v = settings[key]
    if v and (v % 1 ~= 0 or v < (key == "crop_n_layers" and 0 or 1)) then
      error(("amg: --%s must be a whole number%s, got %s"):format(key:gsub("_", "-"),
        key == "crop_n_layers" and "" or " >= 1", tostring(v)), 0)
    end
  end
  opts.settings = settings
  return opts
end

function M.run(args)
  local opts = M.parse(args)
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
    if opts.overlay:lower():match("%.jpe?g$") then image.save_jpg(opts.overlay, out) else image.save_png(opts.overlay, out) end
    print("wrote " .. opts.overlay)
  end
  return 0
end

cli.command("amg", "amg --model DIR IMG -o MASKS.json [--overlay F]",
            "SAM automatic mask generator: every mask of an image as COCO RLE records", M.run)

return M
