/* solver.c: the samplers beyond the seed's three fused ones: time grids (uniform, Karras, log
 * sigma, a list of times), steps in sigma as k-diffusion and EDM take them (Euler, Heun, DDIM,
 * DPM-Solver++(2M), EDM's stochastic Heun, predictor-corrector), and adaptive Dormand-Prince with
 * per-row error control. Every method is a native loop of whole-batch score evaluations and
 * per-row updates through the backend (rowlin & co), so the same code runs on every device, for
 * exact, mixture and network scores alike; randomness comes from the run's counter-based stream
 * (element index = draw * n + i), so a seed gives the same samples on every device.
 *
 * The probability-flow ODE in sigma (x_t = x0 + sigma(t) eta) is dx/dsigma = (x - D) / sigma =
 * -sigma s, with the denoiser D = x + sigma^2 s; in t it is dx/dt = -g(t)^2 s / 2. How each
 * method reaches t = 0 (sigma = 0, where the score is singular): Euler in sigma ends with the
 * step x + sigma^2 s = D (the denoiser at the last sigma); Heun, EDM and DPM++(2M) take that
 * first-order step last; DDIM's step to 0 is D too; PC's last predictor step is the mean of the
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
} run;

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

static int record(df_tensor *x, int64_t k, int nrec, const int64_t *rec_k, df_tensor *const *rec)
{
  for (int r = 0; r < nrec; r++) {
    if (rec_k[r] != k) continue;
    int st = df_copy(rec[r], x);
    if (st) return st;
  }
  return DF_OK;
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
  df_tensor s1 = { 0 }, s2 = { 0 }, xp = { 0 }, z = { 0 }, D0 = { 0 }, D1 = { 0 };
  df_tensor *x = c->x;
  int st;
  if ((st = df_tensor_like(&s1, x)) || (st = df_tensor_like(&s2, x)) || (st = df_tensor_like(&xp, x)) ||
      (st = df_tensor_like(&z, x)) ||
      (m == DF_DPMPP_2M && ((st = df_tensor_like(&D0, x)) || (st = df_tensor_like(&D1, x)))))
    goto done;
  df_tensor *Dk = &D0, *Dprev = &D1;
  for (int64_t k = 0; k < N && !st; k++) {
    const double tk = t[k], t1 = t[k + 1], a = sg[k], b = sg[k + 1];
    if ((st = record(x, k, nrec, rec_k, rec))) break;
    switch (m) {
    case DF_EULER:
    case DF_HEUN: {
      if ((st = eval_t(c, &s1, x, tk))) break;
      double c1;
      if (sigma_space) c1 = a * (a - b); /* x + (b - a)(-a s) */
      else { double g = df_diffuser_g_host(&s->diff, tk); c1 = 0.5 * g * g * (tk - t1); }
      const int last = sigma_space ? !(b > 0.0) : k == N - 1 || !(t1 > 0.0);
      if (m == DF_EULER || last) {
        df_tensor *v[2] = { x, &s1 };
        double co[2] = { 1.0, c1 };
        st = lin(c, x, 2, v, co);
        break;
      }
      df_tensor *v[3] = { x, &s1, &s2 };
      double co[3] = { 1.0, c1, 0.0 };
      if ((st = lin(c, &xp, 2, v, co)) || (st = eval_t(c, &s2, &xp, t1))) break;
      if (sigma_space) { co[1] = 0.5 * (a - b) * a; co[2] = 0.5 * (a - b) * b; }
      else {
        double g1 = df_diffuser_g_host(&s->diff, t1);
        co[1] = 0.5 * c1;
        co[2] = 0.25 * g1 * g1 * (tk - t1);
      }
      st = lin(c, x, 3, v, co);
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
      if ((st = eval_t(c, &s1, x, tk))) break;
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
  if (!st) st = record(x, N, nrec, rec_k, rec);
done:
  df_tensor_release(&s1);
  df_tensor_release(&s2);
  df_tensor_release(&xp);
  df_tensor_release(&z);
  df_tensor_release(&D0);
  df_tensor_release(&D1);
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

/* k = -g(t_r)^2 s(x, t_r) / 2 per row, at the host times th */
static int rk_f(run *c, df_tensor *k, df_tensor *xs, const double *th, float *hb)
{
  int st;
  const int64_t R = c->rows;
  for (int64_t r = 0; r < R; r++) hb[r] = (float)th[r];
  if ((st = c->be->upload(c->dev, df_data(&c->rowt), hb, R)) || (st = eval_rows(c, k, xs, &c->rowt)))
    return st;
  for (int64_t r = 0; r < R; r++) {
    double g = df_diffuser_g_host(&c->s->diff, th[r]);
    hb[r] = (float)(-0.5 * g * g);
  }
  if ((st = c->be->upload(c->dev, df_data(&c->rowa), hb, R))) return st;
  const float *vp[1] = { df_data(k) }, *cp[1] = { df_data(&c->rowa) };
  const float sp[1] = { 0.0f };
  return c->be->rowlin(c->dev, df_data(k), R, c->d, 1, vp, cp, sp);
}

static int rk45(run *c, int nrec, const int64_t *rec_k, df_tensor *const *rec)
{
  df_sampler *s = c->s;
  const int64_t R = c->rows;
  const double t_end = s->t_min;
  df_tensor K[7], xs = { 0 }, xn = { 0 }, e = { 0 };
  memset(K, 0, sizeof K);
  double *t = (double *)calloc((size_t)(R > 0 ? R : 1), 4 * sizeof(double));
  float *hb = (float *)malloc((size_t)(R > 0 ? R : 1) * 2 * sizeof(float));
  df_tensor coef[6];
  memset(coef, 0, sizeof coef);
  int st = DF_OK;
  if (!t || !hb) { st = df_fail(DF_ENOMEM, "out of memory for rk45's rows"); goto done; }
  double *h = t + R, *th = t + 2 * R, *nfe = t + 3 * R;
  float *errh = hb + R;
  for (int j = 0; j < 7 && !st; j++) st = df_tensor_like(&K[j], c->x);
  for (int j = 0; j < 6 && !st; j++) st = df_tensor_like(&coef[j], &c->rowt);
  if (st || (st = df_tensor_like(&xs, c->x)) || (st = df_tensor_like(&xn, c->x)) ||
      (st = df_tensor_like(&e, c->x)) || (st = record(c->x, 0, nrec, rec_k, rec)))
    goto done;
  for (int64_t r = 0; r < R; r++) {
    t[r] = 1.0;
    h[r] = -fmin(0.05, 1.0 - t_end); /* the controller adapts it from the first step on */
    nfe[r] = 1.0;
  }
  if ((st = rk_f(c, &K[0], c->x, t, hb))) goto done;
  int64_t active = R;
  for (int64_t iter = 0; active > 0 && !st; iter++) {
    if (iter > 10000000) { st = df_fail(DF_EARG, "rk45 did not reach t_min: the tolerances are too tight"); break; }
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
      st = rk_f(c, &K[i], dst, th, hb);
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
      int ok = err <= 1.0;
      if (err != err) { ok = 0; err = 1e10; } /* a NaN stage: smaller steps */
      hb[r] = ok ? 1.0f : 0.0f;
      double fac = err > 0.0 ? 0.9 * pow(err, -0.2) : 5.0;
      fac = fmin(5.0, fmax(0.2, fac));
      if (ok) t[r] += h[r];
      double hn = h[r] * fac;
      if (ok && !(t[r] - t_end > 1e-12 * fmax(1.0, fabs(t_end)))) {
        t[r] = t_end;
        h[r] = 0.0;
        continue;
      }
      if (t[r] + hn < t_end) hn = t_end - t[r]; /* land on t_min */
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
  if (st) goto done;
  /* the step from t_min to 0: x + sigma(t_min)^2 s = D */
  {
    df_tensor *sc = &K[1];
    double s2 = df_diffuser_sigma2_host(&s->diff, t_end);
    if ((st = eval_t(c, sc, c->x, t_end))) goto done;
    df_tensor *v[2] = { c->x, sc };
    double co[2] = { 1.0, s2 };
    if ((st = lin(c, c->x, 2, v, co))) goto done;
    st = record(c->x, s->steps, nrec, rec_k, rec);
  }
  {
    double m = 0.0;
    for (int64_t r = 0; r < R; r++) m += (nfe[r] + 1.0) / (double)(R > 0 ? R : 1);
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

/* ---- the entry -------------------------------------------------------------------------------- */

int df_solve_run(df_sampler *s, const df_score_src *src, df_tensor *x, int nrec,
                 const int64_t *rec_k, df_tensor *const *rec)
{
  run c;
  memset(&c, 0, sizeof c);
  uint64_t unused;
  int st;
  c.s = s;
  c.src = src;
  c.x = x;
  c.be = x->be;
  c.dev = x->dev;
  c.rows = x->ndim > 0 ? x->shape[0] : 1;
  c.d = x->ndim == 2 ? (int)x->shape[1] : 1;
  c.n = x->numel;
  if (!c.be->rowlin || !c.be->rowdot || !c.be->errnorm || !c.be->random_at || !c.be->score_eval ||
      !c.be->diffuser_eval)
    return df_fail(DF_EDEVICE, "these samplers are not implemented on %s", c.be->name);
  df_rng_state(&c.seed, &unused);
  c.stream = df_rng_next_stream(); /* one stream for the run, whatever its method */
  s->nfe = 0;
  s->nfe_rows = 0.0;
  int64_t one[1] = { c.rows };
  double *t = NULL, *sg = NULL;
  if ((st = df_tensor_alloc(&c.rowt, c.be, c.dev, 1, one)) ||
      (st = df_tensor_alloc(&c.rowa, c.be, c.dev, 1, one)) ||
      (st = df_tensor_alloc(&c.rowb, c.be, c.dev, 1, one)))
    goto done;
  if (!(c.hbuf = (float *)malloc((size_t)(c.rows > 0 ? c.rows : 1) * 2 * sizeof(float)))) {
    st = df_fail(DF_ENOMEM, "out of memory");
    goto done;
  }
  c.hbuf2 = c.hbuf + (c.rows > 0 ? c.rows : 1);
  if (c.n == 0) {
    for (int r = 0; r < nrec && !st; r++) st = df_copy(rec[r], x);
    goto done;
  }
  if (s->method == DF_RK45) {
    st = rk45(&c, nrec, rec_k, rec);
    goto done;
  }
  t = (double *)malloc((size_t)(s->steps + 1) * 2 * sizeof(double));
  if (!t) { st = df_fail(DF_ENOMEM, "out of memory for %lld steps", (long long)s->steps); goto done; }
  sg = t + s->steps + 1;
  if ((st = df_sampler_grid(s, t, sg))) goto done;
  for (int64_t k = 0; k < s->steps; k++) /* every sigma a score divides by: a float32 square */
    if (!(sg[k] * sg[k] >= FLT_MIN)) {
      st = df_fail(DF_EARG, "sigma(t)^2 = %g at t = %g (step %lld) underflows float32: use fewer steps, "
                   "a larger sigma_min, or a diffuser whose sigma stays above 1.1e-19", sg[k] * sg[k], t[k],
                   (long long)k);
      goto done;
    }
  st = fixed_steps(&c, t, sg, nrec, rec_k, rec);
done:
  free(t);
  free(c.hbuf);
  df_tensor_release(&c.rowt);
  df_tensor_release(&c.rowa);
  df_tensor_release(&c.rowb);
  return st;
}
