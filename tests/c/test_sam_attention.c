/* test_sam_attention.c — fm_sam_attention against a naive version in double
 * that follows transformers' SamVisionAttention literally (get_rel_pos's
 * coordinates, rel_h/rel_w einsums added to the full score matrix): windows
 * as a batch, a non-square grid, a grid big enough to need several row
 * blocks, views of a fused qkv tensor, probabilities, no relative positions
 * (must equal fm_attention), and bad inputs. */
#include "fmseg.h"
#include "tap.h"

#include <string.h>

static fm_tensor *randn(int32_t ndim, const int64_t *shape, float scale) {
  fm_tensor *t = fm_tensor_new(FM_F32, ndim, shape);
  float *p = t->data;
  for (int64_t i = 0; i < fm_tensor_numel(t); ++i) p[i] = frand() * scale;
  return t;
}

static int fails_with(int rc, const char *name, const char *want) {
  const char *e = fm_last_error();
  int good = rc == -1 && strstr(e, want) != NULL;
  if (!good) diag(e);
  fm_clear_error();
  return ok(good, name);
}

static double at3(const fm_tensor *t, long b, long i, long c) {
  return ((const float *)t->data)[b * t->strides[0] + i * t->strides[1] + c * t->strides[2]];
}

/* get_rel_pos for q_size == k_size == n: row (qi - ki + n - 1) of rel (2n-1, D) */
static const float *rel_row(const fm_tensor *rel, long qi, long ki, long n, long d) {
  double q_coord = (double)qi, k_coord = (double)ki;  // max(k/q, 1) = 1
  long idx = (long)(q_coord - k_coord + (n - 1));
  return (const float *)rel->data + idx * d;
}

// out: (B, T, H*Dv), probs: (B, H, T, T)
static void sam_attention_ref(float *out, float *probs, const fm_tensor *q, const fm_tensor *k,
                              const fm_tensor *v, long heads, double scale,
                              const fm_tensor *rh, const fm_tensor *rw, long gh, long gw) {
  long B = q->dims[0], t = q->dims[1], d = q->dims[2] / heads, dv = v->dims[2] / heads;
  double *s = malloc(sizeof(double) * t);
  for (long b = 0; b < B; ++b)
    for (long h = 0; h < heads; ++h)
      for (long i = 0; i < t; ++i) {
        long yi = i / gw, xi = i % gw;
        double mx = -INFINITY, sum = 0;
        for (long j = 0; j < t; ++j) {
          long yj = j / gw, xj = j % gw;
          double dot = 0, bh = 0, bw = 0;
          for (long c = 0; c < d; ++c) {
            double qc = at3(q, b, i, h * d + c);
            dot += qc * at3(k, b, j, h * d + c);
            if (rh) bh += qc * rel_row(rh, yi, yj, gh, d)[c];
            if (rw) bw += qc * rel_row(rw, xi, xj, gw, d)[c];
          }
          s[j] = scale * dot + bh + bw;
          mx = s[j] > mx ? s[j] : mx;
        }
        for (long j = 0; j < t; ++j) sum += s[j] = exp(s[j] - mx);
        for (long j = 0; j < t; ++j) s[j] /= sum;
        if (probs)
          for (long j = 0; j < t; ++j) probs[((b * heads + h) * t + i) * t + j] = (float)s[j];
        for (long c = 0; c < dv; ++c) {
          double o = 0;
          for (long j = 0; j < t; ++j) o += s[j] * at3(v, b, j, h * dv + c);
          out[(b * t + i) * heads * dv + h * dv + c] = (float)o;
        }
      }
  free(s);
}

/* One case: q, k, v as views of a fused (B, T, 3*H*D) qkv like SAM's. */
static void check_case(const char *name, long B, long gh, long gw, long heads, long d,
                       int rel, int want_probs) {
  long t = gh * gw, c = heads * d;
  int64_t qkv_shape[3] = {B, t, 3 * c};
  fm_tensor *qkv = randn(3, qkv_shape, 1.f);
  fm_tensor *q = fm_tensor_narrow(qkv, 2, 0, c);
  fm_tensor *k = fm_tensor_narrow(qkv, 2, c, c);
  fm_tensor *v = fm_tensor_narrow(qkv, 2, 2 * c, c);
  int64_t hs[2] = {2 * gh - 1, d}, ws[2] = {2 * gw - 1, d};
  fm_tensor *rh = rel ? randn(2, hs, 0.5f) : NULL, *rw = rel ? randn(2, ws, 0.5f) : NULL;
  int64_t os[3] = {B, t, c}, ps[4] = {B, heads, t, t};
  fm_tensor *out = fm_tensor_new(FM_F32, 3, os);
  fm_tensor *probs = want_probs ? fm_tensor_new(FM_F32, 4, ps) : NULL;
  float *want = malloc(sizeof(float) * B * t * c);
  float *want_p = want_probs ? malloc(sizeof(float) * B * heads * t * t) : NULL;
  double scale = 1.0 / sqrt((double)d);
  sam_attention_ref(want, want_p, q, k, v, heads, scale, rh, rw, gh, gw);
  int rc = fm_sam_attention(out, q, k, v, heads, (float)scale, rh, rw, gh, gw, probs);
  if (rc) diag(fm_last_error());
  double e = rc ? INFINITY : rel_err(out->data, want, B * t * c);
  char msg[256];
  snprintf(msg, sizeof msg, "%s: out within 1e-5 (rel err %.2g)", name, e);
  ok(e < 1e-5, msg);
  if (want_probs) {
    double ep = rc ? INFINITY : rel_err(probs->data, want_p, B * heads * t * t);
    snprintf(msg, sizeof msg, "%s: probabilities within 1e-5 (rel err %.2g)", name, ep);
    ok(ep < 1e-5, msg);
  }
  free(want), free(want_p);
  fm_tensor_release(out), fm_tensor_release(probs), fm_tensor_release(rh);
  fm_tensor_release(rw), fm_tensor_release(q), fm_tensor_release(k), fm_tensor_release(v);
  fm_tensor_release(qkv);
}

/* Without relative positions it is plain attention. */
static void check_plain_matches_attention(void) {
  int64_t s[3] = {2, 12, 16};
  fm_tensor *q = randn(3, s, 1.f), *k = randn(3, s, 1.f), *v = randn(3, s, 1.f);
  fm_tensor *a = fm_tensor_new(FM_F32, 3, s), *b = fm_tensor_new(FM_F32, 3, s);
  int rc = fm_sam_attention(a, q, k, v, 4, 0.5f, NULL, NULL, 3, 4, NULL);
  rc |= fm_attention(b, q, k, v, 4, 0.5f, NULL, 0, NULL);
  ok(rc == 0 && rel_err(a->data, b->data, 2 * 12 * 16) < 1e-6,
     "no relative positions: same as fm_attention");
  fm_tensor_release(q), fm_tensor_release(k), fm_tensor_release(v);
  fm_tensor_release(a), fm_tensor_release(b);
}

static void check_bad_inputs(void) {
  int64_t s[3] = {1, 12, 8}, hs[2] = {5, 4}, ws[2] = {7, 4}, bad[2] = {6, 4};
  fm_tensor *q = randn(3, s, 1.f), *out = fm_tensor_new(FM_F32, 3, s);
  fm_tensor *rh = randn(2, hs, 1.f), *rw = randn(2, ws, 1.f), *rb = randn(2, bad, 1.f);
  fails_with(fm_sam_attention(out, q, q, q, 2, 1.f, rh, rw, 3, 5, NULL),
             "grid that does not hold the tokens is refused", "grid does not hold");
  fails_with(fm_sam_attention(out, q, q, q, 2, 1.f, rh, rb, 3, 4, NULL),
             "rel_pos_w of the wrong length is refused", "rel_pos_w");
  fails_with(fm_sam_attention(out, q, q, q, 2, 1.f, rh, NULL, 3, 4, NULL),
             "rel_pos_h without rel_pos_w is refused", "both");
  fails_with(fm_sam_attention(out, q, q, q, 3, 1.f, NULL, NULL, 3, 4, NULL),
             "heads that do not divide the channels are refused", "heads do not divide");
  fails_with(fm_sam_attention(out, q, q, NULL, 2, 1.f, NULL, NULL, 3, 4, NULL),
             "NULL v is refused", "v");
  fm_tensor_release(q), fm_tensor_release(out), fm_tensor_release(rh);
  fm_tensor_release(rw), fm_tensor_release(rb);
}

int main(void) {
  check_case("windows as a batch (4 windows of 3x3, 2 heads)", 4, 3, 3, 2, 4, 1, 1);
  check_case("non-square grid 5x7, 3 heads", 1, 5, 7, 3, 8, 1, 1);
  check_case("1x1 grid", 2, 1, 1, 2, 4, 1, 1);
  check_case("global 36x40 grid: several row blocks per head", 1, 36, 40, 2, 8, 1, 0);
  check_case("no relative positions", 2, 4, 4, 2, 4, 0, 1);
  check_plain_matches_attention();
  check_bad_inputs();
  return done_testing();
}
