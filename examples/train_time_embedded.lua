-- examples/train_time_embedded.lua: the seed's time-embedded score net (Gaussian Fourier features
-- of t -> Linear(256,8) SiLU, plus Linear(1,8) of x, summed, SiLU, Linear(8,1)), trained by
-- denoising score matching on data at the origin; its loss curve, and samples of the learned
-- reverse ODE against the analytic N(0, sigma(t)^2).
--   lua5.4 examples/train_time_embedded.lua [--out DIR] [--device cuda] [--steps N] [--save PATH]
local diffuse = require 'diffuse'
local tensor, plot = diffuse.tensor, diffuse.plot

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  kappa = { 1.1, 'VE diffuser: g(t) = kappa^t' },
  steps = { 1000, 'training steps' },
  batch = { 1024, 'rows of training data (all zeros: the data sit at the origin)' },
  lr = { 1e-3, 'Adam learning rate' },
  samples = { 4096, 'samples drawn with the trained net' },
  sample_steps = { 100, 'Euler steps of the reverse ODE' },
  embed = { 256, 'Fourier features of t (half sines, half cosines)' },
  scale = { 30, 'std of the fixed Fourier frequencies W' },
  save = { '', 'write a checkpoint (network and optimizer) to this path' },
}, 'train_time_embedded.lua: train the seed time-embedded net, then denoise with it')
local path = diffuse.cli.setup(opts)
local clock = diffuse.core.clock

local ve = diffuse.ve(opts.kappa)
local net = diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = opts.embed, scale = opts.scale }
print(net)

local start = clock()
local losses, opt = diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(opts.batch, 1),
                                   steps = opts.steps, lr = opts.lr, progress = true }
local train_s = clock() - start
local l = losses:totable()
local tail, m = math.min(100, #l), 0
for i = #l - tail + 1, #l do m = m + l[i] end
print(('trained %d steps in %.2f s: final loss %.4f, mean of the last %d %.4f'):format(
  #l, train_s, l[#l], tail, m / tail))
print(('score error E[σ² |s_net - s|²] = %.4f'):format(
  diffuse.metrics.score_error(net, ve, diffuse.score.exact(ve))))

-- the loss curve, with a centred running mean so that the trend reads through the noise
local half, smooth = math.max(1, math.min(25, #l // 20)), {}
for i = 1, #l do
  local a, b, sum = math.max(1, i - half), math.min(#l, i + half), 0
  for j = a, b do sum = sum + l[j] end
  smooth[i] = sum / (b - a + 1)
end
local fig = plot.figure{ width = 640, height = 360, title = 'Training the time-embedded net (DSM loss)' }
fig[1]:line(l, { color = 'C0', width = 0.8, alpha = 0.35, label = 'loss per step' })
fig[1]:line(smooth, { color = 'C0', width = 2, label = ('running mean of %d'):format(2 * half + 1) })
fig[1]:yscale('log'):xlabel('step'):ylabel('loss'):grid()
print('wrote ' .. fig:save(path 'train_time_embedded_loss.svg'))

-- denoise: the Euler ODE with the learned score, and with the exact score from the same start
local N = opts.sample_steps
local record = { 0, N // 4, N // 2, 3 * N // 4, N }
local x1 = ve:prior(opts.samples)
local sampler = diffuse.sampler{ diffuser = ve, steps = N, method = 'euler' }
local x0, xs = sampler:run(x1, diffuse.score.net(net, ve), { record = record })
local x0_exact = sampler:run(x1, diffuse.score.exact(ve))
print(('samples at t = 0: mean %.4f, std %.4f (the exact score with the same %d steps: std %.4f)')
  :format(x0:mean(), x0:std(), N, x0_exact:std()))

fig = plot.figure{ cols = #record, height = 300, title = ('Denoising with the trained time-embedded net (Euler ODE, %d steps)'):format(N) }
for i, k in ipairs(record) do
  local t, x = 1 - k / N, xs[k]
  local s = ve:sigma(t)
  local half = 4 * math.max(s, x:std())
  fig[i]:hist(x, { bins = 50, range = { -half, half }, density = true, label = 'net samples' })
  if t > 0 then
    local grid = tensor.linspace(-half, half, 400)
    fig[i]:line(grid, diffuse.heat.density(grid, s), { dash = true, color = '#222222', label = 'N(0, σ(t)²)' })
  else
    fig[i]:hist(x0_exact, { bins = 50, range = { -half, half }, density = true, histtype = 'step',
                            color = '#222222', label = 'exact score' })
  end
  fig[i]:title(('t = %g'):format(t)):xlabel('x')
  if i > 1 and i < #record then fig[i]:legend(false) end
end
fig[1]:ylabel('density')
print('wrote ' .. fig:save(path 'train_time_embedded_samples.svg'))

if opts.save ~= '' then
  net:save(opts.save, opt)   -- diffuse.nn.load(path) gives back the network and the optimizer
  print('wrote ' .. opts.save)
end
