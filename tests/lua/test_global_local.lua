-- Global-Local CLIP (recipes/global_local.lua) as `fmseg eval` runs it on
-- a referring dataset, against the official Zero-shot-RIS script's own
-- loop (tests/fixtures/global_local-refer/official.json, made by
-- tests/tools/methods/global_local.py on the tiny CLIP and SAM with SAM's
-- masks as the proposals): per sentence the intersection and union its
-- Compute_IoU added and the noun phrase its extract_noun_phrase found;
-- per dataset (RefCOCO: v = 0.95, RefCOCOg: v = 0.85) the oIoU and mIoU, and
-- the line the script wrote. Then the noun-phrase finder on its own, the
-- `noun_phrases` table, and misconfiguration refused before any image.
local tap = require("tap")
local tiny = require("tiny_data")
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")
local json = require("fmseg.io.json")
local np = require("fmseg.text.noun_phrase")
local runs = require("fmseg.eval.runs")
local segment = require("fmseg.method.segment")
local T = require("fmseg.tensor")

local ROOT = core.root
local FIX = ROOT .. "/tests/fixtures/global_local-refer"
local MODELS = ROOT .. "/tests/fixtures/methods/models"
local official = json.decode(tiny.read(FIX .. "/official.json"))
local tmp = tiny.tmpdir("global_local")

local function amg_params()
  local keys = {}
  for k in pairs(official.amg) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = ("    %s: %s"):format(k, tostring(official.amg[k])) end
  return table.concat(out, "\n")
end

local function write_config(dataset, split_by, v, extra)
  local path = ("%s/%s.yaml"):format(tmp, dataset)
  tiny.write(path, table.concat({
    "data:", "  name: " .. dataset .. "_val", "  task: referring", "  layout: refer", "  root: " .. FIX,
    "  dataset: " .. dataset, "  split_by: " .. split_by, "  split: val",
    "recipe: global_local", "params:", "  v: " .. v, "  r: 0.5", "  masking_block: 9",
    extra or "",
    "models:", "  clip: " .. MODELS .. "/clip-b16-tiny12", "  sam: " .. MODELS .. "/sam-amg-tiny",
    "regions:", "  recipe: sam_amg", "  params:", amg_params(), "    output_mode: binary_mask", "",
  }, "\n"))
  return path
end

-- ---- against the official loop -----------------------------------------------------

for _, case in ipairs({ { "refcoco", "unc", 0.95 }, { "refcocog", "umd", 0.85 } }) do
  local dataset, split_by, v = case[1], case[2], case[3]
  local want = official.datasets[dataset]
  local cfg_path = write_config(dataset, split_by, v)
  local cfg = config.load(cfg_path)
  local ds = data.open(cfg)
  local session = segment.session(cfg)
  local differ, phrases = {}, 0
  for i, item in ipairs(ds.items) do
    local w = want.sentences[item.id]
    local rec = runs.score_referring(ds, i, session, true)
    if not w or rec.intersection ~= w.intersection or rec.union ~= w.union then
      differ[#differ + 1] = ("%s: I %s U %s, official %s %s"):format(item.id, tostring(rec.intersection),
        tostring(rec.union), tostring(w and w.intersection), tostring(w and w.union))
    end
    local sentence, phrase = require("fmseg.method.recipes").load("global_local").texts(session.state, item.raw)
    if w and sentence == w.sentence and phrase == w.noun_phrase then phrases = phrases + 1 end
  end
  tap.eq(#ds.items, 5, dataset .. ": every sentence of the split")
  tap.eq(#differ, 0, dataset .. ": every sentence's intersection and union equal the official loop's",
         table.concat(differ, "; "))
  tap.eq(phrases, #ds.items, dataset .. ": the sentence as encoded and its noun phrase equal the official ones")

  local rec = runs.evaluate({ config = cfg_path, out = tmp .. "/run-" .. dataset, quiet = true })
  tap.near(rec.oIoU, want.oIoU, 1e-12, ("%s: oIoU %.4f as the official loop's"):format(dataset, want.oIoU))
  tap.near(rec.mIoU, want.mIoU, 1e-12, ("%s: mIoU %.4f as the official loop's"):format(dataset, want.mIoU))
  tap.eq(("%.2f / %.2f"):format(100 * rec.oIoU, 100 * rec.mIoU), want.log,
         dataset .. ": the line the official script wrote (overall / mean IoU)")
end

-- the ref whose two polygons overlap: the overlap (summed to 2) is not the object
do
  local ds = data.open(config.load(write_config("refcoco", "unc", 0.95)))
  local m = ds:mask(3)
  tap.eq(m:get(61, 161), 0, "ReferDataset's ref_mask == 1: where two polygons overlap is background")
  tap.eq(m:get(21, 121), 1, "and either polygon alone is the object")
end

-- ---- the noun phrase ---------------------------------------------------------------

tap.eq(table.concat(np.words("Woman's bag, right."), "|"), "Woman|'s|bag|,|right|.",
       "words: punctuation and clitics split off as spaCy does")
tap.eq(table.concat(np.words("don't (left)"), "|"), "do|n't|(|left|)", "words: n't and brackets")
for _, c in ipairs({
  { "the man in a red shirt on the left", "the man", "up to the first preposition" },
  { "the dog is lying on the grass", "the dog", "up to the auxiliary (the root is the verb: its subject)" },
  { "cat sleeping on the sofa", "cat", "up to a participle after the noun" },
  { "standing man", "standing man", "a participle before the noun stays" },
  { "the building behind the tree", "the building", "-ing nouns are nouns" },
  { "on the left", "the left", "a leading preposition: the chunk after it" },
  { "second from left", "second from left", "ordinals and positions alone: the whole sentence" },
  { "that man on the right", "that man", "a leading determiner 'that'" },
  { "woman 's bag , right", "woman 's bag", "a possessive inside the chunk" },
}) do
  tap.eq(np.head(c[1]), c[2], "head: " .. c[3])
end

-- ---- the phrase table and misconfiguration ---------------------------------------------

local phrases = tmp .. "/phrases.json"
tiny.write(phrases, '{"The man in a red shirt on the left.": "red shirt"}')
local cfg = config.load(write_config("refcoco", "unc", 0.95, "  noun_phrases: " .. phrases))
local session = segment.session(cfg)
local gl = require("fmseg.method.recipes").load("global_local")
local _, phrase = gl.texts(session.state, "the man in a red shirt on the LEFT .")
tap.eq(phrase, "red shirt", "noun_phrases: the table's phrase, keys matched as the sentences are split")
tap.raises(function() gl.texts(session.state, "a sentence not in it") end,
           'sentence "a sentence not in it" is not in noun_phrases', "a sentence missing from the table is named")
tap.raises(function() segment.session(config.load(write_config("refcoco", "unc", 0.95,
             "  noun_phrases: " .. tmp .. "/none.json"))) end, "none.json not found",
           "a missing phrase table is named at setup")
tap.raises(function() segment.session(config.load(write_config("refcoco", "unc", 0.95), { "params.masking_block=12" }))
           end, "params.masking_block = 12, the vision tower has blocks 0..11",
           "a masking block beyond the model's depth is refused at setup, naming the key")
tap.raises(function()
  local bad = config.load(write_config("refcoco", "unc", 0.95))
  bad.regions = nil
  segment.session(bad)
end, "needs `regions`", "no mask source: refused at setup")
tap.raises(function() session:segment(require("fmseg.image").load(FIX .. "/images/mscoco/images/train2014/"
             .. "COCO_train2014_000000000042.jpg"), { path = "x" }) end, "reads an expression",
           "no expression: the recipe says it reads one")

-- one expression on one photo from the command line: the chosen proposal
-- written as the outputs, the recipe's tensors dumped (its strings left out)
do
  local image_path = FIX .. "/images/mscoco/images/train2014/COCO_train2014_000000000042.jpg"
  local cfg_path = write_config("refcoco", "unc", 0.95)
  local out, dump = tmp .. "/cli", tmp .. "/cli.safetensors"
  local rc, text = tiny.run(("%s/fmseg segment %s %s -o %s --dump %s --expression %q"):format(ROOT, cfg_path,
    image_path, out, dump, "The man in a red shirt on the left."))
  tap.eq(rc, 0, "fmseg segment --expression runs a referring recipe", text)
  local st = require("fmseg.io.safetensors").open(dump)
  local want = official.datasets.refcoco.sentences["1000"]
  tap.eq(st:get("index"):get(1), want.index, "the dump holds the official choice for that sentence")
  tap.ok(not st:has("sentence") and not st:has("noun_phrase"), "the recipe's strings stay out of the dump")
  tap.ok(tiny.read(out .. "/COCO_train2014_000000000042.json") ~= nil, "the outputs are written")
  local rc2, text2 = tiny.run(("%s/fmseg segment %s %s -o %s"):format(ROOT, cfg_path, image_path, out))
  tap.ok(rc2 ~= 0 and text2:find("reads an expression", 1, true) ~= nil,
         "without --expression the image fails, saying what is missing", text2)
end

-- a referring recipe on a dataset without expressions: refused before any image
do
  local root = tmp .. "/cityscapes"
  tiny.write_layout(root, { images = "leftImg8bit/val", image_suffix = "_leftImg8bit.png", annotations = "gtFine/val",
                            annotation_suffix = "_gtFine_labelIds.png", grey = true },
                    { { id = "a/a_000000_000001", img = tiny.paint(4, 6), gt = T.zeros({ 4, 6 }, "int32") } })
  local path = tmp .. "/semantic.yaml"
  tiny.write(path, (tiny.read(write_config("refcoco", "unc", 0.95)):gsub("data:.-\nrecipe:", "_base_: "
    .. ROOT .. "/configs/_base_/datasets/cityscapes27.yaml\nrecipe:")))
  tap.raises(function() runs.evaluate({ config = path, data = root, out = tmp .. "/semantic", quiet = true }) end,
             "cityscapes27 is not a referring dataset", "a referring recipe on a semantic dataset is refused")
end

tiny.rm(tmp)
os.exit(tap.done())
