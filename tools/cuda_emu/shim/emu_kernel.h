/* The kernel side of the CUDA emulation: built-in variables, barriers, warp primitives,
 * atomics, and the launcher the preprocessed <<<...>>> launches call. */
#ifndef EMU_KERNEL_H
#define EMU_KERNEL_H

namespace emu {

extern uint3 v_threadIdx;
extern uint3 v_blockIdx;
extern dim3 v_blockDim;
extern dim3 v_gridDim;

void block_barrier();
void warp_barrier(unsigned mask);
void *dyn_smem();

/* one 8-byte slot per thread for warp exchanges: put your value, meet, read another lane's */
uint64_t exchange(unsigned mask, uint64_t mine, int src_lane, bool *valid);
unsigned lane_id();
unsigned ballot(unsigned mask, int pred);

struct Cfg {
  dim3 g, b;
  size_t smem;
  cudaStream_t st;
  Cfg(dim3 g_, dim3 b_, size_t s = 0, cudaStream_t t = 0) : g(g_), b(b_), smem(s), st(t) {}
};

void submit(const char *name, const Cfg &c, std::function<void()> body);

template <class... P, class... A>
void launch(const char *name, void (*f)(P...), const Cfg &c, A &&...a)
{
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  auto tup = std::make_shared<std::tuple<typename std::decay<P>::type...>>(std::forward<A>(a)...);
  submit(name, c, [f, tup]() { std::apply(f, *tup); });
}

template <class T> static inline uint64_t to_slot(T v)
{
  static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
  uint64_t u = 0;
  memcpy(&u, &v, sizeof v);
  return u;
}
template <class T> static inline T from_slot(uint64_t u)
{
  T v;
  memcpy(&v, &u, sizeof v);
  return v;
}

} // namespace emu

#define threadIdx (::emu::v_threadIdx)
#define blockIdx (::emu::v_blockIdx)
#define blockDim (::emu::v_blockDim)
#define gridDim (::emu::v_gridDim)
#define warpSize 32

static inline void __syncthreads() { ::emu::block_barrier(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::warp_barrier(mask); }
static inline void __threadfence() {}
static inline void __threadfence_block() {}

template <class T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
  int lane = (int)::emu::lane_id();
  int s = (lane & ~(width - 1)) + (src & (width - 1));
  bool ok;
  return ::emu::from_slot<T>(::emu::exchange(mask, ::emu::to_slot(v), s, &ok));
}
template <class T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
  int lane = (int)::emu::lane_id();
  int s = (int)((lane & (width - 1)) + delta) >= width ? lane : lane + (int)delta;
  bool ok;
  return ::emu::from_slot<T>(::emu::exchange(mask, ::emu::to_slot(v), s, &ok));
}
template <class T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
  int lane = (int)::emu::lane_id();
  int s = (lane & (width - 1)) < (int)delta ? lane : lane - (int)delta;
  bool ok;
  return ::emu::from_slot<T>(::emu::exchange(mask, ::emu::to_slot(v), s, &ok));
}
template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int lmask, int width = 32)
{
  int lane = (int)::emu::lane_id();
  int s = lane ^ lmask;
  if ((s & ~(width - 1)) != (lane & ~(width - 1))) s = lane;
  bool ok;
  return ::emu::from_slot<T>(::emu::exchange(mask, ::emu::to_slot(v), s, &ok));
}
static inline unsigned __ballot_sync(unsigned mask, int pred) { return ::emu::ballot(mask, pred); }
static inline int __any_sync(unsigned mask, int pred) { return (::emu::ballot(mask, pred) & mask) != 0; }
static inline int __all_sync(unsigned mask, int pred) { return (::emu::ballot(mask, pred) & mask) == mask; }
static inline unsigned __activemask() { return 0xffffffffu; }

template <class T> static inline T __ldg(const T *p) { return *p; }

static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
static inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
static inline double __longlong_as_double(long long u) { double f; memcpy(&f, &u, 8); return f; }
static inline long long __double_as_longlong(double f) { long long u; memcpy(&u, &f, 8); return u; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __ffs(int x) { return __builtin_ffs(x); }

/* atomics: one host thread runs all device threads, and a thread only switches at barriers */
template <class T> static inline T atomicAdd(T *p, T v) { T o = *p; *p = o + v; return o; }
template <class T> static inline T atomicSub(T *p, T v) { T o = *p; *p = o - v; return o; }
template <class T> static inline T atomicExch(T *p, T v) { T o = *p; *p = v; return o; }
template <class T> static inline T atomicMax(T *p, T v) { T o = *p; if (v > o) *p = v; return o; }
template <class T> static inline T atomicMin(T *p, T v) { T o = *p; if (v < o) *p = v; return o; }
template <class T> static inline T atomicCAS(T *p, T cmp, T v) { T o = *p; if (o == cmp) *p = v; return o; }

#endif
