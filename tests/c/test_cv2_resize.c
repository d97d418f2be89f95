/* test_cv2_resize.c — fm_image_resize_cv2_linear against cv2.resize
 * INTER_LINEAR itself (tests/fixtures/cv2_resize.safetensors, written by
 * tests/tools/make_cv2_resize.py with OpenCV 4.6), every byte; against a
 * naive twin that evaluates cv2's arithmetic one output pixel at a time on
 * many more sizes; and its argument checks. */
#include "fmseg.h"
#include "tap.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static const char *FIXTURE = "tests/fixtures/cv2_resize.safetensors";

/* ---- the naive twin ---------------------------------------------------------- */

/* cv2's source position of output d: double, then float, floored */
static void position(int64_t in, int64_t out, int64_t d, int64_t *s, float *f) {
  float p = (float)(((double)d + 0.5) * (1.0 / ((double)out / (double)in)) - 0.5);
  *s = (int64_t)floorf(p);
  *f = p - (float)*s;
}

static int64_t clampi(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* one output pixel from the definition: no tap tables, no row cache */
static uint8_t naive_pixel(const uint8_t *img, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow,
                           int64_t y, int64_t x, int64_t ch) {
#define P(r, q) ((int32_t)img[((r) * w + (q)) * c + ch])
  if (oh == h && ow == w) return (uint8_t)P(y, x);
  if (2 * oh == h && 2 * ow == w) {  /* INTER_AREA's 2x2 mean */
    int32_t s = P(2 * y, 2 * x) + P(2 * y, 2 * x + 1) + P(2 * y + 1, 2 * x) + P(2 * y + 1, 2 * x + 1);
    return (uint8_t)(c == 2 ? lrintf((float)s * 0.25f) : (s + 2) >> 2);
  }
  int64_t ys, xs;
  float fy, fx;
  position(h, oh, y, &ys, &fy);
  position(w, ow, x, &xs, &fx);
  if (xs < 0) xs = 0, fx = 0;
  if (xs >= w - 1) xs = w - 1, fx = 0;
  int32_t a0 = (int32_t)lrintf((1 - fx) * 2048), a1 = (int32_t)lrintf(fx * 2048);
  int32_t b0 = (int32_t)lrintf((1 - fy) * 2048), b1 = (int32_t)lrintf(fy * 2048);
  int64_t x1 = xs + 1 < w ? xs + 1 : w - 1;
  int32_t r[2];
  for (int k = 0; k < 2; ++k) {
    int64_t row = clampi(ys + k, 0, h - 1);
    r[k] = P(row, xs) * a0 + P(row, x1) * a1;
  }
  return (uint8_t)((((b0 * (r[0] >> 4)) >> 16) + ((b1 * (r[1] >> 4)) >> 16) + 2) >> 2);
#undef P
}

static void naive_resize(uint8_t *out, const uint8_t *img, int64_t h, int64_t w, int64_t c, int64_t oh,
                         int64_t ow) {
  for (int64_t y = 0; y < oh; ++y)
    for (int64_t x = 0; x < ow; ++x)
      for (int64_t ch = 0; ch < c; ++ch) out[(y * ow + x) * c + ch] = naive_pixel(img, h, w, c, oh, ow, y, x, ch);
}

static int64_t count_diff(const uint8_t *a, const uint8_t *b, int64_t n) {
  int64_t d = 0;
  for (int64_t i = 0; i < n; ++i) d += a[i] != b[i];
  return d;
}

static fm_tensor *u8_new(int64_t h, int64_t w, int64_t c) {
  int64_t s[3] = {h, w, c};
  return fm_tensor_new(FM_U8, 3, s);
}

/* ---- cv2 itself --------------------------------------------------------------- */

/* the fixture's I32 tensor (U8 comes back widened) as U8 */
static fm_tensor *get_u8(fm_safetensors *st, const char *name) {
  fm_tensor *t = fm_safetensors_get(st, name);
  if (!t) return NULL;
  fm_tensor *u = t->ndim == 3 ? u8_new(t->dims[0], t->dims[1], t->dims[2]) : NULL;
  if (u)
    for (int64_t i = 0; i < fm_tensor_numel(t); ++i) ((uint8_t *)u->data)[i] = (uint8_t)((int32_t *)t->data)[i];
  fm_tensor_release(t);
  return u;
}

static void test_fixture(void) {
  fm_safetensors *st = fm_safetensors_open(FIXTURE);
  if (!ok(st != NULL, "open tests/fixtures/cv2_resize.safetensors")) {
    diag(fm_last_error());
    return;
  }
  char name[64], msg[200];
  int64_t cases = 0, bytes = 0, bad_cases = 0;
  for (int i = 0;; ++i) {
    snprintf(name, sizeof name, "case%02d.img", i);
    if (fm_safetensors_find(st, name) < 0) break;
    fm_tensor *img = get_u8(st, name);
    snprintf(name, sizeof name, "case%02d.out", i);
    fm_tensor *ref = get_u8(st, name);
    if (!img || !ref) {
      ok(0, fm_last_error());
      break;
    }
    int64_t h = img->dims[0], w = img->dims[1], c = img->dims[2], oh = ref->dims[0], ow = ref->dims[1];
    int64_t n = oh * ow * c;
    fm_tensor *out = u8_new(oh, ow, c), *twin = u8_new(oh, ow, c);
    int rc = fm_image_resize_cv2_linear(out, img);
    naive_resize(twin->data, img->data, h, w, c, oh, ow);
    int64_t d = rc == 0 ? count_diff(out->data, ref->data, n) : n;
    int64_t dt = count_diff(twin->data, ref->data, n);
    snprintf(msg, sizeof msg, "case%02d %dx%dx%d -> %dx%d: %lld of %lld bytes differ from cv2 (naive twin: %lld)%s%s",
             i, (int)h, (int)w, (int)c, (int)oh, (int)ow, (long long)d, (long long)n, (long long)dt,
             rc ? ", error: " : "", rc ? fm_last_error() : "");
    ok(rc == 0 && d == 0 && dt == 0, msg);
    ++cases;
    bytes += n;
    bad_cases += d != 0;
    fm_tensor_release(img);
    fm_tensor_release(ref);
    fm_tensor_release(out);
    fm_tensor_release(twin);
  }
  snprintf(msg, sizeof msg, "%lld cv2 cases, %lld bytes compared, %lld cases differ", (long long)cases,
           (long long)bytes, (long long)bad_cases);
  ok(cases >= 40 && bad_cases == 0, msg);
  fm_safetensors_close(st);
}

/* ---- the twin on more sizes --------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static int64_t rnd(int64_t lo, int64_t hi) {  /* uniform in [lo, hi] */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return lo + (int64_t)(rng_state % (uint64_t)(hi - lo + 1));
}

static fm_tensor *random_image(int64_t h, int64_t w, int64_t c) {
  fm_tensor *t = u8_new(h, w, c);
  for (int64_t i = 0; i < h * w * c; ++i) ((uint8_t *)t->data)[i] = (uint8_t)rnd(0, 255);
  return t;
}

static int64_t twin_diff(int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow, int *rc) {
  fm_tensor *img = random_image(h, w, c), *out = u8_new(oh, ow, c), *twin = u8_new(oh, ow, c);
  *rc = fm_image_resize_cv2_linear(out, img);
  naive_resize(twin->data, img->data, h, w, c, oh, ow);
  int64_t d = count_diff(out->data, twin->data, oh * ow * c);
  fm_tensor_release(img);
  fm_tensor_release(out);
  fm_tensor_release(twin);
  return d;
}

static void test_twin(void) {
  char msg[160];
  int64_t worst = 0, cases = 0, errors = 0;
  for (int k = 0; k < 300; ++k) {
    int64_t h = rnd(1, 60), w = rnd(1, 60), c = rnd(1, 4), oh = rnd(1, 90), ow = rnd(1, 90);
    if (k % 6 == 0) oh = h;                       /* one axis only */
    if (k % 6 == 1) ow = w;
    if (k % 6 == 2) h = 2 * oh, w = 2 * ow;       /* cv2's INTER_AREA case */
    int rc;
    int64_t d = twin_diff(h, w, c, oh, ow, &rc);
    errors += rc != 0;
    if (d > worst) worst = d;
    ++cases;
  }
  snprintf(msg, sizeof msg, "fast = naive twin on %lld random sizes, 1..4 channels (most differing bytes: %lld)",
           (long long)cases, (long long)worst);
  ok(errors == 0 && worst == 0, msg);
  /* large enough for the OpenMP paths (threads each cache their own rows) */
  static const int64_t big[][5] = {{480, 640, 3, 448, 597}, {333, 500, 3, 700, 1051}, {512, 768, 3, 256, 384}};
  for (int k = 0; k < 3; ++k) {
    int rc;
    int64_t d = twin_diff(big[k][0], big[k][1], big[k][2], big[k][3], big[k][4], &rc);
    snprintf(msg, sizeof msg, "fast = naive twin, %dx%dx%d -> %dx%d (%lld bytes differ)", (int)big[k][0],
             (int)big[k][1], (int)big[k][2], (int)big[k][3], (int)big[k][4], (long long)d);
    ok(rc == 0 && d == 0, msg);
  }
}

/* a strided (non-contiguous) input is read through its strides */
static void test_strided_input(void) {
  fm_tensor *wide = random_image(20, 30, 3);
  fm_tensor *img = fm_tensor_narrow(wide, 1, 5, 17);  /* (20, 17, 3), rows 90 bytes apart */
  fm_tensor *dense = fm_tensor_contiguous(img);
  fm_tensor *a = u8_new(31, 9, 3), *b = u8_new(31, 9, 3);
  int ra = fm_image_resize_cv2_linear(a, img), rb = fm_image_resize_cv2_linear(b, dense);
  ok(ra == 0 && rb == 0 && count_diff(a->data, b->data, 31 * 9 * 3) == 0, "strided input = its contiguous copy");
  fm_tensor *ts[] = {wide, img, dense, a, b};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; ++i) fm_tensor_release(ts[i]);
}

/* ---- argument checks ---------------------------------------------------------- */

static void test_errors(void) {
  fm_tensor *img = random_image(8, 8, 3), *out = u8_new(5, 5, 3);
  int64_t s3[3] = {8, 8, 3}, s2[2] = {8, 8}, s5[3] = {8, 8, 5}, s0[3] = {0, 8, 3};
  fm_tensor *f = fm_tensor_new(FM_F32, 3, s3), *flat = fm_tensor_new(FM_U8, 2, s2);
  fm_tensor *c5 = fm_tensor_new(FM_U8, 3, s5), *o5 = u8_new(5, 5, 5), *c1 = u8_new(5, 5, 1);
  fm_tensor *empty = fm_tensor_new(FM_U8, 3, s0);
  const char *e;
  ok(fm_image_resize_cv2_linear(out, NULL) != 0 && strstr(fm_last_error(), "NULL"), "NULL img is an error");
  ok(fm_image_resize_cv2_linear(out, f) != 0 && (e = fm_last_error()) &&
         strstr(e, "fm_image_resize_cv2_linear: img and out must be uint8"),
     "float32 img is an error naming the function");
  ok(fm_image_resize_cv2_linear(out, flat) != 0 && strstr(fm_last_error(), "(H, W, C)"), "rank-2 img is an error");
  ok(fm_image_resize_cv2_linear(c1, img) != 0 && strstr(fm_last_error(), "same C"), "channel mismatch is an error");
  ok(fm_image_resize_cv2_linear(o5, c5) != 0 && strstr(fm_last_error(), "C must be 1..4"), "5 channels is an error");
  ok(fm_image_resize_cv2_linear(out, empty) != 0 && strstr(fm_last_error(), "non-empty"), "empty img is an error");
  fm_tensor *view = fm_tensor_narrow(out, 1, 0, 4);
  fm_tensor *o4 = u8_new(5, 4, 3);
  ok(fm_image_resize_cv2_linear(view, img) != 0, "non-contiguous out is an error");
  ok(fm_image_resize_cv2_linear(o4, img) == 0, "a valid call after errors succeeds");
  fm_tensor *ts[] = {img, out, f, flat, c5, o5, c1, empty, view, o4};
  for (size_t i = 0; i < sizeof ts / sizeof *ts; ++i) fm_tensor_release(ts[i]);
}

int main(void) {
  test_fixture();
  test_twin();
  test_strided_input();
  test_errors();
  return done_testing();
}
