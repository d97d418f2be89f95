-- DINO / DINOv2 / DINOv2 with registers: parity with transformers on the
-- three fixtures, loader errors, and the block pieces recipes use.
local tap = require("tap")
local vit = require("fmseg.models.vit")
local hf = require("fmseg.io.hf")
local parity = require("fmseg.parity")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")

local fam = require("fmseg.parity.vit")

local function check_parity(dir)
  local meta = hf.read_json(dir .. "/ref.json")
  local ref = safetensors.open(dir .. "/ref.safetensors")
  local computed = fam.compute(dir, ref, meta)
  local inputs = {}
  for _, n in ipairs(fam.inputs) do inputs[n] = true end
  local names = {}
  for name in pairs(meta.tensors) do if not inputs[name] then names[#names + 1] = name end end
  table.sort(names)
  local label = dir:match("[^/]+$")
  for _, name in ipairs(names) do
    local got = computed[name]
    if not got then
      tap.ok(false, label .. " parity " .. name, "not computed")
    else
      local e, why = parity.compare(got, ref:get(name))
      tap.ok(e and parity.within(e), label .. " parity " .. name,
             e and ("abs %.3g rel %.3g"):format(e.abs, e.rel) or why)
    end
  end
  return ref
end

local scratch, remove = tap.scratch_model, tap.remove_model

-- DINO (ViTModel) ------------------------------------------------------------------

local dino = tap.fixtures("dino-tiny")
if dino then
  local ref = check_parity(dino)
  local model = vit.load(dino)
  local cfg = model.config
  local pv = ref:get("pixel_values")
  local n = #model.layers
  tap.eq(n, cfg.num_hidden_layers, "one block per num_hidden_layers")
  local full = model:encode_image(pv, { hidden_states = true, qkv = true })

  local blk = model.layers[n]
  local x = full.hidden_states[n - 1]
  local h = blk:ln1(x)
  local q, k, v = blk:qkv(h)
  tap.near(k, full.qkv.k, 1e-6, "qkv = true keeps the last block's keys")
  local r = blk:out_proj(blk:attend(q, k, v)) + x
  local y = blk:mlp(blk:ln2(r)) + r
  tap.near(y, full.hidden_states[n], 1e-6, "last block recomposed from its pieces")
  tap.near(model:head(full.last), full.last_hidden_state, 1e-6, "head is the final layernorm")

  -- a grid that is neither square nor the trained one
  local p = cfg.patch_size
  local odd = model:encode_image(T.rand({ 1, 3, 3 * p, 7 * p + p - 1 }, 3))
  tap.ok(odd.grid[1] == 3 and odd.grid[2] == 7, "grid floors H/patch and W/patch",
         ("%d x %d"):format(odd.grid[1], odd.grid[2]))
  tap.eq(odd.last_hidden_state:size(2), 1 + 21, "CLS + 3x7 patches")

  local fc = "encoder.layer.2.output.dense.weight"
  local tmp = scratch(dino, function(t) t[fc] = nil end)
  tap.raises(function() vit.load(tmp) end,
             ("%s: missing from the weights in %s (expected [%d, %d])"):format(
               fc, tmp, cfg.hidden_size, cfg.intermediate_size),
             "a missing tensor is named with its expected shape")
  remove(tmp)

  tmp = scratch(dino, nil, function(c) c.model_type = "vit_mae" end)
  tap.raises(function() vit.load(tmp) end, "model_type 'vit_mae'", "unknown model_type refused")
  remove(tmp)

  tmp = scratch(dino, nil, function(c) c.hidden_act = "mish" end)
  tap.raises(function() vit.load(tmp) end, "unsupported hidden_act 'mish'", "unsupported activation named")
  remove(tmp)
end

-- DINOv2 ----------------------------------------------------------------------------

local v2 = tap.fixtures("dinov2-tiny")
if v2 then
  local ref = check_parity(v2)
  local model = vit.load(v2)
  tap.eq(model.num_prefix_tokens, 1, "no registers in Dinov2Model")
  local pv = ref:get("pixel_values")
  local full = model:encode_image(pv, { hidden_states = true })
  local n = #model.layers
  local blk = model.layers[n]
  local x = full.hidden_states[n - 1]
  local q, k, v = blk:qkv(blk:ln1(x))
  local r = blk:out_proj(blk:attend(q, k, v)) + x
  local y = blk:mlp(blk:ln2(r)) + r
  tap.near(y, full.hidden_states[n], 1e-6, "DINOv2 block (layer scale inside out_proj / mlp) recomposed")

  local c = model.hidden_size
  local ls = "encoder.layer.1.layer_scale2.lambda1"
  local tmp = scratch(v2, function(t) t[ls] = T.ones({ c + 1 }) end)
  tap.raises(function() vit.load(tmp) end, ("%s: got [%d], expected [%d]"):format(ls, c + 1, c),
             "a misshapen layer scale is named with both shapes")
  remove(tmp)

  -- SwiGLU checkpoints keep their FFN in mlp.weights_in / weights_out
  tmp = scratch(v2, nil, function(cfg) cfg.use_swiglu_ffn = true end)
  tap.raises(function() vit.load(tmp) end, "encoder.layer.0.mlp.weights_in.weight: missing",
             "use_swiglu_ffn reads the SwiGLU weights")
  remove(tmp)

  -- Dinov2SwiGLUFFN: weights_in gives [x1 | x2], out = weights_out(silu(x1) * x2);
  -- its width is two thirds of hidden x mlp_ratio, rounded up to 8
  local width = math.floor((math.floor(math.floor(c * model.config.mlp_ratio) * 2 / 3) + 7) / 8) * 8
  tmp = scratch(v2, function(t)
    for i = 0, n - 1 do
      local pre = ("encoder.layer.%d.mlp."):format(i)
      for _, s in ipairs({ "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias" }) do t[pre .. s] = nil end
      t[pre .. "weights_in.weight"] = T.randn({ 2 * width, c }, 10 + i) * 0.2
      t[pre .. "weights_in.bias"] = T.randn({ 2 * width }, 20 + i) * 0.2
      t[pre .. "weights_out.weight"] = T.randn({ c, width }, 30 + i) * 0.2
      t[pre .. "weights_out.bias"] = T.randn({ c }, 40 + i) * 0.2
    end
  end, function(cfg) cfg.use_swiglu_ffn = true end)
  local sw = vit.load(tmp)
  local sblk = sw.layers[1]
  local hin = T.randn({ 1, 5, c }, 5)
  local nn = require("fmseg.nn")
  local w_in, w_out = sblk.fc1, sblk.fc2
  local x1 = nn.linear(hin, w_in.weight:narrow(1, 1, width), w_in.bias:narrow(1, 1, width))
  local x2 = nn.linear(hin, w_in.weight:narrow(1, width + 1, width), w_in.bias:narrow(1, width + 1, width))
  local want = nn.linear(x1 * x1:sigmoid() * x2, w_out.weight, w_out.bias) * sblk.lambda2
  tap.near(sblk:mlp(hin), want, 1e-5, "SwiGLU FFN: silu(first half) x second half, then weights_out")
  tap.eq(sw:encode_image(pv).last_hidden_state:size(2), full.last:size(2), "a SwiGLU model runs end to end")
  remove(tmp)
end

-- DINOv2 with registers -----------------------------------------------------------------

local reg = tap.fixtures("dinov2-reg-tiny")
if reg then
  check_parity(reg)
  local cfg = hf.read_json(reg .. "/config.json")
  local model = vit.load(reg)
  tap.eq(model.num_prefix_tokens, 1 + cfg.num_register_tokens, "CLS + registers lead the tokens")
  local tmp = scratch(reg, function(t) t["embeddings.register_tokens"] = nil end)
  tap.raises(function() vit.load(tmp) end,
             ("embeddings.register_tokens: missing from the weights in %s (expected [1, %d, %d])"):format(
               tmp, cfg.num_register_tokens, cfg.hidden_size),
             "missing register tokens named with their expected shape")
  remove(tmp)
end

os.exit(tap.done())
