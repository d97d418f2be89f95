/* test_mat.c — the MAT-file reader on files built here byte by byte (a
 * writer of the format's elements, either byte order, small elements,
 * zlib streams of stored blocks): values against the column-major formula
 * written out, MATLAB's narrowed storage types, sparse, char, cells and
 * structs through the node API, every limit and every malformed element
 * refused with a message naming the file, the offset and the variable.
 * tests/lua/test_mat.lua checks files that scipy wrote. */
#include "fmseg.h"
#include "tap.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* ---- a MAT-file writer ----------------------------------------------------- */

enum { MI_INT8 = 1, MI_UINT8 = 2, MI_INT16 = 3, MI_UINT16 = 4, MI_INT32 = 5, MI_UINT32 = 6,
       MI_SINGLE = 7, MI_DOUBLE = 9, MI_MATRIX = 14, MI_COMPRESSED = 15, MI_UTF8 = 16 };
enum { MX_CELL = 1, MX_STRUCT = 2, MX_OBJECT = 3, MX_CHAR = 4, MX_SPARSE = 5, MX_DOUBLE = 6,
       MX_INT16 = 10, MX_UINT8 = 9, MX_INT32 = 12, MX_UINT32 = 13, MX_OPAQUE = 17 };
enum { LOGICAL = 0x200, COMPLEX = 0x800 };

typedef struct mat_writer {
  uint8_t b[1 << 16];
  size_t n;
  int big;
  size_t open[96]; /* offsets of the tags of matrices being written */
  int depth;
} mat_writer;

static void w_raw(mat_writer *w, uint64_t v, int size) {
  for (int i = 0; i < size; ++i) w->b[w->n + (w->big ? size - 1 - i : i)] = (uint8_t)(v >> (8 * i));
  w->n += (size_t)size;
}

static void w_pad(mat_writer *w) { while (w->n % 8) w->b[w->n++] = 0; }

static void w_header(mat_writer *w, int big) {
  memset(w, 0, sizeof *w);
  w->big = big;
  memset(w->b, ' ', 116);
  memcpy(w->b, "MATLAB 5.0 MAT-file, written by test_mat.c", 42);
  w->n = 124;
  w_raw(w, 0x0100, 2);
  memcpy(w->b + 126, big ? "MI" : "IM", 2);
  w->n = 128;
}

/* An element of n values of `size` bytes; small (4-byte form) when asked and it fits. */
static void w_elem(mat_writer *w, int type, const void *values, int64_t n, int size, int small) {
  int64_t bytes = n * size;
  if (small && bytes <= 4) {
    w_raw(w, (uint64_t)bytes << 16 | (uint64_t)type, 4);
    size_t start = w->n;
    for (int64_t k = 0; k < n; ++k) {
      uint64_t v = 0;
      memcpy(&v, (const uint8_t *)values + k * size, (size_t)size); /* little-endian host */
      w_raw(w, v, size);
    }
    while (w->n < start + 4) w->b[w->n++] = 0;
    return;
  }
  w_raw(w, (uint64_t)type, 4);
  w_raw(w, (uint64_t)bytes, 4);
  for (int64_t k = 0; k < n; ++k) {
    uint64_t v = 0;
    memcpy(&v, (const uint8_t *)values + k * size, (size_t)size);
    w_raw(w, v, size);
  }
  w_pad(w);
}

static void w_begin(mat_writer *w, int flags_class, int ndim, const int32_t *dims, const char *name,
                    int small) {
  w->open[w->depth++] = w->n;
  w_raw(w, MI_MATRIX, 4);
  w_raw(w, 0, 4);
  uint32_t flags[2] = {(uint32_t)flags_class, 0};
  w_elem(w, MI_UINT32, flags, 2, 4, 0);
  w_elem(w, MI_INT32, dims, ndim, 4, small);
  w_elem(w, MI_INT8, name, (int64_t)strlen(name), 1, small);
}

static void w_end(mat_writer *w) {
  size_t at = w->open[--w->depth], end = w->n;
  w->n = at + 4;
  w_raw(w, end - at - 8, 4);
  w->n = end;
}

/* A real 2-D matrix of n values of type `type` under class mclass. */
static void w_matrix(mat_writer *w, int flags_class, int32_t rows, int32_t cols, const char *name,
                     int type, const void *values, int size, int small) {
  int32_t dims[2] = {rows, cols};
  w_begin(w, flags_class, 2, dims, name, small);
  w_elem(w, type, values, (int64_t)rows * cols, size, small);
  w_end(w);
}

static char tmp_paths[8][128];
static int ntmp;

static const char *w_file(const mat_writer *w, size_t n) {
  char *p = tmp_paths[ntmp++ % 8];
  snprintf(p, 128, "/tmp/fmseg_test_mat_%ld_%d.mat", (long)getpid(), ntmp % 8);
  FILE *f = fopen(p, "wb");
  if (!f || fwrite(w->b, 1, n, f) != n) { perror(p); exit(1); }
  fclose(f);
  return p;
}

/* zlib (RFC 1950) of stored deflate blocks: no compressor needed. */
static size_t zlib_stored(const uint8_t *in, size_t n, uint8_t *out) {
  size_t o = 0;
  out[o++] = 0x78;
  out[o++] = 0x01;
  size_t at = 0;
  do {
    size_t len = n - at > 65535 ? 65535 : n - at;
    out[o++] = at + len == n;  /* BFINAL, BTYPE 00 */
    out[o++] = (uint8_t)len;
    out[o++] = (uint8_t)(len >> 8);
    out[o++] = (uint8_t)~len;
    out[o++] = (uint8_t)(~len >> 8);
    memcpy(out + o, in + at, len);
    o += len;
    at += len;
  } while (at < n);
  uint32_t a = 1, b = 0;
  for (size_t i = 0; i < n; ++i) {
    a = (a + in[i]) % 65521;
    b = (b + a) % 65521;
  }
  uint32_t adler = b << 16 | a;
  for (int i = 3; i >= 0; --i) out[o++] = (uint8_t)(adler >> (8 * i));
  return o;
}

/* The variables written from `from` on, replaced by one miCOMPRESSED element each holding them. */
static void w_compress_from(mat_writer *w, size_t from) {
  static uint8_t z[1 << 17];
  size_t zn = zlib_stored(w->b + from, w->n - from, z);
  w->n = from;
  w_raw(w, MI_COMPRESSED, 4);
  w_raw(w, zn, 4);
  memcpy(w->b + w->n, z, zn);
  w->n += zn;
}

/* ---- helpers ----------------------------------------------------------------- */

static int has(const char *msg, const char *part) { return strstr(msg, part) != NULL; }

/* The file refused, the message starting with its path and holding `part`. */
static int refused(const char *path, const char *part, const char *name) {
  fm_clear_error();
  fm_mat *m = fm_mat_open(path);
  const char *e = fm_last_error();
  int good = !m && strncmp(e, path, strlen(path)) == 0 && has(e, part);
  if (!ok(good, name)) {
    diag(e);
    diag(part);
  }
  fm_mat_close(m);
  return good;
}

static fm_mat *opened(const mat_writer *w, const char *name) {
  fm_mat *m = fm_mat_open(w_file(w, w->n));
  if (!ok(m != NULL, name)) diag(fm_last_error());
  return m;
}

/* ---- values ------------------------------------------------------------------ */

/* A 3x4 double matrix, column-major 0..11 / 4, in both byte orders, with
 * normal and small elements: t[i][j] is value i + 3 j. */
static void test_dense(void) {
  double v[12];
  for (int k = 0; k < 12; ++k) v[k] = k / 4.0 - 1;
  for (int big = 0; big < 2; ++big)
    for (int small = 0; small < 2; ++small) {
      mat_writer w;
      w_header(&w, big);
      w_matrix(&w, MX_DOUBLE, 3, 4, "x", MI_DOUBLE, v, 8, small);
      fm_mat *m = opened(&w, big ? "big-endian double matrix opens" : "little-endian double matrix opens");
      if (!m) continue;
      fm_tensor *t = fm_mat_tensor(m, fm_mat_var(m, 0));
      int good = t && t->type == FM_F32 && t->ndim == 2 && t->dims[0] == 3 && t->dims[1] == 4;
      for (int i = 0; good && i < 3; ++i)
        for (int j = 0; j < 4; ++j) good &= ((float *)t->data)[i * 4 + j] == (float)v[i + 3 * j];
      ok(good, big ? "  (3, 4) F32, row-major from MATLAB's columns (big-endian)"
                   : "  (3, 4) F32, row-major from MATLAB's columns (little-endian)");
      ok(fm_mat_nvars(m) == 1 && strcmp(fm_mat_name(m, fm_mat_var(m, 0)), "x") == 0 &&
         strcmp(fm_mat_class(m, 0), "double") == 0 && strcmp(fm_mat_storage(m, 0), "double") == 0 &&
         fm_mat_kind(m, 0) == FM_MAT_NUMERIC &&
         fm_mat_ndim(m, 0) == 2 && fm_mat_dim(m, 0, 1) == 4 && fm_mat_dim(m, 0, 2) == -1,
         small ? "  name, class, kind, dims (small elements)" : "  name, class, kind, dims");
      fm_tensor_release(t);
      fm_mat_close(m);
    }
}

/* MATLAB stores a double matrix of small integers as miUINT8 or miINT16;
 * the class decides the tensor's dtype. */
static void test_narrowed(void) {
  mat_writer w;
  w_header(&w, 1);
  uint8_t u[4] = {0, 7, 200, 255};
  int16_t s[3] = {-300, 0, 32767};
  uint8_t l[4] = {0, 5, 1, 0};
  w_matrix(&w, MX_DOUBLE, 2, 2, "u", MI_UINT8, u, 1, 1);
  w_matrix(&w, MX_DOUBLE, 1, 3, "s", MI_INT16, s, 2, 0);
  w_matrix(&w, MX_UINT8 | LOGICAL, 2, 2, "l", MI_UINT8, l, 1, 1);
  w_matrix(&w, MX_INT16, 1, 3, "i", MI_DOUBLE, (double[]){-2, 0, 30000}, 8, 0);
  fm_mat *m = opened(&w, "narrowed storage types open");
  if (!m) return;
  fm_tensor *tu = fm_mat_tensor(m, fm_mat_var(m, 0)), *ts = fm_mat_tensor(m, fm_mat_var(m, 1));
  fm_tensor *tl = fm_mat_tensor(m, fm_mat_var(m, 2)), *ti = fm_mat_tensor(m, fm_mat_var(m, 3));
  const float *fu = tu ? tu->data : NULL, *fs = ts ? ts->data : NULL;
  ok(fu && tu->type == FM_F32 && fu[0] == 0 && fu[1] == 200 && fu[2] == 7 && fu[3] == 255,
     "a double stored as miUINT8 is F32 of its values");
  ok(fs && fs[0] == -300 && fs[2] == 32767, "a double stored as miINT16 likewise");
  const uint8_t *bl = tl ? tl->data : NULL;
  ok(bl && tl->type == FM_U8 && bl[0] == 0 && bl[1] == 1 && bl[2] == 1 && bl[3] == 0 &&
     strcmp(fm_mat_class(m, fm_mat_var(m, 2)), "logical") == 0, "logical is U8 0/1 (any non-zero is 1)");
  const int32_t *ii = ti ? ti->data : NULL;
  ok(ii && ti->type == FM_I32 && ii[0] == -2 && ii[2] == 30000, "an int16 stored as miDOUBLE is I32");
  fm_tensor_release(tu); fm_tensor_release(ts); fm_tensor_release(tl); fm_tensor_release(ti);
  fm_mat_close(m);
}

static void test_values_refused(void) {
  mat_writer w;
  w_header(&w, 0);
  uint32_t big[2] = {1, 3000000000u};
  w_matrix(&w, MX_UINT32, 1, 2, "big", MI_UINT32, big, 4, 0);
  w_matrix(&w, MX_INT16, 1, 2, "half", MI_DOUBLE, (double[]){1, 1.5}, 8, 0);
  w_matrix(&w, MX_UINT8, 1, 1, "neg", MI_INT8, (int8_t[]){-1}, 1, 1);
  int32_t d2[2] = {1, 1};
  w_begin(&w, MX_DOUBLE | COMPLEX, 2, d2, "z", 0);
  w_elem(&w, MI_DOUBLE, (double[]){1}, 1, 8, 0);
  w_elem(&w, MI_DOUBLE, (double[]){2}, 1, 8, 0);
  w_end(&w);
  fm_mat *m = opened(&w, "a file of values tensors cannot hold opens");
  if (!m) return;
  const char *path = tmp_paths[(ntmp - 1) % 8];
  const char *want[4] = {"big: element 2 (3000000000) does not fit int32", "half: element 2 (1.5) does not fit int32",
                         "neg: element 1 (-1) does not fit uint8", "z: complex"};
  for (int i = 0; i < 4; ++i) {
    fm_clear_error();
    fm_tensor *t = fm_mat_tensor(m, fm_mat_var(m, i));
    const char *e = fm_last_error();
    if (!ok(!t && strncmp(e, path, strlen(path)) == 0 && has(e, want[i]), want[i])) diag(e);
    fm_tensor_release(t);
  }
  ok(fm_mat_is_complex(m, fm_mat_var(m, 3)) == 1 && fm_mat_is_complex(m, fm_mat_var(m, 0)) == 0, "is_complex");
  fm_mat_close(m);
}

/* (2, 3, 4) int16: t[i][j][k] is value i + 2 j + 6 k. */
static void test_nd(void) {
  mat_writer w;
  w_header(&w, 1);
  int16_t v[24];
  for (int k = 0; k < 24; ++k) v[k] = (int16_t)(k * 37 - 400);
  int32_t dims[3] = {2, 3, 4};
  w_begin(&w, MX_INT16, 3, dims, "cube", 0);
  w_elem(&w, MI_INT16, v, 24, 2, 0);
  w_end(&w);
  fm_mat *m = opened(&w, "a 3-D array opens");
  if (!m) return;
  fm_tensor *t = fm_mat_tensor(m, 0);
  int good = t && t->type == FM_I32 && t->ndim == 3 && t->dims[0] == 2 && t->dims[1] == 3 && t->dims[2] == 4;
  for (int i = 0; good && i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) good &= ((int32_t *)t->data)[(i * 3 + j) * 4 + k] == v[i + 2 * j + 6 * k];
  ok(good, "  (2, 3, 4) I32, row-major from MATLAB's column-major order");
  fm_tensor_release(t);
  fm_mat_close(m);
}

/* ---- sparse, char, containers ---------------------------------------------------- */

/* A 3x2 sparse matrix: jc = {0, 1, 3}, ir = {2, 0, 1}. */
static void w_sparse(mat_writer *w, const char *name, int flags_class, const int32_t *jc, const int32_t *ir,
                     int nnz, const double *pr, int32_t rows) {
  int32_t dims[2] = {rows, 2};
  w_begin(w, flags_class, 2, dims, name, 0);
  w_elem(w, MI_INT32, ir, nnz, 4, 0);
  w_elem(w, MI_INT32, jc, 3, 4, 0);
  w_elem(w, MI_DOUBLE, pr, nnz, 8, 0);
  w_end(w);
}

static void test_sparse(void) {
  const int32_t jc[3] = {0, 1, 3}, ir[3] = {2, 0, 1};
  const double pr[3] = {1.5, -2, 4};
  mat_writer w;
  w_header(&w, 0);
  w_sparse(&w, "sp", MX_SPARSE, jc, ir, 3, pr, 3);
  w_sparse(&w, "sl", MX_SPARSE | LOGICAL, jc, ir, 3, pr, 3);
  fm_mat *m = opened(&w, "sparse matrices open");
  if (m) {
    fm_tensor *t = fm_mat_tensor(m, 0), *l = fm_mat_tensor(m, 1);
    float want[6] = {0, -2, 0, 4, 1.5f, 0};  /* (3, 2): [2][0] = 1.5, [0][1] = -2, [1][1] = 4 */
    int good = t && t->type == FM_F32 && t->dims[0] == 3 && t->dims[1] == 2;
    for (int k = 0; good && k < 6; ++k) good &= ((float *)t->data)[k] == want[k];
    ok(good && fm_mat_kind(m, 0) == FM_MAT_SPARSE && strcmp(fm_mat_class(m, 0), "double") == 0,
       "sparse double -> dense (3, 2) F32");
    good = l && l->type == FM_U8;
    for (int k = 0; good && k < 6; ++k) good &= ((uint8_t *)l->data)[k] == (want[k] != 0);
    ok(good && strcmp(fm_mat_class(m, 1), "logical") == 0, "sparse logical -> dense U8");
    fm_tensor_release(t);
    fm_tensor_release(l);
    fm_mat_close(m);
  }
  struct { int32_t jc[3], ir[3]; int nnz; int32_t rows; const char *why; } bad[] = {
    {{0, 2, 1}, {0, 1, 2}, 3, 3, "column start jc[2] = 1 (after 2)"},
    {{1, 1, 3}, {0, 1, 2}, 3, 3, "column start jc[0] = 1"},
    {{0, 1, 3}, {0, 3, 1}, 3, 3, "row index ir[1] = 3 outside 3 rows"},
    {{0, 1, 3}, {0, 1, 0}, 2, 3, "3 stored values, but ir holds 2"},
    {{0, 1, 3}, {0, 1, 2}, 3, -1, "dimension 1 is -1"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; ++i) {
    w_header(&w, 1);
    w_sparse(&w, "sp", MX_SPARSE, bad[i].jc, bad[i].ir, bad[i].nnz, pr, bad[i].rows);
    refused(w_file(&w, w.n), bad[i].why, bad[i].why);
  }
  /* a sparse matrix's dense size is not bounded by the file: the pixel limit holds */
  w_header(&w, 0);
  w_sparse(&w, "tall", MX_SPARSE, jc, ir, 3, pr, 1000000);
  m = opened(&w, "a sparse 1000000x2 matrix opens");
  if (m) {
    int64_t before = fm_image_set_max_pixels(1999999);
    fm_clear_error();
    fm_tensor *t = fm_mat_tensor(m, 0);
    ok(!t && has(fm_last_error(), "tall: a sparse 1000000x2 matrix, over the pixel limit of 1999999"),
       "  refused as a dense tensor over the pixel limit");
    fm_image_set_max_pixels(2000000);
    t = fm_mat_tensor(m, 0);
    ok(t && ((float *)t->data)[4] == 1.5f, "  made within it");
    fm_tensor_release(t);
    fm_image_set_max_pixels(before);
    fm_mat_close(m);
  }
}

static void test_char(void) {
  mat_writer w;
  w_header(&w, 0);
  const char *utf8 = "a\xc3\xa9\xe2\x82\xac";  /* a, é, € */
  int32_t dims[2] = {1, 3};
  w_begin(&w, MX_CHAR, 2, dims, "s", 0);
  w_elem(&w, MI_UTF8, utf8, 6, 1, 0);
  w_end(&w);
  w_matrix(&w, MX_CHAR, 1, 2, "u", MI_UINT16, (uint16_t[]){0xD83D, 0xDE00}, 2, 1);
  fm_mat *m = opened(&w, "char arrays open");
  if (m) {
    fm_tensor *s = fm_mat_tensor(m, 0), *u = fm_mat_tensor(m, 1);
    const int32_t *c = s ? s->data : NULL, *cu = u ? u->data : NULL;
    ok(c && s->type == FM_I32 && s->dims[1] == 3 && c[0] == 'a' && c[1] == 0xE9 && c[2] == 0x20AC &&
       fm_mat_kind(m, 0) == FM_MAT_CHAR, "miUTF8 char -> I32 code points");
    ok(cu && cu[0] == 0xD83D && cu[1] == 0xDE00, "miUINT16 char -> I32 UTF-16 code units, as stored");
    fm_tensor_release(s);
    fm_tensor_release(u);
    fm_mat_close(m);
  }
  w_header(&w, 0);
  w_begin(&w, MX_CHAR, 2, dims, "s", 0);
  w_elem(&w, MI_UTF8, "a\xc3z", 3, 1, 0);
  w_end(&w);
  refused(w_file(&w, w.n), "(in s): real part: malformed UTF-8", "malformed UTF-8 refused");
  w_header(&w, 0);
  w_begin(&w, MX_CHAR, 2, dims, "s", 0);
  w_elem(&w, MI_UTF8, "a\xc3\xa9", 3, 1, 0);
  w_end(&w);
  refused(w_file(&w, w.n), "real part: 2 values, but the dimensions make 3", "too few characters refused");
}

/* s: a 1x2 struct of fields a, bb (names padded to 8); element 2's bb a
 * cell of an empty miMATRIX and a char, whose tag `corrupt` breaks. */
static void w_struct(mat_writer *w, int corrupt) {
  int32_t d12[2] = {1, 2}, d21[2] = {2, 1};
  w_begin(w, MX_STRUCT, 2, d12, "s", 0);
  int32_t len = 8;
  w_elem(w, MI_INT32, &len, 1, 4, 1);
  w_elem(w, MI_INT8, "a\0\0\0\0\0\0\0bb\0\0\0\0\0\0", 16, 1, 0);
  w_matrix(w, MX_DOUBLE, 1, 1, "", MI_DOUBLE, (double[]){1}, 8, 0);
  w_matrix(w, MX_UINT8, 1, 1, "", MI_UINT8, (uint8_t[]){2}, 1, 1);
  w_matrix(w, MX_DOUBLE, 1, 1, "", MI_DOUBLE, (double[]){3}, 8, 0);
  w_begin(w, MX_CELL, 2, d21, "", 0);
  w_raw(w, MI_MATRIX, 4);   /* an empty matrix: a tag of 0 bytes */
  w_raw(w, 0, 4);
  w_matrix(w, MX_CHAR, 1, 2, "", MI_UINT16, (uint16_t[]){'h', 'i'}, 2, 1);
  if (corrupt) {            /* the char's data, a small element: type 238 */
    w->n -= 8;
    w_raw(w, 4 << 16 | 238, 4);
    w->n += 4;
  }
  w_end(w);
  w_end(w);
}

/* Then an opaque value (flags and some bytes: no dimensions) and a double. */
static void w_tail(mat_writer *w) {
  w->open[w->depth++] = w->n;
  w_raw(w, MI_MATRIX, 4);
  w_raw(w, 0, 4);
  w_elem(w, MI_UINT32, (uint32_t[]){MX_OPAQUE, 0}, 2, 4, 0);
  w_elem(w, MI_INT8, "opaque!!", 8, 1, 0);
  w_end(w);
  w_matrix(w, MX_DOUBLE, 1, 1, "after", MI_DOUBLE, (double[]){42}, 8, 0);
}

static void build_struct(mat_writer *w, int big, int corrupt) {
  w_header(w, big);
  w_struct(w, corrupt);
  w_tail(w);
}

static void test_containers(void) {
  for (int big = 0; big < 2; ++big) {
    mat_writer w;
    build_struct(&w, big, 0);
    fm_mat *m = opened(&w, big ? "struct, cell, opaque (big-endian) open" : "struct, cell, opaque open");
    if (!m) continue;
    int64_t s = fm_mat_var(m, 0);
    ok(fm_mat_nvars(m) == 3 && fm_mat_kind(m, s) == FM_MAT_STRUCT && fm_mat_nfields(m, s) == 2 &&
       strcmp(fm_mat_field(m, s, 0), "a") == 0 && strcmp(fm_mat_field(m, s, 1), "bb") == 0 &&
       fm_mat_field(m, s, 2) == NULL && fm_mat_nchildren(m, s) == 4, "  struct: fields, NUL padding stripped, 2 x 2 children");
    int64_t kid[4];
    for (int i = 0; i < 4; ++i) kid[i] = fm_mat_child(m, s, i);
    ok(strcmp(fm_mat_name(m, kid[1]), "bb") == 0 && strcmp(fm_mat_class(m, kid[1]), "uint8") == 0 &&
       strcmp(fm_mat_name(m, kid[2]), "a") == 0 && fm_mat_kind(m, kid[3]) == FM_MAT_CELL,
       "  children element-major: s(1).a, s(1).bb, s(2).a, s(2).bb");
    int64_t e0 = fm_mat_child(m, kid[3], 0), e1 = fm_mat_child(m, kid[3], 1);
    fm_tensor *empty = fm_mat_tensor(m, e0);
    ok(empty && empty->ndim == 2 && empty->dims[0] == 0 && empty->dims[1] == 0 &&
       strcmp(fm_mat_class(m, e0), "double") == 0 && fm_mat_kind(m, e1) == FM_MAT_CHAR &&
       strcmp(fm_mat_name(m, e1), "") == 0, "  an miMATRIX of 0 bytes is a 0x0 double; cell elements are unnamed");
    fm_tensor_release(empty);
    int64_t op = fm_mat_var(m, 1), after = fm_mat_var(m, 2);
    fm_tensor *t = fm_mat_tensor(m, after);
    ok(fm_mat_kind(m, op) == FM_MAT_OTHER && strcmp(fm_mat_class(m, op), "opaque") == 0 && t &&
       ((float *)t->data)[0] == 42 && strcmp(fm_mat_name(m, after), "after") == 0,
       "  an opaque value is skipped whole; the variable after it reads");
    fm_tensor_release(t);
    fm_clear_error();
    ok(fm_mat_tensor(m, s) == NULL && has(fm_last_error(), "s: a struct, not a matrix"), "  a struct is not a tensor");
    ok(fm_mat_kind(m, 999) == -1 && has(fm_last_error(), "no node 999") && fm_mat_name(m, -1) == NULL &&
       fm_mat_child(m, s, 4) == -1 && fm_mat_var(m, 3) == -1 && fm_mat_dim(m, 999, 0) == -1,
       "  bad ids and indices give -1 / NULL with a message");
    fm_mat_close(m);
    build_struct(&w, big, 1);
    refused(w_file(&w, w.n), "(in s(2).bb{2}): real part: data type 238", "a bad element deep inside is named by its path");
  }
}

/* ---- compressed variables ---------------------------------------------------------- */

static void test_compressed(void) {
  for (int big = 0; big < 2; ++big) {
    mat_writer c;
    w_header(&c, big);
    w_struct(&c, 0);
    w_compress_from(&c, 128);  /* the struct compressed, the other two not */
    w_tail(&c);
    fm_mat *m = opened(&c, big ? "a compressed struct (big-endian) opens" : "a compressed struct opens");
    if (!m) continue;
    int64_t s = fm_mat_var(m, 0);
    ok(fm_mat_nvars(m) == 3 && fm_mat_nchildren(m, s) == 4 && strcmp(fm_mat_name(m, fm_mat_var(m, 2)), "after") == 0 &&
       strcmp(fm_mat_class(m, fm_mat_child(m, fm_mat_child(m, s, 3), 1)), "char") == 0,
       "  the same tree as uncompressed");
    fm_mat_close(m);
    /* a compressed variable whose inflated tag claims more than it holds */
    mat_writer x;
    w_header(&x, big);
    w_matrix(&x, MX_DOUBLE, 1, 1, "x", MI_DOUBLE, (double[]){1}, 8, 0);
    x.n -= 8;   /* drop the value: the matrix tag still counts it */
    w_compress_from(&x, 128);
    refused(w_file(&x, x.n), "offset 0 of the data inflated from the miCOMPRESSED element at offset 128",
            "a short inflated variable is refused, with both offsets");
    mat_writer y;
    w_header(&y, big);
    w_matrix(&y, MX_DOUBLE, 1, 1, "y", MI_DOUBLE, (double[]){1}, 8, 0);
    w_compress_from(&y, 128);
    y.b[139] ^= 0xFF;   /* the stored block's LEN, which no longer matches NLEN */
    refused(w_file(&y, y.n), "offset 128: miCOMPRESSED element", "corrupt zlib data is refused");
  }
}

/* ---- limits and malformed elements ---------------------------------------------------- */

static void nest(mat_writer *w, int levels) {
  w_header(w, 0);
  int32_t d11[2] = {1, 1};
  for (int i = 0; i < levels; ++i) w_begin(w, MX_CELL, 2, d11, i ? "" : "deep", 0);
  w_matrix(w, MX_DOUBLE, 1, 1, "", MI_DOUBLE, (double[]){7}, 8, 0);
  for (int i = 0; i < levels; ++i) w_end(w);
}

static void test_limits(void) {
  mat_writer w;
  nest(&w, 64);
  fm_mat *m = opened(&w, "cells nested 64 deep open");
  fm_mat_close(m);
  nest(&w, 70);
  refused(w_file(&w, w.n), "nested deeper than 64 levels", "cells nested 70 deep are refused");

  w_header(&w, 0);
  int32_t huge[2] = {2000000000, 2000000000};
  w_begin(&w, MX_CELL, 2, huge, "c", 0);
  w_end(&w);
  refused(w_file(&w, w.n), "4000000000000000000 elements, but 0 bytes are left", "a huge cell is refused before allocating");

  w_header(&w, 0);
  int32_t eight[8] = {2147483647, 2147483647, 2147483647, 2147483647, 2147483647, 2147483647, 2147483647, 2147483647};
  w_begin(&w, MX_DOUBLE, 8, eight, "o", 0);
  w_end(&w);
  refused(w_file(&w, w.n), "dimensions overflow 64 bits", "dimensions whose product overflows");

  w_header(&w, 0);
  int32_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  w_begin(&w, MX_DOUBLE, 9, nine, "n", 0);
  w_elem(&w, MI_DOUBLE, (double[]){1}, 1, 8, 0);
  w_end(&w);
  refused(w_file(&w, w.n), "9 dimensions (fmseg holds 1 to 8)", "more than 8 dimensions");

  struct { int flags_class, type; const char *why; } bad[] = {
    {40, MI_DOUBLE, "unknown array class 40"},
    {MX_DOUBLE, MI_MATRIX, "real part: data type 14 where a numeric type was expected"},
    {MX_DOUBLE, 8, "real part: data type 8"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; ++i) {
    w_header(&w, 0);
    w_matrix(&w, bad[i].flags_class, 1, 1, "x", bad[i].type, (double[]){1}, 8, 0);
    refused(w_file(&w, w.n), bad[i].why, bad[i].why);
  }
  w_header(&w, 0);
  w_matrix(&w, MX_DOUBLE, 1, 2, "x", MI_DOUBLE, (double[]){1, 2}, 8, 0);
  /* the real part's byte count (after the matrix tag, flags, dims, name): 13 */
  w.b[128 + 8 + 16 + 16 + 16 + 4] = 13;
  refused(w_file(&w, w.n), "(in x): real part: 13 bytes is not a whole number of 8-byte values", "a ragged real part");

  /* every cut of a file with one variable is refused, naming the file */
  w_header(&w, 1);
  w_struct(&w, 0);
  size_t full = w.n;
  int all = 1;
  for (size_t n = 0; n < full; ++n) {
    if (n == 128) continue;  /* the header alone: a file of no variables */
    const char *p = w_file(&w, n);
    fm_clear_error();
    fm_mat *t = fm_mat_open(p);
    all &= !t && strncmp(fm_last_error(), p, strlen(p)) == 0;
    fm_mat_close(t);
  }
  ok(all, "every cut of a one-variable file is refused, naming it");
  refused("/nonexistent/x.mat", "cannot open", "a missing file is named");
  fm_clear_error();
  ok(fm_mat_open(NULL) == NULL && has(fm_last_error(), "path is NULL"), "a NULL path");
  fm_mat_close(NULL);
}

int main(void) {
  test_dense();
  test_narrowed();
  test_values_refused();
  test_nd();
  test_sparse();
  test_char();
  test_containers();
  test_compressed();
  test_limits();
  for (int i = 0; i < 8; ++i) unlink(tmp_paths[i]);
  return done_testing();
}
