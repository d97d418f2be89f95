/* nn.c — normalisation layers and softmax.
 *
 * Statistics are accumulated in double: rows of 768-1280 floats (and group
 * norm's groups of C/G * H * W) lose digits in float sums, and the fixtures
 * compare against PyTorch at 1e-5. Every kernel reads all it needs of a row
 * or group before writing, so `out` may alias `x`. */
#include "kernels.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>

/* w, b: NULL or (c) F32 contiguous */
static bool fm__check_affine(const fm_tensor *t, int64_t c, const char *what,
                             const fm_tensor *x) {
  char ts[128], xs[128];
  if (!t) return true;
  if (!fm__check_input(t, what)) return false;
  if (t->ndim != 1 || t->dims[0] != c)
    return fm__error("%s: got %s, expected [%lld] for x %s", what,
                     fm__shape_str(t, ts, sizeof ts), (long long)c,
                     fm__shape_str(x, xs, sizeof xs)), false;
  return true;
}

static bool fm__check_norm(const fm_tensor *out, const fm_tensor *x, const fm_tensor *w,
                           const fm_tensor *b, int64_t c, const char *fn) {
  char what[64];
  snprintf(what, sizeof what, "%s: w", fn);
  if (!fm__check_affine(w, c, what, x)) return false;
  snprintf(what, sizeof what, "%s: b", fn);
  if (!fm__check_affine(b, c, what, x)) return false;
  snprintf(what, sizeof what, "%s: out", fn);
  return fm__check_output(out, what) && fm__check_shape(out, x->ndim, x->dims, what);
}

/* ---- layer norm over the last dim --------------------------------------- */

// x, y: (C); w, b: (C) or NULL. y may be x.
static void fm__layer_norm_row(float *y, const float *x, const float *w, const float *b,
                               int64_t c, float eps) {
  double sum = 0;
  #pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < c; ++i) sum += x[i];
  double mean = sum / (double)c, var = 0;
  #pragma omp simd reduction(+ : var)
  for (int64_t i = 0; i < c; ++i) var += ((double)x[i] - mean) * ((double)x[i] - mean);
  float fmean = (float)mean, rstd = (float)(1.0 / sqrt(var / (double)c + eps));
  for (int64_t i = 0; i < c; ++i) {
    float v = (x[i] - fmean) * rstd;
    if (w) v *= w[i];
    if (b) v += b[i];
    y[i] = v;
  }
}

// x: (..., C), w, b: (C) or NULL; out: like x
int fm_layer_norm(fm_tensor *out, const fm_tensor *x, const fm_tensor *w, const fm_tensor *b,
                  float eps) {
  if (!fm__check_input(x, "fm_layer_norm: x")) return -1;
  if (x->ndim < 1) return fm__error("fm_layer_norm: x must have at least 1 dim, got []");
  int64_t c = x->dims[x->ndim - 1];
  if (!fm__check_norm(out, x, w, b, c, "fm_layer_norm")) return -1;
  int64_t n = fm_tensor_numel(x), rows = c ? n / c : 0;
  const float *xv = fm__f32(x), *wv = w ? fm__f32(w) : NULL, *bv = b ? fm__f32(b) : NULL;
  float *y = fm__f32(out);
  #pragma omp parallel for if (n > FM__PAR_MIN)
  for (int64_t r = 0; r < rows; ++r) fm__layer_norm_row(y + r * c, xv + r * c, wv, bv, c, eps);
  return 0;
}

/* ---- group norm ---------------------------------------------------------- */

// x: (N, C, ...spatial) with S spatial elements, w, b: (C) or NULL
int fm_group_norm(fm_tensor *out, const fm_tensor *x, int64_t groups, const fm_tensor *w,
                  const fm_tensor *b, float eps) {
  char xs[128];
  if (!fm__check_input(x, "fm_group_norm: x")) return -1;
  if (x->ndim < 2)
    return fm__error("fm_group_norm: x %s must be (N, C, ...)", fm__shape_str(x, xs, sizeof xs));
  int64_t c = x->dims[1];
  if (groups <= 0 || c % groups != 0)
    return fm__error("fm_group_norm: %lld groups do not divide the %lld channels of x %s",
                     (long long)groups, (long long)c, fm__shape_str(x, xs, sizeof xs));
  if (!fm__check_norm(out, x, w, b, c, "fm_group_norm")) return -1;
  int64_t n = fm_tensor_numel(x), cg = c / groups;
  int64_t s = c ? n / (x->dims[0] * c) : 0, len = cg * s;
  const float *xv = fm__f32(x), *wv = w ? fm__f32(w) : NULL, *bv = b ? fm__f32(b) : NULL;
  float *y = fm__f32(out);
  if (x->dims[0] == 0 || len == 0) return 0;
  #pragma omp parallel for if (n > FM__PAR_MIN)
  for (int64_t g = 0; g < x->dims[0] * groups; ++g) {
    // a group of cg channels is one contiguous block of len floats
    const float *xg = xv + g * len;
    double sum = 0, var = 0;
    #pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < len; ++i) sum += xg[i];
    double mean = sum / (double)len;
    #pragma omp simd reduction(+ : var)
    for (int64_t i = 0; i < len; ++i) var += ((double)xg[i] - mean) * ((double)xg[i] - mean);
    float fmean = (float)mean, rstd = (float)(1.0 / sqrt(var / (double)len + eps));
    for (int64_t j = 0; j < cg; ++j) {
      int64_t ch = (g % groups) * cg + j;
      float sc = rstd * (wv ? wv[ch] : 1.f), sh = bv ? bv[ch] : 0.f;
      const float *xc = xg + j * s;
      float *yc = y + g * len + j * s;
      for (int64_t i = 0; i < s; ++i) yc[i] = (xc[i] - fmean) * sc + sh;
    }
  }
  return 0;
}

/* ---- layer norm over channels (channels-first) --------------------------- */

/* Pixels per block: the block's statistics (two doubles a pixel) stay in L1
 * while the C channel planes stream past. */
enum { FM__LNC_BLOCK = 256 };

// x, y: (C, S) for one image, pixels [p0, p0 + np)
static void fm__layer_norm_channels_block(float *y, const float *x, const float *w,
                                          const float *b, int64_t c, int64_t s, int64_t p0,
                                          int64_t np, float eps) {
  double mean[FM__LNC_BLOCK], var[FM__LNC_BLOCK];
  for (int64_t p = 0; p < np; ++p) mean[p] = 0, var[p] = 0;
  for (int64_t ch = 0; ch < c; ++ch)
    for (int64_t p = 0; p < np; ++p) mean[p] += x[ch * s + p0 + p];
  for (int64_t p = 0; p < np; ++p) mean[p] /= (double)c;
  for (int64_t ch = 0; ch < c; ++ch)
    for (int64_t p = 0; p < np; ++p) {
      double d = x[ch * s + p0 + p] - mean[p];
      var[p] += d * d;
    }
  float fmean[FM__LNC_BLOCK], rstd[FM__LNC_BLOCK];
  for (int64_t p = 0; p < np; ++p) {
    fmean[p] = (float)mean[p];
    rstd[p] = (float)(1.0 / sqrt(var[p] / (double)c + eps));
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    float sc = w ? w[ch] : 1.f, sh = b ? b[ch] : 0.f;
    const float *xc = x + ch * s + p0;
    float *yc = y + ch * s + p0;
    for (int64_t p = 0; p < np; ++p) yc[p] = (xc[p] - fmean[p]) * rstd[p] * sc + sh;
  }
}

// x: (N, C, H, W) normalised over C at each pixel; w, b: (C) or NULL
int fm_layer_norm_channels(fm_tensor *out, const fm_tensor *x, const fm_tensor *w,
                           const fm_tensor *b, float eps) {
  if (!fm__check_input(x, "fm_layer_norm_channels: x") ||
      !fm__check_ndim(x, 4, "fm_layer_norm_channels: x"))
    return -1;
  int64_t c = x->dims[1], s = x->dims[2] * x->dims[3];
  if (!fm__check_norm(out, x, w, b, c, "fm_layer_norm_channels")) return -1;
  if (c == 0) return 0;
  int64_t nblocks = (s + FM__LNC_BLOCK - 1) / FM__LNC_BLOCK, n = fm_tensor_numel(x);
  const float *xv = fm__f32(x), *wv = w ? fm__f32(w) : NULL, *bv = b ? fm__f32(b) : NULL;
  float *y = fm__f32(out);
  #pragma omp parallel for if (n > FM__PAR_MIN)
  for (int64_t i = 0; i < x->dims[0] * nblocks; ++i) {
    int64_t img = i / nblocks, p0 = (i % nblocks) * FM__LNC_BLOCK;
    int64_t np = s - p0 < FM__LNC_BLOCK ? s - p0 : FM__LNC_BLOCK;
    fm__layer_norm_channels_block(y + img * c * s, xv + img * c * s, wv, bv, c, s, p0, np, eps);
  }
  return 0;
}

/* ---- softmax over the last dim ------------------------------------------ */

enum { FM__SOFTMAX_CHUNK = 256 };

__attribute__((target_clones("avx512f", "avx2", "default")))
void fm__softmax_row(float *row, int64_t n) {
  float mx = -INFINITY;
  #pragma omp simd reduction(max : mx)
  for (int64_t i = 0; i < n; ++i) mx = row[i] > mx ? row[i] : mx;
  if (mx == -INFINITY) {  // every entry masked: zeros (see kernels.h)
    memset(row, 0, (size_t)n * sizeof *row);
    return;
  }
  // float partial sums over short chunks, added up in double: a float sum
  // over a whole 4096-wide row drifts by ~1e-5 relative
  double sum = 0;
  for (int64_t i0 = 0; i0 < n; i0 += FM__SOFTMAX_CHUNK) {
    int64_t i1 = n - i0 < FM__SOFTMAX_CHUNK ? n : i0 + FM__SOFTMAX_CHUNK;
    float part = 0.f;
    #pragma omp simd reduction(+ : part)
    for (int64_t i = i0; i < i1; ++i) {
      row[i] = fm__expf(row[i] - mx);
      part += row[i];
    }
    sum += part;
  }
  float inv = (float)(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) row[i] *= inv;
}

// x: (..., N); out: like x, softmax along N. A row of all -inf gives zeros.
int fm_softmax(fm_tensor *out, const fm_tensor *x) {
  if (!fm__check_input(x, "fm_softmax: x") || !fm__check_output(out, "fm_softmax: out") ||
      !fm__check_shape(out, x->ndim, x->dims, "fm_softmax: out"))
    return -1;
  if (x->ndim < 1) return fm__error("fm_softmax: x must have at least 1 dim, got []");
  int64_t c = x->dims[x->ndim - 1], n = fm_tensor_numel(x), rows = c ? n / c : 0;
  const float *xv = fm__f32(x);
  float *y = fm__f32(out);
  #pragma omp parallel for if (n > FM__PAR_MIN)
  for (int64_t r = 0; r < rows; ++r) {
    if (y != xv) memcpy(y + r * c, xv + r * c, (size_t)c * sizeof *y);
    fm__softmax_row(y + r * c, c);
  }
  return 0;
}
