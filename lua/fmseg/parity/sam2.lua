-- Parity of fmseg.models.sam2 against facebookresearch/sam2's original
-- image encoder (fixture family "sam2", tests/tools/make_sam2_fixtures.py):
-- Hiera's per-stage outputs, the FPN levels after scalp, their sine
-- position encodings and vision_features.
local sam2 = require("fmseg.models.sam2")

local M = {}

M.inputs = { "pixel_values" }

function M.compute(dir, ref)
  local model = sam2.load(dir)
  local run = model:encode_image(ref:get("pixel_values"))
  local out = { vision_features = run.vision_features }
  -- the reference counts levels and stages from 0
  for i, t in ipairs(run.trunk) do out["trunk." .. (i - 1)] = t end
  for i, t in ipairs(run.backbone_fpn) do out["backbone_fpn." .. (i - 1)] = t end
  for i, t in ipairs(run.vision_pos_enc) do out["vision_pos_enc." .. (i - 1)] = t end
  return out
end

return M
