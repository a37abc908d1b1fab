/* cuda_backend.h: the plain-C interface between the Lua binding (l_cuda.c, built by cc without
 * the CUDA headers) and the CUDA side (cuda_backend.cu, alloc.cu, built by nvcc).
 *
 * Nothing here is thread-safe: one Lua state drives the core at a time (as status.h says), and
 * the allocator's free lists and the per-device cuBLAS handles are plain process globals.
 * Every function returns a status (status.h); on failure the message has gone to the core's
 * error reporter (df_core_api.fail) and is also kept in df_cuda_last_error(). */
#ifndef DF_CUDA_BACKEND_H
#define DF_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* the table registered with the core under the name "cuda" */
extern const df_backend df_cuda_backend;

/* the core's error reporter (df_core_api.fail), set once when the module loads */
typedef int (*df_fail_fn)(int code, const char *fmt, ...);
void df_cuda_set_fail(df_fail_fn fail);

/* record a message (printf-style): to the core's reporter and to df_cuda_last_error(); returns
   code so callers write `return df_cuda_fail(...)` */
int df_cuda_fail(int code, const char *fmt, ...)
#ifdef __GNUC__
  __attribute__((format(printf, 2, 3)))
#endif
  ;
const char *df_cuda_last_error(void);

/* devices: *count >= 1 or a failure "no usable CUDA device: ..." */
int df_cuda_device_count(int *count);
int df_cuda_synchronize(int dev);

/* what benchmarks compare against: the chip's size and clocks, and the peaks they imply */
typedef struct df_cuda_props {
  char name[256];
  int cc_major, cc_minor, sm_count;
  int clock_khz, mem_clock_khz, bus_width_bits;
  int fp32_lanes_per_sm;     /* by compute capability (CUDA programming guide's table) */
  int64_t total_mem;
  double peak_fp32_flops;    /* sm_count * lanes * 2 (an FMA) * clock */
  double peak_mem_bytes;     /* 2 (double data rate) * memory clock * bus width: a nominal figure;
                                HBM3e parts report a clock below their rated speed */
} df_cuda_props;
int df_cuda_device_props(int dev, df_cuda_props *p);

/* the training graphs (cuda_nn.cu): configurations captured, graph launches, training steps run
   without a graph because capturing failed (the same kernels launched one by one: the same
   results, slower), and the failure's message */
typedef struct df_cuda_graphstats {
  int64_t captures, launches, fallback_steps;
  char last_failure[512];
} df_cuda_graphstats;
void df_cuda_graph_stats(df_cuda_graphstats *st);

/* ---- the caching allocator (alloc.cu) ----------------------------------------------------
 * Requests are rounded up to a size class: multiples of 512 B up to 1 MiB, multiples of 2 MiB
 * above. A released block goes to its device's free list (no cudaFree); an allocation takes a
 * cached block of its class (small) or the smallest cached block of at most 5/4 of its size
 * (large), and calls cudaMalloc only on a miss. A failed cudaMalloc empties the device's cache
 * and retries once. Blocks are reused right after release: every kernel and copy runs on the
 * legacy default stream, so work queued on the old owner finishes before the new one's. */
typedef struct df_cuda_memstats {
  int64_t bytes_in_use;      /* rounded sizes of live blocks */
  int64_t bytes_cached;      /* held in the free lists */
  int64_t peak_bytes_in_use;
  int64_t blocks_in_use, blocks_cached;
  int64_t alloc_calls;       /* requests served */
  int64_t cache_hits;        /* ... from the free lists */
  int64_t cuda_malloc_calls; /* successful cudaMalloc calls */
  int64_t cuda_free_calls;
} df_cuda_memstats;

int df_cuda_malloc(int dev, size_t bytes, void **p); /* a block of at least max(bytes, 1) */
void df_cuda_free(int dev, void *p);                 /* back to the cache; NULL is ignored */
int df_cuda_empty_cache(int dev);                    /* cudaFree every cached block; dev < 0: all */
void df_cuda_memory_stats(int dev, df_cuda_memstats *st);

#ifdef __cplusplus
}
#endif

#endif
