"""Method fixtures of SCLIP, ClearCLIP and NACLIP (tests/fixtures/methods/
{sclip,clearclip,naclip}-*/) from their official code, end to end.

    /usr/bin/python3 tests/tools/methods/sclip_family.py [--ext DIR] [CASE...]

DIR (default $FMSEG_EXT, else ../ext beside the repository) holds the
official repositories as fetched, unmodified: SCLIP (wangf3014/SCLIP),
ClearCLIP (mc-lan/ClearCLIP), NACLIP (sinahmr/NACLIP), each a checkout or
an extracted tree with a COMMIT file. mmseg / mmengine are replaced by the
stand-ins of mm_stubs.py. Each official segmentor is built by its own
__init__ (its own CLIP code loading the tiny model converted to openai's
checkpoint layout, its own tokenizer and template list for the text side)
and run by its own predict on the test pipeline of its configs (cv2 image
read, mmcv Resize keep_ratio with cv2 bilinear, the data preprocessor's
BGR->RGB and mean / std), on the CPU in float32.

What is taken from the official run:
  logits  the (Q, H, W) scores postprocess_result receives (after the
          sliding window, the resize to the image and PAMR) times the
          logit scale, as postprocess_result multiplies them
  labels  pred_sem_seg
  margin  top-1 minus top-2 of the class probabilities the labels are
          the argmax of (after SCLIP's area filter); where prob_thd is on,
          it is put where no pixel's top-1 comes within 1e-4 of it
  scores  (where listed) the seg_logits the official code returns: class
          probabilities (NACLIP: renormalised to sum 1)
Only two things differ from the official runs: the model is loaded from a
local checkpoint instead of a hub name, and ClearCLIP runs in float32
(its fp16 is a GPU setting: create_model(precision='fp16') and
inputs.half() in predict; neither runs on the CPU). Imports that are not
on the path taken are stood in for: ftfy (not packaged for Debian; the
identity on the ASCII prompts), ClearCLIP's BLIP and gem modules (other
model types; they need transformers, timm, fairscale, einops).

Needs Debian's python3-torch, python3-torchvision, python3-opencv,
python3-numpy, python3-pil and python3-regex (CLIP's tokenizer).
"""
import contextlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import mm_stubs  # noqa: E402

MODEL = os.path.join(common.MODELS, "clip-b16-tiny")
REPOS = {"sclip": ("SCLIP", "wangf3014/SCLIP"), "clearclip": ("ClearCLIP", "mc-lan/ClearCLIP"),
         "naclip": ("NACLIP", "sinahmr/NACLIP")}

# Class files in the repos' format (cls_*.txt: one class per line, synonyms
# separated by ", "); background first where there is one. Six text
# queries at most, to keep each fixture small.
CLEAR = ["background", "person, man", "cat, kitten", "car"]
THINGS = ["person, man", "bicycle", "cat, kitten", "car"]

# Picked (by trying class lists on this random model) so that each case
# shows what it is for: SCLIP's area filter drops "person" (4.8% of the
# foreground, under area_thd 0.1) and keeps the other two; NACLIP's
# classes each take a tenth or more of the foreground.
SCLIP_VOC = ["sky, wall", "person, man", "bird", "chair"]
NACLIP_CONTEXT = ["sky, wall", "person, woman", "cat", "boat"]
NACLIP_VOC = ["sky, wall", "person, woman", "boat", "sheep"]

# Each case: the method, the image size (H, W), the official segmentor's
# arguments (what the repo's cfg_*.py sets), the Resize scale, fmseg's
# params, and whether prob_thd is tuned to this random model (near a
# quantile of its best class probability, clear of every pixel's: the
# configs' values would either never or always fire on random weights).
CASES = {
    "sclip-voc21": dict(
        method="sclip", size=(170, 230), classes=SCLIP_VOC, scale=(2048, 336), tune_thd=0.25,
        args=dict(logit_scale=65, prob_thd=0.1, area_thd=0.1, slide_crop=224, slide_stride=112),
        notes="cfg_voc21.py: background class of stuff words with prob_thd, area_thd 0.1 "
              "(drops one of three classes here), logit scale 65; 170x230 resized to 336x455, 8 windows of 224 "
              "(stride 112), synonyms"),
    "sclip-context59": dict(
        method="sclip", size=(230, 170), classes=THINGS, scale=(2048, 336), tune_thd=None,
        args=dict(logit_scale=40, prob_thd=0.0, area_thd=None, slide_crop=224, slide_stride=112),
        notes="cfg_context59.py defaults: no background, logit scale 40; portrait 230x170 resized "
              "to 455x336, 8 windows of 224 (stride 112), synonyms"),
    "sclip-whole": dict(
        method="sclip", size=(230, 170), classes=THINGS, scale=(2048, 336), tune_thd=None,
        args=dict(logit_scale=40, prob_thd=0.0, area_thd=None, slide_crop=0, slide_stride=112),
        notes="whole image (slide_crop 0, an option of clip_segmentor.py no config uses): "
              "forward_feature(img, logit_size=ori_shape) upsamples the 28x21 grid's scores "
              "straight to the image; portrait 230x170 resized to 455x336 (not a multiple of 16: "
              "the patch embedding drops the last 7 rows); synonyms"),
    "sclip-pamr": dict(
        method="sclip", size=(170, 230), classes=THINGS, scale=(2048, 336), tune_thd=None,
        args=dict(logit_scale=40, prob_thd=0.0, area_thd=None, slide_crop=224, slide_stride=112,
                  pamr_steps=10, pamr_stride=(8, 16)),
        notes="clip_segmentor.py's PAMR option on (10 steps, dilations 8 and 16, as NACLIP): "
              "forward_slide refines the scores at the image size with the resized normalised "
              "input as guide; 170x230 resized to 336x455, 8 windows of 224; no background"),
    "clearclip-voc21": dict(
        method="clearclip", size=(170, 230), classes=CLEAR, scale=(2048, 448), tune_thd=0.25,
        args=dict(logit_scale=50, prob_thd=0.5, slide_crop=448, slide_stride=224),
        notes="cfg_voc21.py with model_type ClearCLIP: the single word background with prob_thd, "
              "logit scale 50; 170x230 resized to 448x606, 2 windows of 448 (stride 224) whose "
              "28x28 grids interpolate the position embeddings; synonyms"),
    "clearclip-pad": dict(
        method="clearclip", size=(230, 170), classes=THINGS, scale=(2048, 350), tune_thd=None,
        args=dict(logit_scale=50, prob_thd=0.0, slide_crop=448, slide_stride=224),
        notes="short side 350 (not a multiple of 16): 230x170 resized to 474x350, 2 windows of "
              "448x350, each zero-padded to 448x352 (compute_padsize) and cut back; 28x22 grids; "
              "no background"),
    "clearclip-whole": dict(
        method="clearclip", size=(170, 230), classes=THINGS, scale=(2048, 448), tune_thd=None,
        args=dict(logit_scale=50, prob_thd=0.0, slide_crop=0, slide_stride=224),
        notes="whole image (slide_crop 0): no padding, forward_feature(img, logit_size="
              "ori_shape) upsamples the 28x37 grid straight to the image; 170x230 resized to "
              "448x606; no background"),
    "naclip-context60": dict(
        method="naclip", size=(170, 230), classes=NACLIP_CONTEXT, scale=(2048, 336), tune_thd=0.25,
        args=dict(logit_scale=40, prob_thd=0.1, slide_crop=224, slide_stride=112, pamr_steps=10,
                  pamr_stride=(8, 16)),
        notes="cfg_context60.py: background of stuff words with prob_thd, logit scale 40, PAMR "
              "(10 steps, dilations 8 and 16); 170x230 resized to 336x455, 8 windows of 224 "
              "(stride 112), synonyms"),
    "naclip-voc21": dict(
        method="naclip", size=(140, 190), classes=NACLIP_VOC, scale=(2048, 336), tune_thd=0.2, scores=True,
        args=dict(logit_scale=40, prob_thd=0.1, slide_crop=0, slide_stride=112, pamr_steps=10,
                  pamr_stride=(8, 16)),
        notes="cfg_voc21.py: whole image (slide_crop 0) with PAMR (10 steps, dilations 8 and 16), "
              "background of stuff words with prob_thd; 140x190 resized to 336x456, a 21x28 grid "
              "(position embeddings interpolated); also the returned class probabilities, "
              "renormalised after the synonym max"),
    "naclip-nopamr": dict(
        method="naclip", size=(230, 170), classes=THINGS, scale=(2048, 336), tune_thd=None,
        args=dict(logit_scale=40, prob_thd=0.0, slide_crop=224, slide_stride=112, pamr_steps=0),
        notes="cfg_context59.py with PAMR off (pamr_steps 0): no background; portrait 230x170 "
              "resized to 455x336, 8 windows of 224 (stride 112), synonyms"),
}


def fmseg_params(method, args, scale):
    """The official arguments as fmseg's recipe params."""
    p = dict(logit_scale=args["logit_scale"], prob_thd=args["prob_thd"], slide_crop=args["slide_crop"],
             slide_stride=args["slide_stride"], short_side=min(scale), long_side=max(scale))
    if method == "sclip":
        p["area_thd"] = args["area_thd"] or 0
        p["pamr_steps"] = args.get("pamr_steps", 0)
        if p["pamr_steps"]:
            p["pamr_dilations"] = list(args["pamr_stride"])
    if method == "naclip":
        p["pamr_steps"] = args["pamr_steps"]
        if args["pamr_steps"]:
            p["pamr_dilations"] = list(args["pamr_stride"])
        p["gaussian_std"] = 5.0
        p["arch"] = "reduced"
    if method == "clearclip":
        p["pad_multiple"] = "patch"
        p["ignore_residual"] = True
    return p


# ---- running the official code ------------------------------------------------------

_OWN_MODULES = ("clip", "pamr", "prompts", "open_clip", "clip_segmentor", "naclip", "clearclip_segmentor",
                "BLIP", "gem")


def use_repo(path):
    """Makes PATH the first place imports look, forgetting modules of the
    same names from another repository (SCLIP and NACLIP both ship clip/)."""
    for name in list(sys.modules):
        if name.split(".")[0] in _OWN_MODULES:
            del sys.modules[name]
    while path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)


def build(method, repo, ckpt, name_path, args):
    use_repo(repo)
    if method == "sclip":
        import clip_segmentor
        return clip_segmentor.CLIPForSegmentation(clip_path=ckpt, name_path=name_path, device="cpu", **args)
    if method == "naclip":
        import naclip
        return naclip.NACLIP(clip_path=ckpt, name_path=name_path, device="cpu", arch="reduced",
                             attn_strategy="naclip", gaussian_std=5.0, **args)
    # ClearCLIP: its BLIP and GEM branches (other model types) need
    # transformers, timm, fairscale, einops and matplotlib; stand-ins that
    # refuse to run keep its module importable.
    def refuse(*a, **k):
        raise RuntimeError("not the ClearCLIP path")
    mm_stubs._module("BLIP")
    mm_stubs._module("BLIP.models")
    mm_stubs._module("BLIP.models.blip_retrieval", blip_retrieval=refuse)
    mm_stubs._module("gem", create_gem_model=refuse)
    import clearclip_segmentor
    from open_clip import load_openai_model

    def create_model(name, pretrained=None, precision="fp32"):
        # create_model('ViT-B/16', pretrained='openai') calls
        # load_openai_model; ours reads the local checkpoint, in float32
        assert name == "ViT-B/16" and pretrained == "openai"
        return load_openai_model(ckpt, precision="fp32", device="cpu")
    clearclip_segmentor.create_model = create_model
    return clearclip_segmentor.ClearCLIPSegmentation(
        clip_type="CLIP", vit_type="ViT-B/16", model_type="ClearCLIP", name_path=name_path, device="cpu",
        ignore_residual=True, **args)


@contextlib.contextmanager
def float32_half():
    """Tensor.half() as the identity (ClearCLIP's predict casts its input)."""
    import torch
    torch.Tensor.half = lambda self: self
    try:
        yield
    finally:
        del torch.Tensor.half


def run_official(method, repo, ckpt, name_path, args, image_path, scale):
    import torch
    seg = build(method, repo, ckpt, name_path, args).eval()
    seen = {}
    post = seg.postprocess_result

    def capture(seg_logits, data_samples):
        seen["scores"] = seg_logits.detach().clone()
        return post(seg_logits, data_samples)
    seg.postprocess_result = capture
    data = mm_stubs.test_pipeline(image_path, scale)
    with torch.no_grad(), (float32_half() if method == "clearclip" else contextlib.nullcontext()):
        samples = seg.test_step(data)
    s = samples[0]
    logits = (seen["scores"][0] * args["logit_scale"]).numpy().astype(np.float32)
    labels = s.pred_sem_seg.data[0].numpy().astype(np.int32)
    returned = s.seg_logits.data.detach().numpy().astype(np.float32)
    # the class probabilities the labels are the argmax of
    if method == "naclip":
        z = torch.from_numpy(logits).softmax(0)
        qi = seg.query_idx.numpy()
        probs = np.stack([z.numpy()[qi == c].max(0) for c in range(qi.max() + 1)])
    else:
        probs = returned
    ncls = len(open(name_path).read().splitlines())
    return dict(logits=logits, labels=labels, probs=probs, returned=returned, ncls=ncls)




def check(out, args):
    """The official labels are what their probabilities say (a check of
    how we read the official outputs), and the case is not trivial."""
    probs, labels = out["probs"], out["labels"]
    want = probs.argmax(0)
    if args.get("prob_thd"):
        want[probs.max(0) < args["prob_thd"]] = 0
    assert (want == labels).all(), "labels are not the argmax of the class probabilities"
    present = np.unique(labels)
    assert len(present) >= 2, f"only labels {present}"
    return present


def foreground_shares(probs):
    """The share of the foreground (classes 1..) each class 1.. has in the
    argmax of PROBS: what SCLIP's area filter compares with area_thd."""
    am = probs.argmax(0)
    areas = np.array([(am == c).sum() for c in range(probs.shape[0])], dtype=np.float64)
    return areas[1:] / areas[1:].sum()


# ---- cases ---------------------------------------------------------------------------

def make_case(name, case, ext, ckpt, tmp):
    method = case["method"]
    repo_name, repo_id = REPOS[method]
    repo = os.path.join(ext, repo_name)
    h, w = case["size"]
    classes = case["classes"]
    img, image_path, name_path = common.write_inputs(tmp, name, h, w, classes)
    args = dict(case["args"])

    def official(**changes):
        return run_official(method, repo, ckpt, name_path, dict(args, **changes), image_path, case["scale"])
    if case["tune_thd"] is not None:
        # prob_thd: near the given quantile of the best class probability
        # with the threshold off (SCLIP's area filter as set), in a gap no
        # pixel comes within 1e-4 of
        best = official(prob_thd=0.0)["probs"].max(0)
        args["prob_thd"] = common.clear_threshold(best, np.quantile(best, case["tune_thd"]))
    out = official()
    present = check(out, args)
    assert 0 in present or not args.get("prob_thd"), f"{name}: prob_thd leaves no background"
    extra = ""
    if method == "sclip" and args.get("area_thd"):
        # the filter must drop a class that has pixels, keep another, and
        # leave no class near the threshold
        shares = foreground_shares(official(area_thd=None)["probs"])
        dropped = [c + 1 for c, s in enumerate(shares) if 0 < s <= args["area_thd"]]
        near = [s for s in shares if abs(s - args["area_thd"]) < 0.2 * args["area_thd"]]
        assert dropped and not near and len(dropped) < out["ncls"] - 1, f"{name}: shares {shares}"
        extra = (f"; foreground shares before the area filter {np.round(shares, 3).tolist()}, "
                 f"class(es) {dropped} dropped")
    if args.get("prob_thd"):
        assert np.abs(out["probs"].max(0) - args["prob_thd"]).min() > 1e-4
    margin = common.top2_margin(out["probs"])
    tuned = "" if case["tune_thd"] is None else (
        f"; prob_thd {args['prob_thd']} (the config's value would never or always fire on random "
        f"weights): near the {case['tune_thd']:.0%} quantile of the best class probability with it "
        "off, no pixel within 1e-4 of it (common.clear_threshold)")
    tensors = dict(logits=out["logits"], labels=out["labels"], margin=margin)
    outputs = {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"}}
    if case.get("scores"):
        tensors["scores"] = out["returned"]
        outputs["scores"] = {"compare": "float"}
    import cv2
    import torch
    counts = {int(c): int((out["labels"] == c).sum()) for c in present}
    meta = {
        "recipe": method,
        "params": fmseg_params(method, args, case["scale"]),
        "models": {"clip": "../models/clip-b16-tiny"},
        "outputs": outputs,
        "generator": {"script": "tests/tools/methods/sclip_family.py",
                      "repos": {repo_id: common.git_commit(repo)},
                      "torch": torch.__version__, "cv2": cv2.__version__},
        "notes": case["notes"] + extra + tuned + f"; label counts {counts}; "
                 f"{int((margin < 1e-5).sum())} pixels with margin < 1e-5. Official arguments: "
                 f"{ {k: v for k, v in args.items()} }, Resize scale {case['scale']}. logits = the "
                 "scores postprocess_result receives x logit_scale; labels = pred_sem_seg; margin "
                 "= top-1 minus top-2 class probability" + ("; scores = the returned seg_logits" if case.get("scores") else ""),
    }
    out_dir = common.write_fixture(name, meta, img, tensors, classes=classes)
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"{name}: labels {counts}, prob_thd {args.get('prob_thd')}, {size / 1e6:.2f} MB{extra}")


def main():
    common.run_clip_cases(__doc__, CASES, make_case, MODEL, "clip-b16-tiny")


if __name__ == "__main__":
    main()
