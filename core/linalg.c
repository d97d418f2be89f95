/* linalg.c — fully connected layers and (batched) matrix products, on
 * OpenBLAS's cblas_sgemm. */
#include "kernels.h"

#include <cblas.h>

/* ---- fm_linear ----------------------------------------------------------- */

static bool fm__linear_check(const fm_tensor *out, const fm_tensor *x, const fm_tensor *w,
                             const fm_tensor *b) {
  char xs[128], ws[128], bs[128];
  if (!fm__check_input(x, "fm_linear: x") || !fm__check_input(w, "fm_linear: w") ||
      !fm__check_output(out, "fm_linear: out"))
    return false;
  if (x->ndim < 1) return fm__error("fm_linear: x must have at least 1 dim, got []"), false;
  if (!fm__check_ndim(w, 2, "fm_linear: w")) return false;
  int64_t k = x->dims[x->ndim - 1], n = w->dims[0];
  if (w->dims[1] != k)
    return fm__error("fm_linear: x %s and w %s disagree on K (w is (N, K) as PyTorch stores it)",
                     fm__shape_str(x, xs, sizeof xs), fm__shape_str(w, ws, sizeof ws)), false;
  if (b) {
    if (!fm__check_input(b, "fm_linear: b")) return false;
    if (b->ndim != 1 || b->dims[0] != n)
      return fm__error("fm_linear: b %s does not match w %s (expected [%lld])",
                       fm__shape_str(b, bs, sizeof bs), fm__shape_str(w, ws, sizeof ws),
                       (long long)n), false;
  }
  int64_t want[FM_MAX_DIMS];
  memcpy(want, x->dims, sizeof want);
  want[x->ndim - 1] = n;
  if (!fm__check_shape(out, x->ndim, want, "fm_linear: out")) return false;
  int64_t m = k ? fm_tensor_numel(x) / k : fm_tensor_numel(out) / (n ? n : 1);
  if (!fm__blas_fits(m) || !fm__blas_fits(n) || !fm__blas_fits(k))
    return fm__error("fm_linear: x %s, w %s: sizes exceed BLAS's int range",
                     fm__shape_str(x, xs, sizeof xs), fm__shape_str(w, ws, sizeof ws)), false;
  return true;
}

// x: (..., K) as (M, K), w: (N, K), b: (N) or NULL; out: (..., N) as (M, N)
int fm_linear(fm_tensor *out, const fm_tensor *x, const fm_tensor *w, const fm_tensor *b) {
  if (!fm__linear_check(out, x, w, b)) return -1;
  int64_t k = w->dims[1], n = w->dims[0];
  int64_t m = n ? fm_tensor_numel(out) / n : 0;
  float *y = fm__f32(out);
  if (m == 0 || n == 0) return 0;
  // the bias goes in first so that sgemm adds onto it (beta = 1): one pass
  // over out instead of two
  float beta = 0.f;
  if (b) {
    const float *bv = fm__f32(b);
    for (int64_t i = 0; i < m; ++i) memcpy(y + i * n, bv, (size_t)n * sizeof *y);
    beta = 1.f;
  }
  if (k == 0) {
    if (!b) memset(y, 0, (size_t)(m * n) * sizeof *y);
    return 0;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.f,
              fm__f32(x), (int)k, fm__f32(w), (int)k, beta, y, (int)n);
  return 0;
}

/* ---- fm_matmul ----------------------------------------------------------- */

/* How BLAS sees the last two dims (R, C) of an operand: row-major with
 * leading dimension ld (unit column stride), or column-major, i.e. the
 * transpose of a row-major matrix (unit row stride). That lets transposed
 * and sliced views in without a copy. */
typedef struct fm__mat {
  int32_t trans;
  int64_t ld;
} fm__mat;

static bool fm__mat_layout(const fm_tensor *t, fm__mat *m, const char *what) {
  char ts[128];
  int32_t d = t->ndim;
  int64_t r = t->dims[d - 2], c = t->dims[d - 1];
  int64_t sr = t->strides[d - 2], sc = t->strides[d - 1];
  int64_t c1 = c > 1 ? c : 1, r1 = r > 1 ? r : 1;
  // the stride of a size-1 dim is never used, so it constrains nothing
  if ((sc == 1 || c <= 1) && (r <= 1 || sr >= c1)) {
    m->trans = 0, m->ld = r <= 1 ? c1 : sr;
  } else if ((sr == 1 || r <= 1) && (c <= 1 || sc >= r1)) {
    m->trans = 1, m->ld = c <= 1 ? r1 : sc;
  } else {
    return fm__error("%s: tensor %s needs a unit stride in one of its last two dims "
                     "(strides %lld, %lld)", what, fm__shape_str(t, ts, sizeof ts),
                     (long long)t->strides[d - 2], (long long)t->strides[d - 1]), false;
  }
  if (!fm__blas_fits(m->ld))
    return fm__error("%s: stride %lld exceeds BLAS's int range", what, (long long)m->ld), false;
  return true;
}

/* Element offset of matrix number i among the leading (batch) dims of t. */
static int64_t fm__batch_offset(const fm_tensor *t, int64_t i) {
  int64_t off = 0;
  for (int32_t d = t->ndim - 3; d >= 0; --d) {
    off += (i % t->dims[d]) * t->strides[d];
    i /= t->dims[d];
  }
  return off;
}

static bool fm__matmul_check(const fm_tensor *out, const fm_tensor *a, const fm_tensor *b,
                             int32_t trans_a, int32_t trans_b) {
  char as[128], bs[128];
  if (!fm__check_f32(a, "fm_matmul: a") || !fm__check_f32(b, "fm_matmul: b") ||
      !fm__check_output(out, "fm_matmul: out"))
    return false;
  if (a->ndim < 2 || b->ndim < 2)
    return fm__error("fm_matmul: a %s and b %s need at least 2 dims",
                     fm__shape_str(a, as, sizeof as), fm__shape_str(b, bs, sizeof bs)), false;
  int32_t da = a->ndim, db = b->ndim;
  int64_t m = a->dims[da - (trans_a ? 1 : 2)], ka = a->dims[da - (trans_a ? 2 : 1)];
  int64_t kb = b->dims[db - (trans_b ? 1 : 2)], n = b->dims[db - (trans_b ? 2 : 1)];
  if (ka != kb)
    return fm__error("fm_matmul: a %s%s and b %s%s disagree on K (%lld vs %lld)",
                     fm__shape_str(a, as, sizeof as), trans_a ? " (transposed)" : "",
                     fm__shape_str(b, bs, sizeof bs), trans_b ? " (transposed)" : "",
                     (long long)ka, (long long)kb), false;
  bool batch_ok = db == 2 || db == da;
  for (int32_t d = 0; batch_ok && db > 2 && d < da - 2; ++d) batch_ok = a->dims[d] == b->dims[d];
  if (!batch_ok)
    return fm__error("fm_matmul: batch dims of a %s and b %s differ (b may also be 2-D)",
                     fm__shape_str(a, as, sizeof as), fm__shape_str(b, bs, sizeof bs)), false;
  int64_t want[FM_MAX_DIMS];
  memcpy(want, a->dims, sizeof want);
  want[da - 2] = m, want[da - 1] = n;
  if (!fm__check_shape(out, da, want, "fm_matmul: out")) return false;
  if (!fm__blas_fits(m) || !fm__blas_fits(n) || !fm__blas_fits(ka))
    return fm__error("fm_matmul: a %s, b %s: sizes exceed BLAS's int range",
                     fm__shape_str(a, as, sizeof as), fm__shape_str(b, bs, sizeof bs)), false;
  return true;
}

/* Batched products run one matrix per thread: sgemm is single-threaded
 * inside an OpenMP region with OpenBLAS's OpenMP build, and the threads
 * never wait on each other within a product. Measured on 2 busy cores
 * against one threaded sgemm after another: 12 x (197x64 . 64x197) 5x,
 * 3 x (1024x64 . 64x1024) 4x, 3 x (2048x256 . 256x2048) 1.35x faster. */
// a: (..., M, K) or (..., K, M) when trans_a; b: (..., K, N) or (..., N, K)
// when trans_b, or 2-D; out: (..., M, N) = alpha * op(a) op(b)
int fm_matmul(fm_tensor *out, const fm_tensor *a, const fm_tensor *b,
              int32_t trans_a, int32_t trans_b, float alpha) {
  if (!fm__matmul_check(out, a, b, trans_a, trans_b)) return -1;
  fm__mat la, lb;
  if (!fm__mat_layout(a, &la, "fm_matmul: a") || !fm__mat_layout(b, &lb, "fm_matmul: b"))
    return -1;
  int32_t d = out->ndim;
  int64_t m = out->dims[d - 2], n = out->dims[d - 1];
  int64_t k = a->dims[a->ndim - (trans_a ? 2 : 1)];
  int64_t batch = m * n != 0 ? fm_tensor_numel(out) / (m * n) : 0;
  float *y = fm__f32(out);
  if (batch == 0 || m == 0 || n == 0) return 0;
  if (k == 0) {
    memset(y, 0, (size_t)fm_tensor_numel(out) * sizeof *y);
    return 0;
  }
  CBLAS_TRANSPOSE ta = (trans_a != 0) != (la.trans != 0) ? CblasTrans : CblasNoTrans;
  CBLAS_TRANSPOSE tb = (trans_b != 0) != (lb.trans != 0) ? CblasTrans : CblasNoTrans;
  bool b_batched = b->ndim > 2;
  // b shared and a's rows evenly spaced with a plain layout: one tall product
  if (!b_batched && ta == CblasNoTrans && fm_tensor_is_contiguous(a) &&
      fm__blas_fits(batch * m)) {
    cblas_sgemm(CblasRowMajor, ta, tb, (int)(batch * m), (int)n, (int)k, alpha, fm__f32(a),
                (int)la.ld, fm__f32(b), (int)lb.ld, 0.f, y, (int)n);
    return 0;
  }
  #pragma omp parallel for schedule(dynamic) if (batch > 1)
  for (int64_t i = 0; i < batch; ++i) {
    const float *ai = fm__f32(a) + fm__batch_offset(a, i);
    const float *bi = fm__f32(b) + (b_batched ? fm__batch_offset(b, i) : 0);
    cblas_sgemm(CblasRowMajor, ta, tb, (int)m, (int)n, (int)k, alpha, ai, (int)la.ld, bi,
                (int)lb.ld, 0.f, y + i * m * n, (int)n);
  }
  return 0;
}
