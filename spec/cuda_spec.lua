-- spec/cuda_spec.lua: the CUDA backend against the CPU reference, op by op. Each test builds the
-- same inputs on both devices (made on the CPU and uploaded, or drawn from the same seed), runs
-- the operation on both and compares:
--   bitwise: random streams, fill/ramp, elementwise ops other than pow, histograms, min/max and
--            their indices, copies (both devices run the same dmath.h code, no fma contraction);
--   within a bound derived from the arithmetic: pow (one float32 rounding of a double pow),
--            reductions (double accumulation in another order, then one float32 rounding),
--            matmul (float32 sums of k products in another order).
-- Shapes exercise broadcasting, odd sizes and sizes past one block (1,000,003 elements).
-- Without a usable GPU every GPU test is pending, never failing; the first test runs anyway and
-- checks that diffuse.cuda loads and that set_device('cuda') fails cleanly.
local diffuse = require 'diffuse'
local tensor = diffuse.tensor

local EPS32 = 2.0 ^ -23 -- float32 epsilon (ulp of 1)
local EPS64 = 2.0 ^ -52
local TINY32 = 2.0 ^ -149 -- ulp of the subnormals
local BIG = 1000003 -- past one block of any kernel, and odd

local have_gpu, why_not = diffuse.cuda_available()

-- a GPU test: pending without a GPU; the device is back on the CPU afterwards
local function gpu_it(name, fn)
  it(name, function()
    if not have_gpu then pending(tostring(why_not)) end
    finally(function() diffuse.set_device('cpu') end)
    diffuse.set_device('cpu')
    fn()
  end)
end

-- ---- comparisons -------------------------------------------------------------------------------

-- the values of a tensor of any shape and device, flat
local function values(x)
  local n = x:numel()
  if n == 0 then return {} end
  return x:reshape(n):totable()
end

local function same_bits(a, b)
  if a ~= a then return b ~= b end
  if a == 0 and b == 0 then return 1 / a == 1 / b end -- +0 and -0 differ
  return a == b
end

local function check_pair(g, c, what)
  assert(c.device == 'cpu', what .. ': the reference is not on the CPU')
  assert(g.device:match('^cuda:%d+$'), what .. ': the result is on ' .. g.device)
  assert.are.same(c:shape(), g:shape(), what .. ': shapes differ')
end

-- g (CUDA) and c (CPU) hold the same float32 values, bit for bit
local function assert_bitwise(g, c, what)
  check_pair(g, c, what)
  local gv, cv = values(g), values(c)
  for i = 1, #cv do
    if not same_bits(gv[i], cv[i]) then
      assert(false, ('%s: element %d of %d differs: cuda %.9g, cpu %.9g'):format(what, i, #cv,
        gv[i], cv[i]))
    end
  end
end

-- |g[i] - c[i]| <= tol(i, c[i]); NaN where the other is NaN, infinities equal
local function assert_within(g, c, tol, what)
  check_pair(g, c, what)
  local gv, cv = values(g), values(c)
  for i = 1, #cv do
    local a, b = gv[i], cv[i]
    local ok
    if a ~= a or b ~= b then ok = a ~= a and b ~= b
    elseif a == b then ok = true
    else ok = math.abs(a - b) <= tol(i, b) end
    if not ok then
      assert(false, ('%s: element %d of %d: cuda %.9g, cpu %.9g, allowed difference %.3g')
        :format(what, i, #cv, a, b, tol(i, b)))
    end
  end
end

-- one number against another within tol
local function assert_num(g, c, tol, what)
  if g ~= g or c ~= c then
    assert(g ~= g and c ~= c, ('%s: cuda %.17g, cpu %.17g'):format(what, g, c))
  elseif g ~= c then
    assert(math.abs(g - c) <= tol, ('%s: cuda %.17g, cpu %.17g, allowed difference %.3g')
      :format(what, g, c, tol))
  end
end

-- reductions: both devices sum in double, in different orders. Recursive summation of m terms
-- errs by at most (m - 1) eps64 sum|x_i| against the exact sum, whatever the order, so two
-- results differ by at most 2 m eps64 sum|x_i|; a float32 result adds one rounding on each side
-- (eps32 |ref|).
local function sum_bound(m, sabs) return 2 * m * EPS64 * sabs end

-- ---- inputs ------------------------------------------------------------------------------------

-- a CPU tensor of normals times `scale`, and its copy on the GPU
local function randn_pair(shape, seed, scale)
  diffuse.set_device('cpu')
  diffuse.seed(seed)
  local c = tensor.randn(shape)
  if scale then c = c * scale end
  return c, c:to('cuda')
end

-- special values every elementwise op must treat the same way on both devices
local SPECIAL = { 0, -0.0, 1 / 0, -1 / 0, 0 / 0, 1e-40, -1e-40, 1e-30, 0.5, -0.5, 1, -1, 2.5,
                  88.7, 89.5, -103.9, -104.5, 1e30, -1e30, 1e6, -1e6, 3.14159265, 1e7, 7e37 }

local function special_pair()
  diffuse.set_device('cpu')
  local c = tensor.new(SPECIAL)
  return c, c:to('cuda')
end

-- ---- loading without a GPU (not pending: runs everywhere) --------------------------------------

describe('diffuse.cuda without a usable GPU', function()
  it('loads, reports why, and leaves the CPU working', function()
    local ok_mod, mod = pcall(require, 'diffuse.cuda')
    if ok_mod then
      for _, f in ipairs { 'available', 'device_count', 'empty_cache', 'memory_stats',
                           'synchronize' } do
        assert.is_function(mod[f], 'diffuse.cuda.' .. f)
      end
      local avail, reason = mod.available()
      assert.are.equal(have_gpu, avail)
      if not avail then
        assert.matches('^no usable CUDA device: ', reason)
        local n, why = mod.device_count()
        assert.are.equal(0, n)
        assert.are.equal(reason, why)
      end
      assert.is_table(mod.memory_stats())
    end
    if have_gpu then return end -- the GPU tests below cover this case
    assert.is_string(why_not)
    for _, args in ipairs { { 'cuda', 0 }, { 'cuda' }, { 'cuda:0' } } do
      local ok, err = pcall(diffuse.set_device, table.unpack(args))
      assert.is_false(ok)
      assert.matches('^diffuse%.set_device: ', err)
      assert.truthy(err:find('no usable CUDA device', 1, true) or
                    err:find('without CUDA', 1, true) or err:find('diffuse.cuda', 1, true), err)
    end
    local ok, err = pcall(tensor.ones(3).to, tensor.ones(3), 'cuda')
    assert.is_false(ok)
    assert.matches('^diffuse%.tensor%.to: ', err)
    -- the CPU keeps working
    assert.are.equal('cpu', diffuse.get_device())
    assert.matches('^Using device: cpu ', diffuse.summary())
    assert.are.equal(6, (tensor.ones(3) + 1):sum())
    diffuse.seed(3)
    assert.are.same({ 2, 2 }, tensor.randn(2, 2):shape())
  end)
end)

-- ---- the GPU tests -----------------------------------------------------------------------------

describe('cuda parity', function()
  gpu_it('set_device, get_device and summary name the GPU', function()
    diffuse.set_device('cuda', 0)
    assert.are.equal('cuda:0', diffuse.get_device())
    assert.matches('^Using device: cuda:0 %(.+%) with dtype: float32$', diffuse.summary())
    assert.are.equal('cuda:0', tensor.zeros(2).device)
    diffuse.set_device('cuda:0')
    assert.are.equal('cuda:0', diffuse.get_device())
    local n = diffuse.cuda.device_count()
    local ok, err = pcall(diffuse.set_device, 'cuda', n)
    assert.is_false(ok)
    assert.matches('^diffuse%.set_device: .*does not exist', err)
    diffuse.set_device('cpu')
    assert.are.equal('cpu', diffuse.get_device())
  end)

  gpu_it('randn and rand give bitwise the same numbers for the same seed', function()
    for _, n in ipairs { 1, 3, 4, 5, 1023, BIG } do
      for _, draw in ipairs { 'randn', 'rand' } do
        diffuse.set_device('cpu')
        diffuse.seed(1234)
        local c1, c2 = tensor[draw](n), tensor[draw](n) -- two streams
        diffuse.seed(1234)
        diffuse.set_device('cuda', 0)
        local g1, g2 = tensor[draw](n), tensor[draw](n)
        diffuse.set_device('cpu')
        assert_bitwise(g1, c1, ('%s(%d), stream 0'):format(draw, n))
        assert_bitwise(g2, c2, ('%s(%d), stream 1'):format(draw, n))
      end
    end
    -- the numbers depend on the element index only, not on the shape
    diffuse.seed(99)
    diffuse.set_device('cuda', 0)
    local g = tensor.randn(7, 3)
    diffuse.set_device('cpu')
    diffuse.seed(99)
    assert_bitwise(g:reshape(21), tensor.randn(21), 'randn(7, 3) against randn(21)')
  end)

  gpu_it('zeros, ones, full, linspace, arange and fill match', function()
    local function on_both(make, what)
      diffuse.set_device('cpu')
      local c = make()
      diffuse.set_device('cuda', 0)
      local g = make()
      diffuse.set_device('cpu')
      assert_bitwise(g, c, what)
    end
    on_both(function() return tensor.zeros(3, 5) end, 'zeros')
    on_both(function() return tensor.ones(BIG) end, 'ones')
    on_both(function() return tensor.full({ 2, 3, 4 }, 0.1) end, 'full')
    on_both(function() return tensor.zeros(0) end, 'empty')
    on_both(function() return tensor.linspace(-3, 7, BIG) end, 'linspace')
    on_both(function() return tensor.linspace(0, 1, 1) end, 'linspace of one')
    on_both(function() return tensor.arange(0, 100.5, 0.3) end, 'arange')
    on_both(function() return tensor.arange(BIG) end, 'arange(n)')
    on_both(function() local x = tensor.zeros(4, 1025); x:fill(-2.5); return x end, 'fill')
    on_both(function() local x = tensor.zeros(4, 33); x[3] = 7; return x end, 'row assignment')
  end)

  gpu_it('unary ops are bitwise equal (shared math, no fma)', function()
    local c, g = randn_pair({ BIG }, 11, 4)
    local cs, gs = special_pair()
    local cw, gw = randn_pair({ 33, 65 }, 12, 40) -- wide range: exp overflow, sin reduction
    for _, op in ipairs { 'neg', 'exp', 'log', 'sqrt', 'abs', 'sin', 'cos', 'tanh', 'silu',
                          'square', 'sigmoid', 'relu', 'gelu' } do
      assert_bitwise(g[op](g), c[op](c), op .. ' of normals')
      assert_bitwise(gs[op](gs), cs[op](cs), op .. ' of special values')
      assert_bitwise(gw[op](gw), cw[op](cw), op .. ' of wide values')
    end
    assert_bitwise(-g, -c, 'unary minus')
    assert_bitwise(gs:abs():log(), cs:abs():log(), 'log of |special|')
  end)

  -- shape pairs for broadcasting: same shapes, scalars, rows, columns, outer products, 4-d
  local BCAST = {
    { { BIG }, { BIG } }, { { 4096, 1 }, { 1 } }, { { 1 }, { 4096, 1 } }, { { 7, 1 }, { 1, 9 } },
    { { 5, 1, 3 }, { 4, 1 } }, { { 2, 3, 4, 5 }, { 3, 1, 5 } }, { { 2, 1, 4, 1 }, { 1, 3, 1, 5 } },
    { { 33, 65 }, { 65 } }, { { 1025, 3 }, { 1025, 1 } }, { { 3 }, { 1025, 1 } },
    { { 0, 3 }, { 3 } }, { { 1, 1 }, { 1 } },
  }

  gpu_it('+ - * / maximum minimum are bitwise equal, with broadcasting', function()
    for i, pair in ipairs(BCAST) do
      local ca, ga = randn_pair(pair[1], 100 + i)
      local cb, gb = randn_pair(pair[2], 200 + i)
      -- exact zeros in b: division by zero gives the same infinities and NaNs
      if cb:numel() > 2 then
        cb[1] = 0
        gb[1] = 0
      end
      local shapes = ('%s and %s'):format(table.concat(pair[1], 'x'), table.concat(pair[2], 'x'))
      assert_bitwise(ga + gb, ca + cb, 'add ' .. shapes)
      assert_bitwise(ga - gb, ca - cb, 'sub ' .. shapes)
      assert_bitwise(ga * gb, ca * cb, 'mul ' .. shapes)
      assert_bitwise(ga / gb, ca / cb, 'div ' .. shapes)
      assert_bitwise(gb / ga, cb / ca, 'div reversed ' .. shapes)
      assert_bitwise(ga:maximum(gb), ca:maximum(cb), 'maximum ' .. shapes)
      assert_bitwise(ga:minimum(gb), ca:minimum(cb), 'minimum ' .. shapes)
    end
    -- NaN and infinities propagate the same way
    local cs, gs = special_pair()
    local ct, gt = randn_pair({ #SPECIAL }, 7, 1e30)
    for _, op in ipairs { 'add', 'sub', 'mul', 'div', 'maximum', 'minimum' } do
      assert_bitwise(gs[op](gs, gt), cs[op](cs, ct), op .. ' of special values')
      assert_bitwise(gt[op](gt, gs), ct[op](ct, cs), op .. ' of special values, reversed')
    end
  end)

  gpu_it('tensor-scalar ops are bitwise equal on both sides', function()
    local c, g = randn_pair({ BIG }, 21, 3)
    assert_bitwise(2 * g, 2 * c, '2 * x')
    assert_bitwise(g * 2, c * 2, 'x * 2')
    assert_bitwise(g - 1, c - 1, 'x - 1')
    assert_bitwise(1 - g, 1 - c, '1 - x')
    assert_bitwise(g / 3, c / 3, 'x / 3')
    assert_bitwise(3 / g, 3 / c, '3 / x')
    assert_bitwise(g + 0.1, c + 0.1, 'x + 0.1')
    assert_bitwise(g:maximum(0.5), c:maximum(0.5), 'maximum(x, 0.5)')
    assert_bitwise(g:minimum(-0.5), c:minimum(-0.5), 'minimum(x, -0.5)')
    local cs, gs = special_pair()
    assert_bitwise(gs * 0, cs * 0, 'special * 0')
    assert_bitwise(1 / gs, 1 / cs, '1 / special')
  end)

  -- pow: the device's double pow rounded to float32 lands on the CPU's result or a neighbour
  local function pow_tol(_, ref) return EPS32 * math.abs(ref) + TINY32 end

  gpu_it('pow agrees within one float32 rounding, with broadcasting and scalars', function()
    diffuse.set_device('cpu')
    diffuse.seed(31)
    local base = tensor.rand(BIG) * 4 -- [0, 4)
    local ex = tensor.randn(BIG) * 3
    local gbase, gex = base:to('cuda'), ex:to('cuda')
    assert_within(gbase ^ gex, base ^ ex, pow_tol, 'pow of tensors')
    assert_within(gbase ^ 2, base ^ 2, pow_tol, 'x ^ 2')
    assert_within(gbase ^ 0.5, base ^ 0.5, pow_tol, 'x ^ 0.5')
    assert_within(2 ^ gex, 2 ^ ex, pow_tol, '2 ^ x')
    -- negative bases: integer exponents are defined, others NaN
    local nb = tensor.new { -2, -1.5, -0.0, 0, -3, 2, -1e-3, -7 }
    local ne = tensor.new { { 3 }, { 2 }, { -1 }, { 0.5 }, { -2 } }
    assert_within(nb:to('cuda') ^ ne:to('cuda'), nb ^ ne, pow_tol, 'pow broadcast 8 and 5x1')
    local cs, gs = special_pair()
    assert_within(gs ^ gs, cs ^ cs, pow_tol, 'pow of special values')
  end)

  gpu_it('sum, mean, var, std, min, max of a whole tensor agree', function()
    for _, shape in ipairs { { 1 }, { 7 }, { 1025 }, { BIG }, { 3, 333, 1001 } } do
      local c, g = randn_pair(shape, 41, 2)
      c = c + 0.75 -- a mean away from zero
      g = g + 0.75
      local n = c:numel()
      local what = table.concat(shape, 'x')
      local sabs, ssq = c:abs():sum(), c:square():sum()
      local sb = sum_bound(n, sabs)
      assert_num(g:sum(), c:sum(), sb, 'sum ' .. what)
      assert_num(g:mean(), c:mean(), sb / n, 'mean ' .. what)
      -- var = sum (x - mean)^2 / (n - 1): the second pass sums squares (bound on sum x^2 + the
      -- mean's own error entering 2 |x - mean| terms)
      local var = c:var()
      local vb = (sum_bound(n, ssq) + 2 * (sb / n) * (sabs + n * math.abs(c:mean()))) /
                 math.max(n - 1, 1)
      assert_num(g:var(), var, vb, 'var ' .. what)
      assert_num(g:std(), c:std(), var > 0 and vb / (2 * math.sqrt(var)) + EPS64 * math.sqrt(var)
                 or vb, 'std ' .. what)
      -- min and max are exact
      assert.are.equal(c:min(), g:min(), 'min ' .. what)
      assert.are.equal(c:max(), g:max(), 'max ' .. what)
    end
    -- NaN propagates; infinities are extrema
    local cs, gs = special_pair()
    assert.is_true(gs:min() ~= gs:min() and gs:max() ~= gs:max(), 'min/max with a NaN')
    assert.is_true(gs:sum() ~= gs:sum(), 'sum with a NaN')
    local ci = tensor.new { 1, -1 / 0, 3, 1 / 0, 2 }
    local gi = ci:to('cuda')
    assert.are.equal(-1 / 0, gi:min())
    assert.are.equal(1 / 0, gi:max())
    assert.is_true(gi:sum() ~= gi:sum(), 'inf - inf')
    assert.are.equal(-1 / 0, gi:minimum(0):sum())
  end)

  -- [outer, len, inner] layouts that take each path of the CUDA reduce_dim: the per-thread serial
  -- loop (short len; many outputs with inner >= 32) and a block per output (32 or 256 threads)
  local RDIM = {
    { { BIG }, 1 }, { { 37, 1025 }, 1 }, { { 37, 1025 }, 2 }, { { 3, 5, 7 }, 1 },
    { { 3, 5, 7 }, 2 }, { { 3, 5, 7 }, 3 }, { { 4096, 64 }, 1 }, { { 4096, 64 }, 2 },
    { { 64, 3000, 40 }, 2 }, { { 2, 3, 4, 5 }, 4 }, { { 2, 3, 4, 5 }, 1 }, { { 1, 1 }, 2 },
    { { 9000, 3 }, 1 },
  }

  gpu_it('sum, mean, var, std along a dimension agree within the summation bound', function()
    for i, case in ipairs(RDIM) do
      local shape, dim = case[1], case[2]
      local c, g = randn_pair(shape, 300 + i, 3)
      c = c + 1
      g = g + 1
      local len = shape[dim]
      local what = ('%s along %d'):format(table.concat(shape, 'x'), dim)
      local sabs = values(c:abs():sum(dim))
      local ssq = values(c:square():sum(dim))
      local means = values(c:mean(dim))
      local vars = values(c:var(dim))
      local function bsum(j) return sum_bound(len, sabs[j]) end
      local function bvar(j)
        local mb = bsum(j) / len
        return (sum_bound(len, ssq[j]) + 2 * mb * (sabs[j] + len * math.abs(means[j]))) /
               math.max(len - 1, 1)
      end
      assert_within(g:sum(dim), c:sum(dim), function(j, ref)
        return bsum(j) + EPS32 * math.abs(ref) end, 'sum ' .. what)
      assert_within(g:mean(dim), c:mean(dim), function(j, ref)
        return bsum(j) / len + EPS32 * math.abs(ref) end, 'mean ' .. what)
      assert_within(g:var(dim), c:var(dim), function(j, ref)
        return bvar(j) + EPS32 * math.abs(ref) end, 'var ' .. what)
      assert_within(g:std(dim), c:std(dim), function(j, ref)
        local v = vars[j]
        return (v > 0 and bvar(j) / (2 * math.sqrt(v)) or bvar(j)) + EPS32 * math.abs(ref)
      end, 'std ' .. what)
      assert_within(g:sum(dim, true), c:sum(dim, true), function(j, ref)
        return bsum(j) + EPS32 * math.abs(ref) end, 'sum keepdim ' .. what)
    end
  end)

  gpu_it('min and max along a dimension: same values and first-extremum indices', function()
    for i, case in ipairs(RDIM) do
      local shape, dim = case[1], case[2]
      -- small integers: many ties, so the index must be the first extremum
      diffuse.set_device('cpu')
      diffuse.seed(400 + i)
      local c = (tensor.rand(shape) * 7):add(-3.5):relu() -- many exact zeros
      c = c - (tensor.rand(shape) * 2):minimum(1) -- and -1s, zeros and fractions
      c = c:maximum(-1):minimum(2)
      local g = c:to('cuda')
      local what = ('%s along %d'):format(table.concat(shape, 'x'), dim)
      for _, op in ipairs { 'min', 'max' } do
        local cv, ci = c[op](c, dim)
        local gv, gi = g[op](g, dim)
        assert_bitwise(gv, cv, op .. ' values ' .. what)
        assert_bitwise(gi, ci, op .. ' indices ' .. what)
      end
    end
    -- NaN wins, at its first position
    local cn = tensor.new { { 1, 0 / 0, 3, 0 / 0 }, { 5, -2, 0 / 0, 1 }, { 2, 2, 1, 1 } }
    local gn = cn:to('cuda')
    for dim = 1, 2 do
      for _, op in ipairs { 'min', 'max' } do
        local cv, ci = cn[op](cn, dim)
        local gv, gi = gn[op](gn, dim)
        assert_bitwise(gv, cv, op .. ' with NaN along ' .. dim)
        assert_bitwise(gi, ci, op .. ' indices with NaN along ' .. dim)
      end
    end
  end)

  -- matmul: each C[i][j] is a float32 sum of k products on both devices, in any order (fma or
  -- not); either errs by at most gamma_k (|A||B|)_ij with gamma_k = k u / (1 - k u), u = eps32 / 2,
  -- so they differ by at most 2 gamma_k (|A||B|)_ij; |A||B| is itself computed in float32, so
  -- it is divided by (1 - gamma_k)
  local function check_matmul(ca, cb, what)
    local ga, gb = ca:to('cuda'), cb:to('cuda')
    local c = ca:matmul(cb)
    local bound = values(ca:abs():matmul(cb:abs()))
    local k = ca:size(ca:dim())
    local ku = k * EPS32 / 2
    local gamma = ku / (1 - ku)
    local scale = 2 * gamma / (1 - gamma)
    assert_within(ga:matmul(gb), c, function(j) return scale * bound[j] + TINY32 end,
      'matmul ' .. what)
  end

  gpu_it('matmul agrees within k eps32 |A||B|, batched and broadcast', function()
    local function rn(shape, seed)
      diffuse.set_device('cpu')
      diffuse.seed(seed)
      return tensor.randn(shape)
    end
    for i, mkn in ipairs { { 1, 1, 1 }, { 3, 5, 7 }, { 65, 129, 33 }, { 256, 256, 256 },
                           { 1000, 17, 3 }, { 4096, 8, 8 }, { 2, 3000, 2 } } do
      local m, k, n = mkn[1], mkn[2], mkn[3]
      check_matmul(rn({ m, k }, 500 + i), rn({ k, n }, 600 + i), ('%dx%dx%d'):format(m, k, n))
    end
    check_matmul(rn({ 4, 33, 17 }, 1), rn({ 4, 17, 9 }, 2), 'batched 4x33x17 4x17x9')
    check_matmul(rn({ 33, 17 }, 3), rn({ 4, 17, 9 }, 4), 'broadcast a: 33x17 4x17x9')
    check_matmul(rn({ 4, 33, 17 }, 5), rn({ 17, 9 }, 6), 'broadcast b: 4x33x17 17x9')
    check_matmul(rn({ 1, 33, 17 }, 7), rn({ 3, 17, 9 }, 8), 'batch 1 broadcast: 1x33x17 3x17x9')
    check_matmul(rn({ 17 }, 9), rn({ 17, 5 }, 10), 'vector x matrix')
    check_matmul(rn({ 5, 17 }, 11), rn({ 17 }, 12), 'matrix x vector')
    check_matmul(rn({ 1025 }, 13), rn({ 1025 }, 14), 'vector . vector')
    -- empty inner dimension: zeros
    diffuse.set_device('cpu')
    local za, zb = tensor.zeros(3, 0), tensor.zeros(0, 4)
    assert_bitwise(za:to('cuda'):matmul(zb:to('cuda')), za:matmul(zb), 'k = 0')
  end)

  gpu_it('histogram counts are identical', function()
    local c, g = randn_pair({ BIG }, 51)
    local function same_hist(opts, what)
      local cc, ce = c:histogram(opts)
      local gc, ge = g:histogram(opts)
      assert_bitwise(gc, cc, what .. ': counts')
      assert_bitwise(ge, ce, what .. ': edges')
    end
    same_hist({ bins = 50, min = -4, max = 4 }, '50 bins')
    same_hist({ bins = 50, min = -4, max = 4, density = true }, 'density')
    same_hist({ bins = 7 }, 'data range')
    same_hist({ bins = 10000, min = -3, max = 3 }, '10000 bins (global counters)')
    same_hist({ bins = 1, min = 0, max = 1 }, 'one bin')
    -- values on the edges (the last bin takes max), outside, infinite and NaN
    local ce = tensor.new { -1, -0.5, 0, 0.25, 0.5, 1, 1.5, 1 / 0, -1 / 0, 0 / 0, 0.9999999 }
    local cc = ce:histogram { bins = 4, min = -0.5, max = 1 }
    local gc = ce:to('cuda'):histogram { bins = 4, min = -0.5, max = 1 }
    assert_bitwise(gc, cc, 'edges')
    -- an empty tensor
    local z = tensor.zeros(0)
    assert_bitwise(z:to('cuda'):histogram { bins = 3, min = 0, max = 1 },
      z:histogram { bins = 3, min = 0, max = 1 }, 'empty')
  end)

  gpu_it('to, totable, item, indexing, views, cat, clone and print work from the GPU', function()
    local c, g = randn_pair({ 5, 7 }, 61)
    assert.are.equal('cuda:0', g.device)
    assert.are.same(c:totable(), g:totable())
    assert.are.same(c:totable(), g:to('cpu'):totable())
    assert.are.equal('cpu', g:to('cpu').device)
    assert.are.equal(g, g:to('cuda:0')) -- already there: the same tensor
    assert.are.equal(c[2][3], g[2][3])
    assert.are.equal(c:sum(1)[4], g:sum(1)[4]) -- 5 terms: the serial loop, as the CPU's
    assert_num(g[5]:sum(), c[5]:sum(), sum_bound(7, c[5]:abs():sum()), 'sum of a row view')
    assert.are.equal(tensor.new { 2.5 }:to('cuda'):item(), 2.5)
    assert_bitwise(g[3], c[3], 'row view')
    assert_bitwise(g:reshape(35), c:reshape(35), 'reshape')
    assert_bitwise(g:clone(), c:clone(), 'clone')
    assert_bitwise(g[2]:clone(), c[2]:clone(), 'clone of a view (offset)')
    assert_bitwise(g[2]:exp(), c[2]:exp(), 'op on a view (unaligned)')
    local c2, g2 = randn_pair({ 5, 3 }, 62)
    assert_bitwise(tensor.cat({ g, g2 }, 2), tensor.cat({ c, c2 }, 2), 'cat along 2 (copy2d)')
    assert_bitwise(tensor.cat({ g, g }, 1), tensor.cat({ c, c }, 1), 'cat along 1')
    local c3, g3 = randn_pair({ 3, 2, 4000 }, 63)
    assert_bitwise(tensor.cat({ g3, g3, g3 }, 2), tensor.cat({ c3, c3, c3 }, 2), 'cat of wide rows')
    -- copies across devices
    local dst = tensor.zeros(5, 7):to('cuda')
    dst:copy(c)
    assert_bitwise(dst, c, 'copy cpu -> cuda')
    local back = tensor.zeros(5, 7)
    back:copy(g)
    assert_bitwise(g, back, 'copy cuda -> cpu')
    g[1] = c[2]
    c[1] = c[2]
    assert_bitwise(g, c, 'row assigned from a CPU row')
    -- print: the same text, the device named
    local ts, tc = tostring(g), tostring(c)
    assert.truthy(ts:find('on cuda:0]', 1, true), ts)
    assert.are.equal(tc, (ts:gsub('on cuda:0%]', 'on cpu]')))
    local big = tensor.linspace(0, 1, BIG)
    assert.are.equal(tostring(big), (tostring(big:to('cuda')):gsub('on cuda:0%]', 'on cpu]')))
  end)

  gpu_it('mixing devices in one operation is a clear error', function()
    local c, g = randn_pair({ 4, 3 }, 71)
    local cases = {
      { 'add', function() return c + g end },
      { 'mul', function() return g * c end },
      { 'maximum', function() return g:maximum(c) end },
      { 'matmul', function() return c:matmul(g:reshape(3, 4)) end },
      { 'cat', function() return tensor.cat({ c, g }, 1) end },
    }
    for _, case in ipairs(cases) do
      local ok, err = pcall(case[2])
      assert.is_false(ok, case[1])
      assert.matches('diffuse%.tensor%.' .. case[1] .. ': tensors are on different devices %(', err)
      assert.truthy(err:find('cpu', 1, true) and err:find('cuda:0', 1, true), err)
    end
    assert.are.equal(12, (c:abs() + 1):numel()) -- both still work
    assert.are.equal(12, (g:abs() + 1):numel())
  end)

  gpu_it('the caching allocator reuses blocks and empty_cache returns them', function()
    local cuda = diffuse.cuda
    diffuse.set_device('cuda', 0)
    diffuse.seed(5)
    local x = tensor.randn(1000)
    local function step() -- every temporary closed at once, as a careful loop would
      local a <close> = x * 2
      local y <close> = a + 1
      local z <close> = y:exp()
      return z:sum() -- a reduction's scratch block too
    end
    step()
    collectgarbage() -- tensors of earlier tests go back to the cache now, not during the loop
    collectgarbage()
    cuda.synchronize()
    local before = cuda.memory_stats()
    for _ = 1, 200 do step() end
    local after = cuda.memory_stats()
    assert.are.equal(before.cuda_malloc_calls, after.cuda_malloc_calls,
      'a loop of small ops called cudaMalloc')
    assert.is_true(after.cache_hits >= before.cache_hits + 200 * 3)
    assert.are.equal(before.bytes_in_use, after.bytes_in_use, 'blocks leaked')
    assert.is_true(after.bytes_cached > 0)
    -- tensors freed by the collector come back too
    for _ = 1, 50 do local _ = x + 1 end
    collectgarbage()
    collectgarbage()
    assert.are.equal(before.bytes_in_use, cuda.memory_stats().bytes_in_use)
    -- empty_cache gives every cached block back; live tensors stay usable
    local xc = x:to('cpu')
    local frees = cuda.memory_stats().cuda_free_calls
    cuda.empty_cache()
    local st = cuda.memory_stats()
    assert.are.equal(0, st.bytes_cached)
    assert.are.equal(0, st.blocks_cached)
    assert.is_true(st.cuda_free_calls > frees)
    assert.is_true(st.bytes_in_use > 0) -- x
    cuda.empty_cache(0)
    assert_bitwise(x, xc, 'a live tensor after empty_cache')
    -- rounding: small requests to 512 B, so a 1-element tensor takes one class
    local one <close> = tensor.zeros(1)
    assert.are.equal(st.bytes_in_use + 512, cuda.memory_stats().bytes_in_use)
    -- argument checks name the function
    local ok, err = pcall(cuda.memory_stats, 'x')
    assert.is_false(ok)
    assert.matches('^diffuse%.cuda%.memory_stats: ', err)
    ok, err = pcall(cuda.synchronize, -1)
    assert.is_false(ok)
    assert.matches('^diffuse%.cuda%.synchronize: ', err)
  end)

  gpu_it('running out of GPU memory is a Lua error, and the device keeps working', function()
    diffuse.set_device('cuda', 0)
    local ok, err = pcall(tensor.zeros, 1 << 38) -- 1 TiB
    assert.is_false(ok)
    assert.matches('^diffuse%.tensor%.zeros: cuda alloc: out of memory allocating .* MiB on cuda:0',
      err)
    assert.are.equal(6, (tensor.ones(3) + 1):sum())
    diffuse.set_device('cpu')
    assert.are.equal(6, (tensor.ones(3) + 1):sum())
  end)

  gpu_it('tensors past 2^31 elements (64-bit indexing)', function()
    diffuse.set_device('cuda', 0)
    local n = (1 << 31) + 6 -- 8.6 GB a tensor; about 26 GB at the peak
    local ok, err = pcall(function()
      local x <close> = tensor.ones(n // 2, 2)
      local b <close> = tensor.new { 1, 2 }
      assert.are.equal(n, x:sum())
      assert.are.equal(1, x:min())
      do
        local y <close> = x + b -- the 64-bit broadcast path: rows of 2 + a row
        assert.are.equal((n // 2) * 5, y:sum())
        assert.are.equal(3, y:max())
        local v <close>, at = y:max(2)
        assert.are.equal(2 * (n // 2), at:sum())
        at:free()
      end
      do
        local z <close> = x:exp() -- a flat elementwise kernel
        local e = tensor.ones(1):to('cpu'):exp():item() -- the CPU's exp(1)
        assert.are.equal(e, z[1][1])
        assert.are.equal(e, z[n // 2][2]) -- the last element: past 2^31
      end
    end)
    diffuse.cuda.empty_cache()
    if not ok then
      if tostring(err):find('out of memory', 1, true) then
        pending('not enough GPU memory: ' .. tostring(err))
      end
      error(err, 0)
    end
  end)
end)
