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
local tensor = diffuse.tensor

local TUPLES = 600 -- argument tuples per function

local function released()
  local t = tensor.zeros(2)
  t:free()
  return t
end

local function released_view()
  local t = tensor.zeros(2, 2)
  local v = t[1]
  t:free()
  return v
end

-- junk values: each a generator, so every call gets fresh tensors (free may release them)
local JUNK = {
  function() return nil end,
  function() return true end,
  function() return false end,
  function() return 0 / 0 end,
  function() return math.huge end,
  function() return -math.huge end,
  function() return 1e300 end,
  function() return 2 ^ 63 end,
  function() return 2 ^ 40 end, -- the element cap: allocation is refused, products overflow
  function() return 1 << 62 end,
  function() return -(2 ^ 40) end,
  function() return math.maxinteger end,
  function() return math.mininteger end,
  function() return -1 end,
  function() return 0 end,
  function() return 0.5 end,
  function() return 1 end,
  function() return 2 end,
  function() return 3 end,
  function() return -2.5 end,
  function() return 'cpu' end,
  function() return 'cuda' end,
  function() return 'x' end,
  function() return '' end,
  function() return '1' end,
  function() return {} end,
  function() return { { 1 }, { 1, 2 } } end,
  function() return { 1, 2 } end,
  function() return { -1 } end,
  function() return { 2, 0.5 } end,
  function() return { bins = 0 } end,
  function() return { bins = 2, min = 0, max = 1 } end,
  function() return { foo = 1 } end,
  function() return { tensor.zeros(2), tensor.zeros(2) } end,
  function() return { tensor.zeros(2, 3), tensor.ones(3, 2) } end,
  function() return function() end end,
  function() return coroutine.create(function() end) end,
  function() return io.stdout end,
  function() return tensor.zeros(3) end,
  function() return tensor.ones(2, 3) end,
  function() return tensor.ones(3, 1) end,
  function() return tensor.randn(2, 2, 2) end,
  function() return tensor.zeros(1, 2, 1, 2) end,
  function() return tensor.zeros(0) end,
  function() return tensor.zeros(2, 0) end,
  function() return tensor.new { 0 / 0, math.huge, -1 } end,
  function() return tensor.new { 7 } end,
  function() return tensor.arange(6):reshape(2, 3)[2] end,
  released,
  released_view,
}

-- receivers for the method calls: valid tensors of a few shapes, a view, an empty one
local RECEIVERS = {
  function() return tensor.zeros(3) end,
  function() return tensor.randn(2, 3) end,
  function() return tensor.ones(2, 2, 2) end,
  function() return tensor.zeros(0) end,
  function() return tensor.arange(6):reshape(3, 2)[1] end,
}

local g = H.lcg(20240601)
local function pick(list) return list[math.floor(g() * #list) + 1] end

local function tuple()
  local n = math.floor(g() * 4) -- arity 0..3
  local args = { n = n }
  for i = 1, n do args[i] = pick(JUNK)() end
  return args
end

local S0, s0 = diffuse.rng_state()

local function restore()
  diffuse.set_rng_state(S0, s0)
  if diffuse.get_device() ~= 'cpu' then diffuse.set_device('cpu') end
end

-- "" if the error is acceptable, else a description
local function judge(ok, err)
  if ok then return '' end
  if type(err) ~= 'string' then return 'error value of type ' .. type(err) end
  local msg = H.strip_where(err)
  if msg:find('^diffuse%.') or msg:find('released', 1, true) then return '' end
  return msg
end

-- call f with many junk tuples; collect the unacceptable errors
local function fuzz(label, f, receiver)
  local bad, seen = {}, {}
  for _ = 1, TUPLES do
    local args = tuple()
    local ok, err
    if receiver then
      local r = receiver()
      ok, err = pcall(f, r, table.unpack(args, 1, args.n))
    else
      ok, err = pcall(f, table.unpack(args, 1, args.n))
    end
    restore()
    local why = judge(ok, err)
    if why ~= '' and not seen[why] then
      seen[why] = true
      bad[#bad + 1] = why
    end
  end
  if #bad > 0 then
    error(('%s: %d kinds of bad error, e.g.\n  %s'):format(label, #bad,
          table.concat(bad, '\n  ', 1, math.min(#bad, 5))))
  end
end

local function sorted_functions(t)
  local names = {}
  for k, v in pairs(t) do
    if type(v) == 'function' then names[#names + 1] = k end
  end
  table.sort(names)
  return names
end

describe('fuzz', function()
  setup(function() S0, s0 = diffuse.rng_state() end)

  teardown(function()
    restore()
    collectgarbage()
  end)

  for _, name in ipairs(sorted_functions(diffuse)) do
    it('diffuse.' .. name, function() fuzz('diffuse.' .. name, diffuse[name]) end)
  end

  for _, name in ipairs(sorted_functions(diffuse.core)) do
    if diffuse[name] ~= diffuse.core[name] then -- not already covered above
      it('diffuse.core.' .. name, function() fuzz('diffuse.core.' .. name, diffuse.core[name]) end)
    end
  end

  for _, name in ipairs(sorted_functions(tensor)) do
    it('diffuse.tensor.' .. name, function() fuzz('diffuse.tensor.' .. name, tensor[name]) end)
  end

  local methods = getmetatable(tensor.zeros(1)).methods
  for _, name in ipairs(sorted_functions(methods)) do
    it('method :' .. name, function()
      for _, r in ipairs(RECEIVERS) do fuzz('method :' .. name, methods[name], r) end
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
  for _, mk in ipairs(JUNK) do
    local v = mk()
    if getmetatable(v) == getmetatable(tensor.zeros(1)) then TENSORS[#TENSORS + 1] = mk end
  end

  for sym, op in pairs(OPERATORS) do
    it('operator ' .. sym, function()
      fuzz('tensor ' .. sym .. ' junk', op, function() return pick(TENSORS)() end)
      fuzz('junk ' .. sym .. ' tensor', function(b, a) return op(a, b) end,
           function() return pick(TENSORS)() end)
    end)
  end

  it('unary minus, #, tostring, indexing and assignment', function()
    local t = function() return pick(TENSORS)() end
    for _ = 1, 4 do
      fuzz('-x', function(x) return -x end, t)
      fuzz('#x', function(x) return #x end, t)
      fuzz('x[k]', function(x, k) return x[k] end, t)
      fuzz('x[k] = v', function(x, k, v) x[k] = v end, t)
      fuzz('tostring', function(x)
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
    assert.are.equal(S0, S)
    assert.are.equal(s0, s)
    local x = tensor.arange(6):reshape(2, 3)
    assert.are.equal(15, x:sum())
    H.assert_close((x * 2 + 1):totable(), { { 1, 3, 5 }, { 7, 9, 11 } }, 0)
  end)
end)
