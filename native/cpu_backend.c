/* cpu_backend.c: the CPU backend table, the reference implementation of every operation.
 * Per-element arithmetic comes from dmath.h (the same code the CUDA kernels run); loops are
 * written so gcc vectorises them (op codes are folded into specialised copies of each loop by
 * always-inline helpers). Reductions accumulate in double over fixed blocks, so their result
 * never depends on how the work is split. */
#define _POSIX_C_SOURCE 200112L
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>
#include "status.h"
#include "backend.h"
#include "dmath.h"
#include "cpu.h"

#define INLINE static inline __attribute__((always_inline))

/* ---- memory ------------------------------------------------------------------------------ */

static int cpu_device_count(int *count) { *count = 1; return DF_OK; }

/* the processor's model name, from /proc/cpuinfo where there is one */
static int cpu_device_name(int dev, char *buf, size_t len)
{
  (void)dev;
  snprintf(buf, len, "cpu");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return DF_OK;
  char line[256];
  while (fgets(line, sizeof line, f)) {
    char *colon = strchr(line, ':');
    if (strncmp(line, "model name", 10) == 0 && colon) {
      colon += 1 + (colon[1] == ' ');
      colon[strcspn(colon, "\n")] = '\0';
      snprintf(buf, len, "%s", colon);
      break;
    }
  }
  fclose(f);
  return DF_OK;
}

/* bytes the machine can still give without swapping (MemAvailable), so that an absurd size is
   an error here instead of the OOM killer later; asked only for large requests */
static double available_bytes(void)
{
  double avail = -1.0;
  FILE *f = fopen("/proc/meminfo", "r");
  if (f) {
    char line[256];
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "MemAvailable: %lf kB", &avail) == 1) { avail *= 1024.0; break; }
    fclose(f);
  }
  if (avail < 0) {
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    avail = pages > 0 && size > 0 ? (double)pages * (double)size : 1e18;
  }
  return avail;
}

static int cpu_alloc(int dev, int64_t n, float **p)
{
  (void)dev;
  double bytes = (double)n * sizeof(float);
  if (bytes > 256e6) {
    /* with a margin: a block that takes the last free page leaves the machine thrashing while
       it is filled (24 GB of 24.5 was still running after 20 s) */
    double avail = available_bytes(), margin = avail * 0.1 > 512e6 ? avail * 0.1 : 512e6;
    if (bytes > avail - margin)
      return df_fail(DF_ENOMEM, "out of memory: %.3g GB requested, %.3g GB available (less a "
                     "margin of %.2g GB)", bytes / 1e9, avail / 1e9, margin / 1e9);
  }
  /* plain malloc: glibc then reuses freed large blocks instead of mapping fresh pages for each
     (posix_memalign maps and faults every large block anew); vector loads need no alignment */
  size_t sz = (size_t)(n > 0 ? n : 1) * sizeof(float);
  float *q = (float *)malloc(sz);
  if (q == NULL) return df_fail(DF_ENOMEM, "out of memory allocating %.3g MB", (double)sz / 1e6);
  *p = q;
  return DF_OK;
}

static void cpu_release(int dev, float *p) { (void)dev; free(p); }

static int cpu_copy(int dev, float *dst, const float *src, int64_t n)
{
  (void)dev;
  if (n > 0) memmove(dst, src, (size_t)n * sizeof(float));
  return DF_OK;
}

static int cpu_copy2d(int dev, float *dst, int64_t ldd, const float *src, int64_t lds,
                      int64_t rows, int64_t cols)
{
  (void)dev;
  for (int64_t r = 0; r < rows; r++)
    memmove(dst + r * ldd, src + r * lds, (size_t)cols * sizeof(float));
  return DF_OK;
}

static int cpu_fill(int dev, float *x, int64_t n, float v)
{
  (void)dev;
#pragma omp parallel for schedule(static) if (n > CPU_CHUNK)
  for (int64_t i = 0; i < n; i++) x[i] = v;
  return DF_OK;
}

static int cpu_ramp(int dev, float *x, int64_t n, double start, double step, double last)
{
  (void)dev;
  for (int64_t i = 0; i < n; i++) x[i] = (float)(start + (double)i * step);
  if (n > 0) x[n - 1] = (float)last;
  return DF_OK;
}

/* ---- random ------------------------------------------------------------------------------ */

static int cpu_random(int dev, int dist, float *x, int64_t n, uint64_t seed, uint64_t stream)
{
  (void)dev;
  int64_t nc = (n + CPU_CHUNK - 1) / CPU_CHUNK; /* element i is element i of the stream anyway */
#pragma omp parallel for schedule(static) if (nc > 1)
  for (int64_t c = 0; c < nc; c++) {
    int64_t lo = c * CPU_CHUNK, len = n - lo < CPU_CHUNK ? n - lo : CPU_CHUNK;
    if (dist == DF_NORMAL) cpu_normal_run(seed, stream, (uint64_t)lo, len, x + lo);
    else cpu_uniform_run(seed, stream, (uint64_t)lo, len, x + lo);
  }
  return DF_OK;
}

/* ---- elementwise -------------------------------------------------------------------------- */

INLINE void unary_loop(int op, float *out, const float *a, int64_t n)
{
  for (int64_t i = 0; i < n; i++) out[i] = df_unary_apply(op, a[i]);
}

static void unary_any(int op, float *out, const float *a, int64_t n)
{
  switch (op) { /* one specialised loop per op */
  case DF_NEG: unary_loop(DF_NEG, out, a, n); break;
  case DF_EXP: unary_loop(DF_EXP, out, a, n); break;
  case DF_LOG: unary_loop(DF_LOG, out, a, n); break;
  case DF_SQRT: unary_loop(DF_SQRT, out, a, n); break;
  case DF_ABS: unary_loop(DF_ABS, out, a, n); break;
  case DF_SIN: unary_loop(DF_SIN, out, a, n); break;
  case DF_COS: unary_loop(DF_COS, out, a, n); break;
  case DF_TANH: unary_loop(DF_TANH, out, a, n); break;
  case DF_SILU: unary_loop(DF_SILU, out, a, n); break;
  case DF_SQUARE: unary_loop(DF_SQUARE, out, a, n); break;
  case DF_SIGMOID: unary_loop(DF_SIGMOID, out, a, n); break;
  case DF_RELU: unary_loop(DF_RELU, out, a, n); break;
  case DF_GELU: unary_loop(DF_GELU, out, a, n); break;
  case DF_NORMCDF: unary_loop(DF_NORMCDF, out, a, n); break;
  default: break;
  }
}

static int cpu_unary(int dev, int op, float *out, const float *a, int64_t n)
{
  (void)dev;
  if (op < 0 || op >= DF_NUNARY) return df_fail(DF_EARG, "unknown unary op %d", op);
  int64_t nc = (n + CPU_CHUNK - 1) / CPU_CHUNK;
#pragma omp parallel for schedule(static) if (nc > 1)
  for (int64_t c = 0; c < nc; c++) {
    int64_t lo = c * CPU_CHUNK, len = n - lo < CPU_CHUNK ? n - lo : CPU_CHUNK;
    unary_any(op, out + lo, a + lo, len);
  }
  return DF_OK;
}

/* one contiguous row of a binary op; as/bs are 1 (walk) or 0 (broadcast one value) */
INLINE void binary_row(int op, float *o, const float *a, int64_t as, const float *b, int64_t bs,
                       int64_t n)
{
  if (as && bs) {
    for (int64_t i = 0; i < n; i++) o[i] = df_binary_apply(op, a[i], b[i]);
  } else if (as) {
    float bv = b[0];
    for (int64_t i = 0; i < n; i++) o[i] = df_binary_apply(op, a[i], bv);
  } else if (bs) {
    float av = a[0];
    for (int64_t i = 0; i < n; i++) o[i] = df_binary_apply(op, av, b[i]);
  } else {
    float v = df_binary_apply(op, a[0], b[0]);
    for (int64_t i = 0; i < n; i++) o[i] = v;
  }
}

static void binary_row_op(int op, float *o, const float *a, int64_t as, const float *b,
                          int64_t bs, int64_t n)
{
  switch (op) {
  case DF_ADD: binary_row(DF_ADD, o, a, as, b, bs, n); break;
  case DF_SUB: binary_row(DF_SUB, o, a, as, b, bs, n); break;
  case DF_MUL: binary_row(DF_MUL, o, a, as, b, bs, n); break;
  case DF_DIV: binary_row(DF_DIV, o, a, as, b, bs, n); break;
  case DF_POW: binary_row(DF_POW, o, a, as, b, bs, n); break;
  case DF_MAXIMUM: binary_row(DF_MAXIMUM, o, a, as, b, bs, n); break;
  case DF_MINIMUM: binary_row(DF_MINIMUM, o, a, as, b, bs, n); break;
  default: break;
  }
}

static int cpu_binary(int dev, int op, float *out, const float *a, const float *b,
                      const df_bcast *bc)
{
  (void)dev;
  if (op < 0 || op >= DF_NBINARY) return df_fail(DF_EARG, "unknown binary op %d", op);
  const int64_t *s = bc->shape, *sa = bc->sa, *sb = bc->sb;
  int64_t row = s[3];
  if (bc->n == 0) return DF_OK;
  /* work items: (outer row, chunk of the row), independent of each other */
  int64_t outer = s[0] * s[1] * s[2], per = (row + CPU_CHUNK - 1) / CPU_CHUNK, items = outer * per;
#pragma omp parallel for schedule(static) if (bc->n > CPU_CHUNK && items > 1)
  for (int64_t it = 0; it < items; it++) {
    int64_t r = it / per, lo = (it % per) * CPU_CHUNK, len = row - lo < CPU_CHUNK ? row - lo : CPU_CHUNK;
    int64_t i2 = r % s[2], i1 = (r / s[2]) % s[1], i0 = r / (s[1] * s[2]);
    const float *pa = a + i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + lo * sa[3];
    const float *pb = b + i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + lo * sb[3];
    binary_row_op(op, out + r * row + lo, pa, sa[3], pb, sb[3], len);
  }
  return DF_OK;
}

static int cpu_binary_scalar(int dev, int op, float *out, const float *a, float s,
                             int scalar_left, int64_t n)
{
  (void)dev;
  if (op < 0 || op >= DF_NBINARY) return df_fail(DF_EARG, "unknown binary op %d", op);
  int64_t nc = (n + CPU_CHUNK - 1) / CPU_CHUNK;
#pragma omp parallel for schedule(static) if (nc > 1)
  for (int64_t c = 0; c < nc; c++) {
    int64_t lo = c * CPU_CHUNK, len = n - lo < CPU_CHUNK ? n - lo : CPU_CHUNK;
    if (scalar_left) binary_row_op(op, out + lo, &s, 0, a + lo, 1, len);
    else binary_row_op(op, out + lo, a + lo, 1, &s, 0, len);
  }
  return DF_OK;
}

/* ---- reductions --------------------------------------------------------------------------- */

/* sum of a[0..n) (or of (a - c)^2) in double: eight lanes, combined in a fixed order */
static double block_sum(const float *a, int64_t n, int sq, double c)
{
  double s[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
  int64_t i = 0;
  if (sq) {
    for (; i + 8 <= n; i += 8)
      for (int j = 0; j < 8; j++) { double d = (double)a[i + j] - c; s[j] += d * d; }
    for (; i < n; i++) { double d = (double)a[i] - c; s[0] += d * d; }
  } else {
    for (; i + 8 <= n; i += 8)
      for (int j = 0; j < 8; j++) s[j] += (double)a[i + j];
    for (; i < n; i++) s[0] += (double)a[i];
  }
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

#define SUM_BLOCK 4096

static int cpu_reduce_all(int dev, int op, const float *a, int64_t n, double param, double *res)
{
  (void)dev;
  if (op == DF_RSUM || op == DF_RSSD) {
    /* block sums (in parallel when there are many), then added in block order */
    int64_t nb = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    double total = 0.0, *part = nb > 1 ? (double *)malloc((size_t)nb * sizeof(double)) : NULL;
    if (!part) {
      for (int64_t i = 0; i < n; i += SUM_BLOCK)
        total += block_sum(a + i, n - i < SUM_BLOCK ? n - i : SUM_BLOCK, op == DF_RSSD, param);
    } else {
#pragma omp parallel for schedule(static) if (n > 8 * SUM_BLOCK)
      for (int64_t b = 0; b < nb; b++) {
        int64_t i = b * SUM_BLOCK;
        part[b] = block_sum(a + i, n - i < SUM_BLOCK ? n - i : SUM_BLOCK, op == DF_RSSD, param);
      }
      for (int64_t b = 0; b < nb; b++) total += part[b];
      free(part);
    }
    *res = total;
    return DF_OK;
  }
  if (op == DF_RMIN || op == DF_RMAX) {
    float m = a[0];
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
      float v = a[i];
      nan |= v != v;
      m = op == DF_RMIN ? (v < m ? v : m) : (v > m ? v : m);
    }
    *res = nan ? NAN : (double)m;
    return DF_OK;
  }
  return df_fail(DF_EARG, "unknown reduction %d", op);
}

static int cpu_reduce_dim(int dev, int op, float *out, float *idx, const float *a, int64_t outer,
                          int64_t len, int64_t inner)
{
  (void)dev;
#pragma omp parallel for schedule(static) if (outer * inner > 1 && outer * len * inner > CPU_CHUNK)
  for (int64_t oi = 0; oi < outer * inner; oi++) {
      int64_t o = oi / inner, i = oi % inner;
      const float *p = a + o * len * inner + i;
      float *dst = out + o * inner + i;
      if (op == DF_RMIN || op == DF_RMAX) {
        float m = p[0];
        int64_t at = 0;
        for (int64_t l = 1; l < len && m == m; l++) {
          float v = p[l * inner];
          if (v != v || (op == DF_RMIN ? v < m : v > m)) { m = v; at = l; }
        }
        *dst = m;
        if (idx) idx[o * inner + i] = (float)(at + 1);
        continue;
      }
      double sum = 0.0;
      for (int64_t l = 0; l < len; l++) sum += (double)p[l * inner];
      if (op == DF_RSUM) { *dst = (float)sum; continue; }
      double mean = sum / (double)len;
      if (op == DF_RMEAN) { *dst = (float)mean; continue; }
      double ssd = 0.0;
      for (int64_t l = 0; l < len; l++) {
        double d = (double)p[l * inner] - mean;
        ssd += d * d;
      }
      double var = len > 1 ? ssd / (double)(len - 1) : NAN;
      *dst = (float)(op == DF_RSTD ? sqrt(var) : var);
    }
  return DF_OK;
}

/* ---- matmul ------------------------------------------------------------------------------ */

/* C (m x n) = A (m x k) B (k x n): every C[i][j] is the sum over p in increasing order of the
   rounded products a[i][p] b[p][j] (a multiply, then an add: no fma), whatever the blocking.
   Register tiles of 4 rows x 2 vectors of columns accumulate over a chunk of KC values of p from
   a packed copy of B's panel (contiguous, in L1), so each load of B serves four rows and each
   broadcast of A two vectors; a later chunk continues from the partial sums stored in C.
   Columns past the last whole panel go through gemm_cols. The vector is the widest register (the
   sums do not depend on it). */
#ifdef __AVX512F__
#define GV 16
typedef float gvec __attribute__((vector_size(64)));
#else
#define GV 8
typedef float gvec __attribute__((vector_size(32)));
#endif
#define KC 128
#pragma GCC diagnostic ignored "-Wpsabi" /* (gvec never crosses a call: always inlined) */

/* rows i .. i + rows - 1 of the panel at j0, over p = p0 .. p0 + kc - 1 (bp: B's rows p0.. of
   the panel, 2 GV floats each) */
static inline __attribute__((always_inline)) void gemm_tile(float *c, const float *a,
                                                             const float *bp, int64_t k,
                                                             int64_t n, int64_t i, int64_t j0,
                                                             int64_t p0, int64_t kc, int rows)
{
  gvec acc[4][2];
  for (int r = 0; r < rows; r++)
    for (int h = 0; h < 2; h++) {
      if (p0 == 0) acc[r][h] = (gvec){ 0 };
      else memcpy(&acc[r][h], c + (i + r) * n + j0 + h * GV, sizeof acc[r][h]);
    }
  for (int64_t p = 0; p < kc; p++) {
    gvec b0, b1;
    memcpy(&b0, bp + p * 2 * GV, sizeof b0);
    memcpy(&b1, bp + p * 2 * GV + GV, sizeof b1);
    for (int r = 0; r < rows; r++) {
      float av = a[(i + r) * k + p0 + p];
      acc[r][0] += av * b0; /* scalar times vector: every lane, then the add */
      acc[r][1] += av * b1;
    }
  }
  for (int r = 0; r < rows; r++)
    for (int h = 0; h < 2; h++) memcpy(c + (i + r) * n + j0 + h * GV, &acc[r][h], sizeof acc[r][h]);
}

/* columns j0 .. n - 1: four rows of A share each pass over a row of B */
static void gemm_cols(float *c, const float *a, const float *b, int64_t m, int64_t k, int64_t n,
                      int64_t j0)
{
  int64_t nb = n - j0, i = 0;
  for (; i + 4 <= m; i += 4) {
    float *c0 = c + i * n + j0, *c1 = c0 + n, *c2 = c1 + n, *c3 = c2 + n;
    for (int64_t j = 0; j < nb; j++) c0[j] = c1[j] = c2[j] = c3[j] = 0.0f;
    for (int64_t p = 0; p < k; p++) {
      const float *br = b + p * n + j0;
      float a0 = a[i * k + p], a1 = a[(i + 1) * k + p], a2 = a[(i + 2) * k + p],
            a3 = a[(i + 3) * k + p];
      for (int64_t j = 0; j < nb; j++) {
        float bv = br[j];
        c0[j] += a0 * bv; c1[j] += a1 * bv; c2[j] += a2 * bv; c3[j] += a3 * bv;
      }
    }
  }
  for (; i < m; i++) {
    float *c0 = c + i * n + j0;
    for (int64_t j = 0; j < nb; j++) c0[j] = 0.0f;
    for (int64_t p = 0; p < k; p++) {
      const float *br = b + p * n + j0;
      float a0 = a[i * k + p];
      for (int64_t j = 0; j < nb; j++) c0[j] += a0 * br[j];
    }
  }
}

static void gemm(float *c, const float *a, const float *b, int64_t m, int64_t k, int64_t n)
{
  const int64_t nw = m < 4 ? 0 : n / (2 * GV) * (2 * GV); /* (a panel for fewer rows: no gain) */
  float bp[KC * 2 * GV];
  for (int64_t j0 = 0; j0 < nw; j0 += 2 * GV)
    for (int64_t p0 = 0; p0 < k; p0 += KC) {
      int64_t kc = k - p0 < KC ? k - p0 : KC, i = 0;
      for (int64_t p = 0; p < kc; p++) memcpy(bp + p * 2 * GV, b + (p0 + p) * n + j0, 2 * GV * sizeof(float));
      for (; i + 4 <= m; i += 4) gemm_tile(c, a, bp, k, n, i, j0, p0, kc, 4);
      for (; i < m; i++) gemm_tile(c, a, bp, k, n, i, j0, p0, kc, 1);
    }
  if (nw < n) gemm_cols(c, a, b, m, k, n, nw);
}

static int cpu_matmul(int dev, float *c, const float *a, const float *b, int64_t batch,
                      int64_t m, int64_t k, int64_t n, int64_t stride_a, int64_t stride_b)
{
  (void)dev;
  /* blocks of 32 rows of each product are independent */
  int64_t rb = (m + 31) / 32;
#pragma omp parallel for schedule(static) if (batch * m * k * n > 1 << 20 && batch * rb > 1)
  for (int64_t it = 0; it < batch * rb; it++) {
    int64_t t = it / rb, r0 = (it % rb) * 32, rows = m - r0 < 32 ? m - r0 : 32;
    gemm(c + t * m * n + r0 * n, a + t * stride_a + r0 * k, b + t * stride_b, rows, k, n);
  }
  return DF_OK;
}

/* ---- histogram ---------------------------------------------------------------------------- */

static int cpu_histogram(int dev, const float *x, int64_t n, int64_t bins, double lo, double hi,
                         int64_t *counts)
{
  (void)dev;
  double scale = (double)bins / (hi - lo);
  for (int64_t b = 0; b < bins; b++) counts[b] = 0;
  for (int64_t i = 0; i < n; i++) {
    double v = (double)x[i];
    if (!(v >= lo && v <= hi)) continue; /* outside, or NaN */
    int64_t b = (int64_t)((v - lo) * scale);
    counts[b >= bins ? bins - 1 : b]++;
  }
  return DF_OK;
}

static int cpu_sync(int dev) { (void)dev; return DF_OK; }

const df_backend df_cpu_backend = {
  .name = "cpu",
  .device_count = cpu_device_count,
  .device_name = cpu_device_name,
  .alloc = cpu_alloc,
  .release = cpu_release,
  .upload = cpu_copy, /* host memory is device memory */
  .download = cpu_copy,
  .copy2d = cpu_copy2d,
  .fill = cpu_fill,
  .ramp = cpu_ramp,
  .random = cpu_random,
  .unary = cpu_unary,
  .binary = cpu_binary,
  .binary_scalar = cpu_binary_scalar,
  .reduce_all = cpu_reduce_all,
  .reduce_dim = cpu_reduce_dim,
  .matmul = cpu_matmul,
  .histogram = cpu_histogram,
  .sync = cpu_sync,
  .diffuser_eval = cpu_diffuser_eval,
  .score_eval = cpu_score_eval,
  .mixture_logpdf = cpu_mixture_logpdf,
  .mixture_sample = cpu_mixture_sample,
  .sample_fused = cpu_sample_fused,
  .sample_step = cpu_sample_step,
  .rowlin = cpu_rowlin,
  .rowdot = cpu_rowdot,
  .errnorm = cpu_errnorm,
  .random_at = cpu_random_at,
  .mixture_div = cpu_mixture_div,
  .mixture_jvp = cpu_mixture_jvp,
  .net_workspace = cpu_net_workspace,
  .net_forward = cpu_net_forward,
  .net_backward = cpu_net_backward,
  .net_sample = cpu_net_sample,
  .dsm_step = cpu_dsm_step,
  .adam = cpu_adam,
  .ema = cpu_ema,
  .net_jvp_workspace = cpu_net_jvp_workspace,
  .net_jvp = cpu_net_jvp,
};
