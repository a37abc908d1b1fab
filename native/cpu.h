/* cpu.h: the CPU backend's functions that live outside cpu_backend.c (one file per area),
 * gathered into df_cpu_backend there. */
#ifndef DF_CPU_H
#define DF_CPU_H

#include "backend.h"

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

#endif
