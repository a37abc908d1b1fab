-- examples/time_embedding_study.lua: the seed's open question, "is the time embedding no better,
-- or badly set up?", answered with composed networks. On the seed's problem (the heat kernel from
-- the origin, VE kappa 1.1, 1000 Adam steps) it trains, over --seeds seeds with the same random
-- streams for every net: the plain MLP; the seed's time-embedded net with Fourier scales 30 (the
-- seed's), 10, 3, 1 and 0.3; a multiplicative (FiLM-style) embedding of t; and the toy notebooks'
-- feature net. Each is judged against the exact answer: the score error, the W1 distance of one
-- Euler ODE run's samples to N(0, sigma(t)^2) at several t, the std left at t = 0 (the exact
-- score leaves 0.056 there with these 100 steps), and its training time. One table (markdown and
-- CSV), one figure, and a conclusion printed from the numbers.
--   lua5.4 examples/time_embedding_study.lua [--out DIR] [--device cuda] [--seeds 5] [--help]
local diffuse = require 'diffuse'
local tensor, plot, metrics, nn = diffuse.tensor, diffuse.plot, diffuse.metrics, diffuse.nn

local opts = diffuse.cli.parse(arg, {
  out = 'out', device = 'cpu', seed = 0,
  seeds = { 5, 'train each net with seeds seed .. seed + seeds - 1' },
  kappa = { 1.1, 'VE diffuser: g(t) = kappa^t' },
  steps = { 1000, 'training steps' },
  batch = { 1024, 'rows of training data (all zeros: the data sit at the origin)' },
  lr = { 1e-3, 'Adam learning rate' },
  samples = { 4096, 'samples per ODE run' },
  sample_steps = { 100, 'Euler steps of the reverse ODE' },
}, 'time_embedding_study.lua: is the time embedding no better, or badly set up?')
local path = diffuse.cli.setup(opts)
local clock = diffuse.core.clock

local ve = diffuse.ve(opts.kappa)
local exact = diffuse.score.exact(ve)
local N = opts.sample_steps
local times = { 0.75, 0.5, 0.25, 0.1 }
local record = {}
for i, t in ipairs(times) do record[i] = math.floor((1 - t) * N + 0.5) end
record[#record + 1] = N

-- the toy notebooks' frequencies: log-spaced from e^-5 to e^5
local w = {}
for k = 1, 25 do w[k] = math.exp(-10 * (k / 25 - 0.5)) end

local function temb(scale) -- the seed's time-embedded net, spelled out
  return function()
    return nn.net{ dim = 1, forward = function(x, t)
      local e = nn.linear(8)(nn.fourier(t, { embed = 256, scale = scale })):silu()
      return nn.linear(1)((nn.linear(8)(x) + e):silu())
    end }
  end
end

local nets = {
  { key = 'mlp', name = 'plain MLP', make = function()
    return nn.net{ dim = 1, forward = function(x, t)
      local h = nn.linear(8)(nn.cat{ x, t }):silu()
      h = nn.linear(8)(h):silu()
      h = nn.linear(8)(h):silu()
      return nn.linear(1)(h)
    end }
  end },
  { key = 'temb30', name = 'time-embedded, scale 30 (seed)', make = temb(30) },
  { key = 'temb10', name = 'time-embedded, scale 10', make = temb(10) },
  { key = 'temb3', name = 'time-embedded, scale 3', make = temb(3) },
  { key = 'temb1', name = 'time-embedded, scale 1', make = temb(1) },
  { key = 'temb0.3', name = 'time-embedded, scale 0.3', make = temb(0.3) },
  -- FiLM: features of t scale and shift the hidden units of an 8-wide net on x
  { key = 'film', name = 'FiLM (multiplicative)', make = function()
    return nn.net{ dim = 1, forward = function(x, t)
      local e = nn.fourier(t, { frequencies = w })
      local h = nn.linear(8)(x)
      for _ = 1, 2 do
        h = (h * (nn.linear(8)(e) + 1) + nn.linear(8)(e)):silu()
        h = nn.linear(8)(h)
      end
      return nn.linear(1)(h:silu())
    end }
  end },
  { key = 'feat', name = 'feature net (toy notebooks)', make = function()
    return nn.net{ dim = 1, forward = function(x, t)
      local h = nn.cat{ x, nn.fourier(t, { frequencies = w }) }
      for _ = 1, 3 do h = nn.linear(64)(h):silu() end
      return nn.linear(1)(h)
    end }
  end },
}

local runs, first = {}, {}
for _, n in ipairs(nets) do runs[n.key] = {} end
runs.exact = {}
for s = opts.seed, opts.seed + opts.seeds - 1 do
  diffuse.seed(s)
  local x1 = ve:prior(opts.samples) -- one start for every sampler of this seed
  local rng_seed, rng_stream = diffuse.rng_state()
  local sampler = diffuse.sampler{ diffuser = ve, steps = N, method = 'euler' }
  local function judge(score, r)
    local x0, xs = sampler:run(x1, score, { record = record })
    for i, t in ipairs(times) do r['w1_' .. t] = metrics.wasserstein1(xs[record[i]], metrics.normal(0, ve:sigma(t))) end
    r.x0_std = x0:std()
  end
  for _, n in ipairs(nets) do
    diffuse.set_rng_state(rng_seed, rng_stream) -- every net draws the same random numbers
    local net = n.make()
    local start = clock()
    local losses = diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(opts.batch, 1),
                                  steps = opts.steps, lr = opts.lr }
    local r = { seed = s, train_s = clock() - start, params = net:num_parameters() }
    local l = losses:totable()
    r.last100_loss = 0
    for i = #l - math.min(100, #l) + 1, #l do r.last100_loss = r.last100_loss + l[i] / math.min(100, #l) end
    diffuse.set_rng_state(rng_seed, 1 << 20) -- the same (t, x) draws for every net
    local err, bins = metrics.score_error(net, ve, exact, { n = 16384, bins = 10 })
    r.score_error = err
    judge(diffuse.score.net(net, ve), r)
    runs[n.key][#runs[n.key] + 1] = r
    if s == opts.seed then first[n.key] = bins end
    print(('seed %d  %-32s %6.2f s: score error %.4f, W1 at t = 0.25 %.4f, std at t = 0 %.4f')
      :format(s, n.name, r.train_s, r.score_error, r['w1_0.25'], r.x0_std))
  end
  local r = { seed = s }
  judge(exact, r)
  runs.exact[#runs.exact + 1] = r
end

-- ---- the table ------------------------------------------------------------------------------

local function stats(key, field)
  local rs, m, v = runs[key], 0, 0
  for _, r in ipairs(rs) do m = m + r[field] / #rs end
  for _, r in ipairs(rs) do v = v + (r[field] - m) ^ 2 end
  return m, #rs > 1 and math.sqrt(v / (#rs - 1)) or 0
end

local columns = { { 'params', 'parameters', '%d' }, { 'last100_loss', 'loss (last 100)', '%.4f' },
                  { 'score_error', 'score error', '%.4f' } }
for _, t in ipairs(times) do columns[#columns + 1] = { 'w1_' .. t, 'W1 at t = ' .. t, '%.4f' } end
columns[#columns + 1] = { 'x0_std', 'std at t = 0', '%.4f' }
columns[#columns + 1] = { 'train_s', 'train (s)', '%.3f' }

local heads, rule = { '| net' }, { '|---' }
for _, c in ipairs(columns) do heads[#heads + 1] = c[2]; rule[#rule + 1] = '---' end
local md = { table.concat(heads, ' | ') .. ' |', table.concat(rule, '|') .. '|' }
local rows = {}
for _, n in ipairs(nets) do rows[#rows + 1] = { n.key, n.name } end
rows[#rows + 1] = { 'exact', 'exact score (same ODE)' }
for _, row in ipairs(rows) do
  local cells = { '| ' .. row[2] }
  for _, c in ipairs(columns) do
    if runs[row[1]][1][c[1]] == nil then
      cells[#cells + 1] = '–'
    else
      local m, sd = stats(row[1], c[1])
      cells[#cells + 1] = c[3] == '%d' and ('%d'):format(math.floor(m + 0.5))
        or (opts.seeds > 1 and (c[3] .. ' ± ' .. c[3]):format(m, sd) or c[3]:format(m))
    end
  end
  md[#md + 1] = table.concat(cells, ' | ') .. ' |'
end

-- ---- the answer, from the numbers -------------------------------------------------------------

-- a mean score error over seeds, with its standard error; a difference between two nets counts
-- when it exceeds twice the standard error of the seed-by-seed differences
local function paired(a, b, field)
  local d, m, v = {}, 0, 0
  for i = 1, #runs[a] do d[i] = runs[b][i][field] - runs[a][i][field]; m = m + d[i] / #runs[a] end
  for _, x in ipairs(d) do v = v + (x - m) ^ 2 end
  local se = #d > 1 and math.sqrt(v / (#d - 1) / #d) or 0
  return m, se, #d < 2 or math.abs(m) > 2 * se
end

local mlp_err = stats('mlp', 'score_error')
local best, best_err = nil, math.huge
for _, k in ipairs{ 'temb30', 'temb10', 'temb3', 'temb1', 'temb0.3' } do
  local e = stats(k, 'score_error')
  if e < best_err then best, best_err = k, e end
end
local seed_err = stats('temb30', 'score_error')
local _, _, seed_clear = paired('mlp', 'temb30', 'score_error')
local _, _, best_clear = paired('mlp', best, 'score_error')
local _, _, tuned_clear = paired('temb30', best, 'score_error')
local parts = {}
parts[#parts + 1] = ('the seed\'s embedding (scale 30) has score error %.4f against the plain MLP\'s %.4f (%s)')
  :format(seed_err, mlp_err, not seed_clear and 'no clear difference'
          or seed_err < mlp_err and 'better' or ('%.1fx worse'):format(seed_err / mlp_err))
parts[#parts + 1] = ('the best scale, %s, reaches %.4f (%s than the seed\'s scale%s)')
  :format(best:sub(5), best_err, best_err < seed_err and 'better' or 'not better',
          tuned_clear and ', beyond the seeds\' spread' or ', within the seeds\' spread')
-- the two designs that differ from the seed's: which of them is best, and is it clearly better
local other, other_err = 'film', stats('film', 'score_error')
if stats('feat', 'score_error') < other_err then other, other_err = 'feat', stats('feat', 'score_error') end
local _, _, other_clear = paired('mlp', other, 'score_error')
local other_name = other == 'film' and 'the FiLM net (log-spaced frequencies of t scaling and shifting the hidden units, at the seed\'s width)'
  or 'the feature net (log-spaced frequencies, 64 wide)'
local verdict
if best_clear and best_err < mlp_err then
  verdict = 'badly set up: with a smaller Fourier scale the seed\'s embedding beats the plain MLP'
elseif other_clear and other_err < mlp_err then
  verdict = ('no better as the seed sets it up, at any Fourier scale, yet badly set up as a design: '
    .. '%s reaches a score error %.0fx below the plain MLP\'s'):format(other_name, mlp_err / other_err)
else
  verdict = 'no better: neither another Fourier scale nor another design beats the plain MLP'
end
parts[#parts + 1] = ('the FiLM net reaches %.4f and the feature net %.4f, with std %.4f and %.4f at t = 0 '
  .. '(the exact score %.4f with the same ODE, the plain MLP %.4f)'):format(stats('film', 'score_error'),
  stats('feat', 'score_error'), stats('film', 'x0_std'), stats('feat', 'x0_std'), stats('exact', 'x0_std'),
  stats('mlp', 'x0_std'))
local conclusion = ('Conclusion (%d seed%s, compared seed by seed): the time embedding is %s; %s.')
  :format(opts.seeds, opts.seeds > 1 and 's' or '', verdict, table.concat(parts, '; '))

local header = ('The seed\'s problem: VE kappa %g, data at the origin (batch %d), %d Adam steps at lr %g; '
  .. '%d samples, Euler ODE with %d steps from one prior draw per seed; seeds %d..%d (mean ± sd). %s')
  :format(opts.kappa, opts.batch, opts.steps, opts.lr, opts.samples, N, opts.seed,
          opts.seed + opts.seeds - 1, diffuse.summary())
print('\n' .. header .. '\n\n' .. table.concat(md, '\n') .. '\n\n' .. conclusion .. '\n')
local f = assert(io.open(path 'time_embedding_study.md', 'w'))
f:write('# Is the time embedding no better, or badly set up?\n\n', header, '\n\n', table.concat(md, '\n'),
        '\n\n', conclusion, '\n')
f:close()
print('wrote ' .. path 'time_embedding_study.md')

local fields = { 'seed', 'params', 'last100_loss', 'score_error' }
for _, t in ipairs(times) do fields[#fields + 1] = 'w1_' .. t end
fields[#fields + 1] = 'x0_std'
fields[#fields + 1] = 'train_s'
f = assert(io.open(path 'time_embedding_study.csv', 'w'))
f:write('net,', table.concat(fields, ','), '\n')
for _, row in ipairs(rows) do
  for _, r in ipairs(runs[row[1]]) do
    local v = {}
    for i, k in ipairs(fields) do v[i] = r[k] == nil and '' or ('%.8g'):format(r[k]) end
    f:write(row[1], ',', table.concat(v, ','), '\n')
  end
end
f:close()
print('wrote ' .. path 'time_embedding_study.csv')

-- ---- the figure: score error by t, W1 along the ODE, std at t = 0 ------------------------------

local fig = plot.figure{ cols = 3, width = 1500, height = 460,
  title = ('Is the time embedding no better, or badly set up? (%d seed%s)'):format(opts.seeds, opts.seeds > 1 and 's' or '') }
for i, n in ipairs(nets) do
  local color = 'C' .. ((i - 1) % 10)
  local b = first[n.key]
  local mid = {}
  for j = 1, #b.mean do mid[j] = 0.5 * (b.edges[j] + b.edges[j + 1]) end
  fig[1]:line(mid, b.mean, { color = color, width = 2, label = n.name })
  local ws = {}
  for j, t in ipairs(times) do ws[j] = stats(n.key, 'w1_' .. t) end
  fig[2]:line(times, ws, { color = color, width = 2 })
  fig[2]:scatter(times, ws, { color = color, size = 3 })
  local m, sd = stats(n.key, 'x0_std')
  fig[3]:line({ i, i }, { math.max(m - sd, 1e-3), m + sd }, { color = color, width = 2 })
  fig[3]:scatter({ i }, { m }, { color = color, size = 5 })
end
fig[3]:hline(stats('exact', 'x0_std'), { dash = true, color = '#222222', label = 'exact score, same ODE' })
fig[1]:yscale('log'):title('score error by t (first seed)'):xlabel('t'):ylabel('E[σ²|s_net − s|²]'):grid()
fig[1]:legend{ loc = 'upper right' }
fig[2]:title('W1 to N(0, σ(t)²) along the ODE'):xlabel('t'):ylabel('W1 (mean over seeds)'):grid():legend(false)
fig[3]:title('std at t = 0 (mean ± sd over seeds; net 1..' .. #nets .. ' in the legend\'s order)')
  :xlabel('net'):ylabel('std'):grid()
print('wrote ' .. fig:save(path 'time_embedding_study.svg'))
