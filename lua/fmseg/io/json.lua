-- fmseg.io.json — JSON (RFC 8259) decode and encode in plain Lua.
--
--   local json = require("fmseg.io.json")
--   local t = json.decode('{"a": [1, 2.5, null]}')   -- t.a[3] == json.null
--   local t = json.decode_file("vocab.json")
--   json.encode(t)                    --> '{"a":[1,2.5,null]}'
--   json.encode(t, { indent = 2 })    -- pretty, 2 spaces a level (or pretty = true)
--
-- Decoding: objects and arrays become tables (marked with json.object_mt /
-- json.array_mt so that they encode back the way they came), null becomes
-- the sentinel json.null, \uXXXX escapes (surrogate pairs included) become
-- UTF-8; a lone surrogate becomes U+FFFD. Errors are raised as
-- "json: <what> at line L col C[ in <source>]".
--
-- Encoding: object keys are sorted, so output is deterministic. A table is
-- an array when marked with json.array_mt or when its keys are exactly
-- 1..n; an empty unmarked table encodes as [] (mark it with json.object()
-- for {}). Numbers print in the shortest form that reads back to the same
-- double; NaN and infinities raise unless options.nan = "null".
local fs = require("fmseg.io.fs")

local M = {}

local byte, sub, find, char, format = string.byte, string.sub, string.find, string.char, string.format
local concat, sort = table.concat, table.sort
local floor, huge = math.floor, math.huge
local tonumber, tostring, type, pairs, next = tonumber, tostring, type, pairs, next
local setmetatable, getmetatable = setmetatable, getmetatable

M.null = setmetatable({}, { __tostring = function() return "null" end })
M.array_mt = { __name = "json.array" }
M.object_mt = { __name = "json.object" }

function M.array(t) return setmetatable(t or {}, M.array_mt) end
function M.object(t) return setmetatable(t or {}, M.object_mt) end

local MAX_DEPTH = 512

---------------------------------------------------------------- decoding

-- Decoder state lives in upvalues of one closure per call: cheap and
-- re-entrant.
local function position(s, pos)
  local line, line_start = 1, 1
  local i = 1
  while true do
    local nl = find(s, "\n", i, true)
    if not nl or nl >= pos then break end
    line, line_start, i = line + 1, nl + 1, nl + 1
  end
  -- column in characters, not bytes: skip UTF-8 continuation bytes
  local col = 1
  for k = line_start, pos - 1 do
    local b = byte(s, k)
    if not b then break end
    if b < 0x80 or b >= 0xC0 then col = col + 1 end
  end
  return line, col
end

local function fail(s, pos, source, what)
  local line, col = position(s, pos)
  local msg = format("json: %s at line %d col %d", what, line, col)
  if source then msg = msg .. " in " .. source end
  error(msg, 0)
end

local function utf8_char(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 0x40), 0x80 + cp % 0x40) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 0x1000), 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return char(0xF0 + floor(cp / 0x40000), 0x80 + floor(cp / 0x1000) % 0x40,
    0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end
M.utf8_char = utf8_char

local SIMPLE_ESCAPES = {
  [0x22] = '"', [0x5C] = "\\", [0x2F] = "/", [0x62] = "\b",
  [0x66] = "\f", [0x6E] = "\n", [0x72] = "\r", [0x74] = "\t",
}

local function describe(s, pos)
  local b = byte(s, pos)
  if not b then return "unexpected end of input" end
  if b < 0x20 or b >= 0x7F then return format("unexpected byte 0x%02X", b) end
  return format("unexpected character '%s'", char(b))
end

function M.decode(s, source)
  if type(s) ~= "string" then error("json.decode: expected a string, got " .. type(s), 2) end
  local value -- forward declaration of the recursive reader

  local function skip(pos)
    -- fast path: most values are separated by at most one space
    local b = byte(s, pos)
    if b == 0x20 or b == 0x0A or b == 0x0D or b == 0x09 then
      return (find(s, "[^ \n\r\t]", pos + 1)) or #s + 1
    end
    return pos
  end

  -- pos is just after the opening quote; returns the string and the
  -- position after the closing quote.
  local function read_string(pos)
    local stop = find(s, '["\\%c]', pos)
    if stop and byte(s, stop) == 0x22 then return sub(s, pos, stop - 1), stop + 1 end
    local parts, n = {}, 0
    while true do
      if not stop then fail(s, #s + 1, source, "unterminated string") end
      local b = byte(s, stop)
      if b == 0x22 then
        n = n + 1; parts[n] = sub(s, pos, stop - 1)
        return concat(parts, "", 1, n), stop + 1
      elseif b == 0x5C then
        n = n + 1; parts[n] = sub(s, pos, stop - 1)
        local e = byte(s, stop + 1)
        local simple = e and SIMPLE_ESCAPES[e]
        if simple then
          n = n + 1; parts[n] = simple
          pos = stop + 2
        elseif e == 0x75 then -- \uXXXX
          local hex = sub(s, stop + 2, stop + 5)
          if not find(hex, "^%x%x%x%x$") then fail(s, stop, source, "bad \\u escape") end
          local cp = tonumber(hex, 16)
          pos = stop + 6
          if cp >= 0xD800 and cp <= 0xDBFF then
            local lo = find(s, "^\\u[dD][c-fC-F]%x%x", pos) and tonumber(sub(s, pos + 2, pos + 5), 16)
            if lo then
              cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
              pos = pos + 6
            else
              cp = 0xFFFD
            end
          elseif cp >= 0xDC00 and cp <= 0xDFFF then
            cp = 0xFFFD
          end
          n = n + 1; parts[n] = utf8_char(cp)
        else
          fail(s, stop, source, "bad escape")
        end
      elseif b == 0x7F then -- %c includes DEL, which JSON allows
        n = n + 1; parts[n] = sub(s, pos, stop)
        pos = stop + 1
      else
        fail(s, stop, source, "control character in string")
      end
      stop = find(s, '["\\%c]', pos)
    end
  end

  local function read_number(pos)
    local _, e = find(s, "^-?%d+", pos)
    if not e then fail(s, pos, source, describe(s, pos)) end
    local int_start = byte(s, pos) == 0x2D and pos + 1 or pos
    if byte(s, int_start) == 0x30 and e > int_start then
      fail(s, pos, source, "leading zero in number")
    end
    local frac = byte(s, e + 1) == 0x2E
    if frac then
      local _, fe = find(s, "^%d+", e + 2)
      if not fe then fail(s, e + 2, source, "digit expected after '.'") end
      e = fe
    end
    local x = byte(s, e + 1)
    if x == 0x65 or x == 0x45 then
      local _, ee = find(s, "^[-+]?%d+", e + 2)
      if not ee then fail(s, e + 2, source, "digit expected in exponent") end
      e = ee
    end
    local text = sub(s, pos, e)
    local number = tonumber(text)
    if number == nil then
      -- LuaJIT's tonumber gives up on an exponent of 7 or more digits
      -- ("1e9999999"); as Python's float(), that is +-inf or +-0
      local mantissa, exponent = text:match("^(-?[%d.]+)[eE]([-+]?%d+)$")
      local zero = tonumber(mantissa) == 0
      local sign = text:sub(1, 1) == "-" and -1 or 1
      number = (zero or exponent:sub(1, 1) == "-") and sign * 0.0 or sign * math.huge
    end
    return number, e + 1
  end

  local function read_array(pos, depth)
    local t, n = setmetatable({}, M.array_mt), 0
    pos = skip(pos)
    if byte(s, pos) == 0x5D then return t, pos + 1 end
    while true do
      local v
      v, pos = value(pos, depth)
      n = n + 1; t[n] = v
      pos = skip(pos)
      local b = byte(s, pos)
      if b == 0x5D then return t, pos + 1 end
      if b ~= 0x2C then fail(s, pos, source, describe(s, pos) .. ", expected ',' or ']'") end
      pos = skip(pos + 1)
    end
  end

  local function read_object(pos, depth)
    local t = setmetatable({}, M.object_mt)
    pos = skip(pos)
    if byte(s, pos) == 0x7D then return t, pos + 1 end
    while true do
      if byte(s, pos) ~= 0x22 then fail(s, pos, source, describe(s, pos) .. ", expected a string key") end
      local k
      k, pos = read_string(pos + 1)
      pos = skip(pos)
      if byte(s, pos) ~= 0x3A then fail(s, pos, source, describe(s, pos) .. ", expected ':'") end
      local v
      v, pos = value(skip(pos + 1), depth)
      t[k] = v
      pos = skip(pos)
      local b = byte(s, pos)
      if b == 0x7D then return t, pos + 1 end
      if b ~= 0x2C then fail(s, pos, source, describe(s, pos) .. ", expected ',' or '}'") end
      pos = skip(pos + 1)
    end
  end

  value = function(pos, depth)
    local b = byte(s, pos)
    if b == 0x22 then return read_string(pos + 1) end
    if b == 0x7B or b == 0x5B then
      if depth >= MAX_DEPTH then fail(s, pos, source, "nesting deeper than " .. MAX_DEPTH) end
      if b == 0x7B then return read_object(pos + 1, depth + 1) end
      return read_array(pos + 1, depth + 1)
    end
    if b == 0x2D or (b and b >= 0x30 and b <= 0x39) then return read_number(pos) end
    if b == 0x74 and sub(s, pos, pos + 3) == "true" then return true, pos + 4 end
    if b == 0x66 and sub(s, pos, pos + 4) == "false" then return false, pos + 5 end
    if b == 0x6E and sub(s, pos, pos + 3) == "null" then return M.null, pos + 4 end
    fail(s, pos, source, describe(s, pos))
  end

  local start = 1
  if sub(s, 1, 3) == "\239\187\191" then start = 4 end -- UTF-8 byte-order mark
  local v, pos = value(skip(start), 0)
  pos = skip(pos)
  if pos <= #s then fail(s, pos, source, describe(s, pos) .. " after the value") end
  return v
end

-- Reads and decodes a file; I/O and syntax errors raise, naming the file.
function M.decode_file(path)
  local s, err = fs.read(path)
  if not s then error("json: cannot open " .. tostring(err), 0) end
  return M.decode(s, path)
end

---------------------------------------------------------------- encoding

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
for c = 0, 0x1F do
  local ch = char(c)
  if not ESCAPES[ch] then ESCAPES[ch] = format("\\u%04x", c) end
end

local function encode_string(str)
  if not find(str, '[%c"\\]') then return '"' .. str .. '"' end
  return '"' .. str:gsub('[%z\1-\31"\\]', ESCAPES) .. '"'
end

-- Shortest decimal that reads back to the same double.
local function encode_number(x, opts)
  if x ~= x or x == huge or x == -huge then
    if opts.nan == "null" then return "null" end
    error("json.encode: cannot encode " .. tostring(x) .. " (pass nan = \"null\" to write null)", 0)
  end
  if x == floor(x) and x >= -2 ^ 53 and x <= 2 ^ 53 then
    if x == 0 and 1 / x < 0 then return "-0" end
    return format("%d", x)
  end
  for prec = 15, 17 do
    local str = format("%." .. prec .. "g", x)
    if tonumber(str) == x then return str end
  end
  return format("%.17g", x)
end

local function kind_of(t)
  local mt = getmetatable(t)
  if mt == M.array_mt then return "array" end
  if mt == M.object_mt then return "object" end
  if next(t) == nil then return "array" end
  local n = #t
  if n == 0 then return "object" end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n and "array" or "object"
end

local encode_value

local function encode_table(t, opts, out, depth, seen)
  if seen[t] then error("json.encode: cycle in table", 0) end
  if depth > MAX_DEPTH then error("json.encode: nesting deeper than " .. MAX_DEPTH, 0) end
  seen[t] = true
  local indent = opts.indent
  local pad, pad_in, colon
  if indent then
    pad = "\n" .. (" "):rep(indent * depth)
    pad_in = "\n" .. (" "):rep(indent * (depth + 1))
    colon = ": "
  else
    pad, pad_in, colon = "", "", ":"
  end
  if kind_of(t) == "array" then
    local n = #t
    if n == 0 then out[#out + 1] = "[]"
    else
      out[#out + 1] = "["
      for i = 1, n do
        out[#out + 1] = (i > 1 and "," or "") .. pad_in
        encode_value(t[i], opts, out, depth + 1, seen)
      end
      out[#out + 1] = pad .. "]"
    end
  else
    local keys, index = {}, {}
    for k in pairs(t) do
      local tk = type(k)
      local key
      if tk == "string" then key = k
      elseif tk == "number" then key = encode_number(k, { nan = "error" })
      else error("json.encode: object key of type " .. tk, 0) end
      if index[key] ~= nil then error("json.encode: duplicate key " .. key, 0) end
      index[key] = k
      keys[#keys + 1] = key
    end
    sort(keys)
    if #keys == 0 then out[#out + 1] = "{}"
    else
      out[#out + 1] = "{"
      for i, key in ipairs(keys) do
        out[#out + 1] = (i > 1 and "," or "") .. pad_in .. encode_string(key) .. colon
        encode_value(t[index[key]], opts, out, depth + 1, seen)
      end
      out[#out + 1] = pad .. "}"
    end
  end
  seen[t] = nil
end

encode_value = function(v, opts, out, depth, seen)
  local tv = type(v)
  if v == M.null or v == nil then out[#out + 1] = "null"
  elseif tv == "string" then out[#out + 1] = encode_string(v)
  elseif tv == "number" then out[#out + 1] = encode_number(v, opts)
  elseif tv == "boolean" then out[#out + 1] = v and "true" or "false"
  elseif tv == "table" then encode_table(v, opts, out, depth, seen)
  else
    -- int64 cdata (e.g. tensor element counts) print without the LL suffix
    local s = tostring(v)
    local digits = s:match("^(%-?%d+)U?LL$")
    if digits then out[#out + 1] = digits
    else error("json.encode: cannot encode a " .. tv, 0) end
  end
end

-- options: indent (number of spaces, or true for 2; pretty = true is the
-- same as indent = 2), nan ("error" or "null")
function M.encode(v, options)
  local opts = { nan = "error" }
  if options then
    local ind = options.indent
    if ind == nil and options.pretty then ind = 2 end
    if ind == true then ind = 2 end
    if ind and (type(ind) ~= "number" or ind < 0) then
      error("json.encode: indent must be a non-negative number", 2)
    end
    opts.indent = ind
    opts.nan = options.nan or "error"
    if opts.nan ~= "error" and opts.nan ~= "null" then
      error('json.encode: nan must be "error" or "null"', 2)
    end
  end
  local out = {}
  encode_value(v, opts, out, 0, {})
  return concat(out)
end

-- Writes v to path (pretty by default), with a final newline.
function M.encode_file(path, v, options)
  local s = M.encode(v, options or { indent = 2 })
  local f, err = io.open(path, "wb")
  if not f then error("json: cannot write " .. tostring(err), 0) end
  f:write(s, "\n")
  f:close()
end

return M
