-- examples/compare_networks.lua: does a time embedding help? The seed's plain MLP and its
-- time-embedded net, trained alike (same seeds, same random streams, same data), then judged
-- against the exact answer: score error, samples of one Euler ODE run from a shared prior draw
-- compared with the analytic N(0, sigma(t)^2) at several t, and wall times. Over --seeds seeds
-- (the figures show the first). Writes two figures and the table (markdown and CSV).
--   lua5.4 examples/compare_networks.lua [--out DIR] [--device cuda] [--seeds 5] [--help]
local diffuse = require 'diffuse'
local tensor, plot, metrics = diffuse.tensor, diffuse.plot, diffuse.metrics

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  seeds = { 5, 'train each net with seeds seed .. seed + seeds - 1 (figures: the first)' },
  kappa = { 1.1, 'VE diffuser: g(t) = kappa^t' },
  steps = { 1000, 'training steps' },
  batch = { 1024, 'rows of training data (all zeros: the data sit at the origin)' },
  lr = { 1e-3, 'Adam learning rate' },
  samples = { 4096, 'samples per ODE run' },
  sample_steps = { 100, 'Euler steps of the reverse ODE' },
  scale = { 30, "std of the time-embedded net's fixed Fourier frequencies W" },
}, 'compare_networks.lua: does a time embedding help? (plain MLP against the time-embedded net)')
local path = diffuse.cli.setup(opts)
local clock = diffuse.core.clock

local ve = diffuse.ve(opts.kappa)
local exact = diffuse.score.exact(ve)
local N = opts.sample_steps
local times = { 0.75, 0.5, 0.25 }                      -- compared with N(0, sigma(t)^2); then t = 0
local record = {}
for i, t in ipairs(times) do record[i] = math.floor((1 - t) * N + 0.5) end
record[#record + 1] = N

local nets = {
  { key = 'mlp', name = 'plain MLP', make = function() return diffuse.nn.mlp{ dim = 1, hidden = { 8, 8, 8 } } end },
  { key = 'temb', name = 'time-embedded',
    make = function() return diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 256, scale = opts.scale } end },
}

-- one ODE run from x1 with a score source: W1, KS along the path, the t = 0 cloud, the time
local function judge(score, x1, r)
  local sampler = diffuse.sampler{ diffuser = ve, steps = N, method = 'euler' }
  local start = clock()
  local x0, xs = sampler:run(x1, score, { record = record })
  r.sample_s = clock() - start
  for i, t in ipairs(times) do
    local F = metrics.normal(0, ve:sigma(t)) -- the analytic kernel at t
    r['w1_' .. t] = metrics.wasserstein1(xs[record[i]], F)
    r['ks_' .. t] = metrics.ks(xs[record[i]], F)
  end
  r.x0_mean, r.x0_std = x0:mean(), x0:std()
  return xs
end

local runs = { mlp = {}, temb = {}, exact = {} }       -- per net: one record per seed
local first                                             -- what the figures show
for s = opts.seed, opts.seed + opts.seeds - 1 do
  diffuse.seed(s)
  local x1 = ve:prior(opts.samples)                    -- one start for all samplers of this seed
  local rng_seed, rng_stream = diffuse.rng_state()
  local shown = {}
  for _, n in ipairs(nets) do
    diffuse.set_rng_state(rng_seed, rng_stream)        -- both nets draw the same random numbers
    local net = n.make()
    local start = clock()
    local losses = diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(opts.batch, 1),
                                  steps = opts.steps, lr = opts.lr }
    local r = { seed = s, train_s = clock() - start, params = net:num_parameters() }
    local l = losses:totable()
    local tail = math.min(100, #l)
    r.final_loss, r.last100_loss = l[#l], 0
    for i = #l - tail + 1, #l do r.last100_loss = r.last100_loss + l[i] / tail end
    diffuse.set_rng_state(rng_seed, 1 << 20)          -- the same (t, x) draws for both nets
    local err, bins = metrics.score_error(net, ve, exact, { n = 16384, bins = 10 })
    r.score_error = err
    shown[n.key] = { losses = l, bins = bins, xs = judge(diffuse.score.net(net, ve), x1, r), r = r }
    runs[n.key][#runs[n.key] + 1] = r
    print(('seed %d  %-14s trained in %5.2f s: last-100 loss %.4f, score error %.4f, t = 0 std %.4f')
      :format(s, n.name, r.train_s, r.last100_loss, r.score_error, r.x0_std))
  end
  local r = { seed = s }
  shown.exact = { xs = judge(exact, x1, r), r = r }
  runs.exact[#runs.exact + 1] = r
  first = first or shown
end

-- ---- the table: mean (± sd over seeds) per quantity and net ----------------------------------

local function stats(key, field)
  local rs, m, v = runs[key], 0, 0
  if #rs == 0 or rs[1][field] == nil then return nil end
  for _, r in ipairs(rs) do m = m + r[field] / #rs end
  for _, r in ipairs(rs) do v = v + (r[field] - m) ^ 2 end
  return m, #rs > 1 and math.sqrt(v / (#rs - 1)) or nil
end

local rows = {
  { 'trainable parameters', 'params', '%d' },
  { 'final loss', 'final_loss' },
  { 'mean loss, last 100 steps', 'last100_loss' },
  { 'score error E[σ²(s_net − s)²]', 'score_error' },
}
for _, t in ipairs(times) do
  rows[#rows + 1] = { ('W1 to N(0, σ(t)²) at t = %g'):format(t), 'w1_' .. t }
  rows[#rows + 1] = { ('KS D at t = %g'):format(t), 'ks_' .. t }
end
rows[#rows + 1] = { 'mean at t = 0', 'x0_mean' }
rows[#rows + 1] = { 'std at t = 0 (target 0)', 'x0_std' }
rows[#rows + 1] = { 'training wall time (s)', 'train_s', '%.3f' }
rows[#rows + 1] = { 'sampling wall time (s)', 'sample_s', '%.4f' }

local cols = { 'mlp', 'temb', 'exact' }
local function cell(key, field, f)
  local m, sd = stats(key, field)
  if m == nil then return '–' end
  f = f or '%.4f'
  if f == '%d' then return ('%d'):format(math.floor(m + 0.5)) end
  return sd and (f .. ' ± ' .. f):format(m, sd) or f:format(m)
end
local md = { ('| quantity | plain MLP | time-embedded | exact score (same ODE) |'), '|---|---|---|---|' }
for _, row in ipairs(rows) do
  local c = {}
  for i, k in ipairs(cols) do c[i] = cell(k, row[2], row[3]) end
  md[#md + 1] = ('| %s | %s | %s | %s |'):format(row[1], c[1], c[2], c[3])
end

-- ---- the answer, from the numbers ---------------------------------------------------------------

-- Each measure is compared seed by seed (both nets share the seed's prior draw, so much of the
-- sampling noise cancels): a difference counts when it exceeds twice its standard error.
local function per_seed(key, field)
  local v = {}
  for i, r in ipairs(runs[key]) do
    if field == 'w1' then   -- mean W1 over the times
      v[i] = 0
      for _, t in ipairs(times) do v[i] = v[i] + r['w1_' .. t] / #times end
    else
      v[i] = r[field]
    end
  end
  return v
end
local function mean(v) local m = 0; for _, x in ipairs(v) do m = m + x / #v end; return m end

local criteria = { { 'score error', 'score_error' },
                   { 'mean W1 over t = ' .. table.concat(times, ', '), 'w1' },
                   { 'std at t = 0', 'x0_std' } }
local wins, parts = { mlp = 0, temb = 0 }, {}
for _, c in ipairs(criteria) do
  local a, b = per_seed('mlp', c[2]), per_seed('temb', c[2])
  local d = {}
  for i = 1, #a do d[i] = b[i] - a[i] end
  local md, sd = mean(d), 0
  for _, x in ipairs(d) do sd = sd + (x - md) ^ 2 end
  local clear = #d < 2 or math.abs(md) > 2 * math.sqrt(sd / (#d - 1) / #d)
  local ma, mb = mean(a), mean(b)
  local judgement = 'no clear difference'
  if clear and md ~= 0 then
    local w = md < 0 and 'temb' or 'mlp'
    wins[w] = wins[w] + 1
    judgement = ('%s better, %.1fx'):format(w == 'mlp' and 'MLP' or 'time-embedded',
                                              math.max(ma, mb) / math.min(ma, mb))
  end
  parts[#parts + 1] = ('%s %.4f vs %.4f (%s)'):format(c[1], ma, mb, judgement)
end
local verdict = wins.temb > 0 and wins.mlp == 0 and 'yes, the time embedding helps'
  or wins.mlp > 0 and wins.temb == 0 and 'no, the time embedding does not help'
  or wins.mlp == 0 and 'no clear difference between the two nets'
  or 'mixed: each net is better on some measures'
local speed = stats('temb', 'train_s') / stats('mlp', 'train_s')
local conclusion = ('Conclusion (%s, MLP vs time-embedded): %s: %s; the exact-score ODE leaves std %.4f at t = 0. '
  .. 'The time-embedded net has %.0fx the parameters and trains %.1fx %s.')
  :format(opts.seeds > 1 and opts.seeds .. ' seeds, compared seed by seed' or 'one seed, no spread estimate',
          verdict, table.concat(parts, '; '), stats('exact', 'x0_std'),
          stats('temb', 'params') / stats('mlp', 'params'),
          speed >= 1 and speed or 1 / speed, speed >= 1 and 'slower' or 'faster')

local header = ('Seed experiment: VE kappa %g, data at the origin (batch %d), %d Adam steps at lr %g; '
  .. '%d samples, Euler ODE with %d steps from one prior draw per seed; seeds %d..%d (mean ± sd). %s')
  :format(opts.kappa, opts.batch, opts.steps, opts.lr, opts.samples, N, opts.seed,
          opts.seed + opts.seeds - 1, diffuse.summary())
print('\n' .. header .. '\n\n' .. table.concat(md, '\n') .. '\n\n' .. conclusion .. '\n')

local f = assert(io.open(path 'compare_networks.md', 'w'))
f:write('# Does a time embedding help?\n\n', header, '\n\n', table.concat(md, '\n'), '\n\n', conclusion, '\n')
f:close()
print('wrote ' .. path 'compare_networks.md')

-- every run, one line per net and seed, for further analysis
local fields = { 'seed', 'params', 'final_loss', 'last100_loss', 'score_error' }
for _, t in ipairs(times) do fields[#fields + 1] = 'w1_' .. t; fields[#fields + 1] = 'ks_' .. t end
for _, k in ipairs{ 'x0_mean', 'x0_std', 'train_s', 'sample_s' } do fields[#fields + 1] = k end
f = assert(io.open(path 'compare_networks.csv', 'w'))
f:write('net,', table.concat(fields, ','), '\n')
for _, key in ipairs(cols) do
  for _, r in ipairs(runs[key]) do
    local v = {}
    for i, k in ipairs(fields) do v[i] = r[k] == nil and '' or ('%.8g'):format(r[k]) end
    f:write(key, ',', table.concat(v, ','), '\n')
  end
end
f:close()
print('wrote ' .. path 'compare_networks.csv')

-- ---- figures (the first seed) -------------------------------------------------------------------

local function running_mean(l, half)   -- centred, so the smooth curve does not lag the raw one
  local out = {}
  for i = 1, #l do
    local a, b, sum = math.max(1, i - half), math.min(#l, i + half), 0
    for j = a, b do sum = sum + l[j] end
    out[i] = sum / (b - a + 1)
  end
  return out
end

local fig = plot.figure{ cols = 2, width = 1100, height = 400,
                         title = ('Plain MLP vs time-embedded net, seed %d'):format(opts.seed) }
local half = math.max(1, math.min(25, opts.steps // 20))
for i, n in ipairs(nets) do
  local l = first[n.key].losses
  fig[1]:line(l, { color = 'C' .. (i - 1), width = 0.7, alpha = 0.3 })
  fig[1]:line(running_mean(l, half), { color = 'C' .. (i - 1), width = 2,
                                       label = n.name .. (' (running mean of %d)'):format(2 * half + 1) })
  local b = first[n.key].bins
  local mid = {}
  for j = 1, #b.mean do mid[j] = 0.5 * (b.edges[j] + b.edges[j + 1]) end
  fig[2]:line(mid, b.mean, { color = 'C' .. (i - 1), width = 2, label = n.name })
  fig[2]:scatter(mid, b.mean, { color = 'C' .. (i - 1), size = 3 })
end
fig[1]:yscale('log'):title('DSM training loss'):xlabel('step'):ylabel('loss'):grid()
fig[2]:yscale('log'):title('score error by time, E[σ²|s_net − s|²]'):xlabel('t'):ylabel('score error'):grid()
print('wrote ' .. fig:save(path 'compare_losses.svg'))

fig = plot.figure{ rows = 2, cols = #record, height = 560,
                   title = ('Learned denoising: Euler ODE, %d steps from the same prior draw (seed %d)'):format(N, opts.seed) }
for row, n in ipairs(nets) do
  local xs, r = first[n.key].xs, first[n.key].r
  for col, k in ipairs(record) do
    local t, x, p = 1 - k / N, xs[k], fig:panel(row, col)
    local s = ve:sigma(t)
    local lim = 4 * math.max(s, x:std())
    p:hist(x, { bins = 50, range = { -lim, lim }, density = true, color = 'C' .. (row - 1), label = 'samples' })
    if t > 0 then
      local grid = tensor.linspace(-lim, lim, 400)
      p:line(grid, diffuse.heat.density(grid, s), { dash = true, color = '#222222', label = 'N(0, σ(t)²)' })
      p:text(0.97, 0.93, ('W1 %.3f'):format(r['w1_' .. t]), { coords = 'axes', size = 10, anchor = 'end' })
    else
      p:hist(first.exact.xs[k], { bins = 50, range = { -lim, lim }, density = true, histtype = 'step',
                                  color = '#222222', label = 'exact score' })
      p:text(0.03, 0.93, ('std %.3f'):format(r.x0_std), { coords = 'axes', size = 10 })
    end
    p:title(('%s, t = %g'):format(n.name, t)):xlabel('x')
    if col == 1 then p:ylabel('density') end
    -- one legend per row: the first column's in its free upper-left corner, and the last column's
    if col == 1 then p:legend{ loc = 'upper left' } elseif col < #record then p:legend(false) end
  end
end
print('wrote ' .. fig:save(path 'compare_samples.svg'))
