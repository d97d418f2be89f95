/* fuzz_image.c — fm_image_load_memory (stb_image: PNG, JPEG, BMP and the
 * other formats it sniffs) on arbitrary bytes. Contract: NULL with a
 * message, or an (H, W, 3) U8 image whose every byte is readable, within
 * the pixel limit. */
#include "fuzz_util.h"
#include "internal.h"

/* Decoding is linear in the pixels a header claims: at the library's limit
 * (179 M) one input takes a minute under ASan, so the fuzzer meets the
 * limit's error path at 4 M pixels instead. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  fm_image_set_max_pixels(1 << 22);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fm_tensor *img = fm_image_load_memory(data, (int64_t)size);
  if (!img) {
    fuzz_expect_error();
    return 0;
  }
  FUZZ_CHECK(img->type == FM_U8 && img->ndim == 3 && img->dims[2] == 3);
  FUZZ_CHECK(img->dims[0] >= 1 && img->dims[1] >= 1);
  FUZZ_CHECK(img->dims[0] * img->dims[1] <= fm_image_set_max_pixels(0));
  size_t n = (size_t)fm_tensor_numel(img);
  volatile uint8_t sink = 0;
  for (size_t k = 0; k < n; ++k) sink ^= ((const uint8_t *)img->data)[k];
  (void)sink;
  fm_tensor_release(img);
  return 0;
}
