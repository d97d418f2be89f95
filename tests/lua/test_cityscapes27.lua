-- Cityscapes-27 (configs/_base_/datasets/cityscapes27.yaml) on a tiny
-- dataset in the official gtFine layout, and DiffSeg's protocol on it
-- (configs/diffseg/diffseg_sd15_cityscapes.yaml): labelIds 7..33 become
-- classes 0..26 as google/diffseg data/cityscapes/cityscapes_data.py
-- get_fine_to_coarse maps them, everything else is ignored; images and
-- labels are cropped to the centred square, labels resized nearest as TF
-- does (source floor((i + 0.5) * in / out)), images bilinear in float.
local tap = require("tap")
local tiny = require("tiny_data")
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")

local ROOT = core.root
local DEF = ROOT .. "/configs/_base_/datasets/cityscapes27.yaml"
local tmp = tiny.tmpdir("cityscapes27")

-- 4x10 labelIds: every id 0..33 in row-major order, then 255
local H, W = 4, 10
local raw = {}
for i = 0, H * W - 1 do raw[i] = i < 34 and i or 255 end
local root = tmp .. "/cityscapes"
local layout = { images = "leftImg8bit/val", image_suffix = "_leftImg8bit.png", annotations = "gtFine/val",
                 annotation_suffix = "_gtFine_labelIds.png", grey = true }
tiny.write_layout(root, layout, {
  { id = "frankfurt/frankfurt_000000_000294", img = tiny.paint(H, W), gt = tiny.grid(H, W, raw) },
})

local ds = data.open(config.load(DEF), { root = root })
tap.eq(#ds.items, 1, "one image found under leftImg8bit/val/<city>")
tap.ok(ds.name == "cityscapes27" and ds.num_classes == 27 and #ds.class_names == 27 and ds.ignore_index == 255,
  "27 classes, 255 ignored")
tap.ok(ds.class_names[1] == "road" and ds.class_names[3] == "parking" and ds.class_names[27] == "bicycle",
  "labels.py order from road (7) to bicycle (33)")
local lab = ds:labels(1):int():contiguous()
local p = lab:ptr()
local bad = {}
for i = 0, H * W - 1 do
  local want = (raw[i] >= 7 and raw[i] <= 33) and raw[i] - 7 or 255
  if p[i] ~= want then bad[#bad + 1] = ("%d -> %d"):format(raw[i], p[i]) end
end
tap.ok(#bad == 0, "labelIds 7..33 -> 0..26, 0..6 and others ignored", table.concat(bad, ", "))

-- DiffSeg's protocol: the centred 4x4 square (columns 3..6), labels
-- nearest to 8x8 (each source pixel twice: floor((i + 0.5) / 2)), the image
-- bilinear in float
local dcfg = config.load(ROOT .. "/configs/diffseg/diffseg_sd15_cityscapes.yaml", { "data.resize=8" })
local dds = data.open(dcfg, { root = root })
tap.ok(dds.name == "cityscapes27" and config.get(dcfg, "params.crop") == "center_square"
  and config.get(dcfg, "params.kl_threshold")[1] == 0.9, "diffseg_sd15_cityscapes: Cityscapes-27, crop, tau 0.9")
local sq = dds:labels(1):int():contiguous()
local sp = sq:ptr()
local wrong = 0
for y = 0, 7 do
  for x = 0, 7 do
    local r = raw[math.floor(y / 2) * W + 3 + math.floor(x / 2)]
    local want = (r >= 7 and r <= 33) and r - 7 or 255
    if sp[y * 8 + x] ~= want then wrong = wrong + 1 end
  end
end
tap.ok(sq:size(1) == 8 and sq:size(2) == 8 and wrong == 0, "labels: centred square, nearest to 8x8", wrong)
local img = dds:image(1)
tap.ok(img:dtype() == "float32" and img:size(1) == 8 and img:size(2) == 8 and img:size(3) == 3,
  "image: centred square resized in float (8, 8, 3)")

tiny.rm(tmp)
os.exit(tap.done())
