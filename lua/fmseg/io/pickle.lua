-- fmseg.io.pickle — Python pickles of plain data (protocols 0 to 5), such
-- as the refs(unc).p files of the referring-expression datasets
-- (lichengunc/refer), read without Python:
--
--   local refs = require("fmseg.io.pickle").load("refcoco/refs(unc).p")
--   print(refs[1].sentences[1].sent, refs[1].split)
--
-- Values: dict → Lua table (keys as they are: strings, numbers), list and
-- tuple → Lua array (1-based), str / unicode / bytes → Lua string (UTF-8;
-- Python 2 str bytes as stored), int → number (exact up to 2^53), float →
-- number, True / False → booleans, None → fmseg.io.json.null (so that it
-- can stand in an array). A Lua table forgets the order of a dict's keys;
-- with { ordered = true } it is kept: pickle.keys(dict) lists them as
-- Python iterates them (insertion order). Anything else (class instances, numpy arrays:
-- GLOBAL, REDUCE, BUILD ...) is refused naming the opcode and its offset,
-- as are truncated and malformed streams.
local bit = require("bit")
local ffi = require("ffi")
local fs = require("fmseg.io.fs")
local json = require("fmseg.io.json")

local M = {}

local function reader(data, what)
  local r = { data = data, pos = 1, what = what }
  function r.fail(msg, at) error(("%s: %s at offset %d"):format(what, msg, (at or r.pos) - 1), 0) end
  function r.take(n)
    if r.pos + n - 1 > #data then r.fail(("truncated: %d bytes wanted, %d left"):format(n, #data - r.pos + 1)) end
    local s = data:sub(r.pos, r.pos + n - 1)
    r.pos = r.pos + n
    return s
  end
  function r.line()
    local e = data:find("\n", r.pos, true)
    if not e then r.fail("truncated: a text argument without its newline") end
    local s = data:sub(r.pos, e - 1)
    r.pos = e + 1
    return s
  end
  function r.uint(n)                        -- little-endian unsigned of n bytes
    local s, v = r.take(n), 0
    for i = n, 1, -1 do v = v * 256 + s:byte(i) end
    return v
  end
  return r
end

local function signed(v, bits)
  local half = 2 ^ (bits - 1)
  return v >= half and v - 2 * half or v
end

-- LONG1 / LONG4: little-endian two's complement of n bytes
local function long_bytes(s)
  local v = 0
  for i = #s, 1, -1 do v = v * 256 + s:byte(i) end
  if #s > 0 and s:byte(#s) >= 128 then v = v - 2 ^ (8 * #s) end
  return v
end

local function binfloat(s)            -- 8 bytes, big-endian IEEE double
  local b = ffi.new("uint8_t[8]")
  for i = 1, 8 do b[8 - i] = s:byte(i) end
  return ffi.cast("double *", b)[0]
end

-- a code point → UTF-8
local function utf8_char(c)
  if c < 0x80 then return string.char(c) end
  if c < 0x800 then return string.char(0xC0 + bit.rshift(c, 6), 0x80 + c % 64) end
  if c < 0x10000 then return string.char(0xE0 + bit.rshift(c, 12), 0x80 + bit.rshift(c, 6) % 64, 0x80 + c % 64) end
  return string.char(0xF0 + bit.rshift(c, 18), 0x80 + bit.rshift(c, 12) % 64, 0x80 + bit.rshift(c, 6) % 64,
                     0x80 + c % 64)
end

local ESCAPES = { n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ["'"] = "'", ['"'] = '"', a = "\a", b = "\b",
                  f = "\f", v = "\v" }

-- Python 2 repr of a str ('...' with \x, octal and letter escapes) → its bytes, in one pass
local function unrepr(s, r)
  local q = s:sub(1, 1)
  if (q ~= "'" and q ~= '"') or #s < 2 or s:sub(-1) ~= q then r.fail("a STRING argument that is not a quoted literal") end
  local body, out, i = s:sub(2, -2), {}, 1
  while i <= #body do
    local c = body:sub(i, i)
    if c ~= "\\" then
      out[#out + 1], i = c, i + 1
    else
      local n = body:sub(i + 1, i + 1)
      if n == "x" and body:sub(i + 2, i + 3):match("^%x%x$") then
        out[#out + 1], i = string.char(tonumber(body:sub(i + 2, i + 3), 16)), i + 4
      elseif n:match("[0-7]") then
        local o = body:match("^[0-7][0-7]?[0-7]?", i + 1)
        out[#out + 1], i = string.char(tonumber(o, 8) % 256), i + 1 + #o
      elseif ESCAPES[n] then
        out[#out + 1], i = ESCAPES[n], i + 2
      else
        out[#out + 1], i = c, i + 1                    -- an unknown escape keeps its backslash
      end
    end
  end
  return table.concat(out)
end

-- protocol 0's UNICODE argument (raw-unicode-escape: \uXXXX, \UXXXXXXXX,
-- other bytes latin-1 code points) → UTF-8, in one pass
local function raw_unicode(s)
  local out, i = {}, 1
  while i <= #s do
    local u = s:match("^\\u(%x%x%x%x)", i)
    local U = not u and s:match("^\\U(%x%x%x%x%x%x%x%x)", i)
    if u then out[#out + 1], i = utf8_char(tonumber(u, 16)), i + 6
    elseif U then out[#out + 1], i = utf8_char(tonumber(U, 16)), i + 10
    else out[#out + 1], i = utf8_char(s:byte(i)), i + 1 end
  end
  return table.concat(out)
end

local MARK = {}

-- dict → its keys in insertion order, for the dicts of { ordered = true } loads
local orders = setmetatable({}, { __mode = "k" })

-- The keys of a dict read with { ordered = true }, in Python's order
-- (a fresh list), or nil for a table that is no such dict.
function M.keys(d)
  local o = orders[d]
  if not o then return nil end
  local out = {}
  for i, k in ipairs(o) do out[i] = k end
  return out
end

-- pickle bytes → the value; opts.ordered: keep the dicts' key order (M.keys)
function M.loads(data, what, opts)
  what = what or "pickle"
  local ordered = opts and opts.ordered
  local r = reader(data, what)
  local stack, memo, marks, memoized = {}, {}, {}, 0
  local function push(v) stack[#stack + 1] = v end
  local function pop()
    if #stack == 0 then r.fail("stack underflow") end
    local v = stack[#stack]
    stack[#stack] = nil
    return v
  end
  local function pop_mark()
    local m = marks[#marks]
    if not m then r.fail("no MARK before this opcode") end
    marks[#marks] = nil
    local items = {}
    for i = m + 1, #stack do items[#items + 1] = stack[i] end
    for i = #stack, m + 1, -1 do stack[i] = nil end
    return items
  end
  local function top(kind)
    local t = stack[#stack]
    if type(t) ~= "table" or t == MARK then r.fail(("%s on something that is not a %s"):format(kind, kind)) end
    return t
  end
  local function setitem(d, k, v)
    if k == json.null then k = "None" end
    if ordered and d[k] == nil then
      local o = orders[d]
      if not o then o = {}; orders[d] = o end
      o[#o + 1] = k
    end
    d[k] = v
  end
  local function setitems(d, items)
    if #items % 2 ~= 0 then r.fail("SETITEMS with an odd number of items") end
    for i = 1, #items, 2 do setitem(d, items[i], items[i + 1]) end
  end
  local function new_dict()
    local d = {}
    if ordered then orders[d] = {} end
    return d
  end
  local function str_op(n) push(r.take(n)) end
  while true do
    local at = r.pos
    local op = r.take(1)
    if op == "\128" then                          -- PROTO
      local v = r.uint(1)
      if v > 5 then r.fail(("protocol %d, above 5"):format(v), at) end
    elseif op == "\149" then r.uint(8)            -- FRAME: a length hint
    elseif op == "." then                          -- STOP
      if #stack ~= 1 then r.fail(("STOP with %d values on the stack"):format(#stack), at) end
      return stack[1]
    elseif op == "(" then marks[#marks + 1] = #stack                       -- MARK
    elseif op == "}" then push(new_dict())                                  -- EMPTY_DICT
    elseif op == "]" then push({})                                          -- EMPTY_LIST
    elseif op == ")" then push({})                                          -- EMPTY_TUPLE
    elseif op == "d" then local d = new_dict(); setitems(d, pop_mark()); push(d)   -- DICT
    elseif op == "l" or op == "t" then push(pop_mark())                    -- LIST, TUPLE
    elseif op == "\133" then push({ pop() })                                -- TUPLE1
    elseif op == "\134" then local b = pop(); push({ pop(), b })            -- TUPLE2
    elseif op == "\135" then local c = pop(); local b = pop(); push({ pop(), b, c })   -- TUPLE3
    elseif op == "s" then local v = pop(); local k = pop(); setitem(top("dict"), k, v) -- SETITEM
    elseif op == "u" then local items = pop_mark(); setitems(top("dict"), items)       -- SETITEMS
    elseif op == "a" then local v = pop(); local l = top("list"); l[#l + 1] = v        -- APPEND
    elseif op == "e" then                                                              -- APPENDS
      local items = pop_mark()
      local l = top("list")
      for _, v in ipairs(items) do l[#l + 1] = v end
    elseif op == "J" then push(signed(r.uint(4), 32))                       -- BININT
    elseif op == "K" then push(r.uint(1))                                   -- BININT1
    elseif op == "M" then push(r.uint(2))                                   -- BININT2
    elseif op == "I" then                                                    -- INT (text; 01 / 00: bools)
      local s = r.line()
      if s == "01" then push(true) elseif s == "00" then push(false)
      else
        local v = tonumber(s)
        if not v then r.fail(("INT %q"):format(s), at) end
        push(v)
      end
    elseif op == "L" then                                                    -- LONG (text)
      local s = r.line():gsub("L$", "")
      local v = tonumber(s)
      if not v then r.fail(("LONG %q"):format(s), at) end
      push(v)
    elseif op == "\138" then push(long_bytes(r.take(r.uint(1))))            -- LONG1
    elseif op == "\139" then push(long_bytes(r.take(r.uint(4))))            -- LONG4
    elseif op == "G" then push(binfloat(r.take(8)))                         -- BINFLOAT
    elseif op == "F" then                                                    -- FLOAT (text)
      local s = r.line()
      local v = tonumber(s)
      if not v then r.fail(("FLOAT %q"):format(s), at) end
      push(v)
    elseif op == "N" then push(json.null)                                   -- NONE
    elseif op == "\136" then push(true)                                     -- NEWTRUE
    elseif op == "\137" then push(false)                                    -- NEWFALSE
    elseif op == "S" then push(unrepr(r.line(), r))                         -- STRING
    elseif op == "V" then push(raw_unicode(r.line()))                       -- UNICODE
    elseif op == "U" then str_op(r.uint(1))                                 -- SHORT_BINSTRING
    elseif op == "T" then str_op(r.uint(4))                                 -- BINSTRING
    elseif op == "X" then str_op(r.uint(4))                                 -- BINUNICODE
    elseif op == "\140" then str_op(r.uint(1))                              -- SHORT_BINUNICODE
    elseif op == "\141" then str_op(r.uint(8))                              -- BINUNICODE8
    elseif op == "C" then str_op(r.uint(1))                                 -- SHORT_BINBYTES
    elseif op == "B" then str_op(r.uint(4))                                 -- BINBYTES
    elseif op == "\142" then str_op(r.uint(8))                              -- BINBYTES8
    elseif op == "p" then                                                   -- PUT
      local k = tonumber(r.line())
      if not k then r.fail("PUT without a memo index", at) end
      memo[k] = stack[#stack]
    elseif op == "q" then memo[r.uint(1)] = stack[#stack]                   -- BINPUT
    elseif op == "r" then memo[r.uint(4)] = stack[#stack]                   -- LONG_BINPUT
    elseif op == "\148" then memo[memoized] = stack[#stack]; memoized = memoized + 1   -- MEMOIZE
    elseif op == "g" or op == "h" or op == "j" then                         -- GET, BINGET, LONG_BINGET
      local k = op == "g" and tonumber(r.line()) or r.uint(op == "h" and 1 or 4)
      if k == nil or memo[k] == nil then r.fail(("memo %s is not set"):format(tostring(k)), at) end
      push(memo[k])
    elseif op == "0" then pop()                                              -- POP
    elseif op == "2" then push(stack[#stack])                                -- DUP
    elseif op == "1" then pop_mark()                                         -- POP_MARK
    else
      local names = { c = "GLOBAL", ["\147"] = "STACK_GLOBAL", R = "REDUCE", b = "BUILD", i = "INST", o = "OBJ",
                      ["\129"] = "NEWOBJ", ["\146"] = "NEWOBJ_EX", P = "PERSID", Q = "BINPERSID" }
      local name = names[op]
      if name then r.fail(("%s: only plain data (dicts, lists, strings, numbers) is read, not objects"):format(name), at) end
      r.fail(("unknown opcode 0x%02x"):format(op:byte()), at)
    end
  end
end

-- A pickle file → its value; errors name the file. opts as for loads.
function M.load(path, opts)
  local data, err = fs.read(path)
  if not data then error(("%s: cannot read (%s)"):format(path, tostring(err)), 0) end
  return M.loads(data, path, opts)
end

return M
