/* draw.c — label overlays, rectangles and bitmap text (stb_easy_font) on
 * (H, W, 3) uint8 images, for outputs a person can look at. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* A third-party header: silence its own warnings. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-braces"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb_easy_font.h>
#pragma GCC diagnostic pop

static bool fm__check_rgb(const fm_tensor *img, const char *what) {
  char s[128];
  if (!img || img->type != FM_U8 || img->ndim != 3 || img->dims[2] != 3)
    return fm__error("%s: expected an (H, W, 3) uint8 image, got %s", what,
                     img ? fm__shape_str(img, s, sizeof s) : "NULL"), false;
  return fm__check_contiguous(img, what) && fm__check_writable(img, what);
}

int fm_draw_blend_labels(fm_tensor *img, const fm_tensor *labels, const uint8_t *palette,
                         int32_t ncolors, float alpha) {
  if (!fm__check_rgb(img, "blend_labels: img")) return -1;
  if (!labels || labels->ndim != 2 || labels->dims[0] != img->dims[0] ||
      labels->dims[1] != img->dims[1] || (labels->type != FM_U8 && labels->type != FM_I32))
    return fm__error("blend_labels: labels must be (H, W) uint8/int32 matching the image");
  if (!fm__check_contiguous(labels, "blend_labels: labels")) return -1;
  int64_t n = img->dims[0] * img->dims[1];
  uint8_t *px = img->data;
  for (int64_t i = 0; i < n; ++i) {
    int64_t l = labels->type == FM_U8 ? ((const uint8_t *)labels->data)[i]
                                      : ((const int32_t *)labels->data)[i];
    if (l < 0 || l >= ncolors) continue;
    for (int c = 0; c < 3; ++c) {
      float v = (1.f - alpha) * px[3 * i + c] + alpha * palette[3 * l + c];
      px[3 * i + c] = (uint8_t)lrintf(v < 0 ? 0 : v > 255 ? 255 : v);
    }
  }
  return 0;
}

int fm_draw_rect(fm_tensor *img, int64_t x0, int64_t y0, int64_t x1, int64_t y1,
                 uint8_t r, uint8_t g, uint8_t b) {
  if (!fm__check_rgb(img, "draw_rect: img")) return -1;
  int64_t h = img->dims[0], w = img->dims[1];
  if (x0 < 0) x0 = 0;
  if (y0 < 0) y0 = 0;
  if (x1 > w) x1 = w;
  if (y1 > h) y1 = h;
  uint8_t *px = img->data;
  for (int64_t y = y0; y < y1; ++y)
    for (int64_t x = x0; x < x1; ++x) {
      uint8_t *p = px + 3 * (y * w + x);
      p[0] = r, p[1] = g, p[2] = b;
    }
  return 0;
}

/* stb_easy_font emits quads of 4 vertices, 16 bytes each; a quad's first
 * and third vertices are opposite corners. */
typedef struct {
  float x, y, z;
  uint8_t color[4];
} fm__font_vertex;

int64_t fm_draw_text(fm_tensor *img, int64_t x, int64_t y, const char *text, int32_t scale,
                     uint8_t r, uint8_t g, uint8_t b) {
  if (!fm__check_rgb(img, "draw_text: img")) return -1;
  if (!text) return fm__error("draw_text: text is NULL");
  if (scale < 1) scale = 1;
  static _Thread_local fm__font_vertex quads[4 * 2000];
  char line[400];
  snprintf(line, sizeof line, "%s", text);
  int n = stb_easy_font_print(0, 0, line, NULL, quads, (int)sizeof quads);
  for (int q = 0; q < n; ++q) {
    const fm__font_vertex *a = &quads[4 * q], *c = &quads[4 * q + 2];
    fm_draw_rect(img, x + (int64_t)a->x * scale, y + (int64_t)a->y * scale,
                 x + (int64_t)c->x * scale, y + (int64_t)c->y * scale, r, g, b);
  }
  return (int64_t)stb_easy_font_width(line) * scale;
}

int64_t fm_text_width(const char *text, int32_t scale) {
  char line[400];
  snprintf(line, sizeof line, "%s", text ? text : "");
  return (int64_t)stb_easy_font_width(line) * (scale < 1 ? 1 : scale);
}
