-- spec/fuzz_objects_spec.lua: the rest of the public face under junk arguments: diffuse.heat,
-- the score sources, diffuse.nn / optim / loss, metrics and the methods of every userdata
-- (diffusers, score sources, samplers, networks, optimizers). As in fuzz_spec.lua: the process
-- survives, and every error is a string naming a diffuse function (or a released object). Calls
-- that write files (save), print (plot.terminal, progress) or may exit (cli.parse) are left out.
local diffuse = require 'diffuse'
local F = require 'support.fuzz'
local tensor = diffuse.tensor

local ve = diffuse.ve(1.1)
local mlp = diffuse.nn.mlp{ dim = 1, hidden = { 3 } }
local temb = diffuse.nn.time_embedded{ dim = 2, hidden = 3, embed = 4 }

-- valid objects join the junk, so functions also meet right types in wrong places
local OBJECTS = {
  function() return ve end,
  function() return diffuse.power(2, 0.5) end,
  function() return diffuse.score.exact(ve) end,
  function() return diffuse.score.mixture(ve, { weights = { 1, 1 }, means = { -1, 1 }, stds = { 0.5, 0.5 } }) end,
  function() return diffuse.score.net(mlp, ve) end,
  function() return mlp end,
  function() return diffuse.sampler{ diffuser = ve, steps = 3 } end,
  function() return { net = mlp, diffuser = ve, data = tensor.zeros(4, 1), steps = 2 } end,
  function() return { diffuser = ve, steps = 2, method = 'heun' } end,
  function() return { weights = { 1 }, means = { 0 }, stds = { 1 } } end,
}

local receivers = {
  diffuser = { function() return ve end, function() return diffuse.power(1.5, 1) end },
  score = { function() return diffuse.score.exact(ve) end,
            function() return diffuse.score.mixture(ve, { weights = { 2, 1 }, means = { { 0, 1 }, { 1, 0 } }, stds = { 1, 2 } }) end,
            function() return diffuse.score.net(mlp, ve) end },
  sampler = { function() return diffuse.sampler{ diffuser = ve, steps = 3, method = 'euler_maruyama' } end },
  net = { function() return diffuse.nn.mlp{ dim = 1, hidden = { 3 } } end,
          function() return diffuse.nn.time_embedded{ dim = 2, hidden = 3, embed = 4 } end },
  optim = { function() return diffuse.optim.adam(diffuse.nn.mlp{ dim = 1, hidden = { 2 } }) end },
}

-- the methods of a userdata class, from its metatable's __index closure
local function methods_of(obj)
  local index = getmetatable(obj).__index
  local _, methods = debug.getupvalue(index, 1)
  local names = {}
  for k, v in pairs(methods) do
    if type(v) == 'function' and k ~= 'save' and k ~= 'free' then names[#names + 1] = k end
  end
  table.sort(names)
  return methods, names
end

describe('fuzz: heat, scores, networks, training, metrics', function()
  local n_junk
  setup(function()
    F.keep_state()
    n_junk = #F.JUNK
    for _, o in ipairs(OBJECTS) do F.JUNK[#F.JUNK + 1] = o end
    F.TUPLES = 300
  end)

  teardown(function()
    for i = #F.JUNK, n_junk + 1, -1 do F.JUNK[i] = nil end
    F.TUPLES = 600
    F.restore()
    collectgarbage()
  end)

  local modules = {
    heat = diffuse.heat, score = diffuse.score, nn = diffuse.nn, optim = diffuse.optim,
    loss = diffuse.loss,
  }
  for _, mname in ipairs{ 'heat', 'score', 'nn', 'optim', 'loss' } do
    for _, name in ipairs(F.sorted_functions(modules[mname])) do
      local label = 'diffuse.' .. mname .. '.' .. name
      it(label, function() F.fuzz(label, modules[mname][name]) end)
    end
  end

  for _, name in ipairs{ 'wasserstein1', 'ks', 'moments', 'score_error', 'normal', 'normal_cdf',
                         'normal_pdf', 'normal_quantile', 'erf', 'erfc', 'kolmogorov_sf' } do
    it('diffuse.metrics.' .. name, function()
      F.fuzz('diffuse.metrics.' .. name, diffuse.metrics[name])
    end)
  end

  it('diffuse.plot.figure and its panels', function()
    F.fuzz('diffuse.plot.figure', diffuse.plot.figure)
    local fig = diffuse.plot.figure{ cols = 2 }
    for _, m in ipairs{ 'hist', 'line', 'scatter', 'image', 'title', 'xlabel', 'ylabel', 'xlim',
                        'ylim', 'xscale', 'yscale', 'legend', 'grid', 'text', 'hline', 'vline' } do
      F.fuzz('panel:' .. m, fig[1][m], function() return fig[1] end)
    end
    assert.is_string(fig:svg())
  end)

  it('diffuse.cli.read', function() F.fuzz('diffuse.cli.read', diffuse.cli.read) end)

  for kind, makers in pairs(receivers) do
    it('the methods and calls of ' .. kind .. ' objects', function()
      for _, make in ipairs(makers) do
        local methods, names = methods_of(make())
        for _, name in ipairs(names) do F.fuzz(kind .. ':' .. name, methods[name], make) end
        local mt = getmetatable(make())
        if mt.__call then F.fuzz(kind .. '(...)', function(o, ...) return o(...) end, make) end
        F.fuzz('tostring(' .. kind .. ')', function(o) return tostring(o) end, make)
      end
    end)
  end

  it('leaves the library working and the state as it was', function()
    collectgarbage()
    local S, s = diffuse.rng_state()
    local S0, s0 = F.state()
    assert.are.equal(S0, S)
    assert.are.equal(s0, s)
    local x0 = diffuse.sampler{ diffuser = ve, steps = 10 }:run(tensor.ones(4, 1), diffuse.score.exact(ve))
    assert.is_true(x0:max() < 1)
    assert.equal(1, temb.dim == 2 and 1 or 0)
  end)
end)
