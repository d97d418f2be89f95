"""clip_vanilla method fixtures (tests/fixtures/methods/clip_vanilla-*/): plain
CLIP in SCLIP's protocol, from the official code of wangf3014/SCLIP —
CLIPForSegmentation (clip_segmentor.py: mmseg test pipeline, sliding
window, softmax, synonyms, area_thd, prob_thd) with its clip package's
VisionTransformer.forward on its plain path (csa=False: the last block is
CLIP's own, attention with residual and MLP). clip_segmentor.py asks for
csa=True (SCLIP's attention); the fixtures take the code base's csa=False
branch by passing csa=False through net.encode_image — the one change, made
from outside. On the tiny random CLIP models/clip-b16-tiny.

    /usr/bin/python3 tests/tools/methods/clip_vanilla.py [--sclip DIR]

DIR: a checkout (or extract with a COMMIT file) of SCLIP; default
/work/ext/SCLIP. mmseg / mmengine / ftfy are stubbed (official_stubs.py).
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import official_stubs as stubs  # noqa: E402

CLIP_DIR = os.path.join(common.MODELS, "clip-b16-tiny")


def run_case(cs, ckpt, repos, name, image, classes, params, notes):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(", ".join(c) for c in classes))          # SCLIP's class files: synonyms ', '
        name_path = f.name
    seg = cs.CLIPForSegmentation(clip_path=ckpt, name_path=name_path, device=torch.device("cpu"),
                                 pamr_steps=params["pamr_steps"], prob_thd=params["prob_thd"],
                                 logit_scale=params["logit_scale"], slide_stride=params["slide_stride"],
                                 slide_crop=params["slide_crop"],
                                 area_thd=params["area_thd"] if params["area_thd"] > 0 else None)
    os.unlink(name_path)
    real_encode = seg.net.encode_image
    seg.net.encode_image = lambda img, return_all=False, csa=False: real_encode(img, return_all=return_all, csa=False)
    params, sample, blended = stubs.predict_segmentor(seg, image, params)
    probs = sample.data["seg_logits"].data.float().numpy()
    labels = sample.data["pred_sem_seg"].data[0].numpy().astype(np.int32)
    logits = (blended[0] * params["logit_scale"]).float().numpy()
    margin = common.top2_margin(probs)
    method = {
        "recipe": "clip_vanilla", "params": params, "models": {"clip": "../models/clip-b16-tiny"},
        "outputs": {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"}},
        "generator": {"script": "tests/tools/methods/clip_vanilla.py", "repos": repos,
                      "torch": torch.__version__.split("+")[0], "cv2": __import__("cv2").__version__},
        "notes": notes + (" Official side: SCLIP's CLIPForSegmentation.predict on mmseg's test pipeline "
                          "(cv2 bilinear Resize, SegDataPreProcessor) with encode_image(..., csa=False), "
                          "its clip package's plain last block; 80 ImageNet templates; logits = logit_scale x "
                          "forward_slide's output, labels = pred_sem_seg, margin from seg_logits (after "
                          "area_thd)."),
    }
    common.write_fixture(name, method, image, {"logits": logits, "labels": labels, "margin": margin},
                         [", ".join(c) for c in classes])
    print(f"{name}: scores {tuple(blended.shape[2:])}, labels {np.bincount(labels.ravel(), minlength=len(classes))}, "
          f"below 1e-5: {(margin < 1e-5).sum()}, prob_thd {params['prob_thd']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sclip", default="/work/ext/SCLIP")
    args = ap.parse_args()
    torch.set_num_threads(2)
    stubs.ftfy()
    stubs.mmseg_1x()
    sys.path.insert(0, args.sclip)
    import clip_segmentor as cs
    repos = {"wangf3014/SCLIP": common.git_commit(args.sclip)}
    image = common.test_image(170, 230)
    base = dict(logit_scale=65, prob_thd=0.1, area_thd=0.1, slide_crop=224, slide_stride=112, short_side=336,
                pamr_steps=0, templates="imagenet", mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323])
    with tempfile.TemporaryDirectory() as work:
        ckpt = common.save_openai_checkpoint(CLIP_DIR, os.path.join(work, "clip-b16-tiny.pt"))
        classes = [["sky", "tree"], ["astronaut"], ["grass", "lawn"], ["horse"], ["flag"]]
        run_case(cs, ckpt, repos, "clip_vanilla-voc21", image, classes, dict(base, prob_thd=0.3),
                 "SCLIP's VOC21 protocol (configs/cfg_voc21.py: logit scale 65, prob_thd 0.1, area_thd 0.1, Resize "
                 "(2048, 336)): 230x170 image resized to 455x336, eight 224x224 windows at stride 112 (no "
                 "padding: SCLIP crops as they are), background class 0 with stuff synonyms, 5 classes (7 "
                 "queries); prob_thd near 0.3 instead of 0.1, which no pixel falls below with 5 classes.")
        run_case(cs, ckpt, repos, "clip_vanilla-context59", image, classes[1:],
                 dict(base, logit_scale=50, prob_thd=0.0, area_thd=0.0, short_side=300),
                 "SCLIP's Context59 settings (logit scale 50, no thresholds) at short side 300: 406x300, "
                 "windows 224x224 at stride 112 (3 x 3, the last ones overlapping more), 4 classes (5 queries).")


if __name__ == "__main__":
    main()
