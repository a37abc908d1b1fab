-- diffuse.metrics: how far 1-D samples are from a distribution (exact Wasserstein-1,
-- Kolmogorov-Smirnov with its asymptotic p-value), sample moments, and the diagnostics of
-- importance sampling (ESS, KL, reweighted estimates, log Z, bootstrap errors). Pure Lua.
--
-- Samples are a tensor (1-D, [N,1] or [1,N]; read through totable()) or a Lua array of
-- numbers. Empty samples and NaN or infinite values are errors that name the function.
-- A reference distribution is given as samples, as a CDF function F(x) --> number (continuous,
-- rising from 0 to 1), or as a table {cdf = F, quantile = Q}; Q, when given, only speeds up the
-- Wasserstein integral.
local M = {}

local abs, floor, exp, sqrt, huge, pi = math.abs, math.floor, math.exp, math.sqrt, math.huge, math.pi
local max, min, fmt = math.max, math.min, string.format

-- a userdata's class ('diffuse.tensor', 'diffuse.net', ...), else nil
local function class_of(v)
  local mt = type(v) == 'userdata' and getmetatable(v)
  return type(mt) == 'table' and mt.__name or nil
end

local function is_tensor(x) return class_of(x) == 'diffuse.tensor' end

-- a tensor's shape, or an error in fname's name (a released tensor would name tensor.shape)
local function shape_of(x, fname, what, level)
  local ok, shape = pcall(x.shape, x)
  if not ok then
    local why = tostring(shape):gsub('^diffuse%.tensor%.shape: ', ''):gsub(' %(argument 1%)$', '')
    error(fmt('%s: %s: %s', fname, what, why), level + 1)
  end
  return shape
end

-- A fresh Lua array of the samples' values (the caller may sort it), checked.
local function samples_of(x, fname, what)
  local t
  if is_tensor(x) then
    local shape = shape_of(x, fname, what, 3)
    local long = 0
    for _, s in ipairs(shape) do if s > 1 then long = long + 1 end end
    if #shape > 2 or long > 1 then
      error(fmt('%s: %s must be a 1-D, [N,1] or [1,N] tensor (got %s)', fname, what,
                table.concat(shape, 'x')), 3)
    end
    t = x:totable()
    if #shape == 2 then
      local flat = {}
      for _, row in ipairs(t) do for _, v in ipairs(row) do flat[#flat + 1] = v end end
      t = flat
    end
  elseif type(x) == 'table' then
    t = {}
    for i = 1, #x do
      local v = x[i]
      if type(v) ~= 'number' then
        error(fmt('%s: %s must be a tensor or an array of numbers (element %d is a %s)',
                  fname, what, i, type(v)), 3)
      end
      t[i] = v
    end
  else
    error(fmt('%s: %s must be a tensor or an array of numbers (got %s)', fname, what, type(x)), 3)
  end
  if #t == 0 then error(fmt('%s: %s is empty', fname, what), 3) end
  for i = 1, #t do
    local v = t[i]
    if v ~= v then error(fmt('%s: %s holds NaN (element %d)', fname, what, i), 3) end
    if v == huge or v == -huge then
      error(fmt('%s: %s holds an infinite value (element %d)', fname, what, i), 3)
    end
  end
  return t
end

-- other: samples, a CDF function (or callable table), or {cdf = F [, quantile = Q]}
-- --> 'samples', sorted array | 'cdf', F, Q
local function reference_of(other, fname)
  local tp = type(other)
  if tp == 'function' then return 'cdf', other end
  if tp == 'table' and not is_tensor(other) then
    if other.cdf ~= nil then
      if type(other.cdf) ~= 'function' then error(fname .. ': other.cdf must be a function', 3) end
      if other.quantile ~= nil and type(other.quantile) ~= 'function' then
        error(fname .. ': other.quantile must be a function', 3)
      end
      return 'cdf', other.cdf, other.quantile
    end
    local mt = getmetatable(other)
    if other[1] == nil and mt and mt.__call then return 'cdf', other end
  end
  if tp ~= 'table' and not is_tensor(other) then
    error(fmt('%s: other must be samples (a tensor or an array of numbers), a CDF function or '
              .. '{cdf = f, quantile = q} (got %s)', fname, tp), 3)
  end
  local s = samples_of(other, fname, 'other')
  table.sort(s)
  return 'samples', s
end

-- F wrapped so that a CDF returning garbage is a clear error
local function checked_cdf(F, fname)
  return function(x)
    local v = F(x)
    -- (out of [0, 1], inf included, the integrals would never converge; a double-precision
    -- CDF may round a hair past an end, which is clamped)
    if type(v) ~= 'number' or not (v >= -1e-12 and v <= 1 + 1e-12) then
      error(fmt('%s: the cdf returned %s at x = %.17g (expected a number in [0, 1])',
                fname, tostring(v), x), 0)
    end
    return v < 0 and 0.0 or (v > 1 and 1.0 or v)
  end
end

-- ---- integration -------------------------------------------------------------------------------

-- Gauss-Kronrod 7/15 nodes and weights (QUADPACK qk15)
local XGK = { 0.991455371120812639206854697526329, 0.949107912342758524526189684047851,
              0.864864423359769072789712788640926, 0.741531185599394439863864773280788,
              0.586087235467691130294144845693013, 0.405845151377397166906606412076961,
              0.207784955007898467600689403773245, 0.000000000000000000000000000000000 }
local WGK = { 0.022935322010529224963732008058970, 0.063092092629978553290700663189204,
              0.104790010322250183839876322541518, 0.140653259715525918745189590510238,
              0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
              0.204432940075298892414161999234649, 0.209482141084727828012999174891714 }
local WG = { 0.129484966168869693270611432679082, 0.279705391489276667901467771423780,
             0.381830050505118944950369775488975, 0.417959183673469387755102040816327 }

local function gk15(f, a, b)
  local c, h = 0.5 * (a + b), 0.5 * (b - a)
  local fc = f(c)
  local k, g = fc * WGK[8], fc * WG[4]
  for j = 1, 7 do
    local dx = h * XGK[j]
    local s = f(c - dx) + f(c + dx)
    k = k + WGK[j] * s
    if j % 2 == 0 then g = g + WG[j // 2] * s end
  end
  return k * h, abs((k - g) * h)
end

-- adaptive bisection until the Kronrod/Gauss difference is under tol. When halving no longer
-- shrinks an error already at single-precision rounding level (a CDF computed in float32, such
-- as diffuse.heat.cdf, is a staircase at its last bit), the error is rounding, not truncation:
-- stop there, or the bisection would run 2^40 deep.
local function integrate(f, a, b, tol, depth, v, err)
  if v == nil then v, err = gk15(f, a, b) end
  if err <= tol or depth >= 40 or b - a <= 1e-14 * max(abs(a), abs(b)) then return v end
  local m = 0.5 * (a + b)
  local v1, e1 = gk15(f, a, m)
  local v2, e2 = gk15(f, m, b)
  if e1 + e2 >= 0.5 * err and err <= 1e-6 * (b - a) then return v1 + v2 end
  return integrate(f, a, m, 0.5 * tol, depth + 1, v1, e1) + integrate(f, m, b, 0.5 * tol, depth + 1, v2, e2)
end

-- x in [a, b] with F(x) = c, given F(a) < c < F(b): Illinois (regula falsi) with a bisection
-- fallback; the kink's position only enters the integral at second order, so 1e-13 relative
-- of the interval is plenty.
local function crossing(F, c, a, b, fa, fb)
  local ga, gb = fa - c, fb - c
  local side = 0
  local tol = 1e-13 * (b - a) + 1e-300
  for it = 1, 200 do
    local x
    if it % 8 == 0 then x = 0.5 * (a + b) else x = (a * gb - b * ga) / (gb - ga) end
    if not (x > a and x < b) then x = 0.5 * (a + b) end
    local gx = F(x) - c
    if gx == 0 then return x end
    if (gx < 0) == (ga < 0) then
      a, ga = x, gx
      if side == -1 then gb = gb * 0.5 end
      side = -1
    else
      b, gb = x, gx
      if side == 1 then ga = ga * 0.5 end
      side = 1
    end
    if b - a <= tol then break end
  end
  return 0.5 * (a + b)
end

-- ∫_a^b |c - F(x)| dx for a monotone F, split at the crossing F = c
local function abs_diff_integral(F, Q, c, a, b, fa, fb, tol)
  if fb <= c then return c * (b - a) - integrate(F, a, b, tol, 0) end
  if fa >= c then return integrate(F, a, b, tol, 0) - c * (b - a) end
  local r
  if Q then
    local ok, q = pcall(Q, c)
    if ok and type(q) == 'number' and q == q then r = min(b, max(a, q)) end
  end
  r = r or crossing(F, c, a, b, fa, fb)
  return (c * (r - a) - integrate(F, a, r, 0.5 * tol, 0))
       + (integrate(F, r, b, 0.5 * tol, 0) - c * (b - r))
end

-- ∫ over a tail, in chunks of doubling length, until F is within 1e-12 of its limit:
-- dir = -1: ∫_{-inf}^{x} F ; dir = 1: ∫_{x}^{inf} (1 - F)
local function tail(F, x, dir, h, tol, fname)
  local g = dir < 0 and F or function(v) return 1 - F(v) end
  local total, edge = 0, x
  for _ = 1, 1100 do
    local far = edge + dir * h
    if far == edge or far ~= far or abs(far) == huge then break end
    local a, b = edge, far
    if dir < 0 then a, b = far, edge end
    total = total + integrate(g, a, b, tol, 0)
    if g(far) <= 1e-12 then return total end
    edge, h = far, h * 2
  end
  error(fmt('%s: the cdf does not reach %s within 1e-12 towards %s', fname,
            dir < 0 and '0' or '1', dir < 0 and '-infinity' or '+infinity'), 4)
end

-- 2^-e for the largest |v| of finite values lo <= hi: multiplying by it is exact and brings them
-- to [-2, 2], so sums, squares and fourth powers of values near 1e308 (or 1e-300) neither
-- overflow nor underflow; in between it changes no rounding at all
local function unit_scale(lo, hi)
  local amax = max(-lo, hi)
  if not (amax > 0) then return 1.0 end
  local e = floor(math.log(amax, 2))
  return 2.0 ^ -max(-1022, min(1023, e))
end

-- ---- Wasserstein-1 -----------------------------------------------------------------------------

--[[ diffuse.metrics.wasserstein1(samples, other) --> number
  The 1-D Wasserstein-1 (earth mover's) distance W1 = ∫ |F_n(x) - G(x)| dx between the
  empirical distribution F_n of `samples` and
  - other samples (tensor or array, any size m): exact, by a sweep over the merged sorted
    values (|F_n - G_m| is piecewise constant);
  - a CDF function F(x) (or {cdf = F, quantile = Q}): between consecutive sorted samples F_n is
    constant, and ∫ |c - F| is integrated by adaptive Gauss-Kronrod (7/15) split at the point
    where F crosses c (found by Q when given, else by regula falsi); the two tails are integrated
    until F is within 1e-12 of 0 and 1. Absolute error about 1e-9 times the samples' spread for
    smooth F. F must be continuous and non-decreasing; for a distribution without a first
    moment (Cauchy) the true W1 is infinite and the value returned is merely large.
  The result is >= 0, in the units of the samples. ]]
function M.wasserstein1(samples, other)
  local fname = 'diffuse.metrics.wasserstein1'
  local a = samples_of(samples, fname, 'samples')
  table.sort(a)
  local kind, ref, Q = reference_of(other, fname)
  local n = #a
  if kind == 'samples' then
    local b, m = ref, #ref            -- (sorted too)
    local c = unit_scale(min(a[1], b[1]), max(a[n], b[m])) -- dx of 1e308 - (-1e308) is finite
    local i, j = 0, 0                 -- how many of a and of b are <= x
    local x = min(a[1], b[1])
    local sum, comp = 0.0, 0.0        -- Neumaier-compensated sum of |i m - j n| dx
    while true do
      while i < n and a[i + 1] <= x do i = i + 1 end
      while j < m and b[j + 1] <= x do j = j + 1 end
      if i == n and j == m then break end
      local nx = min(i < n and a[i + 1] or huge, j < m and b[j + 1] or huge)
      local term = abs(i * m - j * n) * (nx * c - x * c)
      local t = sum + term
      if abs(sum) >= abs(term) then comp = comp + ((sum - t) + term) else comp = comp + ((term - t) + sum) end
      sum = t
      x = nx
    end
    return (sum + comp) / (n * m) / c
  end
  local F = checked_cdf(ref, fname)
  local spread = a[n] - a[1]
  local scale = spread > 0 and spread or max(1, abs(a[1]))
  local tol = 1e-9 * scale
  local Fx = {}
  for i = 1, n do Fx[i] = F(a[i]) end
  local total = tail(F, a[1], -1, scale, tol, fname) + tail(F, a[n], 1, scale, tol, fname)
  for i = 1, n - 1 do
    local lo, hi = a[i], a[i + 1]
    if hi > lo then
      total = total + abs_diff_integral(F, Q, i / n, lo, hi, Fx[i], Fx[i + 1], tol * (hi - lo) / scale + 1e-15)
    end
  end
  return max(0, total)
end

-- ---- Kolmogorov-Smirnov ------------------------------------------------------------------------

--[[ diffuse.metrics.kolmogorov_sf(lambda) --> number in [0, 1]
  The Kolmogorov distribution's survival function P(K > lambda) = 2 Σ_{k>=1} (-1)^(k-1)
  exp(-2 k^2 lambda^2), evaluated by the dual theta series for lambda < 1.18 where the
  alternating one converges slowly. ]]
function M.kolmogorov_sf(lambda)
  if type(lambda) ~= 'number' or lambda ~= lambda then
    error('diffuse.metrics.kolmogorov_sf: lambda must be a number', 2)
  end
  if lambda <= 0 then return 1 end
  local p
  if lambda < 1.18 then
    -- P(K <= l) = sqrt(2 pi) / l Σ_{k>=1} exp(-(2k-1)^2 pi^2 / (8 l^2))
    local s, q = 0, pi * pi / (8 * lambda * lambda)
    for k = 1, 50 do
      local term = exp(-(2 * k - 1) ^ 2 * q)
      s = s + term
      if term < 1e-17 * s then break end
    end
    p = 1 - sqrt(2 * pi) / lambda * s
  else
    local s = 0
    for k = 1, 100 do
      local term = exp(-2 * k * k * lambda * lambda)
      s = s + (k % 2 == 1 and term or -term)
      if term < 1e-17 then break end
    end
    p = 2 * s
  end
  return min(1, max(0, p))
end

-- p-value for statistic d with effective sample size ne (Stephens' small-sample correction,
-- as in Numerical Recipes' probks)
local function ks_pvalue(d, ne)
  local sn = sqrt(ne)
  return M.kolmogorov_sf((sn + 0.12 + 0.11 / sn) * d)
end

--[[ diffuse.metrics.ks(samples, other) --> D, p
  D: the Kolmogorov-Smirnov statistic, in [0, 1].
  - other a CDF function F (or {cdf = F}): D = sup_x |F_n(x) - F(x)|, exact: evaluated on both
    sides of every jump of F_n (F continuous assumed).
  - other samples: the two-sample statistic D = sup_x |F_n(x) - G_m(x)|, exact (ties handled).
  p: the asymptotic p-value P(D' >= D) under the hypothesis that the samples come from F (or
  that both samples share one distribution): the Kolmogorov distribution at
  (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) D, with ne = n for one sample, n m / (n + m) for two.
  Accurate for n of about 35 and more; indicative below. ]]
function M.ks(samples, other)
  local fname = 'diffuse.metrics.ks'
  local a = samples_of(samples, fname, 'samples')
  table.sort(a)
  local kind, ref = reference_of(other, fname)
  local n = #a
  local d = 0
  if kind == 'samples' then
    local b, m = ref, #ref
    local i, j = 0, 0
    while i < n or j < m do
      local x = min(i < n and a[i + 1] or huge, j < m and b[j + 1] or huge)
      while i < n and a[i + 1] <= x do i = i + 1 end
      while j < m and b[j + 1] <= x do j = j + 1 end
      d = max(d, abs(i / n - j / m))
    end
    return d, ks_pvalue(d, n * m / (n + m))
  end
  local F = checked_cdf(ref, fname)
  for i = 1, n do
    local f = F(a[i])
    d = max(d, i / n - f, f - (i - 1) / n)
  end
  return d, ks_pvalue(d, n)
end

-- ---- the normal distribution in double precision (the analytic side of the metrics) -----------

-- erf(x) = 2/sqrt(pi) exp(-x^2) sum_{k>=0} 2^k x^(2k+1) / (1 3 ... (2k+1)): all terms positive,
-- so no cancellation; used for |x| < 2.5
local function erf_series(x)
  local x2 = x * x
  local term, sum = x, x
  for k = 1, 200 do
    term = term * 2 * x2 / (2 * k + 1)
    sum = sum + term
    if abs(term) < 1e-17 * abs(sum) then break end
  end
  return 2 / sqrt(pi) * exp(-x2) * sum
end

-- erfc(x) for x >= 2.5: exp(-x^2) / sqrt(pi) / (x + (1/2) / (x + 1 / (x + (3/2) / (x + ...)))),
-- by the modified Lentz method
local function erfc_cf(x)
  local tiny = 1e-300
  local f, C, D = x, x, 0
  for k = 1, 500 do
    local a = k / 2
    D = x + a * D
    if D == 0 then D = tiny end
    D = 1 / D
    C = x + a / C
    if C == 0 then C = tiny end
    local delta = C * D
    f = f * delta
    if abs(delta - 1) < 1e-16 then break end
  end
  return exp(-x * x) / sqrt(pi) / f
end

-- x a number; mu and s numbers (s > 0) or nil (0 and 1)
local function check_normal(fname, what, x, mu, s)
  if type(x) ~= 'number' then error(fmt('%s: %s must be a number (got %s)', fname, what, type(x)), 3) end
  if mu ~= nil and type(mu) ~= 'number' then error(fmt('%s: mu must be a number (got %s)', fname, type(mu)), 3) end
  if s ~= nil and (type(s) ~= 'number' or not (s > 0)) then
    error(fmt('%s: sigma must be a positive number (got %s)', fname, tostring(s)), 3)
  end
end

--[[ diffuse.metrics.erf(x), erfc(x): about 1e-16 absolute (erfc: 1e-15 relative in the tail) ]]
function M.erf(x)
  check_normal('diffuse.metrics.erf', 'x', x)
  if x ~= x then return x end
  if abs(x) < 2.5 then return erf_series(x) end
  local c = erfc_cf(abs(x))
  return x > 0 and 1 - c or c - 1
end

function M.erfc(x)
  check_normal('diffuse.metrics.erfc', 'x', x)
  if x ~= x then return x end
  if x >= 2.5 then return erfc_cf(x) end
  if x <= -2.5 then return 2 - erfc_cf(-x) end
  return 1 - erf_series(x)
end

--[[ diffuse.metrics.normal_pdf(x [, mu, sigma]), normal_cdf(x [, mu, sigma]),
  normal_quantile(p [, mu, sigma]): N(mu, sigma^2), mu 0 and sigma 1 by default ]]
function M.normal_pdf(x, mu, s)
  check_normal('diffuse.metrics.normal_pdf', 'x', x, mu, s)
  mu, s = mu or 0, s or 1
  local z = (x - mu) / s
  return exp(-0.5 * z * z) / (s * sqrt(2 * pi))
end

function M.normal_cdf(x, mu, s)
  check_normal('diffuse.metrics.normal_cdf', 'x', x, mu, s)
  mu, s = mu or 0, s or 1
  return 0.5 * M.erfc(-(x - mu) / (s * sqrt(2)))
end

function M.normal_quantile(p, mu, s)
  check_normal('diffuse.metrics.normal_quantile', 'p', p, mu, s)
  mu, s = mu or 0, s or 1
  if p ~= p then return p end -- (a NaN probability has no quantile; as normal_cdf(NaN) is NaN)
  if p <= 0 then return -huge elseif p >= 1 then return huge end
  local lo, hi = -40, 40 -- bisection on the standard CDF, to double precision
  for _ = 1, 200 do
    local m = 0.5 * (lo + hi)
    if M.normal_cdf(m) < p then lo = m else hi = m end
    if hi - lo < 1e-15 * (1 + abs(m)) then break end
  end
  return mu + s * 0.5 * (lo + hi)
end

--[[ diffuse.metrics.normal(mu, sigma) --> {cdf = F, quantile = Q, pdf = f}: N(mu, sigma^2) as the
  reference of wasserstein1 and ks, e.g. metrics.ks(x, metrics.normal(0, ve:sigma(t))) ]]
function M.normal(mu, s)
  if type(mu) ~= 'number' or type(s) ~= 'number' or not (s > 0) or s == huge then
    error('diffuse.metrics.normal: expected a mean and a positive finite standard deviation', 2)
  end
  return { cdf = function(x) return M.normal_cdf(x, mu, s) end,
           quantile = function(p) return M.normal_quantile(p, mu, s) end,
           pdf = function(x) return M.normal_pdf(x, mu, s) end }
end

-- ---- moments -----------------------------------------------------------------------------------

--[[ diffuse.metrics.moments(x) --> { n, mean, var, std, skewness, kurtosis, min, max }
  n: the number of samples; mean; var: the unbiased variance Σ (x - mean)^2 / (n - 1)
  (NaN when n = 1); std = sqrt(var); skewness: m3 / m2^(3/2) and kurtosis: the excess
  kurtosis m4 / m2^2 - 3, both from the central moments m_k = Σ (x - mean)^k / n (the plain
  moment estimators, scipy's default bias = True; NaN when all values are equal); min, max.
  Central moments are summed in a second pass over the data, for accuracy. ]]
function M.moments(x)
  local fname = 'diffuse.metrics.moments'
  local t = samples_of(x, fname, 'x')
  local n = #t
  local s, lo, hi = 0, huge, -huge
  for i = 1, n do
    local v = t[i]
    if v < lo then lo = v end
    if v > hi then hi = v end
  end
  local c = unit_scale(lo, hi)      -- the moments of x c, scaled back at the end
  for i = 1, n do s = s + t[i] * c end
  local mean = s / n
  local c1, m2, m3, m4 = 0, 0, 0, 0
  for i = 1, n do
    local dv = t[i] * c - mean
    local d2 = dv * dv
    c1, m2, m3, m4 = c1 + dv, m2 + d2, m3 + d2 * dv, m4 + d2 * d2
  end
  mean = (mean + c1 / n) / c        -- (c1 corrects the rounding of the first pass)
  m2 = (m2 - c1 * c1 / n) / n
  m3, m4 = m3 / n, m4 / n
  local nan = 0 / 0
  local var = n > 1 and m2 * n / (n - 1) / c / c or nan -- (inf past 1.8e308: its true value)
  local skew, kurt = nan, nan
  if m2 > 0 then                    -- (both free of the scale)
    skew = m3 / m2 ^ 1.5
    kurt = m4 / (m2 * m2) - 3
  end
  return { n = n, mean = mean, var = var, std = sqrt(var), skewness = skew, kurtosis = kurt,
           min = lo, max = hi }
end

--- diffuse.metrics.score_error(net, diffuser, score [, opts]) --> mean [, bins]
-- How far the network's score s_net(x, t) = net(x, t) / sigma(t) is from a reference score
-- source (diffuse.score.exact, .mixture, .net, or a Lua function(x, t)): the mean over t and x
-- drawn as in training (t = tol + (1 - tol) U, x = x0 + sigma(t) eta) of
-- sigma(t)^2 |s_net - s|^2, the scale on which the DSM loss measures it (0 is perfect; a
-- network that outputs 0 scores about d, the data dimension).
-- opts: n (draws, default 4096), data (x0 rows [n, d]; default zeros(n, d): the heat kernel
-- from the origin), tol (1e-5), bins (a number of equal t-bins: then a second result
-- {edges = {...}, mean = {...}, count = {...}}, per bin). Uses the current random streams.
function M.score_error(net, diffuser, score, opts)
  local fname = 'diffuse.metrics.score_error: '
  local d = require 'diffuse'
  if type(opts) ~= 'nil' and type(opts) ~= 'table' then error(fname .. 'opts must be a table', 2) end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= 'n' and k ~= 'data' and k ~= 'tol' and k ~= 'bins' then
      error(fname .. "unknown option '" .. tostring(k) .. "'", 2)
    end
  end
  if class_of(net) ~= 'diffuse.net' then
    error(fname .. 'net must be a network (diffuse.nn.net, .mlp or .time_embedded)', 2)
  end
  if class_of(diffuser) ~= 'diffuse.diffuser' then
    error(fname .. 'diffuser must be a diffuser (diffuse.ve or diffuse.power), got ' .. type(diffuser), 2)
  end
  if type(score) ~= 'function' and class_of(score) ~= 'diffuse.score' then
    error(fname .. 'score must be a score source or a function(x, t)', 2)
  end
  local x0 = opts.data
  if x0 ~= nil and not is_tensor(x0) then
    error(fname .. 'data must be a tensor of rows x0 (got ' .. type(x0) .. ')', 2)
  end
  local rows = x0 and shape_of(x0, 'diffuse.metrics.score_error', 'data', 2)[1]
  local n = opts.n or rows or 4096
  if math.type(n) ~= 'integer' or n < 1 then error(fname .. 'n must be a positive integer', 2) end
  if x0 == nil then
    x0 = d.tensor.zeros(n, net.dim)
  elseif rows ~= n then
    error(fname .. 'data must be a tensor of n rows', 2)
  elseif #x0:shape() == 1 then
    x0 = x0:reshape(n, 1) -- ([n] is n rows of one coordinate: x, scores and net all [n, 1])
  end
  local tol = opts.tol or 1e-5
  if type(tol) ~= 'number' or not (tol >= 0 and tol < 1) then error(fname .. 'tol must be in [0, 1)', 2) end
  local t = tol + (1 - tol) * d.tensor.rand(n)
  local x = diffuser:diffuse(x0, t)
  local sigma = diffuser:sigma(t):reshape(n, 1)
  local s_net = d.score.net(net, diffuser)(x, t) -- (the net's output convention: net.output)
  local s_ref = score(x, t) -- (t: a tensor of one time per row, as score sources take)
  if not is_tensor(s_ref) then
    error(fname .. 'the score returned ' .. type(s_ref) .. ' (expected a tensor shaped as x)', 2)
  end
  local sx, sr = s_net:shape(), s_ref:shape()
  if table.concat(sx, 'x') ~= table.concat(sr, 'x') then -- (else it would broadcast to [n, n])
    error(fmt('%sthe score returned %s for x of %s', fname, table.concat(sr, 'x'), table.concat(sx, 'x')), 2)
  end
  local diff = (s_net - s_ref) * sigma
  local per_row = (diff * diff):sum(2) -- [n]: sigma^2 |s_net - s|^2
  local mean = per_row:mean()
  if not opts.bins then return mean end
  local nb = opts.bins
  if math.type(nb) ~= 'integer' or nb < 1 then error(fname .. 'bins must be a positive integer', 2) end
  local ts, es = t:totable(), per_row:totable()
  local out = { edges = {}, mean = {}, count = {} }
  for b = 0, nb do out.edges[b + 1] = tol + (1 - tol) * b / nb end
  for b = 1, nb do out.mean[b], out.count[b] = 0, 0 end
  for i = 1, n do
    local b = math.min(nb, math.floor((ts[i] - tol) / (1 - tol) * nb) + 1)
    out.mean[b] = out.mean[b] + es[i]
    out.count[b] = out.count[b] + 1
  end
  for b = 1, nb do out.mean[b] = out.count[b] > 0 and out.mean[b] / out.count[b] or 0 / 0 end
  return mean, out
end

-- ---- importance sampling ------------------------------------------------------------------------

-- log-weights (or log-densities): a tensor of one value per sample ([N] or [N, 1]) or an array;
-- -inf is a weight of 0, NaN and +inf are errors
local function logs_of(x, fname, what)
  local t
  if is_tensor(x) then
    local shape = shape_of(x, fname, what, 3)
    if #shape > 2 or (#shape == 2 and shape[2] ~= 1) then
      error(fmt('%s: %s must hold one value per sample ([N] or [N, 1], got %s)', fname, what,
                table.concat(shape, 'x')), 3)
    end
    t = x:totable()
    if #shape == 2 then for i = 1, #t do t[i] = t[i][1] end end
  elseif type(x) == 'table' then
    t = {}
    for i = 1, #x do
      if type(x[i]) ~= 'number' then
        error(fmt('%s: %s must be a tensor or an array of numbers (element %d is a %s)', fname, what, i,
                  type(x[i])), 3)
      end
      t[i] = x[i]
    end
  else
    error(fmt('%s: %s must be a tensor or an array of numbers (got %s)', fname, what, type(x)), 3)
  end
  if #t == 0 then error(fmt('%s: %s is empty', fname, what), 3) end
  for i = 1, #t do
    local v = t[i]
    if v ~= v or v == huge then error(fmt('%s: %s holds %s at %d', fname, what, tostring(v), i), 3) end
  end
  return t
end

-- log sum exp of an array, and its largest element
local function logsumexp(a)
  local m = -huge
  for i = 1, #a do if a[i] > m then m = a[i] end end
  if m == -huge then return -huge, m end
  local s = 0
  for i = 1, #a do s = s + exp(a[i] - m) end
  return m + math.log(s), m
end

local function pair(a, b, fname, wa, wb)
  local x, y = logs_of(a, fname, wa), logs_of(b, fname, wb)
  if #x ~= #y then error(fmt('%s: %s has %d values, %s %d', fname, wa, #x, wb, #y), 3) end
  return x, y
end

--- diffuse.metrics.ess(logw) --> ESS / N, ESS: the effective sample size of importance weights
--- w = exp(logw) (unnormalised: any constant cancels), (sum w)^2 / sum w^2, by log-sum-exp
function M.ess(logw)
  local fname = 'diffuse.metrics.ess'
  local l = logs_of(logw, fname, 'logw')
  local a = logsumexp(l)
  local l2 = {}
  for i = 1, #l do l2[i] = 2 * l[i] end
  local b = logsumexp(l2)
  if a == -huge then error(fname .. ': every weight is 0 (logw is -inf throughout)', 2) end
  local ess = exp(2 * a - b)
  return ess / #l, ess
end

--- diffuse.metrics.kl(logq, logp [, {logq = ..., logp = ...}]) --> KL(q || p), its standard
--- error [, KL(p || q), its standard error]: the reverse KL estimated on samples of q (log-densities
--- of both at them), and, when given the log-densities of both at samples of p, the forward one.
--- Both densities normalised (otherwise KL is off by log Z: see log_z).
function M.kl(logq, logp, p_samples)
  local fname = 'diffuse.metrics.kl'
  local q, p = pair(logq, logp, fname, 'logq', 'logp')
  local function mean_se(a, b)
    local m, v = 0, 0
    for i = 1, #a do
      local d = a[i] - b[i]
      if d ~= d or abs(d) == huge then error(fmt('%s: log-density difference %s at sample %d', fname, tostring(d), i), 3) end
      m = m + d / #a
    end
    for i = 1, #a do v = v + (a[i] - b[i] - m) ^ 2 end
    return m, #a > 1 and sqrt(v / (#a - 1) / #a) or 0
  end
  local r, rse = mean_se(q, p)
  if p_samples == nil then return r, rse end
  if type(p_samples) ~= 'table' or p_samples.logq == nil or p_samples.logp == nil then
    error(fname .. ': the samples of p must be given as {logq = ..., logp = ...}', 2)
  end
  local fq, fp = pair(p_samples.logq, p_samples.logp, fname, 'logq of p\'s samples', 'logp of p\'s samples')
  local f, fse = mean_se(fp, fq)
  return r, rse, f, fse
end

-- normalised weights (sum 1) from log-weights
local function weights_of(l)
  local a = logsumexp(l)
  local w = {}
  for i = 1, #l do w[i] = exp(l[i] - a) end
  return w
end

--- diffuse.metrics.reweight(values, logw) --> estimate, standard error: the self-normalised
--- importance-sampling estimate sum w v / sum w of E_p[v] and its delta-method standard error
--- sqrt(sum w^2 (v - estimate)^2) / sum w
function M.reweight(values, logw)
  local fname = 'diffuse.metrics.reweight'
  local v, l = pair(values, logw, fname, 'values', 'logw')
  for i = 1, #v do
    if v[i] == -huge then error(fmt('%s: values holds -inf at %d', fname, i), 2) end
  end
  if logsumexp(l) == -huge then error(fname .. ': every weight is 0 (logw is -inf throughout)', 2) end
  local w, est, var = weights_of(l), 0, 0
  for i = 1, #v do est = est + w[i] * v[i] end
  for i = 1, #v do var = var + w[i] * w[i] * (v[i] - est) ^ 2 end
  return est, sqrt(var)
end

--- diffuse.metrics.log_z(logp, logq) --> log Z, its standard error: log Z = log E_q[p~ / q] for an
--- unnormalised log p~ evaluated at samples of q (log mean exp, by log-sum-exp; the error by the
--- delta method, sd(w) / (sqrt(N) mean(w)))
function M.log_z(logp, logq)
  local fname = 'diffuse.metrics.log_z'
  local p, q = pair(logp, logq, fname, 'logp', 'logq')
  local l = {}
  for i = 1, #p do l[i] = p[i] - q[i] end
  local a = logsumexp(l)
  if a == -huge then error(fname .. ': every weight is 0', 2) end
  local n, m, v = #l, 0, 0
  for i = 1, n do m = m + exp(l[i] - a) end -- mean w / exp(a) * n
  m = m / n
  for i = 1, n do v = v + (exp(l[i] - a) - m) ^ 2 end
  local sd = n > 1 and sqrt(v / (n - 1)) or 0
  return a - math.log(n), sd / (sqrt(n) * m)
end

--- diffuse.metrics.bootstrap(fn, data [, {n = 1000, seed = 0}]) --> estimate, standard error,
--- replicates: fn(data) on the data, and the standard deviation of fn over n resamples (with
--- replacement, the rows of every array resampled together). data: an array of numbers, a tensor
--- of one value per row, or a table of such (same length), which fn receives resampled as Lua
--- arrays in the same shape (a table of arrays for a table). The resamples come from a fixed
--- generator seeded by seed: the same numbers every run.
function M.bootstrap(fn, data, opts)
  local fname = 'diffuse.metrics.bootstrap'
  if type(fn) ~= 'function' then error(fname .. ': fn must be a function of the data', 2) end
  opts = opts or {}
  if type(opts) ~= 'table' then error(fname .. ': options must be a table', 2) end
  for k in pairs(opts) do
    if k ~= 'n' and k ~= 'seed' then error(fname .. ": unknown option '" .. tostring(k) .. "'", 2) end
  end
  local n = opts.n or 1000
  if math.type(n) ~= 'integer' or n < 2 or n > 1e7 then error(fname .. ': n must be a whole number from 2 to 1e7', 2) end
  local seed = opts.seed or 0
  if math.type(seed) ~= 'integer' then error(fname .. ': seed must be an integer', 2) end
  -- the columns: one array, or a table of arrays
  local single = is_tensor(data) or (type(data) == 'table' and (#data > 0 and type(data[1]) == 'number'))
  local cols, keys = {}, {}
  if single then
    cols[1] = logs_of(data, fname, 'data')
  elseif type(data) == 'table' then
    for k, v in pairs(data) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    if #keys == 0 then error(fname .. ': data is empty', 2) end
    for i, k in ipairs(keys) do cols[i] = logs_of(data[k], fname, 'data.' .. tostring(k)) end
  else
    error(fname .. ': data must be an array, a tensor, or a table of them', 2)
  end
  local N = #cols[1]
  for i = 2, #cols do
    if #cols[i] ~= N then error(fmt('%s: data.%s has %d values, data.%s %d', fname, tostring(keys[i]), #cols[i],
                                    tostring(keys[1]), N), 2) end
  end
  local function shaped(cs)
    if single then return cs[1] end
    local t = {}
    for i, k in ipairs(keys) do t[k] = cs[i] end
    return t
  end
  local function call(cs)
    local ok, v = pcall(fn, shaped(cs))
    if not ok then error(fname .. ': fn failed: ' .. tostring(v), 3) end
    if type(v) ~= 'number' then error(fname .. ': fn must return a number (got ' .. type(v) .. ')', 3) end
    return v
  end
  local est = call(cols)
  -- a 64-bit xorshift* generator (fixed, so resamples repeat)
  local state = (seed ~ 0x2545F4914F6CDD1D) | 1
  local function next_index()
    state = state ~ (state >> 12)
    state = state ~ (state << 25)
    state = state ~ (state >> 27)
    local r = (state * 0x2545F4914F6CDD1D) >> 11 -- 53 bits
    return math.floor(r / 2 ^ 53 * N) + 1
  end
  local reps, m = {}, 0
  for b = 1, n do
    local idx, cs = {}, {}
    for i = 1, N do idx[i] = next_index() end
    for c = 1, #cols do
      local col, out = cols[c], {}
      for i = 1, N do out[i] = col[idx[i]] end
      cs[c] = out
    end
    reps[b] = call(cs)
    m = m + reps[b] / n
  end
  local v = 0
  for b = 1, n do v = v + (reps[b] - m) ^ 2 end
  return est, sqrt(v / (n - 1)), reps
end

--- diffuse.metrics.importance(logp, logq [, {log_z = exact, bootstrap = 1000, seed = 0}]) --> a
--- table: the importance-sampling diagnostics of samples of q against an unnormalised log p~ at
--- them: n, ess (ESS / N) and ess_se, log_z and log_z_se (both errors by the bootstrap;
--- bootstrap = 0: ess_se nil, log_z_se by the delta method), kl and kl_se (KL(q || p), p normalised
--- by the exact log Z when given, else by the estimate), and with log_z given, errors: (estimate -
--- exact) / log_z_se
function M.importance(logp, logq, opts)
  local fname = 'diffuse.metrics.importance'
  local p, q = pair(logp, logq, fname, 'logp', 'logq')
  opts = opts or {}
  if type(opts) ~= 'table' then error(fname .. ': options must be a table', 2) end
  for k in pairs(opts) do
    if k ~= 'log_z' and k ~= 'bootstrap' and k ~= 'seed' then error(fname .. ": unknown option '" .. tostring(k) .. "'", 2) end
  end
  local exact, nb = opts.log_z, opts.bootstrap or 1000
  if exact ~= nil and (type(exact) ~= 'number' or exact ~= exact or abs(exact) == huge) then
    error(fname .. ': log_z must be a finite number (got ' .. tostring(exact) .. ')', 2)
  end
  if math.type(nb) ~= 'integer' or nb == 1 or nb < 0 or nb > 1e7 then
    error(fname .. ': bootstrap must be 0 (none) or a whole number of resamples from 2 to 1e7 (got ' .. tostring(nb) .. ')', 2)
  end
  local lw = {}
  for i = 1, #p do lw[i] = p[i] - q[i] end
  local r = { n = #p }
  r.ess = M.ess(lw)
  r.log_z, r.log_z_se = M.log_z(p, q)
  if nb > 0 then
    local bo, est = { n = nb, seed = opts.seed }, nil
    est, r.ess_se = M.bootstrap(function(l) return (M.ess(l)) end, lw, bo)
    est, r.log_z_se = M.bootstrap(function(c) return (M.log_z(c[1], c[2])) end, { p, q }, bo)
  end
  local norm = exact or r.log_z
  local pn = {}
  for i = 1, #p do pn[i] = p[i] - norm end
  r.kl, r.kl_se = M.kl(q, pn)
  if exact then r.errors = (r.log_z - exact) / r.log_z_se end
  return r
end

return M
