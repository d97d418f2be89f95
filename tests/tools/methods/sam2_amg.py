"""Fixtures for SAM 2's automatic mask generator (recipe sam_amg with a
SAM 2 model) and image predictor, against facebookresearch/sam2's own
SAM2AutomaticMaskGenerator and SAM2ImagePredictor, run unmodified.

    /usr/bin/python3 tests/tools/methods/sam2_amg.py --sam2 ../ext/sam2 \
        [--cocoapi ../ext/cocoapi/PythonAPI] [--cases grid crops ...] [--no-predictor] [--dry]

--sam2: a checkout of facebookresearch/sam2, or `git archive HEAD sam2`
extracted with a COMMIT file beside it (never copied here); --cocoapi:
cocodataset/cocoapi's PythonAPI with pycocotools built in place, for the
coco_rle case only (skipped without it, unless pycocotools is importable).
Debian's python3-torch (1.13, CPU), python3-torchvision (0.14), numpy and
scipy; no transformers, no hydra. Runs in about 20 seconds; deterministic.

Writes
  tests/fixtures/methods/models/sam2-amg-tiny   a random Sam2Model in the Hugging Face layout
      (config.json as transformers writes Sam2Config, model.safetensors under transformers'
      names), built and converted by make_sam2_fixtures.py's tiny_sam2 / hf_config /
      hf_weights: a 160 input, Hiera embed 8, 1 head, stages 1-2-3-1, q_pool 3, windows
      8-4-6-3 (6 pads the 10x10 grid, 3 the 5x5), global block 4, a 6x4 background position
      embedding, FPN width 64 (top-down levels 2, 3, scalp 1: levels 40x40, 20x20, 10x10);
      decoder 2 heads, mlp 96, 3 multimask outputs, IoU head 3 x 24, mask_in_chans 16;
      low-res masks 40x40.
  tests/fixtures/methods/sam_amg-sam2-<case>/   method.json (recipe sam_amg, every generator
      setting in params), image.png, ref.safetensors: the records as sam_amg.py's
      records_tensors writes them (README: sam_amg records).
  tests/fixtures/sam2-predictor/                cases.json, image.png, ref.safetensors:
      SAM2ImagePredictor.set_image + predict per case (cases.json lists the prompts, the
      constructor's max_hole_area / max_sprinkle_area and what each output holds).

Cases (CASES; SAM 2's defaults otherwise, every setting written to
method.json): grid (8x8 points, one batch of 64, binary_mask), crops
(crop_n_layers 1, crop_nms_thresh 0.5, uncompressed_rle), m2m (use_m2m,
batches of 20), holes (min_mask_region_area 24: the predictor's
max_hole_area = max_sprinkle_area on the 40x40 low-res logits; SAM 2's
generate runs no postprocess_small_regions), single (10x10 points, multimask_output
False: dynamic multimask by stability), coco (coco_rle, crop layer 1 with
points downscaled by 2, overlap 0.25, box_nms_thresh 0.6). The thresholds
(pred_iou_thresh, stability_score_thresh, mask_threshold) sit in gaps of
the tiny model's values, picked so that every margin below is wide.

The weights (tuned_weights, calibrate) are edited so that every step of the
generator acts on the test image: the first two-way block's image-to-token
attention compares positions (a kernel peaked at the prompt point), each mask
token's hypernetwork is fitted (least squares on calibration prompts over both
test images) so that its logits follow that attention at its own level (nested
masks of three sizes), predicted IoUs and object scores are spread by
calibrated last layers, and the upscaling repeats pixels so that the low-res
logits are constant over 4x4 cells plus a light texture from the
high-resolution features (which makes holes and sprinkles, and keeps few
logits near a threshold). method.json's notes give the masks removed by each
step, measured in a second, instrumented run (MaskData.filter, batched_nms,
_predict, postprocess_masks and the decoder's dynamic multimask choice wrapped:
the wrappers only look); the records come from a plain run and the two agree.

Margins (each method.json's notes; every decision is far from flipping under
float32 noise): record_logits, the smallest |logit - t| over the pixels of
the records' crop-size logits, t = mask_threshold and mask_threshold +-
stability_score_offset (binarisation and the stability score);
logit_noise, the largest |float32 - float64| of those logits in the
original itself (a float64 copy of the model run on the same inputs), and
record_logits_over_noise, the smallest ratio of the two per mask;
iou_vs_thresh (over every mask the filter sees), near_stability_logits (the
logit margin of masks within 1.5 pixels of stability_score_thresh),
nms_iou_vs_thresh (box IoU of every pair NMS compares), nms_score_gap (a kept
box against one it suppresses), record_iou_gap (the records' order),
dynamic_stability_logits (token 0's low-res logits against +-0.05 where its
stability is within 1.5 pixels of 0.98), record_lowres_logits (min_mask_region_area > 0:
the raw low-res logits against 0, what the connected components see).

What is not the original's own code, and why:
  - make_sam2_fixtures.py's import_sam2 (sam2/__init__.py's hydra set-up
    skipped, iopath stand-in, F.scaled_dot_product_attention supplied for
    torch 1.13 as softmax(q k^T / sqrt(d)) v) and tiny_sam2 (SAM2Base's
    _build_sam_heads at the tiny sizes, memory modules empty; the flags of
    sam2.1_hiera_t.yaml plus build_sam.py's dynamic-multimask overrides).
  - sam2._C.get_connected_componnets, the CUDA kernel behind
    sam2/utils/misc.py's get_connected_components: a CPU replacement
    (connected_components: scipy.ndimage.label with 8-connectivity, a 3x3
    structure, as the kernel's block-based labelling; labels per pixel and
    counts = the area of the pixel's component, 0 on background, int32
    (N, 1, H, W); H and W must be even, as the kernel asserts). Without it
    SAM2Transforms.postprocess_masks catches the ImportError, warns and
    skips hole filling and sprinkle removal altogether.
  - torchvision's Resize: SAM2Transforms builds Resize((160, 160)) without
    antialias; torchvision >= 0.17 (what sam2 requires, torch >= 2.5.1)
    antialiases float tensors by default, Debian's 0.14 does not: the
    Resize that sam2/utils/transforms.py imported is replaced by one whose
    antialias defaults to True before any SAM2Transforms is built. The
    transforms stay torch.jit.script-ed as the original builds them
    (scripting works with antialias=True on 0.14).
  - SAM2ImagePredictor._bb_feat_sizes is hard-coded for a 1024 input
    ((256, 256), (128, 128), (64, 64)): set to the tiny model's
    (40, 40), (20, 20), (10, 10) on every predictor (the generator's own
    included, right after construction).
  - Measurement only (never the fixtures' values): the wrappers of the
    instrumented run and the float64 copy of the model (twin_predictor,
    which also takes the input image and the prompt coordinates in float64
    where the original casts them to float32).
"""
import argparse
import json
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from common import METHODS, MODELS, ROOT, git_commit, randomize, save_safetensors, test_image, write_fixture  # noqa
from sam_amg import (RECORD_OUTPUTS, amg_image, count_filters, logit_margins, near_stability,  # noqa: E402
                     record_key, records_tensors, repos_for_case, step_counts)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_grad_enabled(False)

MODEL = dict(name="sam2-amg-tiny", seed=7, image_size=160, embed_dim=8, num_heads=1, stages=(1, 2, 3, 1), q_pool=3,
             window_spec=(8, 4, 6, 3), global_blocks=(4,), bkg=(6, 4), d_model=64, fpn_kernel=1, fpn_padding=0,
             top_down=(2, 3), scalp=1,
             decoder=dict(heads=2, mlp_dim=96, multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=24,
                          mask_in_chans=16))
# Weight edits (tuned_weights and calibrate say what each does).
# The first block's image-to-token attention compares positions: per head
# NF_FREQ = head_dim / 2 - 1 Fourier frequencies of magnitude FREQ (evenly
# spaced directions), scaled by ATTN_SCALE, against a constant score
# ATTN_SCALE^2 PRIOR for the output tokens; its values scaled by V_SCALE.
ATTN_SCALE, FREQ, PRIOR, V_SCALE = 4.0, 0.4, 3.5, 15.0
GAUSS_SCALE = 0.5          # the other Fourier frequencies: N(0, GAUSS_SCALE^2)
CONTENT_SCALE = 0.1        # image embedding (neck levels 2, 3 and no_mem_embed)
NO_MASK_SCALE = 0.1        # no_mask_embed
MASKIN_SCALE = 0.3         # the mask-input embedding's last conv (m2m, mask prompts)
LABEL_SCALE = 0.2          # point / box-corner label embeddings
Q_SCALE = 0.2              # the first block's norm3 (the tokens the image attends to)
L1_SCALE = 0.1             # the second block's image-to-token attention output
HIRES_SCALE = 0.01         # conv_s0 / conv_s1: the high-resolution features' share of the masks
# calibrate: mask token t's logits ~ LOGIT_SCALE (attention to the point - THRESH[t]),
# fitted with ridge RIDGE; the hypernetworks' own weights kept at HYPER_VAR
LOGIT_SCALE, THRESH, RIDGE, HYPER_VAR = 50.0, (0.3, 0.25, 0.3, 0.33), 0.01, 0.1
IOU_SPREAD, IOU_CENTRE = 1.5, 0.0      # predicted-IoU logits: spread and centre per token
IOU_SCALE = 4.0                        # (a power of 2: calibrate's rescaling makes it moot)
OBJ_NEGATIVE = 0.15                    # share of calibration prompts with object score <= 0


def connected_components(mask):
    """sam2/csrc/connected_components.cu's get_connected_componnets on the CPU."""
    from scipy import ndimage
    assert mask.dtype == torch.uint8 and mask.dim() == 4 and mask.shape[1] == 1
    assert mask.shape[2] % 2 == 0 and mask.shape[3] % 2 == 0, "height and width must be even (as the kernel asserts)"
    m = mask.numpy()
    labels = np.zeros(m.shape, dtype=np.int32)
    counts = np.zeros(m.shape, dtype=np.int32)
    for n in range(m.shape[0]):
        lab, _ = ndimage.label(m[n, 0], structure=np.ones((3, 3), dtype=np.int32))
        area = np.bincount(lab.ravel())
        area[0] = 0
        labels[n, 0] = lab
        counts[n, 0] = area[lab]
    return [torch.from_numpy(labels), torch.from_numpy(counts)]


def original_modules(sam2_path):
    import make_sam2_fixtures as msf
    mods = msf.import_sam2(sam2_path)
    pkg = sys.modules["sam2"]
    c = types.ModuleType("sam2._C")
    c.get_connected_componnets = connected_components
    sys.modules["sam2._C"] = c
    pkg._C = c
    import torchvision.transforms
    import sam2.utils.transforms as tr
    plain = torchvision.transforms.Resize

    class Resize(plain):
        def __init__(self, size, interpolation=torchvision.transforms.InterpolationMode.BILINEAR, max_size=None,
                     antialias=True):
            super().__init__(size, interpolation, max_size, antialias)
    tr.Resize = Resize
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    mods.SAM2AutomaticMaskGenerator = SAM2AutomaticMaskGenerator
    mods.msf = msf
    return mods


def build_model(mods):
    msf, case = mods.msf, MODEL
    enc = msf.image_encoder(mods, case)
    model = msf.tiny_sam2(mods, case, enc)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    w = tuned_weights(shapes)
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in w.items()}, strict=True)
    calibrate(mods, model, w)
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in w.items()}, strict=True)
    model.trunk_for_config = enc.trunk
    return model, w


def calibrate(mods, model, w):
    """The heads' last layers, from the model's own activations on 5x5
    one-point prompts over both test images (AMG and predictor): mask token
    t's hyper vector h_t fitted (ridge regression) so that h_t . E(x) =
    LOGIT_SCALE (a(x) - THRESH[t]), E the upscaled embedding, a(x) the first
    block's attention of pixel x's cell to the point token (mean over
    heads), the hypernetwork's own weights scaled by HYPER_VAR so that masks
    still vary with the prompt beyond that; the IoU head's logits spread by
    IOU_SPREAD around IOU_CENTRE per token; the object score's bias so that
    a share OBJ_NEGATIVE of the prompts score <= 0 (the predictor ignores
    the object score). Edits W in place."""
    import math
    dec = model.sam_mask_decoder
    att = dec.transformer.layers[0].cross_attn_image_to_token
    seen = {}
    plain = att.forward

    def forward(q, k, v):
        q1 = att._separate_heads(att.q_proj(q), att.num_heads)
        k1 = att._separate_heads(att.k_proj(k), att.num_heads)
        seen["a"] = (q1 @ k1.transpose(-1, -2) / math.sqrt(q1.shape[-1])).softmax(-1)
        return plain(q, k, v)
    att.forward = forward
    hooks = [dec.output_upscaling[4].register_forward_hook(lambda m, i, o: seen.update(e=o))]
    for t, mlp in enumerate(dec.output_hypernetworks_mlps):
        hooks.append(mlp.layers[2].register_forward_hook(lambda m, i, o, t=t: seen.update({("r", t): i[0]})))
    for name in ("iou_prediction_head", "pred_obj_score_head"):
        hooks.append(getattr(dec, name).layers[-1].register_forward_hook(
            lambda m, i, o, name=name: seen.update({name: i[0]})))
    pred = mods.SAM2ImagePredictor(model)
    pred._bb_feat_sizes = feat_sizes()
    es, As, rs = [], [], {t: [] for t in range(len(dec.output_hypernetworks_mlps))}
    heads = {"iou_prediction_head": [], "pred_obj_score_head": []}
    pidx = (1 if dec.pred_obj_scores else 0) + 1 + dec.num_mask_tokens   # obj, iou, mask tokens, then the point
    g = np.linspace(0.1, 0.9, 5)
    for image in (amg_image(*AMG_SIZE), test_image(*PREDICTOR_SIZE)):
        h, wd = image.shape[:2]
        pred.set_image(image)
        for pt in np.stack(np.meshgrid(g * wd, g * h), -1).reshape(-1, 2):
            pred.predict(pt[None], np.array([1]), multimask_output=True, return_logits=True)
            e = seen["e"][0]                              # (C, 4h, 4w)
            a = seen["a"][0, :, :, pidx].mean(0)          # (h*w,)
            s = int(round(math.sqrt(a.numel())))
            a = F.interpolate(a.reshape(1, 1, s, s), size=e.shape[-2:], mode="nearest")[0, 0]
            es.append(e.flatten(1).T.numpy())
            As.append(a.flatten().numpy())
            for t in rs:
                rs[t].append(seen[("r", t)][0].numpy())
            for name in heads:
                heads[name].append(seen[name][0].numpy())
    att.forward = plain
    for hk in hooks:
        hk.remove()
    E, A = np.concatenate(es).astype(np.float64), np.concatenate(As).astype(np.float64)
    for t in rs:
        target = LOGIT_SCALE * (A - THRESH[t])
        gram = E.T @ E
        ht = np.linalg.solve(gram + RIDGE * np.trace(gram) / len(gram) * np.eye(len(gram)), E.T @ target)
        name = f"sam_mask_decoder.output_hypernetworks_mlps.{t}.layers.2."
        W = w[name + "weight"].astype(np.float32) * HYPER_VAR
        r = np.mean(rs[t], 0)
        w[name + "weight"] = W.astype(np.float16)
        w[name + "bias"] = (ht - W @ r).astype(np.float16)
    # predicted IoUs: per token, logits of spread IOU_SPREAD around IOU_CENTRE over the calibration prompts
    name = "sam_mask_decoder.iou_prediction_head.layers.2."
    W = w[name + "weight"].astype(np.float32)
    z = np.stack(heads["iou_prediction_head"]) @ W.T          # (prompts, tokens)
    scale = IOU_SPREAD / z.std(0)
    w[name + "weight"] = (W * scale[:, None]).astype(np.float16)
    w[name + "bias"] = (IOU_CENTRE - z.mean(0) * scale).astype(np.float16)
    # object scores: positive for all but OBJ_NEGATIVE of the calibration prompts
    name = "sam_mask_decoder.pred_obj_score_head.layers.2."
    W = w[name + "weight"].astype(np.float32)
    z = (np.stack(heads["pred_obj_score_head"]) @ W.T)[:, 0]
    w[name + "bias"] = np.array([-np.quantile(z, OBJ_NEGATIVE)], dtype=np.float16)


def tuned_weights(shapes):
    """randomize's weights for SAM2Base's state dict, edited so that masks
    sit around their prompt point (a random decoder spreads every mask
    over the image, and box NMS then keeps one)."""
    w = randomize(shapes, MODEL["seed"])
    rng = np.random.default_rng(MODEL["seed"] + 1000)
    f32 = lambda k: w[k].astype(np.float32)
    for k in ("image_encoder.trunk.pos_embed", "image_encoder.trunk.pos_embed_window", "no_mem_embed"):
        w[k] = (0.5 * rng.standard_normal(shapes[k])).astype(np.float16)
    pe, md = "sam_prompt_encoder.", "sam_mask_decoder."
    # LayerNorm2d weights are not named "norm" (randomize would make them 0.2 N): 1 + 0.2 N
    for k in (md + "output_upscaling.1.weight", pe + "mask_downscaling.1.weight", pe + "mask_downscaling.4.weight"):
        w[k] = (1 + 0.2 * rng.standard_normal(shapes[k])).astype(np.float16)
    # as SAM initialises them: Fourier frequencies N(0, 1) (here GAUSS_SCALE), embeddings and
    # output tokens N(0, 1), the label embeddings smaller
    w[pe + "pe_layer.positional_encoding_gaussian_matrix"] = (GAUSS_SCALE * rng.standard_normal(
        shapes[pe + "pe_layer.positional_encoding_gaussian_matrix"])).astype(np.float16)
    for k in list(w):
        if (k.startswith(pe) and k.endswith("embed.weight")) \
                or k.endswith("_token.weight") or k.endswith("mask_tokens.weight"):
            w[k] = rng.standard_normal(shapes[k]).astype(np.float16)
        if k.startswith(pe + "point_embeddings."):
            w[k] = (LABEL_SCALE * rng.standard_normal(shapes[k])).astype(np.float16)
    # the tokens the first image-to-token attention looks at: small, so that position decides it
    for n in ("weight", "bias"):
        k = md + "transformer.layers.0.norm3." + n
        w[k] = (f32(k) * Q_SCALE).astype(np.float16)
    for k in range(MODEL["decoder"]["multimask_outputs"] + 1):
        for n in ("weight", "bias"):
            name = f"{md}output_hypernetworks_mlps.{k}.layers.2.{n}"
            w[name] = (f32(name) * LOGIT_SCALE).astype(np.float16)
    # the first block's image-to-token attention compares positions: head h's query and key
    # projections pick the sine and cosine of NF frequencies (set to FREQ in evenly spaced
    # directions), so that pixel x scores the point token by ATTN^2 sum_j cos(theta_j(x) -
    # theta_j(p)), peaked at the point p; a spare query dimension (bias 1) meets the key of PE
    # channel zero_f, a zero frequency (sin 0 = 0 for every position), which the output tokens'
    # embeddings set to ATTN * PRIOR: a constant score that the point must beat. The point
    # labels and output tokens are zero in the picked channels.
    att = md + "transformer.layers.0.cross_attn_image_to_token."
    inner, hid = shapes[att + "q_proj.weight"]
    heads, half = MODEL["decoder"]["heads"], hid // 2
    hd = inner // heads
    nf = (hd - 2) // 2               # frequencies per head; two spare dims per head
    zero_f = half - 1                # a zero frequency: PE channel zero_f is sin(0) = 0 everywhere
    g = pe + "pe_layer.positional_encoding_gaussian_matrix"
    gm = w[g].astype(np.float32)
    gm[:, zero_f] = 0
    for hh in range(heads):          # the kernel's frequencies: FREQ in nf directions per head, evenly spaced
        for i in range(nf):
            a = np.pi * (i + hh / heads) / nf
            gm[:, nf * hh + i] = FREQ * np.cos(a), FREQ * np.sin(a)
    w[g] = gm.astype(np.float16)
    qw = np.zeros((inner, hid), dtype=np.float32)
    qb = np.zeros(inner, dtype=np.float32)
    kw = np.zeros((inner, hid), dtype=np.float32)
    for hh in range(heads):
        for i in range(nf):
            f = nf * hh + i
            for m in (qw, kw):
                m[hd * hh + i, f] = ATTN_SCALE
                m[hd * hh + nf + i, half + f] = ATTN_SCALE
        qb[hd * hh + 2 * nf] = 1.0
        kw[hd * hh + 2 * nf, zero_f] = ATTN_SCALE
    picked = np.nonzero(qw.any(0))[0]
    for k in (md + "mask_tokens.weight", md + "iou_token.weight", md + "obj_score_token.weight",
              pe + "not_a_point_embed.weight"):
        v = w[k].astype(np.float32)
        v[:, picked] = 0
        v[:, zero_f] = ATTN_SCALE * PRIOR
        w[k] = v.astype(np.float16)
    for i in range(4):
        k = f"{pe}point_embeddings.{i}.weight"
        v = w[k].astype(np.float32)
        v[:, picked] = 0
        v[:, zero_f] = 0
        w[k] = v.astype(np.float16)
    w[att + "q_proj.weight"], w[att + "q_proj.bias"] = qw.astype(np.float16), qb.astype(np.float16)
    w[att + "k_proj.weight"], w[att + "k_proj.bias"] = kw.astype(np.float16), np.zeros(inner, np.float16)
    w[att + "v_proj.weight"] = (f32(att + "v_proj.weight") * V_SCALE).astype(np.float16)
    # the image embedding small against position; the high-resolution features a light texture
    for k in ("image_encoder.neck.convs.0.conv.weight", "image_encoder.neck.convs.0.conv.bias",
              "image_encoder.neck.convs.1.conv.weight", "image_encoder.neck.convs.1.conv.bias", "no_mem_embed"):
        w[k] = (f32(k) * CONTENT_SCALE).astype(np.float16)
    for k in (md + "conv_s0.weight", md + "conv_s0.bias", md + "conv_s1.weight", md + "conv_s1.bias"):
        w[k] = (f32(k) * HIRES_SCALE).astype(np.float16)
    # upscaling convolutions that repeat each pixel 2x2 (one kernel tap for all four): the low-res
    # logits are then constant over the 4x4 cells of each embedding pixel (plus the texture),
    # which keeps few of them near a threshold
    for n in ("output_upscaling.0", "output_upscaling.3"):
        k = f32(f"{md}{n}.weight")
        w[f"{md}{n}.weight"] = np.broadcast_to(k[:, :, :1, :1] * 2, k.shape).astype(np.float16)
    # mask prompts (m2m) change the masks without swamping the position signal; the second
    # block's image-to-token update small, so that it keeps the first's
    for n in ("weight", "bias"):
        k = pe + "mask_downscaling.6." + n
        w[k] = (f32(k) * MASKIN_SCALE).astype(np.float16)
    k = pe + "no_mask_embed.weight"
    w[k] = (f32(k) * NO_MASK_SCALE).astype(np.float16)
    for n in ("weight", "bias"):
        k = md + "transformer.layers.1.cross_attn_image_to_token.out_proj." + n
        w[k] = (f32(k) * L1_SCALE).astype(np.float16)
    name = md + "iou_prediction_head.layers.2."
    w[name + "weight"] = (f32(name + "weight") * IOU_SCALE).astype(np.float16)
    w[name + "bias"] = np.full(shapes[name + "bias"], IOU_CENTRE, dtype=np.float16)
    return w


def feat_sizes():
    s = MODEL["image_size"] // 4
    return [(s, s), (s // 2, s // 2), (s // 4, s // 4)]


def make_generator(mods, model, params):
    gen = mods.SAM2AutomaticMaskGenerator(model, **params)
    gen.predictor._bb_feat_sizes = feat_sizes()
    return gen


def twin_predictor(mods, model, **kwargs):
    """A float64 copy of the model behind a SAM2ImagePredictor, to measure
    the reference's own float32 error (never used for the fixtures'
    values): the input image and the prompt encoder's coordinates, which
    the original casts to float32, are taken in float64."""
    import copy
    m64 = copy.deepcopy(model).double()
    pel = m64.sam_prompt_encoder.pe_layer
    plain_pe, plain_image = pel._pe_encoding, m64.forward_image
    pel._pe_encoding = lambda c: plain_pe(c.double())

    def with_coords(coords_input, image_size):
        coords = coords_input.clone().double()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return pel._pe_encoding(coords)
    pel.forward_with_coords = with_coords
    m64.forward_image = lambda x: plain_image(x.double())
    pred = mods.SAM2ImagePredictor(m64, **kwargs)
    pred._bb_feat_sizes = feat_sizes()
    return pred


BASE = dict(points_per_side=8, points_per_batch=64, pred_iou_thresh=0.0, stability_score_thresh=0.0,
            stability_score_offset=1.0, mask_threshold=0.0, box_nms_thresh=0.7, crop_n_layers=0,
            crop_nms_thresh=0.7, crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=1,
            min_mask_region_area=0, output_mode="binary_mask", use_m2m=False, multimask_output=True)


# ---- running the generator, counting what each step does -------------------------

# sam_amg.py's AMG_STEPS but small_region_nms (SAM 2's generate runs no postprocess_small_regions)
STEPS = ["pred_iou_thresh", "stability_score_thresh", "near_crop_edge", "box_nms", "crop_nms"]


def run_amg(mods, model, params, image):
    return make_generator(mods, model, params).generate(image)


def nms_margin(boxes, scores, thresh, keep):
    """(the smallest |box IoU - thresh| over the pairs NMS compares, the
    smallest score gap between a kept box and one it suppresses: their
    order decides which is kept; equal scores (crop NMS's 1 / crop area)
    are left to the stable sort)."""
    from torchvision.ops import box_iou
    if len(boxes) < 2:
        return float("inf"), float("inf")
    iou = box_iou(boxes.double(), boxes.double())
    iu = torch.triu_indices(len(boxes), len(boxes), 1)
    margin = float((iou[iu[0], iu[1]] - thresh).abs().min())
    kept = torch.zeros(len(boxes), dtype=torch.bool)
    kept[keep] = True
    pair = (iou > thresh) & kept[:, None] & ~kept[None, :]
    gap = (scores.double()[:, None] - scores.double()[None, :]).abs()[pair]
    gap = gap[gap > 0]
    return margin, float(gap.min()) if len(gap) else float("inf")


def instrumented(mods, model, params, image):
    """A second run with the generator's steps wrapped (the original code
    runs as in the plain run; the wrappers only look): masks removed by
    each MaskData.filter, what hole filling, dynamic multimask and m2m
    changed, and the margins of every thresholded decision against
    float32 noise, per mask keyed by (crop box, point, predicted IoU) as
    the records give them. Returns (records, info)."""
    import sam2.automatic_mask_generator as amg_mod
    from sam2.utils.amg import MaskData
    gen = make_generator(mods, model, params)
    pred, dec = gen.predictor, model.sam_mask_decoder
    thr, offset = params["mask_threshold"], params["stability_score_offset"]
    st = dict(crop=None, points=None, nmask=None, offset=0, first=[], call={})
    masks_info = {}                      # key -> per-mask facts of the masks the filters saw
    info = dict(predictions=0, obj_nonpositive=0, obj_total=0, hole_lowres=0, hole_px=0, sprinkle_px=0,
                hole_binary=0, dyn_calls=0, dyn_fallback=0, dyn_margin=float("inf"), nms_margin=float("inf"),
                nms_score_gap=float("inf"), iou_noise=0.0, m2m_changed=0, m2m_iou_delta=[], thresholded_iou=[],
                stab_pairs=[], near_stab=[], lowres_margin_all=float("inf"))
    plain_nms = amg_mod.batched_nms

    def nms(boxes, scores, idxs, iou_threshold):
        keep = plain_nms(boxes, scores, idxs, iou_threshold)
        a, b = nms_margin(boxes, scores, iou_threshold, keep)
        info["nms_margin"], info["nms_score_gap"] = min(info["nms_margin"], a), min(info["nms_score_gap"], b)
        return keep

    twin = twin_predictor(mods, model, max_hole_area=params["min_mask_region_area"],
                          max_sprinkle_area=params["min_mask_region_area"])
    plain_crop, plain_batch, plain_predict = gen._process_crop, gen._process_batch, pred._predict
    plain_post = pred._transforms.postprocess_masks
    plain_dyn = dec._dynamic_multimask_via_stability
    hook = dec.register_forward_hook(lambda m, i, o: st["call"].update(obj=o[3]))

    def process_crop(img, crop_box, layer, orig_size):
        st["crop"] = tuple(int(v) for v in crop_box)
        x0, y0, x1, y1 = crop_box
        twin.set_image(img[y0:y1, x0:x1, :])
        return plain_crop(img, crop_box, layer, orig_size)

    def process_batch(points, im_size, crop_box, orig_size, normalize=False):
        st["points"] = torch.as_tensor(points, dtype=torch.float32)
        st["offset"], st["first"] = 0, []
        return plain_batch(points, im_size, crop_box, orig_size, normalize=normalize)

    def post(masks, orig_hw):
        out = plain_post(masks, orig_hw)
        ref = F.interpolate(masks.float(), orig_hw, mode="bilinear", align_corners=False)
        lr = masks.float().flatten(0, 1).unsqueeze(1)
        c = st["call"]
        c["lowres_margin"] = (lr - pred._transforms.mask_threshold).abs().flatten(1).min(1)[0].reshape(
            masks.shape[:2])
        if pred._transforms.max_hole_area > 0 or pred._transforms.max_sprinkle_area > 0:
            t = pred._transforms
            _, area_bg = connected_components((lr <= t.mask_threshold).to(torch.uint8))
            _, area_fg = connected_components((lr > t.mask_threshold).to(torch.uint8))
            holes = ((area_bg > 0) & (area_bg <= t.max_hole_area)).flatten(1).sum(1) if t.max_hole_area > 0 \
                else torch.zeros(lr.shape[0], dtype=torch.long)
            spr = ((area_fg > 0) & (area_fg <= t.max_sprinkle_area)).flatten(1).sum(1) if t.max_sprinkle_area > 0 \
                else torch.zeros(lr.shape[0], dtype=torch.long)
            c["holes"], c["sprinkles"] = holes.reshape(masks.shape[:2]), spr.reshape(masks.shape[:2])
            c["binary_changed"] = ((out > thr) != (ref > thr)).flatten(2).any(-1)
        return out

    def dyn(all_mask_logits, all_iou_scores):
        out = plain_dyn(all_mask_logits, all_iou_scores)
        s = dec._get_stability_scores(all_mask_logits[:, 0:1])[:, 0]
        stable = s >= dec.dynamic_multimask_stability_thresh
        info["dyn_calls"] += len(s)
        info["dyn_fallback"] += int((~stable).sum())
        d = dec.dynamic_multimask_stability_delta
        flat = all_mask_logits[:, 0].flatten(1)
        area_u = (flat > -d).sum(1).float().clamp(min=1)
        near = (s - dec.dynamic_multimask_stability_thresh).abs() <= 1.5 / area_u
        if near.any():
            m = torch.minimum((flat - d).abs(), (flat + d).abs()).min(1)[0]
            info["dyn_margin"] = min(info["dyn_margin"], float(m[near].min()))
        return out

    def predict(point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True,
                return_logits=False, img_idx=-1):
        st["call"] = {}
        masks, iou, low = plain_predict(point_coords, point_labels, boxes, mask_input, multimask_output,
                                        return_logits, img_idx)
        c = st["call"]
        m64, i64, _ = twin._predict(point_coords.double(), point_labels, None if boxes is None else boxes.double(),
                                    None if mask_input is None else mask_input.double(), multimask_output,
                                    return_logits, img_idx)
        noise = (masks.double() - m64).abs().flatten(2).max(-1)[0]
        info["iou_noise"] = max(info["iou_noise"], float((iou.double() - i64).abs().max()))
        info["predictions"] += masks.shape[0] * masks.shape[1]
        obj = c["obj"].reshape(-1)
        info["obj_total"] += obj.numel()
        info["obj_nonpositive"] += int((obj <= 0).sum())
        info["lowres_margin_all"] = min(info["lowres_margin_all"], float(c["lowres_margin"].min()))
        refine = mask_input is not None
        thresholded = refine or not params["use_m2m"]
        margin, hi, lo = logit_margins(masks, thr, offset)
        x0, y0 = st["crop"][:2]
        if not refine:
            st["nmask"] = masks.shape[1]
        for b in range(masks.shape[0]):
            for j in range(masks.shape[1]):
                if refine:
                    i = st["offset"] + b
                    p = st["points"][i // st["nmask"]]
                else:
                    p = st["points"][b]
                key = (st["crop"], float(p[0] + x0), float(p[1] + y0), float(iou[b, j]))
                f = dict(margin=float(margin[b, j]), lowres=float(c["lowres_margin"][b, j]),
                         noise=float(noise[b, j]), ratio=float(margin[b, j]) / max(float(noise[b, j]), 1e-12))
                if "holes" in c:
                    f.update(holes=int(c["holes"][b, j]), sprinkles=int(c["sprinkles"][b, j]),
                             binary_changed=bool(c["binary_changed"][b, j]))
                    info["hole_lowres"] += int(c["holes"][b, j] > 0 or c["sprinkles"][b, j] > 0)
                    info["hole_px"] += int(c["holes"][b, j])
                    info["sprinkle_px"] += int(c["sprinkles"][b, j])
                    info["hole_binary"] += int(c["binary_changed"][b, j])
                if refine:
                    first = st["first"][i]
                    changed = bool(((masks[b, j] > thr) != first[0]).any())
                    f["m2m_changed"] = changed
                    info["m2m_changed"] += int(changed)
                    info["m2m_iou_delta"].append(abs(float(iou[b, j]) - first[1]))
                elif params["use_m2m"]:
                    st["first"].append((masks[b, j] > thr, float(iou[b, j])))
                if thresholded:
                    info["thresholded_iou"].append(float(iou[b, j]))
                    info["stab_pairs"].append((float(iou[b, j]), int(hi[b, j]), int(lo[b, j])))
                    if near_stability(hi[b, j], lo[b, j], params["stability_score_thresh"]):
                        info["near_stab"].append(min(f["margin"], f["lowres"]))
                    masks_info[key] = f
        if refine:
            st["offset"] += masks.shape[0]
        return masks, iou, low

    removed, restore_filter = count_filters(MaskData)
    amg_mod.batched_nms = nms
    gen._process_crop, gen._process_batch, pred._predict = process_crop, process_batch, predict
    pred._transforms.postprocess_masks = post
    dec._dynamic_multimask_via_stability = dyn
    try:
        records = gen.generate(image)
    finally:
        restore_filter()
        amg_mod.batched_nms = plain_nms
        del dec._dynamic_multimask_via_stability
        hook.remove()
    info["removed"], info["records"] = removed, [masks_info[record_key(r)] for r in records]
    return records, info


def summarize(params, info, n_records, generated):
    """(counts text, margins text, margins dict)."""
    counts = step_counts(info["removed"], None, generated, n_records, STEPS)
    rec = info["records"]
    extra = []
    if params["use_m2m"]:
        d = info["m2m_iou_delta"]
        extra.append(f"m2m refinement changed the binary mask of {info['m2m_changed']} of {len(d)} masks and their "
                     f"predicted IoUs by {np.mean(d):.3f} on average (max {np.max(d):.3f}); "
                     f"{sum(r.get('m2m_changed', False) for r in rec)} of the {len(rec)} records' masks changed")
    if info["dyn_calls"]:
        extra.append(f"dynamic multimask (single-mask predictions): token 0's stability below 0.98 for "
                     f"{info['dyn_fallback']} of {info['dyn_calls']}, which take the best multimask output")
    if params["min_mask_region_area"] > 0:
        extra.append(f"max_hole_area = max_sprinkle_area = {params['min_mask_region_area']} on the low-res logits: "
                     f"holes filled / sprinkles removed in {info['hole_lowres']} of {info['predictions']} "
                     f"predictions ({info['hole_px']} hole and {info['sprinkle_px']} sprinkle low-res pixels), "
                     f"changing the binary crop-size mask of {info['hole_binary']}; "
                     f"{sum(r.get('binary_changed', False) for r in rec)} of the {len(rec)} records' masks")
    extra.append(f"object score <= 0 for {info['obj_nonpositive']} of {info['obj_total']} prompts "
                 f"(SAM2ImagePredictor._predict ignores the object score)")
    margins = {
        "record_logits": min([r["margin"] for r in rec], default=float("inf")),
        "record_logits_over_noise": min([r["ratio"] for r in rec], default=float("inf")),
        "logit_noise": max([r["noise"] for r in rec], default=0.0),
        "record_lowres_logits": min([r["lowres"] for r in rec], default=float("inf")),
        "iou_vs_thresh": (min([abs(v - params["pred_iou_thresh"]) for v in info["thresholded_iou"]],
                              default=float("inf")) if params["pred_iou_thresh"] > 0 else float("inf")),
        "near_stability_logits": min(info["near_stab"], default=float("inf")),
        "nms_iou_vs_thresh": info["nms_margin"],
        "nms_score_gap": info["nms_score_gap"],
    }
    if params["min_mask_region_area"] <= 0:
        del margins["record_lowres_logits"]
    if info["dyn_calls"]:
        margins["dynamic_stability_logits"] = info["dyn_margin"]
    return counts, "; ".join(extra), margins


# ---- cases ---------------------------------------------------------------------------

AMG_SIZE = (150, 200)       # (h, w): the full image is resized 200 -> 160 across (antialiased), 150 -> 160 down
CASES = {
    "grid": dict(output_mode="binary_mask", settings=dict(
        pred_iou_thresh=0.5058, stability_score_thresh=0.8483, mask_threshold=0.25)),
    "crops": dict(output_mode="uncompressed_rle", settings=dict(
        pred_iou_thresh=0.5, stability_score_thresh=0.8103, mask_threshold=0.51, points_per_batch=32,
        crop_n_layers=1, crop_nms_thresh=0.5)),
    "m2m": dict(output_mode="uncompressed_rle", settings=dict(
        pred_iou_thresh=0.6882, stability_score_thresh=0.7839, mask_threshold=-0.42, points_per_batch=20,
        use_m2m=True)),
    "holes": dict(output_mode="binary_mask", settings=dict(
        pred_iou_thresh=0.5058, stability_score_thresh=0.8544, mask_threshold=-0.42, points_per_batch=48,
        min_mask_region_area=24)),
    "single": dict(output_mode="uncompressed_rle", settings=dict(
        pred_iou_thresh=0.5033, stability_score_thresh=0.8101, mask_threshold=0.0, points_per_side=10,
        multimask_output=False)),
    "coco": dict(output_mode="coco_rle", settings=dict(
        pred_iou_thresh=0.4863, stability_score_thresh=0.8043, mask_threshold=0.24, crop_n_layers=1,
        crop_n_points_downscale_factor=2, crop_overlap_ratio=0.25, box_nms_thresh=0.6)),
}


def amg_case(mods, model, name, spec):
    from sam2.utils.amg import build_all_layer_point_grids, generate_crop_boxes
    h, w = AMG_SIZE
    image = amg_image(h, w)
    params = dict(BASE, **spec["settings"], output_mode=spec["output_mode"])
    records = run_amg(mods, model, params, image)
    again, info = instrumented(mods, model, params, image)
    assert [(r["area"], r["predicted_iou"]) for r in again] == [(r["area"], r["predicted_iou"]) for r in records]
    grids = build_all_layer_point_grids(params["points_per_side"], params["crop_n_layers"],
                                        params["crop_n_points_downscale_factor"])
    _, layer_idx = generate_crop_boxes((h, w), params["crop_n_layers"], params["crop_overlap_ratio"])
    per_point = MODEL["decoder"]["multimask_outputs"] if params["multimask_output"] else 1
    generated = sum(per_point * len(grids[i]) for i in layer_idx)
    counts, extra, margins = summarize(params, info, len(records), generated)
    order = sorted(r["predicted_iou"] for r in records)
    margins["record_iou_gap"] = min([b - a for a, b in zip(order, order[1:])], default=float("inf"))
    return image, params, records, counts, extra, margins


def write_model(mods, model, w):
    """models/sam2-amg-tiny: config.json as transformers writes Sam2Config,
    model.safetensors under transformers' names (F32, every value
    float16-representable), as make_sam2_fixtures.py writes its models."""
    out = os.path.join(MODELS, MODEL["name"])
    os.makedirs(out, exist_ok=True)
    save_safetensors(os.path.join(out, "model.safetensors"),
                     {k: v.astype(np.float32) for k, v in mods.msf.hf_weights(w).items()})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(mods.msf.hf_config(MODEL, model.trunk_for_config), f, indent=2, sort_keys=True)
        f.write("\n")
    return out


# ---- SAM2ImagePredictor on one image ----------------------------------------------------

PREDICTOR_SIZE = (112, 208)     # (h, w): 208 -> 160 across (antialiased), 112 -> 160 down
# (name, prompts, multimask_output, max_hole_area, max_sprinkle_area); points in pixels of the image
PREDICTOR_CASES = [
    ("point_multi", dict(point_coords=[[120.0, 60.0]], point_labels=[1]), True, 0, 0),
    ("point_single", dict(point_coords=[[120.0, 60.0]], point_labels=[1]), False, 0, 0),
    ("point_single_b", dict(point_coords=[[40.5, 30.0]], point_labels=[1]), False, 0, 0),
    ("points", dict(point_coords=[[60.0, 51.0], [150.0, 79.0], [100.0, 70.0]], point_labels=[1, 1, 0]), False, 0, 0),
    ("box", dict(box=[30.0, 20.0, 140.0, 95.0]), False, 0, 0),
    ("box_points", dict(box=[30.0, 20.0, 140.0, 95.0], point_coords=[[79.0, 60.0], [35.0, 91.0]],
                        point_labels=[1, 0]), True, 0, 0),
    ("mask", dict(point_coords=[[120.0, 60.0]], point_labels=[1], mask_input="point_multi.best_low_res"),
     False, 0, 0),
    ("holes_point", dict(point_coords=[[120.0, 60.0]], point_labels=[1]), True, 6, 6),
    ("holes_box_points", dict(box=[30.0, 20.0, 140.0, 95.0], point_coords=[[79.0, 60.0], [35.0, 91.0]],
                              point_labels=[1, 0]), True, 20, 4),
    ("holes_only", dict(box=[30.0, 20.0, 140.0, 95.0]), True, 40, 0),
    ("sprinkles_only", dict(point_coords=[[160.0, 90.0]], point_labels=[1]), True, 0, 12),
]


def predictor_fixture(mods, model):
    """(image, cases.json's cases, tensors) for tests/fixtures/sam2-predictor."""
    h, w = PREDICTOR_SIZE
    image = test_image(h, w)
    dec = model.sam_mask_decoder
    tensors, cases = {}, []
    for name, prompts, multi, hole, sprinkle in PREDICTOR_CASES:
        pred = mods.SAM2ImagePredictor(model, mask_threshold=0.0, max_hole_area=hole, max_sprinkle_area=sprinkle)
        pred._bb_feat_sizes = feat_sizes()
        pred.set_image(image)
        if "pixel_values" not in tensors:
            tensors["pixel_values"] = pred._transforms(image)[None].numpy()
        seen = {}
        plain_dyn = dec._dynamic_multimask_via_stability

        def dyn(logits, ious):
            seen["stability"] = dec._get_stability_scores(logits[:, 0:1])[:, 0]
            seen["token0"] = logits[:, 0]
            return plain_dyn(logits, ious)
        dec._dynamic_multimask_via_stability = dyn
        hook = dec.register_forward_hook(lambda m, i, o: seen.update(raw=o[0], obj=o[3]))
        args = dict(point_coords=None, point_labels=None, box=None, mask_input=None)
        for k, v in prompts.items():
            args[k] = np.array(v, dtype=np.float32) if k != "mask_input" else tensors[v]
        if args["point_labels"] is not None:
            args["point_labels"] = args["point_labels"].astype(np.int32)
        masks, iou, low = pred.predict(**args, multimask_output=multi, return_logits=False, normalize_coords=True)
        logits, iou2, low2 = pred.predict(**args, multimask_output=multi, return_logits=True, normalize_coords=True)
        del dec._dynamic_multimask_via_stability
        hook.remove()
        twin = twin_predictor(mods, model, mask_threshold=0.0, max_hole_area=hole, max_sprinkle_area=sprinkle)
        twin.set_image(image)
        mi, pc, pl, bx = twin._prep_prompts(args["point_coords"], args["point_labels"], args["box"],
                                            args["mask_input"], True)
        l64, i64, _ = twin._predict(None if pc is None else pc.double(), pl, None if bx is None else bx.double(),
                                    None if mi is None else mi.double(), multi, return_logits=True)
        noise = float((torch.from_numpy(logits).double() - l64[0]).abs().max())
        assert np.array_equal(iou, iou2) and np.array_equal(low, low2) and np.array_equal(masks, logits > 0)
        tensors[f"{name}.masks"] = masks.astype(np.uint8)
        tensors[f"{name}.logits"] = logits.astype(np.float32)
        tensors[f"{name}.iou_predictions"] = iou.astype(np.float32)
        tensors[f"{name}.low_res_masks"] = low.astype(np.float32)
        best = int(np.argmax(iou))
        if name == "point_multi":
            tensors["point_multi.best_low_res"] = low[best:best + 1].astype(np.float32)
        case = dict(name=name, point_coords=prompts.get("point_coords"), point_labels=prompts.get("point_labels"),
                    box=prompts.get("box"), mask_input=prompts.get("mask_input"), multimask_output=multi,
                    return_logits=[False, True], max_hole_area=hole, max_sprinkle_area=sprinkle, mask_threshold=0.0,
                    normalize_coords=True)
        facts = [f"logits' smallest |value - 0| {float(np.abs(logits).min()):.2g} (the original's own float32 "
                 f"error: largest |float32 - float64| {noise:.2g})",
                 f"object score {float(seen['obj'].reshape(-1)[0]):.3f} (ignored by _predict)"]
        if "stability" in seen:
            s = float(seen["stability"][0])
            t0 = seen["token0"][0]
            d = dec.dynamic_multimask_stability_delta
            m = float(torch.minimum((t0 - d).abs(), (t0 + d).abs()).min())
            flip = abs(s - dec.dynamic_multimask_stability_thresh) * int((t0 > -d).sum())
            kept = "kept" if s >= 0.98 else "below 0.98: the best multimask output"
            facts.append(f"token 0's stability {s:.4f} ({kept}; {flip:.1f} low-res pixels from flipping; "
                         f"its smallest |logit -+ 0.05| {m:.2g})")
            case["token0_stability"], case["token0_flip_pixels"] = s, round(flip, 2)
        if hole or sprinkle:
            raw = seen["raw"]
            facts.append(f"raw low-res logits' smallest |value| {float(raw.abs().min()):.2g}")
            ref = F.interpolate(raw, (h, w), mode="bilinear", align_corners=False)[0].numpy()
            lr = raw.flatten(0, 1).unsqueeze(1)
            _, abg = connected_components((lr <= 0).to(torch.uint8))
            _, afg = connected_components((lr > 0).to(torch.uint8))
            nh = ((abg > 0) & (abg <= hole)).flatten(1).sum(1).tolist() if hole else [0] * lr.shape[0]
            ns = ((afg > 0) & (afg <= sprinkle)).flatten(1).sum(1).tolist() if sprinkle else [0] * lr.shape[0]
            changed = ((ref > 0) != masks).reshape(masks.shape[0], -1).sum(1).tolist()
            facts.append(f"holes filled / sprinkles removed per mask (low-res pixels): {nh} / {ns}; "
                         f"mask pixels that differ from no filling: {changed}")
            case["filled_low_res_pixels"], case["sprinkle_low_res_pixels"], case["changed_pixels"] = nh, ns, changed
        case["logit_margin"], case["logit_noise"] = float(np.abs(logits).min()), noise
        case["notes"] = "; ".join(facts)
        cases.append(case)
        print(f"  {name}: iou {np.round(iou, 3).tolist()} area {[int(m.sum()) for m in masks]}; " + case["notes"])
    return image, cases, tensors


# ---- main --------------------------------------------------------------------------------

def params_for_method(params):
    """Every setting the recipe takes, explicitly (so defaults do not matter)."""
    keys = ["points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
            "stability_score_offset", "mask_threshold", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh",
            "crop_overlap_ratio", "crop_n_points_downscale_factor", "min_mask_region_area", "output_mode",
            "use_m2m", "multimask_output"]
    assert set(keys) == set(params), sorted(set(keys) ^ set(params))
    return {k: params[k] for k in keys}


def versions():
    import scipy
    import torchvision
    return {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0],
            "numpy": np.__version__, "scipy": scipy.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sam2", default=os.path.join(ROOT, "..", "ext", "sam2"),
                    help="facebookresearch/sam2 checkout or extracted archive (with a COMMIT file)")
    ap.add_argument("--cocoapi", help="cocodataset/cocoapi PythonAPI with pycocotools built in place")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--no-predictor", action="store_true", help="skip tests/fixtures/sam2-predictor")
    ap.add_argument("--dry", action="store_true", help="print the counts, write nothing")
    args = ap.parse_args()
    if args.cocoapi:
        sys.path.insert(0, os.path.abspath(args.cocoapi))
    torch.set_num_threads(1)
    mods = original_modules(args.sam2)
    repos = {"facebookresearch/sam2": git_commit(args.sam2)}
    model, w = build_model(mods)
    if not args.dry:
        print("wrote", write_model(mods, model, w))
    for name in args.cases:
        spec = CASES[name]
        case_repos = repos_for_case(name, spec["output_mode"], args.cocoapi, repos)
        if case_repos is None:
            continue
        image, params, records, counts, extra, margins = amg_case(mods, model, name, spec)
        margin_text = ", ".join(f"{k} {v:.2g}" for k, v in margins.items())
        h, w_ = image.shape[:2]
        print(f"{name}: {w_}x{h} {params['output_mode']}: {counts}\n  {extra}\n  margins: {margin_text}")
        if args.dry:
            continue
        method = {
            "recipe": "sam_amg",
            "params": params_for_method(params),
            "models": {"sam": "../models/" + MODEL["name"]},
            "outputs": RECORD_OUTPUTS,
            "generator": dict({"script": "tests/tools/methods/sam2_amg.py", "repos": case_repos}, **versions()),
            "notes": (f"SAM2AutomaticMaskGenerator(model, **params).generate(image) unmodified on image.png "
                      f"({w_}x{h}, RGB uint8); model = facebookresearch/sam2's SAM2Base built with the tiny "
                      f"modules and ../models/{MODEL['name']}'s weights under the original names "
                      f"(tests/tools/methods/sam2_amg.py, which lists its stand-ins: the connected-components "
                      f"kernel, antialiased Resize, the predictor's feature sizes). Masks before -> after each "
                      f"step: {counts}. {extra}. Records in the official order; margins against float32 noise "
                      f"(logit_noise: the largest |float32 - float64| of the original's own logits over the "
                      f"records' masks): {margin_text}; segmentation in output_mode {params['output_mode']} "
                      f"(README: sam_amg records)."),
        }
        write_fixture(f"sam_amg-sam2-{name}", method, image, records_tensors(records, params["output_mode"], h, w_))
        print(f"  wrote {os.path.join(METHODS, 'sam_amg-sam2-' + name)}")
    if not args.no_predictor:
        write_predictor(mods, model, repos, dry=args.dry)


def write_predictor(mods, model, repos, dry=False):
    from PIL import Image
    out = os.path.join(ROOT, "tests", "fixtures", "sam2-predictor")
    image, cases, tensors = predictor_fixture(mods, model)
    if dry:
        return
    os.makedirs(out, exist_ok=True)
    Image.fromarray(image).save(os.path.join(out, "image.png"))
    save_safetensors(os.path.join(out, "ref.safetensors"), tensors)
    h, w = image.shape[:2]
    meta = {
        "model": "../methods/models/" + MODEL["name"],
        "image": "image.png",
        "reference": "facebookresearch/sam2: SAM2ImagePredictor(model, mask_threshold=0.0, max_hole_area, "
                     "max_sprinkle_area); set_image(image); predict(point_coords, point_labels, box, mask_input, "
                     "multimask_output, return_logits, normalize_coords=True), once with return_logits False "
                     "(masks) and once True (logits)",
        "generator": dict({"script": "tests/tools/methods/sam2_amg.py", "repos": repos}, **versions()),
        "notes": (f"image.png: the bundled photo resized to {w}x{h} (PIL bilinear), RGB uint8; pixel_values = "
                  f"SAM2Transforms(image)[None] with torchvision's Resize((160, 160)) antialiased (the default of "
                  f"torchvision >= 0.17); point_coords / box in pixels of image.png; mask_input names a tensor "
                  f"of ref.safetensors (point_multi.best_low_res: point_multi's low_res_masks at its best "
                  f"predicted IoU, (1, 40, 40)). Per case <name>.masks (C, {h}, {w}) uint8 (return_logits False), "
                  f"<name>.logits (C, {h}, {w}) float32 (return_logits True), <name>.iou_predictions (C,), "
                  f"<name>.low_res_masks (C, 40, 40) (predict's, clamped to [-32, 32], never hole-filled)"),
        "tensors": {k: [list(v.shape), str(v.dtype)] for k, v in sorted(tensors.items())},
        "cases": cases,
    }
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
