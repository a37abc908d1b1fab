-- spec/fuzz_spec.lua: every public function of diffuse, diffuse.core and diffuse.tensor, every
-- tensor method and every tensor operator, called under pcall with junk arguments (a fixed
-- pseudo-random selection of tuples of arity 0..3). The process must survive, and every error
-- must be a string that starts with "diffuse." (after Lua's "chunk:line: " position) or says
-- that a tensor was released. Valid sizes in the junk are small (a few elements); the only
-- large one is 2^40, the element cap, whose 4.4 TB the allocator refuses before allocating.
-- The global state a call may change (the random stream, the current device) is put back
-- after every call. Run it under `make asan` to catch memory errors and overflows too.
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local F = require 'support.fuzz'
local tensor = diffuse.tensor

describe('fuzz', function()
  setup(F.keep_state)

  teardown(function()
    F.restore()
    collectgarbage()
  end)

  for _, name in ipairs(F.sorted_functions(diffuse)) do
    it('diffuse.' .. name, function() F.fuzz('diffuse.' .. name, diffuse[name]) end)
  end

  for _, name in ipairs(F.sorted_functions(diffuse.core)) do
    if diffuse[name] ~= diffuse.core[name] then -- not already covered above
      it('diffuse.core.' .. name, function() F.fuzz('diffuse.core.' .. name, diffuse.core[name]) end)
    end
  end

  for _, name in ipairs(F.sorted_functions(tensor)) do
    it('diffuse.tensor.' .. name, function() F.fuzz('diffuse.tensor.' .. name, tensor[name]) end)
  end

  local methods = getmetatable(tensor.zeros(1)).methods
  for _, name in ipairs(F.sorted_functions(methods)) do
    it('method :' .. name, function()
      for _, r in ipairs(F.RECEIVERS) do F.fuzz('method :' .. name, methods[name], r) end
    end)
  end

  -- operators: at least one operand is a tensor, so the tensor's metamethod is the one called
  local OPERATORS = {
    ['+'] = function(a, b) return a + b end,
    ['-'] = function(a, b) return a - b end,
    ['*'] = function(a, b) return a * b end,
    ['/'] = function(a, b) return a / b end,
    ['^'] = function(a, b) return a ^ b end,
  }
  local TENSORS = {}
  for _, mk in ipairs(F.JUNK) do
    local v = mk()
    if getmetatable(v) == getmetatable(tensor.zeros(1)) then TENSORS[#TENSORS + 1] = mk end
  end

  for sym, op in pairs(OPERATORS) do
    it('operator ' .. sym, function()
      F.fuzz('tensor ' .. sym .. ' junk', op, function() return F.pick(TENSORS)() end)
      F.fuzz('junk ' .. sym .. ' tensor', function(b, a) return op(a, b) end,
           function() return F.pick(TENSORS)() end)
    end)
  end

  it('unary minus, #, tostring, indexing and assignment', function()
    local t = function() return F.pick(TENSORS)() end
    for _ = 1, 4 do
      F.fuzz('-x', function(x) return -x end, t)
      F.fuzz('#x', function(x) return #x end, t)
      F.fuzz('x[k]', function(x, k) return x[k] end, t)
      F.fuzz('x[k] = v', function(x, k, v) x[k] = v end, t)
      F.fuzz('tostring', function(x)
        local s = tostring(x)
        assert(type(s) == 'string' and s:find('^%[') ~= nil, 'tostring gave ' .. tostring(s))
      end, t)
    end
  end)

  it('leaves the library working and the state as it was', function()
    collectgarbage()
    collectgarbage()
    assert.are.equal('cpu', diffuse.get_device())
    local S, s = diffuse.rng_state()
    local S0, s0 = F.state()
    assert.are.equal(S0, S)
    assert.are.equal(s0, s)
    local x = tensor.arange(6):reshape(2, 3)
    assert.are.equal(15, x:sum())
    H.assert_close((x * 2 + 1):totable(), { { 1, 3, 5 }, { 7, 9, 11 } }, 0)
  end)
end)
