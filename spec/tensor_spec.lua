-- spec/tensor_spec.lua: creation, shapes, views, copies, indexing and histograms of
-- diffuse.tensor, each against a plain-Lua computation of the expected values.
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local tensor = diffuse.tensor
local f32 = H.f32

local function same(actual, expected, what)
  H.assert_close(actual, expected, 0, what)
end

describe('tensor creation', function()
  it('zeros and ones take sizes as arguments or as one table', function()
    same(tensor.zeros(3):totable(), { 0, 0, 0 })
    same(tensor.zeros(2, 3):totable(), { { 0, 0, 0 }, { 0, 0, 0 } })
    same(tensor.zeros({ 2, 3 }):totable(), { { 0, 0, 0 }, { 0, 0, 0 } })
    same(tensor.ones(2, 1, 2):totable(), { { { 1, 1 } }, { { 1, 1 } } })
    same(tensor.ones({ 1, 1, 1, 2 }):totable(), { { { { 1, 1 } } } })
    assert.are.same({ 4096, 1 }, tensor.zeros(4096, 1):shape())
    assert.are.same({ 0 }, tensor.zeros(0):shape())
    assert.are.same({ 3, 0, 2 }, tensor.ones(3, 0, 2):shape())
    assert.are.equal(0, tensor.ones(3, 0, 2):numel())
  end)

  it('integer-valued floats are accepted as sizes', function()
    assert.are.same({ 2, 3 }, tensor.zeros(2.0, 3.0):shape())
  end)

  it('full fills with the value rounded to float32', function()
    same(tensor.full({ 2, 2 }, 2.5):totable(), { { 2.5, 2.5 }, { 2.5, 2.5 } })
    same(tensor.full(3, 0.1):totable(), { f32(0.1), f32(0.1), f32(0.1) })
    same(tensor.full({ 1 }, 1e40):totable(), { math.huge })
    assert.is_true(H.isnan(tensor.full({ 1 }, 0 / 0):item()))
  end)

  it('randn and rand make the requested shape', function()
    diffuse.seed(1)
    assert.are.same({ 3, 4 }, tensor.randn(3, 4):shape())
    assert.are.same({ 5 }, tensor.rand({ 5 }):shape())
    assert.are.same({ 2, 0 }, tensor.randn(2, 0):shape())
    local u = tensor.rand(1000):totable()
    for i = 1, #u do assert.is_true(u[i] >= 0 and u[i] < 1) end
  end)

  it('linspace(a, b, n) is a + i (b - a)/(n - 1) rounded to float32, ending at b exactly', function()
    local cases = { { 0, 1, 5 }, { -4, 4, 9 }, { 0, 1, 101 }, { 1, 0, 7 }, { -3.7, 12.1, 33 },
                    { 2, 2, 4 }, { 0, 1, 2 } }
    for _, c in ipairs(cases) do
      local a, b, n = c[1], c[2], c[3]
      local step = (b - a) / (n - 1)
      local want = {}
      for i = 0, n - 1 do want[i + 1] = f32(a + i * step) end
      want[n] = f32(b)
      same(tensor.linspace(a, b, n):totable(), want, ('linspace(%g, %g, %d)'):format(a, b, n))
    end
    same(tensor.linspace(3, 7, 1):totable(), { 3 })
    assert.are.same({ 0 }, tensor.linspace(0, 1, 0):shape())
  end)

  it('arange follows torch: [start, stop) in steps, ceil((stop - start)/step) elements', function()
    same(tensor.arange(5):totable(), { 0, 1, 2, 3, 4 })
    same(tensor.arange(2, 6):totable(), { 2, 3, 4, 5 })
    same(tensor.arange(0, 1, 0.25):totable(), { 0, 0.25, 0.5, 0.75 })
    same(tensor.arange(5, 0, -2):totable(), { 5, 3, 1 })
    same(tensor.arange(0, 1, 0.3):totable(), { 0, f32(0.3), f32(0.6), f32(0.3 * 3) })
    assert.are.same({ 0 }, tensor.arange(0):shape())
    assert.are.same({ 0 }, tensor.arange(5, 0):shape())
    assert.are.equal(4, tensor.arange(0.5, 4):numel()) -- 0.5 1.5 2.5 3.5
    local n = 1001
    local t = tensor.arange(-1, 1, 2 / (n - 1)):totable()
    assert.are.equal(math.ceil(2 / (2 / (n - 1))), #t)
    for i = 1, #t do assert.are.equal(f32(-1 + (i - 1) * (2 / (n - 1))), t[i]) end
  end)

  it('new reads numbers and nested tables of any depth up to 4', function()
    same(tensor.new { 1, 2, 3 }:totable(), { 1, 2, 3 })
    same(tensor.new { { 1, 2 }, { 3, 4 }, { 5, 6 } }:totable(), { { 1, 2 }, { 3, 4 }, { 5, 6 } })
    assert.are.same({ 3, 2 }, tensor.new { { 1, 2 }, { 3, 4 }, { 5, 6 } }:shape())
    local t3 = { { { 1, 2 } }, { { 3, 4 } } }
    same(tensor.new(t3):totable(), t3)
    assert.are.same({ 2, 1, 2 }, tensor.new(t3):shape())
    local t4 = { { { { 1 }, { 2 } } } }
    assert.are.same({ 1, 1, 2, 1 }, tensor.new(t4):shape())
    same(tensor.new(t4):totable(), t4)
    same(tensor.new(7.5):totable(), { 7.5 })
    same(tensor.new { 0.1, 1e-50, 1e50, -0.0 }:totable(), { f32(0.1), 0, math.huge, 0 })
    assert.are.same({ 0 }, tensor.new {}:shape())
  end)

  it('new rejects ragged and mixed tables', function()
    H.assert_error('^diffuse%.tensor%.new: .*different sizes', tensor.new, { { 1, 2 }, { 3 } })
    H.assert_error('^diffuse%.tensor%.new: .*different sizes', tensor.new, { { 1 }, { 2, 3 } })
    H.assert_error('^diffuse%.tensor%.new: .*different sizes', tensor.new,
                   { { { 1, 2 }, { 3, 4 } }, { { 5, 6 }, { 7 } } })
    H.assert_error('^diffuse%.tensor%.new: .*number', tensor.new, { 1, { 2 } })
    H.assert_error('^diffuse%.tensor%.new: .*table', tensor.new, { { 1 }, 2 })
    H.assert_error('^diffuse%.tensor%.new: .*number', tensor.new, { 1, 'x' })
  end)

  it('new rejects a ragged table whose first row is empty', function()
    H.assert_error('^diffuse%.tensor%.new: .*different sizes', tensor.new, { {}, { 1, 2 } })
    H.assert_error('^diffuse%.tensor%.new: .*different sizes', tensor.new, { { {} }, { { 1 } } })
  end)
end)

describe('tensor shape queries', function()
  local x = tensor.zeros(4, 3, 2)

  it('shape size dim numel # device', function()
    assert.are.same({ 4, 3, 2 }, x:shape())
    assert.are.same({ 4, 3, 2 }, x:size())
    assert.are.equal(4, x:size(1))
    assert.are.equal(3, x:size(2))
    assert.are.equal(2, x:size(3))
    assert.are.equal(2, x:size(-1))
    assert.are.equal(4, x:size(-3))
    assert.are.equal(3, x:dim())
    assert.are.equal(24, x:numel())
    assert.are.equal(4, #x)
    assert.are.equal(7, #tensor.zeros(7))
    assert.are.equal('cpu', x.device)
    assert.is_true(math.type(x:numel()) == 'integer')
    assert.is_true(math.type(x:size(1)) == 'integer')
  end)

  it('shape returns a fresh table each time', function()
    local s = x:shape()
    s[1] = 99
    assert.are.same({ 4, 3, 2 }, x:shape())
  end)

  it('unknown keys index to nil; methods are reachable through the module too', function()
    assert.is_nil(x.no_such_method)
    assert.are.equal(tensor.exp, tensor.exp)
    assert.are.equal(24, tensor.numel(x))
    same(tensor.totable(tensor.exp(tensor.zeros(2))), { 1, 1 })
  end)
end)

describe('reshape', function()
  it('keeps the row-major order and shares memory with the original', function()
    local x = tensor.arange(12)
    local y = x:reshape(3, 4)
    same(y:totable(), { { 0, 1, 2, 3 }, { 4, 5, 6, 7 }, { 8, 9, 10, 11 } })
    y:fill(5)
    same(x:totable(), { 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5 })
    x[2] = -1
    assert.are.equal(-1, y[1][2])
  end)

  it('takes a table and infers one -1 size', function()
    local x = tensor.arange(24)
    assert.are.same({ 2, 12 }, x:reshape(2, -1):shape())
    assert.are.same({ 2, 3, 4 }, x:reshape { 2, -1, 4 }:shape())
    assert.are.same({ 24 }, x:reshape(-1):shape())
    assert.are.same({ 1, 24, 1, 1 }, x:reshape(1, -1, 1, 1):shape())
    assert.are.same({ 0, 5 }, tensor.zeros(0):reshape(0, 5):shape())
    assert.are.same({ 0 }, tensor.zeros(2, 0):reshape(-1):shape())
  end)

  it('of a view is again a view of the same memory', function()
    local x = tensor.zeros(2, 3, 4)
    local r = x[2]:reshape(12)
    r:fill(1)
    assert.are.equal(12, x:sum())
    same(x[1]:reshape(-1):totable(), { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 })
  end)
end)

describe('clone', function()
  it('is an independent copy', function()
    local x = tensor.new { { 1, 2 }, { 3, 4 } }
    local y = x:clone()
    same(y:totable(), { { 1, 2 }, { 3, 4 } })
    y:fill(9)
    same(x:totable(), { { 1, 2 }, { 3, 4 } })
    x:fill(0)
    same(y:totable(), { { 9, 9 }, { 9, 9 } })
  end)

  it('of a view copies only the view and survives the owner being freed', function()
    local x = tensor.new { { 1, 2 }, { 3, 4 } }
    local c = x[2]:clone()
    x:free()
    same(c:totable(), { 3, 4 })
    same(tensor.zeros(0):clone():shape(), { 0 })
  end)
end)

describe('cat', function()
  -- plain-Lua cat of nested tables along dim d (1-based)
  local function lcat(list, d)
    local function rec(ts, depth)
      if depth == d then
        local out = {}
        for _, t in ipairs(ts) do for i = 1, #t do out[#out + 1] = t[i] end end
        return out
      end
      local out = {}
      for i = 1, #ts[1] do
        local sub = {}
        for j, t in ipairs(ts) do sub[j] = t[i] end
        out[i] = rec(sub, depth + 1)
      end
      return out
    end
    return rec(list, 1)
  end

  it('joins along each dimension of 1-, 2-, 3- and 4-D tensors', function()
    local g = H.lcg(7)
    local shapes = { { 3 }, { 2, 3 }, { 2, 3, 4 }, { 2, 1, 3, 2 } }
    for _, s in ipairs(shapes) do
      for d = 1, #s do
        local list, tabs = {}, {}
        for j = 1, 3 do
          local sj = { table.unpack(s) }
          sj[d] = j -- sizes 1, 2, 3 along the cat dimension
          local t = H.make(sj, function() return f32(g() * 10 - 5) end)
          tabs[j] = t
          list[j] = tensor.new(t)
        end
        local out = tensor.cat(list, d)
        local want = lcat(tabs, d)
        same(out:totable(), want, ('cat of %s along %d'):format(H.shape_str(s), d))
        local ws = { table.unpack(s) }
        ws[d] = 6
        assert.are.same(ws, out:shape())
        -- negative dimension counts from the end
        same(tensor.cat(list, d - #s - 1):totable(), want)
      end
    end
  end)

  it('defaults to dimension 1, takes one tensor, views and empty parts', function()
    same(tensor.cat({ tensor.new { 1, 2 }, tensor.new { 3 } }):totable(), { 1, 2, 3 })
    same(tensor.cat({ tensor.new { 1, 2 } }):totable(), { 1, 2 })
    local m = tensor.new { { 1, 2 }, { 3, 4 } }
    same(tensor.cat({ m[2], m[1] }):totable(), { 3, 4, 1, 2 })
    same(tensor.cat({ tensor.zeros(0, 2), m, tensor.zeros(0, 2) }, 1):totable(), { { 1, 2 }, { 3, 4 } })
    same(tensor.cat({ tensor.zeros(2, 0), m }, 2):totable(), { { 1, 2 }, { 3, 4 } })
    same(tensor.cat({ m, m }, 2):totable(), { { 1, 2, 1, 2 }, { 3, 4, 3, 4 } })
  end)
end)

describe('reading values', function()
  it('totable and item', function()
    local x = tensor.new { { 1.5, -2 }, { 0.25, 8 } }
    same(x:totable(), { { 1.5, -2 }, { 0.25, 8 } })
    assert.are.equal(3.5, tensor.new { 3.5 }:item())
    assert.are.equal(3.5, tensor.new { { { 3.5 } } }:item())
    assert.are.equal('float', math.type(tensor.new { 3 }:item()))
    H.assert_error('^diffuse%.tensor%.item: .*one element', function() return x:item() end)
  end)

  it('x[i] of a 1-D tensor is a number; negative indices count from the end', function()
    local x = tensor.new { 10, 20, 30 }
    assert.are.equal(10, x[1])
    assert.are.equal(30, x[3])
    assert.are.equal(30, x[-1])
    assert.are.equal(10, x[-3])
    assert.are.equal(20, x[2.0])
  end)

  it('x[i] of an n-D tensor is a row view sharing memory', function()
    local x = tensor.new { { 1, 2, 3 }, { 4, 5, 6 } }
    local r = x[2]
    assert.are.same({ 3 }, r:shape())
    same(r:totable(), { 4, 5, 6 })
    same(x[-2]:totable(), { 1, 2, 3 })
    r:fill(0)
    same(x:totable(), { { 1, 2, 3 }, { 0, 0, 0 } })
    local y = tensor.arange(24):reshape(2, 3, 4)
    assert.are.same({ 3, 4 }, y[2]:shape())
    assert.are.equal(12 + 4 + 2, y[2][2][3])
    assert.are.equal(23, y[-1][-1][-1])
  end)

  it('x[i] = number fills the element or the row; x[i] = tensor copies into the row', function()
    local v = tensor.zeros(3)
    v[2] = 5
    v[-1] = 0.1
    same(v:totable(), { 0, 5, f32(0.1) })
    v[1] = tensor.new { -4 } -- a one-element tensor into a 1-D slot
    v[3] = tensor.new { { 2.5 } }
    same(v:totable(), { -4, 5, 2.5 })
    local x = tensor.zeros(3, 2)
    x[1] = 7
    x[3] = tensor.new { 1, 2 }
    x[-2] = tensor.new { { 3 }, { 4 } } -- any shape with the right number of elements
    same(x:totable(), { { 7, 7 }, { 3, 4 }, { 1, 2 } })
    local y = tensor.zeros(2, 2, 2)
    y[2] = tensor.arange(4)
    same(y:totable(), { { { 0, 0 }, { 0, 0 } }, { { 0, 1 }, { 2, 3 } } })
    y[2][1] = 9
    same(y[2]:totable(), { { 9, 9 }, { 2, 3 } })
  end)

  it('fill returns the tensor; copy copies any shape of equal size and returns the destination', function()
    local x = tensor.zeros(2, 3)
    assert.are.equal(x, x:fill(2))
    same(x:totable(), { { 2, 2, 2 }, { 2, 2, 2 } })
    local src = tensor.arange(6)
    assert.are.equal(x, x:copy(src))
    same(x:totable(), { { 0, 1, 2 }, { 3, 4, 5 } })
    src:fill(0) -- the copy is independent of its source
    same(x:totable(), { { 0, 1, 2 }, { 3, 4, 5 } })
    x[1]:copy(x[2])
    same(x:totable(), { { 3, 4, 5 }, { 3, 4, 5 } })
  end)

  it("to('cpu') returns the very same tensor", function()
    local x = tensor.ones(3)
    assert.are.equal(x, x:to('cpu'))
    assert.are.equal(x, x:to('cpu:0'))
    assert.are.equal('cpu', x:to('cpu').device)
  end)
end)

describe('histogram', function()
  -- plain-Lua histogram with the documented rule: bin floor((v - lo) * bins / (hi - lo)),
  -- values outside [lo, hi] and NaN skipped, hi itself in the last bin
  local function lhist(vals, bins, lo, hi)
    local c = {}
    for b = 1, bins do c[b] = 0 end
    local scale = bins / (hi - lo)
    for _, v in ipairs(vals) do
      if v >= lo and v <= hi then
        local b = math.floor((v - lo) * scale)
        if b >= bins then b = bins - 1 end
        c[b + 1] = c[b + 1] + 1
      end
    end
    return c
  end

  it('counts equal a plain-Lua count exactly', function()
    local g = H.lcg(42)
    local vals = H.uniform_list(g, 5000, -5, 5)
    local x = tensor.new(vals)
    for _, c in ipairs { { 50, -4, 4 }, { 7, -5, 5 }, { 1, 0, 1 }, { 33, -1.3, 2.9 } } do
      local counts, edges = x:histogram { bins = c[1], min = c[2], max = c[3] }
      same(counts:totable(), lhist(vals, c[1], c[2], c[3]))
      assert.are.same({ c[1] }, counts:shape())
      assert.are.same({ c[1] + 1 }, edges:shape())
    end
  end)

  it('edges are lo + i (hi - lo)/bins, the last exactly max', function()
    local _, edges = tensor.zeros(3):histogram { bins = 8, min = -4, max = 4 }
    same(edges:totable(), { -4, -3, -2, -1, 0, 1, 2, 3, 4 })
    local _, e2 = tensor.zeros(3):histogram { bins = 3, min = 0, max = 1 }
    same(e2:totable(), { 0, f32(1 / 3), f32(2 / 3), 1 })
  end)

  it('density integrates to 1 over the bins', function()
    local g = H.lcg(3)
    local vals = H.uniform_list(g, 4000, -3, 3)
    local x = tensor.new(vals)
    local dens, edges = x:histogram { bins = 40, min = -4, max = 4, density = true }
    local d, e = dens:totable(), edges:totable()
    local total = 0
    for b = 1, 40 do total = total + d[b] * (e[b + 1] - e[b]) end
    -- each density is a float32 (relative error 2^-24); edges are float32 too
    assert.is_true(math.abs(total - 1) < 40 * 4 * 2 ^ -24, 'integral ' .. total)
    local counts = lhist(vals, 40, -4, 4)
    for b = 1, 40 do assert.are.equal(f32(counts[b] / (4000 * 0.2)), d[b]) end
  end)

  it('skips values outside [min, max] and NaN; the last bin includes max', function()
    local x = tensor.new { -10, -1, 0, 0.5, 1, 1, 2, 0 / 0, 1 / 0, -1 / 0, 0.999 }
    local counts = x:histogram { bins = 2, min = 0, max = 1 }
    same(counts:totable(), { 1, 4 }) -- [0, 0.5): 0; [0.5, 1]: 0.5 1 1 0.999
    -- min itself is in the first bin, an exact interior edge opens the next bin
    local c4 = tensor.new { 0, 0.25, 0.5, 0.75, 1 }:histogram { bins = 4, min = 0, max = 1 }
    same(c4:totable(), { 1, 1, 1, 2 })
    local dens = x:histogram { bins = 2, min = 0, max = 1, density = true }
    same(dens:totable(), { f32(1 / 5 / 0.5), f32(4 / 5 / 0.5) })
  end)

  it('defaults: 100 bins over the data range; a constant tensor gets [v - 1, v + 1]', function()
    local x = tensor.new { 1, 2, 3, 4 }
    local counts, edges = x:histogram()
    assert.are.same({ 100 }, counts:shape())
    local e = edges:totable()
    assert.are.equal(1, e[1])
    assert.are.equal(4, e[101])
    same(counts:totable(), lhist({ 1, 2, 3, 4 }, 100, 1, 4))
    local _, e2 = tensor.full({ 3 }, 2):histogram { bins = 2 }
    same(e2:totable(), { 1, 2, 3 })
    local c3 = tensor.new { 0, 10 }:histogram { bins = 5, min = -10 }
    same(c3:totable(), { 0, 0, 1, 0, 1 })
  end)

  it('of an empty tensor with a range counts nothing; density stays 0', function()
    local c, _ = tensor.zeros(0):histogram { bins = 3, min = 0, max = 1, density = true }
    same(c:totable(), { 0, 0, 0 })
  end)
end)
