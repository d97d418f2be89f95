/* test_metrics.c — fm_confusion_add against a naive double loop, with the
 * ignore index, mixed dtypes, rectangular (K, P) tables, accumulation, and
 * bad values that must be refused with conf left as it was; fm_labels_remap
 * against a direct table lookup. */
#include "fmseg.h"
#include "tap.h"

#include <stdint.h>
#include <string.h>

static fm_tensor *labels(int32_t dtype, int64_t h, int64_t w, int64_t lo, int64_t hi) {
  int64_t shape[2] = {h, w};
  fm_tensor *t = fm_tensor_new(dtype, 2, shape);
  for (int64_t i = 0; i < h * w; ++i) {
    int64_t v = lo + (int64_t)((frand() + 1) * 0.5 * (double)(hi - lo + 1));
    if (v > hi) v = hi;
    if (dtype == FM_U8) ((uint8_t *)t->data)[i] = (uint8_t)v;
    else ((int32_t *)t->data)[i] = (int32_t)v;
  }
  return t;
}

static int64_t at(const fm_tensor *t, int64_t i) {
  return t->type == FM_U8 ? ((uint8_t *)t->data)[i] : ((int32_t *)t->data)[i];
}

static void set(fm_tensor *t, int64_t i, int64_t v) {
  if (t->type == FM_U8) ((uint8_t *)t->data)[i] = (uint8_t)v;
  else ((int32_t *)t->data)[i] = (int32_t)v;
}

/* The definition, one cell at a time. */
static void naive_confusion(int64_t *out, int64_t k, int64_t p, const fm_tensor *pred,
                            const fm_tensor *gt, int64_t ignore) {
  int64_t n = fm_tensor_numel(gt);
  for (int64_t g = 0; g < k; ++g)
    for (int64_t q = 0; q < p; ++q) {
      int64_t c = 0;
      for (int64_t i = 0; i < n; ++i)
        if (at(gt, i) != ignore && at(gt, i) == g && at(pred, i) == q) ++c;
      out[g * p + q] += c;
    }
}

static int equal_to(const fm_tensor *conf, const int64_t *want) {
  int64_t n = fm_tensor_numel(conf);
  for (int64_t i = 0; i < n; ++i)
    if (((int32_t *)conf->data)[i] != want[i]) return 0;
  return 1;
}

static void test_against_naive(int32_t pred_type, int32_t gt_type, const char *name) {
  int64_t k = 7, p = 9, shape[2] = {k, p};
  fm_tensor *conf = fm_tensor_new(FM_I32, 2, shape);
  int64_t want[7 * 9] = {0};
  int ok_all = 1;
  for (int round = 0; round < 3; ++round) {   /* accumulates over images */
    fm_tensor *gt = labels(gt_type, 23, 31, 0, k - 1);
    fm_tensor *pred = labels(pred_type, 23, 31, 0, p - 1);
    for (int64_t i = 0; i < 23 * 31; i += 5) set(gt, i, 255);   /* ignored pixels */
    naive_confusion(want, k, p, pred, gt, 255);
    ok_all &= fm_confusion_add(conf, pred, gt, 255) == 0;
    fm_tensor_release(gt);
    fm_tensor_release(pred);
  }
  ok(ok_all && equal_to(conf, want), name);
  fm_tensor_release(conf);
}

static void test_hand_computed(void) {
  /* gt  0 1 1 255      pred 0 1 0 2 */
  int32_t g[4] = {0, 1, 1, 255}, q[4] = {0, 1, 0, 2};
  int64_t s4[2] = {2, 2}, s33[2] = {3, 3};
  fm_tensor *gt = fm_tensor_borrow(FM_I32, 2, s4, g), *pred = fm_tensor_borrow(FM_I32, 2, s4, q);
  fm_tensor *conf = fm_tensor_new(FM_I32, 2, s33);
  int rc = fm_confusion_add(conf, pred, gt, 255);
  int32_t *c = conf->data;
  ok(rc == 0 && c[0] == 1 && c[3] == 1 && c[4] == 1 && c[1] + c[2] + c[5] + c[6] + c[7] + c[8] == 0,
     "hand-computed 2x2 image: (0,0)=1, (1,0)=1, (1,1)=1, the ignored pixel nowhere");
  fm_tensor_release(gt), fm_tensor_release(pred), fm_tensor_release(conf);
}

static void test_bad_values(void) {
  int64_t shape[2] = {4, 4}, k = 5, cs[2] = {k, k};
  fm_tensor *conf = fm_tensor_new(FM_I32, 2, cs);
  fm_tensor *gt = labels(FM_U8, 4, 4, 0, k - 1), *pred = labels(FM_I32, 4, 4, 0, k - 1);
  ok(fm_confusion_add(conf, pred, gt, 255) == 0, "a valid image first");
  int32_t before[25];
  memcpy(before, conf->data, sizeof before);

  set(gt, 6, 9);   /* (y 1, x 2) */
  int rc = fm_confusion_add(conf, pred, gt, 255);
  ok(rc != 0 && strstr(fm_last_error(), "gt value 9 at (y 1, x 2)") != NULL, "gt outside [0, K) is refused, naming value and pixel");
  diag(fm_last_error());
  ok(memcmp(before, conf->data, sizeof before) == 0, "conf unchanged after the refusal");
  fm_clear_error();
  set(gt, 6, 1);

  set(pred, 15, -1);
  rc = fm_confusion_add(conf, pred, gt, 255);
  ok(rc != 0 && strstr(fm_last_error(), "pred value -1 at (y 3, x 3)") != NULL, "negative pred is refused");
  set(pred, 15, 5);
  rc = fm_confusion_add(conf, pred, gt, 255);
  ok(rc != 0 && strstr(fm_last_error(), "outside [0, 5)") != NULL, "pred == P is refused");
  ok(memcmp(before, conf->data, sizeof before) == 0, "conf still unchanged");
  fm_clear_error();

  int64_t other[2] = {4, 5};
  fm_tensor *wrong = fm_tensor_new(FM_I32, 2, other);
  ok(fm_confusion_add(conf, wrong, gt, 255) != 0 && strstr(fm_last_error(), "differ in shape"), "shape mismatch refused");
  fm_clear_error();
  fm_tensor *fl = fm_tensor_new(FM_F32, 2, shape);
  ok(fm_confusion_add(conf, fl, gt, 255) != 0 && strstr(fm_last_error(), "int32 or uint8"), "float labels refused");
  fm_clear_error();
  ok(fm_confusion_add(fl, pred, gt, 255) != 0, "a float conf refused");
  fm_clear_error();

  /* overflow: a cell one below the limit, then two more pixels */
  set(pred, 15, 0);
  fm_tensor *g1 = labels(FM_I32, 1, 2, 0, 0), *p1 = labels(FM_I32, 1, 2, 0, 0);
  ((int32_t *)conf->data)[0] = INT32_MAX - 1;
  ok(fm_confusion_add(conf, p1, g1, 255) != 0 && strstr(fm_last_error(), "2^31"), "int32 overflow refused");
  ok(((int32_t *)conf->data)[0] == INT32_MAX - 1, "cell untouched after overflow refusal");
  fm_clear_error();
  fm_tensor_release(g1), fm_tensor_release(p1), fm_tensor_release(wrong), fm_tensor_release(fl);
  fm_tensor_release(conf), fm_tensor_release(gt), fm_tensor_release(pred);
}

static void test_remap(void) {
  /* reduce_zero_label: 0 -> 255, v -> v - 1, 255 -> 255 */
  int32_t lut[256];
  lut[0] = 255;
  for (int v = 1; v < 255; ++v) lut[v] = v - 1;
  lut[255] = 255;
  fm_tensor *in = labels(FM_U8, 13, 17, 0, 255);
  int64_t shape[2] = {13, 17};
  fm_tensor *out = fm_tensor_new(FM_I32, 2, shape);
  int good = fm_labels_remap(out, in, lut, 256) == 0;
  for (int64_t i = 0; i < 13 * 17 && good; ++i) {
    int64_t v = at(in, i);
    int64_t want = v == 0 ? 255 : v == 255 ? 255 : v - 1;
    good = ((int32_t *)out->data)[i] == want;
  }
  ok(good, "remap with the reduce_zero_label table, uint8 in");

  fm_tensor *in32 = labels(FM_I32, 13, 17, 0, 255);
  fm_tensor *copy = fm_tensor_clone(in32);
  good = fm_labels_remap(in32, in32, lut, 256) == 0;   /* in place */
  for (int64_t i = 0; i < 13 * 17 && good; ++i) good = at(in32, i) == lut[at(copy, i)];
  ok(good, "remap in place, int32");

  int32_t small[3] = {0, -1, 1};
  set(copy, 0, 0), set(copy, 1, 2), set(copy, 2, 1);
  fm_tensor *row = fm_tensor_narrow(copy, 0, 0, 1);
  fm_tensor *row3 = fm_tensor_narrow(row, 1, 0, 3);
  fm_tensor *c3 = fm_tensor_contiguous(row3);
  int64_t s3[2] = {1, 3};
  fm_tensor *o3 = fm_tensor_new(FM_I32, 2, s3);
  int rc = fm_labels_remap(o3, c3, small, 3);
  ok(rc != 0 && strstr(fm_last_error(), "value 1 at (y 0, x 2) has no mapping"), "unmapped value refused");
  diag(fm_last_error());
  fm_clear_error();
  ok(((int32_t *)o3->data)[0] == 0 && ((int32_t *)o3->data)[1] == 0, "out unchanged after refusal");
  rc = fm_labels_remap(o3, in, small, 3);
  ok(rc != 0, "wrong element count refused");
  fm_clear_error();
  set(c3, 1, 7);
  rc = fm_labels_remap(o3, c3, small, 3);
  ok(rc != 0 && strstr(fm_last_error(), "outside the table [0, 3)"), "value past the table refused");
  fm_clear_error();
  fm_tensor_release(in), fm_tensor_release(out), fm_tensor_release(in32), fm_tensor_release(copy);
  fm_tensor_release(row), fm_tensor_release(row3), fm_tensor_release(c3), fm_tensor_release(o3);
}

int main(void) {
  test_hand_computed();
  test_against_naive(FM_I32, FM_I32, "int32 pred, int32 gt, rectangular 7x9, 3 images accumulated, vs naive");
  test_against_naive(FM_U8, FM_I32, "uint8 pred, int32 gt vs naive");
  test_against_naive(FM_I32, FM_U8, "int32 pred, uint8 gt vs naive");
  test_bad_values();
  test_remap();
  return done_testing();
}
