"""tests/fixtures/fewshot/: the episodes and scores of aim-uofa/Matcher's own
few-shot loaders on tiny synthetic COCO-20i, FSS-1000 and LVIS-92i layouts,
for tests/lua/test_fewshot.lua (fmseg.eval.fewshot).

    /usr/bin/python3 tests/tools/make_fewshot_fixtures.py [--matcher DIR]

DIR (default ../ext/Matcher beside the repository) is a checkout, or a `git
archive` extract with a COMMIT file, holding matcher/data/ and
matcher/common/. The loaders run unmodified through FSSDataset (shuffle off,
no workers, batch 1) after utils.fix_randseed(0), as main_oss.py's test()
runs them; what they import and do not use here is stubbed (tensorboardX
for the AverageMeter's module; detectron2's polygons_to_bitmask and
pycocotools, absent here, are written again below from pycocotools'
rleFrPoly / rleFrBbox, checked against the pycocotools RLEs of
tests/fixtures/prepare/polygons.json before use); .cuda() is the identity.

Written: layouts.json (each layout: its images, masks and, for COCO-20i,
its class lists; test_fewshot.lua paints them again), coco/fold<f>.pkl
(pickle protocol 3, as HSNet's), lvis/lvis_val.pkl (protocol 4) and
lvis_val_bad.pkl (two entries malformed, for the skips), and
episodes.json: per benchmark and fold the official episodes (class id,
query, supports), and main_oss.py's mIoU / FB-IoU and the AverageMeter's
per-class intersection and union buffers for two stand-in predictions: the
query mask itself ("perfect") and the query mask with its top-left 3 x 3
block flipped in every episode of even 0-based index ("plant"), after all
episodes and after the first 300 ("head"); and numpy's
legacy stream (np.random.seed, then permutation and choice without
replacement, as the loaders draw) for fmseg.pyrandom.numpy.
"""
import argparse
import json
import os
import pickle
import shutil
import sys
import tempfile
import types

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "fewshot")
S = 24          # --img-size for the fixtures (the scripts' 518 makes no difference to the protocol)
HEAD = 300      # the scores after the first HEAD episodes too (the tests run that many: --limit)


def stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


# ---- pycocotools' polygon rasterisation (maskApi.c), for detectron2's polygons_to_bitmask --------------

def fr_poly(xy, h, w):
    """rleFrPoly: counts of the (h, w) mask of polygon xy (x1, y1, x2, y2, ...)."""
    k = len(xy) // 2
    scale = 5.0
    x = [int(scale * xy[2 * j] + .5) for j in range(k)] + [0]
    y = [int(scale * xy[2 * j + 1] + .5) for j in range(k)] + [0]
    x[k], y[k] = x[0], y[0]
    u, v = [], []
    for j in range(k):
        xs, xe, ys, ye = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            for d in range(dx + 1):
                t = dx - d if flip else d
                u.append(t + xs)
                v.append(int(ys + s * t + .5))
        else:
            s = (xe - xs) / dy
            for d in range(dy + 1):
                t = dy - d if flip else d
                v.append(t + ys)
                u.append(int(xs + s * t + .5))
    bx, by = [], []
    for j in range(1, len(u)):
        if u[j] != u[j - 1]:
            xd = float(u[j] if u[j] < u[j - 1] else u[j] - 1)
            xd = (xd + .5) / scale - .5
            if np.floor(xd) != xd or xd < 0 or xd > w - 1:
                continue
            yd = float(v[j] if v[j] < v[j - 1] else v[j - 1])
            yd = (yd + .5) / scale - .5
            yd = 0 if yd < 0 else (h if yd > h else yd)
            yd = np.ceil(yd)
            bx.append(int(xd))
            by.append(int(yd))
    a = sorted([bx[j] * h + by[j] for j in range(len(bx))] + [h * w])
    p = 0
    for j in range(len(a)):
        t = a[j]
        a[j] -= p
        p = t
    b = [a[0]]
    j = 1
    while j < len(a):
        if a[j] > 0:
            b.append(a[j])
            j += 1
        else:
            j += 1
            if j < len(a):
                b[-1] += a[j]
                j += 1
    return b


def to_string(cnts):
    """rleToString: pycocotools' compressed counts."""
    out = []
    for i, c in enumerate(cnts):
        x = c - (cnts[i - 2] if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1f
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def decode(cnts, h, w):
    flat = np.zeros(h * w, np.uint8)
    pos, val = 0, 0
    for c in cnts:
        flat[pos:pos + c] = val
        pos += c
        val = 1 - val
    return flat.reshape(w, h).T


def polygons_to_bitmask(polygons, height, width):
    """detectron2.structures.masks.polygons_to_bitmask: frPyObjects (a first polygon of 4 numbers makes
    them all boxes, rleFrBbox), merge, decode."""
    if len(polygons) == 0:
        return np.zeros((height, width)).astype(bool)
    out = np.zeros((height, width), bool)
    boxes = len(polygons[0]) == 4
    for p in polygons:
        p = [float(t) for t in np.asarray(p).reshape(-1)]
        if boxes:
            x, y, bw, bh = p
            p = [x, y, x, y + bh, x + bw, y + bh, x + bw, y]
        out |= decode(fr_poly(p, height, width), height, width).astype(bool)
    return out


def check_polygons():
    with open(os.path.join(ROOT, "tests", "fixtures", "prepare", "polygons.json")) as f:
        for case in json.load(f)["cases"]:
            got = to_string(fr_poly(case["polygon"], case["h"], case["w"]))
            assert got == case["counts"], (case["name"], got, case["counts"])


# ---- the layouts (test_fewshot.lua paints the same pixels from layouts.json) --------------------

def pixels(h, w, seed):
    """an image's pixels: (x 37 + y 11 + c 101 + seed 53) mod 256"""
    yy, xx = np.mgrid[:h, :w]
    return np.stack([(xx * 37 + yy * 11 + c * 101 + seed * 53) % 256 for c in range(3)], -1).astype(np.uint8)


def coco_layout():
    """16 images of 3 x 3 cells; the 40 classes of folds 0 and 1, each in 2 to 4 images (one cell each), the
    class lists in a scrambled order; a strip of 255 in some masks (background for the protocol)."""
    images = []
    for i in range(16):
        h, w = 15 + (i % 4) * 2, 18 + (i % 3) * 3
        images.append({"name": "val2014/COCO_val2014_%012d.jpg" % (100 + i), "h": h, "w": w, "seed": i,
                       "regions": [], "strip": i % 5 == 0})
    cell = [0] * 16
    lists = {c: [] for c in range(80)}
    classes = [f + 4 * v for f in (0, 1) for v in range(20)]
    for n, c in enumerate(classes):
        count = 2 + (n % 3)
        for j in range(count):
            i = (n * 7 + j * 5) % 16
            while cell[i] >= 9:
                i = (i + 1) % 16
            im = images[i]
            if im["name"] in lists[c]:
                continue
            k = cell[i]
            cell[i] += 1
            ch, cw = im["h"] // 3, im["w"] // 3
            y0, x0 = (k // 3) * ch, (k % 3) * cw
            im["regions"].append({"class": c, "rect": [y0 + 1, y0 + ch - (n % 2), x0, x0 + cw - 1]})
            lists[c].append(im["name"])
    for c in classes:
        lst = lists[c]
        lists[c] = lst[1:] + lst[:1] if len(lst) % 2 else lst[::-1]
    return {"images": images, "lists": {str(c): lists[c] for c in range(80)}}


def write_coco(root, lay):
    for im in lay["images"]:
        img = os.path.join(root, im["name"])
        os.makedirs(os.path.dirname(img), exist_ok=True)
        Image.fromarray(pixels(im["h"], im["w"], im["seed"])).save(img, format="PNG")
        m = np.zeros((im["h"], im["w"]), np.uint8)
        for r in im["regions"]:
            y0, y1, x0, x1 = r["rect"]
            m[y0:y1, x0:x1] = r["class"] + 1
        if im["strip"]:
            m[-1, :] = 255
        mp = os.path.join(root, "annotations", im["name"].replace(".jpg", ".png"))
        os.makedirs(os.path.dirname(mp), exist_ok=True)
        Image.fromarray(m, "L").save(mp)


def coco_pickles(lay):
    lists = {int(c): v for c, v in lay["lists"].items()}
    out = {}
    for fold in (0, 1):
        fold_classes = [fold + 4 * v for v in range(20)]
        out[fold] = {c: (lists[c] if c in fold_classes else []) for c in range(80)}
    return out


FSS_COLOURS = {"fg": [[0, 255, 0], [128, 128, 128], [200, 200, 200]],     # PIL's L: 150, 128, 200: object
               "bg": [[255, 0, 0], [127, 127, 127]]}                      # 76, 127: not


def fss_layout():
    """categories (split order scrambled; cat_a with an 11.jpg and a text file), 10 images each, masks
    painted in colours on either side of PIL's L = 128."""
    cats = []
    for ci, cat in enumerate(["cat_b", "cat_a", "cat_c"]):
        files = []
        n = 11 if cat == "cat_a" else 10
        for k in range(1, n + 1):
            h, w = 10 + (k % 3) * 3, 12 + (k % 2) * 5
            fg = FSS_COLOURS["fg"][(k + ci) % 3]
            bg = FSS_COLOURS["bg"][(k + ci) % 2]
            files.append({"id": str(k), "h": h, "w": w, "seed": 100 * ci + k,
                          "fg": {"rect": [1 + k % 3, h - 2, 2, w // 2 + k % 4], "colour": fg},
                          "bg": {"rect": [0, 2, w - 4, w], "colour": bg}})
        cats.append({"name": cat, "files": files, "extra": ["readme.txt"] if cat == "cat_a" else []})
    return {"categories": cats}


def write_fss(root, lay, crlf=False):
    os.makedirs(os.path.join(root, "splits"), exist_ok=True)
    with open(os.path.join(root, "splits", "test.txt"), "w", newline="") as f:
        for c in lay["categories"]:
            f.write(c["name"] + ("\r\n" if crlf else "\n"))
    for c in lay["categories"]:
        d = os.path.join(root, "data", c["name"])
        os.makedirs(d, exist_ok=True)
        for fl in c["files"]:
            Image.fromarray(pixels(fl["h"], fl["w"], fl["seed"])).save(os.path.join(d, fl["id"] + ".jpg"), format="PNG")
            m = np.zeros((fl["h"], fl["w"], 3), np.uint8)
            for part in ("fg", "bg"):
                y0, y1, x0, x1 = fl[part]["rect"]
                m[y0:y1, x0:x1] = fl[part]["colour"]
            Image.fromarray(m).save(os.path.join(d, fl["id"] + ".png"))
        for e in c["extra"]:
            with open(os.path.join(d, e), "w") as f:
                f.write("not an image\n")


def lvis_layout():
    """26 classes (LVIS ids in a scrambled order) with 1 to 4 images each, 23 of them with more than one
    (10 folds of 2); polygons, two annotations of a class in one image, a two-polygon annotation, and one
    annotation given as a 4-number "polygon" (a box for frPyObjects)."""
    images = []
    for i in range(14):
        split = "val2017" if i % 3 else "train2017"
        images.append({"name": "%s/%012d.jpg" % (split, 500 + i), "h": 16 + (i % 3) * 4, "w": 20 + (i % 4) * 2,
                       "seed": 40 + i})
    ids = [(n * 37) % 101 + 1 for n in range(26)]
    classes = []
    for n, cid in enumerate(ids):
        count = 1 if n in (3, 11, 19) else 2 + (n % 3)
        per = []
        for j in range(count):
            im = images[(n * 5 + j * 3) % 14]
            if any(p["image"] == im["name"] for p in per):
                continue
            h, w = im["h"], im["w"]
            x0, y0 = 1.0 + (n % 5), 2.0 + (j % 4)
            quad = [x0, y0, x0 + 7.3, y0 + 0.6, x0 + 6.1, y0 + 8.2, x0 - 0.4, y0 + 6.9]
            anns = [{"segmentation": [quad], "category_id": cid}]
            if n % 4 == 1:
                anns[0]["segmentation"].append([w - 6.0, h - 5.0, w - 1.5, h - 5.0, w - 3.0, h - 1.0])
            if n % 6 == 2:
                anns.append({"segmentation": [[2.0, h - 6.0, 5.5, h - 6.0, 5.5, h - 2.5, 2.0, h - 2.5]],
                             "category_id": cid})
            if n == 5 and j == 0:
                anns = [{"segmentation": [[3.0, 2.0, 6.0, 5.0]], "category_id": cid}]     # a box: x, y, w, h
            per.append({"image": im["name"], "annotations": anns})
        classes.append({"id": cid, "images": per})
    return {"images": images, "classes": classes}


def lvis_pickle(lay):
    return {c["id"]: {p["image"]: {"annotations": p["annotations"]} for p in c["images"]} for c in lay["classes"]}


def lvis_bad_pickle(lay):
    """the same dicts (so the same episodes), two entries malformed: the first image of the first class has a
    "polygon" of 2 numbers (frPyObjects refuses it), that of the eleventh no annotations"""
    d = lvis_pickle(lay)
    eligible = [c for c in d if len(d[c]) > 1]
    for n, bad in ((0, [{"segmentation": [[1.0, 2.0]], "category_id": eligible[0]}]), (10, [])):
        first = next(iter(d[eligible[n]]))
        d[eligible[n]][first] = {"annotations": bad}
    return d


def write_lvis(root, lay):
    for im in lay["images"]:
        p = os.path.join(root, "coco", im["name"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        Image.fromarray(pixels(im["h"], im["w"], im["seed"])).save(p, format="PNG")


# ---- the official loaders --------------------------------------------------------------------------

def load_matcher(matcher):
    import torch
    torch.Tensor.cuda = lambda self, *a, **k: self
    stub("tensorboardX", SummaryWriter=None)
    stub("detectron2")
    stub("detectron2.structures")
    stub("detectron2.structures.masks", polygons_to_bitmask=polygons_to_bitmask)
    stub("pycocotools")
    stub("pycocotools.mask", decode=None)
    sys.path.insert(0, matcher)
    from matcher.data.dataset import FSSDataset
    from matcher.common.evaluation import Evaluator
    from matcher.common.logger import AverageMeter
    from matcher.common import utils
    return FSSDataset, Evaluator, AverageMeter, utils


def run(M, benchmark, datapath, fold, strip):
    import torch
    FSSDataset, Evaluator, AverageMeter, utils = M
    FSSDataset.initialize(img_size=S, datapath=datapath, use_original_imgsize=False)
    loader = FSSDataset.build_dataloader(benchmark, 1, 0, fold, "test", 1)
    utils.fix_randseed(0)                 # main_oss.py's test()
    Evaluator.initialize()
    meters = {"perfect": AverageMeter(loader.dataset), "plant": AverageMeter(loader.dataset)}
    names, index, episodes = [], {}, []

    def ref(name):
        name = name[len(strip):] if strip and name.startswith(strip) else name
        if name not in index:
            index[name] = len(names)
            names.append(name)
        return index[name]

    out = {"names": names, "episodes": episodes,
           "class_ids": [int(c) for c in loader.dataset.class_ids]}
    ids = torch.tensor(out["class_ids"])

    def scores(m):
        miou, fb_iou, _ = m.compute_iou()
        return {"miou": float(miou), "fbiou": float(fb_iou),
                "inter": m.intersection_buf.index_select(1, ids).t().tolist(),
                "union": m.union_buf.index_select(1, ids).t().tolist()}

    for idx, batch in enumerate(loader):
        episodes.append([int(batch["class_id"][0]), ref(batch["query_name"][0]),
                         [ref(s[0]) for s in batch["support_names"]]])
        pred = batch["query_mask"].clone()
        for kind in ("perfect", "plant"):
            if kind == "plant" and idx % 2 == 0:
                pred[:, :3, :3] = 1 - pred[:, :3, :3]
            inter, union = Evaluator.classify_prediction(pred.clone(), batch)
            meters[kind].update(inter, union, batch["class_id"], loss=None)
        if idx + 1 == HEAD:
            out["head"] = {"episodes": HEAD, "perfect": scores(meters["perfect"]), "plant": scores(meters["plant"])}
    for kind, m in meters.items():
        out[kind] = scores(m)
    return out


def numpy_stream():
    """per seed: the first words of the MT state after np.random.seed, then from one stream permutations of
    several sizes and choice(a, 1, replace=False)[0] draws as the loaders make them"""
    out = []
    for seed in (0, 1, 12345, 4294967295):
        np.random.seed(seed)
        key = [int(k) for k in np.random.get_state()[1][:3]]
        perms = [[int(v) for v in np.random.permutation(n)] for n in (1, 2, 3, 10, 33)]
        big = [int(np.random.choice(list(range(19217)), 1, replace=False)[0]) for _ in range(2)]
        ten = [int(np.random.choice(range(1, 11), 1, replace=False)[0]) for _ in range(5)]
        names = [str(np.random.choice(["a", "b", "c", "d", "e"], 1, replace=False)[0]) for _ in range(5)]
        out.append({"seed": seed, "key": key, "permutations": perms, "choice_19217": big, "choice_range_1_11": ten,
                    "choice_abcde": names})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--matcher", default=os.path.join(ROOT, "..", "ext", "Matcher"))
    args = ap.parse_args()
    check_polygons()
    M = load_matcher(args.matcher)
    commit = open(os.path.join(args.matcher, "COMMIT")).read().strip() \
        if os.path.exists(os.path.join(args.matcher, "COMMIT")) else "unknown"
    layouts = {"coco": coco_layout(), "fss": fss_layout(), "lvis": lvis_layout()}
    os.makedirs(os.path.join(OUT, "coco"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "lvis"), exist_ok=True)
    pk = coco_pickles(layouts["coco"])
    for fold, d in pk.items():
        with open(os.path.join(OUT, "coco", "fold%d.pkl" % fold), "wb") as f:
            pickle.dump(d, f, protocol=3)
    with open(os.path.join(OUT, "lvis", "lvis_val.pkl"), "wb") as f:
        pickle.dump(lvis_pickle(layouts["lvis"]), f, protocol=4)
    with open(os.path.join(OUT, "lvis", "lvis_val_bad.pkl"), "wb") as f:
        pickle.dump(lvis_bad_pickle(layouts["lvis"]), f, protocol=4)
    result = {"matcher_commit": commit, "img_size": S, "seed": 0, "numpy": numpy_stream()}
    tmp = tempfile.mkdtemp(prefix="fewshot_fixtures_")
    try:
        coco = os.path.join(tmp, "COCO2014")
        write_coco(coco, layouts["coco"])
        os.makedirs(os.path.join(coco, "splits", "val"))
        for fold in (0, 1):
            shutil.copy(os.path.join(OUT, "coco", "fold%d.pkl" % fold), os.path.join(coco, "splits", "val"))
        result["coco"] = {str(f): run(M, "coco", tmp, f, None) for f in (0, 1)}
        fss = os.path.join(tmp, "FSS-1000")
        write_fss(fss, layouts["fss"])        # LF lines: with the CRLF ones Matcher ships its code finds no folder
        result["fss"] = {"0": run(M, "fss", tmp, 0, os.path.join(fss, "data") + "/")}
        lvis = os.path.join(tmp, "LVIS")
        write_lvis(lvis, layouts["lvis"])
        shutil.copy(os.path.join(OUT, "lvis", "lvis_val.pkl"), lvis)
        shutil.copy(os.path.join(OUT, "lvis", "lvis_val.pkl"), os.path.join(lvis, "lvis_train.pkl"))
        result["lvis"] = {str(f): run(M, "lvis", tmp, f, None) for f in (0, 3)}
    finally:
        shutil.rmtree(tmp)
    with open(os.path.join(OUT, "layouts.json"), "w") as f:
        json.dump(layouts, f, separators=(",", ":"))
    with open(os.path.join(OUT, "episodes.json"), "w") as f:
        json.dump(result, f, separators=(",", ":"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
