"""Method fixtures of ResCLIP (tests/fixtures/methods/resclip-<base>-<case>/)
from its official code, end to end: the resclip modifier (recipes/
modifiers/resclip.lua) on NACLIP, SCLIP and ClearCLIP bases.

    /usr/bin/python3 tests/tools/methods/resclip.py [--ext DIR] [CASE...]

DIR (default $FMSEG_EXT, else ../ext beside the repository) holds
yvhangyang/ResCLIP as fetched, unmodified (a checkout, or an extracted tree
with a COMMIT file). Its ResCLIPSegmentation is built by its own __init__
(its own CLIP code loading the tiny model converted to openai's checkpoint
layout, its own tokenizer and template list) and run by its own predict on
its configs' test pipeline (mm_stubs.py: cv2 read, mmcv Resize keep_ratio,
the data preprocessor's BGR->RGB and mean / std), on the CPU in float32.
The base is chosen as test_all.sh chooses it: set_params(arch,
attn_strategy, gaussian_std) = ('wo_resi', 'naclip' | 'clearclip', 5) or
('w_resi', 'sclip', 5).

The model: ResCLIP's RCS averages the attention of layers 6-9 (attn_map[5:9]
of the 11 non-final blocks of ViT-B/16), hard-wired, so the 8-layer
clip-b16-tiny cannot run it; clip-b16-tiny12 (made here by common.make_clip
when missing) is the same tiny CLIP with ViT-B's 12 vision layers.

Only these differ from the official runs: the model is a local checkpoint,
and the official code's hard-wired CUDA placement (`.cuda()` on the SFR
inputs, PAMR(...).to(torch.device('cuda')) in create_logit_temp) is made a
no-op, so that it runs on the CPU (cpu_only() below). matplotlib is
imported by the segmentor but never used; ftfy is stood in for by
mm_stubs.

What is taken from the official run:
  logits      the (Q, H, W) scores postprocess_result receives, times the
              logit scale
  labels      pred_sem_seg
  margin      top-1 minus top-2 class probability (prob_thd kept clear of
              every pixel's top-1 by 1e-4)
  sfr_labels  the last window's patch_matrix (create_patch_matrix's
              output: each patch's most frequent query index, after
              temp_thd), [gh, gw] int32
temp_thd and prob_thd are tuned to the random model (common.clear_threshold:
no pixel within 1e-4 of them); temp_thd is the first of a few quantiles of
the SFR pass's best query probability at which no SFR patch label can flip
under float32 noise (sfr_slack: pixels within 1e-5 of a tie may go either
way, and still no patch's most frequent query changes).
"""
import contextlib
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import mm_stubs  # noqa: E402
from sclip_family import check, use_repo  # noqa: E402

MODEL_NAME = "clip-b16-tiny12"
MODEL = os.path.join(common.MODELS, MODEL_NAME)
REPO = ("ResCLIP", "yvhangyang/ResCLIP")

BASES = {  # test_all.sh's {arch} {attn} per base
    "naclip": ("wo_resi", "naclip"),
    "sclip": ("w_resi", "sclip"),
    "clearclip": ("wo_resi", "clearclip"),
}

# Class files as the repo's cls_*.txt (background first where there is
# one; synonyms comma-separated); five text queries. Picked, by trying word
# sets on this random model's RCS features, so that several queries win
# patches in the SFR pass.
VOC = ["tree, horse", "man", "cat", "dog"]
THINGS = ["wall", "man, boat", "chair", "sofa"]

# Each case: base, image size (H, W), classes, Resize scale, the official
# segmentor's arguments (as the repo's cfg_*.py), quantiles for the tuned
# thresholds (temp_thd of the SFR pass, prob_thd of the output; None: the
# value given is kept).
CASES = {
    "resclip-naclip-voc21": dict(
        base="naclip", size=(140, 190), classes=VOC, scale=(2048, 336), temp_q=0.2, prob_q=0.25,
        args=dict(logit_scale=40, prob_thd=0.1, slide_crop=0, slide_stride=112, temp_thd=0.5,
                  attn_rcs_weights=[2.0, 0.3], attn_sfr_weights=[2.2, 0.7], delete_same_entity=True),
        notes="cfg_voc21.py on NACLIP (the paper's main setting): whole image (slide_crop 0), "
              "140x190 resized to 336x456, one 21x28 grid (position embeddings interpolated, 8 "
              "columns of pixels past the last patch); background of stuff words with prob_thd; "
              "RCS [2.0, 0.3], SFR [2.2, 0.7]"),
    "resclip-naclip-context60": dict(
        base="naclip", size=(170, 230), classes=VOC, scale=(2048, 336), temp_q=0.2, prob_q=0.25,
        args=dict(logit_scale=40, prob_thd=0.1, slide_crop=224, slide_stride=112, temp_thd=0.3,
                  attn_rcs_weights=[2.0, 0.3], attn_sfr_weights=[1.8, 0.7], delete_same_entity=True),
        notes="cfg_context60.py on NACLIP: 170x230 resized to 336x455, 8 overlapping windows of "
              "224 (stride 112), each with its own SFR pass; background with prob_thd; synonyms; "
              "RCS [2.0, 0.3], SFR [1.8, 0.7]"),
    "resclip-sclip-context59": dict(
        base="sclip", size=(230, 170), classes=THINGS, scale=(2048, 336), temp_q=0.2, prob_q=None,
        args=dict(logit_scale=40, prob_thd=0.0, slide_crop=224, slide_stride=112, temp_thd=0.25,
                  attn_rcs_weights=[2.0, 0.4], attn_sfr_weights=[1.8, 0.7], delete_same_entity=True),
        notes="cfg_context59.py on SCLIP (arch w_resi, attn sclip: SFR mixed into both q-q and "
              "k-k logits, RCS into their softmaxes' sum, residual and FFN kept): portrait "
              "230x170 resized to 455x336, 8 windows of 224 (stride 112); no background; "
              "synonyms; RCS [2.0, 0.4], SFR [1.8, 0.7]"),
    "resclip-clearclip-voc21": dict(
        base="clearclip", size=(140, 190), classes=VOC, scale=(2048, 336), temp_q=0.2, prob_q=0.25,
        temp_clearance=1e-5,
        args=dict(logit_scale=40, prob_thd=0.1, slide_crop=224, slide_stride=112, temp_thd=0.5,
                  attn_rcs_weights=[2.0, 0.3], attn_sfr_weights=[2.2, 0.7], delete_same_entity=True),
        notes="cfg_voc21.py's weights on ClearCLIP (wo_resi, attn clearclip: SFR into the q-q "
              "logits), by sliding window (224 / stride 112: 140x190 resized to 336x456, 8 "
              "windows); background with prob_thd; RCS [2.0, 0.3], SFR [2.2, 0.7]"),
}


def fmseg_config(case, args):
    """The official arguments as an fmseg config: the base recipe with
    ResCLIP's protocol, the resclip modifier with its weights."""
    base = case["base"]
    p = dict(logit_scale=args["logit_scale"], prob_thd=args["prob_thd"], slide_crop=args["slide_crop"],
             slide_stride=args["slide_stride"], short_side=min(case["scale"]), long_side=max(case["scale"]))
    if base == "naclip":
        p.update(pamr_steps=0, gaussian_std=5.0, arch="reduced")
    if base == "sclip":
        p.update(pamr_steps=0, area_thd=0)
    if base == "clearclip":
        p.update(pad_multiple=0, ignore_residual=True)
    mod = dict(temp_thd=args["temp_thd"], rcs_weights=list(args["attn_rcs_weights"]),
               sfr_weights=list(args["attn_sfr_weights"]), delete_same_entity=args["delete_same_entity"])
    return p, [{"name": "resclip", "params": mod}]


# ---- running the official code ------------------------------------------------------

@contextlib.contextmanager
def cpu_only():
    """The official code's hard-wired CUDA placement as no-ops:
    Tensor.cuda() returns the tensor, Module.to(<a cuda device>) the
    module."""
    import torch
    to = torch.nn.Module.to

    def module_to(self, *a, **k):
        dev = a[0] if a else k.get("device")
        if isinstance(dev, (torch.device, str)) and str(dev).startswith("cuda"):
            return self
        return to(self, *a, **k)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.to = module_to
    try:
        yield
    finally:
        del torch.Tensor.cuda
        torch.nn.Module.to = to


def run_official(repo, ckpt, name_path, base, args, image_path, scale):
    import torch
    use_repo(repo)
    sys.modules.pop("resclip_segmentor", None)
    try:
        import matplotlib  # noqa: F401  (imported by the segmentor, never used)
    except ImportError:
        mm_stubs._module("matplotlib")
        mm_stubs._module("matplotlib.pyplot")
    import resclip_segmentor
    arch, attn = BASES[base]
    with cpu_only():
        seg = resclip_segmentor.ResCLIPSegmentation(
            clip_path=ckpt, name_path=name_path, device="cpu", arch=arch, attn_strategy=attn,
            gaussian_std=5.0, pamr_steps=0, **args).eval()
        seen = {"sfr": []}
        post = seg.postprocess_result

        def capture(seg_logits, data_samples):
            seen["scores"] = seg_logits.detach().clone()
            return post(seg_logits, data_samples)
        seg.postprocess_result = capture
        visual = seg.net.visual
        patch_matrix = visual.create_patch_matrix

        def capture_sfr(seg_logit_temp, n_patches, temp_thd=None):
            out = patch_matrix(seg_logit_temp, n_patches, temp_thd=temp_thd)
            seen["sfr"].append((seg_logit_temp.detach().clone()[0], out.detach().clone()))
            return out
        visual.create_patch_matrix = capture_sfr
        data = mm_stubs.test_pipeline(image_path, scale)
        with torch.no_grad():
            samples = seg.test_step(data)
    s = samples[0]
    logits = (seen["scores"][0] * args["logit_scale"]).numpy().astype(np.float32)
    labels = s.pred_sem_seg.data[0].numpy().astype(np.int32)
    z = torch.from_numpy(logits).softmax(0).numpy()
    qi = seg.query_idx.numpy()
    probs = np.stack([z[qi == c].max(0) for c in range(qi.max() + 1)])
    return dict(logits=logits, labels=labels, probs=probs, sfr=seen["sfr"], patch=visual.patch_size)


def sfr_slack(sfr, temp_thd, patch, clearance=1e-5):
    """How far every window's SFR patch labels are from flipping under
    float32 noise: a pixel whose top-1 query probability is within
    CLEARANCE of its top-2 (or of temp_thd) may take either query (or
    query 0). Per patch, with such pixels set aside, the winner's count
    must beat every other query's count plus the undecided pixels that
    could go to it (ties go to the smaller index, as torch.mode's). Returns
    the smallest margin over all patches (>= 0: none can flip) and the
    number of distinct patch labels."""
    worst, wins = None, set()
    for probs, matrix in sfr:
        p = probs.numpy()
        order = np.argsort(-p, axis=0, kind="stable")
        top = np.take_along_axis(p, order[:2], axis=0)
        lab = order[0].copy()
        lab[top[0] < temp_thd] = 0
        alt = order[1].copy()
        near_thd = np.abs(top[0] - temp_thd) < clearance
        alt[near_thd] = np.where(lab[near_thd] == 0, order[0][near_thd], 0)
        fragile = (top[0] - top[1] < clearance) | near_thd
        nq = p.shape[0]
        gh, gw = matrix.shape
        for i in range(gh):
            for j in range(gw):
                sl = (slice(i * patch, (i + 1) * patch), slice(j * patch, (j + 1) * patch))
                cl, fr, al = lab[sl].ravel(), fragile[sl].ravel(), alt[sl].ravel()
                base = np.bincount(cl[~fr], minlength=nq)
                reach = base + np.bincount(cl[fr], minlength=nq) + np.bincount(al[fr], minlength=nq)
                counts = np.bincount(cl, minlength=nq)
                win = int(np.argmax(counts))
                wins.add(win)
                for other in range(nq):
                    if other == win:
                        continue
                    m = int(base[win] - reach[other]) - (0 if win < other else 1)
                    worst = m if worst is None else min(worst, m)
    return worst, len(wins)


def make_case(name, case, ext, ckpt, tmp):
    repo = os.path.join(ext, REPO[0])
    h, w = case["size"]
    classes = case["classes"]
    img, image_path, name_path = common.write_inputs(tmp, name, h, w, classes)
    args = dict(case["args"])

    def official(**changes):
        return run_official(repo, ckpt, name_path, case["base"], dict(args, **changes), image_path, case["scale"])
    tuned = []
    if case["temp_q"] is not None:
        # the SFR pass does not depend on temp_thd: its query probabilities
        # from one run place temp_thd clear of every pixel's top-1
        # (the first quantile, from temp_q on, whose patch labels have no
        # patch within float32 noise of flipping: sfr_slack)
        first = official()
        best = np.concatenate([p.max(0).values.numpy().ravel() for p, _ in first["sfr"]])
        for q in [case["temp_q"], 0.1, 0.3, 0.05, 0.4, 0.15, 0.25, 0.35, 0.01, 0.0]:
            # (temp_clearance 1e-5 where the SFR probabilities are too dense
            # for gaps of 2e-4; sfr_slack counts pixels within 1e-5 of it
            # as undecided either way)
            args["temp_thd"] = common.clear_threshold(best, np.quantile(best, q),
                                                      clearance=case.get("temp_clearance", 1e-4))
            slack, distinct = sfr_slack(first["sfr"], args["temp_thd"], first["patch"])
            print(f"{name}: temp_thd {args['temp_thd']} (quantile {q}): slack {slack}, {distinct} labels")
            if slack >= 0 and distinct >= 2:
                break
        tuned.append(f"temp_thd {args['temp_thd']} (near the {q:.0%} quantile of the SFR "
                     "pass's best query probability)")
    if case["prob_q"] is not None:
        best = official(prob_thd=0.0)["probs"].max(0)
        args["prob_thd"] = common.clear_threshold(best, np.quantile(best, case["prob_q"]))
        tuned.append(f"prob_thd {args['prob_thd']} (near the {case['prob_q']:.0%} quantile of the best "
                     "class probability with it off)")
    out = official()
    present = check(out, args)
    if args.get("prob_thd"):
        assert 0 in present, f"{name}: prob_thd leaves no background"
        assert np.abs(out["probs"].max(0) - args["prob_thd"]).min() > 1e-4
    slack, _ = sfr_slack(out["sfr"], args["temp_thd"], out["patch"])
    assert slack >= 0, f"{name}: an SFR patch label is within float32 noise of flipping (slack {slack})"
    last_probs, last_matrix = out["sfr"][-1]
    sfr_labels = last_matrix.numpy().astype(np.int32)
    n_sfr = len(np.unique(np.concatenate([m.numpy().ravel() for _, m in out["sfr"]])))
    assert n_sfr >= 2, f"{name}: the SFR patch labels are all one query"
    margin = common.top2_margin(out["probs"])
    tensors = dict(logits=out["logits"], labels=out["labels"], margin=margin, sfr_labels=sfr_labels)
    outputs = {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"},
               "sfr_labels": {"compare": "exact"}}
    params, modifiers = fmseg_config(case, args)
    import cv2
    import torch
    counts = {int(c): int((out["labels"] == c).sum()) for c in present}
    sfr_counts = {int(c): int((sfr_labels == c).sum()) for c in np.unique(sfr_labels)}
    meta = {
        "recipe": case["base"],
        "params": params,
        "modifiers": modifiers,
        "models": {"clip": "../models/" + MODEL_NAME},
        "outputs": outputs,
        "generator": {"script": "tests/tools/methods/resclip.py",
                      "repos": {REPO[1]: common.git_commit(repo)},
                      "torch": torch.__version__, "cv2": cv2.__version__},
        "notes": case["notes"] + "; " + "; ".join(tuned) + f"; label counts {counts}; last window's SFR "
                 f"patch labels (query indices) {sfr_counts}, {len(out['sfr'])} SFR pass(es); the SFR "
                 f"patch labels' smallest lead over float32 noise {slack} pixels; "
                 f"{int((margin < 1e-5).sum())} pixels with margin < 1e-5. Official arguments: {args}, "
                 f"set_params{BASES[case['base']] + (5.0,)}, Resize scale {case['scale']}. logits = the "
                 "scores postprocess_result receives x logit_scale; labels = pred_sem_seg; margin = "
                 "top-1 minus top-2 class probability; sfr_labels = the last window's "
                 "create_patch_matrix output",
    }
    out_dir = common.write_fixture(name, meta, img, tensors, classes=classes)
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"{name}: labels {counts}, sfr {sfr_counts}, slack {slack}, temp_thd {args['temp_thd']}, "
          f"prob_thd {args.get('prob_thd')}, {size / 1e6:.2f} MB")


def main():
    common.run_clip_cases(__doc__, CASES, make_case, MODEL, MODEL_NAME,
                          make_model=lambda: common.make_clip(MODEL_NAME, seed=12, v_layers=12))


if __name__ == "__main__":
    main()
