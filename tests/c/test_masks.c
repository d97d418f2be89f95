/* test_masks.c — mask operations against answers worked out by hand (the
 * reasoning is in the comments) and against naive versions: flood fill for
 * connected components, brute-force nearest background pixel for the
 * distance transform, direct window scans for morphology. */
#include "fmseg.h"
#include "tap.h"

#include <stdint.h>
#include <string.h>

static fm_tensor *u8(int64_t h, int64_t w, const uint8_t *v) {
  int64_t shape[2] = { h, w };
  fm_tensor *t = fm_tensor_new(FM_U8, 2, shape);
  if (v) memcpy(t->data, v, (size_t)(h * w));
  return t;
}

static fm_tensor *f32(int32_t ndim, const int64_t *shape, const float *v) {
  fm_tensor *t = fm_tensor_new(FM_F32, ndim, shape);
  if (v) memcpy(t->data, v, sizeof(float) * (size_t)fm_tensor_numel(t));
  return t;
}

static fm_tensor *i32(int64_t n, const int32_t *v) {
  fm_tensor *t = fm_tensor_new(FM_I32, 1, &n);
  if (v) memcpy(t->data, v, sizeof(int32_t) * (size_t)n);
  return t;
}

static int same_i32(const fm_tensor *t, const int32_t *want, int64_t n) {
  if (fm_tensor_numel(t) != n) return 0;
  for (int64_t i = 0; i < n; ++i)
    if (((const int32_t *)t->data)[i] != want[i]) return 0;
  return 1;
}

static int same_u8(const fm_tensor *t, const uint8_t *want, int64_t n) {
  return fm_tensor_numel(t) == n && memcmp(t->data, want, (size_t)n) == 0;
}

static int near_f32(const fm_tensor *t, const float *want, int64_t n, float tol) {
  for (int64_t i = 0; i < n; ++i) {
    float g = ((const float *)t->data)[i];
    if (!(fabsf(g - want[i]) <= tol) && !(isinf(g) && isinf(want[i]))) return 0;
  }
  return 1;
}

static void random_mask(uint8_t *m, int64_t n, float density) {
  for (int64_t i = 0; i < n; ++i) m[i] = (frand() * 0.5f + 0.5f) < density;
}

/* ---- label maps ---------------------------------------------------------------- */

static void test_argmax_threshold(void) {
  /* C = 3, H = 1, W = 4: pixel 0 -> channel 2, pixel 1 -> 0, pixel 2 ties
   * channels 1 and 2 -> first (1), pixel 3 all equal -> 0 */
  const float x[12] = { 0, 5, 1, 7,    1, 2, 3, 7,    2, 1, 3, 7 };
  int64_t sx[3] = { 3, 1, 4 }, so[2] = { 1, 4 };
  fm_tensor *t = f32(3, sx, x);
  fm_tensor *out = fm_tensor_new(FM_I32, 2, so);
  const int32_t want[4] = { 2, 0, 1, 0 };
  ok(fm_argmax_channels(out, t) == 0 && same_i32(out, want, 4), "argmax_channels: first maximal channel");
  fm_tensor *m = fm_tensor_new(FM_U8, 3, sx);
  const uint8_t wantm[12] = { 0, 1, 0, 1,  0, 0, 1, 1,  0, 0, 1, 1 };
  ok(fm_threshold(m, t, 2.0f) == 0 && same_u8(m, wantm, 12), "threshold: strictly greater");
  ok(fm_argmax_channels(m, t) != 0 && strstr(fm_last_error(), "argmax_channels: out"),
     "argmax_channels: wrong out dtype is an error");
  fm_tensor_release(t), fm_tensor_release(out), fm_tensor_release(m);
}

/* ---- connected components ------------------------------------------------------ */

static void test_components_by_hand(void) {
  /* 4 x 5; with 8-connectivity the diagonal steps join {a, b} and {c};
   * with 4-connectivity they do not.
   *   1 1 0 0 1      a a . . c
   *   0 0 1 0 1      . . b . c
   *   0 0 0 0 0
   *   1 0 0 1 1      d . . e e                                    */
  const uint8_t m[20] = { 1, 1, 0, 0, 1,  0, 0, 1, 0, 1,  0, 0, 0, 0, 0,  1, 0, 0, 1, 1 };
  fm_tensor *mask = u8(4, 5, m);
  int64_t shape[2] = { 4, 5 };
  fm_tensor *lab = fm_tensor_new(FM_I32, 2, shape);
  /* 8: a+b first (block (0,0)), then c (block (0,2)), d (block (1,0)), e */
  const int32_t want8[20] = { 1, 1, 0, 0, 2,  0, 0, 1, 0, 2,  0, 0, 0, 0, 0,  3, 0, 0, 4, 4 };
  ok(fm_connected_components(lab, mask, 8) == 4 && same_i32(lab, want8, 20), "components: 8-connected");
  /* 4: numbered by first pixel in raster order: a, c, b, d, e */
  const int32_t want4[20] = { 1, 1, 0, 0, 2,  0, 0, 3, 0, 2,  0, 0, 0, 0, 0,  4, 0, 0, 5, 5 };
  ok(fm_connected_components(lab, mask, 4) == 5 && same_i32(lab, want4, 20), "components: 4-connected");
  int64_t n6 = 6;
  fm_tensor *areas = fm_tensor_new(FM_I32, 1, &n6);
  const int32_t want_areas[6] = { 12, 2, 2, 1, 1, 2 };
  ok(fm_label_areas(areas, lab) == 0 && same_i32(areas, want_areas, 6), "label_areas");
  ok(fm_connected_components(lab, mask, 6) < 0 && strstr(fm_last_error(), "4 or 8"),
     "components: connectivity 6 is an error");
  fm_tensor_release(mask), fm_tensor_release(areas);

  /* Numbering follows OpenCV 4.6 (observed with cv2.connectedComponents):
   * 8-connectivity numbers by 2x2 blocks in raster order, 4 by pixels.
   *   0 0 0 1   the lower-left pixel's block (0,0) comes before the
   *   1 0 0 0   upper-right one's (0,1): label 1 with 8, label 2 with 4 */
  const uint8_t m2[8] = { 0, 0, 0, 1,  1, 0, 0, 0 };
  const int32_t want2_8[8] = { 0, 0, 0, 2,  1, 0, 0, 0 };
  const int32_t want2_4[8] = { 0, 0, 0, 1,  2, 0, 0, 0 };
  int64_t s2[2] = { 2, 4 };
  fm_tensor *mask2 = u8(2, 4, m2), *lab2 = fm_tensor_new(FM_I32, 2, s2);
  ok(fm_connected_components(lab2, mask2, 8) == 2 && same_i32(lab2, want2_8, 8), "components: block order (8)");
  ok(fm_connected_components(lab2, mask2, 4) == 2 && same_i32(lab2, want2_4, 8), "components: raster order (4)");
  fm_tensor_release(lab), fm_tensor_release(mask2), fm_tensor_release(lab2);
}

/* Flood fill from every unlabelled set pixel in raster order. */
static int64_t naive_components(int32_t *lab, const uint8_t *m, int64_t h, int64_t w, int conn) {
  int64_t *stack = malloc(sizeof(int64_t) * (size_t)(h * w + 1));
  memset(lab, 0, sizeof(int32_t) * (size_t)(h * w));
  int32_t n = 0;
  for (int64_t s = 0; s < h * w; ++s) {
    if (!m[s] || lab[s]) continue;
    int64_t top = 0;
    stack[top++] = s;
    lab[s] = ++n;
    while (top) {
      int64_t i = stack[--top], y = i / w, x = i % w;
      for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) {
          if ((!dy && !dx) || (conn == 4 && dy && dx)) continue;
          int64_t yy = y + dy, xx = x + dx;
          if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
          int64_t j = yy * w + xx;
          if (m[j] && !lab[j]) lab[j] = n, stack[top++] = j;
        }
    }
  }
  free(stack);
  return n;
}

static void test_components_random(void) {
  const int64_t h = 37, w = 53, hw = h * w;
  uint8_t *m = malloc(hw);
  int32_t *ref = malloc(sizeof(int32_t) * hw);
  int64_t shape[2] = { h, w };
  fm_tensor *lab = fm_tensor_new(FM_I32, 2, shape);
  int partition_ok = 1, order_ok = 1;
  for (int trial = 0; trial < 20; ++trial) {
    random_mask(m, hw, 0.3f + 0.02f * trial);
    fm_tensor *mask = u8(h, w, m);
    for (int conn = 4; conn <= 8; conn += 4) {
      int64_t nref = naive_components(ref, m, h, w, conn);
      int64_t n = fm_connected_components(lab, mask, conn);
      const int32_t *l = lab->data;
      /* same partition: a bijection between the two numberings */
      int32_t *to_ref = calloc((size_t)n + 1, sizeof(int32_t));
      int32_t *to_ours = calloc((size_t)nref + 1, sizeof(int32_t));
      if (n != nref) partition_ok = 0;
      for (int64_t i = 0; i < hw && partition_ok; ++i) {
        if ((l[i] == 0) != (ref[i] == 0) || l[i] > n || ref[i] > nref) { partition_ok = 0; break; }
        if (!l[i]) continue;
        if (!to_ref[l[i]]) to_ref[l[i]] = ref[i];
        if (!to_ours[ref[i]]) to_ours[ref[i]] = l[i];
        if (to_ref[l[i]] != ref[i] || to_ours[ref[i]] != l[i]) partition_ok = 0;
      }
      /* numbering: the scan (2x2 blocks for 8, pixels for 4) meets
       * labels 1, 2, 3, ... in order */
      int32_t seen = 0;
      int64_t b = conn == 8 ? 2 : 1;
      for (int64_t by = 0; by < h; by += b)
        for (int64_t bx = 0; bx < w; bx += b)
          for (int64_t dy = 0; dy < b && by + dy < h; ++dy)
            for (int64_t dx = 0; dx < b && bx + dx < w; ++dx) {
              int32_t v = l[(by + dy) * w + bx + dx];
              if (v > seen + 1) order_ok = 0;
              if (v == seen + 1) ++seen;
            }
      free(to_ref), free(to_ours);
    }
    fm_tensor_release(mask);
  }
  ok(partition_ok, "components: same regions as a flood fill (random masks, 4 and 8)");
  ok(order_ok, "components: numbered in scan order (blocks for 8, pixels for 4)");
  free(m), free(ref), fm_tensor_release(lab);
}

/* ---- remove_small_regions ------------------------------------------------------- */

static void test_small_regions(void) {
  /* 5 x 6 mask: a ring with a 1-pixel hole at (1,1)... and a 2-pixel hole
   * at (1,3),(1,4); a lone island pixel at (4,0); the background outside
   * the ring touches the border (holes mode: one component of 8 pixels).
   *   1 1 1 1 1 1
   *   1 0 1 0 0 1
   *   1 1 1 1 1 1
   *   0 0 0 0 0 0
   *   1 0 0 0 0 0          */
  const uint8_t m[30] = { 1, 1, 1, 1, 1, 1,  1, 0, 1, 0, 0, 1,  1, 1, 1, 1, 1, 1,
                          0, 0, 0, 0, 0, 0,  1, 0, 0, 0, 0, 0 };
  fm_tensor *mask = u8(5, 6, m), *out = u8(5, 6, NULL);
  /* holes < 2: only the 1-pixel hole is filled */
  uint8_t want[30];
  memcpy(want, m, 30);
  want[7] = 1;
  ok(fm_remove_small_regions(out, mask, 2, FM_HOLES) == 1 && same_u8(out, want, 30),
     "remove_small_regions holes: fills the hole below the threshold");
  /* holes < 12: both holes (1 and 2 px) and the outer background (11 px:
   * the 6 of row 3 and 5 of row 4, one component) — everything becomes 1 */
  uint8_t all[30];
  memset(all, 1, 30);
  ok(fm_remove_small_regions(out, mask, 12, FM_HOLES) == 1 && same_u8(out, all, 30),
     "remove_small_regions holes: a small outer background is a hole too");
  /* islands < 2: the lone pixel goes, the 15-pixel ring stays */
  memcpy(want, m, 30);
  want[24] = 0;
  ok(fm_remove_small_regions(out, mask, 2, FM_ISLANDS) == 1 && same_u8(out, want, 30),
     "remove_small_regions islands: drops the small island");
  /* islands < 100: all small -> keep the largest (the ring) */
  ok(fm_remove_small_regions(out, mask, 100, FM_ISLANDS) == 1 && same_u8(out, want, 30),
     "remove_small_regions islands: all small keeps the largest");
  /* islands < 1: nothing small -> unchanged, reported as such */
  ok(fm_remove_small_regions(out, mask, 1, FM_ISLANDS) == 0 && same_u8(out, m, 30),
     "remove_small_regions: nothing small returns the mask unchanged");
  /* two equal islands, all small: np.argmax keeps the first label */
  const uint8_t two[6] = { 1, 0, 1,  1, 0, 1 };
  const uint8_t first[6] = { 1, 0, 0,  1, 0, 0 };
  fm_tensor *mt = u8(2, 3, two), *ot = u8(2, 3, NULL);
  ok(fm_remove_small_regions(ot, mt, 5, FM_ISLANDS) == 1 && same_u8(ot, first, 6),
     "remove_small_regions islands: ties keep the first label");
  /* aliasing out = mask */
  ok(fm_remove_small_regions(mt, mt, 5, FM_ISLANDS) == 1 && same_u8(mt, first, 6),
     "remove_small_regions: out may alias mask");
  ok(fm_remove_small_regions(out, mask, 2, 7) < 0 && strstr(fm_last_error(), "mode"),
     "remove_small_regions: bad mode is an error");
  fm_tensor_release(mask), fm_tensor_release(out), fm_tensor_release(mt), fm_tensor_release(ot);
}

/* ---- RLE ------------------------------------------------------------------------- */

static void test_rle(void) {
  /* 2 x 3, column-major: col 0 = (0, 1), col 1 = (1, 1), col 2 = (1, 0)
   *   0 1 1
   *   1 1 0   -> 0 | 1 1 1 1 | 0 -> counts [1, 4, 1], area 4 */
  const uint8_t m[6] = { 0, 1, 1,  1, 1, 0 };
  fm_tensor *mask = u8(2, 3, m);
  fm_tensor *c = fm_rle_encode(mask);
  const int32_t want[3] = { 1, 4, 1 };
  ok(c && same_i32(c, want, 3), "rle_encode: column-major runs");
  ok(fm_rle_area(c) == 4, "rle_area");
  fm_tensor *back = u8(2, 3, NULL);
  ok(fm_rle_decode(back, c) == 0 && same_u8(back, m, 6), "rle_decode: round trip");
  char *s = fm_rle_to_string(c);
  ok(s && strcmp(s, "141") == 0, "rle_to_string: small counts are one character each");
  fm_free(s);
  fm_tensor_release(c);

  /* first pixel set: counts start with a zero run */
  const uint8_t m1[4] = { 1, 0,  0, 0 };
  fm_tensor *mask1 = u8(2, 2, m1);
  c = fm_rle_encode(mask1);
  const int32_t want1[3] = { 0, 1, 3 };
  ok(c && same_i32(c, want1, 3), "rle_encode: set first pixel gives a leading 0");
  fm_tensor_release(c);

  /* The compressed string of [100, 50, 200, 70, 10] by rleToString's rules:
   * 100 = 3*32 + 4: groups 4 (more: +32 -> 36 -> 'T'), 3 -> '3'
   * 50 = 1*32 + 18: 18 has the sign bit 0x10, so more: 50 -> 'b', 1 -> '1'
   * 200 (third count, no delta) = 6*32 + 8: 40 -> 'X', 6 -> '6'
   * 70 - 50 = 20: 0x10 set, rest 0 != -1: 52 -> 'd', then 0 -> '0'
   * 10 - 200 = -190 = -6*32 + 2: 34 -> 'R'; -6 = -1*32 + 26: 26 has 0x10
   * and the rest is -1: stop -> 74 -> 'J' */
  const int32_t big[5] = { 100, 50, 200, 70, 10 };
  fm_tensor *cb = i32(5, big);
  s = fm_rle_to_string(cb);
  ok(s && strcmp(s, "T3b1X6d0RJ") == 0, "rle_to_string: deltas and negative groups by hand");
  fm_tensor *parsed = fm_rle_from_string("T3b1X6d0RJ");
  ok(parsed && same_i32(parsed, big, 5), "rle_from_string: inverse of the example");
  fm_free(s);
  fm_tensor_release(cb), fm_tensor_release(parsed);

  ok(fm_rle_from_string("T") == NULL && strstr(fm_last_error(), "ends inside"),
     "rle_from_string: truncated string is an error");
  ok(fm_rle_from_string("1 4") == NULL && strstr(fm_last_error(), "outside"),
     "rle_from_string: bad character is an error");
  const int32_t wrong[2] = { 3, 2 };
  fm_tensor *cw = i32(2, wrong);
  ok(fm_rle_decode(back, cw) < 0 && strstr(fm_last_error(), "add up to 5"),
     "rle_decode: counts not covering the mask are an error");
  fm_tensor_release(cw);

  /* random round trips, mask -> counts -> string -> counts -> mask, and
   * painting equals decoding */
  const int64_t h = 23, w = 31;
  uint8_t *r = malloc(h * w);
  int trips = 1, painted = 1;
  fm_tensor *rb = u8(h, w, NULL);
  int64_t shape[2] = { h, w };
  fm_tensor *lab = fm_tensor_new(FM_I32, 2, shape);
  for (int t = 0; t < 30; ++t) {
    random_mask(r, h * w, t < 2 ? (float)t : 0.1f + 0.03f * t);   /* all 0, all 1, mixed */
    fm_tensor *rm = u8(h, w, r);
    fm_tensor *rc = fm_rle_encode(rm);
    char *rs = fm_rle_to_string(rc);
    fm_tensor *rc2 = fm_rle_from_string(rs);
    int64_t area = 0;
    for (int64_t i = 0; i < h * w; ++i) area += r[i];
    trips &= rc2 && same_i32(rc2, rc->data, rc->dims[0]) && fm_rle_decode(rb, rc2) == 0 &&
             same_u8(rb, r, h * w) && fm_rle_area(rc) == area;
    fm_tensor_fill_(lab, -1);
    fm_rle_paint(lab, rc, 7);
    for (int64_t i = 0; i < h * w; ++i) painted &= ((int32_t *)lab->data)[i] == (r[i] ? 7 : -1);
    fm_free(rs);
    fm_tensor_release(rm), fm_tensor_release(rc), fm_tensor_release(rc2);
  }
  ok(trips, "rle: random masks survive encode -> string -> decode");
  ok(painted, "rle_paint: writes exactly the set pixels");
  free(r);
  fm_tensor_release(rb), fm_tensor_release(lab), fm_tensor_release(mask), fm_tensor_release(mask1);
  fm_tensor_release(back);
}

/* ---- boxes, IoU, NMS -------------------------------------------------------------- */

static void test_boxes(void) {
  /* mask 0: pixels (row 1, col 2) and (row 3, col 0) -> XYXY (0, 1, 2, 3);
   * mask 1: empty -> zeros; mask 2: the single pixel (0, 4) -> (4, 0, 4, 0) */
  int64_t sm[3] = { 3, 4, 5 }, sb[2] = { 3, 4 };
  fm_tensor *masks = fm_tensor_new(FM_U8, 3, sm);
  uint8_t *p = masks->data;
  p[1 * 5 + 2] = 1, p[3 * 5 + 0] = 1, p[40 + 4] = 1;
  fm_tensor *boxes = fm_tensor_new(FM_F32, 2, sb);
  const float want[12] = { 0, 1, 2, 3,  0, 0, 0, 0,  4, 0, 4, 0 };
  ok(fm_masks_to_boxes(boxes, masks) == 0 && near_f32(boxes, want, 12, 0), "masks_to_boxes");
  const float wxywh[12] = { 0, 1, 2, 2,  0, 0, 0, 0,  4, 0, 0, 0 };
  ok(fm_boxes_xyxy_to_xywh(boxes, boxes) == 0 && near_f32(boxes, wxywh, 12, 0), "boxes_xyxy_to_xywh (in place)");
  fm_tensor_release(masks), fm_tensor_release(boxes);

  /* IoU: [0,0,2,2] vs [1,1,3,3]: inter 1, union 4 + 4 - 1 = 7 */
  const float a[8] = { 0, 0, 2, 2,  0, 0, 1, 1 };
  const float b[4] = { 1, 1, 3, 3 };
  int64_t s2[2] = { 2, 4 }, s1[2] = { 1, 4 }, so[2] = { 2, 1 };
  fm_tensor *ta = f32(2, s2, a), *tb = f32(2, s1, b), *iou = fm_tensor_new(FM_F32, 2, so);
  const float wiou[2] = { 1.f / 7.f, 0 };
  ok(fm_box_iou(iou, ta, tb) == 0 && near_f32(iou, wiou, 2, 1e-7f), "box_iou");
  fm_tensor_release(ta), fm_tensor_release(tb), fm_tensor_release(iou);

  /* NMS: box 0 [0,0,10,10] s .5; box 1 [1,1,11,11] s .9 (IoU with 0:
   * 81 / 119 = .68); box 2 [0,0,10,9] s .7 (IoU with 0: 90/100 = .9, with
   * 1: 72 / (100 + 90 - 72) = .61); box 3 [20,20,30,30] s .7 (a tie with
   * box 2: lower index first).
   * thr .65: keep 1 (drops 0), then 2 (.61 <= .65), then 3 -> [1, 2, 3]
   * thr .6: keep 1, drop 0 and 2, keep 3 -> [1, 3] */
  const float nb[16] = { 0, 0, 10, 10,  1, 1, 11, 11,  0, 0, 10, 9,  20, 20, 30, 30 };
  const float ns[4] = { .5f, .9f, .7f, .7f };
  int64_t snb[2] = { 4, 4 }, sn = 4;
  fm_tensor *tbx = f32(2, snb, nb), *tsc = f32(1, &sn, ns), *keep = fm_tensor_new(FM_I32, 1, &sn);
  const int32_t k1[3] = { 1, 2, 3 }, k2[2] = { 1, 3 };
  ok(fm_nms(keep, tbx, tsc, NULL, 0.65) == 3 && memcmp(keep->data, k1, sizeof k1) == 0, "nms: threshold .65");
  ok(fm_nms(keep, tbx, tsc, NULL, 0.6) == 2 && memcmp(keep->data, k2, sizeof k2) == 0, "nms: threshold .6");
  /* categories: box 0 alone in category 1 survives */
  const int32_t cats[4] = { 1, 0, 0, 0 };
  fm_tensor *tc = i32(4, cats);
  const int32_t k3[3] = { 1, 3, 0 };
  ok(fm_nms(keep, tbx, tsc, tc, 0.6) == 3 && memcmp(keep->data, k3, sizeof k3) == 0,
     "nms: categories do not suppress each other; kept by score");
  /* equal scores: visiting order is the index order (stable sort) */
  const float eq[4] = { .5f, .5f, .5f, .5f };
  fm_tensor *teq = f32(1, &sn, eq);
  const int32_t k4[2] = { 0, 3 };
  ok(fm_nms(keep, tbx, teq, NULL, 0.6) == 2 && memcmp(keep->data, k4, sizeof k4) == 0,
     "nms: ties keep the lower index");
  fm_tensor_release(tbx), fm_tensor_release(tsc), fm_tensor_release(keep);
  fm_tensor_release(tc), fm_tensor_release(teq);
}

/* ---- stability, crop edges ------------------------------------------------------ */

static void test_stability_and_edges(void) {
  /* mask 0: > 1 : {2, 1.5} = 2 (1.0 is not > 1); > -1 : 5 of 6 -> 0.4
   * mask 1: everything <= -1 -> 0 / 0 = NaN */
  const float l[12] = { 2, .5f, -.5f, -2, 1, 1.5f,   -1, -3, -1, -2, -5, -1 };
  int64_t sl[3] = { 2, 2, 3 }, n = 2;
  fm_tensor *logits = f32(3, sl, l), *s = fm_tensor_new(FM_F32, 1, &n);
  ok(fm_stability_score(s, logits, 0.0, 1.0) == 0 && fabsf(((float *)s->data)[0] - 0.4f) < 1e-7f,
     "stability_score: 2 / 5");
  ok(isnan(((float *)s->data)[1]), "stability_score: empty union gives NaN");
  /* threshold 1, offset .5: > 1.5 : {2} = 1; > .5 : {2, 1, 1.5} = 3 */
  ok(fm_stability_score(s, logits, 1.0, 0.5) == 0 && fabsf(((float *)s->data)[0] - 1.f / 3.f) < 1e-7f,
     "stability_score: other threshold and offset");
  fm_tensor_release(logits), fm_tensor_release(s);

  /* crop [100, 0, 300, 200] of a 400 x 200 image, atol 20:
   * [0, 50, 50, 100] -> [100, 50, 150, 100]: x0 on the crop edge -> near
   * [10, 0, 50, 199] -> [110, 0, 150, 199]: x0 within 10 of 100 -> near
   * [40, 0, 150, 199] -> [140, 0, 250, 199]: y0, y1 are on image edges
   *   too, x0, x1 far from the crop's -> not near
   * [185, 10, 199, 100] -> [285, ...299]: x1 near crop x1 300 -> near */
  const float b[16] = { 0, 50, 50, 100,  10, 0, 50, 199,  40, 0, 150, 199,  185, 10, 199, 100 };
  int64_t sb[2] = { 4, 4 }, nb = 4;
  fm_tensor *boxes = f32(2, sb, b), *near = fm_tensor_new(FM_U8, 1, &nb);
  const double crop[4] = { 100, 0, 300, 200 }, orig[4] = { 0, 0, 400, 200 };
  const uint8_t want[4] = { 1, 1, 0, 1 };
  ok(fm_boxes_near_crop_edge(near, boxes, crop, orig, 20.0) == 0 && same_u8(near, want, 4),
     "boxes_near_crop_edge");
  fm_tensor_release(boxes), fm_tensor_release(near);
}

/* ---- distance transform, morphology ------------------------------------------- */

static void test_distance(void) {
  /* one row 0 1 1 1 1: distances 0 1 2 3 4 (outside is not background) */
  const uint8_t row[5] = { 0, 1, 1, 1, 1 };
  fm_tensor *m = u8(1, 5, row), *d = fm_tensor_new(FM_F32, 2, m->dims);
  const float want[5] = { 0, 1, 2, 3, 4 };
  ok(fm_distance_transform(d, m) == 0 && near_f32(d, want, 5, 0), "distance_transform: one row");
  fm_tensor_release(m), fm_tensor_release(d);
  /* 3 x 3 with only (0, 0) unset: (2, 2) is sqrt(8) away, (1, 2) sqrt(5) */
  const uint8_t sq[9] = { 0, 1, 1,  1, 1, 1,  1, 1, 1 };
  m = u8(3, 3, sq), d = fm_tensor_new(FM_F32, 2, m->dims);
  const float want2[9] = { 0, 1, 2,  1, sqrtf(2), sqrtf(5),  2, sqrtf(5), sqrtf(8) };
  ok(fm_distance_transform(d, m) == 0 && near_f32(d, want2, 9, 1e-6f), "distance_transform: corner");
  fm_tensor_release(m), fm_tensor_release(d);
  /* no unset pixel: +inf */
  const uint8_t full[4] = { 1, 1, 1, 1 };
  m = u8(2, 2, full), d = fm_tensor_new(FM_F32, 2, m->dims);
  const float inf4[4] = { INFINITY, INFINITY, INFINITY, INFINITY };
  ok(fm_distance_transform(d, m) == 0 && near_f32(d, inf4, 4, 0), "distance_transform: no background is inf");
  fm_tensor_release(m), fm_tensor_release(d);

  /* random masks against the nearest unset pixel by brute force */
  const int64_t h = 29, w = 41;
  uint8_t *r = malloc(h * w);
  int good = 1;
  for (int t = 0; t < 6; ++t) {
    random_mask(r, h * w, 0.8f + 0.035f * t);
    m = u8(h, w, r), d = fm_tensor_new(FM_F32, 2, m->dims);
    fm_distance_transform(d, m);
    for (int64_t i = 0; i < h * w; ++i) {
      double best = INFINITY;
      for (int64_t j = 0; j < h * w; ++j) {
        if (r[j]) continue;
        double dy = (double)(i / w - j / w), dx = (double)(i % w - j % w);
        double e = sqrt(dy * dy + dx * dx);
        if (e < best) best = e;
      }
      float g = ((float *)d->data)[i];
      if (!(fabs(g - best) <= 1e-5 * (1 + best)) && !(isinf(g) && isinf(best))) good = 0;
    }
    fm_tensor_release(m), fm_tensor_release(d);
  }
  ok(good, "distance_transform: equals brute force on random masks");
  free(r);
}

static uint8_t naive_morph(const uint8_t *m, int64_t h, int64_t w, int64_t y, int64_t x,
                           int erode, int r, int cross) {
  int any = 0, all = 1;
  for (int dy = -r; dy <= r; ++dy)
    for (int dx = -r; dx <= r; ++dx) {
      if (cross && dy && dx) continue;
      int64_t yy = y + dy, xx = x + dx;
      if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
      any |= m[yy * w + xx] != 0;
      all &= m[yy * w + xx] != 0;
    }
  return (uint8_t)(erode ? all : any);
}

static void test_morphology(void) {
  /* a single pixel dilated by a radius-1 cross is a plus sign; by a square
   * a 3 x 3 block; the plus eroded by a radius-1 cross is the centre again */
  uint8_t dot[25] = { 0 };
  dot[12] = 1;
  fm_tensor *m = u8(5, 5, dot), *o = u8(5, 5, NULL), *o2 = u8(5, 5, NULL);
  const uint8_t plus[25] = { 0, 0, 0, 0, 0,  0, 0, 1, 0, 0,  0, 1, 1, 1, 0,  0, 0, 1, 0, 0,  0, 0, 0, 0, 0 };
  const uint8_t block[25] = { 0, 0, 0, 0, 0,  0, 1, 1, 1, 0,  0, 1, 1, 1, 0,  0, 1, 1, 1, 0,  0, 0, 0, 0, 0 };
  ok(fm_morphology(o, m, FM_DILATE, 1, FM_KERNEL_CROSS) == 0 && same_u8(o, plus, 25), "dilate: cross");
  ok(fm_morphology(o2, o, FM_ERODE, 1, FM_KERNEL_CROSS) == 0 && same_u8(o2, dot, 25), "erode: cross");
  ok(fm_morphology(o, m, FM_DILATE, 1, FM_KERNEL_SQUARE) == 0 && same_u8(o, block, 25), "dilate: square");
  ok(fm_morphology(m, m, FM_DILATE, 1, FM_KERNEL_SQUARE) < 0 && strstr(fm_last_error(), "alias"),
     "morphology: aliasing is an error");
  fm_tensor_release(m), fm_tensor_release(o), fm_tensor_release(o2);

  const int64_t h = 19, w = 27;
  uint8_t *r = malloc(h * w);
  int good = 1;
  for (int t = 0; t < 8; ++t) {
    random_mask(r, h * w, t & 1 ? 0.7f : 0.2f);
    m = u8(h, w, r), o = u8(h, w, NULL);
    for (int erode = 0; erode < 2; ++erode)
      for (int cross = 0; cross < 2; ++cross) {
        int rad = t % 4;
        fm_morphology(o, m, erode ? FM_ERODE : FM_DILATE, rad, cross ? FM_KERNEL_CROSS : FM_KERNEL_SQUARE);
        for (int64_t y = 0; y < h; ++y)
          for (int64_t x = 0; x < w; ++x)
            good &= ((uint8_t *)o->data)[y * w + x] == naive_morph(r, h, w, y, x, erode, rad, cross);
      }
    fm_tensor_release(m), fm_tensor_release(o);
  }
  ok(good, "morphology: equals direct window scans (radius 0..3, both kernels)");
  free(r);
}

int main(void) {
  test_argmax_threshold();
  test_components_by_hand();
  test_components_random();
  test_small_regions();
  test_rle();
  test_boxes();
  test_stability_and_edges();
  test_distance();
  test_morphology();
  return done_testing();
}
