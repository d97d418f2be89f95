/* test_linalg.c — fm_linear and fm_matmul against naive loops in double. */
#include "fmseg.h"
#include "tap.h"

#include <string.h>

static fm_tensor *randn(int32_t ndim, const int64_t *shape) {
  fm_tensor *t = fm_tensor_new(FM_F32, ndim, shape);
  float *p = t->data;
  for (int64_t i = 0; i < fm_tensor_numel(t); ++i) p[i] = frand();
  return t;
}

static fm_tensor *zeros(int32_t ndim, const int64_t *shape) {
  return fm_tensor_new(FM_F32, ndim, shape);
}

/* the call failed and its message names every fragment given */
static int fails_with(int rc, const char *name, const char *a, const char *b) {
  const char *e = fm_last_error();
  int good = rc == -1 && strstr(e, a) && (!b || strstr(e, b));
  if (!good) diag(e);
  return ok(good, name);
}

// x: (M, K), w: (N, K), b: (N) or NULL; y: (M, N)
static void linear_ref(float *y, const float *x, const float *w, const float *b, long m,
                       long k, long n) {
  for (long i = 0; i < m; ++i)
    for (long j = 0; j < n; ++j) {
      double s = b ? b[j] : 0;
      for (long l = 0; l < k; ++l) s += (double)x[i * k + l] * w[j * k + l];
      y[i * n + j] = (float)s;
    }
}

static void test_linear(int32_t xdims, const int64_t *xshape, int64_t n, int bias) {
  int64_t k = xshape[xdims - 1], wshape[2] = {n, k}, oshape[FM_MAX_DIMS];
  memcpy(oshape, xshape, sizeof(int64_t) * xdims);
  oshape[xdims - 1] = n;
  fm_tensor *x = randn(xdims, xshape), *w = randn(2, wshape), *b = bias ? randn(1, &n) : NULL;
  fm_tensor *y = zeros(xdims, oshape);
  long m = (long)(fm_tensor_numel(x) / k);
  float *ref = malloc(sizeof(float) * m * n);
  linear_ref(ref, x->data, w->data, b ? b->data : NULL, m, (long)k, (long)n);
  int rc = fm_linear(y, x, w, b);
  char name[128];
  snprintf(name, sizeof name, "fm_linear rows %ld K %lld N %lld%s", m, (long long)k,
           (long long)n, bias ? " with bias" : "");
  ok(rc == 0 && rel_err(y->data, ref, m * n) < 1e-5, name);
  free(ref);
  fm_tensor_release(x), fm_tensor_release(w), fm_tensor_release(b), fm_tensor_release(y);
}

/* element (i, j) of matrix number bi of t read through its strides */
static float at(const fm_tensor *t, long bi, long i, long j) {
  const float *p = t->data;
  int32_t d = t->ndim;
  long off = i * t->strides[d - 2] + j * t->strides[d - 1];
  for (int32_t q = d - 3; q >= 0; --q) {
    off += (bi % t->dims[q]) * t->strides[q];
    bi /= t->dims[q];
  }
  return p[off];
}

static void matmul_ref(float *y, const fm_tensor *a, const fm_tensor *b, int ta, int tb,
                       float alpha, long batch, long m, long n, long k) {
  for (long bi = 0; bi < batch; ++bi)
    for (long i = 0; i < m; ++i)
      for (long j = 0; j < n; ++j) {
        double s = 0;
        long bb = b->ndim > 2 ? bi : 0;
        for (long l = 0; l < k; ++l)
          s += (double)(ta ? at(a, bi, l, i) : at(a, bi, i, l)) *
               (tb ? at(b, bb, j, l) : at(b, bb, l, j));
        y[(bi * m + i) * n + j] = (float)(alpha * s);
      }
}

/* a: batch dims + (M, K) (or (K, M)), b: batch dims or none + (K, N) (or (N, K)) */
static void test_matmul(int32_t nb, const int64_t *batch, int64_t m, int64_t k, int64_t n,
                        int ta, int tb, int b_batched, float alpha) {
  int64_t as[FM_MAX_DIMS], bs[FM_MAX_DIMS], os[FM_MAX_DIMS];
  long nbatch = 1;
  int32_t bd = b_batched ? nb : 0;  // b's own batch dims
  for (int32_t i = 0; i < nb; ++i) as[i] = bs[i] = os[i] = batch[i], nbatch *= batch[i];
  as[nb] = ta ? k : m, as[nb + 1] = ta ? m : k;
  bs[bd] = tb ? n : k, bs[bd + 1] = tb ? k : n;
  os[nb] = m, os[nb + 1] = n;
  fm_tensor *a = randn(nb + 2, as), *b = randn(bd + 2, bs);
  fm_tensor *y = zeros(nb + 2, os);
  float *ref = malloc(sizeof(float) * nbatch * m * n + 1);
  matmul_ref(ref, a, b, ta, tb, alpha, nbatch, (long)m, (long)n, (long)k);
  int rc = fm_matmul(y, a, b, ta, tb, alpha);
  char name[160];
  snprintf(name, sizeof name, "fm_matmul batch %ld M %lld K %lld N %lld ta %d tb %d%s alpha %g",
           nbatch, (long long)m, (long long)k, (long long)n, ta, tb,
           b_batched ? "" : " (b shared)", alpha);
  ok(rc == 0 && rel_err(y->data, ref, nbatch * m * n) < 1e-5, name);
  free(ref);
  fm_tensor_release(a), fm_tensor_release(b), fm_tensor_release(y);
}

/* Transposed and sliced views go in without a copy: q kᵀ from a fused
 * (B, T, 3C) tensor, with k given as a permuted view. */
static void test_matmul_views(void) {
  int64_t B = 2, T = 13, C = 9, qkv_shape[3] = {B, T, 3 * C};
  fm_tensor *qkv = randn(3, qkv_shape);
  fm_tensor *q = fm_tensor_narrow(qkv, 2, 0, C), *k = fm_tensor_narrow(qkv, 2, C, C);
  fm_tensor *kt = fm_tensor_permute(k, (int32_t[]){0, 2, 1});  // (B, C, T), unit row stride
  fm_tensor *y = zeros(3, (int64_t[]){B, T, T});
  float *ref = malloc(sizeof(float) * B * T * T);
  matmul_ref(ref, q, kt, 0, 0, 0.5f, (long)B, (long)T, (long)T, (long)C);
  int rc = fm_matmul(y, q, kt, 0, 0, 0.5f);
  ok(rc == 0 && rel_err(y->data, ref, B * T * T) < 1e-5,
     "fm_matmul: sliced q times permuted k view, no copies");
  // the same product asking BLAS to transpose the sliced k itself
  fm_tensor_fill_(y, 0);
  rc = fm_matmul(y, q, k, 0, 1, 0.5f);
  ok(rc == 0 && rel_err(y->data, ref, B * T * T) < 1e-5, "fm_matmul: trans_b on a sliced view");
  // a view with no unit stride in its last two dims cannot go to BLAS
  fm_tensor *every2 = fm_tensor_view(qkv, 3, (int64_t[]){B, T, C},
                                     (int64_t[]){3 * C * T, 3 * C, 2}, 0);
  rc = fm_matmul(y, q, every2, 0, 1, 1.f);
  fails_with(rc, "fm_matmul: no unit stride is refused", "fm_matmul: b", "unit stride");
  free(ref);
  fm_tensor_release(every2), fm_tensor_release(qkv), fm_tensor_release(q);
  fm_tensor_release(k), fm_tensor_release(kt), fm_tensor_release(y);
}

static void test_bad_inputs(void) {
  fm_tensor *x = randn(2, (int64_t[]){5, 12}), *w = randn(2, (int64_t[]){7, 11});
  fm_tensor *y = zeros(2, (int64_t[]){5, 7}), *b = randn(1, (int64_t[]){6});
  fm_tensor *w_ok = randn(2, (int64_t[]){7, 12}), *yi = fm_tensor_new(FM_I32, 2, (int64_t[]){5, 7});
  fails_with(fm_linear(y, x, w, NULL), "fm_linear: K mismatch names x and w shapes",
             "[5, 12]", "[7, 11]");
  fails_with(fm_linear(y, x, w_ok, b), "fm_linear: bias of the wrong length", "fm_linear: b",
             "[6]");
  fm_tensor *y_bad = zeros(2, (int64_t[]){5, 8});
  fails_with(fm_linear(y_bad, x, w_ok, NULL), "fm_linear: wrong out shape", "fm_linear: out",
             "[5, 8]");
  fails_with(fm_linear(yi, x, w_ok, NULL), "fm_linear: int32 out refused", "fm_linear: out",
             "int32");
  fails_with(fm_linear(y, x, NULL, NULL), "fm_linear: NULL w refused", "fm_linear: w", NULL);
  fm_tensor *xt = fm_tensor_permute(x, (int32_t[]){1, 0});
  fails_with(fm_linear(y, xt, w_ok, NULL), "fm_linear: non-contiguous x refused",
             "fm_linear: x", "contiguous");

  fm_tensor *a3 = randn(3, (int64_t[]){2, 5, 12}), *b3 = randn(3, (int64_t[]){3, 12, 4});
  fm_tensor *y3 = zeros(3, (int64_t[]){2, 5, 4});
  fails_with(fm_matmul(y3, a3, b3, 0, 0, 1.f), "fm_matmul: batch mismatch names both shapes",
             "[2, 5, 12]", "[3, 12, 4]");
  fails_with(fm_matmul(y3, a3, w, 0, 1, 1.f), "fm_matmul: K mismatch", "[2, 5, 12]", "[7, 11]");
  fails_with(fm_matmul(y3, a3, w_ok, 0, 1, 1.f), "fm_matmul: wrong out shape",
             "fm_matmul: out", "[2, 5, 7]");
  fm_tensor *v1 = randn(1, (int64_t[]){12});
  fails_with(fm_matmul(y3, v1, w_ok, 0, 1, 1.f), "fm_matmul: 1-D a refused", "[12]", NULL);
  fm_tensor_release(x), fm_tensor_release(w), fm_tensor_release(y), fm_tensor_release(b);
  fm_tensor_release(w_ok), fm_tensor_release(yi), fm_tensor_release(y_bad);
  fm_tensor_release(xt), fm_tensor_release(a3), fm_tensor_release(b3);
  fm_tensor_release(y3), fm_tensor_release(v1);
}

int main(void) {
  test_linear(2, (int64_t[]){1, 1}, 1, 0);
  test_linear(2, (int64_t[]){1, 1}, 1, 1);
  test_linear(2, (int64_t[]){7, 13}, 5, 1);
  test_linear(2, (int64_t[]){197, 64}, 17, 0);
  test_linear(2, (int64_t[]){197, 64}, 17, 1);
  test_linear(3, (int64_t[]){3, 5, 33}, 40, 1);
  test_linear(4, (int64_t[]){2, 3, 7, 48}, 129, 1);
  test_linear(1, (int64_t[]){31}, 9, 1);

  int64_t b1[1] = {3}, b2[2] = {2, 3};
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      test_matmul(1, b1, 7, 13, 5, ta, tb, 1, 1.f);
      test_matmul(2, b2, 17, 33, 9, ta, tb, 1, 0.125f);
      test_matmul(1, b1, 7, 13, 5, ta, tb, 0, 1.f);
    }
  test_matmul(0, NULL, 1, 1, 1, 0, 0, 1, 1.f);
  test_matmul(0, NULL, 197, 64, 197, 0, 1, 1, 0.125f);
  test_matmul(2, b2, 197, 64, 17, 0, 0, 0, 2.f);  // shared b: one tall product
  test_matmul(1, (int64_t[]){12}, 197, 64, 197, 0, 1, 1, 0.125f);  // attention-sized batch
  test_matmul_views();
  test_bad_inputs();
  return done_testing();
}
