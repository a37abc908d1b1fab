/* l_util.c: argument checks and small helpers shared by the binding files (see l_util.h). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include "l_util.h"
#include "status.h"

int l_error(lua_State *L, const char *fname, const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return luaL_error(L, "%s: %s", fname, msg);
}

const char *l_errtext(lua_State *L, int idx)
{
  const char *s = lua_tostring(L, idx);
  return s ? s : lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
}

void l_check(lua_State *L, int st, const char *fname)
{
  if (st != DF_OK) luaL_error(L, "%s: %s", fname, df_errmsg());
}

/* how a bad value looks in a message */
static const char *l_repr(lua_State *L, int idx, char *buf, size_t len)
{
  if (lua_type(L, idx) == LUA_TNUMBER) {
    double v = (double)lua_tonumber(L, idx);
    if (lua_isinteger(L, idx)) snprintf(buf, len, "%lld", (long long)lua_tointeger(L, idx));
    else if (v != v) snprintf(buf, len, "nan");
    else snprintf(buf, len, "%.17g", v);
  } else {
    snprintf(buf, len, "%s", luaL_typename(L, idx));
  }
  return buf;
}

int64_t l_checkint(lua_State *L, int idx, const char *fname, const char *what)
{
  int isint = 0;
  lua_Integer v = 0;
  if (lua_type(L, idx) == LUA_TNUMBER) v = lua_tointegerx(L, idx, &isint);
  if (!isint) {
    char b[64];
    l_error(L, fname, "%s must be an integer (got %s)", what, l_repr(L, idx, b, sizeof b));
  }
  return (int64_t)v;
}

int64_t l_optint(lua_State *L, int idx, int64_t def, const char *fname, const char *what)
{
  return lua_isnoneornil(L, idx) ? def : l_checkint(L, idx, fname, what);
}

double l_checknum(lua_State *L, int idx, const char *fname, const char *what)
{
  if (lua_type(L, idx) != LUA_TNUMBER) {
    char b[64];
    l_error(L, fname, "%s must be a number (got %s)", what, l_repr(L, idx, b, sizeof b));
  }
  return (double)lua_tonumber(L, idx);
}

double l_optnum(lua_State *L, int idx, double def, const char *fname, const char *what)
{
  return lua_isnoneornil(L, idx) ? def : l_checknum(L, idx, fname, what);
}

int l_optbool(lua_State *L, int idx, int def, const char *fname, const char *what)
{
  if (lua_isnoneornil(L, idx)) return def;
  if (!lua_isboolean(L, idx))
    l_error(L, fname, "%s must be a boolean (got %s)", what, luaL_typename(L, idx));
  return lua_toboolean(L, idx);
}

const char *l_checkstr(lua_State *L, int idx, const char *fname, const char *what)
{
  if (lua_type(L, idx) != LUA_TSTRING)
    l_error(L, fname, "%s must be a string (got %s)", what, luaL_typename(L, idx));
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (strlen(s) != len) /* C would read up to the zero: a path or a name cut short */
    l_error(L, fname, "%s must not contain a zero byte", what);
  return s;
}

int l_checkopts(lua_State *L, int idx, const char *fname, const char *const *allowed)
{
  if (lua_isnoneornil(L, idx)) return 0;
  if (!lua_istable(L, idx))
    l_error(L, fname, "options must be a table (got %s)", luaL_typename(L, idx));
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int ok = 0;
    if (lua_type(L, -2) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -2);
      for (int i = 0; allowed[i] && !ok; i++) ok = strcmp(k, allowed[i]) == 0;
      if (!ok) l_error(L, fname, "unknown option '%s'", k);
    } else {
      l_error(L, fname, "option names must be strings (got %s)", luaL_typename(L, -2));
    }
    lua_pop(L, 1);
  }
  return 1;
}

int l_getopt(lua_State *L, int idx, const char *key)
{
  if (!lua_istable(L, idx)) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  return lua_getfield(L, idx, key);
}

/* Lua's collector sees only the small userdata, not the tensor memory behind it, so a loop of
   large temporaries would pile up gigabytes before a collection. Every new tensor therefore
   advances the collector as if its bytes had been allocated by Lua (in steps of >= 1 MB). */
void l_gc_pressure(lua_State *L, int64_t bytes)
{
  static int64_t pending = 0;
  pending += bytes;
  if (pending >= (1 << 20)) {
    int kb = pending / 1024 > (1 << 30) ? 1 << 30 : (int)(pending / 1024);
    pending = 0;
    lua_gc(L, LUA_GCSTEP, kb);
  }
}

df_tensor *l_newtensor(lua_State *L)
{
  df_tensor *t = (df_tensor *)lua_newuserdatauv(L, sizeof(df_tensor), 1);
  memset(t, 0, sizeof *t); /* released until the caller allocates it */
  luaL_setmetatable(L, DF_TENSOR_MT);
  return t;
}

df_tensor *l_totensor(lua_State *L, int idx, const char *fname)
{
  df_tensor *t = (df_tensor *)luaL_testudata(L, idx, DF_TENSOR_MT);
  if (t && !df_is_live(t)) l_error(L, fname, "attempt to use a released tensor (argument %d)", idx);
  return t;
}

df_tensor *l_checktensor(lua_State *L, int idx, const char *fname, const char *what)
{
  df_tensor *t = (df_tensor *)luaL_testudata(L, idx, DF_TENSOR_MT);
  if (!t) l_error(L, fname, "%s must be a tensor (got %s)", what, luaL_typename(L, idx));
  if (!df_is_live(t)) l_error(L, fname, "attempt to use a released tensor (%s)", what);
  return t;
}

float *l_hostbuf(lua_State *L, int64_t n, const char *fname)
{
  if (n < 0 || (double)n * sizeof(float) > 1e12)
    l_error(L, fname, "host buffer of %lld floats is too large", (long long)n);
  return (float *)lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof(float), 0);
}

void l_class(lua_State *L, const char *mt, const luaL_Reg *meta, const luaL_Reg *methods,
             lua_CFunction index)
{
  luaL_newmetatable(L, mt);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_pushcclosure(L, index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

void l_parse_device(lua_State *L, const char *s, const char *fname, const df_backend **be,
                    int *dev)
{
  char name[32];
  const char *colon = strchr(s, ':');
  size_t len = colon ? (size_t)(colon - s) : strlen(s);
  if (len == 0 || len >= sizeof name) l_error(L, fname, "unknown device '%s'", s);
  memcpy(name, s, len);
  name[len] = '\0';
  *dev = 0;
  if (colon) {
    char *end = NULL;
    long d = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || d < 0 || d > 1024)
      l_error(L, fname, "bad device index in '%s'", s);
    *dev = (int)d;
  }
  *be = df_find_backend(name);
  if (*be == NULL && strcmp(name, "cuda") == 0) {
    /* the CUDA module loads on first need: diffuse's Lua side registered its loader */
    lua_getfield(L, LUA_REGISTRYINDEX, "diffuse.cuda_load");
    if (lua_isfunction(L, -1)) {
      lua_call(L, 0, 0);
      *be = df_find_backend(name);
    } else {
      lua_pop(L, 1);
    }
  }
  if (*be == NULL) {
    if (strcmp(name, "cuda") == 0) {
      /* the Lua side knows why CUDA is missing (not built, or no usable device) */
      lua_getfield(L, LUA_REGISTRYINDEX, "diffuse.cuda_error");
      const char *why = lua_tostring(L, -1);
      l_error(L, fname, "device 'cuda' is not available: %s",
              why ? why : "the diffuse.cuda module is not loaded");
    }
    l_error(L, fname, "unknown device '%s' (expected \"cpu\" or \"cuda[:N]\")", s);
  }
  int count = 0;
  if ((*be)->device_count(&count) != DF_OK) /* loaded, but no driver or no GPU */
    l_error(L, fname, "device '%s' is not available: %s", name, df_errmsg());
  if (*dev >= count)
    l_error(L, fname, "device %s:%d does not exist (%d available)", name, *dev, count);
}
