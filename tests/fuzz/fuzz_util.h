/* fuzz_util.h — helpers shared by the libFuzzer targets (tests/fuzz).
 *
 * A target that finds a contract broken calls fuzz_fail, which aborts: to
 * libFuzzer that is a crash, saved with its input like any other. */
#ifndef FMSEG_FUZZ_UTIL_H
#define FMSEG_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fmseg.h"

__attribute__((noreturn, unused)) static void fuzz_fail(const char *what) {
  fprintf(stderr, "fuzz: contract broken: %s (fm_last_error: \"%s\")\n", what, fm_last_error());
  abort();
}

#define FUZZ_CHECK(cond) \
  do { if (!(cond)) fuzz_fail(#cond); } while (0)

/* A failure must leave a message: errors are returned, never silent. */
__attribute__((unused)) static void fuzz_expect_error(void) {
  FUZZ_CHECK(fm_last_error()[0] != '\0');
  fm_clear_error();
}

/* One in-memory file (memfd) per process, reachable by a path for the
 * APIs that take one (/proc/self/fd/N reopens it); nothing touches disk. */
static int fuzz__fd = -1;
static char fuzz__path[64];

__attribute__((unused)) static const char *fuzz_memfile_path(void) {
  if (fuzz__fd < 0) {
    fuzz__fd = memfd_create("fmseg-fuzz", MFD_CLOEXEC);
    if (fuzz__fd < 0) { perror("memfd_create"); abort(); }
    snprintf(fuzz__path, sizeof fuzz__path, "/proc/self/fd/%d", fuzz__fd);
  }
  return fuzz__path;
}

/* Replaces the in-memory file's contents with bytes; returns its path. */
__attribute__((unused)) static const char *fuzz_memfile(const uint8_t *data, size_t size) {
  const char *path = fuzz_memfile_path();
  if (ftruncate(fuzz__fd, 0) != 0) { perror("ftruncate"); abort(); }
  size_t off = 0;
  while (off < size) {
    ssize_t w = pwrite(fuzz__fd, data + off, size - off, (off_t)off);
    if (w <= 0) { perror("pwrite"); abort(); }
    off += (size_t)w;
  }
  return path;
}

/* The in-memory file's contents as written through its path (malloc'd). */
__attribute__((unused)) static uint8_t *fuzz_memfile_read(size_t *size) {
  off_t end = lseek(fuzz__fd, 0, SEEK_END);
  if (end < 0) { perror("lseek"); abort(); }
  uint8_t *buf = malloc((size_t)end + 1);
  if (!buf || pread(fuzz__fd, buf, (size_t)end, 0) != end) abort();
  *size = (size_t)end;
  return buf;
}

/* A NUL-terminated copy of the input, for the string APIs. */
__attribute__((unused)) static char *fuzz_cstring(const uint8_t *data, size_t size) {
  char *s = malloc(size + 1);
  if (!s) abort();
  memcpy(s, data, size);
  s[size] = '\0';
  return s;
}

/* Reads the input as a little byte stream (zeros once it runs out). */
typedef struct fuzz_bytes { const uint8_t *p; size_t n; } fuzz_bytes;

__attribute__((unused)) static uint8_t fuzz_u8(fuzz_bytes *b) {
  if (!b->n) return 0;
  --b->n;
  return *b->p++;
}

__attribute__((unused)) static uint32_t fuzz_u16(fuzz_bytes *b) {
  uint32_t lo = fuzz_u8(b);
  return lo | (uint32_t)fuzz_u8(b) << 8;
}
#endif
