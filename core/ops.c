/* ops.c — elementwise arithmetic with broadcasting, activations,
 * reductions and concatenation (float32). */
#include "internal.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

/* ---- broadcasting ----------------------------------------------------- */

/* Strides of `t` seen with the broadcast shape `shape` (ndim dims, right
 * aligned): size-1 and missing dims get stride 0. */
static bool fm__broadcast_strides(const fm_tensor *t, int32_t ndim, const int64_t *shape,
                                  int64_t *stride, const char *what) {
  int32_t off = ndim - t->ndim;
  char a[128];
  for (int32_t i = 0; i < ndim; ++i) {
    int32_t j = i - off;
    if (j < 0) { stride[i] = 0; continue; }
    if (t->dims[j] == shape[i]) stride[i] = t->strides[j];
    else if (t->dims[j] == 1) stride[i] = 0;
    else return fm__error("%s: shape %s does not broadcast", what, fm__shape_str(t, a, sizeof a)), false;
  }
  return true;
}

static bool fm__broadcast_shape(const fm_tensor *a, const fm_tensor *b, int32_t *ndim, int64_t *shape) {
  char x[128], y[128];
  int32_t n = a->ndim > b->ndim ? a->ndim : b->ndim;
  for (int32_t i = 0; i < n; ++i) {
    int32_t ia = i - (n - a->ndim), ib = i - (n - b->ndim);
    int64_t sa = ia >= 0 ? a->dims[ia] : 1, sb = ib >= 0 ? b->dims[ib] : 1;
    if (sa != sb && sa != 1 && sb != 1)
      return fm__error("binary op: shapes %s and %s do not broadcast", fm__shape_str(a, x, sizeof x),
                       fm__shape_str(b, y, sizeof y)), false;
    shape[i] = sa == 1 ? sb : sa;
  }
  *ndim = n;
  return true;
}

static float fm__apply_binary(float x, float y, int32_t op) {
  switch (op) {
  case FM_ADD: return x + y;
  case FM_SUB: return x - y;
  case FM_MUL: return x * y;
  case FM_DIV: return x / y;
  case FM_MAX: return x > y || x != x ? x : y;
  case FM_MIN: return x < y || x != x ? x : y;
  case FM_POW: return powf(x, y);
  case FM_GT: return x > y;
  case FM_GE: return x >= y;
  case FM_LT: return x < y;
  case FM_LE: return x <= y;
  case FM_EQ: return x == y;
  default: return NAN;
  }
}

/* Inner loop over the last dim with general strides. */
static void fm__binary_row(float *o, const float *a, int64_t sa, const float *b, int64_t sb,
                           int64_t n, int32_t op) {
  if (op == FM_ADD && sa == 1 && sb == 1) {
    for (int64_t i = 0; i < n; ++i) o[i] = a[i] + b[i];
  } else if (op == FM_MUL && sa == 1 && sb == 1) {
    for (int64_t i = 0; i < n; ++i) o[i] = a[i] * b[i];
  } else if (op == FM_ADD && sa == 1 && sb == 0) {
    float y = b[0];
    for (int64_t i = 0; i < n; ++i) o[i] = a[i] + y;
  } else if (op == FM_MUL && sa == 1 && sb == 0) {
    float y = b[0];
    for (int64_t i = 0; i < n; ++i) o[i] = a[i] * y;
  } else {
    for (int64_t i = 0; i < n; ++i) o[i] = fm__apply_binary(a[i * sa], b[i * sb], op);
  }
}

int fm_binary(fm_tensor *out, const fm_tensor *a, const fm_tensor *b, int32_t op) {
  int32_t nd;
  int64_t shape[FM_MAX_DIMS], sa[FM_MAX_DIMS], sb[FM_MAX_DIMS];
  if (op < FM_ADD || op > FM_EQ) return fm__error("binary op: unknown op %d", (int)op);
  if (!fm__check_f32(a, "binary op: a") || !fm__check_f32(b, "binary op: b")) return -1;
  if (!fm__check_output(out, "binary op: out")) return -1;
  if (!fm__broadcast_shape(a, b, &nd, shape)) return -1;
  if (!fm__check_shape(out, nd, shape, "binary op: out")) return -1;
  if (!fm__broadcast_strides(a, nd, shape, sa, "binary op: a") ||
      !fm__broadcast_strides(b, nd, shape, sb, "binary op: b"))
    return -1;
  int64_t n = fm_tensor_numel(out);
  if (n == 0) return 0;
  if (nd == 0) {
    fm__f32(out)[0] = fm__apply_binary(fm__f32(a)[0], fm__f32(b)[0], op);
    return 0;
  }
  int64_t inner = shape[nd - 1], rows = n / inner;
  float *o = fm__f32(out);
  #pragma omp parallel for if (n > 65536) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, oa = 0, ob = 0;
    for (int32_t i = nd - 2; i >= 0; --i) {
      int64_t idx = rem % shape[i];
      rem /= shape[i];
      oa += idx * sa[i];
      ob += idx * sb[i];
    }
    fm__binary_row(o + r * inner, fm__f32(a) + oa, sa[nd - 1], fm__f32(b) + ob, sb[nd - 1], inner, op);
  }
  return 0;
}

int fm_binary_scalar(fm_tensor *out, const fm_tensor *a, double s, int32_t op) {
  int64_t shape[1] = {1};
  float value = (float)s;
  fm_tensor *b = fm_tensor_borrow(FM_F32, 1, shape, &value);
  if (!b) return -1;
  int rc = fm_binary(out, a, b, op);
  fm_tensor_release(b);
  return rc;
}

/* ---- unary ---------------------------------------------------------------- */

static float fm__apply_unary(float x, int32_t op) {
  switch (op) {
  case FM_NEG: return -x;
  case FM_EXP: return expf(x);
  case FM_LOG: return logf(x);
  case FM_SQRT: return sqrtf(x);
  case FM_ABS: return fabsf(x);
  case FM_TANH: return tanhf(x);
  case FM_SIGMOID: return 1.f / (1.f + expf(-x));
  case FM_RELU: return x > 0 ? x : 0;
  /* GELU as torch's default (erf form) */
  case FM_GELU: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
  case FM_GELU_TANH: return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  /* CLIP's x * sigmoid(1.702 x) */
  case FM_QUICK_GELU: return x / (1.f + expf(-1.702f * x));
  case FM_SILU: return x / (1.f + expf(-x));
  case FM_FLOOR: return floorf(x);
  case FM_ROUND: return nearbyintf(x); /* half to even, as torch.round */
  case FM_RSQRT: return 1.f / sqrtf(x);
  case FM_SIN: return sinf(x);
  case FM_COS: return cosf(x);
  case FM_ERF: return erff(x);
  default: return NAN;
  }
}

int fm_unary(fm_tensor *out, const fm_tensor *a, int32_t op) {
  if (op < FM_NEG || op > FM_ERF) return fm__error("unary op: unknown op %d", (int)op);
  if (!fm__check_f32(a, "unary op: a") || !fm__check_output(out, "unary op: out")) return -1;
  if (!fm__check_shape(out, a->ndim, a->dims, "unary op: out")) return -1;
  fm_tensor *src = fm_tensor_contiguous(a);
  if (!src) return -1;
  int64_t n = fm_tensor_numel(a);
  const float *x = fm__f32(src);
  float *o = fm__f32(out);
  /* The activations of the transformer blocks get loops of their own so
   * the compiler can vectorise them; the rest go through the switch. */
  #pragma omp parallel for if (n > 32768) schedule(static)
  for (int64_t start = 0; start < n; start += 4096) {
    int64_t end = start + 4096 < n ? start + 4096 : n;
    switch (op) {
    case FM_GELU:
      for (int64_t i = start; i < end; ++i) o[i] = 0.5f * x[i] * (1.f + erff(x[i] * 0.70710678118654752f));
      break;
    case FM_QUICK_GELU:
      for (int64_t i = start; i < end; ++i) o[i] = x[i] / (1.f + expf(-1.702f * x[i]));
      break;
    case FM_SILU:
      for (int64_t i = start; i < end; ++i) o[i] = x[i] / (1.f + expf(-x[i]));
      break;
    default:
      for (int64_t i = start; i < end; ++i) o[i] = fm__apply_unary(x[i], op);
    }
  }
  fm_tensor_release(src);
  return 0;
}

/* ---- reductions ------------------------------------------------------- */

static double fm__reduce_strided(const float *p, int64_t n, int64_t stride, int32_t op) {
  double acc;
  int64_t best = 0;
  switch (op) {
  case FM_SUM: case FM_MEAN:
    acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += p[i * stride];
    return op == FM_MEAN ? acc / (double)n : acc;
  case FM_NORM2:
    acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += (double)p[i * stride] * p[i * stride];
    return sqrt(acc);
  case FM_RMAX: case FM_ARGMAX:
    for (int64_t i = 1; i < n; ++i) /* first maximum, NaN wins as in torch */
      if (p[i * stride] > p[best * stride] || (p[i * stride] != p[i * stride] && p[best * stride] == p[best * stride])) best = i;
    return op == FM_RMAX ? p[best * stride] : (double)best;
  case FM_RMIN: case FM_ARGMIN:
    for (int64_t i = 1; i < n; ++i)
      if (p[i * stride] < p[best * stride] || (p[i * stride] != p[i * stride] && p[best * stride] == p[best * stride])) best = i;
    return op == FM_RMIN ? p[best * stride] : (double)best;
  default:
    return NAN;
  }
}

int fm_reduce(fm_tensor *out, const fm_tensor *a, int32_t dim, int32_t op) {
  char s[128];
  if (op < FM_SUM || op > FM_NORM2) return fm__error("reduce: unknown op %d", (int)op);
  if (!fm__check_f32(a, "reduce: a")) return -1;
  if (!out || !fm__check_contiguous(out, "reduce: out") || !fm__check_writable(out, "reduce: out")) return -1;
  if (dim < 0) dim += a->ndim;
  if (dim < 0 || dim >= a->ndim) return fm__error("reduce: dim out of range for %s", fm__shape_str(a, s, sizeof s));
  int64_t n = a->dims[dim];
  if (n == 0 && op != FM_SUM) return fm__error("reduce: empty dim %d", (int)dim);
  int64_t rest = 1;
  for (int32_t i = 0; i < a->ndim; ++i) if (i != dim) rest *= a->dims[i];
  bool want_int = op == FM_ARGMAX || op == FM_ARGMIN;
  if (fm_tensor_numel(out) != rest)
    return fm__error("reduce: out %s must have %" PRId64 " elements", fm__shape_str(out, s, sizeof s), rest);
  if (want_int ? out->type != FM_I32 && out->type != FM_F32 : out->type != FM_F32)
    return fm__error("reduce: out has dtype %s", fm_dtype_name(out->type));
  /* Outer index over the remaining dims in row-major order. */
  int64_t rshape[FM_MAX_DIMS], rstride[FM_MAX_DIMS];
  int32_t rn = 0;
  for (int32_t i = 0; i < a->ndim; ++i)
    if (i != dim) { rshape[rn] = a->dims[i]; rstride[rn++] = a->strides[i]; }
  #pragma omp parallel for if (rest * n > 65536) schedule(static)
  for (int64_t r = 0; r < rest; ++r) {
    int64_t rem = r, off = 0;
    for (int32_t i = rn - 1; i >= 0; --i) {
      off += (rem % rshape[i]) * rstride[i];
      rem /= rshape[i];
    }
    double v = n ? fm__reduce_strided(fm__f32(a) + off, n, a->strides[dim], op) : 0;
    if (out->type == FM_I32) ((int32_t *)out->data)[r] = (int32_t)v;
    else fm__f32(out)[r] = (float)v;
  }
  return 0;
}

double fm_reduce_all(const fm_tensor *a, int32_t op) {
  if (!fm__check_f32(a, "reduce_all") || (op != FM_SUM && op != FM_MEAN && op != FM_RMAX &&
      op != FM_RMIN && op != FM_NORM2)) {
    if (a && a->type == FM_F32) fm__error("reduce_all: unsupported op %d", (int)op);
    return NAN;
  }
  int64_t n = fm_tensor_numel(a);
  if (n == 0) return op == FM_SUM || op == FM_NORM2 ? 0 : NAN;
  fm_tensor *c = fm_tensor_contiguous(a);
  if (!c) return NAN;
  double v = fm__reduce_strided(fm__f32(c), n, 1, op);
  fm_tensor_release(c);
  return v;
}

/* ---- concatenation ------------------------------------------------------ */

int fm_cat(fm_tensor *out, const fm_tensor *const *parts, int32_t n, int32_t dim) {
  char a[128], b[128];
  if (n <= 0) return fm__error("cat: no tensors");
  if (!out || !fm__check_writable(out, "cat: out")) return -1;
  if (dim < 0) dim += out->ndim;
  if (dim < 0 || dim >= out->ndim) return fm__error("cat: dim out of range");
  int64_t at = 0;
  for (int32_t p = 0; p < n; ++p) {
    const fm_tensor *t = parts[p];
    bool fits = t && t->ndim == out->ndim && t->type == out->type;
    for (int32_t i = 0; fits && i < t->ndim; ++i) fits = i == dim || t->dims[i] == out->dims[i];
    if (!fits)
      return fm__error("cat: part %d %s does not fit out %s along dim %d", (int)p,
                       t ? fm__shape_str(t, a, sizeof a) : "NULL", fm__shape_str(out, b, sizeof b), (int)dim);
    fm_tensor *slot = fm_tensor_narrow(out, dim, at, t->dims[dim]);
    if (!slot) return -1;
    int rc = fm_tensor_copy_(slot, t);
    fm_tensor_release(slot);
    if (rc) return rc;
    at += t->dims[dim];
  }
  if (at != out->dims[dim]) return fm__error("cat: parts sum to %" PRId64 " along dim %d, out has %" PRId64, at, (int)dim, out->dims[dim]);
  return 0;
}
