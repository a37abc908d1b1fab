-- spec/matmul_spec.lua: matmul against a naive triple loop in Lua (double), on odd sizes, vector
-- and batched cases. Tolerance: a float32 dot product of length k is within
-- gamma_k * sum_p |a_ip b_pj|, gamma_k = k u / (1 - k u), u = 2^-24 (Higham, Thm 3.5).
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local tensor = diffuse.tensor

local U = 2.0 ^ -24

local function gamma(k) return k * U / (1 - k * U) end

local function rand_matrix(g, m, n, lo, hi)
  local t = {}
  for i = 1, m do t[i] = H.uniform_list(g, n, lo, hi) end
  return t
end

-- got (nested table m x n) against the naive product of a and b
local function check_product(got, a, b, what)
  local want, absw = H.matmul(a, b), H.matmul_abs(a, b)
  local k = #b
  assert.are.equal(#want, #got, what .. ': rows')
  for i = 1, #want do
    assert.are.equal(#want[i], #got[i], what .. ': columns')
    for j = 1, #want[i] do
      local tol = gamma(k) * absw[i][j]
      if not (math.abs(got[i][j] - want[i][j]) <= tol) then
        error(('%s: C[%d][%d] = %.9g, naive %.9g, tolerance %.3g'):format(
          what, i, j, got[i][j], want[i][j], tol), 2)
      end
    end
  end
end

local function column(v) -- {a, b, c} -> {{a}, {b}, {c}}
  local t = {}
  for i, x in ipairs(v) do t[i] = { x } end
  return t
end

describe('matmul', function()
  local g = H.lcg(5)

  local SIZES = { { 1, 1, 1 }, { 7, 13, 5 }, { 37, 64, 3 }, { 129, 257, 65 }, { 6, 7, 1030 },
                  { 5, 1, 4 }, { 4, 9, 4 }, { 3, 0, 2 } }
  for _, s in ipairs(SIZES) do
    local m, k, n = s[1], s[2], s[3]
    it(('(%dx%d) by (%dx%d) against a naive triple loop'):format(m, k, k, n), function()
      local a = rand_matrix(g, m, k, -1, 1)
      local b = rand_matrix(g, k, n, -1, 1)
      local ta = k > 0 and tensor.new(a) or tensor.zeros(m, 0)
      local tb = k > 0 and tensor.new(b) or tensor.zeros(0, n)
      local c = ta:matmul(tb)
      assert.are.same({ m, n }, c:shape())
      if k == 0 then
        H.assert_close(c:totable(), H.make({ m, n }, function() return 0 end), 0)
      else
        check_product(c:totable(), a, b, 'matmul')
        check_product(tensor.matmul(ta, tb):totable(), a, b, 'tensor.matmul')
      end
    end)
  end

  it('is exact on small integers (every partial sum below 2^24)', function()
    local a = H.make({ 9, 11 }, function(i) return (i * 7) % 13 - 6 end)
    local b = H.make({ 11, 6 }, function(i) return (i * 5) % 11 - 5 end)
    H.assert_close(tensor.new(a):matmul(tensor.new(b)):totable(), H.matmul(a, b), 0)
  end)

  it('vector cases: [k] x [k,n] -> [n], [m,k] x [k] -> [m], [k] x [k] -> [1]', function()
    local v = H.uniform_list(g, 13, -1, 1)
    local w = H.uniform_list(g, 13, -1, 1)
    local M = rand_matrix(g, 13, 5, -1, 1)
    local N = rand_matrix(g, 4, 13, -1, 1)
    local r = tensor.new(v):matmul(tensor.new(M))
    assert.are.same({ 5 }, r:shape())
    check_product({ r:totable() }, { v }, M, 'vector x matrix')
    local c = tensor.new(N):matmul(tensor.new(w))
    assert.are.same({ 4 }, c:shape())
    local ct = {}
    for i, x in ipairs(c:totable()) do ct[i] = { x } end
    check_product(ct, N, column(w), 'matrix x vector')
    local d = tensor.new(v):matmul(tensor.new(w))
    assert.are.same({ 1 }, d:shape())
    check_product({ { d:item() } }, { v }, column(w), 'dot')
  end)

  it('batched 3-D, and a 2-D operand broadcast over the batch', function()
    local B, m, k, n = 3, 5, 7, 4
    local A, Bm = {}, {}
    for i = 1, B do
      A[i] = rand_matrix(g, m, k, -2, 2)
      Bm[i] = rand_matrix(g, k, n, -2, 2)
    end
    local ta, tb = tensor.new(A), tensor.new(Bm)
    local c = ta:matmul(tb)
    assert.are.same({ B, m, n }, c:shape())
    local ct = c:totable()
    for i = 1, B do check_product(ct[i], A[i], Bm[i], 'batch ' .. i) end
    -- [B,m,k] x [k,n]
    local M2 = rand_matrix(g, k, n, -2, 2)
    local c2 = ta:matmul(tensor.new(M2)):totable()
    assert.are.equal(B, #c2)
    for i = 1, B do check_product(c2[i], A[i], M2, 'broadcast right, batch ' .. i) end
    -- [m,k] x [B,k,n]
    local L2 = rand_matrix(g, m, k, -2, 2)
    local c3 = tensor.new(L2):matmul(tb)
    assert.are.same({ B, m, n }, c3:shape())
    c3 = c3:totable()
    for i = 1, B do check_product(c3[i], L2, Bm[i], 'broadcast left, batch ' .. i) end
    -- a batch of 1 broadcasts too
    local c4 = tensor.new({ L2 }):matmul(tb)
    assert.are.same({ B, m, n }, c4:shape())
    c4 = c4:totable()
    for i = 1, B do check_product(c4[i], L2, Bm[i], 'batch-1 left, batch ' .. i) end
    local c5 = ta:matmul(tensor.new({ M2 })):totable()
    for i = 1, B do check_product(c5[i], A[i], M2, 'batch-1 right, batch ' .. i) end
  end)

  it('an empty batch stays empty, also against a broadcast matrix or a batch of 1', function()
    local z = tensor.zeros(0, 2, 3)
    for _, case in ipairs {
      { z, tensor.ones(3, 4), { 0, 2, 4 } }, { z, tensor.ones(1, 3, 4), { 0, 2, 4 } },
      { tensor.ones(2, 3), tensor.zeros(0, 3, 4), { 0, 2, 4 } },
      { tensor.ones(1, 2, 3), tensor.zeros(0, 3, 4), { 0, 2, 4 } },
      { z, tensor.zeros(0, 3, 4), { 0, 2, 4 } }, { z, tensor.ones(3), { 0, 2 } },
    } do
      local c = case[1]:matmul(case[2])
      assert.are.same(case[3], c:shape())
      assert.are.equal(0, c:numel())
    end
    -- and inner size 0: sums of nothing, zeros (shapes large enough for the register tiles,
    -- batched and broadcast, after a dirty allocation of the same size)
    assert.are.same({ { 0, 0 }, { 0, 0 } }, tensor.ones(2, 0):matmul(tensor.ones(0, 2)):totable())
    for _, case in ipairs { { { 8, 0 }, { 0, 64 } }, { { 3, 8, 0 }, { 0, 64 } }, { { 8, 0 }, { 2, 0, 40 } } } do
      local junk = tensor.full({ 3 * 8 * 64 }, 7.5)
      junk:free()
      local c = tensor.zeros(table.unpack(case[1])):matmul(tensor.zeros(table.unpack(case[2])))
      assert.are.equal(0, c:abs():sum())
    end
  end)

  it('batched with a vector operand: [k] x [B,k,n] -> [B,n], [B,m,k] x [k] -> [B,m]', function()
    local B, m, k, n = 2, 3, 5, 4
    local A, Bm = {}, {}
    for i = 1, B do
      A[i] = rand_matrix(g, m, k, -1, 1)
      Bm[i] = rand_matrix(g, k, n, -1, 1)
    end
    local v = H.uniform_list(g, k, -1, 1)
    local r = tensor.new(v):matmul(tensor.new(Bm))
    assert.are.same({ B, n }, r:shape())
    local rt = r:totable()
    for i = 1, B do check_product({ rt[i] }, { v }, Bm[i], 'vector x batch ' .. i) end
    local c = tensor.new(A):matmul(tensor.new(v))
    assert.are.same({ B, m }, c:shape())
    local ctab = c:totable()
    for i = 1, B do
      local col = {}
      for j, x in ipairs(ctab[i]) do col[j] = { x } end
      check_product(col, A[i], column(v), 'batch x vector ' .. i)
    end
  end)

  it('works on views (rows of a bigger tensor, reshaped buffers)', function()
    local a = rand_matrix(g, 6, 4, -1, 1)
    local b = rand_matrix(g, 4, 3, -1, 1)
    local big = tensor.new { a, a }
    check_product(big[2]:matmul(tensor.new(b)):totable(), a, b, 'view of a batch')
    local flatb = tensor.new(H.flatten(b)):reshape(4, 3)
    check_product(tensor.new(a):matmul(flatb):totable(), a, b, 'reshaped operand')
  end)
end)
