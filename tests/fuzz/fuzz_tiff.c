/* fuzz_tiff.c — fm_tiff_load (core/tiff.c: header, first IFD, strips,
 * PackBits) on arbitrary bytes, given to it as an in-memory file.
 * Contract: NULL with a message, or an (H, W) I32 map within the pixel
 * limit whose every value is a 16-bit sample; such a map written with
 * fm_tiff_save_u16 reads back the same. */
#include "fuzz_util.h"

/* Decoding is linear in the pixels a header claims; the limit's error
 * path is met at 1 M pixels here rather than at the library's 179 M. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  fm_image_set_max_pixels(1 << 20);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fm_tensor *lab = fm_tiff_load(fuzz_memfile(data, size));
  if (!lab) {
    fuzz_expect_error();
    return 0;
  }
  FUZZ_CHECK(lab->type == FM_I32 && lab->ndim == 2 && lab->dims[0] >= 1 && lab->dims[1] >= 1);
  FUZZ_CHECK(lab->dims[0] * lab->dims[1] <= fm_image_set_max_pixels(0));
  size_t n = (size_t)fm_tensor_numel(lab);
  const int32_t *v = lab->data;
  for (size_t k = 0; k < n; ++k) FUZZ_CHECK(v[k] >= 0 && v[k] <= 65535);
  const char *path = fuzz_memfile_path();
  if (fm_tiff_save_u16(path, lab) != 0) fuzz_fail("fm_tiff_save_u16 refused a map fm_tiff_load returned");
  fm_tensor *back = fm_tiff_load(path);
  if (!back) fuzz_fail("fm_tiff_load refused our own file");
  FUZZ_CHECK(back->dims[0] == lab->dims[0] && back->dims[1] == lab->dims[1]);
  FUZZ_CHECK(memcmp(back->data, lab->data, n * sizeof(int32_t)) == 0);
  fm_tensor_release(back);
  fm_tensor_release(lab);
  return 0;
}
