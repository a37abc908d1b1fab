-- spec/rng_spec.lua: the random streams. Philox4x32-10 against the published known-answer
-- vectors (Random123 kat_vectors), rand and randn against their definitions computed in Lua
-- from an independent Lua Philox, moments with tolerances of K standard errors derived from
-- the sample size, reproducibility and the stream state.
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local tensor = diffuse.tensor

local K = 5 -- standard errors allowed in every statistical test (never tuned)
local MASK = 0xffffffff

-- Philox4x32-10 in plain Lua (64-bit integers wrap, >> is a logical shift)
local function lua_philox(ctr, key)
  local c0, c1, c2, c3 = ctr[1], ctr[2], ctr[3], ctr[4]
  local k0, k1 = key[1], key[2]
  for _ = 1, 10 do
    local p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
    c0, c1, c2, c3 = ((p1 >> 32) & MASK) ~ c1 ~ k0, p1 & MASK, ((p0 >> 32) & MASK) ~ c3 ~ k1, p0 & MASK
    k0, k1 = (k0 + 0x9E3779B9) & MASK, (k1 + 0xBB67AE85) & MASK
  end
  return { c0, c1, c2, c3 }
end

local KAT = {
  { ctr = { 0, 0, 0, 0 }, key = { 0, 0 },
    out = { 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 } },
  { ctr = { 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff }, key = { 0xffffffff, 0xffffffff },
    out = { 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd } },
  { ctr = { 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344 }, key = { 0xa4093822, 0x299f31d0 },
    out = { 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1 } },
}

-- the four words of block b of stream s under seed S (all Lua integers, taken as uint64)
local function block(S, s, b)
  return lua_philox({ b & MASK, (b >> 32) & MASK, s & MASK, (s >> 32) & MASK },
                    { S & MASK, (S >> 32) & MASK })
end

-- element i (0-based) of rand / randn, by the definitions
local function rand_at(S, s, i)
  local w = block(S, s, i // 4)
  return (w[i % 4 + 1] >> 8) * 2.0 ^ -24
end

local function randn_pair(w0, w1)
  local u1 = ((w0 >> 8) + 1) * 2.0 ^ -24
  local u2 = (w1 >> 8) * 2.0 ^ -24
  local r = math.sqrt(-2 * math.log(u1))
  return r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2), r
end

local function randn_at(S, s, i)
  local w = block(S, s, i // 4)
  local j = i % 4
  local z0, z1, r
  if j < 2 then z0, z1, r = randn_pair(w[1], w[2]) else z0, z1, r = randn_pair(w[3], w[4]) end
  return (j % 2 == 0) and z0 or z1, r
end

local function hex(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = ('%08x'):format(v) end
  return table.concat(s, ' ')
end

describe('Philox4x32-10', function()
  it('the native generator gives the Random123 known answers', function()
    for _, v in ipairs(KAT) do
      assert.are.equal(hex(v.out), hex(diffuse.core.philox(v.ctr, v.key)))
    end
  end)

  it('the Lua reference used below gives them too', function()
    for _, v in ipairs(KAT) do assert.are.equal(hex(v.out), hex(lua_philox(v.ctr, v.key))) end
  end)

  it('native and Lua agree on arbitrary counters and keys', function()
    local g = H.lcg(17)
    for _ = 1, 50 do
      local ctr, key = {}, {}
      for i = 1, 4 do ctr[i] = math.floor(g() * 2 ^ 32) end
      for i = 1, 2 do key[i] = math.floor(g() * 2 ^ 32) end
      assert.are.equal(hex(lua_philox(ctr, key)), hex(diffuse.core.philox(ctr, key)))
    end
  end)
end)

describe('rand and randn by their definitions', function()
  local SEEDS = { 0, 1234, (1 << 40) + 5, -1 }

  it('rand is (w >> 8) * 2^-24 of word i % 4 of block i // 4, bitwise', function()
    for _, S in ipairs(SEEDS) do
      diffuse.seed(S)
      for s = 0, 2 do -- each random tensor takes the next stream
        local x = tensor.rand(37):totable()
        for i = 0, 36 do
          assert.are.equal(rand_at(S, s, i), x[i + 1], ('seed %d stream %d element %d'):format(S, s, i))
        end
      end
    end
  end)

  it('randn is Box-Muller of the same words, to 1e-6 of the radius', function()
    -- float32 log, sqrt and the 2 pi u reduction each contribute a few 2^-24 relative errors to
    -- r and to cos/sin; 1e-6 r is about 16 of them
    for _, S in ipairs(SEEDS) do
      diffuse.seed(S)
      for s = 0, 1 do
        local x = tensor.randn(1001):totable()
        for i = 0, 1000 do
          local z, r = randn_at(S, s, i)
          if not (math.abs(x[i + 1] - z) <= 1e-6 * r) then
            error(('seed %d stream %d element %d: %.9g vs %.9g (r = %g)'):format(S, s, i, x[i + 1], z, r))
          end
        end
      end
    end
  end)

  it('rand and randn share one stream counter; streams beyond 2^32 use the high word', function()
    diffuse.seed(99)
    local u = tensor.rand(8):totable()
    local z = tensor.randn(8):totable()
    for i = 0, 7 do
      assert.are.equal(rand_at(99, 0, i), u[i + 1])
      local zr, r = randn_at(99, 1, i)
      assert.is_true(math.abs(z[i + 1] - zr) <= 1e-6 * r)
    end
    local s = (1 << 33) + 7
    diffuse.set_rng_state(99, s)
    local v = tensor.rand(8):totable()
    for i = 0, 7 do assert.are.equal(rand_at(99, s, i), v[i + 1]) end
    local S2, s2 = diffuse.rng_state()
    assert.are.equal(99, S2)
    assert.are.equal(s + 1, s2)
  end)

  it('randn of the largest and smallest uniform words stays finite', function()
    -- u1 is in (0, 1]: w0 >> 8 = 2^24 - 1 gives u1 = 1, r = 0; the smallest u1 = 2^-24 gives
    -- r = sqrt(48 ln 2) ~ 5.77, the largest |z| possible
    local rmax = math.sqrt(-2 * math.log(2.0 ^ -24))
    diffuse.seed(5)
    local x = tensor.randn(1 << 16)
    assert.is_true(x:max() <= rmax * (1 + 1e-6))
    assert.is_true(x:min() >= -rmax * (1 + 1e-6))
    local n_nan = 0
    for _, v in ipairs(x:totable()) do if v ~= v then n_nan = n_nan + 1 end end
    assert.are.equal(0, n_nan)
  end)
end)

describe('moments', function()
  local N = 1 << 20

  it('randn: mean 0, variance 1, P(|z| > 1) and P(|z| > 2), within ' .. K .. ' standard errors', function()
    for _, S in ipairs { 42, 7 } do
      diffuse.seed(S)
      local x = tensor.randn(N)
      local mean, var = x:mean(), x:var()
      assert.is_true(math.abs(mean) <= K / math.sqrt(N), 'mean ' .. mean)
      -- Var(s^2) = 2 sigma^4 / (N - 1) for normal data
      assert.is_true(math.abs(var - 1) <= K * math.sqrt(2 / (N - 1)), 'var ' .. var)
      local c = x:abs():histogram { bins = 2, min = 0, max = 2 }:totable()
      local p1, p2 = (N - c[1]) / N, (N - c[1] - c[2]) / N
      local e1, e2 = 0.31731050786291415, 0.04550026389635842 -- erfc(1/sqrt 2), erfc(sqrt 2)
      assert.is_true(math.abs(p1 - e1) <= K * math.sqrt(e1 * (1 - e1) / N), 'P(|z|>1) ' .. p1)
      assert.is_true(math.abs(p2 - e2) <= K * math.sqrt(e2 * (1 - e2) / N), 'P(|z|>2) ' .. p2)
      -- the two halves of each Box-Muller pair (cos and sin) are uncorrelated
      local pairs_ = x:reshape(N // 2, 2)
      local prod = 0
      local t = pairs_:totable()
      for i = 1, #t do prod = prod + t[i][1] * t[i][2] end
      assert.is_true(math.abs(prod / (N / 2)) <= K / math.sqrt(N / 2), 'pair correlation')
    end
  end)

  it('rand: in [0, 1), mean 1/2, variance 1/12, P(u < 1/4), within ' .. K .. ' standard errors', function()
    for _, S in ipairs { 42, 7 } do
      diffuse.seed(S)
      local x = tensor.rand(N)
      assert.is_true(x:min() >= 0)
      assert.is_true(x:max() < 1)
      local mean, var = x:mean(), x:var()
      assert.is_true(math.abs(mean - 0.5) <= K * math.sqrt(1 / 12 / N), 'mean ' .. mean)
      -- Var(s^2) ~ (mu4 - sigma^4) / N with mu4 = 1/80, sigma^2 = 1/12
      assert.is_true(math.abs(var - 1 / 12) <= K * math.sqrt((1 / 80 - 1 / 144) / N), 'var ' .. var)
      local c = x:histogram { bins = 4, min = 0, max = 1 }:totable()
      for b = 1, 4 do
        local p = c[b] / N
        assert.is_true(math.abs(p - 0.25) <= K * math.sqrt(0.25 * 0.75 / N), 'quarter ' .. b .. ': ' .. p)
      end
    end
  end)
end)

describe('reproducibility', function()
  it('the same seed gives the same numbers', function()
    diffuse.seed(2024)
    local a, b = tensor.randn(100):totable(), tensor.rand(50):totable()
    diffuse.seed(2024)
    H.assert_close(tensor.randn(100):totable(), a, 0)
    H.assert_close(tensor.rand(50):totable(), b, 0)
    diffuse.seed(2025)
    local c = tensor.randn(100):totable()
    local same = 0
    for i = 1, 100 do if c[i] == a[i] then same = same + 1 end end
    assert.are.equal(0, same)
  end)

  it('consecutive tensors differ', function()
    diffuse.seed(1)
    local a, b = tensor.rand(64):totable(), tensor.rand(64):totable()
    local same = 0
    for i = 1, 64 do if a[i] == b[i] then same = same + 1 end end
    assert.is_true(same <= 1) -- a coincidence has probability 64 * 2^-24
  end)

  it('the numbers do not depend on the shape', function()
    for _, f in ipairs { tensor.randn, tensor.rand } do
      diffuse.seed(31)
      local flat = f(100):totable()
      diffuse.seed(31)
      H.assert_close(H.flatten(f(10, 10):totable()), flat, 0)
      diffuse.seed(31)
      H.assert_close(H.flatten(f({ 4, 25 }):totable()), flat, 0)
      diffuse.seed(31)
      H.assert_close(H.flatten(f(2, 5, 2, 5):totable()), flat, 0)
      diffuse.seed(31)
      local short = f(3):totable() -- a prefix of the same stream
      H.assert_close(short, { flat[1], flat[2], flat[3] }, 0)
    end
  end)

  it('seed returns the seed and restarts the stream counter; seed() picks one', function()
    assert.are.equal(77, diffuse.seed(77))
    local S, s = diffuse.rng_state()
    assert.are.equal(77, S)
    assert.are.equal(0, s)
    tensor.rand(3)
    tensor.randn(3)
    S, s = diffuse.rng_state()
    assert.are.equal(77, S)
    assert.are.equal(2, s)
    local picked = diffuse.seed()
    assert.are.equal('integer', math.type(picked))
    S, s = diffuse.rng_state()
    assert.are.equal(picked, S)
    assert.are.equal(0, s)
  end)

  it('rng_state / set_rng_state restore a stream', function()
    diffuse.seed(3)
    tensor.randn(10)
    local S, s = diffuse.rng_state()
    local a = tensor.randn(50):totable()
    local b = tensor.rand(50):totable()
    tensor.randn(7) -- move on
    diffuse.set_rng_state(S, s)
    H.assert_close(tensor.randn(50):totable(), a, 0)
    H.assert_close(tensor.rand(50):totable(), b, 0)
  end)

  it('every state rng_state gives can be set again, past 2^63 streams too', function()
    diffuse.set_rng_state(1, math.maxinteger)
    tensor.randn(3)
    tensor.randn(3)
    local S, s = diffuse.rng_state()
    assert.is_true(s < 0) -- the counter's bits, as a seed's
    local a = tensor.randn(5):totable()
    diffuse.set_rng_state(S, s)
    H.assert_close(tensor.randn(5):totable(), a, 0)
  end)
end)
