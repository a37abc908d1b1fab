/* l_diffusion.c: the Lua face of the diffusion core: diffuse.heat, the diffuser userdata
 * (diffuse.ve, diffuse.power), score sources (diffuse.score.exact, .mixture, and Lua functions)
 * and the sampler userdata (diffuse.sampler). */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "l_util.h"
#include "status.h"
#include "diffusion.h"
#include "l_diffusion.h"

#define MIX_MAXD 64

/* ---- diffusers -------------------------------------------------------------------------- */

df_diffuser *l_checkdiffuser(lua_State *L, int idx, const char *fname, const char *what)
{
  df_diffuser *D = (df_diffuser *)luaL_testudata(L, idx, DF_DIFFUSER_MT);
  if (!D) l_error(L, fname, "%s must be a diffuser (diffuse.ve or diffuse.power), got %s", what,
                  luaL_typename(L, idx));
  return D;
}

static int d_ve(lua_State *L)
{
  const char *fname = "diffuse.ve";
  double kappa = l_checknum(L, 1, fname, "kappa");
  df_diffuser *D = (df_diffuser *)lua_newuserdatauv(L, sizeof *D, 0);
  l_check(L, df_diffuser_ve(D, kappa), fname);
  luaL_setmetatable(L, DF_DIFFUSER_MT);
  return 1;
}

static int d_power(lua_State *L)
{
  const char *fname = "diffuse.power";
  double kappa = l_checknum(L, 1, fname, "kappa"), alpha = l_checknum(L, 2, fname, "alpha");
  df_diffuser *D = (df_diffuser *)lua_newuserdatauv(L, sizeof *D, 0);
  l_check(L, df_diffuser_power(D, kappa, alpha), fname);
  luaL_setmetatable(L, DF_DIFFUSER_MT);
  return 1;
}

static double check_time(lua_State *L, int idx, const char *fname)
{
  double t = l_checknum(L, idx, fname, "t");
  if (!(t >= 0.0) || !isfinite(t)) l_error(L, fname, "t must be finite and non-negative (got %g)", t);
  return t;
}

/* a time argument: a number (into *t0; nil gives def when def >= 0) or one time per row */
static df_tensor *time_arg(lua_State *L, int idx, const char *fname, double def, double *t0)
{
  *t0 = def;
  if (def >= 0.0 && lua_isnoneornil(L, idx)) return NULL;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    *t0 = check_time(L, idx, fname);
    return NULL;
  }
  return l_checktensor(L, idx, fname, "t");
}

/* ve:g(t), ve:sigma(t): t a number (a number back) or a tensor (a tensor back) */
static int diffuser_value(lua_State *L, int what, const char *fname)
{
  df_diffuser *D = l_checkdiffuser(L, 1, fname, "self");
  if (lua_type(L, 2) == LUA_TNUMBER) {
    double t = check_time(L, 2, fname);
    double v = what == DF_G ? df_diffuser_g_host(D, t) : df_diffuser_sigma2_host(D, t);
    lua_pushnumber(L, what == DF_SIGMA ? sqrt(v) : v);
    return 1;
  }
  df_tensor *t = l_checktensor(L, 2, fname, "t");
  df_tensor *out = l_newtensor(L);
  l_check(L, df_diffuser_eval(out, D, what, t), fname);
  return 1;
}

static int df_g(lua_State *L) { return diffuser_value(L, DF_G, "diffuse.diffuser.g"); }
static int df_sigma(lua_State *L) { return diffuser_value(L, DF_SIGMA, "diffuse.diffuser.sigma"); }
static int df_sigma2(lua_State *L) { return diffuser_value(L, DF_SIGMA2, "diffuse.diffuser.sigma2"); }

/* ve:diffuse(x0, t): x0 + sigma(t) eta, t a number or one time per row */
static int df_diffuse_l(lua_State *L)
{
  const char *fname = "diffuse.diffuser.diffuse";
  df_diffuser *D = l_checkdiffuser(L, 1, fname, "self");
  df_tensor *x0 = l_checktensor(L, 2, fname, "x0");
  double t0;
  df_tensor *t = time_arg(L, 3, fname, -1.0, &t0);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_diffuse(out, D, x0, t, t0), fname);
  l_gc_pressure(L, out->numel * 4);
  return 1;
}

/* ve:prior(n [, d]): n draws at t = 1 */
static int df_prior_l(lua_State *L)
{
  const char *fname = "diffuse.diffuser.prior";
  df_diffuser *D = l_checkdiffuser(L, 1, fname, "self");
  int64_t n = l_checkint(L, 2, fname, "n"), d = l_optint(L, 3, 1, fname, "d");
  if (n < 0 || d < 1) l_error(L, fname, "n must be >= 0 and d >= 1 (got %lld and %lld)",
                              (long long)n, (long long)d);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_prior(out, D, n, d), fname);
  l_gc_pressure(L, out->numel * 4);
  return 1;
}

static int df_index(lua_State *L)
{
  df_diffuser *D = l_checkdiffuser(L, 1, "diffuse.diffuser", "self");
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "kappa") == 0) lua_pushnumber(L, D->kappa);
  else if (k && strcmp(k, "alpha") == 0 && D->kind == DF_POWER) lua_pushnumber(L, D->alpha);
  else if (k && strcmp(k, "kind") == 0) lua_pushstring(L, D->kind == DF_VE ? "ve" : "power");
  else {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
  }
  return 1;
}

static int df_tostring(lua_State *L)
{
  df_diffuser *D = l_checkdiffuser(L, 1, "diffuse.diffuser", "self");
  if (D->kind == DF_VE) lua_pushfstring(L, "diffuse.ve(%f): g(t) = kappa^t, sigma(1) = %f",
                                        D->kappa, sqrt(df_diffuser_sigma2_host(D, 1.0)));
  else lua_pushfstring(L, "diffuse.power(%f, %f): g(t) = kappa t^alpha, sigma(1) = %f", D->kappa,
                       D->alpha, sqrt(df_diffuser_sigma2_host(D, 1.0)));
  return 1;
}

/* ---- the heat kernel ------------------------------------------------------------------------ */

/* width: a number or a tensor of one width per row */
static df_tensor *heat_width(lua_State *L, int idx, const char *fname, double *w0)
{
  if (lua_type(L, idx) == LUA_TNUMBER) {
    *w0 = lua_tonumber(L, idx);
    return NULL;
  }
  if (!l_totensor(L, idx, fname))
    l_error(L, fname, "width must be a number or a tensor (got %s)", luaL_typename(L, idx));
  return l_totensor(L, idx, fname);
}

static int heat_fn(lua_State *L, int (*fn)(df_tensor *, const df_tensor *, const df_tensor *, double),
                   const char *fname)
{
  df_tensor *x = l_checktensor(L, 1, fname, "x");
  double w0 = 0.0;
  df_tensor *w = heat_width(L, 2, fname, &w0);
  df_tensor *out = l_newtensor(L);
  l_check(L, fn(out, x, w, w0), fname);
  l_gc_pressure(L, out->numel * 4);
  return 1;
}

static int h_density(lua_State *L) { return heat_fn(L, df_heat_density, "diffuse.heat.density"); }
static int h_log_density(lua_State *L) { return heat_fn(L, df_heat_log_density, "diffuse.heat.log_density"); }
static int h_score(lua_State *L) { return heat_fn(L, df_heat_score, "diffuse.heat.score"); }
static int h_cdf(lua_State *L) { return heat_fn(L, df_heat_cdf, "diffuse.heat.cdf"); }

static int h_sample(lua_State *L)
{
  const char *fname = "diffuse.heat.sample";
  int64_t n = l_checkint(L, 1, fname, "n");
  double w0 = 0.0;
  df_tensor *w = heat_width(L, 2, fname, &w0);
  int64_t d = l_optint(L, 3, 1, fname, "d");
  if (n < 0 || d < 1) l_error(L, fname, "n must be >= 0 and d >= 1 (got %lld and %lld)",
                              (long long)n, (long long)d);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_heat_sample(out, n, d, w, w0), fname);
  l_gc_pressure(L, out->numel * 4);
  return 1;
}

/* ---- score sources ---------------------------------------------------------------------------- */

static l_score *new_score(lua_State *L, int kind, const df_diffuser *D)
{
  l_score *s = (l_score *)lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, DF_SCORE_MT);
  s->src.kind = kind;
  s->src.diff = *D;
  s->live = 1;
  return s;
}

l_score *l_checkscore(lua_State *L, int idx, const char *fname, const char *what)
{
  l_score *s = (l_score *)luaL_testudata(L, idx, DF_SCORE_MT);
  if (!s) l_error(L, fname, "%s must be a score source (got %s)", what, luaL_typename(L, idx));
  if (!s->live) l_error(L, fname, "attempt to use a released score source");
  return s;
}

static int s_exact(lua_State *L)
{
  const char *fname = "diffuse.score.exact";
  df_diffuser *D = l_checkdiffuser(L, 1, fname, "diffuser");
  new_score(L, DF_SCORE_EXACT, D);
  return 1;
}

/* reads a list of K numbers from field `key` of the table at idx */
static int mix_list(lua_State *L, int idx, const char *key, const char *fname)
{
  if (lua_getfield(L, idx, key) != LUA_TTABLE)
    l_error(L, fname, "%s must be a list (got %s)", key, luaL_typename(L, -1));
  return (int)lua_rawlen(L, -1);
}

/* diffuse.score.mixture(diffuser, {weights = {...}, means = {...}, stds = {...}}) */
static int s_mixture(lua_State *L)
{
  const char *fname = "diffuse.score.mixture";
  static const char *const opts[] = { "weights", "means", "stds", NULL };
  df_diffuser *D = l_checkdiffuser(L, 1, fname, "diffuser");
  if (!lua_istable(L, 2)) l_error(L, fname, "expected {weights = ..., means = ..., stds = ...}");
  l_checkopts(L, 2, fname, opts);
  int k = mix_list(L, 2, "weights", fname);
  if (k < 1 || k > 4096) l_error(L, fname, "weights must list 1 to 4096 components (got %d)", k);
  if (mix_list(L, 2, "means", fname) != k || mix_list(L, 2, "stds", fname) != k)
    l_error(L, fname, "weights, means and stds must have the same length (%d)", k);
  int wi = lua_gettop(L) - 2, mi = wi + 1, si = wi + 2;
  lua_rawgeti(L, mi, 1);
  int d = lua_istable(L, -1) ? (int)lua_rawlen(L, -1) : 1;
  lua_pop(L, 1);
  if (d < 1 || d > MIX_MAXD) l_error(L, fname, "means must have 1 to %d coordinates (got %d)", MIX_MAXD, d);
  l_score *s = new_score(L, DF_SCORE_MIXTURE, D);
  /* one host block: log weights, means, variances; freed by __gc */
  s->mixbuf = (float *)malloc((size_t)(k * (d + 2)) * sizeof(float));
  if (!s->mixbuf) l_error(L, fname, "out of memory");
  float *logw = s->mixbuf, *mu = logw + k, *var0 = mu + (size_t)k * d;
  double wmax = 0.0;
  for (int j = 1; j <= k; j++) {
    lua_rawgeti(L, wi, j);
    double w = l_checknum(L, -1, fname, "weight");
    lua_pop(L, 1);
    if (!(w > 0.0) || !isfinite(w)) l_error(L, fname, "weight %d must be positive and finite (got %g)", j, w);
    if (w > wmax) wmax = w;
    lua_rawgeti(L, si, j);
    double sd = l_checknum(L, -1, fname, "std");
    lua_pop(L, 1);
    if (!(sd > 0.0) || !isfinite(sd)) l_error(L, fname, "std %d must be positive and finite (got %g)", j, sd);
    /* the variance is a float32 that the scores divide by (at t = 0 alone) */
    var0[j - 1] = (float)(sd * sd);
    if (!isfinite(var0[j - 1]) || var0[j - 1] < FLT_MIN)
      l_error(L, fname, "std %d = %g is out of range: its square must be a normal float32 "
              "(std from about 1.1e-19 to 1.8e19)", j, sd);
    lua_rawgeti(L, mi, j);
    if (d == 1 && lua_type(L, -1) == LUA_TNUMBER) {
      mu[j - 1] = (float)lua_tonumber(L, -1);
    } else {
      if (!lua_istable(L, -1) || (int)lua_rawlen(L, -1) != d)
        l_error(L, fname, "mean %d must be %s", j, d == 1 ? "a number" : "a list of d numbers");
      for (int c = 1; c <= d; c++) {
        lua_rawgeti(L, -1, c);
        mu[(j - 1) * d + c - 1] = (float)l_checknum(L, -1, fname, "mean coordinate");
        lua_pop(L, 1);
      }
    }
    for (int c = 0; c < d; c++) /* every coordinate, as a float32 */
      if (!isfinite(mu[(j - 1) * d + c]))
        l_error(L, fname, "mean %d must be finite in float32 (coordinate %d)", j, c + 1);
    lua_pop(L, 1);
  }
  /* log(w / sum w) with the weights scaled by the largest first, so that no sum overflows */
  double total = 0.0;
  for (int j = 1; j <= k; j++) {
    lua_rawgeti(L, wi, j);
    total += lua_tonumber(L, -1) / wmax;
    lua_pop(L, 1);
  }
  for (int j = 1; j <= k; j++) {
    lua_rawgeti(L, wi, j);
    logw[j - 1] = (float)(log(lua_tonumber(L, -1) / wmax) - log(total));
    lua_pop(L, 1);
  }
  s->src.mix.k = k;
  s->src.mix.d = d;
  s->src.mix.logw = logw;
  s->src.mix.mu = mu;
  s->src.mix.var0 = var0;
  return 1;
}

/* score(x, t): t a number or one time per row */
static int s_call(lua_State *L)
{
  const char *fname = "diffuse.score";
  l_score *s = l_checkscore(L, 1, fname, "self");
  df_tensor *x = l_checktensor(L, 2, fname, "x");
  double t0;
  df_tensor *t = time_arg(L, 3, fname, -1.0, &t0);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_score_eval(out, &s->src, x, t, t0), fname);
  l_gc_pressure(L, out->numel * 4);
  return 1;
}

static l_score *check_mixture(lua_State *L, const char *fname, int hook)
{
  l_score *s = l_checkscore(L, 1, fname, "self");
  if (s->src.kind != DF_SCORE_MIXTURE && !hook)
    l_error(L, fname, "this score source (%s) has no density: only mixtures and group scores do",
            s->kind_name ? s->kind_name : s->src.kind == DF_SCORE_EXACT ? "exact" : "callback");
  return s;
}

static int mix_logdensity(lua_State *L, int expo, const char *fname)
{
  l_score *s = l_checkscore(L, 1, fname, "self");
  s = check_mixture(L, fname, s->log_density != NULL);
  df_tensor *x = l_checktensor(L, 2, fname, "x");
  double t0;
  df_tensor *t = time_arg(L, 3, fname, 0.0, &t0);
  df_tensor *out = l_newtensor(L);
  if (s->log_density) l_check(L, s->log_density(s->owned, out, x, t, t0), fname);
  else l_check(L, df_mixture_log_density(out, &s->src, x, t, t0), fname);
  if (expo) l_check(L, out->be->unary(out->dev, DF_EXP, df_data(out), df_data(out), out->numel), fname);
  return 1;
}

static int s_log_density(lua_State *L) { return mix_logdensity(L, 0, "diffuse.score.log_density"); }
static int s_density(lua_State *L) { return mix_logdensity(L, 1, "diffuse.score.density"); }

/* mixture:sample(n [, t]): draws from the mixture carried to time t (default 0) */
static int s_sample(lua_State *L)
{
  const char *fname = "diffuse.score.sample";
  l_score *s = l_checkscore(L, 1, fname, "self");
  s = check_mixture(L, fname, s->sample != NULL);
  int64_t n = l_checkint(L, 2, fname, "n");
  if (n < 0) l_error(L, fname, "n must be non-negative (got %lld)", (long long)n);
  double t0 = lua_isnoneornil(L, 3) ? 0.0 : check_time(L, 3, fname);
  df_tensor *out = l_newtensor(L);
  if (s->sample) l_check(L, s->sample(s->owned, out, n, t0), fname);
  else l_check(L, df_mixture_sample(out, &s->src, n, t0), fname);
  l_gc_pressure(L, out->numel * 4);
  return 1;
}

/* the divergence options of an options table at opts: divergence = 'exact' | 'hutchinson',
   probes (Hutchinson: 1 by default), probe = 'rademacher' | 'gaussian' */
static df_div_opts div_opts(lua_State *L, int opts, const char *fname)
{
  df_div_opts o;
  memset(&o, 0, sizeof o);
  o.mode = DF_DIV_EXACT;
  o.probes = 1;
  o.dist = DF_RADEMACHER;
  if (l_getopt(L, opts, "divergence") != LUA_TNIL) {
    const char *m = l_checkstr(L, -1, fname, "divergence");
    if (strcmp(m, "exact") == 0) o.mode = DF_DIV_EXACT;
    else if (strcmp(m, "hutchinson") == 0) o.mode = DF_DIV_HUTCHINSON;
    else l_error(L, fname, "divergence must be 'exact' or 'hutchinson' (got '%s')", m);
  }
  lua_pop(L, 1);
  if (l_getopt(L, opts, "probes") != LUA_TNIL) {
    int64_t k = l_checkint(L, -1, fname, "probes");
    if (k < 1 || k > 64) l_error(L, fname, "probes must be from 1 to 64 (got %lld)", (long long)k);
    o.probes = (int)k;
  }
  lua_pop(L, 1);
  if (l_getopt(L, opts, "tangent") != LUA_TNIL) o.tangent = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (l_getopt(L, opts, "probe") != LUA_TNIL) {
    const char *m = l_checkstr(L, -1, fname, "probe");
    if (strcmp(m, "rademacher") == 0) o.dist = DF_RADEMACHER;
    else if (strcmp(m, "gaussian") == 0) o.dist = DF_NORMAL;
    else l_error(L, fname, "probe must be 'rademacher' or 'gaussian' (got '%s')", m);
  }
  lua_pop(L, 1);
  return o;
}

/* score:divergence(x, t [, {divergence, probes, probe}]) --> [B]: the trace of the score's
   Jacobian (the Laplacian of log p_t for the exact and mixture scores) */
static int s_divergence(lua_State *L)
{
  const char *fname = "diffuse.score.divergence";
  static const char *const opts[] = { "divergence", "probes", "probe", "tangent", NULL };
  l_score *s = l_checkscore(L, 1, fname, "self");
  df_tensor *x = l_checktensor(L, 2, fname, "x");
  double t0 = 0.0;
  df_tensor *t = time_arg(L, 3, fname, -1.0, &t0);
  l_checkopts(L, 4, fname, opts);
  df_div_opts o = div_opts(L, 4, fname);
  s = l_checkscore(L, 1, fname, "self"); /* (the options' lookups may have run Lua) */
  df_tensor *out = l_newtensor(L);
  l_check(L, df_score_divergence(out, &s->src, x, t, t0, &o), fname);
  return 1;
}

static int s_gc(lua_State *L)
{
  l_score *s = (l_score *)luaL_checkudata(L, 1, DF_SCORE_MT);
  free(s->mixbuf);
  if (s->owned && s->release_owned) s->release_owned(s->owned);
  free(s->owned);
  s->mixbuf = NULL;
  s->owned = NULL;
  s->src.mix.k = 0;
  s->live = 0;
  return 0;
}

static const char *score_kind(const l_score *s)
{
  switch (s->src.kind) {
  case DF_SCORE_EXACT: return "exact";
  case DF_SCORE_MIXTURE: return "mixture";
  default: return s->kind_name ? s->kind_name : "callback";
  }
}

static int s_index(lua_State *L)
{
  l_score *s = l_checkscore(L, 1, "diffuse.score", "self");
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "kind") == 0) lua_pushstring(L, score_kind(s));
  else if (k && strcmp(k, "dim") == 0 && s->src.kind == DF_SCORE_MIXTURE) lua_pushinteger(L, s->src.mix.d);
  else {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
  }
  return 1;
}

static int s_tostring(lua_State *L)
{
  l_score *s = (l_score *)luaL_checkudata(L, 1, DF_SCORE_MT);
  if (!s->live) lua_pushstring(L, "diffuse.score (released)");
  else if (s->src.kind == DF_SCORE_MIXTURE)
    lua_pushfstring(L, "diffuse.score.mixture (%d components in R^%d)", s->src.mix.k, s->src.mix.d);
  else lua_pushfstring(L, "diffuse.score.%s", score_kind(s));
  return 1;
}

/* ---- samplers --------------------------------------------------------------------------------- */

static df_sampler *check_sampler(lua_State *L, int idx, const char *fname)
{
  df_sampler *s = (df_sampler *)luaL_testudata(L, idx, DF_SAMPLER_MT);
  if (!s) l_error(L, fname, "self must be a sampler (got %s)", luaL_typename(L, idx));
  return s;
}

static const char *const method_names[] = { "euler", "euler_maruyama", "heun", "ddim", "dpmpp_2m",
                                            "edm", "pc", "rk45", "rk4", NULL };
static const char *const grid_names[] = { "uniform", "karras", "log_sigma", "list", NULL };

/* a number option of the sampler table (nil: def), finite, in [lo, hi] */
static double samp_num(lua_State *L, const char *key, double def, double lo, double hi,
                       const char *fname, const char *range)
{
  lua_getfield(L, 1, key);
  double v = l_optnum(L, -1, def, fname, key);
  lua_pop(L, 1);
  if (!(v >= lo && v <= hi)) l_error(L, fname, "%s must be %s (got %g)", key, range, v);
  return v;
}

/* diffuse.sampler{diffuser = ve, steps = 200, method = "euler", grid = "uniform", ...}: the
   grid (a name, {name, rho = ..., sigma_min = ...}, or a list of times from 1 down to 0) goes
   into user value 1 when it is a list; the sampler's other settings into the struct */
static int d_sampler(lua_State *L)
{
  const char *fname = "diffuse.sampler";
  static const char *const opts[] = { "diffuser", "steps", "method", "grid", "rho", "sigma_min",
                                      "space", "eta", "S_churn", "S_min", "S_max", "S_noise", "snr",
                                      "corrector_steps", "rtol", "atol", "t_min", NULL };
  if (!lua_istable(L, 1)) l_error(L, fname, "expected {diffuser = ..., steps = ..., method = ...}");
  l_checkopts(L, 1, fname, opts);
  lua_settop(L, 1);
  lua_getfield(L, 1, "diffuser");
  if (lua_isnil(L, -1)) l_error(L, fname, "diffuser is required");
  df_diffuser *D = l_checkdiffuser(L, -1, fname, "diffuser");
  df_diffuser diff = *D;
  lua_pop(L, 1);
  lua_getfield(L, 1, "method");
  const char *m = lua_isnil(L, -1) ? "euler" : l_checkstr(L, -1, fname, "method");
  int method = -1;
  for (int i = 0; method_names[i]; i++)
    if (strcmp(m, method_names[i]) == 0) method = i;
  if (method < 0)
    l_error(L, fname, "unknown method '%s' (euler, euler_maruyama, heun, ddim, dpmpp_2m, edm, pc, rk4 or rk45)", m);
  lua_pop(L, 1);
  /* the grid: a name, {name, rho = .., sigma_min = ..}, or a list of times */
  int grid = DF_GRID_UNIFORM, nlist = 0;
  double rho = 7.0, sigma_min = 0.0;
  lua_getfield(L, 1, "grid"); /* index 2 */
  const char *gname = NULL;
  if (lua_type(L, 2) == LUA_TSTRING) {
    gname = lua_tostring(L, 2);
  } else if (lua_istable(L, 2)) {
    if (lua_rawgeti(L, 2, 1) == LUA_TSTRING) gname = lua_tostring(L, -1); /* (kept at index 3) */
    else lua_pop(L, 1);
  }
  if (gname) {
    grid = -1;
    for (int i = 0; i < 3; i++)
      if (strcmp(gname, grid_names[i]) == 0) grid = i;
    if (grid < 0) l_error(L, fname, "unknown grid '%s' (uniform, karras, log_sigma, or a list of times)", gname);
    if (lua_istable(L, 2)) {
      static const char *const gopts[] = { "rho", "sigma_min", NULL };
      lua_pushnil(L); /* only the name at [1] and these keys */
      while (lua_next(L, 2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == 1) continue;
        const char *key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        int known = 0;
        for (int i = 0; key && gopts[i]; i++) known |= strcmp(key, gopts[i]) == 0;
        if (!known) l_error(L, fname, "unknown grid option '%s' (rho, sigma_min)", key ? key : "?");
      }
      lua_getfield(L, 2, "rho");
      if (!lua_isnil(L, -1)) rho = l_checknum(L, -1, fname, "grid.rho");
      lua_getfield(L, 2, "sigma_min");
      if (!lua_isnil(L, -1)) sigma_min = l_checknum(L, -1, fname, "grid.sigma_min");
    }
    lua_settop(L, 2);
  } else if (lua_istable(L, 2)) {
    grid = DF_GRID_LIST;
    lua_Integer len = (lua_Integer)lua_rawlen(L, 2);
    if (len < 2 || len > 100000001) l_error(L, fname, "grid must list 2 to 1e8 + 1 times (got %lld)", (long long)len);
    nlist = (int)len;
    double prev = 2.0;
    lua_createtable(L, nlist, 0); /* a checked copy: index 3 */
    for (int i = 1; i <= nlist; i++) {
      lua_rawgeti(L, 2, i);
      if (lua_type(L, -1) != LUA_TNUMBER) l_error(L, fname, "grid time %d must be a number (got %s)", i, luaL_typename(L, -1));
      double t = lua_tonumber(L, -1);
      lua_pop(L, 1);
      if (!(t >= 0.0 && t <= 1.0)) l_error(L, fname, "grid time %d must be in [0, 1] (got %g)", i, t);
      if (!(t < prev)) l_error(L, fname, "grid times must decrease (time %d is %g after %g)", i, t, prev);
      prev = t;
      lua_pushnumber(L, t);
      lua_rawseti(L, 3, i);
    }
    lua_replace(L, 2);
  } else if (!lua_isnil(L, 2)) {
    l_error(L, fname, "grid must be 'uniform', 'karras', 'log_sigma', {name, rho = ..., sigma_min = ...} or a list of times");
  }
  lua_settop(L, 2);
  { /* rho and sigma_min may also sit in the sampler table itself */
    lua_getfield(L, 1, "rho");
    if (!lua_isnil(L, -1)) rho = l_checknum(L, -1, fname, "rho");
    lua_getfield(L, 1, "sigma_min");
    if (!lua_isnil(L, -1)) sigma_min = l_checknum(L, -1, fname, "sigma_min");
    lua_settop(L, 2);
  }
  if (!(rho > 0.0 && rho <= 1e3)) l_error(L, fname, "rho must be positive, at most 1e3 (got %g)", rho);
  if (sigma_min != 0.0 && !(sigma_min > 0.0 && isfinite(sigma_min)))
    l_error(L, fname, "sigma_min must be positive and finite (got %g)", sigma_min);
  lua_getfield(L, 1, "steps");
  int64_t steps = grid == DF_GRID_LIST ? nlist - 1 : method == DF_RK45 ? 1 : 100;
  if (!lua_isnil(L, -1)) {
    int64_t st = l_checkint(L, -1, fname, "steps");
    if (grid == DF_GRID_LIST && st != steps)
      l_error(L, fname, "steps (%lld) must be the grid's times less one (%lld)", (long long)st, (long long)steps);
    steps = st;
  }
  lua_pop(L, 1);
  if (steps < 1 || steps > 100000000)
    l_error(L, fname, "steps must be between 1 and 1e8 (got %lld)", (long long)steps);
  lua_getfield(L, 1, "space");
  const char *sp = lua_isnil(L, -1) ? (grid == DF_GRID_UNIFORM || method == DF_EULER_MARUYAMA ? "t" : "sigma")
                                    : l_checkstr(L, -1, fname, "space");
  lua_pop(L, 1);
  int space = strcmp(sp, "t") == 0 ? DF_SPACE_T : strcmp(sp, "sigma") == 0 ? DF_SPACE_SIGMA : -1;
  if (space < 0) l_error(L, fname, "space must be 't' or 'sigma' (got '%s')", sp);
  if (space == DF_SPACE_SIGMA && method == DF_EULER_MARUYAMA)
    l_error(L, fname, "euler_maruyama steps in t (space = 't')");
  if (method == DF_RK45 && grid != DF_GRID_UNIFORM)
    l_error(L, fname, "rk45 chooses its own steps (it takes no grid; t_min is where it stops)");
  df_sampler *s = (df_sampler *)lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  s->diff = diff;
  s->method = method;
  s->steps = steps;
  s->grid = grid;
  s->space = method == DF_EULER || method == DF_HEUN ? space
           : method == DF_EULER_MARUYAMA || method == DF_RK4 ? DF_SPACE_T : DF_SPACE_SIGMA;
  s->rho = rho;
  s->sigma_min = sigma_min;
  s->eta = samp_num(L, "eta", 0.0, 0.0, 1.0, fname, "in [0, 1]");
  s->churn = samp_num(L, "S_churn", 0.0, 0.0, 1e6, fname, "from 0 to 1e6");
  s->s_min = samp_num(L, "S_min", 0.0, 0.0, HUGE_VAL, fname, "non-negative");
  s->s_max = samp_num(L, "S_max", HUGE_VAL, 0.0, HUGE_VAL, fname, "non-negative");
  if (!(s->s_min <= s->s_max)) l_error(L, fname, "S_min (%g) must not exceed S_max (%g)", s->s_min, s->s_max);
  s->s_noise = samp_num(L, "S_noise", 1.0, 0.0, 1e3, fname, "from 0 to 1e3");
  s->snr = samp_num(L, "snr", 0.16, 1e-12, 1e3, fname, "positive, at most 1e3");
  s->corrector = (int)samp_num(L, "corrector_steps", 1.0, 0.0, 1000.0, fname, "a whole number from 0 to 1000");
  s->rtol = samp_num(L, "rtol", 1e-5, 1e-12, 1.0, fname, "positive, from 1e-12 to 1");
  s->atol = samp_num(L, "atol", 1e-5, 1e-12, 1e3, fname, "positive, from 1e-12 to 1e3");
  s->t_min = samp_num(L, "t_min", 1e-3, 1e-12, 0.999, fname, "in (0, 1)");
  lua_getfield(L, 1, "corrector_steps");
  if (!lua_isnil(L, -1) && !lua_isinteger(L, -1) && lua_tonumber(L, -1) != (double)(int64_t)lua_tonumber(L, -1))
    l_error(L, fname, "corrector_steps must be a whole number");
  lua_pop(L, 1);
  if (grid == DF_GRID_LIST) {
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 1);
  }
  luaL_setmetatable(L, DF_SAMPLER_MT);
  return 1;
}

/* the times of a list grid, from user value 1, into a host buffer on the stack (NULL for others) */
static const double *sampler_times(lua_State *L, int idx, const df_sampler *s, const char *fname)
{
  if (s->grid != DF_GRID_LIST) return NULL;
  lua_getiuservalue(L, idx, 1);
  int n = (int)lua_rawlen(L, -1);
  if (n != s->steps + 1) l_error(L, fname, "the sampler's grid is damaged");
  double *t = (double *)lua_newuserdatauv(L, (size_t)n * sizeof(double), 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -2, i + 1);
    t[i] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  lua_remove(L, -2);
  return t;
}

static void prior_logp(lua_State *L, int idx, const df_tensor *x1, const df_diffuser *D, double *out,
                       const char *fname);
static df_tensor *push_host_tensor(lua_State *L, const double *v, int64_t n, const df_tensor *like,
                                   const char *fname);

/* a Lua function as score: called with a copy of x (so it may keep or change it) and t */
typedef struct {
  lua_State *L;
  int fn;
} lua_score_ctx;

/* the same shape up to trailing sizes of 1 ([B] and [B, 1] are one column): a net's [B, 1]
   output for a 1-D x is a score of x; [2, 4] for [4, 2] is not */
static int same_shape(const df_tensor *a, const df_tensor *b)
{
  int na = a->ndim, nb = b->ndim;
  while (na > 0 && a->shape[na - 1] == 1) na--;
  while (nb > 0 && b->shape[nb - 1] == 1) nb--;
  if (na != nb) return 0;
  for (int i = 0; i < na; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

static int lua_score_eval(void *ctx, df_tensor *out, const df_tensor *x, float t)
{
  lua_score_ctx *c = (lua_score_ctx *)ctx;
  lua_State *L = c->L;
  int st;
  if (!lua_checkstack(L, 4)) return df_fail(DF_ESTATE, "Lua stack overflow");
  lua_pushvalue(L, c->fn);
  df_tensor *xc = l_newtensor(L);
  if ((st = df_tensor_like(xc, x)) || (st = df_copy(xc, x))) {
    lua_pop(L, 2);
    return st;
  }
  lua_pushnumber(L, (lua_Number)t);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    int top = lua_gettop(L) - 1;
    st = df_fail(DF_EARG, "the score function failed: %s", l_errtext(L, -1));
    lua_settop(L, top);
    return st;
  }
  df_tensor *r = (df_tensor *)luaL_testudata(L, -1, DF_TENSOR_MT);
  if (!r || !df_is_live(r)) {
    st = df_fail(DF_EARG, "the score function must return a tensor (got %s)",
                 r ? "a released tensor" : luaL_typename(L, -1));
  } else if (!same_shape(r, x) || !df_same_device(r, x)) {
    char b1[96], b2[96];
    st = df_fail(DF_EARG, "the score function returned %s for x of %s",
                 df_shape_str(r->ndim, r->shape, b1, sizeof b1), df_shape_str(x->ndim, x->shape, b2, sizeof b2));
  } else {
    st = df_copy(out, r);
  }
  lua_pop(L, 1);
  return st;
}

/* s:run(x1, score [, {record = {k, ...}}]) --> x0, path (path[k] = x at t = 1 - k / steps) */
static int sampler_run(lua_State *L)
{
  const char *fname = "diffuse.sampler.run";
  static const char *const opts[] = { "record", "logq", "prior", "divergence", "probes", "probe", "tangent", NULL };
  df_sampler *s = check_sampler(L, 1, fname);
  df_tensor *x1 = l_checktensor(L, 2, fname, "x1");
  l_checkopts(L, 4, fname, opts);
  lua_settop(L, 4);
  df_score_src cb, *src;
  lua_score_ctx ctx;
  if (lua_isfunction(L, 3)) {
    memset(&cb, 0, sizeof cb);
    ctx.L = L;
    ctx.fn = 3;
    cb.kind = DF_SCORE_CALLBACK;
    cb.diff = s->diff;
    cb.eval = lua_score_eval;
    cb.ctx = &ctx;
    src = &cb;
  } else {
    src = &l_checkscore(L, 3, fname, "score")->src;
  }
  const double *times = sampler_times(L, 1, s, fname); /* (a list grid's, at index 5) */
  lua_settop(L, 5);
  /* log q: the prior at x1 (index 7), the divergence integral (6), before the run */
  int logq = 0;
  l_getopt(L, 4, "logq");
  logq = lua_toboolean(L, -1);
  lua_pop(L, 1);
  df_div_opts dopt = div_opts(L, 4, fname);
  const int64_t qrows = x1->ndim > 0 ? x1->shape[0] : 1;
  double *I = NULL, *P = NULL;
  if (logq) {
    if (lua_isfunction(L, 3))
      l_error(L, fname, "logq needs the score's divergence: a Lua score function has none");
    I = (double *)lua_newuserdatauv(L, (size_t)(2 * (qrows > 0 ? qrows : 1)) * sizeof(double), 0);
    P = I + (qrows > 0 ? qrows : 1);
    l_getopt(L, 4, "prior");
    prior_logp(L, lua_gettop(L), x1, &s->diff, P, fname);
    lua_pop(L, 1);
  } else {
    lua_pushnil(L);
  }
  /* the steps to record, each with its output tensor on the stack */
  int nrec = 0;
  l_getopt(L, 4, "record");
  int reci = lua_gettop(L);
  if (!lua_isnil(L, reci)) {
    if (!lua_istable(L, reci)) l_error(L, fname, "record must be a list of steps");
    lua_Integer len = (lua_Integer)lua_rawlen(L, reci);
    if (len > 100000) l_error(L, fname, "too many steps to record (%lld)", (long long)len);
    nrec = (int)len;
  }
  int64_t *rec_k = (int64_t *)lua_newuserdatauv(L, (size_t)(nrec + 1) * sizeof(int64_t), 0);
  df_tensor **rec = (df_tensor **)lua_newuserdatauv(L, (size_t)(nrec + 1) * sizeof(df_tensor *), 0);
  int base = lua_gettop(L);
  for (int r = 0; r < nrec; r++) {
    lua_rawgeti(L, reci, r + 1);
    rec_k[r] = l_checkint(L, -1, fname, "record step");
    lua_pop(L, 1);
    if (rec_k[r] < 0 || rec_k[r] > s->steps)
      l_error(L, fname, "record step %lld is outside 0..%lld", (long long)rec_k[r], (long long)s->steps);
    luaL_checkstack(L, 2, fname);
    rec[r] = l_newtensor(L);
  }
  df_tensor *x = l_newtensor(L);
  l_check(L, df_tensor_like(x, x1), fname);
  l_check(L, df_copy(x, x1), fname);
  /* the options and the allocations above may have run Lua (an __index, a finaliser) that
     released the score source: its context would be freed memory */
  if (src != &cb) src = &l_checkscore(L, 3, fname, "score")->src;
  s->times = times;
  int st = df_sampler_run(s, src, x, nrec, rec_k, rec, logq ? &dopt : NULL, I);
  s->times = NULL;
  l_check(L, st, fname);
  /* results: x0, then the path table (and log q) */
  lua_createtable(L, 0, nrec);
  for (int r = 0; r < nrec; r++) {
    lua_pushvalue(L, base + 1 + r);
    lua_rawseti(L, -2, (lua_Integer)rec_k[r]);
  }
  if (!logq) return 2;
  for (int64_t r = 0; r < qrows; r++) P[r] -= I[r]; /* log q(x0) = log prior(x1) - I */
  push_host_tensor(L, P, qrows, x, fname);
  return 3;
}

static int sampler_index(lua_State *L)
{
  df_sampler *s = check_sampler(L, 1, "diffuse.sampler");
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "nfe") == 0) lua_pushinteger(L, (lua_Integer)s->nfe);
  else if (k && strcmp(k, "nfe_rows") == 0) lua_pushnumber(L, s->method == DF_RK45 ? s->nfe_rows : (double)s->nfe);
  else if (k && strcmp(k, "steps") == 0) lua_pushinteger(L, (lua_Integer)s->steps);
  else if (k && strcmp(k, "method") == 0) lua_pushstring(L, method_names[s->method]);
  else if (k && strcmp(k, "grid") == 0) lua_pushstring(L, grid_names[s->grid]);
  else if (k && strcmp(k, "space") == 0) lua_pushstring(L, s->space == DF_SPACE_T ? "t" : "sigma");
  else {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
  }
  return 1;
}

static int sampler_tostring(lua_State *L)
{
  df_sampler *s = check_sampler(L, 1, "diffuse.sampler");
  if (s->grid == DF_GRID_UNIFORM)
    lua_pushfstring(L, "diffuse.sampler{method = %s, steps = %d}", method_names[s->method], (int)s->steps);
  else
    lua_pushfstring(L, "diffuse.sampler{method = %s, steps = %d, grid = %s}", method_names[s->method],
                    (int)s->steps, grid_names[s->grid]);
  return 1;
}

/* s:times() --> {t_0 .. t_N}, {sigma_0 .. sigma_N}: the sampler's grid */
static int sampler_grid_l(lua_State *L)
{
  const char *fname = "diffuse.sampler.times";
  df_sampler *s = check_sampler(L, 1, fname);
  lua_settop(L, 1);
  df_sampler c = *s;
  c.times = sampler_times(L, 1, s, fname);
  double *buf = (double *)lua_newuserdatauv(L, (size_t)(2 * (s->steps + 1)) * sizeof(double), 0);
  l_check(L, df_sampler_grid(&c, buf, buf + s->steps + 1), fname);
  for (int w = 0; w < 2; w++) {
    lua_createtable(L, (int)s->steps + 1, 0);
    for (int64_t k = 0; k <= s->steps; k++) {
      lua_pushnumber(L, buf[w * (s->steps + 1) + k]);
      lua_rawseti(L, -2, k + 1);
    }
  }
  return 2;
}

/* ---- likelihoods ------------------------------------------------------------------------------- */

/* the prior's log-density of x1 into out (host, one per row): N(0, sigma(1)^2 I) when the option
   at idx is nil, else prior(x1) (a function) or prior:log_density(x1, 1) (an object with one,
   such as a mixture: its exact p_1), which must give one number per row */
static void prior_logp(lua_State *L, int idx, const df_tensor *x1, const df_diffuser *D, double *out,
                       const char *fname)
{
  const int64_t rows = x1->ndim > 0 ? x1->shape[0] : 1, n = x1->numel, d = rows > 0 ? n / rows : 1;
  if (lua_isnoneornil(L, idx)) {
    float *h = l_hostbuf(L, n > 0 ? n : 1, fname);
    l_check(L, df_download(x1, h), fname);
    lua_pop(L, 1); /* (the buffer stays alive until the next GC step; it is not used after) */
    double s2 = df_diffuser_sigma2_host(D, 1.0);
    for (int64_t r = 0; r < rows; r++) {
      double q = 0.0;
      for (int64_t c = 0; c < d; c++) q += (double)h[r * d + c] * (double)h[r * d + c];
      out[r] = -0.5 * q / s2 - 0.5 * (double)d * log(2.0 * 3.14159265358979323846 * s2);
    }
    return;
  }
  int top = lua_gettop(L);
  df_tensor *xc = l_newtensor(L); /* the prior gets a copy */
  l_check(L, df_tensor_like(xc, x1), fname);
  l_check(L, df_copy(xc, x1), fname);
  if (lua_isfunction(L, idx)) {
    lua_pushvalue(L, idx);
    lua_pushvalue(L, top + 1);
    lua_call(L, 1, 1);
  } else {
    int ty = lua_type(L, idx);
    if ((ty != LUA_TTABLE && ty != LUA_TUSERDATA) || lua_getfield(L, idx, "log_density") == LUA_TNIL)
      l_error(L, fname, "prior must be a function(x1) or an object with log_density (got %s)",
              luaL_typename(L, idx));
    lua_pushvalue(L, idx);
    lua_pushvalue(L, top + 1);
    lua_pushnumber(L, 1.0);
    lua_call(L, 3, 1);
  }
  df_tensor *r = (df_tensor *)luaL_testudata(L, -1, DF_TENSOR_MT);
  if (!r || !df_is_live(r) || r->numel != rows || r->ndim > 2 || (r->ndim == 2 && r->shape[1] != 1)) {
    char b[96] = "a non-tensor";
    if (r && df_is_live(r)) df_shape_str(r->ndim, r->shape, b, sizeof b);
    l_error(L, fname, "the prior must give one log-density per row ([%lld]), got %s", (long long)rows, b);
  }
  float *h = l_hostbuf(L, rows > 0 ? rows : 1, fname);
  l_check(L, df_download(r, h), fname);
  for (int64_t i = 0; i < rows; i++) out[i] = (double)h[i];
  lua_settop(L, top);
}

/* n host doubles as a new float32 tensor [n] on the device of `like` (the rows it describes) */
static df_tensor *push_host_tensor(lua_State *L, const double *v, int64_t n, const df_tensor *like,
                                   const char *fname)
{
  const df_backend *be = like->be;
  int dev = like->dev;
  df_tensor *t = l_newtensor(L);
  float *h = l_hostbuf(L, n > 0 ? n : 1, fname);
  for (int64_t i = 0; i < n; i++) h[i] = (float)v[i];
  l_check(L, df_tensor_alloc(t, be, dev, 1, &n), fname);
  if (n > 0) l_check(L, df_upload(t, h), fname);
  lua_pop(L, 1);
  return t;
}

/* diffuse.likelihood{diffuser, score, x, method = 'rk45', steps = 100, rtol = 1e-5, atol = 1e-5,
   t_min = 1e-5, divergence = 'exact', probes, probe, prior} --> log p [B], info: the
   probability-flow ODE carries x from t_min up to 1 with the divergence integral I, and log p =
   log prior(x1) - I (the density at t_min, which tends to p_0 as t_min does) */
static int d_likelihood(lua_State *L)
{
  const char *fname = "diffuse.likelihood";
  static const char *const opts[] = { "diffuser", "score", "x", "method", "steps", "rtol", "atol",
                                      "t_min", "divergence", "probes", "probe", "prior", "tangent", NULL };
  if (!lua_istable(L, 1)) l_error(L, fname, "expected {diffuser = ..., score = ..., x = ...}");
  l_checkopts(L, 1, fname, opts);
  lua_settop(L, 1);
  df_sampler s;
  memset(&s, 0, sizeof s);
  lua_getfield(L, 1, "diffuser"); /* 2 */
  if (lua_isnil(L, 2)) l_error(L, fname, "diffuser is required");
  s.diff = *l_checkdiffuser(L, 2, fname, "diffuser");
  lua_getfield(L, 1, "score"); /* 3 */
  if (lua_isnil(L, 3)) l_error(L, fname, "score is required");
  if (lua_isfunction(L, 3))
    l_error(L, fname, "a Lua score function has no divergence: use a native score or diffuse.score.net");
  l_checkscore(L, 3, fname, "score");
  lua_getfield(L, 1, "x"); /* 4 */
  if (lua_isnil(L, 4)) l_error(L, fname, "x is required");
  df_tensor *x = l_checktensor(L, 4, fname, "x");
  lua_getfield(L, 1, "method");
  const char *m = lua_isnil(L, -1) ? "rk45" : l_checkstr(L, -1, fname, "method");
  s.method = strcmp(m, "euler") == 0 ? DF_EULER : strcmp(m, "heun") == 0 ? DF_HEUN
           : strcmp(m, "rk4") == 0 ? DF_RK4 : strcmp(m, "rk45") == 0 ? DF_RK45 : -1;
  if (s.method < 0) l_error(L, fname, "method must be 'euler', 'heun', 'rk4' or 'rk45' (got '%s')", m);
  lua_getfield(L, 1, "steps");
  s.steps = l_optint(L, -1, 100, fname, "steps");
  if (s.steps < 1 || s.steps > 100000000) l_error(L, fname, "steps must be between 1 and 1e8 (got %lld)", (long long)s.steps);
  lua_settop(L, 4);
  lua_pushvalue(L, 1);
  lua_replace(L, 1);
  s.rtol = l_optnum(L, (lua_getfield(L, 1, "rtol"), -1), 1e-5, fname, "rtol");
  s.atol = l_optnum(L, (lua_getfield(L, 1, "atol"), -1), 1e-5, fname, "atol");
  s.t_min = l_optnum(L, (lua_getfield(L, 1, "t_min"), -1), 1e-5, fname, "t_min");
  lua_settop(L, 4);
  if (!(s.rtol >= 1e-12 && s.rtol <= 1.0)) l_error(L, fname, "rtol must be positive, from 1e-12 to 1 (got %g)", s.rtol);
  if (!(s.atol >= 1e-12 && s.atol <= 1e3)) l_error(L, fname, "atol must be positive, from 1e-12 to 1e3 (got %g)", s.atol);
  if (!(s.t_min > 0.0 && s.t_min < 1.0)) l_error(L, fname, "t_min must be in (0, 1) (got %g)", s.t_min);
  df_div_opts o = div_opts(L, 1, fname);
  lua_getfield(L, 1, "prior"); /* 5 */
  if (x->ndim > 2 || x->ndim < 1) l_error(L, fname, "x must be [B, d] or [B]");
  const int64_t rows = x->shape[0];
  double *I = (double *)lua_newuserdatauv(L, (size_t)(2 * (rows > 0 ? rows : 1)) * sizeof(double), 0); /* 6 */
  double *P = I + (rows > 0 ? rows : 1);
  df_tensor *x1 = l_newtensor(L); /* 7 */
  l_check(L, df_tensor_like(x1, x), fname);
  l_check(L, df_copy(x1, x), fname);
  l_score *sc = l_checkscore(L, 3, fname, "score"); /* (again: Lua may have run) */
  l_check(L, df_likelihood(&s, &sc->src, x1, &o, I), fname);
  prior_logp(L, 5, x1, &s.diff, P, fname);
  double *lp = (double *)lua_newuserdatauv(L, (size_t)(rows > 0 ? rows : 1) * sizeof(double), 0);
  double mean = 0.0;
  const int64_t d = rows > 0 ? x->numel / rows : 1;
  for (int64_t r = 0; r < rows; r++) {
    lp[r] = P[r] - I[r];
    mean += lp[r] / (double)rows;
  }
  push_host_tensor(L, lp, rows, x, fname);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)s.nfe);
  lua_setfield(L, -2, "nfe");
  if (s.method == DF_RK45) {
    lua_pushnumber(L, s.nfe_rows);
    lua_setfield(L, -2, "nfe_rows");
  }
  push_host_tensor(L, P, rows, x, fname);
  lua_setfield(L, -2, "prior");
  push_host_tensor(L, I, rows, x, fname);
  lua_setfield(L, -2, "integral");
  lua_pushvalue(L, 7);
  lua_setfield(L, -2, "x1");
  lua_pushnumber(L, -mean / ((double)d * log(2.0)));
  lua_setfield(L, -2, "bpd");
  return 2;
}

/* ---- registration -------------------------------------------------------------------------- */

static const luaL_Reg diffuser_methods[] = {
  { "g", df_g }, { "sigma", df_sigma }, { "sigma2", df_sigma2 }, { "diffuse", df_diffuse_l },
  { "prior", df_prior_l }, { NULL, NULL }
};
static const luaL_Reg diffuser_meta[] = { { "__tostring", df_tostring }, { NULL, NULL } };

static const luaL_Reg score_methods[] = {
  { "log_density", s_log_density }, { "density", s_density }, { "sample", s_sample },
  { "divergence", s_divergence }, { NULL, NULL }
};
static const luaL_Reg score_meta[] = {
  { "__call", s_call }, { "__gc", s_gc }, { "__tostring", s_tostring }, { NULL, NULL }
};

static const luaL_Reg sampler_methods[] = { { "run", sampler_run }, { "times", sampler_grid_l }, { NULL, NULL } };
static const luaL_Reg sampler_meta[] = { { "__tostring", sampler_tostring }, { NULL, NULL } };

static const luaL_Reg heat_funcs[] = {
  { "density", h_density }, { "log_density", h_log_density }, { "score", h_score },
  { "cdf", h_cdf }, { "sample", h_sample }, { NULL, NULL }
};

static const luaL_Reg score_funcs[] = { { "exact", s_exact }, { "mixture", s_mixture }, { NULL, NULL } };

/* adds ve, power, sampler, heat and score to the module table on the top of the stack */
void l_open_diffusion(lua_State *L)
{
  l_class(L, DF_DIFFUSER_MT, diffuser_meta, diffuser_methods, df_index);
  l_class(L, DF_SCORE_MT, score_meta, score_methods, s_index);
  l_class(L, DF_SAMPLER_MT, sampler_meta, sampler_methods, sampler_index);
  lua_pushcfunction(L, d_ve);
  lua_setfield(L, -2, "ve");
  lua_pushcfunction(L, d_power);
  lua_setfield(L, -2, "power");
  lua_pushcfunction(L, d_sampler);
  lua_setfield(L, -2, "sampler");
  lua_pushcfunction(L, d_likelihood);
  lua_setfield(L, -2, "likelihood");
  luaL_newlib(L, heat_funcs);
  lua_setfield(L, -2, "heat");
  luaL_newlib(L, score_funcs);
  lua_setfield(L, -2, "score");
}
