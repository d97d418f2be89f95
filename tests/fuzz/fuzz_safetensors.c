/* fuzz_safetensors.c — fm_safetensors_open on arbitrary bytes (header
 * length, JSON header, dtypes, shapes, data_offsets, __metadata__), then
 * every accessor and fm_safetensors_get on each tensor it accepted.
 * Contract: a bad file is refused with a message; an accepted one answers
 * every query consistently and never reads outside the file. */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_memfile(data, size);
  fm_safetensors *st = fm_safetensors_open(path);
  if (!st) {
    fuzz_expect_error();
    return 0;
  }
  int64_t n = fm_safetensors_count(st);
  FUZZ_CHECK(n >= 0);
  const char *meta = fm_safetensors_metadata(st);
  FUZZ_CHECK(meta != NULL);
  FUZZ_CHECK(meta[0] == '\0' || meta[0] == '{');
  for (int64_t i = 0; i < n; ++i) {
    const char *name = fm_safetensors_name(st, i);
    FUZZ_CHECK(name != NULL);
    FUZZ_CHECK(fm_safetensors_find(st, name) == i);
    FUZZ_CHECK(fm_safetensors_dtype(st, i) != NULL);
    int32_t ndim = fm_safetensors_ndim(st, i);
    FUZZ_CHECK(ndim >= 0);
    for (int32_t d = 0; d < ndim; ++d) FUZZ_CHECK(fm_safetensors_dim(st, i, d) >= 0);
    FUZZ_CHECK(fm_safetensors_dim(st, i, ndim) == -1);
    fm_clear_error();
    fm_tensor *t = fm_safetensors_get(st, name);
    if (!t) {
      fuzz_expect_error();
      continue;
    }
    FUZZ_CHECK(t->ndim == ndim);
    int64_t numel = fm_tensor_numel(t);
    for (int32_t d = 0; d < ndim; ++d) FUZZ_CHECK(t->dims[d] == fm_safetensors_dim(st, i, d));
    /* touch every byte: ASan sees a read past the mapping or the buffer */
    size_t nbytes = (size_t)numel * fm_dtype_size(t->type);
    volatile uint8_t sink = 0;
    for (size_t k = 0; k < nbytes; ++k) sink ^= ((const uint8_t *)t->data)[k];
    (void)sink;
    fm_tensor_release(t);
  }
  FUZZ_CHECK(fm_safetensors_name(st, n) == NULL);
  fm_clear_error();
  FUZZ_CHECK(fm_safetensors_find(st, "\x01 no such tensor") == -1);
  fm_safetensors_close(st);
  return 0;
}
