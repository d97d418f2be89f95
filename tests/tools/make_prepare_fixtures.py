#!/usr/bin/python3
"""Reference fixtures for `fmseg prepare` (tests/lua/test_prepare.lua).

Writes tiny synthetic raw datasets in the real public layouts under
tests/fixtures/prepare/<case>/raw/ and, beside them in expected/, what the
official converters write from them, running their own code unmodified:

  context     open-mmlab/mmsegmentation tools/dataset_converters/pascal_context.py
              (commit 2b6a1aafbf40c8cf2501743e9d6fd9e611e2889d), main() on
              VOCdevkit/VOC2010 + trainval_merged.json, with
              zhanghang1989/detail-api PythonAPI (commit
              568ef44d6c82154e25329d25fb815649b12314a5, built in place:
              `python3 setup.py build_ext --inplace`); the RLE strings of
              the synthetic JSON come from detail's own mask.encode.
  coco        mmsegmentation tools/dataset_converters/coco_stuff164k.py
              (commit b7fcd9e5835ed93c3f144b1d6e88c08bb1bdc546; its table
              and convert_to_trainID) and wangf3014/SCLIP
              datasets/cvt_coco_object.py (commit
              b56bd3014b9e8a3ee3450bcfc53700a67d627b7a), convert_to_trainID
              on stuffthingmaps-style annotations/{train2017,val2017}/<id>.png.
  cityscapes  mcordts/cityscapesScripts preparation/json2labelImg.py (commit
              0bcc4a72549590fd80d71d8465be3a0c4b1c06e8) on
              *_gtFine_polygons.json, once with "ids" (the raw
              *_gtFine_labelIds.png, as gtFine_trainvaltest.zip ships them)
              and once with "trainIds" (the expected *_labelTrainIds.png:
              what mmsegmentation's cityscapes.py writes from the polygons).

  ade847      facebookresearch/ov-seg datasets/prepare_ade20k_full_sem_seg.py
              (commit 36f49d496714998058d115ffb6172d9d84c59065; the file last
              changed in 2a3a047973f9db3d3695d01098351f251ffc362e; byte for
              byte cvlab-kaist/CAT-Seg's datasets/prepare_ade20k_full.py at
              6d3a188af95165147fe2f34a8237fa7d2633e784), run as
              __main__ on ADE20K_2021_17_01 with an index_ade20k.pkl of the
              two lists it reads (folder, filename). The images are PNG
              bytes under the release's .jpg names, so that no JPEG decoder
              stands between the two sides; Image.save is wrapped to keep
              what the script hands PIL's JPEG encoder (expected/pre_jpeg/).
  context459  the same commit's datasets/prepare_pascal_context.py (its
              convert_pc459 is CAT-Seg's prepare_pascal_context_459.py's) on
              VOC2010 with trainval/<id>.mat written by scipy.io.savemat
              (compressed, plain, two variables) and by hand (big-endian),
              pascalcontext_val.txt, and for its 59-class half a labels.txt
              and 59_labels.txt (not committed: fmseg does not read them).
  tiff        TIFF files for core/tiff.c from PIL (with libtiff for PackBits
              and strips) and tifffile, with their values (values.json).

Official files over 64 KB are kept gzip'd (gzip -dc gives them back).

Only the names the converters import from mmcv / mmengine (mkdir_or_exist,
track_progress, track_parallel_progress) and cityscapesScripts' unused
pyquaternion are stubbed. Nothing fetched is copied into this repository.

    /usr/bin/python3 tests/tools/make_prepare_fixtures.py \\
        --mmseg DIR_WITH_pascal_context.py_AND_coco_stuff164k.py \\
        --detail-api /path/to/detail-api/PythonAPI \\
        --sclip /path/to/SCLIP --cityscapes-scripts /path/to/cityscapesScripts \\
        --cocoapi /path/to/cocoapi/PythonAPI --ov-seg /path/to/ov-seg
    # one or more cases alone:  --only ade847 context459 tiff --ov-seg /path/to/ov-seg

polygons.json: pycocotools' frPyObjects (cocodataset/cocoapi commit
8c9bcc3cf640524c4c20a9c40e89cb6a2f2fa0e9, built in place) on convex,
concave, self-crossing, self-touching, repeated-point and out-of-image
polygons, for core/masks.c's fm_rle_from_polygon.
"""
import argparse
import ast
import gzip
import importlib.util
import json
import os
import pickle
import runpy
import shutil
import struct
import sys
import tempfile
import types

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "prepare")
RNG = np.random.RandomState(17)


def stub_frameworks():
    def mkdir_or_exist(d):
        os.makedirs(d, exist_ok=True)

    def track_progress(func, tasks):
        return [func(t) for t in tasks]

    def track_parallel_progress(func, tasks, nproc=1):
        return [func(t) for t in tasks]

    utils = types.ModuleType("mmengine.utils")
    utils.mkdir_or_exist, utils.track_progress = mkdir_or_exist, track_progress
    utils.track_parallel_progress = track_parallel_progress
    mmengine = types.ModuleType("mmengine")
    mmengine.utils = utils
    mmcv = types.ModuleType("mmcv")
    mmcv.mkdir_or_exist, mmcv.track_progress = mkdir_or_exist, track_progress
    mmcv.track_parallel_progress = track_parallel_progress
    pyq = types.ModuleType("pyquaternion")
    pyq.Quaternion = object
    sys.modules.update({"mmengine": mmengine, "mmengine.utils": utils, "mmcv": mmcv, "pyquaternion": pyq})


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_jpeg(path, h, w):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(RNG.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(path, quality=50)


def grey_png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def fresh(case):
    d = os.path.join(OUT, case)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


# ---- PASCAL Context ------------------------------------------------------------------

CONTEXT_IDS = [0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284,
               158, 159, 416, 33, 162, 420, 454, 295, 296, 427, 44, 45, 46, 308, 59,
               440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355,
               85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115]


def shape_mask(h, w, kind):
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "rect":
        y0, x0 = RNG.randint(0, h - 2), RNG.randint(0, w - 2)
        return (yy >= y0) & (yy < y0 + RNG.randint(2, h)) & (xx >= x0) & (xx < x0 + RNG.randint(2, w))
    if kind == "disc":
        cy, cx, r = RNG.uniform(0, h), RNG.uniform(0, w), RNG.uniform(2, max(h, w) / 2)
        return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    if kind == "noise":
        return RNG.rand(h, w) < 0.3
    if kind == "full":
        return np.ones((h, w), bool)
    return np.zeros((h, w), bool)        # empty


def make_context(args):
    sys.path.insert(0, os.path.abspath(args.detail_api))
    from detail import mask as dmask
    case = fresh("context")
    raw = os.path.join(case, "raw", "VOC2010")
    sizes = [("2008_000002", 9, 13, "train"), ("2008_000003", 11, 7, "val"), ("2008_000007", 16, 12, "train"),
             ("2009_000012", 8, 8, "val"), ("2010_000001", 10, 14, "val"), ("2010_000005", 7, 9, "test")]
    images, annos, aid = [], [], 100
    kinds = ["full", "rect", "disc", "noise", "rect", "empty", "disc", "rect"]
    for n, (name, h, w, phase) in enumerate(sizes):
        tiny_jpeg(os.path.join(raw, "JPEGImages", name + ".jpg"), h, w)
        image_id = int(name[:4] + name[5:])
        images.append({"file_name": name + ".jpg", "image_id": image_id, "height": h, "width": w, "phase": phase})
        for k in range(3 + n % 3):
            m = shape_mask(h, w, kinds[(n + k) % len(kinds)] if k else "rect")
            rle = dmask.encode(np.asfortranarray(m.astype(np.uint8)))
            cat = int(CONTEXT_IDS[RNG.randint(1, len(CONTEXT_IDS))])
            if n == 0 and k == 1:
                cat = 458                       # the largest id: beyond uint8
            annos.append({"id": aid, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                          "area": int(m.sum()), "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}})
            aid += 1
    # every class once: pixel k (row-major) of a 6x10 train image is painted CONTEXT_IDS[k]
    tiny_jpeg(os.path.join(raw, "JPEGImages", "2008_000008.jpg"), 6, 10)
    images.append({"file_name": "2008_000008.jpg", "image_id": 2008000008, "height": 6, "width": 10,
                   "phase": "train"})
    for k, cat in enumerate(CONTEXT_IDS[1:], 1):
        m = np.zeros((6, 10), np.uint8)
        m.flat[k] = 1
        annos.append({"id": aid, "image_id": 2008000008, "category_id": cat, "iscrowd": 0, "area": 1,
                      "segmentation": {"size": [6, 10], "counts": dmask.encode(np.asfortranarray(m))["counts"].decode()}})
        aid += 1
    # a repeated id: Detail's dict keeps the first one's place, the last one's contents
    dup = dict(annos[1])
    m = shape_mask(sizes[0][1], sizes[0][2], "disc")
    dup.update(category_id=2, segmentation={"size": [sizes[0][1], sizes[0][2]],
                                            "counts": dmask.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()})
    annos.append(dup)
    cats = [{"category_id": c, "name": "c%d" % c, "supercategory": "object", "onlysemantic": 0, "parts": []}
            for c in sorted(set(CONTEXT_IDS[1:]))]
    doc = {"info": {}, "images": images, "annos_segmentation": annos, "categories": cats, "parts": [],
           "annos_occlusion": [], "annos_boundary": []}
    with open(os.path.join(raw, "trainval_merged.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))

    conv = load(os.path.join(args.mmseg, "pascal_context.py"), "mmseg_pascal_context")
    with tempfile.TemporaryDirectory() as tmp:
        devkit = os.path.join(tmp, "VOCdevkit")
        shutil.copytree(raw, os.path.join(devkit, "VOC2010"))
        sys.argv = ["pascal_context.py", devkit, os.path.join(devkit, "VOC2010", "trainval_merged.json")]
        conv.main()
        exp = os.path.join(case, "expected")
        os.makedirs(exp)
        for sub in ["SegmentationClassContext", "ImageSets"]:
            shutil.copytree(os.path.join(devkit, "VOC2010", sub), os.path.join(exp, sub))


# ---- COCO-Stuff / COCO-Object -------------------------------------------------------------

def make_coco(args):
    case = fresh("coco")
    raw = os.path.join(case, "raw")
    # every byte value once (the whole table), a stuffthingmap-like one, a train one
    every = np.arange(256, dtype=np.uint8).reshape(16, 16)
    used = np.array([v for v in range(182) if v not in (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)] + [255])
    blocks = used[RNG.randint(0, len(used), (3, 4))].repeat(4, 0).repeat(3, 1)   # 12x12
    maps = {("val2017", "000000000139"): every, ("val2017", "000000000285"): blocks,
            ("train2017", "000000000009"): used[RNG.randint(0, len(used), (10, 6))]}
    for (split, name), arr in maps.items():
        grey_png(os.path.join(raw, "annotations", split, name + ".png"), arr)
        tiny_jpeg(os.path.join(raw, "images", split, name + ".jpg"), *arr.shape)

    stuff = load(os.path.join(args.mmseg, "coco_stuff164k.py"), "mmseg_coco_stuff164k")
    obj = load(os.path.join(args.sclip, "datasets", "cvt_coco_object.py"), "sclip_cvt_coco_object")
    out = os.path.join(case, "expected", "annotations")
    for split in ["train2017", "val2017"]:
        os.makedirs(os.path.join(out, split))
    for (split, name) in maps:
        src = os.path.join(raw, "annotations", split, name + ".png")
        stuff.convert_to_trainID(src, out, split == "train2017")
        obj.convert_to_trainID(src, out, split == "train2017")


# ---- Cityscapes ----------------------------------------------------------------------------

def make_cityscapes(args):
    sys.path.insert(0, os.path.abspath(args.cityscapes_scripts))
    from cityscapesscripts.preparation.json2labelImg import json2labelImg
    from cityscapesscripts.helpers.labels import labels
    case = fresh("cityscapes")
    raw = os.path.join(case, "raw")
    names = [l.name for l in labels] + ["cargroup"]
    frames = [("val", "frankfurt", "frankfurt_000000_000294", 12, 20), ("val", "lindau", "lindau_000001_000019", 10, 16),
              ("train", "aachen", "aachen_000000_000019", 18, 24)]
    for split, city, frame, h, w in frames:
        objs = []
        if split == "train":
            # every label of labels.py (and a *group one) as a 3x4 cell, so the whole table is used
            for k, label in enumerate(names):
                y, x = 3 * (k // 6), 4 * (k % 6)
                objs.append({"label": label, "polygon": [[x, y], [x + 3, y], [x + 3, y + 2], [x, y + 2]]})
        for k in range(9 if split == "val" else 0):
            n = RNG.randint(3, 7)
            pts = [[float(RNG.uniform(-2, w + 2)), float(RNG.uniform(-2, h + 2))] for _ in range(n)]
            label = names[(k * 7 + len(frame)) % len(names)]
            objs.append({"label": label, "polygon": pts, "deleted": 1 if k == 4 else 0})
        objs.append({"label": "license plate", "polygon": [[1, 1], [5, 1], [5, 4], [1, 4]]})
        base = os.path.join(raw, "gtFine", split, city, frame)
        os.makedirs(os.path.dirname(base), exist_ok=True)
        with open(base + "_gtFine_polygons.json", "w") as f:
            json.dump({"imgHeight": h, "imgWidth": w, "objects": objs}, f)
        json2labelImg(base + "_gtFine_polygons.json", base + "_gtFine_labelIds.png", "ids")
        img = os.path.join(raw, "leftImg8bit", split, city, frame + "_leftImg8bit.png")
        os.makedirs(os.path.dirname(img), exist_ok=True)
        Image.fromarray(RNG.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(img)
        exp = os.path.join(case, "expected", "gtFine", split, city, frame + "_gtFine_labelTrainIds.png")
        os.makedirs(os.path.dirname(exp), exist_ok=True)
        json2labelImg(base + "_gtFine_polygons.json", exp, "trainIds")


# ---- polygons: pycocotools' rleFrPoly ------------------------------------------------------

def make_polygons(args):
    sys.path.insert(0, os.path.abspath(args.cocoapi))
    from pycocotools import mask as cmask
    cases = [
        ("square", 6, 6, [0, 0, 4, 0, 4, 4, 0, 4]),
        ("triangle", 7, 9, [1.2, 0.7, 7.9, 3.3, 2.5, 6.1]),
        ("concave L", 10, 10, [1, 1, 8, 1, 8, 3, 3.5, 3, 3.5, 8.5, 1, 8.5]),
        ("concave star", 24, 24, [v for j, r in enumerate([10.7, 4.2] * 5)
                                  for v in (12.3 + r * np.cos(j * np.pi / 5), 11.8 + r * np.sin(j * np.pi / 5))]),
        ("bow tie (self-crossing)", 9, 12, [0.5, 0.5, 10.5, 7.5, 10.5, 0.5, 0.5, 7.5]),
        ("self-touching at a vertex", 10, 10, [1, 1, 5, 5, 9, 1, 9, 9, 5, 5, 1, 9]),
        ("repeated points", 8, 8, [1, 1, 1, 1, 6, 1, 6, 1, 6, 6, 1, 6, 1, 6]),
        ("collinear", 8, 8, [1, 1, 3, 1, 5, 1, 6, 1, 6, 5, 1, 5]),
        ("outside and negative", 6, 7, [-2.3, -1.1, 9.4, -0.6, 8.8, 7.7, -1.5, 6.2]),
        ("thin sliver", 10, 10, [0.2, 5.0, 9.8, 5.1, 9.8, 5.3]),
        ("two points", 5, 5, [0.5, 0.5, 3.5, 3.5, 3.5]),
    ]
    # a COCO-like polygon: many float vertices around a blob
    t = np.linspace(0, 2 * np.pi, 37)[:-1]
    r = 14 + 4 * np.sin(3 * t) + RNG.uniform(-1, 1, t.shape)
    cases.append(("blob, 36 float vertices", 40, 45,
                  [round(float(v), 2) for p in zip(22.4 + r * np.cos(t), 19.6 + r * np.sin(t)) for v in p]))
    out = []
    for name, h, w, poly in cases:
        poly = [float(v) for v in poly]
        rle = cmask.frPyObjects([poly], h, w)[0]
        out.append({"name": name, "h": h, "w": w, "polygon": poly, "counts": rle["counts"].decode(),
                    "area": int(cmask.area(rle))})
    with open(os.path.join(OUT, "polygons.json"), "w") as f:
        json.dump({"source": "pycocotools mask.frPyObjects (cocodataset/cocoapi "
                             "8c9bcc3cf640524c4c20a9c40e89cb6a2f2fa0e9)", "cases": out}, f, separators=(",", ":"))


# ---- ADE20K-Full (847) ---------------------------------------------------------------------

def png_named(path, arr):
    """A PNG under the release's .jpg name: PIL (the official) and stb (fmseg) open
    images by content, and a lossless file keeps their decoders out of the
    comparison (libjpeg-turbo and stb decode the same JPEG a grey level apart)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def ade_picture(rng, h, w):
    """Blocks, a diagonal gradient and edges: every cv2 INTER_LINEAR weight is exercised."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + 2 * yy) % 256], -1)
    for _ in range(6):
        y0, x0 = rng.randint(0, h - 4), rng.randint(0, w - 4)
        img[y0:y0 + rng.randint(3, h // 2 + 4), x0:x0 + rng.randint(3, w // 2 + 4)] = rng.randint(0, 256, 3)
    return img.astype(np.uint8)


def ade_seg(rng, h, w, ids):
    """A _seg.png: R = 10 * (id // 256) + 0..9 (the script's R / 10 truncates), G = id % 256, B an instance."""
    def blocks(lo, hi):
        return rng.randint(lo, hi, ((h + 6) // 7, (w + 8) // 9)).repeat(7, 0).repeat(9, 1)[:h, :w]
    cls = np.array(ids)[blocks(0, len(ids))]
    r = 10 * (cls // 256) + blocks(0, 10)
    r = np.where(r > 255, 10 * (cls // 256), r)
    return np.stack([r, cls % 256, blocks(0, 256)], -1).astype(np.uint8)


def gz_if_large(path):
    """Files over 64 KB are kept gzip'd (gzip -dc gives the official's bytes back)."""
    if os.path.getsize(path) > 65536:
        with open(path, "rb") as f, gzip.GzipFile(path + ".gz", "wb", mtime=0) as g:
            g.write(f.read())
        os.remove(path)


def make_ade847(args):
    rng = np.random.RandomState(847)
    script = os.path.join(args.ov_seg, "datasets", "prepare_ade20k_full_sem_seg.py")
    src = open(script).read()
    # the script's own table, for ids inside and outside it
    table = ast.literal_eval(src[src.index("ADE20K_SEM_SEG_FULL_CATEGORIES = [") + 33:src.index("\n]\n") + 2])
    known = [c["id"] for c in table]
    ids = known[:3] + [max(known), min(known), 312, 2598, 3144] + [1, 7, 5000, 6655]   # the last four: unmapped
    case = fresh("ade847")
    raw = os.path.join(case, "raw", "ADE20K_2021_17_01")
    files = [("validation/cultural/apse__indoor", "ADE_val_00000001", 23, 31),     # no resize
             ("validation/urban/street", "ADE_val_00000002", 530, 515),           # h >= w > 512: 527 x 512
             ("validation/urban/street", "ADE_val_00000003", 512, 700),           # h not over 512: kept
             ("validation/urban/street", "ADE_val_00000004", 513, 600),           # w >= h > 512: 512 x 599
             ("training/home/bedroom", "ADE_train_00000001", 20, 18)]             # the script skips training
    folders, names = [], []
    for folder, name, h, w in files:
        d = os.path.join(raw, "images", "ADE", folder)
        png_named(os.path.join(d, name + ".jpg"), ade_picture(rng, h, w))
        Image.fromarray(ade_seg(rng, h, w, ids)).save(os.path.join(d, name + "_seg.png"))
        folders.append("ADE20K_2021_17_01/images/ADE/" + folder)
        names.append(name + ".jpg")
    exp = os.path.join(case, "expected")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(raw, os.path.join(tmp, "ADE20K_2021_17_01"))
        # index_ade20k.pkl as far as the script reads it (folder, filename)
        with open(os.path.join(tmp, "ADE20K_2021_17_01", "index_ade20k.pkl"), "wb") as f:
            pickle.dump({"folder": folders, "filename": names}, f)
        # what Image.save is handed for each JPEG: the pixels before PIL's encoder
        pre = os.path.join(exp, "pre_jpeg")
        os.makedirs(pre)
        save = Image.Image.save

        def recording_save(self, fp, *a, **k):
            if str(fp).endswith(".jpg"):
                save(self, os.path.join(pre, os.path.basename(str(fp))[:-4] + ".png"))
            return save(self, fp, *a, **k)

        Image.Image.save = recording_save
        cwd = os.getcwd()
        os.environ["DETECTRON2_DATASETS"] = tmp
        try:
            runpy.run_path(script, run_name="__main__")
        finally:
            Image.Image.save = save
            os.chdir(cwd)
        out = os.path.join(tmp, "ADE20K_2021_17_01", "annotations_detectron2", "validation")
        dst = os.path.join(exp, "annotations_detectron2", "validation")
        shutil.copytree(out, dst)
        for f in os.listdir(dst):
            gz_if_large(os.path.join(dst, f))
    for f in os.listdir(pre):
        gz_if_large(os.path.join(pre, f))


# ---- PASCAL Context-459 ----------------------------------------------------------------------

def mat_be(path, name, arr):
    """A big-endian level-5 MAT file (scipy writes native order only), uncompressed."""
    def el(typ, payload):
        pad = (-len(payload)) % 8
        return struct.pack(">II", typ, len(payload)) + payload + b"\0" * pad
    h, w = arr.shape
    body = (el(6, struct.pack(">II", 11, 0)) + el(5, struct.pack(">ii", h, w)) + el(1, name.encode())
            + el(4, arr.astype(">u2").tobytes(order="F")))
    head = b"MATLAB 5.0 MAT-file, big-endian, written by make_prepare_fixtures.py".ljust(116) + b"\0" * 8
    with open(path, "wb") as f:
        f.write(head + struct.pack(">H", 0x0100) + b"MI" + struct.pack(">II", 14, len(body)) + body)


def make_context459(args):
    import scipy.io
    rng = np.random.RandomState(459)
    case = fresh("context459")
    raw = os.path.join(case, "raw", "VOC2010")
    os.makedirs(os.path.join(raw, "trainval"))
    os.makedirs(os.path.join(raw, "JPEGImages"))
    names = open(os.path.join(os.path.dirname(OUT), "..", "..", "configs", "_base_", "classes",
                              "context459.txt")).read().split("\n")[:459]

    def labelmap(h, w):
        m = rng.randint(0, 460, (h, w)).astype(np.uint16)     # 0 unlabelled, 1..459
        m[0, :3] = [0, 459, 256]
        return m
    cases = [("2008_000002", 9, 13, "compressed"), ("2008_000003", 11, 7, "plain"),
             ("2008_000007", 8, 12, "big-endian"), ("2010_000001", 10, 14, "two variables"),
             ("2008_000008", 6, 5, "train")]
    for name, h, w, kind in cases:
        m = labelmap(h, w)
        path = os.path.join(raw, "trainval", name + ".mat")
        if kind == "big-endian":
            mat_be(path, "LabelMap", m)
        elif kind == "two variables":
            scipy.io.savemat(path, {"Comment": np.arange(5.0), "LabelMap": m}, do_compression=True)
        else:
            scipy.io.savemat(path, {"LabelMap": m}, do_compression=kind != "plain")
        if kind != "big-endian":   # the header's text carries the time: a fixed one, for reproducible files
            with open(path, "r+b") as f:
                f.write(b"MATLAB 5.0 MAT-file, written by scipy.io.savemat (make_prepare_fixtures.py)".ljust(116))
        back = scipy.io.loadmat(path)["LabelMap"]
        assert back.dtype.kind == "u" and back.dtype.itemsize == 2 and (back == m).all(), path
        Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(
            os.path.join(raw, "JPEGImages", name + ".jpg"), quality=50)   # this case's own generator: reproducible alone
    # val ids: one without a .mat (skipped, as the script skips it); 2008_000008 is train
    with open(os.path.join(raw, "pascalcontext_val.txt"), "w") as f:
        f.write("2008_000002\n2008_000003\n2008_000007\n2008_000009\n2010_000001\n")
    with tempfile.TemporaryDirectory() as tmp:
        vdir = os.path.join(tmp, "VOCdevkit", "VOC2010")
        shutil.copytree(raw, vdir)
        # labels.txt / 59_labels.txt: only the script's 59-class half reads them
        with open(os.path.join(vdir, "labels.txt"), "w") as f:
            f.write("".join("%d: %s\n" % (i + 1, n) for i, n in enumerate(names)))
        with open(os.path.join(vdir, "59_labels.txt"), "w") as f:
            f.write("".join("%d: %s\n" % (i + 1, n) for i, n in enumerate(names[:59])))
        os.environ["DETECTRON2_DATASETS"] = tmp
        runpy.run_path(os.path.join(args.ov_seg, "datasets", "prepare_pascal_context.py"), run_name="__main__")
        shutil.copytree(os.path.join(vdir, "annotations_detectron2", "pc459_val"),
                        os.path.join(case, "expected", "annotations_detectron2", "pc459_val"))


# ---- TIFF files written by PIL / libtiff, for core/tiff.c ------------------------------------

def make_tiff(args):
    """Baseline variants the reader takes, and ones it refuses, with their values."""
    from PIL import TiffImagePlugin
    rng = np.random.RandomState(7)
    d = fresh("tiff")
    v16 = rng.randint(0, 65536, (9, 7)).astype(np.uint16)
    v16[0, :4] = [0, 255, 256, 65535]
    v8 = rng.randint(0, 256, (6, 11)).astype(np.uint8)
    cases = {}

    def put(name, arr, values=None, **kw):
        img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
        img.save(os.path.join(d, name), **kw)
        if values is not None:
            back = np.array(Image.open(os.path.join(d, name)))
            assert (back == values).all(), name
            cases[name] = {"h": int(values.shape[0]), "w": int(values.shape[1]), "values": values.ravel().tolist()}

    put("u16_le.tif", v16, v16)                                      # what the converters write
    put("u16_be.tif", Image.frombuffer("I;16B", (7, 9), v16.astype(">u2").tobytes(), "raw", "I;16B", 0, 1), v16)
    put("u8.tif", v8, v8)
    pal = Image.fromarray(v8, "P")
    pal.putpalette(list(range(256)) * 3)
    put("u8_palette_packbits.tif", pal, v8, compression="packbits")
    put("u16_packbits.tif", v16, v16, compression="packbits")
    TiffImagePlugin.WRITE_LIBTIFF = True                             # libtiff's writer: several strips
    strips = rng.randint(0, 65536, (31, 40)).astype(np.uint16)
    put("u16_strips.tif", strips, strips, strip_size=240)      # 3 rows a strip: 11 strips, the last of 1 row
    TiffImagePlugin.WRITE_LIBTIFF = False
    # another writer: tifffile, big-endian in strips of 4 rows
    import tifffile
    tifffile.imwrite(os.path.join(d, "u16_be_strips_tifffile.tif"), strips, byteorder=">", rowsperstrip=4)
    assert (np.array(Image.open(os.path.join(d, "u16_be_strips_tifffile.tif"))) == strips).all()
    cases["u16_be_strips_tifffile.tif"] = {"h": 31, "w": 40, "values": strips.ravel().tolist()}
    put("refused_deflate.tif", v16, compression="tiff_adobe_deflate")
    put("refused_lzw.tif", v8, compression="tiff_lzw")
    put("refused_rgb.tif", rng.randint(0, 256, (4, 5, 3)).astype(np.uint8))
    put("refused_float.tif", rng.rand(4, 5).astype(np.float32))
    put("refused_signed.tif", rng.randint(-9, 9, (4, 5)).astype(np.int32))
    put("refused_bilevel.tif", Image.fromarray(v8 > 127))
    with open(os.path.join(d, "values.json"), "w") as f:
        json.dump({"source": "PIL %s (libtiff for PackBits and strips), tifffile %s" % (
                       Image.__version__, tifffile.__version__),
                   "cases": cases}, f, separators=(",", ":"))


CASES = {"context": (make_context, ["mmseg", "detail_api"]), "coco": (make_coco, ["mmseg", "sclip"]),
         "cityscapes": (make_cityscapes, ["cityscapes_scripts"]), "polygons": (make_polygons, ["cocoapi"]),
         "ade847": (make_ade847, ["ov_seg"]), "context459": (make_context459, ["ov_seg"]),
         "tiff": (make_tiff, [])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mmseg", help="folder with mmseg's pascal_context.py and coco_stuff164k.py")
    ap.add_argument("--detail-api", help="detail-api's PythonAPI, detail/_mask built in place")
    ap.add_argument("--sclip", help="a checkout of wangf3014/SCLIP")
    ap.add_argument("--cityscapes-scripts", help="a checkout of mcordts/cityscapesScripts")
    ap.add_argument("--cocoapi", help="cocodataset/cocoapi's PythonAPI, pycocotools built in place")
    ap.add_argument("--ov-seg", help="a checkout of facebookresearch/ov-seg (its datasets/ scripts)")
    ap.add_argument("--only", nargs="+", choices=sorted(CASES), help="these cases (default: all)")
    args = ap.parse_args()
    stub_frameworks()
    for name in args.only or list(CASES):
        make, needs = CASES[name]
        missing = ["--" + n.replace("_", "-") for n in needs if not getattr(args, n)]
        if missing:
            ap.error("case %s needs %s" % (name, " ".join(missing)))
        make(args)
    print("written", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
