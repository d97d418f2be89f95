#!/usr/bin/env python3
"""Write tests/fixtures/clip_crop.safetensors: what torchvision's
Resize(n) + CenterCrop(n) make of PIL images, for images (bicubic) and
label maps (nearest): CLIP's preprocessing, which CLIPtrase's evaluation
applies to images and ground truth alike (clip_self_correlation.py,
_transform1 / gt_transform). tests/lua/test_protocol_crop.lua checks
fmseg.eval.protocol's short_side_crop against every byte.

Made with Debian's python3-torchvision 0.14.1 and python3-pil 9.4.0. Run
from the repository root and commit the output:

    /usr/bin/python3 tests/tools/make_clip_crop.py

For each case NN: caseNN.img (H, W, 3) U8 and caseNN.img_out (n, n, 3) U8;
caseNN.lab (H, W) U8 and caseNN.lab_out (n, n) U8; the metadata lists the
cases (h, w, n).
"""
import json
import os
import struct

import numpy as np
import PIL
import torchvision
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.normpath(os.path.join(ROOT, "tests", "fixtures", "clip_crop.safetensors"))

# (H, W, n): portrait and landscape, down and up, odd offsets (half-to-even
# rounding), a short side already n (no resize), a square
CASES = [(37, 53, 24), (53, 37, 24), (50, 31, 16), (31, 50, 40), (24, 40, 24),
         (30, 30, 20), (61, 19, 13), (21, 60, 17), (33, 34, 33)]


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": "U8", "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    rng = np.random.default_rng(0)
    tensors, cases = {}, []
    for i, (h, w, n) in enumerate(CASES):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # smooth label regions plus isolated pixels, as annotations are
        lab = ((np.add.outer(np.arange(h) // 3, np.arange(w) // 4) * 7) % 23).astype(np.uint8)
        lab[rng.random((h, w)) < 0.1] = 255
        img_t = Compose([Resize(n, interpolation=InterpolationMode.BICUBIC), CenterCrop(n)])
        lab_t = Compose([Resize(n, interpolation=InterpolationMode.NEAREST), CenterCrop(n)])
        key = "case%02d" % i
        tensors[key + ".img"] = img
        tensors[key + ".img_out"] = np.asarray(img_t(Image.fromarray(img)))
        tensors[key + ".lab"] = lab
        tensors[key + ".lab_out"] = np.asarray(lab_t(Image.fromarray(lab)))
        cases.append([h, w, n])
    write_safetensors(OUT, tensors, {"cases": json.dumps(cases), "torchvision": torchvision.__version__,
                                     "PIL": PIL.__version__})
    print("wrote", OUT)


if __name__ == "__main__":
    main()
