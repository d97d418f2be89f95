"""Method fixtures for the DINO recipes (tokencut, lost, deep_spectral,
deep_spectral_loc, dino_kmeans), made by the methods' official code on a tiny
random-weight DINO ViT (tests/fixtures/methods/README.md describes the
format).

Run with Debian's python3 (python3-torch 1.13, python3-torchvision,
python3-scipy, python3-sklearn, python3-skimage, python3-opencv, python3-tqdm,
python3-pil, python3-traitlets), from the repository root:

    /usr/bin/python3 tests/tools/methods/dino_family.py EXT_DIR [CASE...]

CASE (default: all) is one of tokencut, lost, deep_spectral,
deep_spectral_multi, dino_kmeans, deep_spectral_loc. The output is
deterministic for a given CASE list (ARPACK's start vector, and so the last
bits of the eigenvectors, depends on the eigsh calls made before it in the
process; the committed fixtures are a run of all).

EXT_DIR holds the official repositories, extracted unmodified (e.g.
`git --git-dir=DIR archive HEAD | tar -x -C EXT_DIR/NAME`) at the commits
of REPOS below:

    EXT_DIR/TokenCut                    YangtaoWANG95/TokenCut
    EXT_DIR/LOST                        valeoai/LOST (its dino/ submodule empty)
    EXT_DIR/deep-spectral-segmentation  lukemelas/deep-spectral-segmentation
    EXT_DIR/dino                        facebookresearch/dino (the hub code
                                        LOST and deep-spectral load)

Nothing of them is copied here. What the script does:

1. writes tests/fixtures/methods/models/dino-s16-tiny/ — config.json and
   model.safetensors in the layout of facebook/dino-vits16 (transformers
   ViTModel names, no pooler), patch 16, 3 blocks, width 48, 4 heads, a 6x6
   position grid; random weights large enough that every op matters;
2. converts those weights to the DINO hub state dict and loads them
   (strict) into the official VisionTransformer class of each repository;
3. runs each method's official functions (scikit-learn's KMeans, which
   the official code calls without a random_state, under
   np.random.seed(seed)) on a 200x136 crop of
   tests/data/astronaut.jpg (a 13x9 padded / 12x8 cropped patch grid:
   neither square nor the checkpoint's, and not a multiple of 16, so the
   padding / cropping and the position resampling act), and writes
   tests/fixtures/methods/<recipe>-<case>/{method.json, image.png,
   ref.safetensors}.

The official main scripts (main_tokencut.py, main_lost.py, the
object-localization main.py) are command-line loops over datasets; their
few lines of glue between dataset, model and method (zero padding, the qkv
hook, the head reshape) are re-typed below with the line they come from.
The method functions themselves (ncut, lost, detect_box, extract_features,
_extract_eig, _extract_single_region_segmentations,
_extract_multi_region_segmentations, _extract_crf_segmentations,
get_bbox_from_patch_mask) are imported and
called as they are. Stubs, each the smallest that lets the official code
run on this machine: `accelerate.Accelerator` and `fire` (not installable
here; the Accelerator only moves the model to the CPU and saves files),
`pymatting.util.util.row_sum` (pymatting needs numba; the stub is
pymatting 1.1's one-line definition), `torch.Tensor.cuda` (there is no GPU; returns the tensor),
`extract_utils.get_model` (torch.hub would download the 384-wide
ViT-S/16; ours builds the tiny model from the same hub file,
dino/vision_transformer.py), and `denseCRF` (SimpleCRF; the stub returns
the unary's argmax, so the CRF step is the identity and what remains is the
official upsampling of the patch segmentation to image pixels).
"""
import importlib
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import types
from functools import partial

import numpy as np
import torch

REPOS = {
    "YangtaoWANG95/TokenCut": "fed52cd5b60891baefd8ec7110dafa73be816ee1",
    "valeoai/LOST": "fcedbecb644f18358a660ce58c739cc6374feda8",
    "lukemelas/deep-spectral-segmentation": "b89b6506cd6c300e6c954d12f27d5215362b7ca1",
    "facebookresearch/dino": "7c446df5b9f45747937fb0d72314eb9f7b66930a",
}

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "methods")
MODEL_NAME = "dino-s16-tiny"
MODEL_DIR = os.path.join(FIXTURES, "models", MODEL_NAME)
EXT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "/work/ext")
SCRIPT = "tests/tools/methods/dino_family.py"

# the tiny model: ViT-S/16's layout at small sizes
PATCH, DEPTH, WIDTH, HEADS, MLP, GRID = 16, 3, 48, 4, 96, 6
torch.set_grad_enabled(False)


# ---- safetensors (a tiny writer: 8-byte LE header length, JSON, raw LE data) ----

DTYPES = {np.dtype("float32"): "F32", np.dtype("int32"): "I32", np.dtype("int64"): "I64",
          np.dtype("uint8"): "U8"}


def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---- the tiny model -------------------------------------------------------------------

def make_model():
    """HF ViTModel weights (dict of numpy arrays) and config, written to MODEL_DIR."""
    rng = np.random.default_rng(20261201)

    def mat(*shape):     # normal / sqrt(fan_in)
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)

    def normw(n):
        return (1 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    def bias(n):
        return (0.2 * rng.standard_normal(n)).astype(np.float32)

    w = {
        "embeddings.cls_token": rng.standard_normal((1, 1, WIDTH)).astype(np.float32),
        # unit-variance positions, so that how they are resampled shows in every output
        "embeddings.position_embeddings": rng.standard_normal((1, GRID * GRID + 1, WIDTH)).astype(np.float32),
        "embeddings.patch_embeddings.projection.weight": mat(WIDTH, 3, PATCH, PATCH),
        "embeddings.patch_embeddings.projection.bias": bias(WIDTH),
    }
    for i in range(DEPTH):
        p = f"encoder.layer.{i}."
        w[p + "layernorm_before.weight"], w[p + "layernorm_before.bias"] = normw(WIDTH), bias(WIDTH)
        for part in ("query", "key", "value"):
            w[p + f"attention.attention.{part}.weight"] = mat(WIDTH, WIDTH)
            w[p + f"attention.attention.{part}.bias"] = bias(WIDTH)
        w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"] = mat(WIDTH, WIDTH), bias(WIDTH)
        w[p + "layernorm_after.weight"], w[p + "layernorm_after.bias"] = normw(WIDTH), bias(WIDTH)
        w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"] = mat(MLP, WIDTH), bias(MLP)
        w[p + "output.dense.weight"], w[p + "output.dense.bias"] = mat(WIDTH, MLP), bias(WIDTH)
    w["layernorm.weight"], w["layernorm.bias"] = normw(WIDTH), bias(WIDTH)
    config = {
        "architectures": ["ViTModel"], "attention_probs_dropout_prob": 0.0, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "hidden_size": WIDTH, "image_size": GRID * PATCH,
        "initializer_range": 0.02, "intermediate_size": MLP, "layer_norm_eps": 1e-06, "model_type": "vit",
        "num_attention_heads": HEADS, "num_channels": 3, "num_hidden_layers": DEPTH, "patch_size": PATCH,
        "qkv_bias": True, "torch_dtype": "float32",
    }
    os.makedirs(MODEL_DIR, exist_ok=True)
    with open(os.path.join(MODEL_DIR, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(MODEL_DIR, "model.safetensors"), w, {"format": "pt"})
    return w


def hub_state_dict(w):
    """transformers ViTModel names → facebookresearch/dino VisionTransformer names."""
    t = lambda a: torch.from_numpy(np.array(a))
    sd = {
        "cls_token": t(w["embeddings.cls_token"]),
        "pos_embed": t(w["embeddings.position_embeddings"]),
        "patch_embed.proj.weight": t(w["embeddings.patch_embeddings.projection.weight"]),
        "patch_embed.proj.bias": t(w["embeddings.patch_embeddings.projection.bias"]),
        "norm.weight": t(w["layernorm.weight"]), "norm.bias": t(w["layernorm.bias"]),
    }
    for i in range(DEPTH):
        p, q = f"encoder.layer.{i}.", f"blocks.{i}."
        for hf, hub in (("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                        ("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                        ("output.dense", "mlp.fc2")):
            sd[q + hub + ".weight"], sd[q + hub + ".bias"] = t(w[p + hf + ".weight"]), t(w[p + hf + ".bias"])
        for kind in ("weight", "bias"):
            sd[q + "attn.qkv." + kind] = torch.cat([t(w[p + f"attention.attention.{part}.{kind}"])
                                                    for part in ("query", "key", "value")])
    return sd


def official_vit(vits, w):
    """The tiny model in a repository's VisionTransformer (its vision_transformer module)."""
    model = vits.VisionTransformer(img_size=[GRID * PATCH], patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH,
                                   num_heads=HEADS, mlp_ratio=MLP / WIDTH, qkv_bias=True,
                                   norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_classes=0)
    model.load_state_dict(hub_state_dict(w), strict=True)
    return model.eval()


# ---- importing the official code ------------------------------------------------------

CLASHING = ("object_discovery", "datasets", "networks", "dino", "vision_transformer", "extract_utils",
            "extract", "utils", "visualizations")


def use_repo(*dirs):
    """Put dirs first on sys.path and forget modules of the same names from other repositories."""
    for name in list(sys.modules):
        if name.split(".")[0] in CLASHING:
            del sys.modules[name]
    for d in dirs:
        while d in sys.path:
            sys.path.remove(d)
    sys.path[:0] = list(dirs)


def install_stubs():
    acc = types.ModuleType("accelerate")

    class Accelerator:      # extract_features: Accelerator(fp16=True, cpu=False); .device, .save, .wait_for_everyone
        def __init__(self, **kwargs):
            self.device = torch.device("cpu")

        def save(self, obj, f):
            torch.save(obj, f)

        def wait_for_everyone(self):
            pass

    acc.Accelerator = Accelerator
    sys.modules["accelerate"] = acc
    sys.modules["fire"] = types.ModuleType("fire")
    crf = types.ModuleType("denseCRF")
    crf.densecrf = lambda image, unary, params: np.argmax(np.asarray(unary), axis=-1).astype(np.uint8)
    sys.modules["denseCRF"] = crf
    # pymatting (needs numba, not installed): extract_utils.get_diagonal imports only row_sum,
    # pymatting 1.1's definition
    for name in ("pymatting", "pymatting.util", "pymatting.util.util"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["pymatting.util.util"].row_sum = lambda A: A.dot(np.ones(A.shape[1], A.dtype))
    torch.Tensor.cuda = lambda self, *a, **k: self


# ---- the image ----------------------------------------------------------------------------

def make_image():
    from PIL import Image
    im = Image.open(os.path.join(ROOT, "tests", "data", "astronaut.jpg")).convert("RGB")
    im = im.crop((0, 40, 320, 258)).resize((200, 136), Image.BILINEAR)
    return np.array(im)


# ---- fixtures ---------------------------------------------------------------------------------

def write_fixture(name, recipe, params, outputs, ref, notes, image):
    from PIL import Image
    d = os.path.join(FIXTURES, name)
    os.makedirs(d, exist_ok=True)
    Image.fromarray(image).save(os.path.join(d, "image.png"))
    write_safetensors(os.path.join(d, "ref.safetensors"), ref)
    import cv2, scipy, sklearn, skimage, torchvision
    meta = {
        "recipe": recipe,
        "params": params,
        "models": {"dino": "../models/" + MODEL_NAME},
        "image": "image.png",
        "outputs": outputs,
        "generator": {
            "script": SCRIPT,
            "repos": {k: REPOS[k] for k in REPOS if k in notes["repos"]},
            "torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__,
            "skimage": skimage.__version__, "cv2": cv2.__version__,
        },
        "notes": notes["text"],
    }
    with open(os.path.join(d, "method.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print("wrote", d, {k: list(v.shape) for k, v in ref.items()})


def qkv_features(model, img, block=-1):
    """main_tokencut.py 220-252 (main_lost.py 215-247): the qkv hook on a block, the forward pass,
    the head reshape → q, k, v (B, T, C) with CLS."""
    feat_out = {}

    def hook_fn_forward_qkv(module, input, output):
        feat_out["qkv"] = output

    h = model._modules["blocks"][block]._modules["attn"]._modules["qkv"].register_forward_hook(hook_fn_forward_qkv)
    attentions = model.get_last_selfattention(img[None, :, :, :])
    h.remove()
    nb_im, nh, nb_tokens = attentions.shape[0], attentions.shape[1], attentions.shape[2]
    qkv = feat_out["qkv"].reshape(nb_im, nb_tokens, 3, nh, -1 // nh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    k = k.transpose(1, 2).reshape(nb_im, nb_tokens, -1)
    q = q.transpose(1, 2).reshape(nb_im, nb_tokens, -1)
    v = v.transpose(1, 2).reshape(nb_im, nb_tokens, -1)
    return {"q": q, "k": k, "v": v}


def pad_to_patch(img, patch):
    """main_tokencut.py 188-196 (main_lost.py 184-192): zero padding after normalisation."""
    size_im = (img.shape[0], int(np.ceil(img.shape[1] / patch) * patch), int(np.ceil(img.shape[2] / patch) * patch))
    paded = torch.zeros(size_im)
    paded[:, : img.shape[1], : img.shape[2]] = img
    return paded


def tokencut_case(w, image_path, image, case, which="k", tau=0.2, eps=1e-5, no_binary_graph=False):
    use_repo(os.path.join(EXT, "TokenCut"))
    import dino.vision_transformer as vits      # TokenCut's own copy (networks.py)
    from datasets import ImageDataset
    from object_discovery import ncut
    model = official_vit(vits, w)
    dataset = ImageDataset(image_path, None)
    img = dataset.dataloader[0][0]
    init_image_size = img.shape
    img = pad_to_patch(img, PATCH)
    w_featmap, h_featmap = img.shape[-2] // PATCH, img.shape[-1] // PATCH
    feats = qkv_features(model, img)[which]      # main_tokencut.py: feats = k (CLS kept; ncut drops it)
    scales = [PATCH, PATCH]
    pred, objects, mask, seed, bins, eigenvector = ncut(feats, [w_featmap, h_featmap], scales, init_image_size,
                                                       tau, eps, im_name="image", no_binary_graph=no_binary_graph)
    ref = {
        "boxes": np.asarray(pred, dtype=np.int64).astype(np.int32).reshape(1, 4),
        "eigenvector": eigenvector.astype(np.float32),
        "mask": mask.astype(np.int32),
        "seed": np.array([seed], dtype=np.int32),
    }
    params = {"which_features": which, "tau": tau, "eps": eps, "no_binary_graph": no_binary_graph}
    outputs = {"boxes": {"compare": "exact"}, "eigenvector": {"compare": "float_sign"},
               "mask": {"compare": "exact"}, "seed": {"compare": "exact"}}
    text = ("TokenCut's ncut() (object_discovery.py) on the last block's %s of the tiny DINO in TokenCut's "
            "dino/vision_transformer.py, image through datasets.ImageDataset (no resize) and zero-padded to "
            "208x144 as main_tokencut.py does (a 13x9 grid; positions resampled by DINO's scale_factor rule). "
            "boxes: ncut's pred (x0, y0, x1, y1 in pixels, clipped to the image); eigenvector: its "
            "eigenvec (second-smallest generalized eigenvector, float64 scipy eigh, oriented so the seed is "
            "positive) on the [gh, gw] grid; mask: its [gh, gw] patch mask of the seed's component; seed: the "
            "0-based seed patch (argmax |y|)." % which)
    write_fixture("tokencut-" + case, "tokencut", params, outputs, ref,
                  {"repos": ["YangtaoWANG95/TokenCut"], "text": text}, image)
    return feats, eigenvector


def lost_case(w, image_path, image, case, which="k", k_patches=100):
    # LOST's dino/ is facebookresearch/dino (a submodule), whose `from utils import` wants dino/ on the path
    use_repo(os.path.join(EXT, "LOST"), EXT, os.path.join(EXT, "dino"))
    vits = importlib.import_module("dino.vision_transformer")
    from datasets import ImageDataset
    from object_discovery import lost, detect_box
    model = official_vit(vits, w)
    dataset = ImageDataset(image_path)
    img = dataset.dataloader[0][0]
    init_image_size = img.shape
    img = pad_to_patch(img, PATCH)
    w_featmap, h_featmap = img.shape[-2] // PATCH, img.shape[-1] // PATCH
    feats = qkv_features(model, img)[which][:, 1:, :]     # main_lost.py: feats = k[:, 1:, :]
    scales = [PATCH, PATCH]
    pred, A, scores, seed = lost(feats, [w_featmap, h_featmap], scales, init_image_size, k_patches=k_patches)
    ref = {
        "boxes": np.asarray(pred, dtype=np.int64).astype(np.int32).reshape(1, 4),
        "seed": np.array([int(seed)], dtype=np.int32),
    }
    params = {"which_features": which, "k_patches": k_patches}
    outputs = {"boxes": {"compare": "exact"}, "seed": {"compare": "exact"}}
    text = ("LOST's lost() (object_discovery.py) on the last block's %s without CLS of the tiny DINO in "
            "facebookresearch/dino's vision_transformer.py (LOST's dino submodule), image through "
            "datasets.ImageDataset and zero-padded to 208x144 as main_lost.py does (a 13x9 grid). boxes: "
            "lost's pred; seed: its 0-based seed patch (first of torch.argsort of -degree, descending)."
            % which)
    write_fixture("lost-" + case, "lost", params, outputs, ref,
                  {"repos": ["valeoai/LOST", "facebookresearch/dino"], "text": text}, image)


def deep_spectral_run(w, image_path, K, tmp, which_block=-1):
    """extract_features then _extract_eig, as the README's commands run them (laplacian, defaults)."""
    ds = os.path.join(EXT, "deep-spectral-segmentation")
    use_repo(os.path.join(ds, "extract"), EXT, os.path.join(EXT, "dino"))   # torch.hub puts dino/ on the path
    import extract_utils as utils
    import extract
    vits = importlib.import_module("dino.vision_transformer")   # what torch.hub loads from dino:main

    def get_model(name):
        model = official_vit(vits, w)
        model.fc = torch.nn.Identity()
        return model, utils.get_transform(name), model.patch_embed.patch_size, model.blocks[0].attn.num_heads

    utils.get_model = get_model
    images_root = os.path.join(tmp, "images")
    os.makedirs(images_root, exist_ok=True)
    shutil.copy(image_path, os.path.join(images_root, "image.jpg"))   # the code wants {id}.jpg; PIL/cv2 read by content
    with open(os.path.join(tmp, "images.txt"), "w") as f:
        f.write("image.jpg\n")
    feats_dir, eigs_dir = os.path.join(tmp, "features"), os.path.join(tmp, "eigs")
    if not os.path.isdir(feats_dir):
        extract.extract_features(os.path.join(tmp, "images.txt"), images_root, "dino_vits16", 1, feats_dir,
                                 which_block=which_block)
    shutil.rmtree(eigs_dir, ignore_errors=True)
    os.makedirs(eigs_dir)
    feature_file = os.path.join(feats_dir, "image.pth")
    extract._extract_eig((0, feature_file), K=K, images_root=images_root, output_dir=eigs_dir,
                         which_matrix="laplacian", which_features="k", normalize=True, lapnorm=True,
                         which_color_matrix="knn", threshold_at_zero=True, image_downsample_factor=None,
                         image_color_lambda=0.0)
    return extract, utils, images_root, feature_file, os.path.join(eigs_dir, "image.pth")


def deep_spectral_single_case(w, image_path, image, case, K=2, which_block=-1):
    with tempfile.TemporaryDirectory() as tmp:
        extract, utils, images_root, feature_file, eig_file = deep_spectral_run(w, image_path, K, tmp, which_block)
        eigs = torch.load(eig_file)
        feats = torch.load(feature_file)
        B, C, H, W, P, H_patch, W_patch, H_pad, W_pad = utils.get_image_sizes(feats)
        seg_dir, crf_dir = os.path.join(tmp, "single"), os.path.join(tmp, "crf")
        os.makedirs(seg_dir)
        os.makedirs(crf_dir)
        extract._extract_single_region_segmentations((0, (feature_file, eig_file)), threshold=0.0, output_dir=seg_dir)
        seg_png = os.path.join(seg_dir, "image.png")
        extract._extract_crf_segmentations((0, (os.path.join(images_root, "image.jpg"), seg_png)),
                                           images_root=images_root, num_classes=2, output_dir=crf_dir,
                                           crf_params=(), downsample_factor=P)
        from PIL import Image
        segments = np.array(Image.open(os.path.join(crf_dir, "image.png"))).astype(np.int32)
    ref = {
        "eigenvector": eigs["eigenvectors"][1].numpy().reshape(H_patch, W_patch).astype(np.float32),
        "segments": segments,
    }
    params = {"mode": "single_region", "K": K, "which_block": which_block}
    outputs = {"eigenvector": {"compare": "float_sign"}, "segments": {"compare": "exact"}}
    text = ("deep-spectral-segmentation's extract.py: extract_features (the tiny DINO from facebookresearch/dino's "
            "vision_transformer.py, the hub code; the keys of block %d; the image read by cv2, cropped to "
            "192x128, a 12x8 grid), "
            "_extract_eig (laplacian, K=%d as the README's object-segmentation command, scipy eigsh "
            "shift-invert in float32), _extract_single_region_segmentations (eigenvector 1 > 0) and "
            "_extract_crf_segmentations with denseCRF stubbed as the identity (argmax of the one-hot unary), "
            "which leaves the official nearest upsampling to 200x136. eigenvector: eigenvectors[1] after the "
            "official sign rule, [gh, gw]; segments: the [H, W] 0/1 map." % (which_block, K))
    write_fixture("deep_spectral-" + case, "deep_spectral", params, outputs, ref,
                  {"repos": ["lukemelas/deep-spectral-segmentation", "facebookresearch/dino"], "text": text}, image)


def upsample_official(extract, images_root, seg_png, P, num_classes, tmp):
    """_extract_crf_segmentations with the identity CRF: the official patch → pixel upsampling."""
    from PIL import Image
    crf_dir = os.path.join(tmp, "crf")
    shutil.rmtree(crf_dir, ignore_errors=True)
    os.makedirs(crf_dir)
    extract._extract_crf_segmentations((0, (os.path.join(images_root, "image.jpg"), seg_png)),
                                       images_root=images_root, num_classes=num_classes, output_dir=crf_dir,
                                       crf_params=(), downsample_factor=P)
    return np.array(Image.open(os.path.join(crf_dir, "image.png"))).astype(np.int32)


def deep_spectral_multi_case(w, image_path, image, case, K=5, segments=15, adaptive=False, kmeans_baseline=False,
                             seed=0, recipe="deep_spectral"):
    with tempfile.TemporaryDirectory() as tmp:
        extract, utils, images_root, feature_file, eig_file = deep_spectral_run(w, image_path, K, tmp)
        eigs = torch.load(eig_file)
        B, C, H, W, P, H_patch, W_patch, H_pad, W_pad = utils.get_image_sizes(torch.load(feature_file))
        seg_dir = os.path.join(tmp, "multi")
        os.makedirs(seg_dir)
        # KMeans(n_clusters) without random_state draws from numpy's global RandomState
        np.random.seed(seed)
        extract._extract_multi_region_segmentations((0, (feature_file, eig_file)), adaptive=adaptive,
                                                    non_adaptive_num_segments=segments, infer_bg_index=True,
                                                    kmeans_baseline=kmeans_baseline, output_dir=seg_dir,
                                                    num_eigenvectors=1_000_000)
        seg_png = os.path.join(seg_dir, "image.png")
        from PIL import Image
        patch_segments = np.array(Image.open(seg_png)).astype(np.int32)
        out = upsample_official(extract, images_root, seg_png, P, int(patch_segments.max()) + 1, tmp)
    ref = {"segments": out}
    outputs = {"segments": {"compare": "exact"}}
    if recipe == "deep_spectral":
        params = {"mode": "multi_region", "K": K, "non_adaptive_num_segments": segments, "adaptive": adaptive,
                  "kmeans_baseline": kmeans_baseline, "seed": seed}
        if not kmeans_baseline:
            ref["eigenvector"] = eigs["eigenvectors"][1].numpy().reshape(H_patch, W_patch).astype(np.float32)
            outputs["eigenvector"] = {"compare": "float_sign"}
    else:
        params = {"k": segments, "seed": seed}
    what = ("k-means on the raw keys (--kmeans_baseline, %d segments)" % segments if kmeans_baseline else
            ("k-means on eigenvectors 1..%d, %s" % (K - 1, "the number of segments by the largest eigengap"
                                                   if adaptive else "%d segments" % segments)))
    text = ("deep-spectral-segmentation's extract.py: extract_features (the tiny DINO from facebookresearch/dino's "
            "vision_transformer.py; image cropped to 192x128, a 12x8 grid), _extract_eig (laplacian, K=%d), "
            "_extract_multi_region_segmentations: %s, infer_bg_index; scikit-learn's KMeans without random_state "
            "run under np.random.seed(%d); then _extract_crf_segmentations with denseCRF stubbed as the identity "
            "(the official nearest upsampling to 200x136). segments: that [H, W] map%s." %
            (K, what, seed, "; eigenvector: eigenvectors[1], [gh, gw]" if "eigenvector" in ref else ""))
    write_fixture(recipe + "-" + case, recipe, params, outputs, ref,
                  {"repos": ["lukemelas/deep-spectral-segmentation", "facebookresearch/dino"], "text": text}, image)


def deep_spectral_loc_case(w, image_path, image, case, K=5):
    with tempfile.TemporaryDirectory() as tmp:
        extract, utils, images_root, feature_file, eig_file = deep_spectral_run(w, image_path, K, tmp)
        eigs = torch.load(eig_file)
        feats = torch.load(feature_file)
        B, C, H, W, P, H_patch, W_patch, H_pad, W_pad = utils.get_image_sizes(feats)
        loc = os.path.join(EXT, "deep-spectral-segmentation", "object-localization")
        use_repo(loc)
        from datasets import ImageDataset
        from object_discovery import get_bbox_from_patch_mask
        from torchvision import transforms
        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        dataset = ImageDataset(image_path, transform)
        init_image_size = dataset.dataloader[0][0].shape          # main.py: img.shape before cropping
        eigenvectors = eigs["eigenvectors"]                       # main.py 263-272 (precomputed eigs, laplacian)
        patch_mask = (eigenvectors[1] > 0)
        pred = get_bbox_from_patch_mask(patch_mask, init_image_size)
    ref = {
        "boxes": np.asarray(pred, dtype=np.int64).astype(np.int32).reshape(1, 4),
        "eigenvector": eigenvectors[1].numpy().reshape(H_patch, W_patch).astype(np.float32),
    }
    params = {"K": K}
    outputs = {"boxes": {"compare": "exact"}, "eigenvector": {"compare": "float_sign"}}
    text = ("deep-spectral-segmentation object localisation: eigenvectors from extract.py's extract_features "
            "and _extract_eig (laplacian, K=%d as the README's extraction command; tiny DINO from "
            "facebookresearch/dino), then object-localization/main.py's --eigenseg --precomputed_eigs_dir path "
            "(lines 263-272): patch_mask = eigenvectors[1] > 0, get_bbox_from_patch_mask (inverted when more "
            "than half is set, the largest 8-connected component, its box x P, clipped). boxes: its pred; "
            "eigenvector: eigenvectors[1], [gh, gw]." % K)
    write_fixture("deep_spectral_loc-" + case, "deep_spectral_loc", params, outputs, ref,
                  {"repos": ["lukemelas/deep-spectral-segmentation", "facebookresearch/dino"], "text": text}, image)


def main():
    install_stubs()
    w = make_model()
    image = make_image()
    from PIL import Image
    with tempfile.TemporaryDirectory() as tmp:
        image_path = os.path.join(tmp, "image.png")
        Image.fromarray(image).save(image_path)
        only = set(sys.argv[2:])
        want = lambda n: not only or n in only
        if want("tokencut"):
            tokencut_case(w, image_path, image, "keys")
            tokencut_case(w, image_path, image, "values", which="v")
            tokencut_case(w, image_path, image, "weighted", no_binary_graph=True)
        if want("lost"):
            lost_case(w, image_path, image, "keys")
            lost_case(w, image_path, image, "keys-k30", k_patches=30)
        if want("deep_spectral"):
            deep_spectral_single_case(w, image_path, image, "single")
            deep_spectral_single_case(w, image_path, image, "block2", which_block=-2)
        if want("deep_spectral_multi"):
            deep_spectral_multi_case(w, image_path, image, "voc", K=5, segments=15)
            deep_spectral_multi_case(w, image_path, image, "k4", K=5, segments=4, seed=3)
            deep_spectral_multi_case(w, image_path, image, "adaptive", K=20, adaptive=True)
        if want("dino_kmeans"):
            deep_spectral_multi_case(w, image_path, image, "keys", K=5, segments=4, kmeans_baseline=True,
                                     recipe="dino_kmeans")
        if want("deep_spectral_loc"):
            deep_spectral_loc_case(w, image_path, image, "voc")


if __name__ == "__main__":
    main()
