-- fmseg.io.json: decoding (escapes, numbers, errors with line/col), encoding
-- (sorted keys, shortest round-trip numbers, pretty printing), round trips.
local tap = require("tap")
local json = require("fmseg.io.json")

local function deep_eq(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function bytes(s) return table.concat({ s:byte(1, -1) }, " ") end

---------------------------------------------------------------- decoding

local v = json.decode(' { "a" : [1, 2.5, -3e2, true, false, null], "b": {"c": "d"}, "e": [] } ')
tap.ok(v.a[1] == 1 and v.a[2] == 2.5 and v.a[3] == -300, "numbers in an array")
tap.ok(v.a[4] == true and v.a[5] == false, "booleans")
tap.ok(v.a[6] == json.null and #v.a == 6, "null is the sentinel and keeps the array length")
tap.eq(v.b.c, "d", "nested object")
tap.ok(type(v.e) == "table" and next(v.e) == nil, "empty array")
tap.eq(json.decode("42"), 42, "a bare number is a document")
tap.eq(json.decode('"x"'), "x", "a bare string is a document")
tap.eq(json.decode("1.5E-2"), 0.015, "exponent with sign")
tap.eq(json.decode("-0.0"), 0, "negative zero")
tap.eq(json.decode("12345678901234"), 12345678901234, "large integer exactly")

tap.eq(json.decode([["\"\\\/\b\f\n\r\t"]]), '"\\/\b\f\n\r\t', "simple escapes")
tap.eq(bytes(json.decode([["\u00e9"]])), "195 169", "\\u00e9 is UTF-8 C3 A9")
tap.eq(bytes(json.decode([["\u20AC"]])), "226 130 172", "\\u20AC is UTF-8 E2 82 AC")
tap.eq(bytes(json.decode([["\ud83d\ude00"]])), "240 159 152 128", "surrogate pair is one 4-byte character")
tap.eq(bytes(json.decode([["a\ud800b"]])), "97 239 191 189 98", "lone high surrogate becomes U+FFFD")
tap.eq(bytes(json.decode([["\udc00"]])), "239 191 189", "lone low surrogate becomes U+FFFD")
tap.eq(json.decode('"caf\195\169 \240\159\144\177"'), "caf\195\169 \240\159\144\177", "raw UTF-8 passes through")
tap.eq(json.decode('"a\127b"'), "a\127b", "DEL is allowed unescaped")
tap.eq(json.decode("\239\187\191[1]")[1], 1, "UTF-8 byte-order mark is skipped")

local dup = json.decode('{"k": 1, "k": 2}')
tap.eq(dup.k, 2, "duplicate keys: the last wins")

-- errors: message, line and column (columns count characters)
local function err_of(s, source)
  local ok, e = pcall(json.decode, s, source)
  return not ok and e or nil
end
tap.eq(err_of('{\n  "a": 1,\n  "b": x\n}'), "json: unexpected character 'x' at line 3 col 8",
  "bad value reports line and column")
tap.eq(err_of('[1, 2', "cfg.json"), "json: unexpected end of input, expected ',' or ']' at line 1 col 6 in cfg.json",
  "end of input names the source")
tap.eq(err_of('["\195\169", x]'), "json: unexpected character 'x' at line 1 col 7",
  "column counts a 2-byte character once")
tap.ok((err_of("[1, 2,]") or ""):find("at line 1 col 7", 1, true), "trailing comma in array")
tap.ok((err_of('{"a": 1,}') or ""):find("expected a string key", 1, true), "trailing comma in object")
tap.ok((err_of('{"a" 1}') or ""):find("expected ':'", 1, true), "missing colon")
tap.ok((err_of("1 2") or ""):find("after the value", 1, true), "trailing garbage")
tap.ok((err_of("") or ""):find("unexpected end of input at line 1 col 1", 1, true), "empty input")
tap.ok((err_of('"abc') or ""):find("unterminated string", 1, true), "unterminated string")
tap.ok((err_of('"a\nb"') or ""):find("control character in string at line 1 col 3", 1, true),
  "raw newline in a string")
tap.ok((err_of([["\x"]]) or ""):find("bad escape", 1, true), "unknown escape")
tap.ok((err_of([["\u12G4"]]) or ""):find("bad \\u escape", 1, true), "bad \\u escape")
for _, bad in ipairs({ "01", "1.", ".5", "+1", "1e", "1e+", "-", "--1", "NaN", "Infinity", "tru", "nul" }) do
  tap.ok(err_of(bad) ~= nil, "invalid literal " .. bad .. " raises")
end
tap.ok((err_of(("["):rep(600) .. ("]"):rep(600)) or ""):find("nesting deeper", 1, true), "depth limit")
tap.ok(deep_eq(json.decode(("["):rep(100) .. ("]"):rep(100)),
  json.decode(("["):rep(100) .. ("]"):rep(100))), "deep but allowed nesting decodes")

---------------------------------------------------------------- encoding

tap.eq(json.encode({ b = 1, a = 2, c = { z = true, y = false } }), '{"a":2,"b":1,"c":{"y":false,"z":true}}',
  "keys are sorted at every level")
tap.eq(json.encode({ 1, "two", json.null, { 3 } }), '[1,"two",null,[3]]', "array")
tap.eq(json.encode({}), "[]", "empty plain table is an array")
tap.eq(json.encode(json.object()), "{}", "json.object() marks an empty object")
tap.eq(json.encode({ [1] = "a", [3] = "c" }), '{"1":"a","3":"c"}', "sparse table is an object with string keys")
tap.eq(json.encode('q"b\\n\n\t\1\31'), [["q\"b\\n\n\t\u0001\u001f"]], "string escapes")
tap.eq(json.encode("caf\195\169"), '"caf\195\169"', "UTF-8 written as is")
tap.eq(json.encode(0.1), "0.1", "shortest form of 0.1")
tap.eq(json.encode(100), "100", "integer without a fraction")
tap.eq(json.encode(-2 ^ 53), "-9007199254740992", "-2^53 exactly")
tap.eq(json.encode(1e300), "1e+300", "large double")
tap.raises(function() json.encode(0 / 0) end, "cannot encode", "NaN raises by default")
tap.raises(function() json.encode({ math.huge }) end, "cannot encode", "inf raises by default")
tap.eq(json.encode({ 0 / 0, -math.huge }, { nan = "null" }), "[null,null]", "nan = 'null' writes null")
local cyc = {}; cyc.self = cyc
tap.raises(function() json.encode(cyc) end, "cycle", "cycles raise")
tap.raises(function() json.encode({ f = print }) end, "cannot encode a function", "functions raise")
tap.raises(function() json.encode({ [1] = "a", ["1"] = "b" }) end, "duplicate key", "1 and '1' clash")

tap.eq(json.encode({ a = { 1, 2 }, b = json.object(), c = {} }, { indent = 2 }),
  '{\n  "a": [\n    1,\n    2\n  ],\n  "b": {},\n  "c": []\n}', "pretty printing with 2 spaces")
tap.eq(json.encode({ x = { y = 1 } }, { indent = true }), '{\n  "x": {\n    "y": 1\n  }\n}', "indent = true is 2")
tap.eq(json.encode({ x = { 1 } }, { pretty = true }), '{\n  "x": [\n    1\n  ]\n}', "pretty = true is indent 2")

-- every double reads back exactly from its shortest form (naive check:
-- against tonumber, over random bit patterns and awkward values)
local seed = 12345
local function rnd()
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed / 2147483648
end
local worst_len, all_ok = 0, true
local specials = { 0.1, 0.2, 0.3, 1 / 3, 2 / 3, 1e-300, 4.9e-324, 2.2250738585072014e-308,
  1.7976931348623157e308, 123456.789, -9.87654321e-5, 5e-324, 2 ^ 53 + 2, 2 ^ 60 }
for i = 1, 3000 do
  local x = specials[i] or (rnd() - 0.5) * 10 ^ math.floor(rnd() * 600 - 300)
  local s = json.encode(x)
  if tonumber(s) ~= x then all_ok = false; tap.diag("no round trip: " .. s) break end
  worst_len = math.max(worst_len, #s)
end
tap.ok(all_ok, "3000 doubles round trip through encode/decode")
tap.ok(worst_len <= 24, "numbers are at most %.17g long")

---------------------------------------------------------------- round trips

local doc = {
  name = "cat \240\159\144\177", list = { 1, -2.5, 1e-7, "x\ny", json.null, false },
  nested = { deeper = { deepest = { "a", { b = "c" } } } }, empty_o = json.object(), empty_a = {},
}
local once = json.encode(doc)
local back = json.decode(once)
tap.ok(deep_eq(back, doc), "decode(encode(v)) equals v")
tap.eq(json.encode(back), once, "encode(decode(s)) reproduces s")
tap.eq(json.encode(json.decode(json.encode(doc, { indent = 2 }))), once, "pretty output decodes to the same")
tap.eq(json.encode(json.decode('{"a":{},"b":[]}')), '{"a":{},"b":[]}', "decoded empty {} and [] keep their kind")

-- a large generated document: decode is linear, results match the source
local parts = {}
for i = 1, 20000 do parts[i] = ('"tok%d\\u00e9</w>": %d'):format(i, i - 1) end
local big = json.decode("{" .. table.concat(parts, ", ") .. "}")
local count, good = 0, true
for k, id in pairs(big) do
  count = count + 1
  local i = tonumber(k:match("^tok(%d+)\195\169</w>$"))
  if not i or id ~= i - 1 then good = false end
end
tap.ok(count == 20000 and good, "20000-entry object decodes entry by entry")

-- the real vocabulary, when the fixtures are there
local dir = tap.fixtures("clip-tiny")
if dir then
  local vocab = json.decode_file(dir .. "/vocab.json")
  local n, maxid, seen, distinct = 0, -1, {}, true
  for _, id in pairs(vocab) do
    n = n + 1
    if seen[id] then distinct = false end
    seen[id] = true
    if id > maxid then maxid = id end
  end
  tap.ok(distinct and maxid == n - 1, "vocab.json ids are 0..n-1, each once")
  tap.eq(vocab["!"], 0, "vocab.json first entry")
end
tap.raises(function() json.decode_file("/nonexistent/x.json") end, "/nonexistent/x.json", "missing file names the path")

-- exponents past LuaJIT's tonumber (7+ digits) read as Python's float() does
-- (found by tests/fuzz: they decoded to nil, and an array lost the item)
local huge = json.decode("[1e9999999, -1e9999999, 1e-9999999, -2.5E+0000009999999, 0e9999999, 2]")
tap.ok(huge[1] == math.huge and huge[2] == -math.huge and huge[3] == 0 and huge[4] == -math.huge
       and huge[5] == 0 and huge[6] == 2 and #huge == 6, "huge exponents: inf, -inf and 0, nothing lost")
tap.ok(json.decode('{"a": 1e9999999}').a == math.huge, "a huge exponent in an object keeps its key")

os.exit(tap.done())
