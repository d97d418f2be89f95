-- LOST (Siméoni et al., BMVC 2021): single-object discovery from the
-- patch-similarity graph of DINO keys.
-- ref: valeoai/LOST, object_discovery.py (lost, patch_scoring, detect_box)
--      and main_lost.py (last-block keys without CLS, zero padding)
--
-- A = F Fᵀ on the raw keys. A patch's degree counts its positive
-- correlations with the other patches; the seed is the patch of lowest
-- degree (objects cover less of the image than background). Among the
-- k_patches lowest-degree patches, those positively correlated with the
-- seed are kept; the map is the sum of their rows of A; the object is
-- the 4-connected component of map > 0 that holds the seed. Result: one
-- instance mask and its box (result.boxes, image pixels, pixel edges).
--
-- Patches of equal degree are ordered by index (torch.argsort, which LOST
-- calls, does not promise an order for ties).
--
-- The feature → mask step is R.lost(feats, gh, gw, params), a pure
-- function of a (gh*gw, C) matrix.
local T = require("fmseg.tensor")
local patches = require("fmseg.patches")

local R = {
  name = "lost",
  needs = { "dino" },
  -- main_lost.py's arguments and defaults
  defaults = {
    which_features = "k",   -- k, q or v of the last block
    k_patches = 100,        -- lowest-degree patches considered for expansion
    resize = false,         -- shorter side in pixels, false: full size
  },
}

-- feats (N, C), N = gh * gw → { mask (gh, gw) uint8, seed (0-based),
-- map (gh, gw) (the summed correlations), degree (gh, gw), similars (0-based
-- patch indices kept by the expansion) }
function R.lost(feats, gh, gw, params)
  local A = feats:matmul(feats, false, true)
  local n = A:size(1)
  -- patch_scoring: positive entries per row, the diagonal left out
  local positive = A:gt(0)
  local degree = positive:sum(2)
  local dp, pp = degree:ptr(), positive:ptr()
  for i = 0, n - 1 do dp[i] = dp[i] - pp[i * n + i] end
  local order = {}
  for i = 1, n do order[i] = i - 1 end
  table.sort(order, function(a, b)
    if dp[a] ~= dp[b] then return dp[a] < dp[b] end
    return a < b
  end)
  local seed = order[1]
  -- seed expansion: potentials positively correlated with the seed
  local ap = A:ptr()
  local pick = T.new({ 1, n })
  local similars = {}
  for i = 1, math.min(params.k_patches, n) do
    local j = order[i]
    if ap[seed * n + j] > 0 then
      similars[#similars + 1] = j
      pick:ptr()[j] = 1
    end
  end
  local map = pick:matmul(A):reshape(gh, gw)
  local mask = patches.component(map:gt(0):byte(), seed)
  if not mask then error("lost: the seed is in the background component", 0) end
  return { mask = mask, seed = seed, map = map, degree = degree:reshape(gh, gw), similars = similars }
end

function R.setup(params, models)
  patches.check_which_features("lost", params.which_features)
  if type(params.k_patches) ~= "number" or params.k_patches < 1 then
    error(("lost: k_patches must be a positive integer, got %s"):format(tostring(params.k_patches)), 0)
  end
  return { params = params, model = models.dino }
end

function R.segment(state, img)
  local p, model = state.params, state.model
  local x, frame = patches.input(img, model.patch_size, { fit = "pad", resize = p.resize or nil })
  local feats = patches.features(model, x, p.which_features)
  local found = R.lost(feats, frame.gh, frame.gw, p)
  return patches.object_result(found.mask, found.seed, frame, { map = found.map, degree = found.degree })
end

return R
