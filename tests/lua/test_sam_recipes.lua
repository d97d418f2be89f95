-- test_sam_recipes.lua — the SAM recipes: sam_refine's prompt derivation on
-- synthetic masks whose right prompts are known by construction; refinement
-- and composition (`refine:` in a config) with a stand-in SAM that knows
-- the scene's true objects, so the refined map must be exactly those
-- objects; PerSAM's feature matching and cascade with constructed features
-- and a recording stand-in; then every recipe end to end through
-- `fmseg segment` on the tiny random-weight fixtures (outputs well-formed).
local tap = require("tap")
local T = require("fmseg.tensor")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local masks = require("fmseg.masks")
local recipes = require("fmseg.method.recipes")
local segment = require("fmseg.method.segment")
local viz = require("fmseg.viz")

local refine = recipes.load("sam_refine")
local persam = recipes.load("persam")
local sam_clip = recipes.load("sam_clip")

local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. tmp)

local function rect(h, w, y0, x0, y1, x1)             -- 0-based inclusive corners → (h, w) 0/1
  local m = T.zeros({ h, w })
  m:narrow(1, y0 + 1, y1 - y0 + 1):narrow(2, x0 + 1, x1 - x0 + 1):fill(1)
  return m
end

local function disc(h, w, cy, cx, r)
  local ys, xs = T.arange(h):reshape(h, 1), T.arange(w):reshape(1, w)
  return ((ys - cy):pow(2) + (xs - cx):pow(2)):le(r * r)
end

local function equal(a, b) return (a:float() - b:float()):abs():max() == 0 end
local function xy(p) return p and ("{%s, %s}"):format(p[1], p[2]) or "nil" end

-- ---- prompt derivation ----------------------------------------------------------------

do
  local m = rect(40, 60, 10, 20, 19, 49)            -- rows 10..19, cols 20..49
  local b = refine.box(m)
  tap.ok(b[1] == 20 and b[2] == 10 and b[3] == 49 and b[4] == 19, "box of a rectangle: inclusive XYXY",
         table.concat(b, ","))
  tap.raises(function() refine.box(T.zeros({ 4, 4 })) end, "empty mask", "box of an empty mask is refused")

  local p = refine.distance_point(m)
  tap.ok(math.abs(p[1] - 34.5) <= 0.5 and math.abs(p[2] - 14.5) <= 0.5,
         "distance point: the centre of a rectangle (34.5, 14.5), not its first maximal pixel", xy(p))
  local d = disc(50, 70, 22, 31, 9)
  p = refine.distance_point(d)
  tap.ok(p[1] == 31 and p[2] == 22, "distance point: the centre of a disc", xy(p))
  p = refine.distance_point(rect(30, 40, 0, 0, 9, 29))
  tap.ok(math.abs(p[1] - 14.5) <= 0.5 and math.abs(p[2] - 4.5) <= 0.5,
         "distance point: a rectangle on the image border is centred (the border counts as outside)", xy(p))
  -- an L shape: the deepest pixel lies in the thick arm
  local l = rect(40, 40, 5, 5, 34, 14):maximum(rect(40, 40, 25, 5, 34, 34))
  p = refine.distance_point(l)
  tap.ok(l:get(p[2] + 1, p[1] + 1) == 1 and p[1] <= 14 and p[2] >= 5,
         "distance point lies inside an L shape", xy(p))

  -- logit maximum: the best pixel inside the mask, not the image's maximum
  local prob = T.full({ 40, 60 }, 0.2)
  prob:set(3, 3, 0.99)                               -- outside the mask
  prob:set(13, 41, 0.7)                              -- inside: x = 40, y = 12
  p = refine.logit_max_point(prob, m)
  tap.ok(p[1] == 40 and p[2] == 12, "logit_max point: the probability's maximum inside the component", xy(p))
  p = refine.logit_max_point(T.zeros({ 40, 60 }), m)
  tap.ok(m:get(p[2] + 1, p[1] + 1) == 1, "logit_max point with a flat probability stays inside the mask", xy(p))

  -- negatives: none for a box-filling rectangle; outside a disc, inside its box
  tap.eq(refine.negative_point(m, 1 - m), nil, "negative point: none when the component fills its box")
  local dn = refine.negative_point(d, 1 - d)
  local db = refine.box(d)
  tap.ok(dn and d:get(dn[2] + 1, dn[1] + 1) == 0 and dn[1] >= db[1] and dn[1] <= db[3]
         and dn[2] >= db[2] and dn[2] <= db[4], "negative point of a disc: background inside its box", xy(dn))
  -- "others": the neighbour the box overlaps, at the neighbour's deepest point inside the box
  local blob = rect(40, 60, 5, 5, 30, 40):mul_(1 - rect(40, 60, 5, 25, 20, 40))   -- an L: a notch top-right
  local other = rect(40, 60, 5, 25, 20, 59)
  local on = refine.negative_point(blob, other)
  tap.ok(on and other:get(on[2] + 1, on[1] + 1) == 1 and on[1] <= 40 and blob:get(on[2] + 1, on[1] + 1) == 0,
         "negative point (others): inside the other class, within the component's box", xy(on))
  tap.eq(refine.negative_point(blob, rect(40, 60, 35, 50, 39, 59)), nil,
         "negative point (others): none when no other class is inside the box")

  -- components: 8-connected, filtered by area
  local scene = rect(50, 50, 2, 2, 11, 11)           -- 100 px
  scene:maximum_(rect(50, 50, 12, 12, 21, 21))        -- touches the first only diagonally: same component
  scene:maximum_(rect(50, 50, 30, 30, 44, 44))        -- 225 px
  scene:maximum_(rect(50, 50, 40, 2, 43, 5))          -- 16 px speck
  local comps = refine.components(scene, 150)
  tap.ok(#comps == 2 and comps[1].area == 200 and comps[2].area == 225,
         "components: 8-connected (diagonal squares join), smaller than min_area dropped",
         #comps .. " components")
  local b2 = comps[2].box
  tap.ok(b2[1] == 30 and b2[2] == 30 and b2[3] == 44 and b2[4] == 44 and comps[2].mask:sum() == 225,
         "components: each with its own mask and box")
  tap.eq(#refine.components(scene, 226), 0, "components: none at or above a larger min_area")

  -- mask prompt: longest side to S, padded, coeff x prob above the threshold
  local pr = T.full({ 30, 60 }, 0.5)
  pr:narrow(2, 1, 30):fill(0.05)                      -- left half below the threshold
  local mp = refine.mask_prompt(pr, 32, 0.1, 0.005)
  local shape = mp:shape()
  tap.ok(shape[1] == 1 and shape[2] == 1 and shape[3] == 32 and shape[4] == 32, "mask prompt: (1, 1, S, S)")
  tap.ok(math.abs(mp:get(1, 1, 8, 28) - 0.0025) < 1e-7 and mp:get(1, 1, 8, 4) == 0 and mp:get(1, 1, 17, 28) == 0
         and mp:get(1, 1, 16, 28) > 0, "mask prompt: 0.005 x prob above the threshold, zero below and in the padding")

  local bin = T.stack({ rect(10, 10, 0, 0, 4, 9), rect(10, 10, 0, 0, 9, 9), T.zeros({ 10, 10 }) }, 1)
  local ious = refine.mask_iou(bin, rect(10, 10, 0, 0, 9, 9))
  tap.ok(ious[1] == 0.5 and ious[2] == 1 and ious[3] == 0, "mask_iou of three masks with a reference")
end

-- ---- fusion ---------------------------------------------------------------------------------

do
  local h, w = 20, 30
  local labels = T.zeros({ h, w }, "int32")
  labels:narrow(1, 6, 8):narrow(2, 6, 10):fill(1)      -- coarse class 1: rows 5..12, cols 5..14
  local sam1 = rect(h, w, 3, 3, 15, 18) * 20 - 10       -- SAM: a larger rectangle for class 1
  local coarse = { labels = labels, nclasses = 3 }
  local out, scores = refine.fuse(coarse, { { class = 1, logits = sam1 } }, nil)
  tap.ok(equal(out, rect(h, w, 3, 3, 15, 18)), "fuse: a kept mask grows the class; uncovered pixels keep coarse labels")
  tap.ok(scores:shape()[1] == 3 and math.abs(scores:get(2, 5, 5) - 1 / (1 + math.exp(-10))) < 1e-6
         and scores:get(1, 1, 1) == 0, "fuse: scores = sigmoid(logit) in the mask (no probabilities), 0 elsewhere (Trident)")
  -- a failed component raises the scores to its coarse class but, as in
  -- Trident's map_failed_regions, never changes a label: where another
  -- class's mask covers it, that class wins
  local l2 = labels:clone()
  l2:narrow(1, 15, 4):narrow(2, 21, 5):fill(2)          -- class 2 at rows 14..17, cols 20..24
  local sam0 = (1 - rect(h, w, 3, 3, 15, 18)) * 20 - 10  -- background mask covers the class-2 region
  local failed = rect(h, w, 14, 20, 17, 24)
  local out2, scores2 = refine.fuse({ labels = l2, nclasses = 3 },
                                    { { class = 1, logits = sam1 }, { class = 0, logits = sam0 } }, failed)
  tap.ok(equal(out2, rect(h, w, 3, 3, 15, 18)) and scores2:get(3, 16, 22) == 1 and scores2:get(3, 1, 1) == 0,
         "fuse: a failed component raises its coarse class's scores, the covering mask keeps the label")
  local out2b = refine.fuse({ labels = l2, nclasses = 3 }, { { class = 1, logits = sam1 } }, failed)
  tap.ok(equal(out2b, rect(h, w, 3, 3, 15, 18):maximum(failed * 2)),
         "fuse: an uncovered failed component keeps its coarse label")
  local out2c, scores2c = refine.fuse({ labels = l2, nclasses = 3 }, {}, failed)
  tap.ok(equal(out2c, l2) and scores2c:get(2, 7, 7) == 1, "fuse: no kept mask: the coarse result as it is")
  -- with probabilities: per-pixel argmax of sigmoid x probability
  local probs = T.full({ 2, h, w }, 0.5)
  probs:select(1, 2):narrow(2, 1, 10):fill(0.9)          -- class 1 confident on the left third
  local both = { { class = 0, logits = T.full({ h, w }, 10) }, { class = 1, logits = T.full({ h, w }, 10) } }
  local out3 = refine.fuse({ labels = T.zeros({ h, w }, "int32"), probs = probs, nclasses = 2 }, both, nil)
  tap.ok(equal(out3, rect(h, w, 0, 0, h - 1, 9)), "fuse: overlapping masks resolved by sigmoid x coarse probability")
end

-- ---- refinement with a stand-in SAM ------------------------------------------------------------------

-- A SAM stand-in that knows the scene: the answer to a prompt is the object
-- under its first (positive) point, logits +8 inside, -8 outside; single
-- mask: the object with its `iou`; multimask: its left half, the object
-- and the whole image with predicted IoUs 0.7, 0.8, 0.9 (so the best
-- predicted IoU is the wrong one). "Low-res" logits are full size.
local function fake_sam(h, w, objects, background)
  local p = { model = { config = { prompt = { image_embedding_size = 8 } } }, calls = {} }
  local whole = T.ones({ h, w })
  local function under(x, y)
    for _, o in ipairs(objects) do
      if o.mask:get(y + 1, x + 1) > 0 then return o end
    end
    return background
  end
  function p:set_image(img) self.hw = { img:size(1), img:size(2) } end
  function p:reset_image() end
  function p:predict_batch(points, labels, opts)
    self.calls[#self.calls + 1] = { points = points:clone(), labels = labels:clone(), boxes = opts.boxes:clone(),
                                    mask_input = opts.mask_input, multimask = opts.multimask, masks = opts.masks,
                                    frame_hw = opts.frame_hw, mask_norm = opts.mask_norm }
    -- prompts come in pixels of opts.frame_hw (a downsampled map)
    local sx, sy = 1, 1
    if opts.frame_hw then sy, sx = h / opts.frame_hw[1], w / opts.frame_hw[2] end
    local n, m = points:size(1), opts.multimask and 3 or 1
    local iou, low = T.zeros({ n, m }), T.zeros({ n, m, h, w })
    for i = 1, n do
      local o = under(math.floor(points:get(i, 1, 1) * sx), math.floor(points:get(i, 1, 2) * sy))
      local outs = opts.multimask and { o.part, o.mask, whole } or { o.mask }
      local scores = opts.multimask and { 0.7, 0.8, 0.9 } or { o.iou }
      for k = 1, m do
        low:select(1, i):select(1, k):copy(outs[k] * 16 - 8)
        iou:set(i, k, scores[k])
      end
    end
    return nil, iou, low
  end
  function p:upsample_logits(low) return low:clone() end
  -- SAM's frame: the aspect kept, padded (fmseg.sam.predictor's content_hw)
  function p:content_hw(hh, ww, size) return { require("fmseg.sam.processor").preprocess_shape(hh, ww, size) } end
  return p
end

-- The scene: two rectangles; SAM knows them and the background around them.
local H, W = 60, 80
local R1 = rect(H, W, 10, 10, 29, 39)
local R2 = rect(H, W, 35, 45, 54, 74)
local function left_half(m)
  local b = refine.box(m)
  return m * rect(H, W, 0, 0, H - 1, math.floor((b[1] + b[3]) / 2))
end
local function scene_sam(r2_iou)
  local bg = 1 - R1:maximum(R2)
  return fake_sam(H, W, { { mask = R1, part = left_half(R1), iou = 0.95 },
                          { mask = R2, part = left_half(R2), iou = r2_iou or 0.95 } },
                  { mask = bg, part = left_half(bg), iou = 0.95 })
end
local TRUTH = R1 + R2 * 2

-- coarse: blobs too small and off-centre inside each object, and a speck
local function coarse_labels()
  local l = disc(H, W, 19, 22, 8):maximum(rect(H, W, 0, 60, 3, 63))   -- class 1 blob + 16 px speck
  l:add_(disc(H, W, 45, 58, 8) * 2)                                    -- class 2 blob
  return l:int()
end

local P = { coarse = false, downsample = 1, coarse_thresh = 0.1, min_area = 50, point_mode = "logit_max",
            negatives = "none", mask_prompt = true, mask_coeff = 0.005, mask_norm = "rows",
            select = "predicted_iou", iou_thresh = 0.9, min_coarse_iou = 0.5, batch = 16 }
local function with(over)
  local out = {}
  for k, v in pairs(P) do out[k] = v end
  for k, v in pairs(over or {}) do out[k] = v end
  return out
end

do
  -- a label map only (no probabilities): distance points, no mask prompt
  local sam = scene_sam()
  local res = refine.refine(sam, { labels = coarse_labels(), nclasses = 3 }, with())
  tap.ok(res.kind == "semantic" and equal(res.labels, TRUTH),
         "refine: coarse blobs are sharpened into the true rectangles")
  tap.eq(#res.records, 3, "refine: the background, two blobs prompted; the speck (< min_area) is not")
  local ok = true
  for _, call in ipairs(sam.calls) do
    ok = ok and call.mask_input == nil and call.multimask == false and call.masks == false
  end
  tap.ok(ok, "refine: without probabilities no mask prompt; single-mask outputs, low-res only")
  local r1 = res.records[2]
  tap.ok(r1.class == 1 and r1.refined and r1.prompt_box[1] == 14 and r1.prompt_box[3] == 30
         and r1.point_coords[1][1] == 22 and r1.point_coords[1][2] == 19,
         "refine: a blob's prompts are its box and its centre", json.encode(r1))

  -- Trident's 2x downsampled map: components, areas and prompts there,
  -- prompts handed over in that frame, records in image pixels
  local sam_d = scene_sam()
  local resd = refine.refine(sam_d, { labels = coarse_labels(), nclasses = 3 }, with({ downsample = 2, min_area = 20 }))
  local rd = resd.records[2]
  tap.ok(equal(resd.labels, TRUTH) and #resd.records == 3 and sam_d.calls[2].frame_hw[1] == H / 2
         and sam_d.calls[2].frame_hw[2] == W / 2 and rd.area < r1.area / 3 and rd.prompt_box[1] % 2 == 0,
         "refine (downsample 2): components on the half-size map, prompts in its frame, boxes reported x2",
         json.encode(rd))
  tap.raises(function() refine.refine(scene_sam(), { labels = coarse_labels(), nclasses = 3 },
                                      with({ downsample = 1.5 })) end,
             "downsample must be a whole number", "refine: a fractional downsample is refused")

  -- SAM unsure of the second object: its blob falls back to the coarse class
  local res2 = refine.refine(scene_sam(0.5), { labels = coarse_labels(), nclasses = 3 }, with())
  local want = R1 + disc(H, W, 45, 58, 8) * 2
  tap.ok(equal(res2.labels, want), "refine: a failed component falls back to its coarse mask")
  tap.ok(res2.records[3].refined == false and res2.records[3].predicted_iou == 0.5,
         "refine: the failed component's record says so")

  -- multimask, chosen by agreement with the component (best predicted IoU
  -- would take the whole image); coarse regions = the rectangles shrunk by 2
  local shrunk = (rect(H, W, 12, 12, 27, 37) + rect(H, W, 37, 47, 52, 72) * 2):int()
  local res3 = refine.refine(scene_sam(), { labels = shrunk, nclasses = 3 }, with({ select = "coarse_iou" }))
  tap.ok(equal(res3.labels, TRUTH), "refine (coarse_iou): the multimask output agreeing with the region is chosen")
  local r = res3.records[2]
  tap.ok(r.coarse_iou and math.abs(r.coarse_iou - 416 / 600) < 1e-9 and r.predicted_iou == T.from_table({ 0.8 }):get(1),
         "refine (coarse_iou): agreement and the chosen output's predicted IoU recorded", json.encode(r))
  local res4 = refine.refine(scene_sam(), { labels = shrunk, nclasses = 3 },
                             with({ select = "coarse_iou", min_coarse_iou = 0.99 }))
  tap.ok(equal(res4.labels, shrunk), "refine (coarse_iou): too little agreement everywhere: the coarse map")

  -- negatives: one more point per prompt, label 0, on background inside the box
  local sam5 = scene_sam()
  refine.refine(sam5, { labels = coarse_labels(), nclasses = 3 }, with({ negatives = "complement" }))
  local c = sam5.calls[2]                             -- class 1
  local nx, ny = c.points:get(1, 2, 1), c.points:get(1, 2, 2)
  tap.ok(c.points:size(2) == 2 and c.labels:get(1, 2) == 0 and disc(H, W, 19, 22, 8):get(ny + 1, nx + 1) == 0
         and nx >= 14 and nx <= 30, "refine: a negative point outside the blob, inside its box")

  -- bad parameters are refused by name
  tap.raises(function() refine.refine(scene_sam(), { labels = coarse_labels(), nclasses = 3 },
                                      with({ point_mode = "centroid" })) end,
             "point_mode must be one of distance, logit_max", "refine: an unknown point_mode is refused")
end

-- with probabilities: logit-max points, the class probability as mask prompt,
-- low-confidence pixels ignored
local function coarse_probs()
  local l = coarse_labels():float()
  local probs = T.full({ 3, H, W }, 0.1)
  for c = 0, 2 do probs:select(1, c + 1):add_(l:eq(c) * 0.7) end
  return probs
end

do
  local probs = coarse_probs()
  probs:select(1, 2):set(21, 25, 0.85)                  -- class 1's maximum: x = 24, y = 20
  local lowconf = rect(H, W, 0, 0, 5, W - 1)            -- a strip nobody is sure about
  for c = 1, 3 do probs:select(1, c):mul_(1 - lowconf * 0.95) end
  local sam = scene_sam()
  local res = refine.refine(sam, { labels = coarse_labels(), probs = probs, nclasses = 3 }, with())
  tap.ok(equal(res.labels, TRUTH), "refine with probabilities: the true rectangles")
  local r1
  for _, r in ipairs(res.records) do if r.class == 1 then r1 = r end end
  tap.ok(r1 and r1.point_coords[1][1] == 24 and r1.point_coords[1][2] == 20,
         "refine with probabilities: the positive point at the class probability's maximum",
         r1 and json.encode(r1.point_coords))
  local mi = sam.calls[2].mask_input
  tap.ok(mi and mi:size(3) == 32 and mi:max() >= 0.005 * 0.8 - 1e-7 and mi:max() <= 0.005 * 0.85 and mi:min() == 0,
         "refine with probabilities: mask prompt = 0.005 x class probability at SAM's low-res size")
  local bg = res.records[1]
  tap.ok(bg.class == 0 and bg.prompt_box[2] >= 6,
         "refine: pixels whose best probability is below coarse_thresh form no component", json.encode(bg.prompt_box))
  tap.ok(res.scores:size(1) == 3 and math.abs(res.scores:get(2, 11, 11) - 0.1 / (1 + math.exp(-8))) < 1e-6,
         "refine with probabilities: scores = sigmoid(logit) x coarse probability")
end

-- ---- composition: `refine:` after another recipe, through fmseg.method.segment ------------------------------

do
  local dir = tmp .. "/recipes"
  os.execute("mkdir -p " .. dir)
  package.loaded["test_sam_recipes_fake"] = { sam = scene_sam, probs = coarse_probs, labels = coarse_labels }
  local function write(name, text)
    local f = assert(io.open(dir .. "/" .. name, "w"))
    f:write(text)
    f:close()
  end
  write("coarse_blobs.lua", [[
local fake = require("test_sam_recipes_fake")
return { segment = function(state, img)
  return { kind = "semantic", labels = fake.labels(), scores = fake.probs() }
end }
]])
  write("fake_refine.lua", [[
local base = require("fmseg.method.recipes").load("sam_refine")
local fake = require("test_sam_recipes_fake")
return { defaults = base.defaults,
  setup = function(params) return { params = params, predictor = fake.sam() } end,
  segment = base.segment }
]])
  local cfg = { recipe = dir .. "/coarse_blobs.lua", classes = { "background", "one", "two" },
                refine = { recipe = dir .. "/fake_refine.lua", params = { min_area = 50, downsample = 1 } } }
  local session = segment.session(cfg)
  local img = T.zeros({ H, W, 3 }, "uint8")
  local res = session:segment(img)
  tap.ok(equal(res.labels, TRUTH), "composition: the refine step gets the first recipe's result and refines it")
  os.execute("mkdir -p " .. tmp .. "/comp")
  local summary = session:write(res, img, tmp .. "/comp", "scene")
  tap.ok(summary.recipe == "coarse_blobs+fake_refine" and #summary.instances == 3
         and image.load_indices(tmp .. "/comp/scene.png"):size(2) == W, "composition: outputs written, both steps named")
  tap.raises(function() segment.session({ recipe = dir .. "/coarse_blobs.lua",
                                          refine = { recipe = dir .. "/fake_refine.lua", params = { min_aera = 5 } } }) end,
             "unknown parameter 'min_aera'", "composition: the refine step's parameters are checked")
  tap.raises(function() segment.session({ recipe = dir .. "/coarse_blobs.lua", refine = "sam_refine" }) end,
             "`refine` must be a mapping", "composition: a malformed refine section is refused")
  -- sam_refine refuses to refine instances
  write("one_instance.lua", [[
local T = require("fmseg.tensor")
return { segment = function(state, img)
  return { kind = "instances", masks = { T.zeros({ img:size(1), img:size(2) }, "uint8") }, scores = { 1 } }
end }
]])
  local s2 = segment.session({ recipe = dir .. "/one_instance.lua", refine = { recipe = dir .. "/fake_refine.lua" } })
  tap.raises(function() s2:segment(img) end, "refines semantic label maps", "composition: instances are refused by sam_refine")
  package.loaded["test_sam_recipes_fake"] = nil
end

-- ---- PerSAM ------------------------------------------------------------------------------------------

do
  -- features: the object's cells carry one direction, the rest another;
  -- the target image has the object at a known cell
  local c, h, w = 4, 6, 8
  local function features(object_cells)
    local f = T.zeros({ 1, c, h, w })
    f:select(2, 2):fill(1)                              -- background direction
    for _, cell in ipairs(object_cells) do
      f:set(1, 1, cell[1], cell[2], 3)                  -- object direction (+ a background part)
      f:set(1, 2, cell[1], cell[2], 0.5)
    end
    return f
  end
  local ref = features({ { 2, 2 }, { 2, 3 }, { 3, 2 } })
  local grid = rect(h, w, 1, 1, 2, 2) * rect(h, w, 0, 0, h - 1, w - 1)
  grid:set(3, 3, 0)                                    -- the three cells above
  local target = persam.target_feature(ref, grid)
  tap.ok(math.abs(target:norm() - 1) < 1e-6 and target:get(1) > 0.98, "persam: target = normalised mean feature under the mask")
  local tf = features({ { 5, 7 } })
  tf:set(1, 3, 1, 1, 5)                                -- the least object-like cell: another direction
  local sim = persam.similarity(target, tf)
  local pos, neg = persam.select_points(sim)
  tap.ok(pos[1] == 6 and pos[2] == 4 and neg[1] == 0 and neg[2] == 0,
         "persam: positive point at the most similar cell, negative at the least", xy(pos) .. " " .. xy(neg))
  tap.raises(function() persam.target_feature(ref, T.zeros({ h, w })) end, "covers no cell",
             "persam: an empty reference mask is refused")

  -- the cascade: single mask, then its logits as mask prompt (multimask),
  -- then the best mask's box added
  local hh, ww = 20, 30
  local calls = {}
  local fake = {}
  local obj = rect(hh, ww, 4, 6, 12, 20)
  function fake:predict(prompt)
    calls[#calls + 1] = prompt
    local m = prompt.multimask == false and 1 or 3
    local low = T.zeros({ m, hh, ww })
    for k = 1, m do low:select(1, k):copy((k == 2 and obj or rect(hh, ww, 0, 0, 1, 1)) * 16 - 8) end
    local iou = T.from_table(m == 1 and { 0.5 } or { 0.2, 0.9, 0.4 })
    return prompt.return_logits and low:clone() or low:gt(0):byte(), iou, low
  end
  function fake:upsample_logits(low) return low:clone() end
  local logits, score, box = persam.cascade(fake, { 10, 8 }, { 0, 19 })
  tap.ok(#calls == 3 and calls[1].multimask == false and calls[1].mask_input == nil
         and calls[2].multimask == true and calls[2].mask_input and calls[3].multimask == true,
         "persam cascade: single mask, then multimask with the previous logits")
  tap.ok(equal(calls[2].mask_input:reshape(hh, ww):gt(0), rect(hh, ww, 0, 0, 1, 1)),
         "persam cascade: step 2's mask prompt is step 1's low-res logits")
  tap.ok(equal(calls[3].mask_input:gt(0):reshape(hh, ww), obj) and box and box[1] == 6 and box[2] == 4
         and box[3] == 20 and box[4] == 12 and calls[3].box == box,
         "persam cascade: step 3 adds the best mask's box and its logits")
  tap.ok(equal(logits:gt(0), obj) and score == T.from_table({ 0.9 }):get(1), "persam cascade: the best mask of step 3")
  tap.ok(calls[1].points[1][1] == 10 and calls[1].labels[1] == 1 and calls[1].labels[2] == 0,
         "persam cascade: positive and negative point")
end

-- ---- sam_clip helpers -------------------------------------------------------------------------------

do
  local b = sam_clip.crop_box({ 10, 20, 9, 4 }, 1.0, 100, 100)
  tap.ok(b[1] == 10 and b[2] == 20 and b[3] == 19 and b[4] == 24, "sam_clip: crop box of a bbox (SAM's XYWH)")
  b = sam_clip.crop_box({ 0, 0, 9, 9 }, 2.0, 100, 100)
  tap.ok(b[1] == 0 and b[2] == 0 and b[3] == 14 and b[4] == 14, "sam_clip: expanded about the centre, clamped",
         table.concat(b, ","))
  local x = T.ones({ 1, 3, 10, 10 })
  local m = rect(10, 10, 0, 0, 9, 4)
  local c = sam_clip.crop(x, nil, m, { 0, 0, 9, 9 }, 10, "mask")
  tap.ok(c:get(1, 1, 1, 1) == 1 and c:get(1, 1, 1, 10) == 0, "sam_clip: outside the mask → mean colour (0)")
  tap.ok(x:min() == 1, "sam_clip: cropping a whole-image box leaves the image as it was (the next crops read it)")
  c = sam_clip.crop(x, T.full({ 1, 3, 10, 10 }, 0.25), m, { 0, 0, 9, 9 }, 10, "blur")
  tap.ok(c:get(1, 2, 5, 10) == 0.25 and c:get(1, 2, 5, 1) == 1, "sam_clip: blur mode fills from the blurred image")
  local recs = { { area = 50, segmentation = masks.rle_encode(rect(10, 10, 0, 0, 4, 9):byte()) },
                 { area = 4, segmentation = masks.rle_encode(rect(10, 10, 0, 0, 1, 1):byte()) },
                 { area = 2, segmentation = masks.rle_encode(rect(10, 10, 8, 8, 8, 9):byte()) } }
  local probs = T.from_table({ { 0.1, 0.2, 0.5 }, { 0.9, 0.1, 0.5 }, { 0.0, 0.7, 0.0 } })   -- (C, N)
  local labels = sam_clip.paint(recs, probs, 10, 10, 0.6, 0)
  local want = rect(10, 10, 0, 0, 4, 9):add_(rect(10, 10, 0, 0, 1, 1))    -- 1, with 2 on top; the third unsure
  tap.ok(equal(labels, want), "sam_clip: masks painted largest first, unsure masks skipped")
end

-- ---- end to end on the tiny fixtures --------------------------------------------------------------

local function fmseg(args)
  local cmd = ("./fmseg segment %s >%s/out 2>%s/err; echo $? >%s/rc"):format(args, tmp, tmp, tmp)
  os.execute(cmd)
  local f = io.open(tmp .. "/rc")
  local rc = tonumber(f:read("*a"))
  f:close()
  f = io.open(tmp .. "/err")
  local err = f:read("*a")
  f:close()
  return rc, err
end

-- out/input.{png,json}, input_overlay.png well-formed for an h x w image
local function outputs(dir, h, w, kind)
  local f = io.open(dir .. "/input.json")
  if not f then return false, "no input.json" end
  local summary = json.decode(f:read("*a"))
  f:close()
  local labels = image.load_indices(dir .. "/input.png")
  local overlay = image.load(dir .. "/input_overlay.png")
  local ok = summary.kind == kind and summary.width == w and summary.height == h
    and labels:size(1) == h and labels:size(2) == w and overlay:size(1) >= h and overlay:size(2) == w   -- + legend
  return ok, summary
end

local sam_dir = tap.fixtures("sam-tiny")
local clip_dir = tap.fixtures("clip-tiny")
if sam_dir then
  local input = sam_dir .. "/input.png"
  local img = image.load(input)
  local h, w = img:size(1), img:size(2)
  local sam = " --set models.sam=" .. sam_dir
  local open = " --set params.pred_iou_thresh=0 --set params.stability_score_thresh=0 --set params.points_per_side=4"

  local rc, err = fmseg(("configs/sam/sam_amg_vitb.yaml %s%s%s -o %s/amg"):format(input, sam, open, tmp))
  local ok, summary = outputs(tmp .. "/amg", h, w, "instances")
  local rec = ok and summary.instances and summary.instances[1]
  tap.ok(rc == 0 and ok and rec and type(rec.segmentation.counts) == "string" and rec.segmentation.size[1] == h
         and rec.segmentation.size[2] == w and #rec.bbox == 4 and rec.predicted_iou and rec.stability_score,
         "sam_amg end to end: instances with COCO RLE records", err)
  tap.ok(ok and masks.rle_area(masks.json_to_rle(rec.segmentation)) == rec.area, "sam_amg: record areas match their RLEs")

  -- sam_refine from a label PNG (the AMG's label map)
  local cfg = tmp .. "/refine.yaml"
  local f = assert(io.open(cfg, "w"))
  f:write(("_base_: %s/configs/_base_/models/sam_vitb.yaml\nrecipe: sam_refine\nparams:\n  coarse: %s/amg/input.png\n"
    .. "  min_area: 50\n  negatives: others\n"):format(os.getenv("PWD"), tmp))
  f:close()
  rc, err = fmseg(("%s %s%s -o %s/refine"):format(cfg, input, sam, tmp))
  ok, summary = outputs(tmp .. "/refine", h, w, "semantic")
  tap.ok(rc == 0 and ok and #summary.instances > 0 and summary.instances[1].prompt_box,
         "sam_refine end to end from a label PNG", err)
  rc, err = fmseg(("%s %s%s --set params.coarse=%s/none.png -o %s/refine2"):format(cfg, input, sam, tmp, tmp))
  tap.ok(rc == 1 and err:find("none.png"), "sam_refine: a missing coarse PNG is named", err)
  -- a folder of coarse maps, found by the image's stem (input.png → input.png)
  rc, err = fmseg(("%s %s%s --set params.coarse=%s/amg -o %s/refine3"):format(cfg, input, sam, tmp, tmp))
  local same_a = io.open(tmp .. "/refine/input.json"):read("*a")
  local same_b = rc == 0 and io.open(tmp .. "/refine3/input.json"):read("*a")
  tap.ok(rc == 0 and same_a == same_b, "sam_refine: params.coarse as a folder of <stem>.png", err)

  -- persam, with a rectangle as the reference object
  local ref_mask = tmp .. "/ref_mask.png"
  viz.save_labels(ref_mask, rect(h, w, math.floor(h / 4), math.floor(w / 3), math.floor(3 * h / 4),
                                 math.floor(2 * w / 3)):int())
  local refs = (" --set params.ref_image=%s --set params.ref_mask=%s"):format(input, ref_mask)
  rc, err = fmseg(("configs/persam/persam_vitb.yaml %s%s%s -o %s/persam"):format(input, sam, refs, tmp))
  ok, summary = outputs(tmp .. "/persam", h, w, "instances")
  rec = ok and summary.instances[1]
  tap.ok(rc == 0 and ok and #summary.instances == 1 and #rec.point_coords == 2 and rec.segmentation.counts,
         "persam end to end: one instance with its two points", err)
  rc, err = fmseg(("configs/persam/persam_vitb.yaml %s%s%s --set params.output=semantic -o %s/persam2"):format(
    input, sam, refs, tmp))
  ok = outputs(tmp .. "/persam2", h, w, "semantic")
  tap.ok(rc == 0 and ok, "persam end to end: semantic output", err)
  rc, err = fmseg(("configs/persam/persam_vitb.yaml %s%s -o %s/persam3"):format(input, sam, tmp))
  tap.ok(rc == 1 and err:find("ref_image"), "persam without a reference: a clear error", err)

  if clip_dir then
    local clip = " --set models.clip=" .. clip_dir .. " --set params.templates=photo"
    rc, err = fmseg(("configs/sam_clip/sam_clip_vitb16_voc21.yaml %s%s%s%s -o %s/samclip"):format(
      input, sam, clip, open, tmp))
    ok, summary = outputs(tmp .. "/samclip", h, w, "semantic")
    rec = ok and summary.instances[1]
    tap.ok(rc == 0 and ok and rec and rec.label and rec.class_score and rec.segmentation.counts,
           "sam_clip end to end: masks labelled by CLIP", err)
    rc, err = fmseg(("configs/sam_clip/sam_clip_vitb16_voc21.yaml %s%s%s --set params.points_per_side=2 -o %s/samclip0")
      :format(input, sam, clip, tmp))
    ok, summary = outputs(tmp .. "/samclip0", h, w, "semantic")
    tap.ok(rc == 0 and ok and #summary.instances == 0 and summary.pixel_shares[summary.classes[1]] == 1,
           "sam_clip: no confident mask: every pixel is the uncovered class", err)
    rc, err = fmseg(("configs/sam_refine/sclip_sam_refine_vitb16_voc21.yaml %s%s%s --set params.short_side=112 -o %s/comp")
      :format(input, sam, clip, tmp))
    ok, summary = outputs(tmp .. "/comp", h, w, "semantic")
    tap.ok(rc == 0 and ok and summary.recipe == "sclip+sam_refine" and summary.classes[1],
           "composition end to end: sclip refined by sam_refine", err)
  end
end

os.execute("rm -rf " .. tmp)
os.exit(tap.done())
