"""torch_vit.py — the shapes of bench/bench_vit.lua in plain PyTorch: CLIP
ViT-B/16 and DINO ViT-S/8 image towers (pre-LN blocks as transformers'
eager CLIPEncoderLayer / ViTLayer compute them), one 224x224 image, random
weights, two threads. Prints ms per image and, when build/bench/vit.json
from bench_vit.lua exists, the ratio fmseg / torch.

    OMP_WAIT_POLICY=passive python3 bench/torch_vit.py [repeats]
"""
import json
import math
import os
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F

torch.set_num_threads(2)


class Block(nn.Module):
    def __init__(self, dim, heads, inter, act):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, inter)
        self.fc2 = nn.Linear(inter, dim)
        self.act = act

    def forward(self, x):
        b, t, c = x.shape
        d = c // self.heads
        h = self.ln1(x)
        q = self.q(h).view(b, t, self.heads, d).transpose(1, 2)
        k = self.k(h).view(b, t, self.heads, d).transpose(1, 2)
        v = self.v(h).view(b, t, self.heads, d).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, c))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class Tower(nn.Module):
    def __init__(self, dim, heads, layers, inter, patch, size, act, pre_norm):
        super().__init__()
        grid = size // patch
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, grid * grid + 1, dim))
        self.pre = nn.LayerNorm(dim) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(dim, heads, inter, act) for _ in range(layers))
        self.post = nn.LayerNorm(dim)

    def forward(self, x):
        p = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(p.shape[0], -1, -1), p], 1) + self.pos
        x = self.pre(x)
        for blk in self.blocks:
            x = blk(x)
        return self.post(x)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


CONFIGS = {
    "clip-vit-b16": dict(dim=768, heads=12, layers=12, inter=3072, patch=16, size=224,
                         act=quick_gelu, pre_norm=True),
    "dino-vits8": dict(dim=384, heads=6, layers=12, inter=1536, patch=8, size=224,
                       act=F.gelu, pre_norm=False),
}


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    ours = {}
    path = os.path.join(os.path.dirname(__file__), "..", "build", "bench", "vit.json")
    if os.path.exists(path):
        with open(path) as f:
            ours = json.load(f)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"{'model':<14} {'torch ms':>9} {'fmseg ms':>9} {'fmseg/torch':>12}")
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224) * 4 - 2
    for name, cfg in CONFIGS.items():
        model = Tower(**cfg).eval()
        times = []
        with torch.inference_mode():
            for _ in range(2):
                model(x)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        median = times[(len(times) - 1) // 2]
        mine = ours.get(name)
        ratio = f"{mine / median:12.2f}" if mine else f"{'-':>12}"
        mine_s = f"{mine:9.1f}" if mine else f"{'-':>9}"
        print(f"{name:<14} {median:9.1f} {mine_s} {ratio}")


if __name__ == "__main__":
    main()
