/* kernels.h — private helpers shared by the kernel files (linalg.c, nn.c,
 * conv.c, attention.c, sam_attention.c). Not part of the public header. */
#ifndef FMSEG_KERNELS_H
#define FMSEG_KERNELS_H

#include "internal.h"

#include <limits.h>
#include <string.h>

/* Below this many elements an OpenMP loop costs more than it saves. */
enum { FM__PAR_MIN = 1 << 15 };

/* cblas takes int sizes; every size and leading dimension we pass must fit. */
static inline bool fm__blas_fits(int64_t n) { return n >= 0 && n <= INT_MAX; }

/* e^x in float, accurate to ~2 ulp, written so that a loop over it
 * vectorises (no libm call, no branches): range reduction to
 * x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r (Cephes'
 * coefficients), and 2^n built in the exponent bits. Gives 0 below -87
 * (so e^-inf = 0), +inf above 88; NaN gives 0 or +inf by its sign.
 *
 * The range checks compare bit patterns as integers and select with masks:
 * with float compares in ?: selects GCC (under the default -ftrapping-math)
 * left the loop scalar, and softmax then cost more than both products of
 * attention. As unsigned, x < -87 exactly when its bits exceed those of -87
 * (negative floats grow in magnitude with their bits); as signed, x > 88
 * exactly when its bits exceed those of 88. */
static inline float fm__expf(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  // all-ones masks, so that the selects are bit operations
  uint32_t under = 0u - (uint32_t)(u > 0xC2AE0000u);         // bits of -87.0f
  uint32_t over = 0u - (uint32_t)((int32_t)u > 0x42B00000);  // bits of 88.0f
  uint32_t cu = (u & ~under & ~over) | (0xC2AE0000u & under) | (0x42B00000u & over);
  float xc;
  memcpy(&xc, &cu, sizeof xc);
  // round to nearest by the 1.5 * 2^23 trick, which vectorises
  float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;       // ln2 split in two for exactness
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t su = (uint32_t)((int32_t)n + 127) << 23, yu;
  float scale, y;
  memcpy(&scale, &su, sizeof scale);
  y = p * scale;
  memcpy(&yu, &y, sizeof yu);
  yu = (yu & ~under & ~over) | (0x7F800000u & over);
  memcpy(&y, &yu, sizeof y);
  return y;
}

/* In place softmax of one row of n floats. A row that is all -inf (every
 * key masked) becomes all zeros, where PyTorch would give NaN: a fully
 * masked query then contributes nothing instead of poisoning the output. */
void fm__softmax_row(float *row, int64_t n);

/* ---- blocked multi-head attention (attention.c, sam_attention.c) --------
 *
 * Both attention kernels cut their work into units of (batch, head, block
 * of query rows); a unit computes its block of scores, changes it (mask,
 * relative positions), takes the softmax and multiplies by V. What they
 * share is here; the bodies are in attention.c. */

/* One call's q, k, v, out and probs and their layout:
 * q (B, Tq, H*D), k (B, Tk, H*D), v (B, Tk, H*Dv), out (B, Tq, H*Dv),
 * probs NULL or (B, H, Tq, Tk). q, k, v may be views: any batch and token
 * strides, contiguous last dim. */
typedef struct fm__heads {
  const float *q, *k, *v;
  float *out, *probs;
  int64_t b, tq, tk, h, d, dv;
  int64_t qb, qt, kb, kt, vb, vt;  // batch and token strides of q, k, v
  float scale;
} fm__heads;

/* Checks q, k, v, out and probs against each other for `heads` heads and
 * fills *a; errors start with `who` ("fm_attention"). */
bool fm__heads_check(fm__heads *a, const char *who, const fm_tensor *out, const fm_tensor *q,
                     const fm_tensor *k, const fm_tensor *v, int64_t heads, fm_tensor *probs);

/* How the units are cut: `rows` query rows per block, `nblk` blocks per
 * (batch, head), `units` in all, over `threads` threads. */
typedef struct fm__attn_plan {
  int64_t rows, nblk, units, threads;
} fm__attn_plan;

/* Rows per block: `budget` floats of scores per thread / Tk, cut finer when
 * there are fewer (batch, head) pairs than threads. Needs Tq, Tk > 0. */
fm__attn_plan fm__attn_plan_for(const fm__heads *a, int64_t budget);

/* Unit u → batch *bi, head *hi, first query row *r0 and *nr rows. */
static inline void fm__attn_unit(const fm__heads *a, const fm__attn_plan *p, int64_t u,
                                 int64_t *bi, int64_t *hi, int64_t *r0, int64_t *nr) {
  *bi = u / (a->h * p->nblk), *hi = u / p->nblk % a->h, *r0 = u % p->nblk * p->rows;
  *nr = a->tq - *r0 < p->rows ? a->tq - *r0 : p->rows;
}

/* Row r0 of head hi's queries in batch bi (D floats, rows qt apart). */
static inline const float *fm__attn_q(const fm__heads *a, int64_t bi, int64_t hi, int64_t r0) {
  return a->q + bi * a->qb + r0 * a->qt + hi * a->d;
}

/* s (nr, Tk) = scale * q (nr, D) . k (Tk, D)ᵀ for rows r0.. of head hi;
 * zeros when D = 0. */
void fm__attn_scores(const fm__heads *a, int64_t bi, int64_t hi, int64_t r0, int64_t nr,
                     float *s);

/* out rows r0.. of head hi (nr, Dv) = s (nr, Tk) . v (Tk, Dv) */
void fm__attn_values(const fm__heads *a, int64_t bi, int64_t hi, int64_t r0, int64_t nr,
                     const float *s);

#endif
