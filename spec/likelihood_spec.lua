-- spec/likelihood_spec.lua: divergences (closed forms, a network's Jacobian, Hutchinson's
-- estimator), the probability-flow likelihood of a two-mode mixture against its exact log-density
-- (orders 1, 2, 4 in the step count; rk45 against its tolerance), log q from sampler runs, and the
-- importance-sampling diagnostics against closed forms (ESS, KL of Gaussians; reweighting).
local diffuse = require 'diffuse'
local tensor, metrics = diffuse.tensor, diffuse.metrics

local ve = diffuse.ve(1.1)
local mix = diffuse.score.mixture(ve, { weights = { 0.3, 0.7 }, means = { -1.5, 1.5 }, stds = { 0.2, 0.3 } })

local function slope(ns, errs)
  local mx, my, n = 0, 0, #ns
  for i = 1, n do mx = mx + math.log(ns[i]) / n; my = my + math.log(errs[i]) / n end
  local sxy, sxx = 0, 0
  for i = 1, n do
    sxy = sxy + (math.log(ns[i]) - mx) * (math.log(errs[i]) - my)
    sxx = sxx + (math.log(ns[i]) - mx) ^ 2
  end
  return sxy / sxx
end

describe('divergences', function()
  it('closed forms: -d / sigma^2 for the heat kernel, the Laplacian of log p_t for a mixture', function()
    local x = tensor.new{ { 0.3, -1 }, { 2, 0.5 } }
    local want = -2 / ve:sigma2(0.4)
    for _, v in ipairs(diffuse.score.exact(ve):divergence(x, 0.4):totable()) do assert.near(want, v, 1e-6 * math.abs(want)) end
    -- the mixture's, against central differences of its score (in double, from the formula)
    local m3 = diffuse.score.mixture(ve, { weights = { 0.4, 0.6 }, means = { { 1, 0, -1 }, { -0.5, 0.5, 0 } }, stds = { 0.3, 0.6 } })
    local y = tensor.new{ { 0.2, 0.1, -0.4 }, { -0.3, 0.4, 0.2 } }
    local t = 0.3
    local div = m3:divergence(y, t):totable()
    local h = 1e-2
    for r = 1, 2 do
      local fd = 0
      for c = 1, 3 do
        local e = tensor.zeros(2, 3)
        e[r][c] = tensor.new{ h }
        fd = fd + ((m3(y + e, t) - m3(y - e, t)) / (2 * h)):totable()[r][c]
      end
      assert.near(fd, div[r], 2e-2 * math.abs(fd))
    end
  end)

  it("a network's exact divergence is the trace of its score's Jacobian (mlp, time-embedded, composed; every convention)", function()
    local nn = diffuse.nn
    local nets = {
      function(o) return nn.mlp{ dim = 2, hidden = { 6, 6 }, output = o } end,
      function(o) return nn.time_embedded{ dim = 2, hidden = 5, embed = 8, scale = 2, output = o } end,
      function(o) return nn.net{ dim = 2, output = o, forward = function(x, t)
        local h = nn.linear(6)(nn.cat{ x, nn.fourier(t, { frequencies = { 1, 3 } }) }):tanh()
        return nn.linear(2)(h * nn.linear(6)(x):sin() + h:sigmoid()) + x:square() * 0.1
      end } end,
      function(o) return nn.net{ dim = 2, output = o, forward = function(x, t)
        local L = nn.linear(4)
        local inv = nn.cat{ x:sin():mean(), t }
        local out = nn.cat{ nn.linear(1)(L(nn.cat{ x:col(1), inv }):tanh()), nn.linear(1)(L(nn.cat{ x:col(2), inv }):tanh()) }
        return out - out:mean() + x * 0.3
      end } end,
    }
    for i, make in ipairs(nets) do
      for _, output in ipairs{ 'scaled', 'score', 'noise', 'denoiser' } do
        diffuse.seed(40 + i)
        local score = diffuse.score.net(make(output), ve)
        local y = tensor.randn(7, 2) * 0.5
        for _, t in ipairs{ 0.4, tensor.rand(7) * 0.8 + 0.1 } do
          local div = score:divergence(y, t):totable()
          local h = 1e-2
          local fd = {}
          for r = 1, 7 do fd[r] = 0 end
          for c = 1, 2 do
            local e = tensor.zeros(7, 2)
            for r = 1, 7 do e[r][c] = tensor.new{ h } end
            local d = ((score(y + e, t) - score(y - e, t)) / (2 * h)):totable()
            for r = 1, 7 do fd[r] = fd[r] + d[r][c] end
          end
          for r = 1, 7 do assert.near(fd[r], div[r], 1e-2 * (1 + math.abs(fd[r])), ('net %d, %s, row %d'):format(i, output, r)) end
        end
      end
    end
  end)

  it("Hutchinson's estimator: with Rademacher probes it is the exact divergence in 1-D; with Gaussian probes its variance is 2 |J|_F^2", function()
    local y = tensor.linspace(-2, 2, 9)
    local exact = mix:divergence(y, 0.3)
    local hut = mix:divergence(y, 0.3, { divergence = 'hutchinson' })
    assert.is_true((hut - exact):abs():max() <= 1e-6 * (1 + exact:abs():max()))
    local net = diffuse.score.net(diffuse.nn.mlp{ dim = 1 }, ve)
    assert.is_true((net:divergence(y, 0.3, { divergence = 'hutchinson', probes = 3 }) - net:divergence(y, 0.3)):abs():max() < 1e-6)
    -- in R^3 at one point (n copies), Gaussian probes: E v^T J v = tr J, Var = 2 |J|_F^2 (J symmetric:
    -- the Hessian of log p_t), J computed in double from the mixture's formula
    local m3 = diffuse.score.mixture(ve, { weights = { 0.5, 0.5 }, means = { { 1, 0, 0 }, { -1, 0.5, 0 } }, stds = { 0.4, 0.7 } })
    local p = { 0.1, 0.2, -0.3 }
    local t = 0.2
    local s2 = ve:sigma2(t)
    local comps = { { { 1, 0, 0 }, 0.16 + s2 }, { { -1, 0.5, 0 }, 0.49 + s2 } }
    local lw, sj = {}, {}
    for j, cmp in ipairs(comps) do
      local q = 0
      sj[j] = {}
      for c = 1, 3 do
        local e = p[c] - cmp[1][c]
        q = q + e * e
        sj[j][c] = -e / cmp[2]
      end
      lw[j] = math.log(0.5) - 1.5 * math.log(cmp[2]) - q / (2 * cmp[2])
    end
    local m = math.max(lw[1], lw[2])
    local z = math.exp(lw[1] - m) + math.exp(lw[2] - m)
    local r = { math.exp(lw[1] - m) / z, math.exp(lw[2] - m) / z }
    local sbar = {}
    for c = 1, 3 do sbar[c] = r[1] * sj[1][c] + r[2] * sj[2][c] end
    local J, fro, tr = {}, 0, 0
    for a = 1, 3 do
      J[a] = {}
      for b = 1, 3 do
        local v = 0
        for j = 1, 2 do v = v + r[j] * ((a == b and -1 / comps[j][2] or 0) + sj[j][a] * (sj[j][b] - sbar[b])) end
        J[a][b] = v
        fro = fro + v * v
      end
      tr = tr + J[a][a]
    end
    local n = 40000
    local rows = {}
    for i = 1, n do rows[i] = p end
    local est = m3:divergence(tensor.new(rows), t, { divergence = 'hutchinson', probe = 'gaussian' })
    local se_mean = math.sqrt(2 * fro / n)
    assert.near(tr, est:mean(), 5 * se_mean)
    local v = est:var()
    assert.near(2 * fro, v, 5 * 2 * fro * math.sqrt(2 / n) * 2) -- (the variance of a variance: a few times 2 fro sqrt(2/n))
    assert.near(tr, m3:divergence(tensor.new{ p }, t):item(), 1e-5 * math.abs(tr))
  end)

  it('a divergence asked of a score that has none, or at t = 0, is an error', function()
    local s = diffuse.sampler{ diffuser = ve, steps = 4 }
    assert.error_matches(function() s:run(ve:prior(3), function(x, t) return x end, { logq = true }) end,
      'a Lua score function has none')
    assert.error_matches(function() mix:divergence(tensor.zeros(3), 0) end, 't must be positive')
    assert.error_matches(function() mix:divergence(tensor.zeros(3), 0.5, { divergence = 'trace' }) end,
      "divergence must be 'exact' or 'hutchinson'")
    assert.error_matches(function() mix:divergence(tensor.zeros(3), 0.5, { divergence = 'hutchinson', probes = 0 }) end,
      'probes must be from 1 to 64')
    assert.error_matches(function() mix:divergence(tensor.zeros(3), 0.5, { probe = 'uniform' }) end,
      "probe must be 'rademacher' or 'gaussian'")
    -- x of another width than the mixture's (its rows are read d at a time: never past the end)
    assert.error_matches(function() mix:divergence(tensor.zeros(3, 2), 0.5) end,
      'diffuse.score.divergence: x has 2 columns but the mixture lives in R%^1')
    assert.error_matches(function() mix:divergence(tensor.zeros(3, 2), 0.5, { divergence = 'hutchinson' }) end,
      'x has 2 columns but the mixture lives in R%^1')
    assert.error_matches(function() diffuse.likelihood{ diffuser = ve, score = mix, x = tensor.zeros(4, 3) } end,
      'diffuse.likelihood: x has 3 columns but the mixture lives in R%^1')
  end)
end)

describe('the probability-flow likelihood', function()
  diffuse.seed(5)
  local x = mix:sample(300)
  local exact = mix:log_density(x, 1e-5) -- the density at t_min, where the ODE starts

  local function err(o)
    o.diffuser, o.score, o.x, o.prior = ve, mix, x, o.prior or mix -- the exact p_1 as prior
    local lp, info = diffuse.likelihood(o)
    return (lp - exact):abs():max(), info
  end

  it('the error against the analytic log p falls with orders 1, 2 and 4 (euler, heun, rk4)', function()
    for _, case in ipairs{ { 'euler', 1, { 25, 50, 100, 200 } }, { 'heun', 2, { 25, 50, 100, 200 } },
                           { 'rk4', 4, { 16, 32, 64 } } } do
      local errs = {}
      for i, N in ipairs(case[3]) do errs[i] = err{ method = case[1], steps = N } end
      local p = -slope(case[3], errs)
      -- (rk4's errors reach float32's floor, ~1e-5 of log p, by 100 steps; over 16..64 steps its
      -- measured order is 3.4)
      assert.is_true(math.abs(p - case[2]) < (case[2] == 4 and 0.7 or 0.3), ('%s: order %.2f (%s)'):format(case[1], p,
        table.concat(errs, ', ')))
    end
  end)

  it('rk45 reaches its tolerance within a small factor, its rows on their own steps', function()
    for _, tol in ipairs{ 1e-4, 1e-6 } do
      local e, info = err{ method = 'rk45', rtol = tol, atol = tol }
      assert.is_true(e < 30 * tol, ('tol %g: error %g'):format(tol, e))
      assert.is_true(info.nfe_rows <= info.nfe)
      assert.is_true(info.x1:std() > 1) -- carried to t = 1
    end
  end)

  it("the prior's log-density: score_sde's N(0, sigma(1)^2) is wrong by nats here; functions and objects work", function()
    local lp_exact = diffuse.likelihood{ diffuser = ve, score = mix, x = x, prior = mix }
    local lp_gauss, info = diffuse.likelihood{ diffuser = ve, score = mix, x = x }
    local worst = (lp_exact - lp_gauss):abs():max()
    -- (the data's spread, +-1.5, is that of sigma(1) = 1.05: p_1 is far from the Gaussian)
    assert.is_true(worst > 1, 'Gaussian prior off by ' .. worst)
    local lp_fn = diffuse.likelihood{ diffuser = ve, score = mix, x = x, prior = function(x1) return mix:log_density(x1, 1) end }
    assert.equal(0, (lp_fn - lp_exact):abs():max())
    assert.near(-lp_exact:mean() / math.log(2), select(2, diffuse.likelihood{ diffuser = ve, score = mix, x = x, prior = mix }).bpd, 1e-4)
    assert.error_matches(function() diffuse.likelihood{ diffuser = ve, score = mix, x = x, prior = function(x1) return x1:sum(1) end } end,
      'the prior must give one log%-density per row %(%[300%]%), got 1')
    assert.error_matches(function() diffuse.likelihood{ diffuser = ve, score = mix, x = x, prior = 3 } end,
      'prior must be a function')
    assert.error_matches(function() diffuse.likelihood{ diffuser = ve, score = mix, x = x, rtol = 0 } end, 'rtol must be positive')
    assert.error_matches(function() diffuse.likelihood{ diffuser = ve, score = mix, x = x, t_min = 0 } end, 't_min must be in %(0, 1%)')
    assert.error_matches(function() diffuse.likelihood{ diffuser = ve, score = mix, x = x, method = 'pc' } end,
      "method must be 'euler', 'heun', 'rk4' or 'rk45'")
    assert.error_matches(function() diffuse.likelihood{ diffuser = ve, score = function() end, x = x } end,
      'a Lua score function has no divergence')
    assert.is_true(info.nfe > 0)
  end)

  it("log q from a sampler run: the flow's exact density at t_min (rk45), and the discrete map's as steps grow (Euler)", function()
    -- Gaussian data: rk45's x at t_min with the exact p_1 as prior has log q = log p_(t_min)(x)
    local g = diffuse.score.mixture(ve, { weights = { 1 }, means = { 0.7 }, stds = { 0.4 } })
    diffuse.seed(6)
    local x1 = g:sample(200, 1)
    local s = diffuse.sampler{ diffuser = ve, method = 'rk45', rtol = 1e-6, atol = 1e-6, t_min = 0.01 }
    local xt, _, logq = s:run(x1, g, { logq = true, prior = g })
    assert.is_true((logq - g:log_density(xt, 0.01)):abs():max() < 1e-4)
    -- Euler's map is linear here: its exact density is N(F m + b, F^2 v); the integrated divergence
    -- approaches it as the steps grow
    local last
    for _, N in ipairs{ 50, 200, 800 } do
      local se = diffuse.sampler{ diffuser = ve, steps = N, grid = 'karras', method = 'euler' }
      local ends = se:run(tensor.new{ 0, 1 }:reshape(2, 1), g)
      local b, F = ends[1]:item(), ends[2]:item() - ends[1]:item()
      local x0, _, lq = se:run(x1, g, { logq = true, prior = g })
      -- q(x0) = p_1(x1) / |F|
      local want = g:log_density(x1, 1) - math.log(math.abs(F))
      local e = (lq - want):abs():max()
      if last then assert.is_true(e < 0.5 * last, ('N = %d: %g after %g'):format(N, e, last)) end
      last = e
      assert.is_true(((x0 - b) / F - x1):abs():max() < 1e-4)
    end
    assert.error_matches(function() diffuse.sampler{ diffuser = ve, method = 'pc', steps = 3 }:run(x1, g, { logq = true }) end,
      'logq needs a deterministic method')
  end)
end)

describe('importance-sampling diagnostics', function()
  -- q = N(m1, v1), p = N(m2, v2): E_q[(p/q)^2] = sqrt(v1) / (v2 sqrt(2 v1 - v2)) ... in closed form
  local function gauss_logpdf(x, m, v) return -(x - m) ^ 2 / (2 * v) - 0.5 * math.log(2 * math.pi * v) end
  local function ess_closed(m1, v1, m2, v2) -- 1 / E_q[w^2], w = p / q (2 v1 > v2)
    return 1 / (v1 / math.sqrt(v2 * (2 * v1 - v2)) * math.exp((m1 - m2) ^ 2 / (2 * v1 - v2)))
  end
  local function kl_closed(m1, v1, m2, v2) return 0.5 * (math.log(v2 / v1) + (v1 + (m1 - m2) ^ 2) / v2 - 1) end

  -- #nosan (here and on the heavy specs below): full-size workloads, seconds natively and an hour under
  -- valgrind; the same native paths run under the sanitizers at small sizes in the other specs
  it('ESS and KL of Gaussians match their closed forms; a discrete sampler with a known density too #nosan', function()
    -- E_q[(p/q)^2] by numerical quadrature, to check the closed form itself
    local function e_w2(m1, v1, m2, v2)
      local s, h = 0, 1e-3
      for x = -12, 12, h do s = s + math.exp(2 * gauss_logpdf(x, m2, v2) - gauss_logpdf(x, m1, v1)) * h end
      return s
    end
    assert.near(1 / e_w2(0.2, 1.3, 0, 1), ess_closed(0.2, 1.3, 0, 1), 1e-6)
    -- the Euler sampler with the exact score of N(0.7, 0.4^2): a linear map of the prior
    local g = diffuse.score.mixture(ve, { weights = { 1 }, means = { 0.7 }, stds = { 0.4 } })
    local s = diffuse.sampler{ diffuser = ve, steps = 12, method = 'euler' }
    local ends = s:run(tensor.new{ 0, 1 }:reshape(2, 1), g)
    local b, F = ends[1]:item(), ends[2]:item() - ends[1]:item()
    local v1, m1 = (F * ve:sigma(1)) ^ 2, b -- q = N(b, F^2 sigma(1)^2)
    local m2, v2 = 0.7, 0.16
    diffuse.seed(8)
    local n = 200000
    local x0 = s:run(ve:prior(n), g):totable()
    local logq, logp = {}, {}
    for i = 1, n do
      local x = x0[i][1]
      logq[i], logp[i] = gauss_logpdf(x, m1, v1), gauss_logpdf(x, m2, v2)
    end
    local logw = {}
    for i = 1, n do logw[i] = logp[i] - logq[i] end
    local ess = metrics.ess(logw)
    local want = ess_closed(m1, v1, m2, v2)
    assert.is_true(want < 0.999)
    assert.near(want, ess, 0.02 * want)
    local kl, se = metrics.kl(logq, logp)
    assert.near(kl_closed(m1, v1, m2, v2), kl, 4 * se)
    -- the forward KL from samples of p
    diffuse.seed(9)
    local xp = (tensor.randn(n) * 0.4 + 0.7):totable()
    local pq, pp = {}, {}
    for i = 1, n do pq[i], pp[i] = gauss_logpdf(xp[i], m1, v1), gauss_logpdf(xp[i], m2, v2) end
    local _, _, fkl, fse = metrics.kl(logq, logp, { logq = pq, logp = pp })
    assert.near(kl_closed(m2, v2, m1, v1), fkl, 4 * fse)
    -- log Z of an unnormalised p (times e^2) from the samples of q
    local lp2 = {}
    for i = 1, n do lp2[i] = logp[i] + 2 end
    local lz, lzse = metrics.log_z(lp2, logq)
    assert.near(2, lz, 4 * lzse)
    -- reweighting recovers p's mean and second moment
    local v, v2s = {}, {}
    for i = 1, n do v[i], v2s[i] = x0[i][1], x0[i][1] ^ 2 end
    local mean, mse = metrics.reweight(v, logw)
    assert.near(0.7, mean, 4 * mse)
    local sec, sse = metrics.reweight(v2s, logw)
    assert.near(0.7 ^ 2 + 0.16, sec, 4 * sse)
  end)

  it('bootstrap: the standard error of a mean is sd / sqrt(N); the resamples repeat for a seed', function()
    local data = {}
    diffuse.seed(10)
    local z = tensor.randn(2000):totable()
    for i = 1, 2000 do data[i] = z[i] end
    local function mean(a) local s = 0; for i = 1, #a do s = s + a[i] end; return s / #a end
    local est, se, reps = metrics.bootstrap(mean, data, { n = 400 })
    assert.near(mean(data), est, 1e-12)
    assert.near(1 / math.sqrt(2000), se, 0.15 / math.sqrt(2000))
    assert.equal(400, #reps)
    local _, se2 = metrics.bootstrap(mean, data, { n = 400 })
    assert.equal(se, se2)
    -- several arrays resampled together: the log Z of paired samples
    local lz = metrics.bootstrap(function(d) return (metrics.log_z(d.p, d.q)) end, { p = { 0, 1, 2 }, q = { 0, 0, 0 } }, { n = 50 })
    assert.near(math.log((1 + math.exp(1) + math.exp(2)) / 3), lz, 1e-12)
    assert.error_matches(function() metrics.bootstrap(mean, { a = { 1, 2 }, b = { 1 } }) end, 'data%.b has 1 values')
    assert.error_matches(function() metrics.bootstrap(mean, data, { n = 1 }) end, 'n must be a whole number')
    assert.error_matches(function() metrics.bootstrap(function() return 'x' end, data) end, 'fn must return a number')
  end)

  it('the diagnostics check their input', function()
    assert.error_matches(function() metrics.ess({}) end, 'diffuse%.metrics%.ess: logw is empty')
    assert.error_matches(function() metrics.ess({ 0, 0 / 0 }) end, 'logw holds')
    assert.error_matches(function() metrics.ess({ -math.huge }) end, 'every weight is 0')
    assert.error_matches(function() metrics.kl({ 1, 2 }, { 1 }) end, 'logq has 2 values, logp 1')
    assert.error_matches(function() metrics.reweight({ 1 }, 'x') end, 'logw must be a tensor or an array')
    assert.error_matches(function() metrics.kl({ 1 }, { 1 }, { logq = { 1 } }) end, 'given as {logq = ..., logp = ...}')
    assert.equal(0.5, metrics.ess({ 0, -math.huge }))
  end)
end)

describe('reweighting a trained net', function()
  it("importance weights of a trained net's samples recover the mixture's mean and second moment within two standard errors #slow #nosan", function()
    diffuse.seed(21)
    local data = mix:sample(8192)
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 32, 32, 32 } }
    diffuse.train{ net = net, diffuser = ve, data = data, batch = 1024, steps = 3000, lr = 3e-3, tol = 1e-3 }
    local s = diffuse.sampler{ diffuser = ve, method = 'rk45', rtol = 1e-4, atol = 1e-4, t_min = 1e-3 }
    diffuse.seed(22)
    local x1 = mix:sample(4000, 1)
    local xt, _, logq = s:run(x1, diffuse.score.net(net, ve), { logq = true, prior = mix })
    local logw = mix:log_density(xt, 1e-3) - logq
    local ess = metrics.ess(logw)
    assert.is_true(ess > 0.5, 'ESS ' .. ess)
    local s2 = ve:sigma2(1e-3)
    local mean_want = 0.3 * -1.5 + 0.7 * 1.5
    local sec_want = 0.3 * (2.25 + 0.04 + s2) + 0.7 * (2.25 + 0.09 + s2)
    local m, mse = metrics.reweight(xt, logw)
    local m2, m2se = metrics.reweight(xt * xt, logw)
    assert.near(mean_want, m, 2 * mse)
    assert.near(sec_want, m2, 2 * m2se)
  end)
end)
