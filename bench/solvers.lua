-- bench/solvers.lua: the samplers' throughput (samples x steps per second) for exact, mixture and
-- network scores and every method; the likelihood's cost per row and evaluation against a sampler
-- step's; rk45's evaluations against fixed-step Heun's at the same error; and, under the
-- allocation counter (build/alloc.so), that no sampler or likelihood loop allocates. `make bench`
-- runs it; one JSON line per measurement.
local diffuse = require 'diffuse'
local B = require 'common'
local tensor = diffuse.tensor

local ve = diffuse.ve(1.1)
local exact = diffuse.score.exact(ve)
local mix = diffuse.score.mixture(ve, { weights = { 0.3, 0.7 }, means = { -1.5, 1.5 }, stds = { 0.2, 0.3 } })
diffuse.seed(0)
local net = diffuse.nn.mlp{ dim = 1 }
diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(1024, 1), steps = 200 }
local nets = diffuse.score.net(net, ve)
local scores = { { 'exact', exact }, { 'mixture', mix }, { 'network', nets } }

-- fused: the whole run in one backend call (a tile or a row through every step); stepped: a
-- native loop of whole-batch score evaluations and per-row updates (solver.c). ddim with eta = 0
-- is Euler in sigma computed the stepped way: the cost of stepping, at equal arithmetic
local methods = {
  { 'euler (uniform, fused)', { method = 'euler' } },
  { 'heun (uniform, fused)', { method = 'heun' } },
  { 'euler (karras, fused)', { method = 'euler', grid = 'karras' } },
  { 'heun (karras, fused)', { method = 'heun', grid = 'karras' } },
  { 'ddim (karras, stepped)', { method = 'ddim', grid = 'karras' } },
  { 'dpmpp_2m (karras, stepped)', { method = 'dpmpp_2m', grid = 'karras' } },
  { 'edm (karras, churn)', { method = 'edm', grid = 'karras', S_churn = 10 } },
  { 'pc (karras, 1 corrector)', { method = 'pc', grid = 'karras' } },
  { 'rk4 (uniform, stepped)', { method = 'rk4' } },
  { 'rk45 (1e-5)', { method = 'rk45', rtol = 1e-5, atol = 1e-5 } },
}

for _, threads in ipairs{ 1, 2 } do
  diffuse.set_threads(threads)
  print(('\n== samplers, %d thread%s: samples x evaluations per second (4096 samples, 100 steps)'):format(threads, threads > 1 and 's' or ''))
  print(('%-28s %14s %14s %14s'):format('method', 'exact', 'mixture', 'network'))
  for _, m in ipairs(methods) do
    local cells = {}
    for j, sc in ipairs(scores) do
      local o = { diffuser = ve, steps = 100 }
      for k, v in pairs(m[2]) do o[k] = v end
      local s = diffuse.sampler(o)
      diffuse.seed(1)
      local x1 = ve:prior(4096)
      local secs = B.median(function() s:run(x1, sc[2]) end, 5)
      local rate = 4096 * s.nfe / secs
      cells[j] = ('%.3g'):format(rate)
      print(('{"bench":"sampler","method":%q,"score":%q,"threads":%d,"seconds":%.6g,"nfe":%d,"sample_evals_per_s":%.6g}')
        :format(m[1], sc[1], threads, secs, s.nfe, rate))
    end
    print(('%-28s %14s %14s %14s'):format(m[1], cells[1], cells[2], cells[3]))
  end
end
diffuse.set_threads(1)

-- the likelihood's cost per row and evaluation (score + exact divergence) against a sampler step
print('\n== the likelihood: microseconds per row per evaluation (1 thread, 4096 rows)')
diffuse.seed(2)
local x = mix:sample(4096)
for _, sc in ipairs(scores) do
  local lik = B.median(function() diffuse.likelihood{ diffuser = ve, score = sc[2], x = x, method = 'heun', steps = 50, prior = mix } end, 3)
  local s = diffuse.sampler{ diffuser = ve, steps = 50, method = 'heun', grid = 'karras' }
  local smp = B.median(function() s:run(x, sc[2]) end, 3)
  local per_l, per_s = lik / (4096 * 100), smp / (4096 * s.nfe)
  print(('%-10s likelihood %8.4f us, sampler step %8.4f us: %.2fx'):format(sc[1], per_l * 1e6, per_s * 1e6, per_l / per_s))
  print(('{"bench":"likelihood_cost","score":%q,"us_per_row_eval":%.6g,"sampler_us_per_row_eval":%.6g}'):format(sc[1], per_l * 1e6, per_s * 1e6))
end

-- rk45 against fixed-step Heun at the same error (the mixture's log p, exact score)
print("\n== rk45's evaluations against fixed-step Heun's at the same error (the mixture's log p at 512 points)")
diffuse.seed(3)
local xs = mix:sample(512)
local want = mix:log_density(xs, 1e-5)
for _, tol in ipairs{ 1e-3, 1e-4, 1e-5 } do
  local lp, info = diffuse.likelihood{ diffuser = ve, score = mix, x = xs, method = 'rk45', rtol = tol, atol = tol, prior = mix }
  local err = (lp - want):abs():max()
  local n = 2
  local herr, hnfe
  repeat
    n = math.floor(n * 1.25) + 1
    local lh, hi = diffuse.likelihood{ diffuser = ve, score = mix, x = xs, method = 'heun', steps = n, prior = mix }
    herr, hnfe = (lh - want):abs():max(), hi.nfe
  until herr <= err or n > 20000
  print(('rk45 tol %g: error %.2e in %d evaluations (%.1f per row); Heun needs %d evaluations (%d steps) for %.2e'):format(
    tol, err, info.nfe, info.nfe_rows, hnfe, n, herr))
  print(('{"bench":"rk45_vs_heun","tol":%g,"rk45_error":%.6g,"rk45_nfe":%d,"rk45_nfe_rows":%.6g,"heun_nfe":%d,"heun_error":%.6g}')
    :format(tol, err, info.nfe, info.nfe_rows, hnfe, herr))
end

-- allocations: a run at 10 and at 1000 steps make the same number of C allocations
print('\n== allocations inside the loops (build/alloc.so counts malloc and calloc)')
local f = io.open('build/alloc.so')
if not f then
  print('build/alloc.so is missing (make bench builds it)')
else
  f:close()
  local code = [[
    local diffuse = require 'diffuse'
    local ve = diffuse.ve(1.1)
    local mix = diffuse.score.mixture(ve, { weights = { 0.3, 0.7 }, means = { -1.5, 1.5 }, stds = { 0.2, 0.3 } })
    local net = diffuse.score.net(diffuse.nn.mlp{ dim = 1 }, ve)
    local x = mix:sample(300)
    local N = tonumber(os.getenv('STEPS'))
    local what = os.getenv('WHAT')
    local sc = os.getenv('SCORE') == 'net' and net or mix
    collectgarbage('stop')
    if what == 'likelihood' then
      diffuse.likelihood{ diffuser = ve, score = sc, x = x, method = 'heun', steps = N, prior = mix }
    else
      diffuse.sampler{ diffuser = ve, steps = N, method = what, grid = 'karras' }:run(x, sc)
    end
  ]]
  local function count(what, score, steps)
    local cmd = ("WHAT=%s SCORE=%s STEPS=%d LD_PRELOAD=build/alloc.so LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 -e %q 2>&1"):format(
      what, score, steps, code)
    local p = io.popen(cmd)
    local out = p:read('a')
    p:close()
    return tonumber(out:match('allocations (%d+)')) or -1
  end
  for _, what in ipairs{ 'heun', 'dpmpp_2m', 'edm', 'pc', 'likelihood' } do
    for _, score in ipairs{ 'mixture', 'net' } do
      local a, b = count(what, score, 10), count(what, score, 1000)
      print(('%-12s %-8s %d allocations at 10 steps, %d at 1000: %s'):format(what, score, a, b, a == b and 'none in the loop' or 'GROWS'))
      print(('{"bench":"allocations","what":%q,"score":%q,"at_10":%d,"at_1000":%d}'):format(what, score, a, b))
    end
  end
end
