/* safetensors.c — read and write the safetensors format.
 *
 * Layout (https://github.com/huggingface/safetensors):
 *   u64 little-endian N | N bytes of JSON header | data area
 * The header maps tensor names to {"dtype", "shape", "data_offsets":
 * [begin, end]} with offsets relative to the data area, plus an optional
 * "__metadata__" map of strings.
 *
 * Opening maps the file read-only and checks every header field against the
 * file size before any tensor is touched, so a truncated or hostile file is
 * refused at open with a message naming the file and the fault; nothing
 * later reads outside the mapping. Tensors are listed in header order (the
 * order of the JSON object, which is the order fm_safetensors_name reports).
 * Gaps between tensors and bytes after the last one are tolerated: they are
 * harmless, and readers should not be stricter than they need to be.
 *
 * F32 tensors come back as read-only views of the mapping; the mapping is a
 * refcounted storage, so such views outlive fm_safetensors_close. Other
 * dtypes are converted into new tensors (floats to F32, integers to I32).
 */
#include "internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c maps little-endian data straight into tensors"
#endif

/* The safetensors crate refuses headers over 100 MB; so do we. */
enum { FM__ST_MAX_HEADER = 100000000 };

/* ---- dtypes ------------------------------------------------------------- */

typedef enum fm__st_kind {
  FM__ST_F32, FM__ST_F16, FM__ST_BF16, FM__ST_F64, FM__ST_F8_E4M3, FM__ST_F8_E5M2,
  FM__ST_I64, FM__ST_I32, FM__ST_I16, FM__ST_I8,
  FM__ST_U64, FM__ST_U32, FM__ST_U16, FM__ST_U8, FM__ST_BOOL,
  FM__ST_NKINDS
} fm__st_kind;

typedef struct fm__st_dtype {
  const char *name;
  int32_t size;        /* bytes per element */
  int32_t target;      /* what fm_safetensors_get turns it into */
} fm__st_dtype;

static const fm__st_dtype fm__st_dtypes[FM__ST_NKINDS] = {
  [FM__ST_F32] = {"F32", 4, FM_F32},         [FM__ST_F16] = {"F16", 2, FM_F32},
  [FM__ST_BF16] = {"BF16", 2, FM_F32},       [FM__ST_F64] = {"F64", 8, FM_F32},
  [FM__ST_F8_E4M3] = {"F8_E4M3", 1, FM_F32}, [FM__ST_F8_E5M2] = {"F8_E5M2", 1, FM_F32},
  [FM__ST_I64] = {"I64", 8, FM_I32},         [FM__ST_I32] = {"I32", 4, FM_I32},
  [FM__ST_I16] = {"I16", 2, FM_I32},         [FM__ST_I8] = {"I8", 1, FM_I32},
  [FM__ST_U64] = {"U64", 8, FM_I32},         [FM__ST_U32] = {"U32", 4, FM_I32},
  [FM__ST_U16] = {"U16", 2, FM_I32},         [FM__ST_U8] = {"U8", 1, FM_I32},
  [FM__ST_BOOL] = {"BOOL", 1, FM_I32},
};

static int fm__st_kind_of(const char *name) {
  for (int k = 0; k < FM__ST_NKINDS; ++k)
    if (strcmp(fm__st_dtypes[k].name, name) == 0) return k;
  return -1;
}

/* ---- the open file ------------------------------------------------------ */

typedef struct fm__st_entry {
  char *name;
  int32_t kind;        /* fm__st_kind */
  int32_t ndim;
  int64_t *shape;      /* ndim entries (NULL for scalars) */
  uint64_t begin, end; /* byte offsets into the data area */
} fm__st_entry;

typedef struct fm__st_named { const char *name; int64_t index; } fm__st_named;

struct fm_safetensors {
  char *path;
  fm_storage *map;     /* the whole file, FM__MMAP */
  uint64_t data_start; /* 8 + header length */
  uint64_t data_size;
  int64_t n;
  fm__st_entry *entries; /* header order */
  fm__st_named *by_name; /* sorted by name, for find */
  char *metadata;        /* JSON object text, or "" */
};

static void fm__st_free(fm_safetensors *st) {
  if (!st) return;
  for (int64_t i = 0; i < st->n; ++i) {
    free(st->entries[i].name);
    free(st->entries[i].shape);
  }
  free(st->entries);
  free(st->by_name);
  free(st->metadata);
  free(st->path);
  fm__storage_release(st->map);
  free(st);
}

void fm_safetensors_close(fm_safetensors *st) { fm__st_free(st); }

/* ---- header validation -------------------------------------------------- */

/* A JSON number that is an integer in [0, 2^63). cJSON keeps numbers as
 * doubles, so "4.0" passes as 4; fractions, negatives and huge values fail. */
static bool fm__st_uint(const cJSON *j, uint64_t *out) {
  if (!cJSON_IsNumber(j)) return false;
  double v = j->valuedouble;
  if (!(v >= 0 && v < 9223372036854775808.0) || v != floor(v)) return false;
  *out = (uint64_t)v;
  return true;
}

/* Fills e->kind, ndim, shape from the entry's "dtype" and "shape" and
 * returns its byte size in *nbytes. */
static int fm__st_parse_type(const char *path, const char *name, const cJSON *obj,
                             fm__st_entry *e, uint64_t *nbytes) {
  const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(obj, "dtype");
  const cJSON *shape = cJSON_GetObjectItemCaseSensitive(obj, "shape");
  if (!dtype) return fm__error("%s: tensor \"%s\": missing \"dtype\"", path, name);
  if (!cJSON_IsString(dtype))
    return fm__error("%s: tensor \"%s\": \"dtype\" is not a string", path, name);
  e->kind = fm__st_kind_of(dtype->valuestring);
  if (e->kind < 0)
    return fm__error("%s: tensor \"%s\": unknown dtype \"%s\"", path, name, dtype->valuestring);
  if (!shape) return fm__error("%s: tensor \"%s\": missing \"shape\"", path, name);
  if (!cJSON_IsArray(shape))
    return fm__error("%s: tensor \"%s\": \"shape\" is not a list", path, name);
  e->ndim = cJSON_GetArraySize(shape);
  if (e->ndim > 0 && !(e->shape = malloc((size_t)e->ndim * sizeof *e->shape)))
    return fm__error("%s: out of memory", path);
  /* numel * element size, refusing anything that overflows 63 bits */
  uint64_t bytes = (uint64_t)fm__st_dtypes[e->kind].size;
  int32_t d = 0;
  for (const cJSON *it = shape->child; it; it = it->next, ++d) {
    uint64_t v;
    if (!fm__st_uint(it, &v))
      return fm__error("%s: tensor \"%s\": shape[%d] is not a non-negative integer",
                       path, name, (int)d);
    e->shape[d] = (int64_t)v;
    if (__builtin_mul_overflow(bytes, v, &bytes) || bytes > (uint64_t)INT64_MAX)
      return fm__error("%s: tensor \"%s\": shape overflows: numel * %d bytes exceeds 2^63",
                       path, name, (int)fm__st_dtypes[e->kind].size);
  }
  *nbytes = bytes;
  return 0;
}

static int fm__st_parse_entry(fm_safetensors *st, const cJSON *obj, fm__st_entry *e) {
  const char *path = st->path, *name = obj->string;
  if (!cJSON_IsObject(obj))
    return fm__error("%s: tensor \"%s\": header entry is not a JSON object", path, name);
  if (!(e->name = strdup(name))) return fm__error("%s: out of memory", path);
  uint64_t nbytes = 0;
  if (fm__st_parse_type(path, name, obj, e, &nbytes) != 0) return -1;

  const cJSON *off = cJSON_GetObjectItemCaseSensitive(obj, "data_offsets");
  if (!off) return fm__error("%s: tensor \"%s\": missing \"data_offsets\"", path, name);
  if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
      !fm__st_uint(off->child, &e->begin) || !fm__st_uint(off->child->next, &e->end))
    return fm__error("%s: tensor \"%s\": data_offsets must be two non-negative integers "
                     "[begin, end]", path, name);
  if (e->begin > e->end)
    return fm__error("%s: tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] decrease",
                     path, name, e->begin, e->end);
  if (e->end > st->data_size)
    return fm__error("%s: tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] run past the "
                     "end of the data area (%" PRIu64 " bytes; file truncated?)",
                     path, name, e->begin, e->end, st->data_size);
  if (e->end - e->begin != nbytes)
    return fm__error("%s: tensor \"%s\": data_offsets span %" PRIu64 " bytes but its shape "
                     "and dtype %s need %" PRIu64 " bytes",
                     path, name, e->end - e->begin, fm__st_dtypes[e->kind].name, nbytes);
  return 0;
}

/* "__metadata__": a map of strings, kept as JSON text. */
static int fm__st_parse_metadata(fm_safetensors *st, const cJSON *meta) {
  if (!cJSON_IsObject(meta))
    return fm__error("%s: \"__metadata__\" is not a JSON object", st->path);
  for (const cJSON *it = meta->child; it; it = it->next)
    if (!cJSON_IsString(it))
      return fm__error("%s: \"__metadata__\" value \"%s\" is not a string", st->path, it->string);
  if (!(st->metadata = cJSON_PrintUnformatted(meta)))
    return fm__error("%s: out of memory", st->path);
  return 0;
}

/* Sort keys for the layout checks: qsort gets no context pointer, so each
 * record carries what it is compared by. */
typedef struct fm__st_span { uint64_t begin, end; int64_t index; } fm__st_span;

static int fm__st_cmp_span(const void *a, const void *b) {
  const fm__st_span *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

static int fm__st_cmp_name(const void *a, const void *b) {
  return strcmp(((const fm__st_named *)a)->name, ((const fm__st_named *)b)->name);
}

/* Sorted by begin, any tensor that overlaps another overlaps the one before
 * it that reaches furthest. Zero-byte tensors overlap nothing. */
static int fm__st_check_overlap(const fm_safetensors *st) {
  int64_t n = st->n;
  fm__st_span *spans = malloc((size_t)n * sizeof *spans);
  if (!spans) return fm__error("%s: out of memory", st->path);
  for (int64_t i = 0; i < n; ++i)
    spans[i] = (fm__st_span){st->entries[i].begin, st->entries[i].end, i};
  qsort(spans, (size_t)n, sizeof *spans, fm__st_cmp_span);
  int rc = 0;
  int64_t last = -1; /* the tensor that reaches furthest so far */
  for (int64_t k = 0; k < n && rc == 0; ++k) {
    const fm__st_entry *e = &st->entries[spans[k].index];
    if (e->begin == e->end) continue;
    const fm__st_entry *p = last >= 0 ? &st->entries[last] : NULL;
    if (p && e->begin < p->end)
      rc = fm__error("%s: tensors \"%s\" bytes [%" PRIu64 ", %" PRIu64 ") and \"%s\" bytes [%"
                     PRIu64 ", %" PRIu64 ") overlap", st->path, p->name, p->begin, p->end,
                     e->name, e->begin, e->end);
    if (!p || e->end > p->end) last = spans[k].index;
  }
  free(spans);
  return rc;
}

/* Sorting names finds duplicates and leaves by_name ready for find. */
static int fm__st_index_names(fm_safetensors *st) {
  int64_t n = st->n;
  if (!(st->by_name = malloc((size_t)n * sizeof *st->by_name)))
    return fm__error("%s: out of memory", st->path);
  for (int64_t i = 0; i < n; ++i) st->by_name[i] = (fm__st_named){st->entries[i].name, i};
  qsort(st->by_name, (size_t)n, sizeof *st->by_name, fm__st_cmp_name);
  for (int64_t k = 1; k < n; ++k)
    if (strcmp(st->by_name[k - 1].name, st->by_name[k].name) == 0)
      return fm__error("%s: tensor name \"%s\" appears twice in the header", st->path,
                       st->by_name[k].name);
  return 0;
}

static int fm__st_parse_header(fm_safetensors *st, const char *text, size_t len) {
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (!root)
    return fm__error("%s: header is not valid JSON (error near byte %td of %zu)", st->path,
                     end ? end - text : (ptrdiff_t)0, len);
  int rc = -1;
  for (const char *p = end; p < text + len; ++p)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      fm__error("%s: header has trailing bytes after its JSON (at byte %td of %zu)", st->path,
                p - text, len);
      goto done;
    }
  if (!cJSON_IsObject(root)) {
    fm__error("%s: header is not a JSON object", st->path);
    goto done;
  }
  int64_t count = 0;
  for (const cJSON *it = root->child; it; it = it->next) count += strcmp(it->string, "__metadata__") != 0;
  if (count > 0 && !(st->entries = calloc((size_t)count, sizeof *st->entries))) {
    fm__error("%s: out of memory", st->path);
    goto done;
  }
  for (const cJSON *it = root->child; it; it = it->next) {
    if (strcmp(it->string, "__metadata__") == 0) {
      if (st->metadata) {
        fm__error("%s: \"__metadata__\" appears twice in the header", st->path);
        goto done;
      }
      if (fm__st_parse_metadata(st, it) != 0) goto done;
      continue;
    }
    /* count n as we go so that fm__st_free frees exactly what was filled */
    if (fm__st_parse_entry(st, it, &st->entries[st->n++]) != 0) goto done;
  }
  rc = st->n == 0 ? 0 : fm__st_check_overlap(st) != 0 ? -1 : fm__st_index_names(st);
done:
  cJSON_Delete(root);
  return rc;
}

/* ---- open --------------------------------------------------------------- */

/* Maps `path` into st->map after checking it can hold a header length. */
static int fm__st_map(fm_safetensors *st) {
  const char *path = st->path;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fm__error("%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    fm__error("%s: cannot stat: %s", path, strerror(errno));
    close(fd);
    return -1;
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    return fm__error("%s: not a regular file", path);
  }
  if (sb.st_size == 0) {
    close(fd);
    return fm__error("%s: empty file, not a safetensors file", path);
  }
  if (sb.st_size < 8) {
    close(fd);
    return fm__error("%s: file too short (%lld bytes) to hold the 8-byte header length",
                     path, (long long)sb.st_size);
  }
  void *base = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  close(fd); /* the mapping keeps the file */
  if (base == MAP_FAILED) return fm__error("%s: cannot mmap: %s", path, strerror(err));
  st->map = fm__storage_wrap(base, (size_t)sb.st_size, FM__MMAP);
  if (!st->map) {
    munmap(base, (size_t)sb.st_size);
    return -1;
  }
  return 0;
}

fm_safetensors *fm_safetensors_open(const char *path) {
  if (!path) return fm__error_null("fm_safetensors_open: path is NULL");
  fm_safetensors *st = calloc(1, sizeof *st);
  if (!st || !(st->path = strdup(path))) {
    free(st);
    return fm__error_null("%s: out of memory", path);
  }
  if (fm__st_map(st) != 0) goto fail;
  const uint8_t *bytes = st->map->base;
  uint64_t size = st->map->size, hlen;
  memcpy(&hlen, bytes, 8);
  if (hlen > FM__ST_MAX_HEADER) {
    fm__error("%s: header length %" PRIu64 " exceeds the 100 MB limit (not a safetensors "
              "file?)", path, hlen);
    goto fail;
  }
  if (hlen > size - 8) {
    fm__error("%s: header length %" PRIu64 " is larger than the file (%" PRIu64 " bytes; "
              "truncated or not a safetensors file)", path, hlen, size);
    goto fail;
  }
  st->data_start = 8 + hlen;
  st->data_size = size - st->data_start;
  /* cJSON gets a NUL-terminated copy so that no parser path can read past
   * the header. */
  char *text = malloc(hlen + 1);
  if (!text) {
    fm__error("%s: out of memory (header of %" PRIu64 " bytes)", path, hlen);
    goto fail;
  }
  memcpy(text, bytes + 8, hlen);
  text[hlen] = '\0';
  int rc = fm__st_parse_header(st, text, hlen);
  free(text);
  if (rc != 0) goto fail;
  if (!st->metadata && !(st->metadata = strdup(""))) {
    fm__error("%s: out of memory", path);
    goto fail;
  }
  return st;
fail:
  fm__st_free(st);
  return NULL;
}

/* ---- accessors ---------------------------------------------------------- */

static const fm__st_entry *fm__st_entry_at(const fm_safetensors *st, int64_t i) {
  if (!st) return fm__error_null("safetensors: handle is NULL");
  if (i < 0 || i >= st->n)
    return fm__error_null("%s: tensor index %" PRId64 " out of range 0..%" PRId64, st->path, i,
                          st->n - 1);
  return &st->entries[i];
}

int64_t fm_safetensors_count(const fm_safetensors *st) {
  if (!st) return fm__error("safetensors: handle is NULL");
  return st->n;
}

int64_t fm_safetensors_find(const fm_safetensors *st, const char *name) {
  if (!st || !name) return fm__error("fm_safetensors_find: NULL argument");
  int64_t lo = 0, hi = st->n; /* binary search over by_name */
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    int c = strcmp(st->by_name[mid].name, name);
    if (c == 0) return st->by_name[mid].index;
    if (c < 0) lo = mid + 1; else hi = mid;
  }
  return -1;
}

const char *fm_safetensors_name(const fm_safetensors *st, int64_t i) {
  const fm__st_entry *e = fm__st_entry_at(st, i);
  return e ? e->name : NULL;
}

const char *fm_safetensors_dtype(const fm_safetensors *st, int64_t i) {
  const fm__st_entry *e = fm__st_entry_at(st, i);
  return e ? fm__st_dtypes[e->kind].name : NULL;
}

int32_t fm_safetensors_ndim(const fm_safetensors *st, int64_t i) {
  const fm__st_entry *e = fm__st_entry_at(st, i);
  return e ? e->ndim : -1;
}

int64_t fm_safetensors_dim(const fm_safetensors *st, int64_t i, int32_t d) {
  const fm__st_entry *e = fm__st_entry_at(st, i);
  if (!e) return -1;
  if (d < 0 || d >= e->ndim)
    return fm__error("%s: tensor \"%s\" has %d dims, no dim %d", st->path, e->name,
                     (int)e->ndim, (int)d);
  return e->shape[d];
}

const char *fm_safetensors_metadata(const fm_safetensors *st) {
  if (!st) return fm__error_null("safetensors: handle is NULL");
  return st->metadata;
}

/* ---- conversions -------------------------------------------------------- */

/* IEEE half: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
static float fm__f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) { /* zero or subnormal: mant * 2^-24, exact in float */
    float v = (float)mant * 0x1p-24f;
    return sign ? -v : v;
  }
  if (exp == 31) bits = sign | 0x7f800000u | (mant << 13); /* inf, NaN */
  else bits = sign | ((exp + 112) << 23) | (mant << 13);   /* rebias 15 -> 127 */
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* bfloat16 is the top half of a float32. */
static float fm__bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* float8 e4m3fn (bias 7, no infinities, S.1111.111 is NaN). */
static float fm__f8e4m3_to_f32(uint8_t b) {
  int exp = (b >> 3) & 15, mant = b & 7;
  float v;
  if (exp == 15 && mant == 7) v = NAN;
  else if (exp == 0) v = ldexpf((float)mant, -9);         /* mant/8 * 2^-6 */
  else v = ldexpf((float)(8 + mant), exp - 10);           /* (1 + mant/8) * 2^(exp-7) */
  return (b & 0x80) ? -v : v;
}

/* float8 e5m2 is the top byte of a half. */
static float fm__f8e5m2_to_f32(uint8_t b) { return fm__f16_to_f32((uint16_t)(b << 8)); }

/* src may be unaligned inside the mapping, hence the memcpy loads. */
static void fm__st_to_f32(float *dst, const uint8_t *src, int64_t n, int32_t kind) {
  switch (kind) {
  case FM__ST_F32:
    memcpy(dst, src, (size_t)n * 4);
    break;
  case FM__ST_F16: /* the common case for large checkpoints: worth the threads */
#pragma omp parallel for schedule(static) if (n > (1 << 18))
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      memcpy(&h, src + 2 * i, 2);
      dst[i] = fm__f16_to_f32(h);
    }
    break;
  case FM__ST_BF16:
#pragma omp parallel for schedule(static) if (n > (1 << 18))
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      memcpy(&h, src + 2 * i, 2);
      dst[i] = fm__bf16_to_f32(h);
    }
    break;
  case FM__ST_F64:
    for (int64_t i = 0; i < n; ++i) {
      double d;
      memcpy(&d, src + 8 * i, 8);
      dst[i] = (float)d;
    }
    break;
  case FM__ST_F8_E4M3:
    for (int64_t i = 0; i < n; ++i) dst[i] = fm__f8e4m3_to_f32(src[i]);
    break;
  case FM__ST_F8_E5M2:
    for (int64_t i = 0; i < n; ++i) dst[i] = fm__f8e5m2_to_f32(src[i]);
    break;
  }
}

/* Element i of an integer tensor, widened to 64 bits (U64 saturating at
 * INT64_MAX, which is out of int32 range all the same). */
static int64_t fm__st_int_at(const uint8_t *src, int64_t i, int32_t kind) {
  switch (kind) {
  case FM__ST_I64: { int64_t v; memcpy(&v, src + 8 * i, 8); return v; }
  case FM__ST_I32: { int32_t v; memcpy(&v, src + 4 * i, 4); return v; }
  case FM__ST_I16: { int16_t v; memcpy(&v, src + 2 * i, 2); return v; }
  case FM__ST_I8: return (int8_t)src[i];
  case FM__ST_U64: { uint64_t v; memcpy(&v, src + 8 * i, 8); return v > INT64_MAX ? INT64_MAX : (int64_t)v; }
  case FM__ST_U32: { uint32_t v; memcpy(&v, src + 4 * i, 4); return v; }
  case FM__ST_U16: { uint16_t v; memcpy(&v, src + 2 * i, 2); return v; }
  default: return src[i]; /* U8, BOOL */
  }
}

static int fm__st_to_i32(int32_t *dst, const uint8_t *src, int64_t n, int32_t kind,
                         const fm_safetensors *st, const char *name) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t v = fm__st_int_at(src, i, kind);
    if (v < INT32_MIN || v > INT32_MAX)
      return fm__error("%s in %s: %s value %" PRId64 "%s at element %" PRId64
                       " is out of int32 range", name, st->path, fm__st_dtypes[kind].name, v,
                       v == INT64_MAX && kind == FM__ST_U64 ? " or more" : "", i);
    dst[i] = (int32_t)v;
  }
  return 0;
}

/* ---- get ---------------------------------------------------------------- */

fm_tensor *fm_safetensors_get(fm_safetensors *st, const char *name) {
  if (!st || !name) return fm__error_null("fm_safetensors_get: NULL argument");
  int64_t i = fm_safetensors_find(st, name);
  if (i < 0) return fm__error_null("%s: no such tensor in %s", name, st->path);
  const fm__st_entry *e = &st->entries[i];
  if (e->ndim > FM_MAX_DIMS)
    return fm__error_null("%s in %s: %d dims, fmseg tensors hold at most %d", name, st->path,
                          (int)e->ndim, FM_MAX_DIMS);
  uint64_t at = st->data_start + e->begin; /* byte offset in the file */
  /* The mapping is page-aligned, so file offset alignment is what counts. */
  if (e->kind == FM__ST_F32 && at % 4 == 0) {
    fm_tensor *view = fm__tensor_on(st->map, at, FM_F32, e->ndim, e->shape);
    if (view) view->readonly = 1; /* PROT_READ: a write would fault */
    return view;
  }

  const fm__st_dtype *dt = &fm__st_dtypes[e->kind];
  fm_tensor *t = fm_tensor_new(dt->target, e->ndim, e->shape);
  if (!t) return NULL;
  const uint8_t *src = (const uint8_t *)st->map->base + at;
  int64_t n = fm_tensor_numel(t);
  if (dt->target == FM_F32) fm__st_to_f32(t->data, src, n, e->kind);
  else if (fm__st_to_i32(t->data, src, n, e->kind, st, name) != 0) {
    fm_tensor_release(t);
    return NULL;
  }
  return t;
}

/* ---- save --------------------------------------------------------------- */

static const char *fm__st_save_dtype(int32_t dtype) {
  switch (dtype) {
  case FM_F32: return "F32";
  case FM_I32: return "I32";
  case FM_U8: return "U8";
  default: return NULL;
  }
}

static int fm__st_cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int fm__st_check_save_args(const char *path, int64_t n, const char *const *names,
                                  const fm_tensor *const *tensors) {
  if (!path) return fm__error("fm_safetensors_save: path is NULL");
  if (n < 0) return fm__error("%s: fm_safetensors_save: negative count %" PRId64, path, n);
  if (n > 0 && (!names || !tensors))
    return fm__error("%s: fm_safetensors_save: names or tensors is NULL", path);
  for (int64_t i = 0; i < n; ++i) {
    if (!names[i]) return fm__error("%s: fm_safetensors_save: name %" PRId64 " is NULL", path, i);
    if (strcmp(names[i], "__metadata__") == 0)
      return fm__error("%s: \"__metadata__\" is reserved, not a tensor name", path);
    if (!tensors[i]) return fm__error("%s: tensor \"%s\" is NULL", path, names[i]);
    if (!fm__st_save_dtype(tensors[i]->type))
      return fm__error("%s: tensor \"%s\": cannot save dtype %d", path, names[i],
                       (int)tensors[i]->type);
  }
  if (n < 2) return 0;
  const char **sorted = malloc((size_t)n * sizeof *sorted);
  if (!sorted) return fm__error("%s: out of memory", path);
  memcpy(sorted, names, (size_t)n * sizeof *sorted);
  qsort(sorted, (size_t)n, sizeof *sorted, fm__st_cmp_str);
  int rc = 0;
  for (int64_t k = 1; k < n && rc == 0; ++k)
    if (strcmp(sorted[k - 1], sorted[k]) == 0)
      rc = fm__error("%s: tensor name \"%s\" given twice", path, sorted[k]);
  free(sorted);
  return rc;
}

/* Integers go in raw: cJSON would print large doubles as 1e+15. */
static bool fm__st_add_int(cJSON *array, int64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "%" PRId64, v);
  cJSON *item = cJSON_CreateRaw(buf);
  if (item && cJSON_AddItemToArray(array, item)) return true;
  cJSON_Delete(item);
  return false;
}

/* Data offsets: 4-byte dtypes first, so that after the 8-aligned header
 * every F32/I32 tensor stays 4-aligned and loads zero-copy. fm__st_write_all
 * writes the data in this same two-pass order. */
static bool fm__st_first_pass(const fm_tensor *t) { return fm_dtype_size(t->type) == 4; }

/* The header text; entries in the caller's order. */
static char *fm__st_build_header(int64_t n, const char *const *names,
                                 const fm_tensor *const *tensors) {
  uint64_t *offsets = malloc((size_t)(n ? n : 1) * sizeof *offsets), pos = 0;
  cJSON *root = offsets ? cJSON_CreateObject() : NULL;
  for (int pass = 0; root && pass < 2; ++pass)
    for (int64_t i = 0; i < n; ++i) {
      if (fm__st_first_pass(tensors[i]) != (pass == 0)) continue;
      offsets[i] = pos;
      pos += (uint64_t)fm_tensor_numel(tensors[i]) * fm_dtype_size(tensors[i]->type);
    }
  bool ok = root != NULL;
  for (int64_t i = 0; ok && i < n; ++i) {
    const fm_tensor *t = tensors[i];
    uint64_t end = offsets[i] + (uint64_t)fm_tensor_numel(t) * fm_dtype_size(t->type);
    cJSON *e = cJSON_AddObjectToObject(root, names[i]), *shape = NULL, *off = NULL;
    ok = e && cJSON_AddStringToObject(e, "dtype", fm__st_save_dtype(t->type)) &&
         (shape = cJSON_AddArrayToObject(e, "shape")) &&
         (off = cJSON_AddArrayToObject(e, "data_offsets"));
    for (int32_t d = 0; ok && d < t->ndim; ++d) ok = fm__st_add_int(shape, t->dims[d]);
    ok = ok && fm__st_add_int(off, (int64_t)offsets[i]) && fm__st_add_int(off, (int64_t)end);
  }
  char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
  cJSON_Delete(root);
  free(offsets);
  return text;
}

/* Header padded with spaces so the data area starts 8-aligned, then the
 * tensors in offset order. */
static int fm__st_write_all(FILE *f, int64_t n, const fm_tensor *const *tensors,
                            const char *header) {
  size_t hlen = strlen(header), padded = (hlen + 7) / 8 * 8;
  uint64_t le = padded;
  if (fwrite(&le, 8, 1, f) != 1 || fwrite(header, 1, hlen, f) != hlen) return -1;
  for (size_t k = hlen; k < padded; ++k)
    if (fputc(' ', f) == EOF) return -1;
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t i = 0; i < n; ++i) {
      if (fm__st_first_pass(tensors[i]) != (pass == 0)) continue;
      fm_tensor *c = fm_tensor_contiguous(tensors[i]); /* retain or copy */
      if (!c) return -2;
      size_t nbytes = (size_t)fm_tensor_numel(c) * fm_dtype_size(c->type);
      size_t wrote = nbytes ? fwrite(c->data, 1, nbytes, f) : 0;
      fm_tensor_release(c);
      if (wrote != nbytes) return -1;
    }
  return 0;
}

/* Writes to PATH.tmpPID and renames, so that a failed save leaves no torn
 * file and a file that is currently mapped is replaced, not rewritten. */
int fm_safetensors_save(const char *path, int64_t n, const char *const *names,
                        const fm_tensor *const *tensors) {
  if (fm__st_check_save_args(path, n, names, tensors) != 0) return -1;
  char *header = fm__st_build_header(n, names, tensors);
  if (!header) return fm__error("%s: out of memory building the header", path);
  size_t tlen = strlen(path) + 32;
  char *tmp = malloc(tlen);
  int rc = -1;
  FILE *f = NULL;
  if (!tmp) {
    fm__error("%s: out of memory", path);
    goto done;
  }
  snprintf(tmp, tlen, "%s.tmp%ld", path, (long)getpid());
  if (!(f = fopen(tmp, "wb"))) {
    fm__error("%s: cannot create %s: %s", path, tmp, strerror(errno));
    goto done;
  }
  int wr = fm__st_write_all(f, n, tensors, header);
  int err = errno;
  if (fclose(f) != 0 && wr == 0) {
    wr = -1;
    err = errno;
  }
  if (wr != 0) {
    if (wr == -1) fm__error("%s: write failed: %s", path, strerror(err));
    else { /* fm_tensor_contiguous's message, with the file in front */
      char why[512];
      snprintf(why, sizeof why, "%s", fm_last_error());
      fm__error("%s: %s", path, why);
    }
    unlink(tmp);
    goto done;
  }
  if (rename(tmp, path) != 0) {
    fm__error("%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
    unlink(tmp);
    goto done;
  }
  rc = 0;
done:
  free(tmp);
  free(header);
  return rc;
}
