-- spec/threads_spec.lua: results do not depend on the number of CPU threads: every parallel
-- operation splits its work the same way whatever runs it, so 1 and 2 threads agree bit for bit.
local diffuse = require 'diffuse'
local tensor = diffuse.tensor

local function with_threads(n, fn)
  local before = diffuse.get_threads()
  diffuse.set_threads(n)
  local ok, a, b = pcall(fn)
  diffuse.set_threads(before)
  assert(ok, a)
  return a, b
end

local function same(a, b)
  assert.same(a:shape(), b:shape())
  assert.equal(0, (a - b):abs():max())
  -- NaN-free and the same: max |a - b| = 0 covers it; check the sums agree exactly too
  assert.equal(a:sum(), b:sum())
end

describe('threads', function()
  local ve = diffuse.ve(1.1)

  it('set_threads and get_threads, with checked arguments', function()
    with_threads(2, function() assert.equal(2, diffuse.get_threads()) end)
    assert.error_matches(function() diffuse.set_threads(0) end, 'diffuse.set_threads: n must be between 1 and 1024')
    assert.error_matches(function() diffuse.set_threads(1.5) end, 'n must be an integer')
  end)

  it('elementwise ops, random streams, reductions and matmul', function()
    local function run()
      diffuse.seed(1)
      local x = tensor.randn(300001)
      local y = tensor.rand(300001)
      local a, b = tensor.randn(200, 300), tensor.randn(300, 150)
      return { x:exp(), x * y + 1, x:silu(), a:matmul(b), x:sum(), x:std(), a:sum(1), a:max(2) }
    end
    local one = with_threads(1, run)
    local two = with_threads(2, run)
    for i, v in ipairs(one) do
      if type(v) == 'number' then assert.equal(v, two[i]) else same(v, two[i]) end
    end
  end)

  it('samplers: the fused exact ODE and SDE at 2^20 samples, a mixture, and Heun', function()
    local mix = diffuse.score.mixture(ve, { weights = { 1, 2 }, means = { -1, 1 }, stds = { 0.2, 0.3 } })
    local function run()
      diffuse.seed(2)
      local x1 = ve:prior(1 << 20)
      local out = {}
      for _, m in ipairs{ 'euler', 'euler_maruyama', 'heun' } do
        out[#out + 1] = diffuse.sampler{ diffuser = ve, steps = 20, method = m }:run(x1, diffuse.score.exact(ve))
      end
      out[#out + 1] = diffuse.sampler{ diffuser = ve, steps = 20, method = 'euler_maruyama' }:run(mix:sample(5000, 1), mix)
      return out
    end
    local one, two = with_threads(1, run), with_threads(2, run)
    for i = 1, #one do same(one[i], two[i]) end
  end)

  it('training: the losses and parameters of both networks', function()
    local function run(make)
      diffuse.seed(3)
      local net = make()
      local losses = diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(2048, 1), steps = 20 }
      return losses, net:parameters()
    end
    for _, make in ipairs{ function() return diffuse.nn.mlp{ dim = 1 } end,
                           function() return diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 64 } end } do
      local l1, p1 = with_threads(1, function() return run(make) end)
      local l2, p2 = with_threads(2, function() return run(make) end)
      same(l1, l2)
      same(p1, p2)
    end
  end)
end)
