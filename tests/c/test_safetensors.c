/* test_safetensors.c — the safetensors loader and writer: round trips,
 * dtype conversions checked against naive decoders written here, every
 * malformed header refused with a message that names the file and the
 * fault, and the clip-tiny fixtures in fp32 and fp16. */
#include "fmseg.h"
#include "internal.h" /* storage kind of zero-copy views */
#include "tap.h"

#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------ */

static char tmp_paths[128][256];
static int ntmp;

/* A fresh path under /tmp, removed at the end. */
static const char *tmp_path(const char *tag) {
  char *p = tmp_paths[ntmp++ % 128];
  snprintf(p, 256, "/tmp/fmseg_test_st_%ld_%s.safetensors", (long)getpid(), tag);
  return p;
}

static void write_bytes(const char *path, const void *bytes, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) { perror(path); exit(1); }
  if (n && fwrite(bytes, 1, n, f) != n) { perror(path); exit(1); }
  fclose(f);
}

/* u64 header length, header text as given (no padding), data */
static void write_st(const char *path, const char *header, const void *data, size_t ndata) {
  size_t hlen = strlen(header);
  uint8_t *buf = calloc(1, 8 + hlen + ndata + 1);
  uint64_t le = hlen;
  memcpy(buf, &le, 8);
  memcpy(buf + 8, header, hlen);
  if (ndata) memcpy(buf + 8 + hlen, data, ndata);
  write_bytes(path, buf, 8 + hlen + ndata);
  free(buf);
}

/* Builds a file tensor by tensor, the header padded to 8 bytes like the
 * reference writer, data in the order added (so alignment is ours to set). */
typedef struct builder {
  char header[8192];
  size_t hlen;
  uint8_t data[1 << 19];
  size_t dlen;
} builder;

static void b_add(builder *b, const char *name, const char *dtype, const char *shape,
                  const void *bytes, size_t n) {
  b->hlen += (size_t)snprintf(b->header + b->hlen, sizeof b->header - b->hlen,
                              "%s\"%s\": {\"dtype\": \"%s\", \"shape\": %s, "
                              "\"data_offsets\": [%zu, %zu]}",
                              b->hlen ? ", " : "{", name, dtype, shape, b->dlen, b->dlen + n);
  if (n) memcpy(b->data + b->dlen, bytes, n);
  b->dlen += n;
}

static void b_write(builder *b, const char *path) {
  b->hlen += (size_t)snprintf(b->header + b->hlen, sizeof b->header - b->hlen, "%s",
                              b->hlen ? "}" : "{}");
  while (b->hlen % 8) b->header[b->hlen++] = ' ';
  b->header[b->hlen] = '\0';
  write_st(path, b->header, b->data, b->dlen);
}

static int same_float(float a, float b) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
  return a == b && signbit(a) == signbit(b);
}

/* ---- naive decoders: the formulas of the formats, in double ------------- */

static float naive_f16(unsigned h) {
  int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
  return (float)(s ? -v : v);
}

static float naive_bf16(unsigned h) {
  int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
  double v = e == 0 ? ldexp(m, -133) : e == 255 ? (m ? NAN : INFINITY) : ldexp(128 + m, e - 134);
  return (float)(s ? -v : v);
}

static float naive_e4m3(unsigned b) { /* e4m3fn: bias 7, no inf, S.1111.111 NaN */
  int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  double v = (e == 15 && m == 7) ? NAN : e == 0 ? ldexp(m, -9) : ldexp(8 + m, e - 10);
  return (float)(s ? -v : v);
}

static float naive_e5m2(unsigned b) {
  int s = b >> 7, e = (b >> 2) & 31, m = b & 3;
  double v = e == 0 ? ldexp(m, -16) : e == 31 ? (m ? NAN : INFINITY) : ldexp(4 + m, e - 17);
  return (float)(s ? -v : v);
}

/* ---- round trip through fm_safetensors_save ----------------------------- */

static void test_round_trip(void) {
  const char *path = tmp_path("roundtrip");
  int64_t s23[2] = {2, 3}, s4[1] = {4}, s5[1] = {5}, s04[2] = {0, 4};
  fm_tensor *a = fm_tensor_new(FM_F32, 2, s23);
  for (int i = 0; i < 6; ++i) fm__f32(a)[i] = frand();
  int32_t perm[2] = {1, 0};
  fm_tensor *at = fm_tensor_permute(a, perm); /* (3, 2), not contiguous */
  fm_tensor *c = fm_tensor_new(FM_I32, 1, s4);
  int32_t cvals[4] = {-7, 0, 2147483647, -2147483647 - 1};
  memcpy(c->data, cvals, sizeof cvals);
  fm_tensor *m = fm_tensor_new(FM_U8, 1, s5); /* odd length, listed first */
  uint8_t mvals[5] = {0, 1, 128, 254, 255};
  memcpy(m->data, mvals, sizeof mvals);
  fm_tensor *s = fm_tensor_new(FM_F32, 0, NULL);
  fm__f32(s)[0] = 3.25f;
  fm_tensor *z = fm_tensor_new(FM_F32, 2, s04);
  const char *names[6] = {"mask", "w", "w.T", "ids", "layer.\"q\"/\xc3\xa9", "empty"};
  const fm_tensor *ts[6] = {m, a, at, c, s, z};
  ok(fm_safetensors_save(path, 6, names, ts) == 0, "save 6 tensors (F32, strided, I32, U8, scalar, empty)");

  FILE *f = fopen(path, "rb");
  uint64_t hlen = 0;
  ok(f && fread(&hlen, 8, 1, f) == 1 && (8 + hlen) % 8 == 0, "saved header padded to 8 bytes");
  if (f) fclose(f);

  fm_safetensors *st = fm_safetensors_open(path);
  ok(st != NULL, "open the saved file");
  if (!st) { diag(fm_last_error()); return; }
  ok(fm_safetensors_count(st) == 6, "count is 6");
  int order_ok = 1;
  for (int i = 0; i < 6; ++i) order_ok &= strcmp(fm_safetensors_name(st, i), names[i]) == 0;
  ok(order_ok, "names come back in header (= save) order, JSON escapes intact");
  ok(fm_safetensors_find(st, "ids") == 3 && fm_safetensors_find(st, "nope") == -1, "find");
  ok(strcmp(fm_safetensors_dtype(st, 0), "U8") == 0 && strcmp(fm_safetensors_dtype(st, 1), "F32") == 0 &&
     strcmp(fm_safetensors_dtype(st, 3), "I32") == 0, "dtype names");
  ok(fm_safetensors_ndim(st, 2) == 2 && fm_safetensors_dim(st, 2, 0) == 3 &&
     fm_safetensors_dim(st, 2, 1) == 2 && fm_safetensors_ndim(st, 4) == 0, "ndim and dims");
  ok(fm_safetensors_dim(st, 2, 2) == -1 && strstr(fm_last_error(), "w.T"), "dim out of range is an error");
  ok(fm_safetensors_name(st, 6) == NULL && strstr(fm_last_error(), "out of range"), "index out of range is an error");
  ok(strcmp(fm_safetensors_metadata(st), "") == 0, "no metadata gives \"\"");

  fm_tensor *ga = fm_safetensors_get(st, "w");
  ok(ga && ga->type == FM_F32 && ga->ndim == 2 && ga->dims[0] == 2 && ga->dims[1] == 3 &&
     memcmp(ga->data, a->data, 6 * sizeof(float)) == 0, "F32 round trip exact");
  ok(ga && ga->readonly == 1 && ga->storage->kind == FM__MMAP, "F32 comes back zero-copy, read-only");
  ok(ga && fm_tensor_fill_(ga, 0) != 0, "writing into the mapping is refused");
  fm_tensor *gt = fm_safetensors_get(st, "w.T");
  int tr_ok = gt && gt->dims[0] == 3 && gt->dims[1] == 2;
  for (int i = 0; tr_ok && i < 3; ++i)
    for (int j = 0; j < 2; ++j) tr_ok &= fm__f32(gt)[i * 2 + j] == fm__f32(a)[j * 3 + i];
  ok(tr_ok, "strided tensor saved in logical order");
  fm_tensor *gc = fm_safetensors_get(st, "ids");
  ok(gc && gc->type == FM_I32 && memcmp(gc->data, cvals, sizeof cvals) == 0, "I32 round trip");
  fm_tensor *gm = fm_safetensors_get(st, "mask");
  int m_ok = gm && gm->type == FM_I32 && gm->dims[0] == 5;
  for (int i = 0; m_ok && i < 5; ++i) m_ok &= ((int32_t *)gm->data)[i] == mvals[i];
  ok(m_ok, "U8 round trip (read back as I32)");
  fm_tensor *gs = fm_safetensors_get(st, names[4]);
  ok(gs && gs->ndim == 0 && fm_tensor_numel(gs) == 1 && fm__f32(gs)[0] == 3.25f, "scalar round trip");
  fm_tensor *gz = fm_safetensors_get(st, "empty");
  ok(gz && gz->ndim == 2 && gz->dims[0] == 0 && gz->dims[1] == 4 && fm_tensor_numel(gz) == 0,
     "empty tensor round trip");
  fm_tensor *gx = fm_safetensors_get(st, "nope");
  ok(!gx && strstr(fm_last_error(), "nope: no such tensor in") && strstr(fm_last_error(), path),
     "missing name: NULL and 'NAME: no such tensor in FILE'");

  fm_safetensors_close(st);
  ok(ga && memcmp(ga->data, a->data, 6 * sizeof(float)) == 0, "F32 view outlives close");

  /* Saving over a mapped file replaces it; old views keep the old bytes. */
  fm_tensor *a2 = fm_tensor_clone(a);
  fm__f32(a2)[0] += 1;
  const char *n2[1] = {"w"};
  const fm_tensor *t2[1] = {a2};
  ok(fm_safetensors_save(path, 1, n2, t2) == 0, "save over the mapped file");
  ok(ga && fm__f32(ga)[0] == fm__f32(a)[0], "old view unchanged by the new save");
  st = fm_safetensors_open(path);
  fm_tensor *g2 = st ? fm_safetensors_get(st, "w") : NULL;
  ok(g2 && fm__f32(g2)[0] == fm__f32(a2)[0] && fm_safetensors_count(st) == 1, "new file has the new data");
  fm_tensor_release(g2);
  fm_safetensors_close(st);

  fm_tensor *tensors[] = {a, at, c, m, s, z, ga, gt, gc, gm, gs, gz, a2};
  for (size_t i = 0; i < sizeof tensors / sizeof *tensors; ++i) fm_tensor_release(tensors[i]);
}

static void test_save_errors(void) {
  const char *path = tmp_path("badsave");
  int64_t s2[1] = {2};
  fm_tensor *a = fm_tensor_new(FM_F32, 1, s2);
  const char *dup[2] = {"x", "x"};
  const fm_tensor *ts[2] = {a, a};
  ok(fm_safetensors_save(path, 2, dup, ts) != 0 && strstr(fm_last_error(), "twice"), "save refuses duplicate names");
  const char *meta[1] = {"__metadata__"};
  ok(fm_safetensors_save(path, 1, meta, ts) != 0 && strstr(fm_last_error(), "reserved"),
     "save refuses the name __metadata__");
  const fm_tensor *nul[1] = {NULL};
  ok(fm_safetensors_save(path, 1, dup, nul) != 0 && strstr(fm_last_error(), "NULL"), "save refuses NULL tensors");
  ok(access(path, F_OK) != 0, "failed saves leave no file");
  ok(fm_safetensors_save("/nonexistent-dir/x.safetensors", 1, dup, ts) != 0 &&
     strstr(fm_last_error(), "/nonexistent-dir/x.safetensors"), "unwritable path is an error naming it");
  const char *p0 = tmp_path("zero");
  fm_safetensors *st = NULL;
  ok(fm_safetensors_save(p0, 0, NULL, NULL) == 0 && (st = fm_safetensors_open(p0)) &&
     fm_safetensors_count(st) == 0, "zero tensors save and open");
  fm_safetensors_close(st);
  fm_tensor_release(a);
}

/* ---- hand-built files: conversions -------------------------------------- */

static void test_conversions(void) {
  static builder b;
  memset(&b, 0, sizeof b);
  const char *path = tmp_path("convert");

  /* Known values from the format definitions. */
  uint16_t f16[12] = {0x3C00, 0xC000, 0x3555, 0x7BFF, 0x0400, 0x0001,
                      0x03FF, 0x7C00, 0xFC00, 0x8000, 0x7E00, 0x8001};
  float f16_want[12] = {1.0f, -2.0f, 0.333251953125f, 65504.0f, 0x1p-14f, 0x1p-24f,
                        1023 * 0x1p-24f, INFINITY, -INFINITY, -0.0f, NAN, -0x1p-24f};
  uint16_t bf16[9] = {0x3F80, 0xC040, 0x4049, 0x7F80, 0xFF80, 0x0001, 0x8000, 0x7FC0, 0x7F7F};
  float bf16_want[9] = {1.0f, -3.0f, 3.140625f, INFINITY, -INFINITY, 0x1p-133f, -0.0f, NAN,
                        0x1.fep127f};
  double f64[6] = {1.5, -0.1, 1e300, -1e-300, 65504.0, 0x1p-149};
  float f64_want[6] = {1.5f, -0.1f, INFINITY, -0.0f, 65504.0f, 0x1p-149f};
  uint8_t e4m3[8] = {0x38, 0xB8, 0x7E, 0x7F, 0x01, 0x08, 0x00, 0x3C};
  float e4m3_want[8] = {1, -1, 448, NAN, 0x1p-9f, 0x1p-6f, 0, 1.5f};
  uint8_t e5m2[5] = {0x3C, 0x7C, 0x01, 0xC0, 0x7B};
  float e5m2_want[5] = {1, INFINITY, 0x1p-16f, -2, 57344};
  b_add(&b, "f16", "F16", "[12]", f16, sizeof f16);
  b_add(&b, "bf16", "BF16", "[3, 3]", bf16, sizeof bf16);
  b_add(&b, "f64", "F64", "[6]", f64, sizeof f64);
  b_add(&b, "e4m3", "F8_E4M3", "[8]", e4m3, sizeof e4m3);
  b_add(&b, "e5m2", "F8_E5M2", "[5]", e5m2, sizeof e5m2);

  /* Every bit pattern, against the naive decoders. */
  static uint16_t all16[65536];
  for (unsigned i = 0; i < 65536; ++i) all16[i] = (uint16_t)i;
  uint8_t all8[256];
  for (unsigned i = 0; i < 256; ++i) all8[i] = (uint8_t)i;
  b_add(&b, "all_f16", "F16", "[65536]", all16, sizeof all16);
  b_add(&b, "all_bf16", "BF16", "[256, 256]", all16, sizeof all16);
  b_add(&b, "all_e4m3", "F8_E4M3", "[256]", all8, sizeof all8);
  b_add(&b, "all_e5m2", "F8_E5M2", "[256]", all8, sizeof all8);

  int64_t i64[5] = {-5, 0, 2147483647, -2147483647 - 1, 7};
  int32_t i32[2] = {-1, 123456789};
  int16_t i16[2] = {-32768, 32767};
  int8_t i8[2] = {-128, 127};
  uint8_t u8[2] = {0, 255}, bools[2] = {0, 1};
  uint16_t u16[1] = {65535};
  uint32_t u32[1] = {2147483647u};
  uint64_t u64[1] = {12345};
  b_add(&b, "i64", "I64", "[5]", i64, sizeof i64);
  b_add(&b, "i32", "I32", "[2]", i32, sizeof i32);
  b_add(&b, "i16", "I16", "[2]", i16, sizeof i16);
  b_add(&b, "i8", "I8", "[2]", i8, sizeof i8);
  b_add(&b, "u8", "U8", "[2]", u8, sizeof u8);
  b_add(&b, "bool", "BOOL", "[2]", bools, sizeof bools);
  b_add(&b, "u16", "U16", "[1]", u16, sizeof u16);
  b_add(&b, "u32", "U32", "[1]", u32, sizeof u32);
  b_add(&b, "u64", "U64", "[1]", u64, sizeof u64);
  int64_t big[2] = {1, 2147483648LL}, small[1] = {-2147483649LL};
  uint32_t ubig[1] = {0xFFFFFFFFu};
  uint64_t uhuge[1] = {UINT64_MAX};
  b_add(&b, "i64_big", "I64", "[2]", big, sizeof big);
  b_add(&b, "i64_small", "I64", "[1]", small, sizeof small);
  b_add(&b, "u32_big", "U32", "[1]", ubig, sizeof ubig);
  b_add(&b, "u64_huge", "U64", "[1]", uhuge, sizeof uhuge);

  /* Alignment: the data area starts 8-aligned; offset 1 is not 4-aligned. */
  uint8_t zeros[4] = {0};
  size_t padn = (4 - b.dlen % 4) % 4;
  char padshape[16];
  snprintf(padshape, sizeof padshape, "[%zu]", padn);
  b_add(&b, "pad", "U8", padshape, zeros, padn);
  uint8_t one = 9;
  float fv[3] = {1.25f, -2.5f, 1e-3f}, sv = -4.75f;
  uint16_t h1 = 0x3C00;
  b_add(&b, "u8_one", "U8", "[1]", &one, 1);
  b_add(&b, "f32_unaligned", "F32", "[3]", fv, sizeof fv);
  b_add(&b, "f32_scalar_unaligned", "F32", "[]", &sv, 4);
  b_add(&b, "f16_scalar", "F16", "[]", &h1, 2);
  b_add(&b, "u8_fill", "U8", "[1]", &one, 1);   /* back to a multiple of 4 */
  b_add(&b, "f32_aligned", "F32", "[1, 3]", fv, sizeof fv);
  b_add(&b, "nine_dims", "F32", "[1, 1, 1, 1, 1, 1, 1, 1, 1]", &sv, 4);
  b_add(&b, "zero_size", "F16", "[0, 3]", NULL, 0);
  b_write(&b, path);

  fm_safetensors *st = fm_safetensors_open(path);
  ok(st != NULL, "open the hand-built file");
  if (!st) { diag(fm_last_error()); return; }

  struct { const char *name; int n; const float *want; } fl[] = {
    {"f16", 12, f16_want}, {"bf16", 9, bf16_want}, {"f64", 6, f64_want},
    {"e4m3", 8, e4m3_want}, {"e5m2", 5, e5m2_want}};
  for (size_t k = 0; k < sizeof fl / sizeof *fl; ++k) {
    fm_tensor *t = fm_safetensors_get(st, fl[k].name);
    int good = t && t->type == FM_F32 && fm_tensor_numel(t) == fl[k].n && t->readonly == 0;
    for (int i = 0; good && i < fl[k].n; ++i) {
      good &= same_float(fm__f32(t)[i], fl[k].want[i]);
      if (!good) printf("# %s[%d]: got %a want %a\n", fl[k].name, i, fm__f32(t)[i], fl[k].want[i]);
    }
    char msg[128];
    snprintf(msg, sizeof msg, "%s -> F32 known values (zeros, subnormals, inf, NaN)", fl[k].name);
    ok(good, msg);
    fm_tensor_release(t);
  }
  fm_tensor *t = fm_safetensors_get(st, "bf16");
  ok(t && t->ndim == 2 && t->dims[0] == 3 && t->dims[1] == 3, "converted tensor keeps its shape");
  fm_tensor_release(t);

  struct { const char *name; int n; float (*naive)(unsigned); } ex[] = {
    {"all_f16", 65536, naive_f16}, {"all_bf16", 65536, naive_bf16},
    {"all_e4m3", 256, naive_e4m3}, {"all_e5m2", 256, naive_e5m2}};
  for (size_t k = 0; k < sizeof ex / sizeof *ex; ++k) {
    fm_tensor *e = fm_safetensors_get(st, ex[k].name);
    int bad = e ? 0 : 1;
    for (int i = 0; e && i < ex[k].n; ++i)
      if (!same_float(fm__f32(e)[i], ex[k].naive((unsigned)i)) && bad++ < 3)
        printf("# %s pattern 0x%x: got %a want %a\n", ex[k].name, i, fm__f32(e)[i], ex[k].naive((unsigned)i));
    char msg[128];
    snprintf(msg, sizeof msg, "%s: every bit pattern matches the naive decoder", ex[k].name);
    ok(!bad, msg);
    fm_tensor_release(e);
  }

  struct { const char *name; int n; int64_t want[5]; } in[] = {
    {"i64", 5, {-5, 0, 2147483647, -2147483647 - 1, 7}}, {"i32", 2, {-1, 123456789}},
    {"i16", 2, {-32768, 32767}}, {"i8", 2, {-128, 127}}, {"u8", 2, {0, 255}},
    {"bool", 2, {0, 1}}, {"u16", 1, {65535}}, {"u32", 1, {2147483647}}, {"u64", 1, {12345}}};
  for (size_t k = 0; k < sizeof in / sizeof *in; ++k) {
    fm_tensor *e = fm_safetensors_get(st, in[k].name);
    int good = e && e->type == FM_I32 && fm_tensor_numel(e) == in[k].n;
    for (int i = 0; good && i < in[k].n; ++i) good &= ((int32_t *)e->data)[i] == in[k].want[i];
    char msg[128];
    snprintf(msg, sizeof msg, "%s -> I32 values", in[k].name);
    ok(good, msg);
    fm_tensor_release(e);
  }
  const char *oor[4] = {"i64_big", "i64_small", "u32_big", "u64_huge"};
  for (int k = 0; k < 4; ++k) {
    fm_tensor *e = fm_safetensors_get(st, oor[k]);
    char msg[128];
    snprintf(msg, sizeof msg, "%s: out of int32 range is refused, naming tensor and file", oor[k]);
    ok(!e && strstr(fm_last_error(), "out of int32 range") && strstr(fm_last_error(), oor[k]) &&
       strstr(fm_last_error(), path), msg);
    if (!e && k == 0) ok(strstr(fm_last_error(), "element 1") != NULL, "range error gives the element index");
    fm_tensor_release(e);
  }

  fm_tensor *un = fm_safetensors_get(st, "f32_unaligned");
  ok(un && un->readonly == 0 && un->storage->kind != FM__MMAP && fm__f32(un)[0] == 1.25f &&
     fm__f32(un)[1] == -2.5f && fm__f32(un)[2] == 1e-3f, "unaligned F32 is copied, values intact");
  fm_tensor *su = fm_safetensors_get(st, "f32_scalar_unaligned");
  ok(su && su->ndim == 0 && fm__f32(su)[0] == -4.75f, "unaligned F32 scalar");
  fm_tensor *hs = fm_safetensors_get(st, "f16_scalar");
  ok(hs && hs->ndim == 0 && fm__f32(hs)[0] == 1.0f, "F16 scalar -> ndim 0 F32");
  fm_tensor *al = fm_safetensors_get(st, "f32_aligned");
  ok(al && al->readonly == 1 && al->storage->kind == FM__MMAP && al->ndim == 2 &&
     fm__f32(al)[2] == 1e-3f, "aligned F32 is a zero-copy view");
  fm_tensor *nd = fm_safetensors_get(st, "nine_dims");
  ok(!nd && strstr(fm_last_error(), "at most 8") && fm_safetensors_ndim(st, fm_safetensors_find(st, "nine_dims")) == 9,
     "9-dim tensor: listed, but get refuses it");
  fm_tensor *zs = fm_safetensors_get(st, "zero_size");
  ok(zs && fm_tensor_numel(zs) == 0 && zs->dims[1] == 3, "zero-size F16 tensor");
  fm_tensor *rel[] = {un, su, hs, al, nd, zs};
  for (size_t i = 0; i < sizeof rel / sizeof *rel; ++i) fm_tensor_release(rel[i]);
  fm_safetensors_close(st);

  /* Metadata and header whitespace. */
  const char *pm = tmp_path("meta");
  write_st(pm, "{\"__metadata__\": {\"format\": \"pt\", \"note\": \"a \\\"b\\\"\"}, "
               "\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}  \n",
           &sv, 4);
  st = fm_safetensors_open(pm);
  ok(st && fm_safetensors_count(st) == 1 &&
     strcmp(fm_safetensors_metadata(st), "{\"format\":\"pt\",\"note\":\"a \\\"b\\\"\"}") == 0,
     "__metadata__ kept as JSON text, not counted as a tensor; trailing spaces fine");
  if (!st) diag(fm_last_error());
  fm_safetensors_close(st);
}

/* ---- malformed files ---------------------------------------------------- */

static void refused(const char *tag, const char *path, const char *word) {
  fm_clear_error();
  fm_safetensors *st = fm_safetensors_open(path);
  const char *err = fm_last_error();
  char msg[256];
  snprintf(msg, sizeof msg, "refused: %s (\"%s\")", tag, word);
  if (!ok(!st && strstr(err, word) && strstr(err, path), msg)) printf("# got: %s\n", st ? "(opened)" : err);
  fm_safetensors_close(st);
}

static void test_malformed(void) {
  const char *p;
  p = tmp_path("empty"); write_bytes(p, "", 0); refused("empty file", p, "empty");
  p = tmp_path("short"); write_bytes(p, "\x08\0\0\0\0", 5); refused("5-byte file", p, "too short");
  uint8_t hdr[24] = {0};
  uint64_t len = 1000;
  memcpy(hdr, &len, 8);
  memcpy(hdr + 8, "{}", 2);
  p = tmp_path("hlen_big"); write_bytes(p, hdr, sizeof hdr); refused("header length past the file", p, "larger than the file");
  len = 200000000;
  memcpy(hdr, &len, 8);
  p = tmp_path("hlen_huge"); write_bytes(p, hdr, sizeof hdr); refused("header length over 100 MB", p, "100 MB");
  len = UINT64_MAX;
  memcpy(hdr, &len, 8);
  p = tmp_path("hlen_max"); write_bytes(p, hdr, sizeof hdr); refused("header length 2^64-1", p, "100 MB");
  refused("missing file", "/tmp/fmseg-no-such-file.safetensors", "cannot open");
  refused("a directory", "/tmp", "not a regular file");

  static const char ent[] = "\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]";
  char buf[512], tag[16];
  struct { const char *tag, *header, *word; } cases[] = {
    {"header length 0", "", "not valid JSON"},
    {"not JSON", "{\"a\": ", "not valid JSON"},
    {"not JSON at all", "hello world", "not valid JSON"},
    {"JSON array", "[1, 2]", "not a JSON object"},
    {"JSON string", "\"x\"", "not a JSON object"},
    {"trailing garbage", "{} xyz", "trailing"},
    {"entry is a number", "{\"a\": 5}", "entry is not a JSON object"},
    {"entry is a list", "{\"a\": [0, 8]}", "entry is not a JSON object"},
    {"missing dtype", "{\"a\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", "missing \"dtype\""},
    {"missing shape", "{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", "missing \"shape\""},
    {"missing data_offsets", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2]}}", "missing \"data_offsets\""},
    {"dtype not a string", "{\"a\": {\"dtype\": 4, \"shape\": [2], \"data_offsets\": [0, 8]}}", "\"dtype\" is not a string"},
    {"unknown dtype", "{\"a\": {\"dtype\": \"F99\", \"shape\": [2], \"data_offsets\": [0, 8]}}", "unknown dtype \"F99\""},
    {"lower-case dtype", "{\"a\": {\"dtype\": \"f32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", "unknown dtype"},
    {"shape not a list", "{\"a\": {\"dtype\": \"F32\", \"shape\": 2, \"data_offsets\": [0, 8]}}", "\"shape\" is not a list"},
    {"negative dim", "{\"a\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}", "shape[0] is not a non-negative integer"},
    {"fractional dim", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1, 2.5], \"data_offsets\": [0, 8]}}", "shape[1] is not a non-negative integer"},
    {"string dim", "{\"a\": {\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [0, 8]}}", "shape[0] is not"},
    {"null dim", "{\"a\": {\"dtype\": \"F32\", \"shape\": [null], \"data_offsets\": [0, 8]}}", "shape[0] is not"},
    {"numel overflows", "{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 8]}}", "overflow"},
    {"bytes overflow", "{\"a\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904], \"data_offsets\": [0, 8]}}", "overflow"},
    {"dim too large for int64", "{\"a\": {\"dtype\": \"U8\", \"shape\": [1e30], \"data_offsets\": [0, 8]}}", "shape[0] is not"},
    {"one offset", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8]}}", "data_offsets must be two"},
    {"three offsets", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8, 16]}}", "data_offsets must be two"},
    {"offsets not a list", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": 0}}", "data_offsets must be two"},
    {"string offset", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [\"0\", 8]}}", "data_offsets must be two"},
    {"negative offset", "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [-8, -8]}}", "data_offsets must be two"},
    {"fractional offset", "{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0.5, 1.5]}}", "data_offsets must be two"},
    {"decreasing offsets", "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}", "decrease"},
    {"offsets past the end", "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", "past the end"},
    {"begin past the end", "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [12, 12]}}", "past the end"},
    {"huge offsets", "{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [9007199254740992, 9007199254740993]}}", "past the end"},
    {"length != numel * size", "{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", "need 12 bytes"},
    {"length short for dtype", "{\"a\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 8]}}", "need 16 bytes"},
    {"scalar with 0 bytes", "{\"a\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [0, 0]}}", "need 4 bytes"},
    {"overlapping tensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}, "
                            "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", "overlap"},
    {"tensor inside another", "{\"a\": {\"dtype\": \"U8\", \"shape\": [8], \"data_offsets\": [0, 8]}, "
                              "\"b\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [2, 4]}}", "overlap"},
    {"duplicate name", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                       "\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", "appears twice"},
    {"__metadata__ not an object", "{\"__metadata__\": 5}", "\"__metadata__\" is not a JSON object"},
    {"__metadata__ value not a string", "{\"__metadata__\": {\"format\": 1}}", "\"__metadata__\" value \"format\" is not a string"},
    {"__metadata__ twice", "{\"__metadata__\": {}, \"__metadata__\": {}}", "\"__metadata__\" appears twice"},
  };
  uint8_t data[8] = {0};
  for (size_t k = 0; k < sizeof cases / sizeof *cases; ++k) {
    snprintf(tag, sizeof tag, "bad%zu", k);
    p = tmp_path(tag);
    write_st(p, cases[k].header, data, sizeof data);
    refused(cases[k].tag, p, cases[k].word);
  }
  /* The good twin of the cases above opens: the checks are not just refusing everything. */
  snprintf(buf, sizeof buf, "{\"a\": {%s}, \"b\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [4, 4]}}", ent);
  p = tmp_path("good");
  write_st(p, buf, data, sizeof data);
  fm_safetensors *st = fm_safetensors_open(p);
  ok(st && fm_safetensors_count(st) == 2, "well-formed twin opens (a zero-size tensor inside another is no overlap)");
  if (!st) diag(fm_last_error());
  fm_safetensors_close(st);
}

/* ---- fixtures: clip-tiny in fp32 and fp16 ------------------------------- */

static void skip_or_fail(const char *why) {
  if (getenv("CI")) {
    ok(0, why);
    return;
  }
  skip(why);
}

static void test_fixtures(void) {
  const char *root = getenv("FMSEG_FIXTURES");
  char p32[1024], p16[1024];
  snprintf(p32, sizeof p32, "%s/clip-tiny/model.safetensors", root ? root : "../shared/fixtures");
  snprintf(p16, sizeof p16, "%s/clip-tiny/model.fp16.safetensors", root ? root : "../shared/fixtures");
  struct stat sb;
  if (stat(p32, &sb) != 0 || stat(p16, &sb) != 0) {
    char why[1100];
    snprintf(why, sizeof why, "fixtures missing: %s", p32);
    skip_or_fail(why);
    return;
  }
  fm_safetensors *s32 = fm_safetensors_open(p32), *s16 = fm_safetensors_open(p16);
  ok(s32 && s16, "open clip-tiny model.safetensors and model.fp16.safetensors");
  if (!s32 || !s16) {
    diag(fm_last_error());
    fm_safetensors_close(s32);
    fm_safetensors_close(s16);
    return;
  }
  int64_t n = fm_safetensors_count(s32), loaded = 0, agreed = 0, zero_copy = 0;
  double worst = 0;
  const char *worst_name = "";
  for (int64_t i = 0; i < n; ++i) {
    const char *name = fm_safetensors_name(s32, i);
    fm_tensor *a = fm_safetensors_get(s32, name), *h = fm_safetensors_get(s16, name);
    int same_shape = a && h && a->ndim == h->ndim && a->ndim == fm_safetensors_ndim(s32, i);
    for (int32_t d = 0; same_shape && d < a->ndim; ++d)
      same_shape = a->dims[d] == h->dims[d] && a->dims[d] == fm_safetensors_dim(s32, i, d);
    if (!same_shape) {
      printf("# %s: %s\n", name, fm_last_error());
    } else {
      ++loaded;
      zero_copy += a->readonly;
      double e = a->type == FM_F32 ? rel_err(fm__f32(h), fm__f32(a), (long)fm_tensor_numel(a)) : 0;
      if (e > worst) worst = e, worst_name = name;
      agreed += e <= 1e-3;
    }
    fm_tensor_release(a);
    fm_tensor_release(h);
  }
  char msg[256];
  snprintf(msg, sizeof msg, "all %lld fp32 tensors load, with the same shapes in fp16", (long long)n);
  ok(n > 0 && loaded == n && fm_safetensors_count(s16) == n, msg);
  snprintf(msg, sizeof msg, "fp16 and fp32 agree to 1e-3 relative (worst %.2e, %s)", worst, worst_name);
  ok(agreed == n, msg);
  ok(zero_copy == n, "every fp32 fixture tensor is a zero-copy view");
  ok(strstr(fm_safetensors_metadata(s32), "\"format\"") != NULL, "fixture __metadata__ readable");
  fm_safetensors_close(s32);
  fm_safetensors_close(s16);
}

int main(void) {
  test_round_trip();
  test_save_errors();
  test_conversions();
  test_malformed();
  test_fixtures();
  for (int i = 0; i < ntmp && i < 128; ++i) unlink(tmp_paths[i]);
  return done_testing();
}
