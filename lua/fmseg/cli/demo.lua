-- fmseg.cli.demo — `fmseg demo [CLIP_DIR]`: SCLIP with the PASCAL VOC classes
-- on the bundled photo, writing a label map, an overlay and a summary to
-- out/demo/. With no real CLIP checkpoint at hand it falls back to the tiny
-- random-weight fixture, and says so: the pipeline runs end to end, the
-- masks then mean nothing.
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local image = require("fmseg.image")
local segment = require("fmseg.method.segment")

local M = {}

local function is_model_dir(path)
  local f = path and io.open(path .. "/config.json", "r")
  if f then f:close() end
  return f ~= nil
end

local function pick_model(arg)
  if arg then
    if not is_model_dir(arg) then error(("demo: %s is not a model directory (no config.json)"):format(arg), 0) end
    return arg, true
  end
  for _, dir in ipairs({ "models/clip-vit-base-patch16", core.root .. "/models/clip-vit-base-patch16" }) do
    if is_model_dir(dir) then return dir, true end
  end
  local tiny = (os.getenv("FMSEG_FIXTURES") or (core.root .. "/../shared/fixtures")) .. "/clip-tiny"
  if is_model_dir(tiny) then return tiny, false end
  error("demo: no CLIP checkpoint found; download openai/clip-vit-base-patch16 into " ..
        "models/clip-vit-base-patch16 (or pass its directory: fmseg demo DIR)", 0)
end

M.usage = "demo [CLIP_DIR]"
M.help = "SCLIP on the bundled photo, outputs in out/demo"

function M.run(argv)
  local model, real = pick_model(argv[1])
  if not real then
    print("demo: no real CLIP checkpoint in models/clip-vit-base-patch16; using the tiny")
    print("      random-weight fixture " .. model .. " — the masks show the pipeline, not quality.")
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
