-- Stable Diffusion: fixture parity, attention capture, scheduler arithmetic,
-- configs other than the fixture's (shapes only, random weights).
local tap = require("tap")
local ffi = require("ffi")
local T = require("fmseg.tensor")
local parity = require("fmseg.parity")
local sd = require("fmseg.models.sd")
local A = sd.attention
local S = sd.scheduler

local function bit_identical(a, b)
  if T.shape_string(a:shape()) ~= T.shape_string(b:shape()) then return false end
  local ca, cb = a:contiguous(), b:contiguous()
  return ffi.string(ca.data, ca:numel() * 4) == ffi.string(cb.data, cb:numel() * 4)
end

-- Parity with the fixture -------------------------------------------------------

local dir = tap.fixtures("sd-tiny")
if dir then
  local json = require("fmseg.io.json")
  local meta = json.decode(io.open(dir .. "/ref.json"):read("*a"))
  local ref = require("fmseg.io.safetensors").open(dir .. "/ref.safetensors")
  local fam = require("fmseg.parity.sd")
  local out = fam.compute(dir, ref, meta)
  local inputs = {}
  for _, n in ipairs(fam.inputs) do inputs[n] = true end
  local names = {}
  for name in pairs(meta.tensors) do if not inputs[name] then names[#names + 1] = name end end
  table.sort(names)
  tap.ok(#names >= 16, "sd-tiny lists every reference tensor (" .. #names .. ")")
  for _, name in ipairs(names) do
    local got = out[name]
    if not got then
      tap.ok(false, "parity " .. name, "not computed")
    else
      local e, why = parity.compare(got, ref:get(name))
      tap.ok(e and e.rel <= parity.tolerance, "parity " .. name,
             e and ("relative error %.3g"):format(e.rel) or why)
    end
  end

  -- Capturing attention does not change the UNet output, bit for bit.
  local unet = sd.unet.load(dir .. "/unet")
  local noisy, text = ref:get("noisy_latents"), ref:get("text_embeddings")
  local x = T.cat({ noisy, noisy }, 1)
  local t = ref:get("timestep"):item()
  local plain = unet:forward(x, t, text)
  local cap = A.capture()
  local with = unet:forward(x, t, text, { capture = cap })
  tap.ok(bit_identical(plain, with), "unet eps is bit-identical with every map captured",
         ("max abs %.3g"):format((plain - with):abs():max()))
  tap.eq((plain - with):abs():max(), 0, "max |eps - eps_captured| == 0")
  local part = A.capture({ kinds = { "attn2" }, match = "^up_blocks", mean_heads = true })
  local with_part = unet:forward(x, t, text, { capture = part })
  tap.ok(bit_identical(plain, with_part), "unet eps is bit-identical with a partial, head-averaged capture")
  tap.eq(#part.names, 2, "partial capture keeps only the up blocks' attn2 layers")
  local n1 = part.names[1]
  tap.eq(T.shape_string(part.maps[n1]:shape()), "[2, 64, 77]", "mean_heads maps are [batch, queries, keys]")
  tap.near(part.maps[n1], A.mean_heads(cap.maps[n1], cap.info[n1].heads), 1e-6,
           "mean_heads during capture equals the mean of the full map")
  -- every row of a probability map sums to 1
  local sums = cap.maps["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]:sum(3)
  tap.near(sums, T.ones(sums:shape()), 1e-5, "attention rows sum to 1")
  local info = cap.info["mid_block.attentions.0.transformer_blocks.0.attn2"]
  tap.ok(info.height * info.width == 16 and info.kind == "attn2", "capture records the layer's resolution and kind")

  -- kept queries + a layer's to_k reproduce its cross-attention (OVAM's way
  -- of scoring new text without another UNet pass)
  local qcap = A.capture({ kinds = { "attn2" }, layers = { "mid_block.attentions.0.transformer_blocks.0.attn2" },
                           queries = true })
  unet:forward(x, t, text, { capture = qcap })
  local mid = "mid_block.attentions.0.transformer_blocks.0.attn2"
  local m = unet.attention_modules[mid]
  local nn = require("fmseg.nn")
  local keys = nn.linear(text, m.to_k.weight, m.to_k.bias)
  local _, probs = nn.attention(qcap.queries[mid], keys, keys, m.heads, { scale = m.scale, probs = true })
  tap.near(probs:reshape({ 2 * m.heads, 16, 77 }), cap.maps[mid], 1e-6,
           "queries kept by a capture and the layer's to_k give its cross-attention map")
  tap.ok(unet.attention_modules["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] ~= nil,
         "attention modules are indexed by module path")

  -- aggregate: cross-attention of all layers at the latent resolution
  local agg = A.aggregate(cap, { kind = "attn2", size = { 8, 8 } })
  tap.eq(T.shape_string(agg:shape()), "[2, 77, 8, 8]", "aggregate attn2 → [batch, tokens, h, w]")
  local self_agg = A.aggregate(cap, { kind = "attn1", weights = { [8] = 1 } })
  local only = A.self_to_images(A.mean_heads(cap.maps["up_blocks.1.attentions.1.transformer_blocks.0.attn1"], 4),
                                8, 8, 8, 8)
  tap.eq(T.shape_string(self_agg:shape()), "[2, 64, 8, 8]", "aggregate attn1 → [batch, queries, h, w]")
  tap.ok(self_agg:sum() > 0 and only:sum() > 0, "self-attention images are non-empty")

  -- the tokenizer gives the fixture's input_ids
  local pipe = sd.load(dir, { parts = { "tokenizer" } })
  tap.ok(bit_identical(pipe:tokenize(meta.texts):float(), ref:get("input_ids"):float()),
         "tokenizer reproduces the fixture's input_ids")
end

-- Scheduler -------------------------------------------------------------------------

-- ᾱ in double precision, written from the DDPM definitions
local function reference_alphas(schedule, b0, b1, n)
  local out, acc = {}, 1
  for i = 0, n - 1 do
    local beta
    if schedule == "linear" then
      beta = b0 + (b1 - b0) * i / (n - 1)
    else
      local s = math.sqrt(b0) + (math.sqrt(b1) - math.sqrt(b0)) * i / (n - 1)
      beta = s * s
    end
    acc = acc * (1 - beta)
    out[i + 1] = acc
  end
  return T.from_table(out)
end

for _, schedule in ipairs({ "linear", "scaled_linear" }) do
  local sched = S.new({ num_train_timesteps = 1000, beta_start = 0.00085, beta_end = 0.012,
                        beta_schedule = schedule })
  tap.near(sched:alphas_cumprod_tensor(), reference_alphas(schedule, 0.00085, 0.012, 1000), 1e-5,
           schedule .. " alphas_cumprod match the closed form")
end
do
  local a = S.new({ beta_schedule = "linear", beta_start = 0.0001, beta_end = 0.02, num_train_timesteps = 1000 })
  local b = S.new({ beta_schedule = "scaled_linear", beta_start = 0.0001, beta_end = 0.02, num_train_timesteps = 1000 })
  tap.ok(math.abs(a.alphas_cumprod[500] - b.alphas_cumprod[500]) > 1e-3, "the two beta schedules differ")
  tap.raises(function() S.new({ beta_schedule = "sigmoid" }) end, "beta_schedule 'sigmoid' is not supported",
             "unknown beta schedule is refused")
end

-- DDIM on constructed numbers: when the model predicts the true noise, one
-- step recovers x0 and lands on add_noise(x0, noise, t_prev); the three
-- prediction types agree.
do
  local cfg = { num_train_timesteps = 10, beta_start = 0.1, beta_end = 0.3, beta_schedule = "linear",
                clip_sample = false, set_alpha_to_one = true }
  local x0 = T.from_table({ { 0.5, -1.0 }, { 2.0, 0.25 } })
  local noise = T.from_table({ { -0.3, 0.7 }, { 1.1, -2.0 } })
  local acp = reference_alphas("linear", 0.1, 0.3, 10):values()
  local t, steps = 7, 5 -- previous timestep 7 - 10 // 5 = 5
  local a, ap = acp[t + 1], acp[5 + 1]
  local xt = x0 * math.sqrt(a) + noise * math.sqrt(1 - a)
  local want_prev = x0 * math.sqrt(ap) + noise * math.sqrt(1 - ap)
  local outputs = {
    epsilon = noise,
    sample = x0,
    v_prediction = noise * math.sqrt(a) - x0 * math.sqrt(1 - a),
  }
  for kind, model_output in pairs(outputs) do
    cfg.prediction_type = kind
    local sched = S.new(cfg)
    local prev, pred_x0 = sched:step(model_output, t, xt, steps)
    tap.near(pred_x0, x0, 1e-5, "DDIM " .. kind .. ": predicted x0 is x0")
    tap.near(prev, want_prev, 1e-5, "DDIM " .. kind .. ": previous sample is x0 noised to t-2")
  end
  cfg.prediction_type = "epsilon"
  local sched = S.new(cfg)
  local last = sched:step(noise, 1, x0 * math.sqrt(acp[2]) + noise * math.sqrt(1 - acp[2]), steps)
  tap.near(last, x0, 1e-5, "DDIM last step with set_alpha_to_one returns x0")
  tap.near(sched:add_noise(x0, noise, t), xt, 1e-6, "add_noise is sqrt(a) x0 + sqrt(1-a) noise")
end

do
  local base = { num_train_timesteps = 1000, steps_offset = 1, timestep_spacing = "leading" }
  local ts = S.new(base):set_timesteps(50)
  tap.ok(#ts == 50 and ts[1] == 981 and ts[50] == 1, "leading spacing: 981 ... 1")
  base.timestep_spacing = "trailing"
  ts = S.new(base):set_timesteps(50)
  tap.ok(#ts == 50 and ts[1] == 999 and ts[50] == 19, "trailing spacing: 999 ... 19")
  base.timestep_spacing = "linspace"
  ts = S.new(base):set_timesteps(4)
  tap.ok(ts[1] == 999 and ts[2] == 666 and ts[3] == 333 and ts[4] == 0, "linspace spacing: 999 666 333 0")
end

-- Configs other than the fixture's ------------------------------------------------

-- A UNet with two layers per block, a per-block head count, two
-- transformer layers, linear projections and three resolutions, on a
-- non-square latent whose size is not a multiple of 4 (the upsamplers then
-- follow the skips' sizes).
do
  local config = {
    block_out_channels = { 8, 16, 24 }, layers_per_block = 2, attention_head_dim = { 2, 4, 3 },
    cross_attention_dim = 12, norm_num_groups = 4, in_channels = 4, out_channels = 4,
    down_block_types = { "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D" },
    up_block_types = { "CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D" },
    mid_block_type = "UNetMidBlock2DCrossAttn", transformer_layers_per_block = 2,
    use_linear_projection = true, flip_sin_to_cos = true, freq_shift = 0,
  }
  local w = sd.random_weights(0.2, 7)
  local unet = sd.unet.new(config, w)
  local x = T.randn({ 1, 4, 7, 10 }, 3)
  local text = T.randn({ 1, 5, 12 }, 4)
  local cap = A.capture()
  local eps = unet:forward(x, 500, text, { capture = cap })
  tap.eq(T.shape_string(eps:shape()), "[1, 4, 7, 10]", "unet keeps a non-square, odd latent size")
  tap.ok(eps:abs():max() > 0 and eps:abs():max() < math.huge, "unet output is finite and non-zero")
  -- attention layers: down 0 (2 layers x 2 blocks), down 2, mid (2), up 0 (3 x 2), up 2
  local count = { attn1 = 0, attn2 = 0 }
  for _, name in ipairs(cap.names) do count[cap.info[name].kind] = count[cap.info[name].kind] + 1 end
  tap.eq(count.attn1, 2 * 2 + 2 * 2 + 2 + 3 * 2 + 3 * 2, "every attn1 layer is captured")
  tap.eq(count.attn2, count.attn1, "every attn2 layer is captured")
  local n = "down_blocks.2.attentions.1.transformer_blocks.1.attn2"
  tap.eq(T.shape_string(cap.maps[n]:shape()), "[3, 6, 5]", "3 heads at 2x3 (7x10 halved twice, rounding up) attend to 5 tokens")
  local m = "up_blocks.2.attentions.2.transformer_blocks.0.attn1"
  tap.eq(T.shape_string(cap.maps[m]:shape()), "[2, 70, 70]", "2 heads at 7x10 attend to themselves")
  tap.ok(cap.info[m].height == 7 and cap.info[m].width == 10, "non-square layer size recorded as 7x10")
  local img = A.cross_to_images(A.mean_heads(cap.maps[n], 3), 2, 3, 7, 10)
  tap.eq(T.shape_string(img:shape()), "[1, 5, 7, 10]", "cross maps resize to a non-square size")
  tap.raises(function() unet:forward(x, { 1, 2 }, text) end, "2 timesteps for a batch of 1",
             "a timestep list must fit the batch")
  -- DownBlock2D-only models (no cross attention) with conv projections
  config.down_block_types = { "DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D" }
  config.up_block_types = { "UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D" }
  config.use_linear_projection, config.mid_block_type = false, "UNetMidBlock2D"
  config.attention_head_dim, config.num_attention_heads = 8, { 1, 2, 4 }
  local unet2 = sd.unet.new(config, sd.random_weights(0.2, 9))
  local cap2 = A.capture()
  local y = unet2:forward(T.randn({ 2, 4, 8, 12 }, 5), { 10, 900 }, T.randn({ 2, 3, 12 }, 6), { capture = cap2 })
  tap.eq(T.shape_string(y:shape()), "[2, 4, 8, 12]", "unet with UNetMidBlock2D, conv projections, 2 timesteps")
  tap.eq(T.shape_string(cap2.maps["down_blocks.1.attentions.0.transformer_blocks.0.attn1"]:shape()),
         "[4, 24, 24]", "num_attention_heads, when set, is the head count")
end

-- mid_block_type: absent means UNetMidBlock2DCrossAttn (SD 1.5's config
-- leaves it out), null means no mid block.
do
  local function config(mid)
    return { block_out_channels = { 8, 16 }, layers_per_block = 1, attention_head_dim = 2,
             cross_attention_dim = 6, norm_num_groups = 4,
             down_block_types = { "CrossAttnDownBlock2D", "DownBlock2D" },
             up_block_types = { "UpBlock2D", "CrossAttnUpBlock2D" }, mid_block_type = mid }
  end
  local function mid_maps(mid)
    local cap = A.capture({ match = "^mid_block" })
    sd.unet.new(config(mid), sd.random_weights(0.2, 3)):forward(T.randn({ 1, 4, 4, 4 }, 1), 1,
                                                                T.randn({ 1, 2, 6 }, 2), { capture = cap })
    return #cap.names
  end
  tap.eq(mid_maps(nil), 2, "no mid_block_type key: the cross-attention mid block")
  tap.eq(mid_maps(require("fmseg.io.json").null), 0, "mid_block_type null: no mid block")
  tap.raises(function() sd.unet.new(config("UNetMidBlock2DSimpleCrossAttn"), sd.random_weights()) end,
             "mid_block_type 'UNetMidBlock2DSimpleCrossAttn' is not supported", "unsupported mid block refused")
  local ss = config()
  ss.resnet_time_scale_shift = "scale_shift"
  local ss_unet = sd.unet.new(ss, sd.random_weights(0.2, 4))
  tap.eq(ss_unet.down_blocks[1].resnets[1].time_emb_proj.weight:size(1), 16,
         "scale_shift resnets project the time embedding to 2 x channels")
  tap.eq(T.shape_string(ss_unet:forward(T.randn({ 1, 4, 4, 4 }, 1), 1, T.randn({ 1, 2, 6 }, 2)):shape()),
         "[1, 4, 4, 4]", "scale_shift UNet runs")
  local c = config()
  c.class_embed_type = "timestep"
  tap.raises(function() sd.unet.new(c, sd.random_weights()) end, "class_embed_type = timestep is not supported",
             "class embeddings refused")
end

-- Loading from disk refuses misshapen and missing tensors by name.
do
  local st = require("fmseg.io.safetensors")
  local json = require("fmseg.io.json")
  local tmp = os.tmpname()
  os.remove(tmp)
  os.execute("mkdir -p " .. tmp)
  local cfg = { block_out_channels = { 8 }, layers_per_block = 1, norm_num_groups = 4, latent_channels = 2,
                down_block_types = { "DownEncoderBlock2D" }, up_block_types = { "UpDecoderBlock2D" } }
  local f = io.open(tmp .. "/config.json", "w")
  f:write(json.encode(cfg))
  f:close()
  local names = {}
  local fake = sd.random_weights(0.1, 1)
  local get = fake.get
  function fake:get(name, shape)
    local t = get(self, name, shape)
    names[name] = t
    return t
  end
  sd.vae.new(cfg, fake)
  names["encoder.conv_in.weight"] = T.randn({ 8, 3, 5, 5 }, 1)
  st.save(tmp .. "/diffusion_pytorch_model.safetensors", names)
  tap.raises(function() sd.vae.load(tmp) end, "encoder.conv_in.weight: got [8, 3, 5, 5], expected [8, 3, 3, 3]",
             "a misshapen VAE tensor is named with both shapes")
  names["encoder.conv_in.weight"] = nil
  st.save(tmp .. "/diffusion_pytorch_model.safetensors", names)
  tap.raises(function() sd.vae.load(tmp) end, "encoder.conv_in.weight: missing", "a missing VAE tensor is named")
  os.execute("rm -rf " .. tmp)
end

-- A VAE with three levels on a non-square image.
do
  local config = { block_out_channels = { 4, 8, 8 }, layers_per_block = 2, norm_num_groups = 2,
                   latent_channels = 3, down_block_types = { "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D" },
                   up_block_types = { "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D" } }
  local vae = sd.vae.new(config, sd.random_weights(0.2, 11))
  local mean, std = vae:encode(T.rand({ 1, 3, 24, 40 }, 1, -1, 1))
  tap.eq(T.shape_string(mean:shape()), "[1, 3, 6, 10]", "vae latent is image / 4 for three levels")
  tap.ok(std:min() > 0, "vae std is positive")
  tap.eq(T.shape_string(vae:decode(mean):shape()), "[1, 3, 24, 40]", "vae decodes back to the image size")
end

-- Self-attention images: a map where every query attends only to itself,
-- at 2x3, resized to 4x6: each new query's image peaks in its own cell.
do
  local h, w = 2, 3
  local eye = {}
  for i = 1, h * w do
    eye[i] = {}
    for j = 1, h * w do eye[i][j] = i == j and 1 or 0 end
  end
  local imgs = A.self_to_images(T.from_table({ eye }), h, w, 4, 6)
  local ok = true
  for r = 1, 4 do
    for c = 1, 6 do
      local q = (r - 1) * 6 + c
      local best = imgs:select(1, 1):select(1, q):reshape({ 24 }):argmax()
      local br, bc = math.floor((best - 1) / 6) + 1, (best - 1) % 6 + 1
      if math.floor((br - 1) / 2) ~= math.floor((r - 1) / 2) or math.floor((bc - 1) / 2) ~= math.floor((c - 1) / 2) then
        ok = false
      end
    end
  end
  tap.ok(ok, "self_to_images: each query attends within its own upsampled cell")
end

os.exit(tap.done())
