-- `fmseg info --check`: every tensor's values scanned; NaN and Inf fail
-- (exit 1, each tensor named with its counts), all-zero tensors are
-- reported without failing (some are zero by design), clean files pass.
local tap = require("tap")
local fs = require("fmseg.io.fs")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")

local tmp = os.tmpname()
os.remove(tmp)
fs.mkdir_p(tmp)

local function info(path)
  local log = tmp .. "/log"
  local rc = os.execute(("./fmseg info --check %s > %s 2>&1"):format(fs.quote(path), log))
  return rc == 0 or rc == true, fs.read(log) or ""
end

safetensors.save(tmp .. "/clean.safetensors", { w = T.from_table({ { 1, -2 }, { 0, 3 } }), empty = T.zeros({ 0 }) })
local ok, log = info(tmp .. "/clean.safetensors")
tap.ok(ok and log:find("check: 0 tensor(s) with NaN or Inf, 0 all zeros", 1, true), "a clean file passes", log)

safetensors.save(tmp .. "/zero.safetensors", { mask_token = T.zeros({ 1, 4 }), w = T.ones({ 2 }) })
ok, log = info(tmp .. "/zero.safetensors")
tap.ok(ok and log:find("mask_token%s+F32%s+%[1, 4%]%s+<%- all zeros")
       and log:find("0 tensor(s) with NaN or Inf, 1 all zeros", 1, true),
       "an all-zero tensor is named but does not fail", log)

local bad = T.from_table({ 1, 0 / 0, 2, 1 / 0, -1 / 0 })
safetensors.save(tmp .. "/bad.safetensors", { bad = bad, half = T.from_table({ 1, 2 }):to("float32") })
ok, log = info(tmp .. "/bad.safetensors")
tap.ok(not ok and log:find("bad%s+F32%s+%[5%]%s+<%- 1 NaN, 2 Inf of 5 values"), "NaN and Inf fail, counted per tensor", log)

-- a model directory: every weight file is scanned
local model = tap.fixtures("dino-tiny")
if model then
  ok, log = info(model)
  tap.ok(ok and log:find("check: 0 tensor(s) with NaN or Inf", 1, true), "a fixture model directory is clean", log)
end

ok, log = info("tests/data/astronaut.jpg")
tap.ok(not ok and log:find("--check reads safetensors files and model directories", 1, true),
       "--check on an image says what it reads", log)

os.execute("rm -rf " .. fs.quote(tmp))
os.exit(tap.done())
