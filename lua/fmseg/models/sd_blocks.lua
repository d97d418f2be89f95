-- fmseg.models.sd_blocks — the diffusers layers shared by the UNet and the
-- VAE: ResnetBlock2D, Downsample2D, Upsample2D and the VAE's single-head
-- spatial attention. Each `load_*` reads one module's weights under a
-- prefix (checkpoint names kept) into a plain table; each forward takes that
-- table and returns a new tensor, never touching its inputs.
--
-- Memory: activations of SD at 512x512 are up to 128 MB each (VAE, 128
-- channels at full resolution), so every intermediate made here is released
-- with :free() as soon as the next op has consumed it.
local ffi = require("ffi")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")

local M = {}

-- x rounded to float32: diffusers computes its schedules and timestep
-- embeddings with float32 tensors, and we follow them value by value.
local f32buf = ffi.new("float[1]")
function M.f32(x)
  f32buf[0] = x
  return tonumber(f32buf[0])
end

-- Weights --------------------------------------------------------------------

-- nn.Conv2d(ic, oc, k): {weight, bias}
function M.load_conv(w, name, ic, oc, k, bias)
  return { weight = w:get(name .. ".weight", { oc, ic, k, k }),
           bias = bias ~= false and w:get(name .. ".bias", { oc }) or nil }
end

-- nn.Linear(inn, out): {weight, bias}; bias: true, false or "maybe"
function M.load_linear(w, name, inn, out, bias)
  local b
  if bias == "maybe" then b = w:maybe(name .. ".bias", { out })
  elseif bias then b = w:get(name .. ".bias", { out }) end
  return { weight = w:get(name .. ".weight", { out, inn }), bias = b }
end

-- nn.GroupNorm / nn.LayerNorm with affine parameters
function M.load_norm(w, name, c)
  return { weight = w:get(name .. ".weight", { c }), bias = w:get(name .. ".bias", { c }) }
end

-- Ops --------------------------------------------------------------------------

-- ref: diffusers/models/activations.py, get_activation: the names a
-- diffusers config may give (act_fn, time_embedding_act_fn, ...).
local ACTIVATIONS = { silu = "silu", swish = "silu", gelu = "gelu", relu = "relu" }

function M.check_activation(name, key)
  if not ACTIVATIONS[name] then
    error(("config.json: %s '%s' is not supported (silu, swish, gelu, relu)"):format(key, tostring(name)), 0)
  end
  return name
end

-- act(x) as a new tensor; act_(x) in place
function M.act(x, name) return x[ACTIVATIONS[name]](x) end
function M.act_(x, name) return x[ACTIVATIONS[name] .. "_"](x) end

function M.conv(x, c, stride, padding)
  return nn.conv2d(x, c.weight, c.bias, { stride = stride or 1, padding = padding or 0 })
end

function M.linear(x, l) return nn.linear(x, l.weight, l.bias) end

-- x (N, C, H, W) → conv(act(group_norm(x))), the UNet's and the VAE's
-- output head (conv_norm_out, conv_act, conv_out); x is kept.
-- norm_spec: groups, eps, act.
function M.norm_act_conv(x, norm, norm_spec, conv, padding)
  local g = nn.group_norm(x, norm_spec.groups, norm.weight, norm.bias, norm_spec.eps)
  M.act_(g, norm_spec.act)
  local out = M.conv(g, conv, 1, padding)
  g:free()
  return out
end

-- A view left to the garbage collector keeps its storage alive until a
-- collection, which C memory does not trigger; the views made on the way
-- in these helpers are released at once.

-- x with dims a and b swapped, as a new contiguous tensor
function M.transposed(x, a, b)
  local view = x:transpose(a, b)
  local out = view:contiguous()
  view:free()
  return out
end

-- (N, C, H, W) → (N, H*W, C), contiguous
function M.to_tokens(x)
  local n, c, h, w = unpack(x:shape())
  local flat = x:reshape({ n, c, h * w })
  local out = M.transposed(flat, 2, 3)
  flat:free()
  return out
end

-- (N, H*W, C) → (N, C, H, W), contiguous
function M.to_image(t, h, w)
  local n, _, c = unpack(t:shape())
  local dense = M.transposed(t, 2, 3)
  local out = dense:reshape({ n, c, h, w })
  dense:free()
  return out
end

-- ResnetBlock2D --------------------------------------------------------------------

-- ref: diffusers/models/resnet.py, ResnetBlock2D (pre-norm, no up/down).
-- spec: in_channels, out_channels, temb_channels (nil: no time embedding),
-- groups, groups_out, eps, act, output_scale_factor, time_embedding_norm
-- ("default" | "scale_shift"), skip_time_act.
function M.load_resnet(w, p, spec)
  local ic, oc = spec.in_channels, spec.out_channels
  local r = {
    act = spec.act, eps = spec.eps, groups = spec.groups, groups_out = spec.groups_out or spec.groups,
    output_scale_factor = spec.output_scale_factor or 1,
    time_embedding_norm = spec.time_embedding_norm or "default",
    skip_time_act = spec.skip_time_act or false,
    norm1 = M.load_norm(w, p .. "norm1", ic),
    conv1 = M.load_conv(w, p .. "conv1", ic, oc, 3),
    norm2 = M.load_norm(w, p .. "norm2", oc),
    conv2 = M.load_conv(w, p .. "conv2", oc, oc, 3),
  }
  if r.time_embedding_norm ~= "default" and r.time_embedding_norm ~= "scale_shift" then
    error(("%s: time_embedding_norm '%s' is not supported (default, scale_shift)"):format(p, r.time_embedding_norm), 0)
  end
  if spec.temb_channels then
    local proj = r.time_embedding_norm == "scale_shift" and 2 * oc or oc
    r.time_emb_proj = M.load_linear(w, p .. "time_emb_proj", spec.temb_channels, proj, true)
  end
  if ic ~= oc then r.conv_shortcut = M.load_conv(w, p .. "conv_shortcut", ic, oc, 1, true) end
  return r
end

-- x: (N, C, H, W), temb: (N, T) or nil → (N, OC, H, W)
function M.resnet(r, x, temb)
  local h = nn.group_norm(x, r.groups, r.norm1.weight, r.norm1.bias, r.eps)
  M.act_(h, r.act)
  local h1 = M.conv(h, r.conv1, 1, 1)
  h:free()
  local shift, scale
  if r.time_emb_proj and temb then
    local t = r.skip_time_act and temb or M.act(temb, r.act)
    local proj = M.linear(t, r.time_emb_proj)
    local n, c = proj:size(1), proj:size(2)
    if r.time_embedding_norm == "default" then
      shift = proj:reshape({ n, c, 1, 1 })
    else -- chunk(2, dim=1): first half scale, second half shift
      scale = proj:narrow(2, 1, c / 2):reshape({ n, c / 2, 1, 1 })
      shift = proj:narrow(2, c / 2 + 1, c / 2):reshape({ n, c / 2, 1, 1 })
    end
  end
  if r.time_embedding_norm == "default" and shift then h1:add_(shift) end
  local h2 = nn.group_norm(h1, r.groups_out, r.norm2.weight, r.norm2.bias, r.eps)
  h1:free()
  if scale then h2:mul_(scale + 1):add_(shift) end
  M.act_(h2, r.act)
  local out = M.conv(h2, r.conv2, 1, 1)
  h2:free()
  if r.conv_shortcut then
    local s = M.conv(x, r.conv_shortcut)
    out:add_(s)
    s:free()
  else
    out:add_(x)
  end
  if r.output_scale_factor ~= 1 then out:div_(r.output_scale_factor) end
  return out
end

-- Downsample2D / Upsample2D --------------------------------------------------------

-- ref: diffusers/models/downsampling.py, Downsample2D (use_conv=True, name
-- "op" stored as .conv). padding 0 means the asymmetric (0, 1, 0, 1) zero
-- pad of the original LDM code, then an unpadded stride-2 conv.
function M.load_downsample(w, p, channels, out_channels, padding)
  return { conv = M.load_conv(w, p .. "conv", channels, out_channels, 3), padding = padding }
end

function M.downsample(d, x)
  if d.padding ~= 0 then return M.conv(x, d.conv, 2, d.padding) end
  local n, c, h, w = unpack(x:shape())
  local padded = T.new({ n, c, h + 1, w + 1 })
  local rows = padded:narrow(3, 1, h)
  local inner = rows:narrow(4, 1, w)
  inner:copy(x)
  inner:free(); rows:free()
  local out = M.conv(padded, d.conv, 2, 0)
  padded:free()
  return out
end

-- ref: diffusers/models/upsampling.py, Upsample2D (use_conv=True): nearest
-- x2 (or to `size` = {h, w} when the UNet forwards one), then a 3x3 conv.
function M.load_upsample(w, p, channels, out_channels)
  return { conv = M.load_conv(w, p .. "conv", channels, out_channels, 3) }
end

function M.upsample(u, x, size)
  local h, w = x:size(3) * 2, x:size(4) * 2
  if size then h, w = size[1], size[2] end
  local up = nn.interpolate(x, h, w, { mode = "nearest" })
  local out = M.conv(up, u.conv, 1, 1)
  up:free()
  return out
end

-- VAE attention -----------------------------------------------------------------

-- Older VAE checkpoints name the projections query/key/value/proj_attn,
-- some as 1x1 convs (diffusers converts them on load); all are accepted.
local function load_proj(w, p, new, old, c)
  if w:has(p .. new .. ".weight") or not w:has(p .. old .. ".weight") then
    return M.load_linear(w, p .. new, c, c, true)
  end
  local name = p .. old
  local weight = w:get(name .. ".weight")
  local shape = weight:shape()
  if not (#shape == 2 or (#shape == 4 and shape[3] == 1 and shape[4] == 1)) or shape[1] ~= c or shape[2] ~= c then
    error(("%s.weight: got %s, expected [%d, %d]"):format(name, T.shape_string(shape), c, c), 0)
  end
  return { weight = weight:reshape({ c, c }), bias = w:get(name .. ".bias", { c }) }
end

-- ref: diffusers/models/attention_processor.py, Attention with
-- norm_num_groups, residual_connection=True, bias=True (UNetMidBlock2D in
-- the VAE), run by AttnProcessor2_0: group norm → q, k, v → attention →
-- to_out.0 → + residual → / rescale_output_factor.
-- spec: channels, head_dim, groups, eps, rescale_output_factor.
function M.load_spatial_attention(w, p, spec)
  local c = spec.channels
  return {
    heads = math.floor(c / spec.head_dim), head_dim = spec.head_dim,
    groups = spec.groups, eps = spec.eps, rescale = spec.rescale_output_factor or 1,
    group_norm = M.load_norm(w, p .. "group_norm", c),
    to_q = load_proj(w, p, "to_q", "query", c),
    to_k = load_proj(w, p, "to_k", "key", c),
    to_v = load_proj(w, p, "to_v", "value", c),
    to_out = load_proj(w, p, "to_out.0", "proj_attn", c),
  }
end

-- x: (N, C, H, W) → (N, C, H, W)
function M.spatial_attention(a, x)
  local _, _, h, w = unpack(x:shape())
  local g = nn.group_norm(x, a.groups, a.group_norm.weight, a.group_norm.bias, a.eps)
  local tokens = M.to_tokens(g)
  g:free()
  local q, k, v = M.linear(tokens, a.to_q), M.linear(tokens, a.to_k), M.linear(tokens, a.to_v)
  tokens:free()
  local o = nn.attention(q, k, v, a.heads, { scale = 1 / math.sqrt(a.head_dim) })
  q:free(); k:free(); v:free()
  local y = M.linear(o, a.to_out)
  o:free()
  local out = M.to_image(y, h, w)
  y:free()
  out:add_(x)
  if a.rescale ~= 1 then out:div_(a.rescale) end
  return out
end

return M
