-- Parity of fmseg.models.sd against diffusers' StableDiffusionPipeline
-- parts (fixture family "stable-diffusion"). Each stage runs on what the
-- previous stage of ours computed, as a pipeline would: image → VAE
-- posterior → latents → add_noise → UNet (one row per prompt, all on the
-- same noisy latent, every attention map captured); latents → VAE decode.
local sd = require("fmseg.models.sd")
local T = require("fmseg.tensor")

local M = {}

M.inputs = { "image", "noise", "timestep", "input_ids" }

function M.compute(dir, ref)
  local pipe = sd.load(dir, { parts = { "text_encoder", "unet", "vae", "scheduler" } })
  local out = {}

  local mean, std = pipe.vae:encode(ref:get("image"))
  out["vae.latent_mean"], out["vae.latent_std"] = mean, std
  local latents = pipe.vae:latents(mean)
  out.latents = latents
  out["vae.decoded"] = pipe.vae:decode(pipe.vae:unscale(latents))

  out["scheduler.alphas_cumprod"] = pipe.scheduler:alphas_cumprod_tensor()
  local t = ref:get("timestep"):item()
  local noisy = pipe.scheduler:add_noise(latents, ref:get("noise"), t)
  out.noisy_latents = noisy

  local text = pipe.text_encoder:forward(ref:get("input_ids"))
  out.text_embeddings = text
  local rows = {}
  for i = 1, text:size(1) do rows[i] = noisy end
  local cap = sd.attention.capture()
  out["unet.eps"] = pipe.unet:forward(T.cat(rows, 1), t, text, { capture = cap })
  for _, name in ipairs(cap.names) do out["attn." .. name] = cap.maps[name] end
  return out
end

return M
