-- fmseg.cli.demo — `fmseg demo [CLIP_DIR | HUB_ID]`: SCLIP with the PASCAL VOC
-- classes on the bundled photo, writing a label map, an overlay and a
-- summary to out/demo/. The model is, in order: the argument,
-- models/clip-vit-base-patch16, openai/clip-vit-base-patch16 in the Hugging
-- Face cache (`fmseg fetch openai/clip-vit-base-patch16`). With none of them
-- it falls back to the tiny random-weight fixture, and says so: the
-- pipeline runs end to end, the masks then mean nothing.
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local hf = require("fmseg.io.hf")
local hub = require("fmseg.io.hub")
local image = require("fmseg.image")
local segment = require("fmseg.method.segment")

local M = {}

local HUB_ID = "openai/clip-vit-base-patch16"
local FETCH = "fmseg fetch " .. HUB_ID

local function is_model_dir(path)
  local f = path and io.open(path .. "/config.json", "r")
  if f then f:close() end
  return f ~= nil
end

-- the model directory, whether it is a real checkpoint, and where it came from
local function pick_model(arg)
  if arg then
    local dir = hf.resolve(arg)
    if not is_model_dir(dir) then error(("demo: %s is not a model directory (no config.json)"):format(dir), 0) end
    return dir, true
  end
  for _, dir in ipairs({ "models/clip-vit-base-patch16", core.root .. "/models/clip-vit-base-patch16" }) do
    if is_model_dir(dir) then return dir, true end
  end
  local snapshot = hub.snapshot(HUB_ID)
  if snapshot and is_model_dir(snapshot) then return snapshot, true, HUB_ID end
  local tiny = (os.getenv("FMSEG_FIXTURES") or (core.root .. "/../shared/fixtures")) .. "/clip-tiny"
  if is_model_dir(tiny) then return tiny, false end
  error(("demo: no CLIP checkpoint found (models/clip-vit-base-patch16, or %s in the Hugging Face cache %s); "
         .. "download it with: %s (or pass a directory: fmseg demo DIR)"):format(HUB_ID, hub.cache_dir(), FETCH), 0)
end

M.usage = "demo [CLIP_DIR | HUB_ID]"
M.help = "SCLIP on the bundled photo, outputs in out/demo"

function M.run(argv)
  if argv[1] == "-h" or argv[1] == "--help" then
    print("usage: fmseg " .. M.usage)
    print("  the model: CLIP_DIR, else models/clip-vit-base-patch16, else " .. HUB_ID .. " in the Hugging Face")
    print("  cache (" .. FETCH .. "), else the tiny random-weight fixture")
    return 0
  end
  local model, real, from_hub = pick_model(argv[1])
  if not real then
    print("demo: no real CLIP checkpoint in models/clip-vit-base-patch16 or the Hugging Face cache; using the tiny")
    print("      random-weight fixture " .. model .. " — the masks show the pipeline, not quality.")
    print("      For the real model: " .. FETCH)
  elseif from_hub then
    print(("demo: using %s from the Hugging Face cache: %s"):format(from_hub, model))
  end
  local cfg = config.load(core.root .. "/configs/sclip/sclip_vitb16_voc21.yaml", { "models.clip=" .. model })
  local photo = core.root .. "/tests/data/astronaut.jpg"
  local img = image.load(photo)
  local t0 = os.clock()
  local session = segment.session(cfg)
  local result = session:segment(img)
  local out = "out/demo"
  require("fmseg.io.fs").mkdir_p(out)
  local summary = session:write(result, img, out, "astronaut")
  print(("demo: SCLIP (%s) on %s, %dx%d, %.1f s CPU"):format(model, photo, img:size(2), img:size(1), os.clock() - t0))
  local shares = {}
  for name, share in pairs(summary.pixel_shares) do shares[#shares + 1] = { name, share } end
  table.sort(shares, function(a, b) return a[2] > b[2] end)
  for i = 1, math.min(5, #shares) do print(("  %-20s %5.1f%%"):format(shares[i][1], 100 * shares[i][2])) end
  print(("wrote %s/astronaut.png (labels), astronaut_overlay.png, astronaut.json"):format(out))
  return 0
end

return M
