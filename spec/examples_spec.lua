-- spec/examples_spec.lua: every script in examples/ runs, at small sizes, against diffuse as
-- `luarocks make` installs it (a temporary tree, Lua's paths pointing at that tree alone, run from
-- a temporary folder), exits 0, and writes the files it announces ("wrote PATH"): well-formed SVG
-- with finite coordinates, the comparison table, the checkpoint. Plus diffuse.cli itself.
local diffuse = require 'diffuse'
local xml = require 'support.xml'

local function sh(cmd)
  local p = io.popen(cmd .. ' 2>&1')
  local out = p:read('a')
  local ok, _, code = p:close()
  return ok, out, code
end

local function read(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local s = f:read('a')
  f:close()
  return s
end

-- small sizes for each example: every file in examples/ must be listed here
local ARGS = {
  ['heat_kernel.lua'] = '--samples 2000 --grid 24',
  ['forward.lua'] = '--samples 2000',
  ['denoise_exact.lua'] = '--samples 500 --steps 20',
  ['train.lua'] = '--net film --steps 50 --samples 256 --sample-steps 20 --ema 0.9 --clip 1 '
    .. '--warmup 5 --decay cosine --output noise --save OUT/net.ckpt',
  ['time_embedding_study.lua'] = '--steps 30 --seeds 2 --samples 256 --sample-steps 10',
  ['compare_networks.lua'] = '--steps 50 --samples 256 --sample-steps 20 --seeds 2',
  ['mixture.lua'] = '--steps 50 --data 1024 --batch 256 --hidden 8 --samples 512 --sample-steps 20',
  ['samplers.lua'] = '--points 21 --max-steps 16',
  ['likelihood.lua'] = '--points 100 --steps 100 --samples 512 --hidden 8',
  ['su2_denoise.lua'] = '--samples 500 --steps 20 --train-steps 20',
  ['group_toys.lua'] = '--samples 256 --data 512 --steps 20 --bootstrap 20',
  ['circle.lua'] = '--steps 30 --data 512 --samples 256 --ode-steps 20',
  ['toy_su2.lua'] = '--steps 30 --data 512 --samples 256 --ode-steps 20 --bootstrap 20',
  ['toy_su3.lua'] = '--steps 20 --batch 256 --data 512 --samples 128 --ode-steps 10 --bootstrap 20',
  ['tensor_tour.lua'] = false,   -- prints only; takes no options
}

-- attributes that hold coordinates: every number in them must be finite
local GEOM = { x = true, y = true, x1 = true, y1 = true, x2 = true, y2 = true, width = true,
               height = true, cx = true, cy = true, r = true, d = true, points = true,
               transform = true, viewBox = true }

local function check_svg(path)
  local s = assert(read(path), 'missing ' .. path)
  local ok, root = pcall(xml.parse, s)
  assert(ok, path .. ': ' .. tostring(root))
  assert.are.equal('svg', root.tag)
  for _, e in ipairs(xml.find_all(root, '*')) do
    for k, v in pairs(e.attrs) do
      if k ~= 'xlink:href' then   -- base64 image data may spell anything
        local low = v:lower()
        assert(not low:find('nan', 1, true) and not low:find('inf', 1, true),
               ('%s: <%s %s="%s">'):format(path, e.tag, k, v))
      end
      if GEOM[k] then
        for tok in v:gmatch('[^%s,%(%)A-Za-z]+') do
          local n = tonumber(tok)
          assert(n and n == n and math.abs(n) < 1e6, ('%s: <%s %s> holds %s'):format(path, e.tag, k, tok))
        end
      end
    end
  end
end

describe('examples', function()
  local here = io.popen('pwd'):read('l')
  local tmp = os.tmpname()
  os.remove(tmp)
  local tree, work = tmp .. '/tree', tmp .. '/work'

  setup(function() assert(os.execute(('mkdir -p %q %q'):format(tree, work))) end)
  teardown(function() sh(('rm -rf %q'):format(tmp)) end)

  it('run from a LuaRocks tree at small sizes and write what they announce #nosan', function()
    local ok, out = sh(('luarocks --lua-version=5.4 make --tree %q diffuse-scm-1.rockspec'):format(tree))
    assert(ok, out)
    local env = ("LUA_PATH='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua' LUA_CPATH='%s/lib/lua/5.4/?.so'")
      :format(tree, tree, tree)
    local scripts = {}
    for name in io.popen('ls examples'):lines() do
      if name:match('%.lua$') then scripts[#scripts + 1] = name end
    end
    assert.is_true(#scripts >= 8)
    for _, name in ipairs(scripts) do
      local args = ARGS[name]
      assert(args ~= nil, 'examples/' .. name .. ' has no small-size arguments in spec/examples_spec.lua')
      local outdir = ('%s/out-%s'):format(tmp, name:gsub('%.lua$', ''))
      local cmd = ('cd %q && %s timeout 120 lua5.4 %q/examples/%s'):format(work, env, here, name)
      if args then cmd = cmd .. ' --out ' .. outdir .. ' ' .. args:gsub('OUT', outdir) end
      local ok2, log = sh(cmd)
      assert(ok2, name .. ' failed:\n' .. log)
      local wrote = {}
      for p in log:gmatch('\nwrote ([^\n]+)') do wrote[#wrote + 1] = p end
      if args then assert(#wrote > 0, name .. ' announced no files:\n' .. log) end
      for _, p in ipairs(wrote) do
        assert(p:sub(1, #outdir) == outdir, name .. ' wrote outside --out: ' .. p)
        if p:match('%.svg$') then check_svg(p) else assert(read(p), name .. ': missing ' .. p) end
      end
      if name == 'compare_networks.lua' then
        local md = read(outdir .. '/compare_networks.md')
        assert.truthy(md and md:find('| quantity | plain MLP | time-embedded |', 1, true))
        assert.truthy(md:find('\nConclusion %(2 seeds'))
        local csv = read(outdir .. '/compare_networks.csv')
        local lines = 0
        for _ in csv:gmatch('[^\n]+') do lines = lines + 1 end
        assert.are.equal(1 + 3 * 2, lines)   -- header, then mlp, temb, exact for each seed
        assert.is_nil(csv:lower():find('nan', 1, true))
      elseif name == 'train.lua' then
        local net, opt = diffuse.nn.load(outdir .. '/net.ckpt')
        assert.are.equal('net', net.kind)
        assert.are.equal('noise', net.output)
        assert.are.equal(50, opt.t)
        assert.are.equal(0.9, opt.ema_decay)
        assert.are.equal('cosine', opt.schedule.decay)
      elseif name == 'time_embedding_study.lua' then
        local md = read(outdir .. '/time_embedding_study.md')
        assert.truthy(md:find('| time-embedded, scale 0.3 |', 1, true))
        assert.truthy(md:find('\nConclusion %(2 seeds, compared seed by seed%): the time embedding is '))
      end
    end
  end)
end)

describe('diffuse.cli', function()
  local cli = diffuse.cli
  local defaults = { out = 'out', steps = 1000, lr = 1e-3, name = { 'x', 'a name' }, quiet = false }

  it('parses --name value and --name=value, typed by the defaults', function()
    local o = cli.parse({ '--steps', '50', '--lr=3e-4', '--name', 'y z', '--quiet' }, defaults)
    assert.are.same({ out = 'out', steps = 50, lr = 3e-4, name = 'y z', quiet = true }, o)
    assert.are.equal('integer', math.type(o.steps))
    assert.are.equal('float', math.type(cli.parse({ '--lr', '1' }, defaults).lr))
    assert.are.equal(20, cli.parse({ '--steps=2e1' }, defaults).steps)
    assert.are.same({ shift = -1.5, sample_steps = 7 },
      cli.parse({ '--shift', '-1.5', '--sample-steps', '7' }, { shift = 0.0, sample_steps = 100 }))
    assert.is_false(cli.parse({ '--no-quiet' }, { quiet = true }).quiet)
  end)

  it('names what is wrong (read returns it; parse prints it and exits 2)', function()
    local function err(argv)
      local o, e = cli.read(argv, defaults)
      assert.is_nil(o)
      return e
    end
    assert.are.equal("unknown option '--stesp' (try --help)", err{ '--stesp', '5' })
    assert.are.equal('--steps takes an integer (got 1.5)', err{ '--steps', '1.5' })
    assert.are.equal('--lr takes a finite number (got fast)', err{ '--lr', 'fast' })
    assert.are.equal('--lr takes a finite number (got 1e999)', err{ '--lr', '1e999' })
    assert.are.equal(5, cli.read({ '--steps', 5 }, defaults).steps) -- (a number where a string goes)
    assert.error_matches(function() cli.read({ '--steps', {} }, defaults) end,
      'diffuse.cli.read: argv%[2%] must be a string %(got table%)')
    assert.are.equal('--quiet takes true or false (got maybe)', err{ '--quiet=maybe' })
    assert.are.equal('--steps needs a value', err{ '--steps' })
    assert.are.equal('--steps needs a value', err{ '--steps', '--lr', '1' })
    assert.matches("unexpected argument 'extra'", err{ 'extra' })
    assert.are.equal('help', err{ '-h' })
    assert.error_matches(function() cli.read({}, { ['bad name'] = 1 }) end, 'option names must be identifiers')
    assert.error_matches(function() cli.read({}, { f = function() end }) end, "the default of 'f' must be")
    local ok, out, code = sh([[lua5.4 -e "package.path='lua/?.lua;'..package.path
      arg = {[0] = 'x.lua'}; require('diffuse.cli').parse({'--stesp', '5'}, {steps = 1})"]])
    assert.is_falsy(ok)
    assert.are.equal(2, code)
    assert.are.equal("x.lua: unknown option '--stesp' (try --help)\n", out)
  end)

  it('prints the options on --help and exits 0', function()
    local ok, out = sh([[lua5.4 -e "package.path='lua/?.lua;'..package.path
      require('diffuse.cli').parse({'--help'}, {out = 'out', steps = {1000, 'training steps'}}, 'demo: about')"]])
    assert.is_true(ok, out)
    assert.matches('^demo: about\nusage: lua5.4 ', out)
    assert.matches('%-%-steps 1000%s+training steps', out)
    assert.matches('%-%-out out%s+output folder', out)
  end)

  it('setup makes the output folder and returns paths in it', function()
    local dir = os.tmpname()
    os.remove(dir)
    local print0 = _G.print
    _G.print = function() end   -- setup prints the device line
    local path = cli.setup{ out = dir .. '/a/b', seed = 3 }
    _G.print = print0
    assert.are.equal(dir .. '/a/b/x.svg', path('x.svg'))
    local f = assert(io.open(path('x.svg'), 'w'))
    f:close()
    assert.are.same({ 3, 0 }, { diffuse.rng_state() })
    os.execute(('rm -rf %q'):format(dir))
  end)
end)
