-- test_oracle — a test-only one-shot recipe for the few-shot evaluation
-- (tests/lua/test_fewshot.lua): its prediction is the episode's own ground
-- truth, which the test hands over as package.loaded.test_oracle_truth
-- (a function of the episode and the size); with params.plant the error
-- tests/tools/make_fewshot_fixtures.py plants in the official run: the
-- top-left 3 x 3 block flipped in every episode of even 0-based index.
-- The references it is given are read and checked (an image and a grey
-- mask of one size) and counted.
local image = require("fmseg.image")

local recipe = { name = "test_oracle", oneshot = true, defaults = { plant = false } }

function recipe.setup(params) return { params = params, references = 0, sizes = {} } end

function recipe.set_reference(state, ref_image, ref_mask)
  local img, mask = image.load(ref_image), image.load(ref_mask)
  if img:size(1) ~= mask:size(1) or img:size(2) ~= mask:size(2) then
    error("test_oracle: the reference and its mask differ in size", 0)
  end
  local mp, on = mask:ptr(), 0
  for k = 0, mask:numel() - 1 do
    if mp[k] ~= 0 and mp[k] ~= 255 then error("test_oracle: the mask is not 0 / 255", 0) end
    if mp[k] ~= 0 then on = on + 1 end
  end
  state.references = state.references + 1
  state.sizes[#state.sizes + 1] = img:size(1) .. "x" .. img:size(2)
  state.last_on = on / 3
end

function recipe.segment(state, img, _, source)
  local m = require("test_oracle_truth")(source.episode, img:size(1), img:size(2)):clone()
  if state.params.plant and (source.episode.index - 1) % 2 == 0 then
    local p, w = m:ptr(), m:size(2)
    for y = 0, 2 do
      for x = 0, 2 do p[y * w + x] = 1 - p[y * w + x] end
    end
  end
  return { kind = "instances", masks = { m }, scores = { 1 } }
end

return recipe
