/* cuda_internal.h: what the CUDA backend's nvcc translation units share (cuda_backend.cu, the
 * table and the tensor operations; cuda_diffusion.cu; cuda_nn.cu): the error macros, device
 * selection, launch geometry, the per-device cuBLAS handle, and the table members each file
 * provides. Never included by l_cuda.c (cc, no CUDA headers): that one sees cuda_backend.h.
 *
 * Conventions, as in cuda_backend.cu: every operation selects its device, returns early for empty
 * work, checks every CUDA/cuBLAS call and launch, and reports "cuda <op>: <what> -> <name> (<code>):
 * <description>" through df_cuda_fail (the core's reporter). Plain operations run on the legacy
 * default stream (stream 0), which orders them and makes the caching allocator's reuse safe; the
 * only other stream is the one training graphs are captured on (cuda_nn.cu), which never runs
 * work itself. Indices are 64-bit, loops grid-stride. */
#ifndef DF_CUDA_INTERNAL_H
#define DF_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <stdint.h>
#include <stdlib.h>
#include "status.h"
#include "dmath.h"
#include "cuda_backend.h"

#define DF_CUDA_MAXDEV 64
#define DF_CUDA_THREADS 256          /* elementwise block size */
#define DF_CUDA_MAX_BLOCKS 65536     /* grid cap for grid-stride loops */

static inline int df_cuda_error(const char *op, const char *what, cudaError_t e)
{
  (void)cudaGetLastError(); /* reported here: do not report it again at the next launch */
  return df_cuda_fail(e == cudaErrorMemoryAllocation ? DF_ENOMEM : DF_EDEVICE,
                      "cuda %s: %s -> %s (%d): %s", op, what, cudaGetErrorName(e), (int)e,
                      cudaGetErrorString(e));
}

#define CK(op, what, call)                                                                    \
  do {                                                                                        \
    cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess) return df_cuda_error(op, what, e_);                                \
  } while (0)

/* after a <<<...>>> launch: configuration errors show up here, earlier asynchronous faults too */
#define LAUNCHED(op) CK(op, "kernel launch", cudaGetLastError())

#define TRY(call)                                                                             \
  do {                                                                                        \
    int st_ = (call);                                                                         \
    if (st_ != DF_OK) return st_;                                                             \
  } while (0)

static inline int df_cuda_use_device(const char *op, int dev)
{
  if (dev < 0 || dev >= DF_CUDA_MAXDEV)
    return df_cuda_fail(DF_EARG, "cuda %s: device index %d out of range (0 to %d)", op, dev,
                        DF_CUDA_MAXDEV - 1);
  CK(op, "cudaSetDevice", cudaSetDevice(dev));
  return DF_OK;
}

/* a fresh device block (the caching allocator's) holding the bytes of a host block: a sampler
   run's step tables; the host block is freed either way */
static inline int df_cuda_upload(const char *op, int dev, void *host, size_t bytes, void **dbuf)
{
  int st = df_cuda_malloc(dev, bytes, dbuf);
  if (st == DF_OK) {
    cudaError_t e = cudaMemcpy(*dbuf, host, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
      df_cuda_free(dev, *dbuf);
      *dbuf = NULL;
      st = df_cuda_error(op, "cudaMemcpy of the step tables", e);
    }
  }
  free(host);
  return st;
}

/* blocks for n work items of `threads` each, capped for grid-stride loops */
static inline unsigned df_cuda_grid(int64_t n, int threads)
{
  int64_t b = (n + threads - 1) / threads;
  if (b > DF_CUDA_MAX_BLOCKS) b = DF_CUDA_MAX_BLOCKS;
  return (unsigned)(b < 1 ? 1 : b);
}

__device__ __forceinline__ int64_t df_gtid() { return (int64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t df_gstride() { return (int64_t)gridDim.x * blockDim.x; }

/* the device's cuBLAS handle (created on first use, full float32, no atomics; the device is
   already selected) and the error for a failed cuBLAS call, "cuda <op>: <what> -> ..." */
int df_cuda_blas(int dev, cublasHandle_t *h);
int df_cuda_blas_error(const char *op, const char *what, cublasStatus_t s);

/* the device's handle on stream st with a fixed workspace of its own, the same for plain and
   captured runs (cuda_nn.cu); df_cuda_blas_off puts it back on the legacy stream */
int df_cuda_blas_on(const char *op, int dev, cudaStream_t st, cublasHandle_t *h);
void df_cuda_blas_off(cublasHandle_t h);

/* ---- cuda_graph.cu: traced networks, a kernel per node over the batch ------------------------ */
struct df_graph;
/* float offsets into a graph pass's workspace: the loss partials (and a norm), eta, x0 and dout
   [rows, dim] of a DSM step, the frame of node buffers (graph.h's offsets times rows) */
typedef struct df_cuda_glayout {
  int64_t lpart, eta, x0, dout, frame, total;
} df_cuda_glayout;
df_cuda_glayout df_cuda_graph_layout(const struct df_graph *g, int64_t rows);
/* node i's value buffer [rows, width] (x: node 0, t: node 1, the output: g->out) */
float *df_cuda_graph_val(const struct df_graph *g, float *ws, int64_t rows, int i);
/* the forward from the x and t buffers (filled by the caller); *blas: the handle, made on first
   need (NULL before) */
int df_cuda_graph_forward(const char *op, int dev, cudaStream_t st, cublasHandle_t *blas,
                          const struct df_graph *g, const float *params, const float *fixed,
                          float *ws, int64_t rows);
/* grads += d(sum dout * out) / d params, for the forward that filled ws */
int df_cuda_graph_backward(const char *op, int dev, cudaStream_t st, cublasHandle_t *blas,
                           const struct df_graph *g, const float *params, const float *fixed,
                           float *ws, int64_t rows, const float *dout, float *grads);
/* forward mode: the tangents of the nodes that depend on x into tf (a frame like the forward's),
   for x's tangent already in tf at node 0's offset, after the forward that filled ws */
int df_cuda_graph_tangent(const char *op, int dev, cudaStream_t st, cublasHandle_t *blas,
                          const struct df_graph *g, const float *params, const float *fixed,
                          float *ws, float *tf, int64_t rows);

/* ---- the table members of cuda_diffusion.cu ------------------------------------------------- */
int cuda_diffuser_eval(int dev, const df_diffuser *D, int what, float *out, const float *t,
                       int64_t n);
int cuda_score_eval(int dev, const df_mixture *m, float *out, const float *x,
                    const float *sig2_rows, float sig2, int64_t rows, int d);
int cuda_mixture_logpdf(int dev, const df_mixture *m, float *out, const float *x,
                        const float *sig2_rows, float sig2, int64_t rows);
int cuda_mixture_sample(int dev, const df_mixture *m, float *out, const float *sig2_rows,
                        float sig2, int64_t rows, uint64_t seed, uint64_t su, uint64_t sz);
int cuda_sample_fused(int dev, const df_plan *p, const df_mixture *m, float *x, int64_t rows,
                      int d, int nrec, const int64_t *rec_k, float *const *rec_out,
                      uint64_t seed, uint64_t stream);
int cuda_sample_step(int dev, int stage, float *x, float *xp, const float *s, const float *s2,
                     float c1, float c2, int64_t n, int64_t k, uint64_t seed, uint64_t stream);
int cuda_rowlin(int dev, float *out, int64_t rows, int d, int nv, const float *const *v,
                const float *const *coef, const float *s);
int cuda_rowdot(int dev, float *out, const float *a, const float *b, int64_t rows, int d);
int cuda_errnorm(int dev, float *out, const float *e, const float *a, const float *b, int64_t rows,
                 int d, float rtol, float atol);
int cuda_random_at(int dev, int dist, float *x, int64_t n, uint64_t seed, uint64_t stream,
                   uint64_t base);
int cuda_mixture_div(int dev, const df_mixture *m, float *out, const float *x,
                     const float *sig2_rows, float sig2, int64_t rows);
int cuda_mixture_jvp(int dev, const df_mixture *m, float *out, const float *x, const float *v,
                     const float *sig2_rows, float sig2, int64_t rows);

/* ---- the table members of cuda_nn.cu ------------------------------------------------------- */
int64_t cuda_net_workspace(const df_netdesc *nd, int64_t rows);
int64_t cuda_net_jvp_workspace(const df_netdesc *nd, int64_t rows);
int cuda_net_jvp(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                 const float *x, const float *t, float t0, int64_t rows, int nv,
                 const float *const *v, float *const *out, float *ws);
int cuda_net_forward(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                     const float *x, const float *t, float t0, int64_t rows, float *out,
                     float *ws, int keep);
int cuda_net_sample(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                    const df_plan *p, float *x, int64_t rows, int nrec, const int64_t *rec_k,
                    float *const *rec_out, uint64_t seed, uint64_t stream, float *ws, int *done);
int cuda_net_backward(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                      const float *x, const float *t, float t0, int64_t rows, const float *dout,
                      float *grads, float *ws);
int cuda_dsm_step(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                  float *grads, const df_dsm *job, float *loss, float *ws);
int cuda_adam(int dev, float *p, const float *g, float *m, float *v, int64_t n,
              const df_adam_hp *hp);
int cuda_ema(int dev, float *e, const float *p, int64_t n, float decay);
int cuda_train_steps(int dev, const df_netdesc *nd, float *params, const float *fixed,
                     float *grads, float *m, float *v, const df_train_job *job, float *losses,
                     float *ws);

#endif
