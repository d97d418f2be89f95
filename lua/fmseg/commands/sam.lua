-- `fmseg sam --model DIR IMAGE --point x,y[,label] ... --box x0,y0,x1,y1
-- [--single] -o mask.png [--overlay FILE]`: SAM masks from point and box
-- prompts in image pixels. Writes the mask with the best predicted IoU as
-- a 0/255 PNG, prints every mask's IoU prediction, and optionally an
-- overlay of that mask on the image.
local cli = require("fmseg.cli")

local M = {}

local USAGE = "sam --model DIR IMAGE --point x,y[,label] --box x0,y0,x1,y1 [--single] -o MASK.png [--overlay FILE]"

local function numbers(s, what, min, max)
  local out = {}
  for item in s:gmatch("[^,]+") do
    local v = tonumber(item)
    if not v then error(("sam: %s '%s': '%s' is not a number"):format(what, s, item), 0) end
    out[#out + 1] = v
  end
  if #out < min or #out > max then
    error(("sam: %s '%s' needs %s numbers"):format(what, s, min == max and min or (min .. " or " .. max)), 0)
  end
  return out
end

function M.parse(args)
  local opts, i = { points = {}, labels = {} }, 1
  local function value(a)
    local v = args[i + 1]
    if not v then error(("sam: %s needs a value (fmseg %s)"):format(a, USAGE), 0) end
    i = i + 2
    return v
  end
  while i <= #args do
    local a = args[i]
    if a == "--model" then
      opts.model = value(a)
    elseif a == "--point" then
      local p = numbers(value(a), "--point", 2, 3)
      opts.points[#opts.points + 1] = { p[1], p[2] }
      opts.labels[#opts.labels + 1] = p[3] or 1
    elseif a == "--box" then
      opts.box = numbers(value(a), "--box", 4, 4)
    elseif a == "-o" or a == "--output" then
      opts.output = value(a)
    elseif a == "--overlay" or a == "-overlay" then
      opts.overlay = value(a)
    elseif a == "--single" then
      opts.single = true
      i = i + 1
    elseif a:sub(1, 1) == "-" then
      error(("sam: unknown option '%s' (fmseg %s)"):format(a, USAGE), 0)
    elseif not opts.image then
      opts.image = a
      i = i + 1
    else
      error(("sam: unexpected argument '%s'"):format(a), 0)
    end
  end
  if not opts.model then error("sam: no --model given (fmseg " .. USAGE .. ")", 0) end
  if not opts.image then error("sam: no image given (fmseg " .. USAGE .. ")", 0) end
  if #opts.points == 0 and not opts.box then error("sam: give at least one --point or a --box", 0) end
  if not opts.output and not opts.overlay then error("sam: give -o MASK.png and/or --overlay FILE", 0) end
  return opts
end

-- mask (H, W) uint8 0/1 over img (H, W, 3) in SAM's demo blue
local function overlay(img, mask)
  local viz = require("fmseg.viz")
  local labels = (mask:float() - 1):int()   -- -1 background: left as it is
  return viz.overlay(img, labels, { palette = { 30, 144, 255 }, alpha = 0.6 })
end

function M.run(args)
  local opts = M.parse(args)
  local image = require("fmseg.image")
  local sam = require("fmseg.models.sam")
  local img = image.load(opts.image)
  local predictor = sam.predictor(sam.load(opts.model))
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
    if opts.overlay:lower():match("%.jpe?g$") then image.save_jpg(opts.overlay, out) else image.save_png(opts.overlay, out) end
    print("wrote " .. opts.overlay)
  end
  return 0
end

cli.command("sam", "sam --model DIR IMG --point x,y[,l] --box ... -o M.png",
            "SAM masks from point/box prompts: best mask as PNG, IoU scores", M.run)

return M
