-- GEM, Grounding Everything (Bousselham et al., CVPR24) — a self-self
-- attention path runs beside the last blocks of CLIP's vision tower. In
-- each of those blocks, from h = ln_1(x) of the ordinary path:
--   τ = mean_t ‖h_t‖ · d^-½   (d the head size)
--   for s in q, k, v (per head): s ← normalise(s); repeat `iterations`
--     times s ← normalise(softmax(τ s sᵀ) s); a_s = softmax(τ s sᵀ)
--   gem = out_proj((a_q v + a_k v + a_v v) / 3)
--   x_gem ← x_gem + gem (no FFN), x_gem starting as the first such block's
--   input; the ordinary path x runs the blocks unchanged and feeds ln_1.
-- Patch features are ln_post(x_gem) · proj; per-query maps are min-max
-- normalised over the image. Position embeddings are resampled with
-- antialiased bicubic (timm's resample_abs_pos_embed).
-- ref: WalBouss/GEM gem/gem_utils.py (SelfSelfAttention, GEMResidualBlock,
--      modified_vit_forward) and gem/gem_wrapper.py (depth 7: the last 6
--      blocks; "a photo of a {}."; min_max).
-- GEM publishes no benchmark protocol. The configs run it as ClearCLIP's
-- code does (mc-lan/ClearCLIP clearclip_segmentor.py, model_type 'GEM', its
-- copy of GEM's code): ignore_residual (residual = false: the last block's
-- GEM attention alone), 80 ImageNet templates, no min-max, its
-- SegDataPreProcessor's mean/std, short side 448, crop 448 / stride 224,
-- logit scale 50, prob_thd per dataset. The defaults here are GEM's own
-- (GEMWrapper: residual, "a photo of a {}.", min-max); with sliding windows
-- the min-max is taken over the blended map at the image's size (GEMWrapper
-- takes it over each forward's output: the same for a whole image).
-- Checked end to end against both: tests/fixtures/methods/gem-wrapper and
-- gem-clearclip-* (tests/tools/methods/gem_family.py).
local clipseg = require("fmseg.method.clipseg")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local recipe = {
  name = "gem",
  needs = { "clip" },
  defaults = clipseg.defaults({
    logit_scale = 50, prob_thd = 0.0, slide_crop = 448, slide_stride = 224, pad_multiple = "patch",
    short_side = 448, templates = "photo", gem_depth = 7, ss_attn_iter = 1, ss_attn_temp = false,
    residual = true, minmax = true,
  }),
}

-- (T, C) → (T, C) with each head's slice L2-normalised
local function normalize_heads(s, heads)
  local t, c = s:size(1), s:size(2)
  return nn.normalize(s:reshape(t, heads, c / heads)):reshape(t, c)
end

local function batch1(t) return t:reshape(1, t:size(1), t:size(2)) end

-- One block's GEM attention for one image: h (T, C) = ln_1 of the ordinary
-- path, q, k, v (T, C) → (T, C) before out_proj.
function recipe.self_self(block, h, q, k, v, iterations, temp)
  local heads = block.heads
  local tau = temp or h:norm(2):mean() / math.sqrt(h:size(2) / heads)   -- mean token norm · d^-½
  local function attend(a, b) return block:attend(batch1(a), batch1(a), batch1(b), { scale = tau }):select(1, 1) end
  local function path(s)
    s = normalize_heads(s, heads)
    for _ = 1, iterations do s = normalize_heads(attend(s, s), heads) end   -- s ← softmax(τ s sᵀ) s
    return attend(s, v)                                                      -- softmax(τ s sᵀ) v
  end
  return path(v):add_(path(k)):add_(path(q)):div_(3)
end

-- x: (B, T, C) tokens entering the GEM blocks → (B, T, C) x_gem after them
function recipe.gem_path(blocks, x, params)
  local iterations = params.ss_attn_iter
  local temp = params.ss_attn_temp or nil
  local x_gem = x
  for _, block in ipairs(blocks) do
    local h = block:ln1(x)
    local q, k, v = block:qkv(h)
    local rows = {}
    for b = 1, x:size(1) do
      rows[b] = recipe.self_self(block, h:select(1, b), q:select(1, b), k:select(1, b), v:select(1, b),
                                 iterations, temp)
    end
    local gem = block:out_proj(T.stack(rows, 1))
    x_gem = params.residual and (x_gem + gem) or gem
    x = block:forward(x)                                                -- the ordinary path
  end
  return x_gem
end

-- How many of the last blocks get the GEM path (GEMWrapper: depth - 1).
function recipe.gem_blocks(model, params)
  local n = #model.vision.layers
  local k = math.min(params.gem_depth - 1, n)
  local out = {}
  for i = n - k + 1, n do out[#out + 1] = model.vision.layers[i] end
  return out
end

function recipe.dense(state, x)
  local model, params = state.model, state.params
  local blocks = recipe.gem_blocks(model, params)
  local tokens = clipseg.tokens_before(model, x, #blocks, { antialias_positions = true })
  local p = model.vision.config.patch_size
  local y = recipe.gem_path(blocks, tokens, params)
  return clipseg.head_patches(model, y), math.floor(x:size(3) / p), math.floor(x:size(4) / p)
end

-- GEMWrapper.min_max: each query's map rescaled to [0, 1] over the image
function recipe.calibrate(state, scores)
  if not state.params.minmax then return scores end
  local q = scores:size(1)
  local flat = scores:reshape(q, scores:size(2) * scores:size(3))
  local lo, hi = flat:min(2, true), flat:max(2, true)
  return ((flat - lo) / (hi - lo):maximum(1e-12)):reshape(scores:shape())   -- guard: a flat map
end

function recipe.setup(params, models, classes)
  return clipseg.setup(params, models.clip, classes, { dense = recipe.dense, calibrate = recipe.calibrate })
end

recipe.segment = clipseg.segment

return recipe
