/* tensor.c — reference-counted N-d tensors over owned, borrowed or mmap'd
 * storage; views; copies with dtype conversion; argument checks. */
#include "internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* ---- storage ------------------------------------------------------------ */

fm_storage *fm__storage_wrap(void *base, size_t size, int32_t kind) {
  fm_storage *s = malloc(sizeof *s);
  if (!s) return fm__error_null("out of memory (storage header)");
  s->base = base;
  s->size = size;
  s->kind = kind;
  s->refcount = 1;
  return s;
}

fm_storage *fm__storage_new(size_t size, bool zero) {
  /* 64-byte alignment for SIMD. */
  size_t rounded = (size + 63) & ~(size_t)63;
  void *base = aligned_alloc(64, rounded ? rounded : 64);
  if (!base) return fm__error_null("out of memory: cannot allocate %zu bytes", size);
  if (zero) memset(base, 0, rounded ? rounded : 64);
  fm_storage *s = fm__storage_wrap(base, size, FM__OWNED);
  if (!s) free(base);
  return s;
}

void fm__storage_retain(fm_storage *s) {
  if (s) __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
}

void fm__storage_release(fm_storage *s) {
  if (!s || __atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  if (s->kind == FM__OWNED) free(s->base);
  else if (s->kind == FM__MMAP) munmap(s->base, s->size);
  free(s);
}

/* ---- tensors ------------------------------------------------------------ */

size_t fm_dtype_size(int32_t dtype) {
  switch (dtype) {
  case FM_F32: case FM_I32: return 4;
  case FM_U8: return 1;
  default: return 0;
  }
}

const char *fm_dtype_name(int32_t dtype) {
  switch (dtype) {
  case FM_F32: return "float32";
  case FM_I32: return "int32";
  case FM_U8: return "uint8";
  default: return "unknown";
  }
}

static bool fm__check_dims(int32_t dtype, int32_t ndim, const int64_t *shape, int64_t *numel) {
  if (fm_dtype_size(dtype) == 0) return fm__error("unknown dtype %d", (int)dtype), false;
  if (ndim < 0 || ndim > FM_MAX_DIMS)
    return fm__error("ndim %d out of range 0..%d", (int)ndim, FM_MAX_DIMS), false;
  int64_t n = 1;
  for (int32_t i = 0; i < ndim; ++i) {
    if (shape[i] < 0) return fm__error("negative size %" PRId64 " in dim %d", shape[i], (int)i), false;
    if (shape[i] && n > INT64_MAX / 8 / shape[i]) return fm__error("tensor too large"), false;
    n *= shape[i];
  }
  *numel = n;
  return true;
}

static void fm__set_contiguous_strides(fm_tensor *t) {
  int64_t s = 1;
  for (int32_t i = t->ndim - 1; i >= 0; --i) {
    t->strides[i] = s;
    s *= t->dims[i];
  }
}

static fm_tensor *fm__tensor_header(int32_t dtype, int32_t ndim, const int64_t *shape) {
  fm_tensor *t = calloc(1, sizeof *t);
  if (!t) return fm__error_null("out of memory (tensor header)");
  t->type = dtype;
  t->ndim = ndim;
  for (int32_t i = 0; i < ndim; ++i) t->dims[i] = shape[i];
  fm__set_contiguous_strides(t);
  t->refcount = 1;
  return t;
}

fm_tensor *fm__tensor_on(fm_storage *storage, size_t offset, int32_t dtype,
                         int32_t ndim, const int64_t *shape) {
  int64_t numel;
  if (!fm__check_dims(dtype, ndim, shape, &numel)) return NULL;
  if (offset + (size_t)numel * fm_dtype_size(dtype) > storage->size)
    return fm__error_null("tensor of %" PRId64 " elements does not fit its storage", numel);
  fm_tensor *t = fm__tensor_header(dtype, ndim, shape);
  if (!t) return NULL;
  t->storage = storage;
  fm__storage_retain(storage);
  t->data = (char *)storage->base + offset;
  t->readonly = storage->kind == FM__MMAP;
  return t;
}

static fm_tensor *fm__tensor_alloc(int32_t dtype, int32_t ndim, const int64_t *shape, bool zero) {
  int64_t numel;
  if (!fm__check_dims(dtype, ndim, shape, &numel)) return NULL;
  fm_storage *s = fm__storage_new((size_t)numel * fm_dtype_size(dtype), zero);
  if (!s) return NULL;
  fm_tensor *t = fm__tensor_on(s, 0, dtype, ndim, shape);
  fm__storage_release(s);
  return t;
}

fm_tensor *fm_tensor_new(int32_t dtype, int32_t ndim, const int64_t *shape) {
  return fm__tensor_alloc(dtype, ndim, shape, true);
}

fm_tensor *fm_tensor_empty(int32_t dtype, int32_t ndim, const int64_t *shape) {
  return fm__tensor_alloc(dtype, ndim, shape, false);
}

fm_tensor *fm_tensor_borrow(int32_t dtype, int32_t ndim, const int64_t *shape, void *data) {
  int64_t numel;
  if (!data) return fm__error_null("fm_tensor_borrow: data is NULL");
  if (!fm__check_dims(dtype, ndim, shape, &numel)) return NULL;
  fm_storage *s = fm__storage_wrap(data, (size_t)numel * fm_dtype_size(dtype), FM__BORROWED);
  if (!s) return NULL;
  fm_tensor *t = fm__tensor_on(s, 0, dtype, ndim, shape);
  fm__storage_release(s);
  return t;
}

fm_tensor *fm_tensor_retain(fm_tensor *t) {
  if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
  return t;
}

void fm_tensor_release(fm_tensor *t) {
  if (!t || __atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
  fm__storage_release(t->storage);
  free(t);
}

int64_t fm_tensor_numel(const fm_tensor *t) {
  int64_t n = 1;
  for (int32_t i = 0; i < t->ndim; ++i) n *= t->dims[i];
  return n;
}

int fm_tensor_is_contiguous(const fm_tensor *t) {
  int64_t s = 1;
  for (int32_t i = t->ndim - 1; i >= 0; --i) {
    if (t->dims[i] != 1 && t->strides[i] != s) return 0;
    s *= t->dims[i];
  }
  return 1;
}

/* ---- views -------------------------------------------------------------- */

fm_tensor *fm_tensor_view(const fm_tensor *t, int32_t ndim, const int64_t *shape,
                          const int64_t *stride, int64_t offset) {
  int64_t numel;
  if (!fm__check_dims(t->type, ndim, shape, &numel)) return NULL;
  /* The view must stay inside the storage: check its lowest and highest
   * element. */
  char *base = (char *)t->storage->base;
  int64_t start = ((char *)t->data - base) / (int64_t)fm_dtype_size(t->type) + offset;
  int64_t lo = start, hi = start;
  if (numel > 0) {
    for (int32_t i = 0; i < ndim; ++i) {
      int64_t span = (shape[i] - 1) * stride[i];
      if (span > 0) hi += span; else lo += span;
    }
    int64_t cap = (int64_t)(t->storage->size / fm_dtype_size(t->type));
    if (lo < 0 || hi >= cap) return fm__error_null("view reaches outside its storage");
  }
  fm_tensor *v = fm__tensor_header(t->type, ndim, shape);
  if (!v) return NULL;
  for (int32_t i = 0; i < ndim; ++i) v->strides[i] = stride[i];
  v->storage = t->storage;
  fm__storage_retain(t->storage);
  v->data = base + start * (int64_t)fm_dtype_size(t->type);
  v->readonly = t->readonly;
  return v;
}

fm_tensor *fm_tensor_reshape(const fm_tensor *t, int32_t ndim, const int64_t *shape) {
  int64_t numel;
  char a[128], b[128];
  if (!fm__check_dims(t->type, ndim, shape, &numel)) return NULL;
  if (numel != fm_tensor_numel(t)) {
    fm_tensor tmp = *t;
    tmp.ndim = ndim;
    for (int32_t i = 0; i < ndim; ++i) tmp.dims[i] = shape[i];
    return fm__error_null("reshape: %s has %" PRId64 " elements, %s has %" PRId64,
                          fm__shape_str(t, a, sizeof a), fm_tensor_numel(t),
                          fm__shape_str(&tmp, b, sizeof b), numel);
  }
  if (!fm_tensor_is_contiguous(t))
    return fm__error_null("reshape: tensor %s is not contiguous (call contiguous() first)",
                          fm__shape_str(t, a, sizeof a));
  int64_t stride[FM_MAX_DIMS], s = 1;
  for (int32_t i = ndim - 1; i >= 0; --i) {
    stride[i] = s;
    s *= shape[i];
  }
  return fm_tensor_view(t, ndim, shape, stride, 0);
}

fm_tensor *fm_tensor_permute(const fm_tensor *t, const int32_t *dims) {
  int64_t shape[FM_MAX_DIMS], stride[FM_MAX_DIMS];
  int seen[FM_MAX_DIMS] = {0};
  for (int32_t i = 0; i < t->ndim; ++i) {
    int32_t d = dims[i];
    if (d < 0 || d >= t->ndim || seen[d]++)
      return fm__error_null("permute: dims are not a permutation of 0..%d", (int)t->ndim - 1);
    shape[i] = t->dims[d];
    stride[i] = t->strides[d];
  }
  return fm_tensor_view(t, t->ndim, shape, stride, 0);
}

fm_tensor *fm_tensor_narrow(const fm_tensor *t, int32_t dim, int64_t start, int64_t length) {
  if (dim < 0 || dim >= t->ndim) return fm__error_null("narrow: dim %d out of range", (int)dim);
  if (start < 0 || length < 0 || start + length > t->dims[dim])
    return fm__error_null("narrow: [%" PRId64 ", %" PRId64 ") outside dim %d of size %" PRId64,
                          start, start + length, (int)dim, t->dims[dim]);
  int64_t shape[FM_MAX_DIMS];
  memcpy(shape, t->dims, sizeof shape);
  shape[dim] = length;
  return fm_tensor_view(t, t->ndim, shape, t->strides, length ? start * t->strides[dim] : 0);
}

fm_tensor *fm_tensor_select(const fm_tensor *t, int32_t dim, int64_t index) {
  if (dim < 0 || dim >= t->ndim) return fm__error_null("select: dim %d out of range", (int)dim);
  if (index < 0 || index >= t->dims[dim])
    return fm__error_null("select: index %" PRId64 " outside dim %d of size %" PRId64, index,
                          (int)dim, t->dims[dim]);
  int64_t shape[FM_MAX_DIMS], stride[FM_MAX_DIMS];
  int32_t n = 0;
  for (int32_t i = 0; i < t->ndim; ++i) {
    if (i == dim) continue;
    shape[n] = t->dims[i];
    stride[n++] = t->strides[i];
  }
  return fm_tensor_view(t, n, shape, stride, index * t->strides[dim]);
}

/* ---- copies --------------------------------------------------------------- */

static double fm__load(const void *p, int32_t dtype) {
  switch (dtype) {
  case FM_F32: return *(const float *)p;
  case FM_I32: return *(const int32_t *)p;
  default: return *(const uint8_t *)p;
  }
}

/* To I32 and U8: toward zero, saturated, NaN to 0. A plain C cast of NaN
 * or of a value out of the integer's range is undefined behaviour (UBSan's
 * float-cast-overflow; x86 stores INT32_MIN, so 1e10 became -2147483648). */
static void fm__store(void *p, int32_t dtype, double v) {
  switch (dtype) {
  case FM_F32: *(float *)p = (float)v; break;
  case FM_I32:
    *(int32_t *)p = isnan(v) ? 0 : v <= INT32_MIN ? INT32_MIN : v >= INT32_MAX ? INT32_MAX : (int32_t)v;
    break;
  default: *(uint8_t *)p = (uint8_t)(v > 0 ? (v < 255 ? v : 255) : 0); break;  /* NaN > 0 is false */
  }
}

/* Walks dst in row-major order, src by its own strides. */
int fm_tensor_copy_(fm_tensor *dst, const fm_tensor *src) {
  char a[128], b[128];
  if (!fm__check_writable(dst, "copy: dst")) return -1;
  if (fm_tensor_numel(dst) != fm_tensor_numel(src) || dst->ndim != src->ndim)
    return fm__error("copy: shapes differ: dst %s, src %s", fm__shape_str(dst, a, sizeof a),
                     fm__shape_str(src, b, sizeof b));
  for (int32_t i = 0; i < dst->ndim; ++i)
    if (dst->dims[i] != src->dims[i])
      return fm__error("copy: shapes differ: dst %s, src %s", fm__shape_str(dst, a, sizeof a),
                       fm__shape_str(src, b, sizeof b));
  int64_t n = fm_tensor_numel(dst);
  size_t ds = fm_dtype_size(dst->type), ss = fm_dtype_size(src->type);
  if (dst->type == src->type && fm_tensor_is_contiguous(dst) && fm_tensor_is_contiguous(src)) {
    memmove(dst->data, src->data, (size_t)n * ds);
    return 0;
  }
  if (n == 0) return 0;
  if (dst->ndim == 0) {
    if (dst->type == src->type) memcpy(dst->data, src->data, ds);
    else fm__store(dst->data, dst->type, fm__load(src->data, src->type));
    return 0;
  }
  /* Rows along the last dim, each located by its index over the outer
   * dims; rows are independent, so threads may share them. */
  int32_t nd = dst->ndim;
  int64_t len = dst->dims[nd - 1], rows = n / len;
  int64_t sstep = src->strides[nd - 1], dstep = dst->strides[nd - 1];
  bool same_f32 = dst->type == src->type && ds == 4;
  #pragma omp parallel for if (n > 262144) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, so = 0, doff = 0;
    for (int32_t i = nd - 2; i >= 0; --i) {
      int64_t k = rem % dst->dims[i];
      rem /= dst->dims[i];
      so += k * src->strides[i];
      doff += k * dst->strides[i];
    }
    if (same_f32) {
      const uint32_t *sp = (const uint32_t *)src->data + so;
      uint32_t *dp = (uint32_t *)dst->data + doff;
      for (int64_t j = 0; j < len; ++j) dp[j * dstep] = sp[j * sstep];
      continue;
    }
    for (int64_t j = 0; j < len; ++j) {
      const char *sp = (const char *)src->data + (so + j * sstep) * (int64_t)ss;
      char *dp = (char *)dst->data + (doff + j * dstep) * (int64_t)ds;
      if (dst->type == src->type) memcpy(dp, sp, ds);
      else fm__store(dp, dst->type, fm__load(sp, src->type));
    }
  }
  return 0;
}

fm_tensor *fm_tensor_to(const fm_tensor *t, int32_t dtype) {
  fm_tensor *c = fm_tensor_empty(dtype, t->ndim, t->dims);
  if (!c) return NULL;
  if (fm_tensor_copy_(c, t) != 0) {
    fm_tensor_release(c);
    return NULL;
  }
  return c;
}

fm_tensor *fm_tensor_clone(const fm_tensor *t) { return fm_tensor_to(t, t->type); }

fm_tensor *fm_tensor_contiguous(const fm_tensor *t) {
  if (fm_tensor_is_contiguous(t)) return fm_tensor_retain((fm_tensor *)t);
  return fm_tensor_clone(t);
}

int fm_tensor_fill_(fm_tensor *t, double value) {
  if (!fm__check_writable(t, "fill")) return -1;
  int64_t n = fm_tensor_numel(t);
  if (fm_tensor_is_contiguous(t)) {
    size_t es = fm_dtype_size(t->type);
    for (int64_t i = 0; i < n; ++i) fm__store((char *)t->data + i * (int64_t)es, t->type, value);
    return 0;
  }
  fm_tensor *c = fm_tensor_new(t->type, t->ndim, t->dims);
  if (!c) return -1;
  fm_tensor_fill_(c, value);
  int rc = fm_tensor_copy_(t, c);
  fm_tensor_release(c);
  return rc;
}

/* ---- checks ------------------------------------------------------------- */

const char *fm__shape_str(const fm_tensor *t, char *buf, size_t len) {
  size_t off = 0;
  off += (size_t)snprintf(buf + off, len - off, "[");
  for (int32_t i = 0; i < t->ndim && off < len; ++i)
    off += (size_t)snprintf(buf + off, len - off, i ? ", %" PRId64 : "%" PRId64, t->dims[i]);
  if (off < len) snprintf(buf + off, len - off, "]");
  return buf;
}

bool fm__check_f32(const fm_tensor *t, const char *what) {
  if (!t) return fm__error("%s is NULL", what), false;
  if (t->type != FM_F32)
    return fm__error("%s: expected float32, got %s", what, fm_dtype_name(t->type)), false;
  return true;
}

bool fm__check_contiguous(const fm_tensor *t, const char *what) {
  char a[128];
  if (!fm_tensor_is_contiguous(t))
    return fm__error("%s: tensor %s must be contiguous", what, fm__shape_str(t, a, sizeof a)), false;
  return true;
}

bool fm__check_ndim(const fm_tensor *t, int32_t ndim, const char *what) {
  char a[128];
  if (t->ndim != ndim)
    return fm__error("%s: expected %d dims, got %s", what, (int)ndim, fm__shape_str(t, a, sizeof a)), false;
  return true;
}

bool fm__check_shape(const fm_tensor *t, int32_t ndim, const int64_t *shape, const char *what) {
  fm_tensor want = {0};
  char a[128], b[128];
  want.ndim = ndim;
  for (int32_t i = 0; i < ndim; ++i) want.dims[i] = shape[i];
  bool same = t->ndim == ndim;
  for (int32_t i = 0; same && i < ndim; ++i) same = t->dims[i] == shape[i];
  if (!same)
    return fm__error("%s: got %s, expected %s", what, fm__shape_str(t, a, sizeof a),
                     fm__shape_str(&want, b, sizeof b)), false;
  return true;
}

bool fm__check_writable(const fm_tensor *t, const char *what) {
  if (!t) return fm__error("%s is NULL", what), false;
  if (t->readonly) return fm__error("%s: tensor is read-only (a view of a mapped file)", what), false;
  return true;
}

bool fm__check_input(const fm_tensor *t, const char *what) {
  return fm__check_f32(t, what) && fm__check_contiguous(t, what);
}

bool fm__check_output(const fm_tensor *t, const char *what) {
  return fm__check_input(t, what) && fm__check_writable(t, what);
}
