-- fmseg.runs — evaluation runs that never lose work, and their merging.
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
-- Shards: --shard I/N (1-based I) takes the images at positions I, I + N,
-- I + 2N, ... of the split (after --limit). Shards may share a run
-- directory (items have distinct ids; each writes its own metrics file) or
-- use their own; `fmseg merge` sums their counts into what one run gives.
local config = require("fmseg.config")
local core = require("fmseg.core")
local fs = require("fmseg.fs")
local data = require("fmseg.data")
local ev = require("fmseg.eval")
local json = require("fmseg.json")
local T = require("fmseg.tensor")
local viz = require("fmseg.viz")
local ffi = core.ffi

local M = {}

pcall(ffi.cdef, "int getpid(void);")

local quote, exists = fs.quote, fs.exists

-- made once per process: an evaluation asks for the same folders per image
local made = {}
local function mkdir_p(dir)
  if made[dir] then return end
  fs.mkdir_p(dir)
  made[dir] = true
end

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end

-- A temporary name no other process writes: shards may share a directory.
local function tmp_name(path)
  return ("%s.tmp%d"):format(path, tonumber(ffi.C.getpid()))
end

local function rename(tmp, path)
  local ok, err = os.rename(tmp, path)
  if not ok then error(("cannot write %s: %s"):format(path, tostring(err)), 0) end
end

function M.write_atomic(path, text)
  local tmp = tmp_name(path)
  local f, err = io.open(tmp, "wb")
  if not f then error(("cannot write %s: %s"):format(path, tostring(err)), 0) end
  local ok, werr = f:write(text)
  f:close()
  if not ok then os.remove(tmp); error(("cannot write %s: %s"):format(path, tostring(werr)), 0) end
  rename(tmp, path)
end

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
  M.write_atomic(path, json.encode(v, { indent = not compact and 1 or nil, nan = "null" }) .. "\n")
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
    M.write_atomic(dir .. "/config.yaml", config.dump(cfg))
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
  local entries, stored
  local ok, err = pcall(function()
    if result.kind == "segments" then
      local class_of
      entries, class_of = ev.match_segments(result.labels, gt, k, ignore)
      stored = ev.relabel_segments(result.labels, class_of, ignore)
    else
      stored = result.kind == "instances" and paint_instances(result, h, w, ds) or as_int(result.labels)
      entries = ev.image_entries(stored, gt, k, ignore)
    end
  end)
  if not ok then
    err = tostring(err)
    if err:find("gt value", 1, true) then
      error(("%s: %s (a label the %d-class dataset %s does not have: check data.reduce_zero_label, "
        .. "data.num_classes and the annotation files)"):format(item.annotation, err, k, ds.name), 0)
    end
    error(("recipe %s: %s"):format(recipe_name, err), 0)
  end
  return { id = item.id, kind = result.kind, height = h, width = w, entries = entries }, stored
end

-- ---- progress ------------------------------------------------------------------------

local function clock_time(s)
  s = math.floor(s + 0.5)
  if s >= 3600 then return ("%d:%02d:%02d"):format(s / 3600, (s % 3600) / 60, s % 60) end
  return ("%d:%02d"):format(s / 60, s % 60)
end

-- Wall-clock seconds (CLOCK_MONOTONIC); whole seconds if that is unavailable.
pcall(ffi.cdef, "typedef struct { int64_t tv_sec, tv_nsec; } fmseg_runs_timespec;")
local have_clock = pcall(ffi.cdef, "int clock_gettime(int clk, void *ts);")
local ts = ffi.new("fmseg_runs_timespec")
local function now()
  if have_clock and ffi.C.clock_gettime(1, ts) == 0 then
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
  end
  return os.time()
end
M.now = now

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
  if ds.task == "discovery" then
    local correct = 0
    for _, r in ipairs(records) do if r.correct then correct = correct + 1 end end
    return { task = "discovery", correct = correct, total = #records,
             CorLoc = #records > 0 and correct / #records or 0 / 0 }
  end
  local stats = ev.stats(ds.num_classes)
  for _, r in ipairs(records) do ev.add(stats, r.entries) end
  return M.semantic_record(stats, ds.class_names)
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
  if rec.task == "discovery" then
    lines[#lines + 1] = ("CorLoc %s (%d of %d images)"):format(pct(rec.CorLoc), rec.correct, rec.total)
    return table.concat(lines, "\n") .. "\n"
  end
  lines[#lines + 1] = "| Class | IoU | Acc |"
  lines[#lines + 1] = "| --- | ---: | ---: |"
  for c, name in ipairs(rec.classes or {}) do
    lines[#lines + 1] = ("| %s | %s | %s |"):format(name, pct(rec.IoU[c]), pct(rec.Acc[c]))
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = ("aAcc %s  mIoU %s  mAcc %s"):format(pct(rec.aAcc), pct(rec.mIoU), pct(rec.mAcc))
  return table.concat(lines, "\n") .. "\n"
end

local function write_metrics(dir, name, rec)
  write_json(dir .. "/" .. name .. ".json", rec)
  M.write_atomic(dir .. "/" .. name .. ".md", M.summary_text(rec))
end

-- ---- fmseg eval ----------------------------------------------------------------------------

local function item_path(dir, id) return dir .. "/items/" .. id .. ".json" end
local function pred_path(dir, id) return dir .. "/pred/" .. id .. ".png" end

local function stem(path) return (path:match("([^/]+)$") or path):gsub("%.ya?ml$", "") end

-- opts: config (path), sets, data (root), limit, shard ({i, n}), out, quiet
-- Returns the metrics record.
function M.evaluate(opts)
  local cfg = config.load(opts.config, opts.sets)
  if opts.data then config.set(cfg, "data.root", opts.data) end
  local ds = data.open(cfg)
  local dir = opts.out or ("runs/" .. stem(opts.config))
  M.prepare(dir, cfg, opts.config, ds)

  local selected = M.select(#ds.items, opts.limit, opts.shard)
  local records, pending = {}, {}
  for _, i in ipairs(selected) do
    local rec = read_json(item_path(dir, ds.items[i].id))
    if rec and rec.id == ds.items[i].id then records[i] = rec else pending[#pending + 1] = i end
  end

  local label = "eval " .. ds.name
  local t0 = now()
  local recipe_name = config.get(cfg, "recipe", "?")
  if #pending > 0 then
    local session = require("fmseg.segment").session(cfg)
    recipe_name = session.recipe.name
    local palette = viz.voc_palette(256)
    for n, i in ipairs(pending) do
      local item = ds.items[i]
      local ok, err = pcall(function()
        local t_img = now()
        local img = ds:image(i)
        local result = session:segment(img, { path = item.image, stem = item.id })
        local rec, stored = M.score(ds, i, img, result, recipe_name)
        rec.seconds = now() - t_img
        if stored then
          local png = pred_path(dir, item.id)
          mkdir_p(dirname(png))
          local tmp = tmp_name(png)
          viz.save_labels(tmp, stored, palette)
          rename(tmp, png)
        end
        local path = item_path(dir, item.id)
        mkdir_p(dirname(path))
        write_json(path, rec, true)
        records[i] = rec
      end)
      if not ok then
        io.stderr:write("\n")
        error(("eval: image %s (%s): %s\n(the %d images done so far are kept in %s; rerun to resume)"):format(
          item.id, item.image, tostring(err), #selected - #pending + n - 1, dir), 0)
      end
      if not opts.quiet then progress(label, #selected - #pending + n, #selected, n, now() - t0) end
    end
    if not opts.quiet then io.stderr:write("\n") end
  end

  local list = {}
  for _, i in ipairs(selected) do list[#list + 1] = records[i] end
  local rec = totals(ds, list)
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
  if base.task == "discovery" then
    local correct, total = 0, 0
    for _, r in ipairs(recs) do correct, total = correct + r.correct, total + r.total end
    merged = { task = "discovery", correct = correct, total = total, CorLoc = total > 0 and correct / total or 0 / 0 }
  else
    local stats = ev.stats(base.confusion.k)
    for _, r in ipairs(recs) do ev.add(stats, r.confusion.entries) end
    merged = M.semantic_record(stats, base.classes)
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
    M.write_atomic(out .. "/config.yaml", read_file(files[1].dir .. "/config.yaml"))
    M.write_atomic(out .. "/run.json", read_file(files[1].dir .. "/run.json") or "{}\n")
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
