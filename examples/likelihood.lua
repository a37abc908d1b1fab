-- examples/likelihood.lua: the probability-flow ODE as a density model, on the two-mode mixture
-- 0.3 N(-1.5, 0.2^2) + 0.7 N(1.5, 0.3^2) (VE kappa 1.1), whose log-density is known at every t.
-- (1) The exact mixture score and its exact divergence, the exact p_1 as the prior: the PF-ODE's
-- log p against the analytic one, per method and step count or tolerance (and score_sde's Gaussian
-- prior, for comparison). (2) A net trained on samples of the mixture: its samples with their
-- log q, the importance weights p / q, ESS and KL (reverse from its samples, forward from the
-- data's), and reweighted expectations against the exact ones.
--   lua5.4 examples/likelihood.lua [--out DIR] [--device cuda] [--help]
local diffuse = require 'diffuse'
local tensor, plot, metrics = diffuse.tensor, diffuse.plot, diffuse.metrics

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  points = { 2000, 'points whose log-density is computed' },
  steps = { 3000, 'training steps of the net' },
  samples = { 8192, 'samples drawn from the net (with log q)' },
  hidden = { 32, 'width of the three hidden layers' },
}, 'likelihood.lua: exact log-densities from the probability-flow ODE, and importance weights of a learned net')
local path = diffuse.cli.setup(opts)
local clock = diffuse.core.clock

local ve = diffuse.ve(1.1)
local mix = diffuse.score.mixture(ve, { weights = { 0.3, 0.7 }, means = { -1.5, 1.5 }, stds = { 0.2, 0.3 } })
local t_min = 1e-5
local x = mix:sample(opts.points)
local exact = mix:log_density(x, t_min) -- the density at t_min, where the ODE starts (p_0 to 1e-5)

-- ---- (1) the exact score: error against the analytic log p ----------------------------------

local rows = {}
local function case(label, o)
  o.diffuser, o.score, o.x, o.t_min = ve, mix, x, t_min
  if o.prior == nil then o.prior = mix end
  if o.prior == false then o.prior = nil end
  local start = clock()
  local lp, info = diffuse.likelihood(o)
  local secs = clock() - start
  local r = { label = label, err = (lp - exact):abs():max(), mean = (lp - exact):mean(), nfe = info.nfe,
              nfe_rows = info.nfe_rows, ms = secs * 1e3, method = o.method }
  rows[#rows + 1] = r
  return r
end
for _, m in ipairs{ 'euler', 'heun', 'rk4' } do
  for _, n in ipairs{ 25, 50, 100, 200, 400 } do case(('%s, %d steps'):format(m, n), { method = m, steps = n }) end
end
for _, tol in ipairs{ 1e-2, 1e-3, 1e-4, 1e-5, 1e-6 } do
  case(('rk45, rtol = atol = %g'):format(tol), { method = 'rk45', rtol = tol, atol = tol })
end
local gauss = case("rk45 1e-6 with score_sde's prior N(0, sigma(1)^2)", { method = 'rk45', rtol = 1e-6, atol = 1e-6, prior = false })

local md = { '| method | max \\|log p − exact\\| | mean error | NFE (mean per row) | ms |', '|---|---|---|---|---|' }
for _, r in ipairs(rows) do
  md[#md + 1] = ('| %s | %.2e | %+.2e | %d%s | %.1f |'):format(r.label, r.err, r.mean, r.nfe,
    r.nfe_rows and (' (%.1f)'):format(r.nfe_rows) or '', r.ms)
end
print(('\nThe mixture\'s log-density at %d points by the PF-ODE (the exact score and divergence, the exact p_1 as prior)\n'):format(opts.points))
print(table.concat(md, '\n'))

-- ---- (2) a trained net: log q of its samples, importance weights ---------------------------

diffuse.seed(opts.seed + 1)
local data = mix:sample(8192)
local net = diffuse.nn.mlp{ dim = 1, hidden = { opts.hidden, opts.hidden, opts.hidden } }
local start = clock()
diffuse.train{ net = net, diffuser = ve, data = data, batch = 1024, steps = opts.steps, lr = 3e-3, tol = 1e-3,
               progress = true }
local train_s = clock() - start
local score = diffuse.score.net(net, ve)
local tq = 1e-3 -- the run stops at t_min = tq: q is the density of x there
local s = diffuse.sampler{ diffuser = ve, method = 'rk45', rtol = 1e-4, atol = 1e-4, t_min = tq }
start = clock()
local xq, _, logq = s:run(mix:sample(opts.samples, 1), score, { logq = true, prior = mix })
local sample_s = clock() - start
local logp = mix:log_density(xq, tq)
local logw = logp - logq
local ess = metrics.ess(logw)
local kl, kl_se = metrics.kl(logq, logp)
-- the forward KL: the data's own log q by the PF-ODE with the net's score, at t = tq
local xp = mix:sample(2000, tq)
local lq_data = diffuse.likelihood{ diffuser = ve, score = score, x = xp, method = 'rk45', rtol = 1e-4, atol = 1e-4,
                                    t_min = tq, prior = mix }
local _, _, fkl, fkl_se = metrics.kl(logq, logp, { logq = lq_data, logp = mix:log_density(xp, tq) })
local s2 = ve:sigma2(tq)
local want_mean = 0.3 * -1.5 + 0.7 * 1.5
local want_m2 = 0.3 * (2.25 + 0.04 + s2) + 0.7 * (2.25 + 0.09 + s2)
local want_p = 0.3 -- P(x < 0): the left mode's weight (to within 1e-20)
local m, mse = metrics.reweight(xq, logw)
local m2, m2se = metrics.reweight(xq * xq, logw)
local neg = {}
for i, v in ipairs(xq:totable()) do neg[i] = v[1] < 0 and 1 or 0 end
local pl, plse = metrics.reweight(neg, logw)
local raw_m, raw_m2, raw_p = xq:mean(), (xq * xq):mean(), 0
for _, v in ipairs(neg) do raw_p = raw_p + v / #neg end
local lz, lzse = metrics.log_z(logp, logq)

local md2 = {
  ('| quantity | exact | raw samples | reweighted (± s.e.) |'), '|---|---|---|---|',
  ('| E[x] | %.4f | %.4f | %.4f ± %.4f |'):format(want_mean, raw_m, m, mse),
  ('| E[x²] | %.4f | %.4f | %.4f ± %.4f |'):format(want_m2, raw_m2, m2, m2se),
  ('| P(x < 0) | %.4f | %.4f | %.4f ± %.4f |'):format(want_p, raw_p, pl, plse),
  ('| log Z (p normalised: 0) | 0 | – | %.4f ± %.4f |'):format(lz, lzse),
}
local summary = ('The net (%d parameters) trained in %.2f s; %d samples with log q in %.2f s (rk45, %d evaluations, '
  .. '%.1f per row). ESS/N = %.4f; KL(q || p) = %.4f ± %.4f nats; KL(p || q) = %.4f ± %.4f nats.')
  :format(net:num_parameters(), train_s, opts.samples, sample_s, s.nfe, s.nfe_rows, ess, kl, kl_se, fkl, fkl_se)
print('\n' .. summary .. '\n\n' .. table.concat(md2, '\n') .. '\n')
local within = math.abs(m - want_mean) <= 2 * mse and math.abs(m2 - want_m2) <= 2 * m2se
print(('Reweighting %s the exact mean and second moment within two standard errors.'):format(within and 'recovers' or 'does not recover'))
print(("score_sde's Gaussian prior instead of the exact p_1 is off by up to %.2f nats here."):format(gauss.err))

local f = assert(io.open(path 'likelihood.md', 'w'))
f:write('# Exact likelihoods and importance weights\n\n', table.concat(md, '\n'), '\n\n', summary, '\n\n',
        table.concat(md2, '\n'), '\n')
f:close()
print('wrote ' .. path 'likelihood.md')

-- ---- the figure: error against NFE per method; the weighted and unweighted samples ----------

local fig = plot.figure{ cols = 2, width = 1300, height = 480, title = 'The probability-flow ODE as a density model' }
for i, meth in ipairs{ 'euler', 'heun', 'rk4', 'rk45' } do
  local xs, ys = {}, {}
  for _, r in ipairs(rows) do
    if r.method == meth and r ~= gauss then xs[#xs + 1] = r.nfe; ys[#ys + 1] = math.max(r.err, 1e-7) end
  end
  fig[1]:line(xs, ys, { color = 'C' .. (i - 1), width = 2, label = meth })
  fig[1]:scatter(xs, ys, { color = 'C' .. (i - 1), size = 3 })
end
fig[1]:xscale('log'):yscale('log'):title('max |log p − exact| against NFE'):xlabel('NFE'):ylabel('error'):grid()
local grid = tensor.linspace(-3, 3, 400)
fig[2]:hist(xq, { bins = 80, range = { -3, 3 }, density = true, label = 'net samples' })
fig[2]:line(grid, mix:density(grid:reshape(400, 1), tq), { color = '#222222', dash = true, label = 'exact p' })
fig[2]:title(('samples of the net (ESS/N %.3f)'):format(ess)):xlabel('x'):ylabel('density')
print('wrote ' .. fig:save(path 'likelihood.svg'))
