/* l_nn.c: the Lua face of the networks: diffuse.nn (mlp, time_embedded, load), the network
 * userdata, diffuse.optim.adam, diffuse.loss.dsm, diffuse.score.net and the native training
 * loop behind diffuse.train (core.train; init.lua adds the progress bar and option checks). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "l_util.h"
#include "l_diffusion.h"
#include "status.h"
#include "nn.h"
#include "group.h"
#include "graph.h"

#define DF_NET_MT "diffuse.net"
#define DF_OPTIM_MT "diffuse.optim"

static const char *const act_names[] = { "silu", "relu", "tanh", "gelu", NULL };

/* ---- the network userdata ------------------------------------------------------------------ */

static df_net *check_net(lua_State *L, int idx, const char *fname, const char *what)
{
  df_net *n = (df_net *)luaL_testudata(L, idx, DF_NET_MT);
  if (!n) l_error(L, fname, "%s must be a network (got %s)", what, luaL_typename(L, idx));
  if (!n->live) l_error(L, fname, "attempt to use a released network");
  return n;
}

static df_net *new_net(lua_State *L)
{
  df_net *n = (df_net *)lua_newuserdatauv(L, sizeof *n, 0);
  memset(n, 0, sizeof *n); /* released until created */
  luaL_setmetatable(L, DF_NET_MT);
  return n;
}

static int opt_act(lua_State *L, int opts, const char *fname)
{
  lua_getfield(L, opts, "activation");
  const char *a = lua_isnil(L, -1) ? "silu" : l_checkstr(L, -1, fname, "activation");
  lua_pop(L, 1);
  for (int i = 0; act_names[i]; i++)
    if (strcmp(a, act_names[i]) == 0) return i;
  return l_error(L, fname, "unknown activation '%s' (silu, relu, tanh or gelu)", a);
}

static int opt_int(lua_State *L, int opts, const char *key, int64_t def, const char *fname)
{
  lua_getfield(L, opts, key);
  int64_t v = l_optint(L, -1, def, fname, key);
  lua_pop(L, 1);
  if (v < -2147483647 || v > 2147483647) l_error(L, fname, "%s is out of range", key);
  return (int)v;
}

/* output = 'scaled' | 'score' | 'noise' | 'denoiser' of an options table */
static int opt_output(lua_State *L, int opts, const char *fname)
{
  l_getopt(L, opts, "output");
  const char *o = lua_isnil(L, -1) ? "scaled" : l_checkstr(L, -1, fname, "output");
  lua_pop(L, 1);
  for (int i = 0; df_output_names[i]; i++)
    if (strcmp(o, df_output_names[i]) == 0) return i;
  return l_error(L, fname, "output must be 'scaled', 'score', 'noise' or 'denoiser' (got '%s')", o);
}

static void place_net(lua_State *L, const df_netdesc *d, double scale, int output, const char *fname)
{
  const df_backend *be;
  int dev;
  df_current_device(&be, &dev);
  df_net *n = new_net(L);
  l_check(L, df_net_create(n, d, scale, be, dev), fname);
  n->output = output;
}

/* diffuse.nn.mlp{dim = 1, hidden = {8, 8, 8}, activation = "silu"}: Linear(dim+1, h1) act ...
   Linear(hn, dim) on concat[x, t] */
static int nn_mlp(lua_State *L)
{
  const char *fname = "diffuse.nn.mlp";
  static const char *const opts[] = { "dim", "hidden", "activation", "output", NULL };
  if (!lua_istable(L, 1)) l_error(L, fname, "expected {dim = ..., hidden = {...}, activation = ...}");
  l_checkopts(L, 1, fname, opts);
  int dim = opt_int(L, 1, "dim", 1, fname), act = opt_act(L, 1, fname);
  int64_t hidden[DF_MAXLIN];
  int nh = 0;
  lua_getfield(L, 1, "hidden");
  if (lua_isnil(L, -1)) {
    nh = 3;
    hidden[0] = hidden[1] = hidden[2] = 8; /* the seed's score net */
  } else {
    if (!lua_istable(L, -1)) l_error(L, fname, "hidden must be a list of layer widths");
    lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
    if (len < 1 || len > DF_MAXLIN - 1)
      l_error(L, fname, "hidden must list 1 to %d layer widths (got %lld)", DF_MAXLIN - 1, (long long)len);
    for (int i = 1; i <= (int)len; i++) {
      lua_rawgeti(L, -1, i);
      hidden[nh++] = l_checkint(L, -1, fname, "hidden width");
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  df_netdesc d;
  int output = opt_output(L, 1, fname);
  l_check(L, df_netdesc_mlp(&d, dim, nh, hidden, act), fname);
  place_net(L, &d, 1.0, output, fname);
  return 1;
}

/* diffuse.nn.time_embedded{dim = 1, hidden = 8, embed = 256, scale = 30} */
static int nn_temb(lua_State *L)
{
  const char *fname = "diffuse.nn.time_embedded";
  static const char *const opts[] = { "dim", "hidden", "embed", "scale", "activation", "output",
                                      NULL };
  if (!lua_istable(L, 1)) l_error(L, fname, "expected {dim = ..., hidden = ..., embed = ..., scale = ...}");
  l_checkopts(L, 1, fname, opts);
  int dim = opt_int(L, 1, "dim", 1, fname), hidden = opt_int(L, 1, "hidden", 8, fname),
      embed = opt_int(L, 1, "embed", 256, fname), act = opt_act(L, 1, fname);
  lua_getfield(L, 1, "scale");
  double scale = l_optnum(L, -1, 30.0, fname, "scale");
  lua_pop(L, 1);
  df_netdesc d;
  int output = opt_output(L, 1, fname);
  l_check(L, df_netdesc_temb(&d, dim, hidden, embed, act), fname);
  place_net(L, &d, scale, output, fname);
  return 1;
}

/* diffuse.nn.from_graph(text [, {output = ...}]): a network from a graph's text (net.graph, or
   what the builder behind diffuse.nn.net in lua/diffuse/graph.lua hands over), checked
   completely here; new parameters from the current random streams */
static int nn_from_graph(lua_State *L)
{
  const char *fname = "diffuse.nn.from_graph";
  static const char *const opts[] = { "output", NULL };
  const char *text = l_checkstr(L, 1, fname, "graph");
  l_checkopts(L, 2, fname, opts);
  int output = opt_output(L, 2, fname);
  const df_backend *be;
  int dev;
  df_current_device(&be, &dev);
  df_net *n = new_net(L); /* (first: a failure below leaks nothing) */
  df_graph *g = NULL;
  l_check(L, df_graph_parse(text, &g), fname);
  df_netdesc d;
  df_netdesc_graph(&d, g);
  int st = df_net_create(n, &d, 1.0, be, dev);
  df_graph_release(g); /* the net holds its own reference */
  l_check(L, st, fname);
  n->output = output;
  return 1;
}

/* t for a network: a number, or a tensor of one time per row */
static df_tensor *net_time(lua_State *L, int idx, const char *fname, double *t0)
{
  if (lua_type(L, idx) == LUA_TNUMBER) {
    *t0 = lua_tonumber(L, idx);
    if (!isfinite(*t0)) l_error(L, fname, "t must be finite (got %g)", *t0);
    return NULL;
  }
  return l_checktensor(L, idx, fname, "t");
}

static int net_forward(lua_State *L)
{
  const char *fname = "diffuse.net.forward";
  df_net *n = check_net(L, 1, fname, "self");
  df_tensor *x = l_checktensor(L, 2, fname, "x");
  double t0 = 0.0;
  df_tensor *t = net_time(L, 3, fname, &t0);
  df_tensor *out = l_newtensor(L);
  l_check(L, df_net_forward(n, out, x, t, t0, 1), fname);
  l_gc_pressure(L, out->numel * 4);
  return 1;
}

static int net_backward(lua_State *L)
{
  const char *fname = "diffuse.net.backward";
  df_net *n = check_net(L, 1, fname, "self");
  l_check(L, df_net_backward(n, l_checktensor(L, 2, fname, "grad_out")), fname);
  return 0;
}

static int net_zero_grad(lua_State *L)
{
  const char *fname = "diffuse.net.zero_grad";
  l_check(L, df_net_zero_grad(check_net(L, 1, fname, "self")), fname);
  return 0;
}

static int net_num_parameters(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)check_net(L, 1, "diffuse.net.num_parameters", "self")->d.nparams);
  return 1;
}

static int net_to(lua_State *L)
{
  const char *fname = "diffuse.net.to";
  df_net *n = check_net(L, 1, fname, "self");
  const df_backend *be;
  int dev;
  l_parse_device(L, l_checkstr(L, 2, fname, "device"), fname, &be, &dev);
  l_check(L, df_net_to(n, be, dev), fname);
  lua_settop(L, 1);
  return 1;
}

static int net_get(lua_State *L, int which, const char *fname)
{
  df_net *n = check_net(L, 1, fname, "self");
  df_tensor *out = l_newtensor(L);
  l_check(L, df_net_get(n, which, out), fname);
  return 1;
}

static int net_parameters(lua_State *L) { return net_get(L, DF_PARAMS, "diffuse.net.parameters"); }
static int net_gradients(lua_State *L) { return net_get(L, DF_GRADS, "diffuse.net.gradients"); }

/* the time-embedded net's fixed Fourier frequencies W */
static int net_frequencies(lua_State *L)
{
  const char *fname = "diffuse.net.frequencies";
  const df_net *n = check_net(L, 1, fname, "self");
  if (n->d.nfixed == 0)
    l_error(L, fname, "this network has no Fourier frequencies (nn.time_embedded, or nn.fourier in "
            "an nn.net)");
  return net_get(L, DF_FIXED, fname);
}

static int net_set_parameters(lua_State *L)
{
  const char *fname = "diffuse.net.set_parameters";
  df_net *n = check_net(L, 1, fname, "self");
  l_check(L, df_net_set(n, DF_PARAMS, l_checktensor(L, 2, fname, "values")), fname);
  lua_settop(L, 1);
  return 1;
}

/* net:set_gradients(values): the gradient buffer (custom losses, manual clipping) */
static int net_set_gradients(lua_State *L)
{
  const char *fname = "diffuse.net.set_gradients";
  df_net *n = check_net(L, 1, fname, "self");
  l_check(L, df_net_set(n, DF_GRADS, l_checktensor(L, 2, fname, "values")), fname);
  lua_settop(L, 1);
  return 1;
}

static df_adam *check_optim(lua_State *L, int idx, const char *fname, const char *what);
static df_net *optim_ema(lua_State *L, int idx);

/* net:save(path [, optimizer]): the network, its optimizer's state, and the random streams */
static int net_save(lua_State *L)
{
  const char *fname = "diffuse.net.save";
  df_net *n = check_net(L, 1, fname, "self");
  const char *path = l_checkstr(L, 2, fname, "path");
  df_adam *o = lua_isnoneornil(L, 3) ? NULL : check_optim(L, 3, fname, "optimizer");
  if (o) { /* (an optimizer of another net of the same size would load as this one's) */
    lua_getiuservalue(L, 3, 1);
    if (lua_touserdata(L, -1) != (void *)n)
      l_error(L, fname, "the optimizer does not belong to this network");
    lua_pop(L, 1);
  }
  uint64_t seed, stream;
  df_rng_state(&seed, &stream);
  l_check(L, df_save(path, n, o, o ? optim_ema(L, 3) : NULL, seed, stream), fname);
  return 0;
}

static int net_release(lua_State *L)
{
  df_net *n = (df_net *)luaL_checkudata(L, 1, DF_NET_MT);
  df_net_release(n);
  return 0;
}

static void push_arch(lua_State *L, const df_net *n, char *buf, size_t len)
{
  const df_netdesc *d = &n->d;
  int pos;
  if (d->kind == DF_NET_GRAPH) {
    snprintf(buf, len, "diffuse.nn.net{dim = %d, output = '%s'}", d->dim, df_output_names[n->output]);
  } else if (d->kind == DF_NET_MLP) {
    pos = snprintf(buf, len, "diffuse.nn.mlp{dim = %d, hidden = {", d->dim);
    for (int l = 0; l + 1 < d->nlin && pos < (int)len; l++)
      pos += snprintf(buf + pos, len - (size_t)pos, l ? ", %d" : "%d", d->out[l]);
    snprintf(buf + pos, len - (size_t)pos, "}, activation = \"%s\"}", act_names[d->act]);
  } else {
    snprintf(buf, len, "diffuse.nn.time_embedded{dim = %d, hidden = %d, embed = %d, scale = %g, "
             "activation = \"%s\"}", d->dim, d->out[0], d->embed, n->scale, act_names[d->act]);
  }
  lua_pushstring(L, buf);
}

/* a graph's nodes, one line each: what it computes from which nodes, its shape, its parameters */
static void graph_lines(luaL_Buffer *b, const df_graph *g)
{
  char what[160], line[256];
  unsigned char seen[DF_GRAPH_MAXNODES]; /* layers applied so far (a second application shares) */
  memset(seen, 0, sizeof seen);
  for (int i = 0; i < g->nnodes; i++) {
    const df_gnode *n = &g->nodes[i];
    const char *op = df_graph_op_names[n->op];
    int64_t np = 0;
    switch (n->op) {
    case DF_G_X: case DF_G_T: snprintf(what, sizeof what, "%s", op); break;
    case DF_G_LINEAR: {
      const df_glayer *Ly = &g->layers[n->layer];
      int again = seen[n->layer];
      seen[n->layer] = 1;
      if (!again) np = (int64_t)Ly->in * Ly->out + (Ly->bias ? Ly->out : 0);
      snprintf(what, sizeof what, "linear %d (%d): %d -> %d%s%s", n->layer + 1, n->a + 1, Ly->in,
               Ly->out, Ly->bias ? "" : ", no bias", again ? ", shared" : "");
      break;
    }
    case DF_G_CAT: {
      int pos = snprintf(what, sizeof what, "cat(");
      for (int k = 0; k < n->ncat && pos < (int)sizeof what - 8; k++)
        pos += snprintf(what + pos, sizeof what - (size_t)pos, k ? ", %d" : "%d", g->cat[n->cat0 + k] + 1);
      snprintf(what + pos, sizeof what - (size_t)pos, ")");
      break;
    }
    case DF_G_ADD: case DF_G_SUB: case DF_G_MUL:
      snprintf(what, sizeof what, "(%d) %s (%d)", n->a + 1,
               n->op == DF_G_ADD ? "+" : n->op == DF_G_SUB ? "-" : "*", n->b + 1);
      break;
    case DF_G_ADDC: snprintf(what, sizeof what, "(%d) + %.9g", n->a + 1, (double)n->c); break;
    case DF_G_MULC: snprintf(what, sizeof what, "(%d) * %.9g", n->a + 1, (double)n->c); break;
    case DF_G_RSUBC: snprintf(what, sizeof what, "%.9g - (%d)", (double)n->c, n->a + 1); break;
    case DF_G_DIVC: snprintf(what, sizeof what, "(%d) / %.9g", n->a + 1, (double)n->c); break;
    case DF_G_FOURIER:
      if (n->gauss)
        snprintf(what, sizeof what, "fourier(%d): [sin, cos](2 pi u W), %d W ~ N(0, %g^2), fixed",
                 n->a + 1, n->nfreq, n->scale);
      else
        snprintf(what, sizeof what, "fourier(%d): [sin, cos](w u), %d given w", n->a + 1, n->nfreq);
      break;
    case DF_G_COL: snprintf(what, sizeof what, "col(%d, %d)", n->a + 1, n->col + 1); break;
    default: snprintf(what, sizeof what, "%s(%d)", op, n->a + 1); break;
    }
    char id[16], shape[32], params[48] = "";
    snprintf(id, sizeof id, "(%d)", i + 1);
    snprintf(shape, sizeof shape, "[B, %d]", n->width);
    if (np) snprintf(params, sizeof params, "%lld parameters", (long long)np);
    const char *note = i == g->out ? "output" : !n->live && i > 1 ? "(unused)" : "";
    int len = snprintf(line, sizeof line, "  %6s %-46s %-9s %-8s %s", id, what, shape, note, params);
    while (len > 0 && line[len - 1] == ' ') line[--len] = '\0'; /* (no trailing blanks) */
    luaL_addstring(b, line);
    luaL_addstring(b, "\n");
  }
}

/* print(net): layers, shapes, parameter count */
static int net_tostring(lua_State *L)
{
  df_net *n = (df_net *)luaL_checkudata(L, 1, DF_NET_MT);
  char buf[512], dev[32];
  if (!n->live) {
    lua_pushstring(L, "diffuse.net (released)");
    return 1;
  }
  const df_netdesc *d = &n->d;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  push_arch(L, n, buf, sizeof buf);
  luaL_addvalue(&b);
  lua_pushfstring(L, "  on %s\n", df_device_str(n->be, n->dev, dev, sizeof dev));
  luaL_addvalue(&b);
  const char *act = act_names[d->act];
  char line[256];
  if (d->kind == DF_NET_GRAPH) {
    graph_lines(&b, d->graph);
  } else if (d->kind == DF_NET_MLP) {
    snprintf(line, sizeof line, "  (0) concat[x, t]                [B, %d] -> [B, %d]\n", d->dim, d->dim + 1);
    luaL_addstring(&b, line);
    for (int l = 0; l < d->nlin; l++) {
      char layer[64];
      snprintf(layer, sizeof layer, "Linear(%d, %d)%s%s", d->in[l], d->out[l],
               l + 1 < d->nlin ? " -> " : "", l + 1 < d->nlin ? act : "");
      snprintf(line, sizeof line, "  (%d) %-26s %lld parameters\n", l + 1, layer,
               (long long)d->in[l] * d->out[l] + d->out[l]);
      luaL_addstring(&b, line);
    }
  } else {
    snprintf(line, sizeof line, "  (1) time: Fourier features [sin, cos](2 pi t W), %d fixed W ~ N(0, %g^2)"
             "   [B] -> [B, %d]\n", d->embed / 2, n->scale, d->embed);
    luaL_addstring(&b, line);
    snprintf(line, sizeof line, "  (2) time: Linear(%d, %d) -> %s   %lld parameters\n", d->embed, d->out[0],
             act, (long long)d->in[0] * d->out[0] + d->out[0]);
    luaL_addstring(&b, line);
    snprintf(line, sizeof line, "  (3) x: Linear(%d, %d)            %lld parameters\n", d->dim, d->out[1],
             (long long)d->in[1] * d->out[1] + d->out[1]);
    luaL_addstring(&b, line);
    snprintf(line, sizeof line, "  (4) (2) + (3) -> %s -> Linear(%d, %d)   %lld parameters\n", act,
             d->in[2], d->out[2], (long long)d->in[2] * d->out[2] + d->out[2]);
    luaL_addstring(&b, line);
  }
  lua_pushfstring(L, "  %d trainable parameters", (int)d->nparams);
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  return 1;
}

static int net_index(lua_State *L)
{
  df_net *n = check_net(L, 1, "diffuse.net", "self");
  const char *k = lua_tostring(L, 2);
  char dev[32];
  if (k && strcmp(k, "kind") == 0)
    lua_pushstring(L, n->d.kind == DF_NET_MLP ? "mlp" : n->d.kind == DF_NET_TEMB ? "time_embedded" : "net");
  else if (k && strcmp(k, "dim") == 0) lua_pushinteger(L, n->d.dim);
  else if (k && strcmp(k, "output") == 0) lua_pushstring(L, df_output_names[n->output]);
  else if (k && strcmp(k, "graph") == 0 && n->d.kind == DF_NET_GRAPH) lua_pushstring(L, n->d.graph->text);
  else if (k && strcmp(k, "activation") == 0 && n->d.kind != DF_NET_GRAPH) lua_pushstring(L, act_names[n->d.act]);
  else if (k && strcmp(k, "device") == 0) lua_pushstring(L, df_device_str(n->be, n->dev, dev, sizeof dev));
  else {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
  }
  return 1;
}

/* ---- Adam ----------------------------------------------------------------------------------- */

/* the optimizer userdata; user value 1 is its network */
static df_adam *check_optim(lua_State *L, int idx, const char *fname, const char *what)
{
  df_adam *o = (df_adam *)luaL_testudata(L, idx, DF_OPTIM_MT);
  if (!o) l_error(L, fname, "%s must be an optimizer (got %s)", what, luaL_typename(L, idx));
  if (!o->live) l_error(L, fname, "attempt to use a released optimizer");
  return o;
}

/* the optimizer userdata: user value 1 is its network, 2 the EMA of the weights (if any) */
static df_adam *new_optim(lua_State *L, int net_idx)
{
  df_adam *o = (df_adam *)lua_newuserdatauv(L, sizeof *o, 2);
  memset(o, 0, sizeof *o);
  luaL_setmetatable(L, DF_OPTIM_MT);
  lua_pushvalue(L, net_idx);
  lua_setiuservalue(L, -2, 1);
  return o;
}

static double opt_num(lua_State *L, int opts, const char *key, double def, const char *fname)
{
  l_getopt(L, opts, key);
  double v = l_optnum(L, -1, def, fname, key);
  lua_pop(L, 1);
  return v;
}

/* diffuse.optim.adam(net, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 0}) */
static int optim_adam(lua_State *L)
{
  const char *fname = "diffuse.optim.adam";
  static const char *const opts[] = { "lr", "betas", "eps", "weight_decay", NULL };
  df_net *n = check_net(L, 1, fname, "net");
  l_checkopts(L, 2, fname, opts);
  double lr = opt_num(L, 2, "lr", 1e-3, fname), eps = opt_num(L, 2, "eps", 1e-8, fname),
         wd = opt_num(L, 2, "weight_decay", 0.0, fname), b1 = 0.9, b2 = 0.999;
  if (l_getopt(L, 2, "betas") != LUA_TNIL) {
    if (!lua_istable(L, -1) || lua_rawlen(L, -1) != 2) l_error(L, fname, "betas must be {beta1, beta2}");
    lua_rawgeti(L, -1, 1);
    b1 = l_checknum(L, -1, fname, "beta1");
    lua_rawgeti(L, -2, 2);
    b2 = l_checknum(L, -1, fname, "beta2");
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  df_adam *o = new_optim(L, 1);
  l_check(L, df_adam_create(o, n, lr, b1, b2, eps, wd), fname);
  return 1;
}

/* the optimizer's EMA network (user value 2), live, or NULL */
static df_net *optim_ema(lua_State *L, int idx)
{
  lua_getiuservalue(L, idx, 2);
  df_net *e = (df_net *)luaL_testudata(L, -1, DF_NET_MT);
  lua_pop(L, 1); /* (still referenced by the optimizer) */
  return e && e->live ? e : NULL;
}

static df_net *optim_net(lua_State *L, int idx, const char *fname)
{
  lua_getiuservalue(L, idx, 1);
  df_net *n = check_net(L, -1, fname, "the optimizer's network");
  lua_pop(L, 1); /* still referenced by the optimizer */
  return n;
}

static int optim_step(lua_State *L)
{
  const char *fname = "diffuse.optim.step";
  df_adam *o = check_optim(L, 1, fname, "self");
  df_net *n = optim_net(L, 1, fname), *e = optim_ema(L, 1);
  l_check(L, df_adam_step(o, n), fname);
  if (e && o->ema > 0.0) { /* the EMA follows every step, as in diffuse.train */
    if (e->be != n->be || e->dev != n->dev) l_check(L, df_net_to(e, n->be, n->dev), fname);
    l_check(L, n->be->ema(n->dev, e->params, n->params, n->d.nparams, (float)o->ema), fname);
    e->cached_rows = -1;
  }
  return 0;
}

static int optim_zero_grad(lua_State *L)
{
  const char *fname = "diffuse.optim.zero_grad";
  check_optim(L, 1, fname, "self");
  l_check(L, df_net_zero_grad(optim_net(L, 1, fname)), fname);
  return 0;
}

/* opt:save(path): its network and itself, as net:save(path, opt) */
static int optim_save(lua_State *L)
{
  const char *fname = "diffuse.optim.save";
  df_adam *o = check_optim(L, 1, fname, "self");
  df_net *n = optim_net(L, 1, fname);
  const char *path = l_checkstr(L, 2, fname, "path");
  uint64_t seed, stream;
  df_rng_state(&seed, &stream);
  l_check(L, df_save(path, n, o, optim_ema(L, 1), seed, stream), fname);
  return 0;
}

static const char *const decay_names[] = { "none", "cosine", "linear", NULL };

/* opt:set_schedule{warmup = 0, decay = 'none', min_lr = 0, steps = ...}: the lr schedule over
   the optimizer's steps (steps: where the decay ends, required with a decay) */
static int optim_set_schedule(lua_State *L)
{
  const char *fname = "diffuse.optim.set_schedule";
  static const char *const opts[] = { "warmup", "decay", "min_lr", "steps", NULL };
  df_adam *o = check_optim(L, 1, fname, "self");
  if (!lua_istable(L, 2)) l_error(L, fname, "schedule must be a table {warmup = ..., decay = ..., min_lr = ...}");
  l_checkopts(L, 2, fname, opts);
  df_schedule sc;
  memset(&sc, 0, sizeof sc);
  l_getopt(L, 2, "warmup");
  sc.warmup = l_optint(L, -1, 0, fname, "schedule.warmup");
  l_getopt(L, 2, "steps");
  sc.total = l_optint(L, -1, 0, fname, "schedule.steps");
  l_getopt(L, 2, "min_lr");
  sc.min_lr = l_optnum(L, -1, 0.0, fname, "schedule.min_lr");
  l_getopt(L, 2, "decay");
  const char *dn = lua_isnil(L, -1) ? "none" : l_checkstr(L, -1, fname, "schedule.decay");
  sc.decay = -1;
  for (int i = 0; decay_names[i]; i++)
    if (strcmp(dn, decay_names[i]) == 0) sc.decay = i;
  if (sc.decay < 0) l_error(L, fname, "schedule.decay must be 'cosine', 'linear' or 'none' (got '%s')", dn);
  l_check(L, df_adam_set_schedule(o, &sc), fname);
  lua_settop(L, 1);
  return 1;
}

/* opt:set_ema(decay) --> the EMA network: the weights' moving average that diffuse.train keeps
   with this optimizer from now on (started from the network's current weights; an existing EMA
   keeps its weights and takes the new decay) */
static int optim_set_ema(lua_State *L)
{
  const char *fname = "diffuse.optim.set_ema";
  df_adam *o = check_optim(L, 1, fname, "self");
  double decay = l_checknum(L, 2, fname, "ema");
  if (!(decay > 0.0 && decay < 1.0)) l_error(L, fname, "ema must be a decay in (0, 1) (got %g)", decay);
  df_net *n = optim_net(L, 1, fname);
  if (!optim_ema(L, 1)) {
    df_net *e = new_net(L);
    l_check(L, df_net_clone(e, n), fname);
    lua_setiuservalue(L, 1, 2);
  }
  o->ema = decay;
  lua_getiuservalue(L, 1, 2);
  return 1;
}

static int optim_release(lua_State *L)
{
  df_adam_release((df_adam *)luaL_checkudata(L, 1, DF_OPTIM_MT));
  return 0;
}

static int optim_index(lua_State *L)
{
  df_adam *o = check_optim(L, 1, "diffuse.optim", "self");
  const char *k = lua_tostring(L, 2);
  if (k && strcmp(k, "lr") == 0) lua_pushnumber(L, o->lr);
  else if (k && strcmp(k, "t") == 0) lua_pushinteger(L, (lua_Integer)o->t);
  else if (k && strcmp(k, "eps") == 0) lua_pushnumber(L, o->eps);
  else if (k && strcmp(k, "weight_decay") == 0) lua_pushnumber(L, o->wd);
  else if (k && strcmp(k, "betas") == 0) {
    lua_createtable(L, 2, 0);
    lua_pushnumber(L, o->b1);
    lua_rawseti(L, -2, 1);
    lua_pushnumber(L, o->b2);
    lua_rawseti(L, -2, 2);
  } else if (k && strcmp(k, "net") == 0) {
    lua_getiuservalue(L, 1, 1);
  } else if (k && strcmp(k, "ema") == 0) {
    if (optim_ema(L, 1)) lua_getiuservalue(L, 1, 2);
    else lua_pushnil(L);
  } else if (k && strcmp(k, "ema_decay") == 0) {
    if (o->ema > 0.0) lua_pushnumber(L, o->ema);
    else lua_pushnil(L);
  } else if (k && strcmp(k, "schedule") == 0) {
    const df_schedule *sc = &o->sched;
    if (sc->warmup == 0 && sc->decay == DF_DECAY_NONE) {
      lua_pushnil(L);
    } else {
      lua_createtable(L, 0, 4);
      lua_pushinteger(L, (lua_Integer)sc->warmup);
      lua_setfield(L, -2, "warmup");
      lua_pushstring(L, decay_names[sc->decay]);
      lua_setfield(L, -2, "decay");
      lua_pushnumber(L, sc->min_lr);
      lua_setfield(L, -2, "min_lr");
      if (sc->decay != DF_DECAY_NONE) {
        lua_pushinteger(L, (lua_Integer)sc->total);
        lua_setfield(L, -2, "steps");
      }
    }
  } else if (k && strcmp(k, "current_lr") == 0) { /* the lr of the next step */
    lua_pushnumber(L, df_adam_lr(o, o->t + 1));
  } else {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
  }
  return 1;
}

/* opt.lr = 1e-4: the learning rate may change between steps (schedules) */
static int optim_newindex(lua_State *L)
{
  const char *fname = "diffuse.optim";
  df_adam *o = check_optim(L, 1, fname, "self");
  const char *k = lua_tostring(L, 2);
  if (!k || strcmp(k, "lr") != 0) l_error(L, fname, "only lr can be set");
  double lr = l_checknum(L, 3, fname, "lr");
  l_check(L, df_adam_check_lr(lr), fname);
  o->lr = lr;
  return 0;
}

static int optim_tostring(lua_State *L)
{
  df_adam *o = (df_adam *)luaL_checkudata(L, 1, DF_OPTIM_MT);
  if (!o->live) lua_pushstring(L, "diffuse.optim.adam (released)");
  else lua_pushfstring(L, "diffuse.optim.adam{lr = %f, betas = {%f, %f}, eps = %f, weight_decay = %f}"
                       " after %d steps", o->lr, o->b1, o->b2, o->eps, o->wd, (int)o->t);
  return 1;
}

/* ---- loading ---------------------------------------------------------------------------------- */

/* diffuse.nn.load(path) --> net, optimizer or nil, {seed = ..., stream = ...}: onto the current
   device; diffuse.set_rng_state(info.seed, info.stream) resumes the random streams */
static int load_as(lua_State *L, const char *fname)
{
  const char *path = l_checkstr(L, 1, fname, "path");
  const df_backend *be;
  int dev, has_opt;
  uint64_t seed, stream;
  df_current_device(&be, &dev);
  lua_settop(L, 1);
  df_net *n = new_net(L); /* index 2 */
  df_net *e = new_net(L); /* index 3: the EMA, if the file holds one */
  df_adam tmp;
  int has_ema;
  memset(&tmp, 0, sizeof tmp);
  l_check(L, df_load(path, n, &tmp, &has_opt, e, &has_ema, &seed, &stream, be, dev), fname);
  if (has_opt) {
    df_adam *o = new_optim(L, 2);
    *o = tmp; /* the userdata owns the state from now on */
    if (has_ema) {
      lua_pushvalue(L, 3);
      lua_setiuservalue(L, -2, 2);
    }
  } else {
    lua_pushnil(L);
  }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)seed);
  lua_setfield(L, -2, "seed");
  lua_pushinteger(L, (lua_Integer)stream);
  lua_setfield(L, -2, "stream");
  if (has_ema) {
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "ema");
  }
  lua_remove(L, 3);
  return 3;
}

static int nn_load(lua_State *L) { return load_as(L, "diffuse.nn.load"); }

/* diffuse.optim.load(path) --> optimizer, net, info */
static int optim_load(lua_State *L)
{
  load_as(L, "diffuse.optim.load");
  int top = lua_gettop(L); /* net, optimizer, info */
  if (lua_isnil(L, top - 1)) l_error(L, "diffuse.optim.load", "'%s' holds no optimizer", lua_tostring(L, 1));
  lua_pushvalue(L, top - 1);
  lua_pushvalue(L, top - 2);
  lua_pushvalue(L, top);
  return 3;
}

/* ---- DSM loss, the network score, the training loop ------------------------------------------ */

static const char *const weighting_names[] = { "sigma2", "likelihood", "none", NULL };

static int opt_weighting(lua_State *L, int opts, const char *fname)
{
  l_getopt(L, opts, "weighting");
  const char *w = lua_isnil(L, -1) ? "sigma2" : l_checkstr(L, -1, fname, "weighting");
  lua_pop(L, 1);
  for (int i = 0; weighting_names[i]; i++)
    if (strcmp(w, weighting_names[i]) == 0) return i;
  return l_error(L, fname, "weighting must be 'sigma2', 'likelihood' or 'none' (got '%s')", w);
}

/* diffuse.loss.dsm(net, diffuser, x0 [, {tol = 1e-5, weighting = 'sigma2'}]) --> loss; gradients
   accumulate */
static int loss_dsm(lua_State *L)
{
  const char *fname = "diffuse.loss.dsm";
  static const char *const opts[] = { "tol", "weighting", NULL };
  df_net *n = check_net(L, 1, fname, "net");
  df_diffuser *D = l_checkdiffuser(L, 2, fname, "diffuser");
  df_tensor *x0 = l_checktensor(L, 3, fname, "x0");
  l_checkopts(L, 4, fname, opts);
  double tol = opt_num(L, 4, "tol", 1e-5, fname), loss;
  int weighting = opt_weighting(L, 4, fname);
  l_check(L, df_dsm_loss(n, D, x0, tol, weighting, &loss), fname);
  lua_pushnumber(L, loss);
  return 1;
}

static void release_net_score(void *owned) { df_tensor_release(&((df_net_score *)owned)->sig); }

/* diffuse.score.net(net, diffuser): s(x, t) = net(x, t) / sigma(t) */
static int score_net(lua_State *L)
{
  const char *fname = "diffuse.score.net";
  df_net *n = check_net(L, 1, fname, "net");
  df_diffuser *D = l_checkdiffuser(L, 2, fname, "diffuser");
  l_score *s = (l_score *)lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, DF_SCORE_MT);
  df_net_score *ns = (df_net_score *)calloc(1, sizeof *ns);
  if (!ns) l_error(L, fname, "out of memory");
  ns->net = n;
  ns->diff = *D;
  s->owned = ns;
  s->release_owned = release_net_score;
  s->live = 1;
  s->kind_name = "net";
  s->src.kind = DF_SCORE_CALLBACK;
  s->src.diff = *D;
  s->src.eval = df_net_score_eval;
  s->src.eval_rows = df_net_score_eval_rows;
  s->src.run = df_net_score_run;
  s->src.jvp = df_net_score_jvp;
  s->src.ctx = ns;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1); /* the network lives as long as its score */
  return 1;
}

/* the progress function runs Lua inside the loop: what the loop holds is noted here and checked
   after each call (a function that frees or moves the net, the optimizer or the data stops the
   loop with an error instead of leaving it on freed memory) */
typedef struct {
  lua_State *L;
  int fn;
  const df_net *n;
  const df_adam *o;
  const df_tensor *data;
  const float *params, *x; /* (the optimizer's state moves to the net's device inside df_train) */
  const df_backend *be;
  int dev;
  int64_t rows;
} progress_ctx;

static int progress_cb(void *ctx, int64_t step, int64_t total, double loss)
{
  progress_ctx *c = (progress_ctx *)ctx;
  lua_State *L = c->L;
  lua_pushvalue(L, c->fn);
  lua_pushinteger(L, (lua_Integer)step);
  lua_pushinteger(L, (lua_Integer)total);
  lua_pushnumber(L, loss);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    int top = lua_gettop(L) - 1;
    int st = df_fail(DF_EARG, "the progress function failed: %s", l_errtext(L, -1));
    lua_settop(L, top);
    return st;
  }
  if (!c->n->live || !c->o->live || !df_is_live(c->data))
    return df_fail(DF_ESTATE, "the progress function released the %s",
                   !c->n->live ? "network" : !c->o->live ? "optimizer" : "data");
  if (c->n->params != c->params || c->n->be != c->be || c->n->dev != c->dev ||
      df_data(c->data) != c->x || c->data->shape[0] != c->rows)
    return df_fail(DF_ESTATE, "the progress function moved or replaced the network's, the "
                   "optimizer's or the data's memory");
  return DF_OK;
}

/* what core.train and core.group_train share: steps, batch|nil (all rows) and tol from index
   `at`, the {weighting, clip} table at index `opts`; the optimizer (index 2) must be the net's
   (index 1), and its EMA, if it has one, is kept up to date */
static void train_args(lua_State *L, const char *fname, int at, int opts, const df_net *n,
                       const df_tensor *data, df_train_opts *to)
{
  static const char *const names[] = { "weighting", "clip", NULL };
  memset(to, 0, sizeof *to);
  to->steps = l_checkint(L, at, fname, "steps");
  const int64_t rows = data->ndim > 0 ? data->shape[0] : 0;
  to->batch = lua_isnil(L, at + 1) ? rows : l_checkint(L, at + 1, fname, "batch");
  to->tol = l_checknum(L, at + 2, fname, "tol");
  l_checkopts(L, opts, fname, names);
  to->weighting = opt_weighting(L, opts, fname);
  to->clip = opt_num(L, opts, "clip", 0.0, fname);
  if (!(to->clip >= 0.0)) l_error(L, fname, "clip must be a positive number (got %g)", to->clip);
  lua_getiuservalue(L, 2, 1);
  if (lua_touserdata(L, -1) != (void *)n) l_error(L, fname, "the optimizer belongs to another network");
  lua_pop(L, 1);
  to->ema = optim_ema(L, 2);
}

/* core.train(net, optimizer, diffuser, data, steps, batch|nil, tol [, progress_fn, every
   [, {weighting = ..., clip = ...}]]) --> losses: the whole loop in one native call (diffuse.train
   in init.lua wraps it) */
static int core_train(lua_State *L)
{
  const char *fname = "diffuse.train";
  df_net *n = check_net(L, 1, fname, "net");
  df_adam *o = check_optim(L, 2, fname, "optimizer");
  df_diffuser *D = l_checkdiffuser(L, 3, fname, "diffuser");
  df_tensor *data = l_checktensor(L, 4, fname, "data");
  df_train_opts to;
  double every = l_optnum(L, 9, 0.1, fname, "every");
  train_args(L, fname, 5, 10, n, data, &to);
  progress_ctx ctx = { L, 8, n, o, data, n->params, df_data(data), n->be, n->dev, data->ndim > 0 ? data->shape[0] : 0 };
  int has_fn = lua_isfunction(L, 8);
  lua_settop(L, 10);
  to.progress = has_fn ? progress_cb : NULL;
  to.ctx = &ctx;
  to.every = every;
  df_tensor *losses = l_newtensor(L);
  l_check(L, df_train(n, o, D, data, &to, losses), fname);
  return 1;
}

/* core.group_train(net, optimizer, group, diffuser, data, steps, batch|nil, tol [, progress_fn
   [, {weighting = ..., clip = ...}]]) --> losses: denoising score matching with group noise
   (group_train.c) */
static int core_group_train(lua_State *L)
{
  const char *fname = "diffuse.train";
  df_net *n = check_net(L, 1, fname, "net");
  df_adam *o = check_optim(L, 2, fname, "optimizer");
  df_group *G = (df_group *)luaL_testudata(L, 3, "diffuse.group");
  if (!G) l_error(L, fname, "group must be a group (diffuse.group.su(2), ...)");
  df_diffuser *D = l_checkdiffuser(L, 4, fname, "diffuser");
  df_tensor *data = l_checktensor(L, 5, fname, "data");
  df_train_opts to;
  train_args(L, fname, 6, 10, n, data, &to);
  progress_ctx ctx = { L, 9, n, o, data, n->params, df_data(data), n->be, n->dev, data->ndim > 0 ? data->shape[0] : 0 };
  int has_fn = lua_isfunction(L, 9);
  lua_settop(L, 10);
  to.progress = has_fn ? progress_cb : NULL;
  to.ctx = &ctx;
  to.every = 50.0; /* (steps between progress calls) */
  df_tensor *losses = l_newtensor(L);
  l_check(L, df_group_train(n, o, G, D, data, &to, losses), fname);
  return 1;
}

/* ---- registration ------------------------------------------------------------------------------ */

static const luaL_Reg net_methods[] = {
  { "forward", net_forward }, { "backward", net_backward }, { "zero_grad", net_zero_grad },
  { "num_parameters", net_num_parameters }, { "to", net_to }, { "save", net_save },
  { "parameters", net_parameters }, { "gradients", net_gradients },
  { "frequencies", net_frequencies },
  { "set_parameters", net_set_parameters }, { "set_gradients", net_set_gradients },
  { "free", net_release }, { NULL, NULL }
};
static const luaL_Reg net_meta[] = {
  { "__call", net_forward }, { "__tostring", net_tostring }, { "__gc", net_release },
  { "__close", net_release }, { NULL, NULL }
};
static const luaL_Reg optim_methods[] = {
  { "step", optim_step }, { "zero_grad", optim_zero_grad }, { "save", optim_save },
  { "set_schedule", optim_set_schedule }, { "set_ema", optim_set_ema },
  { "free", optim_release }, { NULL, NULL }
};
static const luaL_Reg optim_meta[] = {
  { "__newindex", optim_newindex }, { "__tostring", optim_tostring }, { "__gc", optim_release },
  { "__close", optim_release }, { NULL, NULL }
};

static void sub(lua_State *L, const char *name, const char *fn_name, lua_CFunction fn)
{
  if (lua_getfield(L, -1, name) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, name);
  }
  lua_pushcfunction(L, fn);
  lua_setfield(L, -2, fn_name);
  lua_pop(L, 1);
}

/* adds nn, optim, loss, score.net and train (the native loop) to the module table on the top */
void l_open_nn(lua_State *L)
{
  l_class(L, DF_NET_MT, net_meta, net_methods, net_index);
  l_class(L, DF_OPTIM_MT, optim_meta, optim_methods, optim_index);
  sub(L, "nn", "mlp", nn_mlp);
  sub(L, "nn", "time_embedded", nn_temb);
  sub(L, "nn", "from_graph", nn_from_graph);
  sub(L, "nn", "load", nn_load);
  sub(L, "optim", "adam", optim_adam);
  sub(L, "optim", "load", optim_load);
  sub(L, "loss", "dsm", loss_dsm);
  sub(L, "score", "net", score_net);
  lua_pushcfunction(L, core_group_train);
  lua_setfield(L, -2, "group_train");
  lua_pushcfunction(L, core_train);
  lua_setfield(L, -2, "train");
}
