/* tap.h — a few lines of TAP for the C unit tests (read by prove). */
#ifndef FMSEG_TAP_H
#define FMSEG_TAP_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int tap__n, tap__failed;

__attribute__((unused)) static int ok(int cond, const char *name) {
  ++tap__n;
  if (!cond) ++tap__failed;
  printf("%sok %d - %s\n", cond ? "" : "not ", tap__n, name);
  fflush(stdout);
  return cond;
}

/* A skipped check, in the TAP stream and on stderr so that prove's
 * summary shows it. */
__attribute__((unused)) static void skip(const char *why) {
  printf("ok %d # SKIP %s\n", ++tap__n, why);
  fprintf(stderr, "skipped: %s\n", why);
  fflush(stdout);
}

__attribute__((unused)) static void diag(const char *msg) { printf("# %s\n", msg); }

/* max |a-b| / max |b|, the fixtures' relative error */
__attribute__((unused)) static double rel_err(const float *a, const float *b, long n) {
  double num = 0, den = 0;
  for (long i = 0; i < n; ++i) {
    double d = fabs((double)a[i] - b[i]);
    if (d > num || d != d) num = d != d ? INFINITY : d;
    if (fabs(b[i]) > den) den = fabs(b[i]);
  }
  return den > 0 ? num / den : num;
}

__attribute__((unused)) static int done_testing(void) {
  printf("1..%d\n", tap__n);
  return tap__failed ? 1 : 0;
}

/* deterministic uniform in [-1, 1) */
__attribute__((unused)) static float frand(void) {
  static unsigned long long s = 88172645463325252ULL;
  s ^= s << 13; s ^= s >> 7; s ^= s << 17;
  return (float)((s >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
}
#endif
