-- SCLIP (Wang et al., ECCV24) — correlative self-attention in CLIP's last
-- block: queries attend to queries and keys to keys, and the two maps are
-- added,  CSA(x) = out_proj((softmax(q qᵀ/√d) + softmax(k kᵀ/√d)) v),
-- with the block's residuals and FFN kept.
-- ref: wangf3014/SCLIP clip/model.py (VisionTransformer.forward,
--      custom_attn with csa=True); clip_segmentor.py and configs/ for the
--      protocol (logit scale 40, crop 224 / stride 112, short side 336).
local clipseg = require("fmseg.clipseg")

local recipe = {
  name = "sclip",
  needs = { "clip" },
  defaults = clipseg.defaults({
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
  local dense = clipseg.last_block_method(recipe.last_block, clipseg.SCLIP_POSITIONS)
  return clipseg.setup(params, models.clip, classes, { dense = dense })
end

recipe.segment = clipseg.segment

return recipe
