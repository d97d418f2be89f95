-- fmseg.eval.prepare — dataset conversion without Python: what
-- mmsegmentation's tools/dataset_converters (and SCLIP's COCO-Object
-- script, and the detectron2-style scripts of ADE20K-Full and PASCAL
-- Context-459) write, from the archives as they unpack, so that
-- `fmseg eval CONFIG --data ROOT` reads the result directly.
--
--   local prepare = require("fmseg.eval.prepare")
--   local summary = prepare.run("coco_object", "data/coco_stuff164k", { root = nil })
--
-- M.DATASETS holds one entry per dataset. Most conversions map the values
-- of a label PNG through a table (COCO-Stuff, COCO-Object, Cityscapes):
-- such an entry is only data for M.remap —
--
--   name = {
--     definitions = { "coco_stuff164k" },      -- configs/_base_/datasets/<name>.yaml that read it
--     summary = "...",                         -- one line for the help
--     sources = { "annotations/val2017", ... },-- folders under RAW_DIR, scanned recursively
--     source_suffix = ".png", exclude = "TrainIds",   -- plain substring of names to skip
--     target = function(base) return ... end,  -- output file name from the source's
--     lut = { [raw] = value },                 -- 0..255; others kept (unmapped = "keep")
--     unmapped = "keep" | "error",             -- or reported as malformed
--     link = { "images" },                     -- folders linked into ROOT when ROOT ~= RAW_DIR
--     layout = "...",                          -- what RAW_DIR must hold, for the errors
--   }
--
-- — while one that builds masks from other annotations gives `convert =
-- function(job)` or `module` (see prepare_context.lua, prepare_context459.lua,
-- prepare_ade847.lua). Every output is written through
-- a temporary file and a rename (fs.atomically) and skipped when already
-- there, so an interrupted run resumes; problems with single entries are
-- reported by file and entry, the rest is converted, and the run ends with
-- a summary (the command exits 1 when anything was malformed).
local fs = require("fmseg.io.fs")
local data = require("fmseg.eval.data")
local image = require("fmseg.image")

local M = {}

-- ---- paths -----------------------------------------------------------------------

local function join(a, b) return (a:gsub("/+$", "")) .. "/" .. b end
M.join = join

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end
M.dirname = dirname

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local p = io.popen("pwd")
  local cwd = p:read("*l")
  p:close()
  return join(cwd, path)
end

-- Every file under dir (recursive, links followed) whose name ends in
-- suffix, as paths relative to dir, sorted.
function M.scan(dir, suffix)
  local p = io.popen(("find -L %s -type f -name %s 2>/dev/null"):format(fs.quote(dir), fs.quote("*" .. suffix)))
  local out, prefix = {}, dir:gsub("/+$", "") .. "/"
  for line in p:lines() do out[#out + 1] = line:sub(#prefix + 1) end
  p:close()
  table.sort(out)
  return out
end

-- ---- progress and the job loop ---------------------------------------------------

local now = fs.now

-- "\rprepare coco_object  37/5000  812.4 files/s" at most every 0.25 s,
-- and once at the end with a newline.
local function progress(label, total, quiet)
  local t0, last = now(), -1
  return function(done, worked, final)
    if quiet then return end
    local t = now()
    if not final and t - last < 0.25 then return end
    last = t
    local rate = t > t0 and worked / (t - t0) or 0
    io.stderr:write(("\rprepare %s  %d/%d  %.1f files/s  "):format(label, done, total, rate))
    if final then io.stderr:write("\n") end
    io.stderr:flush()
  end
end

-- A job's problems are collected and reported as they happen.
function M.reporter(label, quiet)
  local r = { problems = {} }
  function r.problem(msg)
    r.problems[#r.problems + 1] = msg
    if not quiet then io.stderr:write(("\nprepare %s: %s\n"):format(label, msg)) end
  end
  return r
end

-- jobs: { target = path, source = what to name on failure, write = function(tmp) }.
-- Existing targets are skipped; a failing job is reported and the others go on.
-- Returns counts { total, written, skipped, failed }.
function M.run_jobs(label, jobs, rep, quiet)
  local counts = { total = #jobs, written = 0, skipped = 0, failed = 0 }
  local tick, made = progress(label, #jobs, quiet), {}
  for i, job in ipairs(jobs) do
    if fs.exists(job.target) then
      counts.skipped = counts.skipped + 1
    else
      local dir = dirname(job.target)
      if not made[dir] then
        fs.mkdir_p(dir)
        made[dir] = true
      end
      local ok, err = pcall(fs.atomically, job.target, job.write)
      if ok then
        counts.written = counts.written + 1
      else
        counts.failed = counts.failed + 1
        rep.problem(("%s: %s"):format(job.source or job.target, tostring(err)))
      end
    end
    tick(i, counts.written + counts.failed, false)
  end
  tick(#jobs, counts.written + counts.failed, true)
  return counts
end

-- (H, W) labels of any integer type -> an 8-bit grey PNG at path (what PIL
-- writes for a uint8 array: mode L)
function M.save_grey(path, labels)
  local h, w = labels:size(1), labels:size(2)
  image.save_png(path, labels:byte():contiguous():reshape(h, w, 1))
end

-- ---- the remap converter ----------------------------------------------------------

-- lut {[v] = value} for 0..255 -> the full 0..255 table of data.remap
-- (unlisted values kept, or -1: "no mapping", when unmapped == "error")
local function full_lut(entry)
  local lut = {}
  for v = 0, 255 do
    local m = entry.lut[v]
    if m == nil then m = entry.unmapped == "error" and -1 or v end
    lut[v] = m
  end
  return lut
end

function M.remap(job)
  local entry, raw, root = job.entry, job.raw, job.root
  local present = {}
  for _, dir in ipairs(entry.sources) do
    if fs.is_dir(join(raw, dir)) then present[#present + 1] = dir end
  end
  if #present == 0 then
    error(("prepare %s: none of %s found under %s (expected %s)"):format(job.name,
      table.concat(entry.sources, ", "), raw, entry.layout), 0)
  end
  local lut, jobs = full_lut(entry), {}
  for _, dir in ipairs(present) do
    for _, rel in ipairs(M.scan(join(raw, dir), entry.source_suffix)) do
      local base = rel:match("[^/]*$")
      if not (entry.exclude and base:find(entry.exclude, 1, true)) then
        local src = join(join(raw, dir), rel)
        local target = join(join(root, dir), dirname(rel) == "." and entry.target(base)
          or join(dirname(rel), entry.target(base)))
        jobs[#jobs + 1] = { source = src, target = target, write = function(tmp)
          local lab = image.load_indices(src)
          local ok, out = pcall(data.remap, lab, lut)
          if not ok then error(tostring(out):gsub("^labels_remap: ", ""), 0) end
          M.save_grey(tmp, out)
        end }
      end
    end
  end
  if #jobs == 0 then
    error(("prepare %s: no *%s files under %s (expected %s)"):format(job.name, entry.source_suffix,
      table.concat(present, ", "), entry.layout), 0)
  end
  local counts = M.run_jobs(job.name, jobs, job.rep, job.quiet)
  counts.what = ("%s under %s"):format(entry.output, table.concat(present, ", "))
  return { counts }
end

-- ---- the datasets -------------------------------------------------------------------

-- COCO-Stuff 164k's stuffthingmaps hold the 182 COCO ids 0..181 (the 11
-- thing ids COCO dropped never occur) and 255 unlabelled. mmsegmentation's
-- coco_stuff164k.py clsID_to_trID numbers the other 171 in order.
local COCO_UNUSED = { [11] = true, [25] = true, [28] = true, [29] = true, [44] = true, [65] = true,
                      [67] = true, [68] = true, [70] = true, [82] = true, [90] = true }

local function coco_stuff_lut()
  local lut, k = { [255] = 255 }, 0
  for id = 0, 181 do
    if not COCO_UNUSED[id] then
      lut[id] = k
      k = k + 1
    end
  end
  return lut
end

-- SCLIP's datasets/cvt_coco_object.py: the same table shifted by one with
-- every id above 90 (the stuff classes, and 255) set to 0, background.
local function coco_object_lut()
  local lut = {}
  for id, tr in pairs(coco_stuff_lut()) do lut[id] = id > 90 and 0 or tr + 1 end
  return lut
end

-- cityscapesscripts/helpers/labels.py: id -> trainId (255: ignored in
-- evaluation; license plate, id -1, is never drawn)
local CITYSCAPES_TRAIN_IDS = {
  [0] = 255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255,
  5, 255, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18,
}

-- "<id>.png" -> "<id><suffix>", as the converters' basename.split('.')[0]
local function coco_target(suffix)
  return function(base) return base:match("^[^.]*") .. suffix end
end

local COCO_LAYOUT = "annotations/{train2017,val2017}/<id>.png from stuffthingmaps_trainval2017.zip, " ..
  "images/{train2017,val2017}/<id>.jpg from train2017.zip / val2017.zip"

M.DATASETS = {
  context = {
    definitions = { "context60", "context59" },
    summary = "PASCAL Context 59 + background from trainval_merged.json (context60 and context59)",
    module = "fmseg.eval.prepare_context",
    link = { "JPEGImages" },
    layout = "VOCdevkit/VOC2010 of VOCtrainval_03-May-2010.tar: JPEGImages/<id>.jpg, and trainval_merged.json " ..
      "(the Detail API's; elsewhere: --json FILE)",
  },
  context459 = {
    definitions = { "context459" },
    summary = "PASCAL Context 459 classes: annotations_detectron2/pc459_val/<id>.tif (16-bit) from trainval/<id>.mat "
      .. "(detectron2-style prepare_pascal_context.py of ov-seg / CAT-Seg)",
    module = "fmseg.eval.prepare_context459",
    link = { "JPEGImages" },
    layout = "VOCdevkit/VOC2010 of VOCtrainval_03-May-2010.tar: JPEGImages/<id>.jpg, trainval/<id>.mat of " ..
      "trainval.tar.gz, pascalcontext_val.txt (CAT-Seg's datasets/; else ImageSets/SegmentationContext/val.txt)",
  },
  ade847 = {
    definitions = { "ade847" },
    summary = "ADE20K-Full 847 classes: images_detectron2/ and annotations_detectron2/validation/<name>.tif "
      .. "(16-bit; detectron2-style prepare_ade20k_full_sem_seg.py)",
    module = "fmseg.eval.prepare_ade847",
    layout = "ADE20K_2021_17_01 as ADE20K_2021_17_01.zip unpacks: images/ADE/validation/<scene>/ADE_val_<n>.jpg, " ..
      "each with its ADE_val_<n>_seg.png",
  },
  coco_stuff164k = {
    definitions = { "coco_stuff164k" },
    summary = "COCO-Stuff 171 classes: annotations/*/<id>_labelTrainIds.png (mmseg coco_stuff164k.py)",
    sources = { "annotations/train2017", "annotations/val2017" },
    source_suffix = ".png", exclude = "TrainIds",
    target = coco_target("_labelTrainIds.png"), output = "<id>_labelTrainIds.png",
    lut = coco_stuff_lut(), unmapped = "keep",
    link = { "images" }, layout = COCO_LAYOUT,
  },
  coco_object = {
    definitions = { "coco_object" },
    summary = "COCO-Object 80 things + background: annotations/*/<id>_instanceTrainIds.png (SCLIP)",
    sources = { "annotations/train2017", "annotations/val2017" },
    source_suffix = ".png", exclude = "TrainIds",
    target = coco_target("_instanceTrainIds.png"), output = "<id>_instanceTrainIds.png",
    lut = coco_object_lut(), unmapped = "keep",
    link = { "images" }, layout = COCO_LAYOUT,
  },
  cityscapes = {
    definitions = { "cityscapes" },
    summary = "Cityscapes 19 classes: gtFine/*/<city>/*_gtFine_labelTrainIds.png from *_labelIds.png",
    sources = { "gtFine" },
    source_suffix = "_gtFine_labelIds.png",
    target = function(base) return base:gsub("_gtFine_labelIds%.png$", "_gtFine_labelTrainIds.png") end,
    output = "*_gtFine_labelTrainIds.png",
    lut = CITYSCAPES_TRAIN_IDS, unmapped = "error",
    link = { "leftImg8bit" },
    layout = "gtFine/{train,val,test}/<city>/<frame>_gtFine_labelIds.png and leftImg8bit/<split>/<city>/ " ..
      "from gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip",
  },
}
M.ORDER = { "context", "context459", "coco_stuff164k", "coco_object", "cityscapes", "ade847" }
M.coco_stuff_lut, M.coco_object_lut, M.CITYSCAPES_TRAIN_IDS = coco_stuff_lut, coco_object_lut, CITYSCAPES_TRAIN_IDS

-- Folders people need beside the converted labels: linked from RAW_DIR when
-- ROOT is elsewhere, so that --data ROOT finds the images.
local function link_folders(entry, raw, root)
  for _, dir in ipairs(entry.link or {}) do
    local from, to = join(raw, dir), join(root, dir)
    if fs.is_dir(from) and not fs.exists(to) then
      fs.mkdir_p(dirname(to))
      if not os.execute(("ln -s %s %s"):format(fs.quote(absolute(from)), fs.quote(to))) then
        error(("prepare: cannot link %s to %s"):format(to, from), 0)
      end
    end
  end
end

-- name: a key of M.DATASETS; raw: RAW_DIR; opts.root (default raw),
-- opts.json (context), opts.quiet. Returns { name, raw, root, parts =
-- {counts...}, problems = {messages} }.
function M.run(name, raw, opts)
  opts = opts or {}
  local entry = M.DATASETS[name]
  if not entry then
    error(("prepare: unknown dataset '%s' (one of %s)"):format(tostring(name), table.concat(M.ORDER, ", ")), 0)
  end
  if not fs.is_dir(raw) then
    error(("prepare %s: raw folder %s not found (expected %s)"):format(name, raw, entry.layout), 0)
  end
  local root = opts.root or raw
  local rep = M.reporter(name, opts.quiet)
  local job = { name = name, entry = entry, raw = raw, root = root, rep = rep, quiet = opts.quiet, opts = opts }
  local convert = entry.convert or (entry.module and require(entry.module).convert) or M.remap
  local parts = convert(job)
  if root ~= raw then link_folders(entry, raw, root) end
  return { name = name, raw = raw, root = root, parts = parts, problems = rep.problems,
           definitions = entry.definitions }
end

-- The summary people read at the end.
function M.summary_text(s)
  local lines = {}
  for _, c in ipairs(s.parts) do
    lines[#lines + 1] = ("prepare %s: %s: %d files, %d written, %d already there, %d failed"):format(
      s.name, c.what, c.total, c.written, c.skipped, c.failed)
  end
  if #s.problems > 0 then
    lines[#lines + 1] = ("prepare %s: %d problem(s):"):format(s.name, #s.problems)
    for _, p in ipairs(s.problems) do lines[#lines + 1] = "  " .. p end
  end
  local configs = {}
  for i, d in ipairs(s.definitions) do configs[i] = "configs/*/*_" .. d .. ".yaml" end
  lines[#lines + 1] = ("prepare %s: %s; fmseg eval reads it with --data %s (%s)"):format(s.name,
    #s.problems > 0 and "done with problems" or "done", s.root, table.concat(configs, ", "))
  return table.concat(lines, "\n") .. "\n"
end

return M
