-- fmseg.models.sd_scheduler — the DDIM scheduler's arithmetic, read from a
-- diffusers scheduler/scheduler_config.json.
--
--   local sched = sd_scheduler.load(dir .. "/scheduler")
--   local noisy = sched:add_noise(latents, noise, 100)
--   local ts = sched:set_timesteps(50)                 -- {981, 961, ..., 1}
--   local prev = sched:step(eps, ts[1], noisy, #ts)     -- one DDIM step, eta 0
--
-- ref: diffusers/schedulers/scheduling_ddim.py, DDIMScheduler.
-- Betas, alphas and their cumulative product are float32 tensors in
-- diffusers; we round every value to float32 where they do, so that
-- alphas_cumprod matches theirs to the last bits, and keep them as a Lua
-- array (1000 numbers) plus a tensor.
local hf = require("fmseg.io.hf")
local T = require("fmseg.tensor")
local f32 = require("fmseg.models.sd_blocks").f32

local M = {}
local Scheduler = {}
Scheduler.__index = Scheduler

-- torch.linspace(start, stop, n, dtype=float32): start, stop and step are
-- float32, and the second half counts back from stop, as torch's CPU kernel.
local function linspace_f32(start, stop, n)
  local a, b = f32(start), f32(stop)
  local step = n > 1 and f32((b - a) / (n - 1)) or 0
  local out, half = {}, math.floor(n / 2)
  for i = 0, n - 1 do
    if i < half then out[i + 1] = f32(a + f32(step * i))
    else out[i + 1] = f32(b - f32(step * (n - 1 - i))) end
  end
  return out
end
M.linspace_f32 = linspace_f32

-- ref: scheduling_ddim.py, betas_for_alpha_bar (cosine), in float64 then
-- stored as float32.
local function cosine_betas(n, max_beta)
  local function alpha_bar(t) return math.cos((t + 0.008) / 1.008 * math.pi / 2) ^ 2 end
  local out = {}
  for i = 0, n - 1 do
    out[i + 1] = f32(math.min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta))
  end
  return out
end

-- Betas of `beta_schedule` as float32 numbers.
function M.betas(config)
  local n = hf.cfg(config, "num_train_timesteps", 1000)
  local schedule = hf.cfg(config, "beta_schedule", "linear")
  local trained = hf.cfg(config, "trained_betas", false)
  if trained then
    local out = {}
    for i, b in ipairs(trained) do out[i] = f32(b) end
    return out
  end
  local lo, hi = hf.cfg(config, "beta_start", 0.0001), hf.cfg(config, "beta_end", 0.02)
  if schedule == "linear" then
    return linspace_f32(lo, hi, n)
  elseif schedule == "scaled_linear" then
    local out = linspace_f32(lo ^ 0.5, hi ^ 0.5, n)
    for i = 1, n do out[i] = f32(out[i] * out[i]) end
    return out
  elseif schedule == "squaredcos_cap_v2" then
    return cosine_betas(n, 0.999)
  end
  error(("scheduler_config.json: beta_schedule '%s' is not supported (linear, scaled_linear, "
         .. "squaredcos_cap_v2)"):format(tostring(schedule)), 0)
end

-- torch.cumprod on a float32 CPU tensor accumulates in double and rounds
-- each output.
local function cumprod_f32(values)
  local out, acc = {}, 1.0
  for i, v in ipairs(values) do
    acc = acc * v
    out[i] = f32(acc)
  end
  return out
end

-- ref: scheduling_ddim.py, rescale_zero_terminal_snr (float32 tensors).
local function rescale_zero_terminal_snr(betas)
  local alphas = {}
  for i, b in ipairs(betas) do alphas[i] = f32(1 - b) end
  local acp = cumprod_f32(alphas)
  local n = #acp
  local sq = {}
  for i = 1, n do sq[i] = f32(math.sqrt(acp[i])) end
  local a0, aT = sq[1], sq[n]
  local factor = f32(a0 / f32(a0 - aT))
  local bar = {}
  for i = 1, n do
    local s = f32(f32(sq[i] - aT) * factor)
    bar[i] = f32(s * s)
  end
  local out = { f32(1 - bar[1]) }
  for i = 2, n do out[i] = f32(1 - f32(bar[i] / bar[i - 1])) end
  return out
end

-- config: the decoded scheduler_config.json.
function M.new(config)
  local self = setmetatable({ config = config }, Scheduler)
  self.num_train_timesteps = hf.cfg(config, "num_train_timesteps", 1000)
  self.prediction_type = hf.cfg(config, "prediction_type", "epsilon")
  self.timestep_spacing = hf.cfg(config, "timestep_spacing", "leading")
  self.steps_offset = hf.cfg(config, "steps_offset", 0)
  self.clip_sample = hf.cfg(config, "clip_sample", true)
  self.clip_sample_range = hf.cfg(config, "clip_sample_range", 1.0)
  if hf.cfg(config, "thresholding", false) then
    error("scheduler_config.json: thresholding (dynamic thresholding) is not supported", 0)
  end
  local betas = M.betas(config)
  if hf.cfg(config, "rescale_betas_zero_snr", false) then betas = rescale_zero_terminal_snr(betas) end
  local alphas = {}
  for i, b in ipairs(betas) do alphas[i] = f32(1 - b) end
  self.betas = betas
  self.alphas_cumprod = cumprod_f32(alphas)
  self.final_alpha_cumprod = hf.cfg(config, "set_alpha_to_one", true) and 1.0 or self.alphas_cumprod[1]
  return self
end

function M.load(dir)
  local path = dir .. "/scheduler_config.json"
  return M.new(hf.read_json(path))
end

-- alphas_cumprod as a float32 tensor [num_train_timesteps]
function Scheduler:alphas_cumprod_tensor()
  return T.from_table(self.alphas_cumprod)
end

-- ᾱ at integer timestep t (0-based, as diffusers indexes it)
function Scheduler:alpha_cumprod(t)
  if t % 1 ~= 0 or t < 0 or t >= self.num_train_timesteps then
    error(("scheduler: timestep %s outside 0..%d"):format(tostring(t), self.num_train_timesteps - 1), 2)
  end
  return self.alphas_cumprod[t + 1]
end

-- ref: DDIMScheduler.add_noise: sqrt(ᾱ_t) x + sqrt(1 - ᾱ_t) noise, with the
-- two factors rounded to float32 as torch computes them.
function Scheduler:add_noise(x, noise, t)
  local acp = self:alpha_cumprod(t)
  local a = f32(math.sqrt(acp))
  local s = f32(math.sqrt(f32(1 - acp)))
  return (x * a):add_(noise * s)
end

-- ref: DDIMScheduler.set_timesteps → the descending list of timesteps.
function Scheduler:set_timesteps(steps)
  local n = self.num_train_timesteps
  if steps < 1 or steps > n then error(("scheduler: %d steps, must be 1..%d"):format(steps, n), 2) end
  local out = {}
  if self.timestep_spacing == "linspace" then
    for i = steps - 1, 0, -1 do
      local v = steps > 1 and i * (n - 1) / (steps - 1) or 0
      out[#out + 1] = math.floor(v + 0.5) -- numpy rounds half to even; these are never .5
    end
  elseif self.timestep_spacing == "leading" then
    local ratio = math.floor(n / steps)
    for i = steps - 1, 0, -1 do out[#out + 1] = i * ratio + self.steps_offset end
  elseif self.timestep_spacing == "trailing" then
    local ratio = n / steps
    local t = n
    while t > 0 do
      local r = math.floor(t + 0.5)
      if r - t == 0.5 and r % 2 == 1 then r = r - 1 end -- numpy: half to even
      out[#out + 1] = r - 1
      t = t - ratio
    end
  else
    error(("scheduler_config.json: timestep_spacing '%s' is not supported"):format(self.timestep_spacing), 0)
  end
  return out
end

-- ref: DDIMScheduler.step with eta = 0. `steps` is the number of inference
-- steps (the gap to the previous timestep is num_train_timesteps // steps).
-- Returns prev_sample, pred_original_sample.
function Scheduler:step(model_output, t, sample, steps)
  local prev_t = t - math.floor(self.num_train_timesteps / steps)
  local acp = self:alpha_cumprod(t)
  local acp_prev = prev_t >= 0 and self:alpha_cumprod(prev_t) or self.final_alpha_cumprod
  local beta = f32(1 - acp)
  local sa, sb = f32(math.sqrt(acp)), f32(math.sqrt(beta))
  local x0, eps
  if self.prediction_type == "epsilon" then
    x0 = (sample - model_output * sb) / sa
    eps = model_output
  elseif self.prediction_type == "sample" then
    x0 = model_output
    eps = (sample - model_output * sa) / sb
  elseif self.prediction_type == "v_prediction" then
    x0 = sample * sa - model_output * sb
    eps = model_output * sa + sample * sb
  else
    error(("scheduler_config.json: prediction_type '%s' is not supported (epsilon, sample, v_prediction)")
          :format(tostring(self.prediction_type)), 0)
  end
  if self.clip_sample then x0 = x0:clamp(-self.clip_sample_range, self.clip_sample_range) end
  local dir = eps * f32(math.sqrt(f32(1 - acp_prev)))
  local prev = (x0 * f32(math.sqrt(acp_prev))):add_(dir)
  return prev, x0
end

return M
