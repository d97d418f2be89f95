-- Each CLIP recipe's formula against an independent transcription of its
-- method, computed here from the reference tensors of clip-tiny
-- (vision.hidden_states.*, vision.last.{ln1,q,k,v}) and the weights read
-- straight from model.safetensors with plain tensor ops.
local tap = require("tap")
local clipseg = require("fmseg.method.clipseg")
local hf = require("fmseg.io.hf")
local nn = require("fmseg.nn")
local recipes = require("fmseg.method.recipes")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")

local TOL = 1e-4

-- Recipe contract and parameter checks (no fixtures needed) ----------------------------

local NAMES = { "clip_vanilla", "maskclip", "sclip", "clearclip", "naclip", "proxyclip", "gem" }
local R = {}
for _, name in ipairs(NAMES) do
  local ok, recipe = pcall(recipes.load, name)
  tap.ok(ok and type(recipe.setup) == "function" and type(recipe.segment) == "function"
         and recipe.needs[1] == "clip", "recipes/" .. name .. ".lua loads and needs CLIP", recipe)
  R[name] = ok and recipe or nil
end
tap.ok(R.proxyclip.needs[2] == "vfm", "proxyclip also needs a vision foundation model")
tap.raises(function() recipes.params(R.sclip, { logit_scal = 50 }) end, "unknown parameter 'logit_scal'",
           "a misspelt parameter is refused")
local p = recipes.params(R.sclip, { logit_scale = 65 })
tap.ok(p.logit_scale == 65 and p.slide_crop == 224 and p.short_side == 336, "params overlay SCLIP's defaults")
for _, name in ipairs({ "sclip", "clearclip", "naclip" }) do
  local d = R[name].defaults
  tap.ok(d.mean[1] == 122.771 and d.std[3] == 70.323,
         name .. ": normalised with its code base's rounded mean / std (122.771, ..., 70.323)")
end
tap.raises(function() R.sclip.setup(recipes.params(R.sclip, { slide_crop = 0, pamr_steps = 10 }), {}, nil) end,
           "PAMR only with the sliding window", "sclip: whole-image PAMR (which SCLIP's code skips) is refused")

-- Class files: "\," is a comma inside one name (ADE20K-Full's "building, edifice" is one query).
do
  local c = require("fmseg.method.classes").parse("wall\nbuilding\\, edifice\nperson, man\\, woman, kid\n")
  tap.eq(table.concat(c.queries, "|"), "wall|building, edifice|person|man, woman|kid",
         "classes: an escaped comma stays inside its name, plain commas separate synonyms")
  tap.eq(table.concat(c.query_class, " "), "1 2 3 3 3", "classes: each query's class")
  tap.eq(c.names[2], "building, edifice", "classes: the display name keeps its comma")
  local nul = require("fmseg.method.classes").parse("a,b\0c\n")
  tap.eq(table.concat(nul.queries, "|"), "a|b\0c", "classes: a NUL byte is a byte, not a comma (fuzz regression)")
end

-- Every shipped config of these methods resolves: known recipe, parameters
-- the recipe accepts, as many class lines as the dataset has classes.
do
  local config = require("fmseg.io.config")
  local classes_mod = require("fmseg.method.classes")
  local checked, problems = 0, {}
  for _, name in ipairs(NAMES) do
    local listing = io.popen(("ls configs/%s/*.yaml 2>/dev/null"):format(name))
    for path in listing:lines() do
      local ok, err = pcall(function()
        local cfg = config.load(path)
        local recipe = recipes.load(config.get(cfg, "recipe"))
        recipes.params(recipe, config.get(cfg, "params", {}))
        local names = classes_mod.from_config(config.get(cfg, "classes")).names
        local n = config.get(cfg, "data.num_classes")
        if #names ~= n then error(("%d class lines, data.num_classes = %s"):format(#names, tostring(n)), 0) end
        if recipe.name ~= name then error("recipe " .. recipe.name, 0) end
      end)
      checked = checked + 1
      if not ok then problems[#problems + 1] = path .. ": " .. tostring(err) end
    end
    listing:close()
  end
  tap.ok(checked == 8 * #NAMES and #problems == 0,
         ("the %d configs (8 datasets x %d methods) resolve"):format(checked, #NAMES), table.concat(problems, "\n"))
end

-- NACLIP's neighbourhood bias, by hand: grid 2 x 3, σ = 1.
local omega = R.naclip.neighbourhood(2, 3, 1)
tap.eq(T.shape_string(omega:shape()), "[7, 7]", "ω covers the class token and 6 patches")
tap.ok(omega:select(1, 1):sum() == 0 and omega:select(2, 1):sum() == 0, "ω: class token row and column are 0")
tap.ok(math.abs(omega:get(2, 2) - 1) < 1e-7 and math.abs(omega:get(2, 7) - math.exp(-(1 + 4) / 2)) < 1e-7
       and math.abs(omega:get(5, 3) - math.exp(-(1 + 1) / 2)) < 1e-7,
       "ω: 1 on the diagonal; patches (0,0)-(1,2): exp(-5/2); (1,0)-(0,1): exp(-1)")

-- GEM's min-max: every query map spans [0, 1].
local mm = R.gem.calibrate({ params = { minmax = true } }, T.from_table({ { { 1, 3 } }, { { -2, -1 } } }))
tap.ok(mm:get(1, 1, 1) == 0 and mm:get(1, 1, 2) == 1 and mm:get(2, 1, 1) == 0 and mm:get(2, 1, 2) == 1,
       "gem: per-query min-max normalisation")

-- MaskCLIP's refinements on a hand-made window: 2 queries, 1 x 3 patches.
local cos = T.from_table({ { { 0.30, 0.10, 0.20 } }, { { 0.29, 0.28, 0.27 } } })
local pd = R.maskclip.refine({ params = { refine_scale = 100, pd_thresh = 0.6, ks_thresh = 0 } }, cos)
-- softmax(100 cos): query 2 peaks at patch 2 with 1/(1 + e^-18) > 0.6; query 1
-- peaks at 1/(1 + e^-1) = 0.73 > 0.6 too; at 0.9 only query 2 survives.
tap.near(pd, cos, 0, "prompt denoising keeps queries that reach pd_thresh somewhere")
pd = R.maskclip.refine({ params = { refine_scale = 100, pd_thresh = 0.9, ks_thresh = 0 } }, cos)
tap.ok(pd:select(1, 1):max() == -100 and pd:select(1, 1):min() == -100 and pd:get(2, 1, 3) == cos:get(2, 1, 3),
       "prompt denoising: a query never above pd_thresh gets -100")
local keys = T.from_table({ { { 9, 9 }, { 1, 0 }, { 0, 1 }, { 1, 1 } } })          -- (1, 1 + 3, C = 2)
local ks = R.maskclip.refine({ params = { refine_scale = 100, pd_thresh = 0, ks_thresh = 0.8 } }, cos, keys)
do
  -- keys over the 3 patches normalised per channel: column 1 (1, 0, 1)/√2, column 2 (0, 1, 1)/√2
  local kn = { { 1 / math.sqrt(2), 0 }, { 0, 1 / math.sqrt(2) }, { 1 / math.sqrt(2), 1 / math.sqrt(2) } }
  local probs = {}
  for n = 1, 3 do
    local a, b = math.exp(100 * cos:get(1, 1, n)), math.exp(100 * cos:get(2, 1, n))
    probs[n] = { a / (a + b), b / (a + b) }
  end
  local ok = true
  for n = 1, 3 do
    local low = math.max(probs[n][1], probs[n][2]) < 0.8
    for qi = 1, 2 do
      local want = probs[n][qi]
      if low then
        want = 0
        for m = 1, 3 do
          local wgt = kn[n][1] * kn[m][1] + kn[n][2] * kn[m][2]
          want = want + wgt * probs[m][qi]
        end
      end
      ok = ok and math.abs(ks:get(qi, 1, n) - want) < 1e-5
    end
  end
  tap.ok(ok, "key smoothing: low-confidence patches take key-weighted sums of the probabilities")
end

-- Formulas on clip-tiny ---------------------------------------------------------------------

local dir = tap.fixtures("clip-tiny")
if not dir then os.exit(tap.done()) end

local model = require("fmseg.models.clip").load(dir)
local ref = safetensors.open(dir .. "/ref.safetensors")
local W = safetensors.open(dir .. "/model.safetensors")
local vcfg = hf.read_json(dir .. "/config.json").vision_config
local L, H, C = vcfg.num_hidden_layers, vcfg.num_attention_heads, vcfg.hidden_size
local D, EPS = C / H, vcfg.layer_norm_eps or 1e-5
assert(vcfg.hidden_act == "quick_gelu", "this transcription assumes CLIP's quick_gelu")
local blocks = model.vision.layers
local last = blocks[L]

local function wt(name) return W:get(name) end
local function lw(i, name) return wt(("vision_model.encoder.layers.%d.%s"):format(i - 1, name)) end
local function linear(x, i, name) return nn.linear(x, lw(i, name .. ".weight"), lw(i, name .. ".bias")) end
local function ln(x, weight, bias)
  local mean = x:mean(-1, true)
  local xc = x - mean
  local var = (xc * xc):mean(-1, true)
  return xc / (var + EPS):sqrt() * weight + bias
end
local function ln_of(x, i, name) return ln(x, lw(i, name .. ".weight"), lw(i, name .. ".bias")) end
local function softmax_rows(s)
  local e = (s - s:max(-1, true)):exp()
  return e / e:sum(-1, true)
end
-- Multi-head softmax(a bᵀ · scale + bias) c, head by head, batch by batch.
local function mh(a, b, c, scale, bias)
  local out = {}
  for n = 1, a:size(1) do
    local heads = {}
    for h = 1, H do
      local function part(t) return t:select(1, n):narrow(2, (h - 1) * D + 1, D):contiguous() end
      local s = part(a):matmul(part(b), false, true) * (scale or 1 / math.sqrt(D))
      if bias then s = s + bias end
      heads[h] = softmax_rows(s):matmul(part(c))
    end
    out[n] = T.cat(heads, 2)
  end
  return T.stack(out, 1)
end
local function out_proj(a, i) return linear(a, i, "self_attn.out_proj") end
local function mlp(x, i)
  local u = linear(ln_of(x, i, "layer_norm2"), i, "mlp.fc1")
  return linear(u * (u * 1.702):sigmoid(), i, "mlp.fc2")
end
local function head(tokens)
  local h = ln(tokens, wt("vision_model.post_layernorm.weight"), wt("vision_model.post_layernorm.bias"))
  return nn.linear(h, wt("visual_projection.weight"))
end

local x = ref:get("vision.hidden_states." .. (L - 1))     -- input of the last block (2, T, C)
local q, k, v = ref:get("vision.last.q"), ref:get("vision.last.k"), ref:get("vision.last.v")
local grid = { vcfg.image_size / vcfg.patch_size, vcfg.image_size / vcfg.patch_size }
local N = grid[1] * grid[2]

-- CLIP: the reference layer itself.
tap.near(R.clip_vanilla.last_block(last, x), ref:get("vision.hidden_states." .. L), TOL,
         "clip_vanilla: the last block is CLIP's own (reference hidden state)")

-- SCLIP: x + out_proj((softmax(q qᵀ) + softmax(k kᵀ)) v), then + FFN.
local y = x + out_proj(mh(q, q, v) + mh(k, k, v), L)
tap.near(R.sclip.last_block(last, x), y + mlp(y, L), TOL, "sclip: correlative self-attention, residuals and FFN")

-- ClearCLIP: out_proj(softmax(q qᵀ) v), nothing else; the ablation keeps both.
local clear = out_proj(mh(q, q, v), L)
tap.near(R.clearclip.last_block(last, x, { params = { ignore_residual = true } }), clear, TOL,
         "clearclip: q-q attention, no residual, no FFN")
local kept = clear + x
tap.near(R.clearclip.last_block(last, x, { params = { ignore_residual = false } }), kept + mlp(kept, L), TOL,
         "clearclip, ignore_residual = false: residual and FFN back")

-- NACLIP: out_proj(softmax(k kᵀ/√d + ω) v), ω separable per axis.
local function omega_by_hand(gh, gw, std)
  local n = gh * gw + 1
  local t = {}
  for a = 1, n do
    t[a] = {}
    for b = 1, n do
      if a == 1 or b == 1 then
        t[a][b] = 0
      else
        local ya, xa, yb, xb = math.floor((a - 2) / gw), (a - 2) % gw, math.floor((b - 2) / gw), (b - 2) % gw
        t[a][b] = math.exp(-(ya - yb) ^ 2 / (2 * std ^ 2)) * math.exp(-(xa - xb) ^ 2 / (2 * std ^ 2))
      end
    end
  end
  return T.from_table(t)
end
for _, std in ipairs({ 1.0, 5.0 }) do
  local state = { params = { gaussian_std = std, arch = "reduced" }, omega = {} }
  tap.near(R.naclip.last_block(last, x, state, grid), out_proj(mh(k, k, v, nil, omega_by_hand(grid[1], grid[2], std)), L),
           TOL, ("naclip: k-k attention plus the Gaussian neighbourhood (σ = %g), reduced block"):format(std))
end

-- MaskCLIP: v = out_proj(v) + x, v + FFN(ln_2 v); keys = out_proj(k).
local mv = out_proj(v, L) + x
local got_v, got_k = R.maskclip.last_block(last, x)
tap.near(got_v, mv + mlp(mv, L), TOL, "maskclip: value path with residual and FFN")
tap.near(got_k, out_proj(k, L), TOL, "maskclip: keys through out_proj, as its backbone returns them")

-- ProxyCLIP on a synthetic 6 x 6 proxy grid: S = F̂ F̂ᵀ, (S - 1.2 mean) · 3,
-- negatives dropped, row softmax; CLIP's v (4 x 4) resized to 6 x 6.
local F = T.randn({ 36, 8 }, 7)
local fn = F / F:norm(-1, true)
local s = fn:matmul(fn, false, true)
s = (s - 1.2 * s:mean()) * 3
local keep = s:ge(0)
local e = (s - s:max(-1, true)):exp() * keep
local attn = e / e:sum(-1, true)
local got_attn = R.proxyclip.proxy_attention(F, 1.2, 3.0)
tap.near(got_attn, attn, 1e-5, "proxyclip: proxy attention from the VFM's features")
tap.ok((got_attn:eq(0) * (1 - keep)):sum() == (1 - keep):sum() and (1 - keep):sum() > 0,
       "proxyclip: every entry with S' < 0 has weight exactly 0 (and there are such entries)")
local outs = {}
for n = 1, 2 do
  local vp = v:select(1, n):narrow(1, 2, N):reshape(grid[1], grid[2], C):permute(3, 1, 2):contiguous()
  local vr = nn.interpolate(vp:reshape(1, C, grid[1], grid[2]), 6, 6, { mode = "bilinear" })
  outs[n] = attn:matmul(vr:reshape(C, 36):t():contiguous())
end
tap.near(R.proxyclip.last_block(last, x, attn, grid, { 6, 6 }), out_proj(T.stack(outs, 1), L), TOL,
         "proxyclip: out_proj(softmax(S') v) with v on the proxy grid, no residual, no FFN")

-- GEM over the last min(6, L) blocks; the ordinary path's inputs are the
-- reference hidden states.
local function gem_by_hand(residual)
  local nb = math.min(6, L)
  local first = L - nb + 1
  local x_gem = ref:get("vision.hidden_states." .. (first - 1))
  for i = first, L do
    local hidden = ref:get("vision.hidden_states." .. (i - 1))
    local hln = ln_of(hidden, i, "layer_norm1")
    local qi, ki, vi = linear(hln, i, "self_attn.q_proj"), linear(hln, i, "self_attn.k_proj"), linear(hln, i, "self_attn.v_proj")
    local rows = {}
    for n = 1, hidden:size(1) do
      local tau = hln:select(1, n):norm(-1):mean() / math.sqrt(D)
      local function unit(t) -- per head
        local parts = {}
        for h = 1, H do
          local sl = t:narrow(2, (h - 1) * D + 1, D)
          parts[h] = sl / sl:norm(-1, true)
        end
        return T.cat(parts, 2)
      end
      local acc = nil
      for _, src in ipairs({ vi, ki, qi }) do
        local z = unit(src:select(1, n):contiguous())
        local z3 = z:reshape(1, z:size(1), C)
        z = unit(mh(z3, z3, z3, tau):select(1, 1))                  -- one iteration
        z3 = z:reshape(1, z:size(1), C)
        local o = mh(z3, z3, vi:narrow(1, n, 1), tau):select(1, 1)
        acc = acc and acc + o or o
      end
      rows[n] = acc / 3
    end
    local g = out_proj(T.stack(rows, 1), i)
    x_gem = residual and x_gem + g or g
  end
  return x_gem, ref:get("vision.hidden_states." .. (first - 1))
end
local gem_params = { ss_attn_iter = 1, ss_attn_temp = false, gem_depth = 7, residual = true }
local want_gem, gem_in = gem_by_hand(true)
local gem_blocks = R.gem.gem_blocks(model, gem_params)
tap.eq(#gem_blocks, math.min(6, L), "gem: depth 7 means the last 6 blocks (all of a shallower model)")
tap.near(R.gem.gem_path(gem_blocks, gem_in, gem_params), want_gem, TOL,
         "gem: self-self attention of q, k, v applied to v, averaged, accumulated with the residual")
gem_params.residual = false
tap.near(R.gem.gem_path(gem_blocks, gem_in, gem_params), (gem_by_hand(false)), TOL,
         "gem, residual = false (ClearCLIP's ignore_residual): the last block's GEM output alone")

-- Dense features end to end: encoder up to the last block (ours), the
-- recipe's block, the head, patch tokens only.
local px = ref:get("pixel_values"):narrow(1, 1, 1):contiguous()
local base_state = { model = model, params = recipes.params(R.sclip, {}) }
local feats, gh, gw = clipseg.last_block_method(R.sclip.last_block)(base_state, px)
local y1 = y:narrow(1, 1, 1)
tap.near(feats, head(y1 + mlp(y1, L)):select(1, 1):narrow(1, 2, N), TOL,
         "dense features: post_layernorm and projection of the last block's patch tokens")
tap.ok(gh == grid[1] and gw == grid[2] and feats:size(1) == N, "dense features come with their patch grid")
local gstate = { model = model, params = recipes.params(R.gem, {}) }
local gfeats = R.gem.dense(gstate, px)
tap.near(gfeats, head(want_gem:narrow(1, 1, 1)):select(1, 1):narrow(1, 2, N), TOL,
         "gem dense: head of x_gem (trained grid: no position resampling)")

-- ProxyCLIP's proxies: DINO / DINOv2 patch tokens after the final norm,
-- SAM's neck output.
local dino_dir = tap.fixtures("dino-tiny")
if dino_dir then
  local dino = require("fmseg.models.vfm").load(dino_dir)
  local dref = safetensors.open(dino_dir .. "/ref.safetensors")
  local dpx = dref:get("pixel_values"):narrow(1, 2, 1):contiguous()
  local pf, i, j = R.proxyclip.proxy_features(dino, dpx)
  local lhs = dref:get("last_hidden_state"):select(1, 2)
  tap.near(pf, lhs:narrow(1, 2, lhs:size(1) - 1), TOL, "proxyclip: DINO proxy = last_hidden_state patch tokens")
  tap.ok(i * j == lhs:size(1) - 1, "proxyclip: DINO proxy grid")
end
local reg_dir = tap.fixtures("dinov2-reg-tiny")
if reg_dir then
  local reg = require("fmseg.models.vfm").load(reg_dir)
  local rref = safetensors.open(reg_dir .. "/ref.safetensors")
  local pf = R.proxyclip.proxy_features(reg, rref:get("pixel_values"):narrow(1, 1, 1):contiguous())
  local lhs = rref:get("last_hidden_state"):select(1, 1)
  tap.near(pf, lhs:narrow(1, 6, lhs:size(1) - 5), TOL, "proxyclip: DINOv2 proxy drops the class token and 4 registers")
end
local sam_dir = tap.fixtures("sam-tiny")
if sam_dir then
  local sam = require("fmseg.models.vfm").load(sam_dir)
  local sref = safetensors.open(sam_dir .. "/ref.safetensors")
  local pf, i, j = R.proxyclip.proxy_features(sam, sref:get("pixel_values"))
  local emb = sref:get("image_embeddings")
  tap.near(pf, emb:reshape(emb:size(2), emb:size(3) * emb:size(4)):t(), TOL,
           "proxyclip: SAM proxy = the image encoder's neck output, one row per position")
  tap.ok(i == emb:size(3) and j == emb:size(4), "proxyclip: SAM proxy grid")
end

-- The VFM's input: CLIP's normalisation undone with openai's 0-1 constants
-- (proxyclip_segmentor.py's UnNormalize), ImageNet's applied.
local xin = T.from_table({ { { { 1.0 } }, { { -1.0 } }, { { 0.5 } } } })          -- (1, 3, 1, 1)
local xv = R.proxyclip.vfm_input(xin, clipseg.CLIP_MEAN, clipseg.CLIP_STD, clipseg.IMAGENET_MEAN,
                                 clipseg.IMAGENET_STD)
local px1 = 1.0 * 0.26862954 + 0.48145466
tap.ok(math.abs(xv:get(1, 1, 1, 1) - (px1 - 0.485) / 0.229) < 1e-5
       and math.abs(xv:get(1, 2, 1, 1) - ((-0.26130258 + 0.4578275) - 0.456) / 0.224) < 1e-5,
       "proxyclip: pixels re-normalised for the VFM with openai's constants")

-- Which Lua a config can run: a name is recipes/<name>.lua and nothing
-- else; anything else must be an explicit path ending in .lua.
do
  local scratch = os.tmpname()
  os.remove(scratch)
  os.execute("mkdir -p " .. scratch)
  local f = assert(io.open(scratch .. "/mine.lua", "w"))
  f:write("return { defaults = { k = 1 }, segment = function() end }\n")
  f:close()
  for _, spec in ipairs({ "../../tmp/mine", scratch .. "/mine", "recipes/../x", "sclip/../gem", "" }) do
    tap.raises(function() recipes.load(spec) end, "recipe must be a name like 'sclip' or the path of a .lua file",
               ("recipe %q (a path assembled from a name) is refused"):format(spec))
  end
  tap.raises(function() recipes.load("mine") end, "unknown recipe 'mine'",
             "a name never finds a file outside recipes/")
  local mine = recipes.load(scratch .. "/mine.lua")
  tap.ok(mine.name == "mine" and mine.defaults.k == 1, "an explicit .lua path loads; the recipe is named by its stem")
  tap.eq(recipes.name_of(scratch .. "/mine.lua"), "mine", "name_of: a path's stem")
  tap.raises(function() recipes.load(scratch .. "/missing.lua") end, "recipe file not found: " .. scratch .. "/missing.lua",
             "a missing recipe file is named")
  os.execute("rm -rf " .. scratch)
end

os.exit(tap.done())
