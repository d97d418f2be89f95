-- Trident's steps (recipes/trident.lua) that the fixtures cannot pin down
-- alone: preprocess_image's sizes, the splice of the windows (overlaps
-- averaged, a VFM grid twice CLIP's, one that is no multiple), SAM's
-- similarity cut against a naive twin (both branches of refine_neg_cos, the
-- 0.9 bound), the proxy softmax with a mean given from outside, the layer
-- and heads taken from SAM, and the misconfigurations refused at setup
-- naming the key; every shipped config resolves. The whole recipe against
-- the official code: tests/fixtures/methods/trident-*.
local tap = require("tap")
local classes_mod = require("fmseg.method.classes")
local config = require("fmseg.io.config")
local models = require("fmseg.models")
local nn = require("fmseg.nn")
local recipes = require("fmseg.method.recipes")
local T = require("fmseg.tensor")

local R = recipes.load("trident")
local proxyclip = recipes.load("proxyclip")
local MODELS = "tests/fixtures/methods/models/"

-- ---- the recipe and its defaults ---------------------------------------------------------------

tap.eq(table.concat(R.needs, " "), "clip vfm sam", "needs CLIP, the VFM (DINO) and SAM")
local d = R.defaults
tap.ok(d.beta == 1.2 and d.gamma == 3.0 and d.cos_fac == 1.2 and d.refine_neg_cos == true
       and d.slide_crop == 336 and d.slide_stride == 224 and d.logit_scale == 40 and d.sam_halves == false,
       "defaults: trident.py's with base_config.py's (beta 1.2, cos_fac 1.2, refine_neg_cos, 336 / 224)")
tap.raises(function() recipes.params(R, { pad_multiple = 56 }) end, "unknown parameter 'pad_multiple'",
           "windows are not padded: pad_multiple is no parameter")
tap.raises(function() recipes.params(R, { area_thd = 0.1 }) end, "unknown parameter 'area_thd'",
           "no area filter in Trident")

-- ---- 0. preprocess_image ----------------------------------------------------------------------

local function size_of(t) return t:size(3) .. "x" .. t:size(4) end
local x = T.full({ 1, 3, 336, 470 }, 0.5)
local fitted = R.fit_to_patch(x, 16, 336)
tap.eq(size_of(fitted), "352x480", "470x336 → 480 (long side up to 16s), int(336 x 480 / 470) = 343 → 352")
tap.ok(math.abs(fitted:min() - 0.5) < 1e-6 and math.abs(fitted:max() - 0.5) < 1e-6, "stretched bilinearly")
tap.ok(R.fit_to_patch(fitted, 16, 336) == fitted, "sides already multiples of 16: unchanged")
tap.eq(size_of(R.fit_to_patch(T.zeros({ 1, 3, 100, 140 }), 16, 336)), "336x336",
       "small images are raised to the crop")
tap.ok(R.fit_to_patch(T.zeros({ 1, 3, 96, 128 }), 16, 336):size(3) == 96,
       "the crop floor applies only when resizing (preprocess_image returns multiples as they are)")

-- ---- 3. the splice ---------------------------------------------------------------------------------

-- a 3 x 5 CLIP grid (patch 16) covered by two 3 x 3 windows at columns 0
-- and 2: the middle column is their mean
local function window(col, value, fh, fw, c)
  return { box = { 0, 16 * col, 48, 16 * col + 48 }, y = T.full({ fh * fw, c }, value),
           grid = { fh, fw }, clip_grid = { 3, 3 } }
end
local X, r = R.splice({ window(0, 1, 3, 3, 2), window(2, 3, 3, 3, 2) }, 3, 5, 16)
tap.ok(r == 1 and X:size(2) == 3 and X:size(3) == 5, "VFM grid = CLIP's: r = 1, the image's 3x5 grid")
tap.ok(X:get(1, 1, 1) == 1 and X:get(2, 2, 3) == 2 and X:get(1, 3, 5) == 3,
       "each window on its place; the overlap (column 3) averaged")
X, r = R.splice({ window(0, 1, 6, 6, 2), window(2, 3, 6, 6, 2) }, 3, 5, 16)
tap.ok(r == 2 and X:size(2) == 6 and X:size(3) == 10 and X:get(1, 6, 5) == 2 and X:get(1, 6, 7) == 3,
       "a VFM grid twice CLIP's (DINO ViT-B/8): spliced at 2x, windows at twice their place")
X, r = R.splice({ window(0, 1, 5, 5, 2), window(2, 1, 5, 5, 2) }, 3, 5, 16)
tap.ok(r == 2 and X:size(2) == 6 and X:size(3) == 10 and math.abs(X:get(1, 3, 4) - 1) < 1e-6,
       "5x5 is no multiple of 3x3: r = round(5 / 3) = 2, each window resized to 6x6 first")
tap.raises(function() R.splice({ window(0, 1, 1, 1, 2) }, 3, 3, 16) end, "under half of CLIP's",
           "a VFM grid under half of CLIP's (r = 0) is refused")

-- ---- 4. SAM's similarity cut against a naive twin ------------------------------------------------

-- C_h[m, j] = cos(V_h[m], V_h[j]); τ_m = cos_fac · mean over h and j;
-- τ < 0 → 0.6 unless refine_neg_cos; τ > 0.9 → 0.9; W = mean_h A_h [C_h > τ],
-- rows normalised
local function naive_weights(probs, v, cos_fac, refine_neg_cos)
  local heads, n = probs:size(1), v:size(1)
  local dd = v:size(2) / heads
  local function cos(h, a, b)
    local s, na, nb = 0, 0, 0
    for k = 1, dd do
      local va, vb = v:get(a, (h - 1) * dd + k), v:get(b, (h - 1) * dd + k)
      s, na, nb = s + va * vb, na + va * va, nb + vb * vb
    end
    return s / math.sqrt(na * nb)
  end
  local out, taus = T.zeros({ n, n }), {}
  for m = 1, n do
    local tau = 0
    for h = 1, heads do for j = 1, n do tau = tau + cos(h, m, j) end end
    tau = cos_fac * tau / (heads * n)
    if not refine_neg_cos and tau < 0 then tau = 0.6 end
    taus[m] = math.min(tau, 0.9)
    local row = {}
    for j = 1, n do
      local sum = 0
      for h = 1, heads do
        if cos(h, m, j) > taus[m] then sum = sum + probs:get(h, m, j) end
      end
      row[j] = sum / heads
    end
    local total = 0
    for j = 1, n do total = total + row[j] end
    for j = 1, n do out:set(m, j, row[j] / total) end
  end
  return out, taus
end

local heads, n, dh = 3, 9, 4
local probs = nn.softmax(T.randn({ heads, n, n }, 3))
-- most value rows share a direction per head; rows 1 and 2 point against
-- it, so their mean similarity, and τ, is negative
local v = T.randn({ n, heads * dh }, 5) * 0.3 + 1
for k = 1, heads * dh do v:set(1, k, -v:get(1, k)); v:set(2, k, -v:get(2, k)) end
local att = { probs = probs, v = v }
local want, taus = naive_weights(probs, v, 1.2, true)
tap.ok(taus[1] < 0 and taus[3] > 0, ("τ negative for the opposed rows (%.3f), positive elsewhere (%.3f)")
       :format(taus[1], taus[3]))
tap.near(R.sam_weights(att, 1.2, true), want, 1e-5, "get_sam_sim, refine_neg_cos: negative τ kept")
tap.near(R.sam_weights(att, 1.2, false), naive_weights(probs, v, 1.2, false), 1e-5,
         "get_sam_sim without refine_neg_cos: negative τ → 0.6")
local _, high = naive_weights(probs, v, 3.0, true)
tap.ok(high[3] == 0.9, "cos_fac 3: τ clipped at 0.9")
tap.near(R.sam_weights(att, 3.0, true), naive_weights(probs, v, 3.0, true), 1e-5, "get_sam_sim, τ bounded by 0.9")
local rows = R.sam_weights(att, 1.2, true):sum(2)
tap.ok(math.abs(rows:min() - 1) < 1e-5 and math.abs(rows:max() - 1) < 1e-5, "W's rows sum to 1")

-- ---- 2. the proxy softmax with the windows' common mean ------------------------------------------

local F = T.randn({ 16, 8 }, 9)
local s = proxyclip.proxy_similarity(F)
local mean = 0.25
local e = ((s - 1.2 * mean) * 3)
local keep = e:ge(0)
e = (e - e:max(2, true)):exp() * keep
tap.near(proxyclip.proxy_softmax(s:clone(), 1.2, 3.0, mean), e / e:sum(2, true), 1e-5,
         "S' = (S - beta · mean) · gamma with the mean of all windows given, negatives dropped")
tap.near(proxyclip.proxy_softmax(s:clone(), 1.2, 3.0), proxyclip.proxy_attention(F, 1.2, 3.0), 1e-6,
         "without a mean: S's own, as ProxyCLIP")

-- ---- setup: the models' layers, and misconfigurations -------------------------------------------

local clip = models.load("clip", MODELS .. "clip-b16-tiny")
local dino = models.load("vfm", MODELS .. "dino-b16-tiny")
local sam = models.load("sam", MODELS .. "sam-trident-tiny")
local classes = classes_mod.parse("sky, tree\nhorse\n")
local function setup(params, m)
  return R.setup(recipes.params(R, params), m or { clip = clip, vfm = dino, sam = sam }, classes)
end
local state = setup({})
tap.ok(state.sam_layer == #sam.vision_encoder.layers and state.sam_layer == 2,
       "sam_layer false: SAM's last block (the tiny one's 2nd; ViT-B's 12th)")
tap.eq(state.params.slide_crop, 0, "the protocol runs once over the whole image (windows are Trident's own)")
tap.eq(state.trident.slide_crop, 336, "Trident's windows keep slide_crop")
tap.raises(function() setup({}, { clip = clip, sam = sam }) end, "trident: needs models.vfm",
           "a missing VFM is refused, naming models.vfm")
tap.raises(function() setup({}, { clip = clip, vfm = models.load("vfm", MODELS .. "dinov2-reg-b14-tiny"), sam = sam }) end,
           "models.vfm is dinov2_with_registers", "a VFM that is not DINO is refused, naming models.vfm")
tap.raises(function() setup({}, { clip = clip, vfm = models.load("vfm", MODELS .. "sam-trident-tiny"), sam = sam }) end,
           "models.vfm is sam", "SAM as the windows' VFM is refused (Trident's proxy is DINO)")
tap.raises(function() setup({}, { clip = clip, vfm = dino }) end, "trident: needs models.sam",
           "a missing SAM is refused, naming models.sam")
tap.raises(function() setup({ sam_layer = 3 }) end, "sam_layer = 3 is outside SAM's blocks 1..2",
           "a SAM block beyond the depth is refused, naming sam_layer")
tap.raises(function() setup({ sam_layer = 1 }) end, "sam_layer = 1 is a windowed block",
           "a windowed SAM block is refused")
tap.raises(function() setup({ slide_crop = 330 }) end, "slide_crop = 330 must be a positive multiple of CLIP's patch 16",
           "a window off the patch grid is refused, naming slide_crop")
tap.raises(function() setup({ slide_stride = 0 }) end, "slide_stride = 0 must be a positive multiple",
           "no sliding window: Trident always slides")
tap.raises(function() sam:encode_image(T.zeros({ 1, 3, 1024, 1024 }), { attention = 1 }) end,
           "attention = 1 is not a global-attention layer", "SAM: a windowed layer's attention is not handed out")

-- ---- every shipped config resolves -----------------------------------------------------------------

local listing = io.popen("ls configs/trident/*.yaml")
local checked, problems = 0, {}
for path in listing:lines() do
  local ok, err = pcall(function()
    local cfg = config.load(path)
    local recipe = recipes.load(config.get(cfg, "recipe"))
    if recipe.name ~= "trident" then error("recipe " .. recipe.name, 0) end
    recipes.params(recipe, config.get(cfg, "params", {}))
    recipes.params(recipes.load(config.get(cfg, "refine.recipe")), config.get(cfg, "refine.params", {}))
    local names = classes_mod.from_config(config.get(cfg, "classes")).names
    if #names ~= config.get(cfg, "data.num_classes") then
      error(("%d class lines, data.num_classes = %s"):format(#names, tostring(config.get(cfg, "data.num_classes"))), 0)
    end
    if config.get(cfg, "models.vfm") ~= "facebook/dino-vitb16" or config.get(cfg, "models.sam") ~= "facebook/sam-vit-base" then
      error("models: vfm " .. tostring(config.get(cfg, "models.vfm")) .. ", sam " .. tostring(config.get(cfg, "models.sam")), 0)
    end
    local halves = config.get(cfg, "params.sam_halves")
    if halves ~= (config.get(cfg, "data.name") == "cityscapes") then error("sam_halves " .. tostring(halves), 0) end
  end)
  checked = checked + 1
  if not ok then problems[#problems + 1] = path .. ": " .. tostring(err) end
end
listing:close()
tap.eq(checked, 10, "ten Trident configs (eight datasets, ADE-847, Context-459)")
tap.ok(#problems == 0, "each resolves: recipe, parameters, sam_refine's, classes, DINO ViT-B/16 and SAM ViT-B",
       table.concat(problems, "\n"))

os.exit(tap.done())
