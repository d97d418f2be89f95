"""Method fixtures of CorrCLIP (tests/fixtures/methods/corrclip-<case>/) from
its official code (zdk258/CorrCLIP, CorrCLIPv1/), end to end, with SAM's
automatic masks as the region masks.

    /usr/bin/python3 tests/tools/methods/corrclip.py [--ext DIR] [CASE...]

DIR (default $FMSEG_EXT, else ../ext beside the repository) holds, as
fetched and unmodified (a checkout, or an extracted tree with a COMMIT
file): CorrCLIP/ (its CorrCLIPv1/ folder), dino/ (facebookresearch/dino)
and segment-anything/.

The official CorrCLIPSegmentation is built by its own __init__ (its bundled
open_clip loading the tiny CLIP converted to openai's checkpoint layout,
DINO ViT-B/8 as torch.hub builds it at the tiny width, proxyclip.py) and
run by its own predict on its configs' test pipeline (mm_stubs.py), on the
CPU in float32 (its .half() casts are no-ops, official_stubs.float32).
Its region masks come from its own generate_mask, the `sam2` branch (the
masks sorted by area, painted in that order), with segment-anything's
SamAutomaticMaskGenerator on the tiny SAM of sam_amg.py in the place of
SAM 2's generator (which has the same generate() records): the fixture's
`regions:` runs fmseg's sam_amg with the same settings.

Only the models differ from the official runs. The run is watched, never
changed: the bundled VisionTransformer's DBSCAN and the similarity it
thresholds at its mean are recorded, so that the case can be checked to be
clear of float32 noise at CorrCLIP's discrete decisions (the eps = 0.2 cut
of the region distances, the S > mean(S) cut, SAM's thresholds), reported
in method.json's notes.

What is taken from the official run: logits (forward_slide's scores at the
image size x logit_scale), labels (pred_sem_seg, after the map
correction), margin (top-1 minus top-2 class probability, seg_logit;
prob_thd tuned clear of every pixel's top-1, common.clear_threshold), and
regions (the instance map generate_mask made).
"""
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import mm_stubs  # noqa: E402
import official_stubs  # noqa: E402

SAM_DIR = os.path.join(common.MODELS, "sam-amg-tiny")
DINO_DIR = os.path.join(common.MODELS, "dino-b8-tiny")

# segment-anything's generator settings: few points, thresholds between the
# random model's values so that masks overlap and leave pixels uncovered
AMG = dict(points_per_side=8, points_per_batch=64, pred_iou_thresh=0.05, stability_score_thresh=0.3,
           stability_score_offset=1.0, box_nms_thresh=0.7, crop_n_layers=0, min_mask_region_area=0)

# background first where there is one, synonyms of the background only (the
# official postprocess_result merges only the first class's queries)
CASES = {
    "corrclip-voc21": dict(
        model="clip-b16-tiny12", size=(150, 200), scale=(2048, 336), prob_thd=0.2,
        classes=[["background", "wall", "tree"], ["woman"], ["car"], ["dog"], ["boat"]],
        notes="cfg_voc21.py: background of stuff words with prob_thd, short side 336 (336x448: windows "
              "at x = 0, 112), 12 blocks (NUM_SPATIAL 5)"),
    "corrclip-pad": dict(
        model="clip-b16-tiny", size=(130, 190), scale=(2048, 300), prob_thd=0.0,
        classes=[["person"], ["grass"], ["horse"], ["sky"]],
        notes="no background; short side 300 (300x438: windows of 300x336 padded to 336x336 with the "
              "masks padded with 10000), 8 blocks (NUM_SPATIAL = 8 - 4)"),
}


def load_official(ext, ckpt):
    """The official segmentor module with its model builders pointed at
    the tiny models."""
    import torch
    import proxyclip
    import sam_amg
    repo = os.path.join(ext, "CorrCLIP", "CorrCLIPv1")
    sys.path.insert(0, repo)
    # imported by the segmentor for its other mask generators and its
    # result spreadsheet, never called on this path
    mm_stubs._module("openpyxl")
    mm_stubs._module("transformers", AutoImageProcessor=None, Mask2FormerForUniversalSegmentation=None)
    import torchvision
    if not hasattr(torchvision, "tv_tensors"):      # torchvision 0.16's; only the eomt branch uses it
        torchvision.tv_tensors = mm_stubs._module("torchvision.tv_tensors")
    import corrclip_segmentor as cs
    from open_clip import load_openai_model
    # create_model('ViT-B-16-quickgelu', pretrained='metaclip_fullcc') builds
    # open_clip's CLIP with quick GELU; the openai layout loads the same modules
    cs.create_model = lambda name, pretrained=None, precision="fp32", **k: load_openai_model(
        ckpt, precision="fp32", device="cpu")
    real_hub = torch.hub.load
    dino_repo = os.path.join(ext, "dino")
    torch.hub.load = lambda r, name, *a, **k: (proxyclip.hub_dino(dino_repo) if name == "dino_vitb8"
                                               else real_hub(r, name, *a, **k))
    sys.path.insert(0, os.path.join(ext, "segment-anything"))
    sam = sam_amg.build_original(SAM_DIR)
    return cs, sam, repo


def watch(seg, record):
    """Records the bundled VisionTransformer's DBSCAN inputs and how close
    its similarities come to their mean."""
    import sklearn.cluster
    import open_clip.transformer as ot
    real = sklearn.cluster.DBSCAN

    class Watched(real):
        def fit_predict(self, X, *a, **k):
            d = np.asarray(X, dtype=np.float64)
            record["eps_gap"] = min(record.get("eps_gap", np.inf), float(np.abs(d - self.eps).min()))
            labels = super().fit_predict(X, *a, **k)
            record.setdefault("merges", []).append(f"{len(labels)}->{len(set(labels.tolist()))}")
            return labels
    ot.DBSCAN = Watched
    real_einsum = ot.torch.einsum

    def einsum(eq, *ops):
        out = real_einsum(eq, *ops)
        if eq == "b m c, b n c -> b m n":           # the DINO similarity S
            s = out[0].double()
            record["mean_gap"] = min(record.get("mean_gap", np.inf), float((s - s.mean()).abs().min()))
        return out
    ot.torch.einsum = einsum


def make_case(name, case, ext, ckpt, tmp):
    import torch
    cs, sam, repo = load_official(ext, ckpt)
    from segment_anything import SamAutomaticMaskGenerator
    h, w = case["size"]
    lines = ["; ".join(c) for c in case["classes"]]
    img, image_path, name_path = common.write_inputs(tmp, name, h, w, lines)
    record = {}
    with official_stubs.float32():
        seg = cs.CorrCLIPSegmentation(
            clip_type="metaclip_fullcc", model_type="ViT-B-16-quickgelu", dino_type="dino_vitb8",
            name_path=name_path, device=torch.device("cpu"), prob_thd=case["prob_thd"], logit_scale=40,
            slide_stride=112, slide_crop=336, mask_generator=None)
        # generate_mask's sam2 branch, with segment-anything's generator
        seg.mask_generator_type = "sam2"
        seg.mask_generator = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **AMG)
        watch(seg, record)
        data = mm_stubs.test_pipeline(image_path, case["scale"])
        sample, prob_thd, blended = mm_stubs.test_step_tuned(seg, data, "forward_slide", case["prob_thd"],
                                                             probs_field="seg_logit")
        # the labels without the map correction (every pixel in the lowest id)
        kept = seg.instance_masks
        seg.instance_masks = torch.zeros_like(kept)
        plain = mm_stubs.SegDataSample(metainfo=data["data_samples"][0].metainfo)
        with torch.no_grad():
            seg.postprocess_result(blended, [plain])
        seg.instance_masks = kept
    corrected = int((plain.pred_sem_seg.data != sample.pred_sem_seg.data).sum())
    probs = sample.seg_logit.data.float().numpy()
    labels = sample.pred_sem_seg.data[0].numpy().astype(np.int32)
    regions = seg.instance_masks[0].numpy().astype(np.int32)
    logits = (blended[0] * 40).float().numpy()
    margin = common.top2_margin(probs)
    masks = seg.mask_generator.generate(img)
    present = np.unique(labels)
    assert len(present) >= 2, f"only labels {present}"
    uncovered = float((regions == 0).mean())
    params = dict(logit_scale=40, prob_thd=prob_thd, slide_crop=336, slide_stride=112, pad_multiple=56,
                  short_side=case["scale"][1], templates="imagenet")
    notes = (f"{case['notes']}. {w}x{h} image; {len(masks)} SAM masks (segment-anything's generator on "
             f"sam-amg-tiny, the settings of `regions`), {len(np.unique(regions)) - 1} regions painted, "
             f"{uncovered:.1%} of the pixels in none; DBSCAN regions -> clusters per window "
             f"{', '.join(record['merges'])}; the map correction changed {corrected} pixels. Float32 margins of the discrete steps: DBSCAN "
             f"distances from eps {record['eps_gap']:.2g}, DINO similarities from their mean "
             f"{record['mean_gap']:.2g}. Labels {present.tolist()}.")
    method = {
        "recipe": "corrclip", "params": params,
        "regions": {"recipe": "sam_amg", "params": dict(AMG, output_mode="binary_mask")},
        "models": {"clip": "../models/" + case["model"], "vfm": "../models/dino-b8-tiny",
                   "sam": "../models/sam-amg-tiny"},
        "outputs": {"logits": {"compare": "float"}, "labels": {"compare": "labels", "margin": "margin"},
                    "regions": {"compare": "exact"}},
        "generator": {"script": "tests/tools/methods/corrclip.py",
                      "repos": {"zdk258/CorrCLIP": common.git_commit(os.path.dirname(repo)),
                                "facebookresearch/dino": common.git_commit(os.path.join(ext, "dino")),
                                "facebookresearch/segment-anything":
                                    common.git_commit(os.path.join(ext, "segment-anything"))},
                      "torch": torch.__version__.split("+")[0]},
        "notes": notes,
    }
    common.write_fixture(name, method, img, {"logits": logits, "labels": labels, "margin": margin,
                                             "regions": regions},
                         [", ".join(c) for c in case["classes"]])
    print(f"{name}: {notes}")


def main():
    import argparse
    import torch
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ext", default=os.environ.get("FMSEG_EXT", os.path.join(common.ROOT, "..", "ext")))
    ap.add_argument("cases", nargs="*", help=f"of {', '.join(CASES)} (default all)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    mm_stubs.install()
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.cases or CASES:
            case = CASES[name]
            ckpt = common.save_openai_checkpoint(os.path.join(common.MODELS, case["model"]),
                                                 os.path.join(tmp, case["model"] + ".pt"))
            make_case(name, case, a.ext, ckpt, tmp)


if __name__ == "__main__":
    main()
