#!/usr/bin/env python3
"""Write tests/fixtures/cv2_resize.safetensors: uint8 images and what
cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR) makes of them, the
call mmsegmentation's Resize (mmcv.imresize) makes. tests/c/test_cv2_resize.c
checks fm_image_resize_cv2_linear against every byte.

Made with Debian's python3-opencv 4.6.0 (4.6.0+dfsg-12, SSE2 baseline) and
python3-numpy 1.24; cv2 runs its SIMD paths there, whose rounding is what
fmseg reproduces. Run from the repository root (with Debian's python3, not
a virtualenv without cv2) and commit the output:

    /usr/bin/python3 tests/tools/make_cv2_resize.py

For each case NN the file holds caseNN.img (H, W, C) U8 and caseNN.out
(OH, OW, C) U8; the metadata lists the cases. The safetensors writer is the
format itself (8-byte little-endian header length, JSON header, raw bytes),
so nothing beyond cv2 and numpy is needed.
"""
import json
import os
import struct

import cv2
import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.normpath(os.path.join(ROOT, "tests", "fixtures", "cv2_resize.safetensors"))

# (H, W, C, OH, OW, content)
CASES = [
    # mmseg-like sizes: odd ratios up and down
    (37, 53, 3, 336, 485, "random"),
    (500, 375, 1, 336, 448, "random"),
    (300, 400, 1, 336, 448, "smooth"),
    (97, 31, 3, 13, 8, "random"),
    (31, 97, 1, 8, 13, "random"),
    (120, 90, 1, 224, 168, "smooth"),
    (211, 157, 1, 97, 73, "random"),
    (64, 48, 3, 71, 53, "random"),
    (100, 100, 3, 37, 41, "random"),
    (45, 60, 3, 224, 299, "smooth"),
    # exact 2x downscale on both axes: cv2 takes INTER_AREA's 2x2 mean
    (64, 96, 3, 32, 48, "random"),
    (50, 34, 1, 25, 17, "random"),
    (2, 2, 3, 1, 1, "random"),
    (18, 26, 2, 9, 13, "random"),
    (20, 12, 4, 10, 6, "random"),
    # near-2x and other integer ratios stay bilinear
    (65, 96, 3, 32, 48, "random"),
    (64, 96, 3, 32, 47, "random"),
    (60, 90, 1, 20, 30, "random"),
    (64, 64, 3, 16, 16, "random"),
    (64, 96, 1, 32, 96, "random"),
    (21, 33, 3, 42, 66, "random"),
    (9, 7, 1, 36, 28, "random"),
    # one axis only
    (40, 50, 3, 40, 77, "random"),
    (40, 50, 3, 61, 50, "random"),
    (40, 50, 1, 40, 23, "random"),
    (40, 50, 1, 17, 50, "random"),
    # 1xN, Nx1 and single pixels
    (1, 50, 3, 1, 77, "random"),
    (50, 1, 3, 77, 1, "random"),
    (1, 50, 1, 5, 13, "random"),
    (50, 1, 1, 13, 5, "random"),
    (1, 1, 3, 7, 9, "random"),
    (7, 9, 1, 1, 1, "random"),
    (1, 13, 1, 1, 4, "random"),
    (3, 3, 3, 1, 2, "random"),
    # tiny to large and large to tiny
    (3, 4, 1, 200, 300, "random"),
    (2, 3, 1, 301, 199, "random"),
    (150, 120, 1, 3, 2, "random"),
    (256, 256, 1, 5, 7, "random"),
    # unchanged size: a copy
    (33, 47, 3, 33, 47, "random"),
    # widths around cv2's 16- and 8-lane SIMD blocks
    (10, 17, 1, 11, 16, "random"),
    (10, 17, 1, 11, 24, "random"),
    (10, 17, 1, 11, 25, "random"),
    (10, 17, 3, 11, 11, "random"),
    (10, 17, 1, 11, 33, "random"),
    # extreme values: constant white and black, a checkerboard
    (31, 29, 3, 45, 58, "white"),
    (31, 29, 1, 14, 11, "white"),
    (31, 29, 3, 45, 58, "black"),
    (30, 30, 1, 47, 13, "checker"),
    # 2 and 4 channels off the 2x path
    (23, 19, 2, 31, 11, "random"),
    (23, 19, 4, 11, 31, "random"),
]


def image(rng, h, w, c, content):
    if content == "random":
        return rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    if content == "white":
        return np.full((h, w, c), 255, np.uint8)
    if content == "black":
        return np.zeros((h, w, c), np.uint8)
    if content == "checker":
        y, x = np.mgrid[0:h, 0:w]
        return np.repeat((((y + x) % 2) * 255).astype(np.uint8)[:, :, None], c, axis=2)
    # smooth: gradients plus a little noise, like a photo
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [127.5 + 120 * np.sin(x / (7 + 3 * k) + y / (11 + 2 * k) + k) for k in range(c)]
    img = np.stack(planes, axis=2) + rng.normal(0, 4, (h, w, c))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def cv2_resize(img, oh, ow):
    src = img[:, :, 0] if img.shape[2] == 1 else img
    out = cv2.resize(src, (ow, oh), interpolation=cv2.INTER_LINEAR)
    return out.reshape(oh, ow, img.shape[2])


def save_safetensors(path, tensors, metadata):
    """tensors: list of (name, uint8 array)."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, a in tensors:
        a = np.ascontiguousarray(a)
        header[name] = {"dtype": "U8", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # data starts 8-aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    rng = np.random.default_rng(20261201)
    tensors, listing = [], []
    for i, (h, w, c, oh, ow, content) in enumerate(CASES):
        img = image(rng, h, w, c, content)
        out = cv2_resize(img, oh, ow)
        tensors += [("case%02d.img" % i, img), ("case%02d.out" % i, out)]
        listing.append("%dx%dx%d->%dx%d %s" % (h, w, c, oh, ow, content))
    meta = {"cv2": cv2.__version__, "numpy": np.__version__, "call": "cv2.resize(img, (ow, oh), "
            "interpolation=cv2.INTER_LINEAR)", "cases": json.dumps(listing)}
    save_safetensors(OUT, tensors, meta)
    print("%s: %d cases, %d bytes, cv2 %s" % (OUT, len(CASES), os.path.getsize(OUT), cv2.__version__))


if __name__ == "__main__":
    main()
