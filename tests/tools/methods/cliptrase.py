"""cliptrase method fixtures (tests/fixtures/methods/cliptrase-*/), from the
official code of leaves162/CLIPtrase: clip_self_correlation.py's
self_clip(clip, dataset, image_size, eps, min), the standalone evaluation
that the paper's and the README's numbers come from (the README: "The
results of the d2 version are slightly different from those in the paper
due to differences in preprocessing and resolution"), with its clip_utils
package (VisionTransformer.forward: block 11 returns the mean per-head
q-q / k-k / v-v cosine map, block 12 attends with softmax(qq) + softmax(kk)
+ softmax(vv)). On the tiny random CLIP models/clip-b16-tiny12 (12 vision
blocks, as the official forward hard-codes blocks 11 and 12).

    /usr/bin/python3 tests/tools/methods/cliptrase.py [--repo DIR]

DIR: an extract of leaves162/CLIPtrase with a COMMIT file; default
/work/ext/CLIPtrase. The fixtures were made from commit
2b7de612e5745ccaf9f7c57ee5ba83d526062f0c (method.json records it), with
Debian's torch 1.13, scikit-learn and scipy. ftfy and einops (imported, unused on this path) are
stubbed (official_stubs.py). The official code runs unmodified; from
outside, the generator sets its module-level `device` to "cpu", points
dataset_info's entry at a temporary folder holding the fixture's image and
an all-zero ground truth, gives the entry the fixture's class names, and
records (by wrapping the module's names, not changing them) what
get_text_features, get_visual_features, DBSCAN.fit_predict and
F.interpolate return and what scores() receives.
"""
import argparse
import os
import sys
import tempfile
import types

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import official_stubs as stubs  # noqa: E402

MODEL = "clip-b16-tiny12"
CLIP_DIR = os.path.join(common.MODELS, MODEL)


class Recorder:
    """Wraps the official module's names so that every intermediate the
    fixtures compare is the official code's own tensor."""

    def __init__(self, cs):
        self.cs, self.calls = cs, {"text": [], "visual": [], "interp": [], "dbscan": [], "scores": None}
        get_text, get_visual, dbscan = cs.get_text_features, cs.get_visual_features, cs.DBSCAN
        rec = self.calls

        def text(clip, labels):
            t = get_text(clip, labels)
            rec["text"].append(t.clone())
            return t

        def visual(clip, images):
            f, a = get_visual(clip, images)
            rec["visual"].append((f.clone(), a.clone()))
            return f, a

        class DBSCAN(dbscan):
            def fit_predict(self, X, y=None, sample_weight=None):
                labels = super().fit_predict(X, y, sample_weight)
                rec["dbscan"].append((np.array(X, dtype=np.float32), labels.copy(), self.eps, self.min_samples))
                return labels

        functional = cs.F

        def interpolate(*args, **kwargs):
            out = functional.interpolate(*args, **kwargs)
            rec["interp"].append((args[0].clone(), out.clone()))
            return out

        def scores(gts, preds, n):
            rec["scores"] = (gts, preds, n)
            return {}

        cs.get_text_features, cs.get_visual_features, cs.DBSCAN = text, visual, DBSCAN
        cs.F = types.SimpleNamespace(**{k: getattr(functional, k) for k in dir(functional) if not k.startswith("__")})
        cs.F.interpolate = interpolate
        cs.scores = scores


def dbscan_clearance(X, eps):
    """The smallest |distance - eps| over all pairs of rows (float64): how
    far DBSCAN's neighbourhoods are from changing under float32 noise."""
    return float(np.abs(distances(X) - eps).min())


def distances(X):
    X = X.astype(np.float64)
    return np.sqrt(np.maximum(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1), 0))


def clear_eps(cs, clip, image, size, target):
    """An eps near TARGET that no pair distance of the image's recalibrated
    correlation rows comes within 1e-4 of (common.clear_threshold): the
    official 0.7 / 1.1 put a random model's patches in one cluster, or
    through near-ties."""
    x = cs._transform2()(cs._transform1(size)(Image.fromarray(image))).unsqueeze(0)
    _, a = cs.get_visual_features(clip, x)
    A = a[-2, 0, 1:, 1:] - a[-2, 0, 0:1, 1:]
    A[A < 0] = 0
    d = distances(A.numpy())
    return common.clear_threshold(d[np.triu_indices(d.shape[0], 1)], target)


def run_case(cs, clip, repos, name, image, dataset, classes, bg, size, eps, min_samples, notes):
    """classes: the foreground names (official order); bg: the background
    words (or None). Our class file puts the background first (class 0, its
    words synonyms), as fmseg's datasets number it."""
    rec = Recorder(cs)
    with tempfile.TemporaryDirectory() as work:
        img_dir, gt_dir = os.path.join(work, "images"), os.path.join(work, "gt")
        os.makedirs(img_dir)
        os.makedirs(gt_dir)
        Image.fromarray(image).save(os.path.join(img_dir, "a.png"))
        Image.fromarray(np.zeros(image.shape[:2], np.uint8)).save(os.path.join(gt_dir, "a.png"))
        entry = {"image_path": img_dir, "gt_path": gt_dir, "labels": list(classes)}
        if bg is not None:
            entry["background"] = list(bg)
        saved = cs.dataset_info.get(dataset)
        cs.dataset_info[dataset] = entry
        try:
            cs.self_clip(clip, dataset, image_size=size, eps=eps, min=min_samples)
        finally:
            cs.dataset_info[dataset] = saved
    calls = rec.calls
    C = len(classes)
    text = torch.cat(calls["text"], 0)                                    # fg rows, then bg rows
    feats, attn = calls["visual"][0]
    grid, first = calls["interp"][0][0][0], calls["interp"][0][1][0]      # patch_logits (C + BG, h, w), at (S, S)
    if dataset == "VOC20":                                                # the official's cls weighting, as it computes it
        cls_logits = feats[0, 0:1] @ text.T * clip.logit_scale.exp()
        grid = grid * cls_logits[0].unsqueeze(1).unsqueeze(1)
        first = first * cls_logits[0].unsqueeze(1).unsqueeze(1)
    # our query order: background words first, then the classes
    order = list(range(C, text.shape[0])) + list(range(C)) if bg is not None else list(range(C))
    logits = grid[order].float().numpy()
    up = first[order].float().numpy()
    query_class = [0] * (text.shape[0] - C) + list(range(1, C + 1)) if bg is not None else list(range(C))
    nclass = C + 1 if bg is not None else C
    # class probabilities: softmax over the queries, synonyms by max (what our scores are)
    p = torch.softmax(torch.from_numpy(up), 0).numpy()
    probs = np.stack([p[[i for i, c in enumerate(query_class) if c == k]].max(0) for k in range(nclass)])
    pre_margin = common.top2_margin(probs)
    pred = calls["scores"][1][0].astype(np.int64)                         # official labels, bg = C
    labels = np.where(pred >= C, 0, pred + 1) if bg is not None else pred
    labels = labels.astype(np.int32)
    X, db, _, _ = calls["dbscan"][0]
    clusters = sorted(set(db.tolist()) - {-1})
    margin = pre_margin.copy()
    cluster_notes = "no clusters: labels are the argmax"
    if clusters:
        maps = calls["interp"][-1][1][0].numpy()                           # (n, S, S) cluster maps before argmax
        region = maps.argmax(0)
        map_margin = common.top2_margin(maps)
        pre = first.argmax(0).numpy()
        pre = np.where(pre >= C, 0, pre + 1) if bg is not None else pre
        gaps = []
        for r in range(len(clusters)):
            inside = region == r
            if not inside.any():
                continue
            counts = np.bincount(pre[inside], minlength=nclass)
            top = np.sort(counts)[::-1]
            gap = int(top[0] - (top[1] if len(top) > 1 else 0))
            fragile = int((pre_margin[inside] < 1e-5).sum())
            gaps.append(gap)
            # a vote a float32 flip of its fragile pixels could change: not compared
            margin[inside] = 1.0 if gap > 2 * fragile else 0.0
        margin[map_margin < 1e-5] = 0.0
        cluster_notes = (f"{len(clusters)} DBSCAN clusters of {X.shape[0]} patches "
                         f"({int((db == -1).sum())} noise); vote count gaps {gaps}; "
                         f"{int((map_margin < 1e-5).sum())} pixels with cluster maps tied to 1e-5")
    clearance = dbscan_clearance(X, eps)
    assert bg is None or len(set(bg)) == len(bg), "background words must be distinct (one query each)"
    lines = ([", ".join(bg)] if bg is not None else []) + list(classes)      # class 0: the background's words
    params = {"image_size": size, "eps": eps, "min_samples": min_samples, "cls_weighting": dataset == "VOC20",
              "with_background": bg is not None}
    method = {
        "recipe": "cliptrase", "params": params, "models": {"clip": "../models/" + MODEL},
        "classes": "classes.txt",
        "outputs": {"logits": {"compare": "float"}, "correlation": {"compare": "float"},
                    "dbscan_labels": {"compare": "exact"},
                    "crop_labels": {"compare": "labels", "margin": "margin"}},
        "generator": {"script": "tests/tools/methods/cliptrase.py", "repos": repos,
                      "torch": torch.__version__.split("+")[0], "sklearn": __import__("sklearn").__version__,
                      "scipy": __import__("scipy").__version__},
        "notes": notes + f" {cluster_notes}; smallest |pair distance - eps| {clearance:.3g}; "
                 f"{int((margin < 1e-5).sum())} pixels with margin < 1e-5. Official side: clip_self_correlation."
                 f"self_clip(clip, '{dataset}', image_size={size}, eps={eps}, min={min_samples}) on one image; "
                 "logits = the input of its first F.interpolate (patch logits x exp(logit_scale) on the patch grid; "
                 "VOC20: times its [CLS] logits), rows in our query order (background words first); "
                 "correlation = the recalibrated correlation DBSCAN.fit_predict receives (its X); dbscan_labels = "
                 "its labels; crop_labels = the prediction "
                 "scores() receives (background C -> class 0); margin = top-1 minus top-2 of softmax(logits) "
                 "by class before the vote, and in each cluster's region 1 where the vote's count gap exceeds "
                 "twice its pixels with margin < 1e-5, else 0 (0 too where the cluster maps tie to 1e-5).",
    }
    common.write_fixture(name, method, image, {"logits": logits, "crop_labels": labels, "margin": margin,
                                               "correlation": X, "dbscan_labels": db.astype(np.int32)}, lines)
    print(f"{name}: {logits.shape}, labels {np.bincount(labels.ravel(), minlength=nclass)}, {cluster_notes}, "
          f"clearance {clearance:.3g}, margin<1e-5 {(margin < 1e-5).sum()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default="/work/ext/CLIPtrase")
    ap.add_argument("--explore", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    stubs.ftfy()
    stubs.einops()
    sys.path.insert(0, args.repo)
    import clip_self_correlation as cs
    import clip_utils
    cs.device = "cpu"
    repos = {"leaves162/CLIPtrase": common.git_commit(args.repo)}
    with tempfile.TemporaryDirectory() as work, torch.no_grad():
        ckpt = common.save_openai_checkpoint(CLIP_DIR, os.path.join(work, MODEL + ".pt"))
        clip, _ = clip_utils.load(ckpt, image_size=224, device="cpu")
        clip.eval()
        # names picked so that the random model's patches split between two classes (and the
        # background's second word, which wins nowhere, still takes part)
        bg = ["background", "astronaut"]
        fg = ["grass", "wall"]
        # image_size 112 / 144 rather than the official 224 / 336 keeps the label maps small; both
        # interpolate the position embeddings (224 does not), the one code path the size changes
        image = common.test_image(100, 130)
        run_case(cs, clip, repos, "cliptrase-voc21", image, "VOC21", fg, bg, 112,
                 clear_eps(cs, clip, image, 112, 0.26), 3,
                 "self_clip's VOC21 path (background words, predictions >= C -> background) at image_size 112 "
                 "(the official runs 224 with eps 0.7, min 3): 100x130 -> Resize 112 (PIL bicubic) -> 112x145 -> "
                 "CenterCrop 112 (left round(16.5) = 16), a 7x7 patch grid (positions interpolated from 14x14); "
                 "eps near 0.26, clear of every pair distance by 1e-4, min 3 (the official values put a random "
                 "model's patches in one cluster).")
        image = common.test_image(150, 130)
        run_case(cs, clip, repos, "cliptrase-voc20", image, "VOC20", ["sky", "road", "chair", "cloud"], None, 144,
                 clear_eps(cs, clip, image, 144, 0.26), 5,
                 "self_clip's VOC20 path (no background; patch logits times the [CLS] token's logits) at "
                 "image_size 144 (the official runs 336 with eps 1.1, min 7): 150x130 -> Resize 144 -> 166x144 "
                 "-> CenterCrop 144 (top 11), a 9x9 grid; eps near 0.26, clear of every pair distance by 1e-4, "
                 "min 5.")
        image = common.test_image(110, 90)
        run_case(cs, clip, repos, "cliptrase-noclusters", image, "PC59", ["sky", "road", "wall", "grass"], None, 112,
                 1e-3, 3,
                 "self_clip's plain path (PC59: no background, no [CLS] weighting) at image_size 112 with eps "
                 "1e-3, below every pair distance, so that DBSCAN finds no cluster and the labels are the "
                 "upsampled patch logits' argmax: 110x90 -> Resize 112 -> 136x112 -> CenterCrop 112 (top 12).")


if __name__ == "__main__":
    main()
