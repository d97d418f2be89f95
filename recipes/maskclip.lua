-- MaskCLIP (Zhou et al., ECCV22) — dense CLIP features from the value path
-- of the last block: query-key attention is skipped, its residual and FFN
-- kept,
--   v = out_proj(v_proj(ln_1(x))) + x,   v = v + FFN(ln_2(v)),
-- then ln_post and CLIP's projection. Optional key smoothing (ks_thresh)
-- and prompt denoising (pd_thresh) refine the patch-level scores.
-- ref: chongzhou96/MaskCLIP mmseg/models/backbones/vit.py
--      (TransformerEncoderLayer.forward with return_qkv,
--      VisionTransformer.forward with final_norm) and
--      mmseg/models/decode_heads/maskclip_head.py (MaskClipHead.forward,
--      refine_output); configs/maskclip/ for the protocol: whole image,
--      Resize to (2048, 512) keeping the ratio ((520, 520) on Context,
--      (1024, 512) on Cityscapes), mmseg's ImageNet mean/std, 85 templates.
-- Their port of the ViT (configs/_base_/models/maskclip_vit16.py) runs
-- CLIP's weights with exact GELU and LayerNorm eps 1e-6 (vit_act, vit_eps),
-- which is what the published numbers come from; the text embeddings come
-- from the original CLIP, so the text tower keeps the checkpoint's own.
-- Their PatchEmbed pads the input with zeros at the bottom and right to a
-- multiple of the patch (padding='corner'), and the score grid of the padded
-- input is resized to the unpadded size (EncoderDecoder.encode_decode):
-- pad_multiple = "corner" in fmseg.method.clipseg.
-- mmseg's inference takes the softmax of the head's scores as they are
-- (logit_scale 1); only the refinements use softmax(100 x cos)
-- (refine_scale).
-- Checked end to end against the official code: tests/fixtures/methods/
-- maskclip-*/ (tests/tools/methods/maskclip.py).
local clipseg = require("fmseg.method.clipseg")
local nn = require("fmseg.nn")

local recipe = {
  name = "maskclip",
  needs = { "clip" },
  defaults = clipseg.defaults({
    logit_scale = 1, refine_scale = 100, prob_thd = 0.0, slide_crop = 0, slide_stride = 0, pad_multiple = "corner",
    short_side = 512, long_side = 2048,
    templates = "maskclip", mean = { 123.675, 116.28, 103.53 }, std = { 58.395, 57.12, 57.375 },
    ks_thresh = 0.0, pd_thresh = 0.0, vit_act = "gelu", vit_eps = 1e-6,
  }),
}

-- x: (B, T, C) tokens entering the last block → (B, T, C) value-path
-- tokens, and the keys (B, T, C) = out_proj(k_proj(ln_1(x))) that key
-- smoothing compares (MaskCLIP passes q, k and v through out_proj alike).
function recipe.last_block(block, x)
  local h = block:ln1(x)
  local _, k, v = block:qkv(h)
  local y = block:out_proj(v):add_(x)                  -- v = out_proj(v_proj(ln_1 x)) + x
  y:add_(block:mlp(block:ln2(y)))                      -- v = v + FFN(ln_2 v)
  return y, block:out_proj(k)
end

-- MaskClipHead.refine_output on one window: cos (Q, gh, gw) cosine scores,
-- keys (1, T, C) → refined scores (Q, gh, gw).
--   prompt denoising: queries whose softmax(100 · cos) never reaches
--   pd_thresh anywhere get -100;
--   key smoothing: the scores become softmax(100 · cos) over queries, and
--   where a patch's best probability is below ks_thresh it is replaced by
--   Σ_p' (k_p · k_p') probs_p', the keys L2-normalised over the patches
--   (F.normalize's default dim=1 on (B, N, C) keys, as the official code
--   does).
function recipe.refine(state, cos, keys)
  local p = state.params
  local q, gh, gw = cos:size(1), cos:size(2), cos:size(3)
  local scale = p.refine_scale
  if p.pd_thresh > 0 then
    local best = clipseg.query_probs(cos, scale):reshape(q, gh * gw):max(2)   -- (Q)
    local drop = best:lt(p.pd_thresh):reshape(q, 1, 1)
    cos = cos * (1 - drop) + drop * -100
  end
  if p.ks_thresh > 0 and keys then
    local probs = clipseg.query_probs(cos, scale):reshape(q, gh * gw)         -- (Q, N)
    local k = keys:select(1, 1):narrow(1, 2, gh * gw)                          -- (N, C), patches
    k = nn.normalize(k:t():contiguous()):t()                                   -- over patches
    local weight = k:matmul(k, false, true)                                    -- (N, N)
    local smoothed = probs:matmul(weight, false, true)                         -- (Q, N) = (W P)ᵀ
    local low = probs:max(1, true):lt(p.ks_thresh)                             -- (1, N)
    cos = (probs * (1 - low) + smoothed * low):reshape(q, gh, gw)
  end
  return cos
end

function recipe.setup(params, models, classes)
  local model = models.clip:with_vision({ act = params.vit_act, eps = params.vit_eps })
  return clipseg.setup(params, model, classes, {
    dense = clipseg.last_block_method(recipe.last_block), refine = recipe.refine,
  })
end

recipe.segment = clipseg.segment

return recipe
