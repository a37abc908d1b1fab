/* l_diffusion.h: the diffuser and score-source userdata, shared with the binding files that
 * make more score sources (the network score, l_nn.c). */
#ifndef DF_L_DIFFUSION_H
#define DF_L_DIFFUSION_H

#include "l_util.h"
#include "diffusion.h"

#define DF_DIFFUSER_MT "diffuse.diffuser"
#define DF_SCORE_MT "diffuse.score"
#define DF_SAMPLER_MT "diffuse.sampler"

/* a score source; user value 1 keeps whatever src.ctx points into alive (a network) */
typedef struct l_score {
  df_score_src src;
  float *mixbuf;          /* a mixture's parameters (owned) */
  const char *kind_name;  /* for callbacks: "net", ... */
  void *owned;            /* a callback's context (malloc'd, freed with the source) */
  void (*release_owned)(void *owned); /* what the context holds besides itself (or NULL) */
  int live;               /* 0 once finalised: __gc is reachable through getmetatable */
  /* optional, for callbacks with densities of their own (the groups'): log p_t at x (t one time
     t0, or t one per row) and n draws at time t0 */
  int (*log_density)(void *owned, df_tensor *out, const df_tensor *x, const df_tensor *t, double t0);
  int (*sample)(void *owned, df_tensor *out, int64_t n, double t0);
} l_score;

df_diffuser *l_checkdiffuser(lua_State *L, int idx, const char *fname, const char *what);
l_score *l_checkscore(lua_State *L, int idx, const char *fname, const char *what);
void l_open_diffusion(lua_State *L);

#endif
