/* test_attention.c — fm_attention against a naive head-by-head loop in
 * double: masks of both shapes, causal, probabilities, views of a fused qkv
 * tensor, blocks of query rows, and bad inputs. */
#include "fmseg.h"
#include "tap.h"

#include <string.h>

static fm_tensor *randn(int32_t ndim, const int64_t *shape, float scale) {
  fm_tensor *t = fm_tensor_new(FM_F32, ndim, shape);
  float *p = t->data;
  for (int64_t i = 0; i < fm_tensor_numel(t); ++i) p[i] = frand() * scale;
  return t;
}

static int fails_with(int rc, const char *name, const char *a, const char *b) {
  const char *e = fm_last_error();
  int good = rc == -1 && strstr(e, a) && (!b || strstr(e, b));
  if (!good) diag(e);
  return ok(good, name);
}

/* element (bi, t, c) of a 3-D tensor through its strides */
static double at3(const fm_tensor *t, long bi, long i, long c) {
  return ((const float *)t->data)[bi * t->strides[0] + i * t->strides[1] + c * t->strides[2]];
}

/* mask value for (bi, hi, i, j); mask (Tq, Tk) or (B|1, H|1, Tq, Tk) */
static double mask_at(const fm_tensor *m, long bi, long hi, long i, long j) {
  if (!m) return 0;
  const float *p = m->data;
  if (m->ndim == 2) return p[i * m->dims[1] + j];
  long b = m->dims[0] == 1 ? 0 : bi, h = m->dims[1] == 1 ? 0 : hi;
  return p[((b * m->dims[1] + h) * m->dims[2] + i) * m->dims[3] + j];
}

// out: (B, Tq, H*Dv), probs: (B, H, Tq, Tk)
static void attention_ref(float *out, float *probs, const fm_tensor *q, const fm_tensor *k,
                          const fm_tensor *v, long heads, double scale, const fm_tensor *mask,
                          int causal) {
  long B = q->dims[0], tq = q->dims[1], tk = k->dims[1];
  long d = q->dims[2] / heads, dv = v->dims[2] / heads;
  double *s = malloc(sizeof(double) * tk);
  for (long bi = 0; bi < B; ++bi)
    for (long h = 0; h < heads; ++h)
      for (long i = 0; i < tq; ++i) {
        double mx = -INFINITY, sum = 0;
        for (long j = 0; j < tk; ++j) {
          double dot = 0;
          for (long c = 0; c < d; ++c) dot += at3(q, bi, i, h * d + c) * at3(k, bi, j, h * d + c);
          s[j] = scale * dot + mask_at(mask, bi, h, i, j);
          if (causal && j > i) s[j] = -INFINITY;
          mx = s[j] > mx ? s[j] : mx;
        }
        for (long j = 0; j < tk; ++j) sum += s[j] = mx == -INFINITY ? 0 : exp(s[j] - mx);
        for (long j = 0; j < tk; ++j) s[j] = sum > 0 ? s[j] / sum : 0;
        if (probs)
          for (long j = 0; j < tk; ++j) probs[((bi * heads + h) * tq + i) * tk + j] = (float)s[j];
        for (long c = 0; c < dv; ++c) {
          double o = 0;
          for (long j = 0; j < tk; ++j) o += s[j] * at3(v, bi, j, h * dv + c);
          out[(bi * tq + i) * heads * dv + h * dv + c] = (float)o;
        }
      }
  free(s);
}

typedef struct acase {
  const char *name;
  long b, tq, tk, h, d, dv;
  int mask;  // 0 none, 2 (Tq, Tk), 4 (B, H, Tq, Tk), 5 (1, H, Tq, Tk), 6 (B, 1, Tq, Tk)
  int causal, probs;
} acase;

static fm_tensor *make_mask(const acase *c) {
  int64_t b = c->mask == 5 ? 1 : c->b, h = c->mask == 6 ? 1 : c->h;
  fm_tensor *m = NULL;
  if (c->mask == 2) m = randn(2, (int64_t[]){c->tq, c->tk}, 2.f);
  else if (c->mask) m = randn(4, (int64_t[]){b, h, c->tq, c->tk}, 2.f);
  if (!m) return NULL;
  // block some keys outright, as padding masks do
  float *p = m->data;
  for (int64_t i = 0; i < fm_tensor_numel(m); i += 5) p[i] = -INFINITY;
  return m;
}

static void run_case(const acase *c) {
  int64_t qs[3] = {c->b, c->tq, c->h * c->d}, ks[3] = {c->b, c->tk, c->h * c->d};
  int64_t vs[3] = {c->b, c->tk, c->h * c->dv}, os[3] = {c->b, c->tq, c->h * c->dv};
  int64_t ps[4] = {c->b, c->h, c->tq, c->tk};
  fm_tensor *q = randn(3, qs, 1.f), *k = randn(3, ks, 1.f), *v = randn(3, vs, 1.f);
  fm_tensor *mask = make_mask(c), *out = fm_tensor_new(FM_F32, 3, os);
  fm_tensor *probs = c->probs ? fm_tensor_new(FM_F32, 4, ps) : NULL;
  long no = (long)fm_tensor_numel(out), np = c->b * c->h * c->tq * c->tk;
  float *ref = malloc(sizeof(float) * no), *pref = malloc(sizeof(float) * np);
  double scale = 1.0 / sqrt((double)c->d);
  attention_ref(ref, pref, q, k, v, c->h, scale, mask, c->causal);
  int rc = fm_attention(out, q, k, v, c->h, (float)scale, mask, c->causal, probs);
  ok(rc == 0 && rel_err(out->data, ref, no) < 1e-5, c->name);
  if (!rc && rel_err(out->data, ref, no) >= 1e-5) diag(fm_last_error());
  if (probs) {
    char name[160];
    snprintf(name, sizeof name, "%s: probabilities", c->name);
    ok(rel_err(probs->data, pref, np) < 1e-5, name);
  }
  free(ref), free(pref);
  fm_tensor_release(q), fm_tensor_release(k), fm_tensor_release(v);
  fm_tensor_release(mask), fm_tensor_release(out), fm_tensor_release(probs);
}

/* q, k and v as slices of one fused (B, T, 3*H*D) projection, no copies */
static void test_fused_qkv(void) {
  int64_t B = 2, T = 19, H = 3, D = 8, C = H * D;
  fm_tensor *qkv = randn(3, (int64_t[]){B, T, 3 * C}, 1.f);
  fm_tensor *q = fm_tensor_narrow(qkv, 2, 0, C), *k = fm_tensor_narrow(qkv, 2, C, C);
  fm_tensor *v = fm_tensor_narrow(qkv, 2, 2 * C, C);
  fm_tensor *out = fm_tensor_new(FM_F32, 3, (int64_t[]){B, T, C});
  float *ref = malloc(sizeof(float) * B * T * C);
  attention_ref(ref, NULL, q, k, v, H, 0.3, NULL, 0);
  int rc = fm_attention(out, q, k, v, H, 0.3f, NULL, 0, NULL);
  ok(rc == 0 && rel_err(out->data, ref, B * T * C) < 1e-5,
     "fm_attention: q, k, v as slices of a fused qkv tensor");
  free(ref);
  fm_tensor_release(qkv), fm_tensor_release(q), fm_tensor_release(k);
  fm_tensor_release(v), fm_tensor_release(out);
}

/* A query whose keys are all masked gets zeros (PyTorch: NaN). */
static void test_fully_masked_row(void) {
  int64_t T = 4, C = 6;
  fm_tensor *x = randn(3, (int64_t[]){1, T, C}, 1.f), *out = fm_tensor_new(FM_F32, 3, (int64_t[]){1, T, C});
  fm_tensor *mask = fm_tensor_new(FM_F32, 2, (int64_t[]){T, T});
  float *m = mask->data;
  for (int64_t j = 0; j < T; ++j) m[1 * T + j] = -INFINITY;
  int rc = fm_attention(out, x, x, x, 2, 1.f, mask, 0, NULL);
  const float *o = out->data;
  int zeros = 1, finite = 1;
  for (int64_t c = 0; c < C; ++c) zeros = zeros && o[1 * C + c] == 0.f;
  for (int64_t i = 0; i < T * C; ++i) finite = finite && isfinite(o[i]);
  ok(rc == 0 && zeros && finite, "fm_attention: a fully masked query row gives zeros");
  fm_tensor_release(x), fm_tensor_release(out), fm_tensor_release(mask);
}

static void test_bad_inputs(void) {
  fm_tensor *q = randn(3, (int64_t[]){2, 5, 12}, 1.f), *k = randn(3, (int64_t[]){2, 7, 12}, 1.f);
  fm_tensor *v = randn(3, (int64_t[]){2, 7, 8}, 1.f), *out = fm_tensor_new(FM_F32, 3, (int64_t[]){2, 5, 8});
  fm_tensor *k_bad = randn(3, (int64_t[]){2, 7, 10}, 1.f), *v_bad = randn(3, (int64_t[]){2, 6, 8}, 1.f);
  fails_with(fm_attention(out, q, k, v, 5, 1.f, NULL, 0, NULL), "fm_attention: heads must divide",
             "5 heads", "[2, 5, 12]");
  fails_with(fm_attention(out, q, k_bad, v, 4, 1.f, NULL, 0, NULL),
             "fm_attention: k width differs from q", "[2, 7, 10]", "[2, 5, 12]");
  fails_with(fm_attention(out, q, k, v_bad, 4, 1.f, NULL, 0, NULL),
             "fm_attention: v length differs from k", "[2, 6, 8]", "[2, 7, 12]");
  fm_tensor *m_bad = randn(2, (int64_t[]){7, 5}, 1.f);
  fails_with(fm_attention(out, q, k, v, 4, 1.f, m_bad, 0, NULL), "fm_attention: mask shape",
             "fm_attention: mask", "[7, 5]");
  fm_tensor *m4_bad = randn(4, (int64_t[]){2, 3, 5, 7}, 1.f);
  fails_with(fm_attention(out, q, k, v, 4, 1.f, m4_bad, 0, NULL), "fm_attention: 4-D mask heads",
             "fm_attention: mask", "[2, 3, 5, 7]");
  fm_tensor *p_bad = fm_tensor_new(FM_F32, 4, (int64_t[]){2, 4, 7, 5});
  fails_with(fm_attention(out, q, k, v, 4, 1.f, NULL, 0, p_bad), "fm_attention: probs shape",
             "fm_attention: probs", "[2, 4, 5, 7]");
  fm_tensor *o_bad = fm_tensor_new(FM_F32, 3, (int64_t[]){2, 5, 12});
  fails_with(fm_attention(o_bad, q, k, v, 4, 1.f, NULL, 0, NULL), "fm_attention: out shape",
             "fm_attention: out", "[2, 5, 8]");
  fm_tensor *qt = fm_tensor_permute(q, (int32_t[]){0, 2, 1});
  fm_tensor *o2 = fm_tensor_new(FM_F32, 3, (int64_t[]){2, 12, 8});
  fails_with(fm_attention(o2, qt, k, v, 4, 1.f, NULL, 0, NULL),
             "fm_attention: q without a contiguous last dim", "fm_attention: q", "[2, 12, 5]");
  fm_tensor_release(q), fm_tensor_release(k), fm_tensor_release(v), fm_tensor_release(out);
  fm_tensor_release(k_bad), fm_tensor_release(v_bad), fm_tensor_release(m_bad);
  fm_tensor_release(m4_bad), fm_tensor_release(p_bad), fm_tensor_release(o_bad);
  fm_tensor_release(qt), fm_tensor_release(o2);
}

int main(void) {
  const acase cases[] = {
      {"fm_attention 1 token, 1 head, D 1", 1, 1, 1, 1, 1, 1, 0, 0, 1},
      {"fm_attention B 2, T 7, 3 heads, D 5, Dv 4", 2, 7, 7, 3, 5, 4, 0, 0, 1},
      {"fm_attention Tq 5 != Tk 9, mask (Tq, Tk)", 2, 5, 9, 2, 8, 8, 2, 0, 1},
      {"fm_attention mask (B, H, Tq, Tk)", 2, 6, 11, 3, 4, 4, 4, 0, 1},
      {"fm_attention mask (1, H, Tq, Tk) broadcast over batch", 2, 6, 11, 3, 4, 4, 5, 0, 0},
      {"fm_attention mask (B, 1, Tq, Tk) broadcast over heads", 2, 6, 11, 3, 4, 4, 6, 0, 1},
      {"fm_attention causal, T 77, 4 heads", 2, 77, 77, 4, 16, 16, 0, 1, 1},
      {"fm_attention causal plus mask", 1, 9, 9, 2, 4, 4, 2, 1, 1},
      {"fm_attention T 197, 12 heads, D 64 (ViT-B)", 1, 197, 197, 12, 64, 64, 0, 0, 1},
      {"fm_attention Tq 700 x Tk 1000: several row blocks", 1, 700, 1000, 2, 16, 8, 0, 0, 0},
      {"fm_attention row blocks with probs and causal", 1, 600, 600, 1, 8, 8, 4, 1, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; ++i) run_case(&cases[i]);
  test_fused_qkv();
  test_fully_masked_row();
  test_bad_inputs();
  return done_testing();
}
