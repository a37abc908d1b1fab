-- examples/samplers.lua: every sampler and time grid against the exact answer. Two problems
-- whose probability-flow map is known: the heat kernel from the origin (the seed's: every sample
-- should end at 0) and Gaussian data N(mu, s^2), whose flow is x(sigma) = mu + (x(sigma_1) - mu)
-- sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_1^2). For each method and grid, the error against the
-- exact answer as the step count grows, against the score evaluations it took (log-log), and the
-- measured order (the slope of a least-squares fit over the larger step counts) in a table.
-- Methods on a sigma grid are judged at the grid's last sigma > 0, before their first-order last
-- step to 0 (whose floor would hide the order); those on the uniform t grid at t = 0.5 and at
-- t = 0 (where the ODE in t is singular for the heat kernel: N^(-1/2) whatever the method). rk45
-- is judged at its t_min over tolerances.
--   lua5.4 examples/samplers.lua [--out DIR] [--device cuda] [--help]
local diffuse = require 'diffuse'
local tensor, plot = diffuse.tensor, diffuse.plot

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  kappa = { 1.1, 'VE diffuser: g(t) = kappa^t' },
  mu = { 0.7, 'the Gaussian data: mean' },
  s = { 0.4, 'the Gaussian data: standard deviation' },
  points = { 101, 'starting points, evenly spread over [-3, 3] sigma(1)' },
  max_steps = { 256, 'the largest step count (steps double from 2 up to it)' },
}, 'samplers.lua: error against the exact answer versus NFE, for every method and grid')
local path = diffuse.cli.setup(opts)

local ve = diffuse.ve(opts.kappa)
local heat = diffuse.score.exact(ve)
local gauss = diffuse.score.mixture(ve, { weights = { 1 }, means = { opts.mu }, stds = { opts.s } })
local s1 = ve:sigma(1)
local x1 = tensor.linspace(-3 * s1, 3 * s1, opts.points):reshape(opts.points, 1)

local function flow(sig) -- the Gaussian's exact map from sigma(1) to sigma
  local s2 = opts.s * opts.s
  return (x1 - opts.mu) * (math.sqrt(s2 + sig * sig) / math.sqrt(s2 + s1 * s1)) + opts.mu
end

local cases = {
  { 'euler', 'uniform' }, { 'heun', 'uniform' }, { 'rk4', 'uniform' },
  { 'euler', 'karras' }, { 'heun', 'karras' }, { 'ddim', 'karras' }, { 'dpmpp_2m', 'karras' },
  { 'euler', 'log_sigma' }, { 'heun', 'log_sigma' }, { 'ddim', 'log_sigma' }, { 'dpmpp_2m', 'log_sigma' },
}
local steps, n = {}, 2 -- 2, 4, ..., max_steps
while n <= opts.max_steps do steps[#steps + 1] = n; n = 2 * n end

-- the errors of one run: at t = 0 and t = 0.5 (uniform grid), or at the last sigma > 0 (sigma
-- grids: both the same)
local function run_error(method, grid, N, score, exact_at)
  local s = diffuse.sampler{ diffuser = ve, steps = N, method = method, grid = grid }
  local _, sg = s:times()
  local k = grid == 'uniform' and N or N - 1
  local k4 = grid == 'uniform' and N // 2 or k
  local _, p = s:run(x1, score, { record = { k, k4 } })
  local e0 = (p[k] - exact_at(grid == 'uniform' and 0 or sg[k + 1])):abs():max()
  local e4 = (p[k4] - exact_at(sg[k4 + 1])):abs():max()
  return e0, e4, s.nfe
end

-- least-squares slope of log err against log steps (h = 1 / steps) over the four largest step counts before the
-- errors stop falling (float32's floor, ~1e-6 here, or exactness)
local function order(ns, errs)
  local keep = {}
  for i = 1, #errs do
    if errs[i] < 3e-6 then break end
    keep[#keep + 1] = i
  end
  local xs, ys = {}, {}
  for j = math.max(1, #keep - 3), #keep do
    local i = keep[j]
    xs[#xs + 1] = math.log(ns[i])
    ys[#ys + 1] = math.log(errs[i])
  end
  if #xs < 2 then return nil end
  local mx, my = 0, 0
  for i = 1, #xs do mx = mx + xs[i] / #xs; my = my + ys[i] / #xs end
  local sxy, sxx = 0, 0
  for i = 1, #xs do sxy = sxy + (xs[i] - mx) * (ys[i] - my); sxx = sxx + (xs[i] - mx) ^ 2 end
  return -sxy / sxx
end

local results = {}
for _, case in ipairs(cases) do
  local r = { name = case[1] .. ' (' .. case[2] .. ')', heat = {}, gauss = {}, gauss4 = {}, nfe = {},
              uniform = case[2] == 'uniform' }
  for i, N in ipairs(steps) do
    local eh, _, nfe = run_error(case[1], case[2], N, heat, function(sig) return x1 * (sig / s1) end)
    local eg, eg4 = run_error(case[1], case[2], N, gauss, flow)
    r.heat[i], r.gauss[i], r.gauss4[i], r.nfe[i] = eh, eg, eg4, nfe
  end
  r.order_heat, r.order_gauss, r.order_gauss4 = order(steps, r.heat), order(steps, r.gauss), order(steps, r.gauss4)
  results[#results + 1] = r
end
-- rk45 over tolerances, judged at its t_min before the step to 0 (x recovered from x0 = D)
do
  local r = { name = 'rk45 (adaptive)', heat = {}, gauss = {}, nfe = {} }
  for i, tol in ipairs{ 1e-2, 1e-3, 1e-4, 1e-5, 1e-6 } do
    local tm = 1e-3
    local s = diffuse.sampler{ diffuser = ve, method = 'rk45', rtol = tol, atol = tol, t_min = tm }
    -- with logq the run stops at t_min (no last step): x there against the exact flow
    local xt = s:run(x1, gauss, { logq = true, prior = gauss })
    r.gauss[i], r.nfe[i] = (xt - flow(ve:sigma(tm))):abs():max(), s.nfe
    local xh = s:run(x1, heat, { logq = true })
    r.heat[i] = (xh - x1 * (ve:sigma(tm) / s1)):abs():max()
  end
  r.rk45 = true
  results[#results + 1] = r
end

local function fmt_order(p, r) return r.rk45 and '–' or p and ('%.2f'):format(p) or 'exact' end
local md = { '| method (grid) | order, heat kernel (t = 0 or sigma_min) | order, Gaussian, t = 0.5 or sigma_min | order, Gaussian, t = 0 | error at the most steps (heat / Gaussian) | NFE then |',
             '|---|---|---|---|---|---|' }
for _, r in ipairs(results) do
  local n = #r.nfe
  md[#md + 1] = ('| %s | %s | %s | %s | %.2e / %.2e | %d |'):format(r.name, fmt_order(r.order_heat, r),
    r.uniform and fmt_order(r.order_gauss4, r) or fmt_order(r.order_gauss, r),
    r.uniform and fmt_order(r.order_gauss, r) or '(the same)',
    r.heat[n], r.gauss[n], r.nfe[n])
end
local text = table.concat(md, '\n')
print('\n' .. text .. '\n')
local notes = 'Orders are slopes of the error against the step count (the error ~ h^p, h = 1 / steps) over the step counts before the error '
  .. 'reaches float32\'s floor (~1e-6); "exact" means every error is at that floor (the sigma-space methods on the heat '
  .. 'kernel, whose denoiser is 0). rk4 reaches the floor by 8 steps at t = 0.5, so its order there comes from 2 to 8 steps. '
  .. 'DDIM and Euler in sigma are one method for a variance-exploding diffuser (the same update).'
print(notes)
local f = assert(io.open(path 'samplers.md', 'w'))
f:write('# Samplers against the exact answer\n\n', text, '\n\n', notes, '\n')
f:close()
print('wrote ' .. path 'samplers.md')

local fig = plot.figure{ cols = 2, width = 1300, height = 520, title = 'Error against the exact answer versus score evaluations' }
for i, r in ipairs(results) do
  local function floored(e) local o = {}; for j = 1, #e do o[j] = math.max(e[j], 1e-9) end; return o end
  local dash = r.name:find('sigma') ~= nil
  local color = r.rk45 and '#000000' or 'C' .. ((i - 1) % 10)
  fig[1]:line(r.nfe, floored(r.heat), { color = color, width = 2, dash = dash, label = r.name })
  fig[2]:line(r.nfe, floored(r.gauss), { color = color, width = 2, dash = dash, label = r.name })
end
fig[1]:xscale('log'):yscale('log'):title('heat kernel from the origin (max |x0|)'):xlabel('NFE'):ylabel('error'):grid()
fig[2]:xscale('log'):yscale('log'):title(('Gaussian data N(%g, %g²)'):format(opts.mu, opts.s)):xlabel('NFE'):grid():legend(false)
fig[1]:legend{ loc = 'lower left' }
print('wrote ' .. fig:save(path 'samplers.svg'))
