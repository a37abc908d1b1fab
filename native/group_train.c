/* group_train.c: denoising score matching with group noise (U(1), SU(2), SU(3)): each step draws a
 * batch of data rows and times, makes the pairs (theta_t, target) of group.c on the host, and
 * runs the net's forward, the loss sigma^2 |s_net - target|^2 under its output convention, the
 * backward and Adam natively. One native call for the whole loop; no Lua per step. */
#include "group.h"
#include "nn.h"
#include "dmath.h"
#include "status.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* the scores of the first batch summed over the angles, row by row, against the sum of their
   sizes: a net that is not tangent misses on nearly every row by a sizable fraction, a tangent
   one (o - o:mean()) only where float32 cancellation leaves a row small next to the o it came
   from; so more than half the rows off by 1e-3 is the error. Every output convention's score is
   (out - [x for a denoiser]) times a factor of the row's time, which the ratio does not see. */
static int check_tangent(const float *out, const float *x, int64_t batch, int k, int output)
{
  int64_t off = 0, first = -1;
  double fsum = 0.0, fsize = 0.0;
  for (int64_t r = 0; r < batch; r++) {
    double sum = 0.0, size = 0.0;
    for (int j = 0; j < k; j++) {
      const double sc = (double)out[r * k + j] - (output == DF_OUT_DENOISER ? (double)x[r * k + j] : 0.0);
      sum += sc;
      size += fabs(sc);
    }
    if (fabs(sum) > 1e-3 * size + 1e-30) {
      if (first < 0) first = r, fsum = sum, fsize = size;
      off++;
    }
  }
  if (2 * off > batch)
    return df_fail(DF_EARG, "the net's score must be tangent on SU(%d) (rows summing to 0), but "
                   "%lld of %lld rows are not (row %lld sums to %g of %g): end its forward with "
                   "o - o:mean() (or, for SU(2), a [B, 1] factor times x:sin())", k, (long long)off,
                   (long long)batch, (long long)first + 1, fsum, fsize);
  return DF_OK;
}

int df_group_train(df_net *n, df_adam *o, const df_group *G, const df_diffuser *D,
                   const df_tensor *data, const df_train_opts *opts, df_tensor *losses)
{
  int st;
  const int k = G->n;
  const int64_t steps = opts->steps, batch = opts->batch;
  const double tol = opts->tol, clip = opts->clip;
  const int weighting = opts->weighting;
  df_net *ema = opts->ema;
  df_progress_fn progress = opts->progress;
  void *ctx = opts->ctx;
  double every = opts->every;
  if ((st = df_group_check_points(G, data))) return st;
  if (n->d.dim != k) return df_fail(DF_EARG, "the net's dim (%d) must be the group's %d eigenangles", n->d.dim, k);
  const int64_t rows = data->shape[0];
  if (rows < 1) return df_fail(DF_EARG, "data has no rows");
  if (batch < 1 || batch > rows) return df_fail(DF_EARG, "batch must be from 1 to the data's %lld rows (got %lld)", (long long)rows, (long long)batch);
  if (steps < 0 || steps > DF_MAX_STEPS) return df_fail(DF_EARG, "steps must be from 0 to 2^53");
  if (!(tol > 0.0 && tol < 1.0)) return df_fail(DF_EARG, "tol must be in (0, 1) (got %g)", tol);
  if (!(every >= 1.0)) every = 50.0;
  if (!(clip >= 0.0) || !(clip <= 3.4e38)) return df_fail(DF_EARG, "clip must be a positive number (got %g)", clip);
  if ((st = df_check_weighting(weighting, n->output, tol))) return st;
  if (ema && !(o->ema > 0.0 && o->ema < 1.0)) return df_fail(DF_EARG, "ema must be a decay in (0, 1) (got %g)", o->ema);
  if (ema && ema->live && (ema->be != n->be || ema->dev != n->dev) && (st = df_net_to(ema, n->be, n->dev)))
    return st;
  if ((st = df_net_check_ema(n, ema))) return st;
  const int output = n->output;
  float *hd = (float *)malloc(sizeof(float) * (size_t)(rows * k));
  float *hx = (float *)malloc(sizeof(float) * (size_t)(batch * k)), *ht = (float *)malloc(sizeof(float) * (size_t)batch);
  float *hout = (float *)malloc(sizeof(float) * (size_t)(batch * k)), *hl = (float *)malloc(sizeof(float) * (size_t)(steps > 0 ? steps : 1));
  double *x0 = (double *)malloc(sizeof(double) * (size_t)(batch * k)), *xt = (double *)malloc(sizeof(double) * (size_t)(batch * k));
  double *tg = (double *)malloc(sizeof(double) * (size_t)(batch * k)), *tt = (double *)malloc(sizeof(double) * (size_t)batch);
  df_tensor X = { 0 }, T = { 0 }, DO = { 0 }, OUT = { 0 };
  int64_t shx[2] = { batch, k }, sht[1] = { batch };
  if (!hd || !hx || !ht || !hout || !hl || !x0 || !xt || !tg || !tt) st = df_fail(DF_ENOMEM, "out of memory");
  if (!st) st = data->be->download(data->dev, hd, df_data(data), rows * k);
  if (!st) st = df_tensor_alloc(&X, n->be, n->dev, 2, shx);
  if (!st) st = df_tensor_alloc(&T, n->be, n->dev, 1, sht);
  if (!st) st = df_tensor_alloc(&DO, n->be, n->dev, 2, shx);
  for (int64_t s = 0; !st && s < steps; s++) {
    /* the step's draws: indices and times from one stream, the noise from the next */
    const uint64_t sa = df_rng_next_stream(), sb = df_rng_next_stream();
    uint64_t seed, cur;
    df_rng_state(&seed, &cur);
    for (int64_t r = 0; r < batch; r++) {
      uint32_t w[4];
      df_philox_block(seed, sa, (uint64_t)r, w);
      int64_t i = rows > batch ? (int64_t)((double)(w[0] >> 5) * (1.0 / 134217728.0) * (double)rows) : r;
      if (i >= rows) i = rows - 1;
      tt[r] = tol + (1.0 - tol) * (double)(w[1] >> 8) * (1.0 / 16777216.0);
      for (int j = 0; j < k; j++) x0[r * k + j] = hd[i * k + j];
    }
#pragma omp parallel for schedule(static) if (batch > 256)
    for (int64_t r = 0; r < batch; r++)
      df_group_dsm_pair_row(G, D, x0 + r * k, tt[r], seed, sb, r, xt + r * k, tg + r * k);
    for (int64_t r = 0; r < batch; r++) {
      ht[r] = (float)tt[r];
      for (int j = 0; j < k; j++) hx[r * k + j] = (float)xt[r * k + j];
    }
    if ((st = n->be->upload(n->dev, df_data(&X), hx, batch * k)) || (st = n->be->upload(n->dev, df_data(&T), ht, batch)))
      break;
    df_tensor_release(&OUT);
    if ((st = df_net_forward(n, &OUT, &X, &T, 0.0, 1)) || (st = n->be->download(n->dev, hout, df_data(&OUT), batch * k)))
      break;
    /* on SU(N) the score the net gives must be tangent (rows summing to 0): the first batch is
       checked, since a net that is not would train on the tangent part only and push a sampler's
       rows off the group (the common slip: an SU(3) head without o - o:mean()) */
    if (s == 0 && G->kind == DF_GROUP_SU && (st = check_tangent(hout, hx, batch, k, output))) break;
    /* loss = mean over rows of w sigma^2 |s - target|^2, s from the output convention, w the
       weighting's lambda / sigma^2 (1: the seed's) */
    double loss = 0.0;
    const double inv = 1.0 / (double)batch;
    for (int64_t r = 0; r < batch; r++) {
      const double sig2 = df_diffuser_sigma2_host(D, tt[r]), sig = sqrt(sig2);
      const double gr = df_diffuser_g_host(D, tt[r]);
      const double wr = df_dsm_weight(weighting, (float)sig2, (float)(gr * gr));
      for (int j = 0; j < k; j++) {
        const double out = hout[r * k + j], y = tg[r * k + j];
        double e, g; /* e: sigma (s - target); g: d loss / d out */
        if (output == DF_OUT_SCORE) { e = sig * (out - y); g = 2.0 * sig * e; }
        else if (output == DF_OUT_NOISE) { e = -out - sig * y; g = -2.0 * e; }
        else if (output == DF_OUT_DENOISER) { e = (out - xt[r * k + j]) / sig - sig * y; g = 2.0 * e / sig; }
        else { e = out - sig * y; g = 2.0 * e; } /* scaled: s = out / sigma */
        loss += wr * e * e * inv;
        hout[r * k + j] = (float)(wr * g * inv);
      }
    }
    hl[s] = (float)loss;
    if (!isfinite(hl[s])) { /* (as df_train: the step that diverged, before Adam spreads it) */
      st = df_fail(DF_EARG, "training diverged at step %lld: loss = %g", (long long)s + 1, (double)hl[s]);
      break;
    }
    if ((st = n->be->upload(n->dev, df_data(&DO), hout, batch * k)) || (st = df_net_zero_grad(n)) ||
        (st = df_net_backward(n, &DO)) || (clip > 0.0 && (st = df_net_clip_grads(n, clip))) ||
        (st = df_adam_step(o, n)))
      break;
    if (ema && (st = n->be->ema(n->dev, ema->params, n->params, n->d.nparams, (float)o->ema))) break;
    /* (every: steps between calls here) */
    if (progress && (s + 1 == steps || (s + 1) % (int64_t)every == 0) && (st = progress(ctx, s + 1, steps, loss)))
      break;
  }
  if (ema) ema->cached_rows = -1; /* (its parameters moved) */
  if (!st) {
    int64_t shl[1] = { steps };
    if (!(st = df_tensor_alloc(losses, n->be, n->dev, 1, shl)) && steps > 0)
      st = n->be->upload(n->dev, df_data(losses), hl, steps);
  }
  df_tensor_release(&X);
  df_tensor_release(&T);
  df_tensor_release(&DO);
  df_tensor_release(&OUT);
  free(hd);
  free(hx);
  free(ht);
  free(hout);
  free(hl);
  free(x0);
  free(xt);
  free(tg);
  free(tt);
  return st;
}
