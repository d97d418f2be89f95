-- Open-vocabulary segmentation from Stable Diffusion's cross-attention as
-- DiffSegmenter (Wang et al. 2023) runs it: per image, the classes present
-- are decided first; then one UNet pass per present class, each with its own
-- prompt, gives that class a map; the maps compete with a constant
-- background score.
--
--   image ──/255, torch bilinear to image_size, 2x − 1──▶ VAE posterior
--        sample (or mean) × scaling_factor
--   ──DDIM add_noise(t = 100, seeded noise)──▶ per present class c:
--        prompt "a photograph of c++" (compel: c's last word × 1.1², see
--        `emphasis`), UNet(t, prompt)
--   ──class_maps──▶ per resolution 8/16/32/64: attn2 mean over heads and
--        layers, the class token's column (and the next "…ing" word's, when
--        a caption puts one there), bilinear to 64, min-max, × 0.3/0.5/0.1/0.1;
--        summed
--   ──self_refine──▶ × the 64² self-attention (mean over heads and layers):
--        map(q) = Σ_k A[q, k] map(k)
--   ──bilinear to the image's size, min-max ×255, /255──▶ scores in [0, 1]
--   ──background = bg_threshold, absent classes 0, argmax──▶ labels
--
-- ref: VCG-team/DiffSegmenter b3a8686 (the commit the method fixtures were
--      made from): open_vocabulary/voc12/ptp_stable_best.py (VOC),
--      voc10/ptp_stable_voc10.py (Pascal Context), coco/ptp_stable_coco.py
--      (COCO-Object): the __main__ loop (encode_imgs: posterior.sample() ×
--      0.18215; scheduler.add_noise at times = [100]; the prompt
--      f"a photograph of {c}" + "++" + caption tail (VOC) or the caption's
--      words with the class's last word + "++" and "a photography of"
--      (Context, COCO); token 4 (VOC) or 3 + len(class tokens) (Context,
--      COCO), with the next token (VOC, Context) or the one after (COCO)
--      when the word after the class ends in "ing"; weight [0.3, 0.5, 0.1,
--      0.1]; self_attention_maps[3] @ cross map; bilinear to (h, w); min-max
--      × 255), aggregate_all_attention (mean over layers × heads per
--      resolution), ptp_utils.py (text2image_ldm_stable: compel's
--      conditioning of the prompt, one UNet call at timestep t; AttentionStore
--      keeps the conditional rows), evaluation_*.py (do_python_eval: maps /
--      255, background = t, argmax; test(): t swept over 0.30..0.74, the best
--      mIoU kept — `bg_sweep` here, reported by `fmseg eval`).
--      compel 2.0.2 (damian0815/compel d15e883) embeddings_provider.py,
--      build_weighted_embedding_tensor: empty_z + (z − empty_z) × weight, the
--      empty prompt [bos, eos, pad…].
--
-- Substitutions (the official steps that cannot run here):
--   * classes present: the official reads dataset/<ds>/predict_syn_txt_0.8_
--     img_0.97.json, made offline from BLIP captions and CLIP (issue #2:
--     "text similarities threshold 0.8, text and image similarities
--     threshold 0.97"; no code was released), union of its image_similarity
--     and text_similarity lists. `present_classes: file` reads that file
--     (`class_predictions`) exactly as its read_json does; `clip` (default)
--     does the image-level part with our CLIP: cosine of the image embedding
--     with each class's text embedding (`present_templates`), classes whose
--     cosine / the best cosine ≥ present_threshold (0.97) — the form of the
--     0.97 rule is not published; this is our reading (always ≥ 1 class, as
--     every image of the official JSONs has). The BLIP caption / text
--     similarity part is not done: `all` prompts every class.
--   * captions: the official appends BLIP's conditional caption of
--     "a photograph of c" to the prompt; without BLIP the prompt is the
--     template alone (the caption tail empty), so the "…ing" token rule
--     never fires. `captions` (a JSON {image file name: {class: caption}})
--     supplies captions made elsewhere.
-- Checked against the official code: tests/fixtures/methods/
-- diffusion_crossattn-{voc,voc-caption,context,coco} run the official
-- per-image loop unmodified (with compel 2.0.2) on our UNet's attention
-- (tests/tools/methods/diffsegmenter.py): prompts, token choice, compel's
-- conditioning (max abs 0), aggregation, refinement, normalisation and the
-- background argmax (scores ≤ 2.7e-6 relative, labels identical). The UNet,
-- VAE, DDIM and text encoder are the sd-tiny parity fixture's.
-- Differences that remain: the official runs in float16 (we in float32):
-- replaying our attention as float16 into its aggregation (diffsegmenter.py
-- --half) moves scores by 0.7-1.5e-3 relative and 3-15 of 19,200 labels in
-- the four cases; the float16 UNet itself cannot run here (unmeasured). Its
-- VAE sample and noise come from torch's unseeded global generator (ours
-- from `seed`). Its
-- class order within an image is Python set order (the order of passes
-- only; the outputs do not depend on it). An image missing from the JSON is
-- skipped by the official (its evaluation then fails on the missing .mat);
-- here it is all background. The sweep's mIoU is mmsegmentation's (classes
-- absent from both prediction and ground truth skipped); do_python_eval
-- averages them in as 0 — the same whenever every class occurs, as on the
-- full val sets. The released voc12 JSON is keyed by whole paths while its
-- loop looks up data[3][0][-15:], the file name; we match by file name.
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local config = require("fmseg.io.config")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local A = require("fmseg.models.sd_attention")

local recipe = {
  name = "diffusion_crossattn",
  needs = { "sd" },
  -- image_size      the side the image is resized to (SD's 512)
  -- timestep        DDIM noise level and UNet timestep
  -- seed            of the Gaussian noise (latent noise; VAE sample: seed + 1)
  -- latent          "sample" (the official's posterior.sample()) or "mean"
  -- prompt          "{}" stands for the class name
  -- emphasis_style  how the prompt marks the class for compel: "append"
  --                 (VOC: prompt .. "++" .. caption tail) or "last_word"
  --                 (Context, COCO: the caption's word at the class's last
  --                 word gets "++")
  -- emphasis        number of "+" (compel: weight 1.1^n on that word); 0: none
  -- token           which of the class's tokens is read: "first" (VOC's
  --                 fixed index 4) or "last" (Context / COCO: 3 + its tokens)
  -- ing_offset      when the word after the class ends in "ing", the token
  --                 this far after the read one is averaged in (VOC,
  --                 Context 1; COCO 2)
  -- captions        JSON file {image file name: {class: caption}} (BLIP's
  --                 conditional captions), or false: no caption
  -- weights         resolution → weight, resolutions as SD 1.5 has them at its
  --                 64x64 latent (64, 32, 16, 8); other latent sizes map by
  --                 level (the latent's own size counts as 64, half as 32…);
  --                 resolutions without a weight are left out
  -- self_refine     multiply by the finest self-attention matrix
  -- bg_threshold    background score (scores are min-max normalised to [0, 1])
  -- bg_sweep        list of background scores `fmseg eval` also scores (the
  --                 official evaluation's sweep), or false
  -- bg_sweep_pick   "first" or "last" of equal best mIoUs (VOC / Context
  --                 keep the first, COCO's `>=` the last)
  -- background      "auto" (the config's data.background is 0), true or false:
  --                 class 0 is background, not prompted
  -- present_classes "clip" (models.clip, image-level zero-shot), "file"
  --                 (class_predictions, the official JSON) or "all"
  -- present_threshold  cosine / best cosine a class needs (clip)
  -- present_templates  text templates for the clip step (fmseg.method.templates name or list)
  -- class_predictions  the official predict_*.json (present_classes: file)
  -- class_predictions_keys  its lists whose union is taken
  defaults = {
    image_size = 512, timestep = 100, seed = 0, latent = "sample",
    prompt = "a photograph of {}", emphasis_style = "append", emphasis = 2, token = "first", ing_offset = 1,
    captions = false,
    weights = { [64] = 0.1, [32] = 0.1, [16] = 0.5, [8] = 0.3 },
    self_refine = true, bg_threshold = 0.5, bg_sweep = false, bg_sweep_pick = "first", background = "auto",
    present_classes = "clip", present_threshold = 0.97, present_templates = { "a photo of a {}." },
    class_predictions = false, class_predictions_keys = { "image_similarity", "text_similarity" },
  },
}

-- Prompts and tokens -----------------------------------------------------------------

-- Ids of text without the start and end tokens
local function words(tok, text)
  local ids = tok:encode(text)
  table.remove(ids, #ids)
  table.remove(ids, 1)
  return ids
end

-- The prompt naming `names` (joined) and, for each name, the 0-based token
-- positions it occupies in the prompt's ids (position 0 is the start token).
function recipe.prompt_tokens(tok, template, names, joiner)
  local i = template:find("{}", 1, true)
  if not i then error(("diffusion_crossattn: prompt %q has no {} for the class names"):format(template), 0) end
  local before, after = template:sub(1, i - 1), template:sub(i + 2)
  local text = before .. table.concat(names, joiner) .. after
  local ids = tok:encode(text)
  local positions, prefix = {}, before
  for k, name in ipairs(names) do
    local start = #words(tok, prefix) + 1              -- after the start token
    local want = words(tok, name)
    for j, id in ipairs(want) do
      if ids[start + j] ~= id then
        error(("diffusion_crossattn: the tokens of %q are not found where expected in %q " ..
               "(put spaces around {} in the prompt)"):format(name, text), 0)
      end
    end
    local pos = {}
    for j = 1, #want do pos[j] = start + j - 1 end
    positions[k] = pos
    prefix = prefix .. name .. joiner
  end
  return text, positions
end

local function split_spaces(s)
  local out, i = {}, 1
  while true do
    local j = s:find(" ", i, true)
    if not j then out[#out + 1] = s:sub(i); return out end
    out[#out + 1] = s:sub(i, j - 1)
    i = j + 1
  end
end

-- The official prompt for class `name`: { text (with compel's "+"s),
-- before, word, after (compel's fragments), weight, first, last (0-based
-- positions of the class's tokens), ing (the word after the class ends in
-- "ing") }. caption: BLIP's caption of the template prompt, or nil.
function recipe.class_prompt(tok, p, name, caption)
  local i = p.prompt:find("{}", 1, true)
  if not i then error(("diffusion_crossattn: prompt %q has no {} for the class name"):format(p.prompt), 0) end
  local base = p.prompt:sub(1, i - 1) .. name .. p.prompt:sub(i + 2)
  caption = caption or base
  local plus = ("+"):rep(p.emphasis)
  local text
  local name_words = split_spaces(name)
  local prefix_words = #split_spaces(p.prompt:sub(1, i - 1)) - 1   -- "a photograph of " → 3
  if p.emphasis_style == "append" then
    -- prompt + "++" + out_prompt[len(prompt):]
    text = base .. plus .. caption:sub(#base + 1)
  elseif p.emphasis_style == "last_word" then
    -- out_prompt[2 + word_len] = f"{last_word}++" (0-based, after 3 template words)
    local w = split_spaces(caption)
    local at = prefix_words + #name_words                           -- 1-based index of that word
    if not w[at] then
      error(("diffusion_crossattn: caption %q has no word %d for %q"):format(caption, at, name), 0)
    end
    w[at] = name_words[#name_words] .. plus
    text = table.concat(w, " ")
  else
    error("diffusion_crossattn: emphasis_style must be \"append\" or \"last_word\"", 0)
  end
  -- compel's fragments: the word carrying the "+"s, the text before and after it
  local s, e
  if p.emphasis > 0 then
    s, e = text:find("%S+" .. ("%+"):rep(p.emphasis) .. "%f[%s%z]")
  end
  local before, word, after
  if s then
    before, word, after = text:sub(1, s - 1), text:sub(s, e - p.emphasis), text:sub(e + 1)
  else
    before, word, after = text, "", ""
  end
  local tw = split_spaces(text)
  local next_word = tw[prefix_words + #name_words + 1]
  local first = 1 + #words(tok, p.prompt:sub(1, i - 1))
  return {
    text = text, before = before, word = word, after = after, weight = 1.1 ^ p.emphasis,
    first = first, last = first + #words(tok, name) - 1,
    ing = next_word ~= nil and next_word:sub(-3) == "ing",
  }
end

-- compel's token ids and per-token weights for a class prompt: [bos] +
-- fragments' tokens (75 at most) + [eos] + pad to the context length.
function recipe.weighted_ids(tok, cp, ctx)
  local ids, wts = { tok.bos_id }, { 1 }
  for _, part in ipairs({ { cp.before, 1 }, { cp.word, cp.weight }, { cp.after, 1 } }) do
    for _, id in ipairs(words(tok, part[1])) do
      if #ids <= ctx - 2 then ids[#ids + 1] = id; wts[#wts + 1] = part[2] end
    end
  end
  ids[#ids + 1] = tok.eos_id; wts[#wts + 1] = 1
  while #ids < ctx do ids[#ids + 1] = tok.pad_id; wts[#wts + 1] = 1 end
  return ids, wts
end

-- compel's conditioning: empty_z + (z − empty_z) × per-token weight, where
-- empty_z encodes [bos, eos, pad, …]. Returns (1, L, D).
function recipe.weighted_embedding(pipe, ids, wts, empty)
  local ctx = #ids
  local z = pipe:encode_prompt(T.from_table({ ids }, "int32"))
  if not empty then
    local e = { pipe.tokenizer.bos_id, pipe.tokenizer.eos_id }
    while #e < ctx do e[#e + 1] = pipe.tokenizer.pad_id end
    empty = pipe:encode_prompt(T.from_table({ e }, "int32"))
  end
  local w = T.from_table(wts):reshape({ 1, ctx, 1 })
  local out = (z - empty) * w + empty
  z:free(); w:free()
  return out
end

-- Attention maps ------------------------------------------------------------------

local REFERENCE = 64  -- SD 1.5's latent side, the resolutions `weights` names

-- weights[resolution] for a layer of height h in a UNet whose latent is lh high
local function weight_of(weights, h, lh)
  local level = math.floor(math.log(lh / h) / math.log(2) + 0.5)
  local key = REFERENCE / 2 ^ level
  return tonumber(weights[key] or weights[tostring(key)] or 0)
end

-- (C, n) → each row min-max normalised to [0, 1] (a constant row → 0)
local function minmax_rows(x)
  local lo, hi = x:min(2, true), x:max(2, true)
  local range = (hi - lo):maximum(1e-12)
  local out = (x - lo):div_(range)
  lo:free(); hi:free(); range:free()
  return out
end

-- (Tk, C) matrix averaging each class's token columns: map = attn2 · sel
local function token_selection(tk, positions)
  local sel = T.new({ tk, #positions })
  for c, pos in ipairs(positions) do
    for _, p in ipairs(pos) do sel:set(p + 1, c, 1 / #pos) end
  end
  return sel
end

-- The per-class maps from a UNet capture holding attn2 (and, for
-- self_refine, attn1) maps. positions: 0-based token positions per class;
-- opts.weights, opts.latent = {lh, lw}, opts.self_refine, opts.row (batch
-- row, default 1). Returns (C, h, w) at the finest attention resolution.
function recipe.class_maps(cap, positions, opts)
  local groups = cap:resolution_means("attn2", opts.row)
  local oh, ow = groups[1].height, groups[1].width
  local lh = opts.latent and opts.latent[1] or oh
  local nc = #positions
  local sum
  for _, g in ipairs(groups) do
    local wt = weight_of(opts.weights, g.height, lh)
    if wt ~= 0 then
      local sel = token_selection(g.map:size(2), positions)
      local cols = g.map:matmul(sel)                                  -- (h·w, C)
      sel:free()
      local img = cols:t():contiguous():reshape({ 1, nc, g.height, g.width })
      cols:free()
      local up = img
      if g.height ~= oh or g.width ~= ow then
        up = nn.interpolate(img, oh, ow, { mode = "bilinear" })
        img:free()
      end
      local flat = up:reshape({ nc, oh * ow })
      up:free()
      local norm = minmax_rows(flat):mul_(wt)
      flat:free()
      if sum then sum:add_(norm); norm:free() else sum = norm end
    end
    g.map:free()
  end
  if not sum then error("diffusion_crossattn: no captured resolution has a weight", 2) end
  if opts.self_refine then
    local selfs = cap:resolution_means("attn1", opts.row)
    local s = selfs[1]
    if s.height ~= oh or s.width ~= ow then
      error(("diffusion_crossattn: finest self-attention is %dx%d, cross-attention %dx%d"):format(
        s.height, s.width, oh, ow), 2)
    end
    local refined = sum:matmul(s.map, false, true)   -- (C, Q): Σ_k map(k) A[q, k]
    for _, g in ipairs(selfs) do g.map:free() end
    sum:free()
    sum = refined
  end
  return sum:reshape({ nc, oh, ow })
end


-- Classes present ----------------------------------------------------------------------

local function read_json(path)
  local f, err = io.open(path)
  if not f then error("diffusion_crossattn: " .. tostring(err), 0) end
  local s = f:read("*a")
  f:close()
  return json.decode(s)
end

local function basename(path) return (path or ""):match("([^/]+)$") or path end

-- read_json(json_path, choice): the union of the chosen lists per image,
-- keyed here by file name (the official keys end with it: [-15:] / [-29:]).
function recipe.read_predictions(path, keys)
  local data = read_json(path)
  local out = {}
  for _, key in ipairs(keys) do
    local lists = data[key]
    if type(lists) ~= "table" then error(("diffusion_crossattn: %s has no list %q"):format(path, key), 0) end
    for k, names in pairs(lists) do
      local b = basename(k)
      local set = out[b] or {}
      out[b] = set
      for _, n in ipairs(names) do set[n] = true end
    end
  end
  return out
end

-- CLIP image-level zero-shot: indices (into names) whose cosine with the
-- image / the best cosine ≥ threshold, in class order.
function recipe.clip_present(state, img)
  local c = state.clip
  local x = c.processor:preprocess(img)
  local f = nn.normalize(c.model:get_image_features(x))            -- (1, P)
  x:free()
  local cos = f:matmul(c.text, false, true):values()               -- (1, C)
  f:free()
  local best = -math.huge
  for _, v in ipairs(cos) do best = math.max(best, v) end
  local out = {}
  for i, v in ipairs(cos) do
    if (best > 0 and v / best >= c.threshold) or v == best then out[#out + 1] = i end
  end
  return out, cos
end

local function present(state, img, source)
  local p = state.params
  if p.present_classes == "all" then
    local all = {}
    for i = 1, #state.names do all[i] = i end
    return all
  elseif p.present_classes == "file" then
    local set = state.predictions[basename(source and source.path)] or {}
    local out = {}
    for i, n in ipairs(state.names) do if set[n] then out[#out + 1] = i end end
    return out
  end
  return (recipe.clip_present(state, img))
end

-- Recipe ---------------------------------------------------------------------------

local function has_background(p, cfg)
  if p.background == "auto" then return cfg ~= nil and config.get(cfg, "data.background") == 0 end
  if type(p.background) ~= "boolean" then
    error("diffusion_crossattn: background must be \"auto\", true or false", 0)
  end
  return p.background
end

function recipe.setup(params, models, classes, cfg)
  if not classes then error("diffusion_crossattn: the config needs `classes` (the names to prompt)", 0) end
  local p = params
  local pipe = models.sd
  local background = has_background(p, cfg)
  local names = {}
  for i = background and 2 or 1, #classes.names do names[#names + 1] = classes.names[i] end
  if #names == 0 then error("diffusion_crossattn: no class names besides the background", 0) end
  if p.token ~= "first" and p.token ~= "last" then error("diffusion_crossattn: token must be \"first\" or \"last\"", 0) end
  if p.latent ~= "sample" and p.latent ~= "mean" then error("diffusion_crossattn: latent must be \"sample\" or \"mean\"", 0) end
  local state = { params = p, pipe = pipe, background = background, names = names }
  local tok = pipe.tokenizer
  state.ctx = tok.context_length or 77
  local e = { tok.bos_id, tok.eos_id }
  while #e < state.ctx do e[#e + 1] = tok.pad_id end
  state.empty = pipe:encode_prompt(T.from_table({ e }, "int32"))
  state.captions = p.captions and read_json(p.captions) or nil
  state.prompts = {}          -- class index → embedding, for captionless prompts (the same every image)
  if p.present_classes == "file" then
    if not p.class_predictions then error("diffusion_crossattn: present_classes: file needs class_predictions", 0) end
    state.predictions = recipe.read_predictions(p.class_predictions, p.class_predictions_keys)
  elseif p.present_classes == "clip" then
    local path = cfg and config.get(cfg, "models.clip")
    if not path then error("diffusion_crossattn: present_classes: clip needs models.clip (a CLIP model directory)", 0) end
    local model = (models.clip) or require("fmseg.models").load("clip", path)
    local clipseg = require("fmseg.method.clipseg")
    local tokenizer = require("fmseg.text.tokenizer")
    state.clip = {
      model = model, threshold = p.present_threshold,
      processor = require("fmseg.models.clip_processor").load(model.path or path),
      text = clipseg.cached_text_classifier(model, tokenizer.load(model.path or path), names, p.present_templates),
    }
  elseif p.present_classes ~= "all" then
    error("diffusion_crossattn: present_classes must be \"clip\", \"file\" or \"all\"", 0)
  end
  return state
end

-- (H, W, 3) image → (1, 3, size, size) in [-1, 1]: ToTensor (/255),
-- F.interpolate bilinear (align_corners=False) to size, 2x − 1 (encode_imgs).
function recipe.prepare(img, size)
  local x = image.to_chw(img):div_(255)
  local r = nn.interpolate(x, size, size, { mode = "bilinear" })
  x:free()
  return r:mul_(2):sub_(1)
end

-- The UNet pass of names[c] for this image: { cp (class_prompt), text
-- (1, L, D) compel's conditioning, positions = {{0-based token positions}} }
function recipe.class_pass(state, c, source)
  local p, pipe = state.params, state.pipe
  local name = state.names[c]
  local caption
  if state.captions then
    local per = state.captions[basename(source and source.path)]
    caption = per and per[name] or nil
  end
  if not caption and state.prompts[c] then return state.prompts[c] end
  local cp = recipe.class_prompt(pipe.tokenizer, p, name, caption)
  local ids, wts = recipe.weighted_ids(pipe.tokenizer, cp, state.ctx)
  local pass = { cp = cp, text = recipe.weighted_embedding(pipe, ids, wts, state.empty) }
  local at = p.token == "first" and cp.first or cp.last
  pass.positions = { cp.ing and { at, at + p.ing_offset } or { at } }
  if not caption then state.prompts[c] = pass end
  return pass
end

-- (C, h, w) maps → (C, H, W): bilinear, then min-max ×255 per class, /255
-- (the official stores ×255 maps, its evaluation divides by 255)
local function scores_at(maps, H, W)
  local c, h, w = unpack(maps:shape())
  local up = nn.interpolate(maps:reshape({ 1, c, h, w }), H, W, { mode = "bilinear" })
  local flat = up:reshape({ c, H * W })
  up:free()
  local out = minmax_rows(flat):mul_(255):div_(255)
  flat:free()
  return out:reshape({ c, H, W })
end

-- Latents of the prepared image: the posterior sample (seed + 1) or mean,
-- × scaling_factor
local function encode(pipe, x, p)
  if p.latent == "mean" then return pipe:encode_image(x) end
  local mean, std = pipe.vae:encode(x)
  local eps = T.randn(mean:shape(), p.seed + 1)
  local z = mean + std * eps
  mean:free(); std:free(); eps:free()
  local latents = pipe.vae:latents(z)
  z:free()
  return latents
end

-- The noised latents (1, C, h, w) the UNet reads for every class
function recipe.noisy_latents(state, img)
  local p, pipe = state.params, state.pipe
  local x = recipe.prepare(img, p.image_size)
  local latents = encode(pipe, x, p)
  x:free()
  local noise = T.randn(latents:shape(), p.seed)
  local noisy = pipe.scheduler:add_noise(latents, noise, p.timestep)
  noise:free(); latents:free()
  return noisy
end

recipe.present = present

function recipe.segment(state, img, _, source)
  local p, pipe = state.params, state.pipe
  local H, W = img:size(1), img:size(2)
  local present_idx = present(state, img, source)
  local nfg = #state.names
  local noisy = recipe.noisy_latents(state, img)
  local lh, lw = noisy:size(3), noisy:size(4)
  local parts, embeds, prompts = {}, {}, {}
  for k, c in ipairs(present_idx) do
    local pass = recipe.class_pass(state, c, source)
    local cap = A.capture({ kinds = p.self_refine and { "attn1", "attn2" } or { "attn2" }, mean_heads = true })
    local eps = pipe.unet:forward(noisy, p.timestep, pass.text, { capture = cap })
    eps:free()
    parts[k] = recipe.class_maps(cap, pass.positions,
                                 { weights = p.weights, latent = { lh, lw }, self_refine = p.self_refine })
    cap:clear()
    embeds[k] = pass.text
    prompts[k] = pass.cp.text
  end
  noisy:free()
  -- every class's map, absent ones 0 (the official evaluation's zeros)
  local fh, fw = lh, lw
  if parts[1] then fh, fw = parts[1]:size(2), parts[1]:size(3) end
  local maps = T.zeros({ nfg, fh, fw })
  local scores = T.zeros({ nfg, H, W })
  if #parts > 0 then
    local m = #parts == 1 and parts[1] or T.cat(parts, 1)
    local s = scores_at(m, H, W)
    for k, c in ipairs(present_idx) do
      maps:select(1, c):copy(m:select(1, k))
      scores:select(1, c):copy(s:select(1, k))
    end
  end
  local result = { kind = "semantic", present = present_idx, prompts = prompts,
                   dump = { maps = maps, prompt_embeds = #embeds > 0 and T.cat(embeds, 1) or nil } }
  if state.background then
    local bg = T.full({ 1, H, W }, p.bg_threshold)
    scores = T.cat({ bg, scores }, 1)
    if p.bg_sweep then
      -- labels at another background score: the best class where its score
      -- beats the background (argmax: ties go to the background, index 0)
      local fg = scores:narrow(1, 2, nfg)
      local best, arg = fg:max(1), fg:argmax(1)
      result.sweep = {
        param = "bg_threshold", values = p.bg_sweep, pick = p.bg_sweep_pick,
        labels = function(v) return ((arg:float() + 1) * best:gt(v)):int() end,
      }
    end
  end
  result.scores = scores
  result.labels = scores:argmax(1)          -- ties go to the lower class (background first)
  return result
end

return recipe
