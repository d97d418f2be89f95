-- SAM 2's image predictor (fmseg.sam.sam2_predictor, fmseg.sam.sam2_transforms):
-- the hole and sprinkle filling against a naive flood fill, the
-- coordinate transforms, the predictor's routing and refusals, every
-- output of the tests/fixtures/sam2-predictor cases (made by
-- facebookresearch/sam2's SAM2ImagePredictor on a tiny model,
-- tests/tools/methods/sam2_amg.py), the decoder's predicted-IoU filter and
-- the recipes that take SAM 2 as models.sam.
local tap = require("tap")
local T = require("fmseg.tensor")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local models = require("fmseg.models")
local safetensors = require("fmseg.io.safetensors")
local transforms = require("fmseg.sam.sam2_transforms")
local predictor = require("fmseg.sam.predictor")

local function list(t) return table.concat(t, " ") end
local TOL = 1e-4   -- the fixtures' relative tolerance

-- Hole and sprinkle filling ------------------------------------------------------------

-- The naive twin: 8-connected components by flood fill over a Lua table.
local function components(cells, h, w)
  local label, areas, n = {}, {}, 0
  for start = 0, h * w - 1 do
    if cells[start] and not label[start] then
      n = n + 1
      local stack, count = { start }, 0
      label[start] = n
      while #stack > 0 do
        local i = table.remove(stack)
        count = count + 1
        local y, x = math.floor(i / w), i % w
        for dy = -1, 1 do
          for dx = -1, 1 do
            local yy, xx = y + dy, x + dx
            local j = yy * w + xx
            if yy >= 0 and yy < h and xx >= 0 and xx < w and cells[j] and not label[j] then
              label[j] = n
              stack[#stack + 1] = j
            end
          end
        end
      end
      areas[n] = count
    end
  end
  return label, areas
end

local function naive_fill(x, t, hole, sprinkle)
  local h, w = x:size(1), x:size(2)
  local v = x:contiguous():values()
  local out = {}
  for i = 1, h * w do out[i] = v[i] end
  local bg, fg = {}, {}
  for i = 0, h * w - 1 do
    if v[i + 1] <= t then bg[i] = true else fg[i] = true end
  end
  if hole > 0 then
    local label, areas = components(bg, h, w)
    for i = 0, h * w - 1 do
      if label[i] and areas[label[i]] <= hole then out[i + 1] = t + 10 end
    end
  end
  if sprinkle > 0 then
    local label, areas = components(fg, h, w)
    for i = 0, h * w - 1 do
      if label[i] and areas[label[i]] <= sprinkle then out[i + 1] = t - 10 end
    end
  end
  return out
end

do
  local tf = transforms.new({ resolution = 64, mask_threshold = 0.5 })
  -- speckled logits: small blobs of both signs, some touching the border
  local x = T.randn({ 2, 3, 24, 20 }, 7) * 2
  local filled = tf:fill_holes(x, { max_hole_area = 6, max_sprinkle_area = 4 })
  tap.eq(T.shape_string(filled:shape()), "[2, 3, 24, 20]", "fill_holes keeps the shape")
  local worst, changed = 0, 0
  for i = 1, 2 do
    for j = 1, 3 do
      local map = x:select(1, i):select(1, j)
      local want = naive_fill(map, 0.5, 6, 4)
      local got = filled:select(1, i):select(1, j):contiguous():values()
      local orig = map:contiguous():values()
      for k = 1, #want do
        worst = math.max(worst, math.abs(want[k] - got[k]))
        if got[k] ~= orig[k] then changed = changed + 1 end
      end
    end
  end
  tap.eq(worst, 0, "holes (<= 6 px of logit <= 0.5) and sprinkles (<= 4 px) as a naive 8-connected flood fill")
  tap.ok(changed > 20, ("the speckled maps change (%d pixels), so the comparison means something"):format(changed))
  local none = tf:fill_holes(x)
  tap.eq((none - x):abs():max(), 0, "areas 0: nothing filled")
  -- one 2x2 hole in a foreground square touching the border, a 1-pixel sprinkle
  local m = T.full({ 8, 8 }, -5)
  m:narrow(1, 1, 5):narrow(2, 1, 5):fill(5)
  m:narrow(1, 2, 2):narrow(2, 2, 2):fill(-5)
  m:set(8, 8, 5)
  local f = transforms.new({ resolution = 32, max_hole_area = 4, max_sprinkle_area = 1 }):fill_holes(m)
  tap.eq(f:get(2, 2), 10, "a 4-pixel hole is filled at threshold + 10")
  tap.eq(f:get(8, 8), -10, "a 1-pixel sprinkle is set to threshold - 10")
  tap.eq(f:get(1, 1), 5, "the rest stays")
  tap.eq(f:get(7, 1), -5, "the large background stays")
end

-- Coordinates ----------------------------------------------------------------------------------

do
  local tf = transforms.new({ resolution = 1024 })
  local c = tf:transform_coords(T.from_table({ { 50, 25 }, { 200, 100 } }), { 100, 200 })
  tap.eq(list(c:values()), "256 256 1024 1024", "transform_coords: x / w, y / h, x the resolution (no aspect kept)")
  local b = tf:transform_boxes(T.from_table({ { 0, 0, 100, 50 } }), { 100, 200 })
  tap.eq(list(b:values()), "0 0 512 512", "transform_boxes: both corners")
  tap.raises(function() tf:preprocess(T.zeros({ 4, 4 })) end, "expected an (H, W, 3) uint8 image",
             "preprocess refuses a non-image")
  tap.raises(function() transforms.new({}) end, "resolution must be a positive number", "resolution required")
end

-- Routing and refusals --------------------------------------------------------------------------

local tiny = models.load("sam", "tests/fixtures/sam2-tiny")
local p = predictor.new(tiny)
tap.eq(p.family, "sam2", "fmseg.sam.predictor.new hands a SAM 2 model to SAM 2's predictor")
tap.raises(function() p:predict({ points = { { 1, 1 } } }) end, "call set_image first", "prompting before set_image")
p:set_image(T.zeros({ 30, 50, 3 }, "uint8"))
tap.raises(function() p:predict({ points = { { 1, 1 } }, target_embedding = T.zeros({ 1, 16 }) }) end,
           "target_embedding is a SAM decoder option", "PerSAM's decoder options are refused")
tap.raises(function() p:predict_batch(T.zeros({ 1, 1, 2 }), nil, { mask_norm = "rows" }) end,
           "mask_norm 'rows' is SAM's", "SAM's row-wise mask normalisation is refused")
tap.eq(list(p:content_hw(30, 50, 32)), "32 32", "content_hw: the image fills SAM 2's square frame")
local sam_p = predictor.new(models.load("sam", "tests/fixtures/sam-alt"))
local s = sam_p.processor.longest_edge
tap.eq(list(sam_p:content_hw(30, 60, s)), list({ s / 2, s }), "content_hw: SAM keeps the aspect")
local masks, iou, low = p:predict({ points = { { 10, 12 } } })
tap.eq(list({ T.shape_string(masks:shape()), masks:dtype(), T.shape_string(iou:shape()), T.shape_string(low:shape()) }),
       "[3, 30, 50] uint8 [3] [3, 32, 32]", "predict: masks at the image's size, low-res at 4x the grid")
tap.ok(low:abs():max() <= 32, "low-res logits clamped to ±32")

-- The reference cases: SAM2ImagePredictor on a real image ---------------------------------

do
  local dir = "tests/fixtures/sam2-predictor"
  local meta = json.decode(assert(io.open(dir .. "/cases.json")):read("*a"))
  local ref = safetensors.open(dir .. "/ref.safetensors")
  local model = models.load("sam", dir .. "/" .. meta.model)
  local img = image.load(dir .. "/" .. meta.image)
  local function tensor(v) return v ~= nil and v ~= json.null and T.from_table(v) or nil end
  for _, case in ipairs(meta.cases) do
    local pred = predictor.new(model, { mask_threshold = case.mask_threshold, max_hole_area = case.max_hole_area,
                                        max_sprinkle_area = case.max_sprinkle_area })
    pred:set_image(img)
    if case.name == meta.cases[1].name then
      tap.near(pred.transforms:preprocess(img), ref:get("pixel_values"), TOL,
               "set_image's input: squashed to the square, antialiased, normalised")
    end
    local mask_input = case.mask_input ~= json.null and case.mask_input and ref:get(case.mask_input) or nil
    local prompt = { points = tensor(case.point_coords), labels = tensor(case.point_labels), box = tensor(case.box),
                     mask_input = mask_input, multimask = case.multimask_output }
    local got_masks, got_iou, got_low = pred:predict(prompt)
    prompt.return_logits = true
    local logits = pred:predict(prompt)
    local name = case.name
    local want = ref:get(name .. ".masks")
    tap.eq((got_masks:float() - want:float()):abs():sum(), 0, name .. ": masks (return_logits False) exactly")
    tap.near(logits, ref:get(name .. ".logits"), TOL, name .. ": logits at the image's size")
    tap.near(got_iou, ref:get(name .. ".iou_predictions"), TOL, name .. ": predicted IoUs")
    tap.near(got_low, ref:get(name .. ".low_res_masks"), TOL, name .. ": low-res logits, clamped")
  end
end

-- build_sam2's apply_postprocessing = False (CorrCLIP): no dynamic multimask
do
  local dir = "tests/fixtures/sam2-predictor"
  local model = models.load("sam", dir .. "/../methods/models/sam2-amg-tiny")
  local img = image.load(dir .. "/image.png")
  local ref = safetensors.open(dir .. "/ref.safetensors")
  local plain = predictor.new(model, { dynamic_multimask_via_stability = false })
  plain:set_image(img)
  -- point_single_b: token 0's stability 0.9786 < 0.98, so the reference
  -- (dynamic) took a multimask output; point_single: 0.9944, token 0 kept
  local _, iou_b = plain:predict({ points = { { 40.5, 30 } }, multimask = false })
  local _, iou_a = plain:predict({ points = { { 120, 60 } }, multimask = false })
  tap.ok(math.abs(iou_b:get(1) - ref:get("point_single_b.iou_predictions"):get(1)) > 1e-3,
         "dynamic multimask off: an unstable token 0 is kept (not the reference's multimask choice)")
  tap.near(iou_a, ref:get("point_single.iou_predictions"), TOL, "dynamic multimask off: a stable token 0 as before")
end

-- The predicted-IoU filter: masks for the kept prompts only, the same numbers
do
  local pts = T.from_table({ { { 5, 5 } }, { { 20, 10 } }, { { 40, 25 } }, { { 12, 28 } } })
  local _, iou_all, low_all = p:predict_batch(pts, nil, { masks = false, clamp = false })
  local function keep_2_and_4(iou_t)
    tap.eq(T.shape_string(iou_t:shape()), "[4, 3]", "the filter sees every prompt's returned IoUs")
    return { 2, 4 }
  end
  local none, iou_f, low_f, picked = p:predict_batch(pts, nil, { masks = false, clamp = false,
                                                                  mask_filter = keep_2_and_4 })
  tap.ok(none == nil and #picked == 2 and low_f:size(1) == 2, "mask_filter: masks of the 2 kept prompts")
  tap.eq((iou_f - iou_all):abs():max(), 0, "mask_filter: the IoUs of every prompt, unchanged")
  local want = T.cat({ low_all:narrow(1, 2, 1), low_all:narrow(1, 4, 1) }, 1)
  tap.eq((low_f - want):abs():max(), 0, "mask_filter: the kept prompts' masks equal the unfiltered ones")
  local _, _, _, p_single = p:predict_batch(pts, nil, { multimask = false, masks = false, mask_filter = keep_2_and_4 })
  tap.ok(p_single == nil, "mask_filter is ignored for a single mask chosen by stability (it needs every mask)")
end

local function sam_amg_setup_with_sam(params)
  local recipes = require("fmseg.method.recipes")
  local sam_amg = recipes.load("sam_amg")
  return sam_amg.setup(recipes.params(sam_amg, params), { sam = models.load("sam", "tests/fixtures/sam-alt") })
end

-- Recipes on SAM 2 --------------------------------------------------------------------------------

do
  local recipes = require("fmseg.method.recipes")
  local refine = recipes.load("sam_refine")
  local params = recipes.params(refine, { coarse = false })
  tap.raises(function() refine.setup(params, { sam = tiny }) end, "set params.mask_norm: channels",
             "sam_refine on SAM 2 asks for mask_norm channels (rows is Trident's quirk with SAM)")
  params.mask_norm, params.min_area, params.downsample = "channels", 10, 1
  local state = refine.setup(params, { sam = tiny })
  tap.eq(state.predictor.family, "sam2", "sam_refine builds SAM 2's predictor for a SAM 2 model")
  -- a coarse map of a wide image with probabilities: the mask prompt must
  -- fill SAM 2's square frame (SAM would pad its bottom rows)
  local h, w = 24, 48
  local labels = T.zeros({ h, w }, "int32")
  labels:narrow(1, 5, 16):narrow(2, 10, 30):fill(1)
  local probs = T.full({ 2, h, w }, 0.05)
  probs:select(1, 1):add_(labels:float():eq(0) * 0.9)
  probs:select(1, 2):add_(labels:float() * 0.9)
  local seen = {}
  local spy = setmetatable({
    predict_batch = function(self, pts, labs, opts)
      seen[#seen + 1] = opts
      return self.inner:predict_batch(pts, labs, opts)
    end,
  }, { __index = function(t, k)
    local v = t.inner[k]
    if type(v) == "function" then return function(_, ...) return v(t.inner, ...) end end
    return v
  end })
  spy.inner = state.predictor
  state.predictor:set_image(T.full({ h, w, 3 }, 90):byte())
  local res = refine.refine(spy, { labels = labels, probs = probs, nclasses = 2 }, params)
  tap.eq(T.shape_string(res.labels:shape()), "[24, 48]", "sam_refine on SAM 2: labels at the image's size")
  tap.diag(("%d decoder calls, %d records"):format(#seen, #res.records))
  local mi = seen[1] and seen[1].mask_input
  local side = mi and mi:size(4)
  tap.ok(mi and mi:select(1, 1):select(1, 1):narrow(1, side - 1, 2):abs():max() > 0,
         "the mask prompt reaches the frame's last rows (no padding: SAM 2 squashes the image)")
  tap.ok(seen[1] and seen[1].clamp == false, "the kept masks are made from unclamped low-res logits")
  -- sam_clip labels SAM 2's automatic masks with CLIP
  local sam_clip = recipes.load("sam_clip")
  local clip = models.load("clip", "tests/fixtures/methods/models/clip-b16-tiny")
  local cls = require("fmseg.method.classes").parse("cat\ndog\n", "test")
  local cp = recipes.params(sam_clip, { points_per_side = 4, pred_iou_thresh = 0, stability_score_thresh = 0,
                                        multimask_output = false })
  local cstate = sam_clip.setup(cp, { sam = tiny, clip = clip }, cls)
  tap.eq(cstate.generator.predictor.family, "sam2", "sam_clip's generator runs SAM 2")
  tap.eq(cstate.generator.opts.multimask_output, false, "sam_clip passes SAM 2's generator settings")
  local cres = sam_clip.segment(cstate, T.full({ 32, 48, 3 }, 120):byte())
  tap.eq(T.shape_string(cres.labels:shape()), "[32, 48]", "sam_clip on SAM 2: a label map at the image's size")
  tap.raises(function()
    sam_amg_setup_with_sam({ use_m2m = true })
  end, "use_m2m is a setting of SAM 2's generator", "sam_amg refuses SAM 2's settings for a SAM model")
  tap.raises(function()
    sam_amg_setup_with_sam({ dynamic_multimask_via_stability = false })
  end, "dynamic_multimask_via_stability is an option of SAM 2's predictor", "... and SAM 2's predictor options")
  local persam = recipes.load("persam")
  tap.raises(function() persam.setup(recipes.params(persam, {}), { sam = tiny }) end,
             "models.sam is SAM 2", "PerSAM refuses SAM 2")
end

os.exit(tap.done())
