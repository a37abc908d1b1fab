/* nn.c: score networks (layout, initialisation, forward/backward through the backend, moving
 * between devices), the network score source, Adam, the DSM loss and the training loop. */
#define _POSIX_C_SOURCE 200112L
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "status.h"
#include "nn.h"
#include "graph.h"

const char *const df_output_names[DF_NOUT + 1] = { "scaled", "score", "noise", "denoiser", NULL };

/* ---- descriptions -------------------------------------------------------------------------- */

static int check_act(int act)
{
  if (act < DF_ACT_SILU || act > DF_ACT_GELU) return df_fail(DF_EARG, "unknown activation %d", act);
  return DF_OK;
}

static void layout(df_netdesc *d)
{
  int64_t off = 0;
  d->maxw = d->dim + 1;
  for (int l = 0; l < d->nlin; l++) {
    d->woff[l] = off;
    off += (int64_t)d->in[l] * d->out[l];
    d->boff[l] = off;
    off += d->out[l];
    if (d->out[l] > d->maxw) d->maxw = d->out[l];
    if (d->kind == DF_NET_MLP && d->in[l] > d->maxw) d->maxw = d->in[l];
  }
  d->nparams = off;
}

int df_netdesc_mlp(df_netdesc *d, int dim, int nhidden, const int64_t *hidden, int act)
{
  int st;
  memset(d, 0, sizeof *d);
  if (dim < 1 || dim > DF_NET_MAXDIM)
    return df_fail(DF_EARG, "dim must be between 1 and %d (got %d)", DF_NET_MAXDIM, dim);
  if (nhidden < 1 || nhidden > DF_MAXLIN - 1)
    return df_fail(DF_EARG, "hidden must list 1 to %d layer widths (got %d)", DF_MAXLIN - 1, nhidden);
  if ((st = check_act(act))) return st;
  for (int l = 0; l < nhidden; l++)
    if (hidden[l] < 1 || hidden[l] > 4096)
      return df_fail(DF_EARG, "hidden width %d must be between 1 and 4096 (got %lld)", l + 1,
                     (long long)hidden[l]);
  d->kind = DF_NET_MLP;
  d->dim = dim;
  d->act = act;
  d->nlin = nhidden + 1;
  for (int l = 0; l <= nhidden; l++) {
    d->in[l] = l == 0 ? dim + 1 : (int)hidden[l - 1]; /* input: concat[x, t] */
    d->out[l] = l == nhidden ? dim : (int)hidden[l];
  }
  layout(d);
  return DF_OK;
}

int df_netdesc_temb(df_netdesc *d, int dim, int hidden, int embed, int act)
{
  int st;
  memset(d, 0, sizeof *d);
  if (dim < 1 || dim > DF_NET_MAXDIM)
    return df_fail(DF_EARG, "dim must be between 1 and %d (got %d)", DF_NET_MAXDIM, dim);
  if (hidden < 1 || hidden > 4096)
    return df_fail(DF_EARG, "hidden must be between 1 and 4096 (got %d)", hidden);
  if (embed < 2 || embed > DF_NET_MAXEMBED || embed % 2)
    return df_fail(DF_EARG, "embed must be even, between 2 and %d (got %d)", DF_NET_MAXEMBED, embed);
  if ((st = check_act(act))) return st;
  d->kind = DF_NET_TEMB;
  d->dim = dim;
  d->act = act;
  d->embed = embed;
  d->nlin = 3;
  d->in[0] = embed; d->out[0] = hidden; /* time: Linear(embed, hidden), then the activation */
  d->in[1] = dim;   d->out[1] = hidden; /* x: Linear(dim, hidden) */
  d->in[2] = hidden; d->out[2] = dim;   /* summed, activation, Linear(hidden, dim) */
  d->nfixed = embed / 2;
  layout(d);
  return DF_OK;
}

/* a traced graph (graph.h, parsed): the description holds it (the net takes its own reference) */
int df_netdesc_graph(df_netdesc *d, const df_graph *g)
{
  memset(d, 0, sizeof *d);
  d->kind = DF_NET_GRAPH;
  d->graph = g;
  d->dim = g->dim;
  d->act = DF_ACT_SILU;
  d->nparams = g->nparams;
  d->nfixed = g->nfixed;
  d->maxw = g->maxw;
  return DF_OK;
}

/* ---- buffers ------------------------------------------------------------------------------- */

static int alloc_buf(const df_backend *be, int dev, int64_t n, float **p)
{
  *p = NULL;
  return be->alloc(dev, n, p);
}

static void free_buf(const df_backend *be, int dev, float **p)
{
  if (*p) be->release(dev, *p);
  *p = NULL;
}

/* copy n floats between any two devices (through the host when neither is the CPU) */
static int copy_buf(const df_backend *bd, int dd, float *dst, const df_backend *bs, int ds,
                    const float *src, int64_t n)
{
  if (n == 0) return DF_OK;
  if (bd == bs && dd == ds) return bs->copy2d(ds, dst, n, src, n, 1, n);
  if (bd == &df_cpu_backend) return bs->download(ds, dst, src, n);
  if (bs == &df_cpu_backend) return bd->upload(dd, dst, src, n);
  float *tmp = (float *)malloc((size_t)n * sizeof(float));
  if (!tmp) return df_fail(DF_ENOMEM, "out of memory");
  int st = bs->download(ds, tmp, src, n);
  if (!st) st = bd->upload(dd, dst, tmp, n);
  free(tmp);
  return st;
}

static int need_nn(const df_backend *be)
{
  if (be->net_forward && be->net_backward && be->net_workspace && be->dsm_step && be->adam &&
      be->ema)
    return DF_OK;
  return df_fail(DF_EDEVICE, "networks are not implemented on %s", be->name);
}

void df_net_release(df_net *n)
{
  if (!n->live) return;
  free_buf(n->be, n->dev, &n->params);
  free_buf(n->be, n->dev, &n->grads);
  free_buf(n->be, n->dev, &n->fixed);
  free_buf(n->be, n->dev, &n->ws);
  free_buf(n->be, n->dev, &n->in_x);
  free_buf(n->be, n->dev, &n->in_t);
  free_buf(n->be, n->dev, &n->loss);
  free_buf(n->be, n->dev, &n->jws);
  n->jws_floats = 0;
  if (n->shadow) df_graph_release(n->shadow);
  n->shadow = NULL;
  n->ws_floats = n->in_cap = 0; /* (a released net must not look as if it had a workspace) */
  n->cached_rows = -1;
  n->live = 0;
  if (n->d.graph) df_graph_release((df_graph *)n->d.graph);
  n->d.graph = NULL;
}

static int alloc_net(df_net *n, const df_backend *be, int dev)
{
  int st;
  n->be = be;
  n->dev = dev;
  n->live = 1;
  if (n->d.graph) df_graph_retain((df_graph *)n->d.graph); /* (its own, dropped by release) */
  /* no workspace yet: a net copied for df_net_to must not keep (and later free, through this
     backend) the old device's buffers */
  n->ws = n->in_x = n->in_t = n->jws = NULL;
  n->shadow = NULL;
  n->jws_floats = 0;
  n->params = n->grads = n->fixed = n->loss = NULL; /* (a failure half-way frees only these) */
  n->ws_floats = n->in_cap = 0;
  n->cached_rows = -1;
  if ((st = alloc_buf(be, dev, n->d.nparams, &n->params)) ||
      (st = alloc_buf(be, dev, n->d.nparams, &n->grads)) ||
      (st = alloc_buf(be, dev, n->d.nfixed > 0 ? n->d.nfixed : 1, &n->fixed)) ||
      (st = alloc_buf(be, dev, 1, &n->loss)) ||
      (st = be->fill(dev, n->grads, n->d.nparams, 0.0f))) {
    df_net_release(n);
    return st;
  }
  return DF_OK;
}

int df_net_alloc(df_net *n, const df_netdesc *d, double scale, const df_backend *be, int dev)
{
  int st;
  memset(n, 0, sizeof *n);
  if ((st = need_nn(be))) return st;
  /* (5 sigma of the frequencies at t = 1 stays below the 6.5e6 where the features are NaN) */
  if (d->kind == DF_NET_TEMB && (!(scale > 0.0) || !(scale <= 1e5)))
    return df_fail(DF_EARG, "scale must be positive, at most 1e5 (got %g)", scale);
  n->d = *d;
  n->scale = scale;
  return alloc_net(n, be, dev);
}

/* a graph's initial values, by the rule of the fixed nets: the drawn Fourier frequencies first,
   from one normal stream, in node order; then every Linear's weight and bias from one uniform
   stream over the flat buffer (element i of the stream is parameter i), torch's nn.Linear bounds
   +-1/sqrt(in); given frequencies are copied */
static void graph_init(const df_graph *g, uint64_t seed, float *params, float *fixed)
{
  if (g->ndrawn > 0) {
    uint64_t sw = df_rng_next_stream();
    int64_t j = 0;
    for (int i = 0; i < g->nnodes; i++) {
      const df_gnode *n = &g->nodes[i];
      if (n->op != DF_G_FOURIER) continue;
      for (int k = 0; k < n->nfreq; k++)
        fixed[n->foff + k] = n->gauss ? (float)n->scale * df_randn_at(seed, sw, (uint64_t)j++)
                                      : g->freqs[n->foff + k];
    }
  } else if (g->nfixed > 0) {
    memcpy(fixed, g->freqs, (size_t)g->nfixed * sizeof(float));
  }
  uint64_t sp = df_rng_next_stream();
  for (int l = 0; l < g->nlayers; l++) {
    const df_glayer *L = &g->layers[l];
    float bound = (float)(1.0 / sqrt((double)L->in));
    int64_t cnt = (int64_t)L->in * L->out + (L->bias ? L->out : 0);
    for (int64_t i = 0; i < cnt; i++) {
      int64_t at = L->woff + i; /* the bias follows its weight */
      params[at] = (2.0f * df_rand_at(seed, sp, (uint64_t)at) - 1.0f) * bound;
    }
  }
}

int df_net_create(df_net *n, const df_netdesc *d, double scale, const df_backend *be, int dev)
{
  int st;
  uint64_t seed, unused;
  if ((st = df_net_alloc(n, d, scale, be, dev))) return st;
  /* on the host: the frequencies from a normal stream, then every Linear's weight and bias
     from one uniform stream, in the order torch creates them */
  int64_t np = d->nparams, nf = d->nfixed;
  float *host = (float *)malloc((size_t)(np + nf + 1) * sizeof(float));
  if (!host) {
    df_net_release(n);
    return df_fail(DF_ENOMEM, "out of memory for %lld parameters", (long long)np);
  }
  df_rng_state(&seed, &unused);
  if (d->kind == DF_NET_GRAPH) {
    graph_init(d->graph, seed, host, host + np);
  } else if (nf > 0) {
    uint64_t sw = df_rng_next_stream();
    for (int64_t j = 0; j < nf; j++) host[np + j] = (float)scale * df_randn_at(seed, sw, (uint64_t)j);
  }
  uint64_t sp = d->kind == DF_NET_GRAPH ? 0 : df_rng_next_stream();
  for (int l = 0; l < d->nlin; l++) {
    float bound = (float)(1.0 / sqrt((double)d->in[l]));
    int64_t cnt = (int64_t)d->in[l] * d->out[l] + d->out[l];
    for (int64_t i = 0; i < cnt; i++) {
      int64_t at = d->woff[l] + i; /* the bias follows its weight */
      host[at] = (2.0f * df_rand_at(seed, sp, (uint64_t)at) - 1.0f) * bound;
    }
  }
  st = be->upload(dev, n->params, host, np);
  if (!st && nf > 0) st = be->upload(dev, n->fixed, host + np, nf);
  free(host);
  if (st) df_net_release(n);
  return st;
}

/* room for a forward of `rows` rows (and their inputs, for backward) */
static int ensure_ws(df_net *n, int64_t rows)
{
  int st;
  int64_t need = n->be->net_workspace(&n->d, rows);
  if (need > n->ws_floats) {
    free_buf(n->be, n->dev, &n->ws);
    n->ws_floats = 0;
    n->cached_rows = -1;
    if ((st = alloc_buf(n->be, n->dev, need, &n->ws))) return st;
    n->ws_floats = need;
  }
  if (rows > n->in_cap) {
    free_buf(n->be, n->dev, &n->in_x);
    free_buf(n->be, n->dev, &n->in_t);
    n->in_cap = 0;
    n->cached_rows = -1;
    if ((st = alloc_buf(n->be, n->dev, rows * n->d.dim, &n->in_x)) ||
        (st = alloc_buf(n->be, n->dev, rows, &n->in_t)))
      return st;
    n->in_cap = rows;
  }
  return DF_OK;
}

/* x as [rows, dim] (a 1-d x for dim 1) */
static int need_net(const df_net *n)
{
  return n->live ? DF_OK : df_fail(DF_ESTATE, "attempt to use a released network");
}

/* rows of x [B, dim] for n (`what`: x's name in messages); both checked live (df_need_live) */
static int net_rows_of(const df_net *n, const df_tensor *x, const char *what, int64_t *rows)
{
  char b[96];
  int st;
  if ((st = need_net(n)) || (st = df_need_live(x))) return st;
  int64_t d = x->ndim == 2 ? x->shape[1] : 1;
  if (x->ndim > 2 || d != n->d.dim || (x->ndim == 1 && n->d.dim != 1))
    return df_fail(DF_EARG, "%s must be [B, %d], got %s", what, n->d.dim,
                   df_shape_str(x->ndim, x->shape, b, sizeof b));
  if (x->be != n->be || x->dev != n->dev) {
    char s1[32], s2[32];
    return df_fail(DF_EARG, "%s is on %s but the network is on %s", what,
                   df_device_str(x->be, x->dev, s1, sizeof s1), df_device_str(n->be, n->dev, s2, sizeof s2));
  }
  *rows = x->shape[0];
  return DF_OK;
}

static int net_rows(const df_net *n, const df_tensor *x, int64_t *rows)
{
  return net_rows_of(n, x, "x", rows);
}

/* the forward into `out` (rows x dim floats on the net's device) */
static int forward_into(df_net *n, float *out, const df_tensor *x, const df_tensor *t, double t0,
                        int keep)
{
  int64_t rows = 0;
  int st;
  if ((st = net_rows(n, x, &rows))) return st;
  if (t) {
    if (!df_same_device(x, t)) return df_fail(DF_EARG, "x and t are on different devices");
    if (t->numel != rows || t->ndim > 2 || (t->ndim == 2 && t->shape[1] != 1))
      return df_fail(DF_EARG, "t must be a number or hold one time per row (%lld)", (long long)rows);
    double lo = 0.0, hi = 0.0; /* finite, as a number t must be (any sign: a net takes any time) */
    if (rows > 0 && (st = df_minmax(t, &lo, &hi))) return st;
    if (lo != lo || hi != hi) return df_fail(DF_EARG, "t must be finite (found NaN)");
    if (!isfinite(lo) || !isfinite(hi)) return df_fail(DF_EARG, "t must be finite (found %g to %g)", lo, hi);
  } else if (!isfinite(t0)) {
    return df_fail(DF_EARG, "t must be finite (got %g)", t0);
  }
  if ((st = ensure_ws(n, rows))) return st;
  n->cached_rows = -1;
  if (rows == 0) return DF_OK;
  st = n->be->net_forward(n->dev, &n->d, n->params, n->fixed, df_data(x), t ? df_data(t) : NULL,
                          (float)t0, rows, out, n->ws, keep);
  if (st || !keep) return st;
  /* keep the inputs for backward */
  if ((st = copy_buf(n->be, n->dev, n->in_x, x->be, x->dev, df_data(x), rows * n->d.dim)))
    return st;
  if (t && (st = copy_buf(n->be, n->dev, n->in_t, t->be, t->dev, df_data(t), rows))) return st;
  n->cached_rows = rows;
  n->cached_has_t = t != NULL;
  n->cached_t0 = (float)t0;
  return DF_OK;
}

int df_net_forward(df_net *n, df_tensor *out, const df_tensor *x, const df_tensor *t, double t0,
                   int keep)
{
  int64_t rows = 0;
  int st = net_rows(n, x, &rows);
  if (st) return st;
  int64_t shape[2] = { rows, n->d.dim };
  if ((st = df_tensor_alloc(out, n->be, n->dev, 2, shape))) return st;
  return forward_into(n, df_data(out), x, t, t0, keep);
}

int df_net_backward(df_net *n, const df_tensor *dout)
{
  int64_t rows = 0;
  int st;
  if (n->cached_rows < 0)
    return df_fail(DF_ESTATE, "backward needs a forward first (and nothing else using the "
                              "network in between)");
  if ((st = net_rows(n, dout, &rows))) return st;
  if (rows != n->cached_rows)
    return df_fail(DF_EARG, "grad_out has %lld rows but the last forward had %lld",
                   (long long)rows, (long long)n->cached_rows);
  if (rows == 0) return DF_OK;
  return n->be->net_backward(n->dev, &n->d, n->params, n->fixed, n->in_x,
                             n->cached_has_t ? n->in_t : NULL, n->cached_t0, rows, df_data(dout),
                             n->grads, n->ws);
}

int df_net_zero_grad(df_net *n)
{
  int st = need_net(n);
  return st ? st : n->be->fill(n->dev, n->grads, n->d.nparams, 0.0f);
}

int df_net_to(df_net *n, const df_backend *be, int dev)
{
  int st;
  if ((st = need_net(n))) return st;
  if (n->be == be && n->dev == dev) return DF_OK;
  if ((st = need_nn(be))) return st;
  df_net m = *n;
  if ((st = alloc_net(&m, be, dev))) return st;
  if ((st = copy_buf(be, dev, m.params, n->be, n->dev, n->params, n->d.nparams)) ||
      (st = copy_buf(be, dev, m.grads, n->be, n->dev, n->grads, n->d.nparams)) ||
      (st = copy_buf(be, dev, m.fixed, n->be, n->dev, n->fixed, n->d.nfixed))) {
    df_net_release(&m);
    return st;
  }
  df_net_release(n);
  *n = m;
  return DF_OK;
}

int df_net_get(const df_net *n, int which, df_tensor *out)
{
  int64_t len = which == DF_FIXED ? n->d.nfixed : n->d.nparams;
  const float *src = which == DF_PARAMS ? n->params : which == DF_GRADS ? n->grads : n->fixed;
  int st = need_net(n);
  if (st || (st = df_tensor_alloc(out, n->be, n->dev, 1, &len))) return st;
  return copy_buf(n->be, n->dev, df_data(out), n->be, n->dev, src, len);
}

int df_net_set(df_net *n, int which, const df_tensor *src)
{
  int64_t len = which == DF_FIXED ? n->d.nfixed : n->d.nparams;
  float *dst = which == DF_PARAMS ? n->params : which == DF_GRADS ? n->grads : n->fixed;
  int st;
  if ((st = need_net(n)) || (st = df_need_live(src))) return st;
  if (src->numel != len)
    return df_fail(DF_EARG, "expected %lld values, got %lld", (long long)len, (long long)src->numel);
  if (which != DF_GRADS) n->cached_rows = -1; /* (as after an Adam step) */
  return copy_buf(n->be, n->dev, dst, src->be, src->dev, df_data(src), len);
}

/* ---- the network as a score source --------------------------------------------------------- */

/* the factor a of the score (out - [x]) a at sigma^2 = s2 for an output convention: 1 / sigma
   (scaled), 1 (score), -1 / sigma (noise), 1 / sigma^2 (denoiser, x subtracted first); each
   rounded to float once, so the fused runs (net_sample) apply the very same numbers */
static int score_factor(int output, double s2, float *a)
{
  if (output == DF_OUT_SCORE) { *a = 1.0f; return DF_OK; }
  if (!(s2 > 0.0)) return df_fail(DF_EARG, "the network score is singular at t = 0 (sigma(0) = 0)");
  *a = output == DF_OUT_DENOISER ? (float)(1.0 / s2)
     : output == DF_OUT_NOISE ? -(float)(1.0 / sqrt(s2)) : (float)(1.0 / sqrt(s2));
  return DF_OK;
}

/* broadcasts of the score conventions: elementwise over n, and [rows, dim] against [rows] */
static df_bcast bcast_elem(int64_t n)
{
  df_bcast bc;
  memset(&bc, 0, sizeof bc);
  bc.shape[0] = bc.shape[1] = bc.shape[2] = 1;
  bc.shape[3] = n;
  bc.sa[3] = bc.sb[3] = 1;
  bc.n = n;
  return bc;
}

static df_bcast bcast_rows(int64_t rows, int dim)
{
  df_bcast bc;
  memset(&bc, 0, sizeof bc);
  bc.shape[0] = bc.shape[1] = 1;
  bc.shape[2] = rows;
  bc.shape[3] = dim;
  bc.sa[2] = dim;
  bc.sa[3] = 1;
  bc.sb[2] = 1;
  bc.n = rows * dim;
  return bc;
}

int df_net_score_eval(void *ctx, df_tensor *out, const df_tensor *x, float t)
{
  df_net_score *ns = (df_net_score *)ctx;
  df_net *n = ns->net;
  float a = 1.0f;
  if (!n->live) return df_fail(DF_ESTATE, "attempt to use a released network");
  int st = score_factor(n->output, df_diffuser_sigma2_host(&ns->diff, (double)t), &a);
  if (st || (st = forward_into(n, df_data(out), x, NULL, (double)t, 0))) return st; /* out is like x */
  if (n->output == DF_OUT_SCORE || out->numel == 0) return DF_OK;
  if (n->output == DF_OUT_DENOISER) {
    df_bcast bc = bcast_elem(out->numel); /* out - x */
    if ((st = out->be->binary(out->dev, DF_SUB, df_data(out), df_data(out), df_data(x), &bc)))
      return st;
  }
  return out->be->binary_scalar(out->dev, DF_MUL, df_data(out), df_data(out), a, 0, out->numel);
}

/* a whole sampler run in one backend call (net_sample), when the device has one: the times and
   1 / sigma(t) of every evaluation computed here exactly as df_net_score_eval does, so the result
   is bitwise that of stepping through df_net_score_eval */
int df_net_score_run(void *ctx, const df_plan *p, df_tensor *x, int nrec, const int64_t *rec_k,
                     float *const *rec_out, uint64_t seed, uint64_t stream, int *done)
{
  df_net_score *ns = (df_net_score *)ctx;
  df_net *n = ns->net;
  int64_t rows = 0, steps = p->steps;
  int st;
  *done = 0;
  if (!n->live) return df_fail(DF_ESTATE, "attempt to use a released network");
  if (!n->be->net_sample || x->be != n->be || x->dev != n->dev) return DF_OK; /* step through */
  if ((st = net_rows(n, x, &rows))) return st;
  float *tab = (float *)malloc((size_t)(2 * (steps + 1)) * sizeof(float));
  if (!tab) return df_fail(DF_ENOMEM, "out of memory for %lld sampler steps", (long long)steps);
  float *tk = tab, *inv = tab + steps + 1;
  for (int64_t k = 0; k <= steps; k++) { /* evaluations happen at t_0 .. t_(steps - 1) */
    tk[k] = p->t[k]; /* (the plan's grid, as the step-by-step path passes it) */
    inv[k] = 0.0f;
    if (k < steps && (st = score_factor(n->output, df_diffuser_sigma2_host(&ns->diff, (double)tk[k]),
                                        &inv[k]))) {
      free(tab);
      return st;
    }
  }
  df_plan q = *p;
  q.t = tk;
  q.inv_sigma = inv;
  q.denoise = n->output == DF_OUT_DENOISER;
  if (!(st = ensure_ws(n, rows))) {
    n->cached_rows = -1; /* the workspace no longer holds a forward to go backward from */
    if (rows > 0)
      st = n->be->net_sample(n->dev, &n->d, n->params, n->fixed, &q, df_data(x), rows, nrec,
                             rec_k, rec_out, seed, stream, n->ws, done);
    else
      *done = 1;
  }
  free(tab);
  if (st) *done = 0;
  return st;
}

/* out (allocated like x) = the score at one time per row: the forward, then the convention's
   factor per row, divisions by sigma(t_r) (the per-row widths in ns->sig, kept between calls so
   a solver's loop allocates nothing) */
int df_net_score_eval_rows(void *ctx, df_tensor *out, const df_tensor *x, const df_tensor *t)
{
  df_net_score *ns = (df_net_score *)ctx;
  df_net *n = ns->net;
  int64_t rows = 0;
  int st;
  if (!n->live) return df_fail(DF_ESTATE, "attempt to use a released network");
  if ((st = net_rows(n, x, &rows)) || (st = df_need_live(t))) return st;
  if (t->numel != rows) return df_fail(DF_EARG, "t must hold one time per row (%lld)", (long long)rows);
  if (!df_same_device(x, t)) return df_fail(DF_EARG, "x and t are on different devices");
  if ((st = forward_into(n, df_data(out), x, t, 0.0, 0))) return st;
  if (rows == 0 || n->output == DF_OUT_SCORE) return DF_OK;
  if (!df_is_live(&ns->sig) || ns->sig.numel < rows || ns->sig.be != x->be || ns->sig.dev != x->dev) {
    df_tensor_release(&ns->sig);
    if ((st = df_tensor_alloc(&ns->sig, x->be, x->dev, 1, &rows))) return st;
  }
  float *sig = df_data(&ns->sig);
  if ((st = x->be->diffuser_eval(x->dev, &ns->diff, DF_SIGMA, sig, df_data(t), rows))) return st;
  double lo, hi;
  df_tensor view = ns->sig;
  view.numel = rows;
  view.shape[0] = rows;
  if ((st = df_minmax(&view, &lo, &hi))) return st;
  if (!(lo > 0.0)) return df_fail(DF_EARG, "the network score is singular at t = 0 (sigma(0) = 0)");
  const int output = n->output;
  df_bcast bc = bcast_rows(rows, n->d.dim); /* out / sigma per row (twice for a denoiser) */
  if (output == DF_OUT_DENOISER) {
    df_bcast be = bc; /* out - x, elementwise */
    be.sb[2] = n->d.dim;
    be.sb[3] = 1;
    if ((st = out->be->binary(out->dev, DF_SUB, df_data(out), df_data(out), df_data(x), &be)) ||
        (st = out->be->binary(out->dev, DF_DIV, df_data(out), df_data(out), sig, &bc)))
      return st;
  }
  st = out->be->binary(out->dev, DF_DIV, df_data(out), df_data(out), sig, &bc);
  if (!st && output == DF_OUT_NOISE)
    st = out->be->binary_scalar(out->dev, DF_MUL, df_data(out), df_data(out), -1.0f, 0, out->numel);
  return st;
}

/* ---- Jacobians ------------------------------------------------------------------------------------- */

static const char *const act_text[] = { "silu", "relu", "tanh", "gelu" };

/* the graph a net's Jacobian runs on: its own, or the seed's nets spelled out as graphs (the
   same parameter and frequency layout, so the same numbers) */
static int jvp_desc(df_net *n, df_netdesc *d)
{
  if (n->d.kind == DF_NET_GRAPH) {
    *d = n->d;
    return DF_OK;
  }
  if (!n->shadow) {
    const df_netdesc *nd = &n->d;
    char *text = (char *)malloc(4096 + 64 * (size_t)nd->nlin);
    if (!text) return df_fail(DF_ENOMEM, "out of memory");
    int pos = sprintf(text, "diffuse.net 1\ndim %d\n", nd->dim);
    for (int l = 0; l < nd->nlin; l++) pos += sprintf(text + pos, "layer %d %d 1\n", nd->in[l], nd->out[l]);
    pos += sprintf(text + pos, "node x\nnode t\n");
    const char *act = act_text[nd->act];
    if (nd->kind == DF_NET_MLP) { /* cat(x, t), then Linear act ... Linear */
      pos += sprintf(text + pos, "node cat 2 1 2\n");
      int last = 3;
      for (int l = 0; l < nd->nlin; l++) {
        pos += sprintf(text + pos, "node linear %d %d\n", last, l + 1);
        last++;
        if (l + 1 < nd->nlin) { pos += sprintf(text + pos, "node %s %d\n", act, last); last++; }
      }
      sprintf(text + pos, "output %d\n", last);
    } else { /* the time branch, the x branch, summed, act, Linear */
      sprintf(text + pos, "node fourier 2 gauss %d %.17g\nnode linear 3 1\nnode %s 4\nnode linear 1 2\n"
              "node add 6 5\nnode %s 7\nnode linear 8 3\noutput 9\n", nd->embed / 2, n->scale, act, act);
    }
    int st = df_graph_parse(text, &n->shadow);
    free(text);
    if (st) return st;
  }
  return df_netdesc_graph(d, n->shadow);
}

int df_net_jvp(df_net *n, const df_tensor *x, const df_tensor *t, double t0, int nv,
               const float *const *v, float *const *out)
{
  int64_t rows = 0;
  int st;
  df_netdesc d;
  if ((st = net_rows(n, x, &rows))) return st;
  if (!n->be->net_jvp || !n->be->net_jvp_workspace)
    return df_fail(DF_EDEVICE, "network Jacobians are not implemented on %s", n->be->name);
  if (t && (t->numel != rows || !df_same_device(x, t)))
    return df_fail(DF_EARG, "t must be a number or hold one time per row (%lld)", (long long)rows);
  if (rows == 0) return DF_OK;
  if ((st = jvp_desc(n, &d))) return st;
  int64_t need = n->be->net_jvp_workspace(&d, rows);
  if (need > n->jws_floats) {
    free_buf(n->be, n->dev, &n->jws);
    n->jws_floats = 0;
    if ((st = alloc_buf(n->be, n->dev, need, &n->jws))) return st;
    n->jws_floats = need;
  }
  return n->be->net_jvp(n->dev, &d, n->params, n->fixed, df_data(x), t ? df_data(t) : NULL, (float)t0,
                        rows, nv, v, out, n->jws);
}

int df_net_score_jvp(void *ctx, int nv, float *const *out, const float *const *v,
                     const df_tensor *x, const df_tensor *t, float t0)
{
  df_net_score *ns = (df_net_score *)ctx;
  df_net *n = ns->net;
  int st;
  if (!n->live) return df_fail(DF_ESTATE, "attempt to use a released network");
  if ((st = df_net_jvp(n, x, t, (double)t0, nv, v, out))) return st;
  const int output = n->output;
  const int64_t rows = x->shape[0], N = x->numel;
  if (output == DF_OUT_SCORE || N == 0) return DF_OK;
  const df_backend *be = x->be;
  df_bcast elem = bcast_elem(N);
  if (!t) { /* one factor for all rows, as df_net_score_eval */
    float a = 1.0f;
    if ((st = score_factor(output, df_diffuser_sigma2_host(&ns->diff, (double)t0), &a))) return st;
    for (int j = 0; j < nv && !st; j++) {
      if (output == DF_OUT_DENOISER) st = be->binary(x->dev, DF_SUB, out[j], out[j], v[j], &elem);
      if (!st) st = be->binary_scalar(x->dev, DF_MUL, out[j], out[j], a, 0, N);
    }
    return st;
  }
  if (!df_is_live(&ns->sig) || ns->sig.numel < rows || ns->sig.be != x->be || ns->sig.dev != x->dev) {
    df_tensor_release(&ns->sig);
    if ((st = df_tensor_alloc(&ns->sig, x->be, x->dev, 1, &rows))) return st;
  }
  float *sig = df_data(&ns->sig);
  if ((st = be->diffuser_eval(x->dev, &ns->diff, DF_SIGMA, sig, df_data(t), rows))) return st;
  df_bcast bc = bcast_rows(rows, n->d.dim); /* [rows, dim] / sigma [rows] per row */
  for (int j = 0; j < nv && !st; j++) {
    if (output == DF_OUT_DENOISER) {
      if (!(st = be->binary(x->dev, DF_SUB, out[j], out[j], v[j], &elem)))
        st = be->binary(x->dev, DF_DIV, out[j], out[j], sig, &bc);
    }
    if (!st) st = be->binary(x->dev, DF_DIV, out[j], out[j], sig, &bc);
    if (!st && output == DF_OUT_NOISE) st = be->binary_scalar(x->dev, DF_MUL, out[j], out[j], -1.0f, 0, N);
  }
  return st;
}

/* ---- Adam ------------------------------------------------------------------------------------ */

void df_adam_release(df_adam *o)
{
  if (!o->live) return;
  free_buf(o->be, o->dev, &o->m);
  free_buf(o->be, o->dev, &o->v);
  o->live = 0;
}

/* the update runs in float32: lr and weight_decay must stay finite there, and eps a normal
   positive float (as 0 it would divide 0 by 0 where a gradient is 0) */
int df_adam_check_lr(double lr)
{
  if (!(lr > 0.0) || !(lr <= FLT_MAX))
    return df_fail(DF_EARG, "lr must be positive and finite in float32 (got %g)", lr);
  return DF_OK;
}

int df_adam_create(df_adam *o, const df_net *n, double lr, double b1, double b2, double eps,
                   double wd)
{
  int st;
  memset(o, 0, sizeof *o);
  if ((st = df_adam_check_lr(lr))) return st;
  if (!(b1 >= 0.0 && b1 < 1.0) || !(b2 >= 0.0 && b2 < 1.0))
    return df_fail(DF_EARG, "betas must be in [0, 1) (got %g and %g)", b1, b2);
  if (!(eps >= FLT_MIN) || !(eps <= FLT_MAX))
    return df_fail(DF_EARG, "eps must be positive, from about 1.2e-38 to 3.4e38 (got %g)", eps);
  if (!(wd >= 0.0) || !(wd <= FLT_MAX))
    return df_fail(DF_EARG, "weight_decay must be >= 0 and finite in float32 (got %g)", wd);
  o->lr = lr; o->b1 = b1; o->b2 = b2; o->eps = eps; o->wd = wd;
  o->n = n->d.nparams;
  o->be = n->be;
  o->dev = n->dev;
  o->live = 1;
  if ((st = alloc_buf(o->be, o->dev, o->n, &o->m)) || (st = alloc_buf(o->be, o->dev, o->n, &o->v)) ||
      (st = o->be->fill(o->dev, o->m, o->n, 0.0f)) || (st = o->be->fill(o->dev, o->v, o->n, 0.0f))) {
    df_adam_release(o);
    return st;
  }
  return DF_OK;
}

/* the optimizer's state follows its network to whatever device the network is on */
static int adam_follow(df_adam *o, const df_net *n)
{
  int st;
  if ((st = need_net(n))) return st;
  if (!o->live) return df_fail(DF_ESTATE, "attempt to use a released optimizer");
  if (o->n != n->d.nparams)
    return df_fail(DF_EARG, "the optimizer was made for %lld parameters, the network has %lld",
                   (long long)o->n, (long long)n->d.nparams);
  if (o->be == n->be && o->dev == n->dev) return DF_OK;
  df_adam p = *o;
  p.be = n->be;
  p.dev = n->dev;
  p.m = p.v = NULL;
  if ((st = alloc_buf(p.be, p.dev, p.n, &p.m)) || (st = alloc_buf(p.be, p.dev, p.n, &p.v)) ||
      (st = copy_buf(p.be, p.dev, p.m, o->be, o->dev, o->m, o->n)) ||
      (st = copy_buf(p.be, p.dev, p.v, o->be, o->dev, o->v, o->n))) {
    df_adam_release(&p);
    return st;
  }
  df_adam_release(o);
  *o = p;
  return DF_OK;
}

int df_adam_set_schedule(df_adam *o, const df_schedule *s)
{
  if (s->warmup < 0 || s->warmup > DF_MAX_STEPS)
    return df_fail(DF_EARG, "schedule.warmup must be a whole number from 0 to 2^53 (got %lld)",
                   (long long)s->warmup);
  if (s->decay < DF_DECAY_NONE || s->decay > DF_DECAY_LINEAR)
    return df_fail(DF_EARG, "schedule.decay must be 'cosine', 'linear' or 'none'");
  if (s->decay != DF_DECAY_NONE && (s->total <= s->warmup || s->total > DF_MAX_STEPS))
    return df_fail(DF_EARG, "schedule.steps (%lld) must be more than schedule.warmup (%lld)",
                   (long long)s->total, (long long)s->warmup);
  if (!(s->min_lr >= 0.0) || !(s->min_lr <= o->lr))
    return df_fail(DF_EARG, "schedule.min_lr must be from 0 to lr (%g) (got %g)", o->lr, s->min_lr);
  o->sched = *s;
  return DF_OK;
}

/* the lr of step t (1-based): a linear warmup, then the decay to min_lr at sched.total */
double df_adam_lr(const df_adam *o, int64_t t)
{
  const df_schedule *s = &o->sched;
  if (s->warmup > 0 && t <= s->warmup) return o->lr * (double)t / (double)s->warmup;
  if (s->decay == DF_DECAY_NONE) return o->lr;
  double p = (double)(t - s->warmup) / (double)(s->total - s->warmup);
  if (p > 1.0) p = 1.0;
  double f = s->decay == DF_DECAY_COSINE ? 0.5 * (1.0 + cos(3.14159265358979323846 * p)) : 1.0 - p;
  return s->min_lr + (o->lr - s->min_lr) * f;
}

static df_adam_hp adam_constants(const df_adam *o)
{
  df_adam_hp hp;
  double t = (double)o->t; /* steps taken, this one included */
  hp.b1 = (float)o->b1;
  hp.b2 = (float)o->b2;
  hp.eps = (float)o->eps;
  hp.wd = (float)o->wd;
  hp.step = (float)(df_adam_lr(o, o->t) / (1.0 - pow(o->b1, t)));
  hp.sqrt_bc2 = (float)sqrt(1.0 - pow(o->b2, t));
  return hp;
}

int df_adam_step(df_adam *o, df_net *n)
{
  int st = adam_follow(o, n);
  if (st) return st;
  if (o->t >= DF_MAX_STEPS) return df_fail(DF_EARG, "the optimizer has taken 2^53 steps");
  n->cached_rows = -1; /* a backward after this would be at other parameters than its forward's
                          (the CPU keeps the activations, CUDA's fused path recomputes them) */
  o->t++;
  df_adam_hp hp = adam_constants(o);
  return n->be->adam(n->dev, n->params, n->grads, o->m, o->v, o->n, &hp);
}

/* ---- DSM and training ------------------------------------------------------------------------ */

static int check_tol(double tol)
{
  if (!(tol >= 0.0 && tol < 1.0)) return df_fail(DF_EARG, "tol must be in [0, 1) (got %g)", tol);
  return DF_OK;
}

/* a DSM job over `batch` rows of data, from the next streams (index stream only if sampling) */
static void dsm_job(df_dsm *job, const df_net *n, const df_diffuser *D, const df_tensor *data,
                    int64_t batch, double tol, int weighting)
{
  uint64_t unused;
  memset(job, 0, sizeof *job);
  job->diff = *D;
  job->output = n->output;
  job->weighting = weighting;
  job->data = df_data(data);
  job->data_rows = data->shape[0];
  job->batch = batch;
  job->sample = batch != data->shape[0];
  job->tol = (float)tol;
  df_rng_state(&job->seed, &unused);
  if (job->sample) job->st_idx = df_rng_next_stream();
  job->st_t = df_rng_next_stream();
  job->st_eta = df_rng_next_stream();
}

/* NaN data would make a step's loss NaN, applied before it is seen */
static int check_data(const df_tensor *x, const char *what)
{
  double lo, hi;
  int st = df_minmax(x, &lo, &hi);
  if (st) return st;
  if (!isfinite(lo) || !isfinite(hi)) return df_fail(DF_EARG, "%s holds NaN or infinite values", what);
  return DF_OK;
}

/* the weightings and output conventions that divide by sigma need t > 0: tol > 0 */
int df_check_weighting(int weighting, int output, double tol)
{
  if (weighting < 0 || weighting >= DF_NWEIGHT)
    return df_fail(DF_EARG, "weighting must be 'sigma2', 'likelihood' or 'none'");
  if (!(tol > 0.0) && (weighting != DF_W_SIGMA2 || output == DF_OUT_DENOISER))
    return df_fail(DF_EARG, "tol must be positive for %s (its loss divides by sigma(t))",
                   weighting == DF_W_LIKELIHOOD ? "weighting 'likelihood'"
                   : weighting == DF_W_NONE ? "weighting 'none'" : "a denoiser's output");
  return DF_OK;
}

int df_dsm_loss(df_net *n, const df_diffuser *D, const df_tensor *x0, double tol, int weighting,
                double *loss)
{
  int64_t rows = 0;
  int st;
  df_dsm job;
  if ((st = check_tol(tol)) || (st = net_rows_of(n, x0, "x0", &rows)) ||
      (st = df_check_weighting(weighting, n->output, tol)))
    return st;
  if (rows < 1) return df_fail(DF_EARG, "x0 has no rows");
  if ((st = check_data(x0, "x0"))) return st;
  if ((st = ensure_ws(n, rows))) return st;
  n->cached_rows = -1;
  dsm_job(&job, n, D, x0, rows, tol, weighting);
  float l;
  if ((st = n->be->dsm_step(n->dev, &n->d, n->params, n->fixed, n->grads, &job, n->loss, n->ws)) ||
      (st = n->be->download(n->dev, &l, n->loss, 1)))
    return st;
  *loss = (double)l;
  return DF_OK;
}

static double wall(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* the first non-finite loss among losses[from, to) */
static int check_losses(const df_tensor *losses, int64_t from, int64_t to, float *host)
{
  int st;
  if (to <= from) return DF_OK;
  if ((st = losses->be->download(losses->dev, host, df_data(losses) + from, to - from))) return st;
  for (int64_t i = 0; i < to - from; i++)
    if (!isfinite(host[i]))
      return df_fail(DF_EARG, "training diverged at step %lld: loss = %g", (long long)(from + i + 1),
                     (double)host[i]);
  return DF_OK;
}

/* the global gradient norm clipped to at most clip, as torch.nn.utils.clip_grad_norm_:
   grads *= clip / (norm + 1e-6) when that is below 1 */
int df_net_clip_grads(df_net *n, double clip)
{
  double ss;
  int st = n->be->reduce_all(n->dev, DF_RSSD, n->grads, n->d.nparams, 0.0, &ss);
  if (st) return st;
  double coef = clip / (sqrt(ss) + 1e-6);
  if (!(coef < 1.0)) return DF_OK; /* (a NaN norm is left to the loss check) */
  return n->be->binary_scalar(n->dev, DF_MUL, n->grads, n->grads, (float)coef, 0, n->d.nparams);
}

/* an EMA net must mirror the trained one */
int df_net_check_ema(const df_net *n, const df_net *e)
{
  if (!e) return DF_OK;
  if (!e->live) return df_fail(DF_ESTATE, "attempt to use a released EMA network");
  if (e->d.nparams != n->d.nparams || e->be != n->be || e->dev != n->dev)
    return df_fail(DF_EARG, "the EMA network does not match the network (parameters or device)");
  return DF_OK;
}

int df_train(df_net *n, df_adam *o, const df_diffuser *D, const df_tensor *data,
             const df_train_opts *opts, df_tensor *losses)
{
  int64_t rows = 0, steps = opts->steps, batch = opts->batch;
  const double tol = opts->tol;
  df_net *ema = opts->ema;
  int st;
  if ((st = check_tol(tol)) || (st = net_rows_of(n, data, "data", &rows))) return st;
  if (rows < 1) return df_fail(DF_EARG, "data has no rows");
  if (steps < 0 || steps > DF_MAX_STEPS)
    return df_fail(DF_EARG, "steps must be in 0..2^53 (got %lld)", (long long)steps);
  if (batch < 1 || batch > DF_MAX_NUMEL)
    return df_fail(DF_EARG, "batch must be in 1..2^40 (got %lld)", (long long)batch);
  if (!(opts->clip >= 0.0) || !(opts->clip <= FLT_MAX))
    return df_fail(DF_EARG, "clip must be a positive number (got %g)", opts->clip);
  if ((st = df_check_weighting(opts->weighting, n->output, tol))) return st;
  if (ema && !(o->ema > 0.0 && o->ema < 1.0))
    return df_fail(DF_EARG, "ema must be a decay in (0, 1) (got %g)", o->ema);
  if (ema && ema->live && (ema->be != n->be || ema->dev != n->dev) &&
      (st = df_net_to(ema, n->be, n->dev))) /* (the EMA follows its net, as Adam's state) */
    return st;
  if ((st = df_net_check_ema(n, ema))) return st;
  if ((st = check_data(data, "data"))) return st;
  if (o->t > DF_MAX_STEPS - steps)
    return df_fail(DF_EARG, "the optimizer has taken %lld steps: %lld more would pass 2^53",
                   (long long)o->t, (long long)steps);
  if ((st = adam_follow(o, n)) || (st = ensure_ws(n, batch))) return st;
  if ((st = df_tensor_alloc(losses, n->be, n->dev, 1, &steps))) return st;
  n->cached_rows = -1;
  /* losses are checked in chunks, so a GPU is not synchronised every step */
  const int64_t chunk = n->be == &df_cpu_backend ? 1 : 256;
  float host[256], step_size[256], sqrt_bc2[256];
  int64_t checked = 0;
  double last = wall();
  for (int64_t k = 0; k < steps;) {
    int64_t len = steps - k < chunk ? steps - k : chunk;
    if (n->be->train_steps) { /* the device runs the whole chunk */
      df_train_job tj;
      memset(&tj, 0, sizeof tj);
      dsm_job(&tj.dsm, n, D, data, batch, tol, opts->weighting);
      tj.nstreams = tj.dsm.sample ? 3 : 2;
      for (int64_t j = tj.nstreams; j < len * tj.nstreams; j++) df_rng_next_stream(); /* the chunk's */
      for (int64_t j = 0; j < len; j++) {
        o->t++;
        df_adam_hp hp = adam_constants(o);
        step_size[j] = hp.step;
        sqrt_bc2[j] = hp.sqrt_bc2;
      }
      tj.steps = len;
      tj.step_size = step_size;
      tj.sqrt_bc2 = sqrt_bc2;
      tj.b1 = (float)o->b1; tj.b2 = (float)o->b2; tj.eps = (float)o->eps; tj.wd = (float)o->wd;
      tj.clip = (float)opts->clip;
      tj.ema = ema ? ema->params : NULL;
      tj.ema_decay = (float)o->ema;
      if ((st = n->be->train_steps(n->dev, &n->d, n->params, n->fixed, n->grads, o->m, o->v, &tj,
                                   df_data(losses) + k, n->ws)))
        return st;
    } else {
      for (int64_t j = k; j < k + len; j++) {
        df_dsm job;
        dsm_job(&job, n, D, data, batch, tol, opts->weighting);
        if ((st = n->be->fill(n->dev, n->grads, n->d.nparams, 0.0f)) ||
            (st = n->be->dsm_step(n->dev, &n->d, n->params, n->fixed, n->grads, &job,
                                  df_data(losses) + j, n->ws)))
          return st;
        if (opts->clip > 0.0 && (st = df_net_clip_grads(n, opts->clip))) return st;
        o->t++;
        df_adam_hp hp = adam_constants(o);
        if ((st = n->be->adam(n->dev, n->params, n->grads, o->m, o->v, o->n, &hp))) return st;
        if (ema && (st = n->be->ema(n->dev, ema->params, n->params, n->d.nparams, (float)o->ema)))
          return st;
      }
    }
    k += len;
    if ((st = check_losses(losses, checked, k, host))) return st;
    checked = k;
    if (opts->progress && (k == steps || wall() - last >= opts->every)) {
      float l;
      if ((st = n->be->download(n->dev, &l, df_data(losses) + k - 1, 1))) return st;
      if ((st = opts->progress(opts->ctx, k, steps, (double)l))) return st;
      /* the progress function may have used the net (a forward of another size reallocates its
         workspace, and a failed allocation leaves none) */
      if ((st = ensure_ws(n, batch)) || (st = df_net_check_ema(n, ema))) return st;
      n->cached_rows = -1; /* (the steps reuse the workspace a forward there kept) */
      if (ema) ema->cached_rows = -1;
      last = wall();
    }
  }
  if (ema) ema->cached_rows = -1; /* (its parameters moved) */
  return DF_OK;
}

int df_net_clone(df_net *dst, const df_net *n)
{
  int st;
  if ((st = need_net(n))) return st;
  if ((st = df_net_alloc(dst, &n->d, n->scale, n->be, n->dev))) return st;
  dst->output = n->output;
  if ((st = copy_buf(n->be, n->dev, dst->params, n->be, n->dev, n->params, n->d.nparams)) ||
      (st = copy_buf(n->be, n->dev, dst->fixed, n->be, n->dev, n->fixed, n->d.nfixed)))
    df_net_release(dst);
  return st;
}
