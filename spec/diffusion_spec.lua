-- spec/diffusion_spec.lua: diffusers, the heat kernel, score sources and samplers against their
-- closed forms: forward noising, the linear Euler map of the exact-score ODE, convergence orders,
-- the exact variance recursion of the reverse SDE, mixture scores against finite differences of
-- the analytic log-density, and recovery of a two-mode mixture.
local diffuse = require 'diffuse'
local tensor = diffuse.tensor

local K = 5 -- standard errors allowed in every statistical test (fixed, never tuned)

local function erf(x) -- Abramowitz-Stegun 7.1.26 is too coarse; series / continued fraction
  local ax = math.abs(x)
  local r
  if ax < 2.5 then
    local term, sum, n = ax, ax, 0
    repeat
      n = n + 1
      term = -term * ax * ax / n
      sum = sum + term / (2 * n + 1)
    until math.abs(term) < 1e-17
    r = 2 / math.sqrt(math.pi) * sum
  else -- erfc by a continued fraction (Lentz)
    local f, c, d = ax, ax, 0
    for n = 1, 200 do
      local an = n / 2
      d = ax + an * d; d = 1 / d
      c = ax + an / c
      f = f * c * d
    end
    r = 1 - math.exp(-ax * ax) / math.sqrt(math.pi) / f
  end
  return x < 0 and -r or r
end

local function col(t) -- a tensor [B] or [B,1] as a Lua array
  local v = t:totable()
  if type(v[1]) == 'table' then for i = 1, #v do v[i] = v[i][1] end end
  return v
end

local function ve_sigma(kappa, t)
  if kappa == 1 then return math.sqrt(t) end
  return math.sqrt((kappa ^ (2 * t) - 1) / (2 * math.log(kappa)))
end

describe('diffusers', function()
  it('ve: g and sigma against the closed forms, numbers and tensors', function()
    for _, kappa in ipairs{ 1.1, 2.0, 0.7, 25 } do
      local ve = diffuse.ve(kappa)
      local ts = { 0, 1e-4, 0.01, 0.3, 0.5, 1, 2 }
      for _, t in ipairs(ts) do
        assert.near(kappa ^ t, ve:g(t), 1e-12 * kappa ^ t)
        assert.near(ve_sigma(kappa, t), ve:sigma(t), 1e-12 * (1 + ve_sigma(kappa, t)))
      end
      local sig = col(ve:sigma(tensor.new(ts)))
      local g = col(ve:g(tensor.new(ts)))
      for i, t in ipairs(ts) do -- float32 evaluation on the device: a few ulp
        assert.near(ve_sigma(kappa, t), sig[i], 4e-7 * (ve_sigma(kappa, t) + 1e-30) + 1e-12)
        assert.near(kappa ^ t, g[i], 4e-7 * kappa ^ t)
      end
    end
  end)

  it('ve(1) is Brownian motion: sigma(t) = sqrt(t), also just next to kappa = 1', function()
    for _, kappa in ipairs{ 1, 1 + 1e-9, 1 - 1e-9 } do
      local ve = diffuse.ve(kappa)
      for _, t in ipairs{ 0.001, 0.25, 1 } do
        assert.near(math.sqrt(t), ve:sigma(t), 1e-6 * math.sqrt(t))
        assert.near(math.sqrt(t), ve:sigma(tensor.new{ t }):item(), 1e-6 * math.sqrt(t))
      end
    end
  end)

  it('power: g = kappa t^alpha and sigma = kappa sqrt(t^(2a+1) / (2a+1))', function()
    for _, p in ipairs{ { 1, 0 }, { 2, 1 }, { 0.5, 2.5 }, { 3, -0.25 } } do
      local kappa, a = p[1], p[2]
      local D = diffuse.power(kappa, a)
      assert.equal('power', D.kind)
      for _, t in ipairs{ 0.01, 0.5, 1, 1.7 } do
        assert.near(kappa * t ^ a, D:g(t), 1e-12 * kappa * t ^ a)
        local s = kappa * math.sqrt(t ^ (2 * a + 1) / (2 * a + 1))
        assert.near(s, D:sigma(t), 1e-12 * s)
        assert.near(s, D:sigma(tensor.new{ t }):item(), 1e-6 * s)
      end
    end
  end)

  it('forward noising: the sample std matches sigma(t), for a number t and per-row t', function()
    local ve = diffuse.ve(1.1)
    local n = 20000
    diffuse.seed(11)
    for _, t in ipairs{ 0.01, 0.1, 0.5, 1 } do
      local x = ve:diffuse(tensor.zeros(n, 1), t)
      local s = ve:sigma(t)
      local se = s / math.sqrt(2 * (n - 1)) -- standard error of a sample std
      assert.is_true(math.abs(x:std() - s) < K * se, ('t=%g std %g vs %g'):format(t, x:std(), s))
      assert.is_true(math.abs(x:mean()) < K * s / math.sqrt(n))
    end
    -- per row: half the rows at t = 0.05, half at t = 0.8, around x0 = 3
    local t = tensor.cat({ tensor.full({ n }, 0.05), tensor.full({ n }, 0.8) })
    local x = ve:diffuse(tensor.full({ 2 * n, 1 }, 3), t)
    local parts = x:reshape(2, n)
    for i, ti in ipairs{ 0.05, 0.8 } do
      local row = parts[i]
      local s = ve:sigma(ti)
      assert.is_true(math.abs(row:std() - s) < K * s / math.sqrt(2 * (n - 1)))
      assert.is_true(math.abs(row:mean() - 3) < K * s / math.sqrt(n))
    end
  end)

  it('prior: n draws of N(0, sigma(1)^2 I_d)', function()
    local ve = diffuse.ve(2)
    diffuse.seed(3)
    local x = ve:prior(50000, 2)
    assert.same({ 50000, 2 }, x:shape())
    local s = ve:sigma(1)
    local std = x:std(1):totable()
    for c = 1, 2 do assert.is_true(math.abs(std[c] - s) < K * s / math.sqrt(2 * 49999)) end
  end)

  it('rejects invalid parameters and times', function()
    local ve = diffuse.ve(1.1)
    assert.has_error(function() diffuse.ve(0) end, 'diffuse.ve: kappa must be a positive finite number (got 0)')
    assert.has_error(function() diffuse.ve(0 / 0) end)
    assert.has_error(function() diffuse.ve(-1) end)
    -- |ln kappa| <= 40: both ends accepted, past them an error naming the range
    assert.are.equal('ve', diffuse.ve(math.exp(40) * 0.999).kind)
    assert.are.equal('ve', diffuse.ve(math.exp(-40) * 1.001).kind)
    for _, k in ipairs { 1e20, 1e-20 } do
      assert.has_error(function() diffuse.ve(k) end, ('diffuse.ve: kappa = %g is out of range [e^-40, e^40]: '
        .. 'kappa^2 must be a normal float32'):format(k))
    end
    assert.has_error(function() diffuse.ve('a') end, 'diffuse.ve: kappa must be a number (got string)')
    assert.has_error(function() diffuse.power(1, -0.5) end)
    assert.has_error(function() diffuse.power(1, 0 / 0) end)
    assert.error_matches(function() ve:sigma(-1) end, 'diffuse.diffuser.sigma: t must be finite and non%-negative')
    assert.error_matches(function() ve:sigma(0 / 0) end, 't must be finite and non%-negative')
    assert.error_matches(function() ve:g(tensor.new{ 0.5, -0.1 }) end, 'times must be finite and non%-negative')
    assert.error_matches(function() ve:g(tensor.new{ -1, 0 / 0 }) end,
      'diffuse.diffuser.g: times must be finite and non%-negative %(found NaN%)')
    assert.error_matches(function() ve:diffuse(tensor.zeros(4, 1), tensor.zeros(3)) end,
      'diffuse.diffuser.diffuse: t must be a number or hold one time per row %(4%)')
    assert.error_matches(function() ve:diffuse(tensor.zeros(4, 1), tensor.new{ 0, 0, 1 / 0, 0 }) end, 'times must be finite')
    assert.error_matches(function() ve:prior(-1) end, 'diffuse.diffuser.prior: n must be >= 0')
    assert.error_matches(function() ve.g(5, 1) end, 'self must be a diffuser')
  end)
end)

describe('the heat kernel', function()
  it('density, log_density and score against closed forms in R^1 and R^3', function()
    local pts = { { 0, 0, 0 }, { 1, -2, 0.5 }, { 3, 1, -1 } }
    for _, d in ipairs{ 1, 3 } do
      local rows = {}
      for i, p in ipairs(pts) do rows[i] = { table.unpack(p, 1, d) } end
      local x = tensor.new(rows)
      for _, w in ipairs{ 0.3, 1, 2.5 } do
        local logp = col(diffuse.heat.log_density(x, w))
        local p = col(diffuse.heat.density(x, w))
        local s = diffuse.heat.score(x, w):totable()
        for i, r in ipairs(rows) do
          local r2 = 0
          for c = 1, d do r2 = r2 + r[c] ^ 2 end
          local want = -r2 / (2 * w * w) - d / 2 * math.log(2 * math.pi * w * w)
          assert.near(want, logp[i], 2e-6 * (1 + math.abs(want)))
          -- float32 log-density to 2e-6 (1 + |log p|): the density to the same relative error
          assert.near(math.exp(want), p[i], 2.1e-6 * (1 + math.abs(want)) * math.exp(want) + 1e-37)
          for c = 1, d do assert.near(-r[c] / (w * w), s[i][c], 1e-6 * (1 + math.abs(r[c] / (w * w)))) end
        end
      end
    end
  end)

  it('widths per row, and the density integrates to 1', function()
    local x = tensor.new{ { 0.5 }, { 0.5 } }
    local p = col(diffuse.heat.density(x, tensor.new{ 1, 2 }))
    assert.near(math.exp(-0.125) / math.sqrt(2 * math.pi), p[1], 1e-6)
    assert.near(math.exp(-0.5 * 0.0625) / (2 * math.sqrt(2 * math.pi)), p[2], 1e-6)
    local grid = tensor.linspace(-12, 12, 4801)
    local dens = diffuse.heat.density(grid, 1.7)
    assert.near(1, dens:sum() * (24 / 4800), 1e-5)
  end)

  it('cdf against erf, and its derivative is the density', function()
    local xs = { -4, -1.5, -0.2, 0, 0.7, 2, 5 }
    for _, w in ipairs{ 0.5, 1, 3 } do
      local F = col(diffuse.heat.cdf(tensor.new(xs), w))
      for i, v in ipairs(xs) do
        local want = 0.5 * (1 + erf(v / (w * math.sqrt(2))))
        assert.near(want, F[i], 1e-6 * want + 1e-7)
      end
    end
    assert.error_matches(function() diffuse.heat.cdf(tensor.zeros(3, 2), 1) end, 'the CDF is for 1%-d data')
  end)

  it('sample: per-coordinate std is the width (number or per-row widths)', function()
    diffuse.seed(5)
    local n = 40000
    local x = diffuse.heat.sample(n, 0.7, 3)
    assert.same({ n, 3 }, x:shape())
    local std = x:std(1):totable()
    for c = 1, 3 do assert.is_true(math.abs(std[c] - 0.7) < K * 0.7 / math.sqrt(2 * (n - 1))) end
    local w = tensor.cat({ tensor.full({ n }, 0.1), tensor.full({ n }, 2) })
    local y = diffuse.heat.sample(2 * n, w):reshape(2, n)
    assert.is_true(math.abs(y[1]:std() - 0.1) < K * 0.1 / math.sqrt(2 * (n - 1)))
    assert.is_true(math.abs(y[2]:std() - 2) < K * 2 / math.sqrt(2 * (n - 1)))
  end)

  it('rejects bad widths and shapes', function()
    assert.error_matches(function() diffuse.heat.density(tensor.zeros(3, 1), 0) end,
      'diffuse.heat.density: width must be positive and finite')
    assert.error_matches(function() diffuse.heat.density(tensor.zeros(3, 1), -1) end, 'width must be positive')
    assert.error_matches(function() diffuse.heat.score(tensor.zeros(3, 1), 0 / 0) end, 'width must be positive')
    assert.error_matches(function() diffuse.heat.density(tensor.zeros(3, 1), tensor.ones(2)) end,
      'one width per row %(3%)')
    assert.error_matches(function() diffuse.heat.density(tensor.zeros(3, 1), tensor.new{ 1, 0, 1 }) end,
      'widths must be positive')
    assert.error_matches(function() diffuse.heat.density(tensor.zeros(2, 2, 2), 1) end, 'x must be %[B, d%]')
    -- widths whose float32 square would be 0 or inf give NaN densities: refused, number or tensor
    for _, w in ipairs { 1e-300, 1e-20, 1e20, 1e300 } do
      for _, f in ipairs { 'density', 'log_density', 'score', 'cdf' } do
        assert.error_matches(function() diffuse.heat[f](tensor.zeros(2, 1), w) end,
          'width must be positive and finite, from about 1%.1e%-19 to 1%.8e19')
        assert.error_matches(function() diffuse.heat[f](tensor.zeros(2, 1), tensor.new { 1, w }) end,
          'widths must be positive and finite, from about')
      end
      assert.error_matches(function() diffuse.heat.sample(2, w) end, 'width must be positive and finite, from')
    end
    for _, w in ipairs { 1.2e-19, 1.8e19 } do -- just inside: finite values
      local y = diffuse.heat.log_density(tensor.new { { 0 }, { w } }, w):totable()
      assert.is_true(y[1] == y[1] and math.abs(y[1]) < math.huge and y[2] == y[2])
    end
    assert.error_matches(function() diffuse.heat.sample(-1, 1) end, 'diffuse.heat.sample: n must be >= 0')
    assert.error_matches(function() diffuse.heat.density('x', 1) end, 'x must be a tensor')
  end)
end)

describe('score sources', function()
  local ve = diffuse.ve(1.1)

  it('exact: -x / sigma(t)^2, for one t and per-row t; singular at t = 0', function()
    local score = diffuse.score.exact(ve)
    assert.equal('exact', score.kind)
    local x = tensor.new{ { 1 }, { -2 }, { 0.5 } }
    local s = col(score(x, 0.3))
    local s2 = ve:sigma(0.3) ^ 2
    for i, v in ipairs{ 1, -2, 0.5 } do assert.near(-v / s2, s[i], 1e-6 * math.abs(v / s2)) end
    local st = col(score(x, tensor.new{ 0.1, 0.5, 1 }))
    for i, p in ipairs{ { 1, 0.1 }, { -2, 0.5 }, { 0.5, 1 } } do
      local want = -p[1] / ve:sigma(p[2]) ^ 2
      assert.near(want, st[i], 2e-6 * math.abs(want))
    end
    assert.error_matches(function() score(x, 0) end, 'singular at t = 0')
    assert.error_matches(function() score(x, -1) end, 'diffuse.score: t must be finite and non%-negative')
    assert.error_matches(function() score(x, tensor.ones(2)) end, 'one time per row %(3%)')
  end)

  -- the analytic log-density of a mixture carried to time t, in double
  local function mix_logpdf(spec, x, t)
    local s2 = ve:sigma(t) ^ 2
    local total, d = 0, #x
    for _, w in ipairs(spec.weights) do total = total + w end
    local acc = 0
    for j, w in ipairs(spec.weights) do
      local v = spec.stds[j] ^ 2 + s2
      local mu = type(spec.means[j]) == 'table' and spec.means[j] or { spec.means[j] }
      local r2 = 0
      for c = 1, d do r2 = r2 + (x[c] - mu[c]) ^ 2 end
      acc = acc + w / total * math.exp(-r2 / (2 * v)) / (2 * math.pi * v) ^ (d / 2)
    end
    return math.log(acc)
  end

  it('mixture: score against finite differences of the analytic log-density (R^1 and R^2)', function()
    local specs = {
      { weights = { 0.3, 0.7 }, means = { -1, 1.5 }, stds = { 0.2, 0.5 } },
      { weights = { 1, 2, 1 }, means = { { 0, 0 }, { 2, -1 }, { -1, 3 } }, stds = { 0.3, 0.6, 0.2 } },
    }
    local h = 1e-4
    for _, spec in ipairs(specs) do
      local mix = diffuse.score.mixture(ve, spec)
      local d = type(spec.means[1]) == 'table' and 2 or 1
      assert.equal(d, mix.dim)
      local pts = d == 1 and { { -1.2 }, { 0 }, { 0.4 }, { 2.5 } } or { { 0, 0 }, { 1, 1 }, { -0.5, 2.5 }, { 3, -2 } }
      for _, t in ipairs{ 0, 0.05, 0.3, 1 } do
        local s = mix(tensor.new(pts), t):totable()
        local lp = col(mix:log_density(tensor.new(pts), t))
        for i, p in ipairs(pts) do
          assert.near(mix_logpdf(spec, p, t), lp[i], 2e-6 * (1 + math.abs(lp[i])))
          for c = 1, d do
            local a, b = { table.unpack(p) }, { table.unpack(p) }
            a[c], b[c] = a[c] + h, b[c] - h
            local fd = (mix_logpdf(spec, a, t) - mix_logpdf(spec, b, t)) / (2 * h)
            assert.near(fd, s[i][c], 1e-4 * (1 + math.abs(fd)), ('t=%g point %d coord %d'):format(t, i, c))
          end
        end
      end
    end
  end)

  it('mixture: far from every mode the responsibilities stay finite (log-sum-exp)', function()
    local mix = diffuse.score.mixture(ve, { weights = { 1, 1 }, means = { -1, 1 }, stds = { 0.01, 0.01 } })
    local s = col(mix(tensor.new{ { 40 }, { -40 }, { 0 } }, 0))
    assert.near(-(40 - 1) / 1e-4, s[1], 1)
    assert.near((40 - 1) / 1e-4, s[2], 1)
    assert.near(0, s[3], 1e-3)
  end)

  it('mixture: sample draws the weights, means and stds', function()
    local mix = diffuse.score.mixture(ve, { weights = { 1, 3 }, means = { -2, 2 }, stds = { 0.3, 0.5 } })
    diffuse.seed(9)
    local n = 40000
    local x = col(mix:sample(n))
    local left, sl, sl2 = 0, 0, 0
    for _, v in ipairs(x) do
      if v < 0 then left = left + 1; sl = sl + v; sl2 = sl2 + v * v end
    end
    local p = left / n
    assert.is_true(math.abs(p - 0.25) < K * math.sqrt(0.25 * 0.75 / n))
    local m = sl / left
    assert.is_true(math.abs(m + 2) < K * 0.3 / math.sqrt(left))
    local sd = math.sqrt(sl2 / left - m * m)
    assert.is_true(math.abs(sd - 0.3) < K * 0.3 / math.sqrt(2 * left))
    -- at time t each variance grows by sigma(t)^2: the mean and variance of all draws
    local y = mix:sample(n, 1)
    local s2 = ve:sigma(1) ^ 2
    local mean = 0.25 * -2 + 0.75 * 2
    local var = 0.25 * (0.09 + s2) + 0.75 * (0.25 + s2) + 4 - mean ^ 2
    assert.is_true(math.abs(y:mean() - mean) < K * math.sqrt(var / n))
    -- the sample variance of a bimodal law: its standard error needs the fourth moment; a
    -- generous bound is var * sqrt(8 / n)
    assert.is_true(math.abs(y:var() - var) < K * var * math.sqrt(8 / n))
  end)

  it('rejects bad mixtures', function()
    assert.error_matches(function() diffuse.score.mixture(ve, { weights = { 1 }, means = { 0, 1 }, stds = { 1 } }) end,
      'same length')
    assert.error_matches(function() diffuse.score.mixture(ve, { weights = { -1 }, means = { 0 }, stds = { 1 } }) end,
      'weight 1 must be positive')
    assert.error_matches(function() diffuse.score.mixture(ve, { weights = { 1 }, means = { 0 }, stds = { 0 } }) end,
      'std 1 must be positive')
    assert.error_matches(function() diffuse.score.mixture(ve, { weights = { 1 }, means = { 0 }, stds = { 1 }, foo = 1 }) end,
      "unknown option 'foo'")
    assert.error_matches(function() diffuse.score.mixture(ve, { weights = { 1, 1 }, means = { { 0, 1 }, { 1 } }, stds = { 1, 1 } }) end,
      'mean 2 must be a list of d numbers')
    local mix = diffuse.score.mixture(ve, { weights = { 1 }, means = { { 0, 1 } }, stds = { 1 } })
    assert.error_matches(function() mix(tensor.zeros(3, 1), 0.5) end, 'x has 1 columns but the mixture lives in R%^2')
    assert.error_matches(function() diffuse.score.exact(5) end, 'diffuse.score.exact: diffuser must be a diffuser')
    -- every coordinate of every mean, and values that leave float32 on the way in
    assert.error_matches(function() diffuse.score.mixture(ve, { weights = { 1 }, means = { { 0, 0 / 0 } }, stds = { 1 } }) end,
      'mean 1 must be finite in float32 %(coordinate 2%)')
    assert.error_matches(function() diffuse.score.mixture(ve, { weights = { 1 }, means = { 1e39 }, stds = { 1 } }) end,
      'mean 1 must be finite in float32')
    for _, sd in ipairs { 1e20, 1e-30 } do
      assert.error_matches(function() diffuse.score.mixture(ve, { weights = { 1 }, means = { 0 }, stds = { sd } }) end,
        'std 1 = .* is out of range: its square must be a normal float32')
    end
    -- weights are only relative: huge ones are fine (no sum overflows)
    local ref = diffuse.score.mixture(ve, { weights = { 1, 3 }, means = { -1, 1 }, stds = { 0.5, 0.5 } })
    local x = tensor.new { { -0.5 }, { 0.25 }, { 2 } }
    for _, scale in ipairs { 1e300, 1e-300, 1e39 } do
      local m = diffuse.score.mixture(ve, { weights = { scale, 3 * scale }, means = { -1, 1 }, stds = { 0.5, 0.5 } })
      local a, b = m(x, 0.3):totable(), ref(x, 0.3):totable()
      for i = 1, 3 do assert.is_true(math.abs(a[i][1] - b[i][1]) <= 1e-6 * math.abs(b[i][1]), 'weights x ' .. scale) end
    end
  end)

  it('a score source finalised by hand (its __gc is reachable) refuses every use', function()
    for _, s in ipairs { diffuse.score.net(diffuse.nn.mlp { dim = 1 }, ve),
                         diffuse.score.mixture(ve, { weights = { 1 }, means = { 0 }, stds = { 1 } }),
                         diffuse.score.exact(ve) } do
      getmetatable(s).__gc(s)
      getmetatable(s).__gc(s) -- twice is fine
      assert.are.equal('diffuse.score (released)', tostring(s))
      assert.error_matches(function() s(tensor.ones(3, 1), 0.5) end, 'attempt to use a released score source')
      assert.error_matches(function() diffuse.sampler { diffuser = ve, steps = 2 }:run(tensor.ones(3, 1), s) end,
        'diffuse.sampler.run: attempt to use a released score source')
    end
  end)
end)

describe('samplers', function()
  local kappa = 1.1
  local ve = diffuse.ve(kappa)
  local exact = diffuse.score.exact(ve)

  -- F_k = prod_{j<k} (1 - 0.5 g_j^2 dt / sigma_j^2), t_j = 1 - j / N
  local function euler_factors(N)
    local F, out = 1, { [0] = 1 }
    for j = 0, N - 1 do
      local t = 1 - j / N
      F = F * (1 - 0.5 * ve:g(t) ^ 2 / N / ve:sigma(t) ^ 2)
      out[j + 1] = F
    end
    return out
  end

  it('exact-score Euler is the linear map x_k = F_k x_1 along the whole recorded path', function()
    local N = 200
    diffuse.seed(0)
    local x1 = ve:prior(4096)
    local s = diffuse.sampler{ diffuser = ve, steps = N, method = 'euler' }
    local rec = { 0, 1, 20, 50, 150, 199, 200 }
    local x0, path = s:run(x1, exact, { record = rec })
    assert.equal(N, s.nfe)
    local F = euler_factors(N)
    local a = col(x1)
    for _, k in ipairs(rec) do
      local p = col(path[k])
      for i = 1, #a, 37 do
        -- float32: each step rounds a few times, so k steps drift by at most ~4 k ulp
        assert.near(F[k] * a[i], p[i], (4 * k + 1) * 6e-8 * math.abs(F[k] * a[i]) + 1e-30)
      end
    end
    assert.same(col(path[N]), col(x0))
    -- the peer's number: F_200 = 0.0379518 for kappa = 1.1
    assert.near(0.0379518, F[N], 1e-7)
    assert.near(F[N], (x0 / x1):mean(), 1e-6)
  end)

  local function ode_error(method, N)
    local x1 = tensor.linspace(-2, 2, 101):reshape(101, 1)
    local s = diffuse.sampler{ diffuser = ve, steps = N, method = method }
    local _, path = s:run(x1, exact, { record = { N // 2 } })
    local want = x1 * (ve:sigma(0.5) / ve:sigma(1)) -- the exact flow: x_t = x_1 sigma(t) / sigma(1)
    return (path[N // 2] - want):abs():max()
  end

  it("Heun's order is 2 and Euler's is 1 (error at t = 0.5 as steps double)", function()
    for _, N in ipairs{ 10, 20, 40 } do
      local rh = ode_error('heun', N) / ode_error('heun', 2 * N)
      local re = ode_error('euler', N) / ode_error('euler', 2 * N)
      assert.is_true(rh > 3.5 and rh < 4.5, ('heun ratio %g at N=%d'):format(rh, N))
      assert.is_true(re > 1.8 and re < 2.2, ('euler ratio %g at N=%d'):format(re, N))
    end
  end)

  it('Heun counts 2 evaluations per step but one on the last (Euler) step', function()
    local s = diffuse.sampler{ diffuser = ve, steps = 17, method = 'heun' }
    local calls = 0
    s:run(tensor.ones(3, 1), function(x, t) calls = calls + 1; return exact(x, t) end)
    assert.equal(33, s.nfe)
    assert.equal(33, calls)
  end)

  it('reverse SDE with the exact score follows the exact variance recursion', function()
    local N, n = 100, 100000
    diffuse.seed(21)
    local x1 = ve:prior(n)
    local s = diffuse.sampler{ diffuser = ve, steps = N, method = 'euler_maruyama' }
    local x0, path = s:run(x1, exact, { record = { N // 2 } })
    -- x_{k+1} = (1 - g^2 dt / sigma^2) x_k + g sqrt(dt) z: v_{k+1} = a^2 v_k + g^2 dt
    local v = { [0] = x1:var() }
    for k = 0, N - 1 do
      local t = 1 - k / N
      local a = 1 - ve:g(t) ^ 2 / N / ve:sigma(t) ^ 2
      v[k + 1] = a * a * v[k] + ve:g(t) ^ 2 / N
    end
    for _, kv in ipairs{ { N // 2, path[N // 2] }, { N, x0 } } do
      local got, want = kv[2]:var(), v[kv[1]]
      assert.is_true(math.abs(got - want) < K * want * math.sqrt(2 / (n - 1)),
        ('step %d: var %g vs %g'):format(kv[1], got, want))
      assert.is_true(math.abs(kv[2]:mean()) < K * math.sqrt(want / n))
    end
  end)

  it('the same seed gives the same SDE run; another seed another', function()
    local x1 = tensor.linspace(-1, 1, 1001):reshape(1001, 1)
    local s = diffuse.sampler{ diffuser = ve, steps = 30, method = 'euler_maruyama' }
    diffuse.seed(4)
    local a = s:run(x1, exact)
    diffuse.seed(4)
    local b = s:run(x1, exact)
    diffuse.seed(5)
    local c = s:run(x1, exact)
    assert.equal(0, (a - b):abs():max())
    assert.is_true((a - c):abs():max() > 0.01)
  end)

  it('a Lua score function gives what the native score gives, for every method', function()
    local x1 = tensor.linspace(-2, 2, 257):reshape(257, 1)
    local fn = function(x, t) return -x / ve:sigma(t) ^ 2 end
    for _, m in ipairs{ 'euler', 'euler_maruyama', 'heun' } do
      local s = diffuse.sampler{ diffuser = ve, steps = 40, method = m }
      diffuse.seed(8)
      local a, pa = s:run(x1, exact, { record = { 10 } })
      diffuse.seed(8)
      local b, pb = s:run(x1, fn, { record = { 10 } })
      assert.is_true((a - b):abs():max() < 1e-5, m)
      assert.is_true((pa[10] - pb[10]):abs():max() < 1e-5, m)
    end
  end)

  -- #nosan: a full-size run (slow under valgrind); the fused mixture path runs small elsewhere
  it('the mixture score recovers a two-mode mixture from noise (reverse SDE) #nosan', function()
    local spec = { weights = { 0.3, 0.7 }, means = { -1.5, 1.5 }, stds = { 0.2, 0.3 } }
    local mix = diffuse.score.mixture(ve, spec)
    diffuse.seed(17)
    local n = 20000
    local data = mix:sample(n)
    local x1 = ve:diffuse(data, 1)
    local s = diffuse.sampler{ diffuser = ve, steps = 500, method = 'euler_maruyama' }
    local x0 = s:run(x1, mix)
    local v = col(x0)
    local nl, ml, mr, vl, vr = 0, 0, 0, 0, 0
    for _, y in ipairs(v) do
      if y < 0 then nl = nl + 1; ml = ml + y; vl = vl + y * y else mr = mr + y; vr = vr + y * y end
    end
    local nr = n - nl
    ml, mr = ml / nl, mr / nr
    local sl, sr = math.sqrt(vl / nl - ml * ml), math.sqrt(vr / nr - mr * mr)
    local mean = 0.3 * -1.5 + 0.7 * 1.5
    local var = 0.3 * (0.04 + 2.25) + 0.7 * (0.09 + 2.25) - mean * mean
    assert.is_true(math.abs(nl / n - 0.3) < K * math.sqrt(0.21 / n), 'mode weight ' .. nl / n)
    assert.is_true(math.abs(x0:mean() - mean) < K * math.sqrt(var / n), 'mean ' .. x0:mean())
    assert.is_true(math.abs(x0:std() - math.sqrt(var)) < K * math.sqrt(var / (2 * n)) + 0.01, 'std ' .. x0:std())
    -- each mode's own mean and width: Euler-Maruyama's bias at 500 steps stays below 0.02
    assert.is_true(math.abs(ml + 1.5) < K * 0.2 / math.sqrt(nl) + 0.02)
    assert.is_true(math.abs(mr - 1.5) < K * 0.3 / math.sqrt(nr) + 0.02)
    assert.is_true(math.abs(sl - 0.2) < 0.02 and math.abs(sr - 0.3) < 0.02, ('stds %g %g'):format(sl, sr))
  end)

  it('mixture scores run in R^2 as well (fused path, every method)', function()
    local mix = diffuse.score.mixture(ve, { weights = { 1, 1 }, means = { { -1, 0 }, { 1, 2 } }, stds = { 0.3, 0.3 } })
    diffuse.seed(2)
    local x1 = mix:sample(2000, 1) -- the mixture carried to t = 1 is the right start
    for _, m in ipairs{ 'euler', 'euler_maruyama', 'heun' } do
      local s = diffuse.sampler{ diffuser = ve, steps = 100, method = m }
      local x0 = s:run(x1, mix)
      local mean = x0:mean(1):totable()
      -- each coordinate has variance 1 + 0.09 around (0, 1): K standard errors of 2000 draws
      local se = math.sqrt(1.09 / 2000)
      assert.near(0, mean[1], K * se, m)
      assert.near(1, mean[2], K * se, m)
    end
  end)

  it('rejects bad samplers and runs', function()
    assert.error_matches(function() diffuse.sampler{ diffuser = ve, steps = 0 } end,
      'diffuse.sampler: steps must be between 1 and 1e8 %(got 0%)')
    assert.error_matches(function() diffuse.sampler{ diffuser = ve, steps = -3 } end, 'steps must be between')
    assert.error_matches(function() diffuse.sampler{ diffuser = ve, steps = 0 / 0 } end, 'steps must be an integer')
    assert.error_matches(function() diffuse.sampler{ diffuser = ve, method = 'rk3' } end, "unknown method 'rk3'")
    assert.error_matches(function() diffuse.sampler{ steps = 10 } end, 'diffuser is required')
    assert.error_matches(function() diffuse.sampler{ diffuser = ve, step = 10 } end, "unknown option 'step'")
    assert.error_matches(function() diffuse.sampler(5) end, 'diffuse.sampler: expected')
    local s = diffuse.sampler{ diffuser = ve, steps = 10 }
    assert.error_matches(function() s:run('x', exact) end, 'diffuse.sampler.run: x1 must be a tensor')
    assert.error_matches(function() s:run(tensor.ones(3, 1), 42) end, 'score must be a score source')
    assert.error_matches(function() s:run(tensor.ones(3, 1), exact, { record = { 11 } }) end,
      'record step 11 is outside 0..10')
    assert.error_matches(function() s:run(tensor.ones(3, 1), exact, { recrod = {} }) end, "unknown option 'recrod'")
    assert.error_matches(function() s:run(tensor.ones(3, 1), function() return 1 end) end,
      'the score function must return a tensor %(got number%)')
    assert.error_matches(function() s:run(tensor.ones(3, 1), function() return tensor.ones(2) end) end,
      'the score function returned 2 for x of 3x1')
    assert.error_matches(function() s:run(tensor.ones(3, 1), function() error('boom') end) end,
      'the score function failed: .*boom')
    assert.error_matches(function() s:run(tensor.ones(3, 1), function() error({}) end) end,
      'the score function failed: %(error object is a table value%)')
    -- a Lua score's result must have x's shape, not only its size; x is [B, d] or [B] for any score
    assert.error_matches(function() s:run(tensor.ones(4, 2), function() return tensor.ones(2, 4) end) end,
      'the score function returned 2x4 for x of 4x2')
    assert.error_matches(function() s:run(tensor.ones(2, 2, 2), function(x) return x end) end,
      'x must be %[B, d%] or %[B%], got 2x2x2')
    -- a grid whose sigma(1/N)^2 underflows float32 would give NaN scores: refused
    local q = diffuse.power(1, 50)
    assert.error_matches(function()
      diffuse.sampler{ diffuser = q, steps = 10 }:run(q:prior(3), diffuse.score.exact(q))
    end, 'sigma%(t%)%^2 = .* at t = 1/10 underflows float32')
    assert.error_matches(function() diffuse.power(1e-30, 1) end, 'kappa must be a number from about 1%.1e%-19')
    assert.are.equal('power', diffuse.power(1e-16, 0.5).kind) -- (its square is still normal)
    -- a Lua score may return [B, 1] for x of [B] (a net's output), not a transposed shape
    local n2 = diffuse.nn.mlp{ dim = 1 }
    assert.are.same({ 8 }, s:run(tensor.ones(8), function(x, t) return n2(x, t) end):shape())
    local mix = diffuse.score.mixture(ve, { weights = { 1 }, means = { { 0, 1 } }, stds = { 1 } })
    assert.error_matches(function() s:run(tensor.ones(3, 1), mix) end, 'mixture lives in R%^2')
    assert.error_matches(function() s:run(tensor.ones(2, 2, 2), exact) end, 'x must be %[B, d%] or %[B%]')
    assert.equal('diffuse.sampler{method = euler, steps = 10}', tostring(s))
  end)
end)
