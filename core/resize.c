/* resize.c — interpolation with torch.nn.functional.interpolate's semantics
 * (float32, N C H W) and PIL's Image.resize (uint8, H W C).
 *
 * Every mode is separable: for each output index along one axis we list a
 * fixed number of (source index, weight) taps, then resample rows (width)
 * and then columns (height), which is the order PyTorch's separable and
 * antialiased kernels and PIL use.
 *
 * ref: pytorch aten/src/ATen/native/UpSample.h (area_pixel_compute_scale,
 *      area_pixel_compute_source_index, nearest_idx, guard_index_and_lambda,
 *      get_cubic_upsample_coefficients),
 *      aten/src/ATen/native/cpu/UpSampleKernel.cpp (HelperInterpLinear /
 *      HelperInterpCubic ::aa_filter, _compute_index_ranges_weights);
 *      Pillow src/libImaging/Resample.c (precompute_coeffs,
 *      normalize_coeffs_8bpc, ImagingResampleHorizontal/Vertical_8bpc). */
#include "internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One axis of a separable resampling: output i reads
 * sum_t weight[i*taps + t] * src[index[i*taps + t]]. Unused taps have
 * weight 0 and a valid index. */
typedef struct fm__axis {
  int64_t out, taps;
  int64_t *index;
  float *weight;
} fm__axis;

static bool fm__axis_alloc(fm__axis *ax, int64_t out, int64_t taps) {
  ax->out = out;
  ax->taps = taps;
  ax->index = calloc((size_t)(out * taps), sizeof *ax->index);
  ax->weight = calloc((size_t)(out * taps), sizeof *ax->weight);
  if (ax->index && ax->weight) return true;
  free(ax->index);
  free(ax->weight);
  ax->index = NULL;
  ax->weight = NULL;
  return fm__error("fm_interpolate: out of memory"), false;
}

static void fm__axis_free(fm__axis *ax) {
  free(ax->index);
  free(ax->weight);
}

static int64_t fm__clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* PyTorch computes scales and source positions in float for float input;
 * we do the same so that index choices agree with it bit for bit. */
/* sf > 0: the caller's scale_factor, which torch uses instead of the
 * size ratio to place source pixels (area_pixel_compute_scale). */
static float fm__area_scale(int64_t in, int64_t out, int32_t align_corners, double sf) {
  if (align_corners) return out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f;
  if (sf > 0) return (float)(1.0 / sf);
  return (float)in / (float)out;
}

static float fm__source_index(float scale, int64_t dst, int32_t align_corners, bool cubic) {
  if (align_corners) return scale * (float)dst;
  float src = scale * ((float)dst + 0.5f) - 0.5f;
  return (!cubic && src < 0.0f) ? 0.0f : src;
}

/* torch 'nearest': floor(dst * in / out), no half-pixel offset. */
static bool fm__axis_nearest(fm__axis *ax, int64_t in, int64_t out) {
  if (!fm__axis_alloc(ax, out, 1)) return false;
  float scale = (float)in / (float)out;
  for (int64_t i = 0; i < out; ++i) {
    int64_t src;
    if (out == in) src = i;
    else if (out == 2 * in) src = i >> 1;
    else src = fm__clamp64((int64_t)floorf((float)i * scale), 0, in - 1);
    ax->index[i] = src;
    ax->weight[i] = 1.0f;
  }
  return true;
}

/* floor of the source position, clamped to the last pixel, and the
 * fraction past it in [0, 1] (guard_index_and_lambda) */
static void fm__guard(float real, int64_t in, int64_t *index, float *lambda) {
  /* clamped before the cast: a position past int64's range (from an extreme
   * scale factor, fm_interpolate_scale) made the cast undefined */
  int64_t i = real < (float)(in - 1) ? (int64_t)floorf(real) : in - 1;
  if (i > in - 1) i = in - 1;
  float l = real - (float)i;
  *index = i;
  *lambda = l < 0.0f ? 0.0f : l > 1.0f ? 1.0f : l;
}

static bool fm__axis_linear(fm__axis *ax, int64_t in, int64_t out, int32_t align_corners, double sf) {
  if (!fm__axis_alloc(ax, out, 2)) return false;
  float scale = fm__area_scale(in, out, align_corners, sf);
  for (int64_t i = 0; i < out; ++i) {
    int64_t *idx = ax->index + 2 * i;
    float *w = ax->weight + 2 * i;
    if (in == out && sf <= 0) {
      idx[0] = idx[1] = i;
      w[0] = 1.0f;
      w[1] = 0.0f;
      continue;
    }
    int64_t i0;
    float l1;
    fm__guard(fm__source_index(scale, i, align_corners, false), in, &i0, &l1);
    idx[0] = i0;
    idx[1] = i0 < in - 1 ? i0 + 1 : i0;
    w[0] = 1.0f - l1;
    w[1] = l1;
  }
  return true;
}

/* Keys' cubic convolution kernel, |x| <= 1 and 1 < |x| < 2 branches. */
static double fm__cubic1(double x, double a) { return ((a + 2) * x - (a + 3)) * x * x + 1; }
static double fm__cubic2(double x, double a) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; }

/* torch bicubic: A = -0.75, four taps around floor(src), reads clamped to
 * the border. */
static bool fm__axis_cubic(fm__axis *ax, int64_t in, int64_t out, int32_t align_corners, double sf) {
  if (!fm__axis_alloc(ax, out, 4)) return false;
  const float a = -0.75f;
  float scale = fm__area_scale(in, out, align_corners, sf);
  for (int64_t i = 0; i < out; ++i) {
    int64_t i0;
    float t;
    fm__guard(fm__source_index(scale, i, align_corners, true), in, &i0, &t);
    float *w = ax->weight + 4 * i;
    w[0] = (float)fm__cubic2((double)(t + 1.0f), a);
    w[1] = (float)fm__cubic1((double)t, a);
    w[2] = (float)fm__cubic1((double)(1.0f - t), a);
    w[3] = (float)fm__cubic2((double)(2.0f - t), a);
    for (int64_t k = 0; k < 4; ++k) ax->index[4 * i + k] = fm__clamp64(i0 - 1 + k, 0, in - 1);
  }
  return true;
}

static double fm__aa_linear(double x) {
  x = fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

/* The antialiased paths (PyTorch's _aa kernels and PIL) use a = -0.5. */
static double fm__aa_cubic(double x) {
  x = fabs(x);
  if (x < 1.0) return fm__cubic1(x, -0.5);
  if (x < 2.0) return fm__cubic2(x, -0.5);
  return 0.0;
}

/* The antialiased window shared by PyTorch's _aa kernels and PIL: a filter
 * of half-width `support` (stretched by the scale when shrinking) centred
 * on scale * (i + 0.5), truncated at the borders and renormalised.
 * Weights and bounds in double; *first gets each window's first index,
 * *count its length. Returns the fixed tap count, or -1. */
static int64_t fm__aa_window(int64_t in, int64_t out, double scale, double (*filter)(double),
                             double half, double **weights, int64_t **first, int64_t **count) {
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = half * filterscale;
  int64_t taps = (int64_t)ceil(support) * 2 + 1;
  double *w = calloc((size_t)(out * taps), sizeof *w);
  int64_t *f = malloc((size_t)out * sizeof *f), *c = malloc((size_t)out * sizeof *c);
  if (!w || !f || !c) {
    free(w); free(f); free(c);
    return fm__error("resize: out of memory");
  }
  for (int64_t i = 0; i < out; ++i) {
    double center = scale * ((double)i + 0.5);
    /* truncation, not floor, as both references write it */
    int64_t lo = (int64_t)(center - support + 0.5), hi = (int64_t)(center + support + 0.5);
    if (lo < 0) lo = 0;
    if (hi > in) hi = in;
    int64_t n = fm__clamp64(hi - lo, 0, taps);
    double total = 0.0, *wi = w + i * taps;
    for (int64_t j = 0; j < n; ++j) {
      wi[j] = filter(((double)(j + lo) - center + 0.5) / filterscale);
      total += wi[j];
    }
    if (total != 0.0)
      for (int64_t j = 0; j < n; ++j) wi[j] /= total;
    f[i] = lo;
    c[i] = n;
  }
  *weights = w;
  *first = f;
  *count = c;
  return taps;
}

static bool fm__axis_aa(fm__axis *ax, int64_t in, int64_t out, int32_t mode, int32_t align_corners) {
  double *w = NULL;
  int64_t *first = NULL, *count = NULL;
  double scale = fm__area_scale(in, out, align_corners, 0);
  int64_t taps = mode == FM_BICUBIC ? fm__aa_window(in, out, scale, fm__aa_cubic, 2.0, &w, &first, &count)
                                    : fm__aa_window(in, out, scale, fm__aa_linear, 1.0, &w, &first, &count);
  if (taps < 0) return false;
  bool good = fm__axis_alloc(ax, out, taps);
  for (int64_t i = 0; good && i < out; ++i)
    for (int64_t j = 0; j < taps; ++j) {
      ax->index[i * taps + j] = j < count[i] ? first[i] + j : first[i];
      ax->weight[i * taps + j] = j < count[i] ? (float)w[i * taps + j] : 0.0f;
    }
  free(w);
  free(first);
  free(count);
  return good;
}

static bool fm__axis_make(fm__axis *ax, int64_t in, int64_t out, int32_t mode, int32_t align_corners,
                          int32_t antialias, double sf) {
  if (antialias) return fm__axis_aa(ax, in, out, mode, align_corners);
  if (mode == FM_NEAREST) return fm__axis_nearest(ax, in, out);
  if (mode == FM_BILINEAR) return fm__axis_linear(ax, in, out, align_corners, sf);
  return fm__axis_cubic(ax, in, out, align_corners, sf);
}

/* x: (P, H, W) -> tmp: (P, H, OW) -> out: (P, OH, OW), P = N * C planes. */
static void fm__resample(float *out, const float *x, float *tmp, int64_t planes, int64_t h, int64_t w,
                         const fm__axis *ay, const fm__axis *ax) {
  int64_t oh = ay->out, ow = ax->out, tx = ax->taps, ty = ay->taps;
  #pragma omp parallel for if (planes * h * ow * tx > 65536) schedule(static)
  for (int64_t r = 0; r < planes * h; ++r) {
    const float *src = x + r * w;
    float *dst = tmp + r * ow;
    for (int64_t o = 0; o < ow; ++o) {
      const int64_t *idx = ax->index + o * tx;
      const float *wt = ax->weight + o * tx;
      float s = src[idx[0]] * wt[0];
      for (int64_t t = 1; t < tx; ++t) s += src[idx[t]] * wt[t];
      dst[o] = s;
    }
  }
  #pragma omp parallel for if (planes * oh * ow * ty > 65536) schedule(static)
  for (int64_t r = 0; r < planes * oh; ++r) {
    int64_t p = r / oh, o = r % oh;
    const int64_t *idx = ay->index + o * ty;
    const float *wt = ay->weight + o * ty;
    const float *plane = tmp + p * h * ow;
    float *dst = out + r * ow;
    for (int64_t i = 0; i < ow; ++i) dst[i] = plane[idx[0] * ow + i] * wt[0];
    for (int64_t t = 1; t < ty; ++t) {
      const float *row = plane + idx[t] * ow;
      float wv = wt[t];
      for (int64_t i = 0; i < ow; ++i) dst[i] += row[i] * wv;
    }
  }
}

// x: (N, C, H, W) -> out: (N, C, OH, OW)
static int fm__interpolate(fm_tensor *out, const fm_tensor *x, int32_t mode, int32_t align_corners,
                           int32_t antialias, double sf_h, double sf_w) {
  char a[128], b[128];
  if (!fm__check_input(x, "fm_interpolate: x") || !fm__check_output(out, "fm_interpolate: out"))
    return -1;
  if (x->ndim != 4 || out->ndim != 4 || x->dims[0] != out->dims[0] || x->dims[1] != out->dims[1])
    return fm__error("fm_interpolate: x %s and out %s must be (N, C, H, W) with the same N and C",
                     fm__shape_str(x, a, sizeof a), fm__shape_str(out, b, sizeof b));
  if (mode != FM_NEAREST && mode != FM_BILINEAR && mode != FM_BICUBIC)
    return fm__error("fm_interpolate: unknown mode %d", (int)mode);
  /* torch refuses these combinations too */
  if (mode == FM_NEAREST && (align_corners || antialias))
    return fm__error("fm_interpolate: align_corners and antialias need bilinear or bicubic mode");
  int64_t planes = x->dims[0] * x->dims[1], h = x->dims[2], w = x->dims[3];
  int64_t oh = out->dims[2], ow = out->dims[3];
  if (planes == 0 || oh == 0 || ow == 0) return 0;
  if (h < 1 || w < 1) return fm__error("fm_interpolate: empty input %s", fm__shape_str(x, a, sizeof a));

  fm__axis ay = {0}, ax = {0};
  float *tmp = NULL;
  int rc = -1;
  if (!fm__axis_make(&ay, h, oh, mode, align_corners, antialias, sf_h) ||
      !fm__axis_make(&ax, w, ow, mode, align_corners, antialias, sf_w))
    goto done;
  tmp = malloc((size_t)(planes * h * ow) * sizeof *tmp);
  if (!tmp) {
    fm__error("fm_interpolate: out of memory for %" PRId64 " floats", planes * h * ow);
    goto done;
  }
  fm__resample(fm__f32(out), fm__f32(x), tmp, planes, h, w, &ay, &ax);
  rc = 0;
done:
  free(tmp);
  fm__axis_free(&ay);
  fm__axis_free(&ax);
  return rc;
}

int fm_interpolate(fm_tensor *out, const fm_tensor *x, int32_t mode, int32_t align_corners,
                   int32_t antialias) {
  return fm__interpolate(out, x, mode, align_corners, antialias, 0, 0);
}

int fm_interpolate_scale(fm_tensor *out, const fm_tensor *x, int32_t mode, int32_t align_corners,
                         double scale_h, double scale_w) {
  if (mode == FM_NEAREST) return fm__error("fm_interpolate_scale: bilinear or bicubic only");
  if (!(scale_h > 0) || !(scale_w > 0))
    return fm__error("fm_interpolate_scale: scale factors must be positive, got %g and %g", scale_h, scale_w);
  return fm__interpolate(out, x, mode, align_corners, 0, scale_h, scale_w);
}

/* ---- PIL ------------------------------------------------------------------ */

/* PIL's fixed point: coefficients scaled by 2^22, leaving 8 bits for the
 * pixel and 2 for overshoot of the negative-lobed filters. */
enum { FM__PIL_BITS = 32 - 8 - 2 };

/* One axis in PIL's integer form: out = clip8((2^(bits-1) + sum coeff *
 * pixel) >> bits). PIL always uses FM__PIL_BITS; torch's uint8 kernel
 * picks `bits` per axis (fm__torch_bits). */
typedef struct fm__pil_axis {
  int64_t taps;
  int64_t *first, *count;
  int32_t *coeff;    /* (out, taps) */
  int bits;
} fm__pil_axis;

/* torch's uint8 kernels store coefficients as int16: the most fraction
 * bits (at most 22) for which twice the axis's largest weight, rounded,
 * stays below 2^15. A weight near 1 gets 14 bits, 512 -> 64 bicubic 17.
 * ref: pytorch aten/src/ATen/native/cpu/UpSampleKernel.cpp,
 *      HelperInterpBase::_compute_index_ranges_int16_weights */
static int fm__torch_bits(const double *w, int64_t n) {
  double wmax = 0.0;
  for (int64_t k = 0; k < n; ++k)
    if (w[k] > wmax) wmax = w[k];
  int bits = 0;
  while (bits < 22 && (int64_t)(0.5 + wmax * (double)(1 << (bits + 1))) < (1 << 15)) ++bits;
  return bits;
}

/* torch_bits: false for PIL's 22 bits, true for torch's int16 choice */
static bool fm__pil_axis_make(fm__pil_axis *ax, int64_t in, int64_t out, int32_t mode, bool torch_bits) {
  double *w = NULL;
  /* PIL's box is (0, 0, in) as float, so scale = in / out in double */
  int64_t taps = mode == FM_BICUBIC ? fm__aa_window(in, out, (double)in / (double)out, fm__aa_cubic, 2.0,
                                                    &w, &ax->first, &ax->count)
                                    : fm__aa_window(in, out, (double)in / (double)out, fm__aa_linear, 1.0,
                                                    &w, &ax->first, &ax->count);
  if (taps < 0) return false;
  ax->taps = taps;
  ax->coeff = malloc((size_t)(out * taps) * sizeof *ax->coeff);
  if (!ax->coeff) {
    free(w);
    return fm__error("image resize: out of memory"), false;
  }
  /* unused taps are 0, so the maximum is over the real weights */
  ax->bits = torch_bits ? fm__torch_bits(w, out * taps) : FM__PIL_BITS;
  /* round half away from zero, as normalize_coeffs_8bpc (and torch) do */
  for (int64_t k = 0; k < out * taps; ++k) {
    double v = w[k] * (double)(1 << ax->bits);
    ax->coeff[k] = (int32_t)(v < 0 ? v - 0.5 : v + 0.5);
  }
  free(w);
  return true;
}

static void fm__pil_axis_free(fm__pil_axis *ax) {
  free(ax->first);
  free(ax->count);
  free(ax->coeff);
}

static uint8_t fm__pil_clip8(int32_t acc, int bits) {
  int32_t v = acc >> bits;  /* arithmetic shift, as in PIL */
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

// src: (rows, W, C) -> dst: (rows, OW, C), each row independently
static void fm__pil_horizontal(uint8_t *dst, const uint8_t *src, int64_t rows, int64_t w, int64_t c,
                               const fm__pil_axis *ax, int64_t ow) {
  #pragma omp parallel for if (rows * ow * c * ax->taps > 65536) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < ow; ++o) {
      const int32_t *k = ax->coeff + o * ax->taps;
      const uint8_t *s = src + (r * w + ax->first[o]) * c;
      int32_t acc[4];
      for (int64_t ch = 0; ch < c; ++ch) acc[ch] = 1 << (ax->bits - 1);  /* rounds the final shift */
      for (int64_t t = 0; t < ax->count[o]; ++t)
        for (int64_t ch = 0; ch < c; ++ch) acc[ch] += (int32_t)s[t * c + ch] * k[t];
      for (int64_t ch = 0; ch < c; ++ch) dst[(r * ow + o) * c + ch] = fm__pil_clip8(acc[ch], ax->bits);
    }
  }
}

// src: (rows, n) -> dst: (OH, n), rows combined by ay's taps (n = OW * C)
static int fm__pil_vertical(uint8_t *dst, const uint8_t *src, int64_t n, const fm__pil_axis *ay,
                            int64_t oh) {
  int failed = 0;
  #pragma omp parallel if (oh * n * ay->taps > 65536)
  {
    int32_t *acc = malloc((size_t)n * sizeof *acc);  /* one row of sums per thread */
    if (!acc) {
      #pragma omp atomic write
      failed = 1;
    }
    #pragma omp for schedule(static)
    for (int64_t o = 0; o < oh; ++o) {
      if (!acc) continue;
      const int32_t *k = ay->coeff + o * ay->taps;
      const uint8_t *s = src + ay->first[o] * n;
      for (int64_t i = 0; i < n; ++i) acc[i] = 1 << (ay->bits - 1);
      for (int64_t t = 0; t < ay->count[o]; ++t) {
        const uint8_t *row = s + t * n;
        int32_t kt = k[t];
        for (int64_t i = 0; i < n; ++i) acc[i] += (int32_t)row[i] * kt;
      }
      for (int64_t i = 0; i < n; ++i) dst[o * n + i] = fm__pil_clip8(acc[i], ay->bits);
    }
    free(acc);
  }
  return failed ? fm__error("image resize: out of memory") : 0;
}

// The checks both 8-bit image resizers make: img and out non-empty
// (H, W, C) uint8 with the same C.
static int fm__check_u8_resize(const fm_tensor *out, const fm_tensor *img, const char *what) {
  char a[128], b[128];
  if (!img || !out) return fm__error("%s: NULL tensor", what);
  if (img->type != FM_U8 || out->type != FM_U8)
    return fm__error("%s: img and out must be uint8, got %s and %s", what, fm_dtype_name(img->type),
                     fm_dtype_name(out->type));
  if (img->ndim != 3 || out->ndim != 3 || img->dims[2] != out->dims[2] || img->dims[0] < 1 ||
      img->dims[1] < 1 || out->dims[0] < 1 || out->dims[1] < 1)
    return fm__error("%s: img %s and out %s must be non-empty (H, W, C) with the same C", what,
                     fm__shape_str(img, a, sizeof a), fm__shape_str(out, b, sizeof b));
  return 0;
}

// img: (H, W, C) U8 -> out: (OH, OW, C) U8
/* Bit-exact with PIL for L (C=1) and RGB (C=3). PIL resizes LA and RGBA
 * with premultiplied alpha; here (as in torch) every channel is resampled
 * alike. */
static int fm__resize_u8(fm_tensor *out, const fm_tensor *img, int32_t mode, bool torch_bits,
                         const char *what) {
  if (fm__check_u8_resize(out, img, what)) return -1;
  if (mode != FM_BILINEAR && mode != FM_BICUBIC)
    return fm__error("%s: mode %d: only FM_BILINEAR and FM_BICUBIC", what, (int)mode);
  if (!fm__check_contiguous(out, what) || !fm__check_writable(out, what)) return -1;

  int64_t h = img->dims[0], w = img->dims[1], c = img->dims[2], oh = out->dims[0], ow = out->dims[1];
  fm_tensor *src = fm_tensor_contiguous(img);
  if (!src) return -1;
  fm__pil_axis ay = {0}, ax = {0};
  uint8_t *tmp = NULL;
  int rc = -1;
  if (!fm__pil_axis_make(&ay, h, oh, mode, torch_bits) || !fm__pil_axis_make(&ax, w, ow, mode, torch_bits))
    goto done;

  /* horizontal pass first, only over the rows the vertical pass reads */
  const uint8_t *rows = src->data;
  int64_t row0 = 0;
  if (ow != w) {
    row0 = ay.first[0];
    int64_t row1 = ay.first[oh - 1] + ay.count[oh - 1];
    tmp = malloc((size_t)((row1 - row0) * ow * c));
    if (!tmp) {
      fm__error("%s: out of memory", what);
      goto done;
    }
    fm__pil_horizontal(tmp, rows + row0 * w * c, row1 - row0, w, c, &ax, ow);
    rows = tmp;
  }
  if (oh != h) {
    for (int64_t o = 0; o < oh; ++o) ay.first[o] -= row0;
    if (fm__pil_vertical(out->data, rows, ow * c, &ay, oh) != 0) goto done;
  } else {
    memcpy(out->data, rows, (size_t)(oh * ow * c));
  }
  rc = 0;
done:
  free(tmp);
  fm__pil_axis_free(&ay);
  fm__pil_axis_free(&ax);
  fm_tensor_release(src);
  return rc;
}

int fm_image_resize_pil(fm_tensor *out, const fm_tensor *img, int32_t mode) {
  return fm__resize_u8(out, img, mode, false, "fm_image_resize_pil");
}

/* torch's uint8 antialiased kernel is PIL's algorithm (same windows, same
 * passes, same rounding and clipping) with 14 to 22 coefficient bits
 * instead of 22, so values near a half round differently (4 of the 12288
 * bytes of clip-tiny's 512 -> 64 bicubic). Pillow itself has not changed
 * this arithmetic from 9.4 to 12.3; fm_image_resize_pil stays for PIL's
 * users.
 * ref: pytorch aten/src/ATen/native/cpu/UpSampleKernel.cpp
 *      (_compute_index_ranges_int16_weights, upsample_bicubic2d_aa_kernel_impl),
 *      UpSampleKernelAVXAntialias.h (upsample_avx_bilinear_bicubic_uint8,
 *      ImagingResampleHorizontal/Vertical: int32 sums, >> precision,
 *      saturating packs). */
int fm_image_resize_torch(fm_tensor *out, const fm_tensor *img, int32_t mode) {
  return fm__resize_u8(out, img, mode, true, "fm_image_resize_torch");
}

/* ---- OpenCV ------------------------------------------------------------------ */

/* cv2.resize(img, (OW, OH), interpolation=cv2.INTER_LINEAR) on uint8 images,
 * as Debian's OpenCV 4.6 computes it, which is what mmsegmentation's Resize
 * (mmcv.imresize) feeds the CLIP methods. Checked against cv2 itself
 * (tests/tools/make_cv2_resize.py) rather than against a reading of its code,
 * because the arithmetic that runs is not the textbook one:
 * - weights are 11-bit (INTER_RESIZE_COEF_BITS): each of 1 - f and f is
 *   rounded to a multiple of 2^-11 on its own, from a source position
 *   computed in double and then rounded to float;
 * - the horizontal pass keeps exact sums p0 a0 + p1 a1 (scale 2^11);
 * - the vertical pass does not round the 2^22-scaled sum once. Its SIMD form
 *   (VResizeLinearVec_32s8u: v_mul_hi, then v_rshr_pack_u<2>) drops 4 bits
 *   of each row, keeps the high 16 bits of each product and rounds only the
 *   last 2 bits, and VResizeLinear's uchar tail does the same, so every pixel
 *   gets ((b0 (r0 >> 4)) >> 16) + ((b1 (r1 >> 4)) >> 16) + 2) >> 2. The plain
 *   (r0 b0 + r1 b1 + 2^21) >> 22 of the generic code differs by one grey
 *   level on a good share of pixels, and so does float bilinear + round;
 * - an exact 2x downscale on both axes is INTER_AREA's 2x2 mean instead
 *   (hal::resize swaps the mode), and an unchanged size is a copy.
 * ref: opencv modules/imgproc/src/resize.cpp (cv::resize, hal::resize,
 *      resizeGeneric_Invoker, HResizeLinear, VResizeLinear<uchar, ...>,
 *      VResizeLinearVec_32s8u, resizeAreaFast_, ResizeAreaFastVec). */

enum { FM__CV2_BITS = 11 };  /* INTER_RESIZE_COEF_BITS */

typedef struct fm__cv2_tap {
  int64_t i0, i1;  /* the two source pixels, clamped into the image */
  int32_t w0, w1;  /* their weights scaled by 2^11, rounded apart (the sum may miss 2048 by 1) */
} fm__cv2_tap;

/* Output index d along an axis of in -> out pixels. Along x (clamp_fraction)
 * a position left of the first pixel or at/after the last one also loses its
 * fraction, as hal::resize does with fx; along y only the rows are clamped
 * and the fraction is kept, as resizeGeneric_Invoker fetches rows. The
 * float steps must stay float (the Makefile's -std=c11 keeps GCC from
 * contracting them into FMAs). */
static fm__cv2_tap fm__cv2_tap_at(int64_t in, int64_t out, int64_t d, bool clamp_fraction) {
  double scale = 1.0 / ((double)out / (double)in);  /* cv2 keeps inv_scale and inverts it */
  float f = (float)(((double)d + 0.5) * scale - 0.5);
  int64_t s = (int64_t)floorf(f);
  f -= (float)s;
  if (clamp_fraction && s < 0) s = 0, f = 0.0f;
  if (clamp_fraction && s >= in - 1) s = in - 1, f = 0.0f;
  const float one = (float)(1 << FM__CV2_BITS);
  fm__cv2_tap t = {fm__clamp64(s, 0, in - 1), fm__clamp64(s + 1, 0, in - 1),
                   (int32_t)lrintf((1.0f - f) * one), (int32_t)lrintf(f * one)};  /* cvRound: half to even */
  return t;
}

static fm__cv2_tap *fm__cv2_axis(int64_t in, int64_t out, bool clamp_fraction) {
  fm__cv2_tap *t = malloc((size_t)out * sizeof *t);
  if (!t) return fm__error_null("fm_image_resize_cv2_linear: out of memory");
  for (int64_t d = 0; d < out; ++d) t[d] = fm__cv2_tap_at(in, out, d, clamp_fraction);
  return t;
}

// src: (W, C) one image row -> dst: (OW * C) sums scaled by 2^11
static void fm__cv2_hpass(int32_t *dst, const uint8_t *src, int64_t c, const fm__cv2_tap *tx, int64_t ow) {
  for (int64_t o = 0; o < ow; ++o) {
    const uint8_t *p0 = src + tx[o].i0 * c, *p1 = src + tx[o].i1 * c;
    for (int64_t ch = 0; ch < c; ++ch) dst[o * c + ch] = p0[ch] * tx[o].w0 + p1[ch] * tx[o].w1;
  }
}

/* r0, r1: (n) rows of the horizontal pass -> dst: (n) pixels. With
 * r <= 255 * 2049 and b0 + b1 <= 2049 the sum before the last shift is at
 * most 1022, so no pixel needs clamping (cv2's saturating pack never acts). */
static void fm__cv2_vpass(uint8_t *dst, const int32_t *r0, const int32_t *r1, int32_t b0, int32_t b1,
                          int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    dst[i] = (uint8_t)((((b0 * (r0[i] >> 4)) >> 16) + ((b1 * (r1[i] >> 4)) >> 16) + 2) >> 2);
}

/* A thread's two horizontally resampled rows and the source rows they hold
 * (-1: none), so that each source row is resampled once per run of output
 * rows that read it. */
typedef struct fm__cv2_rows {
  int32_t *row[2];
  int64_t src[2];
} fm__cv2_rows;

/* source row y resampled, computed unless held; the row held for `keep`
 * (the other row the caller needs) is not overwritten */
static const int32_t *fm__cv2_row(fm__cv2_rows *r, int64_t y, int64_t keep, const uint8_t *img, int64_t w,
                                  int64_t c, const fm__cv2_tap *tx, int64_t ow) {
  for (int k = 0; k < 2; ++k)
    if (r->src[k] == y) return r->row[k];
  int k = r->src[0] == keep ? 1 : 0;
  fm__cv2_hpass(r->row[k], img + y * w * c, c, tx, ow);
  r->src[k] = y;
  return r->row[k];
}

// img: (H, W, C) U8 -> dst: (OH, OW, C) U8 through the taps ty (OH), tx (OW)
static int fm__cv2_linear(uint8_t *dst, const uint8_t *img, int64_t w, int64_t c, const fm__cv2_tap *ty,
                          int64_t oh, const fm__cv2_tap *tx, int64_t ow) {
  int64_t n = ow * c;
  int failed = 0;
  #pragma omp parallel if (oh * n > 65536)
  {
    fm__cv2_rows r = {{NULL, NULL}, {-1, -1}};
    r.row[0] = malloc((size_t)(2 * n) * sizeof *r.row[0]);
    r.row[1] = r.row[0] ? r.row[0] + n : NULL;
    if (!r.row[0]) {
      #pragma omp atomic write
      failed = 1;
    }
    #pragma omp for schedule(static)
    for (int64_t o = 0; o < oh; ++o) {
      if (!r.row[0]) continue;
      const int32_t *r0 = fm__cv2_row(&r, ty[o].i0, ty[o].i1, img, w, c, tx, ow);
      const int32_t *r1 = fm__cv2_row(&r, ty[o].i1, ty[o].i0, img, w, c, tx, ow);
      fm__cv2_vpass(dst + o * n, r0, r1, ty[o].w0, ty[o].w1, n);
    }
    free(r.row[0]);
  }
  return failed ? fm__error("fm_image_resize_cv2_linear: out of memory") : 0;
}

/* src: (2 OH, 2 OW, C) -> dst: (OH, OW, C), each pixel the mean of a 2x2
 * block, (s + 2) >> 2 as ResizeAreaFastVec computes it for 1, 3 and 4
 * channels; for 2 channels cv2 falls back to cvRound(s * 0.25f), which
 * rounds halves to even. */
static void fm__cv2_area2(uint8_t *dst, const uint8_t *src, int64_t oh, int64_t ow, int64_t c) {
  int64_t n = ow * c, sn = 2 * n;
  #pragma omp parallel for if (oh * n > 65536) schedule(static)
  for (int64_t o = 0; o < oh; ++o) {
    const uint8_t *a = src + 2 * o * sn, *b = a + sn;
    for (int64_t x = 0; x < ow; ++x)
      for (int64_t ch = 0; ch < c; ++ch) {
        int64_t i = 2 * x * c + ch;
        int32_t s = a[i] + a[i + c] + b[i] + b[i + c];
        int32_t q = s >> 2, rem = s & 3;
        dst[o * n + x * c + ch] = (uint8_t)(c != 2 ? (s + 2) >> 2 : q + (rem > 2 || (rem == 2 && (q & 1))));
      }
  }
}

// img: (H, W, C) U8 -> out: (OH, OW, C) U8
int fm_image_resize_cv2_linear(fm_tensor *out, const fm_tensor *img) {
  const char *what = "fm_image_resize_cv2_linear";
  char a[128], b[128];
  if (fm__check_u8_resize(out, img, what)) return -1;
  if (img->dims[2] < 1 || img->dims[2] > 4)
    return fm__error("%s: img %s: C must be 1..4", what, fm__shape_str(img, a, sizeof a));
  int64_t h = img->dims[0], w = img->dims[1], c = img->dims[2], oh = out->dims[0], ow = out->dims[1];
  /* int32 sums and cv2's int sizes */
  if (h > INT32_MAX / 2 || w > INT32_MAX / 2 || oh > INT32_MAX / 2 || ow > INT32_MAX / 2)
    return fm__error("%s: img %s or out %s is too large", what, fm__shape_str(img, a, sizeof a),
                     fm__shape_str(out, b, sizeof b));
  if (!fm__check_contiguous(out, what) || !fm__check_writable(out, what)) return -1;

  fm_tensor *src = fm_tensor_contiguous(img);
  if (!src) return -1;
  int rc = 0;
  fm__cv2_tap *ty = NULL, *tx = NULL;
  if (oh == h && ow == w) {
    memmove(out->data, src->data, (size_t)(h * w * c));
  } else if (2 * oh == h && 2 * ow == w) {
    fm__cv2_area2(out->data, src->data, oh, ow, c);
  } else if (!(ty = fm__cv2_axis(h, oh, false)) || !(tx = fm__cv2_axis(w, ow, true))) {
    rc = -1;
  } else {
    rc = fm__cv2_linear(out->data, src->data, w, c, ty, oh, tx, ow);
  }
  free(ty);
  free(tx);
  fm_tensor_release(src);
  return rc;
}
