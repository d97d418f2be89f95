/* fuzz_matfile.c — fm_mat_open on arbitrary bytes (the MAT-file header, tags
 * and small elements in either byte order, miCOMPRESSED zlib streams,
 * array flags, dimensions, names, struct field names, cells, sparse
 * indices), then every node of the tree it accepted through every
 * accessor, and fm_mat_tensor of each matrix.
 * Contract: a bad file is refused with a message; an accepted one answers
 * consistently (children as many as the dimensions say, tensors of the
 * node's shape) and never reads outside its buffers. */
#include "fuzz_util.h"

static int64_t fuzz_numel(const fm_mat *m, int64_t node) {
  int64_t n = 1;
  for (int32_t d = 0; d < fm_mat_ndim(m, node); ++d) {
    int64_t v = fm_mat_dim(m, node, d);
    FUZZ_CHECK(v >= 0);
    if (__builtin_mul_overflow(n, v, &n)) return INT64_MAX;
  }
  return n;
}

static void fuzz_tensor(const fm_mat *m, int64_t node) {
  fm_clear_error();
  fm_tensor *t = fm_mat_tensor(m, node);
  if (!t) {
    fuzz_expect_error();
    return;
  }
  FUZZ_CHECK(t->ndim == fm_mat_ndim(m, node));
  for (int32_t d = 0; d < t->ndim; ++d) FUZZ_CHECK(t->dims[d] == fm_mat_dim(m, node, d));
  /* touch every byte: ASan sees a read past the buffer */
  size_t nbytes = (size_t)fm_tensor_numel(t) * fm_dtype_size(t->type);
  volatile uint8_t sink = 0;
  for (size_t k = 0; k < nbytes; ++k) sink ^= ((const uint8_t *)t->data)[k];
  (void)sink;
  fm_tensor_release(t);
}

static void fuzz_node(const fm_mat *m, int64_t node, int depth) {
  FUZZ_CHECK(depth <= 100);
  int32_t kind = fm_mat_kind(m, node);
  FUZZ_CHECK(kind >= FM_MAT_NUMERIC && kind <= FM_MAT_OTHER);
  FUZZ_CHECK(fm_mat_name(m, node) != NULL);
  FUZZ_CHECK(fm_mat_class(m, node) != NULL);
  FUZZ_CHECK(fm_mat_storage(m, node) != NULL);
  FUZZ_CHECK(fm_mat_is_complex(m, node) >= 0);
  int64_t nf = fm_mat_nfields(m, node), nk = fm_mat_nchildren(m, node);
  FUZZ_CHECK(nf >= 0 && nk >= 0);
  for (int64_t f = 0; f < nf; ++f) FUZZ_CHECK(fm_mat_field(m, node, f) != NULL);
  FUZZ_CHECK(fm_mat_field(m, node, nf) == NULL);
  int64_t numel = fuzz_numel(m, node);
  if (kind == FM_MAT_CELL) FUZZ_CHECK(nk == numel);
  if (kind == FM_MAT_STRUCT) FUZZ_CHECK(nk == numel * nf);
  if (kind != FM_MAT_CELL && kind != FM_MAT_STRUCT) FUZZ_CHECK(nk == 0);
  for (int64_t i = 0; i < nk; ++i) {
    int64_t child = fm_mat_child(m, node, i);
    FUZZ_CHECK(child > node);
    if (kind == FM_MAT_STRUCT) FUZZ_CHECK(strcmp(fm_mat_name(m, child), fm_mat_field(m, node, i % nf)) == 0);
    fuzz_node(m, child, depth + 1);
  }
  FUZZ_CHECK(fm_mat_child(m, node, nk) == -1);
  fm_clear_error();
  if (kind == FM_MAT_NUMERIC || kind == FM_MAT_CHAR || kind == FM_MAT_SPARSE) {
    fuzz_tensor(m, node);
  } else {
    FUZZ_CHECK(fm_mat_tensor(m, node) == NULL);
    fuzz_expect_error();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* a sparse matrix's dense size is held to the pixel limit; dense ones
   * are bounded by the input (8 KB here, inflating at most 1032 : 1) */
  fm_image_set_max_pixels(1 << 20);
  const char *path = fuzz_memfile(data, size);
  fm_mat *m = fm_mat_open(path);
  if (!m) {
    fuzz_expect_error();
    return 0;
  }
  int64_t n = fm_mat_nvars(m);
  FUZZ_CHECK(n >= 0);
  for (int64_t i = 0; i < n; ++i) fuzz_node(m, fm_mat_var(m, i), 0);
  fm_clear_error();
  FUZZ_CHECK(fm_mat_var(m, n) == -1);
  fuzz_expect_error();
  FUZZ_CHECK(fm_mat_kind(m, -1) == -1);
  fuzz_expect_error();
  fm_mat_close(m);
  return 0;
}
