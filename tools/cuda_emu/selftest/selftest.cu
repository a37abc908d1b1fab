#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>

__device__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
__global__ void k_sum(const float *x, int n, double *out) {
  __shared__ double sh[32];
  double acc = 0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) acc += x[i];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) { double s = 0; for (int w = 0; w < (int)blockDim.x / 32; w++) s += sh[w]; out[blockIdx.x] = s; }
}
/* tree reduction in dynamic shared memory: needs every barrier */
__global__ void k_tree(const float *x, float *out) {
  extern __shared__ float buf[];
  buf[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}
__global__ void k_divergent(int *x) { int v = 1; if (threadIdx.x < 16) __syncthreads(); else v = __shfl_down_sync(0xffffffffu, v, 1); x[threadIdx.x] = v; }
__global__ void k_add(float *x, float v) { x[threadIdx.x] += v; }
__global__ void k_xor(int *out) { int v = threadIdx.x; for (int m = 16; m; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m); out[threadIdx.x] = v; }

int main() {
  int fails = 0;
  const int n = 1 << 20;
  float *x; double *part; cudaMalloc(&x, n * 4); cudaMalloc(&part, 64 * 8);
  float *h = (float *)malloc(n * 4); for (int i = 0; i < n; i++) h[i] = (float)(i % 1000);
  cudaMemcpy(x, h, n * 4, cudaMemcpyHostToDevice);
  k_sum<<<64, 256>>>(x, n, part);
  double hp[64], s = 0, ref = 0; cudaMemcpy(hp, part, sizeof hp, cudaMemcpyDeviceToHost);
  for (int b = 0; b < 64; b++) s += hp[b];
  for (int i = 0; i < n; i++) ref += h[i];
  printf("shuffle+shared sum %.1f ref %.1f %s\n", s, ref, s == ref ? "ok" : "FAIL"); fails += s != ref;
  float *o; cudaMalloc(&o, 4096 * 4);
  k_tree<<<4096, 256, 256 * 4>>>(x, o);
  float ho[4096]; cudaMemcpy(ho, o, sizeof ho, cudaMemcpyDeviceToHost);
  int bad = 0; for (int b = 0; b < 4096; b++) { double r = 0; for (int t = 0; t < 256; t++) r += h[b * 256 + t]; bad += ho[b] != (float)r; }
  printf("tree reduction: %d blocks wrong %s\n", bad, bad ? "FAIL" : "ok"); fails += bad != 0;
  int *xi; cudaMalloc(&xi, 1024 * 4);
  k_xor<<<1, 64>>>(xi); int hx[64]; cudaMemcpy(hx, xi, sizeof hx, cudaMemcpyDeviceToHost);
  printf("xor butterfly lane 0: %d (expect %d), lane 40: %d (expect %d) %s\n", hx[0], 496, hx[40], 32*32+496,
         hx[0] == 496 && hx[40] == 32 * 32 + 496 ? "ok" : "FAIL"); fails += !(hx[0] == 496 && hx[40] == 1520);
  k_divergent<<<1, 64>>>(xi);
  cudaError_t e = cudaGetLastError();
  printf("divergent __syncthreads -> %s %s\n", cudaGetErrorName(e), e == cudaErrorLaunchFailure ? "ok" : "FAIL"); fails += e != cudaErrorLaunchFailure;
  k_add<<<1, 2048>>>(x, 1.0f);
  e = cudaGetLastError();
  printf("2048 threads -> %s %s\n", cudaGetErrorName(e), e == cudaErrorInvalidConfiguration ? "ok" : "FAIL"); fails += e != cudaErrorInvalidConfiguration;
  /* capture */
  cudaStream_t st; cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
  float *y; cudaMalloc(&y, 32 * 4); cudaMemset(y, 0, 128);
  cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
  k_add<<<1, 32, 0, st>>>(y, 1.0f);
  cudaMemsetAsync(y + 1, 0, 4, st);
  k_add<<<1, 32, 0, st>>>(y, 2.0f);
  float hy[32]; cudaMemcpyAsync(hy, y, 4, cudaMemcpyDeviceToHost, 0); /* legacy stream, host: forbidden */
  cudaGraph_t g; e = cudaStreamEndCapture(st, &g);
  printf("capture with a host memcpy inside -> %s %s\n", cudaGetErrorName(e), e == cudaErrorStreamCaptureInvalidated ? "ok" : "FAIL"); fails += e != cudaErrorStreamCaptureInvalidated;
  (void)cudaGetLastError();
  cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
  k_add<<<1, 32, 0, st>>>(y, 1.0f);
  cudaMemsetAsync(y + 1, 0, 4, st);
  k_add<<<1, 32, 0, st>>>(y, 2.0f);
  cudaMemcpy(hy, y, 128, cudaMemcpyDeviceToHost);
  e = cudaStreamEndCapture(st, &g);
  printf("capture (cudaMemcpy inside) -> %s\n", cudaGetErrorName(e));
  (void)cudaGetLastError();
  cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
  k_add<<<1, 32, 0, st>>>(y, 1.0f);
  cudaMemsetAsync(y + 1, 0, 4, st);
  k_add<<<1, 32, 0, st>>>(y, 2.0f);
  e = cudaStreamEndCapture(st, &g);
  cudaMemcpy(hy, y, 128, cudaMemcpyDeviceToHost);
  printf("after capture: y0 %g (expect 0: nothing ran) %s\n", hy[0], hy[0] == 0 ? "ok" : "FAIL"); fails += hy[0] != 0;
  cudaGraphExec_t ex; cudaGraphInstantiate(&ex, g, 0); cudaGraphDestroy(g);
  cudaGraphLaunch(ex, st); cudaGraphLaunch(ex, st);
  cudaMemcpy(hy, y, 128, cudaMemcpyDeviceToHost);
  printf("two replays: y0 %g y1 %g y2 %g (expect 6 2 6) %s\n", hy[0], hy[1], hy[2], hy[0] == 6 && hy[1] == 2 && hy[2] == 6 ? "ok" : "FAIL");
  fails += !(hy[0] == 6 && hy[1] == 2 && hy[2] == 6);
  /* cublas: C (2x3 col-major) = A (2x4) B (4x3) */
  cublasHandle_t hb; cublasCreate(&hb);
  float A[8] = {1, 2, 3, 4, 5, 6, 7, 8}, B[12] = {1, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 1}, C[6];
  float *dA, *dB, *dC; cudaMalloc(&dA, 32); cudaMalloc(&dB, 48); cudaMalloc(&dC, 24);
  cudaMemcpy(dA, A, 32, cudaMemcpyHostToDevice); cudaMemcpy(dB, B, 48, cudaMemcpyHostToDevice);
  float one = 1, zero = 0;
  cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, 2, 3, 4, &one, dA, 2, dB, 4, &zero, dC, 2);
  cudaMemcpy(C, dC, 24, cudaMemcpyDeviceToHost);
  printf("sgemm: %g %g %g %g %g %g (expect 1 2 3 4 16 20)\n", C[0], C[1], C[2], C[3], C[4], C[5]);
  fails += !(C[0] == 1 && C[1] == 2 && C[2] == 3 && C[3] == 4 && C[4] == 16 && C[5] == 20);
  cublasStatus_t bs = cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, 2, 3, 4, &one, dA, 1, dB, 4, &zero, dC, 2);
  printf("sgemm lda < m -> %s\n", cublasGetStatusName(bs)); fails += bs != CUBLAS_STATUS_INVALID_VALUE;
  printf("%s\n", fails ? "SELFTEST FAILED" : "selftest passed");
  return fails != 0;
}
