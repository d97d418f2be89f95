-- recipes/diffusion_crossattn.lua as DiffSegmenter: the official prompts
-- and token choice, compel's weighting, the classes-present step (the
-- official JSON and our CLIP), the background sweep through fmseg.eval.runs.
-- Whole runs against the official code: tests/fixtures/methods/
-- diffusion_crossattn-*/ (tests/tools/methods/diffsegmenter.py).
local tap = require("tap")
local T = require("fmseg.tensor")
local nn = require("fmseg.nn")
local json = require("fmseg.io.json")
local recipes = require("fmseg.method.recipes")

local R = recipes.load("diffusion_crossattn")
local SD = "tests/fixtures/methods/models/sd-diffsegmenter-tiny"
local CLIP = "tests/fixtures/methods/models/clip-b16-tiny"
local tok = require("fmseg.text.tokenizer").load(SD .. "/tokenizer")

local function params(over)
  local p = {}
  for k, v in pairs(R.defaults) do p[k] = v end
  for k, v in pairs(over or {}) do p[k] = v end
  return p
end

-- Prompts ---------------------------------------------------------------------------

do
  -- VOC (ptp_stable_best.py): prompt + "++" + the caption's tail; token 4
  local p = params()
  local cp = R.class_prompt(tok, p, "cat")
  tap.ok(cp.text == "a photograph of cat++" and cp.before == "a photograph of " and cp.word == "cat"
         and cp.after == "" and cp.first == 4 and cp.last == 4 and not cp.ing,
         "VOC prompt without a caption: 'a photograph of cat++', token 4", cp.text)
  cp = R.class_prompt(tok, p, "cat", "a photograph of cat sitting on a mat")
  tap.ok(cp.text == "a photograph of cat++ sitting on a mat" and cp.word == "cat"
         and cp.after == " sitting on a mat" and cp.ing, "VOC prompt with a caption: the next word ends in 'ing'",
         cp.text)
  cp = R.class_prompt(tok, p, "cat", "a photograph of cat on a mat")
  tap.ok(not cp.ing, "no 'ing' word after the class: one token")
  -- Context / COCO: the caption's word at the class's last word gets "++"
  local q = params({ prompt = "a photography of {}", emphasis_style = "last_word", token = "last", ing_offset = 2 })
  cp = R.class_prompt(tok, q, "traffic light", "a photography of traffic light standing in the rain")
  tap.ok(cp.text == "a photography of traffic light++ standing in the rain" and cp.word == "light"
         and cp.before == "a photography of traffic " and cp.first == 4 and cp.last == 5 and cp.ing,
         "COCO prompt: 'light++', tokens 4-5 (3 + embs_len = 5), 'standing' ends in ing", cp.text)
  cp = R.class_prompt(tok, q, "teddy bear")
  tap.ok(cp.text == "a photography of teddy bear++" and cp.last == 5 and not cp.ing,
         "COCO prompt without a caption", cp.text)
  tap.raises(function() R.class_prompt(tok, q, "cat", "a cat") end, "has no word",
             "a caption too short for the class's word is refused")
  local none = R.class_prompt(tok, params({ emphasis = 0 }), "cat")
  tap.ok(none.text == "a photograph of cat" and none.word == "" and none.before == "a photograph of cat",
         "emphasis 0: no '+', no weighted word")

  -- compel's ids: [bos] + fragments + [eos] + pad; the word's tokens × 1.1²
  cp = R.class_prompt(tok, q, "traffic light")
  local ids, wts = R.weighted_ids(tok, cp, 77)
  local want = tok:encode("a photography of traffic light")
  local same = #ids == 77
  for i, id in ipairs(want) do same = same and ids[i] == id end
  for i = #want + 1, 77 do same = same and ids[i] == tok.pad_id end
  tap.ok(same, "weighted ids: the prompt's ids without '++', padded with the pad token")
  local w_ok = true
  for i = 1, 77 do w_ok = w_ok and math.abs(wts[i] - ((i == 6) and 1.1 ^ 2 or 1)) < 1e-12 end
  tap.ok(w_ok, "weight 1.1² on 'light' (token 5) only, 1 elsewhere (bos, eos and padding too)")
end

-- compel's weighting of the embedding --------------------------------------------------

local sd = require("fmseg.models.sd")
local pipe = sd.load(SD)
do
  local p = params()
  local cp = R.class_prompt(tok, p, "dog")
  local ids, wts = R.weighted_ids(tok, cp, 77)
  local got = R.weighted_embedding(pipe, ids, wts)
  local z = pipe:encode_prompt(T.from_table({ ids }, "int32"))
  local e = { tok.bos_id, tok.eos_id }
  while #e < 77 do e[#e + 1] = tok.pad_id end
  local empty = pipe:encode_prompt(T.from_table({ e }, "int32"))
  local zt, et, gt = z:totable()[1], empty:totable()[1], got:totable()[1]
  local worst = 0
  for i = 1, 77 do
    for d = 1, #zt[i] do
      local want = et[i][d] + (zt[i][d] - et[i][d]) * wts[i]
      worst = math.max(worst, math.abs(gt[i][d] - want))
    end
  end
  tap.ok(worst < 1e-6, "empty_z + (z − empty_z) × weight, per token", worst)
  tap.near(got:narrow(2, 1, 4), z:narrow(2, 1, 4), 1e-6, "tokens of weight 1 keep the encoder's output (up to rounding)")
end

-- Classes present -----------------------------------------------------------------------

do
  local tmp = os.tmpname()
  local f = io.open(tmp, "w")
  f:write(json.encode({
    image_similarity = { ["/root/VOC2012/JPEGImages/2007_000033.jpg"] = { "plane" }, ["2007_000042.jpg"] = { "train" } },
    text_similarity = { ["/root/VOC2012/JPEGImages/2007_000033.jpg"] = { "people", "plane" } },
    synonym_matching = { ["2007_000042.jpg"] = { "boat" } },
  }))
  f:close()
  local got = R.read_predictions(tmp, { "image_similarity", "text_similarity" })
  tap.ok(got["2007_000033.jpg"].plane and got["2007_000033.jpg"].people and got["2007_000042.jpg"].train
         and not got["2007_000042.jpg"].boat, "read_json: the union of the chosen lists, by file name")
  tap.raises(function() R.read_predictions(tmp, { "nope" }) end, "no list", "an unknown list is refused")
  os.remove(tmp)
end

local clip_dir = io.open(CLIP .. "/config.json") and CLIP
if clip_dir then
  local classes = require("fmseg.method.classes")
  local cls = classes.load and classes.load("tests/fixtures/methods/diffusion_crossattn-voc/classes.txt")
  local image = require("fmseg.image")
  local img = image.load("tests/fixtures/methods/diffusion_crossattn-voc/2007_000123.png")
  local cfg = { models = { clip = clip_dir, sd = SD }, data = { background = 0 } }
  local models = { sd = pipe }
  local state = R.setup(params({ present_classes = "clip", present_threshold = 1 }), models, cls, cfg)
  local idx, cos = R.clip_present(state, img)
  -- our own cosines: processor, image features, the template's text features
  local clip = require("fmseg.models").load("clip", clip_dir)
  local proc = require("fmseg.models.clip_processor").load(clip_dir)
  local f = nn.normalize(clip:get_image_features(proc:preprocess(img)))
  local ctok = require("fmseg.text.tokenizer").load(clip_dir)
  local rows_p = ctok:encode_batch((function()
    local t = {}
    for i, n in ipairs(state.names) do t[i] = "a photo of a " .. n .. "." end
    return t
  end)())
  local text = nn.normalize(clip:get_text_features(rows_p))
  local want = f:matmul(text, false, true):values()
  local worst, best = 0, 1
  for i = 1, #want do
    worst = math.max(worst, math.abs(want[i] - cos[i]))
    if want[i] > want[best] then best = i end
  end
  tap.ok(worst < 1e-5, "clip step: cosine of the image and 'a photo of a {}.' embeddings", worst)
  tap.ok(#idx == 1 and idx[1] == best, "threshold 1: the best class only", table.concat(idx, ","))
  state.clip.threshold = -math.huge
  idx = R.clip_present(state, img)
  -- (a ratio to the best needs a positive best; this random CLIP's may not be)
  tap.eq(#idx, want[best] > 0 and #state.names or 1, "threshold -inf: every class (a positive best cosine)")
  state.clip.threshold = 0.97
  idx = R.clip_present(state, img)
  local rule = true
  for i = 1, #want do
    local keep = false
    for _, j in ipairs(idx) do keep = keep or j == i end
    local should = want[best] > 0 and want[i] / want[best] >= 0.97 or i == best
    rule = rule and keep == should
  end
  tap.ok(rule, "threshold 0.97: cosine / best cosine ≥ 0.97 (the best always kept)")
  tap.raises(function() R.setup(params({ present_classes = "clip" }), models, cls, { data = { background = 0 } }) end,
             "needs models.clip", "the clip step without models.clip is refused")
else
  tap.skip("clip present step", CLIP .. " missing")
end

-- Background sweep ------------------------------------------------------------------------

do
  local classes = require("fmseg.method.classes")
  local cls = classes.load("tests/fixtures/methods/diffusion_crossattn-voc/classes.txt")
  local image = require("fmseg.image")
  local img = image.load("tests/fixtures/methods/diffusion_crossattn-voc/2007_000123.png")
  local p = params({ present_classes = "all", background = true, image_size = 128, bg_threshold = 0.5,
                     bg_sweep = { 0.3, 0.5, 0.9 } })
  local state = R.setup(p, { sd = pipe }, cls, nil)
  local res = R.segment(state, img, nil, { path = "x.png" })
  tap.ok(res.sweep and res.sweep.param == "bg_threshold" and #res.sweep.values == 3, "result.sweep over bg_threshold")
  local at = res.sweep.labels(0.5)
  tap.near(at, res.labels, 0, "the sweep's labels at the config's threshold are the result's")
  local fg = res.scores:narrow(1, 2, res.scores:size(1) - 1)
  for _, v in ipairs({ 0.3, 0.9 }) do
    local s = T.cat({ T.full({ 1, img:size(1), img:size(2) }, v), fg }, 1)
    tap.near(res.sweep.labels(v), s:argmax(1), 0, ("labels at %.1f: argmax with background %.1f (ties to it)"):format(v, v))
  end

  -- totals: each value's mIoU, the best as the official picks it
  local runs = require("fmseg.eval.runs")
  local ev = require("fmseg.eval")
  local gt = res.sweep.labels(0.5)
  local k = res.scores:size(1)
  local recs = {}
  for r = 1, 2 do
    local e = {}
    for j, v in ipairs(res.sweep.values) do e[j] = ev.image_entries(res.sweep.labels(v), gt, k, 255) end
    recs[r] = { sweep = { param = "bg_threshold", values = res.sweep.values, pick = "first", entries = e } }
  end
  local sw = runs.sweep_record(k, recs)
  local want = {}
  for j, v in ipairs(res.sweep.values) do
    local st = ev.stats(k)
    ev.add(st, ev.image_entries(res.sweep.labels(v), gt, k, 255))
    want[j] = ev.metrics(st).mIoU
  end
  local same = true
  for j = 1, 3 do same = same and math.abs(sw.mIoU[j] - want[j]) < 1e-12 end
  tap.ok(same and sw.best == 0.5 and math.abs(sw.best_mIoU - 1) < 1e-12,
         "sweep record: per-value mIoU; the best is the ground truth's own threshold", json.encode(sw.mIoU))
  -- equal maxima: "first" keeps the first, "last" (COCO's >=) the last
  local flat = { { sweep = { param = "t", values = { 1, 2, 3 }, pick = "first", entries = { {}, {}, {} } } } }
  local e1 = ev.image_entries(gt, gt, k, 255)
  flat[1].sweep.entries = { e1, e1, e1 }
  tap.eq(runs.sweep_record(k, flat).best, 1, "ties: pick first")
  flat[1].sweep.pick = "last"
  tap.eq(runs.sweep_record(k, flat).best, 3, "ties: pick last")
  local text = runs.summary_text({ task = "semantic", classes = {}, IoU = {}, Acc = {}, aAcc = 1, mIoU = 1, mAcc = 1,
                                   sweep = sw })
  tap.ok(text:find("Sweep of bg_threshold", 1, true) and text:find("Best bg_threshold 0.5: mIoU 100.00", 1, true),
         "the summary reports the sweep and its best", text)
end

-- The shipped configs (VOC, Context, COCO-Object as the official scripts
-- have them) resolve: parameters the recipe takes, one class line per
-- dataset class, the official class names, the official sweep.
do
  local config = require("fmseg.io.config")
  local classes_mod = require("fmseg.method.classes")
  local want = {
    voc21 = { n = 21, prompt = "a photograph of {}", style = "append", token = "first", ing = 1, pick = "first",
              probe = { [7] = "buses", [16] = "people" } },
    context60 = { n = 60, prompt = "a photography of {}", style = "last_word", token = "last", ing = 1, pick = "first",
                  probe = { [2] = "airplane", [56] = "monitor" } },
    coco_object = { n = 81, prompt = "a photography of {}", style = "last_word", token = "last", ing = 2, pick = "last",
                    probe = { [6] = "aeroplane", [81] = "toothbrus" } },
  }
  for ds, w in pairs(want) do
    local path = ("configs/diffusion_crossattn/diffusion_crossattn_sd15_%s.yaml"):format(ds)
    local ok, err = pcall(function()
      local cfg = config.load(path)
      local p = recipes.params(R, config.get(cfg, "params", {}))
      local names = classes_mod.from_config(config.get(cfg, "classes")).names
      assert(#names == w.n and config.get(cfg, "data.num_classes") == w.n, "class count " .. #names)
      for i, n in pairs(w.probe) do assert(names[i] == n, ("class %d is %s, want %s"):format(i, names[i], n)) end
      assert(p.prompt == w.prompt and p.emphasis_style == w.style and p.token == w.token and p.ing_offset == w.ing
             and p.bg_sweep_pick == w.pick, "prompt / token params")
      assert(p.timestep == 100 and p.emphasis == 2 and p.present_threshold == 0.97, "t, ++, 0.97")
      assert(#p.bg_sweep == 45 and math.abs(p.bg_sweep[1] - 0.30) < 1e-12 and math.abs(p.bg_sweep[45] - 0.74) < 1e-12,
             "sweep 0.30..0.74")
      assert(config.get(cfg, "models.clip"), "models.clip for the present-classes step")
    end)
    tap.ok(ok, path .. " resolves as the official " .. ds .. " script runs", err)
  end
end

os.exit(tap.done())
