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
