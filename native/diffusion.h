/* diffusion.h: the diffusion part of the core: diffusers (g, sigma, forward noising), the
 * Euclidean heat kernel, score sources and reverse-time samplers. Device work goes through the
 * backend table (backend.h); per-element formulas live in dmath.h. */
#ifndef DF_DIFFUSION_H
#define DF_DIFFUSION_H

#include "tensor.h"

/* ---- diffusers ------------------------------------------------------------------------- */

int df_diffuser_ve(df_diffuser *D, double kappa);
int df_diffuser_power(df_diffuser *D, double kappa, double alpha);
/* g(t) and sigma(t)^2 on the host, in double (sampler coefficients, scalar queries) */
double df_diffuser_g_host(const df_diffuser *D, double t);
double df_diffuser_sigma2_host(const df_diffuser *D, double t);
/* its inverse: the t of sigma(t)^2 = s2 (0 for s2 <= 0), exact in double */
double df_diffuser_t_of_sigma2(const df_diffuser *D, double s2);
/* out[i] = g, sigma or sigma^2 at t[i] (what: DF_G, DF_SIGMA, DF_SIGMA2) */
int df_diffuser_eval(df_tensor *out, const df_diffuser *D, int what, const df_tensor *t);
/* x_t = x0 + sigma(t) eta: t one time (t == NULL: t0) or one per row of x0 */
int df_diffuse(df_tensor *out, const df_diffuser *D, const df_tensor *x0, const df_tensor *t,
               double t0);
/* n draws from the prior at t = 1: sigma(1) * N(0, I_d) */
int df_prior(df_tensor *out, const df_diffuser *D, int64_t n, int64_t d);
/* t must be finite and >= 0 */
int df_check_times(const df_tensor *t);

/* ---- the heat kernel N(0, w^2 I) in R^d: x is [B, d], w one width (w == NULL: w0) or [B] --- */

int df_heat_log_density(df_tensor *out, const df_tensor *x, const df_tensor *w, double w0);
int df_heat_density(df_tensor *out, const df_tensor *x, const df_tensor *w, double w0);
int df_heat_score(df_tensor *out, const df_tensor *x, const df_tensor *w, double w0);
int df_heat_cdf(df_tensor *out, const df_tensor *x, const df_tensor *w, double w0); /* d = 1 */
int df_heat_sample(df_tensor *out, int64_t n, int64_t d, const df_tensor *w, double w0);

/* ---- score sources ----------------------------------------------------------------------- */

enum { DF_SCORE_EXACT, DF_SCORE_MIXTURE, DF_SCORE_CALLBACK };

/* What a sampler evaluates. EXACT and MIXTURE are native: a sampler runs them fused on the
   device. CALLBACK is anything else (a Lua function, a network): the sampler calls eval with
   x and the time, and eval writes s(x, t) into `out`, allocated like x by the caller (the
   sampler allocates it once per run). */
typedef struct df_score_src {
  int kind;
  df_diffuser diff;
  df_mixture mix; /* MIXTURE: host arrays owned by whoever made the source */
  int (*eval)(void *ctx, df_tensor *out, const df_tensor *x, float t);
  /* optional: one time per row of x (score(x, t) with a tensor t); out arrives released */
  int (*eval_rows)(void *ctx, df_tensor *out, const df_tensor *x, const df_tensor *t);
  /* optional: a whole sampler run natively (a network score); sets *done, or leaves it 0 to
     have the sampler step through eval instead (the device cannot) */
  int (*run)(void *ctx, const df_plan *p, df_tensor *x, int nrec, const int64_t *rec_k,
             float *const *rec_out, uint64_t seed, uint64_t stream, int *done);
  /* optional (divergences of a callback): out[j] = J v[j] for j < nv, J = d s / d x at (x, t)
     with one time per row (t) or t0; device buffers like x */
  int (*jvp)(void *ctx, int nv, float *const *out, const float *const *v, const df_tensor *x,
             const df_tensor *t, float t0);
  /* optional (an exact divergence computed by the source itself: the groups'): out[r] = div s at
     (x_r, t_r) (t == NULL: t0), a device buffer of rows floats */
  int (*div)(void *ctx, float *out, const df_tensor *x, const df_tensor *t, float t0);
  void *ctx;
} df_score_src;

/* s(x, t) for a native source: t one time (t == NULL: t0) or one per row of x */
int df_score_eval(df_tensor *out, const df_score_src *src, const df_tensor *x,
                  const df_tensor *t, double t0);
/* the mixture's log-density at time t (per row of x [B, d]) and n draws at time t0 */
int df_mixture_log_density(df_tensor *out, const df_score_src *src, const df_tensor *x,
                           const df_tensor *t, double t0);
int df_mixture_sample(df_tensor *out, const df_score_src *src, int64_t n, double t0);

/* ---- samplers ---------------------------------------------------------------------------- */

/* time grids: t_k = 1 - k / N; Karras et al.'s sigmas (rho); uniform in log sigma; a list */
enum { DF_GRID_UNIFORM, DF_GRID_KARRAS, DF_GRID_LOG_SIGMA, DF_GRID_LIST };
/* the divergence of a score: exact (closed forms; a network's through d Jacobian-vector
   products) or Hutchinson's estimator v^T J v averaged over probes fixed for a whole solve */
enum { DF_DIV_EXACT, DF_DIV_HUTCHINSON };
typedef struct df_div_opts {
  int mode;      /* DF_DIV_* */
  int probes;    /* Hutchinson: probes per row */
  int dist;      /* Hutchinson: DF_RADEMACHER or DF_NORMAL (backend.h) */
  int tangent;   /* probes projected onto rows summing to 0 (eigenangles of SU(N)): the trace of
                    P J P, the divergence within the group's N - 1 dimensions */
} df_div_opts;
/* what euler and heun step in: t (dx/dt = -g^2 s / 2, the seed's) or sigma (dx/dsigma = -sigma s) */
enum { DF_SPACE_T, DF_SPACE_SIGMA };

typedef struct df_sampler {
  df_diffuser diff;
  int method;     /* DF_EULER ... DF_RK45 (dmath.h) */
  int64_t steps;
  int64_t nfe;    /* score evaluations (of the whole batch) of the last run */
  int grid, space;
  double rho, sigma_min;        /* karras, log_sigma: sigma_min > 0 (then a last step to 0) */
  const double *times;          /* DF_GRID_LIST: steps + 1 times, decreasing (the caller's) */
  double eta;                   /* ddim: 0 deterministic, 1 ancestral */
  double churn, s_min, s_max, s_noise; /* edm: S_churn, S_min, S_max, S_noise */
  double snr;                   /* pc: the Langevin corrector's signal-to-noise ratio */
  int corrector;                /* pc: corrector steps per noise level */
  double rtol, atol, t_min;     /* rk45: tolerances; it integrates from t = 1 down to t_min */
  double nfe_rows;              /* rk45: evaluations of the mean row (rows stop on their own) */
} df_sampler;

/* Run from t = 1 to 0 on x (x1 on entry, x0 on return, in place). rec[r] (released on entry)
   receives x after rec_k[r] steps, i.e. at t = 1 - rec_k[r] / steps. With I (host, one per
   row), the divergence integral of df_solve_run too. */
int df_sampler_run(df_sampler *s, const df_score_src *src, df_tensor *x, int nrec,
                   const int64_t *rec_k, df_tensor *const *rec, const df_div_opts *div, double *I);
/* x into rec[r] for every r whose rec_k[r] is step k (a run's recorded path) */
int df_sampler_record(df_tensor *x, int64_t k, int nrec, const int64_t *rec_k, df_tensor *const *rec);
/* the grid of a sampler: t[0..steps] and sigma[0..steps] (host arrays of steps + 1), checked */
int df_sampler_grid(const df_sampler *s, double *t, double *sigma);

/* solver.c: the methods beyond the seed's fused ones (other grids, sigma-space steps, rk45).
   With I (host, one per row; NULL: none) it also integrates I = int 1/2 g^2 div s dt along the
   path with the method's own quadrature, so that log q(x0) = log prior(x1) - I (deterministic
   methods only). */
int df_solve_run(df_sampler *s, const df_score_src *src, df_tensor *x, int nrec,
                 const int64_t *rec_k, df_tensor *const *rec, const df_div_opts *div, double *I);
/* the probability-flow likelihood: x (data on entry, x1 on return) carried from t_min up to 1
   by method (DF_EULER, DF_HEUN, DF_RK4 on `steps` uniform steps in t, or DF_RK45 with s->rtol,
   s->atol), I as above: log p_(t_min)(x) = log prior(x1) - I. s supplies the diffuser, method,
   steps, t_min and tolerances; s->nfe counts the evaluations. */
int df_likelihood(df_sampler *s, const df_score_src *src, df_tensor *x, const df_div_opts *div,
                  double *I);
/* div s at x and t (one per row, or t0) into out [rows] (released on entry) */
int df_score_divergence(df_tensor *out, const df_score_src *src, const df_tensor *x,
                        const df_tensor *t, double t0, const df_div_opts *div);

#endif
