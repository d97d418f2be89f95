/* test_transport.c — core/transport.c against naive twins: the network
 * simplex's earth mover's distance against successive shortest paths
 * (Bellman-Ford on the residual graph of the same integer-scaled problem)
 * on random, tied and degenerate cost matrices; the linear sum assignment
 * against every permutation of small matrices (both orientations,
 * minimise and maximise); the errors. POT's and SciPy's own values:
 * tests/lua/test_matcher.lua (tests/fixtures/methods/matcher-transport). */
#include "fmseg.h"
#include "tap.h"

#include <math.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static fm_tensor *mat(int64_t r, int64_t c) {
  int64_t shape[2] = { r, c };
  return fm_tensor_new(FM_F32, 2, shape);
}

static float *F(const fm_tensor *t) { return (float *)t->data; }

/* The naive twin: min-cost flow by successive shortest paths. Sources
 * 0..n-1 with supply m, sinks with demand n (the problem scaled by n m);
 * each round Bellman-Ford from a super source over the residual arcs
 * (source -> sink at cost c, back at -c where flow > 0), then as much flow
 * as the path allows. Returns sum f c / (n m). */
static double emd_naive(const float *c, int n, int m) {
  int V = n + m + 2, S = n + m, Tn = n + m + 1;
  long *flow = calloc((size_t)n * m, sizeof *flow), *sup = malloc(n * sizeof *sup), *dem = malloc(m * sizeof *dem);
  double *dist = malloc(V * sizeof *dist);
  int *prev = malloc(V * sizeof *prev);
  for (int i = 0; i < n; ++i) sup[i] = m;
  for (int j = 0; j < m; ++j) dem[j] = n;
  for (;;) {
    for (int v = 0; v < V; ++v) dist[v] = INFINITY, prev[v] = -1;
    dist[S] = 0;
    for (int round = 0; round < V; ++round) {
      int changed = 0;
      for (int i = 0; i < n; ++i) {
        if (sup[i] > 0 && dist[S] < dist[i]) dist[i] = dist[S], prev[i] = S, changed = 1;
        for (int j = 0; j < m; ++j) {
          double w = c[i * m + j];
          if (dist[i] + w < dist[n + j] - 1e-15) dist[n + j] = dist[i] + w, prev[n + j] = i, changed = 1;
          if (flow[i * m + j] > 0 && dist[n + j] - w < dist[i] - 1e-15) {
            dist[i] = dist[n + j] - w, prev[i] = n + j, changed = 1;
          }
        }
      }
      for (int j = 0; j < m; ++j)
        if (dem[j] > 0 && dist[n + j] < dist[Tn]) dist[Tn] = dist[n + j], prev[Tn] = n + j, changed = 1;
      if (!changed) break;
    }
    if (prev[Tn] < 0) break;
    long push = LONG_MAX;   /* the path's bottleneck */
    int v = prev[Tn];
    if (dem[v - n] < push) push = dem[v - n];
    while (prev[v] != S) {
      int u = prev[v];
      if (u >= n) {         /* a backward arc v <- u: flow (v, u - n) */
        if (flow[v * m + (u - n)] < push) push = flow[v * m + (u - n)];
      }
      v = u;
    }
    if (sup[v] < push) push = sup[v];
    v = prev[Tn];
    dem[v - n] -= push;
    while (prev[v] != S) {
      int u = prev[v];
      if (u < n) flow[u * m + (v - n)] += push;
      else flow[v * m + (u - n)] -= push;
      v = u;
    }
    sup[v] -= push;
  }
  double total = 0;
  for (long k = 0; k < (long)n * m; ++k) total += flow[k] * (double)c[k];
  free(flow), free(sup), free(dem), free(dist), free(prev);
  return total / ((double)n * m);
}

static void test_emd_random(void) {
  int sizes[][2] = { { 1, 1 }, { 1, 6 }, { 6, 1 }, { 2, 3 }, { 4, 4 }, { 5, 9 }, { 9, 5 }, { 12, 17 }, { 25, 25 },
                     { 40, 31 } };
  double worst = 0;
  int all = 1;
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
    for (int rep = 0; rep < 4; ++rep) {
      int n = sizes[s][0], m = sizes[s][1];
      fm_tensor *c = mat(n, m);
      for (int k = 0; k < n * m; ++k) {
        float x = (frand() + 1.f) / 2.f;
        /* rep 1: few distinct values (many tied plans); rep 2: a constant
         * matrix (every plan optimal: degenerate pivots only); rep 3: wide range */
        if (rep == 1) x = floorf(x * 3.f) / 3.f;
        if (rep == 2) x = 0.25f;
        if (rep == 3) x = x * x * 100.f;
        F(c)[k] = x;
      }
      double got = -1, want = emd_naive(F(c), n, m);
      if (fm_emd_uniform(&got, c) != 0) diag(fm_last_error()), all = 0;
      double e = fabs(got - want) / fmax(1e-12, fabs(want));
      if (e > worst) worst = e;
      if (e > 1e-12) {
        char buf[160];
        snprintf(buf, sizeof buf, "emd %dx%d rep %d: %.17g vs naive %.17g", n, m, rep, got, want);
        diag(buf);
        all = 0;
      }
      fm_tensor_release(c);
    }
  }
  char buf[80];
  snprintf(buf, sizeof buf, "worst relative difference %.3g", worst);
  diag(buf);
  ok(all, "emd_uniform = successive shortest paths on random, tied, constant and wide costs");
}

static void test_emd_known(void) {
  /* identity: n = m, zero diagonal, positive elsewhere: 0 */
  fm_tensor *c = mat(6, 6);
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j) F(c)[i * 6 + j] = i == j ? 0.f : 1.f + (float)(i + j);
  double d = -1;
  ok(fm_emd_uniform(&d, c) == 0 && d == 0.0, "emd_uniform: a zero-cost matching costs 0");
  fm_tensor_release(c);
  /* one source: the mean of its row */
  c = mat(1, 4);
  float row[4] = { 0.5f, 0.25f, 1.f, 0.75f };
  memcpy(F(c), row, sizeof row);
  ok(fm_emd_uniform(&d, c) == 0 && fabs(d - 0.625) < 1e-15, "emd_uniform: one source pays the mean of its row");
  fm_tensor_release(c);
}

static double assignment_cost(const float *c, int nc, const int32_t *col, int nr) {
  double s = 0;
  for (int i = 0; i < nr; ++i)
    if (col[i] >= 0) s += c[i * nc + col[i]];
  return s;
}

/* the best total over every injective map of the shorter side */
static void brute(const float *c, int nr, int nc, int maximize, int row, int32_t *cur, uint8_t *used,
                  double *best) {
  int k = nr <= nc ? nr : nc;
  if (nr <= nc) {
    if (row == nr) {
      double s = assignment_cost(c, nc, cur, nr);
      if (maximize ? s > *best : s < *best) *best = s;
      return;
    }
    for (int j = 0; j < nc; ++j)
      if (!used[j]) {
        used[j] = 1, cur[row] = j;
        brute(c, nr, nc, maximize, row + 1, cur, used, best);
        used[j] = 0;
      }
  } else {
    /* choose a row for each column: transpose */
    float *t = malloc((size_t)nr * nc * sizeof *t);
    for (int i = 0; i < nr; ++i)
      for (int j = 0; j < nc; ++j) t[j * nr + i] = c[i * nc + j];
    brute(t, nc, nr, maximize, 0, cur, used, best);
    free(t);
  }
  (void)k;
}

static void test_lsa_brute(void) {
  int sizes[][2] = { { 1, 1 }, { 1, 5 }, { 5, 1 }, { 3, 3 }, { 3, 6 }, { 6, 3 }, { 5, 7 }, { 7, 5 }, { 6, 6 } };
  int all = 1, distinct = 1;
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; ++s) {
    for (int maximize = 0; maximize < 2; ++maximize) {
      for (int rep = 0; rep < 3; ++rep) {
        int nr = sizes[s][0], nc = sizes[s][1];
        fm_tensor *c = mat(nr, nc);
        for (int k = 0; k < nr * nc; ++k) F(c)[k] = rep == 2 ? floorf((frand() + 1.f) * 2.f) : frand();
        int64_t n = nr;
        fm_tensor *col = fm_tensor_new(FM_I32, 1, &n);
        if (fm_linear_sum_assignment(col, c, maximize) != 0) diag(fm_last_error()), all = 0;
        int32_t *cv = (int32_t *)col->data;
        uint8_t seen[16] = { 0 };
        int count = 0;
        for (int i = 0; i < nr; ++i)
          if (cv[i] >= 0) {
            if (cv[i] >= nc || seen[cv[i]]) distinct = 0;
            seen[cv[i]] = 1, ++count;
          }
        if (count != (nr < nc ? nr : nc)) distinct = 0;
        int32_t cur[16];
        uint8_t used[16] = { 0 };
        double best = maximize ? -INFINITY : INFINITY;
        brute(F(c), nr, nc, maximize, 0, cur, used, &best);
        double got = assignment_cost(F(c), nc, cv, nr);
        if (fabs(got - best) > 1e-9) {
          char buf[120];
          snprintf(buf, sizeof buf, "lsa %dx%d max %d rep %d: %.9g vs brute force %.9g", nr, nc, maximize, rep,
                   got, best);
          diag(buf);
          all = 0;
        }
        fm_tensor_release(col), fm_tensor_release(c);
      }
    }
  }
  ok(distinct, "linear_sum_assignment: min(R, C) distinct columns, one per assigned row");
  ok(all, "linear_sum_assignment: the brute-force optimum, tall and wide, min and max, with ties");
}

static void test_errors(void) {
  fm_tensor *c = mat(2, 2);
  F(c)[1] = NAN;
  double d;
  ok(fm_emd_uniform(&d, c) == -1 && strstr(fm_last_error(), "not finite"), "emd_uniform refuses NaN costs");
  fm_clear_error();
  int64_t n = 3;
  fm_tensor *col = fm_tensor_new(FM_I32, 1, &n);
  F(c)[1] = 0.f;
  ok(fm_linear_sum_assignment(col, c, 0) == -1 && strstr(fm_last_error(), "int32 vector of 2 rows"),
     "linear_sum_assignment checks the output's length");
  fm_clear_error();
  fm_tensor_release(col), fm_tensor_release(c);
}

int main(void) {
  test_emd_known();
  test_emd_random();
  test_lsa_brute();
  test_errors();
  return done_testing();
}
