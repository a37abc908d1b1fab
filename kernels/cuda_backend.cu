/* cuda_backend.cu: the "cuda" backend table, every operation of df_backend (backend.h) on the GPU.
 *
 * Parity with the CPU reference (cpu_backend.c):
 * - Per-element work calls the shared formulas of dmath.h (df_unary_apply, df_binary_apply,
 *   df_philox_block, df_normal4, df_u01) compiled with -fmad=false, so elementwise ops, random
 *   streams, fill, ramp and histogram counts match the CPU bit for bit. The exceptions are the
 *   formulas dmath.h takes from the math library in double (pow for DF_POW, erfc for
 *   DF_NORMCDF): the device's versions round to the same float or a neighbour.
 * - Reductions accumulate in double, as on the CPU, but in a tree: each thread sums a fixed
 *   grid-stride slice, warps combine with shuffles, blocks in a fixed order. The split depends only
 *   on the sizes, never on the device or timing, so a result is the same from run to run (not
 *   bitwise the CPU's, which sums in another order). reduce_dim with few elements per output, or
 *   many outputs along a contiguous inner dimension, runs the CPU's serial loop per output
 *   (then it is bitwise the CPU's); min/max give the first extremum, NaN propagating.
 * - matmul is cuBLAS SGEMM in full float32 (no TF32); row-major C = A B is computed as the
 *   column-major C^T = B^T A^T, batch stride 0 broadcasting.
 *
 * Every operation selects its device first (cudaSetDevice), returns early for empty work, checks
 * every CUDA/cuBLAS call and every launch, and reports failures through the core's reporter as
 * "cuda <op>: <what> -> <cudaErrorName> (<code>): <description>". All work runs on the legacy
 * default stream, which orders it and makes the caching allocator's reuse safe. Indices are 64-bit
 * with grid-stride loops, so tensors past 2^31 elements work. Not thread-safe (see
 * cuda_backend.h). The diffusion members of the table live in cuda_diffusion.cu, the network
 * and training members in cuda_nn.cu; the helpers all three share in cuda_internal.h. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <utility>
#include "cuda_internal.h"

/* ---- error reporting ----------------------------------------------------------------------- */

static df_fail_fn core_fail;
static char last_error[512];

extern "C" void df_cuda_set_fail(df_fail_fn fail) { core_fail = fail; }

extern "C" const char *df_cuda_last_error(void) { return last_error[0] ? last_error : "no error"; }

extern "C" int df_cuda_fail(int code, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  if (core_fail) core_fail(code, "%s", last_error);
  return code;
}

namespace {

const int MAXDEV = DF_CUDA_MAXDEV;
const int THREADS = DF_CUDA_THREADS;          /* elementwise block size */
const int64_t MAX_BLOCKS = DF_CUDA_MAX_BLOCKS; /* grid cap for grid-stride loops */
const int RED_THREADS = 256;        /* reduce_all, first pass */
const int RED_PARTS = 1024;         /* most blocks (partials) of the first pass */
const int HIST_SHARED_BINS = 4096;  /* histograms up to this many bins count in shared memory */
const unsigned FULL_MASK = 0xffffffffu;

/* the shared helpers (cuda_internal.h) under the names this file has always used */
int cuda_error(const char *op, const char *what, cudaError_t e) { return df_cuda_error(op, what, e); }
int use_device(const char *op, int dev) { return df_cuda_use_device(op, dev); }
unsigned grid_for(int64_t n, int threads) { return df_cuda_grid(n, threads); }
__device__ __forceinline__ int64_t gtid() { return df_gtid(); }
__device__ __forceinline__ int64_t gstride() { return df_gstride(); }

/* ---- fill, ramp, copies ------------------------------------------------------------------- */

__global__ void k_fill(float *x, int64_t n, float v)
{
  for (int64_t i = gtid(); i < n; i += gstride()) x[i] = v;
}

__global__ void k_ramp(float *x, int64_t n, double start, double step, double last)
{
  for (int64_t i = gtid(); i < n; i += gstride())
    x[i] = i == n - 1 ? (float)last : (float)(start + (double)i * step);
}

__global__ void k_copy2d(float *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                         int64_t cols)
{
  int64_t n = rows * cols;
  for (int64_t i = gtid(); i < n; i += gstride()) {
    int64_t r = i / cols, c = i - r * cols;
    dst[r * ldd + c] = src[r * lds + c];
  }
}

/* ---- random: one thread per Philox block of four elements ----------------------------------- */

__global__ void k_random(int dist, float *x, int64_t n, uint64_t seed, uint64_t stream)
{
  int64_t nb = (n + 3) / 4;
  for (int64_t b = gtid(); b < nb; b += gstride()) {
    uint32_t w[4];
    float z[4];
    df_philox_block(seed, stream, (uint64_t)b, w);
    if (dist == DF_NORMAL) df_normal4(w, z);
    else for (int j = 0; j < 4; j++) z[j] = df_u01(w[j]);
    int64_t i = b * 4;
    if (i + 4 <= n && ((uintptr_t)(x + i) & 15u) == 0) {
      *(float4 *)(x + i) = make_float4(z[0], z[1], z[2], z[3]);
    } else {
      for (int j = 0; j < 4 && i + j < n; j++) x[i + j] = z[j];
    }
  }
}

/* ---- elementwise ---------------------------------------------------------------------------- */

template <int OP> __global__ void k_unary(float *out, const float *a, int64_t n)
{
  for (int64_t i = gtid(); i < n; i += gstride()) out[i] = df_unary_apply(OP, a[i]);
}

/* both operands walk one dimension (stride 1) or hold one value (stride 0) */
template <int OP>
__global__ void k_binary_flat(float *out, const float *a, int64_t sa, const float *b, int64_t sb,
                              int64_t n)
{
  for (int64_t i = gtid(); i < n; i += gstride())
    out[i] = df_binary_apply(OP, a[i * sa], b[i * sb]);
}

/* the general broadcast over four dims; I is the index type of the div/mod chain (32-bit when
   the output fits, which is several times faster than 64-bit division) */
template <int OP, typename I>
__global__ void k_binary_bcast(float *out, const float *a, const float *b, df_bcast bc)
{
  const I s1 = (I)bc.shape[1], s2 = (I)bc.shape[2], s3 = (I)bc.shape[3];
  for (int64_t t = gtid(); t < bc.n; t += gstride()) {
    I r = (I)t;
    I i3 = r % s3;
    r /= s3;
    I i2 = r % s2;
    r /= s2;
    I i1 = r % s1;
    I i0 = r / s1;
    int64_t ia = (int64_t)i0 * bc.sa[0] + (int64_t)i1 * bc.sa[1] + (int64_t)i2 * bc.sa[2] +
                 (int64_t)i3 * bc.sa[3];
    int64_t ib = (int64_t)i0 * bc.sb[0] + (int64_t)i1 * bc.sb[1] + (int64_t)i2 * bc.sb[2] +
                 (int64_t)i3 * bc.sb[3];
    out[t] = df_binary_apply(OP, a[ia], b[ib]);
  }
}

template <int OP, bool LEFT>
__global__ void k_binary_scalar(float *out, const float *a, float s, int64_t n)
{
  for (int64_t i = gtid(); i < n; i += gstride())
    out[i] = LEFT ? df_binary_apply(OP, s, a[i]) : df_binary_apply(OP, a[i], s);
}

/* ---- reduction building blocks ------------------------------------------------------------ */

struct SumD {
  __device__ double operator()(double x, double y) const { return x + y; }
};
/* min / max with NaN propagating */
struct MinD {
  __device__ double operator()(double x, double y) const
  {
    return x != x ? x : ((y != y || y < x) ? y : x);
  }
};
struct MaxD {
  __device__ double operator()(double x, double y) const
  {
    return x != x ? x : ((y != y || y > x) ? y : x);
  }
};

/* a value and its position along the reduced dimension; i < 0: no element yet */
struct VI {
  float v;
  long long i;
};

/* the better of two candidates: a NaN wins (the first one), then the smaller (larger) value, then
   the earlier position; so the result is the first extremum whatever the combination order */
template <bool MAX> struct CombVI {
  __device__ VI operator()(VI x, VI y) const
  {
    if (x.i < 0) return y;
    if (y.i < 0) return x;
    bool xn = x.v != x.v, yn = y.v != y.v;
    if (xn || yn) {
      if (xn && yn) return x.i <= y.i ? x : y;
      return xn ? x : y;
    }
    if (MAX ? y.v > x.v : y.v < x.v) return y;
    if (MAX ? x.v > y.v : x.v < y.v) return x;
    return x.i <= y.i ? x : y;
  }
};

__device__ __forceinline__ double shfl_down(double v, int o)
{
  return __shfl_down_sync(FULL_MASK, v, o);
}

__device__ __forceinline__ VI shfl_down(VI x, int o)
{
  VI y;
  y.v = __shfl_down_sync(FULL_MASK, x.v, o);
  y.i = __shfl_down_sync(FULL_MASK, x.i, o);
  return y;
}

/* the whole block's combination of v, returned to every thread: a shuffle tree in each warp, then
   thread 0 combines the warps' results in warp order. blockDim.x must be a multiple of 32 (up to
   1024); shm holds 33 entries. The order is fixed by the block size alone. */
template <typename T, typename C> __device__ T block_reduce(T v, C comb, T *shm)
{
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = comb(v, shfl_down(v, o));
  __syncthreads(); /* shm may still be read by a previous call */
  if (lane == 0) shm[w] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T r = shm[0];
    for (int k = 1; k < nw; k++) r = comb(r, shm[k]);
    shm[32] = r;
  }
  __syncthreads();
  return shm[32];
}

/* ---- reduce_all: blocks -> partials[gridDim.x] -> one block -> *res -------------------------- */

template <int OP> struct RedAll; /* how elements enter (map) and how partials combine */
template <> struct RedAll<DF_RSUM> {
  typedef SumD C;
  static __device__ double init() { return 0.0; }
  static __device__ double map(float x, double) { return (double)x; }
};
template <> struct RedAll<DF_RSSD> {
  typedef SumD C;
  static __device__ double init() { return 0.0; }
  static __device__ double map(float x, double c)
  {
    double d = (double)x - c;
    return d * d;
  }
};
template <> struct RedAll<DF_RMIN> {
  typedef MinD C;
  static __device__ double init() { return INFINITY; }
  static __device__ double map(float x, double) { return (double)x; }
};
template <> struct RedAll<DF_RMAX> {
  typedef MaxD C;
  static __device__ double init() { return -INFINITY; }
  static __device__ double map(float x, double) { return (double)x; }
};

template <int OP>
__global__ void k_reduce_partial(const float *a, int64_t n, double param, double *part)
{
  __shared__ double shm[33];
  typedef RedAll<OP> R;
  typename R::C comb;
  double acc = R::init();
  for (int64_t i = gtid(); i < n; i += gstride()) acc = comb(acc, R::map(a[i], param));
  double r = block_reduce(acc, comb, shm);
  if (threadIdx.x == 0) part[blockIdx.x] = r;
}

template <int OP> __global__ void k_reduce_final(const double *part, int np, double *res)
{
  __shared__ double shm[33];
  typedef RedAll<OP> R;
  typename R::C comb;
  double acc = R::init();
  for (int i = threadIdx.x; i < np; i += blockDim.x) acc = comb(acc, part[i]);
  double r = block_reduce(acc, comb, shm);
  if (threadIdx.x == 0) *res = r;
}

template <int OP>
int reduce_all_run(int dev, const float *a, int64_t n, double param, double *res)
{
  const char *op = "reduce_all";
  /* the number of partials depends on n alone: the summation order is fixed by the sizes */
  int64_t blocks = (n + RED_THREADS - 1) / RED_THREADS;
  int parts = (int)(blocks < RED_PARTS ? blocks : RED_PARTS);
  void *scratch = NULL;
  TRY(df_cuda_malloc(dev, (size_t)(parts + 1) * sizeof(double), &scratch));
  double *part = (double *)scratch, *out = part + parts;
  int st = DF_OK;
  k_reduce_partial<OP><<<parts, RED_THREADS>>>(a, n, param, part);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) {
    k_reduce_final<OP><<<1, RED_PARTS>>>(part, parts, out);
    e = cudaGetLastError();
    if (e == cudaSuccess) {
      e = cudaMemcpy(res, out, sizeof(double), cudaMemcpyDeviceToHost);
      if (e != cudaSuccess) st = cuda_error(op, "cudaMemcpy of the result", e);
    } else {
      st = cuda_error(op, "kernel launch (final pass)", e);
    }
  } else {
    st = cuda_error(op, "kernel launch", e);
  }
  df_cuda_free(dev, scratch);
  return st;
}

/* ---- reduce_dim --------------------------------------------------------------------------- */

/* one output by one thread: the CPU's loop, statement for statement */
template <int OP>
__device__ void rdim_serial(const float *p, int64_t len, int64_t inner, float *dst, float *idst)
{
  if (OP == DF_RMIN || OP == DF_RMAX) {
    float m = p[0];
    int64_t at = 0;
    for (int64_t l = 1; l < len && m == m; l++) {
      float v = p[l * inner];
      if (v != v || (OP == DF_RMIN ? v < m : v > m)) {
        m = v;
        at = l;
      }
    }
    *dst = m;
    if (idst) *idst = (float)(at + 1);
    return;
  }
  double sum = 0.0;
  for (int64_t l = 0; l < len; l++) sum += (double)p[l * inner];
  if (OP == DF_RSUM) { *dst = (float)sum; return; }
  double mean = sum / (double)len;
  if (OP == DF_RMEAN) { *dst = (float)mean; return; }
  double ssd = 0.0;
  for (int64_t l = 0; l < len; l++) {
    double d = (double)p[l * inner] - mean;
    ssd += d * d;
  }
  double var = len > 1 ? ssd / (double)(len - 1) : NAN;
  *dst = (float)(OP == DF_RSTD ? sqrt(var) : var);
}

template <int OP>
__global__ void k_rdim_thread(float *out, float *idx, const float *a, int64_t outer, int64_t len,
                              int64_t inner)
{
  int64_t nout = outer * inner;
  for (int64_t j = gtid(); j < nout; j += gstride()) {
    int64_t o = j / inner, i = j - o * inner;
    rdim_serial<OP>(a + o * len * inner + i, len, inner, out + j, idx ? idx + j : NULL);
  }
}

/* one output by one block: threads take every blockDim.x-th element, then block_reduce */
template <int OP>
__global__ void k_rdim_block(float *out, float *idx, const float *a, int64_t outer, int64_t len,
                             int64_t inner)
{
  __shared__ double shd[33];
  __shared__ VI shv[33];
  int64_t nout = outer * inner;
  for (int64_t j = blockIdx.x; j < nout; j += gridDim.x) {
    int64_t o = j / inner, i = j - o * inner;
    const float *p = a + o * len * inner + i;
    if (OP == DF_RMIN || OP == DF_RMAX) {
      CombVI<OP == DF_RMAX> comb;
      VI m;
      m.v = 0.0f;
      m.i = -1;
      for (int64_t l = threadIdx.x; l < len; l += blockDim.x) {
        VI x;
        x.v = p[l * inner];
        x.i = l;
        m = comb(m, x);
      }
      m = block_reduce(m, comb, shv);
      if (threadIdx.x == 0) {
        out[j] = m.v;
        if (idx) idx[j] = (float)(m.i + 1);
      }
      continue;
    }
    SumD sum;
    double s = 0.0;
    for (int64_t l = threadIdx.x; l < len; l += blockDim.x) s += (double)p[l * inner];
    s = block_reduce(s, sum, shd);
    if (OP == DF_RSUM) {
      if (threadIdx.x == 0) out[j] = (float)s;
      continue;
    }
    double mean = s / (double)len;
    if (OP == DF_RMEAN) {
      if (threadIdx.x == 0) out[j] = (float)mean;
      continue;
    }
    double q = 0.0;
    for (int64_t l = threadIdx.x; l < len; l += blockDim.x) {
      double d = (double)p[l * inner] - mean;
      q += d * d;
    }
    q = block_reduce(q, sum, shd);
    if (threadIdx.x == 0) {
      double var = len > 1 ? q / (double)(len - 1) : NAN;
      out[j] = (float)(OP == DF_RSTD ? sqrt(var) : var);
    }
  }
}

template <int OP>
int reduce_dim_run(float *out, float *idx, const float *a, int64_t outer, int64_t len,
                   int64_t inner)
{
  int64_t nout = outer * inner;
  /* the serial loop when each output is short, or when there are many outputs whose neighbours
     read neighbouring addresses (inner >= 32); else a block per output. The choice depends only
     on the sizes, so results are reproducible. */
  if (len <= 32 || (inner >= 32 && nout >= 2048)) {
    k_rdim_thread<OP><<<grid_for(nout, THREADS), THREADS>>>(out, idx, a, outer, len, inner);
  } else {
    int threads = (len >= 4096 && nout < 1024) ? 256 : 32;
    int64_t blocks = nout < (MAX_BLOCKS * 16) ? nout : MAX_BLOCKS * 16;
    k_rdim_block<OP><<<(unsigned)blocks, threads>>>(out, idx, a, outer, len, inner);
  }
  LAUNCHED("reduce_dim");
  return DF_OK;
}

/* ---- histogram ----------------------------------------------------------------------------- */

/* the CPU's binning, in double: bin = (int64)((v - lo) * scale), the last bin takes hi */
__device__ __forceinline__ int64_t hist_bin(float x, int64_t bins, double lo, double hi,
                                            double scale)
{
  double v = (double)x;
  if (!(v >= lo && v <= hi)) return -1; /* outside, or NaN */
  int64_t b = (int64_t)((v - lo) * scale);
  return b >= bins ? bins - 1 : b;
}

__global__ void k_hist_shared(const float *x, int64_t n, int bins, double lo, double hi,
                              double scale, unsigned long long *counts)
{
  extern __shared__ unsigned long long local[];
  for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
  __syncthreads();
  for (int64_t i = gtid(); i < n; i += gstride()) {
    int64_t b = hist_bin(x[i], bins, lo, hi, scale);
    if (b >= 0) atomicAdd(&local[b], 1ull);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < bins; b += blockDim.x)
    if (local[b]) atomicAdd(&counts[b], local[b]);
}

__global__ void k_hist_global(const float *x, int64_t n, int64_t bins, double lo, double hi,
                              double scale, unsigned long long *counts)
{
  for (int64_t i = gtid(); i < n; i += gstride()) {
    int64_t b = hist_bin(x[i], bins, lo, hi, scale);
    if (b >= 0) atomicAdd(&counts[b], 1ull);
  }
}

/* ---- cuBLAS -------------------------------------------------------------------------------- */

cublasHandle_t blas_handles[MAXDEV];

int blas_error(const char *what, cublasStatus_t s) { return df_cuda_blas_error("matmul", what, s); }

int blas_handle(int dev, cublasHandle_t *h) { return df_cuda_blas(dev, h); }

} // namespace

int df_cuda_blas_error(const char *op, const char *what, cublasStatus_t s)
{
  return df_cuda_fail(s == CUBLAS_STATUS_ALLOC_FAILED ? DF_ENOMEM : DF_EDEVICE,
                      "cuda %s: %s -> %s (%d): %s", op, what, cublasGetStatusName(s), (int)s,
                      cublasGetStatusString(s));
}

/* the device's handle, created on first use and kept (the device is already selected) */
int df_cuda_blas(int dev, cublasHandle_t *h)
{
  if (!blas_handles[dev]) {
    cublasHandle_t nh = NULL;
    cublasStatus_t s = cublasCreate(&nh);
    if (s != CUBLAS_STATUS_SUCCESS) return blas_error("cublasCreate", s);
    /* full float32 products (no TF32 tensor cores), results independent of the run */
    s = cublasSetMathMode(nh, CUBLAS_DEFAULT_MATH);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetAtomicsMode(nh, CUBLAS_ATOMICS_NOT_ALLOWED);
    if (s != CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(nh);
      return blas_error("cublasSetMathMode/cublasSetAtomicsMode", s);
    }
    blas_handles[dev] = nh;
  }
  *h = blas_handles[dev];
  return DF_OK;
}

/* ---- the table's functions ------------------------------------------------------------------ */

extern "C" int df_cuda_device_count(int *count)
{
  int c = 0;
  cudaError_t e = cudaGetDeviceCount(&c);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return df_cuda_fail(DF_EDEVICE, "no usable CUDA device: cudaGetDeviceCount -> %s (%d): %s",
                        cudaGetErrorName(e), (int)e, cudaGetErrorString(e));
  }
  if (c < 1)
    return df_cuda_fail(DF_EDEVICE, "no usable CUDA device: cudaGetDeviceCount found none");
  *count = c < MAXDEV ? c : MAXDEV;
  return DF_OK;
}

extern "C" int df_cuda_synchronize(int dev)
{
  TRY(use_device("sync", dev));
  CK("sync", "cudaDeviceSynchronize", cudaDeviceSynchronize());
  return DF_OK;
}

extern "C" int df_cuda_device_props(int dev, df_cuda_props *p)
{
  const char *op = "device_properties";
  memset(p, 0, sizeof *p);
  TRY(use_device(op, dev));
  cudaDeviceProp prop;
  CK(op, "cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, dev));
  snprintf(p->name, sizeof p->name, "%s", prop.name);
  p->total_mem = (int64_t)prop.totalGlobalMem;
  struct { cudaDeviceAttr a; int *v; } attrs[] = {
    { cudaDevAttrComputeCapabilityMajor, &p->cc_major },
    { cudaDevAttrComputeCapabilityMinor, &p->cc_minor },
    { cudaDevAttrMultiProcessorCount, &p->sm_count },
    { cudaDevAttrClockRate, &p->clock_khz },
    { cudaDevAttrMemoryClockRate, &p->mem_clock_khz },
    { cudaDevAttrGlobalMemoryBusWidth, &p->bus_width_bits },
  };
  for (auto &at : attrs) CK(op, "cudaDeviceGetAttribute", cudaDeviceGetAttribute(at.v, at.a, dev));
  /* FP32 lanes per SM: 64 on sm_60, sm_70/75 and sm_80; 128 on sm_61, sm_86/87/89, sm_90 and
     later */
  int cc = p->cc_major * 10 + p->cc_minor;
  p->fp32_lanes_per_sm = (cc == 60 || (cc >= 70 && cc <= 80)) ? 64 : 128;
  p->peak_fp32_flops = (double)p->sm_count * p->fp32_lanes_per_sm * 2.0 * p->clock_khz * 1e3;
  p->peak_mem_bytes = 2.0 * p->mem_clock_khz * 1e3 * (p->bus_width_bits / 8.0);
  return DF_OK;
}

static int cuda_device_name(int dev, char *buf, size_t len)
{
  if (dev < 0 || dev >= MAXDEV)
    return df_cuda_fail(DF_EARG, "cuda device_name: device index %d out of range", dev);
  cudaDeviceProp prop;
  CK("device_name", "cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, dev));
  snprintf(buf, len, "%s", prop.name);
  return DF_OK;
}

static int cuda_alloc(int dev, int64_t n, float **p)
{
  if (n < 0) return df_cuda_fail(DF_EARG, "cuda alloc: negative size %lld", (long long)n);
  void *q = NULL;
  TRY(df_cuda_malloc(dev, (size_t)n * sizeof(float), &q));
  *p = (float *)q;
  return DF_OK;
}

static void cuda_release(int dev, float *p) { df_cuda_free(dev, p); }

static int cuda_upload(int dev, float *dst, const float *src, int64_t n)
{
  if (n <= 0) return DF_OK;
  TRY(use_device("upload", dev));
  CK("upload", "cudaMemcpy host to device",
     cudaMemcpy(dst, src, (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
  return DF_OK;
}

static int cuda_download(int dev, float *dst, const float *src, int64_t n)
{
  if (n <= 0) return DF_OK;
  TRY(use_device("download", dev));
  CK("download", "cudaMemcpy device to host",
     cudaMemcpy(dst, src, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
  return DF_OK;
}

static int cuda_copy2d(int dev, float *dst, int64_t ldd, const float *src, int64_t lds,
                       int64_t rows, int64_t cols)
{
  const char *op = "copy2d";
  if (rows <= 0 || cols <= 0) return DF_OK;
  TRY(use_device(op, dev));
  if (rows == 1 || (ldd == cols && lds == cols)) { /* one contiguous block */
    CK(op, "cudaMemcpy device to device",
       cudaMemcpy(dst, src, (size_t)(rows * cols) * sizeof(float), cudaMemcpyDeviceToDevice));
    return DF_OK;
  }
  int max_pitch = 0;
  CK(op, "cudaDeviceGetAttribute(MaxPitch)",
     cudaDeviceGetAttribute(&max_pitch, cudaDevAttrMaxPitch, dev));
  if (ldd * (int64_t)sizeof(float) <= (int64_t)max_pitch &&
      lds * (int64_t)sizeof(float) <= (int64_t)max_pitch) {
    CK(op, "cudaMemcpy2D",
       cudaMemcpy2D(dst, (size_t)ldd * sizeof(float), src, (size_t)lds * sizeof(float),
                    (size_t)cols * sizeof(float), (size_t)rows, cudaMemcpyDeviceToDevice));
    return DF_OK;
  }
  /* rows too far apart for the copy engine's pitch: a kernel */
  k_copy2d<<<grid_for(rows * cols, THREADS), THREADS>>>(dst, ldd, src, lds, rows, cols);
  LAUNCHED(op);
  return DF_OK;
}

static int cuda_fill(int dev, float *x, int64_t n, float v)
{
  if (n <= 0) return DF_OK;
  TRY(use_device("fill", dev));
  k_fill<<<grid_for(n, THREADS), THREADS>>>(x, n, v);
  LAUNCHED("fill");
  return DF_OK;
}

static int cuda_ramp(int dev, float *x, int64_t n, double start, double step, double last)
{
  if (n <= 0) return DF_OK;
  TRY(use_device("ramp", dev));
  k_ramp<<<grid_for(n, THREADS), THREADS>>>(x, n, start, step, last);
  LAUNCHED("ramp");
  return DF_OK;
}

static int cuda_random(int dev, int dist, float *x, int64_t n, uint64_t seed, uint64_t stream)
{
  if (dist != DF_UNIFORM && dist != DF_NORMAL)
    return df_cuda_fail(DF_EARG, "cuda random: unknown distribution %d", dist);
  if (n <= 0) return DF_OK;
  TRY(use_device("random", dev));
  k_random<<<grid_for((n + 3) / 4, THREADS), THREADS>>>(dist, x, n, seed, stream);
  LAUNCHED("random");
  return DF_OK;
}

/* one specialised kernel per op code, dispatched through a table built over 0 .. count-1, so an
   op added to dmath.h gets its kernel without an edit here */
typedef void (*unary_kernel)(float *, const float *, int64_t);
template <int... OP> const unary_kernel *unary_table(std::integer_sequence<int, OP...>)
{
  static const unary_kernel table[] = { k_unary<OP>... };
  return table;
}

typedef void (*flat_kernel)(float *, const float *, int64_t, const float *, int64_t, int64_t);
typedef void (*bcast_kernel)(float *, const float *, const float *, df_bcast);
typedef void (*scalar_kernel)(float *, const float *, float, int64_t);
struct BinaryKernels {
  flat_kernel flat;
  bcast_kernel bcast32, bcast64;
  scalar_kernel left, right;
};
template <int... OP> const BinaryKernels *binary_table(std::integer_sequence<int, OP...>)
{
  static const BinaryKernels table[] = {
    { k_binary_flat<OP>, k_binary_bcast<OP, uint32_t>, k_binary_bcast<OP, int64_t>,
      k_binary_scalar<OP, true>, k_binary_scalar<OP, false> }...
  };
  return table;
}

static int cuda_unary(int dev, int op, float *out, const float *a, int64_t n)
{
  if (op < 0 || op >= DF_NUNARY) return df_cuda_fail(DF_EARG, "cuda unary: unknown op %d", op);
  if (n <= 0) return DF_OK;
  TRY(use_device("unary", dev));
  unary_kernel k = unary_table(std::make_integer_sequence<int, DF_NUNARY>())[op];
  k<<<grid_for(n, THREADS), THREADS>>>(out, a, n);
  LAUNCHED("unary");
  return DF_OK;
}

static int cuda_binary(int dev, int op, float *out, const float *a, const float *b,
                       const df_bcast *bc)
{
  if (op < 0 || op >= DF_NBINARY) return df_cuda_fail(DF_EARG, "cuda binary: unknown op %d", op);
  int64_t n = bc->n;
  if (n <= 0) return DF_OK;
  TRY(use_device("binary", dev));
  const BinaryKernels &k = binary_table(std::make_integer_sequence<int, DF_NBINARY>())[op];
  unsigned g = grid_for(n, THREADS);
  if (bc->shape[0] == 1 && bc->shape[1] == 1 && bc->shape[2] == 1) /* one walking dimension */
    k.flat<<<g, THREADS>>>(out, a, bc->sa[3], b, bc->sb[3], n);
  else if (n <= INT32_MAX)
    k.bcast32<<<g, THREADS>>>(out, a, b, *bc);
  else
    k.bcast64<<<g, THREADS>>>(out, a, b, *bc);
  LAUNCHED("binary");
  return DF_OK;
}

static int cuda_binary_scalar(int dev, int op, float *out, const float *a, float s,
                              int scalar_left, int64_t n)
{
  if (op < 0 || op >= DF_NBINARY)
    return df_cuda_fail(DF_EARG, "cuda binary_scalar: unknown op %d", op);
  if (n <= 0) return DF_OK;
  TRY(use_device("binary_scalar", dev));
  const BinaryKernels &k = binary_table(std::make_integer_sequence<int, DF_NBINARY>())[op];
  (scalar_left ? k.left : k.right)<<<grid_for(n, THREADS), THREADS>>>(out, a, s, n);
  LAUNCHED("binary_scalar");
  return DF_OK;
}

static int cuda_reduce_all(int dev, int op, const float *a, int64_t n, double param, double *res)
{
  if (n <= 0) { /* the core handles empty tensors; keep the CPU's answers anyway */
    if (op == DF_RSUM || op == DF_RSSD) { *res = 0.0; return DF_OK; }
    return df_cuda_fail(DF_EARG, "cuda reduce_all: the tensor is empty");
  }
  TRY(use_device("reduce_all", dev));
  switch (op) {
  case DF_RSUM: return reduce_all_run<DF_RSUM>(dev, a, n, param, res);
  case DF_RSSD: return reduce_all_run<DF_RSSD>(dev, a, n, param, res);
  case DF_RMIN: return reduce_all_run<DF_RMIN>(dev, a, n, param, res);
  case DF_RMAX: return reduce_all_run<DF_RMAX>(dev, a, n, param, res);
  default: return df_cuda_fail(DF_EARG, "cuda reduce_all: unknown reduction %d", op);
  }
}

static int cuda_reduce_dim(int dev, int op, float *out, float *idx, const float *a, int64_t outer,
                           int64_t len, int64_t inner)
{
  if (outer <= 0 || inner <= 0) return DF_OK;
  if (len <= 0 && (op == DF_RMIN || op == DF_RMAX))
    return df_cuda_fail(DF_EARG, "cuda reduce_dim: the reduced dimension is empty");
  TRY(use_device("reduce_dim", dev));
  switch (op) {
  case DF_RSUM: return reduce_dim_run<DF_RSUM>(out, idx, a, outer, len, inner);
  case DF_RMEAN: return reduce_dim_run<DF_RMEAN>(out, idx, a, outer, len, inner);
  case DF_RVAR: return reduce_dim_run<DF_RVAR>(out, idx, a, outer, len, inner);
  case DF_RSTD: return reduce_dim_run<DF_RSTD>(out, idx, a, outer, len, inner);
  case DF_RMIN: return reduce_dim_run<DF_RMIN>(out, idx, a, outer, len, inner);
  case DF_RMAX: return reduce_dim_run<DF_RMAX>(out, idx, a, outer, len, inner);
  default: return df_cuda_fail(DF_EARG, "cuda reduce_dim: unknown reduction %d", op);
  }
}

static int cuda_matmul(int dev, float *c, const float *a, const float *b, int64_t batch,
                       int64_t m, int64_t k, int64_t n, int64_t stride_a, int64_t stride_b)
{
  if (batch <= 0 || m <= 0 || n <= 0) return DF_OK;
  if (k <= 0) return cuda_fill(dev, c, batch * m * n, 0.0f); /* empty sums */
  TRY(use_device("matmul", dev));
  cublasHandle_t h = NULL;
  TRY(blas_handle(dev, &h));
  const float one = 1.0f, zero = 0.0f;
  cublasStatus_t s;
  /* row-major C (m x n) = A (m x k) B (k x n) is column-major C^T (n x m) = B^T A^T:
     B^T is B's memory read column-major with ld n, A^T is A's with ld k */
  if (batch == 1) {
    s = cublasSgemm_64(h, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &one, b, n, a, k, &zero, c, n);
    if (s != CUBLAS_STATUS_SUCCESS) return blas_error("cublasSgemm", s);
  } else {
    s = cublasSgemmStridedBatched_64(h, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &one, b, n,
                                     (long long)stride_b, a, k, (long long)stride_a, &zero, c, n,
                                     (long long)(m * n), batch);
    if (s != CUBLAS_STATUS_SUCCESS) return blas_error("cublasSgemmStridedBatched", s);
  }
  LAUNCHED("matmul");
  return DF_OK;
}

static int cuda_histogram(int dev, const float *x, int64_t n, int64_t bins, double lo, double hi,
                          int64_t *counts)
{
  const char *op = "histogram";
  if (bins <= 0) return df_cuda_fail(DF_EARG, "cuda histogram: bins must be at least 1");
  if (n <= 0) {
    for (int64_t b = 0; b < bins; b++) counts[b] = 0;
    return DF_OK;
  }
  TRY(use_device(op, dev));
  double scale = (double)bins / (hi - lo); /* as the CPU computes it */
  void *buf = NULL;
  TRY(df_cuda_malloc(dev, (size_t)bins * sizeof(unsigned long long), &buf));
  unsigned long long *dcounts = (unsigned long long *)buf;
  int st = DF_OK;
  cudaError_t e = cudaMemset(dcounts, 0, (size_t)bins * sizeof(unsigned long long));
  if (e != cudaSuccess) {
    st = cuda_error(op, "cudaMemset", e);
  } else {
    if (bins <= HIST_SHARED_BINS) {
      int64_t blocks = (n + THREADS - 1) / THREADS;
      unsigned g = (unsigned)(blocks < 512 ? blocks : 512);
      k_hist_shared<<<g, THREADS, (size_t)bins * sizeof(unsigned long long)>>>(
        x, n, (int)bins, lo, hi, scale, dcounts);
    } else {
      k_hist_global<<<grid_for(n, THREADS), THREADS>>>(x, n, bins, lo, hi, scale, dcounts);
    }
    e = cudaGetLastError();
    if (e != cudaSuccess) st = cuda_error(op, "kernel launch", e);
    /* the counts are non-negative and below 2^63: the same bits as int64_t */
    else if ((e = cudaMemcpy(counts, dcounts, (size_t)bins * sizeof(int64_t),
                             cudaMemcpyDeviceToHost)) != cudaSuccess)
      st = cuda_error(op, "cudaMemcpy of the counts", e);
  }
  df_cuda_free(dev, buf);
  return st;
}

static int cuda_sync(int dev) { return df_cuda_synchronize(dev); }

static_assert(sizeof(unsigned long long) == sizeof(int64_t), "histogram counts are copied as is");

/* the table, filled by member name (members the core adds later stay NULL, "not on this
   device", until they get kernels) */
static df_backend cuda_table(void)
{
  df_backend t;
  memset(&t, 0, sizeof t);
  t.name = "cuda";
  t.device_count = df_cuda_device_count;
  t.device_name = cuda_device_name;
  t.alloc = cuda_alloc;
  t.release = cuda_release;
  t.upload = cuda_upload;
  t.download = cuda_download;
  t.copy2d = cuda_copy2d;
  t.fill = cuda_fill;
  t.ramp = cuda_ramp;
  t.random = cuda_random;
  t.unary = cuda_unary;
  t.binary = cuda_binary;
  t.binary_scalar = cuda_binary_scalar;
  t.reduce_all = cuda_reduce_all;
  t.reduce_dim = cuda_reduce_dim;
  t.matmul = cuda_matmul;
  t.histogram = cuda_histogram;
  t.sync = cuda_sync;
  /* diffusion (cuda_diffusion.cu) */
  t.diffuser_eval = cuda_diffuser_eval;
  t.score_eval = cuda_score_eval;
  t.mixture_logpdf = cuda_mixture_logpdf;
  t.mixture_sample = cuda_mixture_sample;
  t.sample_fused = cuda_sample_fused;
  t.sample_step = cuda_sample_step;
  t.rowlin = cuda_rowlin;
  t.rowdot = cuda_rowdot;
  t.errnorm = cuda_errnorm;
  t.random_at = cuda_random_at;
  t.mixture_div = cuda_mixture_div;
  t.mixture_jvp = cuda_mixture_jvp;
  /* score networks and training (cuda_nn.cu) */
  t.net_workspace = cuda_net_workspace;
  t.net_forward = cuda_net_forward;
  t.net_jvp_workspace = cuda_net_jvp_workspace;
  t.net_jvp = cuda_net_jvp;
  t.net_backward = cuda_net_backward;
  t.net_sample = cuda_net_sample;
  t.dsm_step = cuda_dsm_step;
  t.adam = cuda_adam;
  t.ema = cuda_ema;
  t.train_steps = cuda_train_steps;
  return t;
}

extern "C" const df_backend df_cuda_backend = cuda_table();
