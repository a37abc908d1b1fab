-- spec/solver_spec.lua: the samplers beyond the seed's (time grids, steps in sigma, DDIM,
-- DPM++(2M), EDM, PC, rk45) against exact answers: the heat kernel from the origin, where the
-- sigma-space methods are exact; Gaussian data N(mu, s^2), whose probability-flow map is known in
-- closed form, for the convergence orders; the exact variance recursions of the stochastic steps;
-- rk45 against its tolerance; and bad input.
local diffuse = require 'diffuse'
local tensor = diffuse.tensor

local ve = diffuse.ve(1.1)
local exact = diffuse.score.exact(ve)

-- least-squares slope of log err against log N
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

describe('time grids', function()
  it('karras, log_sigma and a list of times: the sigmas and times they define, exactly', function()
    local N, rho = 10, 7
    local s = diffuse.sampler{ diffuser = ve, steps = N, method = 'heun', grid = { 'karras', rho = rho, sigma_min = 0.02 } }
    local t, sg = s:times()
    local smax = ve:sigma(1)
    for i = 0, N - 1 do
      local want = (smax ^ (1 / rho) + i / (N - 1) * (0.02 ^ (1 / rho) - smax ^ (1 / rho))) ^ rho
      assert.near(want, sg[i + 1], 1e-12 * want)
    end
    assert.equal(0, sg[N + 1])
    assert.equal(1, t[1])
    assert.equal(0, t[N + 1])
    -- the map between t and sigma is exact: VE t = ln(1 + 2 ln(kappa) sigma^2) / (2 ln kappa)
    local l = math.log(1.1)
    for i = 2, N do assert.near(math.log(1 + 2 * l * sg[i] ^ 2) / (2 * l), t[i], 1e-14) end
    s = diffuse.sampler{ diffuser = ve, steps = 5, method = 'ddim', grid = 'log_sigma' }
    t, sg = s:times()
    local smin = ve:sigma(1e-3) -- the default sigma_min: sigma(1e-3)
    for i = 0, 4 do assert.near(math.exp(math.log(smax) + i / 4 * (math.log(smin) - math.log(smax))), sg[i + 1], 1e-13) end
    assert.near(1e-3, t[5], 1e-15)
    -- a power diffuser's map: t = ((2a + 1) sigma^2 / kappa^2)^(1 / (2a + 1))
    local pw = diffuse.power(3, 1)
    t, sg = diffuse.sampler{ diffuser = pw, steps = 4, method = 'euler', grid = 'karras' }:times()
    for i = 2, 4 do assert.near((3 * sg[i] ^ 2 / 9) ^ (1 / 3), t[i], 1e-14) end
    -- a list: steps = #list - 1
    s = diffuse.sampler{ diffuser = ve, method = 'heun', grid = { 1, 0.6, 0.3, 0.1, 0 } }
    assert.equal(4, s.steps)
    assert.equal('sigma', s.space)
    t = s:times()
    assert.same({ 1, 0.6, 0.3, 0.1, 0 }, t)
  end)

  it('rejects grids that do not decrease, leave [0, 1], or whose sigma underflows', function()
    local function bad(o, pattern)
      o.diffuser = o.diffuser or ve
      assert.error_matches(function() diffuse.sampler(o) end, 'diffuse%.sampler: ' .. pattern)
    end
    bad({ grid = { 1, 0.5, 0.7, 0 } }, 'grid times must decrease %(time 3 is 0.7 after 0.5%)')
    bad({ grid = { 1, 0.5, 0.5 } }, 'grid times must decrease')
    bad({ grid = { 1.5, 0 } }, 'grid time 1 must be in %[0, 1%]')
    bad({ grid = { 1, -0.1 } }, 'grid time 2 must be in %[0, 1%]')
    bad({ grid = { 1, 0 / 0 } }, 'grid time 2 must be in %[0, 1%]')
    bad({ grid = { 1 } }, 'grid must list 2 to 1e8 %+ 1 times')
    bad({ grid = { 1, 'a' } }, 'grid time 2 must be a number')
    bad({ grid = 'cosine' }, "unknown grid 'cosine'")
    bad({ grid = { 'karras', rho = 0 } }, 'rho must be positive')
    bad({ grid = { 'karras', rhoo = 7 } }, "unknown grid option 'rhoo'")
    bad({ grid = 'karras', sigma_min = -1 }, 'sigma_min must be positive')
    bad({ grid = { 1, 0.5, 0 }, steps = 3 }, 'steps %(3%) must be the grid\'s times less one %(2%)')
    bad({ method = 'rk45', grid = 'karras' }, 'rk45 chooses its own steps')
    bad({ method = 'euler_maruyama', grid = 'karras', space = 'sigma' }, 'euler_maruyama steps in t')
    bad({ space = 'x' }, "space must be 't' or 'sigma'")
    bad({ method = 'rk45', rtol = 0 }, 'rtol must be positive')
    bad({ method = 'rk45', atol = -1 }, 'atol must be positive')
    bad({ method = 'pc', snr = 0 }, 'snr must be positive')
    bad({ method = 'ddim', eta = 2 }, 'eta must be in %[0, 1%]')
    bad({ method = 'edm', S_min = 2, S_max = 1 }, 'S_min %(2%) must not exceed S_max %(1%)')
    bad({ method = 'pc', corrector_steps = 1.5 }, 'corrector_steps must be a whole number')
    bad({ method = 'sde' }, "unknown method 'sde'")
    local s = diffuse.sampler{ diffuser = ve, grid = 'karras', sigma_min = 5, steps = 4 }
    assert.error_matches(function() s:run(ve:prior(3), exact) end, 'sigma_min %(5%) must be below sigma%(1%)')
    -- a power diffuser with a large alpha: sigma^2 underflows float32 near t = 0
    local pw = diffuse.power(1, 30)
    s = diffuse.sampler{ diffuser = pw, grid = { 1, 0.5, 0.01, 0 }, method = 'heun' }
    assert.error_matches(function() s:run(pw:prior(3), diffuse.score.exact(pw)) end, 'underflows float32')
  end)
end)

describe('sigma-space samplers on the heat kernel from the origin', function()
  it('DDIM, Heun, Euler and DPM++(2M) on a sigma grid end at 0 to float precision', function()
    diffuse.seed(3)
    local x1 = ve:prior(2000)
    for _, m in ipairs{ 'ddim', 'heun', 'euler', 'dpmpp_2m', 'edm' } do
      for _, g in ipairs{ 'karras', 'log_sigma', { 1, 0.7, 0.2, 0.05, 0 } } do
        for _, N in ipairs{ 1, 4, 25 } do
          local grid = type(g) == 'table' and g or g
          if type(g) == 'table' and N ~= 4 then goto continue end
          local s = diffuse.sampler{ diffuser = ve, steps = type(g) == 'table' and nil or N, method = m, grid = grid }
          local x0, path = s:run(x1, exact, { record = { 1 } })
          -- the exact flow x(sigma) = x1 sigma / sigma(1): to float rounding at every step
          local _, sg = s:times()
          local want = x1 * (sg[2] / sg[1])
          assert.is_true((path[1] - want):abs():max() <= 4e-7 * x1:abs():max(), m .. ' first step')
          assert.is_true(x0:abs():max() <= 1e-6 * x1:abs():max(), ('%s, %s, %d steps: %g'):format(m, tostring(g), N,
            x0:abs():max()))
          ::continue::
        end
      end
    end
  end)

  it("today's uniform-grid Euler and Heun keep their closed-form factors; their t = 0 error is N^(-1/2)", function()
    -- Euler: x0 = F x1 with F = prod (1 - g_k^2 dt / (2 sigma_k^2)); Heun's factor likewise
    local function factors(N)
      local fe, fh = 1, 1
      for k = 0, N - 1 do
        local t, t1 = 1 - k / N, 1 - (k + 1) / N
        local c1, a = 0.5 * ve:g(t) ^ 2 / N, 1 / ve:sigma(t) ^ 2
        fe = fe * (1 - c1 * a)
        if k == N - 1 then fh = fh * (1 - c1 * a)
        else
          local c2 = 0.5 * ve:g(t1) ^ 2 / N
          fh = fh * (1 - 0.5 * (c1 * a + c2 * (1 - c1 * a) / ve:sigma(t1) ^ 2))
        end
      end
      return fe, fh
    end
    local x1 = tensor.linspace(0.5, 2, 64):reshape(64, 1)
    local last = {}
    for _, N in ipairs{ 100, 400, 1600 } do
      local fe, fh = factors(N)
      local e = diffuse.sampler{ diffuser = ve, steps = N, method = 'euler' }:run(x1, exact)
      local h = diffuse.sampler{ diffuser = ve, steps = N, method = 'heun' }:run(x1, exact)
      assert.is_true(((e / x1) - fe):abs():max() <= 1e-6 * fe * math.sqrt(N / 100) * 4, 'euler ' .. N)
      assert.is_true(((h / x1) - fh):abs():max() <= 1e-6 * fh * math.sqrt(N / 100) * 4, 'heun ' .. N)
      last = { fe * math.sqrt(N), fh * math.sqrt(N) }
    end
    -- the factors times sqrt(N) tend to about 0.537 (Euler) and 0.459 (Heun)
    assert.near(0.537, last[1], 0.01)
    assert.near(0.459, last[2], 0.01)
  end)
end)

describe('convergence orders on Gaussian data', function()
  -- N(mu, s^2): the flow is x(sigma) = mu + (x1 - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma1^2)
  local mu, sd = 0.7, 0.4
  local gauss = diffuse.score.mixture(ve, { weights = { 1 }, means = { mu }, stds = { sd } })
  local x1 = tensor.linspace(-3, 3, 61):reshape(61, 1)

  local function flow(sig, sig1)
    return (x1 - mu) * (math.sqrt(sd * sd + sig * sig) / math.sqrt(sd * sd + sig1 * sig1)) + mu
  end

  -- the error at the grid's last sigma > 0 (step N - 1), where the last first-order step to 0 has
  -- not yet been taken: the floor it would add is the same for every N on a Karras grid
  local function err_at_sigma_min(method, N)
    local s = diffuse.sampler{ diffuser = ve, steps = N, method = method, grid = 'karras' }
    local _, sg = s:times()
    local _, path = s:run(x1, gauss, { record = { N - 1 } })
    return (path[N - 1] - flow(sg[N], sg[1])):abs():max()
  end

  it('slopes 1 for Euler and DDIM, 2 for Heun and DPM++(2M) (Karras grid, in sigma)', function()
    local ns = { 16, 32, 64, 128 }
    for _, case in ipairs{ { 'euler', 1 }, { 'ddim', 1 }, { 'heun', 2 }, { 'dpmpp_2m', 2 } } do
      local errs = {}
      for i, N in ipairs(ns) do errs[i] = err_at_sigma_min(case[1], N) end
      local p = -slope(ns, errs)
      assert.is_true(math.abs(p - case[2]) < 0.25, ('%s: order %.3f (errors %s)'):format(case[1], p,
        table.concat({ errs[1], errs[2], errs[3], errs[4] }, ', ')))
    end
  end)

  it('the uniform t grid: orders 1 and 2 at t0 = 0.25 for Euler and Heun', function()
    local ns = { 20, 40, 80, 160 }
    for _, case in ipairs{ { 'euler', 1 }, { 'heun', 2 } } do
      local errs = {}
      for i, N in ipairs(ns) do
        local s = diffuse.sampler{ diffuser = ve, steps = N, method = case[1] }
        local _, path = s:run(x1, gauss, { record = { 3 * N // 4 } })
        errs[i] = (path[3 * N // 4] - flow(ve:sigma(0.25), ve:sigma(1))):abs():max()
      end
      local p = -slope(ns, errs)
      assert.is_true(math.abs(p - case[2]) < 0.2, ('%s: order %.3f'):format(case[1], p))
    end
  end)

  it('fused Euler and Heun on sigma grids take the stepped path\'s steps (a log q run steps)', function()
    for _, o in ipairs { { 'euler', 'karras' }, { 'heun', 'karras' }, { 'heun', 'log_sigma' }, { 'euler', 'uniform', 'sigma' } } do
      local s = diffuse.sampler{ diffuser = ve, steps = 16, method = o[1], grid = o[2], space = o[3] }
      local a = s:run(x1, gauss)
      local b = s:run(x1, gauss, { logq = true }) -- (solver.c: whole-batch steps, the same rules)
      local scale = a:abs():max()
      assert.is_true((a - b):abs():max() <= 32 * 2 ^ -23 * scale, o[1] .. ' ' .. o[2] .. ': fused and stepped differ by '
        .. (a - b):abs():max())
    end
  end)

  it('rk4 on the uniform t grid: order 4 at t0 = 0.5, until float32 rounding (2, 4, 8 steps)', function()
    -- (by 16 steps its error is at float32's floor, ~1e-6 for these x)
    local ns, errs = { 2, 4, 8 }, {}
    for i, N in ipairs(ns) do
      local s = diffuse.sampler{ diffuser = ve, steps = N, method = 'rk4' }
      local _, path = s:run(x1, gauss, { record = { N // 2 } })
      errs[i] = (path[N // 2] - flow(ve:sigma(0.5), ve:sigma(1))):abs():max()
      assert.are.equal(4 * (N - 1) + 1, s.nfe) -- (its last step, to t = 0, is Euler's)
    end
    local p = -slope(ns, errs)
    assert.is_true(p > 3.5 and p < 4.5, ('rk4: order %.3f (errors %g, %g, %g)'):format(p, errs[1], errs[2], errs[3]))
  end)

  it('rk45 reaches its tolerance within a small factor, with fewer evaluations for looser ones', function()
    local nfes = {}
    for i, tol in ipairs{ 1e-3, 1e-5 } do
      local s = diffuse.sampler{ diffuser = ve, method = 'rk45', rtol = tol, atol = tol, t_min = 0.01 }
      local _, path = s:run(x1, gauss, { record = { 1 } }) -- path[steps = 1] is x0, after the denoising step
      -- x at t_min: recover it from x0 = x + sigma^2 s, a linear map for Gaussian data
      local sg = ve:sigma(0.01)
      local a = sd * sd / (sd * sd + sg * sg) -- x0 = mu + a (x - mu)
      local x_tmin = (path[1] - mu) / a + mu
      local err = (x_tmin - flow(sg, ve:sigma(1))):abs():max()
      assert.is_true(err < 30 * tol * 3, ('rtol %g: error %g'):format(tol, err))
      nfes[i] = s.nfe
      assert.is_true(s.nfe_rows <= s.nfe)
    end
    assert.is_true(nfes[1] < nfes[2])
  end)

  it('rk45 controls each row: a batch of easy rows and one hard row spends the steps on that row', function()
    local mix = diffuse.score.mixture(ve, { weights = { 0.5, 0.5 }, means = { -1, 1 }, stds = { 0.02, 0.5 } })
    local x = tensor.full({ 50, 1 }, 2)
    x[1] = tensor.new{ -1.0 }
    local s = diffuse.sampler{ diffuser = ve, method = 'rk45', rtol = 1e-5, atol = 1e-5 }
    s:run(x, mix)
    assert.is_true(s.nfe_rows < 0.9 * s.nfe, ('mean row %g of %d evaluations'):format(s.nfe_rows, s.nfe))
  end)
end)

describe('stochastic samplers', function()
  local n = 40000
  -- the sample variance of n draws is within k standard errors, SE = var sqrt(2 / (n - 1))
  local function near_var(want, got, what)
    assert.is_true(math.abs(got - want) <= 5 * want * math.sqrt(2 / (n - 1)),
      ('%s: variance %.6g, expected %.6g'):format(what, got, want))
  end

  it('ancestral steps (DDIM, eta = 1) keep Var = sigma_k^2 for the heat kernel', function()
    diffuse.seed(11)
    local s = diffuse.sampler{ diffuser = ve, steps = 10, method = 'ddim', eta = 1, grid = 'karras' }
    local _, sg = s:times()
    local _, path = s:run(ve:prior(n), exact, { record = { 2, 5, 9 } })
    for _, k in ipairs{ 2, 5, 9 } do near_var(sg[k + 1] ^ 2, path[k]:var(), 'step ' .. k) end
  end)

  it('the reverse SDE, PC (no corrector) and EDM with churn follow their exact variance recursions', function()
    diffuse.seed(12)
    local x1 = ve:prior(n)
    -- Euler-Maruyama on a Karras grid's times: Var' = Var (1 - g^2 dt / sigma^2)^2 + g^2 dt
    local s = diffuse.sampler{ diffuser = ve, grid = 'karras', steps = 8, method = 'euler_maruyama' }
    local t, sg = s:times()
    local _, path = s:run(x1, exact, { record = { 6 } })
    local v = sg[1] ^ 2
    for k = 0, 5 do
      local g2dt = ve:g(t[k + 1]) ^ 2 * (t[k + 1] - t[k + 2])
      v = v * (1 - g2dt / sg[k + 1] ^ 2) ^ 2 + g2dt
    end
    near_var(v, path[6]:var(), 'euler_maruyama')
    -- PC's predictor: Var' = Var sigma'^4 / sigma^4 + sigma^2 - sigma'^2; each corrector step
    -- x (1 - 2 snr^2) + 2 snr sigma' z: Var'' = Var' (1 - 2 snr^2)^2 + 4 snr^2 sigma'^2
    for _, corr in ipairs{ 0, 2 } do
      s = diffuse.sampler{ diffuser = ve, grid = 'karras', steps = 8, method = 'pc', corrector_steps = corr, snr = 0.2 }
      _, sg = s:times()
      _, path = s:run(x1, exact, { record = { 6 } })
      v = sg[1] ^ 2
      for k = 1, 6 do
        local a, b = sg[k], sg[k + 1]
        v = v * b ^ 4 / a ^ 4 + a * a - b * b
        for _ = 1, corr do v = v * (1 - 2 * 0.04) ^ 2 + 4 * 0.04 * b * b end
      end
      near_var(v, path[6]:var(), 'pc with ' .. corr .. ' corrector steps')
    end
    -- EDM's churn adds sigma_hat^2 - sigma^2 and Heun's step scales by sigma' / sigma_hat
    s = diffuse.sampler{ diffuser = ve, grid = 'karras', steps = 8, method = 'edm', S_churn = 4 }
    _, sg = s:times()
    _, path = s:run(x1, exact, { record = { 6 } })
    near_var(sg[7] ^ 2, path[6]:var(), 'edm')
  end)

  it('the Langevin corrector pulls samples toward the marginal it corrects at', function()
    -- from a too-wide start: at a fixed sigma' the corrector's fixed point is sigma'^2 / (1 - snr^2)
    diffuse.seed(13)
    local wide = ve:prior(n) * 1.5
    local s0 = diffuse.sampler{ diffuser = ve, grid = 'karras', steps = 8, method = 'pc', corrector_steps = 0 }
    local s5 = diffuse.sampler{ diffuser = ve, grid = 'karras', steps = 8, method = 'pc', corrector_steps = 5, snr = 0.3 }
    local _, sg = s5:times()
    local _, p0 = s0:run(wide, exact, { record = { 2 } })
    local _, p5 = s5:run(wide, exact, { record = { 2 } })
    local target = sg[3] ^ 2
    assert.is_true(math.abs(p5[2]:var() - target) < 0.7 * math.abs(p0[2]:var() - target))
    assert.equal(8 + 7 * 5, s5.nfe) -- a predictor per step, 5 corrector evaluations after all but the last
  end)

  it('the same seed gives the same samples on any thread count', function()
    for _, m in ipairs{ 'pc', 'edm', 'ddim' } do
      local runs = {}
      for _, th in ipairs{ 1, 2 } do
        diffuse.set_threads(th)
        diffuse.seed(14)
        local x1 = ve:prior(70000)
        runs[th] = diffuse.sampler{ diffuser = ve, steps = 5, method = m, grid = 'karras', eta = 1, S_churn = 2 }:run(x1, exact)
      end
      diffuse.set_threads(1)
      assert.equal(0, (runs[1] - runs[2]):abs():max(), m)
    end
  end)
end)

describe('sampler scores', function()
  it('networks and Lua functions run every fixed-grid method; rk45 needs one time per row', function()
    diffuse.seed(15)
    local net = diffuse.nn.mlp{ dim = 1 }
    local score = diffuse.score.net(net, ve)
    local x1 = ve:prior(300)
    for _, m in ipairs{ 'ddim', 'dpmpp_2m', 'edm', 'pc', 'heun', 'rk45' } do
      local s = diffuse.sampler{ diffuser = ve, steps = 6, method = m, grid = m ~= 'rk45' and 'karras' or nil,
                                 rtol = 1e-3, atol = 1e-3 }
      diffuse.seed(16)
      local a = s:run(x1, score)
      if m ~= 'rk45' then
        diffuse.seed(16)
        local b = s:run(x1, function(x, t) return score(x, t) end)
        assert.equal(0, (a - b):abs():max(), m)
      else
        assert.error_matches(function() s:run(x1, function(x, t) return score(x, t) end) end,
          'needs a score that takes one time per row')
      end
      assert.is_true(a:abs():max() < 1e3)
    end
  end)
end)
