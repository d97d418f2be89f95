"""Trident method fixtures (tests/fixtures/methods/trident-<case>/) from the
official code: YuHengsss/Trident trident.py (class Trident) with the
open_clip, segment_anything, seg_utils, myutils and pamr it carries, run
unmodified through its configs' mmseg test pipeline (mm_stubs.py), end to
end.

    /usr/bin/python3 tests/tools/methods/trident.py [--ext DIR] [CASE...]

DIR (default $FMSEG_EXT, else ../ext beside the repository) holds, as
fetched (checkouts, or extracted trees with a COMMIT file): trident/
(YuHengsss/Trident) and dino/ (facebookresearch/dino, whose
vision_transformer.py is what torch.hub.load('facebookresearch/dino:main',
'dino_vitb16') builds). Trident's own segment_anything comes first on
sys.path (its image encoder keeps the last block's attention and values,
last_attn / last_v, which Trident aggregates with).

What is not the official run (only where the repository downloads or needs
a GPU):
- create_model('ViT-B/16', pretrained='openai', precision='fp16') loads the
  tiny CLIP (models/clip-b16-tiny, converted to openai's checkpoint layout)
  through Trident's own open_clip.load_openai_model, in float32;
- torch.hub.load(..., 'dino_vitb16') returns the tiny DINO built by
  facebookresearch/dino's VisionTransformer (proxyclip.py's hub_dino):
  models/dino-b16-tiny, made here (ViT-B/16's layout at width 64), or
  models/dino-b8-tiny for the case that exercises a VFM grid twice CLIP's;
- sam_model_registry['vit_b'](checkpoint=...) builds the tiny SAM with
  sam_amg.py's builder (segment-anything's modules as Trident carries them,
  weights loaded strictly): models/sam-trident-tiny, made here. Trident
  hard-codes SAM ViT-B's 64 x 64 embedding grid (sam_hw = 64), its 16-pixel
  patch (get_sam_feat(tmp_img, 16)) and vit_b's 12 heads (sam_heads), so the
  tiny SAM keeps the 1024 input, 16-pixel patches and 12 heads (width 96,
  two blocks, the last one global);
- everything runs in float32 on the CPU: trident.py casts CLIP, DINO, SAM's
  image encoder and the inputs to float16 for CUDA; .half() is a no-op here
  (official_stubs.float32), but an integer tensor's gives float32
  (sam_refinement casts its label map to half only to resize it, nearest,
  which torch 1.13 cannot do for integers on the CPU).

Cases (CASES): trident-voc (cfg_voc21.py's settings, a non-square image
that preprocess_image stretches, four overlapping windows), trident-city
(cfg_city_scapes.py's: SAM per half, cos_fac 3.0 with τ clipped at 0.9,
refine_neg_cos False, though no row's τ is negative on the tiny SAM: that
branch is tests/lua/test_trident.lua's), trident-dino8-refine (DINO ViT-B/8's grid, twice
CLIP's, and sam_refinement composed as the configs' `refine:` step).

The run is watched, never changed: get_trident_seg's output is kept (the
logits before logit_scale), and VisionTransformer.get_sam_sim /
custom_attn record how close SAM's value similarities come to their
per-row threshold and the DINO similarities to beta x their mean (the two
cuts of the method), reported in method.json's notes.
"""
import argparse
import contextlib
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import mm_stubs  # noqa: E402
import official_stubs  # noqa: E402

CLIP_DIR = os.path.join(common.MODELS, "clip-b16-tiny")
DINO16 = dict(width=64, heads=2, layers=2, patch=16, grid=14)    # ViT-B/16's layout, 224 px
DINO16_DIR = os.path.join(common.MODELS, "dino-b16-tiny")
SAM_NAME = "sam-trident-tiny"
SAM_VISION = dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=12, image_size=1024, patch_size=16,
                  window_size=14, global_attn_indexes=[1], mlp_ratio=4.0, output_channels=64, num_pos_feats=32)

# Background first (synonyms only there, as Trident's cls_voc21.txt), then
# objects; Trident's class files separate synonyms with "; ".
VOC = [["sky", "tree"], ["astronaut"], ["grass"], ["horse"], ["flag"]]
CITY = [["road"], ["astronaut"], ["sky"], ["tree"]]

CASES = {
    "trident-voc": dict(
        size=(100, 140), classes=VOC, scale=(2048, 336), dino="b16", prob_thd=0.2,
        args=dict(slide_crop=336, slide_stride=224, cos_fac=1.2, refine_neg_cos=True),
        notes="cfg_voc21.py's settings (base_config.py: beta 1.2, cos_fac 1.2, refine_neg_cos, crop 336 / "
              "stride 224; background of stuff words with prob_thd) on a 140x100 image: resized to 470x336, "
              "stretched by preprocess_image to 480x352 (multiples of 16), four 336 windows (two rows, two "
              "columns, overlapping); SAM sees the image stretched to 144x112, 1024x796 inside its 1024 "
              "input: a 64x49 grid"),
    "trident-city": dict(
        size=(96, 200), classes=CITY, scale=(2048, 224), dino="b16", prob_thd=0.0,
        args=dict(slide_crop=336, slide_stride=224, cos_fac=3.0, refine_neg_cos=False,
                  dataset_type="CityscapesDataset"),
        notes="cfg_city_scapes.py's settings (cos_fac 3.0, refine_neg_cos False, dataset_type "
              "CityscapesDataset: SAM sees the two halves of the image separately) on a 200x96 image: "
              "resized to 467x224, stretched by preprocess_image to 480x240 and raised to the crop, 480x336; "
              "two windows; SAM's halves of 104x96 are 1024x945 inside its input (64x59 grids, 128x59 "
              "together); no background. With cos_fac 3.0 most rows' threshold is clipped at 0.9; none is "
              "negative, so refine_neg_cos False changes nothing here"),
    "trident-dino8-refine": dict(
        size=(96, 128), classes=VOC, scale=(2048, 336), dino="b8", prob_thd=0.0,
        args=dict(slide_crop=336, slide_stride=224, cos_fac=1.2, refine_neg_cos=True),
        refine=dict(coarse_thresh=0.2, minimal_area=20, sam_mask_coff=0.005, sam_iou_thresh=-1.0),
        notes="A 128x96 image (sides multiples of 16: neither preprocess_image nor the SAM input's "
              "stretch resizes it) at 448x336, two windows; DINO ViT-B/8's layout as the VFM (tiny "
              "dino-b8-tiny; Trident loads ViT-B/16, but its code takes any patch): a 42x42 grid per "
              "window, twice CLIP's 21x21, so guidance_attn splices at ratio 2 (56x42) before resizing to "
              "SAM's 64x48 grid; then sam_refinement (eval.py --sam_refine) with its defaults but "
              "minimal_area 20 (on the 2x downsampled map) and sam_iou_thresh -1.0 (the tiny SAM's IoU head "
              "predicts -2.1 to -0.64 here: 5 of the 12 components are kept, 7 fail)"),
}


# ---- the tiny models ---------------------------------------------------------------------

def proxy_module():
    import proxyclip
    return proxyclip


def make_dino16(seed=21):
    """models/dino-b16-tiny: proxyclip.py's DINO maker at ViT-B/16's patch."""
    px = proxy_module()
    saved = px.DINO, px.DINO_DIR
    px.DINO, px.DINO_DIR = DINO16, DINO16_DIR
    try:
        if not os.path.exists(os.path.join(DINO16_DIR, "model.safetensors")):
            px.make_dino(seed)
    finally:
        px.DINO, px.DINO_DIR = saved
    return DINO16_DIR


def hub_dino(which, dino_repo):
    """What torch.hub.load('facebookresearch/dino:main', ...) builds, at the
    tiny width with the tiny weights (proxyclip.py's hub_dino)."""
    px = proxy_module()
    if which == "b8":
        return px.hub_dino(dino_repo)
    saved = px.DINO, px.DINO_DIR
    px.DINO, px.DINO_DIR = DINO16, DINO16_DIR
    try:
        return px.hub_dino(dino_repo)
    finally:
        px.DINO, px.DINO_DIR = saved


def sam_module():
    import sam_amg
    sam_amg.VISION = dict(sam_amg.VISION, **SAM_VISION)
    return sam_amg


def make_sam():
    sa = sam_module()
    out = os.path.join(common.MODELS, SAM_NAME)
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        sa.make_sam(SAM_NAME)
    return out


# ---- the official segmentor ------------------------------------------------------------------

def load_official(ext, ckpt):
    import torch
    trident_repo = os.path.join(ext, "trident")
    mm_stubs.install()
    sys.path.insert(0, trident_repo)
    here = sys.modules.get("trident")
    if here is not None and os.path.dirname(os.path.abspath(here.__file__)) != os.path.abspath(trident_repo):
        del sys.modules["trident"]               # this generator's own name, when imported as a module
    import trident
    from open_clip import load_openai_model
    trident.create_model = lambda name, pretrained=None, precision="fp32", **k: load_openai_model(
        ckpt, precision="fp32", device="cpu")
    sam_dir = os.path.join(common.MODELS, SAM_NAME)
    trident.sam_model_registry = {"vit_b": lambda checkpoint=None: sam_module().build_original(sam_dir)}
    return trident, torch


def watch(record):
    """Records how close the method's two cuts come to flipping: SAM's value
    similarities against their per-row threshold (get_sam_sim) and the DINO
    similarities against beta x their mean (custom_attn's S' < 0)."""
    import torch
    import open_clip.transformer as ot
    vt = ot.VisionTransformer
    real_sim = vt.get_sam_sim

    def get_sam_sim(sam_v, sam_attn, cos_fac, heads, refine_neg_cos=True):
        v = torch.nn.functional.normalize(sam_v.flatten(2, 3), dim=-1)
        sim = torch.einsum("b h m c, b h n c -> b h m n", v, v)
        thr = cos_fac * sim.mean(dim=1, keepdim=True).mean(dim=-1, keepdim=True)
        record.setdefault("neg_rows", []).append(int((thr < 0).sum()))
        record.setdefault("clipped_rows", []).append(int((thr > 0.9).sum()))
        if not refine_neg_cos:
            thr = torch.where(thr < 0.0, 0.6, thr)
        thr = torch.where(thr > 0.9, 0.9, thr)
        gap = (sim - thr).abs()
        record["sam_gap"] = min(record.get("sam_gap", np.inf), float(gap.min()))
        record["sam_near"] = record.get("sam_near", 0) + int((gap < 1e-6).sum())
        record["sam_kept"] = record.get("sam_kept", []) + [round(float((sim > thr).float().mean()), 3)]
        return real_sim(sam_v, sam_attn, cos_fac, heads, refine_neg_cos)
    vt.get_sam_sim = staticmethod(get_sam_sim)
    real_attn = vt.custom_attn

    def custom_attn(self, attn_layer, x, ex_feats=None, beta=1.2, gamma=3.0, token_size=(16, 16), **kwargs):
        q_k = torch.nn.functional.normalize(ex_feats.flatten(2, 3), dim=1)
        s = torch.einsum("b c m, b c n -> b m n", q_k, q_k)
        s = (s - torch.mean(s) * beta) * gamma
        record["dino_gap"] = min(record.get("dino_gap", np.inf), float(s.abs().min()))
        record["dino_near"] = record.get("dino_near", 0) + int((s.abs() < 1e-5).sum())
        record["windows"] = int(s.shape[0])
        return real_attn(self, attn_layer, x, ex_feats=ex_feats, beta=beta, gamma=gamma, token_size=token_size,
                         **kwargs)
    vt.custom_attn = custom_attn
    return lambda: (setattr(vt, "get_sam_sim", staticmethod(real_sim)), setattr(vt, "custom_attn", real_attn))


def refinement_margin(tu, record):
    """Wraps seg_utils' map_refinement_coarse to keep the class map Trident
    takes the refined argmax of (as trident_refine.py)."""
    real = tu.map_refinement_coarse

    def observed(*a, **k):
        out = real(*a, **k)
        record["whole"] = out[1].clone()
        return out
    tu.map_refinement_coarse = observed
    return lambda: setattr(tu, "map_refinement_coarse", real)


@contextlib.contextmanager
def float32(torch):
    """official_stubs.float32 (.half() a no-op), except that an integer
    tensor's .half() gives float32: sam_refinement casts its label map to
    float16 only to resize it (nearest; the labels are exact either way),
    which torch 1.13 cannot do for integers on the CPU."""
    with official_stubs.float32():
        plain = torch.Tensor.half
        torch.Tensor.half = lambda self, *a, **k: self if self.is_floating_point() else self.float()
        try:
            yield
        finally:
            torch.Tensor.half = plain


def run_official(trident, torch, case, dino_repo, image_path, name_path):
    import seg_utils.utils as tu
    refine = case.get("refine")
    hub = torch.hub.load
    torch.hub.load = lambda repo, name, *a, **k: hub_dino(case["dino"], dino_repo)
    record = {}
    unwatch = watch(record)
    unrefine = refinement_margin(tu, record)
    real_refinement = trident.sam_refinement

    def sam_refinement(*a, **k):
        out = real_refinement(*a, **k)
        record["boxes"] = (out[3].reshape(-1, 4).numpy().astype(np.int32) if len(out[3])
                           else np.zeros((0, 4), np.int32))
        return out
    trident.sam_refinement = sam_refinement
    args = dict(case["args"])
    try:
        with float32(torch):
            seg = trident.Trident(
                clip_type="openai", model_type="ViT-B/16", vfm_model="dino", name_path=name_path,
                device=torch.device("cpu"), prob_thd=case["prob_thd"], logit_scale=40, beta=1.2, gamma=3.0,
                sam_refinement=bool(refine), sam_model_type="vit_b", sam_ckpt=None,
                **(dict(coarse_thresh=refine["coarse_thresh"], minimal_area=refine["minimal_area"],
                        sam_mask_coff=refine["sam_mask_coff"], sam_iou_thresh=refine["sam_iou_thresh"])
                   if refine else {}),
                **args)
            data = mm_stubs.test_pipeline(image_path, case["scale"])
            sample, prob_thd, scores = mm_stubs.test_step_tuned(seg, data, "get_trident_seg", case["prob_thd"])
    finally:
        torch.hub.load = hub
        trident.sam_refinement = real_refinement
        unwatch()
        unrefine()
    return seg, sample, scores, prob_thd, record


def fmseg_params(case, prob_thd):
    a = case["args"]
    p = dict(logit_scale=40, prob_thd=prob_thd, slide_crop=a["slide_crop"], slide_stride=a["slide_stride"],
             short_side=min(case["scale"]), long_side=max(case["scale"]), beta=1.2, gamma=3.0,
             cos_fac=a["cos_fac"], refine_neg_cos=a["refine_neg_cos"],
             sam_halves=a.get("dataset_type") == "CityscapesDataset", templates="imagenet")
    return p


def make_case(name, case, ext, ckpt, tmp):
    trident, torch = load_official(ext, ckpt)
    h, w = case["size"]
    lines = ["; ".join(c) for c in case["classes"]]
    img, image_path, name_path = common.write_inputs(tmp, name, h, w, lines)
    seg, sample, logits, prob_thd, record = run_official(trident, torch, case, os.path.join(ext, "dino"),
                                                          image_path, name_path)
    labels = sample.pred_sem_seg.data[0].numpy().astype(np.int32)
    refine = case.get("refine")
    models = {"clip": "../models/clip-b16-tiny", "sam": "../models/" + SAM_NAME,
              "vfm": "../models/" + {"b16": "dino-b16-tiny", "b8": "dino-b8-tiny"}[case["dino"]]}
    repos = {"YuHengsss/Trident": common.git_commit(os.path.join(ext, "trident")),
             "facebookresearch/dino": common.git_commit(os.path.join(ext, "dino"))}
    clear = (f"SAM value similarities within {record['sam_gap']:.2g} of their row threshold at the closest "
             f"({record['sam_near']} within 1e-6; kept shares {record['sam_kept']}; rows with a negative "
             f"threshold {record['neg_rows']}, above 0.9 {record['clipped_rows']}), DINO's S' within "
             f"{record['dino_gap']:.2g} of 0 at the closest ({record['dino_near']} within 1e-5, "
             f"{record['windows']} windows in one batch: one mean over all)")
    if refine:
        scores = sample.seg_logits.data.float().numpy()
        whole = record.get("whole")
        if whole is not None:
            s = np.sort(whole.numpy(), axis=0)
            margin = (s[-1] - s[-2]).astype(np.float32)
            margin[~(whole.numpy().sum(0) > 0)] = np.float32(1e30)
        else:
            margin = np.full((h, w), 1e30, dtype=np.float32)
        boxes = record.get("boxes")
        tensors = {"labels": labels, "scores": scores, "margin": margin}
        outputs = {"labels": {"compare": "labels", "margin": "margin"}, "scores": {"compare": "float"}}
        refine_cfg = {"recipe": "sam_refine", "params": {
            "downsample": 2, "coarse_thresh": refine["coarse_thresh"], "min_area": refine["minimal_area"],
            "point_mode": "logit_max", "negatives": "none", "mask_prompt": True,
            "mask_coeff": refine["sam_mask_coff"], "mask_norm": "rows", "select": "predicted_iou",
            "iou_thresh": refine["sam_iou_thresh"]}}
        what = ("labels = pred_sem_seg after sam_refinement, scores = its refined_logits, margin = top-1 minus "
                "top-2 of map_refinement_coarse's class map where a kept mask covers (unbounded elsewhere)")
        if boxes is not None:
            tensors["prompt_boxes"] = boxes
            outputs["prompt_boxes"] = {"compare": "exact"}
            what += f"; prompt_boxes = the {len(boxes)} kept components' boxes (combined_boxes)"
    else:
        margin = common.top2_margin(sample.seg_logits.data.float().numpy())
        tensors = {"logits": (logits[0] * 40).float().numpy(), "labels": labels, "margin": margin}
        outputs = {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"}}
        refine_cfg = None
        what = ("logits = get_trident_seg's output x logit_scale, labels = pred_sem_seg, margin = top-1 minus "
                "top-2 class probability (background synonyms merged as postprocess_result does)")
    present = np.unique(labels)
    assert len(present) >= 2, f"{name}: only labels {present}"
    thd = f"; prob_thd {prob_thd} (clear of every pixel's best probability by 1e-5)" if prob_thd > 0 else ""
    notes = (f"{case['notes']}{thd}. Labels {present.tolist()}, {int((margin < 1e-5).sum())} pixels with "
             f"margin < 1e-5. Float32 clearance of the cuts: {clear}. Official side: Trident.predict through "
             f"mm_stubs' test pipeline (Resize {case['scale']}), float32 on the CPU; {what}.")
    method = {"recipe": "trident", "params": fmseg_params(case, prob_thd), "models": models,
              "outputs": outputs,
              "generator": {"script": "tests/tools/methods/trident.py", "repos": repos,
                            "torch": torch.__version__.split("+")[0], "cv2": __import__("cv2").__version__},
              "notes": notes}
    if refine_cfg:
        method["refine"] = refine_cfg
    common.write_fixture(name, method, img, tensors, [", ".join(c) for c in case["classes"]])
    print(f"{name}: labels {np.bincount(labels.ravel()).tolist()}; {clear}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ext", default=os.environ.get("FMSEG_EXT", os.path.join(common.ROOT, "..", "ext")))
    ap.add_argument("cases", nargs="*", help=f"of {', '.join(CASES)} (default all)")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(2)
    make_dino16()
    make_sam()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = common.save_openai_checkpoint(CLIP_DIR, os.path.join(tmp, "clip-b16-tiny.pt"))
        for name in a.cases or CASES:
            make_case(name, CASES[name], a.ext, ckpt, tmp)


if __name__ == "__main__":
    main()
