-- bench_vit.lua — ViT image towers in their real configurations, random
-- weights: CLIP ViT-B/16 (openai/clip-vit-base-patch16) and DINO ViT-S/8
-- (facebook/dino-vits8), one 224x224 image. bench/torch_vit.py runs the
-- same towers in PyTorch.
--
--   ./fmseg run bench/bench_vit.lua [repeats (10)]
local bench = require("benchlib")
local T = require("fmseg.tensor")
local clip = require("fmseg.models.clip")
local vit = require("fmseg.models.vit")

local repeats = tonumber((...)) or 10

local MODELS = {
  {
    name = "clip-vit-b16 224",
    build = function()
      return clip.new({
        projection_dim = 512,
        vision_config = { hidden_size = 768, intermediate_size = 3072, num_attention_heads = 12,
                          num_hidden_layers = 12, patch_size = 16, image_size = 224,
                          hidden_act = "quick_gelu", layer_norm_eps = 1e-5 },
      }, bench.random_weights(0.02, 1), { text = false })
    end,
  },
  {
    name = "dino-vits8 224",
    build = function()
      return vit.new({ model_type = "vit", hidden_size = 384, intermediate_size = 1536,
                       num_attention_heads = 6, num_hidden_layers = 12, patch_size = 8,
                       image_size = 224, hidden_act = "gelu", layer_norm_eps = 1e-6,
                       qkv_bias = true }, bench.random_weights(0.02, 2))
    end,
  },
}

local suite = bench.suite("vit")
local x = T.rand({ 1, 3, 224, 224 }, 42, -2, 2)
for _, m in ipairs(MODELS) do
  local model = m.build()
  suite:model(m.name, function() model:encode_image(x).last:free() end, { warmup = 2, repeats = repeats })
end
suite:finish()
