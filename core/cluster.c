/* cluster.c — clustering of patch features: squared distances, k-means with
 * k-means++ seeding (scikit-learn's KMeans), the silhouette score, and the
 * symmetric and generalized symmetric-definite eigenproblems behind
 * normalized cuts and spectral clustering (LAPACK: ssyevd, ssygvd, and, in
 * double precision, dsygvx / dsyevr when only a few eigenpairs are wanted).
 *
 * Everything is deterministic: the only randomness is k-means++ seeding,
 * drawn from numpy's legacy MT19937 stream seeded by the caller, so that a
 * seed gives scikit-learn's KMeans result under np.random.seed(seed). */
#include "kernels.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- helpers ------------------------------------------------------------------ */

static bool fm__check_matrix(const fm_tensor *t, const char *what) {
  return fm__check_input(t, what) && fm__check_ndim(t, 2, what);
}

/* The first non-finite element of t, or -1. */
static int64_t fm__first_nonfinite(const fm_tensor *t) {
  const float *p = fm__f32(t);
  int64_t n = fm_tensor_numel(t);
  for (int64_t i = 0; i < n; ++i)
    if (!isfinite(p[i])) return i;
  return -1;
}

static bool fm__check_finite(const fm_tensor *t, const char *what) {
  int64_t i = fm__first_nonfinite(t);
  if (i >= 0) {
    int64_t cols = t->ndim == 2 ? t->dims[1] : 1;
    return fm__error("%s: non-finite value %g at row %lld, column %lld", what,
                     (double)fm__f32(t)[i], (long long)(i / cols), (long long)(i % cols)), false;
  }
  return true;
}

/* squared norm of each of the n rows of x (n, d) */
static void fm__row_sqnorms(float *out, const float *x, int64_t n, int64_t d) {
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t j = 0; j < d; ++j) s += (double)x[i * d + j] * x[i * d + j];
    out[i] = (float)s;
  }
}

/* out (n, k) = |x_i|^2 - 2 x_i.c_j + |c_j|^2, clamped at 0 (the expansion
 * can dip below 0 by rounding). x (n, d), c (k, d); xn, cn their squared
 * row norms. */
static void fm__sq_dist(float *out, const float *x, const float *xn, int64_t n, const float *c,
                        const float *cn, int64_t k, int64_t d) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)k, (int)d, -2.f, x, (int)d, c,
              (int)d, 0.f, out, (int)k);
#pragma omp parallel for if (n * k > FM__PAR_MIN)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      float v = out[i * k + j] + xn[i] + cn[j];
      out[i * k + j] = v > 0.f ? v : 0.f;
    }
}

/* exact squared distance of two rows, in double */
static double fm__sq_dist_rows(const float *a, const float *b, int64_t d) {
  double s = 0;
  for (int64_t j = 0; j < d; ++j) {
    double t = (double)a[j] - b[j];
    s += t * t;
  }
  return s;
}

/* numpy's legacy RandomState (MT19937), the generator scikit-learn's KMeans
 * draws from: np.random.seed(seed) / RandomState(seed) seed it with
 * init_genrand; randint(n) is a masked rejection draw of 32-bit words,
 * uniform() / random_sample() 53 bits from two words. The same seed gives
 * the same stream as numpy, so the same k-means++ seeds as scikit-learn. */
typedef struct {
  uint32_t key[624];
  int pos;
} fm__rng;

static void fm__rng_seed(fm__rng *r, uint32_t seed) {
  for (int i = 0; i < 624; ++i) {
    r->key[i] = seed;
    seed = 1812433253u * (seed ^ (seed >> 30)) + (uint32_t)(i + 1);
  }
  r->pos = 624;
}

static uint32_t fm__rng_next32(fm__rng *r) {
  if (r->pos == 624) {
    for (int i = 0; i < 624; ++i) {
      uint32_t y = (r->key[i] & 0x80000000u) | (r->key[(i + 1) % 624] & 0x7fffffffu);
      r->key[i] = r->key[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    r->pos = 0;
  }
  uint32_t y = r->key[r->pos++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  return y ^ (y >> 18);
}

static double fm__rng_uniform(fm__rng *r) {   /* [0, 1): mt19937_next_double */
  uint32_t a = fm__rng_next32(r) >> 5, b = fm__rng_next32(r) >> 6;
  return ((double)a * 67108864.0 + (double)b) / 9007199254740992.0;
}

/* randint(n), 0 <= result < n <= 2^32: buffered_bounded_masked_uint32 */
static int64_t fm__rng_below(fm__rng *r, int64_t n) {
  uint32_t range = (uint32_t)(n - 1), mask = range, v;
  if (range == 0) return 0;
  mask |= mask >> 1, mask |= mask >> 2, mask |= mask >> 4, mask |= mask >> 8, mask |= mask >> 16;
  while ((v = fm__rng_next32(r) & mask) > range) {}
  return (int64_t)v;
}

/* ---- squared distances ---------------------------------------------------------- */

/* x (N, D), c (K, D) -> out (N, K) */
int fm_sq_distances(fm_tensor *out, const fm_tensor *x, const fm_tensor *c) {
  if (!fm__check_matrix(x, "sq_distances: x") || !fm__check_matrix(c, "sq_distances: c")) return -1;
  int64_t n = x->dims[0], d = x->dims[1], k = c->dims[0];
  if (c->dims[1] != d)
    return fm__error("sq_distances: x has %lld features, c has %lld", (long long)d,
                     (long long)c->dims[1]);
  int64_t shape[2] = { n, k };
  if (!fm__check_output(out, "sq_distances: out") || !fm__check_shape(out, 2, shape, "sq_distances: out"))
    return -1;
  if (!fm__blas_fits(n) || !fm__blas_fits(k) || !fm__blas_fits(d))
    return fm__error("sq_distances: sizes beyond BLAS's int");
  if (n == 0 || k == 0) return 0;
  float *xn = malloc(sizeof(float) * (size_t)(n + k));
  if (!xn) return fm__error("sq_distances: out of memory");
  fm__row_sqnorms(xn, fm__f32(x), n, d);
  fm__row_sqnorms(xn + n, fm__f32(c), k, d);
  fm__sq_dist(fm__f32(out), fm__f32(x), xn, n, fm__f32(c), xn + n, k, d);
  free(xn);
  return 0;
}

/* ---- k-means ------------------------------------------------------------------ */

/* Work buffers of one k-means problem: x (n, d) into k clusters. */
typedef struct {
  const float *x;
  int64_t n, d, k;
  float *xn;          /* (n) squared row norms of x */
  float *dist;        /* (n, k) squared distances to the centres */
  float *cn;          /* (k) squared norms of the centres */
  double *sums;       /* (k, d) per-cluster sums */
  int64_t *counts;    /* (k) */
  double *pot;        /* (n) closest squared distance during seeding */
} fm__km;

/* Greedy k-means++ (scikit-learn's _kmeans_plusplus): the first centre a
 * uniformly drawn point; each next one the best, by resulting potential, of
 * 2 + floor(ln k) points drawn with probability proportional to their
 * squared distance to the nearest centre so far. */
static void fm__kmeans_pp(fm__km *w, float *centers, fm__rng *rng) {
  int64_t n = w->n, d = w->d, k = w->k;
  int64_t trials = 2 + (int64_t)log((double)k);
  int64_t first = fm__rng_below(rng, n);
  memcpy(centers, w->x + first * d, sizeof(float) * (size_t)d);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += w->pot[i] = fm__sq_dist_rows(w->x + i * d, centers, d);
  for (int64_t c = 1; c < k; ++c) {
    double best_pot = INFINITY;
    int64_t best = 0;
    for (int64_t t = 0; t < trials; ++t) {
      // rand_vals = uniform(size=trials) * current_pot (drawn in this order);
      // searchsorted(cumsum(pot), target): the first i with cumsum >= target
      double target = fm__rng_uniform(rng) * total, acc = 0;
      int64_t id = n - 1;
      for (int64_t i = 0; i < n; ++i) {
        acc += w->pot[i];
        if (acc >= target) { id = i; break; }
      }
      double p = 0;
      for (int64_t i = 0; i < n; ++i) {
        double dd = fm__sq_dist_rows(w->x + i * d, w->x + id * d, d);
        p += dd < w->pot[i] ? dd : w->pot[i];
      }
      if (p < best_pot) best_pot = p, best = id;
    }
    float *cc = centers + c * d;
    memcpy(cc, w->x + best * d, sizeof(float) * (size_t)d);
    total = 0;
    for (int64_t i = 0; i < n; ++i) {
      double dd = fm__sq_dist_rows(w->x + i * d, cc, d);
      if (dd < w->pot[i]) w->pot[i] = dd;
      total += w->pot[i];
    }
  }
}

/* Assigns each point to its nearest centre (the first on ties); returns how
 * many labels changed and the inertia in *inertia. As scikit-learn's
 * lloyd_iter_chunked_dense, the nearest centre is the argmin of
 * |c_j|^2 - 2 x.c_j (float32 sgemm), |x|^2 left out; w->dist keeps the full
 * squared distances (clamped at 0). */
static int64_t fm__kmeans_assign(fm__km *w, const float *centers, int32_t *labels, double *inertia) {
  int64_t n = w->n, k = w->k, d = w->d, changed = 0;
  fm__row_sqnorms(w->cn, centers, k, d);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)k, (int)d, -2.f, w->x, (int)d, centers,
              (int)d, 0.f, w->dist, (int)k);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    float *row = w->dist + i * k;
    int32_t arg = 0;
    float best = row[0] + w->cn[0];
    for (int64_t j = 1; j < k; ++j) {
      float v = row[j] + w->cn[j];
      if (v < best) best = v, arg = (int32_t)j;
    }
    for (int64_t j = 0; j < k; ++j) {
      float v = row[j] + w->cn[j] + w->xn[i];
      row[j] = v > 0.f ? v : 0.f;
    }
    if (labels[i] != arg) ++changed, labels[i] = arg;
    sum += row[arg];
  }
  *inertia = sum;
  return changed;
}

/* New centres = means of their points. An empty cluster takes the point
 * farthest from its own centre (among clusters of two or more points), as
 * scikit-learn relocates empty clusters. Returns the summed squared shift
 * of the centres. */
static double fm__kmeans_update(fm__km *w, float *centers, int32_t *labels) {
  int64_t n = w->n, d = w->d, k = w->k;
  memset(w->sums, 0, sizeof(double) * (size_t)(k * d));
  memset(w->counts, 0, sizeof(int64_t) * (size_t)k);
  for (int64_t i = 0; i < n; ++i) {
    int64_t c = labels[i];
    ++w->counts[c];
    for (int64_t j = 0; j < d; ++j) w->sums[c * d + j] += w->x[i * d + j];
  }
  for (int64_t c = 0; c < k; ++c) {
    if (w->counts[c] > 0) continue;
    int64_t far = -1;
    for (int64_t i = 0; i < n; ++i)
      if (w->counts[labels[i]] > 1 && (far < 0 || w->dist[i * k + labels[i]] > w->dist[far * k + labels[far]]))
        far = i;
    if (far < 0) break;   /* fewer distinct points than clusters: nothing to move */
    int64_t from = labels[far];
    --w->counts[from];
    for (int64_t j = 0; j < d; ++j) {
      w->sums[from * d + j] -= w->x[far * d + j];
      w->sums[c * d + j] = w->x[far * d + j];
    }
    w->counts[c] = 1;
    labels[far] = (int32_t)c;
  }
  double shift = 0;
  for (int64_t c = 0; c < k; ++c) {
    if (w->counts[c] == 0) continue;
    for (int64_t j = 0; j < d; ++j) {
      float v = (float)(w->sums[c * d + j] / (double)w->counts[c]);
      double t = (double)v - centers[c * d + j];
      shift += t * t;
      centers[c * d + j] = v;
    }
  }
  return shift;
}

/* One run of Lloyd's algorithm from k-means++ seeds; scikit-learn's
 * _kmeans_single_lloyd: stop when no label changes ("strict
 * convergence") or the centres move less than tol_abs; a final assignment
 * makes labels and centres agree. Returns the inertia. */
static double fm__kmeans_run(fm__km *w, float *centers, int32_t *labels, int32_t max_iter,
                             double tol_abs, fm__rng *rng) {
  double inertia = 0;
  fm__kmeans_pp(w, centers, rng);
  for (int64_t i = 0; i < w->n; ++i) labels[i] = -1;
  bool strict = false;
  for (int32_t it = 0; it < max_iter; ++it) {
    int64_t changed = fm__kmeans_assign(w, centers, labels, &inertia);
    if (it > 0 && changed == 0) {
      strict = true;
      break;
    }
    double shift = fm__kmeans_update(w, centers, labels);
    if (shift <= tol_abs) break;
  }
  if (!strict) fm__kmeans_assign(w, centers, labels, &inertia);
  return inertia;
}

/* tol scaled as scikit-learn scales it: by the mean per-feature variance */
static double fm__kmeans_tol(const float *x, int64_t n, int64_t d, double tol) {
  double var = 0;
  for (int64_t j = 0; j < d; ++j) {
    double m = 0, s = 0;
    for (int64_t i = 0; i < n; ++i) m += x[i * d + j];
    m /= (double)n;
    for (int64_t i = 0; i < n; ++i) s += (x[i * d + j] - m) * (x[i * d + j] - m);
    var += s / (double)n;
  }
  return tol * var / (double)d;
}

/* scikit-learn's _is_same_clustering: are a and b (n) the same partition,
 * up to the names of the clusters? */
static bool fm__same_clustering(const int32_t *a, const int32_t *b, int64_t n, int64_t k, int32_t *map) {
  for (int64_t c = 0; c < k; ++c) map[c] = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (map[a[i]] == -1) map[a[i]] = b[i];
    else if (map[a[i]] != b[i]) return false;
  }
  return true;
}

int fm_kmeans(fm_tensor *labels, fm_tensor *centers, const fm_tensor *x, int64_t k,
              int32_t max_iter, double tol, int32_t n_init, uint64_t seed, double *inertia) {
  if (!fm__check_matrix(x, "kmeans: x") || !fm__check_finite(x, "kmeans: x")) return -1;
  int64_t n = x->dims[0], d = x->dims[1];
  if (k < 1 || k > n)
    return fm__error("kmeans: k = %lld, needs 1 <= k <= %lld points", (long long)k, (long long)n);
  if (max_iter < 1 || n_init < 1 || !(tol >= 0))
    return fm__error("kmeans: max_iter (%d) and n_init (%d) must be >= 1, tol (%g) >= 0", (int)max_iter,
                     (int)n_init, tol);
  if (!fm__blas_fits(n) || !fm__blas_fits(d) || !fm__blas_fits(n * k))
    return fm__error("kmeans: sizes beyond BLAS's int");
  int64_t cshape[2] = { k, d };
  if (!labels || labels->type != FM_I32) return fm__error("kmeans: labels must be an int32 tensor");
  if (!fm__check_contiguous(labels, "kmeans: labels") || !fm__check_writable(labels, "kmeans: labels") ||
      !fm__check_shape(labels, 1, &n, "kmeans: labels"))
    return -1;
  if (!fm__check_output(centers, "kmeans: centers") || !fm__check_shape(centers, 2, cshape, "kmeans: centers"))
    return -1;

  if (seed > UINT32_MAX) return fm__error("kmeans: seed %llu is beyond numpy's 2^32 - 1", (unsigned long long)seed);
  fm__km w = { .n = n, .d = d, .k = k };
  /* scikit-learn runs on x minus its mean (copy_x), adds the mean back to the centres */
  float *xc = malloc(sizeof(float) * (size_t)(n * d));
  double *mean = calloc((size_t)d, sizeof(double));
  int32_t *map = malloc(sizeof(int32_t) * (size_t)k);
  w.x = xc;
  w.xn = malloc(sizeof(float) * (size_t)n);
  w.dist = malloc(sizeof(float) * (size_t)(n * k));
  w.cn = malloc(sizeof(float) * (size_t)k);
  w.sums = malloc(sizeof(double) * (size_t)(k * d));
  w.counts = malloc(sizeof(int64_t) * (size_t)k);
  w.pot = malloc(sizeof(double) * (size_t)n);
  float *run_c = malloc(sizeof(float) * (size_t)(k * d));
  int32_t *run_l = malloc(sizeof(int32_t) * (size_t)n);
  int rc = 0;
  if (!xc || !mean || !map || !w.xn || !w.dist || !w.cn || !w.sums || !w.counts || !w.pot || !run_c || !run_l) {
    rc = fm__error("kmeans: out of memory for %lld x %lld points, k = %lld", (long long)n, (long long)d,
                   (long long)k);
  } else {
    const float *xp = fm__f32(x);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < d; ++j) mean[j] += xp[i * d + j];
    for (int64_t j = 0; j < d; ++j) mean[j] /= (double)n;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < d; ++j) xc[i * d + j] = (float)(xp[i * d + j] - mean[j]);
    fm__row_sqnorms(w.xn, w.x, n, d);
    double tol_abs = fm__kmeans_tol(w.x, n, d, tol), best = INFINITY;
    fm__rng rng;
    fm__rng_seed(&rng, (uint32_t)seed);
    int32_t *best_l = (int32_t *)labels->data;
    float *best_c = fm__f32(centers);
    for (int32_t r = 0; r < n_init; ++r) {
      double in = fm__kmeans_run(&w, run_c, run_l, max_iter, tol_abs, &rng);
      /* a later run wins with a lower inertia and a different partition
       * (equal partitions differ in inertia only by rounding) */
      if (r == 0 || (in < best && !fm__same_clustering(run_l, best_l, n, k, map))) {
        best = in;
        memcpy(best_c, run_c, sizeof(float) * (size_t)(k * d));
        memcpy(best_l, run_l, sizeof(int32_t) * (size_t)n);
      }
    }
    for (int64_t c = 0; c < k; ++c)
      for (int64_t j = 0; j < d; ++j) best_c[c * d + j] = (float)(best_c[c * d + j] + mean[j]);
    if (inertia) *inertia = best;
  }
  free(xc), free(mean), free(map);
  free(w.xn), free(w.dist), free(w.cn), free(w.sums), free(w.counts), free(w.pot);
  free(run_c), free(run_l);
  return rc;
}

/* ---- mini-batch k-means ---------------------------------------------------------- */

/* squared row norms as numpy's einsum("ij,ij->i", x, x) computes them in
 * float32 (scikit-learn's row_norms; SSE baseline): four lanes, blocks of
 * sixteen features folded as a0 b0 + (a1 b1 + (a2 b2 + (a3 b3 + acc))), the
 * rest four at a time (zero-filled), then (l0 + l1) + (l2 + l3). */
static void fm__row_sqnorms_einsum(float *out, const float *x, int64_t n, int64_t d) {
  for (int64_t i = 0; i < n; ++i) {
    const float *r = x + i * d;
    float acc[4] = { 0.f, 0.f, 0.f, 0.f };
    int64_t c = 0;
    for (; d - c >= 16; c += 16)
      for (int l = 0; l < 4; ++l) {
        float ab3 = r[c + 12 + l] * r[c + 12 + l] + acc[l];
        float ab2 = r[c + 8 + l] * r[c + 8 + l] + ab3;
        float ab1 = r[c + 4 + l] * r[c + 4 + l] + ab2;
        acc[l] = r[c + l] * r[c + l] + ab1;
      }
    for (; c < d; c += 4)
      for (int l = 0; l < 4; ++l) {
        float a = c + l < d ? r[c + l] : 0.f;
        acc[l] = a * a + acc[l];
      }
    out[i] = 0.f + ((acc[0] + acc[1]) + (acc[2] + acc[3]));
  }
}

/* scikit-learn's _labels_inertia on rows x (n, d) (not centred): labels by
 * the argmin of |c_j|^2 - 2 x.c_j (float32 sgemm, the first on ties), the
 * centre norms as row_norms (fm__row_sqnorms_einsum), the
 * inertia as _inertia_dense sums it: float32, each squared distance by
 * _euclidean_dense_dense (four features per step), rows in order (one
 * OpenMP thread; with more, scikit-learn's float32 reduction order varies).
 * dist (n, k) and cn (k) are scratch. */
static float fm__mbk_labels(int32_t *labels, const float *x, int64_t n, int64_t d, const float *c, int64_t k,
                            float *dist, float *cn) {
  fm__row_sqnorms_einsum(cn, c, k, d);
  /* lloyd_iter_chunked_dense: chunks of 256 rows, each an sgemm with beta 1 onto the centre norms (the
   * chunk size picks OpenBLAS's kernel, and so the rounding) */
  int64_t chunk = n > 256 ? 256 : n;
  for (int64_t s = 0; s < n; s += chunk) {
    int64_t m = n - s < chunk ? n - s : chunk;
    for (int64_t i = s; i < s + m; ++i) memcpy(dist + i * k, cn, sizeof(float) * (size_t)k);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)k, (int)d, -2.f, x + s * d, (int)d, c,
                (int)d, 1.f, dist + s * k, (int)k);
  }
  float inertia = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float *row = dist + i * k;
    int32_t arg = 0;
    float best = row[0];
    for (int64_t j = 1; j < k; ++j) {
      float v = row[j];
      if (v < best) best = v, arg = (int32_t)j;
    }
    labels[i] = arg;
    const float *a = x + i * d, *b = c + arg * d;
    float r = 0.f;
    int64_t q = d / 4, rem = d % 4;
    for (int64_t t = 0; t < q; ++t, a += 4, b += 4) {
      float s0 = (a[0] - b[0]) * (a[0] - b[0]), s1 = (a[1] - b[1]) * (a[1] - b[1]);
      float s2 = (a[2] - b[2]) * (a[2] - b[2]), s3 = (a[3] - b[3]) * (a[3] - b[3]);
      r += ((s0 + s1) + s2) + s3;
    }
    for (int64_t t = 0; t < rem; ++t) r += (a[t] - b[t]) * (a[t] - b[t]);
    inertia += r;
  }
  return inertia;
}

/* _minibatch_update_dense with unit weights: a centre with new points is
 * un-scaled by its count, gets them added, and is divided by the new count
 * (alpha = 1 / count, float32); a centre without new points is copied. */
static void fm__mbk_update(float *c_new, const float *c_old, float *wsum_c, const float *x, const int32_t *labels,
                           int64_t n, int64_t d, int64_t k) {
  for (int64_t c = 0; c < k; ++c) {
    float wsum = 0.f;
    for (int64_t i = 0; i < n; ++i)
      if (labels[i] == c) wsum += 1.f;
    float *cc = c_new + c * d;
    const float *co = c_old + c * d;
    if (wsum > 0.f) {
      for (int64_t j = 0; j < d; ++j) cc[j] = co[j] * wsum_c[c];
      for (int64_t i = 0; i < n; ++i)
        if (labels[i] == c)
          for (int64_t j = 0; j < d; ++j) cc[j] += x[i * d + j] * 1.f;
      wsum_c[c] += wsum;
      float alpha = 1.f / wsum_c[c];
      for (int64_t j = 0; j < d; ++j) cc[j] *= alpha;
    } else {
      memcpy(cc, co, sizeof(float) * (size_t)d);
    }
  }
}

int fm_minibatch_kmeans(fm_tensor *labels, fm_tensor *centers, const fm_tensor *x, int64_t k, int64_t batch_size,
                        int32_t max_iter, int32_t n_init, int32_t max_no_improvement, double reassignment_ratio,
                        uint64_t seed, double *inertia) {
  if (!fm__check_matrix(x, "minibatch_kmeans: x") || !fm__check_finite(x, "minibatch_kmeans: x")) return -1;
  int64_t n = x->dims[0], d = x->dims[1];
  if (k < 1 || k > n)
    return fm__error("minibatch_kmeans: k = %lld, needs 1 <= k <= %lld points", (long long)k, (long long)n);
  if (batch_size < 1 || max_iter < 1 || n_init < 1 || !(reassignment_ratio >= 0))
    return fm__error("minibatch_kmeans: batch_size (%lld), max_iter (%d) and n_init (%d) must be >= 1, "
                     "reassignment_ratio (%g) >= 0", (long long)batch_size, (int)max_iter, (int)n_init,
                     reassignment_ratio);
  if (seed > UINT32_MAX)
    return fm__error("minibatch_kmeans: seed %llu is beyond numpy's 2^32 - 1", (unsigned long long)seed);
  int64_t cshape[2] = { k, d };
  if (!labels || labels->type != FM_I32) return fm__error("minibatch_kmeans: labels must be an int32 tensor");
  if (!fm__check_contiguous(labels, "minibatch_kmeans: labels") ||
      !fm__check_writable(labels, "minibatch_kmeans: labels") ||
      !fm__check_shape(labels, 1, &n, "minibatch_kmeans: labels"))
    return -1;
  if (!fm__check_output(centers, "minibatch_kmeans: centers") ||
      !fm__check_shape(centers, 2, cshape, "minibatch_kmeans: centers"))
    return -1;
  /* _check_params_vs_input */
  int64_t batch = batch_size < n ? batch_size : n;
  int64_t init_size = 3 * batch;
  if (init_size < k) init_size = 3 * k;
  if (init_size > n) init_size = n;
  if (!fm__blas_fits(n) || !fm__blas_fits(d) || !fm__blas_fits(n * k) || !fm__blas_fits(init_size * k))
    return fm__error("minibatch_kmeans: sizes beyond BLAS's int");
  const float *xp = fm__f32(x);
  int64_t rows = n > init_size ? n : init_size;
  float *xs = malloc(sizeof(float) * (size_t)(rows * d));         /* gathered rows */
  float *valid = malloc(sizeof(float) * (size_t)(init_size * d));
  float *dist = malloc(sizeof(float) * (size_t)(rows * k));
  float *cn = malloc(sizeof(float) * (size_t)k);
  float *init_c = malloc(sizeof(float) * (size_t)(k * d)), *c_a = malloc(sizeof(float) * (size_t)(k * d));
  float *c_b = malloc(sizeof(float) * (size_t)(k * d)), *wsum = calloc((size_t)k, sizeof(float));
  int32_t *lab = malloc(sizeof(int32_t) * (size_t)rows);
  int64_t *perm = malloc(sizeof(int64_t) * (size_t)batch);
  int64_t *order = malloc(sizeof(int64_t) * (size_t)k);
  bool *reassign = malloc(sizeof(bool) * (size_t)k);
  fm__km w = { .d = d, .k = k };
  w.pot = malloc(sizeof(double) * (size_t)rows);
  int rc = 0;
  if (!xs || !valid || !dist || !cn || !init_c || !c_a || !c_b || !wsum || !lab || !perm || !order || !reassign ||
      !w.pot) {
    rc = fm__error("minibatch_kmeans: out of memory for %lld x %lld points, k = %lld", (long long)n, (long long)d,
                   (long long)k);
    goto done;
  }
  fm__rng rng;
  fm__rng_seed(&rng, (uint32_t)seed);
  /* the validation set of the inits */
  for (int64_t i = 0; i < init_size; ++i)
    memcpy(valid + i * d, xp + fm__rng_below(&rng, n) * d, sizeof(float) * (size_t)d);
  float best = INFINITY;
  for (int32_t r = 0; r < n_init; ++r) {
    /* _init_centroids: k-means++ on init_size rows drawn with replacement (all rows when init_size == n) */
    if (init_size < n) {
      for (int64_t i = 0; i < init_size; ++i)
        memcpy(xs + i * d, xp + fm__rng_below(&rng, n) * d, sizeof(float) * (size_t)d);
      w.x = xs, w.n = init_size;
    } else {
      w.x = xp, w.n = n;
    }
    fm__kmeans_pp(&w, c_a, &rng);
    float in = fm__mbk_labels(lab, valid, init_size, d, c_a, k, dist, cn);
    if (r == 0 || in < best) best = in, memcpy(init_c, c_a, sizeof(float) * (size_t)(k * d));
  }
  float *c_old = c_a, *c_new = c_b;
  memcpy(c_old, init_c, sizeof(float) * (size_t)(k * d));
  int64_t n_steps = ((int64_t)max_iter * n) / batch, since_reassign = 0, no_improvement = 0;
  double ewa = 0, ewa_min = 0;
  bool have_ewa = false, have_min = false;
  for (int64_t step = 0; step < n_steps; ++step) {
    for (int64_t i = 0; i < batch; ++i)
      memcpy(xs + i * d, xp + fm__rng_below(&rng, n) * d, sizeof(float) * (size_t)d);
    /* _random_reassign, evaluated before the step: an empty centre, or 10 k samples seen */
    bool any_empty = false;
    for (int64_t c = 0; c < k; ++c) any_empty |= wsum[c] == 0.f;
    since_reassign += batch;
    bool do_reassign = false;
    if (any_empty || since_reassign >= 10 * k) since_reassign = 0, do_reassign = true;
    /* _mini_batch_step */
    float batch_inertia = fm__mbk_labels(lab, xs, batch, d, c_old, k, dist, cn);
    fm__mbk_update(c_new, c_old, wsum, xs, lab, batch, d, k);
    if (do_reassign && reassignment_ratio > 0) {
      float top = wsum[0];
      for (int64_t c = 1; c < k; ++c) top = wsum[c] > top ? wsum[c] : top;
      /* weight_sums < ratio * max: a float64 product compared in float32 */
      float thr = (float)(reassignment_ratio * (double)top);
      int64_t count = 0;
      for (int64_t c = 0; c < k; ++c) count += reassign[c] = wsum[c] < thr;
      if ((double)count > 0.5 * (double)batch) {
        /* keep the int(0.5 batch) smallest counts (np.argsort; stable here) */
        for (int64_t c = 0; c < k; ++c) order[c] = c;
        for (int64_t a = 1; a < k; ++a)
          for (int64_t b = a; b > 0 && wsum[order[b]] < wsum[order[b - 1]]; --b) {
            int64_t t = order[b];
            order[b] = order[b - 1], order[b - 1] = t;
          }
        for (int64_t c = (int64_t)(0.5 * (double)batch); c < k; ++c) reassign[order[c]] = false;
        count = 0;
        for (int64_t c = 0; c < k; ++c) count += reassign[c];
      }
      if (count > 0) {
        /* choice(batch, replace=False, size=count) = permutation(batch)[:count]: a Fisher-Yates shuffle
         * of arange(batch) by random_interval (legacy RandomState.shuffle) */
        for (int64_t i = 0; i < batch; ++i) perm[i] = i;
        for (int64_t i = batch - 1; i >= 1; --i) {
          int64_t j = fm__rng_below(&rng, i + 1), t = perm[i];
          perm[i] = perm[j], perm[j] = t;
        }
        float low = INFINITY;
        for (int64_t c = 0; c < k; ++c)
          if (!reassign[c] && wsum[c] < low) low = wsum[c];
        for (int64_t c = 0, m = 0; c < k; ++c)
          if (reassign[c]) memcpy(c_new + c * d, xs + perm[m++] * d, sizeof(float) * (size_t)d);
        for (int64_t c = 0; c < k; ++c)
          if (reassign[c]) wsum[c] = low;
      }
    }
    float *t = c_old;
    c_old = c_new, c_new = t;
    /* _mini_batch_convergence (tol 0): the exponentially weighted mean batch inertia stops improving */
    if (step == 0) continue;
    double b = (double)batch_inertia / (double)batch;
    if (!have_ewa) {
      ewa = b, have_ewa = true;
    } else {
      double alpha = (double)batch * 2.0 / (double)(n + 1);
      if (alpha > 1) alpha = 1;
      ewa = ewa * (1 - alpha) + b * alpha;
    }
    if (!have_min || ewa < ewa_min) {
      no_improvement = 0, ewa_min = ewa, have_min = true;
    } else {
      ++no_improvement;
    }
    if (max_no_improvement > 0 && no_improvement >= max_no_improvement) break;
  }
  memcpy(fm__f32(centers), c_old, sizeof(float) * (size_t)(k * d));
  {
    float in = fm__mbk_labels(lab, xp, n, d, c_old, k, dist, cn);
    memcpy(labels->data, lab, sizeof(int32_t) * (size_t)n);
    if (inertia) *inertia = in;
  }
done:
  free(xs), free(valid), free(dist), free(cn), free(init_c), free(c_a), free(c_b), free(wsum), free(lab);
  free(perm), free(order), free(reassign), free(w.pot);
  return rc;
}

/* ---- silhouette ---------------------------------------------------------------- */

/* scikit-learn's silhouette_score with Euclidean distances: for point i in
 * cluster A, a = mean distance to the other points of A, b = the smallest
 * mean distance to the points of another cluster, s = (b - a) / max(a, b);
 * s = 0 for points alone in their cluster. Mean over all points. Distances
 * are computed a block of rows at a time, never (N, N) at once. */
int fm_silhouette(double *score, const fm_tensor *x, const fm_tensor *labels, int64_t k) {
  if (!score) return fm__error("silhouette: score is NULL");
  if (!fm__check_matrix(x, "silhouette: x") || !fm__check_finite(x, "silhouette: x")) return -1;
  int64_t n = x->dims[0], d = x->dims[1];
  if (!labels || labels->type != FM_I32) return fm__error("silhouette: labels must be int32");
  if (!fm__check_contiguous(labels, "silhouette: labels") || !fm__check_shape(labels, 1, &n, "silhouette: labels"))
    return -1;
  if (!fm__blas_fits(n) || !fm__blas_fits(d)) return fm__error("silhouette: sizes beyond BLAS's int");
  const int32_t *lab = labels->data;
  int64_t used = 0;
  int64_t *counts = calloc((size_t)(k > 0 ? k : 1), sizeof(int64_t));
  if (!counts) return fm__error("silhouette: out of memory");
  for (int64_t i = 0; i < n; ++i) {
    if (lab[i] < 0 || lab[i] >= k) {
      free(counts);
      return fm__error("silhouette: label %d of point %lld is outside [0, %lld)", (int)lab[i], (long long)i,
                       (long long)k);
    }
    if (counts[lab[i]]++ == 0) ++used;
  }
  if (used < 2 || used > n - 1) {
    free(counts);
    return fm__error("silhouette: needs 2 to n - 1 = %lld non-empty clusters, got %lld", (long long)(n - 1),
                     (long long)used);
  }
  enum { BLOCK = 256 };
  float *xn = malloc(sizeof(float) * (size_t)n);
  float *dist = malloc(sizeof(float) * (size_t)(BLOCK * n));
  double *sums = malloc(sizeof(double) * (size_t)(BLOCK * k));
  if (!xn || !dist || !sums) {
    free(counts), free(xn), free(dist), free(sums);
    return fm__error("silhouette: out of memory");
  }
  const float *p = fm__f32(x);
  fm__row_sqnorms(xn, p, n, d);
  double total = 0;
  for (int64_t r0 = 0; r0 < n; r0 += BLOCK) {
    int64_t m = n - r0 < BLOCK ? n - r0 : BLOCK;
    fm__sq_dist(dist, p + r0 * d, xn + r0, m, p, xn, n, d);
    memset(sums, 0, sizeof(double) * (size_t)(m * k));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        if (j != r0 + i) sums[i * k + lab[j]] += sqrt((double)dist[i * n + j]);
    for (int64_t i = 0; i < m; ++i) {
      int32_t own = lab[r0 + i];
      if (counts[own] < 2) continue;   /* s = 0 */
      double a = sums[i * k + own] / (double)(counts[own] - 1), b = INFINITY;
      for (int64_t c = 0; c < k; ++c)
        if (c != own && counts[c] > 0 && sums[i * k + c] / (double)counts[c] < b) b = sums[i * k + c] / (double)counts[c];
      double den = a > b ? a : b;
      total += den > 0 ? (b - a) / den : 0;
    }
  }
  *score = total / (double)n;
  free(counts), free(xn), free(dist), free(sums);
  return 0;
}

/* ---- symmetric eigenproblems ------------------------------------------------------ */

/* Common checks: a (N, N) finite, w (N), v (N, N). */
static bool fm__check_eig(const fm_tensor *w, const fm_tensor *v, const fm_tensor *a, const char *what,
                          const char *aname) {
  char buf[64];
  snprintf(buf, sizeof buf, "%s: %s", what, aname);
  if (!fm__check_matrix(a, buf)) return false;
  int64_t n = a->dims[0];
  if (a->dims[1] != n) return fm__error("%s: %s must be square, got %lld x %lld", what, aname,
                                        (long long)n, (long long)a->dims[1]), false;
  if (!fm__check_finite(a, buf)) return false;
  if (n > INT32_MAX / (n > 0 ? n : 1)) return fm__error("%s: n = %lld is beyond LAPACK's int", what, (long long)n), false;
  int64_t vshape[2] = { n, n };
  snprintf(buf, sizeof buf, "%s: w", what);
  if (!fm__check_output(w, buf) || !fm__check_shape(w, 1, &n, buf)) return false;
  snprintf(buf, sizeof buf, "%s: v", what);
  return fm__check_output(v, buf) && fm__check_shape(v, 2, vshape, buf);
}

/* Workspace of ssyevd / ssygvd with eigenvectors, sized by the formulas of
 * their documentation. LAPACK's own size query returns the size as a float,
 * which rounds below the true 1 + 6n + 2n^2 from n ~ 2900 on (LAPACK before
 * 3.11), and the call then fails with "parameter 11 had an illegal value". */
typedef struct {
  float *work;
  lapack_int *iwork;
  lapack_int lwork, liwork;
} fm__lwork;

static bool fm__lwork_alloc(fm__lwork *ws, int64_t n, const char *what) {
  int64_t lwork = 1 + 6 * n + 2 * n * n, liwork = 3 + 5 * n;
  ws->lwork = (lapack_int)lwork, ws->liwork = (lapack_int)liwork;
  ws->work = lwork <= INT32_MAX ? malloc(sizeof(float) * (size_t)lwork) : NULL;
  ws->iwork = malloc(sizeof(lapack_int) * (size_t)liwork);
  if (!ws->work || !ws->iwork) {
    free(ws->work), free(ws->iwork);
    return fm__error("%s: cannot allocate LAPACK's workspace for n = %lld", what, (long long)n), false;
  }
  return true;
}

static void fm__lwork_free(fm__lwork *ws) { free(ws->work), free(ws->iwork); }

/* a (N, N) symmetric (upper triangle read) -> w (N) ascending, v (N, N) with
 * row i the unit eigenvector of w[i]. v may be a. */
int fm_eigh(fm_tensor *w, fm_tensor *v, const fm_tensor *a) {
  if (!fm__check_eig(w, v, a, "eigh", "a")) return -1;
  int64_t n = a->dims[0];
  if (n == 0) return 0;
  if (v->data != a->data) memcpy(v->data, a->data, sizeof(float) * (size_t)(n * n));
  // Column-major, lower triangle: the row-major upper triangle; eigenvector
  // i comes back in column-major column i, which is row-major row i.
  fm__lwork ws;
  if (!fm__lwork_alloc(&ws, n, "eigh")) return -1;
  lapack_int info = LAPACKE_ssyevd_work(LAPACK_COL_MAJOR, 'V', 'L', (lapack_int)n, fm__f32(v), (lapack_int)n,
                                        fm__f32(w), ws.work, ws.lwork, ws.iwork, ws.liwork);
  fm__lwork_free(&ws);
  if (info < 0) return fm__error("eigh: LAPACK ssyevd rejected argument %d", (int)-info);
  if (info > 0) return fm__error("eigh: LAPACK ssyevd did not converge (info %d)", (int)info);
  return 0;
}

/* a y = lambda b y, a symmetric, b symmetric positive definite (upper
 * triangles read) -> w (N) ascending, v (N, N) with row i the eigenvector
 * of w[i], normalised so that v b vᵀ = I (as LAPACK and scipy give them). */
int fm_eigh_generalized(fm_tensor *w, fm_tensor *v, const fm_tensor *a, const fm_tensor *b) {
  if (!fm__check_eig(w, v, a, "eigh_generalized", "a")) return -1;
  int64_t n = a->dims[0];
  if (!fm__check_matrix(b, "eigh_generalized: b") || !fm__check_shape(b, 2, a->dims, "eigh_generalized: b") ||
      !fm__check_finite(b, "eigh_generalized: b"))
    return -1;
  if (n == 0) return 0;
  float *bf = malloc(sizeof(float) * (size_t)(n * n));   /* ssygvd overwrites b */
  if (!bf) return fm__error("eigh_generalized: out of memory for n = %lld", (long long)n);
  memcpy(bf, b->data, sizeof(float) * (size_t)(n * n));
  if (v->data != a->data) memcpy(v->data, a->data, sizeof(float) * (size_t)(n * n));
  fm__lwork ws;
  if (!fm__lwork_alloc(&ws, n, "eigh_generalized")) return free(bf), -1;
  lapack_int info = LAPACKE_ssygvd_work(LAPACK_COL_MAJOR, 1, 'V', 'L', (lapack_int)n, fm__f32(v), (lapack_int)n,
                                        bf, (lapack_int)n, fm__f32(w), ws.work, ws.lwork, ws.iwork, ws.liwork);
  fm__lwork_free(&ws);
  free(bf);
  if (info < 0) return fm__error("eigh_generalized: LAPACK ssygvd rejected argument %d", (int)-info);
  if (info > n)
    return fm__error("eigh_generalized: b is not positive definite (leading minor of order %d)",
                     (int)(info - n));
  if (info > 0) return fm__error("eigh_generalized: LAPACK ssygvd did not converge (info %d)", (int)info);
  return 0;
}

/* Is the (n, n) matrix b diagonal? */
static bool fm__is_diagonal(const float *b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (i != j && b[i * n + j] != 0.f) return false;
  return true;
}

/* Diagonal b: with s = b^-1/2, a y = w b y is (s a s) z = w z, y = s z,
 * solved by MRRR (dsyevr) on the scaled matrix. Its vectors z are
 * orthonormal, so the y are b-orthonormal as dsygvx makes them. af (n, n)
 * holds a, overwritten; the diagonal of b must be positive. */
static lapack_int fm__subset_diagonal(double *af, const float *b, int64_t n, int64_t first, int64_t count,
                                      double *wall, double *z, lapack_int *isuppz, lapack_int *m) {
  for (int64_t i = 0; i < n; ++i)
    if (!(b[i * n + i] > 0.f)) return (lapack_int)(n + i + 1); /* as potrf reports it */
  double *s = malloc(sizeof(double) * (size_t)n);
  if (!s) return -1000;
  for (int64_t i = 0; i < n; ++i) s[i] = 1.0 / sqrt((double)b[i * n + i]);
#pragma omp parallel for if (n * n > FM__PAR_MIN)
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) af[i * n + j] *= s[i] * s[j];
  lapack_int info = LAPACKE_dsyevr(LAPACK_COL_MAJOR, 'V', 'I', 'L', (lapack_int)n, af, (lapack_int)n, 0.0, 0.0,
                                   (lapack_int)(first + 1), (lapack_int)(first + count), 0.0, m, wall, z,
                                   (lapack_int)n, isuppz);
  for (int64_t r = 0; info == 0 && r < *m; ++r)
    for (int64_t i = 0; i < n; ++i) z[r * n + i] *= s[i];
  free(s);
  return info;
}

/* The eigenpairs first .. first + count - 1 (0-based, ascending) of
 * a y = lambda b y without computing the others, in double precision
 * (float32 in and out): LAPACK dsygvx (range "I"), what
 * scipy.linalg.eigh(a, b, subset_by_index=...) calls on TokenCut's float64
 * graph, or, when b is diagonal (normalized cuts), MRRR on the scaled
 * standard problem, several times faster. Single precision would move the
 * vectors by ~1e-4 of their size on graphs with close eigenvalues, enough
 * to flip patches that sit near TokenCut's mean split. w (count), v
 * (count, N) with rows b-orthonormal. */
int fm_eigh_generalized_subset(fm_tensor *w, fm_tensor *v, const fm_tensor *a, const fm_tensor *b,
                               int64_t first, int64_t count) {
  if (!fm__check_matrix(a, "eigh_generalized_subset: a")) return -1;
  int64_t n = a->dims[0];
  if (a->dims[1] != n)
    return fm__error("eigh_generalized_subset: a must be square, got %lld x %lld", (long long)n,
                     (long long)a->dims[1]);
  if (first < 0 || count < 1 || first + count > n)
    return fm__error("eigh_generalized_subset: eigenpairs %lld .. %lld of %lld", (long long)first,
                     (long long)(first + count - 1), (long long)n);
  if (n > INT32_MAX / n) return fm__error("eigh_generalized_subset: n = %lld is beyond LAPACK's int", (long long)n);
  int64_t vshape[2] = { count, n };
  if (!fm__check_finite(a, "eigh_generalized_subset: a") || !fm__check_matrix(b, "eigh_generalized_subset: b") ||
      !fm__check_shape(b, 2, a->dims, "eigh_generalized_subset: b") ||
      !fm__check_finite(b, "eigh_generalized_subset: b") || !fm__check_output(w, "eigh_generalized_subset: w") ||
      !fm__check_shape(w, 1, &count, "eigh_generalized_subset: w") ||
      !fm__check_output(v, "eigh_generalized_subset: v") || !fm__check_shape(v, 2, vshape, "eigh_generalized_subset: v"))
    return -1;
  bool diagonal = fm__is_diagonal(fm__f32(b), n);
  /* af (n, n), then wall (n), then z (count, n), then bf (n, n) when b is not diagonal */
  double *af = malloc(sizeof(double) * (size_t)((diagonal ? 1 : 2) * n * n + n + count * n));
  lapack_int *iwork = malloc(sizeof(lapack_int) * (size_t)(2 * n));
  if (!af || !iwork) {
    free(af), free(iwork);
    return fm__error("eigh_generalized_subset: out of memory for n = %lld", (long long)n);
  }
  double *wall = af + n * n, *z = wall + n, *bf = z + count * n;
  const float *ap = fm__f32(a);
  for (int64_t i = 0; i < n * n; ++i) af[i] = ap[i];
  lapack_int m = 0, info;
  if (diagonal) {
    info = fm__subset_diagonal(af, fm__f32(b), n, first, count, wall, z, iwork, &m);
  } else {
    const float *bp = fm__f32(b);
    for (int64_t i = 0; i < n * n; ++i) bf[i] = bp[i];
    // abstol = 2 * safe minimum: the most accurate eigenvalues dsygvx offers
    info = LAPACKE_dsygvx(LAPACK_COL_MAJOR, 1, 'V', 'I', 'L', (lapack_int)n, af, (lapack_int)n, bf, (lapack_int)n,
                          0.0, 0.0, (lapack_int)(first + 1), (lapack_int)(first + count), 2 * LAPACKE_dlamch('S'),
                          &m, wall, z, (lapack_int)n, iwork);
  }
  int rc = 0;
  if (info == -1000) rc = fm__error("eigh_generalized_subset: out of memory for n = %lld", (long long)n);
  else if (info < 0) rc = fm__error("eigh_generalized_subset: LAPACK rejected argument %d", (int)-info);
  else if (info > n)
    rc = fm__error("eigh_generalized_subset: b is not positive definite (leading minor of order %d)",
                   (int)(info - n));
  else if (info > 0) rc = fm__error("eigh_generalized_subset: LAPACK did not converge (info %d)", (int)info);
  else if (m != count) rc = fm__error("eigh_generalized_subset: LAPACK found %d eigenvalues, not %lld", (int)m,
                                      (long long)count);
  else {
    float *wp = fm__f32(w), *vp = fm__f32(v);
    for (int64_t i = 0; i < count; ++i) wp[i] = (float)wall[i];
    for (int64_t i = 0; i < count * n; ++i) vp[i] = (float)z[i];
  }
  free(af), free(iwork);
  return rc;
}

/* ---- thin SVD ---------------------------------------------------------------------- */

/* a (M, N) F32 -> u (M, K), s (K), vt (K, N) with K = min(M, N): LAPACK
 * sgesdd (jobz 'S') on the column-major copy of a, with the optimal
 * workspace from a query, as scipy.linalg.svd(a, full_matrices=False)
 * calls it (scikit-learn's PCA, svd_solver "full"). */
int fm_svd(fm_tensor *u, fm_tensor *s, fm_tensor *vt, const fm_tensor *a) {
  if (!fm__check_matrix(a, "svd: a") || !fm__check_finite(a, "svd: a")) return -1;
  int64_t m = a->dims[0], n = a->dims[1], k = m < n ? m : n;
  int64_t ushape[2] = { m, k }, vshape[2] = { k, n };
  if (!fm__check_output(u, "svd: u") || !fm__check_shape(u, 2, ushape, "svd: u") ||
      !fm__check_output(s, "svd: s") || !fm__check_shape(s, 1, &k, "svd: s") ||
      !fm__check_output(vt, "svd: vt") || !fm__check_shape(vt, 2, vshape, "svd: vt"))
    return -1;
  if (!fm__blas_fits(m * n)) return fm__error("svd: sizes beyond LAPACK's int");
  if (k == 0) return 0;
  float *ac = malloc(sizeof(float) * (size_t)(m * n)), *uc = malloc(sizeof(float) * (size_t)(m * k));
  float *vc = malloc(sizeof(float) * (size_t)(k * n));
  lapack_int *iwork = malloc(sizeof(lapack_int) * (size_t)(8 * k));
  float *work = NULL;
  int rc = 0, threads = 0;
  if (!ac || !uc || !vc || !iwork) {
    rc = fm__error("svd: out of memory for %lld x %lld", (long long)m, (long long)n);
    goto done;
  }
  const float *ap = fm__f32(a);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) ac[j * m + i] = ap[i * n + j];
  /* one BLAS thread: OpenBLAS's threaded LAPACK rounds differently with the thread count (the
   * references are single-threaded runs) */
  threads = fm_get_threads();
  fm_set_threads(1);
  float query;
  lapack_int info = LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'S', (lapack_int)m, (lapack_int)n, ac, (lapack_int)m,
                                        fm__f32(s), uc, (lapack_int)m, vc, (lapack_int)k, &query, -1, iwork);
  if (info != 0) {
    rc = fm__error("svd: sgesdd workspace query failed (info %d)", (int)info);
    goto done;
  }
  lapack_int lwork = (lapack_int)query;
  work = malloc(sizeof(float) * (size_t)(lwork > 1 ? lwork : 1));
  if (!work) {
    rc = fm__error("svd: out of memory for the workspace");
    goto done;
  }
  info = LAPACKE_sgesdd_work(LAPACK_COL_MAJOR, 'S', (lapack_int)m, (lapack_int)n, ac, (lapack_int)m, fm__f32(s), uc,
                             (lapack_int)m, vc, (lapack_int)k, work, lwork, iwork);
  if (info != 0) {
    rc = fm__error("svd: sgesdd did not converge (info %d)", (int)info);
    goto done;
  }
  float *up = fm__f32(u), *vp = fm__f32(vt);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) up[i * k + j] = uc[j * m + i];
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < n; ++j) vp[i * n + j] = vc[j * k + i];
done:
  if (threads > 0) fm_set_threads(threads);
  free(ac), free(uc), free(vc), free(iwork), free(work);
  return rc;
}

/* ---- randomized SVD ---------------------------------------------------------------- */

/* numpy's legacy RandomState.normal(): the polar Box-Muller pair, the second
 * value kept for the next draw (legacy_gauss). */
typedef struct {
  fm__rng rng;
  bool has_gauss;
  double gauss;
} fm__gauss_rng;

static double fm__rng_gauss(fm__gauss_rng *g) {
  if (g->has_gauss) {
    g->has_gauss = false;
    return g->gauss;
  }
  double x1, x2, r2;
  do {
    x1 = 2.0 * fm__rng_uniform(&g->rng) - 1.0;
    x2 = 2.0 * fm__rng_uniform(&g->rng) - 1.0;
    r2 = x1 * x1 + x2 * x2;
  } while (r2 >= 1.0 || r2 == 0.0);
  double f = sqrt(-2.0 * log(r2) / r2);
  g->gauss = f * x1, g->has_gauss = true;
  return f * x2;
}

/* scipy.linalg.lu(y, permute_l=True) for y (m, r) row-major: sgetrf on its
 * column-major copy, then P L (unit lower, m x r, column-major) by slaswp
 * with the pivots backwards (scipy's flinalg lu). out: (m x r) column-major. */
static int fm__lu_pl(float *out, const float *y, int64_t m, int64_t r, float *work, lapack_int *piv) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < r; ++j) work[j * m + i] = y[i * r + j];
  lapack_int info = LAPACKE_sgetrf_work(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)r, work, (lapack_int)m, piv);
  if (info < 0) return fm__error("randomized_svd: sgetrf argument %d", (int)-info);
  int64_t k = m < r ? m : r;
  for (int64_t j = 0; j < k; ++j)
    for (int64_t i = 0; i < m; ++i) out[j * m + i] = i == j ? 1.f : (i > j ? work[j * m + i] : 0.f);
  LAPACKE_slaswp_work(LAPACK_COL_MAJOR, (lapack_int)k, out, (lapack_int)m, 1, (lapack_int)k, piv, -1);
  return 0;
}

int fm_randomized_svd(fm_tensor *u, fm_tensor *s, fm_tensor *vt, const fm_tensor *a, int64_t n_components,
                      int64_t n_oversamples, int32_t n_iter, uint64_t seed) {
  if (!fm__check_matrix(a, "randomized_svd: a") || !fm__check_finite(a, "randomized_svd: a")) return -1;
  int64_t m = a->dims[0], n = a->dims[1], r = n_components + n_oversamples;
  if (m < n) return fm__error("randomized_svd: a is %lld x %lld; needs rows >= columns (no transpose)",
                              (long long)m, (long long)n);
  if (n_components < 1 || n_oversamples < 0 || r > n || n_iter < 0)
    return fm__error("randomized_svd: n_components %lld + n_oversamples %lld must be in [1, %lld], n_iter >= 0",
                     (long long)n_components, (long long)n_oversamples, (long long)n);
  if (seed > UINT32_MAX) return fm__error("randomized_svd: seed %llu is beyond numpy's 2^32 - 1",
                                          (unsigned long long)seed);
  int64_t ushape[2] = { m, n_components }, vshape[2] = { n_components, n };
  if (!fm__check_output(u, "randomized_svd: u") || !fm__check_shape(u, 2, ushape, "randomized_svd: u") ||
      !fm__check_output(s, "randomized_svd: s") || !fm__check_shape(s, 1, &n_components, "randomized_svd: s") ||
      !fm__check_output(vt, "randomized_svd: vt") || !fm__check_shape(vt, 2, vshape, "randomized_svd: vt"))
    return -1;
  if (!fm__blas_fits(m * n) || !fm__blas_fits(m * r)) return fm__error("randomized_svd: sizes beyond BLAS's int");
  const float *A = fm__f32(a);
  float *q = malloc(sizeof(float) * (size_t)(m * r));      /* Q, column-major (F-ordered, as lu returns it) */
  float *y = malloc(sizeof(float) * (size_t)(m * r));      /* products, row-major */
  float *w = malloc(sizeof(float) * (size_t)(m * r));
  float *tau = malloc(sizeof(float) * (size_t)r);
  float *b = malloc(sizeof(float) * (size_t)(r * n)), *uh = malloc(sizeof(float) * (size_t)(r * r));
  float *sv = malloc(sizeof(float) * (size_t)r), *vh = malloc(sizeof(float) * (size_t)(r * n));
  float *uu = malloc(sizeof(float) * (size_t)(m * r));
  lapack_int *piv = malloc(sizeof(lapack_int) * (size_t)r);
  float *work = NULL;
  fm_tensor *tb = NULL, *tu = NULL, *ts = NULL, *tv = NULL;
  int rc = 0, threads = 0;
  if (!q || !y || !w || !tau || !b || !uh || !sv || !vh || !uu || !piv) {
    rc = fm__error("randomized_svd: out of memory for %lld x %lld", (long long)m, (long long)n);
    goto done;
  }
  /* one BLAS thread, as for fm_svd (fm_svd below pins and restores it too) */
  threads = fm_get_threads();
  fm_set_threads(1);
  /* Q = normal(size=(n, r)).astype(float32), drawn in C order; kept row-major (n x r) for the first product */
  fm__gauss_rng g = { .has_gauss = false };
  fm__rng_seed(&g.rng, (uint32_t)seed);
  for (int64_t i = 0; i < n * r; ++i) w[i] = (float)fm__rng_gauss(&g);
  bool q_rowmajor = true;   /* w holds the first Q (n x r, C order) */
  for (int32_t it = 0; it < n_iter; ++it) {
    /* Q, _ = lu(A @ Q, permute_l=True) */
    if (q_rowmajor)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)r, (int)n, 1.f, A, (int)n, w, (int)r,
                  0.f, y, (int)r);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)r, (int)n, 1.f, A, (int)n, q, (int)n,
                  0.f, y, (int)r);
    if ((rc = fm__lu_pl(q, y, m, r, w, piv))) goto done;
    q_rowmajor = false;
    /* Q, _ = lu(A.T @ Q, permute_l=True): A.T and Q both F-ordered */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, (int)n, (int)r, (int)m, 1.f, A, (int)n, q, (int)m, 0.f, y,
                (int)r);
    if ((rc = fm__lu_pl(q, y, n, r, w, piv))) goto done;
  }
  /* Q, _ = qr(A @ Q, mode="economic"): sgeqrf then sorgqr with geqrf's optimal workspace */
  if (q_rowmajor)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)r, (int)n, 1.f, A, (int)n, w, (int)r, 0.f,
                y, (int)r);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)r, (int)n, 1.f, A, (int)n, q, (int)n, 0.f, y,
                (int)r);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < r; ++j) q[j * m + i] = y[i * r + j];
  float query;
  lapack_int info = LAPACKE_sgeqrf_work(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)r, q, (lapack_int)m, tau,
                                        &query, -1);
  if (info != 0) { rc = fm__error("randomized_svd: sgeqrf query (info %d)", (int)info); goto done; }
  lapack_int lwork = (lapack_int)query;
  work = malloc(sizeof(float) * (size_t)(lwork > 1 ? lwork : 1));
  if (!work) { rc = fm__error("randomized_svd: out of memory for the workspace"); goto done; }
  info = LAPACKE_sgeqrf_work(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)r, q, (lapack_int)m, tau, work, lwork);
  if (info == 0)
    info = LAPACKE_sorgqr_work(LAPACK_COL_MAJOR, (lapack_int)m, (lapack_int)r, (lapack_int)r, q, (lapack_int)m, tau,
                               work, lwork);
  if (info != 0) { rc = fm__error("randomized_svd: QR failed (info %d)", (int)info); goto done; }
  /* B = Q.T @ A (Q.T is C-ordered r x m) */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)r, (int)n, (int)m, 1.f, q, (int)m, A, (int)n, 0.f, b,
              (int)n);
  /* Uhat, s, Vt = svd(B, full_matrices=False) */
  int64_t bshape[2] = { r, n }, ushp[2] = { r, r };
  tb = fm_tensor_new(FM_F32, 2, bshape), tu = fm_tensor_new(FM_F32, 2, ushp), ts = fm_tensor_new(FM_F32, 1, &r);
  tv = fm_tensor_new(FM_F32, 2, bshape);
  if (!tb || !tu || !ts || !tv) { rc = fm__error("randomized_svd: out of memory"); goto done; }
  memcpy(fm__f32(tb), b, sizeof(float) * (size_t)(r * n));
  if ((rc = fm_svd(tu, ts, tv, tb))) goto done;
  /* U = np.dot(Q, Uhat): both F-ordered */
  float *uhr = fm__f32(tu);   /* row-major r x r; as F-ordered it is its transpose */
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < r; ++j) uh[j * r + i] = uhr[i * r + j];
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, (int)m, (int)r, (int)r, 1.f, q, (int)m, uh, (int)r, 0.f, uu,
              (int)r);
  /* svd_flip (u-based): each column of U positive at its largest |entry| (the first on ties) */
  const float *sp = fm__f32(ts), *vp = fm__f32(tv);
  float *up = fm__f32(u), *vo = fm__f32(vt), *so = fm__f32(s);
  for (int64_t j = 0; j < n_components; ++j) {
    int64_t arg = 0;
    float best = -1.f;
    for (int64_t i = 0; i < m; ++i) {
      float v = fabsf(uu[i * r + j]);
      if (v > best) best = v, arg = i;
    }
    float sign = uu[arg * r + j] < 0.f ? -1.f : 1.f;
    for (int64_t i = 0; i < m; ++i) up[i * n_components + j] = uu[i * r + j] * sign;
    for (int64_t c = 0; c < n; ++c) vo[j * n + c] = vp[j * n + c] * sign;
    so[j] = sp[j];
  }
done:
  if (threads > 0) fm_set_threads(threads);
  free(q), free(y), free(w), free(tau), free(b), free(uh), free(sv), free(vh), free(uu), free(piv), free(work);
  if (tb) fm_tensor_release(tb);
  if (tu) fm_tensor_release(tu);
  if (ts) fm_tensor_release(ts);
  if (tv) fm_tensor_release(tv);
  return rc;
}
