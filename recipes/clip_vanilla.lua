-- CLIP, unchanged — the baseline every training-free method improves on:
-- patch tokens of the ordinary last block through post_layernorm and the
-- visual projection, compared with the text classifier. The protocol
-- around it is SCLIP's (fmseg.method.clipseg), so the comparison isolates the
-- last block.
-- ref: wangf3014/SCLIP clip/model.py (VisionTransformer.forward with
--      csa=False: the plain last block) and clip_segmentor.py (the
--      protocol, and its SegDataPreProcessor's 0-255 mean/std, which are not
--      openai's 0-1 constants x 255); also sinahmr/NACLIP clip/model.py
--      (arch = 'vanilla', attn_strategy = 'vanilla'). Checked end to end:
--      tests/fixtures/methods/clip_vanilla-* (tests/tools/methods/clip_vanilla.py).
local clipseg = require("fmseg.method.clipseg")

local recipe = {
  name = "clip_vanilla",
  needs = { "clip" },
  defaults = clipseg.defaults({
    logit_scale = 40, slide_crop = 224, slide_stride = 112, short_side = 336,
    mean = { 122.771, 116.746, 104.094 }, std = { 68.501, 66.632, 70.323 },
  }),
}

-- x: (B, T, C) tokens entering the last block → (B, T, C), the reference layer
function recipe.last_block(block, x)
  return (block:forward(x))
end

function recipe.setup(params, models, classes)
  return clipseg.setup(params, models.clip, classes, { dense = clipseg.last_block_method(recipe.last_block) })
end

recipe.segment = clipseg.segment

return recipe
