-- examples/su2_denoise.lua: the heat kernel on SU(2) (and SU(3)) on eigenangles. Exact draws at
-- t = 1 (power diffuser kappa 3, alpha 1: sigma(1) = sqrt 3) are carried back by the exact score
-- of the kernel, with the probability-flow ODE (Heun) and with the reverse SDE (Euler-Maruyama with
-- the group's own noise multiplied on as matrices), then by a net trained on data at the identity with
-- group noise (denoising score matching; the toy notebook's net composed with nn.net) and the same
-- ODE; at t = 0.75, 0.5, 0.25 their histograms of |theta| are drawn against the exact kernel's
-- density 2 K h, and E[Tr U] against N exp(-C_F sigma^2).
--   lua5.4 examples/su2_denoise.lua [--out DIR] [--group su2|su3] [--samples N] [--train-steps N] [--help]
local diffuse = require 'diffuse'
local tensor, plot, nn = diffuse.tensor, diffuse.plot, diffuse.nn

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0, group = 'su2',
  samples = { 20000, 'heat-kernel draws at t = 1' },
  steps = { 300, 'steps from t = 1 to each t, uniform in log sigma (ODE and SDE)' },
  train_steps = { 3000, 'training steps of the learned score (batch 1024, data at the identity)' },
}, 'su2_denoise.lua: the exact-score ODE and SDE on SU(N) eigenangles against the heat kernel')
local path = diffuse.cli.setup(opts)
local clock = diffuse.core.clock

local G = opts.group == 'su3' and diffuse.group.su(3) or diffuse.group.su(2)
local D = diffuse.power(3, 1)
local cf = (G.n ^ 2 - 1) / (2 * G.n)
local start = clock()
local x1 = G:heat_sample(opts.samples, D:sigma(1))
print(('%d exact draws of the %s heat kernel at sigma = %.4f in %.3f s'):format(opts.samples, G.name, D:sigma(1), clock() - start))
local score = diffuse.score.heat(G, D)

-- the learned score: data at the identity, so each pair's target is the kernel's score exactly
local freqs = {}
for k = 1, 25 do freqs[k] = math.exp(-10 * (k / 25 - 0.5)) end
local l1, l2, l3, l4 = nn.linear(64), nn.linear(64), nn.linear(64), nn.linear(G.n == 2 and 1 or G.n)
local net = nn.net{ dim = G.n, output = 'score', forward = function(x, t)
  local h = l3(l2(l1(nn.cat{ x:sin(), x:cos(), nn.fourier(t, { frequencies = freqs }) }):silu()):silu()):silu()
  local o = l4(h)
  if G.n == 2 then return o * x:sin() end -- (f sin theta, -f sin theta): tangent, 0 at the walls
  return o - o:mean()                      -- tangent: rows sum to 0
end }
start = clock()
diffuse.train{ net = net, diffuser = D, data = tensor.zeros(4096, G.n), group = G, steps = opts.train_steps,
               batch = 1024, lr = 2e-3, tol = 1e-3, schedule = { decay = 'cosine' } }
print(('trained the net (%d steps of denoising score matching with group noise) in %.1f s'):format(opts.train_steps, clock() - start))
local learned = diffuse.score.net(net, D)

local function trace_mean(x)
  local r, m, m2, n = x:totable(), 0, 0, x:size(1)
  for i = 1, n do
    local a = 0
    for j = 1, G.n do a = a + math.cos(r[i][j]) end
    m, m2 = m + a / n, m2 + a * a / n
  end
  return m, math.sqrt((m2 - m * m) / n)
end

local times = { 0.75, 0.5, 0.25 }
local fig = plot.figure{ cols = #times, width = 1300, height = 420,
  title = ('%s heat kernel from t = 1: exact-score ODE and SDE, a learned ODE, against the kernel'):format(G.name) }
local md = { '| t | sigma | exact E[Tr U] | ODE (heun) | SDE (euler_maruyama) | learned ODE (heun) |', '|---|---|---|---|---|---|' }
for i, t in ipairs(times) do
  -- uniform in log sigma: the SDE's drift stiffens as sigma shrinks (Euler-Maruyama is order 1)
  local steps, grid = opts.steps, {}
  for k = 0, steps do
    local sg = D:sigma(1) * (D:sigma(t) / D:sigma(1)) ^ (k / steps)
    grid[#grid + 1] = k == steps and t or (sg / math.sqrt(3)) ^ (2 / 3)
  end
  local t0 = clock()
  local ode = diffuse.sampler{ diffuser = D, grid = grid, method = 'heun', group = G }:run(x1, score)
  local t1 = clock()
  local sde = diffuse.sampler{ diffuser = D, grid = grid, method = 'euler_maruyama', group = G }:run(x1, score)
  local t2 = clock()
  local lrn = diffuse.sampler{ diffuser = D, grid = grid, method = 'heun', group = G }:run(x1, learned)
  local t3 = clock()
  local w = D:sigma(t)
  local want = G.n * math.exp(-cf * w * w)
  local mo, so = trace_mean(ode)
  local ms, ss = trace_mean(sde)
  local ml, sl = trace_mean(lrn)
  md[#md + 1] = ('| %.2f | %.4f | %.5f | %.5f ± %.5f (%.2f s) | %.5f ± %.5f (%.2f s) | %.5f ± %.5f (%.2f s) |'):format(t, w, want,
    mo, so, t1 - t0, ms, ss, t2 - t1, ml, sl, t3 - t2)
  -- |theta_1| on [0, pi] (SU(3): the largest |angle|) against the exact density
  local function first(x)
    local r, out = x:totable(), {}
    for k = 1, #r do
      local a = 0
      for j = 1, G.n do a = math.max(a, math.abs(r[k][j])) end
      out[k] = a
    end
    return out
  end
  local p = fig[i]
  p:hist(first(ode), { bins = 60, range = { 0, math.pi }, density = true, label = 'ODE', alpha = 0.5 })
  p:hist(first(sde), { bins = 60, range = { 0, math.pi }, density = true, label = 'SDE', histtype = 'step' })
  p:hist(first(lrn), { bins = 60, range = { 0, math.pi }, density = true, label = 'learned ODE', histtype = 'step' })
  if G.n == 2 then
    local xs, pts = {}, {}
    for k = 0, 300 do local a = math.pi * k / 300; xs[#xs + 1] = a; pts[#pts + 1] = { a, -a } end
    local T = tensor.new(pts)
    local lk, lh = G:heat_log_kernel(T, w):totable(), G:haar_log_density(T):totable()
    local ys = {}
    for k = 1, #xs do ys[k] = 2 * math.exp(lk[k] + lh[k]) end
    p:line(xs, ys, { color = '#222222', dash = true, label = 'exact 2 K h' })
  end
  p:title(('t = %.2f (sigma %.3f)'):format(t, w)):xlabel(G.n == 2 and '|theta|' or 'max |theta_j|'):ylabel('density')
end
print('\n' .. table.concat(md, '\n') .. '\n')
print('wrote ' .. fig:save(path(('%s_denoise.svg'):format(opts.group))))
