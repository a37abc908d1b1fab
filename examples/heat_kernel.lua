-- examples/heat_kernel.lua: the Euclidean heat kernel K(x, t) = N(x; 0, sigma(t)^2) as a heatmap
-- over (t, x), and samples drawn from it (diffuse.heat.sample) against the analytic density.
--   lua5.4 examples/heat_kernel.lua [--out DIR] [--device cuda] [--kappa 1] [--help]
local diffuse = require 'diffuse'
local tensor, plot = diffuse.tensor, diffuse.plot

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  kappa = { 1.1, 'VE diffuser: sigma(t) is the kernel width (kappa = 1: sqrt(t), the heat equation)' },
  samples = { 100000, 'samples per histogram' },
  grid = { 120, 'heatmap cells along x and along t' },
}, 'heat_kernel.lua: the heat kernel density over (t, x) and samples from it')
local path = diffuse.cli.setup(opts)
local ve = diffuse.ve(opts.kappa)

-- p(x, t) on an n x n grid: rows are x (the image's y axis), columns are t. One native call:
-- every cell is a row of X with its own width sigma(t).
local n, t0, xmax = opts.grid, 0.02, 3
local xs = tensor.linspace(-xmax, xmax, n)
local ts = tensor.linspace(t0, 1, n)
local sig = ve:sigma(ts)
local X = (xs:reshape(n, 1) * tensor.ones(1, n)):reshape(n * n, 1)
local W = (tensor.ones(n, 1) * sig:reshape(1, n)):reshape(n * n)
local p = diffuse.heat.density(X, W):reshape(n, n)

local fig = plot.figure{ cols = 2, width = 1040, height = 380,
                         title = ('Heat kernel K(x, t) = N(0, σ(t)²), VE κ = %g'):format(opts.kappa) }
fig[1]:image(p, { extent = { t0, 1, -xmax, xmax }, colorbar = 'density p(x, t)' })
-- the width +-sigma(t) on top, where the dark colours alone would hide it
fig[1]:line(ts, sig, { color = 'white', dash = '5,3', width = 1.2 })
fig[1]:line(ts, -sig, { color = 'white', dash = '5,3', width = 1.2 })
fig[1]:title('density over time (dashed: ±σ(t))'):xlabel('t'):ylabel('x'):xlim(t0, 1)

-- samples at a few widths, each histogram under its analytic curve
local grid = tensor.linspace(-3.5, 3.5, 400)
for i, w in ipairs{ 0.25, 0.5, 1.0 } do
  local x = diffuse.heat.sample(opts.samples, w)
  fig[2]:hist(x, { bins = 60, range = { -4 * w, 4 * w }, density = true, alpha = 0.45,
                   color = 'C' .. (i - 1), label = ('samples, width %g'):format(w) })
  fig[2]:line(grid, diffuse.heat.density(grid, w), { dash = true, color = '#222222', width = 1.3,
                                                   label = i == 3 and 'analytic N(0, w²)' or nil })
  print(('width %-4g  sample std %.4f  (n = %d)'):format(w, x:std(), opts.samples))
end
fig[2]:title('samples from diffuse.heat.sample'):xlabel('x'):ylabel('density'):xlim(-3.5, 3.5)

print('wrote ' .. fig:save(path 'heat_kernel.svg'))
