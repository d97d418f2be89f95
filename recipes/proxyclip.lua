-- ProxyCLIP (Lan et al., ECCV24) — CLIP's last block attends with proxy
-- attention taken from a vision foundation model (DINO ViT-B/8 by default;
-- DINOv2 ViT-B/14 with registers or SAM's image encoder): with F the VFM's
-- patch features, L2-normalised,
--   S = F Fᵀ,  S' = (S - beta · mean(S)) · gamma,  S' < 0 → -∞,
--   x = out_proj(softmax(S') v),  v = v_proj(ln_1(x)) on CLIP's patches,
--   bilinearly resized to the VFM's grid; no residual, no FFN.
-- The output lives on the VFM's patch grid.
-- ref: mc-lan/ProxyCLIP proxyclip_segmentor.py (forward_feature: UnNormalize
--      / Normalize to ImageNet statistics, SAM at 1024 x 1024, DINO's
--      get_intermediate_layers; forward_slide with windows padded to a
--      multiple of 56) and open_clip/transformer.py (custom_attn);
--      configs/ for the protocol (logit scale 40, crop 336 / stride 112,
--      short side 336).
-- Checked end to end against the official code (DINO ViT-B/8 proxy):
-- tests/fixtures/methods/proxyclip-dino-* (tests/tools/methods/proxyclip.py).
-- What remains: proxy similarities within a float32 step of zero fall on
-- either side of the mask as the rounding of F F^T goes (the tiny fixtures
-- hold entries of 1.8e-7 and 0.0); a flipped entry moves its row of the
-- attention. On proxyclip-dino-pad that is 6.3e-5 of the logits' range,
-- the same as the official code in float32 against itself in float64
-- (6.27e-5); labels unchanged.
local clipseg = require("fmseg.method.clipseg")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local recipe = {
  name = "proxyclip",
  needs = { "clip", "vfm" },
  defaults = clipseg.defaults({
    logit_scale = 40, prob_thd = 0.0, slide_crop = 336, slide_stride = 112, pad_multiple = 56,
    short_side = 336, beta = 1.2, gamma = 3.0,
    -- the segmentor's SegDataPreProcessor (0-255; not openai's 0-1 constants x 255)
    mean = { 122.771, 116.746, 104.094 }, std = { 68.501, 66.632, 70.323 },
    vfm_mean = clipseg.IMAGENET_MEAN, vfm_std = clipseg.IMAGENET_STD,
    unnorm_mean = clipseg.CLIP_MEAN, unnorm_std = clipseg.CLIP_STD,
  }),
}

-- x (1, 3, h, w) normalised for CLIP → the same pixels normalised for the
-- VFM. As proxyclip_segmentor.py does it: UnNormalize with openai's 0-1
-- constants (unnorm_mean / unnorm_std, clip.py's _transform), then
-- Normalize to the VFM's (mean / std, 0-1 scale). openai's constants are
-- not exactly the 0-255 normaliser's (122.771 / 68.501 ...) over 255, so
-- the VFM sees pixels off by up to ~3e-5 of the 0-1 range; the proxy
-- attention drops every entry below zero, and entries near zero flip with
-- that, so we take the same constants rather than undo our own normaliser.
function recipe.vfm_input(x, unnorm_mean, unnorm_std, mean, std)
  local c = x:size(2)
  local function v(t) return T.from_table(t):reshape(1, c, 1, 1) end
  local pixels = x * v(unnorm_std) + v(unnorm_mean)                          -- 0-1
  return (pixels - v(mean)) / v(std)
end

-- The VFM's patch features of its input xv (1, 3, h, w) → F (I*J, D), I, J.
-- DINO / DINOv2: last layer after the final norm, patch tokens (class
-- token and registers dropped); SAM: the neck's output at its fixed input
-- size (the input resized bilinearly to it).
function recipe.proxy_features(vfm, xv)
  if vfm.vision_encoder then
    local size = vfm.config.vision.image_size
    local emb = vfm:encode_image(nn.interpolate(xv, size, size, { mode = "bilinear" }))   -- (1, D, I, J)
    local d, i, j = emb:size(2), emb:size(3), emb:size(4)
    return emb:reshape(d, i * j):t():contiguous(), i, j
  end
  -- The torch.hub models ProxyCLIP loads resample positions by scale_factor
  -- (DINO, DINOv2); the DINOv2 register models by antialiased size.
  local positions = vfm.kind.antialias and {} or { position_offset = 0.1 }
  local out = vfm:encode_image(xv, positions)
  local tokens = out.last_hidden_state:select(1, 1)                         -- (T, D)
  local n = tokens:size(1) - vfm.num_prefix_tokens
  return tokens:narrow(1, vfm.num_prefix_tokens + 1, n):contiguous(), out.grid[1], out.grid[2]
end

-- F (N, D) → S = F̂ F̂ᵀ (N, N), F̂ the L2-normalised rows
function recipe.proxy_similarity(feats)
  local f = nn.normalize(feats)
  return f:matmul(f, false, true)
end

-- S (N, N) → the proxy attention, in place: softmax over each row of
-- S' = (S - beta · mean) · gamma with negative entries masked out; mean
-- is S's own unless given (Trident takes it over a batch of windows).
-- (A row with no entry left, which only a mean above 1/beta can cause,
-- comes out as zeros where PyTorch would give NaN.)
function recipe.proxy_softmax(s, beta, gamma, mean)
  s:sub_(beta * (mean or s:mean())):mul_(gamma)                             -- (S - beta · mean(S)) · gamma
  local keep = s:ge(0)                                                      -- S' < 0 → -inf
  s:sub_(s:max(2, true)):exp_():mul_(keep)
  return s:div_(s:sum(2, true):maximum(1e-30))
end

-- F (N, D) → the proxy attention (N, N) of S = F̂ F̂ᵀ
function recipe.proxy_attention(feats, beta, gamma)
  return recipe.proxy_softmax(recipe.proxy_similarity(feats), beta, gamma)
end

-- x: (B, T, C) tokens entering CLIP's last block on a gh x gw grid, attn
-- (N, N) on the VFM's I x J grid → (B, N, C)
function recipe.last_block(block, x, attn, grid, proxy_grid)
  local gh, gw, i, j = grid[1], grid[2], proxy_grid[1], proxy_grid[2]
  local b, c = x:size(1), x:size(3)
  local h = block:ln1(x)
  local v = nn.linear(h, block.value.weight, block.value.bias)             -- v_proj(ln_1(x))
  local patches = v:narrow(2, 2, gh * gw):reshape(b, gh, gw, c):permute(1, 4, 2, 3):contiguous()
  local resized = nn.interpolate(patches, i, j, { mode = "bilinear" })      -- to the proxy grid
  local vp = resized:reshape(b, c, i * j):transpose(2, 3):contiguous()      -- (B, N, C)
  local rows = {}
  for n = 1, b do rows[n] = attn:matmul(vp:select(1, n)) end                -- softmax(S') v, every head
  return block:out_proj(T.stack(rows, 1))
end

function recipe.dense(state, x)
  local model, p = state.model, state.params
  local xv = recipe.vfm_input(x, p.unnorm_mean, p.unnorm_std, p.vfm_mean, p.vfm_std)
  local feats, i, j = recipe.proxy_features(state.vfm, xv)
  local attn = recipe.proxy_attention(feats, p.beta, p.gamma)
  local blocks = model.vision.layers
  local patch = model.vision.config.patch_size
  local grid = { math.floor(x:size(3) / patch), math.floor(x:size(4) / patch) }
  local tokens = clipseg.tokens_before(model, x, 1, clipseg.SCLIP_POSITIONS)   -- open_clip's resampling
  local y = recipe.last_block(blocks[#blocks], tokens, attn, grid, { i, j })
  attn:free()
  local out = model:head(y):select(1, 1):contiguous()                       -- no class token here
  return out, i, j
end

function recipe.setup(params, models, classes)
  local state = clipseg.setup(params, models.clip, classes, { dense = recipe.dense })
  state.vfm = models.vfm
  return state
end

recipe.segment = clipseg.segment

return recipe
