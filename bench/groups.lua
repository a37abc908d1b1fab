-- bench/groups.lua: the stages of the SU(N) toy experiments with the exact class-function score
-- (the toy action of "Spectral Diffusion for Sampling on SU(N)"): the character expansion and log Z
-- (quadrature), 32768 exact draws of the target (the training data), 4096 Haar draws carried by
-- 200 Euler steps of the probability-flow ODE with log q, and heat-kernel draws; one and two
-- threads; then the learned toys' stages: training (denoising pairs with group noise, the net's
-- forward, backward and Adam; the pairs alone timed apart) and the learned flow with log q (200
-- Heun steps) for the nets of examples/toy_su2.lua and toy_su3.lua. The seed repository's own code
-- on this machine's 2 cores: SU(2) 7 s data, 514 s training, 22 s sampling with log q; SU(3) 8 s,
-- 574 s, 40 s (../shared/groups.md). `make bench` runs it; one JSON line each.
local diffuse = require 'diffuse'
local B = require 'common'

local c = { 0.17, -0.65, 1.22 }
local D = diffuse.power(3, 1)
for _, threads in ipairs { 1, 2 } do
  diffuse.set_threads(threads)
  print(('\n== group toys, %d thread%s (seconds, median of 3; SU(3) sampling once)'):format(threads, threads > 1 and 's' or ''))
  print(('%-8s %12s %12s %16s %14s %10s'):format('group', 'expansion', 'data 32768', 'sample+logq', 'heat 32768', 'ESS/N'))
  for _, case in ipairs { { diffuse.group.su(2), 1 }, { diffuse.group.su(3), 9 } } do
    local G, beta = case[1], case[2]
    local target
    local t_exp = B.median(function() target = diffuse.group.toy_action{ group = G, beta = beta, coeffs = c } end, 3, false)
    local t_data = B.median(function() target:sample(32768) end, 3, false)
    local score = diffuse.score.class_function(G, D, target)
    local s = diffuse.sampler{ diffuser = D, steps = 200, method = 'euler', group = G }
    diffuse.seed(0)
    local x1 = G:haar(4096)
    local x0, logq
    local t_samp = B.median(function() x0, _, logq = s:run(x1, score, { logq = true }) end, G.n == 2 and 3 or 1, false)
    local ess = diffuse.metrics.ess(target:log_density(x0) - logq)
    local t_heat = B.median(function() G:heat_sample(32768, 0.5) end, 3, false)
    print(('%-8s %12.4f %12.4f %16.4f %14.4f %10.5f'):format(G.name, t_exp, t_data, t_samp, t_heat, ess))
    print(('{"bench":"group_toy","group":%q,"threads":%d,"expansion_s":%.6g,"data_s":%.6g,"sample_logq_s":%.6g,"heat_sample_s":%.6g,"ess":%.6g}')
      :format(G.name, threads, t_exp, t_data, t_samp, t_heat, ess))
  end
end

-- the learned toys: the nets of the examples (SU(2): the notebook's, times sin theta; SU(3): the
-- equivariant head), training as the examples run it, timed over a few hundred steps
local nn = diffuse.nn
local freqs = {}
for k = 1, 25 do freqs[k] = math.exp(-10 * (k / 25 - 0.5)) end
local function su2_net()
  local l1, l2, l3, l4 = nn.linear(64), nn.linear(64), nn.linear(64), nn.linear(1)
  return nn.net{ dim = 2, output = 'score', forward = function(x, t)
    local h = l3(l2(l1(nn.cat{ x, nn.fourier(t, { frequencies = freqs }) }):silu()):silu()):silu()
    return l4(h) * x:sin()
  end }
end
local function su3_net()
  local l1, l2, l3, l4 = nn.linear(64), nn.linear(64), nn.linear(64), nn.linear(1)
  return nn.net{ dim = 3, output = 'score', forward = function(x, t)
    local inv = {}
    for k = 1, 3 do inv[#inv + 1] = (x * k):cos():mean(); inv[#inv + 1] = (x * k):sin():mean() end
    local shared = nn.cat{ nn.cat(inv), nn.fourier(t, { frequencies = freqs }) }
    local o = {}
    for i = 1, 3 do
      local xi = x:col(i)
      o[i] = l4(l3(l2(l1(nn.cat{ xi:sin(), xi:cos(), (xi * 2):sin(), (xi * 2):cos(), shared }):silu()):silu()):silu())
    end
    local out = nn.cat(o)
    return out - out:mean()
  end }
end
for _, threads in ipairs { 1, 2 } do
  diffuse.set_threads(threads)
  print(('\n== learned group toys, %d thread%s (training: seconds per 1000 steps from 200; the example\'s steps in brackets)'):format(threads, threads > 1 and 's' or ''))
  print(('%-8s %8s %14s %14s %18s %20s'):format('group', 'batch', 'train/1000', 'pairs/1000', 'train (example)', 'learned sample+logq'))
  for _, case in ipairs { { diffuse.group.su(2), 1, su2_net, 1024, 6400, 1e-4 }, { diffuse.group.su(3), 9, su3_net, 2048, 2000, 1e-3 } } do
    local G, beta, make, batch, steps, tol = case[1], case[2], case[3], case[4], case[5], case[6]
    local target = diffuse.group.toy_action{ group = G, beta = beta, coeffs = c }
    diffuse.seed(1)
    local data = target:sample(32768)
    local net = make()
    local n = 200
    local t0 = diffuse.core.clock()
    diffuse.train{ net = net, diffuser = D, data = data, group = G, steps = n, batch = batch, lr = 1e-3, tol = tol }
    local t_train = (diffuse.core.clock() - t0) * 1000 / n
    local tt = diffuse.tensor.rand(batch) * (1 - tol) + tol
    local x = target:sample(batch)
    local t_pairs = B.median(function() G:dsm_pairs(x, D, tt) end, 5, false) * 1000
    local s = diffuse.sampler{ diffuser = D, steps = 200, method = 'heun', group = G }
    local x1 = G:haar(4096)
    t0 = diffuse.core.clock()
    s:run(x1, diffuse.score.net(net, D), { logq = true })
    local t_samp = diffuse.core.clock() - t0
    print(('%-8s %8d %14.3f %14.3f %18.1f %20.3f'):format(G.name, batch, t_train, t_pairs, t_train * steps / 1000, t_samp))
    print(('{"bench":"group_train","group":%q,"threads":%d,"batch":%d,"train_s_per_1000":%.6g,"pairs_s_per_1000":%.6g,"train_example_s":%.6g,"learned_sample_logq_s":%.6g}')
      :format(G.name, threads, batch, t_train, t_pairs, t_train * steps / 1000, t_samp))
  end
end
