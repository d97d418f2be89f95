/* error.c — the per-thread error message, version, thread count, and
 * OpenBLAS's setup (work buffers, its kernel family). */
#include "internal.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

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

/* OpenBLAS takes a work buffer per thread on its first product (128 MiB:
 * Debian's 0.3.21 on x86-64, its BUFFER_SIZE) and, when that mmap fails,
 * retries forever, so under an address-space limit (ulimit -v) a forward
 * pass would spin instead of failing. The buffers are therefore taken
 * here, by one product on every thread, once the limit is known to leave
 * room for them; OpenBLAS keeps them, and a later allocation failure is
 * ours and reported. */
static const size_t FM__BLAS_BUFFER = (size_t)128 << 20;

static size_t fm__mapped_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  if (f) {
    if (fscanf(f, "%lu", &pages) != 1) pages = 0;
    fclose(f);
  }
  return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

int fm_blas_reserve(void) {
  int threads = omp_get_max_threads();
  struct rlimit lim;
  if (getrlimit(RLIMIT_AS, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
    size_t used = fm__mapped_bytes();
    size_t need = used + (size_t)threads * (FM__BLAS_BUFFER + ((size_t)1 << 20)) + ((size_t)64 << 20);
    if ((size_t)lim.rlim_cur < need)
      return fm__error("the address-space limit (ulimit -v) of %zu MiB leaves no room for OpenBLAS's "
                       "work buffers (%d thread(s) x 128 MiB beside the %zu MiB mapped); raise it "
                       "to at least %zu MiB, or use fewer threads (FMSEG_THREADS=1)",
                       (size_t)lim.rlim_cur >> 20, threads, used >> 20, (need >> 20) + 1);
  }
  enum { N = 512 };   /* big enough that OpenBLAS splits it over every thread */
  float *a = calloc((size_t)3 * N * N, sizeof *a);
  if (!a) return fm__error("fm_blas_reserve: out of memory");
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, a + N * N, N, 0.0f,
              a + 2 * N * N, N);
  free(a);
  return 0;
}

int fm_get_threads(void) { return omp_get_max_threads(); }

const char *fm_blas_core(void) { return openblas_get_corename(); }

/* Kernel families that predate AVX2: what OpenBLAS's DYNAMIC_ARCH falls
 * back to for a CPU model it does not know (Debian 12's 0.3.21 takes a
 * 2-core Sapphire Rapids Xeon for "Prescott": sgemm at 45 GFLOP/s, against
 * 188 with its SkylakeX kernels). */
static const char *const FM__PRE_AVX2_CORES[] = {
  "prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "sandybridge", "barcelona", "bobcat",
  "bulldozer", "piledriver", "opteron", "opteron(sse3)", "katmai", "coppermine", "northwood", "banias",
  "athlon", "unknown",
};

static bool fm__pre_avx2(const char *core) {
  if (!core) return true;
  for (size_t i = 0; i < sizeof FM__PRE_AVX2_CORES / sizeof *FM__PRE_AVX2_CORES; ++i)
    if (strcasecmp(core, FM__PRE_AVX2_CORES[i]) == 0) return true;
  return false;
}

const char *fm_blas_core_upgrade(void) {
  if (getenv("OPENBLAS_CORETYPE")) return NULL;          /* the user's choice */
  if (!fm__pre_avx2(openblas_get_corename())) return NULL;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return NULL;
}

void fm_free(void *p) { free(p); }
