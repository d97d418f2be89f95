/* conv.c — 2-D convolution (im2col + sgemm) and the kernel == stride
 * transposed convolution (one sgemm and a scatter). */
#include "kernels.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>

/* The im2col buffer is built for a band of output rows at a time, so that
 * a band's columns are still in cache when sgemm packs them (an SD VAE
 * conv at 512x512 with 128 channels would otherwise write and read back a
 * 1.2 GB column matrix). A band holds about FM__COL_BUDGET floats (4 MB),
 * but at least FM__BAND_MIN_COLS output pixels: every band's sgemm packs
 * the whole weight matrix again, which narrow bands do not repay. Measured
 * on 2 cores, a 3x3 conv 64x64x320 against one same-size sgemm: one-row
 * bands (64 pixels, the size of L2) 0.33, bands of 2048 pixels 0.95, the
 * whole image in one band (a 47 MB column matrix) 0.72. */
enum { FM__COL_BUDGET = 1 << 20, FM__BAND_MIN_COLS = 2048 };

typedef struct fm__conv_geom {
  int64_t c, h, w;       // input channels and size
  int64_t oc, kh, kw;    // filters
  int64_t oh, ow;        // output size
  int64_t sh, sw, ph, pw;
} fm__conv_geom;

static bool fm__conv_check(const fm_tensor *out, const fm_tensor *x, const fm_tensor *w,
                           const fm_tensor *b, fm__conv_geom *g) {
  char xs[128], ws[128], bs[128];
  if (!fm__check_input(x, "fm_conv2d: x") || !fm__check_ndim(x, 4, "fm_conv2d: x") ||
      !fm__check_input(w, "fm_conv2d: w") || !fm__check_ndim(w, 4, "fm_conv2d: w") ||
      !fm__check_output(out, "fm_conv2d: out"))
    return false;
  g->c = x->dims[1], g->h = x->dims[2], g->w = x->dims[3];  // stride, pad already set
  g->oc = w->dims[0], g->kh = w->dims[2], g->kw = w->dims[3];
  if (w->dims[1] != g->c)
    return fm__error("fm_conv2d: w %s expects %lld input channels, x %s has %lld",
                     fm__shape_str(w, ws, sizeof ws), (long long)w->dims[1],
                     fm__shape_str(x, xs, sizeof xs), (long long)g->c), false;
  if (b && !fm__check_input(b, "fm_conv2d: b")) return false;
  if (b && (b->ndim != 1 || b->dims[0] != g->oc))
    return fm__error("fm_conv2d: b %s does not match w %s (expected [%lld])",
                     fm__shape_str(b, bs, sizeof bs), fm__shape_str(w, ws, sizeof ws),
                     (long long)g->oc), false;
  if (g->sh < 1 || g->sw < 1 || g->ph < 0 || g->pw < 0)
    return fm__error("fm_conv2d: stride (%lld, %lld) must be >= 1 and padding (%lld, %lld) >= 0",
                     (long long)g->sh, (long long)g->sw, (long long)g->ph, (long long)g->pw),
           false;
  int64_t eh = g->h + 2 * g->ph - g->kh, ew = g->w + 2 * g->pw - g->kw;
  if (eh < 0 || ew < 0 || g->kh < 1 || g->kw < 1)
    return fm__error("fm_conv2d: kernel %lldx%lld does not fit x %s padded by (%lld, %lld)",
                     (long long)g->kh, (long long)g->kw, fm__shape_str(x, xs, sizeof xs),
                     (long long)g->ph, (long long)g->pw), false;
  g->oh = eh / g->sh + 1, g->ow = ew / g->sw + 1;
  int64_t want[4] = {x->dims[0], g->oc, g->oh, g->ow};
  if (!fm__check_shape(out, 4, want, "fm_conv2d: out")) return false;
  int64_t ckk = g->c * g->kh * g->kw;
  if (!fm__blas_fits(ckk) || !fm__blas_fits(g->oc) || !fm__blas_fits(g->oh * g->ow) ||
      !fm__blas_fits(g->h * g->w))
    return fm__error("fm_conv2d: x %s, w %s: sizes exceed BLAS's int range",
                     fm__shape_str(x, xs, sizeof xs), fm__shape_str(w, ws, sizeof ws)), false;
  return true;
}

/* Output columns [j0, j1) of tap kj read input columns inside [0, W);
 * the columns outside read padding. iw = j*SW - PW + kj. */
static void fm__tap_cols(const fm__conv_geom *g, int64_t kj, int64_t *j0, int64_t *j1) {
  int64_t lo = g->pw - kj, hi = g->w + g->pw - kj;  // iw in [0, W) <=> j*SW in [lo, hi)
  int64_t a = lo <= 0 ? 0 : (lo + g->sw - 1) / g->sw, b = hi <= 0 ? 0 : (hi + g->sw - 1) / g->sw;
  *j1 = b < g->ow ? b : g->ow;
  *j0 = a < *j1 ? a : *j1;
}

/* d: one output row's OW columns of tap (ki, kj) read from input row xr;
 * columns outside [j0, j1) are padding. Stride 1 is one memcpy. */
static void fm__im2col_row(float *d, const float *xr, const fm__conv_geom *g, int64_t kj,
                           int64_t j0, int64_t j1) {
  memset(d, 0, (size_t)j0 * sizeof *d);
  const float *s = xr + j0 * g->sw - g->pw + kj;
  if (g->sw == 1) memcpy(d + j0, s, (size_t)(j1 - j0) * sizeof *d);
  else if (g->sw == 2)  // a constant stride, which the compiler vectorises
    for (int64_t j = j0; j < j1; ++j) d[j] = s[(j - j0) * 2];
  else
    for (int64_t j = j0; j < j1; ++j) d[j] = s[(j - j0) * g->sw];
  memset(d + j1, 0, (size_t)(g->ow - j1) * sizeof *d);
}

/* col: (C*KH*KW, nrows*OW), the receptive fields of output rows
 * [oh0, oh0 + nrows) of one image x: (C, H, W). Padding reads as 0.
 * Row r of col is tap (ki, kj) of channel ch: a strip of input rows, each
 * copied whole between its padding columns. */
static void fm__im2col(float *col, const float *x, const fm__conv_geom *g, int64_t oh0,
                       int64_t nrows) {
  int64_t ckk = g->c * g->kh * g->kw, ncol = nrows * g->ow;
  #pragma omp parallel for if (ckk * ncol > FM__PAR_MIN)
  for (int64_t r = 0; r < ckk; ++r) {
    int64_t ch = r / (g->kh * g->kw), ki = r / g->kw % g->kh, kj = r % g->kw, j0, j1;
    fm__tap_cols(g, kj, &j0, &j1);
    const float *xc = x + ch * g->h * g->w;
    float *dst = col + r * ncol;
    for (int64_t i = 0; i < nrows; ++i) {
      int64_t ih = (oh0 + i) * g->sh - g->ph + ki;
      if (ih < 0 || ih >= g->h) memset(dst + i * g->ow, 0, (size_t)g->ow * sizeof *dst);
      else fm__im2col_row(dst + i * g->ow, xc + ih * g->w, g, kj, j0, j1);
    }
  }
}

// y: (OC, n) with rows ldy apart; every row starts as its bias
static void fm__fill_bias(float *y, const float *b, int64_t oc, int64_t n, int64_t ldy) {
  #pragma omp parallel for if (oc * n > FM__PAR_MIN)
  for (int64_t o = 0; o < oc; ++o)
    for (int64_t i = 0; i < n; ++i) y[o * ldy + i] = b[o];
}

/* Output rows per band: see FM__COL_BUDGET. */
static int64_t fm__band_rows(const fm__conv_geom *g, int64_t ckk) {
  int64_t cols = FM__COL_BUDGET / ckk;
  cols = cols < FM__BAND_MIN_COLS ? FM__BAND_MIN_COLS : cols;
  int64_t rows = cols / g->ow;
  return rows < 1 ? 1 : (rows > g->oh ? g->oh : rows);
}

/* Threads: im2col is our OpenMP loop and each band's sgemm runs on
 * OpenBLAS's threads, which in its OpenMP build are the same pool, so the
 * two take turns on the cores instead of spinning against each other. The
 * bands go one after another with both threads in each sgemm: a band per
 * thread would have every thread pack the weights for itself. */
// x: (N, C, H, W), w: (OC, C, KH, KW), b: (OC) or NULL; out: (N, OC, OH, OW)
int fm_conv2d(fm_tensor *out, const fm_tensor *x, const fm_tensor *w, const fm_tensor *b,
              int32_t stride_h, int32_t stride_w, int32_t pad_h, int32_t pad_w) {
  fm__conv_geom g = {.sh = stride_h, .sw = stride_w, .ph = pad_h, .pw = pad_w};
  if (!fm__conv_check(out, x, w, b, &g)) return -1;
  int64_t n = x->dims[0], ckk = g.c * g.kh * g.kw, os = g.oh * g.ow, is = g.c * g.h * g.w;
  if (n == 0 || g.oc == 0 || os == 0) return 0;
  if (ckk == 0) {  // no inputs: the bias alone
    for (int64_t i = 0; i < n; ++i)
      if (b) fm__fill_bias(fm__f32(out) + i * g.oc * os, fm__f32(b), g.oc, os, os);
      else memset(fm__f32(out) + i * g.oc * os, 0, (size_t)(g.oc * os) * sizeof(float));
    return 0;
  }
  // a 1x1 stride-1 convolution is one sgemm on the input as (C, H*W)
  bool pointwise = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  int64_t band = pointwise ? g.oh : fm__band_rows(&g, ckk);
  float *col = NULL;
  if (!pointwise && !(col = malloc((size_t)(ckk * band * g.ow) * sizeof *col)))
    return fm__error("fm_conv2d: out of memory for a %lld x %lld column buffer",
                     (long long)ckk, (long long)(band * g.ow));
  for (int64_t i = 0; i < n; ++i) {
    const float *xi = fm__f32(x) + i * is;
    float *yi = fm__f32(out) + i * g.oc * os;
    for (int64_t oh0 = 0; oh0 < g.oh; oh0 += band) {
      int64_t rows = g.oh - oh0 < band ? g.oh - oh0 : band, ncol = rows * g.ow;
      float *y = yi + oh0 * g.ow;  // (OC, ncol), rows OH*OW apart
      const float *src = xi;
      if (!pointwise) fm__im2col(col, xi, &g, oh0, rows), src = col;
      if (b) fm__fill_bias(y, fm__f32(b), g.oc, ncol, os);  // while the band is in cache
      // y (OC, ncol) (+)= w (OC, CKK) . src (CKK, ncol)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g.oc, (int)ncol, (int)ckk,
                  1.f, fm__f32(w), (int)ckk, src, (int)ncol, b ? 1.f : 0.f, y, (int)os);
    }
  }
  free(col);
  return 0;
}

/* ---- transposed convolution, kernel == stride ---------------------------- */

static bool fm__conv_t_check(const fm_tensor *out, const fm_tensor *x, const fm_tensor *w,
                             const fm_tensor *b, int32_t stride) {
  char xs[128], ws[128], bs[128];
  if (!fm__check_input(x, "fm_conv_transpose2d: x") ||
      !fm__check_ndim(x, 4, "fm_conv_transpose2d: x") ||
      !fm__check_input(w, "fm_conv_transpose2d: w") ||
      !fm__check_ndim(w, 4, "fm_conv_transpose2d: w") ||
      !fm__check_output(out, "fm_conv_transpose2d: out"))
    return false;
  if (stride < 1 || w->dims[2] != stride || w->dims[3] != stride)
    return fm__error("fm_conv_transpose2d: w %s must be (C, OC, K, K) with K == stride (%d)",
                     fm__shape_str(w, ws, sizeof ws), (int)stride), false;
  if (w->dims[0] != x->dims[1])
    return fm__error("fm_conv_transpose2d: w %s expects %lld input channels, x %s has %lld",
                     fm__shape_str(w, ws, sizeof ws), (long long)w->dims[0],
                     fm__shape_str(x, xs, sizeof xs), (long long)x->dims[1]), false;
  if (b && !fm__check_input(b, "fm_conv_transpose2d: b")) return false;
  if (b && (b->ndim != 1 || b->dims[0] != w->dims[1]))
    return fm__error("fm_conv_transpose2d: b %s does not match w %s (expected [%lld])",
                     fm__shape_str(b, bs, sizeof bs), fm__shape_str(w, ws, sizeof ws),
                     (long long)w->dims[1]), false;
  int64_t want[4] = {x->dims[0], w->dims[1], x->dims[2] * stride, x->dims[3] * stride};
  if (!fm__check_shape(out, 4, want, "fm_conv_transpose2d: out")) return false;
  if (!fm__blas_fits(w->dims[1] * stride * stride) || !fm__blas_fits(x->dims[1]) ||
      !fm__blas_fits(x->dims[2] * x->dims[3]))
    return fm__error("fm_conv_transpose2d: x %s, w %s: sizes exceed BLAS's int range",
                     fm__shape_str(x, xs, sizeof xs), fm__shape_str(w, ws, sizeof ws)), false;
  return true;
}

/* y: (OC, K, K, H, W) -> out: (OC, H*K, W*K) with bias: each input pixel
 * paints its own KxK tile, since the tiles of kernel == stride never overlap. */
static void fm__tiles_scatter(float *out, const float *y, const float *b, int64_t oc,
                              int64_t k, int64_t h, int64_t w) {
  #pragma omp parallel for if (oc * k * k * h * w > FM__PAR_MIN)
  for (int64_t o = 0; o < oc; ++o) {
    float bias = b ? b[o] : 0.f;
    for (int64_t ih = 0; ih < h; ++ih)
      for (int64_t ki = 0; ki < k; ++ki) {
        float *orow = out + (o * h * k + ih * k + ki) * w * k;
        for (int64_t kj = 0; kj < k; ++kj) {
          const float *yr = y + (((o * k + ki) * k + kj) * h + ih) * w;
          for (int64_t iw = 0; iw < w; ++iw) orow[iw * k + kj] = yr[iw] + bias;
        }
      }
  }
}

// x: (N, C, H, W), w: (C, OC, K, K), b: (OC) or NULL; out: (N, OC, H*K, W*K)
int fm_conv_transpose2d(fm_tensor *out, const fm_tensor *x, const fm_tensor *w,
                        const fm_tensor *b, int32_t stride) {
  if (!fm__conv_t_check(out, x, w, b, stride)) return -1;
  int64_t n = x->dims[0], c = x->dims[1], hw = x->dims[2] * x->dims[3];
  int64_t k = stride, okk = w->dims[1] * k * k;
  if (n == 0 || okk == 0 || hw == 0) return 0;
  float *y = malloc((size_t)(okk * hw) * sizeof *y);
  if (!y)
    return fm__error("fm_conv_transpose2d: out of memory for %lld x %lld floats",
                     (long long)okk, (long long)hw);
  for (int64_t i = 0; i < n; ++i) {
    // y (OC*K*K, H*W) = wᵀ with w as (C, OC*K*K), times x[i] as (C, H*W)
    if (c == 0) memset(y, 0, (size_t)(okk * hw) * sizeof *y);
    else
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)okk, (int)hw, (int)c, 1.f,
                  fm__f32(w), (int)okk, fm__f32(x) + i * c * hw, (int)hw, 0.f, y, (int)hw);
    fm__tiles_scatter(fm__f32(out) + i * okk * hw, y, b ? fm__f32(b) : NULL, w->dims[1], k,
                      x->dims[2], x->dims[3]);
  }
  free(y);
  return 0;
}
