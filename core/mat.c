/* mat.c — MATLAB MAT-files of level 5 (MATLAB 5 to 7.2; what
 * scipy.io.loadmat reads). SBD's annotations (inst/<id>.mat, cls/<id>.mat)
 * are such files.
 *
 * Layout (MathWorks, "MAT-File Format", matfile_format.pdf):
 *   a 128-byte header: 116 bytes of text, 8 of subsystem data offset, the
 *     version (u16 0x0100) and the endian indicator, "IM" in a
 *     little-endian file and "MI" in a big-endian one;
 *   then one data element per variable: an 8-byte tag (u32 type, u32 byte
 *     count) and its data. A variable is an miMATRIX, or an miCOMPRESSED
 *     element whose zlib stream inflates to one miMATRIX;
 *   an miMATRIX is a row of sub-elements, each padded to 8 bytes. A "small"
 *     sub-element packs count << 16 | type into its first u32 and up to 4
 *     bytes of data into the second. In order: array flags (u32 class and
 *     flags, u32 nzmax), dimensions (int32), name (int8), then by class
 *       numeric, char: the real part, then the imaginary one when the
 *         complex flag is set, column-major, in any numeric type (MATLAB
 *         narrows: a double matrix of small integers is stored as miUINT8);
 *       sparse: row indices ir, column starts jc (columns + 1), values pr
 *         [and pi], compressed sparse columns;
 *       cell: one miMATRIX per element;
 *       struct: the field-name length, the names (that many bytes each,
 *         NUL-padded), then one miMATRIX per field per element.
 *   An miMATRIX of zero bytes is an empty double matrix (as scipy reads it).
 *
 * fm_mat_open reads the whole file, inflates every compressed variable and
 * walks every element, checking each against the bytes that hold it, so a
 * truncated or corrupt file is refused at open with a message naming the
 * file, the offset and the variable; nothing later reads outside the
 * buffers. Values are only decoded by fm_mat_tensor. Objects, function
 * handles and opaque classes are kept as nodes of kind FM_MAT_OTHER, their
 * bytes counted and skipped (their layouts differ and nothing here needs
 * them). The bytes are read in the file's order, so either byte order
 * reads on any host. */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Data types of elements (the tag's type). */
enum {
  FM__MI_INT8 = 1, FM__MI_UINT8 = 2, FM__MI_INT16 = 3, FM__MI_UINT16 = 4, FM__MI_INT32 = 5,
  FM__MI_UINT32 = 6, FM__MI_SINGLE = 7, FM__MI_DOUBLE = 9, FM__MI_INT64 = 12, FM__MI_UINT64 = 13,
  FM__MI_MATRIX = 14, FM__MI_COMPRESSED = 15, FM__MI_UTF8 = 16, FM__MI_UTF16 = 17, FM__MI_UTF32 = 18
};

/* Array classes (the low byte of the array flags). */
enum {
  FM__MX_CELL = 1, FM__MX_STRUCT = 2, FM__MX_OBJECT = 3, FM__MX_CHAR = 4, FM__MX_SPARSE = 5,
  FM__MX_DOUBLE = 6, FM__MX_SINGLE = 7, FM__MX_INT8 = 8, FM__MX_UINT8 = 9, FM__MX_INT16 = 10,
  FM__MX_UINT16 = 11, FM__MX_INT32 = 12, FM__MX_UINT32 = 13, FM__MX_INT64 = 14, FM__MX_UINT64 = 15,
  FM__MX_FUNCTION = 16, FM__MX_OPAQUE = 17
};
static const char *const fm__mx_names[] = {
  "?", "cell", "struct", "object", "char", "sparse", "double", "single", "int8", "uint8",
  "int16", "uint16", "int32", "uint32", "int64", "uint64", "function", "opaque"};

/* Flags in the array flags' second byte. */
enum { FM__MX_COMPLEX = 0x08, FM__MX_LOGICAL = 0x02 };

/* Nesting deeper than this is refused: the walk recurses, and a hostile
 * file could nest a cell in a cell in 16 bytes a level. MATLAB data seldom
 * goes past a handful. */
enum { FM__MAT_MAX_DEPTH = 64 };

/* What n bytes of zlib data can inflate to: deflate's best case is a
 * 258-byte match in 2 bits, 1032 : 1. The reader's buffer grows until the
 * data fits and cannot tell a corrupt stream from one that needs more
 * room, so this bound is what stops it early; stb's int sizes cap it at
 * 2 GiB. */
static int64_t fm__mat_max_inflated(int64_t n) {
  return n < (INT32_MAX - 1024) / 1032 ? n * 1032 + 1024 : INT32_MAX;
}

/* ---- the parsed file ---------------------------------------------------- */

/* One data element: its type and where its bytes are. */
typedef struct fm__mat_data {
  const uint8_t *p;
  int64_t nbytes;
  uint32_t type;
} fm__mat_data;

typedef struct fm__mat_node {
  int64_t parent;            /* -1 for a variable */
  int64_t index;             /* element of the parent (cells, struct arrays) */
  char *name;                /* variable or field name; "" in a cell */
  int32_t kind;              /* fm_mat_node_kind */
  int32_t mclass;            /* FM__MX_* */
  bool logical, complex;
  int32_t ndim;
  int64_t dims[FM_MAX_DIMS];
  int64_t numel;
  fm__mat_data re, im;       /* numeric, char; sparse: re holds pr */
  fm__mat_data ir, jc;       /* sparse */
  int64_t nfields, field_len; /* struct */
  char *fields;              /* nfields names, field_len + 1 bytes apart */
  int64_t nkids, kids;       /* children: m->kids[kids .. kids + nkids) */
} fm__mat_node;

struct fm_mat {
  char *path;
  bool big;                  /* big-endian file */
  uint8_t **bufs;            /* the file, then each inflated variable */
  int64_t nbufs, bufs_cap;
  fm__mat_node *nodes;
  int64_t nnodes, nodes_cap;
  int64_t *kids;             /* children of every container, in blocks */
  int64_t nkids, kids_cap;
  int64_t *vars;             /* node ids of the variables, file order */
  int64_t nvars, vars_cap;
};

void fm_mat_close(fm_mat *m) {
  if (!m) return;
  for (int64_t i = 0; i < m->nnodes; ++i) {
    free(m->nodes[i].name);
    free(m->nodes[i].fields);
  }
  for (int64_t i = 0; i < m->nbufs; ++i) free(m->bufs[i]);
  free(m->bufs);
  free(m->nodes);
  free(m->kids);
  free(m->vars);
  free(m->path);
  free(m);
}

/* p (*cap elements of `size` bytes) grown to hold want >= 1: p itself
 * when it does, NULL when out of memory (p is then left as it was). */
static void *fm__mat_grow(void *p, int64_t *cap, int64_t want, size_t size) {
  if (want <= *cap) return p;
  int64_t n = *cap ? *cap : 16;
  while (n < want) n *= 2;
  void *grown = realloc(p, (size_t)n * size);
  if (grown) *cap = n;
  return grown;
}

/* ---- messages ------------------------------------------------------------ */

/* Where the parser reads: the file or one inflated variable, and for
 * messages the file offset of the miCOMPRESSED element it came from. */
typedef struct fm__mat_buf {
  const uint8_t *p;
  int64_t n;
  int64_t zoff;              /* -1: p is the file */
} fm__mat_buf;

/* "GTinst.Boundaries{2}", "s(3).name": MATLAB's own indexing, 1-based. */
static void fm__mat_path(const fm_mat *m, int64_t id, char *buf, size_t len) {
  const fm__mat_node *n = &m->nodes[id];
  if (n->parent < 0) {       /* a variable, by number until its name is read */
    if (n->name) snprintf(buf, len, "%s", n->name);
    else snprintf(buf, len, "#%" PRId64, n->index + 1);
    return;
  }
  fm__mat_path(m, n->parent, buf, len);
  size_t used = strlen(buf);
  const fm__mat_node *p = &m->nodes[n->parent];
  if (p->kind == FM_MAT_CELL)
    snprintf(buf + used, len - used, "{%" PRId64 "}", n->index + 1);
  else if (p->numel == 1)
    snprintf(buf + used, len - used, ".%s", n->name);
  else
    snprintf(buf + used, len - used, "(%" PRId64 ").%s", n->index + 1, n->name);
}

/* Sets "PATH: offset O[ of the data inflated from the miCOMPRESSED element
 * at offset Z][ (in GTinst.Boundaries{2})]: MSG" and returns -1. */
__attribute__((format(printf, 5, 6)))
static int fm__mat_fail(const fm_mat *m, const fm__mat_buf *b, int64_t at, int64_t node,
                        const char *fmt, ...) {
  char msg[512], where[160] = "", what[320] = "";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (b && b->zoff >= 0)
    snprintf(where, sizeof where, "offset %" PRId64 " of the data inflated from the miCOMPRESSED "
             "element at offset %" PRId64, at, b->zoff);
  else if (b)
    snprintf(where, sizeof where, "offset %" PRId64, at);
  if (node >= 0) {
    char path[256];
    fm__mat_path(m, node, path, sizeof path);
    snprintf(what, sizeof what, " (in %s)", path);
  }
  return fm__error("%s: %s%s: %s", m->path, where, what, msg);
}

/* ---- elements ------------------------------------------------------------ */

/* `size` bytes at p as an unsigned number, in the file's byte order. */
static uint64_t fm__mat_raw(const fm_mat *m, const uint8_t *p, int size) {
  uint64_t v = 0;
  for (int i = 0; i < size; ++i) v |= (uint64_t)p[m->big ? size - 1 - i : i] << (8 * i);
  return v;
}

/* Bytes per value of a numeric data type; 0 for the others. */
static int fm__mi_size(uint32_t type) {
  switch (type) {
  case FM__MI_INT8: case FM__MI_UINT8: case FM__MI_UTF8: return 1;
  case FM__MI_INT16: case FM__MI_UINT16: case FM__MI_UTF16: return 2;
  case FM__MI_INT32: case FM__MI_UINT32: case FM__MI_SINGLE: case FM__MI_UTF32: return 4;
  case FM__MI_DOUBLE: case FM__MI_INT64: case FM__MI_UINT64: return 8;
  default: return 0;
  }
}

static bool fm__mi_is_float(uint32_t type) { return type == FM__MI_SINGLE || type == FM__MI_DOUBLE; }

/* The data element at b[off, end): its tag read, its data bounded by end,
 * and *next where the following one starts (8-byte aligned, as inside a
 * matrix; padding missing at the very end of a matrix is forgiven). */
static int fm__mat_element(const fm_mat *m, const fm__mat_buf *b, int64_t off, int64_t end,
                           int64_t node, const char *what, fm__mat_data *d, int64_t *next) {
  if (end - off < 8)
    return fm__mat_fail(m, b, off, node, "%s: truncated (%" PRId64 " bytes left, a tag needs 8)",
                        what, end - off);
  uint32_t w = (uint32_t)fm__mat_raw(m, b->p + off, 4);
  if (w >> 16) {             /* small element: count << 16 | type, data in the next 4 bytes */
    d->type = w & 0xffff;
    d->nbytes = w >> 16;
    d->p = b->p + off + 4;
    if (d->nbytes > 4)
      return fm__mat_fail(m, b, off, node, "%s: a small element of %" PRId64 " bytes (at most 4)",
                          what, d->nbytes);
    *next = off + 8;
    return 0;
  }
  d->type = w;
  d->nbytes = (int64_t)fm__mat_raw(m, b->p + off + 4, 4);
  d->p = b->p + off + 8;
  if (d->nbytes > end - off - 8)
    return fm__mat_fail(m, b, off, node, "%s: %" PRId64 " bytes of data, but %" PRId64
                        " are left (truncated or corrupt?)", what, d->nbytes, end - off - 8);
  int64_t padded = off + 8 + ((d->nbytes + 7) & ~(int64_t)7);
  *next = padded < end ? padded : end;
  return 0;
}

/* As fm__mat_element, and the element must be of `type` (0: any numeric
 * type), holding whole values. */
static int fm__mat_expect(const fm_mat *m, const fm__mat_buf *b, int64_t off, int64_t end,
                          int64_t node, const char *what, uint32_t type, fm__mat_data *d,
                          int64_t *next) {
  if (fm__mat_element(m, b, off, end, node, what, d, next) != 0) return -1;
  int size = fm__mi_size(d->type);
  if (type ? d->type != type : size == 0)
    return fm__mat_fail(m, b, off, node, "%s: data type %" PRIu32 " where %s was expected",
                        what, d->type, type == FM__MI_MATRIX ? "miMATRIX (14)"
                        : type == FM__MI_INT32 ? "miINT32 (5)" : type == FM__MI_UINT32 ? "miUINT32 (6)"
                        : "a numeric type");
  if (size && d->nbytes % size)
    return fm__mat_fail(m, b, off, node, "%s: %" PRId64 " bytes is not a whole number of %d-byte values",
                        what, d->nbytes, size);
  return 0;
}

/* Value k of a numeric element as a double (64-bit integers round). */
static double fm__mat_real_at(const fm_mat *m, const fm__mat_data *d, int64_t k) {
  int size = fm__mi_size(d->type);
  uint64_t r = fm__mat_raw(m, d->p + k * size, size);
  switch (d->type) {
  case FM__MI_INT8: return (int8_t)r;
  case FM__MI_INT16: return (int16_t)r;
  case FM__MI_INT32: return (int32_t)r;
  case FM__MI_INT64: return (double)(int64_t)r;
  case FM__MI_SINGLE: { uint32_t u = (uint32_t)r; float f; memcpy(&f, &u, 4); return f; }
  case FM__MI_DOUBLE: { double v; memcpy(&v, &r, 8); return v; }
  default: return (double)r; /* the unsigned types */
  }
}

/* Value k of a numeric element as an integer: false when it is not one
 * (a fraction, NaN) or lies outside int64. */
static bool fm__mat_int_at(const fm_mat *m, const fm__mat_data *d, int64_t k, int64_t *out) {
  if (fm__mi_is_float(d->type)) {
    double v = fm__mat_real_at(m, d, k);
    if (!(v >= -9223372036854775808.0 && v < 9223372036854775808.0) || v != (double)(int64_t)v)
      return false;
    *out = (int64_t)v;
    return true;
  }
  int size = fm__mi_size(d->type);
  uint64_t r = fm__mat_raw(m, d->p + k * size, size);
  switch (d->type) {
  case FM__MI_INT8: *out = (int8_t)r; return true;
  case FM__MI_INT16: *out = (int16_t)r; return true;
  case FM__MI_INT32: *out = (int32_t)r; return true;
  case FM__MI_INT64: *out = (int64_t)r; return true;
  default: *out = (int64_t)r; return r <= (uint64_t)INT64_MAX;
  }
}

/* The UTF-8 character at p[*i] (of n bytes) into *cp, *i moved past it;
 * false for a malformed one. scipy writes char arrays as miUTF8. */
static bool fm__mat_utf8(const uint8_t *p, int64_t n, int64_t *i, int32_t *cp) {
  uint8_t c = p[(*i)++];
  int more = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
  if (more < 0 || n - *i < more) return false;
  int32_t v = more ? c & (0x3F >> more) : c;
  for (int k = 0; k < more; ++k) {
    if ((p[*i] & 0xC0) != 0x80) return false;
    v = v << 6 | (p[(*i)++] & 0x3F);
  }
  *cp = v;
  return true;
}

/* Characters in a UTF-8 element: -1 when it is malformed. */
static int64_t fm__mat_utf8_count(const fm__mat_data *d) {
  int64_t i = 0, count = 0;
  int32_t cp;
  while (i < d->nbytes) {
    if (!fm__mat_utf8(d->p, d->nbytes, &i, &cp)) return -1;
    ++count;
  }
  return count;
}

/* ---- matrices ------------------------------------------------------------ */

/* A new node (its place and name: strdup'd), the rest zero; -1 when out of memory. */
static int64_t fm__mat_add_node(fm_mat *m, int64_t parent, int64_t index, const char *name) {
  fm__mat_node *nodes = fm__mat_grow(m->nodes, &m->nodes_cap, m->nnodes + 1, sizeof *nodes);
  if (!nodes) return fm__error("%s: out of memory", m->path);
  m->nodes = nodes;
  fm__mat_node *n = &m->nodes[m->nnodes];
  memset(n, 0, sizeof *n);
  n->parent = parent;
  n->index = index;
  if (name && !(n->name = strdup(name))) return fm__error("%s: out of memory", m->path);
  return m->nnodes++;
}

static int fm__mat_matrix(fm_mat *m, const fm__mat_buf *b, int64_t at, int64_t end, int64_t id,
                          int depth);

/* The sub-element at *off, an miMATRIX, as child `slot` of container id
 * (element `index`, named `name`); *off moves past it. */
static int fm__mat_child(fm_mat *m, const fm__mat_buf *b, int64_t *off, int64_t end, int64_t id,
                         int64_t slot, int64_t index, const char *name, int depth) {
  char what[96];
  if (m->nodes[id].kind == FM_MAT_CELL) snprintf(what, sizeof what, "cell element %" PRId64, index + 1);
  else snprintf(what, sizeof what, "field %.40s of element %" PRId64, name, index + 1);
  fm__mat_data d;
  int64_t next;
  if (fm__mat_expect(m, b, *off, end, id, what, FM__MI_MATRIX, &d, &next) != 0) return -1;
  int64_t child = fm__mat_add_node(m, id, index, name);
  if (child < 0) return -1;
  m->kids[m->nodes[id].kids + slot] = child;
  int64_t data = d.p - b->p;
  if (fm__mat_matrix(m, b, data, data + d.nbytes, child, depth + 1) != 0) return -1;
  *off = next;
  return 0;
}

/* Room for n children of id, in one block of m->kids; each needs at least
 * a tag, so n is bounded by the bytes left before anything is allocated. */
static int fm__mat_kids(fm_mat *m, const fm__mat_buf *b, int64_t off, int64_t end, int64_t id,
                        int64_t n) {
  if (n > (end - off) / 8)
    return fm__mat_fail(m, b, off, id, "%" PRId64 " elements, but %" PRId64 " bytes are left for them",
                        n, end - off);
  m->nodes[id].kids = m->nkids;
  m->nodes[id].nkids = n;
  if (n == 0) return 0;
  int64_t *kids = fm__mat_grow(m->kids, &m->kids_cap, m->nkids + n, sizeof *kids);
  if (!kids) return fm__error("%s: out of memory", m->path);
  m->kids = kids;
  for (int64_t i = 0; i < n; ++i) m->kids[m->nkids + i] = -1;
  m->nkids += n;
  return 0;
}

static int fm__mat_cell(fm_mat *m, const fm__mat_buf *b, int64_t off, int64_t end, int64_t id,
                        int depth) {
  int64_t n = m->nodes[id].numel;
  if (fm__mat_kids(m, b, off, end, id, n) != 0) return -1;
  for (int64_t k = 0; k < n; ++k)
    if (fm__mat_child(m, b, &off, end, id, k, k, "", depth) != 0) return -1;
  return 0;
}

static int fm__mat_struct(fm_mat *m, const fm__mat_buf *b, int64_t off, int64_t end, int64_t id,
                          int depth) {
  fm__mat_data len, names;
  int64_t next;
  if (fm__mat_expect(m, b, off, end, id, "field name length", FM__MI_INT32, &len, &next) != 0) return -1;
  if (len.nbytes != 4)
    return fm__mat_fail(m, b, off, id, "field name length: %" PRId64 " bytes, not 4", len.nbytes);
  int64_t flen = (int32_t)fm__mat_raw(m, len.p, 4);
  off = next;
  if (fm__mat_element(m, b, off, end, id, "field names", &names, &next) != 0) return -1;
  if (fm__mi_size(names.type) != 1)
    return fm__mat_fail(m, b, off, id, "field names: data type %" PRIu32 " where miINT8 (1) was expected",
                        names.type);
  if (flen < 0 || (flen == 0 && names.nbytes) || (flen && names.nbytes % flen))
    return fm__mat_fail(m, b, off, id, "field names: %" PRId64 " bytes are not names of %" PRId64 " bytes",
                        names.nbytes, flen);
  off = next;
  fm__mat_node *n = &m->nodes[id];
  n->field_len = flen;
  n->nfields = flen ? names.nbytes / flen : 0;
  if (n->nfields) {
    if (!(n->fields = malloc((size_t)(n->nfields * (flen + 1))))) return fm__error("%s: out of memory", m->path);
    for (int64_t f = 0; f < n->nfields; ++f) {
      memcpy(n->fields + f * (flen + 1), names.p + f * flen, (size_t)flen);
      n->fields[f * (flen + 1) + flen] = '\0';
    }
  }
  int64_t nf = n->nfields, numel = n->numel;
  if (nf && numel > (end - off) / 8 / nf)
    return fm__mat_fail(m, b, off, id, "%" PRId64 " elements of %" PRId64 " fields, but %" PRId64
                        " bytes are left for them", numel, nf, end - off);
  if (fm__mat_kids(m, b, off, end, id, numel * nf) != 0) return -1;
  for (int64_t e = 0; e < numel; ++e)
    for (int64_t f = 0; f < nf; ++f) {
      /* the names are a block of their own: m->nodes may move, they do not */
      const char *field = m->nodes[id].fields + f * (flen + 1);
      if (fm__mat_child(m, b, &off, end, id, e * nf + f, e, field, depth) != 0) return -1;
    }
  return 0;
}

/* A real part or an imaginary one: numel values of any numeric type (of
 * a char array: numel characters, UTF-8 ones of any length). */
static int fm__mat_values(fm_mat *m, const fm__mat_buf *b, int64_t *off, int64_t end, int64_t id,
                          const char *what, fm__mat_data *d) {
  int64_t next, numel = m->nodes[id].numel;
  if (fm__mat_expect(m, b, *off, end, id, what, 0, d, &next) != 0) return -1;
  int64_t count = d->nbytes / fm__mi_size(d->type);
  if (m->nodes[id].kind == FM_MAT_CHAR && d->type == FM__MI_UTF8 && (count = fm__mat_utf8_count(d)) < 0)
    return fm__mat_fail(m, b, *off, id, "%s: malformed UTF-8", what);
  if (count != numel)
    return fm__mat_fail(m, b, *off, id, "%s: %" PRId64 " values, but the dimensions make %" PRId64,
                        what, count, numel);
  *off = next;
  return 0;
}

/* ir, jc, pr [pi]: jc starts at 0 and never decreases, its last entry (the
 * stored count) fits ir and pr, every stored row index is inside the matrix. */
static int fm__mat_sparse(fm_mat *m, const fm__mat_buf *b, int64_t off, int64_t end, int64_t id) {
  fm__mat_node *n = &m->nodes[id];
  if (n->ndim != 2) return fm__mat_fail(m, b, off, id, "a sparse matrix of %d dimensions", (int)n->ndim);
  int64_t rows = n->dims[0], cols = n->dims[1], next, start = off;
  fm__mat_data ir, jc, pr, pi = {0};
  if (fm__mat_expect(m, b, off, end, id, "row indices (ir)", 0, &ir, &next) != 0) return -1;
  off = next;
  if (fm__mat_expect(m, b, off, end, id, "column starts (jc)", 0, &jc, &next) != 0) return -1;
  off = next;
  if (fm__mat_expect(m, b, off, end, id, "values (pr)", 0, &pr, &next) != 0) return -1;
  off = next;
  if (n->complex && fm__mat_expect(m, b, off, end, id, "imaginary values (pi)", 0, &pi, &next) != 0) return -1;
  if (fm__mi_is_float(ir.type) || fm__mi_is_float(jc.type))
    return fm__mat_fail(m, b, start, id, "sparse indices stored as floating point");
  int64_t nir = ir.nbytes / fm__mi_size(ir.type), njc = jc.nbytes / fm__mi_size(jc.type);
  int64_t npr = pr.nbytes / fm__mi_size(pr.type);
  int64_t npi = n->complex ? pi.nbytes / fm__mi_size(pi.type) : npr;
  if (njc != cols + 1)
    return fm__mat_fail(m, b, start, id, "%" PRId64 " column starts (jc) for %" PRId64 " columns",
                        njc, cols);
  int64_t prev = 0, v = 0;
  for (int64_t j = 0; j <= cols; ++j) {
    if (!fm__mat_int_at(m, &jc, j, &v) || v < prev || (j == 0 && v != 0))
      return fm__mat_fail(m, b, start, id, "column start jc[%" PRId64 "] = %" PRId64 " (after %" PRId64 ")",
                          j, v, prev);
    prev = v;
  }
  if (prev > nir || prev > npr || prev > npi)
    return fm__mat_fail(m, b, start, id, "%" PRId64 " stored values, but ir holds %" PRId64 " and pr %" PRId64,
                        prev, nir, npr < npi ? npr : npi);
  for (int64_t k = 0; k < prev; ++k)
    if (!fm__mat_int_at(m, &ir, k, &v) || v < 0 || v >= rows)
      return fm__mat_fail(m, b, start, id, "row index ir[%" PRId64 "] = %" PRId64 " outside %" PRId64 " rows",
                          k, v, rows);
  n->ir = ir;
  n->jc = jc;
  n->re = pr;
  n->im = pi;
  return 0;
}

/* Array flags, dimensions, name; on return *off is past them. */
static int fm__mat_header(fm_mat *m, const fm__mat_buf *b, int64_t *off, int64_t end, int64_t id) {
  fm__mat_data flags, dims, name;
  int64_t next;
  if (fm__mat_expect(m, b, *off, end, id, "array flags", FM__MI_UINT32, &flags, &next) != 0) return -1;
  if (flags.nbytes != 8)
    return fm__mat_fail(m, b, *off, id, "array flags of %" PRId64 " bytes, not 8", flags.nbytes);
  uint32_t w = (uint32_t)fm__mat_raw(m, flags.p, 4);
  fm__mat_node *n = &m->nodes[id];
  n->mclass = (int32_t)(w & 0xff);
  n->logical = (w >> 8) & FM__MX_LOGICAL;
  n->complex = (w >> 8) & FM__MX_COMPLEX;
  if (n->mclass < FM__MX_CELL || n->mclass > FM__MX_OPAQUE)
    return fm__mat_fail(m, b, *off, id, "unknown array class %d", (int)n->mclass);
  *off = next;
  if (n->mclass == FM__MX_OPAQUE) {  /* no dimensions, no name (as scipy reads it) */
    n->kind = FM_MAT_OTHER;
    if (!n->name && !(n->name = strdup(""))) return fm__error("%s: out of memory", m->path);
    return 0;
  }
  if (fm__mat_expect(m, b, *off, end, id, "dimensions", FM__MI_INT32, &dims, &next) != 0) return -1;
  int64_t ndim = dims.nbytes / 4;
  if (ndim < 1 || ndim > FM_MAX_DIMS)
    return fm__mat_fail(m, b, *off, id, "%" PRId64 " dimensions (fmseg holds 1 to %d)", ndim, FM_MAX_DIMS);
  n->ndim = (int32_t)ndim;
  n->numel = 1;
  for (int32_t d = 0; d < n->ndim; ++d) {
    n->dims[d] = (int32_t)fm__mat_raw(m, dims.p + 4 * d, 4);
    if (n->dims[d] < 0)
      return fm__mat_fail(m, b, *off, id, "dimension %d is %" PRId64, (int)d + 1, n->dims[d]);
    if (__builtin_mul_overflow(n->numel, n->dims[d], &n->numel))
      return fm__mat_fail(m, b, *off, id, "dimensions overflow 64 bits");
  }
  *off = next;
  if (fm__mat_element(m, b, *off, end, id, "name", &name, &next) != 0) return -1;
  if (fm__mi_size(name.type) != 1)
    return fm__mat_fail(m, b, *off, id, "name: data type %" PRIu32 " where miINT8 (1) was expected", name.type);
  if (!n->name) {            /* a variable: fields and cells are named by their parent */
    if (!(n->name = strndup((const char *)name.p, (size_t)name.nbytes)))
      return fm__error("%s: out of memory", m->path);
  }
  *off = next;
  return 0;
}

/* The miMATRIX whose data is b[at, end) into node id. */
static int fm__mat_matrix(fm_mat *m, const fm__mat_buf *b, int64_t at, int64_t end, int64_t id,
                          int depth) {
  if (depth > FM__MAT_MAX_DEPTH)
    return fm__mat_fail(m, b, at, id, "nested deeper than %d levels", FM__MAT_MAX_DEPTH);
  fm__mat_node *n = &m->nodes[id];
  if (at == end) {           /* an empty matrix: 0x0 double */
    n->kind = FM_MAT_NUMERIC;
    n->mclass = FM__MX_DOUBLE;
    n->ndim = 2;
    n->re.type = FM__MI_DOUBLE;
    if (!n->name && !(n->name = strdup(""))) return fm__error("%s: out of memory", m->path);
    return 0;
  }
  int64_t off = at;
  if (fm__mat_header(m, b, &off, end, id) != 0) return -1;
  n = &m->nodes[id];
  switch (n->mclass) {
  case FM__MX_CELL: n->kind = FM_MAT_CELL; return fm__mat_cell(m, b, off, end, id, depth);
  case FM__MX_STRUCT: n->kind = FM_MAT_STRUCT; return fm__mat_struct(m, b, off, end, id, depth);
  case FM__MX_SPARSE: n->kind = FM_MAT_SPARSE; return fm__mat_sparse(m, b, off, end, id);
  case FM__MX_OBJECT: case FM__MX_FUNCTION: case FM__MX_OPAQUE:
    n->kind = FM_MAT_OTHER;  /* laid out otherwise and not needed here: skipped whole */
    return 0;
  default: break;
  }
  n->kind = n->mclass == FM__MX_CHAR ? FM_MAT_CHAR : FM_MAT_NUMERIC;
  fm__mat_data re, im = {0};
  if (fm__mat_values(m, b, &off, end, id, "real part", &re) != 0) return -1;
  if (m->nodes[id].complex && fm__mat_values(m, b, &off, end, id, "imaginary part", &im) != 0) return -1;
  m->nodes[id].re = re;
  m->nodes[id].im = im;
  return 0;
}

/* ---- the file ------------------------------------------------------------ */

/* Keeps buf (the file or an inflated variable) until fm_mat_close. */
static int fm__mat_keep(fm_mat *m, uint8_t *buf) {
  uint8_t **bufs = fm__mat_grow(m->bufs, &m->bufs_cap, m->nbufs + 1, sizeof *bufs);
  if (!bufs) {
    free(buf);
    return fm__error("%s: out of memory", m->path);
  }
  m->bufs = bufs;
  m->bufs[m->nbufs++] = buf;
  return 0;
}

static int fm__mat_header_block(fm_mat *m, const uint8_t *p, int64_t n) {
  if (n < 128)
    return fm__error("%s: %" PRId64 " bytes, too short for a MAT-file (its header is 128 bytes)",
                     m->path, n);
  if (p[126] == 'I' && p[127] == 'M') m->big = false;
  else if (p[126] == 'M' && p[127] == 'I') m->big = true;
  else
    return fm__error("%s: not a MAT-file of level 5 (MATLAB 5 to 7.2): no endian indicator "
                     "\"IM\" or \"MI\" at offset 126", m->path);
  uint32_t version = (uint32_t)fm__mat_raw(m, p + 124, 2);
  if (version == 0x0200)
    return fm__error("%s: a MATLAB 7.3 MAT-file (HDF5), which this reader, like "
                     "scipy.io.loadmat, does not read", m->path);
  if (version != 0x0100)
    return fm__error("%s: MAT-file version 0x%04" PRIx32 " at offset 124, not 0x0100", m->path, version);
  return 0;
}

/* A variable: the miMATRIX whose data is b[at, end). */
static int fm__mat_variable(fm_mat *m, const fm__mat_buf *b, int64_t at, int64_t end) {
  int64_t id = fm__mat_add_node(m, -1, m->nvars, NULL);
  if (id < 0) return -1;
  int64_t *vars = fm__mat_grow(m->vars, &m->vars_cap, m->nvars + 1, sizeof *vars);
  if (!vars) return fm__error("%s: out of memory", m->path);
  m->vars = vars;
  m->vars[m->nvars++] = id;
  return fm__mat_matrix(m, b, at, end, id, 0);
}

/* An miCOMPRESSED element's data, b[at, at + nbytes): inflated, it is one
 * miMATRIX element. */
static int fm__mat_compressed(fm_mat *m, const fm__mat_buf *file, int64_t off, int64_t nbytes) {
  if (nbytes == 0) return fm__mat_fail(m, file, off, -1, "an empty miCOMPRESSED element");
  int64_t len = 0;
  uint8_t *z = fm_zlib_inflate(file->p + off + 8, nbytes, fm__mat_max_inflated(nbytes), &len);
  if (!z) {
    char why[512];
    snprintf(why, sizeof why, "%s", fm_last_error());
    return fm__mat_fail(m, file, off, -1, "miCOMPRESSED element of %" PRId64 " bytes: %s", nbytes, why);
  }
  if (fm__mat_keep(m, z) != 0) return -1;
  fm__mat_buf b = {z, len, off};
  fm__mat_data d;
  int64_t next;
  if (fm__mat_expect(m, &b, 0, len, -1, "compressed variable", FM__MI_MATRIX, &d, &next) != 0) return -1;
  return fm__mat_variable(m, &b, 8, 8 + d.nbytes);
}

/* Variables follow the header back to back: the next tag is right after
 * an element's data (no padding at this level, as scipy reads them). */
static int fm__mat_variables(fm_mat *m, const uint8_t *p, int64_t n) {
  fm__mat_buf file = {p, n, -1};
  for (int64_t off = 128; off < n;) {
    if (n - off < 8)
      return fm__mat_fail(m, &file, off, -1, "%" PRId64 " stray bytes after the last variable "
                          "(a tag needs 8; truncated?)", n - off);
    uint32_t type = (uint32_t)fm__mat_raw(m, p + off, 4);
    int64_t nbytes = (int64_t)fm__mat_raw(m, p + off + 4, 4);
    if (nbytes > n - off - 8)
      return fm__mat_fail(m, &file, off, -1, "a variable of %" PRId64 " bytes, but the file has %" PRId64
                          " left (truncated?)", nbytes, n - off - 8);
    int rc;
    if (type == FM__MI_MATRIX) rc = fm__mat_variable(m, &file, off + 8, off + 8 + nbytes);
    else if (type == FM__MI_COMPRESSED) rc = fm__mat_compressed(m, &file, off, nbytes);
    else
      rc = fm__mat_fail(m, &file, off, -1, "data type %" PRIu32 " where a variable (miMATRIX 14 or "
                        "miCOMPRESSED 15) was expected", type);
    if (rc != 0) return -1;
    off += 8 + nbytes;
  }
  return 0;
}

fm_mat *fm_mat_open(const char *path) {
  if (!path) return fm__error_null("fm_mat_open: path is NULL");
  fm_mat *m = calloc(1, sizeof *m);
  if (!m || !(m->path = strdup(path))) {
    free(m);
    return fm__error_null("%s: out of memory", path);
  }
  size_t len = 0;
  uint8_t *p = fm__read_file(path, &len);
  if (!p) {
    fm__error("%s: cannot open (%s)", path, strerror(errno));
    fm_mat_close(m);
    return NULL;
  }
  int64_t n = (int64_t)len;
  if (fm__mat_keep(m, p) != 0 || fm__mat_header_block(m, p, n) != 0 ||
      fm__mat_variables(m, p, n) != 0) {
    fm_mat_close(m);
    return NULL;
  }
  return m;
}

/* ---- queries ------------------------------------------------------------- */

static const fm__mat_node *fm__mat_get(const fm_mat *m, int64_t id, const char *fn) {
  if (!m) return fm__error_null("%s: no file", fn);
  if (id < 0 || id >= m->nnodes)
    return fm__error_null("%s: %s: no node %" PRId64 " (%" PRId64 " in the file)", fn, m->path, id, m->nnodes);
  return &m->nodes[id];
}

int64_t fm_mat_nvars(const fm_mat *m) { return m ? m->nvars : 0; }

int64_t fm_mat_var(const fm_mat *m, int64_t i) {
  if (!m || i < 0 || i >= m->nvars) return fm__error("fm_mat_var: no variable %" PRId64, i), -1;
  return m->vars[i];
}

int32_t fm_mat_kind(const fm_mat *m, int64_t id) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_kind");
  return n ? n->kind : -1;
}

const char *fm_mat_name(const fm_mat *m, int64_t id) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_name");
  return n ? n->name : NULL;
}

const char *fm_mat_class(const fm_mat *m, int64_t id) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_class");
  if (!n) return NULL;
  if (n->logical) return "logical";
  if (n->kind == FM_MAT_SPARSE) return "double";
  return fm__mx_names[n->mclass];
}

const char *fm_mat_storage(const fm_mat *m, int64_t id) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_storage");
  if (!n) return NULL;
  if (n->kind != FM_MAT_NUMERIC && n->kind != FM_MAT_CHAR) return "";
  switch (n->re.type) {
  case FM__MI_INT8: return "int8";
  case FM__MI_UINT8: return "uint8";
  case FM__MI_INT16: return "int16";
  case FM__MI_UINT16: return "uint16";
  case FM__MI_INT32: return "int32";
  case FM__MI_UINT32: return "uint32";
  case FM__MI_SINGLE: return "single";
  case FM__MI_DOUBLE: return "double";
  case FM__MI_INT64: return "int64";
  case FM__MI_UINT64: return "uint64";
  default: return "";   /* an empty matrix, or a char array's UTF-8/16/32 */
  }
}

int32_t fm_mat_ndim(const fm_mat *m, int64_t id) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_ndim");
  return n ? n->ndim : -1;
}

int64_t fm_mat_dim(const fm_mat *m, int64_t id, int32_t d) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_dim");
  return n && d >= 0 && d < n->ndim ? n->dims[d] : -1;
}

int32_t fm_mat_is_complex(const fm_mat *m, int64_t id) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_is_complex");
  return n ? n->complex : -1;
}

int64_t fm_mat_nfields(const fm_mat *m, int64_t id) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_nfields");
  return n ? n->nfields : -1;
}

const char *fm_mat_field(const fm_mat *m, int64_t id, int64_t f) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_field");
  if (!n || f < 0 || f >= n->nfields) return NULL;
  return n->fields + f * (n->field_len + 1);
}

int64_t fm_mat_nchildren(const fm_mat *m, int64_t id) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_nchildren");
  return n ? n->nkids : -1;
}

int64_t fm_mat_child(const fm_mat *m, int64_t id, int64_t i) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_child");
  if (!n || i < 0 || i >= n->nkids) return -1;
  return m->kids[n->kids + i];
}

/* ---- values ------------------------------------------------------------- */

/* What a matrix's values become: uint8 and logical stay bytes, floats are
 * float32, the other integers (and char's UTF-16 code units) int32. */
static int32_t fm__mat_dtype(const fm__mat_node *n) {
  if (n->logical || n->mclass == FM__MX_UINT8) return FM_U8;
  if (n->mclass == FM__MX_DOUBLE || n->mclass == FM__MX_SINGLE || n->mclass == FM__MX_SPARSE) return FM_F32;
  return FM_I32;
}

/* Value k of d into out[k] as dtype: doubles round to the nearest float32
 * (IEEE conversion: beyond float's range, infinity), logical is v != 0,
 * integers must fit the target. */
static int fm__mat_store(const fm_mat *m, int64_t id, const fm__mat_data *d, int64_t k,
                         fm_tensor *out, bool logical) {
  char path[256];
  int64_t v;
  if (out->type == FM_F32) {
    ((float *)out->data)[k] = (float)fm__mat_real_at(m, d, k);
    return 0;
  }
  if (logical) {
    ((uint8_t *)out->data)[k] = fm__mat_real_at(m, d, k) != 0;
    return 0;
  }
  int64_t lo = out->type == FM_U8 ? 0 : INT32_MIN, hi = out->type == FM_U8 ? 255 : INT32_MAX;
  if (!fm__mat_int_at(m, d, k, &v) || v < lo || v > hi) {
    fm__mat_path(m, id, path, sizeof path);
    return fm__error("%s: %s: element %" PRId64 " (%.17g) does not fit %s", m->path, path, k + 1,
                     fm__mat_real_at(m, d, k), fm_dtype_name(out->type));
  }
  if (out->type == FM_U8) ((uint8_t *)out->data)[k] = (uint8_t)v;
  else ((int32_t *)out->data)[k] = (int32_t)v;
  return 0;
}

/* MATLAB's column-major values sit in `col` as a row-major tensor of the
 * dimensions reversed; reversing its axes and copying gives the row-major
 * tensor of MATLAB's dimensions (what numpy's arrays from scipy hold). */
static fm_tensor *fm__mat_row_major(fm_tensor *col) {
  int32_t perm[FM_MAX_DIMS];
  for (int32_t d = 0; d < col->ndim; ++d) perm[d] = col->ndim - 1 - d;
  fm_tensor *view = fm_tensor_permute(col, perm);
  fm_tensor_release(col);
  if (!view) return NULL;
  fm_tensor *out = fm_tensor_clone(view);
  fm_tensor_release(view);
  return out;
}

/* Sparse values into the zeroed col (columns, rows): repeated entries add
 * (logical: or), as scipy's toarray does. */
static void fm__mat_scatter(const fm_mat *m, const fm__mat_node *n, fm_tensor *col) {
  int64_t rows = n->dims[0], start, stop, i;
  for (int64_t j = 0; j < n->dims[1]; ++j) {
    fm__mat_int_at(m, &n->jc, j, &start);   /* checked at open */
    fm__mat_int_at(m, &n->jc, j + 1, &stop);
    for (int64_t k = start; k < stop; ++k) {
      fm__mat_int_at(m, &n->ir, k, &i);
      double v = fm__mat_real_at(m, &n->re, k);
      if (col->type == FM_U8) ((uint8_t *)col->data)[j * rows + i] |= v != 0;
      else ((float *)col->data)[j * rows + i] += (float)v;
    }
  }
}

fm_tensor *fm_mat_tensor(const fm_mat *m, int64_t id) {
  const fm__mat_node *n = fm__mat_get(m, id, "fm_mat_tensor");
  if (!n) return NULL;
  char path[256];
  fm__mat_path(m, id, path, sizeof path);
  if (n->kind != FM_MAT_NUMERIC && n->kind != FM_MAT_CHAR && n->kind != FM_MAT_SPARSE)
    return fm__error_null("%s: %s: a %s, not a matrix", m->path, path, fm__mx_names[n->mclass]);
  if (n->complex)
    return fm__error_null("%s: %s: complex, and fmseg tensors are real", m->path, path);
  /* A dense matrix's values are in the file; a sparse one's dense size is
   * not bounded by it, so it is held to the images' pixel limit. */
  int64_t limit = fm_image_set_max_pixels(0);
  if (n->kind == FM_MAT_SPARSE && n->numel > limit)
    return fm__error_null("%s: %s: a sparse %" PRId64 "x%" PRId64 " matrix, over the pixel limit of %" PRId64
                          " as a dense tensor (FMSEG_MAX_IMAGE_PIXELS)", m->path, path, n->dims[0], n->dims[1], limit);
  int64_t rev[FM_MAX_DIMS];
  for (int32_t d = 0; d < n->ndim; ++d) rev[d] = n->dims[n->ndim - 1 - d];
  fm_tensor *col = fm_tensor_new(fm__mat_dtype(n), n->ndim, rev);
  if (!col) {
    char why[512];
    snprintf(why, sizeof why, "%s", fm_last_error());
    return fm__error_null("%s: %s: %s", m->path, path, why);
  }
  if (n->kind == FM_MAT_SPARSE) {
    fm__mat_scatter(m, n, col);
  } else if (n->kind == FM_MAT_CHAR && n->re.type == FM__MI_UTF8) {  /* counted and checked at open */
    int64_t i = 0;
    for (int64_t k = 0; k < n->numel; ++k) fm__mat_utf8(n->re.p, n->re.nbytes, &i, (int32_t *)col->data + k);
  } else {
    for (int64_t k = 0; k < n->numel; ++k)
      if (fm__mat_store(m, id, &n->re, k, col, n->logical) != 0) {
        fm_tensor_release(col);
        return NULL;
      }
  }
  return fm__mat_row_major(col);
}
