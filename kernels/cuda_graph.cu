/* cuda_graph.cu: traced networks (native/graph.h) on the GPU: one kernel per node over the whole
 * batch, each node's buffers row-major [rows, width] at the feature offsets the parse laid out
 * (offset * rows floats into the frame), a Linear's products in cuBLAS when it is wide (as the
 * layered path of cuda_nn.cu) and in small kernels that sum in the CPU's order when narrow.
 * The backward zeroes the frame's gradient buffers once and accumulates into them, so a node
 * with several consumers needs no bookkeeping. cuda_nn.cu drives these for forward, backward, the
 * DSM step and the captured training graphs, exactly as for the seed's nets. Per-row arithmetic
 * is dmath.h's, as on the CPU; sums over rows (parameter gradients) run in fixed orders. */
#include <stddef.h>
#include <string.h>
#include "cuda_internal.h"
#include "cuda_layers.h"
#include "graph.h"

namespace {

const int THREADS = DF_CUDA_THREADS;
const int GEMM_MIN_WIDTH = 64;              /* layers this wide (in or out) go to cuBLAS */

unsigned grid(int64_t n) { return df_cuda_grid(n, THREADS); }

/* ---- forward ------------------------------------------------------------------------------- */

/* columns [off, off + wa) of out [rows, W] = a [rows, wa] */
__global__ void k_g_cat(float *out, int W, int off, const float *a, int wa, int64_t rows)
{
  for (int64_t j = df_gtid(); j < rows * wa; j += df_gstride()) {
    int64_t r = j / wa;
    out[r * W + off + (j - r * wa)] = a[j];
  }
}

/* out [rows, w] = a op b, a width of 1 broadcasting */
__global__ void k_g_bin(int op, float *out, const float *a, int wa, const float *b, int wb, int w,
                        int64_t rows)
{
  for (int64_t j = df_gtid(); j < rows * w; j += df_gstride()) {
    int64_t r = j / w;
    int c = (int)(j - r * w);
    float x = a[r * wa + (wa == 1 ? 0 : c)], y = b[r * wb + (wb == 1 ? 0 : c)];
    out[j] = op == DF_G_ADD ? x + y : op == DF_G_SUB ? x - y : x * y;
  }
}

__global__ void k_g_scal(int op, float *out, const float *a, float c, int64_t n)
{
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) {
    float x = a[i];
    out[i] = op == DF_G_ADDC ? x + c : op == DF_G_MULC ? x * c : op == DF_G_RSUBC ? c - x : x / c;
  }
}

/* value and (silu, tanh, gelu: the activation's aux; sin, cos: the other of the pair) aux */
__global__ void k_g_unary(int op, float *out, float *aux, const float *a, int64_t n)
{
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) {
    float x = a[i], v, u = 0.0f;
    switch (op) {
    case DF_G_SILU: v = df_act_fwd(DF_ACT_SILU, x, &u); break;
    case DF_G_TANH: v = df_act_fwd(DF_ACT_TANH, x, &u); break;
    case DF_G_GELU: v = df_act_fwd(DF_ACT_GELU, x, &u); break;
    case DF_G_RELU: v = df_reluf(x); break;
    case DF_G_SIGMOID: v = df_sigmoidf(x); break;
    case DF_G_SIN: df_sincosf(x, &v, &u); break;
    case DF_G_COS: df_sincosf(x, &u, &v); break;
    case DF_G_EXP: v = df_expf(x); break;
    default: v = x * x; break; /* square */
    }
    out[i] = v;
    if (aux) aux[i] = u;
  }
}

/* [sin k w_j u, cos k w_j u] of u [rows, 1], k = 2 pi (df_fourier) or 1 */
__global__ void k_g_fourier(float *out, const float *u, const float *w, int nf, int gauss,
                            int64_t rows)
{
  for (int64_t j = df_gtid(); j < rows * nf; j += df_gstride()) {
    int64_t r = j / nf;
    int q = (int)(j - r * nf);
    float s, c;
    if (gauss) df_fourier(u[r], w[q], &s, &c);
    else df_sincosf_short(u[r] * w[q], &s, &c);
    out[r * 2 * nf + q] = s;
    out[r * 2 * nf + nf + q] = c;
  }
}

/* out [rows, 1] = the mean of a's wa columns (MEAN, summed in column order as on the CPU), or
   column col (COL) */
__global__ void k_g_reduce(int op, float *out, const float *a, int wa, int col, int64_t rows)
{
  for (int64_t r = df_gtid(); r < rows; r += df_gstride()) {
    if (op == DF_G_COL) {
      out[r] = a[r * wa + col];
      continue;
    }
    float acc = 0.0f;
    for (int c = 0; c < wa; c++) acc += a[r * wa + c];
    out[r] = acc * (1.0f / (float)wa);
  }
}

/* ---- backward (every gradient buffer accumulates: +=) ---------------------------------------- */

/* ga [rows, wa] += g / wa (MEAN) or g into column col (COL), for g [rows, 1] */
__global__ void k_g_reduce_bwd(int op, float *ga, const float *g, int wa, int col, int64_t rows)
{
  const float inv = 1.0f / (float)wa;
  for (int64_t j = df_gtid(); j < rows * wa; j += df_gstride()) {
    int64_t r = j / wa;
    if (op == DF_G_MEAN) ga[j] += g[r] * inv;
    else if ((int)(j - r * wa) == col) ga[j] += g[r];
  }
}

/* ga [rows, wa] += columns [off, off + wa) of g [rows, W] */
__global__ void k_g_cat_bwd(float *ga, const float *g, int W, int off, int wa, int64_t rows)
{
  for (int64_t j = df_gtid(); j < rows * wa; j += df_gstride()) {
    int64_t r = j / wa;
    ga[j] += g[r * W + off + (j - r * wa)];
  }
}

/* an operand's share of a broadcast op's gradient g [rows, w]: gx [rows, wx] += sign g (times m,
   the other operand, for MUL), summed over the columns in order when x broadcast (wx = 1 < w) */
__global__ void k_g_bin_bwd(float *gx, int wx, const float *g, int w, const float *m, int wm,
                            float sign, int64_t rows)
{
  for (int64_t j = df_gtid(); j < rows * wx; j += df_gstride()) {
    int64_t r = j / wx;
    int c0 = (int)(j - r * wx);
    float acc = 0.0f;
    for (int c = (wx == w ? c0 : 0); c < (wx == w ? c0 + 1 : w); c++) {
      float v = g[r * w + c];
      if (m) v = v * m[r * wm + (wm == 1 ? 0 : c)];
      acc = sign > 0.0f ? acc + v : acc - v;
    }
    gx[j] += acc;
  }
}

/* ga += g f'(a) for the one-input nodes (val: the node's value, aux: its aux buffer); with
   `assign`, ga = g f'(a): the tangent of the node for the tangent g of its input (forward mode) */
__global__ void k_g_unary_bwd(int op, float *ga, const float *g, const float *a, const float *val,
                              const float *aux, float c, int64_t n, int assign)
{
  for (int64_t i = df_gtid(); i < n; i += df_gstride()) {
    float gi = g[i], d;
    switch (op) {
    case DF_G_ADDC: d = gi; break;
    case DF_G_MULC: d = gi * c; break;
    case DF_G_RSUBC: d = -gi; break;
    case DF_G_DIVC: d = gi / c; break;
    case DF_G_SILU: d = gi * df_act_bwd(DF_ACT_SILU, a[i], aux[i]); break;
    case DF_G_TANH: d = gi * df_act_bwd(DF_ACT_TANH, a[i], aux[i]); break;
    case DF_G_GELU: d = gi * df_act_bwd(DF_ACT_GELU, a[i], aux[i]); break;
    case DF_G_RELU: d = a[i] > 0.0f ? gi : 0.0f; break;
    case DF_G_SIGMOID: d = gi * (val[i] * (1.0f - val[i])); break;
    case DF_G_SIN: d = gi * aux[i]; break;
    case DF_G_COS: d = -(gi * aux[i]); break;
    case DF_G_EXP: d = gi * val[i]; break;
    default: d = gi * (2.0f * a[i]); break; /* square */
    }
    if (assign) ga[i] = d;
    else ga[i] += d;
  }
}

/* gu [rows, 1] += sum_j k w_j (g_sin cos - g_cos sin) */
__global__ void k_g_fourier_bwd(float *gu, const float *g, const float *f, const float *w, int nf,
                                int gauss, int64_t rows)
{
  for (int64_t r = df_gtid(); r < rows; r += df_gstride()) {
    float acc = 0.0f;
    for (int j = 0; j < nf; j++) {
      const float kw = gauss ? w[j] * 6.28318530717958648f : w[j];
      const int64_t s = r * 2 * nf + j, c = s + nf;
      acc += kw * (g[s] * f[c] - g[c] * f[s]);
    }
    gu[r] += acc;
  }
}

/* ---- tangents (forward mode: J v node by node, as cpu_graph_tangent) -------------------------- */

/* the tangent of a op b: ta +- tb, or ta b + a tb (a node of t alone has tangent 0: xa, xb) */
__global__ void k_g_bin_tan(int op, float *out, const float *ta, const float *a, int wa, int xa,
                            const float *tb, const float *b, int wb, int xb, int w, int64_t rows)
{
  for (int64_t j = df_gtid(); j < rows * w; j += df_gstride()) {
    int64_t r = j / w;
    int c = (int)(j - r * w);
    const int64_t ia = r * wa + (wa == 1 ? 0 : c), ib = r * wb + (wb == 1 ? 0 : c);
    float da = xa ? ta[ia] : 0.0f, db = xb ? tb[ib] : 0.0f;
    out[j] = op == DF_G_ADD ? da + db : op == DF_G_SUB ? da - db : da * b[ib] + a[ia] * db;
  }
}

/* the tangent of [sin k w u, cos k w u]: [k w cos du, -k w sin du] (f: the node's value) */
__global__ void k_g_fourier_tan(float *out, const float *du, const float *f, const float *w, int nf,
                                int gauss, int64_t rows)
{
  for (int64_t j = df_gtid(); j < rows * nf; j += df_gstride()) {
    int64_t r = j / nf;
    int q = (int)(j - r * nf);
    const float kw = gauss ? w[q] * 6.28318530717958648f : w[q];
    const int64_t s = r * 2 * nf + q, c = s + nf;
    out[s] = kw * (f[c] * du[r]);
    out[c] = -(kw * (f[s] * du[r]));
  }
}

/* ---- host side ---------------------------------------------------------------------------------- */

struct Pass {
  const char *op;
  int dev;
  cudaStream_t st;
  cublasHandle_t *blas;
  const df_graph *g;
  const float *params, *fixed;
  float *fr;            /* the frame: node buffers at offset * rows */
  int64_t rows;
};

#define LAUNCHED_P(p) CK((p).op, "kernel launch", cudaGetLastError())

float *buf(const Pass &p, int64_t off) { return p.fr + off * p.rows; }
const df_gnode *node(const Pass &p, int i) { return &p.g->nodes[i]; }
bool wide(int I, int O) { return I >= GEMM_MIN_WIDTH || O >= GEMM_MIN_WIDTH; }

int need_blas(Pass &p)
{
  if (!*p.blas) TRY(df_cuda_blas_on(p.op, p.dev, p.st, p.blas));
  return DF_OK;
}

/* out = in W^T + b (bias: false for a tangent, W dA) */
int lin_fwd(Pass &p, const df_gnode *n, const float *in, float *out, bool bias)
{
  const df_glayer *L = &p.g->layers[n->layer];
  const float *W = p.params + L->woff, *B = bias && L->bias ? p.params + L->boff : nullptr;
  const int64_t rows = p.rows;
  if (!wide(L->in, L->out)) {
    df_k_lin_fwd<<<grid(rows * L->out), THREADS, 0, p.st>>>(out, in, W, B, rows, L->in, L->out);
    LAUNCHED_P(p);
    return DF_OK;
  }
  TRY(need_blas(p));
  df_k_bias_rows<<<grid(rows * L->out), THREADS, 0, p.st>>>(out, B, rows, L->out);
  LAUNCHED_P(p);
  const float one = 1.0f; /* out^T (O x rows) += W^T... column-major, as cuda_nn.cu's lin_fwd */
  cublasStatus_t s = cublasSgemm_64(*p.blas, CUBLAS_OP_T, CUBLAS_OP_N, L->out, rows, L->in, &one, W,
                                    L->in, in, L->in, &one, out, L->out);
  if (s != CUBLAS_STATUS_SUCCESS) return df_cuda_blas_error(p.op, "cublasSgemm (forward)", s);
  return DF_OK;
}

int lin_bwd(Pass &p, const df_gnode *n, const float *G, float *grads)
{
  const df_glayer *L = &p.g->layers[n->layer];
  const df_gnode *a = node(p, n->a);
  const float *W = p.params + L->woff, *in = buf(p, a->val);
  float *gW = grads + L->woff, *gB = L->bias ? grads + L->boff : nullptr;
  const int64_t rows = p.rows;
  const int I = L->in, O = L->out;
  if (!wide(I, O)) {
    df_k_param_grad<<<df_param_grad_blocks(I, O, gB != nullptr), DF_PG_PARAMS * DF_PG_LANES, 0, p.st>>>(
      gW, gB, G, in, rows, I, O);
    LAUNCHED_P(p);
    if (a->grad >= 0) {
      df_k_lin_dinp<<<grid(rows * I), THREADS, 0, p.st>>>(buf(p, a->grad), G, W, rows, I, O, 1);
      LAUNCHED_P(p);
    }
    return DF_OK;
  }
  TRY(need_blas(p));
  if (gB) {
    df_k_param_grad<<<df_param_grad_blocks(0, O, true), DF_PG_PARAMS * DF_PG_LANES, 0, p.st>>>(
      nullptr, gB, G, nullptr, rows, 0, O);
    LAUNCHED_P(p);
  }
  const float one = 1.0f;
  cublasStatus_t s = cublasSgemm_64(*p.blas, CUBLAS_OP_N, CUBLAS_OP_T, I, O, rows, &one, in, I, G,
                                    O, &one, gW, I);
  if (s != CUBLAS_STATUS_SUCCESS) return df_cuda_blas_error(p.op, "cublasSgemm (weight gradient)", s);
  if (a->grad >= 0) { /* dinp += ...: beta = 1 accumulates */
    s = cublasSgemm_64(*p.blas, CUBLAS_OP_N, CUBLAS_OP_N, I, rows, O, &one, W, I, G, O, &one,
                       buf(p, a->grad), I);
    if (s != CUBLAS_STATUS_SUCCESS) return df_cuda_blas_error(p.op, "cublasSgemm (input gradient)", s);
  }
  return DF_OK;
}

} // namespace

df_cuda_glayout df_cuda_graph_layout(const df_graph *g, int64_t rows)
{
  df_cuda_glayout y;
  int64_t off = 0;
  auto take = [&](int64_t floats) {
    int64_t at = off;
    off += (floats + 63) / 64 * 64;
    return at;
  };
  if (rows < 1) rows = 1;
  y.lpart = take(2 * 256 + 2); /* the loss kernel's partials (doubles), then a norm (a double) */
  y.eta = take(rows * g->dim);
  y.x0 = take(rows * g->dim);
  y.dout = take(rows * g->dim);
  y.frame = take(rows * g->frame);
  y.total = off;
  return y;
}

float *df_cuda_graph_val(const df_graph *g, float *ws, int64_t rows, int i)
{
  return ws + df_cuda_graph_layout(g, rows).frame + g->nodes[i].val * (rows < 1 ? 1 : rows);
}

int df_cuda_graph_forward(const char *op, int dev, cudaStream_t st, cublasHandle_t *blas,
                          const df_graph *g, const float *params, const float *fixed, float *ws,
                          int64_t rows)
{
  Pass p = { op, dev, st, blas, g, params, fixed, ws + df_cuda_graph_layout(g, rows).frame, rows };
  for (int i = 2; i < g->nnodes; i++) {
    const df_gnode *n = &g->nodes[i];
    if (!n->live) continue;
    const int64_t N = rows * n->width;
    float *out = buf(p, n->val);
    const float *A = n->a >= 0 ? buf(p, node(p, n->a)->val) : nullptr;
    switch (n->op) {
    case DF_G_LINEAR: TRY(lin_fwd(p, n, buf(p, node(p, n->a)->val), out, true)); continue;
    case DF_G_CAT: {
      int off = 0;
      for (int k = 0; k < n->ncat; k++) {
        const df_gnode *a = node(p, g->cat[n->cat0 + k]);
        k_g_cat<<<grid(rows * a->width), THREADS, 0, st>>>(out, n->width, off, buf(p, a->val), a->width, rows);
        LAUNCHED_P(p);
        off += a->width;
      }
      continue;
    }
    case DF_G_ADD: case DF_G_SUB: case DF_G_MUL: {
      const df_gnode *a = node(p, n->a), *b = node(p, n->b);
      k_g_bin<<<grid(N), THREADS, 0, st>>>(n->op, out, A, a->width, buf(p, b->val), b->width, n->width, rows);
      break;
    }
    case DF_G_ADDC: case DF_G_MULC: case DF_G_RSUBC: case DF_G_DIVC:
      k_g_scal<<<grid(N), THREADS, 0, st>>>(n->op, out, A, n->c, N);
      break;
    case DF_G_FOURIER:
      k_g_fourier<<<grid(rows * n->nfreq), THREADS, 0, st>>>(out, A, fixed + n->foff, n->nfreq, n->gauss, rows);
      break;
    case DF_G_MEAN: case DF_G_COL:
      k_g_reduce<<<grid(rows), THREADS, 0, st>>>(n->op, out, A, node(p, n->a)->width, n->col, rows);
      break;
    default:
      k_g_unary<<<grid(N), THREADS, 0, st>>>(n->op, out, n->aux >= 0 ? buf(p, n->aux) : nullptr, A, N);
      break;
    }
    LAUNCHED_P(p);
  }
  return DF_OK;
}

int df_cuda_graph_backward(const char *op, int dev, cudaStream_t st, cublasHandle_t *blas,
                           const df_graph *g, const float *params, const float *fixed, float *ws,
                           int64_t rows, const float *dout, float *grads)
{
  Pass p = { op, dev, st, blas, g, params, fixed, ws + df_cuda_graph_layout(g, rows).frame, rows };
  int64_t first = g->frame; /* the gradient buffers sit after all values: zero them at once */
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i].grad >= 0 && g->nodes[i].grad < first) first = g->nodes[i].grad;
  if (first < g->frame)
    CK(op, "cudaMemsetAsync of the node gradients",
       cudaMemsetAsync(buf(p, first), 0, (size_t)((g->frame - first) * rows) * sizeof(float), st));
  for (int i = g->out; i >= 2; i--) {
    const df_gnode *n = &g->nodes[i];
    if (!n->live || !n->pdep) continue;
    const float *G = i == g->out ? dout : buf(p, n->grad);
    const int64_t N = rows * n->width;
    const df_gnode *a = n->a >= 0 ? node(p, n->a) : nullptr;
    switch (n->op) {
    case DF_G_LINEAR: TRY(lin_bwd(p, n, G, grads)); continue;
    case DF_G_CAT: {
      int off = 0;
      for (int k = 0; k < n->ncat; k++) {
        const df_gnode *c = node(p, g->cat[n->cat0 + k]);
        if (c->grad >= 0) {
          k_g_cat_bwd<<<grid(rows * c->width), THREADS, 0, st>>>(buf(p, c->grad), G, n->width, off, c->width, rows);
          LAUNCHED_P(p);
        }
        off += c->width;
      }
      continue;
    }
    case DF_G_ADD: case DF_G_SUB: case DF_G_MUL: {
      const df_gnode *b = node(p, n->b);
      const bool mul = n->op == DF_G_MUL;
      if (a->grad >= 0) {
        k_g_bin_bwd<<<grid(rows * a->width), THREADS, 0, st>>>(buf(p, a->grad), a->width, G, n->width,
                                                              mul ? buf(p, b->val) : nullptr, b->width, 1.0f, rows);
        LAUNCHED_P(p);
      }
      if (b->grad >= 0) {
        k_g_bin_bwd<<<grid(rows * b->width), THREADS, 0, st>>>(buf(p, b->grad), b->width, G, n->width,
                                                              mul ? buf(p, a->val) : nullptr, a->width,
                                                              n->op == DF_G_SUB ? -1.0f : 1.0f, rows);
        LAUNCHED_P(p);
      }
      continue;
    }
    case DF_G_FOURIER:
      if (a->grad < 0) continue;
      k_g_fourier_bwd<<<grid(rows), THREADS, 0, st>>>(buf(p, a->grad), G, buf(p, n->val), fixed + n->foff,
                                                      n->nfreq, n->gauss, rows);
      break;
    case DF_G_MEAN: case DF_G_COL:
      if (a->grad < 0) continue;
      k_g_reduce_bwd<<<grid(rows * a->width), THREADS, 0, st>>>(n->op, buf(p, a->grad), G, a->width, n->col, rows);
      break;
    default:
      if (a->grad < 0) continue;
      k_g_unary_bwd<<<grid(N), THREADS, 0, st>>>(n->op, buf(p, a->grad), G, buf(p, a->val), buf(p, n->val),
                                                 n->aux >= 0 ? buf(p, n->aux) : nullptr, n->c, N, 0);
      break;
    }
    LAUNCHED_P(p);
  }
  return DF_OK;
}

/* the tangents of every node that depends on x, for the tangent of x already in tf at node 0's
   offset (tf: a second frame like the forward's, rows floats per feature); the forward's values
   (and aux buffers) must be in ws */
int df_cuda_graph_tangent(const char *op, int dev, cudaStream_t st, cublasHandle_t *blas,
                          const df_graph *g, const float *params, const float *fixed, float *ws,
                          float *tf, int64_t rows)
{
  Pass p = { op, dev, st, blas, g, params, fixed, ws + df_cuda_graph_layout(g, rows).frame, rows };
  Pass tp = p;
  tp.fr = tf;
  for (int i = 2; i < g->nnodes; i++) {
    const df_gnode *n = &g->nodes[i];
    if (!n->live || !n->xdep) continue;
    const int64_t N = rows * n->width;
    float *out = buf(tp, n->val);
    const df_gnode *a = n->a >= 0 ? node(p, n->a) : nullptr;
    switch (n->op) {
    case DF_G_LINEAR: TRY(lin_fwd(p, n, buf(tp, a->val), out, false)); continue;
    case DF_G_CAT: {
      CK(op, "cudaMemsetAsync of a tangent", cudaMemsetAsync(out, 0, (size_t)N * sizeof(float), st));
      int off = 0;
      for (int k = 0; k < n->ncat; k++) {
        const df_gnode *c = node(p, g->cat[n->cat0 + k]);
        if (c->xdep) {
          k_g_cat<<<grid(rows * c->width), THREADS, 0, st>>>(out, n->width, off, buf(tp, c->val), c->width, rows);
          LAUNCHED_P(p);
        }
        off += c->width;
      }
      continue;
    }
    case DF_G_ADD: case DF_G_SUB: case DF_G_MUL: {
      const df_gnode *b = node(p, n->b);
      k_g_bin_tan<<<grid(N), THREADS, 0, st>>>(n->op, out, buf(tp, a->val), buf(p, a->val), a->width, a->xdep,
                                               buf(tp, b->val), buf(p, b->val), b->width, b->xdep, n->width, rows);
      break;
    }
    case DF_G_FOURIER:
      k_g_fourier_tan<<<grid(rows * n->nfreq), THREADS, 0, st>>>(out, buf(tp, a->val), buf(p, n->val),
                                                                 fixed + n->foff, n->nfreq, n->gauss, rows);
      break;
    case DF_G_MEAN: case DF_G_COL:
      k_g_reduce<<<grid(rows), THREADS, 0, st>>>(n->op, out, buf(tp, a->val), a->width, n->col, rows);
      break;
    default:
      k_g_unary_bwd<<<grid(N), THREADS, 0, st>>>(n->op, out, buf(tp, a->val), buf(p, a->val), buf(p, n->val),
                                                 n->aux >= 0 ? buf(p, n->aux) : nullptr, n->c, N, 1);
      break;
    }
    LAUNCHED_P(p);
  }
  return DF_OK;
}
