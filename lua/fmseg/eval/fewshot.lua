-- fmseg.eval.fewshot — the few-shot segmentation benchmarks COCO-20i,
-- FSS-1000 and LVIS-92i as HSNet's code samples and scores them, in the
-- copy aim-uofa/Matcher evaluates with (matcher/data/{coco,fss,lvis}.py,
-- main_oss.py's test loop, matcher/common/{evaluation,logger,utils}.py).
-- Each item is one episode: a query image and `shot` support images with
-- their masks of one class; the recipe (`oneshot = true`) gets the support
-- through set_reference(state, image, mask) and segments the query.
--
--   data:
--     name: coco20i_fold0
--     task: fewshot
--     benchmark: coco20i        # coco20i | fss1000 | lvis92i
--     root: data/COCO2014       # Matcher's datasets/COCO2014 (datasets/README.md)
--     fold: 0                   # --fold (COCO-20i 0..3, LVIS-92i 0..9; FSS-1000 has none)
--     shot: 1                   # --nshot
--     seed: 0                   # utils.fix_randseed(0) in main_oss.py's test()
--     img_size: 518             # --img-size: the transform's Resize((S, S))
--     split: ~                  # the split file below the root (defaults below)
--
-- Episodes, drawn from numpy's legacy stream (np.random.seed(seed) once,
-- then every draw np.random.choice(a, 1, replace=False), which is
-- permutation(len(a))[0]; fmseg.pyrandom.numpy), in the DataLoader's order
-- (shuffle off, no workers: episode k is drawn before episode k + 1, and
-- nothing else draws from numpy between them):
--   coco20i  1000 episodes (DatasetCOCO.__len__ for val); the fold's classes
--            fold + 4 v (v = 0..19, 0-based COCO-80 ids); each episode a
--            class from them, a query from the class's list in
--            splits/val/fold<f>.pkl, then supports from the same list,
--            redrawn while equal to the query. Mask: annotations/<name>.png
--            (the image's name, ".jpg" cut), pixels == class + 1.
--   fss1000  one episode per image (DatasetFSS: the categories of
--            splits/test.txt sorted, each folder's files sorted, those whose
--            name's second dot-part is "jpg"); supports <n>.jpg of the
--            query's folder, n drawn from range(1, 11), redrawn while equal
--            to the query. Class ids 760 + the category's index (test; val
--            520 +, trn 0 +). Mask: <id>.png, PIL's convert('L') >= 128.
--   lvis92i  2300 episodes (DatasetLVIS.__len__); the classes of
--            lvis_val.pkl with more than `shot` images, in the pickle's
--            order, every 10th from `fold` (len // 10 of them); episode k
--            takes class k mod their number, then query and supports as
--            COCO's from the class's images. Mask: the union of the image's
--            annotations of the class (polygons rasterised as pycocotools'
--            frPyObjects, a first polygon of 4 numbers making them all boxes,
--            as detectron2's polygons_to_bitmask hands them over; or RLE).
-- An image or mask that cannot be read, a mask of another size than its
-- image, or an empty mask (at the file's size) makes its episode skipped,
-- with the reason; the draws stay as they are, so the other episodes are
-- the official ones. (The official code stops at a missing file and scores
-- an empty mask: an empty query counts its predicted pixels as errors, an
-- empty support becomes Matcher's central 14 x 14 block.)
--
-- The metric (use_original_imgsize off, as in every script of Matcher's):
-- the query and support images resized to img_size x img_size (torchvision's
-- Resize on PIL images: bilinear, antialiased), the masks by torch's
-- nearest; the recipe segments the resized query and its mask is scored
-- there (Evaluator.classify_prediction: the histogram of 0 / 1, all pixels
-- counted, no ignore label). Per episode, background and foreground
-- intersection and union; per class summed over its episodes in float32, in
-- episode order (AverageMeter.update's index_add_); IoU = inter / max(union,
-- 1) per class, mIoU the mean of the fold's classes' foreground IoU (a class
-- without episodes counts 0); FB-IoU the mean over background and
-- foreground of the fold's summed intersections over their summed unions
-- (AverageMeter.compute_iou). The means are taken in double here. The
-- fold's classes are COCO-20i's 20 and LVIS-92i's 92 as the AverageMeter
-- has them; for FSS-1000 the split's categories, which for the shipped
-- test.txt are its range(760, 1000) (a shorter split file would leave
-- classes without episodes there, each counting 0).
--
-- The recipe sees what the official loader hands Matcher: the resized query
-- as segment's image, and the resized support image and mask (0 / 255) as
-- temporary PNG files for set_reference(state, image, mask), removed after;
-- a recipe that resizes to img_size itself (Matcher's input_size 518) then
-- resizes nothing. Its prediction must be img_size x img_size.
local data = require("fmseg.eval.data")
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local masks = require("fmseg.masks")
local nn = require("fmseg.nn")
local oneshot = require("fmseg.eval.oneshot")
local pickle = require("fmseg.io.pickle")
local pyrandom = require("fmseg.pyrandom")
local skipped = require("fmseg.eval.skipped")
local T = require("fmseg.tensor")

local M = {}

local f32 = pyrandom.f32

-- The 80 COCO classes in HSNet's order (category ids sorted; 0-based here).
M.COCO_NAMES = {
  "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
  "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
  "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
  "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
  "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
  "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
  "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
  "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
  "teddy bear", "hair drier", "toothbrush",
}

local TITLES = { coco20i = "COCO-20i", fss1000 = "FSS-1000", lvis92i = "LVIS-92i" }
M.TITLES = TITLES

local Dataset = {}
Dataset.__index = Dataset

local function join(root, rel)
  if rel:sub(1, 1) == "/" then return rel end
  return (root:gsub("/+$", "")) .. "/" .. rel
end

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end
local function basename(path) return path:match("([^/]*)$") end

-- the support names of one episode: `shot` draws of np.random.choice over a
-- population of `pop` (name_of(k) the k-th, 0-based) that differ from the
-- query (the official `while True` loop); nil when no name differs (the
-- official code would never end)
local function draw_supports(np, pop, name_of, query, shot)
  local any = false
  for k = 0, pop - 1 do if name_of(k) ~= query then any = true; break end end
  if not any then return nil end
  local out = {}
  while #out < shot do
    local s = name_of(np:choice1(pop))
    if s ~= query then out[#out + 1] = s end
  end
  return out
end

local function check_int(spec, key, default, lo, hi)
  local v = spec[key]
  if v == nil then v = default end
  if type(v) ~= "number" or v % 1 ~= 0 or v < lo or (hi and v > hi) then
    error(("dataset %s: data.%s must be an integer in [%d, %s], got %s"):format(spec.name, key, lo,
      hi and tostring(hi) or "...", tostring(spec[key])), 0)
  end
  return v
end

local function safe_id(s) return (s:gsub("[^%w%-_.]", "_")) end

-- ---- COCO-20i ------------------------------------------------------------------------------

local function open_coco(spec, ds)
  local fold = check_int(spec, "fold", 0, 0, 3)
  local split = join(spec.root, spec.split or ("splits/val/fold%d.pkl"):format(fold))
  if not fs.exists(split) then
    error(("dataset %s: %s not found (COCO-20i keeps HSNet's splits/val/fold<f>.pkl under the root, "
      .. "beside train2014/, val2014/ and annotations/val2014/: Matcher's datasets/README.md; pass --data ROOT)"):format(
      spec.name, split), 0)
  end
  local lists = pickle.load(split)
  local class_ids = {}
  for v = 0, 19 do class_ids[#class_ids + 1] = fold + 4 * v end
  for _, c in ipairs(class_ids) do
    if type(lists[c]) ~= "table" or #lists[c] == 0 then
      error(("dataset %s: %s: class %d (%s) of fold %d has no image list"):format(spec.name, split, c,
        M.COCO_NAMES[c + 1], fold), 0)
    end
  end
  ds.classes, ds.fold, ds.split_file = class_ids, fold, split
  for _, c in ipairs(class_ids) do ds.class_names[c] = M.COCO_NAMES[c + 1] end
  local np = pyrandom.numpy(ds.seed)
  for k = 1, 1000 do
    local c = class_ids[np:choice1(#class_ids) + 1]
    local list = lists[c]
    local q = list[np:choice1(#list) + 1]
    local sup = draw_supports(np, #list, function(j) return list[j + 1] end, q, ds.shot)
    if not sup then
      error(("dataset %s: %s: class %d lists only %s: no support can differ from the query"):format(spec.name,
        split, c, q), 0)
    end
    local function coco_frame(name)
      local cut = name:find(".jpg", 1, true)
      return { name = name, image = join(spec.root, name),
               mask = join(spec.root, "annotations/" .. (cut and name:sub(1, cut - 1) or name) .. ".png") }
    end
    local supports = {}
    for j, s in ipairs(sup) do supports[j] = coco_frame(s) end
    ds.items[k] = { id = ("%04d_%s"):format(k, safe_id((basename(q):gsub("%.jpg$", "")))), index = k, class = c,
                    query = coco_frame(q), supports = supports, image = join(spec.root, q) }
  end
end

-- (H, W) 0/1 of a COCO-20i mask file: its values (grey or palette indices) == class + 1
local function coco_mask(path, class)
  local ok, lab = pcall(image.load_indices, path)
  if not ok then error(("%s: %s"):format(path, tostring(lab)), 0) end
  local out = T.zeros({ lab:size(1), lab:size(2) }, "uint8")
  local lp, op, v = lab:contiguous():ptr(), out:ptr(), class + 1
  for k = 0, lab:numel() - 1 do if lp[k] == v then op[k] = 1 end end
  return out
end

-- ---- FSS-1000 ---------------------------------------------------------------------------------

local FSS_OFFSET = { trn = 0, val = 520, test = 760 }

local function ls(dir)
  local out = {}
  local p = io.popen(("ls -1 %s 2>/dev/null"):format(fs.quote(dir)))
  for name in p:lines() do out[#out + 1] = name end
  p:close()
  table.sort(out)
  return out
end

local function open_fss(spec, ds)
  local split = spec.split or "test"
  if not FSS_OFFSET[split] then
    error(("dataset %s: data.split for FSS-1000 is test, val or trn, got %s"):format(spec.name, tostring(split)), 0)
  end
  local path = join(spec.root, ("splits/%s.txt"):format(split))
  local text = fs.read(path)
  if not text then
    error(("dataset %s: %s not found (FSS-1000 keeps data/<category>/ and splits/{trn,val,test}.txt under the "
      .. "root: Matcher's datasets/README.md; pass --data ROOT)"):format(spec.name, path), 0)
  end
  if not fs.is_dir(join(spec.root, "data")) then
    error(("dataset %s: %s is not a directory (FSS-1000's data/<category>/<n>.jpg, <n>.png)"):format(spec.name,
      join(spec.root, "data")), 0)
  end
  -- f.read().split('\n')[:-1]; the '\r' of the CRLF lines Matcher's copy ships is cut (with it the official
  -- code would find no folder at all)
  local pieces = {}
  for piece in (text .. "\n"):gmatch("(.-)\n") do pieces[#pieces + 1] = piece end
  local last = pieces[#pieces]                   -- what [:-1] leaves out: "" after a final newline
  pieces[#pieces] = nil
  if last ~= "" then
    ds.notes[#ds.notes + 1] = ("%s: the last line %q has no newline and is left out, as the official "
      .. "split('\\n')[:-1] leaves it"):format(path, last)
  end
  local cats = {}
  for n, piece in ipairs(pieces) do
    local c = piece:gsub("\r$", "")
    if c == "" then
      ds.notes[#ds.notes + 1] = ("%s: line %d is empty: left out"):format(path, n)
    else
      cats[#cats + 1] = c
    end
  end
  table.sort(cats)
  local offset = FSS_OFFSET[split]
  local base = join(spec.root, "data")
  local np = pyrandom.numpy(ds.seed)
  local first = {}
  for ci, cat in ipairs(cats) do
    local c = first[cat] or offset + ci - 1          -- categories.index(): a repeated one is its first
    if not first[cat] then
      first[cat] = c
      ds.classes[#ds.classes + 1], ds.class_names[c] = c, cat
    end
    local dir = base .. "/" .. cat
    if not fs.is_dir(dir) then
      ds.notes[#ds.notes + 1] = ("%s: not found: class %s has no episodes (its IoU counts as 0 in the mIoU, "
        .. "as the official code counts it)"):format(dir, cat)
    end
    for _, f in ipairs(ls(dir)) do
      local second = f:match("^[^.]*%.([^.]*)")
      if second == "jpg" then
        local q = dir .. "/" .. f
        local function fss_frame(name)
          local id = basename(name):match("^[^.]*")
          return { name = cat .. "/" .. basename(name), image = name, mask = dirname(name) .. "/" .. id .. ".png" }
        end
        -- np.random.choice(range(1, 11), 1, replace=False)[0]: <n>.jpg, n = permutation(10)[0] + 1
        local sup = draw_supports(np, 10, function(j) return dir .. "/" .. tostring(j + 1) .. ".jpg" end, q, ds.shot)
        local supports = {}
        for j, s in ipairs(sup) do supports[j] = fss_frame(s) end
        local k = #ds.items + 1
        ds.items[k] = { id = ("%04d_%s_%s"):format(k, safe_id(cat), safe_id(f:match("^[^.]*"))), index = k,
                        class = c, query = fss_frame(q), supports = supports, image = q }
      end
    end
  end
  ds.split_file = path
end

-- PIL's convert('L') of an RGB image (ITU-R 601-2) >= 128 → 0/1
function M.pil_grey_mask(img) return image.grey_at_least(img, image.PIL_GREY, 128) end

-- ---- LVIS-92i ---------------------------------------------------------------------------------

local function open_lvis(spec, ds)
  local fold = check_int(spec, "fold", 0, 0, 9)
  local path = join(spec.root, spec.split or "lvis_val.pkl")
  if not fs.exists(path) then
    error(("dataset %s: %s not found (LVIS-92i keeps lvis_val.pkl, Matcher's extended annotations, and "
      .. "coco/{train2017,val2017}/ under the root: Matcher's datasets/README.md; pass --data ROOT)"):format(
      spec.name, path), 0)
  end
  local anno = pickle.load(path, { ordered = true })
  local keys = pickle.keys(anno)
  if not keys then error(("dataset %s: %s does not hold a dict of classes"):format(spec.name, path), 0) end
  local cat_ids = {}
  for _, cid in ipairs(keys) do
    local per = anno[cid]
    local names = type(per) == "table" and pickle.keys(per)
    if not names then
      error(("dataset %s: %s: class %s is not a dict of images"):format(spec.name, path, tostring(cid)), 0)
    end
    if #names > ds.shot then cat_ids[#cat_ids + 1] = cid end
  end
  local n = math.floor(#cat_ids / 10)
  if n == 0 then
    error(("dataset %s: %s: %d classes with more than %d images, fewer than the 10 folds"):format(spec.name, path,
      #cat_ids, ds.shot), 0)
  end
  local fold_ids = {}
  for v = 0, n - 1 do fold_ids[v + 1] = cat_ids[fold + 10 * v + 1] end
  ds.fold, ds.split_file, ds.lvis_ids = fold, path, fold_ids
  for i, cid in ipairs(fold_ids) do
    ds.classes[i] = i - 1
    ds.class_names[i - 1] = ("lvis_%s"):format(tostring(cid))
  end
  local np = pyrandom.numpy(ds.seed)
  local names_of = {}
  for idx = 0, 2299 do
    local ci = idx % n
    local cid = fold_ids[ci + 1]
    local names = names_of[cid] or pickle.keys(anno[cid])
    names_of[cid] = names
    local q = names[np:choice1(#names) + 1]
    local sup = draw_supports(np, #names, function(j) return names[j + 1] end, q, ds.shot)
    if not sup then
      error(("dataset %s: %s: class %s has only the image %s: no support can differ from the query"):format(
        spec.name, path, tostring(cid), q), 0)
    end
    local function lvis_frame(name)
      return { name = name, image = join(spec.root, "coco/" .. name), annotations = anno[cid][name],
               mask = ("%s [class %s, image %s]"):format(path, tostring(cid), name) }
    end
    local supports = {}
    for j, s in ipairs(sup) do supports[j] = lvis_frame(s) end
    local k = idx + 1
    ds.items[k] = { id = ("%04d_%s"):format(k, safe_id((basename(q):gsub("%.jpg$", "")))), index = k, class = ci,
                    lvis_id = cid, query = lvis_frame(q), supports = supports, image = join(spec.root, "coco/" .. q) }
  end
end

-- (H, W) 0/1: the union of an LVIS-92i image's annotations of one class
local function lvis_mask(frame, h, w)
  local info = frame.annotations
  local anns = type(info) == "table" and info.annotations
  if type(anns) ~= "table" or #anns == 0 then error(("%s: no annotations"):format(frame.mask), 0) end
  local out = T.zeros({ h, w }, "uint8")
  local op = out:ptr()
  local function add(m)
    local mp = m:ptr()
    for k = 0, h * w - 1 do if mp[k] ~= 0 then op[k] = 1 end end
  end
  for a, ann in ipairs(anns) do
    local seg = type(ann) == "table" and ann.segmentation
    local where = ("%s, annotation %d"):format(frame.mask, a)
    if type(seg) == "table" and seg.counts then
      local ok, rle = pcall(masks.json_to_rle, seg)
      if not ok then error(("%s: %s"):format(where, tostring(rle)), 0) end
      if rle.size[1] ~= h or rle.size[2] ~= w then
        error(("%s: an RLE of %dx%d on a %dx%d image"):format(where, rle.size[2], rle.size[1], w, h), 0)
      end
      add(masks.rle_decode(rle))
    elseif type(seg) == "table" then
      -- frPyObjects on a list of polygons: all boxes [x, y, w, h] when the first has 4 numbers
      local boxes = #seg > 0 and type(seg[1]) == "table" and #seg[1] == 4
      for p, poly in ipairs(seg) do
        if type(poly) ~= "table" or (not boxes and #poly <= 4) or (boxes and #poly ~= 4) then
          error(("%s: polygon %d has %s numbers, which pycocotools' frPyObjects refuses"):format(where, p,
            type(poly) == "table" and tostring(#poly) or "no"), 0)
        end
        local xy = poly
        if boxes then
          local x, y, bw, bh = poly[1], poly[2], poly[3], poly[4]
          xy = { x, y, x, y + bh, x + bw, y + bh, x + bw, y }        -- rleFrBbox
        end
        add(masks.rle_decode(masks.rle_from_polygon(xy, h, w)))
      end
    else
      error(("%s: no polygons or RLE"):format(where), 0)
    end
  end
  return out
end

-- ---- opening -------------------------------------------------------------------------------------

local OPEN = { coco20i = open_coco, fss1000 = open_fss, lvis92i = open_lvis }

-- spec: the `data` section (fmseg.eval.data.spec) → the dataset: items = episodes
-- { id, index, class, query = frame, supports = {frame...} }, frame = { name, image, mask }; classes =
-- the fold's class ids (the AverageMeter's), class_names[id]; notes: what the listing left out.
function M.open(spec)
  local b = spec.benchmark
  if not OPEN[b] then
    error(("dataset %s: data.benchmark must be coco20i, fss1000 or lvis92i for a few-shot dataset, got %s"):format(
      spec.name, tostring(b)), 0)
  end
  if spec.use_original_imgsize then
    error(("dataset %s: data.use_original_imgsize is not supported: Matcher's scripts run without it (main_oss.py "
      .. "asserts its img_size prediction has the query mask's size); leave it unset"):format(spec.name), 0)
  end
  if not fs.is_dir(spec.root) then
    error(("dataset %s: data root %s not found (set data.root or pass --data ROOT; %s's layout: Matcher's "
      .. "datasets/README.md)"):format(spec.name, spec.root, TITLES[b]), 0)
  end
  local ds = setmetatable({ name = spec.name, title = spec.title or spec.name, task = "fewshot", root = spec.root,
                            benchmark = b, items = {}, classes = {}, class_names = {}, notes = {},
                            shot = check_int(spec, "shot", 1, 1),
                            seed = check_int(spec, "seed", 0, 0, 4294967295),
                            img_size = check_int(spec, "img_size", 518, 1) }, Dataset)
  OPEN[b](spec, ds)
  return ds
end

-- ---- one episode ------------------------------------------------------------------------------------

-- frame → its image (H, W, 3) and binary mask (H, W) at the file's size, checked (errors name the file)
function Dataset:frame(item, frame)
  local img = data.read_image(frame.image, "episode " .. item.id)
  local h, w = img:size(1), img:size(2)
  local m
  if self.benchmark == "coco20i" then
    m = coco_mask(frame.mask, item.class)
  elseif self.benchmark == "fss1000" then
    local ok, mi = pcall(image.load, frame.mask)
    if not ok then error(("%s: %s"):format(frame.mask, tostring(mi)), 0) end
    m = M.pil_grey_mask(mi)
  else
    m = lvis_mask(frame, h, w)
  end
  if m:size(1) ~= h or m:size(2) ~= w then
    error(("%s is %dx%d, its image %s %dx%d"):format(frame.mask, m:size(2), m:size(1), frame.image, w, h), 0)
  end
  local mp, any = m:ptr(), false
  for k = 0, h * w - 1 do if mp[k] ~= 0 then any = true; break end end
  if not any then
    local what = self.benchmark == "coco20i" and (" (no pixel of class %d, value %d)"):format(item.class,
      item.class + 1) or ""
    error(("%s: the mask is empty%s"):format(frame.mask, what), 0)
  end
  return img, m
end

-- (H, W) 0/1 → (S, S) uint8 by torch's nearest (the datasets' F.interpolate)
function M.resize_mask(m, s)
  if m:size(1) == s and m:size(2) == s then return m end
  return nn.interpolate(m:float():reshape(1, 1, m:size(1), m:size(2)), s, s, { mode = "nearest" }):reshape(s, s)
    :gt(0.5):byte()
end

-- pred, gt (S, S) 0/1 → {bg, fg} intersections and unions (Evaluator.classify_prediction)
function M.counts(pred, gt)
  local pp, gp = pred:contiguous():ptr(), gt:contiguous():ptr()
  local n, both, p1, g1 = gt:numel(), 0, 0, 0
  for k = 0, n - 1 do
    local p, g = pp[k] ~= 0, gp[k] ~= 0
    if p then p1 = p1 + 1 end
    if g then g1 = g1 + 1 end
    if p and g then both = both + 1 end
  end
  local none = n - p1 - g1 + both                       -- pred 0 and gt 0
  return { none, both }, { n - both, p1 + g1 - both }
end

-- Hands the episode's support (resized as the official loader resizes it,
-- written to temporary PNGs that are removed after) to the recipe.
local function set_support(recipe, state, s, supports)
  local paths, imgs, ms = {}, {}, {}
  local ok, err = pcall(function()
    for j, sp in ipairs(supports) do
      local base = os.tmpname()
      paths[#paths + 1] = base
      local ip, mp = base .. ".image.png", base .. ".mask.png"
      paths[#paths + 1], paths[#paths + 2] = ip, mp
      image.save_png(ip, image.resize_pil(sp.img, s, s, "bilinear"))
      local m = M.resize_mask(sp.mask, s)
      image.save_png(mp, T.stack({ m, m, m }, 3):float():mul(255):byte())
      imgs[j], ms[j] = ip, mp
    end
    if #supports == 1 then
      recipe.set_reference(state, imgs[1], ms[1])
    elseif recipe.set_references then
      recipe.set_references(state, imgs, ms)
    else
      error(("recipe %s takes one reference (set_reference); data.shot %d needs set_references(state, images, "
        .. "masks)"):format(recipe.name, #supports), 0)
    end
  end)
  for _, p in ipairs(paths) do os.remove(p) end
  if not ok then error(err, 0) end
end

-- Episode i: its images and masks read (or the record saying why they
-- cannot be), the support set, the resized query segmented and scored →
-- record { id, index, class, query, supports, intersection = {bg, fg},
-- union = {bg, fg} }, the predicted (S, S) mask.
function M.score(ds, i, session, quiet)
  local item, s = ds.items[i], ds.img_size
  local names = {}
  for j, sp in ipairs(item.supports) do names[j] = sp.name end
  local rec = { id = item.id, index = item.index, class = item.class, query = item.query.name, supports = names }
  local ok, err = pcall(function()
    item.q_img, item.q_mask = ds:frame(item, item.query)
    item.sup = {}
    for j, sp in ipairs(item.supports) do
      local img, m = ds:frame(item, sp)
      item.sup[j] = { img = img, mask = m }
    end
  end)
  if not ok then
    item.q_img, item.q_mask, item.sup = nil, nil, nil
    if not quiet then io.stderr:write(("\neval: skipping %s: %s\n"):format(item.id, tostring(err))) end
    rec.skipped = tostring(err)
    return rec
  end
  local q_img, gt, sup = item.q_img, M.resize_mask(item.q_mask, s), item.sup
  item.q_img, item.q_mask, item.sup = nil, nil, nil
  set_support(session.recipe, session.state, s, sup)
  local query = image.resize_pil(q_img, s, s, "bilinear")
  local result = session:segment(query, { path = item.query.image, stem = item.id, episode = item })
  local pred = oneshot.prediction(result, s, s)
  rec.intersection, rec.union = M.counts(pred, gt)
  return rec, pred
end

-- ---- scores ---------------------------------------------------------------------------------------

-- compact episodes {index, class, inter bg, inter fg, union bg, union fg} (sorted by index), the fold's
-- classes → the metrics fields
local function from_episodes(eps, classes)
  table.sort(eps, function(a, b) return a[1] < b[1] end)
  local buf = {}
  for _, c in ipairs(classes) do buf[c] = { 0, 0, 0, 0, n = 0 } end
  local outside = 0
  for _, e in ipairs(eps) do
    local b = buf[e[2]]
    if b then
      for j = 1, 4 do b[j] = f32(b[j] + e[j + 2]) end     -- float32 index_add_, in episode order
      b.n = b.n + 1
    else
      outside = outside + 1
    end
  end
  if outside > 0 then error(("fewshot: %d episodes of classes outside the fold"):format(outside), 0) end
  local iou, iou_bg, counts, miou = {}, {}, {}, 0
  local si, su = { 0, 0 }, { 0, 0 }
  for k, c in ipairs(classes) do
    local b = buf[c]
    iou_bg[k] = f32(b[1] / math.max(b[3], 1))
    iou[k] = f32(b[2] / math.max(b[4], 1))
    counts[k] = b.n
    miou = miou + iou[k]
    si[1], si[2], su[1], su[2] = si[1] + b[1], si[2] + b[2], su[1] + b[3], su[2] + b[4]
  end
  return { IoU = iou, IoU_bg = iou_bg, episodes_per_class = counts, mIoU = miou / #classes,
           FBIoU = (si[1] / su[1] + si[2] / su[2]) / 2, sums = { intersection = si, union = su } }
end

local function names_list(ds_or_rec)
  local out = {}
  for k, c in ipairs(ds_or_rec.classes) do out[k] = ds_or_rec.class_names[c] or ds_or_rec.class_names[tostring(c)] end
  return out
end

-- records → the metrics record (rec.episodes keeps the counts, for `fmseg merge`)
function M.totals(records, ds)
  local eps = {}
  for _, r in ipairs(records) do
    if not r.skipped then
      eps[#eps + 1] = { r.index, r.class, r.intersection[1], r.intersection[2], r.union[1], r.union[2] }
    end
  end
  local rec = from_episodes(eps, ds.classes)
  rec.task, rec.benchmark, rec.fold, rec.shot, rec.seed, rec.img_size = "fewshot", ds.benchmark, ds.fold, ds.shot,
    ds.seed, ds.img_size
  rec.classes, rec.class_names = ds.classes, names_list(ds)
  rec.episodes, rec.scored = eps, #eps
  rec.skipped = skipped.collect(records)
  rec.notes = ds.notes
  return rec
end

-- shards' metrics records → one
function M.merge(recs)
  local base, eps = recs[1], {}
  for _, r in ipairs(recs) do
    for _, e in ipairs(r.episodes or {}) do eps[#eps + 1] = e end
  end
  local rec = from_episodes(eps, base.classes)
  for _, k in ipairs({ "task", "benchmark", "fold", "shot", "seed", "img_size", "classes", "class_names", "notes" }) do
    rec[k] = base[k]
  end
  rec.episodes, rec.scored = eps, #eps
  rec.skipped = skipped.merge(recs)
  return rec
end

function M.summary_lines(rec)
  local lines = { "| Class | id | episodes | IoU |", "| --- | ---: | ---: | ---: |" }
  for k, c in ipairs(rec.classes) do
    lines[#lines + 1] = ("| %s | %s | %d | %.2f |"):format(tostring(rec.class_names[k]), tostring(c),
      rec.episodes_per_class[k], 100 * rec.IoU[k])
  end
  lines[#lines + 1] = ""
  local fold = rec.fold and rec.fold ~= require("fmseg.io.json").null and (" fold %d"):format(rec.fold) or ""
  lines[#lines + 1] = ("mIoU %.2f  FB-IoU %.2f (%s%s, %d-shot: %d episodes scored, %d classes; at %d x %d)"):format(
    100 * rec.mIoU, 100 * rec.FBIoU, TITLES[rec.benchmark] or tostring(rec.benchmark), fold, rec.shot or 1,
    rec.scored or 0, #rec.classes, rec.img_size or 0, rec.img_size or 0)
  for _, n in ipairs(rec.notes or {}) do
    lines[#lines + 1] = ""
    lines[#lines + 1] = "Note: " .. n
  end
  return skipped.lines(rec.skipped, lines)
end

return M
