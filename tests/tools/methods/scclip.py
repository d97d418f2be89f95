"""Method fixtures of SC-CLIP (tests/fixtures/methods/scclip-<case>/) from
its official code (SuleBai/SC-CLIP, commit 0417ba9: lof_pytorch), end to
end.

    /usr/bin/python3 tests/tools/methods/scclip.py [--ext DIR] [CASE...]

DIR (default $FMSEG_EXT, else ../ext beside the repository) holds
SuleBai/SC-CLIP as fetched, unmodified (a checkout, or an extracted tree
with a COMMIT file), as SC-CLIP/. Its SCCLIPForSegmentation is built by its
own __init__ (its own CLIP code loading the tiny model converted to
openai's checkpoint layout, its own tokenizer and template list) and run by
its own predict on its configs' test pipeline (mm_stubs.py), on the CPU in
float32, with the layer indices of configs/base_config.py (ViT-B/16's:
pre 8, post 3, multi 3..10, res_cls 0.3).

The model: those indices are ViT-B/16's 12 blocks, so the 8-layer
clip-b16-tiny cannot run them; clip-b16-tiny12 (as resclip.py) has 12.

Only the model differs from the official runs (a local checkpoint). The
run is watched, never changed: clip.model.lof_pytorch is wrapped to record
its input and output, custom_attn to record the similarity it is given,
and forward hooks on the blocks record their outputs, so that the case can
be checked to be clear of float32 noise at each of SC-CLIP's discrete
decisions (the LOF quantile, the k-th neighbour, the β = 0.4 cuts of both
similarities, the < 0 cut of the centred similarity), reported in
method.json's notes.

What is taken from the official run (as sclip_family.py): logits (the
scores postprocess_result receives x logit_scale), labels (pred_sem_seg),
margin (top-1 minus top-2 class probability; prob_thd tuned clear of every
pixel's top-1 by 1e-4, common.clear_threshold).
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import mm_stubs  # noqa: E402
from sclip_family import check, foreground_shares, use_repo  # noqa: E402

MODEL_NAME = "clip-b16-tiny12"
MODEL = os.path.join(common.MODELS, MODEL_NAME)
REPO = ("SC-CLIP", "SuleBai/SC-CLIP")
LAYERS = dict(pre_adjust_idx=8, post_adjust_idx=3, multi_start_idx=3, multi_end_idx=10, res_cls=0.3)
BETA = 0.4

# Class files in the repo's cls_*.txt format (background first where there
# is one; synonyms separated by ", "). Picked by trying word sets on this
# random model (SC-CLIP's aggregation makes its maps flat: most sets give
# one class everywhere) so that several classes win pixels; in VOC,
# "horse, bus" holds 7% of the foreground and is dropped by area_thd 0.1.
VOC = ["background", "person", "horse, bus", "sofa"]
THINGS = ["sky", "wall, building", "boat", "person"]
SQUARE = ["person", "woman, sofa", "horse", "bicycle"]



def around(h, w, n=12):
    """Image sizes to try, (H, W) first, then growing by one pixel of the
    short side (the aspect kept): small images keep the fixture at tens of
    KB (the model still sees the Resize's short side 336)."""
    short = min(h, w)
    return [(round(h * (short + i) / short), round(w * (short + i) / short)) for i in range(n)]


# Each case: image sizes to try (the first whose discrete steps are clear
# of float32 noise is kept, see CLEAR), classes, the Resize scale, the
# official segmentor's arguments (as the repo's cfg_*.py), and whether
# prob_thd is tuned (near a quantile of the best class probability, clear
# of every pixel's: the configs' values would never or always fire on
# random weights).
CASES = {
    "scclip-voc21": dict(
        sizes=around(40, 54), classes=VOC, scale=(2048, 336), tune_thd=0.25,
        args=dict(logit_scale=50, prob_thd=0.15, area_thd=0.1, slide_crop=224, slide_stride=112),
        notes="cfg_voc21.py: background of stuff words with prob_thd, area_thd 0.1, logit scale 50; "
              "landscape, resized to short side 336, 8 windows of 224 (stride 112), each with its own LOF; "
              "synonyms"),
    "scclip-context59": dict(
        sizes=around(54, 40), classes=THINGS, scale=(2048, 336), tune_thd=None,
        args=dict(logit_scale=40, prob_thd=0.0, area_thd=None, slide_crop=224, slide_stride=112),
        notes="cfg_context59.py: no background, logit scale 40; portrait, resized to short side "
              "336, 8 windows of 224 (stride 112); synonyms"),
    "scclip-whole": dict(
        sizes=around(48, 48), classes=SQUARE, scale=(2048, 256), tune_thd=None,
        args=dict(logit_scale=40, prob_thd=0.0, area_thd=None, slide_crop=0, slide_stride=112),
        notes="whole image (slide_crop 0, an option of scclip_segmentor.py no config uses) on a "
              "square image resized to short side 256 (not 336: a 21x21 grid's 194k similarities "
              "leave some within float32 noise of beta): one 16x16 grid (position embeddings "
              "interpolated; square, where the official outlier indexing is right), LOF over 256 "
              "patches, scores upsampled once to the image"),
}


def fmseg_params(args, scale):
    p = dict(logit_scale=args["logit_scale"], prob_thd=args["prob_thd"], slide_crop=args["slide_crop"],
             slide_stride=args["slide_stride"], short_side=min(scale), long_side=max(scale),
             area_thd=args["area_thd"] or 0, pamr_steps=0)
    return p


def run_official(repo, ckpt, name_path, args, image_path, scale):
    import torch
    use_repo(repo)
    sys.modules.pop("scclip_segmentor", None)
    import clip.model as cm
    import scclip_segmentor
    seen = {"lof": [], "mid": [], "blocks": {}, "windows": 0}
    lof = cm.lof_pytorch

    def watch_lof(x, n_neighbors=30, contamination=0.05):
        out = lof(x, n_neighbors=n_neighbors, contamination=contamination)
        seen["lof"].append((x.detach().clone(), out[0].clone(), out[1].clone(), n_neighbors, contamination))
        return out
    cm.lof_pytorch = watch_lof
    seg = scclip_segmentor.SCCLIPForSegmentation(clip_path=ckpt, name_path=name_path, device="cpu",
                                                 pamr_steps=0, **LAYERS, **args).eval()
    visual = seg.net.visual
    attn = visual.custom_attn

    def watch_attn(attn_layer, x, mid_simi):
        seen["mid"].append(mid_simi.detach().clone())
        return attn(attn_layer, x, mid_simi)
    visual.custom_attn = watch_attn
    post_blocks = {}

    def hook(i):
        def f(module, inp, out):
            post_blocks.setdefault(i, []).append(out.detach().clone())
        return f
    for i, blk in enumerate(visual.transformer.resblocks):
        blk.register_forward_hook(hook(i))
    captured = {}
    post = seg.postprocess_result

    def capture(seg_logits, data_samples):
        captured["scores"] = seg_logits.detach().clone()
        return post(seg_logits, data_samples)
    seg.postprocess_result = capture
    data = mm_stubs.test_pipeline(image_path, scale)
    with torch.no_grad():
        samples = seg.test_step(data)
    cm.lof_pytorch = lof
    s = samples[0]
    logits = (captured["scores"][0] * args["logit_scale"]).numpy().astype(np.float32)
    labels = s.pred_sem_seg.data[0].numpy().astype(np.int32)
    probs = s.seg_logits.data.detach().numpy().astype(np.float32)
    return dict(logits=logits, labels=labels, probs=probs, lof=seen["lof"], mid=seen["mid"],
                blocks=post_blocks, ncls=len(open(name_path).read().splitlines()))


def clearances(out):
    """How far SC-CLIP's discrete decisions are from flipping, over all
    windows (relative where the quantity is a ratio or a distance)."""
    import torch
    lof_gap, knn_gap, outliers = np.inf, np.inf, []
    for x, idx, scores, k, cont in out["lof"]:
        thd = float(torch.quantile(scores.float(), 1 - cont))
        # (a score equal to the threshold is the quantile's own element when
        # the rank is whole: not an outlier either way; its neighbours' gaps count)
        gap = (scores.double() - thd).abs()
        lof_gap = min(lof_gap, float(gap[gap > 0].min()) / abs(thd))
        d = (torch.cdist(x.double(), x.double()) ** 2).numpy()
        np.fill_diagonal(d, np.inf)
        srt = np.sort(d, axis=1)
        knn_gap = min(knn_gap, float(((srt[:, k] - srt[:, k - 1]) / srt[:, k - 1]).min()))
        outliers.append(len(idx))
    beta_gap, zero_gap = np.inf, np.inf
    n_windows = len(out["lof"])
    post = out["blocks"][LAYERS["post_adjust_idx"]]
    for w in range(n_windows):
        mid = out["mid"][2 * w].double()            # two custom_attn calls per window, same S
        beta_gap = min(beta_gap, float((mid - BETA).abs().min()))
        zero_gap = min(zero_gap, float((mid - mid.mean()).abs().min()))
        f = post[w][1:, 0].double()
        f = f / f.norm(dim=1, keepdim=True)
        beta_gap = min(beta_gap, float((f @ f.T - BETA).abs().min()))
    return dict(lof=lof_gap, knn=knn_gap, beta=beta_gap, zero=zero_gap, outliers=outliers)


def make_case(name, case, ext, ckpt, tmp):
    """Runs the case at the first of its sizes whose discrete steps are all
    clear of float32 noise (CLEAR), and writes the fixture."""
    for size in case["sizes"]:
        made = try_size(name, case, size, ext, ckpt, tmp)
        if made:
            return write_case(name, case, ext, *made)
    raise SystemExit(f"{name}: no size clear of float32 noise")


# Smallest distance of each discrete decision from flipping: LOF score vs
# its quantile (relative), k-th vs (k+1)-th neighbour distance (relative;
# a swap moves LOF scores only), similarities vs beta and the centred
# similarity vs 0 (absolute; float32 similarities of features that agree
# to ~1e-6 after 11 blocks).
CLEAR = dict(lof=1e-4, knn=1e-6, beta=1e-6, zero=1e-6)


def try_size(name, case, size, ext, ckpt, tmp):
    repo = os.path.join(ext, REPO[0])
    h, w = size
    classes = case["classes"]
    img, image_path, name_path = common.write_inputs(tmp, name, h, w, classes)
    args = dict(case["args"])

    def official(**changes):
        return run_official(repo, ckpt, name_path, dict(args, **changes), image_path, case["scale"])
    out = official(prob_thd=0.0) if case["tune_thd"] is not None else official()
    c = clearances(out)
    print(f"{name} {h}x{w}: clearances {c}")
    if any(c[k] <= v for k, v in CLEAR.items()):
        return None
    if case["tune_thd"] is not None:
        best = out["probs"].max(0)
        args["prob_thd"] = common.clear_threshold(best, np.quantile(best, case["tune_thd"]))
        out = official()
    present = check(out, args)
    if args.get("prob_thd"):
        assert 0 in present, f"{name}: prob_thd leaves no background"
        assert np.abs(out["probs"].max(0) - args["prob_thd"]).min() > 1e-4
    extra = ""
    if args.get("area_thd"):
        shares = foreground_shares(official(area_thd=None, prob_thd=0.0)["probs"])
        near = [s for s in shares if abs(s - args["area_thd"]) < 0.2 * args["area_thd"]]
        assert not near, f"{name}: a class near area_thd: shares {shares}"
        dropped = [k + 1 for k, s in enumerate(shares) if 0 < s <= args["area_thd"]]
        extra = f"; foreground shares before the area filter {np.round(shares, 3).tolist()}, dropped {dropped}"
    return img, size, args, out, present, c, extra


def write_case(name, case, ext, img, size, args, out, present, c, extra):
    margin = common.top2_margin(out["probs"])
    tuned = "" if case["tune_thd"] is None else (
        f"; prob_thd {args['prob_thd']} (the config's 0.15 would never or always fire on random "
        f"weights): near the {case['tune_thd']:.0%} quantile of the best class probability with it "
        "off, no pixel within 1e-4 of it")
    tensors = dict(logits=out["logits"], labels=out["labels"], margin=margin)
    outputs = {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"}}
    import cv2
    import torch
    counts = {int(k): int((out["labels"] == k).sum()) for k in present}
    meta = {
        "recipe": "scclip",
        "params": fmseg_params(args, case["scale"]),
        "models": {"clip": "../models/" + MODEL_NAME},
        "outputs": outputs,
        "generator": {"script": "tests/tools/methods/scclip.py",
                      "repos": {REPO[1]: common.git_commit(os.path.join(ext, REPO[0]))},
                      "torch": torch.__version__, "cv2": cv2.__version__},
        "notes": f"{size[0]}x{size[1]} image; " + case["notes"] + extra + tuned + f"; label counts {counts}; "
                 f"{int((margin < 1e-5).sum())} pixels with margin < 1e-5; outliers per window "
                 f"{c['outliers']}; clear of float32 noise by: LOF vs its quantile {c['lof']:.2e} "
                 f"(relative), k-th vs (k+1)-th neighbour {c['knn']:.2e} (relative), similarities vs "
                 f"beta 0.4 {c['beta']:.2e}, centred similarity vs 0 {c['zero']:.2e}. Official "
                 f"arguments: {args}, layers {LAYERS} (base_config.py), Resize scale {case['scale']}. "
                 "logits = the scores postprocess_result receives x logit_scale; labels = "
                 "pred_sem_seg; margin = top-1 minus top-2 class probability",
    }
    out_dir = common.write_fixture(name, meta, img, tensors, classes=case["classes"])
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"{name}: labels {counts}, prob_thd {args.get('prob_thd')}, {size / 1e6:.3f} MB{extra}")


def main():
    common.run_clip_cases(__doc__, CASES, make_case, MODEL, MODEL_NAME,
                          make_model=lambda: common.make_clip(MODEL_NAME, seed=12, v_layers=12))


if __name__ == "__main__":
    main()
