/* fmseg.h — libfmseg, the C runtime of fmseg.
 *
 * A small tensor library with the kernels that foundation-model
 * segmentation needs. Plain C11; knows nothing of Lua. The Lua face reads
 * this header with ffi.cdef (preprocessor lines stripped), so the
 * declarations use no macros, no varargs and pass no structs by value.
 *
 * Tutorial
 *
 *   int64_t shape[2] = {197, 768};
 *   fm_tensor *x = fm_tensor_new(FM_F32, 2, shape);    // zero-filled, refcount 1
 *   fm_safetensors *st = fm_safetensors_open("model.safetensors");
 *   if (!st) { fprintf(stderr, "%s\n", fm_last_error()); return 1; }
 *   fm_tensor *w = fm_safetensors_get(st, "fc1.weight"); // view into the mmap
 *   int64_t oshape[2] = {197, w->dims[0]};
 *   fm_tensor *y = fm_tensor_new(FM_F32, 2, oshape);
 *   if (fm_linear(y, x, w, NULL) != 0) puts(fm_last_error());
 *   fm_tensor_release(w); fm_tensor_release(x); fm_tensor_release(y);
 *   fm_safetensors_close(st);                            // w stays valid if retained
 *
 * Contract
 * - Ownership: every function that returns a tensor hands the caller one
 *   reference; give it back with fm_tensor_release. Views share storage and
 *   keep it alive.
 * - Errors: nothing aborts. Functions return 0 / non-NULL on success and
 *   -1 / NULL on failure, leaving a message in fm_last_error() (per thread).
 * - Kernels write into a preallocated `out` (first argument) whose shape
 *   they check; inputs must be contiguous unless stated otherwise.
 *   `out` may alias the input for elementwise kernels.
 * - Sizes are int64_t. Strides are in elements.
 */
#ifndef FMSEG_H
#define FMSEG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version, errors, threads ------------------------------------------ */

const char *fm_version(void);
const char *fm_last_error(void);          /* "" when no error is pending */
void fm_clear_error(void);
void fm_set_error_message(const char *msg); /* lets callers chain context */
int fm_set_threads(int n);                /* OpenMP + OpenBLAS; <=0: default */
int fm_get_threads(void);
/* Takes OpenBLAS's per-thread work buffers now (fmseg does at start and
 * after FMSEG_THREADS): -1 with a message when an address-space limit
 * leaves no room for them, since OpenBLAS itself would retry forever. */
int fm_blas_reserve(void);
/* OpenBLAS's kernel family (openblas_get_corename: "Haswell", "SkylakeX",
 * ...). fm_blas_core_upgrade: the family to ask for with OPENBLAS_CORETYPE
 * when OpenBLAS fell back to one that predates AVX2 on a CPU that has AVX2
 * (or AVX-512), as it does for models newer than it knows; NULL when the
 * choice is fine or OPENBLAS_CORETYPE is set. */
const char *fm_blas_core(void);
const char *fm_blas_core_upgrade(void);

/* SIGINT / SIGTERM (core/interrupt.c): fm_interrupt_catch(1) notes the
 * first one instead of dying (a second one stops the process as usual);
 * fm_interrupt_pending() says which arrived (0: none); catch(0) restores
 * the previous handlers. For loops that can stop between items. */
int fm_interrupt_catch(int on);
int fm_interrupt_pending(void);

/* ---- tensors ------------------------------------------------------------ */

typedef enum fm_dtype { FM_F32 = 0, FM_I32 = 1, FM_U8 = 2 } fm_dtype;
enum { FM_MAX_DIMS = 8 };

typedef struct fm_storage fm_storage;     /* owned, borrowed or mmap'd bytes */

/* Field names differ from the Lua methods t:dtype(), t:shape(), t:stride()
 * on purpose: LuaJIT looks struct fields up before metatype methods. */
typedef struct fm_tensor {
  int32_t type;                           /* fm_dtype */
  int32_t ndim;
  int64_t dims[FM_MAX_DIMS];              /* the shape */
  int64_t strides[FM_MAX_DIMS];           /* elements */
  void *data;                             /* first element */
  fm_storage *storage;
  int32_t refcount;
  int32_t readonly;                       /* views of a read-only mmap */
} fm_tensor;

fm_tensor *fm_tensor_new(int32_t dtype, int32_t ndim, const int64_t *shape);
/* Uninitialised: for outputs a kernel overwrites whole (zeroing hundreds
 * of MB per layer costs more than some layers). */
fm_tensor *fm_tensor_empty(int32_t dtype, int32_t ndim, const int64_t *shape);
fm_tensor *fm_tensor_borrow(int32_t dtype, int32_t ndim, const int64_t *shape,
                            void *data);  /* caller keeps data alive */
fm_tensor *fm_tensor_retain(fm_tensor *t);
void fm_tensor_release(fm_tensor *t);     /* NULL is fine */

int64_t fm_tensor_numel(const fm_tensor *t);
size_t fm_dtype_size(int32_t dtype);
const char *fm_dtype_name(int32_t dtype);
int fm_tensor_is_contiguous(const fm_tensor *t);

/* Views (share storage, no copy). */
fm_tensor *fm_tensor_view(const fm_tensor *t, int32_t ndim, const int64_t *shape,
                          const int64_t *stride, int64_t offset);
fm_tensor *fm_tensor_reshape(const fm_tensor *t, int32_t ndim, const int64_t *shape);
fm_tensor *fm_tensor_permute(const fm_tensor *t, const int32_t *dims);
fm_tensor *fm_tensor_narrow(const fm_tensor *t, int32_t dim, int64_t start, int64_t length);
fm_tensor *fm_tensor_select(const fm_tensor *t, int32_t dim, int64_t index);

/* Copies. copy_ converts between dtypes and handles any strides; a float
 * stored as int32 or uint8 rounds toward zero and saturates to the type's
 * range, NaN becoming 0 (a plain C cast would be undefined there). */
int fm_tensor_copy_(fm_tensor *dst, const fm_tensor *src);
fm_tensor *fm_tensor_clone(const fm_tensor *t);           /* contiguous copy */
fm_tensor *fm_tensor_contiguous(const fm_tensor *t);      /* retain or copy */
fm_tensor *fm_tensor_to(const fm_tensor *t, int32_t dtype); /* contiguous, converted */
int fm_tensor_fill_(fm_tensor *t, double value);

/* Elementwise, numpy broadcasting, any strides in inputs; out contiguous
 * with the broadcast shape (may alias an input of that shape). F32 only. */
typedef enum fm_binary_op {
  FM_ADD = 0, FM_SUB, FM_MUL, FM_DIV, FM_MAX, FM_MIN, FM_POW,
  FM_GT, FM_GE, FM_LT, FM_LE, FM_EQ
} fm_binary_op;
int fm_binary(fm_tensor *out, const fm_tensor *a, const fm_tensor *b, int32_t op);
int fm_binary_scalar(fm_tensor *out, const fm_tensor *a, double s, int32_t op);

typedef enum fm_unary_op {
  FM_NEG = 0, FM_EXP, FM_LOG, FM_SQRT, FM_ABS, FM_TANH, FM_SIGMOID,
  FM_RELU, FM_GELU, FM_GELU_TANH, FM_QUICK_GELU, FM_SILU, FM_FLOOR,
  FM_ROUND, FM_RSQRT, FM_SIN, FM_COS, FM_ERF
} fm_unary_op;
int fm_unary(fm_tensor *out, const fm_tensor *a, int32_t op);

/* Reductions along `dim` (out has that dim removed or of size 1 — any
 * shape with the same element count). Any strides in `a`. */
typedef enum fm_reduce_op { FM_SUM = 0, FM_MEAN, FM_RMAX, FM_RMIN, FM_ARGMAX, FM_ARGMIN, FM_NORM2 } fm_reduce_op;
int fm_reduce(fm_tensor *out, const fm_tensor *a, int32_t dim, int32_t op);
double fm_reduce_all(const fm_tensor *a, int32_t op); /* SUM MEAN RMAX RMIN NORM2 */

/* Concatenate along dim. */
int fm_cat(fm_tensor *out, const fm_tensor *const *parts, int32_t n, int32_t dim);

/* ---- linear algebra (core/linalg.c) ------------------------------------- */

/* x: (..., K), w: (N, K) as PyTorch stores it, b: (N) or NULL; out: (..., N) */
int fm_linear(fm_tensor *out, const fm_tensor *x, const fm_tensor *w, const fm_tensor *b);
/* a: (..., M, K) (or (..., K, M) when trans_a), b: (..., K, N) (or (..., N, K));
 * out: (..., M, N) = alpha * op(a) op(b). Batch dims equal, or b unbatched. */
int fm_matmul(fm_tensor *out, const fm_tensor *a, const fm_tensor *b,
              int32_t trans_a, int32_t trans_b, float alpha);

/* ---- neural-network kernels (core/nn.c, conv.c, attention.c) ----------- */

/* x: (..., C), w, b: (C) or NULL */
int fm_layer_norm(fm_tensor *out, const fm_tensor *x, const fm_tensor *w,
                  const fm_tensor *b, float eps);
/* x: (N, C, ...spatial), w, b: (C) or NULL */
int fm_group_norm(fm_tensor *out, const fm_tensor *x, int64_t groups,
                  const fm_tensor *w, const fm_tensor *b, float eps);
/* x: (N, C, H, W) normalised over C per pixel (SAM's channels-first LN) */
int fm_layer_norm_channels(fm_tensor *out, const fm_tensor *x, const fm_tensor *w,
                           const fm_tensor *b, float eps);
/* softmax over the last dim; an all -inf row gives zeros */
int fm_softmax(fm_tensor *out, const fm_tensor *x);

/* x: (N, C, H, W), w: (OC, C, KH, KW), b: (OC) or NULL; out: (N, OC, OH, OW) */
int fm_conv2d(fm_tensor *out, const fm_tensor *x, const fm_tensor *w, const fm_tensor *b,
              int32_t stride_h, int32_t stride_w, int32_t pad_h, int32_t pad_w);
/* kernel == stride (SAM's 2x2/2): x (N, C, H, W), w (C, OC, K, K) as PyTorch
 * stores ConvTranspose2d; out (N, OC, H*K, W*K) */
int fm_conv_transpose2d(fm_tensor *out, const fm_tensor *x, const fm_tensor *w,
                        const fm_tensor *b, int32_t stride);

/* Multi-head scaled dot-product attention.
 * q: (B, Tq, H*D), k: (B, Tk, H*D), v: (B, Tk, H*Dv); out: (B, Tq, H*Dv)
 * out = softmax(scale * q kᵀ + mask [+ causal]) v, in blocks of (batch, head,
 * query rows): all heads' scores are never held at once.
 * q, k, v may be strided views whose last dim is contiguous (slices of a
 * fused qkv). mask: NULL, (Tq, Tk) or (1|B, 1|H, Tq, Tk) additive.
 * causal: query i sees keys 0..i (PyTorch's is_causal). probs: NULL or
 * (B, H, Tq, Tk) receives the probabilities. A row that is all -inf gives
 * zeros (PyTorch gives NaN). */
int fm_attention(fm_tensor *out, const fm_tensor *q, const fm_tensor *k,
                 const fm_tensor *v, int64_t heads, float scale,
                 const fm_tensor *mask, int32_t causal, fm_tensor *probs);

/* ---- interpolation and images (core/resize.c, image.c) ------------------ */

typedef enum fm_interp_mode { FM_NEAREST = 0, FM_BILINEAR = 1, FM_BICUBIC = 2 } fm_interp_mode;
/* x: (N, C, H, W) F32 -> out: (N, C, OH, OW), torch.nn.functional.interpolate
 * semantics (bicubic A = -0.75; with antialias, PyTorch's _aa kernels). */
int fm_interpolate(fm_tensor *out, const fm_tensor *x, int32_t mode,
                   int32_t align_corners, int32_t antialias);

/* As F.interpolate(x, scale_factor=(scale_h, scale_w)) with the output
 * size given by `out` (torch: floor(in * scale)): source pixels are placed
 * by 1 / scale rather than by the size ratio. Bilinear or bicubic, no
 * antialias. The CLIP methods built on SCLIP's code resample position
 * embeddings this way (scale (g + 0.1) / grid). */
int fm_interpolate_scale(fm_tensor *out, const fm_tensor *x, int32_t mode, int32_t align_corners,
                         double scale_h, double scale_w);

/* PIL Image.resize on 8-bit images: img (H, W, C) U8 -> out (OH, OW, C) U8.
 * mode FM_BILINEAR or FM_BICUBIC (PIL's a = -0.5), always antialiased. */
int fm_image_resize_pil(fm_tensor *out, const fm_tensor *img, int32_t mode);

/* The same resize as torch does it on uint8 tensors on the CPU
 * (F.interpolate(antialias=True), which torchvision's resize calls, and so
 * transformers' default image processors): PIL's algorithm with int16
 * coefficients of 14 to 22 bits, so some bytes differ from PIL's by one. */
int fm_image_resize_torch(fm_tensor *out, const fm_tensor *img, int32_t mode);

/* cv2.resize(img, (OW, OH), interpolation=cv2.INTER_LINEAR) on 8-bit images,
 * bit for bit with OpenCV 4.6: img (H, W, C) U8 -> out (OH, OW, C) U8, C in
 * 1..4. mmsegmentation's Resize (mmcv.imresize) calls it; float bilinear +
 * round is one grey level off on ~13% of values, because cv2 works in 11-bit
 * fixed point and its vertical pass truncates before it rounds. An exact 2x
 * downscale is cv2's 2x2 mean (INTER_AREA), an unchanged size a copy. */
int fm_image_resize_cv2_linear(fm_tensor *out, const fm_tensor *img);

/* Decode PNG, JPEG or BMP to (H, W, 3) U8; grey and RGBA become RGB.
 * Images whose header declares more than the pixel limit are refused
 * before decoding: 2 * 89478485 by default, as PIL refuses them;
 * fm_image_set_max_pixels(n > 0) sets it (./fmseg: FMSEG_MAX_IMAGE_PIXELS)
 * and returns the previous limit (n <= 0 only reads it). */
int64_t fm_image_set_max_pixels(int64_t n);
fm_tensor *fm_image_load(const char *path);
fm_tensor *fm_image_load_memory(const uint8_t *bytes, int64_t len);
/* img: (H, W, C) U8 with C in 1..4 */
int fm_image_save_png(const char *path, const fm_tensor *img);
int fm_image_save_jpg(const char *path, const fm_tensor *img, int32_t quality);
/* labels: (H, W) U8 or I32 in [0, 255]; palette: 3*ncolors bytes */
int fm_image_save_palette_png(const char *path, const fm_tensor *labels,
                              const uint8_t *palette, int32_t ncolors);
/* 8-bit palette PNGs read back as their indices (H, W) U8 */
fm_tensor *fm_image_load_indices(const char *path);
/* zlib data (RFC 1950) inflated into a new buffer (fm_free) of *out_len
 * bytes; NULL with a message when the data is corrupt or would inflate to
 * more than max_out bytes (core/image.c, stb's inflate). */
uint8_t *fm_zlib_inflate(const uint8_t *in, int64_t n, int64_t max_out, int64_t *out_len);

/* ---- TIFF label maps (core/tiff.c) ---------------------------------------- */

/* Baseline TIFF with one 8- or 16-bit unsigned sample per pixel (grey or
 * palette indices): either byte order, strips, uncompressed or PackBits,
 * the first image of the file -> (H, W) I32 of the raw values (0..65535).
 * The 16-bit label maps of ADE20K-Full and PASCAL Context-459 are such
 * files. Anything else (tiles, LZW, Deflate, ...) and truncated or corrupt
 * files are errors naming the path; the pixel limit of fm_image_load holds. */
fm_tensor *fm_tiff_load(const char *path);
/* labels (H, W) U8 or I32 in [0, 65535] -> an uncompressed little-endian
 * 16-bit greyscale TIFF, laid out as PIL 9.4 writes a uint16 array. */
int fm_tiff_save_u16(const char *path, const fm_tensor *labels);

/* ---- safetensors (core/safetensors.c) ----------------------------------- */

typedef struct fm_safetensors fm_safetensors;
fm_safetensors *fm_safetensors_open(const char *path);
void fm_safetensors_close(fm_safetensors *st);
int64_t fm_safetensors_count(const fm_safetensors *st);
int64_t fm_safetensors_find(const fm_safetensors *st, const char *name); /* -1 */
const char *fm_safetensors_name(const fm_safetensors *st, int64_t i);
const char *fm_safetensors_dtype(const fm_safetensors *st, int64_t i);  /* "F16" */
int32_t fm_safetensors_ndim(const fm_safetensors *st, int64_t i);
int64_t fm_safetensors_dim(const fm_safetensors *st, int64_t i, int32_t d);
const char *fm_safetensors_metadata(const fm_safetensors *st); /* JSON or "" */
/* F32 → zero-copy read-only view of the mapping; F16/BF16/F64 → converted
 * F32; I64/I32/I16/I8/U8/BOOL → I32 (range-checked). */
fm_tensor *fm_safetensors_get(fm_safetensors *st, const char *name);
/* Writes F32 / I32 / U8 tensors (any strides). */
int fm_safetensors_save(const char *path, int64_t n, const char *const *names,
                        const fm_tensor *const *tensors);

/* ---- MATLAB MAT-files (core/mat.c) --------------------------------------- */

/* Level 5 (MATLAB 5 to 7.2, what scipy.io.loadmat reads; 7.3 files are
 * HDF5 and refused): either byte order, variables compressed or not.
 * fm_mat_open reads and checks the whole file: a truncated or corrupt one
 * is refused there, naming the path, the offset and the variable.
 * The file is a tree of nodes (ids): the variables; below a cell its
 * elements, below a struct each element's fields (element 0's fields in
 * field order, then element 1's...), both in MATLAB's linear
 * (column-major) order. Objects, function handles and opaque values are
 * FM_MAT_OTHER nodes, skipped. Bad ids give -1 / NULL with a message. */
typedef struct fm_mat fm_mat;
typedef enum fm_mat_node_kind {
  FM_MAT_NUMERIC = 0, FM_MAT_CHAR = 1, FM_MAT_SPARSE = 2, FM_MAT_CELL = 3,
  FM_MAT_STRUCT = 4, FM_MAT_OTHER = 5
} fm_mat_node_kind;
fm_mat *fm_mat_open(const char *path);
void fm_mat_close(fm_mat *m);
int64_t fm_mat_nvars(const fm_mat *m);
int64_t fm_mat_var(const fm_mat *m, int64_t i);           /* node of variable i */
int32_t fm_mat_kind(const fm_mat *m, int64_t node);       /* fm_mat_node_kind */
const char *fm_mat_name(const fm_mat *m, int64_t node);   /* variable or field; "" in a cell */
/* MATLAB's class(): "double", "uint8", "logical", "char", "cell", "struct",
 * ...; a sparse matrix is "double" or "logical" */
const char *fm_mat_class(const fm_mat *m, int64_t node);
/* The type a numeric or char node's values are stored as ("uint8", "uint16",
 * "double", ...; "" for other nodes): MATLAB narrows integer-valued data,
 * and scipy's loadmat returns the stored type (mat_dtype=False). */
const char *fm_mat_storage(const fm_mat *m, int64_t node);
int32_t fm_mat_ndim(const fm_mat *m, int64_t node);
int64_t fm_mat_dim(const fm_mat *m, int64_t node, int32_t d);
int32_t fm_mat_is_complex(const fm_mat *m, int64_t node);
int64_t fm_mat_nfields(const fm_mat *m, int64_t node);    /* struct */
const char *fm_mat_field(const fm_mat *m, int64_t node, int64_t f);
int64_t fm_mat_nchildren(const fm_mat *m, int64_t node);  /* cell, struct */
int64_t fm_mat_child(const fm_mat *m, int64_t node, int64_t i);
/* A numeric, char or sparse node's values, row-major with MATLAB's
 * dimensions (as numpy's arrays from scipy): uint8 and logical -> U8,
 * double and single -> F32 (doubles rounded to the nearest float), the
 * other integers -> I32 (a value outside int32 is an error naming it),
 * char -> I32 of its UTF-16 code units (code points where the file holds
 * UTF-8, as scipy writes); sparse matrices dense, within the pixel limit
 * of fm_image_set_max_pixels. Complex is refused. */
fm_tensor *fm_mat_tensor(const fm_mat *m, int64_t node);

/* ---- PAMR (core/pamr.c) --------------------------------------------------- */

/* Pixel-adaptive mask refinement (Araslanov & Roth 2020), as the
 * training-free CLIP methods use it. img: (K, H, W), mask: (C, H, W) at the
 * same size; out: (C, H, W). Affinity over the 8 neighbours at each
 * dilation: softmax_p(mean_k(-|I - I_p| / (1e-8 + 0.1 std))), std the
 * unbiased deviation over the 9 * n_dil sampled values; then `iters` times
 * mask = sum_p affinity_p * mask_p, with replicate padding. */
int fm_pamr(fm_tensor *out, const fm_tensor *img, const fm_tensor *mask, int32_t iters,
            const int32_t *dilations, int32_t n_dilations);

/* ---- drawing (core/draw.c): overlays people can look at ------------------- */

/* img (H, W, 3) U8 in place: pixels with label l get
 * (1 - alpha) * img + alpha * palette[l]; labels (H, W) U8 or I32; labels
 * < 0 or >= ncolors are left alone. */
int fm_draw_blend_labels(fm_tensor *img, const fm_tensor *labels, const uint8_t *palette,
                         int32_t ncolors, float alpha);
/* Filled rectangle [x0, x1) x [y0, y1), clipped to the image. */
int fm_draw_rect(fm_tensor *img, int64_t x0, int64_t y0, int64_t x1, int64_t y1,
                 uint8_t r, uint8_t g, uint8_t b);
/* ASCII text with its top-left at (x, y), each font pixel scale x scale;
 * returns the width drawn in pixels. */
int64_t fm_draw_text(fm_tensor *img, int64_t x, int64_t y, const char *text, int32_t scale,
                     uint8_t r, uint8_t g, uint8_t b);
int64_t fm_text_width(const char *text, int32_t scale);

/* ---- masks (core/masks.c, distance.c): label maps, regions, RLE, boxes --- */

/* Masks are (H, W) uint8 (nonzero = set); batches (N, H, W). Outputs of
 * mask kind hold 0/1. segment-anything's mask helpers (utils/amg.py) and
 * torchvision's box ops are reproduced exactly where named. */

/* x: (C, H, W) F32 -> out: (H, W) I32, index of the largest channel (the
 * first on ties) */
int fm_argmax_channels(fm_tensor *out, const fm_tensor *x);
/* x: F32, any shape -> out: U8, same shape, x > t */
int fm_threshold(fm_tensor *out, const fm_tensor *x, float t);

/* Connected components of the set pixels of mask (H, W) U8, connectivity
 * 4 or 8. labels (H, W) I32: 0 off the mask, 1..n numbered as OpenCV's
 * connectedComponents numbers them (4: by first pixel in raster order;
 * 8: by first 2x2 block, blocks in raster order). Returns n, or -1. */
int64_t fm_connected_components(fm_tensor *labels, const fm_tensor *mask,
                                int32_t connectivity);
/* labels (H, W) I32 in [0, n] -> areas (n + 1) I32: pixels per label */
int fm_label_areas(fm_tensor *areas, const fm_tensor *labels);

/* segment-anything's remove_small_regions: "holes" fills the components of
 * the unset pixels (8-connected, the image border included) smaller than
 * area_thresh; "islands" drops the components of the set pixels smaller
 * than area_thresh, keeping the largest when all are small. mask (H, W)
 * U8 -> out (H, W) U8 (may alias mask). Returns 1 when something was
 * small (out changed), 0 when not (out = mask as 0/1), -1 on error. */
typedef enum fm_region_mode { FM_HOLES = 0, FM_ISLANDS = 1 } fm_region_mode;
int fm_remove_small_regions(fm_tensor *out, const fm_tensor *mask, double area_thresh,
                            int32_t mode);

/* COCO run-length encoding as pycocotools has it: run lengths over the
 * pixels in column-major (Fortran) order, alternating unset / set, starting
 * with the unset run (0 when the first pixel is set). Counts are (m) I32
 * tensors summing to H * W. */
fm_tensor *fm_rle_encode(const fm_tensor *mask);           /* (H, W) U8 -> (m) I32 */
int fm_rle_decode(fm_tensor *mask, const fm_tensor *counts); /* -> (H, W) U8 0/1 */
int64_t fm_rle_area(const fm_tensor *counts);              /* set pixels, or -1 */
/* labels (H, W) I32: labels[p] = value at the set pixels of the RLE (paints
 * a decoded mask into a label map without decoding it) */
int fm_rle_paint(fm_tensor *labels, const fm_tensor *counts, int32_t value);
/* pycocotools' compressed counts string (rleToString: each count, minus the
 * count two back from the fourth on, in 5-bit groups with a continuation
 * bit, as ASCII 48..111). Free with fm_free. */
char *fm_rle_to_string(const fm_tensor *counts);
fm_tensor *fm_rle_from_string(const char *s);              /* -> (m) I32 */
/* A COCO polygon -> the counts (m) I32 of its (h, w) mask, bit for bit as
 * pycocotools' rleFrPoly (what frPyObjects and annToRLE run on polygon
 * segmentations): xy holds n_points (x, y) pairs, the outline upsampled 5x,
 * walked segment by segment and its column crossings turned into runs.
 * n_points >= 1 (frPyObjects passes lists of more than 4 numbers),
 * coordinates finite within +-2^26, h, w >= 1, h * w <= INT32_MAX. */
fm_tensor *fm_rle_from_polygon(const double *xy, int64_t n_points, int64_t h, int64_t w);

/* masks (N, H, W) U8 -> boxes (N, 4) F32 XYXY of the set pixels, inclusive
 * pixel indices (x1 = last set column), 0 0 0 0 for an empty mask
 * (batched_mask_to_box). */
int fm_masks_to_boxes(fm_tensor *boxes, const fm_tensor *masks);
/* boxes (N, 4) XYXY -> out (N, 4) XYWH with w = x1 - x0 (may alias) */
int fm_boxes_xyxy_to_xywh(fm_tensor *out, const fm_tensor *boxes);
/* a (N, 4), b (M, 4) F32 XYXY -> out (N, M) F32, torchvision box_iou
 * (area = (x1 - x0) (y1 - y0); 0/0 gives NaN as there) */
int fm_box_iou(fm_tensor *out, const fm_tensor *a, const fm_tensor *b);
/* Greedy NMS as torchvision's batched_nms: boxes (N, 4) F32 XYXY, scores
 * (N) F32, categories (N) I32 or NULL (one category). Visits boxes by score
 * descending (ties: lower index first) and drops those whose IoU with a kept
 * box of the same category is > iou_threshold. keep (N) I32 receives the
 * kept indices (0-based) in visiting order; returns how many, or -1. Past
 * 1000 boxes they come in the order of torchvision's CPU per-category path
 * instead (torch.sort's unstable order of their scores, taken in index
 * order), as batched_nms lists them there. */
int64_t fm_nms(fm_tensor *keep, const fm_tensor *boxes, const fm_tensor *scores,
               const fm_tensor *categories, double iou_threshold);
/* calculate_stability_score: logits (N, ...) F32 -> out (N) F32 =
 * #(logits > t + offset) / #(logits > t - offset), thresholds rounded to
 * float as torch compares them; 0/0 gives NaN */
int fm_stability_score(fm_tensor *out, const fm_tensor *logits, double mask_threshold,
                       double offset);
/* is_box_near_crop_edge: boxes (N, 4) XYXY in crop coordinates; crop_box and
 * orig_box point at 4 values XYXY in image coordinates. out (N) U8: 1 where
 * some side of the uncropped box is within atol of the crop's side but not
 * of the image's. */
int fm_boxes_near_crop_edge(fm_tensor *out, const fm_tensor *boxes, const double *crop_box,
                            const double *orig_box, double atol);

/* Exact Euclidean distance transform (Felzenszwalb-Huttenlocher): mask
 * (H, W) U8 -> out (H, W) F32, distance from each set pixel to the nearest
 * unset pixel (0 on unset pixels; +inf everywhere when none is unset —
 * outside the image does not count as unset). */
int fm_distance_transform(fm_tensor *out, const fm_tensor *mask);
/* Binary dilation / erosion of mask (H, W) U8 by a (2r+1)^2 square or a
 * cross of arm r -> out (H, W) U8 0/1. Pixels outside the image are
 * ignored (OpenCV's default border). out must not alias mask. */
typedef enum fm_morph_op { FM_DILATE = 0, FM_ERODE = 1 } fm_morph_op;
typedef enum fm_kernel_shape { FM_KERNEL_SQUARE = 0, FM_KERNEL_CROSS = 1 } fm_kernel_shape;
int fm_morphology(fm_tensor *out, const fm_tensor *mask, int32_t op, int32_t radius,
                  int32_t shape);

/* ---- clustering (core/cluster.c): k-means, eigenproblems ----------------- */

/* Squared Euclidean distances through sgemm: x (N, D), c (K, D) F32 ->
 * out (N, K) F32 = |x_i|^2 - 2 x_i.c_j + |c_j|^2, clamped at 0. */
int fm_sq_distances(fm_tensor *out, const fm_tensor *x, const fm_tensor *c);
/* k-means as scikit-learn's KMeans (algorithm "lloyd"): greedy k-means++
 * seeding (first centre uniform, each next one the best of 2 + floor(ln k)
 * candidates drawn with probability ~ squared distance to the nearest
 * centre), then Lloyd iterations until no label changes, the centres move
 * less than tol x the mean per-feature variance of x (summed squared
 * shift), or max_iter; empty clusters take the point farthest from its
 * centre. n_init runs from one generator seeded by `seed` (< 2^32: numpy's
 * legacy MT19937 stream, so the result is scikit-learn's under
 * np.random.seed(seed), x centred first as it does); the lowest inertia
 * wins, unless it is the same partition as an earlier run's. x (N, D) F32 finite, 1 <= k <= N -> labels (N) I32 in
 * [0, k) (nearest centre, the first on ties), centers (K, D) F32,
 * *inertia (if not NULL) the summed squared distance to the centres. */
int fm_kmeans(fm_tensor *labels, fm_tensor *centers, const fm_tensor *x, int64_t k,
              int32_t max_iter, double tol, int32_t n_init, uint64_t seed, double *inertia);
/* Mini-batch k-means as scikit-learn's MiniBatchKMeans (1.2, dense, unit
 * weights, tol 0) with random_state = seed (< 2^32, numpy's RandomState):
 * a validation set of init_size = min(max(3 batch, 3 k), N) rows drawn with
 * replacement; n_init k-means++ seedings (on init_size drawn rows when
 * that is below N), the one of lowest validation inertia kept; then up to
 * max_iter N / batch steps, each on batch = min(batch_size, N) rows drawn
 * with replacement: nearest centres, per-centre running means, and, when a
 * centre is empty or 10 k rows were seen since the last time, centres of
 * weight below reassignment_ratio x the largest moved to distinct batch
 * rows; stops when the smoothed batch inertia has not improved for
 * max_no_improvement steps. labels (N) I32 of the final centres (K, D),
 * *inertia (if not NULL) their float32 inertia. */
int fm_minibatch_kmeans(fm_tensor *labels, fm_tensor *centers, const fm_tensor *x, int64_t k, int64_t batch_size,
                        int32_t max_iter, int32_t n_init, int32_t max_no_improvement, double reassignment_ratio,
                        uint64_t seed, double *inertia);
/* Thin SVD a = u diag(s) vt (LAPACK sgesdd, jobz 'S', as
 * scipy.linalg.svd(a, full_matrices=False)): a (M, N) F32 finite -> u (M, K),
 * s (K) descending, vt (K, N), K = min(M, N). */
int fm_svd(fm_tensor *u, fm_tensor *s, fm_tensor *vt, const fm_tensor *a);
/* scikit-learn's randomized_svd(a, n_components, n_oversamples, n_iter,
 * power_iteration_normalizer "LU", flip_sign) with its random_state numpy's
 * RandomState(seed) (PCA's svd_solver "randomized" under np.random.seed):
 * Q = normal(D, n_components + n_oversamples) in float32, n_iter rounds of
 * Q = P L of lu(a Q) and of lu(a^T Q) (sgetrf), Q of qr(a Q) (sgeqrf,
 * sorgqr), the SVD of Q^T a, U = Q Uhat with svd_flip's signs. a (M, N) F32
 * with M >= N -> u (M, n_components), s (n_components), vt (n_components, N). */
int fm_randomized_svd(fm_tensor *u, fm_tensor *s, fm_tensor *vt, const fm_tensor *a, int64_t n_components,
                      int64_t n_oversamples, int32_t n_iter, uint64_t seed);
/* Mean silhouette coefficient (scikit-learn's silhouette_score, Euclidean)
 * of labels (N) I32 in [0, k) over x (N, D) F32; needs 2 to N - 1
 * non-empty clusters. Points alone in their cluster score 0. */
int fm_silhouette(double *score, const fm_tensor *x, const fm_tensor *labels, int64_t k);
/* Symmetric eigenproblem (LAPACK ssyevd): a (N, N) F32 symmetric and
 * finite (its upper triangle is read) -> w (N) eigenvalues ascending,
 * v (N, N) whose ROW i is the unit eigenvector of w[i]. v may be a. */
int fm_eigh(fm_tensor *w, fm_tensor *v, const fm_tensor *a);
/* Generalized symmetric-definite problem a y = w b y (LAPACK ssygvd,
 * itype 1; scipy.linalg.eigh(a, b)): a symmetric, b symmetric positive
 * definite, both (N, N) F32 finite (upper triangles read) -> w (N)
 * ascending, v (N, N) with row i the eigenvector of w[i], scaled so that
 * v b v^T = I. Normalized cuts solve (D - W) y = w D y with it. */
int fm_eigh_generalized(fm_tensor *w, fm_tensor *v, const fm_tensor *a, const fm_tensor *b);
/* Only the eigenpairs first .. first + count - 1 (0-based, ascending) of the
 * same problem, solved in double precision (F32 in and out): LAPACK dsygvx
 * (scipy's eigh with subset_by_index), or, when
 * b is diagonal (normalized cuts), MRRR (dsyevr) on b^-1/2 a b^-1/2 with
 * the vectors scaled back. w (count), v (count, N), rows b-orthonormal.
 * Cheaper when few are wanted. */
int fm_eigh_generalized_subset(fm_tensor *w, fm_tensor *v, const fm_tensor *a, const fm_tensor *b,
                               int64_t first, int64_t count);

/* ---- metrics (core/metrics.c): counts behind segmentation scores ---------- */

/* conf: (K, P) I32, accumulated in place: conf[g][p] += the number of
 * pixels with ground truth g and prediction p. pred, gt: the same shape,
 * I32 or U8 each, contiguous. Pixels whose gt is ignore_index are skipped;
 * any other gt outside [0, K), or pred outside [0, P), is an error naming
 * the value and the pixel, and so is a count passing 2^31 - 1; on error
 * conf is unchanged. */
int fm_confusion_add(fm_tensor *conf, const fm_tensor *pred, const fm_tensor *gt,
                     int32_t ignore_index);
/* out[i] = lut[in[i]]: in I32 or U8 (any shape, contiguous), out I32 with
 * as many elements (may alias an I32 in). Every value must lie in [0, n)
 * and map to an entry >= 0 (negative entries mean "no mapping"); otherwise
 * an error naming the value and pixel, out unchanged. */
int fm_labels_remap(fm_tensor *out, const fm_tensor *in, const int32_t *lut, int32_t n);

/* ---- YAML (core/yaml.c) -------------------------------------------------- */

/* Parses a YAML file (one document) into JSON text with YAML 1.1 core
 * scalar resolution for plain scalars (null, true/false, ints, floats);
 * quoted scalars stay strings. Anchors/aliases and merge keys (<<) are
 * resolved. Errors name the file, line and column. Free with fm_free. */
char *fm_yaml_to_json(const char *path);
char *fm_yaml_string_to_json(const char *text, const char *name_for_errors);
void fm_free(void *p);

/* ---- DiffSeg (core/diffseg.c) ------------------------------------------- */

/* x: (N, C, H, W) F32 -> out: (N, C, OH, OW), tf.image.resize bilinear
 * (half-pixel centres, no antialias) with TF's own arithmetic. */
int fm_resize_bilinear_tf(fm_tensor *out, const fm_tensor *x);
/* out (A, Q) = the float16 symmetric KL of DiffSeg's first merge between
 * rows of a (A, D) and of b (Q, D), each op rounded to half as TF does;
 * NaN where a zero entry (underflow) meets a log. */
int fm_diffseg_kl_f16(fm_tensor *out, const fm_tensor *a, const fm_tensor *b);
/* out (groups, D) doubles: the mean, in double, of the rows r of x (N, D)
 * with member[g * N + r] != 0; NaN for a group with none. */
int fm_diffseg_group_means(double *out, const fm_tensor *x, const uint8_t *member, int64_t groups);
/* v rounded to the nearest float16 (ties to even), as a float */
float fm_round_half(float v);

/* ---- SAM (core/sam_attention.c) ----------------------------------------- */

/* SAM's image-encoder self-attention over a grid_h x grid_w grid of tokens
 * (row-major) with decomposed relative positions (MViTv2; transformers'
 * SamVisionAttention). For tokens i at (yi, xi) and j at (yj, xj):
 *   score = scale * q_i.k_j + q_i.rel_pos_h[yi - yj + grid_h - 1]
 *                           + q_i.rel_pos_w[xi - xj + grid_w - 1]
 * then softmax over j and the product with v, head by head in blocks of
 * query rows: the (B, H, T, T) scores never exist unless `probs` asks.
 * q, k: (B, T, H*D), v: (B, T, H*Dv), T = grid_h * grid_w, last dim
 * contiguous (views of a fused qkv are fine); rel_pos_h (2*grid_h-1, D),
 * rel_pos_w (2*grid_w-1, D), or both NULL for none; out: (B, T, H*Dv);
 * probs: NULL or (B, H, T, T). */
int fm_sam_attention(fm_tensor *out, const fm_tensor *q, const fm_tensor *k,
                     const fm_tensor *v, int64_t heads, float scale,
                     const fm_tensor *rel_pos_h, const fm_tensor *rel_pos_w,
                     int64_t grid_h, int64_t grid_w, fm_tensor *probs);

/* ---- SAM mask decoder (core/sam_decoder.c) ------------------------------ */

/* The decoder's cross-attentions between S prompt tokens and T image
 * tokens with the projections folded into the tokens (see sam_decoder.c):
 * image -> tokens: out[n, t] = LN?(resid[n, t] + out_bias + sum over heads
 * h and tokens j of p[t, (h, j)] values[n, (h, j)]), p the softmax over
 * each head's S columns of scale * (x'[n, t] . keys[n, (h, j)] + key_bias),
 * x' = x + x_pe. x (N|1, T, Cx), x_pe (N|1, T, Cx) or NULL,
 * keys (N, H*S, Cx), key_bias (N, H*S) or NULL,
 * values (N, H*S, C), out_bias (C) or NULL, resid (N|1, T, C) or NULL,
 * norm: layer-normalise each row with ln_w, ln_b (C) or NULL and eps;
 * out (N, T, C). A batch of 1 is shared by every prompt. */
int fm_sam_image_to_tokens(fm_tensor *out, const fm_tensor *x, const fm_tensor *x_pe,
                           const fm_tensor *keys,
                           const fm_tensor *key_bias, const fm_tensor *values,
                           const fm_tensor *out_bias, int64_t heads, float scale,
                           const fm_tensor *resid, int32_t norm, const fm_tensor *ln_w,
                           const fm_tensor *ln_b, float eps);
/* tokens -> image: out[n] = softmax_rows(scale * q[n] (x[n] + pe)ᵀ) x[n].
 * q (N, R, C), x (N|1, T, C), pe (N|1, T, C) or NULL; out (N, R, C). */
int fm_sam_tokens_to_image(fm_tensor *out, const fm_tensor *q, const fm_tensor *x,
                           const fm_tensor *pe, float scale);
/* SamMaskDecoder's upscaling and mask products in one pass, nothing full
 * size held but the masks: two transposed 2x2 stride-2 convolutions (the
 * first followed by a per-pixel channel norm and GELU, the second by GELU)
 * and the product with the hypernetworks' outputs.
 * keys (N, h*w, C) image tokens, token-major; w1 (C, C1, 2, 2), b1, ln_w,
 * ln_b (C1) or NULL; w2 (C1, C2, 2, 2), b2 (C2) or NULL; hyper (N, M, C2);
 * out (N, M, 4h, 4w). */
int fm_sam_upscale_masks(fm_tensor *out, const fm_tensor *keys, int64_t h, int64_t w,
                         const fm_tensor *w1, const fm_tensor *b1, const fm_tensor *ln_w,
                         const fm_tensor *ln_b, float eps, const fm_tensor *w2,
                         const fm_tensor *b2, const fm_tensor *hyper);

/* ---- HTTP (core/http.c): downloads for `fmseg fetch` --------------------- */

/* One request (and the redirects it follows), driven step by step by the
 * caller so that it can show progress between steps. method "GET" or
 * "HEAD"; headers: "Name: value\n" lines or NULL; out_path: the body is
 * written there (NULL: kept in memory, at most 64 MiB; an answer of 300 or
 * more is always kept in memory); resume_from > 0 appends to out_path and
 * asks for "Range: bytes=resume_from-" (a 200 instead of a 206 starts the
 * file over; a 206 must start at resume_from); follow: follow redirects
 * (curl sends a custom Authorization header to the original host only).
 * Close with fm_http_close. */
typedef struct fm_http fm_http;
fm_http *fm_http_open(const char *method, const char *url, const char *headers, const char *out_path,
                      int64_t resume_from, int32_t follow);
/* Runs the transfer for up to timeout_ms: 1 while it goes on, 0 when it
 * has ended (any HTTP status: see fm_http_status), -1 when it failed (the
 * message names the method, URL and curl's error or the write that
 * failed; the counters below stay readable). */
int fm_http_step(fm_http *h, int32_t timeout_ms);
int32_t fm_http_status(const fm_http *h);       /* of the latest response; 0 before one */
int64_t fm_http_received(const fm_http *h);     /* body bytes taken by this transfer */
int64_t fm_http_offset(const fm_http *h);       /* where they start in out_path */
/* A header of the latest response (case-insensitive name), or NULL; the
 * string lives until the next call on h. */
const char *fm_http_header(fm_http *h, const char *name);
const char *fm_http_headers(const fm_http *h);  /* all of them, "Name: value\n" */
const char *fm_http_body(const fm_http *h, size_t *len); /* the in-memory body */
const char *fm_http_effective_url(fm_http *h);  /* after the redirects followed */
void fm_http_close(fm_http *h);
/* size in bytes and modification time (s since the epoch) of path */
int fm_file_stat(const char *path, int64_t *size, double *mtime);
/* The digest of the file's bytes as lowercase hex into hex (hex_size >= 65
 * for sha256, 41 for sha1); algo "sha256" or "sha1"; git_blob = 1 hashes
 * "blob <size>\0" first, giving git's object id of the file. */
int fm_file_digest(const char *path, const char *algo, int32_t git_blob, char *hex, size_t hex_size);
/* the same over len bytes in memory */
int fm_digest(const void *data, size_t len, const char *algo, char *hex, size_t hex_size);

/* ---- optimal transport and assignment (core/transport.c) ----------------- */

/* The earth mover's distance between uniform distributions: costs (n, m)
 * F32 finite -> *cost = min over plans P >= 0 with rows summing to 1/n and
 * columns to 1/m of sum P_ij costs_ij (POT's ot.emd2 with uniform weights),
 * exact: the plan's flows are integers after scaling by n m, solved by the
 * network simplex (strongly feasible trees, block search). */
int fm_emd_uniform(double *cost, const fm_tensor *costs);
/* Minimum-cost (maximize: maximum) assignment of rows to columns, SciPy's
 * linear_sum_assignment (shortest augmenting paths, its tie rules), in
 * double: costs (R, C) F32 finite -> col_for_row (R) I32, the column of
 * each row, or -1 for the R - C rows left over when R > C. */
int fm_linear_sum_assignment(fm_tensor *col_for_row, const fm_tensor *costs, int32_t maximize);

/* ---- the fully connected CRF (core/densecrf.c) ---------------------------- */

/* pydensecrf's DenseCRF2D with addPairwiseGaussian(sxy = gaussian_sxy,
 * compat = gaussian_weight) and addPairwiseBilateral(sxy = bilateral_sxy,
 * srgb = bilateral_srgb, compat = bilateral_weight): Potts compatibilities,
 * diagonal kernels, symmetric normalisation. */
typedef struct fm_crf_params {
  int32_t iterations;
  float gaussian_sxy, gaussian_weight;
  float bilateral_sxy, bilateral_srgb, bilateral_weight;
} fm_crf_params;
/* Mean-field inference: unary (C, H, W) F32 energies (−log p), image
 * (H, W, 3) U8 -> q_out (C, H, W) F32 marginals after p->iterations steps,
 * filtered on permutohedral lattices as pydensecrf's SSE build does; naive
 * = 1 finds lattice vertices by linear search (the twin for tests). */
int fm_dense_crf(fm_tensor *q_out, const fm_tensor *unary, const fm_tensor *image, const fm_crf_params *p,
                 int32_t naive);

#ifdef __cplusplus
}
#endif
#endif /* FMSEG_H */
