-- Deep Spectral's dataset-level semantic protocol (`eval: {protocol:
-- dataset_clusters}`) against the official code
-- (tests/fixtures/methods/deep_spectral-semantic, made by
-- tests/tools/methods/deep_spectral_semantic.py from
-- lukemelas/deep-spectral-segmentation's extract.py and eval.py on a tiny
-- DINO and a five-image VOC-layout dataset): MiniBatchKMeans and PCA alone,
-- then `fmseg eval` end to end (boxes, clusters, matching, maps, mIoU),
-- resumed, and in shards merged by `fmseg merge`.
local tap = require("tap")
local tiny = require("tiny_data")
local cluster = require("fmseg.cluster")
local core = require("fmseg.core")
local ev = require("fmseg.eval")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local safetensors = require("fmseg.io.safetensors")

local ROOT = core.root
local FMSEG = ROOT .. "/fmseg"
local FIX = ROOT .. "/tests/fixtures/methods/deep_spectral-semantic"
local meta = json.decode(fs.read(FIX .. "/semantic.json"))
local ref = safetensors.open(FIX .. "/ref.safetensors"):load_all()
local official = meta.official
local tmp = tiny.tmpdir("dsc")
local q = fs.quote

local function run(cmd)
  local log = tmp .. "/cmd.log"
  local rc = os.execute(cmd .. " > " .. q(log) .. " 2>&1")
  return (rc == 0 or rc == true) and 0 or 1, fs.read(log) or ""
end

local function rel_diff(a, b)
  return (a - b):abs():max() / math.max(b:abs():max(), 1e-30)
end

local function equal_tensors(a, b)
  if a:numel() ~= b:numel() then return false, ("%d vs %d elements"):format(a:numel(), b:numel()) end
  local x, y = a:int():contiguous(), b:int():contiguous()
  local px, py, bad = x:ptr(), y:ptr(), 0
  for i = 0, x:numel() - 1 do if px[i] ~= py[i] then bad = bad + 1 end end
  return bad == 0, bad .. " differ"
end

-- ---- the pieces alone ---------------------------------------------------------------

do
  local mb = meta.minibatch
  local labels, centers = cluster.minibatch_kmeans(ref["minibatch/x"], mb.n_clusters, {
    batch_size = mb.batch_size, max_iter = mb.max_iter, seed = mb.random_state })
  local same, why = equal_tensors(labels, ref["minibatch/labels"])
  tap.ok(same, "minibatch_kmeans: scikit-learn's MiniBatchKMeans labels (1,500 rows, batches of 300, "
    .. "k-means++ on drawn subsets, random_state 5)", why)
  local d = rel_diff(centers, ref["minibatch/centers"])
  tap.ok(d <= 1e-6, "minibatch_kmeans: its centres", ("max rel diff %g"):format(d))

  local y = cluster.pca(ref.box_features, meta.protocol.pca)
  d = rel_diff(y, ref.box_pca)
  tap.ok(d <= 1e-6, "pca: scikit-learn's PCA(32).fit_transform of the official box features",
    ("max rel diff %g"):format(d))
  local pr = meta.pca_randomized
  local yr, _, _, solver = cluster.pca(ref["pca_randomized/x"], pr.n_components, { seed = pr.np_random_seed })
  d = rel_diff(yr, ref["pca_randomized/y"])
  tap.ok(solver == "randomized" and d <= 1e-6, "pca: scikit-learn's randomized solver above 500 rows, under "
    .. "np.random.seed(0) (one BLAS thread)", ("%s, max rel diff %g"):format(solver, d))
  local lr = cluster.minibatch_kmeans(yr, meta.protocol.clusters, { batch_size = 4096, max_iter = 5000, seed = 0 })
  same, why = equal_tensors(lr, ref["pca_randomized/clusters"])
  tap.ok(same, "... and MiniBatchKMeans' clusters of it", why)
  local l2 = cluster.minibatch_kmeans(ref.box_pca, meta.protocol.clusters, { batch_size = 4096, max_iter = 5000,
                                                                            seed = meta.protocol.seed })
  same, why = equal_tensors(l2, ref.box_clusters)
  tap.ok(same, "extract_bbox_clusters' clusters of its PCA coordinates", why)
end

do
  -- eval.py's matching on a table with ties (an empty cluster, an absent class), against brute force
  local tbl = { [0] = { [0] = 5, 1, 0 }, [1] = { [0] = 2, 3, 0 }, [2] = { [0] = 0, 0, 0 } }
  local m = ev.match_clusters(tbl, 3, 3)
  local best, best_perm = math.huge, nil
  local function iou(c, g)
    local tp, ac, ag = tbl[c][g], 0, 0
    for j = 0, 2 do ac, ag = ac + tbl[c][j], ag + tbl[j][g] end
    return tp / math.max(ac + ag - tp, 1e-8)
  end
  for _, perm in ipairs({ { 0, 1, 2 }, { 0, 2, 1 }, { 1, 0, 2 }, { 1, 2, 0 }, { 2, 0, 1 }, { 2, 1, 0 } }) do
    local cost = 0
    for c = 0, 2 do cost = cost + (11 - iou(c, perm[c + 1])) end
    if cost < best then best, best_perm = cost, perm end
  end
  tap.ok(m.class_of[0] == best_perm[1] and m.class_of[1] == best_perm[2] and m.class_of[2] == best_perm[3],
    "match_clusters: the assignment of least summed N - IoU")
  tap.ok(math.abs(m.IoU[1] - 5 / 8) < 1e-15 and math.abs(m.IoU[2] - 3 / 6) < 1e-15 and m.IoU[3] == 0
    and math.abs(m.mIoU - (5 / 8 + 3 / 6) / 3) < 1e-15,
    "match_clusters: IoU 0 for a class absent from both, mIoU over all classes (eval.py)")
end

-- ---- fmseg eval end to end ---------------------------------------------------------------

local CFG = tmp .. "/semantic.yaml"
tiny.write(CFG, ("_base_: %s/configs/deep_spectral/deep_spectral_dino-s16_voc21-semantic.yaml\n"
  .. "data:\n  image_suffix: .png\nmodels:\n  dino: %s/tests/fixtures/methods/models/dino-s16-tiny\n"):format(ROOT, ROOT))
local function eval_cmd(dir, extra)
  return ("%s eval %s --data %s -o %s -q %s"):format(FMSEG, q(CFG), q(FIX .. "/data"), q(dir), extra or "")
end
local function metrics_of(dir, name)
  local s = fs.read(dir .. "/" .. (name or "metrics") .. ".json")
  return s and json.decode(s)
end

local FULL = tmp .. "/full"
local rc, out = run(eval_cmd(FULL))
tap.eq(rc, 0, "fmseg eval with eval.protocol dataset_clusters on the fixture's dataset")
if rc ~= 0 then tap.diag(out) end
local full = metrics_of(FULL) or {}
local ids = {}
for id in pairs(official.images) do ids[#ids + 1] = id end
table.sort(ids)

tap.ok(full.mIoU and math.abs(full.mIoU - official.mIoU) <= 1e-6,
  ("mIoU %.6f, the official eval.py's %.6f"):format(full.mIoU or 0 / 0, official.mIoU))
do
  local worst = 0
  for c = 1, #official.IoU do worst = math.max(worst, math.abs((full.IoU and full.IoU[c] or 1 / 0) - official.IoU[c])) end
  tap.ok(worst <= 1e-6, "per-class IoU equal the official ones to 1e-6", ("worst %g"):format(worst))
end
tap.eq(json.encode(full.match or {}), json.encode(official.match), "the Hungarian matching of clusters to classes")

local clusters = json.decode(fs.read(FULL .. "/clusters.json") or "{}")
do
  local bad_boxes, bad_clusters, bad_maps, bad_cluster_maps = {}, {}, {}, {}
  local by_id = {}
  for _, im in ipairs(clusters.images or {}) do by_id[im.id] = im end
  for _, id in ipairs(ids) do
    local want = official.images[id]
    local item = json.decode(fs.read(FULL .. "/items/" .. id .. ".json") or "{}")
    local got_ids, got_boxes = {}, {}
    for _, sg in ipairs(item.segments or {}) do got_ids[#got_ids + 1], got_boxes[#got_boxes + 1] = sg[1], sg[2] end
    if json.encode(got_ids) ~= json.encode(want.segment_indices) or json.encode(got_boxes) ~= json.encode(want.boxes) then
      bad_boxes[#bad_boxes + 1] = id
    end
    local got_c, cmap = {}, { [0] = 0 }
    for _, sg in ipairs(by_id[id] and by_id[id].segments or {}) do got_c[#got_c + 1] = sg[2]; cmap[sg[1]] = sg[2] end
    if json.encode(got_c) ~= json.encode(want.clusters) then bad_clusters[#bad_clusters + 1] = id end
    local pred = image.load_indices(FULL .. "/pred/" .. id .. ".png")
    if not equal_tensors(pred, ref["pred/" .. id]) then bad_maps[#bad_maps + 1] = id end
    local seg = image.load_indices(FULL .. "/segments/" .. id .. ".png"):int():contiguous()
    local sp = seg:ptr()
    for i = 0, seg:numel() - 1 do sp[i] = cmap[sp[i]] or -1 end
    if not equal_tensors(seg, ref["clusters/" .. id]) then bad_cluster_maps[#bad_cluster_maps + 1] = id end
  end
  tap.ok(#bad_boxes == 0, "segment ids and boxes (eroded 2, dilated 5, in pixels) as extract_bboxes",
    table.concat(bad_boxes, " "))
  tap.ok(#bad_clusters == 0, "every segment's cluster as extract_bbox_clusters", table.concat(bad_clusters, " "))
  tap.ok(#bad_cluster_maps == 0, "cluster maps at image size as eval.py reads them", table.concat(bad_cluster_maps, " "))
  tap.ok(#bad_maps == 0, "pred/<id>.png: the matched class maps, pixel for pixel", table.concat(bad_maps, " "))
end

do
  -- the box features (the official ones L2-normalised, as extract_bbox_clusters stacks them)
  local rows = {}
  for _, id in ipairs(ids) do
    local f = safetensors.open(FULL .. "/features/" .. id .. ".safetensors")
    rows[#rows + 1] = f:get("features"):clone()
    f:close()
  end
  local x = require("fmseg.tensor").cat(rows, 1)
  x = x / (x * x):sum(2):sqrt():reshape(x:size(1), 1)
  local d = rel_diff(x, ref.box_features)
  tap.ok(d <= 1e-4, "box features: the DINO CLS output of each crop as extract_bbox_features (1e-4, the fixtures' "
    .. "tolerance)", ("max rel diff %g"):format(d))
  tap.diag(("box features: max rel diff %.3g over %d boxes"):format(d, x:size(1)))
end

local function same_numbers(a, b)
  if not a or not b then return false end
  return json.encode({ a.mIoU, a.IoU, a.aAcc, a.mAcc, a.match, a.confusion }, { nan = "null" })
      == json.encode({ b.mIoU, b.IoU, b.aAcc, b.mAcc, b.match, b.confusion }, { nan = "null" })
end

local function same_maps(dir)
  for _, id in ipairs(ids) do
    local a = image.load_indices(dir .. "/pred/" .. id .. ".png")
    if not equal_tensors(a, image.load_indices(FULL .. "/pred/" .. id .. ".png")) then return false end
  end
  return true
end

-- resume: items removed (as after a kill before they were written) are recomputed
do
  local dir = tmp .. "/resumed"
  tiny.sh(("cp -r %s %s"):format(q(FULL), q(dir)))
  for _, id in ipairs({ ids[2], ids[4] }) do os.remove(dir .. "/items/" .. id .. ".json") end
  os.remove(dir .. "/metrics.json")
  rc, out = run(eval_cmd(dir))
  tap.ok(rc == 0 and same_numbers(metrics_of(dir), full) and same_maps(dir),
    "a resumed run recomputes the missing records and ends with the same numbers and maps", out:sub(-800))
end

-- shards in their own directories, then merge
do
  local s1, s2, merged = tmp .. "/shard1", tmp .. "/shard2", tmp .. "/merged"
  local r1 = run(eval_cmd(s1, "--shard 1/2"))
  local r2 = run(eval_cmd(s2, "--shard 2/2"))
  local part = metrics_of(s1, "metrics.shard-1-of-2") or {}
  tap.ok(r1 == 0 and r2 == 0 and part.pending and part.mIoU == nil and #(part.items or {}) == 3,
    "a shard keeps its images' segments and features, and leaves the clustering to merge")
  rc, out = run(("%s merge %s %s -o %s"):format(FMSEG, q(s1), q(s2), q(merged)))
  tap.ok(rc == 0 and same_numbers(metrics_of(merged), full) and same_maps(merged),
    "fmseg merge of two shard directories: the numbers and maps of one run", out:sub(-800))
  tap.ok(metrics_of(merged).images == #ids, "the merged run counts every image")
end

-- shards sharing one directory
do
  local dir = tmp .. "/shared"
  local ok = true
  for i = 1, 3 do ok = ok and run(eval_cmd(dir, ("--shard %d/3"):format(i))) == 0 end
  rc, out = run(("%s merge %s"):format(FMSEG, q(dir)))
  tap.ok(ok and rc == 0 and same_numbers(metrics_of(dir), full) and same_maps(dir),
    "three shards in one directory, merged: the same numbers and maps", out:sub(-800))
  local only = tmp .. "/only1"
  run(eval_cmd(only, "--shard 1/2"))
  rc, out = run(("%s merge %s"):format(FMSEG, q(only)))
  tap.ok(rc ~= 0 and out:find("missing", 1, true) ~= nil, "merge refuses while a shard is missing", out:sub(-400))
end

-- a recipe result without segment features is refused with the fix
do
  rc, out = run(eval_cmd(tmp .. "/nofeat", "--set params.segment_features=false"))
  tap.ok(rc ~= 0 and out:find("segment_features", 1, true) ~= nil,
    "dataset_clusters refuses segments without features and names params.segment_features", out:sub(-400))
end

tiny.rm(tmp)
os.exit(tap.done())
