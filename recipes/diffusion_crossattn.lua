-- Open-vocabulary segmentation from Stable Diffusion's cross-attention, as
-- DiffSegmenter (Wang et al.) does it: the image's latent is noised to a
-- small timestep, one UNet pass reads a prompt naming the classes, and each
-- class's token(s) give an attention map over the latent pixels:
--
--   image ──bilinear to image_size, [-1, 1]──▶ VAE mean × scaling_factor
--   ──DDIM add_noise(t = 100, seeded noise)──▶ UNet(t, prompt)
--   ──class_maps──▶ per resolution: attn2 mean over heads and layers, the
--        class's token columns averaged, bilinear to the finest resolution,
--        min-max normalised, × the resolution's weight; summed
--   ──self_refine──▶ × the finest self-attention matrix (mean over heads,
--        layers): map(q) = Σ_k A[q, k] map(k)
--   ──bilinear to the image's size, min-max per class──▶ scores in [0, 1]
--   ──argmax with background = bg_threshold (datasets with a background)──▶ labels
--
-- ref: VCG-team/DiffSegmenter open_vocabulary/voc12/ptp_stable_best.py
--      (aggregate_all_attention, the main loop: times [100], weight
--      [0.3, 0.5, 0.1, 0.1] for resolutions 8, 16, 32, 64, cross maps of token
--      4 of "a photograph of {class}", self_attention_maps[3] @ cross map,
--      bilinear to the image, min-max ×255), ptp_utils.py (diffusion_step:
--      UNet at timestep t; AttentionStore keeps the conditional rows),
--      open_vocabulary/voc12/evaluation_voc12.py (background score = a
--      threshold on the /255 maps, swept 0.30-0.74, then argmax).
-- Differences: the official runs one pass per class (per_class = true here),
-- over classes an image-level BLIP/CLIP step predicted present, with a BLIP
-- caption appended and compel weighting; it samples the VAE posterior and
-- runs in float16. We prompt every class, take the posterior mean, and by
-- default name all classes in one prompt (joined by `joiner`).
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local config = require("fmseg.config")
local A = require("fmseg.models.sd_attention")

local recipe = {
  name = "diffusion_crossattn",
  needs = { "sd" },
  -- image_size     the side the image is resized to (SD's 512)
  -- timestep       DDIM noise level and UNet timestep
  -- seed           of the Gaussian noise added to the latent
  -- prompt         "{}" stands for the class name(s)
  -- joiner         between class names in the one prompt (per_class = false)
  -- per_class      one UNet pass per class, each with its own prompt
  -- weights        resolution → weight, resolutions as SD 1.5 has them at its
  --                64x64 latent (64, 32, 16, 8); other latent sizes map by
  --                level (the latent's own size counts as 64, half as 32…);
  --                resolutions without a weight are left out
  -- self_refine    multiply by the finest self-attention matrix
  -- bg_threshold   background score (maps are min-max normalised to [0, 1])
  -- background     "auto" (the config's data.background is 0), true or false:
  --                class 0 is background, not named in the prompt
  defaults = {
    image_size = 512, timestep = 100, seed = 0, prompt = "a photograph of {}", joiner = " and ",
    per_class = false, weights = { [64] = 0.1, [32] = 0.1, [16] = 0.5, [8] = 0.3 },
    self_refine = true, bg_threshold = 0.5, background = "auto",
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
  local groups = recipe.resolution_means(cap, "attn2", opts.row)
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
    local selfs = recipe.resolution_means(cap, "attn1", opts.row)
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

-- Self- and cross-attention grouped by resolution: DiffSeg's helper.
recipe.resolution_means = require("fmseg.recipes").load("diffseg").resolution_means

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
  local pipe = models.sd
  local background = has_background(params, cfg)
  local names = {}
  for i = background and 2 or 1, #classes.names do names[#names + 1] = classes.names[i] end
  if #names == 0 then error("diffusion_crossattn: no class names besides the background", 0) end
  local groups = {}      -- each UNet pass: { text (1, L, D), positions, classes = {index in names} }
  local sets = params.per_class and {} or { names }
  if params.per_class then for i, n in ipairs(names) do sets[i] = { n } end end
  local ctx = pipe.tokenizer.context_length or 77
  for _, set in ipairs(sets) do
    local text, positions = recipe.prompt_tokens(pipe.tokenizer, params.prompt, set, params.joiner)
    local n = #pipe.tokenizer:encode(text)
    if n > ctx then
      error(("diffusion_crossattn: the prompt is %d tokens, the text encoder takes %d " ..
             "(set params.per_class=true): %s"):format(n, ctx, text), 0)
    end
    groups[#groups + 1] = { prompt = text, text = pipe:encode_prompt({ text }), positions = positions }
  end
  return { params = params, pipe = pipe, passes = groups, background = background, names = names }
end

recipe.prepare = require("fmseg.recipes").load("diffseg").prepare

-- (C, h, w) maps → (C, H, W) scores: bilinear, then min-max per class
local function scores_at(maps, H, W)
  local c, h, w = unpack(maps:shape())
  local up = nn.interpolate(maps:reshape({ 1, c, h, w }), H, W, { mode = "bilinear" })
  local flat = up:reshape({ c, H * W })
  up:free()
  local out = minmax_rows(flat)
  flat:free()
  return out:reshape({ c, H, W })
end

function recipe.segment(state, img)
  local p, pipe = state.params, state.pipe
  local H, W = img:size(1), img:size(2)
  local x = recipe.prepare(img, p.image_size)
  local latents = pipe:encode_image(x)
  x:free()
  local noise = T.randn(latents:shape(), p.seed)
  local noisy = pipe.scheduler:add_noise(latents, noise, p.timestep)
  noise:free(); latents:free()
  local lh, lw = noisy:size(3), noisy:size(4)
  local parts = {}
  for i, pass in ipairs(state.passes) do
    local cap = A.capture({ kinds = p.self_refine and { "attn1", "attn2" } or { "attn2" }, mean_heads = true })
    local eps = pipe.unet:forward(noisy, p.timestep, pass.text, { capture = cap })
    eps:free()
    parts[i] = recipe.class_maps(cap, pass.positions,
                                 { weights = p.weights, latent = { lh, lw }, self_refine = p.self_refine })
    cap:clear()
  end
  noisy:free()
  local maps = #parts == 1 and parts[1] or T.cat(parts, 1)
  local scores = scores_at(maps, H, W)
  if state.background then
    local bg = T.full({ 1, H, W }, p.bg_threshold)
    scores = T.cat({ bg, scores }, 1)
  end
  local labels = scores:argmax(1)          -- ties go to the lower class (background first)
  return { kind = "semantic", labels = labels, scores = scores, dump = { maps = maps } }
end

return recipe
