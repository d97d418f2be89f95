-- fmseg.method.clipseg — the protocol that training-free CLIP segmentation methods
-- share (MaskCLIP, SCLIP, ClearCLIP, NACLIP, ProxyCLIP, GEM), written once.
-- A recipe supplies only what its paper changes: how dense patch features
-- come out of CLIP (usually a new last block); everything around it is here,
-- one small function per step, as the official code does it
-- (wangf3014/SCLIP clip_segmentor.py, sinahmr/NACLIP naclip.py,
-- mc-lan/ClearCLIP, mc-lan/ProxyCLIP, mmsegmentation's test pipeline).
--
--   image ──prepare──▶ x (1, 3, h, w): mmseg Resize(scale = (long_side,
--          short_side), keep_ratio) with cv2 bilinear, then (x - mean) / std
--   x ──slide / whole──▶ (Q, h, w) cosine scores: per window, method.dense →
--          patch features → cos with the text classifier → bilinear to the
--          window → summed, divided by the per-pixel window count
--   ──resize_scores──▶ (Q, H, W) at the image's size ──pamr (optional)──▶
--   ──softmax(logit_scale · s) over queries──▶ synonyms → classes by max
--   ──area_filter (optional)──▶ argmax, prob_thd → background (class 0)
--
--   local clipseg = require("fmseg.method.clipseg")
--   local state = clipseg.setup(params, clip_model, classes, {
--     dense = function(state, x) return feats, gh, gw end,  -- (gh*gw, P)
--   })
--   local result = clipseg.segment(state, img)
--
-- Q counts text queries (every synonym of every class), C classes.
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local hf = require("fmseg.io.hf")
local image = require("fmseg.image")
local masks = require("fmseg.masks")
local nn = require("fmseg.nn")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")
local templates_mod = require("fmseg.method.templates")
local tokenizer = require("fmseg.text.tokenizer")

local ffi, C, check = core.ffi, core.C, core.check

local M = {}

-- CLIP's pixel statistics on the 0-1 scale (openai/CLIP clip.py, _transform)
-- and ImageNet's (the VFMs of ProxyCLIP; MaskCLIP's mmseg configs).
M.CLIP_MEAN = { 0.48145466, 0.4578275, 0.40821073 }
M.CLIP_STD = { 0.26862954, 0.26130258, 0.27577711 }
M.IMAGENET_MEAN = { 0.485, 0.456, 0.406 }
M.IMAGENET_STD = { 0.229, 0.224, 0.225 }
-- CLIP's statistics as the SCLIP code base (SCLIP, ClearCLIP, NACLIP)
-- states them to its SegDataPreProcessor, on the 0-255 scale rounded to
-- three decimals (122.771 where 0.48145466 x 255 = 122.77094): what those
-- recipes' `mean` / `std` default to.
M.CLIP_MEAN_255 = { 122.771, 116.746, 104.094 }
M.CLIP_STD_255 = { 68.501, 66.632, 70.323 }

-- The protocol's parameters with SCLIP's defaults (clip_segmentor.py and its
-- configs); a recipe overrides the ones its paper changes.
--   logit_scale     softmax temperature of the cosine scores
--   prob_thd        pixels whose best class probability is below it → class 0
--   area_thd        0 = off; else classes 1.. covering at most this share of
--                   the predicted foreground are dropped (SCLIP, VOC21)
--   slide_crop, slide_stride   sliding window (slide_crop = 0: whole image)
--   pad_multiple    0, a number or "patch": zero-pad each window to a multiple
--                   (ClearCLIP: the patch size; ProxyCLIP: 56); "corner":
--                   zero-pad bottom/right to the patch size and stretch the
--                   padded input's grid over the unpadded size, whole images
--                   too (MaskCLIP's PatchEmbed, padding='corner')
--   short_side, long_side      mmseg Resize(scale = (long_side, short_side),
--                   keep_ratio = True); short_side = 0 keeps the image's size
--   pamr_steps, pamr_dilations PAMR on the upsampled scores (0 = off)
--   templates       "imagenet" (80), "maskclip" (85), "photo" (1) or a list
--   mean, std       false (from the checkpoint's preprocessor_config.json,
--                   else CLIP's) or three values on the 0-255 pixel scale
local DEFAULTS = {
  logit_scale = 40, prob_thd = 0.0, area_thd = 0, slide_crop = 224, slide_stride = 112,
  pad_multiple = 0, short_side = 336, long_side = 2048, pamr_steps = 0, pamr_dilations = { 8, 16 },
  templates = "imagenet", mean = false, std = false,
}

-- defaults(overrides) → the protocol's defaults with a recipe's own merged in
function M.defaults(overrides)
  local out = {}
  for k, v in pairs(DEFAULTS) do out[k] = v end
  for k, v in pairs(overrides or {}) do out[k] = v end
  return out
end

-- ---- image ------------------------------------------------------------------

-- The checkpoint's normalisation as { mean = {r, g, b}, std = {...} } on
-- the 0-255 pixel scale. preprocessor_config.json states it on the rescaled
-- (usually 0-1) scale; mmseg configs state it on 0-255 as `mean`/`std`
-- params, which win when given.
function M.normalization(path, params)
  params = params or {}
  local mean, std = M.CLIP_MEAN, M.CLIP_STD
  local scale = 1 / 255
  local file = path and (path .. "/preprocessor_config.json")
  if file and hf.exists(file) then
    local cfg = hf.read_json(file)
    mean = hf.cfg(cfg, "image_mean", mean)
    std = hf.cfg(cfg, "image_std", std)
    scale = hf.cfg(cfg, "do_rescale", true) and hf.cfg(cfg, "rescale_factor", scale) or 1
  end
  local out = { mean = {}, std = {} }
  for i = 1, 3 do
    out.mean[i] = params.mean and params.mean[i] or mean[i] / scale
    out.std[i] = params.std and params.std[i] or std[i] / scale
  end
  return out
end

-- mmcv.rescale_size: the (h, w) an image takes under Resize(scale =
-- (long_side, short_side), keep_ratio = True): the largest factor keeping
-- the long side ≤ long_side and the short side ≤ short_side, sizes
-- rounded as int(x * factor + 0.5).
function M.rescale_size(h, w, short_side, long_side)
  local f = math.min(long_side / math.max(h, w), short_side / math.min(h, w))
  return math.floor(h * f + 0.5), math.floor(w * f + 0.5)
end

-- img (H, W, 3) uint8 → (h, w, 3) uint8 as mmseg's Resize makes it:
-- cv2.resize INTER_LINEAR (mmcv.imresize 'bilinear'), bit for bit. cv2's
-- 11-bit fixed point differs from float bilinear + round by one grey level
-- on ~13% of values; an exact 2x downscale is cv2's 2x2 mean.
function M.resize_image(img, h, w)
  if img:size(1) == h and img:size(2) == w then return img end
  return image.resize_cv2(img, h, w)
end

-- img (h, w, 3) uint8 → (1, 3, h, w) float32, (pixel - mean) / std
function M.normalize(img, norm)
  local x = image.to_chw(img)
  local mean = T.from_table(norm.mean):reshape(1, 3, 1, 1)
  local std = T.from_table(norm.std):reshape(1, 3, 1, 1)
  return x:sub_(mean):div_(std)
end

-- img (H, W, 3) uint8 → x (1, 3, h, w), what the model sees
function M.prepare(img, params, norm)
  local h, w = img:size(1), img:size(2)
  if (params.short_side or 0) > 0 then
    h, w = M.rescale_size(h, w, params.short_side, params.long_side or 2048)
  end
  return M.normalize(M.resize_image(img, h, w), norm)
end

-- ---- text ------------------------------------------------------------------------

-- The text classifier (Q, P): for each query every template is filled in,
-- encoded, L2-normalised; the mean over templates is normalised again
-- (clip_segmentor.py; MaskCLIP's prompt_engineering.py). Texts go through
-- the encoder in chunks, each cut to its longest text: the encoder is causal,
-- so padding after the end token cannot change the pooled end token.
function M.text_classifier(model, tok, queries, templates, chunk)
  templates = templates_mod.get(templates)
  chunk = chunk or 256
  local texts = {}
  for _, q in ipairs(queries) do
    for _, t in ipairs(templates) do texts[#texts + 1] = templates_mod.fill(t, q) end
  end
  local parts = {}
  for first = 1, #texts, chunk do
    local batch = {}
    for i = first, math.min(first + chunk - 1, #texts) do batch[#batch + 1] = texts[i] end
    local rows, lengths = tok:encode_batch(batch)
    local longest = math.max(unpack(lengths))
    for _, row in ipairs(rows) do
      for k = #row, longest + 1, -1 do row[k] = nil end
    end
    parts[#parts + 1] = nn.normalize(model:get_text_features(rows))
  end
  local each = T.cat(parts, 1)                                  -- (Q * templates, P)
  local mean = each:reshape(#queries, #templates, each:size(2)):mean(2)
  return nn.normalize(mean)                                     -- (Q, P)
end

-- The classifier is the slow part of setting up (80 templates x every
-- class through the text tower: half a minute for ViT-B on 2 cores), so it
-- is kept on disk under $FMSEG_CACHE (default ~/.cache/fmseg; "off"
-- disables it), keyed by the prompts and a checksum of the text
-- projection's values, which tells checkpoints apart.
local function cache_dir()
  local dir = os.getenv("FMSEG_CACHE")
  if dir == "off" then return nil end
  if dir and dir ~= "" then return dir end
  local home = os.getenv("XDG_CACHE_HOME") or (os.getenv("HOME") and os.getenv("HOME") .. "/.cache")
  return home and (home .. "/fmseg") or nil
end

-- FNV-1a over a string and the bytes of a float32 tensor, as 16 hex digits
local function checksum(text, t)
  local h = 0xcbf29ce484222325ULL
  local function mix(b) h = bit.bxor(h, b) * 0x100000001b3ULL end
  for i = 1, #text do mix(text:byte(i)) end
  local c = t:contiguous()
  local bytes = ffi.cast("const uint8_t *", c.data)
  for i = 0, 4 * c:numel() - 1 do mix(bytes[i]) end
  return bit.tohex(h, 16)
end

function M.cached_text_classifier(model, tok, queries, templates)
  local dir = cache_dir()
  if not dir then return M.text_classifier(model, tok, queries, templates) end
  local key = table.concat(queries, "\n") .. "\0" .. table.concat(templates_mod.get(templates), "\n")
  local path = ("%s/text/%s.safetensors"):format(dir, checksum(key, model.text_projection.weight))
  if fs.exists(path) then
    local ok, text = pcall(function() return safetensors.open(path):get("text"):clone() end)
    if ok and text:size(1) == #queries then return text end
  end
  local text = M.text_classifier(model, tok, queries, templates)
  -- a cache that cannot be written is no reason to fail the run
  pcall(function()
    fs.mkdir_p(dir .. "/text")
    safetensors.save(path .. ".tmp", { text = text })
    os.rename(path .. ".tmp", path)
  end)
  return text
end

-- ---- scores -----------------------------------------------------------------------

-- feats (N, P) L2-normalised patch features on a gh x gw grid, text (Q, P)
-- → (Q, gh, gw) cosine scores
function M.patch_logits(feats, text, gh, gw)
  return text:matmul(feats, false, true):reshape(text:size(1), gh, gw)
end

-- (left, right, top, bottom) zero padding that makes h x w a multiple of m,
-- split as evenly as possible, the extra pixel right/bottom (ClearCLIP and
-- ProxyCLIP's compute_padsize); nil when none is needed.
function M.pad_size(h, w, m)
  if not m or m <= 0 or (h % m == 0 and w % m == 0) then return nil end
  local lr, tb = (m - w % m) % m, (m - h % m) % m
  local l, t = math.floor(lr / 2), math.floor(tb / 2)
  return { l, lr - l, t, tb - t }
end

-- x (1, 3, h, w) → zero-padded (1, 3, h + t + b, w + l + r)
function M.pad(x, pad)
  local l, r, t, b = pad[1], pad[2], pad[3], pad[4]
  local h, w = x:size(3), x:size(4)
  local out = T.zeros({ x:size(1), x:size(2), h + t + b, w + l + r })
  out:narrow(3, t + 1, h):narrow(4, l + 1, w):copy(x)
  return out
end

-- One window: x (1, 3, h, w) → (Q, h, w) cosine scores, through the
-- method's dense features; the patch grid's scores are bilinearly upsampled
-- to the (padded) window and the padding cut off again. size = {H, W}
-- (no padding) upsamples the grid's scores straight to that size instead.
-- box = {y1, x1, y2, x2}, where the window lies in the prepared input
-- (default: all of x); dense finds it and the padding in state.window, for
-- features that depend on more than the pixels (CorrCLIP's region masks).
function M.window_scores(state, x, pad_multiple, size, box)
  local h, w = x:size(3), x:size(4)
  local corner = pad_multiple == "corner"
  if pad_multiple == "patch" or corner then pad_multiple = state.patch_size end
  local pad = M.pad_size(h, w, pad_multiple)
  if pad and corner then pad = { 0, pad[1] + pad[2], 0, pad[3] + pad[4] } end
  local input = pad and M.pad(x, pad) or x
  state.window = { box = box or { 0, 0, h, w }, pad = pad or { 0, 0, 0, 0 } }
  local feats, gh, gw, extra = state.dense(state, input)
  feats = nn.normalize(feats)
  local cos = M.patch_logits(feats, state.text, gh, gw)
  state.last_window = { patch_features = feats, patch_logits = cos }
  if state.refine then cos = state.refine(state, cos, extra) end
  local uh, uw = input:size(3), input:size(4)
  if corner then uh, uw = h, w end                       -- the padded grid over the unpadded window
  local up = nn.interpolate(cos:reshape(1, cos:size(1), gh, gw), size and size[1] or uh,
                            size and size[2] or uw, { mode = "bilinear" })
  up = up:select(1, 1)
  if pad and not corner then up = up:narrow(2, pad[3] + 1, h):narrow(3, pad[1] + 1, w):contiguous() end
  return up
end

-- The windows of mmseg's slide_inference over an h x w input: crop and
-- stride are numbers or {h, w}; a crop larger than the input gives one
-- window of the input's size. Returns { {y1, x1, y2, x2}, ... }, 0-based,
-- end-exclusive.
function M.windows(h, w, crop, stride)
  local ch, cw = type(crop) == "table" and crop[1] or crop, type(crop) == "table" and crop[2] or crop
  local sh, sw = type(stride) == "table" and stride[1] or stride, type(stride) == "table" and stride[2] or stride
  local h_grids = math.floor(math.max(h - ch + sh - 1, 0) / sh) + 1
  local w_grids = math.floor(math.max(w - cw + sw - 1, 0) / sw) + 1
  local out = {}
  for hi = 0, h_grids - 1 do
    for wi = 0, w_grids - 1 do
      local y2, x2 = math.min(hi * sh + ch, h), math.min(wi * sw + cw, w)
      out[#out + 1] = { math.max(y2 - ch, 0), math.max(x2 - cw, 0), y2, x2 }
    end
  end
  return out
end

-- Sliding-window inference: x (1, 3, h, w), score(window, box) → (Q, wh,
-- ww) at the window's size (box as M.windows gives it); returns (Q, h, w),
-- the windows' scores summed and divided by how many windows cover each
-- pixel.
function M.slide(x, crop, stride, score)
  local h, w = x:size(3), x:size(4)
  local sum
  local count = T.zeros({ 1, h, w })
  for _, win in ipairs(M.windows(h, w, crop, stride)) do
    local y1, x1, y2, x2 = win[1], win[2], win[3], win[4]
    local s = score(x:narrow(3, y1 + 1, y2 - y1):narrow(4, x1 + 1, x2 - x1):contiguous(), win)
    sum = sum or T.zeros({ s:size(1), h, w })
    local region = sum:narrow(2, y1 + 1, y2 - y1):narrow(3, x1 + 1, x2 - x1)
    local added = region + s
    region:copy(added)
    local seen = count:narrow(2, y1 + 1, y2 - y1):narrow(3, x1 + 1, x2 - x1)
    local counted = seen + 1
    seen:copy(counted)
    s:free(); added:free(); counted:free()
  end
  return sum:div_(count)
end

-- scores (Q, h, w) → (Q, H, W), bilinear (align_corners = False)
function M.resize_scores(scores, h, w)
  if scores:size(2) == h and scores:size(3) == w then return scores end
  local q = scores:size(1)
  return nn.interpolate(scores:reshape(1, q, scores:size(2), scores:size(3)), h, w,
                        { mode = "bilinear" }):reshape(q, h, w)
end

-- PAMR (core/pamr.c) as NACLIP and SCLIP apply it: the guide is the
-- normalised model input x (1, 3, h, w) bilinearly resized to the scores'
-- size; scores (Q, H, W) are the upsampled cosine scores (before the
-- logit scale).
function M.pamr(x, scores, steps, dilations)
  local q, h, w = scores:size(1), scores:size(2), scores:size(3)
  local guide = nn.interpolate(x, h, w, { mode = "bilinear" }):reshape(x:size(2), h, w)
  local dil = ffi.new("int32_t[?]", #dilations)
  for i, d in ipairs(dilations) do dil[i - 1] = d end
  local out = T.new({ q, h, w })
  check(C.fm_pamr(out, guide, nn.dense(scores), steps, dil, #dilations))
  guide:free()
  return out
end

-- scores (Q, H, W) → softmax over queries of logit_scale · scores
function M.query_probs(scores, logit_scale)
  local z = scores * logit_scale
  local m = z:max(1, true)
  z:sub_(m):exp_()
  local total = z:sum(1, true)
  z:div_(total)
  m:free(); total:free()
  return z
end

-- probs (Q, H, W) → (C, H, W): each class takes the max over its queries
-- (SCLIP's one-hot query_idx max); query_class[q] is q's 1-based class.
function M.class_scores(probs, query_class, nclasses)
  if #query_class == nclasses then return probs end
  local out = T.zeros({ nclasses, probs:size(2), probs:size(3) })
  for q, c in ipairs(query_class) do
    local slot = out:select(1, c)
    local best = slot:maximum(probs:select(1, q))
    slot:copy(best)
    best:free()
  end
  return out
end

-- SCLIP's area threshold (VOC21): with the argmax labels, every class but
-- background (0) whose area is not above area_thd x the area of all
-- non-background classes gets its scores zeroed, in place.
function M.area_filter(scores, area_thd)
  local nclasses = scores:size(1)
  local areas = masks.label_areas(masks.argmax_channels(scores), nclasses - 1):values()
  local fg = 0
  for c = 2, nclasses do fg = fg + areas[c] end
  for c = 2, nclasses do
    if areas[c] <= area_thd * fg then scores:select(1, c):fill(0) end
  end
  return scores
end

-- scores (C, H, W) → (H, W) int32 labels: argmax (first on ties), and 0
-- where the best score is below prob_thd.
function M.labels(scores, prob_thd)
  local labels = masks.argmax_channels(scores)
  if not prob_thd or prob_thd <= 0 then return labels end
  local keep = scores:max(1):ge(prob_thd)
  return (labels:float() * keep):int()
end

-- ---- dense features ---------------------------------------------------------------

-- The tokens entering the last k blocks of CLIP's vision tower (B, T, C).
-- opts go to encode_image (e.g. antialias_positions).
function M.tokens_before(model, x, k, opts)
  local run = { layers = #model.vision.layers - k }
  for key, v in pairs(opts or {}) do run[key] = v end
  return model:encode_image(x, run).last
end

-- tokens (1, 1 + N, C) → (N, P): post_layernorm and projection of the
-- patch tokens (the class token dropped)
function M.head_patches(model, tokens)
  local y = model:head(tokens)
  local n = y:size(2) - 1
  return y:select(1, 1):narrow(1, 2, n):contiguous()
end

-- How the SCLIP code base (SCLIP, ClearCLIP, NACLIP, ProxyCLIP) resamples
-- position embeddings for other window sizes.
M.SCLIP_POSITIONS = { position_offset = 0.1 }

-- The dense function of a method that replaces CLIP's last block:
-- last_block(block, x (B, T, C), state, grid) → tokens (B, T, C)[, extra];
-- the patch tokens go through the head.
-- Every dense function made here remembers its last_block and encode_opts
-- (M.last_block_of), so that a modifier (fmseg.method.modifiers) can run the same
-- block again inside its own dense function.
local LAST_BLOCKS = setmetatable({}, { __mode = "k" })

function M.last_block_method(last_block, encode_opts)
  local function dense(state, x)
    local model = state.model
    local blocks = model.vision.layers
    local tokens = M.tokens_before(model, x, 1, encode_opts)
    local p = model.vision.config.patch_size
    local gh, gw = math.floor(x:size(3) / p), math.floor(x:size(4) / p)
    local y, extra = last_block(blocks[#blocks], tokens, state, { gh, gw })
    return M.head_patches(model, y), gh, gw, extra
  end
  LAST_BLOCKS[dense] = { last_block = last_block, encode_opts = encode_opts }
  return dense
end

-- dense → { last_block, encode_opts } when last_block_method made it, else nil
function M.last_block_of(dense) return LAST_BLOCKS[dense] end

-- ---- the whole protocol -------------------------------------------------------------

-- setup(params, model, classes, method) → state. method.dense(state, x)
-- → feats (gh*gw, P) not yet normalised, gh, gw[, extra]; optional
-- method.refine(state, cos (Q, gh, gw), extra) → cos at patch level
-- (MaskCLIP), method.calibrate(state, scores (Q, H, W)) → scores before the
-- softmax (GEM's min-max), method.whole_to_image (see M.infer).
function M.setup(params, model, classes, method)
  if not classes then
    error("this recipe needs class names: set `classes` in the config (a file, one class per line)", 0)
  end
  if not model.text then error("the CLIP model was loaded without its text tower", 0) end
  local tok = tokenizer.load(model.path)
  return {
    params = params, model = model, classes = classes,
    norm = M.normalization(model.path, params),
    text = M.cached_text_classifier(model, tok, classes.queries, params.templates),
    patch_size = model.vision.config.patch_size,
    dense = method.dense, refine = method.refine, calibrate = method.calibrate,
    whole_to_image = method.whole_to_image,
  }
end

-- The scores (Q, h, w) of the prepared input x, by sliding window or whole.
-- Whole-image inference of a method with whole_to_image (SCLIP's and
-- ClearCLIP's forward_feature(img, logit_size = ori_shape)) upsamples the
-- patch grid once, straight to size = {H, W}, the image's.
function M.infer(state, x, size)
  local p = state.params
  if (p.slide_crop or 0) > 0 then
    return M.slide(x, p.slide_crop, p.slide_stride, function(win, box)
      return M.window_scores(state, win, p.pad_multiple, nil, box)
    end)
  end
  local pad = p.pad_multiple == "corner" and "corner" or 0     -- windows' padding only, but MaskCLIP's
  return M.window_scores(state, x, pad, state.whole_to_image and size or nil)
end

-- f(t, ...), freeing t at once when f made a new tensor: full-resolution
-- scores of many queries are large, and the garbage collector cannot see
-- their size.
local function step(t, f, ...)
  local out = f(t, ...)
  if out ~= t then t:free() end
  return out
end

-- segment(state, img (H, W, 3) uint8) → the semantic result of
-- fmseg.method.segment: labels (H, W) int32, scores (C, H, W) class probabilities,
-- dump = { patch_features (N, P) and patch_logits (Q, gh, gw) = logit_scale x
-- cosine, both of the last window; logits (Q, H, W) = logit_scale x the
-- blended scores at the image's size, what the softmax takes }.
function M.segment(state, img)
  local p = state.params
  local h, w = img:size(1), img:size(2)
  local x = M.prepare(img, p, state.norm)
  local scores = step(M.infer(state, x, { h, w }), M.resize_scores, h, w)
  if (p.pamr_steps or 0) > 0 then
    scores = step(scores, function(s) return M.pamr(x, s, p.pamr_steps, p.pamr_dilations) end)
  end
  if state.calibrate then scores = step(scores, function(s) return state.calibrate(state, s) end) end
  local probs = M.query_probs(scores, p.logit_scale)
  local classes = M.class_scores(probs, state.classes.query_class, #state.classes.names)
  if classes ~= probs then probs:free() end
  if (p.area_thd or 0) > 0 then M.area_filter(classes, p.area_thd) end
  local labels = M.labels(classes, p.prob_thd)
  local last = state.last_window
  local dump = { patch_features = last.patch_features, patch_logits = last.patch_logits * p.logit_scale,
                 logits = scores:mul_(p.logit_scale) }
  -- a modifier's own intermediates of the last window (state.window_dump)
  for name, t in pairs(state.window_dump or {}) do dump[name] = t end
  return { kind = "semantic", labels = labels, scores = classes, dump = dump }
end

return M
