/* fuzz_png_indices.c — fm_image_load_indices (our own chunk walker,
 * inflate through stb, unfiltering, 1/2/4/8-bit unpacking) on arbitrary
 * bytes, given to it as an in-memory file. Contract: NULL with a message,
 * or an (H, W) U8 map whose every byte is readable. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fm_tensor *idx = fm_image_load_indices(fuzz_memfile(data, size));
  if (!idx) {
    fuzz_expect_error();
    return 0;
  }
  FUZZ_CHECK(idx->type == FM_U8 && idx->ndim == 2);
  FUZZ_CHECK(idx->dims[0] >= 1 && idx->dims[1] >= 1);
  size_t n = (size_t)fm_tensor_numel(idx);
  const uint8_t *v = idx->data;
  volatile uint8_t sink = 0;
  for (size_t k = 0; k < n; ++k) sink ^= v[k];
  (void)sink;
  fm_tensor_release(idx);
  return 0;
}
