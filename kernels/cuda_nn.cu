/* cuda_nn.cu: the score-network members of the CUDA table (backend.h): net_workspace,
 * net_forward, net_backward, dsm_step, adam, train_steps and net_sample (a whole sampler run with
 * the network score, one kernel: a row per thread through all the steps, for nets up to 16 wide),
 * with the CPU's semantics (cpu_nn.c):
 * the same parameter layout (df_netdesc woff/boff, weights [out, in] row-major), the same DSM
 * draws, loss and gradient, Adam through df_adam_update.
 *
 * Two paths, chosen from the network's description alone (so a forward and its backward always
 * take the same one):
 * - fused (every layer at most FUSED_MAXW = 16 wide, the tile fitting in 48 KiB of shared memory;
 *   the seed nets): one kernel runs a whole tile of 32 rows, one row per lane of a warp, through
 *   draws (DSM), forward, loss and backward; the row's activations stay in registers (arrays sized
 *   by a template width, so they unroll) and in a shared tile for the backward; each block then
 *   sums its rows' parameter gradients in a fixed order into its own partial row. A second kernel
 *   adds the partials in block order (grads +=), writes the loss, and in a training graph also
 *   runs Adam. Nothing needs keeping between a forward and a backward: the backward recomputes the
 *   forward from the inputs the core keeps.
 * - layered (wider nets): one kernel per layer over the whole batch, activations row-major
 *   [rows, width] in the workspace; a layer with GEMM_MIN_WIDTH = 64 or more inputs or outputs is
 *   a cuBLAS SGEMM (full float32, its own fixed workspace, so graph and plain runs pick the same
 *   algorithms), a narrower one small custom kernels.
 * Per-row arithmetic follows the CPU's order (bias first, then inputs in order; the backward's
 * sums over outputs in order; each product added by one df_fmaf, as the CPU's fma8), so the
 * fused and narrow layered forwards are bitwise the CPU's; sums over rows (weight gradients,
 * the loss) differ from the CPU's order but are deterministic: fixed per-block sequences and
 * fixed trees, no float atomics, so a result is the same from run to run. cuBLAS runs with
 * atomics disallowed.
 *
 * train_steps captures one training step (zero grads, draws, forward, loss, backward, Adam) as a
 * CUDA graph, in an 8-step and a 1-step version, once per configuration (network description,
 * buffers, batch, data, diffuser, Adam constants: the key of a small cache), and replays them for
 * a chunk. Everything that changes from step to step (the streams, Adam's bias corrections, the
 * loss slot) sits in a device table read through a cursor that the graph itself advances, so a
 * replay is one cudaGraphLaunch and no other host work; the table is uploaded once per chunk.
 * The graph runs the very kernels (same launch geometry) that dsm_step and adam run, so its
 * results are bitwise those of the core's plain loop. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cuda_internal.h"
#include "cuda_layers.h"
#include "graph.h"

namespace {

const int THREADS = DF_CUDA_THREADS;
const unsigned FULL_MASK = 0xffffffffu;

const int FUSED_ROWS = 32;                  /* rows of a fused tile: one warp, a row per lane */
const int FUSED_RP = FUSED_ROWS + 1;        /* padded row stride of the shared tile (no bank
                                               conflicts when lanes sum different features) */
const int FUSED_MAXW = 16;                  /* widest layer the fused kernels take (a width of 32
                                               fully unrolled costs minutes of compile time; those
                                               nets take the layered path) */
const size_t FUSED_SHARED = 48 * 1024;      /* the tile's shared memory, at most */
const int64_t FUSED_MAX_BLOCKS = 512;       /* blocks (gradient partials) of a fused backward */
const int GEMM_MIN_WIDTH = 64;              /* layers this wide (in or out) go to cuBLAS */
const int LOSS_BLOCKS = 256;                /* most blocks of the layered loss kernel */
const int TAB_STEPS = 256;                  /* steps of an uploaded step table */
const int GRAPH_STEPS = 8;                  /* training steps per replay of the long graph */
const int GRAPH_CACHE = 4;                  /* configurations with captured graphs */

enum { M_FWD, M_BWD, M_DSM };

/* ---- per-step values: kernel arguments, or a device table when replaying a graph ------------ */

struct StepVals {
  uint64_t seed, st_idx, st_t, st_eta; /* the DSM draws */
  float step, sqrt_bc2;                /* Adam's bias-corrected constants */
  float *loss;                         /* where the step's loss goes */
};

/* entry cursor + slot is step `slot` of the current replay; the graph's last node advances it */
struct StepTab {
  int64_t cursor, pad;
  StepVals e[TAB_STEPS];
};

__device__ __forceinline__ StepVals step_vals(const StepVals &arg, const StepTab *tab, int slot)
{
  return tab ? tab->e[tab->cursor + slot] : arg;
}

__global__ void k_advance(StepTab *tab, int steps) { tab->cursor += steps; }

/* ---- the fused path ------------------------------------------------------------------------- */

/* feature offsets in the shared tile (each feature FUSED_RP floats: one per row) */
struct FusedLayout {
  int feats;
  int in0, z[DF_MAXLIN], h[DF_MAXLIN], dz[2];   /* MLP: inputs, z and h per layer, dz ping-pong */
  int x, f, ze, v, hh, dout, dv, dze;            /* TEMB */
};

/* everything a fused kernel reads (a kernel argument: a few hundred bytes) */
struct NetArgs {
  df_netdesc nd;
  FusedLayout ly;
  const float *params, *fixed;
  const float *x, *t; /* forward / backward inputs (t NULL: t0 for every row) */
  float t0;
  const float *dout;  /* backward */
  float *out;         /* forward */
  int64_t rows;
  df_dsm job;         /* DSM: the diffuser, data, sampling, tol (streams come from sv / tab) */
  float scale;        /* DSM: d loss / d out = scale (out + eta), scale = 2 / (B d) */
  StepVals sv;
  const StepTab *tab;
  int slot;
  float *part;        /* [gridDim.x][nparams] gradient partials */
  double *lpart;      /* [gridDim.x] loss partials */
};

#define TILE(f, r) sm[(f) * FUSED_RP + (r)]

/* the activation and its derivative as calls: the same dmath.h code, kept out of line in the wider
   kernels, whose fully unrolled rows would otherwise inline every activation at every position
   (a long compile); the seed-width kernels (WMAX 8) inline them */
__device__ __noinline__ float act_fwd_call(int act, float z, float *aux)
{
  return df_act_fwd(act, z, aux);
}
__device__ __noinline__ float act_bwd_call(int act, float z)
{
  float aux;
  (void)df_act_fwd(act, z, &aux);
  return df_act_bwd(act, z, aux);
}
template <int WMAX> __device__ __forceinline__ float act_f(int act, float z, float *aux)
{
  return WMAX > 8 ? act_fwd_call(act, z, aux) : df_act_fwd(act, z, aux);
}
/* act'(z), aux recomputed (bitwise the value the forward kept) */
template <int WMAX> __device__ __forceinline__ float act_d(int act, float z)
{
  if (WMAX > 8) return act_bwd_call(act, z);
  float aux;
  (void)df_act_fwd(act, z, &aux);
  return df_act_bwd(act, z, aux);
}

/* one row through a Linear: out[o] = B[o] + sum_i W[o, i] in[i] for o < O (0 beyond), the bias
   first, then the inputs in order, one fma each: cpu_nn.c's linear_forward for one row */
template <int WMAX>
__device__ __forceinline__ void row_linear(float *out, const float *W, const float *B,
                                           const float *in, int I, int O)
{
#pragma unroll
  for (int o = 0; o < WMAX; o++) {
    out[o] = 0.0f;
    if (o < O) {
      float acc = __ldg(B + o);
#pragma unroll
      for (int i = 0; i < WMAX; i++)
        if (i < I) acc = df_fmaf(__ldg(W + o * I + i), in[i], acc);
      out[o] = acc;
    }
  }
}

/* the row's inputs: x (and t) of the forward/backward, or the DSM draws of row `row`: t from
   uniform number row of st_t, eta from normals row*d + c of st_eta, the data row (drawn from
   st_idx when sampling), x_t = x0 + sigma(t) eta (cpu_dsm_step, statement for statement) */
template <int MODE, int WMAX>
__device__ __forceinline__ void load_row(const NetArgs &a, const StepVals &sv, int64_t row,
                                         bool valid, float *x, float *eta, float *t)
{
  const int d = a.nd.dim;
#pragma unroll
  for (int c = 0; c < WMAX; c++) x[c] = eta[c] = 0.0f;
  *t = 0.0f;
  if (!valid) return;
  if (MODE != M_DSM) {
#pragma unroll
    for (int c = 0; c < WMAX; c++)
      if (c < d) x[c] = a.x[row * d + c];
    *t = a.t ? a.t[row] : a.t0;
    return;
  }
  const df_diffuser D = a.job.diff;
  float tt = df_dsm_time(df_rand_at(sv.seed, sv.st_t, (uint64_t)row), a.job.tol);
  int64_t src = a.job.sample ? df_rand_index(sv.seed, sv.st_idx, (uint64_t)row, a.job.data_rows)
                             : row;
  float sigma = sqrtf(df_diffuser_sigma2(&D, tt));
  *t = tt;
#pragma unroll
  for (int c = 0; c < WMAX; c++)
    if (c < d) {
      eta[c] = df_randn_at(sv.seed, sv.st_eta, (uint64_t)(row * d + c));
      x[c] = a.job.data[src * d + c] + sigma * eta[c];
    }
}

/* the block's gradient partials of one Linear (O x I weights at woff, O biases at boff): each
   parameter by one lane, summing the tile's m rows in order; the first tile of a block writes,
   later ones add */
__device__ void tile_param_sums(const NetArgs &a, const float *sm, bool first, int dzf, int inf,
                                int I, int O, int64_t woff, int64_t boff, int m)
{
  float *part = a.part + (int64_t)blockIdx.x * a.nd.nparams;
  const int nw = O * I, P = nw + O;
  for (int p = threadIdx.x; p < P; p += FUSED_ROWS) {
    float acc = 0.0f;
    int64_t at;
    if (p < nw) {
      int o = p / I, i = p - o * I;
      const float *dz = sm + (dzf + o) * FUSED_RP, *in = sm + (inf + i) * FUSED_RP;
      for (int rr = 0; rr < m; rr++) acc = df_fmaf(dz[rr], in[rr], acc);
      at = woff + p;
    } else {
      const float *dz = sm + (dzf + p - nw) * FUSED_RP;
      for (int rr = 0; rr < m; rr++) acc += dz[rr];
      at = boff + (p - nw);
    }
    part[at] = first ? acc : part[at] + acc;
  }
}

/* the loss of a tile: the lanes' row sums (double) in a fixed shuffle tree */
__device__ __forceinline__ double warp_sum(double v)
{
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FULL_MASK, v, o);
  return v;
}

/* the MLP on concat[x, t] */
/* the end of a fused row's forward: the output out[0 .. d) stored (forward only), or
   d loss / d out into dz (the caller's dout for a backward; 2 (out + eta) / (B d) for a DSM step,
   whose squared residuals the warp sums into *lblock). Returns false when the row is done. */
template <int MODE, int WMAX>
__device__ __forceinline__ bool row_output(const NetArgs &a, int64_t row, int d, bool valid,
                                           int r, const float *out, const float *eta, float *dz,
                                           double *lblock)
{
  if (MODE == M_FWD) {
    if (valid) {
#pragma unroll
      for (int c = 0; c < WMAX; c++)
        if (c < d) a.out[row * d + c] = out[c];
    }
    return false;
  }
  if (MODE == M_BWD) {
#pragma unroll
    for (int c = 0; c < WMAX; c++) dz[c] = (valid && c < d) ? a.dout[row * d + c] : 0.0f;
  } else {
    double lrow = 0.0;
#pragma unroll
    for (int c = 0; c < WMAX; c++) {
      float res = (valid && c < d) ? out[c] + eta[c] : 0.0f;
      lrow += (double)res * (double)res;
      dz[c] = a.scale * res;
    }
    lrow = warp_sum(lrow);
    if (r == 0) *lblock += lrow;
  }
  return true;
}

template <int MODE, int WMAX>
__global__ void __launch_bounds__(FUSED_ROWS) k_mlp_fused(const NetArgs a)
{
  extern __shared__ float sm[];
  const df_netdesc &nd = a.nd;
  const FusedLayout &ly = a.ly;
  const int r = threadIdx.x, L = nd.nlin, d = nd.dim, act = nd.act;
  const int64_t ntiles = (a.rows + FUSED_ROWS - 1) / FUSED_ROWS;
  StepVals sv = a.sv;
  if (MODE == M_DSM) sv = step_vals(a.sv, a.tab, a.slot);
  double lblock = 0.0;
  bool first = true;
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const int64_t row = tile * FUSED_ROWS + r;
    const int m = a.rows - tile * FUSED_ROWS < FUSED_ROWS ? (int)(a.rows - tile * FUSED_ROWS)
                                                          : FUSED_ROWS;
    const bool valid = r < m;
    float h[WMAX], eta[WMAX], t;
    load_row<MODE, WMAX>(a, sv, row, valid, h, eta, &t);
#pragma unroll
    for (int c = 0; c < WMAX; c++) /* concat[x, t]; a constant index keeps h in registers */
      if (c == d) h[c] = t;
    if (MODE != M_FWD) {
#pragma unroll
      for (int c = 0; c < WMAX; c++)
        if (c <= d) TILE(ly.in0 + c, r) = h[c];
    }
    /* forward: z = W h + b, bias first, then the inputs in order */
    float z[WMAX];
    for (int l = 0; l < L; l++) {
      const int O = nd.out[l];
      row_linear<WMAX>(z, a.params + nd.woff[l], a.params + nd.boff[l], h, nd.in[l], O);
      if (l + 1 < L) {
#pragma unroll
        for (int o = 0; o < WMAX; o++)
          if (o < O) {
            float aux;
            h[o] = act_f<WMAX>(act, z[o], &aux);
            if (MODE != M_FWD) {
              TILE(ly.z[l] + o, r) = z[o];
              TILE(ly.h[l] + o, r) = h[o];
            }
          }
      }
    }
    /* d loss / d out */
    float dz[WMAX];
    if (!row_output<MODE, WMAX>(a, row, d, valid, r, z, eta, dz, &lblock)) continue;
    /* backward, a layer at a time: the rows' dz into the tile, the next dz per row, then the
       layer's parameter sums over the tile */
    for (int l = L - 1; l >= 0; l--) {
      const int I = nd.in[l], O = nd.out[l], buf = ly.dz[l & 1];
#pragma unroll
      for (int o = 0; o < WMAX; o++)
        if (o < O) TILE(buf + o, r) = dz[o];
      if (l > 0) {
        const float *W = a.params + nd.woff[l];
        float dh[WMAX];
#pragma unroll
        for (int i = 0; i < WMAX; i++) {
          dh[i] = 0.0f;
          if (i < I) {
            float acc = 0.0f;
#pragma unroll
            for (int o = 0; o < WMAX; o++)
              if (o < O) acc = df_fmaf(__ldg(W + o * I + i), dz[o], acc);
            dh[i] = acc;
          }
        }
#pragma unroll
        for (int i = 0; i < WMAX; i++) {
          dz[i] = 0.0f;
          if (i < I) {
            dz[i] = dh[i] * act_d<WMAX>(act, TILE(ly.z[l - 1] + i, r));
          }
        }
      }
      __syncwarp();
      tile_param_sums(a, sm, first, buf, l > 0 ? ly.h[l - 1] : ly.in0, I, O, nd.woff[l],
                      nd.boff[l], m);
      __syncwarp();
    }
    first = false;
  }
  if (MODE == M_DSM && r == 0) a.lpart[blockIdx.x] = lblock;
}

/* the time-embedded net: Fourier features of t -> Linear(embed, H) -> act, plus Linear(dim, H)
   of x, summed, act, Linear(H, dim) */
template <int MODE, int WMAX>
__global__ void __launch_bounds__(FUSED_ROWS) k_temb_fused(const NetArgs a)
{
  extern __shared__ float sm[];
  const df_netdesc &nd = a.nd;
  const FusedLayout &ly = a.ly;
  const int r = threadIdx.x, d = nd.dim, act = nd.act, H = nd.out[0], E = nd.embed, half = E / 2;
  const float *W0 = a.params + nd.woff[0], *B0 = a.params + nd.boff[0];
  const float *W1 = a.params + nd.woff[1], *B1 = a.params + nd.boff[1];
  const float *W2 = a.params + nd.woff[2], *B2 = a.params + nd.boff[2];
  const int64_t ntiles = (a.rows + FUSED_ROWS - 1) / FUSED_ROWS;
  StepVals sv = a.sv;
  if (MODE == M_DSM) sv = step_vals(a.sv, a.tab, a.slot);
  double lblock = 0.0;
  bool first = true;
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const int64_t row = tile * FUSED_ROWS + r;
    const int m = a.rows - tile * FUSED_ROWS < FUSED_ROWS ? (int)(a.rows - tile * FUSED_ROWS)
                                                          : FUSED_ROWS;
    const bool valid = r < m;
    float x[WMAX], eta[WMAX], t;
    load_row<MODE, WMAX>(a, sv, row, valid, x, eta, &t);
    if (MODE != M_FWD) {
#pragma unroll
      for (int c = 0; c < WMAX; c++)
        if (c < d) TILE(ly.x + c, r) = x[c];
    }
    /* the features go through the tile: the Linear sums all sines, then all cosines */
    for (int j = 0; j < half; j++) {
      float s, c;
      df_fourier(t, __ldg(a.fixed + j), &s, &c);
      TILE(ly.f + j, r) = s;
      TILE(ly.f + half + j, r) = c;
    }
    float ze[WMAX];
#pragma unroll
    for (int o = 0; o < WMAX; o++) ze[o] = o < H ? __ldg(B0 + o) : 0.0f;
    for (int j = 0; j < E; j++) {
      const float fj = TILE(ly.f + j, r);
#pragma unroll
      for (int o = 0; o < WMAX; o++)
        if (o < H) ze[o] = df_fmaf(__ldg(W0 + (int64_t)o * E + j), fj, ze[o]);
    }
    float u[WMAX], v[WMAX], hh[WMAX];
    row_linear<WMAX>(u, W1, B1, x, d, H);
#pragma unroll
    for (int o = 0; o < WMAX; o++) {
      v[o] = hh[o] = 0.0f;
      if (o < H) {
        float aux, e = act_f<WMAX>(act, ze[o], &aux);
        v[o] = e + u[o];
        hh[o] = act_f<WMAX>(act, v[o], &aux);
        if (MODE != M_FWD) {
          TILE(ly.ze + o, r) = ze[o];
          TILE(ly.v + o, r) = v[o];
          TILE(ly.hh + o, r) = hh[o];
        }
      }
    }
    float out[WMAX];
    row_linear<WMAX>(out, W2, B2, hh, H, d);
    float dout[WMAX];
    if (!row_output<MODE, WMAX>(a, row, d, valid, r, out, eta, dout, &lblock)) {
      __syncwarp(); /* the next tile rewrites the features */
      continue;
    }
#pragma unroll
    for (int c = 0; c < WMAX; c++)
      if (c < d) TILE(ly.dout + c, r) = dout[c];
    /* dh = W2^T dout; dv = dh act'(v); dze = dv act'(ze) */
#pragma unroll
    for (int o = 0; o < WMAX; o++)
      if (o < H) {
        float acc = 0.0f;
#pragma unroll
        for (int c = 0; c < WMAX; c++)
          if (c < d) acc = df_fmaf(__ldg(W2 + c * H + o), dout[c], acc);
        float dv = acc * act_d<WMAX>(act, v[o]);
        TILE(ly.dv + o, r) = dv;
        TILE(ly.dze + o, r) = dv * act_d<WMAX>(act, ze[o]);
      }
    __syncwarp();
    tile_param_sums(a, sm, first, ly.dout, ly.hh, H, d, nd.woff[2], nd.boff[2], m);
    tile_param_sums(a, sm, first, ly.dv, ly.x, d, H, nd.woff[1], nd.boff[1], m);
    tile_param_sums(a, sm, first, ly.dze, ly.f, E, H, nd.woff[0], nd.boff[0], m);
    __syncwarp();
    first = false;
  }
  if (MODE == M_DSM && r == 0) a.lpart[blockIdx.x] = lblock;
}

/* grads += the blocks' partials in block order (R_ACC), or = them (R_TRAIN, R_ZERO: a training
   step, whose gradients start from 0), the loss from the blocks' partials, and with R_TRAIN Adam
   on the fresh gradient (R_ZERO leaves Adam to k_adam, after the gradients are clipped) */
enum { R_ACC, R_TRAIN, R_ZERO };
template <int MODE>
__global__ void k_net_reduce(int64_t np, int nb, const float *part, const double *lpart,
                             double denom, float *grads, float *params, float *m, float *v,
                             df_adam_hp hp, StepVals sv, const StepTab *tab, int slot)
{
  const StepVals s = step_vals(sv, tab, slot);
  for (int64_t p = df_gtid(); p < np; p += df_gstride()) {
    float acc = MODE == R_ACC ? grads[p] : 0.0f;
    for (int b = 0; b < nb; b++) acc += part[(int64_t)b * np + p];
    grads[p] = acc;
    if (MODE == R_TRAIN)
      params[p] = df_adam_update(params[p], acc, &m[p], &v[p], hp.b1, hp.b2, s.step, s.sqrt_bc2,
                                 hp.eps, hp.wd);
  }
  if (lpart && df_gtid() == 0) {
    double tot = 0.0;
    for (int b = 0; b < nb; b++) tot += lpart[b];
    *s.loss = (float)(tot / denom);
  }
}

/* ---- the layered path: one kernel (or SGEMM) per layer over the batch, row-major [rows, w] --- */

__global__ void k_mlp_in(float *in0, const float *x, const float *t, float t0, int64_t rows, int d)
{
  const int w = d + 1;
  for (int64_t j = df_gtid(); j < rows * w; j += df_gstride()) {
    int64_t r = j / w;
    int c = (int)(j - r * w);
    in0[j] = c < d ? x[r * d + c] : (t ? t[r] : t0);
  }
}

/* the DSM draws of every row (see load_row): x_t into x (row stride ldx), t (stride ldt), eta */
__global__ void k_dsm_draw(df_dsm job, StepVals sv, const StepTab *tab, int slot, int d, float *x,
                           int64_t ldx, float *t, int64_t ldt, float *eta, float *x0)
{
  const StepVals s = step_vals(sv, tab, slot);
  const df_diffuser D = job.diff;
  for (int64_t r = df_gtid(); r < job.batch; r += df_gstride()) {
    float tt = df_dsm_time(df_rand_at(s.seed, s.st_t, (uint64_t)r), job.tol);
    int64_t src = job.sample ? df_rand_index(s.seed, s.st_idx, (uint64_t)r, job.data_rows) : r;
    float sigma = sqrtf(df_diffuser_sigma2(&D, tt));
    t[r * ldt] = tt;
    for (int c = 0; c < d; c++) {
      float e = df_randn_at(s.seed, s.st_eta, (uint64_t)(r * d + c));
      eta[r * d + c] = e;
      x[r * ldx + c] = job.data[src * d + c] + sigma * e;
      if (x0) x0[r * d + c] = job.data[src * d + c]; /* (a denoiser's target) */
    }
  }
}

__global__ void k_fourier(float *f, const float *t, float t0, const float *w, int64_t rows, int half)
{
  for (int64_t j = df_gtid(); j < rows * half; j += df_gstride()) {
    int64_t r = j / half;
    int q = (int)(j - r * half);
    float s, c;
    df_fourier(t ? t[r] : t0, w[q], &s, &c);
    f[r * 2 * half + q] = s;
    f[r * 2 * half + half + q] = c;
  }
}

__global__ void k_act_fwd(int act, float *h, const float *z, int64_t n)
{
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) {
    float aux;
    h[i] = df_act_fwd(act, z[i], &aux);
  }
}

/* dz = dh act'(z) (dz may be dh) */
__global__ void k_act_bwd(int act, float *dz, const float *dh, const float *z, int64_t n)
{
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) {
    float zz = z[i], aux;
    (void)df_act_fwd(act, zz, &aux);
    dz[i] = dh[i] * df_act_bwd(act, zz, aux);
  }
}

/* the time-embedded net's sum: v = act(ze) + u, with u already in v */
__global__ void k_temb_mid(int act, float *v, const float *ze, int64_t n)
{
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) {
    float aux, e = df_act_fwd(act, ze[i], &aux);
    v[i] = e + v[i];
  }
}

/* the residuals out + eta, dout = scale * residual, and per block the sum of squares (double:
   each thread its rows in order, then a fixed tree) */
__global__ void k_dsm_loss(const float *out, const float *eta, float *dout, int64_t rows, int d,
                           float scale, double *lpart)
{
  __shared__ double sh[THREADS];
  double acc = 0.0;
  for (int64_t r = df_gtid(); r < rows; r += df_gstride())
    for (int c = 0; c < d; c++) {
      float res = out[r * d + c] + eta[r * d + c];
      acc += (double)res * (double)res;
      dout[r * d + c] = scale * res;
    }
  double tot = df_block_sum(acc, sh);
  if (threadIdx.x == 0) lpart[blockIdx.x] = tot;
}

/* k_dsm_loss for any output convention and weighting (dmath.h's df_dsm_residual, dres, weight):
   the loss sum of w r^2, dout = scale w dr/dout r; t [rows] with stride ldt, x0 for a denoiser */
__global__ void k_dsm_loss_g(const float *out, const float *eta, const float *x0, const float *t,
                             int64_t ldt, df_diffuser D, int output, int weighting, float *dout,
                             int64_t rows, int d, float scale, double *lpart)
{
  __shared__ double sh[THREADS];
  double acc = 0.0;
  for (int64_t r = df_gtid(); r < rows; r += df_gstride()) {
    const float tr = t[r * ldt], sig = sqrtf(df_diffuser_sigma2(&D, tr));
    const float gr = weighting == DF_W_LIKELIHOOD ? df_diffuser_g(&D, tr) : 1.0f;
    const float w = df_dsm_weight(weighting, sig * sig, gr * gr), dr = df_dsm_dres(output, sig);
    for (int c = 0; c < d; c++) {
      const int64_t i = r * d + c;
      float res = df_dsm_residual(output, out[i], eta[i], sig, x0 ? x0[i] : 0.0f);
      acc += (double)w * ((double)res * (double)res);
      dout[i] = scale * (w * (dr * res));
    }
  }
  double tot = df_block_sum(acc, sh);
  if (threadIdx.x == 0) lpart[blockIdx.x] = tot;
}

/* the gradients' sum of squares into *norm2 (one block: each thread its elements in order, then
   a fixed tree), for clipping */
__global__ void k_sumsq(const float *g, int64_t n, double *norm2)
{
  __shared__ double sh[THREADS];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += THREADS) acc += (double)g[i] * (double)g[i];
  double tot = df_block_sum(acc, sh);
  if (threadIdx.x == 0) *norm2 = tot;
}

/* e = e d + p (1 - d) */
__global__ void k_ema(float *e, const float *p, int64_t n, float decay)
{
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) e[i] = df_ema_update(e[i], p[i], decay);
}

__global__ void k_loss_final(const double *lpart, int nb, double denom, StepVals sv,
                             const StepTab *tab, int slot)
{
  const StepVals s = step_vals(sv, tab, slot);
  double tot = 0.0;
  for (int b = 0; b < nb; b++) tot += lpart[b];
  *s.loss = (float)(tot / denom);
}

/* Adam; with norm2 (clipping) the gradients are first scaled in place by clip / (norm + 1e-6)
   when that is below 1, as the CPU's loop does (nn.c: clip_grads) */
__global__ void k_adam(float *p, float *g, float *m, float *v, int64_t n, df_adam_hp hp,
                       const StepTab *tab, int slot, const double *norm2, float clip)
{
  if (tab) {
    hp.step = tab->e[tab->cursor + slot].step;
    hp.sqrt_bc2 = tab->e[tab->cursor + slot].sqrt_bc2;
  }
  float coef = 1.0f;
  bool scale = false;
  if (norm2) {
    double c = (double)clip / (sqrt(*norm2) + 1e-6);
    scale = c < 1.0;
    coef = (float)c;
  }
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) {
    float gi = g[i];
    if (scale) g[i] = gi = gi * coef;
    p[i] = df_adam_update(p[i], gi, &m[i], &v[i], hp.b1, hp.b2, hp.step, hp.sqrt_bc2, hp.eps,
                          hp.wd);
  }
}

/* ---- host side: plans and workspaces ------------------------------------------------------ */

int64_t ntiles_of(int64_t rows) { return (rows + FUSED_ROWS - 1) / FUSED_ROWS; }

struct Plan {
  bool fused;
  int wmax;       /* template width of the fused kernels: 8 or 16 */
  FusedLayout ly;
  size_t smem;    /* bytes of the shared tile */
};

Plan plan_of(const df_netdesc *nd)
{
  Plan p;
  memset(&p, 0, sizeof p);
  if (nd->kind == DF_NET_GRAPH) return p; /* (a traced network: cuda_graph.cu, never fused) */
  int widest = 0, off = 0;
  FusedLayout &ly = p.ly;
  if (nd->kind == DF_NET_MLP) {
    int maxo = 0;
    for (int l = 0; l < nd->nlin; l++) {
      if (nd->in[l] > widest) widest = nd->in[l];
      if (nd->out[l] > widest) widest = nd->out[l];
      if (nd->out[l] > maxo) maxo = nd->out[l];
    }
    ly.in0 = off; off += nd->dim + 1;
    for (int l = 0; l < nd->nlin; l++) {
      ly.z[l] = off; off += nd->out[l];
      if (l + 1 < nd->nlin) { ly.h[l] = off; off += nd->out[l]; }
    }
    ly.dz[0] = off; off += maxo;
    ly.dz[1] = off; off += maxo;
  } else {
    const int H = nd->out[0];
    widest = H > nd->dim ? H : nd->dim;
    ly.x = off; off += nd->dim;
    ly.f = off; off += nd->embed;
    ly.ze = off; off += H;
    ly.v = off; off += H;
    ly.hh = off; off += H;
    ly.dout = off; off += nd->dim;
    ly.dv = off; off += H;
    ly.dze = off; off += H;
  }
  ly.feats = off;
  p.smem = (size_t)off * FUSED_RP * sizeof(float);
  p.wmax = widest <= 8 ? 8 : 16;
  p.fused = widest <= FUSED_MAXW && p.smem <= FUSED_SHARED;
  return p;
}

/* the layered path's buffers, float offsets into the workspace (each 64-float aligned) */
struct Layered {
  int64_t lpart;            /* LOSS_BLOCKS doubles */
  int64_t eta, x0, xin, tin; /* MLP: xin = concat[x, t] [rows, d + 1]; TEMB: x [rows, d], t [rows] */
  int64_t z[DF_MAXLIN], h[DF_MAXLIN];
  int64_t f, ze, v, hh, out;
  int64_t d1, d2;           /* backward scratch [rows, sw] */
  int64_t total;
};

Layered layered_of(const df_netdesc *nd, int64_t rows)
{
  Layered y;
  memset(&y, 0, sizeof y);
  int64_t off = 0;
  auto take = [&](int64_t floats) {
    int64_t at = off;
    off += (floats + 63) / 64 * 64;
    return at;
  };
  int sw = nd->dim;
  y.lpart = take(2 * LOSS_BLOCKS + 2); /* (then the clipping norm, a double) */
  y.eta = take(rows * nd->dim);
  y.x0 = take(rows * nd->dim);
  if (nd->kind == DF_NET_MLP) {
    y.xin = take(rows * (nd->dim + 1));
    for (int l = 0; l < nd->nlin; l++) {
      y.z[l] = take(rows * nd->out[l]);
      if (l + 1 < nd->nlin) y.h[l] = take(rows * nd->out[l]);
      if (nd->out[l] > sw) sw = nd->out[l];
      if (l > 0 && nd->in[l] > sw) sw = nd->in[l];
    }
  } else {
    const int H = nd->out[0];
    if (H > sw) sw = H;
    y.xin = take(rows * nd->dim);
    y.tin = take(rows);
    y.f = take(rows * nd->embed);
    y.ze = take(rows * H);
    y.v = take(rows * H);
    y.hh = take(rows * H);
    y.out = take(rows * nd->dim);
  }
  y.d1 = take(rows * sw);
  y.d2 = take(rows * sw);
  y.total = off;
  return y;
}

/* the fused path's workspace: loss partials (doubles) first, then [blocks][nparams] partials */
int64_t fused_blocks(int64_t rows)
{
  int64_t nt = ntiles_of(rows);
  return nt < FUSED_MAX_BLOCKS ? (nt < 1 ? 1 : nt) : FUSED_MAX_BLOCKS;
}

/* ---- cuBLAS for the layered path ------------------------------------------------------------ */

void *blas_ws[DF_CUDA_MAXDEV];
size_t blas_ws_bytes[DF_CUDA_MAXDEV];

/* the handle on `st`, with a workspace of its own that stays the same for plain and captured
   runs (cublasSetStream resets the workspace, so it is set again each time) */
int blas_on(const char *op, int dev, cudaStream_t st, cublasHandle_t *h)
{
  TRY(df_cuda_blas(dev, h));
  if (!blas_ws[dev]) {
    int major = 0;
    CK(op, "cudaDeviceGetAttribute(ComputeCapabilityMajor)",
       cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    size_t bytes = (size_t)(major >= 9 ? 32 : 4) << 20; /* NVIDIA's advice: 32 MiB on Hopper */
    TRY(df_cuda_malloc(dev, bytes, &blas_ws[dev]));
    blas_ws_bytes[dev] = bytes;
  }
  cublasStatus_t s = cublasSetStream(*h, st);
  if (s != CUBLAS_STATUS_SUCCESS) return df_cuda_blas_error(op, "cublasSetStream", s);
  s = cublasSetWorkspace(*h, blas_ws[dev], blas_ws_bytes[dev]);
  if (s != CUBLAS_STATUS_SUCCESS) return df_cuda_blas_error(op, "cublasSetWorkspace", s);
  return DF_OK;
}

/* back to the legacy stream and the default workspace (what matmul uses) */
void blas_off(cublasHandle_t h)
{
  if (h) (void)cublasSetStream(h, 0);
}

/* one network call's context */
struct Ctx {
  const char *op;
  int dev;
  cudaStream_t st;
  const df_netdesc *nd;
  const float *params, *fixed;
  float *ws;
  int64_t rows;
  Layered y;
  cublasHandle_t blas; /* NULL until a layer needs it */
};

/* the context of a layered pass over `rows` rows (stream 0 unless the caller sets c.st) */
Ctx ctx_of(const char *op, int dev, const df_netdesc *nd, const float *params, const float *fixed,
           float *ws, int64_t rows)
{
  Ctx c;
  memset(&c, 0, sizeof c);
  c.op = op;
  c.dev = dev;
  c.nd = nd;
  c.params = params;
  c.fixed = fixed;
  c.ws = ws;
  c.rows = rows;
  c.y = layered_of(nd, rows);
  return c;
}

bool wide(int I, int O) { return I >= GEMM_MIN_WIDTH || O >= GEMM_MIN_WIDTH; }

int need_blas(Ctx &c)
{
  if (!c.blas) TRY(blas_on(c.op, c.dev, c.st, &c.blas));
  return DF_OK;
}

#define LAUNCHED_C(c) CK((c).op, "kernel launch", cudaGetLastError())

unsigned grid(int64_t n) { return df_cuda_grid(n, THREADS); }

int lin_fwd(Ctx &c, float *out, const float *in, int l)
{
  const int I = c.nd->in[l], O = c.nd->out[l];
  const float *W = c.params + c.nd->woff[l], *B = c.params + c.nd->boff[l];
  const int64_t rows = c.rows;
  if (!wide(I, O)) {
    df_k_lin_fwd<<<grid(rows * O), THREADS, 0, c.st>>>(out, in, W, B, rows, I, O);
    LAUNCHED_C(c);
    return DF_OK;
  }
  TRY(need_blas(c));
  df_k_bias_rows<<<grid(rows * O), THREADS, 0, c.st>>>(out, B, rows, O);
  LAUNCHED_C(c);
  /* row-major out = in W^T + out is column-major out^T (O x rows) = W^T (O x I) in^T (I x rows) + out^T */
  const float one = 1.0f;
  cublasStatus_t s = cublasSgemm_64(c.blas, CUBLAS_OP_T, CUBLAS_OP_N, O, rows, I, &one, W, I, in,
                                    I, &one, out, O);
  if (s != CUBLAS_STATUS_SUCCESS) return df_cuda_blas_error(c.op, "cublasSgemm (forward)", s);
  return DF_OK;
}

/* grads of Linear l from dout [rows, O] and its input [rows, I]; dinp [rows, I] unless NULL */
int lin_bwd(Ctx &c, float *dinp, float *grads, const float *dout, const float *in, int l)
{
  const int I = c.nd->in[l], O = c.nd->out[l];
  const float *W = c.params + c.nd->woff[l];
  float *gW = grads + c.nd->woff[l], *gB = grads + c.nd->boff[l];
  const int64_t rows = c.rows;
  if (!wide(I, O)) {
    df_k_param_grad<<<df_param_grad_blocks(I, O, true), DF_PG_PARAMS * DF_PG_LANES, 0, c.st>>>(
      gW, gB, dout, in, rows, I, O);
    LAUNCHED_C(c);
    if (dinp) {
      df_k_lin_dinp<<<grid(rows * I), THREADS, 0, c.st>>>(dinp, dout, W, rows, I, O, 0);
      LAUNCHED_C(c);
    }
    return DF_OK;
  }
  TRY(need_blas(c));
  df_k_param_grad<<<df_param_grad_blocks(0, O, true), DF_PG_PARAMS * DF_PG_LANES, 0, c.st>>>(
    nullptr, gB, dout, nullptr, rows, 0, O);
  LAUNCHED_C(c);
  const float one = 1.0f, zero = 0.0f;
  /* gW (O x I row-major = I x O column-major) += in^T (I x rows) dout (rows x O) */
  cublasStatus_t s = cublasSgemm_64(c.blas, CUBLAS_OP_N, CUBLAS_OP_T, I, O, rows, &one, in, I,
                                    dout, O, &one, gW, I);
  if (s != CUBLAS_STATUS_SUCCESS) return df_cuda_blas_error(c.op, "cublasSgemm (weight gradient)", s);
  if (dinp) {
    /* dinp^T (I x rows) = W^T... column-major: W (I x O, ld I) dout^T (O x rows, ld O) */
    s = cublasSgemm_64(c.blas, CUBLAS_OP_N, CUBLAS_OP_N, I, rows, O, &one, W, I, dout, O, &zero,
                       dinp, I);
    if (s != CUBLAS_STATUS_SUCCESS) return df_cuda_blas_error(c.op, "cublasSgemm (input gradient)", s);
  }
  return DF_OK;
}

int act_fwd(Ctx &c, float *h, const float *z, int64_t n)
{
  k_act_fwd<<<grid(n), THREADS, 0, c.st>>>(c.nd->act, h, z, n);
  LAUNCHED_C(c);
  return DF_OK;
}

int act_bwd(Ctx &c, float *dz, const float *dh, const float *z, int64_t n)
{
  k_act_bwd<<<grid(n), THREADS, 0, c.st>>>(c.nd->act, dz, dh, z, n);
  LAUNCHED_C(c);
  return DF_OK;
}

/* the forward over the batch; its input already in place (DSM) or taken from x, t; the output
   into `out` [rows, dim] */
int layered_forward(Ctx &c, const float *x, const float *t, float t0, bool drawn, float *out)
{
  const df_netdesc *nd = c.nd;
  float *ws = c.ws;
  const int64_t rows = c.rows;
  if (nd->kind == DF_NET_MLP) {
    float *in0 = ws + c.y.xin;
    if (!drawn) {
      k_mlp_in<<<grid(rows * (nd->dim + 1)), THREADS, 0, c.st>>>(in0, x, t, t0, rows, nd->dim);
      LAUNCHED_C(c);
    }
    const float *cur = in0;
    for (int l = 0; l < nd->nlin; l++) {
      float *z = l + 1 < nd->nlin ? ws + c.y.z[l] : out;
      TRY(lin_fwd(c, z, cur, l));
      if (l + 1 < nd->nlin) {
        TRY(act_fwd(c, ws + c.y.h[l], z, rows * nd->out[l]));
        cur = ws + c.y.h[l];
      }
    }
    return DF_OK;
  }
  const int H = nd->out[0];
  if (drawn) {
    x = ws + c.y.xin;
    t = ws + c.y.tin;
  }
  float *f = ws + c.y.f, *ze = ws + c.y.ze, *v = ws + c.y.v, *hh = ws + c.y.hh;
  k_fourier<<<grid(rows * (nd->embed / 2)), THREADS, 0, c.st>>>(f, t, t0, c.fixed, rows,
                                                                 nd->embed / 2);
  LAUNCHED_C(c);
  TRY(lin_fwd(c, ze, f, 0));
  TRY(lin_fwd(c, v, x, 1)); /* u, summed into v next */
  k_temb_mid<<<grid(rows * H), THREADS, 0, c.st>>>(nd->act, v, ze, rows * H);
  LAUNCHED_C(c);
  TRY(act_fwd(c, hh, v, rows * H));
  return lin_fwd(c, out, hh, 2);
}

/* grads += the gradient for dout [rows, dim] (in d1, or elsewhere), from the kept forward */
int layered_backward(Ctx &c, const float *x, const float *dout, float *grads)
{
  const df_netdesc *nd = c.nd;
  float *ws = c.ws, *d1 = ws + c.y.d1, *d2 = ws + c.y.d2;
  const int64_t rows = c.rows;
  if (nd->kind == DF_NET_MLP) {
    const float *dz = dout;
    for (int l = nd->nlin - 1; l >= 0; l--) {
      const float *in = l > 0 ? ws + c.y.h[l - 1] : ws + c.y.xin;
      float *dinp = l == 0 ? NULL : (dz == d1 ? d2 : d1);
      TRY(lin_bwd(c, dinp, grads, dz, in, l));
      if (l > 0) {
        TRY(act_bwd(c, dinp, dinp, ws + c.y.z[l - 1], rows * nd->in[l]));
        dz = dinp;
      }
    }
    return DF_OK;
  }
  const int H = nd->out[0];
  float *A = dout == d1 ? d2 : d1, *Bf = A == d1 ? d2 : d1;
  TRY(lin_bwd(c, A, grads, dout, ws + c.y.hh, 2));           /* dh */
  TRY(act_bwd(c, A, A, ws + c.y.v, rows * H));                /* dv */
  TRY(lin_bwd(c, NULL, grads, A, x, 1));
  TRY(act_bwd(c, Bf, A, ws + c.y.ze, rows * H));              /* dze */
  return lin_bwd(c, NULL, grads, Bf, ws + c.y.f, 0);
}

/* ---- one DSM step on either path ------------------------------------------------------------- */

/* a step: draws, forward, loss, backward into grads (+=, or from zero with Adam after it when
   `train`: the training graph's step). sv holds the streams and the loss slot (tab == NULL), or
   tab/slot name them. Runs on stream st (the capture stream when building a graph). */
struct StepCall {
  const char *op;
  int dev;
  cudaStream_t st;
  const df_netdesc *nd;
  const float *params, *fixed;
  float *grads, *ws;
  const df_dsm *job;
  StepVals sv;
  const StepTab *tab;
  int slot;
  bool train;
  float *p, *m, *v; /* train: Adam's buffers (p = params) */
  df_adam_hp hp;    /* train: b1, b2, eps, wd (step constants from the table) */
  float clip;       /* train: > 0 clips the gradients' norm before Adam */
  float *ema;       /* train: not NULL: the weights' EMA after Adam */
  float ema_decay;
};

int fused_launch(int mode, const Plan &pl, const NetArgs &a, unsigned blocks, cudaStream_t st)
{
  const bool mlp = a.nd.kind == DF_NET_MLP;
#define FUSED_CASE(MODE, W)                                                                   \
  if (mlp) k_mlp_fused<MODE, W><<<blocks, FUSED_ROWS, pl.smem, st>>>(a);                     \
  else k_temb_fused<MODE, W><<<blocks, FUSED_ROWS, pl.smem, st>>>(a);
#define FUSED_MODE(MODE)                                                                      \
  if (pl.wmax == 8) { FUSED_CASE(MODE, 8) } else { FUSED_CASE(MODE, 16) }
  if (mode == M_FWD) { FUSED_MODE(M_FWD) }
  else if (mode == M_BWD) { FUSED_MODE(M_BWD) }
  else { FUSED_MODE(M_DSM) }
#undef FUSED_MODE
#undef FUSED_CASE
  return DF_OK;
}

NetArgs net_args(const Plan &pl, const df_netdesc *nd, const float *params, const float *fixed,
                 int64_t rows, float *ws)
{
  NetArgs a;
  memset(&a, 0, sizeof a);
  a.nd = *nd;
  a.ly = pl.ly;
  a.params = params;
  a.fixed = fixed;
  a.rows = rows;
  int64_t nb = fused_blocks(rows);
  a.lpart = (double *)ws;
  a.part = ws + 2 * nb;
  return a;
}

/* where a step keeps the gradients' squared norm (a double; clipping) in its workspace */
double *norm_slot(const df_netdesc *nd, float *ws, int64_t rows)
{
  if (nd->kind == DF_NET_GRAPH) return (double *)(ws + df_cuda_graph_layout(nd->graph, rows).lpart + 512);
  if (plan_of(nd).fused) {
    int64_t nb = fused_blocks(rows), at = 2 * nb + nb * nd->nparams;
    return (double *)(ws + (at + 1) / 2 * 2);
  }
  return (double *)(ws + layered_of(nd, rows).lpart + 2 * LOSS_BLOCKS);
}

/* a training step's end after its gradients are complete: (clip,) Adam, (EMA) */
int step_update(const StepCall &s, int64_t np, bool adam_done)
{
  double *n2 = nullptr;
  if (!adam_done) {
    if (s.clip > 0.0f) {
      n2 = norm_slot(s.nd, s.ws, s.job->batch);
      k_sumsq<<<1, THREADS, 0, s.st>>>(s.grads, np, n2);
      LAUNCHED(s.op);
    }
    k_adam<<<grid(np), THREADS, 0, s.st>>>(s.p, s.grads, s.m, s.v, np, s.hp, s.tab, s.slot, n2, s.clip);
    LAUNCHED(s.op);
  }
  if (s.ema) {
    k_ema<<<grid(np), THREADS, 0, s.st>>>(s.ema, s.p, np, s.ema_decay);
    LAUNCHED(s.op);
  }
  return DF_OK;
}

/* the loss kernels of a layered or graph step: the seed's convention by k_dsm_loss (as before),
   any other by k_dsm_loss_g */
int dsm_loss(const StepCall &s, const float *out, const float *eta, const float *x0, const float *t,
             int64_t ldt, float *dout, double *lpart)
{
  const int64_t B = s.job->batch;
  const int d = s.nd->dim;
  const float scale = 2.0f / (float)((double)B * d); /* as cpu_dsm_step */
  int lb = (int)(B < (int64_t)LOSS_BLOCKS * THREADS ? (B + THREADS - 1) / THREADS : LOSS_BLOCKS);
  if (s.job->output == DF_OUT_SCALED && s.job->weighting == DF_W_SIGMA2)
    k_dsm_loss<<<lb, THREADS, 0, s.st>>>(out, eta, dout, B, d, scale, lpart);
  else
    k_dsm_loss_g<<<lb, THREADS, 0, s.st>>>(out, eta, x0, t, ldt, s.job->diff, s.job->output,
                                           s.job->weighting, dout, B, d, scale, lpart);
  k_loss_final<<<1, 1, 0, s.st>>>(lpart, lb, (double)B * d, s.sv, s.tab, s.slot);
  LAUNCHED(s.op);
  return DF_OK;
}

/* a traced network's step: draws into its x and t buffers, the node kernels forward, the loss,
   backward, then the step's update */
int graph_dsm_run(const StepCall &s)
{
  const df_graph *g = s.nd->graph;
  const int64_t B = s.job->batch;
  const int d = s.nd->dim;
  const df_cuda_glayout y = df_cuda_graph_layout(g, B);
  float *ws = s.ws, *x = df_cuda_graph_val(g, ws, B, 0), *t = df_cuda_graph_val(g, ws, B, 1);
  float *eta = ws + y.eta, *x0 = s.job->output == DF_OUT_DENOISER ? ws + y.x0 : nullptr;
  cublasHandle_t blas = NULL;
  if (s.train)
    CK(s.op, "cudaMemsetAsync of the gradients",
       cudaMemsetAsync(s.grads, 0, (size_t)s.nd->nparams * sizeof(float), s.st));
  k_dsm_draw<<<grid(B), THREADS, 0, s.st>>>(*s.job, s.sv, s.tab, s.slot, d, x, d, t, 1, eta, x0);
  cudaError_t e = cudaGetLastError();
  int st = e != cudaSuccess ? df_cuda_error(s.op, "kernel launch", e) : DF_OK;
  if (!st) st = df_cuda_graph_forward(s.op, s.dev, s.st, &blas, g, s.params, s.fixed, ws, B);
  if (!st) st = dsm_loss(s, df_cuda_graph_val(g, ws, B, g->out), eta, x0, t, 1, ws + y.dout,
                         (double *)(ws + y.lpart));
  if (!st) st = df_cuda_graph_backward(s.op, s.dev, s.st, &blas, g, s.params, s.fixed, ws, B,
                                       ws + y.dout, s.grads);
  if (!st && s.train) st = step_update(s, s.nd->nparams, false);
  blas_off(blas);
  return st;
}

int dsm_run(const StepCall &s)
{
  const df_netdesc *nd = s.nd;
  if (nd->kind == DF_NET_GRAPH) return graph_dsm_run(s);
  const int64_t B = s.job->batch;
  const int d = nd->dim;
  const float scale = 2.0f / (float)((double)B * d); /* as cpu_dsm_step */
  const double denom = (double)B * d;
  const Plan pl = plan_of(nd);
  /* the fused kernels know the seed's loss only; other conventions take the layered path */
  const bool seed_loss = s.job->output == DF_OUT_SCALED && s.job->weighting == DF_W_SIGMA2;
  if (pl.fused && seed_loss) { /* grads = (zero +) the partials, so a training step needs no zeroing */
    NetArgs a = net_args(pl, nd, s.params, s.fixed, B, s.ws);
    a.job = *s.job;
    a.scale = scale;
    a.sv = s.sv;
    a.tab = s.tab;
    a.slot = s.slot;
    const int64_t nb = fused_blocks(B);
    TRY(fused_launch(M_DSM, pl, a, (unsigned)nb, s.st));
    LAUNCHED(s.op);
    const bool plain = s.train && s.clip <= 0.0f; /* Adam in the reduction itself */
    if (plain)
      k_net_reduce<R_TRAIN><<<grid(nd->nparams), THREADS, 0, s.st>>>(
        nd->nparams, (int)nb, a.part, a.lpart, denom, s.grads, s.p, s.m, s.v, s.hp, s.sv, s.tab,
        s.slot);
    else if (s.train)
      k_net_reduce<R_ZERO><<<grid(nd->nparams), THREADS, 0, s.st>>>(
        nd->nparams, (int)nb, a.part, a.lpart, denom, s.grads, nullptr, nullptr, nullptr, s.hp, s.sv,
        s.tab, s.slot);
    else
      k_net_reduce<R_ACC><<<grid(nd->nparams), THREADS, 0, s.st>>>(
        nd->nparams, (int)nb, a.part, a.lpart, denom, s.grads, nullptr, nullptr, nullptr, s.hp, s.sv,
        s.tab, s.slot);
    LAUNCHED(s.op);
    if (s.train) TRY(step_update(s, nd->nparams, plain));
    return DF_OK;
  }
  Ctx c = ctx_of(s.op, s.dev, nd, s.params, s.fixed, s.ws, B);
  c.st = s.st;
  float *ws = s.ws;
  float *x = ws + c.y.xin, *t = nd->kind == DF_NET_MLP ? ws + c.y.xin + d : ws + c.y.tin;
  int64_t ldx = nd->kind == DF_NET_MLP ? d + 1 : d, ldt = nd->kind == DF_NET_MLP ? d + 1 : 1;
  float *eta = ws + c.y.eta, *x0 = s.job->output == DF_OUT_DENOISER ? ws + c.y.x0 : nullptr;
  if (s.train) /* zero_grad: the SGEMMs and k_param_grad add to the gradients */
    CK(s.op, "cudaMemsetAsync of the gradients",
       cudaMemsetAsync(s.grads, 0, (size_t)nd->nparams * sizeof(float), s.st));
  float *out = nd->kind == DF_NET_MLP ? ws + c.y.z[nd->nlin - 1] : ws + c.y.out;
  double *lpart = (double *)(ws + c.y.lpart);
  int st = DF_OK;
  k_dsm_draw<<<grid(B), THREADS, 0, s.st>>>(*s.job, s.sv, s.tab, s.slot, d, x, ldx, t, ldt, eta, x0);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) st = df_cuda_error(s.op, "kernel launch", e);
  if (!st) st = layered_forward(c, NULL, NULL, 0.0f, true, out);
  if (!st) st = dsm_loss(s, out, eta, x0, t, ldt, ws + c.y.d1, lpart);
  if (!st) st = layered_backward(c, x, ws + c.y.d1, s.grads);
  if (!st && s.train) st = step_update(s, nd->nparams, false);
  blas_off(c.blas);
  return st;
}

/* ---- training graphs -------------------------------------------------------------------------- */

/* what a captured graph bakes in: equal keys replay the same graph */
struct GraphKey {
  int dev;
  df_netdesc nd;
  const float *params, *fixed, *data;
  float *grads, *m, *v, *ws;
  int64_t data_rows, batch;
  int sample, nstreams, output, weighting;
  float tol, b1, b2, eps, wd, clip, ema_decay;
  float *ema;
  df_diffuser diff;
};

struct GraphEntry {
  bool used;
  bool failed;          /* capturing failed: run the steps without graphs */
  GraphKey key;
  cudaGraphExec_t g[2]; /* GRAPH_STEPS steps, 1 step */
  StepTab *tab;
  uint64_t stamp;
};

GraphEntry graphs[GRAPH_CACHE];
uint64_t graph_clock;
df_cuda_graphstats gstats;
cudaStream_t cap_stream[DF_CUDA_MAXDEV];

bool same_desc(const df_netdesc &a, const df_netdesc &b)
{
  if (a.graph != b.graph || a.kind != b.kind || a.dim != b.dim || a.act != b.act || a.nlin != b.nlin ||
      a.embed != b.embed || a.nparams != b.nparams || a.nfixed != b.nfixed || a.maxw != b.maxw)
    return false;
  for (int l = 0; l < a.nlin && l < DF_MAXLIN; l++)
    if (a.in[l] != b.in[l] || a.out[l] != b.out[l] || a.woff[l] != b.woff[l] ||
        a.boff[l] != b.boff[l])
      return false;
  return true;
}

bool same_key(const GraphKey &a, const GraphKey &b)
{
  return a.dev == b.dev && same_desc(a.nd, b.nd) && a.params == b.params && a.fixed == b.fixed &&
         a.data == b.data && a.grads == b.grads && a.m == b.m && a.v == b.v && a.ws == b.ws &&
         a.data_rows == b.data_rows && a.batch == b.batch && a.sample == b.sample &&
         a.nstreams == b.nstreams && memcmp(&a.tol, &b.tol, sizeof a.tol) == 0 &&
         memcmp(&a.b1, &b.b1, sizeof a.b1) == 0 && memcmp(&a.b2, &b.b2, sizeof a.b2) == 0 &&
         memcmp(&a.eps, &b.eps, sizeof a.eps) == 0 && memcmp(&a.wd, &b.wd, sizeof a.wd) == 0 &&
         a.output == b.output && a.weighting == b.weighting && a.ema == b.ema &&
         memcmp(&a.clip, &b.clip, sizeof a.clip) == 0 &&
         memcmp(&a.ema_decay, &b.ema_decay, sizeof a.ema_decay) == 0 &&
         a.diff.kind == b.diff.kind && memcmp(&a.diff.kappa, &b.diff.kappa, sizeof(double)) == 0 &&
         memcmp(&a.diff.alpha, &b.diff.alpha, sizeof(double)) == 0 &&
         memcmp(&a.diff.lnk, &b.diff.lnk, sizeof(double)) == 0;
}

void drop_entry(GraphEntry &e)
{
  if (!e.used) return;
  for (int i = 0; i < 2; i++)
    if (e.g[i]) (void)cudaGraphExecDestroy(e.g[i]);
  if (e.tab) df_cuda_free(e.key.dev, e.tab);
  memset(&e, 0, sizeof e);
}

/* capture `steps` training steps (each reading entry cursor + k of tab) and the cursor's
   advance, and instantiate them */
int capture(const StepCall &proto, int steps, StepTab *tab, cudaGraphExec_t *out)
{
  const char *op = proto.op;
  cudaStream_t cs = cap_stream[proto.dev];
  *out = NULL;
  CK(op, "cudaStreamBeginCapture",
     cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal));
  int st = DF_OK;
  for (int k = 0; k < steps && !st; k++) {
    StepCall s = proto;
    s.st = cs;
    s.tab = tab;
    s.slot = k;
    st = dsm_run(s);
  }
  if (!st) {
    k_advance<<<1, 1, 0, cs>>>(tab, steps);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) st = df_cuda_error(op, "kernel launch (graph capture)", e);
  }
  cudaGraph_t g = NULL;
  cudaError_t e = cudaStreamEndCapture(cs, &g);
  if (!st && e != cudaSuccess) st = df_cuda_error(op, "cudaStreamEndCapture", e);
  if (!st) {
    e = cudaGraphInstantiate(out, g, 0);
    if (e != cudaSuccess) {
      *out = NULL;
      st = df_cuda_error(op, "cudaGraphInstantiate", e);
    }
  }
  if (g) (void)cudaGraphDestroy(g);
  if (st) (void)cudaGetLastError();
  if (!st) gstats.captures++;
  return st;
}

/* the steps of a chunk without graphs: the same kernels, launched one step at a time */
int plain_steps(const StepCall &proto, const df_train_job *job, float *losses)
{
  const uint64_t ns = (uint64_t)job->nstreams;
  for (int64_t j = 0; j < job->steps; j++) {
    StepCall s = proto;
    s.st = 0;
    s.tab = NULL;
    s.slot = 0;
    s.sv.seed = job->dsm.seed;
    s.sv.st_idx = job->dsm.st_idx + (uint64_t)j * ns;
    s.sv.st_t = job->dsm.st_t + (uint64_t)j * ns;
    s.sv.st_eta = job->dsm.st_eta + (uint64_t)j * ns;
    s.sv.step = s.hp.step = job->step_size[j];
    s.sv.sqrt_bc2 = s.hp.sqrt_bc2 = job->sqrt_bc2[j];
    s.sv.loss = losses + j;
    TRY(dsm_run(s));
    gstats.fallback_steps++;
  }
  return DF_OK;
}

/* ---- a whole sampler run with the network score (net_sample) --------------------------------- */

/* One thread per row through all the steps, the row in registers: the per-row arithmetic of
   cpu_net_sample (the forward in the CPU's order, one df_fmaf per product; out * 1/sigma; the
   update rules and noise indices of dmath.h), hence bitwise its result. Networks up to
   SAMPLE_MAXW wide; wider ones decline and are stepped through net_forward. */
const int SAMPLE_MAXW = 16;

struct SampleArgs {
  df_netdesc nd;
  const float *params;
  float *x;               /* [rows, dim], in place */
  int64_t rows, n, steps; /* n = rows * dim */
  int method;
  const float *c1, *c2;   /* [steps] */
  const float *tk, *inv;  /* [steps + 1]: the evaluation times and 1 / sigma(t_k) */
  const float *etab;      /* time-embedded: the time branch, [steps][H] */
  int nrec;
  const int64_t *rec_k;   /* [nrec] */
  float *const *rec_out;  /* [nrec] device pointers */
  uint64_t seed, stream;
  int denoise;            /* a denoiser's output: (out - x) * inv (the plan's) */
};

/* the score of one row at step k: out = net(x, t_k), times the plan's factor (out - x first for
   a denoiser) */
template <int WMAX>
__device__ __forceinline__ void row_score(const SampleArgs &a, const float *x, int64_t k,
                                          float *s)
{
  const df_netdesc &nd = a.nd;
  const int d = nd.dim, act = nd.act;
  float out[WMAX];
  if (nd.kind == DF_NET_MLP) {
    float h[WMAX], z[WMAX];
#pragma unroll
    for (int c = 0; c < WMAX; c++) h[c] = c < d ? x[c] : (c == d ? a.tk[k] : 0.0f);
    for (int l = 0; l < nd.nlin; l++) {
      const int O = nd.out[l];
      row_linear<WMAX>(z, a.params + nd.woff[l], a.params + nd.boff[l], h, nd.in[l], O);
      if (l + 1 < nd.nlin) {
#pragma unroll
        for (int o = 0; o < WMAX; o++) {
          float aux;
          h[o] = o < O ? act_f<WMAX>(act, z[o], &aux) : 0.0f;
        }
      }
    }
#pragma unroll
    for (int c = 0; c < WMAX; c++) out[c] = z[c];
  } else {
    const int H = nd.out[0];
    const float *W1 = a.params + nd.woff[1], *B1 = a.params + nd.boff[1];
    const float *W2 = a.params + nd.woff[2], *B2 = a.params + nd.boff[2];
    const float *e = a.etab + k * H;
    float u[WMAX], hh[WMAX];
    row_linear<WMAX>(u, W1, B1, x, d, H);
#pragma unroll
    for (int o = 0; o < WMAX; o++) {
      float aux;
      hh[o] = o < H ? act_f<WMAX>(act, __ldg(e + o) + u[o], &aux) : 0.0f;
    }
    row_linear<WMAX>(out, W2, B2, hh, H, d);
  }
  const float inv = a.inv[k];
#pragma unroll
  for (int c = 0; c < WMAX; c++) s[c] = a.denoise ? (out[c] - x[c]) * inv : out[c] * inv;
}

template <int WMAX, int METHOD> __global__ void k_net_sample(const SampleArgs a)
{
  const int d = a.nd.dim;
  for (int64_t row = df_gtid(); row < a.rows; row += df_gstride()) {
    float x[WMAX], s[WMAX];
#pragma unroll
    for (int c = 0; c < WMAX; c++) x[c] = c < d ? a.x[row * d + c] : 0.0f;
    for (int64_t k = 0; k <= a.steps; k++) {
      for (int r = 0; r < a.nrec; r++)
        if (a.rec_k[r] == k) {
#pragma unroll
          for (int c = 0; c < WMAX; c++)
            if (c < d) a.rec_out[r][row * d + c] = x[c];
        }
      if (k == a.steps) break;
      const float c1 = a.c1[k], c2 = a.c2[k];
      row_score<WMAX>(a, x, k, s);
      if (METHOD == DF_EULER || (METHOD == DF_HEUN && k == a.steps - 1)) {
#pragma unroll
        for (int c = 0; c < WMAX; c++) x[c] = df_step_euler(x[c], s[c], c1);
      } else if (METHOD == DF_EULER_MARUYAMA) {
#pragma unroll
        for (int c = 0; c < WMAX; c++)
          if (c < d) {
            uint64_t e = (uint64_t)(row * d + c);
            float z = df_randn_at(a.seed, a.stream, df_noise_index(e, (uint64_t)k, (uint64_t)a.n));
            x[c] = df_step_em(x[c], s[c], c1, c2, z);
          }
      } else {
        float xp[WMAX], s2[WMAX];
#pragma unroll
        for (int c = 0; c < WMAX; c++) xp[c] = df_step_euler(x[c], s[c], c1);
        row_score<WMAX>(a, xp, k + 1, s2);
#pragma unroll
        for (int c = 0; c < WMAX; c++) x[c] = df_step_heun(x[c], s[c], s2[c], c1, c2);
      }
    }
#pragma unroll
    for (int c = 0; c < WMAX; c++)
      if (c < d) a.x[row * d + c] = x[c];
  }
}

/* the time-embedded net's time branch at t_0 .. t_(steps - 1), one (step, unit) per thread: the
   Fourier features in the CPU's order (sines, then cosines), Linear(embed, H) bias first, then
   the activation (cpu_net_sample's table, statement for statement) */
__global__ void k_time_branch(float *etab, const float *params, const float *fixed,
                              const df_netdesc nd, const float *tk, int64_t steps)
{
  const int H = nd.out[0], E = nd.embed, half = E / 2;
  const float *W0 = params + nd.woff[0], *B0 = params + nd.boff[0];
  for (int64_t j = df_gtid(); j < steps * H; j += df_gstride()) {
    const int64_t k = j / H;
    const int o = (int)(j - k * H);
    const float t = tk[k];
    float acc = __ldg(B0 + o);
    for (int i = 0; i < E; i++) {
      float sn, cs;
      df_fourier(t, __ldg(fixed + (i < half ? i : i - half)), &sn, &cs);
      acc = df_fmaf(__ldg(W0 + (int64_t)o * E + i), i < half ? sn : cs, acc);
    }
    float aux;
    etab[j] = df_act_fwd(nd.act, acc, &aux);
  }
}

template <int WMAX> void net_sample_launch(const SampleArgs &a, unsigned grid)
{
  switch (a.method) {
  case DF_EULER: k_net_sample<WMAX, DF_EULER><<<grid, THREADS>>>(a); break;
  case DF_EULER_MARUYAMA: k_net_sample<WMAX, DF_EULER_MARUYAMA><<<grid, THREADS>>>(a); break;
  default: k_net_sample<WMAX, DF_HEUN><<<grid, THREADS>>>(a); break;
  }
}


} // namespace

int df_cuda_blas_on(const char *op, int dev, cudaStream_t st, cublasHandle_t *h)
{
  return blas_on(op, dev, st, h);
}
void df_cuda_blas_off(cublasHandle_t h) { blas_off(h); }

/* ---- the table's functions ------------------------------------------------------------------ */

int64_t cuda_net_workspace(const df_netdesc *nd, int64_t rows)
{
  if (rows < 1) rows = 1;
  if (nd->kind == DF_NET_GRAPH) return df_cuda_graph_layout(nd->graph, rows).total;
  int64_t layered = layered_of(nd, rows).total;
  if (plan_of(nd).fused) { /* (a DSM step of another loss than the seed's runs layered) */
    int64_t nb = fused_blocks(rows), fused = 2 * nb + nb * nd->nparams + 4; /* + the norm */
    return fused > layered ? fused : layered;
  }
  return layered;
}

namespace {
/* a traced network's inputs into its x and t buffers */
__global__ void k_graph_in(float *xb, float *tb, const float *x, const float *t, float t0,
                           int64_t rows, int d)
{
  for (int64_t j = df_gtid(); j < rows * (d + 1); j += df_gstride()) {
    if (j < rows * d) xb[j] = x[j];
    else tb[j - rows * d] = t ? t[j - rows * d] : t0;
  }
}

/* x and t into a graph's frame, then its forward (the caller releases *blas) */
int graph_forward_of(const char *op, int dev, const df_netdesc *nd, const float *params, const float *fixed,
                     const float *x, const float *t, float t0, int64_t rows, float *ws, cublasHandle_t *blas)
{
  const df_graph *g = nd->graph;
  k_graph_in<<<grid(rows * (nd->dim + 1)), THREADS>>>(df_cuda_graph_val(g, ws, rows, 0),
                                                      df_cuda_graph_val(g, ws, rows, 1), x, t, t0,
                                                      rows, nd->dim);
  LAUNCHED(op);
  return df_cuda_graph_forward(op, dev, 0, blas, g, params, fixed, ws, rows);
}
} // namespace

/* a graph's forward frame (cuda_graph.cu's layout), then a tangent frame of the same size */
int64_t cuda_net_jvp_workspace(const df_netdesc *nd, int64_t rows)
{
  if (rows < 1) rows = 1;
  if (nd->kind != DF_NET_GRAPH) return 0;
  return df_cuda_graph_layout(nd->graph, rows).total + rows * nd->graph->frame;
}

/* out[j] = J v[j]: one forward, then per direction x's tangent into the tangent frame, the
   tangents node by node, and the output's tangent out (as cpu_net_jvp, the same roundings) */
int cuda_net_jvp(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                 const float *x, const float *t, float t0, int64_t rows, int nv,
                 const float *const *v, float *const *out, float *ws)
{
  const char *op = "net_jvp";
  if (nd->kind != DF_NET_GRAPH) return df_cuda_fail(DF_EARG, "cuda %s takes a graph's description", op);
  if (rows <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  const df_graph *g = nd->graph;
  const size_t bytes = (size_t)(rows * nd->dim) * sizeof(float);
  float *tf = ws + df_cuda_graph_layout(g, rows).total;
  cublasHandle_t blas = NULL;
  int st = graph_forward_of(op, dev, nd, params, fixed, x, t, t0, rows, ws, &blas);
  for (int j = 0; j < nv && !st; j++) {
    cudaError_t e = cudaMemcpyAsync(tf + g->nodes[0].val * rows, v[j], bytes, cudaMemcpyDeviceToDevice, 0);
    if (e != cudaSuccess) { st = df_cuda_error(op, "cudaMemcpy of a direction", e); break; }
    if ((st = df_cuda_graph_tangent(op, dev, 0, &blas, g, params, fixed, ws, tf, rows))) break;
    e = cudaMemcpyAsync(out[j], tf + g->nodes[g->out].val * rows, bytes, cudaMemcpyDeviceToDevice, 0);
    if (e != cudaSuccess) st = df_cuda_error(op, "cudaMemcpy of a Jacobian-vector product", e);
  }
  blas_off(blas);
  return st;
}

int cuda_net_forward(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                     const float *x, const float *t, float t0, int64_t rows, float *out,
                     float *ws, int keep)
{
  const char *op = "net_forward";
  (void)keep; /* the fused backward recomputes; the layered forward always leaves its buffers */
  if (rows <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  if (nd->kind == DF_NET_GRAPH) {
    const df_graph *g = nd->graph;
    cublasHandle_t blas = NULL;
    int st = graph_forward_of(op, dev, nd, params, fixed, x, t, t0, rows, ws, &blas);
    blas_off(blas);
    if (st) return st;
    CK(op, "cudaMemcpy of the output",
       cudaMemcpyAsync(out, df_cuda_graph_val(g, ws, rows, g->out),
                       (size_t)(rows * nd->dim) * sizeof(float), cudaMemcpyDeviceToDevice, 0));
    return DF_OK;
  }
  const Plan pl = plan_of(nd);
  if (pl.fused) {
    NetArgs a = net_args(pl, nd, params, fixed, rows, ws);
    a.x = x;
    a.t = t;
    a.t0 = t0;
    a.out = out;
    int64_t nt = ntiles_of(rows);
    TRY(fused_launch(M_FWD, pl, a, (unsigned)(nt < DF_CUDA_MAX_BLOCKS ? nt : DF_CUDA_MAX_BLOCKS), 0));
    LAUNCHED(op);
    return DF_OK;
  }
  Ctx c = ctx_of(op, dev, nd, params, fixed, ws, rows);
  int st = layered_forward(c, x, t, t0, false, out);
  blas_off(c.blas);
  return st;
}

int cuda_net_sample(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                    const df_plan *p, float *x, int64_t rows, int nrec, const int64_t *rec_k,
                    float *const *rec_out, uint64_t seed, uint64_t stream, float *ws, int *done)
{
  const char *op = "net_sample";
  (void)ws;
  *done = 0;
  if (nd->kind == DF_NET_GRAPH) return DF_OK; /* stepped through net_forward (one kernel a node) */
  const int widest = nd->kind == DF_NET_MLP ? nd->maxw
                                            : (nd->out[0] > nd->dim ? nd->out[0] : nd->dim);
  if (widest > SAMPLE_MAXW) return DF_OK; /* stepped through net_forward instead */
  /* a time-embedded net too big for the fused forward (a large embed) runs its time layer
     through cuBLAS, in cuBLAS's order: stepping through net_forward keeps this run bitwise that
     of the step-by-step one (backend.h), where this kernel would sum in the CPU's order */
  if (nd->kind == DF_NET_TEMB && !plan_of(nd).fused) return DF_OK;
  if (p->method != DF_EULER && p->method != DF_EULER_MARUYAMA && p->method != DF_HEUN)
    return df_cuda_fail(DF_EARG, "cuda %s: unknown method %d", op, p->method);
  if (p->steps < 1 || nrec < 0) return df_cuda_fail(DF_EARG, "cuda %s: bad plan", op);
  *done = 1;
  if (rows <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  /* one device block: c1, c2 [steps], tk, inv [steps + 1], the time branch [steps * H] (time-
     embedded), then (8-byte aligned) the record steps and their output pointers */
  const int64_t steps = p->steps, H = nd->kind == DF_NET_TEMB ? nd->out[0] : 0;
  const int64_t nf = 4 * steps + 2 + steps * H, fl = (nf + 1) / 2 * 2;
  size_t bytes = (size_t)fl * sizeof(float) + (size_t)nrec * (sizeof(int64_t) + sizeof(float *));
  char *host = (char *)malloc(bytes);
  if (!host)
    return df_cuda_fail(DF_ENOMEM, "cuda %s: out of host memory for %lld steps", op,
                        (long long)steps);
  float *ft = (float *)host;
  memcpy(ft, p->c1, (size_t)steps * sizeof(float));
  memcpy(ft + steps, p->c2, (size_t)steps * sizeof(float));
  memcpy(ft + 2 * steps, p->t, (size_t)(steps + 1) * sizeof(float));
  memcpy(ft + 3 * steps + 1, p->inv_sigma, (size_t)(steps + 1) * sizeof(float));
  int64_t *hk = (int64_t *)(host + (size_t)fl * sizeof(float));
  float **hp = (float **)(hk + nrec);
  for (int r = 0; r < nrec; r++) {
    hk[r] = rec_k[r];
    hp[r] = rec_out[r];
  }
  void *dbuf = NULL;
  int st = df_cuda_upload(op, dev, host, bytes, &dbuf);
  if (st) return st;
  const float *dt = (const float *)dbuf;
  SampleArgs a;
  memset(&a, 0, sizeof a);
  a.nd = *nd;
  a.params = params;
  a.x = x;
  a.rows = rows;
  a.n = rows * nd->dim;
  a.steps = steps;
  a.method = p->method;
  a.c1 = dt;
  a.c2 = dt + steps;
  a.tk = dt + 2 * steps;
  a.inv = dt + 3 * steps + 1;
  a.nrec = nrec;
  a.rec_k = (const int64_t *)((const char *)dbuf + (size_t)fl * sizeof(float));
  a.rec_out = (float *const *)(a.rec_k + nrec);
  a.seed = seed;
  a.stream = stream;
  a.denoise = p->denoise;
  if (H > 0) {
    float *etab = (float *)dbuf + 4 * steps + 2;
    k_time_branch<<<df_cuda_grid(steps * H, THREADS), THREADS>>>(etab, params, fixed, *nd, a.tk,
                                                                steps);
    a.etab = etab;
  }
  const unsigned grid = df_cuda_grid(rows, THREADS);
  if (widest <= 8) net_sample_launch<8>(a, grid);
  else net_sample_launch<SAMPLE_MAXW>(a, grid);
  cudaError_t e = cudaGetLastError();
  df_cuda_free(dev, dbuf); /* the legacy stream orders any reuse after the kernels */
  if (e != cudaSuccess) return df_cuda_error(op, "kernel launch", e);
  return DF_OK;
}

int cuda_net_backward(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                      const float *x, const float *t, float t0, int64_t rows, const float *dout,
                      float *grads, float *ws)
{
  const char *op = "net_backward";
  if (rows <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  if (nd->kind == DF_NET_GRAPH) { /* from the buffers the kept forward left */
    cublasHandle_t blas = NULL;
    (void)x; (void)t; (void)t0;
    int st = df_cuda_graph_backward(op, dev, 0, &blas, nd->graph, params, fixed, ws, rows, dout, grads);
    blas_off(blas);
    return st;
  }
  const Plan pl = plan_of(nd);
  if (pl.fused) {
    NetArgs a = net_args(pl, nd, params, fixed, rows, ws);
    a.x = x;
    a.t = t;
    a.t0 = t0;
    a.dout = dout;
    const int64_t nb = fused_blocks(rows);
    TRY(fused_launch(M_BWD, pl, a, (unsigned)nb, 0));
    LAUNCHED(op);
    df_adam_hp hp;
    memset(&hp, 0, sizeof hp);
    StepVals sv;
    memset(&sv, 0, sizeof sv);
    k_net_reduce<R_ACC><<<grid(nd->nparams), THREADS>>>(nd->nparams, (int)nb, a.part, nullptr, 1.0,
                                                       grads, nullptr, nullptr, nullptr, hp, sv, nullptr, 0);
    LAUNCHED(op);
    return DF_OK;
  }
  Ctx c = ctx_of(op, dev, nd, params, fixed, ws, rows);
  (void)t;
  (void)t0;
  int st = layered_backward(c, x, dout, grads);
  blas_off(c.blas);
  return st;
}

int cuda_dsm_step(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                  float *grads, const df_dsm *job, float *loss, float *ws)
{
  const char *op = "dsm_step";
  if (job->batch < 1) return df_cuda_fail(DF_EARG, "cuda %s: the batch is empty", op);
  if (job->data_rows < 1) return df_cuda_fail(DF_EARG, "cuda %s: the data has no rows", op);
  TRY(df_cuda_use_device(op, dev));
  StepCall s;
  memset(&s, 0, sizeof s);
  s.op = op;
  s.dev = dev;
  s.st = 0;
  s.nd = nd;
  s.params = params;
  s.fixed = fixed;
  s.grads = grads;
  s.ws = ws;
  s.job = job;
  s.sv.seed = job->seed;
  s.sv.st_idx = job->st_idx;
  s.sv.st_t = job->st_t;
  s.sv.st_eta = job->st_eta;
  s.sv.loss = loss;
  return dsm_run(s);
}

int cuda_adam(int dev, float *p, const float *g, float *m, float *v, int64_t n,
              const df_adam_hp *hp)
{
  const char *op = "adam";
  if (n <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  k_adam<<<grid(n), THREADS>>>(p, (float *)g, m, v, n, *hp, nullptr, 0, nullptr, 0.0f);
  LAUNCHED(op);
  return DF_OK;
}

int cuda_train_steps(int dev, const df_netdesc *nd, float *params, const float *fixed,
                     float *grads, float *m, float *v, const df_train_job *job, float *losses,
                     float *ws)
{
  const char *op = "train_steps";
  if (job->steps <= 0) return DF_OK;
  if (job->dsm.batch < 1) return df_cuda_fail(DF_EARG, "cuda %s: the batch is empty", op);
  if (job->dsm.data_rows < 1) return df_cuda_fail(DF_EARG, "cuda %s: the data has no rows", op);
  if (job->nstreams < 1) return df_cuda_fail(DF_EARG, "cuda %s: bad stream count", op);
  TRY(df_cuda_use_device(op, dev));

  GraphKey key;
  memset(&key, 0, sizeof key);
  key.dev = dev;
  key.nd = *nd;
  key.params = params;
  key.fixed = fixed;
  key.data = job->dsm.data;
  key.grads = grads;
  key.m = m;
  key.v = v;
  key.ws = ws;
  key.data_rows = job->dsm.data_rows;
  key.batch = job->dsm.batch;
  key.sample = job->dsm.sample;
  key.nstreams = job->nstreams;
  key.tol = job->dsm.tol;
  key.b1 = job->b1;
  key.b2 = job->b2;
  key.eps = job->eps;
  key.wd = job->wd;
  key.output = job->dsm.output;
  key.weighting = job->dsm.weighting;
  key.clip = job->clip;
  key.ema = job->ema;
  key.ema_decay = job->ema_decay;
  key.diff = job->dsm.diff;

  StepCall s;
  memset(&s, 0, sizeof s);
  s.op = op;
  s.dev = dev;
  s.nd = nd;
  s.params = params;
  s.fixed = fixed;
  s.grads = grads;
  s.ws = ws;
  s.job = &job->dsm;
  s.train = true;
  s.p = params;
  s.m = m;
  s.v = v;
  s.hp.b1 = job->b1;
  s.hp.b2 = job->b2;
  s.hp.eps = job->eps;
  s.hp.wd = job->wd;
  s.clip = job->clip;
  s.ema = job->ema;
  s.ema_decay = job->ema_decay;

  GraphEntry *ent = NULL;
  for (int i = 0; i < GRAPH_CACHE; i++)
    if (graphs[i].used && same_key(graphs[i].key, key)) ent = &graphs[i];
  if (!ent) {
    /* a new configuration: the least recently used slot, captured afresh */
    ent = &graphs[0];
    for (int i = 0; i < GRAPH_CACHE; i++) {
      if (!graphs[i].used) { ent = &graphs[i]; break; }
      if (graphs[i].stamp < ent->stamp) ent = &graphs[i];
    }
    drop_entry(*ent);
    if (!cap_stream[dev])
      CK(op, "cudaStreamCreateWithFlags",
         cudaStreamCreateWithFlags(&cap_stream[dev], cudaStreamNonBlocking));
    void *tb = NULL;
    TRY(df_cuda_malloc(dev, sizeof(StepTab), &tb));
    ent->used = true;
    ent->key = key;
    ent->tab = (StepTab *)tb;
    if (!plan_of(nd).fused) { /* cuBLAS's handle and workspace exist before the capture */
      cublasHandle_t h = NULL;
      int st = blas_on(op, dev, 0, &h);
      blas_off(h);
      if (st) {
        drop_entry(*ent);
        return st;
      }
    }
    int st = capture(s, GRAPH_STEPS, ent->tab, &ent->g[0]);
    if (!st) st = capture(s, 1, ent->tab, &ent->g[1]);
    if (st) { /* never fatal: the same kernels run without a graph, now and for this key */
      snprintf(gstats.last_failure, sizeof gstats.last_failure, "%s", df_cuda_last_error());
      for (int i = 0; i < 2; i++)
        if (ent->g[i]) (void)cudaGraphExecDestroy(ent->g[i]);
      ent->g[0] = ent->g[1] = NULL;
      ent->failed = true;
    }
  }
  ent->stamp = ++graph_clock;
  if (ent->failed) return plain_steps(s, job, losses);

  /* the chunk in table-sized pieces: upload the piece's per-step values (cursor 0), then replay */
  static StepTab host;
  const int ns = job->nstreams;
  for (int64_t j0 = 0; j0 < job->steps; j0 += TAB_STEPS) {
    const int len = (int)(job->steps - j0 < TAB_STEPS ? job->steps - j0 : TAB_STEPS);
    host.cursor = 0;
    host.pad = 0;
    for (int j = 0; j < len; j++) {
      const uint64_t k = (uint64_t)(j0 + j) * (uint64_t)ns; /* step j's streams: + j nstreams */
      StepVals &e = host.e[j];
      e.seed = job->dsm.seed;
      e.st_idx = job->dsm.st_idx + k;
      e.st_t = job->dsm.st_t + k;
      e.st_eta = job->dsm.st_eta + k;
      e.step = job->step_size[j0 + j];
      e.sqrt_bc2 = job->sqrt_bc2[j0 + j];
      e.loss = losses + j0 + j;
    }
    size_t bytes = offsetof(StepTab, e) + (size_t)len * sizeof(StepVals);
    CK(op, "cudaMemcpy of the step table", cudaMemcpy(ent->tab, &host, bytes, cudaMemcpyHostToDevice));
    int j = 0;
    for (; j + GRAPH_STEPS <= len; j += GRAPH_STEPS, gstats.launches++)
      CK(op, "cudaGraphLaunch", cudaGraphLaunch(ent->g[0], 0));
    for (; j < len; j++, gstats.launches++)
      CK(op, "cudaGraphLaunch", cudaGraphLaunch(ent->g[1], 0));
  }
  return DF_OK;
}

void df_cuda_graph_stats(df_cuda_graphstats *st) { *st = gstats; }

int cuda_ema(int dev, float *e, const float *p, int64_t n, float decay)
{
  const char *op = "ema";
  if (n <= 0) return DF_OK;
  TRY(df_cuda_use_device(op, dev));
  k_ema<<<grid(n), THREADS>>>(e, p, n, decay);
  LAUNCHED(op);
  return DF_OK;
}
