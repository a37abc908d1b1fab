/* l_group.c: Lua binding of the groups (diffuse.group.u1, diffuse.group.su(n)), their toy
 * targets (diffuse.group.toy_action) and the group score sources (diffuse.score.heat,
 * diffuse.score.class_function). The arithmetic is in group.c. */
#include "l_util.h"
#include "l_diffusion.h"
#include "group.h"
#include <string.h>
#include <stdlib.h>
#include <math.h>

#define DF_GROUP_MT "diffuse.group"
#define DF_TARGET_MT "diffuse.group.target"

typedef struct l_target {
  df_class_fn cf;
  df_group G;
  double beta;
  double *coef;
  int ncoef;
  int live;
} l_target;

static df_group *check_group(lua_State *L, int idx, const char *fname, const char *what)
{
  df_group *G = (df_group *)luaL_testudata(L, idx, DF_GROUP_MT);
  if (!G) l_error(L, fname, "%s must be a group (diffuse.group.su(2), ...), got %s", what, luaL_typename(L, idx));
  return G;
}

/* the seed and a fresh stream for one native draw (each call its own stream, as tensor.randn) */
static void draw_streams(uint64_t *seed, uint64_t *stream)
{
  df_rng_state(seed, stream);
  *stream = df_rng_next_stream();
}

static l_target *check_target(lua_State *L, int idx, const char *fname, const char *what)
{
  l_target *T = (l_target *)luaL_testudata(L, idx, DF_TARGET_MT);
  if (!T) l_error(L, fname, "%s must be a group target (diffuse.group.toy_action{...}), got %s", what,
                  luaL_typename(L, idx));
  if (!T->live) l_error(L, fname, "attempt to use a released target");
  return T;
}

static df_group *push_group(lua_State *L, int kind, int n, const char *fname)
{
  df_group *G = (df_group *)lua_newuserdatauv(L, sizeof *G, 0);
  l_check(L, df_group_make(G, kind, n), fname);
  luaL_setmetatable(L, DF_GROUP_MT);
  return G;
}

static int g_u1(lua_State *L)
{
  push_group(L, DF_GROUP_U1, 1, "diffuse.group.u1");
  return 1;
}

static int g_su(lua_State *L)
{
  const char *fname = "diffuse.group.su";
  int64_t n = l_checkint(L, 1, fname, "n");
  if (n < 2 || n > DF_GROUP_MAXN) l_error(L, fname, "SU(N) is supported for N = 2 and 3 (got N = %lld)", (long long)n);
  push_group(L, DF_GROUP_SU, (int)n, fname);
  return 1;
}

/* the width argument: a number > 0 or one per row */
static df_tensor *width_arg(lua_State *L, int idx, const char *fname, double *w0)
{
  *w0 = 0.0;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    *w0 = lua_tonumber(L, idx);
    if (!(*w0 > 0.0) || !isfinite(*w0)) l_error(L, fname, "w must be a finite width > 0 (got %g)", *w0);
    return NULL;
  }
  if (lua_isnoneornil(L, idx)) l_error(L, fname, "w (the width) is missing");
  return l_checktensor(L, idx, fname, "w");
}

static int form_opt(lua_State *L, int idx, const char *fname)
{
  static const char *const opts[] = { "form", NULL };
  l_checkopts(L, idx, fname, opts);
  int form = DF_FORM_AUTO;
  if (l_getopt(L, idx, "form") != LUA_TNIL) {
    const char *f = l_checkstr(L, -1, fname, "form");
    if (strcmp(f, "auto") == 0) form = DF_FORM_AUTO;
    else if (strcmp(f, "wrapped") == 0) form = DF_FORM_WRAPPED;
    else if (strcmp(f, "character") == 0) form = DF_FORM_CHARACTER;
    else l_error(L, fname, "form must be 'auto', 'wrapped' or 'character' (got '%s')", f);
  }
  lua_pop(L, 1);
  return form;
}

/* G:heat_log_kernel(theta, w [, {form}]) and friends: what = 0 log K, 1 K, 2 score, 3 divergence */
static int heat_common(lua_State *L, int what, const char *fname)
{
  df_group *G = check_group(L, 1, fname, "self");
  df_tensor *theta = l_checktensor(L, 2, fname, "theta");
  double w0;
  df_tensor *w = width_arg(L, 3, fname, &w0);
  int form = form_opt(L, 4, fname);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_group_heat(what <= 1 ? out : NULL, what == 2 ? out : NULL, what == 3 ? out : NULL, G,
                           theta, w, w0, form), fname);
  if (what == 1) l_check(L, out->be->unary(out->dev, DF_EXP, df_data(out), df_data(out), out->numel), fname);
  return 1;
}

static int g_heat_log_kernel(lua_State *L) { return heat_common(L, 0, "diffuse.group.heat_log_kernel"); }
static int g_heat_kernel(lua_State *L) { return heat_common(L, 1, "diffuse.group.heat_kernel"); }
static int g_heat_score(lua_State *L) { return heat_common(L, 2, "diffuse.group.heat_score"); }
static int g_heat_divergence(lua_State *L) { return heat_common(L, 3, "diffuse.group.heat_divergence"); }

static int64_t count_arg(lua_State *L, int idx, const char *fname)
{
  int64_t n = l_checkint(L, idx, fname, "n");
  if (n < 0) l_error(L, fname, "n must be non-negative (got %lld)", (long long)n);
  return n;
}

static int g_heat_sample(lua_State *L)
{
  const char *fname = "diffuse.group.heat_sample";
  df_group *G = check_group(L, 1, fname, "self");
  int64_t n = count_arg(L, 2, fname);
  double w0 = l_checknum(L, 3, fname, "w");
  if (!(w0 > 0.0) || !isfinite(w0)) l_error(L, fname, "w must be a finite width > 0 (got %g)", w0);
  uint64_t seed, stream;
  draw_streams(&seed, &stream);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_group_heat_sample(out, G, n, w0, seed, stream), fname);
  return 1;
}

static int g_haar(lua_State *L)
{
  const char *fname = "diffuse.group.haar";
  df_group *G = check_group(L, 1, fname, "self");
  int64_t n = count_arg(L, 2, fname);
  uint64_t seed, stream;
  draw_streams(&seed, &stream);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_group_haar(out, G, n, seed, stream), fname);
  return 1;
}

static int g_haar_log_density(lua_State *L)
{
  const char *fname = "diffuse.group.haar_log_density";
  df_group *G = check_group(L, 1, fname, "self");
  df_tensor *theta = l_checktensor(L, 2, fname, "theta");
  df_tensor *out = l_newtensor(L);
  l_check(L, df_group_haar_log_density(out, G, theta), fname);
  return 1;
}

static int g_canonical(lua_State *L)
{
  const char *fname = "diffuse.group.canonical";
  df_group *G = check_group(L, 1, fname, "self");
  df_tensor *theta = l_checktensor(L, 2, fname, "theta");
  df_tensor *out = l_newtensor(L);
  l_check(L, df_group_canonical(out, G, theta), fname);
  return 1;
}

/* G:check(theta): an error naming the first row off the group, else theta */
static int g_check(lua_State *L)
{
  const char *fname = "diffuse.group.check";
  df_group *G = check_group(L, 1, fname, "self");
  df_tensor *theta = l_checktensor(L, 2, fname, "theta");
  df_tensor *out = l_newtensor(L);
  l_check(L, df_group_canonical(out, G, theta), fname);
  lua_pop(L, 1);
  lua_pushvalue(L, 2);
  return 1;
}

/* G:dsm_pairs(x0, diffuser, t) --> theta_t, target: the noised points and the noise's score on
   their eigenbasis (t one time per row) */
static int g_dsm_pairs(lua_State *L)
{
  const char *fname = "diffuse.group.dsm_pairs";
  df_group *G = check_group(L, 1, fname, "self");
  df_tensor *x0 = l_checktensor(L, 2, fname, "x0");
  df_diffuser *D = l_checkdiffuser(L, 3, fname, "diffuser");
  df_tensor *t = l_checktensor(L, 4, fname, "t");
  uint64_t seed, stream;
  draw_streams(&seed, &stream);
  df_tensor *xt = l_newtensor(L);
  df_tensor *st = l_newtensor(L);
  l_check(L, df_group_dsm_pairs(xt, st, G, D, x0, t, seed, stream), fname);
  return 2;
}

static int g_index(lua_State *L)
{
  df_group *G = check_group(L, 1, "diffuse.group", "self");
  const char *k = lua_tostring(L, 2);
  char buf[16];
  if (k && strcmp(k, "n") == 0) lua_pushinteger(L, G->n);
  else if (k && strcmp(k, "name") == 0) lua_pushstring(L, df_group_name(G, buf, sizeof buf));
  else if (k && strcmp(k, "switch_width") == 0) lua_pushnumber(L, df_group_switch_width(G));
  else {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
  }
  return 1;
}

static int g_tostring(lua_State *L)
{
  df_group *G = check_group(L, 1, "diffuse.group", "self");
  char buf[16];
  lua_pushfstring(L, "diffuse.group %s (points: [B, %d] eigenangles%s)", df_group_name(G, buf, sizeof buf),
                  G->n, G->kind == DF_GROUP_SU ? " summing to 0" : "");
  return 1;
}

static int g_eq(lua_State *L)
{
  df_group *a = (df_group *)luaL_testudata(L, 1, DF_GROUP_MT), *b = (df_group *)luaL_testudata(L, 2, DF_GROUP_MT);
  lua_pushboolean(L, a && b && a->kind == b->kind && a->n == b->n);
  return 1;
}

/* ---- targets ---------------------------------------------------------------------------------- */

/* diffuse.group.toy_action{group = G, beta = 1, coeffs = {...}} */
static int g_toy_action(lua_State *L)
{
  const char *fname = "diffuse.group.toy_action";
  static const char *const opts[] = { "group", "beta", "coeffs", NULL };
  luaL_checktype(L, 1, LUA_TTABLE);
  l_checkopts(L, 1, fname, opts);
  lua_getfield(L, 1, "group");
  df_group *G = check_group(L, -1, fname, "group");
  lua_getfield(L, 1, "beta");
  double beta = l_checknum(L, -1, fname, "beta");
  if (!isfinite(beta)) l_error(L, fname, "beta must be finite (got %g)", beta);
  lua_getfield(L, 1, "coeffs");
  if (!lua_istable(L, -1)) l_error(L, fname, "coeffs must be a list of numbers (c_1, c_2, ...), got %s", luaL_typename(L, -1));
  lua_Integer nc = luaL_len(L, -1);
  if (nc < 1) l_error(L, fname, "coeffs must hold at least one coefficient (got none)");
  if (nc > 64) l_error(L, fname, "coeffs may hold at most 64 coefficients (got %lld)", (long long)nc);
  l_target *T = (l_target *)lua_newuserdatauv(L, sizeof *T, 0);
  memset(T, 0, sizeof *T);
  luaL_setmetatable(L, DF_TARGET_MT);
  T->coef = (double *)malloc(sizeof(double) * (size_t)nc);
  if (!T->coef) l_error(L, fname, "out of memory");
  T->live = 1;
  T->ncoef = (int)nc;
  for (lua_Integer i = 1; i <= nc; i++) {
    lua_geti(L, -2, i);
    if (!lua_isnumber(L, -1)) l_error(L, fname, "coeffs[%lld] must be a number (got %s)", (long long)i, luaL_typename(L, -1));
    T->coef[i - 1] = lua_tonumber(L, -1);
    if (!isfinite(T->coef[i - 1])) l_error(L, fname, "coeffs[%lld] must be finite", (long long)i);
    lua_pop(L, 1);
  }
  T->G = *G;
  T->beta = beta;
  l_check(L, df_class_from_action(&T->cf, G, beta, T->coef, T->ncoef), fname);
  return 1;
}

static int t_gc(lua_State *L)
{
  l_target *T = (l_target *)luaL_checkudata(L, 1, DF_TARGET_MT);
  df_class_free(&T->cf);
  free(T->coef);
  T->coef = NULL;
  T->live = 0;
  return 0;
}

/* per row, on theta's device: S (what 0) or the unnormalised eigenangle log-density -S + log h */
static int t_rows(lua_State *L, int what, const char *fname)
{
  l_target *T = check_target(L, 1, fname, "self");
  df_tensor *theta = l_checktensor(L, 2, fname, "theta");
  df_tensor *out = l_newtensor(L);
  l_check(L, df_action_eval(out, &T->G, T->beta, T->coef, T->ncoef, theta, what), fname);
  return 1;
}

static int t_action(lua_State *L) { return t_rows(L, 0, "diffuse.group.target.action"); }
static int t_log_density(lua_State *L) { return t_rows(L, 1, "diffuse.group.target.log_density"); }

static int t_log_z(lua_State *L)
{
  l_target *T = check_target(L, 1, "diffuse.group.target.log_z", "self");
  lua_pushnumber(L, T->cf.log_z);
  return 1;
}

static int t_sample(lua_State *L)
{
  const char *fname = "diffuse.group.target.sample";
  l_target *T = check_target(L, 1, fname, "self");
  int64_t n = count_arg(L, 2, fname);
  uint64_t seed, stream;
  draw_streams(&seed, &stream);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_action_sample(out, &T->G, T->beta, T->coef, T->ncoef, n, seed, stream), fname);
  return 1;
}

/* target:density_at(theta, w): log p carried to width w, relative to Haar (w = 0: the target) */
static int t_log_density_at(lua_State *L)
{
  const char *fname = "diffuse.group.target.log_density_at";
  l_target *T = check_target(L, 1, fname, "self");
  df_tensor *theta = l_checktensor(L, 2, fname, "theta");
  double w0 = l_checknum(L, 3, fname, "w");
  if (!(w0 >= 0.0) || !isfinite(w0)) l_error(L, fname, "w must be a finite width >= 0 (got %g)", w0);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_class_eval(out, NULL, NULL, &T->cf, theta, NULL, w0), fname);
  return 1;
}

static int t_index(lua_State *L)
{
  l_target *T = check_target(L, 1, "diffuse.group.target", "self");
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "beta") == 0) lua_pushnumber(L, T->beta);
  else if (k && strcmp(k, "terms") == 0) lua_pushinteger(L, T->cf.nrep);
  else if (k && strcmp(k, "group") == 0) {
    df_group *G = (df_group *)lua_newuserdatauv(L, sizeof *G, 0);
    *G = T->G;
    luaL_setmetatable(L, DF_GROUP_MT);
  } else if (k && strcmp(k, "coeffs") == 0) {
    lua_createtable(L, T->ncoef, 0);
    for (int i = 0; i < T->ncoef; i++) {
      lua_pushnumber(L, T->coef[i]);
      lua_rawseti(L, -2, i + 1);
    }
  } else {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
  }
  return 1;
}

static int t_tostring(lua_State *L)
{
  l_target *T = (l_target *)luaL_checkudata(L, 1, DF_TARGET_MT);
  char buf[16];
  if (!T->live) lua_pushstring(L, "diffuse.group.target (released)");
  else lua_pushfstring(L, "diffuse.group.toy_action on %s (beta %f, %d coefficients; %d character terms, log Z %f)",
                       df_group_name(&T->G, buf, sizeof buf), T->beta, T->ncoef, T->cf.nrep, T->cf.log_z);
  return 1;
}

/* ---- score sources ---------------------------------------------------------------------------- */

static int gs_log_density(void *owned, df_tensor *out, const df_tensor *x, const df_tensor *t, double t0)
{
  return df_group_score_log_density((const df_group_score *)owned, out, x, t, t0);
}

static int gs_sample(void *owned, df_tensor *out, int64_t n, double t0)
{
  uint64_t seed, stream;
  draw_streams(&seed, &stream);
  return df_group_score_sample((const df_group_score *)owned, out, n, t0, seed, stream);
}

static void release_gs(void *owned) { df_group_score_free((df_group_score *)owned); }

static void push_group_score(lua_State *L, const df_group *G, const df_diffuser *D, const df_class_fn *cf,
                             int keep, const char *fname)
{
  l_score *s = (l_score *)lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, DF_SCORE_MT);
  df_group_score *gs = (df_group_score *)calloc(1, sizeof *gs);
  if (!gs) l_error(L, fname, "out of memory");
  gs->G = *G;
  gs->diff = *D;
  gs->cf = cf;
  s->owned = gs;
  s->release_owned = release_gs;
  s->live = 1;
  s->kind_name = cf ? "class_function" : "heat";
  s->src.kind = DF_SCORE_CALLBACK;
  s->src.diff = *D;
  s->src.eval = df_group_score_eval;
  s->src.eval_rows = df_group_score_eval_rows;
  s->src.div = df_group_score_div;
  s->src.ctx = gs;
  s->log_density = gs_log_density;
  s->sample = gs_sample;
  if (keep) {
    lua_pushvalue(L, keep);
    lua_setiuservalue(L, -2, 1); /* the target lives as long as its score */
  }
}

/* diffuse.score.heat(G, diffuser): the exact score of the heat kernel from the identity */
static int s_heat(lua_State *L)
{
  const char *fname = "diffuse.score.heat";
  df_group *G = check_group(L, 1, fname, "group");
  df_diffuser *D = l_checkdiffuser(L, 2, fname, "diffuser");
  push_group_score(L, G, D, NULL, 0, fname);
  return 1;
}

/* diffuse.score.class_function(G, diffuser, target): the target carried to time t exactly */
static int s_class_function(lua_State *L)
{
  const char *fname = "diffuse.score.class_function";
  df_group *G = check_group(L, 1, fname, "group");
  df_diffuser *D = l_checkdiffuser(L, 2, fname, "diffuser");
  l_target *T = check_target(L, 3, fname, "target");
  if (T->G.kind != G->kind || T->G.n != G->n) {
    char a[16], b[16];
    l_error(L, fname, "the target is on %s, the group is %s", df_group_name(&T->G, a, sizeof a),
            df_group_name(G, b, sizeof b));
  }
  push_group_score(L, G, D, &T->cf, 3, fname);
  return 1;
}

/* diffuse.group.reverse_sde(x, score, times): x (a copy) carried down the grid by the reverse
   SDE on the group (eigenangles in and out); score a group score (heat or class_function) */
static int g_reverse_sde(lua_State *L)
{
  const char *fname = "diffuse.group.reverse_sde";
  df_tensor *x = l_checktensor(L, 1, fname, "x");
  l_score *s = l_checkscore(L, 2, fname, "score");
  if (s->src.eval != df_group_score_eval) l_error(L, fname, "score must be a group score (diffuse.score.heat or class_function)");
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_Integer nt = luaL_len(L, 3);
  if (nt < 2 || nt > 1000000) l_error(L, fname, "times must hold from 2 to 1e6 times (got %lld)", (long long)nt);
  double *tm = (double *)lua_newuserdatauv(L, sizeof(double) * (size_t)nt, 0);
  for (lua_Integer i = 1; i <= nt; i++) {
    lua_geti(L, 3, i);
    tm[i - 1] = lua_tonumber(L, -1);
    if (!lua_isnumber(L, -1) || !(tm[i - 1] >= 0.0)) l_error(L, fname, "times[%lld] must be a number >= 0", (long long)i);
    lua_pop(L, 1);
  }
  df_tensor *out = l_newtensor(L);
  const df_group_score *gs = (const df_group_score *)s->owned;
  l_check(L, df_group_canonical(out, &gs->G, x), fname);
  uint64_t seed, stream;
  draw_streams(&seed, &stream);
  l_check(L, df_group_reverse_sde(out, gs, tm, (int)nt, seed, stream), fname);
  return 1;
}

static const luaL_Reg group_methods[] = {
  { "haar", g_haar }, { "haar_log_density", g_haar_log_density }, { "heat_kernel", g_heat_kernel },
  { "heat_log_kernel", g_heat_log_kernel }, { "heat_score", g_heat_score },
  { "heat_divergence", g_heat_divergence }, { "heat_sample", g_heat_sample },
  { "canonical", g_canonical }, { "check", g_check }, { "dsm_pairs", g_dsm_pairs }, { NULL, NULL }
};
static const luaL_Reg group_meta[] = { { "__tostring", g_tostring }, { "__eq", g_eq }, { NULL, NULL } };
static const luaL_Reg target_methods[] = {
  { "action", t_action }, { "log_density", t_log_density }, { "log_z", t_log_z }, { "sample", t_sample },
  { "log_density_at", t_log_density_at }, { NULL, NULL }
};
static const luaL_Reg target_meta[] = { { "__tostring", t_tostring }, { "__gc", t_gc }, { NULL, NULL } };
static const luaL_Reg group_funcs[] = { { "u1", g_u1 }, { "su", g_su }, { "toy_action", g_toy_action },
                                        { "reverse_sde", g_reverse_sde }, { NULL, NULL } };

/* diffuse.group, and diffuse.score.heat / class_function (the module table on the stack top) */
void l_open_group(lua_State *L)
{
  l_class(L, DF_GROUP_MT, group_meta, group_methods, g_index);
  l_class(L, DF_TARGET_MT, target_meta, target_methods, t_index);
  luaL_newlib(L, group_funcs);
  lua_setfield(L, -2, "group");
  lua_getfield(L, -1, "score");
  lua_pushcfunction(L, s_heat);
  lua_setfield(L, -2, "heat");
  lua_pushcfunction(L, s_class_function);
  lua_setfield(L, -2, "class_function");
  lua_pop(L, 1);
}
