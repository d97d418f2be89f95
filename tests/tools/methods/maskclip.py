"""MaskCLIP method fixtures (tests/fixtures/methods/maskclip-*/) from the
official code: chongzhou96/MaskCLIP's mmseg (0.x) fork — its
VisionTransformer (mmseg/models/backbones/vit.py), MaskClipHead and
EncoderDecoder.inference — with the weights and text embeddings its
tools/maskclip_utils scripts make (convert_clip_weights.py,
prompt_engineering.py's zeroshot_classifier, 85 templates) through openai's
CLIP package (openai/CLIP), on the tiny random CLIP models/clip-b16-tiny.

    /usr/bin/python3 tests/tools/methods/maskclip.py [--maskclip DIR] [--clip DIR]

DIRs: checkouts (or extracts with a COMMIT file); defaults
/work/ext/MaskCLIP and /work/ext/openai-CLIP. mmcv is stubbed
(official_stubs.mmcv_1x); the model config is configs/_base_/models/
maskclip_vit16.py at the tiny widths, the test pipeline that of
configs/_base_/datasets/pascal_voc12_aug_20.py (Resize to (2048, 512)
keeping the ratio with cv2 bilinear, Normalize with ImageNet mean/std).
"""
import argparse
import os
import runpy
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import official_stubs as stubs  # noqa: E402

CLIP_DIR = os.path.join(common.MODELS, "clip-b16-tiny")
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def load_clip_package(clip_repo, ckpt):
    """openai's clip package; clip.load('ViT-B/16') reads the tiny
    checkpoint instead, and .cuda() stays on the CPU."""
    stubs.ftfy()
    sys.path.insert(0, clip_repo)
    import clip
    real_load = clip.load

    def load(name, device="cpu", jit=False, **k):
        # clip.load tries torch.jit.load on the open file first, which leaves it
        # at its end on this torch; the state dict is read from the start
        real_torch_load = torch.load

        def from_start(f, *a, **kw):
            if hasattr(f, "seek"):
                f.seek(0)
            return real_torch_load(f, *a, **kw)
        torch.load = from_start
        try:
            return real_load(ckpt, device="cpu", jit=False)
        finally:
            torch.load = real_torch_load
    clip.load = load
    torch.Tensor.cuda = lambda self, *a, **k: self
    return clip


def official_weights(maskclip_repo, work):
    """convert_clip_weights.py run as its README says (--model ViT16, with
    and without --backbone) in WORK; returns (backbone checkpoint, the
    head's visual projection file)."""
    script = os.path.join(maskclip_repo, "tools", "maskclip_utils", "convert_clip_weights.py")
    cwd = os.getcwd()
    os.makedirs(os.path.join(work, "pretrain"), exist_ok=True)
    os.chdir(work)
    try:
        for extra in ([], ["--backbone"]):
            sys.argv = [script, "--model", "ViT16"] + extra
            runpy.run_path(script, run_name="__main__")
    finally:
        os.chdir(cwd)
    return (os.path.join(work, "pretrain", "ViT16_clip_backbone.pth"),
            os.path.join(work, "pretrain", "ViT16_clip_weights.pth"))


def text_embeddings(maskclip_repo, classes, path):
    """prompt_engineering.py: zeroshot_classifier over its 85 templates,
    permuted and saved as its __main__ does."""
    sys.path.insert(0, os.path.join(maskclip_repo, "tools", "maskclip_utils"))
    import prompt_engineering as pe
    sys.path.pop(0)
    w = pe.zeroshot_classifier("ViT-B/16", classes, pe.prompt_templates)
    torch.save(w.permute(1, 0).float(), path)
    return len(pe.prompt_templates)


def model_cfg(num_classes, text_path, projs_path, ks_thresh, pd_thresh):
    """configs/_base_/models/maskclip_vit16.py at the tiny CLIP's sizes."""
    return dict(
        backbone=dict(type="VisionTransformer", img_size=(224, 224), patch_size=16, patch_bias=False,
                      in_channels=3, embed_dims=128, num_layers=8, num_heads=2, mlp_ratio=4, out_indices=-1,
                      qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, with_cls_token=True,
                      output_cls_token=False, norm_cfg=dict(type="LN", eps=1e-6), act_cfg=dict(type="GELU"),
                      patch_norm=False, pre_norm=True, final_norm=True, return_qkv=True,
                      interpolate_mode="bicubic", num_fcs=2, norm_eval=False),
        decode_head=dict(type="MaskClipHead", vit=True, in_channels=128, channels=0, num_classes=num_classes,
                         text_categories=num_classes, text_channels=32, dropout_ratio=0, in_index=-1,
                         norm_cfg=dict(type="SyncBN", requires_grad=True), align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                         init_cfg=dict(), text_embeddings_path=text_path, visual_projs_path=projs_path,
                         ks_thresh=ks_thresh, pd_thresh=pd_thresh),
        train_cfg=dict(), test_cfg=stubs.AttrDict(mode="whole"))


def run_case(seg_mod, work, backbone_ckpt, projs, name, image, classes, params, notes, repos, maskclip_repo):
    text_path = os.path.join(work, name + "_clip_text.pth")
    ntemplates = text_embeddings(maskclip_repo, classes, text_path)
    real_torch_load = torch.load
    torch.load = lambda f, map_location=None, **k: real_torch_load(f, map_location="cpu", **k)
    try:
        model = seg_mod.EncoderDecoder(**model_cfg(len(classes), text_path, projs,
                                                   params["ks_thresh"], params["pd_thresh"]))
        # tools/test.py: load_checkpoint(model, 'pretrain/ViT16_clip_backbone.pth')
        state = torch.load(backbone_ckpt)["state_dict"]
    finally:
        torch.load = real_torch_load
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("decode_head.") for k in missing), (missing, unexpected)
    model.eval()
    # test pipeline: LoadImageFromFile (BGR), Resize(img_scale=(2048, short), keep_ratio), Normalize(to_rgb)
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    resized = stubs.mmcv_rescale(bgr, (params["long_side"], params["short_side"]))
    img = stubs.mmcv_imnormalize(resized, MEAN, STD, to_rgb=True)
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    meta = [dict(ori_shape=image.shape, img_shape=resized.shape, pad_shape=resized.shape, flip=False)]
    captured = {}
    real_whole = model.whole_inference

    def whole_inference(*a, **k):
        captured["logit"] = real_whole(*a, **k)
        return captured["logit"]
    model.whole_inference = whole_inference
    with torch.no_grad():
        probs = model.inference(x, meta, rescale=True)[0]             # softmax over the head's scores
    labels = probs.argmax(0).numpy().astype(np.int32)                 # simple_test
    logits = (captured["logit"][0] * params["logit_scale"]).numpy()
    margin = common.top2_margin(probs.numpy())
    method = {
        "recipe": "maskclip", "params": params, "models": {"clip": "../models/clip-b16-tiny"},
        "outputs": {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"}},
        "generator": {"script": "tests/tools/methods/maskclip.py", "repos": repos,
                      "torch": torch.__version__.split("+")[0], "cv2": __import__("cv2").__version__},
        "notes": notes + (" Official side: EncoderDecoder.inference (whole) of MaskCLIP's mmseg with "
                          "configs/_base_/models/maskclip_vit16.py at the tiny widths, weights from "
                          "convert_clip_weights.py, text from prompt_engineering.py (%d templates); "
                          "logits = whole_inference's output (the head's scores at the image size; "
                          "MaskCLIP's softmax takes them unscaled, logit_scale 1), labels = simple_test's "
                          "argmax, margin from inference's softmax." % ntemplates),
    }
    common.write_fixture(name, method, image, {"logits": logits, "labels": labels, "margin": margin},
                         [c for c in classes])
    print(f"{name}: input {tuple(x.shape[2:])}, labels {np.bincount(labels.ravel(), minlength=len(classes))}, "
          f"min margin {margin.min():.2e}, below 1e-5: {(margin < 1e-5).sum()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--maskclip", default="/work/ext/MaskCLIP")
    ap.add_argument("--clip", default="/work/ext/openai-CLIP")
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = tempfile.mkdtemp(prefix="maskclip-")
    ckpt = common.save_openai_checkpoint(CLIP_DIR, os.path.join(work, "clip-b16-tiny.pt"))
    load_clip_package(args.clip, ckpt)
    stubs.mmcv_1x()
    _, _, _, seg_mod = stubs.maskclip_mmseg(args.maskclip)
    backbone_ckpt, projs = official_weights(args.maskclip, work)
    repos = {"chongzhou96/MaskCLIP": common.git_commit(args.maskclip), "openai/CLIP": common.git_commit(args.clip)}
    image = common.test_image(170, 230)
    classes = ["sky", "astronaut", "grass", "horse", "flag"]
    base = dict(logit_scale=1, prob_thd=0.0, slide_crop=0, short_side=512, long_side=2048, templates="maskclip",
                mean=MEAN, std=STD, ks_thresh=0.0, pd_thresh=0.0)
    run_case(seg_mod, work, backbone_ckpt, projs, "maskclip-voc20", image, classes, base,
             "230x170 image resized to 693x512 (Resize (2048, 512) keeping the ratio), whole-image inference; "
             "693 is no multiple of 16: PatchEmbed pads 11 columns at the right ('corner') and the 32x44 "
             "score grid is resized to 512x693, then to 170x230. 5 classes, no background.",
             repos, args.maskclip)
    run_case(seg_mod, work, backbone_ckpt, projs, "maskclip-refine", image, classes,
             dict(base, short_side=300, ks_thresh=0.6, pd_thresh=0.6),
             "230x170 image resized to 406x300: both sides padded ('corner', 4 rows, 10 columns) to a 19x26 "
             "grid; key smoothing (ks_thresh 0.6) and prompt denoising (pd_thresh 0.6), the refinements of "
             "configs/maskclip/maskclip_vit16_520x520_pascal_context_59.py (commented out there at 1.0 / 0.5, which leave one class here).",
             repos, args.maskclip)


if __name__ == "__main__":
    main()
