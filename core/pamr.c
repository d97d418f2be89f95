/* pamr.c — pixel-adaptive mask refinement (PAMR), the post-process of
 * NACLIP and friends. ref: visinf/1-stage-wseg models/mods/pamr.py */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The 8 neighbour offsets in the reference kernel's order. */
static const int fm__dy[8] = {-1, -1, -1, 0, 0, 1, 1, 1};
static const int fm__dx[8] = {-1, 0, 1, -1, 1, -1, 0, 1};

static inline int64_t fm__clamp(int64_t v, int64_t hi) { return v < 0 ? 0 : v > hi ? hi : v; }

/* affinity: (P, H, W) with P = 8 * nd, softmax-normalised over P. */
static void fm__pamr_affinity(float *aff, const float *img, int64_t k, int64_t h, int64_t w,
                              const int32_t *dil, int32_t nd) {
  int64_t hw = h * w, p_count = 8 * (int64_t)nd;
  memset(aff, 0, sizeof(float) * (size_t)(p_count * hw));
  #pragma omp parallel for schedule(static)
  for (int64_t y = 0; y < h; ++y) {
    float vals[9 * 16];
    for (int64_t x = 0; x < w; ++x) {
      for (int64_t c = 0; c < k; ++c) {
        const float *ch = img + c * hw;
        float center = ch[y * w + x];
        /* unbiased std over the 9 * nd samples (3x3 per dilation) */
        int n = 0;
        double sum = 0, sq = 0;
        for (int32_t d = 0; d < nd; ++d)
          for (int dy = -1; dy <= 1; ++dy)
            for (int dx = -1; dx <= 1; ++dx) {
              float v = ch[fm__clamp(y + dy * dil[d], h - 1) * w + fm__clamp(x + dx * dil[d], w - 1)];
              vals[n++] = v;
              sum += v;
            }
        double mean = sum / n;
        for (int i = 0; i < n; ++i) sq += (vals[i] - mean) * (vals[i] - mean);
        float sd = (float)sqrt(sq / (n - 1));
        for (int32_t d = 0; d < nd; ++d)
          for (int p = 0; p < 8; ++p) {
            float v = ch[fm__clamp(y + fm__dy[p] * dil[d], h - 1) * w + fm__clamp(x + fm__dx[p] * dil[d], w - 1)];
            aff[((int64_t)d * 8 + p) * hw + y * w + x] += -fabsf(center - v) / (1e-8f + 0.1f * sd) / (float)k;
          }
      }
      /* softmax over P */
      float mx = -INFINITY, z = 0;
      for (int64_t p = 0; p < p_count; ++p) mx = fmaxf(mx, aff[p * hw + y * w + x]);
      for (int64_t p = 0; p < p_count; ++p) {
        float e = expf(aff[p * hw + y * w + x] - mx);
        aff[p * hw + y * w + x] = e;
        z += e;
      }
      for (int64_t p = 0; p < p_count; ++p) aff[p * hw + y * w + x] /= z;
    }
  }
}

/* One propagation step on channel-last maps: dst, src (H, W, C); aff
 * (P, H, W). Each pixel reads its P affinities once and adds P neighbour
 * rows of C contiguous floats. */
static void fm__pamr_step(float *dst, const float *src, const float *aff, int64_t c, int64_t h,
                          int64_t w, const int32_t *dil, int32_t nd) {
  int64_t hw = h * w;
  #pragma omp parallel for schedule(static)
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      float *out = dst + (y * w + x) * c;
      for (int64_t ch = 0; ch < c; ++ch) out[ch] = 0;
      for (int32_t d = 0; d < nd; ++d)
        for (int p = 0; p < 8; ++p) {
          int64_t yy = fm__clamp(y + fm__dy[p] * dil[d], h - 1), xx = fm__clamp(x + fm__dx[p] * dil[d], w - 1);
          float a = aff[((int64_t)d * 8 + p) * hw + y * w + x];
          const float *nb = src + (yy * w + xx) * c;
          for (int64_t ch = 0; ch < c; ++ch) out[ch] += a * nb[ch];
        }
    }
}

/* (C, H*W) <-> (H*W, C) */
static void fm__transpose(float *dst, const float *src, int64_t rows, int64_t cols) {
  #pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) dst[k * rows + r] = src[r * cols + k];
}

int fm_pamr(fm_tensor *out, const fm_tensor *img, const fm_tensor *mask, int32_t iters,
            const int32_t *dilations, int32_t n_dilations) {
  if (!fm__check_input(img, "pamr: img") || !fm__check_input(mask, "pamr: mask") ||
      !fm__check_output(out, "pamr: out"))
    return -1;
  if (!fm__check_ndim(img, 3, "pamr: img") || !fm__check_ndim(mask, 3, "pamr: mask")) return -1;
  if (!fm__check_shape(out, 3, mask->dims, "pamr: out")) return -1;
  int64_t k = img->dims[0], h = img->dims[1], w = img->dims[2], c = mask->dims[0];
  if (mask->dims[1] != h || mask->dims[2] != w)
    return fm__error("pamr: mask is %ldx%ld, the image %ldx%ld", (long)mask->dims[1],
                     (long)mask->dims[2], (long)h, (long)w);
  if (n_dilations < 1 || n_dilations > 16 || !dilations) return fm__error("pamr: need 1..16 dilations");
  for (int32_t d = 0; d < n_dilations; ++d)
    if (dilations[d] < 1) return fm__error("pamr: dilation %d must be >= 1", (int)dilations[d]);
  int64_t hw = h * w;
  float *aff = malloc(sizeof(float) * (size_t)(8 * n_dilations * hw));
  float *cur = malloc(sizeof(float) * (size_t)(c * hw));
  float *nxt = malloc(sizeof(float) * (size_t)(c * hw));
  if (!aff || !cur || !nxt) {
    free(aff), free(cur), free(nxt);
    return fm__error("pamr: out of memory");
  }
  fm__pamr_affinity(aff, fm__f32(img), k, h, w, dilations, n_dilations);
  fm__transpose(cur, fm__f32(mask), c, hw);
  for (int32_t it = 0; it < iters; ++it) {
    fm__pamr_step(nxt, cur, aff, c, h, w, dilations, n_dilations);
    float *t = cur;
    cur = nxt, nxt = t;
  }
  fm__transpose(fm__f32(out), cur, hw, c);
  free(aff), free(cur), free(nxt);
  return 0;
}
