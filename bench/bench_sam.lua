-- bench_sam.lua — SAM ViT-B (facebook/sam-vit-base's config, random
-- weights): the image encoder at 1024x1024 (set_image) against its GEMM
-- floor and bench/torch_sam.py, then the prompt path, one point with three
-- masks and a batch of points as the automatic mask generator sends them,
-- the decoder on 64 points against its floor, and the automatic mask
-- generator on the bundled photo (beside the original's, see
-- bench/torch_sam.py and FMSEG_SAM_SRC). Skipped with FMSEG_BENCH_QUICK=1.
--
--   ./fmseg run bench/bench_sam.lua [encoder repeats (1)] [prompt batch (16)]
local bench = require("benchlib")
if bench.quick() then return print("bench_sam: skipped (FMSEG_BENCH_QUICK)") end

-- The encoder's attention is core/sam_attention.c, called from sam.lua
-- directly: its q kᵀ and p v per window and head join the floor.
local restore = bench.hook_c("fm_sam_attention", "attention", function(_, q, _, _, heads)
  local n, t, c = unpack(q:shape())
  bench.note("attention", n * heads, t, t, c / heads, 0, 1)
  bench.note("attention", n * heads, t, c / heads, t, 0, 0)
end)
bench.hook_sam_decoder()          -- the decoder's kernels (core/sam_decoder.c)
local sam = require("fmseg.models.sam")
restore()
local T = require("fmseg.tensor")

local args = { ... }
local repeats, batch = tonumber(args[1]) or 1, tonumber(args[2]) or 16

-- facebook/sam-vit-base's config.json (these are also SamConfig's defaults)
local CONFIG = {
  vision_config = {
    hidden_size = 768, num_hidden_layers = 12, num_attention_heads = 12, mlp_dim = 3072,
    window_size = 14, global_attn_indexes = { 2, 5, 8, 11 }, patch_size = 16, image_size = 1024,
    output_channels = 256, num_pos_feats = 128,
  },
  prompt_encoder_config = { hidden_size = 256, image_size = 1024, patch_size = 16 },
  mask_decoder_config = { hidden_size = 256 },
}

local suite = bench.suite("sam")
local model = sam.new(CONFIG, bench.random_weights(0.02, 1))
local predictor = require("fmseg.sam.predictor").new(model)
local size = model.config.vision.image_size
local x = T.randn({ 1, 3, size, size }, 3)
-- a 1024x1024 encoder pass is ~0.9 TFLOP: one run unless asked
suite:model(("sam-vit-b encoder %d"):format(size), function() predictor:set_pixel_values(x, { 768, 1024 }) end,
  { warmup = repeats > 1 and 1 or 0, repeats = repeats })

-- one foreground point, three masks at 768x1024
local prompt = { points = { { 500, 375 } }, labels = { 1 } }
predictor:predict(prompt)
local times = {}
for i = 1, 5 do
  local t0 = bench.now()
  predictor:predict(prompt)
  times[i] = bench.now() - t0
end
suite:add({ name = "sam prompt, 1 point", ms = bench.median(times) * 1e3 })

-- a batch of single-point prompts (one run: the batch is the repetition)
local pts, labels = T.rand({ batch, 1, 2 }, 5, 0, 768), T.ones({ batch, 1 })
local t0 = bench.now()
predictor:predict_batch(pts, labels)
suite:add({ name = ("sam prompt, batch of %d points"):format(batch), ms = (bench.now() - t0) * 1e3 })

-- The mask decoder on a batch of 64 point prompts against its floor
-- (bench/bench_sam_decoder.lua has it op by op)
do
  local pts64 = T.rand({ 1, 64, 1, 2 }, 9, 0, 1024)
  local sparse, dense = model:encode_prompt({ points = pts64, labels = T.ones({ 1, 64, 1 }) })
  local emb = predictor.image_embeddings
  suite:model("sam-vit-b decoder, 64 points", function()
    local m, iou = model:decode_masks(emb, sparse, dense, true)
    m:free(); iou:free()
  end, { warmup = 1, repeats = 1 })
end

-- The automatic mask generator on the bundled photo, encoder included: 32x32
-- points in batches of 64 with segment-anything's default thresholds, and
-- with the predicted-IoU and stability filters off (every mask upsampled,
-- scored and encoded: the worst case). One run each; PyTorch's are the
-- original SamAutomaticMaskGenerator (bench/torch_sam.py, FMSEG_SAM_SRC).
-- With random weights the filters keep what the random IoU head says:
-- the masks found are printed beside each.
local amg = require("fmseg.sam.amg")
local image = require("fmseg.image")
local photo = image.load("tests/data/astronaut.jpg")
for _, row in ipairs({ { "sam-vit-b amg 32x32, defaults", {} },
                       { "sam-vit-b amg 32x32, filters off", { pred_iou_thresh = 0, stability_score_thresh = 0 } } }) do
  local opts = { progress = false }
  for k, v in pairs(row[2]) do opts[k] = v end
  local gen = amg.new(predictor, opts)
  collectgarbage()
  local t1 = bench.now()
  local records = gen:generate(photo)
  suite:add({ name = row[1], ms = (bench.now() - t1) * 1e3 })
  print(("|   %d masks, load average %s"):format(#records, bench.loadavg()))
end
suite:finish(suite.torch["sam-vit-b amg 32x32, defaults"] and "" or
  "PyTorch rows: install python3-torch and set FMSEG_SAM_SRC to a segment-anything checkout (README)")
