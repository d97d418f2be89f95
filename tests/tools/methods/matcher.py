"""Matcher method fixtures (tests/fixtures/methods/matcher-*) from the
official code, aim-uofa/Matcher: its Matcher class built by its
build_matcher_oss(args) from the arguments of its scripts/*.sh, run as
main_oss.py's test loop runs it (random.seed(0) at import,
utils.fix_randseed(0), one episode of its DatasetFSS through a DataLoader,
set_reference / set_target / predict / clear), on a tiny random DINOv2 and
a tiny SAM, with the repository's own dinov2 and segment_anything copies
(its SamAutomaticMaskGenerator is its own, with the prompt-set path
Matcher uses).

    git --git-dir=$(fetch github:aim-uofa/Matcher) archive HEAD \\
        matcher segment_anything dinov2 main_oss.py scripts | tar -x -C /work/ext/Matcher
    git --git-dir=... rev-parse HEAD > /work/ext/Matcher/COMMIT
    /usr/bin/python3 tests/tools/methods/matcher.py --repo /work/ext/Matcher [--dry] [--remake] [CASE...]

Needs Debian's python3-torch, python3-torchvision, python3-opencv,
python3-scipy, python3-sklearn, python3-matplotlib (k_means.py imports
them) and python3-pot (ot.emd2).

What is stubbed or patched around the official code, nothing inside it:
- `np.int` (removed in numpy 1.24, used by RobustPromptSampler.is_in_mask):
  set to `int`, what it was an alias of;
- `vits.__dict__[args.dinov2_size]`: the tiny DinoVisionTransformer (the
  repository's class at width 48, 2 blocks, 3 heads, img_size 224 = 16 x 14,
  init_values 1e-5, mlp FFN, block_chunks 0, MemEffAttention blocks as
  vit_large has), its weights loaded strictly before build_matcher_oss's own
  load_pretrained_weights (non-strict) loads them again from a scratch .pth;
- `sam_model_registry[args.sam_size]`: the tiny SAM (make_sam; built by
  sam_amg.build_original from the repository's ImageEncoderViT /
  PromptEncoder / MaskDecoder);
- `matcher.input_size`: build_matcher_oss leaves Matcher's default 518
  whatever --img-size says; it is set to (img_size, img_size) = 224 (the
  tiny DINOv2's grid of 16);
- main_oss.py itself is not imported (its logger needs tensorboardX): its
  argument parser is taken from its syntax tree and run on the case's
  arguments; its test loop is the four calls above (no Evaluator, no
  Logger); the dataset is DatasetFSS (matcher/data/fss.py) over a scratch
  FSS-1000 layout with main_oss's transform (Resize((img_size, img_size)),
  ToTensor()) and a DataLoader built as FSSDataset.build_dataloader builds it
  (dataset.py itself imports detectron2 and pycocotools);
- the predictor, the generator, the k-means, the prompt sampler and the mask
  scores are wrapped to record their arguments and results (they still run
  as they are).

The fixtures record how close the run's decisions come to flipping under
float32 noise (margins(): fmseg's logits of the tiny SAM differ from
torch's by ~6e-5): pixels of the records within NEAR of 0 or +-1
(proposal_near; a record's area, box and stability may move by those), the
patches and matched points such pixels could flip (0 in every case), the
filters' margins; the masks are compared with `margin` = |the merged
masks' largest logit| x 1e-5 / NEAR, so that the parity's 1e-5 excuses
exactly the pixels within NEAR of SAM's threshold.

Writes tests/fixtures/methods/models/dinov2-matcher-tiny (a random
Dinov2Model in the Hugging Face layout), models/sam-matcher-tiny (a
SamModel, make_sam), tests/fixtures/methods/matcher-<case>/ and
tests/fixtures/methods/matcher-units/ref.safetensors (references of the
recipe's pieces: POT's ot.emd2 and SciPy's linear_sum_assignment on random
matrices, CPython's random.sample and set order, torch's randint /
multinomial / exponential_ and k_means.py's kmeans_pp; see
write_unit_reference).
"""
import argparse
import ast
import json
import os
import random
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (METHODS, MODELS, dinov2_to_original, dinov2_weights, git_commit, randomize,  # noqa: E402
                    save_safetensors, test_image, write_fixture)
import sam_amg  # noqa: E402  (before the repository goes first on sys.path: it puts this directory first)

DINO_DIR = os.path.join(MODELS, "dinov2-matcher-tiny")
DINO = dict(width=48, heads=3, layers=2, patch=14, grid=16)      # img_size 224 = Matcher's input_size here
SAM_DIR = os.path.join(MODELS, "sam-matcher-tiny")
NEAR = 2e-4        # |logit - t| below this can flip under float32 noise (fmseg vs torch: ~6e-5 here)


# ---- the tiny DINOv2 ---------------------------------------------------------------------

def make_dinov2(seed=21, content=3.0, positions=0.5):
    """The tiny Dinov2Model directory: random weights (common.dinov2_weights:
    randomize's, layer scales around 1), the patch embedding x `content`
    and the position embeddings x `positions` (so that patches of like
    colours get like features, as a trained DINOv2's do for like parts)."""
    d, c = DINO, DINO["width"]
    w = dinov2_weights(c, d["layers"], d["patch"], d["grid"], seed)
    for k, f in (("embeddings.patch_embeddings.projection.weight", content),
                 ("embeddings.position_embeddings", positions)):
        w[k] = (w[k].astype(np.float32) * f).astype(np.float16)
    os.makedirs(DINO_DIR, exist_ok=True)
    save_safetensors(os.path.join(DINO_DIR, "model.safetensors"), w)
    config = {"architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": c,
              "num_hidden_layers": d["layers"], "num_attention_heads": d["heads"], "mlp_ratio": 4,
              "patch_size": d["patch"], "image_size": d["patch"] * d["grid"], "num_channels": 3,
              "layerscale_value": 1e-5, "layer_norm_eps": 1e-6, "hidden_act": "gelu", "qkv_bias": True,
              "use_swiglu_ffn": False, "drop_path_rate": 0.0, "attention_probs_dropout_prob": 0.0,
              "hidden_dropout_prob": 0.0, "initializer_range": 0.02}
    with open(os.path.join(DINO_DIR, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    return DINO_DIR


# ---- the tiny SAM ------------------------------------------------------------------------------------

# sam_amg.py's shapes and conversion at these sizes: SAM's 128 x 128 input
# with 8-pixel patches (16 x 16 embedding), width 32 in the prompt encoder
# and decoder, one two-way block.
SAM_VISION = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=128, patch_size=8,
                  window_size=6, global_attn_indexes=[1], mlp_ratio=4.0, output_channels=32, num_pos_feats=16)
SAM_PROMPT = dict(hidden_size=32, mask_input_channels=8)
SAM_DECODER = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, mlp_dim=64, iou_head_depth=3,
                   iou_head_hidden_dim=24, attention_downsample_rate=2, num_multimask_outputs=3)
# the design's constants (make_sam says what each does)
SAM_DESIGN = dict(seed=31, freq_scale=1.0, kernel=1.5, label=6.0, baseline=4.0, value=1.0, content=0.25,
                  up1=0.5, up_offset=1.5, up_bias=2.0, up2=1.0, slope=40.0, thresholds=(1.6, 1.5, 1.72, 1.9),
                  iou_scale=3.0, iou_centre=0.6, hyper_noise=0.02)


def sam_module():
    sam_amg.VISION, sam_amg.PROMPT, sam_amg.DECODER = SAM_VISION, SAM_PROMPT, SAM_DECODER
    return sam_amg


def make_sam(out=SAM_DIR, design=None):
    """The tiny SamModel directory. Random weights (common.randomize) with
    a few parts set so that masks behave as SAM's do for Matcher's prompt
    sets: they cover what lies near the prompted points, the four output
    tokens at four reaches (token 0, the single-mask output, and the three
    multimask ones), their predicted IoUs spread around iou_centre.
    - positions: the Fourier features of 16 frequencies N(0, freq_scale^2);
      the kernel below reads the sines and cosines of the first 7 (channels
      0..6 and 16..22, "picked"), which every embedding but a point's
      position leaves at 0 (the output tokens, the padding point, the dense
      no-mask embedding);
    - the point tokens: the positive label's embedding is `label` along a
      unit direction w of the other channels, orthogonal to the output
      tokens, the padding point and the all-ones vector (so that w reads 0
      from them, also after a layer norm);
    - the block's token self-attention keeps each token (q = k = 2 I, v =
      out = I), its token-to-image attention and MLP add nothing (zero output
      projections), its norms are plain: each token stays itself;
    - the image-to-token attention: a pixel's query and a token's key read
      the picked channels x kernel (q . k / 4 = kernel^2 x the positional
      kernel sum_j cos(theta_j(x) - theta_j(p)) for a point), plus one
      dimension that gives every token but the points the logit `baseline`;
      the value is `value` x the token's w component, written to channel 0
      of the image tokens: channel 0 grows with the attention on the points
      (besides the image embedding, scaled by `content`);
    - the upscaling carries channel 0 (x up1, + up_offset) beside two
      constant channels (+-up_bias, so that its layer norm keeps the scale),
      then (x up2) beside a constant; each hypernetwork's output is its bias
      (slope, -slope x threshold, 0, 0) plus hyper_noise x its random map:
      mask k is where channel 0 passes threshold k x GELU(1);
    - the IoU head: random, scaled by iou_scale around iou_centre."""
    sa = sam_module()
    g = dict(SAM_DESIGN, **(design or {}))
    w = randomize(sa.sam_shapes(), g["seed"])
    rng = np.random.default_rng(g["seed"] + 1)
    f32 = lambda k: w[k].astype(np.float32)       # noqa: E731
    put = lambda k, v: w.__setitem__(k, np.asarray(v, np.float32).astype(np.float16))  # noqa: E731
    c, half = SAM_DECODER["hidden_size"], SAM_VISION["num_pos_feats"]
    nfreq = 7
    picked = list(range(nfreq)) + list(range(half, half + nfreq))
    free = [i for i in range(c) if i not in picked]
    put("shared_image_embedding.positional_embedding", g["freq_scale"] * rng.standard_normal((2, half)))
    put("vision_encoder.pos_embed", 0.5 * rng.standard_normal(w["vision_encoder.pos_embed"].shape))
    for k in ("weight", "bias"):
        put(f"vision_encoder.neck.layer_norm2.{k}", f32(f"vision_encoder.neck.layer_norm2.{k}") * g["content"])
    others = []
    for k in ("mask_decoder.iou_token.weight", "mask_decoder.mask_tokens.weight",
              "prompt_encoder.not_a_point_embed.weight", "prompt_encoder.no_mask_embed.weight",
              "prompt_encoder.point_embed.0.weight", "prompt_encoder.point_embed.2.weight",
              "prompt_encoder.point_embed.3.weight"):
        e = rng.standard_normal(w[k].shape)
        e[:, picked] = 0
        put(k, e)
        if "no_mask" not in k and "point_embed" not in k:
            others.append(e)
    # w: on the free channels, orthogonal to the other tokens and to ones
    basis = [np.ones(c)] + [r for e in others for r in e]
    wdir = np.zeros(c)
    wdir[free] = rng.standard_normal(len(free))
    q_, _ = np.linalg.qr(np.stack(basis, 1))
    wdir -= q_ @ (q_.T @ wdir)
    wdir[picked] = 0
    wdir /= np.linalg.norm(wdir)
    put("prompt_encoder.point_embed.1.weight", (g["label"] * wdir)[None])
    L = "mask_decoder.transformer.layers.0."
    eye = np.eye(c)
    put(L + "self_attn.q_proj.weight", 2 * eye), put(L + "self_attn.k_proj.weight", 2 * eye)
    put(L + "self_attn.v_proj.weight", eye), put(L + "self_attn.out_proj.weight", eye)
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
        put(L + f"self_attn.{n}.bias", np.zeros(c))
    for n in ("layer_norm1", "layer_norm2", "layer_norm3", "layer_norm4"):
        put(L + n + ".weight", np.ones(c)), put(L + n + ".bias", np.zeros(c))
    put(L + "cross_attn_token_to_image.out_proj.weight", np.zeros(w[L + "cross_attn_token_to_image.out_proj.weight"].shape))
    put(L + "cross_attn_token_to_image.out_proj.bias", np.zeros(c))
    put(L + "mlp.lin2.weight", np.zeros(w[L + "mlp.lin2.weight"].shape)), put(L + "mlp.lin2.bias", np.zeros(c))
    a = L + "cross_attn_image_to_token."
    inner = w[a + "q_proj.weight"].shape[0]
    pick = np.zeros((inner, c))
    for r, ch in enumerate(picked):
        pick[r, ch] = g["kernel"]
    qb, kb, kw = np.zeros(inner), np.zeros(inner), pick.copy()
    # the baseline dimension: q = 1 everywhere; k = 4 baseline - gamma w . t,
    # 0 for a point token (whose w component is label (1 + 1 / its norm's std))
    lab_std = np.sqrt((half + g["label"] ** 2) / c)
    qb[2 * nfreq] = 1.0
    kb[2 * nfreq] = 4 * g["baseline"]
    kw[2 * nfreq] = -4 * g["baseline"] / (g["label"] * (1 + 1 / lab_std)) * wdir
    put(a + "q_proj.weight", pick), put(a + "k_proj.weight", kw)
    put(a + "q_proj.bias", qb), put(a + "k_proj.bias", kb)
    v = np.zeros((inner, c))
    v[0] = g["value"] * wdir
    put(a + "v_proj.weight", v), put(a + "v_proj.bias", np.zeros(inner))
    o = np.zeros((c, inner))
    o[0, 0] = 1.0
    put(a + "out_proj.weight", o), put(a + "out_proj.bias", np.zeros(c))
    # upscaling: channel 0 and two constants, then channel 0 and a constant 1
    u1 = np.zeros(w["mask_decoder.upscale_conv1.weight"].shape)        # (C, C/4, 2, 2)
    u1[0, 0] = g["up1"]
    b1 = np.zeros(c // 4)
    b1[0], b1[1], b1[2] = g["up_offset"], g["up_bias"], -g["up_bias"]
    put("mask_decoder.upscale_conv1.weight", u1), put("mask_decoder.upscale_conv1.bias", b1)
    put("mask_decoder.upscale_layer_norm.weight", np.ones(c // 4))
    put("mask_decoder.upscale_layer_norm.bias", np.zeros(c // 4))
    u2 = np.zeros(w["mask_decoder.upscale_conv2.weight"].shape)        # (C/4, C/8, 2, 2)
    u2[0, 0] = g["up2"]
    b2 = np.zeros(c // 8)
    b2[1] = 1.0
    put("mask_decoder.upscale_conv2.weight", u2), put("mask_decoder.upscale_conv2.bias", b2)
    for k, t in enumerate(g["thresholds"]):
        name = f"mask_decoder.output_hypernetworks_mlps.{k}.proj_out."
        bias = np.zeros(c // 8)
        bias[0], bias[1] = g["slope"], -g["slope"] * t
        put(name + "weight", f32(name + "weight") * g["hyper_noise"])
        put(name + "bias", bias)
    name = "mask_decoder.iou_prediction_head.proj_out."
    put(name + "weight", f32(name + "weight") * g["iou_scale"])
    put(name + "bias", np.full(w[name + "bias"].shape, g["iou_centre"]))
    return sa.write_sam_model(out, w)


# ---- main_oss.py's arguments -------------------------------------------------------------------

def main_oss_parser(repo):
    """main_oss.py's argparse parser, built by its own statements (taken
    from the `if __name__ == '__main__'` block up to parse_args)."""
    tree = ast.parse(open(os.path.join(repo, "main_oss.py")).read())
    block = next(n for n in tree.body if isinstance(n, ast.If))
    stmts = []
    for s in block.body:
        if isinstance(s, ast.Assign) and "parse_args" in ast.unparse(s):
            break
        stmts.append(s)
    env = {"argparse": argparse}
    exec(compile(ast.Module(body=stmts, type_ignores=[]), "main_oss.py", "exec"), env)
    return env["parser"]


def script_args(repo, script):
    """The main_oss.py arguments of scripts/SCRIPT minus the loop's fold and
    log-root (one list of strings)."""
    import shlex
    text = open(os.path.join(repo, "scripts", script)).read()
    start = text.index("main_oss.py") + len("main_oss.py")
    end = text.index("done")
    words = shlex.split(text[start:end].replace("\\\n", " "))
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
            continue
        if w in ("--fold", "--log-root"):
            skip = True
            continue
        out.append(w)
    return out


# ---- images --------------------------------------------------------------------------------------

def scene(h, w, seed, blobs):
    """The bundled photo resized to (h, w), faded, with solid ellipses
    (cy, cx, ry, rx, colour) in fractions of the size; the first is the
    object."""
    img = test_image(h, w).astype(np.float32)
    rng = np.random.default_rng(seed)
    img = (0.5 * img + 0.5 * 110 + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    obj = None
    for k, (cy, cx, ry, rx, colour) in enumerate(blobs):
        m = ((yy - cy * h) / (ry * h)) ** 2 + ((xx - cx * w) / (rx * w)) ** 2 <= 1
        img[m] = colour
        if k == 0:
            obj = m
    return img, obj


def fss_layout(tmp, cat, target, reference, ref_mask, others):
    """A scratch FSS-1000 tree (datapath/FSS-1000/{data/<cat>/<k>.jpg|png,
    splits/test.txt}): image 1 the target, every other k the reference
    (DatasetFSS picks the support among 1..10 by np.random). JPEG quality
    95; returns what PIL decodes (the target, the reference)."""
    from PIL import Image
    root = os.path.join(tmp, "FSS-1000")
    d = os.path.join(root, "data", cat)
    os.makedirs(d, exist_ok=True)
    os.makedirs(os.path.join(root, "splits"), exist_ok=True)
    with open(os.path.join(root, "splits", "test.txt"), "w") as f:
        f.write(cat + "\n")
    Image.fromarray(target).save(os.path.join(d, "1.jpg"), quality=95)
    Image.fromarray(others).save(os.path.join(d, "1.png"))      # the query's mask: not used by Matcher
    for k in range(2, 11):
        Image.fromarray(reference).save(os.path.join(d, f"{k}.jpg"), quality=95)
        Image.fromarray(ref_mask).save(os.path.join(d, f"{k}.png"))
    dec = lambda p: np.asarray(Image.open(p).convert("RGB"))   # noqa: E731
    return dec(os.path.join(d, "1.jpg")), dec(os.path.join(d, "2.jpg"))


# ---- running the official code -----------------------------------------------------------------

class Recorder:
    """Wraps the official pieces of one Matcher to record what they return."""

    def __init__(self, matcher):
        self.calls = {}
        m = self.matcher = matcher
        plain = {"patch_level_matching": m.patch_level_matching, "clustering": m.clustering,
                 "generate": m.generator.generate, "predict_torch": m.generator.predictor.predict_torch,
                 "set_rps": m.set_rps, "process_batch": m.generator._process_batch}
        self.logits = {}          # predicted IoU -> that mask's logits (S, S)
        self.phase, self.current = {}, "sets"    # ... and whether the dense grid or a prompt set made it

        def patch_level_matching(**kw):
            out = plain["patch_level_matching"](**kw)
            self.calls["matching"] = out
            return out

        def clustering(points):
            out = plain["clustering"](points)
            self.calls["centers"] = out
            return out

        def generate(image, **kw):
            out = plain["generate"](image, **kw)
            self.calls["records"] = out
            self.calls["samples"] = kw.get("select_point_coords")
            return out

        def predict_torch(*a, **kw):
            masks, iou, low = plain["predict_torch"](*a, **kw)
            # every mask's logits by its predicted IoU (the records carry it):
            # the margins against float32 noise are taken from them
            for v, z in zip(iou.flatten().tolist(), masks.flatten(0, 1)):
                self.logits[v] = z.numpy().copy()
                self.phase[v] = self.current
            return masks, iou, low

        def process_batch(*a, **kw):
            self.current = "dense"
            try:
                return plain["process_batch"](*a, **kw)
            finally:
                self.current = "sets"

        def set_rps():
            plain["set_rps"]()
            rps = m.rps
            if not hasattr(rps, "_recorded"):
                plain_scores, plain_sample = rps.get_mask_scores, rps.sample_points

                def get_mask_scores(**kw):
                    out = plain_scores(**kw)
                    self.calls.setdefault("scores", []).append(out[:3])
                    return out

                def sample_points(points):
                    out = plain_sample(points)
                    self.calls["sample_lists"] = out
                    return out
                rps.get_mask_scores, rps.sample_points, rps._recorded = get_mask_scores, sample_points, True

        m.patch_level_matching, m.clustering, m.set_rps = patch_level_matching, clustering, set_rps
        m.generator.generate, m.generator.predictor.predict_torch = generate, predict_torch
        m.generator._process_batch = process_batch


def build(repo, argv, tmp):
    """main_oss.py's args for ARGV and build_matcher_oss(args) on the tiny
    models (see the top of the file)."""
    import torch
    from functools import partial
    from dinov2.models import vision_transformer as vits
    from dinov2.layers import MemEffAttention, NestedTensorBlock as Block
    import matcher.Matcher as M
    args = main_oss_parser(repo).parse_args(argv)
    args.sample_range = eval(args.sample_range)                  # as main_oss.py does
    args.device = torch.device("cpu")
    sd = dinov2_to_original(DINO_DIR)

    def tiny_dinov2(**kw):
        kw = dict(kw, img_size=DINO["patch"] * DINO["grid"])
        model = vits.DinoVisionTransformer(embed_dim=DINO["width"], depth=DINO["layers"], num_heads=DINO["heads"],
                                           mlp_ratio=4, block_fn=partial(Block, attn_class=MemEffAttention), **kw)
        model.load_state_dict(sd, strict=True)
        return model
    vits.__dict__["vit_tiny_matcher"] = tiny_dinov2
    args.dinov2_size = "vit_tiny_matcher"
    args.dinov2_weights = os.path.join(tmp, "dinov2_tiny.pth")
    torch.save(sd, args.dinov2_weights)
    sam = sam_module().build_original(SAM_DIR)
    M.sam_model_registry[args.sam_size] = lambda checkpoint=None: sam
    matcher = M.build_matcher_oss(args)
    matcher.input_size = (args.img_size, args.img_size)
    return matcher, args


def run_episode(repo, matcher, datapath, img_size):
    """main_oss.py's test(): seeds, the DataLoader's iterator, one episode."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from matcher.common import utils
    from matcher.data.fss import DatasetFSS
    transform = transforms.Compose([transforms.Resize(size=(img_size, img_size)), transforms.ToTensor()])
    dataset = DatasetFSS(datapath, fold=0, transform=transform, split="test", shot=1, use_original_imgsize=False)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
    utils.fix_randseed(0)
    out = None
    with torch.no_grad():
        for idx, batch in enumerate(loader):
            matcher.set_reference(batch["support_imgs"], batch["support_masks"])
            matcher.set_target(batch["query_img"])
            out = matcher.predict()
            ref_mask = batch["support_masks"][0, 0].numpy()
            names = batch["query_name"], batch["support_names"]
            matcher.clear()
            break
    return out, ref_mask, names


def selection(args, scores, metrics):
    """Which proposals Matcher.mask_generation merges, in its order
    (recomputed with its own expressions), and the tie check: whether any
    two different proposals share a score that decides the choice."""
    import torch
    cfg = {"emd": args.emd_filter, "purity": args.purity_filter, "coverage": args.coverage_filter,
           "score_filter": args.use_score_filter, "score": args.deep_score_filter,
           "score_norm": args.deep_score_norm_filter, "topk_scores_threshold": args.topk_scores_threshold}
    idx_all = torch.arange(len(scores))
    metric_preds = {k: v.clone() for k, v in metrics.items()}
    for metric in ["coverage", "emd", "purity"]:
        if cfg[metric] > 0:
            thres = min(cfg[metric], metric_preds[metric].max())
            idx = torch.where(metric_preds[metric] >= thres)[0]
            scores, idx_all = scores[idx], idx_all[idx]
            for key in metric_preds:
                metric_preds[key] = metric_preds[key][idx]
    kept = idx_all.clone()
    if cfg["score_filter"]:
        distances = 1 - scores
        distances, rank = torch.sort(distances, descending=False)
        distances_norm = distances - distances.min()
        distances_norm = distances_norm / (distances.max() + 1e-6)
        filer_dis = distances < cfg["score"]
        filer_dis[..., 0] = True
        filer_dis_norm = distances_norm < cfg["score_norm"]
        filer_dis = filer_dis * filer_dis_norm
        chosen = idx_all[rank[filer_dis][:args.num_merging_mask]]
        order_values = 1 - scores                   # what the sort orders, per kept proposal
    else:
        topk = min(args.num_merging_mask, scores.size(0))
        topk_idx = scores.topk(topk)[1]
        topk_scores = scores[topk_idx].cpu().numpy()
        if cfg["topk_scores_threshold"] > 0:
            topk_scores = topk_scores / (topk_scores.max())
        idx = topk_scores > cfg["topk_scores_threshold"]
        chosen = idx_all[topk_idx[torch.from_numpy(idx)]]
        order_values = scores
    return kept, chosen, order_values


# ---- cases ----------------------------------------------------------------------------------------

# Each case: the script whose arguments it takes, overrides for the tiny
# model (its predicted IoUs sit around 0.5, its stability scores spread
# over [0, 1], its DINOv2 features are random), and the scene.
CASES = {
    # COCO-20i / LVIS-92i's settings (scripts/coco.sh, lvis.sh): every
    # matched point a prompt, sets of 1..6 drawn by random.sample, the
    # dense 64 x 64 grid (here 8 x 8) too, three masks per set, filters by
    # predicted IoU / stability / purity, box NMS 0.65, score-based merging.
    "coco": dict(script="coco.sh", extra=["--img-size", "224", "--points_per_side", "8", "--iou_filter", "0.5",
                                          "--pred_iou_thresh", "0.95", "--stability_score_thresh", "0.82",
                                          "--max_sample_iterations", "12",
                                          "--sel_stability_score_thresh", "0.75", "--purity_filter", "0.15",
                                          "--deep_score_filter", "0.12", "--deep_score_norm_filter", "0.35"],
                 size=(150, 190), seed=5, object=(0.42, 0.4)),
    # FSS-1000's settings (scripts/fss.sh): k-means++ (torch's generator)
    # to 8 centres, every 4..6-subset of them a prompt, one mask each, no
    # dense grid, no filters, score = 0.8 emd + 0.2 purity coverage, the
    # top 10 with scores above 0.7 of the best merged.
    "fss": dict(script="fss.sh", extra=["--img-size", "224", "--topk_scores_threshold", "0.99"], size=(140, 176),
                seed=6, object=(0.4, 0.36)),
    # the part benchmarks' settings (scripts/pascal_part.sh, paco_part.sh):
    # every matched point a prompt, sets of 3..6 (128 draws per size, here
    # 10), the box of the points as a prompt too, one mask each, coverage
    # filter, score = 0.5 emd + 0.5 purity, the top 5 above 0.7 of the best.
    "part": dict(script="pascal_part.sh", extra=["--img-size", "224", "--max_sample_iterations", "10"],
                 size=(132, 150), seed=8, object=(0.22, 0.2)),
}


def case_images(spec):
    h, w = spec["size"]
    s = spec["seed"]
    ry, rx = spec.get("object", (0.3, 0.26))
    ref, obj = scene(h, w, s, [(0.5, 0.45, ry, rx, (200, 60, 40)), (0.2, 0.8, 0.12, 0.1, (40, 160, 220))])
    tgt, _ = scene(h + 10, w - 14, s + 1, [(0.55, 0.6, 0.28, 0.24, (205, 70, 45)),
                                           (0.25, 0.2, 0.1, 0.12, (40, 160, 220)),
                                           (0.8, 0.2, 0.1, 0.1, (230, 220, 60))])
    mask = (obj * 255).astype(np.uint8)
    return tgt, ref, mask


def filter_counts():
    """Wraps MaskData.filter to count what each step of the generator
    removes (sam_amg.count_filters, with the dense grid's and the prompt
    sets' filters apart): {step: removed}; returns (counts, restore)."""
    from segment_anything.utils.amg import MaskData

    def step(data, caller):
        if caller in ("_process_batch", "_process_sel_batch"):
            kind = "dense" if caller == "_process_batch" else "sets"
            return kind + (" near_crop_edge" if "boxes" in data._stats else
                           " stability" if "stability_score" in data._stats else " pred_iou")
        return {"_process_crop": "box_nms", "_generate_masks": "crop_nms"}[caller]
    return sam_amg.count_filters(MaskData, step)


def margins(args, logits, phase, records, points, merged, patch):
    """How far the official run's decisions are from flipping under float32
    noise, from every mask's logits: per record the pixels within NEAR of 0
    (the mask) or of +-1 (its stability score); the patches whose pooling
    (any pixel) and the matched points whose inside-test such pixels could
    flip; the masks whose stability filter they could flip; the smallest
    gap between a predicted IoU and its filter; and, per pixel of the
    result, |the merged masks' largest logit|."""
    near, risky_pool, risky_points = [], 0, 0
    zs = []
    for r in records:
        z = logits[r["predicted_iou"]]
        seg = r["segmentation"]
        assert np.array_equal(z > 0, seg), "a record's logits are not its mask's"
        near0 = np.abs(z) < NEAR
        near1 = np.abs(np.abs(z) - 1) < NEAR
        near.append(int((near0 | near1).sum()))
        S = z.shape[0]
        F = S // patch
        on = seg.reshape(F, patch, F, patch)
        n0 = near0.reshape(F, patch, F, patch)
        any_on, solid, any_near = on.any((1, 3)), (on & ~n0).any((1, 3)), n0.any((1, 3))
        risky_pool += int(((~any_on) & any_near).sum() + (any_on & ~solid).sum())
        for x, y in points:
            risky_points += int(near0[min(max(int(y), 0), S - 1), min(max(int(x), 0), S - 1)])
        zs.append(z)
    iou_gap, stab_risk = float("inf"), 0
    for v, z in logits.items():
        dense = phase[v] == "dense"
        it = args.pred_iou_thresh if dense else args.iou_filter
        st = args.stability_score_thresh if dense else args.sel_stability_score_thresh
        iou_t = [it] if it > 0 else []
        stab_t = [st] if st > 0 and (it <= 0 or v > it) else []     # stability is filtered after IoU
        for t in iou_t:
            iou_gap = min(iou_gap, abs(v - t))
        hi, lo = int((z > 1).sum()), int((z > -1).sum())
        n1 = int((np.abs(np.abs(z) - 1) < NEAR).sum())
        for t in stab_t:
            if n1 > 0 and (hi - n1) / max(lo + n1, 1) < t <= (hi + n1) / max(lo - n1, 1):
                stab_risk += 1
    zmax = np.max(np.stack([zs[i] for i in merged]), 0) if merged else np.full(zs[0].shape if zs else (1, 1), -1e9)
    text = (f"records' pixels within {NEAR:g} of 0 or +-1: {sum(near)} (in {sum(n > 0 for n in near)} of "
            f"{len(near)} records), patches whose pooling they could flip {risky_pool}, matched points on them "
            f"{risky_points}, masks whose stability filter they could flip {stab_risk}, smallest gap between "
            f"a predicted IoU and its filter {iou_gap:.2g}")
    return {"near": near, "zmax": np.abs(zmax).astype(np.float32), "text": text,
            "risky": risky_pool + risky_points + stab_risk}


def run_case(repo, name, spec, repos, dry):
    import cv2
    import torch
    from PIL import Image
    argv = script_args(repo, spec["script"]) + spec["extra"]
    tgt, ref, mask = case_images(spec)
    with tempfile.TemporaryDirectory() as tmp:
        tgt_dec, ref_dec = fss_layout(tmp, "thing", tgt, ref, mask, np.zeros(tgt.shape[:2], np.uint8))
        matcher, args = build(repo, argv, tmp)
        rec = Recorder(matcher)
        removed, restore = filter_counts()
        try:
            random.seed(0)                                   # main_oss.py, at import
            out, ref_mask_t, names = run_episode(repo, matcher, tmp, args.img_size)
        finally:
            restore()
    calls = rec.calls
    points, box, _, _, reduced = calls["matching"]
    records = calls["records"]
    scores3 = calls["scores"]
    purity = torch.stack([s[0] for s in scores3]).flatten()
    coverage = torch.stack([s[1] for s in scores3]).flatten()
    emd = torch.tensor([float(s[2]) for s in scores3])
    scores = args.alpha * emd + args.beta * purity * coverage ** args.exp
    metrics = {"purity": purity, "coverage": coverage, "emd": emd}
    kept, chosen, order_values = selection(args, scores, metrics)
    segs = np.stack([r["segmentation"] for r in records]) > 0
    union = segs[chosen.numpy()].any(0)
    final = out[0].numpy() > 0
    assert np.array_equal(union, final), "the recomputed selection is not Matcher's"
    # the decisions' margins: equal scores of different masks around the cut
    vals = order_values.numpy()
    ties = 0
    for a in range(len(vals)):
        for b in range(a + 1, len(vals)):
            if vals[a] == vals[b] and not np.array_equal(segs[kept[a]], segs[kept[b]]):
                ties += 1
    S = args.img_size
    m = margins(args, rec.logits, rec.phase, records, points, chosen.tolist(), DINO["patch"])
    # the output at the original size (the recipe's choice: nearest, as the
    # dataset resizes masks)
    h, w = tgt_dec.shape[:2]
    labels = torch.nn.functional.interpolate(out[None].float(), (h, w), mode="nearest")[0, 0].int().numpy()
    samples = calls["sample_lists"][0]
    sizes = [int(s.shape[1]) for s in samples]
    counts = [int(s.shape[0]) for s in samples]
    centers = calls.get("centers")
    print(f"{name}: {len(points)} matched points (reduced {reduced}), prompt sets {dict(zip(sizes, counts))}, "
          f"{len(records)} proposals, {len(kept)} after filters, merged {chosen.tolist()}")
    generated = sum(int(x.shape[0]) for x in samples) * (3 if args.multimask_output > 0 and args.output_layer == 3
                                                           else 1)
    steps = "; ".join(f"{k} -{v}" for k, v in removed.items())
    print(f"  prompt-set masks {generated}{' + dense grid' if args.use_dense_mask else ''}; {steps}")
    for key, v in (("emd", emd), ("purity", purity), ("coverage", coverage), ("scores", scores)):
        q = np.percentile(v.numpy(), [0, 25, 50, 75, 100])
        print(f"  {key} min/quartiles/max {np.round(q, 4).tolist()}")
    print(f"  merging order values {np.round(np.sort(order_values.numpy())[::-1][:12], 4).tolist()}")
    print(f"  ties among different masks {ties}; {m['text']}; final area {int(final.sum())} of {S * S}")
    if centers is not None:
        print(f"  centres {np.asarray(centers).tolist()}")
    if dry:
        return
    rle_area = np.array([r["area"] for r in records], np.int32)
    t = {
        "points": np.asarray(points, np.int32).reshape(-1, 2),
        "proposal_area": rle_area,
        "proposal_bbox": np.array([r["bbox"] for r in records], np.int32).reshape(-1, 4),
        "proposal_iou": np.array([r["predicted_iou"] for r in records], np.float32),
        "proposal_stability": np.array([r["stability_score"] for r in records], np.float32),
        "emd": emd.numpy().astype(np.float32), "purity": purity.numpy().astype(np.float32),
        "coverage": coverage.numpy().astype(np.float32), "scores": scores.numpy().astype(np.float32),
        "kept": kept.numpy().astype(np.int32), "merged": chosen.numpy().astype(np.int32),
        "mask": final.astype(np.uint8), "labels": labels.astype(np.int32),
        "proposal_near": np.array(m["near"], np.int32),
        # 1e-5 of these (what the labels compare excuses) is NEAR of logit
        "mask_margin": m["zmax"] * (1e-5 / NEAR),
        "margin": torch.nn.functional.interpolate(torch.from_numpy(m["zmax"] * (1e-5 / NEAR))[None, None], (h, w),
                                                  mode="nearest")[0, 0].numpy(),
    }
    # proposal_area / _bbox / _stability: tests/lua/test_matcher.lua, within
    # the pixels proposal_near counts
    outputs = {k: {"compare": c} for k, c in (
        ("points", "exact"), ("proposal_iou", "float"), ("emd", "float"), ("purity", "float"),
        ("coverage", "float"), ("scores", "float"), ("kept", "exact"), ("merged", "exact"))}
    outputs["mask"] = {"compare": "labels", "margin": "mask_margin"}
    outputs["labels"] = {"compare": "labels", "margin": "margin"}
    if centers is not None:
        t["centers"] = np.asarray(centers, np.int32).reshape(-1, 2)
        outputs["centers"] = {"compare": "exact"}
    if box is not None:
        t["box"] = np.asarray(box, np.int32).reshape(1, 4)
        outputs["box"] = {"compare": "exact"}
    params = matcher_params(args)
    params.update({"ref_image": "ref_image.png", "ref_mask": "ref_mask.png", "output": "semantic"})
    method = {
        "recipe": "matcher", "params": params,
        "models": {"sam": "../models/" + os.path.basename(SAM_DIR), "vfm": "../models/" + os.path.basename(DINO_DIR)},
        "param_files": ["ref_image", "ref_mask"], "outputs": outputs,
        "generator": {"script": "tests/tools/methods/matcher.py", "repos": repos,
                      "torch": torch.__version__.split("+")[0], "cv2": cv2.__version__, "numpy": np.__version__,
                      "main_oss_args": argv},
        "notes": (f"Matcher (aim-uofa/Matcher matcher/Matcher.py) built by build_matcher_oss(args), args = main_oss.py's "
                  f"parser on scripts/{spec['script']}'s arguments + {' '.join(spec['extra'])} (thresholds for the "
                  f"tiny models), run as main_oss.py's test loop (random.seed(0), fix_randseed(0), DatasetFSS "
                  f"episode: target image.png = 1.jpg, reference ref_image.png / ref_mask.png = the support its "
                  f"np.random chose, JPEGs as PIL decodes them). {len(points)} matched points, prompt sets "
                  f"{dict(zip(sizes, counts))}, {len(records)} proposals, {len(kept)} after the metric filters, "
                  f"merged {chosen.tolist()}; no two different masks tie on the merging order ({ties} ties); "
                  f"margins against float32 noise (fmseg's logits differ from torch's by ~6e-5 here): "
                  f"{m['text']}. points: the matched "
                  f"points (x, y) in their list(set()) order; proposal_*: the generator's records in its order; "
                  f"emd / purity / coverage / scores per record; kept: records left by the metric filters "
                  f"(0-based); merged: the records merged, in Matcher's order; mask: predict()'s output at "
                  f"{S}x{S}; labels: it at the target's size (nearest). Stand-ins: see the generator's docstring."),
    }
    d = write_fixture(f"matcher-{name}", method, tgt_dec, t)
    Image.fromarray(ref_dec).save(os.path.join(d, "ref_image.png"))
    Image.fromarray(mask).save(os.path.join(d, "ref_mask.png"))
    print(f"  wrote {d} ({names[0][0].split('/')[-1]} from support {names[1][0][0].split('/')[-1]})")


def matcher_params(args):
    """The recipe's parameters for main_oss.py's ARGS (names as Matcher's)."""
    return {
        "input_size": args.img_size, "num_centers": args.num_centers, "use_box": bool(args.use_box),
        "use_points_or_centers": bool(args.use_points_or_centers), "sample_range": list(args.sample_range),
        "max_sample_iterations": args.max_sample_iterations, "alpha": args.alpha, "beta": args.beta,
        "exp": args.exp, "emd_filter": args.emd_filter, "purity_filter": args.purity_filter,
        "coverage_filter": args.coverage_filter, "use_score_filter": bool(args.use_score_filter),
        "deep_score_filter": args.deep_score_filter, "deep_score_norm_filter": args.deep_score_norm_filter,
        "topk_scores_threshold": args.topk_scores_threshold, "num_merging_mask": args.num_merging_mask,
        "points_per_side": args.points_per_side, "points_per_batch": 64, "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh, "stability_score_offset": 1.0,
        "sel_stability_score_thresh": args.sel_stability_score_thresh, "sel_pred_iou_thresh": args.iou_filter,
        "box_nms_thresh": args.box_nms_thresh, "sel_output_layer": args.output_layer,
        "output_layer": args.dense_multimask_output, "dense_pred": bool(args.use_dense_mask),
        "multimask_output": args.dense_multimask_output > 0, "sel_multimask_output": args.multimask_output > 0,
    }


# ---- the solvers' references ------------------------------------------------------------------------

def write_unit_reference(repo):
    """tests/fixtures/methods/matcher-units/ref.safetensors, the references
    of the recipe's pieces:
    - `emd<k>.costs` (n, m) float32, `emd<k>.value` [2] float32: hi and lo,
      hi + lo the double POT's ot.emd2 gives with uniform weights (as
      Matcher calls it);
    - `lsa<k>.costs` (R, C) float32, `lsa<k>.cols` [R] int32: the column of
      each row from scipy's linear_sum_assignment(costs, maximize=True), -1
      for a row left over;
    - `sample.nk` [q, 2] int32 and `sample.values` [q, 6] int32 (-1 padded):
      random.sample(range(n), k) for each (n, k) in turn after
      random.seed(0) (both of its algorithms);
    - `set<k>.values`, `set<k>.order` int32: a list of ints and
      list(set(it));
    - torch after torch.manual_seed(0): `torch.randint` [5] (randint(1000,
      (1,)) each), then `torch.multinomial` [20] (multinomial(probs, 1)
      each, probs = `torch.probs` [30]), then `torch.exponential` [4]
      (empty(4).exponential_());
    - `kmeans<k>.points` (n, 2) int32 and, after torch.manual_seed(k),
      matcher/k_means.py's kmeans_pp(points, K): `kmeans<k>.centers`
      (K, 2) float32 and `kmeans<k>.assignment` [n] int32."""
    import ot
    import torch
    from scipy.optimize import linear_sum_assignment
    from matcher.k_means import kmeans_pp
    rng = np.random.default_rng(11)
    out = {}
    emd_sizes = [(1, 1), (1, 7), (6, 1), (5, 5), (13, 8), (30, 41), (64, 23), (144, 60)]
    for k, (n, m) in enumerate(emd_sizes):
        c = ((1 - rng.uniform(-1, 1, (n, m))) / 2).astype(np.float32)      # Matcher's (1 - cos) / 2 range
        if k == 4:
            c = np.round(c * 4) / 4                                           # ties
        out[f"emd{k}.costs"] = c.astype(np.float32)
        v = ot.emd2([1. / n] * n, [1. / m] * m, c)
        hi = np.float32(v)
        out[f"emd{k}.value"] = np.array([hi, np.float32(v - np.float64(hi))], np.float32)   # v = hi + lo
    lsa_sizes = [(1, 4), (4, 1), (6, 6), (9, 30), (30, 9), (50, 144), (80, 80)]
    for k, (r, cn) in enumerate(lsa_sizes):
        c = rng.uniform(-1, 1, (r, cn)).astype(np.float32)
        if k == 2:
            c = np.round(c * 2) / 2                                            # ties
        rows, cols = linear_sum_assignment(c, maximize=True)
        full = np.full(r, -1, np.int32)
        full[rows] = cols
        out[f"lsa{k}.costs"], out[f"lsa{k}.cols"] = c.astype(np.float32), full
    random.seed(0)
    nks = [(n, k) for n in (1, 5, 8, 21, 22, 36, 48, 85, 86, 300) for k in (1, 3, 5, 6) if k <= n] * 2
    vals = np.full((len(nks), 6), -1, np.int32)
    for i, (n, k) in enumerate(nks):
        vals[i, :k] = random.sample(range(n), k)
    out["sample.nk"], out["sample.values"] = np.array(nks, np.int32), vals
    for k, (n, hi_) in enumerate([(5, 10), (40, 144), (100, 256), (300, 1369), (690, 1369), (45, 1369)]):
        v = rng.choice(hi_, n, replace=False)
        out[f"set{k}.values"], out[f"set{k}.order"] = v.astype(np.int32), np.array(list(set(v.tolist())), np.int32)
    torch.manual_seed(0)
    out["torch.randint"] = np.array([torch.randint(1000, (1,)).item() for _ in range(5)], np.int32)
    probs = torch.from_numpy(rng.random(30).astype(np.float32))
    probs = probs / probs.sum()
    out["torch.probs"] = probs.numpy()
    out["torch.multinomial"] = np.array([torch.multinomial(probs, 1).item() for _ in range(20)], np.int32)
    out["torch.exponential"] = torch.empty(4).exponential_().numpy()
    for k, (n, K) in enumerate([(20, 5), (45, 8), (120, 8), (9, 8)]):
        pts = 7 + 14 * rng.choice(37 * 37, n, replace=False)
        pts = np.stack([pts % (37 * 14), (pts // (37 * 14)) // 14 * 14 + 7], 1).astype(np.int64)
        torch.manual_seed(k)
        centers, assign = kmeans_pp(pts, K)
        out[f"kmeans{k}.points"] = pts.astype(np.int32)
        out[f"kmeans{k}.centers"] = centers.numpy().astype(np.float32)
        out[f"kmeans{k}.assignment"] = assign.numpy().astype(np.int32)
    d = os.path.join(METHODS, "matcher-units")
    os.makedirs(d, exist_ok=True)
    save_safetensors(os.path.join(d, "ref.safetensors"), out)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default="/work/ext/Matcher", help="aim-uofa/Matcher (checkout or git archive)")
    ap.add_argument("--dry", action="store_true", help="print the counts, write nothing")
    ap.add_argument("--remake", action="store_true", help="write the tiny models again")
    ap.add_argument("cases", nargs="*", default=list(CASES))
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    repo = os.path.abspath(a.repo)
    sys.path.insert(0, repo)
    np.int = int                                   # removed in numpy 1.24; Matcher's is_in_mask uses it
    repos = {"aim-uofa/Matcher": git_commit(repo)}
    if not a.dry:
        print("wrote", write_unit_reference(repo))
    if a.remake or not os.path.exists(os.path.join(DINO_DIR, "model.safetensors")):
        make_dinov2()
    if a.remake or not os.path.exists(os.path.join(SAM_DIR, "model.safetensors")):
        make_sam()
    for name in a.cases:
        run_case(repo, name, CASES[name], repos, a.dry)


if __name__ == "__main__":
    main()
