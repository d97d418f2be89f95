-- fmseg.crf — the fully connected CRF (Krähenbühl & Koltun 2011) as
-- pydensecrf computes it (core/densecrf.c): mean-field inference with a
-- Gaussian kernel on positions and a bilateral one on positions and
-- colours, Potts compatibilities.
--
--   local crf = require("fmseg.crf")
--   local q = crf.dense(img, crf.unary_from_probs(probs), {
--     iterations = 10,
--     gaussian_sxy = 3, gaussian_weight = 3,                         -- addPairwiseGaussian
--     bilateral_sxy = 80, bilateral_srgb = 13, bilateral_weight = 10, -- addPairwiseBilateral
--   })                                      -- q (C, H, W) marginals; q:argmax(1) the labels
local core = require("fmseg.core")
local ffi = require("ffi")
local T = require("fmseg.tensor")

local C, check = core.C, core.check

local M = {}

local FIELDS = { "iterations", "gaussian_sxy", "gaussian_weight", "bilateral_sxy", "bilateral_srgb",
                 "bilateral_weight" }

-- probs (C, H, W) → −log(clip(probs, clip, 1)) in float32 (pydensecrf's
-- utils.unary_from_softmax; clip 1e-5)
function M.unary_from_probs(probs, clip)
  local p = probs:float():clamp(clip or 1e-5, 1)
  return -(p:log())
end

-- img (H, W, 3) uint8, unary (C, H, W) → (C, H, W) marginals; opts: the
-- fields above (all required), naive (the lattice's linear-search twin)
function M.dense(img, unary, opts)
  local p = ffi.new("fm_crf_params")
  for _, k in ipairs(FIELDS) do
    if type(opts[k]) ~= "number" then error(("dense_crf: %s must be a number"):format(k), 2) end
    p[k] = opts[k]
  end
  local u = unary:float():contiguous()
  local out = T.new(u:shape())
  check(C.fm_dense_crf(out, u, img:contiguous(), p, opts.naive and 1 or 0))
  return out
end

return M
