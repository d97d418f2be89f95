"""Checks of tf_shim.py, function by function, against hand-computed values,
torch and plain numpy on small inputs. Needs numpy and torch (Debian's
python3-numpy, python3-torch); a tools-level test, not part of `make test`:

    /usr/bin/python3 tests/tools/methods/test_tf_shim.py -v
"""
import fractions
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tf_shim as tf  # noqa: E402


def h(x):
    return np.float16(x)


class Conversions(unittest.TestCase):
    def test_python_scalars(self):
        self.assertEqual(tf.convert_to_tensor(1.5).dtype, tf.float32)
        self.assertEqual(tf.convert_to_tensor(2).dtype, tf.int32)
        self.assertEqual(tf.convert_to_tensor(np.zeros(3)).dtype, tf.float64)

    def test_binary_op_takes_tensor_dtype(self):
        t = tf.Tensor(np.array([1.0, 3.0], np.float32))
        r = t * np.float64(1 / 3)
        self.assertEqual(r.dtype, tf.float32)
        np.testing.assert_array_equal(r.numpy(), np.array([1.0, 3.0], np.float32) * np.float32(1 / 3))

    def test_numpy_inplace_add_becomes_tensor(self):
        acc = np.zeros((2, 2))                 # float64, as aggregate_weights starts
        acc += tf.Tensor(np.full((2, 2), 0.1, np.float32))
        self.assertIsInstance(acc, tf.Tensor)
        self.assertEqual(acc.dtype, tf.float32)
        acc += tf.Tensor(np.full((2, 2), 0.2, np.float32))
        np.testing.assert_array_equal(acc.numpy(), np.float32(0.1) + np.float32(0.2))

    def test_mixed_tensor_dtypes_refused(self):
        with self.assertRaises(TypeError):
            tf.Tensor(np.ones(2, np.float16)) + tf.Tensor(np.ones(2, np.float32))

    def test_cast(self):
        t = tf.cast(np.array([1.0, 1e-8, 70000.0, 1 / 3]), tf.float16)
        self.assertEqual(t.dtype, tf.float16)
        self.assertEqual(t.numpy()[1], 0)                 # below 2^-25: underflows
        self.assertTrue(np.isinf(t.numpy()[2]))           # past 65504
        self.assertEqual(t.numpy()[3], h(1 / 3))
        self.assertEqual(tf.cast(t < 1.0, tf.float64).dtype, tf.float64)


class Float16(unittest.TestCase):
    def test_log(self):
        x = tf.Tensor(np.array([0.0, 1.0, 0.5, 3e-5], np.float16))
        got = tf.math.log(x).numpy()
        self.assertEqual(got.dtype, np.float16)
        self.assertTrue(np.isneginf(got[0]))
        self.assertEqual(got[1], 0)
        for g, v in zip(got[2:], [0.5, 3e-5]):
            self.assertEqual(g, h(np.log(np.float32(h(v)))))    # logf, rounded to half

    def test_ops_round_each_result(self):
        a, b = h(1.0009765625), h(0.0004882)
        t = tf.Tensor(np.array([a], np.float16)) - tf.Tensor(np.array([b], np.float16))
        self.assertEqual(t.numpy()[0], h(np.float32(a) - np.float32(b)))
        p = tf.math.multiply(tf.Tensor(np.array([h(3.0)])), tf.Tensor(np.array([h(1 / 3)])))
        self.assertEqual(p.numpy()[0], h(np.float32(h(3.0)) * np.float32(h(1 / 3))))
        self.assertEqual((tf.Tensor(np.array([h(3.0)])) / 2).numpy()[0], h(1.5))

    def test_ops_match_numpy_half_loops(self):
        rng = np.random.default_rng(3)
        a = np.concatenate([rng.standard_normal(5000), [0, np.inf, -np.inf, np.nan, 6e-8]]).astype(np.float16)
        b = np.concatenate([rng.random(5000) * 1e-3, [0, np.inf, 1.0, 2.0, 6e-8]]).astype(np.float16)
        ta, tb = tf.Tensor(a), tf.Tensor(b)
        with np.errstate(all="ignore"):
            for got, want in ((ta + tb, a + b), (ta - tb, a - b), (ta * tb, a * b), (ta / tb, a / b)):
                np.testing.assert_array_equal(got.numpy().view(np.uint16) & 0x7FFF | np.isnan(want) * 0,
                                              want.view(np.uint16) & 0x7FFF | np.isnan(want) * 0)
                np.testing.assert_array_equal(np.isnan(got.numpy()), np.isnan(want))
                np.testing.assert_array_equal(np.signbit(got.numpy()[~np.isnan(want)]),
                                              np.signbit(want[~np.isnan(want)]))

    def test_threshold_is_rounded_to_half(self):
        kl = tf.Tensor(np.array([h(1.1), h(1.0986)], np.float16))
        self.assertEqual(h(1.1), np.float16(1.099609375))
        np.testing.assert_array_equal((kl < np.float64(1.1)).numpy(), [False, True])

    def test_nan_paths(self):
        x = tf.Tensor(np.array([0.0, 0.5], np.float16))
        y = tf.Tensor(np.array([0.0, 0.25], np.float16))
        with np.errstate(invalid="ignore"):
            q = tf.math.log(x) - tf.math.log(y)
            self.assertTrue(np.isnan(q.numpy()[0]))          # -inf - -inf
            s = tf.math.reduce_sum(tf.math.multiply(x, q))
        self.assertTrue(np.isnan(s.numpy()))

    def test_reduce_sum_exact_then_rounded(self):
        rng = np.random.default_rng(0)
        v = rng.random((3, 4096)).astype(np.float16) * h(0.01)
        got = tf.math.reduce_sum(tf.Tensor(v), axis=-1).numpy()
        for i in range(3):
            exact = sum(fractions.Fraction(float(x)) for x in v[i])
            self.assertEqual(got[i], np.float16(float(exact)))
        self.assertEqual(got.dtype, np.float16)

    def test_reduce_sum_axes_keepdims(self):
        v = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
        got = tf.math.reduce_sum(tf.Tensor(v), axis=(-2, -1))
        np.testing.assert_array_equal(got.numpy(), [66, 210])
        got = tf.math.reduce_sum(tf.Tensor(v.astype(np.float64)), 1, keepdims=True)
        self.assertEqual(got.shape, (2, 1, 4))


class Float32(unittest.TestCase):
    def test_reduce_sum_rounded_once(self):
        rng = np.random.default_rng(1)
        v = rng.random((5, 7, 8)).astype(np.float32)
        got = tf.math.reduce_sum(tf.Tensor(v), (1, 2), keepdims=True).numpy()
        self.assertEqual(got.shape, (5, 1, 1))
        for i in range(5):
            exact = sum(fractions.Fraction(float(x)) for x in v[i].ravel())
            self.assertEqual(got[i, 0, 0], np.float32(float(exact)))


class Resize(unittest.TestCase):
    def test_hand_computed_2x(self):
        x = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32).reshape(1, 2, 2, 1)
        got = tf.image.resize(x, (4, 4)).numpy()[0, :, :, 0]
        # src = (i + 0.5) / 2 - 0.5: -0.25, 0.25, 0.75, 1.25 -> clamp, lerp 0.25, 0.75, clamp
        row = np.array([0.0, 0.25, 0.75, 1.0], np.float32)
        want = np.stack([row, row + 0.5, row + 1.5, row + 2.0])   # rows 0 and 1 differ by 2
        np.testing.assert_array_equal(got, want)

    def test_against_torch(self):
        import torch
        rng = np.random.default_rng(2)
        for (hh, ww), (oh, ow) in [((8, 8), (64, 64)), ((16, 16), (64, 64)), ((64, 64), (512, 512)),
                                   ((7, 5), (3, 11)), ((64, 64), (64, 64))]:
            x = rng.random((3, hh, ww, 2)).astype(np.float32)
            got = tf.image.resize(x, (oh, ow)).numpy()
            ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(oh, ow),
                                                  mode="bilinear", align_corners=False)
            ref = ref.permute(0, 2, 3, 1).numpy()
            np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
            if (hh, ww) == (oh, ow):
                np.testing.assert_array_equal(got, x)

    def test_tf_lerp_formula(self):
        # the CPU kernel's compute_lerp, term by term in float32
        x = np.array([[0.1, 0.7], [0.3, 0.9]], np.float32).reshape(1, 2, 2, 1)
        got = tf.image.resize(x, (4, 4)).numpy()[0, 1, 1, 0]
        xl = yl = np.float32(0.25)
        tl, tr, bl, br = (np.float32(v) for v in (0.1, 0.7, 0.3, 0.9))
        top = tl + (tr - tl) * xl
        bottom = bl + (br - bl) * xl
        self.assertEqual(got, top + (bottom - top) * yl)

    def test_upsampling2d_autocasts(self):
        x = np.arange(8, dtype=np.float64).reshape(2, 2, 2, 1)
        up = tf.keras.layers.UpSampling2D(size=(8, 8), data_format="channels_last", interpolation="bilinear")(x)
        self.assertEqual(up.dtype, tf.float32)
        self.assertEqual(up.shape, (2, 16, 16, 1))
        np.testing.assert_array_equal(up.numpy(), tf.image.resize(x.astype(np.float32), (16, 16)).numpy())


class Shapes(unittest.TestCase):
    def test_reshape_expand_repeat_concat(self):
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        self.assertEqual(tf.reshape(a, (3, 2)).shape, (3, 2))
        self.assertEqual(tf.reshape(a, (-1, 6)).shape, (1, 6))
        self.assertEqual(tf.expand_dims(a, axis=-1).shape, (2, 3, 1))
        self.assertEqual(tf.expand_dims(a, axis=(1)).shape, (2, 1, 3))
        np.testing.assert_array_equal(tf.repeat(a, repeats=2, axis=0).numpy(), np.repeat(a, 2, axis=0))
        np.testing.assert_array_equal(tf.concat([tf.Tensor(a), tf.Tensor(a)], axis=0).numpy(),
                                      np.concatenate([a, a]))
        t = tf.Tensor(a)
        self.assertEqual(t[0:1].shape, (1, 3))

    def test_matmul_argmax(self):
        a = np.array([[1.0, 0.0], [1.0, 1.0]])
        b = np.array([[0.25, 0.75], [0.5, 0.5]])
        np.testing.assert_array_equal(tf.matmul(a, b).numpy(), a @ b)
        x = np.array([[1.0, 2.0], [1.0, 0.0], [0.5, 2.0]], np.float32)
        got = tf.math.argmax(x, axis=0).numpy()
        self.assertEqual(got.dtype, np.int64)
        np.testing.assert_array_equal(got, [0, 0])       # ties: first index
        self.assertEqual(np.asarray(tf.Tensor(x)).shape, (3, 2))


class Segmentor(unittest.TestCase):
    """The official DiffSeg.KL through the shim on tiny maps."""

    def test_kl(self):
        root = os.environ.get("DIFFSEG_REPO", "/work/ext/diffseg")
        if not os.path.exists(os.path.join(root, "diffseg", "segmentor.py")):
            self.skipTest("google/diffseg not extracted at " + root)
        tf.install()
        try:
            import sklearn.cluster  # noqa: F401  (segmentor.py imports KMeans at the top)
        except ImportError:
            sk = type(sys)("sklearn.cluster")
            sk.KMeans = None
            sys.modules["sklearn"] = type(sys)("sklearn")
            sys.modules["sklearn"].cluster = sk
            sys.modules["sklearn.cluster"] = sk
        import importlib.util
        spec = importlib.util.spec_from_file_location("diffseg_segmentor",
                                                      os.path.join(root, "diffseg", "segmentor.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        DiffSeg = mod.DiffSeg
        seg = DiffSeg([1.1], False, 16)
        x = np.array([[0.5, 0.5], [0.25, 0.75]])
        y = np.array([[[0.25, 0.75], [0.5, 0.5]]])
        got = seg.KL(x, y).numpy()
        want = 0.5 * np.sum((x - y) * (np.log(x) - np.log(y)), axis=(-2, -1))
        np.testing.assert_allclose(got, want, rtol=1e-12)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = seg.KL(tf.cast(np.array([[0.0, 1.0]]), tf.float16), tf.cast(np.array([[0.0, 1.0]]), tf.float16))
        self.assertTrue(np.isnan(z.numpy()))


if __name__ == "__main__":
    unittest.main()
