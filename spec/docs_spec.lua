-- spec/docs_spec.lua: README's transcripts are what the code prints. The REPL session under
-- "At the REPL" is replayed line by line as lua5.4 -i runs it (an expression's values printed
-- tab-separated, a statement's output as it comes) and must reappear character for character;
-- "A taste" runs as written and every value its comments give must be what it prints.
local diffuse = require 'diffuse'

local function readme()
  local f = assert(io.open('README.md', 'rb'))
  local s = f:read('a')
  f:close()
  return s
end

-- the fenced block that starts at `marker` (up to the closing fence)
local function block(s, marker)
  local i = assert(s:find(marker, 1, true), 'README has no ' .. marker)
  local j = assert(s:find('\n```', i, true), 'unclosed block after ' .. marker)
  return s:sub(i, j)
end

-- runs chunk, returns what it printed (print and io.write), and the chunk's values packed
local function capture(fn)
  local out = {}
  local real_print, real_write = print, io.write
  _G.print = function(...)
    local t = table.pack(...)
    for k = 1, t.n do t[k] = tostring(t[k]) end
    out[#out + 1] = table.concat(t, '\t', 1, t.n) .. '\n'
  end
  io.write = function(...)
    for _, v in ipairs { ... } do out[#out + 1] = tostring(v) end
    return io.stdout
  end
  local res = table.pack(pcall(fn))
  _G.print, io.write = real_print, real_write
  assert(res[1], res[2])
  return table.concat(out), table.pack(table.unpack(res, 2, res.n))
end

-- each print line of a block is matched, in order, with the last lines printed; each number of its
-- comment must be the value printed there, to the comment's decimals; returns how many were
local function check_comments(text, printed)
  local lines, outs = {}, {}
  for l in text:gmatch('([^\n]*)\n') do if l:match('^print%(') then lines[#lines + 1] = l end end
  for l in printed:gmatch('([^\n]*)\n') do outs[#outs + 1] = l end
  local checked = 0
  for k, line in ipairs(lines) do
    local out = assert(outs[#outs - #lines + k], 'no output for ' .. line)
    local vals = {}
    for v in out:gmatch('%S+') do vals[#vals + 1] = tonumber(v) end
    local comment = assert(line:match('%-%-%s*(.*)$'), line)
    local j = 0
    for num in comment:gsub('%b()', ''):gmatch('[%d%.]+') do
      if not num:match('^%.') and tonumber(num) then
        j = j + 1
        local decimals = #(num:match('%.(%d+)') or '')
        assert.are.equal(num, ('%.' .. decimals .. 'f'):format(assert(vals[j], line)), line)
        checked = checked + 1
      end
      if j == #vals then break end
    end
  end
  return checked
end

describe("README's transcripts", function()
  before_each(function() diffuse.seed(0) end) -- a fresh interpreter's state

  it('the REPL session prints what README shows', function()
    local text = block(readme(), '$ lua5.4 -i -l diffuse\n')
    local env = setmetatable({ diffuse = diffuse }, { __index = _G })
    local got, want = {}, {}
    for line in text:gmatch('([^\n]*)\n') do
      if line:sub(1, 2) == '> ' then
        local cmd = line:sub(3)
        want[#want + 1] = line
        got[#got + 1] = line
        -- as lua.c: first as an expression whose values are printed, else as a statement
        local fn = load('return ' .. cmd, '=stdin', 't', env) or assert(load(cmd, '=stdin', 't', env))
        local printed, vals = capture(fn)
        if printed ~= '' then got[#got + 1] = printed:sub(1, -2) end
        if vals.n > 0 then
          local t = {}
          for k = 1, vals.n do t[k] = tostring(vals[k]) end
          got[#got + 1] = table.concat(t, '\t')
        end
      elseif line:sub(1, 1) ~= '$' then
        want[#want + 1] = line
      end
    end
    assert.are.equal(table.concat(want, '\n'), table.concat(got, '\n'))
  end)

  it("'A taste' runs and prints the values its comments give", function()
    local s = readme()
    local text = block(s:sub((assert(s:find('## A taste', 1, true)))), '```lua\n'):gsub('^```lua\n', '')
    -- progress bars go to stderr; the taste asks for one
    local real_stderr = io.stderr
    io.stderr = assert(io.open('/dev/null', 'w'))
    local ok, printed = pcall(capture, assert(load(text, '=taste', 't', setmetatable({}, { __index = _G }))))
    io.stderr:close()
    io.stderr = real_stderr
    assert(ok, printed)
    -- the print lines of the chunk, in order, against the lines they printed
    local outs = {}
    for l in printed:gmatch('([^\n]*)\n') do outs[#outs + 1] = l end
    local k, checked = 0, 0
    for line in text:gmatch('([^\n]*)\n') do
      if line:match('^print%(') then
        k = k + 1
        local comment = line:match('%-%-%s*(.*)$')
        local first = comment and comment:match('^([%d%.]+)')
        if first then -- the first value printed, to the comment's decimals
          local v = tonumber(assert(outs[k], 'no output for ' .. line):match('^(%S+)'))
          local decimals = #(first:match('%.(%d+)') or '')
          assert.are.equal(first, ('%.' .. decimals .. 'f'):format(v), line)
          checked = checked + 1
        end
      end
    end
    assert.is_true(checked >= 2, 'README: the taste comments no values')
  end)

  it("'Samplers, time grids and likelihoods' runs after the taste and the nets, printing its comments' values #nosan", function()
    local s = readme()
    local function lua_block(title)
      return (block(s:sub((assert(s:find(title, 1, true)))), '```lua\n'):gsub('^```lua\n', ''))
    end
    local text = lua_block('## Samplers, time grids and likelihoods')
    local real_stderr = io.stderr
    io.stderr = assert(io.open('/dev/null', 'w'))
    local chunk = lua_block('## A taste') .. lua_block('## Networks you compose') .. text
    local ok, printed = pcall(capture, assert(load(chunk, '=samplers', 't', setmetatable({}, { __index = _G }))))
    io.stderr:close()
    io.stderr = real_stderr
    assert(ok, printed)
    local checked = check_comments(text, printed)
    assert.is_true(checked >= 6, 'README: the samplers block comments too few values')
  end)

  it("'Groups' prints its comments' values #nosan", function()
    local s = readme()
    local text = (block(s:sub((assert(s:find('## Groups: U(1)', 1, true)))), '```lua\n'):gsub('^```lua\n', ''))
    local chunk = "local diffuse = require 'diffuse'\n" .. text
    local ok, printed = pcall(capture, assert(load(chunk, '=groups', 't', setmetatable({}, { __index = _G }))))
    assert(ok, printed)
    assert.is_true(check_comments(text, printed) >= 4, 'README: the groups block comments too few values')
  end)

  -- #nosan: the README's blocks train full-size nets (minutes under valgrind); the specs of each
  -- module run the same code small under the sanitizers
  it("'Networks you compose' runs after the taste as written #nosan", function()
    local s = readme()
    local taste = block(s:sub((assert(s:find('## A taste', 1, true)))), '```lua\n'):gsub('^```lua\n', '')
    local nets = block(s:sub((assert(s:find('## Networks you compose', 1, true)))), '```lua\n'):gsub('^```lua\n', '')
    local real_stderr = io.stderr
    io.stderr = assert(io.open('/dev/null', 'w'))
    local ok, printed = pcall(capture, assert(load(taste .. nets, '=nets', 't', setmetatable({}, { __index = _G }))))
    io.stderr:close()
    io.stderr = real_stderr
    assert(ok, printed)
    assert.matches("diffuse%.nn%.net{dim = 1, output = 'noise'}", printed)
    assert.matches('fourier%(2%): %[sin, cos%]%(w u%), 25 given w', printed)
  end)
end)
