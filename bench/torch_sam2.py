"""torch_sam2.py — the rows of bench/bench_sam2.lua in PyTorch, run by the
ORIGINAL SAM 2 code (facebookresearch/sam2, from the checkout that
FMSEG_SAM2_SRC points at): a SAM2Base built directly, without hydra, with
sam2.1_hiera_b+.yaml's modules and flags (Hiera embed_dim 112, 2 heads,
stages 2-3-16-3, global blocks 12, 16, 20, windows 8-4-14-7, background
position embedding 14x14; FpnNeck d_model 256 over [896, 448, 224, 112],
top-down levels 2, 3, scalp 1; SAM2Base's own prompt encoder and mask
decoder) and build_sam.py's image-predictor overrides (dynamic multimask
via stability), PyTorch's default random initialisation. Times
SAM2ImagePredictor.set_image (the image encoder, set_image's
ToTensor / Resize / Normalize included, on a random S x S image) and
SAM2AutomaticMaskGenerator.generate with its default settings on
tests/data/astronaut.jpg (encoder included; output_mode "binary_mask",
the default, named on both sides so that they stay alike). Writes
build/bench/torch_sam2.json (see torchlib.py); skipped with
FMSEG_BENCH_QUICK=1 and, visibly, without FMSEG_SAM2_SRC.

    FMSEG_SAM2_SRC=/path/to/sam2 /usr/bin/python3 bench/torch_sam2.py [repeats (1)] [image size (1024)]

What is not the original's own code, and why (as tests/tools/make_sam2_fixtures.py):
  - sam2/__init__.py initialises hydra (not installed with Debian's
    python3-torch): the `sam2` package is entered without running it;
    hieradet.py's `from iopath.common.file_io import g_pathmgr` gets a
    stand-in when iopath is absent (it only reads weights_path, None here).
  - torch 1.13 has no F.scaled_dot_product_attention (Hiera's
    MultiScaleAttention and the decoder's Attention call it): it gets the
    plain definition, softmax(q kᵀ / sqrt(d)) v, done as efficiently as
    torch 1.13 allows on the CPU: the heads folded into the batch, the
    scale folded into the q kᵀ product (baddbmm, beta 0), one softmax, one
    bmm; no mask, no dropout (what SDPA computes for these arguments).
  - the memory attention and memory encoder (video only, never called in
    image mode) are empty modules: neither side holds their weights.
  - an image size below 1024 (a smoke run) also sets the predictor's
    feature sizes, which set_image hard-codes for a 1024 input.
The sam2 _C extension is not needed: it only runs when
min_mask_region_area > 0 (the generator's default is 0).
"""
import importlib
import math
import os
import sys
import types

from torchlib import Results, quick, torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
PHOTO = os.path.join(HERE, "..", "tests", "data", "astronaut.jpg")


def encoder_row(size):
    return f"sam2.1-hiera-b+ encoder {size}"


def amg_row(size):
    """bench_sam2.lua's name: the image size only when not 1024 (a smoke run)."""
    return "sam2.1-hiera-b+ amg 32x32, defaults" + ("" if size == 1024 else f", {size}")


def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
    """F.scaled_dot_product_attention for torch 1.13: q (..., Tq, d),
    k (..., Tk, d), v (..., Tk, dv) -> (..., Tq, dv)."""
    assert attn_mask is None and dropout_p == 0.0 and not is_causal
    lead, tq, d = q.shape[:-2], q.shape[-2], q.shape[-1]
    q3 = q.reshape(-1, tq, d)
    k3 = k.reshape(-1, k.shape[-2], d)
    v3 = v.reshape(-1, v.shape[-2], v.shape[-1])
    none = q3.new_empty(1, 1, 1)   # beta = 0: not read
    p = torch.baddbmm(none, q3, k3.transpose(1, 2), beta=0.0, alpha=1.0 / math.sqrt(d)).softmax(dim=-1)
    return torch.bmm(p, v3).view(*lead, tq, v.shape[-1])


def import_sam2(path):
    """The original modules, without sam2/__init__.py's hydra set-up."""
    pkg = types.ModuleType("sam2")
    pkg.__path__ = [os.path.join(path, "sam2")]
    sys.modules["sam2"] = pkg
    try:
        importlib.import_module("iopath.common.file_io")
    except ImportError:
        for name in ("iopath", "iopath.common"):
            m = types.ModuleType(name)
            m.__path__ = []
            sys.modules[name] = m
        sys.modules["iopath.common.file_io"] = types.SimpleNamespace(g_pathmgr=None)
    if not hasattr(F, "scaled_dot_product_attention"):
        F.scaled_dot_product_attention = sdpa
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    return types.SimpleNamespace(
        Hiera=Hiera, FpnNeck=FpnNeck, ImageEncoder=ImageEncoder, PositionEmbeddingSine=PositionEmbeddingSine,
        SAM2Base=SAM2Base, SAM2ImagePredictor=SAM2ImagePredictor,
        SAM2AutomaticMaskGenerator=SAM2AutomaticMaskGenerator)


def build(mods, size):
    """SAM2Base as sam2.1_hiera_b+.yaml instantiates it (build_sam2 with
    apply_postprocessing), random weights; its flags (the same in every
    sam2.1 config) from tests/tools/make_sam2_fixtures.py's sam2_base,
    which needs numpy and torch only."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "tools"))
    from make_sam2_fixtures import sam2_base
    trunk = mods.Hiera(embed_dim=112, num_heads=2)   # stages, windows, global blocks: Hiera's defaults
    pe = mods.PositionEmbeddingSine(num_pos_feats=256, normalize=True, scale=None, temperature=10000)
    neck = mods.FpnNeck(position_encoding=pe, d_model=256, backbone_channel_list=[896, 448, 224, 112],
                        fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
    enc = mods.ImageEncoder(trunk=trunk, neck=neck, scalp=1)
    return sam2_base(mods.SAM2Base, enc, size)


def fit_sizes(predictor, size):
    """set_image's feature sizes for a size x size input (1024: as they are)."""
    if size != 1024:
        predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]


def main():
    if quick():
        print("torch_sam2: skipped (FMSEG_BENCH_QUICK)")
        return
    src = os.environ.get("FMSEG_SAM2_SRC", "")
    if not src or not os.path.isdir(os.path.join(src, "sam2", "modeling")):
        print("torch_sam2: skipped (set FMSEG_SAM2_SRC to a facebookresearch/sam2 checkout)")
        return
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    import numpy as np
    from PIL import Image

    mods = import_sam2(src)
    commit = os.path.join(src, "COMMIT")
    print("torch_sam2: sam2 from %s%s" % (src, " (%s)" % open(commit).read().strip()[:12]
                                          if os.path.exists(commit) else ""))
    res = Results("sam2")
    torch.manual_seed(0)
    model = build(mods, size)
    predictor = mods.SAM2ImagePredictor(model)
    fit_sizes(predictor, size)
    img = np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)
    res.model(encoder_row(size), lambda: predictor.set_image(img), warmup=1 if repeats > 1 else 0,
              repeats=repeats)
    predictor.reset_predictor()

    gen = mods.SAM2AutomaticMaskGenerator(model, output_mode="binary_mask")
    fit_sizes(gen.predictor, size)
    photo = np.array(Image.open(PHOTO).convert("RGB"))
    found = []
    res.model(amg_row(size), lambda: found.append(len(gen.generate(photo))), warmup=0, repeats=1)
    print(f"  {found[-1]} masks")
    res.finish()


if __name__ == "__main__":
    main()
