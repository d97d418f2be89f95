/* test_resize.c — fm_interpolate against direct (non-separable, double
 * precision) evaluations of torch's formulas, a few values worked out by
 * hand, and torch itself when a python3 with torch is around;
 * fm_image_resize_pil against a floating-point PIL and PIL itself;
 * fm_image_resize_torch against a naive fixed-point twin, values worked
 * out by hand where it and PIL part, and torch's uint8 kernel itself when
 * python3 has a torch with one (2.1 or later). */
#include "fmseg.h"
#include "tap.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* ---- direct evaluations ---------------------------------------------------- */

static double cubic_kernel(double x, double a) {
  x = fabs(x);
  if (x <= 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

/* torch's source coordinate of output index i (float, as torch has it) */
static float source_coord(int64_t in, int64_t out, int64_t i, int align_corners, int cubic) {
  if (align_corners) return out > 1 ? (float)(in - 1) / (float)(out - 1) * (float)i : 0.0f;
  float s = (float)in / (float)out * ((float)i + 0.5f) - 0.5f;
  return (!cubic && s < 0) ? 0.0f : s;
}

static int64_t clampi(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* weights of all `in` source samples for output i along one axis: the
 * definition of each mode written out, no tap tables */
static void axis_weights(double *w, int64_t in, int64_t out, int64_t i, int mode, int ac, int aa) {
  for (int64_t k = 0; k < in; ++k) w[k] = 0;
  if (aa) {
    double scale = ac ? (out > 1 ? (double)(in - 1) / (out - 1) : 0) : (double)in / out;
    double fs = scale > 1 ? scale : 1, center = scale * (i + 0.5), total = 0;
    for (int64_t k = 0; k < in; ++k) {
      double d = (k + 0.5 - center) / fs;
      w[k] = mode == FM_BICUBIC ? (fabs(d) < 2 ? cubic_kernel(d, -0.5) : 0) : fmax(0, 1 - fabs(d));
      total += w[k];
    }
    for (int64_t k = 0; k < in; ++k) w[k] /= total;
  } else if (mode == FM_NEAREST) {
    w[clampi((int64_t)floorf((float)i * ((float)in / (float)out)), 0, in - 1)] = 1;
  } else if (mode == FM_BILINEAR) {
    double s = source_coord(in, out, i, ac, 0);
    int64_t k0 = clampi((int64_t)floor(s), 0, in - 1);
    double t = fmin(fmax(s - k0, 0), 1);
    w[k0] += 1 - t;
    w[k0 < in - 1 ? k0 + 1 : k0] += t;
  } else {
    double s = source_coord(in, out, i, ac, 1);
    int64_t k0 = (int64_t)floor(s);
    if (k0 > in - 1) k0 = in - 1;
    double t = fmin(fmax(s - k0, 0), 1);
    for (int64_t j = -1; j <= 2; ++j) w[clampi(k0 + j, 0, in - 1)] += cubic_kernel(j - t, -0.75);
  }
}

/* out[n, c, y, x] = sum_{ky, kx} wy[ky] wx[kx] x[n, c, ky, kx] */
static void naive_interpolate(float *out, const float *x, int64_t planes, int64_t h, int64_t w,
                              int64_t oh, int64_t ow, int mode, int ac, int aa) {
  double *wy = malloc(sizeof(double) * h), *wx = malloc(sizeof(double) * w);
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t y = 0; y < oh; ++y) {
      axis_weights(wy, h, oh, y, mode, ac, aa);
      for (int64_t xo = 0; xo < ow; ++xo) {
        axis_weights(wx, w, ow, xo, mode, ac, aa);
        double s = 0;
        for (int64_t ky = 0; ky < h; ++ky)
          for (int64_t kx = 0; kx < w; ++kx) s += wy[ky] * wx[kx] * x[(p * h + ky) * w + kx];
        out[(p * oh + y) * ow + xo] = (float)s;
      }
    }
  free(wy);
  free(wx);
}

static fm_tensor *random_nchw(int64_t n, int64_t c, int64_t h, int64_t w) {
  int64_t shape[4] = {n, c, h, w};
  fm_tensor *t = fm_tensor_new(FM_F32, 4, shape);
  float *d = t->data;
  for (int64_t i = 0; i < n * c * h * w; ++i) d[i] = frand();
  return t;
}

static const char *mode_name[] = {"nearest", "bilinear", "bicubic"};

static void test_against_naive(void) {
  static const int64_t sizes[][4] = {
    {1, 1, 1, 1}, {1, 1, 7, 7}, {7, 7, 1, 1}, {13, 13, 5, 5}, {5, 5, 13, 13}, {13, 5, 5, 13},
    {7, 9, 7, 9}, {4, 4, 8, 8}, {16, 12, 7, 3}, {3, 7, 16, 12}, {1, 7, 13, 1},
  };
  char name[160];
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
    int64_t h = sizes[s][0], w = sizes[s][1], oh = sizes[s][2], ow = sizes[s][3];
    fm_tensor *x = random_nchw(2, 3, h, w);
    int64_t oshape[4] = {2, 3, oh, ow};
    fm_tensor *out = fm_tensor_new(FM_F32, 4, oshape), *ref = fm_tensor_new(FM_F32, 4, oshape);
    for (int mode = 0; mode < 3; ++mode)
      for (int ac = 0; ac < (mode ? 2 : 1); ++ac)
        for (int aa = 0; aa < (mode ? 2 : 1); ++aa) {
          int rc = fm_interpolate(out, x, mode, ac, aa);
          naive_interpolate(ref->data, x->data, 6, h, w, oh, ow, mode, ac, aa);
          double e = rel_err(out->data, ref->data, 6 * oh * ow);
          snprintf(name, sizeof name, "%s align_corners=%d antialias=%d %dx%d -> %dx%d (rel err %.2g)",
                   mode_name[mode], ac, aa, (int)h, (int)w, (int)oh, (int)ow, e);
          ok(rc == 0 && e < 1e-5, name);
        }
    fm_tensor_release(x);
    fm_tensor_release(out);
    fm_tensor_release(ref);
  }
}

/* ---- values worked out by hand ---------------------------------------------- */

static int run1(const float *in, int64_t h, int64_t w, float *out, int64_t oh, int64_t ow, int mode,
                int ac, int aa) {
  int64_t is[4] = {1, 1, h, w}, os[4] = {1, 1, oh, ow};
  fm_tensor *x = fm_tensor_borrow(FM_F32, 4, is, (void *)in), *y = fm_tensor_borrow(FM_F32, 4, os, out);
  int rc = fm_interpolate(y, x, mode, ac, aa);
  fm_tensor_release(x);
  fm_tensor_release(y);
  return rc;
}

static int close_to(const float *a, const float *b, int n) {
  for (int i = 0; i < n; ++i)
    if (fabsf(a[i] - b[i]) > 1e-6f) return 0;
  return 1;
}

static void test_hand_values(void) {
  const float sq[4] = {0, 1, 2, 3};
  float out[16];
  /* align_corners: the corners stay, midpoints average */
  const float ac3[9] = {0, 0.5f, 1, 1, 1.5f, 2, 2, 2.5f, 3};
  ok(run1(sq, 2, 2, out, 3, 3, FM_BILINEAR, 1, 0) == 0 && close_to(out, ac3, 9),
     "bilinear align_corners 2x2 -> 3x3");
  /* half-pixel centres: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1) */
  const float row4[4] = {0, 0.25f, 0.75f, 1};
  ok(run1(sq, 1, 2, out, 1, 4, FM_BILINEAR, 0, 0) == 0 && close_to(out, row4, 4),
     "bilinear 1x2 -> 1x4");
  /* nearest 2 -> 3: floor(i * 2/3) = 0, 0, 1 */
  const float nn3[3] = {0, 0, 1};
  ok(run1(sq, 1, 2, out, 1, 3, FM_NEAREST, 0, 0) == 0 && close_to(out, nn3, 3), "nearest 1x2 -> 1x3");
  /* bicubic A=-0.75 at t=1/2: weights (-3/32, 19/32, 19/32, -3/32); with
   * align_corners 4 -> 7 the odd outputs sit halfway between inputs */
  const float spike[4] = {0, 1, 0, 0};
  const float cub[7] = {0, 19.f / 32, 1, 19.f / 32, 0, -3.f / 32, 0};
  ok(run1(spike, 1, 4, out, 1, 7, FM_BICUBIC, 1, 0) == 0 && close_to(out, cub, 7),
     "bicubic align_corners 1x4 -> 1x7");
  /* antialiased bilinear 4 -> 2: triangle of half-width 2 centred at 1 and
   * 3; weights (3, 3, 1)/7 over 0..2 and (1, 3, 3)/7 over 1..3 */
  const float aa2[2] = {5.f / 7, 16.f / 7};
  ok(run1(sq, 1, 4, out, 1, 2, FM_BILINEAR, 0, 1) == 0 && close_to(out, aa2, 2),
     "antialiased bilinear 1x4 -> 1x2");
}

static void test_bad_input(void) {
  int64_t s4[4] = {1, 1, 4, 4}, s3[3] = {1, 4, 4}, o4[4] = {1, 2, 2, 2};
  fm_tensor *x = fm_tensor_new(FM_F32, 4, s4), *x3 = fm_tensor_new(FM_F32, 3, s3);
  fm_tensor *o = fm_tensor_new(FM_F32, 4, o4), *xi = fm_tensor_new(FM_I32, 4, s4);
  ok(fm_interpolate(o, x, FM_BILINEAR, 0, 0) == -1 && strstr(fm_last_error(), "same N and C"),
     "channel mismatch refused");
  ok(fm_interpolate(o, x3, FM_BILINEAR, 0, 0) == -1 && *fm_last_error(), "3-d input refused");
  ok(fm_interpolate(o, xi, FM_BILINEAR, 0, 0) == -1 && strstr(fm_last_error(), "float32"),
     "int32 input refused");
  int64_t o1[4] = {1, 1, 2, 2};
  fm_tensor *ok1 = fm_tensor_new(FM_F32, 4, o1);
  ok(fm_interpolate(ok1, x, 7, 0, 0) == -1 && strstr(fm_last_error(), "mode"), "unknown mode refused");
  ok(fm_interpolate(ok1, x, FM_NEAREST, 0, 1) == -1, "nearest with antialias refused (as torch)");
  fm_tensor_release(x); fm_tensor_release(x3); fm_tensor_release(o);
  fm_tensor_release(xi); fm_tensor_release(ok1);
}

/* ---- PIL ------------------------------------------------------------------ */

/* PIL's algorithm in double precision: the same windows, no fixed point;
 * rounds and clips after each pass as PIL does. */
static void pil_axis(double *w, int64_t in, int64_t out, int64_t i, int mode) {
  axis_weights(w, in, out, i, mode, 0, 1);
}

/* Rounds like PIL's final shift; *tie is set when v sits so close to a
 * half that PIL's 22-bit coefficients may round it the other way. */
static uint8_t round_clip(double v, uint8_t *tie) {
  double frac = v - floor(v);
  *tie = fabs(frac - 0.5) < 1e-4;
  v = floor(v + 0.5);
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* out and tie: (OH, OW, C); tie marks outputs that depend on a near-half
 * rounding in either pass */
static void naive_pil(uint8_t *out, uint8_t *tie, const uint8_t *img, int64_t h, int64_t w, int64_t c,
                      int64_t oh, int64_t ow, int mode) {
  uint8_t *tmp = malloc((size_t)(h * ow * c)), *tmp_tie = malloc((size_t)(h * ow * c));
  double *wt = malloc(sizeof(double) * (size_t)(h > w ? h : w));
  for (int64_t xo = 0; xo < ow; ++xo) {
    if (ow == w) { for (int64_t k = 0; k < w; ++k) wt[k] = k == xo; }
    else pil_axis(wt, w, ow, xo, mode);
    for (int64_t y = 0; y < h; ++y)
      for (int64_t ch = 0; ch < c; ++ch) {
        double s = 0;
        for (int64_t k = 0; k < w; ++k) s += wt[k] * img[(y * w + k) * c + ch];
        int64_t i = (y * ow + xo) * c + ch;
        tmp[i] = round_clip(s, &tmp_tie[i]);
      }
  }
  for (int64_t yo = 0; yo < oh; ++yo) {
    if (oh == h) { for (int64_t k = 0; k < h; ++k) wt[k] = k == yo; }
    else pil_axis(wt, h, oh, yo, mode);
    for (int64_t i = 0; i < ow * c; ++i) {
      double s = 0;
      uint8_t any = 0;
      for (int64_t k = 0; k < h; ++k) {
        s += wt[k] * tmp[k * ow * c + i];
        any |= wt[k] != 0 && tmp_tie[k * ow * c + i];
      }
      out[yo * ow * c + i] = round_clip(s, &tie[yo * ow * c + i]);
      tie[yo * ow * c + i] |= any;
    }
  }
  free(tmp);
  free(tmp_tie);
  free(wt);
}

static fm_tensor *random_image(int64_t h, int64_t w, int64_t c) {
  int64_t shape[3] = {h, w, c};
  fm_tensor *t = fm_tensor_new(FM_U8, 3, shape);
  uint8_t *d = t->data;
  /* smooth gradients with noise and hard edges: overshoot gets clipped */
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t ch = 0; ch < c; ++ch) {
        double v = 128 + 100 * sin(0.3 * x + 0.2 * y + ch) + 30 * frand() + ((x / 5 + y / 7) % 2 ? 90 : -90);
        d[(y * w + x) * c + ch] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
      }
  return t;
}

static void test_pil_naive(void) {
  static const int64_t sizes[][4] = {
    {64, 48, 13, 17}, {13, 5, 5, 13}, {5, 13, 13, 5}, {31, 31, 31, 8}, {20, 20, 64, 64}, {1, 9, 1, 4},
  };
  char name[160];
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s)
    for (int64_t c = 1; c <= 3; c += 2)
      for (int mode = FM_BILINEAR; mode <= FM_BICUBIC; ++mode) {
        int64_t h = sizes[s][0], w = sizes[s][1], oh = sizes[s][2], ow = sizes[s][3];
        fm_tensor *img = random_image(h, w, c);
        int64_t oshape[3] = {oh, ow, c};
        fm_tensor *out = fm_tensor_new(FM_U8, 3, oshape);
        uint8_t *ref = malloc((size_t)(oh * ow * c)), *tie = malloc((size_t)(oh * ow * c));
        int rc = fm_image_resize_pil(out, img, mode);
        naive_pil(ref, tie, img->data, h, w, c, oh, ow, mode);
        /* fixed-point coefficients move a value by far less than a level,
         * so only values within a hair of .5 may round the other way */
        int64_t n = oh * ow * c, off = 0, bad = 0;
        for (int64_t i = 0; i < n; ++i) {
          int d = abs((int)((uint8_t *)out->data)[i] - ref[i]);
          off += d != 0;
          bad += d > 1 || (d == 1 && !tie[i]);
        }
        snprintf(name, sizeof name, "PIL %s %dx%dx%d -> %dx%d vs float PIL (%d of %d off by 1 at a tie)",
                 mode_name[mode], (int)h, (int)w, (int)c, (int)oh, (int)ow, (int)off, (int)n);
        ok(rc == 0 && bad == 0, name);
        free(tie);
        fm_tensor_release(img);
        fm_tensor_release(out);
        free(ref);
      }
}

static void test_pil_constant(void) {
  int64_t is[3] = {37, 23, 3}, os[3] = {11, 50, 3};
  fm_tensor *img = fm_tensor_new(FM_U8, 3, is), *out = fm_tensor_new(FM_U8, 3, os);
  int good = 1;
  for (int v = 0; v < 256; v += 51) {
    memset(img->data, v, 37 * 23 * 3);
    good &= fm_image_resize_pil(out, img, FM_BICUBIC) == 0;
    for (int64_t i = 0; i < 11 * 50 * 3; ++i) good &= ((uint8_t *)out->data)[i] == v;
  }
  ok(good, "PIL bicubic keeps constant images exactly");
  int64_t bad[3] = {11, 50, 1};
  fm_tensor *o1 = fm_tensor_new(FM_U8, 3, bad);
  ok(fm_image_resize_pil(o1, img, FM_BICUBIC) == -1 && strstr(fm_last_error(), "same C"),
     "PIL: channel mismatch refused");
  ok(fm_image_resize_pil(out, img, FM_NEAREST) == -1, "PIL: nearest refused");
  fm_tensor_release(img); fm_tensor_release(out); fm_tensor_release(o1);
}

/* ---- torch's uint8 resize ---------------------------------------------------- */

/* The fixed-point algorithm from its definition: every source sample's
 * weight (axis_weights, double), scaled by 2^bits and rounded half away
 * from zero; integer sums rounded by adding 2^(bits-1), shifted, clipped
 * to 0..255 after each pass; a pass whose size is unchanged is skipped.
 * torch's bits: the most, up to 22, with the axis's largest weight times
 * 2^bits rounding below 2^15 (it keeps coefficients in int16). */
static int torch_bits(int64_t in, int64_t out, int mode) {
  double *w = malloc(sizeof(double) * (size_t)in), wmax = 0;
  for (int64_t i = 0; i < out; ++i) {
    pil_axis(w, in, out, i, mode);
    for (int64_t k = 0; k < in; ++k) wmax = fmax(wmax, w[k]);
  }
  free(w);
  int bits = 22;
  while (bits > 0 && floor(wmax * ldexp(1, bits) + 0.5) >= 32768) --bits;
  return bits;
}

static int32_t fixed_coeff(double w, int bits) {
  double v = w * ldexp(1, bits);
  return (int32_t)(v < 0 ? v - 0.5 : v + 0.5);
}

static uint8_t fixed_clip(int64_t acc, int bits) {
  int64_t v = acc >> bits;
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static void naive_fixed(uint8_t *out, const uint8_t *img, int64_t h, int64_t w, int64_t c, int64_t oh,
                        int64_t ow, int mode, int bits_x, int bits_y) {
  uint8_t *tmp = malloc((size_t)(h * ow * c));
  double *wt = malloc(sizeof(double) * (size_t)(h > w ? h : w));
  for (int64_t xo = 0; xo < ow; ++xo) {
    if (ow != w) pil_axis(wt, w, ow, xo, mode);
    for (int64_t y = 0; y < h; ++y)
      for (int64_t ch = 0; ch < c; ++ch) {
        uint8_t v = ow != w ? 0 : img[(y * w + xo) * c + ch];   /* xo < w only then */
        if (ow != w) {
          int64_t acc = (int64_t)1 << (bits_x - 1);
          for (int64_t k = 0; k < w; ++k) acc += (int64_t)fixed_coeff(wt[k], bits_x) * img[(y * w + k) * c + ch];
          v = fixed_clip(acc, bits_x);
        }
        tmp[(y * ow + xo) * c + ch] = v;
      }
  }
  for (int64_t yo = 0; yo < oh; ++yo) {
    if (oh != h) pil_axis(wt, h, oh, yo, mode);
    for (int64_t i = 0; i < ow * c; ++i) {
      uint8_t v = oh != h ? 0 : tmp[yo * ow * c + i];   /* yo < h only then */
      if (oh != h) {
        int64_t acc = (int64_t)1 << (bits_y - 1);
        for (int64_t k = 0; k < h; ++k) acc += (int64_t)fixed_coeff(wt[k], bits_y) * tmp[k * ow * c + i];
        v = fixed_clip(acc, bits_y);
      }
      out[yo * ow * c + i] = v;
    }
  }
  free(tmp);
  free(wt);
}

static void test_torch_u8_naive(void) {
  static const int64_t sizes[][4] = {
    {64, 48, 13, 17}, {13, 5, 5, 13}, {5, 13, 13, 5}, {31, 31, 31, 8}, {20, 20, 64, 64}, {1, 9, 1, 4},
    {96, 80, 12, 10},
  };
  char name[200];
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s)
    for (int64_t c = 1; c <= 3; c += 2)
      for (int mode = FM_BILINEAR; mode <= FM_BICUBIC; ++mode) {
        int64_t h = sizes[s][0], w = sizes[s][1], oh = sizes[s][2], ow = sizes[s][3];
        int bx = torch_bits(w, ow, mode), by = torch_bits(h, oh, mode);
        fm_tensor *img = random_image(h, w, c);
        int64_t oshape[3] = {oh, ow, c};
        fm_tensor *out = fm_tensor_new(FM_U8, 3, oshape), *pil = fm_tensor_new(FM_U8, 3, oshape);
        size_t n = (size_t)(oh * ow * c);
        uint8_t *ref = malloc(n), *ref22 = malloc(n);
        int rc = fm_image_resize_torch(out, img, mode);
        naive_fixed(ref, img->data, h, w, c, oh, ow, mode, bx, by);
        /* the same twin with PIL's 22 bits is PIL */
        int rc22 = fm_image_resize_pil(pil, img, mode);
        naive_fixed(ref22, img->data, h, w, c, oh, ow, mode, 22, 22);
        int64_t differ = 0;
        for (size_t i = 0; i < n; ++i) differ += ref[i] != ref22[i];
        snprintf(name, sizeof name,
                 "torch u8 %s %dx%dx%d -> %dx%d (%d/%d bits) equals the fixed-point twin (%d bytes differ from PIL)",
                 mode_name[mode], (int)h, (int)w, (int)c, (int)oh, (int)ow, bx, by, (int)differ);
        ok(rc == 0 && memcmp(out->data, ref, n) == 0, name);
        snprintf(name, sizeof name, "PIL %s %dx%dx%d -> %dx%d equals the twin at 22 bits", mode_name[mode],
                 (int)h, (int)w, (int)c, (int)oh, (int)ow);
        ok(rc22 == 0 && memcmp(pil->data, ref22, n) == 0, name);
        free(ref);
        free(ref22);
        fm_tensor_release(img);
        fm_tensor_release(out);
        fm_tensor_release(pil);
      }
}

/* one row through both kernels */
static int resize_row(int torch, const uint8_t *row, int64_t w, uint8_t *out, int64_t ow, int mode) {
  int64_t is[3] = {1, w, 1}, os[3] = {1, ow, 1};
  fm_tensor *x = fm_tensor_borrow(FM_U8, 3, is, (void *)row), *y = fm_tensor_borrow(FM_U8, 3, os, out);
  int rc = torch ? fm_image_resize_torch(y, x, mode) : fm_image_resize_pil(y, x, mode);
  fm_tensor_release(x);
  fm_tensor_release(y);
  return rc;
}

/* Where PIL (22 bits) and torch (int16: 14 to 22 bits) part: exact halves
 * whose weights are not multiples of 2^-14, so the two round their
 * coefficients to different sides. */
static void test_torch_u8_hand(void) {
  uint8_t out[4];
  /* bilinear 5 -> 2: a triangle of half-width 2.5 around 1.25 over samples
   * 0..3 gives 0.7, 0.9, 0.5, 0.1, i.e. weights (7, 9, 5, 1) / 22, mirrored
   * for output 1. With an 11 at sample 1 the exact outputs are 4.5 and
   * 0.5. PIL: 9/22 * 2^22 = 1715851.6 rounds up, so 11 * 1715852 + 2^21
   * >= 5 * 2^22 -> 5; 1/22 * 2^22 = 190650.2 rounds down -> 0. torch: the
   * largest weight 9/22 gives 16 bits (2^17 * 9/22 >= 2^15); 26810.2 rounds
   * down, 11 * 26810 + 2^15 = 327678 < 5 * 2^16 -> 4; 2978.9 rounds up -> 1. */
  const uint8_t row5[5] = {0, 11, 0, 0, 0};
  const uint8_t pil5[2] = {5, 0}, torch5[2] = {4, 1};
  ok(resize_row(0, row5, 5, out, 2, FM_BILINEAR) == 0 && memcmp(out, pil5, 2) == 0,
     "PIL bilinear 5 -> 2 at a tie: 5, 0");
  ok(resize_row(1, row5, 5, out, 2, FM_BILINEAR) == 0 && memcmp(out, torch5, 2) == 0,
     "torch u8 bilinear 5 -> 2 at the same tie: 4, 1");
  /* bicubic (a = -0.5) 2 -> 3: output 0 is centred at 1/3, samples at
   * distances 1/6 and 7/6 weigh 405/432 and -25/432, normalised 81/76 and
   * -5/76. With (38, 0) the exact output is 38 * 81/76 = 40.5. PIL:
   * 81/76 * 2^22 = 4470244.6 -> 4470245, 38 * 4470245 + 2^21 = 171966462
   * < 41 * 2^22 -> 40. torch: a weight above 1 gives 14 bits; 17461.9 ->
   * 17462, 38 * 17462 + 2^13 = 671748 >= 41 * 2^14 -> 41. The middle output
   * is 19 in both, the last (-2.5) clips to 0. */
  const uint8_t row2[2] = {38, 0};
  const uint8_t pil3[3] = {40, 19, 0}, torch3[3] = {41, 19, 0};
  ok(resize_row(0, row2, 2, out, 3, FM_BICUBIC) == 0 && memcmp(out, pil3, 3) == 0,
     "PIL bicubic 2 -> 3 at a tie: 40, 19, 0");
  ok(resize_row(1, row2, 2, out, 3, FM_BICUBIC) == 0 && memcmp(out, torch3, 3) == 0,
     "torch u8 bicubic 2 -> 3 at the same tie: 41, 19, 0");
  int64_t is[3] = {4, 4, 3}, os[3] = {2, 2, 1};
  fm_tensor *img = fm_tensor_new(FM_U8, 3, is), *o1 = fm_tensor_new(FM_U8, 3, os);
  ok(fm_image_resize_torch(o1, img, FM_BICUBIC) == -1 && strstr(fm_last_error(), "fm_image_resize_torch"),
     "torch u8: channel mismatch refused, named");
  ok(fm_image_resize_torch(o1, img, FM_NEAREST) == -1, "torch u8: nearest refused");
  fm_tensor_release(img);
  fm_tensor_release(o1);
}

/* ---- torch and PIL themselves, when python3 has them ------------------------ */

static const char *find_python(const char *module) {
  static const char *cands[] = {NULL, "python3", "/usr/bin/python3"};
  static char cmd[256];
  cands[0] = getenv("FMSEG_PYTHON");
  for (int i = 0; i < 3; ++i) {
    if (!cands[i]) continue;
    snprintf(cmd, sizeof cmd, "%s -c 'import %s' >/dev/null 2>&1", cands[i], module);
    if (system(cmd) == 0) {
      char msg[256];
      snprintf(msg, sizeof msg, "cross-checking with %s (import %s)", cands[i], module);
      diag(msg);
      return cands[i];
    }
  }
  return NULL;
}

static int write_file(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  int good = fwrite(p, 1, n, f) == n;
  return fclose(f) == 0 && good;
}

static int read_file(const char *path, void *p, size_t n) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  int good = fread(p, 1, n, f) == n;
  fclose(f);
  return good;
}

/* Runs `script` with python in dir. */
static int run_python(const char *py, const char *dir, const char *script) {
  char path[512], cmd[1024];
  snprintf(path, sizeof path, "%s/ref.py", dir);
  if (!write_file(path, script, strlen(script))) return 0;
  snprintf(cmd, sizeof cmd, "cd %s && %s ref.py", dir, py);
  return system(cmd) == 0;
}

/* The interpolation cases checked against torch: every mode and flag, up
 * and down, from one 13x9 input; one python run answers them all. */
typedef struct torch_case { int64_t oh, ow; int mode, ac, aa; } torch_case;

static int torch_cases(torch_case *cases) {
  static const int64_t outs[][2] = {{5, 4}, {29, 31}, {13, 20}, {1, 1}};
  int n = 0;
  for (size_t s = 0; s < sizeof outs / sizeof outs[0]; ++s)
    for (int mode = 0; mode < 3; ++mode)
      for (int ac = 0; ac < (mode ? 2 : 1); ++ac)
        for (int aa = 0; aa < (mode ? 2 : 1); ++aa)
          cases[n++] = (torch_case){outs[s][0], outs[s][1], mode, ac, aa};
  return n;
}

static void test_torch(const char *dir) {
  const char *py = find_python("torch");
  if (!py) {
    skip("no python3 with torch: checked against direct formulas and hand values only");
    return;
  }
  torch_case cases[64];
  int n = torch_cases(cases);
  int64_t h = 13, w = 9;
  fm_tensor *x = random_nchw(2, 3, h, w);
  char path[512], name[160], script[4096], line[256];
  snprintf(path, sizeof path, "%s/in.bin", dir);
  write_file(path, x->data, sizeof(float) * 2 * 3 * h * w);
  snprintf(script, sizeof script,
           "import numpy as np, torch, torch.nn.functional as F\n"
           "x = torch.from_numpy(np.fromfile('in.bin', np.float32).reshape(2, 3, %d, %d))\n"
           "def run(k, size, mode, ac, aa):\n"
           "    kw = {} if mode == 'nearest' else dict(align_corners=ac, antialias=aa)\n"
           "    F.interpolate(x, size=size, mode=mode, **kw).numpy().tofile('out%%d.bin' %% k)\n",
           (int)h, (int)w);
  for (int k = 0; k < n; ++k) {
    snprintf(line, sizeof line, "run(%d, (%d, %d), '%s', %s, %s)\n", k, (int)cases[k].oh, (int)cases[k].ow,
             mode_name[cases[k].mode], cases[k].ac ? "True" : "False", cases[k].aa ? "True" : "False");
    strncat(script, line, sizeof script - strlen(script) - 1);
  }
  int ran = run_python(py, dir, script);
  for (int k = 0; k < n; ++k) {
    torch_case c = cases[k];
    int64_t os[4] = {2, 3, c.oh, c.ow};
    fm_tensor *out = fm_tensor_new(FM_F32, 4, os), *ref = fm_tensor_new(FM_F32, 4, os);
    snprintf(path, sizeof path, "%s/out%d.bin", dir, k);
    int got = ran && read_file(path, ref->data, sizeof(float) * 6 * c.oh * c.ow);
    unlink(path);
    int rc = fm_interpolate(out, x, c.mode, c.ac, c.aa);
    double e = rel_err(out->data, ref->data, 6 * c.oh * c.ow);
    snprintf(name, sizeof name, "torch %s align_corners=%d antialias=%d 13x9 -> %dx%d (rel err %.2g)",
             mode_name[c.mode], c.ac, c.aa, (int)c.oh, (int)c.ow, e);
    ok(got && rc == 0 && e < 1e-5, name);
    fm_tensor_release(out);
    fm_tensor_release(ref);
  }
  fm_tensor_release(x);
}

static void test_pil_itself(const char *dir) {
  const char *py = find_python("PIL");
  if (!py) {
    skip("no python3 with PIL: checked against a float PIL only");
    return;
  }
  /* h, w, c, oh, ow */
  static const int64_t cases[][5] = {
    {64, 48, 3, 13, 17}, {50, 70, 3, 224, 160}, {31, 17, 1, 7, 40}, {13, 5, 3, 5, 13}, {9, 9, 1, 9, 4},
  };
  enum { NCASES = sizeof cases / sizeof cases[0] };
  fm_tensor *imgs[NCASES];
  char path[512], name[160], script[4096], line[256];
  snprintf(script, sizeof script,
           "import numpy as np\nfrom PIL import Image\n"
           "def run(k, h, w, c, oh, ow, mode):\n"
           "    a = np.fromfile('in%%d.bin' %% k, np.uint8).reshape(h, w, c)\n"
           "    im = Image.fromarray(a[:, :, 0] if c == 1 else a)\n"
           "    np.asarray(im.resize((ow, oh), mode)).tofile('out%%d_%%d.bin' %% (k, mode))\n");
  for (int k = 0; k < NCASES; ++k) {
    const int64_t *c = cases[k];
    imgs[k] = random_image(c[0], c[1], c[2]);
    snprintf(path, sizeof path, "%s/in%d.bin", dir, k);
    write_file(path, imgs[k]->data, (size_t)(c[0] * c[1] * c[2]));
    /* PIL's Image.BILINEAR is 2, Image.BICUBIC 3 */
    for (int mode = 2; mode <= 3; ++mode) {
      snprintf(line, sizeof line, "run(%d, %d, %d, %d, %d, %d, %d)\n", k, (int)c[0], (int)c[1], (int)c[2],
               (int)c[3], (int)c[4], mode);
      strncat(script, line, sizeof script - strlen(script) - 1);
    }
  }
  int ran = run_python(py, dir, script);
  for (int k = 0; k < NCASES; ++k) {
    const int64_t *c = cases[k];
    snprintf(path, sizeof path, "%s/in%d.bin", dir, k);
    unlink(path);
    for (int mode = FM_BILINEAR; mode <= FM_BICUBIC; ++mode) {
      int64_t os[3] = {c[3], c[4], c[2]};
      size_t n = (size_t)(c[3] * c[4] * c[2]);
      fm_tensor *out = fm_tensor_new(FM_U8, 3, os), *ref = fm_tensor_new(FM_U8, 3, os);
      snprintf(path, sizeof path, "%s/out%d_%d.bin", dir, k, mode == FM_BICUBIC ? 3 : 2);
      int got = ran && read_file(path, ref->data, n);
      unlink(path);
      int rc = fm_image_resize_pil(out, imgs[k], mode);
      snprintf(name, sizeof name, "PIL itself: %s %dx%dx%d -> %dx%d, every byte equal", mode_name[mode],
               (int)c[0], (int)c[1], (int)c[2], (int)c[3], (int)c[4]);
      ok(got && rc == 0 && memcmp(out->data, ref->data, n) == 0, name);
      fm_tensor_release(out);
      fm_tensor_release(ref);
    }
    fm_tensor_release(imgs[k]);
  }
}

/* torch's own uint8 antialiased resize, as torchvision calls it: (1, C,
 * H, W) contiguous uint8 into F.interpolate(antialias=True). torch before
 * 2.1 has no uint8 kernel; then the check is skipped. */
static void test_torch_u8_itself(const char *dir) {
  const char *py = find_python("torch");
  if (!py) {
    skip("no python3 with torch: uint8 resize checked against its twin and hand values only");
    return;
  }
  /* h, w, c, oh, ow */
  static const int64_t cases[][5] = {
    {64, 48, 3, 13, 17}, {50, 70, 3, 224, 160}, {31, 17, 1, 7, 40}, {13, 5, 3, 5, 13}, {9, 9, 1, 9, 4},
    {96, 80, 3, 12, 10},
  };
  enum { NCASES = sizeof cases / sizeof cases[0] };
  fm_tensor *imgs[NCASES];
  char path[512], name[160], script[4096], line[256];
  snprintf(script, sizeof script,
           "import numpy as np, torch, torch.nn.functional as F, sys\n"
           "try:\n"
           "    F.interpolate(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), size=(2, 2), mode='bicubic',\n"
           "                  align_corners=False, antialias=True)\n"
           "except RuntimeError:\n"
           "    open('no_uint8', 'w').close(); sys.exit(0)\n"
           "def run(k, h, w, c, oh, ow, mode):\n"
           "    a = torch.from_numpy(np.fromfile('in%%d.bin' %% k, np.uint8).reshape(h, w, c))\n"
           "    x = a.permute(2, 0, 1).contiguous()[None]\n"
           "    y = F.interpolate(x, size=(oh, ow), mode=mode, align_corners=False, antialias=True)\n"
           "    y[0].permute(1, 2, 0).contiguous().numpy().tofile('out%%d_%%s.bin' %% (k, mode))\n");
  for (int k = 0; k < NCASES; ++k) {
    const int64_t *c = cases[k];
    imgs[k] = random_image(c[0], c[1], c[2]);
    snprintf(path, sizeof path, "%s/in%d.bin", dir, k);
    write_file(path, imgs[k]->data, (size_t)(c[0] * c[1] * c[2]));
    for (int mode = FM_BILINEAR; mode <= FM_BICUBIC; ++mode) {
      snprintf(line, sizeof line, "run(%d, %d, %d, %d, %d, %d, '%s')\n", k, (int)c[0], (int)c[1], (int)c[2],
               (int)c[3], (int)c[4], mode_name[mode]);
      strncat(script, line, sizeof script - strlen(script) - 1);
    }
  }
  int ran = run_python(py, dir, script);
  snprintf(path, sizeof path, "%s/no_uint8", dir);
  int unsupported = access(path, F_OK) == 0;
  unlink(path);
  if (unsupported) skip("this torch has no uint8 antialiased resize (added in 2.1)");
  for (int k = 0; k < NCASES; ++k) {
    const int64_t *c = cases[k];
    snprintf(path, sizeof path, "%s/in%d.bin", dir, k);
    unlink(path);
    for (int mode = FM_BILINEAR; mode <= FM_BICUBIC && !unsupported; ++mode) {
      int64_t os[3] = {c[3], c[4], c[2]};
      size_t n = (size_t)(c[3] * c[4] * c[2]);
      fm_tensor *out = fm_tensor_new(FM_U8, 3, os), *ref = fm_tensor_new(FM_U8, 3, os);
      snprintf(path, sizeof path, "%s/out%d_%s.bin", dir, k, mode_name[mode]);
      int got = ran && read_file(path, ref->data, n);
      unlink(path);
      int rc = fm_image_resize_torch(out, imgs[k], mode);
      snprintf(name, sizeof name, "torch itself: uint8 %s %dx%dx%d -> %dx%d, every byte equal",
               mode_name[mode], (int)c[0], (int)c[1], (int)c[2], (int)c[3], (int)c[4]);
      ok(got && rc == 0 && memcmp(out->data, ref->data, n) == 0, name);
      fm_tensor_release(out);
      fm_tensor_release(ref);
    }
    fm_tensor_release(imgs[k]);
  }
}

static void remove_dir(const char *dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/in.bin", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/ref.py", dir);
  unlink(path);
  rmdir(dir);
}

int main(void) {
  test_against_naive();
  test_hand_values();
  test_bad_input();
  test_pil_naive();
  test_pil_constant();
  test_torch_u8_naive();
  test_torch_u8_hand();
  char dir[] = "/tmp/fmseg_resize_XXXXXX";
  if (mkdtemp(dir)) {
    test_torch(dir);
    test_pil_itself(dir);
    test_torch_u8_itself(dir);
    remove_dir(dir);
  } else {
    ok(0, "mkdtemp for the python cross-checks");
  }
  return done_testing();
}
