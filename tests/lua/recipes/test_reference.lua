-- test_reference — a test-only one-shot recipe: the reference's object
-- colour (the reference image's pixel at the first mask pixel) is what it
-- finds in each image, so the one-shot evaluation can be checked end to
-- end without model weights. Counts set_reference calls.
local image = require("fmseg.image")
local T = require("fmseg.tensor")

local recipe = { name = "test_reference", oneshot = true, defaults = {} }

function recipe.setup(params) return { params = params, references = 0 } end

function recipe.set_reference(state, ref_image, ref_mask)
  local img, mask = image.load(ref_image), image.load(ref_mask)
  local ip, mp = img:ptr(), mask:ptr()
  for k = 0, mask:size(1) * mask:size(2) - 1 do
    if mp[3 * k] + mp[3 * k + 1] + mp[3 * k + 2] > 0 then
      state.colour = { ip[3 * k], ip[3 * k + 1], ip[3 * k + 2] }
      break
    end
  end
  state.references = state.references + 1
end

function recipe.segment(state, img)
  local h, w = img:size(1), img:size(2)
  local out = T.zeros({ h, w }, "uint8")
  local ip, op, c = img:contiguous():ptr(), out:ptr(), state.colour
  for k = 0, h * w - 1 do
    if ip[3 * k] == c[1] and ip[3 * k + 1] == c[2] and ip[3 * k + 2] == c[3] then op[k] = 1 end
  end
  return { kind = "instances", masks = { out }, scores = { 1 } }
end

return recipe
