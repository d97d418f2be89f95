-- fmseg.io.mat — MATLAB .mat files of level 5 (MATLAB 5 to 7.2, what
-- scipy.io.loadmat reads; core/mat.c), such as SBD's annotations.
--
--   local mat = require("fmseg.io.mat")
--   local inst = mat.read("inst/2008_000002.mat", "GTinst.Segmentation")  -- (H, W) uint8
--   local cls = mat.load("cls/2008_000002.mat").GTcls
--   print(cls.Boundaries[1]:shape()[1], cls.CategoriesPresent:dtype())   -- H, float32
--
-- Values, as scipy's `loadmat(path)` arrays but in fmseg's three dtypes:
-- a matrix is a tensor of MATLAB's shape, row-major (numpy's `arr[i, j]` is
-- `t:get(i + 1, j + 1)`): uint8 and logical become uint8; double and single
-- float32 (a double rounds to the nearest float32: integers are exact up
-- to 2^24); int8, int16, uint16, int32, uint32, int64 and uint64 int32 (a
-- value outside int32 is an error naming it). A sparse matrix becomes its
-- dense tensor (logical: uint8, double: float32; no larger than the image
-- pixel limit, FMSEG_MAX_IMAGE_PIXELS). A char array of one row
-- becomes a string (UTF-8), any other an int32 tensor of its character
-- codes (UTF-16 code units; code points where the file holds UTF-8, as
-- scipy writes). A 1x1 struct is a table of its fields, any other struct
-- array a list of such tables; a cell array a list of its values; both
-- lists in MATLAB's linear (column-major) order, `c{k}` being `list[k]`.
-- Objects, function handles and opaque values become
-- `{ unsupported = "<class>" }`. Complex matrices are errors.
--
-- A missing, truncated or corrupt file raises an error naming the file,
-- the offset and the variable; misuse (a path that is not a string, a
-- malformed `what`) raises at the caller.
local bit = require("bit")
local core = require("fmseg.core")
local T = require("fmseg.tensor")
local ffi, C = core.ffi, core.C

local M = {}

local function open(path, level)
  if type(path) ~= "string" then error("fmseg.io.mat: path must be a string, got " .. type(path), level + 1) end
  local m = C.fm_mat_open(path)
  if m == nil then core.raise() end
  return ffi.gc(m, C.fm_mat_close)
end

-- The C memory goes now, not when the collector gets to it.
local function close(m) C.fm_mat_close(ffi.gc(m, nil)) end

local function str(p) return p ~= nil and ffi.string(p) or "" end

local function dims(m, node)
  local out = {}
  for d = 0, C.fm_mat_ndim(m, node) - 1 do out[#out + 1] = tonumber(C.fm_mat_dim(m, node, d)) end
  return out
end

local function numel(m, node)
  local n = 1
  for _, d in ipairs(dims(m, node)) do n = n * d end
  return n
end

-- Character codes -> UTF-8: code points, or UTF-16 code units whose
-- surrogate pairs are joined (a lone surrogate is kept as its code point,
-- as Python's surrogatepass would).
local function utf8(units)
  local out, i = {}, 1
  while i <= #units do
    local c = units[i]
    local lo = units[i + 1]
    if c >= 0xD800 and c <= 0xDBFF and lo and lo >= 0xDC00 and lo <= 0xDFFF then
      c = 0x10000 + (c - 0xD800) * 0x400 + (lo - 0xDC00)
      i = i + 1
    end
    if c < 0x80 then
      out[#out + 1] = string.char(c)
    elseif c < 0x800 then
      out[#out + 1] = string.char(0xC0 + bit.rshift(c, 6), 0x80 + c % 64)
    elseif c < 0x10000 then
      out[#out + 1] = string.char(0xE0 + bit.rshift(c, 12), 0x80 + bit.rshift(c, 6) % 64, 0x80 + c % 64)
    else
      out[#out + 1] = string.char(0xF0 + bit.rshift(c, 18), 0x80 + bit.rshift(c, 12) % 64,
                                  0x80 + bit.rshift(c, 6) % 64, 0x80 + c % 64)
    end
    i = i + 1
  end
  return table.concat(out)
end

local value_of

-- Element e (0-based) of struct node: the table of its fields.
local function struct_element(m, node, e)
  local nf = tonumber(C.fm_mat_nfields(m, node))
  local out = {}
  for f = 0, nf - 1 do
    out[str(C.fm_mat_field(m, node, f))] = value_of(m, C.fm_mat_child(m, node, e * nf + f))
  end
  return out
end

local function char_value(m, node)
  local t = T.wrap(C.fm_mat_tensor(m, node))
  local shape = t:shape()
  if #shape ~= 2 or (shape[1] ~= 1 and t:numel() > 0) then return t end
  local units = {}
  for k = 1, t:numel() do units[k] = t:get(1, k) end
  return utf8(units)
end

value_of = function(m, node)
  local kind = C.fm_mat_kind(m, node)
  if kind == C.FM_MAT_STRUCT then
    local n = numel(m, node)
    if n == 1 then return struct_element(m, node, 0) end
    local list = {}
    for e = 1, n do list[e] = struct_element(m, node, e - 1) end
    return list
  elseif kind == C.FM_MAT_CELL then
    local list = {}
    for k = 1, tonumber(C.fm_mat_nchildren(m, node)) do list[k] = value_of(m, C.fm_mat_child(m, node, k - 1)) end
    return list
  elseif kind == C.FM_MAT_CHAR then
    return char_value(m, node)
  elseif kind == C.FM_MAT_OTHER then
    return { unsupported = str(C.fm_mat_class(m, node)) }
  end
  return T.wrap(C.fm_mat_tensor(m, node))
end

-- Every variable of the file: name -> value (see the top of this page).
function M.load(path)
  local m = open(path, 2)
  local ok, out = pcall(function()
    local vars = {}
    for i = 0, tonumber(C.fm_mat_nvars(m)) - 1 do
      local node = C.fm_mat_var(m, i)
      vars[str(C.fm_mat_name(m, node))] = value_of(m, node)
    end
    return vars
  end)
  close(m)
  if not ok then error(out, 0) end
  return out
end

-- "GTinst.Boundaries[2]" -> { "GTinst", ".Boundaries", "[2]" }; nil for a
-- malformed path.
local function steps(what)
  local first, rest = what:match("^([%w_]+)(.*)$")
  if not first then return nil end
  local out = { first }
  while rest ~= "" do
    local step, after = rest:match("^(%.[%w_]+)(.*)$")
    if not step then step, after = rest:match("^(%[%d+%])(.*)$") end
    if not step then return nil end
    out[#out + 1] = step
    rest = after
  end
  return out
end

local function field_names(m, node)
  local names = {}
  for f = 0, tonumber(C.fm_mat_nfields(m, node)) - 1 do names[#names + 1] = str(C.fm_mat_field(m, node, f)) end
  return names
end

-- One step from (node, element): element is the struct element a [k] of a
-- struct array chose, nil otherwise. Returns the next (node, element) or
-- raises naming the path so far.
local function step(m, path, done, node, element, s)
  local kind = C.fm_mat_kind(m, node)
  local function fail(msg) error(("%s: %s: %s"):format(path, done, msg), 0) end
  if s:sub(1, 1) == "." then
    if kind ~= C.FM_MAT_STRUCT then fail("not a struct, no field " .. s:sub(2)) end
    if not element then
      if numel(m, node) ~= 1 then fail(("a struct array of %d elements: index it with [k] first"):format(numel(m, node))) end
      element = 0
    end
    local names = field_names(m, node)
    for f, name in ipairs(names) do
      if name == s:sub(2) then return C.fm_mat_child(m, node, element * #names + f - 1), nil end
    end
    fail(("no field %s (fields: %s)"):format(s:sub(2), table.concat(names, ", ")))
  end
  local k = tonumber(s:match("%d+"))
  if element then fail("a struct, not a list") end
  local n = kind == C.FM_MAT_CELL and tonumber(C.fm_mat_nchildren(m, node)) or numel(m, node)
  if kind ~= C.FM_MAT_CELL and (kind ~= C.FM_MAT_STRUCT or n == 1) then fail("not a cell or struct array") end
  if k < 1 or k > n then fail(("%s out of range (%d elements)"):format(s, n)) end
  if kind == C.FM_MAT_CELL then return C.fm_mat_child(m, node, k - 1), nil end
  return node, k - 1
end

local function find_var(m, path, name)
  local names = {}
  for i = 0, tonumber(C.fm_mat_nvars(m)) - 1 do
    local node = C.fm_mat_var(m, i)
    names[#names + 1] = str(C.fm_mat_name(m, node))
    if names[#names] == name then return node end
  end
  error(("%s: no variable %s (variables: %s)"):format(path, name, table.concat(names, ", ")), 0)
end

-- One value by its path: a variable, then `.field` for struct fields and
-- `[k]` (1-based) for cell and struct array elements, as the tables
-- mat.load returns are indexed:
--
--   mat.read(path, "GTinst.Segmentation")
--   mat.read(path, "GTinst.Boundaries[2]")
--
-- Only that value is converted. A numeric matrix also returns { class =
-- MATLAB's class, storage = the type its values are stored as }: MATLAB
-- narrows integer-valued data ("uint16" stored as "uint8"), and scipy's
-- loadmat hands back the stored type, whose arithmetic the official
-- converters then do (PASCAL Context's `LabelMap - 1` on uint16).
function M.read(path, what)
  if type(what) ~= "string" then error("fmseg.io.mat.read: what must be a string, got " .. type(what), 2) end
  local list = steps(what)
  if not list then error(("fmseg.io.mat.read: malformed path %q (name, .field, [k])"):format(what), 2) end
  local m = open(path, 2)
  local ok, out = pcall(function()
    local node, element = find_var(m, path, list[1]), nil
    local done = list[1]
    for i = 2, #list do
      node, element = step(m, path, done, node, element, list[i])
      done = done .. list[i]
    end
    if element then return struct_element(m, node, element) end
    local info
    if C.fm_mat_kind(m, node) == C.FM_MAT_NUMERIC then
      info = { class = str(C.fm_mat_class(m, node)), storage = str(C.fm_mat_storage(m, node)) }
    end
    return { value_of(m, node), info }
  end)
  close(m)
  if not ok then error(out, 0) end
  return out[1], out[2]
end

return M
