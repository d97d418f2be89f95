-- SCLIP (Wang et al., ECCV24) — correlative self-attention in CLIP's last
-- block: queries attend to queries and keys to keys, and the two maps are
-- added,  CSA(x) = out_proj((softmax(q qᵀ/√d) + softmax(k kᵀ/√d)) v),
-- with the block's residuals and FFN kept.
-- ref: wangf3014/SCLIP clip/model.py (VisionTransformer.forward,
--      custom_attn with csa=True); clip_segmentor.py and configs/ for the
--      protocol (logit scale 40, crop 224 / stride 112, short side 336).
-- As clip_segmentor.py: pixels normalised with its 122.771 / 68.501 ...
-- (not openai's unrounded values); whole-image inference (slide_crop = 0)
-- upsamples the patch scores once, straight to the image's size; PAMR
-- (pamr_steps > 0) only runs with the sliding window there, so whole-image
-- PAMR is refused rather than silently dropped.
-- Checked end to end against the official code (wangf3014/SCLIP b56bd30)
-- by tests/fixtures/methods/sclip-* (tests/tools/methods/sclip_family.py):
-- logits within 3e-6 relative (2e-5 with PAMR), labels identical.
local clipseg = require("fmseg.method.clipseg")

local recipe = {
  name = "sclip",
  needs = { "clip" },
  defaults = clipseg.defaults({
    mean = clipseg.CLIP_MEAN_255, std = clipseg.CLIP_STD_255,
    logit_scale = 40, prob_thd = 0.0, area_thd = 0, slide_crop = 224, slide_stride = 112,
    short_side = 336, pamr_steps = 0, pamr_dilations = { 8, 16 },
  }),
}

-- x: (B, T, C) tokens entering the last block → (B, T, C)
function recipe.last_block(block, x)
  local q, k, v = block:qkv(block:ln1(x))
  local csa = block:attend(q, q, v):add_(block:attend(k, k, v))   -- (softmax(q qᵀ) + softmax(k kᵀ)) v
  local y = x + block:out_proj(csa)                                -- x = x + CSA(ln_1(x))
  return y:add_(block:mlp(block:ln2(y)))                           -- x = x + mlp(ln_2(x))
end

function recipe.setup(params, models, classes)
  if (params.slide_crop or 0) <= 0 and (params.pamr_steps or 0) > 0 then
    error("sclip: SCLIP's code runs PAMR only with the sliding window; set slide_crop or pamr_steps: 0", 0)
  end
  local dense = clipseg.last_block_method(recipe.last_block, clipseg.SCLIP_POSITIONS)
  return clipseg.setup(params, models.clip, classes, { dense = dense, whole_to_image = true })
end

recipe.segment = clipseg.segment

return recipe
