-- diffuse.progress: progress bars for long loops (training, sampling). On a terminal the line is
-- redrawn in place ('\r'), at most every min_interval seconds; elsewhere (logs, CI) a plain line
-- is written at each tenth of the way, so a log never gets more than about a dozen lines.
--
--   local bar = diffuse.progress.new{ total = 1000, label = 'train' }
--   for step = 1, 1000 do ...; bar:update(step, { loss = loss }) end
--   bar:finish()
--
-- update() is meant to be called every iteration: on a terminal it reads the clock only every
-- k calls, with k adapted to the call rate, and off a terminal it only compares integers.
local M = {}

local floor, max, min, huge, fmt = math.floor, math.max, math.min, math.huge, string.format

local Bar = {}
Bar.__index = Bar
Bar.__name = 'diffuse.progress.bar'

local OPTS = { total = true, label = true, stream = true, clock = true, tty = true, width = true,
               min_interval = true, check_every = true, initial = true, formats = true,
               columns = true }

local PARTIAL = { '▏', '▎', '▍', '▌', '▋', '▊', '▉' }

local function core() return require 'diffuse.core' end

--- diffuse.progress.new{total = nil, label = nil, stream = io.stderr, clock = diffuse.core.clock,
---                      tty = (auto), width = 30, min_interval = 0.1, check_every = 'auto',
---                      initial = 0, formats = {field = '%.4f'}} --> bar
--- total: number of steps (nil: unknown, no bar or ETA); stream: anything with :write (and
--- optionally :flush); tty: redraw in place (auto: isatty of stderr/stdout when stream is one of
--- them, else false); width: bar cells; min_interval: seconds between redraws on a terminal;
--- check_every: read the clock every k update() calls (number), or 'auto' (k adapts so the
--- clock is read ~10 times per min_interval); initial: the step the count starts from (a resumed
--- run), rates count steps after it; formats: per-field string.format patterns; columns: the
--- terminal's width (default $COLUMNS when set): longer lines are cut, as a wrapped line
--- cannot be redrawn in place.
function M.new(opts)
  local fname = 'diffuse.progress.new'
  opts = opts or {}
  if type(opts) ~= 'table' then error(fname .. ': options must be a table', 2) end
  for k in pairs(opts) do
    if not OPTS[k] then error(fmt("%s: unknown option '%s'", fname, tostring(k)), 2) end
  end
  local total = opts.total
  if total ~= nil and (type(total) ~= 'number' or total ~= total or total < 0 or total == huge) then
    error(fname .. ': total must be a non-negative number (or nil when unknown)', 2)
  end
  local stream = opts.stream or io.stderr
  local ok, w = pcall(function() return stream.write end)
  if not ok or w == nil then error(fname .. ': stream must have a write method', 2) end
  local clock = opts.clock or core().clock
  if type(clock) ~= 'function' then error(fname .. ': clock must be a function', 2) end
  local tty = opts.tty
  if tty == nil then
    if stream == io.stderr then tty = core().isatty(2)
    elseif stream == io.stdout then tty = core().isatty(1)
    else tty = false end
  end
  local width = opts.width or 30
  if type(width) ~= 'number' or not (width >= 1 and width <= 500) then
    error(fname .. ': width must be 1..500', 2)
  end
  local mi = opts.min_interval or 0.1
  if type(mi) ~= 'number' or mi ~= mi or mi < 0 then error(fname .. ': min_interval must be >= 0', 2) end
  local every = opts.check_every or 'auto'
  if every ~= 'auto' and (type(every) ~= 'number' or every < 1) then
    error(fname .. ": check_every must be a number >= 1 or 'auto'", 2)
  end
  if opts.formats ~= nil and type(opts.formats) ~= 'table' then error(fname .. ': formats must be a table', 2) end
  for k, v in pairs(opts.formats or {}) do
    if type(v) ~= 'string' then error(fmt('%s: formats.%s must be a string', fname, tostring(k)), 2) end
  end
  local columns = opts.columns
  if columns ~= nil and (type(columns) ~= 'number' or not (columns >= 1 and columns < huge)) then
    error(fname .. ': columns must be a positive number', 2)
  end
  if columns == nil then -- $COLUMNS when it is a usable width; anything else in it is ignored
    local env = tonumber(os.getenv('COLUMNS') or '')
    if env and env > 1 and env < huge then columns = env end
  end
  local initial = opts.initial or 0
  if type(initial) ~= 'number' or not (initial >= 0 and initial < huge) then
    error(fname .. ': initial must be a finite number >= 0', 2)
  end
  local now = clock()
  if type(now) ~= 'number' or now ~= now then
    error(fname .. ': clock() must return a number (got ' .. type(now) .. ')', 2)
  end
  return setmetatable({
    total = total, label = opts.label and tostring(opts.label) or nil, stream = stream,
    clock = clock, tty = not not tty, width = floor(width), min_interval = mi,
    auto_every = every == 'auto', every = every == 'auto' and 1 or floor(every),
    formats = opts.formats or {},
    columns = columns,
    t0 = now, initial = initial, step = initial, fields = {}, done = false,
    calls = 0, next_check = 1, check_calls = 0, check_time = now,
    last_draw = -huge, last_len = 0, final_drawn = false,
    next_decile = 1, next_plain = 1, plain_step = nil, lines = 0, elapsed = 0,
  }, Bar)
end

-- ---- formatting --------------------------------------------------------------------------------

local function fmt_time(s)
  if not s or s ~= s or s == huge or s < 0 then return '?' end
  if s >= 3.6e8 then return fmt('%.3gh', s / 3600) end -- (past 100000 hours: no h:mm:ss)
  s = floor(s + 0.5)
  local h, m = s // 3600, (s // 60) % 60
  if h > 0 then return fmt('%d:%02d:%02d', h, m, s % 60) end
  return fmt('%02d:%02d', m, s % 60)
end
function M.format_time(s)
  if type(s) ~= 'number' then error('diffuse.progress.format_time: s must be a number (got ' .. type(s) .. ')', 2) end
  return fmt_time(s)
end

local function fmt_rate(r)
  if not r or r ~= r or r == huge then return '? it/s' end
  if r > 0 and r < 1 then return fmt('%.2f s/it', 1 / r) end
  if r >= 99.95 then return fmt('%.0f it/s', r) end   -- thresholds at the rounded values, so
  if r >= 9.995 then return fmt('%.1f it/s', r) end   -- 99.99 prints as 100, not 100.0
  return fmt('%.2f it/s', r)
end
function M.format_rate(r)
  if type(r) ~= 'number' then error('diffuse.progress.format_rate: r must be a number (got ' .. type(r) .. ')', 2) end
  return fmt_rate(r)
end

-- a step count: an integer when it is one, else in %g (a float past 2^63 has no %d)
local function fmt_count(v)
  v = floor(v)
  if math.type(v) == 'integer' then return fmt('%d', v) end
  return fmt('%.4g', v)
end

-- a field's value: integers as they are; floats with 4 significant digits in [0.1, 1e4),
-- else as 3.1e-02; anything else through tostring
local function fmt_value(v, pattern)
  if pattern then
    local ok, s = pcall(fmt, pattern, v)
    if ok then return s end -- (else, a value the pattern does not take: as if none were given)
  end
  if math.type(v) == 'integer' then return tostring(v) end
  if type(v) == 'number' then
    local a = math.abs(v)
    if v ~= v or a == huge then return tostring(v) end
    if v == 0 then return '0' end
    if a >= 0.1 and a < 1e4 then return fmt('%.4g', v) end
    return fmt('%.1e', v)
  end
  return tostring(v)
end

function Bar:_text(now, with_bar)
  local elapsed = now - self.t0
  local done = self.step - self.initial
  local rate = elapsed > 0 and done / elapsed or nil
  local parts = {}
  if self.label then parts[#parts + 1] = self.label .. ' ' end
  local total = self.total
  local eta
  if total then
    local frac = total > 0 and min(1, max(0, self.step / total)) or 1
    parts[#parts + 1] = fmt('%3d%%', floor(frac * 100))
    if with_bar then
      local cells = frac * self.width
      local full = floor(cells)
      local part = floor((cells - full) * 8)
      local bar = string.rep('█', full)
      if full < self.width then
        bar = bar .. (part > 0 and PARTIAL[part] or ' ') .. string.rep(' ', self.width - full - 1)
      end
      parts[#parts + 1] = '|' .. bar .. '|'
    end
    parts[#parts + 1] = ' ' .. fmt_count(self.step) .. '/' .. fmt_count(total)
    if rate and rate > 0 then eta = max(0, total - self.step) / rate
    elseif self.step >= total then eta = 0 end
    parts[#parts + 1] = fmt(' [%s<%s, %s', fmt_time(elapsed), fmt_time(eta), fmt_rate(rate))
  else
    parts[#parts + 1] = fmt('%s it [%s, %s', fmt_count(self.step), fmt_time(elapsed), fmt_rate(rate))
  end
  local keys = {}
  for k in pairs(self.fields) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    parts[#parts + 1] = fmt(', %s=%s', k, fmt_value(self.fields[k], self.formats[k]))
  end
  parts[#parts + 1] = ']'
  self.elapsed, self.rate, self.eta = elapsed, rate, eta
  return table.concat(parts)
end

function Bar:_write(s)
  self.stream:write(s)
  if self.stream.flush then self.stream:flush() end
end

function Bar:_draw(now)
  local line = self:_text(now, true)
  local len = utf8.len(line) or #line
  local cols = self.columns
  if cols and cols > 1 and len > cols - 1 then
    line = line:sub(1, (utf8.offset(line, cols) or (#line + 1)) - 1)
    len = cols - 1
  end
  local pad = self.last_len > len and string.rep(' ', self.last_len - len) or ''
  self.last_len = len
  self.last_draw = now
  self:_write('\r' .. line .. pad)
end

function Bar:_plain(now)
  self:_write(self:_text(now, false) .. '\n')
  self.plain_step = self.step
  self.lines = self.lines + 1
end

-- ---- updates -----------------------------------------------------------------------------------

local function merge(dst, src)
  if src == nil then return false end
  if type(src) ~= 'table' then error('diffuse.progress.update: fields must be a table', 3) end
  for k, v in pairs(src) do dst[k] = v end
  return true
end

--- bar:update([step [, fields]]) --> bar
--- step: steps done so far (default: one more than before); fields: {name = value} shown after
--- the rates (kept until replaced). Draws when due: on a terminal at most every min_interval
--- seconds and always at the last step; elsewhere at each new tenth of total (with no total,
--- at steps 1, 2, 4, 8, ...).
function Bar:update(step, fields)
  if self.done then return self end
  if step == nil then step = self.step + 1
  elseif type(step) ~= 'number' or step ~= step or step == huge or step == -huge then
    error('diffuse.progress.update: step must be a finite number', 2)
  end
  self.step = step
  local changed = merge(self.fields, fields)
  self.fields_changed = self.fields_changed or changed
  local total = self.total
  local final = total ~= nil and step >= total
  if self.tty then
    local calls = self.calls + 1
    self.calls = calls
    if calls < self.next_check and not final then return self end
    local now = self.clock()
    if self.auto_every then
      local dt = now - self.check_time
      if dt > 0 then
        -- read the clock about ten times per redraw interval
        local rate = (calls - self.check_calls) / dt
        self.every = min(1024, max(1, floor(rate * self.min_interval / 10)))
      end
      self.check_calls, self.check_time = calls, now
    end
    self.next_check = calls + self.every
    if final then
      if not self.final_drawn then self.final_drawn = true; self:_draw(now) end
    elseif now - self.last_draw >= self.min_interval then
      self:_draw(now)
    end
  elseif total then
    if total > 0 and step * 10 >= self.next_decile * total then
      self.next_decile = floor(step * 10 / total) + 1
      self:_plain(self.clock())
      self.fields_changed = false
    end
  elseif step >= self.next_plain then
    self.next_plain = max(1, step) * 2
    self:_plain(self.clock())
    self.fields_changed = false
  end
  return self
end

--- bar:finish([fields]) --> elapsed seconds
--- Writes the final state: on a terminal the line once more and a newline; elsewhere a last
--- plain line unless the last one written already showed this step and these fields.
--- Later update/finish calls do nothing.
function Bar:finish(fields)
  if self.done then return self.elapsed end
  local changed = merge(self.fields, fields)
  local now = self.clock()
  if self.tty then
    self:_draw(now)
    self:_write('\n')
  elseif changed or self.fields_changed or self.plain_step ~= self.step then
    self:_plain(now)
  else
    self:_text(now, false)   -- only to record the final elapsed time and rate
  end
  self.done = true
  return self.elapsed
end

--- diffuse.progress.wrap(n, fn [, opts]) --> bar
--- Runs fn(i) for i = 1..n under a progress bar (opts as for new, total = n); when fn returns
--- a table, its entries are shown as fields (e.g. return {loss = l}).
function M.wrap(n, fn, opts)
  if type(n) ~= 'number' or not (n >= 0 and n < huge) then
    error('diffuse.progress.wrap: n must be a finite non-negative number', 2)
  end
  if type(fn) ~= 'function' then error('diffuse.progress.wrap: fn must be a function', 2) end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.total = n
  local bar = M.new(o)
  for i = 1, n do
    local r = fn(i)
    bar:update(i, type(r) == 'table' and r or nil)
  end
  bar:finish()
  return bar
end

--- diffuse.progress.range(n [, opts]) --> iterator: for i, bar in progress.range(n) do ... end
--- Counts step i as done when the loop asks for the next one; finishes after the last.
--- (Leaving the loop early with break leaves the bar unfinished: call bar:finish().)
function M.range(n, opts)
  if type(n) ~= 'number' or not (n >= 0 and n < huge) then
    error('diffuse.progress.range: n must be a finite non-negative number', 2)
  end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.total = n
  local bar = M.new(o)
  local i = 0
  return function()
    if i > 0 then bar:update(i) end
    if i >= n then bar:finish(); return nil end
    i = i + 1
    return i, bar
  end
end

return M
