/* test_clip_preprocess.c — CLIPImageProcessor rebuilt from libfmseg's parts
 * on clip-tiny's input.png, compared with the processor's own output
 * (`preprocess.pixel_values` in ref.safetensors).
 *
 * transformers 5's CLIPImageProcessor is the torchvision backend: torch's
 * uint8 antialiased resize (fm_image_resize_torch; PIL's own resize puts a
 * few bytes one level off, checked below), then rescale and normalise fused
 * in float32.
 * ref: transformers models/clip/image_processing_clip.py (CLIPImageProcessor),
 *      image_processing_backends.py (TorchvisionBackend: resize, center_crop,
 *      _fuse_mean_std_and_rescale_factor, _rescale_and_normalize),
 *      image_transforms.py (get_resize_output_image_size with
 *      default_to_square=False). Every size comes from
 *      preprocessor_config.json. */
#include "fmseg.h"
#include "tap.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = calloc(1, (size_t)n + 1);
  if (fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
  fclose(f);
  return s;
}

static double num(const cJSON *obj, const char *key, double fallback) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
  return cJSON_IsNumber(v) ? v->valuedouble : fallback;
}

/* The processor's settings, defaults as CLIPImageProcessor has them. */
typedef struct clip_config {
  int do_resize, do_center_crop, do_rescale, do_normalize;
  int64_t shortest_edge, crop_h, crop_w;
  int resample;                         /* PIL: 2 bilinear, 3 bicubic */
  double rescale_factor, mean[3], std[3];
} clip_config;

static int read_config(const char *path, clip_config *c) {
  char *text = slurp(path);
  cJSON *j = text ? cJSON_Parse(text) : NULL;
  free(text);
  if (!j) return 0;
  c->do_resize = (int)num(j, "do_resize", 1);
  c->do_center_crop = (int)num(j, "do_center_crop", 1);
  c->do_rescale = (int)num(j, "do_rescale", 1);
  c->do_normalize = (int)num(j, "do_normalize", 1);
  c->resample = (int)num(j, "resample", 3);
  c->rescale_factor = num(j, "rescale_factor", 1 / 255.0);
  const cJSON *size = cJSON_GetObjectItemCaseSensitive(j, "size");
  const cJSON *crop = cJSON_GetObjectItemCaseSensitive(j, "crop_size");
  c->shortest_edge = (int64_t)num(size, "shortest_edge", 224);
  c->crop_h = (int64_t)num(crop, "height", 224);
  c->crop_w = (int64_t)num(crop, "width", 224);
  const cJSON *mean = cJSON_GetObjectItemCaseSensitive(j, "image_mean");
  const cJSON *std = cJSON_GetObjectItemCaseSensitive(j, "image_std");
  int good = cJSON_GetArraySize(mean) == 3 && cJSON_GetArraySize(std) == 3;
  for (int i = 0; good && i < 3; ++i) {
    c->mean[i] = cJSON_GetArrayItem(mean, i)->valuedouble;
    c->std[i] = cJSON_GetArrayItem(std, i)->valuedouble;
  }
  cJSON_Delete(j);
  return good;
}

typedef int (*resize_fn)(fm_tensor *out, const fm_tensor *img, int32_t mode);

/* img: (H, W, 3) U8 -> (1, 3, CH, CW) F32, or NULL with *why set */
static fm_tensor *preprocess(const fm_tensor *img, const clip_config *c, resize_fn resize, const char **why) {
  fm_tensor *cur = fm_tensor_retain((fm_tensor *)img);
  int64_t h = img->dims[0], w = img->dims[1];
  if (c->do_resize) {
    /* the short side to shortest_edge, the long side int(S * long / short) */
    int64_t s = c->shortest_edge, oh, ow;
    if (w <= h) { ow = s; oh = (int64_t)((double)s * (double)h / (double)w); }
    else { oh = s; ow = (int64_t)((double)s * (double)w / (double)h); }
    int64_t shape[3] = {oh, ow, 3};
    fm_tensor *r = fm_tensor_new(FM_U8, 3, shape);
    int mode = c->resample == 2 ? FM_BILINEAR : FM_BICUBIC;
    int rc = resize(r, cur, mode);
    fm_tensor_release(cur);
    if (rc != 0) {
      *why = fm_last_error();
      fm_tensor_release(r);
      return NULL;
    }
    cur = r;
    h = oh;
    w = ow;
  }
  int64_t top = 0, left = 0, ch = h, cw = w;
  if (c->do_center_crop) {
    if (c->crop_h > h || c->crop_w > w) {
      *why = "crop larger than the image (transformers pads; not covered here)";
      fm_tensor_release(cur);
      return NULL;
    }
    ch = c->crop_h;
    cw = c->crop_w;
    top = (h - ch) / 2;   /* int((h - ch) / 2.0), as TorchvisionBackend.center_crop */
    left = (w - cw) / 2;
  }
  int64_t oshape[4] = {1, 3, ch, cw};
  fm_tensor *out = fm_tensor_new(FM_F32, 4, oshape);
  const uint8_t *src = cur->data;
  float *o = out->data;
  for (int k = 0; k < 3; ++k) {
    /* rescale and normalise fused: float32 mean and std times
     * float32(1 / rescale_factor), then (x - mean) / std in float32 */
    float inv = (float)(1.0 / c->rescale_factor), mean = (float)c->mean[k], std = (float)c->std[k];
    if (c->do_normalize && c->do_rescale) {
      mean *= inv;
      std *= inv;
    }
    for (int64_t y = 0; y < ch; ++y)
      for (int64_t x = 0; x < cw; ++x) {
        float v = src[((y + top) * w + x + left) * 3 + k];
        if (c->do_normalize) v = (v - mean) / std;
        else if (c->do_rescale) v *= (float)c->rescale_factor;
        o[(k * ch + y) * cw + x] = v;
      }
  }
  fm_tensor_release(cur);
  return out;
}

int main(void) {
  const char *root = getenv("FMSEG_FIXTURES");
  char dir[1024], path[1100];
  snprintf(dir, sizeof dir, "%s/clip-tiny", root && *root ? root : "../shared/fixtures");
  struct stat st;
  if (stat(dir, &st) != 0) {
    if (getenv("CI")) {
      ok(0, "fixtures missing (CI is set)");
    } else {
      char why[1100];
      snprintf(why, sizeof why, "fixtures missing (%s)", dir);
      skip(why);
    }
    return done_testing();
  }

  clip_config c = {0};
  snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
  if (!ok(read_config(path, &c), "read preprocessor_config.json")) return done_testing();

  snprintf(path, sizeof path, "%s/input.png", dir);
  fm_tensor *img = fm_image_load(path);
  if (!ok(img != NULL, "load input.png")) {
    diag(fm_last_error());
    return done_testing();
  }
  const char *why = "";
  fm_tensor *ours = preprocess(img, &c, fm_image_resize_torch, &why);
  if (!ok(ours != NULL, "preprocess")) diag(why);
  fm_tensor *pil = preprocess(img, &c, fm_image_resize_pil, &why);
  if (!ok(pil != NULL, "preprocess with PIL's resize")) diag(why);

  snprintf(path, sizeof path, "%s/ref.safetensors", dir);
  fm_safetensors *sf = fm_safetensors_open(path);
  fm_tensor *ref = sf ? fm_safetensors_get(sf, "preprocess.pixel_values") : NULL;
  if (!ok(ref != NULL, "read preprocess.pixel_values")) diag(fm_last_error());

  if (ours && ref) {
    int same_shape = ref->ndim == 4;
    for (int i = 0; same_shape && i < 4; ++i) same_shape = ref->dims[i] == ours->dims[i];
    ok(same_shape, "same shape as the processor's");
    if (same_shape) {
      int64_t n = fm_tensor_numel(ref);
      const float *a = ours->data, *b = ref->data;
      double max_abs = 0, sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        double d = fabs((double)a[i] - b[i]);
        if (d > max_abs || d != d) max_abs = d != d ? INFINITY : d;
        sum += d;
      }
      char name[160];
      /* the same bytes and the same float32 steps: equal to rounding */
      snprintf(name, sizeof name, "pixel_values equal to CLIPImageProcessor's (max |diff| %.3g)", max_abs);
      ok(max_abs <= 1e-6, name);
      snprintf(name, sizeof name, "mean |diff| %.3g", sum / n);
      ok(sum / n < 1e-7, name);
      if (pil) {
        /* one grey level is 1 / (255 std) ~ 0.015 */
        int64_t off = 0;
        const float *p = pil->data;
        for (int64_t i = 0; i < n; ++i) off += fabs((double)p[i] - b[i]) > 1e-3;
        snprintf(name, sizeof name, "PIL's 22-bit resize is not the processor's: %d of %d values a level off",
                 (int)off, (int)n);
        ok(off > 0 && off < n / 100, name);
      }
    }
  }
  fm_tensor_release(pil);
  fm_tensor_release(ref);
  fm_safetensors_close(sf);
  fm_tensor_release(ours);
  fm_tensor_release(img);
  return done_testing();
}
