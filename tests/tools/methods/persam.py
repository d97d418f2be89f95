"""PerSAM and PerSAM-F method fixtures (tests/fixtures/methods/persam-*,
persam_f-*) from the official code, ZrrSkywalker/Personalize-SAM, run
unmodified: its persam() and persam_f() functions over a dataset folder laid
out as they expect (Images/<obj>/00.jpg ..., Annotations/<obj>/00.png), on a
tiny random SAM built from the repository's own per_segment_anything modules.

    git --git-dir=$(fetch github:ZrrSkywalker/Personalize-SAM) archive HEAD \\
        $(git ... ls-tree --name-only HEAD | grep -v weights) | tar -x -C /work/ext/persam
    /usr/bin/python3 tests/tools/methods/persam.py --repo /work/ext/persam

What is stubbed or patched around the official code, nothing inside it:
- `timm` (imported by the MobileSAM encoder, tiny_vit_sam.py, never used
  here): an empty stand-in module;
- `.cuda()` on modules and tensors: the identity (no GPU; everything float32
  on the CPU);
- `sam_model_registry['vit_h']`: returns the tiny model instead of loading
  sam_vit_h_4b8939.pth;
- SamPredictor.predict, point_selection and Mask_Weights are wrapped to
  record their arguments and results (they still run as they are).

The tiny model (tests/fixtures/methods/models/sam-persam-tiny) is a
transformers SamModel directory: 256 x 256 input with 4-pixel patches, so the
image embedding is 64 x 64 like every real SAM (PerSAM hard-codes that size
for its attention similarity); mask_input_channels 8 (mask prompts matter);
the mask decoder's layer_norm_eps 1e-5, what the original TwoWayTransformer's
nn.LayerNorm uses. Weights random (common.randomize), rounded to float16.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import types
from functools import partial

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (MODELS, METHODS, git_commit, load_safetensors, randomize,  # noqa: E402
                    save_safetensors, write_fixture)

MODEL = "sam-persam-tiny"
V = dict(hidden=32, layers=2, heads=2, image=256, patch=4, window=7, global_idx=[1], out=32, pos_feats=16)
P = dict(mask_channels=8)
D = dict(hidden=32, mlp=64, layers=2, heads=2, downsample=2, multimask=3, iou_depth=3, iou_hidden=32, eps=1e-5)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ---- the tiny SamModel (transformers layout) ------------------------------------

def sam_shapes():
    c, grid, hd = V["hidden"], V["image"] // V["patch"], V["hidden"] // V["heads"]
    s = {"shared_image_embedding.positional_embedding": (2, V["pos_feats"])}
    e = "vision_encoder."
    s[e + "patch_embed.projection.weight"] = (c, 3, V["patch"], V["patch"])
    s[e + "patch_embed.projection.bias"] = (c,)
    s[e + "pos_embed"] = (1, grid, grid, c)
    for i in range(V["layers"]):
        p = f"{e}layers.{i}."
        size = grid if i in V["global_idx"] else V["window"]
        s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"] = (3 * c, c), (3 * c,)
        s[p + "attn.proj.weight"], s[p + "attn.proj.bias"] = (c, c), (c,)
        s[p + "attn.rel_pos_h"] = s[p + "attn.rel_pos_w"] = (2 * size - 1, hd)
        for n in ("layer_norm1", "layer_norm2"):
            s[p + n + ".weight"] = s[p + n + ".bias"] = (c,)
        s[p + "mlp.lin1.weight"], s[p + "mlp.lin1.bias"] = (4 * c, c), (4 * c,)
        s[p + "mlp.lin2.weight"], s[p + "mlp.lin2.bias"] = (c, 4 * c), (c,)
    o = V["out"]
    s[e + "neck.conv1.weight"] = (o, c, 1, 1)
    s[e + "neck.conv2.weight"] = (o, o, 3, 3)
    for n in ("layer_norm1", "layer_norm2"):
        s[e + "neck." + n + ".weight"] = s[e + "neck." + n + ".bias"] = (o,)
    pe, h, mc = "prompt_encoder.", D["hidden"], P["mask_channels"]
    for i in range(4):
        s[f"{pe}point_embed.{i}.weight"] = (1, h)
    s[pe + "not_a_point_embed.weight"] = s[pe + "no_mask_embed.weight"] = (1, h)
    m = pe + "mask_embed."
    s[m + "conv1.weight"], s[m + "conv1.bias"] = (mc // 4, 1, 2, 2), (mc // 4,)
    s[m + "layer_norm1.weight"] = s[m + "layer_norm1.bias"] = (mc // 4,)
    s[m + "conv2.weight"], s[m + "conv2.bias"] = (mc, mc // 4, 2, 2), (mc,)
    s[m + "layer_norm2.weight"] = s[m + "layer_norm2.bias"] = (mc,)
    s[m + "conv3.weight"], s[m + "conv3.bias"] = (h, mc, 1, 1), (h,)
    d, ntok, internal = "mask_decoder.", D["multimask"] + 1, h // D["downsample"]
    s[d + "iou_token.weight"], s[d + "mask_tokens.weight"] = (1, h), (ntok, h)

    def attn(prefix, inner):
        for n in ("q_proj", "k_proj", "v_proj"):
            s[f"{prefix}.{n}.weight"], s[f"{prefix}.{n}.bias"] = (inner, h), (inner,)
        s[prefix + ".out_proj.weight"], s[prefix + ".out_proj.bias"] = (h, inner), (h,)

    for i in range(D["layers"]):
        p = f"{d}transformer.layers.{i}."
        attn(p + "self_attn", h)
        attn(p + "cross_attn_token_to_image", internal)
        attn(p + "cross_attn_image_to_token", internal)
        for n in ("layer_norm1", "layer_norm2", "layer_norm3", "layer_norm4"):
            s[p + n + ".weight"] = s[p + n + ".bias"] = (h,)
        s[p + "mlp.lin1.weight"], s[p + "mlp.lin1.bias"] = (D["mlp"], h), (D["mlp"],)
        s[p + "mlp.lin2.weight"], s[p + "mlp.lin2.bias"] = (h, D["mlp"]), (h,)
    attn(d + "transformer.final_attn_token_to_image", internal)
    s[d + "transformer.layer_norm_final_attn.weight"] = s[d + "transformer.layer_norm_final_attn.bias"] = (h,)
    s[d + "upscale_conv1.weight"], s[d + "upscale_conv1.bias"] = (h, h // 4, 2, 2), (h // 4,)
    s[d + "upscale_layer_norm.weight"] = s[d + "upscale_layer_norm.bias"] = (h // 4,)
    s[d + "upscale_conv2.weight"], s[d + "upscale_conv2.bias"] = (h // 4, h // 8, 2, 2), (h // 8,)

    def ff(prefix, nin, hidden, nout, depth):
        s[prefix + ".proj_in.weight"], s[prefix + ".proj_in.bias"] = (hidden, nin), (hidden,)
        for j in range(depth - 2):
            s[f"{prefix}.layers.{j}.weight"], s[f"{prefix}.layers.{j}.bias"] = (hidden, hidden), (hidden,)
        s[prefix + ".proj_out.weight"], s[prefix + ".proj_out.bias"] = (nout, hidden), (nout,)

    for i in range(ntok):
        ff(f"{d}output_hypernetworks_mlps.{i}", h, h, h // 8, 3)
    ff(d + "iou_prediction_head", h, D["iou_hidden"], ntok, D["iou_depth"])
    return s


def make_sam(seed=12):
    out = os.path.join(MODELS, MODEL)
    os.makedirs(out, exist_ok=True)
    w = randomize(sam_shapes(), seed)
    rng = np.random.default_rng(seed + 1)
    # SamPositionalEmbedding's Gaussian matrix is scale x N(0, 1) (scale =
    # hidden_size // 2): Fourier features of a useful frequency
    w["shared_image_embedding.positional_embedding"] = (
        4.0 * rng.standard_normal((2, V["pos_feats"]))).astype(np.float16)
    w["vision_encoder.pos_embed"] = (0.2 * rng.standard_normal(w["vision_encoder.pos_embed"].shape)).astype(np.float16)
    save_safetensors(os.path.join(out, "model.safetensors"), w)
    grid = V["image"] // V["patch"]
    config = {
        "architectures": ["SamModel"], "model_type": "sam", "initializer_range": 0.02,
        "vision_config": {
            "model_type": "sam_vision_model", "hidden_size": V["hidden"], "num_hidden_layers": V["layers"],
            "num_attention_heads": V["heads"], "num_channels": 3, "image_size": V["image"],
            "patch_size": V["patch"], "hidden_act": "gelu", "layer_norm_eps": 1e-06, "attention_dropout": 0.0,
            "initializer_range": 1e-10, "qkv_bias": True, "mlp_ratio": 4.0, "use_abs_pos": True,
            "use_rel_pos": True, "window_size": V["window"], "global_attn_indexes": V["global_idx"],
            "num_pos_feats": V["pos_feats"], "output_channels": V["out"], "mlp_dim": 4 * V["hidden"]},
        "prompt_encoder_config": {
            "model_type": "", "hidden_size": D["hidden"], "image_size": V["image"], "patch_size": V["patch"],
            "mask_input_channels": P["mask_channels"], "num_point_embeddings": 4, "hidden_act": "gelu",
            "layer_norm_eps": 1e-06, "image_embedding_size": grid},
        "mask_decoder_config": {
            "model_type": "", "hidden_size": D["hidden"], "hidden_act": "relu", "mlp_dim": D["mlp"],
            "num_hidden_layers": D["layers"], "num_attention_heads": D["heads"],
            "attention_downsample_rate": D["downsample"], "num_multimask_outputs": D["multimask"],
            "iou_head_depth": D["iou_depth"], "iou_head_hidden_dim": D["iou_hidden"],
            "layer_norm_eps": D["eps"]},
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    pre = {"image_processor_type": "SamImageProcessor", "processor_class": "SamProcessor",
           "do_resize": True, "size": {"longest_edge": V["image"]}, "resample": 2,
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "do_pad": True,
           "pad_size": {"height": V["image"], "width": V["image"]}, "do_convert_rgb": True}
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)
    return out


def hf_to_original(model_dir):
    """The SamModel weights as segment_anything's Sam state dict."""
    import torch
    hf = {k: torch.from_numpy(v.astype(np.float32)) for k, v in
          load_safetensors(os.path.join(model_dir, "model.safetensors")).items()}
    sd = {}

    def put(dst, src):
        sd[dst] = hf.pop(src)

    def pair(dst, src):
        put(dst + ".weight", src + ".weight")
        put(dst + ".bias", src + ".bias")

    put("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "shared_image_embedding.positional_embedding")
    e, ie = "vision_encoder.", "image_encoder."
    pair(ie + "patch_embed.proj", e + "patch_embed.projection")
    put(ie + "pos_embed", e + "pos_embed")
    for i in range(V["layers"]):
        p, q = f"{e}layers.{i}.", f"{ie}blocks.{i}."
        pair(q + "norm1", p + "layer_norm1")
        pair(q + "norm2", p + "layer_norm2")
        pair(q + "attn.qkv", p + "attn.qkv")
        pair(q + "attn.proj", p + "attn.proj")
        put(q + "attn.rel_pos_h", p + "attn.rel_pos_h")
        put(q + "attn.rel_pos_w", p + "attn.rel_pos_w")
        pair(q + "mlp.lin1", p + "mlp.lin1")
        pair(q + "mlp.lin2", p + "mlp.lin2")
    put(ie + "neck.0.weight", e + "neck.conv1.weight")
    pair(ie + "neck.1", e + "neck.layer_norm1")
    put(ie + "neck.2.weight", e + "neck.conv2.weight")
    pair(ie + "neck.3", e + "neck.layer_norm2")
    pe = "prompt_encoder."
    for i in range(4):
        put(f"{pe}point_embeddings.{i}.weight", f"{pe}point_embed.{i}.weight")
    put(pe + "not_a_point_embed.weight", pe + "not_a_point_embed.weight")
    put(pe + "no_mask_embed.weight", pe + "no_mask_embed.weight")
    for dst, src in (("0", "conv1"), ("1", "layer_norm1"), ("3", "conv2"), ("4", "layer_norm2"), ("6", "conv3")):
        pair(pe + "mask_downscaling." + dst, pe + "mask_embed." + src)
    d = "mask_decoder."
    put(d + "iou_token.weight", d + "iou_token.weight")
    put(d + "mask_tokens.weight", d + "mask_tokens.weight")
    for i in range(D["layers"]):
        p = f"{d}transformer.layers.{i}."
        for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                pair(f"{p}{a}.{n}", f"{p}{a}.{n}")
        for k in range(1, 5):
            pair(f"{p}norm{k}", f"{p}layer_norm{k}")
        pair(p + "mlp.lin1", p + "mlp.lin1")
        pair(p + "mlp.lin2", p + "mlp.lin2")
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
        pair(f"{d}transformer.final_attn_token_to_image.{n}", f"{d}transformer.final_attn_token_to_image.{n}")
    pair(d + "transformer.norm_final_attn", d + "transformer.layer_norm_final_attn")
    pair(d + "output_upscaling.0", d + "upscale_conv1")
    pair(d + "output_upscaling.1", d + "upscale_layer_norm")
    pair(d + "output_upscaling.3", d + "upscale_conv2")

    def ff(dst, src, depth):
        pair(dst + ".layers.0", src + ".proj_in")
        for j in range(depth - 2):
            pair(f"{dst}.layers.{j + 1}", f"{src}.layers.{j}")
        pair(f"{dst}.layers.{depth - 1}", src + ".proj_out")

    for i in range(D["multimask"] + 1):
        ff(f"{d}output_hypernetworks_mlps.{i}", f"{d}output_hypernetworks_mlps.{i}", 3)
    ff(d + "iou_prediction_head", d + "iou_prediction_head", D["iou_depth"])
    assert not hf, f"unconverted: {sorted(hf)}"
    return sd


def build_original(model_dir):
    """The repository's own Sam, constructed as its _build_sam does, at the tiny sizes."""
    import torch
    from per_segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    grid = V["image"] // V["patch"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=V["layers"], embed_dim=V["hidden"], img_size=V["image"], mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=V["heads"], patch_size=V["patch"],
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=V["global_idx"], window_size=V["window"],
            out_chans=V["out"]),
        prompt_encoder=PromptEncoder(
            embed_dim=D["hidden"], image_embedding_size=(grid, grid), input_image_size=(V["image"], V["image"]),
            mask_in_chans=P["mask_channels"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=D["multimask"],
            transformer=TwoWayTransformer(depth=D["layers"], embedding_dim=D["hidden"], mlp_dim=D["mlp"],
                                          num_heads=D["heads"], attention_downsample_rate=D["downsample"]),
            transformer_dim=D["hidden"], iou_head_depth=D["iou_depth"], iou_head_hidden_dim=D["iou_hidden"]),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    sam.load_state_dict(hf_to_original(model_dir))
    return sam


# ---- images -----------------------------------------------------------------------

def photo(h, w, box):
    """A crop (x0, y0, x1, y1 of the bundled 512-pixel photo) resized to (h, w)."""
    from PIL import Image
    from common import ROOT
    img = Image.open(os.path.join(ROOT, "tests", "data", "astronaut.jpg")).convert("RGB")
    return np.asarray(img.crop(box).resize((w, h), Image.BILINEAR))


def ellipse(h, w, cy, cx, ry, rx):
    ys, xs = np.mgrid[0:h, 0:w]
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1


def voc_palette():
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def save_mask(path, mask, style):
    """PerSeg's annotations are palette PNGs (index 1, VOC's (128, 0, 0));
    `white`: an RGB PNG, 255 on the object."""
    from PIL import Image
    if style == "palette":
        im = Image.fromarray(mask.astype(np.uint8), mode="P")
        im.putpalette(voc_palette())
    else:
        im = Image.fromarray(np.repeat(mask[:, :, None].astype(np.uint8) * 255, 3, axis=2))
    im.save(path)


# ---- running the official code ------------------------------------------------------------

def load_official(repo):
    import torch
    sys.modules.setdefault("timm", types.ModuleType("timm"))
    for name in ("timm.models", "timm.models.layers", "timm.models.registry"):
        sys.modules.setdefault(name, types.ModuleType(name))
    layers = sys.modules["timm.models.layers"]
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = torch.nn.Identity, lambda x: (x, x), lambda *a, **k: None
    sys.modules["timm.models.registry"].register_model = lambda fn: fn
    torch.nn.Module.cuda = lambda self, device=None: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.path.insert(0, repo)
    import per_segment_anything.predictor as pred
    import persam as persam_mod
    import persam_f as persam_f_mod
    return pred, persam_mod, persam_f_mod


class Recorder:
    """Wraps SamPredictor.predict and point_selection; every call and
    result in order, per test image."""

    def __init__(self, pred, mods):
        import torch
        self.calls, self.points = [], []
        orig = pred.SamPredictor.predict
        rec = self

        def predict(self_, *a, **k):
            out = orig(self_, *a, **k)
            rec.calls.append((dict(k), out))
            return out
        pred.SamPredictor.predict = predict
        for m in mods:
            orig_sel = m.point_selection

            def sel(mask_sim, topk=1, _orig=orig_sel):
                out = _orig(mask_sim, topk=topk)
                s = mask_sim.flatten()
                top2 = torch.topk(s, 2)[0]
                low2 = torch.topk(s, 2, largest=False)[0]
                rec.points.append({"out": out, "max_gap": float(top2[0] - top2[1]),
                                   "min_gap": float(low2[1] - low2[0])})
                return out
            m.point_selection = sel


def dataset(tmp, ref_img, ref_mask, targets, style):
    """Images/obj/00.jpg (reference), 01.jpg ...; Annotations/obj/00.png.
    Returns the images as the official code decodes them (cv2, RGB)."""
    import cv2
    idir, adir = os.path.join(tmp, "Images", "obj"), os.path.join(tmp, "Annotations", "obj")
    os.makedirs(idir)
    os.makedirs(adir)
    decoded = []
    for i, img in enumerate([ref_img] + targets):
        path = os.path.join(idir, "%02d.jpg" % i)
        cv2.imwrite(path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        decoded.append(cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB))
    save_mask(os.path.join(adir, "00.png"), ref_mask, style)
    return decoded, os.path.join(adir, "00.png")


def run_official(fn, tmp, extra):
    args = argparse.Namespace(data=tmp, outdir="out", ckpt="", ref_idx="00", sam_type="vit_h", **extra)
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        fn(args, "obj", tmp + "/Images/", tmp + "/Annotations/", "./outputs/" + args.outdir)
    finally:
        os.chdir(cwd)


def to_np(x):
    import torch
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def write_case(name, recipe, params, image, ref_png, mask_path, tensors, outputs, notes, repo, style):
    out = os.path.join(METHODS, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    from PIL import Image
    Image.fromarray(ref_png).save(os.path.join(out, "ref_image.png"))
    shutil.copy(mask_path, os.path.join(out, "ref_mask.png"))
    import torch
    import cv2
    method = {
        "recipe": recipe,
        # files of the fixture, found beside method.json (param_files)
        "params": dict(params, ref_image="ref_image.png", ref_mask="ref_mask.png"),
        "param_files": ["ref_image", "ref_mask"],
        "models": {"sam": "../models/" + MODEL},
        "outputs": outputs,
        "generator": {"script": "tests/tools/methods/persam.py",
                      "repos": {"ZrrSkywalker/Personalize-SAM": git_commit(repo)},
                      "torch": torch.__version__, "cv2": cv2.__version__},
        "notes": notes + (" ref_image.png: the reference as the official code decoded it (00.jpg), ref_mask.png: "
                          "its annotation (%s PNG); both paths from the repository root (the runner rebases "
                          "models, not params). Official code unmodified; around it: timm stubbed, .cuda() the "
                          "identity, sam_model_registry['vit_h'] the tiny model (models/%s, built with the "
                          "repository's own ImageEncoderViT / PromptEncoder / MaskDecoder)." % (style, MODEL)),
    }
    write_fixture(name, method, image, tensors)


def check_gaps(name, sel, negative=True):
    """The similarity's extreme against the runner-up: an exact tie is fine
    (torch.topk with k = 1 on the CPU returns the first of tied elements,
    checked on 800 random tie patterns; ours takes the first too), a gap
    below float32 noise is not (the point would be a coin toss)."""
    for key in ("max_gap",) + (("min_gap",) if negative else ()):
        g = sel[key]
        assert g == 0 or g > 1e-5, f"{name}: similarity {key} {g}: a near-tie, pick another image"
        if g == 0:
            print(f"{name}: exact tie at the similarity's {key[:3]} (the first element wins)")


def final_of(calls):
    """The last predict call's best mask and its logits (the official final_mask)."""
    k, (masks, scores, low, high) = calls[-1]
    best = int(np.argmax(scores))
    return masks[best], to_np(high[best]), best


def persam_cases(repo, persam_mod, rec, cases):
    for case in cases:
        tmp = tempfile.mkdtemp(prefix="persam-")
        imgs, mask_path = dataset(tmp, case["ref"], case["mask"], case["targets"], case["style"])
        rec.calls.clear()
        rec.points.clear()
        run_official(persam_mod.persam, tmp, {})
        # 3 predict calls and one point selection per image (00 = the reference itself, then the targets)
        assert len(rec.calls) == 3 * len(imgs) and len(rec.points) == len(imgs), (len(rec.calls), len(rec.points))
        for t, suffix in enumerate(case["names"]):
            i = t + 1
            calls = rec.calls[3 * i: 3 * i + 3]
            sel = rec.points[i]
            check_gaps(suffix, sel)
            pos, _, neg, _ = sel["out"]
            mask, logit, best = final_of(calls)
            k1, (m1, s1, low1, _) = calls[0]
            k3 = calls[2][0]
            tensors = {
                "labels": mask.astype(np.int32),
                "margin": np.abs(logit).astype(np.float32),
                "points": np.concatenate([pos, neg]).astype(np.int32),
                "box": np.asarray(k3["box"]).reshape(1, 4).astype(np.int32),
                "target_embedding": to_np(k1["target_embedding"]).reshape(-1).astype(np.float32),
                "attention_similarity": to_np(k1["attn_sim"]).reshape(64, 64).astype(np.float32),
                "step1_low_res": np.asarray(low1).astype(np.float32),
                "scores": np.asarray(calls[2][1][1]).astype(np.float32),
            }
            outputs = {"labels": {"compare": "labels", "margin": "margin"},
                       "points": {"compare": "exact"}, "box": {"compare": "exact"},
                       "target_embedding": {"compare": "float"}, "attention_similarity": {"compare": "float"},
                       "step1_low_res": {"compare": "float"}, "scores": {"compare": "float"}}
            notes = ("persam.py persam() over Images/obj/{00 reference, 01..}.jpg with Annotations/obj/00.png, "
                     "SAM = the tiny model (sam_model_registry patched), image %s = the target (decoded JPEG). "
                     "points: the positive then the negative point (x, y) from point_selection; "
                     "target_embedding: the mean reference feature passed to the first predict; "
                     "attention_similarity: its attn_sim (64 x 64); step1_low_res: that call's low-res logits; "
                     "box: the box of the last call; scores: its IoU predictions; labels: masks[best] of the "
                     "last call, margin: |its logits| (high_res_masks[best])." % ("%02d.jpg" % i))
            write_case("persam-" + suffix, "persam", {"output": "semantic"}, imgs[i], imgs[0], mask_path,
                       tensors, outputs, notes, repo, case["style"])
            print("persam-%s: best %d, %d object pixels, points %s, box %s" % (
                suffix, best, int(mask.sum()), tensors["points"].tolist(), tensors["box"].tolist()))
        shutil.rmtree(tmp)


def persam_f_cases(repo, persam_f_mod, rec, cases):
    import torch
    made = []
    orig_cls = persam_f_mod.Mask_Weights

    class Recorded(orig_cls):
        def __init__(self):
            super().__init__()
            made.append(self)
    persam_f_mod.Mask_Weights = Recorded
    for case in cases:
        tmp = tempfile.mkdtemp(prefix="persam_f-")
        imgs, mask_path = dataset(tmp, case["ref"], case["mask"], case["targets"], case["style"])
        rec.calls.clear()
        rec.points.clear()
        made.clear()
        extra = {"lr": 1e-3, "train_epoch": 1000, "log_epoch": 200}
        run_official(persam_f_mod.persam_f, tmp, extra)
        epochs = extra["train_epoch"]
        # training: one point selection and `epochs` predicts on the reference; then 3 per image
        assert len(rec.calls) == epochs + 3 * len(imgs) and len(rec.points) == 1 + len(imgs)
        w = made[0].weights.detach()
        weights = torch.cat((1 - w.sum(0).unsqueeze(0), w), dim=0).reshape(-1).numpy().astype(np.float32)
        for t, suffix in enumerate(case["names"]):
            i = t + 1
            calls = rec.calls[epochs + 3 * i: epochs + 3 * i + 3]
            sel = rec.points[1 + i]
            check_gaps(suffix, sel, negative=False)
            check_gaps(suffix + " (reference)", rec.points[0], negative=False)
            pos, _ = sel["out"]
            mask, logit, best = final_of(calls)
            tensors = {
                "labels": mask.astype(np.int32),
                "margin": np.abs(logit).astype(np.float32),
                "weights": weights,
                "ref_point": np.asarray(rec.points[0]["out"][0]).astype(np.int32),
                "points": np.asarray(pos).astype(np.int32),
                "box": np.asarray(calls[2][0]["box"]).reshape(1, 4).astype(np.int32),
                "scores": np.asarray(calls[2][1][1]).astype(np.float32),
            }
            outputs = {"labels": {"compare": "labels", "margin": "margin"}, "weights": {"compare": "float"},
                       "ref_point": {"compare": "exact"}, "points": {"compare": "exact"},
                       "box": {"compare": "exact"}, "scores": {"compare": "float"}}
            notes = ("persam_f.py persam_f() (lr 1e-3, 1000 epochs, its AdamW eps 1e-4 and cosine schedule) "
                     "over Images/obj/{00 reference, 01..}.jpg with Annotations/obj/00.png, image %s = the "
                     "target. weights: the three mask weights after fitting (1 - w1 - w2, w1, w2); ref_point: "
                     "the positive point on the reference the fitting prompts with; points: the target's "
                     "positive point; box, scores: the last call's box and IoU predictions; labels: masks[best] "
                     "of the last call, margin: |its logits|." % ("%02d.jpg" % i))
            write_case("persam_f-" + suffix, "persam_f", {"output": "semantic"}, imgs[i], imgs[0], mask_path,
                       tensors, outputs, notes, repo, case["style"])
            print("persam_f-%s: weights %s, best %d, %d object pixels, point %s" % (
                suffix, weights.tolist(), best, int(mask.sum()), tensors["points"].tolist()))
        shutil.rmtree(tmp)
    persam_f_mod.Mask_Weights = orig_cls


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=os.environ.get("PERSAM_DIR", "/work/ext/persam"),
                    help="a checkout (or archive with a COMMIT file) of ZrrSkywalker/Personalize-SAM")
    ap.add_argument("--only", choices=["persam", "persam_f"], help="one recipe's fixtures")
    args = ap.parse_args()
    import torch
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model_dir = make_sam()
    pred, persam_mod, persam_f_mod = load_official(args.repo)
    sam = build_original(model_dir)
    import per_segment_anything
    per_segment_anything.sam_model_registry["vit_h"] = lambda checkpoint=None: sam
    rec = Recorder(pred, [persam_mod, persam_f_mod])

    # the reference: a crop of the photo, the object an ellipse on it
    ref = photo(150, 200, (100, 40, 420, 280))
    ref_mask = ellipse(150, 200, 70, 95, 38, 52)
    # a reference larger than the input (its mask downsampled), a white RGB mask
    big = photo(300, 280, (0, 0, 480, 512))
    big_mask = ellipse(300, 280, 160, 150, 90, 70) | ellipse(300, 280, 60, 200, 30, 40)
    cases = [
        {"names": ["wide", "tall"], "ref": ref, "mask": ref_mask, "style": "palette",
         "targets": [photo(220, 300, (60, 20, 500, 340)), photo(240, 180, (150, 60, 390, 380))]},
        {"names": ["bigref"], "ref": big, "mask": big_mask, "style": "white",
         "targets": [photo(200, 200, (200, 100, 500, 400))]},
    ]
    if args.only in (None, "persam"):
        persam_cases(args.repo, persam_mod, rec, cases)
    fcases = [
        {"names": ["wide", "tall"], "ref": ref, "mask": ref_mask, "style": "white",
         "targets": [photo(220, 300, (60, 20, 500, 340)), photo(240, 180, (150, 60, 390, 380))]},
    ]
    if args.only in (None, "persam_f"):
        persam_f_cases(args.repo, persam_f_mod, rec, fcases)


if __name__ == "__main__":
    main()
