-- COCO-Stuff-27 (configs/_base_/datasets/coco_stuff27.yaml) on a tiny
-- dataset in STEGO's cocostuff layout: only the curated list's ids are
-- read, in its order, and the fine stuffthingmaps ids come back as the 27
-- coarse classes of IIC's fine_to_coarse_dict.pickle (what PiCIE, STEGO
-- and DiffSeg score). The expected values below were read off the official
-- sources, not off our output: the fine id of each named COCO-Stuff class
-- (COCO category id - 1; stuff ids 91..181 in alphabetical order), its
-- parent in IIC's fine_to_coarse_dict.pickle.txt, and the number of fine
-- ids per coarse class in STEGO's src/data.py Coco.fine_to_coarse.
local tap = require("tap")
local tiny = require("tiny_data")
local config = require("fmseg.io.config")
local core = require("fmseg.core")
local data = require("fmseg.eval.data")

local ROOT = core.root
local DEF = ROOT .. "/configs/_base_/datasets/coco_stuff27.yaml"
local LIST = "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt"
local tmp = tiny.tmpdir("coco27")

-- fine id, COCO-Stuff name, coarse (IIC) name: one or two per coarse class
local KNOWN = {
  { 0, "person", "person-things" }, { 2, "car", "vehicle-things" }, { 14, "bench", "outdoor-things" },
  { 16, "cat", "animal-things" }, { 26, "backpack", "accessory-things" }, { 33, "frisbee", "sports-things" },
  { 46, "cup", "kitchen-things" }, { 52, "apple", "food-things" }, { 63, "potted plant", "furniture-things" },
  { 64, "bed", "furniture-things" }, { 71, "tv", "electronic-things" }, { 81, "refrigerator", "appliance-things" },
  { 84, "clock", "indoor-things" }, { 91, "banner", "textile-stuff" }, { 93, "branch", "plant-stuff" },
  { 95, "building-other", "building-stuff" }, { 97, "cabinet", "furniture-stuff" }, { 98, "cage", "structural-stuff" },
  { 99, "cardboard", "rawmaterial-stuff" }, { 100, "carpet", "floor-stuff" }, { 101, "ceiling-other", "ceiling-stuff" },
  { 105, "clouds", "sky-stuff" }, { 120, "food-other", "food-stuff" }, { 123, "grass", "plant-stuff" },
  { 148, "road", "ground-stuff" }, { 154, "sea", "water-stuff" }, { 156, "sky-other", "sky-stuff" },
  { 172, "wall-other", "wall-stuff" }, { 180, "window-other", "window-stuff" }, { 181, "wood", "solid-stuff" },
}

-- fine ids per coarse class 0..26 (things 0..11, then stuff 12..26)
local COUNTS = { [0] = 6, 6, 10, 10, 8, 8, 8, 10, 6, 1, 10, 8, 2, 6, 4, 11, 4, 11, 7, 2, 6, 11, 9, 2, 6, 5, 5 }

-- image 1 holds every fine id 0..181 once, then unlabelled and values the
-- maps never hold; image 2 is random fine ids at another size
local H1, W1 = 8, 24
local raw1 = {}
local extra = { 255, 182, 200, 254 }
for i = 0, H1 * W1 - 1 do raw1[i] = i < 182 and i or extra[(i - 182) % #extra + 1] end
local H2, W2 = 5, 9
local rand = tiny.rng(27)
local raw2 = {}
for i = 0, H2 * W2 - 1 do raw2[i] = rand(0, 11) == 0 and 255 or rand(0, 181) end

local root = tmp .. "/cocostuff"
local layout = { images = "images/val2017", image_suffix = ".jpg", annotations = "annotations/val2017",
                 annotation_suffix = ".png", grey = true }
tiny.write_layout(root, layout, {
  { id = "000000000139", img = tiny.paint(H1, W1), gt = tiny.grid(H1, W1, raw1) },
  { id = "000000000285", img = tiny.paint(4, 4), gt = tiny.grid(4, 4, { [0] = 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }) },
  { id = "000000000724", img = tiny.paint(H2, W2), gt = tiny.grid(H2, W2, raw2) },
})
-- the curated list leaves 000000000285 out and is not in path order
tiny.write(root .. "/" .. LIST, "000000000724\n000000000139\n")

local ds = data.open(config.load(DEF), { root = root })
tap.eq(#ds.items, 2, "only the curated list's images are read")
tap.eq(ds.items[1].id .. " " .. ds.items[2].id, "000000000724 000000000139", "in the list's order")
tap.eq(ds.items[2].annotation, root .. "/annotations/val2017/000000000139.png",
  "labels are the original stuffthingmaps <id>.png")
tap.ok(ds.name == "coco_stuff27" and ds.num_classes == 27 and #ds.class_names == 27 and ds.ignore_index == 255
  and ds.background == nil, "27 classes, 255 ignored, no background class")

local index = {}
for i, n in ipairs(ds.class_names) do index[n] = i - 1 end
tap.ok(index["electronic-things"] == 0 and index["vehicle-things"] == 11 and index["ceiling-stuff"] == 12
  and index["water-stuff"] == 26, "IIC's coarse order: 12 things (electronic .. vehicle), then 15 stuff (ceiling .. water)")

local got1 = ds:labels(2):int():contiguous()
local p1 = got1:ptr()
tap.ok(got1:size(1) == H1 and got1:size(2) == W1, "labels keep the map's size")

local wrong = {}
for _, k in ipairs(KNOWN) do
  local want = index[k[3]]
  if want == nil or p1[k[1]] ~= want then
    wrong[#wrong + 1] = ("%d %s: got %d, want %s (%s)"):format(k[1], k[2], p1[k[1]], tostring(want), k[3])
  end
end
tap.ok(#wrong == 0, ("%d fine classes land in their official coarse class (all 27 covered)"):format(#KNOWN),
  table.concat(wrong, "; "))

local tally, outside = {}, 0
for i = 0, 181 do
  local c = p1[i]
  if c >= 0 and c < 27 then tally[c] = (tally[c] or 0) + 1 else outside = outside + 1 end
end
local bad = {}
for c = 0, 26 do
  if tally[c] ~= COUNTS[c] then
    bad[#bad + 1] = ("%s: %s, want %d"):format(ds.class_names[c + 1], tostring(tally[c]), COUNTS[c])
  end
end
tap.ok(outside == 0 and #bad == 0, "every fine id 0..181 has a coarse class, as many per class as the official table",
  (outside > 0 and (outside .. " fine ids unmapped; ") or "") .. table.concat(bad, "; "))

local leaked = {}
for i = 182, H1 * W1 - 1 do
  if p1[i] ~= 255 then leaked[#leaked + 1] = ("%d -> %d"):format(raw1[i], p1[i]) end
end
tap.ok(#leaked == 0, "255 (unlabelled) and values outside 0..181 become ignore", table.concat(leaked, ", "))

-- the other image: each pixel is what its fine id gave in image 1
local got2 = ds:labels(1):int():contiguous()
local p2, same = got2:ptr(), true
for i = 0, H2 * W2 - 1 do
  local want = raw2[i] == 255 and 255 or p1[raw2[i]]
  if p2[i] ~= want then same = false end
end
tap.ok(same and got2:size(1) == H2 and got2:size(2) == W2, "the mapping is per value, whatever the image")

-- DiffSeg's COCO-Stuff-27 config reads this definition
local dcfg = config.load(ROOT .. "/configs/diffseg/diffseg_sd15_cocostuff27.yaml")
local spec = data.spec(dcfg)
tap.ok(spec.name == "coco_stuff27" and spec.split == LIST and spec.num_classes == 27
  and config.get(dcfg, "recipe") == "diffseg", "diffseg_sd15_cocostuff27 inherits coco_stuff27")

-- problems
os.rename(root .. "/" .. LIST, root .. "/list.txt")
tap.raises(function() data.open(config.load(DEF), { root = root }) end,
  "split file " .. root .. "/" .. LIST .. " not found", "a missing curated list is named")
os.rename(root .. "/list.txt", root .. "/" .. LIST)
tap.raises(function() data.open(config.load(DEF, { "data.label_map.0=27" }), { root = root }) end,
  "label_map entry 0: 27 must map a value 0..255 to a class 0..26 or 255", "a label_map class outside 0..26 is refused")

tiny.rm(tmp)
os.exit(tap.done())
