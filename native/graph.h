/* graph.h: score networks as traced graphs (diffuse.nn.net). A graph is a list of nodes in
 * execution order, each [B, width]; it is handed over (and stored in checkpoints) as text, which
 * df_graph_parse checks completely, so a graph that parses is safe to run. The parse also lays
 * out the parameters and derives what the executors need (which nodes are live, which need a
 * gradient, which depend on t alone, where each node sits in a tile's frame). */
#ifndef DF_GRAPH_H
#define DF_GRAPH_H

#include <stdint.h>

/* node kinds; the text names are df_graph_op_names[op] */
enum {
  DF_G_X, DF_G_T,                    /* the inputs: x [B, dim], t [B, 1] */
  DF_G_LINEAR,                       /* a W^T + b, W [out, in] of a layer (shared when reused) */
  DF_G_CAT,                          /* columns of several nodes side by side */
  DF_G_ADD, DF_G_SUB, DF_G_MUL,      /* a op b; a [B, 1] operand broadcasts against [B, k] */
  DF_G_ADDC, DF_G_MULC, DF_G_RSUBC, DF_G_DIVC, /* a + c, a * c, c - a, a / c */
  DF_G_SILU, DF_G_RELU, DF_G_TANH, DF_G_GELU, DF_G_SIGMOID, DF_G_SIN, DF_G_COS, DF_G_EXP,
  DF_G_SQUARE,
  DF_G_FOURIER,                      /* [sin k w a, cos k w a] of a [B, 1] node, k = 2 pi or 1 */
  DF_G_MEAN,                         /* [B, 1]: the mean of a's columns (a - a:mean() is tangent) */
  DF_G_COL,                          /* [B, 1]: column `col` of a */
  DF_G_NOPS
};

extern const char *const df_graph_op_names[DF_G_NOPS];

#define DF_GRAPH_MAXNODES 4096
#define DF_GRAPH_MAXWIDTH 16384       /* columns of one node */
#define DF_GRAPH_MAXLAYERW 4096       /* inputs or outputs of one Linear */
#define DF_GRAPH_MAXFRAME ((int64_t)1 << 22) /* features of all nodes' buffers of one row */

typedef struct df_gnode {
  int op, width;
  int a, b;              /* input nodes (0-based; -1: none) */
  int cat0, ncat;        /* CAT: its inputs are g->cat[cat0 .. cat0 + ncat) */
  int layer;             /* LINEAR: 0-based layer */
  float c;               /* ADDC MULC RSUBC DIVC */
  int col;               /* COL: the 0-based column */
  int gauss, nfreq;      /* FOURIER: gauss: sin(2 pi a W), W ~ N(0, scale^2) drawn at creation;
                            else the given angular frequencies: sin(w a) */
  double scale;
  int64_t foff;          /* FOURIER: first frequency in the fixed buffer */
  /* derived by the parse */
  int live;              /* the output depends on it */
  int xdep, tonly;       /* depends on x; depends on t and not on x */
  int pdep;              /* depends on a parameter: its gradient is needed (when live) */
  int uses;              /* live consumers (a node used twice by one consumer counts twice) */
  int frontier;          /* t alone, used by a node that is not (what a constant t tabulates) */
  int fuse;              /* LINEAR: the SILU node that is its only consumer, else -1 */
  int64_t val, aux, grad; /* feature offsets of its buffers in a tile frame, -1: none */
  int64_t tabo;          /* frontier: its offset in a row of the constant-t table */
} df_gnode;

typedef struct df_glayer {
  int in, out, bias;
  int64_t woff, boff;    /* weight [out, in], then bias [out] (boff = -1 without) */
} df_glayer;

typedef struct df_graph {
  int refs;              /* nets sharing it (df_graph_retain / df_graph_release) */
  int dim, nnodes, nlayers, out, ncat;
  df_gnode *nodes;
  df_glayer *layers;
  int *cat;
  float *freqs;          /* the given frequencies, at their fixed-buffer offsets (0 for drawn) */
  int64_t nparams, nfixed, ndrawn; /* parameters; fixed values; those drawn from N(0, scale^2) */
  int64_t frame;         /* features of one row's buffers (values, aux, gradients) */
  int64_t tab;           /* features of one row's frontier values (a constant t's table) */
  int maxw;              /* widest node or layer input */
  char *text;            /* the canonical text */
} df_graph;

/* parse and check a graph's text; *g is a new graph with one reference */
int df_graph_parse(const char *text, df_graph **g);
void df_graph_retain(df_graph *g);
void df_graph_release(df_graph *g);

#endif
