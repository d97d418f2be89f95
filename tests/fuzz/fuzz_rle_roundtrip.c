/* fuzz_rle_roundtrip.c — the COCO RLE round trip on masks drawn from the
 * input: decode(from_string(to_string(encode(mask)))) == mask, with the
 * counts alternating unset/set from an unset run, summing to h * w, and
 * fm_rle_area equal to the number of set pixels.
 * Input: h-1 and w-1 (one byte each, 1..64 after masking), then the mask's bytes in row
 * order (zeros past the end; any non-zero byte is a set pixel). */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_bytes b = {data, size};
  int64_t shape[2] = {(fuzz_u8(&b) & 63) + 1, (fuzz_u8(&b) & 63) + 1};
  int64_t hw = shape[0] * shape[1], set = 0;
  fm_tensor *mask = fm_tensor_new(FM_U8, 2, shape);
  FUZZ_CHECK(mask != NULL);
  uint8_t *m = mask->data;
  for (int64_t k = 0; k < hw; ++k) {
    m[k] = fuzz_u8(&b);
    set += m[k] != 0;
  }
  fm_tensor *counts = fm_rle_encode(mask);
  FUZZ_CHECK(counts != NULL);
  int64_t total = 0;
  for (int64_t j = 0; j < counts->dims[0]; ++j) {
    int32_t v = ((const int32_t *)counts->data)[j];
    FUZZ_CHECK(v >= 0 && (j == 0 || v > 0));   /* only the first run may be empty */
    total += v;
  }
  FUZZ_CHECK(total == hw);
  FUZZ_CHECK(fm_rle_area(counts) == set);

  char *s = fm_rle_to_string(counts);
  FUZZ_CHECK(s != NULL);
  for (const char *p = s; *p; ++p) FUZZ_CHECK(*p >= '0' && *p <= 'o');
  fm_tensor *back = fm_rle_from_string(s);
  FUZZ_CHECK(back != NULL && back->dims[0] == counts->dims[0]);
  FUZZ_CHECK(memcmp(back->data, counts->data, (size_t)counts->dims[0] * 4) == 0);

  fm_tensor *out = fm_tensor_new(FM_U8, 2, shape);
  FUZZ_CHECK(fm_rle_decode(out, back) == 0);
  const uint8_t *o = out->data;
  for (int64_t k = 0; k < hw; ++k) FUZZ_CHECK(o[k] == (m[k] != 0));

  fm_tensor_release(out);
  fm_tensor_release(back);
  fm_free(s);
  fm_tensor_release(counts);
  fm_tensor_release(mask);
  return 0;
}
