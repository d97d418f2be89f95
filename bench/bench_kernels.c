/* bench_kernels.c — fm_linear, fm_attention and fm_conv2d at ViT-B, SAM
 * and SD sizes, each next to raw cblas_sgemm on the same GEMM shapes (the
 * GEMM-only floor: what the kernel would cost if everything but the
 * products were free). Times are medians of interleaved rounds after a
 * warm-up; the table goes to stdout and its rows to build/bench/kernels.json
 * for bench/summary.lua.
 *
 *   OMP_WAIT_POLICY=passive build/bench/bench_kernels
 *
 * (passive as ./fmseg runs, and `make bench`; FMSEG_THREADS sets the
 * threads; FMSEG_BENCH_QUICK=1 skips the largest shapes) */
#include "fmseg.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // Linux reports KiB
}

static fm_tensor *randn(int32_t ndim, const int64_t *shape) {
  fm_tensor *t = fm_tensor_new(FM_F32, ndim, shape);
  if (!t) {
    fprintf(stderr, "bench_kernels: %s\n", fm_last_error());
    exit(1);
  }
  float *p = t->data;
  unsigned s = 12345;
  for (int64_t i = 0; i < fm_tensor_numel(t); ++i) {
    s = s * 1103515245u + 12345u;
    p[i] = (float)((s >> 8) & 0xffff) / 32768.f - 1.f;
  }
  return t;
}

/* Median seconds per call of fns[i](ctx) into med[i], over rounds that
 * interleave the competitors, so that a burst of load from other processes
 * hits both sides alike: one warm-up call each, then at least 5 rounds and
 * ~1.5 s in all. */
typedef void (*bench_fn)(void *ctx);
enum { MAX_ROUNDS = 64 };

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void median_times(int n, const bench_fn *fns, void *ctx, double *med) {
  double t[4][MAX_ROUNDS], spent = 0;
  int rounds = 0;
  for (int i = 0; i < n; ++i) fns[i](ctx);
  while (rounds < 5 || (spent < 1.5 && rounds < MAX_ROUNDS)) {
    for (int i = 0; i < n; ++i) {
      double t0 = now();
      fns[i](ctx);
      t[i][rounds] = now() - t0;
      spent += t[i][rounds];
    }
    ++rounds;
  }
  for (int i = 0; i < n; ++i) {
    qsort(t[i], rounds, sizeof t[i][0], cmp_double);
    med[i] = t[i][rounds / 2];
  }
}

static FILE *json;  // build/bench/kernels.json, or NULL

static void row(const char *name, double flops, double t_kernel, double t_floor) {
  printf("| %-36s | %9.2f | %8.1f | %8.1f | %5.2f |\n", name, t_kernel * 1e3,
         flops / t_kernel * 1e-9, flops / t_floor * 1e-9, t_kernel / t_floor);
  fflush(stdout);
  if (json)
    fprintf(json, "%s{\"name\": \"%s\", \"ms\": %.4f, \"floor_ms\": %.4f, \"gflop\": %.4f}",
            ftell(json) > 1 ? ",\n " : "", name, t_kernel * 1e3, t_floor * 1e3, flops * 1e-9);
}

static void die_on(int rc) {
  if (rc != 0) {
    fprintf(stderr, "bench_kernels: %s\n", fm_last_error());
    exit(1);
  }
}

/* ---- linear ------------------------------------------------------------- */

typedef struct lin_ctx {
  fm_tensor *x, *w, *b, *y;
} lin_ctx;

static void run_linear(void *p) {
  lin_ctx *c = p;
  die_on(fm_linear(c->y, c->x, c->w, c->b));
}

static void run_linear_floor(void *p) {
  lin_ctx *c = p;
  int m = (int)c->x->dims[0], k = (int)c->x->dims[1], n = (int)c->w->dims[0];
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.f, c->x->data, k, c->w->data,
              k, 0.f, c->y->data, n);
}

static void bench_linear(const char *name, int64_t m, int64_t k, int64_t n) {
  lin_ctx c = {randn(2, (int64_t[]){m, k}), randn(2, (int64_t[]){n, k}), randn(1, &n),
               randn(2, (int64_t[]){m, n})};
  double t[2];
  median_times(2, (bench_fn[]){run_linear, run_linear_floor}, &c, t);
  row(name, 2.0 * m * n * k, t[0], t[1]);
  fm_tensor_release(c.x), fm_tensor_release(c.w), fm_tensor_release(c.b), fm_tensor_release(c.y);
}

/* ---- attention ---------------------------------------------------------- */

typedef struct attn_ctx {
  fm_tensor *q, *k, *v, *out;
  int64_t heads;
  float *scores;  // floor only: one (T, T) buffer per thread
} attn_ctx;

static void run_attention(void *p) {
  attn_ctx *c = p;
  die_on(fm_attention(c->out, c->q, c->k, c->v, c->heads, 0.125f, NULL, 0, NULL));
}

/* The same two products per head, nothing between them. */
static void floor_head(attn_ctx *c, int64_t h, float *s) {
  int t = (int)c->q->dims[1], hd = (int)c->q->dims[2], d = hd / (int)c->heads;
  const float *q = (const float *)c->q->data + h * d, *k = (const float *)c->k->data + h * d;
  const float *v = (const float *)c->v->data + h * d;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, t, d, 0.125f, q, hd, k, hd, 0.f, s, t);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t, d, t, 1.f, s, t, v, hd, 0.f,
              (float *)c->out->data + h * d, hd);
}

static void run_attention_floor_serial(void *p) {  // BLAS's threads inside each product
  attn_ctx *c = p;
  for (int64_t h = 0; h < c->heads; ++h) floor_head(c, h, c->scores);
}

static void run_attention_floor_heads(void *p) {  // one head per thread
  attn_ctx *c = p;
  int64_t tt = c->q->dims[1] * c->q->dims[1];
  #pragma omp parallel for schedule(dynamic)
  for (int64_t h = 0; h < c->heads; ++h) floor_head(c, h, c->scores + omp_get_thread_num() * tt);
}

static void bench_attention(const char *name, int64_t t, int64_t heads, int64_t d,
                            double *rss_after_kernel) {
  int64_t shape[3] = {1, t, heads * d};
  attn_ctx c = {randn(3, shape), randn(3, shape), randn(3, shape), randn(3, shape), heads, NULL};
  run_attention(&c);
  *rss_after_kernel = peak_rss_mb();
  c.scores = malloc(sizeof(float) * t * t * omp_get_max_threads());
  double tb[3];
  median_times(3, (bench_fn[]){run_attention, run_attention_floor_serial, run_attention_floor_heads},
               &c, tb);
  row(name, 4.0 * t * t * d * heads, tb[0], tb[1] < tb[2] ? tb[1] : tb[2]);
  free(c.scores);
  fm_tensor_release(c.q), fm_tensor_release(c.k), fm_tensor_release(c.v), fm_tensor_release(c.out);
}

/* ---- convolution -------------------------------------------------------- */

typedef struct conv_ctx {
  fm_tensor *x, *w, *b, *y;
  int32_t stride, pad;
  float *col;  // floor only: a (C*KH*KW, OH*OW) matrix standing for im2col's
} conv_ctx;

static void run_conv(void *p) {
  conv_ctx *c = p;
  die_on(fm_conv2d(c->y, c->x, c->w, c->b, c->stride, c->stride, c->pad, c->pad));
}

static void run_conv_floor(void *p) {  // y (OC, OH*OW) = w (OC, CKK) . col (CKK, OH*OW)
  conv_ctx *c = p;
  int oc = (int)c->w->dims[0], ckk = (int)(c->w->dims[1] * c->w->dims[2] * c->w->dims[3]);
  int os = (int)(c->y->dims[2] * c->y->dims[3]);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, oc, os, ckk, 1.f, c->w->data, ckk,
              c->col, os, 0.f, c->y->data, os);
}

static void bench_conv(const char *name, int64_t c, int64_t h, int64_t oc, int64_t k,
                       int32_t stride, int32_t pad) {
  int64_t o = (h + 2 * pad - k) / stride + 1, ckk = c * k * k;
  conv_ctx cc = {randn(4, (int64_t[]){1, c, h, h}), randn(4, (int64_t[]){oc, c, k, k}),
                 randn(1, &oc), randn(4, (int64_t[]){1, oc, o, o}), stride, pad, NULL};
  fm_tensor *col = randn(2, (int64_t[]){ckk, o * o});
  cc.col = col->data;
  double t[2];
  median_times(2, (bench_fn[]){run_conv, run_conv_floor}, &cc, t);
  row(name, 2.0 * oc * ckk * o * o, t[0], t[1]);
  fm_tensor_release(col), fm_tensor_release(cc.x), fm_tensor_release(cc.w);
  fm_tensor_release(cc.b), fm_tensor_release(cc.y);
}

int main(void) {
  const char *env = getenv("FMSEG_THREADS"), *quick = getenv("FMSEG_BENCH_QUICK");
  bool full = !quick || !*quick || strcmp(quick, "0") == 0;
  int threads = fm_set_threads(env ? atoi(env) : 0);
  system("mkdir -p build/bench");
  json = fopen("build/bench/kernels.json", "w");
  if (json) fputs("[", json);
  printf("fmseg %s kernels, %d threads; medians of >= 5 interleaved rounds\n\n", fm_version(),
         threads);
  printf("| %-36s | %9s | %8s | %8s | %5s |\n", "kernel", "ms", "GFLOP/s", "sgemm", "t/floor");
  printf("|%s|%s|%s|%s|%s|\n", "--------------------------------------", "-----------",
         "----------", "----------", "---------");
  bench_linear("linear 197x768 . 768x2304 (qkv)", 197, 768, 2304);
  bench_linear("linear 197x3072 . 3072x768 (fc2)", 197, 3072, 768);
  bench_linear("linear 4096x768 . 768x2304 (SAM)", 4096, 768, 2304);
  double rss_linear = peak_rss_mb(), rss_197, rss_4096 = 0;
  bench_attention("attention T 197, 12 heads, d 64", 197, 12, 64, &rss_197);
  if (full) bench_attention("attention T 4096, 12 heads, d 64", 4096, 12, 64, &rss_4096);
  bench_conv("conv3x3 64x64 320->320 (UNet)", 320, 64, 320, 3, 1, 1);
  bench_conv("conv3x3 32x32 640->640 (UNet)", 640, 32, 640, 3, 1, 1);
  bench_conv("conv3x3 s2 64x64 320->320 (UNet)", 320, 64, 320, 3, 2, 1);
  bench_conv("conv3x3 64x64 256->256 (SAM neck)", 256, 64, 256, 3, 1, 1);
  bench_conv("conv16x16 s16 1024 3->768 (SAM)", 3, 1024, 768, 16, 16, 0);
  if (full) bench_conv("conv3x3 512x512 128->128 (VAE)", 128, 512, 128, 3, 1, 1);
  if (full) bench_conv("conv3x3 s2 513x513 128->128 (VAE)", 128, 513, 128, 3, 2, 0);
  if (json) fputs("]\n", json), fclose(json);
  printf("\nsgemm: GFLOP/s of the same products by raw cblas_sgemm (attention: the\n"
         "best of one threaded sgemm pair per head, or one head per thread; no mask,\n"
         "no softmax; conv: one (OC, C*KH*KW) . (C*KH*KW, OH*OW) product, no im2col).\n"
         "t/floor: kernel time / sgemm time.\n\n");
  printf("peak RSS: %.1f MB after the linears, %.1f MB after fm_attention at 197 tokens,\n"
         "%.1f MB after fm_attention at 4096 tokens (before its sgemm floor, which\n"
         "holds a full 4096x4096 score matrix per thread), %.1f MB at the end.\n",
         rss_linear, rss_197, rss_4096, peak_rss_mb());
  return 0;
}
