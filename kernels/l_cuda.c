/* l_cuda.c: luaopen_diffuse_cuda, the Lua face of the CUDA backend (module diffuse.cuda).
 *
 * Loading registers the "cuda" backend table with the core through the df_core_api the core
 * publishes in the registry (key "diffuse.core.api"); from then on diffuse.set_device("cuda")
 * and x:to("cuda") reach it. Loading needs no GPU and no driver: the CUDA runtime is asked
 * nothing until a function below or a CUDA tensor needs it, and then a missing device is an
 * error ("no usable CUDA device: cudaGetDeviceCount -> ...") instead of a crash.
 *
 *   diffuse.cuda.available()        --> true | false, reason
 *   diffuse.cuda.device_count()     --> n (0, reason without a usable device)
 *   diffuse.cuda.empty_cache([dev]) -- cached blocks back to the driver (all devices by default)
 *   diffuse.cuda.memory_stats([dev]) --> table (the caching allocator's counters)
 *   diffuse.cuda.synchronize([dev]) -- wait for the device's queued work
 *   diffuse.cuda.device_properties([dev]) --> table: name, sm_count, clocks, and the FP32 and
 *                                             memory peaks they imply (for benchmarks)
 *   diffuse.cuda.graph_stats()      --> table: training graphs captured and launched, steps run
 *                                       without a graph (capture failed) and why
 * [dev] defaults to the current device when it is a CUDA device, else 0. */
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "status.h"
#include "backend.h"
#include "cuda_backend.h"

#define EXPORT __attribute__((visibility("default")))

static int fail(lua_State *L, const char *fname, const char *msg)
{
  return luaL_error(L, "%s: %s", fname, msg);
}

/* the device index argument at idx: an integer >= 0, or the current CUDA device when absent
   (upvalue 1 is diffuse.core.get_device) */
static int device_arg(lua_State *L, int idx, const char *fname)
{
  if (!lua_isnoneornil(L, idx)) {
    int isint = 0;
    lua_Integer d = lua_tointegerx(L, idx, &isint);
    if (!isint || lua_type(L, idx) != LUA_TNUMBER)
      return luaL_error(L, "%s: device must be an integer (got %s)", fname,
                        luaL_typename(L, idx));
    if (d < 0 || d > 1024)
      return luaL_error(L, "%s: device %d out of range", fname, (int)d);
    return (int)d;
  }
  int dev = 0;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_call(L, 0, 1);
  const char *s = lua_tostring(L, -1);
  if (s && strncmp(s, "cuda:", 5) == 0) dev = atoi(s + 5);
  lua_pop(L, 1);
  return dev;
}

/* diffuse.cuda.available() --> true | false, reason */
static int c_available(lua_State *L)
{
  int count = 0;
  if (df_cuda_device_count(&count) != DF_OK) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, df_cuda_last_error());
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* diffuse.cuda.device_count() --> n, or 0 and the reason */
static int c_device_count(lua_State *L)
{
  int count = 0;
  if (df_cuda_device_count(&count) != DF_OK) {
    lua_pushinteger(L, 0);
    lua_pushstring(L, df_cuda_last_error());
    return 2;
  }
  lua_pushinteger(L, count);
  return 1;
}

/* diffuse.cuda.empty_cache([dev]): every device when dev is absent */
static int c_empty_cache(lua_State *L)
{
  const char *fname = "diffuse.cuda.empty_cache";
  int dev = -1;
  if (!lua_isnoneornil(L, 1)) dev = device_arg(L, 1, fname);
  if (df_cuda_empty_cache(dev) != DF_OK) return fail(L, fname, df_cuda_last_error());
  return 0;
}

/* diffuse.cuda.memory_stats([dev]) --> { bytes_in_use, bytes_cached, ... } */
static int c_memory_stats(lua_State *L)
{
  const char *fname = "diffuse.cuda.memory_stats";
  int dev = device_arg(L, 1, fname);
  df_cuda_memstats st;
  df_cuda_memory_stats(dev, &st);
  lua_createtable(L, 0, 10);
#define FIELD(name)                                                                           \
  lua_pushinteger(L, (lua_Integer)st.name);                                                   \
  lua_setfield(L, -2, #name)
  FIELD(bytes_in_use);
  FIELD(bytes_cached);
  FIELD(peak_bytes_in_use);
  FIELD(blocks_in_use);
  FIELD(blocks_cached);
  FIELD(alloc_calls);
  FIELD(cache_hits);
  FIELD(cuda_malloc_calls);
  FIELD(cuda_free_calls);
#undef FIELD
  lua_pushinteger(L, dev);
  lua_setfield(L, -2, "device");
  return 1;
}

/* diffuse.cuda.synchronize([dev]) */
static int c_synchronize(lua_State *L)
{
  const char *fname = "diffuse.cuda.synchronize";
  int dev = device_arg(L, 1, fname);
  int count = 0;
  if (df_cuda_device_count(&count) != DF_OK) return fail(L, fname, df_cuda_last_error());
  if (dev >= count)
    return luaL_error(L, "%s: device cuda:%d does not exist (%d available)", fname, dev, count);
  if (df_cuda_synchronize(dev) != DF_OK) return fail(L, fname, df_cuda_last_error());
  return 0;
}

/* diffuse.cuda.device_properties([dev]) --> { name, cc, sm_count, clock_mhz, ... } */
static int c_device_properties(lua_State *L)
{
  const char *fname = "diffuse.cuda.device_properties";
  int dev = device_arg(L, 1, fname);
  int count = 0;
  if (df_cuda_device_count(&count) != DF_OK) return fail(L, fname, df_cuda_last_error());
  if (dev >= count)
    return luaL_error(L, "%s: device cuda:%d does not exist (%d available)", fname, dev, count);
  df_cuda_props p;
  if (df_cuda_device_props(dev, &p) != DF_OK) return fail(L, fname, df_cuda_last_error());
  lua_createtable(L, 0, 12);
  lua_pushstring(L, p.name);
  lua_setfield(L, -2, "name");
  lua_pushfstring(L, "%d.%d", p.cc_major, p.cc_minor);
  lua_setfield(L, -2, "compute_capability");
#define IFIELD(key, val)                                                                      \
  lua_pushinteger(L, (lua_Integer)(val));                                                     \
  lua_setfield(L, -2, key)
  IFIELD("sm_count", p.sm_count);
  IFIELD("fp32_lanes_per_sm", p.fp32_lanes_per_sm);
  IFIELD("bus_width_bits", p.bus_width_bits);
  IFIELD("total_memory", p.total_mem);
  IFIELD("device", dev);
#undef IFIELD
  lua_pushnumber(L, p.clock_khz / 1e3);
  lua_setfield(L, -2, "clock_mhz");
  lua_pushnumber(L, p.mem_clock_khz / 1e3);
  lua_setfield(L, -2, "memory_clock_mhz");
  lua_pushnumber(L, p.peak_fp32_flops);
  lua_setfield(L, -2, "peak_fp32_flops");
  lua_pushnumber(L, p.peak_mem_bytes);
  lua_setfield(L, -2, "nominal_memory_bandwidth");
  return 1;
}

/* diffuse.cuda.graph_stats() --> { captures, launches, fallback_steps, last_failure } */
static int c_graph_stats(lua_State *L)
{
  df_cuda_graphstats st;
  df_cuda_graph_stats(&st);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)st.captures);
  lua_setfield(L, -2, "captures");
  lua_pushinteger(L, (lua_Integer)st.launches);
  lua_setfield(L, -2, "launches");
  lua_pushinteger(L, (lua_Integer)st.fallback_steps);
  lua_setfield(L, -2, "fallback_steps");
  if (st.last_failure[0]) {
    lua_pushstring(L, st.last_failure);
    lua_setfield(L, -2, "last_failure");
  }
  return 1;
}

static const luaL_Reg funcs[] = {
  { "available", c_available }, { "device_count", c_device_count },
  { "empty_cache", c_empty_cache }, { "memory_stats", c_memory_stats },
  { "synchronize", c_synchronize }, { "device_properties", c_device_properties },
  { "graph_stats", c_graph_stats }, { NULL, NULL }
};

EXPORT int luaopen_diffuse_cuda(lua_State *L)
{
  /* the core first: it publishes the registry key */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "diffuse.core");
  lua_call(L, 1, 1);
  if (!lua_istable(L, -1))
    return luaL_error(L, "diffuse.cuda: require 'diffuse.core' did not return the core module");
  lua_getfield(L, LUA_REGISTRYINDEX, "diffuse.core.api");
  const df_core_api *api = (const df_core_api *)lua_touserdata(L, -1);
  if (!lua_islightuserdata(L, -1) || api == NULL)
    return luaL_error(L, "diffuse.cuda: the core did not publish its API "
                         "(registry key 'diffuse.core.api')");
  if (api->abi != DF_CORE_ABI)
    return luaL_error(L, "diffuse.cuda: built for core ABI %d, but the loaded core has ABI %d "
                         "(rebuild both)", DF_CORE_ABI, api->abi);
  lua_pop(L, 1);
  df_cuda_set_fail(api->fail);
  if (api->register_backend(&df_cuda_backend) != DF_OK)
    return luaL_error(L, "diffuse.cuda: the core refused the cuda backend");
  lua_getfield(L, -1, "get_device");
  if (!lua_isfunction(L, -1))
    return luaL_error(L, "diffuse.cuda: the core module has no get_device");
  luaL_newlibtable(L, funcs);
  lua_insert(L, -2);
  luaL_setfuncs(L, funcs, 1); /* upvalue: diffuse.core.get_device */
  return 1;
}
