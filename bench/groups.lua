-- bench/groups.lua: the stages of the SU(N) toy experiments with the exact class-function score
-- (the toy action of "Spectral Diffusion for Sampling on SU(N)"): the character expansion and log Z
-- (quadrature), 32768 exact draws of the target (the training data), 4096 Haar draws carried by
-- 200 Euler steps of the probability-flow ODE with log q, and heat-kernel draws; one and two
-- threads. The seed repository's own code on this machine's 2 cores: SU(2) 7 s data, 22 s sampling
-- with log q; SU(3) 8 s, 40 s (../shared/groups.md). `make bench` runs it; one JSON line each.
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
