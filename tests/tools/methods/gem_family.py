"""GEM method fixtures (tests/fixtures/methods/gem-*/) from the official code,
on the tiny random CLIP models/clip-b16-tiny:

  gem-wrapper     WalBouss/GEM as its README runs it: create_gem_model +
                  GEMWrapper.forward (the last 6 blocks with self-self
                  attention, "a photo of a {}.", min-max maps) on an image
                  that get_gem_img_transform leaves as it is (192x272), on
                  open_clip v2.23.0 (GEM's requirements: open_clip_torch<=2.23.0).
  gem-clearclip-* the benchmark protocol GEM's configs follow: mc-lan/ClearCLIP's
                  ClearCLIPSegmentation with model_type='GEM' (its own copy of
                  GEM's code, ignore_residual=True from configs/base_config.py,
                  80 ImageNet templates, no min-max), mmseg's test pipeline.

    /usr/bin/python3 tests/tools/methods/gem_family.py [--gem DIR] [--open-clip DIR] [--clearclip DIR]

The two code bases bundle different open_clip packages, so each runs in a
process of its own (--part). Both run in float32 on the CPU (their .half()
casts are no-ops); what cannot be installed is stubbed (official_stubs.py).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import official_stubs as stubs  # noqa: E402

CLIP_DIR = os.path.join(common.MODELS, "clip-b16-tiny")
CLEARCLIP_MEAN, CLEARCLIP_STD = [122.771, 116.746, 104.094], [68.501, 66.632, 70.323]


def generator(repos):
    return {"script": "tests/tools/methods/gem_family.py", "repos": repos,
            "torch": torch.__version__.split("+")[0], "cv2": __import__("cv2").__version__}


def patch_create_model(open_clip, ckpt):
    """open_clip.create_model('ViT-B-16', 'openai', precision=...) reads
    openai's checkpoint through load_openai_model; here the tiny one, fp32."""
    def create_model(*a, **k):
        return open_clip.load_openai_model(ckpt, precision="fp32", device="cpu")
    open_clip.create_model = create_model
    return create_model


# ---- WalBouss/GEM ----------------------------------------------------------------------

def part_gem(args, ckpt):
    stubs.ftfy()
    stubs.einops()
    sys.path[:0] = [os.path.join(args.open_clip, "src"), args.gem]
    import open_clip
    patch_create_model(open_clip, ckpt)
    import gem
    from PIL import Image
    repos = {"WalBouss/GEM": common.git_commit(args.gem),
             "mlfoundations/open_clip": common.git_commit(args.open_clip)}
    model = gem.create_gem_model(model_name="ViT-B/16", pretrained="openai", device="cpu")
    model.eval()
    # README: get_gem_img_transform() resizes to 448x448; at a 192x272 size of its own the
    # transform leaves this image as it is and the fixture stays small
    transform = gem.get_gem_img_transform(img_size=(192, 272))
    image = common.test_image(192, 272)
    classes = ["astronaut", "grass", "horse", "flag"]
    logit_scale = 50
    x = transform(Image.fromarray(image)).unsqueeze(0)
    with torch.no_grad():
        maps = model(x, classes, normalize=True)[0]                   # (C, 192, 272), min-max
    probs = torch.softmax(maps * logit_scale, 0).numpy()
    labels = maps.argmax(0).numpy().astype(np.int32)
    params = dict(logit_scale=logit_scale, prob_thd=0.0, slide_crop=0, short_side=0, templates="photo",
                  gem_depth=7, ss_attn_iter=1, residual=True, minmax=True)
    method = {
        "recipe": "gem", "params": params, "models": {"clip": "../models/clip-b16-tiny"},
        "outputs": {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"}},
        "generator": generator(repos),
        "notes": "GEM's own inference (README): create_gem_model('ViT-B/16', 'openai') on the tiny "
                 "checkpoint, get_gem_img_transform(img_size=(192, 272)) (bicubic Resize, which leaves this "
                 "192x272 image as it is; ToTensor; openai's Normalize), GEMWrapper.forward(image, classes) "
                 "with normalize=True: 12x17 grid (positions resampled with antialiased bicubic), the last 6 "
                 "blocks' self-self path with residual, 'a photo of a {}.', maps min-max normalised per "
                 "class at 192x272. logits = 50 x those maps; GEM gives no labels: labels = their argmax, "
                 "margin from softmax(50 x maps) (the protocol's probabilities).",
    }
    common.write_fixture("gem-wrapper", method, image,
                         {"logits": (maps * logit_scale).numpy(), "labels": labels,
                          "margin": common.top2_margin(probs)}, classes)
    print(f"gem-wrapper: labels {np.bincount(labels.ravel(), minlength=len(classes))}")


# ---- ClearCLIP's GEM run ------------------------------------------------------------------

def part_clearclip(args, ckpt):
    stubs.ftfy()
    stubs.einops()
    stubs.mmseg_1x()
    stubs.module("BLIP.models.blip_retrieval", blip_retrieval=None)    # the BLIP path only
    sys.path.insert(0, args.clearclip)
    import open_clip
    create_model = patch_create_model(open_clip, ckpt)
    import clearclip_segmentor as cs
    cs.create_model = create_model
    repos = {"mc-lan/ClearCLIP": common.git_commit(args.clearclip)}
    image = common.test_image(170, 230)

    def run(name, classes, params, notes):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(",".join(c) for c in classes))        # ClearCLIP's class files: synonyms ','
            name_path = f.name
        with stubs.float32():
            seg = cs.ClearCLIPSegmentation(clip_type="CLIP", vit_type="ViT-B/16", model_type="GEM",
                                           name_path=name_path, device=torch.device("cpu"),
                                           ignore_residual=not params["residual"],
                                           prob_thd=params["prob_thd"], logit_scale=params["logit_scale"],
                                           slide_stride=params["slide_stride"], slide_crop=params["slide_crop"])
            params, sample, blended = stubs.predict_segmentor(seg, image, params)
        os.unlink(name_path)
        probs = sample.data["seg_logits"].data.float().numpy()
        labels = sample.data["pred_sem_seg"].data[0].numpy().astype(np.int32)
        logits = (blended[0] * params["logit_scale"]).float().numpy()
        method = {
            "recipe": "gem", "params": params, "models": {"clip": "../models/clip-b16-tiny"},
            "outputs": {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"}},
            "generator": generator(repos),
            "notes": notes + " Official side: ClearCLIPSegmentation(model_type='GEM', ignore_residual=True "
                             "as configs/base_config.py) .predict on mmseg's test pipeline (cv2 bilinear "
                             "Resize, SegDataPreProcessor); its GEM (gem/, create_gem_model: depth 7, one "
                             "iteration) with 80 ImageNet templates; logits = logit_scale x forward_slide's "
                             "output, labels = pred_sem_seg, margin from seg_logits.",
        }
        margin = common.top2_margin(probs)
        common.write_fixture(name, method, image, {"logits": logits, "labels": labels, "margin": margin},
                             [", ".join(c) for c in classes])
        print(f"{name}: scores {tuple(blended.shape[2:])}, labels "
              f"{np.bincount(labels.ravel(), minlength=len(classes))}, below 1e-5: {(margin < 1e-5).sum()}")

    base = dict(logit_scale=50, slide_crop=448, slide_stride=224, pad_multiple="patch", short_side=448,
                templates="imagenet", gem_depth=7, ss_attn_iter=1, residual=False, minmax=False,
                mean=CLEARCLIP_MEAN, std=CLEARCLIP_STD)
    run("gem-clearclip-voc21", [["background"], ["astronaut", "person"], ["sheep"], ["bus"], ["flag"]],
        dict(base, prob_thd=0.22),
        "ClearCLIP's VOC21 protocol (configs/cfg_voc21.py: Resize (2048, 448)): 230x170 image resized to "
        "606x448, two 448x448 windows at stride 224 (x = 0, 158); background class 'background', 4 more "
        "classes, one with a synonym. prob_thd 0.22 instead of VOC21's 0.5: the tiny model's best "
        "probabilities lie between 0.21 and 0.25, so 0.5 would leave only background; 0.22 splits the image.")
    run("gem-clearclip-pad", [["grass", "lawn"], ["car"], ["flag"], ["table"]],
        dict(base, prob_thd=0.0, short_side=300),
        "Short side 300: one 300x406 window (smaller than the 448 crop) zero-padded to 304x416 (2 / 2 rows, "
        "5 / 5 columns, compute_padsize), 19x26 grid; 4 classes, one with a synonym, no background (as Context59).")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gem", default="/work/ext/GEM")
    ap.add_argument("--open-clip", default="/work/ext/open_clip-v2.23.0")
    ap.add_argument("--clearclip", default="/work/ext/ClearCLIP")
    ap.add_argument("--part", choices=["gem", "clearclip"])
    ap.add_argument("--ckpt")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.part:
        {"gem": part_gem, "clearclip": part_clearclip}[args.part](args, args.ckpt)
        return
    with tempfile.TemporaryDirectory() as work:
        ckpt = common.save_openai_checkpoint(CLIP_DIR, os.path.join(work, "clip-b16-tiny.pt"))
        for part in ("gem", "clearclip"):
            subprocess.check_call([sys.executable, __file__, "--part", part, "--ckpt", ckpt, "--gem", args.gem,
                                   "--open-clip", args.open_clip, "--clearclip", args.clearclip])


if __name__ == "__main__":
    main()
