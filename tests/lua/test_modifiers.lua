-- Modifiers (fmseg.method.modifiers, recipes/modifiers/): a config's `modifiers`
-- list is checked before any image is read (unknown name or parameter, a
-- capability the base recipe lacks, a layer the model does not have; the
-- message names the key), every shipped ResCLIP config resolves on each of
-- its bases, and ResCLIP's pieces (the remolded last block, the SFR
-- matrix) do what their formulas say. The end-to-end comparison with the
-- official code is tests/fixtures/methods/resclip-* (test_method_fixtures).
local tap = require("tap")
local config = require("fmseg.io.config")
local modifiers = require("fmseg.method.modifiers")
local recipes = require("fmseg.method.recipes")
local segment = require("fmseg.method.segment")
local T = require("fmseg.tensor")

local MODELS = "tests/fixtures/methods/models"
local CLIP12 = MODELS .. "/clip-b16-tiny12"      -- ViT-B's 12 blocks
local CLIP8 = MODELS .. "/clip-b16-tiny"         -- 8 blocks

local function cfg_of(t)
  local cfg = { classes = { "background", "cat, kitten", "car" }, models = { clip = CLIP12 } }
  for k, v in pairs(t) do cfg[k] = v end
  return cfg
end

-- ---- the list and its entries ------------------------------------------------------

tap.ok(#modifiers.from_config({ recipe = "naclip" }) == 0, "no `modifiers` key: nothing to apply")
tap.raises(function() modifiers.from_config({ modifiers = { name = "resclip" } }) end,
           "`modifiers` must be a list", "a mapping where the list belongs is refused")
tap.raises(function() modifiers.from_config({ modifiers = { { name = "rescilp" } } }) end,
           "modifiers[1].name: unknown modifier 'rescilp' (available: ", "an unknown modifier is refused, naming the key")
tap.raises(function() modifiers.from_config({ modifiers = { { name = "resclip", params = { temp_th = 0.3 } } } }) end,
           "unknown parameter 'temp_th'", "a misspelt modifier parameter is refused")
tap.raises(function() modifiers.from_config({ modifiers = { { name = "resclip", param = {} } } }) end,
           "modifiers[1]: unknown key 'param'", "an unknown key of an entry is refused")
local list = modifiers.from_config({ modifiers = { { name = "resclip", params = { temp_thd = 0.3 } } } })
tap.ok(list[1].params.temp_thd == 0.3 and list[1].params.rcs_layers[4] == 9 and list[1].params.sfr_weights[1] == 2.1,
       "params overlay the modifier's defaults (the official demo's)")

-- ---- refused when the session is made -----------------------------------------------

local function refused(cfg, pattern, name)
  tap.raises(function() segment.session(cfg) end, pattern, name)
end
local RESCLIP = { { name = "resclip" } }
refused(cfg_of({ recipe = "naclip", models = { clip = CLIP8 }, modifiers = RESCLIP }),
        "modifiers[1].params.rcs_layers: layer 8 is beyond the model's depth",
        "RCS layers past the model's non-final blocks are refused, naming the key")
refused(cfg_of({ recipe = "maskclip", modifiers = RESCLIP }),
        "modifiers[1] (resclip) needs a last block with attention maps to remold; maskclip",
        "a base whose last block has no attention map (MaskCLIP's value path) is refused")
refused(cfg_of({ recipe = "proxyclip", models = { clip = CLIP12, vfm = MODELS .. "/dino-b8-tiny" }, modifiers = RESCLIP }),
        "modifiers[1] (resclip) needs a recipe with 'last_block' (see fmseg.method.modifiers); recipe proxyclip has none",
        "ProxyCLIP (attention on the VFM's grid, no CLIP attention to remold) is refused")
refused(cfg_of({ recipe = "clearclip", modifiers = RESCLIP }), "pads no window; set params.pad_multiple: 0",
        "ClearCLIP's padded windows, which ResCLIP's segmentor never makes, are refused")
refused(cfg_of({ recipe = "naclip", modifiers = { { name = "resclip", params = { rcs_weights = { 2 } } } } }),
        "modifiers[1].params.rcs_weights must be [tau, lambda]", "malformed weights are refused")

-- ---- every shipped config resolves, on every base -----------------------------------

do
  local classes_mod = require("fmseg.method.classes")
  local checked, problems, bases = 0, {}, {}
  local p = io.popen("ls configs/resclip/*.yaml")
  for path in p:lines() do
    local ok, err = pcall(function()
      local cfg = config.load(path)
      local recipe = recipes.load(config.get(cfg, "recipe"))
      recipes.params(recipe, config.get(cfg, "params", {}))
      local mods = modifiers.from_config(cfg)
      if #mods ~= 1 or mods[1].modifier.name ~= "resclip" then error("no resclip modifier", 0) end
      local names = classes_mod.from_config(config.get(cfg, "classes")).names
      if #names ~= config.get(cfg, "data.num_classes") then error("class count", 0) end
      bases[recipe.name] = (bases[recipe.name] or 0) + 1
    end)
    checked = checked + 1
    if not ok then problems[#problems + 1] = path .. ": " .. tostring(err) end
  end
  p:close()
  tap.ok(checked == 24 and #problems == 0 and bases.naclip == 8 and bases.sclip == 8 and bases.clearclip == 8,
         ("configs/resclip: %d configs resolve, 8 datasets on naclip, sclip and clearclip"):format(checked),
         table.concat(problems, "\n"))
  -- and a session is made from one of them on each base (the tiny model)
  for _, base in ipairs({ "resclip", "resclip-sclip", "resclip-clearclip" }) do
    local cfg = config.load(("configs/resclip/%s_vitb16_context60.yaml"):format(base),
                            { "models.clip=" .. CLIP12, "classes=[background, cat, car]" })
    local ok, s = pcall(segment.session, cfg)
    tap.ok(ok and s.state.resclip ~= nil and s.state.whole_to_image == false,
           base .. "_vitb16_context60.yaml: the modifier is applied to its base's state", s)
  end
end

-- ---- the remolded last block ----------------------------------------------------------

local resclip = dofile("recipes/modifiers/resclip.lua")
local clip = require("fmseg.models").load("clip", CLIP12)
local blocks = clip.vision.layers
local last = blocks[#blocks]
local naclip = recipes.load("naclip")
local state = { params = recipes.params(naclip, {}), omega = {} }
local x = T.randn({ 1, 1 + 6, clip.vision.config.hidden_size }, 7)
local plain = naclip.last_block(last, x, state, { 2, 3 })
local same = naclip.last_block(resclip.remold(last, nil, nil), x, state, { 2, 3 })
tap.near(same, plain, 1e-5, "remold without RCS or SFR is the base's own last block (NACLIP)")
local R = T.rand({ 1, last.heads, 7, 7 }, 3)
R:div_(R:sum(-1, true))
local kept = naclip.last_block(resclip.remold(last, { R, 1.0, 0.0 }, nil), x, state, { 2, 3 })
tap.near(kept, plain, 1e-5, "RCS with tau 1, lambda 0 leaves the attention as it is")
-- tau 1, lambda 1: the attention is R itself, out_proj(R v) (NACLIP: no residual)
local _, _, v = last:qkv(last:ln1(x))
local heads, c = last.heads, v:size(3)
local vh = v:reshape(1, 7, heads, c / heads):permute(1, 3, 2, 4):contiguous()
local rv = R:matmul(vh):permute(1, 3, 2, 4):contiguous():reshape(1, 7, c)
local only_r = naclip.last_block(resclip.remold(last, { R, 1.0, 1.0 }, nil), x, state, { 2, 3 })
tap.near(only_r, last:out_proj(rv), 1e-5, "RCS with tau 1, lambda 1 attends with R: out_proj(R v)")
-- SCLIP sums two maps; RCS mixes R into their sum once
local sclip = recipes.load("sclip")
local q, k = last:qkv(last:ln1(x))
local function probs(a)
  local ah = a:reshape(1, 7, heads, c / heads):permute(1, 3, 2, 4):contiguous()
  local z = ah:matmul(ah, false, true):mul_(1 / math.sqrt(c / heads))
  z:sub_(z:max(-1, true)):exp_()
  return z:div_(z:sum(-1, true))
end
local A = (probs(q) + probs(k)):mul_(0.5):add_(R * 0.5):mul_(2.0)        -- 2 (0.5 A + 0.5 R)
local av = A:matmul(vh):permute(1, 3, 2, 4):contiguous():reshape(1, 7, c)
local y = x + last:out_proj(av)
y = y + last:mlp(last:ln2(y))
tap.near(sclip.last_block(resclip.remold(last, { R, 2.0, 0.5 }, nil), x), y, 1e-4,
         "SCLIP: tau_r ((1 - lambda_r)(softmax(q q') + softmax(k k')) + lambda_r R) v, residual and FFN kept")

-- ---- the SFR matrix ------------------------------------------------------------------

-- one row of three patches, queries 1 2 1: patch 0 and 2 share a query but
-- the path between them crosses patch 1, so S[0, 2] and S[2, 0] decay to exp(-2/2)
local p = { delete_same_entity = true, sfr_gaussian_std = 5.0 }
local S = resclip.sfr_attention(T.from_table({ { 1, 2, 1 } }, "int32"), p)
local e = math.exp(-1)
local k3 = { math.exp(-1 / 50), 1, math.exp(-1 / 50) }                 -- the 3-wide kernel (std 5), unnormalised
local kz = k3[1] + k3[2] + k3[3]
local function blur(row)
  local out, total = {}, 0
  for j = 1, 3 do
    local acc = 0
    for m = 1, 3 do
      local src = row[j + m - 2]
      if src then acc = acc + k3[m] / kz * src end
    end
    out[j] = acc
    total = total + acc
  end
  for j = 1, 3 do out[j] = out[j] / (total + 1e-8) end
  return out
end
local rows = { blur({ 1, 0, e }), blur({ 0, 1, 0 }), blur({ e, 0, 1 }) }
local top = 0
for _, r in ipairs(rows) do for j = 1, 3 do top = math.max(top, r[j]) end end
local worst = 0
for i = 1, 3 do
  for j = 1, 3 do worst = math.max(worst, math.abs(S:get(i + 1, j + 1) - rows[i][j] / top)) end
end
tap.ok(worst < 1e-3, ("SFR: same query, path decay, Gaussian row smoothing, / max (float16: %.1e off)"):format(worst))
tap.ok(S:select(1, 1):abs():sum() == 0 and S:select(2, 1):abs():sum() == 0, "SFR: the class token's row and column are 0")
local S_keep = resclip.sfr_attention(T.from_table({ { 1, 2, 1 } }, "int32"),
                                     { delete_same_entity = false, sfr_gaussian_std = 5.0 })
tap.ok(S_keep:get(2, 4) > S:get(2, 4), "SFR: without delete_same_entity the pair keeps its full weight")

os.exit(tap.done())
