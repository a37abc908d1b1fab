-- spec/dmath_spec.lua: accuracy of the per-element math of native/dmath.h through the tensor
-- unary ops, against Lua's double math (glibc, well under one double ulp) on dense grids and
-- edge cases; and that the header compiles as strict C99 and under nvcc.
--
-- Accuracy claim (dmath.h): within 2 float32 ulps of the correctly rounded result for exp, log,
-- tanh, and for sin, cos with |x| < 1e6. An ulp here is the float32 ulp of f32(reference).
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local tensor = diffuse.tensor
local f32 = H.f32

local E = 2.0 ^ -24 -- float32 unit roundoff: one rounding is within E relative

-- tanh in double: Lua has no math.tanh. e / (e + 2) with e = expm1(2|x|); expm1 by its Taylor
-- series below 1 (no cancellation), exp(y) - 1 above (no cancellation either)
local function ltanh(x)
  if x ~= x then return x end
  local a = math.abs(x)
  if a > 20 then return x > 0 and 1.0 or -1.0 end
  local y, e = 2 * a
  if y < 1 then
    local s, term = 0, 1
    for n = 1, 30 do
      term = term * y / n
      s = s + term
    end
    e = s
  else
    e = math.exp(y) - 1
  end
  local t = e / (e + 2)
  if x < 0 or (x == 0 and 1 / x < 0) then return -t end
  return t
end

local function lsigmoid(x) return 1 / (1 + math.exp(-x)) end

-- float32 values: a sweep over bit patterns (every binade, both signs; each binade gets
-- 2^23 / step values) and linear grids
local sweeps = {}
local function sweep(step)
  if not sweeps[step] then
    local t = {}
    for u = 0, 0x7f7fffff, step do
      local v = H.from_bits32(u)
      t[#t + 1] = v
      t[#t + 1] = -v
    end
    sweeps[step] = t
  end
  return table.move(sweeps[step], 1, #sweeps[step], 1, {})
end

local function grid(a, b, n, into)
  into = into or {}
  for i = 0, n - 1 do into[#into + 1] = f32(a + (b - a) * i / (n - 1)) end
  return into
end

local function apply(name, xs)
  return tensor[name](tensor.new(xs)):totable()
end

-- assert every result within maxulp of the reference; report the worst one otherwise
local function check_ulps(name, xs, ref, maxulp)
  local ys = apply(name, xs)
  local worst, wi = 0, nil
  for i, x in ipairs(xs) do
    local e = H.ulp_err(ys[i], ref(x))
    if e > worst then worst, wi = e, i end
  end
  if worst > maxulp then
    error(('%s: %.3g ulp at x = %.9g (got %.9g, reference %.17g)'):format(
      name, worst, xs[wi], ys[wi], ref(xs[wi])), 2)
  end
  return worst
end

-- edge values: each result compared bitwise (the sign of zero counts; any NaN is NaN)
local function check_edges(name, cases)
  local xs, want = {}, {}
  for i, c in ipairs(cases) do xs[i], want[i] = c[1], c[2] end
  local ys = apply(name, xs)
  for i = 1, #xs do
    local w, y = want[i], ys[i]
    local ok
    if w ~= w then ok = y ~= y else ok = H.bits32(y) == H.bits32(f32(w)) end
    if not ok then
      error(('%s(%.9g) = %.9g, expected %.9g'):format(name, xs[i], y, w), 2)
    end
  end
end

local INF, NAN = math.huge, 0 / 0
local TINY = H.FLT_TRUE_MIN   -- smallest subnormal
local DEN = f32(1e-40)        -- a subnormal
local HUGE = H.FLT_MAX

describe('dmath accuracy, <= 2 ulp', function()
  it('exp over every binade and a dense grid of [-110, 100]', function()
    local xs = grid(-110, 100, 50001, sweep(32749))
    grid(-1, 1, 20001, xs)
    check_ulps('exp', xs, math.exp, 2)
  end)

  it('log over every positive binade (subnormals too), a dense grid and around 1', function()
    local xs = {}
    for u = 1, 0x7f7fffff, 16381 do xs[#xs + 1] = H.from_bits32(u) end
    grid(0, 4, 50001, xs)
    for k = -2000, 2000 do xs[#xs + 1] = f32(1 + k * 2 ^ -24) end
    for k = 1, 200 do xs[#xs + 1] = H.from_bits32(k) end -- the smallest subnormals
    check_ulps('log', xs, math.log, 2)
  end)

  it('tanh over every binade and a dense grid of [-10, 10]', function()
    local xs = grid(-10, 10, 50001, sweep(32749))
    grid(-0.6, 0.6, 20001, xs) -- around the switch between the series and expm1
    check_ulps('tanh', xs, ltanh, 2)
  end)

  for _, fn in ipairs { { 'sin', math.sin }, { 'cos', math.cos } } do
    it(fn[1] .. ' for |x| < 1e6: binades, dense grids, near multiples of pi/2', function()
      local xs = {}
      for _, v in ipairs(sweep(32749)) do if math.abs(v) < 1e6 then xs[#xs + 1] = v end end
      grid(-20, 20, 50001, xs)
      grid(-1e6, 1e6, 50001, xs)
      -- the float32 neighbours of k pi/2, where the result is smallest relative to x
      for k = 1, 2000, 7 do
        local c = f32(k * math.pi / 2)
        local u = H.bits32(c)
        for d = -2, 2 do
          xs[#xs + 1] = H.from_bits32(u + d)
          xs[#xs + 1] = -H.from_bits32(u + d)
        end
      end
      check_ulps(fn[1], xs, fn[2], 2)
    end)

    it(fn[1] .. ' beyond 1e6 stays in [-1, 1]; inf and nan give nan', function()
      local xs = grid(1e6, 1e30, 20001)
      grid(-3e38, -1e6, 20001, xs)
      xs[#xs + 1] = HUGE
      xs[#xs + 1] = -HUGE
      local ys = apply(fn[1], xs)
      for i = 1, #xs do
        if not (ys[i] >= -1 and ys[i] <= 1) then
          error(('%s(%.9g) = %.9g'):format(fn[1], xs[i], ys[i]))
        end
      end
      local e = apply(fn[1], { INF, -INF, NAN })
      for i = 1, 3 do assert.is_true(H.isnan(e[i])) end
    end)
  end
end)

describe('dmath edge cases', function()
  it('exp', function()
    check_edges('exp', { { 0.0, 1 }, { -0.0, 1 }, { TINY, 1 }, { -DEN, 1 }, { 1e-30, 1 },
      { INF, INF }, { -INF, 0 }, { NAN, NAN }, { 89, INF }, { 1e30, INF }, { HUGE, INF },
      { -104, 0 }, { -1e30, 0 }, { -HUGE, 0 }, { 1, f32(math.exp(1)) } })
    -- subnormal results within 2 ulp (absolute 2^-148)
    check_ulps('exp', { -87.5, -90, -95, -100, -103, -103.9 }, math.exp, 2)
  end)

  it('log', function()
    check_edges('log', { { 0.0, -INF }, { -0.0, -INF }, { 1, 0 }, { INF, INF }, { -1, NAN },
      { -TINY, NAN }, { -INF, NAN }, { NAN, NAN } })
    check_ulps('log', { TINY, DEN, 1e-30, HUGE, H.FLT_MIN, f32(math.exp(1)), 2, 0.5 }, math.log, 2)
  end)

  it('sqrt, square, abs, neg are exact (IEEE)', function()
    local xs = grid(-5, 5, 2001, sweep(65521))
    for _, v in ipairs { 0.0, -0.0, TINY, DEN, 1e-30, 1e30, HUGE, INF, -INF, NAN } do
      xs[#xs + 1] = v
    end
    local sq, sr, ab, ng = apply('square', xs), apply('sqrt', xs), apply('abs', xs), apply('neg', xs)
    for i, x in ipairs(xs) do
      local function same(got, want, what)
        local ok
        if want ~= want then ok = got ~= got else ok = H.bits32(got) == H.bits32(f32(want)) end
        if not ok then error(('%s(%.9g) = %.9g, expected %.9g'):format(what, x, got, want)) end
      end
      same(sq[i], x * x, 'square')
      -- sqrt in double rounded to float32 is the correctly rounded float32 sqrt; sqrt(-0) = -0
      same(sr[i], x < 0 and NAN or (x == 0 and x or math.sqrt(x)), 'sqrt')
      same(ab[i], math.abs(x), 'abs')
      same(ng[i], -x, 'neg')
    end
  end)

  it('sin, cos, tanh', function()
    check_edges('sin', { { 0.0, 0.0 }, { -0.0, -0.0 }, { TINY, TINY }, { -DEN, -DEN },
      { 1e-30, f32(1e-30) }, { NAN, NAN } })
    check_edges('cos', { { 0.0, 1 }, { -0.0, 1 }, { TINY, 1 }, { 1e-30, 1 }, { NAN, NAN } })
    check_edges('tanh', { { 0.0, 0.0 }, { -0.0, -0.0 }, { TINY, TINY }, { -DEN, -DEN },
      { 1e-30, f32(1e-30) }, { 10, 1 }, { -10, -1 }, { 1e30, 1 }, { -HUGE, -1 }, { INF, 1 },
      { -INF, -1 }, { NAN, NAN } })
  end)
end)

describe('activations against their formulas', function()
  local xs = grid(-120, 120, 24001, sweep(65521))
  grid(-6, 6, 12001, xs)
  for _, v in ipairs { 0.0, -0.0, TINY, -DEN, 1e-30, 1e30, -1e30 } do xs[#xs + 1] = v end

  it('relu is max(x, 0) exactly', function()
    local ys = apply('relu', xs)
    for i, x in ipairs(xs) do
      local w = x < 0 and 0.0 or x
      if H.bits32(w) ~= H.bits32(ys[i]) then error(('relu(%.9g) = %.9g'):format(x, ys[i])) end
    end
    check_edges('relu', { { INF, INF }, { -INF, 0 }, { NAN, NAN } })
  end)

  -- sigmoid = 1 / (1 + exp(-x)): exp within 2 ulp (4E relative), then one addition and one
  -- division: within 6E relative, plus the absolute 2^-149 of a subnormal result. Below x = -87
  -- the sigmoid's e^x is flushed to 0 (dmath.h: one power of two, no subnormal results), so there
  -- the result may be 0 (the true value is < 1.7e-38); nowhere else.
  local function sig_tol(x, ref)
    if x < -87 then return math.abs(ref) end
    return 6 * E * math.abs(ref) + 2 ^ -149
  end

  it('sigmoid is 1 / (1 + exp(-x)) within 6 roundings', function()
    local ys = apply('sigmoid', xs)
    for i, x in ipairs(xs) do
      local ref = lsigmoid(x)
      if not (math.abs(ys[i] - ref) <= sig_tol(x, ref)) then
        error(('sigmoid(%.9g) = %.9g, formula %.17g'):format(x, ys[i], ref))
      end
    end
    check_edges('sigmoid', { { 0, 0.5 }, { INF, 1 }, { -INF, 0 }, { NAN, NAN }, { 100, 1 } })
  end)

  -- NaNs whose payload has low bits set: the sigmoid's e^-|x| builds 2^k from the low bits of a
  -- float that a NaN input turns into a NaN with the same payload (dmath.h, df_expnegf)
  local PAYLOADS = { 0x7fc00001, 0x7fc001ff, 0xffc0abcd, 0x7fffffff, 0xffffffff, 0x7fc3ff00 }
  it('sigmoid and silu of NaNs with any payload are NaN', function()
    for _, name in ipairs { 'sigmoid', 'silu' } do
      local cases = {}
      for _, u in ipairs(PAYLOADS) do cases[#cases + 1] = { H.from_bits32(u), NAN } end
      check_edges(name, cases)
    end
  end)

  it('silu is x * sigmoid(x) within the sigmoid bound and one more rounding', function()
    local ys = apply('silu', xs)
    for i, x in ipairs(xs) do
      local s = lsigmoid(x)
      local ref = x * s
      local tol = math.abs(x) * sig_tol(x, s) + E * math.abs(ref) + 2 ^ -149
      if not (math.abs(ys[i] - ref) <= tol) then
        error(('silu(%.9g) = %.9g, formula %.17g'):format(x, ys[i], ref))
      end
    end
    check_edges('silu', { { 0, 0 }, { INF, INF }, { NAN, NAN }, { 100, 100 } })
  end)

  -- gelu, tanh form (dmath.h): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
  -- u in float32: about 6 roundings (6E|u|, the float constants included); tanh within 2 ulp
  -- (4E|t|) plus the propagated (1 - t^2) 6E|u|; 1 + t one rounding (2E); the product one more.
  it('gelu is the tanh form within its derived error bound', function()
    local c = math.sqrt(2 / math.pi)
    local ys = apply('gelu', xs)
    for i, x in ipairs(xs) do
      local u = c * (x + 0.044715 * x * x * x)
      local t = ltanh(u)
      local ref = 0.5 * x * (1 + t)
      if ref ~= ref then
        if ys[i] == ys[i] then error(('gelu(%.9g) = %.9g, formula nan'):format(x, ys[i])) end
      else
        local tol = 0.5 * math.abs(x) * E * (4 * math.abs(t) + 6 * math.abs(u) * (1 - t * t) + 2)
                    + E * math.abs(ref) + 2 ^ -149
        if not (math.abs(ys[i] - ref) <= tol) then
          error(('gelu(%.9g) = %.9g, formula %.17g, tolerance %.3g'):format(x, ys[i], ref, tol))
        end
      end
    end
    check_edges('gelu', { { 0, 0 }, { INF, INF }, { NAN, NAN }, { 100, 100 } })
    -- the tanh form, not the erf form: they differ by about 1.5e-4 at x = -1.5... but the tanh
    -- form is what the formula above checks; at x = 1 it is 0.841191990...
    assert.is_true(math.abs(tensor.new({ 1 }):gelu():item() - 0.8411919906082768) <= 4 * E)
  end)
end)

describe('dmath.h compiles', function()
  local function readall(path)
    local f = io.open(path, 'r')
    if not f then return '' end
    local s = f:read('a')
    f:close()
    return s
  end

  local function compile(cmd, src, ext)
    local base = os.tmpname()
    local file, obj, log = base .. ext, base .. '.o', base .. '.log'
    local f = assert(io.open(file, 'w'))
    f:write(src)
    f:close()
    local ok = os.execute(cmd:format(file, obj) .. ' > ' .. log .. ' 2>&1')
    local out = readall(log)
    os.remove(file)
    os.remove(obj)
    os.remove(log)
    os.remove(base)
    return ok, out
  end

  -- every function of the header, used so that nothing is optimised out
  local BODY = [[
  uint32_t ctr[4] = { 1u, 2u, 3u, 4u }, key[2] = { 5u, 6u }, w[4];
  float z[4], s, c, acc = 0.0f;
  df_philox4x32_10(ctr, key, w);
  df_philox_block(7u, 8u, 9u, w);
  df_normal4(w, z);
  df_box_muller(w[0], w[1], &z[0], &z[1]);
  df_sincosf(x, &s, &c);
  df_sincos2pi(df_u01(w[2]), &s, &c);
  acc += s + c + z[0] + z[1] + z[2] + z[3];
  acc += df_expf(x) + df_expm1f(x) + df_logf(x) + df_sinf(x) + df_cosf(x) + df_tanhf(x);
  acc += df_sigmoidf(x) + df_siluf(x) + df_reluf(x) + df_geluf(x) + df_pow2i(3);
  acc += df_from_bits(df_to_bits(x));
  acc += df_unary_apply(DF_EXP, x) + df_binary_apply(DF_POW, x, 2.0f);
  acc += df_rand_at(1u, 2u, 3u) + df_randn_at(1u, 2u, 3u);
]]

  -- #nosan: a preloaded sanitizer runtime would also check the compilers themselves
  it('as strict C99: gcc -std=c99 -pedantic -Wall -Wextra -Werror #nosan', function()
    local src = '#include "dmath.h"\n\nfloat use_all(float x);\nfloat use_all(float x)\n{\n'
                .. BODY .. '  return acc;\n}\n'
    local ok, out = compile('gcc -std=c99 -pedantic -Wall -Wextra -Werror -Inative -c %s -o %s',
                            src, '.c')
    assert.is_true(ok == true, 'gcc failed:\n' .. out)
  end)

  it('under nvcc in a __global__ kernel (-Werror all-warnings, compile only) #nosan', function()
    local nvcc
    if os.execute('command -v nvcc > /dev/null 2>&1') then
      nvcc = 'nvcc'
    elseif io.open('/usr/local/cuda/bin/nvcc', 'r') then
      nvcc = '/usr/local/cuda/bin/nvcc'
    end
    if not nvcc then
      pending('no nvcc')
      return
    end
    local src = '#include "dmath.h"\n\n__global__ void use_all(float *out, const float *in, int n)\n{\n'
                .. '  int i = blockIdx.x * blockDim.x + threadIdx.x;\n  if (i >= n) return;\n'
                .. '  float x = in[i];\n' .. BODY .. '  out[i] = acc;\n}\n'
    local ok, out = compile(nvcc .. ' -std=c++17 -fmad=false -Werror all-warnings -arch=sm_80 '
                            .. '-Inative -c %s -o %s', src, '.cu')
    assert.is_true(ok == true, 'nvcc failed:\n' .. out)
  end)
end)
