/* cpu_diffusion.c: the CPU backend's diffusion operations: diffuser values, native scores,
 * mixture densities and draws, and the samplers. A fused run keeps a tile of elements in L1
 * for all steps (one pass over memory), with the update rules of dmath.h. */
#include <string.h>
#include "status.h"
#include "cpu.h"

#define TILE 256        /* elements of one fused tile */
#define MIX_MAXD 64     /* widest mixture row the CPU loops keep on the stack */

int cpu_diffuser_eval(int dev, const df_diffuser *D, int what, float *out, const float *t,
                      int64_t n)
{
  (void)dev;
  for (int64_t i = 0; i < n; i++) {
    float v = what == DF_G ? df_diffuser_g(D, t[i]) : df_diffuser_sigma2(D, t[i]);
    out[i] = what == DF_SIGMA ? sqrtf(v) : v;
  }
  return DF_OK;
}

int cpu_score_eval(int dev, const df_mixture *m, float *out, const float *x,
                   const float *sig2_rows, float sig2, int64_t rows, int d)
{
  (void)dev;
  if (m && d > MIX_MAXD) return df_fail(DF_EARG, "mixtures live in at most R^%d", MIX_MAXD);
  if (!m && (!sig2_rows || d == 1)) { /* the heat kernel's -x / sigma^2 as one flat loop gcc
                                         vectorises (the per-row loop below runs d = 1 scalar) */
    const int64_t n = rows * d;
#pragma omp parallel for schedule(static) if (n > CPU_CHUNK)
    for (int64_t i = 0; i < n; i++) out[i] = -x[i] / (sig2_rows ? sig2_rows[i] : sig2);
    return DF_OK;
  }
#pragma omp parallel for schedule(static) if (rows * d > CPU_CHUNK || (m && rows > 1024))
  for (int64_t i = 0; i < rows; i++) {
    float s2 = sig2_rows ? sig2_rows[i] : sig2;
    if (m) {
      df_mixture_score_row(m, s2, x + i * d, out + i * d);
    } else {
      for (int c = 0; c < d; c++) out[i * d + c] = -x[i * d + c] / s2;
    }
  }
  return DF_OK;
}

int cpu_mixture_logpdf(int dev, const df_mixture *m, float *out, const float *x,
                       const float *sig2_rows, float sig2, int64_t rows)
{
  (void)dev;
#pragma omp parallel for schedule(static) if (rows > 1024)
  for (int64_t i = 0; i < rows; i++)
    out[i] = df_mixture_logpdf_row(m, sig2_rows ? sig2_rows[i] : sig2, x + i * m->d);
  return DF_OK;
}

int cpu_mixture_sample(int dev, const df_mixture *m, float *out, const float *sig2_rows,
                       float sig2, int64_t rows, uint64_t seed, uint64_t su, uint64_t sz)
{
  (void)dev;
  if (m->d > MIX_MAXD) return df_fail(DF_EARG, "mixtures live in at most R^%d", MIX_MAXD);
#pragma omp parallel for schedule(static) if (rows > 1024)
  for (int64_t i = 0; i < rows; i++) {
    float z[MIX_MAXD];
    for (int c = 0; c < m->d; c++) z[c] = df_randn_at(seed, sz, (uint64_t)(i * m->d + c));
    df_mixture_sample_row(m, sig2_rows ? sig2_rows[i] : sig2, df_rand_at(seed, su, (uint64_t)i),
                          z, out + i * m->d);
  }
  return DF_OK;
}

static void normals(uint64_t seed, uint64_t stream, uint64_t base, int64_t m, float *z)
{
  cpu_normal_run(seed, stream, base, m, z);
}

static void record_tile(int64_t k, int nrec, const int64_t *rec_k, float *const *rec_out,
                        int64_t at, const float *t, int64_t m)
{
  for (int r = 0; r < nrec; r++)
    if (rec_k[r] == k) memcpy(rec_out[r] + at, t, (size_t)m * sizeof(float));
}

/* the exact score -x / sigma^2: every element on its own, a tile at a time */
static void fused_exact(const df_plan *p, float *x, int64_t n, int nrec, const int64_t *rec_k,
                        float *const *rec_out, uint64_t seed, uint64_t stream)
{
  const int64_t steps = p->steps, ntiles = (n + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) if (ntiles > 1 && n * steps > CPU_CHUNK)
  for (int64_t it = 0; it < ntiles; it++) {
    float t[TILE], z[TILE];
    int64_t i0 = it * TILE, m = n - i0 < TILE ? n - i0 : TILE;
    memcpy(t, x + i0, (size_t)m * sizeof(float));
    for (int64_t k = 0; k < steps; k++) {
      float s2 = p->sig2[k], c1 = p->c1[k], c2 = p->c2[k];
      record_tile(k, nrec, rec_k, rec_out, i0, t, m);
      if (p->method == DF_EULER || (p->method == DF_HEUN && k == steps - 1)) {
        for (int64_t j = 0; j < m; j++) t[j] = df_step_euler(t[j], -t[j] / s2, c1);
      } else if (p->method == DF_EULER_MARUYAMA) {
        normals(seed, stream, df_noise_index((uint64_t)i0, (uint64_t)k, (uint64_t)n), m, z);
        for (int64_t j = 0; j < m; j++) t[j] = df_step_em(t[j], -t[j] / s2, c1, c2, z[j]);
      } else {
        float s2n = p->sig2[k + 1];
        for (int64_t j = 0; j < m; j++) {
          float s = -t[j] / s2, xp = df_step_euler(t[j], s, c1);
          t[j] = df_step_heun(t[j], s, -xp / s2n, c1, c2);
        }
      }
    }
    record_tile(steps, nrec, rec_k, rec_out, i0, t, m);
    memcpy(x + i0, t, (size_t)m * sizeof(float));
  }
}

/* a mixture score: one row of d values at a time */
static void fused_mixture(const df_plan *p, const df_mixture *mix, float *x, int64_t rows, int d,
                          int nrec, const int64_t *rec_k, float *const *rec_out, uint64_t seed,
                          uint64_t stream)
{
  const int64_t steps = p->steps, n = rows * d;
#pragma omp parallel for schedule(static) if (rows > 64)
  for (int64_t i = 0; i < rows; i++) {
    float xr[MIX_MAXD], s[MIX_MAXD], xp[MIX_MAXD], sp[MIX_MAXD];
    memcpy(xr, x + i * d, (size_t)d * sizeof(float));
    for (int64_t k = 0; k < steps; k++) {
      float c1 = p->c1[k], c2 = p->c2[k];
      record_tile(k, nrec, rec_k, rec_out, i * d, xr, d);
      df_mixture_score_row(mix, p->sig2[k], xr, s);
      if (p->method == DF_EULER || (p->method == DF_HEUN && k == steps - 1)) {
        for (int c = 0; c < d; c++) xr[c] = df_step_euler(xr[c], s[c], c1);
      } else if (p->method == DF_EULER_MARUYAMA) {
        for (int c = 0; c < d; c++) {
          uint64_t e = (uint64_t)(i * d + c);
          float z = df_randn_at(seed, stream, df_noise_index(e, (uint64_t)k, (uint64_t)n));
          xr[c] = df_step_em(xr[c], s[c], c1, c2, z);
        }
      } else {
        for (int c = 0; c < d; c++) xp[c] = df_step_euler(xr[c], s[c], c1);
        df_mixture_score_row(mix, p->sig2[k + 1], xp, sp);
        for (int c = 0; c < d; c++) xr[c] = df_step_heun(xr[c], s[c], sp[c], c1, c2);
      }
    }
    record_tile(steps, nrec, rec_k, rec_out, i * d, xr, d);
    memcpy(x + i * d, xr, (size_t)d * sizeof(float));
  }
}

int cpu_sample_fused(int dev, const df_plan *p, const df_mixture *m, float *x, int64_t rows,
                     int d, int nrec, const int64_t *rec_k, float *const *rec_out, uint64_t seed,
                     uint64_t stream)
{
  (void)dev;
  if (!m) {
    fused_exact(p, x, rows * d, nrec, rec_k, rec_out, seed, stream);
    return DF_OK;
  }
  if (d > MIX_MAXD) return df_fail(DF_EARG, "mixtures live in at most R^%d", MIX_MAXD);
  fused_mixture(p, m, x, rows, d, nrec, rec_k, rec_out, seed, stream);
  return DF_OK;
}

int cpu_sample_step(int dev, int stage, float *x, float *xp, const float *s, const float *s2,
                    float c1, float c2, int64_t n, int64_t k, uint64_t seed, uint64_t stream)
{
  (void)dev;
  switch (stage) {
  case DF_STAGE_EULER:
    for (int64_t i = 0; i < n; i++) x[i] = df_step_euler(x[i], s[i], c1);
    break;
  case DF_STAGE_EM:
#pragma omp parallel for schedule(static) if (n > CPU_CHUNK)
    for (int64_t i0 = 0; i0 < n; i0 += TILE) {
      float z[TILE];
      int64_t m = n - i0 < TILE ? n - i0 : TILE;
      normals(seed, stream, df_noise_index((uint64_t)i0, (uint64_t)k, (uint64_t)n), m, z);
      for (int64_t j = 0; j < m; j++) x[i0 + j] = df_step_em(x[i0 + j], s[i0 + j], c1, c2, z[j]);
    }
    break;
  case DF_STAGE_HEUN_PRED:
    for (int64_t i = 0; i < n; i++) xp[i] = df_step_euler(x[i], s[i], c1);
    break;
  case DF_STAGE_HEUN_CORR:
    for (int64_t i = 0; i < n; i++) x[i] = df_step_heun(x[i], s[i], s2[i], c1, c2);
    break;
  default:
    return df_fail(DF_EARG, "unknown sampler stage %d", stage);
  }
  return DF_OK;
}

/* ---- the solvers' per-row operations (solver.c) -------------------------------------------- */

/* rowlin with every coefficient a number: tiles of LIN_TILE elements, each summed in a local
   array before it is stored (so out may be any of the v, as in the general loop) with the
   general loop's operations in its order, hence the same values; gcc vectorises the tiles */
#define LIN_TILE 256
static void rowlin_scalars(float *out, int64_t n, int nv, const float *const *v, const float *a)
{
#pragma omp parallel for schedule(static) if (n > CPU_CHUNK)
  for (int64_t i0 = 0; i0 < n; i0 += LIN_TILE) {
    const int m = n - i0 < LIN_TILE ? (int)(n - i0) : LIN_TILE;
    float acc[LIN_TILE];
    const float a0 = a[0], *v0 = v[0] + i0;
    for (int i = 0; i < m; i++) acc[i] = a0 * v0[i];
    for (int j = 1; j < nv; j++) {
      const float aj = a[j], *vj = v[j] + i0;
      for (int i = 0; i < m; i++) acc[i] = acc[i] + aj * vj[i];
    }
    memcpy(out + i0, acc, (size_t)m * sizeof(float));
  }
}

int cpu_rowlin(int dev, float *out, int64_t rows, int d, int nv, const float *const *v,
               const float *const *coef, const float *s)
{
  (void)dev;
  int scalars = 1;
  for (int j = 0; j < nv; j++) scalars &= coef[j] == NULL;
  if (scalars) {
    rowlin_scalars(out, rows * d, nv, v, s);
    return DF_OK;
  }
#pragma omp parallel for schedule(static) if (rows * d > CPU_CHUNK)
  for (int64_t r = 0; r < rows; r++) {
    float a[DF_LIN_MAX];
    for (int j = 0; j < nv; j++) a[j] = coef[j] ? coef[j][r] : s[j];
    for (int c = 0; c < d; c++) {
      const int64_t i = r * d + c;
      float acc = a[0] * v[0][i];
      for (int j = 1; j < nv; j++) acc = acc + a[j] * v[j][i];
      out[i] = acc;
    }
  }
  return DF_OK;
}

int cpu_rowdot(int dev, float *out, const float *a, const float *b, int64_t rows, int d)
{
  (void)dev;
#pragma omp parallel for schedule(static) if (rows * d > CPU_CHUNK)
  for (int64_t r = 0; r < rows; r++) {
    double acc = 0.0;
    for (int c = 0; c < d; c++) acc += (double)a[r * d + c] * (double)b[r * d + c];
    out[r] = (float)acc;
  }
  return DF_OK;
}

int cpu_errnorm(int dev, float *out, const float *e, const float *a, const float *b, int64_t rows,
                int d, float rtol, float atol)
{
  (void)dev;
#pragma omp parallel for schedule(static) if (rows * d > CPU_CHUNK)
  for (int64_t r = 0; r < rows; r++) {
    double acc = 0.0;
    for (int c = 0; c < d; c++) {
      const int64_t i = r * d + c;
      float m = fabsf(a[i]) > fabsf(b[i]) ? fabsf(a[i]) : fabsf(b[i]);
      double q = (double)e[i] / ((double)atol + (double)rtol * (double)m);
      acc += q * q;
    }
    out[r] = (float)sqrt(acc / (double)d);
  }
  return DF_OK;
}

int cpu_random_at(int dev, int dist, float *x, int64_t n, uint64_t seed, uint64_t stream,
                  uint64_t base)
{
  (void)dev;
  if (dist == DF_NORMAL) {
    cpu_normal_run(seed, stream, base, n, x);
  } else if (dist == DF_UNIFORM) {
    cpu_uniform_run(seed, stream, base, n, x);
  } else {
#pragma omp parallel for schedule(static) if (n > CPU_CHUNK)
    for (int64_t i = 0; i < n; i++) x[i] = df_rademacher_at(seed, stream, base + (uint64_t)i);
  }
  return DF_OK;
}

int cpu_mixture_div(int dev, const df_mixture *m, float *out, const float *x,
                    const float *sig2_rows, float sig2, int64_t rows)
{
  (void)dev;
#pragma omp parallel for schedule(static) if (rows > 1024)
  for (int64_t i = 0; i < rows; i++)
    out[i] = df_mixture_div_row(m, sig2_rows ? sig2_rows[i] : sig2, x + i * m->d);
  return DF_OK;
}

int cpu_mixture_jvp(int dev, const df_mixture *m, float *out, const float *x, const float *v,
                    const float *sig2_rows, float sig2, int64_t rows)
{
  (void)dev;
#pragma omp parallel for schedule(static) if (rows > 1024)
  for (int64_t i = 0; i < rows; i++)
    df_mixture_jvp_row(m, sig2_rows ? sig2_rows[i] : sig2, x + i * m->d, v + i * m->d, out + i * m->d);
  return DF_OK;
}
