-- spec/print_spec.lua: tostring(x) / print(x). One number format for the whole tensor, as torch:
-- integers when every value is integral, else fixed "%.4f", or scientific "%.4e" when the
-- magnitudes need it; right-aligned to a common width; nested brackets with one space of indent
-- per level and a blank line between 2-D blocks; a footer with the shape and the device; tensors
-- above 1000 elements abridged to 3 items at each end of every long dimension.
local diffuse = require 'diffuse'
local tensor = diffuse.tensor

local function footer(shape) return '\n[diffuse.tensor of size ' .. shape .. ' on cpu]' end

local function lines(s)
  local t = {}
  for l in (s .. '\n'):gmatch('(.-)\n') do t[#t + 1] = l end
  return t
end

describe('printing', function()
  it('integers', function()
    assert.are.equal('[1 2 3]' .. footer('3'), tostring(tensor.new { 1, 2, 3 }))
    assert.are.equal('[-1 10  3]' .. footer('3'), tostring(tensor.new { -1, 10, 3 }))
    assert.are.equal('[0 0]' .. footer('2'), tostring(tensor.zeros(2)))
    -- integral values print as integers below 1e9 (123456789 is 123456792 in float32)
    assert.are.equal('[123456792         1]' .. footer('2'), tostring(tensor.new { 123456789, 1 }))
  end)

  it('fixed point', function()
    assert.are.equal('[ 1.5000 -2.0000  3.0000]' .. footer('3'), tostring(tensor.new { 1.5, -2, 3 }))
    assert.are.equal('[0.2500 0.1250]' .. footer('2'), tostring(tensor.new { 0.25, 0.125 }))
    assert.are.equal('[ 0.0000 -1.0000  0.5000]' .. footer('3'), tostring(tensor.new { 0, -1, 0.5 }))
  end)

  it('scientific when values are tiny, huge or far apart', function()
    assert.are.equal('[1.0000e-05 1.0000e+00 2.0000e+00]' .. footer('3'),
                     tostring(tensor.new { 1e-5, 1, 2 }))
    assert.are.equal('[ 1.2500e+05 -5.0000e-01]' .. footer('2'), tostring(tensor.new { 125000, -0.5 }))
    assert.are.equal('[1.0000e+10 1.0000e+00]' .. footer('2'), tostring(tensor.new { 1e10, 1 }))
  end)

  it('nan and inf, with integers and with fractions', function()
    assert.are.equal('[ nan  inf -inf    1]' .. footer('4'),
                     tostring(tensor.new { 0 / 0, 1 / 0, -1 / 0, 1 }))
    assert.are.equal('[   nan    inf   -inf 1.5000]' .. footer('4'),
                     tostring(tensor.new { 0 / 0, 1 / 0, -1 / 0, 1.5 }))
    assert.are.equal('[nan nan]' .. footer('2'), tostring(tensor.new { 0 / 0, 0 / 0 }))
  end)

  it('2-D, 3-D and 4-D nesting', function()
    assert.are.equal('[[1 2]\n [3 4]]' .. footer('2x2'), tostring(tensor.new { { 1, 2 }, { 3, 4 } }))
    assert.are.equal('[[1 2 3]]' .. footer('1x3'), tostring(tensor.new { { 1, 2, 3 } }))
    assert.are.equal('[[1]\n [2]]' .. footer('2x1'), tostring(tensor.new { { 1 }, { 2 } }))
    assert.are.equal('[[[1 2]\n  [3 4]]\n\n [[5 6]\n  [7 8]]]' .. footer('2x2x2'),
                     tostring(tensor.arange(1, 9):reshape(2, 2, 2)))
    assert.are.equal('[[[[0 1]]]\n\n\n [[[2 3]]]]' .. footer('2x1x1x2'),
                     tostring(tensor.arange(4):reshape(2, 1, 1, 2)))
    assert.are.equal('[[ 0.5000 -1.0000]\n [10.0000  2.0000]]' .. footer('2x2'),
                     tostring(tensor.new { { 0.5, -1 }, { 10, 2 } }))
  end)

  it('empty tensors', function()
    assert.are.equal('[]' .. footer('0'), tostring(tensor.zeros(0)))
    assert.are.equal('[[]\n []]' .. footer('2x0'), tostring(tensor.zeros(2, 0)))
    -- many empty rows are abridged as many values are (not a string of 2^31 brackets)
    assert.are.equal('[[]\n []\n []\n ...\n []\n []\n []]' .. footer('2147483648x0'),
                     tostring(tensor.zeros(2 ^ 31, 0)))
    -- and totable says no at once instead of building 2^40 empty tables
    assert.has_error(function() tensor.zeros(2 ^ 40, 0):totable() end,
      'diffuse.tensor.totable: a tensor of 1099511627776x0 is too large for Lua tables')
    assert.are.same({ {}, {}, {} }, tensor.zeros(3, 0):totable())
  end)

  it('views print their own values and shape', function()
    local x = tensor.new { { 1, 2 }, { 3, 4 } }
    assert.are.equal('[3 4]' .. footer('2'), tostring(x[2]))
    assert.are.equal('[1 2 3 4]' .. footer('4'), tostring(x:reshape(4)))
  end)

  it('up to 1000 elements print whole', function()
    local s = tostring(tensor.arange(1000))
    assert.is_nil(s:find('...', 1, true))
    assert.is_truthy(s:find('[  0   1   2', 1, true))
    assert.is_truthy(s:find(' 998 999]\n', 1, true))
    assert.are.equal(2, #lines(s))
  end)

  it('large tensors are abridged with "..."', function()
    local s = tostring(tensor.arange(2000))
    assert.are.equal('[   0    1    2 ... 1997 1998 1999]' .. footer('2000'), s)

    local col = tostring(tensor.arange(4096):reshape(4096, 1))
    local l = lines(col)
    -- 3 rows, the elision, 3 rows, the footer
    assert.are.equal(8, #l)
    assert.are.equal('[[   0]', l[1])
    assert.are.equal(' ...', l[4])
    assert.are.equal(' [4095]]', l[7])
    assert.are.equal('[diffuse.tensor of size 4096x1 on cpu]', l[8])

    local m = tostring(tensor.arange(100 * 50):reshape(100, 50))
    local ml = lines(m)
    assert.are.equal(8, #ml)
    assert.are.equal('[[   0    1    2 ...   47   48   49]', ml[1])
    assert.are.equal(' ...', ml[4])
    assert.are.equal(' [4950 4951 4952 ... 4997 4998 4999]]', ml[7])
    assert.are.equal('[diffuse.tensor of size 100x50 on cpu]', ml[8])

    -- only long dimensions are cut: 2x3x400 keeps both blocks and all three rows
    local c3 = tostring(tensor.arange(2 * 3 * 400):reshape(2, 3, 400))
    local cl = lines(c3)
    assert.are.equal(8, #cl) -- 3 rows, a blank line, 3 rows, the footer
    assert.are.equal('', cl[4])
    local dots = 0
    for _ in c3:gmatch('%.%.%.') do dots = dots + 1 end
    assert.are.equal(6, dots)
    assert.is_truthy(c3:find(' 2397 2398 2399]]]\n', 1, true))
  end)

  it('a random tensor prints in fixed point with 4 decimals', function()
    diffuse.seed(1)
    local s = tostring(tensor.rand(3))
    assert.is_truthy(s:match('^%[%d%.%d%d%d%d %d%.%d%d%d%d %d%.%d%d%d%d%]\n'))
  end)

  it('a released tensor prints as released', function()
    local x = tensor.zeros(3)
    x:free()
    assert.are.equal('[diffuse.tensor (released)]', tostring(x))
    local y = tensor.zeros(2, 2)
    local v = y[1]
    y:free()
    assert.are.equal('[diffuse.tensor (released)]', tostring(v))
  end)
end)
