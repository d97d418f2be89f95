"""tests/fixtures/densecrf/: what pydensecrf (lucasb-eyer/pydensecrf, built in
place from its repository: Cython, Debian's Eigen) computes for small maps,
for tests/lua/test_crf.lua.

    /usr/bin/python3 tests/tools/make_densecrf_fixtures.py --pydensecrf ../ext/pydensecrf

Each case runs DenseCRF2D(w, h, c), setUnaryEnergy(unary_from_softmax(probs)),
addPairwiseGaussian(sxy, compat), addPairwiseBilateral(sxy, srgb, rgbim,
compat) and inference(iterations), unmodified, as CaR's crf.py and the
README's example call them. The cases cover the lattice's two paths (at most
two labels: the scalar filter; more: the SSE one), point counts that are
and are not multiples of four (the SSE embedding pads the last block), and
the iteration count 0 (the softmax of the unary alone).

cases.json: per case the parameters and tensor names; ref.safetensors:
<case>.image (H, W, 3) uint8, <case>.probs (C, H, W), <case>.q (C, H, W)
marginals, <case>.margin (H, W) their top-1 minus top-2.
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "methods"))
import common  # noqa: E402

OUT = os.path.join(common.ROOT, "tests", "fixtures", "densecrf")

CASES = {
    # CaR's PostProcess (crf.py): a background and one CAM, 10 iterations
    "car": dict(h=23, w=37, c=2, iterations=10, gaussian_sxy=1, gaussian_weight=3, bilateral_sxy=67,
                bilateral_srgb=3, bilateral_weight=4, seed=1),
    # pydensecrf's README example settings, four labels (the SSE filter)
    "readme": dict(h=41, w=30, c=4, iterations=5, gaussian_sxy=3, gaussian_weight=3, bilateral_sxy=80,
                   bilateral_srgb=13, bilateral_weight=10, seed=2),
    # seven labels, a multiple of four points, strong pairwise terms
    "seven": dict(h=16, w=20, c=7, iterations=3, gaussian_sxy=2, gaussian_weight=5, bilateral_sxy=30,
                  bilateral_srgb=20, bilateral_weight=6, seed=3),
    # no iteration: the softmax of the unary
    "none": dict(h=9, w=11, c=3, iterations=0, gaussian_sxy=3, gaussian_weight=3, bilateral_sxy=80,
                 bilateral_srgb=13, bilateral_weight=10, seed=4),
}


def smooth_probs(c, h, w, seed):
    """Class probabilities that vary smoothly with noise: a softmax of
    box-blurred random maps."""
    rng = np.random.RandomState(seed)
    x = rng.randn(c, h + 6, w + 6).astype(np.float64)
    k = np.ones(7) / 7
    for ax in (1, 2):
        x = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), ax, x)
    x = 4 * x[:, 3:3 + h, 3:3 + w] + 0.3 * rng.randn(c, h, w)
    e = np.exp(x - x.max(0, keepdims=True))
    return (e / e.sum(0, keepdims=True)).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pydensecrf", default=os.path.join(common.ROOT, "..", "ext", "pydensecrf"))
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.pydensecrf))
    from pydensecrf import densecrf as dcrf
    from pydensecrf import utils
    tensors, meta = {}, {"generator": {"script": "tests/tools/make_densecrf_fixtures.py",
                                       "repos": {"lucasb-eyer/pydensecrf": common.git_commit(a.pydensecrf)}},
                         "cases": {}}
    for name, cs in CASES.items():
        h, w, c = cs["h"], cs["w"], cs["c"]
        img = np.array(common.test_image(h, w), dtype=np.uint8, order="C")
        probs = smooth_probs(c, h, w, cs["seed"])
        d = dcrf.DenseCRF2D(w, h, c)
        d.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(probs)))
        d.addPairwiseGaussian(sxy=cs["gaussian_sxy"], compat=cs["gaussian_weight"])
        d.addPairwiseBilateral(sxy=cs["bilateral_sxy"], srgb=cs["bilateral_srgb"], rgbim=img,
                               compat=cs["bilateral_weight"])
        q = np.array(d.inference(cs["iterations"]), dtype=np.float32).reshape(c, h, w)
        s = np.sort(q, axis=0)
        margin = (s[-1] - s[-2]).astype(np.float32)
        changed = int((q.argmax(0) != probs.argmax(0)).sum())
        tensors[name + ".image"] = img
        tensors[name + ".probs"] = probs
        tensors[name + ".q"] = q
        tensors[name + ".margin"] = margin
        meta["cases"][name] = dict({k: v for k, v in cs.items() if k != "seed"}, labels_changed=changed,
                                   min_margin=float(margin.min()))
        print(f"{name}: {c} labels on {w}x{h}, {cs['iterations']} iterations: the CRF changed {changed} "
              f"labels of {h * w}; smallest top-2 margin {margin.min():.3g}")
    os.makedirs(OUT, exist_ok=True)
    common.save_safetensors(os.path.join(OUT, "ref.safetensors"), tensors)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
