/* internal.h — private helpers shared by libfmseg's source files (fm__). */
#ifndef FMSEG_INTERNAL_H
#define FMSEG_INTERNAL_H

#include "fmseg.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

/* Storage: the bytes behind tensors. */
enum { FM__OWNED = 0, FM__BORROWED = 1, FM__MMAP = 2 };
struct fm_storage {
  void *base;
  size_t size;
  int32_t kind;
  int32_t refcount;
};

fm_storage *fm__storage_new(size_t size, bool zero);
fm_storage *fm__storage_wrap(void *base, size_t size, int32_t kind);
void fm__storage_retain(fm_storage *s);
void fm__storage_release(fm_storage *s);

/* A tensor over `storage` starting at byte `offset`, contiguous strides. */
fm_tensor *fm__tensor_on(fm_storage *storage, size_t offset, int32_t dtype,
                         int32_t ndim, const int64_t *shape);

/* Errors: printf-style, returns -1 so `return fm__error(...)` reads well. */
int fm__error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *fm__error_null(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A whole file into a malloc'd buffer of *n bytes (free it); NULL with
 * errno set (the file's, ENOMEM, EIO) when it cannot be read. */
uint8_t *fm__read_file(const char *path, size_t *n);
/* Closes f, opened for writing path; when the writes were not all good
 * (`good`, `err` the errno of the first failure, 0 if unknown) or fclose
 * fails, removes the file, never leaving a truncated one that looks
 * written, and returns the error "<what>: <path>: write failed (...)". */
int fm__close_written(FILE *f, const char *path, const char *what, bool good, int err);

/* "[2, 17, 48]" into buf */
const char *fm__shape_str(const fm_tensor *t, char *buf, size_t len);

/* Argument checks: each sets the error and returns false. `what` names the
 * argument in the message ("fm_linear: w"). */
bool fm__check_f32(const fm_tensor *t, const char *what);
bool fm__check_contiguous(const fm_tensor *t, const char *what);
bool fm__check_ndim(const fm_tensor *t, int32_t ndim, const char *what);
bool fm__check_shape(const fm_tensor *t, int32_t ndim, const int64_t *shape,
                     const char *what);
bool fm__check_writable(const fm_tensor *t, const char *what);
/* F32, contiguous, not NULL: the usual demand on kernel inputs */
bool fm__check_input(const fm_tensor *t, const char *what);
bool fm__check_output(const fm_tensor *t, const char *what);

static inline float *fm__f32(const fm_tensor *t) { return (float *)t->data; }

#endif
