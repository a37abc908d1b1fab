-- spec/nn_spec.lua: score networks against a double-precision Lua reference of the same
-- architectures (forward values, finite-difference gradients of every parameter, for every
-- activation and both networks), the DSM loss against its definition with the same random
-- draws, Adam against torch's update rule, training, the network score, and bad input.
local diffuse = require 'diffuse'
local tensor = diffuse.tensor
local H = require 'support.helpers'

-- ---- the reference: the same networks in double precision, from the flat parameters -------

local acts = {
  silu = function(z) return z / (1 + math.exp(-z)) end,
  relu = function(z) return z > 0 and z or 0 end,
  tanh = function(z) return math.tanh and math.tanh(z) or (math.exp(2 * z) - 1) / (math.exp(2 * z) + 1) end,
  gelu = function(z)
    local u = math.sqrt(2 / math.pi) * (z + 0.044715 * z ^ 3)
    local th = (math.exp(2 * u) - 1) / (math.exp(2 * u) + 1)
    return 0.5 * z * (1 + th)
  end,
}
acts.tanh = function(z) local e = math.exp(2 * z); return (e - 1) / (e + 1) end

local function f32(x) return (string.unpack('f', string.pack('f', x))) end

-- y = W x + b with W [out, in] at params[off + 1 ..], b right after it
local function linear(p, off, x, nin, nout)
  local y = {}
  for o = 1, nout do
    local s = p[off + nin * nout + o]
    for i = 1, nin do s = s + p[off + (o - 1) * nin + i] * x[i] end
    y[o] = s
  end
  return y, off + nin * nout + nout
end

local function mlp_ref(p, spec, x, t)
  local act = acts[spec.activation or 'silu']
  local h = { table.unpack(x) }
  h[#h + 1] = t
  local widths = { #h }
  for _, w in ipairs(spec.hidden) do widths[#widths + 1] = w end
  widths[#widths + 1] = #x
  local off = 0
  for l = 1, #widths - 1 do
    local z
    z, off = linear(p, off, h, widths[l], widths[l + 1])
    if l < #widths - 1 then for i = 1, #z do z[i] = act(z[i]) end end
    h = z
  end
  return h
end

local function temb_ref(p, W, spec, x, t)
  local act = acts[spec.activation or 'silu']
  local f = {}
  for j, w in ipairs(W) do
    -- the argument rounded as float32 computes it (and torch): (t w) * 2 pi, each product rounded
    local a = f32(f32(t * w) * f32(2 * math.pi))
    f[j], f[#W + j] = math.sin(a), math.cos(a)
  end
  local e, off = linear(p, 0, f, 2 * #W, spec.hidden)
  for i = 1, #e do e[i] = act(e[i]) end
  local u
  u, off = linear(p, off, x, #x, spec.hidden)
  local h = {}
  for i = 1, spec.hidden do h[i] = act(e[i] + u[i]) end
  return (linear(p, off, h, spec.hidden, #x))
end

local function rows(tsr) -- [B, d] tensor -> array of arrays
  local v = tsr:totable()
  if type(v[1]) ~= 'table' then for i = 1, #v do v[i] = { v[i] } end end
  return v
end

local function col(tsr)
  local v = tsr:totable()
  if type(v[1]) == 'table' then for i = 1, #v do v[i] = v[i][1] end end
  return v
end

-- f(p) = sum over rows and outputs of dout * net(x, t), in double
local function objective(ref, p, xs, ts, dout)
  local s = 0
  for r = 1, #xs do
    local y = ref(p, xs[r], ts[r])
    for c = 1, #y do s = s + dout[r][c] * y[c] end
  end
  return s
end

local function grad_check(net, ref, B, seed)
  local d = net.dim
  diffuse.seed(seed)
  local x = tensor.randn(B, d)
  local t = tensor.rand(B)
  local dout = tensor.randn(B, d)
  local xs, ts, ds = rows(x), col(t), rows(dout)
  local p = col(net:parameters())
  -- forward: float32 against the double reference
  local out = rows(net:forward(x, t))
  for r = 1, B do
    local y = ref(p, xs[r], ts[r])
    for c = 1, d do assert.near(y[c], out[r][c], 2e-5 * (1 + math.abs(y[c])), 'forward') end
  end
  net:zero_grad()
  net:backward(dout)
  local g = col(net:gradients())
  local worst = 0
  for i = 1, #p do
    local h = 1e-5 * math.max(1, math.abs(p[i]))
    local keep = p[i]
    p[i] = keep + h
    local fp = objective(ref, p, xs, ts, ds)
    p[i] = keep - h
    local fm = objective(ref, p, xs, ts, ds)
    p[i] = keep
    local fd = (fp - fm) / (2 * h)
    -- the analytic gradient is summed in float32 over B rows: a few ulp of sum |terms|
    local tol = 1e-4 * (1 + math.abs(fd))
    worst = math.max(worst, math.abs(fd - g[i]) / (1 + math.abs(fd)))
    assert.near(fd, g[i], tol, ('parameter %d of %d'):format(i, #p))
  end
  return worst
end

describe('score networks', function()
  for _, act in ipairs{ 'silu', 'relu', 'tanh', 'gelu' } do
    it('mlp with ' .. act .. ': forward and every parameter gradient against the double reference', function()
      diffuse.seed(1)
      local spec = { dim = 2, hidden = { 7, 5 }, activation = act }
      local net = diffuse.nn.mlp(spec)
      assert.equal(3 * 7 + 7 + 7 * 5 + 5 + 5 * 2 + 2, net:num_parameters())
      -- 70 rows: a full tile of 64 plus a partial one
      grad_check(net, function(p, x, t) return mlp_ref(p, spec, x, t) end, 70, 2)
    end)
  end

  for _, act in ipairs{ 'silu', 'tanh' } do
    it('time_embedded with ' .. act .. ': forward and every parameter gradient', function()
      diffuse.seed(3)
      local spec = { dim = 2, hidden = 6, embed = 16, scale = 3, activation = act }
      local net = diffuse.nn.time_embedded(spec)
      assert.equal(16 * 6 + 6 + 2 * 6 + 6 + 6 * 2 + 2, net:num_parameters())
      local W = col(net:frequencies())
      assert.equal(8, #W)
      grad_check(net, function(p, x, t) return temb_ref(p, W, spec, x, t) end, 67, 4)
    end)
  end

  it('time_embedded with large frequencies: Fourier features stay accurate (|2 pi t W| up to ~5000)', function()
    diffuse.seed(14)
    local spec = { dim = 1, hidden = 4, embed = 64, scale = 200 }
    local net = diffuse.nn.time_embedded(spec)
    local W = col(net:frequencies())
    local p = col(net:parameters())
    local t = tensor.linspace(0.5, 1, 40)
    local x = tensor.randn(40, 1)
    local out, xs, ts = rows(net:forward(x, t)), rows(x), col(t)
    for r = 1, 40 do
      local y = temb_ref(p, W, spec, xs[r], ts[r])
      assert.near(y[1], out[r][1], 2e-5 * (1 + math.abs(y[1])))
    end
    -- |2 pi t W| from 6.5e6 on, where the reduction's k stops rounding exactly: NaN
    -- (dmath.h, df_sincosf_short), not a value thousands of ulps off that looks like a feature
    local far = rows(net:forward(tensor.randn(2, 1), 1e8))
    for r = 1, 2 do assert.is_true(H.isnan(far[r][1])) end
    -- and further out, where k = x 2/pi leaves the int range (no C conversion of it: the
    -- sanitizer build checks float-to-int overflow)
    for _, tt in ipairs { 1e10, 3e38 } do
      far = rows(net:forward(tensor.randn(2, 1), tt))
      for r = 1, 2 do assert.is_true(H.isnan(far[r][1])) end
    end
  end)

  it('the seed architectures: sizes, parameter counts, initialisation as nn.Linear', function()
    diffuse.seed(0)
    local mlp = diffuse.nn.mlp{ dim = 1, hidden = { 8, 8, 8 } }
    assert.equal(177, mlp:num_parameters())
    local temb = diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 256, scale = 30 }
    assert.equal(2081, temb:num_parameters())
    -- weights and biases of Linear(in, out) uniform in +-1/sqrt(in): the 256-input layer of temb
    local p = col(temb:parameters())
    local bound, maxabs, sum2 = 1 / 16, 0, 0
    for i = 1, 256 * 8 + 8 do
      maxabs = math.max(maxabs, math.abs(p[i]))
      sum2 = sum2 + p[i] ^ 2
    end
    assert.is_true(maxabs <= bound)
    local n = 256 * 8 + 8
    local var = sum2 / n -- U(-b, b) has variance b^2 / 3; the sample variance within 5 SE
    assert.is_true(math.abs(var - bound ^ 2 / 3) < 5 * bound ^ 2 * math.sqrt(4 / 45 / n))
    -- frequencies ~ N(0, 30^2)
    local W = col(temb:frequencies())
    local s2 = 0
    for _, w in ipairs(W) do s2 = s2 + w * w end
    assert.is_true(math.abs(math.sqrt(s2 / 128) - 30) < 5 * 30 / math.sqrt(2 * 128))
    assert.matches('177 trainable parameters', tostring(mlp), 1, true)
    assert.matches('Linear%(256, 8%)', tostring(temb))
    assert.equal('mlp', mlp.kind)
    assert.equal('time_embedded', temb.kind)
    assert.equal('cpu', mlp.device)
  end)

  it('the same seed makes the same network', function()
    diffuse.seed(5)
    local a = diffuse.nn.mlp{ dim = 1 }
    diffuse.seed(5)
    local b = diffuse.nn.mlp{ dim = 1 }
    assert.equal(0, (a:parameters() - b:parameters()):abs():max())
  end)

  -- With a number t the time-embedded net computes its time branch once, for one row (it is the
  -- same for every row); with a tensor t every row goes through the tile's vector loops. The two
  -- must agree to the bit.
  it('time-embedded: a number t gives bitwise what a constant tensor t gives', function()
    for i, cfg in ipairs { { dim = 1, hidden = 8, embed = 256, scale = 30 },
                           { dim = 2, hidden = 13, embed = 18, scale = 3, activation = 'gelu' } } do
      diffuse.seed(40 + i)
      local net = diffuse.nn.time_embedded(cfg)
      local x = tensor.randn(600, cfg.dim)
      for _, t in ipairs { 1e-5, 0.3, 1.0 } do
        local a = H.flatten(net:forward(x, t):totable())
        local b = H.flatten(net:forward(x, tensor.full({ 600 }, t)):totable())
        for j = 1, #a do
          if H.bits32(a[j]) ~= H.bits32(b[j]) then
            error(('config %d, t = %g: value %d differs: %.9g vs %.9g'):format(i, t, j, a[j], b[j]))
          end
        end
      end
    end
  end)

  -- The CPU layers apply silu to vectors of rows with their own code (cpu_nn.c: a permute reads
  -- the exponential's table), the tensor op runs dmath.h's scalar function. A net whose one
  -- hidden unit is z = x and whose output is that unit's activation shows the layer's silu.
  it("a layer's silu is bitwise the tensor op's (the layers' vector code against dmath.h)", function()
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 1 } }
    net:set_parameters(tensor.new{ 1, 0, 0, 1, 0 }) -- W1 = [1 0], b1 = 0, W2 = [1], b2 = 0
    local xs = {}
    for u = 1, 0x7f800000, 9973 do -- every binade, both signs (not -0: z = 1 * x + 0 is +0)
      xs[#xs + 1] = H.from_bits32(u)
      xs[#xs + 1] = -H.from_bits32(u)
    end
    for k = -4000, 4000 do xs[#xs + 1] = k / 40 end -- [-100, 100]: past the flush at -87
    for k = -200, 200 do xs[#xs + 1] = f32(87 + k * 2 ^ -17) end
    for k = -200, 200 do xs[#xs + 1] = f32(-87 + k * 2 ^ -17) end
    for _, v in ipairs { math.huge, -math.huge, H.FLT_MAX, -H.FLT_MAX } do xs[#xs + 1] = v end
    local x = tensor.new(xs)
    local want = x:silu():totable()
    local got = H.flatten(net:forward(x:reshape(#xs, 1), 0.5):totable())
    for i = 1, #xs do -- (the output layer's + 0 turns a silu of -0 into +0)
      local same = want[i] == 0 and got[i] == 0 or H.bits32(got[i]) == H.bits32(want[i])
      if not same then
        error(('silu(%.9g): layer %.9g, tensor op %.9g'):format(xs[i], got[i], want[i]))
      end
    end
  end)

  -- A forward nothing goes backward from (score.net's, a sampler's) applies silu to the layer's
  -- accumulators in registers (cpu_nn.c, linear_silu_forward); a forward kept for a backward
  -- stores z and runs silu over it. score(x, t) is that forward times a float 1/sigma(t), which
  -- a net whose output is exactly 1 reveals; the values must agree to the bit.
  it("a sampler's forward (silu fused into the layer) is bitwise a kept forward", function()
    local ve = diffuse.ve(1.1)
    local one = diffuse.nn.mlp{ dim = 1, hidden = { 8 } }
    local p1 = {}
    for i = 1, one:num_parameters() do p1[i] = 0 end
    p1[#p1] = 1 -- the output bias
    one:set_parameters(tensor.new(p1))
    for i, hidden in ipairs { { 8, 8, 8 }, { 16, 8 }, { 8, 24, 5 }, { 32 } } do
      diffuse.seed(60 + i)
      local net = diffuse.nn.mlp{ dim = 2, hidden = hidden }
      local x = tensor.randn(600, 2)
      for _, t in ipairs { 0.3, 0.9 } do
        local inv = diffuse.score.net(one, ve)(tensor.zeros(1, 1), t):totable()[1][1]
        local s = H.flatten(diffuse.score.net(net, ve)(x, t):totable())
        local y = H.flatten(net:forward(x, t):totable())
        for j = 1, #y do
          if H.bits32(s[j]) ~= H.bits32(f32(y[j] * inv)) then
            error(('hidden %d, t = %g, value %d: score %.9g, forward * 1/sigma %.9g'):format(
              i, t, j, s[j], f32(y[j] * inv)))
          end
        end
      end
    end
  end)

  it('backward accumulates, zero_grad clears, a number t works like a constant tensor', function()
    diffuse.seed(6)
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 4 } }
    local x, dout = tensor.randn(10, 1), tensor.randn(10, 1)
    local a = net:forward(x, 0.3)
    local b = net:forward(x, tensor.full({ 10 }, 0.3))
    assert.equal(0, (a - b):abs():max())
    net:zero_grad()
    net:backward(dout)
    local g1 = net:gradients()
    net:backward(dout)
    assert.is_true((net:gradients() - 2 * g1):abs():max() < 1e-6)
    net:zero_grad()
    assert.equal(0, net:gradients():abs():max())
    assert.same(net:forward(x, 0.3):totable(), net(x, 0.3):totable()) -- __call
  end)
end)

describe('DSM loss and Adam', function()
  local ve = diffuse.ve(1.1)

  it('loss.dsm is mean((net(x_t, t) + eta)^2) with its own draws, and its gradient', function()
    local B, tol = 100, 1e-5
    diffuse.seed(7)
    local net = diffuse.nn.mlp{ dim = 2, hidden = { 6, 6 } }
    local x0 = tensor.randn(B, 2)
    local seed, stream = diffuse.rng_state()
    net:zero_grad()
    local loss = diffuse.loss.dsm(net, ve, x0, { tol = tol })
    local g = net:gradients()
    -- the same draws by hand: t from the next stream (uniform), eta from the one after it
    diffuse.set_rng_state(seed, stream)
    local t = tol + (1 - tol) * tensor.rand(B)
    local eta = tensor.randn(B, 2)
    local xt = x0 + ve:sigma(t):reshape(B, 1) * eta
    local out = net:forward(xt, t)
    local res = out + eta
    local want = (res * res):mean()
    assert.near(want, loss, 2e-6 * want)
    net:zero_grad()
    net:backward(res * (2 / (B * 2)))
    assert.is_true((net:gradients() - g):abs():max() < 1e-6 * (1 + g:abs():max()))
  end)

  it('Adam follows torch.optim.Adam (bias corrections, L2 weight decay)', function()
    diffuse.seed(8)
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 3 } }
    local opt = diffuse.optim.adam(net, { lr = 0.01, betas = { 0.8, 0.95 }, eps = 1e-6, weight_decay = 0.1 })
    local p = col(net:parameters())
    local m, v = {}, {}
    for i = 1, #p do m[i], v[i] = 0, 0 end
    local x = tensor.randn(16, 1)
    for step = 1, 5 do
      net:zero_grad()
      net:forward(x, 0.5)
      net:backward(tensor.ones(16, 1))
      local g = col(net:gradients())
      opt:step()
      for i = 1, #p do
        local gi = g[i] + 0.1 * p[i]
        m[i] = 0.8 * m[i] + 0.2 * gi
        v[i] = 0.95 * v[i] + 0.05 * gi * gi
        local mhat, denom = m[i] / (1 - 0.8 ^ step), math.sqrt(v[i]) / math.sqrt(1 - 0.95 ^ step) + 1e-6
        p[i] = p[i] - 0.01 * mhat / denom
      end
      local got = col(net:parameters())
      for i = 1, #p do assert.near(p[i], got[i], 1e-5 * (1 + math.abs(p[i])), 'step ' .. step) end
      p = got -- keep the reference on the float32 trajectory
    end
    assert.equal(5, opt.t)
    opt.lr = 0.5
    assert.equal(0.5, opt.lr)
  end)

  it('the manual loop gives bitwise the losses of diffuse.train', function()
    local function manual(seed, steps)
      diffuse.seed(seed)
      local net = diffuse.nn.mlp{ dim = 1 }
      local opt = diffuse.optim.adam(net, { lr = 1e-3 })
      local x0 = tensor.zeros(256, 1)
      local ls = {}
      for k = 1, steps do
        net:zero_grad()
        ls[k] = diffuse.loss.dsm(net, ve, x0)
        opt:step()
      end
      return ls, net
    end
    local ls, a = manual(9, 50)
    diffuse.seed(9)
    local b = diffuse.nn.mlp{ dim = 1 }
    local losses = diffuse.train{ net = b, diffuser = ve, data = tensor.zeros(256, 1), steps = 50, lr = 1e-3 }
    assert.same(ls, col(losses))
    assert.equal(0, (a:parameters() - b:parameters()):abs():max())
  end)

  it('the seed settings: the MLP and time-embedded losses land where the reference does', function()
    -- kappa 1.1, batch 1024 zeros, 1000 steps, Adam 1e-3. The reference's 5 seeds give last-100
    -- means of 0.028-0.056 (MLP) and 0.030-0.049 (time-embedded); the notebook's own run 0.077
    local function last100(net)
      local l = col(diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(1024, 1), steps = 1000 })
      local s = 0
      for i = 901, 1000 do s = s + l[i] end
      return s / 100, l
    end
    diffuse.seed(0)
    local mlp = diffuse.nn.mlp{ dim = 1 }
    local lm, l = last100(mlp)
    assert.is_true(l[1] > 0.5 and lm > 0.015 and lm < 0.07, 'mlp ' .. lm)
    diffuse.seed(0)
    local temb = diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 256, scale = 30 }
    local lt = last100(temb)
    assert.is_true(lt > 0.015 and lt < 0.09, 'temb ' .. lt)
    -- samples with the trained nets (Euler ODE, 100 steps, 4096) sit near the origin, far inside
    -- the prior's width sigma(1) = 1.05, as in the reference (x0 std 0.15-0.21)
    local s = diffuse.sampler{ diffuser = ve, steps = 100 }
    local x1 = ve:prior(4096)
    for _, net in ipairs{ mlp, temb } do
      local x0 = s:run(x1, diffuse.score.net(net, ve))
      assert.is_true(math.abs(x0:mean()) < 0.1 and x0:std() < 0.35, net.kind .. ' std ' .. x0:std())
    end
  end)

  it('a non-finite loss stops training with an error naming the step; NaN data is refused first', function()
    diffuse.seed(10)
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 4 } }
    local data = tensor.zeros(64, 1)
    assert.error_matches(function() diffuse.train{ net = net, diffuser = ve, data = data, steps = 50, lr = 1e30 } end,
      'diffuse.train: training diverged at step %d+: loss = ')
    data[3] = 0 / 0
    assert.error_matches(function() diffuse.train{ net = net, diffuser = ve, data = data, steps = 5 } end,
      'diffuse.train: data holds NaN or infinite values')
  end)

  it('rows are drawn at random when the data is larger than the batch', function()
    diffuse.seed(11)
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 8 } }
    -- data at +-3: a batch of 64 rows out of 4096 keeps both modes and trains
    local data = tensor.cat({ tensor.full({ 2048, 1 }, -3), tensor.full({ 2048, 1 }, 3) })
    local losses = diffuse.train{ net = net, diffuser = ve, data = data, steps = 300, batch = 64, lr = 1e-2 }
    local l = col(losses)
    assert.equal(300, #l)
    assert.is_true(l[300] < l[1])
  end)

  it('a progress function that releases or moves what the loop uses stops it with an error', function()
    for _, what in ipairs { 'net', 'optimizer', 'data' } do
      local net = diffuse.nn.mlp{ dim = 1, hidden = { 16 } }
      local data = tensor.zeros(64, 1)
      local opt = diffuse.optim.adam(net)
      local objs = { net = net, optimizer = opt, data = data }
      assert.error_matches(function()
        diffuse.train{ net = net, diffuser = ve, data = data, steps = 50, optimizer = opt,
                       progress = function() objs[what]:free() end }
      end, 'diffuse.train: the progress function released the ' .. (what == 'net' and 'network' or what))
    end
    -- an error value without text is described, not printed as "(null)"
    for _, v in ipairs { {}, false } do
      assert.error_matches(function()
        diffuse.train{ net = diffuse.nn.mlp{ dim = 1 }, diffuser = ve, data = tensor.zeros(8, 1), steps = 2,
                       progress = function() error(v) end }
      end, 'the progress function failed: %(error object is a ' .. type(v) .. ' value%)')
    end
  end)

  it('progress reports steps, total and loss a few times; progress = true draws a bar', function()
    diffuse.seed(12)
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 4 } }
    local calls = {}
    diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(32, 1), steps = 20,
                   progress = function(step, total, loss) calls[#calls + 1] = { step, total, loss } end }
    assert.is_true(#calls >= 1)
    assert.same({ 20, 20 }, { calls[#calls][1], calls[#calls][2] })
    assert.is_true(calls[#calls][3] > 0)
    assert.error_matches(function()
      diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(32, 1), steps = 3,
                     progress = function() error('stop') end }
    end, 'the progress function failed: .*stop')
  end)
end)

describe('the network score source and bad input', function()
  local ve = diffuse.ve(1.1)

  it('score.net is net(x, t) / sigma(t) and samplers run it', function()
    diffuse.seed(13)
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 5 } }
    local score = diffuse.score.net(net, ve)
    assert.equal('net', score.kind)
    local x = tensor.randn(9, 1)
    local s = score(x, 0.4)
    assert.is_true((s - net:forward(x, 0.4) / ve:sigma(0.4)):abs():max() < 1e-6)
    local sampler = diffuse.sampler{ diffuser = ve, steps = 10, method = 'heun' }
    local x0 = sampler:run(x, score)
    assert.equal(19, sampler.nfe)
    -- the same through a Lua function
    local y0 = sampler:run(x, function(xx, t) return net:forward(xx, t) / ve:sigma(t) end)
    assert.is_true((x0 - y0):abs():max() < 1e-5)
  end)

  -- A run with score.net is one native call on the CPU (net_sample: a tile of rows through all
  -- the steps). It must be bitwise the step-by-step run through the same score evaluated per
  -- step (a Lua function calling the score object), for every method, recording included.
  it('a native network-score run is bitwise the step-by-step run (every method, both nets)', function()
    local nets = {
      { 'mlp', function() return diffuse.nn.mlp{ dim = 2, hidden = { 8, 8 } } end, 1100, 2 },
      { 'mlp (one partial tile)', function() return diffuse.nn.mlp{ dim = 1, hidden = { 6 }, activation = 'tanh' } end, 37, 1 },
      { 'time_embedded', function() return diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 16 } end, 700, 1 },
    }
    local function same_bits(a, b)
      local fa, fb = H.flatten(a:totable()), H.flatten(b:totable())
      if #fa ~= #fb then return false end
      for i = 1, #fa do
        if H.bits32(fa[i]) ~= H.bits32(fb[i]) then return false end
      end
      return true
    end
    for _, nc in ipairs(nets) do
      diffuse.seed(21)
      local net = nc[2]()
      local score = diffuse.score.net(net, ve)
      local x1 = ve:prior(nc[3], nc[4])
      for _, case in ipairs { { method = 'euler' }, { method = 'euler_maruyama' }, { method = 'heun' },
                              { method = 'euler', grid = 'karras' }, { method = 'heun', grid = 'log_sigma' },
                              { method = 'heun', space = 'sigma' },
                              { method = 'euler_maruyama', grid = { 1, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.08, 0.05, 0.02, 0.01, 0.005, 0 } } } do
        local method = case.method .. (case.grid and ' ' .. tostring(type(case.grid) == 'table' and 'list' or case.grid) or '')
          .. (case.space and ' in sigma' or '')
        local sampler = diffuse.sampler{ diffuser = ve, steps = 12, method = case.method, grid = case.grid, space = case.space }
        diffuse.seed(99)
        local a, pa = sampler:run(x1, score, { record = { 0, 5, 12 } })
        local nfe = sampler.nfe
        diffuse.seed(99)
        local b, pb = sampler:run(x1, function(x, t) return score(x, t) end, { record = { 0, 5, 12 } })
        assert.equal(sampler.nfe, nfe)
        local what = nc[1] .. ' ' .. method
        assert.is_true(same_bits(a, b), what .. ': x0 differs')
        for _, k in ipairs { 0, 5, 12 } do
          assert.is_true(same_bits(pa[k], pb[k]), what .. ': path[' .. k .. '] differs')
        end
        assert.is_true(same_bits(pa[12], a), what .. ': path[12] is not x0')
      end
    end
  end)

  it('rejects bad networks, inputs and options', function()
    assert.error_matches(function() diffuse.nn.mlp{ dim = 0 } end, 'diffuse.nn.mlp: dim must be between 1 and 64')
    assert.error_matches(function() diffuse.nn.mlp{ dim = 1, hidden = {} } end, 'hidden must list 1 to 15')
    assert.error_matches(function() diffuse.nn.mlp{ dim = 1, hidden = { 0 } } end, 'hidden width 1 must be between')
    assert.error_matches(function() diffuse.nn.mlp{ dim = 1, activation = 'elu' } end, "unknown activation 'elu'")
    assert.error_matches(function() diffuse.nn.mlp{ dim = 1, hiden = { 4 } } end, "unknown option 'hiden'")
    assert.error_matches(function() diffuse.nn.time_embedded{ dim = 1, embed = 255 } end, 'embed must be even')
    assert.error_matches(function() diffuse.nn.time_embedded{ dim = 1, scale = -1 } end, 'scale must be positive')
    local net = diffuse.nn.mlp{ dim = 2, hidden = { 3 } }
    assert.error_matches(function() net:forward(tensor.zeros(4, 3), 0.5) end, 'diffuse.net.forward: x must be %[B, 2%], got 4x3')
    assert.error_matches(function() net:forward(tensor.zeros(4, 2), tensor.zeros(3)) end, 'one time per row %(4%)')
    assert.error_matches(function() net:forward(tensor.zeros(4, 2), 0 / 0) end, 't must be finite')
    -- a tensor of times is checked as a number is
    assert.error_matches(function() net:forward(tensor.zeros(2, 2), tensor.new { 0 / 0, 1 }) end,
      'diffuse.net.forward: t must be finite %(found NaN%)')
    assert.error_matches(function() net(tensor.zeros(2, 2), tensor.new { 0.5, -math.huge }) end,
      't must be finite %(found %-inf to 0.5%)')
    net:forward(tensor.zeros(4, 2), 0.5)
    assert.error_matches(function() net:backward(tensor.zeros(5, 2)) end, 'grad_out has 5 rows but the last forward had 4')
    local fresh = diffuse.nn.mlp{ dim = 2, hidden = { 3 } }
    assert.error_matches(function() fresh:backward(tensor.zeros(4, 2)) end, 'backward needs a forward first')
    assert.error_matches(function() diffuse.optim.adam(net, { lr = -1 }) end, 'lr must be positive')
    -- the update is float32: what would be inf or 0 there is refused, not turned into NaN weights
    assert.error_matches(function() diffuse.optim.adam(net, { lr = 1e300 }) end,
      'diffuse.optim.adam: lr must be positive and finite in float32 %(got 1e%+300%)')
    assert.error_matches(function() diffuse.optim.adam(net, { weight_decay = 1e300 }) end,
      'weight_decay must be >= 0 and finite in float32')
    assert.error_matches(function() diffuse.optim.adam(net, { eps = 1e-300 }) end, 'eps must be positive, from about')
    local opt = diffuse.optim.adam(net)
    assert.error_matches(function() opt.lr = 1e39 end, 'lr must be positive and finite in float32')
    assert.error_matches(function() diffuse.optim.adam(net, { betas = { 1, 0.9 } }) end, 'betas must be in')
    assert.error_matches(function() diffuse.optim.adam(net, { lr = 1, momentum = 0 }) end, "unknown option 'momentum'")
    assert.error_matches(function() diffuse.loss.dsm(net, ve, tensor.zeros(4, 1)) end, 'diffuse.loss.dsm: x0 must be %[B, 2%], got 4x1')
    assert.error_matches(function() diffuse.loss.dsm(net, ve, tensor.zeros(4, 2), { tol = 1 }) end, 'tol must be in')
    assert.error_matches(function() diffuse.train{ net = net, diffuser = ve } end, 'diffuse.train: data is required')
    assert.error_matches(function() diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(4, 2), stesp = 3 } end,
      "diffuse.train: unknown option 'stesp'")
    assert.error_matches(function() diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(4, 2), steps = -1 } end,
      'steps must be a whole number from 0 to 2%^53 %(got %-1%)')
    -- each argument named by diffuse.train itself, whatever would have used it first
    local function train_error(o, pattern)
      local ok, err = pcall(diffuse.train, o)
      assert.is_false(ok)
      assert.matches('^diffuse%.train: ' .. pattern, err)
    end
    local x4 = tensor.zeros(4, 2)
    train_error({ net = net, diffuser = ve, data = x4, steps = -1, progress = true }, 'steps must be')
    train_error({ net = net, diffuser = ve, data = x4, steps = 2.5 }, 'steps must be')
    train_error({ net = 5, diffuser = ve, data = x4 }, 'net must be a network %(got number%)')
    train_error({ net = net, diffuser = ve, data = x4, optimizer = 5, lr = 1 }, 'optimizer must be an optimizer')
    train_error({ net = net, diffuser = ve, data = { 1, 2 } }, 'data must be a tensor %(got table%)')
    local gone = tensor.zeros(4, 2)
    gone:free()
    train_error({ net = net, diffuser = ve, data = gone }, 'attempt to use a released tensor')
    local dead = diffuse.nn.mlp{ dim = 2, hidden = { 3 } }
    dead:free()
    train_error({ net = dead, diffuser = ve, data = x4 }, 'attempt to use a released network')
    -- data with NaN would be a NaN loss applied to the net before it is seen: refused up front
    local before = net:parameters():totable()
    train_error({ net = net, diffuser = ve, data = tensor.new { { 0, 0 }, { 0 / 0, 0 } } }, 'data holds NaN or infinite values')
    assert.are.same(before, net:parameters():totable())
    train_error({ net = net, diffuser = ve, data = x4, optimizer = diffuse.optim.adam(net), lr = 0 },
      'lr must be positive and finite in float32 %(got 0%)')
    local freed = diffuse.optim.adam(net)
    freed:free()
    train_error({ net = net, diffuser = ve, data = x4, optimizer = freed, lr = 1 }, 'attempt to use a released optimizer')
    assert.error_matches(function() diffuse.loss.dsm(net, ve, tensor.new { { 0, 1 / 0 } }) end,
      'diffuse.loss.dsm: x0 holds NaN or infinite values')
    -- a backward after an Adam step would be at parameters its forward did not see
    net:forward(x4, 0.5)
    local o2 = diffuse.optim.adam(net)
    o2:step()
    assert.error_matches(function() net:backward(tensor.ones(4, 2)) end, 'backward needs a forward first')
    -- and the position is the caller's line, not the library's
    local ok, err = pcall(function() diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(4, 3) } end)
    assert.is_false(ok)
    assert.matches('^spec/nn_spec%.lua:%d+: diffuse%.train: data must be %[B, 2%], got 4x3$', err)
    assert.error_matches(function() diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(4, 2), batch = 0 } end,
      'batch must be in 1%.%.2%^40')
    local other = diffuse.nn.mlp{ dim = 2, hidden = { 3 } }
    assert.error_matches(function()
      diffuse.train{ net = other, diffuser = ve, data = tensor.zeros(4, 2), optimizer = diffuse.optim.adam(net) }
    end, 'the optimizer belongs to another network')
    net:free()
    assert.error_matches(function() net:forward(tensor.zeros(4, 2), 0.5) end, 'attempt to use a released network')
    local score = diffuse.score.net(other, ve)
    other:free()
    assert.error_matches(function()
      diffuse.sampler{ diffuser = ve, steps = 2 }:run(tensor.zeros(4, 2), score)
    end, 'released network')
  end)
end)
