-- Configs: _base_ inheritance, deep merge, list replacement, _delete_,
-- typed overrides, errors naming files and keys, dump round trip.
local tap = require("tap")
local config = require("fmseg.io.config")
local json = require("fmseg.io.json")

local null = json.null

-- a scratch directory of our own, removed at the end
local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p '" .. dir .. "/base' '" .. dir .. "/common'")

local function write(rel, text)
  local f = assert(io.open(dir .. "/" .. rel, "w"))
  f:write(text)
  f:close()
  return dir .. "/" .. rel
end

-- deep equality written for the test: tables by content, null by identity
local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" or a == null or b == null then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function raises(fn, patterns, name)
  local ok, err = pcall(fn)
  err = tostring(err)
  local good = not ok
  for _, p in ipairs(patterns) do good = good and err:find(p, 1, true) ~= nil end
  return tap.ok(good, name, ok and "no error raised" or ("error was: " .. err))
end

-- ---- files -------------------------------------------------------------------

write("common/runtime.yaml", [[
runtime:
  threads: 2
  seed: 0
model:
  size: 224
]])
write("base/model.yaml", [[
_base_: ../common/runtime.yaml
model:
  name: clip
  size: 336
  mean: [0.48, 0.45, 0.40]
  head:
    type: linear
    dim: 512
    dropout: 0.1
data:
  root: /data/voc
  classes: [cat, dog, bird]
  batch: 4
]])
write("base/schedule.yaml", [[
model:
  size: 448
schedule: {steps: 100, lr: 1e-4}
]])
local exp = write("exp.yaml", [[
_base_: [base/model.yaml, base/schedule.yaml]
model:
  mean: [0.5]
  head:
    _delete_: true
    type: mlp
  extra: {depth: 2}
data:
  classes: ~
  batch: 8
name: maskclip
]])

local cfg = config.load(exp)

-- ---- inheritance and merge ------------------------------------------------------

tap.eq(cfg.model.name, "clip", "key inherited from a base")
tap.eq(cfg.runtime.threads, 2, "key inherited from a base's base (relative path ../)")
tap.eq(cfg.model.size, 448, "later base overrides earlier base (and the base's base)")
tap.eq(cfg.schedule.lr, 1e-4, "1e-4 is a number")
tap.eq(cfg.data.batch, 8, "the file's own keys override its bases")
tap.eq(cfg.data.root, "/data/voc", "deep merge keeps sibling keys")
tap.eq(cfg.name, "maskclip", "new top-level key")
tap.eq(cfg.model.extra.depth, 2, "new nested mapping")
tap.ok(same(cfg.model.mean, { 0.5 }), "lists replace, not merge", json.encode(cfg.model.mean))
tap.ok(same(cfg.model.head, { type = "mlp" }), "_delete_: true replaces the base mapping",
       json.encode(cfg.model.head))
tap.eq(cfg.data.classes, null, "~ replaces and stays as null")
tap.eq(cfg._base_, nil, "_base_ does not reach the result")

-- _base_ as a single string; _delete_ where the base has no such key
write("single.yaml", "_base_: base/schedule.yaml\nschedule: {lr: 0.01}\nfresh: {_delete_: true, a: 1}\n")
local s = config.load(dir .. "/single.yaml")
tap.ok(s.schedule.lr == 0.01 and s.schedule.steps == 100 and s.model.size == 448,
       "_base_ given as one path")
tap.ok(same(s.fresh, { a = 1 }), "_delete_ marker removed even with nothing to delete")

-- merge leaves its inputs alone
local a, b = { x = { y = 1, z = 2 } }, { x = { y = 3 } }
local m = config.merge(a, b)
tap.ok(m.x.y == 3 and m.x.z == 2 and a.x.y == 1 and b.x.z == nil, "merge does not modify its inputs")
local c = { keep = { deep = { 1, 2 } } }
local mc = config.merge(c, { other = 1 })
mc.keep.deep[1] = 99
tap.eq(c.keep.deep[1], 1, "merge shares no tables with its inputs")

-- an empty file is an empty config
write("empty.yaml", "# nothing\n")
tap.ok(same(config.load(dir .. "/empty.yaml"), {}), "empty file loads as {}")

-- ---- get ----------------------------------------------------------------------

tap.eq(config.get(cfg, "model.head.type"), "mlp", "get walks a dotted path")
tap.eq(config.get(cfg, "model.nothing.here", 7), 7, "get: default for a missing key")
tap.eq(config.get(cfg, "model.name.deeper", 7), 7, "get: default when a scalar is in the way")
tap.eq(config.get(cfg, "data.classes", { "x" }), nil, "get: null is nil, not the default")
tap.eq(config.get(cfg, "model.mean.1"), 0.5, "get: a number indexes a list")

-- ---- overrides ------------------------------------------------------------------

local o = config.load(exp, {
  "model.size=512", "flag=true", "off=off", "lr=1e-4", "ratio=0.5", "name=foo",
  "sizes=[1, 2]", "quoted='5'", "map={k: v}", "new.deep.key=1", "model.mean.1=0.9",
  "model.mean.2=0.8", "empty=", "url=http://x/y?a=b", " spaced = 3",
})
tap.ok(o.model.size == 512 and type(o.model.size) == "number", "override: int")
tap.ok(o.flag == true and o.off == false, "override: booleans (YAML 1.1 words)")
tap.eq(o.lr, 1e-4, "override: 1e-4")
tap.eq(o.ratio, 0.5, "override: float")
tap.eq(o.name, "foo", "override: plain string")
tap.ok(same(o.sizes, { 1, 2 }), "override: flow list")
tap.ok(o.quoted == "5", "override: quoted stays a string")
tap.ok(same(o.map, { k = "v" }), "override: flow mapping")
tap.eq(o.new.deep.key, 1, "override: creates missing intermediate tables")
tap.ok(same(o.model.mean, { 0.9, 0.8 }), "override: list element and append", json.encode(o.model.mean))
tap.eq(o.empty, null, "override: empty value is null")
tap.eq(o.url, "http://x/y?a=b", "override: value may hold '=' and ':'")
tap.eq(o.spaced, 3, "override: spaces around key trimmed")
tap.eq(o.model.name, "clip", "override: rest of the config untouched")

raises(function() config.load(exp, { "model.size.x=1" }) end,
       { "model.size.x=1", "model.size is a number (448), not a mapping" },
       "override through a scalar names the key")
raises(function() config.load(exp, { "model.mean.5=1" }) end,
       { "model.mean is a list of 1" }, "override: list index out of range")
raises(function() config.load(exp, { "nokey" }) end, { "'nokey'", "expected key=value" },
       "override without '='")
raises(function() config.load(exp, { "a..b=1" }) end, { "empty part" }, "override with an empty key part")
raises(function() config.load(exp, { "x=[1, 2" }) end, { "override 'x=[1, 2'", ":1:" },
       "override value that is not YAML names the override and column")

-- ---- errors ----------------------------------------------------------------------

raises(function() config.load(dir .. "/missing.yaml") end, { dir .. "/missing.yaml" },
       "missing file named")
write("syntax.yaml", "a: 1\nb: [1, 2\nc: 3\n")
raises(function() config.load(dir .. "/syntax.yaml") end, { dir .. "/syntax.yaml:3:" },
       "YAML syntax error names file and line")
write("base/broken.yaml", "x:\n\ty: 1\n")
write("uses_broken.yaml", "_base_: base/broken.yaml\n")
raises(function() config.load(dir .. "/uses_broken.yaml") end, { dir .. "/base/broken.yaml:2:1:" },
       "syntax error in a base names the base file")
write("nobase.yaml", "_base_: [base/model.yaml, nowhere.yaml]\n")
raises(function() config.load(dir .. "/nobase.yaml") end,
       { dir .. "/nobase.yaml", "nowhere.yaml", "not found" }, "_base_ not found names both files")
write("cyc_a.yaml", "_base_: cyc_b.yaml\n")
write("cyc_b.yaml", "_base_: ./cyc_a.yaml\n")
raises(function() config.load(dir .. "/cyc_a.yaml") end,
       { "cycle", "cyc_a.yaml -> " .. dir .. "/cyc_b.yaml -> " .. dir .. "/cyc_a.yaml" },
       "_base_ cycle names the chain")
write("self.yaml", "_base_: self.yaml\n")
raises(function() config.load(dir .. "/self.yaml") end, { "cycle" }, "a file that includes itself")
write("list.yaml", "- a\n- b\n")
raises(function() config.load(dir .. "/list.yaml") end, { dir .. "/list.yaml", "mapping" },
       "top-level list refused")
write("badbase.yaml", "_base_: {a: 1}\n")
raises(function() config.load(dir .. "/badbase.yaml") end, { "badbase.yaml", "_base_ must be" },
       "_base_ of the wrong type")
write("dup.yaml", "a: 1\na: 2\n")
raises(function() config.load(dir .. "/dup.yaml") end, { "dup.yaml:2:1:", "duplicate key" },
       "duplicate key names file and line")
raises(function() config.load(42) end, { "path must be a string" }, "misuse raises")

-- ---- dump ----------------------------------------------------------------------

local tricky = {
  strings = { "yes", "No", "1", "0x10", "1e3", "a: b", "#x", "", "line\nbreak", "tab\t",
              "quote\"", "back\\slash", "-", "[x]", "~", "null", "é", " pad ", "plain_word",
              "nel\194\133", "ls\226\128\168", "ps\226\128\169" },   -- YAML's other line breaks (fuzz_lua)
  numbers = { 0, -3, 2.5, 1e-4, 1e20, 123456789012, math.huge, -math.huge, 0.1 },
  nested = { { a = 1, b = { 2, 3 } }, { { 4 }, { x = "y" } }, {} },
  maybe = null, t = true, f = false,
  deep = { one = { two = { three = "four" } }, ["key with space"] = 1, ["1"] = "num key" },
}
for _, case in ipairs({ { "loaded config", cfg }, { "overridden config", o }, { "tricky values", tricky } }) do
  local text = config.dump(case[2])
  local back = config.parse_yaml(text, "dump")
  tap.ok(same(back, case[2]), "dump reads back as the same table: " .. case[1], text)
end
local text = config.dump(cfg)
tap.ok(text:find("\nmodel:\n", 1, true) and text:find("\n  name: clip\n", 1, true),
       "dump is block YAML with 2-space indentation", text)

-- .inf reaches Lua as math.huge
tap.eq(config.parse_yaml("x: -.inf").x, -math.huge, "-.inf decodes to -math.huge")

-- ---- budget: small files that expand too far are refused -----------------------

-- a fan of _base_ lists: 5 x 5 x 5 = 125 reads of one tiny file
write("fan_c.yaml", "leaf: 1\n")
write("fan_b.yaml", "_base_: [fan_c.yaml, fan_c.yaml, fan_c.yaml, fan_c.yaml, fan_c.yaml]\n")
write("fan_a.yaml", "_base_: [fan_b.yaml, fan_b.yaml, fan_b.yaml, fan_b.yaml, fan_b.yaml]\n")
local fan = write("fan.yaml", "_base_: [fan_a.yaml, fan_a.yaml, fan_a.yaml, fan_a.yaml, fan_a.yaml]\n")
raises(function() config.load(fan) end, { "fan.yaml", "more than 64 files" },
       "a _base_ fan of 125 reads is refused, naming the config")
tap.eq(config.load(dir .. "/fan_a.yaml").leaf, 1, "a fan of 31 reads is within the budget")

-- aliases: a few hundred bytes that decode to 6 MiB each; three such bases
-- are 18 MiB together, over the 16 MiB budget, one is within it
local function alias_file(name, copies)
  local word = ("w"):rep(98)
  return write(name, table.concat({
    "a: &a [" .. (word .. ", "):rep(9) .. word .. "]",
    "b: &b [" .. ("*a, "):rep(9) .. "*a]",
    "c: &c [" .. ("*b, "):rep(9) .. "*b]",
    "d: &d [" .. ("*c, "):rep(9) .. "*c]",
    "e: [" .. ("*d, "):rep(copies - 1) .. "*d]",
  }, "\n") .. "\n")
end
local six = alias_file("six.yaml", 6)
local one = config.load(six)
tap.ok(#one.e == 6 and #one.e[6][10][10][10] == 10, "6 MiB of aliases load")
local three = write("three.yaml", "_base_: [six.yaml, six.yaml, six.yaml]\n")
raises(function() config.load(three) end, { "three.yaml", "more than 16 MiB", "six.yaml" },
       "bases that expand to 18 MiB together are refused, naming the config and the file")
local seventeen = alias_file("seventeen.yaml", 17)
raises(function() config.load(seventeen) end, { "seventeen.yaml", "more than 16 MiB" },
       "one document of 17 MiB is refused before it is built")

os.execute("rm -rf '" .. dir .. "'")
return tap.done()
