-- bench/cuda.lua: GPU benchmarks of the CUDA backend (`make bench-cuda`), printed as one JSON line
-- per measurement and then a table:
--   elementwise GB/s on 2^26 floats (add, mul by a scalar, exp, silu, ...) against the copy
--     bandwidth (clone), which is what a memory-bound kernel can hope for;
--   reductions (sum, sum along a dimension, min) in GB/s;
--   matmul TFLOP/s (4096^3 and the score networks' shapes, 65536x256x256 and friends);
--   randn throughput (Gnumbers/s);
--   launch latency on small tensors: the mean time of an add queued behind many others, and of
--     one add followed by a synchronisation (a round trip);
--   training steps (diffuse.train, whose chunks replay a captured CUDA graph) of the seed MLP
--     (batch 1024, hidden 8x3), the time-embedded net (embed 256, hidden 8) and a 256-wide MLP (the
--     cuBLAS path), against the same steps as separate calls (loss.dsm + opt:step); target for the
--     seed MLP: under 20 us a step;
--   the network-score sampler (seed MLP and time-embedded net, 4096 and 2^20 samples x 100 steps);
--   the exact-score samplers at 2^24 samples x 200 steps (one fused kernel per run), in element
--     steps per second, against the measured copy bandwidth and the chip's FP32 peak.
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
local copy_bw -- GB/s of a clone of 2^26 floats: what a memory-bound kernel can hope for

-- ---- elementwise, against the copy bandwidth -------------------------------------------------
do
  local n = 1 << 26
  local a, b = tensor.randn(n), tensor.randn(n)
  local m, row = a:reshape(n // 256, 256), tensor.randn(256)
  local size = tostring(n)
  -- each op: function, bytes moved per element (reads + writes)
  local copy_s = time(function() local y <close> = a:clone() end)
  copy_bw = 8 * n / copy_s / 1e9
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

-- ---- training steps: the graph path against separate calls --------------------------------
do
  local ve = diffuse.ve(1.1)
  local function train_case(name, make, dim, steps)
    diffuse.seed(0)
    local net = make()
    local data = tensor.zeros(1024, dim)
    local opt = diffuse.optim.adam(net, { lr = 1e-3 })
    -- the first call captures the step's graphs; later calls replay them
    diffuse.train{ net = net, diffuser = ve, data = data, steps = 16, optimizer = opt }
    sync()
    local best = math.huge
    for _ = 1, 3 do
      local t0 = clock()
      diffuse.train{ net = net, diffuser = ve, data = data, steps = steps, optimizer = opt }
      sync()
      best = math.min(best, clock() - t0)
    end
    local per = best / steps
    local note = name:find('seed MLP', 1, true) and
      ('target < 20 us: %s'):format(per < 20e-6 and 'met' or 'MISSED') or ''
    local gs = cuda.graph_stats()
    if gs.fallback_steps > 0 then
      note = note .. (' NO GRAPHS (%d steps without): %s'):format(gs.fallback_steps,
                                                                   tostring(gs.last_failure))
    end
    report('train', name .. ' (graph)', ('1024x%d'):format(steps), per, per * 1e6, 'us/step', note)
    -- the same steps one call at a time (each reads its loss back: a round trip per step)
    local reps = 200
    local t0 = clock()
    for _ = 1, reps do
      net:zero_grad()
      diffuse.loss.dsm(net, ve, data)
      opt:step()
    end
    sync()
    local plain = (clock() - t0) / reps
    report('train', name .. ' (separate calls)', ('1024x%d'):format(reps), plain, plain * 1e6,
           'us/step', ('the graph is %.1fx faster'):format(plain / per))
    net:free()
    opt:free()
  end
  train_case('seed MLP 8x3', function() return diffuse.nn.mlp{ dim = 1, hidden = { 8, 8, 8 } } end,
             1, 4096)
  train_case('time-embedded 256/8', function()
    return diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 256, scale = 30 }
  end, 1, 4096)
  train_case('MLP 256x2 (cuBLAS)', function() return diffuse.nn.mlp{ dim = 2, hidden = { 256, 256 } } end,
             2, 1024)
end

-- ---- the fused exact-score samplers: 2^24 samples x 200 steps --------------------------------
do
  local props = cuda.device_properties()
  local ve = diffuse.ve(1.1)
  local exact = diffuse.score.exact(ve)
  local n, steps = 1 << 24, 200
  diffuse.seed(1)
  local x1 = ve:prior(n)
  -- float operations per element and step, counted as IEEE operations (a division is one): Euler
  -- x + c1 (-x / s2): 3; Euler-Maruyama adds c2 z: 5 (the Philox normal not counted); Heun: the
  -- two scores, the predictor and the corrector: 8
  local flops = { euler = 3, euler_maruyama = 5, heun = 8 }
  for _, method in ipairs { 'euler', 'euler_maruyama', 'heun' } do
    local s = diffuse.sampler{ diffuser = ve, steps = steps, method = method }
    local secs = time(function() local x0 <close> = s:run(x1, exact) end)
    -- memory: the run's copy of x1 and the kernel's one pass (a read and a write each)
    local bw = 16 * n / secs / 1e9
    local fl = flops[method] * n * steps / secs
    report('sampler', 'exact ' .. method, '2^24x200', secs, n * steps / secs / 1e9, 'Gsteps/s',
           ('%.0f GB/s = %.1f%% of copy; %.0f GFLOP/s = %.1f%% of FP32 peak (%.1f TFLOP/s)')
             :format(bw, 100 * bw / copy_bw, fl / 1e9, 100 * fl / props.peak_fp32_flops,
                     props.peak_fp32_flops / 1e12))
  end
  x1:free()
end

-- ---- the network-score sampler: one kernel per run (a row per thread through all steps) ------
do
  local ve = diffuse.ve(1.1)
  diffuse.seed(2)
  local nets = {
    { 'seed MLP 8x3', diffuse.nn.mlp{ dim = 1, hidden = { 8, 8, 8 } } },
    { 'time-embedded 256/8', diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 256, scale = 30 } },
  }
  for _, nc in ipairs(nets) do
    nc[2]:to('cuda')
    local score = diffuse.score.net(nc[2], ve)
    for _, n in ipairs { 4096, 1 << 20 } do
      local x1 = ve:prior(n)
      local s = diffuse.sampler{ diffuser = ve, steps = 100, method = 'euler' }
      local secs = time(function() local x0 <close> = s:run(x1, score) end)
      report('sampler', 'net ' .. nc[1], ('%dx100'):format(n), secs, n * 100 / secs / 1e9,
             'Gsteps/s', n == 4096 and '(the reference\'s sample_net size)' or '')
      x1:free()
    end
  end
end

-- ---- the table ------------------------------------------------------------------------------
print()
print(('%-12s %-26s %-16s %12s %12s  %s'):format('kind', 'op', 'size', 'time (us)', 'rate', ''))
for _, r in ipairs(rows) do
  print(('%-12s %-26s %-16s %12.1f %12.4g %-11s %s'):format(r[1], r[2], r[3], r[4] * 1e6, r[5],
    r[6], r[7]))
end
