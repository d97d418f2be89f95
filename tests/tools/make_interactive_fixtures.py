"""tests/fixtures/interactive/ritm_clicks.safetensors from RITM's own
evaluation code: isegm/inference/clicker.py (Clicker), evaluation.py
(evaluate_sample) and utils.py (get_iou, compute_noc_metric) of
SamsungLabs/ritm_interactive_segmentation, run unmodified on small object
masks with a deterministic stand-in predictor, so that fmseg's click
simulator (fmseg.eval.interactive) is checked click for click.

    /usr/bin/python3 tests/tools/make_interactive_fixtures.py [--ritm DIR]

DIR (default ../ext/ritm beside the repository) is a checkout, or a `git
archive` extract with a COMMIT file, holding isegm/. What the evaluation
modules import but does not use on this path (the dataset classes and the
model loader in utils.py, tqdm) is stubbed; numpy 1.24 no longer has
np.bool and np.int, which the Clicker and compute_noc_metric use as dtypes,
so they are aliased to bool and int.

The stand-in predictor (the "disk predictor", written again in
tests/lua/test_interactive.lua): the pixels within RADIUS of a positive
click and not within RADIUS of a negative one, distances
(y - cy)^2 + (x - cx)^2 <= RADIUS^2. Its masks grow and shrink with the
clicks, so the simulator places positive and negative clicks.

Per case NAME the file holds NAME.gt (H, W) int32 (1 object, 0 not, -1
ignored), NAME.clicks (K, 3) int32 (y, x, positive) in order, NAME.ious (K)
float32, NAME.noc (3) float32 and NAME.over_max (3) int32 at IoU 0.80,
0.85, 0.90 over the case's single object, NAME.radius (1) int32 and
NAME.target (1) float32 (evaluate_sample's max_iou_thr); and all.noc /
all.over_max over every case together.
"""
import argparse
import json
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "methods"))
import common  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "interactive")
THRESHOLDS = [0.8, 0.85, 0.9]
MAX_CLICKS = 20


def stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def load_ritm(ritm):
    """isegm.inference.{clicker, evaluation, utils} with their unused imports stubbed."""
    np.bool, np.int = bool, int         # removed in numpy 1.24: the Clicker's dtype, compute_noc_metric's
    sys.path.insert(0, ritm)
    unused = lambda *a, **k: None       # noqa: E731
    stub("isegm.data")
    stub("isegm.data.datasets", GrabCutDataset=unused, BerkeleyDataset=unused, DavisDataset=unused,
         SBDEvaluationDataset=unused, PascalVocDataset=unused)
    stub("isegm.utils.serialization", load_model=unused)
    try:
        import tqdm  # noqa: F401
    except ImportError:
        stub("tqdm", tqdm=lambda x, **k: x)
    from isegm.inference import evaluation, utils
    return evaluation, utils


class DiskPredictor:
    """RITM's predictor interface (set_input_image, get_prediction(clicker))."""

    def __init__(self, shape, radius):
        self.yy, self.xx = np.mgrid[:shape[0], :shape[1]]
        self.r2 = radius * radius

    def set_input_image(self, image):
        pass

    def get_prediction(self, clicker):
        pos = np.zeros(self.yy.shape, bool)
        neg = np.zeros(self.yy.shape, bool)
        for c in clicker.get_clicks():
            cy, cx = c.coords
            near = (self.yy - cy) ** 2 + (self.xx - cx) ** 2 <= self.r2
            if c.is_positive:
                pos |= near
            else:
                neg |= near
        return (pos & ~neg).astype(np.float32)   # probabilities 0 / 1; pred_thr 0.49


def ellipse(h, w, cy, cx, ry, rx):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def cases():
    h, w = 48, 64
    rng = np.random.default_rng(7)
    out = {}
    # an ellipse with GrabCut's ignored boundary band
    obj = ellipse(h, w, 24, 30, 14, 20)
    band = ellipse(h, w, 24, 30, 16, 22) & ~ellipse(h, w, 24, 30, 12, 18)
    gt = obj.astype(np.int32)
    gt[band] = -1
    out["band"] = (gt, 5, 1.01)
    out["band_stop"] = (gt, 5, 0.90)          # stopping at IoU 0.90, as RITM's NoC runs
    # two blobs: the second is found by a later positive click
    gt = (ellipse(h, w, 14, 14, 9, 10) | ellipse(h, w, 34, 48, 8, 12)).astype(np.int32)
    out["two_blobs"] = (gt, 6, 1.01)
    # an object against the image border (its distance counts the border)
    gt = np.zeros((h, w), np.int32)
    gt[:, :20] = 1
    gt[30:, :40] = 1
    out["border"] = (gt, 9, 1.01)
    # a thin ring: a large disk spills over it, negative clicks follow
    gt = (ellipse(h, w, 24, 32, 18, 26) & ~ellipse(h, w, 24, 32, 11, 17)).astype(np.int32)
    out["ring"] = (gt, 12, 1.01)
    # random blobs
    gt = np.zeros((h, w), np.int32)
    for _ in range(5):
        cy, cx = rng.integers(8, h - 8), rng.integers(8, w - 8)
        gt |= ellipse(h, w, cy, cx, rng.integers(3, 9), rng.integers(3, 12)).astype(np.int32)
    out["blobs"] = (gt, 5, 1.01)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ritm", default=os.path.join(ROOT, "..", "ext", "ritm"))
    a = ap.parse_args()
    evaluation, utils = load_ritm(os.path.abspath(a.ritm))
    tensors, all_ious, summary = {}, [], {}
    for name, (gt, radius, target) in cases().items():
        pred = DiskPredictor(gt.shape, radius)
        clicks, ious, _ = evaluation.evaluate_sample(np.zeros(gt.shape + (3,), np.uint8), gt, pred,
                                                     max_iou_thr=target, pred_thr=0.49, max_clicks=MAX_CLICKS)
        noc, over = utils.compute_noc_metric([ious], THRESHOLDS, max_clicks=MAX_CLICKS)
        tensors[f"{name}.gt"] = gt.astype(np.int32)
        tensors[f"{name}.clicks"] = np.array([[c.coords[0], c.coords[1], int(c.is_positive)] for c in clicks],
                                             np.int32)
        tensors[f"{name}.ious"] = ious.astype(np.float32)
        tensors[f"{name}.noc"] = np.array(noc, np.float32)
        tensors[f"{name}.over_max"] = np.array(over, np.int32)
        tensors[f"{name}.radius"] = np.array([radius], np.int32)
        tensors[f"{name}.target"] = np.array([target], np.float32)
        all_ious.append(ious)
        npos = sum(c.is_positive for c in clicks)
        summary[name] = f"{len(clicks)} clicks ({npos} positive), IoU {ious[0]:.3f} -> {ious[-1]:.3f}, NoC {noc}"
        print(f"{name}: {summary[name]}")
    noc, over = utils.compute_noc_metric(all_ious, THRESHOLDS, max_clicks=MAX_CLICKS)
    tensors["all.noc"] = np.array(noc, np.float32)
    tensors["all.over_max"] = np.array(over, np.int32)
    os.makedirs(OUT, exist_ok=True)
    common.save_safetensors(os.path.join(OUT, "ritm_clicks.safetensors"), tensors)
    with open(os.path.join(OUT, "ritm_clicks.json"), "w") as f:
        json.dump({"generator": "tests/tools/make_interactive_fixtures.py",
                   "repos": {"SamsungLabs/ritm_interactive_segmentation": common.git_commit(a.ritm)},
                   "numpy": np.__version__, "cv2": __import__("cv2").__version__,
                   "cases": summary}, f, indent=1, sort_keys=True)
    print("wrote", os.path.join(OUT, "ritm_clicks.safetensors"))


if __name__ == "__main__":
    main()
