-- ClearCLIP (Lan et al., ECCV24) — the last block keeps only q-q
-- self-attention: no residual connection, no feed-forward network,
--   x = out_proj(softmax(q qᵀ/√d) v),  q, v from ln_1(x);
-- then ln_post and the projection as usual.
-- ref: mc-lan/ClearCLIP open_clip/transformer.py (VisionTransformer.forward
--      with ignore_residual=True, custom_attn model_type 'ClearCLIP');
--      clearclip_segmentor.py and configs/ for the protocol (logit scale
--      50, short side 448, crop 448 / stride 224, windows zero-padded to a
--      multiple of the patch size; the single word "background").
-- As clearclip_segmentor.py: pixels normalised with its 122.771 / 68.501 ...
-- (not openai's unrounded values); whole-image inference (slide_crop = 0)
-- pads nothing and upsamples the patch scores once, straight to the
-- image's size.
-- Checked end to end against the official code (mc-lan/ClearCLIP ad68a40)
-- by tests/fixtures/methods/clearclip-* (tests/tools/methods/sclip_family.py):
-- logits within 1e-6 relative, labels identical but for pixels tied to
-- 1e-5. One difference is kept: the official code runs CLIP in float16
-- (create_model(precision = 'fp16'), inputs.half()), we in float32; the
-- fixtures run it in float32 (fp16 does not run on the CPU), so its size
-- is not measured here.
local clipseg = require("fmseg.method.clipseg")

local recipe = {
  name = "clearclip",
  needs = { "clip" },
  defaults = clipseg.defaults({
    mean = clipseg.CLIP_MEAN_255, std = clipseg.CLIP_STD_255,
    logit_scale = 50, prob_thd = 0.0, slide_crop = 448, slide_stride = 224, pad_multiple = "patch",
    short_side = 448, ignore_residual = true,
  }),
}

-- x: (B, T, C) tokens entering the last block → (B, T, C).
-- ignore_residual = false is the paper's ablation: x + attn, then + FFN.
function recipe.last_block(block, x, state)
  local q, _, v = block:qkv(block:ln1(x))
  local attn = block:out_proj(block:attend(q, q, v))               -- softmax(q qᵀ) v, out_proj
  local keep_residual = state and state.params.ignore_residual == false
  if not keep_residual then return attn end
  local y = attn:add_(x)
  return y:add_(block:mlp(block:ln2(y)))
end

function recipe.setup(params, models, classes)
  local dense = clipseg.last_block_method(recipe.last_block, clipseg.SCLIP_POSITIONS)
  return clipseg.setup(params, models.clip, classes, { dense = dense, whole_to_image = true })
end

recipe.segment = clipseg.segment

return recipe
