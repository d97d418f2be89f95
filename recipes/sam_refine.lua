-- SAM refinement of a coarse semantic segmentation: every sizeable region of
-- every class becomes one SAM prompt (its box, a point inside, optionally a
-- negative point and the class probability as a mask prompt); SAM's masks
-- replace the coarse regions where SAM is confident, the coarse map stays
-- where it is not.
-- ref: YuHengsss/Trident seg_utils/utils.py (sam_refinement,
--      split_connected_regions, map_refinement_coarse, map_failed_regions);
--      linyq2117/SAMRefiner utils.py (extract_points) for the distance-guided
--      and negative points.
--
-- The coarse segmentation comes from the recipe before this one (a config's
-- `refine: {recipe: sam_refine}` next to `recipe: sclip`: its labels and
-- class probabilities), or from a label PNG (`params.coarse`, palette or
-- grey, values = 0-based classes, values >= the class count ignored).
--
-- Steps, each a small function below:
--   0. the coarse map is downsampled by `downsample` (Trident's down_ratio
--      2: labels nearest, probabilities bilinear); steps 1-3 work there,
--      min_area counts its pixels (225 there is ~900 at full size)
--   1. pixels whose best coarse probability is below coarse_thresh are
--      ignored; a class whose probability never reaches it is skipped
--   2. per class, the 8-connected components of its pixels, >= min_area
--   3. per component: the box; a positive point at the class probability's
--      maximum inside it (point_mode = "logit_max", Trident) or at the
--      centre of its distance transform's maximum ("distance", SAMRefiner);
--      negatives = "complement" (the deepest background pixel inside the
--      box) or "others" (the deepest pixel of other classes inside the box);
--      mask prompt = the class probability in SAM's low-res frame, x
--      mask_coeff where above coarse_thresh; Trident hands it to SAM
--      without a batch dimension, so SAM's LayerNorm2d normalises it over
--      rows (mask_norm = "rows"; "channels" is what SAM intends)
--   4. select = "predicted_iou": SAM's single-mask output, kept when its
--      predicted IoU > iou_thresh (Trident); "coarse_iou": of the multimask
--      outputs the one agreeing best with the component, kept when that
--      IoU >= min_coarse_iou
--   5. per class, max over its kept masks of sigmoid(SAM logit) x coarse
--      probability inside the mask (x 1 without probabilities: SAM's own
--      confidence, so SAM may grow a region a label PNG drew too small);
--      labels = argmax of that where a kept mask covers, the coarse label
--      elsewhere; scores = that, raised to the coarse probabilities inside
--      failed components (Trident's map_failed_regions: it cannot change a
--      label, since it compares with the already raised scores). With no
--      kept mask at all the coarse result is returned as it is.
local ffi = require("ffi")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local masks = require("fmseg.masks")
local nn = require("fmseg.nn")
local processor = require("fmseg.sam.processor")
local T = require("fmseg.tensor")

local recipe = {
  name = "sam_refine",
  needs = { "sam" },
  -- Trident's defaults (trident.py); its configs use coarse_thresh 0.2
  -- (VOC) to 0.05 (ADE20K) and sam_iou_thresh 0.8.
  defaults = {
    coarse = false,              -- label PNG (or a folder of <stem>.png), when no recipe runs before
    downsample = 2,              -- Trident's down_ratio: components found on the map / 2
    coarse_thresh = 0.10,        -- best coarse probability below it: ignored
    min_area = 225,              -- smallest component prompted, in pixels of the downsampled map
    point_mode = "logit_max",    -- or "distance"
    negatives = "none",          -- or "complement", "others"
    mask_prompt = true,          -- the class probability as mask_input (needs probabilities)
    mask_coeff = 0.005,          -- Trident's sam_mask_coff
    mask_norm = "rows",          -- how SAM normalises the mask prompt: Trident's "rows" or "channels"
    select = "predicted_iou",    -- or "coarse_iou"
    iou_thresh = 0.9,            -- predicted_iou: SAM's predicted IoU must exceed it
    min_coarse_iou = 0.5,        -- coarse_iou: agreement needed with the component
    batch = 16,                  -- components per decoder call
  },
}

local POINT_MODES = { logit_max = true, distance = true }
local NEGATIVES = { none = true, complement = true, others = true }
local SELECT = { predicted_iou = true, coarse_iou = true }
local MASK_NORMS = { rows = true, channels = true }

-- Prompt derivation ----------------------------------------------------------------
-- Masks are (H, W) float32 0/1; boxes {x0, y0, x1, y1} inclusive pixel
-- indices; points {x, y} pixel indices (0-based), as Trident and SAMRefiner
-- hand them to SAM.

-- mask (H, W) → its box; error when empty
function recipe.box(mask)
  if mask:sum() == 0 then error("sam_refine: box of an empty mask", 2) end
  return masks.masks_to_boxes(mask:gt(0)):values()
end

-- t (H, W) cut to box, with `pad` zero pixels around → (h + 2 pad, w + 2 pad) float32
local function crop(t, box, pad)
  local h, w = box[4] - box[2] + 1, box[3] - box[1] + 1
  local out = T.zeros({ h + 2 * pad, w + 2 * pad })
  out:narrow(1, pad + 1, h):narrow(2, pad + 1, w):copy(t:narrow(1, box[2] + 1, h):narrow(2, box[1] + 1, w))
  return out
end

-- (h, w) scores → {x, y} of the maximum; on a plateau of equal maxima the
-- plateau pixel nearest its centroid (a rectangle's centre, not its
-- first maximal pixel in row order)
local function centre_of_max(d)
  local h, w = d:size(1), d:size(2)
  local plateau = d:ge(d:max())
  local ys, xs = T.arange(h):reshape(h, 1), T.arange(w):reshape(1, w)
  local n = plateau:sum()
  local cy, cx = (plateau * ys):sum() / n, (plateau * xs):sum() / n
  local far = (ys - cy):pow(2) + (xs - cx):pow(2)                 -- (h, w)
  local i = (far + (1 - plateau) * 1e12):argmin() - 1             -- 0-based flat index
  return { i % w, math.floor(i / w) }
end

-- The pixel deepest inside mask (the Euclidean distance transform's
-- maximum; the image border counts as outside): {x, y}
function recipe.distance_point(mask)
  local b = recipe.box(mask)
  local p = centre_of_max(masks.distance_transform(crop(mask, b, 1)))
  return { p[1] - 1 + b[1], p[2] - 1 + b[2] }
end

-- The maximum of prob (H, W) over the pixels of mask, first in row order
-- as torch.argmax (Trident): {x, y}
function recipe.logit_max_point(prob, mask)
  local b = recipe.box(mask)
  local m = crop(mask, b, 0)
  local s = crop(prob, b, 0):mul_(m):sub_(1 - m)                  -- outside the mask: -1
  local i = s:argmax() - 1
  local w = m:size(2)
  return { i % w + b[1], math.floor(i / w) + b[2] }
end

-- A negative point for mask: the pixel deepest inside `allowed` (H, W) 0/1
-- within mask's box (box edges count as outside), or nil when allowed has
-- no pixel there. allowed = 1 - mask: the background the box takes in;
-- allowed = other classes' pixels: a neighbour the box overlaps.
function recipe.negative_point(mask, allowed)
  local b = recipe.box(mask)
  local region = crop(allowed, b, 0)
  if region:sum() == 0 then return nil end
  local p = recipe.distance_point(region)
  return { p[1] + b[1], p[2] + b[2] }
end

-- class_mask (H, W) 0/1 → { {mask, box, area}, ... }: its 8-connected
-- components of at least min_area pixels, in connected_components' order
function recipe.components(class_mask, min_area)
  local labels, n = masks.connected_components(class_mask:gt(0), 8)
  if n == 0 then return {} end
  local areas = masks.label_areas(labels, n):values()              -- areas[k + 1]: label k
  local lf = labels:float()
  local out = {}
  for k = 1, n do
    if areas[k + 1] >= min_area then
      local m = lf:eq(k)
      out[#out + 1] = { mask = m, box = recipe.box(m), area = areas[k + 1] }
    end
  end
  return out
end

-- prob (h, w) → SAM's mask_input (1, 1, S, S): resized (bilinear) to
-- content_hw {rh, rw}, the part of the S x S frame the image fills (the
-- predictor's content_hw: SAM keeps the aspect with the longest side S and
-- pads bottom and right, SAM 2 fills the frame; default SAM's for prob's
-- own size), zeros elsewhere, coeff x prob where prob > thresh, 0
-- elsewhere (Trident: the downsampled probability, placed as the full
-- image is)
function recipe.mask_prompt(prob, size, thresh, coeff, content_hw)
  local h, w = prob:size(1), prob:size(2)
  local rh, rw
  if content_hw then rh, rw = content_hw[1], content_hw[2] else rh, rw = processor.preprocess_shape(h, w, size) end
  local r = nn.interpolate(prob:reshape(1, 1, h, w), rh, rw, { mode = "bilinear" })
  r:mul_(r:gt(thresh)):mul_(coeff)
  local out = T.zeros({ 1, 1, size, size })
  out:narrow(3, 1, rh):narrow(4, 1, rw):copy(r)
  return out
end

-- bin (M, H, W) 0/1, mask (H, W) 0/1 → {IoU of each of the M masks with mask}
function recipe.mask_iou(bin, mask)
  local m = bin:size(1)
  local flat = bin:reshape(m, bin:numel() / m)
  local inter = (bin * mask):reshape(m, bin:numel() / m):sum(2):values()
  local areas = flat:sum(2):values()
  local area = mask:sum()
  local out = {}
  for i = 1, m do
    local union = areas[i] + area - inter[i]
    out[i] = union > 0 and inter[i] / union or 0
  end
  return out
end

-- Fusion -------------------------------------------------------------------------------

-- labels (H, W) → (C, H, W) one-hot (labels >= C: no class)
local function one_hot(labels, nclasses)
  local lf = labels:float()
  local rows = {}
  for c = 0, nclasses - 1 do rows[c + 1] = lf:eq(c) end
  return T.stack(rows, 1)
end

-- The running fusion: per class the max of sigmoid(logit) x coarse
-- probability inside each kept mask, and the pixels any kept mask covers.
local function fusion(coarse)
  local h, w = coarse.labels:size(1), coarse.labels:size(2)
  return { coarse = coarse, refined = T.zeros({ coarse.nclasses, h, w }), covered = T.zeros({ h, w }) }
end

local function fusion_add(f, class, logits)
  local inside = logits:gt(0)
  local p = logits:sigmoid()
  if f.coarse.probs then p:mul_(f.coarse.probs:select(1, class + 1)) end
  p:mul_(inside)
  local slot = f.refined:select(1, class + 1)
  slot:copy(slot:maximum(p))
  f.covered:maximum_(inside)
  f.kept = true
  p:free()
  inside:free()
end

-- failed (H, W) 0/1 or nil → labels (H, W) int32, scores (C, H, W); see
-- step 5 above. ref: Trident map_refinement_coarse, map_failed_regions
local function fusion_result(f, failed)
  local coarse, covered = f.coarse, f.covered
  local base = coarse.probs or one_hot(coarse.labels, coarse.nclasses)
  if not f.kept then return coarse.labels, base end
  local labels = masks.argmax_channels(f.refined):float():mul_(covered)
  labels:add_(coarse.labels:float():mul_(1 - covered))
  local scores = f.refined
  if failed then scores:maximum_(base * failed) end
  return labels:int(), scores
end

-- coarse = {labels (H, W), probs (C, H, W) or nil, nclasses}; kept = {
-- {class = c (0-based), logits = (H, W) SAM logits}, ... }; failed (H, W)
-- 0/1 or nil → labels (H, W) int32, scores (C, H, W). See step 5 above.
function recipe.fuse(coarse, kept, failed)
  local f = fusion(coarse)
  for _, k in ipairs(kept) do fusion_add(f, k.class, k.logits) end
  return fusion_result(f, failed)
end

-- Resolution ---------------------------------------------------------------------------

-- coarse downsampled by factor (Trident's down_ratio): labels nearest,
-- probabilities bilinear, to (H // factor, W // factor)
local function downsampled(coarse, factor)
  if factor == 1 then return coarse end
  local h, w, nc = coarse.labels:size(1), coarse.labels:size(2), coarse.nclasses
  local dh, dw = math.floor(h / factor), math.floor(w / factor)
  local labels = nn.interpolate(coarse.labels:float():reshape(1, 1, h, w), dh, dw, { mode = "nearest" })
  local probs = coarse.probs and nn.interpolate(coarse.probs:reshape(1, nc, h, w), dh, dw, { mode = "bilinear" })
  return { labels = labels:reshape(dh, dw):int(), probs = probs and probs:reshape(nc, dh, dw), nclasses = nc }
end

-- mask (h, w) 0/1 of the downsampled map → (H, W) at full size, nearest
local function upsampled(mask, h, w)
  if mask:size(1) == h and mask:size(2) == w then return mask end
  return nn.interpolate(mask:reshape(1, 1, mask:size(1), mask:size(2)), h, w, { mode = "nearest" }):reshape(h, w)
end

-- a point or box of the downsampled map in image pixels, as Trident reports
-- its prompt boxes (x factor)
local function scaled(list, factor)
  if not list then return nil end
  local out = {}
  for i, v in ipairs(list) do out[i] = type(v) == "table" and scaled(v, factor) or v * factor end
  return out
end

-- Prompting ----------------------------------------------------------------------------

local function low_res_size(predictor)
  return 4 * predictor.model.config.prompt.image_embedding_size
end

-- The prompts of one component: {points = {{x, y}, ...}, labels, box}
function recipe.prompts(comp, prob, others, params)
  local point
  if params.point_mode == "logit_max" and prob then
    point = recipe.logit_max_point(prob, comp.mask)
  else
    point = recipe.distance_point(comp.mask)
  end
  local neg
  if params.negatives == "complement" then
    neg = recipe.negative_point(comp.mask, 1 - comp.mask)
  elseif params.negatives == "others" then
    neg = recipe.negative_point(comp.mask, others)
  end
  return { points = { point, neg }, labels = { 1, neg and 0 or nil }, box = comp.box }
end

-- One decoder call for prompts {p1, ...} in pixels of a frame_hw map:
-- points (N, P, 2) with label -1 (SAM's not-a-point) where a component has
-- fewer points → iou (N, M), low_res (N, M, h, w)
local function decode(predictor, prompts, mask_input, multimask, frame_hw, mask_norm)
  local n, np = #prompts, 1
  for _, p in ipairs(prompts) do np = math.max(np, #p.labels) end
  local pts, labs, boxes = T.zeros({ n, np, 2 }), T.full({ n, np }, -1), T.new({ n, 4 })
  for i, p in ipairs(prompts) do
    for j, pt in ipairs(p.points) do
      pts:set(i, j, 1, pt[1]); pts:set(i, j, 2, pt[2]); labs:set(i, j, p.labels[j])
    end
    for k = 1, 4 do boxes:set(i, k, p.box[k]) end
  end
  local _, iou, low_res = predictor:predict_batch(pts, labs, {
    boxes = boxes, mask_input = mask_input, multimask = multimask, masks = false, clamp = false,
    frame_hw = frame_hw, mask_norm = mask_input and mask_norm or nil })
  return iou, low_res
end

-- SAM's answer for one component: logits (H, W) or nil (failed), and what
-- the record reports
local function choose(predictor, comp, iou, low_res, params)
  if params.select == "predicted_iou" then
    -- torch compares the float32 scores with the threshold rounded to float32
    local score = iou:get(1)
    if score > tonumber(ffi.new("float", params.iou_thresh)) then
      return predictor:upsample_logits(low_res:narrow(1, 1, 1)):select(1, 1), { predicted_iou = score }
    end
    return nil, { predicted_iou = score }   -- NaN too, as in the official comparison
  end
  local logits = predictor:upsample_logits(low_res)                -- (M, H, W)
  local agree = recipe.mask_iou(logits:gt(0), upsampled(comp.mask, logits:size(2), logits:size(3)))
  local best = 1
  for i = 2, #agree do if agree[i] > agree[best] then best = i end end
  local info = { predicted_iou = iou:get(best), coarse_iou = agree[best] }
  local chosen = agree[best] >= params.min_coarse_iou and logits:select(1, best):clone() or nil
  logits:free()
  return chosen, info
end

local function check_params(p)
  local function one_of(key, set)
    if not set[p[key]] then
      local names = {}
      for k in pairs(set) do names[#names + 1] = k end
      table.sort(names)
      error(("sam_refine: %s must be one of %s, got %s"):format(key, table.concat(names, ", "),
        tostring(p[key])), 0)
    end
  end
  one_of("point_mode", POINT_MODES)
  one_of("negatives", NEGATIVES)
  one_of("select", SELECT)
  one_of("mask_norm", MASK_NORMS)
  if type(p.downsample) ~= "number" or p.downsample < 1 or p.downsample % 1 ~= 0 then
    error(("sam_refine: downsample must be a whole number >= 1, got %s"):format(tostring(p.downsample)), 0)
  end
end

-- predictor with the image set; coarse = {labels, probs?, nclasses} →
-- the refined semantic result, records = one per prompted component.
function recipe.refine(predictor, coarse, params)
  check_params(params)
  local h, w = coarse.labels:size(1), coarse.labels:size(2)
  local view = downsampled(coarse, params.downsample)
  local vh, vw = view.labels:size(1), view.labels:size(2)
  local nc, probs = view.nclasses, view.probs
  local labels_f = view.labels:float()
  local valid = labels_f:lt(nc)
  if probs then valid:mul_(probs:max(1):ge(params.coarse_thresh)) end
  local fused, records = fusion(coarse), {}
  local failed
  local multimask = params.select == "coarse_iou"
  for c = 0, nc - 1 do
    local prob = probs and probs:select(1, c + 1):contiguous()
    local class_mask = labels_f:eq(c):mul_(valid)
    local comps = {}
    if not prob or prob:max() >= params.coarse_thresh then
      comps = recipe.components(class_mask, params.min_area)
    end
    if #comps > 0 then
      local others = valid - class_mask
      local mask_input = prob and params.mask_prompt
        and recipe.mask_prompt(prob, low_res_size(predictor), params.coarse_thresh, params.mask_coeff,
                               predictor:content_hw(h, w, low_res_size(predictor))) or nil
      for first = 1, #comps, params.batch do
        local chunk, prompts = {}, {}
        for i = first, math.min(first + params.batch - 1, #comps) do
          chunk[#chunk + 1] = comps[i]
          prompts[#prompts + 1] = recipe.prompts(comps[i], prob, others, params)
        end
        local iou, low_res = decode(predictor, prompts, mask_input, multimask, { vh, vw }, params.mask_norm)
        for j, comp in ipairs(chunk) do
          local logits, info = choose(predictor, comp, iou:select(1, j), low_res:select(1, j), params)
          if logits then
            fusion_add(fused, c, logits)
            logits:free()
          else
            local m = upsampled(comp.mask, h, w)
            failed = failed and failed:maximum_(m) or m:clone()
          end
          local p = prompts[j]
          records[#records + 1] = {
            class = c, area = comp.area, prompt_box = scaled(p.box, params.downsample),
            point_coords = scaled(p.points, params.downsample), point_labels = p.labels,
            predicted_iou = info.predicted_iou, coarse_iou = info.coarse_iou, refined = logits ~= nil,
          }
        end
        collectgarbage()
      end
    end
  end
  local labels, scores = fusion_result(fused, failed)
  -- the kept prompts' boxes in image pixels, in prompting order (Trident's
  -- combined_boxes)
  local kept_boxes = {}
  for _, r in ipairs(records) do if r.refined then kept_boxes[#kept_boxes + 1] = r.prompt_box end end
  local boxes = #kept_boxes > 0 and T.from_table(kept_boxes, "int32") or T.zeros({ 0, 4 }, "int32")
  return { kind = "semantic", labels = labels, scores = scores, records = records,
           dump = { prompt_boxes = boxes } }
end

-- The coarse segmentation: the previous recipe's semantic (or segments)
-- result, else the label PNG of params.coarse (a file, or a folder holding
-- <image stem>.png for each image).
local function coarse_of(state, img, previous, source)
  local h, w = img:size(1), img:size(2)
  if previous then
    if previous.kind ~= "semantic" and previous.kind ~= "segments" then
      error(("sam_refine: refines semantic label maps, the recipe before it returned %s"):format(
        tostring(previous.kind)), 0)
    end
    local labels = previous.labels:dtype() == "int32" and previous.labels or previous.labels:int()
    local nc = previous.scores and previous.scores:size(1)
      or (state.classes and #state.classes.names) or (labels:float():max() + 1)
    return { labels = labels, probs = previous.scores, nclasses = nc }
  end
  local path = state.params.coarse
  if not path then
    error("sam_refine: no coarse segmentation: run it as a config's `refine` step, or set params.coarse "
      .. "(a label PNG)", 0)
  end
  if fs.is_dir(path) then
    -- a folder of label maps, one per image: <folder>/<image stem>.png
    if not (source and source.stem) then
      error("sam_refine: params.coarse is a folder, but this image has no file name to look up", 0)
    end
    path = path .. "/" .. source.stem .. ".png"
  end
  local labels = image.load_indices(path):float()
  if labels:size(1) ~= h or labels:size(2) ~= w then
    labels = nn.interpolate(labels:reshape(1, 1, labels:size(1), labels:size(2)), h, w,
                            { mode = "nearest" }):reshape(h, w)
  end
  local nc = state.classes and #state.classes.names
  if not nc then
    nc = (labels * labels:lt(255)):max() + 1                     -- 255: ignored, not a class
  end
  return { labels = labels:int(), nclasses = math.max(nc, 1) }
end

function recipe.setup(params, models, classes)
  check_params(params)
  if models.sam.family == "sam2" and params.mask_prompt and params.mask_norm == "rows" then
    error("sam_refine: models.sam is SAM 2, whose mask prompt is normalised over channels: set "
          .. "params.mask_norm: channels (rows is Trident's quirk with SAM)", 0)
  end
  return { params = params, classes = classes, predictor = require("fmseg.sam.predictor").new(models.sam) }
end

-- segment(state, img, previous): previous = the result of the recipe this
-- one refines (fmseg.method.segment passes it), or nil (params.coarse).
function recipe.segment(state, img, previous, source)
  local coarse = coarse_of(state, img, previous, source)
  state.predictor:set_image(img)
  local result = recipe.refine(state.predictor, coarse, state.params)
  state.predictor:reset_image()
  return result
end

return recipe
