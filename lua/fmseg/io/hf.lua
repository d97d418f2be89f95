-- fmseg.io.hf — Hugging Face model directories as they are downloaded.
--
--   local dir = hf.open("clip-vit-base-patch16")   -- reads config.json
--   local w = dir:weights()        -- model.safetensors, sharded or variant
--   local fc1 = w:get("vision_model.encoder.layers.0.mlp.fc1.weight", {3072, 768})
--
-- Weights are looked up by the checkpoint's own names; a missing or
-- misshapen tensor raises an error naming the key and the shapes.
local fs = require("fmseg.io.fs")
local hub = require("fmseg.io.hub")
local json = require("fmseg.io.json")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")

local M = {}

local exists = fs.exists
M.exists = exists

function M.read_file(path)
  local text, err = fs.read(path)
  if not text then error(("cannot read %s: %s"):format(path, err), 0) end
  return text
end

function M.read_json(path)
  local ok, value = pcall(json.decode, M.read_file(path), path)
  if not ok then error(tostring(value), 0) end
  return value
end

-- Weights ---------------------------------------------------------------------

local Weights = {}
Weights.__index = Weights

-- Base names a directory may use for its weights, in order of preference.
local BASENAMES = { "model", "diffusion_pytorch_model" }

-- Opens the weights in `dir`: `<base>[.variant].safetensors` or the sharded
-- `<base>[.variant].safetensors.index.json`.
function M.open_weights(dir, variant)
  local suffix = variant and ("." .. variant) or ""
  for _, base in ipairs(BASENAMES) do
    local single = ("%s/%s%s.safetensors"):format(dir, base, suffix)
    if exists(single) then
      return setmetatable({ dir = dir, files = { [single] = safetensors.open(single) },
                            where = nil, single = single, used = {} }, Weights)
    end
    local index = single .. ".index.json"
    if exists(index) then
      local map = M.read_json(index).weight_map
      if type(map) ~= "table" then error(index .. ": no weight_map", 0) end
      local files, where = {}, {}
      for name, file in pairs(map) do
        -- a shard is a file of this directory, as the hub writes them
        if type(file) ~= "string" or file == "" or file:find("/", 1, true) or file == ".." or file == "." then
          error(("%s: weight_map[%q] must name a shard file in %s, got %s"):format(index, tostring(name), dir,
            type(file) == "string" and ("%q"):format(file) or type(file)), 0)
        end
        local path = dir .. "/" .. file
        if not files[path] then
          if not exists(path) then error(("%s names shard %s, which is missing"):format(index, path), 0) end
          files[path] = safetensors.open(path)
        end
        where[name] = path
      end
      return setmetatable({ dir = dir, files = files, where = where, used = {} }, Weights)
    end
  end
  error(("%s: no %ssafetensors weights (model%s.safetensors or a sharded index)"):format(
    dir, variant and (variant .. " ") or "", suffix), 0)
end

-- The file holding name, or nil and, for a sharded checkpoint, the shard
-- its index names. A sharded checkpoint is what its index says, as the
-- hub's loaders read it: a tensor is there when the index maps it to a
-- shard that holds it.
function Weights:file_of(name)
  if self.single then
    local f = self.files[self.single]
    return f:has(name) and f or nil
  end
  local path = self.where[name]
  local f = path and self.files[path]
  if f and f:has(name) then return f end
  return nil, path
end

function Weights:has(name) return self:file_of(name) ~= nil end

function Weights:names()
  local out = {}
  if self.single then
    out = self.files[self.single]:names()
  else
    for name in pairs(self.where) do
      if self:has(name) then out[#out + 1] = name end
    end
  end
  table.sort(out)
  return out
end

local function same_shape(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

-- get(name, expected_shape?) → float32 tensor (a view of the mapping for
-- F32 files, converted for F16/BF16).
function Weights:get(name, expected)
  local f, shard = self:file_of(name)
  if not f and shard then
    error(("%s: the index of %s maps it to %s, which does not hold it"):format(name, self.dir, shard), 0)
  end
  if not f then error(("%s: missing from the weights in %s"):format(name, self.dir), 0) end
  local shape = f:shape(name)
  if expected and not same_shape(shape, expected) then
    error(("%s: got %s, expected %s"):format(name, T.shape_string(shape), T.shape_string(expected)), 0)
  end
  self.used[name] = true
  local t = f:get(name)
  if t:dtype() ~= "float32" then t = t:float() end
  return t
end

-- get or nil when absent (optional parameters such as biases)
function Weights:maybe(name, expected)
  if not self:has(name) then return nil end
  return self:get(name, expected)
end

-- Names never fetched whose prefix is in `prefixes` (all when nil): a
-- strict loader refuses them as unknown tensors.
function Weights:unused(prefixes)
  local out = {}
  for _, n in ipairs(self:names()) do
    if not self.used[n] then
      local hit = prefixes == nil
      for _, p in ipairs(prefixes or {}) do
        if n:sub(1, #p) == p then hit = true end
      end
      if hit then out[#out + 1] = n end
    end
  end
  return out
end

function Weights:check_all_used(prefixes, ignore)
  local unknown = {}
  for _, n in ipairs(self:unused(prefixes)) do
    local skip = false
    for _, pat in ipairs(ignore or {}) do
      if n:find(pat) then skip = true end
    end
    if not skip then unknown[#unknown + 1] = n end
  end
  if #unknown > 0 then
    error(("%s: %d unknown tensor(s) in the weights, e.g. %s"):format(self.dir, #unknown, unknown[1]), 0)
  end
end

-- Directories -----------------------------------------------------------------

local Dir = {}
Dir.__index = Dir

-- A hub id (org/name or org/name@revision) that is no path here names its
-- snapshot in the Hugging Face cache (fmseg.io.hub); nothing is downloaded.
function M.resolve(path)
  if exists(path) or not hub.looks_like_id(path) then return path end
  local id, revision = hub.parse(path)
  local snapshot, why = hub.snapshot(id, revision)
  if snapshot then return snapshot end
  error(("%s: no such model directory, and %s; download it with: fmseg fetch %s"):format(path, why, path), 0)
end

-- open(path) reads path/config.json (or a diffusers model_index.json);
-- path may be a hub id in the cache (M.resolve).
function M.open(path)
  path = M.resolve((path:gsub("/+$", "")))
  local self = setmetatable({ path = path }, Dir)
  if exists(path .. "/config.json") then
    self.config = M.read_json(path .. "/config.json")
  elseif exists(path .. "/model_index.json") then
    self.config = M.read_json(path .. "/model_index.json")
  else
    local f = io.open(path, "rb")
    if f then f:close() end
    error(("%s: not a model directory (no config.json or model_index.json)%s"):format(path,
      f and "" or ": it does not exist"), 0)
  end
  return self
end

function Dir:file(name) return self.path .. "/" .. name end
function Dir:has_file(name) return exists(self.path .. "/" .. name) end

function Dir:json(name) return M.read_json(self:file(name)) end

function Dir:weights(variant)
  if not self._weights or self._variant ~= variant then
    self._weights = M.open_weights(self.path, variant)
    self._variant = variant
  end
  return self._weights
end

-- A sub-folder of a diffusers pipeline as its own directory.
function Dir:sub(name) return M.open(self.path .. "/" .. name) end

-- settings(section, defaults): the keys of `defaults`, each from the config
-- section (a table or nil) where it is given, else the default — the
-- reference config class's defaults, which a config.json may leave out.
function M.settings(section, defaults)
  section = section or {}
  local out = {}
  for k, v in pairs(defaults) do out[k] = M.cfg(section, k, v) end
  return out
end

-- load_model(path, new, opts): the model directory `path` built by
-- new(config, weights, opts), the weights of opts.variant ("fp16" picks
-- model.fp16.safetensors); model.path is the directory.
function M.load_model(path, new, opts)
  opts = opts or {}
  local dir = M.open(path)
  local model = new(dir.config, dir:weights(opts.variant), opts)
  model.path = dir.path
  return model
end

-- config value with a default; `key` may be dotted ("vision_config.hidden_size")
function M.cfg(config, key, default)
  local node = config
  for part in key:gmatch("[^.]+") do
    if type(node) ~= "table" then node = nil; break end
    node = node[part]
  end
  if node == nil or node == json.null then
    if default == nil then error(("config.json: missing key '%s'"):format(key), 0) end
    return default
  end
  return node
end

return M
