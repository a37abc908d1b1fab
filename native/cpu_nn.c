/* cpu_nn.c: score networks on the CPU, through the layer kernels of cpu_layers.h over tiles
 * of TILE rows held feature-major (the seed's two nets here; traced graphs in cpu_graph.c, which
 * these entry points call for them). A network's forward and backward run tile by tile, so a tile's activations stay
 * in cache; a DSM step draws, runs forward, the loss and backward for each tile in one pass.
 * Gradients are summed per partition of tiles (NPART, fixed) and then across partitions in
 * order, so the result never depends on how many threads share the work. */
#include <stdlib.h>
#include <string.h>
#include "status.h"
#include "cpu.h"
#include "cpu_layers.h"
#include "graph.h"

#define NPART 8   /* gradient partitions */
#define PAR_ROWS 512 /* smaller batches stay on one thread */

/* ---- the per-tile frame: everything one tile's forward leaves for its backward ------------- */

/* MLP:  in0 [dim+1], then per Linear l: z_l [out_l], and for hidden layers aux_l, h_l
   TEMB: x [dim], t [1], f [embed], ze, ae, e, u, v, av, h [H each], out [dim]
   GRAPH: the graph's buffers at the offsets its parse laid out (base); x, t, out point into it
   (sizes in features; each feature is TILE floats) */
typedef struct {
  float *in0, *z[DF_MAXLIN], *aux[DF_MAXLIN], *h[DF_MAXLIN];       /* MLP */
  float *x, *t, *f, *ze, *ae, *e, *u, *v, *av, *hh, *out;           /* TEMB (x, t, out: all) */
  float *base;                                                      /* GRAPH */
} frame;

/* x and t of a tile as the net reads them */
static float *frame_x(const df_netdesc *nd, const frame *f) { return nd->kind == DF_NET_MLP ? f->in0 : f->x; }
static float *frame_t(const df_netdesc *nd, const frame *f)
{
  return nd->kind == DF_NET_MLP ? f->in0 + nd->dim * TILE : f->t;
}

static int64_t frame_floats(const df_netdesc *nd)
{
  int64_t n = 0;
  if (nd->kind == DF_NET_GRAPH) {
    n = nd->graph->frame;
  } else if (nd->kind == DF_NET_MLP) {
    n += nd->in[0];
    for (int l = 0; l < nd->nlin; l++) n += l + 1 < nd->nlin ? 3 * nd->out[l] : nd->out[l];
  } else {
    int H = nd->out[0];
    n += nd->dim + 1 + nd->embed + 7 * H + nd->dim;
  }
  return n * TILE;
}

static frame frame_at(const df_netdesc *nd, float *p)
{
  frame f;
  memset(&f, 0, sizeof f);
  if (nd->kind == DF_NET_GRAPH) {
    const df_graph *g = nd->graph;
    f.base = p;
    f.x = p + g->nodes[0].val * TILE;
    f.t = p + g->nodes[1].val * TILE;
    f.out = p + g->nodes[g->out].val * TILE;
  } else if (nd->kind == DF_NET_MLP) {
    f.in0 = p; p += nd->in[0] * TILE;
    for (int l = 0; l < nd->nlin; l++) {
      f.z[l] = p; p += nd->out[l] * TILE;
      if (l + 1 < nd->nlin) {
        f.aux[l] = p; p += nd->out[l] * TILE;
        f.h[l] = p; p += nd->out[l] * TILE;
      }
    }
    f.out = f.z[nd->nlin - 1];
  } else {
    int H = nd->out[0];
    f.x = p; p += nd->dim * TILE;
    f.t = p; p += TILE;
    f.f = p; p += nd->embed * TILE;
    f.ze = p; p += H * TILE;
    f.ae = p; p += H * TILE;
    f.e = p; p += H * TILE;
    f.u = p; p += H * TILE;
    f.v = p; p += H * TILE;
    f.av = p; p += H * TILE;
    f.hh = p; p += H * TILE;
    f.out = p;
  }
  return f;
}

/* the inputs of a tile: rows r0 .. r0 + m - 1 of x [rows, dim] and of t (or t0), zero padded */
static void load_inputs(const df_netdesc *nd, const frame *f, const float *x, const float *t,
                        float t0, int64_t r0, int m)
{
  int d = nd->dim;
  float *xs = frame_x(nd, f), *ts = frame_t(nd, f);
  for (int c = 0; c < d; c++)
    for (int r = 0; r < TILE; r++) xs[c * TILE + r] = r < m ? x[(r0 + r) * d + c] : 0.0f;
  for (int r = 0; r < TILE; r++) ts[r] = r < m ? (t ? t[r0 + r] : t0) : 0.0f;
}

/* forward of one tile whose inputs are loaded; the output ends in f->out [dim][T]. With
   `time_done`, the time-embedded net's time branch (f->e) or a graph's frontier is already
   filled (one t for the whole batch: computed once, see cpu_net_forward); without `keep`
   nothing goes backward from it, so the activations' aux values are not stored */
static void tile_forward_part(const df_netdesc *nd, const float *params, const float *fixed,
                              const frame *f, int time_done, int keep)
{
  if (nd->kind == DF_NET_GRAPH) {
    cpu_graph_forward(nd->graph, params, fixed, f->base, keep, time_done);
    return;
  }
  const float *W[DF_MAXLIN], *B[DF_MAXLIN];
  for (int l = 0; l < nd->nlin; l++) { W[l] = params + nd->woff[l]; B[l] = params + nd->boff[l]; }
  if (nd->kind == DF_NET_MLP) {
    const float *in = f->in0;
    for (int l = 0; l < nd->nlin; l++) {
#ifdef HAVE_SILU_R
      if (!keep && l + 1 < nd->nlin && nd->act == DF_ACT_SILU && nd->out[l] % OB == 0) {
        linear_silu_forward(f->h[l], in, W[l], B[l], nd->in[l], nd->out[l]);
        in = f->h[l];
        continue;
      }
#endif
      linear_forward(f->z[l], in, W[l], B[l], nd->in[l], nd->out[l]);
      if (l + 1 < nd->nlin) {
        act_forward(nd->act, f->h[l], keep ? f->aux[l] : NULL, f->z[l], nd->out[l] * TILE);
        in = f->h[l];
      }
    }
    return;
  }
  int H = nd->out[0];
  if (!time_done) {
    fourier_forward(f->f, f->t, fixed, nd->embed / 2);
    linear_forward(f->ze, f->f, W[0], B[0], nd->embed, H);     /* time: Linear(embed, H) */
    act_forward(nd->act, f->e, f->ae, f->ze, H * TILE);          /*       then the activation */
  }
  linear_forward(f->u, f->x, W[1], B[1], nd->dim, H);         /* x:    Linear(dim, H) */
  add_forward(f->v, f->e, f->u, H * TILE);                     /* summed */
  act_forward(nd->act, f->hh, keep ? f->av : NULL, f->v, H * TILE);
  linear_forward(f->out, f->hh, W[2], B[2], H, nd->dim);      /* out:  Linear(H, dim) */
}

static void tile_forward(const df_netdesc *nd, const float *params, const float *fixed,
                         const frame *f)
{
  tile_forward_part(nd, params, fixed, f, 0, 1);
}

/* backward of one tile from dout [dim][T]; gradients accumulate into g; d1, d2 are scratch of
   maxw features each */
static void tile_backward(const df_netdesc *nd, const float *params, const float *fixed,
                          const frame *f, const float *dout, float *g, float *d1, float *d2)
{
  if (nd->kind == DF_NET_GRAPH) {
    cpu_graph_backward(nd->graph, params, fixed, f->base, dout, g, d1);
    return;
  }
  const float *W[DF_MAXLIN];
  for (int l = 0; l < nd->nlin; l++) W[l] = params + nd->woff[l];
  if (nd->kind == DF_NET_MLP) {
    const float *dz = dout;
    for (int l = nd->nlin - 1; l >= 0; l--) {
      const float *in = l > 0 ? f->h[l - 1] : f->in0;
      float *dh = l == 0 ? NULL : dz == d1 ? d2 : d1; /* never the buffer dz is in; none for x, t */
      int fuse = l > 0 && nd->act == DF_ACT_SILU;
      linear_backward(dh, g + nd->woff[l], g + nd->boff[l], dz, in, W[l], nd->in[l], nd->out[l],
                      fuse ? f->z[l - 1] : NULL, fuse ? f->aux[l - 1] : NULL);
      if (l > 0) {
        if (!fuse) act_backward(nd->act, dh, dh, f->z[l - 1], f->aux[l - 1], nd->out[l - 1] * TILE);
        dz = dh;
      }
    }
    return;
  }
  int H = nd->out[0];
  if (nd->act == DF_ACT_SILU) { /* dv (it goes to both branches), silu's derivative fused */
    linear_backward(d2, g + nd->woff[2], g + nd->boff[2], dout, f->hh, W[2], H, nd->dim, f->v, f->av);
  } else {
    linear_backward(d1, g + nd->woff[2], g + nd->boff[2], dout, f->hh, W[2], H, nd->dim, NULL, NULL);
    act_backward(nd->act, d2, d1, f->v, f->av, H * TILE);
  }
  linear_backward(NULL, g + nd->woff[1], g + nd->boff[1], d2, f->x, W[1], nd->dim, H, NULL, NULL);
  act_backward(nd->act, d1, d2, f->ze, f->ae, H * TILE);    /* dze */
  linear_backward(NULL, g + nd->woff[0], g + nd->boff[0], d1, f->f, W[0], nd->embed, H, NULL, NULL);
}

/* ---- workspace -------------------------------------------------------------------------------- */

/* frames for every tile (or NPART when nothing is kept), then per partition: two backward
   scratch blocks and a gradient accumulator */
static int64_t ntiles_of(int64_t rows) { return (rows + TILE - 1) / TILE; }

static int64_t time_row_floats(const df_netdesc *nd);

/* (and, last, one row of the values that depend on t alone: a forward at one time) */
int64_t cpu_net_workspace(const df_netdesc *nd, int64_t rows)
{
  int64_t nt = ntiles_of(rows);
  return (nt > NPART ? nt : NPART) * frame_floats(nd) +
         NPART * (2 * (int64_t)nd->maxw * TILE + nd->nparams) + time_row_floats(nd);
}

static float *time_row_of(const df_netdesc *nd, float *ws, int64_t rows)
{
  return ws + cpu_net_workspace(nd, rows) - time_row_floats(nd);
}

static float *part_scratch(const df_netdesc *nd, float *ws, int64_t rows, int p)
{
  int64_t nt = ntiles_of(rows);
  float *base = ws + (nt > NPART ? nt : NPART) * frame_floats(nd);
  return base + p * (2 * (int64_t)nd->maxw * TILE + nd->nparams);
}

/* tiles [lo, hi) of partition p */
static void part_range(int64_t nt, int p, int64_t *lo, int64_t *hi)
{
  *lo = nt * p / NPART;
  *hi = nt * (p + 1) / NPART;
}

/* grads += the partitions' sums, in order */
static void add_partitions(const df_netdesc *nd, float *grads, float *ws, int64_t rows)
{
  for (int p = 0; p < NPART; p++) {
    const float *g = part_scratch(nd, ws, rows, p) + 2 * (int64_t)nd->maxw * TILE;
    for (int64_t i = 0; i < nd->nparams; i++) grads[i] += g[i];
  }
}

/* ---- whole-network entry points ------------------------------------------------------------------ */

/* rows r0 .. r0 + m - 1 of a [rows, d] array to or from a tile [d][T] */
static void tile_rows(float *rowmajor, float *tile, int64_t r0, int m, int d, int store)
{
  for (int c = 0; c < d; c++)
    for (int r = 0; r < TILE; r++) {
      if (store && r < m) rowmajor[(r0 + r) * d + c] = tile[c * TILE + r];
      if (!store) tile[c * TILE + r] = r < m ? rowmajor[(r0 + r) * d + c] : 0.0f;
    }
}

/* the time-embedded net's time branch at one time t, e [H] = act(W0 f(t) + b0): what
   fourier_forward, linear_forward and act_forward compute for each row of a tile (each output's
   bias, then its inputs in order, one fma each), for one row, since with one t for a whole batch
   every row's is the same */
static void time_branch_row(const df_netdesc *nd, const float *params, const float *fixed,
                            float t, float *e)
{
  const int E = nd->embed, half = E / 2, H = nd->out[0];
  const float *W0 = params + nd->woff[0], *B0 = params + nd->boff[0];
  float f[DF_NET_MAXEMBED];
  for (int j = 0; j < half; j++) df_fourier(t, fixed[j], &f[j], &f[half + j]);
  for (int o = 0; o < H; o++) {
    float acc = B0[o], aux;
    for (int i = 0; i < E; i++) acc = df_fmaf(W0[(int64_t)o * E + i], f[i], acc);
    e[o] = df_act_fwd(nd->act, acc, &aux);
  }
}

/* floats of one time's row of time_table */
static int64_t time_row_floats(const df_netdesc *nd)
{
  int64_t n = nd->kind == DF_NET_GRAPH ? nd->graph->tab : nd->out[0];
  return n > 0 ? n : 1;
}

/* what depends on t alone at each of n times: the time-embedded net's time branch, a graph's
   frontier; tab [n][time_row_floats]; fr: a frame to compute a graph's in */
static void time_table(const df_netdesc *nd, const float *params, const float *fixed,
                       const float *times, int64_t n, float *tab, float *fr)
{
  if (nd->kind == DF_NET_GRAPH) {
    cpu_graph_time_table(nd->graph, params, fixed, times, n, tab, fr);
    return;
  }
  for (int64_t k = 0; k < n; k++) time_branch_row(nd, params, fixed, times[k], tab + k * nd->out[0]);
}

/* a tile's time branch f->e [H][T] (a graph's frontier) from one row of time_table */
static void fill_time_branch(const df_netdesc *nd, const frame *f, const float *e)
{
  if (nd->kind == DF_NET_GRAPH) {
    cpu_graph_fill(nd->graph, f->base, e);
    return;
  }
  for (int o = 0; o < nd->out[0]; o++)
    for (int r = 0; r < TILE; r++) f->e[o * TILE + r] = e[o];
}

int cpu_net_forward(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                    const float *x, const float *t, float t0, int64_t rows, float *out, float *ws,
                    int keep)
{
  (void)dev;
  int64_t nt = ntiles_of(rows), ff = frame_floats(nd);
  /* one time for all rows (a sampler step): the time-embedded net's time branch is the same
     for every row, so it is computed once, for one row, and copied into every tile: the same
     operations on the same inputs, hence the same values */
  int time_once = (nd->kind == DF_NET_TEMB || nd->kind == DF_NET_GRAPH) && !t && !keep;
  float *e_row = time_once ? time_row_of(nd, ws, rows) : NULL; /* (no allocation per step) */
  if (time_once) time_table(nd, params, fixed, &t0, 1, e_row, ws); /* (frame 0, before use) */
  /* partitions run in parallel; a kept forward has a frame per tile, else one per partition */
#pragma omp parallel for schedule(static) if (rows >= PAR_ROWS)
  for (int p = 0; p < NPART; p++) {
    int64_t lo, hi;
    part_range(nt, p, &lo, &hi);
    for (int64_t k = lo; k < hi; k++) {
      int m = rows - k * TILE < TILE ? (int)(rows - k * TILE) : TILE;
      frame f = frame_at(nd, ws + (keep ? k : p) * ff);
      load_inputs(nd, &f, x, t, t0, k * TILE, m);
      if (time_once) fill_time_branch(nd, &f, e_row);
      tile_forward_part(nd, params, fixed, &f, time_once, keep);
      tile_rows(out, f.out, k * TILE, m, nd->dim, 1);
    }
  }
  return DF_OK;
}

/* ---- a whole sampler run with the network score -------------------------------------------- */

/* the score of one tile at time t_k: the net's input rows from xin [dim][T], then
   sc = out * inv_sigma[k], as df_net_score_eval scales a forward; the time-embedded net's time
   branch comes from etab (one row of it per time, the same for every row) */
static void tile_score(const df_netdesc *nd, const float *params, const float *fixed,
                       const frame *f, const df_plan *p, const float *etab, int64_t k,
                       const float *xin, float *sc)
{
  const int d = nd->dim;
  float *xs = frame_x(nd, f), *ts = frame_t(nd, f);
  memcpy(xs, xin, (size_t)d * TILE * sizeof(float));
  for (int r = 0; r < TILE; r++) ts[r] = p->t[k];
  if (etab) fill_time_branch(nd, f, etab + k * time_row_floats(nd));
  tile_forward_part(nd, params, fixed, f, etab != NULL, 0);
  const float inv = p->inv_sigma[k];
  if (p->denoise) /* (out - x) / sigma^2, as df_net_score_eval */
    for (int i = 0; i < d * TILE; i++) sc[i] = (f->out[i] - xin[i]) * inv;
  else
    for (int i = 0; i < d * TILE; i++) sc[i] = f->out[i] * inv;
}

/* Each tile of rows goes through all the steps with its activations in L1, the partitions of
   tiles in parallel (rows are independent). The arithmetic is that of the step-by-step path
   (sampler.c through df_net_score_eval, cpu_sample_step): the same forward per row, the same
   scaling, update rules and noise indices, hence bitwise its result. */
int cpu_net_sample(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                   const df_plan *p, float *x, int64_t rows, int nrec, const int64_t *rec_k,
                   float *const *rec_out, uint64_t seed, uint64_t stream, float *ws, int *done)
{
  (void)dev;
  *done = 1; /* every network */
  const int d = nd->dim;
  const int64_t steps = p->steps, n = rows * d, nt = ntiles_of(rows), ff = frame_floats(nd);
  const int tabled = nd->kind == DF_NET_TEMB || nd->kind == DF_NET_GRAPH;
  /* per partition: the tile's x, its score, the Heun predictor's score and the noise */
  float *scratch = (float *)malloc((size_t)NPART * 4 * d * TILE * sizeof(float));
  float *etab = tabled ? (float *)malloc((size_t)(steps * time_row_floats(nd)) * sizeof(float)) : NULL;
  if (!scratch || (tabled && !etab)) {
    free(scratch);
    free(etab);
    return df_fail(DF_ENOMEM, "out of memory for a sampler run");
  }
  if (etab) /* what depends on t alone at t_0 .. t_(steps - 1) (in frame 0, before the run) */
    time_table(nd, params, fixed, p->t, steps, etab, ws);
#pragma omp parallel for schedule(static) if (rows >= PAR_ROWS)
  for (int part = 0; part < NPART; part++) {
    frame f = frame_at(nd, ws + part * ff);
    float *xt = scratch + (int64_t)part * 4 * d * TILE, *sc = xt + d * TILE, *s2 = sc + d * TILE;
    float *z = s2 + d * TILE;
    int64_t lo, hi;
    part_range(nt, part, &lo, &hi);
    for (int64_t it = lo; it < hi; it++) {
      const int64_t r0 = it * TILE;
      const int m = rows - r0 < TILE ? (int)(rows - r0) : TILE;
      tile_rows(x, xt, r0, m, d, 0);
      for (int64_t k = 0; k <= steps; k++) {
        for (int r = 0; r < nrec; r++)
          if (rec_k[r] == k) tile_rows(rec_out[r], xt, r0, m, d, 1);
        if (k == steps) break;
        const float c1 = p->c1[k], c2 = p->c2[k];
        tile_score(nd, params, fixed, &f, p, etab, k, xt, sc);
        if (p->method == DF_EULER || (p->method == DF_HEUN && k == steps - 1)) {
          for (int i = 0; i < d * TILE; i++) xt[i] = df_step_euler(xt[i], sc[i], c1);
        } else if (p->method == DF_EULER_MARUYAMA) {
          /* the noise of elements r0 d .. (r0 + m) d - 1 at step k, as cpu_sample_step draws */
          cpu_normal_run(seed, stream, df_noise_index((uint64_t)(r0 * d), (uint64_t)k, (uint64_t)n),
                         (int64_t)m * d, z);
          for (int c = 0; c < d; c++)
            for (int r = 0; r < m; r++)
              xt[c * TILE + r] = df_step_em(xt[c * TILE + r], sc[c * TILE + r], c1, c2, z[r * d + c]);
        } else {
          float *xp = z; /* the predictor, then its score at t_(k+1) */
          for (int i = 0; i < d * TILE; i++) xp[i] = df_step_euler(xt[i], sc[i], c1);
          tile_score(nd, params, fixed, &f, p, etab, k + 1, xp, s2);
          for (int i = 0; i < d * TILE; i++) xt[i] = df_step_heun(xt[i], sc[i], s2[i], c1, c2);
        }
      }
      tile_rows(x, xt, r0, m, d, 1);
    }
  }
  free(scratch);
  free(etab);
  return DF_OK;
}

int cpu_net_backward(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                     const float *x, const float *t, float t0, int64_t rows, const float *dout,
                     float *grads, float *ws)
{
  (void)dev; (void)x; (void)t; (void)t0;
  int64_t nt = ntiles_of(rows), ff = frame_floats(nd);
#pragma omp parallel for schedule(static) if (rows >= PAR_ROWS)
  for (int p = 0; p < NPART; p++) {
    float *sc = part_scratch(nd, ws, rows, p), *d1 = sc, *d2 = sc + nd->maxw * TILE;
    float *g = sc + 2 * (int64_t)nd->maxw * TILE;
    float dd[TILE * DF_NET_MAXDIM];
    int64_t lo, hi;
    memset(g, 0, (size_t)nd->nparams * sizeof(float));
    part_range(nt, p, &lo, &hi);
    for (int64_t k = lo; k < hi; k++) {
      int m = rows - k * TILE < TILE ? (int)(rows - k * TILE) : TILE;
      frame f = frame_at(nd, ws + k * ff);
      for (int c = 0; c < nd->dim; c++)
        for (int r = 0; r < TILE; r++) dd[c * TILE + r] = r < m ? dout[(k * TILE + r) * nd->dim + c] : 0.0f;
      tile_backward(nd, params, fixed, &f, dd, g, d1, d2);
    }
  }
  add_partitions(nd, grads, ws, rows);
  return DF_OK;
}

int cpu_dsm_step(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                 float *grads, const df_dsm *job, float *loss, float *ws)
{
  (void)dev;
  const int d = nd->dim;
  const int64_t B = job->batch, nt = ntiles_of(B), ff = frame_floats(nd);
  const float scale = 2.0f / (float)((double)B * d); /* d loss / d out = 2 (out + eta) / (B d) */
  double part_loss[NPART], total = 0.0;
#pragma omp parallel for schedule(static) if (B >= PAR_ROWS)
  for (int p = 0; p < NPART; p++) {
    float *sc = part_scratch(nd, ws, B, p), *d1 = sc, *d2 = sc + nd->maxw * TILE;
    float *g = sc + 2 * (int64_t)nd->maxw * TILE;
    frame f = frame_at(nd, ws + p * ff);
    float *xs = frame_x(nd, &f), *ts = frame_t(nd, &f);
    float u[TILE], sig[TILE], w[TILE], eta[TILE * DF_NET_MAXDIM], dout[TILE * DF_NET_MAXDIM];
    float x0s[TILE * DF_NET_MAXDIM]; /* the data rows [dim][T] (a denoiser's target) */
    int64_t src[TILE];
    const df_diffuser D = job->diff; /* a local copy: its fields are loop invariants */
    double part = 0.0;
    int64_t lo, hi;
    memset(g, 0, (size_t)nd->nparams * sizeof(float));
    part_range(nt, p, &lo, &hi);
    for (int64_t k = lo; k < hi; k++) {
      int64_t r0 = k * TILE;
      int m = B - r0 < TILE ? (int)(B - r0) : TILE;
      /* draws: times, noise (row-major, as a [B, d] tensor of normals), data rows */
      cpu_uniform_run(job->seed, job->st_t, (uint64_t)r0, m, u);
      cpu_normal_run(job->seed, job->st_eta, (uint64_t)(r0 * d), (int64_t)m * d, eta);
      /* times and widths, then the noised inputs: loops along the tile's rows */
      for (int r = 0; r < m; r++) ts[r] = df_dsm_time(u[r], job->tol);
      for (int r = m; r < TILE; r++) ts[r] = 0.0f;
      if (D.kind == DF_VE) { /* the loop gcc vectorises: no diffuser kind inside */
        const float l = (float)D.lnk;
        for (int r = 0; r < TILE; r++) sig[r] = sqrtf(df_ve_sigma2(l, ts[r]));
      } else {
        for (int r = 0; r < TILE; r++) sig[r] = sqrtf(df_diffuser_sigma2(&D, ts[r]));
      }
      for (int r = 0; r < TILE; r++) w[r] = 1.0f; /* the seed's weighting */
      if (job->weighting != DF_W_SIGMA2)
        for (int r = 0; r < m; r++)
        {
          const float gr = job->weighting == DF_W_LIKELIHOOD ? df_diffuser_g(&D, ts[r]) : 1.0f;
          w[r] = df_dsm_weight(job->weighting, sig[r] * sig[r], gr * gr);
        }
      if (job->sample) {
        for (int r = 0; r < m; r++)
          src[r] = df_rand_index(job->seed, job->st_idx, (uint64_t)(r0 + r), job->data_rows);
        for (int c = 0; c < d; c++)
          for (int r = 0; r < m; r++) xs[c * TILE + r] = job->data[src[r] * d + c] + sig[r] * eta[r * d + c];
        if (job->output == DF_OUT_DENOISER)
          for (int c = 0; c < d; c++)
            for (int r = 0; r < m; r++) x0s[c * TILE + r] = job->data[src[r] * d + c];
      } else { /* the data is the batch: rows in order, no index (loops gcc vectorises) */
        const float *x0 = job->data + r0 * d;
        for (int c = 0; c < d; c++)
          for (int r = 0; r < m; r++) xs[c * TILE + r] = x0[r * d + c] + sig[r] * eta[r * d + c];
        if (job->output == DF_OUT_DENOISER)
          for (int c = 0; c < d; c++)
            for (int r = 0; r < m; r++) x0s[c * TILE + r] = x0[r * d + c];
      }
      for (int c = 0; c < d; c++)
        for (int r = m; r < TILE; r++) xs[c * TILE + r] = 0.0f;
      tile_forward(nd, params, fixed, &f);
      /* the loss, sum of w r^2, in 8 double lanes per tile, added in a fixed order; its gradient
         scale w r dr/dout (for the seed's loss w = dr/dout = 1: bitwise scale r) */
      double acc[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
      const int out_kind = job->output;
      for (int c = 0; c < d; c++) {
        float *res = dout + c * TILE; /* the residuals, then scaled in place */
        if (out_kind == DF_OUT_SCALED) { /* (the seed's: the loop as it always was) */
          for (int r = 0; r < m; r++) res[r] = f.out[c * TILE + r] + eta[r * d + c];
        } else {
          for (int r = 0; r < m; r++)
            res[r] = df_dsm_residual(out_kind, f.out[c * TILE + r], eta[r * d + c], sig[r], x0s[c * TILE + r]);
        }
        for (int r = m; r < TILE; r++) res[r] = 0.0f; /* adds 0 to the sums below */
        for (int r = 0; r < TILE; r += 8)
          for (int j = 0; j < 8; j++) acc[j] += (double)w[r + j] * ((double)res[r + j] * (double)res[r + j]);
        if (out_kind == DF_OUT_SCALED)
          for (int r = 0; r < TILE; r++) res[r] = scale * (w[r] * res[r]);
        else /* (rows past m stay 0: sigma is 0 there) */
          for (int r = 0; r < m; r++) res[r] = scale * (w[r] * (df_dsm_dres(out_kind, sig[r]) * res[r]));
      }
      part += ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
      tile_backward(nd, params, fixed, &f, dout, g, d1, d2);
    }
    part_loss[p] = part;
  }
  for (int p = 0; p < NPART; p++) total += part_loss[p]; /* in order, whatever the threads */
  add_partitions(nd, grads, ws, B);
  *loss = (float)(total / ((double)B * d));
  return DF_OK;
}

int cpu_adam(int dev, float *p, const float *g, float *m, float *v, int64_t n,
             const df_adam_hp *hp)
{
  (void)dev;
  for (int64_t i = 0; i < n; i++)
    p[i] = df_adam_update(p[i], g[i], &m[i], &v[i], hp->b1, hp->b2, hp->step, hp->sqrt_bc2,
                          hp->eps, hp->wd);
  return DF_OK;
}

int cpu_ema(int dev, float *e, const float *p, int64_t n, float decay)
{
  (void)dev;
  for (int64_t i = 0; i < n; i++) e[i] = df_ema_update(e[i], p[i], decay);
  return DF_OK;
}

/* ---- Jacobian-vector products (divergences) ------------------------------------------------------- */

/* per partition: a frame for the forward, a frame of tangents */
int64_t cpu_net_jvp_workspace(const df_netdesc *nd, int64_t rows)
{
  (void)rows;
  return NPART * 2 * frame_floats(nd);
}

int cpu_net_jvp(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                const float *x, const float *t, float t0, int64_t rows, int nv,
                const float *const *v, float *const *out, float *ws)
{
  (void)dev;
  if (nd->kind != DF_NET_GRAPH) return df_fail(DF_EARG, "net_jvp takes a graph's description");
  const df_graph *g = nd->graph;
  const int d = nd->dim;
  const int64_t nt = ntiles_of(rows), ff = frame_floats(nd);
#pragma omp parallel for schedule(static) if (rows >= PAR_ROWS)
  for (int p = 0; p < NPART; p++) {
    frame f = frame_at(nd, ws + p * 2 * ff);
    float *tf = ws + p * 2 * ff + ff, *tx = tf + g->nodes[0].val * TILE;
    const float *tout = tf + g->nodes[g->out].val * TILE;
    int64_t lo, hi;
    part_range(nt, p, &lo, &hi);
    for (int64_t k = lo; k < hi; k++) {
      const int64_t r0 = k * TILE;
      const int m = rows - r0 < TILE ? (int)(rows - r0) : TILE;
      load_inputs(nd, &f, x, t, t0, r0, m);
      cpu_graph_forward(g, params, fixed, f.base, 1, 0);
      for (int j = 0; j < nv; j++) {
        tile_rows((float *)v[j], tx, r0, m, d, 0);
        cpu_graph_tangent(g, params, fixed, f.base, tf);
        tile_rows(out[j], (float *)tout, r0, m, d, 1);
      }
    }
  }
  return DF_OK;
}
