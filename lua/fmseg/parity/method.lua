-- fmseg.parity.method — `fmseg parity DIR` on a method fixture: DIR holds
-- method.json (a recipe, its params, models and classes, the outputs to
-- compare), an image and ref.safetensors made by the method's official
-- code (tests/fixtures/methods/README.md). The recipe runs on the image as
-- `fmseg segment` runs it; every listed output is compared as it says:
--   float       max|a-b| / max|b| within the fixtures' 1e-4
--   float_sign  the same, our sign flipped when that is closer (eigenvectors)
--   exact       integers equal element for element (boxes, segment ids)
--   labels      label maps equal except where the official top-1 minus
--               top-2 probability (`margin`) is below 1e-5: such pixels
--               are an honest tie, counted and reported, not failed
--   labels_relative  the same with `margin` relative, (top-1 − top-2) / top-1,
--               below 1e-4 (the fixtures' float tolerance): for maps of small
--               numbers (DiffSeg's attention maps, ~1/4096 each), whose
--               float32 noise is relative to their size
local fs = require("fmseg.io.fs")
local hf = require("fmseg.io.hf")
local image = require("fmseg.image")
local safetensors = require("fmseg.io.safetensors")
local segment = require("fmseg.method.segment")
local T = require("fmseg.tensor")

local M = {}
M.MARGIN = 1e-5
M.RELATIVE_MARGIN = 1e-4
local COMPARES = { float = true, float_sign = true, exact = true, labels = true, labels_relative = true }
local CONFIG_KEYS = { "recipe", "params", "models", "classes", "regions", "refine", "modifiers" }

function M.is_fixture(dir) return fs.exists(dir .. "/method.json") end

-- method.json, checked: every output has a known compare and a reference
-- tensor (and its margin tensor), the image exists.
local function read_meta(dir, ref)
  local file = dir .. "/method.json"
  local meta = hf.read_json(file)
  local function bad(msg) error(("%s: %s"):format(file, msg), 0) end
  if type(meta.recipe) ~= "string" then bad("'recipe' must name a recipe") end
  if type(meta.outputs) ~= "table" or next(meta.outputs) == nil then
    bad("'outputs' must map reference tensor names to {compare = ...}")
  end
  for name, spec in pairs(meta.outputs) do
    if type(spec) ~= "table" or not COMPARES[spec.compare] then
      bad(("outputs.%s.compare must be one of float, float_sign, exact, labels, labels_relative"):format(name))
    end
    if not ref:has(name) then bad(("outputs.%s: no such tensor in %s"):format(name, ref.path)) end
    if spec.compare == "labels" or spec.compare == "labels_relative" then
      if type(spec.margin) ~= "string" then bad(("outputs.%s.margin must name a tensor"):format(name)) end
      if not ref:has(spec.margin) then
        bad(("outputs.%s.margin: no tensor '%s' in %s"):format(name, spec.margin, ref.path))
      end
    end
  end
  meta.image = meta.image or "image.png"
  if not fs.exists(dir .. "/" .. meta.image) then bad(("image '%s' not found"):format(meta.image)) end
  return meta
end

-- The config method.json describes, its paths made relative to DIR's.
local function config_of(dir, meta)
  local cfg = {}
  for _, k in ipairs(CONFIG_KEYS) do cfg[k] = meta[k] end
  local function at(p) return p:sub(1, 1) == "/" and p or (dir .. "/" .. p) end
  if cfg.models then
    local models = {}
    for kind, p in pairs(cfg.models) do models[kind] = at(p) end
    cfg.models = models
  end
  if type(cfg.classes) == "string" then cfg.classes = at(cfg.classes) end
  -- params that name files of the fixture (method.json "param_files": [...])
  if type(meta.param_files) == "table" and type(cfg.params) == "table" then
    local params = {}
    for k, v in pairs(cfg.params) do params[k] = v end
    for _, k in ipairs(meta.param_files) do
      if type(params[k]) == "string" then params[k] = at(params[k]) end
    end
    cfg.params = params
  end
  -- a recipe of the fixture's own, named by its path in the fixture
  if type(cfg.recipe) == "string" and cfg.recipe:match("%.lua$") then cfg.recipe = at(cfg.recipe) end
  return cfg
end

-- Our value for output NAME: the label map, else the result's dump entry,
-- else a field of the result; a list of boxes becomes an int32 [n, 4].
local function ours(result, name)
  local v
  if name == "labels" then v = result.labels
  else v = (result.dump and result.dump[name]) or result[name] end
  if type(v) == "table" and not v.ndim then
    v = #v == 0 and T.zeros({ 0, 4 }, "int32") or T.from_table(v, "int32")
  end
  return v
end

local function same_shape(got, want)
  local gs, ws = T.shape_string(got:shape()), T.shape_string(want:shape())
  if gs ~= ws then return false, ("shape %s, reference %s"):format(gs, ws) end
  return true
end

-- Each compare returns ok, the error column, a note.
local compare = {}

function compare.float(got, want)
  local parity = require("fmseg.parity")
  local e, why = parity.compare(got, want)
  if not e then return false, "-", why end
  return parity.within(e), ("%.3g"):format(e.rel), ("max abs %.3g"):format(e.abs)
end

function compare.float_sign(got, want)
  local parity = require("fmseg.parity")
  local e, why = parity.compare(got, want)
  if not e then return false, "-", why end
  local flipped = parity.compare(-got:float(), want)
  local note = "max abs %.3g"
  if flipped.rel < e.rel then e, note = flipped, "max abs %.3g (sign flipped)" end
  return parity.within(e), ("%.3g"):format(e.rel), note:format(e.abs)
end

local function count(t) return t:numel() == 0 and 0 or math.floor(t:sum() + 0.5) end

function compare.exact(got, want)
  local ok, why = same_shape(got, want)
  if not ok then return false, "-", why end
  local differ = count(1 - got:float():eq(want:float()))
  return differ == 0, ("%d"):format(differ), ("%d of %d elements differ"):format(differ, want:numel())
end

local function labels_below(got, want, margin, below, what)
  local ok, why = same_shape(got, want)
  if not ok then return false, "-", why end
  local ok_m, why_m = same_shape(margin, want)
  if not ok_m then return false, "-", "margin " .. why_m end
  local differ = 1 - got:float():eq(want:float())
  local total = count(differ)
  local real = count(differ * margin:float():ge(below))
  return real == 0, ("%d"):format(real),
         ("%d of %d pixels differ, %d of them where the official %s < %.0e"):format(
           total, want:numel(), total - real, what, below)
end

function compare.labels(got, want, margin) return labels_below(got, want, margin, M.MARGIN, "margin") end

function compare.labels_relative(got, want, margin)
  return labels_below(got, want, margin, M.RELATIVE_MARGIN, "relative margin")
end

function M.run(dir, opts)
  opts = opts or {}
  local ref = safetensors.open(dir .. "/ref.safetensors")
  local meta = read_meta(dir, ref)
  local t0 = os.clock()
  local session = segment.session(config_of(dir, meta))
  local result = session:segment(image.load(dir .. "/" .. meta.image),
                                 { path = dir .. "/" .. meta.image, stem = meta.image:match("([^/]*)%.%w+$"),
                                   expression = meta.expression, raw = meta.expression })
  local elapsed = os.clock() - t0

  local names = {}
  for name in pairs(meta.outputs) do names[#names + 1] = name end
  table.sort(names)
  local width = 10
  for _, n in ipairs(names) do width = math.max(width, #n) end
  local fmt = "%-" .. width .. "s  %-15s %-18s %10s  %s"
  print(("%s (method %s): %d outputs, computed in %.2f s CPU"):format(dir, meta.recipe, #names, elapsed))
  print(fmt:format("output", "compare", "shape", "error", ""))
  local failures, dump = 0, {}
  for _, name in ipairs(names) do
    local spec, want = meta.outputs[name], ref:get(name)
    local got = ours(result, name)
    local shape = T.shape_string(want:shape())
    if not got then
      failures = failures + 1
      print(fmt:format(name, spec.compare, shape, "-", "NOT COMPUTED by the recipe"))
    else
      dump[name] = got
      local ok, err, note = compare[spec.compare](got, want, spec.margin and ref:get(spec.margin))
      if not ok then failures = failures + 1 end
      print(fmt:format(name, spec.compare, shape, err, (ok and "ok  " or "FAIL  ") .. note))
    end
  end
  if opts.dump then
    local out = {}
    for name, t in pairs(dump) do out[name] = t end
    safetensors.save(opts.dump, out)
    print("wrote " .. opts.dump)
  end
  print(failures == 0 and ("all %d outputs match the official code"):format(#names)
        or ("%d of %d outputs differ from the official code or are missing"):format(failures, #names))
  return failures == 0 and 0 or 1
end

return M
