-- `fmseg parity` on every fixture directory, the shared ones and ours in
-- tests/fixtures (other shapes, made with transformers / diffusers, and SAM 2's
-- image encoder, prompt encoder and mask decoder by facebookresearch/sam2's
-- own code): exit 0
-- and a --dump holding every non-input tensor of ref.json.
local tap = require("tap")
local hf = require("fmseg.io.hf")
local safetensors = require("fmseg.io.safetensors")

local INPUTS = {   -- what each family is given, not asked to compute
  clip = { pixel_values = true, input_ids = true, ["interp.pixel_values"] = true },
  dino = { pixel_values = true, ["interp.pixel_values"] = true },
  dinov2 = { pixel_values = true, ["interp.pixel_values"] = true },
  sam = { pixel_values = true, resized_hw = true, original_hw = true, ["prompt.points"] = true,
          ["prompt.labels"] = true, ["prompt.box"] = true },
  ["stable-diffusion"] = { image = true, noise = true, timestep = true, input_ids = true },
  -- SAM 2: the image, its size and each prompt case's points, labels, boxes, mask input
  sam2 = function(name)
    return name == "pixel_values" or name == "original_hw" or name:match("%.point_coords$") ~= nil
      or name:match("%.point_labels$") ~= nil or name:match("%.boxes$") ~= nil or name:match("%.mask_input$") ~= nil
  end,
}

local function is_input(family, name)
  local inputs = INPUTS[family]
  if type(inputs) == "function" then return inputs(name) end
  return inputs[name] == true
end

local tmp = os.tmpname()

local function check(dir)
  local meta = hf.read_json(dir .. "/ref.json")
  local rc = os.execute(("./fmseg parity %s --dump %s > %s.log 2>&1"):format(dir, tmp, tmp))
  local ok = rc == 0 or rc == true
  local f = io.open(tmp .. ".log")
  local log = f and f:read("*a") or ""
  if f then f:close() end
  tap.ok(ok, "parity " .. dir, log:sub(-1500))
  if not ok then return end
  local dumped = safetensors.open(tmp)
  local missing = {}
  for name in pairs(meta.tensors) do
    if not is_input(meta.family, name) and not dumped:has(name) then missing[#missing + 1] = name end
  end
  tap.ok(#missing == 0, "--dump holds every non-input tensor of " .. dir, table.concat(missing, ", "))
end

local shared = tap.fixtures()
if shared then
  for _, name in ipairs({ "clip-tiny", "dino-tiny", "dinov2-tiny", "dinov2-reg-tiny", "sam-tiny", "sd-tiny" }) do
    check(shared .. "/" .. name)
  end
end
for _, name in ipairs({ "clip-alt", "dino-alt", "dinov2-alt", "dinov2-reg-alt", "sam-alt", "sd-alt",
                       "sam2-tiny", "sam2-tiny-alt" }) do
  check("tests/fixtures/" .. name)
end
os.remove(tmp)
os.remove(tmp .. ".log")
os.exit(tap.done())
