-- SAM 2's image encoder (fmseg.models.sam2): every tensor of the sam2-tiny
-- fixtures (made by facebookresearch/sam2's own Hiera / FpnNeck /
-- ImageEncoder, tests/tools/make_sam2_fixtures.py) within the fixtures'
-- 1e-4, the outputs' layout, the loader's refusals (missing, misshapen and
-- unknown tensors; configs the reference cannot run) and the registry.
local tap = require("tap")
local T = require("fmseg.tensor")
local safetensors = require("fmseg.io.safetensors")
local json = require("fmseg.io.json")
local models = require("fmseg.models")
local sam2 = require("fmseg.models.sam2")

local TOL = 1e-4   -- the fixtures' relative tolerance
local FIXTURES = { "tests/fixtures/sam2-tiny", "tests/fixtures/sam2-tiny-alt" }

-- Parity: every stored tensor ---------------------------------------------------------

for _, dir in ipairs(FIXTURES) do
  local meta = json.decode(assert(io.open(dir .. "/ref.json")):read("*a"))
  local ref = safetensors.open(dir .. "/ref.safetensors")
  local model = sam2.load(dir)
  local out = model:encode_image(ref:get("pixel_values"))
  local got = { vision_features = out.vision_features }
  for i, t in ipairs(out.trunk) do got["trunk." .. (i - 1)] = t end
  for i, t in ipairs(out.backbone_fpn) do got["backbone_fpn." .. (i - 1)] = t end
  for i, t in ipairs(out.vision_pos_enc) do got["vision_pos_enc." .. (i - 1)] = t end
  local names = {}
  for name in pairs(meta.tensors) do
    if name ~= "pixel_values" then names[#names + 1] = name end
  end
  table.sort(names)
  for _, name in ipairs(names) do
    if got[name] then
      tap.near(got[name], ref:get(name), TOL, ("%s: %s"):format(dir, name))
    else
      tap.ok(false, ("%s: %s computed"):format(dir, name))
    end
  end
  tap.ok(out.vision_features == out.backbone_fpn[#out.backbone_fpn],
         dir .. ": vision_features is the last level kept")
end

-- scalp: 4 stages, 3 levels kept in sam2-tiny (num_feature_levels 3), all 4 in -alt
do
  local tiny = sam2.load(FIXTURES[1])
  local alt = sam2.load(FIXTURES[2])
  local px = safetensors.open(FIXTURES[1] .. "/ref.safetensors"):get("pixel_values")
  local out = tiny:encode_image(px)
  tap.ok(#out.trunk == 4 and #out.backbone_fpn == 3 and #out.vision_pos_enc == 3,
         "sam2-tiny: 4 stages, scalp 1 keeps 3 levels")
  tap.eq(T.shape_string(out.vision_features:shape()), "[1, 8, 8, 8]", "sam2-tiny: vision_features shape")
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
        "vision_encoder.neck.convs.1.weight: got [8, 16, 3, 3], expected [8, 16, 1, 1]",
        function(t) t["vision_encoder.neck.convs.1.weight"] = T.zeros({ 8, 16, 3, 3 }) end)
refused("a misshapen position embedding is refused",
        "vision_encoder.backbone.pos_embed: got [1, 4, 5, 5], expected [1, 4, 7, 7]",
        function(t) t["vision_encoder.backbone.pos_embed"] = T.zeros({ 1, 4, 5, 5 }) end)
refused("the width-changing projection of a stage's first block is required",
        "vision_encoder.backbone.blocks.10.proj.weight: missing",
        function(t) t["vision_encoder.backbone.blocks.10.proj.weight"] = nil end)
refused("an unknown vision_encoder tensor is refused",
        "unknown tensor(s) in the weights, e.g. vision_encoder.backbone.blocks.12.attn.qkv.weight",
        function(t) t["vision_encoder.backbone.blocks.12.attn.qkv.weight"] = T.zeros({ 3, 3 }) end)
do
  local ok, err = load_edited(function(t) t["mask_decoder.iou_token.weight"] = T.zeros({ 1, 8 }) end)
  tap.ok(ok, "tensors of the parts not ported yet (mask_decoder.*) are left alone", err)
end

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
  function stand_in.get() return T.zeros({ 1 }) end
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

-- Registry ---------------------------------------------------------------------------------

tap.ok(models.load("sam2", FIXTURES[1]) == models.load("sam2", FIXTURES[1]), "models.load('sam2', dir), cached")
tap.raises(function() models.load("sam", FIXTURES[1]) end,
           "a SAM 2 model (model_type sam2); only its image encoder is supported so far, as kind sam2",
           "kind sam tells a SAM 2 directory apart")

os.exit(tap.done())
