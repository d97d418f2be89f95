-- fmseg.eval.prepare_ade847 — ADE20K-Full's 847-class validation set as
-- detectron2-style datasets/prepare_ade20k_full_sem_seg.py writes it
-- (MaskFormer's, for both splits; ov-seg's copy, validation only, which
-- CAT-Seg ships as datasets/prepare_ade20k_full.py, made
-- tests/fixtures/prepare/ade847), from the ADE20K_2021_17_01 release as it
-- unpacks:
--
--   images: the entries of index_ade20k.pkl whose file name's second "_"
--     field is "val" (ADE_val_<n>.jpg). The index is a Python pickle (with
--     numpy arrays inside) that only lists the files of images/ with their
--     folders, so images/ is scanned here for *.jpg under the same rule;
--   loadAde20K: the class of a pixel of <name>_seg.png is
--     (R / 10).astype(int32) * 256 + G;
--   a short side over 512 resizes both to 512 and
--     round(long / short * 512) (Python's round: half to even), the image
--     with cv2.INTER_LINEAR, the classes with cv2.INTER_NEAREST;
--   classes: the 847 ADE ids of ADE20K_SEM_SEG_FULL_CATEGORIES become
--     their trainId 0..846, every other value 65535;
--   images_detectron2/validation/<name>.jpg, Image.fromarray(img).save():
--     PIL's JPEG encoder at its default quality 75; here stb's at 75 (the
--     same quantisation tables and 4:2:0, another DCT: the pixels written
--     are the official's, the JPEG bytes are not);
--   annotations_detectron2/validation/<name>.tif: a 16-bit TIFF
--     (Image.fromarray(uint16).save, as image.save_tiff16 writes it).
--
-- Like the original, only the validation images are converted. Where it
-- would stop at the first bad file (an exception), this names the file,
-- converts the rest and reports it in the summary.
local fs = require("fmseg.io.fs")
local image = require("fmseg.image")
local data = require("fmseg.eval.data")

local M = {}

-- ADE20K_SEM_SEG_FULL_CATEGORIES' "id" by trainId (the first is trainId 0)
M.ADE_IDS = {
  2978, 312, 2420, 2855, 2131, 976, 447, 165, 2377, 838, 350, 1831, 1125, 3055, 401, 1610, 1910, 2684, 471, 687,
  774, 2473, 2264, 1735, 2994, 1564, 1276, 2178, 2329, 57, 907, 913, 1395, 2138, 2272, 2128, 724, 155, 2053, 2380,
  689, 1788, 3087, 2530, 581, 2388, 2985, 2454, 2096, 137, 294, 212, 2185, 524, 2212, 943, 1869, 2251, 2793, 2423,
  1121, 266, 1948, 1744, 783, 571, 627, 629, 491, 1374, 223, 3016, 2598, 978, 239, 608, 236, 2531, 2616, 591,
  327, 2679, 1451, 181, 420, 2821, 1023, 855, 2733, 2928, 1240, 77, 1969, 2880, 14, 1936, 2828, 631, 103, 3144,
  308, 1282, 38, 1563, 29, 480, 2569, 247, 187, 778, 2243, 1941, 2833, 120, 95, 2836, 1087, 868, 1401, 220,
  47, 843, 123, 2537, 1927, 2337, 1702, 64, 249, 642, 1981, 609, 2840, 2586, 1393, 2704, 1304, 146, 1494, 2739,
  389, 1551, 131, 738, 161, 747, 1919, 3109, 2179, 2989, 206, 1930, 1002, 2254, 1708, 2526, 160, 2901, 2262, 44,
  597, 2235, 1260, 682, 2151, 3107, 432, 1098, 2932, 461, 410, 2046, 533, 1481, 1858, 894, 1322, 1891, 1756, 49,
  1272, 1229, 2850, 1784, 2962, 259, 319, 954, 1974, 1013, 2356, 97, 318, 592, 2885, 1017, 851, 1407, 1332, 303,
  2714, 1924, 1346, 1081, 1583, 2727, 2509, 2123, 602, 202, 10, 490, 530, 2213, 1884, 2934, 2687, 387, 2668, 982,
  2547, 1474, 877, 1391, 414, 698, 2019, 2422, 3010, 1139, 753, 1747, 2175, 1301, 1033, 1789, 2939, 2730, 1652, 90,
  1349, 2830, 1485, 2370, 2155, 118, 1402, 1957, 3130, 1197, 52, 2688, 96, 762, 772, 1857, 2315, 1016, 643, 3105,
  1849, 791, 349, 6, 3114, 1587, 1233, 559, 1223, 3049, 1943, 853, 709, 1390, 2748, 2007, 1546, 1513, 2600, 2538,
  1790, 194, 326, 2877, 594, 2036, 1662, 2366, 1754, 418, 2553, 1951, 1963, 918, 2086, 997, 2731, 704, 1365, 569,
  3108, 948, 839, 63, 1305, 378, 2362, 2734, 2982, 2398, 1119, 382, 1141, 1805, 3102, 2341, 1131, 2316, 2626, 3104,
  198, 1896, 2800, 190, 3131, 1463, 357, 929, 209, 912, 1164, 1509, 2539, 3116, 2615, 1644, 818, 242, 2217, 2347,
  2686, 2300, 572, 789, 358, 2443, 101, 2969, 2692, 606, 2339, 1533, 2060, 1782, 495, 371, 2707, 889, 3156, 2683,
  1499, 1135, 1619, 125, 2838, 2792, 1695, 746, 1343, 1370, 2858, 145, 2565, 1892, 1103, 286, 170, 3073, 922, 1655,
  1602, 2160, 1151, 2176, 2239, 132, 394, 1424, 607, 700, 116, 1425, 2676, 141, 2360, 2449, 897, 317, 2228, 2351,
  1543, 656, 1088, 373, 2472, 2892, 1740, 3067, 1367, 188, 79, 1633, 1885, 677, 1779, 1297, 2334, 3027, 2735, 1791,
  2405, 1748, 2983, 3035, 2824, 2168, 385, 2148, 2465, 175, 390, 268, 2722, 2857, 3088, 2926, 2782, 1378, 1934, 2072,
  2889, 944, 1158, 1383, 867, 2145, 1915, 361, 402, 482, 2761, 300, 1554, 636, 260, 1186, 871, 2859, 2103, 208,
  2236, 2012, 2462, 1462, 2832, 2617, 1024, 1129, 18, 376, 134, 407, 434, 2017, 2717, 2005, 2993, 1545, 1445, 2831,
  1161, 2411, 2949, 1769, 552, 2327, 939, 3013, 1986, 1486, 2723, 1549, 2649, 1020, 392, 422, 1419, 2099, 2464, 3058,
  430, 675, 2941, 2955, 2355, 840, 32, 2338, 1232, 2834, 2991, 2879, 444, 1657, 2246, 296, 245, 2661, 1202, 1714,
  251, 1095, 1828, 311, 2732, 947, 2115, 2738, 2525, 2194, 634, 740, 2682, 2020, 1156, 1036, 1295, 1181, 3037, 1614,
  736, 893, 2047, 1274, 1361, 3036, 2606, 2797, 2022, 2876, 2758, 472, 3028, 882, 1189, 743, 3122, 2401, 468, 1061,
  1523, 3059, 2843, 2853, 1529, 214, 3032, 3071, 277, 813, 426, 1039, 727, 1508, 2490, 2299, 768, 1172, 537, 1847,
  1664, 1110, 1014, 662, 121, 227, 2410, 2165, 2696, 3005, 1231, 635, 292, 2690, 65, 2607, 2574, 1188, 456, 2913,
  459, 1955, 827, 1111, 2412, 2997, 528, 366, 1863, 500, 1001, 1958, 1441, 809, 210, 435, 718, 1674, 388, 1572,
  1584, 1944, 674, 99, 2352, 1019, 1763, 185, 554, 1066, 2508, 951, 2822, 415, 297, 1914, 2619, 1338, 2505, 955,
  2786, 238, 3000, 2763, 299, 822, 1288, 3101, 2894, 992, 489, 2157, 2309, 1576, 1810, 2964, 2662, 2087, 1569, 503,
  1505, 1468, 1613, 1138, 1256, 2715, 2846, 477, 2576, 108, 2245, 1162, 2149, 2183, 858, 1324, 1055, 1741, 149, 615,
  825, 2143, 304, 283, 2322, 3017, 2510, 1960, 265, 2282, 2184, 1461, 3113, 2372, 2166, 232, 693, 1945, 3039, 2494,
  1908, 2827, 280, 2950, 1044, 288, 2863, 1342, 2409, 1258, 2249, 2862, 920, 1607, 2802, 610, 3129, 1108, 2823, 476,
  2641, 2788, 2070, 1368, 2903, 699, 2844, 942, 2663, 457, 2701, 2540, 2231, 2746, 1738, 2350, 2808, 2025, 2541, 2156,
  126, 2512, 831, 2503, 2039, 2774, 886, 919, 2240, 2636, 963, 1218, 1406, 1420, 526, 2639, 975, 1921, 2305, 1193,
  2517, 2809, 1647, 314, 2560, 545, 1345, 775, 603, 1163, 1641, 1678, 2450, 2915, 42, 2242, 2741, 1143, 862, 1654,
  1826, 1689, 3124, 2710, 152, 549, 360, 1982, 1478, 2203, 2612, 2956, 2681, 437, 2171, 1933, 3110, 1824, 2803, 234,
  764, 177, 817, 3145, 1262, 864, 2359, 2992, 1725, 2667, 2484, 1133, 1667, 2847, 932, 1392, 2573, 2140, 1046, 264,
  2927, 2752, 679, 2493, 1658, 2466, 1057, 2444, 2093, 2248, 2432, 726, 816, 1171, 2766, 2900, 2313, 488, 2265, 2043,
  332, 1771, 2320, 2646, 1089, 2826, 3148,
}

M.MAX_SIZE = 512   -- the script's max_size
M.JPEG_QUALITY = 75   -- PIL's default for Image.save(".jpg")


-- The size the script resizes an h x w image to, or nil when it keeps it:
-- only when both sides are over max_size.
function M.target_size(h, w)
  local max = M.MAX_SIZE
  if w >= h and h > max then return max, image.round_half_even(w / h * max) end
  if h >= w and w > max then return image.round_half_even(h / w * max), max end
  return nil
end

-- ADE object class (R / 10 * 256 + G, 0..6655) -> trainId or 65535
local function class_lut()
  local lut = {}
  for v = 0, 25 * 256 + 255 do lut[v] = 65535 end
  for train, id in ipairs(M.ADE_IDS) do lut[id] = train - 1 end
  return lut
end

-- (H, W, 3) uint8 of a _seg.png -> (H, W) int32 ADE object classes
local function object_classes(seg)
  local h, w = seg:size(1), seg:size(2)
  local out = require("fmseg.tensor").new({ h, w }, "int32")
  local s, o = seg:contiguous():ptr(), out:ptr()
  for i = 0, h * w - 1 do o[i] = math.floor(s[3 * i] / 10) * 256 + s[3 * i + 1] end
  return out
end

-- The (H', W', 3) image the script saves (before JPEG encoding) from the
-- (H, W, 3) one it reads.
function M.convert_image(img)
  local h, w = img:size(1), img:size(2)
  local oh, ow = M.target_size(h, w)
  if oh then img = image.resize_cv2(img, oh, ow) end
  return img
end

-- The (H', W') int32 trainIds (65535 elsewhere) it saves from the (H, W, 3)
-- _seg.png of an h x w image; lut: class_lut(), built when not given.
function M.convert_labels(seg, h, w, lut)
  local lab = object_classes(seg)
  local oh, ow = M.target_size(h, w)
  if oh then lab = image.resize_nearest_cv2(lab, oh, ow) end
  local ok, out = pcall(data.remap, lab, lut or class_lut())
  if not ok then error(tostring(out):gsub("^labels_remap: ", ""), 0) end
  return out
end

-- The script's split rule: file_name.split("_")[1] == "val"
local function is_val(name) return name:match("^[^_]*_([^_]*)") == "val" end

function M.convert(job)
  local prepare = require("fmseg.eval.prepare")
  local raw, root, rep = job.raw, job.root, job.rep
  local images_dir = prepare.join(raw, "images")
  if not fs.is_dir(images_dir) then
    error(("prepare ade847: %s not found (expected %s)"):format(images_dir, job.entry.layout), 0)
  end
  local found, seen = {}, {}
  for _, rel in ipairs(prepare.scan(images_dir, ".jpg")) do
    local name = rel:match("[^/]*$")
    if is_val(name) then
      if seen[name] then
        rep.problem(("%s: same file name as %s; the outputs are flat, only the first is converted"):format(
          prepare.join(images_dir, rel), prepare.join(images_dir, seen[name])))
      else
        seen[name] = rel
        found[#found + 1] = { name = name, src = prepare.join(images_dir, rel) }
      end
    end
  end
  if #found == 0 then
    error(("prepare ade847: no ADE_val_*.jpg under %s (expected %s)"):format(images_dir, job.entry.layout), 0)
  end
  local lut = class_lut()
  local image_jobs, label_jobs = {}, {}
  for _, f in ipairs(found) do
    local seg = f.src:gsub("%.jpg$", "_seg.png")
    image_jobs[#image_jobs + 1] = {
      source = f.src, target = prepare.join(root, "images_detectron2/validation/" .. f.name),
      write = function(tmp) image.save_jpg(tmp, M.convert_image(image.load(f.src)), M.JPEG_QUALITY) end }
    label_jobs[#label_jobs + 1] = {
      source = seg, target = prepare.join(root, "annotations_detectron2/validation/" .. f.name:gsub("%.jpg$", ".tif")),
      write = function(tmp)
        if not fs.exists(seg) then error("not found (each ADE_val_<n>.jpg has its <name>_seg.png beside it)", 0) end
        local img = image.load(f.src)
        image.save_tiff16(tmp, M.convert_labels(image.load(seg), img:size(1), img:size(2), lut))
      end }
  end
  local parts = {}
  parts[1] = prepare.run_jobs("ade847 images", image_jobs, rep, job.quiet)
  parts[1].what = "images_detectron2/validation/<name>.jpg"
  parts[2] = prepare.run_jobs("ade847 labels", label_jobs, rep, job.quiet)
  parts[2].what = "annotations_detectron2/validation/<name>.tif"
  return parts
end

return M
