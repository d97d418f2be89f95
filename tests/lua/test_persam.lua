-- test_persam.lua — PerSAM's two decoder options on the tiny PerSAM model
-- (tests/fixtures/methods/models/sam-persam-tiny): off they change nothing,
-- neutral values change nothing, each one on changes the masks, misuse is
-- refused; PerSAM-F's hand-written loss gradient against finite
-- differences and its fitting on a problem with a known answer; how
-- `fmseg segment` reports PerSAM's errors (a bad reference stops the run
-- naming the file and the cause; a bad image is named and skipped, the
-- others finish). The whole recipes against the official code:
-- tests/fixtures/methods/persam*-* (test_method_fixtures.lua).
local tap = require("tap")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local recipes = require("fmseg.method.recipes")
local sam = require("fmseg.models.sam")
local T = require("fmseg.tensor")
local viz = require("fmseg.viz")

local MODEL = "tests/fixtures/methods/models/sam-persam-tiny"
local model = sam.load(MODEL)
local persam = recipes.load("persam")
local persam_f = recipes.load("persam_f")

local function maxdiff(a, b) return (a - b):abs():max() end

-- ---- decoder options ----------------------------------------------------------------

do
  local pred = require("fmseg.sam.predictor").new(model)
  local img = T.rand({ 48, 64, 3 }, 3):mul_(255):byte()
  pred:set_image(img)
  local s = model.config.prompt.image_embedding_size
  local c = model.config.decoder.hidden_size
  local prompt = { points = { { 20, 10 }, { 50, 40 } }, labels = { 1, 0 }, multimask = true, return_logits = true }
  local function with(extra)
    local p = {}
    for k, v in pairs(prompt) do p[k] = v end
    for k, v in pairs(extra) do p[k] = v end
    local m, iou = pred:predict(p)
    return m, iou
  end
  local base, base_iou = with({})
  local m = with({ attention_similarity = nil, target_embedding = nil })
  tap.ok(maxdiff(m, base) == 0, "decoder options absent: the same masks")
  m = with({ target_embedding = T.zeros({ c }) })
  tap.ok(maxdiff(m, base) == 0, "target_embedding of zeros: the same masks, bit for bit")
  m = with({ attention_similarity = T.full({ s, s }, 0.7) })
  local m0 = with({ attention_similarity = T.zeros({ s, s }) })
  tap.ok(maxdiff(m, m0) < 1e-5 * m0:abs():max() and maxdiff(m0, base) > 1e-3,
         "attention_similarity: a second softmax over the probabilities (softmax(p + c) = softmax(p) != p)",
         maxdiff(m, m0))
  local ml = with({ attention_similarity = T.full({ s, s }, 0.7), attention_similarity_mode = "logits" })
  tap.ok(maxdiff(ml, base) < 1e-5 * base:abs():max(),
         "attention_similarity_mode = logits (transformers 5): a constant added to the scores changes nothing",
         maxdiff(ml, base))
  local sim = T.rand({ s, s }, 5)
  ml = with({ attention_similarity = sim, attention_similarity_mode = "logits" })
  local mp = with({ attention_similarity = sim })
  tap.ok(maxdiff(ml, base) > 1e-3 and maxdiff(ml, mp) > 1e-3,
         "attention_similarity_mode = logits: a varying map changes the masks, not as the probabilities mode does")
  tap.raises(function() with({ attention_similarity = sim, attention_similarity_mode = "scores" }) end,
             "must be probabilities or logits", "an unknown attention_similarity_mode is refused")
  m = with({ attention_similarity = sim })
  tap.ok(maxdiff(m, base) > 1e-3, "a varying attention_similarity changes the masks", maxdiff(m, base))
  local m4 = with({ attention_similarity = sim:reshape(1, 1, 1, s * s) })
  tap.ok(maxdiff(m4, m) == 0, "attention_similarity as (1, 1, 1, h*w), PerSAM's attn_sim shape: the same")
  local target = T.randn({ c }, 6)
  local mt = with({ target_embedding = target })
  tap.ok(maxdiff(mt, base) > 1e-3, "a target_embedding changes the masks", maxdiff(mt, base))
  local mh = with({ target_embedding = target, target_embedding_final = false })
  tap.ok(maxdiff(mh, mt) > 1e-6 and maxdiff(mh, base) > 1e-3,
         "target_embedding_final = false (transformers' form) differs from Personalize-SAM's", maxdiff(mh, mt))
  tap.raises(function() with({ attention_similarity = T.zeros({ 10 }) }) end, "attention_similarity [10]",
             "an attention_similarity of the wrong size is refused, naming its shape")
  tap.raises(function() with({ target_embedding = T.zeros({ c + 1 }) }) end, ("expected %d values"):format(c),
             "a target_embedding of the wrong size is refused")
  -- the batched path takes them too (one similarity for all prompts)
  local pts = T.from_table({ { { 20, 10 }, { 50, 40 } }, { { 30, 20 }, { 5, 5 } } })
  local lab = T.from_table({ { 1, 0 }, { 1, 0 } })
  local mb = pred:predict_batch(pts, lab, { attention_similarity = sim, target_embedding = target,
                                            return_logits = true })
  local m1 = with({ attention_similarity = sim, target_embedding = target })
  tap.ok(maxdiff(mb:select(1, 1), m1) < 1e-5 * m1:abs():max(), "predict_batch with the options: row 1 = predict")
  tap.ok(base_iou:numel() == 3, "multimask IoU predictions")
end

-- ---- the fixture exercises both options ---------------------------------------------------

do
  local dir = "tests/fixtures/methods/persam-wide"
  local meta = json.decode(fs.read(dir .. "/method.json"))
  local ref = require("fmseg.io.safetensors").open(dir .. "/ref.safetensors")
  local want = ref:get("step1_low_res")
  local params = { ref_image = dir .. "/" .. meta.params.ref_image, ref_mask = dir .. "/" .. meta.params.ref_mask,
                   output = "semantic" }
  local st = persam.setup(params, { sam = model })
  local pred = st.predictor
  local img = image.load(dir .. "/image.png")
  pred:set_image(img)
  local sim = persam.location(pred, st.target, { img:size(1), img:size(2) })
  local pos, neg = persam.select_points(sim)
  local attn = persam.attention_similarity(sim, 64, 64)
  local function step1(o)
    local p = { points = { pos, neg }, labels = { 1, 0 }, multimask = false }
    for k, v in pairs(o) do p[k] = v end
    local _, _, low = pred:predict(p)
    return tap.rel_err(low, want)
  end
  local both = step1({ attention_similarity = attn, target_embedding = st.target_embedding })
  local no_attn = step1({ target_embedding = st.target_embedding })
  local no_target = step1({ attention_similarity = attn })
  local hf_final = step1({ attention_similarity = attn, target_embedding = st.target_embedding,
                           target_embedding_final = false })
  tap.ok(both < 1e-4 and no_attn > 1e-3 and no_target > 1e-3 and hf_final > 1e-3,
         "persam-wide's step 1 needs both options (and the target in the final attention)",
         ("with both %.2g, without the similarity %.2g, without the target %.2g, target not in the final "
          .. "attention %.2g"):format(both, no_attn, no_target, hf_final))
  tap.diag(("persam-wide step 1 vs the official: both options %.2g; without the similarity %.2g; "
    .. "without the target %.2g; transformers' final attention %.2g"):format(both, no_attn, no_target, hf_final))
end

-- ---- PerSAM-F's loss and fitting -------------------------------------------------------

do
  -- three logit maps; the mask is where the second is positive
  local n = 400
  local L = T.randn({ 3, n }, 11):mul_(3)
  local t = L:select(1, 2):gt(0):float()
  local w = { 0.2, 0.5, 0.3 }
  local terms = persam_f.loss_terms(t)
  local loss, g = persam_f.loss_and_grad(L, terms, w)
  local worst = 0
  for k = 1, 3 do
    local e = 1e-3
    local wp, wm = { w[1], w[2], w[3] }, { w[1], w[2], w[3] }
    wp[k], wm[k] = w[k] + e, w[k] - e
    local fd = (persam_f.loss_and_grad(L, terms, wp) - persam_f.loss_and_grad(L, terms, wm)) / (2 * e)
    worst = math.max(worst, math.abs(fd - g[k]) / math.max(math.abs(fd), 1e-3))
  end
  tap.ok(worst < 1e-2, "persam_f: dice + focal gradient = finite differences", worst)
  tap.ok(loss > 0 and loss < 2, "persam_f: a finite loss", loss)
  local weights, last = persam_f.fit_weights(L, t, 1e-2, 300)
  tap.ok(weights[2] > weights[1] and weights[2] > weights[3] and last < loss,
         "persam_f: fitting moves the weight to the map that is the mask", table.concat(weights, ", "))
  tap.ok(math.abs(weights[1] + weights[2] + weights[3] - 1) < 1e-6, "persam_f: the weights sum to 1")
end

-- ---- errors through `fmseg segment` ------------------------------------------------------

local tmp = os.tmpname()
os.remove(tmp)
fs.mkdir_p(tmp)

local function fmseg(args)
  local log = tmp .. "/log"
  local rc = os.execute(("./fmseg segment %s > %s 2>&1"):format(args, log))
  return (rc == 0 or rc == true) and 0 or 1, fs.read(log) or ""
end

do
  local h, w = 60, 80
  local img = T.rand({ h, w, 3 }, 21):mul_(255):byte()
  image.save_png(tmp .. "/a.png", img)
  image.save_png(tmp .. "/b.png", T.rand({ 50, 70, 3 }, 22):mul_(255):byte())
  local f = assert(io.open(tmp .. "/broken.png", "wb"))
  f:write("not a png")
  f:close()
  local mask = T.zeros({ h, w }, "int32")
  mask:narrow(1, 15, 30):narrow(2, 20, 40):fill(1)
  viz.save_labels(tmp .. "/mask.png", mask)                     -- PerSeg's form: palette index 1, (128, 0, 0)
  viz.save_labels(tmp .. "/empty.png", T.zeros({ h, w }, "int32"))
  local mimg = persam.load_mask(tmp .. "/mask.png")
  mimg = mimg:float()
  tap.ok(mimg:size(3) == 3 and mimg:select(3, 1):max() == 128 and mimg:select(3, 2):max() == 0,
         "persam: a palette mask is read as its colours, as cv2 reads it (index 1: (128, 0, 0))")
  local base = (" --set models.sam=%s --set params.ref_image=%s/a.png"):format(MODEL, tmp)
  for _, cfg in ipairs({ "persam_vith", "persam_f_vith" }) do
    local extra = cfg == "persam_f_vith" and " --set params.epochs=20" or ""
    local rc, log = fmseg(("configs/persam/%s.yaml %s/a.png %s/b.png%s --set params.ref_mask=%s/empty.png%s -o %s/e")
      :format(cfg, tmp, tmp, base, tmp, extra, tmp))
    tap.ok(rc == 1 and log:find("empty.png", 1, true) and log:find("covers no cell", 1, true),
           cfg .. ": an empty reference mask stops the run, naming the mask file and the cause", log)
    rc, log = fmseg(("configs/persam/%s.yaml %s/a.png %s/broken.png %s/b.png%s --set params.ref_mask=%s/mask.png%s -o %s/%s")
      :format(cfg, tmp, tmp, tmp, base, tmp, extra, tmp, cfg))
    local a = fs.exists(("%s/%s/a.json"):format(tmp, cfg)) and json.decode(fs.read(("%s/%s/a.json"):format(tmp, cfg)))
    tap.ok(rc == 1 and log:find("broken.png: ", 1, true) and fs.exists(("%s/%s/b.png"):format(tmp, cfg))
           and a and a.kind == "instances" and #a.instances == 1,
           cfg .. ": an unreadable image is named with the cause, the others finish", log)
  end
  local rc, log = fmseg(("configs/persam/persam_f_vith.yaml %s/a.png%s --set params.ref_mask=%s/mask.png "
    .. "--set params.epochs=0 -o %s/f0"):format(tmp, base, tmp, tmp))
  tap.ok(rc == 1 and log:find("epochs must be a positive integer", 1, true), "persam_f: epochs = 0 is refused", log)
end

os.execute("rm -rf " .. fs.quote(tmp))
os.exit(tap.done())
