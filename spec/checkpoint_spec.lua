-- spec/checkpoint_spec.lua: checkpoints round-trip networks exactly, resume training bitwise,
-- and every damaged file is a clear error; plus metrics.score_error.
local diffuse = require 'diffuse'
local tensor = diffuse.tensor

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p .. '.ckpt'
end

local function read(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('a')
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, 'wb'))
  f:write(s)
  f:close()
end

-- IEEE CRC-32, to forge a file whose checksum is right but whose content is not
local function crc32(s)
  local crc = 0xffffffff
  for i = 1, #s do
    crc = crc ~ s:byte(i)
    for _ = 1, 8 do crc = (crc & 1 == 1) and (0xEDB88320 ~ (crc >> 1)) or (crc >> 1) end
  end
  return (~crc) & 0xffffffff
end

local function reseal(body) return body .. string.pack('<I4', crc32(body)) end

describe('checkpoints', function()
  local ve = diffuse.ve(1.1)
  local paths = {}
  local function path() paths[#paths + 1] = tmpname(); return paths[#paths] end
  teardown(function() for _, p in ipairs(paths) do os.remove(p) end end)

  it('round-trips both networks exactly, and leaves no temporary file behind', function()
    diffuse.seed(1)
    local x, t = tensor.randn(50, 1), tensor.rand(50)
    for _, net in ipairs{ diffuse.nn.mlp{ dim = 1, hidden = { 8, 8, 8 }, activation = 'tanh' },
                          diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 64, scale = 30 } } do
      local p = path()
      net:save(p)
      local dir = p:match('^(.*)/')
      local listing = io.popen('ls ' .. dir):read('a')
      assert.is_nil(listing:find(p:match('[^/]+$') .. '.tmp', 1, true))
      local back, opt, info = diffuse.nn.load(p)
      assert.is_nil(opt)
      assert.equal(net.kind, back.kind)
      assert.equal(net.activation, back.activation)
      assert.equal(tostring(net), tostring(back))
      assert.same(net:forward(x, t):totable(), back:forward(x, t):totable())
      local seed, stream = diffuse.rng_state()
      assert.same({ seed, stream }, { info.seed, info.stream })
    end
  end)

  it('resuming from a checkpoint gives bitwise the losses of an uninterrupted run', function()
    local data = tensor.zeros(128, 1)
    diffuse.seed(2)
    local a = diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 32, scale = 10 }
    local full = diffuse.train{ net = a, diffuser = ve, data = data, steps = 40 }:totable()

    diffuse.seed(2)
    local b = diffuse.nn.time_embedded{ dim = 1, hidden = 8, embed = 32, scale = 10 }
    local first, opt = diffuse.train{ net = b, diffuser = ve, data = data, steps = 20 }
    local p = path()
    b:save(p, opt)
    diffuse.seed(999) -- anything in between
    diffuse.tensor.randn(77)
    local c, opt2, info = diffuse.nn.load(p)
    assert.equal(20, opt2.t)
    diffuse.set_rng_state(info.seed, info.stream)
    local second = diffuse.train{ net = c, diffuser = ve, data = data, steps = 20, optimizer = opt2 }
    local resumed = first:totable()
    for _, v in ipairs(second:totable()) do resumed[#resumed + 1] = v end
    assert.same(full, resumed)
    assert.equal(0, (a:parameters() - c:parameters()):abs():max())
    -- opt:save and optim.load are the same file seen from the optimizer
    local q = path()
    opt2:save(q)
    local o3, n3 = diffuse.optim.load(q)
    assert.equal(40, o3.t)
    assert.equal(0, (n3:parameters() - c:parameters()):abs():max())
  end)

  it('every damaged file is a clear error', function()
    diffuse.seed(3)
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 4 } }
    local good = path()
    net:save(good, diffuse.optim.adam(net))
    local bytes = read(good)
    local function expect(content, pattern)
      local p = path()
      write(p, content)
      local ok, err = pcall(diffuse.nn.load, p)
      assert.is_false(ok)
      assert.matches('diffuse.nn.load: ', err, 1, true)
      assert.matches(pattern, err)
    end
    local ok, err = pcall(diffuse.nn.load, '/nonexistent/dir/x.ckpt')
    assert.is_false(ok)
    assert.matches("diffuse.nn.load: cannot open '/nonexistent/dir/x.ckpt': No such file", err, 1, true)
    expect('', 'not a diffuse checkpoint')
    expect('hello world, not a checkpoint at all', 'not a diffuse checkpoint %(wrong magic%)')
    expect('XIFFUSE' .. bytes:sub(8), 'wrong magic')
    for _, cut in ipairs{ 9, 20, 40, #bytes // 2, #bytes - 1 } do
      expect(bytes:sub(1, cut), 'truncated')
    end
    for _, at in ipairs{ 30, #bytes // 2, #bytes - 10 } do
      local b = bytes:byte(at)
      expect(bytes:sub(1, at - 1) .. string.char(b ~ 0x40) .. bytes:sub(at + 1), 'checksum mismatch')
    end
    local body = bytes:sub(1, -5)
    expect(reseal(body:sub(1, 8) .. string.pack('<I4', 7) .. body:sub(13)), 'format version 7')
    expect(reseal(body:gsub('hidden=4', 'hidden=5', 1)), "'params' has 17 values, the network needs 21")
    expect(reseal(body:gsub('kind=mlp', 'kind=xyz', 1)), 'unknown network kind')
    expect(reseal(body .. 'extra'), 'trailing or missing bytes')
    local ok2, err2 = pcall(diffuse.optim.load, good)
    assert.is_true(ok2, err2)
    -- a directory or a FIFO is no file to read (a FIFO without a writer must not block)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute('mkdir ' .. dir .. ' && mkfifo ' .. dir .. '/fifo'))
    for _, p in ipairs { dir, dir .. '/fifo' } do
      for _, f in ipairs { 'nn', 'optim' } do
        local ok3, err3 = pcall(diffuse[f].load, p)
        assert.is_false(ok3)
        assert.are.equal(('diffuse.%s.load: cannot read \'%s\': not a regular file'):format(f, p), err3)
      end
    end
    os.execute('rm -r ' .. dir)
  end)

  it('save reports unwritable paths', function()
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 4 } }
    assert.error_matches(function() net:save('/nonexistent/dir/x.ckpt') end,
      "^diffuse%.net%.save: cannot write '/nonexistent/dir/x%.ckpt': ")
    -- an optimizer of another network of the same size would load as this one's
    local twin = diffuse.nn.mlp{ dim = 1, hidden = { 4 } }
    assert.error_matches(function() net:save(path(), diffuse.optim.adam(twin)) end,
      'diffuse.net.save: the optimizer does not belong to this network')
    assert.error_matches(function() net:save(42) end, 'path must be a string')
    local other = diffuse.nn.mlp{ dim = 1, hidden = { 5 } }
    assert.error_matches(function() net:save(path(), diffuse.optim.adam(other)) end,
      'the optimizer does not belong to this network')
  end)
end)

describe('metrics.score_error', function()
  local ve = diffuse.ve(1.1)

  it('is 0 against the network itself, and falls as a network trains', function()
    diffuse.seed(4)
    local net = diffuse.nn.mlp{ dim = 1 }
    local e0 = diffuse.metrics.score_error(net, ve, diffuse.score.net(net, ve))
    assert.is_true(e0 < 1e-10)
    local exact = diffuse.score.exact(ve)
    local before = diffuse.metrics.score_error(net, ve, exact)
    diffuse.train{ net = net, diffuser = ve, data = tensor.zeros(1024, 1), steps = 300, lr = 3e-3 }
    local after, bins = diffuse.metrics.score_error(net, ve, exact, { bins = 5, n = 8192 })
    assert.is_true(after < before, ('%g -> %g'):format(before, after))
    assert.equal(6, #bins.edges)
    local total = 0
    for b = 1, 5 do total = total + bins.count[b] end
    assert.equal(8192, total)
  end)

  it('equals the DSM view of the exact score: sigma^2 |s_net - s|^2 = (net + x / sigma)^2', function()
    diffuse.seed(5)
    local net = diffuse.nn.mlp{ dim = 1, hidden = { 3 } }
    local seed, stream = diffuse.rng_state()
    local e = diffuse.metrics.score_error(net, ve, diffuse.score.exact(ve), { n = 2000 })
    diffuse.set_rng_state(seed, stream)
    local t = 1e-5 + (1 - 1e-5) * tensor.rand(2000)
    local x = ve:diffuse(tensor.zeros(2000, 1), t)
    local r = net:forward(x, t) + x / ve:sigma(t):reshape(2000, 1)
    assert.near((r * r):mean(), e, 1e-5 * e)
  end)

  it('rejects bad input', function()
    local net = diffuse.nn.mlp{ dim = 1 }
    local exact = diffuse.score.exact(ve)
    assert.error_matches(function() diffuse.metrics.score_error(tensor.zeros(2), ve, exact) end,
      'score_error: net must be a network')
    assert.error_matches(function() diffuse.metrics.score_error(net, ve, 5) end, 'score must be a score source')
    assert.error_matches(function() diffuse.metrics.score_error(net, ve, exact, { n = 0 }) end, 'n must be a positive integer')
    assert.error_matches(function() diffuse.metrics.score_error(net, ve, exact, { nn = 3 }) end, "unknown option 'nn'")
    -- every argument named by score_error, whatever would have touched it first
    local function se_error(pattern, ...)
      local args = table.pack(...)
      assert.error_matches(function() diffuse.metrics.score_error(table.unpack(args, 1, args.n)) end,
        'diffuse%.metrics%.score_error: ' .. pattern)
    end
    se_error('data must be a tensor of rows x0 %(got table%)', net, ve, exact, { data = { 1, 2 } })
    se_error('diffuser must be a diffuser', net, 5, exact)
    se_error('the score returned nil %(expected a tensor shaped as x%)', net, ve, function() end, { n = 8 })
    local gone = tensor.zeros(8, 1)
    gone:free()
    se_error('data: attempt to use a released tensor$', net, ve, exact, { data = gone })
    -- a reference of another shape would broadcast to [n, n]; data of [n] is n rows
    se_error('the score returned 10 for x of 10x1', net, ve, function(x) return tensor.zeros(x:shape()[1]) end, { n = 10 })
    diffuse.seed(5)
    local a = diffuse.metrics.score_error(net, ve, exact, { data = tensor.zeros(100) })
    diffuse.seed(5)
    assert.are.equal(a, diffuse.metrics.score_error(net, ve, exact, { data = tensor.zeros(100, 1) }))
  end)
end)
