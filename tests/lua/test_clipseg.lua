-- The shared protocol of training-free CLIP segmentation (fmseg.method.clipseg),
-- step by step, on inputs whose right answer is computed by hand here.
local tap = require("tap")
local clipseg = require("fmseg.method.clipseg")
local T = require("fmseg.tensor")

local function close(a, b, tol) return math.abs(a - b) <= (tol or 1e-6) end

-- mmseg's Resize(scale = (long, short), keep_ratio = True) --------------------------

local h, w = clipseg.rescale_size(375, 500, 336, 2048)
tap.ok(h == 336 and w == 448, "500x375 to short side 336: factor 0.896, 448 x 336", h .. "x" .. w)
h, w = clipseg.rescale_size(1024, 2048, 512, 1024)
tap.ok(h == 512 and w == 1024, "Cityscapes (1024, 512): the long side caps the factor at 1/2", h .. "x" .. w)
h, w = clipseg.rescale_size(375, 500, 520, 520)
tap.ok(h == 390 and w == 520, "MaskCLIP's Context (520, 520): long side 520", h .. "x" .. w)
h, w = clipseg.rescale_size(100, 3000, 336, 2048)
tap.ok(h == 68 and w == 2048, "a panorama is limited by its long side: int(100 * 2048/3000 + 0.5) = 68", h .. "x" .. w)
h, w = clipseg.rescale_size(3, 5, 4, 2048)
tap.ok(h == 4 and w == 7, "sizes round as int(x * f + 0.5): 5 * 4/3 = 6.67 -> 7", h .. "x" .. w)

-- cv2-style bilinear: half-pixel centres, clamped at the border.
local img = T.from_table({ { { 0, 0, 0 }, { 100, 100, 100 } }, { { 200, 200, 200 }, { 50, 50, 50 } } }, "uint8")
local up = clipseg.resize_image(img, 4, 4)
local row = {}
for x = 1, 4 do row[x] = up:get(1, x, 1) end
tap.ok(row[1] == 0 and row[2] == 25 and row[3] == 75 and row[4] == 100,
       "2x2 -> 4x4, first row: source x = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)",
       table.concat(row, " "))
tap.eq(up:get(2, 1, 1), 50, "second row, first column: 0.75 * 0 + 0.25 * 200")
tap.eq(up:get(2, 2, 2), 59, "an inner pixel: 0.75 * 25 + 0.25 * 162.5 = 59.375, rounded")
tap.ok(clipseg.resize_image(img, 2, 2) == img, "same size: no resampling")
local quad = T.from_table({ { { 100, 100, 100 }, { 130, 130, 130 } }, { { 70, 70, 70 }, { 30, 30, 30 } } }, "uint8")
tap.eq(clipseg.resize_image(quad, 3, 3):get(2, 2, 1), 83,
       "cv2's fixed point, not float + round: the centre of 2x2 -> 3x3 is 82.5, cv2 makes it 83")

-- Normalisation: the checkpoint's, or mmseg-style 0-255 values.
local norm = clipseg.normalization(nil, {})
tap.ok(close(norm.mean[1], 0.48145466 * 255, 1e-4) and close(norm.std[3], 0.27577711 * 255, 1e-4),
       "no preprocessor_config.json: CLIP's statistics on the 0-255 scale")
norm = clipseg.normalization(nil, { mean = { 1, 2, 3 }, std = { 4, 5, 6 } })
tap.ok(norm.mean[2] == 2 and norm.std[3] == 6, "mean / std params (0-255) win")
local flat = T.full({ 10, 20, 3 }, 128, "uint8")
local x = clipseg.prepare(flat, { short_side = 5, long_side = 2048 }, { mean = { 100, 110, 120 }, std = { 2, 4, 8 } })
tap.eq(T.shape_string(x:shape()), "[1, 3, 5, 10]", "prepare: resized to the short side, channels first")
tap.ok(close(x:get(1, 1, 3, 3), 14) and close(x:get(1, 2, 1, 1), 4.5) and close(x:get(1, 3, 5, 10), 1),
       "prepare: (pixel - mean) / std per channel")

-- Windows -----------------------------------------------------------------------------

-- h = 5, w = 7, crop 3, stride 2: h_grids = (5 - 3 + 1) // 2 + 1 = 2, w_grids = (7 - 3 + 1) // 2 + 1 = 3
local wins = clipseg.windows(5, 7, 3, 2)
local want = { { 0, 0, 3, 3 }, { 0, 2, 3, 5 }, { 0, 4, 3, 7 }, { 2, 0, 5, 3 }, { 2, 2, 5, 5 }, { 2, 4, 5, 7 } }
local same = #wins == #want
for i = 1, #want do
  for j = 1, 4 do same = same and wins[i] and wins[i][j] == want[i][j] end
end
tap.ok(same, "windows over 5x7, crop 3, stride 2: six, the last ones clamped to the image")
wins = clipseg.windows(64, 64, 224, 112)
tap.ok(#wins == 1 and wins[1][1] == 0 and wins[1][3] == 64 and wins[1][4] == 64,
       "a crop larger than the image: one window, the image itself")
wins = clipseg.windows(10, 10, { 4, 10 }, { 3, 5 })
tap.ok(#wins == 3 and wins[3][1] == 6 and wins[3][3] == 10, "crop and stride as {h, w}")

-- Sliding-window blending: window k (in the order above) scores k on channel 1
-- and 1 on channel 2; each pixel gets the mean over the windows covering it.
local k = 0
local blended = clipseg.slide(T.zeros({ 1, 3, 5, 7 }), 3, 2, function(win)
  k = k + 1
  local s = T.ones({ 2, win:size(3), win:size(4) })
  s:select(1, 1):fill(k)
  return s
end)
tap.eq(k, 6, "slide: the score function ran once per window")
local ok_mean, ok_ones = true, true
for y = 0, 4 do
  for xx = 0, 6 do
    local sum, n = 0, 0
    for i, r in ipairs(want) do
      if y >= r[1] and y < r[3] and xx >= r[2] and xx < r[4] then sum, n = sum + i, n + 1 end
    end
    ok_mean = ok_mean and close(blended:get(1, y + 1, xx + 1), sum / n, 1e-5)
    ok_ones = ok_ones and close(blended:get(2, y + 1, xx + 1), 1, 1e-6)
  end
end
tap.ok(ok_mean, "slide: sum of window scores / per-pixel count")
tap.ok(ok_ones, "slide: constant scores stay constant wherever windows overlap")
tap.ok(close(blended:get(1, 3, 3), (1 + 2 + 4 + 5) / 4) and close(blended:get(1, 1, 1), 1),
       "slide: pixel (2, 2) is under windows 1, 2, 4, 5; pixel (0, 0) only under 1")

-- Zero padding as ClearCLIP / ProxyCLIP compute it.
local pad = clipseg.pad_size(10, 13, 8)
tap.ok(pad and pad[1] == 1 and pad[2] == 2 and pad[3] == 3 and pad[4] == 3,
       "pad 10x13 to multiples of 8: left 1, right 2, top 3, bottom 3")
tap.ok(clipseg.pad_size(16, 24, 8) == nil and clipseg.pad_size(5, 5, 0) == nil, "no padding needed / asked")
local padded = clipseg.pad(T.ones({ 1, 1, 2, 3 }), { 1, 2, 3, 0 })
tap.ok(padded:size(3) == 5 and padded:size(4) == 6 and padded:get(1, 1, 4, 2) == 1 and padded:get(1, 1, 3, 2) == 0
       and padded:sum() == 6, "pad: the input sits at (top, left), zeros around")

-- Scores → classes --------------------------------------------------------------------

-- Three queries at two pixels; queries 1 and 2 are synonyms of class 1.
local logits = T.from_table({ { { 2.0, 0.0 } }, { { 1.0, 3.0 } }, { { 1.5, 1.0 } } })   -- (3, 1, 2)
local probs = clipseg.query_probs(logits, 2)
local z1 = math.exp(4) + math.exp(2) + math.exp(3)
tap.ok(close(probs:get(1, 1, 1), math.exp(4) / z1) and close(probs:get(3, 1, 1), math.exp(3) / z1),
       "softmax over queries of logit_scale x scores")
local z2 = math.exp(0) + math.exp(6) + math.exp(2)
local classes = clipseg.class_scores(probs, { 1, 1, 2 }, 2)
tap.eq(T.shape_string(classes:shape()), "[2, 1, 2]", "synonyms fold into classes")
tap.ok(close(classes:get(1, 1, 1), math.exp(4) / z1) and close(classes:get(1, 1, 2), math.exp(6) / z2)
       and close(classes:get(2, 1, 2), math.exp(2) / z2),
       "a class scores the max of its synonyms' probabilities (after the softmax)")
tap.ok(clipseg.class_scores(probs, { 1, 2, 3 }, 3) == probs, "no synonyms: the probabilities as they are")

-- prob_thd: below → 0, equal → kept (SCLIP: seg_pred[max < prob_thd] = 0).
local scores = T.from_table({ { { 0.1, 0.2, 0.3 } }, { { 0.3, 0.5, 0.7 } } })
local labels = clipseg.labels(scores, 0.5)
tap.ok(labels:dtype() == "int32" and labels:get(1, 1) == 0 and labels:get(1, 2) == 1 and labels:get(1, 3) == 1,
       "prob_thd 0.5: max 0.3 -> background, max 0.5 and 0.7 keep class 1")
labels = clipseg.labels(scores, 0)
tap.ok(labels:get(1, 1) == 1, "prob_thd 0: plain argmax")
tap.eq(clipseg.labels(T.from_table({ { { 0.5 } }, { { 0.5 } } }), 0):get(1, 1), 0, "ties go to the first class")

-- area_thd: class 1 wins 1 pixel, class 2 wins 6, background 3: foreground 7;
-- with area_thd 0.2 class 1 (1 <= 1.4) is dropped, class 2 (6 > 1.4) stays.
local area = T.zeros({ 3, 2, 5 })
local owner = { { 0, 1, 2, 2, 2 }, { 0, 0, 2, 2, 2 } }
for y = 1, 2 do
  for xx = 1, 5 do
    area:set(owner[y][xx] + 1, y, xx, 0.6)
    area:set((owner[y][xx] + 1) % 3 + 1, y, xx, 0.3)
  end
end
clipseg.area_filter(area, 0.2)
tap.ok(area:select(1, 2):sum() == 0, "area_thd: class 1 under 20% of the foreground is zeroed")
-- (runner-up 0.3 goes to the next class: class 1's pixel gives it to class 2, class 2's to background)
tap.ok(close(area:select(1, 3):sum(), 6 * 0.6 + 1 * 0.3, 1e-5) and close(area:select(1, 1):sum(), 3 * 0.6 + 6 * 0.3, 1e-5),
       "area_thd: background and class 2 untouched")
tap.eq(clipseg.labels(area, 0):get(1, 2), 2, "the dropped class's pixel goes to the next best class")

-- Patch scores and the window pipeline ------------------------------------------------

local feats = T.from_table({ { 1, 0 }, { 0, 1 }, { 0.6, 0.8 }, { -1, 0 } })        -- (N = 4, P = 2), unit rows
local text = T.from_table({ { 1, 0 }, { 0, 1 }, { 0.6, -0.8 } })                     -- (Q = 3, P)
local cos = clipseg.patch_logits(feats, text, 2, 2)
tap.ok(cos:size(1) == 3 and close(cos:get(1, 2, 1), 0.6) and close(cos:get(3, 2, 1), 0.36 - 0.64)
       and close(cos:get(2, 1, 2), 1), "patch_logits: cosines laid out (Q, gh, gw) in row-major patch order")

-- window_scores with a stand-in dense function: a 2x2 patch grid of a 4x6
-- window padded to 4x8 (pad_multiple 4); its scores are upsampled to 4x8 and
-- the padding columns (1 left, 1 right) cut off.
local state = {
  text = text, patch_size = 2,
  dense = function(_, input)
    tap.ok(input:size(3) == 4 and input:size(4) == 8, "window_scores: the window reaches dense padded to 4x8")
    return feats * 3, 2, 2
  end,
}
local ws = clipseg.window_scores(state, T.zeros({ 1, 3, 4, 6 }), 4)
tap.eq(T.shape_string(ws:shape()), "[3, 4, 6]", "window_scores: scores at the window's own size")
local full = require("fmseg.nn").interpolate(cos:reshape(1, 3, 2, 2), 4, 8, { mode = "bilinear" }):select(1, 1)
tap.near(ws, full:narrow(3, 2, 6), 1e-6, "window_scores: features normalised, upsampled over the padded window, cut back")
tap.near(state.last_window.patch_logits, cos, 1e-6, "the last window's patch scores are kept for the dump")

-- pad_multiple "corner" (MaskCLIP): a 3x3 window padded at the bottom and
-- right to 4x4 (patch 2), the padded input's 2x2 grid stretched over 3x3.
local seen
state.dense = function(_, input)
  seen = { input:size(3), input:size(4), input:narrow(3, 1, 3):narrow(4, 1, 3):sum(), input:sum() }
  return feats * 3, 2, 2
end
ws = clipseg.window_scores(state, T.ones({ 1, 3, 3, 3 }), "corner")
tap.ok(seen[1] == 4 and seen[2] == 4 and seen[3] == 27 and seen[4] == 27,
       "window_scores corner: zeros added at the bottom and right only")
full = require("fmseg.nn").interpolate(cos:reshape(1, 3, 2, 2), 3, 3, { mode = "bilinear" }):select(1, 1)
tap.near(ws, full, 1e-6, "window_scores corner: the grid resized to the unpadded 3x3, nothing cut")

-- GEM's min-max calibration lives in its recipe; PAMR through the wrapper:
-- a flat guide gives uniform affinities, so one step averages the 8
-- neighbours (replicate padding) — the constant map stays constant.
local refined = clipseg.pamr(T.zeros({ 1, 3, 4, 4 }), T.full({ 2, 6, 6 }, 0.25), 3, { 1, 2 })
tap.near(refined, T.full({ 2, 6, 6 }, 0.25), 1e-6, "pamr: guide resized to the scores, constant scores unchanged")

-- Text classifier against CLIP's own text embeddings ------------------------------------

local dir = tap.fixtures("clip-tiny")
if not dir then os.exit(tap.done()) end
local clip = require("fmseg.models.clip")
local nn = require("fmseg.nn")
local safetensors = require("fmseg.io.safetensors")
local tokenizer = require("fmseg.text.tokenizer")
local model = clip.load(dir)
local tok = tokenizer.load(dir)
local ref = safetensors.open(dir .. "/ref.safetensors")

-- ref text 1 is "a photo of a cat.": one template, one query.
local one = clipseg.text_classifier(model, tok, { "cat" }, { "a photo of a {}." })
tap.near(one, nn.normalize(ref:get("text_embeds"):narrow(1, 1, 1)), 1e-4,
         "one template: the normalised text embedding of the reference")

-- Several templates: normalise each, average, normalise; encoded here text by
-- text at the full 77-token context (the classifier batches and trims).
local temps = { "a photo of a {}.", "a {} in the scene", "itap of my {}." }
local queries = { "cat", "traffic light", "sky" }
local got = clipseg.text_classifier(model, tok, queries, temps, 4)
local rows = {}
for qi, q in ipairs(queries) do
  local acc = T.zeros({ 1, model.projection_dim })
  for _, t in ipairs(temps) do
    local ids = tok:encode_batch({ (t:gsub("{}", q)) }, { context_length = 77 })
    acc = acc + nn.normalize(model:get_text_features(ids))
  end
  rows[qi] = nn.normalize(acc / #temps)
end
tap.near(got, T.cat(rows, 1), 1e-5, "templates: mean of normalised embeddings, normalised; chunks of 4 trimmed")
tap.ok(close(got:norm(2):min(), 1, 1e-5) and close(got:norm(2):max(), 1, 1e-5), "classifier rows are unit vectors")

-- The checkpoint's normalisation from preprocessor_config.json.
norm = clipseg.normalization(dir, {})
tap.ok(close(norm.mean[1], 0.48145466 / 0.00392156862745098, 1e-3), "mean from preprocessor_config.json, 0-255")

os.exit(tap.done())
