"""Parity fixtures for SAM 2's image encoder (fmseg.models.sam2): tiny
random Sam2Model directories in the Hugging Face layout (config.json as
transformers writes Sam2Config, model.safetensors under transformers'
names) with reference outputs made by the ORIGINAL code,
facebookresearch/sam2's sam2/modeling/backbones/hieradet.py (Hiera),
image_encoder.py (FpnNeck, ImageEncoder) and position_encoding.py
(PositionEmbeddingSine), built directly with the tiny sizes as the
sam2.1_hiera_*.yaml configs build them for the real ones.

    /usr/bin/python3 tests/tools/make_sam2_fixtures.py --sam2 /path/to/sam2

--sam2: a checkout of facebookresearch/sam2, or `git archive HEAD sam2`
extracted with a COMMIT file beside it (never copied here). Runs on
Debian's python3-torch (1.13, CPU) with numpy; no transformers.

What is not the original's own code, and why:
  - sam2/__init__.py initialises hydra (not installable here): the `sam2`
    package is entered without running it; hieradet.py's
    `from iopath.common.file_io import g_pathmgr` gets a stand-in (it is
    only used to read weights_path, which stays None).
  - MultiScaleAttention calls F.scaled_dot_product_attention, which torch
    1.13 lacks: the generator supplies the plain definition,
    softmax(q k^T / sqrt(d)) v (no mask, no dropout), which is what SDPA
    computes for these arguments.

The weights are drawn for the original module (common.randomize: every
value float16-representable), renamed to transformers' names with the
rules of transformers' convert_sam2_to_hf.py (KEYS_TO_MODIFY_MAPPING,
the mlp and neck patterns; restated in HF_RULES below) and stored as F32;
the original loads them back under its own names with strict=True.

Only the image encoder exists in these checkpoints (vision_encoder.*);
the prompt encoder and mask decoder come with the step that ports them.

Writes tests/fixtures/sam2-tiny (the sam2.1_hiera_t structure scaled down:
stages 1-2-7-2, windows 8-4-14-7, global blocks 5, 7, 9, q_pool 3, scalp
1, top-down levels 2, 3) and tests/fixtures/sam2-tiny-alt (other stage
depths, windows, global blocks, q_pool 2 (one pooling block in windows that tile the
grid, one in padded windows), a dim change without pooling, a non-square
background position embedding, a 3x3 neck, top-down levels 0, 1, scalp 0,
80x80 images in a batch of 2). Reference tensors (ref.json lists them):
  pixel_values            (B, 3, S, S)  input
  trunk.<i>               (B, C_i, H_i, W_i)  Hiera's output per stage, high to low resolution
  backbone_fpn.<i>        (B, d_model, H_i, W_i)  ImageEncoder's backbone_fpn (after scalp)
  vision_pos_enc.<i>      (B, d_model, H_i, W_i)  its vision_pos_enc
  vision_features         ImageEncoder's vision_features (= the last backbone_fpn level)
"""
import argparse
import json
import math
import os
import re
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "methods"))
import common  # noqa: E402

ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
torch.set_grad_enabled(False)

# transformers' convert_sam2_to_hf.py for the image encoder, as
# (pattern, replacement) applied in order to the ImageEncoder's own names
# (prefixed image_encoder. in a SAM2Base checkpoint).
HF_RULES = [
    (r"^trunk\.patch_embed\.proj\.", "vision_encoder.backbone.patch_embed.projection."),
    (r"^trunk\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.backbone.blocks.\1.layer_norm\2."),
    (r"^trunk\.blocks\.(\d+)\.mlp\.layers\.0\.", r"vision_encoder.backbone.blocks.\1.mlp.proj_in."),
    (r"^trunk\.blocks\.(\d+)\.mlp\.layers\.1\.", r"vision_encoder.backbone.blocks.\1.mlp.proj_out."),
    (r"^trunk\.", "vision_encoder.backbone."),
    (r"^neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
]


def hf_name(name):
    for pattern, repl in HF_RULES:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    raise ValueError("no transformers name for " + name)


def import_sam2(path):
    """The original modules, without sam2/__init__.py's hydra set-up."""
    pkg = types.ModuleType("sam2")
    pkg.__path__ = [os.path.join(path, "sam2")]
    sys.modules["sam2"] = pkg
    for name in ("iopath", "iopath.common"):
        m = types.ModuleType(name)
        m.__path__ = []
        sys.modules[name] = m
    sys.modules["iopath.common.file_io"] = types.SimpleNamespace(g_pathmgr=None)
    if not hasattr(F, "scaled_dot_product_attention"):
        def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
            assert attn_mask is None and dropout_p == 0.0 and not is_causal
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            return scores.softmax(dim=-1) @ v
        F.scaled_dot_product_attention = sdpa
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    return Hiera, FpnNeck, ImageEncoder, PositionEmbeddingSine


# ---- config.json as transformers writes Sam2Config ------------------------------

def hf_config(case, trunk):
    stage_ends = trunk.stage_ends
    dims = [trunk.blocks[e].dim_out for e in stage_ends]
    heads = [trunk.blocks[e].attn.num_heads for e in stage_ends]
    s = case["image_size"]
    levels = len(dims)
    sizes = []
    g = s // 4
    for i in range(levels):
        sizes.append([g, g])
        if i < case["q_pool"]:
            g //= 2
    backbone = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": case["embed_dim"],
        "num_attention_heads": case["num_heads"],
        "num_channels": 3,
        "image_size": [s, s],
        "patch_kernel_size": [7, 7],
        "patch_stride": [4, 4],
        "patch_padding": [3, 3],
        "query_stride": [2, 2],
        "window_positional_embedding_background_size": list(case["bkg"]),
        "num_query_pool_stages": case["q_pool"],
        "blocks_per_stage": list(case["stages"]),
        "embed_dim_per_stage": dims,
        "num_attention_heads_per_stage": heads,
        "window_size_per_stage": list(case["window_spec"]),
        "global_attention_blocks": list(case["global_blocks"]),
        "mlp_ratio": 4.0,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "initializer_range": 0.02,
    }
    vision = {
        "model_type": "sam2_vision_model",
        "backbone_config": backbone,
        "backbone_channel_list": dims[::-1],
        "backbone_feature_sizes": sizes[:levels - case["scalp"]],
        "fpn_hidden_size": case["d_model"],
        "fpn_kernel_size": case["fpn_kernel"],
        "fpn_stride": 1,
        "fpn_padding": case["fpn_padding"],
        "fpn_top_down_levels": list(case["top_down"]),
        "num_feature_levels": levels - case["scalp"],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "initializer_range": 0.02,
    }
    return {
        "architectures": ["Sam2Model"],
        "model_type": "sam2",
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "vision_config": vision,
        "prompt_encoder_config": {
            "hidden_size": case["d_model"], "image_size": s, "patch_size": 16, "mask_input_channels": 16,
            "num_point_embeddings": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "scale": 1},
        "mask_decoder_config": {
            "hidden_size": case["d_model"], "hidden_act": "gelu", "mlp_dim": 2048, "num_hidden_layers": 2,
            "num_attention_heads": 8, "attention_downsample_rate": 2, "num_multimask_outputs": 3,
            "iou_head_depth": 3, "iou_head_hidden_dim": 256, "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05, "dynamic_multimask_stability_thresh": 0.98},
    }


# ---- the cases -------------------------------------------------------------------

CASES = [
    dict(name="sam2-tiny", seed=101, image_size=128, batch=1,
         embed_dim=4, num_heads=1, stages=(1, 2, 7, 2), q_pool=3, window_spec=(8, 4, 14, 7),
         global_blocks=(5, 7, 9), bkg=(7, 7), d_model=8, fpn_kernel=1, fpn_padding=0, top_down=(2, 3), scalp=1,
         notes="sam2.1_hiera_t's structure at 1/24 of its width (embed 4, 1 head, d_model 8) on "
               "128x128: windows 14 and 7 pad the 8x8 and 4x4 grids"),
    dict(name="sam2-tiny-alt", seed=102, image_size=80, batch=2,
         embed_dim=6, num_heads=2, stages=(2, 1, 3, 1), q_pool=2, window_spec=(4, 4, 3, 2),
         global_blocks=(1, 5), bkg=(5, 3), d_model=12, fpn_kernel=3, fpn_padding=1, top_down=(0, 1), scalp=0,
         notes="q_pool 2: block 2 pools q in 4x4 windows of the 20x20 grid, block 3 in 4x4 "
               "windows padded over the 10x10 grid; global blocks 1 (400 tokens) and 5; block 6 changes width without pooling; window 3 pads 5x5; "
               "background position embedding 5x3; 3x3 neck convolutions; top-down levels 0, 1; "
               "scalp 0; a batch of 2"),
]


def smooth_image(gen, b, s):
    small = torch.rand((b, 3, s // 8, s // 8), generator=gen) * 2 - 1
    img = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
    return img * 2 + 0.1 * torch.randn((b, 3, s, s), generator=gen)


def make(case, mods, out_root, commit):
    Hiera, FpnNeck, ImageEncoder, PositionEmbeddingSine = mods
    trunk = Hiera(embed_dim=case["embed_dim"], num_heads=case["num_heads"], q_pool=case["q_pool"],
                  q_stride=(2, 2), stages=case["stages"], dim_mul=2.0, head_mul=2.0,
                  window_pos_embed_bkg_spatial_size=case["bkg"], window_spec=case["window_spec"],
                  global_att_blocks=case["global_blocks"])
    pe = PositionEmbeddingSine(num_pos_feats=case["d_model"], normalize=True, scale=None, temperature=10000)
    neck = FpnNeck(position_encoding=pe, d_model=case["d_model"], backbone_channel_list=trunk.channel_list,
                   kernel_size=case["fpn_kernel"], stride=1, padding=case["fpn_padding"],
                   fpn_interp_model="nearest", fpn_top_down_levels=list(case["top_down"]))
    enc = ImageEncoder(trunk=trunk, neck=neck, scalp=case["scalp"]).eval()

    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    weights = common.randomize(shapes, case["seed"])
    rng = np.random.default_rng(case["seed"] + 1000)
    for k in ("trunk.pos_embed", "trunk.pos_embed_window"):   # large enough to matter
        weights[k] = (0.5 * rng.standard_normal(shapes[k])).astype(np.float16)
    enc.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in weights.items()}, strict=True)

    gen = torch.Generator().manual_seed(case["seed"])
    px = smooth_image(gen, case["batch"], case["image_size"])
    out = enc(px)
    stages = trunk(px)

    name = os.path.join(out_root, case["name"])
    os.makedirs(name, exist_ok=True)
    hf = {hf_name(k): v.astype(np.float32) for k, v in weights.items()}
    common.save_safetensors(os.path.join(name, "model.safetensors"), hf)
    with open(os.path.join(name, "config.json"), "w") as f:
        json.dump(hf_config(case, trunk), f, indent=2, sort_keys=True)
        f.write("\n")

    ref = {"pixel_values": px}
    for i, t in enumerate(stages):
        ref[f"trunk.{i}"] = t
    for i, t in enumerate(out["backbone_fpn"]):
        ref[f"backbone_fpn.{i}"] = t
    for i, t in enumerate(out["vision_pos_enc"]):
        ref[f"vision_pos_enc.{i}"] = t
    ref["vision_features"] = out["vision_features"]
    ref = {k: v.detach().contiguous().numpy().astype(np.float32) for k, v in ref.items()}
    common.save_safetensors(os.path.join(name, "ref.safetensors"), ref)
    meta = {
        "family": "sam2", "model_class": "Sam2Model (image encoder only)",
        "reference": "facebookresearch/sam2 sam2/modeling/backbones (Hiera, FpnNeck, ImageEncoder), "
                     "position_encoding.py (PositionEmbeddingSine)",
        "reference_commit": commit, "torch": torch.__version__,
        "notes": "made by tests/tools/make_sam2_fixtures.py; " + case["notes"] +
                 "; F.scaled_dot_product_attention supplied as softmax(q k^T / sqrt(d)) v (torch 1.13)",
        "tensors": {k: [list(v.shape), "float32"] for k, v in ref.items()},
    }
    with open(os.path.join(name, "ref.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("wrote", name, len(ref), "tensors;",
          "trunk", [tuple(t.shape) for t in stages], "fpn", [tuple(t.shape) for t in out["backbone_fpn"]])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sam2", required=True, help="facebookresearch/sam2 checkout or extracted archive")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    mods = import_sam2(args.sam2)
    commit = common.git_commit(args.sam2)
    for case in CASES:
        make(case, mods, args.out, commit)


if __name__ == "__main__":
    main()
