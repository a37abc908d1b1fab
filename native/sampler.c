/* sampler.c: score sources (exact heat-kernel score, Gaussian mixtures, callbacks) and the
 * fused reverse-time samplers: Euler, Euler-Maruyama and Heun on any grid that ends at t = 0, in
 * t or in sigma. A run with a native score is one backend call (sample_fused); a network's too
 * (net_sample); any other score is evaluated step by step through its callback, with the same
 * update rules. The other methods, and runs that integrate log q, are solver.c's. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "status.h"
#include "diffusion.h"

/* ---- score sources ------------------------------------------------------------------------ */

/* x as [rows, d]; the mixture fixes d */
static int score_shape(const df_score_src *src, const df_tensor *x, int64_t *rows, int *d)
{
  char b[96];
  if (x->ndim > 2)
    return df_fail(DF_EARG, "x must be [B, d] or [B], got %s",
                   df_shape_str(x->ndim, x->shape, b, sizeof b));
  *rows = x->shape[0];
  int64_t dd = x->ndim == 2 ? x->shape[1] : 1;
  if (src->kind == DF_SCORE_MIXTURE && dd != src->mix.d)
    return df_fail(DF_EARG, "x has %lld columns but the mixture lives in R^%d", (long long)dd,
                   src->mix.d);
  if (dd > (1 << 30)) return df_fail(DF_EARG, "x has too many columns");
  *d = (int)dd;
  return DF_OK;
}

/* sigma(t)^2 per row (into sig2, when t is a tensor) or as one number */
static int sigma2_of(const df_score_src *src, const df_tensor *x, const df_tensor *t, double t0,
                     int64_t rows, df_tensor *sig2, float *s0)
{
  if (!t) {
    if (!(t0 >= 0.0) || !isfinite(t0))
      return df_fail(DF_EARG, "t must be finite and non-negative (got %g)", t0);
    *s0 = (float)df_diffuser_sigma2_host(&src->diff, t0);
    return DF_OK;
  }
  if (!df_same_device(x, t)) return df_fail(DF_EARG, "x and t are on different devices");
  if (t->numel != rows || t->ndim > 2 || (t->ndim == 2 && t->shape[1] != 1))
    return df_fail(DF_EARG, "t must be a number or hold one time per row (%lld)", (long long)rows);
  return df_diffuser_eval(sig2, &src->diff, DF_SIGMA2, t);
}

int df_score_eval(df_tensor *out, const df_score_src *src, const df_tensor *x,
                  const df_tensor *t, double t0)
{
  int64_t rows = 0;
  int d = 0, st;
  float s0 = 0.0f;
  df_tensor sig2 = { 0 };
  if ((st = df_need_live(x)) || (st = df_need_live(t))) return st;
  if (src->kind == DF_SCORE_CALLBACK) {
    if (t && !src->eval_rows) return df_fail(DF_EARG, "this score takes one time, not a tensor");
    if ((st = df_tensor_like(out, x))) return st;
    if (!t) return src->eval(src->ctx, out, x, (float)t0);
    return src->eval_rows(src->ctx, out, x, t);
  }
  if (!x->be->score_eval) return df_fail(DF_EDEVICE, "scores are not implemented on %s", x->be->name);
  if ((st = score_shape(src, x, &rows, &d))) return st;
  if ((st = sigma2_of(src, x, t, t0, rows, &sig2, &s0))) goto done;
  if (src->kind == DF_SCORE_EXACT) { /* -x / sigma^2 is singular at t = 0 */
    double lo = s0;
    if (t && rows > 0 && (st = df_reduce_all(&sig2, DF_RMIN, &lo))) goto done;
    if (!(lo > 0.0) && rows > 0) {
      st = df_fail(DF_EARG, "the exact score is singular at t = 0 (sigma(0) = 0): use t > 0");
      goto done;
    }
  }
  if ((st = df_tensor_like(out, x))) goto done;
  if (rows > 0)
    st = x->be->score_eval(x->dev, src->kind == DF_SCORE_MIXTURE ? &src->mix : NULL, df_data(out),
                           df_data(x), t ? df_data(&sig2) : NULL, s0, rows, d);
done:
  df_tensor_release(&sig2);
  return st;
}

int df_mixture_log_density(df_tensor *out, const df_score_src *src, const df_tensor *x,
                           const df_tensor *t, double t0)
{
  int64_t rows = 0;
  int d = 0, st;
  float s0 = 0.0f;
  df_tensor sig2 = { 0 };
  if ((st = df_need_live(x)) || (st = df_need_live(t))) return st;
  if (!x->be->mixture_logpdf)
    return df_fail(DF_EDEVICE, "mixtures are not implemented on %s", x->be->name);
  if ((st = score_shape(src, x, &rows, &d))) return st;
  if ((st = sigma2_of(src, x, t, t0, rows, &sig2, &s0))) goto done;
  int64_t shape[1] = { rows };
  if ((st = df_tensor_alloc(out, x->be, x->dev, 1, shape))) goto done;
  if (rows > 0)
    st = x->be->mixture_logpdf(x->dev, &src->mix, df_data(out), df_data(x),
                               t ? df_data(&sig2) : NULL, s0, rows);
done:
  df_tensor_release(&sig2);
  return st;
}

int df_mixture_sample(df_tensor *out, const df_score_src *src, int64_t n, double t0)
{
  const df_backend *be;
  int dev, st;
  uint64_t seed, unused;
  df_current_device(&be, &dev);
  if (!be->mixture_sample) return df_fail(DF_EDEVICE, "mixtures are not implemented on %s", be->name);
  if (!(t0 >= 0.0) || !isfinite(t0))
    return df_fail(DF_EARG, "t must be finite and non-negative (got %g)", t0);
  int64_t shape[2] = { n, src->mix.d };
  if ((st = df_tensor_alloc(out, be, dev, 2, shape))) return st;
  df_rng_state(&seed, &unused);
  uint64_t su = df_rng_next_stream(), sz = df_rng_next_stream();
  if (n == 0) return DF_OK;
  return be->mixture_sample(dev, &src->mix, df_data(out), NULL,
                            (float)df_diffuser_sigma2_host(&src->diff, t0), n, seed, su, sz);
}

/* ---- samplers ----------------------------------------------------------------------------- */

/* the per-step coefficients, in double from the grid t_k = 1 - k / steps (never accumulated) */
/* the fused methods' plan on the sampler's grid: sigma(t_k)^2, the step coefficients of
   dmath.h's df_step_* rules and the evaluation times. On the seed's uniform grid in t exactly the
   seed's numbers (dt = 1 / steps); on any other grid, in t, dt = t_k - t_(k+1); in sigma (Euler,
   Heun: dx = -sigma s dsigma), c1 = sigma_k (sigma_k - sigma_(k+1)) and Heun's c2 =
   sigma_(k+1) (sigma_k - sigma_(k+1)), so that the corrector x + (c1 s + c2 s') / 2 is the
   trapezoid in sigma. *buf (free it) holds the arrays; the grid must end at t = 0 */
static int make_plan(const df_sampler *s, df_plan *p, float **buf)
{
  const int64_t steps = s->steps;
  const int uniform_t = s->grid == DF_GRID_UNIFORM && s->space == DF_SPACE_T;
  float *b = (float *)malloc((size_t)(4 * steps + 2) * sizeof(float));
  double *gt = uniform_t ? NULL : (double *)malloc((size_t)(2 * (steps + 1)) * sizeof(double));
  if (!b || (!uniform_t && !gt)) {
    free(b);
    free(gt);
    return df_fail(DF_ENOMEM, "out of memory for %lld sampler steps", (long long)steps);
  }
  float *sig2 = b, *c1 = b + steps + 1, *c2 = c1 + steps, *tk = c2 + steps;
  double *gs = gt ? gt + steps + 1 : NULL;
  int st = gt ? df_sampler_grid(s, gt, gs) : DF_OK;
  for (int64_t k = 0; k <= steps && !st; k++) {
    double t = uniform_t ? 1.0 - (double)k / (double)steps : gt[k];
    tk[k] = (float)t;
    sig2[k] = (float)df_diffuser_sigma2_host(&s->diff, t);
    if (k == steps) break;
    double t1 = uniform_t ? 1.0 - (double)(k + 1) / (double)steps : gt[k + 1];
    double dt = uniform_t ? 1.0 / (double)steps : t - t1;
    double g = df_diffuser_g_host(&s->diff, t), g1 = df_diffuser_g_host(&s->diff, t1);
    if (s->space == DF_SPACE_SIGMA) {
      double a = gs[k], bb = gs[k + 1];
      c1[k] = (float)(a * (a - bb));
      c2[k] = s->method == DF_HEUN ? (float)(bb * (a - bb)) : 0.0f;
      continue;
    }
    switch (s->method) {
    case DF_EULER: c1[k] = (float)(0.5 * g * g * dt); c2[k] = 0.0f; break;
    case DF_EULER_MARUYAMA: c1[k] = (float)(g * g * dt); c2[k] = (float)(g * sqrt(dt)); break;
    default: c1[k] = (float)(0.5 * g * g * dt); c2[k] = (float)(0.5 * g1 * g1 * dt); break;
    }
  }
  free(gt);
  if (st) {
    free(b);
    return st;
  }
  p->method = s->method;
  p->steps = steps;
  p->sig2 = sig2;
  p->c1 = c1;
  p->c2 = c2;
  p->t = tk;
  p->inv_sigma = NULL;
  *buf = b;
  return DF_OK;
}

int df_sampler_record(df_tensor *x, int64_t k, int nrec, const int64_t *rec_k, df_tensor *const *rec)
{
  for (int r = 0; r < nrec; r++) {
    if (rec_k[r] != k) continue;
    int st = df_copy(rec[r], x);
    if (st) return st;
  }
  return DF_OK;
}

/* the step-by-step path: one callback evaluation per stage, updates on the device */
static int run_steps(df_sampler *s, const df_score_src *src, const df_plan *p, df_tensor *x,
                     int nrec, const int64_t *rec_k, df_tensor *const *rec, uint64_t seed,
                     uint64_t stream)
{
  const df_backend *be = x->be;
  int64_t steps = p->steps, n = x->numel;
  int st = DF_OK;
  df_tensor sc = { 0 }, s2 = { 0 }, xp = { 0 };
  if (!be->sample_step) return df_fail(DF_EDEVICE, "samplers are not implemented on %s", be->name);
  /* the buffers of the whole run, allocated once */
  if ((st = df_tensor_like(&sc, x)) ||
      (s->method == DF_HEUN && ((st = df_tensor_like(&xp, x)) || (st = df_tensor_like(&s2, x)))))
    goto done;
  for (int64_t k = 0; k < steps && !st; k++) {
    float t = p->t[k], t1 = p->t[k + 1];
    if ((st = df_sampler_record(x, k, nrec, rec_k, rec)) || (st = src->eval(src->ctx, &sc, x, t))) break;
    s->nfe++;
    float *px = df_data(x), *ps = df_data(&sc);
    if (s->method == DF_EULER || (s->method == DF_HEUN && k == steps - 1)) {
      st = be->sample_step(x->dev, DF_STAGE_EULER, px, NULL, ps, NULL, p->c1[k], 0.0f, n, k, seed, stream);
    } else if (s->method == DF_EULER_MARUYAMA) {
      st = be->sample_step(x->dev, DF_STAGE_EM, px, NULL, ps, NULL, p->c1[k], p->c2[k], n, k, seed, stream);
    } else {
      st = be->sample_step(x->dev, DF_STAGE_HEUN_PRED, px, df_data(&xp), ps, NULL, p->c1[k], 0.0f, n, k, seed, stream);
      if (!st && !(st = src->eval(src->ctx, &s2, &xp, t1))) {
        s->nfe++;
        st = be->sample_step(x->dev, DF_STAGE_HEUN_CORR, px, NULL, ps, df_data(&s2), p->c1[k], p->c2[k], n, k, seed, stream);
      }
    }
  }
  if (!st) st = df_sampler_record(x, steps, nrec, rec_k, rec);
done:
  df_tensor_release(&sc);
  df_tensor_release(&s2);
  df_tensor_release(&xp);
  return st;
}

int df_sampler_run(df_sampler *s, const df_score_src *src, df_tensor *x, int nrec,
                   const int64_t *rec_k, df_tensor *const *rec, const df_div_opts *div, double *I)
{
  int64_t rows = 0;
  int d = 0, st;
  uint64_t seed, unused;
  if ((st = df_need_live(x))) return st;
  if (x->ndim > 2) { /* (a Lua score function would take any shape; the docs say [B, d] or [B]) */
    char b[96];
    return df_fail(DF_EARG, "x must be [B, d] or [B], got %s", df_shape_str(x->ndim, x->shape, b, sizeof b));
  }
  if (src->kind != DF_SCORE_CALLBACK && (st = score_shape(src, x, &rows, &d))) return st;
  /* the seed's three methods run fused (below) on any grid that ends at t = 0; the rest, and
     runs that integrate log q, in solver.c */
  const int ends_at_0 = s->grid != DF_GRID_LIST || s->times[s->steps] == 0.0;
  if (s->method > DF_HEUN || !ends_at_0 || I) {
    for (int r = 0; r < nrec; r++) {
      if (rec_k[r] < 0 || rec_k[r] > s->steps)
        return df_fail(DF_EARG, "record step %lld is outside 0..%lld", (long long)rec_k[r],
                       (long long)s->steps);
      if ((st = df_tensor_like(rec[r], x))) return st;
    }
    return df_solve_run(s, src, x, nrec, rec_k, rec, div, I);
  }
  /* the uniform grid's smallest t is 1 / steps: sigma^2 there must be a float32 the scores can
     divide by (diffuse.power with a large alpha underflows, and every score would be NaN) */
  if (s->grid == DF_GRID_UNIFORM) {
    double s2min = df_diffuser_sigma2_host(&s->diff, 1.0 / (double)s->steps);
    if (!(s2min >= FLT_MIN))
      return df_fail(DF_EARG, "sigma(t)^2 = %g at t = 1/%lld underflows float32: use fewer steps or "
                     "a diffuser whose sigma(t) stays above 1.1e-19 there", s2min, (long long)s->steps);
  }
  for (int r = 0; r < nrec; r++) {
    if (rec_k[r] < 0 || rec_k[r] > s->steps)
      return df_fail(DF_EARG, "record step %lld is outside 0..%lld", (long long)rec_k[r],
                     (long long)s->steps);
    if ((st = df_tensor_like(rec[r], x))) return st;
  }
  df_plan p;
  float *buf = NULL;
  if ((st = make_plan(s, &p, &buf))) return st;
  for (int64_t k = 0; k < s->steps; k++) /* (every time a step evaluates the score at) */
    if (!(p.sig2[k] >= FLT_MIN)) {
      st = df_fail(DF_EARG, "sigma(t)^2 = %g at t = %g (step %lld) underflows float32: use fewer steps, "
                   "a larger sigma_min, or a diffuser whose sigma stays above 1.1e-19",
                   (double)p.sig2[k], (double)p.t[k], (long long)k);
      free(buf);
      return st;
    }
  df_rng_state(&seed, &unused);
  uint64_t stream = df_rng_next_stream(); /* every run takes one stream, whatever its method */
  s->nfe = 0;
  float **outs = NULL;
  if (nrec > 0 && !(outs = (float **)malloc((size_t)nrec * sizeof *outs))) {
    free(buf);
    return df_fail(DF_ENOMEM, "out of memory");
  }
  for (int r = 0; r < nrec; r++) outs[r] = df_data(rec[r]);
  int done = 0;
  if (src->kind == DF_SCORE_CALLBACK) {
    /* a source that runs natively (a network) does; anything else is stepped through */
    if (src->run) st = src->run(src->ctx, &p, x, nrec, rec_k, outs, seed, stream, &done);
    if (!st && !done) st = run_steps(s, src, &p, x, nrec, rec_k, rec, seed, stream);
  } else if (!x->be->sample_fused) {
    st = df_fail(DF_EDEVICE, "samplers are not implemented on %s", x->be->name);
  } else {
    if (x->numel > 0)
      st = x->be->sample_fused(x->dev, &p, src->kind == DF_SCORE_MIXTURE ? &src->mix : NULL,
                               df_data(x), rows, d, nrec, rec_k, outs, seed, stream);
    done = 1;
  }
  if (done) s->nfe = s->method == DF_HEUN ? 2 * s->steps - 1 : s->steps;
  free(outs);
  free(buf);
  return st;
}
