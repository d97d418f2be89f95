-- Whole recipes against their official code: `fmseg parity` on every method
-- fixture in tests/fixtures/methods (made by tests/tools/methods/*.py from
-- the official repositories), and the checks of the comparison itself on a
-- scratch fixture: a changed label or logit fails, ties below the margin
-- do not, a wrong layout names the file and key.
local tap = require("tap")
local fs = require("fmseg.io.fs")
local hf = require("fmseg.io.hf")
local image = require("fmseg.image")
local safetensors = require("fmseg.io.safetensors")
local segment = require("fmseg.method.segment")
local T = require("fmseg.tensor")

local ROOT = "tests/fixtures/methods"

local function parity(dir)
  local log = os.tmpname()
  local rc = os.execute(("./fmseg parity %s > %s 2>&1"):format(fs.quote(dir), log))
  local text = fs.read(log) or ""
  os.remove(log)
  return rc == 0 or rc == true, text
end

-- ---- every fixture ------------------------------------------------------------

local dirs = {}
local p = io.popen(("ls '%s' 2>/dev/null"):format(ROOT))
for name in p:lines() do
  if fs.exists(ROOT .. "/" .. name .. "/method.json") then dirs[#dirs + 1] = name end
end
p:close()
tap.ok(#dirs > 0, "method fixtures found in " .. ROOT)

for _, name in ipairs(dirs) do
  local dir = ROOT .. "/" .. name
  local meta = hf.read_json(dir .. "/method.json")
  local gen = meta.generator or {}
  local commits = 0
  for _, commit in pairs(gen.repos or {}) do
    if type(commit) == "string" and commit:match("^%x+$") and #commit == 40 then commits = commits + 1 end
  end
  tap.ok(commits > 0 and type(gen.script) == "string" and fs.exists(gen.script),
         name .. ": method.json names its generator script and the official commits it ran")
  local ok, log = parity(dir)
  tap.ok(ok, "parity " .. dir, log:sub(-2500))
  if ok then tap.diag(log:match("\n([^\n]*pixels differ[^\n]*)") or name) end
end

-- ---- the comparison itself, on a scratch fixture ---------------------------------

local MODEL = ROOT .. "/models/clip-b16-tiny"
local scratch = os.tmpname()
os.remove(scratch)
fs.mkdir_p(scratch)
local function write(name, text)
  local f = assert(io.open(scratch .. "/" .. name, "w"))
  f:write(text)
  f:close()
end

local img = T.rand({ 40, 56, 3 }, 7):mul_(255):byte()
image.save_png(scratch .. "/image.png", img)
write("classes.txt", "sky, wall\nperson, astronaut\nflag\n")
local method = [[{"recipe": "clearclip", "params": {"short_side": 0, "slide_crop": 0, "prob_thd": 0.2},
  "models": {"clip": "%s"}, "classes": "classes.txt",
  "outputs": {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"}%s}}]]
write("method.json", method:format(os.getenv("PWD") .. "/" .. MODEL, ""))

-- our own outputs as the "reference", then perturbed
local session = segment.session({ recipe = "clearclip", params = { short_side = 0, slide_crop = 0, prob_thd = 0.2 },
                                  models = { clip = MODEL }, classes = scratch .. "/classes.txt" })
local r = session:segment(img)
local labels, logits = r.labels:clone(), r.dump.logits:clone()
local margin = T.full({ 40, 56 }, 1.0)
local function save_ref(l, z, m) safetensors.save(scratch .. "/ref.safetensors", { labels = l, logits = z, margin = m }) end

save_ref(labels, logits, margin)
local ok, log = parity(scratch)
tap.ok(ok, "scratch fixture made of our own outputs passes", log)

local moved = labels:clone()
moved:set(3, 5, (moved:get(3, 5) + 1) % 4)
save_ref(moved, logits, margin)
ok, log = parity(scratch)
tap.ok(not ok and log:find("1 of 2240 pixels differ, 0 of them", 1, true), "one changed label fails", log)

local tie = margin:clone()
tie:set(3, 5, 1e-6)
save_ref(moved, logits, tie)
ok, log = parity(scratch)
tap.ok(ok and log:find("1 of 2240 pixels differ, 1 of them where the official margin", 1, true),
       "a changed label where the official margin is below 1e-5 is counted, not failed", log)

-- labels_relative (DiffSeg's segments): the margin is (top-1 - top-2) / top-1,
-- a tie below 1e-4; a label changed at a larger relative margin still fails
local relative = method:gsub('"compare": "labels"', '"compare": "labels_relative"')
write("method.json", relative:format(os.getenv("PWD") .. "/" .. MODEL, ""))
save_ref(moved, logits, margin)
ok, log = parity(scratch)
tap.ok(not ok and log:find("1 of 2240 pixels differ, 0 of them where the official relative margin < 1e-04", 1, true),
       "labels_relative: a changed label far from a tie fails", log)
local near = margin:clone()
near:set(3, 5, 2e-4)
save_ref(moved, logits, near)
ok, log = parity(scratch)
tap.ok(not ok and log:find("labels.-FAIL"), "labels_relative: a changed label at relative margin 2e-4 fails", log)
near:set(3, 5, 5e-5)
save_ref(moved, logits, near)
ok, log = parity(scratch)
tap.ok(ok and log:find("1 of 2240 pixels differ, 1 of them where the official relative margin < 1e-04", 1, true),
       "labels_relative: a changed label at relative margin 5e-5 (a tie) is counted, not failed", log)
save_ref(moved, logits, near:narrow(1, 1, 39):contiguous())
ok, log = parity(scratch)
tap.ok(not ok and log:find("margin shape [39, 56], reference [40, 56]", 1, true),
       "labels_relative: a margin of the wrong shape fails naming both shapes", log)
write("method.json", method:format(os.getenv("PWD") .. "/" .. MODEL, ""))

local scale = logits:abs():max()
save_ref(labels, logits + scale * 2e-4, margin)
ok, log = parity(scratch)
tap.ok(not ok and log:find("logits.-FAIL"), "logits off by 2e-4 relative fail", log)
save_ref(labels, logits + scale * 5e-5, margin)
ok = parity(scratch)
tap.ok(ok, "logits off by 5e-5 relative pass")

save_ref(labels:narrow(1, 1, 39):contiguous(), logits, margin)
ok, log = parity(scratch)
tap.ok(not ok and log:find("shape [40, 56], reference [39, 56]", 1, true),
       "a label map of the wrong shape fails naming both shapes", log)

safetensors.save(scratch .. "/ref.safetensors", { labels = labels, logits = logits })
ok, log = parity(scratch)
tap.ok(not ok and log:find("method.json: outputs.labels.margin: no tensor 'margin' in", 1, true),
       "a missing margin tensor names method.json and the key", log)

save_ref(labels, logits, margin)
write("method.json", method:format(os.getenv("PWD") .. "/" .. MODEL, [[, "boxes": {"compare": "exact"}]]))
ok, log = parity(scratch)
tap.ok(not ok and log:find("outputs.boxes: no such tensor in", 1, true), "an output missing from ref.safetensors is named", log)

write("method.json", method:format(os.getenv("PWD") .. "/" .. MODEL, [[, "labels2": {"compare": "fuzzy"}]]))
ok, log = parity(scratch)
tap.ok(not ok and log:find("outputs.labels2.compare must be one of", 1, true), "an unknown compare is refused", log)

os.execute("rm -rf " .. fs.quote(scratch))
os.exit(tap.done())
