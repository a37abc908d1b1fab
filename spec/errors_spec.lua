-- spec/errors_spec.lua: every bad input raises a Lua error whose message names the function and
-- the argument ("diffuse.tensor.add: shapes 3x2 and 4 do not broadcast"). Messages are matched
-- after the "chunk:line: " position Lua prepends when the caller is a Lua function.
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local tensor = diffuse.tensor

local NAN, INF = 0 / 0, math.huge

-- { pattern, function, args... }: pattern is a Lua pattern, anchored at the message start
local function cases(list)
  for _, c in ipairs(list) do
    local pattern, f = c[1], c[2]
    H.assert_error(pattern, f, table.unpack(c, 3, c.n or #c))
  end
end

describe('errors', function()
  local x32 = tensor.zeros(3, 2)

  it('broadcasting mismatches name the op and both shapes', function()
    H.assert_error_plain('diffuse.tensor.add: shapes 3x2 and 4 do not broadcast',
                         function() return x32 + tensor.zeros(4) end)
    cases {
      { '^diffuse%.tensor%.add: shapes 3x2 and 4 do not broadcast$', tensor.add, x32, tensor.zeros(4) },
      { '^diffuse%.tensor%.sub: shapes 4 and 3x2 do not broadcast$', tensor.sub, tensor.zeros(4), x32 },
      { '^diffuse%.tensor%.mul: shapes 2x3x4 and 3x3 do not broadcast$', tensor.mul,
        tensor.zeros(2, 3, 4), tensor.zeros(3, 3) },
      { '^diffuse%.tensor%.div: shapes 3x2 and 2x3 do not broadcast$', tensor.div, x32, tensor.zeros(2, 3) },
      { '^diffuse%.tensor%.pow: shapes', tensor.pow, x32, tensor.zeros(5) },
      { '^diffuse%.tensor%.maximum: shapes', tensor.maximum, x32, tensor.zeros(5) },
      { '^diffuse%.tensor%.minimum: shapes', tensor.minimum, x32, tensor.zeros(5) },
      { '^diffuse%.tensor%.add: shapes 0 and 3x2 do not broadcast$', tensor.add, tensor.zeros(0), x32 },
    }
    H.assert_error('^diffuse%.tensor%.sub: shapes', function() return x32 - tensor.zeros(4) end)
    H.assert_error('^diffuse%.tensor%.mul: shapes', function() return x32 * tensor.zeros(4) end)
    H.assert_error('^diffuse%.tensor%.div: shapes', function() return x32 / tensor.zeros(4) end)
    H.assert_error('^diffuse%.tensor%.pow: shapes', function() return x32 ^ tensor.zeros(4) end)
  end)

  it('sizes: NaN, inf, fractions, negative, absurd', function()
    cases {
      { '^diffuse%.tensor%.zeros: size 1 must be an integer %(got nan%)$', tensor.zeros, NAN },
      { '^diffuse%.tensor%.zeros: size 1 must be an integer %(got inf%)$', tensor.zeros, INF },
      { '^diffuse%.tensor%.zeros: size 2 must be an integer %(got %-inf%)$', tensor.zeros, 2, -INF },
      { '^diffuse%.tensor%.zeros: size 1 must be an integer %(got 1%.5%)$', tensor.zeros, 1.5 },
      { '^diffuse%.tensor%.zeros: size %-1 of dimension 1 is negative$', tensor.zeros, -1 },
      { '^diffuse%.tensor%.ones: size %-2 of dimension 2 is negative', tensor.ones, 3, -2 },
      { '^diffuse%.tensor%.randn: size %-1 of dimension 1 is negative', tensor.randn, -1 },
      { '^diffuse%.tensor%.rand: size 1 must be an integer %(got nan%)$', tensor.rand, NAN },
      { '^diffuse%.tensor%.zeros: out of memory', tensor.zeros, 1e12 },
      { '^diffuse%.tensor%.randn: out of memory', tensor.randn, 1e12 },
      { '^diffuse%.tensor%.zeros: shape 1099511627776x1099511627776 has more than 2%^40 elements$',
        tensor.zeros, 2 ^ 40, 2 ^ 40 },
      { '^diffuse%.tensor%.zeros: size %d+ of dimension 1 is too large', tensor.zeros, 2 ^ 41 },
      { '^diffuse%.tensor%.zeros: size %d+ of dimension 1 is too large', tensor.zeros, math.maxinteger },
      { '^diffuse%.tensor%.zeros: size 1 must be an integer', tensor.zeros, 2 ^ 63 },
      { '^diffuse%.tensor%.ones: shape .* has more than 2%^40 elements', tensor.ones, 2 ^ 20, 2 ^ 20, 2 },
    }
  end)

  it('shape arguments of the wrong type or count', function()
    cases {
      { '^diffuse%.tensor%.zeros: a shape is required$', tensor.zeros },
      { '^diffuse%.tensor%.zeros: size 1 must be an integer %(got string%)$', tensor.zeros, 'a' },
      { '^diffuse%.tensor%.zeros: size 1 must be an integer %(got boolean%)$', tensor.zeros, true },
      { '^diffuse%.tensor%.zeros: size 2 must be an integer %(got string%)$', tensor.zeros, { 1, 'a' } },
      { '^diffuse%.tensor%.zeros: shape must have 1 to 4 sizes %(got 5%)$', tensor.zeros, 1, 2, 3, 4, 5 },
      { '^diffuse%.tensor%.zeros: shape must have 1 to 4 sizes %(got 0%)$', tensor.zeros, {} },
      { '^diffuse%.tensor%.ones: shape must have 1 to 4 sizes %(got 5%)$', tensor.ones, { 1, 1, 1, 1, 1 } },
      { '^diffuse%.tensor%.full: value must be a number %(got string%)$', tensor.full, { 2 }, 'v' },
      { '^diffuse%.tensor%.full: value must be a number %(got no value%)$', tensor.full, { 2 } },
      { '^diffuse%.tensor%.full: expected %(shape, value%)', tensor.full, 2, 3, 4 },
      { '^diffuse%.tensor%.full: size %-1 of dimension 1 is negative', tensor.full, { -1 }, 1 },
    }
  end)

  it('linspace and arange', function()
    cases {
      { '^diffuse%.tensor%.linspace: count must be non%-negative %(got %-1%)$', tensor.linspace, 0, 1, -1 },
      { '^diffuse%.tensor%.linspace: count must be an integer %(got 2%.5%)$', tensor.linspace, 0, 1, 2.5 },
      { '^diffuse%.tensor%.linspace: count must be an integer %(got no value%)$', tensor.linspace, 0, 1 },
      { '^diffuse%.tensor%.linspace: start and stop must be finite$', tensor.linspace, 0, INF, 3 },
      { '^diffuse%.tensor%.linspace: start and stop must be finite$', tensor.linspace, NAN, 1, 3 },
      { '^diffuse%.tensor%.linspace: start must be a number %(got string%)$', tensor.linspace, 'a', 1, 2 },
      { '^diffuse%.tensor%.linspace: stop must be a number %(got table%)$', tensor.linspace, 0, {}, 2 },
      { '^diffuse%.tensor%.linspace: out of memory', tensor.linspace, 0, 1, 1e12 },
      { '^diffuse%.tensor%.arange: step must not be zero$', tensor.arange, 0, 1, 0 },
      { '^diffuse%.tensor%.arange: start, stop and step must be finite$', tensor.arange, NAN },
      { '^diffuse%.tensor%.arange: start, stop and step must be finite$', tensor.arange, 0, 1, INF },
      { '^diffuse%.tensor%.arange: .* too many$', tensor.arange, 0, 1e300, 1e-300 },
      { '^diffuse%.tensor%.arange: .* too many$', tensor.arange, 2 ^ 41 },
      { '^diffuse%.tensor%.arange: stop must be a number %(got string%)$', tensor.arange, 'x' },
      { '^diffuse%.tensor%.arange: step must be a number %(got string%)$', tensor.arange, 0, 1, 's' },
      -- values float32 cannot hold would be inf
      { '^diffuse%.tensor%.linspace: start and stop must be finite in float32', tensor.linspace, 0, 1e39, 3 },
      { '^diffuse%.tensor%.arange: the values must be finite in float32 %(|v| <= 3%.4e38%), up to 9e%+38 here$',
        tensor.arange, 1e38, 1e39, 1e38 },
    }
  end)

  it('new: wrong types, ragged, too deep', function()
    local deep = { { { { { 1 } } } } }
    local selfref = {}
    selfref[1] = selfref
    cases {
      { '^diffuse%.tensor%.new: expected a %(nested%) table of numbers, got string$', tensor.new, 'x' },
      { '^diffuse%.tensor%.new: expected a %(nested%) table of numbers, got no value$', tensor.new },
      { '^diffuse%.tensor%.new: expected a %(nested%) table of numbers, got nil$', tensor.new, nil, n = 3 },
      { '^diffuse%.tensor%.new: rows have different sizes at depth 2 %(1 and 2%)$', tensor.new, { { 1, 2 }, { 3 } } },
      { '^diffuse%.tensor%.new: rows have different sizes at depth 2', tensor.new, { { 1 }, { 2, 3 } } },
      { '^diffuse%.tensor%.new: rows have different sizes at depth 3', tensor.new,
        { { { 1, 2 } }, { { 3 } } } },
      { '^diffuse%.tensor%.new: tables nest deeper than 4 levels$', tensor.new, deep },
      { '^diffuse%.tensor%.new: tables nest deeper than 4 levels$', tensor.new, selfref },
      { '^diffuse%.tensor%.new: expected a number at depth 1, got string$', tensor.new, { 1, 'a' } },
      { '^diffuse%.tensor%.new: expected a number at depth 1, got nil$', tensor.new, { 1, nil, 3 } },
      { '^diffuse%.tensor%.new: expected a number at depth 2, got table$', tensor.new, { { 1 }, { { 2 } } } },
      { '^diffuse%.tensor%.new: expected a table at depth 2, got number$', tensor.new, { { 1 }, 2 } },
    }
  end)

  it('reshape mismatches', function()
    cases {
      { '^diffuse%.tensor%.reshape: cannot reshape 3x2 %(6 elements%) to 4$', x32.reshape, x32, 4 },
      { '^diffuse%.tensor%.reshape: cannot reshape 3x2 %(6 elements%) to 7$', x32.reshape, x32, { 7 } },
      { '^diffuse%.tensor%.reshape: only one size can be %-1$', x32.reshape, x32, -1, -1 },
      { '^diffuse%.tensor%.reshape: cannot infer size 2: 6 elements do not divide into 4$', x32.reshape, x32, 4, -1 },
      { '^diffuse%.tensor%.reshape: cannot infer size 1', x32.reshape, x32, -1, 0 },
      { '^diffuse%.tensor%.reshape: size 1 is negative %(%-2%)$', x32.reshape, x32, -2, 3 },
      { '^diffuse%.tensor%.reshape: a shape is required$', x32.reshape, x32 },
      { '^diffuse%.tensor%.reshape: size 1 must be an integer %(got 1%.5%)$', x32.reshape, x32, 1.5 },
      { '^diffuse%.tensor%.reshape: shape must have 1 to 4 sizes %(got 5%)$', x32.reshape, x32, 1, 1, 1, 1, 6 },
      { '^diffuse%.tensor%.reshape: size 1 is too large', x32.reshape, x32, 2 ^ 41, 0 },
      { '^diffuse%.tensor%.reshape: the shape has too many elements$', x32.reshape, x32, 2 ^ 40, 2 ^ 40 },
      { '^diffuse%.tensor%.reshape: the shape has too many elements$', tensor.reshape,
        tensor.zeros(0), 2 ^ 40, 2 ^ 40, 0 },
      { '^diffuse%.tensor%.reshape: the shape has too many elements$', tensor.reshape,
        tensor.zeros(0), 2 ^ 40, 2 ^ 40, -1 },
      { '^diffuse%.tensor%.reshape: argument 1 must be a tensor %(got number%)$', x32.reshape, 5, 5 },
    }
  end)

  it('matmul mismatches', function()
    cases {
      { '^diffuse%.tensor%.matmul: inner dimensions do not match %(2x3 and 4x2%)$', tensor.matmul,
        tensor.zeros(2, 3), tensor.zeros(4, 2) },
      { '^diffuse%.tensor%.matmul: inner dimensions do not match %(3 and 2%)$', tensor.matmul,
        tensor.zeros(3), tensor.zeros(2) },
      { '^diffuse%.tensor%.matmul: inner dimensions do not match', tensor.matmul,
        tensor.zeros(2, 3), tensor.zeros(2) },
      { '^diffuse%.tensor%.matmul: batch sizes do not match %(2x2x3 and 3x3x2%)$', tensor.matmul,
        tensor.zeros(2, 2, 3), tensor.zeros(3, 3, 2) },
      { '^diffuse%.tensor%.matmul: matmul takes 1%- to 3%-dimensional tensors', tensor.matmul,
        tensor.zeros(2, 2, 2, 2), tensor.zeros(2) },
      { '^diffuse%.tensor%.matmul: argument 2 must be a tensor %(got number%)$', tensor.matmul, x32, 5 },
      { '^diffuse%.tensor%.matmul: argument 2 must be a tensor %(got no value%)$', tensor.matmul, x32 },
      { '^diffuse%.tensor%.matmul: argument 1 must be a tensor %(got string%)$', tensor.matmul, 'a', x32 },
    }
  end)

  it('cat mismatches', function()
    cases {
      { '^diffuse%.tensor%.cat: tensor 2 has shape 3x2, which does not fit 2x3 along dimension 1$',
        tensor.cat, { tensor.zeros(2, 3), tensor.zeros(3, 2) } },
      { '^diffuse%.tensor%.cat: tensor 2 has shape 2, which does not fit 2x3 along dimension 2$',
        tensor.cat, { tensor.zeros(2, 3), tensor.zeros(2) }, 2 },
      { '^diffuse%.tensor%.cat: the list of tensors is empty$', tensor.cat, {} },
      { '^diffuse%.tensor%.cat: expected a list of tensors, got number$', tensor.cat, 5 },
      { '^diffuse%.tensor%.cat: tensor 2 must be a tensor %(got number%)$', tensor.cat, { tensor.zeros(2), 5 } },
      { '^diffuse%.tensor%.cat: dim 2 out of range for a 1%-dimensional tensor$', tensor.cat, { tensor.zeros(2) }, 2 },
      { '^diffuse%.tensor%.cat: dim 0 out of range', tensor.cat, { tensor.zeros(2) }, 0 },
      { '^diffuse%.tensor%.cat: dim must be an integer %(got string%)$', tensor.cat, { tensor.zeros(2) }, 'x' },
    }
  end)

  it('index out of range, bad index and bad values', function()
    H.assert_error('^diffuse%.tensor%.index: index 4 out of range for dimension 1 of size 3$',
                   function() return x32[4] end)
    H.assert_error('^diffuse%.tensor%.index: index 0 out of range', function() return x32[0] end)
    H.assert_error('^diffuse%.tensor%.index: index %-4 out of range', function() return x32[-4] end)
    H.assert_error('^diffuse%.tensor%.index: index 1 out of range for dimension 1 of size 0$',
                   function() return tensor.zeros(0)[1] end)
    H.assert_error('^diffuse%.tensor%.index: index must be an integer %(got 1%.5%)$',
                   function() return x32[1.5] end)
    H.assert_error('^diffuse%.tensor%.index: index must be an integer %(got nan%)$',
                   function() return x32[NAN] end)
    H.assert_error('^diffuse%.tensor%.newindex: index 4 out of range', function() x32[4] = 1 end)
    H.assert_error('^diffuse%.tensor%.newindex: value has 3 elements, the row has 2$',
                   function() x32[1] = tensor.zeros(3) end)
    H.assert_error('^diffuse%.tensor%.newindex: value must be a number or a tensor %(got string%)$',
                   function() x32[1] = 'a' end)
    H.assert_error('^diffuse%.tensor%.newindex: value must be a number or a tensor %(got nil%)$',
                   function() x32[1] = nil end)
    H.assert_error('^diffuse%.tensor%.newindex: index must be an integer %(got string%)$',
                   function() x32.foo = 1 end)
    H.assert_error('^diffuse%.tensor%.item: item needs a tensor of one element %(this one has 6%)$',
                   x32.item, x32)
    H.assert_error('^diffuse%.tensor%.item: .*has 0', x32.item, tensor.zeros(0))
  end)

  it('histogram options', function()
    cases {
      { "^diffuse%.tensor%.histogram: unknown option 'foo'$", x32.histogram, x32, { foo = 1 } },
      { "^diffuse%.tensor%.histogram: unknown option 'bin'$", x32.histogram, x32, { bin = 10 } },
      { '^diffuse%.tensor%.histogram: option names must be strings', x32.histogram, x32, { 1 } },
      { '^diffuse%.tensor%.histogram: bins must be between 1 and 1e8 %(got 0%)$', x32.histogram, x32, { bins = 0 } },
      { '^diffuse%.tensor%.histogram: bins must be between 1 and 1e8 %(got %-3%)$', x32.histogram, x32, { bins = -3 } },
      { '^diffuse%.tensor%.histogram: bins must be an integer %(got 2%.5%)$', x32.histogram, x32, { bins = 2.5 } },
      { '^diffuse%.tensor%.histogram: min must be below max %(got 1 and 1%)$', x32.histogram, x32, { min = 1, max = 1 } },
      { '^diffuse%.tensor%.histogram: min must be below max %(got 2 and 1%)$', x32.histogram, x32, { min = 2, max = 1 } },
      { '^diffuse%.tensor%.histogram: min and max must be finite', x32.histogram, x32, { min = NAN, max = 1 } },
      { '^diffuse%.tensor%.histogram: min and max must be finite', x32.histogram, x32, { min = 0, max = INF } },
      { '^diffuse%.tensor%.histogram: min must be a number %(got string%)$', x32.histogram, x32, { min = 'a' } },
      { '^diffuse%.tensor%.histogram: density must be a boolean %(got number%)$', x32.histogram, x32, { density = 1 } },
      { '^diffuse%.tensor%.histogram: options must be a table %(got number%)$', x32.histogram, x32, 5 },
      { '^diffuse%.tensor%.histogram: the data holds NaN or infinite values', x32.histogram, tensor.new { NAN, 1 } },
      { '^diffuse%.tensor%.histogram: min and max are needed for an empty tensor$', x32.histogram, tensor.zeros(0) },
    }
  end)

  it('dimension arguments out of range', function()
    cases {
      { '^diffuse%.tensor%.sum: dim 3 out of range for a 2%-dimensional tensor$', x32.sum, x32, 3 },
      { '^diffuse%.tensor%.sum: dim 0 out of range for a 2%-dimensional tensor$', x32.sum, x32, 0 },
      { '^diffuse%.tensor%.mean: dim %-3 out of range for a 2%-dimensional tensor$', x32.mean, x32, -3 },
      { '^diffuse%.tensor%.max: dim 5 out of range', x32.max, x32, 5 },
      { '^diffuse%.tensor%.min: dim %-9 out of range', x32.min, x32, -9 },
      { '^diffuse%.tensor%.std: dim 3 out of range', x32.std, x32, 3 },
      { '^diffuse%.tensor%.var: dim 3 out of range', x32.var, x32, 3 },
      { '^diffuse%.tensor%.size: dim 3 out of range for a 2%-dimensional tensor$', x32.size, x32, 3 },
      { '^diffuse%.tensor%.sum: dim must be an integer %(got string%)$', x32.sum, x32, 'a' },
      { '^diffuse%.tensor%.sum: dim must be an integer %(got 1%.5%)$', x32.sum, x32, 1.5 },
      { '^diffuse%.tensor%.max: keepdim must be a boolean %(got string%)$', x32.max, x32, 1, 'yes' },
    }
  end)

  it('wrong types for methods', function()
    cases {
      { '^diffuse%.tensor%.exp: argument 1 must be a tensor %(got number%)$', tensor.exp, 5 },
      { '^diffuse%.tensor%.log: argument 1 must be a tensor %(got nil%)$', tensor.log, nil, n = 3 },
      { '^diffuse%.tensor%.log: argument 1 must be a tensor %(got no value%)$', tensor.log },
      { '^diffuse%.tensor%.sum: argument 1 must be a tensor %(got table%)$', tensor.sum, {} },
      { '^diffuse%.tensor%.add: expected tensors or numbers, one of them a tensor', tensor.add, x32, 'a' },
      { '^diffuse%.tensor%.add: expected tensors or numbers, one of them a tensor', tensor.add, 1, 2 },
      { '^diffuse%.tensor%.mul: expected tensors or numbers', tensor.mul, {}, x32 },
      { '^diffuse%.tensor%.fill: value must be a number %(got string%)$', x32.fill, x32, 'a' },
      { '^diffuse%.tensor%.copy: sizes differ %(3x2 and 5%)$', x32.copy, x32, tensor.zeros(5) },
      { '^diffuse%.tensor%.copy: source must be a tensor %(got number%)$', x32.copy, x32, 5 },
      { '^diffuse%.tensor%.totable: argument 1 must be a tensor', tensor.totable, 'x' },
      { '^diffuse%.tensor%.free: argument 1 must be a tensor %(got number%)$', tensor.free, 5 },
      { '^diffuse%.tensor%.is_released: argument 1 must be a tensor %(got no value%)$', tensor.is_released },
      { '^diffuse%.tensor%.to: device must be a string %(got number%)$', x32.to, x32, 5 },
    }
    H.assert_error('^diffuse%.tensor%.add: expected tensors or numbers', function() return x32 + 'a' end)
    H.assert_error('^diffuse%.tensor%.add: expected tensors or numbers', function() return {} + x32 end)
  end)

  it('devices: unknown names, missing indices, CUDA unavailable (with the reason)', function()
    cases {
      { "^diffuse%.set_device: unknown device 'tpu'", diffuse.set_device, 'tpu' },
      { "^diffuse%.set_device: unknown device ''", diffuse.set_device, '' },
      { '^diffuse%.set_device: device cpu:1 does not exist %(1 available%)$', diffuse.set_device, 'cpu:1' },
      { '^diffuse%.set_device: device cpu:3 does not exist', diffuse.set_device, 'cpu', 3 },
      { "^diffuse%.set_device: bad device index in 'cuda:x'$", diffuse.set_device, 'cuda:x' },
      { "^diffuse%.set_device: bad device index in 'cpu:%-1'$", diffuse.set_device, 'cpu:-1' },
      { '^diffuse%.set_device: device must be a string %(got number%)$', diffuse.set_device, 5 },
      { '^diffuse%.set_device: index must be an integer %(got string%)$', diffuse.set_device, 'cpu', 'a' },
      { "^diffuse%.tensor%.to: unknown device 'tpu'", x32.to, x32, 'tpu' },
      -- C reads a string up to its first zero byte: such names and paths are refused
      { '^diffuse%.set_device: device must not contain a zero byte$', diffuse.set_device, 'cpu\0junk' },
      { '^diffuse%.nn%.load: path must not contain a zero byte$', diffuse.nn.load, 'x.ckpt\0.txt' },
    }
    assert.are.equal('cpu', diffuse.get_device())
    local avail, why = diffuse.cuda_available()
    if avail then
      -- a usable GPU: set_device works; put the CPU back for the other specs
      diffuse.set_device('cuda')
      assert.are.equal('cuda:0', diffuse.get_device())
      diffuse.set_device('cpu')
    else
      assert.is_string(why)
      local msg = H.assert_error('^diffuse%.set_device: .*cuda', diffuse.set_device, 'cuda')
      -- the message explains why: the reason cuda_available gives, or that no device exists
      assert.is_truthy(msg:find(why, 1, true) or msg:find('(0 available)', 1, true), msg)
      msg = H.assert_error('^diffuse%.tensor%.to: .*cuda', x32.to, x32, 'cuda')
      assert.is_truthy(msg:find(why, 1, true) or msg:find('(0 available)', 1, true), msg)
    end
    assert.are.equal('cpu', diffuse.get_device())
  end)

  it('seeds and rng state', function()
    local S, s = diffuse.rng_state()
    cases {
      { '^diffuse%.seed: seed must be an integer %(got 0%.5%)$', diffuse.seed, 0.5 },
      { '^diffuse%.seed: seed must be an integer %(got string%)$', diffuse.seed, 'x' },
      { '^diffuse%.set_rng_state: seed must be an integer %(got string%)$', diffuse.set_rng_state, 'a', 1 },
      { '^diffuse%.set_rng_state: stream must be an integer %(got no value%)$', diffuse.set_rng_state, 1 },
    }
    local S2, s2 = diffuse.rng_state()
    assert.are.equal(S, S2) -- a failed call changes nothing
    assert.are.equal(s, s2)
  end)

  it('philox arguments', function()
    cases {
      { '^diffuse%.core%.philox: counter word must be an integer %(got nil%)$', diffuse.core.philox,
        { 1, 2, 3 }, { 1, 2 } },
      { '^diffuse%.core%.philox: key word must be an integer %(got 0%.5%)$', diffuse.core.philox,
        { 1, 2, 3, 4 }, { 1, 0.5 } },
      { '^diffuse%.core%.philox: .*table', diffuse.core.philox, 1, 2 },
      { '^diffuse%.core%.philox: counter word 3 must be in 0%.%.2%^32%-1 %(got %-1%)$', diffuse.core.philox,
        { 1, 2, -1, 4 }, { 1, 2 } },
      { '^diffuse%.core%.philox: key word 2 must be in 0%.%.2%^32%-1 %(got 4294967296%)$', diffuse.core.philox,
        { 1, 2, 3, 4 }, { 1, 2 ^ 32 } },
      { '^diffuse%.core%.philox: .*table', diffuse.core.philox },
    }
  end)
end)
