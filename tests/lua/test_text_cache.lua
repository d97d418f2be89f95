-- The text classifier kept on disk: a second run reads it back and gives
-- the same outputs; another checkpoint or other prompts get their own entry.
local tap = require("tap")

local clip = tap.fixtures("clip-tiny")
if not clip then os.exit(tap.done()) end
local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. tmp)

local function run(out, extra)
  local cmd = ("FMSEG_CACHE=%s/cache ./fmseg segment configs/sclip/sclip_vitb16_voc21.yaml " ..
               "tests/data/astronaut.jpg --set models.clip=%s -o %s/%s %s >/dev/null 2>&1"):format(
    tmp, clip, tmp, out, extra or "")
  local rc = os.execute(cmd)
  return rc == 0 or rc == true
end

local function entries()
  local p = io.popen("ls " .. tmp .. "/cache/text 2>/dev/null")
  local n = 0
  for line in p:lines() do if line:match("%.safetensors$") then n = n + 1 end end
  p:close()
  return n
end

local slurp = require("fmseg.io.fs").read

tap.ok(run("a"), "first run")
tap.eq(entries(), 1, "the classifier is cached")
tap.ok(run("b"), "second run, from the cache")
tap.ok(slurp(tmp .. "/a/astronaut.png") == slurp(tmp .. "/b/astronaut.png")
       and slurp(tmp .. "/a/astronaut.json") == slurp(tmp .. "/b/astronaut.json"), "identical outputs")
tap.ok(run("c", "--set params.templates=photo"), "other templates")
tap.eq(entries(), 2, "other prompts get their own entry")
tap.ok(run("d", "--set models.clip=tests/fixtures/clip-alt"), "another checkpoint")
tap.eq(entries(), 3, "another checkpoint gets its own entry")

-- A corrupt entry is recomputed, not trusted.
local p = io.popen("ls " .. tmp .. "/cache/text/*.safetensors")
for path in p:lines() do
  local f = io.open(path, "wb"); f:write("junk"); f:close()
end
p:close()
tap.ok(run("e"), "a corrupt cache entry is recomputed")
tap.ok(slurp(tmp .. "/a/astronaut.png") == slurp(tmp .. "/e/astronaut.png"), "and gives the same outputs")
os.execute("rm -rf " .. tmp)
os.exit(tap.done())
