-- `fmseg classify --model DIR IMAGE --labels "a cat,a dog"`: CLIP
-- zero-shot classification of one image with the checkpoint's own
-- preprocessing (preprocessor_config.json) and tokenizer; prints the
-- softmax over the labels of logits_per_image, most likely first.
local cli = require("fmseg.cli")

local M = {}

local function split_labels(s)
  local out = {}
  for item in s:gmatch("[^,]+") do
    item = item:gsub("^%s+", ""):gsub("%s+$", "")
    if item ~= "" then out[#out + 1] = item end
  end
  return out
end

local function parse(args)
  local opts, i = {}, 1
  while i <= #args do
    local a = args[i]
    if a == "--model" or a == "--labels" then
      local v = args[i + 1]
      if not v then error(("classify: %s needs a value"):format(a), 0) end
      opts[a:sub(3)] = v
      i = i + 2
    elseif a:sub(1, 2) == "--" then
      error(("classify: unknown option '%s'"):format(a), 0)
    elseif not opts.image then
      opts.image = a; i = i + 1
    else
      error(("classify: unexpected argument '%s'"):format(a), 0)
    end
  end
  local usage = ' (fmseg classify --model DIR IMAGE --labels "a cat,a dog")'
  if not opts.model then error("classify: no --model given" .. usage, 0) end
  if not opts.image then error("classify: no image given" .. usage, 0) end
  if not opts.labels then error("classify: no --labels given" .. usage, 0) end
  opts.labels = split_labels(opts.labels)
  if #opts.labels == 0 then error("classify: --labels is empty" .. usage, 0) end
  return opts
end

-- → { {label =, prob =}, ... } in the order of `labels`
function M.classify(model_dir, image_path, labels)
  local clip = require("fmseg.models.clip")
  local processor = require("fmseg.models.clip_processor").load(model_dir)
  local tokenizer = require("fmseg.tokenizer").load(model_dir)
  local model = clip.load(model_dir)
  local pixel_values = processor:preprocess(require("fmseg.image").load(image_path))
  local ids = tokenizer:encode_batch(labels, { context_length = model.text.config.max_position_embeddings })
  local logits = model:logits(model:get_image_features(pixel_values), model:get_text_features(ids))
  local probs = require("fmseg.nn").softmax(logits):select(1, 1):values()
  local out = {}
  for i, label in ipairs(labels) do out[i] = { label = label, prob = probs[i] } end
  return out
end

function M.run(args)
  local opts = parse(args)
  local result = M.classify(opts.model, opts.image, opts.labels)
  table.sort(result, function(a, b) return a.prob > b.prob end)
  print(("%s (%s)"):format(opts.image, opts.model))
  for _, r in ipairs(result) do print(("  %.4f  %s"):format(r.prob, r.label)) end
  return 0
end

cli.command("classify", 'classify --model DIR IMG --labels "a,b"',
            "CLIP zero-shot classification: label probabilities", M.run)

return M
