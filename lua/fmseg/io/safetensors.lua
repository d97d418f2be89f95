-- fmseg.io.safetensors — read and write .safetensors files.
--
--   local st = safetensors.open("model.safetensors")
--   for _, name in ipairs(st:names()) do print(name, st:dtype(name)) end
--   local w = st:get("fc1.weight")     -- F32: zero-copy view of the mapping
--   safetensors.save("out.safetensors", { logits = t })
local core = require("fmseg.core")
local T = require("fmseg.tensor")
local ffi, C, check = core.ffi, core.C, core.check

local M = {}
local File = {}
File.__index = File

function M.open(path)
  local handle = C.fm_safetensors_open(path)
  if handle == nil then core.raise() end
  return setmetatable({ path = path, handle = ffi.gc(handle, C.fm_safetensors_close) }, File)
end

function File:count() return tonumber(C.fm_safetensors_count(self.handle)) end

function File:names()
  local out = {}
  for i = 0, self:count() - 1 do out[#out + 1] = ffi.string(C.fm_safetensors_name(self.handle, i)) end
  return out
end

function File:has(name) return C.fm_safetensors_find(self.handle, name) >= 0 end

local function index_of(self, name)
  local i = C.fm_safetensors_find(self.handle, name)
  if i < 0 then error(("%s: no such tensor in %s"):format(name, self.path), 3) end
  return i
end

function File:dtype(name) return ffi.string(C.fm_safetensors_dtype(self.handle, index_of(self, name))) end

function File:shape(name)
  local i = index_of(self, name)
  local shape = {}
  for d = 0, C.fm_safetensors_ndim(self.handle, i) - 1 do
    shape[#shape + 1] = tonumber(C.fm_safetensors_dim(self.handle, i, d))
  end
  return shape
end

function File:metadata()
  local text = ffi.string(C.fm_safetensors_metadata(self.handle))
  if text == "" then return {} end
  return require("fmseg.io.json").decode(text, self.path .. " (__metadata__)")
end

function File:get(name)
  return T.wrap(C.fm_safetensors_get(self.handle, name))
end

-- Every tensor as a table name -> tensor.
function File:load_all()
  local out = {}
  for _, name in ipairs(self:names()) do out[name] = self:get(name) end
  return out
end

function File:close()
  if self.handle ~= nil then
    C.fm_safetensors_close(ffi.gc(self.handle, nil))
    self.handle = nil
  end
end

-- tensors: name -> tensor. Names are written sorted, as the reference
-- libraries do.
function M.save(path, tensors)
  local names = {}
  for name in pairs(tensors) do names[#names + 1] = name end
  table.sort(names)
  local n = #names
  local cnames = ffi.new("const char *[?]", math.max(n, 1))
  local ctensors = ffi.new("const fm_tensor *[?]", math.max(n, 1))
  for i, name in ipairs(names) do
    cnames[i - 1] = name
    ctensors[i - 1] = tensors[name]
  end
  check(C.fm_safetensors_save(path, n, cnames, ctensors))
end

return M
