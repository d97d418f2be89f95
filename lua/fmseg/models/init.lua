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
  sam = "fmseg.models.sam",     -- SAM or SAM 2, by config.json's model_type
  sam2 = "fmseg.models.sam2",   -- SAM 2 for single images (no memory / video yet)
  sd = "fmseg.models.sd",
  vfm = "fmseg.models.vfm",   -- any of DINO / DINOv2 / SAM, by config.json
}

local cache = {}

-- Kind sam takes a SAM 2 directory too (config.json model_type sam2):
-- recipes and commands that prompt SAM run either.
local function sam_module(path)
  local file = path .. "/config.json"
  if hf.exists(file) and hf.read_json(file).model_type == "sam2" then return KINDS.sam2 end
  return KINDS.sam
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
  if kind == "sam" then modname = sam_module(path) end
  local key = modname .. "\0" .. path
  if not cache[key] then cache[key] = require(modname).load(path) end
  return cache[key]
end

return M
