"""Method fixtures for recipes/diffseg.lua from google/diffseg's own
segmentor (diffseg/segmentor.py, class DiffSeg), run unmodified on the
self-attention maps of OUR UNet through tf_shim.py (TensorFlow cannot be
installed here; the shim is tested on its own by test_tf_shim.py).

    /usr/bin/python3 tests/tools/methods/diffseg.py [--repo /work/ext/diffseg]

The official code is hard-wired to SD 1.5 at 512: 64x64 latents, four
self-attention resolutions (64, 32, 16, 8), five layers at each of the
first three and one (the mid block) at 8 (third_party/keras_cv/
diffusion_model.py sums `temp / 5` over them). So the tiny pipeline made
here (tests/fixtures/methods/models/sd-diffseg-tiny) has that structure with
8 channels and one head (a head mean is then exact in either order), a
4-level VAE (512 -> 64), and the sd-tiny text encoder (stored as float16).
Its attn1 to_q / to_k are scaled up so the attention is peaky enough that
entries underflow in float16 in the first merge.

Per case: fmseg writes the attention maps of every attn1 layer on the
image as recipes/diffseg.lua prepares it (centre square crop, TF bilinear to
512, keras Rescaling) — tests/tools/methods/diffseg_dump.lua — and this
script sums them per resolution as diffusion_model.py does, feeds them to
DiffSeg(KL_THRESHOLD, False, 16).segment as benchmarks.ipynb does, and
stores the segments (512x512, the official's ids), the merged maps and the
relative margin of the official's final argmax, (top-1 - top-2) / top-1 of
its upsampled maps: the segments are compared `labels_relative` (ties below
1e-4), since the maps are probabilities of ~1/4096 whose float32 noise is
relative. method.json's first_merge says how close the merges' KL < tau
decisions came to flipping (those are never excused by the margin).

    --case NAME --fmseg OTHER/fmseg [--decisions DIR]
        a check, writing nothing: the official run on the maps of another
        fmseg build (e.g. one with core/nn.c's AVX2 clone forced), and how
        its segments differ from the fixture's (with their margins);
        --decisions saves each run's first-merge membership (DIR/<case>.npy)
        to compare the merges of two builds
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import (MODELS, ROOT, SHARED, git_commit, load_safetensors, randomize,  # noqa: E402
                    save_safetensors, write_fixture)

MODEL = "sd-diffseg-tiny"
QK_SCALE = 3.75

UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.40.0.dev0", "act_fn": "silu",
    "attention_head_dim": 1, "block_out_channels": [8, 8, 8, 8], "center_input_sample": False,
    "cross_attention_dim": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 4,
    "num_attention_heads": None, "only_cross_attention": False, "out_channels": 4, "sample_size": 64,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False, "use_linear_projection": False, "time_embedding_type": "positional",
    "resnet_time_scale_shift": "default", "conv_in_kernel": 3, "conv_out_kernel": 3,
}
VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.40.0.dev0", "act_fn": "silu",
    "block_out_channels": [8, 8, 8, 8], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 4, "layers_per_block": 1,
    "mid_block_add_attention": True, "norm_num_groups": 4, "out_channels": 3, "sample_size": 512,
    "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": True, "use_quant_conv": True,
}

# (case, tau, image size HxW, the dataset whose protocol it follows)
CASES = [
    ("cocostuff", 1.1, (384, 448), "COCO-Stuff-27 (benchmarks.ipynb KL_THRESHOLD [1.1]*3)"),
    ("cityscapes", 0.9, (256, 512), "Cityscapes (benchmarks.ipynb: 0.9)"),
]


NOTES = (
    "{what}: tau {tau} for the three merges, 16x16 anchors. The image ({h}x{w}) is centre-cropped to a "
    "square and resized to 512 as data/*_data.py do (here by the recipe, crop = center_square); segments "
    "come back at 512x512, as the official scores them. Attention maps are fmseg's own "
    "(tests/tools/methods/diffseg_dump.lua); everything after them is DiffSeg.segment through tf_shim.py: "
    "weight_R = sum of temp/5 over R's layers (diffusion_model.py), aggregate_weights, the first merge in "
    "float16 (first_merge counts the float16 zeros, NaN KL pairs and dropped anchors), two merges in "
    "float64, x8 bilinear, argmax. segments: the official's ids (merged maps in their order), int32; maps: "
    "attns_merged [K, 64, 64] as float32; margin: (top-1 - top-2) / top-1 of the official's upsampled "
    "maps at each pixel (what its argmax runs on), float32. The maps are attention probabilities "
    "(~1/4096 each, top-1 from 1e-5 to 0.1), so their float32 noise is relative: segments are compared "
    "labels_relative, ties where margin < 1e-4 (first_merge.pixels_relative_margin_below_1e-4 of them). "
    "Merge decisions are not excused by it: a flipped KL < tau moves a whole map, which the maps' float "
    "compare sees. first_merge: closest_kl_to_tau and closest_kl_steps (how many float16 steps from "
    "half(tau)), kl_within_2_steps (pairs within two steps: the float16 KLs lie ~3 to a step near tau, "
    "so every image has some), underflow_clearance (the map entry closest to 2^-25, relative: one "
    "crossing it would turn a whole map's KLs NaN); later_merges: the float64 KL closest to tau, relative."
)


def fmseg(*args):
    subprocess.check_call([os.path.join(ROOT, "fmseg"), "run", *args], cwd=ROOT)


def make_model():
    out = os.path.join(MODELS, MODEL)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in (("unet", UNET), ("vae", VAE)):
            with open(os.path.join(tmp, name + ".json"), "w") as f:
                json.dump(cfg, f)
        fmseg("tests/tools/methods/diffseg_dump.lua", "shapes", os.path.join(tmp, "unet.json"),
              os.path.join(tmp, "vae.json"), os.path.join(tmp, "shapes.json"))
        shapes = json.load(open(os.path.join(tmp, "shapes.json")))
    for i, (name, cfg) in enumerate((("unet", UNET), ("vae", VAE))):
        os.makedirs(os.path.join(out, name))
        with open(os.path.join(out, name, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        w = randomize({k: tuple(v) for k, v in shapes[name].items()}, seed=12 + i)
        if name == "unet":
            for k in w:
                if ".attn1.to_q." in k or ".attn1.to_k." in k:
                    w[k] = (w[k].astype(np.float32) * QK_SCALE).astype(np.float16)
        save_safetensors(os.path.join(out, name, "diffusion_pytorch_model.safetensors"), w)
    src = os.path.join(SHARED, "sd-tiny")
    os.makedirs(os.path.join(out, "text_encoder"))
    shutil.copy(os.path.join(src, "text_encoder", "config.json"), os.path.join(out, "text_encoder"))
    te = load_safetensors(os.path.join(src, "text_encoder", "model.safetensors"))
    save_safetensors(os.path.join(out, "text_encoder", "model.safetensors"),
                     {k: v.astype(np.float16) for k, v in te.items()})
    shutil.copytree(os.path.join(src, "tokenizer"), os.path.join(out, "tokenizer"))
    shutil.copytree(os.path.join(src, "scheduler"), os.path.join(out, "scheduler"))
    shutil.copy(os.path.join(src, "model_index.json"), out)
    return out


def case_image(h, w, seed):
    """A structured non-square RGB image: the bundled photo, a few flat
    shapes so that regions differ."""
    from PIL import Image, ImageDraw
    img = Image.open(os.path.join(ROOT, "tests", "data", "astronaut.jpg")).convert("RGB").resize((w, h))
    d = ImageDraw.Draw(img)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        d.rectangle([x0, y0, x0 + int(rng.integers(40, 120)), y0 + int(rng.integers(40, 120))], fill=color)
    return np.asarray(img)


def official_weights(maps):
    """diffusion_model.py: weight_R = sum over R's layers of temp / 5 (the
    mid block's weight_8 is its one map), as float32 tensors (1, heads, q, k);
    predict_on_batch hands them back as numpy."""
    import tensorflow as tf
    by_q = {}
    for name in sorted(maps):
        m = maps[name]
        by_q.setdefault(m.shape[-2], []).append(m)
    out = {}
    for q, layers in by_q.items():
        side = int(round(np.sqrt(q)))
        if side == 8:
            assert len(layers) == 1, "the mid block is the one layer at 8x8"
            out[side] = layers[0][None]
            continue
        assert len(layers) == 5, f"{side}x{side}: {len(layers)} layers; the official divides by 5"
        acc = 0.0
        for temp in layers:
            acc = tf.math.add(acc, tf.convert_to_tensor(temp[None]) / 5)
        out[side] = acc.numpy()
    return out[64], out[32], out[16], out[8]


def half_ulp(x):
    """The float16 spacing at x (|x| normal)."""
    return float(np.spacing(np.float16(x)))


def first_merge_report(kl, attns, tau):
    """What the official's float16 first merge met (kl: its (256, 4096)
    KL values): NaN pairs, dropped anchors, float16 zeros of the maps, the
    finite KL closest to half(tau) and how many float16 steps away; the map
    entry closest to float16's underflow (2^-25: an entry on either side of
    it makes a whole map's KLs NaN or not), relative."""
    kl = kl.reshape(256, 4096).astype(np.float32)
    th = np.float32(np.float16(tau))
    finite = kl[np.isfinite(kl)]
    below = kl < th
    a = attns.reshape(4096, 4096)
    zero16 = (a.astype(np.float16) == 0)
    closest = float(finite[np.argmin(np.abs(finite - th))]) if finite.size else None
    under = 2.0 ** -25
    return {
        "pairs": int(kl.size), "nan_pairs": int(np.isnan(kl).sum()), "merged_pairs": int(below.sum()),
        "dropped_anchors": int((below.sum(1) == 0).sum()),
        "maps_with_float16_zeros": int(zero16.any(1).sum()),
        "float16_zero_entries": int(zero16.sum()),
        "closest_kl_to_tau": closest,
        "closest_kl_steps": None if closest is None else abs(closest - float(th)) / half_ulp(th),
        "kl_within_2_steps": int((np.abs(finite - th) <= 2 * half_ulp(th)).sum()),
        "half_tau": float(th),
        "underflow_clearance": float(np.min(np.abs(a - under)) / under),
    }


def later_merge_report(kls, tau):
    """The float64 merges: the finite KL (of every anchor-map pair the
    greedy loop evaluated) closest to tau, relative to tau."""
    out = []
    for kl in kls:
        v = np.concatenate([np.asarray(k, dtype=np.float64).ravel() for k in kl]) if kl else np.zeros(0)
        v = v[np.isfinite(v)]
        out.append({"pairs": int(v.size), "merged_pairs": int((v < tau).sum()),
                    "closest_kl_to_tau": float(v[np.argmin(np.abs(v - tau))]) if v.size else None,
                    "rel_clearance": float(np.min(np.abs(v - tau)) / tau) if v.size else None})
    return out


def relative_margin(up):
    """up (K, H, W): (top-1 - top-2) / top-1 at each pixel, float32 — how
    close the official argmax is to a tie, in the relative units float32
    noise of the maps lives in (the maps are attention probabilities,
    ~1/4096 each: an absolute margin would excuse whole low-attention
    regions). A pixel whose top-1 is 0 is a tie (0); one map: no tie (1)."""
    up = np.asarray(up, dtype=np.float64)
    if up.shape[0] < 2:
        return np.ones(up.shape[1:], dtype=np.float32)
    s = np.sort(up, axis=0)
    with np.errstate(all="ignore"):
        m = np.where(s[-1] > 0, (s[-1] - s[-2]) / s[-1], 0.0)
    return m.astype(np.float32)


def official(DiffSeg, w64, w32, w16, w8, tau):
    """DiffSeg([tau] * 3, False, 16).segment on the weights, recording what
    the merges decided. Returns the segments (512, 512), the merged maps
    (K, 64, 64) float32, the relative margin of the final argmax (512, 512),
    the report and the first merge's (256, 4096) membership."""
    class Recording(DiffSeg):
        def aggregate_weights(self, *a, **k):
            self.aggregated = super().aggregate_weights(*a, **k)
            return self.aggregated

        def KL(self, x, Y):
            out = super().KL(x, Y)
            if out.dtype == np.float16:          # the first merge's 16 blocks of anchors
                self.kl16.append(out.numpy())
            else:
                self.kl64[self.iter].append(np.asarray(out))
            return out

        def mask_merge(self, it, *a, **k):
            self.iter = it
            out = super().mask_merge(it, *a, **k)
            self.merged = out
            return out

    seg = Recording([tau] * 3, False, 16)
    seg.kl16, seg.kl64 = [], {1: [], 2: []}
    with np.errstate(all="ignore"):
        pred = seg.segment(w64, w32, w16, w8)
    merged = np.asarray(seg.merged)[:, 0].astype(np.float32)
    kl16 = np.concatenate(seg.kl16)
    report = first_merge_report(kl16, seg.aggregated, tau)
    up = np.asarray(seg.upsampled)[..., 0]
    margin = relative_margin(up)
    srt = np.sort(up, axis=0)
    report["segments"] = int(len(np.unique(pred[0])))
    report["merged_maps"] = int(merged.shape[0])
    report["min_argmax_margin"] = float((srt[-1] - srt[-2]).min()) if up.shape[0] > 1 else None
    report["min_relative_margin"] = float(margin.min())
    report["pixels_relative_margin_below_1e-4"] = int((margin < 1e-4).sum())
    report["later_merges"] = later_merge_report([seg.kl64[1], seg.kl64[2]], tau)
    member = kl16.reshape(256, 4096).astype(np.float32) < np.float32(np.float16(tau))
    return pred[0].astype(np.int32), merged, margin, report, member


def load_segmentor(repo):
    import tf_shim
    tf_shim.install()
    # by path: diffseg/ has no __init__.py, and this script is named diffseg.py
    import importlib.util
    spec = importlib.util.spec_from_file_location("diffseg_segmentor", os.path.join(repo, "diffseg", "segmentor.py"))
    segmentor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(segmentor)
    return segmentor.DiffSeg


def case_weights(model, img, fmseg_bin=None):
    """fmseg's attention maps on IMG (diffseg_dump.lua, by FMSEG_BIN: another
    build, for the noise checks), summed as diffusion_model.py does."""
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image
        Image.fromarray(img).save(os.path.join(tmp, "image.png"))
        args = ["tests/tools/methods/diffseg_dump.lua", "maps", model, os.path.join(tmp, "image.png"),
                os.path.join(tmp, "maps.safetensors"), "300"]
        if fmseg_bin:
            subprocess.check_call([fmseg_bin, "run", *args], cwd=ROOT)
        else:
            fmseg(*args)
        maps = load_safetensors(os.path.join(tmp, "maps.safetensors"))
    return official_weights(maps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default="/work/ext/diffseg")
    ap.add_argument("--case", help="only this case (the model is then left as it is)")
    ap.add_argument("--fmseg", help="check only: the attention maps from this fmseg binary (another build); "
                    "prints how its official result differs from the fixture's, writes nothing")
    ap.add_argument("--decisions", help="also save each case's first-merge membership (256, 4096) here, "
                    "as <case>.npy, to compare builds")
    args = ap.parse_args()
    DiffSeg = load_segmentor(args.repo)
    model = os.path.join(MODELS, MODEL) if (args.case or args.fmseg) else make_model()
    import torch
    import PIL
    for case, tau, (h, w), what in CASES:
        if args.case and case != args.case:
            continue
        img = case_image(h, w, seed=len(case))
        pred, merged, margin, report, member = official(DiffSeg, *case_weights(model, img, args.fmseg), tau)
        print(case, json.dumps(report))
        if args.decisions:
            np.save(os.path.join(args.decisions, case + ".npy"), member)
        if args.fmseg:
            ref = load_safetensors(os.path.join(ROOT, "tests", "fixtures", "methods", "diffseg-" + case,
                                                "ref.safetensors"))
            d = pred != ref["segments"]
            print(case, "vs the fixture:", int(d.sum()), "segment pixels differ, relative margins",
                  sorted(float(x) for x in ref["margin"][d]) if "margin" in ref else "-",
                  "maps", merged.shape, "vs", ref["maps"].shape)
            continue
        method = {
            "recipe": "diffseg",
            "params": {"image_size": 512, "timestep": 300, "prompt": "", "num_points": 16,
                       "kl_threshold": [tau] * 3, "refine": False, "crop": "center_square"},
            "models": {"sd": "../models/" + MODEL},
            "outputs": {"segments": {"compare": "labels_relative", "margin": "margin"},
                        "maps": {"compare": "float"}},
            "generator": {"script": "tests/tools/methods/diffseg.py",
                          "repos": {"google/diffseg": git_commit(args.repo)},
                          "tensorflow": "tests/tools/methods/tf_shim.py (numpy " + np.__version__ + ")",
                          "torch": torch.__version__, "PIL": PIL.__version__},
            "first_merge": report,
            "notes": NOTES.format(what=what, tau=tau, h=h, w=w),
        }
        write_fixture("diffseg-" + case, method, img, {"segments": pred, "maps": merged, "margin": margin})


if __name__ == "__main__":
    main()
