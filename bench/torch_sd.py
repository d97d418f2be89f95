"""torch_sd.py — the models of bench/bench_sd.lua in plain PyTorch (no
diffusers): Stable Diffusion 1.5's UNet2DConditionModel, one evaluation at
a 64x64 latent with 77 text tokens, and the AutoencoderKL encoder at
512x512, random weights. The blocks compute what diffusers' do on torch
1.13 (AttnProcessor: baddbmm, softmax, bmm; GEGLU feed-forward; 1x1 conv
projections as SD 1.5 has use_linear_projection false). Writes
build/bench/torch_sd.json (see torchlib.py); skipped with
FMSEG_BENCH_QUICK=1.

    /usr/bin/python3 bench/torch_sd.py [--no-unet] [--no-vae]
"""
import math
import sys

from torchlib import Results, quick, torch
from torch import nn
import torch.nn.functional as F

# SD 1.5's unet/config.json and vae/config.json, the parts used here
UNET = dict(channels=(320, 640, 1280, 1280), cross=(True, True, True, False), layers=2, heads=8,
            context=768, groups=32, eps=1e-5, latent=4)
VAE = dict(channels=(128, 256, 512, 512), layers=2, groups=32, eps=1e-6, latent=4)


class Resnet(nn.Module):
    """diffusers ResnetBlock2D (pre-norm, SiLU, optional time embedding)."""

    def __init__(self, cin, cout, temb, groups, eps):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout) if temb else None
        self.norm2 = nn.GroupNorm(groups, cout, eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.shortcut(x) if self.shortcut is not None else x)


class Attention(nn.Module):
    """diffusers Attention run by AttnProcessor (torch < 2)."""

    def __init__(self, dim, context, heads, bias=False):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(context, dim, bias=bias)
        self.to_v = nn.Linear(context, dim, bias=bias)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, context=None):
        context = x if context is None else context
        b, t, c = x.shape
        h = self.heads

        def split(y):  # (B, T, C) -> (B*H, T, D)
            return y.reshape(b, -1, h, c // h).permute(0, 2, 1, 3).reshape(b * h, -1, c // h)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        scores = torch.baddbmm(torch.empty(b * h, t, k.shape[1]), q, k.transpose(1, 2), beta=0,
                               alpha=self.scale)
        o = torch.bmm(scores.softmax(dim=-1), v)
        return self.to_out(o.reshape(b, h, t, c // h).permute(0, 2, 1, 3).reshape(b, t, c))


class TransformerBlock(nn.Module):
    """diffusers Transformer2DModel with one BasicTransformerBlock."""

    def __init__(self, c, heads, context, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, 1e-6)
        self.proj_in = nn.Conv2d(c, c, 1)
        self.norm1, self.attn1 = nn.LayerNorm(c), Attention(c, c, heads)
        self.norm2, self.attn2 = nn.LayerNorm(c), Attention(c, context, heads)
        self.norm3 = nn.LayerNorm(c)
        self.ff_in, self.ff_out = nn.Linear(c, 8 * c), nn.Linear(4 * c, c)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x, context):
        b, c, hh, ww = x.shape
        t = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        t = t + self.attn1(self.norm1(t))
        t = t + self.attn2(self.norm2(t), context)
        u, gate = self.ff_in(self.norm3(t)).chunk(2, dim=-1)  # GEGLU
        t = t + self.ff_out(u * F.gelu(gate))
        return self.proj_out(t.transpose(1, 2).reshape(b, c, hh, ww)) + x


class UNet(nn.Module):
    """diffusers UNet2DConditionModel with SD 1.5's configuration."""

    def __init__(self, cfg):
        super().__init__()
        ch, g, eps, n = cfg["channels"], cfg["groups"], cfg["eps"], cfg["layers"]
        temb = 4 * ch[0]
        self.time_1, self.time_2 = nn.Linear(ch[0], temb), nn.Linear(temb, temb)
        self.conv_in = nn.Conv2d(cfg["latent"], ch[0], 3, padding=1)

        def attn(c):
            return TransformerBlock(c, cfg["heads"], cfg["context"], g)

        self.down, skip_ch, cin = nn.ModuleList(), [ch[0]], ch[0]
        for i, c in enumerate(ch):
            blk = nn.Module()
            blk.resnets = nn.ModuleList(Resnet(cin if j == 0 else c, c, temb, g, eps) for j in range(n))
            blk.attns = nn.ModuleList(attn(c) for _ in range(n)) if cfg["cross"][i] else None
            blk.downsample = nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(ch) - 1 else None
            skip_ch += [c] * (n + (blk.downsample is not None))
            self.down.append(blk)
            cin = c
        self.mid = nn.ModuleList([Resnet(cin, cin, temb, g, eps), attn(cin), Resnet(cin, cin, temb, g, eps)])
        self.up = nn.ModuleList()
        for i, c in enumerate(reversed(ch)):
            blk = nn.Module()
            blk.resnets = nn.ModuleList(Resnet(cin + skip_ch.pop(), c, temb, g, eps) if j == 0
                                        else Resnet(c + skip_ch.pop(), c, temb, g, eps) for j in range(n + 1))
            blk.attns = nn.ModuleList(attn(c) for _ in range(n + 1)) if cfg["cross"][len(ch) - 1 - i] else None
            blk.upsample = nn.Conv2d(c, c, 3, padding=1) if i < len(ch) - 1 else None
            self.up.append(blk)
            cin = c
        self.norm_out = nn.GroupNorm(g, ch[0], eps)
        self.conv_out = nn.Conv2d(ch[0], cfg["latent"], 3, padding=1)

    def time_embedding(self, t, dim):
        half = dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = torch.tensor([float(t)])[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # flip_sin_to_cos
        return self.time_2(F.silu(self.time_1(emb)))

    def forward(self, x, t, context):
        temb = self.time_embedding(t, self.conv_in.out_channels)
        x = self.conv_in(x)
        skips = [x]
        for blk in self.down:
            for j, res in enumerate(blk.resnets):
                x = res(x, temb)
                if blk.attns is not None:
                    x = blk.attns[j](x, context)
                skips.append(x)
            if blk.downsample is not None:
                x = blk.downsample(x)
                skips.append(x)
        x = self.mid[2](self.mid[1](self.mid[0](x, temb), context), temb)
        for blk in self.up:
            for j, res in enumerate(blk.resnets):
                x = res(torch.cat([x, skips.pop()], dim=1), temb)
                if blk.attns is not None:
                    x = blk.attns[j](x, context)
            if blk.upsample is not None:
                x = blk.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(x)))


class VAEAttention(nn.Module):
    """The VAE mid block's single-head attention over pixels, residual."""

    def __init__(self, c, groups, eps):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, c, eps)
        self.attn = Attention(c, c, 1, bias=True)

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).transpose(1, 2)
        return self.attn(t).transpose(1, 2).reshape(b, c, h, w) + x


class VAEEncoder(nn.Module):
    """diffusers AutoencoderKL.encode: Encoder then quant_conv."""

    def __init__(self, cfg):
        super().__init__()
        ch, g, eps, n = cfg["channels"], cfg["groups"], cfg["eps"], cfg["layers"]
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        layers, cin = [], ch[0]
        for i, c in enumerate(ch):
            layers += [Resnet(cin if j == 0 else c, c, None, g, eps) for j in range(n)]
            if i < len(ch) - 1:  # the LDM downsample: pad right and bottom, stride 2
                layers += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(c, c, 3, stride=2)]
            cin = c
        layers += [Resnet(cin, cin, None, g, eps), VAEAttention(cin, g, eps), Resnet(cin, cin, None, g, eps)]
        self.body = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(g, cin, eps)
        self.conv_out = nn.Conv2d(cin, 2 * cfg["latent"], 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * cfg["latent"], 2 * cfg["latent"], 1)

    def forward(self, x):
        moments = self.quant_conv(self.conv_out(F.silu(self.norm_out(self.body(self.conv_in(x))))))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.clamp(-30, 20))


def main():
    if quick():
        print("torch_sd: skipped (FMSEG_BENCH_QUICK)")
        return
    res = Results("sd")
    torch.manual_seed(0)
    if "--no-unet" not in sys.argv:
        unet = UNet(UNET).eval()
        x, text = torch.randn(1, 4, 64, 64), torch.randn(1, 77, 768)
        res.model("sd1.5 unet 64x64", lambda: unet(x, 500, text), warmup=0, repeats=1)
        del unet
    if "--no-vae" not in sys.argv:
        vae = VAEEncoder(VAE).eval()
        image = torch.rand(1, 3, 512, 512) * 2 - 1
        res.model("sd1.5 vae encoder 512", lambda: vae(image), warmup=0, repeats=1)
        del vae
    res.finish()


if __name__ == "__main__":
    main()
