-- spec/fuzz_graph_spec.lua: the network builder under junk. nn.net, nn.linear, nn.cat,
-- nn.fourier and nn.from_graph with junk arguments; forwards that apply random operations to
-- random operands (nodes of this net and of others, numbers, junk) from a fixed pseudo-random
-- sequence; and graph texts with random damage. The process must survive, every error must be a
-- string naming a diffuse function, and every net that comes out must run forward, backward and
-- a DSM step. Run it under `make asan` to catch memory errors too.
local diffuse = require 'diffuse'
local H = require 'support.helpers'
local F = require 'support.fuzz'
local tensor, nn = diffuse.tensor, diffuse.nn

local rng = H.lcg(20261202)
local function pick(list) return list[math.floor(rng() * #list) + 1] end
local function int(a, b) return a + math.floor(rng() * (b - a + 1)) end

local function acceptable(ok, err)
  if ok then return true end
  return type(err) == 'string' and H.strip_where(err):find('^diffuse%.') ~= nil
end

-- a net that came out must run
local function exercise(net)
  local d = net.dim
  local x = tensor.randn(37, d)
  local y = net:forward(x, tensor.rand(37))
  assert(y:size(1) == 37 and y:size(2) == d)
  net:backward(tensor.ones(37, d))
  local loss = diffuse.loss.dsm(net, diffuse.ve(1.1), x * 0.1)
  assert(type(loss) == 'number')
  net:forward(x, 0.5)
end

describe('fuzz the network builder', function()
  setup(F.keep_state)
  teardown(function() F.restore(); collectgarbage() end)

  for _, name in ipairs{ 'net', 'linear', 'cat', 'fourier', 'from_graph' } do
    it('diffuse.nn.' .. name .. ' with junk arguments', function() F.fuzz('diffuse.nn.' .. name, nn[name]) end)
  end

  it('forwards of random operations on random operands', function()
    local stale -- a node of an earlier net
    local made, failed = 0, 0
    for trial = 1, 300 do
      local dim = pick{ 1, 1, 2, 3 }
      local forward = function(x, t)
        local nodes = { x, t }
        local layers = {}
        for _ = 1, int(1, 12) do
          local a, b = pick(nodes), pick(nodes)
          local r = rng()
          local junk = rng() < 0.04 and pick{ 'a', {}, true, 0 / 0, stale or 1, nn.linear(2) } or nil
          local n
          if r < 0.25 then
            local L = (rng() < 0.3 and #layers > 0) and pick(layers) or nn.linear(pick{ 1, 2, 3, 5, dim })
            layers[#layers + 1] = L
            n = L(junk or a)
          elseif r < 0.35 then n = nn.cat{ a, junk or b }
          elseif r < 0.45 then n = a + (junk or b)
          elseif r < 0.5 then n = a - (junk or pick{ b, 2.5 })
          elseif r < 0.58 then n = a * (junk or pick{ b, -1.5 })
          elseif r < 0.62 then n = a / (junk or pick{ 3, 0, b })
          elseif r < 0.66 then n = pick{ 1, 2 } - a
          elseif r < 0.72 then n = nn.fourier(junk or pick{ t, a }, pick{ { embed = 4, scale = 2 }, { frequencies = { 1, 2 } }, { embed = 3 } })
          else n = a[pick{ 'silu', 'relu', 'tanh', 'gelu', 'sigmoid', 'sin', 'cos', 'exp', 'square' }](a) end
          nodes[#nodes + 1] = n
        end
        stale = x
        local out = pick(nodes)
        if out.width ~= dim and rng() < 0.8 then out = nn.linear(dim)(out) end
        if rng() < 0.05 then return out, out end
        return out
      end
      local ok, net = pcall(nn.net, { dim = dim, forward = forward, output = pick{ nil, 'noise', 'denoiser' } })
      F.restore()
      assert(acceptable(ok, net), ('trial %d: %s'):format(trial, tostring(net)))
      if ok then
        made = made + 1
        exercise(net)
        -- its text rebuilds it
        local again = nn.from_graph(net.graph)
        assert.equal(net.graph, again.graph)
      else
        failed = failed + 1
      end
    end
    assert.is_true(made > 20 and failed > 20, ('%d made, %d refused'):format(made, failed))
  end)

  it('graph texts with random damage', function()
    diffuse.seed(3)
    local base = nn.net{ dim = 2, forward = function(x, t)
      local h = nn.linear(4)(nn.cat{ x, nn.fourier(t, { embed = 4 }) }):silu()
      return nn.linear(2)(h * nn.linear(1)(t) + h:sin()) + x
    end }.graph
    local words = {}
    for w in base:gmatch('%S+') do words[#words + 1] = w end
    local junk = { '0', '-1', '99999', '1e40', 'nan', 'x', 'node', 'layer', 'output', 'linear', '\n', '',
                   '2147483648', '4097', '0.5', 'gauss', 'freqs', 'cat', '1e-45' }
    local made = 0
    for trial = 1, 400 do
      local w = { table.unpack(words) }
      for _ = 1, int(1, 3) do
        local i = int(1, #w)
        local r = rng()
        if r < 0.6 then w[i] = pick(junk)
        elseif r < 0.8 then table.remove(w, i)
        else table.insert(w, i, pick(junk)) end
      end
      -- rebuild the lines: a line break before each item word
      local text = table.concat(w, ' '):gsub(' (node) ', '\n%1 '):gsub(' (layer) ', '\n%1 ')
        :gsub(' (output) ', '\n%1 '):gsub(' (dim) ', '\n%1 ')
      local ok, net = pcall(nn.from_graph, text)
      assert(acceptable(ok, net), ('trial %d: %s'):format(trial, tostring(net)))
      if ok then
        made = made + 1
        exercise(net)
      end
    end
    assert.is_true(made < 400)
  end)
end)
