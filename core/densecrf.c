/* densecrf.c — the fully connected CRF of Krähenbühl & Koltun (NIPS 2011)
 * with Gaussian edge potentials, by mean-field inference over a
 * permutohedral lattice (Adams et al. 2010), as lucasb-eyer/pydensecrf's
 * bundled densecrf/ computes it (DenseCRF2D, addPairwiseGaussian and
 * addPairwiseBilateral with Potts compatibility, diagonal kernels,
 * symmetric normalisation), which CaR, CLIP-ES and many segmentation
 * papers refine their maps with.
 *
 * The lattice follows that code's SSE build (what x86-64 compiles): the
 * features are embedded in blocks of four points, the last block padded
 * with zero features whose vertices join the lattice too (they take part
 * in the blur); coordinates round to nearest even; a filter of at most two
 * values per point blurs in double (the scalar seqCompute), wider ones in
 * float (sseCompute), and the two slice with their own product orders.
 * Vertices are found in an open-addressing hash table; the naive twin
 * (naive = 1) finds them by a linear search over the vertices instead,
 * with the same arithmetic, so the two agree bit for bit.
 *
 * Mean field: Q = softmax(−U); each iteration
 *   Q = softmax(−U − Σ_k (−w_k) n_k ⊙ K_k(n_k ⊙ Q))
 * over the kernels k (Gaussian on positions / sxy, bilateral on positions /
 * sxy and colours / srgb), n_k = 1 / sqrt(K_k 1 + 1e-20). */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- lattice --------------------------------------------------------------- */

typedef struct fm__lattice {
  int64_t n;                /* points */
  int d;                    /* feature dimension */
  int64_t m;                /* vertices */
  int64_t cap;              /* hash slots (0 for the naive search) */
  int16_t *keys;            /* (m, d) */
  int64_t *slots;           /* hash slot -> vertex or -1 */
  int64_t *offset;          /* (n, d + 1): vertex of each simplex corner */
  float *bary;              /* (n, d + 1): barycentric weights */
  int64_t *nb1, *nb2;       /* ((d + 1), m): blur neighbours, -1 if none */
  int64_t keys_cap;
} fm__lattice;

static void fm__lattice_free(fm__lattice *L) {
  free(L->keys); free(L->slots); free(L->offset); free(L->bary); free(L->nb1); free(L->nb2);
  memset(L, 0, sizeof *L);
}

static size_t fm__key_hash(const int16_t *k, int d) {
  size_t r = 0;
  for (int i = 0; i < d; ++i) { r += (size_t)k[i]; r *= 1664525; }
  return r;
}

static bool fm__same_key(const int16_t *a, const int16_t *b, int d) {
  for (int i = 0; i < d; ++i) if (a[i] != b[i]) return false;
  return true;
}

static bool fm__lattice_grow(fm__lattice *L) {
  int64_t cap = L->cap * 2;
  int64_t *slots = malloc((size_t)cap * sizeof *slots);
  if (!slots) return false;
  for (int64_t i = 0; i < cap; ++i) slots[i] = -1;
  for (int64_t e = 0; e < L->m; ++e) {
    size_t h = fm__key_hash(L->keys + e * L->d, L->d) % (size_t)cap;
    while (slots[h] >= 0) h = h + 1 < (size_t)cap ? h + 1 : 0;
    slots[h] = e;
  }
  free(L->slots);
  L->slots = slots, L->cap = cap;
  return true;
}

/* The vertex of key k; a new one when create, else -1 if absent. -2: out of memory. */
static int64_t fm__lattice_find(fm__lattice *L, const int16_t *k, bool create) {
  int d = L->d;
  if (L->cap == 0) {                       /* the naive twin: a linear search */
    for (int64_t e = 0; e < L->m; ++e) if (fm__same_key(L->keys + e * d, k, d)) return e;
  } else {
    if (2 * L->m >= L->cap && !fm__lattice_grow(L)) return -2;
    size_t h = fm__key_hash(k, d) % (size_t)L->cap;
    for (;;) {
      int64_t e = L->slots[h];
      if (e < 0) break;
      if (fm__same_key(L->keys + e * d, k, d)) return e;
      h = h + 1 < (size_t)L->cap ? h + 1 : 0;
    }
  }
  if (!create) return -1;
  if (L->m == L->keys_cap) {
    int64_t cap = L->keys_cap ? 2 * L->keys_cap : 1024;
    int16_t *keys = realloc(L->keys, (size_t)cap * (size_t)d * sizeof *keys);
    if (!keys) return -2;
    L->keys = keys, L->keys_cap = cap;
  }
  memcpy(L->keys + L->m * d, k, (size_t)d * sizeof *k);
  if (L->cap) {
    size_t h = fm__key_hash(k, d) % (size_t)L->cap;
    while (L->slots[h] >= 0) h = h + 1 < (size_t)L->cap ? h + 1 : 0;
    L->slots[h] = L->m;
  }
  return L->m++;
}

/* One point's simplex: elevate f (d), round to the nearest remainder-0
 * point, rank the differences, barycentric weights; its d + 1 vertices
 * are found (created) in order. In float, as the SSE build's lanes. */
static bool fm__lattice_embed(fm__lattice *L, const float *f, const float *scale, const int16_t *canonical,
                              int64_t point, float *elevated, float *rem0, float *rank, float *bary,
                              int16_t *key) {
  int d = L->d;
  const float inv = 1.0f / (float)(d + 1), dp1 = (float)(d + 1);
  float sm = 0.0f;
  for (int j = d; j > 0; --j) {
    float cf = f[j - 1] * scale[j - 1];
    elevated[j] = sm - (float)j * cf;
    sm += cf;
  }
  elevated[0] = sm;
  float sum = 0.0f;
  for (int i = 0; i <= d; ++i) {
    float v = nearbyintf(inv * elevated[i]);        /* cvtps_epi32: to nearest even */
    rem0[i] = v * dp1;
    sum += v;
  }
  for (int i = 0; i <= d; ++i) rank[i] = 0.0f;
  for (int i = 0; i < d; ++i) {
    float di = elevated[i] - rem0[i];
    for (int j = i + 1; j <= d; ++j) {
      float c = di < elevated[j] - rem0[j] ? 1.0f : 0.0f;
      rank[i] += c;
      rank[j] += 1.0f - c;
    }
  }
  for (int i = 0; i <= d; ++i) {
    rank[i] += sum;
    float add = rank[i] < 0.0f ? dp1 : 0.0f, sub = rank[i] >= dp1 ? dp1 : 0.0f;
    rank[i] += add - sub;
    rem0[i] += add - sub;
  }
  for (int i = 0; i <= d + 1; ++i) bary[i] = 0.0f;
  for (int i = 0; i <= d; ++i) {
    float v = (elevated[i] - rem0[i]) * inv;
    int p = (int)((float)d - rank[i]);
    bary[p] += v;
    bary[p + 1] -= v;
  }
  bary[0] += 1.0f + bary[d + 1];
  for (int r = 0; r <= d; ++r) {
    for (int i = 0; i < d; ++i) {
      float v = rem0[i] + (float)canonical[r * (d + 1) + (int)rank[i]];
      if (!(fabsf(v) <= 32767.0f)) {           /* the original's shorts would wrap */
        fm__error("dense_crf: lattice coordinate %g of point %lld overflows 16 bits: the features (positions / "
                  "sxy, colours / srgb) are too large; use larger standard deviations or a smaller image",
                  (double)v, (long long)point);
        return false;
      }
      key[i] = (int16_t)v;
    }
    int64_t e = fm__lattice_find(L, key, true);
    if (e < 0) return fm__error("dense_crf: out of memory for the lattice's vertices"), false;
    if (point < L->n) {
      L->offset[point * (d + 1) + r] = e;
      L->bary[point * (d + 1) + r] = bary[r];
    }
  }
  return true;
}

/* features (n, d) point-major -> the lattice; naive: linear-search twin */
static int fm__lattice_init(fm__lattice *L, const float *features, int64_t n, int d, int naive) {
  memset(L, 0, sizeof *L);
  L->n = n, L->d = d;
  L->cap = naive ? 0 : 2 * (n > 0 ? n : 1);
  if (L->cap && !(L->slots = malloc((size_t)L->cap * sizeof *L->slots))) return fm__error("dense_crf: out of memory");
  for (int64_t i = 0; i < L->cap; ++i) L->slots[i] = -1;
  L->offset = malloc((size_t)(n * (d + 1)) * sizeof *L->offset);
  L->bary = malloc((size_t)(n * (d + 1)) * sizeof *L->bary);
  float *scratch = malloc((size_t)(5 * (d + 2)) * sizeof *scratch);
  int16_t *canonical = malloc((size_t)((d + 1) * (d + 1) + d + 1) * sizeof *canonical);
  if (!L->offset || !L->bary || !scratch || !canonical) {
    free(scratch); free(canonical); fm__lattice_free(L);
    return fm__error("dense_crf: out of memory for a lattice of %lld points", (long long)n);
  }
  float *scale = scratch, *f = scale + (d + 2), *elevated = f + (d + 2), *rem0 = elevated + (d + 2),
        *rank = rem0 + (d + 2);
  float bary[32];
  int16_t *key = canonical + (d + 1) * (d + 1);
  for (int i = 0; i <= d; ++i) {
    for (int j = 0; j <= d - i; ++j) canonical[i * (d + 1) + j] = (int16_t)i;
    for (int j = d - i + 1; j <= d; ++j) canonical[i * (d + 1) + j] = (int16_t)(i - (d + 1));
  }
  float inv_std = (float)(sqrt(2.0 / 3.0) * (d + 1));
  for (int i = 0; i < d; ++i) scale[i] = (float)(1.0 / sqrt((double)((i + 2) * (i + 1))) * inv_std);
  /* blocks of four points, the last padded with zero features */
  int64_t padded = (n + 3) / 4 * 4;
  for (int64_t k = 0; k < padded; ++k) {
    for (int j = 0; j < d; ++j) f[j] = k < n ? features[k * d + j] : 0.0f;
    if (!fm__lattice_embed(L, f, scale, canonical, k, elevated, rem0, rank, bary, key)) {
      free(scratch); free(canonical); fm__lattice_free(L);
      return -1;
    }
  }
  /* each vertex's two neighbours along each of the d + 1 axes */
  int64_t m = L->m;
  L->nb1 = malloc((size_t)((d + 1) * m) * sizeof *L->nb1);
  L->nb2 = malloc((size_t)((d + 1) * m) * sizeof *L->nb2);
  int16_t *n1 = malloc((size_t)(2 * (d + 1)) * sizeof *n1);
  if (!L->nb1 || !L->nb2 || !n1) {
    free(n1); free(scratch); free(canonical); fm__lattice_free(L);
    return fm__error("dense_crf: out of memory for the lattice's neighbours");
  }
  int16_t *n2 = n1 + (d + 1);
  for (int j = 0; j <= d; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      const int16_t *kk = L->keys + i * d;
      for (int q = 0; q < d; ++q) { n1[q] = (int16_t)(kk[q] - 1); n2[q] = (int16_t)(kk[q] + 1); }
      if (j < d) { n1[j] = (int16_t)(kk[j] + d); n2[j] = (int16_t)(kk[j] - d); }
      L->nb1[j * m + i] = fm__lattice_find(L, n1, false);
      L->nb2[j * m + i] = fm__lattice_find(L, n2, false);
      if (L->nb1[j * m + i] < -1 || L->nb2[j * m + i] < -1) {
        free(n1); free(scratch); free(canonical); fm__lattice_free(L);
        return fm__error("dense_crf: out of memory for the lattice's neighbours");
      }
    }
  }
  free(n1); free(scratch); free(canonical);
  return 0;
}

/* out (n, vs) = the lattice's Gaussian filter of in (n, vs); out may be in.
 * vs <= 2 blurs in double (seqCompute), wider values in float (sseCompute). */
static int fm__lattice_filter(const fm__lattice *L, float *out, const float *in, int vs, bool reverse) {
  int d = L->d;
  int64_t m = L->m, n = L->n;
  float *values = calloc((size_t)((m + 2) * vs), sizeof *values);
  float *next = calloc((size_t)((m + 2) * vs), sizeof *next);
  if (!values || !next) { free(values); free(next); return fm__error("dense_crf: out of memory"); }
  for (int64_t i = 0; i < n; ++i)                                          /* splat */
    for (int j = 0; j <= d; ++j) {
      float w = L->bary[i * (d + 1) + j];
      float *v = values + (L->offset[i * (d + 1) + j] + 1) * vs;
      for (int k = 0; k < vs; ++k) v[k] += w * in[i * vs + k];
    }
  bool wide = vs > 2;
  for (int step = 0; step <= d; ++step) {                                  /* blur */
    int j = reverse ? d - step : step;
    for (int64_t i = 0; i < m; ++i) {
      const float *old = values + (i + 1) * vs;
      const float *a = values + (L->nb1[j * m + i] + 1) * vs, *b = values + (L->nb2[j * m + i] + 1) * vs;
      float *nv = next + (i + 1) * vs;
      if (wide) for (int k = 0; k < vs; ++k) nv[k] = old[k] + 0.5f * (a[k] + b[k]);
      else for (int k = 0; k < vs; ++k) nv[k] = (float)((double)old[k] + 0.5 * (double)(a[k] + b[k]));
    }
    float *t = values; values = next; next = t;
  }
  float alpha = 1.0f / (1.0f + powf(2.0f, (float)-d));
  for (int64_t i = 0; i < n; ++i) {                                        /* slice */
    float acc[64];
    float *o = vs <= 64 ? acc : out + i * vs;
    for (int k = 0; k < vs; ++k) o[k] = 0.0f;
    for (int j = 0; j <= d; ++j) {
      float w = L->bary[i * (d + 1) + j];
      const float *v = values + (L->offset[i * (d + 1) + j] + 1) * vs;
      if (wide) { float wa = w * alpha; for (int k = 0; k < vs; ++k) o[k] += wa * v[k]; }
      else for (int k = 0; k < vs; ++k) o[k] += w * v[k] * alpha;
    }
    if (o == acc) memcpy(out + i * vs, acc, (size_t)vs * sizeof *acc);
  }
  free(values); free(next);
  return 0;
}

/* ---- kernels and mean field ---------------------------------------------------- */

typedef struct fm__kernel {
  fm__lattice lattice;
  float *norm;        /* (n): 1 / sqrt(K 1 + 1e-20) */
  float weight;       /* Potts compatibility */
} fm__kernel;

static int fm__kernel_init(fm__kernel *K, const float *features, int64_t n, int d, float weight, int naive) {
  K->weight = weight;
  K->norm = malloc((size_t)n * sizeof *K->norm);
  if (!K->norm) return fm__error("dense_crf: out of memory");
  if (fm__lattice_init(&K->lattice, features, n, d, naive) != 0) { free(K->norm); K->norm = NULL; return -1; }
  for (int64_t i = 0; i < n; ++i) K->norm[i] = 1.0f;
  if (fm__lattice_filter(&K->lattice, K->norm, K->norm, 1, false) != 0) return -1;
  for (int64_t i = 0; i < n; ++i) K->norm[i] = (float)(1.0 / sqrt((double)K->norm[i] + 1e-20));
  return 0;
}

static void fm__kernel_free(fm__kernel *K) {
  fm__lattice_free(&K->lattice);
  free(K->norm);
  K->norm = NULL;
}

/* tmp (n, c) -= (−w) n ⊙ K(n ⊙ q) */
static int fm__kernel_apply(const fm__kernel *K, float *tmp, const float *q, float *work, int64_t n, int c) {
  for (int64_t i = 0; i < n; ++i)
    for (int l = 0; l < c; ++l) work[i * c + l] = q[i * c + l] * K->norm[i];
  if (fm__lattice_filter(&K->lattice, work, work, c, false) != 0) return -1;
  float mw = -K->weight;
  for (int64_t i = 0; i < n; ++i)
    for (int l = 0; l < c; ++l) tmp[i * c + l] -= mw * (work[i * c + l] * K->norm[i]);
  return 0;
}

/* q (n, c) = per point softmax of e (n, c) */
static void fm__exp_normalize(float *q, const float *e, int64_t n, int c) {
  for (int64_t i = 0; i < n; ++i) {
    const float *x = e + i * c;
    float mx = x[0], s = 0.0f;
    for (int l = 1; l < c; ++l) if (x[l] > mx) mx = x[l];
    for (int l = 0; l < c; ++l) { q[i * c + l] = expf(x[l] - mx); s += q[i * c + l]; }
    for (int l = 0; l < c; ++l) q[i * c + l] /= s;
  }
}

static bool fm__check_crf_params(const fm_crf_params *p) {
  if (!p) return fm__error("dense_crf: params is NULL"), false;
  if (p->iterations < 0) return fm__error("dense_crf: iterations must be >= 0, got %d", p->iterations), false;
  const float v[] = { p->gaussian_sxy, p->bilateral_sxy, p->bilateral_srgb };
  const char *names[] = { "gaussian_sxy", "bilateral_sxy", "bilateral_srgb" };
  for (int i = 0; i < 3; ++i)
    if (!(v[i] > 0.0f) || !isfinite(v[i]))
      return fm__error("dense_crf: %s must be a positive number, got %g", names[i], (double)v[i]), false;
  if (!isfinite(p->gaussian_weight) || !isfinite(p->bilateral_weight))
    return fm__error("dense_crf: the weights must be finite"), false;
  return true;
}

int fm_dense_crf(fm_tensor *q_out, const fm_tensor *unary, const fm_tensor *image, const fm_crf_params *p,
                 int32_t naive) {
  if (!fm__check_input(unary, "dense_crf: unary") || !fm__check_ndim(unary, 3, "dense_crf: unary")) return -1;
  if (!fm__check_output(q_out, "dense_crf: out") ||
      !fm__check_shape(q_out, 3, unary->dims, "dense_crf: out")) return -1;
  if (!fm__check_crf_params(p)) return -1;
  int64_t c64 = unary->dims[0], h = unary->dims[1], w = unary->dims[2], n = h * w;
  if (c64 < 1 || c64 > 4096) return fm__error("dense_crf: %lld labels (1 to 4096)", (long long)c64);
  if (n < 1) return fm__error("dense_crf: an empty %lldx%lld map", (long long)w, (long long)h);
  if (h > 32000 || w > 32000) return fm__error("dense_crf: %lldx%lld is too large", (long long)w, (long long)h);
  if (!image || image->type != FM_U8 || image->ndim != 3 || image->dims[0] != h || image->dims[1] != w ||
      image->dims[2] != 3 || !fm_tensor_is_contiguous(image))
    return fm__error("dense_crf: image must be a contiguous (%lld, %lld, 3) uint8 tensor", (long long)h,
                     (long long)w);
  if (naive && n > 4096) return fm__error("dense_crf: the naive twin is for tests, at most 4096 points");
  int c = (int)c64;
  const float *u = fm__f32(unary);
  for (int64_t i = 0; i < c64 * n; ++i)
    if (!isfinite(u[i])) return fm__error("dense_crf: unary entry %lld is not finite", (long long)i);
  float *neg_u = malloc((size_t)(n * c) * sizeof *neg_u);   /* (n, c): −U, point-major */
  float *q = malloc((size_t)(n * c) * sizeof *q);
  float *tmp = malloc((size_t)(n * c) * sizeof *tmp);
  float *work = malloc((size_t)(n * c) * sizeof *work);
  float *feat = malloc((size_t)(n * 5) * sizeof *feat);
  fm__kernel kernels[2];
  memset(kernels, 0, sizeof kernels);
  int nk = 0, rc = -1;
  if (!neg_u || !q || !tmp || !work || !feat) { fm__error("dense_crf: out of memory for %lld points", (long long)n); goto done; }
  for (int l = 0; l < c; ++l)
    for (int64_t i = 0; i < n; ++i) neg_u[i * c + l] = -u[l * n + i];
  /* addPairwiseGaussian: positions / sxy */
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      feat[(y * w + x) * 2] = (float)x / p->gaussian_sxy;
      feat[(y * w + x) * 2 + 1] = (float)y / p->gaussian_sxy;
    }
  if (fm__kernel_init(&kernels[nk++], feat, n, 2, p->gaussian_weight, naive) != 0) goto done;
  /* addPairwiseBilateral: positions / sxy, colours / srgb */
  const uint8_t *im = image->data;
  for (int64_t i = 0; i < n; ++i) {
    feat[i * 5] = (float)(i % w) / p->bilateral_sxy;
    feat[i * 5 + 1] = (float)(i / w) / p->bilateral_sxy;
    for (int k = 0; k < 3; ++k) feat[i * 5 + 2 + k] = (float)im[i * 3 + k] / p->bilateral_srgb;
  }
  if (fm__kernel_init(&kernels[nk++], feat, n, 5, p->bilateral_weight, naive) != 0) goto done;
  fm__exp_normalize(q, neg_u, n, c);
  for (int it = 0; it < p->iterations; ++it) {
    memcpy(tmp, neg_u, (size_t)(n * c) * sizeof *tmp);
    for (int k = 0; k < nk; ++k)
      if (fm__kernel_apply(&kernels[k], tmp, q, work, n, c) != 0) goto done;
    fm__exp_normalize(q, tmp, n, c);
  }
  float *out = fm__f32(q_out);
  for (int l = 0; l < c; ++l)
    for (int64_t i = 0; i < n; ++i) out[l * n + i] = q[i * c + l];
  rc = 0;
done:
  for (int k = 0; k < nk; ++k) fm__kernel_free(&kernels[k]);
  free(neg_u); free(q); free(tmp); free(work); free(feat);
  return rc;
}
