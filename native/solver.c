/* solver.c: time grids (uniform, Karras, log sigma, a list of times) and the samplers beyond the
 * three fused ones (sampler.c): steps in sigma as k-diffusion and EDM take them (DDIM,
 * DPM-Solver++(2M), EDM's stochastic Heun, predictor-corrector; Euler and Heun here only when
 * they integrate log q or end off t = 0), RK4, and adaptive Dormand-Prince with per-row error
 * control. Every method is a native loop of whole-batch score evaluations and
 * per-row updates through the backend (rowlin & co), so the same code runs on every device, for
 * exact, mixture and network scores alike; randomness comes from the run's counter-based stream
 * (element index = draw * n + i), so a seed gives the same samples on every device.
 *
 * The probability-flow ODE in sigma (x_t = x0 + sigma(t) eta) is dx/dsigma = (x - D) / sigma =
 * -sigma s, with the denoiser D = x + sigma^2 s; in t it is dx/dt = -g(t)^2 s / 2. How each
 * method reaches t = 0 (sigma = 0, where the score is singular): Euler in sigma ends with the
 * step x + sigma^2 s = D (the denoiser at the last sigma); Heun, EDM and DPM++(2M) take that
 * first-order step last; DDIM's step to 0 is D too; RK4 in t takes Euler's step to t = 0; PC's last predictor step is the mean of the
 * reverse-diffusion step to 0, D (no noise, no corrector at sigma = 0); Euler, Heun and Euler-Maruyama in t take
 * Euler's step from t_(N-1) to 0; rk45 integrates in t down to t_min, then the step to 0 is D. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "status.h"
#include "diffusion.h"

/* ---- grids ---------------------------------------------------------------------------------- */

int df_sampler_grid(const df_sampler *s, double *t, double *sig)
{
  const df_diffuser *D = &s->diff;
  const int64_t N = s->steps;
  if (s->grid == DF_GRID_UNIFORM) {
    for (int64_t k = 0; k <= N; k++) t[k] = 1.0 - (double)k / (double)N;
  } else if (s->grid == DF_GRID_LIST) {
    for (int64_t k = 0; k <= N; k++) t[k] = s->times[k];
  } else {
    const double smax = sqrt(df_diffuser_sigma2_host(D, 1.0));
    const double smin = s->sigma_min > 0.0 ? s->sigma_min : sqrt(df_diffuser_sigma2_host(D, 1e-3));
    if (!(smin < smax))
      return df_fail(DF_EARG, "sigma_min (%g) must be below sigma(1) (%g)", smin, smax);
    for (int64_t i = 0; i < N; i++) {
      double f = N > 1 ? (double)i / (double)(N - 1) : 0.0, sg;
      if (s->grid == DF_GRID_KARRAS) {
        double a = pow(smax, 1.0 / s->rho), b = pow(smin, 1.0 / s->rho);
        sg = pow(a + f * (b - a), s->rho);
      } else {
        sg = exp(log(smax) + f * (log(smin) - log(smax)));
      }
      t[i] = i == 0 ? 1.0 : df_diffuser_t_of_sigma2(D, sg * sg);
    }
    t[N] = 0.0;
  }
  for (int64_t k = 0; k <= N; k++) sig[k] = sqrt(df_diffuser_sigma2_host(D, t[k]));
  return DF_OK;
}

/* ---- a run's context ------------------------------------------------------------------------ */

typedef struct {
  df_sampler *s;
  const df_score_src *src;
  df_tensor *x;
  const df_backend *be;
  int dev, d;
  int64_t rows, n;
  uint64_t seed, stream, draws; /* the noise: draw number `draws` is elements draws * n + i */
  float *hbuf, *hbuf2;          /* rows floats each on the host (per-row coefficients) */
  df_tensor rowt, rowa, rowb;   /* [rows] device scratch: times, coefficients */
  /* the divergence (logq, likelihoods): I[r] += w div s per evaluation, probes fixed per solve */
  const df_div_opts *div;
  double *I;                    /* NULL: no divergence */
  int nprobe;                   /* probes (Hutchinson), or d unit vectors (a net's exact) */
  df_tensor *V, *JV;            /* [nprobe] tensors like x */
} run;

static int noise(run *c, df_tensor *z);

/* s(x, t) for all rows at one time t into out (like x) */
static int eval_t(run *c, df_tensor *out, df_tensor *x, double t)
{
  const df_score_src *src = c->src;
  c->s->nfe++;
  if (src->kind == DF_SCORE_CALLBACK) return src->eval(src->ctx, out, x, (float)t);
  float s2 = (float)df_diffuser_sigma2_host(&src->diff, t);
  if (!(s2 > 0.0f)) return df_fail(DF_EARG, "the score is singular at t = %g (sigma = 0)", t);
  return c->be->score_eval(c->dev, src->kind == DF_SCORE_MIXTURE ? &src->mix : NULL, df_data(out),
                           df_data(x), NULL, s2, c->rows, c->d);
}

/* s(x, t_r) with one time per row (the device tensor c->rowt) into out */
static int eval_rows(run *c, df_tensor *out, df_tensor *x, df_tensor *trows)
{
  const df_score_src *src = c->src;
  c->s->nfe++;
  if (src->kind == DF_SCORE_CALLBACK) {
    if (!src->eval_rows)
      return df_fail(DF_EARG, "this method needs a score that takes one time per row (a native "
                              "score or a network; a Lua function takes one time)");
    return src->eval_rows(src->ctx, out, x, trows);
  }
  int st = c->be->diffuser_eval(c->dev, &src->diff, DF_SIGMA2, df_data(&c->rowb), df_data(trows), c->rows);
  if (st) return st;
  return c->be->score_eval(c->dev, src->kind == DF_SCORE_MIXTURE ? &src->mix : NULL, df_data(out),
                           df_data(x), df_data(&c->rowb), 0.0f, c->rows, c->d);
}

/* out = sum of the terms a_j v_j, the a_j numbers */
static int lin(run *c, df_tensor *out, int nv, df_tensor *const *v, const double *a)
{
  const float *vp[DF_LIN_MAX], *cp[DF_LIN_MAX];
  float sp[DF_LIN_MAX];
  for (int j = 0; j < nv; j++) {
    vp[j] = df_data(v[j]);
    cp[j] = NULL;
    sp[j] = (float)a[j];
  }
  return c->be->rowlin(c->dev, df_data(out), c->rows, c->d, nv, vp, cp, sp);
}

/* fresh normals for this run's next draw */
static int noise(run *c, df_tensor *z)
{
  uint64_t base = c->draws++ * (uint64_t)c->n;
  return c->be->random_at(c->dev, DF_NORMAL, df_data(z), c->n, c->seed, c->stream, base);
}

/* ---- divergences ------------------------------------------------------------------------------- */

/* div s per row at x into c->rowa: t one time (trows NULL) or one per row (sigma^2 rows in rowb) */
static int div_eval(run *c, df_tensor *x, double t, df_tensor *trows)
{
  const df_score_src *src = c->src;
  const int64_t R = c->rows;
  float *out = df_data(&c->rowa), *s2r = NULL;
  float s2 = 0.0f;
  int st;
  if (trows) {
    if ((st = c->be->diffuser_eval(c->dev, &src->diff, DF_SIGMA2, df_data(&c->rowb), df_data(trows), R)))
      return st;
    s2r = df_data(&c->rowb);
  } else {
    s2 = (float)df_diffuser_sigma2_host(&src->diff, t);
  }
  if (c->div->mode == DF_DIV_EXACT && src->kind == DF_SCORE_EXACT) { /* -d / sigma^2 */
    if (!trows) return c->be->fill(c->dev, out, R, -(float)c->d / s2);
    return c->be->binary_scalar(c->dev, DF_DIV, out, s2r, -(float)c->d, 1, R);
  }
  if (c->div->mode == DF_DIV_EXACT && src->kind == DF_SCORE_MIXTURE)
    return c->be->mixture_div(c->dev, &src->mix, out, df_data(x), s2r, s2, R);
  if (c->div->mode == DF_DIV_EXACT && src->kind == DF_SCORE_CALLBACK && src->div)
    return src->div(src->ctx, out, x, trows, (float)t);
  /* v^T J v over the probes: J v from the source (exact: -v / sigma^2) */
  for (int j = 0; j < c->nprobe; j++) {
    float *jv = df_data(&c->JV[j]), *v = df_data(&c->V[j]);
    if (src->kind == DF_SCORE_EXACT) {
      df_tensor *vv[1] = { &c->V[j] };
      if (trows) { /* -v / sigma_r^2 per row */
        if ((st = c->be->binary_scalar(c->dev, DF_DIV, df_data(&c->rowt), s2r, -1.0f, 1, R))) return st;
        const float *vp[1] = { v }, *cp[1] = { df_data(&c->rowt) };
        const float sp[1] = { 0.0f };
        if ((st = c->be->rowlin(c->dev, jv, R, c->d, 1, vp, cp, sp))) return st;
      } else {
        double co[1] = { -1.0 / (double)s2 };
        (void)vv;
        const float *vp[1] = { v }, *cp[1] = { NULL };
        const float sp[1] = { (float)co[0] };
        if ((st = c->be->rowlin(c->dev, jv, R, c->d, 1, vp, cp, sp))) return st;
      }
    } else if (src->kind == DF_SCORE_MIXTURE) {
      if ((st = c->be->mixture_jvp(c->dev, &src->mix, jv, df_data(x), v, s2r, s2, R))) return st;
    }
  }
  if (src->kind == DF_SCORE_CALLBACK) {
    if (!src->jvp) return df_fail(DF_EARG, "this score has no divergence (a Lua function: use a native score or a network)");
    float *outs[64];
    const float *vs[64];
    for (int j = 0; j < c->nprobe; j++) { outs[j] = df_data(&c->JV[j]); vs[j] = df_data(&c->V[j]); }
    if ((st = src->jvp(src->ctx, c->nprobe, outs, vs, x, trows, (float)t))) return st;
  }
  /* the mean of v^T J v over the probes (for unit vectors: the sum of the diagonal) */
  const int unit = c->div->mode == DF_DIV_EXACT;
  for (int j = 0; j < c->nprobe; j++) {
    float *dst = j == 0 ? out : df_data(&c->rowb);
    if ((st = c->be->rowdot(c->dev, dst, df_data(&c->V[j]), df_data(&c->JV[j]), R, c->d))) return st;
    if (j > 0) {
      const float *vp[2] = { out, dst }, *cp[2] = { NULL, NULL };
      const float sp[2] = { 1.0f, 1.0f };
      if ((st = c->be->rowlin(c->dev, out, R, 1, 2, vp, cp, sp))) return st;
    }
  }
  if (!unit && c->nprobe > 1)
    return c->be->binary_scalar(c->dev, DF_MUL, out, out, (float)(1.0 / c->nprobe), 0, R);
  return DF_OK;
}

/* I[r] += w div s(x, t) (or w[r], with one time per row) */
static int div_acc(run *c, df_tensor *x, double t, double w, df_tensor *trows, const double *wr)
{
  if (!c->I) return DF_OK;
  int st = div_eval(c, x, t, trows);
  if (st || (st = c->be->download(c->dev, c->hbuf2, df_data(&c->rowa), c->rows))) return st;
  for (int64_t r = 0; r < c->rows; r++) c->I[r] += (wr ? wr[r] : w) * (double)c->hbuf2[r];
  return DF_OK;
}

/* the probes of a solve: Hutchinson's (from the run's stream), or a net's d unit vectors */
static int div_setup(run *c)
{
  const df_div_opts *o = c->div;
  int st;
  c->nprobe = 0;
  if (o->mode == DF_DIV_EXACT && (c->src->kind != DF_SCORE_CALLBACK || c->src->div)) return DF_OK;
  if (o->mode == DF_DIV_EXACT && c->d > 64)
    return df_fail(DF_EARG, "an exact divergence of a network in R^%d would take %d passes: use "
                   "divergence = 'hutchinson'", c->d, c->d);
  int k = o->mode == DF_DIV_EXACT ? c->d : o->probes;
  if (k < 1 || k > 64) return df_fail(DF_EARG, "probes must be from 1 to 64 (got %d)", k);
  c->V = (df_tensor *)calloc((size_t)(2 * k), sizeof(df_tensor));
  if (!c->V) return df_fail(DF_ENOMEM, "out of memory");
  c->JV = c->V + k;
  c->nprobe = k;
  for (int j = 0; j < k; j++) {
    if ((st = df_tensor_like(&c->V[j], c->x)) || (st = df_tensor_like(&c->JV[j], c->x))) return st;
    if (o->mode == DF_DIV_EXACT) { /* e_j: column j of every row (P e_j on a group) */
      float *h = (float *)calloc((size_t)c->n, sizeof(float));
      if (!h) return df_fail(DF_ENOMEM, "out of memory");
      const float off = o->tangent ? -1.0f / (float)c->d : 0.0f;
      for (int64_t r = 0; r < c->rows; r++) {
        for (int i = 0; i < c->d; i++) h[r * c->d + i] = off;
        h[r * c->d + j] += 1.0f;
      }
      st = c->be->upload(c->dev, df_data(&c->V[j]), h, c->n);
      free(h);
      if (st) return st;
    } else {
      uint64_t base = c->draws++ * (uint64_t)c->n;
      if ((st = c->be->random_at(c->dev, o->dist, df_data(&c->V[j]), c->n, c->seed, c->stream, base)))
        return st;
      if (o->tangent) { /* P v: each row's mean removed (once per solve, on the host) */
        float *h = (float *)malloc(sizeof(float) * (size_t)(c->n > 0 ? c->n : 1));
        if (!h) return df_fail(DF_ENOMEM, "out of memory");
        st = c->be->download(c->dev, h, df_data(&c->V[j]), c->n);
        for (int64_t r = 0; !st && r < c->rows; r++) {
          double m = 0.0;
          for (int i = 0; i < c->d; i++) m += h[r * c->d + i];
          m /= c->d;
          for (int i = 0; i < c->d; i++) h[r * c->d + i] = (float)(h[r * c->d + i] - m);
        }
        if (!st) st = c->be->upload(c->dev, df_data(&c->V[j]), h, c->n);
        free(h);
        if (st) return st;
      }
    }
  }
  return DF_OK;
}

static void div_free(run *c)
{
  for (int j = 0; c->V && j < 2 * c->nprobe; j++) df_tensor_release(&c->V[j]);
  free(c->V);
  c->V = c->JV = NULL;
}

/* ---- the fixed-grid methods ----------------------------------------------------------------- */

/* the Langevin corrector at time t (sigma > 0): corrector steps x += e s + sqrt(2 e) z with
   e = 2 (snr sigma)^2: score_sde's step size 2 (snr |z| / |s|)^2 with the norms at their values
   for a Gaussian of variance sigma^2 (|z|^2 = d, |s|^2 = d / sigma^2), the same for every row:
   per-row or batch norms would make a row's samples depend on its own noise draw (unstable in
   one dimension, where |s| passes through 0) or on the rest of the batch */
static int corrector(run *c, df_tensor *x, df_tensor *sc, df_tensor *z, double t)
{
  int st;
  const double sg = sqrt(df_diffuser_sigma2_host(&c->s->diff, t)), q = c->s->snr * sg, e = 2.0 * q * q;
  for (int j = 0; j < c->s->corrector; j++) {
    if ((st = eval_t(c, sc, x, t)) || (st = noise(c, z))) return st;
    df_tensor *v[3] = { x, sc, z };
    double co[3] = { 1.0, e, sqrt(2.0 * e) };
    if ((st = lin(c, x, 3, v, co))) return st;
  }
  return DF_OK;
}

static int fixed_steps(run *c, const double *t, const double *sg, int nrec, const int64_t *rec_k,
                       df_tensor *const *rec)
{
  df_sampler *s = c->s;
  const int64_t N = s->steps;
  const int m = s->method, sigma_space = s->space == DF_SPACE_SIGMA;
  df_tensor s1 = { 0 }, s2 = { 0 }, xp = { 0 }, z = { 0 }, D0 = { 0 }, D1 = { 0 }, xs4 = { 0 };
  df_tensor *x = c->x;
  int st;
  if (c->I && m != DF_EULER && m != DF_HEUN && m != DF_RK4 && !(m == DF_DDIM && s->eta == 0.0))
    return df_fail(DF_EARG, "logq needs a deterministic method with a divergence quadrature: euler, "
                   "heun, rk4, ddim (eta = 0) or rk45");
  if ((st = df_tensor_like(&s1, x)) || (st = df_tensor_like(&s2, x)) || (st = df_tensor_like(&xp, x)) ||
      (st = df_tensor_like(&z, x)) || (m == DF_RK4 && (st = df_tensor_like(&xs4, x))) ||
      (m == DF_DPMPP_2M && ((st = df_tensor_like(&D0, x)) || (st = df_tensor_like(&D1, x)))))
    goto done;
  df_tensor *Dk = &D0, *Dprev = &D1;
  for (int64_t k = 0; k < N && !st; k++) {
    const double tk = t[k], t1 = t[k + 1], a = sg[k], b = sg[k + 1];
    if ((st = df_sampler_record(x, k, nrec, rec_k, rec))) break;
    switch (m) {
    case DF_EULER:
    case DF_HEUN: {
      if ((st = eval_t(c, &s1, x, tk))) break;
      /* w0, w1: the divergence's quadrature weights at the stages (|dI| per unit div) */
      double c1, w0, w1;
      if (sigma_space) { c1 = a * (a - b); w0 = a * fabs(a - b); w1 = b * fabs(a - b); }
      else {
        double g = df_diffuser_g_host(&s->diff, tk), g1 = df_diffuser_g_host(&s->diff, t1);
        c1 = 0.5 * g * g * (tk - t1);
        w0 = 0.5 * g * g * fabs(tk - t1);
        w1 = 0.5 * g1 * g1 * fabs(tk - t1);
      }
      const int last = sigma_space ? !(b > 0.0) : !(t1 > 0.0);
      if (m == DF_EULER || last) {
        if ((st = div_acc(c, x, tk, w0, NULL, NULL))) break;
        df_tensor *v[2] = { x, &s1 };
        double co[2] = { 1.0, c1 };
        st = lin(c, x, 2, v, co);
        break;
      }
      df_tensor *v[3] = { x, &s1, &s2 };
      double co[3] = { 1.0, c1, 0.0 };
      if ((st = div_acc(c, x, tk, 0.5 * w0, NULL, NULL)) || (st = lin(c, &xp, 2, v, co)) ||
          (st = eval_t(c, &s2, &xp, t1)) || (st = div_acc(c, &xp, t1, 0.5 * w1, NULL, NULL)))
        break;
      if (sigma_space) { co[1] = 0.5 * (a - b) * a; co[2] = 0.5 * (a - b) * b; }
      else {
        double g1 = df_diffuser_g_host(&s->diff, t1);
        co[1] = 0.5 * c1;
        co[2] = 0.25 * g1 * g1 * (tk - t1);
      }
      st = lin(c, x, 3, v, co);
      break;
    }
    case DF_RK4: { /* classic Runge-Kutta in t: k_i = -g^2 s / 2 at the stages; a step that ends
                      at t = 0, where the score is singular, is Euler's */
      const double h = t1 - tk, tm = tk + 0.5 * h;
      if (!(t1 > 0.0)) {
        double g = df_diffuser_g_host(&s->diff, tk);
        df_tensor *v[2] = { x, &s1 };
        double co[2] = { 1.0, 0.5 * g * g * (tk - t1) };
        if ((st = eval_t(c, &s1, x, tk)) || (st = div_acc(c, x, tk, co[1] >= 0 ? co[1] : -co[1], NULL, NULL))) break;
        st = lin(c, x, 2, v, co);
        break;
      }
      const double ts[4] = { tk, tm, tm, t1 }, wq[4] = { 1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6 };
      df_tensor *kk[4] = { &s1, &s2, &z, &xs4 };
      for (int i = 0; i < 4 && !st; i++) {
        df_tensor *at = x;
        if (i > 0) { /* x + (h / 2 or h) k_(i-1) */
          double g = df_diffuser_g_host(&s->diff, ts[i - 1]);
          df_tensor *v[2] = { x, kk[i - 1] };
          double co[2] = { 1.0, -0.5 * g * g * (i == 3 ? h : 0.5 * h) };
          if ((st = lin(c, &xp, 2, v, co))) break;
          at = &xp;
        }
        double g = df_diffuser_g_host(&s->diff, ts[i]);
        if ((st = eval_t(c, kk[i], at, ts[i])) || (st = div_acc(c, at, ts[i], wq[i] * 0.5 * g * g * fabs(h), NULL, NULL)))
          break;
      }
      if (st) break;
      double co[5] = { 1.0, 0, 0, 0, 0 };
      for (int i = 0; i < 4; i++) {
        double g = df_diffuser_g_host(&s->diff, ts[i]);
        co[i + 1] = -0.5 * g * g * h * wq[i];
      }
      df_tensor *v[5] = { x, &s1, &s2, &z, &xs4 };
      st = lin(c, x, 5, v, co);
      break;
    }
    case DF_EULER_MARUYAMA: { /* in t: x + g^2 s dt + g sqrt(dt) z */
      double g = df_diffuser_g_host(&s->diff, tk), dt = tk - t1;
      if ((st = eval_t(c, &s1, x, tk)) || (st = noise(c, &z))) break;
      df_tensor *v[3] = { x, &s1, &z };
      double co[3] = { 1.0, g * g * dt, g * sqrt(dt) };
      st = lin(c, x, 3, v, co);
      break;
    }
    case DF_DDIM: { /* D + (sigma_down / sigma)(x - D) + sigma_up z */
      if ((st = eval_t(c, &s1, x, tk)) || (st = div_acc(c, x, tk, a * fabs(a - b), NULL, NULL))) break;
      double up = b > 0.0 ? s->eta * b * sqrt(fmax(0.0, 1.0 - (b * b) / (a * a))) : 0.0;
      double down = sqrt(fmax(0.0, b * b - up * up));
      df_tensor *v[3] = { x, &s1, &z };
      double co[3] = { 1.0, (1.0 - down / a) * a * a, up };
      if (up > 0.0 && (st = noise(c, &z))) break;
      st = lin(c, x, up > 0.0 ? 3 : 2, v, co);
      break;
    }
    case DF_DPMPP_2M: { /* k-diffusion's sample_dpmpp_2m, with D = x + sigma^2 s */
      if ((st = eval_t(c, &s1, x, tk))) break;
      df_tensor *vd[2] = { x, &s1 };
      double cd[2] = { 1.0, a * a };
      if ((st = lin(c, Dk, 2, vd, cd))) break;
      if (!(b > 0.0)) { /* the last step: sigma' = 0 gives x = D */
        st = df_copy(x, Dk);
      } else {
        double h = log(a / b), e = expm1(-h);
        df_tensor *v[3] = { x, Dk, Dprev };
        double co[3] = { b / a, -e, 0.0 };
        if (k > 0) {
          double r = log(sg[k - 1] / a) / h;
          co[1] = -e * (1.0 + 1.0 / (2.0 * r));
          co[2] = e * (1.0 / (2.0 * r));
        }
        st = lin(c, x, k > 0 ? 3 : 2, v, co);
      }
      df_tensor *sw = Dk; Dk = Dprev; Dprev = sw;
      break;
    }
    case DF_EDM: { /* Karras et al. 2022, Algorithm 2 */
      double gamma = (a >= s->s_min && a <= s->s_max) ? fmin(s->churn / (double)N, sqrt(2.0) - 1.0) : 0.0;
      double ah = a * (1.0 + gamma), th = gamma > 0.0 ? df_diffuser_t_of_sigma2(&s->diff, ah * ah) : tk;
      df_tensor *xh = x;
      if (gamma > 0.0) {
        if ((st = noise(c, &z))) break;
        df_tensor *v[2] = { x, &z };
        double co[2] = { 1.0, sqrt(ah * ah - a * a) * s->s_noise };
        if ((st = lin(c, &xp, 2, v, co))) break;
        xh = &xp;
        ah = sqrt(df_diffuser_sigma2_host(&s->diff, th)); /* (the sigma the score sees) */
      }
      if ((st = eval_t(c, &s1, xh, th))) break;
      df_tensor *v[3] = { xh, &s1, &s2 };
      double co[3] = { 1.0, (ah - b) * ah, 0.0 };
      if (!(b > 0.0)) { st = lin(c, x, 2, v, co); break; }
      df_tensor *xe = xh == x ? &xp : x; /* Euler's point, off the x-hat it started from */
      if ((st = lin(c, xe, 2, v, co)) || (st = eval_t(c, &s2, xe, t1))) break;
      co[1] = 0.5 * (ah - b) * ah;
      co[2] = 0.5 * (ah - b) * b;
      st = lin(c, x, 3, v, co);
      break;
    }
    case DF_PC: { /* reverse-diffusion predictor, then the Langevin corrector at sigma'; the
                     last predictor step, to sigma = 0, is its mean (score_sde's denoise) */
      if ((st = eval_t(c, &s1, x, tk)) || (b > 0.0 && (st = noise(c, &z)))) break;
      df_tensor *v[3] = { x, &s1, &z };
      double co[3] = { 1.0, a * a - b * b, sqrt(a * a - b * b) };
      if ((st = lin(c, x, b > 0.0 ? 3 : 2, v, co))) break;
      if (b > 0.0) st = corrector(c, x, &s1, &z, t1);
      break;
    }
    default: st = df_fail(DF_EARG, "unknown method %d", m); break;
    }
  }
  if (!st) st = df_sampler_record(x, N, nrec, rec_k, rec);
done:
  df_tensor_release(&s1);
  df_tensor_release(&s2);
  df_tensor_release(&xp);
  df_tensor_release(&z);
  df_tensor_release(&D0);
  df_tensor_release(&D1);
  df_tensor_release(&xs4);
  return st;
}

/* ---- adaptive Dormand-Prince 5(4) ------------------------------------------------------------ */

static const double DP_C[7] = { 0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0 };
static const double DP_A[7][6] = {
  { 0 },
  { 0.2 },
  { 3.0 / 40, 9.0 / 40 },
  { 44.0 / 45, -56.0 / 15, 32.0 / 9 },
  { 19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729 },
  { 9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656 },
  { 35.0 / 384, 0.0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84 },
};
/* the 5th-order weights are the last row of A (FSAL); the error weights b - b* */
static const double DP_E[7] = { 35.0 / 384 - 5179.0 / 57600, 0.0, 500.0 / 1113 - 7571.0 / 16695,
                                125.0 / 192 - 393.0 / 640, -2187.0 / 6784 + 92097.0 / 339200,
                                11.0 / 84 - 187.0 / 2100, -1.0 / 40 };

/* k = -g(t_r)^2 s(x, t_r) / 2 per row, at the host times th; with a divergence, also
   l[r] = g(t_r)^2 div s / 2 (host) */
static int rk_f(run *c, df_tensor *k, df_tensor *xs, const double *th, float *hb, double *l)
{
  int st;
  const int64_t R = c->rows;
  for (int64_t r = 0; r < R; r++) hb[r] = (float)th[r];
  if ((st = c->be->upload(c->dev, df_data(&c->rowt), hb, R)) || (st = eval_rows(c, k, xs, &c->rowt)))
    return st;
  if (l) {
    if ((st = div_eval(c, xs, 0.0, &c->rowt)) || (st = c->be->download(c->dev, c->hbuf2, df_data(&c->rowa), R)))
      return st;
    for (int64_t r = 0; r < R; r++) {
      double g = df_diffuser_g_host(&c->s->diff, th[r]);
      l[r] = 0.5 * g * g * (double)c->hbuf2[r];
    }
  }
  for (int64_t r = 0; r < R; r++) {
    double g = df_diffuser_g_host(&c->s->diff, th[r]);
    hb[r] = (float)(-0.5 * g * g);
  }
  if ((st = c->be->upload(c->dev, df_data(&c->rowa), hb, R))) return st;
  const float *vp[1] = { df_data(k) }, *cp[1] = { df_data(&c->rowa) };
  const float sp[1] = { 0.0f };
  return c->be->rowlin(c->dev, df_data(k), R, c->d, 1, vp, cp, sp);
}

/* x carried from t = ta to tb (either way), every row with its own steps; I (when asked) with
   the same weights and in the same error norm; the evaluations of each row in s->nfe_rows */
static int rk45(run *c, double ta, double tb)
{
  df_sampler *s = c->s;
  const int64_t R = c->rows, RR = R > 0 ? R : 1;
  const double dir = tb > ta ? 1.0 : -1.0;
  df_tensor K[7], xs = { 0 }, xn = { 0 }, e = { 0 };
  df_tensor coef[6];
  memset(K, 0, sizeof K);
  memset(coef, 0, sizeof coef);
  double *t = (double *)calloc((size_t)RR, (4 + 7) * sizeof(double));
  float *hb = (float *)malloc((size_t)RR * 2 * sizeof(float));
  int st = DF_OK;
  if (!t || !hb) { st = df_fail(DF_ENOMEM, "out of memory for rk45's rows"); goto done; }
  double *h = t + RR, *th = t + 2 * RR, *nfe = t + 3 * RR, *L = t + 4 * RR; /* L: 7 stages' l */
  float *errh = hb + RR;
  const int withI = c->I != NULL;
  for (int j = 0; j < 7 && !st; j++) st = df_tensor_like(&K[j], c->x);
  for (int j = 0; j < 6 && !st; j++) st = df_tensor_like(&coef[j], &c->rowt);
  if (st || (st = df_tensor_like(&xs, c->x)) || (st = df_tensor_like(&xn, c->x)) ||
      (st = df_tensor_like(&e, c->x)))
    goto done;
  for (int64_t r = 0; r < R; r++) {
    t[r] = ta;
    h[r] = dir * fmin(0.05, fabs(tb - ta)); /* the controller adapts it from the first step on */
    nfe[r] = 1.0;
  }
  if ((st = rk_f(c, &K[0], c->x, t, hb, withI ? L : NULL))) goto done;
  int64_t active = R;
  for (int64_t iter = 0; active > 0 && !st; iter++) {
    if (iter > 10000000) { st = df_fail(DF_EARG, "rk45 did not reach its end: the tolerances are too tight"); break; }
    /* stages 2..7: xs = x + h sum_j a_ij K_j, per-row h (0 for finished rows) */
    for (int i = 1; i < 7 && !st; i++) {
      const float *vp[DF_LIN_MAX], *cp[DF_LIN_MAX];
      float sp[DF_LIN_MAX];
      vp[0] = df_data(c->x);
      cp[0] = NULL;
      sp[0] = 1.0f;
      int nv = 1;
      for (int j = 0; j < i; j++) {
        if (DP_A[i][j] == 0.0) continue;
        for (int64_t r = 0; r < R; r++) hb[r] = (float)(h[r] * DP_A[i][j]);
        if ((st = c->be->upload(c->dev, df_data(&coef[nv - 1]), hb, R))) break;
        vp[nv] = df_data(&K[j]);
        cp[nv] = df_data(&coef[nv - 1]);
        sp[nv] = 0.0f;
        nv++;
      }
      if (st) break;
      df_tensor *dst = i == 6 ? &xn : &xs; /* the last stage's point is the 5th-order solution */
      if ((st = c->be->rowlin(c->dev, df_data(dst), R, c->d, nv, vp, cp, sp))) break;
      for (int64_t r = 0; r < R; r++) th[r] = t[r] + DP_C[i] * h[r];
      st = rk_f(c, &K[i], dst, th, hb, withI ? L + i * RR : NULL);
    }
    if (st) break;
    /* the error e = h sum_i (b_i - b*_i) K_i, its RMS per row in units of the tolerance */
    {
      const float *vp[DF_LIN_MAX], *cp[DF_LIN_MAX];
      float sp[DF_LIN_MAX];
      int nv = 0;
      for (int i = 0; i < 7; i++) {
        if (DP_E[i] == 0.0) continue;
        for (int64_t r = 0; r < R; r++) hb[r] = (float)(h[r] * DP_E[i]);
        if ((st = c->be->upload(c->dev, df_data(&coef[nv]), hb, R))) break;
        vp[nv] = df_data(&K[i]);
        cp[nv] = df_data(&coef[nv]);
        sp[nv] = 0.0f;
        nv++;
      }
      if (st || (st = c->be->rowlin(c->dev, df_data(&e), R, c->d, nv, vp, cp, sp)) ||
          (st = c->be->errnorm(c->dev, df_data(&c->rowa), df_data(&e), df_data(c->x), df_data(&xn), R,
                               c->d, (float)s->rtol, (float)s->atol)) ||
          (st = c->be->download(c->dev, errh, df_data(&c->rowa), R)))
        break;
    }
    /* accept or reject each row; the next step size from its error */
    active = 0;
    for (int64_t r = 0; r < R; r++) {
      if (h[r] == 0.0) { hb[r] = 0.0f; continue; } /* done */
      nfe[r] += 6.0;
      double err = (double)errh[r];
      double dI = 0.0;
      if (withI) { /* I's 5th-order increment and its error, in the same norm */
        double eI = 0.0;
        for (int i = 0; i < 7; i++) {
          dI += (i < 6 ? DP_A[6][i] : 0.0) * L[i * RR + r];
          eI += DP_E[i] * L[i * RR + r];
        }
        dI *= fabs(h[r]);
        eI *= fabs(h[r]);
        double sc = s->atol + s->rtol * fmax(fabs(c->I[r]), fabs(c->I[r] + dI));
        err = sqrt(((double)c->d * err * err + (eI / sc) * (eI / sc)) / (double)(c->d + 1));
      }
      int ok = err <= 1.0;
      if (err != err) { ok = 0; err = 1e10; } /* a NaN stage: smaller steps */
      hb[r] = ok ? 1.0f : 0.0f;
      double fac = err > 0.0 ? 0.9 * pow(err, -0.2) : 5.0;
      fac = fmin(5.0, fmax(0.2, fac));
      if (ok) {
        t[r] += h[r];
        if (withI) {
          c->I[r] += dI;
          L[r] = L[6 * RR + r]; /* FSAL */
        }
      }
      double hn = h[r] * fac;
      if (ok && !(dir * (tb - t[r]) > 1e-12 * fmax(1.0, fabs(tb)))) {
        t[r] = tb;
        h[r] = 0.0;
        continue;
      }
      if (dir * (t[r] + hn - tb) > 0.0) hn = tb - t[r]; /* land on the end */
      if (fabs(hn) < 1e-14) { st = df_fail(DF_EARG, "rk45's step underflowed at t = %g", t[r]); break; }
      h[r] = hn;
      active++;
    }
    if (st) break;
    /* x = m xn + (1 - m) x, K1 = m K7 + (1 - m) K1 (FSAL) for the accepted rows m */
    if ((st = c->be->upload(c->dev, df_data(&coef[0]), hb, R))) break;
    for (int64_t r = 0; r < R; r++) hb[r] = 1.0f - hb[r];
    if ((st = c->be->upload(c->dev, df_data(&coef[1]), hb, R))) break;
    {
      const float *vx[2] = { df_data(&xn), df_data(c->x) }, *vk[2] = { df_data(&K[6]), df_data(&K[0]) };
      const float *cp[2] = { df_data(&coef[0]), df_data(&coef[1]) };
      const float sp[2] = { 0.0f, 0.0f };
      if ((st = c->be->rowlin(c->dev, df_data(c->x), R, c->d, 2, vx, cp, sp)) ||
          (st = c->be->rowlin(c->dev, df_data(&K[0]), R, c->d, 2, vk, cp, sp)))
        break;
    }
  }
  if (!st) {
    double m = 0.0;
    for (int64_t r = 0; r < R; r++) m += nfe[r] / (double)RR;
    s->nfe_rows = m;
  }
done:
  for (int j = 0; j < 7; j++) df_tensor_release(&K[j]);
  for (int j = 0; j < 6; j++) df_tensor_release(&coef[j]);
  df_tensor_release(&xs);
  df_tensor_release(&xn);
  df_tensor_release(&e);
  free(t);
  free(hb);
  return st;
}

/* a sampler's rk45 run: from t = 1 down to t_min, then the step to 0, x + sigma(t_min)^2 s = D
   (no divergence term: the density of x0 is then that of x at t_min, pushed through D) */
static int rk45_sample(run *c, int nrec, const int64_t *rec_k, df_tensor *const *rec)
{
  df_sampler *s = c->s;
  df_tensor sc = { 0 };
  int st;
  if ((st = df_sampler_record(c->x, 0, nrec, rec_k, rec)) || (st = rk45(c, 1.0, s->t_min))) return st;
  if (c->I) return df_sampler_record(c->x, s->steps, nrec, rec_k, rec); /* logq: x at t_min, no last step */
  if ((st = df_tensor_like(&sc, c->x)) || (st = eval_t(c, &sc, c->x, s->t_min))) goto done;
  s->nfe_rows += 1.0;
  {
    df_tensor *v[2] = { c->x, &sc };
    double co[2] = { 1.0, df_diffuser_sigma2_host(&s->diff, s->t_min) };
    if ((st = lin(c, c->x, 2, v, co))) goto done;
  }
  st = df_sampler_record(c->x, s->steps, nrec, rec_k, rec);
done:
  df_tensor_release(&sc);
  return st;
}

/* ---- the entry -------------------------------------------------------------------------------- */

/* the run context of x, its scratch rows and the run's random stream */
static int run_open(run *c, df_sampler *s, const df_score_src *src, df_tensor *x,
                    const df_div_opts *div, double *I)
{
  uint64_t unused;
  int st;
  memset(c, 0, sizeof *c);
  c->s = s;
  c->src = src;
  c->x = x;
  c->be = x->be;
  c->dev = x->dev;
  c->rows = x->ndim > 0 ? x->shape[0] : 1;
  c->d = x->ndim == 2 ? (int)x->shape[1] : 1;
  c->n = x->numel;
  c->div = div;
  c->I = I;
  if (x->ndim > 2 || x->ndim < 1) return df_fail(DF_EARG, "x must be [B, d] or [B]");
  if (src->kind == DF_SCORE_MIXTURE && c->d != src->mix.d) /* (its rows are read d at a time) */
    return df_fail(DF_EARG, "x has %d columns but the mixture lives in R^%d", c->d, src->mix.d);
  if (!c->be->rowlin || !c->be->rowdot || !c->be->errnorm || !c->be->random_at || !c->be->score_eval ||
      !c->be->diffuser_eval || (I && !c->be->mixture_div))
    return df_fail(DF_EDEVICE, "these samplers are not implemented on %s", c->be->name);
  df_rng_state(&c->seed, &unused);
  c->stream = df_rng_next_stream(); /* one stream for the run, whatever its method */
  s->nfe = 0;
  s->nfe_rows = 0.0;
  int64_t one[1] = { c->rows };
  if ((st = df_tensor_alloc(&c->rowt, c->be, c->dev, 1, one)) ||
      (st = df_tensor_alloc(&c->rowa, c->be, c->dev, 1, one)) ||
      (st = df_tensor_alloc(&c->rowb, c->be, c->dev, 1, one)))
    return st;
  if (!(c->hbuf = (float *)malloc((size_t)(c->rows > 0 ? c->rows : 1) * 2 * sizeof(float))))
    return df_fail(DF_ENOMEM, "out of memory");
  c->hbuf2 = c->hbuf + (c->rows > 0 ? c->rows : 1);
  if (I) {
    for (int64_t r = 0; r < c->rows; r++) I[r] = 0.0;
    if (c->n > 0 && (st = div_setup(c))) return st;
  }
  return DF_OK;
}

static void run_close(run *c)
{
  div_free(c);
  free(c->hbuf);
  df_tensor_release(&c->rowt);
  df_tensor_release(&c->rowa);
  df_tensor_release(&c->rowb);
}

/* the grid's sigmas a score divides by must square to float32 numbers */
static int check_grid(const double *t, const double *sg, int64_t N)
{
  for (int64_t k = 0; k < N; k++)
    if (!(sg[k] * sg[k] >= FLT_MIN))
      return df_fail(DF_EARG, "sigma(t)^2 = %g at t = %g (step %lld) underflows float32: use fewer steps, "
                     "a larger sigma_min, or a diffuser whose sigma stays above 1.1e-19", sg[k] * sg[k], t[k],
                     (long long)k);
  return DF_OK;
}

int df_solve_run(df_sampler *s, const df_score_src *src, df_tensor *x, int nrec,
                 const int64_t *rec_k, df_tensor *const *rec, const df_div_opts *div, double *I)
{
  run c;
  double *t = NULL, *sg = NULL;
  int st = run_open(&c, s, src, x, div, I);
  if (st) goto done;
  if (c.n == 0) {
    for (int r = 0; r < nrec && !st; r++) st = df_copy(rec[r], x);
    goto done;
  }
  if (s->method == DF_RK45) {
    st = rk45_sample(&c, nrec, rec_k, rec);
    goto done;
  }
  t = (double *)malloc((size_t)(s->steps + 1) * 2 * sizeof(double));
  if (!t) { st = df_fail(DF_ENOMEM, "out of memory for %lld steps", (long long)s->steps); goto done; }
  sg = t + s->steps + 1;
  if ((st = df_sampler_grid(s, t, sg)) || (st = check_grid(t, sg, s->steps))) goto done;
  st = fixed_steps(&c, t, sg, nrec, rec_k, rec);
done:
  free(t);
  run_close(&c);
  return st;
}

int df_likelihood(df_sampler *s, const df_score_src *src, df_tensor *x, const df_div_opts *div,
                  double *I)
{
  run c;
  double *t = NULL;
  int st = run_open(&c, s, src, x, div, I);
  if (st || c.n == 0) goto done;
  if (s->method == DF_RK45) {
    st = rk45(&c, s->t_min, 1.0);
    goto done;
  }
  if (s->method != DF_EULER && s->method != DF_HEUN && s->method != DF_RK4) {
    st = df_fail(DF_EARG, "a likelihood integrates with euler, heun, rk4 or rk45");
    goto done;
  }
  /* t_min = t_0 < t_1 < ... < t_N = 1, uniform, stepped in t */
  const int64_t N = s->steps;
  t = (double *)malloc((size_t)(N + 1) * 2 * sizeof(double));
  if (!t) { st = df_fail(DF_ENOMEM, "out of memory for %lld steps", (long long)N); goto done; }
  double *sg = t + N + 1;
  for (int64_t k = 0; k <= N; k++) {
    t[k] = k == N ? 1.0 : s->t_min + (1.0 - s->t_min) * (double)k / (double)N;
    sg[k] = sqrt(df_diffuser_sigma2_host(&s->diff, t[k]));
  }
  if ((st = check_grid(t, sg, N + 1))) goto done;
  df_sampler up = *s;
  up.space = DF_SPACE_T;
  c.s = &up;
  st = fixed_steps(&c, t, sg, 0, NULL, NULL);
  s->nfe = up.nfe;
done:
  free(t);
  run_close(&c);
  return st;
}

int df_score_divergence(df_tensor *out, const df_score_src *src, const df_tensor *x,
                        const df_tensor *t, double t0, const df_div_opts *div)
{
  run c;
  df_sampler s;
  memset(&s, 0, sizeof s);
  s.diff = src->diff;
  double *I = NULL;
  int st;
  if ((st = df_need_live(x)) || (st = df_need_live(t))) return st;
  if (x->ndim > 2) return df_fail(DF_EARG, "x must be [B, d] or [B]");
  int64_t rows = x->ndim > 0 ? x->shape[0] : 1;
  if (!(I = (double *)malloc((size_t)(rows > 0 ? rows : 1) * sizeof(double))))
    return df_fail(DF_ENOMEM, "out of memory");
  df_tensor xc = { 0 };
  if ((st = df_tensor_like(&xc, x)) || (st = df_copy(&xc, x))) goto fail;
  if ((st = run_open(&c, &s, src, &xc, div, I))) goto done;
  if (t) {
    if (t->numel != rows || !df_same_device(x, t)) { st = df_fail(DF_EARG, "t must be a number or hold one time per row (%lld)", (long long)rows); goto done; }
    double lo, hi;
    if (rows > 0 && (st = df_minmax(t, &lo, &hi))) goto done;
    if (rows > 0 && !(lo > 0.0 && hi <= 1e30)) { st = df_fail(DF_EARG, "t must be positive and finite (the score is singular at t = 0)"); goto done; }
    if ((st = df_copy(&c.rowt, t))) goto done;
  } else if (!(t0 > 0.0) || !isfinite(t0)) {
    st = df_fail(DF_EARG, "t must be positive and finite (got %g; the score is singular at t = 0)", t0);
    goto done;
  }
  if (rows > 0 && (st = div_eval(&c, &xc, t0, t ? &c.rowt : NULL))) goto done;
  int64_t shape[1] = { rows };
  if (!(st = df_tensor_alloc(out, x->be, x->dev, 1, shape)) && rows > 0) st = df_copy(out, &c.rowa);
done:
  run_close(&c);
fail:
  df_tensor_release(&xc);
  free(I);
  return st;
}
