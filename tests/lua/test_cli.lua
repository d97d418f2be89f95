-- The command line as a user meets it: help, version, info, run, and one
-- clear line with exit status 1 for every bad input (never a signal).
local tap = require("tap")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")

local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. tmp)

-- Runs ./fmseg with args; returns exit status, stdout, stderr.
local function fmseg(args)
  local out, err = tmp .. "/stdout", tmp .. "/stderr"
  local cmd = ("./fmseg %s >%s 2>%s; echo $? >%s/rc"):format(args, out, err, tmp)
  os.execute(cmd)
  local function slurp(p) local f = io.open(p); local s = f:read("*a"); f:close(); return s end
  return tonumber(slurp(tmp .. "/rc")), slurp(out), slurp(err)
end

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

local rc, out = fmseg("--help")
tap.ok(rc == 0 and out:find("usage: fmseg") and out:find("parity") and out:find("segment"), "--help lists the commands")
rc, out = fmseg("--version")
tap.ok(rc == 0 and out:match("^fmseg %d+%.%d+%.%d+"), "--version")
local err, _
rc, _, err = fmseg("no-such-command")
tap.ok(rc == 1 and err:find("unknown command 'no%-such%-command'"), "unknown command: exit 1 and a message")

-- info on a safetensors file we write: every tensor listed
local st = tmp .. "/small.safetensors"
safetensors.save(st, { alpha = T.ones({ 2, 3 }), beta = T.zeros({ 4 }, "int32") })
rc, out = fmseg("info " .. st)
tap.ok(rc == 0 and out:find("alpha%s+F32%s+%[2, 3%]") and out:find("beta%s+I32%s+%[4%]")
       and out:find("2 tensors"), "info lists a file's tensors, dtypes and shapes", out)

local fixtures = tap.fixtures("clip-tiny")
if fixtures then
  rc, out = fmseg("info " .. fixtures)
  local listed = 0
  for _ in out:gmatch("\n  [%w_.]+%s+F32") do listed = listed + 1 end
  local want = #safetensors.open(fixtures .. "/model.safetensors"):names()
  tap.ok(rc == 0 and listed == want, ("info DIR lists all %d tensors"):format(want), out:sub(1, 300))
  rc, out = fmseg("info " .. fixtures .. "/input.png")
  tap.ok(rc == 0 and out:find("image %d+x%d+"), "info on an image gives its size")
end

-- Malformed inputs: exit status 1, a single line naming the file.
local cases = {
  { "empty.safetensors", "" },
  { "short.safetensors", "\1\2\3" },
  { "huge-header.safetensors", "\255\255\255\255\255\255\0\0{}" },
  { "not-json.safetensors", "\8\0\0\0\0\0\0\0not json" },
  { "past-end.safetensors",
    (function()
      local h = '{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
      return string.char(#h, 0, 0, 0, 0, 0, 0, 0) .. h .. "\0\0\0\0"
    end)() },
  { "bad-dtype.safetensors",
    (function()
      local h = '{"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}'
      return string.char(#h, 0, 0, 0, 0, 0, 0, 0) .. h .. "\0\0\0\0"
    end)() },
  { "text.png", "this is not an image" },
}
for _, c in ipairs(cases) do
  local path = tmp .. "/" .. c[1]
  write(path, c[2])
  rc, _, err = fmseg("info " .. path)
  local lines = select(2, err:gsub("\n", ""))
  tap.ok(rc == 1 and lines == 1 and err:find(c[1], 1, true), "info " .. c[1] .. ": exit 1, one line naming the file", err)
end
rc, _, err = fmseg("info " .. tmp .. "/missing.safetensors")
tap.ok(rc == 1 and err:find("missing.safetensors", 1, true), "a missing file is named")

-- A model directory with a broken config.json
os.execute("mkdir -p " .. tmp .. "/baddir")
write(tmp .. "/baddir/config.json", "{ not json")
rc, _, err = fmseg("parity " .. tmp .. "/baddir")
tap.ok(rc == 1 and err:find("baddir", 1, true), "an invalid directory is refused with its name", err)

-- run: arguments reach the script, errors inside it exit 1 with a message
write(tmp .. "/script.lua", 'local a, b = ...\nio.write(a .. "+" .. b .. "=" .. arg[1] + arg[2])\n')
rc, out = fmseg("run " .. tmp .. "/script.lua 2 3")
tap.ok(rc == 0 and out == "2+3=5", "run passes arguments", out)
write(tmp .. "/boom.lua", 'error("recipe exploded")\n')
rc, _, err = fmseg("run " .. tmp .. "/boom.lua")
tap.ok(rc == 1 and err:find("recipe exploded"), "an error inside a script: exit 1 with its message")
write(tmp .. "/syntax.lua", 'local x = = 1\n')
rc, _, err = fmseg("run " .. tmp .. "/syntax.lua")
tap.ok(rc == 1 and err:find("syntax.lua"), "a syntax error names the script")

os.execute("rm -rf " .. tmp)
os.exit(tap.done())
