-- spec/broadcast_spec.lua: elementwise binary ops with numpy broadcasting, against plain Lua.
-- Expected values are computed in double from the float32 operands and rounded to float32; for
-- + - * / that is the correctly rounded float32 result (double has more than 2*24+2 bits, so the
-- double rounding is innocuous), which IEEE float32 arithmetic must give exactly.
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local tensor = diffuse.tensor
local f32 = H.f32

local OPS = {
  { name = 'add', sym = '+', f = function(a, b) return a + b end,
    t = function(x, y) return x + y end },
  { name = 'sub', sym = '-', f = function(a, b) return a - b end,
    t = function(x, y) return x - y end },
  { name = 'mul', sym = '*', f = function(a, b) return a * b end,
    t = function(x, y) return x * y end },
  { name = 'div', sym = '/', f = function(a, b) return a / b end,
    t = function(x, y) return x / y end },
}

-- maximum and minimum as torch: NaN in either operand gives NaN
local function lmax(a, b)
  if a ~= a or b ~= b then return 0 / 0 end
  return a > b and a or b
end
local function lmin(a, b)
  if a ~= a or b ~= b then return 0 / 0 end
  return a < b and a or b
end

local function prod(s)
  local n = 1
  for _, v in ipairs(s) do n = n * v end
  return n
end

-- numpy's result shape
local function bshape(sa, sb)
  local n = math.max(#sa, #sb)
  local out = {}
  for k = 0, n - 1 do
    local da, db = sa[#sa - k] or 1, sb[#sb - k] or 1
    assert(da == db or da == 1 or db == 1, 'test shapes do not broadcast')
    out[n - k] = da == 1 and db or da
  end
  return out
end

-- plain-Lua broadcast of flat row-major lists fa (shape sa) and fb (shape sb)
local function bref(fa, sa, fb, sb, op)
  local so = bshape(sa, sb)
  local res = {}
  for i = 0, prod(so) - 1 do
    local rem, ia, ib, stra, strb = i, 0, 0, 1, 1
    for k = 0, #so - 1 do
      local d = so[#so - k]
      local idx = rem % d
      rem = rem // d
      local da, db = sa[#sa - k] or 1, sb[#sb - k] or 1
      if da ~= 1 then ia = ia + idx * stra end
      if db ~= 1 then ib = ib + idx * strb end
      stra, strb = stra * da, strb * db
    end
    res[i + 1] = op(fa[ia + 1], fb[ib + 1])
  end
  return res, so
end

-- float32 results must be bitwise those of the reference (NaN: any NaN)
local function assert_bitwise(got, want, what)
  assert.are.equal(#want, #got, what .. ': element count')
  for i = 1, #want do
    local g, w = got[i], f32(want[i])
    local ok
    if w ~= w then ok = g ~= g else ok = H.bits32(g) == H.bits32(w) end
    if not ok then
      error(('%s: element %d: expected %.9g, got %.9g'):format(what, i, w, g), 2)
    end
  end
end

local function random_flat(g, shape, lo, hi)
  return H.uniform_list(g, prod(shape), lo, hi)
end

local function make(flat, shape)
  if #shape == 0 then return tensor.new(flat[1]) end
  return tensor.new(H.unflatten(flat, shape)):reshape(shape)
end

local CASES = {
  { { 3, 4 }, { 3, 4 }, 'equal shapes' },
  { { 5 }, { 5 }, 'equal 1-D' },
  { { 3, 4 }, { 1 }, '[1] on the right' },
  { { 1 }, { 3, 4 }, '[1] on the left' },
  { { 1 }, { 1 }, '[1] and [1]' },
  { { 4 }, { 6, 4 }, 'row [d] vs [B,d]' },
  { { 6, 4 }, { 4 }, '[B,d] vs row [d]' },
  { { 6, 4 }, { 1, 4 }, '[B,d] vs [1,d]' },
  { { 6, 1 }, { 1, 4 }, 'column [B,1] vs [1,d]: outer' },
  { { 1, 4 }, { 6, 1 }, '[1,d] vs [B,1]: outer' },
  { { 6, 1 }, { 4 }, '[B,1] vs [d]' },
  { { 6, 4 }, { 6, 1 }, '[B,d] vs [B,1]' },
  { { 4096, 1 }, { 1 }, '[4096,1] vs [1]' },
  { { 2, 3, 4 }, { 3, 4 }, '3-D vs trailing 2-D' },
  { { 2, 3, 4 }, { 4 }, '3-D vs trailing 1-D' },
  { { 2, 1, 4 }, { 3, 1 }, '[2,1,4] vs [3,1]' },
  { { 1, 3, 1 }, { 2, 1, 4 }, '[1,3,1] vs [2,1,4]' },
  { { 2, 3, 4 }, { 2, 1, 4 }, '[2,3,4] vs [2,1,4]' },
  { { 2, 3, 4 }, { 2, 3, 1 }, '[2,3,4] vs [2,3,1]' },
  { { 2, 3, 4 }, { 1, 1, 1 }, '[2,3,4] vs [1,1,1]' },
  { { 2, 1, 3, 1 }, { 1, 4, 1, 5 }, '4-D alternating ones' },
  { { 2, 3, 4, 5 }, { 5 }, '4-D vs [d]' },
  { { 1, 1, 1, 1 }, { 2, 3, 4, 5 }, '[1,1,1,1] vs 4-D' },
  { { 2, 3, 1, 5 }, { 3, 4, 1 }, '[2,3,1,5] vs [3,4,1]' },
  { { 2, 1, 1, 5 }, { 2, 3, 4, 1 }, '[2,1,1,5] vs [2,3,4,1]' },
  { { 3, 1, 4, 1 }, { 1, 2, 1, 3 }, '[3,1,4,1] vs [1,2,1,3]' },
  { { 1, 7, 1 }, { 5, 1, 9 }, 'odd sizes 3-D outer' },
  { { 0, 3 }, { 3 }, 'empty [0,3] vs [3]' },
  { { 0 }, { 1 }, 'empty [0] vs [1]' },
  { { 2, 0 }, { 2, 1 }, 'empty [2,0] vs [2,1]' },
}

describe('broadcasting binary ops', function()
  local g = H.lcg(2024)

  for _, case in ipairs(CASES) do
    local sa, sb, label = case[1], case[2], case[3]
    it(label .. ': + - * / exact, maximum minimum, pow', function()
      local fa = random_flat(g, sa, -10, 10)
      local fb = random_flat(g, sb, -10, 10)
      local a, b = make(fa, sa), make(fb, sb)
      for _, op in ipairs(OPS) do
        local want, so = bref(fa, sa, fb, sb, op.f)
        local got = op.t(a, b)
        assert.are.same(so, got:shape(), label .. ' ' .. op.sym .. ' shape')
        assert_bitwise(H.flatten(got:totable()), want, label .. ' ' .. op.sym)
        -- the named function and the method are the same operation
        assert_bitwise(H.flatten(tensor[op.name](a, b):totable()), want, label .. ' ' .. op.name)
        assert_bitwise(H.flatten(a[op.name](a, b):totable()), want, label .. ' :' .. op.name)
      end
      for _, mm in ipairs { { 'maximum', lmax }, { 'minimum', lmin } } do
        local want, so = bref(fa, sa, fb, sb, mm[2])
        local got = tensor[mm[1]](a, b)
        assert.are.same(so, got:shape())
        assert_bitwise(H.flatten(got:totable()), want, label .. ' ' .. mm[1])
        assert_bitwise(H.flatten(a[mm[1]](a, b):totable()), want, label .. ' :' .. mm[1])
      end
      -- pow: |a| ^ b, computed in double and rounded, as a correctly rounded result: <= 1 ulp
      local pa = {}
      for i, v in ipairs(fa) do pa[i] = f32(math.abs(v) / 4) end
      local want = bref(pa, sa, fb, sb, function(x, y) return x ^ y end)
      local got = H.flatten((make(pa, sa) ^ b):totable())
      for i = 1, #want do
        assert.is_true(H.ulp_err(got[i], want[i]) <= 1,
          ('%s pow element %d: %.9g vs %.9g'):format(label, i, got[i], want[i]))
      end
    end)
  end

  it('is symmetric in which operand is broadcast for the commutative ops', function()
    local fa = random_flat(g, { 5, 1 }, -3, 3)
    local fb = random_flat(g, { 1, 7 }, -3, 3)
    local a, b = make(fa, { 5, 1 }), make(fb, { 1, 7 })
    assert_bitwise(H.flatten((a + b):totable()), H.flatten((b + a):totable()), 'a+b vs b+a')
    assert_bitwise(H.flatten((a * b):totable()), H.flatten((b * a):totable()), 'a*b vs b*a')
  end)

  it('special values: every pair of 0 -0 +-inf nan 1 -1 max min-subnormal, bitwise', function()
    local sp = { 0.0, -0.0, math.huge, -math.huge, 0 / 0, 1.0, -1.0, H.FLT_MAX, -H.FLT_MAX,
                 H.FLT_TRUE_MIN, H.FLT_MIN, 3.0 }
    local n = #sp
    local col = make(sp, { n, 1 })
    local row = make(sp, { 1, n })
    for _, op in ipairs(OPS) do
      local want = bref(sp, { n, 1 }, sp, { 1, n }, op.f)
      assert_bitwise(H.flatten(op.t(col, row):totable()), want, 'special ' .. op.sym)
    end
    assert_bitwise(H.flatten(tensor.maximum(col, row):totable()),
                   bref(sp, { n, 1 }, sp, { 1, n }, lmax), 'special maximum')
    assert_bitwise(H.flatten(tensor.minimum(col, row):totable()),
                   bref(sp, { n, 1 }, sp, { 1, n }, lmin), 'special minimum')
  end)
end)

describe('scalars on either side', function()
  local g = H.lcg(77)
  local shape = { 3, 5 }
  local fa = random_flat(g, shape, -10, 10)
  local a = make(fa, shape)
  -- the scalar is rounded to float32 before the operation
  local scalars = { 2, -3, 0.1, 1e-3, 7.25, 0, 1e30 }

  for _, op in ipairs(OPS) do
    it('tensor ' .. op.sym .. ' s and s ' .. op.sym .. ' tensor', function()
      for _, s in ipairs(scalars) do
        local sf = f32(s)
        local right, left = {}, {}
        for i, v in ipairs(fa) do
          right[i] = op.f(v, sf)
          left[i] = op.f(sf, v)
        end
        assert_bitwise(H.flatten(op.t(a, s):totable()), right, ('x %s %g'):format(op.sym, s))
        assert_bitwise(H.flatten(op.t(s, a):totable()), left, ('%g %s x'):format(s, op.sym))
        assert_bitwise(H.flatten(tensor[op.name](a, s):totable()), right, op.name .. ' right')
        assert_bitwise(H.flatten(tensor[op.name](s, a):totable()), left, op.name .. ' left')
      end
    end)
  end

  it('tensor ^ s and s ^ tensor', function()
    local pa = {}
    for i, v in ipairs(fa) do pa[i] = f32(math.abs(v)) end
    local p = make(pa, shape)
    for _, s in ipairs { 2, 0.5, -1, 3, 0, 1.5 } do
      local got = H.flatten((p ^ s):totable())
      for i, v in ipairs(pa) do
        assert.is_true(H.ulp_err(got[i], v ^ f32(s)) <= 1, ('x ^ %g at %d'):format(s, i))
      end
      got = H.flatten((s ^ a):totable())
      for i, v in ipairs(fa) do
        assert.is_true(H.ulp_err(got[i], f32(s) ^ v) <= 1, ('%g ^ x at %d'):format(s, i))
      end
    end
    -- integer powers of small integers are exact
    assert_bitwise(H.flatten((tensor.new { 1, 2, 3, -2 } ^ 2):totable()), { 1, 4, 9, 4 }, 'x^2')
    assert_bitwise(H.flatten((2 ^ tensor.new { 0, 1, 10, -1 }):totable()), { 1, 2, 1024, 0.5 }, '2^x')
    -- negative base with a fractional exponent is NaN, as in C
    assert.is_true(H.isnan((tensor.new { -2 } ^ 0.5):item()))
  end)

  it('maximum and minimum with a scalar, NaN propagating from either side', function()
    local x = tensor.new { -2, 0.5, 3, 0 / 0 }
    H.assert_close(tensor.maximum(x, 0):totable(), { 0, 0.5, 3, 0 / 0 }, 0)
    H.assert_close(tensor.minimum(x, 0):totable(), { -2, 0, 0, 0 / 0 }, 0)
    H.assert_close(tensor.maximum(1, x):totable(), { 1, 1, 3, 0 / 0 }, 0)
    H.assert_close(tensor.minimum(1, x):totable(), { -2, 0.5, 1, 0 / 0 }, 0)
    H.assert_close(tensor.maximum(x, 0 / 0):totable(), { 0 / 0, 0 / 0, 0 / 0, 0 / 0 }, 0)
    H.assert_close(tensor.minimum(0 / 0, x):totable(), { 0 / 0, 0 / 0, 0 / 0, 0 / 0 }, 0)
  end)

  it('chains like the contract example: 2 * x + 1 and x * x / 3 - x ^ 2', function()
    local y = 2 * a + 1
    local y2 = a * a / 3 - a ^ 2
    local g1, g2 = H.flatten(y:totable()), H.flatten(y2:totable())
    for i, v in ipairs(fa) do
      assert.are.equal(f32(f32(2 * v) + 1), g1[i])
      -- x ^ 2 through double pow is exactly x*x rounded
      assert.are.equal(f32(f32(f32(v * v) / 3) - f32(v * v)), g2[i])
    end
  end)
end)

describe('unary minus', function()
  it('negates every element exactly, zeros change sign, NaN stays NaN', function()
    local vals = { 1.5, -2, 0.0, -0.0, math.huge, -math.huge, 0 / 0, H.FLT_TRUE_MIN }
    local got = (-tensor.new(vals)):totable()
    for i, v in ipairs(vals) do
      if v ~= v then
        assert.is_true(H.isnan(got[i]))
      else
        assert.are.equal(H.bits32(-v), H.bits32(got[i]), 'element ' .. i)
      end
    end
    local m = tensor.arange(6):reshape(2, 3)
    H.assert_close((-m):totable(), { { 0, -1, -2 }, { -3, -4, -5 } }, 0)
    assert.are.same({ 2, 3 }, (-m):shape())
    H.assert_close(m:neg():totable(), { { 0, -1, -2 }, { -3, -4, -5 } }, 0)
    H.assert_close(tensor.neg(m):totable(), { { 0, -1, -2 }, { -3, -4, -5 } }, 0)
  end)
end)
