-- Deep Spectral Methods, object localisation (Melas-Kyriazi et al., CVPR
-- 2022, Table 1): one box per image from the Fiedler vector of the DINO
-- key affinities, scored by CorLoc as LOST and TokenCut are.
-- ref: lukemelas/deep-spectral-segmentation, object-localization/main.py
--      (--eigenseg --precomputed_eigs_dir, lines 263-272) and
--      object-localization/object_discovery.py (get_bbox_from_patch_mask,
--      get_largest_cc_box); the eigenvectors from extract/extract.py
--      (extract_features, _extract_eig), computed by deep_spectral.eigs.
--
-- Eigenvector 1 of (D − W) y = λ D y (W = max(0, F̂ F̂ᵀ) / max, keys of the
-- image cropped to a multiple of the patch), after extract's sign rule;
-- mask = y > 0, inverted when more than half (not all) of it is set, all
-- set when none is; the object is its largest 8-connected component (ties:
-- the first in raster order, as skimage's label numbers them); its box in
-- pixels (patch extents x patch size, clipped to the image).
--
-- Result: kind "instances", one mask and its box; dump.eigenvector (gh, gw),
-- dump.mask (gh, gw) the component.
local masks = require("fmseg.masks")
local patches = require("fmseg.method.patches")
local deep_spectral = require("fmseg.method.recipes").load("deep_spectral")

local R = {
  name = "deep_spectral_loc",
  needs = { "dino" },
  defaults = {
    which_block = -1,               -- block whose qkv is read (-1: last)
    which_features = "k",           -- k, q or v
    K = 5,                          -- eigenpairs computed (the README's extract_eigs --K 5)
    positions = "hub",              -- position resampling: "hub" (DINO's torch.hub code, as
                                    -- the official code runs) or "transformers" (ViTModel)
    resize = false,                 -- shorter side in pixels first (not in the official code)
  },
}

-- The eig settings extract_eigs runs with (its defaults; the README passes K).
local EIG = { normalize = true, threshold_at_zero = true, lapnorm = true, image_color_lambda = 0.0,
              image_downsample_factor = false }

-- grid (gh, gw) uint8 → the largest 8-connected component (gh, gw) uint8;
-- equal sizes go to the component whose first patch comes first in raster
-- order (skimage.measure.label numbering, np.argmax of the counts).
function R.largest_component(grid)
  local labels, n = masks.connected_components(grid, 8)
  local lp, count, first = labels:contiguous():ptr(), {}, {}
  for i = 0, labels:numel() - 1 do
    local l = lp[i]
    if l > 0 then
      count[l] = (count[l] or 0) + 1
      first[l] = first[l] or i
    end
  end
  local best
  for l = 1, n do
    if not best or count[l] > count[best] or (count[l] == count[best] and first[l] < first[best]) then best = l end
  end
  return labels:float():eq(best):byte()
end

-- get_bbox_from_patch_mask's mask: y (gh, gw) → (gh, gw) uint8 component
function R.localize(y)
  local mask = y:gt(0):byte()
  local frac = mask:float():mean()
  if (frac > 0.5 and frac < 1) or frac == 0 then mask = (1 - mask:float()):byte() end
  return R.largest_component(mask)
end

function R.setup(params, models)
  patches.check_which_features("deep_spectral_loc", params.which_features)
  patches.check_positions("deep_spectral_loc", params.positions)
  local p = {}
  for k, v in pairs(EIG) do p[k] = v end
  for k, v in pairs(params) do p[k] = v end
  p.patch = models.dino.patch_size
  return { params = p, model = models.dino }
end

function R.segment(state, img)
  local p = state.params
  local feats, _, frame = deep_spectral.features(state, img)
  local _, vecs = deep_spectral.eigs(feats, frame.gh, frame.gw, p)
  local y = vecs:select(1, 2):reshape(frame.gh, frame.gw)
  local grid = R.localize(y)
  local box = patches.box(grid, frame)
  local mask = patches.mask_to_image(grid, frame)
  return {
    kind = "instances", masks = { mask }, scores = { 1 }, boxes = { box },
    records = { { box = box, area = mask:float():sum() } },
    dump = { eigenvector = y, mask = grid },
  }
end

return R
