-- examples/train.lua: train a score network by denoising score matching on data at the origin
-- (the seed's heat-kernel problem), then denoise with it: its loss curve, and samples of the
-- learned reverse ODE against the analytic N(0, sigma(t)^2). The network is an option:
--   mlp   the seed's plain MLP on concat[x, t] (3 SiLU layers of 8)
--   temb  the seed's time-embedded net (Gaussian Fourier features of t, --embed, --scale)
--   feat  the toy notebooks' feature net: [x, sin w_k t, cos w_k t], w_k = exp(-10 (k/25 - 1/2)),
--         three SiLU layers of 64
--   film  a multiplicative time embedding: the features of t scale and shift the hidden units
-- with the training options of diffuse.train (--output, --weighting, --clip, --warmup, --decay,
-- --ema: the EMA network is the one sampled when given).
--   lua5.4 examples/train.lua [--net mlp|temb|feat|film] [--out DIR] [--device cuda] [--steps N]
--                             [--save PATH] [--help]
local diffuse = require 'diffuse'
local tensor, plot, nn = diffuse.tensor, diffuse.plot, diffuse.nn

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  net = { 'mlp', 'the network: mlp, temb, feat or film' },
  kappa = { 1.1, 'VE diffuser: g(t) = kappa^t' },
  steps = { 1000, 'training steps' },
  batch = { 1024, 'rows of training data (all zeros: the data sit at the origin)' },
  lr = { 1e-3, 'Adam learning rate' },
  embed = { 256, 'temb: Fourier features of t (half sines, half cosines)' },
  scale = { 30, 'temb, film: std of the fixed Fourier frequencies W' },
  output = { 'scaled', "what the net's output means: scaled, score, noise or denoiser" },
  weighting = { 'sigma2', 'the DSM loss weighting: sigma2, likelihood or none' },
  clip = { 0.0, 'clip the gradient norm to this (0: no clipping)' },
  warmup = { 0, 'lr warmup steps' },
  decay = { 'none', 'lr decay after the warmup: none, cosine or linear' },
  ema = { 0.0, 'keep an EMA of the weights with this decay, and sample with it (0: none)' },
  samples = { 4096, 'samples drawn with the trained net' },
  sample_steps = { 100, 'Euler steps of the reverse ODE' },
  save = { '', 'write a checkpoint (network, optimizer, EMA) to this path' },
}, 'train.lua: train a score network on the heat kernel, then denoise with it')
local path = diffuse.cli.setup(opts)
local clock = diffuse.core.clock

local function feature_net()
  local w = {}
  for k = 1, 25 do w[k] = math.exp(-10 * (k / 25 - 0.5)) end
  return nn.net{ dim = 1, output = opts.output, forward = function(x, t)
    local h = nn.cat{ x, nn.fourier(t, { frequencies = w }) }
    for _ = 1, 3 do h = nn.linear(64)(h):silu() end
    return nn.linear(1)(h)
  end }
end

local function film_net()
  return nn.net{ dim = 1, output = opts.output, forward = function(x, t)
    local e = nn.fourier(t, { embed = 16, scale = opts.scale })
    local h = nn.linear(8)(x)
    for _ = 1, 2 do -- each block: (1 + scale(t)) * h + shift(t), then SiLU and a Linear
      h = (h * (nn.linear(8)(e) + 1) + nn.linear(8)(e)):silu()
      h = nn.linear(8)(h)
    end
    return nn.linear(1)(h:silu())
  end }
end

local makers = {
  mlp = function() return nn.mlp{ dim = 1, hidden = { 8, 8, 8 }, output = opts.output } end,
  temb = function()
    return nn.time_embedded{ dim = 1, hidden = 8, embed = opts.embed, scale = opts.scale, output = opts.output }
  end,
  feat = feature_net,
  film = film_net,
}
local names = { mlp = 'the plain MLP', temb = 'the time-embedded net', feat = 'the feature net',
                film = 'the FiLM net' }
if not makers[opts.net] then
  io.stderr:write(("train.lua: unknown --net '%s' (mlp, temb, feat or film)\n"):format(opts.net))
  os.exit(2)
end
local ve = diffuse.ve(opts.kappa)
local net = makers[opts.net]()
print(net)

local start = clock()
local losses, opt, ema = diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(opts.batch, 1),
  steps = opts.steps, lr = opts.lr, progress = true, weighting = opts.weighting,
  clip = opts.clip > 0 and opts.clip or nil, ema = opts.ema > 0 and opts.ema or nil,
  schedule = (opts.warmup > 0 or opts.decay ~= 'none') and { warmup = opts.warmup, decay = opts.decay } or nil }
local train_s = clock() - start
local l = losses:totable()
local tail, m = math.min(100, #l), 0
for i = #l - tail + 1, #l do m = m + l[i] end
print(('trained %d steps in %.2f s: final loss %.4f, mean of the last %d %.4f'):format(
  #l, train_s, l[#l], tail, m / tail))
local sampled = ema or net
print(('score error E[σ² |s_net - s|²] = %.4f%s'):format(
  diffuse.metrics.score_error(sampled, ve, diffuse.score.exact(ve)), ema and ' (the EMA net)' or ''))

-- the loss curve, with a centred running mean so that the trend reads through the noise
local half, smooth = math.max(1, math.min(25, #l // 20)), {}
for i = 1, #l do
  local a, b, sum = math.max(1, i - half), math.min(#l, i + half), 0
  for j = a, b do sum = sum + l[j] end
  smooth[i] = sum / (b - a + 1)
end
local fig = plot.figure{ width = 640, height = 360, title = ('Training %s (DSM loss)'):format(names[opts.net]) }
fig[1]:line(l, { color = 'C0', width = 0.8, alpha = 0.35, label = 'loss per step' })
fig[1]:line(smooth, { color = 'C0', width = 2, label = ('running mean of %d'):format(2 * half + 1) })
fig[1]:yscale('log'):xlabel('step'):ylabel('loss'):grid()
print('wrote ' .. fig:save(path(('train_%s_loss.svg'):format(opts.net))))

-- denoise: the Euler ODE with the learned score, and with the exact score from the same start
local N = opts.sample_steps
local record = { 0, N // 4, N // 2, 3 * N // 4, N }
local x1 = ve:prior(opts.samples)
local sampler = diffuse.sampler{ diffuser = ve, steps = N, method = 'euler' }
local x0, xs = sampler:run(x1, diffuse.score.net(sampled, ve), { record = record })
local x0_exact = sampler:run(x1, diffuse.score.exact(ve))
print(('samples at t = 0: mean %.4f, std %.4f (the exact score with the same %d steps: std %.4f)')
  :format(x0:mean(), x0:std(), N, x0_exact:std()))

fig = plot.figure{ cols = #record, height = 300,
  title = ('Denoising with %s (Euler ODE, %d steps)'):format(names[opts.net], N) }
for i, k in ipairs(record) do
  local t, x = 1 - k / N, xs[k]
  local s = ve:sigma(t)
  local w = 4 * math.max(s, x:std())
  fig[i]:hist(x, { bins = 50, range = { -w, w }, density = true, label = 'net samples' })
  if t > 0 then
    local grid = tensor.linspace(-w, w, 400)
    fig[i]:line(grid, diffuse.heat.density(grid, s), { dash = true, color = '#222222', label = 'N(0, σ(t)²)' })
  else
    fig[i]:hist(x0_exact, { bins = 50, range = { -w, w }, density = true, histtype = 'step',
                            color = '#222222', label = 'exact score' })
  end
  fig[i]:title(('t = %g'):format(t)):xlabel('x')
  if i > 1 and i < #record then fig[i]:legend(false) end
end
fig[1]:ylabel('density')
print('wrote ' .. fig:save(path(('train_%s_samples.svg'):format(opts.net))))

if opts.save ~= '' then
  net:save(opts.save, opt) -- diffuse.nn.load(path) gives back the network, the optimizer (and opt.ema)
  print('wrote ' .. opts.save)
end
