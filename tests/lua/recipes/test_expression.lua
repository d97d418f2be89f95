-- test_expression — a test-only referring recipe: the first colour word of
-- the expression (red, green, blue) names the pure colour it segments, so
-- the referring evaluation can be checked end to end without models.
local T = require("fmseg.tensor")

local recipe = { name = "test_expression", referring = true, defaults = {} }
local COLOURS = { red = { 255, 0, 0 }, green = { 0, 255, 0 }, blue = { 0, 0, 255 } }

function recipe.segment(_, img, _, source)
  local colour
  for word in ((source and source.expression) or ""):gmatch("%a+") do
    colour = colour or COLOURS[word]
  end
  local h, w = img:size(1), img:size(2)
  local out = T.zeros({ h, w }, "uint8")
  if colour then
    local ip, op = img:contiguous():ptr(), out:ptr()
    for k = 0, h * w - 1 do
      if ip[3 * k] == colour[1] and ip[3 * k + 1] == colour[2] and ip[3 * k + 2] == colour[3] then op[k] = 1 end
    end
  end
  return { kind = "instances", masks = { out }, scores = { 1 } }
end

return recipe
