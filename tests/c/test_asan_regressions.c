/* test_asan_regressions.c — bugs that `make test-asan` (tests/asan/) found
 * in core/, one block each; under the sanitizers the old code aborts here,
 * some of it fails in the normal build too. */
#include "fmseg.h"
#include "tap.h"

#include <math.h>
#include <stdint.h>

/* tensor.c fm__store: converting to I32 or U8 cast the double directly, so
 * NaN and values out of the integer's range were undefined behaviour
 * (UBSan float-cast-overflow; 1e10 became INT32_MIN on x86). Now: toward
 * zero, saturated, NaN to 0 — through fill_, copy_ and fm_tensor_to. */
static void test_conversion_saturates(void) {
  int64_t shape[1] = {7};
  fm_tensor *f = fm_tensor_new(FM_F32, 1, shape);
  const float v[7] = {NAN, 1e10f, -1e10f, INFINITY, -INFINITY, 254.9f, -2.5f};
  for (int i = 0; i < 7; ++i) ((float *)f->data)[i] = v[i];

  fm_tensor *i32 = fm_tensor_to(f, FM_I32), *u8 = fm_tensor_to(f, FM_U8);
  ok(i32 && u8, "F32 with NaN and out-of-range values converts to I32 and U8");
  const int32_t *a = i32->data;
  ok(a[0] == 0 && a[1] == INT32_MAX && a[2] == INT32_MIN && a[3] == INT32_MAX && a[4] == INT32_MIN,
     "to I32: NaN is 0, out of range saturates");
  ok(a[5] == 254 && a[6] == -2, "to I32: in range rounds toward zero, as before");
  const uint8_t *b = u8->data;
  ok(b[0] == 0 && b[1] == 255 && b[2] == 0 && b[3] == 255 && b[4] == 0 && b[5] == 254 && b[6] == 0,
     "to U8: NaN is 0, clamped to 0..255, toward zero");

  ok(fm_tensor_fill_(i32, 1e10) == 0 && ((int32_t *)i32->data)[6] == INT32_MAX, "fill_ of I32 with 1e10 saturates");
  ok(fm_tensor_fill_(i32, NAN) == 0 && ((int32_t *)i32->data)[0] == 0, "fill_ of I32 with NaN gives 0");
  ok(fm_tensor_fill_(u8, NAN) == 0 && ((uint8_t *)u8->data)[3] == 0, "fill_ of U8 with NaN gives 0");

  /* a strided source takes copy_'s row walk, not fm_tensor_to's */
  int64_t two[2] = {7, 2};
  fm_tensor *wide = fm_tensor_new(FM_F32, 2, two);
  for (int i = 0; i < 7; ++i) ((float *)wide->data)[2 * i] = v[i];
  fm_tensor *col = fm_tensor_select(wide, 1, 0);
  ok(col && fm_tensor_copy_(i32, col) == 0 && ((int32_t *)i32->data)[0] == 0 &&
         ((int32_t *)i32->data)[2] == INT32_MIN,
     "copy_ from a strided F32 view saturates too");

  fm_tensor_release(col);
  fm_tensor_release(wide);
  fm_tensor_release(i32);
  fm_tensor_release(u8);
  fm_tensor_release(f);
}

/* resize.c fm__guard: the source position was cast to int64 before being
 * clamped to the last pixel, so a scale factor far from 1 (1e-30: source
 * positions of 5e29) made the cast undefined. Such a position now reads the
 * last pixel, as one just past it always did. */
static void test_extreme_scale_factor(void) {
  int64_t in_shape[4] = {1, 1, 4, 4}, out_shape[4] = {1, 1, 5, 6};
  fm_tensor *x = fm_tensor_new(FM_F32, 4, in_shape), *out = fm_tensor_new(FM_F32, 4, out_shape);
  for (int i = 0; i < 16; ++i) ((float *)x->data)[i] = (float)i;
  for (int mode = FM_BILINEAR; mode <= FM_BICUBIC; ++mode) {
    int rc = fm_interpolate_scale(out, x, mode, 0, 1e-30, 1e-30);
    const float *o = out->data;
    int last = 1;   /* every source position is past x[3][3] = 15 on both axes */
    for (int i = 0; i < 30; ++i) last = last && o[i] == 15.f;
    ok(rc == 0 && last, mode == FM_BILINEAR ? "bilinear, scale 1e-30: the last pixel, no undefined cast"
                                            : "bicubic, scale 1e-30: the last pixel, no undefined cast");
  }
  fm_tensor_release(x);
  fm_tensor_release(out);
}

int main(void) {
  test_conversion_saturates();
  test_extreme_scale_factor();
  return done_testing();
}
