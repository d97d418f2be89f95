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
#include <stdlib.h>

/* Floats of scores per thread (4 MB), rows per block = budget / Tk. Each
 * block makes sgemm pack all of K and V for its head again, so blocks must
 * not be too thin; too thick and the scores leave the cache between the
 * two products. On 2 cores at Tk = 4096: 64-row blocks 1.3x and
 * 4096-row blocks 1.25x slower than these 256. */
enum { FM__ATTN_BUDGET = 1 << 20 };

typedef struct fm__attn {
  const float *q, *k, *v, *mask;
  float *out, *probs;
  int64_t b, tq, tk, h, d, dv;
  int64_t qb, qt, kb, kt, vb, vt;  // batch and token strides of q, k, v
  int64_t mb, mh;                  // mask strides of batch and head (0: broadcast)
  int64_t rows;                    // query rows per unit
  float scale;
  int32_t causal;
} fm__attn;

/* One unit: query rows [r0, r0 + nr) of head hi in batch bi. s: (nr, Tk). */
static void fm__attend_block(const fm__attn *a, int64_t bi, int64_t hi, int64_t r0, int64_t nr,
                             float *s) {
  const float *q = a->q + bi * a->qb + r0 * a->qt + hi * a->d;
  const float *k = a->k + bi * a->kb + hi * a->d;
  const float *v = a->v + bi * a->vb + hi * a->dv;
  float *o = a->out + (bi * a->tq + r0) * a->h * a->dv + hi * a->dv;
  // s (nr, Tk) = scale * q (nr, D) . k (Tk, D)ᵀ
  if (a->d > 0)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)a->tk, (int)a->d,
                a->scale, q, (int)a->qt, k, (int)a->kt, 0.f, s, (int)a->tk);
  else
    memset(s, 0, (size_t)(nr * a->tk) * sizeof *s);
  for (int64_t i = 0; i < nr; ++i) {
    float *row = s + i * a->tk;
    if (a->mask) {
      const float *m = a->mask + bi * a->mb + hi * a->mh + (r0 + i) * a->tk;
      for (int64_t j = 0; j < a->tk; ++j) row[j] += m[j];
    }
    // PyTorch's is_causal: query i sees keys 0..i (top-left aligned)
    for (int64_t j = a->causal ? r0 + i + 1 : a->tk; j < a->tk; ++j) row[j] = -INFINITY;
    fm__softmax_row(row, a->tk);
  }
  // o (nr, Dv), rows H*Dv apart = s (nr, Tk) . v (Tk, Dv)
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)a->dv, (int)a->tk, 1.f,
              s, (int)a->tk, v, (int)a->vt, 0.f, o, (int)(a->h * a->dv));
}

/* q, k, v: 3-D F32 with a unit last stride; *ld gets the token stride. */
static bool fm__check_tokens(const fm_tensor *t, const char *what, int64_t *bstride,
                             int64_t *ld) {
  char ts[128];
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

static bool fm__check_mask(const fm_tensor *mask, fm__attn *a) {
  char ms[128];
  if (!mask) return true;
  if (!fm__check_input(mask, "fm_attention: mask")) return false;
  bool ok = mask->ndim == 2 && mask->dims[0] == a->tq && mask->dims[1] == a->tk;
  ok = ok || (mask->ndim == 4 && (mask->dims[0] == a->b || mask->dims[0] == 1) &&
              (mask->dims[1] == a->h || mask->dims[1] == 1) && mask->dims[2] == a->tq &&
              mask->dims[3] == a->tk);
  if (!ok)
    return fm__error("fm_attention: mask %s must be [%lld, %lld] or [%lld|1, %lld|1, %lld, %lld]",
                     fm__shape_str(mask, ms, sizeof ms), (long long)a->tq, (long long)a->tk,
                     (long long)a->b, (long long)a->h, (long long)a->tq, (long long)a->tk), false;
  a->mask = fm__f32(mask);
  a->mb = mask->ndim == 4 && mask->dims[0] > 1 ? mask->dims[1] * a->tq * a->tk : 0;
  a->mh = mask->ndim == 4 && mask->dims[1] > 1 ? a->tq * a->tk : 0;
  return true;
}

static bool fm__attention_check(const fm_tensor *out, const fm_tensor *q, const fm_tensor *k,
                                const fm_tensor *v, int64_t heads, const fm_tensor *mask,
                                const fm_tensor *probs, fm__attn *a) {
  char qs[128], ks[128], vs[128];
  if (!fm__check_tokens(q, "fm_attention: q", &a->qb, &a->qt) ||
      !fm__check_tokens(k, "fm_attention: k", &a->kb, &a->kt) ||
      !fm__check_tokens(v, "fm_attention: v", &a->vb, &a->vt) ||
      !fm__check_output(out, "fm_attention: out"))
    return false;
  a->b = q->dims[0], a->tq = q->dims[1], a->tk = k->dims[1], a->h = heads;
  if (heads < 1 || q->dims[2] % heads != 0 || v->dims[2] % heads != 0)
    return fm__error("fm_attention: %lld heads do not divide q %s and v %s", (long long)heads,
                     fm__shape_str(q, qs, sizeof qs), fm__shape_str(v, vs, sizeof vs)), false;
  a->d = q->dims[2] / heads, a->dv = v->dims[2] / heads;
  if (k->dims[0] != a->b || k->dims[2] != q->dims[2] || v->dims[0] != a->b ||
      v->dims[1] != a->tk)
    return fm__error("fm_attention: q %s, k %s, v %s do not fit (B, Tq, H*D), (B, Tk, H*D), "
                     "(B, Tk, H*Dv)", fm__shape_str(q, qs, sizeof qs),
                     fm__shape_str(k, ks, sizeof ks), fm__shape_str(v, vs, sizeof vs)), false;
  int64_t want[4] = {a->b, a->tq, v->dims[2], 0};
  if (!fm__check_shape(out, 3, want, "fm_attention: out")) return false;
  if (!fm__check_mask(mask, a)) return false;
  if (probs) {
    int64_t pw[4] = {a->b, heads, a->tq, a->tk};
    if (!fm__check_output(probs, "fm_attention: probs") ||
        !fm__check_shape(probs, 4, pw, "fm_attention: probs"))
      return false;
    a->probs = fm__f32(probs);
  }
  if (!fm__blas_fits(a->tq) || !fm__blas_fits(a->tk) || !fm__blas_fits(a->h * a->dv))
    return fm__error("fm_attention: q %s, k %s: sizes exceed BLAS's int range",
                     fm__shape_str(q, qs, sizeof qs), fm__shape_str(k, ks, sizeof ks)), false;
  return true;
}

// q: (B, Tq, H*D), k: (B, Tk, H*D), v: (B, Tk, H*Dv); out: (B, Tq, H*Dv)
// mask: NULL, (Tq, Tk) or (B|1, H|1, Tq, Tk); probs: NULL or (B, H, Tq, Tk)
int fm_attention(fm_tensor *out, const fm_tensor *q, const fm_tensor *k, const fm_tensor *v,
                 int64_t heads, float scale, const fm_tensor *mask, int32_t causal,
                 fm_tensor *probs) {
  fm__attn a = {.scale = scale, .causal = causal};
  if (!fm__attention_check(out, q, k, v, heads, mask, probs, &a)) return -1;
  a.q = fm__f32(q), a.k = fm__f32(k), a.v = fm__f32(v), a.out = fm__f32(out);
  if (a.b == 0 || a.tq == 0 || a.dv == 0) return 0;
  if (a.tk == 0) {  // nothing to attend to: zeros, like a fully masked row
    memset(a.out, 0, (size_t)fm_tensor_numel(out) * sizeof *a.out);
    return 0;
  }
  int64_t pairs = a.b * a.h, nt = omp_get_max_threads();
  a.rows = FM__ATTN_BUDGET / a.tk;
  a.rows = a.rows < 1 ? 1 : (a.rows > a.tq ? a.tq : a.rows);
  if (pairs < nt) {  // too few heads to go round: cut rows finer
    int64_t per = (nt + pairs - 1) / pairs, r = (a.tq + per - 1) / per;
    a.rows = r < a.rows ? r : a.rows;
  }
  int64_t nblk = (a.tq + a.rows - 1) / a.rows, units = pairs * nblk;
  nt = units < nt ? units : nt;
  float *buf = NULL;
  if (!a.probs && !(buf = malloc((size_t)(nt * a.rows * a.tk) * sizeof *buf)))
    return fm__error("fm_attention: out of memory for %lld x %lld scores",
                     (long long)(nt * a.rows), (long long)a.tk);
  #pragma omp parallel for schedule(dynamic) num_threads((int)nt)
  for (int64_t u = 0; u < units; ++u) {
    int64_t bi = u / (a.h * nblk), hi = u / nblk % a.h, r0 = u % nblk * a.rows;
    int64_t nr = a.tq - r0 < a.rows ? a.tq - r0 : a.rows;
    float *s = a.probs ? a.probs + ((bi * a.h + hi) * a.tq + r0) * a.tk
                       : buf + (int64_t)omp_get_thread_num() * a.rows * a.tk;
    fm__attend_block(&a, bi, hi, r0, nr, s);
  }
  free(buf);
  return 0;
}
