"""Method fixtures for SAM's automatic mask generator (recipe sam_amg,
`fmseg amg`) against facebookresearch/segment-anything's own
SamAutomaticMaskGenerator, run unmodified.

    /usr/bin/python3 tests/tools/methods/sam_amg.py \
        --segment-anything /path/to/segment-anything [--cocoapi /path/to/cocoapi/PythonAPI]

--segment-anything: a checkout (or `git archive HEAD segment_anything scripts`) of
facebookresearch/segment-anything; --cocoapi: cocodataset/cocoapi's
PythonAPI directory with pycocotools built in place (`python3 setup.py
build_ext --inplace`, Debian's cython3), needed for the coco_rle case only
(skipped without it, unless pycocotools is importable). Neither is copied
here. A COMMIT file beside an extracted tree names its commit.

Writes tests/fixtures/methods/models/sam-amg-tiny (a random SamModel in the
Hugging Face layout: config.json + model.safetensors) and
tests/fixtures/methods/sam_amg-<case>/. The model is converted to the
original state dict and modules (Sam(ImageEncoderViT, PromptEncoder,
MaskDecoder(TwoWayTransformer)) built directly, as build_sam does for the
real sizes); the two-way transformer's norms are nn.LayerNorm (eps 1e-5)
there, so config.json says mask_decoder_config.layer_norm_eps = 1e-5.

Every case is tuned so that every step of the generator acts: the
predicted-IoU and stability filters drop some masks and keep others, box
NMS within a crop suppresses, crop layer 1's masks survive the near-edge
rule (and some do not), cross-crop NMS suppresses, min_mask_region_area
changes masks (the NMS after it finds nothing more to remove here; its
scores, 1 unchanged and 0 changed, still set the records' order). The
counts before and after each step are printed and kept in method.json's
notes (measured by wrapping MaskData.filter and
remove_small_regions in a second run; the records come from a plain run),
with the margins of the run's decisions against float32 noise
(amg_margins). The binary_mask case also gets the metadata.csv of
scripts/amg.py's write_masks_to_folder. --nms writes
tests/fixtures/torchvision_nms.safetensors (write_nms_reference).
"""
import argparse
import json
import os
import sys
from functools import partial

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (METHODS, MODELS, ROOT, git_commit, load_safetensors, randomize,  # noqa: E402
                    save_safetensors, test_image, write_fixture)

# ---- the tiny model ----------------------------------------------------------------

# Shapes unlike sam-tiny / sam-alt: a 128 input with 8-pixel patches (16x16
# grid), windows of 6 (padded to 18), 8 mask-input channels (so mask
# prompts matter), a 24-wide IoU head.
VISION = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, image_size=128, patch_size=8,
              window_size=6, global_attn_indexes=[1], mlp_ratio=4.0, output_channels=64, num_pos_feats=32)
PROMPT = dict(hidden_size=64, mask_input_channels=8)
DECODER = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_dim=64, iou_head_depth=3,
               iou_head_hidden_dim=24, attention_downsample_rate=2, num_multimask_outputs=3)
SEED = 12
# weight edits (make_sam says why): mask-logit scale, IoU-head scale and
# centre, position-kernel scale of the first image-to-token attention and
# its value scale, image-embedding scale, first self-attention output scale
LOGIT_SCALE, IOU_SCALE, IOU_CENTRE = 40.0, 4.0, 0.5
ATTN_SCALE, V_SCALE, CONTENT_SCALE, EPS_PROBE = 3.0, 3.0, 0.3, 0.01



def sam_shapes():
    v, p, d = VISION, PROMPT, DECODER
    c, grid = v["hidden_size"], v["image_size"] // v["patch_size"]
    mlp = int(c * v["mlp_ratio"])
    s = {}
    s["vision_encoder.patch_embed.projection.weight"] = (c, 3, v["patch_size"], v["patch_size"])
    s["vision_encoder.patch_embed.projection.bias"] = (c,)
    s["vision_encoder.pos_embed"] = (1, grid, grid, c)
    for i in range(v["num_hidden_layers"]):
        q = f"vision_encoder.layers.{i}."
        size = grid if i in v["global_attn_indexes"] else v["window_size"]
        hd = c // v["num_attention_heads"]
        s[q + "attn.qkv.weight"], s[q + "attn.qkv.bias"] = (3 * c, c), (3 * c,)
        s[q + "attn.proj.weight"], s[q + "attn.proj.bias"] = (c, c), (c,)
        s[q + "attn.rel_pos_h"] = s[q + "attn.rel_pos_w"] = (2 * size - 1, hd)
        for n in ("layer_norm1", "layer_norm2"):
            s[q + n + ".weight"] = s[q + n + ".bias"] = (c,)
        s[q + "mlp.lin1.weight"], s[q + "mlp.lin1.bias"] = (mlp, c), (mlp,)
        s[q + "mlp.lin2.weight"], s[q + "mlp.lin2.bias"] = (c, mlp), (c,)
    oc = v["output_channels"]
    s["vision_encoder.neck.conv1.weight"] = (oc, c, 1, 1)
    s["vision_encoder.neck.conv2.weight"] = (oc, oc, 3, 3)
    for n in ("layer_norm1", "layer_norm2"):
        s[f"vision_encoder.neck.{n}.weight"] = s[f"vision_encoder.neck.{n}.bias"] = (oc,)
    s["shared_image_embedding.positional_embedding"] = (2, v["num_pos_feats"])
    h, mc = p["hidden_size"], p["mask_input_channels"]
    for k in range(4):
        s[f"prompt_encoder.point_embed.{k}.weight"] = (1, h)
    s["prompt_encoder.not_a_point_embed.weight"] = (1, h)
    s["prompt_encoder.no_mask_embed.weight"] = (1, h)
    me = "prompt_encoder.mask_embed."
    s[me + "conv1.weight"], s[me + "conv1.bias"] = (mc // 4, 1, 2, 2), (mc // 4,)
    s[me + "layer_norm1.weight"] = s[me + "layer_norm1.bias"] = (mc // 4,)
    s[me + "conv2.weight"], s[me + "conv2.bias"] = (mc, mc // 4, 2, 2), (mc,)
    s[me + "layer_norm2.weight"] = s[me + "layer_norm2.bias"] = (mc,)
    s[me + "conv3.weight"], s[me + "conv3.bias"] = (h, mc, 1, 1), (h,)
    h, ntok = d["hidden_size"], d["num_multimask_outputs"] + 1
    internal = h // d["attention_downsample_rate"]

    def attn(prefix, inner):
        for n in ("q_proj", "k_proj", "v_proj"):
            s[f"{prefix}.{n}.weight"], s[f"{prefix}.{n}.bias"] = (inner, h), (inner,)
        s[f"{prefix}.out_proj.weight"], s[f"{prefix}.out_proj.bias"] = (h, inner), (h,)

    md = "mask_decoder."
    for i in range(d["num_hidden_layers"]):
        q = f"{md}transformer.layers.{i}."
        attn(q + "self_attn", h)
        attn(q + "cross_attn_token_to_image", internal)
        attn(q + "cross_attn_image_to_token", internal)
        for n in ("layer_norm1", "layer_norm2", "layer_norm3", "layer_norm4"):
            s[q + n + ".weight"] = s[q + n + ".bias"] = (h,)
        s[q + "mlp.lin1.weight"], s[q + "mlp.lin1.bias"] = (d["mlp_dim"], h), (d["mlp_dim"],)
        s[q + "mlp.lin2.weight"], s[q + "mlp.lin2.bias"] = (h, d["mlp_dim"]), (h,)
    attn(md + "transformer.final_attn_token_to_image", internal)
    s[md + "transformer.layer_norm_final_attn.weight"] = s[md + "transformer.layer_norm_final_attn.bias"] = (h,)
    s[md + "iou_token.weight"], s[md + "mask_tokens.weight"] = (1, h), (ntok, h)
    s[md + "upscale_conv1.weight"], s[md + "upscale_conv1.bias"] = (h, h // 4, 2, 2), (h // 4,)
    s[md + "upscale_layer_norm.weight"] = s[md + "upscale_layer_norm.bias"] = (h // 4,)
    s[md + "upscale_conv2.weight"], s[md + "upscale_conv2.bias"] = (h // 4, h // 8, 2, 2), (h // 8,)

    def ff(prefix, nin, hidden, nout, depth):
        s[f"{prefix}.proj_in.weight"], s[f"{prefix}.proj_in.bias"] = (hidden, nin), (hidden,)
        for j in range(depth - 2):
            s[f"{prefix}.layers.{j}.weight"], s[f"{prefix}.layers.{j}.bias"] = (hidden, hidden), (hidden,)
        s[f"{prefix}.proj_out.weight"], s[f"{prefix}.proj_out.bias"] = (nout, hidden), (nout,)

    for k in range(ntok):
        ff(f"{md}output_hypernetworks_mlps.{k}", h, h, h // 8, 3)
    ff(md + "iou_prediction_head", h, d["iou_head_hidden_dim"], ntok, d["iou_head_depth"])
    return s


def write_sam_model(out, w):
    """OUT/model.safetensors (W) and OUT/config.json: a SamModel at the
    module's VISION / PROMPT / DECODER (what sam_shapes drew W at)."""
    os.makedirs(out, exist_ok=True)
    save_safetensors(os.path.join(out, "model.safetensors"), w)
    v, p, d = VISION, PROMPT, DECODER
    config = {
        "architectures": ["SamModel"], "model_type": "sam", "initializer_range": 0.02,
        "vision_config": dict(v, model_type="sam_vision_model", num_channels=3, hidden_act="gelu",
                              layer_norm_eps=1e-6, qkv_bias=True, use_abs_pos=True, use_rel_pos=True,
                              mlp_dim=int(v["hidden_size"] * v["mlp_ratio"]), attention_dropout=0.0,
                              initializer_range=1e-10, dropout=0.0),
        "prompt_encoder_config": dict(p, image_size=v["image_size"], patch_size=v["patch_size"],
                                      image_embedding_size=v["image_size"] // v["patch_size"],
                                      num_point_embeddings=4, hidden_act="gelu", layer_norm_eps=1e-6),
        # the original TwoWayAttentionBlock's norms are nn.LayerNorm's 1e-5
        "mask_decoder_config": dict(d, hidden_act="relu", layer_norm_eps=1e-5),
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    return out


def make_sam(name="sam-amg-tiny"):
    """The tiny SamModel directory (config.json + model.safetensors, F16
    weights) under tests/fixtures/methods/models/NAME. Returns it."""
    out = os.path.join(MODELS, name)
    os.makedirs(out, exist_ok=True)
    w = randomize(sam_shapes(), SEED)
    rng = np.random.default_rng(SEED + 1)
    # as SAM initialises them: Fourier frequencies N(0, 1) (scale 1); the
    # absolute position embedding, the not-a-point / no-mask embeddings and
    # the output tokens of unit-ish size
    w["shared_image_embedding.positional_embedding"] = rng.standard_normal(
        w["shared_image_embedding.positional_embedding"].shape).astype(np.float16)
    w["vision_encoder.pos_embed"] = (0.5 * rng.standard_normal(w["vision_encoder.pos_embed"].shape)).astype(np.float16)
    for k in list(w):
        if k.startswith("prompt_encoder.") and k.endswith("embed.weight") or k.endswith("_token.weight") \
                or k.endswith("mask_tokens.weight"):
            w[k] = rng.standard_normal(w[k].shape).astype(np.float16)
    # mask logits of tens of units, so that the stability score (IoU of
    # logits > 1 and logits > -1) spreads over [0, 1]
    for k in range(DECODER["num_multimask_outputs"] + 1):
        name = f"mask_decoder.output_hypernetworks_mlps.{k}.proj_out."
        w[name + "weight"] = (w[name + "weight"].astype(np.float32) * LOGIT_SCALE).astype(np.float16)
        w[name + "bias"] = (w[name + "bias"].astype(np.float32) * LOGIT_SCALE).astype(np.float16)
    # the first block's image-to-token attention compares positions: head
    # h's query and key projections both pick the sine and cosine of
    # Fourier frequencies 4h..4h+3, so that pixel x attends to the point
    # token by the kernel sum_j cos(theta_j(x) - theta_j(point)), peaked at
    # the point; the image embeddings are scaled down so that position
    # dominates there. Masks then sit near their prompt point (a random
    # decoder spreads every mask over the image).
    att = "mask_decoder.transformer.layers.0.cross_attn_image_to_token."
    inner, hid = w[att + "q_proj.weight"].shape
    heads, half = DECODER["num_attention_heads"], hid // 2
    per = inner // heads // 2
    pick = np.zeros((inner, hid), dtype=np.float32)
    for hh in range(heads):
        for i in range(per):
            pick[2 * per * hh + i, per * hh + i] = ATTN_SCALE
            pick[2 * per * hh + per + i, half + per * hh + i] = ATTN_SCALE
    for n in ("q_proj", "k_proj"):
        w[att + n + ".weight"] = pick.astype(np.float16)
        w[att + n + ".bias"] = np.zeros(inner, dtype=np.float16)
    w[att + "v_proj.weight"] = (w[att + "v_proj.weight"].astype(np.float32) * V_SCALE).astype(np.float16)
    for n in ("weight", "bias"):
        k = f"vision_encoder.neck.layer_norm2.{n}"
        w[k] = (w[k].astype(np.float32) * CONTENT_SCALE).astype(np.float16)
    # upscaling convolutions that repeat each pixel 2x2 (one kernel tap for
    # all four): random taps paint a 4x4 lattice over every mask
    for n in ("upscale_conv1", "upscale_conv2"):
        k = w[f"mask_decoder.{n}.weight"].astype(np.float32)
        w[f"mask_decoder.{n}.weight"] = np.broadcast_to(k[:, :, :1, :1] * 2, k.shape).astype(np.float16)
    # the first block's self-attention output (layer_norm1's whole input:
    # that block skips the residual) of variance ~1e-5, so that
    # layer_norm1's eps, 1e-5 in the original against transformers' 1e-6,
    # changes every mask: a model that ignored config.json's
    # mask_decoder_config.layer_norm_eps would fail these fixtures
    for n in ("weight", "bias"):
        k = f"mask_decoder.transformer.layers.0.self_attn.out_proj.{n}"
        w[k] = (w[k].astype(np.float32) * EPS_PROBE).astype(np.float16)
    # predicted IoUs around IOU_CENTRE: the generator filters by predicted
    # IoU only with a threshold above 0
    name = "mask_decoder.iou_prediction_head.proj_out."
    w[name + "weight"] = (w[name + "weight"].astype(np.float32) * IOU_SCALE).astype(np.float16)
    w[name + "bias"] = np.full(w[name + "bias"].shape, IOU_CENTRE, dtype=np.float16)
    write_sam_model(out, w)
    return out


def sam_to_original(model_dir):
    """MODEL_DIR's SamModel weights as segment-anything's Sam state dict
    (torch float32 tensors)."""
    import torch
    hf = {k: torch.from_numpy(v.astype(np.float32)) for k, v in
          load_safetensors(os.path.join(model_dir, "model.safetensors")).items()}
    iou_depth = DECODER["iou_head_depth"]
    fixed = [
        ("vision_encoder.patch_embed.projection.", "image_encoder.patch_embed.proj."),
        ("vision_encoder.pos_embed", "image_encoder.pos_embed"),
        ("vision_encoder.neck.conv1.", "image_encoder.neck.0."),
        ("vision_encoder.neck.layer_norm1.", "image_encoder.neck.1."),
        ("vision_encoder.neck.conv2.", "image_encoder.neck.2."),
        ("vision_encoder.neck.layer_norm2.", "image_encoder.neck.3."),
        ("shared_image_embedding.positional_embedding", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
        ("prompt_encoder.point_embed.", "prompt_encoder.point_embeddings."),
        ("prompt_encoder.mask_embed.conv1.", "prompt_encoder.mask_downscaling.0."),
        ("prompt_encoder.mask_embed.layer_norm1.", "prompt_encoder.mask_downscaling.1."),
        ("prompt_encoder.mask_embed.conv2.", "prompt_encoder.mask_downscaling.3."),
        ("prompt_encoder.mask_embed.layer_norm2.", "prompt_encoder.mask_downscaling.4."),
        ("prompt_encoder.mask_embed.conv3.", "prompt_encoder.mask_downscaling.6."),
        ("mask_decoder.upscale_conv1.", "mask_decoder.output_upscaling.0."),
        ("mask_decoder.upscale_layer_norm.", "mask_decoder.output_upscaling.1."),
        ("mask_decoder.upscale_conv2.", "mask_decoder.output_upscaling.3."),
        ("mask_decoder.transformer.layer_norm_final_attn.", "mask_decoder.transformer.norm_final_attn."),
    ]
    sd = {}
    for name, t in hf.items():
        new = name
        for a, b in fixed:
            if name.startswith(a):
                new = b + name[len(a):]
                break
        else:
            if name.startswith("vision_encoder.layers."):
                new = "image_encoder.blocks." + name[len("vision_encoder.layers."):]
                new = new.replace(".layer_norm1.", ".norm1.").replace(".layer_norm2.", ".norm2.")
            elif name.startswith("mask_decoder.transformer.layers."):
                for k in range(1, 5):
                    new = new.replace(f".layer_norm{k}.", f".norm{k}.")
            elif ".proj_in." in name or ".proj_out." in name or (".layers." in name and "_mlps." in name) \
                    or (".layers." in name and "iou_prediction_head" in name):
                depth = iou_depth if "iou_prediction_head" in name else 3
                head, _, tail = name.partition(".proj_in.") if ".proj_in." in name else (None, None, None)
                if head is not None:
                    new = f"{head}.layers.0.{tail}"
                elif ".proj_out." in name:
                    head, _, tail = name.partition(".proj_out.")
                    new = f"{head}.layers.{depth - 1}.{tail}"
                else:
                    head, _, rest = name.partition(".layers.")
                    j, _, tail = rest.partition(".")
                    new = f"{head}.layers.{int(j) + 1}.{tail}"
        sd[new] = t
    return sd


def build_original(model_dir):
    """segment-anything's Sam with the tiny sizes, MODEL_DIR's weights loaded
    strictly (every tensor named and shaped as the original expects)."""
    import torch
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)
    v, p, d = VISION, PROMPT, DECODER
    grid = v["image_size"] // v["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=v["num_hidden_layers"], embed_dim=v["hidden_size"], img_size=v["image_size"],
            mlp_ratio=v["mlp_ratio"], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=v["num_attention_heads"], patch_size=v["patch_size"], qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=v["global_attn_indexes"], window_size=v["window_size"],
            out_chans=v["output_channels"]),
        prompt_encoder=PromptEncoder(
            embed_dim=p["hidden_size"], image_embedding_size=(grid, grid),
            input_image_size=(v["image_size"], v["image_size"]), mask_in_chans=p["mask_input_channels"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=d["num_multimask_outputs"],
            transformer=TwoWayTransformer(depth=d["num_hidden_layers"], embedding_dim=d["hidden_size"],
                                          mlp_dim=d["mlp_dim"], num_heads=d["num_attention_heads"]),
            transformer_dim=d["hidden_size"], iou_head_depth=d["iou_head_depth"],
            iou_head_hidden_dim=d["iou_head_hidden_dim"]),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.load_state_dict(sam_to_original(model_dir), strict=True)
    sam.eval()
    return sam


# ---- running the generator --------------------------------------------------------

def run_amg(sam, image, settings):
    from segment_anything import SamAutomaticMaskGenerator
    return SamAutomaticMaskGenerator(sam, **settings).generate(image)


def logit_margins(masks, t, offset):
    """Per mask of MASKS' logits (B, M, H, W): the smallest |logit - t'|
    for t' = T and T +- OFFSET (binarisation and the stability score's two
    cuts), and the counts of pixels above T + OFFSET and T - OFFSET (the
    stability score's)."""
    import torch
    m = torch.stack([(masks - c).abs().flatten(2).min(-1)[0] for c in (t, t + offset, t - offset)])
    return m.min(0)[0], (masks > t + offset).flatten(2).sum(-1), (masks > t - offset).flatten(2).sum(-1)


def near_stability(hi, lo, thresh):
    """Whether one pixel could move a mask's stability score (HI / LO,
    logit_margins' counts) across THRESH."""
    n_lo = float(lo)
    return n_lo > 0 and abs(float(hi) / n_lo - thresh) <= 1.5 / n_lo


def record_key(r):
    """A record's (crop box XYXY, point x, point y, predicted IoU): how
    the instrumented runs key the masks the generator's steps saw."""
    x, y, w, h = (int(v) for v in r["crop_box"])
    return ((x, y, x + w, y + h), float(r["point_coords"][0][0]), float(r["point_coords"][0][1]),
            float(r["predicted_iou"]))


def amg_margins(sam, image, settings, records):
    """How close the official run's decisions come to flipping under float32
    noise (a faithful float32 reimplementation differs by ~1e-6 in logits
    and predicted IoUs): the smallest |logit - t| (t = 0 and +-offset) over
    the pixels of the records' masks, the smallest gap between two records'
    predicted IoUs (their order), the smallest |predicted IoU -
    pred_iou_thresh| over every mask, and the smallest |logit - t| of the
    masks one pixel could move across stability_score_thresh. Taken in
    a third run whose predictor and batch steps are wrapped."""
    from segment_anything import SamAutomaticMaskGenerator
    gen = SamAutomaticMaskGenerator(sam, **settings)
    offset, mask_t = settings["stability_score_offset"], sam.mask_threshold
    pixel, ious, near_stab, crop = {}, [], [], [None]
    plain_crop, plain_batch, plain_predict = gen._process_crop, gen._process_batch, gen.predictor.predict_torch

    def process_crop(img, crop_box, layer, orig_size):
        crop[0] = tuple(int(v) for v in crop_box)
        return plain_crop(img, crop_box, layer, orig_size)

    def process_batch(points, im_size, crop_box, orig_size):
        crop.append(points)
        return plain_batch(points, im_size, crop_box, orig_size)

    def predict_torch(*args, **kwargs):
        masks, iou, low = plain_predict(*args, **kwargs)
        points, (x0, y0) = crop.pop(), crop[0][:2]
        margin, hi, lo = logit_margins(masks, mask_t, offset)
        for b in range(masks.shape[0]):
            for j in range(masks.shape[1]):
                v = float(iou[b, j])
                ious.append(v)
                key = (crop[0], float(points[b][0] + x0), float(points[b][1] + y0), v)
                pixel[key] = float(margin[b, j])
                if near_stability(hi[b, j], lo[b, j], settings["stability_score_thresh"]):
                    near_stab.append(float(margin[b, j]))
        return masks, iou, low

    gen._process_crop, gen._process_batch, gen.predictor.predict_torch = process_crop, process_batch, predict_torch
    again = gen.generate(image)
    assert [r["area"] for r in again] == [r["area"] for r in records]
    rec_pixel = [pixel[record_key(r)] for r in records]
    order = sorted(float(r["predicted_iou"]) for r in records)
    gaps = [b - a for a, b in zip(order, order[1:])]
    thresh = settings["pred_iou_thresh"]
    return {"record_logits": min(rec_pixel, default=float("inf")),
            "record_iou_gap": min(gaps, default=float("inf")),
            "iou_vs_thresh": min((abs(v - thresh) for v in ious), default=float("inf")) if thresh > 0 else float("inf"),
            "near_stability_logits": min(near_stab, default=float("inf"))}


def amg_step(data, caller):
    """Which step of the generator a MaskData.filter call is, by the
    function that called it (in _process_batch, by what the data holds so
    far)."""
    if caller == "_process_batch":
        return ("near_crop_edge" if "boxes" in data._stats else
                "stability_score_thresh" if "stability_score" in data._stats else "pred_iou_thresh")
    return {"_process_crop": "box_nms", "_generate_masks": "crop_nms",
            "postprocess_small_regions": "small_region_nms"}[caller]


def count_filters(mask_data, step=amg_step):
    """Wraps MASK_DATA.filter (the MaskData class of segment-anything, of
    a copy of it or of SAM 2) so that every call still filters and adds
    the masks it removed to removed[step(data, caller)], caller the
    function that called filter. Returns (removed, restore); restore()
    puts the original back."""
    import inspect
    removed, plain = {}, mask_data.filter

    def size(data):
        for k in ("rles", "iou_preds"):
            if k in data._stats:
                return len(data._stats[k])
        return 0

    def filter_(self, keep):
        name = step(self, inspect.stack()[1].function)
        before = size(self)
        plain(self, keep)
        removed[name] = removed.get(name, 0) + before - size(self)
    mask_data.filter = filter_
    return removed, lambda: setattr(mask_data, "filter", plain)


def amg_stats(sam, image, settings):
    """The same run with MaskData.filter and remove_small_regions wrapped:
    ({step: masks removed}, masks changed by the small-region step,
    records), to say how much each step acted."""
    import segment_anything.automatic_mask_generator as amg_mod
    from segment_anything.utils.amg import MaskData
    changed, plain_remove = [], amg_mod.remove_small_regions

    def remove_(mask, area, mode):
        out, ch = plain_remove(mask, area, mode)
        changed.append(bool(ch))   # holes, then islands, per mask
        return out, ch

    removed, restore = count_filters(MaskData)
    amg_mod.remove_small_regions = remove_
    try:
        records = run_amg(sam, image, settings)
    finally:
        restore()
        amg_mod.remove_small_regions = plain_remove
    return removed, sum(changed[i] or changed[i + 1] for i in range(0, len(changed), 2)), records


AMG_STEPS = ["pred_iou_thresh", "stability_score_thresh", "near_crop_edge", "box_nms", "crop_nms",
             "small_region_nms"]


def step_counts(removed, changed, generated, n_records, order=AMG_STEPS):
    """'generated G; pred_iou_thresh -a -> ...' (the steps of ORDER that
    removed any; CHANGED, the masks small_region_nms's step changed, where
    ORDER has it) and a check that it adds up."""
    n, parts = generated, [f"generated {generated}"]
    for k in order:
        if k == "small_region_nms":
            parts.append(f"small regions changed {changed}")
        if k in removed:
            n -= removed[k]
            parts.append(f"{k} -{removed[k]} -> {n}")
    assert n == n_records, (n, n_records)
    return "; ".join(parts)


# method.json's outputs for the records records_tensors writes
RECORD_OUTPUTS = {k: {"compare": c} for k, c in (
    ("area", "exact"), ("bbox", "exact"), ("crop_box", "exact"), ("segmentation", "exact"),
    ("predicted_iou", "float"), ("stability_score", "float"), ("point_coords", "float"))}


def repos_for_case(name, mode, cocoapi, repos):
    """The repositories behind a case (REPOS, plus cocodataset/cocoapi's
    commit for a coco_rle case given --cocoapi), or None, said, for a
    coco_rle case when pycocotools is not importable."""
    out = dict(repos)
    if mode == "coco_rle":
        try:
            import pycocotools  # noqa: F401
        except ImportError:
            print(f"{name}: skipped (pycocotools not importable; give --cocoapi)")
            return None
        if cocoapi:
            out["cocodataset/cocoapi"] = git_commit(os.path.dirname(os.path.abspath(cocoapi)))
    return out


def records_tensors(records, mode, h, w):
    """The records as ref.safetensors tensors (README: sam_amg records)."""
    n = len(records)
    t = {
        "area": np.array([r["area"] for r in records], dtype=np.int32).reshape(n),
        "bbox": np.array([r["bbox"] for r in records], dtype=np.int32).reshape(n, 4),
        "predicted_iou": np.array([r["predicted_iou"] for r in records], dtype=np.float32).reshape(n),
        "stability_score": np.array([r["stability_score"] for r in records], dtype=np.float32).reshape(n),
        "point_coords": np.array([r["point_coords"][0] for r in records], dtype=np.float32).reshape(n, 2),
        "crop_box": np.array([r["crop_box"] for r in records], dtype=np.int32).reshape(n, 4),
    }
    if mode == "binary_mask":
        seg = np.zeros((n, h, w), dtype=np.uint8)
        for i, r in enumerate(records):
            seg[i] = r["segmentation"]
    else:
        for r in records:
            assert list(r["segmentation"]["size"]) == [h, w]
        if mode == "coco_rle":
            rows = [np.frombuffer(r["segmentation"]["counts"].encode("ascii"), dtype=np.uint8) for r in records]
            fill, dtype = 0, np.uint8
        else:
            rows = [np.array(r["segmentation"]["counts"], dtype=np.int32) for r in records]
            fill, dtype = -1, np.int32
        width = max([len(r) for r in rows] + [0])
        seg = np.full((n, width), fill, dtype=dtype)
        for i, r in enumerate(rows):
            seg[i, :len(r)] = r
    t["segmentation"] = seg
    return t


def amg_image(h, w):
    """The bundled photo resized to (h, w), faded towards grey, with solid
    shapes: one in each corner region (inside one layer-1 crop, clear of
    its inner edges) and one small square in the middle, inside all four
    crops (so that cross-crop NMS has duplicates to remove)."""
    img = test_image(h, w).astype(np.float32)
    img = (0.35 * img + 0.65 * 128).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    def disk(cy, cx, r, colour):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = colour
    def rect(y0, x0, y1, x1, colour):
        img[y0:y1, x0:x1] = colour
    disk(int(0.2 * h), int(0.2 * w), int(0.1 * h), (230, 40, 30))
    rect(int(0.1 * h), int(0.65 * w), int(0.3 * h), int(0.9 * w), (30, 200, 60))
    disk(int(0.78 * h), int(0.25 * w), int(0.12 * h), (40, 60, 220))
    rect(int(0.68 * h), int(0.7 * w), int(0.88 * h), int(0.85 * w), (240, 220, 40))
    # a hole in the yellow one and a speck beside it, for min_mask_region_area
    rect(int(0.76 * h), int(0.76 * w), int(0.76 * h) + 3, int(0.76 * w) + 3, (128, 128, 128))
    rect(int(0.62 * h), int(0.9 * w), int(0.62 * h) + 3, int(0.9 * w) + 3, (240, 220, 40))
    c = (h // 2, w // 2)
    rect(c[0] - 4, c[1] - 4, c[0] + 4, c[1] + 4, (250, 250, 250))
    return img


def write_metadata_csv(sam_repo, records, path):
    """segment-anything's scripts/amg.py write_masks_to_folder, unmodified,
    into a scratch directory; its metadata.csv copied to PATH."""
    import importlib.util
    import shutil
    import tempfile
    spec = importlib.util.spec_from_file_location("sam_scripts_amg", os.path.join(sam_repo, "scripts", "amg.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory() as tmp:
        module.write_masks_to_folder(records, tmp)
        shutil.copy(os.path.join(tmp, "metadata.csv"), path)


# ---- torchvision's batched_nms past 1000 boxes -----------------------------------

def write_nms_reference(path):
    """PATH (safetensors): what torchvision.ops.batched_nms keeps, and in
    which order, for boxes and scores like the generator's, past the 1000
    boxes where the CPU takes _batched_nms_vanilla (kept boxes listed by an
    unstable torch.sort): per case `<case>.boxes` [n, 4] float32 XYXY,
    `.scores` [n], `.categories` [n] int32, `.iou_threshold` [1],
    `.keep` [k] int32 (0-based). Returns the case names."""
    import torch
    from torchvision.ops import batched_nms
    rng = np.random.default_rng(7)
    out, names = {}, []

    def case(name, n, scores, threshold, classes=1):
        xy = rng.integers(0, 180, (n, 2))
        wh = rng.integers(0, 60, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        cats = rng.integers(0, classes, n).astype(np.int32)
        keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores.astype(np.float32)),
                           torch.from_numpy(cats), threshold)
        out.update({f"{name}.boxes": boxes, f"{name}.scores": scores.astype(np.float32),
                    f"{name}.categories": cats, f"{name}.iou_threshold": np.array([threshold], np.float32),
                    f"{name}.keep": keep.numpy().astype(np.int32)})
        names.append(name)

    # postprocess_small_regions: scores 1 (unchanged) or 0 (changed)
    case("binary", 1209, rng.integers(0, 2, 1209).astype(np.float32), 1.0)
    case("binary_suppress", 1500, rng.integers(0, 2, 1500).astype(np.float32), 0.7)
    # cross-crop NMS: 1 / crop area, a few distinct values
    case("crops", 2000, 1.0 / rng.choice([192 * 144, 121 * 97, 120 * 97, 121 * 96], 2000), 0.7)
    # predicted IoUs: distinct, and a few repeated
    iou = rng.random(1800).astype(np.float32)
    iou[::7] = iou[0]
    case("iou", 1800, iou, 0.5)
    case("categories", 1300, rng.integers(0, 3, 1300).astype(np.float32), 0.6, classes=3)
    case("at_limit", 1000, rng.integers(0, 2, 1000).astype(np.float32), 0.7)   # still visiting order
    save_safetensors(path, out)
    return names


# ---- cases ---------------------------------------------------------------------------

# Image sizes and generator settings per case. The thresholds sit between
# the random model's values, so each filter keeps some masks and drops
# others (the printed counts say so).
BASE = dict(points_per_side=8, points_per_batch=24, pred_iou_thresh=0.1, stability_score_thresh=0.5,
            stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=1, crop_nms_thresh=0.7,
            crop_overlap_ratio=512 / 1500, crop_n_points_downscale_factor=1, min_mask_region_area=100)
CASES = {
    "crops-rle": dict(size=(144, 192), output_mode="uncompressed_rle",
                      settings=dict(crop_nms_thresh=0.5, min_mask_region_area=200)),
    "crops-binary": dict(size=(120, 160), output_mode="binary_mask",
                         settings=dict(crop_nms_thresh=0.3, points_per_batch=64, min_mask_region_area=60,
                                       pred_iou_thresh=0.11)),
    "crops-coco": dict(size=(136, 180), output_mode="coco_rle",
                       settings=dict(crop_nms_thresh=0.4, points_per_side=10, pred_iou_thresh=0.11)),
    "downscale-rle": dict(size=(136, 180), output_mode="uncompressed_rle",
                          settings=dict(crop_nms_thresh=0.4, points_per_side=10, crop_n_points_downscale_factor=2)),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--segment-anything", required=True, help="facebookresearch/segment-anything checkout")
    ap.add_argument("--cocoapi", help="cocodataset/cocoapi PythonAPI with pycocotools built in place")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--dry", action="store_true", help="print the counts, write no fixture")
    ap.add_argument("--nms", action="store_true", help="also write tests/fixtures/torchvision_nms.safetensors")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.segment_anything))
    repos = {"facebookresearch/segment-anything": git_commit(args.segment_anything)}
    if args.cocoapi:
        sys.path.insert(0, os.path.abspath(args.cocoapi))
    import cv2
    import torch
    torch.set_num_threads(1)
    if args.nms:
        path = os.path.join(ROOT, "tests", "fixtures", "torchvision_nms.safetensors")
        print(f"wrote {path}: {', '.join(write_nms_reference(path))}")
    model_dir = make_sam()
    sam = build_original(model_dir)
    for case in args.cases:
        spec = CASES[case]
        mode = spec["output_mode"]
        case_repos = repos_for_case(case, mode, args.cocoapi, repos)
        if case_repos is None:
            continue
        h, w = spec["size"]
        image = amg_image(h, w)
        settings = dict(BASE, **spec["settings"], output_mode=mode)
        records = run_amg(sam, image, settings)
        removed, changed, again = amg_stats(sam, image, settings)
        assert [r["area"] for r in again] == [r["area"] for r in records]
        from segment_anything.utils.amg import build_all_layer_point_grids, generate_crop_boxes
        grids = build_all_layer_point_grids(settings["points_per_side"], settings["crop_n_layers"],
                                            settings["crop_n_points_downscale_factor"])
        _, layer_idx = generate_crop_boxes((h, w), settings["crop_n_layers"], settings["crop_overlap_ratio"])
        generated = sum(3 * len(grids[i]) for i in layer_idx)
        counts = step_counts(removed, changed, generated, len(records))
        margins = amg_margins(sam, image, settings, records)
        margin_text = ", ".join(f"{k} {v:.2g}" for k, v in margins.items())
        layers = {}
        for r in records:
            layers[tuple(r["crop_box"])] = layers.get(tuple(r["crop_box"]), 0) + 1
        print(f"{case}: {w}x{h} {mode}: {counts}")
        print(f"  records per crop box: {layers}")
        print(f"  margins: {margin_text}")
        print(f"  predicted_iou {[round(r['predicted_iou'], 3) for r in records]}")
        print(f"  stability {[round(r['stability_score'], 3) for r in records]}")
        if args.dry:
            continue
        params = {k: v for k, v in settings.items()}
        method = {
            "recipe": "sam_amg",
            "params": params,
            "models": {"sam": "../models/sam-amg-tiny"},
            "outputs": RECORD_OUTPUTS,
            "generator": {"script": "tests/tools/methods/sam_amg.py", "repos": case_repos,
                          "torch": torch.__version__.split("+")[0], "cv2": cv2.__version__,
                          "numpy": np.__version__},
            "notes": (f"SamAutomaticMaskGenerator(sam, **params) on image.png ({w}x{h}, RGB uint8), sam "
                      f"= segment-anything's Sam built directly with the tiny sizes and "
                      f"../models/sam-amg-tiny's weights renamed (tests/tools/methods/sam_amg.py). "
                      f"Masks before -> after each step: {counts}. Records in the official order; "
                      f"margins against float32 noise: {margin_text}; "
                      f"segmentation in output_mode {mode} (README: sam_amg records)."),
        }
        out_dir = write_fixture(f"sam_amg-{case}", method, image, records_tensors(records, mode, h, w))
        if mode == "binary_mask":
            # what scripts/amg.py (without --convert-to-rle) writes beside
            # the mask PNGs, for `fmseg amg --output-mode binary_mask`
            write_metadata_csv(args.segment_anything, records, os.path.join(out_dir, "metadata.csv"))
        print(f"  wrote {os.path.join(METHODS, 'sam_amg-' + case)}")


if __name__ == "__main__":
    main()
