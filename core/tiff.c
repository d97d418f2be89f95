/* tiff.c — label maps in TIFF, without libtiff: the 16-bit greyscale files
 * that detectron2-style prepare scripts write for ADE20K-Full (847) and
 * PASCAL Context-459 (PIL's Image.fromarray(uint16_array).save("x.tif"),
 * uncompressed), read and written.
 *
 * Reading covers baseline TIFF 6.0 for one grey (or palette index) sample
 * per pixel: either byte order, strips, 8 or 16 bits, uncompressed or
 * PackBits, the two compressions a baseline reader must know for such
 * images. Everything else (tiles, LZW, Deflate, JPEG, predictors, several
 * samples, signed or float samples, WhiteIsZero, BigTIFF) is refused with
 * the file and the field named: a label map must never load as something
 * else. Only the first image (IFD) of a file is read. */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the bytes ------------------------------------------------------------ */

typedef struct fm__tif {
  const uint8_t *b;
  size_t n;
  bool be;          /* "MM": big-endian */
} fm__tif;

/* Callers check that off + 2 (or 4) <= n. */
static uint32_t fm__tif_u16(const fm__tif *t, size_t off) {
  const uint8_t *p = t->b + off;
  return t->be ? (uint32_t)p[0] << 8 | p[1] : (uint32_t)p[1] << 8 | p[0];
}

static uint32_t fm__tif_u32(const fm__tif *t, size_t off) {
  const uint8_t *p = t->b + off;
  return t->be ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
               : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/* ---- the directory (IFD) ---------------------------------------------------- */

enum {
  FM__TIF_WIDTH = 256, FM__TIF_LENGTH = 257, FM__TIF_BITS = 258, FM__TIF_COMPRESSION = 259,
  FM__TIF_PHOTOMETRIC = 262, FM__TIF_STRIP_OFFSETS = 273, FM__TIF_SAMPLES = 277,
  FM__TIF_ROWS_PER_STRIP = 278, FM__TIF_STRIP_BYTES = 279, FM__TIF_PREDICTOR = 317,
  FM__TIF_TILE_WIDTH = 322, FM__TIF_SAMPLE_FORMAT = 339,
};

/* One entry: its type, count and where its values are (inline when they
 * fit in 4 bytes), checked to lie inside the file. */
typedef struct fm__tif_field {
  uint32_t tag, type, count;
  size_t at;
  bool present;
} fm__tif_field;

static uint32_t fm__tif_type_size(uint32_t type) {
  switch (type) {
  case 1: case 2: case 6: case 7: return 1;   /* BYTE ASCII SBYTE UNDEFINED */
  case 3: case 8: return 2;                   /* SHORT SSHORT */
  case 4: case 9: case 11: case 13: return 4; /* LONG SLONG FLOAT IFD */
  case 5: case 10: case 12: return 8;         /* RATIONAL SRATIONAL DOUBLE */
  default: return 0;
  }
}

/* Value i of a BYTE, SHORT or LONG field; msg set otherwise. */
static bool fm__tif_value(const fm__tif *t, const fm__tif_field *f, uint32_t i, uint32_t *v,
                          char *msg, size_t len) {
  if (i >= f->count) {
    snprintf(msg, len, "tag %" PRIu32 " has %" PRIu32 " values, %" PRIu32 " needed", f->tag, f->count, i + 1);
    return false;
  }
  switch (f->type) {
  case 1: *v = t->b[f->at + i]; return true;
  case 3: *v = fm__tif_u16(t, f->at + 2 * (size_t)i); return true;
  case 4: *v = fm__tif_u32(t, f->at + 4 * (size_t)i); return true;
  default:
    snprintf(msg, len, "tag %" PRIu32 " has field type %" PRIu32 ", expected BYTE, SHORT or LONG", f->tag, f->type);
    return false;
  }
}

/* A scalar tag, or `dflt` when the file leaves it out. */
static bool fm__tif_scalar(const fm__tif *t, const fm__tif_field *f, uint32_t dflt, uint32_t *v,
                           char *msg, size_t len) {
  if (!f->present) { *v = dflt; return true; }
  return fm__tif_value(t, f, 0, v, msg, len);
}

typedef struct fm__tif_dir {
  fm__tif_field width, length, bits, compression, photometric, offsets, samples, rows, bytes,
      predictor, tile, sample_format;
} fm__tif_dir;

static fm__tif_field *fm__tif_slot(fm__tif_dir *d, uint32_t tag) {
  switch (tag) {
  case FM__TIF_WIDTH: return &d->width;
  case FM__TIF_LENGTH: return &d->length;
  case FM__TIF_BITS: return &d->bits;
  case FM__TIF_COMPRESSION: return &d->compression;
  case FM__TIF_PHOTOMETRIC: return &d->photometric;
  case FM__TIF_STRIP_OFFSETS: return &d->offsets;
  case FM__TIF_SAMPLES: return &d->samples;
  case FM__TIF_ROWS_PER_STRIP: return &d->rows;
  case FM__TIF_STRIP_BYTES: return &d->bytes;
  case FM__TIF_PREDICTOR: return &d->predictor;
  case FM__TIF_TILE_WIDTH: return &d->tile;
  case FM__TIF_SAMPLE_FORMAT: return &d->sample_format;
  default: return NULL;
  }
}

/* Header and first IFD: the entries this reader uses, located. */
static bool fm__tif_directory(fm__tif *t, fm__tif_dir *d, char *msg, size_t len) {
  if (t->n < 8) return snprintf(msg, len, "not a TIFF file (%zu bytes)", t->n), false;
  if (memcmp(t->b, "II", 2) == 0) t->be = false;
  else if (memcmp(t->b, "MM", 2) == 0) t->be = true;
  else return snprintf(msg, len, "not a TIFF file (no II or MM byte-order mark)"), false;
  uint32_t magic = fm__tif_u16(t, 2);
  if (magic == 43) return snprintf(msg, len, "BigTIFF is not supported"), false;
  if (magic != 42) return snprintf(msg, len, "not a TIFF file (version %" PRIu32 ", expected 42)", magic), false;
  size_t ifd = fm__tif_u32(t, 4);
  if (ifd > t->n - 2) return snprintf(msg, len, "truncated (the IFD at byte %zu is past the end)", ifd), false;
  size_t entries = fm__tif_u16(t, ifd);
  if (entries > (t->n - ifd - 2) / 12)
    return snprintf(msg, len, "truncated (the IFD's %zu entries run past the end)", entries), false;
  memset(d, 0, sizeof *d);
  for (size_t k = 0; k < entries; ++k) {
    size_t e = ifd + 2 + 12 * k;
    uint32_t tag = fm__tif_u16(t, e);
    fm__tif_field *f = fm__tif_slot(d, tag);
    if (!f || f->present) continue;    /* unknown tags skipped; a repeat: the first counts */
    f->tag = tag;
    f->type = fm__tif_u16(t, e + 2);
    f->count = fm__tif_u32(t, e + 4);
    uint64_t size = (uint64_t)fm__tif_type_size(f->type) * f->count;
    if (size <= 4) {
      f->at = e + 8;
    } else {
      f->at = fm__tif_u32(t, e + 8);
      if (f->at > t->n || size > t->n - f->at)
        return snprintf(msg, len, "truncated (the values of tag %" PRIu32 " run past the end)", tag), false;
    }
    f->present = true;
  }
  return true;
}

/* ---- strips ------------------------------------------------------------------ */

/* PackBits (TIFF 6.0 section 9) of one strip into exactly `want` bytes. */
static bool fm__packbits(uint8_t *out, size_t want, const uint8_t *in, size_t n) {
  size_t i = 0, o = 0;
  while (o < want) {
    if (i >= n) return false;
    int c = (int8_t)in[i++];
    if (c >= 0) {                 /* c + 1 literal bytes */
      size_t k = (size_t)c + 1;
      if (k > n - i || k > want - o) return false;
      memcpy(out + o, in + i, k);
      i += k;
      o += k;
    } else if (c != -128) {       /* the next byte 1 - c times; -128 is a no-op */
      size_t k = (size_t)(1 - c);
      if (i >= n || k > want - o) return false;
      memset(out + o, in[i++], k);
      o += k;
    }
  }
  return true;
}

typedef struct fm__tif_image {
  uint32_t width, height, bits, compression, rows_per_strip, nstrips;
} fm__tif_image;

/* Strip s: where its bytes are, how many, and how many its rows need. */
static bool fm__tif_strip(const fm__tif *t, const fm__tif_dir *d, const fm__tif_image *im, uint32_t s,
                          const uint8_t **src, size_t *cnt, size_t *want, char *msg, size_t len) {
  uint32_t first = s * im->rows_per_strip, off, c;
  uint32_t rows = im->height - first < im->rows_per_strip ? im->height - first : im->rows_per_strip;
  *want = (size_t)rows * im->width * (im->bits / 8);
  if (!fm__tif_value(t, &d->offsets, s, &off, msg, len) || !fm__tif_value(t, &d->bytes, s, &c, msg, len))
    return false;
  if (off > t->n || c > t->n - off)
    return snprintf(msg, len, "truncated (strip %" PRIu32 " of %" PRIu32 ", %" PRIu32 " bytes at %" PRIu32
                    ", runs past the end of the %zu-byte file)", s, im->nstrips, c, off, t->n), false;
  *src = t->b + off;
  *cnt = c;
  /* uncompressed: the rows' bytes themselves; PackBits: a run of 128 bytes
   * costs 2, so a strip that could not hold its rows is refused up front */
  if (im->compression == 1 && c < *want)
    return snprintf(msg, len, "truncated (strip %" PRIu32 " holds %" PRIu32 " bytes, its %" PRIu32
                    " rows need %zu)", s, c, rows, *want), false;
  if (im->compression != 1 && *want / 64 > c)
    return snprintf(msg, len, "corrupt PackBits data in strip %" PRIu32 " (%" PRIu32 " bytes cannot hold %zu)",
                    s, c, *want), false;
  return true;
}

/* Every strip located and checked first (so that a header claiming a huge
 * image allocates nothing), then decoded as samples into out (H, W) I32. */
static fm_tensor *fm__tif_strips(const fm__tif *t, const fm__tif_dir *d, const fm__tif_image *im,
                                 char *msg, size_t len) {
  const uint8_t *src;
  size_t cnt, want;
  for (uint32_t s = 0; s < im->nstrips; ++s)
    if (!fm__tif_strip(t, d, im, s, &src, &cnt, &want, msg, len)) return NULL;
  int64_t shape[2] = {im->height, im->width};
  fm_tensor *out = fm_tensor_new(FM_I32, 2, shape);
  size_t row = (size_t)im->width * (im->bits / 8);
  uint8_t *tmp = im->compression == 1 ? NULL : malloc((size_t)im->rows_per_strip * row);
  if (!out || (im->compression != 1 && !tmp)) {
    snprintf(msg, len, "out of memory for a %" PRIu32 "x%" PRIu32 " label map", im->width, im->height);
    fm_tensor_release(out);
    free(tmp);
    return NULL;
  }
  int32_t *o = out->data;
  for (uint32_t s = 0; s < im->nstrips; ++s) {
    fm__tif_strip(t, d, im, s, &src, &cnt, &want, msg, len);
    if (im->compression != 1) {
      if (!fm__packbits(tmp, want, src, cnt)) {
        snprintf(msg, len, "corrupt PackBits data in strip %" PRIu32 " (%zu bytes for %zu)", s, cnt, want);
        fm_tensor_release(out);
        free(tmp);
        return NULL;
      }
      src = tmp;
    }
    int32_t *dst = o + (size_t)s * im->rows_per_strip * im->width;
    size_t count = want / (im->bits / 8);
    if (im->bits == 8) {
      for (size_t i = 0; i < count; ++i) dst[i] = src[i];
    } else if (t->be) {
      for (size_t i = 0; i < count; ++i) dst[i] = (int32_t)((uint32_t)src[2 * i] << 8 | src[2 * i + 1]);
    } else {
      for (size_t i = 0; i < count; ++i) dst[i] = (int32_t)((uint32_t)src[2 * i + 1] << 8 | src[2 * i]);
    }
  }
  free(tmp);
  return out;
}

/* Checks the directory against what this reader supports; fills im. */
static bool fm__tif_supported(const fm__tif *t, const fm__tif_dir *d, fm__tif_image *im, char *msg, size_t len) {
  uint32_t samples, photometric, predictor, format;
  if (!d->width.present || !d->length.present)
    return snprintf(msg, len, "no ImageWidth / ImageLength"), false;
  if (!d->offsets.present || !d->bytes.present) {
    if (d->tile.present) return snprintf(msg, len, "tiled TIFFs are not supported (strips only)"), false;
    return snprintf(msg, len, "no StripOffsets / StripByteCounts"), false;
  }
  if (!fm__tif_scalar(t, &d->width, 0, &im->width, msg, len) ||
      !fm__tif_scalar(t, &d->length, 0, &im->height, msg, len) ||
      !fm__tif_scalar(t, &d->bits, 1, &im->bits, msg, len) ||
      !fm__tif_scalar(t, &d->compression, 1, &im->compression, msg, len) ||
      !fm__tif_scalar(t, &d->photometric, 1, &photometric, msg, len) ||
      !fm__tif_scalar(t, &d->samples, 1, &samples, msg, len) ||
      !fm__tif_scalar(t, &d->rows, UINT32_MAX, &im->rows_per_strip, msg, len) ||
      !fm__tif_scalar(t, &d->predictor, 1, &predictor, msg, len) ||
      !fm__tif_scalar(t, &d->sample_format, 1, &format, msg, len))
    return false;
  if (im->width == 0 || im->height == 0)
    return snprintf(msg, len, "%" PRIu32 "x%" PRIu32 " image has no pixels", im->width, im->height), false;
  if (samples != 1)
    return snprintf(msg, len, "%" PRIu32 " samples per pixel: not a single-channel label map", samples), false;
  if (format != 1)
    return snprintf(msg, len, "SampleFormat %" PRIu32 " (%s): only unsigned integers are supported", format,
                    format == 2 ? "signed" : format == 3 ? "float" : "other"), false;
  if (im->bits != 8 && im->bits != 16)
    return snprintf(msg, len, "%" PRIu32 " bits per sample: only 8 and 16 are supported", im->bits), false;
  if (photometric != 1 && photometric != 3)
    return snprintf(msg, len, "PhotometricInterpretation %" PRIu32 ": only BlackIsZero (1) and palette (3) "
                    "label maps are supported", photometric), false;
  if (im->compression != 1 && im->compression != 32773)
    return snprintf(msg, len, "compression %" PRIu32 "%s is not supported (uncompressed or PackBits only; "
                    "`tiffcp -c none IN OUT` writes an uncompressed copy)", im->compression,
                    im->compression == 5 ? " (LZW)" : im->compression == 8 || im->compression == 32946 ? " (Deflate)"
                    : im->compression == 7 ? " (JPEG)" : ""), false;
  if (predictor != 1) return snprintf(msg, len, "predictor %" PRIu32 " is not supported", predictor), false;
  int64_t limit = fm_image_set_max_pixels(0);
  if ((uint64_t)im->width * im->height > (uint64_t)limit)
    return snprintf(msg, len, "%" PRIu32 "x%" PRIu32 " image has more than %" PRId64 " pixels "
                    "(decompression bomb?); FMSEG_MAX_IMAGE_PIXELS raises the limit", im->width, im->height,
                    limit), false;
  if (im->rows_per_strip == 0) return snprintf(msg, len, "RowsPerStrip is 0"), false;
  if (im->rows_per_strip > im->height) im->rows_per_strip = im->height;
  im->nstrips = (im->height - 1) / im->rows_per_strip + 1;
  if (d->offsets.count < im->nstrips || d->bytes.count < im->nstrips)
    return snprintf(msg, len, "%" PRIu32 " strip offsets and %" PRIu32 " byte counts for %" PRIu32 " strips",
                    d->offsets.count, d->bytes.count, im->nstrips), false;
  return true;
}

static fm_tensor *fm__tif_decode(const uint8_t *bytes, size_t n, char *msg, size_t len) {
  fm__tif t = {.b = bytes, .n = n};
  fm__tif_dir d;
  fm__tif_image im;
  if (!fm__tif_directory(&t, &d, msg, len) || !fm__tif_supported(&t, &d, &im, msg, len)) return NULL;
  return fm__tif_strips(&t, &d, &im, msg, len);
}

/* ---- the public functions ------------------------------------------------------ */

fm_tensor *fm_tiff_load(const char *path) {
  const char *what = "fm_tiff_load";
  if (!path) return fm__error_null("%s: path is NULL", what);
  size_t n = 0;
  uint8_t *bytes = fm__read_file(path, &n);
  if (!bytes) return fm__error_null("%s: %s: cannot open (%s)", what, path, strerror(errno));
  char msg[512] = "";
  fm_tensor *out = fm__tif_decode(bytes, n, msg, sizeof msg);
  free(bytes);
  if (!out) return fm__error_null("%s: %s: %s", what, path, msg);
  return out;
}

static void fm__put_le16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void fm__put_le32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

/* PIL 9.4's file for a uint16 array, entry for entry: little-endian, one
 * IFD of nine entries at byte 8, one uncompressed strip at byte 122. */
static void fm__tif_header(uint8_t head[122], uint32_t w, uint32_t h) {
  static const uint16_t tags[9] = {256, 257, 258, 259, 262, 273, 278, 279, 284};
  static const uint16_t types[9] = {4, 4, 3, 3, 3, 4, 4, 4, 3};
  uint32_t values[9] = {w, h, 16, 1, 1, 122, h, 0, 1};
  values[7] = w * h * 2;
  memset(head, 0, 122);
  memcpy(head, "II", 2);
  fm__put_le16(head + 2, 42);
  fm__put_le32(head + 4, 8);
  fm__put_le16(head + 8, 9);
  for (int k = 0; k < 9; ++k) {
    uint8_t *e = head + 10 + 12 * k;
    fm__put_le16(e, tags[k]);
    fm__put_le16(e + 2, types[k]);
    fm__put_le32(e + 4, 1);
    if (types[k] == 3) fm__put_le16(e + 8, values[k]); else fm__put_le32(e + 8, values[k]);
  }
  /* next IFD offset 0: bytes 118..121 stay zero */
}

int fm_tiff_save_u16(const char *path, const fm_tensor *labels) {
  const char *what = "fm_tiff_save_u16";
  char s[128];
  if (!path) return fm__error("%s: path is NULL", what);
  if (!labels) return fm__error("%s: labels is NULL", what);
  if (labels->type != FM_U8 && labels->type != FM_I32)
    return fm__error("%s: labels must be uint8 or int32, got %s", what, fm_dtype_name(labels->type));
  if (labels->ndim != 2 || labels->dims[0] < 1 || labels->dims[1] < 1)
    return fm__error("%s: expected labels (H, W), got %s", what, fm__shape_str(labels, s, sizeof s));
  int64_t h = labels->dims[0], w = labels->dims[1];
  if (w > (int64_t)(UINT32_MAX - 122) / 2 / h)
    return fm__error("%s: %s: %" PRId64 "x%" PRId64 " is too large for a TIFF (4 GiB of offsets)", what, path, w, h);
  fm_tensor *c = fm_tensor_contiguous(labels);
  if (!c) return -1;
  uint8_t *row = malloc((size_t)w * 2);
  if (!row) {
    fm_tensor_release(c);
    return fm__error("%s: out of memory", what);
  }
  /* every value is checked before the file is created */
  int64_t n = h * w;
  for (int64_t i = 0; i < n; ++i) {
    int32_t v = c->type == FM_U8 ? ((const uint8_t *)c->data)[i] : ((const int32_t *)c->data)[i];
    if (v < 0 || v > 65535) {
      free(row);
      fm_tensor_release(c);
      return fm__error("%s: label %d at (%" PRId64 ", %" PRId64 ") outside [0, 65535]", what, (int)v, i / w, i % w);
    }
  }
  FILE *f = fopen(path, "wb");
  if (!f) {
    int err = errno;
    free(row);
    fm_tensor_release(c);
    return fm__error("%s: %s: cannot open (%s)", what, path, strerror(err));
  }
  uint8_t head[122];
  fm__tif_header(head, (uint32_t)w, (uint32_t)h);
  bool good = fwrite(head, 1, sizeof head, f) == sizeof head;
  for (int64_t y = 0; good && y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      int64_t i = y * w + x;
      fm__put_le16(row + 2 * x, c->type == FM_U8 ? ((const uint8_t *)c->data)[i]
                                                 : (uint32_t)((const int32_t *)c->data)[i]);
    }
    good = fwrite(row, 2, (size_t)w, f) == (size_t)w;
  }
  int err = good ? 0 : errno;
  free(row);
  fm_tensor_release(c);
  return fm__close_written(f, path, what, good, err);
}
