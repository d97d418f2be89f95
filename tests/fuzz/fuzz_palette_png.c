/* fuzz_palette_png.c — round trip of the palette PNG writer: a small label
 * map and palette drawn from the input, written with
 * fm_image_save_palette_png, must read back identical through
 * fm_image_load_indices, and stb_image (the inverse any other reader has)
 * must see each pixel as its palette colour (black past the palette).
 *
 * Input: h-1, w-1 (one byte each, 1..32 after masking), a flags byte
 * (bit 0: I32 labels, bit 1: a strided view; bits 2-7 and a second byte:
 * the palette size 0..256), the palette (3 bytes a colour), then labels
 * (one byte each; I32 labels read an extra byte whose top bit makes the
 * label out of range, which must be refused). */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_bytes b = {data, size};
  int64_t h = (fuzz_u8(&b) & 31) + 1, w = (fuzz_u8(&b) & 31) + 1;
  int flags = fuzz_u8(&b);
  int i32 = flags & 1, strided = flags & 2;
  int32_t ncolors = (int32_t)(((flags >> 2) | (fuzz_u8(&b) & 3) << 6) % 257);
  uint8_t palette[768];
  for (int32_t k = 0; k < 3 * ncolors; ++k) palette[k] = fuzz_u8(&b);

  /* strided: a (h, w) view of every other column of an (h, 2w) tensor */
  int64_t shape[2] = {h, strided ? 2 * w : w};
  fm_tensor *base = fm_tensor_new(i32 ? FM_I32 : FM_U8, 2, shape);
  FUZZ_CHECK(base != NULL);
  int64_t vshape[2] = {h, w}, vstride[2] = {shape[1], strided ? 2 : 1};
  fm_tensor *labels = fm_tensor_view(base, 2, vshape, vstride, 0);
  FUZZ_CHECK(labels != NULL);
  uint8_t *expect = malloc((size_t)(h * w));
  int bad = 0;
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      uint8_t v = fuzz_u8(&b);
      int64_t at = y * vstride[0] + x * vstride[1];
      if (i32) {
        int32_t big = (int32_t)v;
        uint8_t hi = fuzz_u8(&b);
        if (hi & 0x80) big = (hi & 0x40) ? -1 - (int32_t)v : 256 + (int32_t)v, bad = 1;
        ((int32_t *)base->data)[at] = big;
      } else {
        ((uint8_t *)base->data)[at] = v;
      }
      expect[y * w + x] = v;
    }

  const char *path = fuzz_memfile_path();
  int rc = fm_image_save_palette_png(path, labels, ncolors ? palette : NULL, ncolors);
  if (bad) {
    FUZZ_CHECK(rc == -1);
    fuzz_expect_error();
  } else {
    if (rc != 0) fuzz_fail("fm_image_save_palette_png refused a valid label map");
    fm_tensor *back = fm_image_load_indices(path);
    if (!back) fuzz_fail("fm_image_load_indices refused our own PNG");
    FUZZ_CHECK(back->type == FM_U8 && back->ndim == 2 && back->dims[0] == h && back->dims[1] == w);
    FUZZ_CHECK(memcmp(back->data, expect, (size_t)(h * w)) == 0);
    fm_tensor_release(back);

    /* the same file as colours, through the independent decoder */
    size_t len = 0;
    uint8_t *png = fuzz_memfile_read(&len);
    fm_tensor *rgb = fm_image_load_memory(png, (int64_t)len);
    if (!rgb) fuzz_fail("stb_image refused our palette PNG");
    FUZZ_CHECK(rgb->dims[0] == h && rgb->dims[1] == w && rgb->dims[2] == 3);
    const uint8_t *px = rgb->data;
    for (int64_t k = 0; k < h * w; ++k)
      for (int c = 0; c < 3; ++c) {
        uint8_t want = expect[k] < ncolors ? palette[3 * expect[k] + c] : 0;
        FUZZ_CHECK(px[3 * k + c] == want);
      }
    fm_tensor_release(rgb);
    free(png);
  }
  free(expect);
  fm_tensor_release(labels);
  fm_tensor_release(base);
  return 0;
}
