-- fmseg.parity — `fmseg parity DIR [--dump FILE]`: run a model directory on
-- the inputs stored in DIR/ref.safetensors and compare every reference
-- tensor with what we compute. A directory with a method.json is a method
-- fixture instead (a whole recipe against its official code): see
-- fmseg.parity.method.
--
-- Each family has a module lua/fmseg/parity/<family>.lua returning
--   { inputs = { "pixel_values", ... },          -- given, not compared
--     compute = function(dir, ref, meta) return { name = tensor, ... } end,
--     tolerance = { name = { abs = 0.02 } } }        -- optional overrides
-- where `ref` is the opened ref.safetensors and `meta` the decoded ref.json.
-- A tolerance override sets `abs` (max|a-b|) and/or `rel` for one tensor,
-- for tensors the fixtures README gives a different tolerance.
local hf = require("fmseg.io.hf")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")

local M = {}
M.tolerance = 1e-4   -- max|a-b| / max|b|, the fixtures' README

local FAMILIES = {
  clip = "fmseg.parity.clip",
  dino = "fmseg.parity.vit",
  dinov2 = "fmseg.parity.vit",
  sam = "fmseg.parity.sam",
  sam2 = "fmseg.parity.sam2",
  ["stable-diffusion"] = "fmseg.parity.sd",
}

-- config.json's model_type → family, for a ref.json that does not say
local MODEL_TYPES = { clip = "clip", vit = "dino", dinov2 = "dinov2", dinov2_with_registers = "dinov2",
                      sam = "sam", sam2 = "sam2" }

local function family_of(dir, meta)
  if meta.family then return meta.family end
  if hf.exists(dir .. "/model_index.json") then return "stable-diffusion" end
  local cfg = hf.exists(dir .. "/config.json") and hf.read_json(dir .. "/config.json") or {}
  return MODEL_TYPES[cfg.model_type] or cfg.model_type
end

-- Errors of `got` against `want`: max abs, max |want|, relative.
function M.compare(got, want)
  local gs, ws = got:shape(), want:shape()
  if T.shape_string(gs) ~= T.shape_string(ws) then
    return nil, ("shape %s, reference %s"):format(T.shape_string(gs), T.shape_string(ws))
  end
  local g, w = got:float(), want:float()
  local abs = (g - w):abs():max()
  local scale = w:abs():max()
  if abs ~= abs then abs = math.huge end
  return { abs = abs, rel = scale > 0 and abs / scale or abs }
end

-- Is the error `e` (from compare) within the default relative tolerance,
-- or within `override` ({abs =, rel =}) when given?
function M.within(e, override)
  if not override then return e.rel <= M.tolerance end
  return (override.abs == nil or e.abs <= override.abs) and (override.rel == nil or e.rel <= override.rel)
end

-- Puts what an encoder run kept (fmseg.models.transformer.encode's result)
-- into `out` under the fixtures' names: PREFIX.hidden_states.i (0 = the
-- encoder input), PREFIX.attentions.i for our block i + 1 (the reference
-- counts layers from 0) and PREFIX.last.{ln1,q,k,v}.
function M.add_encoder(out, prefix, run)
  if run.hidden_states then
    for i = 0, #run.hidden_states do out[prefix .. "hidden_states." .. i] = run.hidden_states[i] end
  end
  for i, a in ipairs(run.attentions or {}) do out[prefix .. "attentions." .. (i - 1)] = a end
  if run.qkv then
    for _, k in ipairs({ "ln1", "q", "k", "v" }) do out[prefix .. "last." .. k] = run.qkv[k] end
  end
  return out
end

function M.run(dir, opts)
  opts = opts or {}
  dir = dir:gsub("/+$", "")
  local method = require("fmseg.parity.method")
  if method.is_fixture(dir) then return method.run(dir, opts) end
  if not hf.exists(dir .. "/ref.json") then
    error(("%s: not a fixture directory (no ref.json, no method.json)"):format(dir), 0)
  end
  local meta = hf.read_json(dir .. "/ref.json")
  local family = family_of(dir, meta)
  local modname = FAMILIES[family]
  if not modname then
    local known = {}
    for k in pairs(FAMILIES) do known[#known + 1] = k end
    table.sort(known)
    error(("%s: unknown model family '%s' (known: %s)"):format(dir, tostring(family), table.concat(known, ", ")), 0)
  end
  local fam = require(modname)
  local ref = safetensors.open(dir .. "/ref.safetensors")
  local is_input = {}
  for _, n in ipairs(fam.inputs) do is_input[n] = true end

  local t0 = os.clock()
  local computed = fam.compute(dir, ref, meta)
  local elapsed = os.clock() - t0

  local names = {}
  for name in pairs(meta.tensors) do
    if not is_input[name] then names[#names + 1] = name end
  end
  table.sort(names)
  local failures, width = 0, 10
  for _, n in ipairs(names) do width = math.max(width, #n) end
  local fmt = "%-" .. width .. "s  %-18s %12s %12s  %s"
  print(("%s (%s): %d reference tensors, computed in %.2f s CPU"):format(dir, family, #names, elapsed))
  print(fmt:format("tensor", "shape", "max abs", "rel", ""))
  for _, name in ipairs(names) do
    local got = computed[name]
    local shape = T.shape_string(ref:shape(name))
    if not got then
      failures = failures + 1
      print(fmt:format(name, shape, "-", "-", "NOT COMPUTED"))
    else
      local e, why = M.compare(got, ref:get(name))
      if not e then
        failures = failures + 1
        print(fmt:format(name, shape, "-", "-", "FAIL " .. why))
      else
        local ok = M.within(e, fam.tolerance and fam.tolerance[name])
        if not ok then failures = failures + 1 end
        local note = fam.tolerance and fam.tolerance[name] and " (own tolerance)" or ""
        print(fmt:format(name, shape, ("%.3g"):format(e.abs), ("%.3g"):format(e.rel), (ok and "ok" or "FAIL") .. note))
      end
    end
  end
  if opts.dump then
    local out = {}
    for name, t in pairs(computed) do out[name] = t:float() end
    safetensors.save(opts.dump, out)
    print("wrote " .. opts.dump)
  end
  print(failures == 0 and ("all %d tensors within %.0e relative"):format(#names, M.tolerance)
        or ("%d of %d tensors out of tolerance or missing"):format(failures, #names))
  return failures == 0 and 0 or 1
end

return M
