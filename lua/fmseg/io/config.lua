-- fmseg.io.config — experiment configs: YAML files with `_base_` inheritance
-- and `key.sub=value` overrides from the command line.
--
--   local config = require("fmseg.io.config")
--   local cfg = config.load("configs/maskclip_vitb16_voc-448.yaml",
--                           { "model.size=336", "data.classes=[cat, dog]" })
--   local size = config.get(cfg, "model.size", 448)
--   print(config.dump(cfg))                        -- fmseg print-config
--
-- Semantics (mmsegmentation's, as STYLE.md asks):
-- - `_base_: path` or `_base_: [a, b]`: paths relative to the including
--   file, loaded first, recursively, in order; later bases override earlier
--   ones and the file's own keys override its bases.
-- - Mappings deep-merge; lists and scalars replace; `~` (null) replaces too
--   and stays in the result as json.null (config.get turns it into nil).
-- - A mapping holding `_delete_: true` replaces the base's mapping instead
--   of merging into it (mmcv's `_delete_`); the marker is removed.
-- - Overrides "a.b.c=VALUE": VALUE is read as YAML (so 0.5, true, [1, 2],
--   {k: v}, foo and '"quoted"' all work; an empty VALUE is null), replaces
--   what is at a.b.c, and creates missing (or null) intermediate mappings.
--   A number indexes a list (1-based): "model.mean.1=0.5".
--
-- Scalars follow core/yaml.c (YAML 1.1 as PyYAML, plus 1e-4 floats);
-- .inf arrives as math.huge, .nan as null (JSON has neither).
--
-- Budget: a config and all its `_base_` files together decode from at most
-- M.BUDGET.bytes of JSON (16 MiB) in at most M.BUDGET.files file reads (64,
-- repeats counted), so that a few hundred bytes of aliases or a fan of
-- `_base_` lists cannot expand to gigabytes; core/yaml.c refuses a single
-- document over 16 MiB before building it.
--
-- Errors are raised (level 0: the message is the whole story) and name the
-- file, and the key where there is one: "configs/a.yaml:3:7: ...",
-- "configs/a.yaml: _base_ 'x.yaml' not found (configs/x.yaml)".
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local json = require("fmseg.io.json")

local ffi, C = core.ffi, core.C
local null = json.null

local M = {}

M.BUDGET = { bytes = 16 * 2 ^ 20, files = 64 }

-- ---- values ---------------------------------------------------------------

local function is_table(v) return type(v) == "table" and v ~= null end

-- A list: what json.lua decoded from [...] (json.array_mt), or a table
-- built in Lua whose keys are exactly 1..n, n > 0.
local function is_list(v)
  if not is_table(v) then return false end
  local mt = getmetatable(v)
  if mt == json.array_mt then return true end
  if mt == json.object_mt then return false end
  local n = #v
  if n == 0 then return false end
  local count = 0
  for _ in pairs(v) do count = count + 1 end
  return count == n
end

local function is_dict(v) return is_table(v) and not is_list(v) end

-- ---- YAML through libfmseg --------------------------------------------------

local function json_or_raise(p)
  if p == nil then
    local msg = ffi.string(C.fm_last_error())
    C.fm_clear_error()
    error(msg, 0)
  end
  local text = ffi.string(p)
  C.fm_free(p)
  return text
end

-- The document in `path` (a YAML file) as Lua values, and the size of its
-- JSON form.
function M.read_yaml(path)
  if type(path) ~= "string" then error("config.read_yaml: path must be a string", 2) end
  local text = json_or_raise(C.fm_yaml_to_json(path))
  return json.decode(text, path), #text
end

-- YAML text as Lua values; `name` appears in error messages.
function M.parse_yaml(text, name)
  if type(text) ~= "string" then error("config.parse_yaml: text must be a string", 2) end
  name = name or "<string>"
  return json.decode(json_or_raise(C.fm_yaml_string_to_json(text, name)), name)
end

-- ---- merging ---------------------------------------------------------------

local merge

-- A deep copy (keeping json.lua's array/object marks), with every
-- `_delete_` marker dropped: there is nothing for it to delete.
local function copy(v)
  if not is_table(v) then return v end
  if is_dict(v) then return merge(json.object(), v) end
  local out = setmetatable({}, getmetatable(v))
  for k, x in pairs(v) do out[k] = copy(x) end
  return out
end

-- `over` merged into `base`, as a new table sharing nothing with either:
-- mappings merge key by key, anything else replaces; a mapping marked
-- `_delete_: true` replaces too.
function merge(base, over)
  local out = json.object()   -- so that json.encode writes {} when empty
  for k, v in pairs(base) do out[k] = copy(v) end
  for k, v in pairs(over) do
    if k ~= "_delete_" then
      if is_dict(v) and v._delete_ ~= true and is_dict(out[k]) then
        out[k] = merge(out[k], v)
      else
        out[k] = copy(v)
      end
    end
  end
  return out
end
M.merge = merge

-- ---- files and _base_ --------------------------------------------------------

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end

-- "a/./b/../c" → "a/c"; keeps leading ".." of relative paths.
local function normalize(path)
  local absolute = path:sub(1, 1) == "/"
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." and #parts > 0 and parts[#parts] ~= ".." then
      parts[#parts] = nil
    elseif part ~= "." and not (part == ".." and absolute) then
      parts[#parts + 1] = part
    end
  end
  local joined = table.concat(parts, "/")
  if absolute then return "/" .. joined end
  return joined == "" and "." or joined
end

local function join(dir, rel)
  if rel:sub(1, 1) == "/" then return normalize(rel) end
  return normalize(dir .. "/" .. rel)
end

local exists = fs.exists

local function describe(v)
  if v == null then return "null" end
  if is_list(v) then return "a list" end
  if is_table(v) then return "a mapping" end
  return ("a %s (%s)"):format(type(v), tostring(v))
end

local function base_list(data, path)
  local bases = data._base_
  if bases == nil or bases == null then return {} end
  if type(bases) == "string" then return { bases } end
  if is_list(bases) then
    for i, b in ipairs(bases) do
      if type(b) ~= "string" then
        error(("%s: _base_[%d] must be a path, got %s"):format(path, i, describe(b)), 0)
      end
    end
    return bases
  end
  error(("%s: _base_ must be a path or a list of paths, got %s"):format(path, describe(bases)), 0)
end

-- What one config has read so far, against M.BUDGET.
local function spend(used, path, bytes)
  used.files, used.bytes = used.files + 1, used.bytes + bytes
  if used.files > M.BUDGET.files then
    error(("%s: the config reads more than %d files through _base_ (repeats counted)"):format(
      used.root, M.BUDGET.files), 0)
  end
  if used.bytes > M.BUDGET.bytes then
    error(("%s: the config expands to more than %d MiB (at %s); configs are kilobytes"):format(
      used.root, M.BUDGET.bytes / 2 ^ 20, path), 0)
  end
end

-- chain: the files being loaded, outermost first (to name a cycle); used:
-- the budget spent (see the top).
local function load_file(path, chain, used)
  for i, p in ipairs(chain) do
    if p == path then
      local names = {}
      for j = i, #chain do names[#names + 1] = chain[j] end
      names[#names + 1] = path
      error(("%s: _base_ cycle: %s"):format(chain[#chain], table.concat(names, " -> ")), 0)
    end
  end
  local data, bytes = M.read_yaml(path)
  spend(used, path, bytes)
  if data == nil or data == null then data = {} end
  if not is_dict(data) then
    error(("%s: a config must be a mapping at the top level, got %s"):format(path, describe(data)), 0)
  end
  local result = {}
  local inner = { unpack(chain) }
  inner[#inner + 1] = path
  for _, rel in ipairs(base_list(data, path)) do
    local base_path = join(dirname(path), rel)
    if not exists(base_path) then
      error(("%s: _base_ '%s' not found (%s)"):format(path, rel, base_path), 0)
    end
    result = merge(result, load_file(base_path, inner, used))
  end
  local own = {}
  for k, v in pairs(data) do
    if k ~= "_base_" then own[k] = v end
  end
  return merge(result, own)
end

-- ---- keys and overrides ------------------------------------------------------

local function split_key(key)
  local parts = {}
  for part in (key .. "."):gmatch("([^.]*)%.") do parts[#parts + 1] = part end
  return parts
end

-- The table slot for part `p` of a key: list indices are 1-based numbers.
local function slot(t, p)
  if is_list(t) then return tonumber(p) end
  return p
end

-- Walks `key` ("a.b.c"); returns the value or nil (missing, or a non-table
-- on the way).
local function lookup(cfg, key)
  local v = cfg
  for _, p in ipairs(split_key(key)) do
    if not is_table(v) then return nil end
    local s = slot(v, p)
    if s == nil then return nil end
    v = v[s]
  end
  return v
end

-- config.get(cfg, "a.b.c", default): default when the key is missing; nil
-- when it is set to null (`~`), which says "none" on purpose.
function M.get(cfg, key, default)
  if not is_table(cfg) then error("config.get: cfg must be a table", 2) end
  if type(key) ~= "string" then error("config.get: key must be a string", 2) end
  local v = lookup(cfg, key)
  if v == nil then return default end
  if v == null then return nil end
  return v
end

-- Sets cfg's value at "a.b.c" in place, creating missing intermediate
-- mappings. `what` names the request in errors.
function M.set(cfg, key, value, what)
  what = what or ("config.set '%s'"):format(key)
  local parts = split_key(key)
  local t = cfg
  for i, p in ipairs(parts) do
    if p == "" then error(("%s: empty part in key '%s'"):format(what, key), 0) end
    local s = slot(t, p)
    local here = table.concat(parts, ".", 1, i)
    if s == nil or (is_list(t) and (s < 1 or s > #t + 1 or s % 1 ~= 0)) then
      error(("%s: %s is a list of %d; index it with 1..%d"):format(
        what, table.concat(parts, ".", 1, i - 1), #t, #t + 1), 0)
    end
    if i == #parts then
      t[s] = value
    else
      local v = t[s]
      if v == nil or v == null then
        v = json.object()
        t[s] = v
      elseif not is_table(v) then
        error(("%s: %s is %s, not a mapping"):format(what, here, describe(v)), 0)
      end
      t = v
    end
  end
  return cfg
end

-- Applies "a.b.c=VALUE" strings in order (VALUE read as YAML).
function M.apply_overrides(cfg, overrides)
  for _, o in ipairs(overrides or {}) do
    if type(o) ~= "string" then error("config: overrides must be strings", 2) end
    local key, text = o:match("^%s*([^=]-)%s*=(.*)$")
    if not key or key == "" then
      error(("override '%s': expected key=value (e.g. model.size=448)"):format(o), 0)
    end
    local value = M.parse_yaml(text, ("override '%s'"):format(o))
    M.set(cfg, key, value, ("override '%s'"):format(o))
  end
  return cfg
end

-- The resolved config in `path` with `overrides` applied.
function M.load(path, overrides)
  if type(path) ~= "string" then error("config.load: path must be a string", 2) end
  if overrides ~= nil and type(overrides) ~= "table" then
    error("config.load: overrides must be a list of 'key=value' strings", 2)
  end
  local cfg = load_file(normalize(path), {}, { root = path, files = 0, bytes = 0 })
  return M.apply_overrides(cfg, overrides)
end

-- ---- dump (fmseg print-config) -------------------------------------------------

local RESERVED = { null = true, ["true"] = true, ["false"] = true, yes = true,
                   no = true, on = true, off = true, y = true, n = true }

-- Plain when it cannot be read back as anything but this string.
local function string_text(s)
  if s:match("^[%a_/][%w_%-%./]*$") and not RESERVED[s:lower()] then return s end
  local escaped = s:gsub('[%c"\\]', function(c)
    local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r" }
    return named[c] or ("\\x%02x"):format(c:byte())
  end)
  -- YAML reads NEL, LS and PS as line breaks even inside quotes: escaped
  escaped = escaped:gsub("\194\133", "\\N"):gsub("\226\128\168", "\\L"):gsub("\226\128\169", "\\P")
  return '"' .. escaped .. '"'
end

local function number_text(x)
  if x ~= x then return ".nan" end
  if x == math.huge then return ".inf" end
  if x == -math.huge then return "-.inf" end
  if x % 1 == 0 and math.abs(x) < 2 ^ 53 then return ("%d"):format(x) end
  local s
  for prec = 15, 17 do
    s = ("%." .. prec .. "g"):format(x)
    if tonumber(s) == x then break end
  end
  if not s:find("[.eE]") then s = s .. ".0" end
  if s:find("[eE]") and not s:find("%.") then s = s:gsub("[eE]", ".0e", 1) end -- 1e+20 → 1.0e+20 (PyYAML)
  return s
end

local function scalar_text(v)
  if v == null or v == nil then return "null" end
  local t = type(v)
  if t == "boolean" then return tostring(v) end
  if t == "number" then return number_text(v) end
  if t == "string" then return string_text(v) end
  error(("config.dump: cannot write a %s"):format(t), 0)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

local function all_scalars(list)
  for _, v in ipairs(list) do
    if is_table(v) and next(v) ~= nil then return false end
  end
  return true
end

local function empty_text(v) return is_list(v) and "[]" or "{}" end

local function flow_text(v)
  if not is_table(v) then return scalar_text(v) end
  if next(v) == nil then return empty_text(v) end
  local items = {}
  for i, x in ipairs(v) do items[i] = flow_text(x) end
  return "[" .. table.concat(items, ", ") .. "]"
end

local emit

-- "key:" then the value, inline or as a nested block.
local function emit_entry(lines, pad, label, v, indent)
  if not is_table(v) then
    lines[#lines + 1] = pad .. label .. " " .. scalar_text(v)
  elseif next(v) == nil then
    lines[#lines + 1] = pad .. label .. " " .. empty_text(v)
  elseif is_list(v) and all_scalars(v) and #flow_text(v) + #pad + #label < 100 then
    lines[#lines + 1] = pad .. label .. " " .. flow_text(v)
  else
    lines[#lines + 1] = pad .. label
    emit(lines, v, indent + 2)
  end
end

function emit(lines, v, indent)
  local pad = (" "):rep(indent)
  if is_list(v) then
    for _, item in ipairs(v) do
      if is_table(item) and next(item) ~= nil and not (is_list(item) and all_scalars(item)) then
        -- "- " takes the place of the first nested line's indentation
        local first = #lines + 1
        emit(lines, item, indent + 2)
        lines[first] = pad .. "- " .. lines[first]:sub(indent + 3)
      else
        lines[#lines + 1] = pad .. "- " .. flow_text(item)
      end
    end
  else
    for _, k in ipairs(sorted_keys(v)) do
      emit_entry(lines, pad, string_text(tostring(k)) .. ":", v[k], indent)
    end
  end
end

-- The config as YAML (keys sorted); config.load of the text gives it back.
function M.dump(cfg)
  if not is_table(cfg) then return scalar_text(cfg) .. "\n" end
  if next(cfg) == nil then return empty_text(cfg) .. "\n" end
  local lines = {}
  emit(lines, cfg, 0)
  return table.concat(lines, "\n") .. "\n"
end

return M
