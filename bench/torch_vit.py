"""torch_vit.py — the towers of bench/bench_vit.lua in plain PyTorch: CLIP
ViT-B/16 and DINO ViT-S/8 image towers (pre-LN blocks as transformers'
eager CLIPEncoderLayer / ViTLayer compute them), one 224x224 image, random
weights. Writes build/bench/torch_vit.json (see torchlib.py).

    /usr/bin/python3 bench/torch_vit.py [repeats (10)]
"""
import sys

from torchlib import Results, torch
from torch import nn
import torch.nn.functional as F


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
    "clip-vit-b16 224": dict(dim=768, heads=12, layers=12, inter=3072, patch=16, size=224,
                         act=quick_gelu, pre_norm=True),
    "dino-vits8 224": dict(dim=384, heads=6, layers=12, inter=1536, patch=8, size=224,
                       act=F.gelu, pre_norm=False),
}


def main():
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    res = Results("vit")
    torch.manual_seed(0)
    x = torch.rand(1, 3, 224, 224) * 4 - 2
    for name, cfg in CONFIGS.items():
        model = Tower(**cfg).eval()
        res.model(name, lambda: model(x), warmup=2, repeats=repeats, onnx=(model, [x]))
        del model
    res.finish()


if __name__ == "__main__":
    main()
