/* distance.c — distance transform and binary morphology of masks, for
 * deriving prompts from masks (a point deep inside a region) and for
 * growing or shrinking them. */
#include "kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static bool fm__check_mask_pair(const fm_tensor *out, int32_t out_type, const fm_tensor *mask,
                                const char *fn) {
  char what[64];
  snprintf(what, sizeof what, "%s: mask", fn);
  if (!mask) return fm__error("%s is NULL", what), false;
  if (mask->type != FM_U8)
    return fm__error("%s: expected uint8, got %s", what, fm_dtype_name(mask->type)), false;
  if (!fm__check_ndim(mask, 2, what) || !fm__check_contiguous(mask, what)) return false;
  snprintf(what, sizeof what, "%s: out", fn);
  if (!out) return fm__error("%s is NULL", what), false;
  if (out->type != out_type)
    return fm__error("%s: expected %s, got %s", what, fm_dtype_name(out_type),
                     fm_dtype_name(out->type)), false;
  return fm__check_shape(out, 2, mask->dims, what) && fm__check_contiguous(out, what) &&
         fm__check_writable(out, what);
}

/* ---- exact Euclidean distance transform ------------------------------------ */

/* One dimension of Felzenszwalb & Huttenlocher, "Distance Transforms of
 * Sampled Functions" (2012): d[q] = min_p (q - p)^2 + f[p] over the sites p
 * where f is finite, by the lower envelope of their parabolas. Sites at
 * +inf are left out rather than given a large finite value, so the result
 * is exact and stays +inf where no site exists. v, z: scratch of n and
 * n + 1. */
static void fm__edt_1d(double *d, const double *f, int64_t n, int64_t *v, double *z) {
  int64_t k = -1;
  for (int64_t q = 0; q < n; ++q) {
    if (isinf(f[q])) continue;
    double s = -INFINITY;
    while (k >= 0) {
      int64_t p = v[k];
      s = ((f[q] + (double)q * q) - (f[p] + (double)p * p)) / (2.0 * (double)(q - p));
      if (s > z[k]) break;
      --k;
    }
    if (k < 0) s = -INFINITY;
    ++k;
    v[k] = q;
    z[k] = s;
    z[k + 1] = INFINITY;
  }
  if (k < 0) {
    for (int64_t q = 0; q < n; ++q) d[q] = INFINITY;
    return;
  }
  int64_t j = 0;
  for (int64_t q = 0; q < n; ++q) {
    while (z[j + 1] < (double)q) ++j;
    double dq = (double)(q - v[j]);
    d[q] = dq * dq + f[v[j]];
  }
}

/* mask: (H, W) U8 -> out: (H, W) F32. Columns, then rows, of squared
 * distances (the transform is separable), then the square root. */
int fm_distance_transform(fm_tensor *out, const fm_tensor *mask) {
  if (!fm__check_mask_pair(out, FM_F32, mask, "distance_transform")) return -1;
  int64_t h = mask->dims[0], w = mask->dims[1];
  int64_t n = h > w ? h : w;
  double *sq = malloc(sizeof(double) * (size_t)(h * w > 0 ? h * w : 1));
  if (!sq) return fm__error("distance_transform: out of memory");
  const uint8_t *m = mask->data;
  float *o = fm__f32(out);
  int failed = 0;
#pragma omp parallel if (h * w > FM__PAR_MIN)
  {
    double *f = malloc(sizeof(double) * (size_t)(n + 1));
    double *d = malloc(sizeof(double) * (size_t)(n + 1));
    double *z = malloc(sizeof(double) * (size_t)(n + 2));
    int64_t *v = malloc(sizeof(int64_t) * (size_t)(n + 1));
    if (!f || !d || !z || !v) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp barrier
    if (!failed) {
#pragma omp for
      for (int64_t x = 0; x < w; ++x) {
        for (int64_t y = 0; y < h; ++y) f[y] = m[y * w + x] ? INFINITY : 0.0;
        fm__edt_1d(d, f, h, v, z);
        for (int64_t y = 0; y < h; ++y) sq[y * w + x] = d[y];
      }
#pragma omp for
      for (int64_t y = 0; y < h; ++y) {
        fm__edt_1d(d, sq + y * w, w, v, z);
        for (int64_t x = 0; x < w; ++x) o[y * w + x] = (float)sqrt(d[x]);
      }
    }
    free(f), free(d), free(z), free(v);
  }
  free(sq);
  return failed ? fm__error("distance_transform: out of memory") : 0;
}

/* ---- binary morphology ------------------------------------------------------ */

/* Along rows (dx = 1) or columns: out = 1 where the window of radius r
 * around the pixel, clipped to the image, holds any set pixel (dilate) or
 * only set pixels (erode). Running counts make it O(H W) for any r. */
static void fm__window(uint8_t *out, const uint8_t *in, int64_t h, int64_t w, int64_t r,
                       bool erode, bool along_rows) {
  int64_t lines = along_rows ? h : w, len = along_rows ? w : h;
  int64_t step = along_rows ? 1 : w, line_step = along_rows ? w : 1;
#pragma omp parallel for if (h * w > FM__PAR_MIN)
  for (int64_t l = 0; l < lines; ++l) {
    const uint8_t *a = in + l * line_step;
    uint8_t *o = out + l * line_step;
    int64_t count = 0;                   /* set pixels in [i - r, i + r] ∩ line */
    for (int64_t k = 0; k < r && k < len; ++k) count += a[k * step] != 0;
    for (int64_t i = 0; i < len; ++i) {
      if (i + r < len) count += a[(i + r) * step] != 0;
      if (i - r - 1 >= 0) count -= a[(i - r - 1) * step] != 0;
      int64_t lo = i - r < 0 ? 0 : i - r, hi = i + r >= len ? len - 1 : i + r;
      o[i * step] = erode ? count == hi - lo + 1 : count > 0;
    }
  }
}

int fm_morphology(fm_tensor *out, const fm_tensor *mask, int32_t op, int32_t radius,
                  int32_t shape) {
  if (!fm__check_mask_pair(out, FM_U8, mask, "morphology")) return -1;
  if (op != FM_DILATE && op != FM_ERODE)
    return fm__error("morphology: op must be FM_DILATE or FM_ERODE, got %d", (int)op);
  if (shape != FM_KERNEL_SQUARE && shape != FM_KERNEL_CROSS)
    return fm__error("morphology: shape must be FM_KERNEL_SQUARE or FM_KERNEL_CROSS, got %d", (int)shape);
  if (radius < 0) return fm__error("morphology: radius must be >= 0, got %d", (int)radius);
  if (out->data == mask->data) return fm__error("morphology: out must not alias mask");
  int64_t h = mask->dims[0], w = mask->dims[1];
  bool erode = op == FM_ERODE;
  uint8_t *tmp = malloc((size_t)(h * w > 0 ? h * w : 1));
  if (!tmp) return fm__error("morphology: out of memory");
  uint8_t *o = out->data;
  const uint8_t *m = mask->data;
  fm__window(tmp, m, h, w, radius, erode, true);
  if (shape == FM_KERNEL_SQUARE) {
    fm__window(o, tmp, h, w, radius, erode, false);    /* separable */
  } else {
    fm__window(o, m, h, w, radius, erode, false);      /* union / intersection of the arms */
    for (int64_t i = 0; i < h * w; ++i) o[i] = erode ? (o[i] & tmp[i]) : (o[i] | tmp[i]);
  }
  free(tmp);
  return 0;
}
