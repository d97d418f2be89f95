/* transport.c — exact optimal transport and assignment on dense cost
 * matrices: the earth mover's distance between two uniform distributions
 * (POT's ot.emd2 with weights 1/n and 1/m, which Matcher scores its masks
 * by) and the rectangular linear sum assignment (SciPy's
 * linear_sum_assignment, which Matcher matches patches with).
 *
 * EMD: the transportation problem with supplies 1/n and demands 1/m is
 * scaled by n m to integer supplies m and demands n, so that the flows are
 * exact integers; it is solved by the primal network simplex (as LEMON's
 * NetworkSimplex, which POT runs): an artificial root joined to every node
 * starts a strongly feasible spanning tree (supply nodes -> root at cost 0,
 * root -> demand nodes at cost (max c + 1) (n + m + 1)); entering arcs by
 * block search (blocks of sqrt(n m) arcs, the most negative reduced cost of
 * the first block that has one, relative tolerance 2.22e-15 as POT's);
 * leaving arcs by Cunningham's rule (the last blocking arc of the cycle),
 * which keeps the tree strongly feasible and rules out cycling. Only tree
 * arcs carry flow, so flows are kept per node (the arc to its parent); the
 * tree is parent links plus children lists, and after a pivot only the
 * re-hung subtree's depths and potentials are recomputed. The cost is
 * sum f_ij c_ij / (n m) in double.
 *
 * Assignment: shortest augmenting paths (Crouse 2016), the algorithm and
 * tie rules of SciPy's rectangular_lsap.cpp, in double: a tall matrix is
 * transposed, maximisation negates, columns are scanned from the last and
 * among equal path costs an unassigned column is preferred. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool fm__check_costs(const fm_tensor *c, const char *what) {
  if (!fm__check_input(c, what) || !fm__check_ndim(c, 2, what)) return false;
  const float *p = fm__f32(c);
  int64_t n = c->dims[0] * c->dims[1];
  for (int64_t i = 0; i < n; ++i)
    if (!isfinite(p[i]))
      return fm__error("%s: entry (%lld, %lld) is not finite", what, (long long)(i / c->dims[1]),
                       (long long)(i % c->dims[1])), false;
  return true;
}

/* ---- earth mover's distance ------------------------------------------------ */

typedef struct fm__nsimplex {
  int64_t n, m, root, nodes, arcs;   /* sources 0..n-1, sinks n..n+m-1, root n+m */
  const float *cost;                 /* (n, m): arc e = i m + j, i -> n + j */
  double art;                        /* cost of root -> sink arcs */
  int64_t *parent, *pred, *flow, *depth, *stack;
  int64_t *child, *next, *prev;      /* children lists: first child, siblings */
  uint8_t *up;                       /* pred[u] goes u -> parent[u] */
  double *pi;
} fm__nsimplex;

/* cost of the tree arc pred[u] */
static double fm__arc_cost(const fm__nsimplex *s, int64_t u) {
  int64_t e = s->pred[u];
  if (e < s->arcs) return (double)s->cost[e];
  return u < s->n ? 0.0 : s->art;          /* artificial: source -> root, root -> sink */
}

/* depth and potential of u from its parent's: reduced cost c_ab + pi_a -
 * pi_b = 0 on every tree arc a -> b */
static void fm__ns_set(fm__nsimplex *s, int64_t u) {
  int64_t p = s->parent[u];
  double c = fm__arc_cost(s, u);
  s->depth[u] = s->depth[p] + 1;
  s->pi[u] = s->up[u] ? s->pi[p] - c : s->pi[p] + c;
}

/* ... for u and everything below it (u's parent already right) */
static void fm__ns_subtree(fm__nsimplex *s, int64_t u) {
  int64_t top = 0;
  s->stack[top++] = u;
  while (top > 0) {
    int64_t v = s->stack[--top];
    fm__ns_set(s, v);
    for (int64_t c = s->child[v]; c >= 0; c = s->next[c]) s->stack[top++] = c;
  }
}

static void fm__ns_unlink(fm__nsimplex *s, int64_t u) {
  int64_t p = s->parent[u];
  if (s->prev[u] >= 0) s->next[s->prev[u]] = s->next[u];
  else s->child[p] = s->next[u];
  if (s->next[u] >= 0) s->prev[s->next[u]] = s->prev[u];
}

static void fm__ns_link(fm__nsimplex *s, int64_t u, int64_t p) {
  s->parent[u] = p;
  s->prev[u] = -1;
  s->next[u] = s->child[p];
  if (s->child[p] >= 0) s->prev[s->child[p]] = u;
  s->child[p] = u;
}

/* Block search: the arc of most negative reduced cost in the first block
 * (cyclically from *next) holding one below -eps * scale; -1 when none. */
static int64_t fm__ns_entering(const fm__nsimplex *s, int64_t *next, int64_t block) {
  const double eps = 2.2204460492503131e-15;
  int64_t E = s->arcs, m = s->m, e = *next, best = -1, cnt = block;
  int64_t i = e / m, j = e % m;
  double min = 0.0;
  for (int64_t k = 0; k < E; ++k) {
    double rc = (double)s->cost[e] + s->pi[i] - s->pi[s->n + j];
    if (rc < min) {
      min = rc;
      best = e;
    }
    if (++e == E) e = 0, i = 0, j = 0;
    else if (++j == m) j = 0, ++i;
    if (--cnt == 0 || k == E - 1) {
      if (best >= 0) {
        double a = fmax(fabs(s->pi[best / m]), fabs(s->pi[s->n + best % m]));
        a = fmax(a, fabs((double)s->cost[best]));
        if (min < -eps * a) {
          *next = e;
          return best;
        }
      }
      cnt = block;
    }
  }
  return -1;
}

/* One pivot on entering arc e (a source -> sink arc at flow 0); false
 * when no arc of the cycle blocks (cannot happen: every cycle holds a
 * backward arc, whose flow is finite). */
static bool fm__ns_pivot(fm__nsimplex *s, int64_t e) {
  const int64_t INF = INT64_MAX;
  int64_t first = e / s->m, second = s->n + e % s->m;
  int64_t a = first, b = second;
  while (a != b) {                                  /* the join: deepest common ancestor */
    if (s->depth[a] >= s->depth[b]) a = s->parent[a];
    else b = s->parent[b];
  }
  int64_t join = a, delta = INF, u_out = -1;
  int result = 0;
  /* Cunningham's rule: the last blocking arc in the cycle's direction */
  for (int64_t u = first; u != join; u = s->parent[u]) {
    int64_t d = s->up[u] ? s->flow[u] : INF;       /* flow runs parent -> u */
    if (d < delta) delta = d, u_out = u, result = 1;
  }
  for (int64_t u = second; u != join; u = s->parent[u]) {
    int64_t d = s->up[u] ? INF : s->flow[u];       /* flow runs u -> parent */
    if (d <= delta) delta = d, u_out = u, result = 2;
  }
  if (result == 0) return false;
  if (delta > 0) {
    for (int64_t u = first; u != join; u = s->parent[u]) s->flow[u] += s->up[u] ? -delta : delta;
    for (int64_t u = second; u != join; u = s->parent[u]) s->flow[u] += s->up[u] ? delta : -delta;
  }
  /* the entering arc hangs the cut subtree (below u_out) from the other
   * end; the path u_in .. u_out turns over */
  int64_t u_in = result == 1 ? first : second, v_in = result == 1 ? second : first;
  int64_t w = u_in, np = v_in, npred = e, nflow = delta;
  uint8_t nup = result == 1;                        /* first -> second: up from first */
  for (;;) {
    int64_t op = s->parent[w], opred = s->pred[w], oflow = s->flow[w];
    uint8_t oup = s->up[w];
    fm__ns_unlink(s, w);
    fm__ns_link(s, w, np);
    s->pred[w] = npred, s->flow[w] = nflow, s->up[w] = nup;
    if (w == u_out) break;
    np = w, npred = opred, nflow = oflow, nup = !oup;
    w = op;
  }
  fm__ns_subtree(s, u_in);             /* only the re-hung subtree's depths and potentials change */
  return true;
}

int fm_emd_uniform(double *cost, const fm_tensor *c) {
  if (!cost) return fm__error("emd_uniform: cost is NULL");
  if (!fm__check_costs(c, "emd_uniform: costs")) return -1;
  int64_t n = c->dims[0], m = c->dims[1];
  if (n < 1 || m < 1) return fm__error("emd_uniform: costs must be (n, m) with n, m >= 1, got (%lld, %lld)",
                                       (long long)n, (long long)m);
  if (n > (INT64_MAX / 4) / m) return fm__error("emd_uniform: %lld x %lld costs are too many", (long long)n,
                                                (long long)m);
  fm__nsimplex s = { .n = n, .m = m, .root = n + m, .nodes = n + m + 1, .arcs = n * m, .cost = fm__f32(c) };
  size_t V = (size_t)s.nodes;
  s.parent = malloc(V * sizeof *s.parent);
  s.pred = malloc(V * sizeof *s.pred);
  s.flow = malloc(V * sizeof *s.flow);
  s.depth = malloc(V * sizeof *s.depth);
  s.stack = malloc(V * sizeof *s.stack);
  s.child = malloc(V * sizeof *s.child);
  s.next = malloc(V * sizeof *s.next);
  s.prev = malloc(V * sizeof *s.prev);
  s.up = malloc(V);
  s.pi = malloc(V * sizeof *s.pi);
  int rc = 0;
  if (!s.parent || !s.pred || !s.flow || !s.depth || !s.stack || !s.child || !s.next || !s.prev || !s.up ||
      !s.pi) {
    rc = fm__error("emd_uniform: out of memory for %lld nodes", (long long)s.nodes);
    goto done;
  }
  double cmax = 0.0;
  for (int64_t e = 0; e < s.arcs; ++e) cmax = fmax(cmax, fabs((double)s.cost[e]));
  s.art = (cmax + 1.0) * (double)s.nodes;
  /* the starting tree: supply m at each source, demand n at each sink,
   * through the root */
  for (int64_t u = 0; u <= n + m; ++u) s.child[u] = -1;
  s.parent[s.root] = -1;
  s.depth[s.root] = 0;
  s.pi[s.root] = 0.0;
  for (int64_t u = 0; u < n + m; ++u) {
    fm__ns_link(&s, u, s.root);
    s.pred[u] = s.arcs + u;
    s.up[u] = u < n;
    s.flow[u] = u < n ? m : n;
    fm__ns_set(&s, u);
  }
  int64_t block = (int64_t)ceil(sqrt((double)s.arcs));
  if (block < 10) block = 10;
  int64_t next = 0, e;
  while ((e = fm__ns_entering(&s, &next, block)) >= 0) {
    if (!fm__ns_pivot(&s, e)) {
      rc = fm__error("emd_uniform: unbounded cycle at arc %lld (a bug)", (long long)e);
      goto done;
    }
  }
  double total = 0.0;
  for (int64_t u = 0; u < n + m; ++u) {
    if (s.pred[u] < s.arcs) {
      total += (double)s.flow[u] * (double)s.cost[s.pred[u]];
    } else if (s.flow[u] != 0) {
      rc = fm__error("emd_uniform: no feasible plan (artificial flow %lld left at node %lld)",
                     (long long)s.flow[u], (long long)u);
      goto done;
    }
  }
  *cost = total / ((double)n * (double)m);
done:
  free(s.parent), free(s.pred), free(s.flow), free(s.depth), free(s.stack), free(s.child), free(s.next), free(s.prev);
  free(s.up), free(s.pi);
  return rc;
}

/* ---- linear sum assignment ------------------------------------------------------ */

/* SciPy's augmenting_path: the shortest augmenting path from row i0 in
 * the reduced costs; returns the sink column (-1: infeasible). */
static int64_t fm__lsap_path(int64_t nc, const double *cost, double *u, double *v, int64_t *path,
                             const int64_t *row4col, double *spc, int64_t i0, uint8_t *SR, uint8_t *SC,
                             int64_t *remaining, double *min_out) {
  double min_val = 0.0;
  int64_t num_remaining = nc, i = i0, sink = -1;
  for (int64_t it = 0; it < nc; ++it) remaining[it] = nc - it - 1;
  for (int64_t j = 0; j < nc; ++j) SC[j] = 0, spc[j] = INFINITY;
  while (sink == -1) {
    int64_t index = -1;
    double lowest = INFINITY;
    SR[i] = 1;
    for (int64_t it = 0; it < num_remaining; ++it) {
      int64_t j = remaining[it];
      double r = min_val + cost[i * nc + j] - u[i] - v[j];
      if (r < spc[j]) path[j] = i, spc[j] = r;
      /* among equal costs, a column that ends the path */
      if (spc[j] < lowest || (spc[j] == lowest && row4col[j] == -1)) lowest = spc[j], index = it;
    }
    min_val = lowest;
    if (min_val == INFINITY) return -1;
    int64_t j = remaining[index];
    if (row4col[j] == -1) sink = j;
    else i = row4col[j];
    SC[j] = 1;
    remaining[index] = remaining[--num_remaining];
  }
  *min_out = min_val;
  return sink;
}

int fm_linear_sum_assignment(fm_tensor *col_for_row, const fm_tensor *c, int32_t maximize) {
  if (!fm__check_costs(c, "linear_sum_assignment: costs")) return -1;
  int64_t R = c->dims[0], Cn = c->dims[1];
  if (!col_for_row || col_for_row->type != FM_I32 || col_for_row->ndim != 1 || col_for_row->dims[0] != R)
    return fm__error("linear_sum_assignment: col_for_row must be an int32 vector of %lld rows", (long long)R);
  if (!fm__check_contiguous(col_for_row, "linear_sum_assignment: col_for_row") ||
      !fm__check_writable(col_for_row, "linear_sum_assignment: col_for_row"))
    return -1;
  int32_t *out = (int32_t *)col_for_row->data;
  for (int64_t i = 0; i < R; ++i) out[i] = -1;
  if (R == 0 || Cn == 0) return 0;
  if (R > INT32_MAX || Cn > INT32_MAX) return fm__error("linear_sum_assignment: too large");
  bool transpose = Cn < R;
  int64_t nr = transpose ? Cn : R, nc = transpose ? R : Cn;
  const float *src = fm__f32(c);
  double *cost = malloc((size_t)(nr * nc) * sizeof *cost);
  double *u = calloc((size_t)nr, sizeof *u), *v = calloc((size_t)nc, sizeof *v);
  double *spc = malloc((size_t)nc * sizeof *spc);
  int64_t *path = malloc((size_t)nc * sizeof *path), *col4row = malloc((size_t)nr * sizeof *col4row);
  int64_t *row4col = malloc((size_t)nc * sizeof *row4col), *remaining = malloc((size_t)nc * sizeof *remaining);
  uint8_t *SR = malloc((size_t)nr), *SC = malloc((size_t)nc);
  int rc = 0;
  if (!cost || !u || !v || !spc || !path || !col4row || !row4col || !remaining || !SR || !SC) {
    rc = fm__error("linear_sum_assignment: out of memory for %lld x %lld costs", (long long)R, (long long)Cn);
    goto done;
  }
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < Cn; ++j) {
      double x = (double)src[i * Cn + j];
      if (maximize) x = -x;
      if (transpose) cost[j * nc + i] = x;
      else cost[i * nc + j] = x;
    }
  for (int64_t i = 0; i < nr; ++i) col4row[i] = -1;
  for (int64_t j = 0; j < nc; ++j) path[j] = -1, row4col[j] = -1;
  for (int64_t cur = 0; cur < nr; ++cur) {
    double min_val;
    for (int64_t i = 0; i < nr; ++i) SR[i] = 0;
    int64_t sink = fm__lsap_path(nc, cost, u, v, path, row4col, spc, cur, SR, SC, remaining, &min_val);
    if (sink < 0) {
      rc = fm__error("linear_sum_assignment: the cost matrix is infeasible");
      goto done;
    }
    u[cur] += min_val;
    for (int64_t i = 0; i < nr; ++i)
      if (SR[i] && i != cur) u[i] += min_val - spc[col4row[i]];
    for (int64_t j = 0; j < nc; ++j)
      if (SC[j]) v[j] -= min_val - spc[j];
    int64_t j = sink;
    for (;;) {
      int64_t i = path[j];
      row4col[j] = i;
      int64_t t = col4row[i];
      col4row[i] = j;
      j = t;
      if (i == cur) break;
    }
  }
  for (int64_t i = 0; i < nr; ++i) {
    if (transpose) out[col4row[i]] = (int32_t)i;
    else out[i] = (int32_t)col4row[i];
  }
done:
  free(cost), free(u), free(v), free(spc), free(path), free(col4row), free(row4col), free(remaining), free(SR),
      free(SC);
  return rc;
}
