-- NACLIP (Hajimiri et al., WACV25) — neighbourhood attention in a reduced
-- last block: keys attend to keys, plus a Gaussian bias ω that favours
-- each patch's spatial neighbours, and the block keeps neither its
-- residual nor its FFN:
--   x = out_proj(softmax(k kᵀ/√d + ω) v),  k, v from ln_1(x),
--   ω[p, p'] = exp(-|pos(p) - pos(p')|² / (2 σ²)) over patch positions
--   (σ = gaussian_std patches, unnormalised, 1 at p = p'), 0 on the class
--   token's row and column.
-- PAMR (10 steps, dilations 8 and 16) refines the upsampled scores.
-- ref: sinahmr/NACLIP clip/model.py (VisionTransformer.forward with
--      arch='reduced', custom_attn with attn_strategy='naclip',
--      gaussian_window, get_attention_addition); naclip.py and configs/
--      for the protocol (logit scale 40, crop 224 / stride 112, short side
--      336, whole image on VOC).
-- As naclip.py: pixels normalised with its 122.771 / 68.501 ... (not
-- openai's unrounded values); the patch scores go to the input's size and
-- then to the image's (whole image too), PAMR refines the cosine scores at
-- the image's size with the normalised input resized there as guide, and
-- the returned class probabilities are renormalised after the synonym max.
-- Checked end to end against the official code (sinahmr/NACLIP 0cac3a6)
-- by tests/fixtures/methods/naclip-* (tests/tools/methods/sclip_family.py):
-- logits within 1e-5 relative with PAMR, labels identical.
local clipseg = require("fmseg.method.clipseg")
local T = require("fmseg.tensor")

local recipe = {
  name = "naclip",
  needs = { "clip" },
  defaults = clipseg.defaults({
    mean = clipseg.CLIP_MEAN_255, std = clipseg.CLIP_STD_255,
    logit_scale = 40, prob_thd = 0.0, slide_crop = 224, slide_stride = 112, short_side = 336,
    pamr_steps = 10, pamr_dilations = { 8, 16 }, gaussian_std = 5.0, arch = "reduced",
  }),
}

-- ω for a gh x gw patch grid: (1 + gh*gw, 1 + gh*gw), tokens in CLIP's order
-- (class token first, then patches row by row).
function recipe.neighbourhood(gh, gw, std)
  local n = gh * gw + 1
  local omega = T.zeros({ n, n })
  local p = omega:ptr()
  for a = 0, gh * gw - 1 do
    local ya, xa = math.floor(a / gw), a % gw
    for b = 0, gh * gw - 1 do
      local dy, dx = ya - math.floor(b / gw), xa - b % gw
      p[(a + 1) * n + b + 1] = math.exp(-(dy * dy + dx * dx) / (2 * std * std))
    end
  end
  return omega
end

-- x: (B, T, C) tokens entering the last block, grid = {gh, gw} → (B, T, C)
function recipe.last_block(block, x, state, grid)
  local std = state and state.params.gaussian_std or recipe.defaults.gaussian_std
  local key = grid[1] .. "x" .. grid[2] .. "/" .. std
  local cache = state and state.omega or {}
  cache[key] = cache[key] or recipe.neighbourhood(grid[1], grid[2], std)
  local _, k, v = block:qkv(block:ln1(x))
  local attn = block:out_proj(block:attend(k, k, v, { mask = cache[key] }))   -- softmax(k kᵀ/√d + ω) v
  if state and state.params.arch == "vanilla" then                            -- NACLIP's ablation
    local y = attn:add_(x)
    return y:add_(block:mlp(block:ln2(y)))
  end
  return attn
end

function recipe.setup(params, models, classes)
  if params.arch ~= "reduced" and params.arch ~= "vanilla" then
    error(("naclip: arch must be 'reduced' or 'vanilla', got '%s'"):format(tostring(params.arch)), 0)
  end
  local dense = clipseg.last_block_method(recipe.last_block, clipseg.SCLIP_POSITIONS)
  local state = clipseg.setup(params, models.clip, classes, { dense = dense })
  state.omega = {}
  return state
end

-- As naclip.py's postprocess_result: the class probabilities (each the max
-- over its synonyms' probabilities) are renormalised to sum to 1 per pixel
-- after the labels are taken from them; the labels do not change.
function recipe.segment(state, img)
  local result = clipseg.segment(state, img)
  local total = result.scores:sum(1, true)
  result.scores:div_(total)
  total:free()
  return result
end

return recipe
