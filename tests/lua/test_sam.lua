-- SAM: parity with the sam-tiny fixture, the predictor on the fixture image
-- with prompts in original-image pixels, embed once / prompt many, batched
-- prompts, windows that do not divide the grid (against a naive version of
-- SamVisionLayer written out here), and loader errors.
local tap = require("tap")
local T = require("fmseg.tensor")
local nn = require("fmseg.nn")
local image = require("fmseg.image")
local safetensors = require("fmseg.io.safetensors")
local json = require("fmseg.io.json")
local sam = require("fmseg.models.sam")
local processor = require("fmseg.sam.processor")
local predictor = require("fmseg.sam.predictor")

local TOL = 1e-4   -- the fixtures' relative tolerance

local function max_abs_diff(a, b) return (a:float() - b:float()):abs():max() end

-- A random-weights model of any config: every tensor the loader asks for,
-- drawn from a seed made of its name.
local function random_weights(scale)
  local w = { dir = "(random)" }
  function w.has() return true end
  function w.get(_, name, shape)
    local seed = 1
    for i = 1, #name do seed = (seed * 31 + name:byte(i)) % 2147483647 end
    return T.randn(shape, seed) * (scale or 0.5)
  end
  return w
end

-- Vision config with a window that does not divide the 5x5 grid.
local SMALL_CONFIG = {
  vision_config = {
    hidden_size = 8, num_hidden_layers = 2, num_attention_heads = 2, image_size = 40,
    patch_size = 8, window_size = 3, global_attn_indexes = { 1 }, mlp_dim = 16,
    output_channels = 8, num_pos_feats = 4, hidden_act = "gelu", layer_norm_eps = 1e-6,
  },
  prompt_encoder_config = { hidden_size = 8, image_size = 40, patch_size = 8,
                            mask_input_channels = 4 },
  mask_decoder_config = { hidden_size = 8, num_attention_heads = 1, mlp_dim = 16,
                          iou_head_hidden_dim = 8, num_hidden_layers = 2 },
}

-- SamVisionLayer written out with loops: zero-pad to whole windows, attend
-- within each window with q.k scale + q.Rh + q.Rw, crop, residual, MLP.
-- x: (1, h, w, C) tensor → (1, h, w, C).
local function naive_vision_layer(layer, x, heads, eps, window)
  local _, h, w, c = unpack(x:shape())
  local d = c / heads
  local ln1 = nn.layer_norm(x, layer.layer_norm1.weight, layer.layer_norm1.bias, eps):totable()[1]
  local ws = window > 0 and window or h
  local wsx = window > 0 and window or w
  local hp, wp = math.ceil(h / ws) * ws, math.ceil(w / wsx) * wsx
  local function token(y, xx)
    if y <= h and xx <= w then return ln1[y][xx] end
    local z = {}
    for i = 1, c do z[i] = 0 end
    return z
  end
  local rh, rw = layer.attn.rel_pos_h:totable(), layer.attn.rel_pos_w:totable()
  local attn_out = {}
  for y = 1, h do attn_out[y] = {} end
  for wy = 0, hp / ws - 1 do
    for wx = 0, wp / wsx - 1 do
      local toks, pos = {}, {}
      for iy = 1, ws do
        for ix = 1, wsx do
          toks[#toks + 1] = token(wy * ws + iy, wx * wsx + ix)
          pos[#pos + 1] = { iy - 1, ix - 1 }
        end
      end
      local qkv = nn.linear(T.from_table(toks), layer.attn.qkv.weight, layer.attn.qkv.bias):totable()
      local n, out = #toks, {}
      for i = 1, n do out[i] = {} end
      for hd = 0, heads - 1 do
        for i = 1, n do
          local s, mx = {}, -math.huge
          for j = 1, n do
            local dot, bh, bw = 0, 0, 0
            local rrow_h = rh[pos[i][1] - pos[j][1] + ws]
            local rrow_w = rw[pos[i][2] - pos[j][2] + wsx]
            for e = 1, d do
              local qe = qkv[i][hd * d + e]
              dot = dot + qe * qkv[j][c + hd * d + e]
              bh = bh + qe * rrow_h[e]
              bw = bw + qe * rrow_w[e]
            end
            s[j] = dot / math.sqrt(d) + bh + bw
            mx = math.max(mx, s[j])
          end
          local sum = 0
          for j = 1, n do s[j] = math.exp(s[j] - mx); sum = sum + s[j] end
          for e = 1, d do
            local o = 0
            for j = 1, n do o = o + s[j] / sum * qkv[j][2 * c + hd * d + e] end
            out[i][hd * d + e] = o
          end
        end
      end
      local proj = nn.linear(T.from_table(out), layer.attn.proj.weight, layer.attn.proj.bias):totable()
      for i = 1, n do
        local y, xx = wy * ws + pos[i][1] + 1, wx * wsx + pos[i][2] + 1
        if y <= h and xx <= w then attn_out[y][xx] = proj[i] end
      end
    end
  end
  local r = x + T.from_table({ attn_out })
  local z = nn.layer_norm(r, layer.layer_norm2.weight, layer.layer_norm2.bias, eps)
  local m = nn.linear(nn.linear(z, layer.mlp.lin1.weight, layer.mlp.lin1.bias):gelu(),
                      layer.mlp.lin2.weight, layer.mlp.lin2.bias)
  return r + m
end

-- Windows that do not divide the grid, and a global layer, against the loops.
do
  local model = sam.new(SMALL_CONFIG, random_weights())
  local v = model.config.vision
  local x = T.randn({ 1, 3, 40, 40 }, 7)
  local emb, hidden = model:encode_image(x, { hidden_states = true })
  tap.eq(T.shape_string(emb:shape()), "[1, 8, 5, 5]", "small model: image embeddings (1, 8, 5, 5)")
  tap.eq(model.vision_encoder.layers[1].window_size, 3, "layer 0 is windowed (3 on a 5x5 grid)")
  tap.eq(model.vision_encoder.layers[2].window_size, 0, "layer 1 is global")
  local want1 = naive_vision_layer(model.vision_encoder.layers[1], hidden[0], v.num_attention_heads,
                                   v.layer_norm_eps, 3)
  tap.near(hidden[1], want1, 1e-5, "padded windowed layer matches the naive SamVisionLayer")
  local want2 = naive_vision_layer(model.vision_encoder.layers[2], hidden[1], v.num_attention_heads,
                                   v.layer_norm_eps, 0)
  tap.near(hidden[2], want2, 1e-5, "global layer matches the naive SamVisionLayer")
  -- two images with two point sets each, against one image at a time
  local x2 = T.cat({ x, T.randn({ 1, 3, 40, 40 }, 8) }, 1)
  local pts = T.rand({ 2, 2, 3, 2 }, 9, 0, 40)
  local labs = T.from_table({ { { 1, 0, 1 }, { 1, 1, -1 } }, { { 0, 1, 1 }, { 1, -10, 0 } } })
  local boxes = T.rand({ 2, 2, 4 }, 10, 0, 40)
  local emb2 = model:encode_image(x2)
  local s2, d2 = model:encode_prompt({ points = pts, labels = labs, boxes = boxes })
  local m2, iou2 = model:decode_masks(emb2, s2, d2, true)
  tap.eq(T.shape_string(m2:shape()), "[2, 2, 3, 20, 20]", "batch of images: masks (B, N, 3, 4h, 4w)")
  for bi = 1, 2 do
    local e1 = model:encode_image(x2:narrow(1, bi, 1))
    local s1, d1 = model:encode_prompt({ points = pts:narrow(1, bi, 1), labels = labs:narrow(1, bi, 1),
                                         boxes = boxes:narrow(1, bi, 1) })
    local m1, iou1 = model:decode_masks(e1, s1, d1, true)
    tap.near(m2:narrow(1, bi, 1), m1, 1e-5, ("batch of images: image %d's masks as alone"):format(bi))
    tap.near(iou2:narrow(1, bi, 1), iou1, 1e-5, ("batch of images: image %d's IoU as alone"):format(bi))
  end
  tap.raises(function() model:encode_image(T.zeros({ 1, 3, 32, 40 })) end, "expected [B, 3, 40, 40]",
             "a wrong input size is refused, naming the expected one")
  tap.raises(function()
    model:encode_prompt({ points = T.zeros({ 1, 1, 1, 2 }), labels = T.full({ 1, 1, 1 }, 2) })
  end, "point label 2", "an unknown point label is refused")
end

local dir = tap.fixtures("sam-tiny")
if not dir then os.exit(tap.done()) end

local ref = safetensors.open(dir .. "/ref.safetensors")
local meta = json.decode(io.open(dir .. "/ref.json"):read("*a"))

-- Parity: every reference tensor through the parity module.
do
  local out = require("fmseg.parity.sam").compute(dir, ref, meta)
  local inputs = {}
  for _, n in ipairs(require("fmseg.parity.sam").inputs) do inputs[n] = true end
  local names = {}
  for name in pairs(meta.tensors) do if not inputs[name] then names[#names + 1] = name end end
  table.sort(names)
  for _, name in ipairs(names) do
    if out[name] then tap.near(out[name], ref:get(name), TOL, "parity: " .. name)
    else tap.ok(false, "parity: " .. name .. " computed") end
  end
end

local model = sam.load(dir)
local img = image.load(dir .. "/input.png")
local H, W = img:size(1), img:size(2)
local pv = ref:get("pixel_values")
local resized = ref:get("resized_hw"):values()

-- The processor, in the fixture's resize mode, makes the fixture's input.
local proc = processor.new({ longest_edge = model.config.vision.image_size, resize = "interpolate" })
do
  local x, rhw, ohw = proc:preprocess(img)
  tap.eq(rhw[1] .. "x" .. rhw[2], resized[1] .. "x" .. resized[2], "processor: resized size as the fixture's")
  tap.eq(ohw[1] .. "x" .. ohw[2], H .. "x" .. W, "processor: original size")
  tap.near(x, pv, TOL, "processor: pixel_values as the fixture's (bilinear, normalised, padded)")
  local pil = processor.new({ longest_edge = model.config.vision.image_size }):preprocess(img)
  tap.eq(pil:narrow(3, resized[1] + 1, pil:size(3) - resized[1]):abs():max(), 0,
         "processor (PIL): zero padding below the resized image")
end

-- Fixture prompts are in resized-input pixels; in original pixels they are
-- scaled by original / resized per axis.
local sx, sy = W / resized[2], H / resized[1]
local function to_original(t)   -- (..., 2k) x, y pairs
  local shape = t:shape()
  local pairs_ = t:reshape(t:numel() / 2, 2)
  return (pairs_ * T.from_table({ sx, sy })):reshape(shape)
end
local points = to_original(ref:get("prompt.points")):reshape(2, 2)
local labels = ref:get("prompt.labels"):float():reshape(2)
local box = to_original(ref:get("prompt.box")):reshape(4)

local p = predictor.new(model, { processor = proc })
p:set_image(img)
local cases = {
  points = { points = points, labels = labels },
  box = { box = box },
  points_box = { points = points:narrow(1, 1, 1), labels = labels:narrow(1, 1, 1), box = box },
}
local first = {}
for _, name in ipairs({ "points", "box", "points_box" }) do
  for _, mode in ipairs({ "multi", "single" }) do
    local prompt = {}
    for k, v in pairs(cases[name]) do prompt[k] = v end
    prompt.multimask = mode == "multi"
    local masks, iou, low = p:predict(prompt)
    local key = name .. "." .. mode
    local want = ref:get(key .. ".pred_masks")
    tap.near(low, want:reshape(unpack(low:shape())), TOL, "predictor, original-pixel prompts: " .. key .. ".pred_masks")
    tap.near(iou, ref:get(key .. ".iou_scores"):reshape(iou:numel()), TOL, "predictor: " .. key .. ".iou_scores")
    tap.eq(T.shape_string(masks:shape()), T.shape_string({ low:size(1), H, W }),
           "predictor: " .. key .. " masks at the original size")
    first[key] = { masks = masks, iou = iou, low = low }
  end
end

-- Masks at the original size: the fixture's post-processing check, whose
-- original size is nominal, through set_pixel_values.
do
  local ohw = ref:get("original_hw"):values()
  local q = predictor.new(model, { processor = proc })
  q:set_pixel_values(pv, { ohw[1], ohw[2] })
  tap.eq(q.resized_hw[1] .. "x" .. q.resized_hw[2], resized[1] .. "x" .. resized[2],
         "set_pixel_values: resized size derived from the original")
  local pts = ref:get("prompt.points"):reshape(2, 2) * T.from_table({ ohw[2] / resized[2], ohw[1] / resized[1] })
  local logits = q:predict({ points = pts, labels = labels, return_logits = true })
  local want = ref:get("points.multi.masks_original_logits")
  tap.near(logits, want, TOL, "predictor: logits at the original size (masks_original_logits)")
  local masks = q:predict({ points = pts, labels = labels })
  tap.eq(masks:dtype(), "uint8", "predictor: masks are uint8")
  tap.eq(max_abs_diff(masks, want:gt(0)), 0, "predictor: masks are the logits > 0")
end

-- Embed once, prompt many: after other prompts, the same prompt gives the
-- same answer as a fresh predictor.
do
  local again_masks, again_iou, again_low = p:predict({ points = points, labels = labels })
  local fresh = predictor.new(model, { processor = proc })
  fresh:set_image(img)
  local f_masks, f_iou, f_low = fresh:predict({ points = points, labels = labels })
  tap.eq(max_abs_diff(again_low, f_low), 0, "embed once: low-res logits identical to a fresh predictor")
  tap.eq(max_abs_diff(again_iou, f_iou), 0, "embed once: IoU identical to a fresh predictor")
  tap.eq(max_abs_diff(again_masks, f_masks), 0, "embed once: masks identical to a fresh predictor")
  tap.eq(max_abs_diff(again_low, first["points.multi"].low), 0, "embed once: identical to the first call")
end

-- Batched prompts give what one-at-a-time prompts give (to 1e-6 relative:
-- the decoder keeps each prompt's products the same shape in a batch).
local BATCH_TOL = 1e-6
do
  local pts = T.from_table({ { { 100, 120 } }, { { 300, 200 } }, { { 550, 380 } } })   -- (3, 1, 2)
  local labs = T.from_table({ { 1 }, { 1 }, { 0 } })
  local bm, biou, blow = p:predict_batch(pts, labs)
  tap.eq(T.shape_string(bm:shape()), T.shape_string({ 3, 3, H, W }), "predict_batch: masks (N, 3, H, W)")
  tap.eq(T.shape_string(blow:shape()), "[3, 3, 32, 32]", "predict_batch: low-res logits (N, 3, 32, 32)")
  for i = 1, 3 do
    local _, iou, low = p:predict({ points = pts:select(1, i), labels = labs:select(1, i) })
    tap.near(blow:select(1, i), low, BATCH_TOL, ("predict_batch: prompt %d low-res logits as alone"):format(i))
    tap.near(biou:select(1, i), iou, BATCH_TOL, ("predict_batch: prompt %d IoU as alone"):format(i))
  end
  local boxes = T.from_table({ { 50, 60, 300, 250 }, { 200, 100, 580, 390 } })
  local _, iou2 = p:predict_batch(nil, nil, { boxes = boxes, multimask = false })
  local _, iou_one = p:predict({ box = boxes:select(1, 2), multimask = false })
  tap.near(iou2:select(1, 2), iou_one, BATCH_TOL, "predict_batch: boxes only, as alone")
  -- a previous low-res mask as the dense prompt changes the answer
  local low = first["points.multi"].low
  local _, iou_m = p:predict({ points = points, labels = labels, mask_input = low:narrow(1, 3, 1) })
  tap.ok(max_abs_diff(iou_m, first["points.multi"].iou) > 0, "mask_input: the dense prompt is used")
end

-- mask_filter: the IoU head runs first and only the picked prompts' masks
-- are made (the automatic mask generator's predicted-IoU filter)
do
  local pts = T.from_table({ { { 100, 120 } }, { { 300, 200 } }, { { 550, 380 } } })   -- (3, 1, 2)
  local _, iou_all, low_all = p:predict_batch(pts, nil, { masks = false })
  local seen
  local none, iou_f, low_f, picked = p:predict_batch(pts, nil, {
    mask_filter = function(iou) seen = iou:clone(); return { 1, 3 } end })
  tap.ok(none == nil and picked and #picked == 2, "mask_filter: no full-size masks, the picked prompts back")
  tap.eq(T.shape_string(low_f:shape()), "[2, 3, 32, 32]", "mask_filter: low-res logits of the picked prompts only")
  tap.near(seen, iou_all, BATCH_TOL, "mask_filter: sees every prompt's IoU")
  tap.near(iou_f, iou_all, BATCH_TOL, "mask_filter: IoU of every prompt")
  tap.near(low_f:select(1, 1), low_all:select(1, 1), BATCH_TOL, "mask_filter: picked prompt 1's logits")
  tap.near(low_f:select(1, 2), low_all:select(1, 3), BATCH_TOL, "mask_filter: picked prompt 3's logits")
  local _, _, low0, picked0 = p:predict_batch(pts, nil, { mask_filter = function() return {} end })
  tap.ok(#picked0 == 0 and low0:size(1) == 0, "mask_filter: nothing picked, no masks")
end

-- The command line: the best mask as a 0/255 PNG at the image's size.
do
  local out = os.tmpname() .. ".png"
  local cmd = ("./fmseg sam --model %s %s/input.png --point 200,180 --point 470,90,0 -o %s > /dev/null")
    :format(dir, dir, out)
  local ok = os.execute(cmd)
  tap.ok(ok == 0 or ok == true, "fmseg sam: exits 0")
  local f = io.open(out, "rb")
  tap.ok(f ~= nil, "fmseg sam: wrote the mask PNG")
  if f then
    f:close()
    local m = image.load(out)
    tap.eq(m:size(1) .. "x" .. m:size(2), H .. "x" .. W, "fmseg sam: mask at the image's size")
    local on = m:select(3, 1):float():gt(0):sum()
    local levels = (m:select(3, 1):float():eq(0) + m:select(3, 1):float():eq(255)):min()
    tap.eq(levels, 1, "fmseg sam: mask values are 0 or 255")
    tap.ok(on > 0 and on < H * W, "fmseg sam: the mask is neither empty nor full")
    os.remove(out)
  end
  local parse = require("fmseg.cli.sam").parse
  tap.raises(function() parse({ "img.png", "--point", "1,2", "-o", "m.png" }) end, "no --model",
             "fmseg sam: --model is required")
  tap.raises(function() parse({ "--model", "d", "img.png", "--point", "1", "-o", "m.png" }) end,
             "needs 2 or 3 numbers", "fmseg sam: a point needs x,y")
  local o = parse({ "--model", "d", "img.png", "--point", "1,2,0", "--box", "1,2,3,4", "--single", "-o", "m.png" })
  tap.eq(o.labels[1] .. " " .. o.box[4] .. " " .. tostring(o.single), "0 4 true", "fmseg sam: options parsed")
end

-- Loader errors name the tensor.
do
  local tmp = os.tmpname()
  os.remove(tmp)
  os.execute("mkdir -p " .. tmp)
  local src = safetensors.open(dir .. "/model.safetensors")
  local all = src:load_all()
  local cfg = io.open(dir .. "/config.json"):read("*a")
  local f = io.open(tmp .. "/config.json", "w")
  f:write(cfg)
  f:close()
  all["mask_decoder.iou_token.weight"] = nil
  safetensors.save(tmp .. "/model.safetensors", all)
  tap.raises(function() sam.load(tmp) end, "mask_decoder.iou_token.weight: missing",
             "a missing tensor: the error names the key")
  all["mask_decoder.iou_token.weight"] = T.zeros({ 2, 16 })
  safetensors.save(tmp .. "/model.safetensors", all)
  tap.raises(function() sam.load(tmp) end, "mask_decoder.iou_token.weight: got [2, 16], expected [1, 16]",
             "a misshapen tensor: the error names the key and both shapes")
  all["mask_decoder.iou_token.weight"] = src:get("mask_decoder.iou_token.weight")
  all["mask_decoder.extra.weight"] = T.zeros({ 1 })
  safetensors.save(tmp .. "/model.safetensors", all)
  tap.raises(function() sam.load(tmp) end, "mask_decoder.extra.weight", "an unknown tensor is refused by name")
  os.execute("rm -rf " .. tmp)
end

os.exit(tap.done())
