-- fmseg.models.vfm — "a vision foundation model" as ProxyCLIP takes one:
-- DINO (ViTModel), DINOv2 with or without registers, or SAM's image
-- encoder; which one comes from the directory's config.json model_type.
--
--   local vfm = require("fmseg.models.vfm").load("dino-vitb8")
--   vfm.vfm_type      -- "vit", "dinov2", "dinov2_with_registers" or "sam"
local hf = require("fmseg.io.hf")

local M = {}

local LOADERS = {
  vit = "fmseg.models.vit", dinov2 = "fmseg.models.vit",
  dinov2_with_registers = "fmseg.models.vit", sam = "fmseg.models.sam",
}

function M.load(path)
  local dir = hf.open(path)
  local kind = dir.config.model_type
  local modname = LOADERS[kind]
  if not modname then
    local what = kind and ("model_type '" .. tostring(kind) .. "'") or "config.json has no model_type"
    error(("%s: %s; a proxy model must be DINO (vit), DINOv2 (dinov2, dinov2_with_registers) or SAM (sam)"):format(
      path, what), 0)
  end
  local model = require(modname).load(path)
  model.vfm_type = kind
  return model
end

return M
