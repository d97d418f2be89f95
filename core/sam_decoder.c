/* sam_decoder.c — the two cross-attentions of SAM's mask decoder between
 * a few prompt tokens and the 4096 image tokens, as tall products, and its
 * upscaling fused with the mask products (fm_sam_upscale_masks, below).
 * Their naive twins, in double and literal, are in
 * tests/c/test_sam_decoder.c.
 *
 * ref: transformers/models/sam/modeling_sam.py, SamAttention inside
 * SamTwoWayAttentionBlock / SamTwoWayTransformer. Per head h (D = Ci/H)
 * an attention is softmax(q_h k_hᵀ / sqrt(D)) v_h between projections
 * q = x Wqᵀ + bq, k = y Wkᵀ + bk, v = y Wvᵀ + bv, then out_proj. When one
 * side has only S ~ 7 tokens, its products with the 4096 others are thin
 * (K = D = 16, or K = S = 7) and the image side's projections cost 30x
 * the attention itself. Both kernels take the projections folded into the
 * few tokens instead (sam.lua folds them; O(S C Ci) work):
 *
 * image -> tokens (queries: the image tokens x (T, C) plus their encoding;
 * keys: S tokens):
 *   score[t, (h, j)] = x_t . K'_hj + kb_hj,  K'_hj = Wq_hᵀ k_hj, kb_hj = bq_h . k_hj
 *   out_t = sum_(h,j) p[t, (h, j)] V'_hj + ob,  V'_hj = Wo_h v_hj
 *   one product (T, C) x (C, H*S) for the scores and one (T, H*S) x (H*S, C)
 *   for the output, the softmax over each head's S columns in between, and
 *   optionally the residual and the layer norm that follow in the block.
 *
 * tokens -> image (queries: R = H*S folded rows; keys and values: x):
 *   score[(h, j), t] = q'_hj . (x_t + pe_t),  q'_hj = Wk_hᵀ q_hj
 *   (bk's term is constant along t and leaves the softmax unchanged)
 *   z_hj = sum_t p[(h, j), t] x_t, and the caller finishes with
 *   Wv_h z_hj + bv_h (the probabilities sum to 1) and out_proj.
 *
 * Both cut the work into units of (prompt, block of rows) over one OpenMP
 * loop with single-threaded sgemm inside, as attention.c. A batch of 1 for
 * x, the residual or pe is shared by every prompt (the first layer's image
 * tokens, identical for all point prompts).
 *
 * Counted products per prompt at SAM's sizes (T = 4096, C = 256, Ci = 128,
 * H = 8, S = 7): each folded attention 2 x 2 T C H S = 235 MFLOP, where the
 * unfolded one costs 2 T C Ci (537 MFLOP) in image-side projections alone. */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

/* Image rows per unit of fm_sam_image_to_tokens: its x block (rows, C)
 * and output block stay in L2 between the two products. */
enum { FM__I2T_ROWS = 128 };

/* 3-D contiguous F32 of shape (b, d1, d2) with b in {1, n} when n >= 0
 * (n < 0: any b, returned in *b). */
static bool fm__dec_check3(const fm_tensor *t, const char *what, int64_t n, int64_t d1, int64_t d2,
                           int64_t *b) {
  char ts[128];
  if (!fm__check_input(t, what) || !fm__check_ndim(t, 3, what)) return false;
  bool ok = (n < 0 || t->dims[0] == n || t->dims[0] == 1) && (d1 < 0 || t->dims[1] == d1) &&
            (d2 < 0 || t->dims[2] == d2);
  if (!ok)
    return fm__error("%s: got %s, expected [%lld|1, %lld, %lld]", what,
                     fm__shape_str(t, ts, sizeof ts), (long long)n, (long long)d1, (long long)d2),
           false;
  if (b) *b = t->dims[0];
  return true;
}

static bool fm__dec_check_vec(const fm_tensor *t, const char *what, int64_t n) {
  if (!t) return true;
  int64_t want[1] = {n};
  return fm__check_input(t, what) && fm__check_shape(t, 1, want, what);
}

// y: (C) in place, as fm_layer_norm's rows (nn.c); w, b: (C) or NULL
static void fm__dec_layer_norm_row(float *y, const float *w, const float *b, int64_t c, float eps) {
  double sum = 0;
  #pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < c; ++i) sum += y[i];
  double mean = sum / (double)c, var = 0;
  #pragma omp simd reduction(+ : var)
  for (int64_t i = 0; i < c; ++i) var += ((double)y[i] - mean) * ((double)y[i] - mean);
  float fmean = (float)mean, rstd = (float)(1.0 / sqrt(var / (double)c + eps));
  for (int64_t i = 0; i < c; ++i) {
    float v = (y[i] - fmean) * rstd;
    if (w) v *= w[i];
    if (b) v += b[i];
    y[i] = v;
  }
}

/* ---- image -> tokens ------------------------------------------------------ */

// x: (N|1, T, Cx), x_pe: (N|1, T, Cx) or NULL (added to x), keys: (N, H*S, Cx),
// key_bias: (N, H*S) or NULL, values: (N, H*S, C), out_bias: (C) or NULL,
// resid: (N|1, T, C) or NULL, ln_w, ln_b: (C) or NULL (used when norm);
// out: (N, T, C)
int fm_sam_image_to_tokens(fm_tensor *out, const fm_tensor *x, const fm_tensor *x_pe,
                           const fm_tensor *keys,
                           const fm_tensor *key_bias, const fm_tensor *values,
                           const fm_tensor *out_bias, int64_t heads, float scale,
                           const fm_tensor *resid, int32_t norm, const fm_tensor *ln_w,
                           const fm_tensor *ln_b, float eps) {
  const char *fn = "fm_sam_image_to_tokens";
  char what[96];
  int64_t n, bx, br = 0;
#define FM__WHAT(name) (snprintf(what, sizeof what, "%s: %s", fn, name), what)
  if (!fm__dec_check3(keys, FM__WHAT("keys"), -1, -1, -1, &n)) return -1;
  int64_t hs = keys->dims[1], cx = keys->dims[2];
  if (!fm__dec_check3(x, FM__WHAT("x"), n, -1, cx, &bx)) return -1;
  int64_t t = x->dims[1], bpe = 0;
  if (x_pe && !fm__dec_check3(x_pe, FM__WHAT("x_pe"), n, t, cx, &bpe)) return -1;
  if (!fm__dec_check3(values, FM__WHAT("values"), n, hs, -1, NULL)) return -1;
  int64_t c = values->dims[2];
  if (values->dims[0] != n)
    return fm__error("%s: values for %lld prompts, keys for %lld", fn, (long long)values->dims[0],
                     (long long)n);
  if (heads < 1 || hs % heads != 0)
    return fm__error("%s: %lld heads do not divide the %lld key rows", fn, (long long)heads,
                     (long long)hs);
  if (key_bias) {
    int64_t want[2] = {n, hs};
    if (!fm__check_input(key_bias, FM__WHAT("key_bias")) ||
        !fm__check_shape(key_bias, 2, want, what))
      return -1;
  }
  if (resid && !fm__dec_check3(resid, FM__WHAT("resid"), n, t, c, &br)) return -1;
  if (!fm__dec_check_vec(out_bias, FM__WHAT("out_bias"), c) ||
      !fm__dec_check_vec(ln_w, FM__WHAT("ln_w"), c) || !fm__dec_check_vec(ln_b, FM__WHAT("ln_b"), c))
    return -1;
  int64_t ow[3] = {n, t, c};
  if (!fm__check_output(out, FM__WHAT("out")) || !fm__check_shape(out, 3, ow, what)) return -1;
#undef FM__WHAT
  if (!fm__blas_fits(t) || !fm__blas_fits(hs) || !fm__blas_fits(c) || !fm__blas_fits(cx))
    return fm__error("%s: sizes exceed BLAS's int range", fn);
  if (n == 0 || t == 0 || c == 0) return 0;
  int64_t s = hs / heads, rows = FM__I2T_ROWS, nblk = (t + rows - 1) / rows, units = n * nblk;
  int64_t nt = omp_get_max_threads(), threads = units < nt ? units : nt;
  // per thread: scores (rows, H*S) and, with x_pe, the block of x + x_pe
  int64_t per = rows * (hs > 0 ? hs : 1) + (x_pe ? rows * cx : 0);
  float *buf = malloc((size_t)(threads * per) * sizeof *buf);
  if (!buf) return fm__error("%s: out of memory", fn);
  const float *xv = fm__f32(x), *kv = fm__f32(keys), *vv = fm__f32(values);
  const float *pv = x_pe ? fm__f32(x_pe) : NULL;
  const float *kb = key_bias ? fm__f32(key_bias) : NULL, *ob = out_bias ? fm__f32(out_bias) : NULL;
  const float *rv = resid ? fm__f32(resid) : NULL;
  const float *lw = ln_w ? fm__f32(ln_w) : NULL, *lb = ln_b ? fm__f32(ln_b) : NULL;
  float *ov = fm__f32(out);
  #pragma omp parallel for schedule(dynamic) num_threads((int)threads)
  for (int64_t u = 0; u < units; ++u) {
    int64_t pi = u / nblk, r0 = u % nblk * rows, nr = t - r0 < rows ? t - r0 : rows;
    float *sc = buf + (int64_t)omp_get_thread_num() * per;
    const float *xb = xv + ((bx == 1 ? 0 : pi) * t + r0) * cx;
    if (pv) {
      float *xs = sc + rows * (hs > 0 ? hs : 1);
      const float *pb = pv + ((bpe == 1 ? 0 : pi) * t + r0) * cx;
      for (int64_t i = 0; i < nr * cx; ++i) xs[i] = xb[i] + pb[i];
      xb = xs;
    }
    float *o = ov + (pi * t + r0) * c;
    // the residual and bias first: the second product adds into them
    for (int64_t i = 0; i < nr; ++i) {
      float *orow = o + i * c;
      const float *rrow = rv ? rv + ((br == 1 ? 0 : pi) * t + r0 + i) * c : NULL;
      for (int64_t j = 0; j < c; ++j) orow[j] = (rrow ? rrow[j] : 0.f) + (ob ? ob[j] : 0.f);
    }
    if (hs > 0) {
      if (cx > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)hs, (int)cx, 1.f, xb,
                    (int)cx, kv + pi * hs * cx, (int)cx, 0.f, sc, (int)hs);
      else
        memset(sc, 0, (size_t)(nr * hs) * sizeof *sc);
      const float *kbn = kb ? kb + pi * hs : NULL;
      for (int64_t i = 0; i < nr; ++i) {
        float *row = sc + i * hs;
        for (int64_t j = 0; j < hs; ++j) row[j] = ((kbn ? row[j] + kbn[j] : row[j])) * scale;
        for (int64_t h = 0; h < heads; ++h) fm__softmax_row(row + h * s, s);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)c, (int)hs, 1.f, sc,
                  (int)hs, vv + pi * hs * c, (int)c, 1.f, o, (int)c);
    }
    if (norm)
      for (int64_t i = 0; i < nr; ++i) fm__dec_layer_norm_row(o + i * c, lw, lb, c, eps);
  }
  free(buf);
  return 0;
}

/* ---- tokens -> image ------------------------------------------------------ */

// q: (N, R, C), x: (N|1, T, C), pe: (N|1, T, C) or NULL; out: (N, R, C)
int fm_sam_tokens_to_image(fm_tensor *out, const fm_tensor *q, const fm_tensor *x,
                           const fm_tensor *pe, float scale) {
  const char *fn = "fm_sam_tokens_to_image";
  char what[96];
  int64_t n, bx, bp = 0;
#define FM__WHAT(name) (snprintf(what, sizeof what, "%s: %s", fn, name), what)
  if (!fm__dec_check3(q, FM__WHAT("q"), -1, -1, -1, &n)) return -1;
  int64_t r = q->dims[1], c = q->dims[2];
  if (!fm__dec_check3(x, FM__WHAT("x"), n, -1, c, &bx)) return -1;
  int64_t t = x->dims[1];
  if (pe && !fm__dec_check3(pe, FM__WHAT("pe"), n, t, c, &bp)) return -1;
  int64_t ow[3] = {n, r, c};
  if (!fm__check_output(out, FM__WHAT("out")) || !fm__check_shape(out, 3, ow, what)) return -1;
#undef FM__WHAT
  if (!fm__blas_fits(t) || !fm__blas_fits(r) || !fm__blas_fits(c))
    return fm__error("%s: sizes exceed BLAS's int range", fn);
  if (n == 0 || r == 0 || c == 0) return 0;
  if (t == 0) {  // nothing to attend to: zeros, as fm_attention
    memset(fm__f32(out), 0, (size_t)(n * r * c) * sizeof(float));
    return 0;
  }
  // more blocks of rows than prompts when the prompts do not go round
  int64_t nt = omp_get_max_threads();
  int64_t nblk = n >= nt ? 1 : (nt + n - 1) / n;
  int64_t rows = (r + nblk - 1) / nblk;
  rows = rows < 8 && r > 8 ? 8 : rows;
  nblk = (r + rows - 1) / rows;
  int64_t units = n * nblk, threads = units < nt ? units : nt;
  // x + pe: once when both are shared, else per unit into its thread's buffer
  bool shared = pe && bx == 1 && bp == 1, own = pe && !shared;
  int64_t per = rows * t + (own ? t * c : 0);
  float *buf = malloc((size_t)(threads * per + (shared ? t * c : 0)) * sizeof *buf);
  if (!buf) return fm__error("%s: out of memory", fn);
  const float *qv = fm__f32(q), *xv = fm__f32(x), *pv = pe ? fm__f32(pe) : NULL;
  float *ov = fm__f32(out), *xs = buf + threads * per;
  if (shared) {
    #pragma omp parallel for if (t * c > FM__PAR_MIN)
    for (int64_t i = 0; i < t * c; ++i) xs[i] = xv[i] + pv[i];
  }
  #pragma omp parallel for schedule(dynamic) num_threads((int)threads)
  for (int64_t u = 0; u < units; ++u) {
    int64_t pi = u / nblk, r0 = u % nblk * rows, nr = r - r0 < rows ? r - r0 : rows;
    if (nr <= 0) continue;
    float *sc = buf + (int64_t)omp_get_thread_num() * per;
    const float *xn = xv + (bx == 1 ? 0 : pi) * t * c;
    const float *keys = xn;
    if (shared) keys = xs;
    else if (own) {
      float *xp = sc + rows * t;
      const float *pn = pv + (bp == 1 ? 0 : pi) * t * c;
      for (int64_t i = 0; i < t * c; ++i) xp[i] = xn[i] + pn[i];
      keys = xp;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)t, (int)c, scale,
                qv + (pi * r + r0) * c, (int)c, keys, (int)c, 0.f, sc, (int)t);
    for (int64_t i = 0; i < nr; ++i) fm__softmax_row(sc + i * t, t);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)c, (int)t, 1.f, sc,
                (int)t, xn, (int)c, 0.f, ov + (pi * r + r0) * c, (int)c);
  }
  free(buf);
  return 0;
}

/* ---- upscaling and mask products ------------------------------------------ */

/* SamMaskDecoder's upscaling and hypernetwork product, fused. Both
 * transposed convolutions have kernel = stride = 2, so each is a plain
 * product per input pixel: (pixels, C) x (C, 4 * C1) gives the 2x2 output
 * pixels' C1 channels, next to each other, where the channel norm and GELU
 * need them. A unit takes a block of image tokens of one prompt through
 *   a = gelu(LN_C1(tokens W1 + b1))       (rows * 4, C1)
 *   u = gelu(a W2 + b2)                   (rows * 16, C2)
 *   m = u hyperᵀ                          (rows * 16, M)
 * and scatters m to the masks; the (N, C1, 2h, 2w) and (N, C2, 4h, 4w)
 * activations never exist. */

enum { FM__UPSCALE_ROWS = 64 };  // image tokens per unit

/* GELU (erf form) with erf from Abramowitz and Stegun 7.1.26 (absolute
 * error below 1.5e-7, so GELU's below 1e-7 |x|) over fm__expf: a loop over
 * it vectorises, where libm's erff (fm_unary's FM_GELU) is a call per
 * value and cost more than the products here (3M values a prompt). */
static inline float fm__dec_gelu(float x) {
  float z = x * 0.70710678118654752f, az = fabsf(z);
  float t = 1.f / (1.f + 0.3275911f * az);
  float p = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t +
             0.254829592f) * t;
  float e = 1.f - p * fm__expf(-az * az);  // erf(|z|)
  return 0.5f * x * (1.f + copysignf(e, z));
}

// keys: (N, h*w, C) token-major; w1: (C, C1, 2, 2), b1, ln_w, ln_b: (C1);
// w2: (C1, C2, 2, 2), b2: (C2); hyper: (N, M, C2); out: (N, M, 4h, 4w)
int fm_sam_upscale_masks(fm_tensor *out, const fm_tensor *keys, int64_t h, int64_t w,
                         const fm_tensor *w1, const fm_tensor *b1, const fm_tensor *ln_w,
                         const fm_tensor *ln_b, float eps, const fm_tensor *w2,
                         const fm_tensor *b2, const fm_tensor *hyper) {
  const char *fn = "fm_sam_upscale_masks";
  char what[96], ts[128];
  int64_t n;
#define FM__WHAT(name) (snprintf(what, sizeof what, "%s: %s", fn, name), what)
  if (!fm__dec_check3(keys, FM__WHAT("keys"), -1, h * w, -1, &n)) return -1;
  int64_t c = keys->dims[2];
  if (!fm__check_input(w1, FM__WHAT("w1")) || !fm__check_ndim(w1, 4, what)) return -1;
  int64_t c1 = w1->dims[1];
  if (w1->dims[0] != c || w1->dims[2] != 2 || w1->dims[3] != 2)
    return fm__error("%s: w1 %s, expected [%lld, C1, 2, 2]", fn, fm__shape_str(w1, ts, sizeof ts),
                     (long long)c);
  if (!fm__check_input(w2, FM__WHAT("w2")) || !fm__check_ndim(w2, 4, what)) return -1;
  int64_t c2 = w2->dims[1];
  if (w2->dims[0] != c1 || w2->dims[2] != 2 || w2->dims[3] != 2)
    return fm__error("%s: w2 %s, expected [%lld, C2, 2, 2]", fn, fm__shape_str(w2, ts, sizeof ts),
                     (long long)c1);
  if (!fm__dec_check_vec(b1, FM__WHAT("b1"), c1) || !fm__dec_check_vec(ln_w, FM__WHAT("ln_w"), c1) ||
      !fm__dec_check_vec(ln_b, FM__WHAT("ln_b"), c1) || !fm__dec_check_vec(b2, FM__WHAT("b2"), c2))
    return -1;
  if (!fm__dec_check3(hyper, FM__WHAT("hyper"), n, -1, c2, NULL)) return -1;
  int64_t m = hyper->dims[1];
  if (hyper->dims[0] != n)
    return fm__error("%s: hyper for %lld prompts, keys for %lld", fn, (long long)hyper->dims[0],
                     (long long)n);
  int64_t ow[4] = {n, m, 4 * h, 4 * w};
  if (!fm__check_output(out, FM__WHAT("out")) || !fm__check_shape(out, 4, ow, what)) return -1;
#undef FM__WHAT
  if (!fm__blas_fits(c) || !fm__blas_fits(4 * c1) || !fm__blas_fits(4 * c2) || !fm__blas_fits(m))
    return fm__error("%s: sizes exceed BLAS's int range", fn);
  int64_t t = h * w;
  if (n == 0 || t == 0 || m == 0) return 0;
  // weights as products: W1r (C, 4*C1), column (ky*2 + kx)*C1 + o; W2r likewise
  float *w1r = malloc((size_t)(c * 4 * c1 + c1 * 4 * c2) * sizeof(float));
  if (!w1r) return fm__error("%s: out of memory", fn);
  float *w2r = w1r + c * 4 * c1;
  const float *w1v = fm__f32(w1), *w2v = fm__f32(w2);
  for (int64_t i = 0; i < c; ++i)
    for (int64_t o = 0; o < c1; ++o)
      for (int64_t k = 0; k < 4; ++k) w1r[i * 4 * c1 + k * c1 + o] = w1v[(i * c1 + o) * 4 + k];
  for (int64_t i = 0; i < c1; ++i)
    for (int64_t o = 0; o < c2; ++o)
      for (int64_t k = 0; k < 4; ++k) w2r[i * 4 * c2 + k * c2 + o] = w2v[(i * c2 + o) * 4 + k];
  int64_t rows = FM__UPSCALE_ROWS, nblk = (t + rows - 1) / rows, units = n * nblk;
  int64_t nt = omp_get_max_threads(), threads = units < nt ? units : nt;
  int64_t per = rows * 4 * c1 + rows * 16 * c2 + rows * 16 * m;
  float *buf = malloc((size_t)(threads * per) * sizeof *buf);
  if (!buf) return free(w1r), fm__error("%s: out of memory", fn);
  const float *kv = fm__f32(keys), *hv = fm__f32(hyper);
  const float *b1v = b1 ? fm__f32(b1) : NULL, *b2v = b2 ? fm__f32(b2) : NULL;
  const float *lw = ln_w ? fm__f32(ln_w) : NULL, *lb = ln_b ? fm__f32(ln_b) : NULL;
  float *ov = fm__f32(out);
  int64_t oh = 4 * h, owd = 4 * w;
  #pragma omp parallel for schedule(dynamic) num_threads((int)threads)
  for (int64_t u = 0; u < units; ++u) {
    int64_t pi = u / nblk, r0 = u % nblk * rows, nr = t - r0 < rows ? t - r0 : rows;
    float *a = buf + (int64_t)omp_get_thread_num() * per;
    float *up = a + rows * 4 * c1, *mk = up + rows * 16 * c2;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)(4 * c1), (int)c, 1.f,
                kv + (pi * t + r0) * c, (int)c, w1r, (int)(4 * c1), 0.f, a, (int)(4 * c1));
    for (int64_t g = 0; g < nr * 4; ++g) {
      float *px = a + g * c1;
      if (b1v) for (int64_t o = 0; o < c1; ++o) px[o] += b1v[o];
      fm__dec_layer_norm_row(px, lw, lb, c1, eps);
      for (int64_t o = 0; o < c1; ++o) px[o] = fm__dec_gelu(px[o]);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(nr * 4), (int)(4 * c2), (int)c1,
                1.f, a, (int)c1, w2r, (int)(4 * c2), 0.f, up, (int)(4 * c2));
    for (int64_t g = 0; g < nr * 16; ++g) {
      float *px = up + g * c2;
      if (b2v) for (int64_t o = 0; o < c2; ++o) px[o] += b2v[o];
      for (int64_t o = 0; o < c2; ++o) px[o] = fm__dec_gelu(px[o]);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(nr * 16), (int)m, (int)c2, 1.f, up,
                (int)c2, hv + pi * m * c2, (int)c2, 0.f, mk, (int)m);
    // row ((i*4 + k1)*4 + k2) of mk: token r0+i, first-stage pixel k1, second k2
    for (int64_t i = 0; i < nr; ++i) {
      int64_t ty = (r0 + i) / w, tx = (r0 + i) % w;
      for (int64_t k1 = 0; k1 < 4; ++k1)
        for (int64_t k2 = 0; k2 < 4; ++k2) {
          int64_t y = 4 * ty + 2 * (k1 / 2) + k2 / 2, x = 4 * tx + 2 * (k1 % 2) + k2 % 2;
          const float *src = mk + ((i * 4 + k1) * 4 + k2) * m;
          for (int64_t j = 0; j < m; ++j) ov[((pi * m + j) * oh + y) * owd + x] = src[j];
        }
    }
  }
  free(buf);
  free(w1r);
  return 0;
}
