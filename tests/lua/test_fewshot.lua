-- Few-shot evaluation (data.task: fewshot, fmseg.eval.fewshot): COCO-20i,
-- FSS-1000 and LVIS-92i on the tiny synthetic layouts of
-- tests/fixtures/fewshot/layouts.json, painted here in the real layouts,
-- against what aim-uofa/Matcher's own loaders, Evaluator and AverageMeter
-- gave on them (tests/tools/make_fewshot_fixtures.py, episodes.json): the
-- episode list, episode for episode; a perfect predictor (the recipe
-- tests/lua/recipes/test_oracle.lua answering the query's ground truth)
-- scores mIoU and FB-IoU 100; the planted error (a 3 x 3 block flipped in
-- every other episode) gives the official per-class intersections and
-- unions, mIoU and FB-IoU. Also: numpy's legacy stream
-- (fmseg.pyrandom.numpy), the pickle's key order, shards and merge, resume,
-- `fmseg table`, malformed annotations named and skipped, refusals, and the
-- shipped configs.
local tap = require("tap")
local tiny = require("tiny_data")
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")
local fewshot = require("fmseg.eval.fewshot")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local pickle = require("fmseg.io.pickle")
local pyrandom = require("fmseg.pyrandom")
local runs = require("fmseg.eval.runs")
local T = require("fmseg.tensor")

local ROOT = core.root
local FIX = ROOT .. "/tests/fixtures/fewshot"
local layouts = json.decode(fs.read(FIX .. "/layouts.json"))
local official = json.decode(fs.read(FIX .. "/episodes.json"))
local S = official.img_size
local tmp = tiny.tmpdir("fewshot")
local ORACLE = ROOT .. "/tests/lua/recipes/test_oracle.lua"

-- ---- numpy's legacy RandomState ------------------------------------------------------------------

do
  local wrong = {}
  for _, case in ipairs(official.numpy) do
    local np = pyrandom.numpy(case.seed)
    local function check(what, got, want)
      if got ~= want then wrong[#wrong + 1] = ("seed %d %s: %s, numpy %s"):format(case.seed, what, got, want) end
    end
    check("key", ("%d %d %d"):format(np.mt[0], np.mt[1], np.mt[2]), table.concat(case.key, " "))
    for _, p in ipairs(case.permutations) do
      check("permutation(" .. #p .. ")", table.concat(np:permutation(#p), " "), table.concat(p, " "))
    end
    for _, v in ipairs(case.choice_19217) do check("choice(19217)", np:choice1(19217), v) end
    for _, v in ipairs(case.choice_range_1_11) do check("choice(range(1, 11))", np:choice1(10) + 1, v) end
    local abc = { "a", "b", "c", "d", "e" }
    for _, v in ipairs(case.choice_abcde) do check("choice(list of 5)", abc[np:choice1(5) + 1], v) end
  end
  tap.ok(#wrong == 0, ("pyrandom.numpy: %d seeds' streams (np.random.seed, permutation, choice without "
    .. "replacement) as numpy 1.24 draws them"):format(#official.numpy), table.concat(wrong, "\n"))
  tap.raises(function() pyrandom.numpy(-1) end, "seed must be", "pyrandom.numpy: a negative seed is refused")
end

-- ---- pickle: a dict's key order ----------------------------------------------------------------------

do
  local d = pickle.load(FIX .. "/lvis/lvis_val.pkl", { ordered = true })
  local want = {}
  for _, c in ipairs(layouts.lvis.classes) do want[#want + 1] = c.id end
  tap.eq(table.concat(pickle.keys(d), " "), table.concat(want, " "), "pickle { ordered = true }: the dict's keys "
    .. "in Python's order")
  local first = layouts.lvis.classes[1]
  local names = {}
  for _, p in ipairs(first.images) do names[#names + 1] = p.image end
  tap.eq(table.concat(pickle.keys(d[first.id]), " "), table.concat(names, " "), "... nested dicts too")
  tap.eq(pickle.keys(pickle.load(FIX .. "/lvis/lvis_val.pkl")), nil, "without it no order is kept")
end

-- ---- the layouts, painted ---------------------------------------------------------------------------

local function pixels(h, w, seed)
  local img = T.zeros({ h, w, 3 }, "uint8")
  local p = img:ptr()
  for y = 0, h - 1 do
    for x = 0, w - 1 do
      for c = 0, 2 do p[(y * w + x) * 3 + c] = (x * 37 + y * 11 + c * 101 + seed * 53) % 256 end
    end
  end
  return img
end

local GREYS = {}
for v = 0, 255 do GREYS[#GREYS + 1] = v; GREYS[#GREYS + 1] = v; GREYS[#GREYS + 1] = v end

local function paint_coco(root)
  for _, im in ipairs(layouts.coco.images) do
    local path = root .. "/" .. im.name
    tiny.mkdir(path:match("^(.*)/"))
    image.save_png(path, pixels(im.h, im.w, im.seed))               -- PNG bytes under the .jpg name
    local m = T.zeros({ im.h, im.w }, "int32")
    for _, r in ipairs(im.regions) do
      m:narrow(1, r.rect[1] + 1, r.rect[2] - r.rect[1]):narrow(2, r.rect[3] + 1, r.rect[4] - r.rect[3]):fill(r.class + 1)
    end
    if im.strip then m:select(1, im.h):fill(255) end
    local mp = root .. "/annotations/" .. im.name:gsub("%.jpg$", ".png")
    tiny.mkdir(mp:match("^(.*)/"))
    image.save_palette_png(mp, m, GREYS)                            -- a palette PNG here (the generator's: grey)
  end
  tiny.mkdir(root .. "/splits/val")
  for _, f in ipairs({ 0, 1 }) do
    tiny.write(("%s/splits/val/fold%d.pkl"):format(root, f), fs.read(("%s/coco/fold%d.pkl"):format(FIX, f)))
  end
end

local function rect_fill(img, r, colour)
  local v = img:narrow(1, r[1] + 1, r[2] - r[1]):narrow(2, r[3] + 1, r[4] - r[3])
  for c = 1, 3 do v:select(3, c):fill(colour[c]) end
end

local function paint_fss(root, lines)
  tiny.mkdir(root .. "/splits")
  local split = {}
  for _, c in ipairs(layouts.fss.categories) do split[#split + 1] = c.name .. "\r\n" end   -- CRLF, as shipped
  tiny.write(root .. "/splits/test.txt", lines or table.concat(split))
  for _, c in ipairs(layouts.fss.categories) do
    local d = root .. "/data/" .. c.name
    tiny.mkdir(d)
    for _, f in ipairs(c.files) do
      image.save_png(d .. "/" .. f.id .. ".jpg", pixels(f.h, f.w, f.seed))
      local m = T.zeros({ f.h, f.w, 3 }, "uint8")
      rect_fill(m, f.fg.rect, f.fg.colour)
      rect_fill(m, f.bg.rect, f.bg.colour)
      image.save_png(d .. "/" .. f.id .. ".png", m)
    end
    for _, e in ipairs(c.extra) do tiny.write(d .. "/" .. e, "not an image\n") end
  end
end

local function paint_lvis(root)
  for _, im in ipairs(layouts.lvis.images) do
    local path = root .. "/coco/" .. im.name
    tiny.mkdir(path:match("^(.*)/"))
    image.save_png(path, pixels(im.h, im.w, im.seed))
  end
  tiny.write(root .. "/lvis_val.pkl", fs.read(FIX .. "/lvis/lvis_val.pkl"))
end

local COCO, FSS, LVIS = tmp .. "/COCO2014", tmp .. "/FSS-1000", tmp .. "/LVIS"
paint_coco(COCO)
paint_fss(FSS)
paint_lvis(LVIS)

-- a config of the shipped definition `def`, at `root`, with the oracle (or `recipe`), extra lines at the
-- top and extra `data` lines
local function make_config(name, def, root, extra, recipe, data_lines)
  local path = ("%s/%s.yaml"):format(tmp, name)
  tiny.write(path, ("_base_: %s/configs/_base_/datasets/%s.yaml\ndata:\n  root: %s\n  img_size: %d\n%srecipe: %s\n%s")
    :format(ROOT, def, root, S, data_lines or "", recipe or ORACLE, extra or ""))
  return path
end

-- the truth the oracle answers: the episode's query mask, read and resized as the evaluation does it
local current
package.loaded.test_oracle_truth = function(item, h, w)
  assert(h == S and w == S, "the recipe gets the img_size x img_size query")
  local _, m = current:frame(item, item.query)
  return fewshot.resize_mask(m, S)
end

local function open(cfg_path)
  current = data.open(config.load(cfg_path))
  return current
end

-- ---- episodes: the official ones --------------------------------------------------------------------

local CASES = {
  { bench = "coco", fold = "0", def = "coco20i_fold0", root = COCO },
  { bench = "coco", fold = "1", def = "coco20i_fold1", root = COCO },
  { bench = "fss", fold = "0", def = "fss1000", root = FSS },
  { bench = "lvis", fold = "0", def = "lvis92i_fold0", root = LVIS },
  { bench = "lvis", fold = "3", def = "lvis92i_fold3", root = LVIS },
}

for _, case in ipairs(CASES) do
  local off = official[case.bench][case.fold]
  case.cfg = make_config(case.def, case.def, case.root)
  local ds = open(case.cfg)
  local wrong = {}
  if #ds.items ~= #off.episodes then wrong[1] = ("%d episodes, officially %d"):format(#ds.items, #off.episodes) end
  for k, e in ipairs(off.episodes) do
    local item = ds.items[k]
    if item then
      local sup = {}
      for j, s in ipairs(e[3]) do sup[j] = off.names[s + 1] end
      local got = ("%d %s %s"):format(item.class, item.query.name, item.supports[1].name)
      local want = ("%d %s %s"):format(e[1], off.names[e[2] + 1], table.concat(sup, " "))
      if got ~= want and #wrong < 5 then wrong[#wrong + 1] = ("episode %d: %s, officially %s"):format(k, got, want) end
    end
  end
  tap.ok(#wrong == 0, ("%s: the %d episodes (class, query, support) are the official loader's (Matcher %s)"):format(
    case.def, #off.episodes, official.matcher_commit:sub(1, 7)), table.concat(wrong, "\n"))
  case.classes, case.class_names = ds.classes, ds.class_names
end
-- (what the runs below keep on the heap costs them: Session:segment collects the garbage per image)
for _, case in ipairs(CASES) do
  local off = official[case.bench][case.fold]
  off.episodes, off.names = nil, nil
end
current = nil
collectgarbage("collect")

-- the classes the AverageMeter averages over
tap.eq(table.concat(CASES[1].classes, " "), table.concat(official.coco["0"].class_ids, " "),
       "COCO-20i fold 0: its 20 classes 0, 4, ..., 76")
tap.eq(table.concat(CASES[4].classes, " "), table.concat(official.lvis["0"].class_ids, " "),
       "LVIS-92i: the fold's classes, 0-based")
tap.eq(table.concat(CASES[3].classes, " "), "760 761 762", "FSS-1000: 760 + each test category's index")
tap.eq(CASES[3].class_names[760], "cat_a", "FSS-1000: the categories sorted (the split lists cat_b first)")

-- ---- scores: a perfect predictor, the planted error ---------------------------------------------------

-- (the runs take the first `head.episodes` episodes, --limit, against the official scores after as many;
-- FSS-1000 all of its 31)
local function close(a, b, tol) return math.abs(a - b) <= (tol or 1e-6) end
local HEAD = official.coco["0"].head.episodes

-- the official numbers of a case and kind: those after the first HEAD episodes, or all (FSS-1000)
local function want_of(case, kind)
  local off = official[case.bench][case.fold]
  return off.head and off.head[kind] or off[kind], off.head and HEAD or nil, off.class_ids
end

-- the plant against the official buffers: per class intersection and union (bg, fg), mIoU, FB-IoU
local function matches(rec, want, class_ids, case)
  local wrong = {}
  local by_class = {}
  for k, c in ipairs(class_ids) do by_class[c] = k end
  local sums = {}
  for _, c in ipairs(rec.classes) do sums[c] = { 0, 0, 0, 0 } end
  for _, e in ipairs(rec.episodes) do
    local s = sums[e[2]]
    for j = 1, 4 do s[j] = s[j] + e[j + 2] end
  end
  for _, c in ipairs(rec.classes) do
    local k = by_class[c]
    local oi, ou, s = want.inter[k], want.union[k], sums[c]
    if s[1] ~= oi[1] or s[2] ~= oi[2] or s[3] ~= ou[1] or s[4] ~= ou[2] then
      wrong[#wrong + 1] = ("class %d: inter %d %d union %d %d, officially %d %d, %d %d"):format(c, s[1], s[2], s[3],
        s[4], oi[1], oi[2], ou[1], ou[2])
    end
  end
  -- the official AverageMeter averages FSS-1000 over range(760, 1000) whatever the split holds: 3 / 240 here
  local scale = case.bench == "fss" and #rec.classes / 240 or 1
  if not close(100 * rec.mIoU * scale, want.miou, 1e-4) then
    wrong[#wrong + 1] = ("mIoU %.6f, officially %.6f"):format(100 * rec.mIoU * scale, want.miou)
  end
  if not close(100 * rec.FBIoU, want.fbiou, 1e-4) then
    wrong[#wrong + 1] = ("FB-IoU %.6f, officially %.6f"):format(100 * rec.FBIoU, want.fbiou)
  end
  return wrong
end

for _, case in ipairs({ CASES[1], CASES[3], CASES[4] }) do
  local want, limit, class_ids = want_of(case, "perfect")
  open(case.cfg)
  local rec = runs.evaluate({ config = case.cfg, out = tmp .. "/runs/" .. case.def, limit = limit, quiet = true })
  local wrong = matches(rec, want, class_ids, case)
  tap.ok(rec.mIoU == 1 and rec.FBIoU == 1 and #wrong == 0, ("%s: a perfect predictor scores mIoU 100, FB-IoU 100 "
    .. "(%d episodes)"):format(case.def, rec.images), table.concat(wrong, "\n"))
end

for _, case in ipairs({ CASES[1], CASES[3], CASES[4], CASES[5] }) do
  local want, limit, class_ids = want_of(case, "plant")
  local cfg = make_config(case.def .. "_plant", case.def, case.root, "params:\n  plant: true\n")
  open(cfg)
  local rec = runs.evaluate({ config = cfg, out = tmp .. "/runs/" .. case.def .. "_plant", limit = limit, quiet = true })
  local wrong = matches(rec, want, class_ids, case)
  tap.ok(#wrong == 0 and rec.mIoU < 1, ("%s: the planted error gives the official per-class intersections and "
    .. "unions, mIoU %.2f and FB-IoU %.2f"):format(case.def, want.miou, want.fbiou), table.concat(wrong, "\n"))
end

-- ---- shards, merge, resume ----------------------------------------------------------------------------

do
  local case = CASES[2]
  local want, limit, class_ids = want_of(case, "plant")
  local cfg = make_config("coco1_plant", case.def, case.root, "params:\n  plant: true\n")
  open(cfg)
  local dir = tmp .. "/runs/coco1_shards"
  runs.evaluate({ config = cfg, out = dir, shard = { i = 1, n = 2 }, limit = limit, quiet = true })
  runs.evaluate({ config = cfg, out = dir, shard = { i = 2, n = 2 }, limit = limit, quiet = true })
  local merged = runs.merge({ dir })
  local wrong = matches(merged, want, class_ids, case)
  tap.ok(#wrong == 0, "COCO-20i fold 1 in two shards, merged: the official numbers", table.concat(wrong, "\n"))
  tap.eq(merged.images, limit, "merge: all the episodes")
  -- resume: items removed are computed again, the rest read back; the numbers stay
  local p = io.popen("ls " .. dir .. "/items | head -5")
  for name in p:lines() do os.remove(dir .. "/items/" .. name) end
  p:close()
  local again = runs.evaluate({ config = cfg, out = dir, limit = limit, quiet = true })
  tap.ok(again.mIoU == merged.mIoU and again.FBIoU == merged.FBIoU, "resume: the whole run from the shards' items "
    .. "and five recomputed ones gives the merged numbers")
  local second = open(cfg).items[2]
  local item = json.decode(fs.read(dir .. "/items/" .. second.id .. ".json"))
  tap.ok(item.intersection and #item.intersection == 2 and item.class == second.class
    and item.query == second.query.name, "an item: the episode's class, query, bg / fg counts")
  tap.ok(fs.exists(dir .. "/pred/" .. second.id .. ".png"), "the scored prediction is kept")
  local md = fs.read(dir .. "/metrics.md") or ""
  tap.ok(md:find("FB-IoU", 1, true) and md:find("| bicycle | 1 |", 1, true), "metrics.md: per-class IoU, mIoU, FB-IoU")
end

-- ---- fmseg table ----------------------------------------------------------------------------------------

do
  local dirs = {}
  for _, d in ipairs({ "coco20i_fold0", "fss1000", "lvis92i_fold0" }) do dirs[#dirs + 1] = tmp .. "/runs/" .. d end
  require("fmseg.eval.report").command(dirs, tmp .. "/table")
  local md = fs.read(tmp .. "/table/fewshot_miou.md") or ""
  tap.ok(md:find("| test_oracle | 100.0* | 100.0 | 100.0* | 100.0 |", 1, true) ~= nil
    and md:find("COCO-20i fold 0", 1, true) ~= nil, "table: fewshot_miou.md, one column per fold", md)
  local fb = fs.read(tmp .. "/table/fewshot_fbiou.md") or ""
  tap.ok(fb:find("FB-IoU (%)", 1, true) ~= nil and fb:find("| test_oracle | 100.0* | 100.0 |", 1, true) ~= nil,
         "table: fewshot_fbiou.md", fb)
  tap.ok(fs.exists(tmp .. "/table/fewshot_miou.csv") and fs.exists(tmp .. "/table/fewshot_miou.png"),
         "table: its csv and chart")
end

-- ---- malformed annotations: named, skipped, the run goes on ---------------------------------------------

local function ids_with(ds, name)
  local out = {}
  for _, item in ipairs(ds.items) do
    local hit = item.query.name == name
    for _, s in ipairs(item.supports) do hit = hit or s.name == name end
    if hit then out[item.id] = true end
  end
  return out
end

local function skips_match(rec, expect, needle)
  local n, bad = 0, {}
  for _ in pairs(expect) do n = n + 1 end
  for _, sk in ipairs(rec.skipped) do
    if not expect[sk.id] then bad[#bad + 1] = "unexpected " .. sk.id end
    if not sk.reason:find(needle, 1, true) then bad[#bad + 1] = sk.id .. ": " .. sk.reason end
  end
  if #rec.skipped ~= n then bad[#bad + 1] = ("%d skipped, %d expected"):format(#rec.skipped, n) end
  return #bad == 0 and n > 0, table.concat(bad, "\n")
end

do
  -- COCO-20i: an image missing; a mask without its class; a mask of the wrong size
  local root = tmp .. "/COCO_bad"
  paint_coco(root)
  local ds0 = open(CASES[1].cfg)
  local limit = 120
  local names = {}
  for k = 1, limit do names[ds0.items[k].query.name] = (names[ds0.items[k].query.name] or 0) + 1 end
  local sorted = {}
  for n in pairs(names) do sorted[#sorted + 1] = n end
  table.sort(sorted)
  local gone, empty, small = sorted[1], sorted[2], sorted[3]
  os.remove(root .. "/" .. gone)
  local function first_class_of(name)
    for k = 1, limit do if ds0.items[k].query.name == name then return ds0.items[k].class end end
  end
  -- `empty`: its mask repainted without the first class it is a query of
  local c = first_class_of(empty)
  local mp = root .. "/annotations/" .. empty:gsub("%.jpg$", ".png")
  local lab = image.load_indices(mp):int()
  local lp = lab:ptr()
  for k = 0, lab:numel() - 1 do if lp[k] == c + 1 then lp[k] = 0 end end
  image.save_palette_png(mp, lab, GREYS)
  local sp = root .. "/annotations/" .. small:gsub("%.jpg$", ".png")
  image.save_palette_png(sp, T.zeros({ 3, 3 }, "int32"), GREYS)
  local cfg = make_config("coco_bad", "coco20i_fold0", root)
  local ds = open(cfg)
  local rec = runs.evaluate({ config = cfg, out = tmp .. "/runs/coco_bad", limit = limit, quiet = true })
  local expect = {}
  local with_gone, with_small = ids_with(ds, gone), ids_with(ds, small)
  for k = 1, limit do
    local item = ds.items[k]
    local hit = item.class == c and (item.query.name == empty or item.supports[1].name == empty)
    if hit or with_gone[item.id] or with_small[item.id] then expect[item.id] = 1 end
  end
  local ok, why = skips_match(rec, expect, "COCO_")
  tap.ok(ok, "COCO-20i: the episodes of a missing image, a mask without the class, a mask of the wrong size are "
    .. "skipped, each naming its file", why)
  local reasons = {}
  for _, sk in ipairs(rec.skipped) do reasons[#reasons + 1] = sk.reason end
  local all = table.concat(reasons, "\n")
  tap.ok(all:find(gone, 1, true) and all:find("the mask is empty (no pixel of class " .. c, 1, true)
    and all:find("is 3x3, its image", 1, true), "... the reasons: the file, the empty class, the sizes", all)
  tap.eq(rec.images, limit, "... and the run goes on to its last episode")
  tap.ok(rec.mIoU > 0 and rec.FBIoU == 1, "... the others scored (the oracle: FB-IoU 100)")
  tap.ok((fs.read(tmp .. "/runs/coco_bad/metrics.md") or ""):find("items skipped", 1, true) ~= nil,
         "metrics.md lists the skipped episodes")
end

do
  -- FSS-1000: a mask missing (the episodes stay the official ones: only the .jpg files make queries), a
  -- category without its folder, the split's last line without its newline
  local root = tmp .. "/FSS_bad"
  paint_fss(root, "cat_b\r\ncat_zz\r\ncat_a\r\ncat_c")
  local victim
  for _, item in ipairs(open(CASES[3].cfg).items) do
    if item.query.name:match("^cat_b/") then victim = item.supports[1].name; break end
  end
  os.remove(root .. "/data/" .. victim:gsub("%.jpg$", ".png"))
  local cfg = make_config("fss_bad", "fss1000", root)
  local ds = open(cfg)
  tap.eq(#ds.items, 21, "FSS-1000: the split's last line without a newline is left out (split('\\n')[:-1])")
  local notes = table.concat(ds.notes, "\n")
  tap.ok(notes:find("cat_c", 1, true) and notes:find("cat_zz", 1, true), "... noted, as the folder it does not have",
         notes)
  local rec = runs.evaluate({ config = cfg, out = tmp .. "/runs/fss_bad", quiet = true })
  local ok, why = skips_match(rec, ids_with(ds, victim), (victim:gsub("%.jpg$", ".png")))
  tap.ok(ok, "FSS-1000: the episodes of a missing mask are skipped, naming it", why)
  tap.eq(#rec.classes, 3, "... three classes, cat_zz with no episodes")
  tap.ok(rec.IoU[3] == 0 and rec.episodes_per_class[3] == 0, "... which counts IoU 0, as officially")
  tap.ok((fs.read(tmp .. "/runs/fss_bad/metrics.md") or ""):find("Note:", 1, true) ~= nil, "metrics.md: the notes")
end

do
  -- LVIS-92i: an image missing; a "polygon" of 2 numbers (frPyObjects refuses it); an image without annotations
  local root = tmp .. "/LVIS_bad"
  paint_lvis(root)
  tiny.write(root .. "/lvis_val.pkl", fs.read(FIX .. "/lvis/lvis_val_bad.pkl"))
  local gone = open(CASES[4].cfg).items[1].query.name
  os.remove(root .. "/coco/" .. gone)
  local cfg = make_config("lvis_bad", "lvis92i_fold0", root)
  local ds = open(cfg)
  local rec = runs.evaluate({ config = cfg, out = tmp .. "/runs/lvis_bad", limit = 40, quiet = true })
  -- the entries lvis_val_bad.pkl spoils: the first image of the 1st and of the 11th class with more than one
  local eligible = {}
  for _, c in ipairs(layouts.lvis.classes) do if #c.images > 1 then eligible[#eligible + 1] = c end end
  local spoilt = { [eligible[1].id .. " " .. eligible[1].images[1].image] = "polygon 1 has 2 numbers",
                   [eligible[11].id .. " " .. eligible[11].images[1].image] = ": no annotations" }
  -- each episode's first bad frame (the query, then the supports; a frame's image, then its mask) says why
  local wrong, n = {}, { gone = 0, spoilt = 0 }
  local reasons = {}
  for _, sk in ipairs(rec.skipped) do reasons[sk.id] = sk.reason end
  for k = 1, 40 do
    local item = ds.items[k]
    local want
    for _, f in ipairs({ item.query, item.supports[1] }) do
      if not want then
        if f.name == gone then want = gone; n.gone = n.gone + 1
        elseif spoilt[item.lvis_id .. " " .. f.name] then want = spoilt[item.lvis_id .. " " .. f.name]; n.spoilt = n.spoilt + 1
        end
      end
    end
    local got = reasons[item.id]
    if (want == nil) ~= (got == nil) or (want and not got:find(want, 1, true)) then
      wrong[#wrong + 1] = ("%s: %s, expected %s"):format(item.id, tostring(got), tostring(want))
    end
  end
  tap.ok(#wrong == 0 and n.gone > 0 and n.spoilt > 0, ("LVIS-92i: the episodes of a missing image (%d), a polygon "
    .. "frPyObjects refuses and an image without annotations (%d) are skipped, naming the file or the pickle entry")
    :format(n.gone, n.spoilt), table.concat(wrong, "\n"))
  tap.eq(#ds.items, 2300, "... the episodes are the official ones all the same")
end

-- ---- the real recipes: each episode as `fmseg segment` with its support --------------------------------

do
  local segment = require("fmseg.method.segment")
  local MODELS = ROOT .. "/tests/fixtures/methods/models"
  local cases = {
    { recipe = "persam", models = { sam = MODELS .. "/sam-persam-tiny" }, params = {} },
    { recipe = "matcher", models = { sam = MODELS .. "/sam-matcher-tiny", vfm = MODELS .. "/dinov2-matcher-tiny" },
      params = { input_size = 224, topk_scores_threshold = 0.99, alpha = 0.8, beta = 0.2, exp = 1.0 } },
  }
  for _, rc in ipairs(cases) do
    local lines = { "models:" }
    for k, v in pairs(rc.models) do lines[#lines + 1] = ("  %s: %s"):format(k, v) end
    lines[#lines + 1] = "params:"
    for k, v in pairs(rc.params) do lines[#lines + 1] = ("  %s: %s"):format(k, tostring(v)) end
    local cfg = make_config("real_" .. rc.recipe, "fss1000", FSS, table.concat(lines, "\n") .. "\n", rc.recipe)
    local ds = open(cfg)
    local dir = tmp .. "/runs/real_" .. rc.recipe
    local rec = runs.evaluate({ config = cfg, out = dir, limit = 2, quiet = true })
    tap.ok(rec.images == 2 and #rec.skipped == 0, rc.recipe .. ": two FSS-1000 episodes scored")
    -- the first episode by hand: the support and the query resized as the loader resizes them
    local item = ds.items[1]
    local q_img = ds:frame(item, item.query)
    local s_img, s_mask = ds:frame(item, item.supports[1])
    local ri, rm = tmp .. "/ref_" .. rc.recipe .. ".png", tmp .. "/refmask_" .. rc.recipe .. ".png"
    image.save_png(ri, image.resize_pil(s_img, S, S, "bilinear"))
    local m = fewshot.resize_mask(s_mask, S)
    image.save_png(rm, T.stack({ m, m, m }, 3):float():mul(255):byte())
    local params = { ref_image = ri, ref_mask = rm }
    for k, v in pairs(rc.params) do params[k] = v end
    local session = segment.session({ recipe = rc.recipe, models = rc.models, params = params })
    local direct = session:segment(image.resize_pil(q_img, S, S, "bilinear"))
    local stored = image.load_indices(dir .. "/pred/" .. item.id .. ".png")
    tap.eq(stored:float():eq(direct.masks[1]:float()):float():sum(), S * S, rc.recipe .. ": the first episode's "
      .. "mask is what the recipe gives with the resized support as its reference, on the resized query")
  end
end

do
  local x = T.zeros({ 37, 53, 3 }, "uint8")
  local p = x:ptr()
  for k = 0, x:numel() - 1 do p[k] = (k * 7919) % 256 end
  tap.eq(image.resize_pil(x, 37, 53, "bilinear"):float():eq(x:float()):float():sum(), x:numel(),
         "resizing to the size it has changes nothing (Matcher's own resize of the 518 x 518 query)")
end

-- ---- refusals -----------------------------------------------------------------------------------------

tap.raises(function()
  local cfg = make_config("clicks", "coco20i_fold0", COCO, nil, ROOT .. "/tests/lua/recipes/test_clicks.lua")
  runs.evaluate({ config = cfg, out = tmp .. "/runs/clicks", quiet = true })
end, "takes no reference", "a recipe that takes no reference is refused")
tap.raises(function()
  data.open(config.load(make_config("orig", "coco20i_fold0", COCO, nil, nil, "  use_original_imgsize: true\n")))
end, "use_original_imgsize is not supported", "use_original_imgsize is refused")
tap.raises(function() data.open(config.load(make_config("nofold", "coco20i_fold0", COCO, nil, nil, "  fold: 4\n"))) end,
  "data.fold must be an integer in [0, 3]", "COCO-20i: a fold outside 0..3 is refused")
tap.raises(function() data.open(config.load(make_config("nosplit", "coco20i_fold0", tmp .. "/FSS-1000"))) end,
  "splits/val/fold0.pkl not found", "a missing split file is named before any episode")
do
  local cfg = make_config("fiveshot", "coco20i_fold0", COCO, nil, nil, "  shot: 5\n")
  local ds = open(cfg)
  tap.eq(#ds.items[1].supports, 5, "data.shot 5: five supports drawn per episode")
  tap.raises(function() runs.evaluate({ config = cfg, out = tmp .. "/runs/five", limit = 1, quiet = true }) end,
    "needs set_references", "... which a one-reference recipe refuses")
end

-- ---- the shipped configs ------------------------------------------------------------------------------

do
  local recipes = require("fmseg.method.recipes")
  local problems, n = {}, 0
  local defs = { "fss1000" }
  for f = 0, 3 do defs[#defs + 1] = "coco20i_fold" .. f end
  for f = 0, 9 do defs[#defs + 1] = "lvis92i_fold" .. f end
  for _, d in ipairs(defs) do
    for _, path in ipairs({ "configs/matcher/matcher_vitl14_vith_" .. d, "configs/persam/persam_vith_" .. d,
                            "configs/persam/persam_f_vith_" .. d }) do
      local ok, err = pcall(function()
        local cfg = config.load(ROOT .. "/" .. path .. ".yaml")
        local spec = data.spec(cfg)
        if spec.name ~= d or spec.task ~= "fewshot" or spec.img_size ~= 518 or spec.shot ~= 1 or spec.seed ~= 0 then
          error("data: " .. tostring(spec.name), 0)
        end
        local fold = tonumber(d:match("fold(%d)$"))
        if fold and spec.fold ~= fold then error("fold " .. tostring(spec.fold), 0) end
        local recipe = recipes.load(config.get(cfg, "recipe"))
        if not recipe.oneshot then error("recipe " .. recipe.name .. " takes no reference", 0) end
        recipes.params(recipe, config.get(cfg, "params", {}))
      end)
      n = n + 1
      if not ok then problems[#problems + 1] = path .. ": " .. tostring(err) end
    end
  end
  tap.ok(n == 45 and #problems == 0, ("%d few-shot configs (Matcher, PerSAM, PerSAM-F x 15 folds) resolve"):format(n),
         table.concat(problems, "\n"))
  local m = config.load(ROOT .. "/configs/matcher/matcher_vitl14_vith_coco20i_fold2.yaml")
  tap.ok(config.get(m, "params.num_merging_mask") == 9 and config.get(m, "params.dense_pred") == true,
         "Matcher on COCO-20i: scripts/coco.sh's settings")
  local f = config.load(ROOT .. "/configs/matcher/matcher_vitl14_vith_fss1000.yaml")
  tap.ok(config.get(f, "params.alpha") == 0.8 and config.get(f, "params.num_merging_mask") == 10,
         "Matcher on FSS-1000: scripts/fss.sh's settings")
end

tiny.rm(tmp)
os.exit(tap.done())
