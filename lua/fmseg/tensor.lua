-- fmseg.tensor — the tensor type seen from Lua.
--
-- A tensor is an `fm_tensor *` owned by Lua through ffi.gc. Conventions
-- follow torch7: dimensions and indices are 1-based, negative dims count
-- from the end (-1 is the last). Shapes are Lua arrays ({2, 17, 48}).
--
--   local T = require("fmseg.tensor")
--   local x = T.from_table({{1, 2}, {3, 4}})
--   local y = (x * 2 + 1):matmul(x:t())       -- new tensors
--   print(y:shape()[1], y:get(1, 2), y:sum())
--
-- Large intermediates can be freed at once with t:free() rather than left
-- to the garbage collector, which cannot see C memory.
local core = require("fmseg.core")
local ffi, C = core.ffi, core.C
local check, check_ptr = core.check, core.check_ptr

local T = {}
local methods = {}
T.methods = methods

local DTYPES = { float32 = C.FM_F32, int32 = C.FM_I32, uint8 = C.FM_U8 }
local DTYPE_NAMES = { [tonumber(C.FM_F32)] = "float32", [tonumber(C.FM_I32)] = "int32",
                      [tonumber(C.FM_U8)] = "uint8" }
local CTYPES = { float32 = "float *", int32 = "int32_t *", uint8 = "uint8_t *" }
T.dtypes = DTYPES

local int64_arr = ffi.typeof("int64_t[?]")

local function dtype_code(dtype)
  if dtype == nil then return C.FM_F32 end
  if type(dtype) == "number" then return dtype end
  local code = DTYPES[dtype]
  if not code then error("unknown dtype '" .. tostring(dtype) .. "' (float32, int32, uint8)", 3) end
  return code
end

-- Wraps a fresh handle (one reference, ours) for the garbage collector.
-- Lua holds a reference to the struct (p[0]), not the pointer: arithmetic
-- on a pointer cdata would be pointer arithmetic and never reach __add.
-- A struct reference converts back to `fm_tensor *` in every C call.
local function wrap(p, context)
  return ffi.gc(check_ptr(p, context)[0], C.fm_tensor_release)
end
T.wrap = wrap

local function shape_arg(...)
  local first = ...
  if type(first) == "table" then return first end
  return { ... }
end

local function to_c_shape(shape)
  local n = #shape
  local arr = int64_arr(math.max(n, 1))
  for i = 1, n do
    local s = shape[i]
    if type(s) ~= "number" or s < 0 or s % 1 ~= 0 then
      error("bad shape entry " .. tostring(s) .. " at position " .. i, 4)
    end
    arr[i - 1] = s
  end
  return n, arr
end

-- Constructors -------------------------------------------------------------

function T.new(shape, dtype)
  local n, arr = to_c_shape(shape)
  return wrap(C.fm_tensor_new(dtype_code(dtype), n, arr))
end
T.zeros = T.new

-- Uninitialised memory, for outputs a kernel overwrites whole.
function T.empty(shape, dtype)
  local n, arr = to_c_shape(shape)
  return wrap(C.fm_tensor_empty(dtype_code(dtype), n, arr))
end

function T.full(shape, value, dtype)
  local t = T.new(shape, dtype)
  check(C.fm_tensor_fill_(t, value))
  return t
end

function T.ones(shape, dtype) return T.full(shape, 1, dtype) end

-- Nested Lua arrays to a tensor; shape inferred from the nesting.
function T.from_table(tbl, dtype)
  local shape, node = {}, tbl
  while type(node) == "table" do
    shape[#shape + 1] = #node
    node = node[1]
  end
  local t = T.new(shape, dtype)
  local p = ffi.cast(CTYPES[t:dtype()], t.data)
  local k = 0
  local function walk(x, depth)
    if depth > #shape then
      if type(x) ~= "number" and type(x) ~= "boolean" then error("from_table: non-number " .. tostring(x), 4) end
      p[k] = x == true and 1 or x == false and 0 or x
      k = k + 1
      return
    end
    if type(x) ~= "table" or #x ~= shape[depth] then
      error("from_table: ragged nesting at depth " .. depth, 4)
    end
    for i = 1, #x do walk(x[i], depth + 1) end
  end
  walk(tbl, 1)
  return t
end

function T.arange(n, dtype)
  local t = T.new({ n }, dtype)
  local p = ffi.cast(CTYPES[t:dtype()], t.data)
  for i = 0, n - 1 do p[i] = i end
  return t
end

-- Deterministic pseudo-random numbers (xorshift64*), for tests and benches.
local function rng(seed)
  local s = ffi.new("uint64_t[1]", seed or 88172645463325252ULL)
  return function()
    local x = s[0]
    x = bit.bxor(x, bit.rshift(x, 12)); x = bit.bxor(x, bit.lshift(x, 25)); x = bit.bxor(x, bit.rshift(x, 27))
    s[0] = x
    return tonumber(bit.rshift(x * 2685821657736338717ULL, 11)) / 9007199254740992
  end
end
T.rng = rng

function T.rand(shape, seed, lo, hi)
  lo, hi = lo or 0, hi or 1
  local t = T.new(shape)
  local p, r = ffi.cast("float *", t.data), rng(seed)
  for i = 0, t:numel() - 1 do p[i] = lo + (hi - lo) * r() end
  return t
end

function T.randn(shape, seed)
  local t = T.new(shape)
  local p, r = ffi.cast("float *", t.data), rng(seed)
  for i = 0, t:numel() - 1 do
    local u1, u2 = math.max(r(), 1e-12), r()
    p[i] = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
  end
  return t
end

-- Borrow external memory (e.g. a Lua string's bytes); keep `owner` alive.
function T.borrow(ptr, shape, dtype, owner)
  local n, arr = to_c_shape(shape)
  local t = wrap(C.fm_tensor_borrow(dtype_code(dtype), n, arr, ptr))
  if owner then
    -- the finalizer holds owner, so the memory lives as long as the tensor
    return ffi.gc(t, function(h) C.fm_tensor_release(h); return owner end)
  end
  return t
end

function T.is_tensor(x)
  return type(x) == "cdata" and ffi.istype("fm_tensor", x)
end

-- Shape and metadata ------------------------------------------------------

local function norm_dim(t, d, level)
  local n = t.ndim
  if type(d) ~= "number" or d % 1 ~= 0 then error("dim must be an integer, got " .. tostring(d), level or 3) end
  local z = d < 0 and n + d or d - 1
  if z < 0 or z >= n then error(("dim %d out of range for a %d-d tensor"):format(d, n), level or 3) end
  return z
end
T.norm_dim = norm_dim

function methods:shape()
  local s = {}
  for i = 0, self.ndim - 1 do s[i + 1] = tonumber(self.dims[i]) end
  return s
end

function methods:stride()
  local s = {}
  for i = 0, self.ndim - 1 do s[i + 1] = tonumber(self.strides[i]) end
  return s
end

function methods:size(d) return tonumber(self.dims[norm_dim(self, d)]) end
function methods:dim() return self.ndim end
function methods:numel() return tonumber(C.fm_tensor_numel(self)) end
function methods:dtype() return DTYPE_NAMES[tonumber(self.type)] end
function methods:is_contiguous() return C.fm_tensor_is_contiguous(self) ~= 0 end

function methods:free()
  ffi.gc(self, nil)
  C.fm_tensor_release(self)
end

local function shape_string(shape) return "[" .. table.concat(shape, ", ") .. "]" end
T.shape_string = shape_string

-- Views -------------------------------------------------------------------

function methods:reshape(...)
  local shape = shape_arg(...)
  local known, infer = 1, nil
  for i, s in ipairs(shape) do
    if s == -1 then
      if infer then error("reshape: only one -1 allowed", 2) end
      infer = i
    else
      known = known * s
    end
  end
  if infer then
    shape = { unpack(shape) }
    shape[infer] = known > 0 and math.floor(self:numel() / known) or 0
  end
  local n, arr = to_c_shape(shape)
  local src = self:is_contiguous() and self or self:contiguous()
  return wrap(C.fm_tensor_reshape(src, n, arr))
end
methods.view = methods.reshape

function methods:permute(...)
  local dims = shape_arg(...)
  if #dims ~= self.ndim then error("permute: need " .. self.ndim .. " dims, got " .. #dims, 2) end
  local arr = ffi.new("int32_t[?]", #dims)
  for i, d in ipairs(dims) do arr[i - 1] = norm_dim(self, d) end
  return wrap(C.fm_tensor_permute(self, arr))
end

function methods:transpose(a, b)
  local dims = {}
  for i = 1, self.ndim do dims[i] = i end
  local za, zb = norm_dim(self, a) + 1, norm_dim(self, b) + 1
  dims[za], dims[zb] = dims[zb], dims[za]
  return self:permute(dims)
end

function methods:t() return self:transpose(1, 2) end

-- narrow(dim, start, length): start is 1-based.
function methods:narrow(d, start, length)
  return wrap(C.fm_tensor_narrow(self, norm_dim(self, d), start - 1, length))
end

-- select(dim, index): drops the dim; index 1-based, negative from the end.
function methods:select(d, index)
  local z = norm_dim(self, d)
  if index < 0 then index = tonumber(self.dims[z]) + index + 1 end
  return wrap(C.fm_tensor_select(self, z, index - 1))
end

-- Slicing along the first axes: t:slice(a, b) is rows a..b (inclusive) of
-- dim 1; t:at(i, j) selects along dims 1, 2, ...
function methods:slice(first, last, d)
  d = d or 1
  local n = self:size(d)
  if last == nil then last = n end
  if first < 0 then first = n + first + 1 end
  if last < 0 then last = n + last + 1 end
  return self:narrow(d, first, last - first + 1)
end

function methods:at(...)
  local t = self
  for _, i in ipairs({ ... }) do t = t:select(1, i) end
  return t
end

function methods:unsqueeze(d)
  local shape = self:shape()
  local pos = d < 0 and #shape + d + 2 or d
  table.insert(shape, pos, 1)
  return self:reshape(shape)
end

function methods:squeeze(d)
  local shape, out = self:shape(), {}
  local z = d and norm_dim(self, d) + 1
  for i, s in ipairs(shape) do
    if not (s == 1 and (z == nil or z == i)) then out[#out + 1] = s end
  end
  return self:reshape(out)
end

function methods:flatten() return self:reshape({ self:numel() }) end

-- Copies ------------------------------------------------------------------

function methods:contiguous() return wrap(C.fm_tensor_contiguous(self)) end
function methods:clone() return wrap(C.fm_tensor_clone(self)) end
function methods:to(dtype) return wrap(C.fm_tensor_to(self, dtype_code(dtype))) end
function methods:float() return self:to("float32") end
function methods:int() return self:to("int32") end
function methods:byte() return self:to("uint8") end

function methods:copy(src)
  check(C.fm_tensor_copy_(self, src))
  return self
end

function methods:fill(v)
  check(C.fm_tensor_fill_(self, v))
  return self
end

-- Element access (1-based) --------------------------------------------------

local function offset_of(t, ...)
  local n = select("#", ...)
  if n ~= t.ndim then error(("need %d indices, got %d"):format(t.ndim, n), 3) end
  local off = 0
  for i = 1, n do
    local idx = select(i, ...)
    local size = t.dims[i - 1]
    if idx < 0 then idx = size + idx + 1 end
    if idx < 1 or idx > size then
      error(("index %d out of range for dim %d of size %d"):format(idx, i, tonumber(size)), 3)
    end
    off = off + (idx - 1) * t.strides[i - 1]
  end
  return off
end

function methods:get(...)
  return tonumber(ffi.cast(CTYPES[self:dtype()], self.data)[offset_of(self, ...)])
end

-- t:set(i, j, ..., value)
function methods:set(...)
  local args = { ... }
  local v = table.remove(args)
  if self.readonly ~= 0 then error("set: tensor is read-only (a view of a mapped file)", 2) end
  local off = offset_of(self, unpack(args))
  ffi.cast(CTYPES[self:dtype()], self.data)[off] = v
  return self
end

-- A typed pointer to the first element (contiguous tensors).
function methods:ptr()
  return ffi.cast(CTYPES[self:dtype()], self.data)
end

function methods:totable()
  local c = self:contiguous()
  local p = c:ptr()
  local shape = c:shape()
  if #shape == 0 then return tonumber(p[0]) end
  local k = 0
  local function build(depth)
    local out = {}
    for i = 1, shape[depth] do
      if depth == #shape then
        out[i] = tonumber(p[k]); k = k + 1
      else
        out[i] = build(depth + 1)
      end
    end
    return out
  end
  return build(1)
end

-- Flat Lua array of the values in row-major order.
function methods:values()
  local c = self:contiguous()
  local p, out = c:ptr(), {}
  for i = 0, c:numel() - 1 do out[i + 1] = tonumber(p[i]) end
  return out
end

function methods:item()
  if self:numel() ~= 1 then error("item: tensor has " .. self:numel() .. " elements", 2) end
  return tonumber(self:contiguous():ptr()[0])
end

-- Arithmetic ----------------------------------------------------------------

local OPS = { add = C.FM_ADD, sub = C.FM_SUB, mul = C.FM_MUL, div = C.FM_DIV,
              maximum = C.FM_MAX, minimum = C.FM_MIN, pow = C.FM_POW,
              gt = C.FM_GT, ge = C.FM_GE, lt = C.FM_LT, le = C.FM_LE, eq = C.FM_EQ }

local function broadcast_shape(a, b)
  local sa, sb = a:shape(), b:shape()
  local n = math.max(#sa, #sb)
  local out = {}
  for i = 1, n do
    local x = sa[i - (n - #sa)] or 1
    local y = sb[i - (n - #sb)] or 1
    if x ~= y and x ~= 1 and y ~= 1 then
      error(("shapes %s and %s do not broadcast"):format(shape_string(sa), shape_string(sb)), 4)
    end
    out[i] = x == 1 and y or x
  end
  return out
end

local function binary(op)
  local code = OPS[op]
  return function(a, b)
    if type(a) == "number" then
      -- s op t: commutative ops flip; others materialise s.
      if op == "add" or op == "mul" or op == "maximum" or op == "minimum" or op == "eq" then
        a, b = b, a
      else
        a = T.full({ 1 }, a)
      end
    end
    local out
    if type(b) == "number" then
      out = T.empty(a:shape())
      check(C.fm_binary_scalar(out, a, b, code))
    else
      out = T.empty(broadcast_shape(a, b))
      check(C.fm_binary(out, a, b, code))
    end
    return out
  end
end

for name in pairs(OPS) do methods[name] = binary(name) end

-- In-place: a:add_(b) writes into a (shapes must already match a's).
for name, code in pairs(OPS) do
  methods[name .. "_"] = function(a, b)
    if type(b) == "number" then check(C.fm_binary_scalar(a, a, b, code))
    else check(C.fm_binary(a, a, b, code)) end
    return a
  end
end

local UNARY = { neg = C.FM_NEG, exp = C.FM_EXP, log = C.FM_LOG, sqrt = C.FM_SQRT,
                abs = C.FM_ABS, tanh = C.FM_TANH, sigmoid = C.FM_SIGMOID, relu = C.FM_RELU,
                gelu = C.FM_GELU, gelu_tanh = C.FM_GELU_TANH, quick_gelu = C.FM_QUICK_GELU,
                silu = C.FM_SILU, floor = C.FM_FLOOR, round = C.FM_ROUND, rsqrt = C.FM_RSQRT,
                sin = C.FM_SIN, cos = C.FM_COS, erf = C.FM_ERF }
T.unary_ops = UNARY

for name, code in pairs(UNARY) do
  methods[name] = function(a)
    local out = T.empty(a:shape())
    check(C.fm_unary(out, a, code))
    return out
  end
  methods[name .. "_"] = function(a)
    check(C.fm_unary(a, a, code))
    return a
  end
end

function methods:clamp(lo, hi)
  local out = self
  if lo then out = out:maximum(lo) end
  if hi then out = out:minimum(hi) end
  return out == self and self:clone() or out
end

-- Reductions -----------------------------------------------------------------

local REDUCE = { sum = C.FM_SUM, mean = C.FM_MEAN, max = C.FM_RMAX, min = C.FM_RMIN,
                 norm = C.FM_NORM2, argmax = C.FM_ARGMAX, argmin = C.FM_ARGMIN }

-- t:sum() → number; t:sum(d) → tensor without dim d; t:sum(d, true) keeps it.
for name, code in pairs(REDUCE) do
  local is_arg = name == "argmax" or name == "argmin"
  methods[name] = function(self, d, keepdim)
    if d == nil then
      if is_arg then
        local flat = self:contiguous():reshape({ self:numel() })
        local out = T.new({ 1 }, "int32")
        check(C.fm_reduce(out, flat, 0, code))
        return out:get(1) + 1
      end
      local v = C.fm_reduce_all(self, code)
      if v ~= v and ffi.string(C.fm_last_error()) ~= "" then core.raise() end
      return v
    end
    local z = norm_dim(self, d)
    local shape = self:shape()
    if keepdim then shape[z + 1] = 1 else table.remove(shape, z + 1) end
    local out = T.empty(shape, is_arg and "int32" or "float32")
    check(C.fm_reduce(out, self, z, code))
    return out
  end
end

-- Linear algebra --------------------------------------------------------------

-- a:matmul(b): (.., M, K) x (.., K, N); b may be unbatched.
function methods:matmul(b, trans_a, trans_b, alpha)
  local sa, sb = self:shape(), b:shape()
  local m = trans_a and sa[#sa] or sa[#sa - 1]
  local n = trans_b and sb[#sb - 1] or sb[#sb]
  local shape = {}
  for i = 1, #sa - 2 do shape[i] = sa[i] end
  if #sa < #sb then
    shape = {}
    for i = 1, #sb - 2 do shape[i] = sb[i] end
  end
  shape[#shape + 1] = m
  shape[#shape + 1] = n
  local out = T.empty(shape)
  local a = self:is_contiguous() and self or self:contiguous()
  local bb = b:is_contiguous() and b or b:contiguous()
  check(C.fm_matmul(out, a, bb, trans_a and 1 or 0, trans_b and 1 or 0, alpha or 1))
  return out
end

function T.cat(list, d)
  d = d or 1
  local first = list[1]
  local z = norm_dim(first, d)
  local shape = first:shape()
  local total = 0
  local arr = ffi.new("const fm_tensor *[?]", #list)
  for i, t in ipairs(list) do
    total = total + t:size(z + 1)
    arr[i - 1] = t
  end
  shape[z + 1] = total
  local out = T.empty(shape, first:dtype())
  check(C.fm_cat(out, arr, #list, z))
  return out
end

function T.stack(list, d)
  local parts = {}
  for i, t in ipairs(list) do parts[i] = t:unsqueeze(d or 1) end
  return T.cat(parts, d or 1)
end

-- Metatype --------------------------------------------------------------------

-- t[i]: element of a 1-d tensor, else the i-th slice along dim 1.
local function index(t, k)
  if type(k) == "number" then
    if t.ndim == 1 then return t:get(k) end
    return t:select(1, k)
  end
  return methods[k]
end

local function newindex(t, k, v)
  if type(k) ~= "number" then error("tensor has no field '" .. tostring(k) .. "'", 2) end
  if t.ndim == 1 then t:set(k, v); return end
  local slot = t:select(1, k)
  if type(v) == "number" then slot:fill(v) else slot:copy(v) end
end

local mt = {
  __index = index,
  __newindex = newindex,
  __add = binary("add"),
  __sub = binary("sub"),
  __mul = binary("mul"),
  __div = binary("div"),
  __pow = binary("pow"),
  __unm = function(a) return a:neg() end,
  __len = function(a) return a.ndim > 0 and tonumber(a.dims[0]) or 0 end,
  __tostring = function(a)
    return ("tensor(%s, %s)"):format(a:dtype(), shape_string(a:shape()))
  end,
}
ffi.metatype("fm_tensor", mt)

return T
