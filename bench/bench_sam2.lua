-- bench_sam2.lua — SAM 2.1 Hiera-B+ (facebook/sam2.1-hiera-base-plus's
-- config, random weights): the image encoder at 1024x1024 (what
-- SAM2ImagePredictor.set_image computes: Hiera, the FPN neck, conv_s0 /
-- conv_s1 and no_memory_embedding) against its GEMM floor and the
-- original sam2 code (bench/torch_sam2.py, FMSEG_SAM2_SRC), the mask
-- decoder on 64 points against its floor, then SAM 2's automatic mask
-- generator with SAM2AutomaticMaskGenerator's defaults on the bundled
-- photo beside the original's. Skipped with FMSEG_BENCH_QUICK=1.
--
--   ./fmseg run bench/bench_sam2.lua [encoder repeats (1)] [image size (1024)]
--
-- A smaller image size (e.g. 256, a multiple of 128 keeps every window
-- check of models/sam2.lua) is for smoke runs; its rows carry the size.
--
-- The floor: every product of the encoder goes through the functions
-- benchlib records: nn.linear (qkv, proj, the MLPs, the shortcut
-- projections at the stage changes), nn.conv2d (the 7x7 stride-4 patch
-- embedding as a (112, 147) . (147, 65536) product, the neck's 1x1
-- lateral convs, conv_s0 / conv_s1) and nn.attention (q kᵀ and p v per
-- window and head, pooled queries included: Tq < Tk in the first block
-- of stages 2-4). Nothing is counted analytically.
local bench = require("benchlib")
if bench.quick() then return print("bench_sam2: skipped (FMSEG_BENCH_QUICK)") end

bench.hook_sam_decoder()          -- the two-way transformer's kernels (core/sam_decoder.c), shared with SAM
local sam2 = require("fmseg.models.sam2")
local T = require("fmseg.tensor")

local args = { ... }
local repeats, size = tonumber(args[1]) or 1, tonumber(args[2]) or 1024
local tag = size == 1024 and "" or (", %d"):format(size)

-- facebook/sam2.1-hiera-base-plus's config.json: sam2.1_hiera_b+.yaml
-- (Hiera embed_dim 112, num_heads 2, the rest Hiera's defaults; FpnNeck
-- d_model 256 over [896, 448, 224, 112], top-down levels 2, 3, scalp 1) in
-- transformers' Sam2Config names. The prompt encoder and mask decoder are
-- Sam2*Config's defaults (SAM2Base._build_sam_heads' sizes).
local CONFIG = {
  model_type = "sam2",
  vision_config = {
    backbone_config = {
      hidden_size = 112, num_attention_heads = 2, num_channels = 3, image_size = { size, size },
      patch_kernel_size = { 7, 7 }, patch_stride = { 4, 4 }, patch_padding = { 3, 3 },
      query_stride = { 2, 2 }, window_positional_embedding_background_size = { 14, 14 },
      num_query_pool_stages = 3, blocks_per_stage = { 2, 3, 16, 3 },
      embed_dim_per_stage = { 112, 224, 448, 896 }, num_attention_heads_per_stage = { 2, 4, 8, 16 },
      window_size_per_stage = { 8, 4, 14, 7 }, global_attention_blocks = { 12, 16, 20 },
      mlp_ratio = 4.0, hidden_act = "gelu", layer_norm_eps = 1e-6,
    },
    backbone_channel_list = { 896, 448, 224, 112 },
    backbone_feature_sizes = { { size / 4, size / 4 }, { size / 8, size / 8 }, { size / 16, size / 16 } },
    fpn_hidden_size = 256, fpn_kernel_size = 1, fpn_stride = 1, fpn_padding = 0,
    fpn_top_down_levels = { 2, 3 }, num_feature_levels = 3, hidden_act = "gelu", layer_norm_eps = 1e-6,
  },
  prompt_encoder_config = { hidden_size = 256, image_size = size, patch_size = 16, mask_input_channels = 16,
                            num_point_embeddings = 4, hidden_act = "gelu", layer_norm_eps = 1e-6, scale = 1 },
  mask_decoder_config = {
    hidden_size = 256, hidden_act = "gelu", mlp_dim = 2048, num_hidden_layers = 2, num_attention_heads = 8,
    attention_downsample_rate = 2, num_multimask_outputs = 3, iou_head_depth = 3, iou_head_hidden_dim = 256,
    dynamic_multimask_via_stability = true, dynamic_multimask_stability_delta = 0.05,
    dynamic_multimask_stability_thresh = 0.98,
  },
}

local suite = bench.suite("sam2")
local model = sam2.new(CONFIG, bench.random_weights(0.02, 1))

-- The encoder as set_image runs it, from pixel values (the original's row
-- includes its ToTensor / Resize / Normalize of a random size x size
-- image: about 40 ms on the development machine). One run unless asked.
local x = T.randn({ 1, 3, size, size }, 3)
local function free_all(list)
  for _, t in pairs(list) do t:free() end
end
suite:model(("sam2.1-hiera-b+ encoder %d"):format(size), function()
  local enc = model:encode_image(x)
  local feats = model:image_features(enc)
  free_all(enc.trunk); free_all(enc.backbone_fpn); free_all(enc.vision_pos_enc)
  feats.image_embed:free(); free_all(feats.high_res_feats)
end, { warmup = repeats > 1 and 1 or 0, repeats = repeats, breakdown = true })

-- The mask decoder on a batch of 64 point prompts (multimask, every
-- prompt's masks made) against its floor: the two-way transformer's
-- products (nn.linear and core/sam_decoder.c's attention), the two
-- transposed convolutions and the hypernetwork product.
do
  local enc = model:encode_image(x)
  local feats = model:image_features(enc)
  local pts64 = T.rand({ 1, 64, 1, 2 }, 9, 0, size)
  local sparse, dense = model:encode_prompt({ points = pts64, labels = T.ones({ 1, 64, 1 }) })
  suite:model(("sam2.1-hiera-b+ decoder, 64 points%s"):format(tag), function()
    local m, iou, obj = model:decode_masks(feats, sparse, dense, true)
    m:free(); iou:free(); obj:free()
  end, { warmup = 1, repeats = 1 })
end

-- The automatic mask generator on the bundled photo, encoder included,
-- with SAM2AutomaticMaskGenerator's defaults (32x32 points in batches of
-- 64, pred_iou_thresh 0.8, stability_score_thresh 0.95, multimask,
-- binary masks: named, as in bench/torch_sam2.py, so that both stay alike);
-- one run. PyTorch's row is the original's (bench/torch_sam2.py). With random
-- weights the filters keep what the random IoU head says: the masks found
-- are printed.
local amg_name = "sam2.1-hiera-b+ amg 32x32, defaults" .. tag
local predictor = require("fmseg.sam.predictor").new(model)
local gen = require("fmseg.sam.amg").new(predictor, { output_mode = "binary_mask", progress = false })
local photo = require("fmseg.image").load("tests/data/astronaut.jpg")
collectgarbage()
local t0 = bench.now()
local records = gen:generate(photo)
suite:add({ name = amg_name, ms = (bench.now() - t0) * 1e3 })
print(("|   %d masks, load average %s"):format(#records, bench.loadavg()))
suite:finish(suite.torch[amg_name] and "" or
  "PyTorch rows: install python3-torch and set FMSEG_SAM2_SRC to a facebookresearch/sam2 checkout (README)")
