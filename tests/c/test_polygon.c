/* test_polygon.c — fm_rle_from_polygon against its naive twin: rleFrPoly
 * of pycocotools' common/maskApi.c (cocodataset/cocoapi commit
 * 8c9bcc3cf640524c4c20a9c40e89cb6a2f2fa0e9) transcribed line by line,
 * every upsampled outline point stored, on random polygons with repeated,
 * collinear, out-of-image and negative points. Where rleFrPoly casts the
 * NaN of a zero-length edge (0/0) to int, the twin takes x86's result
 * (INT_MIN): that value must never reach the output. The answers of
 * pycocotools itself are checked in tests/lua/test_prepare.lua. */
#include "fmseg.h"
#include "tap.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int x86_int(double v) { return isnan(v) ? INT_MIN : (int)v; }

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* rleFrPoly as written; returns the number of counts put in *out (malloc) */
static long naive_frpoly(const double *xy, long k, long h, long w, uint32_t **out) {
  if (k < 1) return 0;
  long j, m = 0;
  double scale = 5;
  int *x = calloc((size_t)k + 1, sizeof(int)), *y = calloc((size_t)k + 1, sizeof(int)), *u, *v;
  uint32_t *a, *b;
  for (j = 0; j < k; j++) x[j] = (int)(scale * xy[j * 2 + 0] + .5);
  x[k] = x[0];
  for (j = 0; j < k; j++) y[j] = (int)(scale * xy[j * 2 + 1] + .5);
  y[k] = y[0];
  for (j = 0; j < k; j++) {
    int ax = abs(x[j] - x[j + 1]), ay = abs(y[j] - y[j + 1]);
    m += (ax > ay ? ax : ay) + 1;
  }
  u = malloc(sizeof(int) * m);
  v = malloc(sizeof(int) * m);
  m = 0;
  for (j = 0; j < k; j++) {
    int xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1], dx, dy, t, d;
    int flip;
    double s;
    dx = abs(xe - xs);
    dy = abs(ys - ye);
    flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
    if (flip) { t = xs; xs = xe; xe = t; t = ys; ys = ye; ye = t; }
    s = dx >= dy ? (double)(ye - ys) / dx : (double)(xe - xs) / dy;
    if (dx >= dy) for (d = 0; d <= dx; d++) {
      t = flip ? dx - d : d; u[m] = t + xs; v[m] = x86_int(ys + s * t + .5); m++;
    } else for (d = 0; d <= dy; d++) {
      t = flip ? dy - d : d; v[m] = t + ys; u[m] = x86_int(xs + s * t + .5); m++;
    }
  }
  free(x); free(y);
  k = m; m = 0;
  double xd, yd;
  x = malloc(sizeof(int) * k); y = malloc(sizeof(int) * k);
  for (j = 1; j < k; j++) if (u[j] != u[j - 1]) {
    xd = (double)(u[j] < u[j - 1] ? u[j] : u[j] - 1); xd = (xd + .5) / scale - .5;
    if (floor(xd) != xd || xd < 0 || xd > w - 1) continue;
    yd = (double)(v[j] < v[j - 1] ? v[j] : v[j - 1]); yd = (yd + .5) / scale - .5;
    if (yd < 0) yd = 0; else if (yd > h) yd = h;
    yd = ceil(yd);
    x[m] = (int)xd; y[m] = (int)yd; m++;
  }
  k = m; a = malloc(sizeof(uint32_t) * (k + 1));
  for (j = 0; j < k; j++) a[j] = (uint32_t)(x[j] * (int)(h) + y[j]);
  a[k++] = (uint32_t)(h * w); free(u); free(v); free(x); free(y);
  qsort(a, k, sizeof(uint32_t), cmp_u32);
  uint32_t p = 0;
  for (j = 0; j < k; j++) { uint32_t t = a[j]; a[j] -= p; p = t; }
  b = malloc(sizeof(uint32_t) * k); j = m = 0; b[m++] = a[j++];
  while (j < k) if (a[j] > 0) b[m++] = a[j++]; else { j++; if (j < k) b[m - 1] += a[j++]; }
  free(a);
  *out = b;
  return m;
}

static unsigned long long rng_state = 88172645463325252ULL;
static double uniform(void) {   /* xorshift64 in [0, 1) */
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* one coordinate: often whole or on the 1/5 grid rleFrPoly rounds to, some
 * outside the image, a few negative */
static double coordinate(long size) {
  double r = uniform(), c = -3 + uniform() * (size + 6);
  if (r < 0.3) return floor(c);
  if (r < 0.5) return floor(c * 5) / 5 + 0.1;
  return c;
}

static int same(const fm_tensor *t, const uint32_t *want, long n) {
  if (!t || fm_tensor_numel(t) != n) return 0;
  for (long i = 0; i < n; ++i)
    if ((uint32_t)((const int32_t *)t->data)[i] != want[i]) return 0;
  return 1;
}

static void random_polygons(void) {
  int bad = 0, covered = 1;
  char first[256] = "";
  for (int trial = 0; trial < 20000; ++trial) {
    long h = 1 + (long)(uniform() * 20), w = 1 + (long)(uniform() * 20), k = 1 + (long)(uniform() * 12);
    double xy[24];
    for (long j = 0; j < k; ++j) {
      if (j > 0 && uniform() < 0.15) {            /* a repeated point: a zero-length edge */
        xy[2 * j] = xy[2 * j - 2], xy[2 * j + 1] = xy[2 * j - 1];
      } else if (j > 1 && uniform() < 0.1) {      /* back to an earlier vertex: self-touching */
        long i = (long)(uniform() * (double)(j - 1));
        xy[2 * j] = xy[2 * i], xy[2 * j + 1] = xy[2 * i + 1];
      } else {
        xy[2 * j] = coordinate(w), xy[2 * j + 1] = coordinate(h);
      }
    }
    uint32_t *want;
    long n = naive_frpoly(xy, k, h, w, &want);
    fm_tensor *got = fm_rle_from_polygon(xy, k, h, w);
    if (!same(got, want, n)) {
      if (!bad) snprintf(first, sizeof first, "trial %d: %ldx%ld, %ld points", trial, h, w, k);
      ++bad;
    }
    int64_t total = 0;
    for (int64_t i = 0; got && i < fm_tensor_numel(got); ++i) total += ((int32_t *)got->data)[i];
    covered &= got && total == h * w;
    free(want);
    fm_tensor_release(got);
  }
  if (bad) diag(first);
  ok(bad == 0, "20000 random polygons: counts equal rleFrPoly's, bit for bit");
  ok(covered, "and every result's counts add up to h * w");
}

static void large_polygon(void) {
  /* a concave star over a 480x640 image, the size COCO images have */
  double xy[40];
  for (int j = 0; j < 20; ++j) {
    double r = j % 2 ? 90.3 : 231.7, a = j * 3.14159265358979 / 10;
    xy[2 * j] = 320.2 + r * cos(a), xy[2 * j + 1] = 240.6 + r * sin(a);
  }
  uint32_t *want;
  long n = naive_frpoly(xy, 20, 480, 640, &want);
  fm_tensor *got = fm_rle_from_polygon(xy, 20, 480, 640);
  ok(n > 100 && same(got, want, n), "a 20-point star on 480x640 equals rleFrPoly");
  free(want);
  fm_tensor_release(got);
}

static void errors(void) {
  double xy[6] = { 1, 1, 4, 1, 2, 3 };
  ok(fm_rle_from_polygon(xy, 0, 5, 5) == NULL && strstr(fm_last_error(), "at least 1 point"),
     "no points: refused, saying why");
  ok(fm_rle_from_polygon(NULL, 3, 5, 5) == NULL && strstr(fm_last_error(), "xy is NULL"), "NULL xy: refused");
  ok(fm_rle_from_polygon(xy, 3, 0, 5) == NULL && strstr(fm_last_error(), "mask size 0x5"), "an empty mask size: refused");
  ok(fm_rle_from_polygon(xy, 3, 70000, 70000) == NULL && strstr(fm_last_error(), "at most"),
     "more than INT32_MAX pixels: refused");
  double nan_xy[6] = { 1, 1, NAN, 1, 2, 3 };
  ok(fm_rle_from_polygon(nan_xy, 3, 5, 5) == NULL && strstr(fm_last_error(), "coordinate 0 of point 1"),
     "a NaN coordinate: refused, naming the point");
  double far_xy[6] = { 1, 1, 4, 1e9, 2, 3 };
  ok(fm_rle_from_polygon(far_xy, 3, 5, 5) == NULL && strstr(fm_last_error(), "coordinate 1 of point 1"),
     "a coordinate beyond 2^26: refused (rleFrPoly's int cast would overflow)");
  fm_tensor *one = fm_rle_from_polygon(xy, 1, 5, 5);
  ok(one && fm_tensor_numel(one) == 1 && ((int32_t *)one->data)[0] == 25, "one point: an empty mask, as rleFrPoly");
  fm_tensor_release(one);
}

int main(void) {
  random_polygons();
  large_polygon();
  errors();
  return done_testing();
}
