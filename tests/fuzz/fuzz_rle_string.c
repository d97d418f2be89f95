/* fuzz_rle_string.c — COCO compressed RLE strings (the "counts" of a
 * segmentation in an annotation file) on arbitrary bytes:
 * fm_rle_from_string, then for what it accepts fm_rle_area, the string
 * written back (fm_rle_to_string must parse to the same counts), and, when
 * the counts cover a mask of at most 2^14 pixels, decode and paint into an
 * (h, w) mask with h taken from the last input byte. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *s = fuzz_cstring(data, size);
  fm_tensor *counts = fm_rle_from_string(s);
  if (!counts) {
    fuzz_expect_error();
    free(s);
    return 0;
  }
  FUZZ_CHECK(counts->type == FM_I32 && counts->ndim == 1);
  int64_t m = counts->dims[0];
  const int32_t *c = counts->data;
  int64_t total = 0, set = 0;
  for (int64_t j = 0; j < m; ++j) {
    FUZZ_CHECK(c[j] >= 0);
    total += c[j];
    if (j & 1) set += c[j];
  }
  FUZZ_CHECK(fm_rle_area(counts) == set);

  char *again = fm_rle_to_string(counts);
  FUZZ_CHECK(again != NULL);
  fm_tensor *back = fm_rle_from_string(again);
  FUZZ_CHECK(back != NULL && back->dims[0] == m);
  FUZZ_CHECK(m == 0 || memcmp(back->data, c, (size_t)m * 4) == 0);
  fm_tensor_release(back);
  fm_free(again);

  if (total > 0 && total <= 1 << 14) {
    /* h: a divisor of total chosen by the input, else 1 */
    int64_t h = size ? (int64_t)data[size - 1] + 1 : 1;
    if (total % h) h = 1;
    int64_t shape[2] = {h, total / h};
    fm_tensor *mask = fm_tensor_new(FM_U8, 2, shape);
    fm_tensor *labels = fm_tensor_new(FM_I32, 2, shape);
    FUZZ_CHECK(mask && labels);
    FUZZ_CHECK(fm_rle_decode(mask, counts) == 0);
    FUZZ_CHECK(fm_rle_paint(labels, counts, 7) == 0);
    const uint8_t *mv = mask->data;
    const int32_t *lv = labels->data;
    int64_t ones = 0;
    for (int64_t k = 0; k < total; ++k) {
      FUZZ_CHECK(mv[k] <= 1);
      FUZZ_CHECK(lv[k] == (mv[k] ? 7 : 0));
      ones += mv[k];
    }
    FUZZ_CHECK(ones == set);
    /* encoding the mask gives the canonical counts of the same pixels */
    fm_tensor *enc = fm_rle_encode(mask);
    FUZZ_CHECK(enc != NULL);
    fm_tensor *mask2 = fm_tensor_new(FM_U8, 2, shape);
    FUZZ_CHECK(fm_rle_decode(mask2, enc) == 0);
    FUZZ_CHECK(memcmp(mask2->data, mask->data, (size_t)total) == 0);
    fm_tensor_release(mask2);
    fm_tensor_release(enc);
    fm_tensor_release(labels);
    fm_tensor_release(mask);
  } else if (total > 1 << 14) {
    int64_t shape[2] = {1, 1};
    fm_tensor *small = fm_tensor_new(FM_U8, 2, shape);
    FUZZ_CHECK(fm_rle_decode(small, counts) == -1);   /* counts do not cover 1 pixel */
    fuzz_expect_error();
    fm_tensor_release(small);
  }
  fm_tensor_release(counts);
  free(s);
  return 0;
}
