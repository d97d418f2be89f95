-- fmseg.models.sd — a Stable Diffusion 1.x / 2.x pipeline in the diffusers
-- layout: model_index.json with text_encoder/, tokenizer/, unet/, vae/,
-- scheduler/ beside it. Every size comes from the sub-folders' configs;
-- weights are diffusion_pytorch_model[.variant].safetensors (or sharded).
--
--   local sd = require("fmseg.models.sd")
--   local pipe = sd.load("stable-diffusion-v1-5")      -- {variant = "fp16"}
--   local text = pipe:encode_prompt({ "a photo of a cat", "" })  -- (2, 77, 768)
--   local latents = pipe:encode_image(image)          -- image (1, 3, H, W) in [-1, 1]
--   local noisy = pipe.scheduler:add_noise(latents, noise, 100)
--   local cap = sd.attention.capture({ kinds = { "attn2" } })
--   local eps = pipe.unet:forward(T.cat({ noisy, noisy }, 1), 100, text, { capture = cap })
--   local maps = sd.attention.aggregate(cap, { kind = "attn2", size = { 64, 64 } })
--
-- Parts (each its own module, immutable once loaded):
--   pipe.text_encoder  fmseg.models.sd_text       CLIPTextModel
--   pipe.unet          fmseg.models.sd_unet       UNet2DConditionModel
--   pipe.vae           fmseg.models.sd_vae        AutoencoderKL
--   pipe.scheduler     fmseg.models.sd_scheduler  DDIMScheduler arithmetic
--   pipe.tokenizer     fmseg.text.tokenizer            CLIP BPE
-- sd.attention is fmseg.models.sd_attention (captures and map helpers).
--
-- ref: diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion.py,
-- StableDiffusionPipeline (encode_prompt, prepare_latents, decode_latents).
local hf = require("fmseg.io.hf")
local T = require("fmseg.tensor")

local M = {}
M.attention = require("fmseg.models.sd_attention")
M.unet = require("fmseg.models.sd_unet")
M.vae = require("fmseg.models.sd_vae")
M.scheduler = require("fmseg.models.sd_scheduler")
M.text = require("fmseg.models.sd_text")

local Pipeline = {}
Pipeline.__index = Pipeline

local PARTS = { "text_encoder", "tokenizer", "unet", "vae", "scheduler" }

-- What model_index.json must say for each part we load.
local EXPECTED = {
  text_encoder = "CLIPTextModel", unet = "UNet2DConditionModel", vae = "AutoencoderKL",
}

local function check_index(dir, index, part)
  local entry = index[part]
  local want = EXPECTED[part]
  if want and type(entry) == "table" and entry[2] ~= want then
    error(("%s/model_index.json: %s is %s, fmseg loads %s"):format(dir, part, tostring(entry[2]), want), 0)
  end
end

-- dir: the pipeline folder. opts.variant: weights variant ("fp16", stored
-- as float16 and converted to float32 on load); opts.parts: which parts to
-- load (default all five), e.g. { "unet", "vae", "scheduler" }.
function M.load(dir, opts)
  opts = opts or {}
  dir = dir:gsub("/+$", "")
  local index = hf.read_json(dir .. "/model_index.json")
  local self = setmetatable({ dir = dir, index = index }, Pipeline)
  for _, part in ipairs(opts.parts or PARTS) do
    check_index(dir, index, part)
    local sub = dir .. "/" .. part
    if part == "text_encoder" then self.text_encoder = M.text.load(sub, opts)
    elseif part == "tokenizer" then self.tokenizer = require("fmseg.text.tokenizer").load(sub)
    elseif part == "unet" then self.unet = M.unet.load(sub, opts)
    elseif part == "vae" then self.vae = M.vae.load(sub, opts)
    elseif part == "scheduler" then self.scheduler = M.scheduler.load(sub)
    else error(("sd.load: unknown part '%s' (%s)"):format(tostring(part), table.concat(PARTS, ", ")), 2) end
  end
  return self
end

local function need(self, part)
  if not self[part] then error(("sd pipeline: %s was not loaded (opts.parts)"):format(part), 3) end
  return self[part]
end

-- texts → input_ids (N, L) int32, padded to the tokenizer's context length
-- with its pad token (SD 1.x pads with <|endoftext|>, SD 2.x with "!").
function Pipeline:tokenize(texts)
  local rows = need(self, "tokenizer"):encode_batch(texts)
  return T.from_table(rows, "int32")
end

-- texts (or input_ids) → text embeddings (N, L, hidden) for the UNet.
-- opts.clip_skip as the diffusers pipelines.
function Pipeline:encode_prompt(texts, opts)
  local ids = T.is_tensor(texts) and texts or self:tokenize(texts)
  return need(self, "text_encoder"):forward(ids, opts)
end

-- image (N, 3, H, W) in [-1, 1] → latents (N, C, H/8, W/8): the
-- posterior mean, shifted and scaled as the pipelines feed the UNet (no
-- sampling: DiffSeg and the cross-attention methods use the mean).
function Pipeline:encode_image(image)
  local vae = need(self, "vae")
  local mean, std = vae:encode(image)
  std:free()
  local latents = vae:latents(mean)
  mean:free()
  return latents
end

-- latents (N, C, h, w) → image (N, 3, 8h, 8w), roughly in [-1, 1]
function Pipeline:decode_latents(latents)
  local vae = need(self, "vae")
  local z = vae:unscale(latents)
  local image = vae:decode(z)
  z:free()
  return image
end

-- Weights of the right shapes filled with N(0, scale²) values, standing in
-- for a checkpoint in M.unet.new / M.vae.new (benchmarks, shape tests).
-- Each tensor is made once, as asked for; w.count and w.numel say how many
-- tensors and floats were made.
function M.random_weights(scale, seed)
  local w = { count = 0, numel = 0, seed = seed or 1 }
  function w:has() return true end
  function w:get(name, shape)
    if not shape then error(name .. ": random weights need a shape", 2) end
    self.count, self.seed = self.count + 1, self.seed + 1
    local t = T.randn(shape, self.seed)
    self.numel = self.numel + t:numel()
    return t:mul_(scale or 0.02)
  end
  w.maybe = w.get
  return w
end

return M
