/* fault_shim.c — an LD_PRELOAD library for tests: a disk that fills up.
 *
 *   FMSEG_FAULT_DIR=DIR FMSEG_FAULT_BYTES=N LD_PRELOAD=build/tests/fault_shim.so ./fmseg ...
 *
 * Files opened for writing under DIR share a budget of N bytes; once it is
 * spent, every further write to them fails with ENOSPC, as on a full
 * filesystem (nothing else is touched: stdout, reads, other paths). Both
 * stdio (what Lua's io and our C writers use) and write(2) are covered. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* RTLD_NEXT */
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_TRACKED = 1024 };
static FILE *tracked_files[MAX_TRACKED];
static int tracked_fds[MAX_TRACKED];
static long long budget = -1;   /* bytes left; -1: not read yet */

static const char *fault_dir(void) {
  const char *d = getenv("FMSEG_FAULT_DIR");
  return d && *d ? d : NULL;
}

static int under_dir(const char *path) {
  const char *d = fault_dir();
  return d && path && strncmp(path, d, strlen(d)) == 0;
}

static int writing(const char *mode) { return mode && (strchr(mode, 'w') || strchr(mode, 'a')); }

static long long *left(void) {
  if (budget < 0) {
    const char *b = getenv("FMSEG_FAULT_BYTES");
    budget = b ? atoll(b) : 0;
  }
  return &budget;
}

/* n bytes may go through, or fewer once the budget runs out */
static size_t allow(size_t n) {
  long long *b = left();
  size_t ok = (long long)n <= *b ? n : (size_t)(*b > 0 ? *b : 0);
  *b -= (long long)ok;
  return ok;
}

static int is_tracked_file(FILE *f) {
  for (int i = 0; i < MAX_TRACKED; ++i) if (tracked_files[i] == f) return 1;
  return 0;
}

static void track_file(FILE *f, int on) {
  for (int i = 0; i < MAX_TRACKED; ++i) {
    if (on && !tracked_files[i]) { tracked_files[i] = f; return; }
    if (!on && tracked_files[i] == f) { tracked_files[i] = NULL; return; }
  }
}

static int is_tracked_fd(int fd) {
  for (int i = 0; i < MAX_TRACKED; ++i) if (tracked_fds[i] == fd + 1) return 1;
  return 0;
}

static void track_fd(int fd, int on) {
  for (int i = 0; i < MAX_TRACKED; ++i) {
    if (on && !tracked_fds[i]) { tracked_fds[i] = fd + 1; return; }
    if (!on && tracked_fds[i] == fd + 1) { tracked_fds[i] = 0; return; }
  }
}

typedef FILE *(*fopen_fn)(const char *, const char *);
typedef size_t (*fwrite_fn)(const void *, size_t, size_t, FILE *);
typedef int (*fclose_fn)(FILE *);
typedef int (*open_fn)(const char *, int, ...);
typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef int (*close_fn)(int);

/* the libc function this one stands in front of */
#define REAL(name) static name##_fn real_##name; if (!real_##name) real_##name = (name##_fn)dlsym(RTLD_NEXT, #name)

FILE *fopen(const char *path, const char *mode) {
  REAL(fopen);
  FILE *f = real_fopen(path, mode);
  if (f && writing(mode) && under_dir(path)) track_file(f, 1);
  return f;
}

FILE *fopen64(const char *path, const char *mode) { return fopen(path, mode); }

size_t fwrite(const void *p, size_t size, size_t n, FILE *f) {
  REAL(fwrite);
  if (!is_tracked_file(f) || size == 0) return real_fwrite(p, size, n, f);
  size_t ok = allow(size * n) / size;
  size_t done = ok ? real_fwrite(p, size, ok, f) : 0;
  if (done < n) errno = ENOSPC;
  return done;
}

int fputs(const char *s, FILE *f) {
  return fwrite(s, 1, strlen(s), f) == strlen(s) ? 1 : EOF;
}

int fclose(FILE *f) {
  REAL(fclose);
  track_file(f, 0);
  return real_fclose(f);
}

int open(const char *path, int flags, ...) {
  REAL(open);
  va_list ap;
  va_start(ap, flags);
  int mode = (flags & O_CREAT) ? va_arg(ap, int) : 0;
  va_end(ap);
  int fd = real_open(path, flags, mode);
  if (fd >= 0 && (flags & (O_WRONLY | O_RDWR)) && under_dir(path)) track_fd(fd, 1);
  return fd;
}

int open64(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  int mode = (flags & O_CREAT) ? va_arg(ap, int) : 0;
  va_end(ap);
  return open(path, flags, mode);
}

ssize_t write(int fd, const void *p, size_t n) {
  REAL(write);
  if (!is_tracked_fd(fd)) return real_write(fd, p, n);
  size_t ok = allow(n);
  if (ok == 0 && n > 0) { errno = ENOSPC; return -1; }
  return real_write(fd, p, ok);
}

int close(int fd) {
  REAL(close);
  track_fd(fd, 0);
  return real_close(fd);
}
