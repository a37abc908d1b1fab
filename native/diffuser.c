/* diffuser.c: diffusers (VE and power-law: g, sigma, forward noising, the prior) and the
 * Euclidean heat kernel. Everything is composed from backend operations, so it runs on
 * whichever device holds the tensors. */
#include <float.h>
#include <math.h>
#include <string.h>
#include "status.h"
#include "diffusion.h"

static const double DF_PI = 3.14159265358979323846;

/* ---- small in-place helpers over the backend table --------------------------------------- */

static int scal(df_tensor *t, int op, float s) /* t = t op s */
{
  return t->be->binary_scalar(t->dev, op, df_data(t), df_data(t), s, 0, t->numel);
}

static int unary_inplace(df_tensor *t, int op)
{
  return t->be->unary(t->dev, op, df_data(t), df_data(t), t->numel);
}

/* per-row operand: b [rows] against a [rows, cols], out = a op b[:, None] (out may be a) */
static int rowwise(df_tensor *out, int op, const df_tensor *a, const df_tensor *b, int64_t rows,
                   int64_t cols)
{
  df_bcast bc;
  memset(&bc, 0, sizeof bc);
  bc.shape[0] = bc.shape[1] = 1;
  bc.shape[2] = rows;
  bc.shape[3] = cols;
  bc.sa[2] = cols;
  bc.sa[3] = 1;
  bc.sb[2] = 1;
  bc.sb[3] = 0;
  bc.n = rows * cols;
  return a->be->binary(a->dev, op, df_data(out), df_data(a), df_data(b), &bc);
}

/* ---- diffusers --------------------------------------------------------------------------- */

int df_diffuser_ve(df_diffuser *D, double kappa)
{
  if (!isfinite(kappa) || kappa <= 0.0)
    return df_fail(DF_EARG, "kappa must be a positive finite number (got %g)", kappa);
  if (fabs(log(kappa)) > 40.0)
    return df_fail(DF_EARG, "kappa = %g is out of range [e^-40, e^40]: kappa^2 must be a normal "
                   "float32", kappa);
  memset(D, 0, sizeof *D);
  D->kind = DF_VE;
  D->kappa = kappa;
  D->lnk = log(kappa);
  return DF_OK;
}

int df_diffuser_power(df_diffuser *D, double kappa, double alpha)
{
  if (!isfinite(kappa) || !(kappa * kappa >= FLT_MIN) || kappa > 1e15) /* (kappa^2 normal) */
    return df_fail(DF_EARG, "kappa must be a number from about 1.1e-19 (its square a normal "
                   "float32) to 1e15 (got %g)", kappa);
  if (!isfinite(alpha) || alpha <= -0.5 || alpha > 50.0)
    return df_fail(DF_EARG, "alpha must be in (-0.5, 50] so that sigma(t) is finite (got %g)",
                   alpha);
  memset(D, 0, sizeof *D);
  D->kind = DF_POWER;
  D->kappa = kappa;
  D->alpha = alpha;
  D->lnk = log(kappa);
  return DF_OK;
}

double df_diffuser_g_host(const df_diffuser *D, double t)
{
  if (D->kind == DF_VE) return exp(t * D->lnk);
  return D->kappa * pow(t, D->alpha);
}

/* the time at which sigma(t)^2 = s2, the inverse of df_diffuser_sigma2_host, exact in double:
   VE t = log1p(2 ln(kappa) s2) / (2 ln kappa) (t = s2 at kappa = 1); power
   t = ((2 alpha + 1) s2 / kappa^2)^(1 / (2 alpha + 1)) */
double df_diffuser_t_of_sigma2(const df_diffuser *D, double s2)
{
  if (!(s2 > 0.0)) return 0.0;
  if (D->kind == DF_VE) return D->lnk == 0.0 ? s2 : log1p(2.0 * D->lnk * s2) / (2.0 * D->lnk);
  double p = 2.0 * D->alpha + 1.0;
  return pow(p * s2 / (D->kappa * D->kappa), 1.0 / p);
}

double df_diffuser_sigma2_host(const df_diffuser *D, double t)
{
  if (D->kind == DF_VE) return D->lnk == 0.0 ? t : expm1(2.0 * t * D->lnk) / (2.0 * D->lnk);
  double p = 2.0 * D->alpha + 1.0;
  return D->kappa * D->kappa * pow(t, p) / p;
}

int df_check_times(const df_tensor *t)
{
  double lo, hi;
  int st;
  if (t->numel == 0) return DF_OK;
  if ((st = df_minmax(t, &lo, &hi))) return st;
  if (lo != lo || hi != hi) /* (a NaN anywhere makes both NaN) */
    return df_fail(DF_EARG, "times must be finite and non-negative (found NaN)");
  if (!(lo >= 0.0) || !isfinite(hi))
    return df_fail(DF_EARG, "times must be finite and non-negative (found %g to %g)", lo, hi);
  return DF_OK;
}

static int need(const df_tensor *t, int present, const char *what)
{
  if (present) return DF_OK;
  return df_fail(DF_EDEVICE, "%s is not implemented on %s", what, t->be->name);
}

int df_diffuser_eval(df_tensor *out, const df_diffuser *D, int what, const df_tensor *t)
{
  int st;
  if ((st = need(t, t->be->diffuser_eval != NULL, "diffuser evaluation"))) return st;
  if ((st = df_check_times(t))) return st;
  if ((st = df_tensor_like(out, t))) return st;
  return t->be->diffuser_eval(t->dev, D, what, df_data(out), df_data(t), t->numel);
}

/* t as one time per row of a [rows, ...] tensor: [rows] or [rows, 1] */
static int check_row_times(const df_tensor *t, int64_t rows)
{
  if (t->numel != rows || (t->ndim > 1 && !(t->ndim == 2 && t->shape[1] == 1))) {
    char b[96];
    return df_fail(DF_EARG, "t must be a number or hold one time per row (%lld), got shape %s",
                   (long long)rows, df_shape_str(t->ndim, t->shape, b, sizeof b));
  }
  return df_check_times(t);
}

int df_diffuse(df_tensor *out, const df_diffuser *D, const df_tensor *x0, const df_tensor *t,
               double t0)
{
  int st;
  int64_t rows = x0->shape[0], cols = x0->numel / (rows > 0 ? rows : 1);
  if ((st = df_need_live(x0)) || (st = df_need_live(t))) return st;
  if (t) {
    if (!df_same_device(x0, t)) return df_fail(DF_EARG, "x0 and t are on different devices");
    if ((st = check_row_times(t, rows))) return st;
  } else if (!(t0 >= 0.0) || !isfinite(t0)) {
    return df_fail(DF_EARG, "t must be finite and non-negative (got %g)", t0);
  }
  if ((st = df_tensor_like(out, x0)) || (st = df_random(out, DF_NORMAL))) return st;
  if (!t) {
    if ((st = scal(out, DF_MUL, (float)sqrt(df_diffuser_sigma2_host(D, t0))))) return st;
  } else {
    df_tensor sig = { 0 };
    if ((st = df_diffuser_eval(&sig, D, DF_SIGMA, t))) { df_tensor_release(&sig); return st; }
    st = rowwise(out, DF_MUL, out, &sig, rows, cols);
    df_tensor_release(&sig);
    if (st) return st;
  }
  df_bcast bc; /* out = x0 + out, same shapes */
  memset(&bc, 0, sizeof bc);
  bc.shape[0] = bc.shape[1] = bc.shape[2] = 1;
  bc.shape[3] = x0->numel;
  bc.sa[3] = bc.sb[3] = 1;
  bc.n = x0->numel;
  if (bc.n == 0) return DF_OK;
  return x0->be->binary(x0->dev, DF_ADD, df_data(out), df_data(x0), df_data(out), &bc);
}

int df_prior(df_tensor *out, const df_diffuser *D, int64_t n, int64_t d)
{
  const df_backend *be;
  int dev, st;
  int64_t shape[2] = { n, d };
  df_current_device(&be, &dev);
  if ((st = df_tensor_alloc(out, be, dev, 2, shape)) || (st = df_random(out, DF_NORMAL)))
    return st;
  return scal(out, DF_MUL, (float)sqrt(df_diffuser_sigma2_host(D, 1.0)));
}

/* ---- the heat kernel ------------------------------------------------------------------------- */

/* a width's square is a float32 the kernel divides by: it must stay normal and finite */
static int width_ok(double w) { return w * w >= FLT_MIN && w * w <= FLT_MAX; }
#define WIDTH_RANGE "positive and finite, from about 1.1e-19 to 1.8e19 (its square a normal float32)"

/* x as [rows, d] (a 1-d x is [rows, 1]); the width one number or one per row */
static int heat_args(const df_tensor *x, const df_tensor *w, double w0, int64_t *rows, int64_t *d)
{
  int st0;
  if ((st0 = df_need_live(x)) || (st0 = df_need_live(w))) return st0;
  if (x->ndim > 2) {
    char b[96];
    return df_fail(DF_EARG, "x must be [B, d] or [B], got %s",
                   df_shape_str(x->ndim, x->shape, b, sizeof b));
  }
  *rows = x->shape[0];
  *d = x->ndim == 2 ? x->shape[1] : 1;
  if (!w) {
    if (!(w0 > 0.0) || !width_ok(w0)) return df_fail(DF_EARG, "width must be " WIDTH_RANGE " (got %g)", w0);
    return DF_OK;
  }
  if (!df_same_device(x, w)) return df_fail(DF_EARG, "x and width are on different devices");
  if (w->numel != *rows || w->ndim > 2 || (w->ndim == 2 && w->shape[1] != 1)) {
    char b[96];
    return df_fail(DF_EARG, "width must be a number or hold one width per row (%lld), got %s",
                   (long long)*rows, df_shape_str(w->ndim, w->shape, b, sizeof b));
  }
  double lo, hi;
  int st;
  if (w->numel > 0 && (st = df_minmax(w, &lo, &hi)))
    return st;
  if (w->numel > 0 && (!(lo > 0.0) || !width_ok(lo) || !width_ok(hi)))
    return df_fail(DF_EARG, "widths must be " WIDTH_RANGE " (found %g to %g)", lo, hi);
  return DF_OK;
}

int df_heat_log_density(df_tensor *out, const df_tensor *x, const df_tensor *w, double w0)
{
  int64_t rows = 0, d = 0;
  int st = heat_args(x, w, w0, &rows, &d);
  if (st) return st;
  /* -|x|^2 / (2 w^2) - (d / 2) log(2 pi w^2) */
  df_tensor sq = { 0 }, w2 = { 0 };
  int64_t shape[1] = { rows };
  if ((st = df_unary(&sq, DF_SQUARE, x))) goto done;
  if ((st = df_tensor_alloc(out, x->be, x->dev, 1, shape))) goto done;
  if (rows > 0 && (st = x->be->reduce_dim(x->dev, DF_RSUM, df_data(out), NULL, df_data(&sq), rows, d, 1)))
    goto done;
  if (!w) {
    double c = -0.5 * (double)d * log(2.0 * DF_PI * w0 * w0);
    if ((st = scal(out, DF_MUL, (float)(-0.5 / (w0 * w0)))) || (st = scal(out, DF_ADD, (float)c)))
      goto done;
  } else {
    if ((st = df_unary(&w2, DF_SQUARE, w))) goto done;
    if ((st = rowwise(out, DF_DIV, out, &w2, rows, 1)) || (st = scal(out, DF_MUL, -0.5f))) goto done;
    if ((st = scal(&w2, DF_MUL, (float)(2.0 * DF_PI))) || (st = unary_inplace(&w2, DF_LOG)) ||
        (st = scal(&w2, DF_MUL, (float)(0.5 * (double)d))))
      goto done;
    st = rowwise(out, DF_SUB, out, &w2, rows, 1);
  }
done:
  df_tensor_release(&sq);
  df_tensor_release(&w2);
  return st;
}

int df_heat_density(df_tensor *out, const df_tensor *x, const df_tensor *w, double w0)
{
  int st = df_heat_log_density(out, x, w, w0);
  return st ? st : unary_inplace(out, DF_EXP);
}

int df_heat_score(df_tensor *out, const df_tensor *x, const df_tensor *w, double w0)
{
  int64_t rows = 0, d = 0;
  int st = heat_args(x, w, w0, &rows, &d);
  if (st) return st;
  if (!w) return df_binary_scalar(out, DF_MUL, x, (float)(-1.0 / (w0 * w0)), 0);
  df_tensor w2 = { 0 };
  if (!(st = df_unary(&w2, DF_SQUARE, w)) && !(st = df_tensor_like(out, x)) &&
      !(st = rowwise(out, DF_DIV, x, &w2, rows, d)))
    st = scal(out, DF_MUL, -1.0f);
  df_tensor_release(&w2);
  return st;
}

int df_heat_cdf(df_tensor *out, const df_tensor *x, const df_tensor *w, double w0)
{
  int64_t rows = 0, d = 0;
  int st = heat_args(x, w, w0, &rows, &d);
  if (st) return st;
  if (d != 1) return df_fail(DF_EARG, "the CDF is for 1-d data (x is [B] or [B, 1]), got d = %lld",
                             (long long)d);
  if (!w) st = df_binary_scalar(out, DF_MUL, x, (float)(1.0 / w0), 0);
  else if (!(st = df_tensor_like(out, x))) st = rowwise(out, DF_DIV, x, w, rows, 1);
  return st ? st : unary_inplace(out, DF_NORMCDF);
}

int df_heat_sample(df_tensor *out, int64_t n, int64_t d, const df_tensor *w, double w0)
{
  const df_backend *be;
  int dev, st;
  int64_t shape[2] = { n, d };
  if ((st = df_need_live(w))) return st;
  if (w) {
    if (w->numel != n || w->ndim > 2 || (w->ndim == 2 && w->shape[1] != 1))
      return df_fail(DF_EARG, "width must be a number or hold one width per sample (%lld)",
                     (long long)n);
    be = w->be;
    dev = w->dev;
  } else {
    if (!(w0 > 0.0) || !width_ok(w0)) return df_fail(DF_EARG, "width must be " WIDTH_RANGE " (got %g)", w0);
    df_current_device(&be, &dev);
  }
  if ((st = df_tensor_alloc(out, be, dev, 2, shape)) || (st = df_random(out, DF_NORMAL))) return st;
  if (!w) return scal(out, DF_MUL, (float)w0);
  df_tensor probe = *out; /* widths checked like heat_args does */
  if ((st = heat_args(&probe, w, 1.0, &n, &d))) return st;
  return rowwise(out, DF_MUL, out, w, n, d);
}
