"""Shared pieces of the method-fixture generators (tests/fixtures/methods/).

Tiny random-weight models in the public Hugging Face layouts (what fmseg
loads), their conversion to the layouts the official code bases load, and a
writer for the fixture directories. numpy and torch only (Debian's
python3-numpy, python3-torch); no transformers needed.

    from common import make_clip, clip_to_openai, write_fixture
"""
import json
import os
import shutil
import struct
import subprocess

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
METHODS = os.path.join(ROOT, "tests", "fixtures", "methods")
MODELS = os.path.join(METHODS, "models")
SHARED = os.environ.get("FMSEG_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))

_DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int32"): "I32",
           np.dtype("int64"): "I64", np.dtype("uint8"): "U8"}


def save_safetensors(path, tensors):
    """tensors: {name: numpy array} -> a safetensors file (sorted names)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.array(tensors[name], order="C")  # ascontiguousarray would make a 0-d array 1-d
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        raw = a.tobytes()
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    """-> {name: numpy array} (F16 stays float16)."""
    inv = {v: k for k, v in _DTYPES.items()}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=inv[h["dtype"]]).reshape(h["shape"]).copy()
    return out


def randomize(shapes, seed):
    """Weights large enough that every op matters, as the shared fixtures:
    matrices N(0, 1/fan_in), norm weights 1 + 0.2 N, other vectors 0.2 N.
    Rounded to float16 (stored as F16, read as float32 by both sides)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            a = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif len(shape) == 1 and name.endswith("weight") and ("norm" in name or "layrnorm" in name):
            a = 1 + 0.2 * rng.standard_normal(shape)
        else:
            a = 0.2 * rng.standard_normal(shape)
        out[name] = a.astype(np.float16)
    return out


# ---- CLIP ----------------------------------------------------------------------

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_shapes(v_width, v_layers, patch, grid, t_width, t_layers, proj, vocab=49408, context=77):
    s = {"logit_scale": ()}
    s["vision_model.embeddings.class_embedding"] = (v_width,)
    s["vision_model.embeddings.patch_embedding.weight"] = (v_width, 3, patch, patch)
    s["vision_model.embeddings.position_embedding.weight"] = (grid * grid + 1, v_width)
    s["vision_model.pre_layrnorm.weight"] = (v_width,)
    s["vision_model.pre_layrnorm.bias"] = (v_width,)
    s["vision_model.post_layernorm.weight"] = (v_width,)
    s["vision_model.post_layernorm.bias"] = (v_width,)
    s["visual_projection.weight"] = (proj, v_width)
    s["text_model.embeddings.token_embedding.weight"] = (vocab, t_width)
    s["text_model.embeddings.position_embedding.weight"] = (context, t_width)
    s["text_model.final_layer_norm.weight"] = (t_width,)
    s["text_model.final_layer_norm.bias"] = (t_width,)
    s["text_projection.weight"] = (proj, t_width)
    for tower, width, layers in (("vision_model", v_width, v_layers), ("text_model", t_width, t_layers)):
        for i in range(layers):
            p = f"{tower}.encoder.layers.{i}."
            for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
                s[p + f"self_attn.{n}.weight"] = (width, width)
                s[p + f"self_attn.{n}.bias"] = (width,)
            for n in ("layer_norm1", "layer_norm2"):
                s[p + n + ".weight"] = (width,)
                s[p + n + ".bias"] = (width,)
            s[p + "mlp.fc1.weight"] = (4 * width, width)
            s[p + "mlp.fc1.bias"] = (4 * width,)
            s[p + "mlp.fc2.weight"] = (width, 4 * width)
            s[p + "mlp.fc2.bias"] = (width,)
    return s


def make_clip(name, seed=0, v_width=128, v_layers=8, patch=16, grid=14, t_width=64, t_layers=2, proj=32):
    """A tiny CLIPModel directory under tests/fixtures/methods/models/NAME in
    the layout of openai/clip-vit-base-patch16. Widths are multiples of 64
    because openai's CLIP (and the code bases built on it) derive the head
    count as width // 64. Returns the directory."""
    out = os.path.join(MODELS, name)
    os.makedirs(out, exist_ok=True)
    w = randomize(clip_shapes(v_width, v_layers, patch, grid, t_width, t_layers, proj), seed)
    w["logit_scale"] = np.array(np.log(100.0), dtype=np.float16).reshape(())
    save_safetensors(os.path.join(out, "model.safetensors"), w)
    common = {"attention_dropout": 0.0, "hidden_act": "quick_gelu", "initializer_factor": 1.0,
              "initializer_range": 0.02, "layer_norm_eps": 1e-05}
    config = {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": proj,
        "logit_scale_init_value": 2.6592, "initializer_factor": 1.0,
        "text_config": dict(common, model_type="clip_text_model", hidden_size=t_width,
                            intermediate_size=4 * t_width, num_attention_heads=t_width // 64,
                            num_hidden_layers=t_layers, max_position_embeddings=77, vocab_size=49408,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=proj),
        "vision_config": dict(common, model_type="clip_vision_model", hidden_size=v_width,
                              intermediate_size=4 * v_width, num_attention_heads=v_width // 64,
                              num_hidden_layers=v_layers, image_size=patch * grid, patch_size=patch,
                              num_channels=3, projection_dim=proj),
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    side = patch * grid
    pre = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": side},
           "resample": 3, "do_center_crop": True, "crop_size": {"height": side, "width": side},
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "do_convert_rgb": True}
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=1)
    # the real BPE tables (the same data as openai's bpe_simple_vocab_16e6)
    for fn in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(SHARED, "clip-tiny", fn), os.path.join(out, fn))
    return out


def clip_to_openai(model_dir):
    """The HF CLIPModel weights of MODEL_DIR as openai CLIP's state dict
    (torch float32 tensors), what clip.load / build_model read."""
    import torch
    hf = {k: torch.from_numpy(v.astype(np.float32)) for k, v in
          load_safetensors(os.path.join(model_dir, "model.safetensors")).items()}
    sd = {}

    def tower(src, dst, layers):
        for i in range(layers):
            p, q = f"{src}.encoder.layers.{i}.", f"{dst}.resblocks.{i}."
            a = p + "self_attn."
            sd[q + "attn.in_proj_weight"] = torch.cat([hf[a + n + "_proj.weight"] for n in "qkv"])
            sd[q + "attn.in_proj_bias"] = torch.cat([hf[a + n + "_proj.bias"] for n in "qkv"])
            sd[q + "attn.out_proj.weight"] = hf[a + "out_proj.weight"]
            sd[q + "attn.out_proj.bias"] = hf[a + "out_proj.bias"]
            for n, m in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2")):
                sd[q + m + ".weight"] = hf[p + n + ".weight"]
                sd[q + m + ".bias"] = hf[p + n + ".bias"]
            sd[q + "mlp.c_fc.weight"] = hf[p + "mlp.fc1.weight"]
            sd[q + "mlp.c_fc.bias"] = hf[p + "mlp.fc1.bias"]
            sd[q + "mlp.c_proj.weight"] = hf[p + "mlp.fc2.weight"]
            sd[q + "mlp.c_proj.bias"] = hf[p + "mlp.fc2.bias"]

    def count(prefix):
        return len({k.split(".")[3] for k in hf if k.startswith(prefix + ".encoder.layers.")})

    tower("vision_model", "visual.transformer", count("vision_model"))
    tower("text_model", "transformer", count("text_model"))
    v = "vision_model."
    sd["visual.class_embedding"] = hf[v + "embeddings.class_embedding"]
    sd["visual.positional_embedding"] = hf[v + "embeddings.position_embedding.weight"]
    sd["visual.conv1.weight"] = hf[v + "embeddings.patch_embedding.weight"]
    sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"] = hf[v + "pre_layrnorm.weight"], hf[v + "pre_layrnorm.bias"]
    sd["visual.ln_post.weight"], sd["visual.ln_post.bias"] = hf[v + "post_layernorm.weight"], hf[v + "post_layernorm.bias"]
    sd["visual.proj"] = hf["visual_projection.weight"].t().contiguous()
    t = "text_model."
    sd["token_embedding.weight"] = hf[t + "embeddings.token_embedding.weight"]
    sd["positional_embedding"] = hf[t + "embeddings.position_embedding.weight"]
    sd["ln_final.weight"], sd["ln_final.bias"] = hf[t + "final_layer_norm.weight"], hf[t + "final_layer_norm.bias"]
    sd["text_projection"] = hf["text_projection.weight"].t().contiguous()
    sd["logit_scale"] = hf["logit_scale"]
    # build_model reads these three and deletes them
    sd["input_resolution"] = torch.tensor(0)
    sd["context_length"] = torch.tensor(sd["positional_embedding"].shape[0])
    sd["vocab_size"] = torch.tensor(sd["token_embedding.weight"].shape[0])
    return sd


def save_openai_checkpoint(model_dir, path):
    """clip_to_openai(MODEL_DIR) saved where clip.load(path) reads it: a
    plain state dict (clip.load falls back to torch.load when the file is
    not a TorchScript archive). Returns path."""
    import torch
    sd = clip_to_openai(model_dir)
    for k in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(k)
    torch.save(sd, path)
    return path


# ---- DINOv2 --------------------------------------------------------------------

def dinov2_weights(width, layers, patch, grid, seed, registers=0):
    """Random weights (randomize) of a Hugging Face Dinov2Model (registers
    > 0: Dinov2WithRegistersModel) at these sizes, layer scales around 1.
    The class, register and position embeddings are drawn 2-D (unit-scale
    rows) and stored in the model's own shapes."""
    c = width
    shapes = {"embeddings.cls_token": (1, c), "embeddings.mask_token": (1, c)}
    if registers:
        shapes["embeddings.register_tokens"] = (registers, c)
    shapes.update({"embeddings.position_embeddings": (grid ** 2 + 1, c),
                   "embeddings.patch_embeddings.projection.weight": (c, 3, patch, patch),
                   "embeddings.patch_embeddings.projection.bias": (c,),
                   "layernorm.weight": (c,), "layernorm.bias": (c,)})
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for n in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
                  "attention.output.dense"):
            shapes[p + n + ".weight"], shapes[p + n + ".bias"] = (c, c), (c,)
        for n in ("norm1", "norm2"):
            shapes[p + n + ".weight"], shapes[p + n + ".bias"] = (c,), (c,)
        shapes[p + "layer_scale1.lambda1"] = shapes[p + "layer_scale2.lambda1"] = (c,)
        shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (4 * c, c), (4 * c,)
        shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (c, 4 * c), (c,)
    w = randomize(shapes, seed)
    for k in w:
        if k.endswith("lambda1"):                          # layer scales around 1 (DINOv2's init 1.0)
            w[k] = (1 + w[k].astype(np.float32)).astype(np.float16)
    w["embeddings.cls_token"] = w["embeddings.cls_token"].reshape(1, 1, c)
    if registers:
        w["embeddings.register_tokens"] = w["embeddings.register_tokens"][None]
    w["embeddings.position_embeddings"] = w["embeddings.position_embeddings"][None]
    return w


def vit_attention_to_original(hf, i, sd):
    """Block I's attention in HF (a ViTModel's or Dinov2Model's torch
    tensors: encoder.layer.I.attention.attention.query / key / value,
    attention.output.dense) into SD under the names of dino's and dinov2's
    VisionTransformer (blocks.I.attn.qkv, attn.proj). Returns the two
    prefixes, (HF's, SD's)."""
    import torch
    p, q = f"encoder.layer.{i}.", f"blocks.{i}."
    a = p + "attention.attention."
    sd[q + "attn.qkv.weight"] = torch.cat([hf[a + n + ".weight"] for n in ("query", "key", "value")])
    sd[q + "attn.qkv.bias"] = torch.cat([hf[a + n + ".bias"] for n in ("query", "key", "value")])
    sd[q + "attn.proj.weight"] = hf[p + "attention.output.dense.weight"]
    sd[q + "attn.proj.bias"] = hf[p + "attention.output.dense.bias"]
    return p, q


def dinov2_to_original(model_dir):
    """MODEL_DIR's Dinov2Model (or Dinov2WithRegistersModel) weights as the
    state dict of facebookresearch/dinov2's DinoVisionTransformer (torch
    float32 tensors)."""
    import torch
    hf = {k: torch.from_numpy(v.astype(np.float32)) for k, v in
          load_safetensors(os.path.join(model_dir, "model.safetensors")).items()}
    sd = {"cls_token": hf["embeddings.cls_token"], "pos_embed": hf["embeddings.position_embeddings"],
          "mask_token": hf["embeddings.mask_token"],
          "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
          "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
          "norm.weight": hf["layernorm.weight"], "norm.bias": hf["layernorm.bias"]}
    if "embeddings.register_tokens" in hf:
        sd["register_tokens"] = hf["embeddings.register_tokens"]
    layers = len({k.split(".")[2] for k in hf if k.startswith("encoder.layer.")})
    for i in range(layers):
        p, q = vit_attention_to_original(hf, i, sd)
        sd[q + "ls1.gamma"], sd[q + "ls2.gamma"] = hf[p + "layer_scale1.lambda1"], hf[p + "layer_scale2.lambda1"]
        for n in ("norm1", "norm2"):
            sd[q + n + ".weight"], sd[q + n + ".bias"] = hf[p + n + ".weight"], hf[p + n + ".bias"]
        for n in ("fc1", "fc2"):
            sd[q + f"mlp.{n}.weight"], sd[q + f"mlp.{n}.bias"] = hf[p + f"mlp.{n}.weight"], hf[p + f"mlp.{n}.bias"]
    return sd


# ---- fixtures --------------------------------------------------------------------

def git_commit(repo_dir):
    """The commit of a checkout or bare git dir, or of a directory extracted
    from one (a COMMIT file written beside it), else 'unknown'."""
    for cmd in (["git", "-C", repo_dir, "rev-parse", "HEAD"],
                ["git", "--git-dir", repo_dir, "rev-parse", "HEAD"]):
        try:
            return subprocess.check_output(cmd, stderr=subprocess.DEVNULL).decode().strip()
        except Exception:
            pass
    f = os.path.join(repo_dir, "COMMIT")
    return open(f).read().strip() if os.path.exists(f) else "unknown"


def write_fixture(name, method, image, tensors, classes=None):
    """tests/fixtures/methods/NAME/: method.json (METHOD, a dict per the
    README), image.png (IMAGE, (H, W, 3) uint8 RGB), ref.safetensors
    (TENSORS, numpy arrays), classes.txt (CLASSES, list of lines)."""
    from PIL import Image
    out = os.path.join(METHODS, name)
    os.makedirs(out, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(os.path.join(out, "image.png"))
    method = dict(method)
    method.setdefault("image", "image.png")
    if classes is not None:
        with open(os.path.join(out, "classes.txt"), "w") as f:
            f.write("\n".join(classes) + "\n")
        method.setdefault("classes", "classes.txt")
    with open(os.path.join(out, "method.json"), "w") as f:
        json.dump(method, f, indent=1, sort_keys=True)
    save_safetensors(os.path.join(out, "ref.safetensors"),
                     {k: np.array(v, order="C") for k, v in tensors.items()})
    return out


def top2_margin(probs):
    """probs (C, H, W) numpy -> (H, W) float32: top-1 minus top-2."""
    if probs.shape[0] < 2:
        return np.full(probs.shape[1:], np.inf, dtype=np.float32)
    s = np.sort(probs, axis=0)
    return (s[-1] - s[-2]).astype(np.float32)


def test_image(h, w, seed=0):
    """A structured RGB test image (H, W, 3) uint8: the bundled photo
    resized, with a coloured shape so regions differ."""
    from PIL import Image
    img = Image.open(os.path.join(ROOT, "tests", "data", "astronaut.jpg")).convert("RGB")
    return np.asarray(img.resize((w, h), Image.BILINEAR))


def clear_threshold(best, target, clearance=1e-4):
    """A background threshold near TARGET that no pixel's best class
    probability (BEST, any shape) comes within CLEARANCE of, so that
    rounding cannot move a pixel across it: the midpoint of the gap between
    sorted probabilities, wider than 2 x CLEARANCE, closest to TARGET
    (rounded to 6 digits); only gaps inside their range, so that the
    threshold splits the image. Tiny random models put their probabilities in a
    narrow band, where a dataset's own threshold would cut through many
    ties."""
    v = np.unique(np.asarray(best, dtype=np.float64).ravel())
    gaps = np.nonzero(np.diff(v) > 2 * clearance)[0]
    if len(gaps) == 0:
        raise ValueError("no gap of %g in the probabilities" % (2 * clearance))
    mids = (v[gaps] + v[gaps + 1]) / 2
    t = float(mids[np.argmin(np.abs(mids - target))])
    return round(t, 6)


def run_clip_cases(doc, cases, make_case, model_dir, model_name, make_model=None):
    """The main() of a generator whose official code loads an openai CLIP
    checkpoint: parses [--ext DIR] [CASE...], makes the tiny model when it
    is missing (make_model()), converts it to the openai layout once and
    runs make_case(name, case, ext, ckpt, tmp) for each case."""
    import argparse
    import tempfile

    import torch

    import mm_stubs
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--ext", default=os.environ.get("FMSEG_EXT", os.path.join(ROOT, "..", "ext")))
    ap.add_argument("cases", nargs="*", help=f"of {', '.join(cases)} (default all)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    mm_stubs.install()
    if make_model and not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        make_model()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_openai_checkpoint(model_dir, os.path.join(tmp, model_name + ".pt"))
        for name in a.cases or cases:
            make_case(name, cases[name], a.ext, ckpt, tmp)


def write_inputs(tmp, name, h, w, classes):
    """The test image (h, w) as tmp/name.png and the class file tmp/name.txt
    that an mmseg-style segmentor reads (name_path); returns the image and
    both paths."""
    from PIL import Image
    img = test_image(h, w)
    image_path = os.path.join(tmp, name + ".png")
    Image.fromarray(img).save(image_path)
    name_path = os.path.join(tmp, name + ".txt")
    with open(name_path, "w") as f:
        f.write("\n".join(classes) + "\n")
    return img, image_path, name_path
