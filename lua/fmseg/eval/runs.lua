-- fmseg.eval.runs — evaluation runs that never lose work, and their merging.
--
-- A run directory holds
--   config.yaml           the resolved config (fmseg eval RUN_DIR/config.yaml reruns it)
--   run.json              fmseg version, config file, dataset
--   items/<id>.json       one image's contribution: sparse confusion entries
--                         {g, p, count} (or its boxes and CorLoc hit)
--   pred/<id>.png         the prediction that was scored (palette PNG)
--   metrics.json / .md    the totals of a whole run, or
--   metrics.shard-I-of-N.json / .md  those of one shard
-- Every file is written to a temporary name and renamed, so a run killed at
-- any moment leaves only whole files; a rerun skips items already written
-- and ends with the same numbers. A rerun whose config (data.root aside:
-- datasets move between machines) or fmseg version differs is refused.
--
-- eval.protocol: dataset_clusters (Deep Spectral's semantic protocol; M.cluster_pass below) keeps per
-- image, instead of confusion entries, the segments' boxes and the (class, segment id) pixel counts in
-- items/<id>.json, the segment map in segments/<id>.png and one feature per segment in
-- features/<id>.safetensors (the JSON written last: a record is whole when its JSON exists); after the
-- last image (or in `fmseg merge`, for shards) the features of the whole dataset are clustered and the
-- clusters matched to classes once, and pred/<id>.png gets the matched classes.
--
-- data.task interactive (fmseg.eval.interactive): one item per object,
-- items/<id>.json holding its clicks and the IoU after each; an item whose
-- image or mask cannot be used is recorded as skipped, with the reason, and
-- the run goes on; the totals (NoC, mIoU per click: also
-- miou_per_click.csv / .png) come from sums that shards add up.
--
-- data.task oneshot (fmseg.eval.oneshot): each item brings its class's
-- reference, handed to the recipe (set_reference) when it changes;
-- items/<id>.json holds the item's intersection, union and target pixels,
-- the totals PerSAM's per-class IoU and their mean.
--
-- data.task fewshot (fmseg.eval.fewshot: COCO-20i, FSS-1000, LVIS-92i): one
-- item per episode, drawn at open as the official loader draws them; the
-- episode's support handed to the recipe (set_reference), the resized query
-- segmented; items/<id>.json holds its background and foreground
-- intersection and union, the totals mIoU and FB-IoU as HSNet's
-- AverageMeter computes them (the per-episode counts kept in the metrics
-- record, so that shards merge in episode order).
--
-- Shards: --shard I/N (1-based I) takes the images at positions I, I + N,
-- I + 2N, ... of the split (after --limit). Shards may share a run
-- directory (items have distinct ids; each writes its own metrics file) or
-- use their own; `fmseg merge` sums their counts into what one run gives.
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local fs = require("fmseg.io.fs")
local data = require("fmseg.eval.data")
local ev = require("fmseg.eval")
local image = require("fmseg.image")
local interactive = require("fmseg.eval.interactive")
local oneshot = require("fmseg.eval.oneshot")
local fewshot = require("fmseg.eval.fewshot")
local referring = require("fmseg.eval.referring")
local json = require("fmseg.io.json")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")
local viz = require("fmseg.viz")
local ffi = core.ffi

local M = {}

local quote, exists = fs.quote, fs.exists

-- made once per process: an evaluation asks for the same folders per image
local made = {}
local function mkdir_p(dir)
  if made[dir] then return end
  fs.mkdir_p(dir)
  made[dir] = true
end

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end

local read_file = fs.read

local function read_json(path)
  local s = read_file(path)
  if not s then return nil end
  local ok, v = pcall(json.decode, s, path)
  if not ok then return nil, v end
  return v
end

-- Items are written compact, totals readable.
local function write_json(path, v, compact)
  fs.write_atomic(path, json.encode(v, { indent = not compact and 1 or nil, nan = "null" }) .. "\n")
end

-- ---- selection -----------------------------------------------------------------

-- "I/N" → { i = I, n = N } with 1 <= I <= N.
function M.parse_shard(s)
  local i, n = tostring(s):match("^(%d+)/(%d+)$")
  i, n = tonumber(i), tonumber(n)
  if not i or n < 1 or i < 1 or i > n then
    error(("--shard %s: expected I/N with 1 <= I <= N (e.g. 3/8; shards are numbered from 1)"):format(tostring(s)), 0)
  end
  return { i = i, n = n }
end

-- Item indices (1-based) of the first `limit` items, then every N-th from I.
function M.select(count, limit, shard)
  local last = limit and math.min(limit, count) or count
  local out = {}
  for k = 1, last do
    if not shard or (k - 1) % shard.n == shard.i - 1 then out[#out + 1] = k end
  end
  return out
end

local function metrics_name(shard)
  if not shard then return "metrics" end
  return ("metrics.shard-%d-of-%d"):format(shard.i, shard.n)
end

-- ---- the run record -------------------------------------------------------------

-- The config as compared between runs, flattened to {"a.b.c" = text}:
-- data.root left out (datasets move between machines).
local function flatten(v, prefix, out)
  if type(v) == "table" and v ~= json.null and getmetatable(v) ~= json.array_mt and (next(v) == nil or #v == 0) then
    for k, x in pairs(v) do flatten(x, prefix and (prefix .. "." .. tostring(k)) or tostring(k), out) end
  else
    out[prefix] = type(v) == "string" and v or json.encode(v)
  end
  return out
end

local function comparable(cfg)
  local flat = flatten(cfg, nil, {})
  flat["data.root"] = nil
  return flat
end

-- "params.mode is instances here, unset there" for the first key (sorted)
-- that differs, or nil.
local function difference(stored, now)
  local keys, seen = {}, {}
  for k in pairs(stored) do if not seen[k] then seen[k] = true; keys[#keys + 1] = k end end
  for k in pairs(now) do if not seen[k] then seen[k] = true; keys[#keys + 1] = k end end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if stored[k] ~= now[k] then
      return ("%s is %s here, %s there"):format(k, now[k] or "unset", stored[k] or "unset")
    end
  end
end

-- Refuses a directory started with another config or fmseg version.
local function check_same(dir, cfg)
  local stored_path = dir .. "/config.yaml"
  local ok, stored = pcall(config.load, stored_path)
  if not ok then error(("%s: unreadable (%s); use a new run directory"):format(stored_path, tostring(stored)), 0) end
  local diff = difference(comparable(stored), comparable(cfg))
  if diff then
    error(("%s was started with another config (%s); use a new -o RUN_DIR, or rerun with the same "
      .. "config to resume"):format(dir, diff), 0)
  end
  local run = read_json(dir .. "/run.json")
  local version = require("fmseg").version()
  if run and run.fmseg_version ~= version then
    error(("%s was started by fmseg %s, this is fmseg %s: its results may differ; use a new -o RUN_DIR"):format(
      dir, tostring(run.fmseg_version), version), 0)
  end
end

-- Creates the run directory or checks it matches; returns nothing.
function M.prepare(dir, cfg, config_file, ds)
  mkdir_p(dir .. "/items")
  mkdir_p(dir .. "/pred")
  if exists(dir .. "/config.yaml") then
    check_same(dir, cfg)
  else
    fs.write_atomic(dir .. "/config.yaml", config.dump(cfg))
  end
  if not exists(dir .. "/run.json") then
    write_json(dir .. "/run.json", {
      fmseg_version = require("fmseg").version(), config_file = config_file,
      dataset = ds.name, task = ds.task, created = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    })
  end
end

-- ---- scoring one image -------------------------------------------------------------

local function as_int(labels)
  if labels:dtype() == "int32" then return labels end
  return labels:int()
end

-- Instances → one label map: the first (best) mask wins where masks
-- overlap; uncovered pixels get the background class, or "no class".
local function paint_instances(result, h, w, ds)
  local fill = ds.background or ds.ignore_index
  local labels = T.full({ h, w }, fill)
  for i = #result.masks, 1, -1 do
    local cls = result.labels and result.labels[i]
    if cls == nil then
      error("instances without class labels cannot be scored on a semantic dataset (result.labels missing)", 0)
    end
    local m = result.masks[i]:float()
    labels = labels * (1 - m) + m * cls
  end
  return labels:int()
end

local function box_list(boxes)
  if boxes == nil then return nil end
  if T.is_tensor(boxes) then return boxes:float():totable() end
  return boxes
end

-- Scores `result` for item i; returns the item record and the label map
-- to store (nil for boxes).
function M.score(ds, i, img, result, recipe_name)
  local item = ds.items[i]
  if ds.task == "discovery" then
    local boxes = box_list(result.boxes)
    if not boxes then
      error(("recipe %s returned no boxes; object discovery (data.task: discovery) needs "
        .. "result.boxes = {{x0, y0, x1, y1}, ...} in pixel-edge coordinates"):format(recipe_name), 0)
    end
    local gt = ds:boxes(i)
    local hit, iou = ev.corloc_hit(boxes[1], gt)
    return { id = item.id, kind = result.kind, boxes = boxes, gt_boxes = gt, iou = iou, correct = hit }
  end
  local gt = ds:labels(i)
  local h, w = img:size(1), img:size(2)
  if gt:size(1) ~= h or gt:size(2) ~= w then
    error(("%s is %dx%d but its image %s is %dx%d"):format(item.annotation, gt:size(2), gt:size(1),
      item.image, w, h), 0)
  end
  local k, ignore = ds.num_classes, ds.ignore_index
  local function entries_of(lab)        -- mmseg's IoUMetric ignore semantics when the dataset asks
    if ds.metric_ignore_index and ds.metric_ignore_index ~= ignore then
      return ev.mmseg_entries(lab, gt, k, ignore, ds.metric_ignore_index)
    end
    return ev.image_entries(lab, gt, k, ignore)
  end
  local entries, stored
  local ok, err = pcall(function()
    if result.kind == "segments" then
      local class_of
      entries, class_of = ev.match_segments(result.labels, gt, k, ignore)
      stored = ev.relabel_segments(result.labels, class_of, ignore)
    else
      stored = result.kind == "instances" and paint_instances(result, h, w, ds) or as_int(result.labels)
      entries = entries_of(stored)
    end
  end)
  -- A recipe's sweep of one parameter (result.sweep = {param, values, pick,
  -- labels = function(value) → label map}): each value's entries are kept
  -- beside the main ones, and the totals report each value's mIoU.
  local sweep
  if ok and result.sweep and result.kind == "semantic" then
    local sw = result.sweep
    ok, err = pcall(function()
      sweep = { param = sw.param, values = sw.values, pick = sw.pick, entries = {} }
      for j, v in ipairs(sw.values) do
        local lab = as_int(sw.labels(v))
        sweep.entries[j] = entries_of(lab)
      end
    end)
  end
  if not ok then
    err = tostring(err)
    if err:find("gt value", 1, true) then
      error(("%s: %s (a label the %d-class dataset %s does not have: check data.reduce_zero_label, "
        .. "data.num_classes and the annotation files)"):format(item.annotation, err, k, ds.name), 0)
    end
    error(("recipe %s: %s"):format(recipe_name, err), 0)
  end
  return { id = item.id, kind = result.kind, height = h, width = w, entries = entries, sweep = sweep }, stored
end

-- ---- the dataset-level protocol (dataset_clusters) ----------------------------------

local PROTOCOLS = { per_image = true, dataset_clusters = true }

-- The eval section of a config, checked: { protocol, clusters, pca, seed, batch_size, max_iter }.
function M.protocol(cfg, ds)
  local e = config.get(cfg, "eval") or {}
  local name = e.protocol or "per_image"
  if not PROTOCOLS[name] then
    error(("eval.protocol: %s; expected per_image or dataset_clusters"):format(tostring(name)), 0)
  end
  local p = { name = name, clusters = e.clusters or (ds and ds.num_classes), pca = e.pca or 0, seed = e.seed or 0,
              batch_size = e.batch_size or 4096, max_iter = e.max_iter or 5000,
              pca_solver = e.pca_solver or "auto", pca_seed = e.pca_seed or 0 }
  if name == "dataset_clusters" and ds and ds.task ~= "semantic" then
    error(("eval.protocol dataset_clusters scores semantic datasets; %s is %s"):format(ds.name, ds.task), 0)
  end
  return p
end

local function item_path(dir, id) return dir .. "/items/" .. id .. ".json" end
-- Predictions are kept as palette PNGs, or as 16-bit TIFFs where the
-- classes (or the ignore value, an unlabelled prediction) do not fit in 8
-- bits (ADE847, Context459).
function M.wide_labels(k, ignore) return k > 256 or (ignore or 0) > 255 end
local function pred_path(dir, id, wide) return dir .. "/pred/" .. id .. (wide and ".tif" or ".png") end
local function save_pred(path, labels, palette, wide)
  fs.atomically(path, function(tmp)
    if wide then image.save_tiff16(tmp, labels) else viz.save_labels(tmp, labels, palette) end
  end)
end
local function features_path(dir, id) return dir .. "/features/" .. id .. ".safetensors" end
local function segments_path(dir, id) return dir .. "/segments/" .. id .. ".png" end

-- Pass 1 of dataset_clusters for item i: the segment map and features are written, the record
-- returned (to be written last). result: kind "segments" with segment_features {{id, box, feature}}.
function M.score_segment_features(ds, i, img, result, recipe_name, dir)
  local item = ds.items[i]
  if result.kind ~= "segments" or type(result.segment_features) ~= "table" then
    error(("recipe %s returned no segment_features; eval.protocol dataset_clusters needs a recipe "
      .. "that does (deep_spectral with params.segment_features: true)"):format(recipe_name), 0)
  end
  local gt = ds:labels(i)
  local h, w = img:size(1), img:size(2)
  local seg = result.labels:dtype() == "int32" and result.labels or result.labels:int()
  if gt:size(1) ~= h or gt:size(2) ~= w or seg:size(1) ~= h or seg:size(2) ~= w then
    error(("%s: ground truth %dx%d, segments %dx%d, image %dx%d"):format(item.id, gt:size(2), gt:size(1),
      seg:size(2), seg:size(1), w, h), 0)
  end
  local top = math.floor(seg:float():max())
  if top > 255 then error(("recipe %s: segment ids up to %d; at most 255 here"):format(recipe_name, top), 0) end
  local hist = T.new({ ds.num_classes, top + 1 }, "int32")
  local ok, err = pcall(ev.confusion_add, hist, seg, gt, ds.ignore_index)
  if not ok then
    error(("%s: %s (check data.reduce_zero_label and data.num_classes)"):format(item.annotation, tostring(err)), 0)
  end
  local segments, rows = {}, {}
  for _, sf in ipairs(result.segment_features) do
    segments[#segments + 1] = { sf.id, sf.box }
    rows[#rows + 1] = sf.feature:reshape(1, sf.feature:numel())
  end
  if #rows > 0 then
    local fpath = features_path(dir, item.id)
    mkdir_p(dirname(fpath))
    fs.atomically(fpath, function(tmp) safetensors.save(tmp, { features = T.cat(rows, 1):contiguous() }) end)
  end
  local spath = segments_path(dir, item.id)
  mkdir_p(dirname(spath))
  fs.atomically(spath, function(tmp) viz.save_labels(tmp, seg) end)
  return { id = item.id, kind = "segment_features", height = h, width = w, segments = segments,
           hist = ev.sparse(hist) }
end

-- torch's x / x.norm(dim=-1, keepdim=True) on float32 rows (norms summed in double here)
local function normalize_rows(x)
  local n, d = x:size(1), x:size(2)
  local out = x:clone()
  local p = out:ptr()
  local nrm = ffi.new("float[1]")
  for i = 0, n - 1 do
    local sq = 0
    for j = 0, d - 1 do sq = sq + p[i * d + j] * p[i * d + j] end
    nrm[0] = math.sqrt(sq)
    for j = 0, d - 1 do p[i * d + j] = p[i * d + j] / nrm[0] end
  end
  return out
end

-- Pass 2: items {{rec = item record, dir = its run directory}...} of the whole selection, k classes,
-- class names, the protocol p, the output directory (pred/, clusters.json). As deep-spectral-
-- segmentation's extract_bbox_clusters (features of all boxes, images by id, L2-normalised, PCA to
-- p.pca dims (scikit-learn's solver choice, p.pca_solver; its randomized one under
-- np.random.seed(p.pca_seed)), MiniBatchKMeans(p.clusters, batch_size 4096, max_iter 5000, random_state p.seed)),
-- extract_semantic_segmentations (segment 0 keeps 0, segment s > 0 its box's cluster) and
-- eval.py's evaluate (ev.match_clusters). Returns the metrics record.
function M.cluster_pass(items, k, class_names, p, out)
  local cluster = require("fmseg.cluster")
  table.sort(items, function(a, b) return a.rec.id < b.rec.id end)
  local rows, owners = {}, {}
  for _, it in ipairs(items) do
    if #it.rec.segments > 0 then
      local path = features_path(it.dir, it.rec.id)
      local f = safetensors.open(path)
      local x = f:get("features"):clone()
      f:close()
      if x:size(1) ~= #it.rec.segments then
        error(("%s: %d features for %d segments; remove its item to recompute it"):format(path, x:size(1),
          #it.rec.segments), 0)
      end
      rows[#rows + 1] = x
      for _, sg in ipairs(it.rec.segments) do owners[#owners + 1] = { it, sg[1] } end
    end
  end
  if #owners < p.clusters then
    error(("eval: %d segment boxes over %d images, fewer than the %d clusters"):format(#owners, #items,
      p.clusters), 0)
  end
  local x = normalize_rows(T.cat(rows, 1):contiguous())
  if p.pca and p.pca > 0 then
    if p.pca > math.min(x:size(1), x:size(2)) then
      error(("eval.pca %d: needs at least that many boxes (%d) and feature dims (%d)"):format(p.pca, x:size(1),
        x:size(2)), 0)
    end
    x = cluster.pca(x, p.pca, { solver = p.pca_solver or "auto", seed = p.pca_seed or 0 })
  end
  local labels = cluster.minibatch_kmeans(x, p.clusters, { batch_size = p.batch_size, max_iter = p.max_iter,
                                                          seed = p.seed })
  local lp = labels:ptr()
  local cluster_of = {}
  for n, o in ipairs(owners) do
    local id = o[1].rec.id
    cluster_of[id] = cluster_of[id] or { [0] = 0 }
    cluster_of[id][o[2]] = tonumber(lp[n - 1])
  end
  -- (cluster, class) pixel counts over the dataset
  local tbl = {}
  for c = 0, p.clusters - 1 do
    tbl[c] = {}
    for g = 0, k - 1 do tbl[c][g] = 0 end
  end
  for _, it in ipairs(items) do
    local map = cluster_of[it.rec.id] or { [0] = 0 }
    for _, e in ipairs(it.rec.hist) do
      local c = map[e[2]]
      if not c then error(("%s: segment %d has pixels but no box"):format(it.rec.id, e[2]), 0) end
      tbl[c][e[1]] = tbl[c][e[1]] + e[3]
    end
  end
  local m = ev.match_clusters(tbl, p.clusters, k)
  -- mmseg-style counts of the matched prediction (aAcc, mAcc)
  local stats = ev.stats(k)
  local entries = {}
  for c = 0, p.clusters - 1 do
    for g = 0, k - 1 do
      if tbl[c][g] > 0 then entries[#entries + 1] = { g, m.class_of[c] or 0, tbl[c][g] } end
    end
  end
  ev.add(stats, entries)
  local rec = M.semantic_record(stats, class_names)
  local mm = ev.metrics(stats)
  rec.protocol = "dataset_clusters"
  rec.mmseg = { mIoU = mm.mIoU, IoU = mm.IoU }
  rec.IoU, rec.mIoU = m.IoU, m.mIoU
  rec.match = m.match
  rec.boxes = #owners
  -- matched class maps, and the clusters of every image's segments
  local palette = viz.voc_palette(256)
  local images = {}
  for _, it in ipairs(items) do
    local id = it.rec.id
    local map = cluster_of[id] or { [0] = 0 }
    local seg = image.load_indices(segments_path(it.dir, id))
    local lut = {}
    for s_id, c in pairs(map) do lut[s_id] = m.class_of[c] or 0 end
    local n = seg:numel()
    local pred = T.new(seg:shape(), "int32")
    local sp, pp = seg:contiguous():ptr(), pred:ptr()
    for q = 0, n - 1 do
      local v = lut[sp[q]]
      if not v then error(("%s: segment %d has pixels but no box"):format(segments_path(it.dir, id), sp[q]), 0) end
      pp[q] = v
    end
    local png = pred_path(out, id, M.wide_labels(k))
    mkdir_p(dirname(png))
    save_pred(png, pred, palette, M.wide_labels(k))
    local segs = {}
    for _, sg in ipairs(it.rec.segments) do segs[#segs + 1] = { sg[1], map[sg[1]] } end
    images[#images + 1] = { id = id, segments = segs }
  end
  write_json(out .. "/clusters.json", { match = m.match, images = images,
    protocol = { clusters = p.clusters, pca = p.pca, seed = p.seed, batch_size = p.batch_size,
                 max_iter = p.max_iter, pca_solver = p.pca_solver, pca_seed = p.pca_seed } })
  return rec
end

-- ---- progress ------------------------------------------------------------------------

local function clock_time(s)
  s = math.floor(s + 0.5)
  if s >= 3600 then return ("%d:%02d:%02d"):format(s / 3600, (s % 3600) / 60, s % 60) end
  return ("%d:%02d"):format(s / 60, s % 60)
end

local now = fs.now

-- "\reval voc21  [######......]  37/1449  2.31 img/s  ETA 10:14"
local function progress(label, done, total, computed, elapsed)
  local width = 24
  local filled = total > 0 and math.floor(width * done / total) or width
  local rate = elapsed > 0 and computed / elapsed or 0
  local eta = rate > 0 and clock_time((total - done) / rate) or "--:--"
  io.stderr:write(("\r%s [%s%s] %d/%d  %.2f img/s  ETA %s  "):format(label, ("#"):rep(filled),
    ("."):rep(width - filled), done, total, rate, eta))
  io.stderr:flush()
end

-- ---- totals -----------------------------------------------------------------------------

-- Totals of items → the metrics record (without the selection fields).
local function totals(ds, records)
  if ds.task == "interactive" then return interactive.totals(records, ds.interactive) end
  if ds.task == "oneshot" then return oneshot.totals(records, ds.classes) end
  if ds.task == "fewshot" then return fewshot.totals(records, ds) end
  if ds.task == "referring" then return referring.totals(records) end
  if ds.task == "discovery" then
    local correct = 0
    for _, r in ipairs(records) do if r.correct then correct = correct + 1 end end
    return { task = "discovery", correct = correct, total = #records,
             CorLoc = #records > 0 and correct / #records or 0 / 0 }
  end
  local stats = ev.stats(ds.num_classes)
  for _, r in ipairs(records) do ev.add(stats, r.entries) end
  local rec = M.semantic_record(stats, ds.class_names)
  rec.sweep = M.sweep_record(ds.num_classes, records)
  return rec
end

-- The items' sweeps (score's `sweep`) summed per value → {param, values,
-- mIoU = {...}, best = value, best_mIoU}, the best as the official
-- evaluations pick it (pick "first": the first of equal maxima, "last":
-- the last); nil when no item has a sweep.
function M.sweep_record(k, records)
  local first
  for _, r in ipairs(records) do if r.sweep and r.sweep ~= json.null then first = r.sweep; break end end
  if not first then return nil end
  local stats = {}
  for j = 1, #first.values do
    stats[j] = ev.stats(k)
    for _, r in ipairs(records) do
      if r.sweep and r.sweep ~= json.null then ev.add(stats[j], r.sweep.entries[j]) end
    end
  end
  return M.sweep_from_stats(first, stats)
end

-- {param, values, pick} and one confusion stats per value → the sweep
-- record (its confusion entries kept, so `fmseg merge` can sum shards).
function M.sweep_from_stats(sw, stats)
  local out = { param = sw.param, values = sw.values, pick = sw.pick or "first", mIoU = {}, confusion = {} }
  for j = 1, #sw.values do
    out.mIoU[j] = ev.metrics(stats[j]).mIoU
    out.confusion[j] = ev.entries(stats[j])
  end
  local best
  for j, m in ipairs(out.mIoU) do
    if m == m and (best == nil or m > out.mIoU[best] or (out.pick == "last" and m == out.mIoU[best])) then best = j end
  end
  if best then out.best, out.best_mIoU = sw.values[best], out.mIoU[best] end
  return out
end

function M.semantic_record(stats, class_names)
  local m = ev.metrics(stats)
  return { task = "semantic", aAcc = m.aAcc, mIoU = m.mIoU, mAcc = m.mAcc, IoU = m.IoU, Acc = m.Acc,
           classes = class_names, pixels = m.pixels,
           confusion = { k = stats.k, entries = ev.entries(stats) } }
end

local function pct(x)
  if x == nil or x == json.null or x ~= x then return "nan" end
  return ("%.2f"):format(100 * x)
end
M.pct = pct

-- The Markdown summary of a metrics record.
function M.summary_text(rec)
  local lines = {}
  local sel = rec.selection or {}
  local what = ("%s on %s (%s), %d images"):format(rec.method or rec.recipe or "?", rec.title or rec.dataset or "?",
    rec.dataset or "?", rec.images or 0)
  if sel.shard and sel.shard ~= json.null then what = what .. (", shard %d/%d"):format(sel.shard[1], sel.shard[2]) end
  if sel.limit and sel.limit ~= json.null then what = what .. (", first %d of %d"):format(sel.limit, sel.total or 0) end
  lines[#lines + 1] = "## " .. what
  lines[#lines + 1] = ""
  if rec.partial then
    lines[#lines + 1] = ("Partial: %d of %d images done when signal %d arrived; rerun the same command to "
      .. "finish (the numbers below cover those images only)."):format(rec.images or 0, sel.images or 0,
      rec.interrupted or 0)
    lines[#lines + 1] = ""
    if rec.protocol == "dataset_clusters" then return table.concat(lines, "\n") .. "\n" end
  end
  if rec.task == "discovery" then
    lines[#lines + 1] = ("CorLoc %s (%d of %d images)"):format(pct(rec.CorLoc), rec.correct, rec.total)
    return table.concat(lines, "\n") .. "\n"
  end
  if rec.task == "interactive" or rec.task == "oneshot" or rec.task == "referring" or rec.task == "fewshot" then
    local mod = ({ interactive = interactive, oneshot = oneshot, referring = referring, fewshot = fewshot })[rec.task]
    for _, l in ipairs(mod.summary_lines(rec)) do lines[#lines + 1] = l end
    return table.concat(lines, "\n") .. "\n"
  end
  if rec.pending then
    lines[#lines + 1] = ("Segments and features of %d images kept; the dataset-level clustering and matching "
      .. "(eval.protocol dataset_clusters) run in `fmseg merge` over all shards."):format(rec.images or 0)
    return table.concat(lines, "\n") .. "\n"
  end
  if rec.protocol == "dataset_clusters" then
    lines[#lines + 1] = ("%d segment boxes clustered over the dataset, clusters matched to classes once "
      .. "(deep-spectral-segmentation's eval.py: IoU 0 for a class absent from both, mIoU over all classes)"):format(
      rec.boxes or 0)
    lines[#lines + 1] = ""
  end
  lines[#lines + 1] = "| Class | IoU | Acc |"
  lines[#lines + 1] = "| --- | ---: | ---: |"
  for c, name in ipairs(rec.classes or {}) do
    lines[#lines + 1] = ("| %s | %s | %s |"):format(name, pct(rec.IoU[c]), pct(rec.Acc[c]))
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = ("aAcc %s  mIoU %s  mAcc %s"):format(pct(rec.aAcc), pct(rec.mIoU), pct(rec.mAcc))
  local sw = rec.sweep
  if sw and sw ~= json.null then
    lines[#lines + 1] = ""
    lines[#lines + 1] = ("Sweep of %s (the labels above use the config's value):"):format(sw.param)
    lines[#lines + 1] = ""
    lines[#lines + 1] = ("| %s | mIoU |"):format(sw.param)
    lines[#lines + 1] = "| ---: | ---: |"
    for j, v in ipairs(sw.values) do
      lines[#lines + 1] = ("| %s | %s |"):format(tostring(v), pct(sw.mIoU[j]))
    end
    lines[#lines + 1] = ""
    if sw.best ~= nil and sw.best ~= json.null then
      lines[#lines + 1] = ("Best %s %s: mIoU %s"):format(sw.param, tostring(sw.best), pct(sw.best_mIoU))
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

local function write_metrics(dir, name, rec)
  write_json(dir .. "/" .. name .. ".json", rec)
  fs.write_atomic(dir .. "/" .. name .. ".md", M.summary_text(rec))
  if rec.task == "interactive" and #rec.mIoU_per_click > 0 then
    local base = dir .. "/" .. name:gsub("^metrics", "miou_per_click")
    fs.write_atomic(base .. ".csv", interactive.curve_csv(rec))
    local values = {}
    for k, v in ipairs(rec.mIoU_per_click) do values[k] = 100 * v end
    fs.atomically(base .. ".png", function(tmp)
      image.save_png(tmp, viz.line_chart({ { name = rec.method or rec.recipe or "?", values = values } },
        { title = ("mIoU (%%) per click, %s"):format(rec.title or rec.dataset or "?"), xlabel = "clicks" }))
    end)
  end
end

-- One process per run directory and shard (shards may share a directory):
-- a second one would write the same records. The lock goes with the process.
local function lock_run(dir, shard)
  local path = ("%s/%s.lock"):format(dir, (metrics_name(shard):gsub("^metrics", "run")))
  local lock, holder = fs.lock(path)
  if not lock then
    local which = shard and (" shard " .. shard.i .. "/" .. shard.n) or ""
    error(("eval: %s%s is being evaluated by another process (pid %s, lock %s); wait for it, "
      .. "or give this one its own shard or -o RUN_DIR"):format(dir, which, tostring(holder or "?"), path), 0)
  end
  return lock
end

-- The records already written for the selected items; a record that cannot
-- be read (a crash mid-write outside our atomic writes, a disk fault) is
-- reported and computed again, never skipped.
local function finished_records(dir, ds, selected, quiet)
  local records, pending = {}, {}
  for _, i in ipairs(selected) do
    local path = item_path(dir, ds.items[i].id)
    local rec, err = read_json(path)
    if rec and type(rec) == "table" and rec.id == ds.items[i].id then
      records[i] = rec
    else
      if (rec or err) and not quiet then
        io.stderr:write(("eval: %s is not a whole record (%s): computing it again\n"):format(path,
          err and tostring(err) or ("its id is not " .. ds.items[i].id)))
      end
      pending[#pending + 1] = i
    end
  end
  return records, pending
end

-- ---- fmseg eval ----------------------------------------------------------------------------

local function stem(path) return (path:match("([^/]+)$") or path):gsub("%.ya?ml$", "") end

-- opts: config (path), sets, data (root), limit, shard ({i, n}), out, quiet
-- Returns the metrics record.
function M.evaluate(opts)
  local cfg = config.load(opts.config, opts.sets)
  if opts.data then config.set(cfg, "data.root", opts.data) end
  local ds = data.open(cfg)
  local dir = opts.out or ("runs/" .. stem(opts.config))
  mkdir_p(dir)
  local lock = lock_run(dir, opts.shard)
  local ok, rec = pcall(function()
    M.prepare(dir, cfg, opts.config, ds)
    return M.evaluate_locked(opts, cfg, ds, dir, M.protocol(cfg, ds), M.select(#ds.items, opts.limit, opts.shard))
  end)
  lock.release()
  if not ok then error(rec, 0) end
  return rec
end

-- An interactive dataset needs an interactive recipe (embed / predict from
-- clicks), and such a recipe an interactive dataset: refused before any image.
function M.check_interactive(ds, recipe)
  if ds.task == "referring" and not recipe.referring then
    error(("eval: %s is a referring dataset (data.task: referring) and recipe %s reads no expressions; use one "
      .. "that does (referring = true: it gets each sentence as source.expression)"):format(ds.name, recipe.name), 0)
  end
  if recipe.referring and ds.task ~= "referring" then
    error(("eval: recipe %s segments what an expression names; %s is not a referring dataset (data.task: "
      .. "referring)"):format(recipe.name, ds.name), 0)
  end
  if ds.task == "oneshot" and not recipe.oneshot then
    error(("eval: %s is a one-shot dataset (data.task: oneshot) and recipe %s takes no reference; use one "
      .. "that does (persam, persam_f)"):format(ds.name, recipe.name), 0)
  end
  if ds.task == "fewshot" and not recipe.oneshot then
    error(("eval: %s is a few-shot dataset (data.task: fewshot) and recipe %s takes no reference; use one "
      .. "that does (matcher, persam, persam_f)"):format(ds.name, recipe.name), 0)
  end
  if ds.task == "interactive" and not recipe.interactive then
    error(("eval: %s is an interactive dataset (data.task: interactive) and recipe %s segments without clicks; "
      .. "use an interactive recipe (sam_clicks)"):format(ds.name, recipe.name), 0)
  end
  if ds.task ~= "interactive" and recipe.interactive then
    error(("eval: recipe %s segments from clicks; %s is a %s dataset (data.task: interactive is needed)"):format(
      recipe.name, ds.name, ds.task), 0)
  end
end

-- One object of an interactive dataset: its record (clicks, IoUs) and last
-- mask, or, when its image or mask cannot be used, a record saying why
-- (reported on stderr; the run goes on).
function M.score_interactive(ds, i, session, quiet)
  local ok, rec, mask = pcall(interactive.score_item, ds, i, session.recipe, session.state, ds.interactive)
  if ok then return rec, mask end
  if type(rec) == "table" and rec.data_error then
    if not quiet then io.stderr:write(("\neval: skipping %s: %s\n"):format(ds.items[i].id, rec.data_error)) end
    return { id = ds.items[i].id, skipped = rec.data_error }
  end
  error(rec, 0)
end

-- The image and mask of item i through load() (→ img, mask), checked to
-- have one size (`what` names the mask in the message); or, when they
-- cannot be used, nil and the reason (reported on stderr: the run goes on).
local function image_and_mask(item, quiet, what, load)
  local ok, img, gt = pcall(function()
    local im, m = load()
    if m:size(1) ~= im:size(1) or m:size(2) ~= im:size(2) then
      error(("%s is %dx%d, the image %s %dx%d"):format(what, m:size(2), m:size(1), item.image or "?",
        im:size(2), im:size(1)), 0)
    end
    return im, m
  end)
  if ok then return img, gt end
  if not quiet then io.stderr:write(("\neval: skipping %s: %s\n"):format(item.id, tostring(img))) end
  return nil, tostring(img)
end

-- One item of a one-shot dataset: its class's reference set when it is not
-- the one in place, the image segmented and its mask counted against the
-- annotation → record, the predicted mask. An item whose image, mask or
-- reference cannot be used is recorded as skipped, with the reason.
function M.score_oneshot(ds, i, session, quiet)
  local item, state = ds.items[i], session.state
  local img, gt = image_and_mask(item, quiet, item.annotation, function()
    local key = item.reference.image .. "\0" .. item.reference.mask
    if state.oneshot_reference ~= key then
      state.oneshot_reference = nil
      session.recipe.set_reference(state, item.reference.image, item.reference.mask)
      state.oneshot_reference = key
    end
    return ds:image(i), ds:mask(i)
  end)
  if not img then return { id = item.id, class = item.class, skipped = gt } end
  local result = session:segment(img, { path = item.image, stem = item.id })
  local pred = oneshot.prediction(result, img:size(1), img:size(2))
  local inter, union, target = oneshot.counts(pred, gt)
  return { id = item.id, class = item.class, intersection = inter, union = union, target = target }, pred
end

-- One expression of a referring dataset: the image segmented with the
-- sentence (source.expression) and the mask counted against the ref's →
-- record, the predicted mask; an item whose image or mask cannot be used
-- is recorded as skipped, with the reason.
function M.score_referring(ds, i, session, quiet)
  local item = ds.items[i]
  local img, gt = image_and_mask(item, quiet, item.where .. ": the mask (instances.json)", function()
    return ds:image(i), ds:mask(i)
  end)
  if not img then return { id = item.id, skipped = gt } end
  local result = session:segment(img, { path = item.image, stem = item.id, expression = item.expression,
                                         raw = item.raw })
  local pred = oneshot.prediction(result, img:size(1), img:size(2))
  local inter, union = oneshot.counts(pred, gt)
  return { id = item.id, ref_id = item.ref_id, expression = item.expression, intersection = inter, union = union },
         pred
end

-- evaluate() once the run is locked: the pending items, then the metrics.
-- SIGINT / SIGTERM stop it after the image in flight with a partial summary
-- (metrics*.partial.json) and rec.interrupted = the signal.
function M.evaluate_locked(opts, cfg, ds, dir, proto, selected)
  local clusters = proto.name == "dataset_clusters"
  if ds.task == "interactive" then ds.interactive = interactive.options(config.get(cfg, "eval")) end
  local records, pending = finished_records(dir, ds, selected, opts.quiet)

  local label = "eval " .. ds.name
  local t0 = now()
  local interrupted
  local recipe_name = require("fmseg.method.recipes").name_of(config.get(cfg, "recipe", "?"))
  if #pending > 0 then
    local session = require("fmseg.method.segment").session(cfg)
    recipe_name = session.recipe.name
    M.check_interactive(ds, session.recipe)
    local palette = viz.voc_palette(256)
    core.C.fm_interrupt_catch(1)
    for n, i in ipairs(pending) do
      local item = ds.items[i]
      local ok, err = pcall(function()
        local t_img = now()
        local rec, stored
        if ds.task == "interactive" then
          rec, stored = M.score_interactive(ds, i, session, opts.quiet)   -- stored: the last mask
        elseif ds.task == "oneshot" then
          rec, stored = M.score_oneshot(ds, i, session, opts.quiet)
        elseif ds.task == "fewshot" then
          rec, stored = fewshot.score(ds, i, session, opts.quiet)
        elseif ds.task == "referring" then
          rec, stored = M.score_referring(ds, i, session, opts.quiet)
        else
          local img = ds:image(i)
          local result = session:segment(img, { path = item.image, stem = item.id })
          if clusters then
            rec = M.score_segment_features(ds, i, img, result, recipe_name, dir)
          else
            rec, stored = M.score(ds, i, img, result, recipe_name)
          end
        end
        rec.seconds = now() - t_img
        if stored then
          local wide = ds.task == "semantic" and M.wide_labels(ds.num_classes, ds.ignore_index)
          local png = pred_path(dir, item.id, wide)
          mkdir_p(dirname(png))
          save_pred(png, stored, palette, wide)
        end
        local path = item_path(dir, item.id)
        mkdir_p(dirname(path))
        write_json(path, rec, true)
        records[i] = rec
      end)
      if not ok then
        core.C.fm_interrupt_catch(0)
        io.stderr:write("\n")
        error(("eval: image %s (%s): %s\n(the %d images done so far are kept in %s; rerun to resume)"):format(
          item.id, item.image, tostring(err), #selected - #pending + n - 1, dir), 0)
      end
      if not opts.quiet then progress(label, #selected - #pending + n, #selected, n, now() - t0) end
      local sig = core.C.fm_interrupt_pending()
      if sig ~= 0 then
        interrupted = sig
        if n < #pending then break end
      end
    end
    core.C.fm_interrupt_catch(0)
    if not opts.quiet then io.stderr:write("\n") end
  end

  local list = {}
  for _, i in ipairs(selected) do list[#list + 1] = records[i] end
  if #list < #selected then return M.partial(opts, cfg, ds, dir, list, #selected, interrupted, clusters) end
  local rec
  if clusters and opts.shard then
    -- pass 2 needs every image: `fmseg merge` runs it over the shards
    local ids = {}
    for _, r in ipairs(list) do ids[#ids + 1] = r.id end
    rec = { task = "semantic", protocol = "dataset_clusters", pending = "fmseg merge", items = ids,
            classes = ds.class_names, num_classes = ds.num_classes,
            eval = { clusters = proto.clusters, pca = proto.pca, seed = proto.seed, batch_size = proto.batch_size,
                     max_iter = proto.max_iter, pca_solver = proto.pca_solver, pca_seed = proto.pca_seed } }
  elseif clusters then
    local items = {}
    for _, r in ipairs(list) do items[#items + 1] = { rec = r, dir = dir } end
    rec = M.cluster_pass(items, ds.num_classes, ds.class_names, proto, dir)
  else
    rec = totals(ds, list)
  end
  local seconds = 0
  for _, r in ipairs(list) do seconds = seconds + (tonumber(r.seconds) or 0) end
  rec.fmseg_version = require("fmseg").version()
  rec.config_file = opts.config
  rec.recipe = recipe_name
  rec.method = config.get(cfg, "method") or recipe_name
  rec.dataset, rec.title = ds.name, ds.title
  rec.images = #list
  rec.seconds = seconds
  rec.selection = { limit = opts.limit or json.null, total = #ds.items, images = #selected,
                    shard = opts.shard and { opts.shard.i, opts.shard.n } or json.null }
  write_metrics(dir, metrics_name(opts.shard), rec)
  for _, ext in ipairs({ ".json", ".md" }) do os.remove(dir .. "/" .. metrics_name(opts.shard) .. ".partial" .. ext) end
  rec.dir = dir
  rec.interrupted = interrupted   -- a signal during the last image: all done, still reported
  return rec
end

-- The summary of the images finished before a signal: written beside the
-- records as metrics[.shard-I-of-N].partial.json / .md (the whole run's
-- metrics files are written only when every image is done).
function M.partial(opts, cfg, ds, dir, list, selected, sig, clusters)
  local rec = clusters and { task = "semantic", protocol = "dataset_clusters" } or totals(ds, list)
  rec.partial = true
  rec.interrupted = sig
  rec.images = #list
  rec.selection = { limit = opts.limit or json.null, total = #ds.items, images = selected,
                    shard = opts.shard and { opts.shard.i, opts.shard.n } or json.null }
  rec.recipe = require("fmseg.method.recipes").name_of(config.get(cfg, "recipe", "?"))
  rec.method = config.get(cfg, "method") or rec.recipe
  rec.dataset, rec.title = ds.name, ds.title
  rec.fmseg_version = require("fmseg").version()
  write_metrics(dir, metrics_name(opts.shard) .. ".partial", rec)
  rec.dir = dir
  return rec
end

-- ---- fmseg merge -----------------------------------------------------------------------------

local function list_dir(dir)
  local names = {}
  local p = io.popen("ls -1 " .. quote(dir) .. " 2>/dev/null")
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  return names
end

-- Every shard metrics file in the given directories.
local function shard_files(dirs)
  local found = {}
  for _, dir in ipairs(dirs) do
    local any = false
    for _, name in ipairs(list_dir(dir)) do
      local i, n = name:match("^metrics%.shard%-(%d+)%-of%-(%d+)%.json$")
      if i then
        found[#found + 1] = { dir = dir, path = dir .. "/" .. name, i = tonumber(i), n = tonumber(n) }
        any = true
      end
    end
    if not any then
      if not exists(dir .. "/config.yaml") then
        error(("merge: %s is not a run directory (no config.yaml)"):format(dir), 0)
      end
      error(("merge: %s holds no finished shard (no metrics.shard-I-of-N.json): rerun its "
        .. "`fmseg eval ... --shard I/N` to finish it"):format(dir), 0)
    end
  end
  return found
end

-- dirs: run directories holding shards; out: where the merged metrics go.
function M.merge(dirs, out)
  if #dirs == 0 then error("merge: no run directories given", 0) end
  if not out then
    if #dirs > 1 then error("merge: several directories: say where the merged run goes with -o DIR", 0) end
    out = dirs[1]
  end
  local files = shard_files(dirs)
  local first_cfg = config.load(files[1].dir .. "/config.yaml")
  local n, by_index = files[1].n, {}
  local recs = {}
  for _, f in ipairs(files) do
    if f.n ~= n then
      error(("merge: %s is shard %d of %d but %s is of %d"):format(f.path, f.i, f.n, files[1].path, n), 0)
    end
    if by_index[f.i] then
      error(("merge: shard %d/%d appears twice: %s and %s"):format(f.i, n, by_index[f.i].path, f.path), 0)
    end
    by_index[f.i] = f
    if f.dir ~= files[1].dir then check_same(f.dir, first_cfg) end
    local rec, err = read_json(f.path)
    if not rec then error(("merge: %s: %s"):format(f.path, tostring(err or "unreadable")), 0) end
    recs[#recs + 1] = rec
  end
  local missing = {}
  for i = 1, n do if not by_index[i] then missing[#missing + 1] = tostring(i) end end
  if #missing > 0 then
    error(("merge: shards %s of %d are missing or unfinished: run `fmseg eval CONFIG --shard I/%d` for each "
      .. "(it resumes where it stopped), then merge again"):format(table.concat(missing, ", "), n, n), 0)
  end
  local base = recs[1]
  local images = 0
  for k, r in ipairs(recs) do
    if r.task ~= base.task or r.dataset ~= base.dataset then
      error(("merge: %s scores %s, %s scores %s"):format(files[k].path, tostring(r.dataset), files[1].path,
        tostring(base.dataset)), 0)
    end
    if r.selection.limit ~= base.selection.limit then
      error(("merge: shards were run with different --limit (%s: %s, %s: %s)"):format(files[k].path,
        tostring(r.selection.limit), files[1].path, tostring(base.selection.limit)), 0)
    end
    images = images + r.images
  end
  local merged
  if base.protocol == "dataset_clusters" then
    local items = {}
    for k, r in ipairs(recs) do
      for _, id in ipairs(r.items or {}) do
        local ir, err = read_json(item_path(files[k].dir, id))
        if not ir then
          error(("merge: %s: %s"):format(item_path(files[k].dir, id), tostring(err or "missing")), 0)
        end
        items[#items + 1] = { rec = ir, dir = files[k].dir }
      end
    end
    mkdir_p(out)
    local e = base.eval
    merged = M.cluster_pass(items, base.num_classes, base.classes,
      { clusters = e.clusters, pca = e.pca, seed = e.seed, batch_size = e.batch_size, max_iter = e.max_iter,
        pca_solver = e.pca_solver, pca_seed = e.pca_seed }, out)
  elseif base.task == "interactive" then
    merged = interactive.merge(recs)
  elseif base.task == "oneshot" then
    merged = oneshot.merge(recs)
  elseif base.task == "fewshot" then
    merged = fewshot.merge(recs)
  elseif base.task == "referring" then
    merged = referring.merge(recs)
  elseif base.task == "discovery" then
    local correct, total = 0, 0
    for _, r in ipairs(recs) do correct, total = correct + r.correct, total + r.total end
    merged = { task = "discovery", correct = correct, total = total, CorLoc = total > 0 and correct / total or 0 / 0 }
  else
    local stats = ev.stats(base.confusion.k)
    for _, r in ipairs(recs) do ev.add(stats, r.confusion.entries) end
    merged = M.semantic_record(stats, base.classes)
    if base.sweep and base.sweep ~= json.null then
      -- the shards' sweeps, value by value
      local per = {}
      for j = 1, #base.sweep.values do
        per[j] = ev.stats(base.confusion.k)
        for _, r in ipairs(recs) do ev.add(per[j], r.sweep.confusion[j]) end
      end
      merged.sweep = M.sweep_from_stats(base.sweep, per)
    end
  end
  local seconds = 0
  for _, r in ipairs(recs) do seconds = seconds + (tonumber(r.seconds) or 0) end
  for _, key in ipairs({ "fmseg_version", "config_file", "recipe", "method", "dataset", "title" }) do
    merged[key] = base[key]
  end
  merged.images, merged.seconds = images, seconds
  local limit = base.selection.limit
  local expected = (limit ~= json.null and limit) and math.min(limit, base.selection.total) or base.selection.total
  if images ~= expected then
    error(("merge: the shards hold %d images, the selection has %d"):format(images, expected), 0)
  end
  merged.selection = { limit = limit, total = base.selection.total, images = images, shard = json.null }
  local sources = {}
  for i = 1, n do sources[i] = by_index[i].path end
  merged.merged_from = sources
  mkdir_p(out)
  if not exists(out .. "/config.yaml") then
    fs.write_atomic(out .. "/config.yaml", read_file(files[1].dir .. "/config.yaml"))
    fs.write_atomic(out .. "/run.json", read_file(files[1].dir .. "/run.json") or "{}\n")
  else
    check_same(out, first_cfg)
  end
  write_metrics(out, "metrics", merged)
  merged.dir = out
  return merged
end

M.read_json = read_json
M.exists = exists

return M
