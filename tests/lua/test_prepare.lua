-- `fmseg prepare` against the official converters: tests/fixtures/prepare/
-- holds tiny raw datasets in the public layouts and what mmsegmentation's
-- pascal_context.py (with the Detail API), coco_stuff164k.py, SCLIP's
-- cvt_coco_object.py and cityscapesScripts' json2labelImg wrote from them
-- (tests/tools/make_prepare_fixtures.py). Each case runs ./fmseg prepare
-- on a copy of the raw files and compares every output pixel for pixel
-- (split files byte for byte), then checks resuming, the errors for a
-- missing raw folder or file, malformed entries, and that fmseg eval's
-- dataset reader (fmseg.eval.data.open) reads the result.
local tap = require("tap")
local tiny = require("tiny_data")
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local json = require("fmseg.io.json")
local T = require("fmseg.tensor")

local ROOT = core.root
local FMSEG = fs.quote(ROOT .. "/fmseg")
local FIX = ROOT .. "/tests/fixtures/prepare"
local q = fs.quote
local tmp = tiny.tmpdir("prepare")

local run = tiny.run

local function prepare(args) return run(FMSEG .. " prepare " .. args) end

local function files_under(dir)
  local p = io.popen(("cd %s 2>/dev/null && find . -type f | sed 's|^\\./||' | sort"):format(q(dir)))
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

local function copy(from, to)
  tiny.mkdir(to)
  tiny.sh(("cp -r %s/. %s"):format(q(from), q(to)))
end

-- nil when both label PNGs hold the same values at the same size, else why
local function pixel_diff(got_path, want_path)
  local ok, got = pcall(image.load_indices, got_path)
  if not ok then return "cannot read " .. got_path .. ": " .. tostring(got) end
  local want = image.load_indices(want_path)
  local gs, ws = got:shape(), want:shape()
  if gs[1] ~= ws[1] or gs[2] ~= ws[2] then
    return ("%s: size %dx%d, expected %dx%d"):format(got_path, gs[1], gs[2], ws[1], ws[2])
  end
  local gp, wp = got:contiguous():ptr(), want:contiguous():ptr()
  local bad, first = 0, nil
  for i = 0, gs[1] * gs[2] - 1 do
    if gp[i] ~= wp[i] then
      bad = bad + 1
      first = first or ("pixel %d: %d, expected %d"):format(i, gp[i], wp[i])
    end
  end
  if bad > 0 then return ("%s: %d pixels differ, first %s"):format(got_path, bad, first) end
  return nil
end

-- every expected file is there and equal: PNGs by pixel, others by byte
local function compare_tree(got_root, want_root, label)
  local wants, problems = files_under(want_root), {}
  for _, rel in ipairs(wants) do
    local g, w = got_root .. "/" .. rel, want_root .. "/" .. rel
    if not fs.exists(g) then
      problems[#problems + 1] = rel .. " missing"
    elseif rel:match("%.png$") then
      problems[#problems + 1] = pixel_diff(g, w)
    elseif fs.read(g) ~= fs.read(w) then
      problems[#problems + 1] = rel .. " differs byte for byte"
    end
  end
  tap.ok(#wants > 0 and #problems == 0, ("%s: %d files equal to the official converter's"):format(label, #wants),
    table.concat(problems, "\n"))
end

local function count_of(out, pattern) return tonumber(out:match(pattern)) end

local function no_temporaries(dir, label)
  local left = {}
  for _, f in ipairs(files_under(dir)) do
    if f:match("%.tmp%d+$") then left[#left + 1] = f end
  end
  tap.ok(#left == 0, label .. ": no temporary files left", table.concat(left, ", "))
end

local function def(name) return config.load(ROOT .. "/configs/_base_/datasets/" .. name .. ".yaml") end

-- ---- PASCAL Context -----------------------------------------------------------------

do
  local rc, out = prepare("--help")
  local listed = true
  for _, name in ipairs({ "context", "coco_stuff164k", "coco_object", "cityscapes" }) do
    listed = listed and out:find("\n  " .. name .. " ", 1, true) ~= nil
  end
  tap.ok(rc == 0 and listed and out:find("default RAW_DIR", 1, true) and out:find("--data ROOT", 1, true),
    "prepare --help lists the datasets, the default ROOT and how fmseg eval reads it", out)
end

do
  local raw = tmp .. "/context/VOC2010"
  copy(FIX .. "/context/raw/VOC2010", raw)
  local rc, out = prepare(q(raw))
  tap.ok(rc ~= 0 and out:find("no RAW_DIR given", 1, true), "prepare DATASET without RAW_DIR is refused", out)
  rc, out = prepare("context " .. q(raw))
  tap.eq(rc, 0, "prepare context: exit 0")
  tap.ok(out:find("prepare context train  3/3", 1, true) and out:find("prepare context val  3/3", 1, true)
    and out:find("files/s", 1, true), "progress on stderr: count / total and rate", out)
  tap.ok(count_of(out, "%(val, listed in [^)]*%): 3 files, (%d+) written") == 3, "summary: 3 val images written", out)
  compare_tree(raw, FIX .. "/context/expected", "context")
  tap.ok(not fs.exists(raw .. "/SegmentationClassContext/2010_000005.png"), "context: the test-phase image is left out")
  no_temporaries(raw, "context")

  -- resume: nothing redone; a deleted output comes back the same
  rc, out = prepare("context -q " .. q(raw))
  tap.ok(rc == 0 and count_of(out, "%(train[^)]*%): 3 files, (%d+) written") == 0
    and count_of(out, "%(val[^)]*%): 3 files, 0 written, (%d+) already there") == 3,
    "rerun: every output already there, none written", out)
  os.remove(raw .. "/SegmentationClassContext/2008_000003.png")
  rc, out = prepare("context -q " .. q(raw))
  tap.ok(rc == 0 and count_of(out, "%(val[^)]*%): 3 files, (%d+) written, 2 already there") == 1,
    "rerun after deleting one output: that one is written again", out)
  compare_tree(raw, FIX .. "/context/expected", "context after the resume")

  -- fmseg eval's reader opens the result as context60 and context59
  local ds = data.open(def("context60"), { root = raw })
  local lab = ds:labels(1)
  tap.ok(#ds.items == 3 and ds.items[1].id == "2008_000003" and lab:size(1) == 11 and lab:size(2) == 7,
    "data.open(context60) reads the val split and its label maps")
  local ds59 = data.open(def("context59"), { root = raw })
  tap.ok(#ds59.items == 3 and ds59:labels(3):size(1) == 10, "data.open(context59) reads the same files")

  -- -o ROOT elsewhere: labels there, JPEGImages linked, readable with --data ROOT
  local other = tmp .. "/context_out"
  rc, out = prepare(("context -q %s -o %s"):format(q(raw), q(other)))
  tap.ok(rc == 0 and fs.is_dir(other .. "/JPEGImages"), "-o ROOT: JPEGImages linked into ROOT", out)
  compare_tree(other, FIX .. "/context/expected", "context -o ROOT")
  tap.ok(#data.open(def("context60"), { root = other }).items == 3, "-o ROOT: data.open reads ROOT")

  -- --json FILE: the annotations kept elsewhere
  local moved = tmp .. "/context_json/VOC2010"
  copy(FIX .. "/context/raw/VOC2010", moved)
  os.rename(moved .. "/trainval_merged.json", tmp .. "/context_json/detail.json")
  rc, out = prepare(("context -q %s --json %s"):format(q(moved), q(tmp .. "/context_json/detail.json")))
  tap.ok(rc == 0 and not fs.exists(moved .. "/trainval_merged.json"), "--json FILE: read from there", out)
  compare_tree(moved, FIX .. "/context/expected", "context --json FILE")

  -- missing raw files
  local empty = tmp .. "/context_empty"
  tiny.mkdir(empty .. "/JPEGImages")
  rc, out = prepare("context " .. q(empty))
  tap.ok(rc == 1 and out:find(empty .. "/trainval_merged.json not found", 1, true)
    and out:find("--json FILE", 1, true), "missing trainval_merged.json: named, with the layout", out)
  rc, out = prepare("context " .. q(tmp .. "/context"))
  tap.ok(rc == 1 and out:find(tmp .. "/context/JPEGImages not found", 1, true)
    and out:find("VOCdevkit/VOC2010", 1, true), "missing JPEGImages: named, with the layout", out)
  rc, out = prepare("context " .. q(tmp .. "/nowhere"))
  tap.ok(rc == 1 and out:find("raw folder " .. tmp .. "/nowhere not found", 1, true), "missing RAW_DIR", out)
  rc, out = prepare("ade847 " .. q(raw))
  tap.ok(rc == 1 and out:find("unknown dataset 'ade847'", 1, true) and out:find("coco_object", 1, true),
    "an unknown dataset lists the known ones", out)

  -- malformed entries: reported by file and entry, the rest converted
  local bad = tmp .. "/context_bad/VOC2010"
  copy(FIX .. "/context/raw/VOC2010", bad)
  local doc = json.decode_file(bad .. "/trainval_merged.json")
  local anns = doc.annos_segmentation
  local first = anns[1]
  anns[#anns + 1] = { id = 9001, image_id = 1999000001, category_id = 2, segmentation = first.segmentation }
  anns[#anns + 1] = { id = 9002, image_id = 2009000012, category_id = 7, segmentation = { size = { 8, 8 }, counts = "0" } }
  anns[#anns + 1] = { id = 9003, image_id = 2010000001, category_id = 2, segmentation = first.segmentation }
  local n = #anns
  local dup_at
  for i, img in ipairs(doc.images) do
    if img.file_name == "2008_000003.jpg" then dup_at = i end
  end
  doc.images[#doc.images + 1] = doc.images[dup_at]
  fs.write_atomic(bad .. "/trainval_merged.json", json.encode(doc))
  rc, out = prepare("context -q " .. q(bad))
  local jname = bad .. "/trainval_merged.json"
  tap.eq(rc, 1, "malformed entries: exit 1")
  tap.ok(out:find(("%s: annos_segmentation[%d] (id 9001): image_id 1999000001 names no entry of `images`"):format(
    jname, n - 2), 1, true), "an annotation naming a missing image is reported by file and entry", out)
  tap.ok(out:find(("annos_segmentation[%d] (id 9002) (image 2009_000012.jpg): category_id 7 is not one of"):format(
    n - 1), 1, true), "a category outside the 59 classes is reported with its image", out)
  tap.ok(out:find(("image 2010_000001.jpg: annos_segmentation[%d] (id 9003): segmentation size 9x13, the image is 10x14")
    :format(n), 1, true), "an RLE of the wrong size is reported with its image and entry", out)
  tap.ok(not fs.exists(bad .. "/SegmentationClassContext/2009_000012.png")
    and not fs.exists(bad .. "/SegmentationClassContext/2010_000001.png")
    and pixel_diff(bad .. "/SegmentationClassContext/2008_000003.png",
      FIX .. "/context/expected/SegmentationClassContext/2008_000003.png") == nil,
    "the bad images are not written, the good ones are as the official")
  tap.eq(fs.read(bad .. "/ImageSets/SegmentationContext/val.txt"), "2008_000003\n",
    "the val split lists only the images converted")
  tap.ok(out:find(("images[%d]: image_id 2008000003 repeats images[%d]; the last one is used"):format(#doc.images, dup_at),
    1, true), "a repeated image id is reported", out)
  tap.ok(out:find("prepare context: 5 problem(s):", 1, true), "the summary counts the problems", out)
end

-- ---- COCO-Stuff and COCO-Object ----------------------------------------------------------

do
  local raw = tmp .. "/coco"
  copy(FIX .. "/coco/raw", raw)
  local rc, out = prepare("coco_stuff164k " .. q(raw))
  tap.ok(rc == 0 and out:find("prepare coco_stuff164k  3/3", 1, true), "prepare coco_stuff164k: 3 maps", out)
  rc, out = prepare("coco_object " .. q(raw))
  tap.ok(rc == 0 and count_of(out, ": (%d+) files, 3 written") == 3,
    "prepare coco_object: 3 maps (the *_labelTrainIds.png beside them are not sources)", out)
  compare_tree(raw, FIX .. "/coco/expected", "coco_stuff164k + coco_object")
  no_temporaries(raw, "coco")
  rc, out = prepare("coco_object -q " .. q(raw))
  tap.ok(rc == 0 and count_of(out, "3 files, 0 written, (%d+) already there") == 3, "coco_object rerun: all skipped", out)
  os.remove(raw .. "/annotations/val2017/000000000285_instanceTrainIds.png")
  rc, out = prepare("coco_object -q " .. q(raw))
  tap.ok(rc == 0 and count_of(out, "3 files, (%d+) written, 2 already there") == 1, "a deleted map is rewritten", out)
  compare_tree(raw, FIX .. "/coco/expected", "coco after the resume")
  local obj = data.open(def("coco_object"), { root = raw })
  local stuff = data.open(def("coco_stuff164k"), { root = raw })
  tap.ok(#obj.items == 2 and #stuff.items == 2 and obj:labels(2):size(1) == 12 and stuff:labels(1):size(1) == 16,
    "data.open reads coco_object and coco_stuff164k from the result")
  tiny.mkdir(tmp .. "/coco_empty/images")
  rc, out = prepare("coco_object " .. q(tmp .. "/coco_empty"))
  tap.ok(rc == 1 and out:find("none of annotations/train2017, annotations/val2017 found under", 1, true)
    and out:find("stuffthingmaps_trainval2017.zip", 1, true), "no annotations folder: the layout expected", out)
end

-- ---- Cityscapes --------------------------------------------------------------------------

do
  local raw = tmp .. "/cityscapes"
  copy(FIX .. "/cityscapes/raw", raw)
  local rc, out = prepare("cityscapes " .. q(raw))
  tap.ok(rc == 0 and out:find("prepare cityscapes  3/3", 1, true), "prepare cityscapes: 3 maps", out)
  compare_tree(raw, FIX .. "/cityscapes/expected", "cityscapes (labelIds mapped = trainIds drawn from the polygons)")
  local ds = data.open(def("cityscapes"), { root = raw })
  tap.ok(#ds.items == 2 and ds.items[1].id == "frankfurt/frankfurt_000000_000294" and ds:labels(2):size(2) == 16,
    "data.open(cityscapes) reads gtFine/val")
  -- an id outside labels.py: reported with the file, the others converted
  local odd = raw .. "/gtFine/val/lindau/lindau_000002_000000_gtFine_labelIds.png"
  local v = T.zeros({ 2, 3, 1 }, "uint8")
  v:ptr()[4] = 40
  image.save_png(odd, v)
  rc, out = prepare("cityscapes -q " .. q(raw))
  tap.ok(rc == 1 and out:find(odd .. ": value 40 at", 1, true) and out:find("no mapping", 1, true)
    and count_of(out, "4 files, 0 written, 3 already there, (%d+) failed") == 1,
    "an unknown label id is reported with its file and pixel", out)
  tap.ok(not fs.exists((odd:gsub("labelIds", "labelTrainIds"))), "and nothing is written for it")
  rc, out = prepare("cityscapes " .. q(tmp .. "/coco"))
  tap.ok(rc == 1 and out:find("none of gtFine found under", 1, true) and out:find("gtFine_trainvaltest.zip", 1, true),
    "no gtFine: the layout expected", out)
end

-- ---- polygons: masks.rle_from_polygon (core/masks.c) against pycocotools --------------------

do
  local masks = require("fmseg.masks")
  local doc = json.decode_file(FIX .. "/polygons.json")
  local wrong = {}
  for _, case in ipairs(doc.cases) do
    local got = masks.rle_to_json(masks.rle_compress(masks.rle_from_polygon(case.polygon, case.h, case.w))).counts
    if got ~= case.counts then wrong[#wrong + 1] = ("%s: %s, pycocotools %s"):format(case.name, got, case.counts) end
  end
  tap.ok(#doc.cases >= 10 and #wrong == 0,
    ("%d polygons (concave, self-crossing, self-touching, repeated points, outside): the RLE of pycocotools' frPoly"):format(
      #doc.cases), table.concat(wrong, "\n"))
  tap.raises(function() masks.rle_from_polygon({ 1, 2, "x", 4 }, 4, 4) end, "coordinate 3 is not a number",
             "a polygon with a coordinate that is not a number is refused")
  tap.raises(function() masks.rle_from_polygon({}, 4, 4) end, "rle_from_polygon", "an empty polygon is refused")
end

tiny.rm(tmp)
os.exit(tap.done())
