-- PerSAM-F (Zhang et al., ICLR24): PerSAM with two parameters fitted on the
-- reference image: the weights of SAM's three multimask outputs, summed
-- into one mask (the scale of the object, part or whole, is learnt once).
-- ref: ZrrSkywalker/Personalize-SAM persam_f.py (persam_f, Mask_Weights,
--      calculate_dice_loss, calculate_sigmoid_focal_loss, point_selection).
--
--   1. reference: as PerSAM (recipes/persam.lua), but the target feature is
--      (max + mean) / 2 of the features under the mask, L2-normalised; its
--      cosine map on the reference itself gives one positive point.
--   2. fitting: SAM (multimask) prompted with that point gives three
--      logit maps L1..L3 at the reference's size; the weights w2, w3 (both
--      1/3 at first, w1 = 1 - w2 - w3) of z = sum wk Lk minimise dice +
--      sigmoid focal loss (alpha 0.25, gamma 2, mean over pixels) against
--      the mask's red channel > 0; AdamW (lr `lr`, eps 1e-4, weight decay
--      0.01, betas 0.9 / 0.999) for `epochs` steps with a cosine schedule
--      (torch's CosineAnnealingLR, T_max = epochs, recursive form). SAM is
--      frozen and the prompt fixed, so L1..L3 are computed once and the
--      gradient is written out (dz/dwk = Lk - L1); the AdamW update
--      follows torch 1.13's single-tensor step in float32.
--   3. target image: positive point at the cosine maximum (no negative
--      point, no target-guided attention or target embedding); multimask
--      with the point; the weighted sum of the three high-res logits > 0
--      is the mask, the weighted sum of the low-res logits its prompt;
--      then with that mask's box added, best predicted IoU; then the best
--      mask's box and low-res logits, best again. Where a step's mask is
--      empty the official code fails (no box); here that step's mask is
--      the result.
--
-- params: ref_image, ref_mask, output (instances | semantic), lr (1e-3),
-- epochs (1000): persam_f.py's --lr and --train_epoch.
-- result.dump: weights, ref_point, points, box, scores (what
-- tests/fixtures/methods/persam_f-* compare).
local ffi = require("ffi")
local masks = require("fmseg.masks")
local nn = require("fmseg.nn")
local T = require("fmseg.tensor")
local persam = require("fmseg.method.recipes").load("persam")

local recipe = {
  name = "persam_f",
  needs = { "sam" },
  oneshot = true,          -- takes its reference per item in a one-shot evaluation (set_reference)
  defaults = {
    ref_image = false,     -- path of the reference image
    ref_mask = false,      -- path of its mask (read as PerSAM reads it: see recipes/persam.lua)
    output = "instances",  -- or "semantic"
    lr = 1e-3,             -- AdamW's learning rate (persam_f.py --lr)
    epochs = 1000,         -- fitting steps (persam_f.py --train_epoch)
  },
}

-- persam_f.py's fixed settings: AdamW(eps=1e-4) with torch's other
-- defaults; the focal loss's alpha and gamma.
local ADAMW = { eps = 1e-4, weight_decay = 1e-2, beta1 = 0.9, beta2 = 0.999 }
local FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2

-- float32 rounding of a Lua number (the fitted weights are float32 in torch)
local f32 = ffi.new("float[1]")
local function r(x) f32[0] = x; return f32[0] end

-- The per-pixel constants of the loss for a target t (N) 0/1.
function recipe.loss_terms(t)
  return { t = t, tsum = t:sum(), n = t:numel(), not_t = 1 - t, sign = 1 - 2 * t,
           alpha_t = t * (2 * FOCAL_ALPHA - 1) + (1 - FOCAL_ALPHA) }
end

-- Loss and gradient: L (3, N) logits, terms = loss_terms(t), w = {w1, w2,
-- w3} → dice + focal of z = sum wk Lk, {dloss/dwk} (sums over pixels of
-- dloss/dz * Lk).
-- ref: persam_f.py calculate_dice_loss, calculate_sigmoid_focal_loss
function recipe.loss_and_grad(L, terms, w)
  local t, n = terms.t, terms.n
  local L1, L2, L3 = L:select(1, 1), L:select(1, 2), L:select(1, 3)
  local z = (L1 * w[1]):add_(L2 * w[2]):add_(L3 * w[3])
  local p = z:sigmoid()
  local pq = p * (1 - p)                                             -- dp/dz
  -- dice: 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)
  local num, den = 2 * (p * t):sum() + 1, p:sum() + terms.tsum + 1
  local dice = 1 - num / den
  local g = (t * (-2 / den)):add_(num / (den * den)):mul_(pq)         -- dloss/dp * dp/dz
  -- focal: mean of alpha_t ce (1 - p_t)^gamma, ce = BCE with logits in
  -- torch's form: (1 - t) z + m + log(exp(-m) + exp(-z - m)), m = max(-z, 0)
  local mx = z:neg():maximum(0)
  local ce = (terms.not_t * z):add_(mx):add_((mx:neg():exp_()):add_((z:neg():sub_(mx)):exp_()):log_())
  local one_m = (t * (1 - 2 * p)):add_(p)                            -- 1 - p_t
  local focal = (terms.alpha_t * ce * one_m:pow(FOCAL_GAMMA)):sum() / n
  -- d/dz: alpha_t [(p - t)(1 - p_t)^2 + ce 2 (1 - p_t)(1 - 2t) p (1 - p)] / N
  local gf = ((p - t):mul_(one_m):mul_(one_m)):add_(ce:mul_(one_m):mul_(terms.sign):mul_(pq):mul_(2))
  g:add_(gf:mul_(terms.alpha_t):mul_(1 / n))
  local grads = { (g * L1):sum(), (g * L2):sum(), (g * L3):sum() }
  return dice + focal, grads
end

-- The fitting (persam_f.py's training loop): L (3, N), t (N) → the three
-- weights {w1, w2, w3} (float32 values), and the last loss. About 0.1 s
-- of CPU per step and megapixel of the reference.
function recipe.fit_weights(L, t, lr0, epochs)
  local a = ADAMW
  local w = { r(1 / 3), r(1 / 3) }                                   -- Mask_Weights: ones(2, 1) / 3
  local m, v = { 0, 0 }, { 0, 0 }
  local terms = recipe.loss_terms(t)
  local lr, loss = lr0, nil
  for step = 1, epochs do
    local ws = { r(1 - r(w[1] + w[2])), w[1], w[2] }
    local grads
    loss, grads = recipe.loss_and_grad(L, terms, ws)
    collectgarbage()   -- the step's buffers (N floats each) are invisible to the collector
    -- weights = cat(1 - w.sum(0), w): the gradient of w_j is g_{j+1} - g_1
    local gw = { r(r(grads[2]) - r(grads[1])), r(r(grads[3]) - r(grads[1])) }
    -- torch 1.13 AdamW, single tensor
    local bc1, bc2 = 1 - a.beta1 ^ step, 1 - a.beta2 ^ step
    local step_size, bc2_sqrt = lr / bc1, math.sqrt(bc2)
    for j = 1, 2 do
      w[j] = r(w[j] * r(1 - lr * a.weight_decay))
      m[j] = r(r(m[j] * r(a.beta1)) + r(gw[j] * r(1 - a.beta1)))
      v[j] = r(r(v[j] * r(a.beta2)) + r(r(gw[j] * gw[j]) * r(1 - a.beta2)))
      local denom = r(r(r(math.sqrt(v[j])) / r(bc2_sqrt)) + r(a.eps))
      w[j] = r(w[j] + r(r(-step_size) * r(m[j] / denom)))
    end
    -- CosineAnnealingLR.get_lr (eta_min 0), stepped after the optimiser
    local e = step
    if (e - 1 - epochs) % (2 * epochs) == 0 then
      lr = lr + lr0 * (1 - math.cos(math.pi / epochs)) / 2
    else
      lr = (1 + math.cos(math.pi * e / epochs)) / (1 + math.cos(math.pi * (e - 1) / epochs)) * lr
    end
  end
  return { r(1 - r(w[1] + w[2])), w[1], w[2] }, loss
end

-- sum_k weights[k] * x[k] over the first dim of x (3, ...)
local function weighted(x, weights)
  return (x:select(1, 1) * weights[1] + x:select(1, 2) * weights[2]) + x:select(1, 3) * weights[3]
end

function recipe.setup(params, models, _, cfg)
  if type(params.epochs) ~= "number" or params.epochs < 1 or params.epochs % 1 ~= 0 then
    error(("persam_f: epochs must be a positive integer, got %s"):format(tostring(params.epochs)), 0)
  end
  if type(params.lr) ~= "number" or params.lr <= 0 then
    error(("persam_f: lr must be a positive number, got %s"):format(tostring(params.lr)), 0)
  end
  return persam.prepare(params, models, cfg, "persam_f", recipe.set_reference)
end

-- The reference: its target feature, and the mask weights fitted on it.
function recipe.set_reference(state, ref_image, ref_mask)
  local params, predictor = state.params, state.predictor
  local feats, grid, mask_img = persam.embed_reference(predictor, ref_image, ref_mask, "persam_f")
  local mean, max = persam.masked_stats(feats, grid, ref_mask)
  local target = nn.normalize(max / 2 + mean / 2)
  local hw = { mask_img:size(1), mask_img:size(2) }
  local sim = persam.location(predictor, target, hw)
  local pos = persam.select_points(sim)
  local _, _, low = predictor:predict({ points = { pos }, labels = { 1 }, multimask = true })
  local L = predictor:upsample_logits(low):reshape(3, hw[1] * hw[2])
  local t = mask_img:select(3, 1):float():gt(0):reshape(hw[1] * hw[2])
  state.weights, state.loss = recipe.fit_weights(L, t, params.lr, params.epochs)
  state.target, state.ref_point = target, pos
  predictor:reset_image()
end

-- The box of a binary (H, W) mask, or nil when it is empty.
local function box_of(mask)
  if mask:sum() == 0 then return nil end
  return masks.masks_to_boxes(mask):values()
end

function recipe.segment(state, img)
  local predictor, weights = state.predictor, state.weights
  if not state.target then error("persam_f: no reference set (params.ref_image and params.ref_mask)", 0) end
  predictor:set_image(img)
  local hw = { img:size(1), img:size(2) }
  local sim = persam.location(predictor, state.target, hw)
  local pos = persam.select_points(sim)
  local points, labels = { pos }, { 1 }
  local _, iou, low = predictor:predict({ points = points, labels = labels, multimask = true })
  local logits = weighted(predictor:upsample_logits(low), weights)   -- (H, W)
  local prompt = weighted(low, weights):reshape(1, low:size(2), low:size(3))
  local box, used, score = box_of(logits:gt(0)), nil, nil
  -- two refinements, each with the box of the mask so far
  for _ = 1, 2 do
    if not box then break end
    local out, iou2, low2 = predictor:predict({ points = points, labels = labels, box = box,
                                                mask_input = prompt, multimask = true, return_logits = true })
    local best = iou2:argmax()
    logits, iou, score = out:select(1, best):contiguous(), iou2, iou2:get(best)
    prompt, used = low2:narrow(1, best, 1), box
    box = box_of(logits:gt(0))
  end
  predictor:reset_image()
  local dump = { weights = T.from_table(weights), ref_point = { state.ref_point }, points = { pos },
                 box = used and { used } or {}, scores = iou }
  return persam.result(state.params, logits, score or iou:max(), pos, nil, used, dump)
end

return recipe
