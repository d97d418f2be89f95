-- The diffusion recipes: DiffSeg's symmetric-KL merging on planted
-- attention maps, both recipes' attention aggregation against maps
-- recomputed here from the sd-tiny fixture's reference attention, and both
-- recipes end to end through `fmseg segment` on the tiny pipeline.
local tap = require("tap")
local T = require("fmseg.tensor")
local nn = require("fmseg.nn")
local recipes = require("fmseg.method.recipes")
local json = require("fmseg.io.json")

local diffseg = recipes.load("diffseg")
local crossattn = recipes.load("diffusion_crossattn")

-- Symmetric KL --------------------------------------------------------------------

-- rows of random positive numbers, each normalised to sum 1
local function distributions(n, d, seed)
  local x = T.rand({ n, d }, seed, 0.01, 1)
  return x:div_(x:sum(2, true))
end

do
  local p, q = distributions(5, 12, 1), distributions(7, 12, 2)
  local got = diffseg.sym_kl(p, q)
  local pv, qv = p:totable(), q:totable()
  local want = {}
  for i = 1, 5 do
    want[i] = {}
    for j = 1, 7 do
      local s = 0
      for k = 1, 12 do
        local a, b = pv[i][k], qv[j][k]
        s = s + 0.5 * a * math.log(a / b) + 0.5 * b * math.log(b / a)
      end
      want[i][j] = s
    end
  end
  tap.near(got, want, 1e-5, "sym_kl equals ½KL(p‖q) + ½KL(q‖p) summed element by element")
  tap.ok(math.abs(diffseg.sym_kl(p, p):select(2, 1):get(1)) < 1e-6, "sym_kl of a map with itself is 0")
  local z = T.from_table({ { 0.5, 0.5, 0 } })
  local v = diffseg.sym_kl(z, T.from_table({ { 1 / 3, 1 / 3, 1 / 3 } })):item()
  tap.ok(v == v and v > 1, "a zero entry gives a large, finite KL (no NaN)", v)
end

-- Anchor grid ------------------------------------------------------------------------

do
  -- DiffSeg's generate_sampling_grid(16) on 64x64: segment 63 // 15 = 4,
  -- start (63 - 60) // 2 = 1 → 1, 5, ..., 61 along each axis, rows outer.
  local g = diffseg.sampling_grid(64, 64, 16)
  tap.eq(#g, 256, "16x16 anchors on a 64x64 map")
  tap.ok(g[1] == 1 * 64 + 1 and g[2] == 1 * 64 + 5 and g[16] == 1 * 64 + 61 and g[17] == 5 * 64 + 1
         and g[256] == 61 * 64 + 61, "anchors at 1, 5, ..., 61, rows outer", table.concat(g, ",", 1, 17))
  local small = diffseg.sampling_grid(8, 8, 16)
  tap.eq(#small, 64, "more anchors than pixels: every pixel is an anchor")
  local rect = diffseg.sampling_grid(6, 10, 3)
  tap.ok(#rect == 9 and rect[1] == 0 * 10 + 0 and rect[2] == 4 and rect[3] == 8 and rect[4] == 2 * 10,
         "non-square maps space each axis on its own", table.concat(rect, ","))
end

-- The official's arithmetic: TF bilinear, the float16 first merge -------------------

do
  -- tf.image.resize bilinear, half-pixel centres: 2x2 → 4x4 by hand
  -- (sources -0.25, 0.25, 0.75, 1.25: clamped, lerp 0.25, 0.75, clamped)
  local x = T.from_table({ { { { 0, 1 }, { 2, 3 } } } })
  local got = diffseg.resize_tf(x, 4, 4):reshape({ 4, 4 })
  local row = { 0, 0.25, 0.75, 1 }
  local want = {}
  for i, dy in ipairs({ 0, 0.5, 1.5, 2 }) do
    want[i] = {}
    for j = 1, 4 do want[i][j] = row[j] + dy end
  end
  tap.near(got, want, 0, "TF bilinear 2x2 → 4x4 as computed by hand")
  local r = T.rand({ 3, 2, 8, 8 }, 11, 0, 1)
  tap.near(diffseg.resize_tf(r, 64, 64), nn.interpolate(r, 64, 64, { mode = "bilinear" }), 2e-6,
           "TF bilinear equals torch's align_corners=False up to rounding")
  tap.near(diffseg.resize_tf(r, 8, 8), r, 0, "TF bilinear to the same size copies")

  -- float16 KL: values of float32 maps within float16 precision; a zero
  -- entry (or one that underflows, < 2^-25) makes the KL NaN, even with itself
  local p = distributions(4, 64, 3)
  local kl16 = diffseg.kl_f16(p, p)
  tap.near(kl16, diffseg.sym_kl(p, p), 2e-3, "float16 KL ≈ the float32 KL")
  tap.eq(kl16:get(2, 2), 0, "float16 KL of a map with itself is 0")
  local z = T.from_table({ { 0.5, 0.5 - 1e-8, 1e-8 }, { 0.25, 0.25, 0.5 } })
  local kz = diffseg.kl_f16(z, z)
  local nan = kz:get(1, 1)
  tap.ok(nan ~= nan and kz:get(1, 2) ~= kz:get(1, 2) and kz:get(2, 1) ~= kz:get(2, 1),
         "an entry that underflows in float16: NaN KL, with itself too")
  tap.eq(kz:get(2, 2), 0, "maps without zeros are unaffected")
  -- the threshold is half(τ): 1.1 → 1.099609375
  local core = require("fmseg.core")
  tap.eq(core.C.fm_round_half(1.1), 1.099609375, "float16 τ")

  -- an anchor whose map underflows is dropped; the others merge as before
  local maps = distributions(6, 16, 5):contiguous()
  local rows = maps:totable()
  rows[1][1] = 0
  local withzero = T.from_table(rows)
  withzero:div_(withzero:sum(2, true))
  local m = diffseg.merge(withzero, { 0, 1, 2 }, { 100, 100 })
  tap.eq(m:size(1), 1, "anchor 0 dropped (NaN), anchors 1 and 2 merge under a huge τ")
  local only = diffseg.merge(withzero, { 0, 3 }, { 1e-3 })
  tap.eq(only:size(1), 1, "a single merge keeps the anchors that met something")

  -- the protocol's centred square
  local y0, x0, c = diffseg.center_square(1024, 2048)
  tap.ok(y0 == 1 and x0 == 513 and c == 1024, "centre square of 2048x1024", ("%d %d %d"):format(y0, x0, c))
  y0, x0, c = diffseg.center_square(375, 500)
  tap.ok(y0 == 1 and x0 == 63 and c == 375, "centre square of 500x375 (offset (500 - 375) // 2)")
end

-- Evaluation protocol (fmseg.eval.protocol): crop, resize, nearest labels ---------------

do
  local protocol = require("fmseg.eval.protocol")
  local lab = T.new({ 4, 8 }, "int32")
  local lp = lab:ptr()
  for i = 0, 31 do lp[i] = i end
  local sq = protocol.labels(lab, { center_crop = true })
  tap.ok(sq:size(1) == 4 and sq:size(2) == 4 and sq:get(1, 1) == 2 and sq:get(4, 4) == 29,
         "labels: the centred 4x4 of 8x4 (columns 2..5)")
  local up = protocol.labels(lab, { center_crop = true, resize = 2 })
  -- TF nearest, half-pixel: source floor((i + 0.5) * 2) = 1, 3
  tap.ok(up:size(1) == 2 and up:get(1, 1) == 1 * 8 + 3 and up:get(2, 2) == 3 * 8 + 5,
         "labels: nearest as TF (floor((i + 0.5) · in / out))")
  local img = T.rand({ 6, 10, 3 }, 2, 0, 255)
  local out = protocol.image(img, { center_crop = true, resize = 12 })
  tap.ok(out:dtype() == "float32" and out:size(1) == 12 and out:size(2) == 12 and out:size(3) == 3,
         "image: the square resized in float, (S, S, 3)")
end

-- Merging planted groups ------------------------------------------------------------

-- A 16x16 latent in three regions; pixel q's map over the 256 key pixels is
-- mostly its region's planted distribution, mixed with the other two and
-- perturbed pixel by pixel.
local S = 16
local function region(y, x)
  if y < 8 then return 1 elseif x < 6 then return 2 else return 3 end
end
local planted = {}
for r = 1, 3 do
  local p = {}
  local total = 0
  for y = 0, S - 1 do
    for x = 0, S - 1 do
      local v = region(y, x) == r and 1 or 0.01
      p[#p + 1] = v
      total = total + v
    end
  end
  for i = 1, #p do p[i] = p[i] / total end
  planted[r] = p
end
local noise = T.rand({ S * S, S * S }, 7, 0.8, 1.2):values()
local rows = {}
for y = 0, S - 1 do
  for x = 0, S - 1 do
    local own = region(y, x)
    local row, total = {}, 0
    for k = 1, S * S do
      local v = 0
      for r = 1, 3 do v = v + (r == own and 0.92 or 0.04) * planted[r][k] end
      v = v * noise[(y * S + x) * S * S + k]
      row[k] = v
      total = total + v
    end
    for k = 1, S * S do row[k] = row[k] / total end
    rows[#rows + 1] = row
  end
end
local attns = T.from_table(rows)

do
  local kl = diffseg.sym_kl(attns, attns)
  -- pixels (0,0), (15,0), (15,15) lie in regions 1, 2, 3; (0,1) beside the first
  local a, b, c, a2 = 1, 15 * S + 1, S * S, 2
  local across = math.min(kl:get(a, b), kl:get(a, c), kl:get(b, c))
  tap.ok(across > 2.2 and kl:get(a, a2) < 0.3, "planted groups: KL across > 2τ, within well under τ",
         ("across %.3f within %.3f"):format(across, kl:get(a, a2)))

  local anchors = diffseg.sampling_grid(S, S, 8)
  local merged = diffseg.merge(attns, anchors, { 1.1, 1.1, 1.1 })
  tap.eq(merged:size(1), 3, "three planted groups merge into exactly 3 maps")
  -- every pixel's label: the merged map attending to it most (NMS at 1x)
  local ids = merged:argmax(1):values()
  local map_of = {}
  local consistent = true
  for y = 0, S - 1 do
    for x = 0, S - 1 do
      local r, id = region(y, x), ids[y * S + x + 1]
      if map_of[r] == nil then map_of[r] = id elseif map_of[r] ~= id then consistent = false end
    end
  end
  tap.ok(consistent and map_of[1] ~= map_of[2] and map_of[2] ~= map_of[3] and map_of[1] ~= map_of[3],
         "argmax over the merged maps recovers the three regions")
  tap.near(merged:sum(2), T.ones({ 3 }), 1e-5, "merged maps stay distributions")
  tap.eq(diffseg.merge(attns, anchors, { 1e-3, 1e-3 }):size(1), #anchors,
         "a tiny τ merges nothing: one map per anchor")
  -- the first merge compares in float16, where 1e-9 is 0: not even an
  -- anchor meets itself, and the official would be left with no map
  tap.raises(function() diffseg.merge(attns, anchors, { 1e-9 }) end, "every anchor was dropped",
             "a τ that is 0 in float16 drops every anchor")
  tap.eq(diffseg.merge(attns, anchors, { 100 }):size(1), #anchors,
         "one iteration keeps one map per anchor, whatever τ")
  tap.eq(diffseg.merge(attns, anchors, { 100, 100 }):size(1), 1, "a huge τ merges everything in iteration 2")
  local refined = diffseg.kmeans_refine(attns, merged, 50)
  tap.eq(refined:size(1), 3, "k-means refinement from the merged maps keeps the three groups")
  tap.near(refined, merged, 0.05, "refinement moves well-separated merged maps little")
end

-- Aggregation against the fixtures ---------------------------------------------------

-- Reference attention maps of one kind from ref.safetensors, grouped by
-- query count: mean over the heads of batch row b (rows are batch*heads,
-- batch 2 = [prompt, empty prompt]), then over layers.
local function ref_means(ref, meta, kind, b)
  local sums, counts = {}, {}
  for name in pairs(meta.tensors) do
    if name:match("^attn%.") and name:sub(-5) == kind then
      local m = ref:get(name)
      local heads = m:size(1) / 2
      local mean = m:narrow(1, (b - 1) * heads + 1, heads):mean(1)       -- (q, k)
      sums[m:size(2)] = sums[m:size(2)] and sums[m:size(2)] + mean or mean
      counts[m:size(2)] = (counts[m:size(2)] or 0) + 1
    end
  end
  for q, s in pairs(sums) do sums[q] = s / counts[q] end
  return sums
end

-- The UNet levels of an lh x lw latent that hold maps: { h, w, q }, finest first
local function levels(sums, lh, lw)
  local out = {}
  local h, w = lh, lw
  for _ = 1, 8 do
    if sums[h * w] then out[#out + 1] = { h = h, w = w, q = h * w } end
    h, w = math.ceil(h / 2), math.ceil(w / 2)
  end
  return out
end

-- DiffSeg's aggregation written out: keys bilinear to the finest level,
-- renormalised, queries repeated, weights ∝ sqrt(h·w) (or `ratio`).
local function diffseg_reference(sums, lv, ratio)
  local fh, fw = lv[1].h, lv[1].w
  local total = 0
  for _, l in ipairs(lv) do total = total + math.sqrt(l.q) end
  local want
  for i, l in ipairs(lv) do
    local keys = nn.interpolate(sums[l.q]:reshape({ l.q, 1, l.h, l.w }), fh, fw, { mode = "bilinear" })
    keys = keys:reshape({ l.q, fh * fw })
    keys = keys / keys:sum(2, true)
    local parts = {}
    local sy, sx = fh / l.h, fw / l.w
    for y = 0, fh - 1 do
      for x = 0, fw - 1 do
        parts[#parts + 1] = keys:narrow(1, math.floor(y / sy) * l.w + math.floor(x / sx) + 1, 1)
      end
    end
    local term = T.cat(parts, 1) * (ratio and ratio[i] or math.sqrt(l.q) / total)
    want = want and want + term or term
  end
  return want
end

-- DiffSegmenter's per-class map written out: token columns averaged,
-- bilinear to the finest level, min-max, weighted, summed.
local function cross_reference(sums, lv, cls, weight_of_level)
  local fh, fw = lv[1].h, lv[1].w
  local want
  for i, l in ipairs(lv) do
    local wt = weight_of_level[i] or 0
    if wt ~= 0 then
      local m = sums[l.q]
      local col = m:narrow(2, cls[1] + 1, 1)
      for j = 2, #cls do col = col + m:narrow(2, cls[j] + 1, 1) end
      col = (col / #cls):reshape({ 1, 1, l.h, l.w })
      if l.h ~= fh or l.w ~= fw then col = nn.interpolate(col, fh, fw, { mode = "bilinear" }) end
      col = col:reshape({ fh * fw })
      local lo, hi = col:min(), col:max()
      local term = (col - lo) / (hi - lo) * wt
      want = want and want + term or term
    end
  end
  return want
end

local function check_fixture(dir, label)
  local sd = require("fmseg.models.sd")
  local ref = require("fmseg.io.safetensors").open(dir .. "/ref.safetensors")
  local meta = json.decode(io.open(dir .. "/ref.json"):read("*a"))
  local noisy, text = ref:get("noisy_latents"), ref:get("text_embeddings")
  local lh, lw = noisy:size(3), noisy:size(4)
  local t = ref:get("timestep"):item()
  local unet = sd.unet.load(dir .. "/unet")
  local cap = sd.attention.capture({ mean_heads = true })
  unet:forward(T.cat({ noisy, noisy }, 1), t, text, { capture = cap })

  -- DiffSeg on the empty prompt's row (2)
  local selfs = ref_means(ref, meta, "attn1", 2)
  local lv = levels(selfs, lh, lw)
  tap.ok(#lv >= 2, label .. ": self-attention at two or more resolutions", #lv)
  local got, h, w = diffseg.aggregate(cap, nil, 2)
  tap.ok(h == lv[1].h and w == lv[1].w, label .. ": DiffSeg aggregates at the finest resolution",
         ("%dx%d"):format(h, w))
  tap.near(got, diffseg_reference(selfs, lv), 1e-4,
           label .. ": DiffSeg aggregation equals the fixture's maps aggregated here")
  tap.near(got:sum(2), T.ones({ h * w }), 1e-5, label .. ": aggregated self-attention rows are distributions")
  local ratio = {}
  for i = 1, #lv do ratio[i] = i / 10 end
  tap.near(diffseg.aggregate(cap, ratio, 2), diffseg_reference(selfs, lv, ratio), 1e-4,
           label .. ": an explicit weight_ratio is used, finest first")

  -- Cross-attention on the prompt's row (1): token 5 ("cat") and tokens
  -- 2-3 ("photo of") averaged
  local classes = { { 5 }, { 2, 3 } }
  local cross = ref_means(ref, meta, "attn2", 1)
  local clv = levels(cross, lh, lw)
  local weights, by_level = { [64] = 0.7, [32] = 0.2, [16] = 0.1 }, { 0.7, 0.2, 0.1 }
  local want = {}
  for c, cls in ipairs(classes) do want[c] = cross_reference(cross, clv, cls, by_level) end
  local maps = crossattn.class_maps(cap, classes, { weights = weights, latent = { lh, lw }, row = 1 })
  local fh, fw = clv[1].h, clv[1].w
  tap.eq(T.shape_string(maps:shape()), ("[2, %d, %d]"):format(fh, fw), label .. ": class maps at the finest resolution")
  tap.near(maps:reshape({ 2, fh * fw }), T.stack(want, 1), 1e-4,
           label .. ": cross-attention aggregation equals the fixture's maps aggregated here")
  -- refinement: map(q) = Σ_k A[q, k] map(k), A the finest self-attention mean
  local a = ref_means(ref, meta, "attn1", 1)[fh * fw]:totable()
  local refined = {}
  for c = 1, 2 do
    local m = want[c]:values()
    local r = {}
    for q = 1, fh * fw do
      local s = 0
      for k = 1, fh * fw do s = s + a[q][k] * m[k] end
      r[q] = s
    end
    refined[c] = r
  end
  local got_r = crossattn.class_maps(cap, classes, { weights = weights, latent = { lh, lw }, row = 1,
                                                     self_refine = true })
  tap.near(got_r:reshape({ 2, fh * fw }), refined, 1e-4, label .. ": self-attention refinement equals A · map")
  local dflt = crossattn.class_maps(cap, classes, { weights = crossattn.defaults.weights, latent = { lh, lw } })
  tap.near(dflt:select(1, 1):reshape({ fh * fw }), cross_reference(cross, clv, classes[1], { 0.1, 0.1, 0.5, 0.3 }),
           1e-4, label .. ": default weights: the latent's own size counts as 64, half of it as 32")
  tap.raises(function() crossattn.class_maps(cap, classes, { weights = { [2] = 1 }, latent = { lh, lw } }) end,
             "no captured resolution has a weight", label .. ": weights naming no captured resolution are refused")
  cap:clear()
  return ref, meta
end

local dir = tap.fixtures("sd-tiny")
if dir then
  local ref, meta = check_fixture(dir, "sd-tiny")
  -- the prompt's class tokens: "a photo of a cat." has "cat" at token 5
  local tok = require("fmseg.text.tokenizer").load(dir .. "/tokenizer")
  local text_ids, positions = crossattn.prompt_tokens(tok, "a photo of a {}.", { "cat" }, " and ")
  local ids = ref:get("input_ids"):select(1, 1):values()
  local same = text_ids == meta.texts[1]
  for i, id in ipairs(tok:encode(text_ids)) do same = same and ids[i] == id end
  tap.ok(same and #positions == 1 and positions[1][1] == 5 and #positions[1] == 1,
         "prompt_tokens finds 'cat' at token 5 of the fixture's prompt")
  local joined, pos2 = crossattn.prompt_tokens(tok, "a photograph of {}", { "cat", "traffic light" }, " and ")
  local enc = tok:encode(joined)
  local picked = {}
  for _, p in ipairs(pos2[2]) do picked[#picked + 1] = enc[p + 1] end
  tap.ok(joined == "a photograph of cat and traffic light" and pos2[1][1] == 4
         and tok:decode(picked) == "traffic light ", "joined prompt: each name's token positions",
         joined .. " / " .. tok:decode(picked))
  tap.raises(function() crossattn.prompt_tokens(tok, "a photo", { "cat" }, " ") end, "has no {}",
             "a prompt without {} is refused")
end
-- two layers per block, per-block head counts, an 8x12 latent
local alt = io.open("tests/fixtures/sd-alt/model_index.json") and "tests/fixtures/sd-alt"
if alt then check_fixture(alt, "sd-alt") else tap.skip("sd-alt fixture", "tests/fixtures/sd-alt missing") end

-- End to end -----------------------------------------------------------------------

if dir then
  local image = require("fmseg.image")
  local tmp = os.tmpname()
  os.remove(tmp)
  os.execute("mkdir -p " .. tmp)
  local input = dir .. "/input.png"
  local img = image.load(input)
  local H, W = img:size(1), img:size(2)

  local function segment(config, out, sets)
    local cmd = ("./fmseg segment %s %s --set models.sd=%s --set params.image_size=16 %s -o %s"
                 .. " --dump %s/dump.safetensors >%s/log 2>&1")
      :format(config, input, dir, sets or "", out, out, tmp)
    local ok = os.execute(cmd)
    local f = io.open(tmp .. "/log")
    local log = f and f:read("*a") or ""
    if f then f:close() end
    return ok == 0 or ok == true, log
  end
  local function read_json(path)
    local f = io.open(path)
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return json.decode(s)
  end

  -- DiffSeg
  local out = tmp .. "/diffseg"
  local ok, log = segment("configs/diffseg/diffseg_sd15_cocostuff27.yaml", out, "--set params.kl_threshold=[0.01,0.01,0.01]")
  tap.ok(ok, "diffseg: fmseg segment runs on the tiny pipeline", log)
  local summary = read_json(out .. "/input.json")
  tap.ok(summary and summary.kind == "segments" and summary.recipe == "diffseg", "diffseg: summary JSON written")
  local labels = image.load_indices(out .. "/input.png")
  local maps = require("fmseg.io.safetensors").open(out .. "/dump.safetensors"):get("maps")
  local k = maps:size(1)
  tap.ok(labels:size(1) == H and labels:size(2) == W, "diffseg: label map at the image's size")
  tap.ok(maps:size(2) == 8 and maps:size(3) == 8 and k >= 1, "diffseg: merged maps at the 8x8 latent",
         T.shape_string(maps:shape()))
  tap.ok(labels:float():max() < k and labels:float():min() >= 0, "diffseg: segment ids index the merged maps")
  tap.ok(io.open(out .. "/input_overlay.png") ~= nil, "diffseg: overlay written")
  ok = segment("configs/diffseg/diffseg_sd15_cityscapes.yaml", tmp .. "/diffseg_refine",
               "--set params.refine=true --set params.num_points=4")
  tap.ok(ok and read_json(tmp .. "/diffseg_refine/input.json") ~= nil, "diffseg: refinement and a 4x4 grid run")

  -- Cross-attention on VOC21 (20 classes named, background 0)
  -- (every class prompted: the config's CLIP step is tests/lua/test_diffusion_crossattn.lua's)
  local cfg = "configs/diffusion_crossattn/diffusion_crossattn_sd15_voc21.yaml"
  local all = "--set params.present_classes=all "
  out = tmp .. "/cross"
  ok, log = segment(cfg, out, all)
  tap.ok(ok, "diffusion_crossattn: fmseg segment runs on the tiny pipeline", log)
  summary = read_json(out .. "/input.json")
  tap.ok(summary and summary.kind == "semantic" and #summary.classes == 21, "diffusion_crossattn: summary JSON")
  labels = image.load_indices(out .. "/input.png")
  maps = require("fmseg.io.safetensors").open(out .. "/dump.safetensors"):get("maps")
  tap.ok(labels:size(1) == H and labels:size(2) == W and labels:float():max() <= 20,
         "diffusion_crossattn: labels at the image's size, classes 0..20")
  tap.eq(T.shape_string(maps:shape()), "[20, 8, 8]", "diffusion_crossattn: one map per named class")
  ok = segment(cfg, tmp .. "/all_bg", all .. "--set params.bg_threshold=1.5")
  local all_bg = image.load_indices(tmp .. "/all_bg/input.png")
  tap.ok(ok and all_bg:float():max() == 0, "background above every normalised score: all background")
  ok = segment(cfg, tmp .. "/no_bg", all .. "--set params.bg_threshold=-1")
  local no_bg = image.load_indices(tmp .. "/no_bg/input.png")
  tap.ok(ok and no_bg:float():min() >= 1, "background below every score: no background")
  ok = segment(cfg, tmp .. "/per_class", all .. "--set params.background=false")
  local per = require("fmseg.io.safetensors").open(tmp .. "/per_class/dump.safetensors"):get("maps")
  tap.ok(ok and T.shape_string(per:shape()) == "[21, 8, 8]",
         "background=false: 21 passes (one per class), one map per class")
  os.execute("rm -rf " .. tmp)
end

os.exit(tap.done())
