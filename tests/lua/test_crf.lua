-- fmseg.crf (core/densecrf.c) against pydensecrf itself
-- (tests/fixtures/densecrf, tests/tools/make_densecrf_fixtures.py): the
-- marginals within the fixtures' 1e-4 and the labels equal wherever
-- pydensecrf's top two are 1e-5 apart, on both lattice paths (two labels:
-- the scalar filter; more: the SSE one) and point counts that are and are
-- not multiples of four; the naive twin (vertices by linear search) equal
-- bit for bit; bad input named.
local tap = require("tap")
local core = require("fmseg.core")
local crf = require("fmseg.crf")
local json = require("fmseg.io.json")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")

local DIR = core.root .. "/tests/fixtures/densecrf"
local meta = json.decode(io.open(DIR .. "/cases.json"):read("a"))
local ref = safetensors.open(DIR .. "/ref.safetensors")

local names = {}
for name in pairs(meta.cases) do names[#names + 1] = name end
table.sort(names)

local function max_abs(a, b)
  local d = (a:float() - b:float()):abs()
  return d:max()
end

for _, name in ipairs(names) do
  local cs = meta.cases[name]
  local img, probs, want = ref:get(name .. ".image"):byte(), ref:get(name .. ".probs"), ref:get(name .. ".q")
  local margin = ref:get(name .. ".margin")
  local q = crf.dense(img, crf.unary_from_probs(probs), cs)
  local err = max_abs(q, want)
  tap.ok(err <= 1e-4, ("%s: %d labels, %d iterations: marginals within 1e-4 of pydensecrf's (max abs %.2g)")
    :format(name, cs.c, cs.iterations, err))
  local differ, excused = 0, 0
  local got_l, want_l = q:argmax(1):int():contiguous(), want:argmax(1):int():contiguous()
  local gp, wp, mp = got_l:ptr(), want_l:ptr(), margin:contiguous():ptr()
  for k = 0, got_l:numel() - 1 do
    if gp[k] ~= wp[k] then
      if mp[k] < 1e-5 then excused = excused + 1 else differ = differ + 1 end
    end
  end
  tap.eq(differ, 0, ("%s: labels equal (%d changed by the CRF; %d ties below 1e-5 excused)"):format(name,
    cs.labels_changed, excused))
  if cs.h * cs.w <= 400 then
    local twin = crf.dense(img, crf.unary_from_probs(probs), setmetatable({ naive = true }, { __index = cs }))
    tap.eq(max_abs(twin, q), 0, name .. ": the naive twin (vertices by linear search) equals the hashed lattice")
  end
end

tap.ok(meta.cases.car.labels_changed > 0 and meta.cases.readme.labels_changed > 0,
       "the CRF changes labels in these cases (the checks above could fail)")

-- the `crf` refine step after a CLIP recipe (the tiny SCLIP fixture's model):
-- its labels are the argmax of the CRF of the first recipe's class scores
do
  local config = require("fmseg.io.config")
  local image = require("fmseg.image")
  local segment = require("fmseg.method.segment")
  local FIX = core.root .. "/tests/fixtures/methods"
  local tmp = os.tmpname()
  local f = io.open(tmp, "w")
  f:write(("recipe: sclip\nclasses: %s/sclip-voc21/classes.txt\nmodels:\n  clip: %s/models/clip-b16-tiny\n"
    .. "params: {logit_scale: 40, prob_thd: 0.0, short_side: 224}\nrefine:\n  recipe: crf\n"):format(FIX, FIX))
  f:close()
  local session = segment.session(config.load(tmp))
  os.remove(tmp)
  local img = image.load(FIX .. "/sclip-voc21/image.png")
  local result = session:segment(img)
  local plain = session.recipe.segment(session.state, img)
  local q = crf.dense(img, crf.unary_from_probs(plain.scores), session.refine.params)
  tap.eq(max_abs(result.labels, q:argmax(1):int()), 0, "refine: crf labels are the argmax of the CRF of the scores")
  local changed = (result.labels:float() - plain.labels:float()):abs():gt(0):float():sum()
  tap.ok(changed > 0, ("refine: the CRF changed %d of %d labels"):format(changed, img:size(1) * img:size(2)))
  tap.raises(function() session.refine.recipe.segment(session.refine.state, img, nil) end,
             "refines a semantic result with class scores", "crf with nothing to refine says what it needs")
end

-- unary_from_softmax: −log(clip(p, 1e-5, 1))
local u = crf.unary_from_probs(T.from_table({ 0, 0.5, 1 }):reshape(3, 1, 1))
tap.near(u:get(1, 1, 1), -math.log(1e-5), 1e-4, "unary: probabilities clipped at 1e-5")
tap.near(u:get(2, 1, 1), math.log(2), 1e-6, "unary: −log p")

-- bad input
local cs = meta.cases.none
local img, unary = ref:get("none.image"):byte(), crf.unary_from_probs(ref:get("none.probs"))
tap.raises(function() crf.dense(img:narrow(1, 1, 5), unary, cs) end, "image must be a contiguous (9, 11, 3) uint8",
           "an image of another size is refused")
local bad = unary:clone()
bad:set(1, 2, 3, 0 / 0)
tap.raises(function() crf.dense(img, bad, cs) end, "not finite", "a NaN unary is refused")
tap.raises(function() crf.dense(img, unary, setmetatable({ bilateral_srgb = 0 }, { __index = cs })) end,
           "bilateral_srgb must be a positive number", "a zero standard deviation is named")
tap.raises(function() crf.dense(img, unary, { iterations = 1 }) end, "gaussian_sxy must be a number",
           "a missing parameter is named")
tap.raises(function() crf.dense(img, unary, setmetatable({ gaussian_sxy = 1e-4 }, { __index = cs })) end,
           "overflows 16 bits", "features too large for the lattice's 16-bit coordinates are refused")

os.exit(tap.done())
