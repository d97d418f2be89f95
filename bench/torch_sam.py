"""torch_sam.py — the encoder of bench/bench_sam.lua in plain PyTorch: SAM
ViT-B's image encoder at 1024x1024 (patch embedding, absolute positions, 12
blocks with 14x14 windows and global attention at 2, 5, 8, 11, decomposed
relative positions added to the full score matrix as transformers' eager
SamVisionAttention does, the neck), random weights. Writes
build/bench/torch_sam.json (see torchlib.py); skipped with
FMSEG_BENCH_QUICK=1. With FMSEG_SAM_SRC pointing at a checkout of the
original segment-anything, also its automatic mask generator (the amg rows
of bench_sam.lua).

    FMSEG_SAM_SRC=/path/to/segment-anything /usr/bin/python3 bench/torch_sam.py [repeats (1)]
"""
import os
import sys

from torchlib import Results, quick, torch
from torch import nn
import torch.nn.functional as F

HIDDEN, LAYERS, HEADS, MLP = 768, 12, 12, 3072
PATCH, SIZE, WINDOW, GLOBAL, OUT = 16, 1024, 14, (2, 5, 8, 11), 256


def rel_bias(q, rel_h, rel_w, gh, gw):
    """q (B*H, T, D) → (B*H, gh, gw, gh, gw) decomposed relative positions."""
    idx_h = torch.arange(gh)[:, None] - torch.arange(gh)[None, :] + gh - 1
    idx_w = torch.arange(gw)[:, None] - torch.arange(gw)[None, :] + gw - 1
    rq = q.reshape(q.shape[0], gh, gw, -1)
    bh = torch.einsum("bhwc,hkc->bhwk", rq, rel_h[idx_h])
    bw = torch.einsum("bhwc,wkc->bhwk", rq, rel_w[idx_w])
    return bh[:, :, :, :, None] + bw[:, :, :, None, :]


class Block(nn.Module):
    def __init__(self, window):
        super().__init__()
        grid = window if window else SIZE // PATCH
        d = HIDDEN // HEADS
        self.window = window
        self.ln1 = nn.LayerNorm(HIDDEN, eps=1e-6)
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.proj = nn.Linear(HIDDEN, HIDDEN)
        self.rel_h = nn.Parameter(torch.randn(2 * grid - 1, d) * 0.02)
        self.rel_w = nn.Parameter(torch.randn(2 * grid - 1, d) * 0.02)
        self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-6)
        self.lin1 = nn.Linear(HIDDEN, MLP)
        self.lin2 = nn.Linear(MLP, HIDDEN)

    def attention(self, x):
        b, gh, gw, c = x.shape
        d = c // HEADS
        qkv = self.qkv(x).reshape(b, gh * gw, 3, HEADS, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * HEADS, gh * gw, d).unbind(0)
        attn = (q * d ** -0.5) @ k.transpose(-2, -1)
        attn = attn.view(b * HEADS, gh, gw, gh, gw) + rel_bias(q, self.rel_h, self.rel_w, gh, gw)
        attn = attn.view(b * HEADS, gh * gw, gh * gw).softmax(dim=-1)
        out = (attn @ v).view(b, HEADS, gh, gw, d).permute(0, 2, 3, 1, 4).reshape(b, gh, gw, c)
        return self.proj(out)

    def forward(self, x):
        b, h, w, c = x.shape
        y = self.ln1(x)
        if self.window:
            ws = self.window
            ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
            y = F.pad(y, (0, 0, 0, pw, 0, ph))
            hp, wp = h + ph, w + pw
            y = y.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)
            y = self.attention(y)
            y = y.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
            y = y[:, :h, :w, :]
        else:
            y = self.attention(y)
        x = x + y
        return x + self.lin2(F.gelu(self.lin1(self.ln2(x))))


def channel_norm(x, eps=1e-6):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return (x - u) / torch.sqrt(s + eps)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        grid = SIZE // PATCH
        self.patch = nn.Conv2d(3, HIDDEN, PATCH, PATCH)
        self.pos = nn.Parameter(torch.randn(1, grid, grid, HIDDEN) * 0.02)
        self.blocks = nn.ModuleList([Block(0 if i in GLOBAL else WINDOW) for i in range(LAYERS)])
        self.conv1 = nn.Conv2d(HIDDEN, OUT, 1, bias=False)
        self.conv2 = nn.Conv2d(OUT, OUT, 3, padding=1, bias=False)

    def forward(self, x):
        x = self.patch(x).permute(0, 2, 3, 1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        x = channel_norm(self.conv1(x.permute(0, 3, 1, 2)))
        return channel_norm(self.conv2(x))


AMG_ROWS = (("sam-vit-b amg 32x32, defaults", {}),
            ("sam-vit-b amg 32x32, filters off", {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}))
PHOTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "astronaut.jpg")


def amg_rows(res):
    """The original segment-anything SamAutomaticMaskGenerator (ViT-B,
    PyTorch's default random initialisation, 32x32 points, batches of 64)
    on tests/data/astronaut.jpg, encoder included, from the checkout that
    FMSEG_SAM_SRC points at."""
    src = os.environ.get("FMSEG_SAM_SRC", "")
    if not src or not os.path.isdir(os.path.join(src, "segment_anything")):
        print("torch_sam: amg rows skipped (set FMSEG_SAM_SRC to a segment-anything checkout)")
        return
    sys.path.insert(0, src)
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
    import numpy as np
    from PIL import Image

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]().eval()
    img = np.array(Image.open(PHOTO).convert("RGB"))
    for name, opts in AMG_ROWS:
        gen = SamAutomaticMaskGenerator(sam, output_mode="uncompressed_rle", **opts)
        found = []
        res.model(name, lambda: found.append(len(gen.generate(img))), warmup=0, repeats=1)
        print(f"  {found[-1]} masks")


def main():
    if quick():
        print("torch_sam: skipped (FMSEG_BENCH_QUICK)")
        return
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    res = Results("sam")
    torch.manual_seed(0)
    model = Encoder().eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    res.model(f"sam-vit-b encoder {SIZE}", lambda: model(x), warmup=1 if repeats > 1 else 0,
              repeats=repeats, onnx=(model, [x]))
    amg_rows(res)
    res.finish()


if __name__ == "__main__":
    main()
