/* image.c — decoding and encoding images: stb_image in, stb_image_write
 * out, and our own PNG chunk code for palette (label map) PNGs, whose
 * indices stb would turn into colours.
 *
 * stb is compiled into this file with static linkage, so libfmseg does not
 * depend on the exact version of Debian's libstb or export stbi_ symbols. */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* stb asserts on internal invariants; library code must never abort, and a
 * malformed file must come back as an error, not a dead process. */
#define STBI_ASSERT(x) ((void)0)
#define STBIW_ASSERT(x) ((void)0)
#define STB_IMAGE_STATIC
#define STBI_FAILURE_USERMSG  /* "Corrupt PNG" rather than "outofdata" */
/* Only the formats datasets and users hand us: each other reader of stb
 * 2.27 is attack surface with its own known faults (its PNM header parser
 * overflows int on "P6 7777777777", found by tests/fuzz/fuzz_image). */
/* Zeroed allocations: stb 2.27 mallocs its JPEG decoder state, so a scan
 * whose Huffman table no DHT defined decodes through uninitialised memory
 * (fuzz_image: a symbol index of -128). Zeroed, such a table decodes every
 * code as symbol 0, as stb 2.28's memset makes it. */
#define STBI_MALLOC(size) calloc(1, size)
#define STBI_REALLOC(p, size) realloc(p, size)
#define STBI_FREE(p) free(p)
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
/* Most of stb goes unused here; stb_image 2.27 also declares a static
 * function it never defines, which is reported at the end of the file, so
 * this one stays off past the pop. */
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#ifndef __clang__
/* gcc 12, once stbi_load_from_memory is inlined: the callback fields of
 * its context, which the memory path never reads */
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <stb_image.h>
#include <stb_image_write.h>
#pragma GCC diagnostic pop

/* ---- a guard in front of stb's JPEG decoder -------------------------------- */

/* Debian's stb_image (2.27, libstb-dev 0.0~git20220908) does not check that
 * a JPEG Huffman table (DHT) lists at most 256 codes: stbi__build_huffman
 * then writes past its 257-entry size table and the DHT loop past the 256
 * values, over the rest of the decoder's state (tests/fuzz/fuzz_image
 * found it with 9 bytes: FF D8 FF C4 15 11 00 E8 28; stb 2.28 added the
 * check in stbi__process_marker). The header is Debian's, so the file is
 * checked here first, at every DHT that stb could reach: segment by segment
 * as stb walks them up to the frame header (SOF), then, because where stb's
 * entropy decoder stops reading depends on the data, at every FF..FF C4
 * from there on (inside entropy-coded data an FF is a marker or FF 00). */

/* stb reads zeros past the end of its buffer. */
static int fm__jpeg_at(const uint8_t *b, size_t n, size_t i) { return i < n ? b[i] : 0; }

/* The DHT segment whose length field is at b[i], read as stb reads it
 * (tables until the length runs out): false if a table has over 256 codes. */
static bool fm__jpeg_dht_ok(const uint8_t *b, size_t n, size_t i) {
  long left = (long)(fm__jpeg_at(b, n, i) << 8 | fm__jpeg_at(b, n, i + 1)) - 2;
  for (i += 2; left > 0 && i < n;) {
    int q = b[i++], codes = 0;
    if (q >> 4 > 1 || (q & 15) > 3) return true;   /* stb refuses the segment */
    for (int k = 0; k < 16; ++k) codes += fm__jpeg_at(b, n, i++);
    if (codes > 256) return false;
    i += (size_t)codes;
    left -= 17 + codes;
  }
  return true;
}

static bool fm__jpeg_tables_ok(const uint8_t *b, size_t n) {
  size_t i = 0;                       /* SOI, after any FF fill bytes */
  while (i < n && b[i] == 0xFF) ++i;
  if (i == 0 || i >= n || b[i++] != 0xD8) return true;      /* not a JPEG */
  while (i < n) {                     /* up to SOF: stb skips non-marker bytes */
    if (b[i++] != 0xFF) continue;
    while (i < n && b[i] == 0xFF) ++i;
    if (i >= n) return true;
    int m = b[i++];
    if (m == 0xC0 || m == 0xC1 || m == 0xC2) break;
    bool sized = m == 0xC4 || m == 0xDB || m == 0xDD || (m >= 0xE0 && m <= 0xEF) || m == 0xFE;
    if (!sized) return true;          /* stb stops at any other marker here */
    if (m == 0xC4 && !fm__jpeg_dht_ok(b, n, i)) return false;
    i += (size_t)(fm__jpeg_at(b, n, i) << 8 | fm__jpeg_at(b, n, i + 1));
  }
  for (; i < n; ++i) {                /* from SOF on: every FF..FF C4 */
    if (b[i] != 0xFF) continue;
    while (i + 1 < n && b[i + 1] == 0xFF) ++i;
    if (i + 1 < n && b[i + 1] == 0xC4 && !fm__jpeg_dht_ok(b, n, i + 2)) return false;
  }
  return true;
}

/* stb 2.27 grows its IDAT buffer to a chunk's stated length before it finds
 * the file too short for it: a 197-byte PNG whose IDAT claims 2^30 bytes
 * makes it realloc 2 GB (fuzz_image). A chunk before IEND that runs past the
 * end fails in stb anyway, so such files are refused here first. */
static bool fm__png_chunks_fit(const uint8_t *b, size_t n) {
  static const uint8_t sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
  if (n < 8 || memcmp(b, sig, 8) != 0) return true;        /* not a PNG */
  size_t pos = 8;
  while (n - pos >= 8) {                                  /* length, type */
    uint32_t len = (uint32_t)b[pos] << 24 | (uint32_t)b[pos + 1] << 16 | (uint32_t)b[pos + 2] << 8 | b[pos + 3];
    if (memcmp(b + pos + 4, "IEND", 4) == 0) return true;
    if (len > n - pos - 8) return false;
    pos += 8 + (size_t)len;
    if (n - pos < 4) return true;                         /* no CRC: stb stops there */
    pos += 4;
  }
  return true;
}

/* ---- decoding ------------------------------------------------------------ */

/* Wraps stb's malloc'd (h, w, 3) pixels in a tensor (one copy: our storage
 * is allocated by tensor.c). */
static fm_tensor *fm__image_from_stb(unsigned char *pixels, int w, int h) {
  int64_t shape[3] = {h, w, 3};
  fm_tensor *img = fm_tensor_new(FM_U8, 3, shape);
  if (img) memcpy(img->data, pixels, (size_t)h * (size_t)w * 3);
  stbi_image_free(pixels);
  return img;
}

int fm__close_written(FILE *f, const char *path, const char *what, bool good, int err) {
  if (fclose(f) != 0 && good) {
    good = false;
    err = errno;
  }
  if (good) return 0;
  remove(path);   /* never a truncated file that looks written */
  return fm__error("%s: %s: write failed (%s)", what, path, strerror(err ? err : EIO));
}

/* Whole files into memory (internal.h): stb's JPEG path is checked first
 * (above), the palette reader walks the chunks itself, and the TIFF and
 * MAT-file readers parse the bytes. */
uint8_t *fm__read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  uint8_t *buf = NULL;
  size_t cap = 0, len = 0;
  for (;;) {
    if (len == cap) {
      cap = cap ? cap * 2 : 1 << 16;
      uint8_t *grown = realloc(buf, cap);
      if (!grown) { free(buf); fclose(f); errno = ENOMEM; return NULL; }
      buf = grown;
    }
    size_t r = fread(buf + len, 1, cap - len, f);
    len += r;
    if (r == 0) break;
  }
  bool failed = ferror(f);
  fclose(f);
  if (failed) { free(buf); errno = EIO; return NULL; }
  *n = len;
  return buf;
}

/* stb believes a header: a 139-byte BMP claiming 9 million rows decodes to
 * 218 MB of zeros, 2 GB is within reach (fuzz_image found it), so images
 * above PIL's limit are refused as PIL refuses them, before decoding. */
static int64_t fm__image_max_pixels = 2 * (1024 * 1024 * 1024 / 4 / 3);

int64_t fm_image_set_max_pixels(int64_t n) {
  int64_t previous = fm__image_max_pixels;
  if (n > 0) fm__image_max_pixels = n;
  return previous;
}

/* Decodes bytes named `name` in messages ("fm_image_load: PATH" or
 * "fm_image_load_memory: N bytes"). */
static fm_tensor *fm__image_decode(const uint8_t *bytes, size_t len, const char *name) {
  if (!fm__jpeg_tables_ok(bytes, len))
    return fm__error_null("%s: Corrupt JPEG (a Huffman table lists more than 256 codes)", name);
  if (!fm__png_chunks_fit(bytes, len))
    return fm__error_null("%s: Corrupt PNG (a chunk runs past the end of the file)", name);
  int w, h, n;
  /* (a BMP's height is negative for top-down rows: stb's info keeps the sign) */
  if (stbi_info_from_memory(bytes, (int)len, &w, &h, &n)) {
    int64_t aw = llabs((int64_t)w), ah = llabs((int64_t)h);
    if (aw * ah > fm__image_max_pixels)
      return fm__error_null("%s: %" PRId64 "x%" PRId64 " image has more than %" PRId64
                            " pixels (decompression bomb?); FMSEG_MAX_IMAGE_PIXELS raises the limit",
                            name, aw, ah, fm__image_max_pixels);
  }
  unsigned char *pixels = stbi_load_from_memory(bytes, (int)len, &w, &h, &n, 3);
  if (!pixels) return fm__error_null("%s: %s", name, stbi_failure_reason());
  if (w < 1 || h < 1) {   /* stb's PNM reader accepts a height of 0 */
    stbi_image_free(pixels);
    return fm__error_null("%s: %dx%d image has no pixels", name, w, h);
  }
  return fm__image_from_stb(pixels, w, h);
}

fm_tensor *fm_image_load(const char *path) {
  if (!path) return fm__error_null("fm_image_load: path is NULL");
  size_t len = 0;
  uint8_t *bytes = fm__read_file(path, &len);
  if (!bytes) return fm__error_null("fm_image_load: %s: cannot open (%s)", path, strerror(errno));
  char name[4096];
  snprintf(name, sizeof name, "fm_image_load: %s", path);
  fm_tensor *img = len > INT_MAX ? fm__error_null("%s: file too large (%zu bytes)", name, len)
                                 : fm__image_decode(bytes, len, name);
  free(bytes);
  return img;
}

fm_tensor *fm_image_load_memory(const uint8_t *bytes, int64_t len) {
  if (!bytes || len <= 0 || len > INT_MAX)
    return fm__error_null("fm_image_load_memory: bad buffer (%" PRId64 " bytes)", len);
  char name[64];
  snprintf(name, sizeof name, "fm_image_load_memory: %" PRId64 " bytes", len);
  return fm__image_decode(bytes, (size_t)len, name);
}

/* ---- encoding ------------------------------------------------------------ */

/* img: (H, W, C) U8, C in 1..4, sizes within stb's int. */
static bool fm__check_image(const fm_tensor *img, const char *what) {
  char s[128];
  if (!img) return fm__error("%s: image is NULL", what), false;
  if (img->type != FM_U8)
    return fm__error("%s: expected uint8, got %s", what, fm_dtype_name(img->type)), false;
  if (img->ndim != 3 || img->dims[2] < 1 || img->dims[2] > 4 || img->dims[0] < 1 ||
      img->dims[1] < 1 || img->dims[0] > INT_MAX / 4 || img->dims[1] > INT_MAX / 4 / img->dims[2])
    return fm__error("%s: expected (H, W, C) with C in 1..4, got %s", what,
                     fm__shape_str(img, s, sizeof s)), false;
  return true;
}

/* stb's file writers ignore fwrite's result, so a full disk would leave a
 * truncated file reported as written: the encoders write through a sink
 * that remembers a short write instead. */
typedef struct fm__sink {
  FILE *f;
  bool failed;
  int error;     /* errno of the first failed write */
} fm__sink;

static void fm__sink_write(void *ctx, void *data, int size) {
  fm__sink *s = ctx;
  if (s->failed || size <= 0) return;
  errno = 0;
  if (fwrite(data, 1, (size_t)size, s->f) != (size_t)size) {
    s->failed = true;
    s->error = errno ? errno : EIO;
  }
}

typedef int (*fm__stbi_writer)(fm__sink *sink, const fm_tensor *img, int32_t quality);

static int fm__write_png(fm__sink *sink, const fm_tensor *img, int32_t quality) {
  int w = (int)img->dims[1], c = (int)img->dims[2];
  return stbi_write_png_to_func(fm__sink_write, sink, w, (int)img->dims[0], c, img->data, w * c);
}

static int fm__write_jpg(fm__sink *sink, const fm_tensor *img, int32_t quality) {
  return stbi_write_jpg_to_func(fm__sink_write, sink, (int)img->dims[1], (int)img->dims[0],
                                (int)img->dims[2], img->data, quality);
}

/* Checks, makes the pixels contiguous, encodes into the file; a file that
 * could not be written whole is removed. */
static int fm__save(const char *path, const fm_tensor *img, int32_t quality, fm__stbi_writer write,
                    const char *what) {
  if (!path) return fm__error("%s: path is NULL", what);
  if (!fm__check_image(img, what)) return -1;
  fm_tensor *c = fm_tensor_contiguous(img);
  if (!c) return -1;
  fm__sink sink = {.f = fopen(path, "wb")};
  if (!sink.f) {
    int err = errno;
    fm_tensor_release(c);
    return fm__error("%s: %s: cannot open (%s)", what, path, strerror(err));
  }
  int encoded = write(&sink, c, quality);
  fm_tensor_release(c);
  errno = 0;
  if (fclose(sink.f) != 0 && !sink.failed) {
    sink.failed = true;
    sink.error = errno ? errno : EIO;
  }
  if (encoded && !sink.failed) return 0;
  remove(path);
  if (!encoded) return fm__error("%s: %s: the encoder failed", what, path);
  return fm__error("%s: %s: cannot write (%s)", what, path, strerror(sink.error));
}

int fm_image_save_png(const char *path, const fm_tensor *img) {
  return fm__save(path, img, 0, fm__write_png, "fm_image_save_png");
}

int fm_image_save_jpg(const char *path, const fm_tensor *img, int32_t quality) {
  if (quality < 1 || quality > 100)
    return fm__error("fm_image_save_jpg: quality %d outside 1..100", (int)quality);
  return fm__save(path, img, quality, fm__write_jpg, "fm_image_save_jpg");
}

/* ---- palette PNGs: chunks written and read here ---------------------------- */

static const uint8_t fm__png_signature[8] = {137, 80, 78, 71, 13, 10, 26, 10};

/* CRC-32 (ISO 3309, as PNG defines it), bitwise: chunks are few. */
static uint32_t fm__crc32(uint32_t crc, const uint8_t *p, size_t n) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

static void fm__put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static uint32_t fm__get_be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* length, type, data, CRC over type + data */
static bool fm__write_chunk(FILE *f, const char *type, const uint8_t *data, uint32_t len) {
  uint8_t head[8], tail[4];
  fm__put_be32(head, len);
  memcpy(head + 4, type, 4);
  uint32_t crc = fm__crc32(fm__crc32(0, head + 4, 4), data, len);
  fm__put_be32(tail, crc);
  return fwrite(head, 1, 8, f) == 8 && (len == 0 || fwrite(data, 1, len, f) == len) &&
         fwrite(tail, 1, 4, f) == 4;
}

/* labels (H, W) U8 or I32 in [0, 255] -> rows of filter byte 0 + indices;
 * *max_label gets the largest label. NULL with the error set when a label
 * is out of range. */
static uint8_t *fm__palette_rows(const fm_tensor *labels, int32_t *max_label) {
  int64_t h = labels->dims[0], w = labels->dims[1];
  uint8_t *rows = malloc((size_t)h * (size_t)(w + 1));
  if (!rows) return fm__error_null("fm_image_save_palette_png: out of memory");
  *max_label = 0;
  for (int64_t y = 0; y < h; ++y) {
    uint8_t *row = rows + y * (w + 1);
    row[0] = 0;  /* filter None: label maps are flat, deflate does the rest */
    for (int64_t x = 0; x < w; ++x) {
      const char *p = (const char *)labels->data +
                      (y * labels->strides[0] + x * labels->strides[1]) * (int64_t)fm_dtype_size(labels->type);
      int32_t v = labels->type == FM_U8 ? *(const uint8_t *)p : *(const int32_t *)p;
      if (v < 0 || v > 255) {
        free(rows);
        return fm__error_null("fm_image_save_palette_png: label %d at (%" PRId64 ", %" PRId64
                              ") outside [0, 255]", (int)v, y, x);
      }
      row[1 + x] = (uint8_t)v;
      if (v > *max_label) *max_label = v;
    }
  }
  return rows;
}

/* The palette holds max(ncolors, max label + 1) entries (extra ones black),
 * so that e.g. VOC's ignore label 255 stays a valid index. */
int fm_image_save_palette_png(const char *path, const fm_tensor *labels, const uint8_t *palette,
                              int32_t ncolors) {
  const char *what = "fm_image_save_palette_png";
  char s[128];
  if (!path) return fm__error("%s: path is NULL", what);
  if (!labels) return fm__error("%s: labels is NULL", what);
  if (labels->type != FM_U8 && labels->type != FM_I32)
    return fm__error("%s: labels must be uint8 or int32, got %s", what, fm_dtype_name(labels->type));
  if (labels->ndim != 2 || labels->dims[0] < 1 || labels->dims[1] < 1 ||
      labels->dims[0] > INT_MAX / 2 || labels->dims[1] > INT_MAX / 2 ||
      labels->dims[0] * (labels->dims[1] + 1) > INT_MAX)
    return fm__error("%s: expected labels (H, W), got %s", what, fm__shape_str(labels, s, sizeof s));
  if (ncolors < 0 || ncolors > 256 || (ncolors > 0 && !palette))
    return fm__error("%s: palette of %d colours (need 0..256 and a palette)", what, (int)ncolors);

  int32_t max_label = 0;
  uint8_t *rows = fm__palette_rows(labels, &max_label);
  if (!rows) return -1;
  int64_t h = labels->dims[0], w = labels->dims[1];
  int zlen = 0;
  uint8_t *z = stbi_zlib_compress(rows, (int)(h * (w + 1)), &zlen, 8);
  free(rows);
  if (!z) return fm__error("%s: %s: compression failed", what, path);

  int32_t nplte = ncolors > max_label + 1 ? ncolors : max_label + 1;
  uint8_t plte[768] = {0};
  if (ncolors > 0) memcpy(plte, palette, (size_t)ncolors * 3);
  uint8_t ihdr[13];
  fm__put_be32(ihdr, (uint32_t)w);
  fm__put_be32(ihdr + 4, (uint32_t)h);
  ihdr[8] = 8;   /* bit depth */
  ihdr[9] = 3;   /* colour type: palette */
  ihdr[10] = ihdr[11] = ihdr[12] = 0;  /* deflate, adaptive filters, no interlace */

  FILE *f = fopen(path, "wb");
  if (!f) {
    STBIW_FREE(z);
    return fm__error("%s: %s: cannot open (%s)", what, path, strerror(errno));
  }
  bool good = fwrite(fm__png_signature, 1, 8, f) == 8 && fm__write_chunk(f, "IHDR", ihdr, 13) &&
              fm__write_chunk(f, "PLTE", plte, (uint32_t)nplte * 3) &&
              fm__write_chunk(f, "IDAT", z, (uint32_t)zlen) && fm__write_chunk(f, "IEND", NULL, 0);
  STBIW_FREE(z);
  return fm__close_written(f, path, what, good, good ? 0 : errno);
}

/* The parts of a PNG that fm_image_load_indices needs. */
typedef struct fm__png {
  uint32_t width, height;
  int bit_depth, colour_type, interlace;
  uint8_t *idat;       /* concatenated IDAT payloads (malloc'd) */
  size_t idat_len;
} fm__png;

/* Walks the chunks of a whole file in memory. Returns an error message or
 * NULL. CRCs are checked: a corrupt label map must not load silently. */
static const char *fm__png_parse(const uint8_t *b, size_t n, fm__png *png) {
  if (n < 8 || memcmp(b, fm__png_signature, 8) != 0) return "not a PNG file";
  size_t pos = 8;
  bool seen_ihdr = false, seen_iend = false;
  while (!seen_iend) {
    if (n - pos < 12) return "truncated (chunk header)";
    uint32_t len = fm__get_be32(b + pos);
    const uint8_t *type = b + pos + 4, *data = b + pos + 8;
    if (len > n - pos - 12) return "truncated (chunk data)";
    if (fm__crc32(0, type, (size_t)len + 4) != fm__get_be32(data + len)) return "bad chunk CRC";
    if (memcmp(type, "IHDR", 4) == 0) {
      if (len != 13) return "bad IHDR";
      png->width = fm__get_be32(data);
      png->height = fm__get_be32(data + 4);
      png->bit_depth = data[8];
      png->colour_type = data[9];
      png->interlace = data[12];
      seen_ihdr = true;
    } else if (memcmp(type, "IDAT", 4) == 0) {
      uint8_t *grown = realloc(png->idat, png->idat_len + len + 1);
      if (!grown) return "out of memory";
      png->idat = grown;
      memcpy(png->idat + png->idat_len, data, len);
      png->idat_len += len;
    } else if (memcmp(type, "IEND", 4) == 0) {
      seen_iend = true;
    }
    pos += (size_t)len + 12;
  }
  if (!seen_ihdr) return "no IHDR chunk";
  if (!png->idat_len) return "no IDAT chunk";
  return NULL;
}

/* Paeth predictor, as the PNG specification writes it. */
static uint8_t fm__paeth(int a, int b, int c) {
  int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
  if (pa <= pb && pa <= pc) return (uint8_t)a;
  return (uint8_t)(pb <= pc ? b : c);
}

/* Undoes the per-row filters in place. One sample per pixel of <= 8 bits,
 * so the filter's "bytes per pixel" is 1. raw: h rows of 1 + stride bytes. */
static const char *fm__png_unfilter(uint8_t *raw, uint32_t h, size_t stride) {
  for (uint32_t y = 0; y < h; ++y) {
    uint8_t *row = raw + (size_t)y * (stride + 1) + 1;
    const uint8_t *up = y ? row - (stride + 1) : NULL;
    int filter = row[-1];
    for (size_t x = 0; x < stride; ++x) {
      int a = x ? row[x - 1] : 0, b = up ? up[x] : 0, c = (x && up) ? up[x - 1] : 0;
      switch (filter) {
      case 0: break;
      case 1: row[x] = (uint8_t)(row[x] + a); break;
      case 2: row[x] = (uint8_t)(row[x] + b); break;
      case 3: row[x] = (uint8_t)(row[x] + ((a + b) >> 1)); break;
      case 4: row[x] = (uint8_t)(row[x] + fm__paeth(a, b, c)); break;
      default: return "bad filter type";
      }
    }
  }
  return NULL;
}

/* Inflates, unfilters and unpacks 1/2/4/8-bit samples into (H, W) U8: the
 * raw sample values (palette indices, or grey levels unscaled). */
static fm_tensor *fm__png_indices(const fm__png *png, const char *path) {
  const char *what = "fm_image_load_indices";
  uint32_t w = png->width, h = png->height;
  int depth = png->bit_depth;
  size_t stride = ((size_t)w * (size_t)depth + 7) / 8;
  size_t want = (size_t)h * (stride + 1);
  if (want > INT_MAX || png->idat_len > INT_MAX) return fm__error_null("%s: %s: image too large", what, path);
  /* the first guess is bounded by what the compressed data could hold, so
   * a header claiming a huge image cannot make us allocate it up front */
  size_t guess = png->idat_len < want / 64 ? png->idat_len * 64 : want;
  int got = 0;
  uint8_t *raw = (uint8_t *)stbi_zlib_decode_malloc_guesssize((const char *)png->idat, (int)png->idat_len,
                                                              (int)guess + 1, &got);
  if (!raw) return fm__error_null("%s: %s: bad compressed data (%s)", what, path, stbi_failure_reason());
  if ((size_t)got < want) {
    free(raw);
    return fm__error_null("%s: %s: truncated image data", what, path);
  }
  const char *err = fm__png_unfilter(raw, h, stride);
  if (err) {
    free(raw);
    return fm__error_null("%s: %s: %s", what, path, err);
  }
  int64_t shape[2] = {h, w};
  fm_tensor *out = fm_tensor_new(FM_U8, 2, shape);
  if (out) {
    uint8_t *o = out->data;
    int mask = (1 << depth) - 1, per_byte = 8 / depth;
    for (uint32_t y = 0; y < h; ++y) {
      const uint8_t *row = raw + (size_t)y * (stride + 1) + 1;
      for (uint32_t x = 0; x < w; ++x) {
        /* samples are packed from the high bits down */
        int shift = 8 - depth * (int)(x % (uint32_t)per_byte + 1);
        o[(size_t)y * w + x] = (uint8_t)((row[x / (uint32_t)per_byte] >> shift) & mask);
      }
    }
  }
  free(raw);
  return out;
}

fm_tensor *fm_image_load_indices(const char *path) {
  const char *what = "fm_image_load_indices";
  if (!path) return fm__error_null("%s: path is NULL", what);
  size_t n = 0;
  uint8_t *bytes = fm__read_file(path, &n);
  if (!bytes) return fm__error_null("%s: %s: cannot open (%s)", what, path, strerror(errno));
  fm__png png = {0};
  const char *err = fm__png_parse(bytes, n, &png);
  free(bytes);
  fm_tensor *out = NULL;
  if (err) {
    fm__error("%s: %s: %s", what, path, err);
  } else if (png.width == 0 || png.height == 0 || png.width > INT_MAX || png.height > INT_MAX) {
    fm__error("%s: %s: bad size %" PRIu32 "x%" PRIu32, what, path, png.width, png.height);
  } else if (!((png.colour_type == 3 || png.colour_type == 0) &&
               (png.bit_depth == 1 || png.bit_depth == 2 || png.bit_depth == 4 || png.bit_depth == 8))) {
    fm__error("%s: %s: colour type %d, %d bits: not an 8-bit (or less) palette or greyscale PNG",
              what, path, png.colour_type, png.bit_depth);
  } else if (png.interlace != 0) {
    fm__error("%s: %s: interlaced PNGs are not supported", what, path);
  } else {
    out = fm__png_indices(&png, path);
  }
  free(png.idat);
  return out;
}

/* ---- zlib streams for other readers (MAT files' compressed variables) ------- */

/* stb's inflate reports a full output buffer and corrupt data alike, so the
 * buffer grows (x4) from a guess until the data fits or max_out is reached. */
uint8_t *fm_zlib_inflate(const uint8_t *in, int64_t n, int64_t max_out, int64_t *out_len) {
  const char *what = "fm_zlib_inflate";
  if (!in || n <= 0 || n > INT_MAX || !out_len)
    return fm__error_null("%s: bad input (%" PRId64 " bytes)", what, n);
  if (max_out <= 0 || max_out > INT_MAX) max_out = INT_MAX;
  int64_t cap = n < max_out / 4 ? 4 * n : max_out;
  if (cap < 65536) cap = max_out < 65536 ? max_out : 65536;
  for (;;) {
    uint8_t *out = malloc((size_t)cap);
    if (!out) return fm__error_null("%s: out of memory (%" PRId64 " bytes)", what, cap);
    int got = stbi_zlib_decode_buffer((char *)out, (int)cap, (const char *)in, (int)n);
    if (got >= 0) {
      *out_len = got;
      return out;
    }
    free(out);
    if (cap >= max_out)
      return fm__error_null("%s: corrupt zlib data, or it inflates to more than %" PRId64 " bytes", what, max_out);
    cap = cap < max_out / 4 ? cap * 4 : max_out;
  }
}
