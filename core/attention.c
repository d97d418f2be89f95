/* attention.c — multi-head scaled dot-product attention.
 *
 * Work is cut into units of (batch, head, block of query rows). Each unit
 * computes its scores (rows x Tk) into a per-thread buffer — or straight
 * into `probs` when the caller wants them — takes the softmax in place and
 * multiplies by V into its slice of `out`. Scores for all heads never exist
 * at once: SAM's global attention over 4096 tokens would need 805 MB per
 * layer for that; here a thread holds FM__ATTN_BUDGET floats (4 MB).
 *
 * Threads: one OpenMP loop over the units, with sgemm inside it (OpenBLAS's
 * OpenMP build runs sgemm single-threaded inside a parallel region, so the
 * two never fight over the cores). This also spreads the softmax over the
 * threads, which a serial loop of threaded sgemm calls would not.
 *
 * q, k, v may be views with any batch and token strides as long as the
 * last dim is contiguous, e.g. slices of a fused qkv projection. */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

/* Floats of scores per thread (4 MB), rows per block = budget / Tk. Each
 * block makes sgemm pack all of K and V for its head again, so blocks must
 * not be too thin; too thick and the scores leave the cache between the
 * two products. On 2 cores at Tk = 4096: 64-row blocks 1.3x and
 * 4096-row blocks 1.25x slower than these 256. */
enum { FM__ATTN_BUDGET = 1 << 20 };

/* ---- what attention.c and sam_attention.c share (see kernels.h) ---- */

/* q, k, v: 3-D F32 with a unit last stride; *ld gets the token stride. */
static bool fm__check_tokens(const fm_tensor *t, const char *who, const char *name,
                             int64_t *bstride, int64_t *ld) {
  char ts[128];
  char what[64];
  snprintf(what, sizeof what, "%s: %s", who, name);
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

bool fm__heads_check(fm__heads *a, const char *who, const fm_tensor *out, const fm_tensor *q,
                     const fm_tensor *k, const fm_tensor *v, int64_t heads, fm_tensor *probs) {
  char qs[128], ks[128], vs[128], what[64];
  snprintf(what, sizeof what, "%s: out", who);
  if (!fm__check_tokens(q, who, "q", &a->qb, &a->qt) ||
      !fm__check_tokens(k, who, "k", &a->kb, &a->kt) ||
      !fm__check_tokens(v, who, "v", &a->vb, &a->vt) || !fm__check_output(out, what))
    return false;
  a->b = q->dims[0], a->tq = q->dims[1], a->tk = k->dims[1], a->h = heads;
  if (heads < 1 || q->dims[2] % heads != 0 || v->dims[2] % heads != 0)
    return fm__error("%s: %lld heads do not divide q %s and v %s", who, (long long)heads,
                     fm__shape_str(q, qs, sizeof qs), fm__shape_str(v, vs, sizeof vs)), false;
  a->d = q->dims[2] / heads, a->dv = v->dims[2] / heads;
  if (k->dims[0] != a->b || k->dims[2] != q->dims[2] || v->dims[0] != a->b ||
      v->dims[1] != a->tk)
    return fm__error("%s: q %s, k %s, v %s do not fit (B, Tq, H*D), (B, Tk, H*D), "
                     "(B, Tk, H*Dv)", who, fm__shape_str(q, qs, sizeof qs),
                     fm__shape_str(k, ks, sizeof ks), fm__shape_str(v, vs, sizeof vs)), false;
  int64_t want[3] = {a->b, a->tq, v->dims[2]};
  if (!fm__check_shape(out, 3, want, what)) return false;
  if (probs) {
    int64_t pw[4] = {a->b, heads, a->tq, a->tk};
    snprintf(what, sizeof what, "%s: probs", who);
    if (!fm__check_output(probs, what) || !fm__check_shape(probs, 4, pw, what)) return false;
    a->probs = fm__f32(probs);
  }
  if (!fm__blas_fits(a->tq) || !fm__blas_fits(a->tk) || !fm__blas_fits(a->h * a->dv))
    return fm__error("%s: q %s, k %s: sizes exceed BLAS's int range", who,
                     fm__shape_str(q, qs, sizeof qs), fm__shape_str(k, ks, sizeof ks)), false;
  a->q = fm__f32(q), a->k = fm__f32(k), a->v = fm__f32(v), a->out = fm__f32(out);
  return true;
}

fm__attn_plan fm__attn_plan_for(const fm__heads *a, int64_t budget) {
  fm__attn_plan p;
  int64_t pairs = a->b * a->h, nt = omp_get_max_threads();
  p.rows = budget / a->tk;
  p.rows = p.rows < 1 ? 1 : (p.rows > a->tq ? a->tq : p.rows);
  if (pairs < nt) {  // too few (batch, head) pairs to go round: cut rows finer
    int64_t per = (nt + pairs - 1) / pairs, r = (a->tq + per - 1) / per;
    p.rows = r < p.rows ? r : p.rows;
  }
  p.nblk = (a->tq + p.rows - 1) / p.rows;
  p.units = pairs * p.nblk;
  p.threads = p.units < nt ? p.units : nt;
  return p;
}

void fm__attn_scores(const fm__heads *a, int64_t bi, int64_t hi, int64_t r0, int64_t nr,
                     float *s) {
  const float *q = fm__attn_q(a, bi, hi, r0);
  const float *k = a->k + bi * a->kb + hi * a->d;
  if (a->d > 0)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)a->tk, (int)a->d,
                a->scale, q, (int)a->qt, k, (int)a->kt, 0.f, s, (int)a->tk);
  else
    memset(s, 0, (size_t)(nr * a->tk) * sizeof *s);
}

void fm__attn_values(const fm__heads *a, int64_t bi, int64_t hi, int64_t r0, int64_t nr,
                     const float *s) {
  const float *v = a->v + bi * a->vb + hi * a->dv;
  float *o = a->out + (bi * a->tq + r0) * a->h * a->dv + hi * a->dv;
  // o (nr, Dv), rows H*Dv apart
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)a->dv, (int)a->tk, 1.f,
              s, (int)a->tk, v, (int)a->vt, 0.f, o, (int)(a->h * a->dv));
}

/* ---- fm_attention ---- */

typedef struct fm__attn {
  fm__heads io;
  const float *mask;
  int64_t mb, mh;  // mask strides of batch and head (0: broadcast)
  int32_t causal;
} fm__attn;

/* One unit: query rows [r0, r0 + nr) of head hi in batch bi. s: (nr, Tk). */
static void fm__attend_block(const fm__attn *a, int64_t bi, int64_t hi, int64_t r0, int64_t nr,
                             float *s) {
  int64_t tk = a->io.tk;
  fm__attn_scores(&a->io, bi, hi, r0, nr, s);
  for (int64_t i = 0; i < nr; ++i) {
    float *row = s + i * tk;
    if (a->mask) {
      const float *m = a->mask + bi * a->mb + hi * a->mh + (r0 + i) * tk;
      for (int64_t j = 0; j < tk; ++j) row[j] += m[j];
    }
    // PyTorch's is_causal: query i sees keys 0..i (top-left aligned)
    for (int64_t j = a->causal ? r0 + i + 1 : tk; j < tk; ++j) row[j] = -INFINITY;
    fm__softmax_row(row, tk);
  }
  fm__attn_values(&a->io, bi, hi, r0, nr, s);
}

static bool fm__check_mask(const fm_tensor *mask, fm__attn *a) {
  char ms[128];
  const fm__heads *io = &a->io;
  if (!mask) return true;
  if (!fm__check_input(mask, "fm_attention: mask")) return false;
  bool ok = mask->ndim == 2 && mask->dims[0] == io->tq && mask->dims[1] == io->tk;
  ok = ok || (mask->ndim == 4 && (mask->dims[0] == io->b || mask->dims[0] == 1) &&
              (mask->dims[1] == io->h || mask->dims[1] == 1) && mask->dims[2] == io->tq &&
              mask->dims[3] == io->tk);
  if (!ok)
    return fm__error("fm_attention: mask %s must be [%lld, %lld] or [%lld|1, %lld|1, %lld, %lld]",
                     fm__shape_str(mask, ms, sizeof ms), (long long)io->tq, (long long)io->tk,
                     (long long)io->b, (long long)io->h, (long long)io->tq, (long long)io->tk),
           false;
  a->mask = fm__f32(mask);
  a->mb = mask->ndim == 4 && mask->dims[0] > 1 ? mask->dims[1] * io->tq * io->tk : 0;
  a->mh = mask->ndim == 4 && mask->dims[1] > 1 ? io->tq * io->tk : 0;
  return true;
}

// q: (B, Tq, H*D), k: (B, Tk, H*D), v: (B, Tk, H*Dv); out: (B, Tq, H*Dv)
// mask: NULL, (Tq, Tk) or (B|1, H|1, Tq, Tk); probs: NULL or (B, H, Tq, Tk)
int fm_attention(fm_tensor *out, const fm_tensor *q, const fm_tensor *k, const fm_tensor *v,
                 int64_t heads, float scale, const fm_tensor *mask, int32_t causal,
                 fm_tensor *probs) {
  fm__attn a = {.io = {.scale = scale}, .causal = causal};
  if (!fm__heads_check(&a.io, "fm_attention", out, q, k, v, heads, probs) ||
      !fm__check_mask(mask, &a))
    return -1;
  const fm__heads *io = &a.io;
  if (io->b == 0 || io->tq == 0 || io->dv == 0) return 0;
  if (io->tk == 0) {  // nothing to attend to: zeros, like a fully masked row
    memset(io->out, 0, (size_t)fm_tensor_numel(out) * sizeof *io->out);
    return 0;
  }
  fm__attn_plan p = fm__attn_plan_for(io, FM__ATTN_BUDGET);
  float *buf = NULL;
  if (!io->probs && !(buf = malloc((size_t)(p.threads * p.rows * io->tk) * sizeof *buf)))
    return fm__error("fm_attention: out of memory for %lld x %lld scores",
                     (long long)(p.threads * p.rows), (long long)io->tk);
  #pragma omp parallel for schedule(dynamic) num_threads((int)p.threads)
  for (int64_t u = 0; u < p.units; ++u) {
    int64_t bi, hi, r0, nr;
    fm__attn_unit(io, &p, u, &bi, &hi, &r0, &nr);
    float *s = io->probs ? io->probs + ((bi * io->h + hi) * io->tq + r0) * io->tk
                         : buf + (int64_t)omp_get_thread_num() * p.rows * io->tk;
    fm__attend_block(&a, bi, hi, r0, nr, s);
  }
  free(buf);
  return 0;
}
