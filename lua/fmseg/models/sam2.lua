-- fmseg.models.sam2 — SAM 2 for single images (transformers Sam2Model's
-- layout: the image encoder (Hiera backbone + FPN neck), the prompt
-- encoder and the mask decoder) from a Hugging Face directory:
-- facebook/sam2.1-hiera-tiny, -small, -base-plus, -large and the SAM 2.0
-- checkpoints (whose parts differ only in config values) load the same
-- way, every shape from config.json.
--
--   local sam2 = require("fmseg.models.sam2")
--   local model = sam2.load("sam2.1-hiera-tiny")
--   local out = model:encode_image(pixel_values)     -- (B, 3, 1024, 1024)
--   out.vision_features   -- (B, d, 64, 64)   the lowest-resolution level kept
--   out.backbone_fpn      -- { (B, d, 256, 256), (B, d, 128, 128), (B, d, 64, 64) }
--   out.vision_pos_enc    -- the sine position encodings of those levels
--   out.trunk             -- Hiera's per-stage outputs (B, C_i, H_i, W_i)
--   local feats = model:image_features(out)
--   feats.image_embed     -- (B, d, 64, 64)  the lowest level + no_memory_embedding
--   feats.high_res_feats  -- { (B, d/8, 256, 256), (B, d/4, 128, 128) } (conv_s0, conv_s1)
--   local sparse, dense = model:encode_prompt({
--     points = pts,     -- (B, N, P, 2) x, y in input pixels (the 1024 frame)
--     labels = lab,     -- (B, N, P): 1 fg, 0 bg, -1 not a point
--     boxes = box,      -- (B, N, 4) x0, y0, x1, y1
--     masks = m,        -- (B*N | B | 1, 1, 256, 256) low-res mask logits
--   })
--   local masks, iou, obj = model:decode_masks(feats, sparse, dense, true)
--   -- masks (B, N, 3, 256, 256) low-res logits, iou (B, N, 3), object
--   -- score logits (B, N, 1); multimask = false: one mask, token 0's
--   -- unless it is unstable (dynamic_multimask_via_stability)
--   local heads = model:sam_heads(feats, { points = pts, labels = lab })
--   -- SAM2Base._forward_sam_heads: multimask for 0..1 points, masks at
--   -- -1024 where the object score is not positive, the best mask
--
-- The image encoder's outputs are the original ImageEncoder's
-- (sam2/modeling/backbones/image_encoder.py), high to low resolution,
-- after `scalp` (transformers: the last num_feature_levels of the neck's
-- levels). image_features is SAM2ImagePredictor.set_image's tail
-- (SAM2Base.forward_image + _prepare_backbone_features +
-- directly_add_no_mem_embed); decode_masks is the original MaskDecoder
-- (use_high_res_features, pred_obj_scores with the MLP head,
-- iou_prediction_use_sigmoid: transformers' Sam2MaskDecoder has them all,
-- as sam2.1_hiera_*.yaml sets them). Memory (video) is not ported.
--
-- Weights keep the checkpoint's names; model.backbone.blocks[i] is
-- "vision_encoder.backbone.blocks.<i-1>.*". The two-way transformer's
-- tables take SamModel's field names (fmseg.models.sam, whose code runs
-- them): out_proj for Sam2Attention's o_proj, mlp.lin1 / lin2 for its
-- mlp.proj_in / proj_out. The model is immutable (it caches the dense
-- positional encoding on first use).
local hf = require("fmseg.io.hf")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local transformer = require("fmseg.models.transformer")
local sam = require("fmseg.models.sam")
local ffi = require("ffi")

local param, linear_params, norm_params = transformer.param, transformer.linear_params,
  transformer.norm_params

local M = {}

-- transformers' Sam2HieraDetConfig / Sam2VisionConfig defaults (SAM 2.1
-- Hiera-tiny), for keys a config.json leaves out.
local BACKBONE_DEFAULTS = {
  hidden_size = 96, num_attention_heads = 1, num_channels = 3, image_size = { 1024, 1024 },
  patch_kernel_size = { 7, 7 }, patch_stride = { 4, 4 }, patch_padding = { 3, 3 },
  query_stride = { 2, 2 }, window_positional_embedding_background_size = { 7, 7 },
  num_query_pool_stages = 3, blocks_per_stage = { 1, 2, 7, 2 },
  embed_dim_per_stage = { 96, 192, 384, 768 }, num_attention_heads_per_stage = { 1, 2, 4, 8 },
  window_size_per_stage = { 8, 4, 14, 7 }, global_attention_blocks = { 5, 7, 9 },
  mlp_ratio = 4.0, hidden_act = "gelu", layer_norm_eps = 1e-6,
}
local VISION_DEFAULTS = {
  backbone_channel_list = { 768, 384, 192, 96 }, fpn_hidden_size = 256, fpn_kernel_size = 1,
  fpn_stride = 1, fpn_padding = 0, fpn_top_down_levels = { 2, 3 }, num_feature_levels = 3,
}
-- transformers' Sam2PromptEncoderConfig / Sam2MaskDecoderConfig defaults.
local PROMPT_DEFAULTS = {
  hidden_size = 256, image_size = 1024, patch_size = 16, mask_input_channels = 16,
  num_point_embeddings = 4, hidden_act = "gelu", layer_norm_eps = 1e-6, scale = 1,
}
local DECODER_DEFAULTS = {
  hidden_size = 256, hidden_act = "gelu", mlp_dim = 2048, num_hidden_layers = 2,
  num_attention_heads = 8, attention_downsample_rate = 2, num_multimask_outputs = 3,
  iou_head_depth = 3, iou_head_hidden_dim = 256, dynamic_multimask_via_stability = true,
  dynamic_multimask_stability_delta = 0.05, dynamic_multimask_stability_thresh = 0.98,
}
-- Fixed in both references: the two-way blocks' norms are nn.LayerNorm's
-- default eps and their MLP's activation ReLU (Sam2FeedForward's default,
-- the original MLP's nn.ReLU); the upscaling's LayerNorm2d eps is 1e-6 and
-- its activation GELU (MaskDecoder's nn.GELU); the hypernetworks and the
-- object-score MLP are 3 deep.
local TWO_WAY_EPS, UPSCALE_EPS, HEAD_DEPTH = 1e-5, 1e-6, 3
-- SAM2Base: masks of an absent object (NO_OBJ_SCORE); multimask for
-- multimask_min_pt_num..multimask_max_pt_num points when
-- multimask_output_in_sam (sam2.1_hiera_*.yaml: true, 0, 1; not in
-- transformers' config).
local NO_OBJ_SCORE = -1024
local MULTIMASK_MIN_POINTS, MULTIMASK_MAX_POINTS = 0, 1
-- the two-way transformer's checkpoint names that are not SamModel's
local TWO_WAY_NAMES = { out_proj = "o_proj", lin1 = "mlp.proj_in", lin2 = "mlp.proj_out" }

-- PositionEmbeddingSine as the neck builds it (normalize = True, scale 2π)
local SINE_TEMPERATURE, SINE_EPS = 10000, 1e-6

local function pair(v)
  if type(v) == "number" then return { v, v } end
  return { v[1], v[2] }
end

local function need(ok, msg, ...)
  if not ok then error("config.json: " .. msg:format(...), 0) end
end

local function list_string(t) return "[" .. table.concat(t, ", ") .. "]" end

-- Configuration -------------------------------------------------------------------

-- The blocks as Sam2HieraDetModel builds them: per block its stage, input
-- and output widths, heads, window (0 = global attention) and whether it
-- pools its queries. The first block of a stage keeps the previous stage's
-- width and window (the reference's blocks "lag by a block"); it pools
-- when its stage is one of the first num_query_pool_stages after stage 1.
-- ref: transformers/models/sam2/modeling_sam2.py, Sam2MultiScaleBlock.__init__;
--      sam2/modeling/backbones/hieradet.py, Hiera.__init__
local function block_plan(b)
  local global = {}
  for _, g in ipairs(b.global_attention_blocks) do global[g] = true end
  local plan, total = {}, 0
  for s, count in ipairs(b.blocks_per_stage) do
    for j = 1, count do
      local first = s > 1 and j == 1
      local spec = {
        stage = s, is_stage_end = j == count,
        dim = first and b.embed_dim_per_stage[s - 1] or b.embed_dim_per_stage[s],
        dim_out = b.embed_dim_per_stage[s],
        heads = b.num_attention_heads_per_stage[s],
        window_size = first and b.window_size_per_stage[s - 1] or b.window_size_per_stage[s],
        q_pool = first and s - 1 <= b.num_query_pool_stages,
      }
      if global[total] then spec.window_size = 0 end
      plan[#plan + 1] = spec
      total = total + 1
    end
  end
  return plan
end

local function conv_out(n, k, s, p) return math.floor((n + 2 * p - k) / s) + 1 end

-- Checks what the reference would fail on (or compute wrongly) further
-- in, and returns the grid (h, w) of each stage.
local function check_config(b, v, plan)
  local nstage = #b.blocks_per_stage
  for _, key in ipairs({ "embed_dim_per_stage", "num_attention_heads_per_stage", "window_size_per_stage" }) do
    need(#b[key] == nstage, "%s has %d entries for %d stages", key, #b[key], nstage)
  end
  need(b.embed_dim_per_stage[1] == b.hidden_size, "hidden_size %d differs from embed_dim_per_stage[1] %d",
       b.hidden_size, b.embed_dim_per_stage[1])
  for s = 1, nstage do
    need(b.embed_dim_per_stage[s] % b.num_attention_heads_per_stage[s] == 0,
         "stage %d: width %d is not a multiple of %d heads", s, b.embed_dim_per_stage[s],
         b.num_attention_heads_per_stage[s])
  end
  need(b.num_query_pool_stages >= 0 and b.num_query_pool_stages < nstage,
       "num_query_pool_stages %d, expected 0..%d", b.num_query_pool_stages, nstage - 1)
  need(nn.has_activation(b.hidden_act), "unsupported hidden_act '%s'", tostring(b.hidden_act))
  local reversed = {}
  for s = nstage, 1, -1 do reversed[#reversed + 1] = b.embed_dim_per_stage[s] end
  need(list_string(v.backbone_channel_list) == list_string(reversed),
       "backbone_channel_list %s, expected the stage widths from the last: %s",
       list_string(v.backbone_channel_list), list_string(reversed))
  need(v.fpn_hidden_size % 4 == 0, "fpn_hidden_size %d is not a multiple of 4 (sine position encoding)",
       v.fpn_hidden_size)
  need(v.num_feature_levels >= 1 and v.num_feature_levels <= nstage, "num_feature_levels %d, expected 1..%d",
       v.num_feature_levels, nstage)

  -- the token grid through the blocks
  local size, k, st, p = pair(b.image_size), pair(b.patch_kernel_size), pair(b.patch_stride), pair(b.patch_padding)
  local h, w = conv_out(size[1], k[1], st[1], p[1]), conv_out(size[2], k[2], st[2], p[2])
  local ws0 = b.window_size_per_stage[1]
  need(ws0 > 0 and h % ws0 == 0 and w % ws0 == 0,
       "the %dx%d patch grid is not a whole number of %d-wide windows (pos_embed_window)", h, w, ws0)
  local qs = pair(b.query_stride)
  local grids = {}
  for i, spec in ipairs(plan) do
    if spec.q_pool then
      local ws = spec.window_size
      need(ws > 0, "block %d pools its queries under global attention, which the reference cannot "
                   .. "unpartition (window 0)", i - 1)
      local ph, pw = math.floor(h / qs[1]), math.floor(w / qs[2])
      local ws2 = math.floor(ws / qs[1])
      need(ws2 > 0 and math.floor(ws / qs[2]) == ws2
           and math.ceil(h / ws) == math.ceil(ph / ws2) and math.ceil(w / ws) == math.ceil(pw / ws2),
           "block %d: %d-wide windows over %dx%d do not pool by %s into %d-wide windows over %dx%d",
           i - 1, ws, h, w, list_string(qs), ws2, ph, pw)
      h, w = ph, pw
    end
    if spec.is_stage_end then grids[spec.stage] = { h, w } end
  end

  -- the neck's levels (level i = stage i) and its top-down path
  local fk, fs, fp = v.fpn_kernel_size, v.fpn_stride, v.fpn_padding
  local lateral = {}
  for s = 1, nstage do
    lateral[s] = { conv_out(grids[s][1], fk, fs, fp), conv_out(grids[s][2], fk, fs, fp) }
  end
  for _, level in ipairs(v.fpn_top_down_levels) do
    local s = level + 1
    if s < nstage then
      need(lateral[s][1] == 2 * lateral[s + 1][1] and lateral[s][2] == 2 * lateral[s + 1][2],
           "fpn_top_down_levels: level %d is %dx%d, twice level %d (%dx%d) is not", level,
           lateral[s][1], lateral[s][2], level + 1, lateral[s + 1][1], lateral[s + 1][2])
    end
  end
  return grids, lateral
end

-- Loading ----------------------------------------------------------------------------

local function conv_params(w, name, oc, ic, kh, kw)
  return { weight = param(w, name .. ".weight", { oc, ic, kh, kw }), bias = param(w, name .. ".bias", { oc }) }
end

-- ref: transformers/models/sam2/modeling_sam2.py, Sam2MultiScaleBlock
local function block(w, prefix, spec, mlp_ratio)
  local hidden = math.floor(spec.dim_out * mlp_ratio)
  return {
    dim = spec.dim, dim_out = spec.dim_out, heads = spec.heads, window_size = spec.window_size,
    q_pool = spec.q_pool, is_stage_end = spec.is_stage_end,
    layer_norm1 = norm_params(w, prefix .. "layer_norm1", spec.dim),
    attn = { qkv = linear_params(w, prefix .. "attn.qkv", 3 * spec.dim_out, spec.dim, true),
             proj = linear_params(w, prefix .. "attn.proj", spec.dim_out, spec.dim_out, true) },
    layer_norm2 = norm_params(w, prefix .. "layer_norm2", spec.dim_out),
    mlp = { proj_in = linear_params(w, prefix .. "mlp.proj_in", hidden, spec.dim_out, true),
            proj_out = linear_params(w, prefix .. "mlp.proj_out", spec.dim_out, hidden, true) },
    proj = spec.dim ~= spec.dim_out and linear_params(w, prefix .. "proj", spec.dim_out, spec.dim, true) or nil,
  }
end

-- The sine position encoding of an h x w level with c channels, (1, c, h, w):
-- channels 1..c/2 encode the row, the rest the column; within each half
-- channel k (0-based) is sin (k even) or cos (k odd) of
-- pos * 2π / (n + eps) / 10000^(2 floor(k/2) / (c/2)), pos = 1..n.
-- ref: sam2/modeling/position_encoding.py, PositionEmbeddingSine._pe;
--      transformers Sam2SinePositionEmbedding
local function sine_encoding(c, h, w)
  local half = c / 2
  local function axis(n)                                    -- (half, n)
    local t = T.empty({ half, n })
    local p = t:ptr()
    for k = 0, half - 1 do
      local dim_t = SINE_TEMPERATURE ^ (2 * math.floor(k / 2) / half)
      for i = 0, n - 1 do
        local a = (i + 1) / (n + SINE_EPS) * (2 * math.pi) / dim_t
        p[k * n + i] = k % 2 == 0 and math.sin(a) or math.cos(a)
      end
    end
    return t
  end
  local zeros = T.zeros({ 1, half, h, w })
  local ys = zeros + axis(h):reshape(1, half, h, 1)
  local xs = zeros + axis(w):reshape(1, half, 1, w)
  return T.cat({ ys, xs }, 2)
end

-- What the prompt encoder and mask decoder need of the config, given the
-- neck's level sizes (lateral, per stage) and the levels kept.
local function check_decoder_config(b, v, p, d, lateral)
  local c = d.hidden_size
  need(p.hidden_size == c and v.fpn_hidden_size == c,
       "prompt hidden_size %d, mask decoder hidden_size %d and fpn_hidden_size %d must agree",
       p.hidden_size, c, v.fpn_hidden_size)
  need(c >= 8, "mask decoder hidden_size %d is below 8 (the upscaling keeps hidden_size // 8 channels)", c)
  need(p.mask_input_channels >= 4, "mask_input_channels %d is below 4 (mask_embed keeps mask_input_channels // 4)",
       p.mask_input_channels)
  need(p.num_point_embeddings >= 4, "num_point_embeddings %d, expected 4 (fg, bg, two box corners)",
       p.num_point_embeddings)
  local internal = math.floor(c / d.attention_downsample_rate)
  need(internal % d.num_attention_heads == 0 and c % d.num_attention_heads == 0,
       "mask decoder: %d heads do not divide %d / %d", d.num_attention_heads, c, internal)
  need(d.num_hidden_layers == 2, "mask decoder num_hidden_layers %d: transformers' two-way blocks take it as "
       .. "their MLP's depth too, the original's is 2 (only 2 is supported)", d.num_hidden_layers)
  need(d.num_multimask_outputs >= 1, "num_multimask_outputs %d, expected at least 1", d.num_multimask_outputs)
  need(d.iou_head_depth >= 2, "iou_head_depth %d, expected at least 2", d.iou_head_depth)
  need(nn.has_activation(p.hidden_act), "unsupported prompt encoder hidden_act '%s'", tostring(p.hidden_act))
  -- SAM2Base takes three levels: conv_s0 on the first, conv_s1 on the
  -- second, the last is the image embedding (forward_image,
  -- _prepare_backbone_features)
  need(v.num_feature_levels == 3, "num_feature_levels %d: the mask decoder takes three levels", v.num_feature_levels)
  local size = pair(b.image_size)
  need(p.image_size == size[1] and p.image_size == size[2],
       "prompt encoder image_size %d, expected the backbone's %dx%d", p.image_size, size[1], size[2])
  local e = p.image_embedding_size
  for i, k in ipairs({ 4, 2, 1 }) do
    need(lateral[i][1] == k * e and lateral[i][2] == k * e,
         "feature level %d is %dx%d, the mask decoder needs %dx%d (image_size / patch_size = %d, times %d)",
         i - 1, lateral[i][1], lateral[i][2], k * e, k * e, e, k)
  end
end

-- ref: transformers/models/sam2/modeling_sam2.py, Sam2PromptEncoder / Sam2MaskEmbedding
local function prompt_encoder(w, p)
  local c, mc = p.hidden_size, p.mask_input_channels
  local pre = "prompt_encoder."
  local point_embed = param(w, pre .. "point_embed.weight", { p.num_point_embeddings, c })
  local enc = {
    -- point_embed[1..4] (rows of point_embed.weight): bg, fg, box corners
    point_embed = {},
    not_a_point_embed = param(w, pre .. "not_a_point_embed.weight", { 1, c }),
    no_mask_embed = param(w, pre .. "no_mask_embed.weight", { 1, c }),
    mask_embed = {
      conv1 = conv_params(w, pre .. "mask_embed.conv1", math.floor(mc / 4), 1, 2, 2),
      layer_norm1 = norm_params(w, pre .. "mask_embed.layer_norm1", math.floor(mc / 4)),
      conv2 = conv_params(w, pre .. "mask_embed.conv2", mc, math.floor(mc / 4), 2, 2),
      layer_norm2 = norm_params(w, pre .. "mask_embed.layer_norm2", mc),
      conv3 = conv_params(w, pre .. "mask_embed.conv3", c, mc, 1, 1),
    },
  }
  for i = 1, p.num_point_embeddings do enc.point_embed[i] = point_embed:narrow(1, i, 1):contiguous() end
  return enc
end

-- ref: transformers/models/sam2/modeling_sam2.py, Sam2MaskDecoder; sam2/modeling/sam/mask_decoder.py
local function mask_decoder(w, d)
  local c, ntok = d.hidden_size, d.num_multimask_outputs + 1
  local c4, c8 = math.floor(c / 4), math.floor(c / 8)
  local pre = "mask_decoder."
  local ff = sam.shared.feed_forward
  local dec = {
    obj_score_token = param(w, pre .. "obj_score_token.weight", { 1, c }),
    iou_token = param(w, pre .. "iou_token.weight", { 1, c }),
    mask_tokens = param(w, pre .. "mask_tokens.weight", { ntok, c }),
    transformer = sam.shared.two_way_params(w, pre .. "transformer.", d, TWO_WAY_NAMES),
    upscale_conv1 = { weight = param(w, pre .. "upscale_conv1.weight", { c, c4, 2, 2 }),
                      bias = param(w, pre .. "upscale_conv1.bias", { c4 }) },
    upscale_layer_norm = norm_params(w, pre .. "upscale_layer_norm", c4),
    upscale_conv2 = { weight = param(w, pre .. "upscale_conv2.weight", { c4, c8, 2, 2 }),
                      bias = param(w, pre .. "upscale_conv2.bias", { c8 }) },
    conv_s0 = conv_params(w, pre .. "conv_s0", c8, c, 1, 1),
    conv_s1 = conv_params(w, pre .. "conv_s1", c4, c, 1, 1),
    output_hypernetworks_mlps = {},
    iou_prediction_head = ff(w, pre .. "iou_prediction_head", c, d.iou_head_hidden_dim, ntok, d.iou_head_depth),
    pred_obj_score_head = ff(w, pre .. "pred_obj_score_head", c, c, 1, HEAD_DEPTH),
  }
  for i = 1, ntok do
    dec.output_hypernetworks_mlps[i] = ff(w, ("%soutput_hypernetworks_mlps.%d"):format(pre, i - 1), c, c, c8,
                                          HEAD_DEPTH)
  end
  return dec
end

local SAM2 = {}
SAM2.__index = SAM2
-- SAM's prompt encoding (the same modules: PositionEmbeddingRandom, the
-- point / box embeddings, the mask downscaling)
for _, name in ipairs({ "positional_encoding", "embed_points", "embed_boxes", "embed_masks" }) do
  SAM2[name] = sam.shared.prompt_methods[name]
end

-- new(config, weights, opts): config = decoded config.json (a Sam2Model's);
-- weights with has(name) / get(name, shape) (fmseg.io.hf weights).
-- opts.strict = false allows unknown vision_encoder.* tensors.
-- ref: transformers/models/sam2/modeling_sam2.py, Sam2VisionModel, Sam2HieraDetModel
function M.new(config, weights, opts)
  opts = opts or {}
  if config.model_type ~= nil and config.model_type ~= "sam2" then
    error(("config.json: model_type '%s', expected sam2 (a Sam2Model directory)"):format(
      tostring(config.model_type)), 0)
  end
  local vision_config = config.vision_config or {}
  local v = hf.settings(vision_config, VISION_DEFAULTS)
  local b = hf.settings(vision_config.backbone_config, BACKBONE_DEFAULTS)
  local plan = block_plan(b)
  local grids, lateral = check_config(b, v, plan)
  local p = hf.settings(config.prompt_encoder_config, PROMPT_DEFAULTS)
  -- Sam2PromptEncoder derives it, whatever config.json says
  p.image_embedding_size = math.floor(p.image_size / p.patch_size)
  local dc = hf.settings(config.mask_decoder_config, DECODER_DEFAULTS)
  check_decoder_config(b, v, p, dc, lateral)
  local self = setmetatable({ family = "sam2",
                              config = { backbone = b, vision = v, grids = grids, prompt = p, decoder = dc } }, SAM2)

  local pre = "vision_encoder.backbone."
  local c, k, bkg = b.hidden_size, pair(b.patch_kernel_size), pair(b.window_positional_embedding_background_size)
  local ws0 = b.window_size_per_stage[1]
  local backbone = {
    patch_embed = { projection = conv_params(weights, pre .. "patch_embed.projection", c, b.num_channels,
                                             k[1], k[2]) },
    pos_embed = param(weights, pre .. "pos_embed", { 1, c, bkg[1], bkg[2] }),
    pos_embed_window = param(weights, pre .. "pos_embed_window", { 1, c, ws0, ws0 }),
    blocks = {},
  }
  for i, spec in ipairs(plan) do
    backbone.blocks[i] = block(weights, ("%sblocks.%d."):format(pre, i - 1), spec, b.mlp_ratio)
  end
  self.backbone = backbone

  -- neck.convs[j] takes level #levels - j (the lowest resolution first)
  local fk, d = v.fpn_kernel_size, v.fpn_hidden_size
  local neck = { convs = {}, top_down = {}, position_encoding = {} }
  for j, ch in ipairs(v.backbone_channel_list) do
    neck.convs[j] = conv_params(weights, ("vision_encoder.neck.convs.%d"):format(j - 1), d, ch, fk, fk)
  end
  for _, level in ipairs(v.fpn_top_down_levels) do neck.top_down[level + 1] = true end
  for s, hw in ipairs(lateral) do neck.position_encoding[s] = sine_encoding(d, hw[1], hw[2]) end
  self.neck = neck

  -- Sam2PositionalEmbedding's Gaussian matrix; the prompt encoder holds a
  -- tied copy under its own name in some checkpoints
  local pe_name, tied = "shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding"
  if not weights:has(pe_name) and weights:has(tied) then pe_name = tied end
  self.shared_image_embedding = { positional_embedding = param(weights, pe_name, { 2, math.floor(p.hidden_size / 2) }) }
  self.prompt_encoder = prompt_encoder(weights, p)
  self.mask_decoder = mask_decoder(weights, self.config.decoder)
  self.no_memory_embedding = param(weights, "no_memory_embedding", { 1, 1, v.fpn_hidden_size })
  -- the memory (video) parts of a checkpoint are left alone
  if opts.strict ~= false and weights.check_all_used then
    weights:check_all_used({ "vision_encoder.", "prompt_encoder.", "mask_decoder.", "shared_image_embedding.",
                             "no_memory_embedding" },
                           { "^prompt_encoder%.shared_embedding%.positional_embedding$" })
  end
  return self
end

-- load(path, opts): a Sam2Model directory (config.json + model.safetensors).
function M.load(path, opts) return hf.load_model(path, M.new, opts) end

-- Backbone ----------------------------------------------------------------------------

local window_partition, window_unpartition = transformer.window_partition, transformer.window_unpartition

-- x (B, H, W, C) → (B, H/sh, W/sw, C): max over each sh x sw cell, the
-- rows and columns past a whole cell dropped (MaxPool2d, ceil_mode False).
-- ref: hieradet.py, do_pool (nn.MaxPool2d(kernel_size=q_stride, stride=q_stride))
local function max_pool(x, stride)
  local b, h, w, c = unpack(x:shape())
  local sh, sw = stride[1], stride[2]
  local oh, ow = math.floor(h / sh), math.floor(w / sw)
  local cells = x:narrow(2, 1, oh * sh):narrow(3, 1, ow * sw):contiguous():reshape(b, oh, sh, ow, sw, c)
  return cells:max(3):max(4)                                  -- (B, oh, ow, C)
end

-- x (N, gh, gw, C) → (N, gh', gw', C_out): multi-head self-attention within
-- each grid, the queries max-pooled by `q_stride` when given (then gh' =
-- gh / stride); scale head_dim^-1/2.
-- ref: hieradet.py, MultiScaleAttention; transformers Sam2MultiScaleAttention
local function attention(attn, x, heads, q_stride)
  local n, gh, gw, c = unpack(x:shape())
  local cout = attn.proj.weight:size(1)
  local qkv = nn.linear(x:reshape(n, gh * gw, c), attn.qkv.weight, attn.qkv.bias)   -- (N, T, 3 C_out)
  local q, k, v = qkv:narrow(3, 1, cout), qkv:narrow(3, cout + 1, cout), qkv:narrow(3, 2 * cout + 1, cout)
  if q_stride then
    q = max_pool(q:contiguous():reshape(n, gh, gw, cout), q_stride)
    gh, gw = q:size(2), q:size(3)
    q = q:reshape(n, gh * gw, cout)
  end
  local o = nn.attention(q, k, v, heads)                                              -- (N, Tq, C_out)
  qkv:free()
  local y = nn.linear(o, attn.proj.weight, attn.proj.bias)
  o:free()
  return y:reshape(n, gh, gw, cout)
end

-- x (B, H, W, C) → (B, H', W', C_out).
-- ref: hieradet.py, MultiScaleBlock.forward; transformers Sam2MultiScaleBlock.forward
local function block_forward(blk, x, cfg)
  local _, h, w = unpack(x:shape())
  local q_stride = blk.q_pool and pair(cfg.query_stride) or nil
  local ln1, ln2 = blk.layer_norm1, blk.layer_norm2
  local y = nn.layer_norm(x, ln1.weight, ln1.bias, cfg.layer_norm_eps)
  -- the shortcut changes width (and is pooled) with the block
  local shortcut = x
  if blk.proj then
    local p = nn.linear(y, blk.proj.weight, blk.proj.bias)
    shortcut = q_stride and max_pool(p, q_stride) or p
  end
  local ws, hp, wp = blk.window_size
  local t = y
  if ws > 0 then t, hp, wp = window_partition(y, ws) end
  local a = attention(blk.attn, t, blk.heads, q_stride)
  if ws > 0 then
    if q_stride then
      -- the pooled windows, over the pooled grid (both use q_stride[1])
      ws = math.floor(ws / q_stride[1])
      h, w = shortcut:size(2), shortcut:size(3)
      hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
    end
    a = window_unpartition(a, ws, hp, wp, h, w)
  end
  local out = shortcut + a
  a:free()
  local z = nn.layer_norm(out, ln2.weight, ln2.bias, cfg.layer_norm_eps)
  local m = nn.activation_(nn.linear(z, blk.mlp.proj_in.weight, blk.mlp.proj_in.bias), cfg.hidden_act)
  z:free()
  local mo = nn.linear(m, blk.mlp.proj_out.weight, blk.mlp.proj_out.bias)
  m:free()
  out:add_(mo)
  mo:free()
  return out
end

-- The position embedding of an h x w patch grid, (1, h, w, C): the
-- background embedding resized bicubically to h x w plus the window
-- embedding tiled over it.
-- ref: hieradet.py, Hiera._get_pos_embed
local function position_embedding(bk, h, w)
  local pe = nn.interpolate(bk.pos_embed, h, w, { mode = "bicubic" })         -- (1, C, h, w)
  local c, ws = pe:size(2), bk.pos_embed_window:size(3)
  local tiled = pe:reshape(1, c, h / ws, ws, w / ws, ws) + bk.pos_embed_window:reshape(1, c, 1, ws, 1, ws)
  return tiled:reshape(1, c, h, w):permute(1, 3, 4, 2):contiguous()
end

-- Neck ------------------------------------------------------------------------------------

-- stages (B, C_i, H_i, W_i), high to low resolution → the neck's levels and
-- their position encodings, high to low resolution: each level is its
-- lateral convolution, plus the level below it upsampled 2x (nearest) for
-- the fpn_top_down_levels.
-- ref: image_encoder.py, FpnNeck.forward; transformers Sam2VisionNeck
local function neck_forward(neck, stages, cfg)
  local n = #stages
  local features, pos = {}, {}
  local prev
  for s = n, 1, -1 do
    local conv = neck.convs[n - s + 1]
    local lateral = nn.conv2d(stages[s], conv.weight, conv.bias,
                              { stride = cfg.fpn_stride, padding = cfg.fpn_padding })
    if neck.top_down[s] and prev then
      local up = nn.interpolate(prev, 2 * prev:size(3), 2 * prev:size(4), { mode = "nearest" })
      prev = lateral + up
      lateral:free(); up:free()
    else
      prev = lateral
    end
    features[s] = prev
    local b = prev:size(1)
    pos[s] = T.zeros({ b, 1, 1, 1 }) + neck.position_encoding[s]
  end
  return features, pos
end

-- Forward ---------------------------------------------------------------------------------

-- pixel_values (B, C, H, W), H x W = the backbone's image_size →
-- { vision_features, backbone_fpn = { levels }, vision_pos_enc = { ... },
--   trunk = { stages } }: the original ImageEncoder's outputs (backbone_fpn
-- and vision_pos_enc high to low resolution, the last `scalp` levels
-- dropped; vision_features = the last level kept) and Hiera's per-stage
-- outputs (B, C_i, H_i, W_i), before the neck.
-- ref: sam2/modeling/backbones/image_encoder.py, ImageEncoder.forward;
--      transformers Sam2VisionModel.forward
function SAM2:encode_image(pixel_values)
  local b, v, bk = self.config.backbone, self.config.vision, self.backbone
  local size = pair(b.image_size)
  local shape = pixel_values:shape()
  if #shape ~= 4 or shape[2] ~= b.num_channels or shape[3] ~= size[1] or shape[4] ~= size[2] then
    error(("sam2: pixel_values %s, expected [B, %d, %d, %d] (the backbone's image_size)"):format(
      T.shape_string(shape), b.num_channels, size[1], size[2]), 2)
  end
  local pe = bk.patch_embed.projection
  local patches = nn.conv2d(pixel_values, pe.weight, pe.bias,
                            { stride = pair(b.patch_stride), padding = pair(b.patch_padding) })
  local x = patches:permute(1, 3, 4, 2):contiguous()                        -- (B, h, w, C)
  patches:free()
  x:add_(position_embedding(bk, x:size(2), x:size(3)))
  local stages = {}
  for _, blk in ipairs(bk.blocks) do
    local y = block_forward(blk, x, b)
    x:free()
    x = y
    if blk.is_stage_end then stages[#stages + 1] = x:permute(1, 4, 2, 3):contiguous() end
    collectgarbage()
  end
  local features, pos = neck_forward(self.neck, stages, v)
  local keep = v.num_feature_levels
  local fpn, enc = {}, {}
  for i = 1, keep do fpn[i], enc[i] = features[i], pos[i] end
  return { vision_features = fpn[keep], backbone_fpn = fpn, vision_pos_enc = enc, trunk = stages }
end

-- Prompt encoder ----------------------------------------------------------------------------

-- enc = encode_image's outputs → { image_embed (B, d, h, w): the lowest
-- level plus no_memory_embedding, high_res_feats = { conv_s0(level 0)
-- (B, d/8, 4h, 4w), conv_s1(level 1) (B, d/4, 2h, 2w) } }.
-- ref: sam2/sam2_image_predictor.py, SAM2ImagePredictor.set_image (after
--      its transforms); sam2_base.py, SAM2Base.forward_image; transformers
--      Sam2Model.get_image_features / get_image_embeddings
function SAM2:image_features(enc)
  local fpn, dec = enc.backbone_fpn, self.mask_decoder
  local c = self.config.vision.fpn_hidden_size
  local s0 = nn.conv2d(fpn[1], dec.conv_s0.weight, dec.conv_s0.bias)
  local s1 = nn.conv2d(fpn[2], dec.conv_s1.weight, dec.conv_s1.bias)
  local image_embed = fpn[3] + self.no_memory_embedding:reshape(1, c, 1, 1)
  return { image_embed = image_embed, high_res_feats = { s0, s1 } }
end

-- prompt = {points (B, N, P, 2), labels (B, N, P) (default all 1: 1 fg,
-- 0 bg, -1 not a point), boxes (B, N, 4), masks (M, 1, 4h, 4w)},
-- coordinates in input pixels → sparse (B, N, K, d) or nil when there are
-- neither points nor boxes, dense (M | 1, d, h, w). As the image
-- predictor hands them over: a box is two points labelled 2 and 3 put
-- before the points, and a not-a-point pads the end.
-- ref: sam2/sam2_image_predictor.py, SAM2ImagePredictor._predict;
--      sam2/modeling/sam/prompt_encoder.py, PromptEncoder.forward (boxes=None)
function SAM2:encode_prompt(prompt)
  prompt = prompt or {}
  local pe, c = self.prompt_encoder, self.config.prompt.hidden_size
  local corners = prompt.boxes and self:embed_boxes(prompt.boxes)               -- (B, N, 2, d)
  local points
  if prompt.points then
    local labels = prompt.labels or T.ones({ unpack(prompt.points:shape(), 1, 3) })
    points = self:embed_points(prompt.points, labels, true)                       -- (B, N, P + 1, d)
    if corners and (corners:size(1) ~= points:size(1) or corners:size(2) ~= points:size(2)) then
      error(("sam2: %d x %d point sets but %d x %d boxes: give one box per point set"):format(
        points:size(1), points:size(2), corners:size(1), corners:size(2)), 2)
    end
  elseif corners then
    points = T.zeros({ corners:size(1), corners:size(2), 1, c }) + pe.not_a_point_embed
  end
  local sparse = corners and T.cat({ corners, points }, 3) or points
  local dense
  if prompt.masks then
    local e = self.config.prompt.image_embedding_size
    local shape = prompt.masks:shape()
    if #shape ~= 4 or shape[2] ~= 1 or shape[3] ~= 4 * e or shape[4] ~= 4 * e then
      error(("sam2: masks %s, expected [M, 1, %d, %d] (low-res mask logits)"):format(
        T.shape_string(shape), 4 * e, 4 * e), 2)
    end
    dense = self:embed_masks(prompt.masks)
  else
    local e = self.config.prompt.image_embedding_size
    dense = T.zeros({ 1, c, e, e }) + pe.no_mask_embed:reshape(1, c, 1, 1)
  end
  return sparse, dense
end

-- The dense positional encoding of the embedding grid (1, h*w, d), made
-- once. ref: PromptEncoder.get_dense_pe; transformers
-- Sam2Model.get_image_wide_positional_embeddings
local function dense_pe(self)
  if self._dense_pe then return self._dense_pe end
  local e = self.config.prompt.image_embedding_size
  local grid = T.new({ e, e, 2 })
  local g = grid:ptr()
  for y = 0, e - 1 do
    for x = 0, e - 1 do
      g[(y * e + x) * 2] = (x + 0.5) / e
      g[(y * e + x) * 2 + 1] = (y + 0.5) / e
    end
  end
  local pe = self:positional_encoding(grid)                         -- (h, w, d)
  self._dense_pe = pe:reshape(1, e * e, pe:size(3))
  return self._dense_pe
end

-- Mask decoder ---------------------------------------------------------------------------------

-- float32 of a Lua number (the reference compares in float32)
local f32 = ffi.new("float[1]")
local function float32(x)
  f32[0] = x
  return f32[0]
end

-- The 1-based column first..last of the largest of p[base + k - 1], the
-- first on ties (torch's argmax)
local function row_argmax(p, base, first, last)
  local best = first
  for k = first + 1, last do
    if p[base + k - 1] > p[base + best - 1] then best = k end
  end
  return best
end

-- For prompt i: token 0's mask unless its stability score (the area above
-- +delta over the area above -delta, 1 when nothing is above -delta) is
-- below thresh, then the multimask output with the highest IoU (the first
-- on ties). masks (BN, Mt, H, W), iou (BN, Mt) → the chosen mask index
-- per prompt (1-based).
-- ref: sam2/modeling/sam/mask_decoder.py, MaskDecoder._dynamic_multimask_via_stability
local function dynamic_choice(masks, iou, delta, thresh)
  local bn, mt, hh, ww = unpack(masks:shape())
  local m, q = masks:contiguous(), iou:contiguous()
  local mp, qp = m:ptr(), q:ptr()
  local hw, picks = hh * ww, {}
  local d, t = float32(delta), float32(thresh)
  for i = 0, bn - 1 do
    local base, inter, union = i * mt * hw, 0, 0
    for j = 0, hw - 1 do
      local x = mp[base + j]
      if x > d then inter = inter + 1 end
      if x > -d then union = union + 1 end
    end
    local score = union > 0 and float32(inter / union) or 1
    if score >= t then
      picks[i + 1] = 1
    else
      picks[i + 1] = row_argmax(qp, i * mt, 2, mt)
    end
  end
  return picks
end

-- dynamic_multimask(masks, iou, delta, thresh) → the chosen index per
-- prompt (1-based): what decode_masks does without multimask.
M.dynamic_multimask = dynamic_choice

-- x (BN, M, ...) → (BN, 1, ...): row i's entry picks[i]
local function pick(x, picks)
  local parts = {}
  for i, k in ipairs(picks) do parts[i] = x:narrow(1, i, 1):narrow(2, k, 1) end
  return T.cat(parts, 1)
end

-- The masks of every mask token: the image tokens keys (R, hw, d) upscaled
-- 4x with the high-resolution features s1, s0 added (broadcast over R when
-- they have one row), then each token's hypernetwork output times them →
-- (R, Mt, 4h, 4w). ref: MaskDecoder.predict_masks (use_high_res_features)
local function upscale_masks(self, keys, queries, s0, s1, rows, h, w)
  local dec, c = self.mask_decoder, keys:size(3)
  local ff = sam.shared.feed_forward_forward
  local src = keys:transpose(2, 3):contiguous():reshape(rows, c, h, w)
  local u1, u2, ln = dec.upscale_conv1, dec.upscale_conv2, dec.upscale_layer_norm
  local up = nn.conv_transpose2d(src, u1.weight, u1.bias, 2):add_(s1)
  src:free()
  up = nn.activation_(nn.layer_norm_channels(up, ln.weight, ln.bias, UPSCALE_EPS), "gelu")
  up = nn.activation_(nn.conv_transpose2d(up, u2.weight, u2.bias, 2):add_(s0), "gelu")  -- (R, d/8, 4h, 4w)
  local mt = dec.mask_tokens:size(1)
  local hyper = {}
  for i = 1, mt do
    hyper[i] = ff(dec.output_hypernetworks_mlps[i], queries:select(2, 2 + i))
  end
  local hyper_in = T.stack(hyper, 2)                                               -- (R, Mt, d/8)
  local c8 = up:size(2)
  local masks = hyper_in:matmul(up:reshape(rows, c8, 16 * h * w)):reshape(rows, mt, 4 * h, 4 * w)
  up:free()
  return masks
end

-- feats = image_features' output (B images), sparse (B, N, K, d) or nil,
-- dense (B*N | B | 1, d, h, w), multimask → low-res mask logits
-- (B, N, M, 4h, 4w), IoU predictions (B, N, M) (sigmoid) and object score
-- logits (B, N, 1): M = num_multimask_outputs (mask tokens 1..) with
-- multimask, else 1: mask token 0's, or with
-- dynamic_multimask_via_stability the best multimask output when token
-- 0's mask is unstable. opts.dynamic (true / false) overrides the config's
-- dynamic_multimask_via_stability (build_sam2's apply_postprocessing).
-- opts.mask_filter = function(iou (B*N, M)) → ascending list of prompts
-- (1-based over B*N): only their masks are made, and the result is masks
-- (#list, M, 4h, 4w), iou (B*N, M), obj (B*N, 1), the list (the automatic
-- mask generator's predicted-IoU filter; not with the dynamic choice,
-- which needs every mask, where it is ignored).
-- ref: sam2/modeling/sam/mask_decoder.py, MaskDecoder.forward / predict_masks;
--      transformers Sam2MaskDecoder.forward
function SAM2:decode_masks(feats, sparse, dense, multimask, opts)
  opts = opts or {}
  local dec, d = self.mask_decoder, self.config.decoder
  local dynamic = opts.dynamic
  if dynamic == nil then dynamic = d.dynamic_multimask_via_stability end
  local emb = feats.image_embed
  local b, c, h, w = unpack(emb:shape())
  local e = self.config.prompt.image_embedding_size
  if h ~= e or w ~= e or c ~= d.hidden_size then
    error(("sam2: image_embed %s, expected [B, %d, %d, %d]"):format(T.shape_string(emb:shape()), d.hidden_size,
                                                                    e, e), 2)
  end
  local n = sparse and sparse:size(2) or 1
  if sparse and sparse:size(1) ~= b then
    error(("sam2: prompts for %d images, features of %d"):format(sparse:size(1), b), 2)
  end
  local bn = b * n
  -- output tokens (object score, IoU, mask tokens) followed by the prompt's
  local out_tokens = T.cat({ dec.obj_score_token, dec.iou_token, dec.mask_tokens }, 1)   -- (2 + Mt, d)
  local ntok = out_tokens:size(1)
  local tokens, nd = sam.shared.decoder_tokens(out_tokens, sparse, dense, b, bn, "sam2")
  local rep = sam.shared.repeat_interleave
  local shared = b == 1 and nd == 1
  local src = shared and emb or rep(emb, n)
  if not shared and nd == b then dense = rep(dense, n) end
  local with_dense = src + dense
  local nk = with_dense:size(1)
  local keys = with_dense:reshape(nk, c, h * w):transpose(2, 3):contiguous()    -- (BN | 1, hw, d)
  with_dense:free()
  local cfg = { num_attention_heads = d.num_attention_heads, layer_norm_eps = TWO_WAY_EPS, hidden_act = "relu" }
  local queries
  queries, keys = sam.shared.two_way_transformer(dec.transformer, tokens, keys, dense_pe(self), cfg,
                                                 { out_tokens = ntok })
  local ff = sam.shared.feed_forward_forward
  local obj = ff(dec.pred_obj_score_head, queries:select(2, 1))                    -- (BN, 1)
  local iou = ff(dec.iou_prediction_head, queries:select(2, 2)):sigmoid()         -- (BN, Mt)
  local mt = dec.mask_tokens:size(1)
  local choose = not multimask and dynamic and mt > 1        -- the choice needs every mask
  local s0, s1 = feats.high_res_feats[1], feats.high_res_feats[2]
  if b > 1 and n > 1 then s0, s1 = rep(s0, n), rep(s1, n) end
  -- the predicted-IoU filter: masks for the prompts it keeps only
  local picked
  if opts.mask_filter and not choose then
    local returned = multimask and iou:narrow(2, 2, mt - 1) or iou:narrow(2, 1, 1)
    picked = opts.mask_filter(returned:contiguous())
    local pick_rows = sam.shared.pick_rows
    if #picked < bn and #picked > 0 then
      local k2, q2 = pick_rows(keys, picked), pick_rows(queries, picked)
      keys:free()
      keys, queries = k2, q2
      if s0:size(1) > 1 then s0, s1 = pick_rows(s0, picked), pick_rows(s1, picked) end
    end
  end
  local rows = picked and #picked or bn
  local masks
  if rows > 0 then
    masks = upscale_masks(self, keys, queries, s0, s1, rows, h, w)          -- (rows, Mt, 4h, 4w)
  else
    masks = T.empty({ 0, mt, 4 * h, 4 * w })
  end
  keys:free()
  if multimask then
    masks, iou = masks:narrow(2, 2, mt - 1):contiguous(), iou:narrow(2, 2, mt - 1):contiguous()
  elseif choose then
    local picks = dynamic_choice(masks, iou, d.dynamic_multimask_stability_delta,
                                 d.dynamic_multimask_stability_thresh)
    masks, iou = pick(masks, picks), pick(iou, picks)
  else
    masks, iou = masks:narrow(2, 1, 1):contiguous(), iou:narrow(2, 1, 1):contiguous()
  end
  if picked then return masks, iou, obj, picked end
  local m = masks:size(2)
  return masks:reshape(b, n, m, 4 * h, 4 * w), iou:reshape(b, n, m), obj:reshape(b, n, 1)
end

-- masks (B, N, M, H, W) with object score logits (B, N, 1) → masks at
-- NO_OBJ_SCORE (-1024) where the object score is not positive.
-- ref: sam2/modeling/sam2_base.py, SAM2Base._forward_sam_heads (pred_obj_scores)
function M.mask_no_object(masks, obj)
  local present = obj:gt(0):float():reshape(obj:size(1), obj:size(2), 1, 1, 1)
  return masks * present + (present * -1 + 1) * NO_OBJ_SCORE
end

-- feats (B images), prompt = {points (B, P, 2), labels (B, P), masks
-- (B, 1, 4h, 4w)} → { low_res_multimasks (B, M, 4h, 4w), ious (B, M),
-- low_res_masks (B, 1, 4h, 4w) (the highest IoU with multimask),
-- object_score_logits (B, 1), multimask }: multimask for
-- multimask_min_pt_num..multimask_max_pt_num points (0..1), the masks
-- at -1024 where the object score is not positive. Without points, a
-- not-a-point at (0, 0) as the reference pads (the object pointer and
-- the high-resolution masks are not computed).
-- ref: sam2/modeling/sam2_base.py, SAM2Base._forward_sam_heads, _use_multimask
function SAM2:sam_heads(feats, prompt)
  prompt = prompt or {}
  local b = feats.image_embed:size(1)
  local points, labels = prompt.points, prompt.labels
  local np = points and points:size(2) or 0
  if not points then
    points, labels = T.zeros({ b, 1, 2 }), T.full({ b, 1 }, -1)
  end
  labels = labels or T.ones({ points:size(1), points:size(2) })
  local multimask = np >= MULTIMASK_MIN_POINTS and np <= MULTIMASK_MAX_POINTS
  local sparse, dense = self:encode_prompt({
    points = points:reshape(b, 1, points:size(2), 2), labels = labels:reshape(b, 1, labels:size(2)),
    masks = prompt.masks })
  local masks, iou, obj = self:decode_masks(feats, sparse, dense, multimask)
  masks = M.mask_no_object(masks, obj)
  local m, hh, ww = masks:size(3), masks:size(4), masks:size(5)
  masks, iou, obj = masks:reshape(b, m, hh, ww), iou:reshape(b, m), obj:reshape(b, 1)
  local best = masks
  if multimask then
    local picks = {}
    local q = iou:contiguous():ptr()
    for i = 0, b - 1 do picks[i + 1] = row_argmax(q, i * m, 1, m) end
    best = pick(masks, picks)
  end
  return { low_res_multimasks = masks, ious = iou, low_res_masks = best, object_score_logits = obj,
           multimask = multimask }
end

return M
