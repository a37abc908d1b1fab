-- spec/reduce_spec.lua: sum mean std var min max, over the whole tensor (Lua numbers, accumulated
-- in double) and along one dimension (float32 tensors; min/max also give 1-based indices),
-- against plain-Lua loops. std and var are unbiased (n - 1), as torch.
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local tensor = diffuse.tensor
local f32 = H.f32

local EPS64 = 2.0 ^ -52

local function prod(s)
  local n = 1
  for _, v in ipairs(s) do n = n * v end
  return n
end

-- plain-Lua statistics of a list, in double
local function lsum(v)
  local s = 0
  for i = 1, #v do s = s + v[i] end
  return s
end
local function lsumabs(v)
  local s = 0
  for i = 1, #v do s = s + math.abs(v[i]) end
  return s
end
local function lvar(v)
  local n = #v
  if n < 2 then return 0 / 0 end
  local m = lsum(v) / n
  local s = 0
  for i = 1, n do s = s + (v[i] - m) ^ 2 end
  return s / (n - 1)
end
local function lmin(v)
  local m, at = v[1], 1
  for i = 1, #v do
    if v[i] ~= v[i] then return v[i], i end
    if v[i] < m then m, at = v[i], i end
  end
  return m, at
end
local function lmax(v)
  local m, at = v[1], 1
  for i = 1, #v do
    if v[i] ~= v[i] then return v[i], i end
    if v[i] > m then m, at = v[i], i end
  end
  return m, at
end

-- the lists along dimension d of a flat row-major tensor of shape s: returns a list of
-- {values} in output order, and the output shape without / with keepdim
local function slices(flat, s, d)
  local outer, inner, len = 1, 1, s[d]
  for i = 1, d - 1 do outer = outer * s[i] end
  for i = d + 1, #s do inner = inner * s[i] end
  local out = {}
  for o = 0, outer - 1 do
    for i = 0, inner - 1 do
      local v = {}
      for l = 0, len - 1 do v[l + 1] = flat[o * len * inner + l * inner + i + 1] end
      out[#out + 1] = v
    end
  end
  local sh, keep = {}, {}
  for i = 1, #s do
    if i ~= d then sh[#sh + 1] = s[i] end
    keep[i] = i == d and 1 or s[i]
  end
  if #sh == 0 then sh = { 1 } end
  return out, sh, keep
end

-- a double accumulation in another order differs by at most n * eps * sum|v| (Higham);
-- the float32 result adds half an ulp of rounding (1 ulp allowed for the double's own error)
local function sum_tol(v)
  return #v * EPS64 * lsumabs(v)
end

describe('whole-tensor reductions', function()
  local g = H.lcg(11)
  local shapes = { { 1 }, { 7 }, { 3, 5 }, { 2, 3, 4 }, { 2, 3, 2, 5 }, { 10001 } }

  for _, s in ipairs(shapes) do
    it('of shape ' .. H.shape_str(s) .. ' are Lua numbers equal to plain-Lua double sums', function()
      local flat = H.uniform_list(g, prod(s), -5, 7)
      local x = tensor.new(H.unflatten(flat, s))
      local n = #flat
      local sum = x:sum()
      assert.are.equal('number', type(sum))
      assert.is_true(math.abs(sum - lsum(flat)) <= sum_tol(flat), 'sum')
      local mean = x:mean()
      assert.is_true(math.abs(mean - lsum(flat) / n) <= sum_tol(flat) / n + EPS64 * math.abs(mean), 'mean')
      local var = lvar(flat)
      if n == 1 then
        assert.is_true(H.isnan(x:var()))
        assert.is_true(H.isnan(x:std()))
      else
        -- two-pass variance in double: relative error a few n * eps
        assert.is_true(math.abs(x:var() - var) <= 4 * n * EPS64 * var, 'var')
        assert.is_true(math.abs(x:std() - math.sqrt(var)) <= 4 * n * EPS64 * math.sqrt(var), 'std')
      end
      assert.are.equal((lmin(flat)), x:min())
      assert.are.equal((lmax(flat)), x:max())
      -- the module functions are the same
      assert.are.equal(sum, tensor.sum(x))
      assert.are.equal(x:max(), tensor.max(x))
    end)
  end

  it('std and var are unbiased, as torch: var{1,2,3,4} = 5/3', function()
    local x = tensor.new { 1, 2, 3, 4 }
    assert.is_true(math.abs(x:var() - 5 / 3) <= 4 * EPS64)
    assert.is_true(math.abs(x:std() - math.sqrt(5 / 3)) <= 4 * EPS64)
    assert.are.equal(2.5, x:mean())
    assert.are.equal(10, x:sum())
    assert.are.equal(0, tensor.full({ 5 }, 3):var())
  end)

  it('accumulate in double: the sum of 2^24 + 1 + 1 ... does not lose the ones', function()
    local x = tensor.ones(1001)
    x[1] = 2 ^ 24
    assert.are.equal(2 ^ 24 + 1000, x:sum())
  end)

  it('sum of an empty tensor is 0; mean/var/std of one are NaN; min/max raise', function()
    local e = tensor.zeros(0)
    assert.are.equal(0, e:sum())
    assert.are.equal(0, tensor.zeros(3, 0):sum())
    assert.is_true(H.isnan(e:mean()))
    assert.is_true(H.isnan(e:var()))
    assert.is_true(H.isnan(e:std()))
    H.assert_error('^diffuse%.tensor%.min: .*empty', function() return e:min() end)
    H.assert_error('^diffuse%.tensor%.max: .*empty', function() return e:max() end)
  end)

  it('var of one element is NaN', function()
    assert.is_true(H.isnan(tensor.new { 3 }:var()))
    assert.is_true(H.isnan(tensor.new { 3 }:std()))
  end)

  it('min and max propagate NaN wherever it is', function()
    for pos = 1, 4 do
      local v = { 1, -2, 5, 0.5 }
      v[pos] = 0 / 0
      local x = tensor.new(v)
      assert.is_true(H.isnan(x:min()), 'min, NaN at ' .. pos)
      assert.is_true(H.isnan(x:max()), 'max, NaN at ' .. pos)
      assert.is_true(H.isnan(x:sum()))
    end
    assert.are.equal(-math.huge, tensor.new { 1, -math.huge }:min())
    assert.are.equal(math.huge, tensor.new { math.huge, 1 }:max())
  end)
end)

describe('reductions along a dimension', function()
  local g = H.lcg(99)
  local shapes = { { 7 }, { 3, 5 }, { 2, 3, 4 }, { 2, 3, 1, 5 }, { 4, 1 }, { 1, 6 }, { 33, 17 } }

  for _, s in ipairs(shapes) do
    it('of shape ' .. H.shape_str(s) .. ', every dim, keepdim, negative dims', function()
      local flat = H.uniform_list(g, prod(s), -3, 3)
      -- a repeated extremum: the index is the first occurrence
      flat[#flat] = flat[1]
      local x = tensor.new(H.unflatten(flat, s))
      for d = 1, #s do
        local sl, sh, keep = slices(flat, s, d)
        local ws, wm, wv, wsd, wmin, wmax, wimin, wimax = {}, {}, {}, {}, {}, {}, {}, {}
        for i, v in ipairs(sl) do
          ws[i] = lsum(v)
          wm[i] = lsum(v) / #v
          wv[i] = lvar(v)
          wsd[i] = math.sqrt(wv[i])
          wmin[i], wimin[i] = lmin(v)
          wmax[i], wimax[i] = lmax(v)
        end
        local function check(name, got, want, tolf)
          assert.are.same(sh, got:shape(), name .. ' shape along ' .. d)
          local gf = H.flatten(got:totable())
          for i = 1, #want do
            local w = want[i]
            local ok
            if w ~= w then ok = gf[i] ~= gf[i]
            else ok = math.abs(gf[i] - w) <= tolf(i, w) end
            if not ok then
              error(('%s of %s along %d, item %d: expected %.9g, got %.9g'):format(
                name, H.shape_str(s), d, i, w, gf[i]))
            end
          end
        end
        -- float32 results: within one float32 ulp of the double value plus the double's error
        local function f32tol(extra)
          return function(i, w) return H.ulp32(w) + extra(i) end
        end
        check('sum', x:sum(d), ws, f32tol(function(i) return sum_tol(sl[i]) end))
        check('mean', x:mean(d), wm, f32tol(function(i) return sum_tol(sl[i]) / #sl[i] end))
        check('var', x:var(d), wv, f32tol(function(i) return 4 * #sl[i] * EPS64 * wv[i] end))
        check('std', x:std(d), wsd, f32tol(function(i) return 4 * #sl[i] * EPS64 * wsd[i] end))
        local exact = function() return 0 end
        local mn, imn = x:min(d)
        local mx, imx = x:max(d)
        check('min', mn, wmin, exact)
        check('max', mx, wmax, exact)
        check('argmin', imn, wimin, exact)
        check('argmax', imx, wimax, exact)
        -- keepdim keeps a 1 in place of the reduced dimension, same values
        local k = x:sum(d, true)
        assert.are.same(keep, k:shape())
        H.assert_close(H.flatten(k:totable()), H.flatten(x:sum(d):totable()), 0)
        local km, ki = x:max(d, true)
        assert.are.same(keep, km:shape())
        assert.are.same(keep, ki:shape())
        H.assert_close(H.flatten(ki:totable()), wimax, 0)
        assert.are.same(sh, x:sum(d, false):shape())
        -- negative dims count from the end
        H.assert_close(x:sum(d - #s - 1):totable(), x:sum(d):totable(), 0)
        H.assert_close(x:min(d - #s - 1):totable(), mn:totable(), 0)
        H.assert_close(tensor.mean(x, d):totable(), x:mean(d):totable(), 0)
      end
    end)
  end

  it('min/max along a dim: NaN propagates with the index of the first NaN', function()
    local x = tensor.new { { 1, 0 / 0, 3, 0 / 0 }, { 4, 2, -1, 5 }, { 0 / 0, 9, 9, -9 } }
    local m, i = x:max(2)
    H.assert_close(m:totable(), { 0 / 0, 5, 0 / 0 }, 0)
    H.assert_close(i:totable(), { 2, 4, 1 }, 0)
    m, i = x:min(2)
    H.assert_close(m:totable(), { 0 / 0, -1, 0 / 0 }, 0)
    H.assert_close(i:totable(), { 2, 3, 1 }, 0)
    m, i = x:max(1)
    H.assert_close(m:totable(), { 0 / 0, 0 / 0, 9, 0 / 0 }, 0)
    H.assert_close(i:totable(), { 3, 1, 3, 1 }, 0)
    -- ties: the first position
    m, i = tensor.new { 2, 7, 7, 1, 7 }:max(1)
    H.assert_close(m:totable(), { 7 }, 0)
    H.assert_close(i:totable(), { 2 }, 0)
  end)

  it('a 1-D tensor reduces to a one-element tensor', function()
    local x = tensor.new { 1, 2, 3 }
    assert.are.same({ 1 }, x:sum(1):shape())
    assert.are.equal(6, x:sum(1):item())
    assert.are.same({ 1 }, x:sum(1, true):shape())
    assert.are.same({ 1 }, x:sum(-1):shape())
  end)

  it('var along a dim of length 1 is NaN; sums over an empty dim are 0', function()
    local x = tensor.new { { 1, 2, 3 } }
    H.assert_close(x:var(1):totable(), { 0 / 0, 0 / 0, 0 / 0 }, 0)
    H.assert_close(x:std(1):totable(), { 0 / 0, 0 / 0, 0 / 0 }, 0)
    H.assert_close(x:var(2):totable(), { 1 }, 0)
    local e = tensor.zeros(3, 0)
    H.assert_close(e:sum(2):totable(), { 0, 0, 0 }, 0)
    assert.are.same({ 0 }, e:sum(1):shape())
    H.assert_error('^diffuse%.tensor%.max: .*empty', function() return e:max(2) end)
  end)
end)
