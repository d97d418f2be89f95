-- CLIP: parity with transformers' CLIPModel on clip-tiny, fp16 weights,
-- loader errors, the block pieces recipes use, the image processor and
-- zero-shot classification.
local tap = require("tap")
local clip = require("fmseg.models.clip")
local clip_processor = require("fmseg.models.clip_processor")
local hf = require("fmseg.io.hf")
local image = require("fmseg.image")
local nn = require("fmseg.nn")
local parity = require("fmseg.parity")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")

-- Processor geometry (no fixtures needed) ----------------------------------------

local proc = clip_processor.new({ size = { shortest_edge = 64 }, crop_size = { height = 64, width = 64 } })
local h, w = proc:output_size(100, 200)
tap.ok(h == 64 and w == 128, "shortest edge of a wide image goes to 64, the long one scales",
       ("got %dx%d"):format(h, w))
h, w = proc:output_size(201, 100)
tap.ok(h == 128 and w == 64, "tall image: long side truncated like int()", ("got %dx%d"):format(h, w))
local old = clip_processor.new({ size = 224, crop_size = 224 })
tap.ok(old.size.shortest_edge == 224 and old.crop_size.width == 224, "old integer size / crop_size configs")
local wide = T.full({ 30, 50, 3 }, 200, "uint8")
local px = proc:preprocess(wide)
tap.eq(T.shape_string(px:shape()), "[1, 3, 64, 64]", "non-square image: resized, centre-cropped")
local expect = (200 / 255 - 0.48145466) / 0.26862954
tap.ok(math.abs(px:get(1, 1, 10, 10) - expect) < 1e-5, "rescale and normalise with the config's mean/std")
tap.raises(function() clip_processor.new({ resample = 0 }) end, "resample 0", "unsupported resample named")
-- a crop larger than the image pads it torchvision's way: (8 - 5) // 2 = 1
-- zero row above and 2 below (numpy's center_crop would put 2 above)
local small = clip_processor.new({ do_resize = false, crop_size = { height = 8, width = 6 },
                                   do_rescale = false, do_normalize = false })
local padded = small:preprocess(T.full({ 5, 6, 3 }, 9, "uint8"))
local col = {}
for y = 1, 8 do col[y] = padded:get(1, 1, y, 3) end
tap.eq(table.concat(col, ","), "0,9,9,9,9,9,0,0", "crop larger than the image: padded as TorchvisionBackend pads")

local dir = tap.fixtures("clip-tiny")
if not dir then os.exit(tap.done()) end

local meta = hf.read_json(dir .. "/ref.json")
local ref = safetensors.open(dir .. "/ref.safetensors")
local config = hf.read_json(dir .. "/config.json")
local vcfg, tcfg = config.vision_config, config.text_config

-- Parity on every reference tensor -------------------------------------------------

local fam = require("fmseg.parity.clip")
local computed = fam.compute(dir, ref, meta)
local inputs = {}
for _, n in ipairs(fam.inputs) do inputs[n] = true end
local names = {}
for name in pairs(meta.tensors) do if not inputs[name] then names[#names + 1] = name end end
table.sort(names)
for _, name in ipairs(names) do
  local got = computed[name]
  if not got then
    tap.ok(false, "parity " .. name, "not computed")
  else
    local e, why = parity.compare(got, ref:get(name))
    local tol = fam.tolerance and fam.tolerance[name]
    tap.ok(e and parity.within(e, tol), "parity " .. name,
           e and ("abs %.3g rel %.3g"):format(e.abs, e.rel) or why)
  end
end

-- fp16 weights ----------------------------------------------------------------------

local pixel_values, input_ids = ref:get("pixel_values"), ref:get("input_ids")
local m32 = clip.load(dir)
local m16 = clip.load(dir, { variant = "fp16" })
local f32, f16 = m32:forward(pixel_values, input_ids), m16:forward(pixel_values, input_ids)
for _, k in ipairs({ "image_embeds", "text_embeds", "logits_per_image" }) do
  tap.near(f16[k], f32[k], 1e-2, "fp16 weights: " .. k .. " within 1e-2 of F32")
end
local e16 = tap.rel_err(m16.vision.layers[1].fc1.weight, m32.vision.layers[1].fc1.weight)
tap.ok(e16 > 0 and e16 < 1e-2, "the fp16 file holds rounded weights, not a copy", ("rel %.3g"):format(e16))

-- Loader errors -------------------------------------------------------------------

-- scratch model directories: clip-tiny's config and its weights after `edit`
local function scratch(edit) return tap.scratch_model(dir, edit) end
local remove = tap.remove_model

local fc1 = "vision_model.encoder.layers.1.mlp.fc1.weight"
local tmp = scratch(function(t) t[fc1] = nil end)
tap.raises(function() clip.load(tmp) end,
           ("%s: missing from the weights in %s (expected [%d, %d])"):format(
             fc1, tmp, vcfg.intermediate_size, vcfg.hidden_size),
           "a missing tensor is named with its expected shape")
remove(tmp)

local qw = "text_model.encoder.layers.0.self_attn.q_proj.weight"
tmp = scratch(function(t) t[qw] = T.zeros({ tcfg.hidden_size, tcfg.hidden_size - 1 }) end)
tap.raises(function() clip.load(tmp) end,
           ("%s: got [%d, %d], expected [%d, %d]"):format(qw, tcfg.hidden_size, tcfg.hidden_size - 1,
                                                          tcfg.hidden_size, tcfg.hidden_size),
           "a misshapen tensor is named with both shapes")
remove(tmp)

tmp = scratch(function(t) t["vision_model.encoder.layers.0.extra.weight"] = T.zeros({ 2 }) end)
tap.raises(function() clip.load(tmp) end, "unknown tensor", "unknown tensors are refused")
tap.ok(pcall(clip.load, tmp, { strict = false }), "strict = false accepts them")
remove(tmp)

-- CLIPTextModel alone: clip-tiny's text tower saved as transformers 4 does
-- ("text_model." kept) and as transformers 5 does (no prefix).
local whole = clip.load(dir):encode_text(ref:get("input_ids"))
for _, pre in ipairs({ "text_model.", "" }) do
  local tdir = scratch(function(t)
    local kept = {}
    for name, v in pairs(t) do
      local rest = name:match("^text_model%.(.*)$")
      if rest then kept[pre .. rest] = v end
      t[name] = nil
    end
    for name, v in pairs(kept) do t[name] = v end
  end)
  local out = assert(io.open(tdir .. "/config.json", "wb"))
  out:write(require("fmseg.io.json").encode(tcfg))
  out:close()
  local te = clip.load_text(tdir)
  local got = te:encode(ref:get("input_ids"))
  local label = pre == "" and "no prefix" or pre
  tap.near(got.last_hidden_state, whole.last_hidden_state, 0, "load_text (" .. label .. "): last_hidden_state")
  tap.near(got.pooler_output, whole.pooler_output, 0, "load_text (" .. label .. "): pooler_output")
  tap.ok(te.text_projection == nil and got.text_embeds == nil, "load_text (" .. label .. "): no projection")
  remove(tdir)
end

-- The recipe-facing API -------------------------------------------------------------

local model = m32
local layers = model.vision.layers
local n = #layers
local full = model:encode_image(pixel_values, { hidden_states = true, attentions = true })
tap.eq(#full.hidden_states, n, "one hidden state per block, [0] the encoder input")
tap.eq(#full.attentions, n, "one attention map per block")

-- the last block again, piece by piece
local blk = layers[n]
local x = full.hidden_states[n - 1]
local hn = blk:ln1(x)
local q, k, v = blk:qkv(hn)
local a, probs = blk:attend(q, k, v, { probs = true })
local r = blk:out_proj(a) + x
local y = blk:mlp(blk:ln2(r)) + r
tap.near(y, full.hidden_states[n], 1e-6, "last block recomposed from ln1/qkv/attend/out_proj/ln2/mlp")
tap.near(probs, full.attentions[n], 1e-6, "attend hands back the same probabilities")

local partial = model:encode_image(pixel_values, { layers = n - 1 })
tap.near(partial.last, x, 1e-6, "layers = n - 1 stops before the last block")
tap.ok(partial.image_embeds == nil, "no pooled output from a partial run")

-- ClearCLIP's last block as an override: q-q attention, no residual, no FFN
local clear = model:encode_image(pixel_values, { override = { [n] = function(b, xin)
  local qq, _, vv = b:qkv(b:ln1(xin))
  return b:out_proj(b:attend(qq, qq, vv))
end } })
local manual = blk:out_proj(blk:attend(q, q, v))
tap.near(clear.last, manual, 1e-6, "override replaces one block's forward")
tap.ok(tap.rel_err(clear.last, full.last) > 1e-3, "the override changed the output")

local dense = model:head(full.last)
tap.eq(T.shape_string(dense:shape()),
       T.shape_string({ pixel_values:size(1), full.last:size(2), config.projection_dim }),
       "head projects every token")
tap.near(dense:select(2, 1), full.image_embeds, 1e-6, "head's CLS row is image_embeds")

-- text given as a nested Lua table pools the same
local text_rows = input_ids:totable()
tap.near(model:get_text_features(text_rows), computed.text_embeds, 1e-6, "input_ids as a Lua table")

-- any input size: a non-square, non-default grid
local big = model:encode_image(T.rand({ 1, 3, 2 * vcfg.patch_size, 5 * vcfg.patch_size }, 7))
tap.eq(T.shape_string(big.last:shape()), T.shape_string({ 1, 1 + 2 * 5, vcfg.hidden_size }),
       "interpolated to a 2x5 grid")
tap.ok(big.grid[1] == 2 and big.grid[2] == 5, "out.grid is (gh, gw)")

-- Zero-shot classification ------------------------------------------------------------

local ok_tok = pcall(require, "fmseg.text.tokenizer")
if ok_tok then
  local classify = require("fmseg.cli.classify")
  local labels = { "a photo of a cat.", "road", "sky" }
  local res = classify.classify(dir, dir .. "/input.png", labels)
  local sum = 0
  for _, row in ipairs(res) do sum = sum + row.prob end
  tap.ok(#res == 3 and math.abs(sum - 1) < 1e-5, "classify: one probability per label, summing to 1")
  -- the same through the model by hand, with the fixture's own ids
  local pv = clip_processor.load(dir):preprocess(image.load(dir .. "/input.png"))
  local want = model:logits(model:get_image_features(pv),
                            model:get_text_features({ text_rows[1], text_rows[4], text_rows[5] }))
  local p = require("fmseg.nn").softmax(want):select(1, 1):values()
  tap.ok(math.abs(res[1].prob - p[1]) < 1e-5 and math.abs(res[2].prob - p[2]) < 1e-5,
         "classify matches logits_per_image's softmax", ("%g vs %g"):format(res[1].prob, p[1]))
else
  tap.skip("classify", "fmseg.text.tokenizer not available")
end

-- with_vision: the same weights under other settings, the model unchanged
do
  local m = clip.load(dir)
  local pixels = ref:get("pixel_values")
  local base = m:encode_image(pixels).last
  local own = m:with_vision({ act = vcfg.hidden_act or "quick_gelu", eps = vcfg.layer_norm_eps })
  local same = own:encode_image(pixels).last
  tap.eq((base - same):abs():max(), 0, "with_vision with the checkpoint's own settings changes nothing")
  local other = m:with_vision({ act = "gelu", eps = 1e-6 })
  local block = other.vision.layers[1]
  local hidden = T.randn({ 1, 3, vcfg.hidden_size }, 3)
  local mlp = nn.linear(nn.linear(hidden, block.fc1.weight, block.fc1.bias):gelu(), block.fc2.weight, block.fc2.bias)
  tap.near(block:mlp(hidden), mlp, 1e-6, "with_vision: the block's MLP runs the given activation")
  tap.near(block:ln1(hidden), nn.layer_norm(hidden, block.norm1.weight, block.norm1.bias, 1e-6), 1e-6,
           "with_vision: and the given eps")
  tap.ok((other:encode_image(pixels).last - base):abs():max() > 0, "with_vision: the tower's output changes")
  tap.eq((m:encode_image(pixels).last - base):abs():max(), 0, "with_vision leaves the model itself alone")
  tap.raises(function() m:with_vision({ act = "swishy" }) end, "swishy", "an unknown activation is refused")
end

os.exit(tap.done())
