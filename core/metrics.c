/* metrics.c — the counts behind segmentation metrics: a confusion matrix
 * accumulated over label maps, and label remapping through a lookup table
 * (reduce_zero_label, train ids). Both check every value they read, so a
 * dataset read with the wrong settings fails loudly instead of scoring. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

/* An (H, W) or any-shape integer label tensor: I32 or U8, contiguous. */
static bool fm__check_labels(const fm_tensor *t, const char *what) {
  if (!t) return fm__error("%s: NULL", what), false;
  if (t->type != FM_I32 && t->type != FM_U8)
    return fm__error("%s: expected int32 or uint8 labels, got %s", what, fm_dtype_name(t->type)), false;
  return fm__check_contiguous(t, what);
}

static inline int64_t fm__label_at(const fm_tensor *t, int64_t i) {
  return t->type == FM_U8 ? ((const uint8_t *)t->data)[i] : ((const int32_t *)t->data)[i];
}

/* "(y, x)" for 2-D tensors, "[i]" otherwise: where a bad value sits. */
static const char *fm__pixel_str(const fm_tensor *t, int64_t i, char *buf, size_t len) {
  if (t->ndim == 2)
    snprintf(buf, len, "(y %lld, x %lld)", (long long)(i / t->dims[1]), (long long)(i % t->dims[1]));
  else
    snprintf(buf, len, "[%lld]", (long long)i);
  return buf;
}

static bool fm__same_shape(const fm_tensor *a, const fm_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int32_t d = 0; d < a->ndim; ++d)
    if (a->dims[d] != b->dims[d]) return false;
  return true;
}

/* conf: (K, P) I32; pred, gt: same shape, I32 or U8. Counts go to a
 * scratch table first, so conf is untouched when any value is bad. */
int fm_confusion_add(fm_tensor *conf, const fm_tensor *pred, const fm_tensor *gt,
                     int32_t ignore_index) {
  char s1[128], s2[128];
  if (!conf || conf->type != FM_I32 || conf->ndim != 2)
    return fm__error("confusion_add: conf must be a (K, P) int32 matrix, got %s",
                     conf ? fm__shape_str(conf, s1, sizeof s1) : "NULL");
  if (!fm__check_contiguous(conf, "confusion_add: conf") ||
      !fm__check_writable(conf, "confusion_add: conf") ||
      !fm__check_labels(pred, "confusion_add: pred") || !fm__check_labels(gt, "confusion_add: gt"))
    return -1;
  if (!fm__same_shape(pred, gt))
    return fm__error("confusion_add: pred %s and gt %s differ in shape",
                     fm__shape_str(pred, s1, sizeof s1), fm__shape_str(gt, s2, sizeof s2));
  int64_t k = conf->dims[0], p = conf->dims[1], n = fm_tensor_numel(gt);
  int64_t *counts = calloc((size_t)(k * p > 0 ? k * p : 1), sizeof *counts);
  if (!counts) return fm__error("confusion_add: out of memory for a %lld x %lld table", (long long)k, (long long)p);
  for (int64_t i = 0; i < n; ++i) {
    int64_t g = fm__label_at(gt, i);
    if (g == ignore_index) continue;
    int64_t q = fm__label_at(pred, i);
    if (g < 0 || g >= k || q < 0 || q >= p) {
      bool bad_gt = g < 0 || g >= k;
      fm__error("confusion_add: %s value %lld at %s is outside [0, %lld)%s", bad_gt ? "gt" : "pred",
                (long long)(bad_gt ? g : q), fm__pixel_str(gt, i, s1, sizeof s1),
                (long long)(bad_gt ? k : p), bad_gt ? " and is not the ignore index" : "");
      free(counts);
      return -1;
    }
    ++counts[g * p + q];
  }
  int32_t *c = conf->data;
  for (int64_t i = 0; i < k * p; ++i) {
    if ((int64_t)c[i] + counts[i] > INT32_MAX) {
      fm__error("confusion_add: count at (%lld, %lld) would pass 2^31 - 1; accumulate in smaller parts",
                (long long)(i / p), (long long)(i % p));
      free(counts);
      return -1;
    }
  }
  for (int64_t i = 0; i < k * p; ++i) c[i] += (int32_t)counts[i];
  free(counts);
  return 0;
}

/* in: any shape, I32 or U8; out: I32, same element count; lut: n entries,
 * negative ones meaning "no mapping" (an error when met). */
int fm_labels_remap(fm_tensor *out, const fm_tensor *in, const int32_t *lut, int32_t n) {
  char s1[128], s2[128];
  if (!fm__check_labels(in, "labels_remap: in")) return -1;
  if (!out || out->type != FM_I32 || fm_tensor_numel(out) != fm_tensor_numel(in))
    return fm__error("labels_remap: out must be int32 with the %lld elements of in, got %s",
                     (long long)fm_tensor_numel(in), out ? fm__shape_str(out, s1, sizeof s1) : "NULL");
  if (!fm__check_contiguous(out, "labels_remap: out") || !fm__check_writable(out, "labels_remap: out"))
    return -1;
  if (!lut || n <= 0) return fm__error("labels_remap: empty lookup table");
  int64_t count = fm_tensor_numel(in);
  /* check first: out may alias in, and must be left whole on error */
  for (int64_t i = 0; i < count; ++i) {
    int64_t v = fm__label_at(in, i);
    if (v < 0 || v >= n)
      return fm__error("labels_remap: value %lld at %s is outside the table [0, %d)", (long long)v,
                       fm__pixel_str(in, i, s2, sizeof s2), n);
    if (lut[v] < 0)
      return fm__error("labels_remap: value %lld at %s has no mapping", (long long)v,
                       fm__pixel_str(in, i, s2, sizeof s2));
  }
  int32_t *o = out->data;
  if (in->type == FM_I32) {
    const int32_t *src = in->data;
    for (int64_t i = 0; i < count; ++i) o[i] = lut[src[i]];
  } else {
    const uint8_t *src = in->data;
    for (int64_t i = 0; i < count; ++i) o[i] = lut[src[i]];
  }
  return 0;
}
