"""The smallest stand-ins for the OpenMMLab names that the official
training-free segmentation code bases import (SCLIP, ClearCLIP, NACLIP and
the like) but that cannot be installed here (mmseg, mmengine, mmcv), and
the test pipeline of their configs, so that their segmentor classes' own
methods run unmodified. Each stand-in does what the named class does on the
path those code bases use at test time and nothing more; anything else
raises.

    import mm_stubs
    mm_stubs.install()                      # before importing the repo
    seg = CLIPForSegmentation(...)          # the official class
    data = mm_stubs.test_pipeline("image.png", short_side=336)
    samples = mm_stubs.test_step(seg, data)

ref: mmsegmentation 1.x mmseg/models/segmentors/base.py (BaseSegmentor),
     mmseg/models/data_preprocessor.py (SegDataPreProcessor),
     mmseg/datasets/transforms/formatting.py (PackSegInputs),
     mmengine/structures (PixelData, BaseDataElement), mmengine/model
     (BaseModel.test_step), mmcv/image/geometric.py (rescale_size,
     imrescale, imresize), mmcv/transforms/loading.py (LoadImageFromFile).
"""
import sys
import types

import cv2
import numpy as np
import torch


# ---- mmengine.structures --------------------------------------------------------

class BaseDataElement:
    """metainfo (set once, read as .metainfo) and data fields set by
    set_data, read as attributes."""

    def __init__(self, *, metainfo=None, **kwargs):
        self._metainfo = dict(metainfo or {})
        self.set_data(kwargs)

    @property
    def metainfo(self):
        return dict(self._metainfo)

    def set_metainfo(self, metainfo):
        self._metainfo.update(metainfo)

    def set_data(self, data):
        for k, v in data.items():
            setattr(self, k, v)

    def __getattr__(self, name):
        # metainfo fields read as attributes (data_sample.img_path)
        meta = self.__dict__.get("_metainfo", {})
        if name in meta:
            return meta[name]
        raise AttributeError(name)


class PixelData(BaseDataElement):
    pass


class SegDataSample(BaseDataElement):
    pass


# ---- mmseg.registry ---------------------------------------------------------------

class Registry:
    def __init__(self, name):
        self.name, self.modules = name, {}

    def register_module(self, name=None, force=False, module=None):
        def add(cls):
            self.modules[name or cls.__name__] = cls
            return cls
        return add(module) if module is not None else add

    def get(self, name):
        return self.modules[name]


MODELS = Registry("model")


# ---- mmseg.models -----------------------------------------------------------------

class SegDataPreProcessor(torch.nn.Module):
    """Test-time path of mmseg's SegDataPreProcessor: swap BGR/RGB when
    asked (bgr_to_rgb and rgb_to_bgr both reverse the channels), cast to
    float, (x - mean) / std, stack (no test_cfg: no padding)."""

    def __init__(self, mean=None, std=None, size=None, size_divisor=None, pad_val=0, seg_pad_val=255,
                 bgr_to_rgb=False, rgb_to_bgr=False, batch_augments=None, test_cfg=None):
        super().__init__()
        if size is not None or size_divisor is not None or test_cfg is not None:
            raise NotImplementedError("mm_stubs: padding in the data preprocessor")
        assert not (bgr_to_rgb and rgb_to_bgr)
        self.channel_conversion = rgb_to_bgr or bgr_to_rgb
        self._enable_normalize = mean is not None
        if mean is not None:
            self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), False)
            self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), False)

    def forward(self, data, training=False):
        assert not training
        inputs = data["inputs"]
        if self.channel_conversion and inputs[0].size(0) == 3:
            inputs = [_input[[2, 1, 0], ...] for _input in inputs]
        inputs = [_input.float() for _input in inputs]
        if self._enable_normalize:
            inputs = [(_input - self.mean) / self.std for _input in inputs]
        inputs = torch.stack(inputs, dim=0)
        return dict(inputs=inputs, data_samples=data.get("data_samples"))


class BaseSegmentor(torch.nn.Module):
    """BaseModel + BaseSegmentor as far as testing goes: keeps the data
    preprocessor; forward(mode='predict') calls predict."""

    def __init__(self, data_preprocessor=None, init_cfg=None):
        super().__init__()
        self.data_preprocessor = data_preprocessor

    def forward(self, inputs, data_samples=None, mode="tensor"):
        if mode == "predict":
            return self.predict(inputs, data_samples)
        raise NotImplementedError(f"mm_stubs: BaseSegmentor.forward mode {mode!r}")

    def test_step(self, data):
        """BaseModel.test_step: preprocess, then forward in predict mode."""
        data = self.data_preprocessor(data, False)
        return self(**data, mode="predict")


def add_prefix(inputs, prefix):
    return {f"{prefix}.{k}": v for k, v in inputs.items()}


def resize(input, size=None, scale_factor=None, mode="nearest", align_corners=None, warning=True):
    """mmseg.models.utils.resize (its warning left out)."""
    return torch.nn.functional.interpolate(input, size, scale_factor, mode, align_corners)


# ---- mmcv's image functions and the configs' test pipeline ------------------------

def rescale_size(old_size, scale):
    """mmcv.rescale_size for a tuple scale: old_size (w, h) -> (w, h)."""
    w, h = old_size
    max_long_edge, max_short_edge = max(scale), min(scale)
    scale_factor = min(max_long_edge / max(h, w), max_short_edge / min(h, w))
    return int(w * float(scale_factor) + 0.5), int(h * float(scale_factor) + 0.5)


def imresize(img, size):
    """mmcv.imresize with the cv2 backend, bilinear: size (w, h)."""
    return cv2.resize(img, size, dst=None, interpolation=cv2.INTER_LINEAR)


def imrescale(img, scale):
    h, w = img.shape[:2]
    return imresize(img, rescale_size((w, h), scale))


def load_image_from_file(path):
    """LoadImageFromFile: mmcv.imfrombytes(flag='color', backend='cv2'),
    i.e. cv2.imdecode(..., IMREAD_COLOR): BGR uint8 (H, W, 3)."""
    buf = np.frombuffer(open(path, "rb").read(), np.uint8)
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def test_pipeline(path, scale):
    """LoadImageFromFile, Resize(scale=SCALE, keep_ratio=True) (mmcv's
    Resize: imrescale, cv2 bilinear), PackSegInputs -> the data dict that
    the runner hands test_step (a batch of one)."""
    img = load_image_from_file(path)
    ori_shape = img.shape[:2]
    img = imrescale(img, scale)
    inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    meta = dict(img_path=path, ori_shape=ori_shape, img_shape=img.shape[:2], pad_shape=img.shape[:2],
                scale_factor=(img.shape[1] / ori_shape[1], img.shape[0] / ori_shape[0]), flip=False,
                flip_direction=None, reduce_zero_label=False)
    return dict(inputs=[inputs], data_samples=[SegDataSample(metainfo=meta)])


def test_step_tuned(seg, data, scores_method, prob_thd, probs_field="seg_logits"):
    """seg.test_step(data) with seg.<scores_method> watched (what it returns
    is kept: the scores postprocess_result receives). With a background
    threshold, it is moved into a gap of the best class probabilities
    (common.clear_threshold, clear by 1e-5) and the labels are made again by
    the official postprocess_result. -> sample, prob_thd, the scores."""
    import common
    captured = {}
    real = getattr(seg, scores_method)

    def watched(*a, **k):
        captured["scores"] = real(*a, **k)
        return captured["scores"]
    setattr(seg, scores_method, watched)
    with torch.no_grad():
        sample = seg.test_step(data)[0]
        if prob_thd > 0:
            best = getattr(sample, probs_field).data.float().numpy().max(0)
            prob_thd = common.clear_threshold(best, prob_thd, 1e-5)
            seg.prob_thd = prob_thd
            sample = SegDataSample(metainfo=data["data_samples"][0].metainfo)
            seg.postprocess_result(captured["scores"], [sample])
    return sample, prob_thd, captured["scores"]


# ---- install ----------------------------------------------------------------------

def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    m.__file__ = __file__
    sys.modules[name] = m
    return m


def install():
    """Puts mmengine, mmseg (and ftfy, not packaged for Debian) stand-ins
    into sys.modules."""
    _module("mmengine")
    _module("mmengine.structures", BaseDataElement=BaseDataElement, PixelData=PixelData)
    _module("mmseg")
    _module("mmseg.registry", MODELS=MODELS)
    _module("mmseg.structures", SegDataSample=SegDataSample)
    _module("mmseg.models")
    _module("mmseg.models.segmentors", BaseSegmentor=BaseSegmentor)
    _module("mmseg.models.data_preprocessor", SegDataPreProcessor=SegDataPreProcessor)
    _module("mmseg.models.utils", resize=resize)
    _module("mmseg.utils", add_prefix=add_prefix)
    for parent, child in (("mmengine", "structures"), ("mmseg", "registry"), ("mmseg", "structures"),
                          ("mmseg", "models"), ("mmseg.models", "segmentors"),
                          ("mmseg.models", "data_preprocessor"), ("mmseg.models", "utils"),
                          ("mmseg", "utils")):
        setattr(sys.modules[parent], child, sys.modules[parent + "." + child])
    try:
        import ftfy  # noqa: F401
    except ImportError:
        # CLIP's tokenizer calls ftfy.fix_text first; on plain ASCII text
        # without HTML entities (every prompt here) it returns its input.
        def fix_text(text):
            assert text.isascii() and "&" not in text, "mm_stubs' ftfy only passes plain ASCII through"
            return text
        _module("ftfy", fix_text=fix_text)
