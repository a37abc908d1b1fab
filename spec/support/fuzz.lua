-- spec/support/fuzz.lua: the junk-argument harness of the fuzz specs: junk values (fresh for
-- each call), argument tuples of arity 0..3 from a fixed pseudo-random sequence, and fuzz(label,
-- f [, receiver]) that calls f under pcall and collects every error that is not a string naming
-- a diffuse function (or a released object). The random stream and the device are put back
-- after every call.
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local tensor = diffuse.tensor
local M = {}

M.TUPLES = 600 -- argument tuples per function

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
M.JUNK = {
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
M.RECEIVERS = {
  function() return tensor.zeros(3) end,
  function() return tensor.randn(2, 3) end,
  function() return tensor.ones(2, 2, 2) end,
  function() return tensor.zeros(0) end,
  function() return tensor.arange(6):reshape(3, 2)[1] end,
}

local g = H.lcg(20240601)
function M.pick(list) return list[math.floor(g() * #list) + 1] end
local pick = M.pick

local function tuple()
  local n = math.floor(g() * 4) -- arity 0..3
  local args = { n = n }
  for i = 1, n do args[i] = pick(M.JUNK)() end
  return args
end

local S0, s0 = diffuse.rng_state()

--- the random-stream state every call is put back to
function M.keep_state() S0, s0 = diffuse.rng_state() end
function M.state() return S0, s0 end

function M.restore()
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
function M.fuzz(label, f, receiver)
  local bad, seen = {}, {}
  for _ = 1, M.TUPLES do
    local args = tuple()
    local ok, err
    if receiver then
      local r = receiver()
      ok, err = pcall(f, r, table.unpack(args, 1, args.n))
    else
      ok, err = pcall(f, table.unpack(args, 1, args.n))
    end
    M.restore()
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

function M.sorted_functions(t)
  local names = {}
  for k, v in pairs(t) do
    if type(v) == 'function' then names[#names + 1] = k end
  end
  table.sort(names)
  return names
end


return M
