/* test_sam_decoder.c — the mask decoder's cross-attention kernels
 * (core/sam_decoder.c) against naive versions in double that follow the
 * header's contract literally: odd sizes, image rows spanning several row
 * blocks, shared (batch 1) and per-prompt image tokens, residual and
 * positional encodings, with and without key bias and layer norm, a
 * single prompt (rows cut across threads); the fused upscaling against
 * the literal transposed convolutions, channel norm and GELUs; bad inputs. */
#include "fmseg.h"
#include "tap.h"

#include <string.h>

static fm_tensor *randn3(int64_t a, int64_t b, int64_t c, float scale) {
  int64_t shape[3] = {a, b, c};
  fm_tensor *t = fm_tensor_new(FM_F32, 3, shape);
  float *p = t->data;
  for (int64_t i = 0; i < fm_tensor_numel(t); ++i) p[i] = frand() * scale;
  return t;
}

static fm_tensor *randn1(int64_t n, float scale, float offset) {
  int64_t shape[1] = {n};
  fm_tensor *t = fm_tensor_new(FM_F32, 1, shape);
  float *p = t->data;
  for (int64_t i = 0; i < n; ++i) p[i] = offset + frand() * scale;
  return t;
}

static const float *row3(const fm_tensor *t, long b, long i) {
  long bb = t->dims[0] == 1 ? 0 : b;
  return (const float *)t->data + (bb * t->dims[1] + i) * t->dims[2];
}

static void softmax_d(double *s, long n) {
  double mx = -INFINITY, sum = 0;
  for (long j = 0; j < n; ++j) mx = s[j] > mx ? s[j] : mx;
  for (long j = 0; j < n; ++j) sum += (s[j] = exp(s[j] - mx));
  for (long j = 0; j < n; ++j) s[j] /= sum;
}

/* out (N, T, C) as fm_sam_image_to_tokens' contract reads */
static void image_to_tokens_ref(float *out, const fm_tensor *x, const fm_tensor *pe,
                                const fm_tensor *keys,
                                const fm_tensor *kb, const fm_tensor *values, const fm_tensor *ob,
                                long heads, double scale, const fm_tensor *resid, int norm,
                                const fm_tensor *lw, const fm_tensor *lb, double eps) {
  long n = keys->dims[0], hs = keys->dims[1], cx = keys->dims[2], t = x->dims[1];
  long c = values->dims[2], s = hs / heads;
  double *sc = malloc(sizeof(double) * hs), *o = malloc(sizeof(double) * c);
  for (long p = 0; p < n; ++p)
    for (long i = 0; i < t; ++i) {
      const float *xi = row3(x, p, i), *pi = pe ? row3(pe, p, i) : NULL;
      for (long j = 0; j < hs; ++j) {
        const float *kj = row3(keys, p, j);
        double dot = 0;
        for (long q = 0; q < cx; ++q) dot += ((double)xi[q] + (pi ? pi[q] : 0.f)) * kj[q];
        if (kb) dot += ((const float *)kb->data)[p * hs + j];
        sc[j] = scale * dot;
      }
      for (long h = 0; h < heads; ++h) softmax_d(sc + h * s, s);
      for (long q = 0; q < c; ++q) {
        double v = resid ? row3(resid, p, i)[q] : 0;
        if (ob) v += ((const float *)ob->data)[q];
        for (long j = 0; j < hs; ++j) v += sc[j] * row3(values, p, j)[q];
        o[q] = v;
      }
      if (norm) {
        double mean = 0, var = 0;
        for (long q = 0; q < c; ++q) mean += o[q];
        mean /= c;
        for (long q = 0; q < c; ++q) var += (o[q] - mean) * (o[q] - mean);
        double rstd = 1 / sqrt(var / c + eps);
        for (long q = 0; q < c; ++q) {
          o[q] = (o[q] - mean) * rstd;
          if (lw) o[q] *= ((const float *)lw->data)[q];
          if (lb) o[q] += ((const float *)lb->data)[q];
        }
      }
      for (long q = 0; q < c; ++q) out[(p * t + i) * c + q] = (float)o[q];
    }
  free(sc);
  free(o);
}

/* out (N, R, C) = softmax_rows(scale q (x + pe)ᵀ) x */
static void tokens_to_image_ref(float *out, const fm_tensor *q, const fm_tensor *x,
                                const fm_tensor *pe, double scale) {
  long n = q->dims[0], r = q->dims[1], c = q->dims[2], t = x->dims[1];
  double *sc = malloc(sizeof(double) * t);
  for (long p = 0; p < n; ++p)
    for (long i = 0; i < r; ++i) {
      const float *qi = row3(q, p, i);
      for (long j = 0; j < t; ++j) {
        const float *xj = row3(x, p, j), *pj = pe ? row3(pe, p, j) : NULL;
        double dot = 0;
        for (long k = 0; k < c; ++k) dot += (double)qi[k] * (xj[k] + (pj ? pj[k] : 0.f));
        sc[j] = scale * dot;
      }
      softmax_d(sc, t);
      for (long k = 0; k < c; ++k) {
        double v = 0;
        for (long j = 0; j < t; ++j) v += sc[j] * row3(x, p, j)[k];
        out[(p * r + i) * c + k] = (float)v;
      }
    }
  free(sc);
}

/* SamMaskDecoder's upscaling literally: ConvTranspose2d(k = s = 2) to
 * (C1, 2h, 2w), SamLayerNorm over channels per pixel, GELU,
 * ConvTranspose2d to (C2, 4h, 4w), GELU, then masks = hyper . upscaled.
 * keys (N, h*w, C) token-major; out (N, M, 4h, 4w). */
static void upscale_ref(float *out, const fm_tensor *keys, long h, long w, const fm_tensor *w1,
                        const fm_tensor *b1, const fm_tensor *lw, const fm_tensor *lb, double eps,
                        const fm_tensor *w2, const fm_tensor *b2, const fm_tensor *hyper) {
  long n = keys->dims[0], c = keys->dims[2], c1 = w1->dims[1], c2 = w2->dims[1], m = hyper->dims[1];
  long h2 = 2 * h, wd2 = 2 * w, h4 = 4 * h, wd4 = 4 * w;
  double *a = malloc(sizeof(double) * c1 * h2 * wd2), *u = malloc(sizeof(double) * c2 * h4 * wd4);
  const float *W1 = w1->data, *W2 = w2->data, *K = keys->data, *H = hyper->data;
  for (long p = 0; p < n; ++p) {
    for (long o = 0; o < c1; ++o)
      for (long y = 0; y < h2; ++y)
        for (long x = 0; x < wd2; ++x) {
          double v = b1 ? ((const float *)b1->data)[o] : 0;
          long iy = y / 2, ix = x / 2, ky = y % 2, kx = x % 2;
          for (long i = 0; i < c; ++i)
            v += (double)K[(p * h * w + iy * w + ix) * c + i] * W1[((i * c1 + o) * 2 + ky) * 2 + kx];
          a[(o * h2 + y) * wd2 + x] = v;
        }
    for (long y = 0; y < h2; ++y)
      for (long x = 0; x < wd2; ++x) {
        double mean = 0, var = 0;
        for (long o = 0; o < c1; ++o) mean += a[(o * h2 + y) * wd2 + x];
        mean /= c1;
        for (long o = 0; o < c1; ++o) {
          double d = a[(o * h2 + y) * wd2 + x] - mean;
          var += d * d;
        }
        double rstd = 1 / sqrt(var / c1 + eps);
        for (long o = 0; o < c1; ++o) {
          double v = (a[(o * h2 + y) * wd2 + x] - mean) * rstd;
          if (lw) v *= ((const float *)lw->data)[o];
          if (lb) v += ((const float *)lb->data)[o];
          a[(o * h2 + y) * wd2 + x] = 0.5 * v * (1 + erf(v / sqrt(2.0)));
        }
      }
    for (long o = 0; o < c2; ++o)
      for (long y = 0; y < h4; ++y)
        for (long x = 0; x < wd4; ++x) {
          double v = b2 ? ((const float *)b2->data)[o] : 0;
          long iy = y / 2, ix = x / 2, ky = y % 2, kx = x % 2;
          for (long i = 0; i < c1; ++i)
            v += a[(i * h2 + iy) * wd2 + ix] * W2[((i * c2 + o) * 2 + ky) * 2 + kx];
          u[(o * h4 + y) * wd4 + x] = 0.5 * v * (1 + erf(v / sqrt(2.0)));
        }
    for (long j = 0; j < m; ++j)
      for (long px = 0; px < h4 * wd4; ++px) {
        double v = 0;
        for (long o = 0; o < c2; ++o) v += (double)H[(p * m + j) * c2 + o] * u[o * h4 * wd4 + px];
        out[(p * m + j) * h4 * wd4 + px] = (float)v;
      }
  }
  free(a);
  free(u);
}

static fm_tensor *randn4(int64_t a, int64_t b, int64_t c, int64_t d, float scale) {
  int64_t shape[4] = {a, b, c, d};
  fm_tensor *t = fm_tensor_new(FM_F32, 4, shape);
  float *p = t->data;
  for (int64_t i = 0; i < fm_tensor_numel(t); ++i) p[i] = frand() * scale;
  return t;
}

static void check_upscale(const char *name, long n, long h, long w, long c, long c1, long c2, long m,
                          int biases) {
  fm_tensor *keys = randn3(n, h * w, c, 1.f), *w1 = randn4(c, c1, 2, 2, 0.5f);
  fm_tensor *w2 = randn4(c1, c2, 2, 2, 0.5f), *hyper = randn3(n, m, c2, 1.f);
  fm_tensor *b1 = biases ? randn1(c1, 0.5f, 0.f) : NULL, *b2 = biases ? randn1(c2, 0.5f, 0.f) : NULL;
  fm_tensor *lw = biases ? randn1(c1, 0.3f, 1.f) : NULL, *lb = biases ? randn1(c1, 0.3f, 0.f) : NULL;
  fm_tensor *out = randn4(n, m, 4 * h, 4 * w, 1.f);
  float *want = malloc(sizeof(float) * n * m * 16 * h * w);
  int rc = fm_sam_upscale_masks(out, keys, h, w, w1, b1, lw, lb, 1e-6f, w2, b2, hyper);
  if (rc != 0) diag(fm_last_error());
  upscale_ref(want, keys, h, w, w1, b1, lw, lb, 1e-6, w2, b2, hyper);
  double err = rel_err(out->data, want, n * m * 16 * h * w);
  if (err >= 1e-5) printf("# %s: rel err %g\n", name, err);
  ok(rc == 0 && err < 1e-5, name);
  free(want);
  fm_tensor *all[] = {keys, w1, w2, hyper, b1, b2, lw, lb, out};
  for (size_t i = 0; i < sizeof all / sizeof *all; ++i) fm_tensor_release(all[i]);
}

static int fails_with(int rc, const char *name, const char *want) {
  const char *e = fm_last_error();
  int good = rc == -1 && strstr(e, want) != NULL;
  if (!good) diag(e);
  fm_clear_error();
  return ok(good, name);
}

static void check_i2t(const char *name, long n, long bx, long bp, long br, long t, long heads,
                      long s, long cx, long c, int with_kb, int norm) {
  long hs = heads * s;
  fm_tensor *x = randn3(bx, t, cx, 1.f), *keys = randn3(n, hs, cx, 0.7f);
  fm_tensor *pe = bp ? randn3(bp, t, cx, 1.f) : NULL;
  fm_tensor *values = randn3(n, hs, c, 1.f), *resid = br ? randn3(br, t, c, 1.f) : NULL;
  int64_t kbs[2] = {n, hs};
  fm_tensor *kb = NULL;
  if (with_kb) {
    kb = fm_tensor_new(FM_F32, 2, kbs);
    for (long i = 0; i < n * hs; ++i) ((float *)kb->data)[i] = frand();
  }
  fm_tensor *ob = randn1(c, 0.5f, 0.f), *lw = randn1(c, 0.3f, 1.f), *lb = randn1(c, 0.3f, 0.f);
  fm_tensor *out = randn3(n, t, c, 1.f);  // garbage the kernel must overwrite
  float *want = malloc(sizeof(float) * n * t * c);
  double scale = 1 / sqrt((double)cx / heads);
  int rc = fm_sam_image_to_tokens(out, x, pe, keys, kb, values, ob, heads, (float)scale, resid,
                                  norm, lw, lb, 1e-5f);
  if (rc != 0) diag(fm_last_error());
  image_to_tokens_ref(want, x, pe, keys, kb, values, ob, heads, scale, resid, norm, lw, lb, 1e-5);
  double err = rel_err(out->data, want, n * t * c);
  if (err >= 1e-5) printf("# %s: rel err %g\n", name, err);
  ok(rc == 0 && err < 1e-5, name);
  free(want);
  fm_tensor *all[] = {x, pe, keys, values, resid, kb, ob, lw, lb, out};
  for (size_t i = 0; i < sizeof all / sizeof *all; ++i) fm_tensor_release(all[i]);
}

static void check_t2i(const char *name, long n, long bx, long bp, long r, long t, long c) {
  fm_tensor *q = randn3(n, r, c, 0.5f), *x = randn3(bx, t, c, 1.f);
  fm_tensor *pe = bp ? randn3(bp, t, c, 1.f) : NULL, *out = randn3(n, r, c, 1.f);
  float *want = malloc(sizeof(float) * n * r * c);
  double scale = 1 / sqrt(5.0);
  int rc = fm_sam_tokens_to_image(out, q, x, pe, (float)scale);
  if (rc != 0) diag(fm_last_error());
  tokens_to_image_ref(want, q, x, pe, scale);
  double err = rel_err(out->data, want, n * r * c);
  if (err >= 1e-5) printf("# %s: rel err %g\n", name, err);
  ok(rc == 0 && err < 1e-5, name);
  free(want);
  fm_tensor_release(q), fm_tensor_release(x), fm_tensor_release(pe), fm_tensor_release(out);
}

int main(void) {
  // image -> tokens: T = 301 spans three 128-row blocks
  check_i2t("image_to_tokens: shared x and residual, key bias, layer norm", 3, 1, 0, 1, 301, 3, 5, 11, 13, 1, 1);
  check_i2t("image_to_tokens: per-prompt x and residual, shared pe", 4, 4, 1, 4, 301, 2, 7, 9, 6, 1, 1);
  check_i2t("image_to_tokens: shared x, per-prompt pe", 3, 1, 3, 1, 200, 2, 3, 9, 6, 1, 1);
  check_i2t("image_to_tokens: no residual, key bias or norm", 2, 2, 0, 0, 129, 1, 3, 4, 5, 0, 0);
  check_i2t("image_to_tokens: one prompt, one row block", 1, 1, 1, 1, 17, 4, 2, 8, 16, 1, 1);
  // tokens -> image
  check_t2i("tokens_to_image: shared x and pe", 3, 1, 1, 21, 301, 13);
  check_t2i("tokens_to_image: per-prompt x, shared pe", 3, 3, 1, 14, 257, 7);
  check_t2i("tokens_to_image: per-prompt x and pe", 2, 2, 2, 5, 64, 9);
  check_t2i("tokens_to_image: no pe", 2, 2, 0, 6, 33, 4);
  check_t2i("tokens_to_image: one prompt, rows cut across threads", 1, 1, 1, 56, 301, 11);

  // upscaling: a 9 x 13 grid (117 tokens: two 64-token blocks, one cut short)
  check_upscale("upscale_masks: odd grid, biases and norm affine", 2, 9, 13, 12, 5, 3, 3, 1);
  check_upscale("upscale_masks: no biases, one prompt, one mask", 1, 3, 7, 8, 4, 2, 1, 0);

  // bad inputs
  fm_tensor *x = randn3(2, 10, 4, 1.f), *keys = randn3(2, 6, 4, 1.f), *values = randn3(2, 6, 5, 1.f);
  fm_tensor *out = randn3(2, 10, 5, 1.f), *bad = randn3(3, 10, 4, 1.f);
  fails_with(fm_sam_image_to_tokens(out, x, NULL, keys, NULL, values, NULL, 4, 1.f, NULL, 0, NULL, NULL, 0),
             "image_to_tokens: heads must divide the key rows", "heads do not divide");
  fails_with(fm_sam_image_to_tokens(out, bad, NULL, keys, NULL, values, NULL, 2, 1.f, NULL, 0, NULL, NULL, 0),
             "image_to_tokens: x of another batch", "fm_sam_image_to_tokens: x");
  fails_with(fm_sam_image_to_tokens(out, x, NULL, keys, NULL, x, NULL, 2, 1.f, NULL, 0, NULL, NULL, 0),
             "image_to_tokens: values of the wrong rows", "fm_sam_image_to_tokens: values");
  fm_tensor *q = randn3(2, 3, 4, 1.f), *o2 = randn3(2, 3, 4, 1.f), *pe = randn3(1, 9, 4, 1.f);
  fails_with(fm_sam_tokens_to_image(o2, q, x, pe, 1.f), "tokens_to_image: pe of other tokens",
             "fm_sam_tokens_to_image: pe");
  fails_with(fm_sam_tokens_to_image(out, q, x, NULL, 1.f), "tokens_to_image: out of the wrong shape",
             "fm_sam_tokens_to_image: out");
  fm_tensor *w1 = randn4(4, 3, 2, 2, 1.f), *w2 = randn4(3, 2, 3, 3, 1.f), *hy = randn3(2, 1, 2, 1.f);
  fm_tensor *mo = randn4(2, 1, 8, 20, 1.f), *k2 = randn3(2, 10, 4, 1.f);
  fails_with(fm_sam_upscale_masks(mo, k2, 2, 5, w1, NULL, NULL, NULL, 1e-6f, w2, NULL, hy),
             "upscale_masks: a 3x3 second kernel", "fm_sam_upscale_masks: w2");
  fails_with(fm_sam_upscale_masks(mo, k2, 3, 5, w1, NULL, NULL, NULL, 1e-6f, w1, NULL, hy),
             "upscale_masks: a grid that does not hold the tokens", "fm_sam_upscale_masks: keys");
  fm_tensor_release(w1), fm_tensor_release(w2), fm_tensor_release(hy), fm_tensor_release(mo);
  fm_tensor_release(k2);
  fm_tensor *all[] = {x, keys, values, out, bad, q, o2, pe};
  for (size_t i = 0; i < sizeof all / sizeof *all; ++i) fm_tensor_release(all[i]);
  return done_testing();
}
