/* sam_attention.c — SAM's image-encoder attention: multi-head self-attention
 * over a grid of tokens with decomposed relative positions (MViTv2).
 *
 * ref: transformers/models/sam/modeling_sam.py, SamVisionAttention
 * (get_rel_pos, add_decomposed_rel_pos). For token i at (yi, xi) and key j
 * at (yj, xj) of a gh x gw grid:
 *
 *   score[i, j] = scale * q_i . k_j + q_i . Rh[yi - yj + gh - 1]
 *                                   + q_i . Rw[xi - xj + gw - 1]
 *
 * The reference builds rel_h (B*H, T, gh) and rel_w (B*H, T, gw) with two
 * einsums and adds them to a (B*H, T, T) score tensor: 805 MB per SAM-B
 * global layer. Here, as in fm_attention, work is cut into units of (batch,
 * head, block of query rows); a unit multiplies its rows of q once by all
 * of Rh and Rw (two small sgemms, (rows, 2gh-1) and (rows, 2gw-1)), reads
 * the bias for each key off those products by index, and never holds more
 * than its block of scores.
 *
 * Threads: one OpenMP loop over the units with single-threaded sgemm inside
 * (OpenBLAS's OpenMP build does not nest), like attention.c. */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

/* Floats of scores per thread (1 MB): a block stays in L2 from q.kᵀ
 * through the bias and softmax to the product with v. */
enum { FM__SAM_ATTN_BUDGET = 1 << 18 };

typedef struct fm__sam_attn {
  const float *q, *k, *v, *rh, *rw;
  float *out, *probs;
  int64_t b, t, h, d, dv, gh, gw, lh, lw;
  int64_t qb, qt, kb, kt, vb, vt;  // batch and token strides of q, k, v
  int64_t rows;                    // query rows per unit
  float scale;
} fm__sam_attn;

/* Per-thread scratch: scores (rows, T), q.Rhᵀ (rows, Lh), q.Rwᵀ (rows, Lw),
 * one row of the width bias (gw). */
static int64_t fm__sam_scratch(const fm__sam_attn *a) {
  return a->rows * (a->t + a->lh + a->lw) + a->gw;
}

/* s (nr, T) += bias for rows r0..; ph (nr, Lh) = q Rhᵀ, pw (nr, Lw) = q Rwᵀ;
 * bw: gw floats of scratch. */
static void fm__sam_add_rel_pos(const fm__sam_attn *a, int64_t r0, int64_t nr, float *s,
                                const float *ph, const float *pw, float *bw) {
  for (int64_t i = 0; i < nr; ++i) {
    int64_t y = (r0 + i) / a->gw, x = (r0 + i) % a->gw;
    // bias_h[ky] = q.Rh[y - ky + gh - 1]: the product row read backwards;
    // the width bias is copied out in key order so the inner loop vectorises
    const float *hrow = ph + i * a->lh + y + a->gh - 1;
    const float *wrow = pw + i * a->lw + x + a->gw - 1;
    for (int64_t kx = 0; kx < a->gw; ++kx) bw[kx] = wrow[-kx];
    float *srow = s + i * a->t;
    for (int64_t ky = 0; ky < a->gh; ++ky) {
      float bh = hrow[-ky];
      float *cell = srow + ky * a->gw;
      // (score + rel_h) + rel_w: the reference's order of additions
      for (int64_t kx = 0; kx < a->gw; ++kx) cell[kx] = (cell[kx] + bh) + bw[kx];
    }
  }
}

/* One unit: query rows [r0, r0 + nr) of head hi in batch bi. */
static void fm__sam_attend_block(const fm__sam_attn *a, int64_t bi, int64_t hi, int64_t r0,
                                 int64_t nr, float *s, float *ph, float *pw, float *bw) {
  const float *q = a->q + bi * a->qb + r0 * a->qt + hi * a->d;
  const float *k = a->k + bi * a->kb + hi * a->d;
  const float *v = a->v + bi * a->vb + hi * a->dv;
  float *o = a->out + (bi * a->t + r0) * a->h * a->dv + hi * a->dv;
  int d = (int)a->d;
  // s (nr, T) = scale * q (nr, D) . k (T, D)ᵀ
  if (d > 0)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)a->t, d, a->scale, q,
                (int)a->qt, k, (int)a->kt, 0.f, s, (int)a->t);
  else
    memset(s, 0, (size_t)(nr * a->t) * sizeof *s);
  if (a->rh && d > 0) {
    // ph (nr, Lh) = q (nr, D) . Rh (Lh, D)ᵀ, and the same for Rw: every
    // relative offset once, 2x the (rows, gh) the bias reads, no gather
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)a->lh, d, 1.f, q,
                (int)a->qt, a->rh, d, 0.f, ph, (int)a->lh);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)a->lw, d, 1.f, q,
                (int)a->qt, a->rw, d, 0.f, pw, (int)a->lw);
    fm__sam_add_rel_pos(a, r0, nr, s, ph, pw, bw);
  }
  for (int64_t i = 0; i < nr; ++i) fm__softmax_row(s + i * a->t, a->t);
  if (a->probs)
    memcpy(a->probs + ((bi * a->h + hi) * a->t + r0) * a->t, s,
           (size_t)(nr * a->t) * sizeof *s);
  // o (nr, Dv), rows H*Dv apart = s (nr, T) . v (T, Dv)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)a->dv, (int)a->t, 1.f,
              s, (int)a->t, v, (int)a->vt, 0.f, o, (int)(a->h * a->dv));
}

/* q, k, v: 3-D F32 with a unit last stride; *ld gets the token stride. */
static bool fm__sam_check_tokens(const fm_tensor *t, const char *what, int64_t *bstride,
                                 int64_t *ld) {
  char ts[128];
  if (!t) return fm__error("%s: NULL tensor", what), false;
  if (!fm__check_f32(t, what) || !fm__check_ndim(t, 3, what)) return false;
  int64_t c = t->dims[2] > 1 ? t->dims[2] : 1;
  bool unit = t->strides[2] == 1 || t->dims[2] <= 1;
  *ld = t->dims[1] <= 1 ? c : t->strides[1];
  *bstride = t->dims[0] <= 1 ? 0 : t->strides[0];
  if (!unit || *ld < c || *bstride < 0 || !fm__blas_fits(*ld))
    return fm__error("%s: tensor %s (strides %lld, %lld, %lld) needs a contiguous last dim "
                     "and non-overlapping rows", what, fm__shape_str(t, ts, sizeof ts),
                     (long long)t->strides[0], (long long)t->strides[1],
                     (long long)t->strides[2]), false;
  return true;
}

/* rel_pos_h (2*gh-1, D) and rel_pos_w (2*gw-1, D), both or neither. */
static bool fm__sam_check_rel_pos(const fm_tensor *rh, const fm_tensor *rw, fm__sam_attn *a) {
  if (!rh && !rw) return true;
  if (!rh || !rw)
    return fm__error("fm_sam_attention: give both rel_pos_h and rel_pos_w, or neither"), false;
  int64_t wh[2] = {2 * a->gh - 1, a->d}, ww[2] = {2 * a->gw - 1, a->d};
  if (!fm__check_input(rh, "fm_sam_attention: rel_pos_h") ||
      !fm__check_shape(rh, 2, wh, "fm_sam_attention: rel_pos_h") ||
      !fm__check_input(rw, "fm_sam_attention: rel_pos_w") ||
      !fm__check_shape(rw, 2, ww, "fm_sam_attention: rel_pos_w"))
    return false;
  a->rh = fm__f32(rh), a->rw = fm__f32(rw), a->lh = wh[0], a->lw = ww[0];
  return true;
}

static bool fm__sam_attention_check(const fm_tensor *out, const fm_tensor *q,
                                    const fm_tensor *k, const fm_tensor *v, int64_t heads,
                                    const fm_tensor *rh, const fm_tensor *rw, int64_t gh,
                                    int64_t gw, const fm_tensor *probs, fm__sam_attn *a) {
  char qs[128], ks[128], vs[128];
  if (!fm__sam_check_tokens(q, "fm_sam_attention: q", &a->qb, &a->qt) ||
      !fm__sam_check_tokens(k, "fm_sam_attention: k", &a->kb, &a->kt) ||
      !fm__sam_check_tokens(v, "fm_sam_attention: v", &a->vb, &a->vt) ||
      !fm__check_output(out, "fm_sam_attention: out"))
    return false;
  a->b = q->dims[0], a->t = q->dims[1], a->h = heads, a->gh = gh, a->gw = gw;
  if (gh < 1 || gw < 1 || gh * gw != a->t)
    return fm__error("fm_sam_attention: a %lld x %lld grid does not hold q %s's %lld tokens",
                     (long long)gh, (long long)gw, fm__shape_str(q, qs, sizeof qs),
                     (long long)a->t), false;
  if (heads < 1 || q->dims[2] % heads != 0 || v->dims[2] % heads != 0)
    return fm__error("fm_sam_attention: %lld heads do not divide q %s and v %s",
                     (long long)heads, fm__shape_str(q, qs, sizeof qs),
                     fm__shape_str(v, vs, sizeof vs)), false;
  a->d = q->dims[2] / heads, a->dv = v->dims[2] / heads;
  bool same = k->dims[0] == a->b && k->dims[1] == a->t && k->dims[2] == q->dims[2] &&
              v->dims[0] == a->b && v->dims[1] == a->t;
  if (!same)
    return fm__error("fm_sam_attention: q %s, k %s, v %s do not fit (B, T, H*D), (B, T, H*D), "
                     "(B, T, H*Dv)", fm__shape_str(q, qs, sizeof qs),
                     fm__shape_str(k, ks, sizeof ks), fm__shape_str(v, vs, sizeof vs)), false;
  int64_t want[3] = {a->b, a->t, v->dims[2]};
  if (!fm__check_shape(out, 3, want, "fm_sam_attention: out")) return false;
  if (!fm__sam_check_rel_pos(rh, rw, a)) return false;
  if (probs) {
    int64_t pw[4] = {a->b, heads, a->t, a->t};
    if (!fm__check_output(probs, "fm_sam_attention: probs") ||
        !fm__check_shape(probs, 4, pw, "fm_sam_attention: probs"))
      return false;
    a->probs = fm__f32(probs);
  }
  if (!fm__blas_fits(a->t) || !fm__blas_fits(a->h * a->dv) || !fm__blas_fits(a->lh) ||
      !fm__blas_fits(a->lw))
    return fm__error("fm_sam_attention: q %s: sizes exceed BLAS's int range",
                     fm__shape_str(q, qs, sizeof qs)), false;
  return true;
}

// q, k: (B, T, H*D), v: (B, T, H*Dv), T = grid_h * grid_w; out: (B, T, H*Dv)
// rel_pos_h: (2*grid_h-1, D), rel_pos_w: (2*grid_w-1, D) or both NULL
// probs: NULL or (B, H, T, T)
int fm_sam_attention(fm_tensor *out, const fm_tensor *q, const fm_tensor *k, const fm_tensor *v,
                     int64_t heads, float scale, const fm_tensor *rel_pos_h,
                     const fm_tensor *rel_pos_w, int64_t grid_h, int64_t grid_w,
                     fm_tensor *probs) {
  fm__sam_attn a = {.scale = scale};
  if (!fm__sam_attention_check(out, q, k, v, heads, rel_pos_h, rel_pos_w, grid_h, grid_w,
                               probs, &a))
    return -1;
  a.q = fm__f32(q), a.k = fm__f32(k), a.v = fm__f32(v), a.out = fm__f32(out);
  if (a.b == 0 || a.dv == 0) return 0;
  int64_t pairs = a.b * a.h, nt = omp_get_max_threads();
  a.rows = FM__SAM_ATTN_BUDGET / a.t;
  a.rows = a.rows < 1 ? 1 : (a.rows > a.t ? a.t : a.rows);
  if (pairs < nt) {  // too few (window, head) pairs to go round: cut rows finer
    int64_t per = (nt + pairs - 1) / pairs, r = (a.t + per - 1) / per;
    a.rows = r < a.rows ? r : a.rows;
  }
  int64_t nblk = (a.t + a.rows - 1) / a.rows, units = pairs * nblk;
  nt = units < nt ? units : nt;
  int64_t per_thread = fm__sam_scratch(&a);
  float *buf = malloc((size_t)(nt * per_thread) * sizeof *buf);
  if (!buf)
    return fm__error("fm_sam_attention: out of memory for %lld x %lld scores",
                     (long long)(nt * a.rows), (long long)a.t);
  #pragma omp parallel for schedule(dynamic) num_threads((int)nt)
  for (int64_t u = 0; u < units; ++u) {
    int64_t bi = u / (a.h * nblk), hi = u / nblk % a.h, r0 = u % nblk * a.rows;
    int64_t nr = a.t - r0 < a.rows ? a.t - r0 : a.rows;
    float *s = buf + (int64_t)omp_get_thread_num() * per_thread;
    float *ph = s + a.rows * a.t, *pw = ph + a.rows * a.lh, *bw = pw + a.rows * a.lw;
    fm__sam_attend_block(&a, bi, hi, r0, nr, s, ph, pw, bw);
  }
  free(buf);
  return 0;
}
