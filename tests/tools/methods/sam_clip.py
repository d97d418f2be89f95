"""Method fixtures for sam_clip: SAM's automatic masks labelled by CLIP, with
the mask crops of the mask-proposal classifiers it follows.

    /usr/bin/python3 tests/tools/methods/sam_clip.py --segment-anything DIR \
        --zsseg DIR --clip DIR

--segment-anything: facebookresearch/segment-anything (the generator);
--zsseg: MendelXu/zsseg.baseline (crop_with_mask, expand_box of
mask_former/modeling/clip_adapter/utils.py, loaded from its file; the
detectron2 names it imports are stubbed, and BitMasks.get_bounding_boxes,
which its adapter calls, is written out here as detectron2 defines it:
x0, y0, x1 + 1, y1 + 1); --clip: openai/CLIP (the model code and its
tokenizer). Checkouts or `git archive` trees with a COMMIT file; none is
copied here.

Per mask, as zsseg's MaskFormerClipAdapter._preprocess_image (and OVSeg's,
the same): the box crop with the outside filled with CLIP's mean colour,
normalised, resized bicubically to 224 without antialiasing; CLIP image
features; the 80 ImageNet templates' text classifier (each template
embedding normalised, averaged, normalised); softmax of logit_scale x
cosine over every synonym, synonyms of a class by max — the CLIP side of
recipes/sam_clip.lua. The painting (largest mask first, so smaller masks
stay on top) is sam_clip's own rule and is repeated here to make `labels`.

Outputs: class_probs (C, N), labels (H, W) with their margin (the painted
mask's top-1 minus top-2 class probability; unbounded where no mask).
"""
import argparse
import importlib.util
import os
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import MODELS, clip_to_openai, git_commit, test_image, write_fixture  # noqa: E402

CLASSES = ["sky, wall", "person, astronaut", "flag", "rock, ground"]
LOGIT_SCALE = 100.0
AMG = dict(points_per_side=6, points_per_batch=36, pred_iou_thresh=0.1, stability_score_thresh=0.5,
           box_nms_thresh=0.7, crop_n_layers=0, min_mask_region_area=0)


def load_zsseg_utils(zsseg):
    """zsseg's clip_adapter/utils.py as a module, its detectron2 imports stubbed."""
    d2 = types.ModuleType("detectron2")
    d2.utils = types.ModuleType("detectron2.utils")
    d2.utils.comm = types.ModuleType("detectron2.utils.comm")
    d2.utils.comm.get_local_rank = lambda: 0
    d2.utils.comm.synchronize = lambda: None
    sys.modules.update({"detectron2": d2, "detectron2.utils": d2.utils, "detectron2.utils.comm": d2.utils.comm})
    path = os.path.join(zsseg, "mask_former", "modeling", "clip_adapter", "utils.py")
    spec = importlib.util.spec_from_file_location("zsseg_clip_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bit_mask_boxes(masks):
    """detectron2 BitMasks.get_bounding_boxes: (N, 4) float x0, y0, x1 + 1, y1 + 1."""
    import torch
    boxes = torch.zeros(masks.shape[0], 4, dtype=torch.float32)
    x_any, y_any = torch.any(masks, dim=1), torch.any(masks, dim=2)
    for i in range(masks.shape[0]):
        x, y = torch.where(x_any[i])[0], torch.where(y_any[i])[0]
        if len(x) and len(y):
            boxes[i] = torch.as_tensor([x[0], y[0], x[-1] + 1, y[-1] + 1], dtype=torch.float32)
    return boxes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--segment-anything", required=True)
    ap.add_argument("--zsseg", required=True)
    ap.add_argument("--clip", required=True)
    args = ap.parse_args()
    sys.path.insert(0, args.segment_anything)
    sys.path.insert(0, args.clip)
    import torch
    import torch.nn.functional as F
    import official_stubs
    official_stubs.ftfy()              # not in Debian; the prompts are plain ASCII
    import clip
    from segment_anything import SamAutomaticMaskGenerator
    import sam_amg
    zu = load_zsseg_utils(args.zsseg)
    torch.set_grad_enabled(False)

    image = test_image(96, 128)
    h, w = image.shape[:2]
    sam = sam_amg.build_original(os.path.join(MODELS, "sam-amg-tiny"))
    records = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **AMG).generate(image)
    print(f"{len(records)} masks")

    # clip.load would try the file as TorchScript first and then read the
    # same, consumed handle; build_model is what it calls on a state dict
    from clip.model import build_model
    model = build_model(clip_to_openai(os.path.join(MODELS, "clip-b16-tiny"))).float().eval()

    # text classifier: queries x 80 templates (zsseg's CLIP.IMAGENET_PROMPT)
    queries, query_class = [], []
    for c, line in enumerate(CLASSES):
        for q in line.split(","):
            queries.append(q.strip())
            query_class.append(c)
    templates = zu.CLIP.IMAGENET_PROMPT
    text = []
    for q in queries:
        e = model.encode_text(clip.tokenize([t.format(q) for t in templates])).float()
        e = e / e.norm(dim=-1, keepdim=True)
        m = e.mean(0)
        text.append(m / m.norm())
    text = torch.stack(text)                                          # (Q, P)

    # crops as zsseg's _preprocess_image: fill "mean", normalise, bicubic 224
    img = torch.from_numpy(image).permute(2, 0, 1).float()            # (3, H, W) 0-255
    mean = torch.Tensor(zu.CLIP.PIXEL_MEAN).reshape(3, 1, 1) * 255.0
    std = torch.Tensor(zu.CLIP.PIXEL_STD).reshape(3, 1, 1) * 255.0
    masks = torch.from_numpy(np.stack([r["segmentation"] for r in records]))
    boxes = bit_mask_boxes(masks)
    regions = []
    for box, m in zip(boxes, masks.float()):
        r = zu.crop_with_mask(img, m, box, fill=tuple(float(v) * 255.0 for v in zu.CLIP.PIXEL_MEAN),
                              expand_ratio=1.0)[None]
        r = (r - mean) / std
        regions.append(F.interpolate(r, size=(224, 224), mode="bicubic"))
    feats = model.encode_image(torch.cat(regions)).float()
    feats = feats / feats.norm(dim=-1, keepdim=True)
    probs_q = (LOGIT_SCALE * text @ feats.t()).softmax(0)             # (Q, N)
    nc = len(CLASSES)
    probs = torch.stack([probs_q[[i for i, c in enumerate(query_class) if c == k]].max(0)[0]
                         for k in range(nc)])                         # (C, N)

    # sam_clip's painting: largest first, ties by order
    order = sorted(range(len(records)), key=lambda i: (-records[i]["area"], i))
    labels = np.zeros((h, w), np.int32)
    margin = np.full((h, w), 1e30, np.float32)
    best = probs.argmax(0).numpy()
    top2 = probs.sort(0, descending=True)[0].numpy()
    for i in order:
        sel = records[i]["segmentation"]
        labels[sel] = best[i]
        margin[sel] = top2[0, i] - top2[1, i]
    method = {
        "recipe": "sam_clip",
        "params": dict(AMG, logit_scale=LOGIT_SCALE, templates="imagenet", crop_mode="mask", crop_expand=1.0,
                       prob_thd=0.0, uncovered=0),
        "models": {"sam": "../models/sam-amg-tiny", "clip": "../models/clip-b16-tiny"},
        "outputs": {"class_probs": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"}},
        "generator": {"script": "tests/tools/methods/sam_clip.py", "torch": torch.__version__,
                      "repos": {"facebookresearch/segment-anything": git_commit(args.segment_anything),
                                "MendelXu/zsseg.baseline": git_commit(args.zsseg),
                                "openai/CLIP": git_commit(args.clip)}},
        "notes": (f"{len(records)} automatic masks of segment-anything's generator on a 96x128 image, each cut "
                  "out by zsseg's crop_with_mask (mean fill), normalised, bicubic to 224 without antialias, "
                  "classified by openai CLIP against the 80 ImageNet templates (logit scale 100, synonyms by "
                  "max); labels painted largest mask first."),
    }
    write_fixture("sam_clip-zsseg", method, image, {"class_probs": probs.numpy().astype(np.float32),
                                                    "labels": labels, "margin": margin}, classes=CLASSES)


if __name__ == "__main__":
    main()
