-- examples/denoise_exact.lua: reverse-time denoising with the exact score s = -x / sigma(t)^2,
-- from the prior at t = 1 to t = 0: the probability-flow ODE (Euler) and the reverse SDE
-- (Euler-Maruyama), with panels along the path over the analytic N(0, sigma(t)^2).
--   lua5.4 examples/denoise_exact.lua [--out DIR] [--device cuda] [--steps 200] [--help]
local diffuse = require 'diffuse'
local tensor, plot, metrics = diffuse.tensor, diffuse.plot, diffuse.metrics

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  kappa = { 1.1, 'VE diffuser: g(t) = kappa^t' },
  steps = { 200, 'sampler steps from t = 1 to 0' },
  samples = { 20000, 'samples' },
}, 'denoise_exact.lua: reverse ODE and SDE with the exact score')
local path = diffuse.cli.setup(opts)

local ve = diffuse.ve(opts.kappa)
local exact = diffuse.score.exact(ve)
local N = opts.steps
-- recorded steps k: t = 1 - k / N = 1, 0.5, 0.25, 0.05, 0
local record = { 0, N // 2, 3 * N // 4, N - math.max(1, N // 20), N }
local x1 = ve:prior(opts.samples)

local fig = plot.figure{ rows = 2, cols = #record, height = 560,
                         title = ('Denoising with the exact score, %d steps from the prior'):format(N) }
print(('%-15s %5s %6s %8s %10s %8s %8s'):format('method', 'step', 't', 'sigma', 'sample std', 'W1', 'KS D'))
for row, method in ipairs{ 'euler', 'euler_maruyama' } do
  local sampler = diffuse.sampler{ diffuser = ve, steps = N, method = method }
  local _, xs = sampler:run(x1, exact, { record = record })
  local name = method == 'euler' and 'ODE (Euler)' or 'SDE (Euler-Maruyama)'
  for col, k in ipairs(record) do
    local t = 1 - k / N
    local s, x = ve:sigma(t), xs[k]
    local p = fig:panel(row, col)
    local std = x:std()
    local half = 4 * math.max(s, std)
    p:hist(x, { bins = 50, range = { -half, half }, density = true, label = 'samples' })
    if t > 0 then
      local grid = tensor.linspace(-half, half, 400)
      p:line(grid, diffuse.heat.density(grid, s), { dash = true, color = '#222222', label = 'N(0, σ(t)²)' })
      local w1 = metrics.wasserstein1(x, metrics.normal(0, s))
      local d = metrics.ks(x, metrics.normal(0, s))
      print(('%-15s %5d %6.3f %8.4f %10.4f %8.4f %8.4f'):format(method, k, t, s, std, w1, d))
    else
      -- at t = 0 the target is the point mass at the origin: what is left is the sampler's error
      p:vline(0, { dash = true, color = '#222222', label = 'target δ₀' })
      print(('%-15s %5d %6.3f %8.4f %10.4f %8s %8s   (target: a point at 0; W1 = mean |x| = %.4f)')
        :format(method, k, t, 0, std, '-', '-', x:abs():mean()))
    end
    p:title(('%s, t = %g'):format(row == 1 and 'ODE' or 'SDE', t)):xlabel('x')
    if col == 1 then p:ylabel(name .. '  density') end
    if col > 1 and col < #record then p:legend(false) end
  end
end

print('wrote ' .. fig:save(path 'denoise_exact.svg'))
