"""A numpy stand-in for the few TensorFlow calls google/diffseg's segmentor
makes (diffseg/segmentor.py, class DiffSeg), so the official code runs
unmodified where TensorFlow cannot be installed. It is put on sys.path as
`tensorflow` by tests/tools/methods/diffseg.py only (install() below);
nothing else imports it. Tested on its own by test_tf_shim.py.

What it implements, with TF 2's semantics (keras 2.14 / TF 2.14 eager, the
versions diffseg's requirements.txt pins):

- Tensor: an immutable array with a TF dtype. Binary ops convert a Python
  or numpy operand to the tensor's dtype first (tf.convert_to_tensor with
  dtype=x.dtype, as math_ops' binary_op_wrapper does: `t * np.float64(r)`
  stays float32); two tensors of different dtypes are an error. numpy defers
  to it (`__array_priority__` 100, as tf.Tensor), so `ndarray += tensor`
  becomes `tensor.__radd__(ndarray)`: the ndarray is converted to the
  tensor's dtype and the result is a Tensor (what lets aggregate_weights
  call .numpy() on its float64 zeros).
- float16 arithmetic: every op in float32 rounded to float16 (Eigen::half);
  float32/float64 ops are IEEE (numpy's). tf.math.log likewise.
- tf.math.reduce_sum: float32 sums in float64 rounded once to float32;
  float16 sums exact (float64 holds them) rounded once to float16. TF's
  kernels accumulate in the input type in an order of their own (Eigen's
  packets on CPU, cub's blocks on GPU), which no reimplementation can
  follow; fmseg's runtime sums the same way as this shim (see
  recipes/diffseg.lua).
- tf.image.resize / keras UpSampling2D(interpolation='bilinear'): TF's
  ResizeBilinear with half_pixel_centers=True (no antialias): output
  float32, src = (i + 0.5) * in / out - 0.5, lower = max(floor(src), 0),
  upper = min(ceil(src), in - 1), lerp = src - floor(src),
  top = tl + (tr - tl) * xl, bottom = bl + (br - bl) * xl,
  out = top + (bottom - top) * yl, all in float32 (the CPU kernel's
  compute_lerp; no fused multiply-add). Keras layers autocast floating
  inputs to their float32 compute dtype first.
- tf.math.argmax: first index of the maximum, int64.
- tf.cast, tf.reshape, tf.expand_dims, tf.repeat, tf.concat, tf.matmul,
  tf.math.add, tf.math.multiply, comparisons, negation, slicing,
  .numpy(), np.asarray(tensor).

Anything else raises AttributeError, so a call the shim does not know
cannot pass silently.
"""
import sys
import types

import numpy as np

float16 = np.dtype("float16")
float32 = np.dtype("float32")
float64 = np.dtype("float64")
int32 = np.dtype("int32")
int64 = np.dtype("int64")
bool_ = np.dtype("bool")


class Tensor:
    """An eager tensor: a read-only numpy array with a TF dtype."""
    __array_priority__ = 100

    def __init__(self, value, dtype=None):
        a = np.array(value, dtype=dtype) if dtype is not None else np.array(value)
        a.setflags(write=False)
        self._a = a

    # -- what numpy and the segmentor read
    @property
    def dtype(self):
        return self._a.dtype

    @property
    def shape(self):
        return self._a.shape

    @property
    def ndim(self):
        return self._a.ndim

    def numpy(self):
        return self._a.copy()

    def __array__(self, dtype=None):
        return self._a.astype(dtype) if dtype is not None else self._a.copy()

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield Tensor(self._a[i])

    def __getitem__(self, key):
        if isinstance(key, Tensor):
            key = key._a
        return Tensor(self._a[key])

    def __repr__(self):
        return f"<shim Tensor shape={self.shape} dtype={self.dtype}>"

    # -- arithmetic
    def _other(self, other):
        if isinstance(other, Tensor):
            if other.dtype != self.dtype:
                raise TypeError(f"cannot combine {self.dtype} and {other.dtype} tensors "
                                "(TF: InvalidArgumentError)")
            return other._a
        return convert_to_tensor(other, dtype=self.dtype)._a

    def __add__(self, o): return _binary(np.add, self._a, self._other(o))
    def __radd__(self, o): return _binary(np.add, self._other(o), self._a)
    def __sub__(self, o): return _binary(np.subtract, self._a, self._other(o))
    def __rsub__(self, o): return _binary(np.subtract, self._other(o), self._a)
    def __mul__(self, o): return _binary(np.multiply, self._a, self._other(o))
    def __rmul__(self, o): return _binary(np.multiply, self._other(o), self._a)
    def __truediv__(self, o): return _binary(np.true_divide, self._a, self._other(o))
    def __rtruediv__(self, o): return _binary(np.true_divide, self._other(o), self._a)
    def __neg__(self): return Tensor(np.negative(self._a))   # exact in every float type
    def __lt__(self, o): return Tensor(np.less(self._a, self._other(o)))
    def __le__(self, o): return Tensor(np.less_equal(self._a, self._other(o)))
    def __gt__(self, o): return Tensor(np.greater(self._a, self._other(o)))
    def __ge__(self, o): return Tensor(np.greater_equal(self._a, self._other(o)))


def _binary(fn, a, b):
    if a.dtype == float16 and b.dtype == float16:
        # Eigen::half: the float result of the op, rounded to half (numpy's
        # float16 loops do the same, element by element and slowly)
        with np.errstate(all="ignore"):
            return Tensor(fn(a.astype(np.float32), b.astype(np.float32)).astype(np.float16))
    with np.errstate(all="ignore"):
        return Tensor(fn(a, b))


def convert_to_tensor(value, dtype=None):
    """tf.convert_to_tensor: Python floats default to float32, ints to
    int32; numpy keeps its dtype; dtype= converts."""
    if isinstance(value, Tensor):
        if dtype is not None and np.dtype(dtype) != value.dtype:
            raise TypeError(f"tensor of {value.dtype} where {np.dtype(dtype)} was asked")
        return value
    if dtype is not None:
        return Tensor(np.asarray(value).astype(np.dtype(dtype)))
    if isinstance(value, (bool, np.bool_)):
        return Tensor(np.asarray(value, dtype=bool))
    if isinstance(value, float):
        return Tensor(np.float32(value))
    if isinstance(value, int):
        return Tensor(np.int32(value))
    a = np.asarray(value)
    if a.dtype == object:
        raise TypeError("cannot convert to a tensor")
    if a.dtype.kind == "f" and not isinstance(value, np.ndarray) and not np.isscalar(value) \
            and not isinstance(value, np.generic):
        a = a.astype(np.float32)     # nested Python lists of floats
    return Tensor(a)


def _t(x):
    return convert_to_tensor(x)


def cast(x, dtype):
    return Tensor(_t(x)._a.astype(np.dtype(dtype)))


def reshape(x, shape):
    return Tensor(_t(x)._a.reshape(tuple(int(s) for s in shape)))


def expand_dims(x, axis):
    return Tensor(np.expand_dims(_t(x)._a, int(axis)))


def repeat(x, repeats, axis=None):
    return Tensor(np.repeat(_t(x)._a, repeats, axis=axis))


def concat(values, axis):
    arrs = [_t(v)._a for v in values]
    if len({a.dtype for a in arrs}) != 1:
        raise TypeError("concat: tensors of different dtypes")
    return Tensor(np.concatenate(arrs, axis=axis))


def matmul(a, b):
    a, b = _t(a), _t(b)
    if a.dtype != b.dtype:
        raise TypeError("matmul: tensors of different dtypes")
    if a.dtype == float16:
        raise NotImplementedError("float16 matmul is not used by the segmentor")
    return Tensor(np.matmul(a._a, b._a))


def _reduce_sum(x, axis=None, keepdims=False):
    x = _t(x)
    a = x._a
    if isinstance(axis, list):
        axis = tuple(axis)
    if a.dtype == float16:
        # exact in float64 (half terms span < 53 bits), one rounding to half
        return Tensor(np.sum(a.astype(np.float64), axis=axis, keepdims=keepdims).astype(np.float16))
    if a.dtype == float32:
        return Tensor(np.sum(a.astype(np.float64), axis=axis, keepdims=keepdims).astype(np.float32))
    if a.dtype == float64:
        return Tensor(np.sum(a, axis=axis, keepdims=keepdims))
    if a.dtype == bool_:
        raise TypeError("reduce_sum of bool")
    return Tensor(np.sum(a, axis=axis, keepdims=keepdims).astype(a.dtype))


def _log(x):
    x = _t(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        return Tensor(np.log(x._a))      # float16: logf then rounded to half


def _multiply(x, y):
    return _t(x) * y


def _add(x, y):
    if not isinstance(x, Tensor) and isinstance(y, Tensor):
        return y.__radd__(x)
    return _t(x) + y


def _argmax(x, axis=None):
    a = _t(x)._a
    if axis is None:
        axis = 0
    return Tensor(np.argmax(a, axis=axis).astype(np.int64))   # first maximum


# ---- tf.image.resize (bilinear, half-pixel centres) ------------------------------

def _tf_axis(out_size, in_size):
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    fl = np.floor(src)
    lower = np.maximum(fl.astype(np.int64), 0)
    upper = np.minimum(np.ceil(src).astype(np.int64), in_size - 1)
    lerp = (src - fl).astype(np.float32)
    return lower, upper, lerp


def resize_bilinear_half_pixel(images, size):
    """images (N, H, W, C) or (H, W, C) any real dtype -> float32 (N, OH, OW, C)."""
    a = _t(images)._a
    squeeze = a.ndim == 3
    if squeeze:
        a = a[None]
    a = a.astype(np.float32)
    n, h, w, c = a.shape
    oh, ow = int(size[0]), int(size[1])
    yl, yu, ylerp = _tf_axis(oh, h)
    xl, xu, xlerp = _tf_axis(ow, w)
    top_rows, bot_rows = a[:, yl], a[:, yu]                      # (N, OH, W, C)
    tl, tr = top_rows[:, :, xl], top_rows[:, :, xu]              # (N, OH, OW, C)
    bl, br = bot_rows[:, :, xl], bot_rows[:, :, xu]
    xlr = xlerp[None, None, :, None]
    ylr = ylerp[None, :, None, None]
    top = tl + (tr - tl) * xlr
    bottom = bl + (br - bl) * xlr
    out = (top + (bottom - top) * ylr).astype(np.float32)
    return Tensor(out[0] if squeeze else out)


class ResizeMethod:
    BILINEAR = "bilinear"
    NEAREST_NEIGHBOR = "nearest"


def _image_resize(images, size, method=ResizeMethod.BILINEAR, antialias=False):
    if method != ResizeMethod.BILINEAR or antialias:
        raise NotImplementedError("only bilinear without antialias is shimmed")
    return resize_bilinear_half_pixel(images, size)


class UpSampling2D:
    """keras.layers.UpSampling2D: channels_last, nearest or bilinear."""

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest"):
        self.size = (int(size[0]), int(size[1])) if not isinstance(size, int) else (size, size)
        if data_format not in (None, "channels_last"):
            raise NotImplementedError("channels_last only")
        if interpolation != "bilinear":
            raise NotImplementedError("bilinear only")

    def __call__(self, x):
        x = _t(x)
        if x.dtype.kind == "f" and x.dtype != float32:   # the layer's autocast to float32
            x = cast(x, float32)
        if x.ndim != 4:
            raise ValueError("UpSampling2D expects (N, H, W, C)")
        n, h, w, c = x.shape
        return resize_bilinear_half_pixel(x, (h * self.size[0], w * self.size[1]))


def install():
    """Puts this module in sys.modules as `tensorflow` (tf.math, tf.image,
    tf.keras.layers as sub-namespaces). Returns the module."""
    mod = sys.modules[__name__]
    sys.modules["tensorflow"] = mod
    return mod


math = types.SimpleNamespace(log=_log, reduce_sum=_reduce_sum, multiply=_multiply, add=_add, argmax=_argmax)
image = types.SimpleNamespace(resize=_image_resize, ResizeMethod=ResizeMethod)
keras = types.SimpleNamespace(layers=types.SimpleNamespace(UpSampling2D=UpSampling2D))
reduce_sum = _reduce_sum
