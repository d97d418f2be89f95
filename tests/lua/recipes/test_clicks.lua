-- test_clicks — a test-only interactive recipe that reads the object from
-- the image, so the interactive evaluation can be checked end to end
-- without model weights: the object is the pure red pixels (255, 0, 0);
-- `hole` = {y0, x0, y1, x1} (0-based, end-exclusive) is left out of every
-- prediction until a click lands in it (a planted error whose NoC the
-- protocol defines).
local T = require("fmseg.tensor")

local recipe = {
  name = "test_clicks",
  interactive = true,
  defaults = { hole = false },
}

function recipe.setup(params) return { params = params } end

function recipe.embed(state, img)
  local h, w = img:size(1), img:size(2)
  local obj = T.zeros({ h, w }, "uint8")
  local ip, op = img:contiguous():ptr(), obj:ptr()
  for i = 0, h * w - 1 do
    op[i] = (ip[3 * i] == 255 and ip[3 * i + 1] == 0 and ip[3 * i + 2] == 0) and 1 or 0
  end
  state.object, state.embeds = obj, (state.embeds or 0) + 1
end

function recipe.reset(state) state.resets = (state.resets or 0) + 1 end

function recipe.predict(state, clicks)
  local hole = state.params.hole
  local out = state.object:clone()
  if hole then
    local found = false
    for _, c in ipairs(clicks) do
      if c.y >= hole[1] and c.y < hole[3] and c.x >= hole[2] and c.x < hole[4] then found = true end
    end
    if not found then out:narrow(1, hole[1] + 1, hole[3] - hole[1]):narrow(2, hole[2] + 1, hole[4] - hole[2]):fill(0) end
  end
  return out
end

function recipe.segment() error("test_clicks is interactive", 0) end

return recipe
