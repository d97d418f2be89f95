/* test_image.c — decoding, encoding and palette PNGs: round trips through
 * our writers and stb's reader (and back), PNGs and a BMP built by hand
 * here, and files that must be refused with a message. */
#include "fmseg.h"
#include "tap.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/fmseg_image_XXXXXX";

static const char *tmp_path(const char *name) {
  static char path[4][512];
  static int k;
  k = (k + 1) % 4;
  snprintf(path[k], sizeof path[k], "%s/%s", dir, name);
  return path[k];
}

static int write_bytes(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  int good = fwrite(p, 1, n, f) == n;
  return fclose(f) == 0 && good;
}

static uint8_t *read_bytes(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc((size_t)len);
  *n = fread(b, 1, (size_t)len, f);
  fclose(f);
  return b;
}

static fm_tensor *noise_image(int64_t h, int64_t w, int64_t c) {
  int64_t shape[3] = {h, w, c};
  fm_tensor *t = fm_tensor_new(FM_U8, 3, shape);
  uint8_t *d = t->data;
  for (int64_t i = 0; i < h * w * c; ++i) d[i] = (uint8_t)((frand() + 1) * 127.99);
  return t;
}

static int is_shape(const fm_tensor *t, int64_t h, int64_t w, int64_t c) {
  return t && t->type == FM_U8 && t->ndim == (c ? 3 : 2) && t->dims[0] == h && t->dims[1] == w &&
         (!c || t->dims[2] == c);
}

static uint8_t px(const fm_tensor *t, int64_t y, int64_t x, int64_t ch) {
  return ((const uint8_t *)t->data)[(y * t->dims[1] + x) * t->dims[2] + ch];
}

/* ---- PNG and JPEG round trips ------------------------------------------------ */

static void test_png_round_trip(void) {
  fm_tensor *img = noise_image(37, 53, 3);
  const char *p = tmp_path("rgb.png");
  ok(fm_image_save_png(p, img) == 0, "save RGB PNG");
  fm_tensor *back = fm_image_load(p);
  ok(is_shape(back, 37, 53, 3) && memcmp(back->data, img->data, 37 * 53 * 3) == 0,
     "RGB PNG reads back byte for byte");

  size_t n = 0;
  uint8_t *bytes = read_bytes(p, &n);
  fm_tensor *mem = fm_image_load_memory(bytes, (int64_t)n);
  ok(is_shape(mem, 37, 53, 3) && memcmp(mem->data, img->data, 37 * 53 * 3) == 0,
     "the same PNG decoded from memory");
  free(bytes);

  /* a crop is a strided view; it must be written as the crop */
  fm_tensor *rows = fm_tensor_narrow(img, 0, 5, 20), *crop = fm_tensor_narrow(rows, 1, 7, 30);
  ok(fm_image_save_png(tmp_path("crop.png"), crop) == 0, "save a strided crop");
  fm_tensor *cb = fm_image_load(tmp_path("crop.png"));
  int same = is_shape(cb, 20, 30, 3);
  for (int64_t y = 0; same && y < 20; ++y)
    for (int64_t x = 0; x < 30; ++x)
      for (int ch = 0; ch < 3; ++ch) same &= px(cb, y, x, ch) == px(img, y + 5, x + 7, ch);
  ok(same, "crop reads back as the crop");
  fm_tensor_release(img); fm_tensor_release(back); fm_tensor_release(mem);
  fm_tensor_release(rows); fm_tensor_release(crop); fm_tensor_release(cb);
}

/* grey -> (g, g, g); grey+alpha -> (g, g, g); RGBA -> RGB (alpha dropped) */
static void test_channel_conversion(void) {
  char name[96];
  for (int64_t c = 1; c <= 4; ++c) {
    if (c == 3) continue;
    fm_tensor *img = noise_image(9, 11, c);
    const char *p = tmp_path("conv.png");
    int saved = fm_image_save_png(p, img) == 0;
    fm_tensor *back = fm_image_load(p);
    int good = saved && is_shape(back, 9, 11, 3);
    for (int64_t y = 0; good && y < 9; ++y)
      for (int64_t x = 0; x < 11; ++x)
        for (int ch = 0; ch < 3; ++ch) good &= px(back, y, x, ch) == px(img, y, x, c >= 3 ? ch : 0);
    snprintf(name, sizeof name, "%d-channel PNG loads as RGB", (int)c);
    ok(good, name);
    fm_tensor_release(img);
    fm_tensor_release(back);
  }
}

static void test_jpg(void) {
  int64_t shape[3] = {32, 48, 3};
  fm_tensor *img = fm_tensor_new(FM_U8, 3, shape);
  uint8_t *d = img->data;
  for (int64_t y = 0; y < 32; ++y)
    for (int64_t x = 0; x < 48; ++x)
      for (int ch = 0; ch < 3; ++ch) d[(y * 48 + x) * 3 + ch] = (uint8_t)(40 + 3 * x + 2 * y + 20 * ch);
  const char *p = tmp_path("smooth.jpg");
  ok(fm_image_save_jpg(p, img, 95) == 0, "save JPEG");
  fm_tensor *back = fm_image_load(p);
  double diff = 0;
  if (is_shape(back, 32, 48, 3))
    for (int64_t i = 0; i < 32 * 48 * 3; ++i) diff += abs((int)((uint8_t *)back->data)[i] - d[i]);
  char name[96];
  snprintf(name, sizeof name, "JPEG q95 of a smooth image reads back close (mean |diff| %.2f)",
           diff / (32 * 48 * 3));
  ok(back && diff / (32 * 48 * 3) < 2.0, name);
  ok(fm_image_save_jpg(p, img, 0) == -1 && strstr(fm_last_error(), "quality"), "JPEG quality 0 refused");
  fm_tensor_release(img);
  fm_tensor_release(back);
}

/* 2x2 24-bit BMP written by hand: rows bottom-up, BGR, rows padded to 4 bytes */
static void test_bmp(void) {
  uint8_t b[70] = {'B', 'M', 70, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0,
                   1, 0, 24, 0, 0, 0, 0, 0, 16, 0, 0, 0};
  const uint8_t pix[16] = {/* bottom row: (0,0,255) (0,255,0) */ 255, 0, 0, 0, 255, 0, 0, 0,
                           /* top row: (255,0,0) (10,20,30) */ 0, 0, 255, 30, 20, 10, 0, 0};
  memcpy(b + 54, pix, 16);
  const char *p = tmp_path("tiny.bmp");
  write_bytes(p, b, sizeof b);
  fm_tensor *img = fm_image_load(p);
  const uint8_t want[12] = {255, 0, 0, 10, 20, 30, 0, 0, 255, 0, 255, 0};
  ok(is_shape(img, 2, 2, 3) && memcmp(img->data, want, 12) == 0, "hand-made BMP decodes top-down RGB");
  fm_tensor_release(img);
}

/* ---- palette PNGs ------------------------------------------------------------ */

static void make_palette(uint8_t *pal, int n) {
  for (int i = 0; i < n; ++i) {
    pal[3 * i] = (uint8_t)(i * 37 + 11);
    pal[3 * i + 1] = (uint8_t)(i * 91 + 3);
    pal[3 * i + 2] = (uint8_t)(255 - i * 13);
  }
}

static void test_palette_round_trip(void) {
  uint8_t pal[21 * 3];
  make_palette(pal, 21);
  int64_t shape[2] = {19, 33};
  fm_tensor *lab = fm_tensor_new(FM_U8, 2, shape);
  uint8_t *l = lab->data;
  for (int64_t i = 0; i < 19 * 33; ++i) l[i] = (uint8_t)((frand() + 1) * 10.49);
  const char *p = tmp_path("labels.png");
  ok(fm_image_save_palette_png(p, lab, pal, 21) == 0, "save palette PNG");
  fm_tensor *idx = fm_image_load_indices(p);
  ok(is_shape(idx, 19, 33, 0) && memcmp(idx->data, l, 19 * 33) == 0, "palette PNG indices read back");
  /* stb expands the palette: an independent reading of our PLTE */
  fm_tensor *rgb = fm_image_load(p);
  int good = is_shape(rgb, 19, 33, 3);
  for (int64_t y = 0; good && y < 19; ++y)
    for (int64_t x = 0; x < 33; ++x)
      for (int ch = 0; ch < 3; ++ch) good &= px(rgb, y, x, ch) == pal[3 * l[y * 33 + x] + ch];
  ok(good, "stb decodes the palette PNG to the palette's colours");
  fm_tensor_release(idx);
  fm_tensor_release(rgb);

  /* int32 labels with VOC's ignore label 255 beyond a 21-colour palette */
  fm_tensor *lab32 = fm_tensor_new(FM_I32, 2, shape);
  int32_t *m = lab32->data;
  for (int64_t i = 0; i < 19 * 33; ++i) m[i] = i % 7 == 0 ? 255 : l[i];
  ok(fm_image_save_palette_png(p, lab32, pal, 21) == 0, "save int32 labels with 255");
  idx = fm_image_load_indices(p);
  rgb = fm_image_load(p);
  good = is_shape(idx, 19, 33, 0) && is_shape(rgb, 19, 33, 3);
  for (int64_t i = 0; good && i < 19 * 33; ++i) {
    good &= ((uint8_t *)idx->data)[i] == m[i];
    if (m[i] == 255) good &= px(rgb, i / 33, i % 33, 0) == 0 && px(rgb, i / 33, i % 33, 2) == 0;
  }
  ok(good, "label 255 reads back, coloured black by the padded palette");
  m[40] = 256;
  ok(fm_image_save_palette_png(p, lab32, pal, 21) == -1 && strstr(fm_last_error(), "256"),
     "label 256 refused");
  m[40] = -1;
  ok(fm_image_save_palette_png(p, lab32, pal, 21) == -1, "label -1 refused");
  ok(fm_image_save_palette_png(p, lab, pal, 300) == -1, "300 colours refused");
  fm_tensor_release(idx); fm_tensor_release(rgb); fm_tensor_release(lab); fm_tensor_release(lab32);
}

/* A grey PNG from stb_image_write (which picks a filter per row) read as
 * indices: the grey values. */
static void test_grey_indices(void) {
  int64_t shape[3] = {40, 27, 1};
  fm_tensor *g = fm_tensor_new(FM_U8, 3, shape);
  uint8_t *d = g->data;
  for (int64_t y = 0; y < 40; ++y)
    for (int64_t x = 0; x < 27; ++x)
      d[y * 27 + x] = (uint8_t)(y < 10 ? x * 9 : y < 20 ? y * 5 + x : y < 30 ? (x * y) % 256 : (frand() + 1) * 127);
  const char *p = tmp_path("grey.png");
  fm_image_save_png(p, g);
  fm_tensor *idx = fm_image_load_indices(p);
  ok(is_shape(idx, 40, 27, 0) && memcmp(idx->data, d, 40 * 27) == 0, "8-bit grey PNG read as its values");
  fm_tensor_release(g);
  fm_tensor_release(idx);
}

/* ---- PNGs written by hand: bit depths 1/2/4/8, every filter type ------------ */

static uint32_t crc32_naive(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ 0xEDB88320u : c >> 1;
  }
  return ~c;
}

static size_t put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
  return 4;
}

static size_t chunk(uint8_t *out, const char *type, const uint8_t *data, uint32_t len) {
  put32(out, len);
  memcpy(out + 4, type, 4);
  if (len) memcpy(out + 8, data, len);
  put32(out + 8 + len, crc32_naive(out + 4, len + 4));
  return len + 12;
}

/* zlib stream of stored (uncompressed) deflate blocks */
static size_t zlib_stored(uint8_t *out, const uint8_t *data, size_t n) {
  size_t o = 0;
  out[o++] = 0x78;
  out[o++] = 0x01;
  for (size_t i = 0; i == 0 || i < n; i += 65535) {
    size_t len = n - i < 65535 ? n - i : 65535;
    out[o++] = i + len >= n;  /* BFINAL, BTYPE 00 */
    out[o++] = (uint8_t)len; out[o++] = (uint8_t)(len >> 8);
    out[o++] = (uint8_t)~len; out[o++] = (uint8_t)(~len >> 8);
    memcpy(out + o, data + i, len);
    o += len;
  }
  uint32_t a = 1, b = 0;
  for (size_t i = 0; i < n; ++i) { a = (a + data[i]) % 65521; b = (b + a) % 65521; }
  return o + put32(out + o, b << 16 | a);
}

static int paeth(int a, int b, int c) {
  int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/* Packs `v` (h, w) samples of `depth` bits into rows, filters row y with
 * filter y % 5, and writes a colour-type `ctype` PNG to *out. */
static size_t make_png(uint8_t *out, const uint8_t *v, int h, int w, int depth, int ctype, int ncolors) {
  int stride = (w * depth + 7) / 8;
  uint8_t *raw = calloc((size_t)h, (size_t)stride), *filt = calloc((size_t)h, (size_t)stride + 1);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      raw[y * stride + x * depth / 8] |= (uint8_t)(v[y * w + x] << (8 - depth - (x * depth) % 8));
  for (int y = 0; y < h; ++y) {
    int f = y % 5;
    filt[y * (stride + 1)] = (uint8_t)f;
    for (int x = 0; x < stride; ++x) {
      int cur = raw[y * stride + x], a = x ? raw[y * stride + x - 1] : 0;
      int b = y ? raw[(y - 1) * stride + x] : 0, c = x && y ? raw[(y - 1) * stride + x - 1] : 0;
      int pred = f == 0 ? 0 : f == 1 ? a : f == 2 ? b : f == 3 ? (a + b) / 2 : paeth(a, b, c);
      filt[y * (stride + 1) + 1 + x] = (uint8_t)(cur - pred);
    }
  }
  uint8_t ihdr[13] = {0};
  put32(ihdr, (uint32_t)w);
  put32(ihdr + 4, (uint32_t)h);
  ihdr[8] = (uint8_t)depth;
  ihdr[9] = (uint8_t)ctype;
  uint8_t pal[768];
  make_palette(pal, 256);
  uint8_t *z = malloc((size_t)h * (stride + 1) + 64);
  size_t zn = zlib_stored(z, filt, (size_t)h * (stride + 1));
  const uint8_t sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
  size_t o = 8;
  memcpy(out, sig, 8);
  o += chunk(out + o, "IHDR", ihdr, 13);
  if (ctype == 3) o += chunk(out + o, "PLTE", pal, (uint32_t)ncolors * 3);
  o += chunk(out + o, "IDAT", z, (uint32_t)(zn / 2));  /* two IDATs: they concatenate */
  o += chunk(out + o, "IDAT", z + zn / 2, (uint32_t)(zn - zn / 2));
  o += chunk(out + o, "IEND", NULL, 0);
  free(raw); free(filt); free(z);
  return o;
}

static void test_handmade_pngs(void) {
  enum { H = 11, W = 13 };
  uint8_t v[H * W], *png = malloc(1 << 16);
  char name[96];
  for (int ctype = 0; ctype <= 3; ctype += 3)
    for (int depth = 1; depth <= 8; depth *= 2) {
      int ncolors = 1 << depth;
      for (int i = 0; i < H * W; ++i) v[i] = (uint8_t)((unsigned)((frand() + 1) * 4096) % (unsigned)ncolors);
      size_t n = make_png(png, v, H, W, depth, ctype, ncolors);
      const char *p = tmp_path("hand.png");
      write_bytes(p, png, n);
      fm_tensor *idx = fm_image_load_indices(p);
      snprintf(name, sizeof name, "hand-made %s PNG, %d-bit, filters 0-4: indices", ctype ? "palette" : "grey",
               depth);
      ok(is_shape(idx, H, W, 0) && memcmp(idx->data, v, H * W) == 0, name);
      fm_tensor_release(idx);
      if (ctype == 3 && depth == 8) {
        /* the same bytes with one CRC broken */
        png[8 + 12 + 13 - 1] ^= 1;
        write_bytes(p, png, n);
        idx = fm_image_load_indices(p);
        ok(!idx && strstr(fm_last_error(), "CRC") && strstr(fm_last_error(), p), "bad CRC refused");
      }
    }
  free(png);
}

/* ---- refusals ------------------------------------------------------------------ */

static void test_bad_files(void) {
  const char *missing = tmp_path("no-such-file.png");
  fm_clear_error();
  ok(!fm_image_load(missing) && strstr(fm_last_error(), missing), "missing file: NULL, message names it");
  ok(!fm_image_load_indices(missing) && strstr(fm_last_error(), missing),
     "missing file (indices): NULL, message names it");

  const char *text = tmp_path("notes.png");
  write_bytes(text, "just some text, not an image\n", 29);
  ok(!fm_image_load(text) && strstr(fm_last_error(), text), "text file: NULL, message names it");
  diag(fm_last_error());
  ok(!fm_image_load_indices(text) && strstr(fm_last_error(), "not a PNG"), "text file (indices): not a PNG");

  fm_tensor *img = noise_image(30, 30, 3);
  const char *full = tmp_path("full.png"), *cut = tmp_path("cut.png");
  fm_image_save_png(full, img);
  size_t n = 0;
  uint8_t *b = read_bytes(full, &n);
  write_bytes(cut, b, n / 2);
  ok(!fm_image_load(cut) && strstr(fm_last_error(), cut), "truncated PNG: NULL, message names it");
  diag(fm_last_error());
  ok(!fm_image_load_indices(cut) && strstr(fm_last_error(), "truncated"), "truncated PNG (indices) refused");
  ok(!fm_image_load_memory(b, 16) && *fm_last_error(), "16 bytes of PNG from memory refused");
  ok(!fm_image_load_memory(NULL, 10), "NULL buffer refused");
  free(b);
  ok(!fm_image_load_indices(full) && strstr(fm_last_error(), "colour type 2"), "RGB PNG refused as indices");

  ok(fm_image_save_png("/nonexistent-dir/x.png", img) == -1 && strstr(fm_last_error(), "/nonexistent-dir/x.png"),
     "unwritable path: -1, message names it");
  int64_t fs[3] = {4, 4, 3}, five[3] = {4, 4, 5};
  fm_tensor *f = fm_tensor_new(FM_F32, 3, fs), *c5 = fm_tensor_new(FM_U8, 3, five);
  ok(fm_image_save_png(tmp_path("f.png"), f) == -1 && strstr(fm_last_error(), "uint8"), "float image refused");
  ok(fm_image_save_png(tmp_path("c5.png"), c5) == -1 && strstr(fm_last_error(), "C in 1..4"),
     "5 channels refused");
  fm_tensor_release(img); fm_tensor_release(f); fm_tensor_release(c5);
}

static void cleanup(void) {
  static const char *names[] = {"rgb.png", "crop.png", "conv.png", "smooth.jpg", "tiny.bmp", "labels.png",
                                "grey.png", "hand.png", "notes.png", "full.png", "cut.png"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; ++i) unlink(tmp_path(names[i]));
  rmdir(dir);
}

int main(void) {
  if (!mkdtemp(dir)) {
    ok(0, "mkdtemp");
    return done_testing();
  }
  test_png_round_trip();
  test_channel_conversion();
  test_jpg();
  test_bmp();
  test_palette_round_trip();
  test_grey_indices();
  test_handmade_pngs();
  test_bad_files();
  cleanup();
  return done_testing();
}
