-- LOST (Siméoni et al., BMVC 2021): single-object discovery from the
-- patch-similarity graph of DINO keys.
-- ref: valeoai/LOST, object_discovery.py (lost, patch_scoring, detect_box)
--      and main_lost.py (last-block keys without CLS, zero padding)
--
-- A = F Fᵀ on the raw keys. A patch's degree counts its positive
-- correlations with the other patches; the seed is the patch of lowest
-- degree (objects cover less of the image than background). Among the
-- k_patches lowest-degree patches, those positively correlated with the
-- seed are kept; the map is the sum of their rows of A; the object is
-- the 4-connected component of map > 0 that holds the seed. Result: one
-- instance mask and its box (result.boxes, image pixels, pixel edges).
--
-- Patches of equal degree come in the order torch.argsort(-degree,
-- descending=True) leaves them on the CPU: it is not stable above 16
-- elements (libstdc++'s std::sort, an introsort, which R.argsort_desc
-- replays comparison for comparison), so which tied patch is the seed and
-- which ties fall inside the k_patches is that order's. Position
-- embeddings are resampled as DINO's torch.hub code does (positions
-- "hub"), as the official code runs; transformers' resampling picks
-- another seed on tests/fixtures/methods/lost-keys.
--
-- The feature → mask step is R.lost(feats, gh, gw, params), a pure
-- function of a (gh*gw, C) matrix.
local T = require("fmseg.tensor")
local patches = require("fmseg.method.patches")

local R = {
  name = "lost",
  needs = { "dino" },
  -- main_lost.py's arguments and defaults
  defaults = {
    which_features = "k",   -- k, q or v of the last block
    k_patches = 100,        -- lowest-degree patches considered for expansion
    resize = false,         -- shorter side in pixels, false: full size
    positions = "hub",      -- position resampling: "hub" (DINO's torch.hub code, as
                            -- the official code runs) or "transformers" (ViTModel)
  },
}

-- keys (a Lua array, 0-based, of numbers) → the 0-based order of
-- torch.argsort(keys, descending=True) on the CPU: libstdc++'s std::sort
-- of (key, index) pairs with comp(a, b) = a.key > b.key (introsort: median
-- of three to the front, unguarded partition, heapsort past depth
-- 2 log2 n, insertion sort of runs of 16). Equal keys end up in the order
-- that algorithm leaves them, as in torch 1.13 (ATen sort_kernel,
-- stable = false).
function R.argsort_desc(keys, n)
  local key, idx = {}, {}
  for i = 0, n - 1 do key[i], idx[i] = keys[i], i end
  local function swap(i, j) key[i], key[j] = key[j], key[i]; idx[i], idx[j] = idx[j], idx[i] end
  local function median_to_first(r, a, b, c)
    if key[a] > key[b] then
      if key[b] > key[c] then swap(r, b) elseif key[a] > key[c] then swap(r, c) else swap(r, a) end
    elseif key[a] > key[c] then swap(r, a)
    elseif key[b] > key[c] then swap(r, c)
    else swap(r, b) end
  end
  local function partition(first, last, pivot)
    while true do
      while key[first] > key[pivot] do first = first + 1 end
      last = last - 1
      while key[pivot] > key[last] do last = last - 1 end
      if first >= last then return first end
      swap(first, last)
      first = first + 1
    end
  end
  local function adjust_heap(first, hole, len, vk, vi)   -- std::__adjust_heap + __push_heap
    local top, second = hole, hole
    while second < math.floor((len - 1) / 2) do
      second = 2 * (second + 1)
      if key[first + second] > key[first + second - 1] then second = second - 1 end
      key[first + hole], idx[first + hole] = key[first + second], idx[first + second]
      hole = second
    end
    if len % 2 == 0 and second == math.floor((len - 2) / 2) then
      second = 2 * (second + 1)
      key[first + hole], idx[first + hole] = key[first + second - 1], idx[first + second - 1]
      hole = second - 1
    end
    local parent = math.floor((hole - 1) / 2)
    while hole > top and key[first + parent] > vk do
      key[first + hole], idx[first + hole] = key[first + parent], idx[first + parent]
      hole = parent
      parent = math.floor((hole - 1) / 2)
    end
    key[first + hole], idx[first + hole] = vk, vi
  end
  local function heap_sort(first, last)                  -- std::__partial_sort(first, last, last)
    local len = last - first
    if len >= 2 then
      local parent = math.floor((len - 2) / 2)
      while true do
        adjust_heap(first, parent, len, key[first + parent], idx[first + parent])
        if parent == 0 then break end
        parent = parent - 1
      end
    end
    while last - first > 1 do
      last = last - 1
      local vk, vi = key[last], idx[last]
      key[last], idx[last] = key[first], idx[first]
      adjust_heap(first, 0, last - first, vk, vi)
    end
  end
  local function introsort(first, last, depth)
    while last - first > 16 do
      if depth == 0 then heap_sort(first, last) return end
      depth = depth - 1
      median_to_first(first, first + 1, first + math.floor((last - first) / 2), last - 1)
      local cut = partition(first + 1, last, first)
      introsort(cut, last, depth)
      last = cut
    end
  end
  local function linear_insert(i)
    local vk, vi, j = key[i], idx[i], i - 1
    while vk > key[j] do
      key[j + 1], idx[j + 1] = key[j], idx[j]
      j = j - 1
    end
    key[j + 1], idx[j + 1] = vk, vi
  end
  local function insertion_sort(first, last)
    for i = first + 1, last - 1 do
      if key[i] > key[first] then
        local vk, vi = key[i], idx[i]
        for j = i, first + 1, -1 do key[j], idx[j] = key[j - 1], idx[j - 1] end
        key[first], idx[first] = vk, vi
      else
        linear_insert(i)
      end
    end
  end
  if n > 1 then
    local lg = 0
    while 2 ^ (lg + 1) <= n do lg = lg + 1 end
    introsort(0, n, 2 * lg)
    if n > 16 then
      insertion_sort(0, 16)
      for i = 16, n - 1 do linear_insert(i) end
    else
      insertion_sort(0, n)
    end
  end
  local order = {}
  for i = 0, n - 1 do order[i + 1] = idx[i] end
  return order
end

-- feats (N, C), N = gh * gw → { mask (gh, gw) uint8, seed (0-based),
-- map (gh, gw) (the summed correlations), degree (gh, gw), similars (0-based
-- patch indices kept by the expansion) }
function R.lost(feats, gh, gw, params)
  local A = feats:matmul(feats, false, true)
  local n = A:size(1)
  -- patch_scoring: positive entries per row, the diagonal left out
  local positive = A:gt(0)
  local degree = positive:sum(2)
  local dp, pp = degree:ptr(), positive:ptr()
  for i = 0, n - 1 do dp[i] = dp[i] - pp[i * n + i] end
  -- sel = torch.argsort(-degree, descending=True)
  local cent = {}
  for i = 0, n - 1 do cent[i] = -dp[i] end
  local order = R.argsort_desc(cent, n)
  local seed = order[1]
  -- seed expansion: potentials positively correlated with the seed
  local ap = A:ptr()
  local pick = T.new({ 1, n })
  local similars = {}
  for i = 1, math.min(params.k_patches, n) do
    local j = order[i]
    if ap[seed * n + j] > 0 then
      similars[#similars + 1] = j
      pick:ptr()[j] = 1
    end
  end
  local map = pick:matmul(A):reshape(gh, gw)
  local mask = patches.component(map:gt(0):byte(), seed)
  if not mask then error("lost: the seed is in the background component", 0) end
  return { mask = mask, seed = seed, map = map, degree = degree:reshape(gh, gw), similars = similars }
end

function R.setup(params, models)
  patches.check_which_features("lost", params.which_features)
  patches.check_positions("lost", params.positions)
  if type(params.k_patches) ~= "number" or params.k_patches < 1 then
    error(("lost: k_patches must be a positive integer, got %s"):format(tostring(params.k_patches)), 0)
  end
  return { params = params, model = models.dino }
end

function R.segment(state, img)
  local p, model = state.params, state.model
  local x, frame = patches.input(img, model.patch_size, { fit = "pad", resize = p.resize or nil })
  local feats = patches.features(model, x, p.which_features, { positions = p.positions })
  local found = R.lost(feats, frame.gh, frame.gw, p)
  return patches.object_result(found.mask, found.seed, frame, { map = found.map, degree = found.degree,
                               mask = found.mask, seed = T.from_table({ found.seed }, "int32") })
end

return R
