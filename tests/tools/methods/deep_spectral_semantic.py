"""The dataset-level semantic protocol of Deep Spectral Methods, run by the
official code on a tiny VOC-layout dataset: the reference of `fmseg eval`'s
`eval.protocol: dataset_clusters` (tests/lua/test_eval_dataset_clusters.lua).

Run with Debian's python3 from the repository root (as dino_family.py):

    /usr/bin/python3 tests/tools/methods/deep_spectral_semantic.py EXT_DIR

EXT_DIR as for dino_family.py (deep-spectral-segmentation and dino at the
commits of dino_family.REPOS). The tiny DINO, its conversion to the hub
modules and the stubs of the packages that cannot be installed here
(accelerate, fire, pymatting, denseCRF, torch.Tensor.cuda) are
dino_family.py's, imported; this script adds the stubs that
semantic-segmentation/eval.py's imports need (hydra, omegaconf, wandb,
albumentations: a decorator and names; none is called by `evaluate`) and sends the `.to('cuda')`
of extract_bbox_features to the CPU.

Steps, each an official function called as it is, in the order of
semantic-segmentation/README.md (N_SEG 15, N_ERODE 2, N_DILATE 5,
DOWNSAMPLE 16) and extract_bbox_clusters' docstring (--pca_dim 32
--num_clusters 21 --seed 0):

1. extract.extract_features (all images), extract._extract_eig (laplacian,
   K = 5) per image;
2. extract._extract_multi_region_segmentations per image (15 segments,
   infer_bg_index) under np.random.seed(0) before each image (the official
   CLI leaves numpy unseeded; fmseg's recipe seeds every image);
3. extract.extract_bboxes (num_erode 2, num_dilate 5, downsample_factor 16);
4. extract.extract_bbox_features (the DINO CLS output of each box crop of the
   normalised full image, no resizing);
5. extract.extract_bbox_clusters (PCA 32, MiniBatchKMeans 21 clusters,
   random_state 0);
6. extract.extract_semantic_segmentations (segment 0 stays 0, segment s > 0
   gets its box's cluster);
7. no CRF (the README evaluates the patch-level maps directly; eval's
   _resize_pseudolabel brings them to the image by cv2 INTER_NEAREST);
8. semantic-segmentation/eval.py's evaluate on VOCSegmentationWithPseudolabels
   (val split): one Hungarian matching of the 21 clusters to the 21 classes
   over all labelled pixels of the dataset (cost N - IoU), then per-class
   IoU and their mean.

Writes tests/fixtures/methods/deep_spectral-semantic/: data/ (JPEGImages/
<id>.png, SegmentationClass/<id>.png palette PNGs, ImageSets/Segmentation/
val.txt: the layout of configs/_base_/datasets/voc21.yaml with image_suffix
.png; the official side reads the same PNG bytes under <id>.jpg names, which
PIL and cv2 decode by content), ref.safetensors (per image: the patch
segments, the official clusters and matched classes at image size; all
boxes' features, PCA coordinates and clusters; one MiniBatchKMeans run of
its own on 1,500 random rows; PCA(32) by scikit-learn's randomized solver,
which it picks above 500 rows, on 600 random rows after np.random.seed(0),
with one BLAS thread) and
semantic.json (the official mIoU, per-class IoU, matching, box lists,
versions, commits).
"""
import importlib
import json
import os
import shutil
import sys
import tempfile
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dino_family as df  # noqa: E402  (its EXT is sys.argv[1], as here)

NAME = "deep_spectral-semantic"
OUT = os.path.join(df.FIXTURES, NAME)
SCRIPT = "tests/tools/methods/deep_spectral_semantic.py"
K_EIG, N_SEG, N_ERODE, N_DILATE, DOWNSAMPLE = 5, 15, 2, 5, 16
PCA_DIM, N_CLUSTERS, SEED, KMEANS_SEED, PCA_SEED = 32, 21, 0, 0, 0
# (id, crop box of astronaut.jpg (x0, y0, x1, y1), size (w, h)): sizes that are and are not multiples of 16
IMAGES = [
    ("2007_000001", (0, 40, 320, 258), (200, 136)),
    ("2007_000002", (100, 0, 512, 300), (176, 150)),
    ("2007_000003", (0, 200, 400, 512), (160, 128)),
    ("2007_000004", (150, 120, 512, 400), (210, 147)),
    ("2007_000005", (60, 0, 460, 512), (140, 180)),
]


def make_images():
    from PIL import Image
    src = Image.open(os.path.join(df.ROOT, "tests", "data", "astronaut.jpg")).convert("RGB")
    out = []
    for k, (id_, box, size) in enumerate(IMAGES):
        img = np.array(src.crop(box).resize(size, Image.BILINEAR))
        h, w = img.shape[:2]
        # ground truth: a few classes in blocks, a 255 border between them, one class per image
        # absent elsewhere (classes 3, 8, 12, 15 and 0; most of the 21 never appear)
        yy, xx = np.mgrid[0:h, 0:w]
        gt = np.zeros((h, w), np.uint8)
        gt[(xx > w // 3) & (yy > h // 4)] = 15
        gt[(xx > 2 * w // 3) & (yy < h // 2)] = (3, 8, 12, 3, 8)[k]
        gt[(yy > 3 * h // 4) & (xx < w // 2)] = 12 if k % 2 else 8
        edge = np.zeros_like(gt, bool)
        edge[:, 1:] |= gt[:, 1:] != gt[:, :-1]
        edge[1:, :] |= gt[1:, :] != gt[:-1, :]
        gt[edge] = 255
        out.append((id_, img, gt))
    return out


def palette_png(path, labels):
    from PIL import Image
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    pal = []
    for i in range(256):   # the VOC palette
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    im.putpalette(pal)
    im.save(path)


def eval_stubs():
    """hydra, omegaconf and wandb as semantic-segmentation/eval.py imports them (evaluate uses none)."""
    hydra = types.ModuleType("hydra")
    hydra.main = lambda **kw: (lambda f: f)
    sys.modules["hydra"] = hydra
    oc = types.ModuleType("omegaconf")
    oc.DictConfig = dict
    oc.OmegaConf = types.SimpleNamespace(to_yaml=str, to_container=dict)
    sys.modules["omegaconf"] = oc
    sys.modules["wandb"] = types.ModuleType("wandb")
    # dataset/__init__.py imports albumentations for its training transforms (only called by train.py)
    alb = types.ModuleType("albumentations")
    alb.pytorch = types.ModuleType("albumentations.pytorch")
    sys.modules["albumentations"], sys.modules["albumentations.pytorch"] = alb, alb.pytorch
    # extract_bbox_features: model.eval().to('cuda'), image.to('cuda'); there is no GPU
    module_to, tensor_to = torch.nn.Module.to, torch.Tensor.to
    torch.nn.Module.to = lambda self, *a, **k: self if a and a[0] == "cuda" else module_to(self, *a, **k)
    torch.Tensor.to = lambda self, *a, **k: self if a and a[0] == "cuda" else tensor_to(self, *a, **k)


def main():
    df.install_stubs()
    eval_stubs()
    w = df.make_model()
    items = make_images()
    from PIL import Image
    shutil.rmtree(OUT, ignore_errors=True)
    data = os.path.join(OUT, "data")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(data, sub))
    for id_, img, gt in items:
        Image.fromarray(img).save(os.path.join(data, "JPEGImages", id_ + ".png"))
        palette_png(os.path.join(data, "SegmentationClass", id_ + ".png"), gt)
    with open(os.path.join(data, "ImageSets/Segmentation/val.txt"), "w") as f:
        f.write("".join(id_ + "\n" for id_, _, _ in items))

    ds = os.path.join(df.EXT, "deep-spectral-segmentation")
    df.use_repo(os.path.join(ds, "extract"), df.EXT, os.path.join(df.EXT, "dino"))
    import extract_utils as utils
    import extract
    vits = importlib.import_module("dino.vision_transformer")

    def get_model(name):      # as dino_family.deep_spectral_run: the tiny model from the hub file
        model = df.official_vit(vits, w)
        model.fc = torch.nn.Identity()
        return model, utils.get_transform(name), model.patch_embed.patch_size, model.blocks[0].attn.num_heads

    utils.get_model = get_model
    ref, meta_boxes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        images_root = os.path.join(tmp, "images")
        os.makedirs(images_root)
        for id_, _, _ in items:      # the same PNG bytes under the {id}.jpg name the code wants
            shutil.copy(os.path.join(data, "JPEGImages", id_ + ".png"), os.path.join(images_root, id_ + ".jpg"))
        with open(os.path.join(tmp, "images.txt"), "w") as f:
            f.write("".join(id_ + ".jpg\n" for id_, _, _ in items))
        d = lambda name: os.path.join(tmp, name)
        extract.extract_features(d("images.txt"), images_root, "dino_vits16", 1, d("features"))
        os.makedirs(d("eigs"))
        os.makedirs(d("multi"))
        for id_, _, _ in items:
            ff = os.path.join(d("features"), id_ + ".pth")
            extract._extract_eig((0, ff), K=K_EIG, images_root=images_root, output_dir=d("eigs"),
                                 which_matrix="laplacian", which_features="k", normalize=True, lapnorm=True,
                                 which_color_matrix="knn", threshold_at_zero=True, image_downsample_factor=None,
                                 image_color_lambda=0.0)
            np.random.seed(SEED)
            extract._extract_multi_region_segmentations(
                (0, (ff, os.path.join(d("eigs"), id_ + ".pth"))), adaptive=False,
                non_adaptive_num_segments=N_SEG, infer_bg_index=True, kmeans_baseline=False,
                output_dir=d("multi"), num_eigenvectors=1_000_000)
        extract.extract_bboxes(d("features"), d("multi"), d("boxes/bboxes.pth"), num_erode=N_ERODE,
                               num_dilate=N_DILATE, downsample_factor=DOWNSAMPLE)
        extract.extract_bbox_features(images_root, d("boxes/bboxes.pth"), "dino_vits16", d("boxes/features.pth"))
        with_features = torch.load(d("boxes/features.pth"))
        extract.extract_bbox_clusters(d("boxes/features.pth"), d("boxes/clusters.pth"), num_clusters=N_CLUSTERS,
                                      seed=KMEANS_SEED, pca_dim=PCA_DIM)
        extract.extract_semantic_segmentations(d("multi"), d("boxes/clusters.pth"), d("semantic"))
        clusters = torch.load(d("boxes/clusters.pth"))

        # the PCA coordinates extract_bbox_clusters clustered (recomputed as it computes them)
        from sklearn.decomposition import PCA
        feats = torch.cat([b["features"] for b in with_features], dim=0)
        feats = (feats / torch.norm(feats, dim=-1, keepdim=True)).numpy()
        ref["box_features"] = np.asarray(feats, np.float32)
        ref["box_pca"] = np.asarray(PCA(PCA_DIM).fit_transform(feats), np.float32)
        ref["box_clusters"] = np.concatenate([np.asarray(b["clusters"]) for b in clusters]).astype(np.int32)
        for b in clusters:
            meta_boxes[b["id"]] = {"segment_indices": [int(s) for s in b["segment_indices"]],
                                   "boxes": [[int(v) for v in bb] for bb in b["bboxes_original_resolution"]],
                                   "clusters": [int(c) for c in b["clusters"]]}

        # the evaluation: a VOC layout for VOCSegmentationWithPseudolabels (JPEGImages holds only the split)
        voc = os.path.join(tmp, "voc", "VOCdevkit", "VOC2012")
        shutil.copytree(os.path.join(data, "SegmentationClass"), os.path.join(voc, "SegmentationClass"))
        shutil.copytree(os.path.join(data, "ImageSets"), os.path.join(voc, "ImageSets"))
        shutil.copytree(images_root, os.path.join(voc, "JPEGImages"))
        seg = os.path.join(ds, "semantic-segmentation")
        df.use_repo(seg)
        for name in ("dataset", "eval_utils", "util", "eval"):
            sys.modules.pop(name, None)
        import eval as official_eval
        from dataset.voc import VOCSegmentationWithPseudolabels
        dataset_val = VOCSegmentationWithPseudolabels(root=os.path.join(tmp, "voc"), year="2012", image_set="val",
                                                      download=False, segments_dir=d("semantic"), transform=None)
        cfg = types.SimpleNamespace(data=types.SimpleNamespace(num_classes=20))
        stats, match = official_eval.evaluate(cfg=cfg, dataset_val=dataset_val, n_clusters=None)
        lut = np.zeros(N_CLUSTERS, np.int32)
        for c, g in match:
            lut[int(c)] = int(g)
        for i in range(len(dataset_val)):
            img, target, mask, metadata = dataset_val[i]
            id_ = metadata["id"]
            ref["clusters/" + id_] = np.asarray(mask, np.uint8)
            ref["pred/" + id_] = lut[np.asarray(mask)].astype(np.uint8)
            ref["segments/" + id_] = np.array(Image.open(os.path.join(d("multi"), id_ + ".png"))).astype(np.uint8)

    # MiniBatchKMeans alone where the tiny dataset does not reach: more rows than init_size (k-means++ on a
    # drawn subset), batches smaller than the data (the smoothed inertia), several 256-row chunks
    from sklearn.cluster import MiniBatchKMeans
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((1500, 8)) + 3 * rng.standard_normal((6, 8))[rng.integers(0, 6, 1500)])
    x = x.astype(np.float32)
    km = MiniBatchKMeans(n_clusters=N_CLUSTERS, batch_size=300, max_iter=100, random_state=5)
    ref["minibatch/x"], ref["minibatch/labels"] = x, km.fit_predict(x).astype(np.int32)
    ref["minibatch/centers"] = km.cluster_centers_.astype(np.float32)
    # PCA(32) where scikit-learn switches to its randomized solver (more than 500 rows), after
    # np.random.seed(PCA_SEED) (the official CLI leaves the global state unseeded), with one BLAS
    # thread (OpenBLAS's threaded LAPACK rounds with the thread count), and its clusters
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits
    x = (rng.standard_normal((600, 48)) * 0.5 + rng.standard_normal((30, 48))[rng.integers(0, 30, 600)])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        np.random.seed(PCA_SEED)
        pca = PCA(PCA_DIM)
        y = pca.fit_transform(x)
    assert pca._fit_svd_solver == "randomized", pca._fit_svd_solver
    ref["pca_randomized/x"], ref["pca_randomized/y"] = x, y.astype(np.float32)
    ref["pca_randomized/clusters"] = MiniBatchKMeans(n_clusters=N_CLUSTERS, batch_size=4096, max_iter=5000,
                                                     random_state=KMEANS_SEED).fit_predict(y).astype(np.int32)
    df.write_safetensors(os.path.join(OUT, "ref.safetensors"), ref)
    import cv2, scipy, sklearn, skimage, torchvision
    meta = {
        "minibatch": {"n_clusters": N_CLUSTERS, "batch_size": 300, "max_iter": 100, "random_state": 5},
        "pca_randomized": {"n_components": PCA_DIM, "np_random_seed": PCA_SEED, "blas_threads": 1},
        "protocol": {"clusters": N_CLUSTERS, "pca": PCA_DIM, "seed": KMEANS_SEED, "erode": N_ERODE,
                     "dilate": N_DILATE},
        "params": {"mode": "multi_region", "K": K_EIG, "non_adaptive_num_segments": N_SEG, "seed": SEED},
        "models": {"dino": "../models/" + df.MODEL_NAME},
        "data": "data",
        "official": {"mIoU": float(stats["mIoU"]), "IoU": [float(j) for j in stats["jaccards_all_categs"]],
                     "match": [[int(c), int(g)] for c, g in match], "images": meta_boxes},
        "generator": {
            "script": SCRIPT,
            "repos": {k: df.REPOS[k] for k in ("lukemelas/deep-spectral-segmentation", "facebookresearch/dino")},
            "torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__,
            "skimage": skimage.__version__, "cv2": cv2.__version__,
        },
        "notes": __doc__.split("\n\n")[3],
    }
    with open(os.path.join(OUT, "semantic.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("wrote", OUT, "mIoU", stats["mIoU"], "match", match)


if __name__ == "__main__":
    main()
