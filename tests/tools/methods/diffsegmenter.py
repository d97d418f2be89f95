"""Method fixtures for recipes/diffusion_crossattn.lua from DiffSegmenter's own
code (VCG-team/DiffSegmenter), run unmodified on the attention maps of OUR
UNet.

    /usr/bin/python3 tests/tools/methods/diffsegmenter.py \
        [--repo /work/ext/diffsegmenter] [--compel /work/ext/compel-2.0.2]

diffusers, transformers, BLIP and einops cannot be installed here, so the
official pipeline runs with those parts stood in for:

* the official per-image loop (the body of `for k,data in
  enumerate(data_loader_train)` in open_vocabulary/<ds>/ptp_stable_*.py) is
  taken from the file's syntax tree and executed as it is, in the official
  module's namespace: its prompt construction ("++", the caption's words),
  token choice (index 4 / 3 + embs_len, the "ing" rule), `times`, `weight`,
  run_and_display → ptp_utils.text2image_ldm_stable (compel's conditioning,
  real compel 2.0.2 source), AttentionStore, aggregate_all_attention, the
  per-resolution min-max and weights, the self-attention product, the
  bilinear resize, the ×255 min-max and sio.savemat;
* what it calls that cannot run is given: `ldm_stable.tokenizer` and
  `.text_encoder` answer with fmseg's CLIP tokenizer and text encoder
  (tests/tools/methods/diffsegmenter_dump.lua; both are checked against the
  originals by ../shared/fixtures clip-tiny / sd-tiny), `ldm_stable.unet`
  replays the attention probabilities our UNet computed for that prompt
  (every attn1 / attn2 layer, in the order they ran, into the controller as
  register_attention_control's forward does), BLIP's processor / generate /
  decode return the case's caption (or the prompt itself: no caption), the
  VAE and scheduler.add_noise are not used (our latents reach the UNet);
* the classes present: the official read_json on the case's JSON (the
  format of dataset/<ds>/predict_syn_txt_0.8_img_0.97.json);
* the evaluation: do_python_eval's 'npy' branch (maps / 255, background
  = threshold, np.argmax) from open_vocabulary/<ds>/evaluation_*.py, taken
  from its syntax tree, on the .mat the loop saved.

So the references cover the prompt and token selection, compel's weighting
(of our encoder's outputs), the attention aggregation, refinement,
normalisation and thresholding; the UNet's attention itself (and the VAE,
DDIM add_noise, text encoder) is what the sd-tiny parity fixture covers.
The official runs in float16; the references are float32 (dtype stubbed
as torch.float32); --half measures what float16 attention changes.

The model, tests/fixtures/methods/models/sd-diffsegmenter-tiny, is a copy
of sd-diffseg-tiny as tests/tools/methods/diffseg.py makes it (SD 1.5's
blocks at 8 channels, one head, a 4-level VAE: 512 -> 64x64 latents and
the 64/32/16/8 attention resolutions the official code is hard-wired to),
kept apart so that either fixture set can be remade alone.
"""
import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import MODELS, ROOT, git_commit, load_safetensors, top2_margin, test_image  # noqa: E402

MODEL = "sd-diffsegmenter-tiny"
HALF = False    # --half: attention stored as float16, as the official float16 UNet hands it over
DUMP = os.path.join(HERE, "diffsegmenter_dump.lua")

# (case, dataset dir, official script, evaluation script, image file name,
#  classes named in the fixture's class file (background first), present
#  classes (the JSON's lists), captions {class: caption} or None, params)
CASES = [
    ("voc", "voc12", "ptp_stable_best.py", "evaluation_voc12.py", "2007_000123.png",
     ["background", "plane", "buses", "cat", "people"],
     {"image_similarity": ["cat"], "text_similarity": ["people", "cat"]}, None,
     {"prompt": "a photograph of {}", "emphasis_style": "append", "token": "first", "ing_offset": 1}),
    ("voc-caption", "voc12", "ptp_stable_best.py", "evaluation_voc12.py", "2007_000456.png",
     ["background", "dog", "sofa", "people"],
     {"image_similarity": ["dog", "sofa"], "text_similarity": ["dog"]},
     {"dog": "a photograph of dog sitting on a sofa", "sofa": "a photograph of sofa in a room"},
     {"prompt": "a photograph of {}", "emphasis_style": "append", "token": "first", "ing_offset": 1}),
    ("context", "voc10", "ptp_stable_voc10.py", "evaluation_voc10.py", "2008_000789.png",
     ["background", "grass", "sky", "person", "tree"],
     {"image_similarity": ["sky", "person"], "text_similarity": ["grass"]},
     {"person": "a photography of person standing on grass"},
     {"prompt": "a photography of {}", "emphasis_style": "last_word", "token": "last", "ing_offset": 1}),
    ("coco", "coco", "ptp_stable_coco.py", "evaluation_coco.py", "COCO_val2014_000000000321.png",
     ["background", "person", "traffic light", "teddy bear", "cup"],
     {"image_similarity": ["traffic light", "teddy bear"], "text_similarity": ["person"]},
     {"person": "a photography of person holding a cup"},
     {"prompt": "a photography of {}", "emphasis_style": "last_word", "token": "last", "ing_offset": 2}),
]
BG_THRESHOLD = 0.5


def fmseg(*args):
    subprocess.check_call([os.path.join(ROOT, "fmseg"), "run", DUMP, *args], cwd=ROOT,
                          stdout=subprocess.DEVNULL)


# ---- stand-ins for what cannot be installed -------------------------------------------

def stub_modules():
    """The names the official files import but never use here."""
    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    class Unavailable:
        def __init__(self, *a, **k):
            raise RuntimeError("not installed here")

        @classmethod
        def from_pretrained(cls, *a, **k):
            raise RuntimeError("not installed here")

    mod("diffusers", StableDiffusionPipeline=Unavailable, DDIMScheduler=Unavailable)
    mod("transformers", BlipProcessor=Unavailable, BlipForConditionalGeneration=Unavailable,
        CLIPTokenizer=Unavailable, CLIPTextModel=Unavailable, CLIPTextModelWithProjection=Unavailable)
    mod("IPython")
    mod("IPython.display", display=lambda *a, **k: None)
    mod("einops", rearrange=None)
    mod("timm")
    mod("timm.data", create_transform=None)
    mod("timm.data.constants", IMAGENET_DEFAULT_MEAN=(0.485, 0.456, 0.406), IMAGENET_DEFAULT_STD=(0.229, 0.224, 0.225))
    mod("datasets", load_img_name_list_100=None)


class LuaTokenizer:
    """transformers.CLIPTokenizer's interface over fmseg's tokenizer."""
    model_max_length = 77
    bos_token_id, eos_token_id, pad_token_id = 49406, 49407, 49407

    def __init__(self, tok_dir, work):
        self.dir, self.work, self.cache = tok_dir, work, {}

    def _ids(self, texts):
        need = [t for t in texts if t not in self.cache]
        if need:
            src, dst = os.path.join(self.work, "tok_in.json"), os.path.join(self.work, "tok_out.json")
            json.dump(need, open(src, "w"))
            fmseg("tokenize", self.dir, src, dst)
            for t, ids in zip(need, json.load(open(dst))):
                self.cache[t] = ids
        return [list(self.cache[t]) for t in texts]

    def encode(self, text):
        return self._ids([text])[0]

    def decode(self, ids):
        # ptp_stable_coco.py binds `decoder = tokenizer.decode` but only uses it in a comment
        raise NotImplementedError("decode is not used by the official loop")

    def __call__(self, texts, padding=False, max_length=None, truncation=False, return_tensors=None, **kw):
        import torch
        single = isinstance(texts, str)
        rows = self._ids([texts] if single else list(texts))
        n = max_length or self.model_max_length
        for r in rows:
            if truncation and len(r) > n:
                del r[n:]
                r[-1] = self.eos_token_id
            if padding == "max_length":
                r += [self.pad_token_id] * (n - len(r))
        return _Encoding(torch.tensor(rows) if return_tensors == "pt" else (rows[0] if single else rows))


class _Encoding(dict):
    def __init__(self, ids):
        super().__init__(input_ids=ids)
        self.input_ids = ids


class LuaTextEncoder:
    """transformers.CLIPTextModel's call over fmseg's text encoder."""
    def __init__(self, pipe, work):
        import torch
        self.pipe, self.work, self.device, self.dtype = pipe, work, torch.device("cpu"), torch.float32

    def to(self, *a, **k):
        return self

    def __call__(self, input_ids, attention_mask=None, output_hidden_states=False, return_dict=True):
        import torch
        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise RuntimeError("a padding mask other than ones is not what SD's text encoder is given")
        src, dst = os.path.join(self.work, "enc_in.json"), os.path.join(self.work, "enc_out.safetensors")
        json.dump(input_ids.tolist(), open(src, "w"))
        fmseg("encode", self.pipe, src, dst)
        z = torch.from_numpy(load_safetensors(dst)["z"])
        return _Output(z)


class _Output(tuple):
    """A ModelOutput's two faces: out.last_hidden_state and out[0]."""
    def __new__(cls, z):
        t = super().__new__(cls, (z,))
        t.last_hidden_state = z
        return t


def fake_unet(layer_names):
    """A module tree register_attention_control walks (down / mid / up
    children holding modules of class `Attention`, one per layer of ours),
    whose call feeds the controller our attention for the prompt it is
    given: the dumped pass whose embedding the conditioning equals."""
    import torch

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.to_out = torch.nn.ModuleList([torch.nn.Identity()])

    class UNet(torch.nn.Module):
        in_channels = 4

        def __init__(self):
            super().__init__()
            groups = {"down_blocks": [], "mid_block": [], "up_blocks": []}
            for n in layer_names:
                groups[n.split(".")[0]].append(Attention())
            self.down_blocks = torch.nn.ModuleList(groups["down_blocks"])
            self.mid_block = torch.nn.ModuleList(groups["mid_block"])
            self.up_blocks = torch.nn.ModuleList(groups["up_blocks"])
            self.layer_names = list(layer_names)
            self.passes, self.seen = [], []

        def forward(self, latents, t, encoder_hidden_states=None):
            cond = encoder_hidden_states[1:2]
            dist = [float((cond - torch.from_numpy(p["text"])).abs().max()) for p in self.passes]
            k = int(np.argmin(dist))
            self.seen.append({"pass": k, "text": cond.clone(), "dist": dist[k], "t": t})
            p = self.passes[k]
            attn_modules = [m for m in self.modules() if type(m).__name__ == "Attention"]
            by_name = dict(zip(self.layer_names, attn_modules))
            for i, name in enumerate(p["layers"]):
                ours = torch.from_numpy(p["maps"]["%02d.%s" % (i + 1, name)])        # (heads, q, k)
                if HALF:
                    ours = ours.half()
                attn = torch.cat([torch.zeros_like(ours), ours])                    # [uncond, cond] rows
                place = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}[name.split(".")[0]]
                by_name[name].forward(attn, place=place, is_cross=name.endswith("attn2"))
            return {"sample": latents}

    unet = UNet()
    return unet


def feed_forward(controller_of):
    """What register_attention_control's `forward` does with the softmax:
    `attn = controller(attn, is_cross, place_in_unet)`."""
    def forward(attn, place, is_cross):
        return controller_of()(attn, is_cross, place)
    return forward


# ---- the official code -------------------------------------------------------------

def load_official(repo, ds, script):
    import importlib.util
    sys.path.insert(0, repo)
    path = os.path.join(repo, "open_vocabulary", ds, script)
    spec = importlib.util.spec_from_file_location("diffsegmenter_" + ds, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tree = ast.parse(open(path).read())
    main = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.dump(n.test))
    return mod, main


def main_statements(main):
    """From the __main__ block: the assignments of times / weight, the
    read_json call, and the per-image loop."""
    got = {"assign": [], "loop": None, "read_json": None}
    for node in ast.walk(main):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("times", "weight"):
                got["assign"].append(node)
            if node.targets[0].id == "pred_classes":
                got["read_json"] = node
        if isinstance(node, ast.For) and isinstance(node.iter, ast.Call) and \
                getattr(node.iter.func, "id", "") == "enumerate" and \
                getattr(node.iter.args[0], "id", "") == "data_loader_train":
            got["loop"] = node
    return got


def run_code(nodes, ns, name):
    code = compile(ast.Module(body=list(nodes), type_ignores=[]), name, "exec")
    exec(code, ns)


def eval_npy_branch(repo, ds, script):
    """do_python_eval's `elif input_type == 'npy':` body."""
    path = os.path.join(repo, "open_vocabulary", ds, script)
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and \
                getattr(node.test.left, "id", None) == "input_type" and \
                getattr(node.test.comparators[0], "value", None) == "npy":
            return node.body
    raise RuntimeError("no npy branch in " + path)


class Blip:
    """BlipProcessor / BlipForConditionalGeneration: the caption of the prompt."""
    def __init__(self, captions):
        self.captions = captions or {}

    def __call__(self, raw_image, prompt, return_tensors=None):
        caption = prompt
        for c, text in self.captions.items():
            if prompt.endswith(" " + c) and text.startswith(prompt):
                caption = text
        return types.SimpleNamespace(to=lambda dev: {"caption": caption})

    def generate(self, caption):
        return [caption]

    def decode(self, out, skip_special_tokens=True):
        return out


def case(repo, compel_dir, name, ds, script, evaluation, image_name, classes, lists, captions, params,
         root=os.path.join(ROOT, "tests", "fixtures", "methods")):
    import torch
    import scipy.io as sio
    work = tempfile.mkdtemp(prefix="diffsegmenter-")
    fixture = os.path.join(root, "diffusion_crossattn-" + name)
    if os.path.exists(fixture):
        shutil.rmtree(fixture)
    os.makedirs(fixture)
    from PIL import Image
    img = test_image(120, 160, seed=len(name))
    Image.fromarray(img).save(os.path.join(fixture, image_name))
    with open(os.path.join(fixture, "classes.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    # the official JSON's layout: {list name: {image key: [classes]}}
    # keyed by the file name, what the loops look up (data[..][0][-15:] / [-29:];
    # the released voc12 JSON is keyed by whole paths, which that lookup misses)
    preds = {k: {image_name: v} for k, v in lists.items()}
    json.dump(preds, open(os.path.join(fixture, "predictions.json"), "w"), indent=1)
    p = dict(params)
    p.update({"image_size": 512, "timestep": 100, "seed": 0, "latent": "sample", "emphasis": 2,
              "weights": {"64": 0.1, "32": 0.1, "16": 0.5, "8": 0.3}, "self_refine": True,
              "bg_threshold": BG_THRESHOLD, "background": True, "present_classes": "file",
              "class_predictions": "predictions.json",
              "class_predictions_keys": ["image_similarity", "text_similarity"]})
    if captions:
        json.dump({image_name: captions}, open(os.path.join(fixture, "captions.json"), "w"), indent=1)
        p["captions"] = "captions.json"
    method = {"recipe": "diffusion_crossattn", "params": p, "models": {"sd": os.path.relpath(os.path.join(MODELS, MODEL), fixture)},
              "classes": "classes.txt", "image": image_name,
              "param_files": ["class_predictions"] + (["captions"] if captions else [])}
    json.dump(method, open(os.path.join(fixture, "method.json"), "w"), indent=1)

    # our attention, per present class
    prefix = os.path.join(work, "attn")
    fmseg("attn", fixture, prefix)
    info = json.load(open(prefix + ".json"))
    passes = []
    for k, c in enumerate(info["classes"]):
        t = load_safetensors("%s.%d.safetensors" % (prefix, k + 1))
        passes.append({"text": t.pop("text"), "maps": t, "layers": c["layers"], "class": c})

    stub_modules()
    mod, main = load_official(repo, ds, script)
    st = main_statements(main)
    pipe = os.path.join(MODELS, MODEL)
    tok = LuaTokenizer(os.path.join(pipe, "tokenizer"), work)
    unet = fake_unet(passes[0]["layers"])
    unet.passes = passes
    controller = mod.AttentionStore()
    fwd = feed_forward(lambda: controller)
    for m in unet.modules():
        if type(m).__name__ == "Attention":
            m.forward = fwd

    class Scheduler:
        def add_noise(self, x, noise, t):
            return torch.zeros(1, 4, 64, 64)

        def set_timesteps(self, n):
            self.n = n

    class Vae:
        def encode(self, x):
            return types.SimpleNamespace(latent_dist=types.SimpleNamespace(sample=lambda: torch.zeros(1, 4, 64, 64)))

    ldm = types.SimpleNamespace(tokenizer=tok, text_encoder=LuaTextEncoder(pipe, work), unet=unet,
                                scheduler=Scheduler(), vae=Vae(), device=torch.device("cpu"))
    # register_attention_control replaces each Attention's forward with
    # ca_forward; ours must stay: re-set it after every registration
    import ptp_utils
    real_register = ptp_utils.register_attention_control

    def register(model, ctl):
        real_register(model, ctl)
        for m in model.unet.modules():
            if type(m).__name__ == "Attention":
                m.forward = fwd
    ptp_utils.register_attention_control = register

    out_dir = os.path.join(work, "images")
    os.makedirs(out_dir)
    blip = Blip(captions)
    ns = mod.__dict__
    ns.update({"ldm_stable": ldm, "tokenizer": tok, "controller": controller, "vae": ldm.vae, "g_cpu": None,
               "device": torch.device("cpu"), "device1": torch.device("cpu"), "blip_device": "cpu",
               "dtype": torch.float32, "processor": blip, "model": blip, "prompt_texts": [],
               "img_output_path": out_dir, "json_path": os.path.join(fixture, "predictions.json")})
    run_code(st["assign"], ns, script)
    run_code([st["read_json"]], ns, script)
    x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0)
    real_path = os.path.join(fixture, image_name)
    gt = torch.zeros(1, img.shape[0], img.shape[1])
    if ds == "coco":
        data = (x, -1, [real_path])          # COCOClsDataset: img, label, img_path
    else:
        data = (x, -1, gt, [real_path])      # VOC*Dataset_seg: img, label, mask, path
    ns["data_loader_train"] = [data]
    run_code([st["loop"]], ns, script)
    print(name, "prompts:", ns["prompt_texts"])
    for s in unet.seen:
        assert s["dist"] <= 1e-5 * max(1.0, float(s["text"].abs().max())), ("compel's conditioning differs", s["dist"])
        assert int(s["t"]) == 100, s["t"]
    # the official loop prompted exactly our classes, each once
    assert sorted(s["pass"] for s in unet.seen) == list(range(len(passes))), [s["pass"] for s in unet.seen]
    assert sorted(ns["y"]) == sorted(p["class"]["name"] for p in passes), (ns["y"], [p["class"]["name"] for p in passes])

    mats = os.listdir(out_dir)
    assert len(mats) == 1, mats
    eval_ns = {"sio": sio, "np": np, "os": os, "predict_folder": out_dir, "num_cls": len(mod.embs) + 1,
               "threshold": BG_THRESHOLD, "name": os.path.splitext(mats[0])[0], "print": print}
    # the branch sits in compare's `for idx in ...` (its `continue` skips an
    # unreadable file): run it inside a one-pass loop
    body = eval_npy_branch(repo, ds, evaluation)
    loop = ast.For(target=ast.Name(id="_idx", ctx=ast.Store()),
                   iter=ast.List(elts=[ast.Constant(0)], ctx=ast.Load()), body=body, orelse=[])
    run_code([ast.fix_missing_locations(loop)], eval_ns, evaluation)
    tensor, predict = eval_ns["tensor"], eval_ns["predict"]
    # the official tensor is indexed by the official class list; ours by the
    # fixture's class file: the same names, fewer of them
    official = ["background"] + list(mod.embs)
    rows = [official.index(c) for c in classes]
    scores = tensor[rows]
    labels = np.array([rows.index(v) if v in rows else -1 for v in predict.ravel()]).reshape(predict.shape)
    assert (labels >= 0).all()
    seen_pass = {}
    for s in unet.seen:
        seen_pass[s["pass"]] = s["text"].numpy()[0]
    # ns["images"] is the stacked, resized, ×255 maps in y's order
    y = ns["y"]
    prompt_embeds = np.stack([seen_pass[k] for k in range(len(passes))])
    tensors = {"scores": scores.astype(np.float32), "labels": labels.astype(np.int32),
               "margin": top2_margin(scores), "prompt_embeds": prompt_embeds.astype(np.float32)}
    from common import save_safetensors
    save_safetensors(os.path.join(fixture, "ref.safetensors"), tensors)
    method["outputs"] = {"scores": {"compare": "float"}, "prompt_embeds": {"compare": "float"},
                         "labels": {"compare": "labels", "margin": "margin"}}
    method["generator"] = {"script": "tests/tools/methods/diffsegmenter.py",
                           "repos": {"VCG-team/DiffSegmenter": git_commit(repo),
                                     "damian0815/compel": git_commit(compel_dir)},
                           "torch": torch.__version__, "scipy": __import__("scipy").__version__}
    method["notes"] = (
        "open_vocabulary/%s/%s's per-image loop run unmodified (syntax tree) on our UNet's attention for "
        "each class of the JSON (read_json, image_similarity + text_similarity: %s), prompts %s; "
        "%s's do_python_eval npy branch at background %.2f gives scores (maps/255, background row) and "
        "labels; prompt_embeds is what compel (via ptp_utils.text2image_ldm_stable) made of our text "
        "encoder's outputs, in pass order (%s). dtype float32 (the official float16)."
        % (ds, script, y, ns["prompt_texts"], evaluation, BG_THRESHOLD, [p["class"]["name"] for p in passes]))
    json.dump(method, open(os.path.join(fixture, "method.json"), "w"), indent=1, sort_keys=True)
    shutil.rmtree(work)
    for m in list(sys.modules):
        if m.startswith("diffsegmenter_"):
            del sys.modules[m]
    ptp_utils.register_attention_control = real_register
    return fixture


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default="/work/ext/diffsegmenter")
    ap.add_argument("--compel", default="/work/ext/compel-2.0.2")
    ap.add_argument("--case", action="append")
    ap.add_argument("--half", action="store_true",
                    help="measure only: replay the attention as float16 (what the official float16 UNet "
                         "stores and aggregates) and report how far the results move from the fixtures")
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(a.compel, "src"))
    global HALF
    HALF = a.half
    for c in CASES:
        if a.case and c[0] not in a.case:
            continue
        if not a.half:
            print("wrote", case(a.repo, a.compel, *c))
            continue
        scratch = tempfile.mkdtemp(prefix="diffsegmenter-half-")
        half = load_safetensors(os.path.join(case(a.repo, a.compel, *c, root=scratch), "ref.safetensors"))
        ref = load_safetensors(os.path.join(ROOT, "tests", "fixtures", "methods", "diffusion_crossattn-" + c[0],
                                            "ref.safetensors"))
        d = np.abs(half["scores"] - ref["scores"]).max() / np.abs(ref["scores"]).max()
        n = int((half["labels"] != ref["labels"]).sum())
        print("%s: float16 attention: scores rel. %.3g, %d of %d labels differ" % (c[0], d, n, ref["labels"].size))
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
