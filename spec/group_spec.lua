-- spec/group_spec.lua: U(1), SU(2), SU(3) on eigenangles against ../shared/groups.md's oracle
-- values (kernels, scores, Haar normalisations, the wrapped/character link, moments), finite
-- differences of scores and divergences, the heat equation itself, exact draws against their
-- moments and CDFs, the toy targets' log Z, and the exact-score toy: ESS at the Haar prior's
-- ceiling and log Z within two standard errors. (#nosan: the tens of thousands of draws and
-- ODE/SDE runs; the sanitizers run the same code in the specs of smaller size here.)
local diffuse = require 'diffuse'
local tensor, metrics = diffuse.tensor, diffuse.metrics

local U1, SU2, SU3 = diffuse.group.u1(), diffuse.group.su(2), diffuse.group.su(3)
local pi = math.pi

local function rows(t) return t:totable() end

-- the sample mean of Re Tr U = sum_j cos theta_j (times scale) over the rows of x, and its s.e.
local function trace_mean(x, scale)
  local n, m, m2 = #x, 0, 0
  for r = 1, n do
    local a = 0
    for j = 1, #x[r] do a = a + math.cos(x[r][j]) end
    a = a * (scale or 1)
    m, m2 = m + a / n, m2 + a * a / n
  end
  return m, math.sqrt((m2 - m * m) / n)
end
local function val(G, fn, th, w, o) return G[fn](G, tensor.new(th), w, o):totable() end

-- float32 results: relative tolerance a few ulp of the value, absolute for near-zero scores
local function near(a, b, rel, abs) return math.abs(a - b) <= (rel or 3e-7) * math.abs(b) + (abs or 0) end

-- the Kolmogorov-Smirnov statistic of SU(2) rows' |theta| (density 2 K h on [0, pi]) against the
-- heat kernel at width w (its CDF by the trapezoid rule on 4000 intervals), its p-value, and the
-- CDF's total mass
local function su2_ks(x, w)
  local n, th = #x, {}
  for r = 1, n do th[r] = math.abs(x[r][1]) end
  table.sort(th)
  local m, grid = 4000, {}
  for i = 0, m do local a = pi * i / m; grid[#grid + 1] = { a, -a } end
  local G = tensor.new(grid)
  local k, h = rows(SU2:heat_kernel(G, w)), rows(SU2:haar_log_density(G))
  local cdf, acc = { 0 }, 0
  for i = 2, m + 1 do
    acc = acc + (k[i] * math.exp(h[i]) + k[i - 1] * math.exp(h[i - 1])) * pi / m -- 2 x trapezoid / 2
    cdf[i] = acc
  end
  local d = 0
  for r = 1, n do
    local u = th[r] / pi * m
    local i = math.floor(u)
    local F = cdf[i + 1] + (cdf[math.min(i + 2, m + 1)] - cdf[i + 1]) * (u - i)
    d = math.max(d, math.abs(F - r / n), math.abs(F - (r - 1) / n))
  end
  return d, metrics.kolmogorov_sf(d * math.sqrt(n)), acc
end

-- rows x carried by a sampler (what: its name) against the heat kernel at width w: E[Tr U] =
-- N exp(-C_F w^2) within 4 standard errors, and for SU(2) (1-D) the whole marginal by KS
local function assert_kernel_marginal(what, G, x, w)
  local m, se = trace_mean(x)
  local want = G.n * math.exp(-(G.n ^ 2 - 1) / (2 * G.n) * w ^ 2)
  assert.is_true(math.abs(m - want) < 4 * se, ('%s %s w %g: %g vs %g (se %g)'):format(what, G.name, w, m, want, se))
  if G == SU2 then
    local d, p = su2_ks(x, w)
    assert.is_true(p > 1e-3, ('%s w %g: KS D %g, p %g'):format(what, w, d, p))
  end
end

describe('diffuse.group', function()
  it('names its groups and checks N', function()
    assert.equal('SU(2)', SU2.name)
    assert.equal(3, SU3.n)
    assert.equal(1, U1.n)
    assert.matches('SU%(3%)', tostring(SU3))
    assert.has_error(function() diffuse.group.su(4) end,
      'diffuse.group.su: SU(N) is supported for N = 2 and 3 (got N = 4)')
    assert.has_error(function() diffuse.group.su(1) end)
    assert.is_true(diffuse.group.su(2) == SU2)
  end)

  describe('the heat kernel', function()
    it('matches the oracle values of K and its score (SU(2), SU(3))', function()
      local cases2 = { { 0.5, 0.3, 21.38091975, -1.1496974 }, { 1, 1, 1.98996265, -0.82104631 },
                       { math.sqrt(3), 2, 0.8223252826, -0.21941052 }, { 0.2, 0.1, 349.1470162, -2.4833222 } }
      for _, c in ipairs(cases2) do
        local w, th, k, s = c[1], c[2], c[3], c[4]
        assert.is_true(near(val(SU2, 'heat_kernel', { { th, -th } }, w)[1], k, 1e-6), tostring(w))
        local sc = val(SU2, 'heat_score', { { th, -th } }, w)[1]
        assert.is_true(near(sc[1], s, 1e-6) and near(sc[2], -s, 1e-6), tostring(w))
      end
      local cases3 = { { 1, { 0.5, -0.2, -0.3 }, 12.82971253 }, { 0.5, { 0.3, 0.1, -0.4 }, 1098.630673 },
                       { math.sqrt(3), { 2, -0.5, -1.5 }, 1.057781028 } }
      for _, c in ipairs(cases3) do
        assert.is_true(near(val(SU3, 'heat_kernel', { c[2] }, c[1])[1], c[3], 1e-6), tostring(c[1]))
      end
      local s = val(SU3, 'heat_score', { { 0.4, -0.9, 0.5 } }, 1)[1]
      local want = { -0.296822, 0.667822, -0.371000 }
      for j = 1, 3 do assert.is_true(near(s[j], want[j], 0, 2e-6)) end
    end)

    it('U(1): the wrapped normal, relative to Haar (K = 2 pi p)', function()
      local cases = { { 0.5, 1, 0.107981933, -4 }, { 1, 2, 0.05403238527, -1.995183597 },
                      { 2, 3, 0.1166100169, -0.05162146545 } }
      for _, c in ipairs(cases) do
        assert.is_true(near(val(U1, 'heat_kernel', { { c[2] } }, c[1])[1], 2 * pi * c[3], 1e-6))
        assert.is_true(near(val(U1, 'heat_score', { { c[2] } }, c[1])[1][1], c[4], 1e-6))
      end
    end)

    it('scores are projected (rows sum to 0) and are the gradient of log K (finite differences)', function()
      for _, G in ipairs { SU2, SU3 } do
        diffuse.seed(3)
        for _, w in ipairs { 0.3, 1.0, 1.49, 1.51, 2.5 } do
          local th = G:heat_sample(16, w)
          local s = rows(G:heat_score(th, w))
          local x = rows(th)
          for r = 1, 16 do
            local sum = 0
            for j = 1, G.n do sum = sum + s[r][j] end
            assert.is_true(math.abs(sum) < 1e-6 * (1 + math.abs(s[r][1])))
            -- along e_1 - e_2 (stays on the group): d log K = s . (e1 - e2) h
            local h = 1e-3 * math.min(w, 1)
            local a, b = {}, {}
            for j = 1, G.n do a[j], b[j] = x[r][j], x[r][j] end
            a[1], a[2], b[1], b[2] = a[1] + h, a[2] - h, b[1] - h, b[2] + h
            local la = val(G, 'heat_log_kernel', { a }, w)[1]
            local lb = val(G, 'heat_log_kernel', { b }, w)[1]
            local fd, an = (la - lb) / (2 * h), s[r][1] - s[r][2]
            assert.is_true(math.abs(fd - an) < 2e-2 * (1 + math.abs(an)) + 3e-3 / w, ('%s w %g: %g vs %g'):format(G.name, w, fd, an))
          end
        end
      end
    end)

    it('the two forms agree where both converge, and the character form fails at small widths', function()
      local pts = { { 0.4, -0.4 }, { 2.5, -2.5 }, { 3.0, -3.0 } }
      for _, w in ipairs { 0.9, 1.2, 1.5, 2.0, 2.5 } do
        local a = val(SU2, 'heat_log_kernel', pts, w, { form = 'wrapped' })
        local b = val(SU2, 'heat_log_kernel', pts, w, { form = 'character' })
        for i = 1, #pts do assert.is_true(math.abs(a[i] - b[i]) < 2e-6, w) end
      end
      -- SU(2) at w = 0.3, th = 2.5: K ~ 1e-30 below terms of size 1 (groups.md: off by 1e11)
      local a = val(SU2, 'heat_log_kernel', { { 2.5, -2.5 } }, 0.3, { form = 'wrapped' })[1]
      local b = val(SU2, 'heat_log_kernel', { { 2.5, -2.5 } }, 0.3, { form = 'character' })[1]
      assert.is_true(a < -40)
      assert.is_true(b ~= b or math.abs(a - b) > 10)
      local p3 = { { 0.5, -0.2, -0.3 }, { 2, -0.5, -1.5 }, { 2.9, 0.2, -3.1 } }
      for _, w in ipairs { 1.0, 1.5, 2.2 } do
        local x = val(SU3, 'heat_log_kernel', p3, w, { form = 'wrapped' })
        local y = val(SU3, 'heat_log_kernel', p3, w, { form = 'character' })
        for i = 1, #p3 do assert.is_true(math.abs(x[i] - y[i]) < 2e-6, w) end
      end
    end)

    it('integrates to 1 against Haar and obeys the heat equation (with its divergence) #nosan', function()
      -- SU(2): the trapezoid rule on [-pi, pi) is exponentially accurate for periodic integrands
      for _, w in ipairs { 0.4, 1.0, 2.0 } do
        local m, th = 2000, {}
        for i = 0, m - 1 do local a = -pi + 2 * pi * i / m; th[#th + 1] = { a, -a } end
        local T = tensor.new(th)
        local k = rows(SU2:heat_kernel(T, w))
        local h = rows(SU2:haar_log_density(T))
        local sum = 0
        for i = 1, m do sum = sum + k[i] * math.exp(h[i]) * 2 * pi / m end
        assert.is_true(math.abs(sum - 1) < 2e-6, w)
      end
      -- SU(3) on a 2-D grid
      local m, th = 160, {}
      for i = 0, m - 1 do for j = 0, m - 1 do
        local a, b = -pi + 2 * pi * i / m, -pi + 2 * pi * j / m
        th[#th + 1] = { a, b, -a - b }
      end end
      local T = tensor.new(th)
      for _, w in ipairs { 0.7, 1.6 } do
        local k, h = rows(SU3:heat_kernel(T, w)), rows(SU3:haar_log_density(T))
        local sum = 0
        for i = 1, #th do sum = sum + k[i] * math.exp(h[i]) * (2 * pi / m) ^ 2 end
        assert.is_true(math.abs(sum - 1) < 1e-5, w)
      end
      -- d log K / d(w^2) = (1/2) (div s + |s|^2 + s . P grad log J^2): K, s and div together
      for _, G in ipairs { SU2, SU3 } do
        diffuse.seed(5)
        for _, w in ipairs { 0.5, 1.2, 1.8 } do
          local th = G:heat_sample(8, w)
          local x = rows(th)
          local s, dv = rows(G:heat_score(th, w)), rows(G:heat_divergence(th, w))
          local e = 1e-3
          local lp = rows(G:heat_log_kernel(th, math.sqrt(w * w + e)))
          local lm = rows(G:heat_log_kernel(th, math.sqrt(w * w - e)))
          for r = 1, 8 do
            local lhs = (lp[r] - lm[r]) / (2 * e)
            local gj, s2, sg = {}, 0, 0
            for i = 1, G.n do gj[i] = 0 end
            for i = 1, G.n do for j = i + 1, G.n do
              local c = 1 / math.tan((x[r][i] - x[r][j]) / 2) -- grad log J^2 = sum cot(d/2) (e_i - e_j)
              gj[i], gj[j] = gj[i] + c, gj[j] - c
            end end
            for i = 1, G.n do s2 = s2 + s[r][i] ^ 2; sg = sg + s[r][i] * gj[i] end
            local rhs = 0.5 * (dv[r] + s2 + sg)
            assert.is_true(math.abs(lhs - rhs) < 2e-3 * (1 + math.abs(rhs)), ('%s w %g: %g vs %g'):format(G.name, w, lhs, rhs))
          end
        end
      end
    end)
  end)

  describe('Haar', function()
    it('has the normalised eigenangle density (integrals of J^2: 4 pi, 24 pi^2)', function()
      local h = val(SU2, 'haar_log_density', { { 1, -1 } })[1]
      assert.is_true(near(math.exp(h), math.sin(1) ^ 2 / pi, 1e-6))
      local x = { 0.5, -0.2, -0.3 }
      local j2 = 1
      for i = 1, 3 do for j = i + 1, 3 do j2 = j2 * (2 * math.sin((x[i] - x[j]) / 2)) ^ 2 end end
      assert.is_true(near(math.exp(val(SU3, 'haar_log_density', { x })[1]), j2 / (24 * pi ^ 2), 1e-6))
      assert.is_true(near(math.exp(val(U1, 'haar_log_density', { { 0.3 } })[1]), 1 / (2 * pi), 1e-6))
    end)

    it('draws exactly: E[Tr U] = 0, E|Tr U|^2 = 1, canonical rows #nosan', function()
      for _, G in ipairs { SU2, SU3 } do
        diffuse.seed(11)
        local n = 20000
        local x = rows(G:haar(n))
        local re, im, m2 = 0, 0, 0
        for r = 1, n do
          local a, b, s = 0, 0, 0
          for j = 1, G.n do
            a, b, s = a + math.cos(x[r][j]), b + math.sin(x[r][j]), s + x[r][j]
            assert.is_true(math.abs(x[r][j]) < 3 * pi)
          end
          assert.is_true(math.abs(s) < 1e-5)
          re, im, m2 = re + a / n, im + b / n, m2 + (a * a + b * b) / n
        end
        -- sd of Re Tr U is 1/sqrt(2) (|Tr U|^2 has mean 1): 5 standard errors
        assert.is_true(math.abs(re) < 5 * math.sqrt(0.5 / n) and math.abs(im) < 5 * math.sqrt(0.5 / n))
        assert.is_true(math.abs(m2 - 1) < 5 * math.sqrt(2 / n), G.name .. ' ' .. m2)
      end
    end)
  end)

  describe('exact heat-kernel draws', function()
    it('E[Tr U] = N exp(-C_F w^2) at several widths (both proposals) #nosan', function()
      for _, G in ipairs { SU2, SU3 } do
        local cf = (G.n ^ 2 - 1) / (2 * G.n)
        for _, w in ipairs { 0.2, 0.6, 1.0, 1.5, 2.5 } do
          diffuse.seed(21)
          local n = 20000
          local x = rows(G:heat_sample(n, w))
          local m, se = trace_mean(x)
          local want = G.n * math.exp(-cf * w * w)
          assert.is_true(math.abs(m - want) < 5 * se + 1e-6, ('%s w %g: %g vs %g (se %g)'):format(G.name, w, m, want, se))
        end
      end
      -- the oracle's two values
      assert.is_true(near(2 * math.exp(-0.75), 0.9447331055, 1e-9))
      assert.is_true(near(3 * math.exp(-4 / 3 * 2.25), 0.1493612051, 1e-9))
    end)

    it('SU(2): the draws pass a Kolmogorov-Smirnov test against the kernel CDF #nosan', function()
      for _, w in ipairs { 0.5, 1.3, 2.0 } do
        diffuse.seed(31)
        local n = 4000
        local x = rows(SU2:heat_sample(n, w))
        local d, p, mass = su2_ks(x, w)
        assert.is_true(math.abs(mass - 1) < 1e-5)
        assert.is_true(p > 1e-3, ('w %g: D %g'):format(w, d))
      end
    end)

    it('U(1): wrap(w z)', function()
      diffuse.seed(41)
      local n, w = 20000, 1.3
      local x = rows(U1:heat_sample(n, w))
      local m = 0
      for r = 1, n do m = m + math.cos(x[r][1]) / n end
      assert.is_true(math.abs(m - math.exp(-w * w / 2)) < 5 * math.sqrt(0.5 / n))
    end)
  end)

  describe('canonical form', function()
    it('wraps into (-pi, pi], then makes the sum 0 (groups.md), and keeps the class', function()
      local x = rows(SU3:canonical(tensor.new { { 4, 1, -5 + 2 * pi }, { 2 * pi / 3, 2 * pi / 3, -4 * pi / 3 } }))
      for _, r in ipairs(x) do
        local s = 0
        for j = 1, 3 do s = s + r[j]; assert.is_true(math.abs(r[j]) < 3 * pi) end
        assert.is_true(math.abs(s) < 1e-6)
      end
      local a = val(SU3, 'heat_kernel', { { 4, 1, -5 } }, 0.8)[1]
      local b = val(SU3, 'heat_kernel', { { 4 - 2 * pi, 1, -5 + 2 * pi } }, 0.8)[1]
      assert.is_true(near(a, b, 1e-5))
    end)

    it('is finite and accurate on the walls (coincident angles, centre elements)', function()
      local pts = { { 0, 0 }, { pi, -pi } }
      for _, w in ipairs { 0.3, 1, 2 } do
        for _, v in ipairs(val(SU2, 'heat_log_kernel', pts, w)) do assert.is_true(v == v and v > -1e300) end
      end
      local p3 = { { 0, 0, 0 }, { 2 * pi / 3, 2 * pi / 3, -4 * pi / 3 }, { 0.5, 0.5, -1 } }
      for _, w in ipairs { 0.3, 1, 2 } do
        for _, v in ipairs(val(SU3, 'heat_log_kernel', p3, w)) do assert.is_true(v == v, w) end
        for _, s in ipairs(val(SU3, 'heat_score', p3, w)) do for j = 1, 3 do assert.is_true(s[j] == s[j]) end end
      end
      -- K at the identity is its maximum sum d^2 exp(-C w^2); SU(2) w = 1 via the link c(1) K_w(0)
      assert.is_true(near(val(SU2, 'heat_kernel', { { 0, 0 } }, 1)[1], 4.551751589, 1e-5))
      assert.is_true(near(val(SU3, 'heat_kernel', { { 0, 0, 0 } }, 1)[1], 14.79125356, 1e-5))
      -- at a centre element the two forms (forced) agree with the wall handling
      for _, w in ipairs { 1.6, 2.5 } do
        local a = val(SU3, 'heat_log_kernel', { { 2 * pi / 3 + 0.01, 2 * pi / 3 - 0.01, -4 * pi / 3 } }, w)[1]
        local b = val(SU3, 'heat_log_kernel', { { 2 * pi / 3 + 0.01, 2 * pi / 3 - 0.01, -4 * pi / 3 } }, w, { form = 'wrapped' })[1]
        local c = val(SU3, 'heat_log_kernel', { { 2 * pi / 3, 2 * pi / 3, -4 * pi / 3 } }, w)[1]
        assert.is_true(math.abs(a - b) < 1e-5 and math.abs(a - c) < 1e-3, w)
      end
    end)
  end)

  describe('errors', function()
    it('name the function and the argument', function()
      assert.has_error(function() SU2:heat_kernel(tensor.new { { 0.3, 0.2 } }, 1) end,
        'diffuse.group.heat_kernel: row 1 is off the group: SU(2) eigenangles sum to 0 (mod 2 pi), this row sums to 0.5')
      assert.has_error(function() SU2:heat_kernel(tensor.new { { 0.3, -0.3 } }, 0) end,
        'diffuse.group.heat_kernel: w must be a finite width > 0 (got 0)')
      assert.has_error(function() SU3:heat_score(tensor.new { { 0.3, -0.3 } }, 1) end,
        'diffuse.group.heat_score: points must be [B, 3] eigenangles, got 1x2')
      assert.has_error(function() SU2:heat_sample(10, -1) end)
      assert.has_error(function() SU2:heat_kernel(tensor.new { { 0.3, -0.3 } }, 1, { form = 'x' }) end,
        "diffuse.group.heat_kernel: form must be 'auto', 'wrapped' or 'character' (got 'x')")
      assert.has_error(function() diffuse.group.toy_action { group = SU2, beta = 1, coeffs = {} } end,
        'diffuse.group.toy_action: coeffs must hold at least one coefficient (got none)')
      assert.has_error(function() diffuse.group.toy_action { group = 3, beta = 1, coeffs = { 1 } } end)
      assert.has_error(function() diffuse.sampler { diffuser = diffuse.power(3, 1), steps = 10, method = 'pc', group = SU2 } end,
        "diffuse.sampler: method 'pc' adds Euclidean noise; on a group use a deterministic method or 'euler_maruyama' (the reverse SDE with the group's drift)")
      assert.has_error(function() diffuse.score.class_function(SU3, diffuse.power(3, 1),
        diffuse.group.toy_action { group = SU2, beta = 1, coeffs = { 1 } }) end,
        'diffuse.score.class_function: the target is on SU(2), the group is SU(3)')
      local hs = diffuse.score.heat(SU2, diffuse.power(3, 1))
      assert.has_error(function() hs(tensor.new { { 0.3, -0.3 } }, 0) end)
    end)
  end)
end)

describe('toy targets and class-function scores', function()
  local c = { 0.17, -0.65, 1.22 }
  it('log Z by quadrature matches the oracle (SU(2) beta 1, SU(3) beta 9), von Mises on U(1)', function()
    assert.is_true(math.abs(diffuse.group.toy_action { group = SU2, beta = 1, coeffs = c }:log_z() - 0.666937) < 2e-6)
    assert.is_true(math.abs(diffuse.group.toy_action { group = SU3, beta = 9, coeffs = c }:log_z() - 8.762446) < 2e-6)
    -- von Mises kappa 2: Z = I_0(2) = 2.2795853023
    local vm = diffuse.group.toy_action { group = U1, beta = 2, coeffs = { 1 } }
    assert.is_true(math.abs(vm:log_z() - math.log(2.2795853023)) < 1e-9)
    -- its diffused density p_t (against d theta) at theta 0.5, sigma 0.8
    local s = diffuse.score.class_function(U1, diffuse.ve(2), vm)
    local D = diffuse.ve(2)
    local t = 0.5 * math.log(1 + 2 * math.log(2) * 0.64) / math.log(2) -- sigma(t) = 0.8
    assert.is_true(math.abs(D:sigma(t) - 0.8) < 1e-12)
    local lp = s:log_density(tensor.new { { 0.5 } }, t):totable()[1]
    assert.is_true(near(math.exp(lp), 0.3152466387, 2e-6))
  end)

  it('the expansion at t = 0 is the target, and its score the target\'s projected gradient', function()
    for _, G in ipairs { SU2, SU3 } do
      local T = diffuse.group.toy_action { group = G, beta = G.n == 3 and 9 or 1, coeffs = c }
      diffuse.seed(7)
      local x = T:sample(64)
      local a = rows(T:log_density_at(x, 0))
      local s = rows(T:action(x))
      for r = 1, 64 do assert.is_true(math.abs(a[r] - (-s[r] - T:log_z())) < 2e-5, G.name) end
      -- the score at a small time against the action's gradient (P grad, cos terms)
      local sc = diffuse.score.class_function(G, diffuse.power(3, 1), T)
      local xs = rows(x)
      local got = rows(sc(x, 1e-3))
      for r = 1, 64 do
        local g = {}
        for j = 1, G.n do
          g[j] = 0
          for k = 1, 3 do g[j] = g[j] - (T.beta / G.n) * c[k] * k * math.sin(k * xs[r][j]) end
        end
        local m = 0
        for j = 1, G.n do m = m + g[j] / G.n end
        for j = 1, G.n do assert.is_true(math.abs(got[r][j] - (g[j] - m)) < 2e-3 * (1 + math.abs(g[j])), G.name) end
      end
    end
  end)

  it('samples exactly: the mean of Re Tr U / N (SU(2) -0.227635, SU(3) 0.059925) #nosan', function()
    for _, case in ipairs { { SU2, 1, -0.227635 }, { SU3, 9, 0.059925 } } do
      local G = case[1]
      local T = diffuse.group.toy_action { group = G, beta = case[2], coeffs = c }
      diffuse.seed(13)
      local n = 20000
      local x = rows(T:sample(n))
      local m, se = trace_mean(x, 1 / G.n)
      assert.is_true(math.abs(m - case[3]) < 5 * se, ('%s: %g vs %g (se %g)'):format(G.name, m, case[3], se))
    end
  end)

  it('SU(2) toy with the exact score: 200 Euler steps from Haar reach the ESS ceiling, log Z within 2 SE', function()
    local T = diffuse.group.toy_action { group = SU2, beta = 1, coeffs = c }
    local D = diffuse.power(3, 1)
    diffuse.seed(0)
    local x1 = SU2:haar(4096)
    local s = diffuse.sampler { diffuser = D, steps = 200, method = 'euler', group = SU2 }
    local x0, _, logq = s:run(x1, diffuse.score.class_function(SU2, D, T), { logq = true })
    local logp = T:log_density(x0)
    local ess = metrics.ess(logp - logq)
    -- the ceiling the Haar prior allows is 0.997702; ESS/N's sampling error at N = 4096 is ~1e-4
    assert.is_true(math.abs(ess - 0.997702) < 5e-4, ess)
    local z, se = metrics.log_z(logp, logq)
    assert.is_true(math.abs(z - T:log_z()) < 2 * se, ('%g vs %g (se %g)'):format(z, T:log_z(), se))
    for _, r in ipairs(rows(x0)) do assert.is_true(math.abs(r[1] + r[2]) < 1e-6 and math.abs(r[1]) <= pi + 1e-6) end
  end)

  it('the exact-score ODE from heat-kernel draws at t = 1 gives the kernel at t = 0.75, 0.5, 0.25 #nosan', function()
    local D = diffuse.power(3, 1)
    for _, G in ipairs { SU2, SU3 } do
      diffuse.seed(17)
      local n = 8000
      local x1 = G:heat_sample(n, D:sigma(1))
      local hs = diffuse.score.heat(G, D)
      for _, t in ipairs { 0.75, 0.5, 0.25 } do
        local grid = {}
        for k = 0, 100 do grid[#grid + 1] = 1 - (1 - t) * k / 100 end
        local s = diffuse.sampler { diffuser = D, grid = grid, method = 'heun', group = G }
        assert_kernel_marginal('ODE', G, rows((s:run(x1, hs))), D:sigma(t))
      end
    end
  end)

  it('the reverse SDE (Euler-Maruyama on the group: group noise as matrices) from t = 1 gives the kernel at t = 0.75, 0.5, 0.25 #nosan', function()
    -- Euler-Maruyama is weak order 1: steps uniform in log sigma, 300 of them, leave a bias under
    -- 2 standard errors here (SU(3) at t = 0.25, 20000 draws: 0.0049, 0.0030 at 100, 200 steps,
    -- 0.0001 +- 0.0006 at 400)
    local D = diffuse.power(3, 1)
    for _, G in ipairs { SU2, SU3 } do
      diffuse.seed(19)
      local n = 4000
      local x1 = G:heat_sample(n, D:sigma(1))
      local hs = diffuse.score.heat(G, D)
      for _, t in ipairs { 0.75, 0.5, 0.25 } do
        local grid, N = {}, 300
        for k = 0, N do
          local sg = D:sigma(1) * (D:sigma(t) / D:sigma(1)) ^ (k / N)
          grid[#grid + 1] = k == N and t or (sg / math.sqrt(3)) ^ (2 / 3)
        end
        local s = diffuse.sampler { diffuser = D, grid = grid, method = 'euler_maruyama', group = G }
        assert_kernel_marginal('SDE', G, rows(s:run(x1, hs)), D:sigma(t))
      end
    end
  end)

  it('the reverse SDE keeps Haar stationary (a flat target: zero score, group noise alone) #nosan', function()
    local D = diffuse.power(3, 1)
    for _, G in ipairs { SU2, SU3 } do
      local flat = diffuse.group.toy_action { group = G, beta = 0, coeffs = { 1 } }
      local sc = diffuse.score.class_function(G, D, flat)
      diffuse.seed(23)
      local n = 8000
      local s = diffuse.sampler { diffuser = D, steps = 200, method = 'euler_maruyama', group = G }
      local grid = s:times()
      grid[#grid] = 1e-3 -- (sigma(0) = 0: stop just above)
      local x = rows(diffuse.group.reverse_sde(G:haar(n), sc, grid))
      local re, m2 = 0, 0
      for r = 1, n do
        local a, b = 0, 0
        for j = 1, G.n do a, b = a + math.cos(x[r][j]), b + math.sin(x[r][j]) end
        re, m2 = re + a / n, m2 + (a * a + b * b) / n
      end
      assert.is_true(math.abs(re) < 5 * math.sqrt(0.5 / n), G.name .. ' ' .. re)
      assert.is_true(math.abs(m2 - 1) < 5 * math.sqrt(2 / n), G.name .. ' ' .. m2)
    end
  end)

  it('denoising pairs with group noise: exact at the identity, Stein-consistent elsewhere (SU(2)) #nosan', function()
    local D = diffuse.power(3, 1)
    diffuse.seed(29)
    -- data at the identity: U_t = exp(iA), so the target is the kernel's score at theta_t
    local xt, tg = SU2:dsm_pairs(tensor.zeros(1000, 2), D, tensor.full({ 1000 }, 0.5))
    assert.is_true((tg - SU2:heat_score(xt, D:sigma(0.5))):abs():max() < 2e-6)
    local u, ug = U1:dsm_pairs(tensor.zeros(1000, 1), D, tensor.full({ 1000 }, 0.5))
    assert.is_true((ug - U1:heat_score(u, D:sigma(0.5))):abs():max() < 2e-6)
    -- elsewhere the target's conditional mean is the score s_1 of p_t, so for phi = sin^2 th,
    -- E[2 s_1 phi + 2 cot(th) phi + phi'] = 0 (Stein, with the Haar factor sin^2 th), and the same
    -- for phi = sin^2 th cos th: within 5 standard errors of 0
    for _, a in ipairs { 0.7, 2.5 } do
      local n, pts = 40000, {}
      for r = 1, n do pts[r] = { a, -a } end
      local x, s = SU2:dsm_pairs(tensor.new(pts), D, tensor.rand(n) * 0.8 + 0.2)
      local X, S = rows(x), rows(s)
      local m1, v1, m2, v2 = 0, 0, 0, 0
      for r = 1, n do
        local th, s1 = X[r][1], S[r][1]
        local sn, cs = math.sin(th), math.cos(th)
        local f1 = s1 * sn ^ 2 + 2 * sn * cs
        local f2 = 2 * s1 * sn ^ 2 * cs + 4 * sn * cs ^ 2 - sn ^ 3
        m1, v1, m2, v2 = m1 + f1 / n, v1 + f1 * f1 / n, m2 + f2 / n, v2 + f2 * f2 / n
        assert.is_true(math.abs(S[r][1] + S[r][2]) < 1e-6)
      end
      assert.is_true(math.abs(m1) < 5 * math.sqrt((v1 - m1 ^ 2) / n), a)
      assert.is_true(math.abs(m2) < 5 * math.sqrt((v2 - m2 ^ 2) / n), a)
    end
  end)

  it('denoising pairs on SU(3) (3x3 matrices): exact at the identity, the character moments, Stein-consistent #nosan', function()
    local D = diffuse.power(3, 1)
    diffuse.seed(31)
    -- at the identity U_t = exp(iA): the kernel's score at theta_t
    local xt, tg = SU3:dsm_pairs(tensor.zeros(4000, 3), D, tensor.full({ 4000 }, 0.5))
    assert.is_true((tg - SU3:heat_score(xt, D:sigma(0.5))):abs():max() < 2e-6)
    assert.is_true(tg:sum(2):abs():max() < 1e-6)
    -- elsewhere: E[Tr U_t] = Tr U_0 exp(-C_F w^2) (the products of matrices), and the Stein identity
    -- of the eigenangle density p h on the torus for v = J^2 phi e (e tangent, phi = cos theta_1):
    -- E[J^2 (phi e.s + e.grad phi + 2 phi e.c)] = 0, c_i = sum_j cot(theta_ij / 2); 5 errors
    local n = 20000
    for _, x0 in ipairs{ { 2.5, -1.0, -1.5 }, { 2.0, 2.0, -4.0 } } do
      local pts = {}
      for r = 1, n do pts[r] = x0 end
      local t = 0.4
      local X = rows((SU3:dsm_pairs(tensor.new(pts), D, tensor.full({ n }, t))))
      local f = math.exp(-4 / 3 * D:sigma(t) ^ 2)
      local er, ei = 0, 0
      for j = 1, 3 do er, ei = er + math.cos(x0[j]) * f, ei + math.sin(x0[j]) * f end
      local re, im, vr, vi = 0, 0, 0, 0
      for r = 1, n do
        local a, b = 0, 0
        for j = 1, 3 do a, b = a + math.cos(X[r][j]), b + math.sin(X[r][j]) end
        re, im, vr, vi = re + a / n, im + b / n, vr + a * a / n, vi + b * b / n
      end
      assert.is_true(math.abs(re - er) < 5 * math.sqrt((vr - re ^ 2) / n), 're ' .. re .. ' ' .. er)
      assert.is_true(math.abs(im - ei) < 5 * math.sqrt((vi - im ^ 2) / n), 'im ' .. im .. ' ' .. ei)
      local x, s = SU3:dsm_pairs(tensor.new(pts), D, tensor.rand(n) * 0.8 + 0.2)
      X = rows(x)
      local S = rows(s)
      for _, e in ipairs{ { 1, -1, 0 }, { 1, 1, -2 } } do
        local m, v = 0, 0
        for r = 1, n do
          local th, sr = X[r], S[r]
          local J2, c = 1, { 0, 0, 0 }
          for i = 1, 3 do
            for j = 1, 3 do
              if i ~= j then
                c[i] = c[i] + 1 / math.tan((th[i] - th[j]) / 2)
                if i < j then J2 = J2 * (2 - 2 * math.cos(th[i] - th[j])) end
              end
            end
          end
          local phi = math.cos(th[1])
          local es, ec = 0, 0
          for i = 1, 3 do es, ec = es + e[i] * sr[i], ec + e[i] * c[i] end
          local fr = J2 * (phi * es - e[1] * math.sin(th[1]) + 2 * phi * ec)
          m, v = m + fr / n, v + fr * fr / n
        end
        assert.is_true(math.abs(m) < 5 * math.sqrt((v - m * m) / n), ('%s, e %s: %g'):format(table.concat(x0, ' '), table.concat(e, ' '), m))
      end
    end
  end)

  it('training with group noise: the net approaches the exact score (SU(2), U(1), SU(3)), one native call', function()
    local D = diffuse.power(3, 1)
    local nn = diffuse.nn
    for _, case in ipairs { { SU2, { 0.17, -0.65, 1.22 }, 1 }, { U1, { 1 }, 2 }, { SU3, { 0.17, -0.65, 1.22 }, 9 } } do
      local G = case[1]
      local T = diffuse.group.toy_action { group = G, beta = case[3], coeffs = case[2] }
      diffuse.seed(37)
      local data = T:sample(4096)
      local l1, l2 = nn.linear(32), nn.linear(G.n == 3 and 3 or 1)
      local net = nn.net { dim = G.n, output = 'score', forward = function(x, t)
        local h = nn.cat { x:sin(), x:cos(), nn.fourier(t, { frequencies = { 0.5, 1, 2, 4, 8 } }) }
        local o = l2(l1(h):silu())
        if G.n == 3 then return o - o:mean() end -- (tangent)
        return G.n == 2 and o * x:sin() or o
      end }
      local exact = diffuse.score.class_function(G, D, T)
      local xq = T:sample(2000)
      local function err(score, t)
        local xt = G:dsm_pairs(xq, D, tensor.full({ 2000 }, t))
        return ((score(xt, t) - exact(xt, t)):square():mean()) ^ 0.5
      end
      local before = err(diffuse.score.net(net, D), 0.6)
      local losses = diffuse.train { net = net, diffuser = D, data = data, group = G, steps = 600, batch = 512, lr = 3e-3, tol = 1e-3 }
      assert.equal(600, losses:size(1))
      local L = losses:totable()
      local first, last = 0, 0
      for i = 1, 50 do first, last = first + L[i] / 50, last + L[#L - 50 + i] / 50 end
      assert.is_true(last < first, G.name)
      local after = err(diffuse.score.net(net, D), 0.6)
      assert.is_true(after < 0.5 * before, ('%s: %g -> %g'):format(G.name, before, after))
    end
    assert.has_error(function() diffuse.train { net = diffuse.nn.mlp { dim = 1 }, diffuser = D, data = SU2:haar(16), group = SU2, steps = 1 } end,
      "diffuse.train: the net's dim (1) must be the group's 2 eigenangles")
    -- the training options: an EMA (one step: d p0 + (1 - d) p1), gradient clipping (a tiny norm
    -- leaves Adam's first step at about clip / eps of its size), the weightings
    local k1, k2 = nn.linear(8), nn.linear(1)
    local net = nn.net { dim = 2, output = 'score', forward = function(x, t)
      return k2(k1(nn.cat { x:sin(), x:cos(), t }):silu()) * x:sin()
    end }
    local p0 = net:parameters():totable()
    local _, _, ema = diffuse.train { net = net, diffuser = D, data = SU2:haar(64), group = SU2, steps = 1, lr = 1e-2, ema = 0.9 }
    local p1, pe = net:parameters():totable(), ema:parameters():totable()
    local moved = 0
    for i = 1, #p0 do
      assert.near(0.9 * p0[i] + 0.1 * p1[i], pe[i], 1e-7 * (1 + math.abs(p0[i])))
      moved = math.max(moved, math.abs(p1[i] - p0[i]))
    end
    assert.is_true(moved > 5e-3)
    local c0 = net:parameters():totable()
    diffuse.train { net = net, diffuser = D, data = SU2:haar(64), group = SU2, steps = 1, lr = 1e-2, clip = 1e-14,
                    optimizer = diffuse.optim.adam(net, { lr = 1e-2 }) }
    local c1, cm = net:parameters():totable(), 0
    for i = 1, #c0 do cm = math.max(cm, math.abs(c1[i] - c0[i])) end
    assert.is_true(cm < 1e-4, cm)
    for _, wt in ipairs { 'likelihood', 'none' } do
      local l = diffuse.train { net = net, diffuser = D, data = SU2:haar(64), group = SU2, steps = 3, weighting = wt, tol = 1e-3 }
      assert.equal(3, l:size(1))
    end
    assert.error_matches(function() diffuse.train { net = net, diffuser = D, data = SU2:haar(64), group = SU2, steps = 20, lr = 1e30 } end,
      '^diffuse.train: training diverged at step %d+: loss = ')
    -- a score that is not tangent is an error at the first batch (SU(N); U(1) has no constraint)
    local flat = diffuse.nn.mlp { dim = 3, hidden = { 8 } }
    assert.error_matches(function() diffuse.train { net = flat, diffuser = D, data = SU3:haar(16), group = SU3, steps = 1 } end,
      "^diffuse.train: the net's score must be tangent on SU%(3%) %(rows summing to 0%), but 16 of 16 rows are not %(row 1 sums to .*%): end its forward with o %- o:mean%(%)")
    assert.has_error(function() diffuse.train { net = net, diffuser = D, data = SU2:haar(16), group = SU2, steps = 1, weighting = 'l2' } end,
      "diffuse.train: weighting must be 'sigma2', 'likelihood' or 'none' (got 'l2')")
  end)
end)
