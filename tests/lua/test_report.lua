-- `fmseg report`: one self-contained HTML page of finished runs. Small runs
-- of the test recipe on a tiny 4-class dataset (one class named `<road &
-- rail>`), whose right numbers are counted here from the painted truth;
-- a report of one run, of two runs on one dataset, of a semantic and a
-- discovery run; the page's text (numbers equal to metrics.json, every class
-- named and escaped, the best and worst images embedded in the order of
-- this file's own per-image mIoU, thumbnails that decode, the heat map's
-- cells, the config), the published numbers through a stand-in
-- fmseg.eval.published, a data root that has moved, refusals; and the page
-- as headless Chromium renders it (the DOM's cells, a screenshot that is
-- not blank). KEEP=1 keeps the pages and runs (their folder is /tmp/fmseg_report_*).
local tap = require("tap")
local tiny = require("tiny_data")
local core = require("fmseg.core")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local html_report = require("fmseg.eval.html_report")

local ROOT = core.root
local FMSEG = ROOT .. "/fmseg"
local RECIPES = ROOT .. "/tests/lua/recipes"
local tmp = tiny.tmpdir("report")

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local run = tiny.run

local function count(s, plain)
  local n, at = 0, 1
  while true do
    local i = s:find(plain, at, true)
    if not i then return n end
    n, at = n + 1, i + #plain
  end
end

-- this file's own HTML escaping, to look for the escaped forms
local function escaped(s)
  return (s:gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;"):gsub("'", "&#39;"))
end

local function pct(x) return ("%.2f"):format(100 * x) end

-- ---- base64 against coreutils ------------------------------------------------------

do
  local rand, ok, detail = tiny.rng(9), true, nil
  for _, n in ipairs({ 0, 1, 2, 3, 4, 5, 1000 }) do
    local bytes = {}
    for i = 1, n do bytes[i] = string.char(rand(0, 255)) end
    local s = table.concat(bytes)
    local path = tmp .. "/b64_" .. n
    tiny.write(path, s)
    local p = io.popen("base64 -w0 " .. q(path))
    local want = p:read("*a")
    p:close()
    local got = html_report.base64(s)
    if got ~= want then ok, detail = false, ("%d bytes: %s vs %s"):format(n, got, want) end
  end
  tap.ok(ok, "base64 equals coreutils' base64 for 0..5 and 1000 random bytes", detail)
end

-- ---- a tiny dataset and its truth --------------------------------------------------

local CLASSES = { "sky", "<road & rail>", "car", "tree" }
local N, H, W = 10, 48, 64
local DATA = tmp .. "/tiny4"
local truth = {}
do
  local rand = tiny.rng(17)
  -- how wrong each image's prediction is (shuffled so that rank is not id order)
  local err = { 3, 7, 1, 9, 5, 10, 2, 8, 4, 6 }
  local items = {}
  for n = 1, N do
    local gt, pred = {}, {}
    for y = 0, H - 1 do
      for x = 0, W - 1 do
        local i = y * W + x
        local c = (math.floor(x / 16) + math.floor(y / 24) + n) % 4
        gt[i] = rand(0, 30) == 0 and 255 or c
        local r = rand(0, 99)
        if r < 6 * err[n] then pred[i] = (c + 1 + r % 2) % 4 elseif r < 6 * err[n] + 3 then pred[i] = 255 else pred[i] = c end
      end
    end
    local id = ("im%02d"):format(n)
    truth[n] = { id = id, gt = gt, pred = pred }
    items[n] = { id = id, img = tiny.paint(H, W, pred), gt = tiny.grid(H, W, gt) }
  end
  tiny.write_layout(DATA, { images = "img", image_suffix = ".png", annotations = "ann", annotation_suffix = ".png",
    split = "val.txt" }, items)
end

-- mmseg's per-image IoU over classes with a non-empty union, counted here
local function image_miou(t)
  local inter, lab, prd = { 0, 0, 0, 0 }, { 0, 0, 0, 0 }, { 0, 0, 0, 0 }
  for i = 0, H * W - 1 do
    local g, p = t.gt[i], t.pred[i]
    if g ~= 255 then
      lab[g + 1] = lab[g + 1] + 1
      if p ~= 255 then prd[p + 1] = prd[p + 1] + 1 end
      if p == g then inter[g + 1] = inter[g + 1] + 1 end
    end
  end
  local sum, n = 0, 0
  for c = 1, 4 do
    local u = lab[c] + prd[c] - inter[c]
    if u > 0 then sum, n = sum + inter[c] / u, n + 1 end
  end
  return sum / n
end

-- The (4, 5) confusion counts of images 1..n, counted here.
local function confusion(n)
  local conf = {}
  for g = 0, 3 do conf[g] = { [0] = 0, 0, 0, 0, 0 } end
  for k = 1, n do
    local t = truth[k]
    for i = 0, H * W - 1 do
      local g, p = t.gt[i], t.pred[i]
      if g ~= 255 then
        local col = p == 255 and 4 or p
        conf[g][col] = conf[g][col] + 1
      end
    end
  end
  return conf
end

-- ids of the best and the worst `n` of images 1..m by this file's mIoU
local function ranked(m, n)
  local list = {}
  for k = 1, m do list[k] = { id = truth[k].id, v = image_miou(truth[k]) } end
  table.sort(list, function(a, b) return a.v > b.v end)
  local best, worst, distinct = {}, {}, true
  for k = 2, #list do distinct = distinct and list[k].v < list[k - 1].v end
  for k = 1, n do best[k], worst[k] = list[k].id, list[#list + 1 - k].id end
  return best, worst, distinct
end

local function write_cfg(name, extra)
  local path = tmp .. "/" .. name .. ".yaml"
  tiny.write(path, ("data:\n  name: tiny4\n  title: \"Tiny & four\"\n  root: %s\n  split: val.txt\n  images: img\n"
    .. "  image_suffix: .png\n  annotations: ann\n  annotation_suffix: .png\n  num_classes: 4\n"
    .. "classes: [sky, \"<road & rail>\", car, tree]\nrecipe: %s/test_colors.lua\n%s"):format(DATA, RECIPES, extra or ""))
  return path
end

local RUN_A, RUN_B, RUN_D = tmp .. "/run_a", tmp .. "/run_b", tmp .. "/run_d"
local rc, out = run(("%s eval %s -o %s --quiet"):format(FMSEG, q(write_cfg("a")), q(RUN_A)))
tap.eq(rc, 0, "a finished run of the test recipe on the tiny dataset")
if rc ~= 0 then tap.diag(out) end
rc, out = run(("%s eval %s -o %s --limit 7 --quiet"):format(FMSEG, q(write_cfg("b", "method: \"test_colors <b>\"\n")),
  q(RUN_B)))
tap.eq(rc, 0, "a second run on the same dataset, another method name, --limit 7")
if rc ~= 0 then tap.diag(out) end

-- object discovery: boxes painted as the test recipe reads them, VOC XML ground truth
do
  local root, h, w = tmp .. "/voc07", 30, 40
  local cases = {
    { obj = { 5, 5, 15, 15 }, gt = { 6, 6, 15, 15 } },   -- IoU 1
    { obj = { 0, 0, 10, 10 }, gt = { 6, 1, 15, 10 } },   -- 1/3
    { obj = { 0, 0, 20, 20 }, gt = { 1, 1, 10, 10 } },   -- 1/4
  }
  local items = {}
  for n, cs in ipairs(cases) do
    local o = cs.obj
    items[n] = { id = ("%06d"):format(n),
      img = tiny.paint(h, w, nil, nil, function(x, y) return x >= o[1] and x < o[3] and y >= o[2] and y < o[4] end),
      xml = tiny.voc_xml(("%06d"):format(n), w, h, { { name = "dog", box = cs.gt } }) }
  end
  tiny.write_layout(root, { images = "JPEGImages", image_suffix = ".png", annotations = "Annotations",
    annotation_suffix = ".xml", split = "ImageSets/Main/trainval.txt" }, items)
  local cfg = tmp .. "/disc.yaml"
  tiny.write(cfg, ("_base_: %s/configs/_base_/datasets/voc07_corloc.yaml\ndata:\n  image_suffix: .png\n  root: %s\n"
    .. "recipe: %s/test_colors.lua\nparams:\n  mode: boxes\n"):format(ROOT, root, RECIPES))
  rc, out = run(("%s eval %s -o %s --quiet"):format(FMSEG, q(cfg), q(RUN_D)))
  tap.eq(rc, 0, "a finished object-discovery run")
  if rc ~= 0 then tap.diag(out) end
end

local function metrics(dir) return json.decode(tiny.read(dir .. "/metrics.json") or "null") end
local MA, MB, MD = metrics(RUN_A), metrics(RUN_B), metrics(RUN_D)

-- the cells of the metrics row of run `i`: { method = ..., miou = ..., ... }
local function row_cells(page, i)
  local row = page:match('<tr data%-run="' .. i .. '">(.-)</tr>')
  if not row then return {} end
  local cells = {}
  for cls, text in row:gmatch('<td class="([%w %-]+)">(.-)</td>') do cells[cls:gsub("^num ", "")] = text end
  return cells
end

local function heat_cells(page, i)
  local svg = page:match('<svg class="heatmap" data%-run="' .. i .. '".-</svg>') or ""
  return svg, count(svg, '<rect class="cell"')
end

-- The cells the heat map must have (non-zero counts) and one cell's title.
local function expected_cells(n)
  local conf, cells = confusion(n), 0
  for g = 0, 3 do for p = 0, 4 do if conf[g][p] > 0 then cells = cells + 1 end end end
  local row = 0
  for p = 0, 4 do row = row + conf[1][p] end
  local title = ("ground truth %s, predicted %s: %s%% of its pixels (%d)"):format(escaped(CLASSES[2]), "car",
    pct(conf[1][2] / row), conf[1][2])
  return cells, title
end

local function semantic_row_ok(cells, m, what)
  return tap.ok(cells.aacc == pct(m.aAcc) and cells.miou == pct(m.mIoU) and cells.macc == pct(m.mAcc), what,
    ("cells %s / %s / %s, metrics.json %s / %s / %s"):format(tostring(cells.aacc), tostring(cells.miou),
      tostring(cells.macc), pct(m.aAcc), pct(m.mIoU), pct(m.mAcc)))
end

-- ---- one run -------------------------------------------------------------------------

local PAGE1 = tmp .. "/one.html"
local EX = 3
rc, out = run(("%s report %s -o %s --examples %d --thumb 32"):format(FMSEG, q(RUN_A), q(PAGE1), EX))
tap.ok(rc == 0 and out:find("written to " .. PAGE1, 1, true) ~= nil, "fmseg report writes the page of one run", out)
local page1 = tiny.read(PAGE1) or ""

semantic_row_ok(row_cells(page1, 1), MA, "aAcc, mIoU, mAcc in the table equal metrics.json (percent, 2 decimals)")
tap.ok(MA and MA.IoU and page1:find(("%s, #1 test_colors: IoU %s"):format(escaped(CLASSES[2]), pct(MA.IoU[2])), 1, true),
  "the per-class bars carry each class's IoU from metrics.json")
do
  local all = true
  for _, c in ipairs(CLASSES) do
    all = all and page1:find('class="cls">' .. escaped(c) .. "</text>", 1, true) ~= nil
  end
  tap.ok(all, "every class is named on the per-class chart")
end
tap.ok(page1:find("&lt;road &amp; rail&gt;", 1, true) and not page1:find("<road & rail>", 1, true)
  and page1:find("Tiny &amp; four", 1, true) and not page1:find("Tiny & four", 1, true),
  "class names and titles are escaped; the raw `<road & rail>` appears nowhere")
tap.ok(not page1:find("<script", 1, true) and not page1:find('src="http', 1, true)
  and not page1:find('href="http', 1, true) and not page1:find("url(http", 1, true),
  "self-contained: no script, no external source")

tap.eq(count(page1, 'src="data:image/png;base64,'), 2 * EX * 3,
  "3 best and 3 worst images, each as image, prediction and ground truth, embedded as data:image/png")
do
  local best, worst, distinct = ranked(N, EX)
  tap.ok(distinct, "the tiny dataset's images have distinct per-image mIoU")
  local function ids(kind)
    local sec = page1:match('<div class="examples ' .. kind .. '">(.-)<h[34]>') or ""
    local got = {}
    for id in sec:gmatch('<figure class="example" data%-id="([^"]+)"') do got[#got + 1] = id end
    return table.concat(got, ",")
  end
  tap.eq(ids("best"), table.concat(best, ","), "the best images, in order of this file's per-image mIoU")
  tap.eq(ids("worst"), table.concat(worst, ","), "the worst images, worst first")
  tap.ok(page1:find(("im%s &mdash; mIoU %s%%"):format(best[1]:sub(3), pct(image_miou(truth[tonumber(best[1]:sub(3))]))),
    1, true) ~= nil, "each example names its per-image mIoU")
  tap.ok(page1:find("by per-image mIoU", 1, true) ~= nil, "the page says which per-image measure ranks them")
end
do
  -- the first thumbnail, decoded: the image downscaled to --thumb 32 (48 x 64 -> 24 x 32)
  local b64 = page1:match('src="data:image/png;base64,([A-Za-z0-9+/=]+)"') or ""
  tiny.write(tmp .. "/thumb.b64", b64)
  local ok, img = pcall(function()
    assert(tiny.sh(("base64 -d %s > %s"):format(q(tmp .. "/thumb.b64"), q(tmp .. "/thumb.png"))))
    return image.load(tmp .. "/thumb.png")
  end)
  tap.ok(ok and img:size(1) == 24 and img:size(2) == 32, "an embedded thumbnail decodes (base64 -d) to 24 x 32",
    not ok and tostring(img) or nil)
end
do
  local cells, title = expected_cells(N)
  local svg, got = heat_cells(page1, 1)
  tap.eq(got, cells, "the heat map has one cell per non-zero confusion count (counted here)")
  tap.ok(svg:find("<title>" .. title .. "</title>", 1, true) ~= nil, "cells are row-normalised: " .. title)
  tap.ok(svg:find(">(no class)</text>", 1, true) and svg:find(">" .. escaped(CLASSES[2]) .. "</text>", 1, true),
    "the heat map's axes carry the class names and the no-class column")
end
do
  local cfg_text = tiny.read(RUN_A .. "/config.yaml") or "?"
  tap.ok(page1:find('<pre class="config">' .. escaped(cfg_text) .. "</pre>", 1, true) ~= nil,
    "the resolved config.yaml, escaped, whole")
  local runj = json.decode(tiny.read(RUN_A .. "/run.json") or "{}")
  tap.ok(page1:find("<th>fmseg version (run.json)</th><td>" .. escaped(runj.fmseg_version or "?") .. "</td>", 1, true)
    and page1:find("<th>created</th><td>" .. escaped(runj.created or "?") .. "</td>", 1, true),
    "the version and date from run.json")
end

-- ---- two runs on one dataset ----------------------------------------------------------

local PAGE2 = tmp .. "/two.html"
rc, out = run(("%s report %s %s -o %s --examples 2"):format(FMSEG, q(RUN_A), q(RUN_B), q(PAGE2)))
tap.ok(rc == 0, "fmseg report of two runs", out)
local page2 = tiny.read(PAGE2) or ""
do
  local c1, c2 = row_cells(page2, 1), row_cells(page2, 2)
  semantic_row_ok(c1, MA, "comparison: run 1's row equals its metrics.json")
  semantic_row_ok(c2, MB, "comparison: run 2's row equals its metrics.json")
  tap.ok(c1.method == "test_colors" and c2.method == escaped("test_colors <b>") and c2.images:find("first 7 of 10", 1, true),
    "one row per run, in fmseg table's order, method names escaped, the --limit run marked")
  tap.eq(count(page2, '<svg class="classbars"'), 1, "runs on one dataset share one per-class chart")
  tap.ok(page2:find(("%s, #2 %s: IoU %s"):format(escaped(CLASSES[4]), escaped("test_colors <b>"), pct(MB.IoU[4])), 1,
    true) ~= nil, "with a bar of each run")
  local cells_b = expected_cells(7)
  tap.eq(select(2, heat_cells(page2, 2)), cells_b, "run 2's heat map counts its 7 images only")
  local _, worst = ranked(7, 2)
  local sec = page2:match('<section class="run" id="run%-2">(.*)</section>') or ""
  tap.ok(sec:find('<div class="examples worst">%s*<figure class="example" data%-id="' .. worst[1] .. '"') ~= nil,
    "run 2's worst image is the worst of the first 7")
end

-- ---- semantic and discovery ----------------------------------------------------------------

local PAGE3 = tmp .. "/disc.html"
rc, out = run(("%s report %s %s -o %s --examples 1"):format(FMSEG, q(RUN_D), q(RUN_A), q(PAGE3)))
tap.ok(rc == 0, "fmseg report of a discovery and a semantic run", out)
local page3 = tiny.read(PAGE3) or ""
do
  local c1, c2 = row_cells(page3, 1), row_cells(page3, 2)
  tap.ok(MD and c2.corloc == pct(MD.CorLoc) and c1.corloc == "" and c1.miou == pct(MA.mIoU),
    "semantic runs first (as fmseg table), CorLoc in the discovery run's row", json.encode(c2))
  tap.eq(count(page3, 'src="data:image/png;base64,'), 3 + 3 + 2 + 2,
    "one best and one worst image each: image, prediction, ground truth; image and boxes")
  tap.ok(page3:find('<figure class="example" data%-id="000001" data%-rank="1"><figcaption>000001 &mdash; IoU 100.00%%')
    ~= nil, "discovery examples are ranked by box IoU (IoU 1 first)")
end

-- ---- a run merged from shards kept elsewhere ---------------------------------------------------

do
  local s1, s2, merged = tmp .. "/shard1", tmp .. "/shard2", tmp .. "/merged"
  for i, d in ipairs({ s1, s2 }) do
    run(("%s eval %s -o %s --shard %d/2 --quiet"):format(FMSEG, q(write_cfg("a")), q(d), i))
  end
  rc, out = run(("%s merge %s %s -o %s"):format(FMSEG, q(s1), q(s2), q(merged)))
  local page = tmp .. "/merged.html"
  local rc2, out2 = run(("%s report %s -o %s --examples 2"):format(FMSEG, q(merged), q(page)))
  local text = tiny.read(page) or ""
  local best = ranked(N, 2)
  tap.ok(rc == 0 and rc2 == 0 and count(text, 'src="data:image/png;base64,') == 2 * 2 * 3
    and not text:find("image records found", 1, true)
    and text:find('<div class="examples best">%s*<figure class="example" data%-id="' .. best[1] .. '"') ~= nil,
    "a run merged with -o: its images and predictions are found in the shards' directories", out .. out2)
end

-- ---- Deep Spectral's dataset_clusters protocol: items hold (class, segment) counts ---------------

do
  -- A run directory as runs.lua writes one for eval.protocol dataset_clusters, made by hand over the
  -- first 4 images: segment s = predicted class + 1 (0 where the prediction is unlabelled), segment
  -- s in cluster (s + 1) % 4 (clusters.json), cluster c matched to class (c + 2) % 4: so every
  -- segment s > 0 gets its painted class back, and segment 0 (cluster 0) gets class 2.
  local dir = tmp .. "/run_clusters"
  tiny.mkdir(dir .. "/items")
  tiny.mkdir(dir .. "/pred")
  tiny.write(dir .. "/config.yaml", tiny.read(RUN_A .. "/config.yaml") or "")
  tiny.write(dir .. "/run.json", tiny.read(RUN_A .. "/run.json") or "{}")
  local images, mapped = {}, {}
  for n = 1, 4 do
    local t, hist = truth[n], {}
    for i = 0, H * W - 1 do
      if t.gt[i] ~= 255 then
        local s = t.pred[i] == 255 and 0 or t.pred[i] + 1
        local key = t.gt[i] * 8 + s
        hist[key] = (hist[key] or 0) + 1
      end
    end
    local entries = {}
    for key, c in pairs(hist) do entries[#entries + 1] = { math.floor(key / 8), key % 8, c } end
    local segs = {}
    for s = 1, 4 do segs[s] = { s, (s + 1) % 4 } end
    images[n] = { id = t.id, segments = segs }
    tiny.write(dir .. "/items/" .. t.id .. ".json", json.encode({ id = t.id, kind = "segment_features", height = H,
      width = W, segments = {}, hist = entries }))
    local pred = {}
    for i = 0, H * W - 1 do pred[i] = t.pred[i] == 255 and 2 or t.pred[i] end
    mapped[n] = { id = t.id, gt = t.gt, pred = pred }
    require("fmseg.viz").save_labels(dir .. "/pred/" .. t.id .. ".png", tiny.grid(H, W, pred))
  end
  tiny.write(dir .. "/clusters.json", json.encode({ match = { { 0, 2 }, { 1, 3 }, { 2, 0 }, { 3, 1 } },
    images = images }))
  tiny.write(dir .. "/metrics.json", json.encode({ task = "semantic", protocol = "dataset_clusters",
    method = "clusters", recipe = "deep_spectral", dataset = "tiny4", title = "Tiny & four", classes = CLASSES,
    aAcc = 0.5, mIoU = 0.5, mAcc = 0.5, IoU = { 0.5, 0.5, 0.5, 0.5 }, Acc = { 0.5, 0.5, 0.5, 0.5 },
    confusion = { k = 4, entries = { { 0, 0, 1 } } }, images = 4,
    selection = { limit = 4, total = 10, images = 4 } }))
  local list = {}
  for n = 1, 4 do list[n] = { id = mapped[n].id, v = image_miou(mapped[n]) } end
  table.sort(list, function(a, b) return a.v > b.v end)
  local ok, page = pcall(html_report.render, { dir }, { examples = 1 })
  page = ok and page or ""
  tap.ok(ok, "a dataset_clusters run renders", not ok and page or nil)
  tap.ok(page:find(('<div class="examples best">%%s*<figure class="example" data%%-id="%s" data%%-rank="1">'
    .. '<figcaption>%s &mdash; mIoU %s%%%%'):format(list[1].id, list[1].id, pct(list[1].v))) ~= nil
    and page:find(('<div class="examples worst">%%s*<figure class="example" data%%-id="%s"'):format(list[4].id)) ~= nil,
    ("dataset_clusters: images ranked through clusters.json's segment clusters and matching (best %s %s, worst %s)")
      :format(list[1].id, pct(list[1].v), list[4].id))
  tap.eq(count(page, 'src="data:image/png;base64,'), 6, "and shown with the matched prediction")
end

-- ---- published numbers (a stand-in for fmseg.eval.published) ----------------------------------

do
  local asked = {}
  local saved = package.loaded["fmseg.eval.published"]
  package.loaded["fmseg.eval.published"] = { lookup = function(method, dataset, metric)
    asked[#asked + 1] = table.concat({ method, dataset, metric }, "|")
    if method == "test_colors" and dataset == "tiny4" and metric == "miou" then
      return { value = 12.5, source = "paper <x> & repo" }
    end
    if dataset == "voc07_corloc" and metric == "corloc" then return { value = 61.1, source = "LOST" } end
  end }
  local ok, pg = pcall(html_report.render, { RUN_A, RUN_B, RUN_D }, { examples = 0 })
  package.loaded["fmseg.eval.published"] = saved
  pg = ok and pg or ""
  tap.ok(ok, "render with published numbers", not ok and pg or nil)
  table.sort(asked)
  tap.eq(table.concat(asked, ","), "test_colors <b>|tiny4|miou,test_colors|tiny4|miou,test_colors|voc07_corloc|corloc",
    "lookup(method, dataset, metric) for each run, metric miou or corloc")
  local c1, c2, c3 = row_cells(pg, 1), row_cells(pg, 2), row_cells(pg, 3)
  tap.ok(c1.pub == '12.5 <span class="note">(paper &lt;x&gt; &amp; repo)</span>'
    and c1["delta " .. (100 * MA.mIoU - 12.5 < 0 and "neg" or "pos")] == ("%+.2f"):format(100 * MA.mIoU - 12.5),
    "the measured mIoU beside the published one, with the difference", json.encode(c1))
  tap.ok(c2.pub == "-" and c3.pub:find("^61.1 ") and c3["delta " .. (100 * MD.CorLoc - 61.1 < 0 and "neg" or "pos")]
    == ("%+.2f"):format(100 * MD.CorLoc - 61.1), "no number where lookup returns nil; CorLoc against its own",
    json.encode({ c2, c3 }))
end

-- ---- the data has moved; refusals -----------------------------------------------------------

do
  local moved = DATA .. ".moved"
  os.rename(DATA, moved)
  local page = tmp .. "/moved.html"
  rc, out = run(("%s report %s -o %s"):format(FMSEG, q(RUN_A), q(page)))
  os.rename(moved, DATA)
  local text = tiny.read(page) or ""
  tap.ok(rc == 0 and text:find("The images are not shown", 1, true)
    and text:find("data root " .. escaped(DATA) .. " not found", 1, true)
    and count(text, "data:image/png") == 0 and row_cells(text, 1).miou == pct(MA.mIoU),
    "a data root that is gone: the page says so (naming it) and shows everything else", out)
end
do
  local unfinished = tmp .. "/unfinished"
  tiny.mkdir(unfinished .. "/items")
  tiny.write(unfinished .. "/config.yaml", tiny.read(RUN_A .. "/config.yaml") or "")
  rc, out = run(("%s report %s -o %s"):format(FMSEG, q(unfinished), q(tmp .. "/x.html")))
  tap.ok(rc == 1 and out:find("report: " .. unfinished .. " has no metrics.json: the run is unfinished", 1, true),
    "an unfinished run is refused, as fmseg table refuses it", out)
  local shard = tmp .. "/shard"
  run(("%s eval %s -o %s --shard 1/2 --quiet"):format(FMSEG, q(write_cfg("a")), q(shard)))
  rc, out = run(("%s report %s -o %s"):format(FMSEG, q(shard), q(tmp .. "/x.html")))
  tap.ok(rc == 1 and out:find("holds shards only: combine them first with `fmseg merge", 1, true),
    "a directory of shards only is sent to fmseg merge", out)
  tap.ok(not tiny.read(tmp .. "/x.html"), "and nothing is written")
  rc, out = run(("%s report -o %s"):format(FMSEG, q(tmp .. "/x.html")))
  tap.ok(rc == 1 and out:find("report: no run directories given", 1, true), "no run directory: refused", out)
end

-- ---- rendered by a browser -----------------------------------------------------------------------

local function find_chromium()
  local p = io.popen("command -v chromium || command -v chromium-browser")
  local path = p:read("*l")
  p:close()
  return path
end

local chromium = find_chromium()
if not chromium then
  if os.getenv("CI") then
    tap.ok(false, "headless Chromium present", "CI is set and chromium is not installed")
  else
    tap.skip("the page rendered by headless Chromium", "chromium is not installed")
  end
else
  -- its own profile, no sandbox (root), a timeout so that a hang cannot block the suite; the
  -- sanitizer's preload (if any) is not for it
  local function browse(args, page)
    local prof = tiny.tmpdir("chromium")
    local cmd = ("env -u LD_PRELOAD timeout 60 %s --headless --no-sandbox --disable-gpu --hide-scrollbars "
      .. "--user-data-dir=%s %s file://%s"):format(q(chromium), q(prof), args, page)
    local p = io.popen(cmd .. " 2>/dev/null")
    local text = p:read("*a")
    p:close()
    tiny.rm(prof)
    return text
  end
  local dom = browse("--dump-dom", PAGE2)
  local c1, c2 = row_cells(dom, 1), row_cells(dom, 2)
  semantic_row_ok(c1, MA, "Chromium's DOM: run 1's cells hold the measured values")
  semantic_row_ok(c2, MB, "Chromium's DOM: run 2's cells hold the measured values")
  tap.eq(select(2, heat_cells(dom, 1)) .. "/" .. select(2, heat_cells(dom, 2)),
    expected_cells(N) .. "/" .. expected_cells(7), "Chromium's DOM: the heat maps' cells")
  tap.eq(count(dom, "data:image/png;base64,"), 2 * 2 * 3 * 2, "Chromium's DOM: every thumbnail")
  local shot = tmp .. "/shot.png"
  browse("--window-size=1200,1600 --screenshot=" .. q(shot), PAGE2)
  local ok, img = pcall(image.load, shot)
  if not ok then
    tap.ok(false, "Chromium's screenshot", tostring(img))
  else
    local p, n = img:contiguous():ptr(), img:numel()
    local sum, sq, blue = 0, 0, 0
    for i = 0, n - 1 do sum, sq = sum + p[i], sq + p[i] * p[i] end
    for i = 0, n / 3 - 1 do
      if p[3 * i] == 31 and p[3 * i + 1] == 119 and p[3 * i + 2] == 180 then blue = blue + 1 end
    end
    local mean = sum / n
    local var = sq / n - mean * mean
    tap.ok(img:size(1) == 1600 and img:size(2) == 1200 and var > 100,
      ("Chromium's screenshot is not blank (pixel variance %.0f)"):format(var))
    tap.ok(blue > 500, ("the first run's bars are drawn in its colour (%d pixels of #1f77b4)"):format(blue))
  end
end

if not os.getenv("KEEP") then tiny.rm(tmp) end
os.exit(tap.done())
