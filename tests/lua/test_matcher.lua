-- test_matcher.lua — Matcher (recipes/matcher.lua) against aim-uofa/Matcher's
-- own code, and its pieces against theirs:
-- - the exact solvers (fmseg.transport): the earth mover's distance against
--   POT's ot.emd2 and against every permutation (square problems: an
--   optimal plan is a permutation), the assignment against SciPy's
--   linear_sum_assignment and against every injective map;
-- - the streams (fmseg.pyrandom): random.sample (both algorithms), a set's
--   order, torch's randint / multinomial / exponential_, and matcher/
--   k_means.py's kmeans_pp (cdist's two float32 paths);
-- - the recipe on tests/fixtures/methods/matcher-{coco,fss,part}: every
--   output of the official run (points, k-means centres, box, the
--   generator's records, EMD / purity / coverage / scores, the filters'
--   and the merging's choices, the mask at input_size and at the image's
--   size); a record's area, box and stability may move only by the pixels
--   whose official logit lies within 2e-4 of 0 or +-1 (proposal_near),
--   the masks only where the official margin is below 1e-5 (the same
--   pixels; tests/tools/methods/matcher.py);
-- - misuse, and a one-shot evaluation on a tiny PerSeg layout.
-- The fixtures also run through `fmseg parity` (test_method_fixtures.lua).
local tap = require("tap")
local tiny = require("tiny_data")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local hf = require("fmseg.io.hf")
local image = require("fmseg.image")
local pyrandom = require("fmseg.pyrandom")
local recipes = require("fmseg.method.recipes")
local safetensors = require("fmseg.io.safetensors")
local segment = require("fmseg.method.segment")
local T = require("fmseg.tensor")
local transport = require("fmseg.transport")

local ROOT = core.root
local FIX = ROOT .. "/tests/fixtures/methods"
local SAM = FIX .. "/models/sam-matcher-tiny"
local DINO = FIX .. "/models/dinov2-matcher-tiny"
local matcher = recipes.load("matcher")
local units = safetensors.open(FIX .. "/matcher-units/ref.safetensors")

local function list(t) return t:contiguous():totable() end

-- ---- the earth mover's distance ---------------------------------------------------------

do
  local worst, k = 0, 0
  while units:has(("emd%d.costs"):format(k)) do
    local c = units:get(("emd%d.costs"):format(k))
    local v = units:get(("emd%d.value"):format(k)):totable()
    local want = v[1] + v[2]
    worst = math.max(worst, math.abs(transport.emd_uniform(c) - want) / math.max(want, 1e-12))
    k = k + 1
  end
  tap.ok(k >= 8 and worst < 1e-12, "emd_uniform = POT's ot.emd2 with uniform weights (" .. k .. " matrices, "
         .. "1 x 1 to 144 x 60, ties)", worst)
  tap.diag(("emd vs POT: worst relative difference %.3g"):format(worst))
end

-- every injective map p of 1..k into 1..n (k <= n), f(p) each; k = n:
-- every permutation
local function arrangements(n, k, f)
  local p, used = {}, {}
  local function go(i)
    if i > k then return f(p) end
    for j = 1, n do
      if not used[j] then
        used[j], p[i] = true, j
        go(i + 1)
        used[j] = false
      end
    end
  end
  go(1)
end

do
  local ok = true
  for n = 1, 6 do
    for rep = 1, 3 do
      local c = T.rand({ n, n }, 100 * n + rep)
      if rep == 3 then c = c:mul(4):floor():div(4) end               -- ties
      local best, cp = math.huge, c:contiguous():ptr()
      arrangements(n, n, function(p)
        local s = 0
        for i = 1, n do s = s + cp[(i - 1) * n + p[i] - 1] end
        best = math.min(best, s)
      end)
      if math.abs(transport.emd_uniform(c) - best / n) > 1e-12 then ok = false end
    end
  end
  tap.ok(ok, "emd_uniform of square costs = the best permutation's mean cost (brute force, n <= 6)")
  local one = T.from_table({ { 0.5, 0.25, 1, 0.75 } })
  tap.near(transport.emd_uniform(one), 0.625, 1e-15, "emd_uniform: one source pays its row's mean")
  tap.raises(function() transport.emd_uniform(T.zeros({ 3 })) end, "2-D", "emd_uniform wants a matrix")
end

-- ---- the assignment ------------------------------------------------------------------------

do
  local k, ok = 0, true
  while units:has(("lsa%d.costs"):format(k)) do
    local cols = transport.linear_sum_assignment(units:get(("lsa%d.costs"):format(k)), { maximize = true })
    local want = list(units:get(("lsa%d.cols"):format(k)))
    for i, w in ipairs(want) do
      if (cols[i] or 0) - 1 ~= w then ok = false end
    end
    k = k + 1
  end
  tap.ok(k >= 7 and ok, "linear_sum_assignment = SciPy's, maximising, wide and tall, with ties (" .. k .. " matrices)")
  -- brute force: the best total over injective maps of the shorter side
  local all = true
  for _, sz in ipairs({ { 1, 1 }, { 2, 5 }, { 5, 2 }, { 4, 4 }, { 3, 6 }, { 6, 3 }, { 5, 5 } }) do
    for rep = 1, 2 do
      local r, c = sz[1], sz[2]
      local m = T.rand({ r, c }, 7 * r + c + rep)
      for _, maximize in ipairs({ false, true }) do
        local cols = transport.linear_sum_assignment(m, { maximize = maximize })
        local mp = m:contiguous():ptr()
        local got = 0
        for i = 1, r do if cols[i] then got = got + mp[(i - 1) * c + cols[i] - 1] end end
        local best = maximize and -math.huge or math.huge
        local short, long = math.min(r, c), math.max(r, c)
        arrangements(long, short, function(pick)
          local s = 0
          for i = 1, short do
            s = s + (r <= c and mp[(i - 1) * c + pick[i] - 1] or mp[(pick[i] - 1) * c + i - 1])
          end
          best = maximize and math.max(best, s) or math.min(best, s)
        end)
        if math.abs(got - best) > 1e-5 then all = false end
      end
    end
  end
  tap.ok(all, "linear_sum_assignment: the brute-force optimum (min and max, wide and tall)")
end

-- ---- the streams ---------------------------------------------------------------------------

do
  local nk, vals = units:get("sample.nk"):totable(), units:get("sample.values"):totable()
  local py = pyrandom.python(0)
  local ok, set_algo, pool_algo = true, 0, 0
  for i, q in ipairs(nk) do
    local got = py:sample(q[1], q[2])
    for j = 1, q[2] do if got[j] ~= vals[i][j] then ok = false end end
    local setsize = 21 + (q[2] > 5 and 4 ^ math.ceil(math.log(q[2] * 3) / math.log(4)) or 0)
    if q[1] <= setsize then pool_algo = pool_algo + 1 else set_algo = set_algo + 1 end
  end
  tap.ok(ok and set_algo > 0 and pool_algo > 0, ("random.sample(range(n), k) after random.seed(0): %d draws in "
    .. "turn, %d by the pool, %d by the set algorithm"):format(#nk, pool_algo, set_algo))
  local k, same = 0, true
  while units:has(("set%d.values"):format(k)) do
    local got = pyrandom.set_order(list(units:get(("set%d.values"):format(k))))
    local want = list(units:get(("set%d.order"):format(k)))
    if #got ~= #want then same = false end
    for i = 1, #want do if got[i] ~= want[i] then same = false end end
    k = k + 1
  end
  tap.ok(same, "list(set(ints)): CPython's order, through its resizes (" .. k .. " sets of 5 to 690)")
  local th = pyrandom.torch(0)
  local ri = {}
  for i = 1, 5 do ri[i] = th:randint(1000) end
  tap.eq(table.concat(ri, " "), table.concat(list(units:get("torch.randint")), " "),
         "torch.randint(1000, (1,)) after manual_seed(0)")
  local probs = list(units:get("torch.probs"))
  local mn, want = {}, list(units:get("torch.multinomial"))
  for i = 1, #want do mn[i] = th:multinomial(probs) end
  tap.eq(table.concat(mn, " "), table.concat(want, " "), "torch.multinomial(probs, 1), the stream run on")
  local ex = {}
  for i = 1, 4 do ex[i] = pyrandom.f32(th:exponential()) end
  tap.eq(table.concat(ex, " "), table.concat(list(units:get("torch.exponential")), " "),
         "exponential_(): -log(1 - u) of 53 random bits, rounded to float32")
  tap.raises(function() pyrandom.python(-1) end, "seed must be", "a negative Python seed is refused")
end

do
  local k, ok, paths = 0, true, {}
  while units:has(("kmeans%d.points"):format(k)) do
    local pts = units:get(("kmeans%d.points"):format(k)):totable()
    local centers, assign = matcher.kmeans_pp(pts, units:get(("kmeans%d.centers"):format(k)):size(1),
                                              pyrandom.torch(k))
    local want_c = units:get(("kmeans%d.centers"):format(k)):totable()
    local want_a = list(units:get(("kmeans%d.assignment"):format(k)))
    for j, c in ipairs(want_c) do
      if centers[j][1] ~= c[1] or centers[j][2] ~= c[2] then ok = false end
    end
    for i, a in ipairs(want_a) do if assign[i] - 1 ~= a then ok = false end end
    paths[#paths + 1] = #pts > 25 and "product" or "direct"
    k = k + 1
  end
  tap.ok(ok, ("kmeans_pp = matcher/k_means.py's, centres bit for bit (%d runs; cdist paths %s)"):format(k,
         table.concat(paths, ", ")))
  -- the combinations in RobustPromptSampler's order
  local c = matcher.combinations(4, 2)
  local s = {}
  for i, v in ipairs(c) do s[i] = table.concat(v, "") end
  tap.eq(table.concat(s, " "), "01 02 12 03 13 23", "combinations(4, 2) in the official recursion's order")
end

-- ---- the official runs ------------------------------------------------------------------------

local function run_fixture(dir)
  local meta = hf.read_json(dir .. "/method.json")
  local params = {}
  for k, v in pairs(meta.params) do params[k] = v end
  params.ref_image, params.ref_mask = dir .. "/" .. params.ref_image, dir .. "/" .. params.ref_mask
  local s = segment.session({ recipe = "matcher", params = params, models = { sam = SAM, vfm = DINO } })
  return s:segment(image.load(dir .. "/image.png")), meta
end

for _, case in ipairs({ "coco", "fss", "part" }) do
  local dir = FIX .. "/matcher-" .. case
  local ref = safetensors.open(dir .. "/ref.safetensors")
  local r, meta = run_fixture(dir)
  local d = r.dump
  local function exact(name)
    local want, got = ref:get(name), d[name]
    local same = got ~= nil and T.shape_string(got:shape()) == T.shape_string(want:shape())
      and (want:numel() == 0 or (got:float() - want:float()):abs():max() == 0)
    tap.ok(same, ("%s: %s equal"):format(case, name))
  end
  exact("points")
  if ref:has("centers") then exact("centers") end
  if ref:has("box") then exact("box") end
  exact("kept")
  exact("merged")
  for _, name in ipairs({ "proposal_iou", "emd", "purity", "coverage", "scores" }) do
    tap.near(d[name], ref:get(name), 1e-4, ("%s: %s within 1e-4"):format(case, name))
  end
  -- the records within their near-threshold pixels
  local area, want_area = list(d.proposal_area), list(ref:get("proposal_area"))
  local near = list(ref:get("proposal_near"))
  local bbox, want_bbox = d.proposal_bbox:totable(), ref:get("proposal_bbox"):totable()
  local stab, want_stab = list(d.proposal_stability), list(ref:get("proposal_stability"))
  local ok, moved = #area == #want_area, 0
  for i = 1, math.min(#area, #want_area) do
    local da = math.abs(area[i] - want_area[i])
    if da > near[i] then ok = false end
    if da > 0 then moved = moved + 1 end
    for j = 1, 4 do
      if math.abs(bbox[i][j] - want_bbox[i][j]) > (near[i] > 0 and 1 or 0) then ok = false end
    end
    local lo = math.max(want_area[i] - near[i], 1)
    if math.abs(stab[i] - want_stab[i]) > near[i] / lo + 1e-6 then ok = false end
  end
  tap.ok(ok, ("%s: %d records, areas / boxes / stability equal but for near-threshold pixels (%d of %d "
    .. "pixels near, %d records moved)"):format(case, #want_area, (function()
      local n = 0
      for _, v in ipairs(near) do n = n + v end
      return n
    end)(), (function()
      local n = 0
      for _, v in ipairs(want_area) do n = n + v end
      return n
    end)(), moved))
  -- the masks, excused only where the official merged logit is within 2e-4
  for _, pair in ipairs({ { "mask", d.mask, "mask_margin" }, { "labels", r.labels, "margin" } }) do
    local want, margin = ref:get(pair[1]), ref:get(pair[3])
    local differ = 1 - pair[2]:float():eq(want:float())
    local total = differ:sum()
    local real = (differ * margin:ge(1e-5)):sum()
    tap.ok(real == 0, ("%s: %s equal but for %d pixels within 2e-4 of SAM's threshold"):format(case, pair[1],
           total))
  end
  tap.diag(("%s: %d points, %d records, merged %s"):format(case, d.points:size(1), #want_area,
           table.concat(list(d.merged), " ")))
  tap.ok(meta.generator.repos["aim-uofa/Matcher"]:match("^%x+$") ~= nil, case .. ": the official commit is named")
end

-- ---- misuse -------------------------------------------------------------------------------------

do
  local dir = FIX .. "/matcher-fss"
  local base = { ref_image = dir .. "/ref_image.png", ref_mask = dir .. "/ref_mask.png", input_size = 224 }
  local function with(extra, models)
    local p = {}
    for k, v in pairs(base) do p[k] = v end
    for k, v in pairs(extra) do p[k] = v end
    return function() segment.session({ recipe = "matcher", params = p, models = models or { sam = SAM, vfm = DINO } }) end
  end
  tap.raises(with({ input_size = 200 }), "not a multiple of DINOv2's patch 14", "input_size must fit the patches")
  tap.raises(with({ sample_range = { 6, 4 } }), "sample_range must be", "a reversed sample_range is refused")
  tap.raises(with({ output = "boxes" }), "output must be instances or semantic", "an unknown output is refused")
  tap.raises(with({}, { sam = SAM, vfm = SAM }), "models.vfm must be DINOv2", "SAM as the VFM is refused")
  tap.raises(with({ ref_image = false }), "set params.ref_image and params.ref_mask", "no reference: said how")
  tap.raises(with({ ref_mask = dir .. "/missing.png" }), "cannot read the reference mask", "a missing mask is named")
  -- an empty reference mask: the central 14 x 14 block stands in, as in the official code
  local empty = matcher.resize_mask(T.zeros({ 30, 40 }, "uint8"), 56)
  tap.eq(empty:float():sum(), 14 * 14, "an empty reference mask becomes the central 14 x 14 block")
  tap.eq(#matcher.pool(empty, 14), 4, "... which covers 4 patches of 14 at 56 / 2 - 7")
end

-- ---- the configs -------------------------------------------------------------------------------

do
  local config = require("fmseg.io.config")
  local listing = io.popen("ls " .. ROOT .. "/configs/matcher/*.yaml")
  local n, problems = 0, {}
  for path in listing:lines() do
    local ok, err = pcall(function()
      local cfg = config.load(path)
      local p = recipes.params(matcher, config.get(cfg, "params", {}))
      if config.get(cfg, "models.vfm") ~= "facebook/dinov2-large" or config.get(cfg, "models.sam") ~= "facebook/sam-vit-huge" then
        error("models: DINOv2 ViT-L/14 and SAM ViT-H expected", 0)
      end
      if p.input_size ~= 518 then error("input_size " .. p.input_size, 0) end
    end)
    n = n + 1
    if not ok then problems[#problems + 1] = path .. ": " .. tostring(err) end
  end
  listing:close()
  tap.ok(n >= 4 and #problems == 0, ("configs/matcher: %d configs resolve (ViT-L/14 + ViT-H, 518)"):format(n),
         table.concat(problems, "\n"))
end

-- ---- a one-shot evaluation ---------------------------------------------------------------------------

do
  local runs = require("fmseg.eval.runs")
  local tmp = tiny.tmpdir("matcher")
  local PS = tmp .. "/PerSeg"
  local fss = FIX .. "/matcher-fss"
  local want = safetensors.open(fss .. "/ref.safetensors"):get("labels")
  local wf = want:float()
  local gt = T.stack({ wf, wf, wf }, 3):mul(255):byte()         -- the official mask as the annotation
  for _, class in ipairs({ "a", "b" }) do
    tiny.mkdir(PS .. "/Images/" .. class); tiny.mkdir(PS .. "/Annotations/" .. class)
    -- PNG bytes under .jpg names; the reference and its mask from the fss fixture
    tiny.write(PS .. "/Images/" .. class .. "/00.jpg", fs.read(fss .. "/ref_image.png"))
    tiny.write(PS .. "/Annotations/" .. class .. "/00.png", fs.read(fss .. "/ref_mask.png"))
    tiny.write(PS .. "/Images/" .. class .. "/01.jpg", fs.read(fss .. "/image.png"))
    image.save_png(PS .. "/Annotations/" .. class .. "/01.png", gt)
  end
  local cfg = tmp .. "/matcher.yaml"
  tiny.write(cfg, ("data:\n  name: perseg\n  task: oneshot\n  layout: perseg\n  root: %s\nrecipe: matcher\n"
    .. "models:\n  sam: %s\n  vfm: %s\nparams:\n  input_size: 224\n  topk_scores_threshold: 0.99\n"
    .. "  alpha: 0.8\n  beta: 0.2\n  exp: 1.0\n"):format(PS, SAM, DINO))
  local rec = runs.evaluate({ config = cfg, out = tmp .. "/run", quiet = true })
  tap.eq(#rec.classes, 2, "one-shot evaluation: both classes scored")
  tap.eq(#rec.skipped, 0, "... no image skipped", rec.skipped[1] and rec.skipped[1].reason)
  tap.near(rec.IoU[1], 1, 1e-9, "class a: IoU 1 against the official mask")
  local stored = image.load_indices(tmp .. "/run/pred/a/01.png")
  tap.eq((1 - stored:float():eq(want:float())):sum(), 0,
         "its first image: the official fss mask (the streams start where main_oss.py's do)")
  tiny.rm(tmp)
end

os.exit(tap.done())
