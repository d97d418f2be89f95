-- SAM 2 (fmseg.models.sam2): every tensor of the sam2-tiny fixtures (made
-- by facebookresearch/sam2's own SAM2Base, SAM2ImagePredictor._predict and
-- _forward_sam_heads, tests/tools/make_sam2_fixtures.py) within the
-- fixtures' 1e-4, the outputs' layout, the decoder's decisions (dynamic
-- multimask, object-score masking, multimask by point count), the
-- loader's refusals (missing, misshapen and unknown tensors; configs the
-- reference cannot run) and the registry.
local tap = require("tap")
local T = require("fmseg.tensor")
local safetensors = require("fmseg.io.safetensors")
local json = require("fmseg.io.json")
local models = require("fmseg.models")
local sam2 = require("fmseg.models.sam2")

local TOL = 1e-4   -- the fixtures' relative tolerance
local FIXTURES = { "tests/fixtures/sam2-tiny", "tests/fixtures/sam2-tiny-alt" }

-- Parity: every stored tensor ---------------------------------------------------------

local family = require("fmseg.parity.sam2")
for _, dir in ipairs(FIXTURES) do
  local meta = json.decode(assert(io.open(dir .. "/ref.json")):read("*a"))
  local ref = safetensors.open(dir .. "/ref.safetensors")
  local got = family.compute(dir, ref)
  local is_input = {}
  for _, n in ipairs(family.inputs) do is_input[n] = true end
  local names = {}
  for name in pairs(meta.tensors) do
    if not is_input[name] then names[#names + 1] = name end
  end
  table.sort(names)
  for _, name in ipairs(names) do
    if got[name] then
      tap.near(got[name], ref:get(name), TOL, ("%s: %s"):format(dir, name))
    else
      tap.ok(false, ("%s: %s computed"):format(dir, name))
    end
  end
end

-- scalp: 4 stages, 3 levels kept (num_feature_levels 3)
do
  local tiny = sam2.load(FIXTURES[1])
  local alt = sam2.load(FIXTURES[2])
  local px = safetensors.open(FIXTURES[1] .. "/ref.safetensors"):get("pixel_values")
  local out = tiny:encode_image(px)
  tap.ok(#out.trunk == 4 and #out.backbone_fpn == 3 and #out.vision_pos_enc == 3,
         "sam2-tiny: 4 stages, scalp 1 keeps 3 levels")
  tap.eq(T.shape_string(out.vision_features:shape()), "[1, 16, 8, 8]", "sam2-tiny: vision_features shape")
  tap.ok(out.vision_features == out.backbone_fpn[#out.backbone_fpn], "vision_features is the last level kept")
  tap.eq(#alt.neck.convs, 4, "sam2-tiny-alt: one neck conv per stage")
  tap.raises(function() tiny:encode_image(T.zeros({ 1, 3, 64, 64 })) end,
             "pixel_values [1, 3, 64, 64], expected [B, 3, 128, 128]", "a wrong input size is refused")
end

-- Refusals ---------------------------------------------------------------------------------

local function load_edited(edit, cfg_edit)
  local tmp = tap.scratch_model(FIXTURES[1], edit, cfg_edit)
  local ok, err = pcall(sam2.load, tmp)
  tap.remove_model(tmp)
  return ok, tostring(err)
end

local function refused(name, pattern, edit, cfg_edit)
  local ok, err = load_edited(edit, cfg_edit)
  tap.ok(not ok and err:find(pattern, 1, true) ~= nil, name, ok and "loaded" or err)
end

-- block 3 is the first of stage 2: 8 → 16 wide, qkv (48, 8)
refused("a missing tensor is named with its expected shape",
        "vision_encoder.backbone.blocks.3.attn.qkv.weight: missing from the weights in",
        function(t) t["vision_encoder.backbone.blocks.3.attn.qkv.weight"] = nil end)
do
  local ok, err = load_edited(function(t) t["vision_encoder.backbone.blocks.3.attn.qkv.weight"] = nil end)
  tap.ok(not ok and err:find("(expected [48, 8])", 1, true) ~= nil, "... and the shape it should have", err)
end
refused("a misshapen tensor is named with both shapes",
        "vision_encoder.neck.convs.1.weight: got [16, 16, 3, 3], expected [16, 16, 1, 1]",
        function(t) t["vision_encoder.neck.convs.1.weight"] = T.zeros({ 16, 16, 3, 3 }) end)
refused("a misshapen position embedding is refused",
        "vision_encoder.backbone.pos_embed: got [1, 4, 5, 5], expected [1, 4, 7, 7]",
        function(t) t["vision_encoder.backbone.pos_embed"] = T.zeros({ 1, 4, 5, 5 }) end)
refused("the width-changing projection of a stage's first block is required",
        "vision_encoder.backbone.blocks.10.proj.weight: missing",
        function(t) t["vision_encoder.backbone.blocks.10.proj.weight"] = nil end)
refused("an unknown vision_encoder tensor is refused",
        "unknown tensor(s) in the weights, e.g. vision_encoder.backbone.blocks.12.attn.qkv.weight",
        function(t) t["vision_encoder.backbone.blocks.12.attn.qkv.weight"] = T.zeros({ 3, 3 }) end)
refused("a missing mask decoder tensor is named with its expected shape",
        "mask_decoder.conv_s0.weight: missing from the weights in",
        function(t) t["mask_decoder.conv_s0.weight"] = nil end)
do
  local ok, err = load_edited(function(t) t["mask_decoder.conv_s0.weight"] = nil end)
  tap.ok(not ok and err:find("(expected [2, 16, 1, 1])", 1, true) ~= nil, "... and the shape it should have", err)
end
refused("Sam2Attention's o_proj is read (not SamModel's out_proj)",
        "mask_decoder.transformer.layers.1.cross_attn_image_to_token.o_proj.weight: missing",
        function(t) t["mask_decoder.transformer.layers.1.cross_attn_image_to_token.o_proj.weight"] = nil end)
refused("a misshapen point_embed is refused",
        "prompt_encoder.point_embed.weight: got [3, 16], expected [4, 16]",
        function(t) t["prompt_encoder.point_embed.weight"] = T.zeros({ 3, 16 }) end)
refused("the object-score head is required",
        "mask_decoder.pred_obj_score_head.layers.0.weight: missing",
        function(t) t["mask_decoder.pred_obj_score_head.layers.0.weight"] = nil end)
refused("no_memory_embedding is required",
        "no_memory_embedding: missing",
        function(t) t["no_memory_embedding"] = nil end)
refused("an unknown mask_decoder tensor is refused",
        "unknown tensor(s) in the weights, e.g. mask_decoder.extra.weight",
        function(t) t["mask_decoder.extra.weight"] = T.zeros({ 1 }) end)
do
  local ok, err = load_edited(function(t) t["memory_attention.layers.0.self_attn.q_proj.weight"] = T.zeros({ 1, 16 }) end)
  tap.ok(ok, "the memory (video) parts of a checkpoint are left alone", err)
end
refused("the mask decoder takes three feature levels",
        "num_feature_levels 4: the mask decoder takes three levels",
        nil, function(cfg) cfg.vision_config.num_feature_levels = 4 end)
refused("the prompt encoder's image size must be the backbone's",
        "prompt encoder image_size 64, expected the backbone's 128x128",
        nil, function(cfg) cfg.prompt_encoder_config.image_size = 64 end)
refused("the embedding grid must be the lowest level's",
        "feature level 0 is 32x32, the mask decoder needs 16x16 (image_size / patch_size = 4, times 4)",
        nil, function(cfg) cfg.prompt_encoder_config.patch_size = 32 end)
refused("transformers' MLP depth quirk is refused beyond the original's 2",
        "mask decoder num_hidden_layers 3",
        nil, function(cfg) cfg.mask_decoder_config.num_hidden_layers = 3 end)

local function edit_backbone(f)
  return function(cfg) f(cfg.vision_config.backbone_config, cfg.vision_config) end
end
refused("a query-pooling block under global attention is refused (the reference divides by its window)",
        "block 3 pools its queries under global attention",
        nil, edit_backbone(function(b) b.global_attention_blocks = { 3 } end))
refused("a pooling window that does not tile the pooled grid is refused",
        "block 3: 3-wide windows over 16x16 do not pool by [2, 2] into 1-wide windows over 8x8",
        nil, edit_backbone(function(b) b.window_size_per_stage = { 8, 3, 14, 7 } end))
refused("a top-down level whose sizes do not double is refused",
        "fpn_top_down_levels: level 2 is 8x8, twice level 3 (8x8) is not",
        nil, edit_backbone(function(b) b.num_query_pool_stages = 2 end))
refused("backbone_channel_list must be the stage widths from the last",
        "backbone_channel_list [32, 16, 8, 8], expected the stage widths from the last: [32, 16, 8, 4]",
        nil, edit_backbone(function(_, v) v.backbone_channel_list = { 32, 16, 8, 8 } end))
refused("an fpn_hidden_size the sine encoding cannot split is refused",
        "fpn_hidden_size 6 is not a multiple of 4",
        nil, edit_backbone(function(_, v) v.fpn_hidden_size = 6 end))
refused("another model_type is refused",
        "model_type 'sam', expected sam2",
        nil, function(cfg) cfg.model_type = "sam" end)

-- The four published sizes' configs (transformers' convert_sam2_to_hf.py
-- get_config; SAM 2.0 and 2.1 share them) pass the loader's checks: the
-- weights here are stand-ins, only the configuration is under test.
do
  local stand_in = { dir = "(stand-in)" }
  function stand_in.has() return true end
  -- (the prompt encoder cuts point_embed into rows at load)
  function stand_in.get(_, name, shape)
    return T.zeros(name == "prompt_encoder.point_embed.weight" and shape or { 1 })
  end
  local sizes = {
    tiny = {},
    small = { blocks_per_stage = { 1, 2, 11, 2 }, global_attention_blocks = { 7, 10, 13 } },
    base_plus = { hidden_size = 112, embed_dim_per_stage = { 112, 224, 448, 896 },
                  num_attention_heads_per_stage = { 2, 4, 8, 16 }, blocks_per_stage = { 2, 3, 16, 3 },
                  global_attention_blocks = { 12, 16, 20 }, window_positional_embedding_background_size = { 14, 14 },
                  _channels = { 896, 448, 224, 112 } },
    large = { hidden_size = 144, embed_dim_per_stage = { 144, 288, 576, 1152 },
              num_attention_heads_per_stage = { 2, 4, 8, 16 }, blocks_per_stage = { 2, 6, 36, 4 },
              global_attention_blocks = { 23, 33, 43 }, window_size_per_stage = { 8, 4, 16, 8 },
              _channels = { 1152, 576, 288, 144 } },
  }
  for _, name in ipairs({ "tiny", "small", "base_plus", "large" }) do
    local b = sizes[name]
    local channels = b._channels
    b._channels = nil
    local cfg = { model_type = "sam2", vision_config = { backbone_config = b, backbone_channel_list = channels } }
    local ok, m = pcall(sam2.new, cfg, stand_in)
    tap.ok(ok and #m.backbone.blocks == (({ tiny = 12, small = 16, base_plus = 24, large = 48 })[name])
           and m.neck.position_encoding[1]:size(3) == 256,
           "sam2.1-hiera-" .. name .. "'s config passes the checks (256x256 level 0)", not ok and m or nil)
  end
end

-- Decisions --------------------------------------------------------------------------------

do
  -- dynamic multimask: token 0's mask (row 1) when stable, else the best IoU of the others
  local function case(m0, ious)
    local masks = T.zeros({ 1, 3, 10, 10 })
    masks:select(2, 1):fill(10)
    local band = masks:select(2, 1):narrow(2, 1, m0)          -- m0 rows of 10 at 0.01 (within +-0.05)
    band:fill(0.01)
    return sam2.dynamic_multimask(masks, T.from_table({ ious }), 0.05, 0.98)[1]
  end
  tap.eq(case(0, { 0.1, 0.5, 0.9 }), 1, "a stable single mask is kept (stability 1)")
  tap.eq(case(1, { 0.1, 0.5, 0.9 }), 3, "10% within +-delta: unstable, the best multimask output")
  tap.eq(case(1, { 0.9, 0.7, 0.7 }), 2, "... the first of equal IoUs, token 0's own IoU not counted")
  local empty = T.full({ 1, 2, 4, 4 }, -5)
  tap.eq(sam2.dynamic_multimask(empty, T.from_table({ { 0.1, 0.9 } }), 0.05, 0.98)[1], 1,
         "nothing above -delta: stability 1, token 0's mask")
  -- object-score masking: not positive → -1024
  local masks = T.full({ 1, 3, 1, 2, 2 }, 3)
  local out = sam2.mask_no_object(masks, T.from_table({ { { 0.5 } }, { { 0 } }, { { -2 } } }):reshape(1, 3, 1))
  local v = out:values()
  tap.ok(v[1] == 3 and v[5] == -1024 and v[9] == -1024, "masks at -1024 where the object score is <= 0")
  -- multimask by point count (multimask_min_pt_num 0, max 1) and the prompt layout
  local model = sam2.load(FIXTURES[1])
  local ref = safetensors.open(FIXTURES[1] .. "/ref.safetensors")
  local feats = model:image_features(model:encode_image(ref:get("pixel_values")))
  local one = model:sam_heads(feats, { points = T.from_table({ { { 10, 20 } } }) })
  local two = model:sam_heads(feats, { points = T.from_table({ { { 10, 20 }, { 50, 60 } } }) })
  local none = model:sam_heads(feats, {})
  tap.ok(one.multimask and one.low_res_multimasks:size(2) == 3 and one.low_res_masks:size(2) == 1,
         "one point: multimask, the best of 3")
  tap.ok(not two.multimask and two.low_res_multimasks:size(2) == 1, "two points: one mask")
  tap.ok(none.multimask and none.low_res_multimasks:size(2) == 3, "no points: multimask (0 points)")
  local sparse = model:encode_prompt({ points = T.zeros({ 1, 2, 3, 2 }), boxes = T.zeros({ 1, 2, 4 }) })
  tap.eq(T.shape_string(sparse:shape()), "[1, 2, 6, 16]", "box corners, points, a not-a-point: 6 tokens")
  local sparse_box = model:encode_prompt({ boxes = T.zeros({ 1, 1, 4 }) })
  tap.eq(T.shape_string(sparse_box:shape()), "[1, 1, 3, 16]", "a box alone: corners and a not-a-point")
  tap.raises(function() model:encode_prompt({ points = T.zeros({ 1, 2, 3, 2 }), boxes = T.zeros({ 1, 1, 4 }) }) end,
             "1 x 2 point sets but 1 x 1 boxes", "one box per point set")
  tap.raises(function() model:encode_prompt({ masks = T.zeros({ 1, 1, 16, 16 }) }) end,
             "masks [1, 1, 16, 16], expected [M, 1, 32, 32]", "a mask prompt at another size is refused")
end

-- Registry ---------------------------------------------------------------------------------

tap.ok(models.load("sam2", FIXTURES[1]) == models.load("sam2", FIXTURES[1]), "models.load('sam2', dir), cached")
tap.eq(models.load("sam", FIXTURES[1]).family, "sam2", "kind sam loads a SAM 2 directory as SAM 2")
tap.ok(models.load("sam", FIXTURES[1]) == models.load("sam2", FIXTURES[1]), "one model for kinds sam and sam2")
tap.ok(models.load("sam", "tests/fixtures/sam-alt").family == nil, "kind sam loads a SAM directory as SAM")

os.exit(tap.done())
