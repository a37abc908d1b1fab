-- bench/common.lua: what the benchmarks share: wall-clock medians, the PyTorch reference in
-- ../shared/peer run in the same invocation, and the output (a table plus one JSON line each).
local diffuse = require 'diffuse'
local M = {}

M.clock = diffuse.core.clock

--- median wall seconds of fn() over `reps` runs (after one warm-up run unless warm == false)
function M.median(fn, reps, warm)
  if warm ~= false then fn() end
  local ts = {}
  for i = 1, reps do
    collectgarbage()
    local t0 = M.clock()
    fn()
    ts[i] = M.clock() - t0
  end
  table.sort(ts)
  return ts[(reps + 1) // 2], ts
end

-- the reference: ../shared/peer/seed_reference.py, with a Python that has torch
M.peer_dir = os.getenv('PEER_DIR') or '../shared/peer'
local function has_torch(py)
  local p = io.popen(py .. ' -c "import torch" 2>/dev/null && echo ok')
  local out = p:read('a')
  p:close()
  return out:find('ok') ~= nil
end

--- the Python interpreter with torch, installing Debian's python3-torch when missing (as root)
function M.python()
  if M._py ~= nil then return M._py end
  for _, py in ipairs{ os.getenv('PEER_PYTHON') or '', '/usr/bin/python3', 'python3' } do
    if py ~= '' and has_torch(py) then M._py = py; return py end
  end
  local f = io.open(M.peer_dir .. '/seed_reference.py')
  if not f then
    io.stderr:write('bench: no reference at ' .. M.peer_dir .. ' (set PEER_DIR); diffuse only\n')
    M._py = false
    return false
  end
  f:close()
  io.stderr:write('bench: python3-torch is missing; installing Debian\'s python3-torch (apt)...\n')
  os.execute('sh -c \'[ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch >/dev/null 2>&1\'')
  M._py = has_torch('/usr/bin/python3') and '/usr/bin/python3' or false
  if not M._py then io.stderr:write('bench: could not install python3-torch; diffuse only\n') end
  return M._py
end

--- one run of a reference workload: its JSON record's numbers (wall_s, final_loss, ...)
function M.peer(workload, threads, extra)
  local py = M.python()
  if not py then return nil end
  local cmd = ('cd %s && %s seed_reference.py run -w %s --threads %d %s 2>/dev/null')
    :format(M.peer_dir, py, workload, threads or 1, extra or '')
  local p = io.popen(cmd)
  local out = p:read('a')
  p:close()
  local rec = {}
  for k, v in out:gmatch('"([%w_]+)": (%-?[%d%.eE%+%-]+)') do rec[k] = tonumber(v) end
  if not rec.wall_s then
    io.stderr:write('bench: the reference failed for ' .. workload .. '\n')
    return nil
  end
  return rec
end

--- alternate diffuse and the reference: reps runs each, medians of both
function M.versus(name, ours, workload, threads, reps, extra)
  local a, b = {}, {}
  local t0 = M.clock()
  ours() -- warm-up, and a first estimate of the run time
  -- short runs are repeated back to back within a repeat (about 0.1 s in all): after the
  -- reference's process a CPU that went idle can take milliseconds to wake, which is the
  -- machine's cost, not the library's
  local inner = math.max(1, math.min(200, math.floor(0.1 / math.max(M.clock() - t0, 1e-6))))
  local work -- FLOPs of the whole run, as the reference counts them (its flops_per_step.total)
  for i = 1, reps do
    for _ = 1, inner do
      collectgarbage()
      t0 = M.clock()
      ours()
      a[#a + 1] = M.clock() - t0
    end
    local rec = M.peer(workload, threads, extra)
    b[i] = rec and rec.wall_s or nil
    if rec and rec.total and rec.steps then work = rec.total * rec.steps end
  end
  table.sort(a)
  local ra = a[(#a + 1) // 2]
  local rb
  if #b == reps then
    table.sort(b)
    rb = b[(reps + 1) // 2]
  end
  return { name = name, threads = threads or 1, diffuse_s = ra, torch_s = rb,
           ratio = rb and rb / ra or nil, gflops = work and work / ra / 1e9 or nil,
           torch_gflops = work and rb and work / rb / 1e9 or nil }
end

--- the core's peak float32 rate, one thread: measured by bench/peak.c (build/peak, which make
--- bench builds: independent chains of vector fmas), else estimated as 32 FLOPs a cycle at the
--- clock /proc/cpuinfo reports (a VM's base clock, below the boost clock the chains measure)
function M.peak_gflops()
  if M._peak ~= nil then return M._peak end
  local p = io.popen('build/peak 2>/dev/null')
  M._peak = tonumber(p and p:read('a') or '') or false
  if p then p:close() end
  if not M._peak then
    local f = io.open('/proc/cpuinfo')
    local mhz = f and tonumber(f:read('a'):match('cpu MHz%s*:%s*([%d%.]+)'))
    if f then f:close() end
    M._peak = mhz and 32 * mhz / 1e3 or false
  end
  return M._peak or nil
end

function M.report(rows, title)
  local peak = M.peak_gflops()
  print((title or '') .. (peak and ('  (peak %.1f GFLOP/s a thread, measured by build/peak)'):format(peak) or ''))
  print(('%-22s %8s %14s %14s %10s %16s %8s'):format('workload', 'threads', 'diffuse (ms)', 'torch (ms)', 'speedup',
    'GFLOP/s (torch)', 'of peak'))
  local over = false
  local function share(r)
    local pct = 100 * r.gflops / (peak * r.threads)
    if pct > 100 then over = true; return ('%.0f%%*'):format(pct) end
    return ('%.0f%%'):format(pct)
  end
  for _, r in ipairs(rows) do
    print(('%-22s %8d %14.3f %14s %10s %16s %8s'):format(r.name, r.threads, r.diffuse_s * 1e3,
      r.torch_s and ('%.3f'):format(r.torch_s * 1e3) or '-', r.ratio and ('%.1fx'):format(r.ratio) or '-',
      r.gflops and ('%.1f (%.2f)'):format(r.gflops, r.torch_gflops or 0) or '-',
      (r.gflops and peak) and share(r) or '-'))
  end
  if over then
    print('  * over 100%: the FLOPs are the reference\'s count, and it counts work diffuse does not repeat'
      .. ' (a time embedding of a sampler step is the same for every row: diffuse computes it once a step)')
  end
  for _, r in ipairs(rows) do
    print(('{"bench":%q,"threads":%d,"diffuse_s":%.6g,"torch_s":%s,"ratio":%s,"gflops":%s}'):format(r.name, r.threads,
      r.diffuse_s, r.torch_s and ('%.6g'):format(r.torch_s) or 'null', r.ratio and ('%.4g'):format(r.ratio) or 'null',
      r.gflops and ('%.4g'):format(r.gflops) or 'null'))
  end
end

return M
