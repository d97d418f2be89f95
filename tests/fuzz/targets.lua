-- targets.lua — the Lua side of the fuzz targets (tests/fuzz/fuzz_lua.c):
-- target name -> function(bytes). A Lua error raised by the code under test
-- means "input refused" and is fine; a broken property calls fuzz_fail(msg),
-- which the driver turns into a crash that libFuzzer saves.
-- luacheck: read globals fuzz_fail
local json = require("fmseg.io.json")

local T = {}

local fail = fuzz_fail or function(msg) error("FUZZ PROPERTY: " .. msg, 0) end

local function deep_equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return a ~= a and b ~= b end   -- NaN
  if getmetatable(a) ~= getmetatable(b) then return false end
  for k, v in pairs(a) do if not deep_equal(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function show(s) return ("%q"):format(#s > 120 and s:sub(1, 120) .. "..." or s) end

-- A scratch directory for targets whose code under test reads files:
-- run.sh's FUZZ_TMPDIR (under build/fuzz/run/TARGET), else one in /tmp.
local scratch
local function scratch_dir()
  if scratch then return scratch end
  local fs = require("fmseg.io.fs")
  scratch = os.getenv("FUZZ_TMPDIR")
  if not scratch or scratch == "" then
    local tmp = os.tmpname()
    os.remove(tmp)
    scratch = tmp .. ".fmseg-fuzz"
  end
  fs.mkdir_p(scratch)
  return scratch
end

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

-- ---- JSON: fmseg.io.json ----------------------------------------------------

-- decode, and for what it accepts: encode reads back to the same value
-- (marks included); only infinities (1e999, 1e9999999) may refuse to
-- encode. (Found here and fixed: an exponent of 7 or more digits decoded
-- to nil, so "[1e9999999, 2]" lost its first item; seed regress-*.)
function T.json(s)
  local v = json.decode(s, "fuzz.json")
  local ok, text = pcall(json.encode, v)
  if not ok then
    if not tostring(text):find("cannot encode", 1, true) then
      fail("json.encode refused a decoded value: " .. tostring(text) .. " from " .. show(s))
    end
    return
  end
  local ok2, again = pcall(json.decode, text, "re-encoded")
  if not ok2 then fail("json.decode refused json.encode's output " .. show(text) .. ": " .. tostring(again)) end
  if not deep_equal(v, again) then fail("json round trip changed " .. show(s) .. " into " .. show(text)) end
end

-- ---- pickles: fmseg.io.pickle (refer's refs(unc).p) ----------------------------

-- Any bytes: an error naming the input and an offset, or a value of plain
-- data only (tables, strings, numbers, booleans, json.null) without cycles
-- the reader cannot make.
function T.pickle(s)
  local pickle = require("fmseg.io.pickle")
  local ok, v = pcall(pickle.loads, s, "fuzz.pkl")
  if not ok then
    if not tostring(v):find("^fuzz.pkl: ") then fail("pickle error without the input's name: " .. tostring(v)) end
    return
  end
  local seen = {}
  local function walk(x, depth)
    if depth > 10000 then fail("pickle: nesting past 10000") end
    local t = type(x)
    if t == "table" and x ~= json.null then
      if seen[x] then return end                 -- memoised objects are shared, as in Python
      seen[x] = true
      for k, y in pairs(x) do walk(k, depth + 1); walk(y, depth + 1) end
    elseif t ~= "string" and t ~= "number" and t ~= "boolean" and x ~= json.null then
      fail("pickle: a value of type " .. t)
    end
  end
  walk(v, 0)
end

-- ---- sharded checkpoint index: fmseg.io.hf ------------------------------------

-- The input is model.safetensors.index.json in a directory that holds one
-- real shard, model-00001-of-00002.safetensors (tensors "a" and "b").
local hf_dir
function T.hf_index(s)
  local hf = require("fmseg.io.hf")
  if not hf_dir then
    hf_dir = scratch_dir() .. "/hf"
    require("fmseg.io.fs").mkdir_p(hf_dir)
    local header = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' ..
                   '"b":{"dtype":"U8","shape":[1,3],"data_offsets":[8,11]}}'
    local n = #header
    local len = string.char(n % 256, math.floor(n / 256) % 256, 0, 0, 0, 0, 0, 0)
    write(hf_dir .. "/model-00001-of-00002.safetensors",
          len .. header .. string.rep("\0", 8) .. "\1\2\3")
  end
  write(hf_dir .. "/model.safetensors.index.json", s)
  -- names() and has() both follow the index (found here: names() listed
  -- the shards' tensors, has() the index's, and the two disagreed)
  local ok, w = pcall(hf.open_weights, hf_dir)
  if ok then
    for _, name in ipairs(w:names()) do
      if not w:has(name) then fail("names() lists " .. name .. ", which has() denies, for " .. show(s)) end
    end
  end
  w = nil
  collectgarbage()   -- closes the shards now: C memory the Lua heap holds is freed per input
  if not ok then error(w, 0) end
end

-- ---- YAML configs: fmseg.io.config --------------------------------------------

-- parse_yaml (libfmseg's YAML -> JSON, then json.decode); a mapping must
-- come back from dump (what `fmseg print-config` writes) unchanged.
function T.yaml_config(s)
  local config = require("fmseg.io.config")
  local cfg = config.parse_yaml(s, "fuzz.yaml")
  if type(cfg) ~= "table" or cfg == json.null then return end
  local ok, text = pcall(config.dump, cfg)
  if not ok then fail("config.dump refused a parsed config: " .. tostring(text) .. " from " .. show(s)) end
  -- (found here and fixed: dump wrote U+0085, U+2028 and U+2029 raw inside
  -- quotes, where YAML reads them as line breaks; seed regress-*)
  local ok2, back = pcall(config.parse_yaml, text, "dumped")
  if not ok2 then fail("config.dump wrote " .. show(text) .. ", which does not parse: " .. tostring(back)) end
  if not deep_equal(cfg, back) then
    fail("config.dump changed the config of " .. show(s) .. ": " .. show(text))
  end
end

-- ---- --set overrides: fmseg.io.config.apply_overrides ---------------------------

-- Each input line is one "key=value" override applied to a small config;
-- after a single override, config.get finds the value it set.
local BASE = [[
model: {name: vit-b/16, size: 448, layers: [1, 2, 3]}
params: {alpha: 0.5, list: [{a: 1}, {b: 2}], off: ~}
classes: voc21.txt
]]
function T.set_override(s)
  local config = require("fmseg.io.config")
  local cfg = config.parse_yaml(BASE, "base")
  local lines = {}
  for line in (s .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  config.apply_overrides(cfg, lines)
  if #lines == 1 then
    local key, text = lines[1]:match("^%s*([^=]-)%s*=(.*)$")
    local want = config.parse_yaml(text, "value")
    local got = config.get(cfg, key)
    if want == json.null then want = nil end
    if not deep_equal(got, want) then fail("override " .. show(lines[1]) .. " did not set its value") end
  end
end

-- ---- CLIP tokenizer: fmseg.text.tokenizer --------------------------------------

-- clean + pretokenize always; with the clip-tiny fixture (the CLIP
-- vocabulary), encode and encode_batch: ids within the vocabulary, rows of
-- exactly the context length starting with the start token.
local tok
function T.tokenizer(s)
  local tokenizer = require("fmseg.text.tokenizer")
  if tok == nil then
    local fixtures = os.getenv("FMSEG_FIXTURES")
    if not fixtures or fixtures == "" then
      fixtures = package.loaded["fmseg.host"].root .. "/../shared/fixtures"
    end
    local ok, t = pcall(tokenizer.load, fixtures .. "/clip-tiny")
    tok = ok and t or false
  end
  local pieces = tokenizer.pretokenize(tokenizer.clean(s))
  if type(pieces) ~= "table" then fail("pretokenize returned " .. type(pieces)) end
  if not tok then return end
  local ids = tok:encode(s)
  if ids[1] ~= tok.bos_id or ids[#ids] ~= tok.eos_id then fail("encode: ids not framed by the specials") end
  for _, id in ipairs(ids) do
    if type(id) ~= "number" or id < 0 or id >= tok.vocab_size or id % 1 ~= 0 then
      fail("encode gave id " .. tostring(id) .. " for " .. show(s))
    end
  end
  local rows, lengths = tok:encode_batch({ s })
  if #rows[1] ~= tok.context_length or lengths[1] > tok.context_length or rows[1][1] ~= tok.bos_id then
    fail("encode_batch row is not " .. tok.context_length .. " ids from the start token")
  end
  tok:decode(ids)
end

-- ---- class-name files: fmseg.method.classes ------------------------------------

function T.classes(s)
  local classes = require("fmseg.method.classes")
  local c = classes.parse(s, "fuzz.txt")
  if #c.queries ~= #c.query_class or #c.names == 0 then fail("classes: inconsistent lists") end
  local first = {}
  for q, word in ipairs(c.queries) do
    local k = c.query_class[q]
    local comma = word:find(",", 1, true) and not s:find("\\,", 1, true)    -- a comma only from "\,"
    if word == "" or word:find("^%s") or word:find("%s$") or comma or word:find("\n", 1, true) then
      fail("classes: query " .. show(word) .. " from " .. show(s))
    end
    if not first[k] then
      first[k] = true
      if c.names[k] ~= word then fail("classes: class " .. k .. " is not named by its first synonym") end
    end
  end
  for k = 1, #c.names do if not first[k] then fail("classes: class " .. k .. " has no query") end end
end

-- ---- VOC XML annotations: fmseg.eval.data.voc_objects ---------------------------

function T.voc_xml(s)
  local data = require("fmseg.eval.data")
  local objects = data.voc_objects(s, "fuzz.xml")
  for i, o in ipairs(objects) do
    if #o.box ~= 4 then fail("voc: object " .. i .. " box has " .. #o.box .. " numbers") end
    for k = 1, 4 do
      if type(o.box[k]) ~= "number" then fail("voc: object " .. i .. " box entry " .. k) end
    end
  end
end

return T
