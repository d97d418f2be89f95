-- `fmseg sam --model DIR IMAGE --point x,y[,label] ... --box x0,y0,x1,y1
-- [--single] -o mask.png [--overlay FILE]`: SAM masks from point and box
-- prompts in image pixels. Writes the mask with the best predicted IoU as
-- a 0/255 PNG, prints every mask's IoU prediction, and optionally an
-- overlay of that mask on the image.
local args = require("fmseg.cli.args")

local M = {}

local USAGE = "sam --model DIR IMAGE --point x,y[,label] --box x0,y0,x1,y1 [--single] -o MASK.png [--overlay FILE]"

-- "x,y[,label]", "x0,y0,x1,y1" → a list of min..max numbers, or nil and why
local function numbers(min, max)
  return function(s)
    local out = {}
    for item in s:gmatch("[^,]+") do
      local v = tonumber(item)
      if not v then return nil, ("'%s' is not a number"):format(item) end
      out[#out + 1] = v
    end
    if #out < min or #out > max then
      return nil, ("needs %s numbers"):format(min == max and min or (min .. " or " .. max))
    end
    return out
  end
end

local parser = args.parser("sam", USAGE, {
  { "--model", metavar = "DIR", required = true, help = "SAM or SAM 2 model directory, or a hub id in the cache (fmseg fetch)" },
  { "--point", metavar = "x,y[,label]", type = numbers(2, 3), list = true,
    help = "a point in image pixels; label 1 (default) foreground, 0 background" },
  { "--box", metavar = "x0,y0,x1,y1", type = numbers(4, 4), help = "a box in image pixels" },
  { "--single", type = "flag", help = "one mask instead of three" },
  { "-o", "--output", metavar = "MASK.png", help = "the best mask, 0/255" },
  { "-overlay", "--overlay", metavar = "FILE", help = "the best mask over the image (PNG or JPEG)" },
}, { { "image", required = true } })

-- argv → { model, image, points = {{x, y}...}, labels, box, single, output,
-- overlay }, or nil after printing the help
function M.parse(argv)
  local o = parser:parse(argv)
  if not o then return nil end
  o.points, o.labels = {}, {}
  for k, p in ipairs(o.point) do
    o.points[k], o.labels[k] = { p[1], p[2] }, p[3] or 1
  end
  o.point = nil
  if #o.points == 0 and not o.box then error("sam: give at least one --point or a --box", 0) end
  if not o.output and not o.overlay then error("sam: give -o MASK.png and/or --overlay FILE", 0) end
  return o
end

-- mask (H, W) uint8 0/1 over img (H, W, 3) in SAM's demo blue
local function overlay(img, mask)
  local viz = require("fmseg.viz")
  local labels = (mask:float() - 1):int()   -- -1 background: left as it is
  return viz.overlay(img, labels, { palette = { 30, 144, 255 }, alpha = 0.6 })
end

function M.run(argv)
  local opts = M.parse(argv)
  if not opts then return 0 end
  local image = require("fmseg.image")
  local models = require("fmseg.models")
  local img = image.load(opts.image)
  -- SAM or SAM 2, by the directory's config.json
  local predictor = require("fmseg.sam.predictor").new(models.load("sam", opts.model))
  predictor:set_image(img)
  local masks, iou = predictor:predict({
    points = #opts.points > 0 and opts.points or nil,
    labels = #opts.points > 0 and opts.labels or nil,
    box = opts.box, multimask = not opts.single,
  })
  local scores = iou:values()
  local best = 1
  for k, s in ipairs(scores) do
    print(("mask %d: predicted IoU %.4f"):format(k, s))
    if s > scores[best] then best = k end
  end
  local mask = masks:select(1, best):contiguous()
  if opts.output then
    local h, w = mask:size(1), mask:size(2)
    image.save_png(opts.output, (mask:float() * 255):byte():reshape(h, w, 1))
    print(("wrote %s (mask %d)"):format(opts.output, best))
  end
  if opts.overlay then
    local out = overlay(img, mask)
    image.save(opts.overlay, out)
    print("wrote " .. opts.overlay)
  end
  return 0
end

M.usage = "sam --model DIR IMG --point x,y[,l] --box ... -o M.png"
M.help = "SAM masks from point/box prompts: best mask as PNG, IoU scores"

return M
