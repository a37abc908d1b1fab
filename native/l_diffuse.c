/* l_diffuse.c: luaopen_diffuse_core, the native module behind `require "diffuse"`: devices,
 * seeds, the summary line, and the hook through which diffuse.cuda registers its backend.
 * Each userdata type has its own binding file (l_tensor.c, ...). */
#define _POSIX_C_SOURCE 200112L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <omp.h>
#include "l_util.h"
#include "status.h"
#include "dmath.h"
#include "l_diffusion.h"

int l_open_tensor(lua_State *L);
void l_open_nn(lua_State *L);
void l_open_group(lua_State *L);

/* diffuse.seed([n]): set the seed of all random streams (and restart them); without n, pick
   one from the clock. Returns the seed. */
static int d_seed(lua_State *L)
{
  const char *fname = "diffuse.seed";
  uint64_t seed;
  if (lua_isnoneornil(L, 1)) seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
  else seed = (uint64_t)l_checkint(L, 1, fname, "seed");
  df_rng_seed(seed);
  lua_pushinteger(L, (lua_Integer)seed);
  return 1;
}

/* diffuse.rng_state() --> seed, stream; diffuse.set_rng_state(seed, stream): for resuming */
static int d_rng_state(lua_State *L)
{
  uint64_t seed, stream;
  df_rng_state(&seed, &stream);
  lua_pushinteger(L, (lua_Integer)seed);
  lua_pushinteger(L, (lua_Integer)stream);
  return 2;
}

static int d_set_rng_state(lua_State *L)
{
  const char *fname = "diffuse.set_rng_state";
  uint64_t seed = (uint64_t)l_checkint(L, 1, fname, "seed");
  /* the 64-bit counter's bits, as rng_state gives them (negative past 2^63, like a seed) */
  uint64_t stream = (uint64_t)l_checkint(L, 2, fname, "stream");
  df_rng_set_state(seed, stream);
  return 0;
}

/* diffuse.set_device("cuda", 0) | set_device("cuda:1") | set_device("cpu") */
static int d_set_device(lua_State *L)
{
  const char *fname = "diffuse.set_device";
  const char *name = l_checkstr(L, 1, fname, "device");
  const df_backend *be;
  int dev;
  if (!lua_isnoneornil(L, 2)) {
    int64_t idx = l_checkint(L, 2, fname, "index");
    if (strchr(name, ':')) l_error(L, fname, "give the index either in the name or as argument 2");
    if (idx < 0 || idx > 1024) l_error(L, fname, "index %lld out of range", (long long)idx);
    lua_pushfstring(L, "%s:%d", name, (int)idx);
    name = lua_tostring(L, -1);
  }
  l_parse_device(L, name, fname, &be, &dev);
  l_check(L, df_set_current_device(be, dev), fname);
  return 0;
}

static int d_get_device(lua_State *L)
{
  const df_backend *be;
  int dev;
  char buf[32];
  df_current_device(&be, &dev);
  lua_pushstring(L, df_device_str(be, dev, buf, sizeof buf));
  return 1;
}

/* "Using device: cuda:0 (NVIDIA H200) with dtype: float32" */
static int d_summary(lua_State *L)
{
  const df_backend *be;
  int dev;
  char buf[32], name[256];
  df_current_device(&be, &dev);
  l_check(L, be->device_name(dev, name, sizeof name), "diffuse.summary");
  lua_pushfstring(L, "Using device: %s (%s) with dtype: float32",
                  df_device_str(be, dev, buf, sizeof buf), name);
  return 1;
}

/* diffuse.core.philox({c0, c1, c2, c3}, {k0, k1}) --> {r0, r1, r2, r3}: the raw generator,
   for the known-answer tests */
static int d_philox(lua_State *L)
{
  const char *fname = "diffuse.core.philox";
  uint32_t ctr[4], key[2], out[4];
  if (!lua_istable(L, 1)) l_error(L, fname, "counter must be a table of 4 words (got %s)", luaL_typename(L, 1));
  if (!lua_istable(L, 2)) l_error(L, fname, "key must be a table of 2 words (got %s)", luaL_typename(L, 2));
  for (int i = 0; i < 6; i++) { /* 32-bit words: anything else would wrap silently */
    lua_rawgeti(L, i < 4 ? 1 : 2, i < 4 ? i + 1 : i - 3);
    int64_t v = l_checkint(L, -1, fname, i < 4 ? "counter word" : "key word");
    if (v < 0 || v > 0xffffffffLL)
      l_error(L, fname, "%s %d must be in 0..2^32-1 (got %lld)", i < 4 ? "counter word" : "key word",
              i < 4 ? i + 1 : i - 3, (long long)v);
    if (i < 4) ctr[i] = (uint32_t)v;
    else key[i - 4] = (uint32_t)v;
    lua_pop(L, 1);
  }
  df_philox4x32_10(ctr, key, out);
  lua_createtable(L, 4, 0);
  for (int i = 0; i < 4; i++) {
    lua_pushinteger(L, (lua_Integer)out[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* diffuse.core.isatty(fd): whether stdout (1) or stderr (2) is a terminal (progress bars) */
static int d_isatty(lua_State *L)
{
  int64_t fd = l_checkint(L, 1, "diffuse.core.isatty", "fd");
  lua_pushboolean(L, fd >= 0 && fd <= 2 && isatty((int)fd));
  return 1;
}

/* diffuse.core.clock(): monotonic wall-clock seconds (progress bars, benchmarks) */
static int d_clock(lua_State *L)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + 1e-9 * (lua_Number)ts.tv_nsec);
  return 1;
}

/* diffuse.set_threads(n) / diffuse.get_threads(): CPU threads for large operations. Results do
   not depend on the count: work is split the same way whatever runs it. */
static int d_set_threads(lua_State *L)
{
  const char *fname = "diffuse.set_threads";
  int64_t n = l_checkint(L, 1, fname, "n");
  if (n < 1 || n > 1024) l_error(L, fname, "n must be between 1 and 1024 (got %lld)", (long long)n);
  omp_set_num_threads((int)n);
  return 0;
}

static int d_get_threads(lua_State *L)
{
  lua_pushinteger(L, omp_get_max_threads());
  return 1;
}

static int core_register(const df_backend *be) { return df_register_backend(be); }

static const df_core_api core_api = { DF_CORE_ABI, core_register, df_fail };

static const luaL_Reg funcs[] = {
  { "seed", d_seed }, { "rng_state", d_rng_state }, { "set_rng_state", d_set_rng_state },
  { "set_device", d_set_device }, { "get_device", d_get_device }, { "summary", d_summary },
  { "philox", d_philox }, { "isatty", d_isatty },
  { "clock", d_clock }, { "set_threads", d_set_threads }, { "get_threads", d_get_threads },
  { NULL, NULL }
};

DF_EXPORT int luaopen_diffuse_core(lua_State *L)
{
  /* one CPU thread unless asked (DIFFUSE_THREADS, OMP_NUM_THREADS or diffuse.set_threads):
     OpenMP threads spin at each join, and on a machine whose other cores are busy a small
     parallel step then waits for a descheduled thread, which costs far more than it saves */
  const char *env = getenv("DIFFUSE_THREADS");
  if (env && atoi(env) >= 1 && atoi(env) <= 1024) omp_set_num_threads(atoi(env));
  else if (!getenv("OMP_NUM_THREADS")) omp_set_num_threads(1);
  /* what a backend module (diffuse.cuda) needs to register itself */
  lua_pushlightuserdata(L, (void *)&core_api);
  lua_setfield(L, LUA_REGISTRYINDEX, "diffuse.core.api");
  luaL_newlib(L, funcs);
  l_open_tensor(L);
  lua_setfield(L, -2, "tensor");
  l_open_diffusion(L);
  l_open_nn(L);
  l_open_group(L);
  lua_pushinteger(L, DF_CORE_ABI);
  lua_setfield(L, -2, "abi");
  return 1;
}
