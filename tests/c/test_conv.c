/* test_conv.c — fm_conv2d and fm_conv_transpose2d against direct loops in
 * double. */
#include "fmseg.h"
#include "tap.h"

#include <string.h>

static fm_tensor *randn(int32_t ndim, const int64_t *shape) {
  fm_tensor *t = fm_tensor_new(FM_F32, ndim, shape);
  float *p = t->data;
  for (int64_t i = 0; i < fm_tensor_numel(t); ++i) p[i] = frand();
  return t;
}

static int fails_with(int rc, const char *name, const char *a, const char *b) {
  const char *e = fm_last_error();
  int good = rc == -1 && strstr(e, a) && (!b || strstr(e, b));
  if (!good) diag(e);
  return ok(good, name);
}

// x: (N, C, H, W), w: (OC, C, KH, KW), b: (OC) or NULL; y: (N, OC, OH, OW)
static void conv_ref(float *y, const fm_tensor *x, const fm_tensor *w, const float *b, long sh,
                     long sw, long ph, long pw, long oh, long ow) {
  long n = x->dims[0], c = x->dims[1], h = x->dims[2], wd = x->dims[3];
  long oc = w->dims[0], kh = w->dims[2], kw = w->dims[3];
  const float *xv = x->data, *wv = w->data;
  for (long i = 0; i < n; ++i)
    for (long o = 0; o < oc; ++o)
      for (long r = 0; r < oh; ++r)
        for (long q = 0; q < ow; ++q) {
          double s = b ? b[o] : 0;
          for (long ch = 0; ch < c; ++ch)
            for (long ki = 0; ki < kh; ++ki)
              for (long kj = 0; kj < kw; ++kj) {
                long ih = r * sh - ph + ki, iw = q * sw - pw + kj;
                if (ih < 0 || ih >= h || iw < 0 || iw >= wd) continue;
                s += (double)xv[((i * c + ch) * h + ih) * wd + iw] *
                     wv[((o * c + ch) * kh + ki) * kw + kj];
              }
          y[((i * oc + o) * oh + r) * ow + q] = (float)s;
        }
}

static void test_conv(int64_t n, int64_t c, int64_t h, int64_t wd, int64_t oc, int64_t kh,
                      int64_t kw, int32_t sh, int32_t sw, int32_t ph, int32_t pw, int bias) {
  int64_t oh = (h + 2 * ph - kh) / sh + 1, ow = (wd + 2 * pw - kw) / sw + 1;
  fm_tensor *x = randn(4, (int64_t[]){n, c, h, wd}), *w = randn(4, (int64_t[]){oc, c, kh, kw});
  fm_tensor *b = bias ? randn(1, &oc) : NULL;
  fm_tensor *y = fm_tensor_new(FM_F32, 4, (int64_t[]){n, oc, oh, ow});
  float *ref = malloc(sizeof(float) * n * oc * oh * ow);
  conv_ref(ref, x, w, b ? b->data : NULL, sh, sw, ph, pw, (long)oh, (long)ow);
  int rc = fm_conv2d(y, x, w, b, sh, sw, ph, pw);
  char name[160];
  snprintf(name, sizeof name,
           "fm_conv2d x (%lld, %lld, %lld, %lld) w (%lld, %lld, %lld, %lld) stride %d,%d pad %d,%d%s",
           (long long)n, (long long)c, (long long)h, (long long)wd, (long long)oc, (long long)c,
           (long long)kh, (long long)kw, sh, sw, ph, pw, bias ? " bias" : "");
  ok(rc == 0 && rel_err(y->data, ref, n * oc * oh * ow) < 1e-5, name);
  free(ref);
  fm_tensor_release(x), fm_tensor_release(w), fm_tensor_release(b), fm_tensor_release(y);
}

// x: (N, C, H, W), w: (C, OC, K, K), stride K: y: (N, OC, H*K, W*K), from
// the definition: every input pixel scatters x * w into the output
static void conv_t_ref(float *y, const fm_tensor *x, const fm_tensor *w, const float *b) {
  long n = x->dims[0], c = x->dims[1], h = x->dims[2], wd = x->dims[3];
  long oc = w->dims[1], k = w->dims[2], oh = h * k, ow = wd * k;
  const float *xv = x->data, *wv = w->data;
  double *acc = calloc((size_t)(n * oc * oh * ow), sizeof *acc);
  for (long i = 0; i < n; ++i)
    for (long ch = 0; ch < c; ++ch)
      for (long r = 0; r < h; ++r)
        for (long q = 0; q < wd; ++q)
          for (long o = 0; o < oc; ++o)
            for (long ki = 0; ki < k; ++ki)
              for (long kj = 0; kj < k; ++kj)
                acc[((i * oc + o) * oh + r * k + ki) * ow + q * k + kj] +=
                    (double)xv[((i * c + ch) * h + r) * wd + q] * wv[((ch * oc + o) * k + ki) * k + kj];
  for (long i = 0; i < n * oc * oh * ow; ++i) y[i] = (float)(acc[i] + (b ? b[i / (oh * ow) % oc] : 0));
  free(acc);
}

static void test_conv_t(int64_t n, int64_t c, int64_t h, int64_t wd, int64_t oc, int32_t k,
                        int bias) {
  fm_tensor *x = randn(4, (int64_t[]){n, c, h, wd}), *w = randn(4, (int64_t[]){c, oc, k, k});
  fm_tensor *b = bias ? randn(1, &oc) : NULL;
  fm_tensor *y = fm_tensor_new(FM_F32, 4, (int64_t[]){n, oc, h * k, wd * k});
  float *ref = malloc(sizeof(float) * n * oc * h * k * wd * k);
  conv_t_ref(ref, x, w, b ? b->data : NULL);
  int rc = fm_conv_transpose2d(y, x, w, b, k);
  char name[160];
  snprintf(name, sizeof name, "fm_conv_transpose2d x (%lld, %lld, %lld, %lld) OC %lld K %d%s",
           (long long)n, (long long)c, (long long)h, (long long)wd, (long long)oc, k,
           bias ? " bias" : "");
  ok(rc == 0 && rel_err(y->data, ref, n * oc * h * k * wd * k) < 1e-5, name);
  free(ref);
  fm_tensor_release(x), fm_tensor_release(w), fm_tensor_release(b), fm_tensor_release(y);
}

static void test_bad_inputs(void) {
  fm_tensor *x = randn(4, (int64_t[]){1, 3, 8, 8}), *w = randn(4, (int64_t[]){4, 2, 3, 3});
  fm_tensor *w_ok = randn(4, (int64_t[]){4, 3, 3, 3}), *b5 = randn(1, (int64_t[]){5});
  fm_tensor *y = fm_tensor_new(FM_F32, 4, (int64_t[]){1, 4, 8, 8});
  fails_with(fm_conv2d(y, x, w, NULL, 1, 1, 1, 1), "fm_conv2d: channel mismatch names shapes",
             "[4, 2, 3, 3]", "[1, 3, 8, 8]");
  fails_with(fm_conv2d(y, x, w_ok, b5, 1, 1, 1, 1), "fm_conv2d: bias of the wrong length",
             "fm_conv2d: b", "[5]");
  fails_with(fm_conv2d(y, x, w_ok, NULL, 2, 2, 1, 1), "fm_conv2d: out shape for stride 2",
             "fm_conv2d: out", "[1, 4, 4, 4]");
  fails_with(fm_conv2d(y, x, w_ok, NULL, 0, 1, 1, 1), "fm_conv2d: stride 0 refused",
             "fm_conv2d: stride", NULL);
  fm_tensor *big = randn(4, (int64_t[]){4, 3, 11, 11});
  fails_with(fm_conv2d(y, x, big, NULL, 1, 1, 1, 1), "fm_conv2d: kernel larger than input",
             "11x11", "[1, 3, 8, 8]");
  fm_tensor *x3 = randn(3, (int64_t[]){3, 8, 8});
  fails_with(fm_conv2d(y, x3, w_ok, NULL, 1, 1, 1, 1), "fm_conv2d: 3-D x refused",
             "fm_conv2d: x", "[3, 8, 8]");

  fm_tensor *wt = randn(4, (int64_t[]){3, 4, 2, 2}), *yt = fm_tensor_new(FM_F32, 4, (int64_t[]){1, 4, 16, 16});
  fails_with(fm_conv_transpose2d(yt, x, wt, NULL, 3), "fm_conv_transpose2d: kernel != stride",
             "[3, 4, 2, 2]", "stride (3)");
  fails_with(fm_conv_transpose2d(yt, x, w_ok, NULL, 3), "fm_conv_transpose2d: channel mismatch",
             "fm_conv_transpose2d: w", "[4, 3, 3, 3]");
  fails_with(fm_conv_transpose2d(y, x, wt, NULL, 2), "fm_conv_transpose2d: wrong out shape",
             "fm_conv_transpose2d: out", "[1, 4, 16, 16]");
  fails_with(fm_conv_transpose2d(yt, x, wt, b5, 2), "fm_conv_transpose2d: bias of the wrong length",
             "fm_conv_transpose2d: b", "[5]");
  fm_tensor_release(x), fm_tensor_release(w), fm_tensor_release(w_ok), fm_tensor_release(b5);
  fm_tensor_release(y), fm_tensor_release(big), fm_tensor_release(x3);
  fm_tensor_release(wt), fm_tensor_release(yt);
}

int main(void) {
  test_conv(1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0);
  test_conv(2, 7, 9, 11, 5, 1, 1, 1, 1, 0, 0, 1);    // pointwise: straight sgemm
  test_conv(1, 5, 6, 7, 3, 1, 1, 2, 2, 0, 0, 1);     // 1x1 but strided
  test_conv(1, 4, 5, 5, 3, 1, 1, 1, 1, 1, 1, 0);     // 1x1 but padded
  test_conv(2, 3, 13, 17, 8, 3, 3, 1, 1, 1, 1, 1);
  test_conv(1, 3, 13, 17, 8, 3, 3, 2, 2, 1, 1, 1);
  test_conv(1, 5, 10, 12, 4, 3, 5, 2, 1, 0, 2, 0);   // rectangular kernel, mixed stride
  test_conv(2, 3, 32, 48, 16, 16, 16, 16, 16, 0, 0, 1);  // ViT patch embedding
  test_conv(1, 2, 7, 7, 3, 7, 7, 1, 1, 3, 3, 1);
  test_conv(1, 1, 4, 4, 1, 3, 3, 3, 3, 2, 2, 0);      // padding wider than the input reach
  // stride 1 (rows copied whole between padding columns), odd sizes
  test_conv(1, 3, 9, 13, 4, 3, 3, 1, 1, 0, 0, 1);     // no padding
  test_conv(2, 4, 11, 7, 5, 3, 3, 1, 1, 1, 1, 0);     // padding 1, batch 2
  test_conv(1, 3, 8, 9, 4, 1, 5, 1, 1, 0, 2, 1);      // 1x5, padded in w only
  test_conv(1, 3, 9, 8, 4, 5, 2, 1, 1, 2, 0, 1);      // 5x2, padded in h only
  test_conv(1, 2, 6, 5, 3, 3, 3, 1, 1, 3, 3, 1);      // columns that read padding alone
  test_conv(1, 2, 5, 5, 2, 5, 5, 1, 1, 0, 0, 0);      // kernel the size of x: one pixel
  test_conv(1, 3, 1, 9, 2, 1, 3, 1, 1, 0, 1, 1);      // one input row
  // strided gathers, odd sizes
  test_conv(1, 3, 15, 17, 4, 3, 3, 2, 2, 1, 1, 1);
  test_conv(1, 2, 7, 11, 3, 3, 3, 3, 2, 0, 1, 1);
  // several row bands (more than 2048 output pixels with C*KH*KW >= 512)
  test_conv(1, 128, 67, 65, 16, 3, 3, 1, 1, 1, 1, 1);
  test_conv(2, 128, 67, 65, 4, 3, 3, 1, 1, 0, 0, 1);
  test_conv(1, 128, 99, 97, 4, 3, 3, 2, 2, 1, 1, 1);
  test_conv(1, 128, 70, 61, 4, 1, 3, 1, 1, 0, 1, 1);

  test_conv_t(1, 1, 1, 1, 1, 1, 0);
  test_conv_t(2, 5, 7, 9, 3, 2, 1);
  test_conv_t(1, 16, 13, 11, 8, 2, 0);
  test_conv_t(1, 4, 5, 6, 7, 3, 1);
  test_conv_t(1, 6, 4, 4, 5, 1, 1);
  test_bad_inputs();
  return done_testing();
}
