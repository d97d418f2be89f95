-- recipes/sam_clicks.lua on a tiny SAM and a tiny SAM 2: the first click takes the best of
-- SAM's three masks by predicted IoU, later clicks SAM's single mask with
-- the previous step's low-res logits as the mask prompt (checked against
-- the predictor called by hand), reset forgets them, and the whole
-- interactive evaluation runs with it.
local tap = require("tap")
local tiny = require("tiny_data")
local core = require("fmseg.core")
local image = require("fmseg.image")
local models = require("fmseg.models")
local predictor_mod = require("fmseg.sam.predictor")
local recipes = require("fmseg.method.recipes")
local runs = require("fmseg.eval.runs")
local T = require("fmseg.tensor")

local SAM = core.root .. "/tests/fixtures/methods/models/sam-amg-tiny"
local SAM2 = core.root .. "/tests/fixtures/sam2-tiny"
local img = image.load(core.root .. "/tests/fixtures/methods/sam_amg-crops-rle/image.png")
local h, w = img:size(1), img:size(2)

local recipe = recipes.load("sam_clicks")

-- the recipe against its predictor called by hand, for SAM and SAM 2
local function check_clicks(model_dir, name)
  local sam = models.load("sam", model_dir)
  local state = recipe.setup(recipes.params(recipe, {}), { sam = sam })
  recipe.embed(state, img)
  recipe.reset(state)
  local clicks = { { y = 40, x = 60, positive = true } }
  local m1 = recipe.predict(state, clicks)
  clicks[2] = { y = 90, x = 120, positive = false }
  local m2 = recipe.predict(state, clicks)

  local p = predictor_mod.new(sam)
  p:set_image(img)
  local masks, iou, low = p:predict({ points = { { 60, 40 } }, labels = { 1 }, multimask = true })
  local best, best_v = 1, -math.huge
  for k, v in ipairs(iou:values()) do if v > best_v then best, best_v = k, v end end
  local function same(a, b) return a:float():eq(b:float()):float():sum() == a:numel() end
  tap.ok(same(m1, masks:select(1, best)), name .. ", click 1: the mask of highest predicted IoU of three")
  local masks2 = p:predict({ points = { { 60, 40 }, { 120, 90 } }, labels = { 1, 0 }, multimask = false,
                             mask_input = low:narrow(1, best, 1) })
  tap.ok(same(m2, masks2:select(1, 1)), name .. ", click 2: the single mask, the previous low-res logits as mask_input")
  local plain = p:predict({ points = { { 60, 40 }, { 120, 90 } }, labels = { 1, 0 }, multimask = false })
  tap.ok(not same(plain:select(1, 1), masks2:select(1, 1)),
         name .. ": the mask prompt changes the mask (the check above can fail)")
  recipe.reset(state)
  tap.ok(same(recipe.predict(state, { clicks[1] }), m1), name .. ", reset: the next object starts without a mask prompt")
  tap.raises(function() recipe.segment(state, img) end, "segments from clicks", "segment without clicks says what to do")
  return state
end

check_clicks(SAM, "SAM")
local state2 = check_clicks(SAM2, "SAM 2")
tap.eq(state2.predictor.family, "sam2", "a SAM 2 directory as models.sam: SAM 2's predictor")

-- the evaluation end to end on a one-image GrabCut layout
local tmp = tiny.tmpdir("sam_clicks")
tiny.mkdir(tmp .. "/GC/data_GT"); tiny.mkdir(tmp .. "/GC/boundary_GT")
image.save_png(tmp .. "/GC/data_GT/x.png", img)
local mask = T.zeros({ h, w, 3 }, "uint8")
mask:narrow(1, 30, 50):narrow(2, 40, 70):fill(255)
image.save_png(tmp .. "/GC/boundary_GT/x.png", mask)
for _, case in ipairs({ { SAM, "SAM" }, { SAM2, "SAM 2" } }) do
  tiny.write(tmp .. "/c.yaml", ("data:\n  name: gc\n  task: interactive\n  layout: grabcut\n  root: %s/GC\n"
    .. "recipe: sam_clicks\nmodels:\n  sam: %s\neval:\n  max_clicks: 3\n"):format(tmp, case[1]))
  local rec = runs.evaluate({ config = tmp .. "/c.yaml", out = tmp .. "/run-" .. case[2]:gsub(" ", ""), quiet = true })
  tap.eq(rec.objects, 1, "fmseg eval with sam_clicks on " .. case[2] .. ": one object")
  tap.eq(#rec.mIoU_per_click, 3, case[2] .. ": three clicks scored")
  local ok = true
  for _, v in ipairs(rec.mIoU_per_click) do ok = ok and v >= 0 and v <= 1 end
  tap.ok(ok, case[2] .. ": IoUs in [0, 1]")
end
tiny.rm(tmp)
os.exit(tap.done())
