-- fmseg.io.pickle against Python's own pickles (tests/fixtures/pickle/,
-- tests/tools/make_pickle_fixtures.py): every protocol 0 to 5 of a
-- refs(unc).p-like value reads back as the same value its JSON holds
-- (strings with non-ASCII characters and escapes, integers at each opcode's
-- edges, floats, tuples, None, booleans, memoised shared objects); a
-- Python 2 str pickle (SHORT_BINSTRING) reads as strings; objects,
-- truncated and foreign files are refused naming the file and the offset.
local tap = require("tap")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local json = require("fmseg.io.json")
local pickle = require("fmseg.io.pickle")

local DIR = core.root .. "/tests/fixtures/pickle/"
local want = json.decode(fs.read(DIR .. "refs.json"))

-- deep equality; the first difference as a path
local function diff(a, b, path)
  if type(a) ~= type(b) then return ("%s: %s against %s"):format(path, type(a), type(b)) end
  if type(a) ~= "table" or a == json.null or b == json.null then
    if a ~= b then return ("%s: %s against %s"):format(path, tostring(a), tostring(b)) end
    return nil
  end
  for k, v in pairs(b) do
    local d = diff(a[k], v, path .. "." .. tostring(k))
    if d then return d end
  end
  for k in pairs(a) do
    if b[k] == nil then return ("%s.%s: not in the reference"):format(path, tostring(k)) end
  end
  return nil
end

for proto = 0, 5 do
  local path = DIR .. ("refs_p%d.pkl"):format(proto)
  local ok, got = pcall(pickle.load, path)
  tap.ok(ok and diff(got, want, "value") == nil, ("protocol %d reads as Python wrote it"):format(proto),
         ok and diff(got, want, "value") or tostring(got))
end
local p2 = pickle.load(DIR .. "refs_p2.pkl")
tap.eq(p2.refs[1].sentences[2].sent, "caf\195\169 \226\128\148 \230\151\165\230\156\172 \\ 'quoted' \"double\"\n",
       "a str with non-ASCII characters, backslash and quotes, as UTF-8")
tap.ok(p2.refs[2].sentences[1] == p2.refs[2].sentences[2], "a memoised object is one table (BINGET)")
tap.eq(p2.flags[3], json.null, "None reads as json.null")
local py2 = pickle.load(DIR .. "py2_str_p2.pkl")
tap.eq(py2[1].split .. " " .. py2[1].ref_id, "test 7", "a Python 2 str pickle (SHORT_BINSTRING), as cPickle wrote refs(unc).p")

-- refusals
local whole = fs.read(DIR .. "refs_p2.pkl")
local all_refused, first_bad = true, nil
for cut = 1, #whole - 1 do
  local ok, err = pcall(pickle.loads, whole:sub(1, cut), "refs_p2.pkl")
  if ok or not tostring(err):find("^refs_p2.pkl: ") then all_refused, first_bad = false, cut break end
end
tap.ok(all_refused, ("every truncation of a %d-byte pickle is refused naming it"):format(#whole),
       first_bad and ("cut at " .. first_bad))
tap.raises(function() pickle.loads("\128\2c__main__\nThing\n)\129.", "obj.pkl") end,
           "obj.pkl: GLOBAL: only plain data (dicts, lists, strings, numbers) is read, not objects at offset 2",
           "a class instance is refused naming the opcode and its offset")
tap.raises(function() pickle.loads("\137PNG\r\n", "x.png") end, "x.png: ", "a foreign file is refused")
tap.raises(function() pickle.load(DIR .. "missing.pkl") end, "missing.pkl: cannot read", "a missing file is named")

os.exit(tap.done())
