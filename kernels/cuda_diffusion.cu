/* cuda_diffusion.cu: the diffusion members of the CUDA table (backend.h): diffuser values, the
 * native scores, mixture densities and draws, and the samplers, with exactly the semantics of the
 * CPU reference (cpu_diffusion.c).
 *
 * Every result is bitwise the CPU's: the kernels call the same dmath.h row and step functions in
 * the same order (compiled with -fmad=false), random numbers come from the same Philox counters
 * (the reverse-SDE noise of element i at step k is normal number df_noise_index(i, k, n) of the
 * run's stream), and nothing is reduced across threads.
 *
 * sample_fused is one kernel per run: each thread keeps its elements (exact score: 4 consecutive
 * elements, or 1 when the element count is not a multiple of 4; mixtures: one row) in registers for
 * all steps and writes the recorded steps out itself, so x crosses memory once. The per-step tables
 * (sig2, c1, c2) and the record list go to the device once per run; a mixture's parameters once per
 * call (they are small), staged in shared memory when they fit. Mixture rows of 1 to 4 columns get
 * kernels specialised to that width so a row stays in registers. */
#include <stdlib.h>
#include <string.h>
#include "cuda_internal.h"

namespace {

const int THREADS = DF_CUDA_THREADS;
const int MIX_MAXD = 64;                     /* widest mixture row (as the CPU backend) */
const size_t MIX_SHARED_BYTES = 32 * 1024;   /* mixture parameters staged in shared memory up to this */

/* ---- diffuser values --------------------------------------------------------------------------- */

__global__ void k_diffuser_eval(df_diffuser D, int what, float *out, const float *t, int64_t n)
{
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) {
    float v = what == DF_G ? df_diffuser_g(&D, t[i]) : df_diffuser_sigma2(&D, t[i]);
    out[i] = what == DF_SIGMA ? sqrtf(v) : v;
  }
}

/* ---- the exact score: -x / sigma^2, one thread per element ---------------------------------- */

__global__ void k_score_exact(float *out, const float *x, const float *sig2_rows, float sig2,
                              int64_t n, int d)
{
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) {
    float s2 = sig2_rows ? sig2_rows[d == 1 ? i : i / d] : sig2;
    out[i] = -x[i] / s2;
  }
}

/* ---- mixtures: parameters on the device -------------------------------------------------------- */

/* a mixture's arrays in one device block: logw [k], var0 [k], mu [k*d] */
struct MixDev {
  void *buf;
  df_mixture m;  /* device pointers */
  int nf;        /* floats in buf */
  size_t shared; /* dynamic shared memory a kernel stages them in (0: read from global) */
};

int mix_upload(const char *op, int dev, const df_mixture *m, MixDev *md)
{
  md->buf = NULL;
  if (m->d > MIX_MAXD)
    return df_cuda_fail(DF_EARG, "cuda %s: mixtures live in at most R^%d", op, MIX_MAXD);
  if (m->k < 1 || m->d < 1)
    return df_cuda_fail(DF_EARG, "cuda %s: a mixture needs components and a dimension", op);
  int64_t nf = (int64_t)m->k * (2 + m->d);
  if (nf > INT32_MAX / 4) return df_cuda_fail(DF_EARG, "cuda %s: the mixture is too large", op);
  float *host = (float *)malloc((size_t)nf * sizeof(float));
  if (!host) return df_cuda_fail(DF_ENOMEM, "cuda %s: out of host memory", op);
  memcpy(host, m->logw, (size_t)m->k * sizeof(float));
  memcpy(host + m->k, m->var0, (size_t)m->k * sizeof(float));
  memcpy(host + 2 * (int64_t)m->k, m->mu, (size_t)m->k * m->d * sizeof(float));
  int st = df_cuda_malloc(dev, (size_t)nf * sizeof(float), &md->buf);
  if (st) {
    free(host);
    return st;
  }
  cudaError_t e = cudaMemcpy(md->buf, host, (size_t)nf * sizeof(float), cudaMemcpyHostToDevice);
  free(host);
  if (e != cudaSuccess) {
    df_cuda_free(dev, md->buf);
    md->buf = NULL;
    return df_cuda_error(op, "cudaMemcpy of the mixture", e);
  }
  float *p = (float *)md->buf;
  md->nf = (int)nf;
  md->m.k = m->k;
  md->m.d = m->d;
  md->m.logw = p;
  md->m.var0 = p + m->k;
  md->m.mu = p + 2 * (int64_t)m->k;
  md->shared = (size_t)nf * sizeof(float) <= MIX_SHARED_BYTES ? (size_t)nf * sizeof(float) : 0;
  return DF_OK;
}

/* the block's view of the mixture: its arrays copied to shared memory when they fit (every
   thread reads every parameter for every row), else the global ones; the width is D when the
   kernel is specialised (D > 0), so the row loops of dmath.h unroll into registers. Every thread
   of the block must call it (it synchronises). */
template <int D> __device__ df_mixture mix_view(const df_mixture &g, int nf, bool staged)
{
  extern __shared__ float df_mix_smem[];
  df_mixture m = g;
  if (staged) {
    const float *src = g.logw; /* the start of the device block */
    for (int i = threadIdx.x; i < nf; i += blockDim.x) df_mix_smem[i] = src[i];
    __syncthreads();
    m.logw = df_mix_smem;
    m.var0 = df_mix_smem + g.k;
    m.mu = df_mix_smem + 2 * g.k;
  }
  if (D > 0) m.d = D;
  return m;
}

template <int D>
__global__ void k_score_mixture(df_mixture gm, int nf, int staged, float *out, const float *x,
                                const float *sig2_rows, float sig2, int64_t rows)
{
  const df_mixture m = mix_view<D>(gm, nf, staged != 0);
  const int d = m.d;
  for (int64_t i = df_gtid(); i < rows; i += df_gstride()) {
    float xr[D > 0 ? D : MIX_MAXD], s[D > 0 ? D : MIX_MAXD];
    for (int c = 0; c < d; c++) xr[c] = x[i * d + c];
    df_mixture_score_row(&m, sig2_rows ? sig2_rows[i] : sig2, xr, s);
    for (int c = 0; c < d; c++) out[i * d + c] = s[c];
  }
}

__global__ void k_mixture_logpdf(df_mixture gm, int nf, int staged, float *out, const float *x,
                                 const float *sig2_rows, float sig2, int64_t rows)
{
  const df_mixture m = mix_view<0>(gm, nf, staged != 0);
  for (int64_t i = df_gtid(); i < rows; i += df_gstride())
    out[i] = df_mixture_logpdf_row(&m, sig2_rows ? sig2_rows[i] : sig2, x + i * m.d);
}

__global__ void k_mixture_div(df_mixture gm, int nf, int staged, float *out, const float *x,
                              const float *sig2_rows, float sig2, int64_t rows)
{
  const df_mixture m = mix_view<0>(gm, nf, staged != 0);
  for (int64_t i = df_gtid(); i < rows; i += df_gstride())
    out[i] = df_mixture_div_row(&m, sig2_rows ? sig2_rows[i] : sig2, x + i * m.d);
}

__global__ void k_mixture_jvp(df_mixture gm, int nf, int staged, float *out, const float *x,
                              const float *v, const float *sig2_rows, float sig2, int64_t rows)
{
  const df_mixture m = mix_view<0>(gm, nf, staged != 0);
  for (int64_t i = df_gtid(); i < rows; i += df_gstride())
    df_mixture_jvp_row(&m, sig2_rows ? sig2_rows[i] : sig2, x + i * m.d, v + i * m.d, out + i * m.d);
}

/* ---- the solvers' per-row operations (native/solver.c), as cpu_diffusion.c computes them ---- */

struct LinArgs {
  const float *v[DF_LIN_MAX], *coef[DF_LIN_MAX];
  float s[DF_LIN_MAX];
  int nv;
};

__global__ void k_rowlin(float *out, int64_t rows, int d, const LinArgs a)
{
  for (int64_t i = df_gtid(); i < rows * d; i += df_gstride()) {
    const int64_t r = i / d;
    float acc = (a.coef[0] ? a.coef[0][r] : a.s[0]) * a.v[0][i];
    for (int j = 1; j < a.nv; j++) acc = acc + (a.coef[j] ? a.coef[j][r] : a.s[j]) * a.v[j][i];
    out[i] = acc;
  }
}

__global__ void k_rowdot(float *out, const float *a, const float *b, int64_t rows, int d)
{
  for (int64_t r = df_gtid(); r < rows; r += df_gstride()) {
    double acc = 0.0;
    for (int c = 0; c < d; c++) acc += (double)a[r * d + c] * (double)b[r * d + c];
    out[r] = (float)acc;
  }
}

__global__ void k_errnorm(float *out, const float *e, const float *a, const float *b, int64_t rows,
                          int d, float rtol, float atol)
{
  for (int64_t r = df_gtid(); r < rows; r += df_gstride()) {
    double acc = 0.0;
    for (int c = 0; c < d; c++) {
      const int64_t i = r * d + c;
      float m = fabsf(a[i]) > fabsf(b[i]) ? fabsf(a[i]) : fabsf(b[i]);
      double q = (double)e[i] / ((double)atol + (double)rtol * (double)m);
      acc += q * q;
    }
    out[r] = (float)sqrt(acc / (double)d);
  }
}

/* element base + i of the stream, a Philox block per thread (as k_step_em) */
__global__ void k_random_at(int dist, float *x, int64_t n, uint64_t seed, uint64_t stream,
                            uint64_t base)
{
  const uint64_t b0 = base >> 2, nb = ((base + (uint64_t)n - 1) >> 2) - b0 + 1;
  for (int64_t j = df_gtid(); j < (int64_t)nb; j += df_gstride()) {
    uint32_t w[4];
    float z[4];
    df_philox_block(seed, stream, b0 + (uint64_t)j, w);
    if (dist == DF_NORMAL) df_normal4(w, z);
    for (int l = 0; l < 4; l++) {
      uint64_t idx = (b0 + (uint64_t)j) * 4 + (uint64_t)l;
      if (idx < base || idx >= base + (uint64_t)n) continue;
      x[idx - base] = dist == DF_NORMAL ? z[l] : dist == DF_UNIFORM ? df_u01(w[l])
                    : ((w[l] >> 8) & 1u ? 1.0f : -1.0f);
    }
  }
}

/* row i: the component from uniform number i of stream su, the Gaussians from normal numbers
   i*d .. i*d+d-1 of stream sz (cpu_mixture_sample) */
__global__ void k_mixture_sample(df_mixture gm, int nf, int staged, float *out,
                                 const float *sig2_rows, float sig2, int64_t rows, uint64_t seed,
                                 uint64_t su, uint64_t sz)
{
  const df_mixture m = mix_view<0>(gm, nf, staged != 0);
  const int d = m.d;
  for (int64_t i = df_gtid(); i < rows; i += df_gstride()) {
    float z[MIX_MAXD];
    for (int c = 0; c < d; c++) z[c] = df_randn_at(seed, sz, (uint64_t)(i * d + c));
    df_mixture_sample_row(&m, sig2_rows ? sig2_rows[i] : sig2, df_rand_at(seed, su, (uint64_t)i),
                          z, out + i * d);
  }
}

/* ---- fused sampler runs ---------------------------------------------------------------------- */

/* what a fused kernel reads: the step tables and the record list (device memory, sorted by step
   so a thread walks it once), x and the run's stream */
struct FusedArgs {
  float *x;
  int64_t rows, n; /* rows, and elements rows * d */
  int64_t steps;
  const float *sig2, *c1, *c2;
  int nrec;
  const int64_t *rec_k;   /* ascending */
  float *const *rec_out;
  uint64_t seed, stream;
};

/* write the E values of elements at..at+E-1 (m of them valid) to every record taken after k
   steps; `next` walks the sorted list */
template <int E>
__device__ __forceinline__ int record(const FusedArgs &a, int64_t k, int next, int64_t at,
                                      const float *v, int m)
{
  while (next < a.nrec && a.rec_k[next] == k) {
    float *dst = a.rec_out[next] + at;
#pragma unroll
    for (int e = 0; e < E; e++)
      if (e < m) dst[e] = v[e];
    next++;
  }
  return next;
}

/* the exact score -x / sigma^2: each thread E consecutive elements, for all steps. With E = 4
   (n a multiple of 4) the thread's elements at step k are exactly Philox block (k n + i0) / 4 of
   the run's stream, so one block gives all four reverse-SDE normals */
template <int METHOD, int E> __global__ void k_fused_exact(const FusedArgs a)
{
  const int64_t n = a.n, nq = (n + E - 1) / E;
  for (int64_t q = df_gtid(); q < nq; q += df_gstride()) {
    const int64_t i0 = q * E;
    const int m = n - i0 < E ? (int)(n - i0) : E;
    float v[E];
#pragma unroll
    for (int e = 0; e < E; e++) v[e] = e < m ? a.x[i0 + e] : 0.0f;
    int next = 0;
    for (int64_t k = 0; k < a.steps; k++) {
      next = record<E>(a, k, next, i0, v, m);
      const float s2 = a.sig2[k], c1 = a.c1[k];
      if (METHOD == DF_EULER || (METHOD == DF_HEUN && k == a.steps - 1)) {
#pragma unroll
        for (int e = 0; e < E; e++) v[e] = df_step_euler(v[e], -v[e] / s2, c1);
      } else if (METHOD == DF_EULER_MARUYAMA) {
        const float c2 = a.c2[k];
        float z[4];
        const uint64_t base = df_noise_index((uint64_t)i0, (uint64_t)k, (uint64_t)n);
        if (E == 4) {
          uint32_t w[4];
          df_philox_block(a.seed, a.stream, base >> 2, w);
          df_normal4(w, z);
        } else {
          z[0] = df_randn_at(a.seed, a.stream, base);
        }
#pragma unroll
        for (int e = 0; e < E; e++) v[e] = df_step_em(v[e], -v[e] / s2, c1, c2, z[e]);
      } else {
        const float c2 = a.c2[k], s2n = a.sig2[k + 1];
#pragma unroll
        for (int e = 0; e < E; e++) {
          float s = -v[e] / s2, xp = df_step_euler(v[e], s, c1);
          v[e] = df_step_heun(v[e], s, -xp / s2n, c1, c2);
        }
      }
    }
    record<E>(a, a.steps, next, i0, v, m);
#pragma unroll
    for (int e = 0; e < E; e++)
      if (e < m) a.x[i0 + e] = v[e];
  }
}

/* a mixture score: one thread per row of d values, for all steps (cpu_sample_fused's
   fused_mixture, statement for statement) */
template <int METHOD, int D>
__global__ void k_fused_mixture(const FusedArgs a, df_mixture gm, int nf, int staged)
{
  const df_mixture mix = mix_view<D>(gm, nf, staged != 0);
  const int d = mix.d;
  const int64_t n = a.n;
  for (int64_t i = df_gtid(); i < a.rows; i += df_gstride()) {
    float xr[D > 0 ? D : MIX_MAXD], s[D > 0 ? D : MIX_MAXD];
    for (int c = 0; c < d; c++) xr[c] = a.x[i * d + c];
    int next = 0;
    for (int64_t k = 0; k < a.steps; k++) {
      const float c1 = a.c1[k], c2 = a.c2[k];
      while (next < a.nrec && a.rec_k[next] == k) {
        for (int c = 0; c < d; c++) a.rec_out[next][i * d + c] = xr[c];
        next++;
      }
      df_mixture_score_row(&mix, a.sig2[k], xr, s);
      if (METHOD == DF_EULER || (METHOD == DF_HEUN && k == a.steps - 1)) {
        for (int c = 0; c < d; c++) xr[c] = df_step_euler(xr[c], s[c], c1);
      } else if (METHOD == DF_EULER_MARUYAMA) {
        for (int c = 0; c < d; c++) {
          uint64_t e = (uint64_t)(i * d + c);
          float z = df_randn_at(a.seed, a.stream, df_noise_index(e, (uint64_t)k, (uint64_t)n));
          xr[c] = df_step_em(xr[c], s[c], c1, c2, z);
        }
      } else {
        float xp[D > 0 ? D : MIX_MAXD], sp[D > 0 ? D : MIX_MAXD];
        for (int c = 0; c < d; c++) xp[c] = df_step_euler(xr[c], s[c], c1);
        df_mixture_score_row(&mix, a.sig2[k + 1], xp, sp);
        for (int c = 0; c < d; c++) xr[c] = df_step_heun(xr[c], s[c], sp[c], c1, c2);
      }
    }
    while (next < a.nrec && a.rec_k[next] == a.steps) {
      for (int c = 0; c < d; c++) a.rec_out[next][i * d + c] = xr[c];
      next++;
    }
    for (int c = 0; c < d; c++) a.x[i * d + c] = xr[c];
  }
}

/* ---- step-by-step updates ---------------------------------------------------------------------- */

template <int STAGE>
__global__ void k_step(float *x, float *xp, const float *s, const float *s2, float c1, float c2,
                       int64_t n)
{
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) {
    if (STAGE == DF_STAGE_EULER) x[i] = df_step_euler(x[i], s[i], c1);
    else if (STAGE == DF_STAGE_HEUN_PRED) xp[i] = df_step_euler(x[i], s[i], c1);
    else x[i] = df_step_heun(x[i], s[i], s2[i], c1, c2);
  }
}

/* Euler-Maruyama: one thread per Philox block of the step's noise, normals k n .. k n + n - 1 of
   the run's stream (the block boundaries need not fall on element 0) */
__global__ void k_step_em(float *x, const float *s, float c1, float c2, int64_t n, uint64_t base,
                          uint64_t seed, uint64_t stream)
{
  const uint64_t b0 = base >> 2, nb = ((base + (uint64_t)n - 1) >> 2) - b0 + 1;
  for (int64_t j = df_gtid(); j < (int64_t)nb; j += df_gstride()) {
    uint32_t w[4];
    float z[4];
    df_philox_block(seed, stream, b0 + (uint64_t)j, w);
    df_normal4(w, z);
    for (int l = 0; l < 4; l++) {
      uint64_t idx = (b0 + (uint64_t)j) * 4 + (uint64_t)l;
      if (idx < base || idx >= base + (uint64_t)n) continue;
      int64_t i = (int64_t)(idx - base);
      x[i] = df_step_em(x[i], s[i], c1, c2, z[l]);
    }
  }
}

/* the launch of a fused run for one method; mixtures by width */
template <int METHOD>
void launch_fused(const FusedArgs &a, const MixDev *md, int d, bool quad)
{
  if (!md) {
    int64_t per = quad ? 4 : 1;
    unsigned g = df_cuda_grid((a.n + per - 1) / per, THREADS);
    if (quad) k_fused_exact<METHOD, 4><<<g, THREADS>>>(a);
    else k_fused_exact<METHOD, 1><<<g, THREADS>>>(a);
    return;
  }
  unsigned g = df_cuda_grid(a.rows, THREADS);
  size_t sh = md->shared;
  int staged = sh > 0;
  switch (d) {
  case 1: k_fused_mixture<METHOD, 1><<<g, THREADS, sh>>>(a, md->m, md->nf, staged); break;
  case 2: k_fused_mixture<METHOD, 2><<<g, THREADS, sh>>>(a, md->m, md->nf, staged); break;
  case 3: k_fused_mixture<METHOD, 3><<<g, THREADS, sh>>>(a, md->m, md->nf, staged); break;
  case 4: k_fused_mixture<METHOD, 4><<<g, THREADS, sh>>>(a, md->m, md->nf, staged); break;
  default: k_fused_mixture<METHOD, 0><<<g, THREADS, sh>>>(a, md->m, md->nf, staged); break;
  }
}

} // namespace

/* ---- the table's functions ------------------------------------------------------------------ */

int cuda_diffuser_eval(int dev, const df_diffuser *D, int what, float *out, const float *t,
                       int64_t n)
{
  const char *op = "diffuser_eval";
  if (what != DF_G && what != DF_SIGMA && what != DF_SIGMA2)
    return df_cuda_fail(DF_EARG, "cuda %s: unknown quantity %d", op, what);
  if (n <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  k_diffuser_eval<<<df_cuda_grid(n, THREADS), THREADS>>>(*D, what, out, t, n);
  LAUNCHED(op);
  return DF_OK;
}

int cuda_score_eval(int dev, const df_mixture *m, float *out, const float *x,
                    const float *sig2_rows, float sig2, int64_t rows, int d)
{
  const char *op = "score_eval";
  if (rows <= 0 || d <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  if (!m) {
    int64_t n = rows * d;
    k_score_exact<<<df_cuda_grid(n, THREADS), THREADS>>>(out, x, sig2_rows, sig2, n, d);
    LAUNCHED(op);
    return DF_OK;
  }
  if (d != m->d)
    return df_cuda_fail(DF_EARG, "cuda %s: x has %d columns, the mixture %d", op, d, m->d);
  MixDev md;
  TRY(mix_upload(op, dev, m, &md));
  unsigned g = df_cuda_grid(rows, THREADS);
  int staged = md.shared > 0;
  typedef void (*score_kernel)(df_mixture, int, int, float *, const float *, const float *, float,
                               int64_t);
  static const score_kernel by_width[] = { k_score_mixture<0>, k_score_mixture<1>,
                                           k_score_mixture<2>, k_score_mixture<3>,
                                           k_score_mixture<4> };
  score_kernel k_score_mixture_d = by_width[d <= 4 ? d : 0];
  k_score_mixture_d<<<g, THREADS, md.shared>>>(md.m, md.nf, staged, out, x, sig2_rows, sig2, rows);
  cudaError_t e = cudaGetLastError();
  df_cuda_free(dev, md.buf); /* reused only by work queued after this kernel */
  if (e != cudaSuccess) return df_cuda_error(op, "kernel launch", e);
  return DF_OK;
}

int cuda_mixture_logpdf(int dev, const df_mixture *m, float *out, const float *x,
                        const float *sig2_rows, float sig2, int64_t rows)
{
  const char *op = "mixture_logpdf";
  if (rows <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  MixDev md;
  TRY(mix_upload(op, dev, m, &md));
  k_mixture_logpdf<<<df_cuda_grid(rows, THREADS), THREADS, md.shared>>>(
    md.m, md.nf, md.shared > 0, out, x, sig2_rows, sig2, rows);
  cudaError_t e = cudaGetLastError();
  df_cuda_free(dev, md.buf);
  if (e != cudaSuccess) return df_cuda_error(op, "kernel launch", e);
  return DF_OK;
}

int cuda_mixture_sample(int dev, const df_mixture *m, float *out, const float *sig2_rows,
                        float sig2, int64_t rows, uint64_t seed, uint64_t su, uint64_t sz)
{
  const char *op = "mixture_sample";
  if (rows <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  MixDev md;
  TRY(mix_upload(op, dev, m, &md));
  k_mixture_sample<<<df_cuda_grid(rows, THREADS), THREADS, md.shared>>>(
    md.m, md.nf, md.shared > 0, out, sig2_rows, sig2, rows, seed, su, sz);
  cudaError_t e = cudaGetLastError();
  df_cuda_free(dev, md.buf);
  if (e != cudaSuccess) return df_cuda_error(op, "kernel launch", e);
  return DF_OK;
}

int cuda_sample_fused(int dev, const df_plan *p, const df_mixture *m, float *x, int64_t rows,
                      int d, int nrec, const int64_t *rec_k, float *const *rec_out,
                      uint64_t seed, uint64_t stream)
{
  const char *op = "sample_fused";
  if (p->method != DF_EULER && p->method != DF_EULER_MARUYAMA && p->method != DF_HEUN)
    return df_cuda_fail(DF_EARG, "cuda %s: unknown method %d", op, p->method);
  if (p->steps < 1) return df_cuda_fail(DF_EARG, "cuda %s: a run needs at least one step", op);
  if (nrec < 0) return df_cuda_fail(DF_EARG, "cuda %s: negative record count", op);
  if (rows <= 0 || d <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  if (m && d != m->d)
    return df_cuda_fail(DF_EARG, "cuda %s: x has %d columns, the mixture %d", op, d, m->d);

  /* one device block: sig2 [steps+1], c1 [steps], c2 [steps], then (8-byte aligned) the record
     steps and their output pointers, sorted by step (stable, so equal steps keep their order) */
  const int64_t steps = p->steps, nt = 3 * steps + 1, tab = (nt + 1) / 2 * 2; /* floats */
  size_t bytes = (size_t)tab * sizeof(float) + (size_t)nrec * (sizeof(int64_t) + sizeof(float *));
  char *host = (char *)malloc(bytes);
  int *order = (int *)malloc((size_t)(nrec > 0 ? nrec : 1) * sizeof(int));
  if (!host || !order) {
    free(host);
    free(order);
    return df_cuda_fail(DF_ENOMEM, "cuda %s: out of host memory for %lld steps", op,
                        (long long)steps);
  }
  float *ft = (float *)host;
  memcpy(ft, p->sig2, (size_t)(steps + 1) * sizeof(float));
  memcpy(ft + steps + 1, p->c1, (size_t)steps * sizeof(float));
  memcpy(ft + 2 * steps + 1, p->c2, (size_t)steps * sizeof(float));
  for (int r = 0; r < nrec; r++) order[r] = r;
  for (int r = 1; r < nrec; r++) { /* insertion sort: a handful of records */
    int v = order[r], j = r;
    while (j > 0 && rec_k[order[j - 1]] > rec_k[v]) { order[j] = order[j - 1]; j--; }
    order[j] = v;
  }
  int64_t *hk = (int64_t *)(host + (size_t)tab * sizeof(float));
  float **hp = (float **)(hk + nrec);
  for (int r = 0; r < nrec; r++) {
    hk[r] = rec_k[order[r]];
    hp[r] = rec_out[order[r]];
  }
  free(order);
  void *dbuf = NULL;
  int st = df_cuda_upload(op, dev, host, bytes, &dbuf);
  if (st) return st;
  MixDev md;
  md.buf = NULL;
  if (m && (st = mix_upload(op, dev, m, &md))) {
    df_cuda_free(dev, dbuf);
    return st;
  }

  FusedArgs a;
  const float *dt = (const float *)dbuf;
  a.x = x;
  a.rows = rows;
  a.n = rows * d;
  a.steps = steps;
  a.sig2 = dt;
  a.c1 = dt + steps + 1;
  a.c2 = dt + 2 * steps + 1;
  a.nrec = nrec;
  a.rec_k = (const int64_t *)((const char *)dbuf + (size_t)tab * sizeof(float));
  a.rec_out = (float *const *)(a.rec_k + nrec);
  a.seed = seed;
  a.stream = stream;
  const bool quad = a.n % 4 == 0;
  switch (p->method) {
  case DF_EULER: launch_fused<DF_EULER>(a, m ? &md : NULL, d, quad); break;
  case DF_EULER_MARUYAMA: launch_fused<DF_EULER_MARUYAMA>(a, m ? &md : NULL, d, quad); break;
  default: launch_fused<DF_HEUN>(a, m ? &md : NULL, d, quad); break;
  }
  cudaError_t e = cudaGetLastError();
  df_cuda_free(dev, dbuf); /* reused only by work queued after the run */
  if (md.buf) df_cuda_free(dev, md.buf);
  if (e != cudaSuccess) return df_cuda_error(op, "kernel launch", e);
  return DF_OK;
}

int cuda_sample_step(int dev, int stage, float *x, float *xp, const float *s, const float *s2,
                     float c1, float c2, int64_t n, int64_t k, uint64_t seed, uint64_t stream)
{
  const char *op = "sample_step";
  if (stage != DF_STAGE_EULER && stage != DF_STAGE_EM && stage != DF_STAGE_HEUN_PRED &&
      stage != DF_STAGE_HEUN_CORR)
    return df_cuda_fail(DF_EARG, "cuda %s: unknown sampler stage %d", op, stage);
  if (n <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  unsigned g = df_cuda_grid(n, THREADS);
  switch (stage) {
  case DF_STAGE_EULER: k_step<DF_STAGE_EULER><<<g, THREADS>>>(x, xp, s, s2, c1, c2, n); break;
  case DF_STAGE_HEUN_PRED: k_step<DF_STAGE_HEUN_PRED><<<g, THREADS>>>(x, xp, s, s2, c1, c2, n); break;
  case DF_STAGE_HEUN_CORR: k_step<DF_STAGE_HEUN_CORR><<<g, THREADS>>>(x, xp, s, s2, c1, c2, n); break;
  default: {
    uint64_t base = df_noise_index(0, (uint64_t)k, (uint64_t)n);
    int64_t nb = (int64_t)(((base + (uint64_t)n - 1) >> 2) - (base >> 2) + 1);
    k_step_em<<<df_cuda_grid(nb, THREADS), THREADS>>>(x, s, c1, c2, n, base, seed, stream);
  }
  }
  LAUNCHED(op);
  return DF_OK;
}

int cuda_rowlin(int dev, float *out, int64_t rows, int d, int nv, const float *const *v,
                const float *const *coef, const float *s)
{
  const char *op = "rowlin";
  if (nv < 1 || nv > DF_LIN_MAX) return df_cuda_fail(DF_EARG, "cuda %s: %d terms", op, nv);
  if (rows <= 0 || d <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  LinArgs a;
  memset(&a, 0, sizeof a);
  a.nv = nv;
  for (int j = 0; j < nv; j++) {
    a.v[j] = v[j];
    a.coef[j] = coef[j];
    a.s[j] = s[j];
  }
  k_rowlin<<<df_cuda_grid(rows * d, THREADS), THREADS>>>(out, rows, d, a);
  LAUNCHED(op);
  return DF_OK;
}

int cuda_rowdot(int dev, float *out, const float *a, const float *b, int64_t rows, int d)
{
  const char *op = "rowdot";
  if (rows <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  k_rowdot<<<df_cuda_grid(rows, THREADS), THREADS>>>(out, a, b, rows, d);
  LAUNCHED(op);
  return DF_OK;
}

int cuda_errnorm(int dev, float *out, const float *e, const float *a, const float *b, int64_t rows,
                 int d, float rtol, float atol)
{
  const char *op = "errnorm";
  if (rows <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  k_errnorm<<<df_cuda_grid(rows, THREADS), THREADS>>>(out, e, a, b, rows, d, rtol, atol);
  LAUNCHED(op);
  return DF_OK;
}

int cuda_random_at(int dev, int dist, float *x, int64_t n, uint64_t seed, uint64_t stream,
                   uint64_t base)
{
  const char *op = "random_at";
  if (dist != DF_UNIFORM && dist != DF_NORMAL && dist != DF_RADEMACHER)
    return df_cuda_fail(DF_EARG, "cuda %s: unknown distribution %d", op, dist);
  if (n <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  int64_t nb = (int64_t)(((base + (uint64_t)n - 1) >> 2) - (base >> 2) + 1);
  k_random_at<<<df_cuda_grid(nb, THREADS), THREADS>>>(dist, x, n, seed, stream, base);
  LAUNCHED(op);
  return DF_OK;
}

int cuda_mixture_div(int dev, const df_mixture *m, float *out, const float *x,
                     const float *sig2_rows, float sig2, int64_t rows)
{
  const char *op = "mixture_div";
  if (rows <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  MixDev md;
  TRY(mix_upload(op, dev, m, &md));
  k_mixture_div<<<df_cuda_grid(rows, THREADS), THREADS, md.shared>>>(md.m, md.nf, md.shared > 0, out,
                                                                     x, sig2_rows, sig2, rows);
  cudaError_t e = cudaGetLastError();
  df_cuda_free(dev, md.buf);
  if (e != cudaSuccess) return df_cuda_error(op, "kernel launch", e);
  return DF_OK;
}

int cuda_mixture_jvp(int dev, const df_mixture *m, float *out, const float *x, const float *v,
                     const float *sig2_rows, float sig2, int64_t rows)
{
  const char *op = "mixture_jvp";
  if (rows <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  MixDev md;
  TRY(mix_upload(op, dev, m, &md));
  k_mixture_jvp<<<df_cuda_grid(rows, THREADS), THREADS, md.shared>>>(md.m, md.nf, md.shared > 0, out,
                                                                     x, v, sig2_rows, sig2, rows);
  cudaError_t e = cudaGetLastError();
  df_cuda_free(dev, md.buf);
  if (e != cudaSuccess) return df_cuda_error(op, "kernel launch", e);
  return DF_OK;
}
