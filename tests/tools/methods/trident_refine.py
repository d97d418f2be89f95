"""Method fixtures for sam_refine against Trident's own refinement code
(YuHengsss/Trident seg_utils/utils.py: sam_refinement, run unmodified with
the segment_anything copy that repository carries).

    /usr/bin/python3 tests/tools/methods/trident_refine.py \
        --trident /path/to/Trident --segment-anything /path/to/segment-anything

--trident: a checkout (or `git archive` with a COMMIT file) of
YuHengsss/Trident; its seg_utils imports skimage and torchvision (Debian's
python3-skimage, python3-torchvision). --segment-anything is only where
sam_amg.py's model builder finds segment_anything when Trident's copy is
not first on sys.path; Trident's copy is used (it differs from upstream
only in returning the last block's attention, unused here).

The SAM is tests/fixtures/methods/models/sam-refine-tiny, made by
sam_amg.py's builder with a 256 px input and patch 4: Trident sizes its mask
prompt for SAM's 64 x 64 embedding (256 x 256 low-res masks); 8 mask-input
channels, so the mask prompt matters. The coarse
segmentation is planted: smooth per-class score fields, softmaxed into
class probabilities, labels = their argmax with pixels under prob_thd set
to class 0 (what Trident's postprocess_result hands to sam_refinement).
It reaches fmseg through a small recipe in the fixture directory
(coarse_file.lua, reading coarse.safetensors), so sam_refine runs as a
config's `refine:` step exactly as after SCLIP or any other recipe.

Outputs: `labels` (refined_masks), `scores` (refined_logits after
map_failed_regions), `prompt_boxes` (the kept components' boxes x
down_ratio, Trident's combined_boxes); the margin of the labels is the top-1
minus top-2 of map_refinement_coarse's class map where a mask covers (the
argmax Trident takes), unbounded elsewhere (the coarse label is copied).
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import METHODS, MODELS, git_commit, save_safetensors, test_image, write_fixture  # noqa: E402

COARSE_RECIPE = '''-- The planted coarse segmentation of this fixture (coarse.safetensors:
-- labels (H, W) int32, probs (C, H, W)), as a semantic recipe's result, so
-- that sam_refine runs as a `refine:` step (tests/tools/methods/trident_refine.py).
local safetensors = require("fmseg.io.safetensors")
return {
  name = "coarse_file",
  defaults = { file = "coarse.safetensors" },
  setup = function(params, models, classes, cfg) return { params = params } end,
  segment = function(state, img, previous, source)
    local dir = source.path:match("^(.*)/[^/]*$") or "."
    local st = safetensors.open(dir .. "/" .. state.params.file)
    return { kind = "semantic", labels = st:get("labels"):clone(), scores = st:get("probs"):clone() }
  end,
}
'''


def planted_coarse(h, w, nclasses, seed, prob_thd):
    """Smooth random score fields per class → probs (C, H, W) float32 and
    labels (H, W) int64 as Trident's postprocess_result makes them."""
    import torch
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, nclasses, 6, 8, generator=g) * 3.0
    field = torch.nn.functional.interpolate(low, (h, w), mode="bicubic", align_corners=False)[0]
    probs = field.softmax(0)
    labels = probs.argmax(0, keepdim=True)
    labels[probs.max(0, keepdim=True)[0] < prob_thd] = 0
    return probs.float(), labels


def run_case(args, name, settings, seed, notes):
    import torch
    sys.path.insert(0, args.trident)
    import seg_utils.utils as tu
    from segment_anything import SamPredictor
    import sam_amg

    # Trident sizes its mask prompt for SAM's 64x64 embedding (256 x 256
    # low-res masks), so this tiny SAM keeps that grid: 256 px, patch 4
    sam_amg.VISION = dict(sam_amg.VISION, image_size=256, patch_size=4, window_size=8)
    model_dir = sam_amg.make_sam("sam-refine-tiny")
    sam = sam_amg.build_original(model_dir).eval()
    predictor = SamPredictor(sam)
    image = test_image(96, 136)
    h, w = image.shape[:2]
    nc = settings["nclasses"]
    probs, labels = planted_coarse(h, w, nc, seed, settings["prob_thd"])

    seen = {}
    original_map = tu.map_refinement_coarse

    def observed(*a, **k):  # records the class map Trident takes the argmax of
        out = original_map(*a, **k)
        seen["whole"] = out[1].clone()
        return out

    tu.map_refinement_coarse = observed
    # torch 1.13 has no float16 nearest upsampling on the CPU; Trident casts
    # its integer label map to half only to interpolate it (values exact
    # either way), so half inputs go through float32 and come back as half
    interpolate = torch.nn.functional.interpolate

    def interpolate_half(x, *a, **k):
        if x.dtype == torch.float16:
            return interpolate(x.float(), *a, **k).half()
        return interpolate(x, *a, **k)

    torch.nn.functional.interpolate = interpolate_half
    with torch.no_grad():
        predictor.set_image(image)
        refined, scores, refined_logits, boxes = tu.sam_refinement(
            image, labels.clone(), probs.clone(), nc, predictor, settings["coarse_thresh"],
            settings["min_area"], settings["mask_coeff"], settings["iou_thresh"])
    tu.map_refinement_coarse = original_map
    torch.nn.functional.interpolate = interpolate
    refined = refined.reshape(h, w).numpy().astype(np.int32)
    if "whole" in seen:
        s = np.sort(seen["whole"].numpy(), axis=0)
        margin = (s[-1] - s[-2]).astype(np.float32)
        covered = seen["whole"].numpy().sum(0) > 0
        margin[~covered] = np.float32(1e30)
    else:
        margin = np.full((h, w), 1e30, dtype=np.float32)
    boxes = (torch.as_tensor(boxes).reshape(-1, 4).numpy().astype(np.int32) if len(boxes)
             else np.zeros((0, 4), np.int32))
    kept = int(boxes.shape[0])
    changed = int((refined != labels.reshape(h, w).numpy()).sum())
    print(f"{name}: {kept} masks kept, {changed} pixels changed, SAM scores "
          f"{None if scores is None else [round(float(x), 3) for x in scores.flatten()]}")
    trident = os.path.abspath(args.trident)
    method = {
        "recipe": "coarse_file.lua", "params": {},
        "models": {"sam": "../models/sam-refine-tiny"},
        "refine": {"recipe": "sam_refine", "params": {
            "downsample": 2, "coarse_thresh": settings["coarse_thresh"], "min_area": settings["min_area"],
            "point_mode": "logit_max", "negatives": "none", "mask_prompt": True,
            "mask_coeff": settings["mask_coeff"], "mask_norm": "rows", "select": "predicted_iou",
            "iou_thresh": settings["iou_thresh"]}},
        "outputs": {"labels": {"compare": "labels", "margin": "margin"},
                    "scores": {"compare": "float"}, "prompt_boxes": {"compare": "exact"}},
        "generator": {"script": "tests/tools/methods/trident_refine.py",
                      "repos": {"YuHengsss/Trident": git_commit(trident)},
                      "torch": torch.__version__},
        "notes": notes + f" Trident kept {kept} of the prompted components; {changed} pixels changed.",
    }
    out = write_fixture(name, method, image, {"labels": refined, "scores": refined_logits.float().numpy(),
                                              "margin": margin, "prompt_boxes": boxes})
    save_safetensors(os.path.join(out, "coarse.safetensors"),
                     {"labels": labels.reshape(h, w).numpy().astype(np.int32), "probs": probs.numpy()})
    with open(os.path.join(out, "coarse_file.lua"), "w") as f:
        f.write(COARSE_RECIPE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trident", required=True)
    ap.add_argument("--segment-anything", required=False)
    args = ap.parse_args()
    sys.path.insert(0, args.trident)               # Trident's segment_anything first
    if args.segment_anything:
        sys.path.append(args.segment_anything)
    run_case(args, "sam_refine-trident", dict(nclasses=4, prob_thd=0.3, coarse_thresh=0.3, min_area=20,
                                              mask_coeff=0.005, iou_thresh=0.1), seed=3,
             notes="Trident's sam_refinement on a planted 4-class coarse map of a 96x136 image: 2x "
                   "downsampled components (8-connected, >= 20 px there), pixels under coarse_thresh "
                   "ignored, logit-max points, boxes, the mask prompt passed unbatched (its LayerNorm2d "
                   "over rows), single-mask outputs kept above iou_thresh, failed components.")


if __name__ == "__main__":
    main()
