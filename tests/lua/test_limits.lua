-- Bounded resources: an image over the pixel limit is refused before it is
-- decoded; under an address-space limit (ulimit -v) fmseg either refuses to
-- start with a message (OpenBLAS's per-thread buffers would not fit, and
-- OpenBLAS retries a failed mmap forever) or, once started, meets an
-- allocation failure inside a forward pass as an error, not a crash or a
-- hang. (Config budgets: test_config.lua; decompression bombs:
-- tests/c/test_fuzz_regressions.c.)
local tap = require("tap")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")

local FMSEG = core.root .. "/fmseg"
local dino = tap.fixtures("dino-tiny")

-- out, exit code of cmd under `ulimit -v kib`, killed after 120 s (a hang)
local function limited(kib, cmd)
  local p = io.popen(("sh -c %s 2>&1; echo \"rc=$?\""):format(
    fs.quote(("ulimit -v %d && exec timeout 120 %s"):format(kib, cmd))))
  local out = p:read("*a")
  p:close()
  return out, tonumber(out:match("rc=(%d+)%s*$"))
end

-- An image is refused before decoding when its header declares more pixels
-- than the limit, which FMSEG_MAX_IMAGE_PIXELS sets.
do
  local image, T = require("fmseg.image"), require("fmseg.tensor")
  local png = os.tmpname() .. ".png"
  image.save_png(png, T.zeros({ 20, 30, 3 }, "uint8"))
  local p = io.popen(("FMSEG_MAX_IMAGE_PIXELS=500 %s info %s 2>&1; echo \"rc=$?\""):format(FMSEG, fs.quote(png)))
  local text = p:read("*a")
  p:close()
  tap.ok(text:find("rc=1", 1, true) and text:find("30x20 image has more than 500 pixels", 1, true)
         and text:find("FMSEG_MAX_IMAGE_PIXELS", 1, true), "an image over the pixel limit is refused, naming both", text)
  p = io.popen(("FMSEG_MAX_IMAGE_PIXELS=600 %s info %s 2>&1; echo \"rc=$?\""):format(FMSEG, fs.quote(png)))
  text = p:read("*a")
  p:close()
  tap.ok(text:find("rc=0", 1, true) ~= nil, "at the limit it decodes", text)
  os.remove(png)
end

if os.getenv("FMSEG_ASAN") then   -- set by tests/asan/run.sh
  tap.skip("bounded resources under ulimit -v", "AddressSanitizer reserves terabytes of address space at start")
  os.exit(tap.done())
end

local out, rc = limited(500 * 1024, FMSEG .. " --version")
tap.ok(rc == 1 and out:find("ulimit -v", 1, true) and out:find("FMSEG_THREADS=1", 1, true),
       "a limit too small for OpenBLAS's buffers: exit 1 with a message, not a hang", out)

if dino then
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write([[
local vit = require("fmseg.models.vit")
local T = require("fmseg.tensor")
local model = vit.load(arg[1])
local x = T.randn({ 1, 3, 4096, 4096 }, 1)     -- 65536 tokens: more than the limit allows
local ok, err = pcall(function() return model:encode_image(x) end)
print(ok and "finished" or ("error: " .. tostring(err)))
]])
  f:close()
  out, rc = limited(900 * 1024, ("%s run %s %s"):format(FMSEG, script, fs.quote(dino)))
  tap.ok(rc == 0 and out:find("error: out of memory: cannot allocate %d+ bytes") ~= nil,
         "an allocation failure inside a forward pass is an error naming the size", out)
  os.remove(script)
else
  tap.skip("an allocation failure inside a forward pass", "no dino-tiny fixture")
end

os.exit(tap.done())
