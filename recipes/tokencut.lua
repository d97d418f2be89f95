-- TokenCut (Wang et al., CVPR 2022): single-object discovery as a
-- normalized cut of the graph of DINO patch keys.
-- ref: YangtaoWANG95/TokenCut, object_discovery.py (ncut, detect_box) and
--      main_tokencut.py (last-block keys, zero padding to the patch size)
--
-- Keys of the last block, L2-normalised per patch; A = [cos > tau], with
-- eps where there is no edge; (D − A) y = λ D y; y = the second-smallest
-- eigenvector; bipartition y > mean(y), oriented so that the patch of
-- largest |y| (the seed) is in it; the object is the 4-connected
-- component of the seed. Result: one instance mask and its box
-- (result.boxes, image pixels, pixel edges), what CorLoc scores.
--
-- As the official code runs: position embeddings resampled as DINO's
-- torch.hub code does (positions "hub": scale_factor (g + 0.1) / g0;
-- transformers' resampling moves the fixture's eigenvector by 4% of its
-- size), the eigenproblem solved in double precision, as scipy's eigh
-- solves TokenCut's float64 graph (np.where(..., eps, A) makes it
-- float64). With no_binary_graph the official graph stays float32 and
-- scipy solves it in single precision; ours stays double: the eigenvectors
-- differ by 7e-7 of their largest entry (tests/fixtures/methods/
-- tokencut-weighted).
--
-- The feature → mask step is R.ncut(feats, gh, gw, params), a pure
-- function of a (gh*gw, C) matrix; R.split(y, gh, gw) its last part.
local cluster = require("fmseg.cluster")
local nn = require("fmseg.nn")
local patches = require("fmseg.method.patches")
local T = require("fmseg.tensor")

local R = {
  name = "tokencut",
  needs = { "dino" },
  -- main_tokencut.py's arguments and defaults
  defaults = {
    which_features = "k",     -- k, q or v of the last block
    tau = 0.2,                -- an edge where cosine similarity > tau
    eps = 1e-5,               -- weight of the missing edges
    no_binary_graph = false,  -- true: similarities >= tau are the weights
    resize = false,           -- shorter side in pixels, false: full size
    positions = "hub",        -- position resampling: "hub" (DINO's torch.hub code, as
                              -- the official code runs) or "transformers" (ViTModel)
  },
}

-- The split of an eigenvector y (N) on a gh x gw grid: y > mean(y),
-- oriented so that the seed (argmax |y|, the first on ties) is in it; the
-- object is the seed's 4-connected component. Either sign of y gives the
-- same answer. → { mask, bipartition (gh, gw) uint8, seed (0-based),
-- eigenvector (gh, gw) oriented }
function R.split(y, gh, gw)
  local avg = y:sum() / y:numel()
  local bipartition = y:gt(avg)
  local seed = y:abs():argmax() - 1
  if bipartition:get(seed + 1) ~= 1 then
    y = -y
    bipartition = 1 - bipartition
  end
  local grid = bipartition:reshape(gh, gw):byte()
  return { mask = patches.component(grid, seed), bipartition = grid, seed = seed,
           eigenvector = y:reshape(gh, gw) }
end

-- feats (N, C) patch features, N = gh * gw → R.split of the second-smallest
-- eigenvector of the normalized cut of their graph.
function R.ncut(feats, gh, gw, params)
  local tau, eps = params.tau, params.eps
  local f = nn.normalize(feats)
  local A = f:matmul(f, false, true)
  if params.no_binary_graph then
    local weak = A:lt(tau)                         -- A[A < tau] = eps
    A = A * (1 - weak) + weak * eps
  else
    A = A:gt(tau):maximum(eps)                     -- 1 on edges, eps elsewhere
  end
  -- scipy's eigh(D - A, D, subset_by_index=[1, 2]), first column (float64)
  local _, v = cluster.laplacian_eigs(A, { first = 1, count = 1 })
  return R.split(v:select(1, 1):contiguous(), gh, gw)
end

function R.setup(params, models)
  patches.check_which_features("tokencut", params.which_features)
  patches.check_positions("tokencut", params.positions)
  return { params = params, model = models.dino }
end

function R.segment(state, img)
  local p, model = state.params, state.model
  local x, frame = patches.input(img, model.patch_size, { fit = "pad", resize = p.resize or nil })
  local feats = patches.features(model, x, p.which_features, { positions = p.positions })
  local cut = R.ncut(feats, frame.gh, frame.gw, p)
  return patches.object_result(cut.mask, cut.seed, frame,
                               { eigenvector = cut.eigenvector, bipartition = cut.bipartition:float(),
                                 mask = cut.mask, seed = T.from_table({ cut.seed }, "int32") })
end

return R
