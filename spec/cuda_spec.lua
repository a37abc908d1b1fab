-- spec/cuda_spec.lua: the CUDA backend against the CPU reference, op by op. Each test builds the
-- same inputs on both devices (made on the CPU and uploaded, or drawn from the same seed), runs
-- the operation on both and compares:
--   bitwise: random streams, fill/ramp, elementwise ops other than pow, histograms, min/max and
--            their indices, copies (both devices run the same dmath.h code, no fma contraction);
--   within a bound derived from the arithmetic: pow (one float32 rounding of a double pow),
--            reductions (double accumulation in another order, then one float32 rounding),
--            matmul (float32 sums of k products in another order).
-- Then the diffusion operations (all bitwise: diffuser values, scores, log-densities, mixture
-- draws, fused and step-by-step sampler runs with their recorded paths) and the networks: forward
-- bitwise unless cuBLAS computes a layer, gradients and DSM losses within bounds derived from the
-- summation order (and, with cuBLAS layers, each layer's rounding carried through the net), Adam
-- bitwise, a 50-step training run within a first-order drift budget, the training graphs against
-- the plain loop bitwise on the GPU, and a checkpoint from the GPU loaded on the CPU; composed
-- networks; then the solvers (every method and grid, divergences, likelihoods, log q), bitwise.
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

-- a GPU test: pending without a GPU (failing instead where DIFFUSE_EXPECT_CUDA is set: `make
-- test-cuda` and the emulation, where a module that does not load must not pass as pending); the
-- device is back on the CPU afterwards
local expect_cuda = (os.getenv('DIFFUSE_EXPECT_CUDA') or '') ~= ''
local function gpu_it(name, fn)
  it(name, function()
    if not have_gpu then
      assert(not expect_cuda, 'DIFFUSE_EXPECT_CUDA is set, but: ' .. tostring(why_not))
      pending(tostring(why_not))
    end
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
      assert.matches("^diffuse%.set_device: device 'cuda' is not available: ", err)
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

  gpu_it('unary ops are bitwise equal (shared math, only written-out fmas)', function()
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

-- ---- diffusion (kernels/cuda_diffusion.cu): bitwise the CPU's --------------------------------
-- The kernels call the same dmath.h formulas in the same order (fmas only where written out),
-- draw the same Philox numbers (reverse-SDE noise: normal number k n + i of the run's stream) and
-- reduce nothing across threads, so diffuser values, scores, log-densities, draws and whole sampler runs, fused or step
-- by step, recorded paths included, are bitwise the CPU's.

local function mixtures(ve)
  local big = { weights = {}, means = {}, stds = {} } -- parameters too large to stage in shared memory
  for j = 1, 3000 do
    big.weights[j] = 1 + (j % 7)
    big.means[j] = (j % 101) / 10 - 5
    big.stds[j] = 0.1 + (j % 13) / 10
  end
  return {
    { 1, diffuse.score.mixture(ve, { weights = { 1, 3 }, means = { -2, 2 }, stds = { 0.3, 0.5 } }) },
    { 2, diffuse.score.mixture(ve, { weights = { 1, 1, 2 }, means = { { -1, 0 }, { 1, 2 }, { 0, -3 } },
                                     stds = { 0.3, 0.3, 1 } }) },
    { 3, diffuse.score.mixture(ve, { weights = { 2, 1 }, means = { { -1, 0, 1 }, { 1, 2, 0 } },
                                     stds = { 0.5, 0.2 } }) },
    { 5, diffuse.score.mixture(ve, { weights = { 1, 1 }, means = { { 1, 2, 3, 4, 5 }, { 0, 0, 0, 0, 0 } },
                                     stds = { 1, 0.1 } }) }, -- wider than the specialised kernels
    { 1, diffuse.score.mixture(ve, big), 'of 3000 components' },
  }
end

describe('cuda diffusion parity', function()
  gpu_it('diffuser values g, sigma, sigma^2 are bitwise the CPU\'s', function()
    diffuse.seed(801)
    local t = tensor.cat({ tensor.rand(BIG) * 1.5, tensor.new { 0, 1, 1e-30, 0.5, 2, 10 } })
    local gt = t:to('cuda')
    for _, D in ipairs { diffuse.ve(1.1), diffuse.ve(1), diffuse.ve(25), diffuse.power(2, 0.5),
                         diffuse.power(1.5, 0), diffuse.power(0.7, -0.3) } do
      assert_bitwise(D:g(gt), D:g(t), tostring(D) .. ': g')
      assert_bitwise(D:sigma(gt), D:sigma(t), tostring(D) .. ': sigma')
      assert_bitwise(D:sigma2(gt), D:sigma2(t), tostring(D) .. ': sigma2')
    end
  end)

  gpu_it('exact and mixture scores and log-densities are bitwise the CPU\'s', function()
    local ve = diffuse.ve(1.1)
    local exact = diffuse.score.exact(ve)
    for _, d in ipairs { 1, 3 } do
      local c, g = randn_pair({ BIG // d, d }, 802 + d, 2)
      local ct = tensor.rand(BIG // d) + 0.01
      local gt = ct:to('cuda')
      assert_bitwise(exact(g, 0.37), exact(c, 0.37), 'exact score, one t, d = ' .. d)
      assert_bitwise(exact(g, gt), exact(c, ct), 'exact score, t per row, d = ' .. d)
    end
    for i, m in ipairs(mixtures(ve)) do
      local d, mix = m[1], m[2]
      local what = ('mixture %d in R^%d%s'):format(i, d, m[3] and ' ' .. m[3] or '')
      local c, g = randn_pair({ 10007, d }, 810 + i, 3)
      local ct = tensor.rand(10007)
      local gt = ct:to('cuda')
      assert_bitwise(mix(g, 0.4), mix(c, 0.4), what .. ': score')
      assert_bitwise(mix(g, gt), mix(c, ct), what .. ': score, t per row')
      assert_bitwise(mix(g * 60, 0.01), mix(c * 60, 0.01), what .. ': score far out (log-sum-exp)')
      assert_bitwise(mix:log_density(g, 0.4), mix:log_density(c, 0.4), what .. ': log-density')
      assert_bitwise(mix:log_density(g, gt), mix:log_density(c, ct), what .. ': log-density, t per row')
    end
  end)

  gpu_it('mixture draws are bitwise the CPU\'s for the same seed', function()
    local ve = diffuse.ve(1.1)
    for i, m in ipairs(mixtures(ve)) do
      for _, t in ipairs { 0, 0.5 } do
        diffuse.set_device('cpu')
        diffuse.seed(820 + i)
        local c = m[2]:sample(10007, t)
        diffuse.set_device('cuda', 0)
        diffuse.seed(820 + i)
        local g = m[2]:sample(10007, t)
        diffuse.set_device('cpu')
        assert_bitwise(g, c, ('mixture %d in R^%d: draws at t = %g'):format(i, m[1], t))
      end
    end
  end)

  gpu_it('fused sampler runs and their recorded paths are bitwise the CPU\'s (every method)', function()
    local ve = diffuse.ve(1.1)
    local exact = diffuse.score.exact(ve)
    local mix = mixtures(ve)
    -- exact: 4 elements a thread (element count a multiple of 4) or 1; mixtures: by width
    local cases = {
      { exact, { 4096, 1 }, 'exact 4096x1' }, { exact, { 1001, 1 }, 'exact 1001x1' },
      { exact, { 333, 3 }, 'exact 333x3' }, { exact, { BIG, 1 }, 'exact BIGx1' },
      { mix[1][2], { 1000, 1 }, 'mixture R^1' }, { mix[2][2], { 257, 2 }, 'mixture R^2' },
      { mix[4][2], { 64, 5 }, 'mixture R^5' }, { mix[5][2], { 99, 1 }, 'mixture of 3000' },
    }
    local rec = { 0, 1, 25, 50, 25 } -- unsorted, one step twice
    for _, method in ipairs { 'euler', 'euler_maruyama', 'heun' } do
      local s = diffuse.sampler{ diffuser = ve, steps = 50, method = method }
      for i, case in ipairs(cases) do
        local c1, g1 = randn_pair(case[2], 830 + i)
        local what = method .. ', ' .. case[3]
        diffuse.seed(840 + i)
        local c0, cp = s:run(c1, case[1], { record = rec })
        local cnfe = s.nfe
        diffuse.seed(840 + i)
        local g0, gp = s:run(g1, case[1], { record = rec })
        assert.are.equal(cnfe, s.nfe, what .. ': nfe')
        assert_bitwise(g0, c0, what)
        for _, k in ipairs(rec) do assert_bitwise(gp[k], cp[k], what .. ': recorded step ' .. k) end
        assert_bitwise(g1, c1, what .. ': x1 untouched')
      end
    end
  end)

  gpu_it('step-by-step runs (a Lua score) are bitwise the CPU\'s (every method)', function()
    local ve = diffuse.ve(1.1)
    local exact = diffuse.score.exact(ve)
    local mix2 = mixtures(ve)[2][2]
    local cases = {
      { function(x, t) return exact(x, t) end, { 1001, 1 }, 'exact 1001x1' },
      { function(x, t) return exact(x, t) end, { 64, 3 }, 'exact 64x3' },
      { function(x, t) return mix2(x, t) end, { 257, 2 }, 'mixture R^2' },
    }
    for _, method in ipairs { 'euler', 'euler_maruyama', 'heun' } do
      local s = diffuse.sampler{ diffuser = ve, steps = 20, method = method }
      for i, case in ipairs(cases) do
        local c1, g1 = randn_pair(case[2], 850 + i)
        diffuse.seed(860 + i)
        local c0, cp = s:run(c1, case[1], { record = { 7, 20 } })
        diffuse.seed(860 + i)
        local g0, gp = s:run(g1, case[1], { record = { 7, 20 } })
        assert_bitwise(g0, c0, method .. ', ' .. case[3])
        assert_bitwise(gp[7], cp[7], method .. ', ' .. case[3] .. ': step 7')
      end
    end
  end)
end)

-- ---- networks (kernels/cuda_nn.cu) -----------------------------------------------------------
-- Each row's arithmetic on the GPU follows the CPU's order (a Linear's bias, then its inputs in
-- order; the backward's sums over outputs in order; one fma per product on both), except in
-- layers of 64 or more inputs or outputs (cuda_nn.cu's GEMM_MIN_WIDTH), which cuBLAS computes.
-- So a net whose layers are all narrower gives bitwise the CPU's forward and per-row gradient
-- terms, and its gradients (sums of B terms in another order) differ by at most
-- 2 gamma_B sum_r |term_r| (gamma_k = k u / (1 - k u), u = eps32 / 2: the bound of any order of
-- summation). With cuBLAS layers the bound below carries
-- each layer's rounding, 2 gamma_(I+1) (|W||h| + |b|) on each side, forward through the
-- activations (|act'| <= 1.2 for silu, tanh, gelu and relu; |act''| <= 1 for the smooth ones, which
-- the wide nets here use) and back through the backward, to first order, with CPU tensors.

-- tolerance functions from a bound tensor / list; a zero bound means bitwise
local SLACK = 1 + 2 ^ -10 -- the bounds are computed in float32 themselves
local function tol_of(bound)
  local b = type(bound) == 'table' and bound or values(bound)
  return function(i) return b[i] * SLACK + TINY32 end
end
local function max_of(bound)
  local b, m = type(bound) == 'table' and bound or values(bound), 0
  for i = 1, #b do m = math.max(m, b[i]) end
  return m
end

local U32 = EPS32 / 2
local function gamma(k)
  local ku = k * U32
  return ku / (1 - ku)
end
local ACT1, ACT2 = 1.2, 1.0 -- bounds of |act'| and |act''|
local GEMM_MIN_WIDTH = 64    -- as cuda_nn.cu

local function any_error(e) return e:max() > 0 end

-- cuda_nn.cu's choice of path: fused when every layer is at most 16 wide and the shared tile
-- (its features x 33 rows x 4 bytes) fits in 48 KiB. Fused nets never call cuBLAS: their forward
-- and per-row terms are the CPU's even with a 256-input layer.
local function fused_net(kind, spec)
  local d = spec.dim
  if kind == 'mlp' then
    local widest, maxo, feats = d + 1, d, (d + 1) + d
    for _, w in ipairs(spec.hidden) do
      widest, maxo, feats = math.max(widest, w), math.max(maxo, w), feats + 2 * w
    end
    return widest <= 16 and (feats + 2 * maxo) * 33 * 4 <= 48 * 1024
  end
  local H = spec.hidden
  return H <= 16 and d <= 16 and (2 * d + spec.embed + 5 * H) * 33 * 4 <= 48 * 1024
end

-- Linear (I -> O) at offset off of the flat parameters p (nn.c's layout: W [O, I] row-major, then
-- b [O]): W, W^T, b [1, O] and their magnitudes as CPU tensors
local function linear_at(p, off, I, O, fused)
  local w, wt, b = {}, {}, {}
  for o = 1, O do w[o] = {} end
  for i = 1, I do wt[i] = {} end
  for o = 1, O do
    for i = 1, I do
      local v = p[off + (o - 1) * I + i]
      w[o][i], wt[i][o] = v, v
    end
    b[o] = p[off + I * O + o]
  end
  local L = { I = I, O = O, off = off, W = tensor.new(w), Wt = tensor.new(wt), b = tensor.new({ b }) }
  L.aW, L.aWt, L.ab = L.W:abs(), L.Wt:abs(), L.b:abs()
  L.wide = not fused and (I >= GEMM_MIN_WIDTH or O >= GEMM_MIN_WIDTH)
  return L, off + I * O + O
end

-- z = h W^T + b and the bound on |z_cuda - z_cpu| given the bound eh on the inputs
local function lin_fwd(L, h, eh)
  local z = h:matmul(L.Wt) + L.b
  local ez = eh:matmul(L.aWt)
  if L.wide or any_error(eh) then ez = ez + (h:abs():matmul(L.aWt) + L.ab) * (2 * gamma(L.I + 1)) end
  return z, ez
end

-- h = act(z): inputs apart by ez give outputs apart by 1.2 ez, plus the evaluations' own rounding
-- (a few ulp each) once the inputs differ at all
local function act_fwd(act, z, ez)
  local h = z[act](z)
  local eh = ez * ACT1
  if any_error(ez) then eh = eh + h:abs() * (8 * EPS32) end
  return h, eh
end

-- the bound on the Linear's gradient difference (into eg at its parameter offsets): the terms
-- dz_r[o] in_r[i] differ by |edz||in| + |dz||ein|, their sums over B rows by 2 gamma_B sum|dz||in|
local function lin_grad_bound(L, eg, adz, edz, ain, ein, B)
  local g2 = 2 * gamma(B)
  for o = 1, L.O do
    local sel = {}
    for j = 1, L.O do sel[j] = { j == o and 1 or 0 } end
    sel = tensor.new(sel)
    local ac, ec = adz:matmul(sel), edz:matmul(sel) -- column o, exactly
    local row = values((ec * ain + ac * ein + ac * ain * g2):sum(1))
    for i = 1, L.I do eg[L.off + (o - 1) * L.I + i] = row[i] end
    eg[L.off + L.I * L.O + o] = ec:sum() + g2 * ac:sum()
  end
end

-- back through an activation: dz = dh act'(z), |dz| <= 1.2 |dh|; apart by 1.2 edh plus |dh| |act''|
-- ez, plus the evaluations' rounding once anything differs
local function back_act(adh, edh, ez)
  local adz = adh * ACT1
  local edz = edh * ACT1 + adh * ez * ACT2
  if any_error(edh) or any_error(ez) then edz = edz + adz * (8 * EPS32) end
  return adz, edz
end

-- back through a Linear (dh = dz W) and the activation before it
local function back_through(L, adz, edz, ez_prev)
  local adh = adz:matmul(L.aW)
  local edh = edz:matmul(L.aW)
  if L.wide or any_error(edz) then edh = edh + adh * (2 * gamma(L.O + 1)) end
  return back_act(adh, edh, ez_prev)
end

-- sum over rows of |the row's gradient term| per parameter, from one-row backwards on the CPU (a
-- one-row gradient is the term itself): with bitwise per-row terms on both devices, the gradients
-- differ by at most 2 gamma_B times this
local function row_term_sums(net, x, t, dout)
  diffuse.set_device('cpu')
  local B, d = x:size(1), x:size(2)
  local tv, acc = values(t), nil
  for r = 1, B do
    net:zero_grad()
    net:forward(x[r]:reshape(1, d), tv[r])
    net:backward(dout[r]:reshape(1, d))
    local g = net:gradients():abs()
    acc = acc and acc + g or g
  end
  net:zero_grad()
  return values(acc)
end

-- the bounds of a network on x [B, d], t [B] (CPU): eout [B, d] on its outputs and eg (a list in
-- parameter order) on its gradients for the dout, edout that dout_of(out, eout) gives (none
-- without dout_of). Where the forward is bitwise (eout = 0) the per-row terms are too, and eg is
-- 2 gamma_B sum_r |term_r| exactly; else the first-order propagation.
local net_bounds_prop
local function net_bounds(net, spec, x, t, dout_of)
  local eout, eg, dout = net_bounds_prop(net, spec, x, t, dout_of)
  if dout_of and max_of(eout) == 0 then
    local B = x:size(1)
    eg = row_term_sums(net, x, t, dout)
    for j = 1, #eg do eg[j] = 2 * gamma(B) * eg[j] end
  end
  return eout, eg
end

function net_bounds_prop(net, spec, x, t, dout_of)
  diffuse.set_device('cpu')
  local p = values(net:parameters())
  local B, d, act = x:size(1), spec.dim, spec.activation or 'silu'
  local fused = fused_net(net.kind, spec)
  local eg, eout, dout, edout = {}, nil, nil, nil
  if net.kind == 'mlp' then
    local widths = { d + 1 }
    for _, w in ipairs(spec.hidden) do widths[#widths + 1] = w end
    widths[#widths + 1] = d
    local Ls, off = {}, 0
    for l = 1, #widths - 1 do Ls[l], off = linear_at(p, off, widths[l], widths[l + 1], fused) end
    local h, eh = tensor.cat({ x, t:reshape(B, 1) }, 2), tensor.zeros(B, d + 1)
    local ins, eins, ezs, out = {}, {}, {}, nil
    for l, L in ipairs(Ls) do
      ins[l], eins[l] = h, eh
      local z, ez = lin_fwd(L, h, eh)
      ezs[l] = ez
      if l < #Ls then h, eh = act_fwd(act, z, ez) else out, eout = z, ez end
    end
    if not dout_of then return eout end
    dout, edout = dout_of(out, eout)
    local adz, edz = dout:abs(), edout
    for l = #Ls, 1, -1 do
      lin_grad_bound(Ls[l], eg, adz, edz, ins[l]:abs(), eins[l], B)
      if l > 1 then adz, edz = back_through(Ls[l], adz, edz, ezs[l - 1]) end
    end
    return eout, eg, dout
  end
  local H, E = spec.hidden, spec.embed
  local L0, off = linear_at(p, 0, E, H, fused)
  local L1, off2 = linear_at(p, off, d, H, fused)
  local L2 = linear_at(p, off2, H, d, fused)
  local arg = t:reshape(B, 1) * tensor.new({ values(net:frequencies()) }) * (2 * math.pi)
  local f = tensor.cat({ arg:sin(), arg:cos() }, 2) -- the same bits on both devices
  local zf, zx = tensor.zeros(B, E), tensor.zeros(B, d)
  local ze, eze = lin_fwd(L0, f, zf)
  local e, ee = act_fwd(act, ze, eze)
  local u, eu = lin_fwd(L1, x, zx)
  local v, ev = e + u, ee + eu
  if any_error(ev) then ev = ev + v:abs() * EPS32 end
  local hh, ehh = act_fwd(act, v, ev)
  local out
  out, eout = lin_fwd(L2, hh, ehh)
  if not dout_of then return eout end
  dout, edout = dout_of(out, eout)
  lin_grad_bound(L2, eg, dout:abs(), edout, hh:abs(), ehh, B)
  local adv, edv = back_through(L2, dout:abs(), edout, ev)   -- dv = (dout W2) act'(v)
  lin_grad_bound(L1, eg, adv, edv, x:abs(), zx, B)
  local adze, edze = back_act(adv, edv, eze)                  -- dze = dv act'(ze)
  lin_grad_bound(L0, eg, adze, edze, f:abs(), zf, B)
  return eout, eg, dout
end

-- the nets: fused kernels (every layer at most 16 wide), layered narrow kernels (20 and 40 wide),
-- cuBLAS (64 and more)
local NETS = {
  { 'seed MLP', 'mlp', { dim = 1, hidden = { 8, 8, 8 } } },
  { 'MLP gelu 7,5 in R^2', 'mlp', { dim = 2, hidden = { 7, 5 }, activation = 'gelu' } },
  { 'MLP tanh 16,13 in R^3', 'mlp', { dim = 3, hidden = { 16, 13 }, activation = 'tanh' } },
  { 'MLP tanh 20,17 in R^3 (layered)', 'mlp', { dim = 3, hidden = { 20, 17 }, activation = 'tanh' } },
  { 'MLP relu 40,40 (layered)', 'mlp', { dim = 2, hidden = { 40, 40 }, activation = 'relu' } },
  { 'MLP 256,256 (cuBLAS)', 'mlp', { dim = 2, hidden = { 256, 256 } } },
  { 'seed time-embedded', 'time_embedded', { dim = 1, hidden = 8, embed = 256, scale = 30 } },
  { 'time-embedded tanh 6/16 in R^2', 'time_embedded',
    { dim = 2, hidden = 6, embed = 16, scale = 3, activation = 'tanh' } },
  { 'time-embedded 64/512 (cuBLAS)', 'time_embedded', { dim = 2, hidden = 64, embed = 512, scale = 30 } },
}

local function net_case(name)
  for _, case in ipairs(NETS) do
    if case[1] == name then return case end
  end
  error('no net ' .. name)
end
local SEED_MLP, SEED_TEMB, WIDE_MLP = 'seed MLP', 'seed time-embedded', 'MLP 256,256 (cuBLAS)'

local function make_net(case, seed)
  diffuse.set_device('cpu')
  diffuse.seed(seed)
  return diffuse.nn[case[2]](case[3])
end

-- g within bound of c, or bitwise where the bound is zero (no cuBLAS layer)
local function assert_bound(g, c, bound, what)
  if max_of(bound) == 0 then return assert_bitwise(g, c, what .. ' (bitwise: no cuBLAS layer)') end
  assert_within(g, c, tol_of(bound), what)
end

local function plain_dout(dout)
  return function(_, eout) return dout, eout * 0 end
end

describe('cuda network parity', function()
  local ve = diffuse.ve(1.1)

  gpu_it('forward bitwise unless cuBLAS computes a layer (else within the rounding bound); ' ..
         'gradients within the summation bound', function()
    for i, case in ipairs(NETS) do
      for _, B in ipairs { 100, 20000 } do -- a partial tile; more tiles than a backward's blocks
        if B == 100 or case[1]:find('seed', 1, true) then
          local net = make_net(case, 900 + i)
          local d = net.dim
          diffuse.seed(910 + i)
          local x, t, dout = tensor.randn(B, d), tensor.rand(B), tensor.randn(B, d)
          local t0 = tensor.full({ B }, 0.3)
          local c, c0 = net:forward(x, t), net:forward(x, 0.3)
          net:zero_grad()
          net:forward(x, t)
          net:backward(dout)
          local gc = net:gradients()
          net:backward(dout)
          local gc2 = net:gradients()
          local eout, eg = net_bounds(net, case[3], x, t, plain_dout(dout))
          local eout0 = net_bounds(net, case[3], x, t0)
          net:to('cuda')
          local gx, gt, gd = x:to('cuda'), t:to('cuda'), dout:to('cuda')
          local what = ('%s, %d rows'):format(case[1], B)
          assert_bound(net:forward(gx, gt), c, eout, what .. ': forward')
          assert_bound(net:forward(gx, 0.3), c0, eout0, what .. ': forward at t = 0.3')
          net:zero_grad()
          net:forward(gx, gt)
          net:backward(gd)
          assert_within(net:gradients(), gc, tol_of(eg), what .. ': gradients')
          -- backward accumulates: twice the terms, 2B of them: within 4 times the bound
          net:backward(gd)
          local egb = {}
          for j = 1, #eg do egb[j] = 4 * eg[j] end
          assert_within(net:gradients(), gc2, tol_of(egb), what .. ': gradients of two backwards')
        end
      end
    end
  end)

  -- to() gives the net new buffers on the other device; the workspace of its last forward belongs
  -- to the old device and must be neither reused nor freed by the new one (it once was: a CPU
  -- free() of device memory)
  gpu_it('a net used, moved to the other device and used again keeps working, both ways', function()
    local net = make_net(net_case(SEED_MLP), 1290)
    local x, dout = tensor.randn(300, 1), tensor.randn(300, 1)
    local c = net:forward(x, 0.5)
    net:backward(dout)
    for _, dev in ipairs { 'cuda', 'cpu', 'cuda', 'cpu' } do
      net:to(dev)
      local y = net:forward(x:to(dev), 0.5)
      net:forward(x:to(dev), tensor.full({ 300 }, 0.5):to(dev))
      net:backward(dout:to(dev))
      local yc, cc = y:to('cpu'):totable(), c:totable()
      for i = 1, #cc do
        assert(yc[i][1] == cc[i][1], ('forward after moving to %s: row %d differs'):format(dev, i))
      end
    end
  end)

  -- score.net runs are one kernel on the GPU (a row per thread through all steps) for nets up to
  -- 16 wide, and step through net_forward for wider ones; both are bitwise the CPU's run.
  gpu_it('network-score sampler runs are bitwise the CPU\'s (every method, fused and stepped nets)', function()
    local names = { SEED_MLP, 'MLP gelu 7,5 in R^2', 'MLP tanh 16,13 in R^3',
                    'MLP tanh 20,17 in R^3 (layered)', SEED_TEMB, 'time-embedded tanh 6/16 in R^2' }
    for i, name in ipairs(names) do
      local case = net_case(name)
      local net = make_net(case, 1300 + i)
      local d = net.dim
      local c1, g1 = randn_pair({ 300, d }, 1320 + i)
      for _, method in ipairs { 'euler', 'euler_maruyama', 'heun' } do
        local s = diffuse.sampler{ diffuser = ve, steps = 10, method = method }
        net:to('cpu')
        diffuse.seed(1340 + i)
        local c0, cp = s:run(c1, diffuse.score.net(net, ve), { record = { 0, 4, 10 } })
        net:to('cuda')
        diffuse.seed(1340 + i)
        local g0, gp = s:run(g1, diffuse.score.net(net, ve), { record = { 0, 4, 10 } })
        local what = name .. ', ' .. method
        assert_bitwise(g0, c0, what)
        assert_bitwise(gp[4], cp[4], what .. ': step 4')
        assert_bitwise(gp[10], c0, what .. ': step 10 is x0')
      end
    end
  end)

  gpu_it('DSM loss and gradients: the same draws on both devices, within the derived bounds', function()
    for i, case in ipairs(NETS) do
      local net = make_net(case, 920 + i)
      local d, B, tol = net.dim, 100, 1e-5
      local x0 = tensor.randn(B, d) * 0.5
      local seed, stream = diffuse.rng_state()
      net:zero_grad()
      local lc = diffuse.loss.dsm(net, ve, x0)
      local gc = net:gradients()
      -- the draws again, as nn_spec does: t from the next stream, eta from the one after it
      diffuse.set_rng_state(seed, stream)
      local t = tol + (1 - tol) * tensor.rand(B)
      local eta = tensor.randn(B, d)
      local xt = x0 + ve:sigma(t):reshape(B, 1) * eta
      local scale = 2 / (B * d)
      local res, eres
      local eout, eg = net_bounds(net, case[3], xt, t, function(out, e)
        res, eres = out + eta, e
        local edout = e * scale
        if any_error(e) then edout = edout + (res * scale):abs() * EPS32 end
        return res * scale, edout
      end)
      -- loss = mean(res^2): apart by 2 mean(|res| eout), plus double sums in another order and
      -- one float rounding each
      local lbound = 2 * (res:abs() * eres):sum() / (B * d) + EPS32 * math.abs(lc)
      diffuse.set_rng_state(seed, stream)
      net:to('cuda')
      net:zero_grad()
      local lg = diffuse.loss.dsm(net, ve, x0:to('cuda'))
      assert_num(lg, lc, lbound * SLACK, case[1] .. ': DSM loss')
      assert_within(net:gradients(), gc, tol_of(eg), case[1] .. ': DSM gradients')
      assert.is_true(max_of(eout) > 0 or not case[1]:find('cuBLAS', 1, true))
    end
  end)

  gpu_it('Adam steps are bitwise the CPU\'s (one-row gradients are bitwise too)', function()
    local case = { 'MLP 8', 'mlp', { dim = 1, hidden = { 8 } } }
    local nc, ng = make_net(case, 931), make_net(case, 931)
    ng:to('cuda')
    local opts = { lr = 0.01, betas = { 0.8, 0.95 }, eps = 1e-6, weight_decay = 0.1 }
    local oc, og = diffuse.optim.adam(nc, opts), diffuse.optim.adam(ng, opts)
    diffuse.seed(932)
    for step = 1, 5 do
      local x = tensor.randn(1, 1)
      for _, pair in ipairs { { nc, oc, x }, { ng, og, x:to('cuda') } } do
        pair[1]:zero_grad()
        pair[1]:forward(pair[3], 0.25 * step)
        pair[1]:backward(pair[3] * 0 + 1)
        pair[2]:step()
      end
      assert_bitwise(ng:gradients(), nc:gradients(), 'gradients of one row, step ' .. step)
      assert_bitwise(ng:parameters(), nc:parameters(), 'parameters after Adam step ' .. step)
    end
  end)

  -- Training runs on both devices use the same draws; only the gradients' summation order (and
  -- cuBLAS's rounding) differs. Each step moves the gradient by at most rho relative to its terms
  -- (2 gamma_B, plus 2 gamma_(I+1) for each cuBLAS layer); Adam's step m/sqrt(v) is invariant to
  -- the gradient's scale, so that moves the update by at most 2 rho relative, and to first order
  -- the loss k steps on by k * 2 rho relative: the budget per step below (plus the first step's
  -- own DSM bound, an ulp or two).
  local function drift_rho(case, B)
    local rho = 2 * gamma(B)
    local widths = {}
    if fused_net(case[2], case[3]) then return rho end
    if case[2] == 'mlp' then
      widths = { case[3].dim + 1 }
      for _, w in ipairs(case[3].hidden) do widths[#widths + 1] = w end
      widths[#widths + 1] = case[3].dim
      for l = 1, #widths - 1 do
        if widths[l] >= GEMM_MIN_WIDTH or widths[l + 1] >= GEMM_MIN_WIDTH then
          rho = rho + 2 * gamma(widths[l] + 1)
        end
      end
    elseif case[3].hidden >= GEMM_MIN_WIDTH or case[3].embed >= GEMM_MIN_WIDTH then
      rho = rho + 2 * gamma(case[3].embed + 1) + 2 * gamma(case[3].hidden + 1)
    end
    return rho
  end

  gpu_it('training 50 steps: the losses follow the CPU\'s within the drift budget', function()
    for _, pick in ipairs { { SEED_MLP, 256, 256 }, { SEED_TEMB, 256, 256 }, { WIDE_MLP, 256, 256 },
                            { SEED_MLP, 64, 1000 } } do
      local case, B, rows = net_case(pick[1]), pick[2], pick[3]
      local d = case[3].dim
      local runs = {}
      for _, dev in ipairs { 'cpu', 'cuda' } do
        local net = make_net(case, 940)
        diffuse.seed(941)
        local data = tensor.randn(rows, d) * 0.3 -- rows > batch: the rows are drawn too
        net:to(dev)
        data = data:to(dev)
        runs[dev] = values(diffuse.train{ net = net, diffuser = ve, data = data, steps = 50,
                                          batch = B, lr = 1e-3 })
      end
      local rho = drift_rho(case, B)
      for k = 1, 50 do
        local c, g = runs.cpu[k], runs.cuda[k]
        assert_num(g, c, (2 * EPS32 + 2 * rho * k) * math.abs(c),
          ('%s, batch %d of %d rows: loss at step %d'):format(case[1], B, rows, k))
      end
    end
  end)

  gpu_it('train (replayed CUDA graphs) equals the plain loop bitwise on the GPU', function()
    local before = diffuse.cuda.graph_stats()
    for _, name in ipairs { SEED_MLP, SEED_TEMB, WIDE_MLP } do
      local case = net_case(name)
      local d = case[3].dim
      for _, steps in ipairs { 1, 7, 8, 9, 300 } do -- graphs of 8 and of 1 step; a chunk boundary
        local runs = {}
        for _, how in ipairs { 'plain', 'train' } do
          local net = make_net(case, 950)
          diffuse.seed(951)
          local data = (tensor.randn(200, d) * 0.5):to('cuda')
          net:to('cuda')
          local opt = diffuse.optim.adam(net, { lr = 1e-2 })
          local ls = {}
          if how == 'plain' then
            for k = 1, steps do
              net:zero_grad()
              ls[k] = diffuse.loss.dsm(net, ve, data)
              opt:step()
            end
          elseif steps == 300 then -- two calls: the cached graphs replayed with a new step table
            ls = values(diffuse.train{ net = net, diffuser = ve, data = data, steps = 100, optimizer = opt })
            for _, l in ipairs(values(diffuse.train{ net = net, diffuser = ve, data = data, steps = 200,
                                                     optimizer = opt })) do
              ls[#ls + 1] = l
            end
          else
            ls = values(diffuse.train{ net = net, diffuser = ve, data = data, steps = steps,
                                       optimizer = opt })
          end
          runs[how] = { ls, net:parameters(), net:gradients(), opt.t }
        end
        local what = ('%s, %d steps'):format(case[1], steps)
        assert.are.same(runs.plain[1], runs.train[1], what .. ': losses')
        assert.are.equal(runs.plain[4], runs.train[4], what .. ': optimizer steps')
        assert_bitwise(runs.train[2], runs.plain[2]:to('cpu'), what .. ': parameters')
        assert_bitwise(runs.train[3], runs.plain[3]:to('cpu'), what .. ': gradients')
      end
    end
    -- and the graphs were captured and replayed, not bypassed
    local after = diffuse.cuda.graph_stats()
    assert.are.equal(before.fallback_steps, after.fallback_steps,
      'steps ran without a graph: ' .. tostring(after.last_failure))
    assert.is_true(after.captures >= before.captures + 2)
    assert.is_true(after.launches > before.launches)
  end)

  gpu_it('a checkpoint saved from the GPU loads on the CPU with identical parameters', function()
    for _, name in ipairs { SEED_MLP, SEED_TEMB, WIDE_MLP } do
      local case = net_case(name)
      local net = make_net(case, 960)
      net:to('cuda')
      diffuse.seed(961)
      local data = (tensor.randn(128, case[3].dim) * 0.5):to('cuda')
      local _, opt = diffuse.train{ net = net, diffuser = ve, data = data, steps = 20 }
      local path = os.tmpname()
      local saved, err = pcall(opt.save, opt, path)
      diffuse.set_device('cpu')
      local ok, back, bopt = pcall(diffuse.nn.load, path)
      os.remove(path)
      assert(saved, err)
      assert(ok, back)
      assert.are.equal('cpu', back.device)
      assert_bitwise(net:parameters(), back:parameters(), case[1] .. ': parameters')
      if case[2] == 'time_embedded' then
        assert_bitwise(net:frequencies(), back:frequencies(), case[1] .. ': frequencies')
      end
      assert.are.equal(opt.t, bopt.t)
      -- the loaded net computes what the GPU net computes (bitwise without cuBLAS layers)
      diffuse.seed(962)
      local x, t = tensor.randn(50, case[3].dim), tensor.rand(50)
      local eout = net_bounds(back, case[3], x, t)
      assert_bound(net:forward(x:to('cuda'), t:to('cuda')), back:forward(x, t), eout,
        case[1] .. ': forward of the loaded net')
    end
  end)
end)

-- Composed networks (nn.net) run one kernel per node on the GPU (kernels/cuda_graph.cu). Their
-- per-row arithmetic is dmath.h's and a narrow Linear sums in the CPU's order, so forwards of
-- nets without cuBLAS layers are bitwise the CPU's (and so are the samples, which step through
-- the forward); parameter gradients sum rows in another (fixed) order: within a few float32
-- roundings of the B-term sums, bounded here by B eps32 times the sum of |terms| estimated as
-- the largest gradient (conservative: the terms are of one sign or cancel).
describe('cuda composed-network parity', function()
  local nn = diffuse.nn
  local ve = diffuse.ve(1.1)

  local GRAPHS = {
    { 'every elementwise node', 2, function(x, t)
      local h = nn.linear(3)(nn.cat{ x, t }) * 0.7
      return nn.linear(2)(nn.cat{ h:silu(), h:relu(), h:tanh(), h:gelu(), h:sigmoid(), h:sin(),
                                  h:cos(), (h * 0.5):exp(), h:square(), -h, h + 1.5, 2 - h, h / 3 })
    end },
    { 'broadcasting, sharing, no bias', 3, function(x, t)
      local L = nn.linear(3)
      local s = nn.linear(1, { bias = false })(nn.cat{ x, t })
      local h = L(x):tanh() * s + L(x * s):silu() - s
      return nn.linear(3)(h) + x
    end },
    { 'Fourier features of t and of a learned node', 1, function(x, t)
      local u = nn.linear(1)(nn.cat{ x, t })
      return nn.linear(1)(nn.cat{ x, nn.fourier(t, { embed = 6, scale = 3 }),
                                  nn.fourier(t, { frequencies = { 0.5, 2, 9 } }),
                                  nn.fourier(u, { frequencies = { 1, 3 } }) })
    end },
    { 'row means and columns (an equivariant head, tangent output)', 3, function(x, t)
      local L = nn.linear(4)
      local inv = nn.cat{ x:sin():mean(), x:cos():mean(), t }
      local o = {}
      for i = 1, 3 do o[i] = nn.linear(1)(L(nn.cat{ x:col(i):sin(), inv }):tanh()) end
      local out = nn.cat(o)
      return out - out:mean()
    end },
    { 'the feature net (64 wide: cuBLAS)', 1, function(x, t)
      local w = {}
      for k = 1, 25 do w[k] = math.exp(-10 * (k / 25 - 0.5)) end
      local h = nn.cat{ x, nn.fourier(t, { frequencies = w }) }
      for _ = 1, 3 do h = nn.linear(64)(h):silu() end
      return nn.linear(1)(h)
    end, true },
  }

  local function make_graph(g, seed, output)
    diffuse.seed(seed)
    return nn.net{ dim = g[2], forward = g[3], output = output }
  end

  -- within B eps32 (plus slack) of the largest gradient
  local function grad_tol(gc, B)
    local m = gc:abs():max()
    return function() return 4 * B * EPS32 * m + TINY32 end
  end

  gpu_it('forward bitwise (cuBLAS layers: within their rounding), gradients within the summation bound', function()
    for i, g in ipairs(GRAPHS) do
      local net = make_graph(g, 1400 + i)
      local d, B = g[2], 300
      diffuse.seed(1410 + i)
      local x, t, dout = tensor.randn(B, d), tensor.rand(B), tensor.randn(B, d)
      local c, c0 = net:forward(x, t), net:forward(x, 0.3)
      net:zero_grad()
      net:forward(x, t)
      net:backward(dout)
      local gc = net:gradients()
      net:to('cuda')
      local gx, gt, gd = x:to('cuda'), t:to('cuda'), dout:to('cuda')
      if g[4] then
        local m = c:abs():max()
        assert_within(net:forward(gx, gt), c, function() return 1e-4 * (1 + m) end, g[1] .. ': forward')
      else
        assert_bitwise(net:forward(gx, gt), c, g[1] .. ': forward')
        assert_bitwise(net:forward(gx, 0.3), c0, g[1] .. ': forward at t = 0.3')
      end
      net:zero_grad()
      net:forward(gx, gt)
      net:backward(gd)
      assert_within(net:gradients(), gc, grad_tol(gc, B), g[1] .. ': gradients')
    end
  end)

  gpu_it('DSM losses and gradients of every output convention and weighting follow the CPU', function()
    for i, g in ipairs(GRAPHS) do
      for _, output in ipairs{ 'scaled', 'score', 'noise', 'denoiser' } do
        for _, weighting in ipairs{ 'sigma2', 'likelihood', 'none' } do
          local net = make_graph(g, 1420 + i, output)
          local B = 200
          diffuse.seed(1430 + i)
          local x0 = tensor.randn(B, g[2]) * 0.5
          local seed, stream = diffuse.rng_state()
          net:zero_grad()
          local lc = diffuse.loss.dsm(net, ve, x0, { tol = 1e-3, weighting = weighting })
          local gc = net:gradients()
          diffuse.set_rng_state(seed, stream)
          net:to('cuda')
          net:zero_grad()
          local lg = diffuse.loss.dsm(net, ve, x0:to('cuda'), { tol = 1e-3, weighting = weighting })
          local what = ('%s, %s, %s'):format(g[1], output, weighting)
          assert_num(lg, lc, (g[4] and 1e-4 or 4 * B * EPS32) * math.abs(lc), what .. ': loss')
          assert_within(net:gradients(), gc, g[4] and function() return 1e-3 * gc:abs():max() end
            or grad_tol(gc, B), what .. ': gradients')
        end
      end
    end
    -- the seed's nets with other conventions leave their fused kernels for the layered path
    for _, output in ipairs{ 'score', 'denoiser' } do
      diffuse.seed(1440)
      local net = nn.mlp{ dim = 1, output = output }
      local x0 = tensor.randn(128, 1)
      local seed, stream = diffuse.rng_state()
      local lc = diffuse.loss.dsm(net, ve, x0, { weighting = 'none', tol = 1e-3 })
      diffuse.set_rng_state(seed, stream)
      net:to('cuda')
      local lg = diffuse.loss.dsm(net, ve, x0:to('cuda'), { weighting = 'none', tol = 1e-3 })
      assert_num(lg, lc, 4 * 128 * EPS32 * math.abs(lc), 'seed MLP, ' .. output)
    end
  end)

  gpu_it('network-score sampler runs of composed nets and of every output convention are bitwise the CPU\'s', function()
    for i, g in ipairs(GRAPHS) do
      if not g[4] then
        for _, output in ipairs{ 'scaled', 'score', 'noise', 'denoiser' } do
          local net = make_graph(g, 1450 + i, output)
          local c1, g1 = randn_pair({ 200, g[2] }, 1460 + i)
          for _, method in ipairs{ 'euler', 'euler_maruyama', 'heun' } do
            local s = diffuse.sampler{ diffuser = ve, steps = 8, method = method }
            net:to('cpu')
            diffuse.seed(1470 + i)
            local c0 = s:run(c1, diffuse.score.net(net, ve))
            net:to('cuda')
            diffuse.seed(1470 + i)
            local g0 = s:run(g1, diffuse.score.net(net, ve))
            assert_bitwise(g0, c0, ('%s, %s, %s'):format(g[1], output, method))
          end
        end
      end
    end
    for _, output in ipairs{ 'noise', 'denoiser' } do -- the fused one-kernel run of the seed MLP
      diffuse.seed(1480)
      local net = nn.mlp{ dim = 1, output = output }
      local c1, g1 = randn_pair({ 300, 1 }, 1481)
      local s = diffuse.sampler{ diffuser = ve, steps = 10, method = 'heun' }
      local c0 = s:run(c1, diffuse.score.net(net, ve))
      net:to('cuda')
      assert_bitwise(s:run(g1, diffuse.score.net(net, ve)), c0, 'seed MLP, ' .. output)
    end
  end)

  gpu_it('training with every option follows the CPU within the drift budget; graphs replay the plain loop bitwise', function()
    local before = diffuse.cuda.graph_stats()
    for i, g in ipairs(GRAPHS) do
      local runs = {}
      for _, dev in ipairs{ 'cpu', 'cuda' } do
        local net = make_graph(g, 1490 + i, 'noise')
        diffuse.seed(1491)
        local data = (tensor.randn(500, g[2]) * 0.4):to(dev)
        net:to(dev)
        local losses, _, ema = diffuse.train{ net = net, diffuser = ve, data = data, steps = 40, batch = 256,
          lr = 2e-3, tol = 1e-3, clip = 0.5, weighting = 'likelihood', ema = 0.9,
          schedule = { warmup = 5, decay = 'cosine', min_lr = 1e-4 } }
        runs[dev] = { values(losses), ema:parameters():to('cpu') }
      end
      local rho = 2 * gamma(256) + (g[4] and 2 * gamma(65) * 4 or 0)
      for k = 1, 40 do
        local c, gk = runs.cpu[1][k], runs.cuda[1][k]
        assert_num(gk, c, (4 * EPS32 + 2 * rho * k) * math.abs(c) * 4, ('%s: loss at step %d'):format(g[1], k))
      end
      -- on the GPU: train's captured graphs against the plain loop of the same steps, bitwise
      local res = {}
      for _, how in ipairs{ 'plain', 'train' } do
        local net = make_graph(g, 1495 + i)
        net:to('cuda')
        diffuse.seed(1496)
        local data = (tensor.randn(200, g[2]) * 0.5):to('cuda')
        local opt = diffuse.optim.adam(net, { lr = 1e-2 })
        local ema = opt:set_ema(0.8)
        local ls = {}
        if how == 'plain' then
          for k = 1, 11 do
            net:zero_grad()
            ls[k] = diffuse.loss.dsm(net, ve, data)
            opt:step()
          end
        else
          ls = values(diffuse.train{ net = net, diffuser = ve, data = data, steps = 11, optimizer = opt })
        end
        res[how] = { ls, net:parameters(), ema:parameters() }
      end
      assert.are.same(res.plain[1], res.train[1], g[1] .. ': losses')
      assert_bitwise(res.train[2], res.plain[2]:to('cpu'), g[1] .. ': parameters')
      assert_bitwise(res.train[3], res.plain[3]:to('cpu'), g[1] .. ': EMA')
    end
    local after = diffuse.cuda.graph_stats()
    assert.are.equal(before.fallback_steps, after.fallback_steps, 'steps ran without a graph: ' .. tostring(after.last_failure))
  end)

  gpu_it('a composed net saved from the GPU loads on the CPU with identical parameters', function()
    local net = make_graph(GRAPHS[3], 1500, 'denoiser')
    net:to('cuda')
    diffuse.seed(1501)
    local data = (tensor.randn(128, 1) * 0.5):to('cuda')
    local _, opt = diffuse.train{ net = net, diffuser = ve, data = data, steps = 20, tol = 1e-3, ema = 0.9 }
    local path = os.tmpname()
    net:save(path, opt)
    diffuse.set_device('cpu')
    local back, bopt = diffuse.nn.load(path)
    os.remove(path)
    assert.are.equal(net.graph, back.graph)
    assert_bitwise(net:parameters(), back:parameters(), 'parameters')
    assert_bitwise(net:frequencies(), back:frequencies(), 'frequencies')
    assert_bitwise(opt.ema:parameters(), bopt.ema:parameters(), 'EMA')
    local x = tensor.randn(50, 1)
    assert_bitwise(net:forward(x:to('cuda'), 0.4), back:forward(x, 0.4), 'forward of the loaded net')
  end)
end)

describe('cuda solver parity', function()
  -- the samplers beyond the fused three, divergences and likelihoods run on either device through
  -- the backend's per-row operations (rowlin, rowdot, errnorm, random_at, mixture_div,
  -- mixture_jvp) in the same order with the same roundings: bitwise the CPU's, rk45's per-row step
  -- choices included
  local ve = diffuse.ve(1.1)
  local METHODS = {
    { method = 'euler', grid = 'karras', steps = 12 },
    { method = 'heun', grid = 'log_sigma', steps = 9 },
    { method = 'heun', space = 'sigma', steps = 7 },
    { method = 'euler', grid = { 1, 0.6, 0.3, 0.1, 0.02, 0 } },
    { method = 'ddim', grid = 'karras', steps = 10 },
    { method = 'ddim', grid = 'karras', steps = 10, eta = 1 },
    { method = 'dpmpp_2m', grid = 'karras', steps = 11 },
    { method = 'edm', grid = 'karras', steps = 10, S_churn = 20, S_min = 0.05, S_max = 0.8 },
    { method = 'pc', grid = 'karras', steps = 8, corrector_steps = 2 },
    { method = 'rk4', steps = 6 },
    { method = 'rk45', rtol = 1e-4, atol = 1e-4 },
  }

  local function name_of(o)
    local g = type(o.grid) == 'table' and 'list' or o.grid or 'uniform'
    return ('%s (%s%s)'):format(o.method, g, o.eta and ', eta ' .. o.eta or '')
  end

  -- the same run on both devices from the same seed: x0 and the recorded path
  local function both(o, score, x1c, seed, run_opts)
    local out = {}
    for _, dev in ipairs { 'cpu', 'cuda' } do
      diffuse.set_device(dev == 'cpu' and 'cpu' or 'cuda', 0)
      local opts = { diffuser = ve }
      for k, v in pairs(o) do opts[k] = v end
      local s = diffuse.sampler(opts)
      diffuse.seed(seed)
      local x0, path, logq = s:run(x1c:to(dev), score, run_opts)
      out[dev] = { x0 = x0, path = path, logq = logq, nfe = s.nfe, nfe_rows = s.nfe_rows }
      diffuse.set_device('cpu')
    end
    return out.cuda, out.cpu
  end

  gpu_it('every method and grid gives bitwise the CPU\'s samples and paths (exact and mixture scores)', function()
    local scores = { { 1, diffuse.score.exact(ve), 'exact' }, { 3, diffuse.score.exact(ve), 'exact' } }
    for i, m in ipairs(mixtures(ve)) do
      if i <= 2 then scores[#scores + 1] = { m[1], m[2], 'mixture' } end
    end
    for _, sc in ipairs(scores) do
      local x1 = randn_pair({ 1001, sc[1] }, 1600 + sc[1], ve:sigma(1))
      for _, o in ipairs(METHODS) do
        local what = ('%s, %s score in R^%d'):format(name_of(o), sc[3], sc[1])
        local g, c = both(o, sc[2], x1, 1610, { record = { 1 } })
        assert_bitwise(g.x0, c.x0, what .. ': x0')
        assert_bitwise(g.path[1], c.path[1], what .. ': the state after one step')
        assert.are.equal(c.nfe, g.nfe, what .. ': evaluations')
        assert.are.equal(c.nfe_rows, g.nfe_rows, what .. ': evaluations per row')
      end
    end
  end)

  gpu_it('divergences (closed form and Hutchinson\'s) are bitwise the CPU\'s', function()
    for i, m in ipairs(mixtures(ve)) do
      local d, mix = m[1], m[2]
      local c, g = randn_pair({ 2003, d }, 1620 + i, 2)
      local ct = tensor.rand(2003) + 0.01
      local what = ('mixture %d in R^%d'):format(i, d)
      assert_bitwise(mix:divergence(g, 0.3), mix:divergence(c, 0.3), what .. ': exact divergence')
      assert_bitwise(mix:divergence(g, ct:to('cuda')), mix:divergence(c, ct), what .. ': t per row')
      for _, probe in ipairs { 'rademacher', 'gaussian' } do
        diffuse.seed(1630)
        local hc = mix:divergence(c, 0.3, { divergence = 'hutchinson', probes = 3, probe = probe })
        diffuse.seed(1630)
        local hg = mix:divergence(g, 0.3, { divergence = 'hutchinson', probes = 3, probe = probe })
        assert_bitwise(hg, hc, what .. ': Hutchinson, ' .. probe)
      end
    end
    local exact = diffuse.score.exact(ve)
    local c, g = randn_pair({ 999, 2 }, 1640)
    assert_bitwise(exact:divergence(g, 0.5), exact:divergence(c, 0.5), 'the heat kernel')
  end)

  gpu_it('likelihoods and a sampler\'s log q are bitwise the CPU\'s', function()
    local mix = mixtures(ve)[2][2] -- in R^2
    local c, g = randn_pair({ 777, 2 }, 1650, 1.5)
    for _, o in ipairs { { method = 'rk45' }, { method = 'heun', steps = 20 }, { method = 'rk4', steps = 8 },
                         { method = 'rk45', divergence = 'hutchinson', probes = 2 } } do
      local res = {}
      for dev, x in pairs { cpu = c, cuda = g } do
        local args = { diffuser = ve, score = mix, x = x, prior = mix }
        for k, v in pairs(o) do args[k] = v end
        diffuse.seed(1651)
        local lp, info = diffuse.likelihood(args)
        res[dev] = { lp, info }
      end
      local what = 'likelihood, ' .. o.method .. (o.divergence and ', Hutchinson' or '')
      assert_bitwise(res.cuda[1], res.cpu[1], what .. ': log p')
      assert_bitwise(res.cuda[2].x1, res.cpu[2].x1, what .. ': x1')
      assert.are.equal(res.cpu[2].nfe, res.cuda[2].nfe, what .. ': evaluations')
    end
    local x1 = randn_pair({ 555, 2 }, 1660, ve:sigma(1))
    for _, o in ipairs { { method = 'rk45' }, { method = 'heun', steps = 15, grid = 'karras' } } do
      local gq, cq = both(o, mix, x1, 1661, { logq = true, prior = mix })
      assert_bitwise(gq.x0, cq.x0, 'logq run, ' .. o.method .. ': x0')
      assert_bitwise(gq.logq, cq.logq, 'logq run, ' .. o.method .. ': log q')
    end
  end)

  gpu_it('a network score runs every method on the GPU as on the CPU', function()
    diffuse.seed(1670)
    local net = diffuse.nn.mlp{ dim = 2, hidden = { 16, 16 } }
    local cnet = diffuse.nn.mlp{ dim = 2, hidden = { 16, 16 } }
    cnet:set_parameters(net:parameters())
    net:to('cuda')
    local gs, cs = diffuse.score.net(net, ve), diffuse.score.net(cnet, ve)
    local x1c = randn_pair({ 301, 2 }, 1671, ve:sigma(1))
    for _, o in ipairs(METHODS) do
      local out = {}
      for dev, score in pairs { cpu = cs, cuda = gs } do
        diffuse.set_device(dev == 'cpu' and 'cpu' or 'cuda', 0)
        local opts = { diffuser = ve }
        for k, v in pairs(o) do opts[k] = v end
        local s = diffuse.sampler(opts)
        diffuse.seed(1672)
        out[dev] = s:run(x1c:to(dev), score)
        diffuse.set_device('cpu')
      end
      assert_bitwise(out.cuda, out.cpu, name_of(o) .. ', network score: x0')
    end
  end)

  gpu_it('network divergences (Jacobian-vector products through the graph) and likelihoods are the CPU\'s', function()
    local nn = diffuse.nn
    local nets = {
      { 'the seed MLP', function() return nn.mlp{ dim = 2, hidden = { 8, 8, 8 } } end },
      { 'the time-embedded net', function() return nn.time_embedded{ dim = 1, hidden = 8, embed = 16 } end },
      { 'a composed net (cat, products, Fourier of a learned node, every activation)', function()
        return nn.net{ dim = 2, output = 'noise', forward = function(x, t)
          local u = nn.linear(1)(nn.cat{ x, t })
          local h = nn.linear(6)(nn.cat{ x, nn.fourier(t, { frequencies = { 0.5, 3 } }), nn.fourier(u, { frequencies = { 1, 2 } }) })
          local k = nn.cat{ h:silu(), h:tanh() * h, h:gelu() - 1, h:relu(), h:sigmoid() / 2, h:sin(), h:cos(),
                            (h * 0.3):exp(), h:square(), 2 - h }
          return nn.linear(2)(k) + x * u
        end } end },
      { 'a 64-wide net (cuBLAS layers)', function()
        return nn.net{ dim = 1, forward = function(x, t)
          local h = nn.linear(64)(nn.cat{ x, t }):silu()
          return nn.linear(1)(nn.linear(64)(h):tanh())
        end } end, true },
    }
    for i, case in ipairs(nets) do
      diffuse.set_device('cpu')
      diffuse.seed(1680 + i)
      local cnet = case[2]()
      diffuse.seed(1680 + i) -- (the same parameters and frequencies)
      local gnet = case[2]()
      gnet:to('cuda')
      local cs, gs = diffuse.score.net(cnet, ve), diffuse.score.net(gnet, ve)
      local d = cnet.dim
      local c, g = randn_pair({ 517, d }, 1690 + i)
      local ct = tensor.rand(517) + 0.05
      local cmp = case[3] and function(a, b, what) -- cuBLAS sums in its own order
        assert_within(a, b, function(_, v) return 1e-4 * (1 + math.abs(v)) end, what)
      end or assert_bitwise
      cmp(gs:divergence(g, 0.4), cs:divergence(c, 0.4), case[1] .. ': exact divergence')
      cmp(gs:divergence(g, ct:to('cuda')), cs:divergence(c, ct), case[1] .. ': t per row')
      diffuse.seed(1700)
      local hc = cs:divergence(c, 0.4, { divergence = 'hutchinson', probes = 2 })
      diffuse.seed(1700)
      local hg = gs:divergence(g, 0.4, { divergence = 'hutchinson', probes = 2 })
      cmp(hg, hc, case[1] .. ': Hutchinson')
      if not case[3] then
        local lc = diffuse.likelihood{ diffuser = ve, score = cs, x = c, method = 'heun', steps = 10 }
        local lg = diffuse.likelihood{ diffuser = ve, score = gs, x = g, method = 'heun', steps = 10 }
        assert_bitwise(lg, lc, case[1] .. ': likelihood')
      end
    end
  end)
end)
