/* cpu_graph.c: traced networks (graph.h) on the CPU. A tile's forward runs the nodes in order and
 * its backward in reverse, each node one of the layer kernels of cpu_layers.h or a loop along the
 * tile's rows, on buffers [width][TILE] at the feature offsets the parse laid out in the tile's
 * frame. cpu_nn.c's entry points (forward, backward, DSM step, sampler runs) drive these per tile
 * exactly as they drive the seed's two nets, so a graph spelling one of those nets runs the same
 * operations in the same order and gives bitwise its losses. */
#include <string.h>
#include "cpu_layers.h"
#include "graph.h"

static const float zero_bias[DF_GRAPH_MAXLAYERW]; /* a layer without bias starts its sums at 0 */

#define VAL(n) (fr + (n)->val * TILE)
#define AUX(n) (fr + (n)->aux * TILE)
#define GRAD(n) (fr + (n)->grad * TILE)

static int act_of(int op)
{
  return op == DF_G_RELU ? DF_ACT_RELU : op == DF_G_TANH ? DF_ACT_TANH
       : op == DF_G_GELU ? DF_ACT_GELU : DF_ACT_SILU;
}

/* a [wa][T] op b [wb][T] into out [w][T], a width of 1 broadcasting over the columns */
static void bcast(int op, float *out, const float *a, int wa, const float *b, int wb, int w)
{
  for (int c = 0; c < w; c++) {
    const float *x = a + (wa == 1 ? 0 : c) * TILE, *y = b + (wb == 1 ? 0 : c) * TILE;
    float *o = out + c * TILE;
    if (op == DF_G_ADD) for (int r = 0; r < TILE; r++) o[r] = x[r] + y[r];
    else if (op == DF_G_SUB) for (int r = 0; r < TILE; r++) o[r] = x[r] - y[r];
    else for (int r = 0; r < TILE; r++) o[r] = x[r] * y[r];
  }
}

/* [sin k w_j u, cos k w_j u] for j < nf, k = 2 pi (Gaussian features, as df_fourier) or 1 */
static void fourier(float *out, const float *u, const float *w, int nf, int gauss)
{
  for (int j = 0; j < nf; j++) {
    float *s = out + j * TILE, *c = out + (nf + j) * TILE;
    if (gauss) for (int r = 0; r < TILE; r++) df_fourier(u[r], w[j], &s[r], &c[r]);
    else for (int r = 0; r < TILE; r++) df_sincosf_short(u[r] * w[j], &s[r], &c[r]);
  }
}

/* out [1][T] = the mean of a's w columns, summed in column order (the CUDA kernel's order) */
static void col_mean(float *out, const float *a, int w)
{
  const float inv = 1.0f / (float)w;
  for (int r = 0; r < TILE; r++) out[r] = 0.0f;
  for (int c = 0; c < w; c++)
    for (int r = 0; r < TILE; r++) out[r] += a[c * TILE + r];
  for (int r = 0; r < TILE; r++) out[r] *= inv;
}

/* a LINEAR whose only consumer is a SILU, in a forward nothing goes backward from: the silu
   applied to the layer's accumulators (cpu_layers.h), the layer's own value never stored */
static int fused_forward(const df_graph *g, const df_gnode *lin, int keep)
{
#ifdef HAVE_SILU_R
  return !keep && lin->fuse >= 0 && g->layers[lin->layer].out % OB == 0;
#else
  (void)g; (void)lin; (void)keep;
  return 0;
#endif
}

/* node i's value from its inputs' */
static void node_forward(const df_graph *g, int i, const float *params, const float *fixed,
                         float *fr, int keep)
{
  {
    const df_gnode *n = &g->nodes[i];
    float *out = VAL(n);
    const float *A = n->a >= 0 ? VAL(&g->nodes[n->a]) : NULL;
    const int N = n->width * TILE;
    switch (n->op) {
    case DF_G_LINEAR: {
      const df_glayer *L = &g->layers[n->layer];
      const float *w = params + L->woff, *b = L->bias ? params + L->boff : zero_bias;
#ifdef HAVE_SILU_R
      if (fused_forward(g, n, keep)) {
        linear_silu_forward(VAL(&g->nodes[n->fuse]), A, w, b, L->in, L->out);
        break;
      }
#endif
      linear_forward(out, A, w, b, L->in, L->out);
      break;
    }
    case DF_G_CAT: {
      float *o = out;
      for (int k = 0; k < n->ncat; k++) {
        const df_gnode *a = &g->nodes[g->cat[n->cat0 + k]];
        memcpy(o, VAL(a), (size_t)a->width * TILE * sizeof(float));
        o += a->width * TILE;
      }
      break;
    }
    case DF_G_ADD: case DF_G_SUB: case DF_G_MUL: {
      const df_gnode *a = &g->nodes[n->a], *b = &g->nodes[n->b];
      bcast(n->op, out, A, a->width, VAL(b), b->width, n->width);
      break;
    }
    case DF_G_ADDC: { const float c = n->c; for (int k = 0; k < N; k++) out[k] = A[k] + c; break; }
    case DF_G_MULC: { const float c = n->c; for (int k = 0; k < N; k++) out[k] = A[k] * c; break; }
    case DF_G_RSUBC: { const float c = n->c; for (int k = 0; k < N; k++) out[k] = c - A[k]; break; }
    case DF_G_DIVC: { const float c = n->c; for (int k = 0; k < N; k++) out[k] = A[k] / c; break; }
    case DF_G_SILU: {
      const df_gnode *z = &g->nodes[n->a];
      if (z->op == DF_G_LINEAR && z->fuse == i && fused_forward(g, z, keep)) break; /* done */
      act_forward(DF_ACT_SILU, out, keep ? AUX(n) : NULL, A, N);
      break;
    }
    case DF_G_TANH: case DF_G_GELU: act_forward(act_of(n->op), out, AUX(n), A, N); break;
    case DF_G_RELU: act_forward(DF_ACT_RELU, out, NULL, A, N); break;
    case DF_G_SIGMOID: for (int k = 0; k < N; k++) out[k] = df_sigmoidf(A[k]); break;
    case DF_G_SIN: { float *c = AUX(n); for (int k = 0; k < N; k++) df_sincosf(A[k], &out[k], &c[k]); break; }
    case DF_G_COS: { float *s = AUX(n); for (int k = 0; k < N; k++) df_sincosf(A[k], &s[k], &out[k]); break; }
    case DF_G_EXP: for (int k = 0; k < N; k++) out[k] = df_expf(A[k]); break;
    case DF_G_SQUARE: for (int k = 0; k < N; k++) out[k] = A[k] * A[k]; break;
    case DF_G_FOURIER: fourier(out, A, fixed + n->foff, n->nfreq, n->gauss); break;
    case DF_G_MEAN: col_mean(out, A, g->nodes[n->a].width); break;
    case DF_G_COL: memcpy(out, A + n->col * TILE, TILE * sizeof(float)); break;
    default: break;
    }
  }
}

void cpu_graph_forward(const df_graph *g, const float *params, const float *fixed, float *fr,
                       int keep, int tabled)
{
  for (int i = 2; i < g->nnodes; i++)
    if (g->nodes[i].live && !(tabled && g->nodes[i].tonly)) /* (tabled: the frontier is filled) */
      node_forward(g, i, params, fixed, fr, keep);
}

void cpu_graph_time_table(const df_graph *g, const float *params, const float *fixed,
                          const float *times, int64_t n, float *tab, float *fr)
{
  float *t = VAL(&g->nodes[1]);
  for (int64_t r0 = 0; r0 < n; r0 += TILE) {
    const int m = n - r0 < TILE ? (int)(n - r0) : TILE;
    for (int r = 0; r < TILE; r++) t[r] = r < m ? times[r0 + r] : 0.0f;
    for (int i = 2; i < g->nnodes; i++)
      if (g->nodes[i].live && g->nodes[i].tonly) node_forward(g, i, params, fixed, fr, 0);
    for (int i = 2; i < g->nnodes; i++) {
      const df_gnode *f = &g->nodes[i];
      if (!f->frontier) continue;
      for (int c = 0; c < f->width; c++)
        for (int r = 0; r < m; r++) tab[(r0 + r) * g->tab + f->tabo + c] = VAL(f)[c * TILE + r];
    }
  }
}

void cpu_graph_fill(const df_graph *g, float *fr, const float *row)
{
  for (int i = 2; i < g->nnodes; i++) {
    const df_gnode *f = &g->nodes[i];
    if (!f->frontier) continue;
    for (int c = 0; c < f->width; c++) {
      const float v = row[f->tabo + c];
      float *o = VAL(f) + c * TILE;
      for (int r = 0; r < TILE; r++) o[r] = v;
    }
  }
}

/* ---- backward ---------------------------------------------------------------------------------- */

/* where a contribution to node a's gradient goes: straight into its buffer the first time, else
   into scratch, added by done() */
typedef struct {
  const df_graph *g;
  float *fr, *scratch;
  unsigned char *written;
} bctx;

static float *target(const bctx *b, int a)
{
  return b->written[a] ? b->scratch : b->fr + b->g->nodes[a].grad * TILE;
}

static void done(const bctx *b, int a)
{
  const df_gnode *n = &b->g->nodes[a];
  if (b->written[a]) {
    float *gb = b->fr + n->grad * TILE;
    const int N = n->width * TILE;
    for (int k = 0; k < N; k++) gb[k] += b->scratch[k];
  }
  b->written[a] = 1;
}

static int wants(const bctx *b, int a) { return a >= 0 && b->g->nodes[a].grad >= 0; }

/* the gradient G [w][T] of a broadcast op's output reaching its operand x (width wx): as it is,
   or summed over the columns when x broadcast; times m [wm][T] (MUL: the other operand) and
   sign s (+1 or -1) */
static void bcast_back(const bctx *b, int x, const float *G, int w, const float *m, int wm,
                       float s)
{
  const int wx = b->g->nodes[x].width;
  float *dst = target(b, x);
  if (wx == w) {
    for (int c = 0; c < w; c++) {
      const float *gc = G + c * TILE, *mc = m ? m + (wm == 1 ? 0 : c) * TILE : NULL;
      float *o = dst + c * TILE;
      if (mc) for (int r = 0; r < TILE; r++) o[r] = gc[r] * mc[r];
      else if (s > 0) for (int r = 0; r < TILE; r++) o[r] = gc[r];
      else for (int r = 0; r < TILE; r++) o[r] = -gc[r];
    }
  } else { /* x [1][T] against w columns: the columns' contributions summed in order */
    for (int r = 0; r < TILE; r++) dst[r] = 0.0f;
    for (int c = 0; c < w; c++) {
      const float *gc = G + c * TILE, *mc = m ? m + (wm == 1 ? 0 : c) * TILE : NULL;
      if (mc) for (int r = 0; r < TILE; r++) dst[r] += gc[r] * mc[r];
      else if (s > 0) for (int r = 0; r < TILE; r++) dst[r] += gc[r];
      else for (int r = 0; r < TILE; r++) dst[r] -= gc[r];
    }
  }
  done(b, x);
}

void cpu_graph_backward(const df_graph *g, const float *params, const float *fixed, float *fr,
                        const float *dout, float *grads, float *scratch)
{
  unsigned char written[DF_GRAPH_MAXNODES], skip[DF_GRAPH_MAXNODES];
  memset(written, 0, (size_t)g->nnodes);
  memset(skip, 0, (size_t)g->nnodes);
  bctx b = { g, fr, scratch, written };
  for (int i = g->out; i >= 2; i--) {
    const df_gnode *n = &g->nodes[i];
    if (!n->live || !n->pdep || skip[i] || (i != g->out && !written[i])) continue;
    const float *G = i == g->out ? dout : GRAD(n);
    const int N = n->width * TILE;
    const int a = n->a;
    const float *A = a >= 0 ? VAL(&g->nodes[a]) : NULL;
    switch (n->op) {
    case DF_G_LINEAR: {
      const df_glayer *L = &g->layers[n->layer];
      const float *w = params + L->woff;
      float *dw = grads + L->woff, *db = L->bias ? grads + L->boff : NULL;
      const df_gnode *an = &g->nodes[a];
      if (!wants(&b, a)) {
        linear_backward(NULL, dw, db, G, A, w, L->in, L->out, NULL, NULL);
        break;
      }
      /* input silu(z) used only here, z used only by it: silu's derivative applied as the input
         gradient is stored (cpu_layers.h), straight into z's gradient */
      if (an->op == DF_G_SILU && an->uses == 1 && wants(&b, an->a) && g->nodes[an->a].uses == 1) {
        linear_backward(target(&b, an->a), dw, db, G, A, w, L->in, L->out, VAL(&g->nodes[an->a]),
                        AUX(an));
        done(&b, an->a);
        skip[a] = 1;
        break;
      }
      linear_backward(target(&b, a), dw, db, G, A, w, L->in, L->out, NULL, NULL);
      done(&b, a);
      break;
    }
    case DF_G_CAT: {
      const float *gk = G;
      for (int k = 0; k < n->ncat; k++) {
        int c = g->cat[n->cat0 + k];
        const int M = g->nodes[c].width * TILE;
        if (wants(&b, c)) {
          memcpy(target(&b, c), gk, (size_t)M * sizeof(float));
          done(&b, c);
        }
        gk += M;
      }
      break;
    }
    case DF_G_ADD: case DF_G_SUB: case DF_G_MUL: {
      const df_gnode *an = &g->nodes[a], *bn = &g->nodes[n->b];
      const int mul = n->op == DF_G_MUL;
      if (wants(&b, a)) bcast_back(&b, a, G, n->width, mul ? VAL(bn) : NULL, bn->width, 1.0f);
      if (wants(&b, n->b))
        bcast_back(&b, n->b, G, n->width, mul ? VAL(an) : NULL, an->width,
                   n->op == DF_G_SUB ? -1.0f : 1.0f);
      break;
    }
    case DF_G_MEAN: case DF_G_COL: { /* dA[c] = G / w (MEAN), or G into column col alone */
      if (!wants(&b, a)) break;
      float *d = target(&b, a);
      const int wa = g->nodes[a].width;
      const float inv = 1.0f / (float)wa;
      for (int c = 0; c < wa; c++)
        for (int r = 0; r < TILE; r++)
          d[c * TILE + r] = n->op == DF_G_MEAN ? G[r] * inv : c == n->col ? G[r] : 0.0f;
      done(&b, a);
      break;
    }
    default: { /* one input, elementwise: dA = G * f'(A) */
      if (!wants(&b, a)) break;
      float *d = target(&b, a);
      const float c = n->c;
      switch (n->op) {
      case DF_G_ADDC: memcpy(d, G, (size_t)N * sizeof(float)); break;
      case DF_G_MULC: for (int k = 0; k < N; k++) d[k] = G[k] * c; break;
      case DF_G_RSUBC: for (int k = 0; k < N; k++) d[k] = -G[k]; break;
      case DF_G_DIVC: for (int k = 0; k < N; k++) d[k] = G[k] / c; break;
      case DF_G_SILU: case DF_G_TANH: case DF_G_GELU:
        act_backward(act_of(n->op), d, G, A, AUX(n), N);
        break;
      case DF_G_RELU: for (int k = 0; k < N; k++) d[k] = A[k] > 0.0f ? G[k] : 0.0f; break;
      case DF_G_SIGMOID: {
        const float *s = VAL(n);
        for (int k = 0; k < N; k++) d[k] = G[k] * (s[k] * (1.0f - s[k]));
        break;
      }
      case DF_G_SIN: { const float *co = AUX(n); for (int k = 0; k < N; k++) d[k] = G[k] * co[k]; break; }
      case DF_G_COS: { const float *si = AUX(n); for (int k = 0; k < N; k++) d[k] = -(G[k] * si[k]); break; }
      case DF_G_EXP: { const float *e = VAL(n); for (int k = 0; k < N; k++) d[k] = G[k] * e[k]; break; }
      case DF_G_SQUARE: for (int k = 0; k < N; k++) d[k] = G[k] * (2.0f * A[k]); break;
      case DF_G_FOURIER: { /* d/du of sin(k w u) = k w cos(k w u), of cos: -k w sin(k w u) */
        const int nf = n->nfreq;
        const float *f = VAL(n), *w = fixed + n->foff;
        for (int r = 0; r < TILE; r++) d[r] = 0.0f;
        for (int j = 0; j < nf; j++) {
          const float kw = n->gauss ? w[j] * 6.28318530717958648f : w[j];
          const float *gs = G + j * TILE, *gc = G + (nf + j) * TILE;
          const float *fs = f + j * TILE, *fc = f + (nf + j) * TILE;
          for (int r = 0; r < TILE; r++) d[r] += kw * (gs[r] * fc[r] - gc[r] * fs[r]);
        }
        break;
      }
      default: break;
      }
      done(&b, a);
      break;
    }
    }
  }
}

/* ---- tangents: J v, forward mode ---------------------------------------------------------------- */

/* the tangent of a node of t alone is 0: its buffer is never read, these stand in for it */
#define XDEP(i) (g->nodes[i].xdep)

void cpu_graph_tangent(const df_graph *g, const float *params, const float *fixed, const float *fr,
                       float *tf)
{
  for (int i = 2; i < g->nnodes; i++) {
    const df_gnode *n = &g->nodes[i];
    if (!n->live || !n->xdep) continue;
    float *out = tf + n->val * TILE;
    const int N = n->width * TILE;
    const float *TA = n->a >= 0 ? tf + g->nodes[n->a].val * TILE : NULL;
    const float *A = n->a >= 0 ? fr + g->nodes[n->a].val * TILE : NULL;
    switch (n->op) {
    case DF_G_LINEAR: { /* W dA (no bias) */
      const df_glayer *L = &g->layers[n->layer];
      linear_forward(out, TA, params + L->woff, zero_bias, L->in, L->out);
      break;
    }
    case DF_G_CAT: {
      float *o = out;
      for (int k = 0; k < n->ncat; k++) {
        const int c = g->cat[n->cat0 + k];
        const size_t M = (size_t)g->nodes[c].width * TILE;
        if (XDEP(c)) memcpy(o, tf + g->nodes[c].val * TILE, M * sizeof(float));
        else memset(o, 0, M * sizeof(float));
        o += M;
      }
      break;
    }
    case DF_G_ADD: case DF_G_SUB: case DF_G_MUL: {
      const df_gnode *an = &g->nodes[n->a], *bn = &g->nodes[n->b];
      const float *B = fr + bn->val * TILE, *TB = tf + bn->val * TILE;
      const int wa = an->width, wb = bn->width, xa = an->xdep, xb = bn->xdep;
      for (int c = 0; c < n->width; c++) {
        const int ca = (wa == 1 ? 0 : c) * TILE, cb = (wb == 1 ? 0 : c) * TILE;
        float *o = out + c * TILE;
        for (int r = 0; r < TILE; r++) {
          float ta = xa ? TA[ca + r] : 0.0f, tb = xb ? TB[cb + r] : 0.0f;
          o[r] = n->op == DF_G_ADD ? ta + tb : n->op == DF_G_SUB ? ta - tb
               : ta * B[cb + r] + A[ca + r] * tb;
        }
      }
      break;
    }
    case DF_G_ADDC: memcpy(out, TA, (size_t)N * sizeof(float)); break;
    case DF_G_MULC: { const float c = n->c; for (int k = 0; k < N; k++) out[k] = TA[k] * c; break; }
    case DF_G_RSUBC: for (int k = 0; k < N; k++) out[k] = -TA[k]; break;
    case DF_G_DIVC: { const float c = n->c; for (int k = 0; k < N; k++) out[k] = TA[k] / c; break; }
    case DF_G_SILU: case DF_G_TANH: case DF_G_GELU: {
      const float *aux = fr + n->aux * TILE;
      const int act = act_of(n->op);
      for (int k = 0; k < N; k++) out[k] = TA[k] * df_act_bwd(act, A[k], aux[k]);
      break;
    }
    case DF_G_RELU: for (int k = 0; k < N; k++) out[k] = A[k] > 0.0f ? TA[k] : 0.0f; break;
    case DF_G_SIGMOID: {
      const float *sv = fr + n->val * TILE;
      for (int k = 0; k < N; k++) out[k] = TA[k] * (sv[k] * (1.0f - sv[k]));
      break;
    }
    case DF_G_SIN: { const float *co = fr + n->aux * TILE; for (int k = 0; k < N; k++) out[k] = TA[k] * co[k]; break; }
    case DF_G_COS: { const float *si = fr + n->aux * TILE; for (int k = 0; k < N; k++) out[k] = -(TA[k] * si[k]); break; }
    case DF_G_EXP: { const float *e = fr + n->val * TILE; for (int k = 0; k < N; k++) out[k] = TA[k] * e[k]; break; }
    case DF_G_SQUARE: for (int k = 0; k < N; k++) out[k] = TA[k] * (2.0f * A[k]); break;
    case DF_G_FOURIER: { /* d sin(k w u) = k w cos(k w u) du, d cos = -k w sin du */
      const int nf = n->nfreq;
      const float *f = fr + n->val * TILE, *w = fixed + n->foff;
      for (int j = 0; j < nf; j++) {
        const float kw = n->gauss ? w[j] * 6.28318530717958648f : w[j];
        const float *fs = f + j * TILE, *fc = f + (nf + j) * TILE;
        float *os = out + j * TILE, *oc = out + (nf + j) * TILE;
        for (int r = 0; r < TILE; r++) {
          os[r] = kw * (fc[r] * TA[r]);
          oc[r] = -(kw * (fs[r] * TA[r]));
        }
      }
      break;
    }
    case DF_G_MEAN: col_mean(out, TA, g->nodes[n->a].width); break;
    case DF_G_COL: memcpy(out, TA + n->col * TILE, TILE * sizeof(float)); break;
    default: break;
    }
  }
}
