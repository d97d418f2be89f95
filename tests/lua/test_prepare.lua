-- `fmseg prepare` against the official converters: tests/fixtures/prepare/
-- holds tiny raw datasets in the public layouts and what mmsegmentation's
-- pascal_context.py (with the Detail API), coco_stuff164k.py, SCLIP's
-- cvt_coco_object.py, cityscapesScripts' json2labelImg and ov-seg's
-- prepare_ade20k_full_sem_seg.py and prepare_pascal_context.py wrote from
-- them (tests/tools/make_prepare_fixtures.py). Each case runs ./fmseg prepare
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

-- nil when both label maps (PNG or TIFF) hold the same values at the same size, else why
local function pixel_diff(got_path, want_path)
  local ok, got = pcall(image.load_labels, got_path)
  if not ok then return "cannot read " .. got_path .. ": " .. tostring(got) end
  local want = image.load_labels(want_path)
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
    elseif rel:match("%.png$") or rel:match("%.tif$") then
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
  for _, name in ipairs({ "context", "context459", "coco_stuff164k", "coco_object", "cityscapes", "ade847" }) do
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
  rc, out = prepare("ade150 " .. q(raw))
  tap.ok(rc == 1 and out:find("unknown dataset 'ade150'", 1, true) and out:find("coco_object", 1, true),
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

-- ---- ADE20K-Full (847) and PASCAL Context-459: ov-seg's detectron2-style scripts --------------

-- the expected tree in tmp with its *.gz unpacked (the larger official files are kept gzip'd)
local function unpacked(from, label)
  local to = tmp .. "/expected_" .. label
  copy(from, to)
  tiny.sh(("find %s -name '*.gz' -exec gzip -d {} +"):format(q(to)))
  return to
end

local function write_file(path, bytes)
  tiny.mkdir(path:match("^(.*)/"))
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

-- nil when two (H, W, 3) uint8 images are equal, else why
local function image_diff(got, want, label)
  if got:size(1) ~= want:size(1) or got:size(2) ~= want:size(2) then
    return ("%s: %dx%d, expected %dx%d"):format(label, got:size(2), got:size(1), want:size(2), want:size(1))
  end
  local gp, wp, bad = got:contiguous():ptr(), want:contiguous():ptr(), 0
  for i = 0, got:numel() - 1 do if gp[i] ~= wp[i] then bad = bad + 1 end end
  return bad > 0 and ("%s: %d bytes differ"):format(label, bad) or nil
end

do
  local ade = require("fmseg.eval.prepare_ade847")
  local raw = tmp .. "/ade847/ADE20K_2021_17_01"
  copy(FIX .. "/ade847/raw/ADE20K_2021_17_01", raw)
  local want = unpacked(FIX .. "/ade847/expected", "ade847")
  local rc, out = prepare("ade847 " .. q(raw))
  tap.ok(rc == 0 and out:find("prepare ade847 labels  4/4", 1, true), "prepare ade847: 4 validation images", out)
  compare_tree(raw .. "/annotations_detectron2", want .. "/annotations_detectron2",
    "ade847 (R / 10 * 256 + G, the 847 ids to trainIds, 65535 elsewhere, cv2 nearest past 512)")
  tap.ok(not fs.exists(raw .. "/images_detectron2/training") and not fs.exists(raw .. "/annotations_detectron2/training")
    and #files_under(raw .. "/images_detectron2/validation") == 4, "ade847: only the validation images, as the official")
  -- the images: the pixels the official hands PIL's JPEG encoder, ours stb's
  local sources = { ADE_val_00000001 = "validation/cultural/apse__indoor", ADE_val_00000002 = "validation/urban/street",
                    ADE_val_00000003 = "validation/urban/street", ADE_val_00000004 = "validation/urban/street" }
  local problems = {}
  for name, folder in pairs(sources) do
    local pre = image.load(want .. "/pre_jpeg/" .. name .. ".png")
    local got = ade.convert_image(image.load(("%s/images/ADE/%s/%s.jpg"):format(raw, folder, name)))
    problems[#problems + 1] = image_diff(got, pre, name)
    local written = image.load(raw .. "/images_detectron2/validation/" .. name .. ".jpg")
    if written:size(1) ~= pre:size(1) or written:size(2) ~= pre:size(2) then
      problems[#problems + 1] = name .. ".jpg: not the size of the official's"
    end
  end
  tap.ok(#problems == 0, "ade847 images: resized (cv2 INTER_LINEAR past 512) to the official's pixels, "
    .. "JPEGs of their size", table.concat(problems, "\n"))
  no_temporaries(raw, "ade847")

  rc, out = prepare("ade847 -q " .. q(raw))
  tap.ok(rc == 0 and count_of(out, "validation/<name>%.tif: 4 files, 0 written, (%d+) already there") == 4,
    "ade847 rerun: all skipped", out)
  os.remove(raw .. "/annotations_detectron2/validation/ADE_val_00000002.tif")
  rc, out = prepare("ade847 -q " .. q(raw))
  tap.ok(rc == 0 and count_of(out, "validation/<name>%.tif: 4 files, (%d+) written, 3 already there") == 1,
    "a deleted label map is written again", out)
  compare_tree(raw .. "/annotations_detectron2", want .. "/annotations_detectron2", "ade847 after the resume")
  local ds = data.open(def("ade847"), { root = raw })
  local lab = ds:labels(2)
  tap.ok(#ds.items == 4 and ds.items[1].id == "ADE_val_00000001" and lab:size(1) == 527 and lab:size(2) == 512
    and ds:image(2):size(1) == 527, "data.open(ade847) reads the result: images and labels at the resized size")
  local other = tmp .. "/ade847_out"
  rc, out = prepare(("ade847 -q %s -o %s"):format(q(raw), q(other)))
  tap.ok(rc == 0 and #data.open(def("ade847"), { root = other }).items == 4, "-o ROOT: both folders written there", out)
  compare_tree(other .. "/annotations_detectron2", want .. "/annotations_detectron2", "ade847 -o ROOT")

  -- problems with single images: named, the rest converted
  local bad = tmp .. "/ade847_bad/ADE20K_2021_17_01"
  copy(FIX .. "/ade847/raw/ADE20K_2021_17_01", bad)
  local street = bad .. "/images/ADE/validation/urban/street"
  os.remove(street .. "/ADE_val_00000002_seg.png")
  write_file(street .. "/ADE_val_00000003_seg.png", "not a png")
  local dup = bad .. "/images/ADE/validation/zz/ADE_val_00000001.jpg"
  write_file(dup, fs.read(bad .. "/images/ADE/validation/cultural/apse__indoor/ADE_val_00000001.jpg"))
  rc, out = prepare("ade847 -q " .. q(bad))
  tap.eq(rc, 1, "ade847 with broken files: exit 1")
  tap.ok(out:find(street .. "/ADE_val_00000002_seg.png: not found", 1, true), "a missing _seg.png is named", out)
  tap.ok(out:find(street .. "/ADE_val_00000003_seg.png: fm_image_load: " .. street .. "/ADE_val_00000003_seg.png", 1, true),
    "an unreadable _seg.png is named", out)
  tap.ok(out:find(dup .. ": same file name as " .. bad .. "/images/ADE/validation/cultural/apse__indoor/ADE_val_00000001.jpg",
    1, true), "two images of one name are reported (the outputs are flat)", out)
  tap.ok(pixel_diff(bad .. "/annotations_detectron2/validation/ADE_val_00000001.tif",
    want .. "/annotations_detectron2/validation/ADE_val_00000001.tif") == nil
    and not fs.exists(bad .. "/annotations_detectron2/validation/ADE_val_00000003.tif"),
    "the good image is converted as the official, the bad ones not at all")
  rc, out = prepare("ade847 " .. q(tmp .. "/coco"))
  tap.ok(rc == 1 and out:find("no ADE_val_*.jpg under " .. tmp .. "/coco/images", 1, true)
    and out:find("ADE20K_2021_17_01.zip", 1, true),
    "no validation images: the layout expected", out)
  rc, out = prepare("ade847 " .. q(tmp .. "/cityscapes"))
  tap.ok(rc == 1 and out:find(tmp .. "/cityscapes/images not found", 1, true), "no images/: named", out)
end

-- A level-5 MAT file, little-endian, uncompressed, one matrix `name` of
-- class `class` (11: uint16) whose data is stored as MAT type `mi`.
local function mat_file(name, class, dims, mi, bytes)
  local function u32(v)
    return string.char(v % 256, math.floor(v / 256) % 256, math.floor(v / 65536) % 256, math.floor(v / 16777216) % 256)
  end
  local function el(typ, payload) return u32(typ) .. u32(#payload) .. payload .. string.rep("\0", (8 - #payload % 8) % 8) end
  local d = {}
  for i, v in ipairs(dims) do d[i] = u32(v) end
  local body = el(6, u32(class) .. u32(0)) .. el(5, table.concat(d)) .. el(1, name) .. el(mi, bytes)
  local text = "MATLAB 5.0 MAT-file, written by test_prepare.lua"
  return text .. string.rep(" ", 116 - #text) .. string.rep("\0", 8) .. string.char(0, 1) .. "IM"
    .. u32(14) .. u32(#body) .. body
end

do
  local raw = tmp .. "/context459/VOC2010"
  copy(FIX .. "/context459/raw/VOC2010", raw)
  local want = FIX .. "/context459/expected"
  local rc, out = prepare("context459 " .. q(raw))
  tap.ok(rc == 0 and out:find("prepare context459  4/4", 1, true) and out:find("1 without a .mat skipped", 1, true),
    "prepare context459: the 4 val ids with a .mat (one listed id has none)", out)
  compare_tree(raw .. "/annotations_detectron2", want .. "/annotations_detectron2",
    "context459 (LabelMap - 1 in uint16: compressed, plain, big-endian and two-variable MAT files)")
  tap.ok(not fs.exists(raw .. "/annotations_detectron2/pc459_val/2008_000008.tif"), "context459: a train id is left out")
  tap.eq(fs.read(raw .. "/ImageSets/SegmentationContext/val.txt"), "2008_000002\n2008_000003\n2008_000007\n2010_000001\n",
    "ImageSets/SegmentationContext/val.txt, absent, is written with the ids converted")
  no_temporaries(raw, "context459")
  local ds = data.open(def("context459"), { root = raw })
  local lab = ds:labels(3)
  tap.ok(#ds.items == 4 and ds.items[3].id == "2008_000007" and lab:size(1) == 8 and lab:size(2) == 12
    and lab:get(1, 1) == 65535 and lab:get(1, 2) == 458 and lab:get(1, 3) == 255,
    "data.open(context459) reads the result (0 -> 65535, 459 -> 458, 256 -> 255)")
  rc, out = prepare("context459 -q " .. q(raw))
  tap.ok(rc == 0 and count_of(out, "4 files, 0 written, (%d+) already there") == 4
    and not out:find("SegmentationContext/val.txt (it was not there", 1, true), "context459 rerun: all skipped", out)
  -- -o ROOT: labels and val.txt there, JPEGImages linked
  local other = tmp .. "/context459_out"
  rc, out = prepare(("context459 -q %s -o %s"):format(q(raw), q(other)))
  tap.ok(rc == 0 and fs.is_dir(other .. "/JPEGImages") and #data.open(def("context459"), { root = other }).items == 4,
    "-o ROOT: JPEGImages linked, readable with --data ROOT", out)
  -- without pascalcontext_val.txt the configs' val.txt gives the ids; without either, both are named
  os.remove(raw .. "/pascalcontext_val.txt")
  os.remove(raw .. "/annotations_detectron2/pc459_val/2008_000003.tif")
  rc, out = prepare("context459 -q " .. q(raw))
  tap.ok(rc == 0 and count_of(out, "4 files, (%d+) written, 3 already there") == 1
    and out:find("ids of " .. raw .. "/ImageSets/SegmentationContext/val.txt", 1, true),
    "no pascalcontext_val.txt: the ids of ImageSets/SegmentationContext/val.txt", out)
  os.remove(raw .. "/ImageSets/SegmentationContext/val.txt")
  rc, out = prepare("context459 " .. q(raw))
  tap.ok(rc == 1 and out:find("neither " .. raw .. "/pascalcontext_val.txt nor", 1, true)
    and out:find("CAT-Seg's datasets/pascalcontext_val.txt", 1, true), "no id list at all: both named, where to get one", out)
  rc, out = prepare("context459 " .. q(tmp .. "/context"))
  tap.ok(rc == 1 and out:find(tmp .. "/context/trainval not found", 1, true) and out:find("trainval.tar.gz", 1, true),
    "no trainval/: named, with the layout", out)

  -- a val.txt already there (mmsegmentation's, `prepare context`) listing an id that gets no label
  local listed = tmp .. "/context459_listed/VOC2010"
  copy(FIX .. "/context459/raw/VOC2010", listed)
  tiny.write(listed .. "/ImageSets/SegmentationContext/val.txt", "2008_000002\n2008_000009\n")
  rc, out = prepare("context459 -q " .. q(listed))
  tap.ok(rc == 1 and out:find(listed .. "/ImageSets/SegmentationContext/val.txt lists 1 id(s) with no "
    .. "annotations_detectron2/pc459_val/<id>.tif (2008_000009), which fmseg eval context459 reads", 1, true)
    and fs.read(listed .. "/ImageSets/SegmentationContext/val.txt") == "2008_000002\n2008_000009\n",
    "ids of an existing val.txt that get no label are reported, and the file is left as it is", out)

  -- bad MAT files: each named, the rest converted
  local bad = tmp .. "/context459_bad/VOC2010"
  copy(FIX .. "/context459/raw/VOC2010", bad)
  local mats = bad .. "/trainval/"
  local cut = fs.read(mats .. "2008_000002.mat")
  write_file(mats .. "2008_000002.mat", cut:sub(1, #cut - 40))
  write_file(mats .. "2008_000003.mat", mat_file("LabelMap", 11, { 2, 3 }, 2, string.char(1, 2, 3, 4, 5, 6)))
  write_file(mats .. "2008_000007.mat", mat_file("Segmentation", 11, { 1, 2 }, 4, string.char(1, 0, 2, 0)))
  write_file(mats .. "2008_000009.mat", "MATLAB 7.3 MAT-file, Platform: GLNXA64" .. string.rep("\0", 100))
  rc, out = prepare("context459 -q " .. q(bad))
  tap.eq(rc, 1, "context459 with bad MAT files: exit 1")
  tap.ok(out:find(mats .. "2008_000002.mat: offset 128: a variable of 254 bytes, but the file has 214 left", 1, true),
    "a truncated MAT file is named", out)
  tap.ok(out:find(mats .. "2008_000003.mat: LabelMap (uint16) is stored as uint8, expected uint16", 1, true),
    "LabelMap stored as another type is refused (the official arithmetic is uint16)", out)
  tap.ok(out:find(mats .. "2008_000007.mat: no variable LabelMap (variables: Segmentation)", 1, true),
    "a MAT file without LabelMap is named with what it holds", out)
  tap.ok(out:find(mats .. "2008_000009.mat: not a MAT-file of level 5 (MATLAB 5 to 7.2)", 1, true),
    "a file that is no level-5 MAT file is refused, saying so", out)
  tap.ok(pixel_diff(bad .. "/annotations_detectron2/pc459_val/2010_000001.tif",
    want .. "/annotations_detectron2/pc459_val/2010_000001.tif") == nil
    and fs.read(bad .. "/ImageSets/SegmentationContext/val.txt") == "2010_000001\n",
    "the good file is converted as the official, and val.txt lists only it")
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
