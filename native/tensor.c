/* tensor.c: shapes, broadcasting, allocation, the current device, the random-stream state, and
 * the tensor operations, each checked here and carried out by the tensor's backend table. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "status.h"
#include "tensor.h"
#include "dmath.h"

/* ---- backend registry and the current device ------------------------------------------- */

#define DF_MAXBACKENDS 4
static const df_backend *backends[DF_MAXBACKENDS] = { &df_cpu_backend };
static const df_backend *cur_be = &df_cpu_backend;
static int cur_dev = 0;

int df_register_backend(const df_backend *be)
{
  for (int i = 0; i < DF_MAXBACKENDS; i++) {
    if (backends[i] == NULL || strcmp(backends[i]->name, be->name) == 0) {
      backends[i] = be;
      return DF_OK;
    }
  }
  return df_fail(DF_ESTATE, "too many backends registered");
}

const df_backend *df_find_backend(const char *name)
{
  for (int i = 0; i < DF_MAXBACKENDS; i++)
    if (backends[i] && strcmp(backends[i]->name, name) == 0) return backends[i];
  return NULL;
}

void df_current_device(const df_backend **be, int *dev)
{
  *be = cur_be;
  *dev = cur_dev;
}

int df_set_current_device(const df_backend *be, int dev)
{
  int count = 0, st = be->device_count(&count);
  if (st) return st;
  if (dev < 0 || dev >= count)
    return df_fail(DF_EARG, "%s device %d does not exist (%d available)", be->name, dev, count);
  cur_be = be;
  cur_dev = dev;
  return DF_OK;
}

const char *df_device_str(const df_backend *be, int dev, char *buf, int len)
{
  if (be == &df_cpu_backend) snprintf(buf, (size_t)len, "cpu");
  else snprintf(buf, (size_t)len, "%s:%d", be->name, dev);
  return buf;
}

/* ---- random-stream state ----------------------------------------------------------------- */

static uint64_t rng_seed = 0, rng_stream = 0;

void df_rng_seed(uint64_t seed) { rng_seed = seed; rng_stream = 0; }
void df_rng_state(uint64_t *seed, uint64_t *stream) { *seed = rng_seed; *stream = rng_stream; }
void df_rng_set_state(uint64_t seed, uint64_t stream) { rng_seed = seed; rng_stream = stream; }
uint64_t df_rng_next_stream(void) { return rng_stream++; }

/* ---- shapes ----------------------------------------------------------------------------- */

const char *df_shape_str(int ndim, const int64_t *shape, char *buf, int len)
{
  int pos = 0;
  buf[0] = '\0';
  for (int i = 0; i < ndim && pos < len; i++)
    pos += snprintf(buf + pos, (size_t)(len - pos), i ? "x%lld" : "%lld", (long long)shape[i]);
  if (ndim == 0) snprintf(buf, (size_t)len, "scalar");
  return buf;
}

int df_shape_check(int ndim, const int64_t *shape, int64_t *numel)
{
  int64_t n = 1;
  if (ndim < 1 || ndim > DF_MAXDIM)
    return df_fail(DF_EARG, "a tensor has 1 to %d dimensions, not %d", DF_MAXDIM, ndim);
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return df_fail(DF_EARG, "size %lld of dimension %d is negative", (long long)shape[i], i + 1);
    if (shape[i] > DF_MAX_NUMEL)
      return df_fail(DF_EARG, "size %lld of dimension %d is too large", (long long)shape[i], i + 1);
    if (shape[i] != 0 && n > DF_MAX_NUMEL / shape[i]) {
      char b[96];
      return df_fail(DF_EARG, "shape %s has more than 2^40 elements",
                     df_shape_str(ndim, shape, b, sizeof b));
    }
    n *= shape[i];
  }
  *numel = n;
  return DF_OK;
}

/* ---- lifetime --------------------------------------------------------------------------- */

float *df_data(const df_tensor *t)
{
  if (!t->live) return NULL;
  if (t->base) return t->base->live ? t->base->data + t->offset : NULL;
  return t->data;
}

int df_is_live(const df_tensor *t) { return df_data(t) != NULL; }

/* Every entry below checks what it reads: between a binding's checks and its call here Lua code
   may have run (a finaliser during an allocation, an options table's __index) and freed it */
int df_need_live(const df_tensor *t)
{
  if (t && !df_data(t)) return df_fail(DF_ESTATE, "attempt to use a released tensor");
  return DF_OK;
}

int df_tensor_alloc(df_tensor *t, const df_backend *be, int dev, int ndim, const int64_t *shape)
{
  int64_t n;
  int st = df_shape_check(ndim, shape, &n);
  if (st) return st;
  float *p = NULL;
  if ((st = be->alloc(dev, n, &p))) return st;
  memset(t, 0, sizeof *t);
  t->data = p;
  t->live = 1;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  t->numel = n;
  t->be = be;
  t->dev = dev;
  return DF_OK;
}

int df_tensor_like(df_tensor *t, const df_tensor *like)
{
  return df_tensor_alloc(t, like->be, like->dev, like->ndim, like->shape);
}

int df_tensor_view(df_tensor *v, df_tensor *base, int64_t offset, int ndim, const int64_t *shape)
{
  int64_t n;
  int st = df_shape_check(ndim, shape, &n);
  if (st) return st;
  df_tensor *root = base->base ? base->base : base;
  int64_t off = offset + (base->base ? base->offset : 0);
  if (offset < 0 || offset + n > base->numel)
    return df_fail(DF_EARG, "view out of range");
  memset(v, 0, sizeof *v);
  v->base = root;
  v->offset = off;
  v->live = 1;
  v->ndim = ndim;
  for (int i = 0; i < ndim; i++) v->shape[i] = shape[i];
  v->numel = n;
  v->be = base->be;
  v->dev = base->dev;
  return DF_OK;
}

void df_tensor_release(df_tensor *t)
{
  if (t->live && !t->base && t->data) t->be->release(t->dev, t->data);
  t->data = NULL;
  t->live = 0;
}

int df_same_device(const df_tensor *a, const df_tensor *b)
{
  return a->be == b->be && a->dev == b->dev;
}

static int mixed_devices(const df_tensor *a, const df_tensor *b)
{
  char s1[32], s2[32];
  return df_fail(DF_EARG, "tensors are on different devices (%s and %s)",
                 df_device_str(a->be, a->dev, s1, sizeof s1),
                 df_device_str(b->be, b->dev, s2, sizeof s2));
}

/* ---- elementwise ------------------------------------------------------------------------- */

int df_fill(df_tensor *t, float v)
{
  int st = df_need_live(t);
  return st ? st : t->be->fill(t->dev, df_data(t), t->numel, v);
}

int df_random(df_tensor *t, int dist)
{
  int st = df_need_live(t);
  if (st) return st;
  return t->be->random(t->dev, dist, df_data(t), t->numel, rng_seed, df_rng_next_stream());
}

int df_ramp(df_tensor *t, double start, double step, double last)
{
  int st = df_need_live(t);
  if (st) return st;
  return t->be->ramp(t->dev, df_data(t), t->numel, start, step, last);
}

int df_unary(df_tensor *out, int op, const df_tensor *a)
{
  int st = df_need_live(a);
  if (st || (st = df_tensor_like(out, a))) return st;
  return a->be->unary(a->dev, op, df_data(out), df_data(a), a->numel);
}

int df_binary_scalar(df_tensor *out, int op, const df_tensor *a, float s, int scalar_left)
{
  int st = df_need_live(a);
  if (st || (st = df_tensor_like(out, a))) return st;
  return a->be->binary_scalar(a->dev, op, df_data(out), df_data(a), s, scalar_left, a->numel);
}

/* merge neighbouring dims that both operands walk contiguously (or both broadcast), so the
   backend's innermost loop is as long as possible: [4096,1] + [1] becomes one row of 4096 */
static void collapse(df_bcast *bc)
{
  int64_t s[DF_MAXDIM], sa[DF_MAXDIM], sb[DF_MAXDIM];
  int m = 0; /* merged dims, innermost first */
  for (int i = DF_MAXDIM - 1; i >= 0; i--) {
    if (bc->shape[i] == 1) continue;
    if (m > 0 && bc->sa[i] == sa[m - 1] * s[m - 1] && bc->sb[i] == sb[m - 1] * s[m - 1]) {
      s[m - 1] *= bc->shape[i];
      continue;
    }
    s[m] = bc->shape[i]; sa[m] = bc->sa[i]; sb[m] = bc->sb[i];
    m++;
  }
  for (int i = 0; i < DF_MAXDIM; i++) {
    int k = DF_MAXDIM - 1 - i; /* position from the right */
    bc->shape[k] = i < m ? s[i] : 1;
    bc->sa[k] = i < m ? sa[i] : 0;
    bc->sb[k] = i < m ? sb[i] : 0;
  }
}

int df_binary(df_tensor *out, int op, const df_tensor *a, const df_tensor *b)
{
  int st0;
  if ((st0 = df_need_live(a)) || (st0 = df_need_live(b))) return st0;
  if (!df_same_device(a, b)) return mixed_devices(a, b);
  /* numpy rules: align from the right; sizes must match or be 1 */
  int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
  int64_t sh[DF_MAXDIM];
  df_bcast bc;
  int64_t stride_a = 1, stride_b = 1;
  for (int i = DF_MAXDIM - 1, k = 0; i >= 0; i--, k++) {
    int64_t da = k < a->ndim ? a->shape[a->ndim - 1 - k] : 1;
    int64_t db = k < b->ndim ? b->shape[b->ndim - 1 - k] : 1;
    if (da != db && da != 1 && db != 1) {
      char s1[96], s2[96];
      return df_fail(DF_EARG, "shapes %s and %s do not broadcast",
                     df_shape_str(a->ndim, a->shape, s1, sizeof s1),
                     df_shape_str(b->ndim, b->shape, s2, sizeof s2));
    }
    int64_t d = da == 1 ? db : da;
    bc.shape[i] = d;
    bc.sa[i] = da == 1 ? 0 : stride_a;
    bc.sb[i] = db == 1 ? 0 : stride_b;
    stride_a *= da;
    stride_b *= db;
    if (k < nd) sh[nd - 1 - k] = d;
  }
  int st = df_tensor_alloc(out, a->be, a->dev, nd, sh);
  if (st) return st;
  bc.n = out->numel;
  collapse(&bc);
  return a->be->binary(a->dev, op, df_data(out), df_data(a), df_data(b), &bc);
}

/* ---- reductions ------------------------------------------------------------------------ */

int df_reduce_all(const df_tensor *a, int op, double *res)
{
  const float *p = df_data(a);
  int64_t n = a->numel;
  int st;
  if ((st = df_need_live(a))) return st;
  if (n == 0) {
    if (op == DF_RSUM) { *res = 0.0; return DF_OK; }
    if (op == DF_RMIN || op == DF_RMAX) return df_fail(DF_EARG, "the tensor is empty");
    *res = NAN; /* mean, var, std of nothing, as torch */
    return DF_OK;
  }
  switch (op) {
  case DF_RSUM: case DF_RMIN: case DF_RMAX:
    return a->be->reduce_all(a->dev, op, p, n, 0.0, res);
  case DF_RMEAN:
    if ((st = a->be->reduce_all(a->dev, DF_RSUM, p, n, 0.0, res))) return st;
    *res /= (double)n;
    return DF_OK;
  case DF_RVAR: case DF_RSTD: {
    double sum, ssd;
    if ((st = a->be->reduce_all(a->dev, DF_RSUM, p, n, 0.0, &sum))) return st;
    if ((st = a->be->reduce_all(a->dev, DF_RSSD, p, n, sum / (double)n, &ssd))) return st;
    double var = n > 1 ? ssd / (double)(n - 1) : NAN; /* unbiased, as torch */
    *res = op == DF_RSTD ? sqrt(var) : var;
    return DF_OK;
  }
  default:
    return df_fail(DF_EARG, "unknown reduction");
  }
}

int df_minmax(const df_tensor *a, double *lo, double *hi)
{
  int st;
  if (a->numel == 0) { *lo = INFINITY; *hi = -INFINITY; return df_need_live(a); }
  if ((st = df_reduce_all(a, DF_RMIN, lo))) return st;
  return df_reduce_all(a, DF_RMAX, hi);
}

int df_reduce_dim(df_tensor *out, df_tensor *idx, const df_tensor *a, int op, int dim, int keepdim)
{
  int st0 = df_need_live(a);
  if (st0) return st0;
  if (dim < 1 || dim > a->ndim)
    return df_fail(DF_EARG, "dimension %d out of range for a %d-dimensional tensor", dim, a->ndim);
  int64_t outer = 1, inner = 1, len = a->shape[dim - 1];
  for (int i = 0; i < dim - 1; i++) outer *= a->shape[i];
  for (int i = dim; i < a->ndim; i++) inner *= a->shape[i];
  if (len == 0 && (op == DF_RMIN || op == DF_RMAX))
    return df_fail(DF_EARG, "dimension %d is empty", dim);
  int64_t sh[DF_MAXDIM];
  int nd = 0;
  for (int i = 0; i < a->ndim; i++) {
    if (i == dim - 1 && !keepdim) continue;
    sh[nd++] = i == dim - 1 ? 1 : a->shape[i];
  }
  if (nd == 0) sh[nd++] = 1; /* a 1-d tensor reduces to one element */
  int st = df_tensor_alloc(out, a->be, a->dev, nd, sh);
  if (st) return st;
  if (idx && (st = df_tensor_alloc(idx, a->be, a->dev, nd, sh))) return st;
  return a->be->reduce_dim(a->dev, op, df_data(out), idx ? df_data(idx) : NULL, df_data(a),
                           outer, len, inner);
}

/* ---- matmul ----------------------------------------------------------------------------- */

int df_matmul(df_tensor *out, const df_tensor *a, const df_tensor *b)
{
  int st0;
  if ((st0 = df_need_live(a)) || (st0 = df_need_live(b))) return st0;
  if (!df_same_device(a, b)) return mixed_devices(a, b);
  char s1[96], s2[96];
  if (a->ndim > 3 || b->ndim > 3)
    return df_fail(DF_EARG, "matmul takes 1- to 3-dimensional tensors, not %s and %s",
                   df_shape_str(a->ndim, a->shape, s1, sizeof s1),
                   df_shape_str(b->ndim, b->shape, s2, sizeof s2));
  /* a: [batch?] m x k (a vector is 1 x k); b: [batch?] k x n (a vector is k x 1) */
  int64_t ba = a->ndim == 3 ? a->shape[0] : 1, bb = b->ndim == 3 ? b->shape[0] : 1;
  int64_t m = a->ndim == 1 ? 1 : a->shape[a->ndim - 2], k = a->shape[a->ndim - 1];
  int64_t kb = b->ndim == 1 ? b->shape[0] : b->shape[b->ndim - 2];
  int64_t n = b->ndim == 1 ? 1 : b->shape[b->ndim - 1];
  if (k != kb)
    return df_fail(DF_EARG, "inner dimensions do not match (%s and %s)",
                   df_shape_str(a->ndim, a->shape, s1, sizeof s1),
                   df_shape_str(b->ndim, b->shape, s2, sizeof s2));
  if (ba != bb && ba != 1 && bb != 1)
    return df_fail(DF_EARG, "batch sizes do not match (%s and %s)",
                   df_shape_str(a->ndim, a->shape, s1, sizeof s1),
                   df_shape_str(b->ndim, b->shape, s2, sizeof s2));
  int64_t batch = ba == 1 ? bb : ba, sh[3]; /* a batch of 1 broadcasts, also against 0 */
  int nd = 0;
  if (a->ndim == 3 || b->ndim == 3) sh[nd++] = batch;
  if (a->ndim > 1) sh[nd++] = m;
  if (b->ndim > 1) sh[nd++] = n;
  if (nd == 0) sh[nd++] = 1; /* vector . vector */
  int st = df_tensor_alloc(out, a->be, a->dev, nd, sh);
  if (st) return st;
  if (out->numel == 0) return DF_OK; /* (no backend is asked for a product of nothing) */
  if (k == 0) return df_fill(out, 0.0f); /* sums of nothing (the kernels would leave them unset) */
  return a->be->matmul(a->dev, df_data(out), df_data(a), df_data(b), batch, m, k, n,
                       ba == 1 ? 0 : m * k, bb == 1 ? 0 : k * n);
}

/* ---- shape-changing copies --------------------------------------------------------------- */

int df_cat(df_tensor *out, int n, const df_tensor *const *ts, int dim)
{
  const df_tensor *a = ts[0];
  if (dim < 1 || dim > a->ndim)
    return df_fail(DF_EARG, "dimension %d out of range for a %d-dimensional tensor", dim, a->ndim);
  int64_t sh[DF_MAXDIM], total = 0;
  for (int i = 0; i < n; i++) {
    const df_tensor *t = ts[i];
    int st0 = df_need_live(t);
    if (st0) return st0;
    if (!df_same_device(a, t)) return mixed_devices(a, t);
    int ok = t->ndim == a->ndim;
    for (int d = 0; ok && d < a->ndim; d++) ok = d == dim - 1 || t->shape[d] == a->shape[d];
    if (!ok) {
      char s1[96], s2[96];
      return df_fail(DF_EARG, "tensor %d has shape %s, which does not fit %s along dimension %d",
                     i + 1, df_shape_str(t->ndim, t->shape, s1, sizeof s1),
                     df_shape_str(a->ndim, a->shape, s2, sizeof s2), dim);
    }
    total += t->shape[dim - 1];
  }
  for (int d = 0; d < a->ndim; d++) sh[d] = a->shape[d];
  sh[dim - 1] = total;
  int st = df_tensor_alloc(out, a->be, a->dev, a->ndim, sh);
  if (st) return st;
  /* each input is [outer, chunk]; the output is [outer, sum of chunks] */
  int64_t outer = 1, inner = 1, col = 0;
  for (int d = 0; d < dim - 1; d++) outer *= a->shape[d];
  for (int d = dim; d < a->ndim; d++) inner *= a->shape[d];
  for (int i = 0; i < n; i++) {
    int64_t chunk = ts[i]->shape[dim - 1] * inner;
    if (chunk > 0 && outer > 0 &&
        (st = a->be->copy2d(a->dev, df_data(out) + col, total * inner, df_data(ts[i]), chunk,
                            outer, chunk)))
      return st;
    col += chunk;
  }
  return DF_OK;
}

/* copy between any two devices: one side is always the CPU or both are the same device */
int df_copy(df_tensor *dst, const df_tensor *src)
{
  float *d = df_data(dst);
  const float *s = df_data(src);
  int64_t n = src->numel;
  int st0;
  if ((st0 = df_need_live(dst)) || (st0 = df_need_live(src))) return st0;
  if (dst->numel != n) return df_fail(DF_EARG, "sizes differ (%lld and %lld elements)",
                                      (long long)dst->numel, (long long)src->numel);
  if (n == 0 || (d == s && df_same_device(dst, src))) return DF_OK; /* (x:copy(x): no overlapping
                                                                     copy, which CUDA's is not) */
  if (df_same_device(dst, src)) return src->be->copy2d(src->dev, d, n, s, n, 1, n);
  if (dst->be == &df_cpu_backend) return src->be->download(src->dev, d, s, n);
  if (src->be == &df_cpu_backend) return dst->be->upload(dst->dev, d, s, n);
  /* device to another device: through the host */
  float *tmp = NULL;
  int st = df_cpu_backend.alloc(0, n, &tmp);
  if (st) return st;
  st = src->be->download(src->dev, tmp, s, n);
  if (!st) st = dst->be->upload(dst->dev, d, tmp, n);
  df_cpu_backend.release(0, tmp);
  return st;
}

int df_to_device(df_tensor *out, const df_tensor *a, const df_backend *be, int dev)
{
  int st = df_need_live(a);
  if (st || (st = df_tensor_alloc(out, be, dev, a->ndim, a->shape))) return st;
  return df_copy(out, a);
}

int df_download(const df_tensor *a, float *host)
{
  int st = df_need_live(a);
  if (st) return st;
  if (a->numel == 0) return DF_OK;
  return a->be->download(a->dev, host, df_data(a), a->numel);
}

int df_upload(df_tensor *t, const float *host)
{
  int st = df_need_live(t);
  if (st) return st;
  if (t->numel == 0) return DF_OK;
  return t->be->upload(t->dev, df_data(t), host, t->numel);
}

int df_histogram(const df_tensor *a, int64_t bins, double lo, double hi, int64_t *counts)
{
  int st = df_need_live(a);
  if (st) return st;
  if (bins < 1) return df_fail(DF_EARG, "bins must be at least 1 (got %lld)", (long long)bins);
  if (!isfinite(lo) || !isfinite(hi))
    return df_fail(DF_EARG, "min and max must be finite numbers");
  if (!(lo < hi)) return df_fail(DF_EARG, "min must be below max (got %g and %g)", lo, hi);
  /* the backends bin by (v - lo) bins / (hi - lo): that must be finite (edges are float32) */
  if (fabs(lo) > FLT_MAX || fabs(hi) > FLT_MAX)
    return df_fail(DF_EARG, "min and max must be finite in float32 (|v| <= 3.4e38)");
  if (!isfinite((double)bins / (hi - lo)))
    return df_fail(DF_EARG, "the range %g to %g is too narrow for %lld bins", lo, hi, (long long)bins);
  return a->be->histogram(a->dev, df_data(a), a->numel, bins, lo, hi, counts);
}
