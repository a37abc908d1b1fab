/* backend.h: the table of operations one device provides. The core touches tensor memory only
 * through these function pointers, so the CUDA backend (kernels/) is a second table and nothing
 * above this file knows which device it runs on. Every function returns a status (status.h);
 * pointers are device pointers of that backend; sizes are element counts (float32). */
#ifndef DF_BACKEND_H
#define DF_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include "dmath.h"

#define DF_MAXDIM 4

/* reductions: to one number (reduce_all) or along one dimension (reduce_dim) */
enum { DF_RSUM, DF_RMEAN, DF_RVAR, DF_RSTD, DF_RMIN, DF_RMAX, DF_RSSD, DF_NREDUCE };

/* random distributions (DF_RADEMACHER: random_at only) */
enum { DF_UNIFORM, DF_NORMAL, DF_RADEMACHER };

#define DF_LIN_MAX 8 /* terms of one rowlin */

/* a broadcast binary op, padded to DF_MAXDIM dims: out[i0..i3] = a[sum i_d sa_d] op b[...] */
typedef struct df_bcast {
  int64_t shape[DF_MAXDIM];     /* output shape, leading dims padded with 1 */
  int64_t sa[DF_MAXDIM], sb[DF_MAXDIM]; /* element strides of a and b, 0 on broadcast dims */
  int64_t n;                    /* output elements */
} df_bcast;

/* what diffuser_eval computes */
enum { DF_G, DF_SIGMA, DF_SIGMA2 };

/* stages of a step-by-step sampler update (sample_step), see the df_step_* rules in dmath.h */
enum { DF_STAGE_EULER, DF_STAGE_EM, DF_STAGE_HEUN_PRED, DF_STAGE_HEUN_CORR };

/* a sampler run: method, steps and the per-step coefficients computed on the host in double
   (sampler.c); host arrays, which a device backend copies over */
typedef struct df_plan {
  int method;          /* DF_EULER, DF_EULER_MARUYAMA, DF_HEUN */
  int64_t steps;
  const float *sig2;   /* sigma(t_k)^2 for k = 0..steps, t_k the grid's (1 - k / steps: the seed's) */
  const float *c1, *c2; /* per step k < steps: the coefficients of dmath.h's df_step_* rules */
  /* k = 0..steps: the time of step k's evaluation, as the step-by-step path passes it; a network
     score only (net_sample): the factor a_k of the score (out - [x]) a_k, rounded to float (0
     where unused): 1 / sigma(t_k) for the seed's output convention; `denoise`: the output is a
     denoiser, x is subtracted first (df_net_score_eval defines both) */
  const float *t, *inv_sigma;
  int denoise;
} df_plan;

/* a score network as plain numbers: the Linear layers' sizes and where their weights [out, in]
   and biases [out] sit in the flat parameter buffer (nn.c builds it) */
#define DF_MAXLIN 16
#define DF_NET_MAXDIM 64 /* widest data a network takes */
#define DF_NET_MAXEMBED 8192 /* most Fourier features of the time-embedded net */
enum { DF_NET_MLP, DF_NET_TEMB, DF_NET_GRAPH };
struct df_graph;
typedef struct df_netdesc {
  int kind, dim, act;        /* DF_NET_*, data dimension, DF_ACT_* */
  const struct df_graph *graph; /* DF_NET_GRAPH: the traced graph (graph.h); the rest of this
                                   description then holds only dim, nparams, nfixed and maxw */
  int nlin;                  /* MLP: hidden layers + 1; TEMB: 3 (time, x, output) */
  int in[DF_MAXLIN], out[DF_MAXLIN];
  int64_t woff[DF_MAXLIN], boff[DF_MAXLIN];
  int embed;                 /* TEMB: Fourier features (embed / 2 frequencies, sin and cos) */
  int64_t nparams, nfixed;   /* trainable parameters; fixed ones (TEMB: the frequencies W) */
  int maxw;                  /* widest layer */
} df_netdesc;

/* one denoising-score-matching step's draws: batch rows of data (drawn with replacement from
   stream st_idx when sample is set), t = tol + (1 - tol) U from st_t, eta from st_eta */
typedef struct df_dsm {
  df_diffuser diff;
  const float *data;
  int64_t data_rows, batch;
  int sample;
  int output, weighting;        /* DF_OUT_*, DF_W_* (dmath.h): the loss df_dsm_residual defines */
  float tol;
  uint64_t seed, st_idx, st_t, st_eta;
} df_dsm;

/* Adam's constants for one step (optim.c): step = lr / (1 - b1^t), sqrt_bc2 = sqrt(1 - b2^t) */
typedef struct df_adam_hp {
  float b1, b2, eps, wd, step, sqrt_bc2;
} df_adam_hp;

/* a stretch of the training loop: steps dsm jobs and Adam updates in a row. Step j draws from
   streams first + j * nstreams + (0, 1[, 2]) in dsm_job's order (index stream first when
   sampling rows); its Adam constants are step_size[j] and sqrt_bc2[j] (host arrays) */
typedef struct df_train_job {
  df_dsm dsm;            /* step 0's job */
  int nstreams;          /* 2, or 3 when rows are sampled */
  int64_t steps;
  const float *step_size, *sqrt_bc2;
  float b1, b2, eps, wd;
  float clip;            /* > 0: gradients scaled by min(1, clip / (norm + 1e-6)) before Adam */
  float *ema;            /* not NULL: ema = ema d + params (1 - d) after each Adam step */
  float ema_decay;
} df_train_job;

typedef struct df_backend {
  const char *name;                                  /* "cpu", "cuda" */
  int (*device_count)(int *count);
  int (*device_name)(int dev, char *buf, size_t len);
  int (*alloc)(int dev, int64_t n, float **p);      /* n may be 0 */
  void (*release)(int dev, float *p);
  int (*upload)(int dev, float *dst, const float *src, int64_t n);   /* host -> device */
  int (*download)(int dev, float *dst, const float *src, int64_t n); /* device -> host */
  /* rows x cols block: dst[r*ldd + c] = src[r*lds + c] (cat, views, copies) */
  int (*copy2d)(int dev, float *dst, int64_t ldd, const float *src, int64_t lds,
                int64_t rows, int64_t cols);
  int (*fill)(int dev, float *x, int64_t n, float v);
  /* x[i] = start + i * step, and x[n-1] = last exactly (linspace's endpoint) */
  int (*ramp)(int dev, float *x, int64_t n, double start, double step, double last);
  /* element i from (seed, stream, i) through the shared Philox: independent of the device */
  int (*random)(int dev, int dist, float *x, int64_t n, uint64_t seed, uint64_t stream);
  int (*unary)(int dev, int op, float *out, const float *a, int64_t n);
  int (*binary)(int dev, int op, float *out, const float *a, const float *b, const df_bcast *bc);
  int (*binary_scalar)(int dev, int op, float *out, const float *a, float s, int scalar_left,
                       int64_t n);
  /* DF_RSUM, DF_RMIN, DF_RMAX, DF_RSSD (sum of (a - param)^2) over all n, in double */
  int (*reduce_all)(int dev, int op, const float *a, int64_t n, double param, double *res);
  /* a viewed as [outer, len, inner], reduced over len into out [outer, inner]; for
     DF_RMIN/DF_RMAX, idx (if not NULL) gets the 1-based position of the first extremum */
  int (*reduce_dim)(int dev, int op, float *out, float *idx, const float *a, int64_t outer,
                    int64_t len, int64_t inner);
  /* c[b] = a[b] (m x k) * b[b] (k x n), row-major; a batch stride of 0 broadcasts */
  int (*matmul)(int dev, float *c, const float *a, const float *b, int64_t batch, int64_t m,
                int64_t k, int64_t n, int64_t stride_a, int64_t stride_b);
  /* counts (host array of bins) of x in [lo, hi]; the last bin includes hi; others skipped */
  int (*histogram)(int dev, const float *x, int64_t n, int64_t bins, double lo, double hi,
                   int64_t *counts);
  int (*sync)(int dev);

  /* ---- diffusion (diffusion.h): NULL members mean "not on this device" ---- */
  /* out[i] = g, sigma or sigma^2 of the diffuser at t[i] */
  int (*diffuser_eval)(int dev, const df_diffuser *D, int what, float *out, const float *t,
                       int64_t n);
  /* out [rows, d] = score at x [rows, d]; m == NULL: the heat kernel from the origin, -x/sigma^2;
     sigma^2 per row (sig2_rows) or one value for all (sig2_rows == NULL) */
  int (*score_eval)(int dev, const df_mixture *m, float *out, const float *x,
                    const float *sig2_rows, float sig2, int64_t rows, int d);
  int (*mixture_logpdf)(int dev, const df_mixture *m, float *out, const float *x,
                        const float *sig2_rows, float sig2, int64_t rows);
  /* rows draws; the component from uniform stream su, the Gaussians from normal stream sz */
  int (*mixture_sample)(int dev, const df_mixture *m, float *out, const float *sig2_rows,
                        float sig2, int64_t rows, uint64_t seed, uint64_t su, uint64_t sz);
  /* a whole sampler run with a native score (m == NULL: exact) in one call; x [rows, d] is
     updated in place; rec_out[r] receives x after rec_k[r] steps */
  int (*sample_fused)(int dev, const df_plan *p, const df_mixture *m, float *x, int64_t rows,
                      int d, int nrec, const int64_t *rec_k, float *const *rec_out,
                      uint64_t seed, uint64_t stream);
  /* one stage of step k of a step-by-step run over n elements: EULER x += c1 s; EM x += c1 s +
     c2 z; HEUN_PRED xp = x + c1 s; HEUN_CORR x += (c1 s + c2 s2) / 2 */
  int (*sample_step)(int dev, int stage, float *x, float *xp, const float *s, const float *s2,
                     float c1, float c2, int64_t n, int64_t k, uint64_t seed, uint64_t stream);

  /* ---- the solvers (solver.c): per-row arithmetic over [rows, d] blocks ---- */
  /* out [rows, d] = sum_j a_j v_j over j < nv <= DF_LIN_MAX, a_j = coef[j][r] per row when
     coef[j] is not NULL, else the number s[j]; products rounded one by one and added left to
     right (no fma), so every device computes the same; out may be one of the v_j */
  int (*rowlin)(int dev, float *out, int64_t rows, int d, int nv, const float *const *v,
                const float *const *coef, const float *s);
  /* out [rows] = sum over each row of a * b (in double, rounded once) */
  int (*rowdot)(int dev, float *out, const float *a, const float *b, int64_t rows, int d);
  /* out [rows] = the RMS over each row of e / (atol + rtol max(|a|, |b|)): an adaptive step's
     error in units of the tolerance */
  int (*errnorm)(int dev, float *out, const float *e, const float *a, const float *b, int64_t rows,
                 int d, float rtol, float atol);
  /* x[i] = element base + i of the stream (uniform, normal or Rademacher) */
  int (*random_at)(int dev, int dist, float *x, int64_t n, uint64_t seed, uint64_t stream,
                   uint64_t base);
  /* the mixture's score divergence (out [rows]) and Jacobian-vector products (out [rows, d] =
     J v), sigma^2 per row or one value */
  int (*mixture_div)(int dev, const df_mixture *m, float *out, const float *x,
                     const float *sig2_rows, float sig2, int64_t rows);
  int (*mixture_jvp)(int dev, const df_mixture *m, float *out, const float *x, const float *v,
                     const float *sig2_rows, float sig2, int64_t rows);

  /* ---- score networks (nn.h); x [rows, dim], t one per row (or t0 when t == NULL) ---- */
  /* floats of device workspace a forward of `rows` rows keeps for the backward */
  int64_t (*net_workspace)(const df_netdesc *nd, int64_t rows);
  /* out [rows, dim] = net(x, t), using ws (net_workspace(nd, rows) floats); with keep, ws
     then holds what net_backward needs */
  int (*net_forward)(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                     const float *x, const float *t, float t0, int64_t rows, float *out,
                     float *ws, int keep);
  /* grads += d(sum of dout * out) / d params, for the forward that filled ws (kept); the
     backward may use the rest of ws as scratch */
  int (*net_backward)(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                      const float *x, const float *t, float t0, int64_t rows,
                      const float *dout, float *grads, float *ws);
  /* one DSM step: draws, forward, loss = mean((net(x_t, t) + eta)^2) into *loss (device
     memory), grads += its gradient; ws holds net_workspace(nd, batch) floats */
  int (*dsm_step)(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                  float *grads, const df_dsm *job, float *loss, float *ws);
  /* p, m, v updated from g in one pass */
  int (*adam)(int dev, float *p, const float *g, float *m, float *v, int64_t n,
              const df_adam_hp *hp);
  /* e = e decay + p (1 - decay) (dmath.h's df_ema_update), the weights' moving average */
  int (*ema)(int dev, float *e, const float *p, int64_t n, float decay);
  /* optional (NULL: the core loops over dsm_step and adam): job->steps training steps in one
     call, each zero_grad, dsm_step, adam, with the losses into losses[0 .. steps) (device) --
     the CUDA backend replays a captured graph here so a tiny net is not launch-bound */
  int (*train_steps)(int dev, const df_netdesc *nd, float *params, const float *fixed,
                     float *grads, float *m, float *v, const df_train_job *job, float *losses,
                     float *ws);
  /* optional: out[j] = J v[j] for j < nv, J = d net(x, t) / d x per row (forward mode), for a
     traced graph's description (the core hands the seed's nets over as their graphs); ws holds
     net_jvp_workspace(nd, rows) floats */
  int64_t (*net_jvp_workspace)(const df_netdesc *nd, int64_t rows);
  int (*net_jvp)(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                 const float *x, const float *t, float t0, int64_t rows, int nv,
                 const float *const *v, float *const *out, float *ws);
  /* optional (NULL: the sampler steps through net_forward): a whole sampler run with the score
     net(x, t_k) * p->inv_sigma[k] in one call, x [rows, dim] updated in place, rec_out as in
     sample_fused; bitwise the step-by-step run's result; ws holds net_workspace(nd, rows).
     *done = 0 (and nothing touched) declines a network it has no kernel for. */
  int (*net_sample)(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                    const df_plan *p, float *x, int64_t rows, int nrec, const int64_t *rec_k,
                    float *const *rec_out, uint64_t seed, uint64_t stream, float *ws,
                    int *done);
} df_backend;

/* what the core hands to a backend module (kernels/) when it loads: the ABI version it was
   built for, how to register, and the core's error reporter */
#define DF_CORE_ABI 1
typedef struct df_core_api {
  int abi;
  int (*register_backend)(const df_backend *be);
  int (*fail)(int code, const char *fmt, ...);
} df_core_api;

/* the registry of backends; the CPU is always there */
int df_register_backend(const df_backend *be);
const df_backend *df_find_backend(const char *name);
extern const df_backend df_cpu_backend;

#endif
