-- examples/tensor_tour.lua: a short tour of diffuse's tensors (what `make demo` ran before the
-- experiments existed): creation, broadcasting, reductions, the heat kernel by hand.
local diffuse = require 'diffuse'
local tensor = diffuse.tensor

print(diffuse.summary())
diffuse.seed(1234)

-- samples of the heat kernel at width sigma: x = sigma * eta, eta ~ N(0, 1)
local sigma = 0.5
local x = sigma * tensor.randn(100000, 1)
print(('mean %.4f  std %.4f  (expected 0 and %.4f)'):format(x:mean(), x:std(), sigma))

-- numpy-style broadcasting: a [B,1] column against a [1,3] row gives [B,3]
local scales = tensor.new{{0.5, 1, 2}}
local y = x * scales
print('std of each column:', y:std(1))

-- the analytic density N(0, sigma^2) on a grid, against a normalised histogram
local counts, edges = x:histogram{bins = 12, min = -1.5, max = 1.5, density = true}
local c, e = counts:totable(), edges:totable()
print(('%9s %9s %9s'):format('x', 'hist', 'density'))
for i = 1, #c do
  local m = 0.5 * (e[i] + e[i + 1])
  local p = math.exp(-m * m / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))
  print(('%9.3f %9.4f %9.4f'):format(m, c[i], p))
end
print(tensor.linspace(-1, 1, 5):reshape(5, 1):matmul(tensor.ones(1, 3)))
