-- spec/graph_spec.lua: networks users compose (diffuse.nn.net). Every node kind and composed
-- graphs (sharing, broadcasting, several paths from x) against a double-precision interpreter of
-- the graph's own text (forward values, finite-difference gradients of every parameter); the
-- seed's two nets spelled with nn.net against nn.mlp and nn.time_embedded, bitwise; the builder's
-- checks; printing and checkpoints.
local diffuse = require 'diffuse'
local tensor, nn = diffuse.tensor, diffuse.nn

local function f32(x) return (string.unpack('f', string.pack('f', x))) end

local function col(t)
  local v = t:totable()
  if type(v[1]) == 'table' then for i = 1, #v do v[i] = v[i][1] end end
  return v
end

local function rows(t)
  local v = t:totable()
  if type(v[1]) ~= 'table' then for i = 1, #v do v[i] = { v[i] } end end
  return v
end

-- ---- the reference: the graph's text interpreted in double precision ----------------------

local function parse(text)
  local g = { layers = {}, nodes = {} }
  for line in text:gmatch('[^\n]+') do
    local w = {}
    for tok in line:gmatch('%S+') do w[#w + 1] = tok end
    if w[1] == 'dim' then g.dim = tonumber(w[2])
    elseif w[1] == 'layer' then
      g.layers[#g.layers + 1] = { inp = tonumber(w[2]), out = tonumber(w[3]), bias = w[4] == '1' }
    elseif w[1] == 'node' then
      g.nodes[#g.nodes + 1] = { op = w[2], args = { table.unpack(w, 3) } }
    elseif w[1] == 'output' then g.out = tonumber(w[2]) end
  end
  local off = 0
  for _, L in ipairs(g.layers) do
    L.woff = off
    off = off + L.inp * L.out
    if L.bias then L.boff = off; off = off + L.out end
  end
  g.nparams = off
  local foff = 0
  for _, n in ipairs(g.nodes) do
    if n.op == 'fourier' then
      n.foff, n.nf, n.gauss = foff, tonumber(n.args[3]), n.args[2] == 'gauss'
      foff = foff + n.nf
    end
  end
  return g
end

local unary = {
  silu = function(z) return z / (1 + math.exp(-z)) end,
  relu = function(z) return z > 0 and z or 0 end,
  tanh = function(z) local e = math.exp(2 * z); return (e - 1) / (e + 1) end,
  gelu = function(z)
    local u = math.sqrt(2 / math.pi) * (z + 0.044715 * z ^ 3)
    local e = math.exp(2 * u)
    return 0.5 * z * (1 + (e - 1) / (e + 1))
  end,
  sigmoid = function(z) return 1 / (1 + math.exp(-z)) end,
  sin = math.sin, cos = math.cos, exp = math.exp, square = function(z) return z * z end,
}

local function eval(g, p, fixed, x, t)
  local v = {}
  for i, n in ipairs(g.nodes) do
    local a, op, r = n.args, n.op, {}
    if op == 'x' then for c = 1, #x do r[c] = x[c] end
    elseif op == 't' then r[1] = t
    elseif op == 'linear' then
      local A, L = v[tonumber(a[1])], g.layers[tonumber(a[2])]
      for o = 1, L.out do
        local s = L.bias and p[L.boff + o] or 0
        for k = 1, L.inp do s = s + p[L.woff + (o - 1) * L.inp + k] * A[k] end
        r[o] = s
      end
    elseif op == 'cat' then
      for k = 2, tonumber(a[1]) + 1 do
        for _, val in ipairs(v[tonumber(a[k])]) do r[#r + 1] = val end
      end
    elseif op == 'add' or op == 'sub' or op == 'mul' then
      local A, B = v[tonumber(a[1])], v[tonumber(a[2])]
      for c = 1, math.max(#A, #B) do
        local y, z = A[#A == 1 and 1 or c], B[#B == 1 and 1 or c]
        r[c] = op == 'add' and y + z or op == 'sub' and y - z or y * z
      end
    elseif op == 'addc' or op == 'mulc' or op == 'rsubc' or op == 'divc' then
      local A, c0 = v[tonumber(a[1])], f32(tonumber(a[2]))
      for c = 1, #A do
        r[c] = op == 'addc' and A[c] + c0 or op == 'mulc' and A[c] * c0
          or op == 'rsubc' and c0 - A[c] or A[c] / c0
      end
    elseif op == 'mean' then
      local A, m = v[tonumber(a[1])], 0
      for c = 1, #A do m = m + A[c] end
      r[1] = m / #A
    elseif op == 'col' then r[1] = v[tonumber(a[1])][tonumber(a[2])]
    elseif op == 'fourier' then
      local u = v[tonumber(a[1])][1]
      for j = 1, n.nf do
        local w = fixed[n.foff + j]
        local arg = n.gauss and 2 * math.pi * u * w or u * w
        r[j], r[n.nf + j] = math.sin(arg), math.cos(arg)
      end
    else
      local A, f = v[tonumber(a[1])], unary[op]
      for c = 1, #A do r[c] = f(A[c]) end
    end
    v[i] = r
  end
  return v[g.out]
end

local function objective(g, p, fixed, xs, ts, ds)
  local s = 0
  for r = 1, #xs do
    local y = eval(g, p, fixed, xs[r], ts[r])
    for c = 1, #y do s = s + ds[r][c] * y[c] end
  end
  return s
end

-- forward against the reference, and every parameter's gradient against central differences
local function grad_check(net, B, seed, ftol)
  local g = parse(net.graph)
  local d = net.dim
  diffuse.seed(seed)
  local x, t, dout = tensor.randn(B, d), tensor.rand(B), tensor.randn(B, d)
  local xs, ts, ds = rows(x), col(t), rows(dout)
  local p = col(net:parameters())
  local has_fixed, fr = pcall(net.frequencies, net)
  local fixed = has_fixed and col(fr) or {}
  assert.equal(g.nparams, #p)
  local out = rows(net:forward(x, t))
  for r = 1, B do
    local y = eval(g, p, fixed, xs[r], ts[r])
    for c = 1, d do
      assert.near(y[c], out[r][c], (ftol or 5e-5) * (1 + math.abs(y[c])), ('forward row %d'):format(r))
    end
  end
  net:zero_grad()
  net:backward(dout)
  local gr = col(net:gradients())
  for i = 1, #p do
    local h = 1e-5 * math.max(1, math.abs(p[i]))
    local keep = p[i]
    p[i] = keep + h
    local fp = objective(g, p, fixed, xs, ts, ds)
    p[i] = keep - h
    local fm = objective(g, p, fixed, xs, ts, ds)
    p[i] = keep
    local fd = (fp - fm) / (2 * h)
    -- the analytic gradient is float32, summed over B rows: a few ulp of the terms' sum
    assert.near(fd, gr[i], 2e-4 * (1 + math.abs(fd)), ('parameter %d of %d'):format(i, #p))
  end
end

describe('composed networks (nn.net)', function()
  it('every elementwise node kind: forward and every parameter gradient against the double reference', function()
    diffuse.seed(11)
    local net = nn.net{ dim = 2, forward = function(x, t)
      local h = nn.linear(3)(nn.cat{ x, t }) * 0.7
      local parts = { h:silu(), h:relu(), h:tanh(), h:gelu(), h:sigmoid(), h:sin(), h:cos(),
                      (h * 0.5):exp(), h:square(), h ^ 2, -h, h + 1.5, h - 0.25, 2 - h, h / 3,
                      1.5 * h, 0.5 + h }
      return nn.linear(2)(nn.cat(parts))
    end }
    assert.equal('net', net.kind)
    grad_check(net, 70, 12)
  end)

  it('row means and columns: an equivariant head with tangent output (x:col(i), x:mean())', function()
    diffuse.seed(12)
    local L1, L2 = nn.linear(5), nn.linear(1)
    local net = nn.net{ dim = 3, forward = function(x, t)
      local inv = nn.cat{ x:sin():mean(), (x * 2):cos():mean(), t }
      local o = {}
      for i = 1, 3 do o[i] = L2(L1(nn.cat{ x:col(i):sin(), x:col(i):cos(), inv }):silu()) end
      local out = nn.cat(o)
      return out - out:mean() + nn.linear(3)(x):mean() * 0.5
    end }
    grad_check(net, 60, 13)
    -- equivariant: permuting x's columns permutes the output's (up to the last term, the same in
    -- every column)
    local x, t = tensor.randn(40, 3), tensor.rand(40)
    local perm = { 3, 1, 2 }
    local X = rows(x)
    local xp = {}
    for r = 1, 40 do xp[r] = { X[r][perm[1]], X[r][perm[2]], X[r][perm[3]] } end
    local a, b = rows(net:forward(x, t)), rows(net:forward(tensor.new(xp), t))
    for r = 1, 40 do
      for c = 2, 3 do assert.near(a[r][perm[c]] - a[r][perm[1]], b[r][c] - b[r][1], 2e-6) end
    end
    local function err(f, msg)
      local ok, e = pcall(nn.net, { dim = 2, forward = f })
      assert.is_false(ok)
      assert.matches(msg, e)
    end
    err(function(x) return nn.cat{ x:col(3), x:col(1) } end, 'col: column 3 of a %[B, 2%] node')
    err(function(x) return nn.cat{ x:col(1.5), x:col(1) } end, 'col: the column must be a whole number')
    err(function(x) return x:mean() end, 'the forward returned a node of %[B, 1%]')
  end)

  it('+ - * of two nodes, with a [B, 1] node broadcasting either side', function()
    diffuse.seed(13)
    local net = nn.net{ dim = 3, forward = function(x, t)
      local a = nn.linear(4)(x):tanh()
      local s = nn.linear(1)(nn.cat{ x, t })          -- [B, 1]
      local b = nn.linear(4)(nn.cat{ x, t }):sin()
      local h = a * b + s * a - a * s + (b - s) + (s - b) + (a + s) + (s + b) + a - b
      return nn.linear(3)(h) + s * 0.5 - s
    end }
    grad_check(net, 67, 14)
  end)

  it('a layer applied twice shares its weights; several paths from x; a layer without bias', function()
    diffuse.seed(15)
    local shared = nn.linear(3)
    local net
    net = nn.net{ dim = 3, forward = function(x, t)
      local h1 = shared(x):silu()
      local h2 = shared(h1 * nn.linear(1, { bias = false })(nn.cat{ t, x })):silu() -- reused
      local skip = x + nn.linear(3)(h1 + h2)
      return skip * 0.5 + shared(skip):gelu() - x:cos()
    end }
    -- 3x3 + 3 (shared, once) + 4 (no bias) + 3x3 + 3
    assert.equal(12 + 4 + 12, net:num_parameters())
    grad_check(net, 70, 16)
  end)

  it('Fourier features of t (Gaussian and given frequencies) and of a node that depends on parameters', function()
    diffuse.seed(17)
    local w = { 0.5, 1, 2.5, 7 }
    local net = nn.net{ dim = 1, forward = function(x, t)
      local ft = nn.fourier(t, { embed = 6, scale = 1.5 })
      local fw = nn.fourier(t, { frequencies = w })
      local u = nn.linear(1)(nn.cat{ x, t })          -- the features of a learned [B, 1] node
      local fu = nn.fourier(u, { frequencies = { 1, 3 } })
      return nn.linear(1)(nn.cat{ x, ft, fw, fu, nn.fourier(u:tanh(), { embed = 4, scale = 0.5 }) })
    end }
    local f = col(net:frequencies())
    assert.equal(3 + 4 + 2 + 2, #f)
    for i, wi in ipairs(w) do assert.equal(f32(wi), f[3 + i]) end
    grad_check(net, 70, 18, 2e-4)
  end)

  it('the seed MLP spelled with nn.net is nn.mlp: the same parameters, bitwise losses (1000 steps) and samples', function()
    local ve = diffuse.ve(1.1)
    local function graph_mlp()
      return nn.net{ dim = 1, forward = function(x, t)
        local h = nn.linear(8)(nn.cat{ x, t }):silu()
        h = nn.linear(8)(h):silu()
        h = nn.linear(8)(h):silu()
        return nn.linear(1)(h)
      end }
    end
    local function graph_temb()
      return nn.net{ dim = 1, forward = function(x, t)
        local e = nn.linear(8)(nn.fourier(t, { embed = 256, scale = 30 })):silu()
        return nn.linear(1)((nn.linear(8)(x) + e):silu())
      end }
    end
    for _, case in ipairs{ { function() return nn.mlp{ dim = 1 } end, graph_mlp },
                           { function() return nn.time_embedded{ dim = 1 } end, graph_temb } } do
      local nets, losses = {}, {}
      for i = 1, 2 do
        diffuse.seed(0)
        nets[i] = case[i]()
        losses[i] = diffuse.train{ net = nets[i], diffuser = ve, data = tensor.zeros(1024, 1), steps = 1000 }
      end
      assert.equal(nets[1]:num_parameters(), nets[2]:num_parameters())
      assert.equal(0, (losses[1] - losses[2]):abs():max())
      assert.equal(0, (nets[1]:parameters() - nets[2]:parameters()):abs():max())
      for _, method in ipairs{ 'euler', 'heun', 'euler_maruyama' } do
        local s = diffuse.sampler{ diffuser = ve, steps = 50, method = method }
        diffuse.seed(5)
        local x1 = ve:prior(600)
        diffuse.seed(9)
        local a = s:run(x1, diffuse.score.net(nets[1], ve))
        diffuse.seed(9)
        local b = s:run(x1, diffuse.score.net(nets[2], ve))
        assert.equal(0, (a - b):abs():max(), method)
      end
      -- and a kept forward with one time per row
      local x, t = tensor.randn(300, 1), tensor.rand(300)
      assert.equal(0, (nets[1]:forward(x, t) - nets[2]:forward(x, t)):abs():max())
    end
  end)

  it("the peer's FeatureScoreNet composed with nn.net trains to the reference's loss and samples to its std #nosan", function()
    -- the reference (../shared/peer/README.md, seed 0): last-100 loss 0.0036, x0 std 0.067
    -- after 100 Euler steps; over seeds 0..4 here: 0.0045 +- 0.0008 and 0.067 +- 0.004
    local ve = diffuse.ve(1.1)
    local w = {}
    for k = 1, 25 do w[k] = math.exp(-10 * (k / 25 - 0.5)) end
    diffuse.seed(0)
    local net = nn.net{ dim = 1, forward = function(x, t)
      local h = nn.cat{ x, nn.fourier(t, { frequencies = w }) }
      for _ = 1, 3 do h = nn.linear(64)(h):silu() end
      return nn.linear(1)(h)
    end }
    assert.equal(11713, net:num_parameters())
    local losses = diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(1024, 1), steps = 1000 }
    local l, m = losses:totable(), 0
    for i = 901, 1000 do m = m + l[i] / 100 end
    assert.is_true(m > 0.002 and m < 0.008, 'last-100 loss ' .. m)
    local s = diffuse.sampler{ diffuser = ve, steps = 100, method = 'euler' }
    local x0 = s:run(ve:prior(4096), diffuse.score.net(net, ve))
    -- the exact score leaves 0.056 with these steps; the seed MLP 0.15 to 0.21
    assert.is_true(x0:std() > 0.056 and x0:std() < 0.085, 'std at t = 0: ' .. x0:std())
  end)

  it('a forward with one number t (the table of what depends on t alone) is bitwise a constant tensor t', function()
    diffuse.seed(19)
    local net = nn.net{ dim = 2, forward = function(x, t)
      local e = nn.linear(5)(nn.fourier(t * 3 + 1, { embed = 8, scale = 2 })):silu()
      local h = nn.linear(5)(nn.cat{ x, t, e:sin() }):gelu()
      return nn.linear(2)(h * e) + x * t:exp()
    end }
    local x = tensor.randn(600, 2)
    local a = net:forward(x, 0.37)
    local b = net:forward(x, tensor.full({ 600 }, 0.37))
    assert.equal(0, (a - b):abs():max())
    -- a native sampler run is bitwise the step-by-step run of the same score (a Lua function)
    local ve = diffuse.ve(1.1)
    local score = diffuse.score.net(net, ve)
    for _, method in ipairs{ 'euler', 'heun', 'euler_maruyama' } do
      local s = diffuse.sampler{ diffuser = ve, steps = 20, method = method }
      local x1 = ve:prior(300, 2)
      diffuse.seed(3)
      local fused = s:run(x1, score)
      diffuse.seed(3)
      local stepped = s:run(x1, function(y, tt) return score(y, tt) end)
      assert.equal(0, (fused - stepped):abs():max(), method)
    end
  end)

  it('prints node by node with shapes and parameter counts, and exposes its graph', function()
    diffuse.seed(21)
    local L = nn.linear(4)
    local net = nn.net{ dim = 1, output = 'noise', forward = function(x, t)
      local h = L(nn.cat{ x, t }):silu()
      h = L(nn.cat{ nn.linear(1, { bias = false })(h), t }):silu() -- shared
      return nn.linear(1)(h) / 2
    end }
    local s = tostring(net)
    assert.matches("^diffuse%.nn%.net{dim = 1, output = 'noise'}", s)
    assert.matches('%(3%) cat%(1, 2%) +%[B, 2%]', s)
    assert.matches('%(4%) linear 1 %(3%): 2 %-> 4 +%[B, 4%] +12 parameters', s)
    assert.matches('linear 2 %(5%): 4 %-> 1, no bias +%[B, 1%] +4 parameters', s)
    assert.matches('linear 1 %(7%): 2 %-> 4, shared +%[B, 4%]\n', s)
    assert.matches('%(11%) %(10%) / 2 +%[B, 1%] +output', s)
    assert.matches('21 trainable parameters$', s)
    assert.equal('noise', net.output)
    assert.matches('^diffuse%.net 1\ndim 1\nlayer 2 4 1\n', net.graph)
  end)

  it('checkpoints store the graph as text; a damaged graph is a clear error', function()
    diffuse.seed(23)
    local net = nn.net{ dim = 2, output = 'denoiser', forward = function(x, t)
      return x + nn.linear(2)(nn.cat{ x, nn.fourier(t, { embed = 4 }) }):tanh()
    end }
    local path = os.tmpname()
    net:save(path)
    local back = nn.load(path)
    assert.equal(net.graph, back.graph)
    assert.equal('denoiser', back.output)
    assert.equal(0, (net:parameters() - back:parameters()):abs():max())
    assert.equal(0, (net:frequencies() - back:frequencies()):abs():max())
    local x = tensor.randn(5, 2)
    assert.equal(0, (net:forward(x, 0.3) - back:forward(x, 0.3)):abs():max())
    -- damage the graph's text inside the file (and mend the checksum, so the graph is what fails)
    local f = io.open(path, 'rb')
    local data = f:read('a')
    f:close()
    local function crc32(s)
      local c = 0xffffffff
      for i = 1, #s do
        c = c ~ s:byte(i)
        for _ = 1, 8 do c = (c & 1) == 1 and (0xEDB88320 ~ (c >> 1)) or (c >> 1) end
      end
      return (~c) & 0xffffffff
    end
    local function rewrite(body)
      local w = io.open(path, 'wb')
      w:write(body, string.pack('<I4', crc32(body)))
      w:close()
    end
    local body = data:sub(1, -5)
    rewrite((body:gsub('node tanh 5', 'node tanh 9')))
    assert.error_matches(function() nn.load(path) end, "the network's graph is damaged: bad graph, line %d+: node %d+ refers to node 9, which comes later")
    rewrite((body:gsub('node tanh 5', 'node tahn 5')))
    assert.error_matches(function() nn.load(path) end, "unknown node kind 'tahn'")
    rewrite((body:gsub('kind=net', 'kind=nut')))
    assert.error_matches(function() nn.load(path) end, 'unknown network kind')
    os.remove(path)
  end)

  it('the builder checks shapes and operands as it goes, naming the node and the shapes', function()
    local function err(forward, pattern, dim)
      assert.error_matches(function() nn.net{ dim = dim or 1, forward = forward } end, pattern)
    end
    -- (the message carries the forward's line; luassert's matchers strip positions)
    local ok, msg = pcall(nn.net, { dim = 1, forward = function(x, t)
      local L = nn.linear(8)
      local h = L(nn.cat{ x, t }):silu()
      return nn.linear(1)(L(nn.cat{ h, t })) -- line +3
    end })
    assert.is_false(ok)
    local line = debug.getinfo(1, 'l').currentline - 3
    assert.equal('spec/graph_spec.lua:' .. line .. ': diffuse.nn.net: linear 1 expects 2 inputs, got 9', msg)
    -- a tail call leaves the builder no line of the forward's: it names the forward instead
    ok, msg = pcall(nn.net, { dim = 1, forward = function(x, t) return nn.cat{ x, t, 3 } end })
    assert.matches('^diffuse%.nn%.net: nn%.cat item 3 must be a node %(got a number%) %(in the forward defined at spec/graph_spec%.lua:%d+%)$', msg)
    err(function(x, t)
      local h = nn.linear(3)(x)
      local y = h + nn.linear(2)(x) -- [B, 3] + [B, 2]
      return y
    end, 'diffuse%.nn%.net: %+: shapes %[B, 3%] and %[B, 2%] do not broadcast')
    err(function(x, t) local y = nn.cat{ x, 1 }; return y end, 'nn%.cat item 2 must be a node %(got a number%)')
    err(function(x, t) local y = x * 'a'; return y end, 'expected a node or a number %(got a string%)')
    err(function(x, t) local y = x / x; return y end, 'a node divides only by a number')
    err(function(x, t) local y = x / 0; return y end, 'the divisor must be a non%-zero finite number')
    err(function(x, t) local y = x ^ 3; return y end, 'only node %^ 2')
    err(function(x, t) local y = x:softplus(); return y end, "a node has no field 'softplus'")
    err(function(x, t) local y = nn.fourier(nn.cat{ x, t }); return y end, 'nn%.fourier expects a %[B, 1%] node, got %[B, 2%]')
    err(function(x, t) local y = nn.fourier(t, { embed = 7 }); return y end, 'embed must be even')
    err(function(x, t) local y = nn.fourier(t, { frequencies = { 1, 0 / 0 } }); return y end, 'frequency 2 must be a number')
    err(function(x, t) local y = nn.linear(1e9)(x); return y end, 'diffuse%.nn%.linear: out must be a whole number from 1 to 4096')
    err(function(x, t) local y = nn.linear(4096)(nn.linear(4096)(nn.linear(4096)(x))); return y end,
      'diffuse%.nn%.net: the forward returned a node of %[B, 4096%]')
    err(function(x, t) local y = nn.cat{ nn.linear(4096)(x), nn.linear(4096)(x), nn.linear(4096)(x),
                                         nn.linear(4096)(x), nn.linear(4096)(x) }; return y end,
      'nn%.cat makes 20480 columns, at most 16384')
    err(function(x, t) end, 'the forward returned nothing')
    err(function(x, t) return x, t end, 'the forward returned 2 values')
    err(function(x, t) return 1 end, 'the forward must return a node %(got a number%)')
    err(function(x, t) return nn.linear(2)(x) end, 'the forward returned a node of %[B, 2%]; the network\'s output is %[B, 1%]')
    err(function(x, t) return nn.linear(1)(t) end, 'the output does not depend on x')
    err(function(x, t) return x * 2 end, 'the output does not depend on any nn%.linear layer')
    err(function(x, t) error('my bug') end, 'diffuse%.nn%.net: the forward failed: .*my bug')
    err(function(x, t) error({}) end, 'diffuse%.nn%.net: the forward failed')
    -- nodes and layers of another net
    local saved, layer
    nn.net{ dim = 1, forward = function(x, t) saved = x; layer = nn.linear(1); return layer(x) end }
    err(function(x, t) return nn.linear(1)(saved) end, "the layer's input is a node of another network")
    err(function(x, t) return layer(x) end, 'this layer belongs to another network')
    err(function(x, t) local y = x + saved; return nn.linear(1)(y) end, 'a node of another network')
    assert.error_matches(function() return saved + 1 end, 'a node of another network')
    assert.error_matches(function() nn.cat{ saved } end, 'diffuse%.nn%.cat: nodes exist only inside the forward')
    assert.error_matches(function() layer(saved) end, 'diffuse%.nn%.linear: a layer is applied inside the forward')
    -- a forward that builds itself again, forever
    local function recur(x, t) nn.net{ dim = 1, forward = recur }; return x end
    err(recur, 'nets nested more than 8 deep')
    -- the options
    assert.error_matches(function() nn.net{ dim = 1 } end, 'forward must be a function')
    assert.error_matches(function() nn.net{ dim = 0, forward = function(x) return x end } end, 'dim must be a whole number from 1 to 64')
    assert.error_matches(function() nn.net{ dim = 1, forward = function(x) return x end, outptu = 'x' } end, "unknown option 'outptu'")
    assert.error_matches(function()
      nn.net{ dim = 1, output = 'eps', forward = function(x) return nn.linear(1)(x) end }
    end, "output must be 'scaled', 'score', 'noise' or 'denoiser'")
    assert.error_matches(function() nn.net(5) end, 'diffuse%.nn%.net: expected')
  end)

  it('nn.from_graph rebuilds a net from its text; a damaged text never reaches the executor', function()
    local function bad(text, pattern)
      assert.error_matches(function() nn.from_graph(text) end, 'diffuse%.nn%.from_graph: bad graph.*' .. pattern)
    end
    local ok_text = 'diffuse.net 1\ndim 1\nlayer 2 3 1\nlayer 3 1 1\nnode x\nnode t\nnode cat 2 1 2\n'
      .. 'node linear 3 1\nnode silu 4\nnode linear 5 2\noutput 6\n'
    assert.equal(3 * 3 + 3 + 1, nn.from_graph(ok_text):num_parameters())
    bad(ok_text:gsub('diffuse.net 1', 'diffuse.net 2'), 'the version must be from 1 to 1')
    bad(ok_text:gsub('dim 1\n', ''), 'dim must come before the nodes')
    bad(ok_text:gsub('layer 2 3 1', 'layer 2 3 7'), "bias flag must be from 0 to 1")
    bad(ok_text:gsub('layer 2 3 1', 'layer 2 9999 1'), "outputs must be from 1 to 4096")
    bad(ok_text:gsub('node cat 2 1 2', 'node cat 2 1 7'), 'refers to node 7, which comes later')
    bad(ok_text:gsub('node linear 3 1', 'node linear 3 2'), 'layer 2 is applied before layer 1')
    bad(ok_text:gsub('node linear 5 2', 'node linear 3 2'), 'linear 2 expects 3 inputs, got 2')
    bad(ok_text:gsub('output 6', 'output 2'), 'the output does not depend on x')
    bad(ok_text:gsub('output 6\n', ''), 'the output line is missing')
    bad(ok_text:gsub('node silu 4', 'node silu 4 5'), "unexpected '5' at the end of the line")
    bad(ok_text:gsub('node x\n', ''), 'x must be node 1 and t node 2')
    bad(ok_text .. 'node x\n', "'node' after the output line")
    bad(ok_text:gsub('node silu 4', 'node divc 4 0'), 'division by zero')
    bad(ok_text:gsub('node silu 4', 'node mulc 4 1e39'), 'beyond float32')
    bad(ok_text:gsub('node silu 4', 'node fourier 4 gauss 2 1'), 'fourier expects a %[B, 1%] node')
  end)
end)
