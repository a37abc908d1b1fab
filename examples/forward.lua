-- examples/forward.lua: forward diffusion of data at the origin with the VE diffuser:
-- x_t = x_0 + sigma(t) eta, at t = 0.01, 0.1, 0.5, 1, each histogram over N(0, sigma(t)^2).
--   lua5.4 examples/forward.lua [--out DIR] [--device cuda] [--samples N] [--help]
local diffuse = require 'diffuse'
local tensor, plot = diffuse.tensor, diffuse.plot

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  kappa = { 1.1, 'VE diffuser: g(t) = kappa^t' },
  samples = { 100000, 'samples per time' },
}, 'forward.lua: forward diffusion of data at the origin (four panels)')
local path = diffuse.cli.setup(opts)

local ve = diffuse.ve(opts.kappa)
local x0 = tensor.zeros(opts.samples, 1)               -- all the data sits at the origin
local fig = plot.figure{ cols = 4, height = 300, title = 'Density During Forward Process' }
local lim = 3.5 * ve:sigma(1)                          -- one x range: the spreading shows
local grid = tensor.linspace(-lim, lim, 500)

for i, t in ipairs{ 0.01, 0.1, 0.5, 1 } do
  local s = ve:sigma(t)
  local xt = ve:diffuse(x0, t)
  -- bins over +-4 sigma(t), so that even the narrow early kernel is resolved
  fig[i]:hist(xt, { bins = 50, range = { -4 * s, 4 * s }, density = true, label = 'x_t samples' })
  fig[i]:line(grid, diffuse.heat.density(grid, s), { dash = true, color = '#222222', label = 'N(0, σ(t)²)' })
  fig[i]:title(('t = %g, σ(t) = %.3f'):format(t, s)):xlabel('x'):xlim(-lim, lim)
  if i == 1 then fig[i]:ylabel('density') end
  if i > 1 then fig[i]:legend(false) end             -- one legend is enough
  print(('t = %-4g  sigma(t) = %.4f  sample std = %.4f'):format(t, s, xt:std()))
end

print('wrote ' .. fig:save(path 'forward.svg'))
