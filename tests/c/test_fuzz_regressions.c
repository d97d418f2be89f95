/* test_fuzz_regressions.c — each input that tests/fuzz found to break a
 * parser, kept as a test (the same bytes sit in tests/fuzz/corpus/TARGET/
 * as regress-*). Under the fuzz build's sanitizers they crashed or read
 * undefined memory; here each must come back as an image or a message. */
#include "fmseg.h"
#include "tap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/fmseg_fuzzreg_XXXXXX";

static const char *tmp_path(const char *name) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return path;
}

static const char *write_file(const char *name, const void *p, size_t n) {
  const char *path = tmp_path(name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) { perror(path); exit(1); }
  return path;
}

static int refused(fm_tensor *t, const char *needle) {
  int good = !t && strstr(fm_last_error(), needle) != NULL;
  if (!good) diag(t ? "decoded" : fm_last_error());
  fm_tensor_release(t);
  fm_clear_error();
  return good;
}

/* ---- stb_image's JPEG reader: a DHT segment of more than 256 codes ---------- */

/* stb 2.27 builds the table anyway and writes past its 257-entry size array
 * and its 256 values (fuzz_image, 9 bytes; stb 2.28 refuses n > 256). */
static void test_jpeg_dht_overflow(void) {
  static const uint8_t dht[] = {0xff, 0xd8, 0xff, 0xc4, 0x15, 0x11, 0x00, 0xe8, 0x28};
  ok(refused(fm_image_load_memory(dht, sizeof dht), "Huffman table"),
     "JPEG DHT of 272 codes: refused before stb decodes it");
  /* stb skips FF fill bytes before the SOI marker, so must the check */
  static const uint8_t fill[] = {0xff, 0xff, 0xd8, 0xff, 0xc4, 0xc2, 0x11, 0x00, 0xe8, 0x28};
  ok(refused(fm_image_load_memory(fill, sizeof fill), "Huffman table"),
     "the same after an FF fill byte before SOI");
  ok(refused(fm_image_load(write_file("dht.jpg", dht, sizeof dht)), "dht.jpg"),
     "fm_image_load refuses it too, naming the file");

  /* real JPEGs (their DHTs after SOF and after each scan) still decode */
  int64_t shape[3] = {24, 40, 3};
  fm_tensor *img = fm_tensor_new(FM_U8, 3, shape);
  for (int64_t i = 0; i < 24 * 40 * 3; ++i) ((uint8_t *)img->data)[i] = (uint8_t)(i * 7);
  const char *p = tmp_path("ok.jpg");
  ok(fm_image_save_jpg(p, img, 90) == 0, "write a JPEG");
  fm_tensor *back = fm_image_load(p);
  ok(back && back->dims[0] == 24 && back->dims[1] == 40, "our own JPEG still loads");
  fm_tensor_release(back);
  fm_tensor_release(img);
}

/* ---- stb's JPEG reader: a scan through a Huffman table no DHT defined ------- */

/* stb 2.27 mallocs its decoder state: an undefined table decodes through
 * uninitialised memory (fuzz_image: symbol index -128). With zeroed
 * allocations the result is the same every time. */
static const uint8_t undefined_table[] = {
  0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01,
  0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63,
  0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb,
  0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb,
  0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0x63, 0xff, 0xc2,
  0x00, 0x11, 0x08, 0x00, 0x06, 0x00, 0x08, 0x03, 0x01, 0x22, 0x00, 0x02,
  0x11, 0x01, 0x03, 0x11, 0x01, 0xff, 0xc4, 0x00, 0x15, 0x00, 0x01, 0x01,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x01, 0xff, 0xc4, 0x00, 0x14, 0x01, 0x01, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x01, 0x00, 0x02, 0x10, 0x03,
  0x10, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x22, 0xff, 0xda, 0x00,
  0x08, 0x01, 0x01, 0x00, 0x01, 0x25, 0x05, 0x02, 0x06, 0xbf, 0xff, 0xc4,
  0x00, 0x15, 0x11, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xda, 0x00,
  0x08, 0x01, 0x03, 0x01, 0x01, 0x3f, 0x01, 0xaf, 0xff, 0xc4, 0x00, 0x14,
  0x11, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x01, 0x01, 0x3f, 0x10, 0x8f,
  0xff, 0xc4, 0x00, 0x18, 0x10, 0x01, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00,
  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7e, 0x01, 0x11,
  0x00, 0x61, 0xc1, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x3f,
  0x10, 0x41, 0x5c, 0xd1, 0x0f, 0x53, 0xb3, 0x9f, 0xff, 0xd9,
};

static void test_jpeg_undefined_table(void) {
  fm_tensor *a = fm_image_load_memory(undefined_table, sizeof undefined_table);
  if (!a) fm_clear_error();
  /* churn the heap so that uninitialised memory would differ */
  for (int k = 0; k < 64; ++k) {
    void *junk = malloc(20000);
    memset(junk, 0x5a + k, 20000);
    free(junk);
  }
  fm_tensor *b = fm_image_load_memory(undefined_table, sizeof undefined_table);
  if (!b) fm_clear_error();
  int same = (!a && !b) || (a && b && a->dims[0] == b->dims[0] && a->dims[1] == b->dims[1] &&
                            memcmp(a->data, b->data, (size_t)fm_tensor_numel(a)) == 0);
  ok(same, "progressive JPEG using an undefined Huffman table: the same result twice");
  fm_tensor_release(a);
  fm_tensor_release(b);
}

/* ---- formats stb reads that fmseg does not take ------------------------------ */

/* stb's PNM reader overflows int on a long width and accepts a height of 0
 * (an empty "image"); only PNG, JPEG and BMP are compiled in now. */
static void test_other_formats_refused(void) {
  static const char overflow[] = "P67777777777777777777{54\n";
  ok(refused(fm_image_load_memory((const uint8_t *)overflow, sizeof overflow - 1), "known type"),
     "PNM with a width past INT_MAX: refused (no PNM reader)");
  static const char empty[] = "P6\n8 0\n255\n";
  ok(refused(fm_image_load_memory((const uint8_t *)empty, sizeof empty - 1), "known type"),
     "PNM of height 0: refused, not an empty image");
}

/* ---- stb's PNG reader: an IDAT chunk longer than the file ------------------ */

static size_t put_chunk(uint8_t *b, const char *type, const uint8_t *data, uint32_t len,
                        uint32_t claimed) {
  b[0] = (uint8_t)(claimed >> 24), b[1] = (uint8_t)(claimed >> 16), b[2] = (uint8_t)(claimed >> 8);
  b[3] = (uint8_t)claimed;
  memcpy(b + 4, type, 4);
  if (len) memcpy(b + 8, data, len);
  memset(b + 8 + len, 0, 4);   /* CRC: stb does not check it */
  return 12 + len;
}

/* stb 2.27 reallocs its IDAT buffer to the stated length before it reads:
 * 197 bytes claiming 2^30 made it ask for 2 GB (fuzz_image). */
static void test_png_idat_past_end(void) {
  static const uint8_t ihdr[13] = {0, 0, 0, 8, 0, 0, 0, 6, 8, 6, 0, 0, 0};
  static const uint8_t some[16] = {0x78, 0x9c, 0x63, 0x64};
  uint8_t b[128];
  size_t n = 8;
  memcpy(b, "\x89PNG\r\n\x1a\n", 8);
  n += put_chunk(b + n, "IHDR", ihdr, 13, 13);
  n += put_chunk(b + n, "IDAT", some, 16, 0x40000035u);
  n += put_chunk(b + n, "IEND", NULL, 0, 0);
  ok(refused(fm_image_load_memory(b, (int64_t)n), "chunk runs past the end"),
     "PNG whose IDAT claims 1 GB in a 77-byte file: refused before stb allocates");
}

/* ---- decompression bombs ---------------------------------------------------- */

/* A 54-byte BMP header (24-bit, no palette) claiming w x h, then n pixel
 * bytes of which none need be there: stb fills what is missing. */
static size_t bmp_header(uint8_t *b, int32_t w, int32_t h) {
  memset(b, 0, 54);
  b[0] = 'B', b[1] = 'M';
  uint32_t v[] = {54 + 16, 0, 54, 40};
  memcpy(b + 2, &v[0], 4), memcpy(b + 10, &v[2], 4), memcpy(b + 14, &v[3], 4);
  memcpy(b + 18, &w, 4), memcpy(b + 22, &h, 4);
  b[26] = 1, b[28] = 24;
  return 54 + 16;
}

static void test_pixel_limit(void) {
  uint8_t b[54 + 16];
  size_t n = bmp_header(b, 20000, 10000);
  ok(refused(fm_image_load_memory(b, (int64_t)n), "pixels"),
     "70-byte BMP claiming 20000x10000 (200 M pixels, PIL's limit is 179 M): refused");
  /* a negative height means top-down rows; stb's info keeps the sign */
  n = bmp_header(b, 20000, -10000);
  ok(refused(fm_image_load_memory(b, (int64_t)n), "20000x10000"),
     "the same top-down (negative height): refused, not let through as negative");

  int64_t saved = fm_image_set_max_pixels(100);
  n = bmp_header(b, 11, -10);
  ok(refused(fm_image_load_memory(b, (int64_t)n), "more than 100 pixels"), "110 pixels over a limit of 100");
  n = bmp_header(b, 10, -10);
  fm_tensor *t = fm_image_load_memory(b, (int64_t)n);
  ok(t && t->dims[0] == 10 && t->dims[1] == 10, "100 pixels at a limit of 100: decoded");
  if (!t) fm_clear_error();
  fm_tensor_release(t);
  fm_image_set_max_pixels(saved);
}

int main(void) {
  if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
  test_jpeg_dht_overflow();
  test_jpeg_undefined_table();
  test_other_formats_refused();
  test_png_idat_past_end();
  test_pixel_limit();
  unlink(tmp_path("dht.jpg"));
  unlink(tmp_path("ok.jpg"));
  rmdir(dir);
  return done_testing();
}
