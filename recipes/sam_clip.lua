-- SAM's automatic masks labelled by CLIP: the survey's "CLIP as zero-shot
-- classifier" of class-agnostic mask proposals. Each mask's box is cut out
-- of the image with the pixels outside the mask set to CLIP's mean colour
-- (crop_mode = "mask"), blurred ("blur") or kept ("box"), resized to
-- CLIP's input and classified against the class prompts (the 80 ImageNet
-- templates, softmax over every synonym, synonyms of a class by max).
-- The semantic map paints masks largest first, so smaller masks stay on
-- top; pixels no mask covers get class `uncovered` (0: background).
-- The mask-crop is that of the mask-proposal classifiers of zsseg.baseline
-- and OVSeg (box crop around the mask, outside pixels filled with the mean
-- colour, bicubic resize to CLIP's input without antialiasing); the
-- automatic masks are segment-anything's (recipes/sam_amg).
-- ref: MendelXu/zsseg.baseline mask_former/modeling/clip_adapter/utils.py
--      (expand_box, crop_with_mask) and adapter.py (_preprocess_image);
--      facebookresearch/ov-seg open_vocab_seg/modeling/clip_adapter (same).
local clipseg = require("fmseg.method.clipseg")
local masks = require("fmseg.masks")
local nn = require("fmseg.nn")
local recipes = require("fmseg.method.recipes")
local T = require("fmseg.tensor")
local tokenizer = require("fmseg.text.tokenizer")

local sam_amg = recipes.load("sam_amg")

local defaults = {
  logit_scale = 100,        -- CLIP's learned temperature for ViT-B/16 (exp(4.6052))
  templates = "imagenet",
  crop_mode = "mask",       -- or "blur", "box"
  crop_expand = 1.0,        -- box scaled about its centre before cropping
  blur_factor = 16,         -- "blur": the background is the image shrunk by it and enlarged back
  prob_thd = 0.0,           -- masks whose best class probability is below it are not painted
  uncovered = 0,            -- class of pixels no (painted) mask covers
  clip_batch = 16,          -- crops per CLIP forward pass
}
for k, v in pairs(sam_amg.defaults) do defaults[k] = v end

local recipe = {
  name = "sam_clip",
  needs = { "sam", "clip" },
  defaults = defaults,
  extra_params = sam_amg.extra_params,   -- the generator's model-dependent settings
}

local CROP_MODES = { mask = true, blur = true, box = true }

-- int() of Python: towards zero
local function trunc(v) return v < 0 and math.ceil(v) or math.floor(v) end

-- The crop {x0, y0, x1, y1} (inclusive) of a record's bbox XYWH, as the
-- adapters cut it: the mask's box with exclusive ends (detectron2's
-- BitMasks boxes), scaled by `expand` about its centre, each side cut to
-- an integer by int(), clamped to the image.
function recipe.crop_box(bbox, expand, h, w)
  local x0, y0 = bbox[1], bbox[2]
  local x1, y1 = x0 + bbox[3] + 1, y0 + bbox[4] + 1      -- SAM's XYWH has w = x1 - x0, x1 inclusive
  local cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
  local bw, bh = (x1 - x0) * expand, (y1 - y0) * expand
  local l, t = math.max(trunc(cx - 0.5 * bw), 0), math.max(trunc(cy - 0.5 * bh), 0)
  local r, b = math.min(trunc(cx + 0.5 * bw), w), math.min(trunc(cy + 0.5 * bh), h)
  return { l, t, r - 1, b - 1 }
end

-- x (1, 3, H, W) normalised image, bg (1, 3, H, W) or nil (what replaces
-- the pixels outside the mask; nil = zeros, the mean colour), mask (H, W)
-- 0/1, box → (1, 3, size, size)
function recipe.crop(x, bg, mask, box, size, mode)
  local ch, cw = box[4] - box[2] + 1, box[3] - box[1] + 1
  local function cut(t) return t:narrow(t:dim() - 1, box[2] + 1, ch):narrow(t:dim(), box[1] + 1, cw) end
  local c = cut(x):clone()          -- a copy: contiguous() of a whole-image box would be x itself
  if mode ~= "box" then
    local m = cut(mask):contiguous()
    c:mul_(m)
    if bg then c:add_(cut(bg) * (1 - m)) end
  end
  return nn.interpolate(c, size, size, { mode = "bicubic" })
end

-- crops (B, 3, S, S) → (C, B) class probabilities
function recipe.classify(state, crops)
  local feats = nn.normalize(state.clip:get_image_features(crops))            -- (B, P)
  local cos = state.text:matmul(feats, false, true)                          -- (Q, B)
  local probs = clipseg.query_probs(cos:reshape(cos:size(1), cos:size(2), 1), state.params.logit_scale)
  local classes = clipseg.class_scores(probs, state.classes.query_class, #state.classes.names)
  return classes:reshape(classes:size(1), classes:size(2))
end

-- records (uncompressed RLEs), class probabilities (C, N) → (H, W) int32
-- labels: masks painted largest first, unpainted pixels `uncovered`
function recipe.paint(records, probs, h, w, prob_thd, uncovered)
  local order = {}
  for i = 1, #records do order[i] = i end
  table.sort(order, function(a, b)
    if records[a].area ~= records[b].area then return records[a].area > records[b].area end
    return a < b
  end)
  local labels = T.full({ h, w }, uncovered, "int32")
  local best, score = probs:argmax(1), probs:max(1)                          -- (N), (N)
  for _, i in ipairs(order) do
    if score:get(i) >= prob_thd then masks.rle_paint(labels, records[i].segmentation, best:get(i)) end
  end
  return labels
end

function recipe.setup(params, models, classes)
  if not classes then
    error("sam_clip needs class names: set `classes` in the config (a file, one class per line)", 0)
  end
  if not CROP_MODES[params.crop_mode] then
    error(("sam_clip: crop_mode must be mask, blur or box, got %s"):format(tostring(params.crop_mode)), 0)
  end
  local clip = models.clip
  if not clip.text then error("sam_clip: the CLIP model was loaded without its text tower", 0) end
  local base = sam_amg.setup(params, models)
  return {
    params = params, classes = classes, clip = clip, generator = base.generator,
    norm = clipseg.normalization(clip.path, {}),
    text = clipseg.cached_text_classifier(clip, tokenizer.load(clip.path), classes.queries, params.templates),
    size = clip.vision.config.image_size,
  }
end

function recipe.segment(state, img)
  local p = state.params
  local h, w = img:size(1), img:size(2)
  local records = state.generator:generate(img)
  if #records == 0 then
    return { kind = "semantic", labels = T.full({ h, w }, p.uncovered, "int32"), records = {} }
  end
  local x = clipseg.normalize(img, state.norm)                               -- (1, 3, H, W)
  local bg
  if p.crop_mode == "blur" then
    local f = p.blur_factor
    local small = nn.interpolate(x, math.max(1, math.ceil(h / f)), math.max(1, math.ceil(w / f)),
                                 { mode = "bilinear", antialias = true })
    bg = nn.interpolate(small, h, w, { mode = "bilinear" })
  end
  local parts = {}
  for first = 1, #records, p.clip_batch do
    local crops = {}
    for i = first, math.min(first + p.clip_batch - 1, #records) do
      local r = records[i]
      local mask = masks.rle_decode(r.segmentation):float()
      crops[#crops + 1] = recipe.crop(x, bg, mask, recipe.crop_box(r.bbox, p.crop_expand, h, w),
                                      state.size, p.crop_mode)
    end
    parts[#parts + 1] = recipe.classify(state, T.cat(crops, 1))
    collectgarbage()
  end
  local probs = T.cat(parts, 2)                                              -- (C, N)
  local labels = recipe.paint(records, probs, h, w, p.prob_thd, p.uncovered)
  local best, score = probs:argmax(1), probs:max(1)
  for i, r in ipairs(records) do
    r.class = best:get(i)
    r.label = state.classes.names[r.class + 1]
    r.class_score = score:get(i)
    r.segmentation = masks.rle_to_json(r.segmentation)
  end
  return { kind = "semantic", labels = labels, records = records, dump = { class_probs = probs } }
end

return recipe
