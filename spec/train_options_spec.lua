-- spec/train_options_spec.lua: the output conventions (net.output) and the training options
-- (weighting, clip, schedule, ema) against their definitions: the DSM loss recomputed from the same
-- draws for every convention and weighting, the scores, the manual loop step by step, and a
-- resumed run against the uninterrupted one, bitwise.
local diffuse = require 'diffuse'
local tensor, nn = diffuse.tensor, diffuse.nn

local ve = diffuse.ve(1.1)

local function f32(x) return (string.unpack('f', string.pack('f', x))) end

describe('output conventions', function()
  local outputs = { 'scaled', 'score', 'noise', 'denoiser' }

  it('loss.dsm is mean(w r^2), r = sigma (s_net - s_target), for every convention and weighting', function()
    local B, tol = 90, 1e-3
    for _, output in ipairs(outputs) do
      for _, weighting in ipairs{ 'sigma2', 'likelihood', 'none' } do
        diffuse.seed(31)
        local net = nn.mlp{ dim = 2, hidden = { 5 }, output = output }
        local x0 = tensor.randn(B, 2) * 0.5
        local seed, stream = diffuse.rng_state()
        net:zero_grad()
        local loss = diffuse.loss.dsm(net, ve, x0, { tol = tol, weighting = weighting })
        local g = net:gradients()
        -- the same draws by hand: t from the next stream, eta from the one after it
        diffuse.set_rng_state(seed, stream)
        local t = tol + (1 - tol) * tensor.rand(B)
        local eta = tensor.randn(B, 2)
        local sigma = ve:sigma(t):reshape(B, 1)
        local xt = x0 + sigma * eta
        local out = net:forward(xt, t)
        local s_net = diffuse.score.net(net, ve)(xt, t)
        -- the definition: lambda |s_net - s_target|^2, s_target = -eta / sigma
        local lambda = weighting == 'sigma2' and sigma * sigma
          or weighting == 'likelihood' and ve:g(t):reshape(B, 1) ^ 2 or tensor.ones(B, 1)
        local dev = s_net + eta / sigma
        local want = (lambda * dev * dev):mean()
        assert.near(want, loss, 2e-5 * want, output .. ' ' .. weighting)
        -- its gradient: d loss / d out = 2 lambda (s_net - s_target) d s_net / d out / (B d)
        local ds = output == 'scaled' and 1 / sigma or output == 'score' and tensor.ones(B, 1)
          or output == 'noise' and -1 / sigma or 1 / (sigma * sigma)
        net:zero_grad()
        net:forward(xt, t)
        net:backward(lambda * dev * ds * (2 / (B * 2)))
        local gw = net:gradients()
        assert.is_true((gw - g):abs():max() < 3e-5 * (1 + g:abs():max()), output .. ' ' .. weighting)
        if output == 'denoiser' then -- the denoiser's loss is |out - x0|^2 / sigma^2 (sigma2)
          if weighting == 'sigma2' then
            local r = (out - x0) / sigma
            assert.near((r * r):mean(), loss, 2e-5 * loss)
          end
        end
      end
    end
  end)

  it('score.net gives out / sigma, out, -out / sigma, (out - x) / sigma^2; native runs are the step-by-step ones', function()
    for _, output in ipairs(outputs) do
      diffuse.seed(33)
      local net = nn.net{ dim = 2, output = output, forward = function(x, t)
        return nn.linear(2)(nn.cat{ x, t }:tanh()) + x * 0.5
      end }
      local score = diffuse.score.net(net, ve)
      local x = tensor.randn(40, 2)
      local s2 = ve:sigma(0.4) ^ 2
      local out = net:forward(x, 0.4)
      local a = output == 'scaled' and f32(1 / math.sqrt(s2)) or output == 'score' and 1
        or output == 'noise' and -f32(1 / math.sqrt(s2)) or f32(1 / s2)
      local want = output == 'denoiser' and (out - x) * a or out * a
      assert.equal(0, (score(x, 0.4) - want):abs():max(), output)
      -- one time per row: divisions by sigma(t) per row
      local t = tensor.rand(40) * 0.9 + 0.05
      local sg = ve:sigma(t):reshape(40, 1)
      local o2 = net:forward(x, t)
      local w2 = output == 'scaled' and o2 / sg or output == 'score' and o2 or output == 'noise' and -(o2 / sg)
        or (o2 - x) / sg / sg
      assert.is_true((score(x, t) - w2):abs():max() <= 1e-6 * (1 + w2:abs():max()), output)
      for _, method in ipairs{ 'euler', 'heun', 'euler_maruyama' } do
        local s = diffuse.sampler{ diffuser = ve, steps = 12, method = method }
        local x1 = ve:prior(300, 2)
        diffuse.seed(4)
        local fused = s:run(x1, score)
        diffuse.seed(4)
        local stepped = s:run(x1, function(y, tt) return score(y, tt) end)
        assert.equal(0, (fused - stepped):abs():max(), output .. ' ' .. method)
      end
    end
  end)

  it('a net trained under each convention learns the heat kernel\'s score (score_error honours it)', function()
    for _, output in ipairs(outputs) do
      diffuse.seed(35)
      local net = nn.mlp{ dim = 1, hidden = { 16, 16 }, output = output }
      diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(512, 1), steps = 600, lr = 3e-3,
                     tol = 1e-3 }
      diffuse.seed(36)
      local err = diffuse.metrics.score_error(net, ve, diffuse.score.exact(ve), { n = 4096, tol = 0.05 })
      -- (untrained, a net scores about 1 on this scale; the seed's MLP reaches ~0.03)
      assert.is_true(err < 0.1, output .. ': ' .. err)
    end
  end)
end)

describe('training options', function()
  local data = diffuse.heat.sample(2048, 0.5)

  local function manual(net, opt, o, steps, hook)
    local losses = {}
    for k = 1, steps do
      opt:zero_grad()
      losses[k] = diffuse.loss.dsm(net, ve, o.batch_data or data, { tol = 1e-3, weighting = o.weighting })
      if hook then hook(k) end
      opt:step()
    end
    return losses
  end

  it('schedule: linear warmup, then cosine or linear decay to min_lr, bitwise the manual loop setting lr', function()
    for _, decay in ipairs{ 'cosine', 'linear', 'none' } do
      diffuse.seed(41)
      local a = nn.mlp{ dim = 1, hidden = { 6 } }
      local sched = { warmup = 10, decay = decay, min_lr = 1e-4, steps = 40 }
      local la, oa = diffuse.train{ net = a, diffuser = ve, data = data, steps = 50, lr = 2e-3, tol = 1e-3,
                                    schedule = sched }
      assert.equal(50, oa.t)
      -- the schedule by its definition, and the manual loop that sets lr before each step
      local function lr_at(t)
        if t <= 10 then return 2e-3 * t / 10 end
        if decay == 'none' then return 2e-3 end
        local p = math.min(1, (t - 10) / 30)
        local f = decay == 'cosine' and 0.5 * (1 + math.cos(math.pi * p)) or 1 - p
        return 1e-4 + (2e-3 - 1e-4) * f
      end
      assert.near(lr_at(51), oa.current_lr, 1e-15)
      diffuse.seed(41)
      local b = nn.mlp{ dim = 1, hidden = { 6 } }
      local ob = diffuse.optim.adam(b, { lr = 2e-3 })
      local lb = {}
      for k = 1, 50 do
        ob.lr = lr_at(k)
        ob:zero_grad()
        lb[k] = diffuse.loss.dsm(b, ve, data, { tol = 1e-3 })
        ob:step()
      end
      -- (loss.dsm uses all rows: train's batch is the data, the same draws)
      local la_t = la:totable()
      for k = 1, 50 do assert.equal(lb[k], la_t[k], decay .. ' step ' .. k) end
      assert.equal(0, (a:parameters() - b:parameters()):abs():max())
    end
    local net = nn.mlp{ dim = 1 }
    local function bad(sched, pattern)
      assert.error_matches(function()
        diffuse.train{ net = net, diffuser = ve, data = data, steps = 5, schedule = sched }
      end, pattern)
    end
    bad({ warmup = -1 }, 'diffuse%.train: schedule%.warmup must be a whole number')
    bad({ decay = 'exp' }, "diffuse%.train: schedule%.decay must be 'cosine', 'linear' or 'none'")
    bad({ decay = 'cosine', warmup = 10, steps = 5 }, 'schedule%.steps %(5%) must be more than schedule%.warmup %(10%)')
    bad({ min_lr = 1 }, 'schedule%.min_lr must be from 0 to lr')
    bad({ wramup = 1 }, "unknown option 'wramup'")
    bad(3, 'diffuse%.train: schedule must be a table')
  end)

  it('clip: the gradients scaled to a global norm of clip before Adam, as clip_grad_norm_', function()
    diffuse.seed(43)
    local a = nn.mlp{ dim = 1, hidden = { 6 } }
    local la = diffuse.train{ net = a, diffuser = ve, data = data, steps = 30, lr = 1e-2, tol = 1e-3, clip = 0.05 }
    diffuse.seed(43)
    local b = nn.mlp{ dim = 1, hidden = { 6 } }
    local ob = diffuse.optim.adam(b, { lr = 1e-2 })
    local clipped = 0
    local lb = manual(b, ob, {}, 30, function()
      local g = b:gradients()
      local norm = 0
      for _, v in ipairs(g:totable()) do norm = norm + v * v end
      norm = math.sqrt(norm)
      local coef = 0.05 / (norm + 1e-6)
      if coef < 1 then
        clipped = clipped + 1
        b:set_gradients(g * coef)
      end
    end)
    assert.is_true(clipped >= 20)
    local la_t = la:totable()
    for k = 1, 30 do assert.near(lb[k], la_t[k], 1e-5 * math.abs(lb[k]), 'step ' .. k) end
    assert.is_true((a:parameters() - b:parameters()):abs():max() < 1e-5)
    -- a clip that never acts changes nothing, bitwise
    diffuse.seed(43)
    local c = nn.mlp{ dim = 1, hidden = { 6 } }
    local lc = diffuse.train{ net = c, diffuser = ve, data = data, steps = 30, lr = 1e-2, tol = 1e-3, clip = 1e30 }
    diffuse.seed(43)
    local e = nn.mlp{ dim = 1, hidden = { 6 } }
    local le = diffuse.train{ net = e, diffuser = ve, data = data, steps = 30, lr = 1e-2, tol = 1e-3 }
    assert.equal(0, (lc - le):abs():max())
    for _, v in ipairs{ 0, -1, 0 / 0, 'a' } do
      assert.error_matches(function() diffuse.train{ net = c, diffuser = ve, data = data, steps = 1, clip = v } end,
        'diffuse%.train: clip must be a positive number')
    end
  end)

  it('ema: the weights\' moving average, kept natively, a net that samples like any other', function()
    diffuse.seed(45)
    local a = nn.mlp{ dim = 1, hidden = { 6 } }
    local _, oa, ema = diffuse.train{ net = a, diffuser = ve, data = data, steps = 25, tol = 1e-3, ema = 0.9 }
    assert.equal(ema, oa.ema)
    assert.equal(0.9, oa.ema_decay)
    assert.equal('mlp', ema.kind)
    -- by hand: e = e d + p (1 - d) after every step, from the initial weights, in float32
    diffuse.seed(45)
    local b = nn.mlp{ dim = 1, hidden = { 6 } }
    local ob = diffuse.optim.adam(b)
    local d = f32(0.9)
    local e = b:parameters()
    for _ = 1, 25 do
      ob:zero_grad()
      diffuse.loss.dsm(b, ve, data, { tol = 1e-3 })
      ob:step()
      e = e * d + b:parameters() * (1 - d)
    end
    assert.equal(0, (ema:parameters() - e):abs():max())
    assert.equal(0, (a:parameters() - b:parameters()):abs():max())
    -- opt:step() keeps it too, and it samples
    local e2 = ob:set_ema(0.5)
    local before = e2:parameters()
    ob:zero_grad()
    diffuse.loss.dsm(b, ve, data, { tol = 1e-3 })
    ob:step()
    assert.equal(0, (e2:parameters() - (before * 0.5 + b:parameters() * 0.5)):abs():max())
    local s = diffuse.sampler{ diffuser = ve, steps = 10 }
    local x0 = s:run(ve:prior(100), diffuse.score.net(ema, ve))
    assert.equal(100, x0:size(1))
    for _, v in ipairs{ 0, 1, 1.5, -0.1 } do
      assert.error_matches(function() diffuse.train{ net = a, diffuser = ve, data = data, steps = 1, ema = v } end,
        'diffuse%.train: ema must be a decay between 0 and 1')
    end
  end)

  it('a run resumed from a checkpoint is bitwise the uninterrupted one, schedule, EMA and clip included', function()
    local o = { diffuser = ve, data = data, batch = 256, lr = 3e-3, clip = 0.5, weighting = 'likelihood',
                tol = 1e-3, schedule = { warmup = 20, decay = 'cosine', min_lr = 1e-5, steps = 120 }, ema = 0.95 }
    diffuse.seed(47)
    o.net, o.steps = nn.net{ dim = 1, output = 'noise', forward = function(x, t)
      return nn.linear(1)(nn.linear(16)(nn.cat{ x, nn.fourier(t, { embed = 8, scale = 2 }) }):silu())
    end }, 120
    local full, _, full_ema = diffuse.train(o)
    local full_params = o.net:parameters()
    diffuse.seed(47)
    o.net, o.steps = nn.net{ dim = 1, output = 'noise', forward = function(x, t)
      return nn.linear(1)(nn.linear(16)(nn.cat{ x, nn.fourier(t, { embed = 8, scale = 2 }) }):silu())
    end }, 50
    local first, opt = diffuse.train(o)
    local path = os.tmpname()
    o.net:save(path, opt)
    local net, opt2, info = nn.load(path)
    os.remove(path)
    assert.is_not_nil(info.ema)
    assert.equal(info.ema, opt2.ema)
    assert.equal(120, opt2.schedule.steps)
    diffuse.set_rng_state(info.seed, info.stream)
    local rest, _, ema = diffuse.train{ net = net, optimizer = opt2, diffuser = ve, data = data, batch = 256,
                                         steps = 70, clip = 0.5, weighting = 'likelihood', tol = 1e-3 }
    assert.equal(0, (tensor.cat({ first, rest }, 1) - full):abs():max())
    assert.equal(0, (net:parameters() - full_params):abs():max())
    assert.equal(0, (ema:parameters() - full_ema:parameters()):abs():max())
  end)

  it('weighting and tol: the options are checked by name', function()
    local net = nn.mlp{ dim = 1, output = 'denoiser' }
    assert.error_matches(function() diffuse.train{ net = net, diffuser = ve, data = data, steps = 1, weighting = 'g2' } end,
      "diffuse%.train: weighting must be 'sigma2', 'likelihood' or 'none' %(got 'g2'%)")
    assert.error_matches(function() diffuse.train{ net = net, diffuser = ve, data = data, steps = 1, tol = 0 } end,
      "diffuse%.train: tol must be positive for a denoiser's output")
    local m = nn.mlp{ dim = 1 }
    assert.error_matches(function() diffuse.loss.dsm(m, ve, data, { tol = 0, weighting = 'none' }) end,
      "diffuse%.loss%.dsm: tol must be positive for weighting 'none'")
    assert.error_matches(function() nn.mlp{ dim = 1, output = 'eps' } end,
      "diffuse%.nn%.mlp: output must be 'scaled', 'score', 'noise' or 'denoiser'")
  end)
end)
