/* alloc.cu: the caching allocator behind every CUDA tensor (see cuda_backend.h).
 *
 * Loops of small ops allocate and free the same few sizes over and over; cudaMalloc and cudaFree
 * cost microseconds and synchronise the device, so freed blocks are kept per device and handed
 * out again. Size classes:
 *   small  (<= 1 MiB): rounded up to a multiple of 512 B; reused only by the same class;
 *   large  (>  1 MiB): rounded up to a multiple of 2 MiB; reused by a request of at least 4/5
 *          of the block (the smallest such cached block), so at most a quarter is wasted.
 * cudaMalloc is called only on a miss. When it reports cudaErrorMemoryAllocation, every cached
 * block of that device is freed and the call retried once; a second failure is an error naming
 * the size. df_cuda_empty_cache gives all cached blocks back to the driver.
 *
 * Reuse right after release is safe because every kernel, copy and cuBLAS call of the backend
 * runs on the legacy default stream: the work that used the block is queued before any work of
 * its next owner. Not thread-safe (the free lists are process globals): one Lua state drives the
 * core at a time. The state is allocated once and never destroyed, so nothing runs at process
 * exit after the CUDA runtime has shut down. */
#include <cuda_runtime.h>
#include <map>
#include <new>
#include <unordered_map>
#include "status.h"
#include "cuda_backend.h"

namespace {

const size_t SMALL_MAX = (size_t)1 << 20;   /* 1 MiB */
const size_t SMALL_ROUND = 512;
const size_t LARGE_ROUND = (size_t)2 << 20; /* 2 MiB */
const int MAXDEV = 64;

struct DevCache {
  std::unordered_map<void *, size_t> live;   /* block -> rounded size */
  std::multimap<size_t, void *> cached;      /* rounded size -> free block */
  df_cuda_memstats st{};
};

DevCache *caches[MAXDEV];

size_t round_size(size_t bytes)
{
  if (bytes == 0) bytes = 1;
  if (bytes <= SMALL_MAX) return (bytes + SMALL_ROUND - 1) / SMALL_ROUND * SMALL_ROUND;
  return (bytes + LARGE_ROUND - 1) / LARGE_ROUND * LARGE_ROUND;
}

int cuda_fail(const char *what, int dev, cudaError_t e)
{
  return df_cuda_fail(e == cudaErrorMemoryAllocation ? DF_ENOMEM : DF_EDEVICE,
                      "cuda alloc: %s on cuda:%d -> %s (%d): %s", what, dev, cudaGetErrorName(e),
                      (int)e, cudaGetErrorString(e));
}

int check_dev(int dev)
{
  if (dev < 0 || dev >= MAXDEV)
    return df_cuda_fail(DF_EARG, "cuda alloc: device index %d out of range (0 to %d)", dev,
                        MAXDEV - 1);
  return DF_OK;
}

DevCache *cache_of(int dev)
{
  if (!caches[dev]) caches[dev] = new (std::nothrow) DevCache();
  return caches[dev];
}

/* cudaFree every cached block of one device; the first error is reported, all blocks are
   dropped from the list either way (a failed cudaFree leaves nothing we could retry) */
int empty_one(int dev)
{
  DevCache *c = caches[dev];
  if (!c || c->cached.empty()) return DF_OK;
  int st = DF_OK;
  cudaError_t e = cudaSetDevice(dev);
  if (e != cudaSuccess) st = cuda_fail("cudaSetDevice", dev, e);
  for (auto &kv : c->cached) {
    e = cudaFree(kv.second);
    c->st.cuda_free_calls++;
    if (e != cudaSuccess && st == DF_OK) st = cuda_fail("cudaFree", dev, e);
  }
  c->cached.clear();
  c->st.bytes_cached = 0;
  c->st.blocks_cached = 0;
  return st;
}

} // namespace

extern "C" int df_cuda_malloc(int dev, size_t bytes, void **p)
{
  int st = check_dev(dev);
  if (st) return st;
  if (bytes > ((size_t)1 << 50))
    return df_cuda_fail(DF_ENOMEM, "cuda alloc: %.4g GiB requested on cuda:%d is too large",
                        (double)bytes / (1 << 30), dev);
  DevCache *c = cache_of(dev);
  if (!c) return df_cuda_fail(DF_ENOMEM, "cuda alloc: out of host memory");
  size_t sz = round_size(bytes);
  try {
    /* a cached block: the same class when small, the smallest one within 5/4 when large */
    auto it = c->cached.lower_bound(sz);
    if (it != c->cached.end() &&
        (it->first == sz || (sz > SMALL_MAX && it->first <= sz + sz / 4))) {
      void *q = it->second;
      size_t qs = it->first;
      c->live.emplace(q, qs);
      c->cached.erase(it);
      c->st.bytes_cached -= (int64_t)qs;
      c->st.blocks_cached--;
      c->st.bytes_in_use += (int64_t)qs;
      c->st.blocks_in_use++;
      if (c->st.bytes_in_use > c->st.peak_bytes_in_use)
        c->st.peak_bytes_in_use = c->st.bytes_in_use;
      c->st.alloc_calls++;
      c->st.cache_hits++;
      *p = q;
      return DF_OK;
    }
    cudaError_t e = cudaSetDevice(dev);
    if (e != cudaSuccess) return cuda_fail("cudaSetDevice", dev, e);
    void *q = NULL;
    e = cudaMalloc(&q, sz);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError(); /* not sticky: clear it, give the cache back, try once more */
      empty_one(dev);
      e = cudaMalloc(&q, sz);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      if (e == cudaErrorMemoryAllocation)
        return df_cuda_fail(DF_ENOMEM,
                            "cuda alloc: out of memory allocating %.4g MiB on cuda:%d (%.4g MiB "
                            "in use by diffuse, cache emptied) -> %s (%d): %s",
                            (double)sz / (1 << 20), dev, (double)c->st.bytes_in_use / (1 << 20),
                            cudaGetErrorName(e), (int)e, cudaGetErrorString(e));
      return cuda_fail("cudaMalloc", dev, e);
    }
    c->st.cuda_malloc_calls++;
    try {
      c->live.emplace(q, sz);
    } catch (...) {
      cudaFree(q);
      c->st.cuda_free_calls++;
      throw;
    }
    c->st.bytes_in_use += (int64_t)sz;
    c->st.blocks_in_use++;
    if (c->st.bytes_in_use > c->st.peak_bytes_in_use) c->st.peak_bytes_in_use = c->st.bytes_in_use;
    c->st.alloc_calls++;
    *p = q;
    return DF_OK;
  } catch (...) {
    return df_cuda_fail(DF_ENOMEM, "cuda alloc: out of host memory for the block table");
  }
}

extern "C" void df_cuda_free(int dev, void *p)
{
  if (!p || dev < 0 || dev >= MAXDEV || !caches[dev]) return;
  DevCache *c = caches[dev];
  auto it = c->live.find(p);
  if (it == c->live.end()) return; /* not ours: nothing sensible to do in a void release */
  size_t sz = it->second;
  c->live.erase(it);
  c->st.bytes_in_use -= (int64_t)sz;
  c->st.blocks_in_use--;
  try {
    c->cached.emplace(sz, p);
    c->st.bytes_cached += (int64_t)sz;
    c->st.blocks_cached++;
  } catch (...) { /* no room in the free list: give it straight back */
    if (cudaSetDevice(dev) == cudaSuccess) cudaFree(p);
    (void)cudaGetLastError();
    c->st.cuda_free_calls++;
  }
}

extern "C" int df_cuda_empty_cache(int dev)
{
  if (dev >= 0) {
    int st = check_dev(dev);
    return st ? st : empty_one(dev);
  }
  int first = DF_OK;
  for (int d = 0; d < MAXDEV; d++) {
    int st = empty_one(d);
    if (st && !first) first = st;
  }
  return first;
}

extern "C" void df_cuda_memory_stats(int dev, df_cuda_memstats *st)
{
  *st = df_cuda_memstats();
  if (dev >= 0 && dev < MAXDEV && caches[dev]) *st = caches[dev]->st;
}
