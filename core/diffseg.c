/* diffseg.c — the two pieces of DiffSeg (google/diffseg,
 * diffseg/segmentor.py) whose exact arithmetic decides its segments:
 *
 * - fm_resize_bilinear_tf: tf.image.resize(method=bilinear) as TF 2's
 *   ResizeBilinear kernel computes it (half_pixel_centers, no antialias),
 *   what keras' UpSampling2D(interpolation='bilinear') calls: source
 *   (i + 0.5) * in / out - 0.5, lower = max(floor, 0), upper =
 *   min(ceil, in - 1), lerp = src - floor, and
 *     top = tl + (tr - tl) * xl; bottom = bl + (br - bl) * xl;
 *     out = top + (bottom - top) * yl        (float, no fused multiply-add)
 *   ref: tensorflow/core/kernels/image/resize_bilinear_op.cc (compute_lerp).
 *
 * - fm_diffseg_merge_f16: mask_merge's first iteration. Anchor maps and all
 *   maps are cast to float16 and compared by
 *     KL(x, Y) = sum(x * (log x - log Y)) / 2 - sum(Y * (log x - log Y)) / 2
 *   every op in float16 as TF's Eigen::half does it (the float result of
 *   each op rounded to half), so entries below 2^-25 become 0, log 0 = -inf
 *   and a KL touching one is NaN: such pairs never merge, and an anchor
 *   with a zero entry meets nothing (not even itself) and is dropped (a NaN
 *   row, as the official's 0 / 0). Each sum is exact (in double: the half
 *   terms fit 53 bits) and rounded once to half; TF's GPU kernel adds in
 *   half in cub's block order, which is not reproducible off that build.
 *   A pair merges when KL < half(tau). Each anchor's merged map is the
 *   mean, in double, of the float32 maps it met. */
#include "fmseg.h"
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FM__X86 1
#endif

/* ---- TF bilinear -------------------------------------------------------- */

typedef struct { int64_t lower, upper; float lerp; } fm__tf_interp;

static void fm__tf_weights(fm__tf_interp *w, int64_t out, int64_t in) {
  float scale = (float)in / (float)out;
  for (int64_t i = 0; i < out; ++i) {
    float src = ((float)i + 0.5f) * scale - 0.5f;
    float fl = floorf(src);
    int64_t lo = (int64_t)fl, up = (int64_t)ceilf(src);
    w[i].lower = lo < 0 ? 0 : lo;
    w[i].upper = up > in - 1 ? in - 1 : up;
    w[i].lerp = src - fl;
  }
}

int fm_resize_bilinear_tf(fm_tensor *out, const fm_tensor *x) {
  char s1[128], s2[128];
  if (!fm__check_input(x, "fm_resize_bilinear_tf: x") || !fm__check_output(out, "fm_resize_bilinear_tf: out"))
    return -1;
  if (x->ndim != 4 || out->ndim != 4 || x->dims[0] != out->dims[0] || x->dims[1] != out->dims[1])
    return fm__error("fm_resize_bilinear_tf: x %s and out %s must be (N, C, H, W) with the same N and C",
                     fm__shape_str(x, s1, sizeof s1), fm__shape_str(out, s2, sizeof s2));
  int64_t planes = x->dims[0] * x->dims[1], ih = x->dims[2], iw = x->dims[3];
  int64_t oh = out->dims[2], ow = out->dims[3];
  if (ih < 1 || iw < 1 || oh < 1 || ow < 1) return fm__error("fm_resize_bilinear_tf: empty image");
  fm__tf_interp *ys = malloc((size_t)oh * sizeof *ys), *xs = malloc((size_t)ow * sizeof *xs);
  if (!ys || !xs) { free(ys); free(xs); return fm__error("fm_resize_bilinear_tf: out of memory"); }
  fm__tf_weights(ys, oh, ih);
  fm__tf_weights(xs, ow, iw);
  const float *src = fm__f32(x);
  float *dst = fm__f32(out);
  #pragma omp parallel for if (planes * oh * ow > 65536) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const float *in = src + p * ih * iw;
    float *o = dst + p * oh * ow;
    for (int64_t y = 0; y < oh; ++y) {
      const float *top_row = in + ys[y].lower * iw, *bot_row = in + ys[y].upper * iw;
      float yl = ys[y].lerp;
      for (int64_t xo = 0; xo < ow; ++xo) {
        float tl = top_row[xs[xo].lower], tr = top_row[xs[xo].upper];
        float bl = bot_row[xs[xo].lower], br = bot_row[xs[xo].upper];
        float xl = xs[xo].lerp;
        volatile float top = tl + (tr - tl) * xl;       /* volatile: no contraction into fma */
        volatile float bottom = bl + (br - bl) * xl;
        o[y * ow + xo] = top + (bottom - top) * yl;
      }
    }
  }
  free(ys);
  free(xs);
  return 0;
}

/* ---- float16 KL merge -------------------------------------------------------- */

static inline float fm__h(float v) { return (float)(_Float16)v; }    /* round to half, back */

#ifdef FM__X86
__attribute__((target("avx,f16c")))
static inline __m256 fm__h8(__m256 v) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* s1 = sum ha * half(la - lb) * ..., exact in double over d */
__attribute__((target("avx,f16c")))
static void fm__kl_sums_f16c(const float *ha, const float *la, const float *hb, const float *lb, int64_t d,
                             double *s1, double *s2) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  __m256d b0 = _mm256_setzero_pd(), b1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    __m256 q = fm__h8(_mm256_sub_ps(_mm256_loadu_ps(la + i), _mm256_loadu_ps(lb + i)));
    __m256 p = fm__h8(_mm256_mul_ps(_mm256_loadu_ps(ha + i), q));
    __m256 r = fm__h8(_mm256_mul_ps(_mm256_loadu_ps(hb + i), q));
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
    b0 = _mm256_add_pd(b0, _mm256_cvtps_pd(_mm256_castps256_ps128(r)));
    b1 = _mm256_add_pd(b1, _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)));
  }
  double ta[4], tb[4], x = 0, y = 0;
  _mm256_storeu_pd(ta, _mm256_add_pd(a0, a1));
  _mm256_storeu_pd(tb, _mm256_add_pd(b0, b1));
  for (int k = 0; k < 4; ++k) { x += ta[k]; y += tb[k]; }
  for (; i < d; ++i) {
    float q = fm__h(la[i] - lb[i]);
    x += fm__h(ha[i] * q);
    y += fm__h(hb[i] * q);
  }
  *s1 = x;
  *s2 = y;
}
#endif

static void fm__kl_sums(const float *ha, const float *la, const float *hb, const float *lb, int64_t d,
                        double *s1, double *s2) {
  double x = 0, y = 0;
  for (int64_t i = 0; i < d; ++i) {
    float q = fm__h(la[i] - lb[i]);
    x += fm__h(ha[i] * q);
    y += fm__h(hb[i] * q);
  }
  *s1 = x;
  *s2 = y;
}

/* KL of the half maps, as a half value in a float */
static float fm__kl_half(double s1, double s2) {
  _Float16 k1 = (_Float16)s1, k2 = (_Float16)s2;        /* reduce_sum: one rounding */
  _Float16 a = (_Float16)((float)k1 / 2.0f);
  _Float16 b = (_Float16)((float)(_Float16)(-(float)k2) / 2.0f);
  return (float)(_Float16)((float)a + (float)b);
}

int fm_diffseg_kl_f16(fm_tensor *out, const fm_tensor *a, const fm_tensor *b) {
  char s1[128], s2[128];
  if (!fm__check_input(a, "fm_diffseg_kl_f16: a") || !fm__check_input(b, "fm_diffseg_kl_f16: b") ||
      !fm__check_output(out, "fm_diffseg_kl_f16: out"))
    return -1;
  if (a->ndim != 2 || b->ndim != 2 || a->dims[1] != b->dims[1] || out->ndim != 2 ||
      out->dims[0] != a->dims[0] || out->dims[1] != b->dims[0])
    return fm__error("fm_diffseg_kl_f16: a %s, b %s: expected (A, D), (Q, D) and out (A, Q)",
                     fm__shape_str(a, s1, sizeof s1), fm__shape_str(b, s2, sizeof s2));
  int64_t na = a->dims[0], nq = b->dims[0], d = a->dims[1];
  float *ha = malloc((size_t)(na * d) * sizeof *ha), *la = malloc((size_t)(na * d) * sizeof *la);
  float *hb = malloc((size_t)(nq * d) * sizeof *hb), *lb = malloc((size_t)(nq * d) * sizeof *lb);
  if (!ha || !la || !hb || !lb) {
    free(ha); free(la); free(hb); free(lb);
    return fm__error("fm_diffseg_kl_f16: out of memory");
  }
  const float *pa = fm__f32(a), *pb = fm__f32(b);
  #pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < na * d; ++i) { ha[i] = fm__h(pa[i]); la[i] = fm__h(logf(ha[i])); }
  #pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nq * d; ++i) { hb[i] = fm__h(pb[i]); lb[i] = fm__h(logf(hb[i])); }
  int fast = 0;
#ifdef FM__X86
  fast = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
#endif
  float *o = fm__f32(out);
  #pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < na; ++i) {
    for (int64_t j = 0; j < nq; ++j) {
      double x, y;
#ifdef FM__X86
      if (fast) fm__kl_sums_f16c(ha + i * d, la + i * d, hb + j * d, lb + j * d, d, &x, &y);
      else
#endif
        fm__kl_sums(ha + i * d, la + i * d, hb + j * d, lb + j * d, d, &x, &y);
      o[i * nq + j] = fm__kl_half(x, y);
    }
  }
  free(ha); free(la); free(hb); free(lb);
  return 0;
}

float fm_round_half(float v) { return fm__h(v); }

int fm_diffseg_group_means(double *out, const fm_tensor *x, const uint8_t *member, int64_t groups) {
  if (!fm__check_input(x, "fm_diffseg_group_means: x")) return -1;
  if (x->ndim != 2) return fm__error("fm_diffseg_group_means: x must be (N, D)");
  if (!out || !member || groups < 0) return fm__error("fm_diffseg_group_means: bad arguments");
  int64_t n = x->dims[0], d = x->dims[1];
  const float *p = fm__f32(x);
  #pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < groups; ++g) {
    double *o = out + g * d;
    memset(o, 0, (size_t)d * sizeof *o);
    int64_t count = 0;
    for (int64_t r = 0; r < n; ++r) {
      if (!member[g * n + r]) continue;
      const float *row = p + r * d;
      for (int64_t k = 0; k < d; ++k) o[k] += row[k];
      ++count;
    }
    for (int64_t k = 0; k < d; ++k) o[k] /= (double)count;    /* none: 0 / 0, NaN as the official */
  }
  return 0;
}
