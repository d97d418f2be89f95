-- fmseg.models — model kinds a config can name, and how each loads.
-- Each module exposes load(dir) → an immutable model. A path may be a
-- Hugging Face hub id (org/name[@revision]) already in the hub cache
-- (fmseg.io.hf.resolve).
local hf = require("fmseg.io.hf")

local M = {}

local KINDS = {
  clip = "fmseg.models.clip",
  dino = "fmseg.models.vit",
  dinov2 = "fmseg.models.vit",
  vit = "fmseg.models.vit",
  sam = "fmseg.models.sam",
  sam2 = "fmseg.models.sam2",   -- SAM 2 for single images (no memory / video yet)
  sd = "fmseg.models.sd",
  vfm = "fmseg.models.vfm",   -- any of DINO / DINOv2 / SAM, by config.json
}

local cache = {}

-- A SAM 2 directory (config.json model_type sam2) named as kind sam: say
-- so rather than fail on a missing SamModel tensor.
local function refuse_sam2(path)
  local file = path .. "/config.json"
  if hf.exists(file) and hf.read_json(file).model_type == "sam2" then
    error(("%s: a SAM 2 model (model_type sam2): load it as kind sam2"):format(path), 0)
  end
end

function M.load(kind, path)
  local modname = KINDS[kind]
  if not modname then
    local known = {}
    for k in pairs(KINDS) do known[#known + 1] = k end
    table.sort(known)
    error(("unknown model kind '%s' (known: %s)"):format(kind, table.concat(known, ", ")), 0)
  end
  path = hf.resolve(path)
  if kind == "sam" then refuse_sam2(path) end
  local key = kind .. "\0" .. path
  if not cache[key] then cache[key] = require(modname).load(path) end
  return cache[key]
end

return M
