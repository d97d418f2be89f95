/* kernels.h — private helpers shared by the kernel files (linalg.c, nn.c,
 * conv.c, attention.c). Not part of the public header. */
#ifndef FMSEG_KERNELS_H
#define FMSEG_KERNELS_H

#include "internal.h"

#include <limits.h>
#include <string.h>

/* Below this many elements an OpenMP loop costs more than it saves. */
enum { FM__PAR_MIN = 1 << 15 };

/* cblas takes int sizes; every size and leading dimension we pass must fit. */
static inline bool fm__blas_fits(int64_t n) { return n >= 0 && n <= INT_MAX; }

/* e^x in float, accurate to ~2 ulp, written so that a loop over it
 * vectorises (no libm call, no branches): range reduction to
 * x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r (Cephes'
 * coefficients), and 2^n built in the exponent bits. Underflows to 0 below
 * -87.3 (so e^-inf = 0), saturates to +inf above 88.7. */
static inline float fm__expf(float x) {
  float xc = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  /* round to nearest by the 1.5 * 2^23 trick: vectorises where roundf
   * would stay a libm call */
  float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;   /* ln2 split in two for exactness */
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { int32_t i; float f; } scale = { .i = ((int32_t)n + 127) << 23 };
  float y = p * scale.f;
  y = x > 88.7f ? __builtin_inff() : y;
  return x < -87.3f ? 0.0f : y;
}

/* In place softmax of one row of n floats. A row that is all -inf (every
 * key masked) becomes all zeros, where PyTorch would give NaN: a fully
 * masked query then contributes nothing instead of poisoning the output. */
void fm__softmax_row(float *row, int64_t n);

#endif
