-- fmseg.core — the C library through the LuaJIT FFI.
-- The declarations are read from core/fmseg.h itself, so Lua and C cannot
-- drift apart. Errors from C become Lua errors carrying fm_last_error().
local ffi = require("ffi")

local function find_root()
  local host = package.loaded["fmseg.host"]
  if host then return host.root end
  local env = os.getenv("FMSEG_ROOT")
  if env and env ~= "" then return env end
  -- this file is <root>/lua/fmseg/core.lua
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/lua/fmseg/core%.lua$")
  return dir or "."
end

local root = find_root()

-- The header minus preprocessor lines and the __cplusplus guards.
local function read_declarations(path)
  local f = assert(io.open(path, "r"), "fmseg: cannot read " .. path)
  local out, skipping = {}, false
  for line in f:lines() do
    if line:match("^#ifdef __cplusplus") then
      skipping = true
    elseif skipping then
      if line:match("^#endif") then skipping = false end
    elseif not line:match("^%s*#") then
      out[#out + 1] = line
    end
  end
  f:close()
  return table.concat(out, "\n")
end

ffi.cdef(read_declarations(root .. "/core/fmseg.h"))

local function load_library()
  local host = package.loaded["fmseg.host"]
  if host and host.linked then return ffi.C end
  return ffi.load(root .. "/build/libfmseg.so")
end

local C = load_library()

local M = { C = C, ffi = ffi, root = root }

-- Raises the pending C error. C messages already name the file, key or
-- shape at fault, so no Lua position is prepended (FMSEG_DEBUG=1 prints a
-- traceback when the place in Lua matters).
function M.raise(context)
  local msg = ffi.string(C.fm_last_error())
  C.fm_clear_error()
  if context then msg = context .. ": " .. msg end
  error(msg, 0)
end

-- check(rc): rc ~= 0 raises.  check_ptr(p): NULL raises; returns p.
function M.check(rc, context)
  if rc ~= 0 then M.raise(context) end
end

function M.check_ptr(p, context)
  if p == nil then M.raise(context) end
  return p
end

return M
