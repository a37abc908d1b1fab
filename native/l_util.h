/* l_util.h: argument checks shared by the binding files (l_*.c). Every error they raise names
 * the Lua function and the argument: "diffuse.tensor.zeros: size 1 must be an integer (got nan)". */
#ifndef DF_L_UTIL_H
#define DF_L_UTIL_H

#include <stdint.h>
#include <lua.h>
#include <lauxlib.h>
#include "tensor.h"

#define DF_TENSOR_MT "diffuse.tensor"

/* the modules are built with hidden visibility; only luaopen_* is exported */
#define DF_EXPORT __attribute__((visibility("default")))

/* raise "fname: message" */
int l_error(lua_State *L, const char *fname, const char *fmt, ...);
/* the text of the Lua error value at idx (may push a description: an error() with a table or
   nil has no text) */
const char *l_errtext(lua_State *L, int idx);
/* raise "fname: <core message>" if st is not DF_OK */
void l_check(lua_State *L, int st, const char *fname);

int64_t l_checkint(lua_State *L, int idx, const char *fname, const char *what);
int64_t l_optint(lua_State *L, int idx, int64_t def, const char *fname, const char *what);
double l_checknum(lua_State *L, int idx, const char *fname, const char *what);
double l_optnum(lua_State *L, int idx, double def, const char *fname, const char *what);
int l_optbool(lua_State *L, int idx, int def, const char *fname, const char *what);
const char *l_checkstr(lua_State *L, int idx, const char *fname, const char *what);

/* option tables: `idx` must be a table or nil, and hold only keys from `allowed` (NULL-ended) */
int l_checkopts(lua_State *L, int idx, const char *fname, const char *const *allowed);
/* pushes field `key` of the option table at idx (nil if idx is not a table) and returns its type */
int l_getopt(lua_State *L, int idx, const char *key);

/* tensors */
df_tensor *l_newtensor(lua_State *L);          /* push a released tensor userdata */
void l_gc_pressure(lua_State *L, int64_t bytes); /* account for memory Lua cannot see */
df_tensor *l_totensor(lua_State *L, int idx, const char *fname); /* NULL if not a tensor; raises if released */
df_tensor *l_checktensor(lua_State *L, int idx, const char *fname, const char *what);
/* a float32 host buffer owned by a userdata pushed on the stack (freed by the GC on errors) */
float *l_hostbuf(lua_State *L, int64_t n, const char *fname);

/* a userdata class: metatable `mt` with the metamethods `meta`, and __index a closure `index`
   whose upvalue is the table of `methods` (so index can serve fields before methods) */
void l_class(lua_State *L, const char *mt, const luaL_Reg *meta, const luaL_Reg *methods,
             lua_CFunction index);

/* the device named by a string: "cpu", "cuda", "cuda:1" */
void l_parse_device(lua_State *L, const char *s, const char *fname, const df_backend **be,
                    int *dev);

#endif
