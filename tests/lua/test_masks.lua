-- test_masks.lua — the Lua face of the mask operations (fmseg.masks):
-- conversions, 1-based indices, RLE records and JSON, overlays. The C
-- kernels themselves are checked in tests/c/test_masks.c.
local tap = require("tap")
local T = require("fmseg.tensor")
local masks = require("fmseg.masks")
local json = require("fmseg.io.json")

local function same(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

local function list(t) return table.concat(t, ",") end

-- argmax / threshold ---------------------------------------------------------------
do
  -- channel 1 wins pixel (1,1), channel 0 pixel (1,2) (tie -> first)
  local x = T.from_table({ { { 0, 3 } }, { { 2, 3 } } })
  tap.eq(list(masks.argmax_channels(x):values()), "1,0", "argmax_channels: 0-based channel indices")
  local m = masks.threshold(T.from_table({ { -1, 0, 0.5 } }), 0)
  tap.eq(m:dtype(), "uint8", "threshold gives uint8")
  tap.eq(list(m:values()), "0,0,1", "threshold: strictly greater")
end

-- components and small regions ----------------------------------------------------
do
  local m = T.from_table({ { 1, 0, 1 }, { 0, 1, 0 } }, "uint8")
  local lab8, n8 = masks.connected_components(m)
  local _, n4 = masks.connected_components(m, 4)
  tap.eq(n8, 1, "connected_components: 8-connected by default (diagonals join)")
  tap.eq(n4, 3, "connected_components: 4-connected keeps diagonals apart")
  tap.eq(list(masks.label_areas(lab8, n8):values()), "3,3", "label_areas")

  -- float input is converted; one 1-pixel hole in a 3x3 block
  local ring = T.from_table({ { 1, 1, 1 }, { 1, 0, 1 }, { 1, 1, 1 } })
  local filled, changed = masks.remove_small_regions(ring, 2, "holes")
  tap.ok(changed and list(filled:values()) == "1,1,1,1,1,1,1,1,1",
         "remove_small_regions holes: fills the hole and says so")
  local same_mask, changed2 = masks.remove_small_regions(ring, 1, "holes")
  tap.ok(not changed2 and list(same_mask:values()) == "1,1,1,1,0,1,1,1,1", "remove_small_regions: nothing small")
  tap.raises(function() masks.remove_small_regions(ring, 2, "lakes") end, "\"holes\" or \"islands\"",
             "remove_small_regions: unknown mode names the choices")
end

-- RLE --------------------------------------------------------------------------------
do
  -- 3x2, column-major: col 0 = 1,1,0; col 1 = 0,1,1 -> 0 | 1 1 | 0 | 1 1 -> [0, 2, 2, 2]
  local m = T.from_table({ { 1, 0 }, { 1, 1 }, { 0, 1 } }, "uint8")
  local rle = masks.rle_encode(m)
  tap.ok(same(rle.size, { 3, 2 }) and same(rle.counts, { 0, 2, 2, 2 }), "rle_encode: size and counts",
         list(rle.counts))
  tap.eq(masks.rle_area(rle), 4, "rle_area")
  tap.eq(list(masks.rle_decode(rle):values()), list(m:values()), "rle_decode round trip")

  -- compressed form: 0 2 2 2 -> '0' '2' '2' then 2 - 2 = 0 -> '0'
  local coco = masks.rle_to_json(rle)
  tap.eq(coco.counts, "0220", "rle_to_json: pycocotools counts string")
  local text = json.encode({ segmentation = coco })
  local back = masks.json_to_rle(json.decode(text).segmentation)
  tap.ok(same(back.counts, rle.counts) and same(back.size, rle.size), "json_to_rle: back from a decoded record")
  tap.ok(same(masks.json_to_rle(json.decode(json.encode(rle))).counts, rle.counts), "json_to_rle: uncompressed JSON text")
  tap.eq(list(masks.rle_decode(coco):values()), list(m:values()), "rle_decode takes compressed counts too")
  tap.raises(function() masks.json_to_rle({ size = { 2, 2 }, counts = "0220" }) end, "size 2x2 has 4 pixels",
             "json_to_rle: size that does not match the counts")
  tap.raises(function() masks.rle_decode({ size = { 3, 2 }, counts = "0 2" }) end, "outside",
             "rle_decode: bad compressed string")

  -- batches: (N, H, W) -> list
  local batch = T.stack({ m, T.new({ 3, 2 }, "uint8") })
  local rles = masks.rle_encode(batch)
  tap.ok(#rles == 2 and same(rles[2].counts, { 6 }), "rle_encode: a batch gives a list; empty mask is [h*w]")

  -- paint
  local labels = T.full({ 3, 2 }, -1, "int32")
  masks.rle_paint(labels, rle, 5)
  tap.eq(list(labels:values()), "5,-1,5,5,-1,5", "rle_paint")
end

-- boxes, IoU, NMS --------------------------------------------------------------------
do
  local m = T.new({ 2, 4, 5 }, "uint8")
  m:set(1, 2, 3, 1); m:set(1, 4, 1, 1)     -- (row 2, col 3), (row 4, col 1), 1-based
  local boxes = masks.masks_to_boxes(m)
  tap.eq(list(boxes:values()), "0,1,2,3,0,0,0,0", "masks_to_boxes: XYXY, empty -> zeros")
  tap.eq(list(masks.xyxy_to_xywh(boxes):values()), "0,1,2,2,0,0,0,0", "xyxy_to_xywh")
  tap.eq(list(masks.masks_to_boxes(m:select(1, 1)):shape()), "4", "masks_to_boxes: one mask -> (4)")

  local b = T.from_table({ { 0, 0, 10, 10 }, { 1, 1, 11, 11 }, { 20, 20, 30, 30 } })
  local iou = masks.box_iou(b, b)
  tap.near(iou:select(1, 1), T.from_table({ 1, 81 / 119, 0 }), 1e-6, "box_iou")
  local s = T.from_table({ 0.5, 0.9, 0.1 })
  tap.eq(list(masks.nms(b, s, 0.5)), "2,3", "nms: 1-based indices by score")
  tap.eq(list(masks.nms(b, s, 0.7)), "2,1,3", "nms: below the threshold all stay")
  tap.eq(list(masks.nms(b, s, 0.5, T.from_table({ 1, 0, 0 }, "int32"))), "2,1,3", "nms: categories")
  tap.eq(#masks.nms(T.new({ 0, 4 }), T.new({ 0 }), 0.5), 0, "nms: no boxes")

  local logits = T.from_table({ { { 2, 0.5 }, { -0.5, -2 } } })
  tap.near(masks.stability_score(logits, 0, 1), T.from_table({ 1 / 3 }), 1e-7, "stability_score: 1 of 3")

  local near = masks.near_crop_edge(T.from_table({ { 0, 50, 50, 100 }, { 40, 0, 150, 199 } }),
                                    { 100, 0, 300, 200 }, { 0, 0, 400, 200 })
  tap.eq(list(near:values()), "1,0", "near_crop_edge")
  tap.raises(function() masks.near_crop_edge(b, { 0, 0 }, { 0, 0, 1, 1 }) end, "{x0, y0, x1, y1}",
             "near_crop_edge: short crop box")
end

-- gather, uncrop, distance, morphology ------------------------------------------------
do
  local t = T.from_table({ { 1, 2 }, { 3, 4 }, { 5, 6 } })
  tap.eq(list(masks.index_select(t, { 3, 1 }):values()), "5,6,1,2", "index_select: 1-based rows")

  local crop = T.ones({ 1, 2, 2 }, "uint8")
  local full = masks.uncrop_masks(crop, { 1, 0, 3, 2 }, 3, 4)
  tap.eq(list(full:values()), "0,1,1,0,0,1,1,0,0,0,0,0", "uncrop_masks: pads to the image")

  local d = masks.distance_transform(T.from_table({ { 0, 1, 1, 1 } }))
  tap.eq(list(d:values()), "0,1,2,3", "distance_transform")
  local dot = T.new({ 3, 3 }, "uint8"); dot:set(2, 2, 1)
  tap.eq(list(masks.dilate(dot, 1, "cross"):values()), "0,1,0,1,1,1,0,1,0", "dilate cross")
  tap.eq(masks.dilate(dot, 1):float():sum(), 9, "dilate square (default)")
  -- outside the image does not erode: a full 3x3 stays full, a centred
  -- 3x3 block in a 5x5 image shrinks back to its centre
  tap.eq(masks.erode(masks.dilate(dot, 1), 1):float():sum(), 9, "erode ignores the border")
  local dot5 = T.new({ 5, 5 }, "uint8"); dot5:set(3, 3, 1)
  local back = masks.erode(masks.dilate(dot5, 1), 1)
  tap.ok(back:float():sum() == 1 and back:get(3, 3) == 1, "erode undoes the square dilation")
end

-- overlay ---------------------------------------------------------------------------------
do
  local img = T.full({ 4, 4, 3 }, 100, "uint8")
  local big = T.ones({ 4, 4 }, "uint8")
  local small = T.new({ 4, 4 }, "uint8"); small:set(1, 1, 1)
  -- the small mask comes first in the list but is drawn on top of the big one
  local recs = { { segmentation = masks.rle_encode(small), area = 1 },
                 { segmentation = masks.rle_encode(big), area = 16 } }
  local out = masks.overlay(img, recs, { alpha = 1, seed = 7 })
  local pal = masks.random_palette(2, 7)
  tap.ok(out:get(1, 1, 1) == pal[1] and out:get(1, 1, 2) == pal[2] and out:get(1, 1, 3) == pal[3],
         "overlay: the small mask's colour on its pixel")
  tap.ok(out:get(4, 4, 1) == pal[4] and out:get(4, 4, 3) == pal[6], "overlay: the big mask's colour elsewhere")
  tap.eq(img:get(1, 1, 1), 100, "overlay: the input image is untouched")
  local again = masks.overlay(img, recs, { alpha = 1, seed = 7 })
  tap.eq(list(again:values()), list(out:values()), "overlay: deterministic for a seed")
  tap.raises(function() masks.overlay(T.new({ 2, 2, 3 }, "uint8"), recs) end, "the image 2x2",
             "overlay: mask size must match the image")
end

-- one instance's record fields
do
  local m = T.zeros({ 6, 8 }, "uint8")
  m:narrow(1, 2, 3):narrow(2, 4, 4):fill(1)                 -- rows 1..3, columns 3..6 (0-based)
  local r = masks.instance_record(m)
  tap.eq(r.area, 12, "instance_record: the area")
  tap.eq(table.concat(r.bbox, " "), "3 1 3 2", "instance_record: bbox XYWH from the inclusive corners (segment-anything's)")
  tap.eq(masks.rle_area(masks.json_to_rle(r.segmentation)), 12, "instance_record: the segmentation decodes to the mask")
end

os.exit(tap.done())
