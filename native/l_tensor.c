/* l_tensor.c: the tensor userdata (metatable "diffuse.tensor") and the diffuse.tensor module:
 * creation, arithmetic metamethods, methods, indexing, views, printing. Argument checks live
 * here; the work is done by the core (tensor.c) on the tensor's own backend. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "l_util.h"
#include "status.h"
#include "dmath.h"

/* ---- shapes from Lua arguments ------------------------------------------------------------ */

/* a shape given as integers at idx..last, or as one table at idx; returns ndim */
static int parse_shape(lua_State *L, int idx, int last, const char *fname, int64_t *shape)
{
  int nd = 0;
  char what[32];
  if (lua_istable(L, idx)) {
    lua_Integer len = (lua_Integer)lua_rawlen(L, idx);
    if (len < 1 || len > DF_MAXDIM)
      l_error(L, fname, "shape must have 1 to %d sizes (got %lld)", DF_MAXDIM, (long long)len);
    for (int i = 1; i <= (int)len; i++) {
      lua_rawgeti(L, idx, i);
      snprintf(what, sizeof what, "size %d", i);
      shape[nd++] = l_checkint(L, -1, fname, what);
      lua_pop(L, 1);
    }
  } else {
    if (last < idx) l_error(L, fname, "a shape is required");
    if (last - idx + 1 > DF_MAXDIM)
      l_error(L, fname, "shape must have 1 to %d sizes (got %d)", DF_MAXDIM, last - idx + 1);
    for (int i = idx; i <= last; i++) {
      snprintf(what, sizeof what, "size %d", i - idx + 1);
      shape[nd++] = l_checkint(L, i, fname, what);
    }
  }
  int64_t n;
  l_check(L, df_shape_check(nd, shape, &n), fname);
  return nd;
}

static df_tensor *new_on_current(lua_State *L, int nd, const int64_t *shape, const char *fname)
{
  const df_backend *be;
  int dev;
  df_current_device(&be, &dev);
  df_tensor *t = l_newtensor(L);
  l_check(L, df_tensor_alloc(t, be, dev, nd, shape), fname);
  l_gc_pressure(L, t->numel * 4);
  return t;
}

/* ---- creation ---------------------------------------------------------------------------- */

static int filled(lua_State *L, float v, const char *fname)
{
  int64_t shape[DF_MAXDIM];
  int nd = parse_shape(L, 1, lua_gettop(L), fname, shape);
  df_tensor *t = new_on_current(L, nd, shape, fname);
  l_check(L, df_fill(t, v), fname);
  return 1;
}

static int t_zeros(lua_State *L) { return filled(L, 0.0f, "diffuse.tensor.zeros"); }
static int t_ones(lua_State *L) { return filled(L, 1.0f, "diffuse.tensor.ones"); }

static int t_full(lua_State *L)
{
  const char *fname = "diffuse.tensor.full";
  int64_t shape[DF_MAXDIM];
  float v = (float)l_checknum(L, 2, fname, "value");
  if (lua_gettop(L) > 2) l_error(L, fname, "expected (shape, value); give the shape as a table");
  int nd = parse_shape(L, 1, 1, fname, shape);
  df_tensor *t = new_on_current(L, nd, shape, fname);
  l_check(L, df_fill(t, v), fname);
  return 1;
}

static int random_tensor(lua_State *L, int dist, const char *fname)
{
  int64_t shape[DF_MAXDIM];
  int nd = parse_shape(L, 1, lua_gettop(L), fname, shape);
  df_tensor *t = new_on_current(L, nd, shape, fname);
  l_check(L, df_random(t, dist), fname);
  return 1;
}

static int t_randn(lua_State *L) { return random_tensor(L, DF_NORMAL, "diffuse.tensor.randn"); }
static int t_rand(lua_State *L) { return random_tensor(L, DF_UNIFORM, "diffuse.tensor.rand"); }

static int t_linspace(lua_State *L)
{
  const char *fname = "diffuse.tensor.linspace";
  double a = l_checknum(L, 1, fname, "start"), b = l_checknum(L, 2, fname, "stop");
  int64_t n = l_checkint(L, 3, fname, "count");
  if (!isfinite(a) || !isfinite(b)) l_error(L, fname, "start and stop must be finite");
  if (fabs(a) > FLT_MAX || fabs(b) > FLT_MAX)
    l_error(L, fname, "start and stop must be finite in float32 (|v| <= 3.4e38)");
  if (n < 0) l_error(L, fname, "count must be non-negative (got %lld)", (long long)n);
  int64_t shape[1] = { n };
  df_tensor *t = new_on_current(L, 1, shape, fname);
  double step = n > 1 ? (b - a) / (double)(n - 1) : 0.0;
  l_check(L, df_ramp(t, a, step, n > 1 ? b : a), fname);
  return 1;
}

/* arange(stop) or arange(start, stop [, step]): [start, stop) as torch */
static int t_arange(lua_State *L)
{
  const char *fname = "diffuse.tensor.arange";
  double a = 0.0, b, step = 1.0;
  if (lua_isnoneornil(L, 2)) {
    b = l_checknum(L, 1, fname, "stop");
  } else {
    a = l_checknum(L, 1, fname, "start");
    b = l_checknum(L, 2, fname, "stop");
    step = l_optnum(L, 3, 1.0, fname, "step");
  }
  if (!isfinite(a) || !isfinite(b) || !isfinite(step))
    l_error(L, fname, "start, stop and step must be finite");
  if (step == 0.0) l_error(L, fname, "step must not be zero");
  double count = ceil((b - a) / step);
  if (count < 0) count = 0;
  if (count > (double)DF_MAX_NUMEL) l_error(L, fname, "%.17g elements are too many", count);
  double last = count > 0 ? a + (count - 1) * step : a;
  if (count > 0 && (fabs(a) > FLT_MAX || fabs(last) > FLT_MAX))
    l_error(L, fname, "the values must be finite in float32 (|v| <= 3.4e38), up to %g here", last);
  int64_t shape[1] = { (int64_t)count };
  df_tensor *t = new_on_current(L, 1, shape, fname);
  l_check(L, df_ramp(t, a, step, last), fname);
  return 1;
}

/* tensor.new{{1,2},{3,4}}: the shape follows the nesting; every row must have the same size */
static void new_shape(lua_State *L, int idx, const char *fname, int *nd, int64_t *shape)
{
  lua_pushvalue(L, idx);
  while (lua_istable(L, -1)) {
    if (*nd == DF_MAXDIM) l_error(L, fname, "tables nest deeper than %d levels", DF_MAXDIM);
    shape[(*nd)++] = (int64_t)lua_rawlen(L, -1);
    if (lua_rawlen(L, -1) == 0) break;
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
}

static void new_fill(lua_State *L, int idx, int d, int nd, const int64_t *shape, float *buf,
                     int64_t *pos, const char *fname)
{
  if (d >= DF_MAXDIM) return; /* cannot happen (d < nd); tells gcc the bound */
  if ((int64_t)lua_rawlen(L, idx) != shape[d])
    l_error(L, fname, "rows have different sizes at depth %d (%lld and %lld)", d + 1,
            (long long)lua_rawlen(L, idx), (long long)shape[d]);
  for (int64_t i = 1; i <= shape[d]; i++) {
    int ty = lua_rawgeti(L, idx, (lua_Integer)i);
    if (d + 1 < nd) {
      if (ty != LUA_TTABLE)
        l_error(L, fname, "expected a table at depth %d, got %s", d + 2, lua_typename(L, ty));
      new_fill(L, lua_gettop(L), d + 1, nd, shape, buf, pos, fname);
    } else {
      if (ty != LUA_TNUMBER)
        l_error(L, fname, "expected a number at depth %d, got %s", d + 1, lua_typename(L, ty));
      buf[(*pos)++] = (float)lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
  }
}

static int t_new(lua_State *L)
{
  const char *fname = "diffuse.tensor.new";
  int64_t shape[DF_MAXDIM];
  int nd = 0;
  if (lua_type(L, 1) == LUA_TNUMBER) { /* a single number: a one-element tensor */
    shape[0] = 1;
    df_tensor *t = new_on_current(L, 1, shape, fname);
    l_check(L, df_fill(t, (float)lua_tonumber(L, 1)), fname);
    return 1;
  }
  if (!lua_istable(L, 1))
    l_error(L, fname, "expected a (nested) table of numbers, got %s", luaL_typename(L, 1));
  new_shape(L, 1, fname, &nd, shape);
  int64_t n;
  l_check(L, df_shape_check(nd, shape, &n), fname);
  float *buf = l_hostbuf(L, n, fname);
  int64_t pos = 0;
  new_fill(L, 1, 0, nd, shape, buf, &pos, fname); /* also when empty: {{}, {1, 2}} is ragged */
  df_tensor *t = new_on_current(L, nd, shape, fname);
  l_check(L, df_upload(t, buf), fname);
  return 1;
}

/* ---- elementwise ---------------------------------------------------------------------------- */

static int arith(lua_State *L, int op, const char *fname)
{
  df_tensor *a = l_totensor(L, 1, fname), *b = l_totensor(L, 2, fname);
  if (a && b) {
    df_tensor *out = l_newtensor(L);
    l_check(L, df_binary(out, op, a, b), fname);
    l_gc_pressure(L, out->numel * 4);
  } else if (a && lua_type(L, 2) == LUA_TNUMBER) {
    df_tensor *out = l_newtensor(L);
    l_check(L, df_binary_scalar(out, op, a, (float)lua_tonumber(L, 2), 0), fname);
    l_gc_pressure(L, out->numel * 4);
  } else if (b && lua_type(L, 1) == LUA_TNUMBER) {
    df_tensor *out = l_newtensor(L);
    l_check(L, df_binary_scalar(out, op, b, (float)lua_tonumber(L, 1), 1), fname);
    l_gc_pressure(L, out->numel * 4);
  } else {
    l_error(L, fname, "expected tensors or numbers, one of them a tensor (got %s and %s)",
            luaL_typename(L, 1), luaL_typename(L, 2));
  }
  return 1;
}

static int t_add(lua_State *L) { return arith(L, DF_ADD, "diffuse.tensor.add"); }
static int t_sub(lua_State *L) { return arith(L, DF_SUB, "diffuse.tensor.sub"); }
static int t_mul(lua_State *L) { return arith(L, DF_MUL, "diffuse.tensor.mul"); }
static int t_div(lua_State *L) { return arith(L, DF_DIV, "diffuse.tensor.div"); }
static int t_pow(lua_State *L) { return arith(L, DF_POW, "diffuse.tensor.pow"); }
static int t_maximum(lua_State *L) { return arith(L, DF_MAXIMUM, "diffuse.tensor.maximum"); }
static int t_minimum(lua_State *L) { return arith(L, DF_MINIMUM, "diffuse.tensor.minimum"); }

static int unary(lua_State *L, int op, const char *fname)
{
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  df_tensor *out = l_newtensor(L);
  l_check(L, df_unary(out, op, a), fname);
  l_gc_pressure(L, out->numel * 4);
  return 1;
}

static int t_neg(lua_State *L) { return unary(L, DF_NEG, "diffuse.tensor.neg"); }
static int t_exp(lua_State *L) { return unary(L, DF_EXP, "diffuse.tensor.exp"); }
static int t_log(lua_State *L) { return unary(L, DF_LOG, "diffuse.tensor.log"); }
static int t_sqrt(lua_State *L) { return unary(L, DF_SQRT, "diffuse.tensor.sqrt"); }
static int t_abs(lua_State *L) { return unary(L, DF_ABS, "diffuse.tensor.abs"); }
static int t_sin(lua_State *L) { return unary(L, DF_SIN, "diffuse.tensor.sin"); }
static int t_cos(lua_State *L) { return unary(L, DF_COS, "diffuse.tensor.cos"); }
static int t_tanh(lua_State *L) { return unary(L, DF_TANH, "diffuse.tensor.tanh"); }
static int t_silu(lua_State *L) { return unary(L, DF_SILU, "diffuse.tensor.silu"); }
static int t_square(lua_State *L) { return unary(L, DF_SQUARE, "diffuse.tensor.square"); }
static int t_sigmoid(lua_State *L) { return unary(L, DF_SIGMOID, "diffuse.tensor.sigmoid"); }
static int t_relu(lua_State *L) { return unary(L, DF_RELU, "diffuse.tensor.relu"); }
static int t_gelu(lua_State *L) { return unary(L, DF_GELU, "diffuse.tensor.gelu"); }

/* __unm receives the operand twice */
static int t_unm(lua_State *L) { lua_settop(L, 1); return t_neg(L); }

/* ---- reductions ----------------------------------------------------------------------------- */

/* a dimension argument: 1..ndim, or negative counting from the end */
static int check_dim(lua_State *L, int idx, const df_tensor *t, const char *fname)
{
  int64_t d = l_checkint(L, idx, fname, "dim");
  if (d < 0) d += t->ndim + 1;
  if (d < 1 || d > t->ndim)
    l_error(L, fname, "dim %lld out of range for a %d-dimensional tensor",
            (long long)l_checkint(L, idx, fname, "dim"), t->ndim);
  return (int)d;
}

static int reduce(lua_State *L, int op, const char *fname)
{
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  if (lua_isnoneornil(L, 2)) {
    double r;
    l_check(L, df_reduce_all(a, op, &r), fname);
    lua_pushnumber(L, (lua_Number)r);
    return 1;
  }
  int dim = check_dim(L, 2, a, fname);
  int keepdim = l_optbool(L, 3, 0, fname, "keepdim");
  int with_idx = op == DF_RMIN || op == DF_RMAX;
  df_tensor *out = l_newtensor(L);
  df_tensor *idx = with_idx ? l_newtensor(L) : NULL;
  l_check(L, df_reduce_dim(out, idx, a, op, dim, keepdim), fname);
  l_gc_pressure(L, out->numel * (with_idx ? 8 : 4));
  return with_idx ? 2 : 1;
}

static int t_sum(lua_State *L) { return reduce(L, DF_RSUM, "diffuse.tensor.sum"); }
static int t_mean(lua_State *L) { return reduce(L, DF_RMEAN, "diffuse.tensor.mean"); }
static int t_var(lua_State *L) { return reduce(L, DF_RVAR, "diffuse.tensor.var"); }
static int t_std(lua_State *L) { return reduce(L, DF_RSTD, "diffuse.tensor.std"); }
static int t_min(lua_State *L) { return reduce(L, DF_RMIN, "diffuse.tensor.min"); }
static int t_max(lua_State *L) { return reduce(L, DF_RMAX, "diffuse.tensor.max"); }

/* ---- products, shapes, copies ---------------------------------------------------------- */

static int t_matmul(lua_State *L)
{
  const char *fname = "diffuse.tensor.matmul";
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  df_tensor *b = l_checktensor(L, 2, fname, "argument 2");
  df_tensor *out = l_newtensor(L);
  l_check(L, df_matmul(out, a, b), fname);
  l_gc_pressure(L, out->numel * 4);
  return 1;
}

/* a view sharing t's memory; its user value keeps the tensor at stack index `owner` alive */
static df_tensor *push_view(lua_State *L, int owner, df_tensor *t, int64_t offset, int nd,
                            const int64_t *shape, const char *fname)
{
  df_tensor *v = l_newtensor(L);
  l_check(L, df_tensor_view(v, t, offset, nd, shape), fname);
  lua_pushvalue(L, owner);
  lua_setiuservalue(L, -2, 1);
  return v;
}

static int t_reshape(lua_State *L)
{
  const char *fname = "diffuse.tensor.reshape";
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  int64_t shape[DF_MAXDIM];
  int nd = 0, infer = -1;
  int top = lua_gettop(L);
  char what[32];
  /* like parse_shape, but one size may be -1 (inferred) */
  if (lua_istable(L, 2)) {
    lua_Integer len = (lua_Integer)lua_rawlen(L, 2);
    if (len < 1 || len > DF_MAXDIM)
      l_error(L, fname, "shape must have 1 to %d sizes (got %lld)", DF_MAXDIM, (long long)len);
    for (int i = 1; i <= (int)len; i++) {
      lua_rawgeti(L, 2, i);
      snprintf(what, sizeof what, "size %d", i);
      shape[nd++] = l_checkint(L, -1, fname, what);
      lua_pop(L, 1);
    }
  } else {
    if (top < 2) l_error(L, fname, "a shape is required");
    if (top - 1 > DF_MAXDIM)
      l_error(L, fname, "shape must have 1 to %d sizes (got %d)", DF_MAXDIM, top - 1);
    for (int i = 2; i <= top; i++) {
      snprintf(what, sizeof what, "size %d", i - 1);
      shape[nd++] = l_checkint(L, i, fname, what);
    }
  }
  int64_t known = 1;
  for (int i = 0; i < nd; i++) {
    if (shape[i] == -1) {
      if (infer >= 0) l_error(L, fname, "only one size can be -1");
      infer = i;
      continue;
    }
    if (shape[i] < 0) l_error(L, fname, "size %d is negative (%lld)", i + 1, (long long)shape[i]);
    if (shape[i] > DF_MAX_NUMEL) l_error(L, fname, "size %d is too large", i + 1);
    if (shape[i] != 0 && known > DF_MAX_NUMEL / shape[i]) /* checked before it can overflow */
      l_error(L, fname, "the shape has too many elements");
    known *= shape[i];
  }
  if (infer >= 0) {
    if (known == 0 || a->numel % known != 0)
      l_error(L, fname, "cannot infer size %d: %lld elements do not divide into %lld",
              infer + 1, (long long)a->numel, (long long)known);
    shape[infer] = a->numel / known;
    known = a->numel;
  }
  if (known != a->numel) {
    char s1[96], s2[96];
    l_error(L, fname, "cannot reshape %s (%lld elements) to %s", 
            df_shape_str(a->ndim, a->shape, s1, sizeof s1), (long long)a->numel,
            df_shape_str(nd, shape, s2, sizeof s2));
  }
  push_view(L, 1, a, 0, nd, shape, fname);
  return 1;
}

static int t_clone(lua_State *L)
{
  const char *fname = "diffuse.tensor.clone";
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  df_tensor *out = l_newtensor(L);
  l_check(L, df_tensor_like(out, a), fname);
  l_gc_pressure(L, out->numel * 4);
  l_check(L, df_copy(out, a), fname);
  return 1;
}

static int t_cat(lua_State *L)
{
  const char *fname = "diffuse.tensor.cat";
  lua_settop(L, 2); /* the pointer buffer below must not land in the dim slot */
  if (!lua_istable(L, 1)) l_error(L, fname, "expected a list of tensors, got %s", luaL_typename(L, 1));
  lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
  if (n < 1) l_error(L, fname, "the list of tensors is empty");
  if (n > 100000) l_error(L, fname, "too many tensors (%lld)", (long long)n);
  const df_tensor **ts = (const df_tensor **)lua_newuserdatauv(L, (size_t)n * sizeof *ts, 0);
  int list = lua_gettop(L);
  for (lua_Integer i = 1; i <= n; i++) {
    char what[32];
    snprintf(what, sizeof what, "tensor %lld", (long long)i);
    lua_rawgeti(L, 1, i);
    ts[i - 1] = l_checktensor(L, -1, fname, what);
    lua_pop(L, 1); /* still referenced by the list */
  }
  int dim = lua_isnoneornil(L, 2) ? 1 : check_dim(L, 2, ts[0], fname);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_cat(out, (int)n, ts, dim), fname);
  l_gc_pressure(L, out->numel * 4);
  (void)list;
  return 1;
}

static int t_fill(lua_State *L)
{
  const char *fname = "diffuse.tensor.fill";
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  float v = (float)l_checknum(L, 2, fname, "value");
  l_check(L, df_fill(a, v), fname);
  lua_settop(L, 1);
  return 1;
}

static int t_copy(lua_State *L)
{
  const char *fname = "diffuse.tensor.copy";
  df_tensor *a = l_checktensor(L, 1, fname, "destination");
  df_tensor *b = l_checktensor(L, 2, fname, "source");
  if (a->numel != b->numel) {
    char s1[96], s2[96];
    l_error(L, fname, "sizes differ (%s and %s)", df_shape_str(a->ndim, a->shape, s1, sizeof s1),
            df_shape_str(b->ndim, b->shape, s2, sizeof s2));
  }
  l_check(L, df_copy(a, b), fname);
  lua_settop(L, 1);
  return 1;
}

static int t_to(lua_State *L)
{
  const char *fname = "diffuse.tensor.to";
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  const df_backend *be;
  int dev;
  l_parse_device(L, l_checkstr(L, 2, fname, "device"), fname, &be, &dev);
  if (a->be == be && a->dev == dev) {
    lua_settop(L, 1);
    return 1;
  }
  df_tensor *out = l_newtensor(L);
  l_check(L, df_to_device(out, a, be, dev), fname);
  l_gc_pressure(L, out->numel * 4);
  return 1;
}

/* ---- reading values ------------------------------------------------------------------------ */

static float read_one(lua_State *L, df_tensor *t, int64_t i, const char *fname)
{
  float v;
  l_check(L, t->be->download(t->dev, &v, df_data(t) + i, 1), fname);
  return v;
}

static void push_table(lua_State *L, const float *buf, int d, const df_tensor *t, int64_t *pos)
{
  if (d >= DF_MAXDIM) return; /* cannot happen (d < ndim); tells gcc the bound */
  lua_createtable(L, (int)(t->shape[d] < 1 << 30 ? t->shape[d] : 0), 0);
  for (int64_t i = 1; i <= t->shape[d]; i++) {
    if (d + 1 < t->ndim) push_table(L, buf, d + 1, t, pos);
    else lua_pushnumber(L, (lua_Number)buf[(*pos)++]);
    lua_rawseti(L, -2, (lua_Integer)i);
  }
}

static int t_totable(lua_State *L)
{
  const char *fname = "diffuse.tensor.totable";
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  /* the Lua tables to build: an empty 2^40 x 0 tensor holds no value but would need 2^40 of
     them (Lua tables hold at most 2^31 entries anyway) */
  double tables = 0.0, level = 1.0;
  for (int d = 0; d + 1 < a->ndim; d++) tables += (level *= (double)a->shape[d]);
  if (tables + (double)a->numel > 2147483647.0) {
    char shp[96];
    l_error(L, fname, "a tensor of %s is too large for Lua tables",
            df_shape_str(a->ndim, a->shape, shp, sizeof shp));
  }
  float *buf = l_hostbuf(L, a->numel, fname);
  l_check(L, df_download(a, buf), fname);
  int64_t pos = 0;
  luaL_checkstack(L, 2 * DF_MAXDIM + 4, fname);
  push_table(L, buf, 0, a, &pos);
  return 1;
}

static int t_item(lua_State *L)
{
  const char *fname = "diffuse.tensor.item";
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  if (a->numel != 1)
    l_error(L, fname, "item needs a tensor of one element (this one has %lld)",
            (long long)a->numel);
  lua_pushnumber(L, (lua_Number)read_one(L, a, 0, fname));
  return 1;
}

static int t_shape(lua_State *L)
{
  df_tensor *a = l_checktensor(L, 1, "diffuse.tensor.shape", "argument 1");
  lua_createtable(L, a->ndim, 0);
  for (int i = 0; i < a->ndim; i++) {
    lua_pushinteger(L, (lua_Integer)a->shape[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int t_size(lua_State *L)
{
  const char *fname = "diffuse.tensor.size";
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  if (lua_isnoneornil(L, 2)) return t_shape(L);
  lua_pushinteger(L, (lua_Integer)a->shape[check_dim(L, 2, a, fname) - 1]);
  return 1;
}

static int t_dim(lua_State *L)
{
  lua_pushinteger(L, l_checktensor(L, 1, "diffuse.tensor.dim", "argument 1")->ndim);
  return 1;
}

static int t_numel(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)l_checktensor(L, 1, "diffuse.tensor.numel", "argument 1")->numel);
  return 1;
}

static int t_len(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)l_checktensor(L, 1, "diffuse.tensor.__len", "tensor")->shape[0]);
  return 1;
}

static int t_device(lua_State *L)
{
  df_tensor *a = l_checktensor(L, 1, "diffuse.tensor.device", "argument 1");
  char buf[32];
  lua_pushstring(L, df_device_str(a->be, a->dev, buf, sizeof buf));
  return 1;
}

/* x:histogram{bins = 50, min = -4, max = 4, density = true} --> counts, edges */
static int t_histogram(lua_State *L)
{
  const char *fname = "diffuse.tensor.histogram";
  static const char *const opts[] = { "bins", "min", "max", "density", NULL };
  df_tensor *a = l_checktensor(L, 1, fname, "argument 1");
  l_checkopts(L, 2, fname, opts);
  l_getopt(L, 2, "bins");
  int64_t bins = l_optint(L, -1, 100, fname, "bins");
  l_getopt(L, 2, "min");
  int has_lo = !lua_isnil(L, -1);
  double lo = l_optnum(L, -1, 0.0, fname, "min");
  l_getopt(L, 2, "max");
  int has_hi = !lua_isnil(L, -1);
  double hi = l_optnum(L, -1, 0.0, fname, "max");
  l_getopt(L, 2, "density");
  int density = l_optbool(L, -1, 0, fname, "density");
  lua_settop(L, 1);
  if (bins < 1 || bins > 100000000)
    l_error(L, fname, "bins must be between 1 and 1e8 (got %lld)", (long long)bins);
  if (!has_lo || !has_hi) { /* the data's range, as torch.histc */
    if (a->numel == 0) l_error(L, fname, "min and max are needed for an empty tensor");
    double dlo, dhi;
    if (!has_lo) l_check(L, df_reduce_all(a, DF_RMIN, &dlo), fname);
    if (!has_hi) l_check(L, df_reduce_all(a, DF_RMAX, &dhi), fname);
    if (!has_lo) lo = dlo;
    if (!has_hi) hi = dhi;
    if (!isfinite(lo) || !isfinite(hi))
      l_error(L, fname, "the data holds NaN or infinite values: give min and max");
    if (lo == hi) { /* constant data: widen the side the caller did not fix */
      if (!has_lo) lo -= 1.0;
      if (!has_hi) hi += 1.0;
    }
  }
  int64_t *counts = (int64_t *)lua_newuserdatauv(L, (size_t)bins * sizeof(int64_t), 0);
  l_check(L, df_histogram(a, bins, lo, hi, counts), fname);
  float *vals = l_hostbuf(L, bins, fname);
  int64_t total = 0;
  for (int64_t b = 0; b < bins; b++) total += counts[b];
  double width = (hi - lo) / (double)bins;
  for (int64_t b = 0; b < bins; b++)
    vals[b] = density ? (total > 0 ? (float)((double)counts[b] / ((double)total * width)) : 0.0f)
                      : (float)counts[b];
  int64_t shape[1] = { bins };
  df_tensor *c = l_newtensor(L);
  l_check(L, df_tensor_alloc(c, a->be, a->dev, 1, shape), fname);
  l_check(L, df_upload(c, vals), fname);
  shape[0] = bins + 1;
  df_tensor *e = l_newtensor(L);
  l_check(L, df_tensor_alloc(e, a->be, a->dev, 1, shape), fname);
  l_check(L, df_ramp(e, lo, width, hi), fname);
  return 2;
}

/* argument 1 as a tensor, live or released (free, is_released, printing); the error names
   the function, as every other check does */
static df_tensor *any_tensor(lua_State *L, const char *fname)
{
  df_tensor *t = (df_tensor *)luaL_testudata(L, 1, DF_TENSOR_MT);
  if (!t) l_error(L, fname, "argument 1 must be a tensor (got %s)", luaL_typename(L, 1));
  return t;
}

/* ---- printing ------------------------------------------------------------------------------ */

#define EDGE 3          /* items shown at each end of an abridged dimension */
#define PRINT_ALL 1000  /* tensors up to this many elements print whole (torch's threshold) */

typedef struct {
  int nd, abr[DF_MAXDIM];
  int64_t disp[DF_MAXDIM];
  const df_tensor *t;
} print_plan;

/* the tensor index of the j-th displayed item along dim d */
static int64_t shown_index(const print_plan *p, int d, int64_t j)
{
  if (!p->abr[d] || j < EDGE) return j;
  return p->t->shape[d] - 2 * EDGE + j;
}

/* gather the displayed values into vals (row-major over the displayed grid) */
static void gather(lua_State *L, const print_plan *p, float *vals, const char *fname)
{
  const df_tensor *t = p->t;
  int nd = p->nd, last = nd - 1;
  int64_t rows = 1;
  for (int d = 0; d < last; d++) rows *= p->disp[d];
  for (int64_t r = 0; r < rows; r++) {
    int64_t rem = r, off = 0, stride = t->shape[last];
    for (int d = last - 1; d >= 0; d--) { /* displayed row r -> tensor offset */
      int64_t j = rem % p->disp[d];
      rem /= p->disp[d];
      off += shown_index(p, d, j) * stride;
      stride *= t->shape[d];
    }
    float *dst = vals + r * p->disp[last];
    const float *src = df_data(t) + off;
    if (p->abr[last]) {
      l_check(L, t->be->download(t->dev, dst, src, EDGE), fname);
      l_check(L, t->be->download(t->dev, dst + EDGE, src + t->shape[last] - EDGE, EDGE), fname);
    } else if (p->disp[last] > 0) {
      l_check(L, t->be->download(t->dev, dst, src, p->disp[last]), fname);
    }
  }
}

enum { FMT_INT, FMT_FIX, FMT_SCI };

static int fmt_value(char *buf, size_t len, float v, int mode)
{
  if (v != v) return snprintf(buf, len, "nan");
  if (isinf(v)) return snprintf(buf, len, v > 0 ? "inf" : "-inf");
  if (mode == FMT_INT) return snprintf(buf, len, "%.0f", (double)v);
  if (mode == FMT_SCI) return snprintf(buf, len, "%.4e", (double)v);
  return snprintf(buf, len, "%.4f", (double)v);
}

static void emit(luaL_Buffer *b, const print_plan *p, const float *vals, int d, int64_t *pos,
                 int mode, int width)
{
  char tmp[64];
  luaL_addchar(b, '[');
  for (int64_t j = 0; j < p->disp[d]; j++) {
    if (j > 0) {
      if (d == p->nd - 1) luaL_addchar(b, ' ');
      else {
        for (int k = 0; k < p->nd - 1 - d; k++) luaL_addchar(b, '\n');
        for (int k = 0; k <= d; k++) luaL_addchar(b, ' ');
      }
    }
    if (p->abr[d] && j == EDGE) { /* the elided middle */
      luaL_addstring(b, "...");
      if (d == p->nd - 1) luaL_addchar(b, ' ');
      else {
        for (int k = 0; k < p->nd - 1 - d; k++) luaL_addchar(b, '\n');
        for (int k = 0; k <= d; k++) luaL_addchar(b, ' ');
      }
    }
    if (d == p->nd - 1) {
      int n = fmt_value(tmp, sizeof tmp, vals[(*pos)++], mode);
      for (int k = n; k < width; k++) luaL_addchar(b, ' ');
      luaL_addstring(b, tmp);
    } else {
      emit(b, p, vals, d + 1, pos, mode, width);
    }
  }
  luaL_addchar(b, ']');
}

static int t_tostring(lua_State *L)
{
  const char *fname = "diffuse.tensor.__tostring";
  df_tensor *t = any_tensor(L, fname);
  char shp[96], devs[32];
  if (!df_is_live(t)) {
    lua_pushstring(L, "[diffuse.tensor (released)]");
    return 1;
  }
  print_plan p;
  p.nd = t->ndim;
  p.t = t;
  int64_t shown = 1;
  double cells = 1.0; /* brackets and values to write: an empty 1e9 x 0 tensor has 1e9 "[]" */
  for (int d = 0; d < t->ndim; d++) cells *= t->shape[d] > 0 ? (double)t->shape[d] : 1.0;
  for (int d = 0; d < t->ndim; d++) {
    p.abr[d] = cells > PRINT_ALL && t->shape[d] > 2 * EDGE;
    p.disp[d] = p.abr[d] ? 2 * EDGE : t->shape[d];
    shown *= p.disp[d];
  }
  float *vals = l_hostbuf(L, shown, fname);
  if (shown > 0) gather(L, &p, vals, fname);
  /* one format for all values, as torch: integers, fixed or scientific */
  int all_int = 1;
  double amax = 0.0, amin = INFINITY;
  for (int64_t i = 0; i < shown; i++) {
    double v = fabs((double)vals[i]);
    if (!isfinite(v)) continue;
    if (v != floor(v)) all_int = 0;
    if (v > amax) amax = v;
    if (v > 0 && v < amin) amin = v;
  }
  int mode = all_int && amax < 1e9 ? FMT_INT
             : (amax >= 1e5 || amin < 1e-4 || (amin < INFINITY && amax / amin >= 1e6)) ? FMT_SCI
             : FMT_FIX;
  int width = 0;
  for (int64_t i = 0; i < shown; i++) {
    char tmp[64];
    int n = fmt_value(tmp, sizeof tmp, vals[i], mode);
    if (n > width) width = n;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int64_t pos = 0;
  emit(&b, &p, vals, 0, &pos, mode, width);
  lua_pushfstring(L, "\n[diffuse.tensor of size %s on %s]",
                  df_shape_str(t->ndim, t->shape, shp, sizeof shp),
                  df_device_str(t->be, t->dev, devs, sizeof devs));
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  return 1;
}

/* ---- indexing ------------------------------------------------------------------------------ */

static int64_t check_index(lua_State *L, int idx, const df_tensor *t, const char *fname)
{
  int64_t i = l_checkint(L, idx, fname, "index");
  int64_t n = t->shape[0];
  int64_t j = i < 0 ? i + n : i - 1;
  if (j < 0 || j >= n)
    l_error(L, fname, "index %lld out of range for dimension 1 of size %lld", (long long)i,
            (long long)n);
  return j;
}

static int t_index(lua_State *L)
{
  const char *fname = "diffuse.tensor.index";
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *k = lua_tostring(L, 2);
    if (strcmp(k, "device") == 0) {
      lua_settop(L, 1);
      return t_device(L);
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1)); /* methods */
    return 1;
  }
  if (lua_type(L, 2) != LUA_TNUMBER) {
    lua_pushnil(L);
    return 1;
  }
  df_tensor *t = l_checktensor(L, 1, fname, "tensor");
  int64_t j = check_index(L, 2, t, fname);
  if (t->ndim == 1) {
    lua_pushnumber(L, (lua_Number)read_one(L, t, j, fname));
    return 1;
  }
  int64_t row = t->numel / (t->shape[0] ? t->shape[0] : 1);
  push_view(L, 1, t, j * row, t->ndim - 1, t->shape + 1, fname);
  return 1;
}

static int t_newindex(lua_State *L)
{
  const char *fname = "diffuse.tensor.newindex";
  df_tensor *t = l_checktensor(L, 1, fname, "tensor");
  int64_t j = check_index(L, 2, t, fname);
  int64_t row = t->numel / (t->shape[0] ? t->shape[0] : 1);
  if (lua_type(L, 3) == LUA_TNUMBER) {
    float v = (float)lua_tonumber(L, 3);
    l_check(L, t->be->fill(t->dev, df_data(t) + j * row, row, v), fname);
    return 0;
  }
  df_tensor *src = l_totensor(L, 3, fname);
  if (!src) l_error(L, fname, "value must be a number or a tensor (got %s)", luaL_typename(L, 3));
  if (src->numel != row)
    l_error(L, fname, "value has %lld elements, the row has %lld", (long long)src->numel,
            (long long)row);
  df_tensor *v = push_view(L, 1, t, j * row, 1, &row, fname);
  l_check(L, df_copy(v, src), fname);
  return 0;
}

/* ---- lifetime ------------------------------------------------------------------------------ */

/* __gc and __close: one idempotent release */
static int t_release(lua_State *L)
{
  df_tensor *t = any_tensor(L, "diffuse.tensor.free");
  df_tensor_release(t);
  return 0;
}

static int t_is_released(lua_State *L)
{
  df_tensor *t = any_tensor(L, "diffuse.tensor.is_released");
  lua_pushboolean(L, !df_is_live(t));
  return 1;
}

/* ---- registration -------------------------------------------------------------------------- */

static const luaL_Reg methods[] = {
  { "add", t_add }, { "sub", t_sub }, { "mul", t_mul }, { "div", t_div }, { "pow", t_pow },
  { "maximum", t_maximum }, { "minimum", t_minimum },
  { "neg", t_neg }, { "exp", t_exp }, { "log", t_log }, { "sqrt", t_sqrt }, { "abs", t_abs },
  { "sin", t_sin }, { "cos", t_cos }, { "tanh", t_tanh }, { "silu", t_silu },
  { "square", t_square }, { "sigmoid", t_sigmoid }, { "relu", t_relu }, { "gelu", t_gelu },
  { "sum", t_sum }, { "mean", t_mean }, { "var", t_var }, { "std", t_std }, { "min", t_min },
  { "max", t_max },
  { "matmul", t_matmul }, { "reshape", t_reshape }, { "clone", t_clone }, { "fill", t_fill },
  { "copy", t_copy }, { "to", t_to }, { "totable", t_totable }, { "item", t_item },
  { "shape", t_shape }, { "size", t_size }, { "dim", t_dim }, { "numel", t_numel },
  { "histogram", t_histogram }, { "free", t_release }, { "is_released", t_is_released },
  { NULL, NULL }
};

static const luaL_Reg constructors[] = {
  { "zeros", t_zeros }, { "ones", t_ones }, { "full", t_full }, { "randn", t_randn },
  { "rand", t_rand }, { "linspace", t_linspace }, { "arange", t_arange }, { "new", t_new },
  { "cat", t_cat }, { NULL, NULL }
};

static const luaL_Reg metamethods[] = {
  { "__add", t_add }, { "__sub", t_sub }, { "__mul", t_mul }, { "__div", t_div },
  { "__pow", t_pow }, { "__unm", t_unm }, { "__len", t_len }, { "__tostring", t_tostring },
  { "__newindex", t_newindex }, { "__gc", t_release }, { "__close", t_release },
  { NULL, NULL }
};

/* pushes the diffuse.tensor module table; sets up the metatable */
int l_open_tensor(lua_State *L)
{
  luaL_newmetatable(L, DF_TENSOR_MT);
  luaL_setfuncs(L, metamethods, 0);
  luaL_newlib(L, methods);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, t_index, 1);
  lua_setfield(L, -3, "__index");
  lua_setfield(L, -2, "methods"); /* getmetatable(x).methods: for Lua-side extensions */
  lua_pop(L, 1);
  /* the module: constructors plus every method as a function, tensor.exp(x) */
  luaL_newlib(L, methods);
  luaL_setfuncs(L, constructors, 0);
  return 1;
}
