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
  fm__heads io;                  // Tq = Tk = T = gh * gw
  const float *rh, *rw;
  int64_t gh, gw, lh, lw;
  int64_t rows;                  // query rows per unit
} fm__sam_attn;

/* Per-thread scratch: scores (rows, T), q.Rhᵀ (rows, Lh), q.Rwᵀ (rows, Lw),
 * one row of the width bias (gw). */
static int64_t fm__sam_scratch(const fm__sam_attn *a) {
  return a->rows * (a->io.tk + a->lh + a->lw) + a->gw;
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
    float *srow = s + i * a->io.tk;
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
  const fm__heads *io = &a->io;
  int64_t t = io->tk;
  int d = (int)io->d;
  fm__attn_scores(io, bi, hi, r0, nr, s);
  if (a->rh && d > 0) {
    // ph (nr, Lh) = q (nr, D) . Rh (Lh, D)ᵀ, and the same for Rw: every
    // relative offset once, 2x the (rows, gh) the bias reads, no gather
    const float *q = fm__attn_q(io, bi, hi, r0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)a->lh, d, 1.f, q,
                (int)io->qt, a->rh, d, 0.f, ph, (int)a->lh);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)a->lw, d, 1.f, q,
                (int)io->qt, a->rw, d, 0.f, pw, (int)a->lw);
    fm__sam_add_rel_pos(a, r0, nr, s, ph, pw, bw);
  }
  for (int64_t i = 0; i < nr; ++i) fm__softmax_row(s + i * t, t);
  if (io->probs)
    memcpy(io->probs + ((bi * io->h + hi) * t + r0) * t, s, (size_t)(nr * t) * sizeof *s);
  fm__attn_values(io, bi, hi, r0, nr, s);
}

/* rel_pos_h (2*gh-1, D) and rel_pos_w (2*gw-1, D), both or neither. */
static bool fm__sam_check_rel_pos(const fm_tensor *rh, const fm_tensor *rw, fm__sam_attn *a) {
  if (!rh && !rw) return true;
  if (!rh || !rw)
    return fm__error("fm_sam_attention: give both rel_pos_h and rel_pos_w, or neither"), false;
  int64_t wh[2] = {2 * a->gh - 1, a->io.d}, ww[2] = {2 * a->gw - 1, a->io.d};
  if (!fm__check_input(rh, "fm_sam_attention: rel_pos_h") ||
      !fm__check_shape(rh, 2, wh, "fm_sam_attention: rel_pos_h") ||
      !fm__check_input(rw, "fm_sam_attention: rel_pos_w") ||
      !fm__check_shape(rw, 2, ww, "fm_sam_attention: rel_pos_w"))
    return false;
  if (!fm__blas_fits(wh[0]) || !fm__blas_fits(ww[0]))
    return fm__error("fm_sam_attention: a %lld x %lld grid exceeds BLAS's int range",
                     (long long)a->gh, (long long)a->gw), false;
  a->rh = fm__f32(rh), a->rw = fm__f32(rw), a->lh = wh[0], a->lw = ww[0];
  return true;
}

/* Self-attention over a gh x gw grid: as many keys as queries, gh * gw of them. */
static bool fm__sam_check_grid(const fm_tensor *q, const fm_tensor *k, int64_t gh, int64_t gw,
                               fm__sam_attn *a) {
  char qs[128], ks[128];
  if (a->io.tk != a->io.tq)
    return fm__error("fm_sam_attention: q %s and k %s must hold the same tokens",
                     fm__shape_str(q, qs, sizeof qs), fm__shape_str(k, ks, sizeof ks)), false;
  if (gh < 1 || gw < 1 || gh * gw != a->io.tq)
    return fm__error("fm_sam_attention: a %lld x %lld grid does not hold q %s's %lld tokens",
                     (long long)gh, (long long)gw, fm__shape_str(q, qs, sizeof qs),
                     (long long)a->io.tq), false;
  a->gh = gh, a->gw = gw;
  return true;
}

// q, k: (B, T, H*D), v: (B, T, H*Dv), T = grid_h * grid_w; out: (B, T, H*Dv)
// rel_pos_h: (2*grid_h-1, D), rel_pos_w: (2*grid_w-1, D) or both NULL
// probs: NULL or (B, H, T, T)
int fm_sam_attention(fm_tensor *out, const fm_tensor *q, const fm_tensor *k, const fm_tensor *v,
                     int64_t heads, float scale, const fm_tensor *rel_pos_h,
                     const fm_tensor *rel_pos_w, int64_t grid_h, int64_t grid_w,
                     fm_tensor *probs) {
  fm__sam_attn a = {.io = {.scale = scale}};
  if (!fm__heads_check(&a.io, "fm_sam_attention", out, q, k, v, heads, probs) ||
      !fm__sam_check_grid(q, k, grid_h, grid_w, &a) ||
      !fm__sam_check_rel_pos(rel_pos_h, rel_pos_w, &a))
    return -1;
  const fm__heads *io = &a.io;
  if (io->b == 0 || io->dv == 0) return 0;
  fm__attn_plan p = fm__attn_plan_for(io, FM__SAM_ATTN_BUDGET);
  a.rows = p.rows;
  int64_t per_thread = fm__sam_scratch(&a);
  float *buf = malloc((size_t)(p.threads * per_thread) * sizeof *buf);
  if (!buf)
    return fm__error("fm_sam_attention: out of memory for %lld x %lld scores",
                     (long long)(p.threads * p.rows), (long long)io->tk);
  #pragma omp parallel for schedule(dynamic) num_threads((int)p.threads)
  for (int64_t u = 0; u < p.units; ++u) {
    int64_t bi, hi, r0, nr;
    fm__attn_unit(io, &p, u, &bi, &hi, &r0, &nr);
    float *s = buf + (int64_t)omp_get_thread_num() * per_thread;
    float *ph = s + p.rows * io->tk, *pw = ph + p.rows * a.lh, *bw = pw + p.rows * a.lw;
    fm__sam_attend_block(&a, bi, hi, r0, nr, s, ph, pw, bw);
  }
  free(buf);
  return 0;
}
