-- bench/tensor.lua: elementwise GB/s and matmul GFLOP/s of the current device at a few sizes,
-- printed as a table and as one JSON line per measurement (`make bench`).
local diffuse = require 'diffuse'
local tensor = diffuse.tensor
local clock = diffuse.core.clock

local device = arg and arg[1] or 'cpu'
diffuse.set_device(device)
local sync = diffuse.cuda and device ~= 'cpu' and diffuse.cuda.synchronize or function() end

-- median seconds of fn over enough repetitions to take ~0.3 s in all
local function time(fn)
  fn(); sync()
  local t0 = clock(); fn(); sync()
  local once = math.max(clock() - t0, 1e-7)
  local reps = math.max(3, math.min(200, math.floor(0.3 / once)))
  local ts = {}
  for i = 1, reps do
    local s = clock(); fn(); sync(); ts[i] = clock() - s
  end
  table.sort(ts)
  return ts[(reps + 1) // 2]
end

local rows = {}
local function report(kind, name, size, secs, rate, unit)
  rows[#rows + 1] = { kind, name, size, secs, rate, unit }
  print(('{"bench":"tensor","device":%q,"kind":%q,"op":%q,"size":%q,"seconds":%.6g,"%s":%.4g}')
    :format(device, kind, name, size, secs, unit, rate))
end

diffuse.seed(0)
for _, n in ipairs{ 1 << 16, 1 << 20, 1 << 24 } do
  local a, b = tensor.randn(n), tensor.randn(n)
  local ops = {
    { 'copy', function() return a:clone() end, 2 },
    { 'add', function() return a + b end, 3 },
    { 'mul scalar', function() return 2 * a end, 2 },
    { 'exp', function() return a:exp() end, 2 },
    { 'silu', function() return a:silu() end, 2 },
    { 'sin', function() return a:sin() end, 2 },
    { 'sum', function() return a:sum() end, 1 },
    { 'randn', function() return tensor.randn(n) end, 1 },
  }
  for _, op in ipairs(ops) do
    local s = time(op[2])
    report('elementwise', op[1], tostring(n), s, op[3] * 4 * n / s / 1e9, 'GB/s')
  end
end

for _, mkn in ipairs{ { 64, 64, 64 }, { 256, 256, 256 }, { 1024, 1024, 1024 }, { 4096, 8, 8 },
                      { 1024, 256, 8 } } do
  local m, k, n = mkn[1], mkn[2], mkn[3]
  local a, b = tensor.randn(m, k), tensor.randn(k, n)
  local s = time(function() return a:matmul(b) end)
  report('matmul', 'matmul', ('%dx%dx%d'):format(m, k, n), s, 2 * m * k * n / s / 1e9, 'GFLOP/s')
end

print()
print(('%-12s %-12s %-16s %12s %12s'):format('kind', 'op', 'size', 'time (us)', 'rate'))
for _, r in ipairs(rows) do
  print(('%-12s %-12s %-16s %12.1f %9.2f %s'):format(r[1], r[2], r[3], r[4] * 1e6, r[5], r[6]))
end
