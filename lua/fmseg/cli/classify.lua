-- `fmseg classify --model DIR IMAGE --labels "a cat,a dog"`: CLIP
-- zero-shot classification of one image with the checkpoint's own
-- preprocessing (preprocessor_config.json) and tokenizer; prints the
-- softmax over the labels of logits_per_image, most likely first.
local args = require("fmseg.cli.args")

local M = {}

-- "a cat, a dog" → { "a cat", "a dog" }, or nil and why
local function split_labels(s)
  local out = {}
  for item in s:gmatch("[^,]+") do
    item = item:gsub("^%s+", ""):gsub("%s+$", "")
    if item ~= "" then out[#out + 1] = item end
  end
  if #out == 0 then return nil, "no labels in it" end
  return out
end

local parser = args.parser("classify", 'classify --model DIR IMAGE --labels "a cat,a dog"', {
  { "--model", metavar = "DIR", required = true, help = "CLIP model directory, or a hub id in the cache (fmseg fetch)" },
  { "--labels", metavar = "A,B,...", type = split_labels, required = true, help = "comma-separated labels" },
}, { { "image", required = true } })

-- → { {label =, prob =}, ... } in the order of `labels`
function M.classify(model_dir, image_path, labels)
  local clip = require("fmseg.models.clip")
  local processor = require("fmseg.models.clip_processor").load(model_dir)
  local tokenizer = require("fmseg.text.tokenizer").load(model_dir)
  local model = clip.load(model_dir)
  local pixel_values = processor:preprocess(require("fmseg.image").load(image_path))
  local ids = tokenizer:encode_batch(labels, { context_length = model.text.config.max_position_embeddings })
  local logits = model:logits(model:get_image_features(pixel_values), model:get_text_features(ids))
  local probs = require("fmseg.nn").softmax(logits):select(1, 1):values()
  local out = {}
  for i, label in ipairs(labels) do out[i] = { label = label, prob = probs[i] } end
  return out
end

function M.run(argv)
  local opts = parser:parse(argv)
  if not opts then return 0 end
  local result = M.classify(opts.model, opts.image, opts.labels)
  table.sort(result, function(a, b) return a.prob > b.prob end)
  print(("%s (%s)"):format(opts.image, opts.model))
  for _, r in ipairs(result) do print(("  %.4f  %s"):format(r.prob, r.label)) end
  return 0
end

M.usage = 'classify --model DIR IMG --labels "a,b"'
M.help = "CLIP zero-shot classification: label probabilities"

return M
