-- examples/circle.lua: diffusion on U(1), exact against learned. Von Mises data p_0 ∝ exp(kappa cos
-- theta) (a toy action on U(1): beta = kappa, coeffs = {1}), its diffused density p_t exact at
-- every t (the Fourier series with I_k(kappa) / I_0(kappa) exp(-k^2 sigma^2 / 2)), and a small net
-- trained by denoising score matching with wrapped noise (diffuse.train{group = U(1)}). Both scores
-- carry 4096 uniform draws back with 200 Euler steps of the probability-flow ODE with log q;
-- ESS, KL and log Z are printed against the exact values, and p_t is drawn against histograms.
--   lua5.4 examples/circle.lua [--out DIR] [--kappa 2] [--steps 3000] [--help]
local diffuse = require 'diffuse'
local tensor, plot, metrics, nn = diffuse.tensor, diffuse.plot, diffuse.metrics, diffuse.nn

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  kappa = { 2, 'von Mises concentration' },
  steps = { 3000, 'training steps' },
  data = { 16384, 'exact draws of the von Mises data' },
  samples = { 4096, 'uniform draws carried by the flow' },
  ode_steps = { 200, 'Euler steps of the probability-flow ODE' },
}, 'circle.lua: von Mises data on U(1), the exact diffused density against a learned score')
local path = diffuse.cli.setup(opts)
local clock = diffuse.core.clock

local G = diffuse.group.u1()
local vm = diffuse.group.toy_action{ group = G, beta = opts.kappa, coeffs = { 1 } }
local D = diffuse.power(3, 1)
local exact = diffuse.score.class_function(G, D, vm)
local t0 = clock()
local data = vm:sample(opts.data)
print(('%d exact von Mises draws (kappa %g) in %.3f s; log Z = log I_0(kappa) = %.6f'):format(opts.data, opts.kappa, clock() - t0, vm:log_z()))

local l1, l2, l3 = nn.linear(64), nn.linear(64), nn.linear(1)
local net = nn.net{ dim = 1, output = 'score', forward = function(x, t)
  local h = nn.cat{ x:sin(), x:cos(), nn.fourier(t, { frequencies = { 0.25, 0.5, 1, 2, 4, 8, 16 } }) }
  return l3(l2(l1(h):silu()):silu())
end }
t0 = clock()
local losses = diffuse.train{ net = net, diffuser = D, data = data, group = G, steps = opts.steps, batch = math.min(1024, opts.data),
                              lr = 2e-3, tol = 1e-3, schedule = { decay = 'cosine' } }
local t_train = clock() - t0
local learned = diffuse.score.net(net, D)

local x1 = G:haar(opts.samples)
local s = diffuse.sampler{ diffuser = D, steps = opts.ode_steps, method = 'euler', group = G }
local md = { '| score | ESS/N | KL(q‖p) | log Z (exact ' .. ('%.5f'):format(vm:log_z()) .. ') | seconds |', '|---|---|---|---|---|' }
local results = {}
for _, case in ipairs{ { 'exact', exact }, { 'learned', learned } } do
  t0 = clock()
  local x0, _, logq = s:run(x1, case[2], { logq = true })
  local secs = clock() - t0
  local logp = vm:log_density(x0)
  local r = metrics.importance(logp, logq, { log_z = vm:log_z(), bootstrap = 0 })
  md[#md + 1] = ('| %s | %.5f | %.5f ± %.5f | %.5f ± %.5f | %.2f |'):format(case[1], r.ess, r.kl, r.kl_se, r.log_z, r.log_z_se, secs)
  results[case[1]] = x0
end
print(('\nthe net trained in %.1f s (final loss %.4f)\n'):format(t_train, losses[losses:size(1)]))
print(table.concat(md, '\n'))

-- p_t at several times against the flow's histograms at t = 0
local fig = plot.figure{ cols = 2, width = 1200, height = 440, title = ('von Mises (kappa %g) on U(1)'):format(opts.kappa) }
local grid = tensor.linspace(-math.pi, math.pi, 361):reshape(361, 1)
local xs = grid:reshape(361):totable()
for i, t in ipairs{ 0, 0.5, 0.75, 1 } do
  local lp = exact:log_density(grid, t):totable()
  local ys = {}
  for k = 1, #lp do ys[k] = math.exp(lp[k]) end
  fig[1]:line(xs, ys, { color = 'C' .. (i - 1), label = ('p_t, t = %g'):format(t) })
end
fig[1]:title('the exact diffused density'):xlabel('theta'):ylabel('density')
fig[2]:hist(results.exact, { bins = 72, range = { -math.pi, math.pi }, density = true, label = 'exact-score flow', alpha = 0.5 })
fig[2]:hist(results.learned, { bins = 72, range = { -math.pi, math.pi }, density = true, label = 'learned flow', histtype = 'step' })
local l0 = exact:log_density(grid, 0):totable()
local y0 = {}
for k = 1, #l0 do y0[k] = math.exp(l0[k]) end
fig[2]:line(xs, y0, { color = '#222222', dash = true, label = 'p_0' })
fig[2]:title('samples at t = 0'):xlabel('theta'):ylabel('density')
print('wrote ' .. fig:save(path 'circle.svg'))
