/* masks.c — what segmentation does with masks once a model has made them:
 * label maps, connected components, small-region cleanup, COCO RLE, boxes,
 * IoU, NMS and SAM's stability score.
 *
 * Where a function names a reference (segment-anything's utils/amg.py,
 * pycocotools' maskApi.c, torchvision's nms), it reproduces that code's
 * results exactly, ties and rounding included, because mask generators
 * built on it are compared record by record. */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A tensor of one dtype, ndim dims (ndim < 0: any), contiguous. */
static bool fm__check_typed(const fm_tensor *t, int32_t dtype, int32_t ndim, const char *what) {
  if (!t) return fm__error("%s is NULL", what), false;
  if (t->type != dtype)
    return fm__error("%s: expected %s, got %s", what, fm_dtype_name(dtype),
                     fm_dtype_name(t->type)), false;
  if (ndim >= 0 && !fm__check_ndim(t, ndim, what)) return false;
  return fm__check_contiguous(t, what);
}

static bool fm__check_typed_shape(const fm_tensor *t, int32_t dtype, int32_t ndim,
                                  const int64_t *shape, const char *what) {
  return fm__check_typed(t, dtype, ndim, what) && fm__check_shape(t, ndim, shape, what);
}

static bool fm__check_typed_out(const fm_tensor *t, int32_t dtype, int32_t ndim,
                                const int64_t *shape, const char *what) {
  return fm__check_typed_shape(t, dtype, ndim, shape, what) && fm__check_writable(t, what);
}

/* ---- label maps ------------------------------------------------------------ */

/* x: (C, H, W) F32 -> out: (H, W) I32. NaN counts as the largest value, as
 * in torch.argmax. */
int fm_argmax_channels(fm_tensor *out, const fm_tensor *x) {
  if (!fm__check_typed(x, FM_F32, 3, "argmax_channels: x")) return -1;
  int64_t c = x->dims[0], hw = x->dims[1] * x->dims[2];
  int64_t shape[2] = { x->dims[1], x->dims[2] };
  if (!fm__check_typed_out(out, FM_I32, 2, shape, "argmax_channels: out")) return -1;
  if (c == 0) return fm__error("argmax_channels: x has no channels");
  const float *p = fm__f32(x);
  int32_t *o = out->data;
#pragma omp parallel for if (hw * c > FM__PAR_MIN)
  for (int64_t i = 0; i < hw; ++i) {
    float best = p[i];
    int32_t arg = 0;
    for (int64_t k = 1; k < c && best == best; ++k) {
      float v = p[k * hw + i];
      if (v > best || v != v) best = v, arg = (int32_t)k;
    }
    o[i] = arg;
  }
  return 0;
}

/* x: F32 any shape -> out: U8 same shape */
int fm_threshold(fm_tensor *out, const fm_tensor *x, float t) {
  if (!fm__check_typed(x, FM_F32, -1, "threshold: x")) return -1;
  if (!fm__check_typed_out(out, FM_U8, x->ndim, x->dims, "threshold: out")) return -1;
  int64_t n = fm_tensor_numel(x);
  const float *p = fm__f32(x);
  uint8_t *o = out->data;
#pragma omp parallel for if (n > FM__PAR_MIN)
  for (int64_t i = 0; i < n; ++i) o[i] = p[i] > t;
  return 0;
}

/* ---- connected components ---------------------------------------------------- */

static int32_t fm__find(int32_t *parent, int32_t a) {
  int32_t root = a;
  while (parent[root] != root) root = parent[root];
  while (parent[a] != root) {          /* path compression */
    int32_t next = parent[a];
    parent[a] = root;
    a = next;
  }
  return root;
}

/* The smaller label becomes the root, so a component's root is its first
 * provisional label. */
static int32_t fm__union(int32_t *parent, int32_t a, int32_t b) {
  a = fm__find(parent, a);
  b = fm__find(parent, b);
  if (a < b) { parent[b] = a; return a; }
  parent[a] = b;
  return b;
}

/* mask: (H, W) U8 -> labels: (H, W) I32. Two passes: provisional labels
 * with union-find in raster order, then final numbers in the order in which
 * OpenCV (4.6, checked on random masks) meets the components: raster order
 * of pixels for 4-connectivity (its SAUF scan), 2x2 blocks in raster order
 * for 8-connectivity (its block-based Spaghetti/BBDT scans). Only the
 * numbering depends on this; it decides, e.g., which of two equally large
 * islands remove_small_regions keeps. */
int64_t fm_connected_components(fm_tensor *labels, const fm_tensor *mask, int32_t connectivity) {
  if (!fm__check_typed(mask, FM_U8, 2, "connected_components: mask")) return -1;
  if (!fm__check_typed_out(labels, FM_I32, 2, mask->dims, "connected_components: labels"))
    return -1;
  if (connectivity != 4 && connectivity != 8)
    return fm__error("connected_components: connectivity must be 4 or 8, got %d", (int)connectivity);
  int64_t h = mask->dims[0], w = mask->dims[1], hw = h * w;
  if (hw >= INT32_MAX) return fm__error("connected_components: mask too large (%lld pixels)", (long long)hw);
  const uint8_t *m = mask->data;
  int32_t *lab = labels->data;
  int32_t *parent = malloc(sizeof(int32_t) * (size_t)(hw + 1));
  if (!parent) return fm__error("connected_components: out of memory");

  /* pass 1: provisional labels from the already visited neighbours */
  int32_t next = 1;
  parent[0] = 0;
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      int64_t i = y * w + x;
      if (!m[i]) { lab[i] = 0; continue; }
      int32_t nb[4], k = 0;
      if (x > 0 && m[i - 1]) nb[k++] = lab[i - 1];
      if (y > 0) {
        if (m[i - w]) nb[k++] = lab[i - w];
        if (connectivity == 8 && x > 0 && m[i - w - 1]) nb[k++] = lab[i - w - 1];
        if (connectivity == 8 && x + 1 < w && m[i - w + 1]) nb[k++] = lab[i - w + 1];
      }
      if (k == 0) {
        parent[next] = next;
        lab[i] = next++;
        continue;
      }
      int32_t root = nb[0];
      for (int32_t j = 1; j < k; ++j) root = fm__union(parent, root, nb[j]);
      lab[i] = fm__find(parent, root);
    }
  }

  /* pass 2: final numbers in scan order; a "block" is one pixel for 4 */
  int32_t *final = calloc((size_t)next, sizeof(int32_t));
  if (!final) { free(parent); return fm__error("connected_components: out of memory"); }
  int32_t n = 0;
  int64_t b = connectivity == 8 ? 2 : 1;
  for (int64_t by = 0; by < h; by += b) {
    for (int64_t bx = 0; bx < w; bx += b) {
      for (int64_t dy = 0; dy < b && by + dy < h; ++dy) {
        for (int64_t dx = 0; dx < b && bx + dx < w; ++dx) {
          int64_t i = (by + dy) * w + bx + dx;
          if (!lab[i]) continue;
          int32_t root = fm__find(parent, lab[i]);
          if (!final[root]) final[root] = ++n;
          lab[i] = final[root];
        }
      }
    }
  }
  free(final);
  free(parent);
  return n;
}

/* labels: (H, W) I32 in [0, n] -> areas: (n + 1) I32 */
int fm_label_areas(fm_tensor *areas, const fm_tensor *labels) {
  if (!fm__check_typed(labels, FM_I32, 2, "label_areas: labels")) return -1;
  if (!fm__check_typed(areas, FM_I32, 1, "label_areas: areas") ||
      !fm__check_writable(areas, "label_areas: areas"))
    return -1;
  int64_t n = areas->dims[0], hw = fm_tensor_numel(labels);
  const int32_t *lab = labels->data;
  int32_t *a = areas->data;
  memset(a, 0, sizeof(int32_t) * (size_t)n);
  for (int64_t i = 0; i < hw; ++i) {
    if (lab[i] < 0 || lab[i] >= n)
      return fm__error("label_areas: label %d outside [0, %lld]", (int)lab[i], (long long)n - 1);
    ++a[lab[i]];
  }
  return 0;
}

/* ref: segment-anything utils/amg.py, remove_small_regions. The working
 * mask is the mask (islands) or its complement (holes); label 0 of its
 * components is "not in the working mask". Holes keep label 0 (the mask)
 * and the small labels; islands keep the labels that are not small, or
 * the largest one (the first on ties, as np.argmax) when all are small. */
int fm_remove_small_regions(fm_tensor *out, const fm_tensor *mask, double area_thresh,
                            int32_t mode) {
  if (!fm__check_typed(mask, FM_U8, 2, "remove_small_regions: mask")) return -1;
  if (!fm__check_typed_out(out, FM_U8, 2, mask->dims, "remove_small_regions: out")) return -1;
  if (mode != FM_HOLES && mode != FM_ISLANDS)
    return fm__error("remove_small_regions: mode must be FM_HOLES or FM_ISLANDS, got %d", (int)mode);
  int64_t hw = fm_tensor_numel(mask);
  const uint8_t *m = mask->data;
  fm_tensor *working = fm_tensor_new(FM_U8, 2, mask->dims);
  fm_tensor *labels = fm_tensor_new(FM_I32, 2, mask->dims);
  int64_t *sizes = NULL;
  uint8_t *fill = NULL;
  int rc = -1;
  if (!working || !labels) goto done;
  uint8_t *wk = working->data;
  for (int64_t i = 0; i < hw; ++i) wk[i] = mode == FM_HOLES ? !m[i] : m[i] != 0;
  int64_t n = fm_connected_components(labels, working, 8);
  if (n < 0) goto done;
  sizes = calloc((size_t)n + 1, sizeof(int64_t));
  fill = calloc((size_t)n + 1, 1);
  if (!sizes || !fill) { fm__error("remove_small_regions: out of memory"); goto done; }
  const int32_t *lab = labels->data;
  for (int64_t i = 0; i < hw; ++i) ++sizes[lab[i]];

  int64_t small = 0;
  for (int64_t l = 1; l <= n; ++l) small += (double)sizes[l] < area_thresh;
  uint8_t *o = out->data;
  if (small == 0) {                        /* "return mask, False" */
    for (int64_t i = 0; i < hw; ++i) o[i] = m[i] != 0;
    rc = 0;
    goto done;
  }
  if (mode == FM_HOLES) {
    fill[0] = 1;
    for (int64_t l = 1; l <= n; ++l) fill[l] = (double)sizes[l] < area_thresh;
  } else {
    int64_t kept = 0, largest = 1;
    for (int64_t l = 1; l <= n; ++l) {
      fill[l] = !((double)sizes[l] < area_thresh);
      kept += fill[l];
      if (sizes[l] > sizes[largest]) largest = l;
    }
    if (kept == 0) fill[largest] = 1;
  }
  for (int64_t i = 0; i < hw; ++i) o[i] = fill[lab[i]];
  rc = 1;
done:
  free(sizes);
  free(fill);
  fm_tensor_release(working);
  fm_tensor_release(labels);
  return rc;
}

/* ---- COCO RLE (ref: pycocotools common/maskApi.c) ------------------------- */

static bool fm__check_counts(const fm_tensor *counts, const char *what) {
  return fm__check_typed(counts, FM_I32, 1, what);
}

/* mask: (H, W) U8 -> counts (m) I32 (rleEncode: the pixel before the first
 * is taken as unset, so a mask whose first pixel is set starts with 0) */
fm_tensor *fm_rle_encode(const fm_tensor *mask) {
  if (!fm__check_typed(mask, FM_U8, 2, "rle_encode: mask")) return NULL;
  int64_t h = mask->dims[0], w = mask->dims[1];
  if (h * w > INT32_MAX)
    return fm__error_null("rle_encode: mask too large (%lld pixels)", (long long)(h * w));
  const uint8_t *m = mask->data;
  int64_t runs = 1;
  uint8_t prev = 0;
  for (int64_t x = 0; x < w; ++x)
    for (int64_t y = 0; y < h; ++y) {
      uint8_t v = m[y * w + x] != 0;
      if (v != prev) ++runs, prev = v;
    }
  fm_tensor *counts = fm_tensor_new(FM_I32, 1, &runs);
  if (!counts) return NULL;
  int32_t *c = counts->data, run = 0;
  int64_t k = 0;
  prev = 0;
  for (int64_t x = 0; x < w; ++x)
    for (int64_t y = 0; y < h; ++y) {
      uint8_t v = m[y * w + x] != 0;
      if (v != prev) c[k++] = run, run = 0, prev = v;
      ++run;
    }
  c[k] = run;
  return counts;
}

/* Counts that are non-negative and add up to exactly h * w. */
static bool fm__counts_cover(const fm_tensor *counts, int64_t hw, const char *what) {
  const int32_t *c = counts->data;
  int64_t total = 0;
  for (int64_t j = 0; j < counts->dims[0]; ++j) {
    if (c[j] < 0) return fm__error("%s: negative count %d at %lld", what, (int)c[j], (long long)j), false;
    total += c[j];
  }
  if (total != hw)
    return fm__error("%s: counts add up to %lld, the mask has %lld pixels", what,
                     (long long)total, (long long)hw), false;
  return true;
}

/* Runs fill the pixels in column-major order: y fastest. */
int fm_rle_decode(fm_tensor *mask, const fm_tensor *counts) {
  if (!fm__check_counts(counts, "rle_decode: counts")) return -1;
  if (!fm__check_typed(mask, FM_U8, 2, "rle_decode: mask") ||
      !fm__check_writable(mask, "rle_decode: mask"))
    return -1;
  int64_t h = mask->dims[0], w = mask->dims[1];
  if (!fm__counts_cover(counts, h * w, "rle_decode")) return -1;
  const int32_t *c = counts->data;
  uint8_t *m = mask->data;
  int64_t y = 0, x = 0;
  for (int64_t j = 0; j < counts->dims[0]; ++j) {
    uint8_t v = (uint8_t)(j & 1);
    for (int32_t k = 0; k < c[j]; ++k) {
      m[y * w + x] = v;
      if (++y == h) y = 0, ++x;
    }
  }
  return 0;
}

int64_t fm_rle_area(const fm_tensor *counts) {
  if (!fm__check_counts(counts, "rle_area: counts")) return -1;
  const int32_t *c = counts->data;
  int64_t area = 0;
  for (int64_t j = 1; j < counts->dims[0]; j += 2) area += c[j];
  return area;
}

int fm_rle_paint(fm_tensor *labels, const fm_tensor *counts, int32_t value) {
  if (!fm__check_counts(counts, "rle_paint: counts")) return -1;
  if (!fm__check_typed(labels, FM_I32, 2, "rle_paint: labels") ||
      !fm__check_writable(labels, "rle_paint: labels"))
    return -1;
  int64_t h = labels->dims[0], w = labels->dims[1];
  if (!fm__counts_cover(counts, h * w, "rle_paint")) return -1;
  const int32_t *c = counts->data;
  int32_t *lab = labels->data;
  int64_t start = 0;
  for (int64_t j = 0; j < counts->dims[0]; start += c[j], ++j) {
    if (!(j & 1)) continue;
    int64_t x = start / h, y = start % h;
    for (int32_t k = 0; k < c[j]; ++k) {
      lab[y * w + x] = value;
      if (++y == h) y = 0, ++x;
    }
  }
  return 0;
}

/* floor(x / 32) for any sign (x >> 5 on a negative value is
 * implementation-defined in C) */
static int64_t fm__shift5(int64_t x) { return x < 0 ? ~(~x >> 5) : x >> 5; }

/* rleToString: counts from the fourth on are sent as the difference to the
 * count two back ("if (i > 2)"), then 5 bits per character, least
 * significant first, 0x20 = more to come, 0x10 of the last group = sign. */
char *fm_rle_to_string(const fm_tensor *counts) {
  if (!fm__check_counts(counts, "rle_to_string: counts")) return NULL;
  int64_t m = counts->dims[0];
  const int32_t *c = counts->data;
  char *s = malloc((size_t)m * 8 + 1);   /* |delta| < 2^32: at most 7 groups */
  if (!s) return fm__error_null("rle_to_string: out of memory");
  int64_t p = 0;
  for (int64_t i = 0; i < m; ++i) {
    int64_t x = c[i];
    if (i > 2) x -= c[i - 2];
    bool more = true;
    while (more) {
      int g = (int)(x & 0x1f);
      x = fm__shift5(x);
      more = (g & 0x10) ? x != -1 : x != 0;
      if (more) g |= 0x20;
      s[p++] = (char)(g + 48);
    }
  }
  s[p] = '\0';
  return s;
}

/* rleFrString, with the checks it leaves out: characters in 48..111, no
 * number cut short, counts that fit. */
fm_tensor *fm_rle_from_string(const char *s) {
  if (!s) return fm__error_null("rle_from_string: string is NULL");
  size_t len = strlen(s);
  int64_t *cnts = malloc(sizeof(int64_t) * (len + 1));
  if (!cnts) return fm__error_null("rle_from_string: out of memory");
  int64_t m = 0;
  size_t p = 0;
  while (s[p]) {
    uint64_t bits = 0;
    int k = 0;
    bool more = true;
    int64_t x = 0;
    while (more) {
      int g = (unsigned char)s[p] - 48;
      if (s[p] == '\0' || k == 12 || g < 0 || g > 63) {
        free(cnts);
        if (s[p] == '\0') return fm__error_null("rle_from_string: string ends inside a count");
        if (k == 12) return fm__error_null("rle_from_string: count at character %zu too long", p);
        return fm__error_null("rle_from_string: character %zu ('%c') outside '0'..'o'", p, s[p]);
      }
      bits |= (uint64_t)(g & 0x1f) << (5 * k);
      more = g & 0x20;
      ++p, ++k;
      if (!more && (g & 0x10)) bits |= ~(uint64_t)0 << (5 * k);   /* sign-extend */
    }
    x = (int64_t)bits;
    if (m > 2) x += cnts[m - 2];
    if (x < 0 || x > INT32_MAX) {
      free(cnts);
      return fm__error_null("rle_from_string: count %lld (number %lld) out of range",
                            (long long)x, (long long)m);
    }
    cnts[m++] = x;
  }
  fm_tensor *counts = fm_tensor_new(FM_I32, 1, &m);
  if (counts)
    for (int64_t j = 0; j < m; ++j) ((int32_t *)counts->data)[j] = (int32_t)cnts[j];
  free(cnts);
  return counts;
}

/* ---- polygons (pycocotools' rleFrPoly) ---------------------------------------- */

/* The walk of rleFrPoly over the 5x upsampled outline: each pair of
 * consecutive points whose x differs yields a y-boundary point in the
 * column it crosses, kept when that column is a whole pixel of the image.
 * The points are not stored (rleFrPoly keeps all of them); only the kept
 * boundary indices x * h + y are. */
typedef struct fm__poly_walk {
  int64_t h, w;
  bool started;
  int pu, pv;           /* the previous point */
  uint32_t *a;          /* boundary indices */
  int64_t n, cap;
} fm__poly_walk;

static bool fm__poly_push(fm__poly_walk *wk, uint32_t v) {
  if (wk->n + 1 >= wk->cap) {      /* one spare slot for the final h * w */
    int64_t cap = wk->cap ? 2 * wk->cap : 64;
    uint32_t *a = realloc(wk->a, sizeof(uint32_t) * (size_t)cap);
    if (!a) return fm__error("rle_from_polygon: out of memory"), false;
    wk->a = a, wk->cap = cap;
  }
  wk->a[wk->n++] = v;
  return true;
}

static bool fm__poly_step(fm__poly_walk *wk, int u, int v) {
  bool ok = true;
  if (wk->started && u != wk->pu) {
    double xd = (double)(u < wk->pu ? u : u - 1);
    xd = (xd + .5) / 5 - .5;
    if (floor(xd) == xd && xd >= 0 && xd <= (double)(wk->w - 1)) {
      double yd = (double)(v < wk->pv ? v : wk->pv);
      yd = (yd + .5) / 5 - .5;
      if (yd < 0) yd = 0;
      else if (yd > (double)wk->h) yd = (double)wk->h;
      yd = ceil(yd);
      ok = fm__poly_push(wk, (uint32_t)((int64_t)xd * wk->h + (int64_t)yd));
    }
  }
  wk->started = true, wk->pu = u, wk->pv = v;
  return ok;
}

/* One edge (xs, ys) -> (xe, ye) in upsampled integer coordinates, point by
 * point along its major axis, the minor coordinate rounded from the end
 * with the smaller major coordinate (so an edge and its reverse differ). */
static bool fm__poly_edge(fm__poly_walk *wk, int xs, int ys, int xe, int ye) {
  int dx = abs(xe - xs), dy = abs(ys - ye);
  if (dx == 0 && dy == 0)   /* rleFrPoly computes 0/0 here; its one point's v never matters: x does not change */
    return fm__poly_step(wk, xs, ys);
  bool flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
  if (flip) {
    int t = xs; xs = xe; xe = t;
    t = ys; ys = ye; ye = t;
  }
  double s = dx >= dy ? (double)(ye - ys) / dx : (double)(xe - xs) / dy;
  if (dx >= dy) {
    for (int d = 0; d <= dx; ++d) {
      int t = flip ? dx - d : d;
      if (!fm__poly_step(wk, t + xs, (int)(ys + s * t + .5))) return false;
    }
  } else {
    for (int d = 0; d <= dy; ++d) {
      int t = flip ? dy - d : d;
      if (!fm__poly_step(wk, (int)(xs + s * t + .5), t + ys)) return false;
    }
  }
  return true;
}

static int fm__cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* sorted boundary indices -> run lengths, a zero-length run merging its
 * neighbours (rleFrPoly's last loop); returns the number of runs */
static int64_t fm__poly_runs(uint32_t *a, int64_t k) {
  qsort(a, (size_t)k, sizeof(uint32_t), fm__cmp_u32);
  uint32_t p = 0;
  for (int64_t j = 0; j < k; ++j) {
    uint32_t t = a[j];
    a[j] -= p;
    p = t;
  }
  int64_t j = 0, m = 0;
  a[m++] = a[j++];                 /* in place: m <= j throughout */
  while (j < k) {
    if (a[j] > 0) {
      a[m++] = a[j++];
    } else {
      ++j;
      if (j < k) a[m - 1] += a[j++];
    }
  }
  return m;
}

static bool fm__check_polygon(const double *xy, int64_t n, int64_t h, int64_t w) {
  if (!xy) return fm__error("rle_from_polygon: xy is NULL"), false;
  if (n < 1) return fm__error("rle_from_polygon: a polygon needs at least 1 point, got %lld", (long long)n), false;
  if (h < 1 || w < 1 || h > INT32_MAX / w)
    return fm__error("rle_from_polygon: mask size %lldx%lld must be at least 1x1 and at most %d pixels",
                     (long long)h, (long long)w, INT32_MAX), false;
  const double lim = 67108864.0;   /* 2^26: 5x that and its differences fit an int */
  for (int64_t j = 0; j < 2 * n; ++j)
    if (!(xy[j] >= -lim && xy[j] <= lim))
      return fm__error("rle_from_polygon: coordinate %lld of point %lld is %g, outside [-2^26, 2^26]",
                       (long long)(j % 2), (long long)(j / 2), xy[j]), false;
  return true;
}

fm_tensor *fm_rle_from_polygon(const double *xy, int64_t n_points, int64_t h, int64_t w) {
  if (!fm__check_polygon(xy, n_points, h, w)) return NULL;
  fm__poly_walk wk = { .h = h, .w = w };
  /* (int)(scale * v + .5): truncation toward zero, as rleFrPoly casts */
  int x0 = (int)(5 * xy[0] + .5), y0 = (int)(5 * xy[1] + .5), xs = x0, ys = y0;
  bool ok = true;
  for (int64_t j = 0; ok && j < n_points; ++j) {
    int xe = j + 1 < n_points ? (int)(5 * xy[2 * (j + 1)] + .5) : x0;
    int ye = j + 1 < n_points ? (int)(5 * xy[2 * (j + 1) + 1] + .5) : y0;
    ok = fm__poly_edge(&wk, xs, ys, xe, ye);
    xs = xe, ys = ye;
  }
  if (ok) ok = fm__poly_push(&wk, (uint32_t)(h * w));
  fm_tensor *counts = NULL;
  if (ok) {
    int64_t m = fm__poly_runs(wk.a, wk.n);
    counts = fm_tensor_new(FM_I32, 1, &m);
    if (counts)
      for (int64_t j = 0; j < m; ++j) ((int32_t *)counts->data)[j] = (int32_t)wk.a[j];
  }
  free(wk.a);
  return counts;
}

/* ---- boxes ------------------------------------------------------------------- */

static bool fm__check_boxes(const fm_tensor *b, const char *what) {
  char s[128];
  if (!fm__check_typed(b, FM_F32, 2, what)) return false;
  if (b->dims[1] != 4)
    return fm__error("%s: expected (N, 4) boxes, got %s", what, fm__shape_str(b, s, sizeof s)), false;
  return true;
}

/* ref: segment-anything utils/amg.py, batched_mask_to_box.
 * masks: (N, H, W) U8 -> boxes: (N, 4) F32 */
int fm_masks_to_boxes(fm_tensor *boxes, const fm_tensor *masks) {
  if (!fm__check_typed(masks, FM_U8, 3, "masks_to_boxes: masks")) return -1;
  int64_t n = masks->dims[0], h = masks->dims[1], w = masks->dims[2];
  int64_t shape[2] = { n, 4 };
  if (!fm__check_typed_out(boxes, FM_F32, 2, shape, "masks_to_boxes: boxes")) return -1;
  const uint8_t *all = masks->data;
  float *b = fm__f32(boxes);
#pragma omp parallel for if (n * h * w > FM__PAR_MIN)
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t *m = all + i * h * w;
    int64_t x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (int64_t y = 0; y < h; ++y) {
      const uint8_t *row = m + y * w;
      int64_t first = 0, last = w - 1;
      while (first < w && !row[first]) ++first;
      if (first == w) continue;
      while (!row[last]) --last;
      if (y0 == h) y0 = y;
      y1 = y;
      if (first < x0) x0 = first;
      if (last > x1) x1 = last;
    }
    float *o = b + 4 * i;
    if (x1 < 0) { o[0] = o[1] = o[2] = o[3] = 0; continue; }
    o[0] = (float)x0, o[1] = (float)y0, o[2] = (float)x1, o[3] = (float)y1;
  }
  return 0;
}

int fm_boxes_xyxy_to_xywh(fm_tensor *out, const fm_tensor *boxes) {
  if (!fm__check_boxes(boxes, "boxes_xyxy_to_xywh: boxes")) return -1;
  if (!fm__check_typed_out(out, FM_F32, 2, boxes->dims, "boxes_xyxy_to_xywh: out")) return -1;
  const float *b = fm__f32(boxes);
  float *o = fm__f32(out);
  for (int64_t i = 0; i < boxes->dims[0]; ++i) {
    float x0 = b[4 * i], y0 = b[4 * i + 1], x1 = b[4 * i + 2], y1 = b[4 * i + 3];
    o[4 * i] = x0, o[4 * i + 1] = y0, o[4 * i + 2] = x1 - x0, o[4 * i + 3] = y1 - y0;
  }
  return 0;
}

static float fm__box_area(const float *b) { return (b[2] - b[0]) * (b[3] - b[1]); }

static float fm__box_inter(const float *a, const float *b) {
  float w = fminf(a[2], b[2]) - fmaxf(a[0], b[0]);
  float h = fminf(a[3], b[3]) - fmaxf(a[1], b[1]);
  return (w > 0 ? w : 0) * (h > 0 ? h : 0);
}

/* ref: torchvision ops/boxes.py, box_iou. a: (N, 4), b: (M, 4) -> out: (N, M) */
int fm_box_iou(fm_tensor *out, const fm_tensor *a, const fm_tensor *b) {
  if (!fm__check_boxes(a, "box_iou: a") || !fm__check_boxes(b, "box_iou: b")) return -1;
  int64_t n = a->dims[0], m = b->dims[0], shape[2] = { n, m };
  if (!fm__check_typed_out(out, FM_F32, 2, shape, "box_iou: out")) return -1;
  const float *pa = fm__f32(a), *pb = fm__f32(b);
  float *o = fm__f32(out);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      float inter = fm__box_inter(pa + 4 * i, pb + 4 * j);
      o[i * m + j] = inter / (fm__box_area(pa + 4 * i) + fm__box_area(pb + 4 * j) - inter);
    }
  return 0;
}

typedef struct { float score; int64_t index; } fm__ranked;

/* Descending score; NaN first (torch's sort puts NaN above every number);
 * ties by index, which is what a stable sort gives. */
static int fm__rank_cmp(const void *pa, const void *pb) {
  const fm__ranked *a = pa, *b = pb;
  bool na = a->score != a->score, nb = b->score != b->score;
  if (na != nb) return na ? -1 : 1;
  if (!na && a->score != b->score) return a->score > b->score ? -1 : 1;
  return a->index < b->index ? -1 : a->index > b->index;
}

/* torch.sort(values, descending=True) on the CPU, as torchvision's
 * _batched_nms_vanilla calls it: libstdc++'s std::sort (introsort: median
 * of three, unguarded Hoare partition, heapsort past 2 log2(n) levels,
 * insertion sort below 16) over (value, position) pairs compared by value
 * alone, NaN first (KeyValueCompDesc). Not stable: equal values come out
 * in the order this algorithm leaves them, which is what is reproduced.
 * ref: gcc libstdc++-v3 include/bits/stl_algo.h, stl_heap.h;
 * pytorch aten/src/ATen/native/cpu/SortingKernel.cpp */
typedef struct { float value; int64_t pos; } fm__pair;

static bool fm__desc(const fm__pair *a, const fm__pair *b) {
  bool na = a->value != a->value, nb = b->value != b->value;
  return (na && !nb) || a->value > b->value;
}

static void fm__swap(fm__pair *a, fm__pair *b) { fm__pair t = *a; *a = *b; *b = t; }

static void fm__push_heap(fm__pair *first, int64_t hole, int64_t top, fm__pair value) {
  int64_t parent = (hole - 1) / 2;
  while (hole > top && fm__desc(first + parent, &value)) {
    first[hole] = first[parent];
    hole = parent;
    parent = (hole - 1) / 2;
  }
  first[hole] = value;
}

static void fm__adjust_heap(fm__pair *first, int64_t hole, int64_t len, fm__pair value) {
  int64_t top = hole, child = hole;
  while (child < (len - 1) / 2) {
    child = 2 * (child + 1);
    if (fm__desc(first + child, first + (child - 1))) child--;
    first[hole] = first[child];
    hole = child;
  }
  if ((len & 1) == 0 && child == (len - 2) / 2) {
    child = 2 * (child + 1);
    first[hole] = first[child - 1];
    hole = child - 1;
  }
  fm__push_heap(first, hole, top, value);
}

/* std::__partial_sort(first, last, last): make_heap, then sort_heap */
static void fm__heap_sort(fm__pair *first, fm__pair *last) {
  int64_t len = last - first;
  if (len >= 2) {
    for (int64_t parent = (len - 2) / 2;; --parent) {
      fm__adjust_heap(first, parent, len, first[parent]);
      if (parent == 0) break;
    }
  }
  while (last - first > 1) {
    --last;
    fm__pair value = *last;
    *last = *first;
    fm__adjust_heap(first, 0, last - first, value);
  }
}

static void fm__move_median_to_first(fm__pair *result, fm__pair *a, fm__pair *b, fm__pair *c) {
  if (fm__desc(a, b)) {
    if (fm__desc(b, c)) fm__swap(result, b);
    else if (fm__desc(a, c)) fm__swap(result, c);
    else fm__swap(result, a);
  } else if (fm__desc(a, c)) fm__swap(result, a);
  else if (fm__desc(b, c)) fm__swap(result, c);
  else fm__swap(result, b);
}

static fm__pair *fm__unguarded_partition(fm__pair *first, fm__pair *last, const fm__pair *pivot) {
  for (;;) {
    while (fm__desc(first, pivot)) ++first;
    --last;
    while (fm__desc(pivot, last)) --last;
    if (!(first < last)) return first;
    fm__swap(first, last);
    ++first;
  }
}

enum { FM__SORT_THRESHOLD = 16 };

static void fm__introsort_loop(fm__pair *first, fm__pair *last, int64_t depth) {
  while (last - first > FM__SORT_THRESHOLD) {
    if (depth == 0) {
      fm__heap_sort(first, last);
      return;
    }
    --depth;
    fm__pair *mid = first + (last - first) / 2;
    fm__move_median_to_first(first, first + 1, mid, last - 1);
    fm__pair *cut = fm__unguarded_partition(first + 1, last, first);
    fm__introsort_loop(cut, last, depth);
    last = cut;
  }
}

static void fm__unguarded_linear_insert(fm__pair *last) {
  fm__pair value = *last, *next = last - 1;
  while (fm__desc(&value, next)) {
    *last = *next;
    last = next;
    --next;
  }
  *last = value;
}

static void fm__insertion_sort(fm__pair *first, fm__pair *last) {
  if (first == last) return;
  for (fm__pair *i = first + 1; i != last; ++i) {
    if (fm__desc(i, first)) {
      fm__pair value = *i;
      memmove(first + 1, first, (size_t)(i - first) * sizeof *first);
      *first = value;
    } else {
      fm__unguarded_linear_insert(i);
    }
  }
}

static void fm__torch_sort_desc(fm__pair *first, int64_t n) {
  if (n == 0) return;
  int64_t lg = 63 - __builtin_clzll((unsigned long long)n);
  fm__introsort_loop(first, first + n, 2 * lg);
  if (n > FM__SORT_THRESHOLD) {
    fm__insertion_sort(first, first + FM__SORT_THRESHOLD);
    for (fm__pair *i = first + FM__SORT_THRESHOLD; i != first + n; ++i) fm__unguarded_linear_insert(i);
  } else {
    fm__insertion_sort(first, first + n);
  }
}

static int fm__index_cmp(const void *pa, const void *pb) {
  int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
  return (a > b) - (a < b);
}

/* More boxes than this (boxes.numel() > 4000) send torchvision's
 * batched_nms on the CPU to _batched_nms_vanilla: the same boxes are kept,
 * but listed as torch.sort orders their scores (fm__torch_sort_desc) after
 * torch.where has put them in index order. */
#define FM__NMS_VANILLA_BOXES 1000

/* ref: torchvision csrc/ops/cpu/nms_kernel.cpp (IoU in float, "> thr"),
 * ops/boxes.py batched_nms (categories never suppress each other; kept
 * indices come out by score: in visiting order, or for more than 1000
 * boxes in _batched_nms_vanilla's order). */
int64_t fm_nms(fm_tensor *keep, const fm_tensor *boxes, const fm_tensor *scores,
               const fm_tensor *categories, double iou_threshold) {
  if (!fm__check_boxes(boxes, "nms: boxes")) return -1;
  int64_t n = boxes->dims[0];
  if (!fm__check_typed_shape(scores, FM_F32, 1, &n, "nms: scores")) return -1;
  if (categories && !fm__check_typed_shape(categories, FM_I32, 1, &n, "nms: categories")) return -1;
  if (!fm__check_typed_out(keep, FM_I32, 1, &n, "nms: keep")) return -1;
  if (n > INT32_MAX) return fm__error("nms: too many boxes");
  const float *b = fm__f32(boxes), *s = fm__f32(scores);
  const int32_t *cat = categories ? categories->data : NULL;
  int32_t *kept = keep->data;
  fm__ranked *order = malloc(sizeof(fm__ranked) * (size_t)(n ? n : 1));
  uint8_t *suppressed = calloc((size_t)(n ? n : 1), 1);
  float *area = malloc(sizeof(float) * (size_t)(n ? n : 1));
  if (!order || !suppressed || !area) {
    free(order), free(suppressed), free(area);
    return fm__error("nms: out of memory");
  }
  for (int64_t i = 0; i < n; ++i) {
    order[i] = (fm__ranked){ s[i], i };
    area[i] = fm__box_area(b + 4 * i);
  }
  qsort(order, (size_t)n, sizeof *order, fm__rank_cmp);
  int64_t count = 0;
  for (int64_t oi = 0; oi < n; ++oi) {
    int64_t i = order[oi].index;
    if (suppressed[i]) continue;
    kept[count++] = (int32_t)i;
    for (int64_t oj = oi + 1; oj < n; ++oj) {
      int64_t j = order[oj].index;
      if (suppressed[j] || (cat && cat[j] != cat[i])) continue;
      float inter = fm__box_inter(b + 4 * i, b + 4 * j);
      float iou = inter / (area[i] + area[j] - inter);
      if ((double)iou > iou_threshold) suppressed[j] = 1;
    }
  }
  free(order), free(suppressed), free(area);
  if (n > FM__NMS_VANILLA_BOXES && count > 1) {
    fm__pair *pairs = malloc(sizeof(fm__pair) * (size_t)count);
    int32_t *by_index = malloc(sizeof(int32_t) * (size_t)count);
    if (!pairs || !by_index) {
      free(pairs), free(by_index);
      return fm__error("nms: out of memory");
    }
    memcpy(by_index, kept, sizeof(int32_t) * (size_t)count);
    qsort(by_index, (size_t)count, sizeof *by_index, fm__index_cmp);
    for (int64_t j = 0; j < count; ++j) pairs[j] = (fm__pair){ s[by_index[j]], j };
    fm__torch_sort_desc(pairs, count);
    for (int64_t j = 0; j < count; ++j) kept[j] = by_index[pairs[j].pos];
    free(pairs), free(by_index);
  }
  return count;
}

/* ref: segment-anything utils/amg.py, calculate_stability_score.
 * logits: (N, ...) F32 -> out: (N) F32 */
int fm_stability_score(fm_tensor *out, const fm_tensor *logits, double mask_threshold,
                       double offset) {
  if (!fm__check_typed(logits, FM_F32, -1, "stability_score: logits")) return -1;
  if (logits->ndim < 1) return fm__error("stability_score: logits must have a batch dim");
  int64_t n = logits->dims[0];
  if (!fm__check_typed_out(out, FM_F32, 1, &n, "stability_score: out")) return -1;
  int64_t per = n ? fm_tensor_numel(logits) / n : 0;
  float hi = (float)(mask_threshold + offset), lo = (float)(mask_threshold - offset);
  const float *p = fm__f32(logits);
  float *o = fm__f32(out);
#pragma omp parallel for if (n * per > FM__PAR_MIN)
  for (int64_t i = 0; i < n; ++i) {
    const float *q = p + i * per;
    int64_t inter = 0, uni = 0;
    for (int64_t k = 0; k < per; ++k) inter += q[k] > hi, uni += q[k] > lo;
    o[i] = (float)inter / (float)uni;
  }
  return 0;
}

/* ref: segment-anything utils/amg.py, is_box_near_crop_edge (torch.isclose
 * with rtol 0: |a - b| <= atol). */
int fm_boxes_near_crop_edge(fm_tensor *out, const fm_tensor *boxes, const double *crop_box,
                            const double *orig_box, double atol) {
  if (!fm__check_boxes(boxes, "boxes_near_crop_edge: boxes")) return -1;
  int64_t n = boxes->dims[0];
  if (!fm__check_typed_out(out, FM_U8, 1, &n, "boxes_near_crop_edge: out")) return -1;
  if (!crop_box || !orig_box) return fm__error("boxes_near_crop_edge: crop_box and orig_box are required");
  const float *b = fm__f32(boxes);
  uint8_t *o = out->data;
  double offset[4] = { crop_box[0], crop_box[1], crop_box[0], crop_box[1] };
  for (int64_t i = 0; i < n; ++i) {
    uint8_t near = 0;
    for (int k = 0; k < 4; ++k) {
      float v = (float)(b[4 * i + k] + offset[k]);   /* uncropped, then .float() */
      bool crop_edge = fabs((double)v - (double)(float)crop_box[k]) <= atol;
      bool image_edge = fabs((double)v - (double)(float)orig_box[k]) <= atol;
      near |= crop_edge && !image_edge;
    }
    o[i] = near;
  }
  return 0;
}
