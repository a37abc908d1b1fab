-- examples/group_toys.lua: the toy targets of "Spectral Diffusion for Sampling on SU(N)" with
-- their exact class-function scores: S = -(beta/N) Re Tr sum_n c_n U^n, c = (0.17, -0.65, 1.22),
-- beta 1 on SU(2), 9 on SU(3) (and a von Mises-like beta 2 on U(1)). Exact draws of the target
-- (the training data of a learned score), the probability-flow ODE from Haar with log q (power
-- diffuser kappa 3, alpha 1), the effective sample size, KL and log Z with bootstrap errors,
-- against the exact log Z by quadrature; each stage timed.
--   lua5.4 examples/group_toys.lua [--out DIR] [--group su2|su3|u1] [--method euler] [--steps 200]
local diffuse = require 'diffuse'
local tensor, plot, metrics = diffuse.tensor, diffuse.plot, diffuse.metrics

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0, group = 'su2', method = 'euler',
  steps = { 200, 'ODE steps' },
  samples = { 4096, 'samples from Haar carried by the flow' },
  data = { 32768, 'exact draws of the target' },
  bootstrap = { 1000, 'bootstrap resamples' },
}, 'group_toys.lua: the SU(N) toy targets with their exact scores: ESS and log Z')
local path = diffuse.cli.setup(opts)
local clock = diffuse.core.clock

local G = opts.group == 'su3' and diffuse.group.su(3) or opts.group == 'u1' and diffuse.group.u1() or diffuse.group.su(2)
local beta = G.n == 3 and 9 or G.n == 2 and 1 or 2
local target = diffuse.group.toy_action{ group = G, beta = beta, coeffs = G.n == 1 and { 1 } or { 0.17, -0.65, 1.22 } }
local D = diffuse.power(3, 1)
local stage = {}
local function timed(name, f)
  local t0 = clock()
  local a, b, c = f()
  stage[#stage + 1] = ('%s %.2f s'):format(name, clock() - t0)
  return a, b, c
end

print(tostring(target))
local data = timed('data', function() return target:sample(opts.data) end)
local score = timed('score (character expansion)', function() return diffuse.score.class_function(G, D, target) end)
local x1 = G:haar(opts.samples)
local s = diffuse.sampler{ diffuser = D, steps = opts.steps, method = opts.method, group = G }
local x0, _, logq = timed('sampling with log q', function() return s:run(x1, score, { logq = true }) end)
local logp = target:log_density(x0)
local exact = target:log_z()
local r = timed('bootstrap', function() return metrics.importance(logp, logq, { log_z = exact, bootstrap = opts.bootstrap }) end)
local ess, ess_se, kl, kl_se, zb, zb_se = r.ess, r.ess_se, r.kl, r.kl_se, r.log_z, r.log_z_se
local _, z_se = metrics.log_z(logp, logq)
print(('\n%s, %s %d steps, %d samples: ESS/N = %.5f (bootstrap s.e. %.5f), KL(q || p) = %.5f ± %.5f'):format(
  G.name, opts.method, opts.steps, opts.samples, ess, ess_se, kl, kl_se))
print(('log Z = %.5f ± %.5f (bootstrap; delta method %.5f) against the exact %.6f: %.2f bootstrap errors'):format(
  zb, zb_se, z_se, exact, (zb - exact) / zb_se))
print('stages: ' .. table.concat(stage, ', '))

-- the target's density of |theta| (SU(2)) or theta (U(1)) against the flow's samples, weighted
if G.n <= 2 then
  local fig = plot.figure{ width = 640, height = 440, title = ('%s toy target (beta %g)'):format(G.name, beta) }
  local xs, pts = {}, {}
  local lo = G.n == 1 and -math.pi or 0
  for k = 0, 300 do
    local a = lo + (math.pi - lo) * k / 300
    xs[#xs + 1] = a
    pts[#pts + 1] = G.n == 1 and { a } or { a, -a }
  end
  local lp = target:log_density(tensor.new(pts)):totable()
  local ys = {}
  for k = 1, #xs do ys[k] = (G.n == 2 and 2 or 1) * math.exp(lp[k] - exact) end
  local function first(x) local r, o = x:totable(), {}; for k = 1, #r do o[k] = G.n == 1 and r[k][1] or math.abs(r[k][1]) end; return o end
  fig[1]:hist(first(data), { bins = 60, range = { lo, math.pi }, density = true, label = 'exact draws', alpha = 0.5 })
  fig[1]:hist(first(x0), { bins = 60, range = { lo, math.pi }, density = true, label = 'flow from Haar', histtype = 'step' })
  fig[1]:line(xs, ys, { color = '#222222', dash = true, label = 'target' })
  fig[1]:title(('ESS/N %.4f, log Z %.4f ± %.4f (exact %.4f)'):format(ess, zb, zb_se, exact)):xlabel(G.n == 1 and 'theta' or '|theta|'):ylabel('density')
  print('wrote ' .. fig:save(path(('toy_%s.svg'):format(opts.group))))
end
