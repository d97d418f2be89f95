"""The smallest stand-ins for the frameworks the official code bases import
but that cannot be installed here (mmseg, mmengine, mmcv, timm, ftfy,
einops), so that the official files run unmodified. Each stub defines
exactly the names the official code imports, and nothing the code's
numerical path depends on, except where said (mmcv's FFN and
MultiheadAttention, written after mmcv 1.x's bricks/transformer.py).

    import official_stubs as stubs
    stubs.ftfy(); stubs.mmseg_1x()      # before importing the official code
    with stubs.float32(): ...           # the official code's .half() casts become no-ops
"""
import contextlib
import sys
import types

import torch
import torch.nn as nn


def module(name, **attrs):
    """sys.modules[NAME] (and its parents) as a plain module with ATTRS."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            m = types.ModuleType(sub)
            m.__path__ = []
            sys.modules[sub] = m
            if i > 1:
                setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], m)
    m = sys.modules[name]
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


class Registry:
    """mmengine / mmcv Registry: register_module as a decorator (and build)."""

    def __init__(self, name="registry", *args, **kwargs):
        self.name, self.modules = name, {}

    def register_module(self, name=None, force=False, module=None):
        def deco(cls):
            self.modules[name or cls.__name__] = cls
            return cls
        return deco(module) if module is not None else deco

    def get(self, key):
        return self.modules.get(key)

    def build(self, cfg, *args, **kwargs):
        cfg = dict(cfg)
        return self.modules[cfg.pop("type")](**cfg)


def ftfy():
    """open_clip's / openai CLIP's tokenizers call ftfy.fix_text; on the
    plain ASCII prompts of the fixtures it returns its input unchanged."""
    module("ftfy", fix_text=lambda text, *a, **k: text)


def einops():
    """einops.rearrange where only a code path the fixtures do not take
    imports it (ProxyCLIP's MAE proxy), and GEM's one pattern."""
    def rearrange(x, pattern, **sizes):
        if pattern == "b (w h) c -> b c w h":                       # GEM's gem_wrapper.py
            b, n, c = x.shape
            return x.reshape(b, sizes["w"], sizes["h"], c).permute(0, 3, 1, 2)
        raise NotImplementedError("einops stub: " + pattern)
    module("einops", rearrange=rearrange)


def timm():
    """mae/models_vit.py subclasses timm's VisionTransformer at import."""
    class VisionTransformer(nn.Module):
        def __init__(self, *args, **kwargs):
            raise NotImplementedError("timm stub")
    module("timm.models.vision_transformer", VisionTransformer=VisionTransformer)


def mmseg_1x():
    """The mmseg 1.x / mmengine names proxyclip_segmentor.py (and SCLIP's
    clip_segmentor.py) import: BaseSegmentor, SegDataPreProcessor,
    PixelData, MODELS."""
    class SegDataPreProcessor:
        """mmseg's SegDataPreProcessor: BGR→RGB, then (x - mean) / std."""

        def __init__(self, mean=None, std=None, bgr_to_rgb=False, rgb_to_bgr=False, **kwargs):
            self.mean = torch.tensor(mean).view(-1, 1, 1)
            self.std = torch.tensor(std).view(-1, 1, 1)
            self.bgr_to_rgb = bgr_to_rgb or rgb_to_bgr

        def __call__(self, img_chw_uint8):
            x = img_chw_uint8
            if self.bgr_to_rgb:
                x = x[[2, 1, 0], ...]
            x = x.float()
            return ((x - self.mean) / self.std)[None]

    class BaseSegmentor(nn.Module):
        def __init__(self, data_preprocessor=None, init_cfg=None):
            super().__init__()
            self.data_preprocessor = data_preprocessor

    class PixelData:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    module("mmseg.models.segmentors", BaseSegmentor=BaseSegmentor)
    module("mmseg.models.data_preprocessor", SegDataPreProcessor=SegDataPreProcessor)
    module("mmseg.registry", MODELS=Registry("models"))
    module("mmengine.structures", PixelData=PixelData)


class SegDataSample:
    """mmseg's SegDataSample as predict/postprocess_result use it."""

    def __init__(self, ori_shape):
        self.metainfo = {"ori_shape": tuple(ori_shape)}
        self.data = {}

    def set_data(self, d):
        self.data.update(d)


@contextlib.contextmanager
def float32():
    """The official code casts models and inputs to fp16 for the GPU; here
    it runs on the CPU in float32, so .half() leaves tensors and modules
    as they are."""
    t_half, m_half = torch.Tensor.half, nn.Module.half
    torch.Tensor.half = lambda self, *a, **k: self
    nn.Module.half = lambda self: self
    try:
        yield
    finally:
        torch.Tensor.half, nn.Module.half = t_half, m_half


def mmcv_rescale(img, scale):
    """mmcv.imrescale(img, SCALE = (long, short), 'bilinear', backend
    'cv2') as mmseg's Resize(keep_ratio=True) calls it: mmcv.rescale_size,
    then cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)."""
    import cv2
    h, w = img.shape[:2]
    long_edge, short_edge = max(scale), min(scale)
    f = min(long_edge / max(h, w), short_edge / min(h, w))
    nw, nh = int(w * float(f) + 0.5), int(h * float(f) + 0.5)
    if (nh, nw) == (h, w):
        return img
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)


class AttrDict(dict):
    """mmcv's ConfigDict as the official code reads it (cfg.mode)."""
    __getattr__ = dict.get


def mmcv_1x():
    """The mmcv 1.x names MaskCLIP's mmseg (0.x) imports along its
    inference path. FFN and MultiheadAttention follow mmcv 1.x's
    cnn/bricks/transformer.py (same module names, so the converted CLIP
    checkpoint loads): MultiheadAttention = identity + nn.MultiheadAttention,
    FFN = identity + Linear, act, Dropout, ..., Linear, Dropout."""
    import torch.nn.functional  # noqa: F401

    class BaseModule(nn.Module):
        def __init__(self, init_cfg=None):
            super().__init__()
            self.init_cfg = init_cfg

        def init_weights(self):
            pass

    class ModuleList(nn.ModuleList):
        def __init__(self, modules=None, init_cfg=None):
            super().__init__(modules)

    def build_norm_layer(cfg, num_features, postfix=""):
        assert cfg["type"] == "LN", cfg
        return "ln" + str(postfix), nn.LayerNorm(num_features, eps=cfg.get("eps", 1e-5))

    def build_conv_layer(cfg, *args, **kwargs):
        assert cfg is None or cfg["type"] == "Conv2d", cfg
        return nn.Conv2d(*args, **kwargs)

    def build_activation_layer(cfg):
        return {"GELU": nn.GELU, "ReLU": nn.ReLU}[cfg["type"]]()

    def build_dropout(cfg):
        assert cfg is None or cfg.get("drop_prob", 0.0) == 0.0, cfg    # inference: DropPath(0) is identity
        return nn.Identity()

    class MultiheadAttention(BaseModule):
        def __init__(self, embed_dims, num_heads, attn_drop=0., proj_drop=0., dropout_layer=None,
                     init_cfg=None, batch_first=False, **kwargs):
            super().__init__(init_cfg)
            self.embed_dims, self.num_heads, self.batch_first = embed_dims, num_heads, batch_first
            self.attn = nn.MultiheadAttention(embed_dims, num_heads, attn_drop, **kwargs)
            self.proj_drop = nn.Dropout(proj_drop)
            self.dropout_layer = build_dropout(dropout_layer)

        def forward(self, query, key=None, value=None, identity=None, query_pos=None, key_pos=None,
                    attn_mask=None, key_padding_mask=None, **kwargs):
            key = query if key is None else key
            value = key if value is None else value
            identity = query if identity is None else identity
            if self.batch_first:
                query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
            out = self.attn(query=query, key=key, value=value, attn_mask=attn_mask,
                            key_padding_mask=key_padding_mask)[0]
            if self.batch_first:
                out = out.transpose(0, 1)
            return identity + self.dropout_layer(self.proj_drop(out))

    class FFN(BaseModule):
        def __init__(self, embed_dims=256, feedforward_channels=1024, num_fcs=2,
                     act_cfg=dict(type="ReLU", inplace=True), ffn_drop=0., dropout_layer=None,
                     add_identity=True, init_cfg=None, **kwargs):
            super().__init__(init_cfg)
            layers, in_channels = [], embed_dims
            for _ in range(num_fcs - 1):
                layers.append(nn.Sequential(nn.Linear(in_channels, feedforward_channels),
                                            build_activation_layer(act_cfg), nn.Dropout(ffn_drop)))
                in_channels = feedforward_channels
            layers.append(nn.Linear(feedforward_channels, embed_dims))
            layers.append(nn.Dropout(ffn_drop))
            self.layers = nn.Sequential(*layers)
            self.dropout_layer = build_dropout(dropout_layer)
            self.add_identity = add_identity

        def forward(self, x, identity=None):
            out = self.layers(x)
            if not self.add_identity:
                return self.dropout_layer(out)
            identity = x if identity is None else identity
            return identity + self.dropout_layer(out)

    def passthrough(*args, **kwargs):
        def deco(f):
            return f
        return deco

    def unused(*args, **kwargs):
        raise NotImplementedError("mmcv stub: not on the inference path")

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    models, attention = Registry("models"), Registry("attention")
    module("mmcv", __version__="1.4.0")
    module("mmcv.cnn", build_norm_layer=build_norm_layer, build_conv_layer=build_conv_layer, MODELS=models)
    module("mmcv.cnn.bricks.registry", ATTENTION=attention)
    module("mmcv.cnn.bricks.transformer", FFN=FFN, MultiheadAttention=MultiheadAttention)
    module("mmcv.cnn.utils.weight_init", constant_init=unused, kaiming_init=unused, trunc_normal_=unused)
    module("mmcv.runner", BaseModule=BaseModule, ModuleList=ModuleList, _load_checkpoint=unused,
           auto_fp16=passthrough, force_fp32=passthrough)
    module("mmcv.runner.base_module", BaseModule=BaseModule)
    module("mmcv.utils", Registry=Registry, to_2tuple=to_2tuple, print_log=lambda *a, **k: None)


class PlaceholderLoss(nn.Module):
    """What an unregistered type (a training loss) builds to at inference."""


def maskclip_mmseg(repo):
    """MaskCLIP's own mmseg package (0.x), importing only the modules on the
    inference path: the package __init__ files, which import every
    backbone and head (and their mmcv dependencies), are not run."""
    import os
    mm = os.path.join(repo, "mmseg")
    for pkg in ("mmseg", "mmseg.models", "mmseg.models.backbones", "mmseg.models.decode_heads",
                "mmseg.models.segmentors", "mmseg.models.utils"):
        m = module(pkg)
        m.__path__ = [os.path.join(mm, *pkg.split(".")[1:])]
    module("mmseg.utils", get_root_logger=lambda *a, **k: None)
    module("mmseg.core", add_prefix=lambda d, p: {f"{p}.{k}": v for k, v in d.items()},
           build_pixel_sampler=None)
    module("mmseg.models.losses", accuracy=None)
    import importlib
    builder = importlib.import_module("mmseg.models.builder")
    for reg in (builder.MODELS, builder.LOSSES):
        real_build = reg.build

        def build(cfg, *a, _real=real_build, _reg=reg, **k):
            return _real(cfg) if cfg["type"] in _reg.modules else PlaceholderLoss()
        reg.build = build
    sys.modules["mmseg.models"].builder = builder
    embed = importlib.import_module("mmseg.models.utils.embed")
    sys.modules["mmseg.models.utils"].PatchEmbed = embed.PatchEmbed
    vit = importlib.import_module("mmseg.models.backbones.vit")
    head = importlib.import_module("mmseg.models.decode_heads.maskclip_head")
    segmentor = importlib.import_module("mmseg.models.segmentors.encoder_decoder")
    return builder, vit, head, segmentor


def mmcv_imnormalize(img, mean, std, to_rgb=True):
    """mmcv.imnormalize (mmseg 0.x's Normalize): float32, BGR→RGB,
    cv2.subtract(mean), cv2.multiply(1 / std)."""
    import cv2
    import numpy as np
    img = img.copy().astype(np.float32)
    mean = np.float64(np.array(mean).reshape(1, -1))
    stdinv = 1 / np.float64(np.array(std).reshape(1, -1))
    if to_rgb:
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)
    cv2.subtract(img, mean, img)
    cv2.multiply(img, stdinv, img)
    return img


def predict_segmentor(seg, image, params, before_predict=None):
    """mmseg's test pipeline around an official SCLIP-style segmentor, as
    the generators run it: LoadImageFromFile (BGR), Resize(scale=(2048,
    short_side), keep_ratio) with cv2, PackSegInputs, the segmentor's
    SegDataPreProcessor, then seg.predict. forward_slide's output (the
    blended cosine scores) is kept. With a background threshold, it is
    moved into a gap of the best probabilities (common.clear_threshold) and
    the labels are made again by the official postprocess_result.
    -> params (prob_thd possibly moved), sample, blended scores (1, Q, H, W)."""
    import numpy as np
    import common
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    resized = mmcv_rescale(bgr, (2048, params["short_side"]))
    inputs = seg.data_preprocessor(torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))))
    captured = {}
    real_slide = seg.forward_slide

    def forward_slide(*a, **k):
        captured["blended"] = real_slide(*a, **k)
        return captured["blended"]
    seg.forward_slide = forward_slide
    if before_predict:
        before_predict(seg)
    with torch.no_grad():
        sample = SegDataSample(image.shape[:2])
        seg.predict(inputs, [sample])
        if params["prob_thd"] > 0:
            best = sample.data["seg_logits"].data.float().numpy().max(0)
            params = dict(params, prob_thd=common.clear_threshold(best, params["prob_thd"], 1e-5))
            seg.prob_thd = params["prob_thd"]
            sample = SegDataSample(image.shape[:2])
            seg.postprocess_result(captured["blended"], [sample])
    return params, sample, captured["blended"]
