-- spec/lifetime_spec.lua: tensor lifetime. `local x <close>` releases at scope end, __gc and
-- __close share one idempotent release, a released tensor raises on every use, views keep their
-- owner alive (through a user value) and see it released when it is freed explicitly.
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local tensor = diffuse.tensor

local RELEASED = 'attempt to use a released tensor'

local function released_error(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, 'expected an error')
  assert.is_truthy(tostring(err):find(RELEASED, 1, true), 'unexpected error: ' .. tostring(err))
end

-- a live tensor of the kind each method expects as a partner argument
local function partner() return tensor.ones(2, 2) end

-- every method with arguments that would be valid for a live 2x2 tensor
local METHOD_ARGS = {
  add = { 1 }, sub = { 1 }, mul = { 1 }, div = { 1 }, pow = { 2 }, maximum = { 0 }, minimum = { 0 },
  sum = {}, mean = {}, var = {}, std = {}, min = {}, max = {},
  matmul = { 'partner' }, reshape = { 4 }, clone = {}, fill = { 1 }, copy = { 'partner' },
  to = { 'cpu' }, totable = {}, item = {}, shape = {}, size = { 1 }, dim = {}, numel = {},
  histogram = { { bins = 2, min = 0, max = 1 } },
}

describe('lifetime', function()
  it('a <close> variable is released at the end of its scope', function()
    local keep
    do
      local x <close> = tensor.zeros(100)
      keep = x
      assert.is_false(x:is_released())
      assert.are.equal(0, x:sum())
    end
    assert.is_true(keep:is_released())
  end)

  it('a <close> variable is released when its scope ends by an error', function()
    local keep
    local ok = pcall(function()
      local x <close> = tensor.ones(10)
      keep = x
      error('boom')
    end)
    assert.is_false(ok)
    assert.is_true(keep:is_released())
  end)

  it('a released tensor raises on every method', function()
    local x = tensor.ones(2, 2)
    x:free()
    assert.is_true(x:is_released())
    local methods = getmetatable(x).methods
    local seen = 0
    for name, f in pairs(methods) do
      if name ~= 'free' and name ~= 'is_released' then
        local args = METHOD_ARGS[name] or {}
        local call = {}
        for i, a in ipairs(args) do call[i] = a == 'partner' and partner() or a end
        released_error(f, x, table.unpack(call))
        seen = seen + 1
      end
    end
    -- every method of the contract was among them
    for _, name in ipairs { 'exp', 'log', 'sqrt', 'abs', 'sin', 'cos', 'tanh', 'silu', 'sum', 'mean',
                            'std', 'var', 'min', 'max', 'matmul', 'reshape', 'clone', 'to',
                            'totable', 'item', 'histogram', 'shape', 'size', 'dim', 'numel' } do
      assert.is_function(methods[name], name)
    end
    assert.is_true(seen >= 35)
  end)

  it('a released tensor raises in every operator, on either side', function()
    local x = tensor.ones(2, 2)
    local y = tensor.ones(2, 2)
    x:free()
    released_error(function() return x + 1 end)
    released_error(function() return 1 + x end)
    released_error(function() return x + y end)
    released_error(function() return y + x end)
    released_error(function() return y - x end)
    released_error(function() return x * y end)
    released_error(function() return y / x end)
    released_error(function() return x ^ 2 end)
    released_error(function() return 2 ^ x end)
    released_error(function() return -x end)
    released_error(function() return #x end)
    released_error(function() return x[1] end)
    released_error(function() x[1] = 0 end)
    released_error(function() y[1] = x[1] end)
    released_error(function() y[1] = x end)
    released_error(function() return x.device end)
    released_error(tensor.cat, { y, x })
    released_error(tensor.matmul, y, x)
    released_error(tensor.copy, y, x)
    released_error(tensor.maximum, y, x)
    -- the live partner was not harmed
    assert.are.equal(4, y:sum())
  end)

  it('printing a released tensor does not raise', function()
    local x = tensor.ones(3)
    x:free()
    assert.are.equal('[diffuse.tensor (released)]', tostring(x))
  end)

  it('double release is fine: free, free again, then close and gc', function()
    local x = tensor.ones(3)
    x:free()
    x:free()
    assert.is_true(x:is_released())
    do
      local y <close> = tensor.ones(3)
      y:free()
    end
    local z = tensor.ones(5)
    z:free()
    z = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
  end)

  it('collectgarbage frees unreachable tensors (their finaliser runs, no crash)', function()
    local weak = setmetatable({}, { __mode = 'v' })
    for i = 1, 50 do weak[i] = tensor.zeros(1000) end
    for i = 1, 200 do tensor.ones(256, 256) end -- 256 KB each, garbage at once
    collectgarbage()
    collectgarbage()
    local alive = 0
    for _ in pairs(weak) do alive = alive + 1 end
    assert.are.equal(0, alive)
  end)

  it('a view keeps working after the owner variable is dropped and collected', function()
    local weak = setmetatable({}, { __mode = 'v' })
    local row, flat, inner
    do
      local x = tensor.arange(6):reshape(2, 3) -- itself a view of arange's buffer
      weak.owner = x
      row = x[2]
      flat = x:reshape(-1)
      inner = tensor.arange(24):reshape(2, 3, 4)[2][3] -- a view of a view of a view
    end
    collectgarbage('collect')
    collectgarbage('collect')
    H.assert_close(row:totable(), { 3, 4, 5 }, 0)
    H.assert_close(flat:totable(), { 0, 1, 2, 3, 4, 5 }, 0)
    H.assert_close(inner:totable(), { 20, 21, 22, 23 }, 0)
    assert.is_not_nil(weak.owner) -- kept alive by the views
    -- writes through the view land in the shared buffer
    row:fill(9)
    H.assert_close(flat:totable(), { 0, 1, 2, 9, 9, 9 }, 0)
    row, flat = nil, nil
    collectgarbage('collect')
    collectgarbage('collect')
    assert.is_nil(weak.owner) -- once no view is left, the owner goes too
    H.assert_close(inner:totable(), { 20, 21, 22, 23 }, 0)
  end)

  it('a view raises "released" after its owner is freed explicitly', function()
    local x = tensor.new { { 0, 1, 2, 3 }, { 4, 5, 6, 7 }, { 8, 9, 10, 11 } } -- owns its buffer
    local v = x[2]
    local vv = v:reshape(2, 2)
    local base = tensor.arange(12)
    local r = base:reshape(3, 4)
    local rr = r[1]
    x:free()
    assert.is_true(v:is_released())
    assert.is_true(vv:is_released())
    released_error(function() return v:sum() end)
    released_error(function() return vv:totable() end)
    released_error(function() return v + 1 end)
    released_error(function() return v[1] end)
    -- freeing the root buffer releases every view of it
    base:free()
    assert.is_true(r:is_released())
    assert.is_true(rr:is_released())
    released_error(function() return rr:clone() end)
  end)

  it('freeing a view does not free its owner', function()
    local x = tensor.arange(6):reshape(2, 3)
    local v = x[1]
    local sibling = x:reshape(6)
    v:free()
    assert.is_true(v:is_released())
    assert.is_false(x:is_released())
    x:free() -- x is a view of arange's buffer: other views of that buffer stay usable
    assert.is_false(sibling:is_released())
    x = sibling:reshape(2, 3)
    H.assert_close(x:totable(), { { 0, 1, 2 }, { 3, 4, 5 } }, 0)
    do
      local w <close> = x[2]
      assert.are.equal(12, w:sum())
    end
    assert.are.equal(15, x:sum())
  end)

  it('closing the interpreter with live views and owners finalises them in any order', function()
    -- a separate lua5.4 process; finalisers run at lua_close in reverse creation order
    local code = ([[
      package.path = %q; package.cpath = %q
      local tensor = require('diffuse').tensor
      local keep = {}
      for i = 1, 50 do
        local x = tensor.arange(24):reshape(2, 3, 4)
        keep[#keep + 1] = x[2][1]
        keep[#keep + 1] = x
        if i %% 3 == 0 then x:free() end
      end
      local owner = tensor.ones(4, 4)
      _G.view = owner[1]
      os.exit(0, true)
    ]]):format(package.path, package.cpath)
    local base = os.tmpname()
    local f = assert(io.open(base, 'w'))
    f:write(code)
    f:close()
    local ok, how, status = os.execute('lua5.4 ' .. base .. ' > /dev/null 2>&1')
    os.remove(base)
    assert.is_true(ok == true, ('child exited by %s %s'):format(tostring(how), tostring(status)))
  end)
end)

-- Lua code can run between a binding's checks and the work (an options table's __index, a
-- finaliser during an allocation, a callback): what it releases is an error, never freed memory
describe('objects released by Lua code running inside a call', function()
  local ve = diffuse.ve(1.1)
  -- (once: a call may look up several options, and a released object's methods are errors)
  local function frees(f)
    local done
    return setmetatable({}, { __index = function() if not done then done = true; f() end end })
  end

  it('an options table whose __index frees the operand', function()
    local x = tensor.ones(1000)
    released_error(x.histogram, x, frees(function() x:free() end))
    local net = diffuse.nn.mlp{ dim = 1 }
    assert.error_matches(function() diffuse.loss.dsm(net, ve, tensor.zeros(8, 1), frees(function() net:free() end)) end,
      'diffuse.loss.dsm: attempt to use a released network')
    local s = diffuse.sampler{ diffuser = ve, steps = 3 }
    local score = diffuse.score.net(diffuse.nn.mlp{ dim = 1 }, ve)
    assert.error_matches(function() s:run(tensor.ones(4, 1), score, frees(function() getmetatable(score).__gc(score) end)) end,
      'diffuse.sampler.run: attempt to use a released score source')
    local x1 = tensor.ones(4, 1)
    released_error(s.run, s, x1, diffuse.score.exact(ve), frees(function() x1:free() end))
  end)

  it('finalisers that free operands while an operation allocates', function()
    local a = tensor.ones(1 << 16)
    local ok, err = pcall(function()
      collectgarbage('incremental', 1, 1000) -- collect as often as possible
      for _ = 1, 20 do setmetatable({}, { __gc = function() if not a:is_released() then a:free() end end }) end
      for _ = 1, 100 do a:clone(); a:exp(); a:matmul(tensor.ones(1 << 16, 1)) end
    end)
    collectgarbage('incremental', 200, 100)
    collectgarbage('generational')
    collectgarbage('incremental')
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find(RELEASED, 1, true), err)
  end)

  it('a progress function whose forward cannot get a workspace leaves training able to go on', function()
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 4096 } }
    local opt = diffuse.optim.adam(net)
    local huge = tensor.zeros(10000000, 1) -- a workspace of about 500 GB: refused
    local failed = 0
    local losses = diffuse.core.train(net, opt, ve, tensor.randn(64, 1), 3, nil, 1e-5, function()
      if not pcall(net.forward, net, huge, 0.5) then failed = failed + 1 end
    end, 0)
    assert.is_true(failed >= 1)
    assert.are.equal(3, losses:numel())
    for _, l in ipairs(losses:totable()) do assert.is_true(l == l and l < math.huge) end
  end)
end)
