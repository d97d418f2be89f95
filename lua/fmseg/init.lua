-- fmseg — segmentation with foundation models, from Lua.
--
--   local fmseg = require("fmseg")
--   local img = fmseg.image.load("cat.png")        -- (H, W, 3) uint8
--   local x = fmseg.tensor.randn({2, 3})
--
-- Sub-modules load on first use: tensor, nn, image, safetensors, hf,
-- json, config, tokenizer, models, recipes, ...
local M = {}

local SUBMODULES = {
  tensor = "fmseg.tensor", nn = "fmseg.nn", image = "fmseg.image",
  safetensors = "fmseg.io.safetensors", hf = "fmseg.io.hf", json = "fmseg.io.json",
  config = "fmseg.io.config", tokenizer = "fmseg.text.tokenizer", core = "fmseg.core",
  util = "fmseg.util",
}

setmetatable(M, {
  __index = function(self, key)
    local name = SUBMODULES[key]
    if not name then return nil end
    local mod = require(name)
    rawset(self, key, mod)
    return mod
  end,
})

function M.version()
  local core = require("fmseg.core")
  return core.ffi.string(core.C.fm_version())
end

return M
