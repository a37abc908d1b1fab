-- spec/plot_spec.lua: diffuse.plot. The SVG is parsed by spec/support/xml.lua (well-formedness)
-- and then searched for what each call should have drawn; also ticks, colour maps, robustness
-- against empty/constant/NaN/inf/log-invalid data, and the terminal histogram.
local diffuse = require 'diffuse'
local xml = require 'support.xml'
local plot = diffuse.plot

local function parse(fig) return xml.parse(fig:svg()) end

local function count(root, class, tag) return #xml.by_class(root, class, tag) end

local function texts(root, class)
  local t = {}
  for _, e in ipairs(xml.by_class(root, class)) do t[#t + 1] = xml.text(e) end
  return t
end

local function contains(list, v)
  for _, x in ipairs(list) do if x == v then return true end end
  return false
end

-- numbers in coordinate-like attributes and path data, with the element they came from
local GEOM = { x = true, y = true, width = true, height = true, cx = true, cy = true, r = true,
               x1 = true, y1 = true, x2 = true, y2 = true, ['stroke-width'] = true,
               ['font-size'] = true, offset = true, viewBox = true, transform = true, d = true,
               ['fill-opacity'] = true, ['stroke-opacity'] = true }
local function each_number(root, fn)
  for _, e in ipairs(xml.find_all(root, '*')) do
    for k, v in pairs(e.attrs) do
      if GEOM[k] then
        for tok in v:gmatch('[^%s,%(%)A-Za-z]+') do fn(tok, e, k) end
      end
    end
  end
end

-- the checks every figure must pass: parses, one <svg>, no nan/inf anywhere in attributes,
-- every coordinate a finite number with at most two decimals
local function check_svg(fig)
  local s = fig:svg()
  local root = xml.parse(s)
  assert.are.equal('svg', root.tag)
  assert.are.equal(1, #xml.find_all(root, 'svg'))
  for _, e in ipairs(xml.find_all(root, '*')) do
    for k, v in pairs(e.attrs) do
      if k ~= 'xlink:href' then
        assert.is_nil(v:lower():find('nan', 1, true), ('nan in %s="%s"'):format(k, v))
        assert.is_nil(v:lower():find('inf', 1, true), ('inf in %s="%s"'):format(k, v))
      end
    end
  end
  each_number(root, function(tok, e, k)
    local v = tonumber(tok)
    assert.is_truthy(v, ('not a number in <%s %s>: %s'):format(e.tag, k, tok))
    assert.is_true(v == v and v > -1e6 and v < 1e6, ('bad number %s in <%s %s>'):format(tok, e.tag, k))
    assert.is_nil(tok:match('%.%d%d%d'), ('more than two decimals: %s in %s'):format(tok, k))
  end)
  return root, s
end

local function finite(v) return v == v and v ~= math.huge and v ~= -math.huge end

describe('spec/support/xml', function()
  it('accepts well-formed documents and builds the tree', function()
    local r = xml.parse('<?xml version="1.0"?>\n<!-- c --><a x="1" y=\'&lt;2&gt;\'><b/>t &amp; &#x41;&#66;<c></c></a>\n')
    assert.are.equal('a', r.tag)
    assert.are.equal('<2>', r.attrs.y)
    assert.are.equal('t & AB', xml.text(r))
    assert.are.equal(2, #xml.find_all(r, '*') - 1)
  end)
  it('rejects what is not well-formed', function()
    for _, bad in ipairs({ '<a><b></a></b>', '<a x=1/>', '<a x="1" x="2"/>', '<a>&foo;</a>', '<a>x & y</a>',
                           '<a/><b/>', '<a>', 'text', '<a x="<"/>', '<a>]]></a>', '<a>\1</a>',
                           '<a>&#0;</a>', '<a x="1"y="2"/>', '<1a/>', '<a><!-- -- --></a>' }) do
      assert.has_error(function() xml.parse(bad) end, nil, bad)
    end
  end)
end)

describe('diffuse.plot.ticks', function()
  it('gives 1-2-5 steps inside the range', function()
    local t, l, step = plot.ticks(0, 1)
    assert.are.same({ 0, 0.2, 0.4, 0.6, 0.8, 1 }, t)
    assert.are.same({ '0.0', '0.2', '0.4', '0.6', '0.8', '1.0' }, l)
    assert.are.equal(0.2, step)
    t, l = plot.ticks(-3.2, 4.1, 4)
    assert.are.same({ -2, 0, 2, 4 }, t)
    assert.are.same({ '-2', '0', '2', '4' }, l)
    t = plot.ticks(0.05, 1.05, 5)       -- a padded 0..1 axis keeps the 0.2 steps
    assert.are.same({ 0.2, 0.4, 0.6, 0.8, 1 }, t)
    t, l = plot.ticks(-1.05, 1.05, 5)
    assert.are.same({ '-1.0', '-0.5', '0.0', '0.5', '1.0' }, l)
    for _, case in ipairs({ { 0, 7 }, { 13, 9876 }, { -0.003, 0.0021 }, { 1e-7, 3e-7 }, { 2e5, 9e6 } }) do
      t = plot.ticks(case[1], case[2], 5)
      assert.is_true(#t >= 3 and #t <= 11, ('%d ticks on [%g, %g]'):format(#t, case[1], case[2]))
      for i = 2, #t do
        local step = t[i] - t[i - 1]
        local m = step / 10 ^ math.floor(math.log(step, 10) + 1e-9)
        assert.is_true(math.abs(m - 1) < 1e-6 or math.abs(m - 2) < 1e-6 or math.abs(m - 5) < 1e-6)
      end
    end
  end)
  it('labels tiny and huge values compactly', function()
    local _, l = plot.ticks(0, 4e-6, 4)
    assert.are.same({ '0', '1e-6', '2e-6', '3e-6', '4e-6' }, l)
    _, l = plot.ticks(0, 3e6, 3)
    assert.are.same({ '0', '1e6', '2e6', '3e6' }, l)
    _, l = plot.ticks(1e5, 1.5e5, 5)
    assert.are.same('1e5', l[1])
    assert.are.same('1.1e5', l[2])
  end)
  it('takes ranges at the ends of the doubles, and checks n', function()
    for _, r in ipairs { { -1e308, 1e308, 5 }, { -1.7e308, 1.7e308, 1 }, { 0, 1.7e308, 2 } } do
      local t = plot.ticks(r[1], r[2], r[3])
      assert.is_true(#t >= 2, 'ticks of a huge range')
      for _, v in ipairs(t) do assert.is_true(v >= r[1] and v <= r[2] and v == v) end
    end
    assert.are.same({}, (plot.ticks(5e-324, 1e-323)))  -- subnormals: no nice steps, no ticks
    assert.has_error(function() plot.ticks(0, 1, 1e9) end,
      'diffuse.plot.ticks: n must be a number up to 1000 (got 1000000000.0)')
    assert.has_error(function() plot.ticks(0, 1, 0 / 0) end)
    assert.are.same(plot.ticks(0, 1, 2), plot.ticks(0, 1, 2.5)) -- "about n": fractions as before
    assert.are.same(plot.ticks(0, 1, 1), plot.ticks(0, 1, 0))
    assert.has_error(function() plot.ticks(0, 'x') end, 'diffuse.plot.ticks: hi must be a number (got string)')
    assert.has_error(function() plot.log_ticks(1, 10, 'x') end)
    -- and a figure of such data draws (finite coordinates are checked by every save below)
    local fig = plot.figure()
    fig[1]:scatter({ 5e-324, 1e-323 }, { 0, 1 })
    fig[1]:line({ -1.7e308, 1.7e308 }, { 0, 1 })
    assert.is_string(fig:svg())
  end)
  it('puts decades and minor ticks on a log axis', function()
    local t, l, minor = plot.log_ticks(1e-3, 1e2, 6)
    assert.are.same({ 1e-3, 1e-2, 1e-1, 1, 10, 100 }, t)
    assert.are.same({ '10⁻³', '10⁻²', '10⁻¹', '10⁰', '10¹', '10²' }, l)
    assert.are.equal(5 * 8, #minor)
    t, l = plot.log_ticks(1e-12, 1e12, 5)   -- many decades: every few
    assert.is_true(#t <= 6 and #t >= 3)
    t, l = plot.log_ticks(0.02, 0.5)        -- under two decades: 1-2-5 multiples
    assert.are.same({ 0.02, 0.05, 0.1, 0.2, 0.5 }, t)
    assert.are.same({ '0.02', '0.05', '0.1', '0.2', '0.5' }, l)
  end)
end)

describe('diffuse.plot colour maps', function()
  it('has the viridis endpoints and the tab10 cycle', function()
    assert.are.equal('#440154', plot.viridis(0))
    assert.are.equal('#fde725', plot.viridis(1))
    assert.are.equal('#440154', plot.viridis(-3))      -- clamped
    assert.are.equal('#fde725', plot.colormap('viridis_r')(0))
    local r, g, b = plot.viridis(0.5):match('#(%x%x)(%x%x)(%x%x)')   -- matplotlib: #21918c
    assert.is_true(math.abs(tonumber(r, 16) - 0x21) <= 1 and math.abs(tonumber(g, 16) - 0x91) <= 1
                   and math.abs(tonumber(b, 16) - 0x8c) <= 1)
    assert.are.equal('#000000', plot.colormap('gray')(0))
    assert.are.equal('#1f77b4', plot.colors[1])
    assert.are.equal('#ff7f0e', plot.colors[2])
    assert.has_error(function() plot.colormap('jet') end)
  end)
end)

describe('diffuse.plot.figure', function()
  it('lays out panels row-major, with a title', function()
    local fig = plot.figure { rows = 2, cols = 3, title = 'All six' }
    assert.are.equal(6, #fig)
    assert.are.equal(fig[6], fig:panel(2, 3))
    assert.are.equal(fig[2], fig:panel(1, 2))
    assert.has_error(function() return fig[7] end)
    assert.has_error(function() fig:panel(3, 1) end)
    local root = check_svg(fig)
    assert.are.equal(6, count(root, 'panel', 'g'))
    assert.are.same({ 'All six' }, texts(root, 'figure-title'))
    assert.are.equal('960', root.attrs.width)
    local f2 = plot.figure { cols = 4, width = 1000, height = 300 }
    local r2 = parse(f2)
    assert.are.equal('1000', r2.attrs.width)
    assert.are.equal('300', r2.attrs.height)
  end)

  it('checks its options', function()
    assert.has_error(function() plot.figure { colls = 2 } end)
    assert.has_error(function() plot.figure { cols = 0 } end)
    assert.has_error(function() plot.figure { rows = 1.5 } end)
    assert.has_error(function() plot.figure { width = 0 / 0 } end)
    assert.has_error(function() plot.figure(3) end)
    assert.has_error(function() plot.figure { font_size = 1e308 } end,
      'diffuse.plot.figure: font_size must be a positive number up to 1000 (got 1e+308)')
    local fig = plot.figure { rows = 2, cols = 2 }
    assert.are.equal(fig[3], fig:panel(2.0, 1))   -- whole floats are indices
    assert.has_error(function() fig:panel(1.5, 1) end)
  end)

  it('draws one bar per non-empty bin, the counts returned', function()
    local xs = {}
    for i = 1, 10 do xs[i] = i - 0.5 end
    local fig = plot.figure()
    local counts, edges = fig[1]:hist(xs, { bins = 10, range = { 0, 10 } })
    assert.are.same({ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 }, counts)
    assert.are.equal(11, #edges)
    local root = check_svg(fig)
    assert.are.equal(10, count(root, 'bar', 'rect'))
    -- bars of equal counts have equal heights; adjacent bars touch
    local bars = xml.by_class(root, 'bar', 'rect')
    for i = 2, #bars do
      assert.are.equal(bars[1].attrs.height, bars[i].attrs.height)
      local right = tonumber(bars[i - 1].attrs.x) + tonumber(bars[i - 1].attrs.width)
      assert.is_true(math.abs(right - tonumber(bars[i].attrs.x)) < 0.02)
    end

    local f2 = plot.figure()
    counts = f2[1]:hist({ 0.1, 0.2, 9.9 }, { bins = 10, range = { 0, 10 } })
    assert.are.same({ 2, 0, 0, 0, 0, 0, 0, 0, 0, 1 }, counts)
    assert.are.equal(2, count(check_svg(f2), 'bar', 'rect'))
  end)

  it('normalises a density histogram', function()
    local fig = plot.figure()
    local xs = {}
    for i = 1, 1000 do xs[i] = (i - 0.5) / 1000 * 4 end
    local counts, edges = fig[1]:hist(xs, { bins = 8, density = true })
    local area = 0
    for b = 1, 8 do area = area + counts[b] * (edges[b + 1] - edges[b]) end
    assert.is_true(math.abs(area - 1) < 1e-12)
    check_svg(fig)
  end)

  it('takes tensors: histogram of randn with the analytic curve, legend', function()
    diffuse.seed(1234)
    local x = diffuse.tensor.randn(2048, 1)
    local xs, ys = diffuse.tensor.linspace(-4, 4, 201), {}
    for i, v in ipairs(xs:totable()) do ys[i] = math.exp(-v * v / 2) / math.sqrt(2 * math.pi) end
    local fig = plot.figure { cols = 4, title = 'Density During Forward Process' }
    local counts = fig[1]:hist(x, { bins = 50, density = true, label = 'samples' })
    assert.are.equal(50, #counts)
    fig[1]:line(xs, ys, { dash = true, label = 'analytic' })
    fig[1]:title('t = 0'):xlabel('x'):ylabel('density')
    local root = check_svg(fig)
    local nbars = 0
    for _, c in ipairs(counts) do if c > 0 then nbars = nbars + 1 end end
    assert.are.equal(nbars, count(root, 'bar', 'rect'))
    local lines = xml.by_class(root, 'line', 'path')
    assert.are.equal(1, #lines)
    assert.are.equal('6,4', lines[1].attrs['stroke-dasharray'])
    assert.are.equal('#ff7f0e', lines[1].attrs.stroke)          -- second colour of the cycle
    assert.are.equal(1, count(root, 'legend', 'g'))
    assert.are.same({ 'samples', 'analytic' }, texts(root, 'legend-entry'))
    assert.are.same({ 't = 0' }, texts(root, 'panel-title'))
    assert.are.same({ 'x' }, texts(root, 'xlabel'))
    assert.are.same({ 'density' }, texts(root, 'ylabel'))
    assert.is_true(#texts(root, 'xtick') >= 3)
    assert.is_true(#texts(root, 'ytick') >= 3)
  end)

  it('handles empty data', function()
    local fig = plot.figure { cols = 3 }
    assert.are.same({}, (function() local c = fig[1]:hist({}, { bins = 5 }); local out = {}
      for _, v in ipairs(c) do if v ~= 0 then out[#out + 1] = v end end; return out end)())
    fig[2]:line({}, {}, { label = 'nothing' })
    fig[3]:scatter({}, {}):yscale('log')
    local root = check_svg(fig)
    assert.are.equal(0, count(root, 'bar'))
    assert.are.equal(0, count(root, 'line', 'path'))
    assert.is_true(#texts(root, 'xtick') >= 2)     -- still a labelled axis
  end)

  it('handles constant data and a single point', function()
    local fig = plot.figure { cols = 3 }
    local counts = fig[1]:hist({ 3, 3, 3 }, { bins = 5 })
    local n = 0
    for _, c in ipairs(counts) do n = n + c end
    assert.are.equal(3, n)
    fig[2]:line({ 1, 2, 3 }, { 5, 5, 5 })
    fig[3]:line({ 2 }, { 7 }):scatter({ 2 }, { 7 })
    local root = check_svg(fig)
    assert.are.equal(1, count(root, 'bar', 'rect'))
    local xt = texts(xml.by_class(root, 'panel')[1], 'xtick')
    assert.is_true(contains(xt, '3.0') or contains(xt, '3'), table.concat(xt, ' '))
    local yt = texts(xml.by_class(root, 'panel')[2], 'ytick')
    assert.is_true(contains(yt, '5.0') or contains(yt, '5'), table.concat(yt, ' '))
    local single = xml.by_class(xml.by_class(root, 'panel')[3], 'line', 'path')
    assert.are.equal(1, #single)                       -- drawn as a dot
    assert.are.equal(1, count(root, 'marker', 'circle'))
  end)

  it('skips NaN and infinite values, breaking lines there', function()
    local nan, inf = 0 / 0, math.huge
    local fig = plot.figure { cols = 3 }
    local counts = fig[1]:hist({ 1, 2, nan, inf, -inf, 3 }, { bins = 3 })
    assert.are.same({ 1, 1, 1 }, counts)
    fig[2]:line({ 1, 2, 3, 4, 5, 6 }, { 1, 2, nan, 4, inf, 6 })
    fig[3]:scatter({ 1, nan, 3, inf }, { 1, 2, -inf, 4 })
    fig[3]:image({ { 1, nan }, { inf, 2 } }, { colorbar = true })
    local root = check_svg(fig)
    local path = xml.by_class(root, 'line', 'path')[1]
    local _, moves = path.attrs.d:gsub('M', '')
    local _, segs = path.attrs.d:gsub('L', '')
    assert.are.equal(1, moves)         -- only 1-2 is a segment; 4 and 6 stand alone
    assert.are.equal(1, segs)
    assert.are.equal(1, count(root, 'marker', 'circle'))
    -- image: non-finite cells (NaN and inf) are left empty
    assert.are.equal(2, #xml.find_all(xml.by_class(root, 'image', 'g')[1], 'rect'))
  end)

  it('skips non-positive values on a log axis', function()
    local fig = plot.figure { cols = 2 }
    fig[1]:line({ 1, 2, 3, 4, 5 }, { -1, 0, 0.1, 1, 10 }):yscale('log')
    fig[2]:hist({ -1, 0, 1, 2, 3 }, { bins = 4 })
    fig[2]:xscale('log'):yscale('log')
    local root = check_svg(fig)
    local d = xml.by_class(root, 'line', 'path')[1].attrs.d
    local _, pts = d:gsub('[ML]', '')
    assert.are.equal(3, pts)
    local yt = texts(xml.by_class(root, 'panel')[1], 'ytick')
    assert.is_true(contains(yt, '10⁰') and contains(yt, '10¹'), table.concat(yt, ' '))
    assert.is_true(#xml.find_all(xml.by_class(root, 'ticks')[1], 'line') > #yt + 5)   -- minor ticks
  end)

  it('clips lines to the axes and honours xlim/ylim', function()
    local fig = plot.figure()
    fig[1]:line({ -100, 0, 10, 1e300 }, { -100, 0, 10, 1e300 }):xlim(0, 5):ylim(0, 5)
    local root = check_svg(fig)
    local frame = xml.by_class(root, 'frame', 'rect')[1].attrs
    local x0, y0 = tonumber(frame.x), tonumber(frame.y)
    local x1, y1 = x0 + tonumber(frame.width), y0 + tonumber(frame.height)
    local d = xml.by_class(root, 'line', 'path')[1].attrs.d
    local n = 0
    for x, y in d:gmatch('(%-?[%d.]+),(%-?[%d.]+)') do
      x, y = tonumber(x), tonumber(y)
      assert.is_true(x >= x0 - 1.01 and x <= x1 + 1.01 and y >= y0 - 1.01 and y <= y1 + 1.01)
      n = n + 1
    end
    assert.is_true(n >= 2)
    local xt = texts(root, 'xtick')
    assert.are.equal('0', xt[1])
    assert.are.equal('5', xt[#xt])
    assert.has_error(function() fig[1]:xlim(2, 1) end)
    assert.has_error(function() fig[1]:xscale('symlog') end)
  end)

  it('draws a log-scale loss plot with two curves and a legend', function()
    local a, b = {}, {}
    for k = 1, 500 do a[k] = 0.02 + 1 / k; b[k] = 0.07 + 0.5 / k end
    local fig = plot.figure { title = 'loss' }
    fig[1]:line(a, { label = 'MLP' }):line(b, { label = 'time-embedded' }):yscale('log'):grid(true)
    local root = check_svg(fig)
    assert.are.equal(2, count(root, 'line', 'path'))
    assert.are.same({ 'MLP', 'time-embedded' }, texts(root, 'legend-entry'))
    assert.are.equal(1, count(root, 'grid', 'g'))
    local yt = texts(root, 'ytick')
    assert.is_true(contains(yt, '10⁻¹') and contains(yt, '10⁰'), table.concat(yt, ' '))
  end)

  it('places the legend away from the data, or where asked', function()
    local xs, ys = {}, {}
    for i = 1, 200 do xs[i] = 0.8 + 0.2 * (i % 17) / 17; ys[i] = 0.8 + 0.2 * (i % 13) / 13 end
    xs[201], ys[201] = 0, 0
    local fig = plot.figure()
    fig[1]:scatter(xs, ys, { label = 'points' })
    local root = check_svg(fig)
    assert.are_not.equal('upper right', fig[1]._legend_loc)
    local box = xml.find_all(xml.by_class(root, 'legend', 'g')[1], 'rect')[1].attrs
    local bx, by = tonumber(box.x), tonumber(box.y)
    local bw, bh = tonumber(box.width), tonumber(box.height)
    for _, c in ipairs(xml.by_class(root, 'marker', 'circle')) do
      local cx, cy = tonumber(c.attrs.cx), tonumber(c.attrs.cy)
      assert.is_false(cx >= bx and cx <= bx + bw and cy >= by and cy <= by + bh)
    end
    -- a bell curve leaves the upper corners free; the first tried is upper right
    local f2 = plot.figure()
    local gx, gy = {}, {}
    for i = 1, 101 do gx[i] = -4 + 8 * (i - 1) / 100; gy[i] = math.exp(-gx[i] ^ 2 / 2) end
    f2[1]:line(gx, gy, { label = 'bell' })
    check_svg(f2)
    assert.are.equal('upper right', f2[1]._legend_loc)
    f2[1]:legend { loc = 'lower left' }
    check_svg(f2)
    assert.are.equal('lower left', f2[1]._legend_loc)
    f2[1]:legend(false)
    assert.are.equal(0, count(parse(f2), 'legend'))
    assert.has_error(function() f2[1]:legend { loc = 'somewhere' } end)
  end)

  it('draws a heatmap with the viridis map and a colour bar', function()
    local z = {}
    for i = 1, 3 do z[i] = {} for j = 1, 4 do z[i][j] = (i - 1) * 4 + j end end
    local fig = plot.figure()
    fig[1]:image(z, { extent = { 0, 1, -3, 3 }, colorbar = 'density' }):xlabel('t'):ylabel('x')
    local root = check_svg(fig)
    local cells = xml.find_all(xml.by_class(root, 'image', 'g')[1], 'rect')
    assert.are.equal(12, #cells)
    local fills = {}
    for _, c in ipairs(cells) do fills[c.attrs.fill] = true end
    assert.is_true(fills['#440154'] and fills['#fde725'])      -- vmin and vmax
    local cb = xml.by_class(root, 'colorbar', 'g')
    assert.are.equal(1, #cb)
    local stops = xml.find_all(cb[1], 'stop')
    assert.are.equal('#440154', stops[1].attrs['stop-color'])
    assert.are.equal('#fde725', stops[#stops].attrs['stop-color'])
    local grad = xml.find_all(cb[1], 'linearGradient')[1]
    local rect = xml.find_all(cb[1], 'rect')[1]
    assert.are.equal('url(#' .. grad.attrs.id .. ')', rect.attrs.fill)
    assert.are.same({ 'density' }, texts(root, 'colorbar-label'))
    assert.is_true(#texts(root, 'cbtick') >= 2)
    -- origin 'lower': row 1 (smallest values) at the bottom
    local first, last = cells[1].attrs, cells[#cells].attrs
    assert.is_true(tonumber(first.y) > tonumber(last.y))
  end)

  it('embeds large heatmaps as a PNG, from a tensor', function()
    assert.are.equal(0xCBF43926, plot._crc32('123456789'))
    assert.are.equal('TWFu', plot._base64('Man'))
    assert.are.equal('TWE=', plot._base64('Ma'))
    assert.are.equal('TQ==', plot._base64('M'))
    local z = diffuse.tensor.rand(80, 90)
    local fig = plot.figure()
    fig[1]:image(z, { colorbar = true })
    local root, s = check_svg(fig)
    local img = xml.find_all(root, 'image')
    assert.are.equal(1, #img)
    local href = img[1].attrs['xlink:href']
    assert.is_truthy(href:find('^data:image/png;base64,iVBORw0KGgo'))
    assert.is_true(#s < 200000)
    assert.has_error(function() fig[1]:image(diffuse.tensor.rand(5)) end)
    assert.has_error(function() fig[1]:image({ { 1, 2 }, { 3 } }) end)
  end)

  it('escapes text', function()
    local t = 'a < b & "c" \'d\' > e'
    local fig = plot.figure { title = t }
    fig[1]:title(t):xlabel(t):text(0.5, 0.5, t, { coords = 'axes' })
    fig[1]:line({ 0, 1 }, { 0, 1 }, { label = t })
    local root = check_svg(fig)
    assert.are.same({ t }, texts(root, 'figure-title'))
    assert.are.same({ t }, texts(root, 'panel-title'))
    assert.are.same({ t }, texts(root, 'legend-entry'))
    assert.are.same({ t }, texts(root, 'text'))
    check_svg(plot.figure { title = 'bad \1 bytes \255' })
  end)

  it('draws scatter, reference lines and text', function()
    local fig = plot.figure()
    fig[1]:scatter({ 1, 2, 3 }, { 3, 1, 2 }, { label = 'pts', color = 'C3' })
    fig[1]:hline(2, { dash = '2,2' }):vline(2.5, { color = '#123456' })
    fig[1]:text(1, 3, 'here')
    local root = check_svg(fig)
    local m = xml.by_class(root, 'marker', 'circle')
    assert.are.equal(3, #m)
    assert.are.equal('#d62728', xml.by_class(root, 'scatter', 'g')[1].attrs.fill)
    assert.are.equal(1, count(root, 'hline', 'line'))
    assert.are.equal('2,2', xml.by_class(root, 'hline', 'line')[1].attrs['stroke-dasharray'])
    assert.are.equal('#123456', xml.by_class(root, 'vline', 'line')[1].attrs.stroke)
    assert.are.same({ 'here' }, texts(root, 'text'))
  end)

  it('checks its arguments, naming the function', function()
    local p = plot.figure()[1]
    assert.has_error(function() p:hist('abc') end,
      'diffuse.plot.hist: x must be a tensor or an array of numbers (got string)')
    assert.has_error(function() p:hist({ 1, 'a' }) end)
    assert.has_error(function() p:hist({ 1 }, { bins = 0 }) end)
    assert.has_error(function() p:hist({ 1 }, { binz = 3 }) end)
    assert.has_error(function() p:line({ 1, 2 }, { 1 }) end)
    assert.has_error(function() p:line({ 1 }, { 1 }, { dash = 'long' }) end)
    assert.has_error(function() p:scatter({ 1 }, { 1 }, { alpha = 2 }) end)
    assert.has_error(function() p:text(0 / 0, 1, 'x') end)
    assert.has_error(function() plot.viridis('x') end, 'diffuse.plot.viridis: t must be a number (got string)')
    assert.has_error(function() plot.colormap('gray')({}) end, 'diffuse.plot.colormap: t must be a number (got table)')
    assert.has_error(function() plot.format_number('x') end,
      'diffuse.plot.format_number: v must be a number (got string)')
    assert.are.equal('2e-5', plot.format_number(2e-5))
  end)

  it('saves the SVG and returns the path', function()
    local fig = plot.figure()
    fig[1]:line({ 1, 2, 3 }, { 1, 4, 9 })
    local path = os.tmpname()
    assert.are.equal(path, fig:save(path))
    local f = assert(io.open(path, 'rb'))
    local s = f:read('a')
    f:close()
    os.remove(path)
    assert.are.equal(fig:svg(), s)
    assert.has_error(function() fig:save('/nonexistent-dir/x.svg') end)
  end)
end)

describe('diffuse.plot.terminal', function()
  local function lines_of(s)
    local t = {}
    for l in s:gmatch('([^\n]*)\n') do t[#t + 1] = l end
    return t
  end

  it('draws a histogram of the given size, with the curve', function()
    diffuse.seed(1234)
    local x = diffuse.tensor.randn(4096, 1)
    local phi = function(v) return math.exp(-v * v / 2) / math.sqrt(2 * math.pi) end
    local s = plot.terminal(x, { print = false, width = 50, height = 10, curve = phi })
    local L = lines_of(s)
    assert.are.equal(10 + 3, #L)
    local w = utf8.len(L[#L - 1])                          -- the axis line spans the full width
    for _, l in ipairs(L) do assert.is_true(utf8.len(l) <= w, l) end
    assert.is_true(utf8.len(L[2]) == w)
    assert.is_truthy(s:find('•', 1, true))
    assert.is_truthy(s:find('█', 1, true))
    assert.is_truthy(L[1]:find('density', 1, true))
    assert.is_truthy(L[1]:find('n=4096', 1, true))
    local plain = plot.terminal(x:totable(), { print = false, width = 50, height = 10 })
    assert.is_nil(plain:find('•', 1, true))
    assert.is_truthy(lines_of(plain)[1]:find('count', 1, true))
  end)

  it('handles empty, constant and non-finite data', function()
    local s = plot.terminal({}, { print = false })
    assert.are.equal(1, #lines_of(s))
    s = plot.terminal({ 0 / 0, math.huge }, { print = false })
    assert.are.equal(1, #lines_of(s))
    s = plot.terminal({ 2, 2, 2 }, { print = false, height = 5, width = 20 })
    assert.are.equal(5 + 3, #lines_of(s))
    assert.is_truthy(s:find('█', 1, true))
    assert.has_error(function() plot.terminal({ 1 }, { curve = 3 }) end)
  end)

  it('prints (returning nothing) unless print = false, which returns the text', function()
    local written = {}
    local real = io.write
    io.write = function(...) for _, v in ipairs({ ... }) do written[#written + 1] = v end end
    local ok, err = pcall(function()
      plot.terminal({ 1, 2, 3 }, { print = false })
      assert.are.equal(0, #written)
      assert.is_nil(plot.terminal({ 1, 2, 3 })) -- (a REPL would echo a returned text again)
      assert.are.equal(plot.terminal({ 1, 2, 3 }, { print = false }), table.concat(written))
    end)
    io.write = real
    assert(ok, err)
  end)
end)
