-- bench/train.lua: the seed's training and sampling workloads beside the PyTorch reference, in
-- the same run, single thread each: train_mlp and train_temb (kappa 1.1, batch 1024 zeros,
-- 1000 steps, Adam 1e-3) and sample_net (Euler ODE, 100 steps, 4096 samples, trained MLP).
local diffuse = require 'diffuse'
local B = require 'common'
local tensor = diffuse.tensor

local threads = tonumber(arg and arg[1]) or 1
if diffuse.set_threads then diffuse.set_threads(threads) end
local reps = tonumber(arg and arg[2]) or 3
local ve = diffuse.ve(1.1)
local data = tensor.zeros(1024, 1)

local function last100(losses)
  local l, s = losses:totable(), 0
  for i = #l - 99, #l do s = s + l[i] end
  return s / 100
end

local rows, notes = {}, {}
for _, w in ipairs{ { 'train_mlp', function() return diffuse.nn.mlp{ dim = 1 } end },
                    { 'train_temb', function()
                        return diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 256, scale = 30 }
                      end } } do
  local loss
  rows[#rows + 1] = B.versus(w[1], function()
    diffuse.seed(0)
    local net = w[2]()
    loss = last100(diffuse.train{ net = net, diffuser = ve, data = data, steps = 1000, lr = 1e-3 })
  end, w[1], threads, reps)
  notes[#notes + 1] = ('%s: last-100 mean loss %.4f'):format(w[1], loss)
end

diffuse.seed(0)
local net = diffuse.nn.mlp{ dim = 1 }
diffuse.train{ net = net, diffuser = ve, data = data, steps = 1000, lr = 1e-3 }
local sampler = diffuse.sampler{ diffuser = ve, steps = 100, method = 'euler' }
local score = diffuse.score.net(net, ve)
local x1 = ve:prior(4096)
local x0
rows[#rows + 1] = B.versus('sample_net', function() x0 = sampler:run(x1, score) end, 'sample_net',
                           threads, reps)
notes[#notes + 1] = ('sample_net: x0 mean %+.4f std %.4f'):format(x0:mean(), x0:std())

B.report(rows, ('seed training and sampling (%s, %d thread%s)'):format(diffuse.summary(), threads,
                                                                       threads > 1 and 's' or ''))
for _, n in ipairs(notes) do print('# ' .. n) end
