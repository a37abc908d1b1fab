#!/bin/bash
# tools/cuda_emu/run.sh: the CUDA backend (kernels/*.cu, unmodified) built against a CPU emulation
# of the CUDA runtime, cuBLAS and the kernel execution model (shim/), then spec/cuda_spec.lua run
# against it: the parity specs that pend without a GPU run here, on any machine. `make
# test-cuda-emu` runs it (and CI). It checks the kernels' logic and synchronisation against the
# CPU reference; it is no substitute for a run on a real GPU (no races between barriers, no
# register limits, the emulated SGEMM's own order instead of cuBLAS's).
#   bash tools/cuda_emu/run.sh                 build + run the CUDA parity specs
#   bash tools/cuda_emu/run.sh --build-only    build only
#   bash tools/cuda_emu/run.sh --selftest      build, then the emulator's own checks
#   EXTRA_BUSTED='--filter=matmul' bash tools/cuda_emu/run.sh    extra busted arguments
# Environment knobs of the emulator (at run time): EMU_VERBOSE=1 (log launches, captures),
# EMU_POISON=0 (do not fill fresh cudaMalloc memory and dynamic shared memory with 0xff),
# EMU_STRICT_CAPTURE=0 (allow cudaMalloc/cudaMemcpy/... during stream capture),
# EMU_STACK_KB=256 (fiber stack per device thread), EMU_MEM_LIMIT_MB (device memory; default
# min(RAM/2, 8 GiB), so the 2^31-element spec pends quickly on out-of-memory).
set -euo pipefail
EMU=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$EMU/../.." && pwd)
BUILD=$REPO/build-emu          # (ignored by git)
SRC=$BUILD/src
OBJ=$BUILD/obj
OUT=$BUILD/diffuse
CXX=${CXX:-g++}
CC=${CC:-cc}
OPT=${OPT:--O2}
LUA_INCDIR=$(pkg-config --variable=includedir lua5.4 2>/dev/null || echo /usr/include)/lua5.4

t0=$(date +%s)
rm -rf "$SRC" "$OBJ"
mkdir -p "$SRC/kernels" "$SRC/native" "$OBJ" "$OUT"
cp "$REPO"/kernels/*.cu "$REPO"/kernels/*.h "$REPO"/kernels/l_cuda.c "$SRC/kernels/"
cp "$REPO"/native/*.h "$SRC/native/"

# kernel launches -> ::emu::launch, extern __shared__ -> the block's dynamic shared memory
mkdir -p "$SRC/pp"
for f in "$SRC"/kernels/*.cu; do
  python3 "$EMU/preprocess.py" "$f" "$SRC/pp/$(basename "$f" .cu).cpp"
done

# strict float semantics as the real build (nvcc -fmad=false): no contraction, no fast-math
CXXFLAGS="-std=c++17 $OPT -march=native -fPIC -ffp-contract=off -fno-math-errno -fno-trapping-math \
  -fno-strict-aliasing -fvisibility=hidden -Wall -Wno-unused-function -Wno-unused-variable -Wno-unknown-pragmas -Wno-maybe-uninitialized \
  -D__CUDACC__ -D__CUDA_ARCH__=900 -I$EMU/shim -I$SRC/native -I$SRC/kernels"
pids=()
for f in "$SRC"/pp/*.cpp; do
  o="$OBJ/$(basename "$f" .cpp).o"
  ( $CXX $CXXFLAGS -c -o "$o" "$f" ) &
  pids+=($!)
done
$CXX -std=c++17 -O2 -march=native -ffp-contract=off -fPIC -fvisibility=hidden -Wall -I$EMU/shim -c -o "$OBJ/emu_runtime.o" "$EMU/shim/emu_runtime.cpp" &
pids+=($!)
# the Lua binding, as the Makefile builds it (cc, the core's flags)
$CC -O2 -O3 -march=native -std=c99 -fPIC -Wall -Wextra -ffp-contract=off -fno-trapping-math \
  -fno-math-errno -fvisibility=hidden -I"$LUA_INCDIR" -I"$SRC/native" -I"$SRC/kernels" \
  -c -o "$OBJ/l_cuda.c.o" "$SRC/kernels/l_cuda.c" &
pids+=($!)
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ $fail = 0 ] || { echo "run.sh: compilation failed" >&2; exit 1; }
$CXX -shared -o "$OUT/cuda.so" "$OBJ"/*.o -lm -Wl,-z,nodelete
t1=$(date +%s)
echo "run.sh: built $OUT/cuda.so in $((t1 - t0)) s"
[ "${1:-}" = "--build-only" ] && exit 0
if [ "${1:-}" = "--selftest" ]; then # the emulator's own checks (barriers, shuffles, capture, sgemm)
  python3 "$EMU/preprocess.py" "$EMU/selftest/selftest.cu" "$OBJ/selftest.cpp"
  $CXX $CXXFLAGS -o "$OBJ/selftest" "$OBJ/selftest.cpp" "$OBJ/emu_runtime.o"
  exec "$OBJ/selftest"
fi

if [ ! -f "$REPO/build/diffuse/core.so" ]; then
  echo "run.sh: $REPO/build/diffuse/core.so is missing (build the CPU module first: make)" >&2
  exit 2
fi
# busted re-executes itself through sh with the arguments unquoted, so a cpath with ';' breaks:
# the CPU core is linked next to the emulated module and one search path serves both
ln -sfn "$REPO/build/diffuse/core.so" "$OUT/core.so"
cd "$REPO"
set +e
# shellcheck disable=SC2086
DIFFUSE_EXPECT_CUDA=1 busted --lua=lua5.4 --cpath="$BUILD/?.so" ${EXTRA_BUSTED:-} spec/cuda_spec.lua
rc=$?
t2=$(date +%s)
echo "run.sh: busted exit status $rc; specs took $((t2 - t1)) s, $((t2 - t0)) s in all"
exit $rc
