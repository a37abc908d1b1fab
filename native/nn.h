/* nn.h: score networks (the seed's plain MLP and the time-embedded net), the denoising score
 * matching loss, Adam, the native training loop, the network score source and checkpoints.
 * Parameters live in one flat device buffer, gradients in another. */
#ifndef DF_NN_H
#define DF_NN_H

#include "tensor.h"
#include "diffusion.h"

/* net.output: DF_OUT_* (dmath.h) */
extern const char *const df_output_names[DF_NOUT + 1];

typedef struct df_net {
  df_netdesc d;
  int output;               /* DF_OUT_* */
  double scale;             /* TEMB: std of the Fourier frequencies */
  const df_backend *be;
  int dev;
  int live;
  float *params, *grads, *fixed;
  float *ws;                /* workspace: the forward cache and scratch */
  int64_t ws_floats;
  float *in_x, *in_t;       /* the inputs of the last kept forward, for backward */
  int64_t in_cap, cached_rows; /* cached_rows < 0: nothing to go backward from */
  int cached_has_t;
  float cached_t0;
  float *loss;              /* one float of device memory for dsm_step */
  struct df_graph *shadow;  /* the seed nets' graph, for their Jacobians (made on first need) */
  float *jws;               /* the Jacobian-vector products' workspace */
  int64_t jws_floats;
} df_net;

/* descriptions: validate the sizes and lay out the parameters */
int df_netdesc_mlp(df_netdesc *d, int dim, int nhidden, const int64_t *hidden, int act);
int df_netdesc_temb(df_netdesc *d, int dim, int hidden, int embed, int act);
struct df_graph;
int df_netdesc_graph(df_netdesc *d, const struct df_graph *g);
/* allocate on a device and initialise as torch's nn.Linear (uniform +-1/sqrt(fan_in)) from the
   current random streams; TEMB frequencies ~ N(0, scale^2) */
int df_net_create(df_net *n, const df_netdesc *d, double scale, const df_backend *be, int dev);
/* the same buffers, uninitialised and without touching the random streams (for loading) */
int df_net_alloc(df_net *n, const df_netdesc *d, double scale, const df_backend *be, int dev);
void df_net_release(df_net *n);
int df_net_forward(df_net *n, df_tensor *out, const df_tensor *x, const df_tensor *t, double t0,
                   int keep);
int df_net_backward(df_net *n, const df_tensor *dout);
int df_net_zero_grad(df_net *n);
int df_net_to(df_net *n, const df_backend *be, int dev);
enum { DF_PARAMS, DF_GRADS, DF_FIXED };
int df_net_get(const df_net *n, int which, df_tensor *out);  /* a copy, on the net's device */
int df_net_set(df_net *n, int which, const df_tensor *src);

/* the score source s(x, t) = net(x, t) / sigma(t) */
int df_net_score_eval(void *net_and_diffuser, df_tensor *out, const df_tensor *x, float t);
int df_net_score_eval_rows(void *net_and_diffuser, df_tensor *out, const df_tensor *x,
                           const df_tensor *t);
/* out[j] = J v[j], J = d net(x, t) / d x per row (t one per row, or t0 when NULL); device
   buffers [rows, dim] */
int df_net_jvp(df_net *n, const df_tensor *x, const df_tensor *t, double t0, int nv,
               const float *const *v, float *const *out);
/* the score's (df_score_src.jvp): the convention's factor applied to the net's J v */
int df_net_score_jvp(void *net_and_diffuser, int nv, float *const *out, const float *const *v,
                     const df_tensor *x, const df_tensor *t, float t0);
/* a whole sampler run natively (df_score_src.run) when the net's device has net_sample */
int df_net_score_run(void *net_and_diffuser, const df_plan *p, df_tensor *x, int nrec,
                     const int64_t *rec_k, float *const *rec_out, uint64_t seed, uint64_t stream,
                     int *done);
typedef struct df_net_score {
  df_net *net;
  df_diffuser diff;
  df_tensor sig;            /* per-row widths of eval_rows, kept between calls (released with it) */
} df_net_score;

/* a learning-rate schedule over the optimizer's steps t = 1, 2, ...: lr t / warmup for
   t <= warmup, then from lr down to min_lr at step `total` (cosine or linear), min_lr after;
   DF_DECAY_NONE keeps lr after the warmup */
enum { DF_DECAY_NONE, DF_DECAY_COSINE, DF_DECAY_LINEAR };
typedef struct df_schedule {
  int64_t warmup, total;
  int decay;
  double min_lr;
} df_schedule;

typedef struct df_adam {
  double lr, b1, b2, eps, wd;
  df_schedule sched;        /* (all zero: the constant lr) */
  double ema;               /* the decay of the weights' EMA kept with it (0: none) */
  int64_t t, n;             /* steps taken, parameters */
  const df_backend *be;
  int dev;
  int live;
  float *m, *v;
} df_adam;

int df_adam_create(df_adam *o, const df_net *n, double lr, double b1, double b2, double eps,
                   double wd);
int df_adam_check_lr(double lr); /* DF_OK, or why lr cannot be used */
int df_adam_set_schedule(df_adam *o, const df_schedule *s); /* checked */
double df_adam_lr(const df_adam *o, int64_t t); /* the scheduled lr of step t */
#define DF_MAX_STEPS ((int64_t)1 << 53) /* Adam steps (and training steps) at most */
int df_adam_step(df_adam *o, df_net *n);
void df_adam_release(df_adam *o);

/* one DSM step on x0 [B, dim] (all rows): draws from the current streams, grads += gradient;
   the loss of the net's output convention under `weighting` (DF_W_*) */
int df_dsm_loss(df_net *n, const df_diffuser *D, const df_tensor *x0, double tol, int weighting,
                double *loss);
int df_check_weighting(int weighting, int output, double tol);

/* the whole loop: each step zero_grad, dsm (batch rows of data, drawn at random when data has
   more rows), the gradient clipped to a global norm of at most clip (clip > 0, as torch's
   clip_grad_norm_), Adam at the optimizer's scheduled lr, then ema = d ema + (1 - d) params when
   ema is not NULL (d = o->ema); losses [steps] (released on entry). progress (if not NULL) is
   called about every `every` seconds and at the end; a non-zero return stops with that status. */
typedef int (*df_progress_fn)(void *ctx, int64_t step, int64_t total, double loss);
typedef struct df_train_opts {
  int64_t steps, batch;
  double tol, clip;
  int weighting;
  df_net *ema;
  df_progress_fn progress;
  void *ctx;
  double every;
} df_train_opts;
int df_train(df_net *n, df_adam *o, const df_diffuser *D, const df_tensor *data,
             const df_train_opts *opts, df_tensor *losses);
/* the gradient scaled to a global norm of at most clip (torch's clip_grad_norm_) */
int df_net_clip_grads(df_net *n, double clip);
/* DF_OK when e (NULL: none) can hold the EMA of n's weights */
int df_net_check_ema(const df_net *n, const df_net *e);
/* a copy of n (same description and device, the same parameters): an EMA's start */
int df_net_clone(df_net *dst, const df_net *n);

/* checkpoints (checkpoint.c): the net, optionally its optimizer, and the random-stream state */
/* (ema: the weights' EMA of an optimizer with o->ema, saved with it; may be NULL) */
int df_save(const char *path, const df_net *n, const df_adam *o, const df_net *ema, uint64_t seed,
            uint64_t stream);
/* reads onto (be, dev); *has_opt tells whether o was filled, *has_ema whether ema was */
int df_load(const char *path, df_net *n, df_adam *o, int *has_opt, df_net *ema, int *has_ema,
            uint64_t *seed, uint64_t *stream, const df_backend *be, int dev);

#endif
