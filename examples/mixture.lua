-- examples/mixture.lua: beyond the seed, two-mode data whose score stays analytic at every time
-- (diffuse.score.mixture). The data are noised to t = 1, then denoised with the exact mixture
-- score (the yardstick) and with a network trained on samples of the data; histograms against
-- the mixture's density, and W1 of each to the data distribution.
--   lua5.4 examples/mixture.lua [--out DIR] [--device cuda] [--steps N] [--method heun] [--help]
local diffuse = require 'diffuse'
local tensor, plot, metrics = diffuse.tensor, diffuse.plot, diffuse.metrics

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  kappa = { 1.1, 'VE diffuser: g(t) = kappa^t' },
  data = { 8192, 'rows of training data drawn from the mixture' },
  steps = { 3000, 'training steps' },
  batch = { 1024, 'rows drawn at random from the data at each step' },
  lr = { 3e-3, 'Adam learning rate' },
  hidden = { 32, 'width of the three hidden layers of the MLP' },
  samples = { 8192, 'samples denoised' },
  sample_steps = { 200, 'sampler steps from t = 1 to 0' },
  method = { 'euler', 'euler (probability-flow ODE), euler_maruyama (reverse SDE) or heun' },
}, 'mixture.lua: a two-mode mixture, denoised with its exact score and with a trained net')
local path = diffuse.cli.setup(opts)

local ve = diffuse.ve(opts.kappa)
local spec = { weights = { 0.3, 0.7 }, means = { -1.5, 1.5 }, stds = { 0.2, 0.3 } }
local mix = diffuse.score.mixture(ve, spec)      -- callable as a score; also density and sample

local total = spec.weights[1] + spec.weights[2]
-- the data distribution's CDF (double precision), the reference for W1
local function data_cdf(x)
  local F = 0
  for j, w in ipairs(spec.weights) do F = F + w / total * metrics.normal_cdf(x, spec.means[j], spec.stds[j]) end
  return F
end

-- train the score net on samples of the data: each step draws a batch of rows at random
local data = mix:sample(opts.data)
local net = diffuse.nn.mlp{ dim = 1, hidden = { opts.hidden, opts.hidden, opts.hidden } }
local start = diffuse.core.clock()
local losses = diffuse.train{ net = net, diffuser = ve, data = data, batch = opts.batch,
                              steps = opts.steps, lr = opts.lr, progress = true }
local l, tail = losses:totable(), math.min(100, opts.steps)
local last = 0
for i = #l - tail + 1, #l do last = last + l[i] / tail end
-- data with spread keep the DSM loss well above 0 even for the exact score: judge by the score error
print(('trained the MLP (%d parameters) in %.2f s: mean loss of the last %d steps %.4f'):format(
  net:num_parameters(), diffuse.core.clock() - start, tail, last))
print(('score error against the exact mixture score: %.4f'):format(
  metrics.score_error(net, ve, mix, { data = mix:sample(8192) })))

-- noise fresh data to t = 1, then run the reverse process back with either score
local x1 = ve:diffuse(mix:sample(opts.samples), 1)
local sampler = diffuse.sampler{ diffuser = ve, steps = opts.sample_steps, method = opts.method }
local x_exact = sampler:run(x1, mix)
local x_net = sampler:run(x1, diffuse.score.net(net, ve))

local fresh = mix:sample(opts.samples)   -- the floor: W1 of as many true samples
print(('W1 to the data distribution (%d samples, %s, %d steps):'):format(opts.samples, opts.method, opts.sample_steps))
local rows = { { 'fresh data samples (the floor)', fresh }, { 'noised to t = 1', x1 },
               { 'denoised, exact score', x_exact }, { 'denoised, trained net', x_net } }
local w1 = {}
for i, r in ipairs(rows) do
  w1[i] = metrics.wasserstein1(r[2], data_cdf)
  print(('  %-32s %.4f'):format(r[1], w1[i]))
end

local fig = plot.figure{ cols = 4, height = 320, title = 'Two-mode mixture: 0.3 N(-1.5, 0.2²) + 0.7 N(1.5, 0.3²)' }
local lim = 4.5
local grid = tensor.linspace(-lim, lim, 600):reshape(600, 1)
local panels = {
  { data, 0, 'the data (t = 0)', 'data rows' },
  { x1, 1, 'noised to t = 1', 'x₁' },
  { x_exact, 0, 'denoised: exact score', 'samples' },
  { x_net, 0, 'denoised: trained net', 'samples' },
}
for i, p in ipairs(panels) do
  fig[i]:hist(p[1], { bins = 80, range = { -lim, lim }, density = true, label = p[4], color = 'C' .. (i - 1) })
  fig[i]:line(grid, mix:density(grid, p[2]), { dash = true, color = '#222222',
                                               label = p[2] == 0 and 'data density' or 'density at t = 1' })
  fig[i]:title(p[3]):xlabel('x')
  if i > 1 then fig[i]:text(0.97, 0.93, ('W1 %.3f'):format(w1[i]), { coords = 'axes', size = 10, anchor = 'end' }) end
  fig[i]:legend{ loc = 'upper left' }
end
fig[1]:ylabel('density')
print('wrote ' .. fig:save(path 'mixture.svg'))
