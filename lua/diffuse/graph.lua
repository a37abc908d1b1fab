-- diffuse.graph: the builder behind diffuse.nn.net, nn.linear, nn.cat and nn.fourier. A net's
-- forward is an ordinary Lua function, run once here on symbolic nodes; every operation checks
-- its operands' shapes as it is made (the error points at the forward's line) and records a node.
-- The trace becomes the graph's text (native/graph.c documents it), which the core checks again
-- and runs natively from then on: no Lua per step, layer or row.
local M = {}

local MAX_WIDTH, MAX_LAYER, MAX_NODES, MAX_DEPTH = 16384, 4096, 4096, 8
local FNAME = 'diffuse.nn.net'

local Node = { __name = 'diffuse.nn.node' }
local Layer = { __name = 'diffuse.nn.linear' }
local methods = {}

local active = {} -- the traces being built, innermost last

local function kind(v)
  local mt = getmetatable(v)
  if mt == Node then return 'a node' end
  if mt == Layer then return 'a layer' end
  return type(v) == 'number' and 'a number' or ('a ' .. type(v))
end

-- an error from the builder, raised at the line of the forward that made the bad node: the first
-- frame outside this file (none when the forward reached the builder by a tail call, `return
-- nn.linear(1)(h)`: nn.net then names the forward instead); noted in the trace so nn.net passes
-- it on unwrapped
local here = debug.getinfo(1, 'S').source
local function fail(tr, msg, fname)
  msg = (fname or FNAME) .. ': ' .. msg
  for level = 2, 64 do
    local info = debug.getinfo(level, 'Sl')
    if not info or info.what == 'C' then break end
    if info.source ~= here then
      msg = info.short_src .. ':' .. info.currentline .. ': ' .. msg
      break
    end
  end
  if tr then tr.failure = msg end
  error(msg, 0)
end

local function current() return active[#active] end

-- n must be a node of the net being built
local function check_node(n, what)
  local tr = current()
  if getmetatable(n) ~= Node then fail(tr, what .. ' must be a node (got ' .. kind(n) .. ')') end
  if n.trace ~= tr then
    fail(tr, what .. ' is a node of another network (nodes are used only inside the forward of the '
      .. 'nn.net that made them)')
  end
  return n
end

local function new_node(tr, op, width, fields)
  if #tr.nodes >= MAX_NODES then fail(tr, ('more than %d nodes'):format(MAX_NODES)) end
  if width > MAX_WIDTH then
    fail(tr, ('%s makes %d columns, at most %d'):format(op, width, MAX_WIDTH))
  end
  local n = fields or {}
  n.trace, n.op, n.width, n.id = tr, op, width, #tr.nodes + 1
  tr.nodes[n.id] = n
  return setmetatable(n, Node)
end

local function num(v)
  return string.format('%.17g', v)
end

-- ---- arithmetic ---------------------------------------------------------------------------

local function binary(op, a, b)
  local tr = current()
  local an, bn = getmetatable(a) == Node, getmetatable(b) == Node
  if an then check_node(a, op .. "'s left operand") end
  if bn then check_node(b, op .. "'s right operand") end
  local sym = ({ add = '+', sub = '-', mul = '*' })[op]
  if an and bn then
    if a.width ~= b.width and a.width ~= 1 and b.width ~= 1 then
      fail(tr, ('%s: shapes [B, %d] and [B, %d] do not broadcast'):format(sym, a.width, b.width))
    end
    local made = new_node(tr, op, math.max(a.width, b.width), { a = a, b = b })
    return made
  end
  local node, c = an and a or b, an and b or a
  if type(c) ~= 'number' then fail(tr, ('%s: expected a node or a number (got %s)'):format(sym, kind(c))) end
  if c ~= c or c == math.huge or c == -math.huge or math.abs(c) > 3.4028234663852886e38 then
    fail(tr, ('%s: the number must be finite in float32 (got %s)'):format(sym, tostring(c)))
  end
  local kop, kc = 'rsubc', c -- c - a
  if op == 'add' then kop = 'addc'
  elseif op == 'mul' then kop = 'mulc'
  elseif an then kop, kc = 'addc', -c end -- a - c = a + (-c), bitwise
  local made = new_node(tr, kop, node.width, { a = node, c = kc })
  return made
end

-- (never tail calls: the error levels count these frames)
Node.__add = function(a, b) local n = binary('add', a, b); return n end
Node.__sub = function(a, b) local n = binary('sub', a, b); return n end
Node.__mul = function(a, b) local n = binary('mul', a, b); return n end
Node.__unm = function(a) local n = binary('mul', a, -1); return n end
Node.__div = function(a, b)
  local tr = current()
  if getmetatable(a) ~= Node then fail(tr, '/: only a node divided by a number (got ' .. kind(a) .. ' / a node)') end
  check_node(a, "/'s left operand")
  if type(b) ~= 'number' then fail(tr, '/: a node divides only by a number (got ' .. kind(b) .. ')') end
  if b == 0 or b ~= b or math.abs(b) > 3.4028234663852886e38 then
    fail(tr, '/: the divisor must be a non-zero finite number (got ' .. tostring(b) .. ')')
  end
  local made = new_node(tr, 'divc', a.width, { a = a, c = b })
  return made
end
Node.__pow = function(a, b)
  local tr = current()
  if getmetatable(a) ~= Node or b ~= 2 then fail(tr, '^: only node ^ 2 (square) is supported') end
  check_node(a, "^'s operand")
  local made = new_node(tr, 'square', a.width, { a = a })
  return made
end
Node.__concat = function() fail(current(), '..: nodes do not concatenate (nn.cat{a, b} puts columns side by side)') end
Node.__tostring = function(n)
  return ('diffuse.nn.node %d (%s) [B, %d]'):format(n.id, n.op, n.width)
end
Node.__len = function(n) return n.width end

for _, f in ipairs{ 'silu', 'relu', 'tanh', 'gelu', 'sigmoid', 'sin', 'cos', 'exp', 'square' } do
  methods[f] = function(self)
    check_node(self, f .. "'s node")
    local made = new_node(self.trace, f, self.width, { a = self })
    return made
  end
end

--- node:mean() --> [B, 1], the mean of its columns (x - x:mean() projects rows onto sum 0)
function methods.mean(self)
  check_node(self, "mean's node")
  local made = new_node(self.trace, 'mean', 1, { a = self })
  return made
end

--- node:col(i) --> [B, 1], its column i (1-based)
function methods.col(self, i)
  check_node(self, "col's node")
  if math.type(i) ~= 'integer' and not (type(i) == 'number' and i == math.floor(i)) then
    fail(self.trace, 'col: the column must be a whole number (got ' .. kind(i) .. ')')
  end
  if i < 1 or i > self.width then
    fail(self.trace, ('col: column %s of a [B, %d] node'):format(tostring(i), self.width))
  end
  local made = new_node(self.trace, 'col', 1, { a = self, column = math.tointeger(i) })
  return made
end

local fields = { trace = true, column = true, op = true, width = true, id = true, a = true, b = true, c = true,
                 list = true, layer = true, freqs = true, embed = true, scale = true }
Node.__index = function(n, k)
  if methods[k] then return methods[k] end
  if fields[k] then return nil end -- (a field this node does not have)
  if k == 'shape' then return { 'B', rawget(n, 'width') } end
  local names = {}
  for name in pairs(methods) do names[#names + 1] = name end
  table.sort(names)
  fail(rawget(n, 'trace'), "a node has no field '" .. tostring(k) .. "' (methods: "
    .. table.concat(names, ', ') .. '; fields: width, shape)')
end

-- ---- layers, cat, fourier -------------------------------------------------------------------

--- nn.linear(out [, {bias = true}]) --> a layer; layer(node) applies it (applied again, it shares
--- its weight and bias)
function M.linear(out, opts)
  local fname, tr = 'diffuse.nn.linear', current()
  if type(out) ~= 'number' or out ~= math.floor(out) or out < 1 or out > MAX_LAYER then
    fail(tr, ('out must be a whole number from 1 to %d (got %s)'):format(MAX_LAYER, tostring(out)), fname)
  end
  local bias = true
  if opts ~= nil then
    if type(opts) ~= 'table' then fail(tr, 'options must be a table ({bias = true})', fname) end
    for k in pairs(opts) do
      if k ~= 'bias' then fail(tr, "unknown option '" .. tostring(k) .. "'", fname) end
    end
    if opts.bias ~= nil then
      if type(opts.bias) ~= 'boolean' then fail(tr, 'bias must be true or false', fname) end
      bias = opts.bias
    end
  end
  return setmetatable({ out = math.tointeger(out), bias = bias }, Layer)
end

Layer.__call = function(L, x)
  local tr = current()
  if not tr then error('diffuse.nn.linear: a layer is applied inside the forward of an nn.net', 2) end
  check_node(x, 'the layer\'s input')
  if L.trace and L.trace ~= tr then
    fail(tr, 'this layer belongs to another network (a layer is shared only within one net)')
  end
  if not L.trace then
    L.trace, L.inputs = tr, x.width
    tr.layers[#tr.layers + 1] = L
    L.index = #tr.layers
    if x.width > MAX_LAYER then
      fail(tr, ('linear %d: %d inputs, at most %d'):format(L.index, x.width, MAX_LAYER))
    end
  elseif x.width ~= L.inputs then
    fail(tr, ('linear %d expects %d inputs, got %d'):format(L.index, L.inputs, x.width))
  end
  local made = new_node(tr, 'linear', L.out, { a = x, layer = L })
  return made
end
Layer.__index = function(L, k)
  if k == 'parameters' then
    local i = rawget(L, 'inputs')
    return i and i * L.out + (L.bias and L.out or 0) or nil
  end
  return nil
end
Layer.__tostring = function(L)
  return ('diffuse.nn.linear(%s, %d%s)'):format(L.inputs and tostring(L.inputs) or '?', L.out,
    L.bias and '' or ', no bias')
end

--- nn.cat{a, b, ...}: the nodes' columns side by side
function M.cat(list)
  local tr = current()
  if not tr then error('diffuse.nn.cat: nodes exist only inside the forward of an nn.net', 2) end
  if type(list) ~= 'table' or getmetatable(list) == Node then
    fail(tr, 'nn.cat expects a list of nodes ({x, t})')
  end
  if #list < 1 then fail(tr, 'nn.cat of an empty list') end
  local w = 0
  for i, n in ipairs(list) do
    check_node(n, 'nn.cat item ' .. i)
    w = w + n.width
  end
  for k in pairs(list) do
    if math.type(k) ~= 'integer' or k < 1 or k > #list then fail(tr, 'nn.cat expects a plain list of nodes') end
  end
  if w > MAX_WIDTH then fail(tr, ('nn.cat makes %d columns, at most %d'):format(w, MAX_WIDTH)) end
  local made = new_node(tr, 'cat', w, { list = { table.unpack(list) } })
  return made
end

--- nn.fourier(t, {embed = 256, scale = 30}): [sin 2 pi t W, cos 2 pi t W], W ~ N(0, scale^2)
--- fixed (the seed's Gaussian Fourier features); nn.fourier(t, {frequencies = {...}}): [sin w t,
--- cos w t] for the given angular frequencies. t: any [B, 1] node.
function M.fourier(u, opts)
  local tr = current()
  if not tr then error('diffuse.nn.fourier: nodes exist only inside the forward of an nn.net', 2) end
  check_node(u, 'nn.fourier\'s input')
  if u.width ~= 1 then fail(tr, ('nn.fourier expects a [B, 1] node, got [B, %d]'):format(u.width)) end
  opts = opts or {}
  if type(opts) ~= 'table' then fail(tr, 'nn.fourier: options must be a table') end
  for k in pairs(opts) do
    if k ~= 'embed' and k ~= 'scale' and k ~= 'frequencies' then
      fail(tr, "nn.fourier: unknown option '" .. tostring(k) .. "'")
    end
  end
  if opts.frequencies ~= nil then
    if opts.embed ~= nil or opts.scale ~= nil then
      fail(tr, 'nn.fourier: frequencies, or embed and scale, not both')
    end
    local w = opts.frequencies
    if type(w) ~= 'table' or #w < 1 then fail(tr, 'nn.fourier: frequencies must be a list of numbers') end
    if #w > MAX_WIDTH // 2 then
      fail(tr, ('nn.fourier: %d frequencies, at most %d'):format(#w, MAX_WIDTH // 2))
    end
    local copy = {}
    for i, v in ipairs(w) do
      if type(v) ~= 'number' or v ~= v or math.abs(v) > 1e6 then
        fail(tr, ('nn.fourier: frequency %d must be a number of at most 1e6 in size (got %s)'):format(i, tostring(v)))
      end
      copy[i] = v
    end
    local made = new_node(tr, 'fourier', 2 * #copy, { a = u, freqs = copy })
    return made
  end
  local embed, scale = opts.embed or 256, opts.scale or 30
  if type(embed) ~= 'number' or embed ~= math.floor(embed) or embed < 2 or embed > 8192 or embed % 2 ~= 0 then
    fail(tr, 'nn.fourier: embed must be even, from 2 to 8192 (got ' .. tostring(embed) .. ')')
  end
  if type(scale) ~= 'number' or not (scale > 0 and scale <= 1e5) then
    fail(tr, 'nn.fourier: scale must be positive, at most 1e5 (got ' .. tostring(scale) .. ')')
  end
  local made = new_node(tr, 'fourier', math.tointeger(embed), { a = u, embed = math.tointeger(embed), scale = scale })
  return made
end

-- ---- the trace to text ----------------------------------------------------------------------

local function text_of(tr, out)
  local lines = { 'diffuse.net 1', 'dim ' .. tr.dim }
  for _, L in ipairs(tr.layers) do
    lines[#lines + 1] = ('layer %d %d %d'):format(L.inputs, L.out, L.bias and 1 or 0)
  end
  for _, n in ipairs(tr.nodes) do
    local op, s = n.op, nil
    if op == 'x' or op == 't' then s = 'node ' .. op
    elseif op == 'linear' then s = ('node linear %d %d'):format(n.a.id, n.layer.index)
    elseif op == 'cat' then
      local ids = {}
      for i, m in ipairs(n.list) do ids[i] = m.id end
      s = ('node cat %d %s'):format(#ids, table.concat(ids, ' '))
    elseif op == 'add' or op == 'sub' or op == 'mul' then s = ('node %s %d %d'):format(op, n.a.id, n.b.id)
    elseif op == 'addc' or op == 'mulc' or op == 'rsubc' or op == 'divc' then
      s = ('node %s %d %s'):format(op, n.a.id, num(n.c))
    elseif op == 'col' then s = ('node col %d %d'):format(n.a.id, n.column)
    elseif op == 'fourier' then
      if n.freqs then
        local ws = {}
        for i, w in ipairs(n.freqs) do ws[i] = num(w) end
        s = ('node fourier %d freqs %d %s'):format(n.a.id, #ws, table.concat(ws, ' '))
      else
        s = ('node fourier %d gauss %d %s'):format(n.a.id, n.embed // 2, num(n.scale))
      end
    else s = ('node %s %d'):format(op, n.a.id) end
    lines[#lines + 1] = s
  end
  lines[#lines + 1] = 'output ' .. out.id
  return table.concat(lines, '\n') .. '\n'
end

--- nn.net{dim = 1, forward = function(x, t) ... end [, output = 'scaled']} --> a network
function M.net(o, core_graph)
  if type(o) ~= 'table' then error(FNAME .. ': expected {dim = ..., forward = function(x, t) ... end}', 3) end
  for k in pairs(o) do
    if k ~= 'dim' and k ~= 'forward' and k ~= 'output' then
      error(FNAME .. ": unknown option '" .. tostring(k) .. "' (dim, forward, output)", 3)
    end
  end
  local dim = o.dim or 1
  if type(dim) ~= 'number' or dim ~= math.floor(dim) or dim < 1 or dim > 64 then
    error(FNAME .. ': dim must be a whole number from 1 to 64 (got ' .. tostring(dim) .. ')', 3)
  end
  if type(o.forward) ~= 'function' then
    error(FNAME .. ': forward must be a function(x, t) returning the output node (got ' .. type(o.forward) .. ')', 3)
  end
  if #active >= MAX_DEPTH then
    error(('%s: nets nested more than %d deep (does a forward build its own net?)'):format(FNAME, MAX_DEPTH), 3)
  end
  local tr = { dim = math.tointeger(dim), nodes = {}, layers = {} }
  active[#active + 1] = tr
  local x = new_node(tr, 'x', tr.dim, nil)
  local t = new_node(tr, 't', 1, nil)
  local res = table.pack(pcall(o.forward, x, t))
  active[#active] = nil
  tr.closed = true
  if not res[1] then
    local err = res[2]
    if err == tr.failure then -- the builder's own message, at the forward's line when known
      if not err:find('^diffuse%.nn%.') then error(err, 0) end -- (it has a position)
      local info = debug.getinfo(o.forward, 'S')
      error(('%s (in the forward defined at %s:%d)'):format(err, info.short_src, info.linedefined), 0)
    end
    if type(err) == 'string' and err:find(FNAME .. ': ', 1, true) then error(err, 0) end -- a nested net's
    error(FNAME .. ': the forward failed: ' .. tostring(err), 3)
  end
  if res.n < 2 then error(FNAME .. ': the forward returned nothing (it must return the output node)', 3) end
  if res.n > 2 then error(FNAME .. (': the forward returned %d values (only the output node)'):format(res.n - 1), 3) end
  local out = res[2]
  if getmetatable(out) ~= Node then
    error(FNAME .. ': the forward must return a node (got ' .. kind(out) .. ')', 3)
  end
  if out.trace ~= tr then error(FNAME .. ': the forward returned a node of another network', 3) end
  if out.width ~= tr.dim then
    error(('%s: the forward returned a node of [B, %d]; the network\'s output is [B, %d]'):format(FNAME, out.width, tr.dim), 3)
  end
  -- what the core would refuse, said in the builder's words
  local dep = {}
  for _, n in ipairs(tr.nodes) do
    local x, p = n.op == 'x', n.op == 'linear'
    for _, m in ipairs(n.list or { n.a, n.b }) do
      if dep[m] then x, p = x or dep[m].x, p or dep[m].p end
    end
    dep[n] = { x = x, p = p }
  end
  if not dep[out].x then error(FNAME .. ': the output does not depend on x', 3) end
  if not dep[out].p then error(FNAME .. ': the output does not depend on any nn.linear layer', 3) end
  local ok, net = pcall(core_graph, text_of(tr, out), { output = o.output })
  if not ok then error((tostring(net):gsub('^diffuse%.nn%.from_graph: ', FNAME .. ': ')), 3) end
  return net
end

M.Node, M.Layer = Node, Layer
return M
