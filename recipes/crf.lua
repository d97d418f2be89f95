-- Dense CRF refinement: the fully connected CRF (Krähenbühl & Koltun,
-- NIPS 2011) over the class scores of the recipe before it, as a `refine:`
-- step of any recipe whose result has `scores` (the CLIP recipes' class
-- probabilities):
--
--   refine: { recipe: crf, params: { iterations: 10 } }
--
-- The unary is −log(clip(p, 1e-5, 1)) of the previous scores (pydensecrf's
-- unary_from_softmax); a Gaussian kernel on positions (sxy, weight) and a
-- bilateral kernel on positions and RGB colours (sxy, srgb, weight), Potts
-- compatibilities, mean field for `iterations` steps (fmseg.crf, equal to
-- pydensecrf); the labels are the marginals' argmax, so a background
-- threshold of the first recipe (prob_thd) is not applied again.
-- Defaults: CaR's PostProcess (google-research clip_as_rnn
-- modeling/model/crf.py: 10 iterations, Gaussian sxy 1 weight 3, bilateral
-- sxy 67 srgb 3 weight 4). CaR itself hands the CRF its mean-subtracted BGR
-- image cast to uint8; this step hands it the image.
local crf = require("fmseg.crf")
local T = require("fmseg.tensor")

local recipe = {
  name = "crf",
  defaults = {
    iterations = 10,
    gaussian_sxy = 1, gaussian_weight = 3,
    bilateral_sxy = 67, bilateral_srgb = 3, bilateral_weight = 4,
  },
}

function recipe.setup(params)
  for k in pairs(recipe.defaults) do
    if type(params[k]) ~= "number" then error(("crf: params.%s must be a number"):format(k), 0) end
  end
  if params.iterations < 0 or params.iterations % 1 ~= 0 then
    error(("crf: params.iterations must be a whole number >= 0, got %s"):format(tostring(params.iterations)), 0)
  end
  return { params = params }
end

function recipe.segment(state, img, previous)
  if not previous or previous.kind ~= "semantic" or not previous.scores then
    error("crf: refines a semantic result with class scores (`refine:` after a recipe such as sclip)", 0)
  end
  local scores = previous.scores
  local h, w = img:size(1), img:size(2)
  if scores:dim() ~= 3 or scores:size(2) ~= h or scores:size(3) ~= w then
    error(("crf: the previous scores are %s, the image %dx%d"):format(T.shape_string(scores:shape()), w, h), 0)
  end
  local q = crf.dense(img, crf.unary_from_probs(scores), state.params)
  local dump = {}
  for k, v in pairs(previous.dump or {}) do dump[k] = v end
  dump.crf_marginals = q
  dump.unrefined_labels = previous.labels
  return { kind = "semantic", labels = q:argmax(1):int(), scores = q, dump = dump }
end

return recipe
