-- spec/support/normal.lua: erf, erfc and the normal distribution (pdf, cdf, quantile) in plain
-- Lua, for checking diffuse.metrics against closed forms. erf: ~1e-16 absolute; erfc: ~1e-16
-- absolute below 2.5 (where it is 1 - erf) and ~1e-15 relative above, far into the tail.
local N = {}

local exp, sqrt, abs, pi = math.exp, math.sqrt, math.abs, math.pi

-- erf(x) = 2/sqrt(pi) exp(-x^2) Σ_{k>=0} 2^k x^(2k+1) / (1·3···(2k+1)): all terms positive, so
-- no cancellation; used for |x| < 2.5.
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

-- erfc(x) for x >= 2.5: exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))),
-- evaluated by the modified Lentz method.
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

function N.erf(x)
  if x ~= x then return x end
  if abs(x) < 2.5 then return erf_series(x) end
  local c = erfc_cf(abs(x))
  return x > 0 and 1 - c or c - 1
end

function N.erfc(x)
  if x ~= x then return x end
  if x >= 2.5 then return erfc_cf(x) end
  if x <= -2.5 then return 2 - erfc_cf(-x) end
  return 1 - erf_series(x)
end

-- N(mu, s^2)
function N.pdf(x, mu, s)
  mu, s = mu or 0, s or 1
  local z = (x - mu) / s
  return exp(-0.5 * z * z) / (s * sqrt(2 * pi))
end

function N.cdf(x, mu, s)
  mu, s = mu or 0, s or 1
  return 0.5 * N.erfc(-(x - mu) / (s * sqrt(2)))
end

-- quantile by Newton on the cdf from a bisection bracket (only used to test the quantile path)
function N.quantile(p, mu, s)
  mu, s = mu or 0, s or 1
  if p <= 0 then return -math.huge elseif p >= 1 then return math.huge end
  local lo, hi = -40, 40
  for _ = 1, 200 do
    local m = 0.5 * (lo + hi)
    if N.cdf(m) < p then lo = m else hi = m end
    if hi - lo < 1e-15 * (1 + abs(m)) then break end
  end
  return mu + s * 0.5 * (lo + hi)
end

-- curried helpers: normal.cdf_of(mu, s) --> function(x)
function N.cdf_of(mu, s) return function(x) return N.cdf(x, mu, s) end end
function N.quantile_of(mu, s) return function(p) return N.quantile(p, mu, s) end end

return N
