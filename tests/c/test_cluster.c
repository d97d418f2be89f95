/* test_cluster.c — k-means, silhouette and the eigen-solvers of
 * core/cluster.c against their definitions: A v = w v (and A v = w B v)
 * with orthonormal (B-orthonormal) vectors, eigenvalues planted through
 * a known orthogonal basis, planted well-separated blobs recovered exactly,
 * and the sgemm distances and silhouette against naive loops in double. */
#include "fmseg.h"
#include "tap.h"

#include <string.h>

static fm_tensor *mat(int64_t r, int64_t c) {
  int64_t shape[2] = { r, c };
  return fm_tensor_new(FM_F32, 2, shape);
}

static fm_tensor *vec(int64_t n, int32_t dtype) { return fm_tensor_new(dtype, 1, &n); }

static float *F(const fm_tensor *t) { return (float *)t->data; }

/* the call failed and its message holds `frag` */
static int fails_with(int rc, const char *frag, const char *name) {
  int good = rc == -1 && strstr(fm_last_error(), frag) != NULL;
  if (!good) diag(fm_last_error());
  fm_clear_error();
  return ok(good, name);
}

/* a random symmetric (n, n) matrix, entries in [-1, 1) */
static fm_tensor *random_symmetric(int64_t n) {
  fm_tensor *a = mat(n, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) F(a)[i * n + j] = F(a)[j * n + i] = frand();
  return a;
}

/* b = m m^T + n I: symmetric positive definite */
static fm_tensor *random_spd(int64_t n) {
  fm_tensor *m = mat(n, n), *b = mat(n, n);
  for (int64_t i = 0; i < n * n; ++i) F(m)[i] = frand();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = i == j ? (double)n : 0;
      for (int64_t l = 0; l < n; ++l) s += (double)F(m)[i * n + l] * F(m)[j * n + l];
      F(b)[i * n + j] = (float)s;
    }
  fm_tensor_release(m);
  return b;
}

static double max_abs(const float *p, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = fmax(m, fabs(p[i]));
  return m;
}

/* max over i of |A v_i - w_i B v_i| / (|A| + |w_i| |B|) (B = NULL: I),
 * max |V B V^T - I|, and whether w ascends */
static void eig_errors(const fm_tensor *a, const fm_tensor *b, const fm_tensor *w, const fm_tensor *v,
                       double *resid, double *ortho, int *ascending) {
  int64_t n = a->dims[0];
  double na = max_abs(F(a), n * n) * n, nb = b ? max_abs(F(b), n * n) * n : 1;
  *resid = 0, *ortho = 0, *ascending = 1;
  for (int64_t i = 0; i < n; ++i) {
    const float *vi = F(v) + i * n;
    double wi = F(w)[i];
    if (i > 0 && F(w)[i] < F(w)[i - 1]) *ascending = 0;
    for (int64_t r = 0; r < n; ++r) {
      double av = 0, bv = 0;
      for (int64_t c = 0; c < n; ++c) {
        av += (double)F(a)[r * n + c] * vi[c];
        bv += (b ? (double)F(b)[r * n + c] : (r == c)) * vi[c];
      }
      *resid = fmax(*resid, fabs(av - wi * bv) / (na + fabs(wi) * nb));
    }
    for (int64_t j = 0; j < n; ++j) {
      const float *vj = F(v) + j * n;
      double s = 0;
      for (int64_t r = 0; r < n; ++r) {
        double bvj = 0;
        for (int64_t c = 0; c < n; ++c) bvj += (b ? (double)F(b)[r * n + c] : (r == c)) * vj[c];
        s += vi[r] * bvj;
      }
      *ortho = fmax(*ortho, fabs(s - (i == j)));
    }
  }
}

static void test_eigh(int64_t n) {
  fm_tensor *a = random_symmetric(n), *w = vec(n, FM_F32), *v = mat(n, n);
  int rc = fm_eigh(w, v, a);
  double resid, ortho;
  int asc;
  char name[96];
  eig_errors(a, NULL, w, v, &resid, &ortho, &asc);
  snprintf(name, sizeof name, "eigh n=%lld: A v = w v to 1e-4, V V^T = I, w ascending", (long long)n);
  if (rc != 0) diag(fm_last_error());
  ok(rc == 0 && resid < 1e-4 && ortho < 1e-4 && asc, name);
  fm_tensor_release(a), fm_tensor_release(w), fm_tensor_release(v);
}

/* A = Q diag(lambda) Q^T with Q a Householder reflection I - 2 u u^T:
 * the eigenvalues must come back as the planted ones, sorted. */
static void test_eigh_planted(void) {
  enum { N = 6 };
  const double lambda[N] = { 3.5, -2.0, 0.25, 7.0, -0.5, 1.0 };
  const double sorted[N] = { -2.0, -0.5, 0.25, 1.0, 3.5, 7.0 };
  double u[N] = { 1, 2, -1, 0.5, 3, -2 }, un = 0;
  for (int i = 0; i < N; ++i) un += u[i] * u[i];
  for (int i = 0; i < N; ++i) u[i] /= sqrt(un);
  fm_tensor *a = mat(N, N), *w = vec(N, FM_F32), *v = mat(N, N);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int l = 0; l < N; ++l) {
        double qil = (i == l) - 2 * u[i] * u[l], qjl = (j == l) - 2 * u[j] * u[l];
        s += qil * lambda[l] * qjl;
      }
      F(a)[i * N + j] = (float)s;
    }
  int rc = fm_eigh(w, v, a), good = rc == 0;
  for (int i = 0; i < N; ++i) good = good && fabs(F(w)[i] - sorted[i]) < 1e-5;
  ok(good, "eigh returns planted eigenvalues in ascending order");
  // row 5 (w = 7) must be +-Q column 3
  double dot = 0;
  for (int r = 0; r < N; ++r) dot += F(v)[5 * N + r] * ((r == 3) - 2 * u[r] * u[3]);
  ok(fabs(fabs(dot) - 1) < 1e-5, "eigh: row i of v is the eigenvector of w[i]");
  // v may alias a
  fm_tensor *a2 = fm_tensor_clone(a);
  rc = fm_eigh(w, a2, a2);
  ok(rc == 0 && fabs(F(w)[0] + 2.0) < 1e-5 && fabs(fabs(F(a2)[5 * N + 3]) - fabs(F(v)[5 * N + 3])) < 1e-5,
     "eigh in place (v = a)");
  fm_tensor_release(a), fm_tensor_release(a2), fm_tensor_release(w), fm_tensor_release(v);
}

static void test_eigh_generalized(int64_t n) {
  fm_tensor *a = random_symmetric(n), *b = random_spd(n), *w = vec(n, FM_F32), *v = mat(n, n);
  int rc = fm_eigh_generalized(w, v, a, b);
  double resid, ortho;
  int asc;
  char name[112];
  eig_errors(a, b, w, v, &resid, &ortho, &asc);
  snprintf(name, sizeof name, "eigh_generalized n=%lld: A v = w B v to 1e-4, V B V^T = I, ascending",
           (long long)n);
  if (rc != 0) diag(fm_last_error());
  ok(rc == 0 && resid < 1e-4 && ortho < 1e-4 && asc, name);
  fm_tensor_release(a), fm_tensor_release(b), fm_tensor_release(w), fm_tensor_release(v);
}

/* Diagonal B: the problem equals the ordinary one for B^-1/2 A B^-1/2,
 * solved independently by fm_eigh. */
static void test_generalized_diagonal(void) {
  enum { N = 12 };
  fm_tensor *a = random_symmetric(N), *b = mat(N, N), *s = mat(N, N);
  double d[N];
  for (int i = 0; i < N; ++i) d[i] = 1.5 + frand(), F(b)[i * N + i] = (float)d[i];
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) F(s)[i * N + j] = (float)(F(a)[i * N + j] / sqrt(d[i] * d[j]));
  fm_tensor *w1 = vec(N, FM_F32), *v1 = mat(N, N), *w2 = vec(N, FM_F32), *v2 = mat(N, N);
  int rc = fm_eigh_generalized(w1, v1, a, b) | fm_eigh(w2, v2, s);
  ok(rc == 0 && rel_err(F(w1), F(w2), N) < 1e-5, "eigh_generalized with diagonal B = eigh of B^-1/2 A B^-1/2");
  // y = B^-1/2 z: the same vectors up to sign
  double worst = 0;
  for (int i = 0; i < N; ++i) {
    double dot = 0;
    for (int r = 0; r < N; ++r) dot += F(v1)[i * N + r] * sqrt(d[r]) * F(v2)[i * N + r];
    worst = fmax(worst, fabs(fabs(dot) - 1));
  }
  ok(worst < 1e-4, "eigh_generalized vectors = B^-1/2 x the ordinary ones");
  fm_tensor_release(a), fm_tensor_release(b), fm_tensor_release(s);
  fm_tensor_release(w1), fm_tensor_release(v1), fm_tensor_release(w2), fm_tensor_release(v2);
}

/* the subset solver = rows first .. first + count - 1 of the full one (up to sign) */
static void test_generalized_subset(int diagonal_b) {
  enum { N = 40, FIRST = 1, COUNT = 3 };
  fm_tensor *a = random_symmetric(N), *b = random_spd(N), *w = vec(N, FM_F32), *v = mat(N, N);
  if (diagonal_b)   /* the scaled-MRRR path */
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j)
        if (i != j) F(b)[i * N + j] = 0;
  fm_tensor *ws = vec(COUNT, FM_F32), *vs = mat(COUNT, N);
  int rc = fm_eigh_generalized(w, v, a, b) | fm_eigh_generalized_subset(ws, vs, a, b, FIRST, COUNT);
  double worst_w = 0, worst_v = 0;
  for (int i = 0; i < COUNT; ++i) {
    worst_w = fmax(worst_w, fabs(F(ws)[i] - F(w)[FIRST + i]));
    double dot = 0, nv = 0;
    for (int r = 0; r < N; ++r) dot += F(vs)[i * N + r] * F(v)[(FIRST + i) * N + r], nv += pow(F(v)[(FIRST + i) * N + r], 2);
    worst_v = fmax(worst_v, fabs(fabs(dot) / nv - 1));
  }
  if (rc) diag(fm_last_error());
  ok(rc == 0 && worst_w < 1e-4 && worst_v < 1e-4, diagonal_b ? "eigh_generalized_subset, diagonal B = the same rows of the full solve"
                                                             : "eigh_generalized_subset = the same rows of the full solve");
  fails_with(fm_eigh_generalized_subset(ws, vs, a, b, N - 2, COUNT), "eigenpairs", "subset refuses a range past N");
  F(b)[0] = diagonal_b ? 0 : -1e6;
  fails_with(fm_eigh_generalized_subset(ws, vs, a, b, FIRST, COUNT), "not positive definite",
             "subset refuses a B that is not positive definite");
  fm_tensor_release(a), fm_tensor_release(b), fm_tensor_release(w), fm_tensor_release(v);
  fm_tensor_release(ws), fm_tensor_release(vs);
}

static void test_eig_errors(void) {
  fm_tensor *a = random_symmetric(4), *b = random_symmetric(4), *w = vec(4, FM_F32), *v = mat(4, 4);
  fm_tensor *rect = mat(4, 3), *w3 = vec(3, FM_F32), *spd = random_spd(4), *sym = random_symmetric(4);
  F(b)[0] = -10;   /* indefinite */
  fails_with(fm_eigh_generalized(w, v, a, b), "not positive definite", "eigh_generalized refuses an indefinite B");
  F(a)[6] = NAN;
  fails_with(fm_eigh(w, v, a), "non-finite", "eigh refuses NaN");
  F(a)[6] = INFINITY;
  fails_with(fm_eigh_generalized(w, v, a, spd), "non-finite", "eigh_generalized refuses inf");
  fails_with(fm_eigh(w, v, rect), "square", "eigh refuses a non-square matrix");
  fails_with(fm_eigh(w3, v, sym), "eigh: w", "eigh checks the shape of w");
  fm_tensor_release(a), fm_tensor_release(b), fm_tensor_release(w), fm_tensor_release(v);
  fm_tensor_release(rect), fm_tensor_release(w3), fm_tensor_release(spd), fm_tensor_release(sym);
}

/* ---- distances ------------------------------------------------------------------ */

static void test_sq_distances(void) {
  enum { N = 37, K = 9, D = 19 };
  fm_tensor *x = mat(N, D), *c = mat(K, D), *out = mat(N, K);
  for (int i = 0; i < N * D; ++i) F(x)[i] = 3 * frand();
  for (int i = 0; i < K * D; ++i) F(c)[i] = 3 * frand();
  float ref[N * K];
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < K; ++j) {
      double s = 0;
      for (int l = 0; l < D; ++l) s += ((double)F(x)[i * D + l] - F(c)[j * D + l]) * ((double)F(x)[i * D + l] - F(c)[j * D + l]);
      ref[i * K + j] = (float)s;
    }
  int rc = fm_sq_distances(out, x, c);
  ok(rc == 0 && rel_err(F(out), ref, N * K) < 1e-5, "sq_distances (sgemm) = naive loop");
  fm_tensor *x2 = mat(N, D + 1);
  fails_with(fm_sq_distances(out, x2, c), "features", "sq_distances refuses mismatched widths");
  fm_tensor_release(x), fm_tensor_release(c), fm_tensor_release(out), fm_tensor_release(x2);
}

/* ---- k-means -------------------------------------------------------------------- */

/* n points per blob around k centres spaced 10 apart, noise +-0.5, in a
 * shuffled order; truth[i] is the blob of point i */
static fm_tensor *blobs(int64_t k, int64_t per, int64_t d, int32_t *truth) {
  int64_t n = k * per;
  fm_tensor *x = mat(n, d);
  int64_t *order = malloc(sizeof(int64_t) * (size_t)n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  for (int64_t i = n - 1; i > 0; --i) {   /* Fisher-Yates */
    int64_t j = (int64_t)((frand() * 0.5 + 0.5) * (double)(i + 1)) % (i + 1), t = order[i];
    order[i] = order[j], order[j] = t;
  }
  for (int64_t i = 0; i < n; ++i) {
    int64_t blob = order[i] / per;
    truth[i] = (int32_t)blob;
    for (int64_t j = 0; j < d; ++j) {
      float centre = (j == blob % d ? 10.f : 0.f) + (j == (blob + 1) % d ? 10.f * (float)(blob / d) : 0.f);
      F(x)[i * d + j] = centre + 0.5f * frand();
    }
  }
  free(order);
  return x;
}

/* labels equal truth up to a one-to-one relabelling */
static int same_partition(const int32_t *a, const int32_t *b, int64_t n, int64_t k) {
  int32_t map[64], back[64];
  for (int i = 0; i < 64; ++i) map[i] = back[i] = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (a[i] < 0 || a[i] >= k || b[i] < 0 || b[i] >= k) return 0;
    if (map[a[i]] < 0 && back[b[i]] < 0) map[a[i]] = b[i], back[b[i]] = a[i];
    if (map[a[i]] != b[i] || back[b[i]] != a[i]) return 0;
  }
  return 1;
}

static void test_kmeans_blobs(int64_t k, int64_t per, int64_t d, uint64_t seed) {
  int64_t n = k * per;
  int32_t *truth = malloc(sizeof(int32_t) * (size_t)n);
  fm_tensor *x = blobs(k, per, d, truth), *labels = vec(n, FM_I32), *centers = mat(k, d);
  double inertia = -1;
  int rc = fm_kmeans(labels, centers, x, k, 300, 1e-4, 4, seed, &inertia);
  char name[112];
  snprintf(name, sizeof name, "kmeans recovers %lld planted blobs of %lld points in %lld-d exactly",
           (long long)k, (long long)per, (long long)d);
  if (rc) diag(fm_last_error());
  ok(rc == 0 && same_partition(labels->data, truth, n, k), name);
  // every label is the nearest centre; inertia is the summed distance; each
  // centre is its points' mean
  const int32_t *lab = labels->data;
  double sum = 0, worst_mean = 0;
  int nearest = 1;
  for (int64_t i = 0; i < n; ++i) {
    double best = INFINITY;
    int64_t arg = -1;
    for (int64_t c = 0; c < k; ++c) {
      double s = 0;
      for (int64_t j = 0; j < d; ++j) s += pow((double)F(x)[i * d + j] - F(centers)[c * d + j], 2);
      if (s < best) best = s, arg = c;
    }
    nearest = nearest && arg == lab[i];
    sum += best;
  }
  for (int64_t c = 0; c < k; ++c)
    for (int64_t j = 0; j < d; ++j) {
      double m = 0;
      int64_t cnt = 0;
      for (int64_t i = 0; i < n; ++i)
        if (lab[i] == c) m += F(x)[i * d + j], ++cnt;
      worst_mean = fmax(worst_mean, fabs(m / (double)cnt - F(centers)[c * d + j]));
    }
  ok(nearest && fabs(sum - inertia) <= 1e-4 * sum && worst_mean < 1e-4,
     "kmeans: labels are the nearest centres, centres the means, inertia their distance");
  // same seed, same answer
  fm_tensor *l2 = vec(n, FM_I32), *c2 = mat(k, d);
  rc = fm_kmeans(l2, c2, x, k, 300, 1e-4, 4, seed, NULL);
  ok(rc == 0 && memcmp(l2->data, labels->data, sizeof(int32_t) * (size_t)n) == 0 &&
         memcmp(c2->data, centers->data, sizeof(float) * (size_t)(k * d)) == 0,
     "kmeans is deterministic given the seed");
  free(truth);
  fm_tensor_release(x), fm_tensor_release(labels), fm_tensor_release(centers);
  fm_tensor_release(l2), fm_tensor_release(c2);
}

static void test_kmeans_edges(void) {
  // k = 1: the mean
  fm_tensor *x = mat(4, 2), *l = vec(4, FM_I32), *c = mat(1, 2);
  const float pts[8] = { 0, 0, 2, 0, 0, 4, 2, 4 };
  memcpy(x->data, pts, sizeof pts);
  int rc = fm_kmeans(l, c, x, 1, 10, 1e-4, 1, 7, NULL);
  ok(rc == 0 && F(c)[0] == 1 && F(c)[1] == 2, "kmeans k = 1 gives the mean");
  // fewer distinct points than clusters: labels stay valid, centres finite
  fm_tensor *dup = mat(6, 2), *ld = vec(6, FM_I32), *cd = mat(3, 2);
  for (int i = 0; i < 6; ++i) F(dup)[2 * i] = (float)(i % 2), F(dup)[2 * i + 1] = 1;
  rc = fm_kmeans(ld, cd, dup, 3, 50, 1e-4, 2, 3, NULL);
  int good = rc == 0;
  for (int i = 0; i < 6; ++i) good = good && ((int32_t *)ld->data)[i] >= 0 && ((int32_t *)ld->data)[i] < 3;
  for (int i = 0; i < 6; ++i) good = good && isfinite(F(cd)[i]);
  ok(good, "kmeans with duplicate points: valid labels, finite centres");
  fm_tensor *c5 = mat(5, 2);
  fails_with(fm_kmeans(l, c5, x, 5, 10, 1e-4, 1, 1, NULL), "k = 5", "kmeans refuses k > N");
  F(x)[3] = NAN;
  fails_with(fm_kmeans(l, c, x, 1, 10, 1e-4, 1, 1, NULL), "non-finite", "kmeans refuses NaN");
  fm_tensor *lf = vec(4, FM_F32);
  F(x)[3] = 0;
  fails_with(fm_kmeans(lf, c, x, 1, 10, 1e-4, 1, 1, NULL), "int32", "kmeans wants int32 labels");
  fm_tensor_release(x), fm_tensor_release(l), fm_tensor_release(c), fm_tensor_release(dup);
  fm_tensor_release(ld), fm_tensor_release(cd), fm_tensor_release(c5), fm_tensor_release(lf);
}

/* ---- silhouette ------------------------------------------------------------------ */

static double silhouette_naive(const float *x, const int32_t *lab, int64_t n, int64_t d, int64_t k) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    double sums[16] = { 0 };
    int64_t counts[16] = { 0 };
    for (int64_t j = 0; j < n; ++j) {
      ++counts[lab[j]];
      if (j == i) continue;
      double s = 0;
      for (int64_t l = 0; l < d; ++l) s += pow((double)x[i * d + l] - x[j * d + l], 2);
      sums[lab[j]] += sqrt(s);
    }
    if (counts[lab[i]] < 2) continue;
    double a = sums[lab[i]] / (double)(counts[lab[i]] - 1), b = INFINITY;
    for (int64_t c = 0; c < k; ++c)
      if (c != lab[i] && counts[c]) b = fmin(b, sums[c] / (double)counts[c]);
    total += (b - a) / fmax(a, b);
  }
  return total / (double)n;
}

static void test_silhouette(void) {
  enum { N = 300, D = 5, K = 4 };   /* N > the 256-row block */
  fm_tensor *x = mat(N, D), *l = vec(N, FM_I32);
  int32_t *lab = l->data;
  for (int i = 0; i < N * D; ++i) F(x)[i] = frand();
  for (int i = 0; i < N; ++i) lab[i] = (int32_t)((frand() * 0.5 + 0.5) * K) % K;
  lab[7] = 3;
  for (int i = 0; i < N; ++i) if (i != 7 && lab[i] == 3) lab[i] = 2;   /* a singleton cluster */
  double s = -2, ref = silhouette_naive(F(x), lab, N, D, K);
  int rc = fm_silhouette(&s, x, l, K);
  ok(rc == 0 && fabs(s - ref) < 1e-5, "silhouette = naive double loop (with a singleton cluster)");
  int32_t truth[120];
  fm_tensor *bx = blobs(3, 40, 4, truth);
  fm_tensor *bl = vec(120, FM_I32);
  memcpy(bl->data, truth, sizeof truth);
  rc = fm_silhouette(&s, bx, bl, 3);
  ok(rc == 0 && s > 0.9, "silhouette of well-separated blobs is near 1");
  for (int i = 0; i < N; ++i) lab[i] = 0;
  fails_with(fm_silhouette(&s, x, l, K), "non-empty clusters", "silhouette needs two clusters");
  lab[0] = 9;
  fails_with(fm_silhouette(&s, x, l, K), "outside", "silhouette refuses labels >= k");
  fm_tensor_release(x), fm_tensor_release(l), fm_tensor_release(bx), fm_tensor_release(bl);
}

int main(void) {
  test_eigh(1);
  test_eigh(7);
  test_eigh(120);
  test_eigh_planted();
  test_eigh_generalized(5);
  test_eigh_generalized(90);
  test_generalized_diagonal();
  test_generalized_subset(0);
  test_generalized_subset(1);
  test_eig_errors();
  test_sq_distances();
  test_kmeans_blobs(4, 30, 8, 1);
  test_kmeans_blobs(10, 25, 6, 42);
  test_kmeans_blobs(3, 50, 384, 5);
  test_kmeans_edges();
  test_silhouette();
  return done_testing();
}
