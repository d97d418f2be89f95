"""ProxyCLIP method fixtures (tests/fixtures/methods/proxyclip-*/) from the
official code: mc-lan/ProxyCLIP proxyclip_segmentor.py with its bundled
open_clip and segment_anything, and the proxies as torch.hub builds them:
DINO ViT-B/8 from facebookresearch/dino vision_transformer.py
('dino_vitb8'), DINOv2 ViT-B/14 with registers from facebookresearch/dinov2
('dinov2_vitb14_reg'), SAM ViT-B's image encoder (sam_model_registry) — on
tiny random models made here in the Hugging Face layouts fmseg loads:
models/dino-b8-tiny (width 64, 2 heads, 3 layers, patch 8),
models/dinov2-reg-b14-tiny (width 64, 2 heads, 2 layers, 4 registers),
models/sam-proxy-tiny (1024 input, 64-pixel patches; shapes, conversion and
builder from sam_amg.py), with models/clip-b16-tiny.

    /usr/bin/python3 tests/tools/methods/proxyclip.py [--proxyclip DIR] [--dino DIR] [--dinov2 DIR]

DIRs are checkouts (or `git archive` extracts with a COMMIT file) of the
repositories; defaults /work/ext/ProxyCLIP, /work/ext/dino and
/work/ext/dinov2-2024 (dinov2 at e1277af, the main branch of ProxyCLIP's
time: later commits call scaled_dot_product_attention, which torch 1.13
lacks). Their files are run unmodified; what cannot be installed here is
stubbed (official_stubs.py). The official code runs in fp16 on CUDA; here
float32 on the CPU (its .half() casts are no-ops). Background thresholds
are moved into a gap of the official probabilities (common.clear_threshold).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import official_stubs as stubs  # noqa: E402

CLIP_DIR = os.path.join(common.MODELS, "clip-b16-tiny")
DINO_DIR = os.path.join(common.MODELS, "dino-b8-tiny")
DINO = dict(width=64, heads=2, layers=3, patch=8, grid=28)   # ViT-B/8's layout, 224 px


# ---- the tiny DINO proxy ------------------------------------------------------------

def dino_shapes(width, heads, layers, patch, grid):
    """HF ViTModel names (facebook/dino-vitb8's layout). Position and class
    embeddings are listed 2-D so that randomize gives them unit-scale rows."""
    s = {"embeddings.cls_token": (1, width),
         "embeddings.position_embeddings": (grid * grid + 1, width),
         "embeddings.patch_embeddings.projection.weight": (width, 3, patch, patch),
         "embeddings.patch_embeddings.projection.bias": (width,),
         "layernorm.weight": (width,), "layernorm.bias": (width,)}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for n in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                  "attention.output.dense"):
            s[p + n + ".weight"] = (width, width)
            s[p + n + ".bias"] = (width,)
        for n in ("layernorm_before", "layernorm_after"):
            s[p + n + ".weight"] = (width,)
            s[p + n + ".bias"] = (width,)
        s[p + "intermediate.dense.weight"] = (4 * width, width)
        s[p + "intermediate.dense.bias"] = (4 * width,)
        s[p + "output.dense.weight"] = (width, 4 * width)
        s[p + "output.dense.bias"] = (width,)
    return s


def make_dino(seed=11):
    d = DINO
    w = common.randomize(dino_shapes(d["width"], d["heads"], d["layers"], d["patch"], d["grid"]), seed)
    w["embeddings.cls_token"] = w["embeddings.cls_token"].reshape(1, 1, -1)
    w["embeddings.position_embeddings"] = w["embeddings.position_embeddings"][None]
    os.makedirs(DINO_DIR, exist_ok=True)
    common.save_safetensors(os.path.join(DINO_DIR, "model.safetensors"), w)
    config = {"architectures": ["ViTModel"], "model_type": "vit", "attention_probs_dropout_prob": 0.0,
              "hidden_dropout_prob": 0.0, "hidden_act": "gelu", "hidden_size": d["width"],
              "intermediate_size": 4 * d["width"], "num_attention_heads": d["heads"],
              "num_hidden_layers": d["layers"], "image_size": d["patch"] * d["grid"],
              "patch_size": d["patch"], "num_channels": 3, "qkv_bias": True, "layer_norm_eps": 1e-6,
              "initializer_range": 0.02, "encoder_stride": 16}
    with open(os.path.join(DINO_DIR, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    pre = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 224, "width": 224},
           "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    with open(os.path.join(DINO_DIR, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)
    return DINO_DIR


def dino_to_hub(model_dir):
    """HF ViTModel weights → the state dict of dino's VisionTransformer."""
    hf = {k: torch.from_numpy(v.astype(np.float32))
          for k, v in common.load_safetensors(os.path.join(model_dir, "model.safetensors")).items()}
    sd = {"cls_token": hf["embeddings.cls_token"], "pos_embed": hf["embeddings.position_embeddings"],
          "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
          "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
          "norm.weight": hf["layernorm.weight"], "norm.bias": hf["layernorm.bias"]}
    for i in range(DINO["layers"]):
        p, q = common.vit_attention_to_original(hf, i, sd)
        for n, m in (("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
            sd[q + m + ".weight"], sd[q + m + ".bias"] = hf[p + n + ".weight"], hf[p + n + ".bias"]
        sd[q + "mlp.fc1.weight"], sd[q + "mlp.fc1.bias"] = hf[p + "intermediate.dense.weight"], hf[p + "intermediate.dense.bias"]
        sd[q + "mlp.fc2.weight"], sd[q + "mlp.fc2.bias"] = hf[p + "output.dense.weight"], hf[p + "output.dense.bias"]
    return sd


def hub_dino(dino_repo):
    """What torch.hub.load('facebookresearch/dino:main', 'dino_vitb8') builds
    (hubconf.py: vit_base(patch_size=8, num_classes=0): qkv_bias, mlp_ratio
    4, LayerNorm eps 1e-6) at the tiny width, with the tiny weights."""
    from functools import partial
    sys.path.insert(0, dino_repo)
    import vision_transformer as vits
    sys.path.pop(0)
    d = DINO
    model = vits.VisionTransformer(patch_size=d["patch"], num_classes=0, embed_dim=d["width"], depth=d["layers"],
                                   num_heads=d["heads"], mlp_ratio=4, qkv_bias=True,
                                   norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    model.load_state_dict(dino_to_hub(DINO_DIR), strict=True)
    return model.eval()


# ---- the tiny DINOv2-with-registers proxy ------------------------------------------------

DINOV2_DIR = os.path.join(common.MODELS, "dinov2-reg-b14-tiny")
DINOV2 = dict(width=64, heads=2, layers=2, patch=14, grid=16, registers=4)   # ViT-B/14-reg's layout, 224 px


def make_dinov2(seed=12):
    d = DINOV2
    c = d["width"]
    w = common.dinov2_weights(c, d["layers"], d["patch"], d["grid"], seed, registers=d["registers"])
    os.makedirs(DINOV2_DIR, exist_ok=True)
    common.save_safetensors(os.path.join(DINOV2_DIR, "model.safetensors"), w)
    config = {"architectures": ["Dinov2WithRegistersModel"], "model_type": "dinov2_with_registers",
              "hidden_size": c, "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"],
              "mlp_ratio": 4, "patch_size": d["patch"], "image_size": d["patch"] * d["grid"], "num_channels": 3,
              "num_register_tokens": d["registers"], "layerscale_value": 1.0, "layer_norm_eps": 1e-6,
              "hidden_act": "gelu", "qkv_bias": True, "use_swiglu_ffn": False, "drop_path_rate": 0.0,
              "attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0, "initializer_range": 0.02,
              "apply_layernorm": True}
    with open(os.path.join(DINOV2_DIR, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    return DINOV2_DIR


def hub_dinov2(dinov2_repo):
    """What torch.hub.load('facebookresearch/dinov2', 'dinov2_vitb14_reg') builds
    (hub/backbones.py: vit_base's DinoVisionTransformer with 4 registers,
    init_values 1.0, mlp FFN, antialiased size-based position resampling) at
    the tiny width, with the tiny weights in its own names."""
    from functools import partial
    sys.path.insert(0, dinov2_repo)
    from dinov2.models import vision_transformer as vits
    from dinov2.layers import MemEffAttention, NestedTensorBlock as Block
    sys.path.pop(0)
    d = DINOV2
    model = vits.DinoVisionTransformer(
        img_size=d["patch"] * d["grid"], patch_size=d["patch"], embed_dim=d["width"], depth=d["layers"],
        num_heads=d["heads"], mlp_ratio=4, block_fn=partial(Block, attn_class=MemEffAttention),
        num_register_tokens=d["registers"], init_values=1.0, ffn_layer="mlp", block_chunks=0,
        interpolate_antialias=True, interpolate_offset=0.0)
    model.load_state_dict(common.dinov2_to_original(DINOV2_DIR), strict=True)
    return model.eval()


# ---- the tiny SAM proxy ----------------------------------------------------------------

SAM_DIR = os.path.join(common.MODELS, "sam-proxy-tiny")
# ProxyCLIP feeds SAM's image encoder 1024 x 1024 inputs; 64-pixel patches
# keep the tiny encoder's grid at 16 x 16 (windows of 6, padded to 18)
SAM_VISION = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=1024, patch_size=64,
                  window_size=6, global_attn_indexes=[1], mlp_ratio=4.0, output_channels=64, num_pos_feats=32)


def sam_module():
    """sam_amg.py's SamModel shapes, conversion and builder, at SAM_VISION."""
    import sam_amg
    sam_amg.VISION = SAM_VISION
    return sam_amg


def make_sam(seed=13):
    sa = sam_module()
    w = common.randomize(sa.sam_shapes(), seed)
    rng = np.random.default_rng(seed + 1)
    w["vision_encoder.pos_embed"] = (0.5 * rng.standard_normal(w["vision_encoder.pos_embed"].shape)).astype(np.float16)
    return sa.write_sam_model(SAM_DIR, w)


# ---- the official segmentor -----------------------------------------------------------

def load_official(proxy_repo, dino_repo, ckpt, dinov2_repo=None):
    stubs.ftfy()
    stubs.einops()
    stubs.timm()
    stubs.mmseg_1x()
    sys.path.insert(0, proxy_repo)
    import proxyclip_segmentor as ps
    from open_clip import load_openai_model
    from prompts.imagenet_template import openai_imagenet_template
    # create_model('ViT-B/16', pretrained='openai', precision='fp16') reads
    # openai's checkpoint through load_openai_model; ours is the tiny one.
    ps.create_model = lambda name, pretrained=None, precision="fp32", **k: load_openai_model(
        ckpt, precision="fp32", device="cpu")
    # sam_model_registry['vit_b'](checkpoint=None) builds SAM ViT-B; here the tiny one
    # (segment-anything's modules as ProxyCLIP bundles them, weights loaded strictly)
    ps.sam_model_registry = {"vit_b": lambda checkpoint=None: sam_module().build_original(SAM_DIR)}
    real_hub = torch.hub.load
    hub = {"dino_vitb8": lambda: hub_dino(dino_repo), "dinov2_vitb14_reg": lambda: hub_dinov2(dinov2_repo)}
    torch.hub.load = lambda repo, name, *a, **k: hub[name]() if name in hub else real_hub(repo, name, *a, **k)
    return ps, openai_imagenet_template


def run_case(ps, name, image, classes, params, notes, repos, vfm="dino"):
    """Runs ProxyCLIPSegmentation on IMAGE (H, W, 3 RGB) as mmseg's test
    pipeline feeds it and writes fixture NAME."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join("; ".join(c) for c in classes))     # ProxyCLIP's class files: synonyms '; '
        name_path = f.name
    with stubs.float32():
        seg = ps.ProxyCLIPSegmentation(
            clip_type="openai", model_type="ViT-B/16", vfm_model=vfm, name_path=name_path,
            device=torch.device("cpu"), prob_thd=params["prob_thd"], logit_scale=params["logit_scale"],
            beta=params["beta"], gamma=params["gamma"], slide_stride=params["slide_stride"],
            slide_crop=params["slide_crop"])
        # the proxy similarities S' of every window, to report how many sit near zero
        near = {"n": 0, "total": 0}

        def count_near_zero(seg):
            real_custom = seg.clip.visual.custom_attn

            def custom_attn(attn_layer, x, ex_feats=None, beta=1.2, gamma=3.0, token_size=(16, 16)):
                q_k = torch.nn.functional.normalize(ex_feats.flatten(2, 3), dim=1)
                s = torch.einsum("b c m, b c n -> b m n", q_k, q_k)
                s = (s - torch.mean(s) * beta) * gamma
                near["n"] += int((s.abs() < 1e-4).sum())
                near.setdefault("min", []).append(float(s.abs().min()))
                near["total"] += s.numel()
                return real_custom(attn_layer, x, ex_feats=ex_feats, beta=beta, gamma=gamma, token_size=token_size)
            seg.clip.visual.custom_attn = custom_attn
        params, sample, blended = stubs.predict_segmentor(seg, image, params, count_near_zero)
    os.unlink(name_path)
    probs = sample.data["seg_logits"].data.float().numpy()
    labels = sample.data["pred_sem_seg"].data[0].numpy().astype(np.int32)
    logits = (blended[0] * params["logit_scale"]).float().numpy()
    margin = common.top2_margin(probs)
    method = {
        "recipe": "proxyclip", "params": {k: v for k, v in params.items()},
        "models": {"clip": "../models/clip-b16-tiny",
                   "vfm": "../models/" + {"dino": "dino-b8-tiny", "sam": "sam-proxy-tiny",
                                          "dinov2": "dinov2-reg-b14-tiny"}[vfm]},
        "outputs": {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"}},
        "generator": {"script": "tests/tools/methods/proxyclip.py", "repos": repos,
                      "torch": torch.__version__.split("+")[0], "cv2": __import__("cv2").__version__},
        "notes": notes + (" Official side: ProxyCLIPSegmentation.predict on mmseg's test pipeline (cv2 "
                          "bilinear Resize, SegDataPreProcessor), float32 on the CPU; logits = logit_scale x "
                          "forward_slide's output, labels = pred_sem_seg, margin from seg_logits. "
                          "%d of %d proxy similarities S' have |S'| < 1e-4." % (near["n"], near["total"])),
    }
    lines = [", ".join(c) for c in classes]
    out = common.write_fixture(name, method, image, {"logits": logits, "labels": labels, "margin": margin}, lines)
    bg = float((labels == 0).mean())
    print(f"{name}: scores {tuple(blended.shape[2:])}, labels {np.bincount(labels.ravel(), minlength=len(classes))}, "
          f"background {bg:.3f}, min margin {margin.min():.2e}, near-zero S' {near['n']}/{near['total']}, "
          f"min |S'| per window {near['min']}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxyclip", default="/work/ext/ProxyCLIP")
    ap.add_argument("--dino", default="/work/ext/dino")
    ap.add_argument("--dinov2", default="/work/ext/dinov2-2024",
                    help="facebookresearch/dinov2 at e1277af (Feb 2024, the main branch of ProxyCLIP's time; "
                         "later commits use scaled_dot_product_attention, which torch 1.13 lacks)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    make_dino()
    make_sam()
    make_dinov2()
    ckpt = os.path.join(common.METHODS, ".clip-b16-tiny-openai.pt")
    common.save_openai_checkpoint(CLIP_DIR, ckpt)
    try:
        ps, _ = load_official(args.proxyclip, args.dino, ckpt, args.dinov2)
        repos = {"mc-lan/ProxyCLIP": common.git_commit(args.proxyclip),
                 "facebookresearch/dino": common.git_commit(args.dino)}
        repos_v2 = {"mc-lan/ProxyCLIP": repos["mc-lan/ProxyCLIP"],
                    "facebookresearch/dinov2": common.git_commit(args.dinov2)}
        image = common.test_image(170, 230)
        # background first (ProxyCLIP's VOC21 list: stuff words as synonyms), then objects with synonyms
        classes = [["sky", "tree"], ["astronaut"], ["grass", "lawn"], ["horse"], ["flag"]]
        base = dict(logit_scale=40, slide_crop=336, slide_stride=112, pad_multiple=56, short_side=336,
                    beta=1.2, gamma=3.0, templates="imagenet")
        run_case(ps, "proxyclip-dino-voc", image, classes, dict(base, prob_thd=0.2),
                 "230x170 image resized to 455x336 (short side 336), three 336x336 windows at stride 112 "
                 "(x = 0, 112, 119), 5 classes (7 queries: synonyms), background class 0 with prob_thd 0.2, DINO "
                 "ViT-B/8 proxy (42x42 grid: positions resampled by scale_factor 42.1/28).", repos)
        run_case(ps, "proxyclip-dino-pad", image, classes[1:], dict(base, prob_thd=0.0, short_side=300),
                 "230x170 image resized to 406x300: windows 300x336 zero-padded to 336x336 (pad 18 top and "
                 "bottom, multiple of 56), two windows (x = 0, 70), no background, 4 classes (5 queries).", repos)
        run_case(ps, "proxyclip-sam-voc", image, classes, dict(base, prob_thd=0.2),
                 "As proxyclip-dino-voc with SAM's image encoder as the proxy (ProxyCLIP's vfm_model='sam'): "
                 "each 336x336 window (in ImageNet normalisation) bilinearly resized to 1024x1024, the neck's "
                 "16x16 output as F (tiny encoder: 64-pixel patches, windows of 6, one global block).", repos,
                 vfm="sam")
        run_case(ps, "proxyclip-dinov2-voc", image, classes, dict(base, prob_thd=0.2),
                 "As proxyclip-dino-voc with DINOv2 ViT-B/14 with registers as the proxy (vfm_model='dinov2'): "
                 "24x24 grid per 336x336 window, positions resampled by size with antialiased bicubic, the 4 "
                 "registers and the class token dropped (get_intermediate_layers(reshape=True)).", repos_v2,
                 vfm="dinov2")
    finally:
        os.unlink(ckpt)


if __name__ == "__main__":
    main()
