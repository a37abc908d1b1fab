-- bench/cuda.lua: GPU benchmarks of the CUDA backend (`make bench-cuda`), printed as one JSON line
-- per measurement and then a table:
--   elementwise GB/s on 2^26 floats (add, mul by a scalar, exp, silu, ...) against the copy
--     bandwidth (clone), which is what a memory-bound kernel can hope for;
--   reductions (sum, sum along a dimension, min) in GB/s;
--   matmul TFLOP/s (4096^3 and the score networks' shapes, 65536x256x256 and friends);
--   randn throughput (Gnumbers/s);
--   launch latency on small tensors: the mean time of an add queued behind many others, and of
--     one add followed by a synchronisation (a round trip).
-- Without a usable GPU it prints why and exits 0.
local diffuse = require 'diffuse'
local tensor = diffuse.tensor
local clock = diffuse.core.clock

local ok, why = diffuse.cuda_available()
if not ok then
  print('bench/cuda.lua: skipped: ' .. tostring(why))
  os.exit(0)
end
local cuda = diffuse.cuda
local sync = cuda.synchronize

diffuse.set_device('cuda', 0)
local device = diffuse.get_device()
print(diffuse.summary())

-- median seconds of one call of fn (synchronised), over enough repetitions for ~0.25 s
local function time(fn)
  fn(); sync()
  local t0 = clock()
  fn(); sync()
  local once = math.max(clock() - t0, 1e-7)
  local reps = math.max(5, math.min(500, math.floor(0.25 / once)))
  local ts = {}
  for i = 1, reps do
    local s = clock()
    fn(); sync()
    ts[i] = clock() - s
  end
  table.sort(ts)
  return ts[(reps + 1) // 2]
end

local rows = {}
local function report(kind, op, size, secs, rate, unit, extra)
  rows[#rows + 1] = { kind, op, size, secs, rate, unit, extra or '' }
  local json = ('{"bench":"cuda","device":%q,"kind":%q,"op":%q,"size":%q,"seconds":%.6g,"%s":%.6g')
    :format(device, kind, op, size, secs, unit, rate)
  if extra and extra ~= '' then json = json .. (',"note":%q'):format(extra) end
  print(json .. '}')
end

diffuse.seed(0)

-- ---- elementwise, against the copy bandwidth -------------------------------------------------
do
  local n = 1 << 26
  local a, b = tensor.randn(n), tensor.randn(n)
  local m, row = a:reshape(n // 256, 256), tensor.randn(256)
  local size = tostring(n)
  -- each op: function, bytes moved per element (reads + writes)
  local copy_s = time(function() local y <close> = a:clone() end)
  local copy_bw = 8 * n / copy_s / 1e9
  report('elementwise', 'copy (clone)', size, copy_s, copy_bw, 'GB/s', 'reference')
  local ops = {
    { 'add', function() local y <close> = a + b end, 12 },
    { 'mul scalar', function() local y <close> = a * 2 end, 8 },
    { 'add row (broadcast)', function() local y <close> = m + row end, 8 },
    { 'exp', function() local y <close> = a:exp() end, 8 },
    { 'silu', function() local y <close> = a:silu() end, 8 },
    { 'sin', function() local y <close> = a:sin() end, 8 },
    { 'tanh', function() local y <close> = a:tanh() end, 8 },
    { 'pow', function() local y <close> = a ^ b end, 12 }, -- NaN for negative bases: same work
  }
  for _, op in ipairs(ops) do
    local s = time(op[2])
    local bw = op[3] * n / s / 1e9
    report('elementwise', op[1], size, s, bw, 'GB/s', ('%.0f%% of copy'):format(100 * bw / copy_bw))
  end

  -- reductions: bytes read per second
  local reds = {
    { 'sum', function() return a:sum() end },
    { 'std', function() return a:std() end }, -- two passes
    { 'min', function() return a:min() end },
    { 'sum dim 2 (rows of 256)', function() local y <close> = m:sum(2) end },
    { 'sum dim 1 (columns)', function() local y <close> = m:sum(1) end },
    { 'max dim 2 + indices', function() local y, i = m:max(2); y:free(); i:free() end },
  }
  for _, r in ipairs(reds) do
    local s = time(r[2])
    local bw = 4 * n / s / 1e9
    report('reduction', r[1], size, s, bw, 'GB/s', ('%.0f%% of copy'):format(100 * bw / copy_bw))
  end

  -- random numbers
  local s = time(function() local y <close> = tensor.randn(n) end)
  report('random', 'randn', size, s, n / s / 1e9, 'Gnumbers/s')
  s = time(function() local y <close> = tensor.rand(n) end)
  report('random', 'rand', size, s, n / s / 1e9, 'Gnumbers/s')
  a:free(); b:free()
end

-- ---- matmul ----------------------------------------------------------------------------------
for _, mkn in ipairs { { 4096, 4096, 4096 }, { 65536, 256, 256 }, { 65536, 256, 8 },
                       { 65536, 8, 256 }, { 1024, 1024, 1024 }, { 4096, 8, 8 } } do
  local m, k, n = mkn[1], mkn[2], mkn[3]
  local a, b = tensor.randn(m, k), tensor.randn(k, n)
  local s = time(function() local c <close> = a:matmul(b) end)
  report('matmul', 'matmul', ('%dx%dx%d'):format(m, k, n), s, 2 * m * k * n / s / 1e12, 'TFLOP/s')
  a:free(); b:free()
end
do
  local a, b = tensor.randn(64, 256, 256), tensor.randn(64, 256, 256)
  local s = time(function() local c <close> = a:matmul(b) end)
  report('matmul', 'batched', '64x256x256x256', s, 2 * 64 * 256 ^ 3 / s / 1e12, 'TFLOP/s')
end

-- ---- launch latency on small tensors ---------------------------------------------------------
do
  local x, y = tensor.randn(1024), tensor.randn(1024)
  local reps = 20000
  for _ = 1, 100 do local z <close> = x + y end
  sync()
  local t0 = clock()
  for _ = 1, reps do local z <close> = x + y end
  sync()
  local queued = (clock() - t0) / reps
  report('latency', 'add 1024 (queued)', '1024', queued, queued * 1e6, 'us')
  t0 = clock()
  for _ = 1, reps // 10 do
    local z <close> = x + y
    sync()
  end
  local round = (clock() - t0) / (reps // 10)
  report('latency', 'add 1024 + synchronize', '1024', round, round * 1e6, 'us')
  t0 = clock()
  for _ = 1, reps // 10 do local _ = x:sum() end
  local red = (clock() - t0) / (reps // 10)
  report('latency', 'sum 1024 (to a number)', '1024', red, red * 1e6, 'us')
  local st = cuda.memory_stats()
  report('allocator', 'cudaMalloc calls', 'all', 0, st.cuda_malloc_calls, 'calls',
         ('%d cache hits, %.1f MiB cached'):format(st.cache_hits, st.bytes_cached / 2 ^ 20))
end

-- ---- the table ------------------------------------------------------------------------------
print()
print(('%-12s %-26s %-16s %12s %12s  %s'):format('kind', 'op', 'size', 'time (us)', 'rate', ''))
for _, r in ipairs(rows) do
  print(('%-12s %-26s %-16s %12.1f %12.4g %-11s %s'):format(r[1], r[2], r[3], r[4] * 1e6, r[5],
    r[6], r[7]))
end
