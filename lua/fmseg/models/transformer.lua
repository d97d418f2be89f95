-- fmseg.models.transformer — what CLIP, DINO and DINOv2 share: the pre-LN
-- transformer block, the encoder loop that hands out every layer's
-- intermediates, patch and position embeddings, and parameter loading with
-- checked shapes.
--
-- A block is built from a table of checkpoint names per role, so each model
-- file states its own layout and the block code exists once:
--
--   local blk = transformer.block(w, "vision_model.encoder.layers.3.", {
--     ln1 = "layer_norm1", q = "self_attn.q_proj", k = "self_attn.k_proj",
--     v = "self_attn.v_proj", out = "self_attn.out_proj", ln2 = "layer_norm2",
--     fc1 = "mlp.fc1", fc2 = "mlp.fc2" }, spec)
--
-- Its pieces, each one call, are what recipes recompose (see clip.lua):
--   blk:ln1(x)            → (B, T, C)  layer norm before attention
--   blk:qkv(h)            → q, k, v    (B, T, C) each, heads not split
--   blk:attend(q, k, v, opts) → a (B, Tq, C)[, probs (B, H, Tq, Tk)]
--   blk:out_proj(a)       → (B, T, C)  output projection (× layer scale 1)
--   blk:ln2(x)            → (B, T, C)
--   blk:mlp(h)            → (B, T, C)  fc1 → act → fc2 (× layer scale 2)
--   blk:forward(x, opts)  → y[, probs, parts]   the reference layer
local ffi = require("ffi")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local M = {}

-- Parameters --------------------------------------------------------------------

-- param(w, name, shape): the tensor `name` of the weights `w`, which must
-- have `shape`; errors name the key and the expected shape.
function M.param(w, name, shape)
  if not w:has(name) then
    error(("%s: missing from the weights in %s (expected %s)"):format(
      name, tostring(w.dir), T.shape_string(shape)), 0)
  end
  return w:get(name, shape)
end
local param = M.param

local function linear_params(w, name, nout, nin, bias)
  return { weight = param(w, name .. ".weight", { nout, nin }),
           bias = bias and param(w, name .. ".bias", { nout }) or nil }
end
M.linear_params = linear_params

local function norm_params(w, name, c)
  return { weight = param(w, name .. ".weight", { c }), bias = param(w, name .. ".bias", { c }) }
end
M.norm_params = norm_params

-- The block -----------------------------------------------------------------------

local Block = {}
Block.__index = Block
M.Block = Block

-- block(w, prefix, names, spec): names maps roles (ln1 q k v out ln2 fc1 fc2,
-- optional ls1 ls2 for layer scale) to checkpoint module names under
-- `prefix`. spec: hidden, heads, intermediate, eps, act, qkv_bias,
-- layer_scale (bool), swiglu (bool; then fc1 is the fused SwiGLU input
-- projection of 2 x intermediate outputs).
function M.block(w, prefix, names, spec)
  local c, inter = spec.hidden, spec.intermediate
  if c % spec.heads ~= 0 then
    error(("%s: hidden size %d is not a multiple of %d heads"):format(prefix, c, spec.heads), 0)
  end
  if not spec.swiglu and not nn.has_activation(spec.act) then
    error(("%s: unsupported hidden_act '%s'"):format(prefix, tostring(spec.act)), 0)
  end
  local function p(role) return prefix .. names[role] end
  local self = setmetatable({
    heads = spec.heads, eps = spec.eps, act = spec.act, swiglu = spec.swiglu or false,
    hidden = c, intermediate = inter, prefix = prefix,
  }, Block)
  self.norm1 = norm_params(w, p("ln1"), c)
  self.query = linear_params(w, p("q"), c, c, spec.qkv_bias)
  self.key = linear_params(w, p("k"), c, c, spec.qkv_bias)
  self.value = linear_params(w, p("v"), c, c, spec.qkv_bias)
  self.dense = linear_params(w, p("out"), c, c, true)
  self.norm2 = norm_params(w, p("ln2"), c)
  self.fc1 = linear_params(w, p("fc1"), spec.swiglu and 2 * inter or inter, c, true)
  self.fc2 = linear_params(w, p("fc2"), c, inter, true)
  if spec.layer_scale then
    self.lambda1 = param(w, p("ls1") .. ".lambda1", { c })
    self.lambda2 = param(w, p("ls2") .. ".lambda1", { c })
  end
  return self
end

-- x: (B, T, C) → (B, T, C)
function Block:ln1(x) return nn.layer_norm(x, self.norm1.weight, self.norm1.bias, self.eps) end
function Block:ln2(x) return nn.layer_norm(x, self.norm2.weight, self.norm2.bias, self.eps) end

-- h: (B, T, C) → q, k, v: (B, T, C) each (projections before the head split)
function Block:qkv(h)
  local q = nn.linear(h, self.query.weight, self.query.bias)
  local k = nn.linear(h, self.key.weight, self.key.bias)
  local v = nn.linear(h, self.value.weight, self.value.bias)
  return q, k, v
end

-- Multi-head softmax(scale q kᵀ + mask) v with this block's head count.
-- opts: scale (head_dim^-1/2), mask (additive (Tq, Tk) or (B|1, H|1, Tq, Tk)),
-- causal, probs (true: also return (B, H, Tq, Tk) probabilities).
function Block:attend(q, k, v, opts)
  return nn.attention(q, k, v, self.heads, opts)
end

-- a: (B, T, C) → (B, T, C); DINOv2 scales by lambda1 here (layer_scale1)
function Block:out_proj(a)
  local o = nn.linear(a, self.dense.weight, self.dense.bias)
  if self.lambda1 then o:mul_(self.lambda1) end
  return o
end

-- h: (B, T, C) → (B, T, C); DINOv2 scales by lambda2 here (layer_scale2)
-- ref: transformers/models/dinov2/modeling_dinov2.py, Dinov2MLP, Dinov2SwiGLUFFN
function Block:mlp(h)
  local u = nn.linear(h, self.fc1.weight, self.fc1.bias)
  local g
  if self.swiglu then
    local n = self.intermediate
    g = u:narrow(-1, 1, n):silu():mul_(u:narrow(-1, n + 1, n))
  else
    g = nn.activation(u, self.act)
  end
  u:free()
  local o = nn.linear(g, self.fc2.weight, self.fc2.bias)
  g:free()
  if self.lambda2 then o:mul_(self.lambda2) end
  return o
end

-- The reference layer: x + out_proj(attend(qkv(ln1 x))), then + mlp(ln2 .).
-- opts: probs (return the attention probabilities), mask, causal, keep
-- (return parts = {ln1, q, k, v} instead of freeing them).
-- ref: transformers/models/clip/modeling_clip.py, CLIPEncoderLayer;
--      transformers/models/vit/modeling_vit.py, ViTLayer;
--      transformers/models/dinov2/modeling_dinov2.py, Dinov2Layer
function Block:forward(x, opts)
  opts = opts or {}
  local h = self:ln1(x)
  local q, k, v = self:qkv(h)
  local a, probs = self:attend(q, k, v, { mask = opts.mask, causal = opts.causal, probs = opts.probs })
  local parts
  if opts.keep then
    parts = { ln1 = h, q = q, k = k, v = v }
  else
    h:free(); q:free(); k:free(); v:free()
  end
  local r = self:out_proj(a)
  a:free()
  r:add_(x)                       -- first residual
  local n = self:ln2(r)
  local y = self:mlp(n)
  n:free()
  y:add_(r)                       -- second residual
  r:free()
  return y, probs, parts
end

-- The encoder loop ------------------------------------------------------------------

-- encode(blocks, x, opts) runs blocks over tokens x (B, T, C); x is not
-- modified. opts:
--   layers        run only the first n blocks (default all)
--   hidden_states keep every output: out.hidden_states[0] = x,
--                 out.hidden_states[i] = output of block i
--   attentions    keep probabilities: out.attentions[i] of block i
--   qkv           keep the last run block's parts: out.qkv = {ln1, q, k, v}
--   override      { [i] = function(block, x, info) return y[, probs] end }
--                 replaces block i's forward (info: index, mask, causal)
--   mask, causal  passed to every block's attention
-- out.last is the last run block's output. `own` = true lets encode free x
-- once the first block has used it (the caller made x for this call).
-- ref: transformers/models/clip/modeling_clip.py, CLIPEncoder
function M.encode(blocks, x, opts, own)
  opts = opts or {}
  local n = opts.layers or #blocks
  if n < 0 or n > #blocks or n % 1 ~= 0 then
    error(("layers = %s: the model has %d blocks"):format(tostring(n), #blocks), 2)
  end
  local out = { hidden_states = opts.hidden_states and { [0] = x } or nil,
                attentions = opts.attentions and {} or nil }
  local owned = own or false       -- is x ours to free?
  for i = 1, n do
    local blk, y, probs, parts = blocks[i]
    local hook = opts.override and opts.override[i]
    if hook then
      y, probs = hook(blk, x, { index = i, mask = opts.mask, causal = opts.causal })
    else
      y, probs, parts = blk:forward(x, { mask = opts.mask, causal = opts.causal,
                                         probs = opts.attentions, keep = opts.qkv and i == n })
    end
    if out.hidden_states then out.hidden_states[i] = y end
    if out.attentions then out.attentions[i] = probs end
    if parts then out.qkv = parts end
    -- a hook may return x itself or a view of it: never free around hooks
    if owned and not hook and not out.hidden_states then x:free() end
    x, owned = y, not hook
  end
  out.last = x
  return out
end

-- Embeddings ------------------------------------------------------------------------

-- weight: (V, C), ids: (B, L) int32 → (B, L, C), one row copy per token.
-- ref: torch.nn.Embedding
function M.embedding(weight, ids)
  local v, c = weight:size(1), weight:size(2)
  local b, l = ids:size(1), ids:size(2)
  local w = weight:contiguous()
  ids = ids:dtype() == "int32" and ids:contiguous() or ids:int()
  local out = T.new({ b, l, c })
  local src, dst, idp = w:ptr(), out:ptr(), ids:ptr()
  local row = c * ffi.sizeof("float")
  for i = 0, b * l - 1 do
    local id = idp[i]
    if id < 0 or id >= v then
      error(("token id %d at position %d of sequence %d is outside the vocabulary of %d"):format(
        id, i % l + 1, math.floor(i / l) + 1, v), 0)
    end
    ffi.copy(dst + i * c, src + id * c, row)
  end
  return out
end

-- pixel_values (B, 3, H, W), conv weight (C, 3, P, P) → (B, N, C) patch
-- tokens in row-major grid order, and the grid (gh, gw).
function M.patchify(pixel_values, weight, bias)
  local p = weight:size(3)
  local f = nn.conv2d(pixel_values, weight, bias, { stride = p })
  local b, c, gh, gw = unpack(f:shape())
  return f:reshape(b, c, gh * gw):transpose(2, 3), gh, gw
end

-- pos: (1 + g*g, C) learned on a g x g grid → (1 + gh*gw, C) for a gh x gw
-- grid, bicubic (align_corners = false) on the patch part, the first
-- (class) position unchanged. Unchanged when the grid is the trained one.
-- opts.antialias: PyTorch's antialiased bicubic (DINOv2 with registers).
-- opts.offset: the resampling of the SCLIP code base (SCLIP, ClearCLIP,
-- NACLIP, ProxyCLIP): scale_factor (gh + offset) / g instead of a target
-- size, and no resampling at all when the token count already matches;
-- with opts.square_only as well (the torch.hub DINO / DINOv2 code), only
-- the trained square grid is left as it is.
-- ref: transformers/models/vit/modeling_vit.py, ViTEmbeddings.interpolate_pos_encoding;
--      wangf3014/SCLIP clip/model.py, VisionTransformer.interpolate_pos_encoding
function M.interpolate_positions(pos, gh, gw, opts)
  opts = opts or {}
  local n, c = pos:size(1) - 1, pos:size(2)
  local g = math.floor(math.sqrt(n) + 0.5)
  if g * g ~= n then
    error(("position embeddings: %d patch positions do not form a square grid"):format(n), 0)
  end
  if gh == g and gw == g then return pos end
  if opts.offset and not opts.square_only and gh * gw == n then return pos end
  local grid = pos:narrow(1, 2, n):reshape(1, g, g, c):permute(1, 4, 2, 3):contiguous()
  local scale = opts.offset and { (gh + opts.offset) / g, (gw + opts.offset) / g } or nil
  local up = nn.interpolate(grid, gh, gw, { mode = "bicubic", align_corners = false,
                                            antialias = opts.antialias, scale = scale })
  local patch = up:permute(1, 3, 4, 2):reshape(gh * gw, c)
  return T.cat({ pos:narrow(1, 1, 1), patch }, 1)
end

-- first: (C) or (1, 1, C) token, patches: (B, N, C) → (B, 1 + N, C)
function M.prepend(first, patches)
  local b, c = patches:size(1), patches:size(3)
  local row = first:reshape(1, 1, c)
  local parts = {}
  for i = 1, b do parts[i] = row end
  return T.cat({ T.cat(parts, 1), patches }, 2)
end

-- Windows ------------------------------------------------------------------------

-- (B, H, W, C) → windows (B*nh*nw, ws, ws, C), zero-padded at the bottom
-- and right to multiples of ws; returns the padded height and width too.
-- ref: transformers' SamVisionLayer.window_partition; sam2/modeling/
--      backbones/utils.py, window_partition (SAM 2's Hiera)
function M.window_partition(x, ws)
  local b, h, w, c = unpack(x:shape())
  local hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
  if hp ~= h or wp ~= w then
    local padded = T.zeros({ b, hp, wp, c })
    padded:narrow(2, 1, h):narrow(3, 1, w):copy(x)
    x = padded
  end
  local windows = x:reshape(b, hp / ws, ws, wp / ws, ws, c):permute(1, 2, 4, 3, 5, 6):contiguous()
  return windows:reshape(b * (hp / ws) * (wp / ws), ws, ws, c), hp, wp
end

-- windows (B*nh*nw, ws, ws, C) → (B, h, w, C), the padding dropped.
-- ref: SamVisionLayer.window_unpartition; sam2's window_unpartition
function M.window_unpartition(windows, ws, hp, wp, h, w)
  local c = windows:size(4)
  local b = windows:size(1) / ((hp / ws) * (wp / ws))
  local x = windows:reshape(b, hp / ws, wp / ws, ws, ws, c):permute(1, 2, 4, 3, 5, 6):contiguous()
  x = x:reshape(b, hp, wp, c)
  if hp == h and wp == w then return x end
  return x:narrow(2, 1, h):narrow(3, 1, w):contiguous()
end

return M
