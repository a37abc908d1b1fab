/* graph.c: the text form of a traced network (graph.h), its complete check, the parameter
 * layout, and the facts the executors (cpu_graph.c, kernels/cuda_graph.cu) derive from it.
 *
 * The text, one item per line (node and layer numbers are 1-based, in order of appearance):
 *
 *   diffuse.net 1                  header and version
 *   dim D                          data dimension
 *   layer IN OUT BIAS              a Linear (BIAS 0 or 1), listed in order of first application
 *   node x                         node 1: x [B, D]
 *   node t                         node 2: t [B, 1]
 *   node linear A L                A through layer L
 *   node cat N A1 .. AN            columns side by side
 *   node add|sub|mul A B           a [B, 1] operand broadcasts
 *   node addc|mulc|rsubc|divc A C  with a number (float32)
 *   node silu|relu|...|square A
 *   node fourier A gauss N SCALE   [sin 2 pi a W, cos 2 pi a W], W ~ N(0, SCALE^2), N of them
 *   node fourier A freqs N W1..WN  [sin w a, cos w a] for the given w
 *   node mean A                    [B, 1]: the mean of A's columns
 *   node col A C                   [B, 1]: column C of A (1-based)
 *   output A                       the network's output, [B, D]
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "status.h"
#include "graph.h"

const char *const df_graph_op_names[DF_G_NOPS] = {
  "x", "t", "linear", "cat", "add", "sub", "mul", "addc", "mulc", "rsubc", "divc",
  "silu", "relu", "tanh", "gelu", "sigmoid", "sin", "cos", "exp", "square", "fourier",
  "mean", "col"
};

#define MAX_TEXT ((size_t)1 << 24)
#define MAX_PARAMS ((int64_t)1 << 30)

void df_graph_retain(df_graph *g) { g->refs++; }

void df_graph_release(df_graph *g)
{
  if (!g || --g->refs > 0) return;
  free(g->nodes);
  free(g->layers);
  free(g->cat);
  free(g->freqs);
  free(g->text);
  free(g);
}

/* ---- a line-by-line reader ------------------------------------------------------------------- */

typedef struct {
  const char *p;   /* the rest of the current line */
  int line;
  char msg[200];
} rdr;

static int bad(rdr *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(rdr *r, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->msg, sizeof r->msg, fmt, ap);
  va_end(ap);
  return DF_EARG;
}

/* the next word of the line into w (at most cap - 1 characters); 0 at the end of the line */
static int word(rdr *r, char *w, size_t cap)
{
  while (*r->p == ' ' || *r->p == '\t' || *r->p == '\r') r->p++;
  size_t n = 0, len = 0;
  while (*r->p && *r->p != ' ' && *r->p != '\t' && *r->p != '\r' && *r->p != '\n') {
    if (n + 1 < cap) w[n++] = *r->p;
    r->p++;
    len++;
  }
  w[n] = '\0';
  if (len >= cap && n > 0) w[0] = '?'; /* a word too long for anything here: unparseable */
  return len > 0;
}

static int get_int(rdr *r, const char *what, long long lo, long long hi, long long *v)
{
  char w[64], *end;
  if (!word(r, w, sizeof w)) return bad(r, "%s is missing", what);
  long long x = strtoll(w, &end, 10);
  if (*end || end == w) return bad(r, "%s '%s' is not a whole number", what, w);
  if (x < lo || x > hi) return bad(r, "%s must be from %lld to %lld (got %lld)", what, lo, hi, x);
  *v = x;
  return DF_OK;
}

static int get_num(rdr *r, const char *what, double *v)
{
  char w[64], *end;
  if (!word(r, w, sizeof w)) return bad(r, "%s is missing", what);
  double x = strtod(w, &end);
  if (*end || end == w) return bad(r, "%s '%s' is not a number", what, w);
  if (!isfinite(x)) return bad(r, "%s must be finite (got %s)", what, w);
  *v = x;
  return DF_OK;
}

static int at_end(rdr *r)
{
  char w[8];
  return word(r, w, sizeof w) ? bad(r, "unexpected '%s' at the end of the line", w) : DF_OK;
}

/* ---- growing arrays -------------------------------------------------------------------------- */

static int grow(void **p, int *cap, int need, size_t elem)
{
  if (need <= *cap) return 0;
  int c = *cap ? *cap : 16;
  while (c < need) c *= 2;
  void *q = realloc(*p, (size_t)c * elem);
  if (!q) return 1;
  *p = q;
  *cap = c;
  return 0;
}

/* ---- the parse ------------------------------------------------------------------------------ */

static int op_of(const char *w)
{
  for (int i = 0; i < DF_G_NOPS; i++)
    if (strcmp(w, df_graph_op_names[i]) == 0) return i;
  return -1;
}

/* a node reference A (1-based, before node `self`) */
static int get_ref(rdr *r, int self, int *a)
{
  long long v = 0;
  int st = get_int(r, "an input node", 1, DF_GRAPH_MAXNODES, &v);
  if (st) return st;
  if (v >= self + 1) return bad(r, "node %d refers to node %lld, which comes later", self + 1, v);
  *a = (int)v - 1;
  return DF_OK;
}

/* node i's arguments, its width */
static int parse_node(rdr *r, df_graph *g, int i, int op, int *cat_cap, int *next_layer)
{
  df_gnode *n = &g->nodes[i];
  long long v = 0;
  double c;
  int st;
  n->op = op;
  n->a = n->b = n->layer = -1;
  if (op == DF_G_X || op == DF_G_T) {
    if (i != (op == DF_G_X ? 0 : 1)) return bad(r, "node %d: x must be node 1 and t node 2", i + 1);
    n->width = op == DF_G_X ? g->dim : 1;
    return DF_OK;
  }
  if (i < 2) return bad(r, "node %d: x must be node 1 and t node 2", i + 1);
  if (op == DF_G_CAT) {
    if ((st = get_int(r, "the number of nodes to cat", 1, DF_GRAPH_MAXNODES, &v))) return st;
    n->cat0 = g->ncat;
    n->ncat = (int)v;
    if (grow((void **)&g->cat, cat_cap, g->ncat + n->ncat, sizeof(int))) return bad(r, "out of memory");
    int64_t w = 0;
    for (int k = 0; k < n->ncat; k++) {
      int a = 0;
      if ((st = get_ref(r, i, &a))) return st;
      g->cat[g->ncat++] = a;
      w += g->nodes[a].width;
    }
    if (w > DF_GRAPH_MAXWIDTH)
      return bad(r, "cat %d: %lld columns, at most %d", i + 1, (long long)w, DF_GRAPH_MAXWIDTH);
    n->width = (int)w;
    return DF_OK;
  }
  if ((st = get_ref(r, i, &n->a))) return st;
  const df_gnode *A = &g->nodes[n->a];
  switch (op) {
  case DF_G_LINEAR: {
    if ((st = get_int(r, "a layer", 1, g->nlayers, &v))) return st;
    n->layer = (int)v - 1;
    df_glayer *L = &g->layers[n->layer];
    if (n->layer > *next_layer)
      return bad(r, "layer %d is applied before layer %d (layers are listed in the order they are "
                 "first applied)", n->layer + 1, *next_layer + 1);
    if (n->layer == *next_layer) (*next_layer)++;
    if (A->width != L->in)
      return bad(r, "linear %d expects %d inputs, got %d", n->layer + 1, L->in, A->width);
    n->width = L->out;
    return DF_OK;
  }
  case DF_G_ADD: case DF_G_SUB: case DF_G_MUL: {
    if ((st = get_ref(r, i, &n->b))) return st;
    int wa = A->width, wb = g->nodes[n->b].width;
    if (wa != wb && wa != 1 && wb != 1)
      return bad(r, "%s: shapes [B, %d] and [B, %d] do not broadcast", df_graph_op_names[op], wa, wb);
    n->width = wa > wb ? wa : wb;
    return DF_OK;
  }
  case DF_G_ADDC: case DF_G_MULC: case DF_G_RSUBC: case DF_G_DIVC:
    if ((st = get_num(r, "the number", &c))) return st;
    n->c = (float)c;
    if (!isfinite(n->c)) return bad(r, "%s: %g is beyond float32", df_graph_op_names[op], c);
    if (op == DF_G_DIVC && n->c == 0.0f) return bad(r, "divc: division by zero");
    n->width = A->width;
    return DF_OK;
  case DF_G_FOURIER: {
    char w[16];
    if (A->width != 1) return bad(r, "fourier expects a [B, 1] node, got [B, %d]", A->width);
    if (!word(r, w, sizeof w) || (strcmp(w, "gauss") && strcmp(w, "freqs")))
      return bad(r, "fourier: expected 'gauss' or 'freqs'");
    n->gauss = strcmp(w, "gauss") == 0;
    if ((st = get_int(r, "the number of frequencies", 1, DF_GRAPH_MAXWIDTH / 2, &v))) return st;
    n->nfreq = (int)v;
    n->width = 2 * n->nfreq;
    n->foff = g->nfixed;
    if (g->nfixed + n->nfreq > MAX_PARAMS) return bad(r, "too many frequencies");
    float *f = (float *)realloc(g->freqs, (size_t)(g->nfixed + n->nfreq) * sizeof(float));
    if (!f) return bad(r, "out of memory");
    g->freqs = f;
    if (n->gauss) {
      if ((st = get_num(r, "the scale", &n->scale))) return st;
      /* (5 sigma of the frequencies at t = 1 stays below the 6.5e6 where the features are NaN) */
      if (!(n->scale > 0.0 && n->scale <= 1e5))
        return bad(r, "fourier: scale must be positive, at most 1e5 (got %g)", n->scale);
      for (int k = 0; k < n->nfreq; k++) f[g->nfixed + k] = 0.0f;
      g->ndrawn += n->nfreq;
    } else {
      for (int k = 0; k < n->nfreq; k++) {
        if ((st = get_num(r, "a frequency", &c))) return st;
        if (!(fabs(c) <= 1e6)) return bad(r, "fourier: frequency %d is %g, beyond 1e6", k + 1, c);
        f[g->nfixed + k] = (float)c;
      }
    }
    g->nfixed += n->nfreq;
    return DF_OK;
  }
  case DF_G_MEAN: n->width = 1; return DF_OK;
  case DF_G_COL:
    if ((st = get_int(r, "a column", 1, A->width, &v))) return st;
    n->col = (int)v - 1;
    n->width = 1;
    return DF_OK;
  default: /* the elementwise functions */
    n->width = A->width;
    return DF_OK;
  }
}

/* live nodes, dependences, uses, the frontier, the frame layout */
static int derive(rdr *r, df_graph *g)
{
  const int N = g->nnodes;
  g->nodes[g->out].live = 1;
  for (int i = N - 1; i >= 0; i--) {
    df_gnode *n = &g->nodes[i];
    if (!n->live) continue;
    if (n->op == DF_G_CAT)
      for (int k = 0; k < n->ncat; k++) g->nodes[g->cat[n->cat0 + k]].live = 1;
    if (n->a >= 0) g->nodes[n->a].live = 1;
    if (n->b >= 0) g->nodes[n->b].live = 1;
  }
  for (int i = 0; i < N; i++) {
    df_gnode *n = &g->nodes[i];
    n->xdep = n->op == DF_G_X;
    n->pdep = n->op == DF_G_LINEAR;
    int ins[2] = { n->a, n->b };
    for (int k = 0; k < 2; k++)
      if (ins[k] >= 0) {
        n->xdep |= g->nodes[ins[k]].xdep;
        n->pdep |= g->nodes[ins[k]].pdep;
        if (n->live) g->nodes[ins[k]].uses++;
      }
    if (n->op == DF_G_CAT)
      for (int k = 0; k < n->ncat; k++) {
        df_gnode *a = &g->nodes[g->cat[n->cat0 + k]];
        n->xdep |= a->xdep;
        n->pdep |= a->pdep;
        if (n->live) a->uses++;
      }
    n->tonly = !n->xdep; /* every node comes from x or t */
  }
  const df_gnode *o = &g->nodes[g->out];
  if (o->width != g->dim)
    return bad(r, "the output is [B, %d], the network's data is [B, %d]", o->width, g->dim);
  if (!o->xdep) return bad(r, "the output does not depend on x");
  if (!o->pdep) return bad(r, "the output does not depend on any nn.linear layer");
  /* the frontier: t-only nodes a node depending on x reads */
  for (int i = 0; i < N; i++) {
    const df_gnode *n = &g->nodes[i];
    if (!n->live || n->tonly) continue;
    int ins[2] = { n->a, n->b };
    for (int k = 0; k < 2; k++)
      if (ins[k] >= 0 && g->nodes[ins[k]].tonly) g->nodes[ins[k]].frontier = 1;
    if (n->op == DF_G_CAT)
      for (int k = 0; k < n->ncat; k++)
        if (g->nodes[g->cat[n->cat0 + k]].tonly) g->nodes[g->cat[n->cat0 + k]].frontier = 1;
  }
  g->nodes[1].frontier = 0; /* t itself is loaded, never tabulated */
  for (int i = 0; i < N; i++) g->nodes[i].fuse = -1;
  for (int i = 0; i < N; i++) {
    const df_gnode *n = &g->nodes[i];
    if (n->live && n->op == DF_G_SILU && g->nodes[n->a].op == DF_G_LINEAR && g->nodes[n->a].uses == 1)
      g->nodes[n->a].fuse = i;
  }
  /* buffers: values (and aux) of x, t and every live node; gradients of live nodes that depend
     on a parameter, but for the output's (the caller's dout) */
  int64_t off = 0, tab = 0;
  g->maxw = g->dim + 1;
  for (int i = 0; i < N; i++) {
    df_gnode *n = &g->nodes[i];
    n->val = n->aux = n->grad = -1;
    if (!n->live && i > 1) continue;
    n->val = off;
    off += n->width;
    if (n->op == DF_G_SILU || n->op == DF_G_TANH || n->op == DF_G_GELU || n->op == DF_G_SIN ||
        n->op == DF_G_COS) {
      n->aux = off;
      off += n->width;
    }
    if (n->frontier) {
      n->tabo = tab;
      tab += n->width;
    }
    if (n->width > g->maxw) g->maxw = n->width;
  }
  for (int i = 0; i < N; i++) {
    df_gnode *n = &g->nodes[i];
    if (n->live && n->pdep && i != g->out) {
      n->grad = off;
      off += n->width;
    }
  }
  for (int l = 0; l < g->nlayers; l++)
    if (g->layers[l].in > g->maxw) g->maxw = g->layers[l].in;
  if (off > DF_GRAPH_MAXFRAME)
    return bad(r, "the network is too large: %lld features per row (at most %lld)", (long long)off,
               (long long)DF_GRAPH_MAXFRAME);
  g->frame = off;
  g->tab = tab;
  return DF_OK;
}

/* the canonical text of a parsed graph */
static char *canonical(const df_graph *g)
{
  size_t cap = 4096, len = 0;
  char *s = (char *)malloc(cap);
  if (!s) return NULL;
#define EMIT(...)                                                                             \
  do {                                                                                        \
    int n_ = snprintf(NULL, 0, __VA_ARGS__);                                                  \
    if (len + (size_t)n_ + 1 > cap) {                                                         \
      while (len + (size_t)n_ + 1 > cap) cap *= 2;                                            \
      char *q_ = (char *)realloc(s, cap);                                                     \
      if (!q_) { free(s); return NULL; }                                                      \
      s = q_;                                                                                 \
    }                                                                                         \
    snprintf(s + len, cap - len, __VA_ARGS__);                                                \
    len += (size_t)n_;                                                                        \
  } while (0)
  EMIT("diffuse.net 1\ndim %d\n", g->dim);
  for (int l = 0; l < g->nlayers; l++)
    EMIT("layer %d %d %d\n", g->layers[l].in, g->layers[l].out, g->layers[l].bias);
  for (int i = 0; i < g->nnodes; i++) {
    const df_gnode *n = &g->nodes[i];
    EMIT("node %s", df_graph_op_names[n->op]);
    switch (n->op) {
    case DF_G_X: case DF_G_T: break;
    case DF_G_LINEAR: EMIT(" %d %d", n->a + 1, n->layer + 1); break;
    case DF_G_CAT:
      EMIT(" %d", n->ncat);
      for (int k = 0; k < n->ncat; k++) EMIT(" %d", g->cat[n->cat0 + k] + 1);
      break;
    case DF_G_ADD: case DF_G_SUB: case DF_G_MUL: EMIT(" %d %d", n->a + 1, n->b + 1); break;
    case DF_G_ADDC: case DF_G_MULC: case DF_G_RSUBC: case DF_G_DIVC:
      EMIT(" %d %.9g", n->a + 1, (double)n->c);
      break;
    case DF_G_FOURIER:
      if (n->gauss) EMIT(" %d gauss %d %.17g", n->a + 1, n->nfreq, n->scale);
      else {
        EMIT(" %d freqs %d", n->a + 1, n->nfreq);
        for (int k = 0; k < n->nfreq; k++) EMIT(" %.9g", (double)g->freqs[n->foff + k]);
      }
      break;
    case DF_G_COL: EMIT(" %d %d", n->a + 1, n->col + 1); break;
    default: EMIT(" %d", n->a + 1); break;
    }
    EMIT("\n");
  }
  EMIT("output %d\n", g->out + 1);
#undef EMIT
  return s;
}

static int parse(rdr *r, const char *text, df_graph *g)
{
  int node_cap = 0, layer_cap = 0, cat_cap = 0, next_layer = 0, st, have_dim = 0, done = 0;
  long long v = 0;
  char w[32];
  const char *line = text;
  g->out = -1;
  for (r->line = 1; *line; r->line++) {
    const char *eol = strchr(line, '\n');
    size_t n = eol ? (size_t)(eol - line) : strlen(line);
    r->p = line;
    if (!word(r, w, sizeof w)) {
      /* an empty line */
    } else if (done) {
      return bad(r, "'%s' after the output line", w);
    } else if (r->line == 1) {
      if (strcmp(w, "diffuse.net") != 0) return bad(r, "not a diffuse.net graph");
      if ((st = get_int(r, "the version", 1, 1, &v)) || (st = at_end(r))) return st;
    } else if (strcmp(w, "dim") == 0) {
      if (have_dim) return bad(r, "dim given twice");
      if ((st = get_int(r, "dim", 1, 64, &v)) || (st = at_end(r))) return st;
      g->dim = (int)v;
      have_dim = 1;
    } else if (strcmp(w, "layer") == 0) {
      long long in, out, b;
      if (g->nnodes > 0) return bad(r, "layers must come before the nodes");
      if ((st = get_int(r, "a layer's inputs", 1, DF_GRAPH_MAXLAYERW, &in)) ||
          (st = get_int(r, "a layer's outputs", 1, DF_GRAPH_MAXLAYERW, &out)) ||
          (st = get_int(r, "a layer's bias flag", 0, 1, &b)) || (st = at_end(r)))
        return st;
      if (grow((void **)&g->layers, &layer_cap, g->nlayers + 1, sizeof(df_glayer)))
        return bad(r, "out of memory");
      df_glayer *L = &g->layers[g->nlayers++];
      L->in = (int)in;
      L->out = (int)out;
      L->bias = (int)b;
      L->woff = g->nparams;
      g->nparams += in * out;
      L->boff = b ? g->nparams : -1;
      g->nparams += b ? out : 0;
      if (g->nparams > MAX_PARAMS)
        return bad(r, "the network has more than %lld parameters", (long long)MAX_PARAMS);
    } else if (strcmp(w, "node") == 0) {
      if (!have_dim) return bad(r, "dim must come before the nodes");
      if (g->nnodes >= DF_GRAPH_MAXNODES) return bad(r, "more than %d nodes", DF_GRAPH_MAXNODES);
      if (!word(r, w, sizeof w)) return bad(r, "the node's kind is missing");
      int op = op_of(w);
      if (op < 0) return bad(r, "unknown node kind '%s'", w);
      if (grow((void **)&g->nodes, &node_cap, g->nnodes + 1, sizeof(df_gnode)))
        return bad(r, "out of memory");
      memset(&g->nodes[g->nnodes], 0, sizeof(df_gnode));
      if ((st = parse_node(r, g, g->nnodes, op, &cat_cap, &next_layer)) || (st = at_end(r))) return st;
      g->nnodes++;
    } else if (strcmp(w, "output") == 0) {
      if ((st = get_int(r, "the output node", 1, g->nnodes, &v)) || (st = at_end(r))) return st;
      g->out = (int)v - 1;
      done = 1;
    } else {
      return bad(r, "unknown item '%s'", w);
    }
    line = eol ? eol + 1 : line + n;
  }
  if (!have_dim) return bad(r, "dim is missing");
  if (g->nnodes < 2) return bad(r, "the nodes x and t are missing");
  if (g->out < 0) return bad(r, "the output line is missing");
  if (next_layer < g->nlayers) return bad(r, "layer %d is never applied", next_layer + 1);
  r->line = 0;
  return derive(r, g);
}

int df_graph_parse(const char *text, df_graph **out)
{
  *out = NULL;
  if (!text) return df_fail(DF_EARG, "no graph");
  if (strlen(text) > MAX_TEXT) return df_fail(DF_EARG, "the graph's text is too long");
  df_graph *g = (df_graph *)calloc(1, sizeof *g);
  rdr r;
  memset(&r, 0, sizeof r);
  if (!g) return df_fail(DF_ENOMEM, "out of memory for a graph");
  g->refs = 1;
  int st = parse(&r, text, g);
  if (!st && !(g->text = canonical(g))) st = bad(&r, "out of memory");
  if (st) {
    df_graph_release(g);
    if (r.line > 0) return df_fail(st, "bad graph, line %d: %s", r.line, r.msg);
    return df_fail(st, "bad graph: %s", r.msg);
  }
  *out = g;
  return DF_OK;
}
