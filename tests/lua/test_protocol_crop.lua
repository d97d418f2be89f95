-- CLIP's preprocessing as an evaluation protocol (data.short_side_crop:
-- torchvision Resize(n) + CenterCrop(n), images bicubic, labels nearest)
-- against every byte torchvision and PIL give (tests/fixtures/clip_crop.
-- safetensors, tests/tools/make_clip_crop.py); PIL's nearest index rule;
-- ignore_as_background (CLIPtrase's gts[gts == 255] = C) and the refusals.
local tap = require("tap")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")
local json = require("fmseg.io.json")
local image = require("fmseg.image")
local protocol = require("fmseg.eval.protocol")
local safetensors = require("fmseg.io.safetensors")
local T = require("fmseg.tensor")

local ref = safetensors.open(core.root .. "/tests/fixtures/clip_crop.safetensors")
local cases = json.decode(ref:metadata().cases)
tap.ok(#cases >= 8, ("%d cases in clip_crop.safetensors"):format(#cases))

local function differing(a, b)
  if table.concat(a:shape(), "x") ~= table.concat(b:shape(), "x") then return -1 end
  return a:numel() - a:float():eq(b:float()):sum()
end

for i, c in ipairs(cases) do
  local key = ("case%02d"):format(i - 1)
  local h, w, n = c[1], c[2], c[3]
  local spec = { short_side_crop = n }
  local img = protocol.image(ref:get(key .. ".img"), spec)
  local d = differing(img, ref:get(key .. ".img_out"))
  tap.eq(d, 0, ("%dx%d image -> Resize(%d, bicubic) + CenterCrop(%d): every byte as torchvision"):format(h, w, n, n))
  local lab = protocol.labels(ref:get(key .. ".lab"), spec)
  d = differing(lab, ref:get(key .. ".lab_out"))
  tap.eq(d, 0, ("%dx%d labels -> Resize(%d, nearest) + CenterCrop(%d): every label as torchvision"):format(h, w, n, n))
end

-- torchvision's output size: the short side to n, the long side truncated
local rh, rw = image.short_side_size(375, 500, 224)
tap.ok(rh == 224 and rw == 298, "short_side_size(375, 500, 224) = 224 x int(224 * 500 / 375) = 298")
rh, rw = image.short_side_size(500, 333, 224)
tap.ok(rh == 336 and rw == 224, "short_side_size(500, 333, 224) = int(224 * 500 / 333) = 336 x 224")

-- PIL's nearest: the position starts at scale / 2 and adds scale, truncated;
-- 500 -> 30 at pixel 13 sits exactly on 225.0 in exact arithmetic, and PIL's
-- running sum gives 224 (floor((i + 0.5) * in / out) would say 225)
tap.eq(image.pil_nearest_index(30, 500)[13], 224, "PIL nearest: the running double sum, not (i + 0.5) * scale")

-- ---- ignore_as_background ----------------------------------------------------------------------

local spec = { ignore_index = 255, background = 0 }
local lab = T.from_table({ { 3, 255, 1 }, { 255, 2, 255 } }):int()
tap.eq(json.encode(data.ignore_as_background(lab, spec):totable()), "[[3,0,1],[0,2,0]]",
       "unlabelled pixels become the background class")
tap.eq(json.encode(lab:totable()), "[[3,255,1],[255,2,255]]", "the input labels are left alone")
local empty = T.full({ 2, 3 }, 255, "int32")
tap.eq(data.ignore_as_background(empty, spec):float():sum(), 6 * 255,
       "an image with no labelled pixel stays unlabelled (the official skips it)")

-- ---- refusals, before any image is read -------------------------------------------------------

local function spec_of(extra)
  local cfg = { data = { name = "t", root = "/nonexistent", images = "JPEGImages", annotations = "Seg",
                         num_classes = 2, background = 0 }, classes = { "background", "cat" } }
  for k, v in pairs(extra) do cfg.data[k] = v end
  return pcall(data.spec, cfg)
end
local ok, err = spec_of({ short_side_crop = 224, center_crop = true })
tap.ok(not ok and tostring(err):find("short_side_crop is a protocol of its own", 1, true) ~= nil,
       "short_side_crop with center_crop is refused", tostring(err))
ok, err = spec_of({ short_side_crop = 22.5 })
tap.ok(not ok and tostring(err):find("whole number of pixels", 1, true) ~= nil, "a fractional crop is refused",
       tostring(err))
ok, err = spec_of({ ignore_as_background = true, background = json.null })
tap.ok(not ok and tostring(err):find("needs data.background", 1, true) ~= nil,
       "ignore_as_background without a background class is refused", tostring(err))
ok = spec_of({ short_side_crop = 224, ignore_as_background = true })
tap.ok(ok, "short_side_crop with ignore_as_background is accepted")

-- ---- through a dataset, as fmseg eval reads it -----------------------------------------------

do
  local tiny = require("tiny_data")
  local config = require("fmseg.io.config")
  local tmp = tiny.tmpdir("protocol_crop")
  local h, w = 30, 44
  local gt = {}
  for i = 0, h * w - 1 do gt[i] = (i % 7 == 0) and 255 or (i % w < 20 and 1 or 2) end
  local img = ref:get("case00.img")               -- any RGB image of another size would do
  img = image.resize_pil(img, h, w, "bicubic")
  tiny.write_layout(tmp, { images = "img", image_suffix = ".png", annotations = "ann", annotation_suffix = ".png",
    grey = true }, { { id = "a", img = img, gt = tiny.grid(h, w, gt) } })
  local cfg = config.parse_yaml(("data:\n  name: t3\n  root: %s\n  images: img\n  image_suffix: .png\n"
    .. "  annotations: ann\n  annotation_suffix: .png\n  num_classes: 3\n  background: 0\n"
    .. "  short_side_crop: 16\n  ignore_as_background: true\nclasses: [background, a, b]\n"):format(tmp), "t3")
  local ds = data.open(cfg)
  local got_img, got_lab = ds:image(1), ds:labels(1)
  local want_img = image.short_side_crop(image.load(tmp .. "/img/a.png"), 16, "bicubic")
  local want_lab = data.ignore_as_background(image.short_side_crop(tiny.grid(h, w, gt), 16, "nearest"),
                                             { ignore_index = 255, background = 0 })
  tap.eq(differing(got_img, want_img), 0, "the dataset's image is the 16 x 16 crop")
  tap.eq(differing(got_lab, want_lab), 0, "the dataset's labels: the same crop, nearest, 255 as background")
  tap.eq(got_lab:float():eq(255):sum(), 0, "no unlabelled pixel is left to ignore")
  tiny.rm(tmp)
end

os.exit(tap.done())
