-- bench/sample.lua: the exact-score Euler sampler (200 steps) at 8192 and 1,048,576 samples,
-- beside the PyTorch reference (sample_exact, sample_exact_1m) in the same run, single thread.
local diffuse = require 'diffuse'
local B = require 'common'

local ve = diffuse.ve(1.1)
local score = diffuse.score.exact(ve)
local sampler = diffuse.sampler{ diffuser = ve, steps = 200, method = 'euler' }
local threads = tonumber(arg and arg[1]) or 1
if diffuse.set_threads then diffuse.set_threads(threads) end

local rows = {}
for _, w in ipairs{ { 'sample_exact', 8192, 7 }, { 'sample_exact_1m', 1048576, 5 } } do
  diffuse.seed(0)
  local x1 = ve:prior(w[2])
  local x0
  rows[#rows + 1] = B.versus(w[1], function() x0 = sampler:run(x1, score) end, w[1], threads, w[3])
  -- the same check the reference prints: x0 / x1 is the Euler factor F = 0.0379518
  io.stderr:write(('%s: x0 std %.5f (predicted %.5f)\n'):format(w[1], x0:std(), 0.0379518 * x1:std()))
end
B.report(rows, ('exact-score Euler sampler, 200 steps (%s)'):format(diffuse.summary()))
