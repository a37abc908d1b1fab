/* The CUDA runtime / cuBLAS emulation: devices, memory, streams with capture, graphs, the
 * kernel executor (fibers), SGEMM. Single host thread. */
#include "cuda_runtime.h"
#include "cublas_v2.h"
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <vector>
#include <string>
#include <new>
#undef warpSize

namespace {

bool env_flag(const char *name, bool dflt)
{
  const char *s = getenv(name);
  if (!s || !*s) return dflt;
  return s[0] != '0';
}

cudaError_t last_error = cudaSuccess;
cudaError_t set_err(cudaError_t e)
{
  if (e != cudaSuccess) last_error = e;
  return e;
}

bool verbose() { static int v = -1; if (v < 0) v = env_flag("EMU_VERBOSE", false); return v; }
bool strict_capture() { static int v = -1; if (v < 0) v = env_flag("EMU_STRICT_CAPTURE", true); return v; }

void note(const char *fmt, const char *a = "", const char *b = "")
{
  fprintf(stderr, "[cuda-emu] ");
  fprintf(stderr, fmt, a, b);
  fprintf(stderr, "\n");
}

} // namespace

/* ---- streams and capture --------------------------------------------------------------------- */

struct CUstream_st {
  unsigned flags = 0;
  bool capturing = false;
  bool invalidated = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::vector<std::function<void()>> ops;
};
struct CUgraph_st {
  std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};
struct CUevent_st {
  int dummy;
};

namespace {

int active_captures = 0; /* non-relaxed captures begun by this (the only) thread */

bool is_special(cudaStream_t st) { return st == 0 || st == cudaStreamLegacy || st == cudaStreamPerThread; }

/* a call the runtime forbids while this thread captures (Global/ThreadLocal modes): the error,
   and every active capture is invalidated */
std::vector<CUstream_st *> &all_streams()
{
  static std::vector<CUstream_st *> *v = new std::vector<CUstream_st *>();
  return *v;
}

bool unsafe_during_capture(const char *what)
{
  if (active_captures == 0 || !strict_capture()) return false;
  note("%s called while a stream capture is active: cudaErrorStreamCaptureUnsupported, the capture "
       "is invalidated", what);
  for (CUstream_st *s : all_streams())
    if (s->capturing && s->mode != cudaStreamCaptureModeRelaxed) s->invalidated = true;
  return true;
}

/* run now, or record into the stream's capture */
cudaError_t enqueue(cudaStream_t st, std::function<void()> op)
{
  if (!is_special(st) && st->capturing) {
    st->ops.push_back(std::move(op));
    return cudaSuccess;
  }
  op();
  return cudaSuccess;
}

} // namespace

/* ---- devices ------------------------------------------------------------------------------ */

cudaError_t cudaGetDeviceCount(int *count)
{
  if (!count) return set_err(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

static int current_device = 0;
cudaError_t cudaSetDevice(int dev)
{
  if (dev != 0) return set_err(cudaErrorInvalidDevice);
  current_device = dev;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int *dev)
{
  *dev = current_device;
  return cudaSuccess;
}

static size_t emu_mem_limit();
static size_t emu_mem_used = 0;
static size_t total_mem() { return emu_mem_limit(); }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int dev)
{
  if (dev != 0) return set_err(cudaErrorInvalidDevice);
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "Emulated GPU (CPU)");
  p->totalGlobalMem = total_mem();
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = 227 * 1024;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->memPitch = 2147483647;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024; p->maxThreadsDim[1] = 1024; p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647; p->maxGridSize[1] = 65535; p->maxGridSize[2] = 65535;
  p->clockRate = 1980000;
  p->totalConstMem = 65536;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 132;
  p->memoryClockRate = 2619000;
  p->memoryBusWidth = 6144;
  p->l2CacheSize = 50 << 20;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int dev)
{
  if (dev != 0) return set_err(cudaErrorInvalidDevice);
  switch (a) {
  case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
  case cudaDevAttrMaxBlockDimX: *v = 1024; break;
  case cudaDevAttrMaxGridDimX: *v = 2147483647; break;
  case cudaDevAttrMaxSharedMemoryPerBlock: *v = 48 * 1024; break;
  case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = 227 * 1024; break;
  case cudaDevAttrWarpSize: *v = 32; break;
  case cudaDevAttrMaxPitch: *v = 2147483647; break;
  case cudaDevAttrClockRate: *v = 1980000; break;
  case cudaDevAttrMultiProcessorCount: *v = 132; break;
  case cudaDevAttrMemoryClockRate: *v = 2619000; break;
  case cudaDevAttrGlobalMemoryBusWidth: *v = 6144; break;
  case cudaDevAttrL2CacheSize: *v = 50 << 20; break;
  case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
  case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
  default: return set_err(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
  cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char *cudaGetErrorName(cudaError_t e)
{
  switch (e) {
#define N(x) case x: return #x;
  N(cudaSuccess) N(cudaErrorInvalidValue) N(cudaErrorMemoryAllocation)
  N(cudaErrorInitializationError) N(cudaErrorInvalidConfiguration) N(cudaErrorInvalidPitchValue)
  N(cudaErrorInvalidMemcpyDirection) N(cudaErrorNoDevice) N(cudaErrorInvalidDevice)
  N(cudaErrorInvalidResourceHandle) N(cudaErrorIllegalState) N(cudaErrorIllegalAddress)
  N(cudaErrorLaunchOutOfResources) N(cudaErrorLaunchFailure)
  N(cudaErrorStreamCaptureUnsupported) N(cudaErrorStreamCaptureInvalidated)
  N(cudaErrorStreamCaptureMerge) N(cudaErrorStreamCaptureUnmatched)
  N(cudaErrorStreamCaptureUnjoined) N(cudaErrorStreamCaptureIsolation)
  N(cudaErrorStreamCaptureImplicit) N(cudaErrorCapturedEvent)
  N(cudaErrorStreamCaptureWrongThread) N(cudaErrorUnknown)
#undef N
  }
  return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e)
{
  switch (e) {
  case cudaSuccess: return "no error";
  case cudaErrorInvalidValue: return "invalid argument";
  case cudaErrorMemoryAllocation: return "out of memory";
  case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  case cudaErrorNoDevice: return "no CUDA-capable device is detected";
  case cudaErrorInvalidDevice: return "invalid device ordinal";
  case cudaErrorInvalidResourceHandle: return "invalid resource handle";
  case cudaErrorIllegalState: return "operation not permitted when stream is capturing";
  case cudaErrorLaunchFailure: return "unspecified launch failure (emulator: see stderr)";
  case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
  case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
  default: return cudaGetErrorName(e);
  }
}

cudaError_t cudaDeviceSynchronize(void)
{
  if (unsafe_during_capture("cudaDeviceSynchronize")) return set_err(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}
cudaError_t cudaDeviceReset(void) { return cudaSuccess; }

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
  size_t fr = total_mem() - emu_mem_used;
  if (free_b) *free_b = fr;
  if (total_b) *total_b = total_mem();
  return cudaSuccess;
}

/* ---- memory ---------------------------------------------------------------------------------- */

/* the emulated device's memory: EMU_MEM_LIMIT_MB, by default half the host's RAM, at most 8 GiB (beyond it
   cudaMalloc fails with cudaErrorMemoryAllocation, as a full GPU would) */
static size_t emu_mem_limit()
{
  static size_t lim = (size_t)-1;
  if (lim == (size_t)-1) {
    const char *s = getenv("EMU_MEM_LIMIT_MB");
    if (s && *s) lim = (size_t)atoll(s) << 20;
    else {
      struct sysinfo si;
      lim = sysinfo(&si) == 0 ? (size_t)si.totalram * si.mem_unit / 2 : ((size_t)8 << 30);
      if (lim > ((size_t)8 << 30)) lim = (size_t)8 << 30;
    }
  }
  return lim;
}

static std::vector<std::pair<void *, size_t>> *allocs_list() /* tiny registry for sizes */
{
  static auto *v = new std::vector<std::pair<void *, size_t>>();
  return v;
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
  if (!p) return set_err(cudaErrorInvalidValue);
  if (unsafe_during_capture("cudaMalloc")) return set_err(cudaErrorStreamCaptureUnsupported);
  if (bytes == 0) { *p = NULL; return cudaSuccess; }
  if (bytes > total_mem() || emu_mem_used + bytes > emu_mem_limit()) {
    *p = NULL;
    return set_err(cudaErrorMemoryAllocation);
  }
  size_t rounded = (bytes + 255) / 256 * 256;
  void *q = aligned_alloc(256, rounded);
  if (!q) { *p = NULL; return set_err(cudaErrorMemoryAllocation); }
  if (env_flag("EMU_POISON", true)) memset(q, 0xff, rounded); /* NaNs: uninitialised reads show */
  emu_mem_used += rounded;
  allocs_list()->push_back({q, rounded});
  *p = q;
  return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
  if (!p) return cudaSuccess;
  if (unsafe_during_capture("cudaFree")) return set_err(cudaErrorStreamCaptureUnsupported);
  auto *v = allocs_list();
  for (size_t i = 0; i < v->size(); i++)
    if ((*v)[i].first == p) {
      emu_mem_used -= (*v)[i].second;
      (*v)[i] = v->back();
      v->pop_back();
      free(p);
      return cudaSuccess;
    }
  note("cudaFree of a pointer cudaMalloc did not return");
  return set_err(cudaErrorInvalidValue);
}

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
  *p = malloc(bytes ? bytes : 1);
  return *p ? cudaSuccess : set_err(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void *p) { free(p); return cudaSuccess; }

static bool bad_kind(cudaMemcpyKind k) { return (int)k < 0 || (int)k > 4; }

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
  if (bad_kind(kind)) return set_err(cudaErrorInvalidMemcpyDirection);
  if (unsafe_during_capture("cudaMemcpy")) return set_err(cudaErrorStreamCaptureUnsupported);
  if (bytes && (!dst || !src)) return set_err(cudaErrorInvalidValue);
  if (bytes) memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t st)
{
  if (bad_kind(kind)) return set_err(cudaErrorInvalidMemcpyDirection);
  if (bytes && (!dst || !src)) return set_err(cudaErrorInvalidValue);
  if (is_special(st) && active_captures && kind != cudaMemcpyDeviceToDevice &&
      unsafe_during_capture("cudaMemcpyAsync (legacy stream, host memory)"))
    return set_err(cudaErrorStreamCaptureUnsupported);
  if (!bytes) return cudaSuccess;
  return enqueue(st, [=]() { memmove(dst, src, bytes); });
}

static cudaError_t copy2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                          size_t height)
{
  if (width > dpitch || width > spitch) return cudaErrorInvalidPitchValue;
  if (dpitch > 2147483647u || spitch > 2147483647u) return cudaErrorInvalidValue;
  return cudaSuccess;
}

cudaError_t cudaMemcpy2D(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                         size_t height, cudaMemcpyKind kind)
{
  if (bad_kind(kind)) return set_err(cudaErrorInvalidMemcpyDirection);
  cudaError_t e = copy2d(dst, dpitch, src, spitch, width, height);
  if (e) return set_err(e);
  if (unsafe_during_capture("cudaMemcpy2D")) return set_err(cudaErrorStreamCaptureUnsupported);
  for (size_t r = 0; r < height; r++)
    memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
  return cudaSuccess;
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                              size_t height, cudaMemcpyKind kind, cudaStream_t st)
{
  if (bad_kind(kind)) return set_err(cudaErrorInvalidMemcpyDirection);
  cudaError_t e = copy2d(dst, dpitch, src, spitch, width, height);
  if (e) return set_err(e);
  return enqueue(st, [=]() {
    for (size_t r = 0; r < height; r++)
      memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
  });
}

cudaError_t cudaMemset(void *p, int v, size_t bytes)
{
  if (unsafe_during_capture("cudaMemset")) return set_err(cudaErrorStreamCaptureUnsupported);
  if (bytes && !p) return set_err(cudaErrorInvalidValue);
  if (bytes) memset(p, v, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t st)
{
  if (bytes && !p) return set_err(cudaErrorInvalidValue);
  if (!bytes) return cudaSuccess;
  return enqueue(st, [=]() { memset(p, v, bytes); });
}

/* ---- streams ------------------------------------------------------------------------------------ */

cudaError_t cudaStreamCreate(cudaStream_t *st) { return cudaStreamCreateWithFlags(st, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned int flags)
{
  if (!st) return set_err(cudaErrorInvalidValue);
  *st = new CUstream_st();
  (*st)->flags = flags;
  all_streams().push_back(*st);
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t st)
{
  if (is_special(st)) return set_err(cudaErrorInvalidResourceHandle);
  auto &v = all_streams();
  for (size_t i = 0; i < v.size(); i++)
    if (v[i] == st) { v.erase(v.begin() + i); break; }
  if (st->capturing && st->mode != cudaStreamCaptureModeRelaxed) active_captures--;
  delete st;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t st)
{
  if (!is_special(st) && st->capturing) {
    st->invalidated = true;
    return set_err(cudaErrorStreamCaptureUnsupported);
  }
  if (unsafe_during_capture("cudaStreamSynchronize")) return set_err(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t st)
{
  if (!is_special(st) && st->capturing) {
    st->invalidated = true;
    return set_err(cudaErrorStreamCaptureUnsupported);
  }
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t st, cudaStreamCaptureMode mode)
{
  if (is_special(st)) return set_err(cudaErrorStreamCaptureUnsupported);
  if (st->capturing) return set_err(cudaErrorIllegalState);
  st->capturing = true;
  st->invalidated = false;
  st->mode = mode;
  st->ops.clear();
  if (mode != cudaStreamCaptureModeRelaxed) active_captures++;
  if (verbose()) note("capture begins");
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t st, cudaGraph_t *g)
{
  if (is_special(st) || !st->capturing) return set_err(cudaErrorIllegalState);
  st->capturing = false;
  if (st->mode != cudaStreamCaptureModeRelaxed) active_captures--;
  if (st->invalidated) {
    st->ops.clear();
    if (g) *g = NULL;
    return set_err(cudaErrorStreamCaptureInvalidated);
  }
  CUgraph_st *gr = new CUgraph_st();
  gr->ops.swap(st->ops);
  if (verbose()) note("capture ends: %s operations", std::to_string(gr->ops.size()).c_str());
  *g = gr;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t st, cudaStreamCaptureStatus *status)
{
  if (is_special(st)) *status = cudaStreamCaptureStatusNone;
  else *status = st->capturing ? (st->invalidated ? cudaStreamCaptureStatusInvalidated
                                                  : cudaStreamCaptureStatusActive)
                               : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long)
{
  if (!exec || !g) return set_err(cudaErrorInvalidValue);
  CUgraphExec_st *x = new CUgraphExec_st();
  x->ops = g->ops;
  *exec = x;
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t st)
{
  if (!exec) return set_err(cudaErrorInvalidValue);
  CUgraphExec_st *x = exec;
  return enqueue(st, [x]() {
    for (auto &op : x->ops) op();
  });
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
  delete exec;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
  delete g;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *ev) { *ev = new CUevent_st(); return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t ev) { delete ev; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t, cudaEvent_t) { *ms = 0.0f; return cudaSuccess; }

/* ---- the kernel executor ------------------------------------------------------------------------ */

extern "C" void emu_switch(void **save_sp, void *new_sp);
__asm__(
  ".text\n"
  ".p2align 4\n"
  ".globl emu_switch\n"
  ".hidden emu_switch\n"
  ".type emu_switch,@function\n"
  "emu_switch:\n"
  "  pushq %rbp\n"
  "  pushq %rbx\n"
  "  pushq %r12\n"
  "  pushq %r13\n"
  "  pushq %r14\n"
  "  pushq %r15\n"
  "  subq $8, %rsp\n"
  "  stmxcsr (%rsp)\n"
  "  fnstcw 4(%rsp)\n"
  "  movq %rsp, (%rdi)\n"
  "  movq %rsi, %rsp\n"
  "  ldmxcsr (%rsp)\n"
  "  fldcw 4(%rsp)\n"
  "  addq $8, %rsp\n"
  "  popq %r15\n"
  "  popq %r14\n"
  "  popq %r13\n"
  "  popq %r12\n"
  "  popq %rbx\n"
  "  popq %rbp\n"
  "  ret\n"
  ".size emu_switch, .-emu_switch\n");

namespace emu {

uint3 v_threadIdx;
uint3 v_blockIdx;
dim3 v_blockDim;
dim3 v_gridDim;

} // namespace emu

namespace {

enum { F_RUN, F_DONE, F_WBLOCK, F_WWARP };

struct Fiber {
  void *sp;
  char *stack_lo; /* usable stack (above the guard page) */
  unsigned tid;
  int state;
  unsigned wmask;  /* the mask of the warp barrier it waits at */
  unsigned xseq;   /* warp exchanges so far (all lanes of a warp make the same sequence) */
};

size_t stack_bytes()
{
  static size_t b = 0;
  if (!b) {
    const char *s = getenv("EMU_STACK_KB");
    b = (size_t)(s && *s ? atoi(s) : 256) << 10;
  }
  return b;
}

std::vector<Fiber> *pool_v;
std::vector<Fiber> &pool()
{
  if (!pool_v) pool_v = new std::vector<Fiber>();
  return *pool_v;
}
void *sched_sp;
Fiber *cur;
const std::function<void()> *cur_body;
const char *cur_name = "";
bool kernel_failed;
unsigned nthr; /* threads per block of the running kernel */
std::vector<char> smem_buf;
size_t smem_size;
uint64_t xbuf[2][1024];
unsigned xseq_of[2][1024];
bool warned_exchange;

const size_t GUARD = 4096;

void ensure_pool(unsigned n)
{
  std::vector<Fiber> &p = pool();
  while (p.size() < n) {
    size_t sz = stack_bytes() + GUARD;
    char *m = (char *)mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                           -1, 0);
    if (m == MAP_FAILED) { perror("cuda-emu: mmap of a fiber stack"); abort(); }
    mprotect(m, GUARD, PROT_NONE);
    Fiber f;
    memset(&f, 0, sizeof f);
    f.stack_lo = m + GUARD;
    p.push_back(f);
  }
}

__attribute__((noreturn)) void fiber_main()
{
  (*cur_body)();
  cur->state = F_DONE;
  emu_switch(&cur->sp, sched_sp);
  __builtin_unreachable();
}

void fiber_init(Fiber &f)
{
  uintptr_t top = ((uintptr_t)(f.stack_lo + stack_bytes())) & ~(uintptr_t)15;
  uint64_t *s = (uint64_t *)top;
  *--s = 0;                          /* fiber_main's (never used) return address */
  *--s = (uint64_t)(uintptr_t)&fiber_main;
  for (int i = 0; i < 6; i++) *--s = 0; /* rbp rbx r12 r13 r14 r15 */
  --s;
  uint32_t *c = (uint32_t *)s;
  c[0] = 0x1f80;  /* mxcsr */
  c[1] = 0x037f;  /* x87 control word */
  f.sp = s;
  f.state = F_RUN;
  f.xseq = 0;
}

void resume(Fiber &f)
{
  cur = &f;
  unsigned t = f.tid, bx = emu::v_blockDim.x, by = emu::v_blockDim.y;
  emu::v_threadIdx.x = t % bx;
  emu::v_threadIdx.y = (t / bx) % by;
  emu::v_threadIdx.z = t / (bx * by);
  emu_switch(&sched_sp, f.sp);
}

void kernel_error(const char *what)
{
  fprintf(stderr, "[cuda-emu] kernel %s, block (%u,%u,%u): %s\n", cur_name, emu::v_blockIdx.x,
          emu::v_blockIdx.y, emu::v_blockIdx.z, what);
  kernel_failed = true;
}

/* one block: its threads as fibers, run in order until each finishes or waits */
bool run_block()
{
  std::vector<Fiber> &p = pool();
  const unsigned n = nthr, nw = (n + 31) / 32;
  for (unsigned t = 0; t < n; t++) {
    p[t].tid = t;
    fiber_init(p[t]);
  }
  for (;;) {
    for (unsigned w = 0; w < nw; w++) {
      const unsigned l0 = w * 32, l1 = l0 + 32 < n ? l0 + 32 : n;
      const unsigned exist = l1 - l0 == 32 ? 0xffffffffu : ((1u << (l1 - l0)) - 1);
      for (;;) {
        for (unsigned t = l0; t < l1; t++)
          if (p[t].state == F_RUN) resume(p[t]);
        /* a warp barrier: released when every lane of the waiters' masks waits there */
        unsigned waiting = 0, done = 0, need = 0;
        for (unsigned t = l0; t < l1; t++) {
          unsigned bit = 1u << (t - l0);
          if (p[t].state == F_WWARP) { waiting |= bit; need |= p[t].wmask; }
          else if (p[t].state == F_DONE) done |= bit;
        }
        if (!waiting) break;
        need &= exist;
        if ((need & ~waiting) == 0) {
          for (unsigned t = l0; t < l1; t++)
            if (p[t].state == F_WWARP) p[t].state = F_RUN;
          continue;
        }
        if ((need & ~(waiting | done)) == 0) { /* lanes of the mask have exited: UB on a GPU */
          kernel_error("a warp primitive waits for lanes that have exited (mask includes them)");
          for (unsigned t = l0; t < l1; t++)
            if (p[t].state == F_WWARP) p[t].state = F_RUN;
          continue;
        }
        break; /* some lanes of the mask wait at __syncthreads: resolved below (deadlock) */
      }
    }
    unsigned ndone = 0, nblock = 0, nwarp = 0;
    for (unsigned t = 0; t < n; t++) {
      if (p[t].state == F_DONE) ndone++;
      else if (p[t].state == F_WBLOCK) nblock++;
      else if (p[t].state == F_WWARP) nwarp++;
    }
    if (ndone == n) return true;
    if (nwarp == 0 && nblock > 0) {
      for (unsigned t = 0; t < n; t++)
        if (p[t].state == F_WBLOCK) p[t].state = F_RUN;
      continue;
    }
    char msg[200];
    snprintf(msg, sizeof msg,
             "deadlock: %u threads at __syncthreads, %u at a warp primitive, %u exited "
             "(divergent barrier)", nblock, nwarp, ndone);
    kernel_error(msg);
    return false;
  }
}

cudaError_t check_cfg(const emu::Cfg &c)
{
  const dim3 &g = c.g, &b = c.b;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 ||
      (uint64_t)b.x * b.y * b.z > 1024)
    return cudaErrorInvalidConfiguration;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    return cudaErrorInvalidConfiguration;
  if (c.smem > 48 * 1024) return cudaErrorInvalidValue; /* no opt-in attribute emulated */
  return cudaSuccess;
}

void run_kernel(const char *name, dim3 g, dim3 b, size_t smem, const std::function<void()> &body)
{
  const char *prev_name = cur_name;
  cur_name = name;
  cur_body = &body;
  emu::v_gridDim = g;
  emu::v_blockDim = b;
  nthr = b.x * b.y * b.z;
  ensure_pool(nthr);
  smem_size = smem;
  if (smem_buf.size() < smem + 16) smem_buf.resize(smem + 16);
  kernel_failed = false;
  const bool poison = env_flag("EMU_POISON", true);
  for (unsigned z = 0; z < g.z && !kernel_failed; z++)
    for (unsigned y = 0; y < g.y && !kernel_failed; y++)
      for (unsigned x = 0; x < g.x && !kernel_failed; x++) {
        emu::v_blockIdx.x = x;
        emu::v_blockIdx.y = y;
        emu::v_blockIdx.z = z;
        if (smem && poison) memset(smem_buf.data(), 0xff, smem);
        if (!run_block()) break;
      }
  if (kernel_failed) set_err(cudaErrorLaunchFailure);
  cur_name = prev_name;
}

void segv_handler(int sig, siginfo_t *si, void *)
{
  char buf[512];
  int n = snprintf(buf, sizeof buf,
                   "[cuda-emu] signal %d (address %p) in kernel %s, block (%u,%u,%u), thread %u "
                   "(a fault in device code, or a fiber stack overflow: EMU_STACK_KB)\n",
                   sig, si->si_addr, cur_name ? cur_name : "?", emu::v_blockIdx.x, emu::v_blockIdx.y,
                   emu::v_blockIdx.z, cur ? cur->tid : 0);
  if (n > 0) { ssize_t r = write(2, buf, (size_t)n); (void)r; }
  signal(sig, SIG_DFL);
  raise(sig);
}

struct InstallHandler {
  InstallHandler()
  {
    static char altstack[64 * 1024];
    stack_t ss;
    ss.ss_sp = altstack;
    ss.ss_size = sizeof altstack;
    ss.ss_flags = 0;
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
  }
} install_handler;

} // namespace

namespace emu {

void block_barrier()
{
  if (!cur) { note("__syncthreads outside a kernel"); abort(); }
  cur->state = F_WBLOCK;
  emu_switch(&cur->sp, sched_sp);
}

void warp_barrier(unsigned mask)
{
  cur->state = F_WWARP;
  cur->wmask = mask;
  emu_switch(&cur->sp, sched_sp);
}

unsigned lane_id() { return cur->tid & 31; }

uint64_t exchange(unsigned mask, uint64_t mine, int src_lane, bool *valid)
{
  const unsigned t = cur->tid, par = cur->xseq & 1u, seq = cur->xseq;
  xbuf[par][t] = mine;
  xseq_of[par][t] = seq;
  cur->xseq++;
  warp_barrier(mask);
  const unsigned s = (t & ~31u) + (unsigned)src_lane;
  if (src_lane < 0 || src_lane > 31 || s >= nthr || xseq_of[par][s] != seq ||
      !((mask >> src_lane) & 1u)) {
    if (!warned_exchange) {
      char msg[160];
      snprintf(msg, sizeof msg, "thread %u reads lane %d in a warp shuffle, which did not take part "
               "(undefined value; reported once)", t, src_lane);
      kernel_error(msg);
      kernel_failed = false; /* a warning, not a failure */
      warned_exchange = true;
    }
    *valid = false;
    return mine;
  }
  *valid = true;
  return xbuf[par][s];
}

unsigned ballot(unsigned mask, int pred)
{
  const unsigned t = cur->tid, par = cur->xseq & 1u, seq = cur->xseq;
  xbuf[par][t] = pred ? 1 : 0;
  xseq_of[par][t] = seq;
  cur->xseq++;
  warp_barrier(mask);
  unsigned r = 0, base = t & ~31u;
  for (unsigned l = 0; l < 32; l++)
    if (base + l < nthr && ((mask >> l) & 1u) && xseq_of[par][base + l] == seq && xbuf[par][base + l])
      r |= 1u << l;
  return r;
}

void *dyn_smem() { return smem_buf.data(); }

void submit(const char *name, const Cfg &c, std::function<void()> body)
{
  cudaError_t e = check_cfg(c);
  if (e != cudaSuccess) {
    fprintf(stderr, "[cuda-emu] launch of %s: grid (%u,%u,%u) block (%u,%u,%u) smem %zu -> %s\n", name,
            c.g.x, c.g.y, c.g.z, c.b.x, c.b.y, c.b.z, c.smem, cudaGetErrorName(e));
    if (!is_special(c.st) && c.st->capturing) c.st->invalidated = true;
    set_err(e);
    return;
  }
  if (cur) { /* a launch from device code */
    note("kernel %s launched from inside kernel %s (dynamic parallelism is not emulated)", name, cur_name);
    set_err(cudaErrorLaunchFailure);
    return;
  }
  dim3 g = c.g, b = c.b;
  size_t smem = c.smem;
  if (verbose()) fprintf(stderr, "[cuda-emu] %s %s<<<%u, %u, %zu>>>\n",
                         (!is_special(c.st) && c.st->capturing) ? "record" : "launch", name, g.x, b.x, smem);
  enqueue(c.st, [name, g, b, smem, body]() {
    run_kernel(name, g, b, smem, body);
    cur = NULL;
  });
}

} // namespace emu

/* ---- cuBLAS ------------------------------------------------------------------------------------- */

struct cublasContext {
  cudaStream_t st = 0;
  void *ws = nullptr;
  size_t ws_bytes = 0;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  cublasAtomicsMode_t atomics = CUBLAS_ATOMICS_NOT_ALLOWED;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  *h = new (std::nothrow) cublasContext();
  return *h ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}
cublasStatus_t cublasDestroy(cublasHandle_t h)
{
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t st)
{
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->st = st;
  h->ws = nullptr; /* as the real one: setting the stream resets the workspace */
  h->ws_bytes = 0;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetStream(cublasHandle_t h, cudaStream_t *st)
{
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  *st = h->st;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes)
{
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (bytes && !ws) return CUBLAS_STATUS_INVALID_VALUE;
  h->ws = ws;
  h->ws_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m)
{
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->math = m;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetAtomicsMode(cublasHandle_t h, cublasAtomicsMode_t m)
{
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  h->atomics = m;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t m)
{
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  return m == CUBLAS_POINTER_MODE_HOST ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

const char *cublasGetStatusName(cublasStatus_t s)
{
  switch (s) {
#define N(x) case x: return #x;
  N(CUBLAS_STATUS_SUCCESS) N(CUBLAS_STATUS_NOT_INITIALIZED) N(CUBLAS_STATUS_ALLOC_FAILED)
  N(CUBLAS_STATUS_INVALID_VALUE) N(CUBLAS_STATUS_ARCH_MISMATCH) N(CUBLAS_STATUS_MAPPING_ERROR)
  N(CUBLAS_STATUS_EXECUTION_FAILED) N(CUBLAS_STATUS_INTERNAL_ERROR) N(CUBLAS_STATUS_NOT_SUPPORTED)
  N(CUBLAS_STATUS_LICENSE_ERROR)
#undef N
  }
  return "CUBLAS_STATUS_UNKNOWN";
}
const char *cublasGetStatusString(cublasStatus_t s)
{
  switch (s) {
  case CUBLAS_STATUS_SUCCESS: return "success";
  case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
  case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
  case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
  default: return cublasGetStatusName(s);
  }
}

namespace {

/* column-major C (m x n) = alpha op(A) op(B) + beta C: each element a float sum of k products in
   order, one fma each; beta = 0 never reads C */
void sgemm_now(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A,
               int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
  std::vector<float> arow((size_t)(k > 0 ? k : 1)), bcol((size_t)(k > 0 ? k : 1));
  std::vector<float> at;
  /* op(A) row-major, so each dot product reads contiguous memory */
  if (k > 0 && alpha != 0.0f) {
    at.resize((size_t)(m * k));
    for (int64_t i = 0; i < m; i++)
      for (int64_t l = 0; l < k; l++) at[(size_t)(i * k + l)] = ta == CUBLAS_OP_N ? A[i + l * lda] : A[l + i * lda];
  }
  for (int64_t j = 0; j < n; j++) {
    if (k > 0 && alpha != 0.0f)
      for (int64_t l = 0; l < k; l++) bcol[(size_t)l] = tb == CUBLAS_OP_N ? B[l + j * ldb] : B[j + l * ldb];
    for (int64_t i = 0; i < m; i++) {
      float acc = 0.0f;
      if (k > 0 && alpha != 0.0f) {
        const float *a = &at[(size_t)(i * k)];
        for (int64_t l = 0; l < k; l++) acc = fmaf(a[l], bcol[(size_t)l], acc);
      }
      float *c = C + i + j * ldc;
      float r = alpha * acc;
      if (beta != 0.0f) r = fmaf(beta, *c, r);
      *c = r;
    }
  }
}

cublasStatus_t sgemm_check(cublasHandle_t h, int ta, int tb, int64_t m, int64_t n, int64_t k,
                           const float *alpha, int64_t lda, int64_t ldb, const float *beta, int64_t ldc)
{
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T && ta != CUBLAS_OP_C) ||
      (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T && tb != CUBLAS_OP_C))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (m < 0 || n < 0 || k < 0 || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
  int64_t ra = ta == CUBLAS_OP_N ? m : k, rb = tb == CUBLAS_OP_N ? k : n;
  if (lda < (ra > 1 ? ra : 1) || ldb < (rb > 1 ? rb : 1) || ldc < (m > 1 ? m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  if (h->math == CUBLAS_TF32_TENSOR_OP_MATH || h->math == CUBLAS_TENSOR_OP_MATH)
    note("cuBLAS math mode allows reduced precision (emulated in full float32 anyway)");
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t sgemm_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m,
                             int64_t n, int64_t k, const float *alpha, const float *A, int64_t lda,
                             long long sA, const float *B, int64_t ldb, long long sB,
                             const float *beta, float *C, int64_t ldc, long long sC, int64_t batch)
{
  cublasStatus_t s = sgemm_check(h, ta, tb, m, n, k, alpha, lda, ldb, beta, ldc);
  if (s != CUBLAS_STATUS_SUCCESS) return s;
  if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  const float al = *alpha, be = *beta; /* host pointer mode: read at the call */
  const int ita = ta, itb = tb;
  if (verbose()) fprintf(stderr, "[cuda-emu] sgemm %c%c m %lld n %lld k %lld batch %lld\n",
                         ta ? 'T' : 'N', tb ? 'T' : 'N', (long long)m, (long long)n, (long long)k,
                         (long long)batch);
  enqueue(h->st, [=]() {
    for (int64_t b = 0; b < batch; b++)
      sgemm_now(ita, itb, m, n, k, al, A + b * sA, lda, B + b * sB, ldb, be, C + b * sC, ldc);
  });
  return CUBLAS_STATUS_SUCCESS;
}

} // namespace

cublasStatus_t cublasSgemm_64(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                              int64_t m, int64_t n, int64_t k, const float *alpha, const float *A,
                              int64_t lda, const float *B, int64_t ldb, const float *beta,
                              float *C, int64_t ldc)
{
  return sgemm_batched(h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc)
{
  return sgemm_batched(h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         long long sA, const float *B, int ldb, long long sB,
                                         const float *beta, float *C, int ldc, long long sC,
                                         int batch)
{
  return sgemm_batched(h, ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
}
cublasStatus_t cublasSgemmStridedBatched_64(cublasHandle_t h, cublasOperation_t ta,
                                            cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
                                            const float *alpha, const float *A, int64_t lda,
                                            long long sA, const float *B, int64_t ldb,
                                            long long sB, const float *beta, float *C,
                                            int64_t ldc, long long sC, int64_t batch)
{
  return sgemm_batched(h, ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
}
