# diffuse: build, test, benchmark. The CPU module is always built; the CUDA module whenever nvcc
# is found (CUDA=0 turns it off, CUDA=1 makes a missing nvcc an error).
#
#   make            build/diffuse/core.so (+ build/diffuse/cuda.so)
#   make test       the busted suite on the in-tree build
#   make asan       the suite under AddressSanitizer + UBSan
#   make valgrind   the suite under valgrind (memcheck)
#   make test-cuda-emu  the CUDA parity specs on a CPU emulation of the kernels
#   make bench      benchmarks (never run in CI)
#   make demo       the flagship experiment
#   make deps       install missing Debian packages (as root)

LUA        ?= lua5.4
LUA_INCDIR ?= $(shell pkg-config --variable=includedir lua5.4 2>/dev/null || echo /usr/include)/lua5.4
BUSTED     ?= busted
CC         ?= cc
CFLAGS     ?= -O2
# native code for the machine that builds (the vector width never changes results: no fma
# contraction by the compiler, the fmas dmath.h writes out are exact everywhere, no
# reassociation, so a CPU build matches the GPU build bit for bit); MARCH= to drop
MARCH      ?= -march=native
# strict and reproducible: no fma contraction (the GPU build does the same), no errno from libm
DF_CFLAGS   = -O3 $(MARCH) -std=c99 -fPIC -Wall -Wextra -Wpedantic -Wshadow -ffp-contract=off -fno-trapping-math \
              -fno-math-errno -fopenmp -fvisibility=hidden -I$(LUA_INCDIR) -Inative
LIBFLAG    ?= -shared
# nodelete: lua_close dlcloses C modules, which must not unmap libgomp under its parked threads
LDLIBS      = -lm -fopenmp -Wl,-z,nodelete

CORE_SRC  = $(wildcard native/*.c)
CORE_HDR  = $(wildcard native/*.h)
CUDA_SRC  = $(wildcard kernels/*.cu kernels/*.c)
CUDA_HDR  = $(wildcard kernels/*.h)
LUA_SRC   = $(wildcard lua/diffuse/*.lua)

# ---- CUDA detection ---------------------------------------------------------------------------
# nvcc may be a wrapper script outside the toolkit (/usr/local/bin/nvcc), so the toolkit's root is
# asked of nvcc itself (its --dryrun prints TOP=); the libraries are looked for under that root,
# then under CUDA_HOME. Without nvcc or without libcudart/libcublas the CUDA module is skipped.
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(shell command -v nvcc 2>/dev/null || (test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc))
NVCC      := $(NVCC)
CUDA      ?= auto
CUDA_TOP  := $(if $(NVCC),$(shell $(NVCC) --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^\#\$$ TOP=//p'))
CUDA_LIBDIR_CANDIDATES = $(foreach r,$(CUDA_TOP) $(CUDA_HOME),$(r)/targets/x86_64-linux/lib $(r)/lib64 $(r)/lib) \
                         /usr/lib/x86_64-linux-gnu
ifeq ($(origin CUDA_LIBDIR),undefined)
CUDA_LIBDIR := $(firstword $(foreach d,$(CUDA_LIBDIR_CANDIDATES),\
                 $(if $(and $(wildcard $(d)/libcudart.so),$(wildcard $(d)/libcublas.so)),$(realpath $(d)))))
endif
ifeq ($(CUDA),1)
  ifeq ($(NVCC),)
    $(error CUDA=1 but nvcc was not found (set NVCC or CUDA_HOME))
  endif
  ifeq ($(CUDA_LIBDIR),)
    $(error CUDA=1 but libcudart.so/libcublas.so were not found (set CUDA_LIBDIR))
  endif
  WITH_CUDA = 1
else ifeq ($(CUDA),auto)
  WITH_CUDA = $(if $(and $(NVCC),$(CUDA_LIBDIR),$(CUDA_SRC)),1,0)
  ifneq ($(and $(NVCC),$(if $(CUDA_LIBDIR),,1)),)
    $(warning nvcc is $(NVCC) but libcudart.so/libcublas.so were not found: building without CUDA)
  endif
else
  WITH_CUDA = 0
endif

TARGETS = build/diffuse/core.so
ifeq ($(WITH_CUDA),1)
  TARGETS += build/diffuse/cuda.so
endif

.PHONY: cuda-info all test test-cuda test-cuda-emu bench-cuda asan vecreport valgrind bench demo deps install clean

all: $(TARGETS)

cuda-info:
	@echo 'nvcc: $(NVCC)'; echo 'toolkit: $(CUDA_TOP)'; echo 'libraries: $(CUDA_LIBDIR)'; echo 'CUDA module: $(WITH_CUDA)'

build/diffuse/core.so: $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DF_CFLAGS) $(LIBFLAG) -o $@ $(CORE_SRC) $(LDLIBS)

# ---- the CUDA module: kernels/*.cu by nvcc, kernels/*.c (its Lua binding) by cc ----------------
# sm_90 code for the H200 plus compute_80 PTX that newer or other chips JIT-compile; no fma
# contraction but the written-out ones, so per-element results match the CPU build bit for bit
NVCC_FLAGS  = -O3 -std=c++17 -fmad=false -Werror all-warnings \
              -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=compute_80 \
              -Xcompiler -fPIC,-Wall,-Wextra,-fvisibility=hidden -Inative -Ikernels
CUDA_CU   = $(wildcard kernels/*.cu)
CUDA_C    = $(wildcard kernels/*.c)
CUDA_OBJ  = $(patsubst kernels/%.cu,build/cuda/%.o,$(CUDA_CU)) \
            $(patsubst kernels/%.c,build/cuda/%.c.o,$(CUDA_C))

build/cuda/%.o: kernels/%.cu $(CUDA_HDR) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCC_FLAGS) -c -o $@ $<

build/cuda/%.c.o: kernels/%.c $(CUDA_HDR) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DF_CFLAGS) -Ikernels -c -o $@ $<

build/diffuse/cuda.so: $(CUDA_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) -o $@ $(CUDA_OBJ) -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) \
	  -lcublas -lcudart -lstdc++ -lm

# ---- tests -------------------------------------------------------------------------------------
test: all
	$(BUSTED) --lua=$(LUA)

# The sanitizer build loads into a plain lua5.4, so libasan is preloaded. Leak checking stays on.
ASAN_LIB  = $(shell $(CC) -print-file-name=libasan.so)
ASAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined,float-cast-overflow \
             -fno-sanitize-recover=undefined,float-cast-overflow
build-asan/diffuse/core.so: $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(ASAN_FLAGS) $(DF_CFLAGS) $(LIBFLAG) -o $@ $(CORE_SRC) $(LDLIBS)

asan: build-asan/diffuse/core.so
	LD_PRELOAD=$(ASAN_LIB) ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1 DIFFUSE_SANITIZED=1 \
	  $(BUSTED) --lua=$(LUA) --cpath='build-asan/?.so' --exclude-tags=nosan

# valgrind does not decode AVX-512, so its build targets AVX2 machines (x86-64-v3); busted must
# not re-exec itself (--ignore-lua), or valgrind would watch only the launcher
build-vg/diffuse/core.so: $(CORE_SRC) $(CORE_HDR)
	@mkdir -p $(dir $@)
	$(CC) -O2 -g $(DF_CFLAGS) -march=x86-64-v3 $(LIBFLAG) -o $@ $(CORE_SRC) $(LDLIBS)

valgrind: build-vg/diffuse/core.so
	DIFFUSE_SANITIZED=1 valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
	  --show-leak-kinds=definite -q $(LUA) $$(command -v $(BUSTED)) --ignore-lua --cpath='build-vg/?.so' \
	  --exclude-tags=nosan

# The GPU check, as one command (../shared/gpu/README.md): the CUDA parity specs, then the GPU
# benchmarks. On a machine without a usable GPU the specs are pending.
test-cuda: all
	DIFFUSE_EXPECT_CUDA=1 $(BUSTED) --lua=$(LUA) spec/cuda_spec.lua

bench-cuda: all
	$(BENCH_ENV) $(LUA) bench/cuda.lua

# the CUDA parity specs on a CPU emulation of the CUDA runtime and kernels (tools/cuda_emu): they
# run here and in CI, where without a GPU they would pend
test-cuda-emu: build/diffuse/core.so
	bash tools/cuda_emu/run.sh

# ---- benchmarks and demo -----------------------------------------------------------------------
BENCH_ENV = LUA_PATH='lua/?.lua;lua/?/init.lua;bench/?.lua;;' LUA_CPATH='build/?.so;;'
# the measured peak FMA rate the suite reports its GFLOP/s against (contraction on purpose here)
build/peak: bench/peak.c
	@mkdir -p $(dir $@)
	$(CC) -O2 $(MARCH) -ffp-contract=fast -o $@ $<

# the allocation counter bench/solvers.lua runs the loops under (LD_PRELOAD)
build/alloc.so: bench/alloc.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -fPIC -shared -o $@ $< -ldl

bench: all build/peak build/alloc.so
	$(BENCH_ENV) $(LUA) bench/tensor.lua
	$(BENCH_ENV) $(LUA) bench/suite.lua
	$(BENCH_ENV) $(LUA) bench/solvers.lua
	$(BENCH_ENV) $(LUA) bench/groups.lua

demo: all
	LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' $(LUA) examples/compare_networks.lua --out out

# which loops of the CPU backend gcc vectorised, and which it did not (the hot ones must be)
vecreport:
	@for f in native/cpu_backend.c native/cpu_diffusion.c native/cpu_nn.c native/cpu_rng.c; do \
	  $(CC) $(CFLAGS) $(DF_CFLAGS) -c -o /dev/null $$f -fopt-info-vec-optimized 2>&1 | \
	    grep -c "loop vectorized" | sed "s|^|$$f: |;s|$$| loops vectorised|"; \
	  $(CC) $(CFLAGS) $(DF_CFLAGS) -c -o /dev/null $$f -fopt-info-vec-missed 2>&1 | \
	    grep -E "couldn't vectorize loop" | sed -E 's/^([^:]+:[0-9]+):.*/\1/' | sort -u | \
	    tr '\n' ' ' | sed 's|^|  not vectorised (line): |;s|$$|\n|'; \
	done

# ---- packages ---------------------------------------------------------------------------------
deps:
	sh deps.sh

# ---- install (used by luarocks: LUADIR and LIBDIR come from the rockspec) ----------------------
LUADIR ?= $(PREFIX)/share/lua/5.4
LIBDIR ?= $(PREFIX)/lib/lua/5.4
install: all
	mkdir -p $(LUADIR)/diffuse $(LIBDIR)/diffuse
	cp $(LUA_SRC) $(LUADIR)/diffuse/
	cp $(TARGETS) $(LIBDIR)/diffuse/

clean:
	rm -rf build build-asan build-vg build-emu
