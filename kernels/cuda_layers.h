/* cuda_layers.h: the layer kernels that the seed's nets' layered path (cuda_nn.cu) and the
 * composed nets (cuda_graph.cu) share, row-major [rows, width], each sum in the CPU's order (bias
 * first, then the inputs, one df_fmaf each) or in a fixed order over rows. Included by those two
 * files only; static, so each has its own copy of the same source. */
#ifndef DF_CUDA_LAYERS_H
#define DF_CUDA_LAYERS_H

#include "cuda_internal.h"

#define DF_PG_PARAMS 32 /* df_k_param_grad: parameters x row lanes per block */
#define DF_PG_LANES 8

/* out [rows, O] = in [rows, I] W^T + b (b NULL: no bias) */
static __global__ void df_k_lin_fwd(float *out, const float *in, const float *W, const float *B,
                                    int64_t rows, int I, int O)
{
  for (int64_t j = df_gtid(); j < rows * O; j += df_gstride()) {
    int64_t r = j / O;
    int o = (int)(j - r * O);
    float acc = B ? B[o] : 0.0f;
    for (int i = 0; i < I; i++) acc = df_fmaf(W[(int64_t)o * I + i], in[r * I + i], acc);
    out[j] = acc;
  }
}

/* every row of out [rows, O] = b (0 without bias): where an SGEMM then adds the products */
static __global__ void df_k_bias_rows(float *out, const float *B, int64_t rows, int O)
{
  for (int64_t j = df_gtid(); j < rows * O; j += df_gstride()) out[j] = B ? B[j % O] : 0.0f;
}

/* dinp [rows, I] = (or += with acc) dout [rows, O] W, the sum over the outputs in order */
static __global__ void df_k_lin_dinp(float *dinp, const float *dout, const float *W, int64_t rows,
                                     int I, int O, int acc_into)
{
  for (int64_t j = df_gtid(); j < rows * I; j += df_gstride()) {
    int64_t r = j / I;
    int i = (int)(j - r * I);
    float acc = 0.0f;
    for (int o = 0; o < O; o++) acc = df_fmaf(W[(int64_t)o * I + i], dout[r * O + o], acc);
    dinp[j] = acc_into ? dinp[j] + acc : acc;
  }
}

/* gW [O, I] += dout^T in (I = 0: none) and gB [O] += column sums of dout (gB NULL: none). A
   block takes DF_PG_PARAMS parameters; lane g of one sums rows g, g + DF_PG_LANES, ... in order,
   then the lanes are added in order: a fixed order for given sizes */
static __global__ void df_k_param_grad(float *gW, float *gB, const float *dout, const float *in,
                                       int64_t rows, int I, int O)
{
  __shared__ float sh[DF_PG_LANES][DF_PG_PARAMS];
  const int64_t nw = (int64_t)O * I, P = nw + (gB ? O : 0);
  const int pl = threadIdx.x % DF_PG_PARAMS, lane = threadIdx.x / DF_PG_PARAMS;
  for (int64_t g0 = (int64_t)blockIdx.x * DF_PG_PARAMS; g0 < P; g0 += (int64_t)gridDim.x * DF_PG_PARAMS) {
    const int64_t p = g0 + pl;
    float acc = 0.0f;
    if (p < nw) {
      int64_t o = p / I, i = p - o * I;
      for (int64_t r = lane; r < rows; r += DF_PG_LANES) acc = df_fmaf(dout[r * O + o], in[r * I + i], acc);
    } else if (p < P) {
      for (int64_t r = lane; r < rows; r += DF_PG_LANES) acc += dout[r * O + (p - nw)];
    }
    sh[lane][pl] = acc;
    __syncthreads();
    if (lane == 0 && p < P) {
      float s = sh[0][pl];
      for (int k = 1; k < DF_PG_LANES; k++) s += sh[k][pl];
      float *dst = p < nw ? gW + p : gB + (p - nw);
      *dst = *dst + s;
    }
    __syncthreads();
  }
}

/* launch df_k_param_grad over the O x I weights (I = 0: biases only) and O biases */
static inline unsigned df_param_grad_blocks(int I, int O, bool bias)
{
  int64_t P = (int64_t)O * I + (bias ? O : 0);
  return df_cuda_grid((P + DF_PG_PARAMS - 1) / DF_PG_PARAMS, 1);
}

/* the sum of every thread's acc over a block of DF_CUDA_THREADS, in a fixed tree: the result in
   thread 0 (sh: DF_CUDA_THREADS doubles of shared memory) */
static __device__ __forceinline__ double df_block_sum(double acc, double *sh)
{
  sh[threadIdx.x] = acc;
  __syncthreads();
  for (int s = DF_CUDA_THREADS / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

#endif
