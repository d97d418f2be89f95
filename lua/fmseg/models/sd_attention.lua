-- fmseg.models.sd_attention — capturing the UNet's attention maps and
-- turning them into the per-pixel maps that cross-attention segmentation
-- (DiffSegmenter, OVAM) and DiffSeg work from.
--
--   local A = require("fmseg.models.sd_attention")
--   local cap = A.capture({ kinds = { "attn1", "attn2" } })    -- every layer
--   local eps = unet:forward(latents, t, text, { capture = cap })
--   for _, name in ipairs(cap.names) do print(name, cap.maps[name]) end
--   local cross = A.aggregate(cap, { kind = "attn2", size = { 64, 64 } })
--   -- cross: (N, tokens, 64, 64), heads and layers averaged
--
-- A map is what softmax(q kᵀ / sqrt(d)) gives for one attention layer,
-- stored as diffusers' attention processors see it: [N*heads, queries,
-- keys], batch-major (row b*heads + h). Queries are the layer's latent
-- pixels in row-major order (height x width of that resolution); keys are
-- the same pixels (attn1, self-attention) or the text tokens (attn2).
-- Names are module paths: "up_blocks.1.attentions.0.transformer_blocks.0.attn2".
--
-- Capturing only asks the attention kernel to write its probabilities to a
-- kept buffer instead of a scratch one: the UNet output is bit-identical
-- with and without a capture. Self-attention maps are large (SD 1.5 at
-- 64x64: 4096² floats per head, 512 MB per layer for 8 heads); select
-- layers, or let the capture average heads as it records (mean_heads).
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local B = require("fmseg.models.sd_blocks")

local M = {}
local Capture = {}
Capture.__index = Capture

-- opts:
--   kinds       list of "attn1" / "attn2" (default both)
--   layers      list of exact module paths to keep (default: all)
--   match       Lua pattern a module path must match (default: all)
--   mean_heads  average heads as maps arrive: maps are [N, queries, keys]
--   queries     also keep each layer's queries (to_q output, (N, Tq, heads*d))
--               in cap.queries[name], for scoring other text later (OVAM)
function M.capture(opts)
  opts = opts or {}
  local self = setmetatable({ names = {}, maps = {}, info = {}, queries = {}, scratch = {}, opts = opts }, Capture)
  self.kinds = {}
  for _, k in ipairs(opts.kinds or { "attn1", "attn2" }) do
    if k ~= "attn1" and k ~= "attn2" then error("capture: kinds are 'attn1' and 'attn2', got " .. tostring(k), 2) end
    self.kinds[k] = true
  end
  if opts.layers then
    self.layers = {}
    for _, name in ipairs(opts.layers) do self.layers[name] = true end
  end
  return self
end

-- Would this layer be kept? (asked before the attention runs)
function Capture:wants(name, kind)
  if not self.kinds[kind] then return false end
  if self.layers and not self.layers[name] then return false end
  if self.opts.match and not name:find(self.opts.match) then return false end
  return true
end

-- The (N, heads, queries, keys) buffer the attention kernel writes this
-- layer's probabilities into. Kept maps get a buffer of their own; with
-- mean_heads one scratch buffer per shape serves every layer of that shape
-- (a fresh 512 MB buffer costs more in page faults than the attention).
function Capture:buffer(shape)
  if not self.opts.mean_heads then return T.new(shape) end
  local key = table.concat(shape, "x")
  local buf = self.scratch[key]
  if not buf then
    buf = T.new(shape)
    self.scratch[key] = buf
  end
  return buf
end

-- (N, heads, Tq, Tk) → (N, Tq, Tk): head 1 + head 2 + ... then / heads,
-- contiguous adds rather than a strided reduction.
local function head_mean(probs)
  local heads = probs:size(2)
  local first = probs:select(2, 1)
  local acc = first:clone()
  first:free()
  for h = 2, heads do
    local head = probs:select(2, h)
    acc:add_(head)
    head:free()
  end
  return acc:div_(heads)
end

-- probs: the buffer from :buffer, filled; info: kind, height, width;
-- q: the layer's queries (N, Tq, heads*d), kept in cap.queries[name] when
-- the capture was made with queries = true, else released.
function Capture:record(name, probs, info, q)
  if q then
    if self.queries[name] then self.queries[name]:free() end
    if self.opts.queries then self.queries[name] = q else q:free() end
  end
  local n, heads, tq, tk = unpack(probs:shape())
  local map
  if self.opts.mean_heads then
    map = head_mean(probs)
  else
    map = probs:reshape({ n * heads, tq, tk })
    probs:free()  -- the buffer was made for this map alone
  end
  -- a second forward with the same capture replaces the first one's maps
  if self.maps[name] then self.maps[name]:free() else self.names[#self.names + 1] = name end
  self.maps[name] = map
  self.info[name] = { kind = info.kind, heads = heads, batch = n, height = info.height, width = info.width,
                      mean_heads = self.opts.mean_heads or false }
end

-- Releases every map now (they can be hundreds of MB).
function Capture:clear()
  for _, name in ipairs(self.names) do self.maps[name]:free() end
  for _, buf in pairs(self.scratch) do buf:free() end
  for _, q in pairs(self.queries) do q:free() end
  self.names, self.maps, self.info, self.queries, self.scratch = {}, {}, {}, {}, {}
end

-- Helpers ------------------------------------------------------------------------

-- [N*heads, Tq, Tk] → [N, Tq, Tk], the mean over heads
function M.mean_heads(map, heads)
  local bh, tq, tk = unpack(map:shape())
  if bh % heads ~= 0 then error(("mean_heads: %d rows are not a multiple of %d heads"):format(bh, heads), 2) end
  local split = map:reshape({ bh / heads, heads, tq, tk })
  local out = head_mean(split)
  split:free()
  return out
end

-- The named map with heads averaged: [N, Tq, Tk] (a new tensor)
function Capture:head_mean(name)
  local map, info = self.maps[name], self.info[name]
  if not map then error("capture: no map named " .. tostring(name), 2) end
  if info.mean_heads then return map:clone() end
  return M.mean_heads(map, info.heads)
end

-- The captured maps of one kind ("attn1" self, "attn2" cross) grouped by
-- resolution, finest first: each { height, width, layers, names, map =
-- (queries, keys) } of batch row `row`, heads averaged, then Σ map / layers
-- over the layers in the order they ran (DiffSeg's diffusion_model.py adds
-- temp / 5 into 0.0; DiffSegmenter's aggregate_all_attention takes the mean
-- over layers x heads, and SD's layers of one resolution share a head count).
function Capture:resolution_means(kind, row)
  local groups, by_size = {}, {}
  for _, name in ipairs(self.names) do
    local info = self.info[name]
    if info.kind == kind then
      local key = info.height .. "x" .. info.width
      local g = by_size[key]
      if not g then
        g = { height = info.height, width = info.width, layers = 0, names = {} }
        by_size[key] = g
        groups[#groups + 1] = g
      end
      g.layers = g.layers + 1
      g.names[#g.names + 1] = name
    end
  end
  if #groups == 0 then error("diffusion attention: no " .. kind .. " maps were captured", 2) end
  for _, g in ipairs(groups) do
    for _, name in ipairs(g.names) do
      local mean = self:head_mean(name)                      -- (N, q, k)
      local one = mean:select(1, row or 1):contiguous()      -- (q, k)
      mean:free()
      one:div_(g.layers)
      if g.map then
        g.map:add_(one)
        one:free()
      else
        g.map = one
      end
    end
    g.names = nil
  end
  table.sort(groups, function(a, b) return a.height * a.width > b.height * b.width end)
  return groups
end

-- Cross-attention map [N, h*w, K] of an h x w layer → [N, K, oh, ow]: one
-- image per key (text token), resized (bilinear unless opts.mode says).
function M.cross_to_images(map, h, w, oh, ow, opts)
  opts = opts or {}
  local n, tq, k = unpack(map:shape())
  if tq ~= h * w then error(("cross_to_images: %d queries for a %dx%d layer"):format(tq, h, w), 2) end
  local dense = B.transposed(map, 2, 3)
  local img = dense:reshape({ n, k, h, w })
  dense:free()
  if oh == h and ow == w then return img end
  local out = nn.interpolate(img, oh, ow, { mode = opts.mode or "bilinear" })
  img:free()
  return out
end

-- Self-attention map [N, h*w, h*w] → [N, oh*ow, oh, ow]: for every query
-- pixel at the new resolution, an attention image over key pixels. Keys are
-- resized as images (bilinear by default); queries take the map of the
-- query pixel they fall in (nearest), as DiffSeg repeats them.
function M.self_to_images(map, h, w, oh, ow, opts)
  opts = opts or {}
  local n, tq, tk = unpack(map:shape())
  if tq ~= h * w or tk ~= h * w then
    error(("self_to_images: map [%d, %d, %d] does not fit a %dx%d layer"):format(n, tq, tk, h, w), 2)
  end
  -- keys: [N*Tq, 1, h, w] → [N*Tq, 1, oh, ow]
  local flat = map:reshape({ n * tq, 1, h, w })
  if oh == h and ow == w then
    local out = flat:reshape({ n, tq, oh, ow }):clone()
    flat:free()
    return out
  end
  local keys = nn.interpolate(flat, oh, ow, { mode = opts.mode or "bilinear" })
  flat:free()
  -- queries: (N, oh*ow keys, h, w queries) → nearest to (N, oh*ow, oh, ow)
  local by_query = keys:reshape({ n, h * w, oh * ow })
  keys:free()
  local by_key = B.transposed(by_query, 2, 3)
  by_query:free()
  local grid = by_key:reshape({ n, oh * ow, h, w })
  by_key:free()
  local up = nn.interpolate(grid, oh, ow, { mode = "nearest" })
  grid:free()
  -- back to (N, queries, keys) and each query's keys as an image
  local flat_up = up:reshape({ n, oh * ow, oh * ow })
  up:free()
  local dense = B.transposed(flat_up, 2, 3)
  flat_up:free()
  local out = dense:reshape({ n, oh * ow, oh, ow })
  dense:free()
  return out
end

-- Averages the captured maps of one kind over heads and layers at a common
-- resolution. opts:
--   kind      "attn1" or "attn2" (required)
--   size      {oh, ow} (default: the largest captured layer's size)
--   names     which captured layers (default: all of that kind)
--   weights   function(info, name) → weight, or a table height → weight
--             (e.g. DiffSegmenter's {[8]=0.3, [16]=0.5, [32]=0.1, [64]=0.1});
--             default 1 for each layer
--   mode      key resize mode (default "bilinear")
-- Returns the weighted mean: attn2 → [N, keys, oh, ow];
-- attn1 → [N, oh*ow, oh, ow] (each query's attention image).
function M.aggregate(cap, opts)
  local kind = opts.kind
  if kind ~= "attn1" and kind ~= "attn2" then error("aggregate: opts.kind must be 'attn1' or 'attn2'", 2) end
  local names = {}
  for _, name in ipairs(opts.names or cap.names) do
    if cap.info[name] and cap.info[name].kind == kind then names[#names + 1] = name end
  end
  if #names == 0 then error("aggregate: no captured " .. kind .. " maps", 2) end
  local oh, ow = 0, 0
  if opts.size then
    oh, ow = opts.size[1], opts.size[2]
  else
    for _, name in ipairs(names) do
      local info = cap.info[name]
      if info.height * info.width > oh * ow then oh, ow = info.height, info.width end
    end
  end
  local sum, total = nil, 0
  for _, name in ipairs(names) do
    local info = cap.info[name]
    local wt = 1
    if type(opts.weights) == "function" then wt = opts.weights(info, name)
    elseif type(opts.weights) == "table" then wt = opts.weights[info.height] or 0 end
    if wt ~= 0 then
      local mean = cap:head_mean(name)
      local img
      if kind == "attn2" then
        img = M.cross_to_images(mean, info.height, info.width, oh, ow, opts)
      else
        img = M.self_to_images(mean, info.height, info.width, oh, ow, opts)
      end
      mean:free()
      if wt ~= 1 then img:mul_(wt) end
      if sum then
        sum:add_(img)
        img:free()
      else
        sum = img
      end
      total = total + wt
    end
  end
  if not sum then error("aggregate: every selected layer has weight 0", 2) end
  return sum:div_(total)
end

return M
