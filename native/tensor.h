/* tensor.h: the tensor struct and the device-independent tensor operations of the core.
 * A tensor is a contiguous row-major float32 block of up to DF_MAXDIM dims on one device.
 * Output tensors are passed in released (zeroed) and come back allocated, so the binding can
 * create its userdata first and never leak memory when an operation fails. */
#ifndef DF_TENSOR_H
#define DF_TENSOR_H

#include <stdint.h>
#include "backend.h"

/* no single tensor may hold more elements than this (2^40: 4 TiB of float32) */
#define DF_MAX_NUMEL ((int64_t)1 << 40)

typedef struct df_tensor {
  float *data;              /* owned buffer; NULL for views */
  struct df_tensor *base;   /* a view's owner (the binding keeps it alive), else NULL */
  int64_t offset;           /* a view's first element in base->data */
  int live;                 /* 1 between allocation and release */
  int ndim;
  int64_t shape[DF_MAXDIM];
  int64_t numel;
  const df_backend *be;
  int dev;
} df_tensor;

/* device data of t, or NULL if t (or the owner of a view) has been released */
float *df_data(const df_tensor *t);
int df_is_live(const df_tensor *t);
int df_need_live(const df_tensor *t); /* DF_OK, or "attempt to use a released tensor" (t may be NULL) */

/* validate a shape: dims in [0, DF_MAX_NUMEL], product too; sets *numel */
int df_shape_check(int ndim, const int64_t *shape, int64_t *numel);
/* "3x2", "4096x1": for messages */
const char *df_shape_str(int ndim, const int64_t *shape, char *buf, int len);

int df_tensor_alloc(df_tensor *t, const df_backend *be, int dev, int ndim, const int64_t *shape);
int df_tensor_like(df_tensor *t, const df_tensor *like);
int df_tensor_view(df_tensor *v, df_tensor *base, int64_t offset, int ndim, const int64_t *shape);
void df_tensor_release(df_tensor *t);

/* the current device: where new tensors are made */
void df_current_device(const df_backend **be, int *dev);
int df_set_current_device(const df_backend *be, int dev);
/* device name "cpu" or "cuda:0" */
const char *df_device_str(const df_backend *be, int dev, char *buf, int len);

/* random streams: every random tensor takes the next stream of the current seed */
void df_rng_seed(uint64_t seed);
void df_rng_state(uint64_t *seed, uint64_t *stream);
void df_rng_set_state(uint64_t seed, uint64_t stream);
uint64_t df_rng_next_stream(void);

/* operations; each output tensor `out` comes in released and leaves allocated */
int df_fill(df_tensor *t, float v);
int df_random(df_tensor *t, int dist);
int df_ramp(df_tensor *t, double start, double step, double last);
int df_unary(df_tensor *out, int op, const df_tensor *a);
int df_binary(df_tensor *out, int op, const df_tensor *a, const df_tensor *b);
int df_binary_scalar(df_tensor *out, int op, const df_tensor *a, float s, int scalar_left);
int df_reduce_all(const df_tensor *a, int op, double *res);
/* the least and the greatest value (NaN if any is NaN; inf and -inf for no values) */
int df_minmax(const df_tensor *a, double *lo, double *hi);
int df_reduce_dim(df_tensor *out, df_tensor *idx, const df_tensor *a, int op, int dim, int keepdim);
int df_matmul(df_tensor *out, const df_tensor *a, const df_tensor *b);
int df_cat(df_tensor *out, int n, const df_tensor *const *ts, int dim);
int df_copy(df_tensor *dst, const df_tensor *src);            /* same numel, any devices */
int df_to_device(df_tensor *out, const df_tensor *a, const df_backend *be, int dev);
int df_download(const df_tensor *a, float *host);             /* whole tensor to host */
int df_upload(df_tensor *t, const float *host);
int df_histogram(const df_tensor *a, int64_t bins, double lo, double hi, int64_t *counts);
int df_same_device(const df_tensor *a, const df_tensor *b);

#endif
