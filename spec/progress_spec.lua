-- spec/progress_spec.lua: diffuse.progress with a fake stream (a table with write) and an
-- injected fake clock: in-place redraws on a terminal, a bounded number of plain lines
-- elsewhere, rates and ETA from the fake clock, fields, finish, the helpers.
local diffuse = require 'diffuse'
local progress = diffuse.progress

local function fake_stream()
  local s = { writes = {}, flushes = 0 }
  function s:write(x) self.writes[#self.writes + 1] = x; return self end
  function s:flush() self.flushes = self.flushes + 1 end
  function s:text() return table.concat(self.writes) end
  return s
end

local function fake_clock(start)
  local c = { t = start or 100, calls = 0 }
  c.fn = function() c.calls = c.calls + 1; return c.t end
  return c
end

local function plain_lines(s)
  local t = {}
  for l in s:text():gmatch('([^\n]*)\n') do t[#t + 1] = l end
  return t
end

describe('diffuse.progress on a terminal', function()
  it('redraws in place, throttled to min_interval', function()
    local s, c = fake_stream(), fake_clock()
    local bar = progress.new { total = 1000, label = 'train', stream = s, clock = c.fn, tty = true, columns = 1000,
                               min_interval = 0.1, check_every = 1 }
    for i = 1, 1000 do c.t = c.t + 0.01; bar:update(i) end
    -- a redraw about every 10 steps (0.1 s at 0.01 s a step), plus the first and the last
    assert.is_true(#s.writes >= 95 and #s.writes <= 102, #s.writes .. ' writes')
    for _, w in ipairs(s.writes) do
      assert.are.equal('\r', w:sub(1, 1))
      assert.is_nil(w:find('\n', 1, true))
    end
    assert.is_truthy(s.writes[#s.writes]:find('1000/1000', 1, true))
    assert.is_truthy(s.writes[#s.writes]:find('100%|', 1, true))
    bar:finish()
    assert.are.equal('\n', s.writes[#s.writes])
    assert.is_true(s.flushes > 0)
  end)

  it('shows rate, elapsed time and ETA from the clock', function()
    local s, c = fake_stream(), fake_clock()
    local bar = progress.new { total = 1000, stream = s, clock = c.fn, tty = true, columns = 1000, min_interval = 0,
                               check_every = 1, width = 20 }
    c.t = c.t + 5
    bar:update(500)
    local w = s.writes[#s.writes]
    assert.is_truthy(w:find(' 50%|', 1, true), w)
    assert.is_truthy(w:find('500/1000 [00:05<00:05, 100 it/s]', 1, true), w)
    -- the bar: 10 of 20 cells full
    assert.is_truthy(w:find('|' .. string.rep('█', 10) .. string.rep(' ', 10) .. '|', 1, true), w)
    c.t = c.t + 3600
    bar:update(600)
    w = s.writes[#s.writes]
    assert.is_truthy(w:find('600/1000 [1:00:05<40:03, 0.17 it/s]', 1, true) or
                     w:find('600/1000 [1:00:05<40:03, 6.01 s/it]', 1, true), w)
    assert.are.equal(3605, bar:finish())
  end)

  it('shows slow rates as seconds per step', function()
    local s, c = fake_stream(), fake_clock()
    local bar = progress.new { total = 10, stream = s, clock = c.fn, tty = true, columns = 1000, min_interval = 0 }
    c.t = c.t + 4
    bar:update(2)
    assert.is_truthy(s.writes[#s.writes]:find('[00:04<00:16, 2.00 s/it]', 1, true), s.writes[#s.writes])
  end)

  it('shows fields, keeps them, and pads over a longer previous line', function()
    local s, c = fake_stream(), fake_clock()
    local bar = progress.new { total = 100, stream = s, clock = c.fn, tty = true, columns = 1000, min_interval = 0,
                               check_every = 1, formats = { lr = '%.0e' } }
    c.t = c.t + 1
    bar:update(1, { loss = 0.031, note = 'a long note here', lr = 1e-3, epoch = 2 })
    local first = s.writes[#s.writes]
    assert.is_truthy(first:find('epoch=2, loss=3.1e-02, lr=1e-03, note=a long note here]', 1, true), first)
    c.t = c.t + 1
    bar:update(2, { note = 'x' })
    local second = s.writes[#s.writes]
    assert.is_truthy(second:find('loss=3.1e-02', 1, true), second)       -- kept from before
    assert.is_true(utf8.len(second) >= utf8.len(first))
    assert.is_truthy(second:find('note=x]%s+$'), second)
    bar:finish { loss = 0.5 }
    assert.is_truthy(s.writes[#s.writes - 1]:find('loss=0.5,', 1, true))
  end)

  it('reads the clock only every few calls in a fast loop, and draws the end', function()
    local s, c = fake_stream(), fake_clock()
    local clock = function() c.t = c.t + 1e-6; return c.fn() end    -- a million calls a second
    local bar = progress.new { total = 100000, stream = s, clock = clock, tty = true, columns = 1000 }
    for i = 1, 100000 do bar:update(i) end
    assert.is_true(c.calls < 2000, c.calls .. ' clock reads')
    assert.is_truthy(s.writes[#s.writes]:find('100000/100000', 1, true))
    -- a clock that stands still: the first draw and the final one only
    local s2, c2 = fake_stream(), fake_clock()
    local b2 = progress.new { total = 100, stream = s2, clock = c2.fn, tty = true, columns = 1000 }
    for i = 1, 100 do b2:update(i) end
    assert.are.equal(2, #s2.writes)
  end)

  it('cuts lines to the terminal width', function()
    local s, c = fake_stream(), fake_clock()
    local bar = progress.new { total = 10, stream = s, clock = c.fn, tty = true, columns = 40 }
    bar:update(5, { note = string.rep('x', 100) })
    assert.are.equal(40, utf8.len(s.writes[#s.writes]))      -- '\r' and 39 characters
  end)

  it('counts one step per update() without arguments; unknown totals', function()
    local s, c = fake_stream(), fake_clock()
    local bar = progress.new { stream = s, clock = c.fn, tty = true, columns = 1000, min_interval = 0, check_every = 1 }
    c.t = c.t + 2
    bar:update(); bar:update(); bar:update()
    local w = s.writes[#s.writes]
    assert.is_truthy(w:find('3 it [00:02, 1.50 it/s]', 1, true), w)
    assert.is_nil(w:find('|', 1, true))
  end)
end)

describe('diffuse.progress off a terminal', function()
  it('writes a line per tenth, never more than a dozen', function()
    local s, c = fake_stream(), fake_clock()
    local bar = progress.new { total = 1000, label = 'train', stream = s, clock = c.fn }  -- tty auto: false
    for i = 1, 1000 do c.t = c.t + 0.01; bar:update(i, { loss = 1 / i }) end
    bar:finish()
    local L = plain_lines(s)
    assert.are.equal(10, #L)
    assert.is_nil(s:text():find('\r', 1, true))
    assert.is_truthy(L[1]:find('^train  10%% 100/1000 %[00:01<00:09, 100 it/s, loss=1.0e%-02%]$'), L[1])
    assert.is_truthy(L[10]:find('1000/1000 [00:10<00:00, 100 it/s, loss=1.0e-03]', 1, true), L[10])
    -- finish with new fields: one more line
    local s2 = fake_stream()
    local b2 = progress.new { total = 7, stream = s2, clock = c.fn }
    for i = 1, 7 do b2:update(i) end
    b2:finish { loss = 0.25 }
    local L2 = plain_lines(s2)
    assert.is_true(#L2 <= 12)
    assert.is_truthy(L2[#L2]:find('7/7', 1, true) and L2[#L2]:find('loss=0.25', 1, true))
  end)

  it('stays bounded when steps jump or the total is unknown', function()
    local s, c = fake_stream(), fake_clock()
    local bar = progress.new { total = 50, stream = s, clock = c.fn }
    bar:update(49)
    bar:update(50)
    bar:finish()
    assert.are.equal(2, #plain_lines(s))
    local s2 = fake_stream()
    local b2 = progress.new { stream = s2, clock = c.fn }
    for i = 1, 1000 do b2:update(i) end
    b2:finish()
    local L = plain_lines(s2)
    assert.are.equal(11, #L)                 -- steps 1, 2, 4, ..., 512 and the end
    assert.is_truthy(L[#L]:find('^1000 it'), L[#L])
  end)

  it('writes a last line at finish when stopped early', function()
    local s, c = fake_stream(), fake_clock()
    local bar = progress.new { total = 100, stream = s, clock = c.fn }
    for i = 1, 15 do bar:update(i) end
    assert.are.equal(1, #plain_lines(s))
    bar:finish()
    local L = plain_lines(s)
    assert.are.equal(2, #L)
    assert.is_truthy(L[2]:find('15/100', 1, true))
    bar:update(16)
    bar:finish()
    assert.are.equal(2, #plain_lines(s))     -- done: nothing more
  end)
end)

describe('diffuse.progress helpers and checks', function()
  it('wraps a loop and iterates a range', function()
    local s, c = fake_stream(), fake_clock()
    local seen = 0
    local bar = progress.wrap(50, function(i) seen = seen + 1; c.t = c.t + 1; return { loss = i / 100 } end,
                              { stream = s, clock = c.fn, label = 'fit' })
    assert.are.equal(50, seen)
    local L = plain_lines(s)
    assert.is_true(#L >= 1 and #L <= 12)
    assert.is_truthy(L[#L]:find('^fit 100%% 50/50') and L[#L]:find('loss=0.5', 1, true), L[#L])
    assert.are.equal(50, bar.elapsed)
    local s2 = fake_stream()
    local got = {}
    for i in progress.range(5, { stream = s2, clock = c.fn }) do got[#got + 1] = i end
    assert.are.same({ 1, 2, 3, 4, 5 }, got)
    assert.is_truthy(s2:text():find('5/5', 1, true))
  end)

  it('checks its options', function()
    local s = fake_stream()
    assert.has_error(function() progress.new { total = -1, stream = s } end)
    assert.has_error(function() progress.new { stream = {} } end)
    assert.has_error(function() progress.new { stream = 5 } end)
    assert.has_error(function() progress.new { totl = 5, stream = s } end)
    assert.has_error(function() progress.new { stream = s, check_every = 0 } end)
    local bar = progress.new { stream = s, tty = false }
    assert.has_error(function() bar:update('x') end)
    assert.has_error(function() bar:update(1, 5) end)
    -- each bad option named by progress itself (not a raw error from string.format or rep)
    local function bad(msg, o)
      o.stream = o.stream or s
      assert.has_error(function() progress.new(o) end, 'diffuse.progress.new: ' .. msg)
    end
    bad('width must be 1..500', { width = 0 / 0 })
    bad('initial must be a finite number >= 0', { initial = 'x' })
    bad('initial must be a finite number >= 0', { initial = math.huge })
    bad('columns must be a positive number', { columns = 'x' })
    bad('clock() must return a number (got nil)', { clock = function() end })
    bad('formats.loss must be a string', { formats = { loss = 3 } })
    assert.has_error(function() bar:update(math.huge) end, 'diffuse.progress.update: step must be a finite number')
    assert.has_error(function() progress.wrap(0 / 0, print) end,
      'diffuse.progress.wrap: n must be a finite non-negative number')
    assert.has_error(function() progress.range(math.huge) end,
      'diffuse.progress.range: n must be a finite non-negative number')
    assert.has_error(function() progress.format_time('x') end, 'diffuse.progress.format_time: s must be a number (got string)')
    assert.has_error(function() progress.format_rate('x') end, 'diffuse.progress.format_rate: r must be a number (got string)')
  end)

  it('ignores a $COLUMNS that is no usable width', function()
    for _, c in ipairs { '0', '-1', '1e999', 'wide' } do
      local p = io.popen(('COLUMNS=%s lua5.4 -e "package.path = \'lua/?.lua;\' .. package.path; '
        .. 'local b = require(\'diffuse.progress\').new{ total = 2, tty = true, clock = os.clock, '
        .. 'stream = { write = function() end } }; b:update(2); print(b.columns)" 2>&1'):format(c))
      local out = p:read('a')
      p:close()
      assert.are.equal('nil\n', out, 'COLUMNS=' .. c)
    end
  end)

  it('formats counts past 2^63, absurd times and mismatched field formats', function()
    local s = fake_stream()
    local bar = progress.new { stream = s, tty = false, total = 2 ^ 63, formats = { loss = '%d' } }
    bar:update(2 ^ 62, { loss = 0.5 })
    bar:finish()
    assert.matches(' 4611686018427387904/9%.223e%+18 ', s:text()) -- (2^63 is no integer here)
    assert.matches('loss=0%.5%]', s:text()) -- '%d' takes no 0.5: shown as if no format were given
    assert.are.equal('2.78e+296h', progress.format_time(1e300))
    assert.are.equal('01:05', progress.format_time(65))
  end)

  it('uses the real clock and stderr by default', function()
    local bar = progress.new { total = 3, tty = false, stream = fake_stream() }
    bar:update(3)
    assert.is_true(bar:finish() >= 0)
    local b2 = progress.new { total = 1 }
    assert.are.equal(diffuse.core.isatty(2), b2.tty)
  end)
end)
