-- fmseg.method.patches — the patch grid of a DINO / DINOv2 ViT as the object
-- discovery and clustering recipes use it (TokenCut, LOST, Deep Spectral
-- Methods, k-means): the network input, per-patch features of a layer,
-- the connected component holding a seed patch, its box, and label maps
-- brought back from the grid to image pixels.
--
--   local patches = require("fmseg.method.patches")
--   local x, frame = patches.input(img, model.patch_size, { fit = "pad" })
--   local feats = patches.features(model, x, "k")          -- (gh*gw, C)
--   local mask = patches.component(grid_mask, seed)         -- (gh, gw) uint8
--   local box = patches.box(mask, frame)                    -- {x0, y0, x1, y1}
--   local labels = patches.to_image(grid_labels, frame)     -- (H, W) int32
--
-- A frame records the geometry: h, w (the image), rh, rw (the network
-- input before padding or cropping: the image, or its resized copy),
-- gh, gw (the patch grid) and patch (pixels per patch side). Seeds and
-- patch indices are 0-based, in row-major grid order.
local image = require("fmseg.image")
local masks = require("fmseg.masks")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local M = {}

-- DINO's and DINOv2's pixel normalisation (torchvision ImageNet values)
M.MEAN = { 0.485, 0.456, 0.406 }
M.STD = { 0.229, 0.224, 0.225 }

-- torchvision's Resize(size) with an int: the shorter side to `size`, the
-- longer to int(size * long / short)
local function resized_hw(h, w, short)
  if h <= w then return short, math.floor(short * w / h) end
  return math.floor(short * h / w), short
end

-- input(img (H, W, 3) uint8, patch, opts) → pixel_values (1, 3, gh*p, gw*p), frame.
-- ToTensor, optional Resize, Normalize, then the size made a multiple of
-- the patch size: opts.fit = "pad" (zeros after normalisation at the bottom
-- and right, as LOST and TokenCut pad) or "crop" (the top-left
-- multiple, as deep-spectral-segmentation crops). opts.resize: shorter
-- side in pixels (TokenCut's --resize; bilinear without antialias, as
-- torchvision resized tensors), nil to keep the image's size.
function M.input(img, patch, opts)
  opts = opts or {}
  local fit = opts.fit or "pad"
  if fit ~= "pad" and fit ~= "crop" then error(("fit must be \"pad\" or \"crop\", got %s"):format(tostring(fit)), 2) end
  local h, w = img:size(1), img:size(2)
  local x = image.to_chw(img) / 255
  local rh, rw = h, w
  if opts.resize then
    rh, rw = resized_hw(h, w, opts.resize)
    x = nn.interpolate(x, rh, rw, { mode = "bilinear" })
  end
  local mean = T.from_table(M.MEAN):reshape(1, 3, 1, 1)
  local std = T.from_table(M.STD):reshape(1, 3, 1, 1)
  x = (x - mean) / std
  local gh, gw
  if fit == "pad" then
    gh, gw = math.ceil(rh / patch), math.ceil(rw / patch)
    local padded = T.zeros({ 1, 3, gh * patch, gw * patch })
    padded:narrow(3, 1, rh):narrow(4, 1, rw):copy(x)
    x = padded
  else
    gh, gw = math.floor(rh / patch), math.floor(rw / patch)
    if gh < 1 or gw < 1 then
      error(("image %dx%d is smaller than one %dx%d patch"):format(rh, rw, patch, patch), 2)
    end
    x = x:narrow(3, 1, gh * patch):narrow(4, 1, gw * patch):contiguous()
  end
  return x, { h = h, w = w, rh = rh, rw = rw, gh = gh, gw = gw, patch = patch }
end

local QKV = { k = "k", q = "q", v = "v", keys = "k", queries = "q", values = "v" }

-- features(model, pixel_values, which, opts) → (gh*gw, C) contiguous rows,
-- one per patch, CLS and register tokens dropped. which: "k", "q", "v"
-- (that block's attention keys / queries / values, heads concatenated as
-- TokenCut and LOST reshape them; "keys" etc. are synonyms) or "tokens"
-- (the block's output). opts.layer: 1-based block, negative from the end
-- (default -1, the last); opts.norm: pass tokens through the final
-- layernorm (as DINO's get_intermediate_layers does); opts.positions:
-- "hub" resamples position embeddings as the torch.hub DINO / DINOv2 code
-- does (what the official TokenCut, LOST and Deep Spectral code loads;
-- model:hub_positions()), "transformers" (default) as ViTModel's
-- interpolate_pos_encoding.
M.POSITIONS = { hub = true, transformers = true }

function M.features(model, x, which, opts)
  opts = opts or {}
  local n = #model.layers
  local layer = opts.layer or -1
  if layer < 0 then layer = n + 1 + layer end
  if layer < 1 or layer > n or layer % 1 ~= 0 then
    error(("layer %s: the model has %d blocks"):format(tostring(opts.layer), n), 2)
  end
  local part = QKV[which]
  if not part and which ~= "tokens" then
    error(("features must be one of k, q, v, tokens, got %s"):format(tostring(which)), 2)
  end
  local positions = opts.positions or "transformers"
  if not M.POSITIONS[positions] then
    error(("positions must be \"hub\" or \"transformers\", got %s"):format(tostring(positions)), 2)
  end
  local enc = positions == "hub" and model:hub_positions() or {}
  enc.layers, enc.qkv = layer, part ~= nil
  local out = model:encode_image(x, enc)
  local t = part and out.qkv[part] or out.last
  if not part and opts.norm then t = model:head(t) end
  local prefix = model.num_prefix_tokens
  local count = t:size(2) - prefix
  return t:select(1, 1):narrow(1, prefix + 1, count):contiguous()
end

-- Grids ------------------------------------------------------------------------------

-- grid (gh, gw) uint8 and a 0-based seed index → (gh, gw) uint8 mask of the
-- 4-connected component of the set patches that holds the seed
-- (scipy.ndimage.label's default structure), or nil when the seed is unset.
function M.component(grid, seed)
  local labels = masks.connected_components(grid, 4)
  local gw = grid:size(2)
  local id = labels:get(math.floor(seed / gw) + 1, seed % gw + 1)
  if id == 0 then return nil end
  return labels:float():eq(id):byte()
end

-- The box of a grid mask in image pixels {x0, y0, x1, y1}, pixel edges
-- (x1 exclusive): patch extents times the patch size, clipped to the
-- network input before padding (LOST's and TokenCut's detect_box), then
-- scaled back to the image when it was resized. nil for an empty mask.
function M.box(grid, frame)
  local b = masks.masks_to_boxes(grid):values()   -- inclusive patch indices
  if b[1] == 0 and b[2] == 0 and b[3] == 0 and b[4] == 0 and grid:get(1, 1) == 0 then return nil end
  local p = frame.patch
  local x0, y0 = b[1] * p, b[2] * p
  local x1, y1 = math.min((b[3] + 1) * p, frame.rw), math.min((b[4] + 1) * p, frame.rh)
  local sx, sy = frame.w / frame.rw, frame.h / frame.rh
  return { x0 * sx, y0 * sy, x1 * sx, y1 * sy }
end

-- t (1, C, H, W): dim 3 or 4 cut or extended (by repeating its last row or
-- column) to n
local function fit_dim(t, d, n)
  local size = t:size(d)
  if size >= n then return t:narrow(d, 1, n) end
  local parts, last = { t }, t:narrow(d, size, 1)
  for i = 1, n - size do parts[i + 1] = last end
  return T.cat(parts, d)
end

-- (1, C, gh, gw) on the grid → (1, C, h, w) on the image, `mode` nearest
-- or bilinear: each patch covers p x p pixels of the network input, which
-- is fitted to the (resized) image and resized to the image.
local function grid_to_image(x, frame, mode)
  local p = frame.patch
  local y = nn.interpolate(x, frame.gh * p, frame.gw * p, { mode = mode })
  y = fit_dim(fit_dim(y, 3, frame.rh), 4, frame.rw)
  if frame.rh ~= frame.h or frame.rw ~= frame.w then
    y = nn.interpolate(y:contiguous(), frame.h, frame.w, { mode = mode })
  end
  return y:contiguous()
end

-- to_image(grid (gh, gw) integer labels, frame, mode) → (H, W) int32.
-- mode "nearest" (default): every pixel takes its patch's label.
-- "bilinear": the one-hot maps upsampled bilinearly (align_corners false)
-- and the largest taken per pixel, which rounds the patch staircase.
-- Labels must be >= 0.
function M.to_image(grid, frame, mode)
  mode = mode or "nearest"
  local g = grid:float():reshape(1, 1, frame.gh, frame.gw)
  if mode == "nearest" then
    return grid_to_image(g, frame, "nearest"):reshape(frame.h, frame.w):int()
  elseif mode ~= "bilinear" then
    error(("upsample must be \"nearest\" or \"bilinear\", got %s"):format(tostring(mode)), 2)
  end
  local k = math.floor(grid:float():max()) + 1
  local onehot = T.new({ k, frame.gh * frame.gw })
  local lab, dst, n = grid:int():contiguous():ptr(), onehot:ptr(), frame.gh * frame.gw
  for i = 0, n - 1 do dst[lab[i] * n + i] = 1 end
  local up = grid_to_image(onehot:reshape(1, k, frame.gh, frame.gw), frame, "bilinear")
  return masks.argmax_channels(up:select(1, 1))
end

-- A grid mask (gh, gw) → (H, W) uint8 mask on the image (nearest).
function M.mask_to_image(grid, frame)
  return M.to_image(grid, frame, "nearest"):byte()
end

-- Object discovery's feature choice (TokenCut, LOST): the last layer's
-- keys, queries or values.
function M.check_which_features(recipe, which)
  if which ~= "k" and which ~= "q" and which ~= "v" then
    error(("%s: which_features must be k, q or v, got %s"):format(recipe, tostring(which)), 0)
  end
end

-- The recipes' `positions` parameter: "hub" or "transformers".
function M.check_positions(recipe, positions)
  if not M.POSITIONS[positions] then
    error(("%s: positions must be hub or transformers, got %s"):format(recipe, tostring(positions)), 0)
  end
end

-- One discovered object: its patch mask (gh, gw) and 0-based seed patch →
-- the instances result (mask at image size, its box, a record, dump).
function M.object_result(grid_mask, seed, frame, dump)
  local box = M.box(grid_mask, frame)
  local mask = M.mask_to_image(grid_mask, frame)
  local seed_patch = { math.floor(seed / frame.gw), seed % frame.gw }
  return {
    kind = "instances", masks = { mask }, scores = { 1 }, boxes = { box },
    records = { { box = box, area = mask:float():sum(), seed_patch = seed_patch } },
    dump = dump,
  }
end

return M
