-- bench/suite.lua: every workload of the PyTorch reference (../shared/peer) run by diffuse and by
-- the reference in the same invocation, alternating, on 1 thread each and then on 2, with a
-- table of medians and ratios and one JSON line per workload; then a sweep of batch size and
-- hidden width beside the reference, flagging time that grows faster than the work.
-- `make bench` runs it; it never runs in CI. Options: --quick (fewer repeats, no sweep).
local diffuse = require 'diffuse'
local B = require 'common'
local tensor = diffuse.tensor

local quick = false
for _, a in ipairs(arg or {}) do if a == '--quick' then quick = true end end
local ve = diffuse.ve(1.1)

-- the workloads, as the reference defines them (seed_reference.py)
local nn = diffuse.nn
local function mlp() return diffuse.nn.mlp{ dim = 1 } end
local function temb() return diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 256, scale = 30 } end
-- user-composed architectures (nn.net): the peer's FeatureScoreNet, and the seed's two nets as
-- graphs (the same arithmetic as the fused paths: how much the generic executor costs)
local function feat()
  local w = {}
  for k = 1, 25 do w[k] = math.exp(-10 * (k / 25 - 0.5)) end
  return nn.net{ dim = 1, forward = function(x, t)
    local h = nn.cat{ x, nn.fourier(t, { frequencies = w }) }
    for _ = 1, 3 do h = nn.linear(64)(h):silu() end
    return nn.linear(1)(h)
  end }
end
local function mlp_graph()
  return nn.net{ dim = 1, forward = function(x, t)
    local h = nn.linear(8)(nn.cat{ x, t }):silu()
    h = nn.linear(8)(h):silu()
    h = nn.linear(8)(h):silu()
    return nn.linear(1)(h)
  end }
end
local function temb_graph()
  return nn.net{ dim = 1, forward = function(x, t)
    local e = nn.linear(8)(nn.fourier(t, { embed = 256, scale = 30 })):silu()
    return nn.linear(1)((nn.linear(8)(x) + e):silu())
  end }
end

local function trainer(make, batch, steps, hidden)
  local data = tensor.zeros(batch, 1)
  return function()
    diffuse.seed(0)
    local net = hidden and diffuse.nn.mlp{ dim = 1, hidden = { hidden, hidden, hidden } } or make()
    diffuse.train{ net = net, diffuser = ve, data = data, steps = steps, lr = 1e-3 }
  end
end

local function sampler_exact(n)
  local s = diffuse.sampler{ diffuser = ve, steps = 200, method = 'euler' }
  local score = diffuse.score.exact(ve)
  diffuse.seed(0)
  local x1 = ve:prior(n)
  return function() s:run(x1, score) end
end

local function sampler_net(make)
  diffuse.seed(0)
  local net = make()
  diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(1024, 1), steps = 1000 }
  local s = diffuse.sampler{ diffuser = ve, steps = 100, method = 'euler' }
  local score = diffuse.score.net(net, ve)
  local x1 = ve:prior(4096)
  return function() s:run(x1, score) end
end

local workloads = {
  { 'train_mlp', function() return trainer(mlp, 1024, 1000) end, 3 },
  { 'train_temb', function() return trainer(temb, 1024, 1000) end, 3 },
  { 'sample_exact', function() return sampler_exact(8192) end, 5 },
  { 'sample_exact_1m', function() return sampler_exact(1 << 20) end, 3 },
  { 'sample_net', function() return sampler_net(mlp) end, 3 },
  { 'sample_temb', function() return sampler_net(temb) end, 3 },
  -- the wide MLP: batch 65536, width 256, 3 steps (the reference takes seconds per step)
  { 'train_mlp_wide', function() return trainer(nil, 65536, 3, 256) end, 2, '--steps 3' },
  { 'train_feat', function() return trainer(feat, 1024, 1000) end, 3 },
  { 'sample_feat', function() return sampler_net(feat) end, 3 },
  -- the seed's nets as composed graphs, against the same reference workloads
  { 'train_mlp (graph)', function() return trainer(mlp_graph, 1024, 1000) end, 3, nil, 'train_mlp' },
  { 'sample_net (graph)', function() return sampler_net(mlp_graph) end, 3, nil, 'sample_net' },
  { 'train_temb (graph)', function() return trainer(temb_graph, 1024, 1000) end, 3, nil, 'train_temb' },
}

local all = {}
for _, threads in ipairs{ 1, 2 } do
  diffuse.set_threads(threads)
  local rows = {}
  for _, w in ipairs(workloads) do
    local reps = quick and 1 or w[3]
    local r = B.versus(w[1], w[2](), w[5] or w[1], threads, reps, w[4])
    rows[#rows + 1] = r
    all[#all + 1] = r
    io.stderr:write(('  %s, %d thread(s): %.3f ms vs %s\n'):format(w[1], threads, r.diffuse_s * 1e3,
      r.torch_s and ('%.3f ms'):format(r.torch_s * 1e3) or '-'))
  end
  B.report(rows, ('\n== %d thread%s: %s'):format(threads, threads > 1 and 's' or '', diffuse.summary()))
end

-- the generic graph executor against the hand-fused paths of the same nets (same run)
print('\n== composed graphs against the fused paths (time of the graph / time of the fused net)')
print(('%-22s %10s %10s'):format('workload', '1 thread', '2 threads'))
local byname = {}
for _, r in ipairs(all) do byname[r.name .. r.threads] = r end
for _, pair in ipairs{ { 'train_mlp (graph)', 'train_mlp' }, { 'sample_net (graph)', 'sample_net' },
                       { 'train_temb (graph)', 'train_temb' } } do
  local cells = {}
  for i, th in ipairs{ 1, 2 } do
    local g, f = byname[pair[1] .. th], byname[pair[2] .. th]
    cells[i] = (g and f) and ('%.2fx'):format(g.diffuse_s / f.diffuse_s) or '-'
  end
  print(('%-22s %10s %10s'):format(pair[2], cells[1], cells[2]))
  print(('{"bench":"graph_vs_fused","workload":%q,"ratio_1":%s,"ratio_2":%s}'):format(pair[2],
    cells[1]:match('[%d%.]+') or 'null', cells[2]:match('[%d%.]+') or 'null'))
end

-- two threads against one, for diffuse and for the reference
print('\n== scaling with threads (time on 1 thread / time on 2)')
print(('%-22s %10s %10s'):format('workload', 'diffuse', 'torch'))
local by = {}
for _, r in ipairs(all) do by[r.name .. r.threads] = r end
for _, w in ipairs(workloads) do
  local a, b = by[w[1] .. 1], by[w[1] .. 2]
  print(('%-22s %9.2fx %10s'):format(w[1], a.diffuse_s / b.diffuse_s,
    (a.torch_s and b.torch_s) and ('%.2fx'):format(a.torch_s / b.torch_s) or '-'))
end

if quick then return end

-- sweeps: training step time against batch and width, 1 thread, both sides
diffuse.set_threads(1)
local function sweep(title, points, work_of, make_ours, peer_args)
  print(('\n== %s (1 thread, ms per step)'):format(title))
  print(('%-10s %12s %12s %10s %14s'):format('size', 'diffuse', 'torch', 'speedup', 'growth'))
  local prev
  for _, p in ipairs(points) do
    local steps = p.steps
    local r = B.versus(tostring(p.size), make_ours(p), 'train_mlp', 1, 1, peer_args(p))
    local ours, theirs = r.diffuse_s / steps, r.torch_s and r.torch_s / steps
    local growth = ''
    if prev then
      -- time ratio against work ratio: above 1.3 the time grows faster than the work
      local g = (ours / prev.ours) / (work_of(p) / work_of(prev.p))
      growth = ('%.2f%s'):format(g, g > 1.3 and ' SUPERLINEAR' or '')
    end
    print(('%-10s %12.4f %12s %9s %14s'):format(tostring(p.size), ours * 1e3,
      theirs and ('%.4f'):format(theirs * 1e3) or '-', theirs and ('%.1fx'):format(theirs / ours) or '-', growth))
    print(('{"bench":"sweep_%s","size":%d,"diffuse_ms":%.6g,"torch_ms":%s}'):format(title:match('^%S+'), p.size,
      ours * 1e3, theirs and ('%.6g'):format(theirs * 1e3) or 'null'))
    prev = { p = p, ours = ours }
  end
end

local batches = {}
for _, b in ipairs{ 1024, 4096, 16384, 65536, 262144, 1048576 } do
  batches[#batches + 1] = { size = b, steps = math.max(3, math.floor(200 * 1024 / b)) }
end
sweep('batch (seed MLP, width 8)', batches, function(p) return p.size end,
  function(p) return trainer(mlp, p.size, p.steps) end,
  function(p) return ('--batch %d --steps %d'):format(p.size, p.steps) end)

local widths = {}
for _, h in ipairs{ 8, 16, 32, 64, 128, 256 } do widths[#widths + 1] = { size = h, steps = h >= 128 and 10 or 50 } end
sweep('width (batch 1024)', widths, function(p) return 2 * p.size * p.size + 4 * p.size end,
  function(p) return trainer(nil, 1024, p.steps, p.size) end,
  function(p) return ('--hidden %d --steps %d'):format(p.size, p.steps) end)
