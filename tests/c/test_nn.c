/* test_nn.c — layer norm, group norm, channels-first layer norm and softmax
 * against naive loops in double. */
#include "fmseg.h"
#include "tap.h"

#include <string.h>

static fm_tensor *randn(int32_t ndim, const int64_t *shape, float scale, float shift) {
  fm_tensor *t = fm_tensor_new(FM_F32, ndim, shape);
  float *p = t->data;
  for (int64_t i = 0; i < fm_tensor_numel(t); ++i) p[i] = frand() * scale + shift;
  return t;
}

static fm_tensor *like(const fm_tensor *t) { return fm_tensor_new(FM_F32, t->ndim, t->dims); }

static int fails_with(int rc, const char *name, const char *a, const char *b) {
  const char *e = fm_last_error();
  int good = rc == -1 && strstr(e, a) && (!b || strstr(e, b));
  if (!good) diag(e);
  return ok(good, name);
}

/* y[i] = (x[i] - mean) / sqrt(var + eps) * w[c(i)] + b[c(i)] over n values
 * x[i * step], c(i) = i / per_ch (the affine channel of element i) */
static void norm_ref(float *y, const float *x, long n, long step, long per_ch, const float *w,
                     const float *b, long c0, double eps) {
  double mean = 0, var = 0;
  for (long i = 0; i < n; ++i) mean += x[i * step];
  mean /= n;
  for (long i = 0; i < n; ++i) var += (x[i * step] - mean) * (x[i * step] - mean);
  var /= n;
  for (long i = 0; i < n; ++i) {
    long c = c0 + i / per_ch;
    y[i * step] = (float)((x[i * step] - mean) / sqrt(var + eps) * (w ? w[c] : 1) + (b ? b[c] : 0));
  }
}

static void test_layer_norm(int64_t rows, int64_t c, int affine, int in_place) {
  int64_t shape[2] = {rows, c};
  // a large shift: a one-pass float variance would lose it
  fm_tensor *x = randn(2, shape, 2.f, 30.f), *y = in_place ? fm_tensor_retain(x) : like(x);
  fm_tensor *w = affine ? randn(1, &c, 1.f, 0.f) : NULL, *b = affine ? randn(1, &c, 1.f, 0.f) : NULL;
  float *ref = malloc(sizeof(float) * rows * c + 1);
  for (long r = 0; r < rows; ++r)
    norm_ref(ref + r * c, (float *)x->data + r * c, (long)c, 1, 1, w ? w->data : NULL,
             b ? b->data : NULL, 0, 1e-5);
  int rc = fm_layer_norm(y, x, w, b, 1e-5f);
  char name[128];
  snprintf(name, sizeof name, "fm_layer_norm (%lld, %lld)%s%s", (long long)rows, (long long)c,
           affine ? " affine" : "", in_place ? " in place" : "");
  ok(rc == 0 && rel_err(y->data, ref, rows * c) < 1e-5, name);
  free(ref);
  fm_tensor_release(x), fm_tensor_release(y), fm_tensor_release(w), fm_tensor_release(b);
}

static void test_group_norm(int64_t n, int64_t c, int64_t h, int64_t wd, int64_t groups,
                            int affine) {
  int64_t shape[4] = {n, c, h, wd}, s = h * wd, cg = c / groups;
  fm_tensor *x = randn(4, shape, 3.f, -5.f), *y = like(x);
  fm_tensor *w = affine ? randn(1, &c, 1.f, 0.f) : NULL, *b = affine ? randn(1, &c, 1.f, 0.f) : NULL;
  float *ref = malloc(sizeof(float) * n * c * s);
  for (long i = 0; i < n * groups; ++i)
    norm_ref(ref + i * cg * s, (float *)x->data + i * cg * s, (long)(cg * s), 1, (long)s,
             w ? w->data : NULL, b ? b->data : NULL, (long)(i % groups * cg), 1e-6);
  int rc = fm_group_norm(y, x, groups, w, b, 1e-6f);
  char name[128];
  snprintf(name, sizeof name, "fm_group_norm (%lld, %lld, %lld, %lld) groups %lld%s",
           (long long)n, (long long)c, (long long)h, (long long)wd, (long long)groups,
           affine ? " affine" : "");
  ok(rc == 0 && rel_err(y->data, ref, n * c * s) < 1e-5, name);
  free(ref);
  fm_tensor_release(x), fm_tensor_release(y), fm_tensor_release(w), fm_tensor_release(b);
}

static void test_layer_norm_channels(int64_t n, int64_t c, int64_t h, int64_t wd, int affine) {
  int64_t shape[4] = {n, c, h, wd}, s = h * wd;
  fm_tensor *x = randn(4, shape, 2.f, 7.f), *y = like(x);
  fm_tensor *w = affine ? randn(1, &c, 1.f, 0.f) : NULL, *b = affine ? randn(1, &c, 1.f, 0.f) : NULL;
  float *ref = malloc(sizeof(float) * n * c * s);
  for (long i = 0; i < n; ++i)
    for (long p = 0; p < s; ++p)
      norm_ref(ref + i * c * s + p, (float *)x->data + i * c * s + p, (long)c, (long)s, 1,
               w ? w->data : NULL, b ? b->data : NULL, 0, 1e-6);
  int rc = fm_layer_norm_channels(y, x, w, b, 1e-6f);
  char name[128];
  snprintf(name, sizeof name, "fm_layer_norm_channels (%lld, %lld, %lld, %lld)%s", (long long)n,
           (long long)c, (long long)h, (long long)wd, affine ? " affine" : "");
  ok(rc == 0 && rel_err(y->data, ref, n * c * s) < 1e-5, name);
  free(ref);
  fm_tensor_release(x), fm_tensor_release(y), fm_tensor_release(w), fm_tensor_release(b);
}

static void softmax_ref(float *y, const float *x, long rows, long n) {
  for (long r = 0; r < rows; ++r) {
    const float *xr = x + r * n;
    double mx = -INFINITY, sum = 0;
    for (long i = 0; i < n; ++i) mx = xr[i] > mx ? xr[i] : mx;
    for (long i = 0; i < n; ++i) sum += exp((double)xr[i] - mx);
    for (long i = 0; i < n; ++i) y[r * n + i] = mx == -INFINITY ? 0.f : (float)(exp(xr[i] - mx) / sum);
  }
}

static void test_softmax(int64_t rows, int64_t n, float scale, int in_place) {
  int64_t shape[2] = {rows, n};
  fm_tensor *x = randn(2, shape, scale, 0.f), *y = in_place ? fm_tensor_retain(x) : like(x);
  float *ref = malloc(sizeof(float) * rows * n + 1);
  softmax_ref(ref, x->data, (long)rows, (long)n);
  int rc = fm_softmax(y, x);
  char name[128];
  snprintf(name, sizeof name, "fm_softmax (%lld, %lld) logits in +-%g%s", (long long)rows,
           (long long)n, scale, in_place ? " in place" : "");
  ok(rc == 0 && rel_err(y->data, ref, rows * n) < 1e-5, name);
  free(ref);
  fm_tensor_release(x), fm_tensor_release(y);
}

/* Masked entries (-inf) get 0; a row with every entry masked becomes zeros
 * (PyTorch gives NaN there); huge logits do not overflow. */
static void test_softmax_edges(void) {
  float xv[4][5] = {{-INFINITY, 0.f, -INFINITY, 1.f, 2.f},
                    {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY},
                    {1e30f, 1e30f, -1e30f, 0.f, 1e30f},
                    {88.f, -88.f, 100.f, -100.f, 0.f}};
  fm_tensor *x = fm_tensor_borrow(FM_F32, 2, (int64_t[]){4, 5}, xv), *y = like(x);
  float ref[20];
  softmax_ref(ref, &xv[0][0], 4, 5);
  int rc = fm_softmax(y, x);
  const float *yv = y->data;
  ok(rc == 0 && rel_err(yv, ref, 20) < 1e-5, "fm_softmax: -inf, huge and tiny logits");
  ok(yv[0] == 0.f && yv[2] == 0.f, "fm_softmax: -inf entries become exactly 0");
  int zeros = 1;
  for (int i = 5; i < 10; ++i) zeros = zeros && yv[i] == 0.f;
  ok(zeros, "fm_softmax: an all -inf row becomes zeros, not NaN");
  fm_tensor_release(x), fm_tensor_release(y);
}

static void test_bad_inputs(void) {
  fm_tensor *x = randn(2, (int64_t[]){4, 6}, 1.f, 0.f), *w5 = randn(1, (int64_t[]){5}, 1.f, 0.f);
  fm_tensor *y = like(x), *y_bad = randn(2, (int64_t[]){4, 5}, 1.f, 0.f);
  fails_with(fm_layer_norm(y, x, w5, NULL, 1e-5f), "fm_layer_norm: w of the wrong length",
             "fm_layer_norm: w", "[5]");
  fails_with(fm_layer_norm(y_bad, x, NULL, NULL, 1e-5f), "fm_layer_norm: wrong out shape",
             "fm_layer_norm: out", "[4, 5]");
  fails_with(fm_softmax(y_bad, x), "fm_softmax: wrong out shape", "fm_softmax: out", "[4, 6]");
  fm_tensor *x4 = randn(4, (int64_t[]){2, 6, 3, 3}, 1.f, 0.f), *y4 = like(x4);
  fails_with(fm_group_norm(y4, x4, 4, NULL, NULL, 1e-5f), "fm_group_norm: groups must divide C",
             "4 groups", "[2, 6, 3, 3]");
  fails_with(fm_group_norm(y4, x4, 3, w5, NULL, 1e-5f), "fm_group_norm: w of the wrong length",
             "fm_group_norm: w", "[5]");
  fails_with(fm_layer_norm_channels(y, x, NULL, NULL, 1e-6f), "fm_layer_norm_channels: 2-D x",
             "fm_layer_norm_channels: x", "[4, 6]");
  fails_with(fm_layer_norm_channels(y4, x4, w5, NULL, 1e-6f),
             "fm_layer_norm_channels: w of the wrong length", "fm_layer_norm_channels: w", "[5]");
  fm_tensor *xi = fm_tensor_new(FM_U8, 2, (int64_t[]){4, 6});
  fails_with(fm_softmax(y, xi), "fm_softmax: uint8 x refused", "fm_softmax: x", "uint8");
  fm_tensor_release(x), fm_tensor_release(w5), fm_tensor_release(y), fm_tensor_release(y_bad);
  fm_tensor_release(x4), fm_tensor_release(y4), fm_tensor_release(xi);
}

int main(void) {
  test_layer_norm(1, 1, 0, 0);
  test_layer_norm(7, 13, 1, 0);
  test_layer_norm(197, 768, 1, 0);
  test_layer_norm(197, 768, 0, 1);
  test_layer_norm(3, 1280, 1, 1);

  test_group_norm(1, 1, 1, 1, 1, 0);
  test_group_norm(2, 6, 5, 7, 3, 1);
  test_group_norm(2, 6, 5, 7, 1, 1);
  test_group_norm(2, 6, 5, 7, 6, 0);
  test_group_norm(1, 64, 17, 23, 32, 1);

  test_layer_norm_channels(1, 1, 1, 1, 0);
  test_layer_norm_channels(2, 7, 5, 3, 1);
  test_layer_norm_channels(1, 256, 17, 19, 1);  // several pixel blocks, a ragged last one
  test_layer_norm_channels(2, 33, 16, 16, 0);

  test_softmax(1, 1, 1.f, 0);
  test_softmax(7, 13, 3.f, 0);
  test_softmax(197, 197, 10.f, 0);
  test_softmax(5, 4097, 10.f, 1);
  test_softmax(3, 77, 200.f, 1);
  test_softmax(2, 20011, 10.f, 0);  // a float sum over the whole row drifts past 1e-5
  test_softmax_edges();
  test_bad_inputs();
  return done_testing();
}
