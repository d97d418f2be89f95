/* error.c — the per-thread error message, version, thread count. */
#include "internal.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char fm__message[1024];

const char *fm_version(void) { return "0.1.0"; }

const char *fm_last_error(void) { return fm__message; }

void fm_clear_error(void) { fm__message[0] = '\0'; }

void fm_set_error_message(const char *msg) {
  snprintf(fm__message, sizeof fm__message, "%s", msg ? msg : "");
}

int fm__error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(fm__message, sizeof fm__message, fmt, ap);
  va_end(ap);
  return -1;
}

void *fm__error_null(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(fm__message, sizeof fm__message, fmt, ap);
  va_end(ap);
  return NULL;
}

/* OpenBLAS's OpenMP build and our loops share libgomp's pool, so one
 * setting governs both. */
int fm_set_threads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
  return n;
}

int fm_get_threads(void) { return omp_get_max_threads(); }

void fm_free(void *p) { free(p); }
