-- Trident (Shi, Dong, Xu, ICCV25) — CLIP's features of sub-images, each
-- window's last block attending with a VFM's (DINO's) similarities as
-- ProxyCLIP's, spliced into one feature map of the whole image and
-- aggregated across the windows by SAM's image-encoder attention. With p
-- CLIP's patch:
--  0. x: the image resized (mmseg's Resize, short side `short_side`) and
--     normalised for CLIP; unless both sides are multiples of p, stretched
--     bilinearly so that they are (preprocess_image: the long side up to
--     the next multiple, the short one scaled with it, int, and up to a
--     multiple too; both at least slide_crop).
--  1. sub-images: the windows of slide_crop / slide_stride (mmseg's grid;
--     their edges fall on the patch grid), re-normalised for the VFM as
--     ProxyCLIP does (UnNormalize CLIP's, Normalize ImageNet's).
--  2. per window b, with F_b the VFM's patch features and h_b CLIP's tokens
--     before its last block:
--       S_b = F̂_b F̂_bᵀ,  S'_b = (S_b - beta · mean_all(S)) · gamma,  S' < 0 → -∞
--       x_b = out_proj(softmax(S'_b) v_b),  v_b = v_proj(ln_1(h_b)) on CLIP's
--       grid, bilinearly resized to the VFM's (no residual, no FFN); the
--       mean runs over every window's S at once (one batch in the code).
--  3. splice: X = the x_b, each on its window's place of the whole image's
--     grid at r times CLIP's (r = VFM grid / CLIP grid: 1 for DINO ViT-B/16,
--     2 for ViT-B/8; resized to r times CLIP's grid when the VFM's is no
--     multiple of it, r = round(VFM rows / CLIP rows)), averaged where
--     windows overlap.
--  4. SAM: the image at its own size, stretched (cv2 bilinear) to
--     multiples of p, through SAM's encoder; of its last block (`sam_layer`)
--     the attention A_h and values V_h of each head h, cut to the n tokens
--     the image covers (its size in SAM's input / SAM's patch);
--       C_h = V̂_h V̂_hᵀ,  τ_m = cos_fac · mean_{h, j} C_h[m, j]   (per row m),
--       τ < 0 → 0.6 unless refine_neg_cos,  τ > 0.9 → 0.9,
--       W = mean_h (A_h ⊙ [C_h > τ]),  rows normalised to sum 1.
--     sam_halves (Trident's Cityscapes case): the left and right halves go
--     through SAM separately, each with its own W on its half of X.
--  5. Y = W · resize(X, SAM's grid) (bilinear); features = proj(ln_post(Y)).
--  6. the cosine with the text classifier on SAM's grid, bilinearly to the
--     image, then the shared protocol (fmseg.method.clipseg): softmax of
--     logit_scale x it, synonyms by max, prob_thd → background.
-- The SAM refinement of the paper (eval.py --sam_refine) is recipes/
-- sam_refine.lua, a port of Trident's sam_refinement: the configs compose
-- it (`refine:`).
-- ref: YuHengsss/Trident trident.py (Trident.get_trident_seg, get_sam_feat,
--      get_windowed_imgs, postprocess_result), seg_utils/utils.py
--      (preprocess_image), open_clip/transformer.py (VisionTransformer.forward,
--      custom_attn, guidance_attn, get_sam_sim), segment_anything/modeling/
--      image_encoder.py (last_attn, last_v); configs/base_config.py and
--      configs/cfg_*.py for the defaults.
-- Layers and sizes come from the models, where the code fixes them for
-- ViT-B/16 with SAM ViT-B: CLIP's patch (clip_stride, from the model name),
-- SAM's patch and grid (16 and 64), SAM's heads (12 for vit_b, 16 for
-- vit_l / vit_h), SAM's last block.
-- Checked end to end against the official code (a93b346) by
-- tests/fixtures/methods/trident-* (tests/tools/methods/trident.py): the
-- VOC21 and Cityscapes settings, and DINO ViT-B/8's grid with the SAM
-- refinement composed; labels identical. What remains is float32 noise at
-- the method's two cuts: SAM's value similarities within 1e-6 of their
-- row's τ (136 to 614 entries per fixture, some exactly on it) and DINO's
-- S' near 0 fall on either side as the rounding goes, and a flipped entry
-- moves its row of W. On trident-voc that is 1.3e-5 of the logits' range
-- against the official code in float32 and in float64 alike (which differ
-- by 5.2e-6 from each other); on trident-city 1.4e-5 (official float32
-- against float64: 1.5e-5); refined scores of trident-dino8-refine 7e-6.
-- Differences:
-- - the official code pads each window to a multiple of 56
--   (compute_padsize), then cannot splice a padded window's features (a
--   shape error), so only windows of multiples of 56 (336, 224) run there;
--   here windows are never padded.
-- - Trident merges synonyms by taking every query but the last C - 1 as
--   background; its class files give synonyms to the background only,
--   where that is the same as clipseg's max over each class's synonyms.
-- - float32 where the code runs CLIP, DINO and SAM's encoder in float16.
-- - its refinement prompts SAM's embedding of the image stretched to
--   multiples of p; sam_refine embeds the image itself (the same where the
--   sides are multiples of p, as in trident-dino8-refine).
local clipseg = require("fmseg.method.clipseg")
local image = require("fmseg.image")
local nn = require("fmseg.nn")
local predictor = require("fmseg.sam.predictor")
local recipes = require("fmseg.method.recipes")
local T = require("fmseg.tensor")

local proxyclip = recipes.load("proxyclip")

local recipe = {
  name = "trident",
  needs = { "clip", "vfm", "sam" },
  defaults = clipseg.defaults({
    -- trident.py's arguments, with configs/base_config.py's values
    logit_scale = 40, prob_thd = 0.0,
    beta = 1.2, gamma = 3.0,                     -- the proxy attention's, as ProxyCLIP's
    slide_crop = 336, slide_stride = 224,        -- base_config.py (trident.py alone: stride 112)
    cos_fac = 1.2,                               -- τ = cos_fac x the mean SAM value similarity
    refine_neg_cos = true,                       -- false: a negative τ becomes 0.6
    sam_halves = false,                          -- dataset_type 'CityscapesDataset': SAM per half
    sam_layer = false,                           -- false: SAM's last block (image_encoder.py's last_attn)
    pamr_steps = 0, pamr_dilations = { 8, 16 },  -- pamr_steps, pamr_stride
    short_side = 448,                            -- the configs' Resize (2048, 448): VOC21, COCO
    -- the segmentor's SegDataPreProcessor (0-255), and the VFM's input
    mean = clipseg.CLIP_MEAN_255, std = clipseg.CLIP_STD_255,
    vfm_mean = clipseg.IMAGENET_MEAN, vfm_std = clipseg.IMAGENET_STD,
    unnorm_mean = clipseg.CLIP_MEAN, unnorm_std = clipseg.CLIP_STD,
  }),
}
-- not Trident's: no area filter; windows are not padded (see above)
recipe.defaults.area_thd, recipe.defaults.pad_multiple = nil, nil

-- get_sam_sim's fixed bounds of τ
local NEG_COS_THRESH, MAX_COS_THRESH = 0.6, 0.9


-- ---- 0. the input -------------------------------------------------------------------------

-- x (1, 3, h, w) → as preprocess_image(x, p, crop) makes it: unchanged when
-- both sides are multiples of p, else bilinearly to the long side's next
-- multiple of p, the short side scaled with it and rounded up to one, both
-- at least crop.
function recipe.fit_to_patch(x, p, crop)
  local h, w = x:size(3), x:size(4)
  if h % p == 0 and w % p == 0 then return x end
  local long = math.max(h, w)
  local dst = long % p == 0 and long or (math.floor(long / p) + 1) * p
  local function up(v)
    v = math.floor(v * dst / long)
    return math.max(v % p == 0 and v or (math.floor(v / p) + 1) * p, crop)
  end
  return nn.interpolate(x, up(h), up(w), { mode = "bilinear" })
end

-- ---- 1.-3. the windows and the splice ------------------------------------------------------------

-- The windows' features, each the proxy-attended last block on the VFM's
-- grid: x (1, 3, H, W) → { {box = {y1, x1, y2, x2}, y = (fh*fw, C), grid =
-- {fh, fw}, clip_grid = {gh, gw}}, ... }
function recipe.window_features(state, x)
  local p, model = state.trident, state.model
  local patch = state.patch_size
  local wins = clipseg.windows(x:size(3), x:size(4), p.slide_crop, p.slide_stride)
  local out, total, count = {}, 0, 0
  for i, box in ipairs(wins) do
    local win = x:narrow(3, box[1] + 1, box[3] - box[1]):narrow(4, box[2] + 1, box[4] - box[2]):contiguous()
    local xv = proxyclip.vfm_input(win, p.unnorm_mean, p.unnorm_std, p.vfm_mean, p.vfm_std)
    local feats, fh, fw = proxyclip.proxy_features(state.vfm, xv)
    local s = proxyclip.proxy_similarity(feats)                            -- S_b
    total, count = total + s:sum(), count + s:numel()
    out[i] = { box = box, win = win, s = s, grid = { fh, fw },
               clip_grid = { win:size(3) / patch, win:size(4) / patch } }
  end
  local mean = total / count                                               -- over every window's S
  local blocks = model.vision.layers
  for _, o in ipairs(out) do
    local attn = proxyclip.proxy_softmax(o.s, p.beta, p.gamma, mean)
    local tokens = clipseg.tokens_before(model, o.win, 1, clipseg.SCLIP_POSITIONS)
    o.y = proxyclip.last_block(blocks[#blocks], tokens, attn, o.clip_grid, o.grid):select(1, 1)
    attn:free(); tokens:free()
    o.s, o.win = nil, nil
  end
  return out
end

-- guidance_attn's splice: windows (window_features) of an input whose CLIP
-- grid is gh x gw → X (C, r·gh, r·gw), r
function recipe.splice(windows, gh, gw, patch)
  local first = windows[1]
  local fh, fw = first.grid[1], first.grid[2]
  local th, tw = first.clip_grid[1], first.clip_grid[2]
  local r = fw % tw == 0 and fw / tw or image.round_half_even(fh / th)
  if r < 1 then
    error(("trident: the VFM's %dx%d grid is under half of CLIP's %dx%d per window"):format(fh, fw, th, tw), 0)
  end
  local c = first.y:size(2)
  local sum, count = T.zeros({ c, r * gh, r * gw }), T.zeros({ 1, r * gh, r * gw })
  for _, o in ipairs(windows) do
    local v = o.y:t():contiguous():reshape(1, c, fh, fw)
    if fh ~= r * th or fw ~= r * tw then v = nn.interpolate(v, r * th, r * tw, { mode = "bilinear" }) end
    local y1, x1 = r * o.box[1] / patch, r * o.box[2] / patch
    local region = sum:narrow(2, y1 + 1, r * th):narrow(3, x1 + 1, r * tw)
    region:copy(region + v:select(1, 1))
    local seen = count:narrow(2, y1 + 1, r * th):narrow(3, x1 + 1, r * tw)
    seen:copy(seen + 1)
  end
  return sum:div_(count), r
end

-- ---- 4. SAM's attention ---------------------------------------------------------------------------

-- img (h, w, 3) uint8 → SAM's attention and values of the tokens it covers:
-- { probs = (heads, n, n), v = (n, C), grid = {vh, vw} }
function recipe.sam_attention(sam, proc, img, layer)
  local x, resized = proc:preprocess(img)
  local emb, _, kept = sam:encode_image(x, { attention = layer })
  emb:free(); x:free()
  local cfg = sam.config.vision
  local g1, g2 = kept.grid[1], kept.grid[2]
  local vh, vw = math.floor(resized[1] / cfg.patch_size), math.floor(resized[2] / cfg.patch_size)
  local heads, c = cfg.num_attention_heads, kept.v:size(3)
  local probs = kept.probs:reshape(heads, g1, g2, g1, g2)
  probs = probs:narrow(2, 1, vh):narrow(3, 1, vw):narrow(4, 1, vh):narrow(5, 1, vw):contiguous()
  kept.probs:free()
  local v = kept.v:reshape(g1, g2, c):narrow(1, 1, vh):narrow(2, 1, vw):contiguous()
  kept.v:free()
  return { probs = probs:reshape(heads, vh * vw, vh * vw), v = v:reshape(vh * vw, c), grid = { vh, vw } }
end

-- get_sam_sim: att (sam_attention's) → W (n, n), SAM's attention kept
-- where the values agree beyond each row's τ (step 4)
function recipe.sam_weights(att, cos_fac, refine_neg_cos)
  local heads, n, c = att.probs:size(1), att.v:size(1), att.v:size(2)
  local d = c / heads
  local vhat, tau = {}, T.zeros({ n, 1 })
  for h = 1, heads do
    vhat[h] = nn.normalize(att.v:narrow(2, (h - 1) * d + 1, d))                   -- V̂_h (n, d)
    local u = vhat[h]:mean(1, true)                                             -- mean_j V̂_h[j]
    tau:add_(vhat[h]:matmul(u, false, true))                                    -- mean_j C_h[m, j]
  end
  tau:mul_(cos_fac / heads)
  if not refine_neg_cos then
    local neg = tau:lt(0)
    tau:add_((NEG_COS_THRESH - tau) * neg)
  end
  tau:minimum_(MAX_COS_THRESH)
  local w = T.zeros({ n, n })
  for h = 1, heads do
    local sim = vhat[h]:matmul(vhat[h], false, true)                            -- C_h
    local kept = sim:gt(tau):mul_(att.probs:select(1, h))
    w:add_(kept)
    sim:free(); kept:free()
  end
  w:div_(heads)
  return w:div_(w:sum(2, true))
end

-- get_trident_seg's SAM side: img (H, W, 3) stretched to multiples of p
-- (its halves with sam_halves) → { {weights = W (n, n), grid = {vh, vw}}, ... }
function recipe.sam_parts(state, img)
  local p = state.trident
  local patch = state.patch_size
  local h, w = img:size(1), img:size(2)
  local th, tw = math.ceil(h / patch) * patch, math.ceil(w / patch) * patch
  local stretched = clipseg.resize_image(img, th, tw)
  local pieces = { stretched }
  if p.sam_halves then
    local half = math.floor(tw / 2)
    pieces = { stretched:narrow(2, 1, half):contiguous(), stretched:narrow(2, half + 1, tw - half):contiguous() }
  end
  local out = {}
  for i, piece in ipairs(pieces) do
    local att = recipe.sam_attention(state.sam, state.sam_processor, piece, state.sam_layer)
    out[i] = { weights = recipe.sam_weights(att, p.cos_fac, p.refine_neg_cos), grid = att.grid }
    att.probs:free(); att.v:free()
    collectgarbage()
  end
  return out
end

-- ---- 5. aggregation --------------------------------------------------------------------------------

-- X (C, H, W) → W · resize(X, grid): (vh*vw, C)
local function aggregate(weights, x, grid)
  local c = x:size(1)
  local r = nn.interpolate(x:reshape(1, c, x:size(2), x:size(3)), grid[1], grid[2], { mode = "bilinear" })
  return weights:matmul(r:reshape(c, grid[1] * grid[2]), false, true)
end

-- x (1, 3, h, w) the prepared image (state.image its pixels) → features
-- (n, P) on SAM's grid, vh, vw
function recipe.dense(state, x)
  local model, patch = state.model, state.patch_size
  local input = recipe.fit_to_patch(x, patch, state.trident.slide_crop)
  local gh, gw = input:size(3) / patch, input:size(4) / patch
  local spliced = recipe.splice(recipe.window_features(state, input), gh, gw, patch)
  local parts = recipe.sam_parts(state, state.image)
  local y, vh, vw
  if #parts == 1 then
    y = aggregate(parts[1].weights, spliced, parts[1].grid)
    vh, vw = parts[1].grid[1], parts[1].grid[2]
  else
    -- the two halves of X, each aggregated by its own W, side by side
    local width = spliced:size(3)
    local half = math.floor(width / 2)
    local a = aggregate(parts[1].weights, spliced:narrow(3, 1, half), parts[1].grid)
    local b = aggregate(parts[2].weights, spliced:narrow(3, half + 1, width - half), parts[2].grid)
    vh, vw = parts[1].grid[1], parts[1].grid[2] + parts[2].grid[2]
    if parts[2].grid[1] ~= vh then
      error(("trident: SAM's halves have %d and %d rows"):format(vh, parts[2].grid[1]), 0)
    end
    local c = a:size(2)
    y = T.cat({ a:reshape(vh, parts[1].grid[2], c), b:reshape(vh, parts[2].grid[2], c) }, 2)
  end
  local n = vh * vw
  local out = model:head(y:reshape(1, n, y:size(y:dim()))):reshape(n, model.visual_projection.weight:size(1))
  return out, vh, vw
end

-- ---- setup ------------------------------------------------------------------------------------------

local function check_setup(params, models)
  if models.sam and models.sam.family == "sam2" then
    error("trident: models.sam is SAM 2; Trident's windows attend with a SAM ViT encoder layer "
          .. "(a SAM directory, e.g. facebook/sam-vit-base)", 0)
  end
  if not models.vfm then
    error("trident: needs models.vfm, the VFM of the windows' proxy attention (DINO ViT-B/16: "
      .. "configs/_base_/models/dino_vitb16.yaml)", 0)
  end
  if models.vfm.vfm_type ~= "vit" then
    error(("trident: models.vfm is %s; Trident's proxy is DINO (model_type vit; trident.py loads "
      .. "facebookresearch/dino's dino_vitb16)"):format(tostring(models.vfm.vfm_type or "not a VFM")), 0)
  end
  if not (models.sam and models.sam.vision_encoder) then
    error("trident: needs models.sam, SAM's image encoder (configs/_base_/models/sam_vitb.yaml)", 0)
  end
  local patch = models.clip.vision.config.patch_size
  for _, key in ipairs({ "slide_crop", "slide_stride" }) do
    local v = params[key]
    if type(v) ~= "number" or v <= 0 or v % patch ~= 0 then
      error(("trident: %s = %s must be a positive multiple of CLIP's patch %d (window edges on its grid)")
        :format(key, tostring(v), patch), 0)
    end
  end
  local layers = models.sam.vision_encoder.layers
  local layer = params.sam_layer or #layers
  if type(layer) ~= "number" or layer ~= math.floor(layer) or layer < 1 or layer > #layers then
    error(("trident: sam_layer = %s is outside SAM's blocks 1..%d"):format(tostring(params.sam_layer), #layers), 0)
  end
  if layers[layer].window_size ~= 0 then
    error(("trident: sam_layer = %d is a windowed block; its attention does not span the image"):format(layer), 0)
  end
  return layer
end

function recipe.setup(params, models, classes)
  local layer = check_setup(params, models)
  -- the windows are Trident's own, on features (steps 1-3): the shared
  -- protocol runs once over the whole image, its scores upsampled straight
  -- to the image (state.trident keeps the parameters as given)
  local protocol = {}
  for k, v in pairs(params) do protocol[k] = v end
  protocol.slide_crop = 0
  local state = clipseg.setup(protocol, models.clip, classes, { dense = recipe.dense, whole_to_image = true })
  state.trident = params
  state.vfm, state.sam, state.sam_layer = models.vfm, models.sam, layer
  state.sam_processor = predictor.new(models.sam).processor
  return state
end

-- segment(state, img): clipseg's protocol, the image's pixels at hand for
-- SAM (step 4)
function recipe.segment(state, img)
  state.image = img
  local result = clipseg.segment(state, img)
  state.image = nil
  return result
end

return recipe
