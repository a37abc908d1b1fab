-- spec/install_spec.lua: `luarocks make` installs diffuse from this checkout into a temporary
-- tree, and a script run from outside the checkout, with Lua's paths pointing at that tree alone,
-- loads it and computes with it.
local function sh(cmd)
  local p = io.popen(cmd .. ' 2>&1')
  local out = p:read('a')
  local ok, _, code = p:close()
  return ok, out, code
end

describe('LuaRocks install', function()
  local tree = os.tmpname()
  os.remove(tree)

  teardown(function() sh('rm -rf ' .. tree) end)

  it('installs into a fresh tree and runs from that tree alone #nosan', function()
    local ok, out = sh('luarocks --lua-version=5.4 make --tree ' .. tree .. ' diffuse-scm-1.rockspec')
    assert(ok, out)
    assert.truthy(out:find('diffuse scm%-1 is now installed'), out)
    local script = [[
      local d = require 'diffuse'
      assert(package.searchpath('diffuse', package.path):find(TREE, 1, true))
      d.seed(7)
      local x = d.tensor.randn(1000, 2)
      assert(x:shape()[1] == 1000 and x:shape()[2] == 2)
      io.write(d.summary(), '\n', string.format('%.6f', (x * x):mean()), '\n')
    ]]
    local lp = ('%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua'):format(tree, tree)
    local cp = ('%s/lib/lua/5.4/?.so'):format(tree)
    local f = io.open(tree .. '/check.lua', 'w')
    f:write('TREE = ' .. string.format('%q', tree) .. '\n', script)
    f:close()
    local ok2, out2 = sh(('cd / && LUA_PATH=%q LUA_CPATH=%q lua5.4 %s/check.lua'):format(lp, cp, tree))
    assert(ok2, out2)
    assert.truthy(out2:find('Using device: cpu', 1, true), out2)
    local mean_sq = tonumber(out2:match('\n([%d%.]+)\n'))
    -- E[z^2] = 1 for 2000 standard normals: 5 standard errors of sqrt(2/2000)
    assert.is_true(math.abs(mean_sq - 1) < 5 * math.sqrt(2 / 2000), out2)
  end)
end)
