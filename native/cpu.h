/* cpu.h: the CPU backend's functions that live outside cpu_backend.c (one file per area),
 * gathered into df_cpu_backend there. */
#ifndef DF_CPU_H
#define DF_CPU_H

#include "backend.h"

/* elements per parallel work item: below two of these, loops stay on one thread */
#define CPU_CHUNK 32768

/* cpu_rng.c: out[j] = element base + j of a uniform / normal stream */
void cpu_uniform_run(uint64_t seed, uint64_t stream, uint64_t base, int64_t m, float *out);
void cpu_normal_run(uint64_t seed, uint64_t stream, uint64_t base, int64_t m, float *out);

/* cpu_diffusion.c */
int cpu_diffuser_eval(int dev, const df_diffuser *D, int what, float *out, const float *t,
                      int64_t n);
int cpu_score_eval(int dev, const df_mixture *m, float *out, const float *x,
                   const float *sig2_rows, float sig2, int64_t rows, int d);
int cpu_mixture_logpdf(int dev, const df_mixture *m, float *out, const float *x,
                       const float *sig2_rows, float sig2, int64_t rows);
int cpu_mixture_sample(int dev, const df_mixture *m, float *out, const float *sig2_rows,
                       float sig2, int64_t rows, uint64_t seed, uint64_t su, uint64_t sz);
int cpu_sample_fused(int dev, const df_plan *p, const df_mixture *m, float *x, int64_t rows,
                     int d, int nrec, const int64_t *rec_k, float *const *rec_out, uint64_t seed,
                     uint64_t stream);
int cpu_sample_step(int dev, int stage, float *x, float *xp, const float *s, const float *s2,
                    float c1, float c2, int64_t n, int64_t k, uint64_t seed, uint64_t stream);
int cpu_rowlin(int dev, float *out, int64_t rows, int d, int nv, const float *const *v,
               const float *const *coef, const float *s);
int cpu_rowdot(int dev, float *out, const float *a, const float *b, int64_t rows, int d);
int cpu_errnorm(int dev, float *out, const float *e, const float *a, const float *b, int64_t rows,
                int d, float rtol, float atol);
int cpu_random_at(int dev, int dist, float *x, int64_t n, uint64_t seed, uint64_t stream,
                  uint64_t base);
int cpu_mixture_div(int dev, const df_mixture *m, float *out, const float *x,
                    const float *sig2_rows, float sig2, int64_t rows);
int cpu_mixture_jvp(int dev, const df_mixture *m, float *out, const float *x, const float *v,
                    const float *sig2_rows, float sig2, int64_t rows);

/* cpu_nn.c */
int64_t cpu_net_workspace(const df_netdesc *nd, int64_t rows);
int cpu_net_forward(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                    const float *x, const float *t, float t0, int64_t rows, float *out, float *ws,
                    int keep);
int cpu_net_sample(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                   const df_plan *p, float *x, int64_t rows, int nrec, const int64_t *rec_k,
                   float *const *rec_out, uint64_t seed, uint64_t stream, float *ws, int *done);
int cpu_net_backward(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                     const float *x, const float *t, float t0, int64_t rows, const float *dout,
                     float *grads, float *ws);
int cpu_dsm_step(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                 float *grads, const df_dsm *job, float *loss, float *ws);
int cpu_adam(int dev, float *p, const float *g, float *m, float *v, int64_t n,
             const df_adam_hp *hp);
int cpu_ema(int dev, float *e, const float *p, int64_t n, float decay);
int64_t cpu_net_jvp_workspace(const df_netdesc *nd, int64_t rows);
int cpu_net_jvp(int dev, const df_netdesc *nd, const float *params, const float *fixed,
                const float *x, const float *t, float t0, int64_t rows, int nv,
                const float *const *v, float *const *out, float *ws);

/* cpu_graph.c: one tile of a traced network (graph.h), its buffers in the frame fr
   [g->frame][TILE] (x and t loaded into nodes 1 and 2 by the caller). The forward keeps what the
   backward needs when `keep`; with `tabled` the nodes of t alone are skipped, their frontier
   filled by cpu_graph_fill from a row of cpu_graph_time_table. The backward adds the parameter
   gradients for dout [dim][T] into grads; scratch holds maxw features. */
struct df_graph;
void cpu_graph_forward(const struct df_graph *g, const float *params, const float *fixed,
                       float *fr, int keep, int tabled);
void cpu_graph_backward(const struct df_graph *g, const float *params, const float *fixed,
                        float *fr, const float *dout, float *grads, float *scratch);
/* tab [n][g->tab] = the frontier's values at times[0 .. n), computed in the frame fr */
void cpu_graph_time_table(const struct df_graph *g, const float *params, const float *fixed,
                          const float *times, int64_t n, float *tab, float *fr);
void cpu_graph_fill(const struct df_graph *g, float *fr, const float *row);
/* the tangents tf (the frame's layout) of a kept forward in fr, for the tangent of x loaded into
   tf's node 1: every node that depends on x gets d node = J_node v (forward mode) */
void cpu_graph_tangent(const struct df_graph *g, const float *params, const float *fixed,
                       const float *fr, float *tf);

#endif
