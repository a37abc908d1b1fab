/* bench/peak.c: the core's measured peak float32 FMA rate, one thread: 12 independent chains of
 * vector fmas (enough to cover the FMA latency on the pipes), GFLOP/s printed (2 FLOPs per lane
 * per fma). make bench builds it; bench/common.lua reads it for the "of peak" column. */
#define _POSIX_C_SOURCE 200112L
#include <stdio.h>
#include <time.h>

#if defined(__AVX512F__)
#define W 16
#elif defined(__AVX__)
#define W 8
#else
#define W 4
#endif
typedef float vf __attribute__((vector_size(W * 4)));

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define STEP(v) v = v * a + b /* one fma (-ffp-contract=fast) */

int main(void)
{
  vf a, b, v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11;
  for (int i = 0; i < W; i++) { a[i] = 0.5f; b[i] = 0.25f * (float)i; } /* (a fixed point: no overflow) */
  v0 = v1 = v2 = v3 = v4 = v5 = v6 = v7 = v8 = v9 = v10 = v11 = b;
  const long iters = 100000000L;
  double best = 0.0;
  for (int rep = 0; rep < 3; rep++) {
    double t0 = now();
    for (long it = 0; it < iters; it++) {
      STEP(v0); STEP(v1); STEP(v2); STEP(v3); STEP(v4); STEP(v5);
      STEP(v6); STEP(v7); STEP(v8); STEP(v9); STEP(v10); STEP(v11);
      __asm__ volatile("" : "+x"(v0), "+x"(v1), "+x"(v2), "+x"(v3), "+x"(v4), "+x"(v5), "+x"(v6),
                       "+x"(v7), "+x"(v8), "+x"(v9), "+x"(v10), "+x"(v11)); /* (no folding) */
    }
    double s = now() - t0, rate = 2.0 * W * 12.0 * (double)iters / s / 1e9;
    if (rate > best) best = rate;
  }
  vf sum = v0 + v1 + v2 + v3 + v4 + v5 + v6 + v7 + v8 + v9 + v10 + v11;
  printf("%.1f\n", best + 0.0 * (double)sum[0]);
  return 0;
}
