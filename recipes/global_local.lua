-- Global-Local CLIP (Yu et al., CVPR23) — zero-shot referring segmentation:
-- of the mask proposals, the one whose CLIP features best match the
-- expression. Each proposal m gets two visual features and the expression
-- two textual ones:
--  1. the image is resized to a short side of 800 (PIL bilinear) and
--     normalised with ImageNet's mean and std (x); x at the image's size
--     (x_o) and at CLIP's input size (x_224), both bilinear;
--  2. global (token masking): x_224 runs CLIP's vision blocks; from block
--     `masking_block` (0-based) on, the patch tokens are multiplied by m
--     resized bilinearly to the patch grid before every block; the class
--     token after ln_post and the projection is g_m;
--  3. local (masked crop): x_o with the pixels outside m set to `fill`, cut
--     to m's box and resized to CLIP's input; its image embedding is l_m;
--  4. f_m = v g_m + (1 − v) l_m (v = 0.95; 0.85 on RefCOCOg);
--  5. text: t = r t_s + (1 − r) t_p, the text embeddings of the lower-cased
--     sentence (its words split as spaCy does, joined by spaces) and of its
--     head noun phrase (fmseg.text.noun_phrase; r = 0.5);
--  6. the prediction is the proposal of the highest logit_scale · cos(f_m, t).
-- The box of m is FreeSOLO's (solov2.py, get_bbox from the mask): centres of
-- mass of m's row and column projections ± half the projections' lengths,
-- cut to integers by int(); the crop spans [x1, x2) × [y1, y2), at least one
-- pixel.
-- ref: Seonghoon-Yu/Zero-shot-RIS Our_method_with_free_solo.py (main's loop),
--      model/backbone.py (CLIPViTFM.forward, token_masking / crop,
--      calculate_score), utils.py (extract_noun_phrase),
--      data/dataset_refer_bert.py (the image pipeline),
--      freesolo/modeling/solov2/solov2.py (the boxes).
-- The official code takes its proposals from FreeSOLO; here they come from
-- the config's mask source (`regions: {recipe: sam_amg, ...}`), as
-- Pseudo-RIS reports Global-Local CLIP with SAM's masks. With no proposal
-- the prediction is empty (the official loop skips such a sentence).
-- Checked end to end against the official code by tests/fixtures/methods/
-- global_local-* (tests/tools/methods/global_local.py).
local clipseg = require("fmseg.method.clipseg")
local image = require("fmseg.image")
local nn = require("fmseg.nn")
local noun_phrase = require("fmseg.text.noun_phrase")
local T = require("fmseg.tensor")
local tokenizer = require("fmseg.text.tokenizer")

local recipe = {
  name = "global_local",
  needs = { "clip" },
  regions = true,          -- the mask proposals
  referring = true,        -- reads source.expression
  defaults = {
    v = 0.95,              -- global (token-masked) against local (crop) visual features
    r = 0.5,               -- sentence against noun phrase
    masking_block = 9,     -- first vision block (0-based) whose patch tokens are masked
    short_side = 800,      -- ReferDataset's T.Resize(800)
    mean = clipseg.IMAGENET_MEAN, std = clipseg.IMAGENET_STD,   -- its T.Normalize, on 0-1
    fill = { 0.485, 0.456, 0.406 },   -- the crops' outside pixels (the loop's pixel_mean, as normalised values)
    noun_phrases = false,  -- or a JSON file of sentence -> phrase (the official spaCy phrases)
    clip_batch = 32,       -- proposals per CLIP forward pass
  },
}

-- int() of Python: towards zero
local function trunc(v) return v < 0 and math.ceil(v) or math.floor(v) end

-- mask (H, W) uint8 → {x1, y1, x2, y2}, FreeSOLO's box: along each axis the
-- centre of mass of the projection ± half its count, int()-cut; x2 > x1.
function recipe.box(mask)
  local h, w = mask:size(1), mask:size(2)
  local cols, rows = {}, {}
  local p = mask:contiguous():ptr()
  for y = 0, h - 1 do
    for x = 0, w - 1 do
      if p[y * w + x] ~= 0 then cols[x] = true; rows[y] = true end
    end
  end
  local function extent(set, n)
    local count, sum = 0, 0
    for i = 0, n - 1 do
      if set[i] then count, sum = count + 1, sum + i end
    end
    local centre = sum / math.max(count, 1e-6)
    local lo, hi = trunc(centre - 0.5 * count), trunc(centre + 0.5 * count)
    return lo, math.max(hi, lo + 1)
  end
  local x1, x2 = extent(cols, w)
  local y1, y2 = extent(rows, h)
  return { x1, y1, math.min(x2, w), math.min(y2, h) }
end

-- The size torchvision's Resize(n) gives: the short side n, the long side
-- int(n · long / short).
function recipe.short_side_size(h, w, n)
  if h <= w then return n, math.floor(n * w / h) end
  return math.floor(n * h / w), n
end

function recipe.setup(params, models)
  local clip = models.clip
  if not clip.text then error("global_local: the CLIP model was loaded without its text tower", 0) end
  local depth = #clip.vision.layers
  local mb = params.masking_block
  if type(mb) ~= "number" or mb % 1 ~= 0 or mb < 0 or mb >= depth then
    error(("global_local: params.masking_block = %s, the vision tower has blocks 0..%d"):format(tostring(mb),
      depth - 1), 0)
  end
  for _, k in ipairs({ "v", "r" }) do
    if type(params[k]) ~= "number" then error(("global_local: params.%s must be a number"):format(k), 0) end
  end
  local phrases = params.noun_phrases and noun_phrase.load_table(params.noun_phrases) or nil
  local norm = { mean = {}, std = {} }
  for i = 1, 3 do norm.mean[i], norm.std[i] = 255 * params.mean[i], 255 * params.std[i] end
  return { params = params, clip = clip, tok = tokenizer.load(clip.path), phrases = phrases, norm = norm,
           size = clip.vision.config.image_size, noun_phrases = params.noun_phrases }
end

-- masks (N of (H, W) uint8) and x_224 (1, 3, S, S) → (N, P) global features
function recipe.global_features(state, x224, masks)
  local clip, mb = state.clip, state.params.masking_block
  local layers = clip.vision.layers
  local x = clip:encode_image(x224, { layers = mb }).last                   -- (1, 1 + g*g, C)
  local tokens = x:size(2)
  local g = math.floor(math.sqrt(tokens - 1) + 0.5)
  -- each mask to the grid on its own: a float copy of all of them at once
  -- would be N x H x W floats (120 MB for 100 masks of a COCO image)
  local small = {}
  for i, mask in ipairs(masks) do
    small[i] = nn.interpolate(mask:float():reshape(1, 1, mask:size(1), mask:size(2)), g, g, { mode = "bilinear" })
  end
  local m = T.cat(small, 1):reshape(#masks, g * g, 1)
  local zeros = T.zeros({ #masks, 1, 1 })
  for i = mb + 1, #layers do
    local cls = x:narrow(2, 1, 1) + zeros                                  -- (N, 1, C)
    local patches = x:narrow(2, 2, tokens - 1) * m                          -- (N, g*g, C)
    x = layers[i]:forward(T.cat({ cls, patches }, 2))
  end
  local ln = clip.vision.post_layernorm
  local pooled = nn.layer_norm(x:select(2, 1), ln.weight, ln.bias, clip.vision.config.layer_norm_eps)
  return nn.linear(pooled, clip.visual_projection.weight)
end

-- x_o (1, 3, H, W), mask (H, W), box → (1, 3, S, S): outside pixels `fill`,
-- cut to the box, bilinear to CLIP's input
function recipe.crop(state, xo, mask, box)
  local fill = state.params.fill
  local bh, bw = box[4] - box[2], box[3] - box[1]
  local m = mask:narrow(1, box[2] + 1, bh):narrow(2, box[1] + 1, bw):float()
  local c = xo:narrow(3, box[2] + 1, bh):narrow(4, box[1] + 1, bw) * m        -- masking, then cutting, is the same
  for ch = 1, 3 do c:select(2, ch):add_((1 - m) * fill[ch]) end
  return nn.interpolate(c, state.size, state.size, { mode = "bilinear" })
end

-- xo and masks → (N, P) local features, clip_batch crops per forward pass
function recipe.local_features(state, xo, masks)
  local parts = {}
  for first = 1, #masks, state.params.clip_batch do
    local crops = {}
    for i = first, math.min(first + state.params.clip_batch - 1, #masks) do
      crops[#crops + 1] = recipe.crop(state, xo, masks[i], recipe.box(masks[i]))
    end
    parts[#parts + 1] = state.clip:get_image_features(T.cat(crops, 1))
    collectgarbage()
  end
  return T.cat(parts, 1)
end

-- The sentence as the official loop encodes it and its noun phrase
function recipe.texts(state, expression)
  local words = noun_phrase.words(expression:lower())
  local sentence = table.concat(words, " ")
  local phrase
  if state.phrases then
    phrase = state.phrases[sentence]
    if not phrase then
      error(("global_local: sentence %q is not in noun_phrases (%s)"):format(sentence, state.noun_phrases), 0)
    end
  else
    phrase = noun_phrase.head(words)
  end
  return sentence, phrase
end

-- (2, P): the text embeddings of the sentence and of the phrase
function recipe.text_features(state, sentence, phrase)
  local rows = state.tok:encode_batch({ sentence, phrase })
  return state.clip:get_text_features(rows)
end

function recipe.segment(state, img, regions, source)
  if not regions or regions.kind ~= "instances" then
    error("global_local: needs mask proposals from `regions:` (a mask source such as sam_amg)", 0)
  end
  local expression = source and (source.raw or source.expression)
  if type(expression) ~= "string" then
    error("global_local: reads an expression (source.expression): run it on a referring dataset, or on a photo "
      .. "with `fmseg segment CONFIG IMAGE --expression TEXT`", 0)
  end
  local p = state.params
  local h, w = img:size(1), img:size(2)
  local masks = regions.masks
  local sentence, phrase = recipe.texts(state, expression)
  if #masks == 0 then
    return { kind = "instances", masks = { T.zeros({ h, w }, "uint8") }, scores = { 0 },
             dump = { sentence = sentence, noun_phrase = phrase, proposals = 0 } }
  end
  for i, m in ipairs(masks) do
    if m:size(1) ~= h or m:size(2) ~= w then
      error(("global_local: proposal %d is %dx%d, the image %dx%d"):format(i, m:size(2), m:size(1), w, h), 0)
    end
  end

  -- 1. the image pipeline
  local rh, rw = recipe.short_side_size(h, w, p.short_side)
  local x = clipseg.normalize(image.resize_pil(img, rh, rw, "bilinear"), state.norm)   -- (1, 3, rh, rw)
  local xo = nn.interpolate(x, h, w, { mode = "bilinear" })
  local x224 = nn.interpolate(x, state.size, state.size, { mode = "bilinear" })
  x:free()

  -- 2-4. visual features
  local global = recipe.global_features(state, x224, masks)
  local crop = recipe.local_features(state, xo, masks)
  local visual = global * p.v + crop * (1 - p.v)                            -- (N, P)

  -- 5. textual features
  local t = recipe.text_features(state, sentence, phrase)
  local text = t:narrow(1, 1, 1) * p.r + t:narrow(1, 2, 1) * (1 - p.r)      -- (1, P)

  -- 6. the best proposal
  local scores = state.clip:logits(visual, text):reshape(#masks)            -- exp(logit_scale) · cos
  local best, top = 1, scores:get(1)
  for i = 2, #masks do
    if scores:get(i) > top then best, top = i, scores:get(i) end
  end
  return {
    kind = "instances", masks = { masks[best] }, scores = { top },
    dump = { global = global, ["local"] = crop, visual = visual, text = text:reshape(text:size(2)), scores = scores,
             index = T.from_table({ best - 1 }, "int32"), mask = masks[best],
             sentence = sentence, noun_phrase = phrase, proposals = #masks },
  }
end

return recipe
