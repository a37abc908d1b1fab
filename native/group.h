/* group.h: diffusion on U(1) and SU(N) on eigenangles: canonical form, Haar measure, the heat
 * kernel at the identity (wrapped and character forms), class functions carried to time t
 * through their character expansion, exact draws. Formulas and oracle values:
 * ../shared/groups.md. Points are rows of N eigenangles summing to 0 (U(1): one angle); all the
 * arithmetic is per row in double on the host, whatever device the tensors live on. */
#ifndef DF_GROUP_H
#define DF_GROUP_H

#include "tensor.h"
#include "diffusion.h"

enum { DF_GROUP_U1, DF_GROUP_SU };
#define DF_GROUP_MAXN 3

typedef struct df_group {
  int kind; /* DF_GROUP_* */
  int n;    /* eigenangles per point: 1 for U(1), N for SU(N) (2 or 3) */
} df_group;

/* which form of the heat kernel: chosen by width (DF_FORM_AUTO), or forced (measurements) */
enum { DF_FORM_AUTO, DF_FORM_WRAPPED, DF_FORM_CHARACTER };

/* the widths at and above which DF_FORM_AUTO sums characters (below: lattice shifts); measured
   by examples/group_forms.lua, see docs/api.md */
double df_group_switch_width(const df_group *G);

int df_group_make(df_group *G, int kind, int n);
const char *df_group_name(const df_group *G, char *buf, int len);

/* theta must be [B, n], finite, each row's sum a multiple of 2 pi (within float rounding) */
int df_group_check_points(const df_group *G, const df_tensor *theta);
/* w: one width w0 > 0 (w == NULL) or [B] of them */
int df_group_check_widths(const df_tensor *w, double w0, int64_t rows);

/* ---- row arithmetic (double, host): theta and the results are n doubles -------------------- */

/* the canonical representative: angles in (-pi, pi], sum exactly 0 */
void df_group_canon_row(const df_group *G, double *theta);
/* log of the normalised eigenangle Haar density h = J^2 / (N! (2 pi)^(N-1)) (U(1): 1 / 2 pi) */
double df_group_haar_logh_row(const df_group *G, const double *theta);
/* the heat kernel K at width w relative to Haar: log K, its projected gradient (score, rows
   summing to 0) and the divergence of that score in the N - 1 dimensions of the torus; score
   and div may be NULL. theta need not be canonical but must sum to 0. */
void df_group_heat_row(const df_group *G, const double *theta, double w, int form, double *logk,
                       double *score, double *div);

/* ---- tensors ------------------------------------------------------------------------------ */

int df_group_canonical(df_tensor *out, const df_group *G, const df_tensor *theta);
int df_group_haar_log_density(df_tensor *out, const df_group *G, const df_tensor *theta);
/* n exact Haar draws (rejection from the uniform torus), canonical */
int df_group_haar(df_tensor *out, const df_group *G, int64_t n, uint64_t seed, uint64_t stream);
/* what: which outputs (logk [B], score [B, n], div [B]; NULL to skip) */
int df_group_heat(df_tensor *logk, df_tensor *score, df_tensor *div, const df_group *G,
                  const df_tensor *theta, const df_tensor *w, double w0, int form);
/* n exact draws from the heat kernel at the identity, width w0 (rejection, canonical) */
int df_group_heat_sample(df_tensor *out, const df_group *G, int64_t n, double w0, uint64_t seed,
                         uint64_t stream);

/* ---- class functions: p(U) = sum_mu a_mu chi_mu(U) relative to Haar ----------------------- */

/* one term per irrep mu: the highest weight plus rho (l, n entries), its Casimir and dimension,
   and c = a_mu D-normalised (see group.c: the coefficient of the alternant) */
typedef struct df_class_fn {
  df_group G;
  int nrep;
  int *l;          /* nrep x n */
  double *cas;     /* C_mu */
  double *cre, *cim; /* the alternant coefficients at t = 0 (normalised: the density integrates to 1) */
  double log_z;    /* log of the integral of the unnormalised target against Haar */
  int lmax;        /* the largest entry of l */
  double bound;    /* log of the largest |c| d (where the sums may stop) */
} df_class_fn;

/* the toy action's target exp(-S), S = -(beta/N) sum_k c_k sum_j cos(k theta_j), expanded by
   quadrature on the torus (M points per angle) to about 1e-15 of its largest coefficient */
int df_class_from_action(df_class_fn *cf, const df_group *G, double beta, const double *coef,
                         int ncoef);
void df_class_free(df_class_fn *cf);
/* the class function carried to width w: log p_t (relative to Haar), score, divergence */
void df_class_row(const df_class_fn *cf, const double *theta, double w, double *logp,
                  double *score, double *div);
int df_class_eval(df_tensor *logp, df_tensor *score, df_tensor *div, const df_class_fn *cf,
                  const df_tensor *theta, const df_tensor *w, double w0);

/* S(theta) of a toy action, per row */
double df_action_row(const df_group *G, double beta, const double *coef, int ncoef,
                     const double *theta);
/* per row of theta: S (with_haar 0) or -S + log h, the unnormalised eigenangle log-density (1) */
int df_action_eval(df_tensor *out, const df_group *G, double beta, const double *coef, int ncoef,
                   const df_tensor *theta, int with_haar);
/* n exact draws of exp(-S) h (rejection from the uniform torus under a proven bound) */
int df_action_sample(df_tensor *out, const df_group *G, double beta, const double *coef,
                     int ncoef, int64_t n, uint64_t seed, uint64_t stream);

/* ---- score sources on groups (callbacks a sampler runs natively) --------------------------- */

typedef struct df_group_score {
  df_group G;
  df_diffuser diff;
  const df_class_fn *cf; /* NULL: the heat kernel from the identity */
  /* the last evaluation's points, times and divergences (a solver asks for the score and then
     the divergence at the same points: both come from one pass) */
  float *cx, *ct, *cdiv;
  int64_t crows, ccap;
  double ct0;
  int cvalid;
} df_group_score;
void df_group_score_free(df_group_score *gs); /* the cache (not gs itself) */

int df_group_score_eval(void *ctx, df_tensor *out, const df_tensor *x, float t);
int df_group_score_eval_rows(void *ctx, df_tensor *out, const df_tensor *x, const df_tensor *t);
/* out[r] = the divergence at (x_r, t_r) (t == NULL: t0) */
int df_group_score_div(void *ctx, float *out, const df_tensor *x, const df_tensor *t, float t0);
/* Euler-Maruyama of the reverse SDE on eigenangles over a decreasing grid; x in place */
int df_group_reverse_sde(df_tensor *x, const df_group_score *gs, const double *times, int nt,
                         uint64_t seed, uint64_t stream);
/* denoising pairs with group noise: theta_t [B, n] and the target score [B, n] from x0 and one
   time per row (U(1), SU(2)) */
int df_group_dsm_pairs(df_tensor *out_x, df_tensor *out_s, const df_group *G, const df_diffuser *D,
                       const df_tensor *x0, const df_tensor *t, uint64_t seed, uint64_t stream);
/* one pair: row `row` of (seed, stream) draws the noise; x0, xt, target are n doubles */
void df_group_dsm_pair_row(const df_group *G, const df_diffuser *D, const double *x0, double t,
                           uint64_t seed, uint64_t stream, int64_t row, double *xt, double *target);
/* log of the eigenangle density at time t (log p_t relative to Haar + log h) */
int df_group_score_log_density(const df_group_score *gs, df_tensor *out, const df_tensor *x,
                               const df_tensor *t, double t0);
int df_group_score_sample(const df_group_score *gs, df_tensor *out, int64_t n, double t0,
                          uint64_t seed, uint64_t stream);

/* ---- training (group_train.c) ------------------------------------------------------------- */

struct df_net;
struct df_adam;
struct df_train_opts;
/* steps of DSM with group noise on data [R, n]: batch rows drawn at random (all when batch = R),
   t = tol + (1 - tol) U, the loss under opts' weighting, the gradient clipped, Adam, the EMA
   (nn.h's df_train_opts, as df_train); losses [steps]; progress every `every` steps and at the end */
int df_group_train(struct df_net *n, struct df_adam *o, const df_group *G, const df_diffuser *D,
                   const df_tensor *data, const struct df_train_opts *opts, df_tensor *losses);

#endif
