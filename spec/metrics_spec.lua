-- spec/metrics_spec.lua: diffuse.metrics against closed forms. Exact cases by hand; statistical
-- cases with a fixed seed and bounds derived from the sample size: the W1 distance of n exact
-- samples to their own distribution is O(1/sqrt(n)) (about 0.72/sqrt(n) on average for N(0,1)),
-- so 3 s/sqrt(n) is a wide bound; the KS statistic of exact samples exceeds 1.63/sqrt(n) with
-- probability 1 %.
local diffuse = require 'diffuse'
local metrics = diffuse.metrics
local tensor = diffuse.tensor

local sqrt, abs, pi = math.sqrt, math.abs, math.pi

local function near(expected, got, tol, what)
  assert.is_true(abs(expected - got) <= tol,
    ('%s: expected %.12g, got %.12g (tolerance %.3g)'):format(what or 'value', expected, got, tol))
end

local function uniform_cdf(x) return math.max(0, math.min(1, x)) end

describe('diffuse.metrics: the normal distribution', function()
  it('matches published values of erf and erfc', function()
    near(0.5204998778130465, metrics.erf(0.5), 1e-15, 'erf(0.5)')
    near(0.8427007929497149, metrics.erf(1), 1e-15, 'erf(1)')
    near(-0.9953222650189527, metrics.erf(-2), 1e-15, 'erf(-2)')
    near(1, metrics.erfc(3) / 2.209049699858544e-05, 1e-13, 'erfc(3)')
    near(1, metrics.erfc(5) / 1.5374597944280349e-12, 1e-13, 'erfc(5)')
    near(1, metrics.erfc(10) / 2.088487583762545e-45, 1e-12, 'erfc(10)')
    near(1, metrics.erfc(2) / 0.004677734981047266, 1e-13, 'erfc(2)')
    near(metrics.erfc(2.5 - 1e-12), metrics.erfc(2.5 + 1e-12), 1e-14, 'erfc across the switch')
    near(0.975, metrics.normal_cdf(1.959963984540054), 1e-15, 'Phi(1.96)')
    near(1.959963984540054, metrics.normal_quantile(0.975), 1e-12, 'quantile')
  end)
end)

describe('diffuse.metrics.wasserstein1', function()
  it('stays finite for samples near the largest doubles', function()
    assert.are.equal(1e308, metrics.wasserstein1({ -1e308, 1e308 }, { 0 }))
    assert.are.equal(1.5e308, metrics.wasserstein1({ 1.5e308 }, { 0 }))
    assert.are.equal(math.huge, metrics.wasserstein1({ -1.5e308 }, { 1.5e308 })) -- 3e308, truly
  end)

  it('is exact on small samples', function()
    assert.are.equal(1, metrics.wasserstein1({ 0 }, { 1 }))
    assert.are.equal(0, metrics.wasserstein1({ 0, 1 }, { 0, 1 }))
    assert.are.equal(0, metrics.wasserstein1({ 1, 0 }, { 0, 1 }))            -- order does not matter
    near(0.5, metrics.wasserstein1({ 0 }, { 0, 1 }), 1e-15, 'unequal sizes')
    near(1, metrics.wasserstein1({ 0, 2 }, { 1 }), 1e-15, '{0,2} vs {1}')
    -- F steps by 1/3 at 1, 2, 3; G by 1/4 at 1..4: 1/12 + 1/6 + 1/4
    near(0.5, metrics.wasserstein1({ 1, 2, 3 }, { 1, 2, 3, 4 }), 1e-15, '{1,2,3} vs {1,2,3,4}')
    near(0.5, metrics.wasserstein1({ 1, 2, 3, 4 }, { 1, 2, 3 }), 1e-15, 'symmetric')
    near(2.5, metrics.wasserstein1({ 0, 1, 5 }, { 2.5, 3.5, 7.5 }), 1e-14, 'a shift is its size')
    near(1, metrics.wasserstein1({ 1, 1, 3, 3 }, { 2, 2 }), 1e-15, 'ties')   -- every point moves 1
  end)

  it('integrates against a CDF exactly enough', function()
    -- one sample at 1/2 against U(0, 1): 2 * ∫_0^1/2 x dx
    near(0.25, metrics.wasserstein1({ 0.5 }, uniform_cdf), 1e-10, '{0.5} vs U(0,1)')
    near(0.125, metrics.wasserstein1({ 0.25, 0.75 }, uniform_cdf), 1e-10, '{.25,.75} vs U(0,1)')
    -- a point mass at mu against N(0,1): E|Z - mu| = mu (2 Phi(mu) - 1) + 2 phi(mu)
    for _, mu in ipairs({ 0, 0.3, -1.7, 4 }) do
      local exact = mu * (2 * metrics.normal_cdf(mu) - 1) + 2 * metrics.normal_pdf(mu)
      near(exact, metrics.wasserstein1({ mu }, metrics.normal_cdf), 1e-9, 'E|Z - ' .. mu .. '|')
      near(exact, metrics.wasserstein1({ mu }, { cdf = metrics.normal_cdf, quantile = metrics.normal_quantile }), 1e-9,
           'with the quantile')
    end
    -- two points against N(0,1): the crossing inside is found without a quantile
    local a, b = -0.5, 0.8
    local function I(lo, hi)   -- ∫_lo^hi Phi, from d/dx [x Phi + phi] = Phi
      return (hi * metrics.normal_cdf(hi) + metrics.normal_pdf(hi)) - (lo * metrics.normal_cdf(lo) + metrics.normal_pdf(lo))
    end
    local q = metrics.normal_quantile(0.5)
    local exact = I(-40, a) + (0.5 * (q - a) - I(a, q)) + (I(q, b) - 0.5 * (b - q))
                + ((40 - b) - I(b, 40))
    near(exact, metrics.wasserstein1({ a, b }, metrics.normal_cdf), 1e-9, 'two points')
  end)

  it('gives |mu| between N(0,1) samples and the N(mu,1) CDF', function()
    diffuse.seed(1234)
    local n = 4096
    local x = tensor.randn(n, 1)
    local bound = 3 / sqrt(n)
    local w0 = metrics.wasserstein1(x, metrics.normal_cdf)
    assert.is_true(w0 > 0 and w0 < bound, ('W1 to its own CDF %.4g, bound %.4g'):format(w0, bound))
    for _, mu in ipairs({ 0.25, -1, 3 }) do
      -- |W1(F_n, N(mu,1)) - |mu|| <= W1(F_n, N(0,1)) by the triangle inequality
      local w = metrics.wasserstein1(x, metrics.normal(mu, 1).cdf)
      near(abs(mu), w, bound, 'W1 to N(' .. mu .. ', 1)')
      near(w, metrics.wasserstein1(x, { cdf = metrics.normal(mu, 1).cdf, quantile = metrics.normal(mu, 1).quantile }),
           1e-9, 'the quantile path agrees')
    end
  end)

  it('gives |s1 - s2| sqrt(2/pi) between N(0,s1) and N(0,s2)', function()
    diffuse.seed(1234)
    local n, m = 4096, 3000
    local s1, s2 = 1, 2
    local x, y = tensor.randn(n) * s1, tensor.randn(m, 1) * s2
    local exact = abs(s1 - s2) * sqrt(2 / pi)
    near(exact, metrics.wasserstein1(x, metrics.normal(0, s2).cdf), 3 * s1 / sqrt(n), 'samples vs CDF')
    near(exact, metrics.wasserstein1(x, y), 3 * s1 / sqrt(n) + 3 * s2 / sqrt(m), 'two samples')
    near(metrics.wasserstein1(x, y), metrics.wasserstein1(y, x), 1e-12, 'symmetric')
  end)

  it('accepts 1-D and [N,1] tensors and arrays alike', function()
    local t1 = tensor.new({ 0.5, -1, 2, 0 })
    local t2 = tensor.new({ { 0.5 }, { -1 }, { 2 }, { 0 } })
    local arr = { 0.5, -1, 2, 0 }
    local w = metrics.wasserstein1(arr, { 1, 2 })
    assert.are.equal(w, metrics.wasserstein1(t1, { 1, 2 }))
    assert.are.equal(w, metrics.wasserstein1(t2, tensor.new({ 1, 2 })))
    local a = { 3, 1, 2 }
    metrics.wasserstein1(a, { 0 })
    assert.are.same({ 3, 1, 2 }, a)                                      -- input not sorted in place
  end)
end)

describe('diffuse.metrics.ks', function()
  it('is exact on small cases', function()
    local d = metrics.ks({ 0.1, 0.5, 0.9 }, uniform_cdf)
    near(7 / 30, d, 1e-15, 'one sample')
    local p
    d, p = metrics.ks({ 1, 2, 3 }, { 3, 2, 1 })
    assert.are.equal(0, d)
    assert.are.equal(1, p)
    d = metrics.ks({ 1, 2 }, { 3, 4 })
    assert.are.equal(1, d)
    d = metrics.ks({ 1, 1, 2 }, { 1, 2, 2 })          -- ties: compare after each value
    near(1 / 3, d, 1e-15, 'ties')
  end)

  it('has the Kolmogorov distribution for p-values', function()
    near(0.26999967167735456, metrics.kolmogorov_sf(1), 1e-12, 'P(K > 1)')
    near(0.9639452436648751, metrics.kolmogorov_sf(0.5), 1e-12, 'P(K > 0.5)')
    near(0.0494, metrics.kolmogorov_sf(1.36), 5e-4, 'the 5 % point')
    near(0.0098, metrics.kolmogorov_sf(1.63), 5e-4, 'the 1 % point')
    near(metrics.kolmogorov_sf(1.18 - 1e-13), metrics.kolmogorov_sf(1.18 + 1e-13), 1e-12, 'continuous')
    assert.are.equal(1, metrics.kolmogorov_sf(0))
    assert.is_true(metrics.kolmogorov_sf(5) < 1e-20)
  end)

  it('accepts exact samples and rejects shifted ones', function()
    diffuse.seed(1234)
    local n = 4096
    local x = tensor.randn(n, 1)
    local d, p = metrics.ks(x, metrics.normal_cdf)
    assert.is_true(d < 1.63 / sqrt(n), ('D = %.4g'):format(d))
    assert.is_true(p > 0.01, ('p = %.3g'):format(p))
    -- shifted by 0.2: D -> Phi(0.1) - Phi(-0.1) = 0.0797
    d, p = metrics.ks(x, metrics.normal(0.2, 1).cdf)
    near(metrics.normal_cdf(0.1) - metrics.normal_cdf(-0.1), d, 1.63 / sqrt(n), 'shifted D')
    assert.is_true(p < 1e-10, ('p = %.3g'):format(p))
  end)

  it('compares two samples', function()
    diffuse.seed(1234)
    local n, m = 4096, 2000
    local x, y = tensor.randn(n, 1), tensor.randn(m, 1)
    local d, p = metrics.ks(x, y)
    assert.is_true(d < 1.63 * sqrt((n + m) / (n * m)), ('D = %.4g'):format(d))
    assert.is_true(p > 0.01, ('p = %.3g'):format(p))
    local d2, p2 = metrics.ks(x, y + 0.3)
    assert.is_true(d2 > 0.08, ('D = %.4g'):format(d2))
    assert.is_true(p2 < 1e-6, ('p = %.3g'):format(p2))
    assert.are.equal(d2, (metrics.ks(y + 0.3, x)))
  end)
end)

describe('diffuse.metrics.moments', function()
  it('matches closed forms', function()
    local m = metrics.moments({ 1, 2, 3, 4, 10 })
    assert.are.equal(5, m.n)
    near(4, m.mean, 1e-15, 'mean')
    near(12.5, m.var, 1e-13, 'var')                 -- 50 / 4
    near(sqrt(12.5), m.std, 1e-13, 'std')
    near(36 / 10 ^ 1.5, m.skewness, 1e-13, 'skewness')   -- m3 = 36, m2 = 10
    near(278.8 / 100 - 3, m.kurtosis, 1e-13, 'kurtosis') -- m4 = 278.8
    assert.are.equal(1, m.min)
    assert.are.equal(10, m.max)
    m = metrics.moments({ 2, 4, 4, 4, 5, 5, 7, 9 })
    near(5, m.mean, 1e-15, 'mean')
    near(32 / 7, m.var, 1e-14, 'var')
    near(0, metrics.moments({ -1, 0, 1 }).skewness, 1e-15, 'symmetric')
    near(-2, metrics.moments({ -1, 1, -1, 1 }).kurtosis, 1e-14, 'two points')
  end)

  it('is accurate far from the origin, and says NaN when undefined', function()
    local m = metrics.moments({ 1e9 + 1, 1e9 + 2, 1e9 + 3 })
    near(1, m.var, 1e-9, 'var with a large offset')
    local c = metrics.moments({ 3, 3, 3 })
    assert.are.equal(0, c.var)
    assert.is_true(c.skewness ~= c.skewness and c.kurtosis ~= c.kurtosis)
    local one = metrics.moments({ 7 })
    assert.are.equal(7, one.mean)
    assert.is_true(one.var ~= one.var)
    -- values whose sums, squares or fourth powers leave the doubles
    local big = metrics.moments({ 1e308, 1e308 })
    assert.are.equal(1e308, big.mean)
    assert.are.equal(0, big.var)
    local wide = metrics.moments({ -1e308, 1e308 })
    assert.are.equal(0, wide.mean)
    assert.are.equal(math.huge, wide.var) -- 2e616: the true value is past the doubles too
    local far = metrics.moments({ 1e80, -1e80, 2e80, -2e80 })
    near(0, far.skewness, 1e-12, 'skewness at 1e80')
    near(-1.64, far.kurtosis, 1e-12, 'kurtosis at 1e80') -- 17/6.25 - 3, scale-free
    local tiny = metrics.moments({ 1e-150, -1e-150, 2e-150, -2e-150 }) -- fourth powers 1e-600
    near(far.kurtosis, tiny.kurtosis, 1e-12, 'kurtosis at 1e-150')
    near(10 / 3, tiny.var * 1e300, 1e-12, 'var at 1e-150')
  end)

  it('takes tensors', function()
    diffuse.seed(1234)
    local x = tensor.randn(4096, 1) * 2 + 1
    local m = metrics.moments(x)
    assert.are.equal(4096, m.n)
    near(1, m.mean, 3 * 2 / sqrt(4096), 'mean')                  -- 3 standard errors
    near(4, m.var, 3 * 4 * sqrt(2 / 4095), 'var')
    near(0, m.skewness, 3 * sqrt(6 / 4096), 'skewness')
    near(0, m.kurtosis, 3 * sqrt(24 / 4096), 'kurtosis')
  end)
end)

describe('diffuse.metrics arguments', function()
  it('names the function and the problem', function()
    assert.has_error(function() metrics.ks('x', metrics.normal_cdf) end,
      'diffuse.metrics.ks: samples must be a tensor or an array of numbers (got string)')
    assert.has_error(function() metrics.wasserstein1({}, metrics.normal_cdf) end,
      'diffuse.metrics.wasserstein1: samples is empty')
    assert.has_error(function() metrics.wasserstein1({ 1 }, {}) end,
      'diffuse.metrics.wasserstein1: other is empty')
    assert.has_error(function() metrics.moments({ 1, 0 / 0 }) end,
      'diffuse.metrics.moments: x holds NaN (element 2)')
    assert.has_error(function() metrics.ks({ 1, math.huge }, metrics.normal_cdf) end,
      'diffuse.metrics.ks: samples holds an infinite value (element 2)')
    assert.has_error(function() metrics.ks({ 1, 'a' }, metrics.normal_cdf) end,
      'diffuse.metrics.ks: samples must be a tensor or an array of numbers (element 2 is a string)')
    assert.has_error(function() metrics.ks({ 1 }, 5) end)
    assert.has_error(function() metrics.ks(tensor.zeros(2, 3), metrics.normal_cdf) end)
    assert.has_error(function() metrics.wasserstein1({ 1 }, function() return nil end) end)
    assert.has_error(function() metrics.wasserstein1({ 1 }, function() return 0.5 end) end)  -- never reaches 0
    assert.has_error(function() metrics.ks({ 1 }, { cdf = 3 }) end)
    local gone = tensor.zeros(4)
    gone:free()
    assert.has_error(function() metrics.moments(gone) end,
      'diffuse.metrics.moments: x: attempt to use a released tensor')
    -- a CDF that leaves [0, 1] (inf included) is an error, not a hang or a D above 1
    for _, bad in ipairs { math.huge, -math.huge, 5, -0.5, 1.001 } do
      local F = function(x) return x > 1.5 and bad or 0.5 end
      for _, f in ipairs { 'wasserstein1', 'ks' } do
        local ok, err = pcall(metrics[f], { 0, 1, 2 }, F)
        assert.is_false(ok)
        assert.matches('^diffuse%.metrics%.' .. f .. ': the cdf returned .* %(expected a number in %[0, 1%]%)$', err)
      end
    end
    -- a hair past an end (double rounding) is taken as the end
    assert.are.equal(0, metrics.ks({ 0.25, 0.75 }, function(x) return x < 0.5 and 1e-13 or 1 + 1e-13 end) - 0.5)
  end)
end)

-- a CDF computed in float32 (diffuse.heat.cdf) once made wasserstein1 bisect 2^40 deep; it
-- must finish, and agree with the double-precision answer to float32 rounding
describe('diffuse.metrics.wasserstein1 with a float32 CDF', function()
  it('finishes and agrees with the double-precision CDF', function()
    diffuse.seed(1)
    local w = 0.5
    local x = diffuse.heat.sample(256, w)
    local f32 = function(v) return diffuse.heat.cdf(diffuse.tensor.new{ v }, w):item() end
    local start = diffuse.core.clock()
    local a = diffuse.metrics.wasserstein1(x, f32)
    assert.is_true(diffuse.core.clock() - start < 5)
    local b = diffuse.metrics.wasserstein1(x, diffuse.metrics.normal(0, w))
    assert.near(b, a, 1e-6)
  end)
end)

describe('diffuse.metrics.importance', function()
  it('the diagnostics of q = N(0, 1) against p~ = 5 N(0.3, 1): ESS exp(-mu^2), KL mu^2 / 2, log Z log 5', function()
    diffuse.seed(77)
    local n, mu = 20000, 0.3
    local x = tensor.randn(n):totable()
    local lq, lp = {}, {}
    for i = 1, n do
      lq[i] = -0.5 * x[i] ^ 2 - 0.5 * math.log(2 * math.pi)
      lp[i] = -0.5 * (x[i] - mu) ^ 2 - 0.5 * math.log(2 * math.pi) + math.log(5)
    end
    local r = metrics.importance(lp, lq, { log_z = math.log(5), bootstrap = 200 })
    assert.are.equal(n, r.n)
    near(math.exp(-mu * mu), r.ess, 5 * r.ess_se, 'ess')
    near(math.log(5), r.log_z, 5 * r.log_z_se, 'log Z')
    near(mu * mu / 2, r.kl, 5 * r.kl_se, 'kl')
    near((r.log_z - math.log(5)) / r.log_z_se, r.errors, 1e-12, 'errors')
    -- the same numbers as the pieces
    local lw = {}
    for i = 1, n do lw[i] = lp[i] - lq[i] end
    assert.are.equal(metrics.ess(lw), r.ess)
    assert.are.equal(select(2, metrics.bootstrap(function(l) return (metrics.ess(l)) end, lw, { n = 200 })), r.ess_se)
    local z, zse = metrics.log_z(lp, lq)
    assert.are.equal(z, r.log_z)
    local d = metrics.importance(lp, lq, { bootstrap = 0 })
    assert.are.equal(zse, d.log_z_se)
    assert.is_nil(d.ess_se)
    assert.is_nil(d.errors)
    assert.has_error(function() metrics.importance(lp, lq, { bootstrap = 1 }) end,
      'diffuse.metrics.importance: bootstrap must be 0 (none) or a whole number of resamples from 2 to 1e7 (got 1)')
    assert.has_error(function() metrics.importance(lp, lq, { exact = 1 }) end, "diffuse.metrics.importance: unknown option 'exact'")
    assert.has_error(function() metrics.importance(lp, { 1 }) end, 'diffuse.metrics.importance: logp has 20000 values, logq 1')
  end)
end)
