"""Fixtures of Global-Local CLIP (recipes/global_local.lua) from its official
code (Seonghoon-Yu/Zero-shot-RIS), end to end: the script's own main() over
a tiny refer-layout dataset, with SAM's automatic masks as the proposals.

    /usr/bin/python3 tests/tools/methods/global_local.py [--ext DIR]

DIR (default $FMSEG_EXT, else ../ext beside the repository) holds, as
fetched and unmodified (a checkout, or an extracted tree with a COMMIT
file): Zero-shot-RIS/ (Our_method_with_free_solo.py, model/, utils.py,
data/, refer/, freesolo/modeling/solov2/utils.py, third_party/modified_CLIP),
segment-anything/ and cocoapi/ (its PythonAPI with pycocotools built in place,
for refer.py).

What runs unmodified: Our_method_with_free_solo.main (the loop: the image
pipeline, the masked crops, the v / r ensembles, the argmax, Compute_IoU,
the overall / mean IoU it writes to result_log/), ReferDataset and REFER on
the tiny dataset, CLIPViTFM (token masking from block 9, the crops'
embeddings, calculate_score) on the modified CLIP, extract_noun_phrase.
Stand-ins, for what cannot be had here:
- FreeSOLO (Trainer.build_model): segment-anything's
  SamAutomaticMaskGenerator on the tiny SAM of sam_amg.py gives the masks,
  in its records' order; the boxes are FreeSOLO's own rule (solov2.py,
  inference_single_image's get-bbox-from-mask lines, with its
  center_of_mass from freesolo/modeling/solov2/utils.py). The fixtures'
  `regions:` runs fmseg's sam_amg with the same settings.
- clip.load("ViT-B/32"): the tiny CLIP (clip-b16-tiny12: 12 vision blocks,
  patch 16, so the token masking has ViT-B's depth) converted to openai's
  layout (common.save_openai_checkpoint).
- spaCy's en_core_web_lg: a parse table of the fixtures' sentences
  (PARSES), hand-annotated in spaCy's scheme (tokens, heads, noun chunks)
  as its English models parse such fragments; extract_noun_phrase runs on
  it. Each sentence takes another branch of extract_noun_phrase (root in a
  chunk, root's first child's chunk, whole sentence).
- detectron2's config / checkpointer and h5py: unused names.

Outputs:
- tests/fixtures/methods/global_local-<dataset>/: one sentence's run
  (method.json `expression`): global and local (the token-masked and crop
  features), visual (their v-mix), text (the r-mix), scores (the logits of
  calculate_score), index (the argmax) and mask (the chosen proposal).
- tests/fixtures/global_local-refer/: the dataset (refcoco, refcocog), and
  official.json with per sentence the intersection and union Compute_IoU
  added and the noun phrase, and per dataset oIoU / mIoU and the line the
  script wrote; tests/lua/test_global_local.lua runs `fmseg eval` on it.
"""
import importlib.util
import json
import os
import pickle
import shutil
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import official_stubs  # noqa: E402

CLIP_DIR = os.path.join(common.MODELS, "clip-b16-tiny12")
SAM_DIR = os.path.join(common.MODELS, "sam-amg-tiny")
OUT = os.path.join(common.ROOT, "tests", "fixtures", "global_local-refer")

# segment-anything's generator settings (as corrclip.py): few points,
# thresholds between the random model's values
AMG = dict(points_per_side=8, points_per_batch=64, pred_iou_thresh=0.05, stability_score_thresh=0.3,
           stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=0, min_mask_region_area=0)

# spaCy-style parses: tokens, the index of each token's head (the root its
# own), noun chunks as [start, end) token spans
PARSES = [
    {"tokens": ["the", "man", "in", "a", "red", "shirt", "on", "the", "left", "."],
     "heads": [1, 1, 1, 5, 5, 2, 1, 8, 6, 1], "chunks": [[0, 2], [3, 6], [7, 9]]},
    {"tokens": ["cat", "sleeping", "on", "the", "sofa"],
     "heads": [0, 0, 1, 4, 2], "chunks": [[0, 1], [3, 5]]},
    {"tokens": ["the", "dog", "is", "lying", "on", "the", "grass"],
     "heads": [1, 3, 3, 3, 3, 6, 4], "chunks": [[0, 2], [5, 7]]},
    {"tokens": ["second", "from", "left"],
     "heads": [0, 0, 1], "chunks": [[2, 3]]},
    {"tokens": ["woman", "'s", "bag", ",", "right"],
     "heads": [2, 0, 2, 2, 2], "chunks": [[0, 3]]},
]

H, W = 150, 200
IMAGE = "COCO_train2014_000000000042.jpg"
# three refs on one image: a box, two overlapping polygons (their overlap
# sums to 2, which ReferDataset's `ref_mask == 1` leaves out), a triangle
ANNS = [
    {"id": 501, "segmentation": [[20.0, 30.0, 110.0, 30.0, 110.0, 140.0, 20.0, 140.0]]},
    {"id": 502, "segmentation": [[100.0, 10.0, 190.0, 10.0, 190.0, 80.0, 100.0, 80.0],
                                 [150.0, 50.0, 198.0, 50.0, 198.0, 120.0, 150.0, 120.0]]},
    {"id": 503, "segmentation": [[60.0, 100.0, 180.0, 145.0, 40.0, 145.0]]},
]
SENTENCES = [  # ref index, raw sentence
    (0, "The man in a red shirt on the left."),
    (0, "cat sleeping on the sofa"),
    (1, "the dog is lying on the grass"),
    (1, "second from left"),
    (2, "Woman's bag, right"),
]
DATASETS = {"refcoco": ("unc", "val"), "refcocog": ("umd", "val")}
METHOD_CASES = {"refcoco": 0, "refcocog": 2}   # the sentence each method fixture runs


# ---- spaCy -------------------------------------------------------------------------

class Token:
    def __init__(self, doc, i):
        self.doc, self.i, self.text = doc, i, doc.parse["tokens"][i]

    @property
    def head(self):
        return self.doc[self.doc.parse["heads"][self.i]]

    @property
    def children(self):
        return (self.doc[j] for j, h in enumerate(self.doc.parse["heads"]) if h == self.i and j != self.i)


class Span:
    def __init__(self, doc, start, end):
        self.start, self.end = start, end
        self.text = " ".join(doc.parse["tokens"][start:end])


class Doc:
    def __init__(self, parse):
        self.parse = parse

    def __len__(self):
        return len(self.parse["tokens"])

    def __getitem__(self, i):
        return Token(self, i)

    def __iter__(self):
        return (Token(self, i) for i in range(len(self)))

    @property
    def noun_chunks(self):
        return (Span(self, a, b) for a, b in self.parse["chunks"])


def nlp(text):
    """spacy.load('en_core_web_lg')(text), from PARSES (matched ignoring
    whitespace: the loop parses the raw sentence, then its tokens joined)."""
    key = "".join(text.split())
    for p in PARSES:
        if "".join(p["tokens"]) == key:
            return Doc(p)
    raise KeyError(f"no parse for {text!r}")


# ---- FreeSOLO ------------------------------------------------------------------------

def freesolo_boxes(seg_masks, center_of_mass):
    """solov2.py inference_single_image's boxes from its masks (N, H, W) bool."""
    import torch
    width_proj = seg_masks.max(1)[0]
    height_proj = seg_masks.max(2)[0]
    width, height = width_proj.sum(1), height_proj.sum(1)
    center_ws, _ = center_of_mass(width_proj[:, None, :])
    _, center_hs = center_of_mass(height_proj[:, :, None])
    return torch.stack([center_ws - 0.5 * width, center_hs - 0.5 * height,
                        center_ws + 0.5 * width, center_hs + 0.5 * height], 1)


class Boxes:
    def __init__(self, t):
        self.tensor = t

    def __iter__(self):
        return iter(self.tensor)


class Instances:
    pass


class SamAsFreeSOLO:
    """Trainer.build_model(cfg): called with the loader's batch, returns
    [{'instances': pred_masks, pred_boxes}] for its image."""

    def __init__(self, generator, image_dir, center_of_mass, record):
        self.generator, self.image_dir, self.com, self.record = generator, image_dir, center_of_mass, record

    def eval(self):
        return self

    def __call__(self, batch):
        import torch
        from PIL import Image
        name = batch[0]["file_name"][0]
        img = np.asarray(Image.open(os.path.join(self.image_dir, name)).convert("RGB"))
        records = self.generator.generate(img)
        masks = torch.from_numpy(np.stack([r["segmentation"] for r in records])).bool()
        inst = Instances()
        inst.pred_masks = masks
        inst.pred_boxes = Boxes(freesolo_boxes(masks, self.com))
        self.record["proposals"] = len(records)
        return [{"instances": inst}]


def load_file(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MODEL = [None]   # what Trainer.build_model returns: this run's SamAsFreeSOLO
RUN = {}         # this run's watched values (the watchers are installed once)


def install_stubs():
    mod = official_stubs.module
    official_stubs.einops()
    official_stubs.ftfy()
    mod("spacy", load=lambda name: nlp)
    mod("h5py")

    class Cfg:
        OUTPUT_DIR = "training_dir"

        class MODEL:
            WEIGHTS = ""

        def merge_from_file(self, *a):
            pass

        def merge_from_list(self, *a):
            pass

        def freeze(self):
            pass

    mod("detectron2.config", get_cfg=Cfg)
    mod("detectron2.engine", default_setup=lambda cfg, args: None)

    class Checkpointer:
        def __init__(self, *a, **k):
            pass

        def resume_or_load(self, *a, **k):
            return {}

    mod("detectron2.checkpoint", DetectionCheckpointer=Checkpointer)
    mod("freesolo", add_solo_config=lambda cfg: None)

    class BaselineTrainer:
        @staticmethod
        def build_model(cfg):
            return MODEL[0]

    mod("freesolo.engine.trainer", BaselineTrainer=BaselineTrainer)
    mod("freesolo.data.datasets.builtin")
    mod("freesolo.modeling.solov2", PseudoSOLOv2=None)


# ---- the dataset ---------------------------------------------------------------------

def write_dataset(root, img):
    """root/<dataset>/{instances.json, refs(<split_by>).p} and the image
    (PNG bytes under refer's .jpg name, so that every decoder reads the same
    pixels) in root/images/mscoco/images/train2014/."""
    from PIL import Image
    image_dir = os.path.join(root, "images", "mscoco", "images", "train2014")
    os.makedirs(image_dir, exist_ok=True)
    Image.fromarray(img).save(os.path.join(image_dir, IMAGE), format="PNG")
    anns = [dict(a, image_id=42, category_id=1, iscrowd=0, area=0.0, bbox=[0, 0, 1, 1]) for a in ANNS]
    inst = {"images": [{"id": 42, "file_name": IMAGE, "height": H, "width": W}], "annotations": anns,
            "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}]}
    for dataset, (split_by, split) in DATASETS.items():
        d = os.path.join(root, dataset)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "instances.json"), "w") as f:
            json.dump(inst, f)
        refs = []
        for k, a in enumerate(ANNS):
            sents = [{"sent_id": 1000 + i, "raw": raw, "sent": raw.lower().strip("."),
                      "tokens": raw.lower().split()} for i, (r, raw) in enumerate(SENTENCES) if r == k]
            refs.append({"ref_id": k, "ann_id": a["id"], "image_id": 42, "split": split, "category_id": 1,
                         "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
                         "file_name": IMAGE.replace(".jpg", f"_{a['id']}.jpg")})
        with open(os.path.join(d, f"refs({split_by}).p"), "wb") as f:
            pickle.dump(refs, f, protocol=2)


# ---- running the official loop ---------------------------------------------------------

def run_official(ext, root, dataset, ckpt, sam, tmp):
    """Our_method_with_free_solo.main on DATASET, watched: per sentence the
    features, scores, the chosen mask, Compute_IoU's I and U and the
    phrase; and the line it wrote."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator
    repo = os.path.join(ext, "Zero-shot-RIS")
    solo_utils = load_file("freesolo_solov2_utils", os.path.join(repo, "freesolo", "modeling", "solov2",
                                                                 "utils.py"))
    record, items = {}, []
    RUN.update(record=record, items=items)
    MODEL[0] = SamAsFreeSOLO(SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **AMG),
                             os.path.join(root, "images", "mscoco", "images", "train2014"),
                             solo_utils.center_of_mass, record)
    if "spacy" not in sys.modules:
        install_stubs()
    for p in (os.path.join(repo, "third_party", "modified_CLIP"), repo):
        if p not in sys.path:
            sys.path.insert(0, p)
    import clip
    # clip.load(name) as it ends for a state dict on the CPU (its file
    # fallback re-reads a handle that torch.jit.load has consumed)
    clip.load = lambda name, *a, **k: (clip.model.build_model(torch.load(ckpt, map_location="cpu")).float(), None)
    main_mod = sys.modules.get("Our_method_with_free_solo") or __import__("Our_method_with_free_solo")
    import model.backbone as bb
    if not getattr(bb.CLIPViTFM, "_fmseg_watched", False):
        forward, score = bb.CLIPViTFM.forward, bb.CLIPViTFM.calculate_score

        def watched_forward(self, image, pred_masks, masking_block=None, masking_type="token_masking"):
            out = forward(self, image, pred_masks, masking_block=masking_block, masking_type=masking_type)
            RUN["record"]["global" if masking_type == "token_masking" else "local"] = out.detach().clone()
            return out

        def watched_score(self, visual, text, *a, **k):
            s = score(self, visual, text, *a, **k)
            rec = RUN["record"]
            RUN["items"].append({"visual": visual.detach().clone(), "text": text.detach().clone(),
                                 "scores": s.detach().clone(), "global": rec["global"], "local": rec["local"]})
            return s

        bb.CLIPViTFM.forward, bb.CLIPViTFM.calculate_score = watched_forward, watched_score
        bb.CLIPViTFM._fmseg_watched = True
    compute, extract = main_mod.Compute_IoU, main_mod.extract_noun_phrase

    def watched_iou(pred, target, cum_I, cum_U, m_IoU):
        t = target.type(torch.bool).squeeze(0) if target.dtype != torch.bool else target
        items[-1].update(mask=pred.detach().clone(), I=int(torch.logical_and(pred, t).sum()),
                         U=int(torch.logical_or(pred, t).sum()))
        return compute(pred, target, cum_I, cum_U, m_IoU)

    phrases = []

    def watched_extract(text, nlp_, need_index=False):
        out = extract(text, nlp_, need_index)
        phrases.append((text, out[0]))
        return out

    main_mod.Compute_IoU, main_mod.extract_noun_phrase = watched_iou, watched_extract
    args = main_mod.default_argument_parser().parse_args(
        ["--dataset", dataset, "--split", DATASETS[dataset][1], "--refer_data_root", root + "/"])
    args.opts = []
    cwd = os.getcwd()
    os.makedirs(os.path.join(tmp, "result_log"), exist_ok=True)
    os.chdir(tmp)
    try:
        with torch.no_grad():
            main_mod.main(args, main_mod.Height, main_mod.Width)
    finally:
        os.chdir(cwd)
        main_mod.Compute_IoU, main_mod.extract_noun_phrase = compute, extract
    with open(os.path.join(tmp, "result_log", "our_method_with_free_solo.txt")) as f:
        log = f.read().strip().splitlines()[-1]
    os.remove(os.path.join(tmp, "result_log", "our_method_with_free_solo.txt"))
    assert len(items) == len(SENTENCES) == len(phrases), (len(items), len(phrases))
    for it, (sentence, phrase) in zip(items, phrases):
        it["sentence"], it["phrase"] = sentence, phrase
    return items, log, record["proposals"]


def score_margin(scores):
    s = np.sort(scores.numpy().ravel())[::-1]
    return float((s[0] - s[1]) / abs(s[0]))


def main():
    import argparse

    import torch
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ext", default=os.environ.get("FMSEG_EXT", os.path.join(common.ROOT, "..", "ext")))
    a = ap.parse_args()
    torch.set_num_threads(2)
    ext = os.path.abspath(a.ext)
    sys.path.insert(0, os.path.join(ext, "segment-anything"))
    sys.path.insert(0, os.path.join(ext, "cocoapi", "PythonAPI"))
    import sam_amg
    sam = sam_amg.build_original(SAM_DIR)
    img = common.test_image(H, W)
    repos = {"Seonghoon-Yu/Zero-shot-RIS": common.git_commit(os.path.join(ext, "Zero-shot-RIS")),
             "facebookresearch/segment-anything": common.git_commit(os.path.join(ext, "segment-anything")),
             "cocodataset/cocoapi": common.git_commit(os.path.join(ext, "cocoapi"))}
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    write_dataset(OUT, img)
    official = {"generator": {"script": "tests/tools/methods/global_local.py", "repos": repos,
                              "torch": torch.__version__.split("+")[0]},
                "amg": AMG, "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = common.save_openai_checkpoint(CLIP_DIR, os.path.join(tmp, "clip.pt"))
        for dataset in DATASETS:
            items, log, proposals = run_official(ext, OUT, dataset, ckpt, sam, tmp)
            sents = {}
            ious = []
            for (ref, raw), it in zip(SENTENCES, items):
                sid = str(1000 + SENTENCES.index((ref, raw)))
                sents[sid] = {"raw": raw, "sentence": it["sentence"], "noun_phrase": it["phrase"],
                              "intersection": it["I"], "union": it["U"],
                              "index": int(torch.argmax(it["scores"])),
                              "score_margin": score_margin(it["scores"])}
                ious.append(it["I"] / it["U"] if it["U"] else 0.0)
            inter = sum(s["intersection"] for s in sents.values())
            union = sum(s["union"] for s in sents.values())
            official["datasets"][dataset] = {"sentences": sents, "oIoU": inter / union,
                                             "mIoU": float(np.mean(ious)), "log": log,
                                             "proposals": proposals}
            k = METHOD_CASES[dataset]
            it = items[k]
            v = 0.85 if dataset == "refcocog" else 0.95
            margins = [s["score_margin"] for s in sents.values()]
            notes = (f"Our_method_with_free_solo.py main() on a tiny {dataset} ({DATASETS[dataset][0]}, "
                     f"v = {v}, r = 0.5), sentence {SENTENCES[k][1]!r} (noun phrase {it['phrase']!r}); "
                     f"{proposals} SAM masks (segment-anything's generator on sam-amg-tiny, the settings of "
                     f"`regions`) as FreeSOLO's proposals with FreeSOLO's boxes; clip-b16-tiny12 as "
                     f"ViT-B/32 (token masking from block 9 of 12). The argmax's relative top-2 score "
                     f"margin: {margins[k]:.3g} (smallest of the dataset's {len(margins)} sentences "
                     f"{min(margins):.3g}); every sentence's argmax: proposals "
                     f"{sorted({s['index'] for s in sents.values()})} (the tiny random CLIP favours the "
                     f"largest mask whatever the text; the scores of all proposals are compared).")
            method = {
                "recipe": "global_local", "params": {"v": v, "r": 0.5, "masking_block": 9},
                "expression": SENTENCES[k][1],
                "regions": {"recipe": "sam_amg", "params": dict(AMG, output_mode="binary_mask")},
                "models": {"clip": "../models/clip-b16-tiny12", "sam": "../models/sam-amg-tiny"},
                "outputs": {n: {"compare": "float"} for n in ("global", "local", "visual", "text", "scores")},
                "generator": official["generator"], "notes": notes,
            }
            method["outputs"]["index"] = {"compare": "exact"}
            method["outputs"]["mask"] = {"compare": "exact"}
            tensors = {"global": it["global"].float().numpy(), "local": it["local"].float().numpy(),
                       "visual": it["visual"].float().numpy(), "text": it["text"][0].float().numpy(),
                       "scores": it["scores"][:, 0].float().numpy(),
                       "index": np.array([int(torch.argmax(it["scores"]))], dtype=np.int32),
                       "mask": it["mask"].numpy().astype(np.uint8)}
            common.write_fixture("global_local-" + dataset, method, img, tensors)
            print(f"global_local-{dataset}: {notes} Log: {log}")
    with open(os.path.join(OUT, "official.json"), "w") as f:
        json.dump(official, f, indent=1, sort_keys=True)
    print(json.dumps(official["datasets"], indent=1)[:3000])


if __name__ == "__main__":
    main()
