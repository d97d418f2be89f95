-- fmseg.nn — the C kernels as functions returning new tensors.
-- Shapes follow PyTorch: linear weights (out, in), conv (OC, C, KH, KW),
-- activations in (N, C, H, W). Inputs that are views are made contiguous.
local core = require("fmseg.core")
local T = require("fmseg.tensor")
local C, check = core.C, core.check

local nn = {}

local function dense(t)
  if t == nil then return nil end
  return t:is_contiguous() and t or t:contiguous()
end
nn.dense = dense

-- x: (..., K), w: (N, K), b: (N) → (..., N)
function nn.linear(x, w, b)
  local shape = x:shape()
  shape[#shape] = w:size(1)
  local out = T.empty(shape)
  check(C.fm_linear(out, dense(x), w, b))
  return out
end

function nn.layer_norm(x, w, b, eps)
  local out = T.empty(x:shape())
  check(C.fm_layer_norm(out, dense(x), w, b, eps or 1e-5))
  return out
end

function nn.group_norm(x, groups, w, b, eps)
  local out = T.empty(x:shape())
  check(C.fm_group_norm(out, dense(x), groups, w, b, eps or 1e-5))
  return out
end

-- (N, C, H, W) normalised over C at each pixel (SAM's LayerNorm2d)
function nn.layer_norm_channels(x, w, b, eps)
  local out = T.empty(x:shape())
  check(C.fm_layer_norm_channels(out, dense(x), w, b, eps or 1e-6))
  return out
end

function nn.softmax(x)
  local out = T.empty(x:shape())
  check(C.fm_softmax(out, dense(x)))
  return out
end

-- Hugging Face `hidden_act` names.
local ACTIVATIONS = {
  gelu = "gelu", quick_gelu = "quick_gelu", relu = "relu", silu = "silu", swish = "silu",
  gelu_new = "gelu_tanh", gelu_pytorch_tanh = "gelu_tanh", gelu_fast = "gelu_tanh",
  tanh = "tanh", sigmoid = "sigmoid",
}

function nn.activation(x, name)
  local op = ACTIVATIONS[name]
  if not op then error("unsupported activation '" .. tostring(name) .. "'", 2) end
  return x[op](x)
end

function nn.has_activation(name) return ACTIVATIONS[name] ~= nil end

-- In place: x is overwritten and returned (saves a buffer the size of x).
function nn.activation_(x, name)
  local op = ACTIVATIONS[name]
  if not op then error("unsupported activation '" .. tostring(name) .. "'", 2) end
  return x[op .. "_"](x)
end

-- x: (N, C, H, W), w: (OC, C, KH, KW); opts.stride, opts.padding (number
-- or {h, w})
function nn.conv2d(x, w, b, opts)
  opts = opts or {}
  local s = opts.stride or 1
  local p = opts.padding or 0
  local sh, sw = type(s) == "table" and s[1] or s, type(s) == "table" and s[2] or s
  local ph, pw = type(p) == "table" and p[1] or p, type(p) == "table" and p[2] or p
  local n, _, h, wd = unpack(x:shape())
  local oc, _, kh, kw = unpack(w:shape())
  local oh = math.floor((h + 2 * ph - kh) / sh) + 1
  local ow = math.floor((wd + 2 * pw - kw) / sw) + 1
  local out = T.empty({ n, oc, oh, ow })
  check(C.fm_conv2d(out, dense(x), w, b, sh, sw, ph, pw))
  return out
end

-- kernel == stride: x (N, C, H, W), w (C, OC, K, K) → (N, OC, H*K, W*K)
function nn.conv_transpose2d(x, w, b, stride)
  local n, _, h, wd = unpack(x:shape())
  local k = w:size(3)
  local out = T.empty({ n, w:size(2), h * k, wd * k })
  check(C.fm_conv_transpose2d(out, dense(x), w, b, stride or k))
  return out
end

-- fm_attention reads views whose last dim is contiguous (slices of a fused
-- qkv) without a copy.
local function rows(t)
  return t.strides[t.ndim - 1] == 1 and t or t:contiguous()
end

-- q: (B, Tq, H*D), k: (B, Tk, H*D), v: (B, Tk, H*Dv) → (B, Tq, H*Dv)
-- opts: scale (default D^-1/2), mask (additive), causal, probs (true to
-- also return the (B, H, Tq, Tk) probabilities, or a (B, H, Tq, Tk) tensor
-- to write them into).
function nn.attention(q, k, v, heads, opts)
  opts = opts or {}
  local b, tq, c = unpack(q:shape())
  local tk, cv = k:size(2), v:size(3)
  local scale = opts.scale or 1 / math.sqrt(c / heads)
  local out = T.empty({ b, tq, cv })
  local probs = opts.probs
  if probs == true then probs = T.empty({ b, heads, tq, tk }) elseif not probs then probs = nil end
  check(C.fm_attention(out, rows(q), rows(k), rows(v), heads, scale, dense(opts.mask),
                       opts.causal and 1 or 0, probs))
  return out, probs
end

local MODES = { nearest = C.FM_NEAREST, bilinear = C.FM_BILINEAR, bicubic = C.FM_BICUBIC }

-- x: (N, C, H, W) → (N, C, oh, ow), torch.nn.functional.interpolate.
-- opts: mode ("bilinear"), align_corners (false), antialias (false),
-- scale ({sh, sw}: torch's scale_factor, whose output size is oh x ow)
function nn.interpolate(x, oh, ow, opts)
  opts = opts or {}
  local mode = MODES[opts.mode or "bilinear"]
  if not mode then error("interpolate: unknown mode '" .. tostring(opts.mode) .. "'", 2) end
  local shape = x:shape()
  local out = T.empty({ shape[1], shape[2], oh, ow })
  if opts.scale then
    -- torch's scale_factor: places source pixels by 1 / scale
    check(C.fm_interpolate_scale(out, dense(x), mode, opts.align_corners and 1 or 0, opts.scale[1], opts.scale[2]))
  else
    check(C.fm_interpolate(out, dense(x), mode, opts.align_corners and 1 or 0, opts.antialias and 1 or 0))
  end
  return out
end

-- x: (..., D) → x / max(‖x‖, eps) along the last dim
function nn.normalize(x, eps)
  local norm = x:norm(-1, true):maximum(eps or 1e-12)
  return x / norm
end

return nn
