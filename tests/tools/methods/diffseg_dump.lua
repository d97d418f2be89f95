-- Helpers of tests/tools/methods/diffseg.py (run with ./fmseg run):
--
--   ./fmseg run tests/tools/methods/diffseg_dump.lua shapes UNET_CONFIG VAE_CONFIG OUT.json
--       every tensor fmseg's UNet2DConditionModel / AutoencoderKL loaders
--       ask for under those configs, {name: shape}, so the generator can
--       write random weights in the diffusers layout (optional ones left out)
--   ./fmseg run tests/tools/methods/diffseg_dump.lua maps PIPELINE IMAGE.png OUT.safetensors [TIMESTEP]
--       our UNet's self-attention maps on IMAGE as recipes/diffseg.lua takes
--       them (centre square, TF bilinear to 512, VAE mean, t = TIMESTEP, empty prompt): one
--       (heads, queries, keys) float32 tensor per attn1 layer, named
--       "<order>.<module path>" in the order the layers ran
local json = require("fmseg.io.json")
local fs = require("fmseg.io.fs")
local T = require("fmseg.tensor")
local image = require("fmseg.image")
local safetensors = require("fmseg.io.safetensors")

local mode = arg[1]
if mode == "shapes" then
  local sd = require("fmseg.models.sd")
  local out = {}
  local w = {}
  function w:has() return true end
  function w:get(name, shape)
    if not shape then error(name .. ": no shape asked", 2) end
    out[name] = shape
    return T.full(shape, 0)
  end
  function w:maybe() return nil end
  local function dump(_prefix, new, cfgfile)
    local before = {}
    for k in pairs(out) do before[k] = true end
    new(json.decode(fs.read(cfgfile)), w)
    local part = {}
    for k, v in pairs(out) do if not before[k] then part[k] = v end end
    return part
  end
  local res = { unet = dump("unet", sd.unet.new, arg[2]) }
  out = {}
  res.vae = dump("vae", sd.vae.new, arg[3])
  local f = assert(io.open(arg[4], "w"))
  f:write(json.encode(res))
  f:close()
elseif mode == "maps" then
  local recipes = require("fmseg.method.recipes")
  local diffseg = recipes.load("diffseg")
  local A = require("fmseg.models.sd_attention")
  local sd = require("fmseg.models.sd")
  local pipe = sd.load(arg[2])
  local img = image.load(arg[3])
  local x = diffseg.prepare(img, 512, "center_square")
  local latents = pipe:encode_image(x)
  local text = pipe:encode_prompt({ "" })
  local cap = A.capture({ kinds = { "attn1" } })
  pipe.unet:forward(latents, tonumber(arg[5] or 300), text, { capture = cap })
  local tensors = {}
  for i, name in ipairs(cap.names) do
    tensors[("%02d.%s"):format(i, name)] = cap.maps[name]:contiguous()
  end
  safetensors.save(arg[4], tensors)
else
  error("diffseg_dump.lua: shapes | maps", 0)
end
