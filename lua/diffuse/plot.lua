-- diffuse.plot: figures as standalone SVG (histograms, lines, scatter, heatmaps with a colour
-- bar, log axes, legends) and quick Unicode histograms for the terminal. Pure Lua, no deps.
--
--   local fig = diffuse.plot.figure{ cols = 4, title = "Density During Forward Process" }
--   fig[1]:hist(x, { bins = 50, density = true, label = "samples" })
--   fig[1]:line(xs, ys, { dash = true, label = "analytic" })
--   fig:save("forward.svg")
--   diffuse.plot.terminal(x, { curve = function(v) return math.exp(-v * v / 2) / 2.5066 end })
--
-- Everything is laid out when the SVG is produced (fig:svg / fig:save), so settings such as
-- yscale('log') may come before or after the data. Non-finite values, and non-positive ones on
-- a log axis, are skipped; no coordinate written is ever NaN or infinite.
local M = {}

local floor, ceil, abs, log, huge = math.floor, math.ceil, math.abs, math.log, math.huge
local max, min, fmt, concat = math.max, math.min, string.format, table.concat

local function finite(v) return type(v) == 'number' and v == v and v ~= huge and v ~= -huge end
local function log10(v) return log(v, 10) end

local function is_tensor(x)
  if type(x) ~= 'userdata' then return false end
  local mt = getmetatable(x)
  return type(mt) == 'table' and mt.__name == 'diffuse.tensor'
end

-- Any tensor (flattened, row-major) or flat Lua array of numbers --> a Lua array of numbers.
local function flatten(t, out)
  for i = 1, #t do
    local v = t[i]
    if type(v) == 'table' then flatten(v, out) else out[#out + 1] = v end
  end
  return out
end

local function to_list(x, fname, what)
  if is_tensor(x) then return flatten(x:totable(), {}) end
  if type(x) ~= 'table' then
    error(fmt('%s: %s must be a tensor or an array of numbers (got %s)', fname, what, type(x)), 3)
  end
  if type(x[1]) == 'table' then x = flatten(x, {}) end   -- rows, as x:totable() of [N,1] gives
  for i = 1, #x do
    if type(x[i]) ~= 'number' then
      error(fmt('%s: %s must be a tensor or an array of numbers (element %d is a %s)',
                fname, what, i, type(x[i])), 3)
    end
  end
  return x
end

-- A 2-D tensor or an array of rows (equal lengths) --> array of rows
local function to_matrix(z, fname)
  local rows
  if is_tensor(z) then
    if z:dim() ~= 2 then error(fname .. ': z must be a 2-D tensor (rows x columns)', 3) end
    rows = z:totable()
  elseif type(z) == 'table' then
    rows = z
  else
    error(fmt('%s: z must be a 2-D tensor or an array of rows (got %s)', fname, type(z)), 3)
  end
  local nc = rows[1] and type(rows[1]) == 'table' and #rows[1] or nil
  if not nc then error(fname .. ': z must be a non-empty 2-D tensor or array of rows', 3) end
  for i = 1, #rows do
    local r = rows[i]
    if type(r) ~= 'table' or #r ~= nc then
      error(fmt('%s: z row %d has %s entries, row 1 has %d', fname, i,
                type(r) == 'table' and tostring(#r) or 'no', nc), 3)
    end
    for j = 1, nc do
      if type(r[j]) ~= 'number' then
        error(fmt('%s: z[%d][%d] is a %s, not a number', fname, i, j, type(r[j])), 3)
      end
    end
  end
  if nc == 0 then error(fname .. ': z has no columns', 3) end
  return rows, #rows, nc
end

-- ---- SVG text helpers --------------------------------------------------------------------------

-- Coordinates: two decimals, trailing zeros stripped. A non-finite value here is a bug upstream.
local function num(v)
  if not finite(v) then error('diffuse.plot: internal error: non-finite coordinate', 2) end
  local s = fmt('%.2f', v)
  s = s:gsub('0+$', ''):gsub('%.$', '')
  if s == '-0' then s = '0' end
  return s
end

local ESC = { ['&'] = '&amp;', ['<'] = '&lt;', ['>'] = '&gt;', ['"'] = '&quot;', ["'"] = '&apos;' }
-- Text for SVG: entities escaped, control characters (not allowed in XML 1.0) and invalid UTF-8
-- replaced, so any Lua string yields a well-formed file.
local function esc(s)
  s = tostring(s)
  if not utf8.len(s) then s = s:gsub('[\128-\255]', '?') end
  s = s:gsub('[%z\1-\8\11\12\14-\31\127]', '?')
  return (s:gsub('[&<>"\']', ESC))
end

-- Rough width of a string in px at a font size (sans-serif digits are ~0.6 em).
local function textw(s, size) return (utf8.len(s) or #s) * size * 0.6 end

-- matplotlib's default colour cycle (tab10)
M.colors = { '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd',
             '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf' }

local function color_of(c, default)
  if c == nil then return default end
  if type(c) ~= 'string' and type(c) ~= 'number' then
    error(fmt("diffuse.plot: color must be a string ('#1f77b4', 'red', 'C0') or a cycle index (got %s)",
              type(c)), 3)
  end
  if type(c) == 'number' then return M.colors[(floor(c) % #M.colors) + 1] end
  local k = type(c) == 'string' and c:match('^C(%d)$')
  if k then return M.colors[tonumber(k) + 1] end
  return esc(c)
end

-- ---- colour maps -------------------------------------------------------------------------------

-- viridis (matplotlib, CC0: van der Walt & Smith), all 256 entries
local VIRIDIS = {
  "440154","440256","450457","450559","46075a","46085c","460a5d","460b5e","470d60","470e61","471063","471164",
  "471365","481467","481668","481769","48186a","481a6c","481b6d","481c6e","481d6f","481f70","482071","482173",
  "482374","482475","482576","482677","482878","482979","472a7a","472c7a","472d7b","472e7c","472f7d","46307e",
  "46327e","46337f","463480","453581","453781","453882","443983","443a83","443b84","433d84","433e85","423f85",
  "424086","424186","414287","414487","404588","404688","3f4788","3f4889","3e4989","3e4a89","3e4c8a","3d4d8a",
  "3d4e8a","3c4f8a","3c508b","3b518b","3b528b","3a538b","3a548c","39558c","39568c","38588c","38598c","375a8c",
  "375b8d","365c8d","365d8d","355e8d","355f8d","34608d","34618d","33628d","33638d","32648e","32658e","31668e",
  "31678e","31688e","30698e","306a8e","2f6b8e","2f6c8e","2e6d8e","2e6e8e","2e6f8e","2d708e","2d718e","2c718e",
  "2c728e","2c738e","2b748e","2b758e","2a768e","2a778e","2a788e","29798e","297a8e","297b8e","287c8e","287d8e",
  "277e8e","277f8e","27808e","26818e","26828e","26828e","25838e","25848e","25858e","24868e","24878e","23888e",
  "23898e","238a8d","228b8d","228c8d","228d8d","218e8d","218f8d","21908d","21918c","20928c","20928c","20938c",
  "1f948c","1f958b","1f968b","1f978b","1f988b","1f998a","1f9a8a","1e9b8a","1e9c89","1e9d89","1f9e89","1f9f88",
  "1fa088","1fa188","1fa187","1fa287","20a386","20a486","21a585","21a685","22a785","22a884","23a983","24aa83",
  "25ab82","25ac82","26ad81","27ad81","28ae80","29af7f","2ab07f","2cb17e","2db27d","2eb37c","2fb47c","31b57b",
  "32b67a","34b679","35b779","37b878","38b977","3aba76","3bbb75","3dbc74","3fbc73","40bd72","42be71","44bf70",
  "46c06f","48c16e","4ac16d","4cc26c","4ec36b","50c46a","52c569","54c568","56c667","58c765","5ac864","5cc863",
  "5ec962","60ca60","63cb5f","65cb5e","67cc5c","69cd5b","6ccd5a","6ece58","70cf57","73d056","75d054","77d153",
  "7ad151","7cd250","7fd34e","81d34d","84d44b","86d549","89d548","8bd646","8ed645","90d743","93d741","95d840",
  "98d83e","9bd93c","9dd93b","a0da39","a2da37","a5db36","a8db34","aadc32","addc30","b0dd2f","b2dd2d","b5de2b",
  "b8de29","bade28","bddf26","c0df25","c2df23","c5e021","c8e020","cae11f","cde11d","d0e11c","d2e21b","d5e21a",
  "d8e219","dae319","dde318","dfe318","e2e418","e5e419","e7e419","eae51a","ece51b","efe51c","f1e51d","f4e61e",
  "f6e620","f8e621","fbe723","fde725",
}

local function rgb(hex)
  return tonumber(hex:sub(1, 2), 16), tonumber(hex:sub(3, 4), 16), tonumber(hex:sub(5, 6), 16)
end

local function anchors_map(anchors)
  local n, rs, gs, bs = #anchors, {}, {}, {}
  for i, h in ipairs(anchors) do rs[i], gs[i], bs[i] = rgb(h) end
  -- t in [0, 1] --> r, g, b (0..255), linear between anchors
  return function(t)
    if not finite(t) then t = 0 end
    t = min(1, max(0, t)) * (n - 1)
    local i = min(n - 2, floor(t))
    local f = t - i
    i = i + 1
    return rs[i] + f * (rs[i + 1] - rs[i]), gs[i] + f * (gs[i + 1] - gs[i]),
           bs[i] + f * (bs[i + 1] - bs[i])
  end
end

local CMAPS = {
  viridis = anchors_map(VIRIDIS),
  gray = anchors_map({ '000000', 'ffffff' }),
}
CMAPS.grey = CMAPS.gray

local function hexcolor(r, g, b)
  return fmt('#%02x%02x%02x', floor(r + 0.5), floor(g + 0.5), floor(b + 0.5))
end

--- diffuse.plot.colormap(name) --> function(t) --> '#rrggbb' for t in [0, 1] (clamped);
--- names: 'viridis', 'gray', and either with '_r' for the reversed map.
function M.colormap(name)
  name = name or 'viridis'
  local base, rev = tostring(name):match('^(.-)(_r)$')
  local f = CMAPS[base or name]
  if not f then
    error(fmt("diffuse.plot.colormap: unknown colour map '%s' (viridis, gray)", tostring(name)), 2)
  end
  local raw = rev and function(t) return f(1 - t) end or f
  local fname = 'diffuse.plot.' .. (name == 'viridis' and 'viridis' or 'colormap')
  return function(t)
    if type(t) ~= 'number' then error(fmt('%s: t must be a number (got %s)', fname, type(t)), 2) end
    return hexcolor(raw(t))
  end, raw
end

--- diffuse.plot.viridis(t) --> '#rrggbb'; viridis(0) = '#440154', viridis(1) = '#fde725'
M.viridis = M.colormap('viridis')

-- ---- ticks -------------------------------------------------------------------------------------

-- Compact number: %.4g with a short exponent ("2e-05" --> "2e-5", "1e+06" --> "1e6").
local function gfmt(v, digits)
  local s = fmt('%.' .. (digits or 4) .. 'g', v)
  s = s:gsub('e%+?(%-?)0*(%d)', 'e%1%2')
  if s == '-0' then s = '0' end
  return s
end
--- diffuse.plot.format_number(v [, digits = 4]) --> the compact text the axes use
function M.format_number(v, digits)
  if type(v) ~= 'number' then
    error(fmt('diffuse.plot.format_number: v must be a number (got %s)', type(v)), 2)
  end
  if digits ~= nil and (math.type(digits) ~= 'integer' or digits < 1 or digits > 17) then
    error(fmt('diffuse.plot.format_number: digits must be a whole number in 1..17 (got %s)',
              tostring(digits)), 2)
  end
  return gfmt(v, digits)
end

-- Labels for linear ticks of a given step: as many decimals as the step needs, scientific
-- notation for very large or very small magnitudes.
local function tick_labels(ticks, step)
  local maxabs = 0
  for _, v in ipairs(ticks) do maxabs = max(maxabs, abs(v)) end
  local labels = {}
  local se = floor(log10(step) + 1e-9)
  if maxabs >= 1e5 or (maxabs > 0 and maxabs < 1e-3) or se < -5 then
    for i, v in ipairs(ticks) do
      if v == 0 then labels[i] = '0'
      else
        local k = max(0, floor(log10(abs(v)) + 1e-9) - se)
        local s = fmt('%.' .. k .. 'e', v)
        s = s:gsub('%.?0+e', 'e'):gsub('e%+?(%-?)0*(%d)', 'e%1%2')
        labels[i] = s
      end
    end
  else
    local d = max(0, -se)
    for i, v in ipairs(ticks) do
      local s = fmt('%.' .. d .. 'f', v)
      if s:match('^%-0%.?0*$') then s = s:sub(2) end
      labels[i] = s
    end
  end
  return labels
end

local function check_count(v, default, fname, what, limit)
  limit = limit or 100
  if v == nil then return default end
  if math.type(v) ~= 'integer' and not (type(v) == 'number' and v == floor(v)) then
    error(fmt('%s: %s must be a whole number (got %s)', fname, what, tostring(v)), 3)
  end
  if v < 1 or v > limit then
    error(fmt('%s: %s must be between 1 and %d (got %s)', fname, what, limit, tostring(v)), 3)
  end
  return floor(v)
end

-- "about n" ticks: any number up to 1000 (fractions and 0 as before: at least one step)
local function check_about(n, fname)
  if n == nil then return 5 end
  if type(n) ~= 'number' or not (n <= 1000) then
    error(fmt('%s: n must be a number up to 1000 (got %s)', fname, tostring(n)), 3)
  end
  return max(1, floor(n))
end

local function check_range(lo, hi, fname)
  for i, v in ipairs { lo, hi } do
    if type(v) ~= 'number' then
      error(fmt('%s: %s must be a number (got %s)', fname, i == 1 and 'lo' or 'hi', type(v)), 3)
    end
  end
end

--- diffuse.plot.ticks(lo, hi [, n]) --> ticks, labels, step: "nice" ticks (steps 1, 2 or 5 times
--- a power of ten) inside [lo, hi], about n of them (default 5, at most 1000). No ticks for an
--- empty or non-finite range.
function M.ticks(lo, hi, n)
  local fname = 'diffuse.plot.ticks'
  check_range(lo, hi, fname)
  n = check_about(n, fname)
  if not (finite(lo) and finite(hi)) or hi <= lo then return {}, {}, 0 end
  local raw = (hi - lo) / n
  if raw == math.huge then raw = hi / n - lo / n end -- (a span past 1.8e308)
  if raw == math.huge then raw = max(-lo, hi) end
  if not (raw >= 1e-300) then return {}, {}, 0 end -- (a span of subnormals: no nice steps there)
  local e = floor(log10(raw))
  local f = raw / 10 ^ e
  local nf = f < 1.5 and 1 or f < 3 and 2 or f < 7 and 5 or 10
  local step = nf * 10 ^ e
  if step == math.huge then step = 10 ^ e end -- (2e308 or 5e308: 1e308 steps still fit)
  local ticks = {}
  local k0, k1 = ceil(lo / step - 1e-9), floor(hi / step + 1e-9)
  for k = k0, k1 do
    local v = tonumber(fmt('%.12g', k * step))
    if abs(v) < step * 1e-9 then v = 0 end
    ticks[#ticks + 1] = v
  end
  return ticks, tick_labels(ticks, step), step
end

local SUP = { ['0'] = '⁰', ['1'] = '¹', ['2'] = '²', ['3'] = '³', ['4'] = '⁴', ['5'] = '⁵',
              ['6'] = '⁶', ['7'] = '⁷', ['8'] = '⁸', ['9'] = '⁹', ['-'] = '⁻' }
local function decade_label(k) return '10' .. tostring(k):gsub('.', SUP) end

--- diffuse.plot.log_ticks(lo, hi [, n]) --> majors, labels, minors for a log axis over [lo, hi]
--- (lo > 0): decades labelled 10^k (every m-th decade when there are more than about n),
--- minor ticks at 2..9 x 10^k; under two decades in view, 1-2-5 multiples are labelled.
function M.log_ticks(lo, hi, n)
  local fname = 'diffuse.plot.log_ticks'
  check_range(lo, hi, fname)
  n = check_about(n, fname)
  local majors, labels, minors = {}, {}, {}
  if not (finite(lo) and finite(hi)) or lo <= 0 or hi <= lo then return majors, labels, minors end
  local a, b = ceil(log10(lo) - 1e-9), floor(log10(hi) + 1e-9)
  local function inside(v) return v >= lo * (1 - 1e-9) and v <= hi * (1 + 1e-9) end
  if b - a + 1 >= 2 then
    local stride = max(1, ceil((b - a + 1) / max(1, n)))
    for k = a, b do
      if k % stride == 0 then
        majors[#majors + 1] = 10 ^ k; labels[#labels + 1] = decade_label(k)
      elseif stride > 1 then
        minors[#minors + 1] = 10 ^ k
      end
    end
    if stride == 1 and b - a <= 8 then
      for k = a - 1, b do
        for m = 2, 9 do
          local v = m * 10 ^ k
          if inside(v) then minors[#minors + 1] = v end
        end
      end
    end
    return majors, labels, minors
  end
  -- less than two decades: 1-2-5 (or every integer multiple) of the powers of ten in view
  local k0, k1 = floor(log10(lo)), ceil(log10(hi))
  for _, ms in ipairs({ { 1, 2, 5 }, { 1, 2, 3, 4, 5, 6, 7, 8, 9 } }) do
    majors, labels, minors = {}, {}, {}
    local major = {}
    for _, m in ipairs(ms) do major[m] = true end
    for k = k0, k1 do
      for m = 1, 9 do
        local v = tonumber(fmt('%.12g', m * 10 ^ k))
        if inside(v) then
          if major[m] then majors[#majors + 1] = v; labels[#labels + 1] = gfmt(v)
          else minors[#minors + 1] = v end
        end
      end
    end
    if #majors >= 2 then return majors, labels, minors end
  end
  -- a very narrow range: plain linear ticks placed on the log axis
  local t, l = M.ticks(lo, hi, n)
  return t, l, {}
end

-- ---- geometry ----------------------------------------------------------------------------------

-- Liang-Barsky: the part of segment (x1,y1)-(x2,y2) inside the box, or nil.
local function clip_segment(x1, y1, x2, y2, xa, ya, xb, yb)
  local t0, t1 = 0, 1
  local dx, dy = x2 - x1, y2 - y1
  local function edge(p, q)
    if p == 0 then return q >= 0 end
    local r = q / p
    if p < 0 then
      if r > t1 then return false end
      if r > t0 then t0 = r end
    else
      if r < t0 then return false end
      if r < t1 then t1 = r end
    end
    return true
  end
  if edge(-dx, x1 - xa) and edge(dx, xb - x1) and edge(-dy, y1 - ya) and edge(dy, yb - y1) then
    return x1 + t0 * dx, y1 + t0 * dy, x1 + t1 * dx, y1 + t1 * dy
  end
  return nil
end

-- ---- figure and panels -------------------------------------------------------------------------

local Figure, Panel = {}, {}
local figure_serial = 0

local FIG_OPTS = { rows = true, cols = true, title = true, width = true, height = true,
                   font_size = true, background = true }

local function check_opts(opts, allowed, fname)
  if opts == nil then return {} end
  if type(opts) ~= 'table' then error(fmt('%s: options must be a table (got %s)', fname, type(opts)), 3) end
  for k in pairs(opts) do
    if not allowed[k] then
      local names = {}
      for n in pairs(allowed) do names[#names + 1] = n end
      table.sort(names)
      error(fmt("%s: unknown option '%s' (known: %s)", fname, tostring(k), concat(names, ', ')), 3)
    end
  end
  return opts
end


local function new_panel(fig, index, r, c)
  return setmetatable({
    fig = fig, index = index, row = r, col = c, artists = {}, ncolor = 0,
    _xscale = 'linear', _yscale = 'linear', _xlim = {}, _ylim = {}, _grid = false,
    _legend = { show = nil, loc = 'best' },
  }, Panel)
end

--- diffuse.plot.figure{rows = 1, cols = 1, title = nil, width = 320*cols, height = 260*rows
---                     (+ room for the title), font_size = 11, background = 'white'} --> figure
--- Panels: fig[i] (row-major, 1-based) or fig:panel(row, col).
function M.figure(opts)
  local fname = 'diffuse.plot.figure'
  opts = check_opts(opts, FIG_OPTS, fname)
  local rows = check_count(opts.rows, 1, fname, 'rows')
  local cols = check_count(opts.cols, 1, fname, 'cols')
  local fs = opts.font_size or 11
  if not finite(fs) or fs <= 0 or fs > 1000 then
    error(fmt('%s: font_size must be a positive number up to 1000 (got %s)', fname, tostring(fs)), 2)
  end
  for _, k in ipairs({ 'width', 'height' }) do
    local v = opts[k]
    if v ~= nil and (not finite(v) or v < 50 or v > 20000) then
      error(fmt('%s: %s must be a number of pixels between 50 and 20000 (got %s)', fname, k, tostring(v)), 2)
    end
  end
  figure_serial = figure_serial + 1
  local fig = { rows = rows, cols = cols, font_size = fs, _title = opts.title,
                _width = opts.width, _height = opts.height, panels = {},
                background = opts.background or 'white', serial = figure_serial }
  for r = 1, rows do
    for c = 1, cols do
      local i = (r - 1) * cols + c
      fig.panels[i] = new_panel(fig, i, r, c)
    end
  end
  return setmetatable(fig, Figure)
end

Figure.__index = function(fig, k)
  if type(k) == 'number' then
    local p = fig.panels[k]
    if not p then
      error(fmt('diffuse.plot: the figure has no panel %s (it has %d: fig[1] .. fig[%d])',
                tostring(k), #fig.panels, #fig.panels), 2)
    end
    return p
  end
  return Figure[k]
end
Figure.__len = function(fig) return #fig.panels end
Figure.__name = 'diffuse.plot.figure'

--- fig:panel(row, col) --> panel
function Figure.panel(fig, r, c)
  r, c = math.tointeger(r) or r, math.tointeger(c) or c -- (2.0 is row 2)
  if math.type(r) ~= 'integer' or math.type(c) ~= 'integer' or r < 1 or c < 1
     or r > fig.rows or c > fig.cols then
    error(fmt('diffuse.plot.panel: no panel (%s, %s) in a %dx%d figure', tostring(r), tostring(c),
              fig.rows, fig.cols), 2)
  end
  return fig.panels[(r - 1) * fig.cols + c]
end

--- fig:title(s): the figure's title (above all panels)
function Figure.title(fig, s) fig._title = s; return fig end

-- ---- panel settings (each returns the panel, so calls chain) ----------------------------------

Panel.__index = Panel
Panel.__name = 'diffuse.plot.panel'

function Panel:title(s) self._title = s; return self end
function Panel:xlabel(s) self._xlabel = s; return self end
function Panel:ylabel(s) self._ylabel = s; return self end
function Panel:grid(on) self._grid = on == nil or not not on; return self end

local function set_lim(self, key, a, b, fname)
  if type(a) == 'table' then a, b = a[1], a[2] end
  for _, v in ipairs({ a or 0, b or 0 }) do
    if not finite(v) then error(fmt('%s: limits must be finite numbers or nil (got %s)', fname, tostring(v)), 3) end
  end
  if a and b and a >= b then error(fmt('%s: the lower limit %s must be below the upper %s', fname, a, b), 3) end
  self[key] = { a, b }
  return self
end
--- panel:xlim(lo, hi) / panel:ylim(lo, hi): fix either end (nil keeps it automatic)
function Panel:xlim(a, b) return set_lim(self, '_xlim', a, b, 'diffuse.plot.xlim') end
function Panel:ylim(a, b) return set_lim(self, '_ylim', a, b, 'diffuse.plot.ylim') end

local function set_scale(self, key, s, fname)
  if s ~= 'log' and s ~= 'linear' then
    error(fmt("%s: scale must be 'log' or 'linear' (got %s)", fname, tostring(s)), 3)
  end
  self[key] = s
  return self
end
function Panel:xscale(s) return set_scale(self, '_xscale', s, 'diffuse.plot.xscale') end
function Panel:yscale(s) return set_scale(self, '_yscale', s, 'diffuse.plot.yscale') end

local LEGEND_LOCS = { best = true, ['upper right'] = true, ['upper left'] = true,
  ['lower left'] = true, ['lower right'] = true, ['upper center'] = true,
  ['lower center'] = true, ['center left'] = true, ['center right'] = true, center = true }

--- panel:legend([opts | false]): a legend of the labelled artists (shown automatically as soon
--- as one has a label; legend(false) hides it). opts: loc ('best' = the corner or edge spot
--- over the fewest drawn points; 'upper right', 'upper left', 'lower left', 'lower right',
--- 'upper center', 'lower center', 'center left', 'center right', 'center'), font_size.
function Panel:legend(opts)
  if opts == false then self._legend.show = false; return self end
  opts = check_opts(opts ~= true and opts or nil, { loc = true, font_size = true }, 'diffuse.plot.legend')
  if opts.loc ~= nil and not LEGEND_LOCS[opts.loc] then
    error(fmt("diffuse.plot.legend: unknown loc '%s'", tostring(opts.loc)), 2)
  end
  if opts.font_size ~= nil and (not finite(opts.font_size) or opts.font_size <= 0 or opts.font_size > 1000) then
    error('diffuse.plot.legend: font_size must be a positive number up to 1000', 2)
  end
  self._legend = { show = true, loc = opts.loc or 'best', font_size = opts.font_size }
  return self
end

local function next_color(self)
  local c = M.colors[self.ncolor % #M.colors + 1]
  self.ncolor = self.ncolor + 1
  return c
end

local function dash_of(d, fname)
  if d == nil or d == false then return nil end
  if d == true then return '6,4' end
  if type(d) == 'string' and d:match('^[%d%.,%s]+$') then return d end
  error(fname .. ": dash must be true or a dasharray string such as '4,2'", 3)
end

local function opacity(a, fname)
  if a == nil then return nil end
  if not finite(a) or a < 0 or a > 1 then error(fname .. ': alpha must be in [0, 1]', 3) end
  return a
end

-- ---- artists -----------------------------------------------------------------------------------

local HIST_OPTS = { bins = true, range = true, density = true, label = true, color = true,
                    alpha = true, histtype = true }

--- panel:hist(x, {bins, range = {lo, hi}, density = false, label, color, alpha = 0.75,
---                histtype = 'bar' | 'step'}) --> counts, edges (Lua arrays; counts are
--- densities when density = true). x: tensor (any shape, flattened) or array; NaN/inf skipped.
--- bins defaults to sqrt(n) clamped to [10, 50]; range to the finite data's min and max.
function Panel:hist(x, opts)
  local fname = 'diffuse.plot.hist'
  opts = check_opts(opts, HIST_OPTS, fname)
  local xs = to_list(x, fname, 'x')
  local vals = {}
  for i = 1, #xs do if finite(xs[i]) then vals[#vals + 1] = xs[i] end end
  local bins = opts.bins
  if bins == nil then bins = min(50, max(10, ceil(math.sqrt(#vals)))) end
  if math.type(bins) ~= 'integer' and not (finite(bins) and bins == floor(bins)) or bins < 1 or bins > 100000 then
    error(fname .. ': bins must be a whole number between 1 and 100000', 2)
  end
  bins = floor(bins)
  local lo, hi
  if opts.range ~= nil then
    if type(opts.range) ~= 'table' or not finite(opts.range[1]) or not finite(opts.range[2])
       or opts.range[1] >= opts.range[2] then
      error(fname .. ': range must be {lo, hi} with finite lo < hi', 2)
    end
    lo, hi = opts.range[1], opts.range[2]
  else
    lo, hi = huge, -huge
    for _, v in ipairs(vals) do if v < lo then lo = v end; if v > hi then hi = v end end
    if lo > hi then lo, hi = 0, 1 end                 -- no data: an empty unit range
    if lo == hi then lo, hi = lo - 0.5, hi + 0.5 end  -- constant data: one unit around it
  end
  local counts, edges, total = {}, {}, 0
  for b = 1, bins do counts[b] = 0 end
  local span = hi - lo
  for _, v in ipairs(vals) do
    if v >= lo and v <= hi then
      local b = min(bins, floor((v - lo) / span * bins) + 1)
      counts[b] = counts[b] + 1
      total = total + 1
    end
  end
  for b = 0, bins do edges[b + 1] = lo + span * b / bins end
  if opts.density then
    local w = span / bins
    for b = 1, bins do counts[b] = total > 0 and counts[b] / (total * w) or 0 end
  end
  local ht = opts.histtype or 'bar'
  if ht ~= 'bar' and ht ~= 'step' then error(fname .. ": histtype must be 'bar' or 'step'", 2) end
  self.artists[#self.artists + 1] = {
    kind = 'hist', counts = counts, edges = edges, label = opts.label, histtype = ht,
    color = color_of(opts.color, next_color(self)), alpha = opacity(opts.alpha, fname) or (ht == 'bar' and 0.75 or 1),
  }
  local out = {}
  for i, c in ipairs(counts) do out[i] = c end
  return out, edges
end

local function xy_lists(self, xs, ys, fname)
  local X = to_list(xs, fname, 'xs')
  local Y = to_list(ys, fname, 'ys')
  if #X ~= #Y then error(fmt('%s: xs and ys differ in length (%d and %d)', fname, #X, #Y), 3) end
  return X, Y
end

-- line(ys [, opts]) as well as line(xs, ys [, opts]): x defaults to 1..n
local function args_xy(xs, ys, opts)
  if (ys == nil or (type(ys) == 'table' and ys[1] == nil and next(ys) ~= nil and not is_tensor(ys)))
     and opts == nil then
    local n = is_tensor(xs) and xs:numel() or (type(xs) == 'table' and #xs or 0)
    local X = {}
    for i = 1, n do X[i] = i end
    return X, xs, ys
  end
  return xs, ys, opts
end

local LINE_OPTS = { color = true, width = true, dash = true, label = true, alpha = true }

--- panel:line(xs, ys, {color, width = 1.6, dash = true | '4,2', label, alpha}) --> panel
--- (or panel:line(ys, opts) with xs = 1..n). A NaN/inf (or non-positive value on a log axis)
--- breaks the line; the pieces outside the axes are clipped.
function Panel:line(xs, ys, opts)
  local fname = 'diffuse.plot.line'
  xs, ys, opts = args_xy(xs, ys, opts)
  opts = check_opts(opts, LINE_OPTS, fname)
  local X, Y = xy_lists(self, xs, ys, fname)
  if opts.width ~= nil and (not finite(opts.width) or opts.width <= 0) then
    error(fname .. ': width must be a positive number', 2)
  end
  self.artists[#self.artists + 1] = {
    kind = 'line', x = X, y = Y, label = opts.label, width = opts.width or 1.6,
    dash = dash_of(opts.dash, fname), alpha = opacity(opts.alpha, fname),
    color = color_of(opts.color, next_color(self)),
  }
  return self
end

local SCATTER_OPTS = { color = true, size = true, label = true, alpha = true }

--- panel:scatter(xs, ys, {color, size = 2.5 (radius, px), label, alpha = 0.8}) --> panel
function Panel:scatter(xs, ys, opts)
  local fname = 'diffuse.plot.scatter'
  opts = check_opts(opts, SCATTER_OPTS, fname)
  local X, Y = xy_lists(self, xs, ys, fname)
  if opts.size ~= nil and (not finite(opts.size) or opts.size <= 0) then
    error(fname .. ': size must be a positive number', 2)
  end
  self.artists[#self.artists + 1] = {
    kind = 'scatter', x = X, y = Y, label = opts.label, size = opts.size or 2.5,
    alpha = opacity(opts.alpha, fname) or 0.8, color = color_of(opts.color, next_color(self)),
  }
  return self
end

local REF_OPTS = { color = true, width = true, dash = true, label = true, alpha = true }

local function refline(self, kind, v, opts, fname)
  opts = check_opts(opts, REF_OPTS, fname)
  if not finite(v) then error(fname .. ': the position must be a finite number', 3) end
  self.artists[#self.artists + 1] = {
    kind = kind, v = v, label = opts.label, width = opts.width or 1.2,
    dash = dash_of(opts.dash, fname), alpha = opacity(opts.alpha, fname),
    color = color_of(opts.color, next_color(self)),
  }
  return self
end
--- panel:hline(y, opts) / panel:vline(x, opts): a line across the axes (opts as line)
function Panel:hline(y, opts) return refline(self, 'hline', y, opts, 'diffuse.plot.hline') end
function Panel:vline(x, opts) return refline(self, 'vline', x, opts, 'diffuse.plot.vline') end

local IMAGE_OPTS = { extent = true, cmap = true, colorbar = true, vmin = true, vmax = true,
                     origin = true, raster = true, colorbar_label = true }

--- panel:image(z, {extent = {x0, x1, y0, y1}, cmap = 'viridis', vmin, vmax, colorbar = false |
---                 true | 'label', colorbar_label, origin = 'lower' | 'upper', raster}) --> panel
--- A heatmap: z is a 2-D tensor [rows, cols] or an array of rows; z[i][j] fills the cell at
--- column j (x) and row i (y), row 1 at the bottom (origin 'lower', y0) or at the top ('upper').
--- extent defaults to {0.5, cols + 0.5, 0.5, rows + 0.5}; vmin/vmax to the finite min/max.
--- NaN cells are left transparent. Large images (over 4096 cells; raster = true/false to force)
--- are embedded as a PNG instead of one <rect> per cell.
function Panel:image(z, opts)
  local fname = 'diffuse.plot.image'
  opts = check_opts(opts, IMAGE_OPTS, fname)
  local rows, nr, nc = to_matrix(z, fname)
  local ext = opts.extent or { 0.5, nc + 0.5, 0.5, nr + 0.5 }
  if type(ext) ~= 'table' then error(fname .. ': extent must be {x0, x1, y0, y1}', 2) end
  for i = 1, 4 do
    if not finite(ext[i]) then error(fname .. ': extent must be {x0, x1, y0, y1}, finite numbers', 2) end
  end
  if ext[1] == ext[2] or ext[3] == ext[4] then error(fname .. ': extent has zero width or height', 2) end
  local vmin, vmax = opts.vmin, opts.vmax
  if vmin == nil or vmax == nil then
    local lo, hi = huge, -huge
    for i = 1, nr do
      for j = 1, nc do
        local v = rows[i][j]
        if finite(v) then if v < lo then lo = v end; if v > hi then hi = v end end
      end
    end
    if lo > hi then lo, hi = 0, 1 end
    vmin = vmin == nil and lo or vmin
    vmax = vmax == nil and hi or vmax
  end
  if not finite(vmin) or not finite(vmax) then error(fname .. ': vmin and vmax must be finite', 2) end
  if vmin > vmax then error(fname .. ': vmin must not exceed vmax', 2) end
  if vmin == vmax then vmin, vmax = vmin - 0.5, vmax + 0.5 end
  local origin = opts.origin or 'lower'
  if origin ~= 'lower' and origin ~= 'upper' then error(fname .. ": origin must be 'lower' or 'upper'", 2) end
  local _, raw = M.colormap(opts.cmap or 'viridis')
  local cb = opts.colorbar
  local cblabel = opts.colorbar_label
  if type(cb) == 'string' then cblabel, cb = cb, true
  elseif type(cb) == 'table' then cblabel, cb = cb.label, true end
  self.artists[#self.artists + 1] = {
    kind = 'image', z = rows, nr = nr, nc = nc, extent = { ext[1], ext[2], ext[3], ext[4] },
    vmin = vmin, vmax = vmax, cmap = raw, origin = origin, raster = opts.raster,
    colorbar = cb and true or false, colorbar_label = cblabel,
  }
  return self
end

local TEXT_OPTS = { color = true, size = true, anchor = true, coords = true }

--- panel:text(x, y, s, {color, size, anchor = 'start' | 'middle' | 'end', coords = 'data' |
---                      'axes'}) --> panel; 'axes' places it by fractions of the axes (0..1).
function Panel:text(x, y, s, opts)
  local fname = 'diffuse.plot.text'
  opts = check_opts(opts, TEXT_OPTS, fname)
  if not finite(x) or not finite(y) then error(fname .. ': x and y must be finite numbers', 2) end
  local anchor = opts.anchor or 'start'
  if anchor ~= 'start' and anchor ~= 'middle' and anchor ~= 'end' then
    error(fname .. ": anchor must be 'start', 'middle' or 'end'", 2)
  end
  if opts.size ~= nil and (not finite(opts.size) or opts.size <= 0) then
    error(fname .. ': size must be a positive number', 2)
  end
  local coords = opts.coords or 'data'
  if coords ~= 'data' and coords ~= 'axes' then error(fname .. ": coords must be 'data' or 'axes'", 2) end
  self.artists[#self.artists + 1] = { kind = 'text', x = x, y = y, s = tostring(s),
    color = color_of(opts.color, '#222222'), size = opts.size, anchor = anchor, coords = coords }
  return self
end

-- ---- limits ------------------------------------------------------------------------------------

-- Data range of one axis over all artists: lo, hi (finite; positive on a log axis) and the
-- "sticky" values that padding may not cross (a histogram's baseline, an image's extent).
local function data_range(self, which)
  local logscale = self['_' .. which .. 'scale'] == 'log'
  local lo, hi, sticky = huge, -huge, {}
  local function take(v)
    if finite(v) and (not logscale or v > 0) then
      if v < lo then lo = v end
      if v > hi then hi = v end
    end
  end
  for _, a in ipairs(self.artists) do
    local k = a.kind
    if k == 'hist' then
      if which == 'x' then
        for _, e in ipairs(a.edges) do take(e) end
      else
        for _, c in ipairs(a.counts) do take(c) end
        if not logscale then take(0); sticky[#sticky + 1] = 0 end
      end
    elseif k == 'line' or k == 'scatter' then
      local vs, other = a[which], a[which == 'x' and 'y' or 'x']
      local olog = self['_' .. (which == 'x' and 'y' or 'x') .. 'scale'] == 'log'
      for i = 1, #vs do
        local o = other[i]
        if finite(o) and (not olog or o > 0) then take(vs[i]) end
      end
    elseif (k == 'hline' and which == 'y') or (k == 'vline' and which == 'x') then
      take(a.v)
    elseif k == 'image' then
      local e = a.extent
      local p, q = which == 'x' and e[1] or e[3], which == 'x' and e[2] or e[4]
      if not logscale or (p > 0 and q > 0) then
        take(p); take(q); sticky[#sticky + 1] = p; sticky[#sticky + 1] = q
      end
    end
  end
  return lo, hi, sticky, logscale
end

local function axis_limits(self, which)
  local lo, hi, sticky, logscale = data_range(self, which)
  local user = self['_' .. which .. 'lim']
  local ulo, uhi = user[1], user[2]
  if logscale then
    if ulo and ulo <= 0 then ulo = nil end
    if uhi and uhi <= 0 then uhi = nil end
  end
  if lo > hi then                       -- no data
    lo, hi = logscale and 1 or 0, logscale and 10 or 1
  elseif lo == hi then                  -- one value: a range around it (above a baseline)
    local at_sticky = false
    for _, s in ipairs(sticky) do if s == lo then at_sticky = true end end
    if logscale then lo, hi = lo / 10 ^ 0.5, hi * 10 ^ 0.5
    elseif at_sticky then hi = lo + (lo == 0 and 1 or abs(lo) * 0.1)
    else
      local d = lo == 0 and 1 or abs(lo) * 0.1
      lo, hi = lo - d, hi + d
    end
  else                                  -- 5 % margins, except at sticky edges
    local tlo, thi = lo, hi
    if logscale then tlo, thi = log10(lo), log10(hi) end
    local pad = 0.05 * (thi - tlo)
    local plo, phi = tlo - pad, thi + pad
    if logscale then plo, phi = 10 ^ plo, 10 ^ phi end
    for _, s in ipairs(sticky) do
      if s == lo then plo = lo end
      if s == hi then phi = hi end
    end
    lo, hi = plo, phi
  end
  lo, hi = ulo or lo, uhi or hi
  if lo >= hi then                      -- a one-sided user limit beyond the data
    if logscale then
      if ulo then hi = lo * 10 else lo = hi / 10 end
    else
      local d = max(1, abs(lo) * 0.1)
      if ulo then hi = lo + d else lo = hi - d end
    end
  end
  -- keep the span finite so that transforms never overflow
  if not finite(hi - lo) then lo, hi = max(lo, -1e307), min(hi, 1e307) end
  if logscale then
    lo, hi = max(lo, 1e-300), min(hi, 1e300)
    if lo >= hi then lo, hi = 1, 10 end
  end
  return lo, hi, logscale
end

-- Transform data --> pixels along one axis. Returns nil for values that cannot be placed.
local function make_transform(lo, hi, logscale, p0, p1)
  if logscale then
    local a, b = log10(lo), log10(hi)
    local s = (p1 - p0) / (b - a)
    return function(v)
      if not finite(v) or v <= 0 then return nil end
      local p = p0 + (log10(v) - a) * s
      return finite(p) and p or nil
    end
  end
  local s = (p1 - p0) / (hi - lo)
  return function(v)
    if not finite(v) then return nil end
    local p = p0 + (v - lo) * s
    return finite(p) and p or nil
  end
end

local function axis_ticks(lo, hi, logscale, n)
  -- decade labels are short and evenly spaced: a log axis takes more of them
  if logscale then return M.log_ticks(lo, hi, floor(n * 1.6)) end
  local t, l = M.ticks(lo, hi, n)
  return t, l, {}
end

-- ---- PNG for large heatmaps (stored deflate: no compression library needed) --------------------

local crc_table
local function crc32(s, crc)
  if not crc_table then
    crc_table = {}
    for i = 0, 255 do
      local c = i
      for _ = 1, 8 do c = (c & 1) ~= 0 and (0xEDB88320 ~ (c >> 1)) or (c >> 1) end
      crc_table[i] = c
    end
  end
  crc = (crc or 0) ~ 0xFFFFFFFF
  for i = 1, #s do crc = crc_table[(crc ~ s:byte(i)) & 0xFF] ~ (crc >> 8) end
  return crc ~ 0xFFFFFFFF
end

local function png_rgba(w, h, rowbytes)  -- rowbytes[i]: the i-th row's RGBA bytes, top first
  local raw = {}
  for i = 1, h do raw[i] = '\0' .. rowbytes[i] end
  raw = concat(raw)
  local blocks, pos, n = {}, 1, #raw
  repeat
    local len = min(65535, n - pos + 1)
    local last = pos + len > n and 1 or 0
    blocks[#blocks + 1] = string.pack('<I1I2I2', last, len, len ~ 0xFFFF) .. raw:sub(pos, pos + len - 1)
    pos = pos + len
  until pos > n
  local a, b = 1, 0
  for i = 1, n do a = (a + raw:byte(i)) % 65521; b = (b + a) % 65521 end
  local zdata = '\x78\x01' .. concat(blocks) .. string.pack('>I4', (b << 16) | a)
  local function chunk(kind, data)
    return string.pack('>I4', #data) .. kind .. data .. string.pack('>I4', crc32(kind .. data))
  end
  return '\137PNG\r\n\26\n' .. chunk('IHDR', string.pack('>I4I4I1I1I1I1I1', w, h, 8, 6, 0, 0, 0))
         .. chunk('IDAT', zdata) .. chunk('IEND', '')
end

local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function base64(s)
  local out, n = {}, #s
  for i = 1, n, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = (a << 16) | ((b or 0) << 8) | (c or 0)
    local q = { B64:sub((v >> 18) + 1, (v >> 18) + 1), B64:sub(((v >> 12) & 63) + 1, ((v >> 12) & 63) + 1),
                b and B64:sub(((v >> 6) & 63) + 1, ((v >> 6) & 63) + 1) or '=',
                c and B64:sub((v & 63) + 1, (v & 63) + 1) or '=' }
    out[#out + 1] = concat(q)
  end
  return concat(out)
end
M._png_rgba, M._base64, M._crc32 = png_rgba, base64, crc32  -- for the specs

-- ---- rendering ---------------------------------------------------------------------------------

local function render_panel(self, out, cx, cy, cw, ch, ids)
  local fig = self.fig
  local fs = fig.font_size
  local tfs = fs * 0.9                       -- tick labels
  local xlo, xhi, xlog = axis_limits(self, 'x')
  local ylo, yhi, ylog = axis_limits(self, 'y')

  local cbar
  for _, a in ipairs(self.artists) do if a.kind == 'image' and a.colorbar then cbar = a end end

  local top = 8 + (self._title and fs * 1.7 or 0)
  local bottom = 4 + 4 + tfs + 4 + (self._xlabel and fs * 1.5 or 0) + 4
  local h = max(10, ch - top - bottom)
  local yt, yl, ym = axis_ticks(ylo, yhi, ylog, max(2, floor(h / 40)))
  local cbt, cbl
  local right = 16
  if cbar then
    cbt, cbl = M.ticks(cbar.vmin, cbar.vmax, max(2, floor(h / 45)))
    local wmax = 0
    for _, s in ipairs(cbl) do wmax = max(wmax, textw(s, tfs)) end
    right = 10 + 12 + 4 + 3 + wmax + (cbar.colorbar_label and fs * 1.6 or 0) + 8
  end
  local ylw = 0
  for _, s in ipairs(yl) do ylw = max(ylw, textw(s, tfs)) end
  local left = 6 + (self._ylabel and fs * 1.5 or 0) + ylw + 4 + 4
  local w = max(10, cw - left - right)

  -- x ticks: as many as fit without the labels touching
  local xt, xl, xm
  local n = max(2, floor(w / 50))
  while true do
    xt, xl, xm = axis_ticks(xlo, xhi, xlog, n)
    local lw = 0
    for _, s in ipairs(xl) do lw = max(lw, textw(s, tfs)) end
    if n <= 2 or #xt <= 1 or (lw + 8) * #xt <= w then break end
    n = n - 1
  end

  local X0, Y0 = cx + left, cy + top        -- the axes box
  local X1, Y1 = X0 + w, Y0 + h
  local tx = make_transform(xlo, xhi, xlog, X0, X1)
  local ty = make_transform(ylo, yhi, ylog, Y1, Y0)
  local geom = { segs = {}, pts = {}, rects = {} }   -- what was drawn, for legend placement

  out[#out + 1] = fmt('<g class="panel" id="%s-panel-%d">', ids, self.index)
  out[#out + 1] = fmt('<rect class="axes-bg" x="%s" y="%s" width="%s" height="%s" fill="white"/>',
                      num(X0), num(Y0), num(w), num(h))
  if self._grid then
    local g = { '<g class="grid" stroke="#e3e3e3" stroke-width="0.8">' }
    for _, v in ipairs(xt) do
      local p = tx(v)
      if p then g[#g + 1] = fmt('<line x1="%s" y1="%s" x2="%s" y2="%s"/>', num(p), num(Y0), num(p), num(Y1)) end
    end
    for _, v in ipairs(yt) do
      local p = ty(v)
      if p then g[#g + 1] = fmt('<line x1="%s" y1="%s" x2="%s" y2="%s"/>', num(X0), num(p), num(X1), num(p)) end
    end
    g[#g + 1] = '</g>'
    out[#out + 1] = concat(g)
  end

  -- artists by layer: images, bars, lines and markers, text (insertion order within a layer)
  local layer = { image = 1, hist = 2, line = 3, scatter = 3, hline = 3, vline = 3, text = 4 }
  local order = {}
  for i, a in ipairs(self.artists) do order[i] = i end
  table.sort(order, function(i, j)
    local li, lj = layer[self.artists[i].kind], layer[self.artists[j].kind]
    if li ~= lj then return li < lj end
    return i < j
  end)

  local function path_of(xs, ys, n)
    -- pieces of a polyline inside the axes (1 px slack), broken at unplaceable points
    local d, px, py, open = {}, nil, nil, false
    local lx, ly                                   -- end of the last emitted segment
    for i = 1, n do
      local qx, qy = tx(xs[i]), ty(ys[i])
      if qx and qy then
        if px then
          local ax, ay, bx, by = clip_segment(px, py, qx, qy, X0 - 1, Y0 - 1, X1 + 1, Y1 + 1)
          if ax then
            geom.segs[#geom.segs + 1] = { ax, ay, bx, by }
            if not open or ax ~= lx or ay ~= ly then d[#d + 1] = 'M' .. num(ax) .. ',' .. num(ay) end
            d[#d + 1] = 'L' .. num(bx) .. ',' .. num(by)
            lx, ly, open = bx, by, true
          else
            open = false
          end
        elseif n == 1 and qx >= X0 and qx <= X1 and qy >= Y0 and qy <= Y1 then
          -- a line of one point shows as a dot (round cap on a tiny segment)
          d[#d + 1] = 'M' .. num(qx) .. ',' .. num(qy) .. 'h0.01'
          geom.pts[#geom.pts + 1] = { qx, qy }
        end
        px, py = qx, qy
      else
        px, py, open = nil, nil, false
      end
    end
    return concat(d)
  end

  local function stroke_attrs(a)
    local s = fmt('stroke="%s" stroke-width="%s"', a.color, num(a.width))
    if a.dash then s = s .. fmt(' stroke-dasharray="%s"', a.dash) end
    if a.alpha then s = s .. fmt(' stroke-opacity="%s"', num(a.alpha)) end
    return s
  end

  for _, i in ipairs(order) do
    local a = self.artists[i]
    if a.kind == 'hist' then
      local base = ylog and Y1 or ty(0)
      base = base and min(Y1, max(Y0, base)) or Y1
      if a.histtype == 'bar' then
        -- thin white edges separate bars, unless the bars are too narrow to spare them
        local bw = abs((tx(a.edges[#a.edges]) or 0) - (tx(a.edges[1]) or 0)) / #a.counts
        local edge = bw >= 4 and ' stroke="white" stroke-width="0.5"' or ''
        local g = { fmt('<g class="hist" fill="%s" fill-opacity="%s"%s>', a.color, num(a.alpha), edge) }
        for b = 1, #a.counts do
          local c = a.counts[b]
          local xa, xb, yc = tx(a.edges[b]), tx(a.edges[b + 1]), ty(c)
          if xlog and not xa and a.edges[b] <= 0 then xa = X0 end   -- a bin reaching past 0
          if c > 0 and xa and xb and yc then
            xa, xb = max(X0, min(X1, xa)), max(X0, min(X1, xb))
            local ya = max(Y0, min(Y1, yc))
            if xb > xa and base > ya then
              g[#g + 1] = fmt('<rect class="bar" x="%s" y="%s" width="%s" height="%s"/>',
                              num(xa), num(ya), num(xb - xa), num(base - ya))
              geom.rects[#geom.rects + 1] = { xa, ya, xb, base }
            end
          end
        end
        g[#g + 1] = '</g>'
        out[#out + 1] = concat(g)
      else   -- step outline: up and down the bin edges
        local xs, ys = {}, {}
        for b = 1, #a.counts do
          xs[#xs + 1], ys[#ys + 1] = a.edges[b], a.counts[b]
          xs[#xs + 1], ys[#ys + 1] = a.edges[b + 1], a.counts[b]
        end
        local d = path_of(xs, ys, #xs)
        if d ~= '' then
          out[#out + 1] = fmt('<path class="hist-step" d="%s" fill="none" stroke="%s"'
              .. ' stroke-width="1.5" stroke-opacity="%s"/>',
                              d, a.color, num(a.alpha))
        end
      end
    elseif a.kind == 'line' then
      local d = path_of(a.x, a.y, #a.x)
      if d ~= '' then
        out[#out + 1] = fmt('<path class="line" d="%s" fill="none" %s'
            .. ' stroke-linejoin="round" stroke-linecap="round"/>',
                            d, stroke_attrs(a))
      end
    elseif a.kind == 'scatter' then
      local g = { fmt('<g class="scatter" fill="%s" fill-opacity="%s">', a.color, num(a.alpha)) }
      for k = 1, #a.x do
        local qx, qy = tx(a.x[k]), ty(a.y[k])
        if qx and qy and qx >= X0 and qx <= X1 and qy >= Y0 and qy <= Y1 then
          g[#g + 1] = fmt('<circle class="marker" cx="%s" cy="%s" r="%s"/>', num(qx), num(qy), num(a.size))
          geom.pts[#geom.pts + 1] = { qx, qy }
        end
      end
      g[#g + 1] = '</g>'
      out[#out + 1] = concat(g)
    elseif a.kind == 'hline' or a.kind == 'vline' then
      local p = a.kind == 'hline' and ty(a.v) or tx(a.v)
      if p and p >= (a.kind == 'hline' and Y0 or X0) - 0.01 and p <= (a.kind == 'hline' and Y1 or X1) + 0.01 then
        local x1, y1, x2, y2
        if a.kind == 'hline' then x1, y1, x2, y2 = X0, p, X1, p else x1, y1, x2, y2 = p, Y0, p, Y1 end
        out[#out + 1] = fmt('<line class="%s" x1="%s" y1="%s" x2="%s" y2="%s" %s/>', a.kind,
                            num(x1), num(y1), num(x2), num(y2), stroke_attrs(a))
        geom.segs[#geom.segs + 1] = { x1, y1, x2, y2 }
      end
    elseif a.kind == 'image' then
      local e = a.extent
      local cells = a.nr * a.nc
      local raster = a.raster
      if raster == nil then raster = cells > 4096 end
      if xlog or ylog then raster = false end    -- cells are not evenly spaced on a log axis
      local span = a.vmax - a.vmin
      local function rgba(v)
        if not finite(v) then return nil end
        return a.cmap((v - a.vmin) / span)
      end
      local function row_index(r)   -- image row (bottom-up position r) --> z row
        return a.origin == 'lower' and r or a.nr + 1 - r
      end
      if raster then
        -- pixel rows top-down: the top of the picture is y1 of the extent
        local ytop_is_y1 = ty(e[4]) <= ty(e[3])
        local xleft_is_x0 = tx(e[1]) <= tx(e[2])
        local rowsb = {}
        for pr = 1, a.nr do
          local r = ytop_is_y1 and (a.nr + 1 - pr) or pr       -- bottom-up position
          local zr = a.z[row_index(r)]
          local px = {}
          for pc = 1, a.nc do
            local j = xleft_is_x0 and pc or (a.nc + 1 - pc)
            local R, G, B = rgba(zr[j])
            if R then px[pc] = string.char(floor(R + 0.5), floor(G + 0.5), floor(B + 0.5), 255)
            else px[pc] = '\0\0\0\0' end
          end
          rowsb[pr] = concat(px)
        end
        local png = png_rgba(a.nc, a.nr, rowsb)
        local ix0, ix1 = min(tx(e[1]), tx(e[2])), max(tx(e[1]), tx(e[2]))
        local iy0, iy1 = min(ty(e[3]), ty(e[4])), max(ty(e[3]), ty(e[4]))
        local clip = fmt('%s-clip-%d', ids, self.index)
        out[#out + 1] = fmt('<clipPath id="%s"><rect x="%s" y="%s"'
            .. ' width="%s" height="%s"/></clipPath>',
                            clip, num(X0), num(Y0), num(w), num(h))
        out[#out + 1] = fmt('<image class="image" clip-path="url(#%s)" x="%s"'
            .. ' y="%s" width="%s" height="%s" preserveAspectRatio="none"'
            .. ' image-rendering="optimizeSpeed" style="image-rendering:pixelated"'
            .. ' xlink:href="data:image/png;base64,%s"/>',
                            clip, num(ix0), num(iy0), num(ix1 - ix0), num(iy1 - iy0), base64(png))
      else
        local g = { '<g class="image" shape-rendering="crispEdges">' }
        local dx, dy = (e[2] - e[1]) / a.nc, (e[4] - e[3]) / a.nr
        for r = 1, a.nr do
          local zr = a.z[row_index(r)]
          local ya, yb = ty(e[3] + (r - 1) * dy), ty(e[3] + r * dy)
          if ya and yb then
            ya, yb = max(Y0, min(Y1, ya)), max(Y0, min(Y1, yb))
            if ya > yb then ya, yb = yb, ya end
            for j = 1, a.nc do
              local xa, xb = tx(e[1] + (j - 1) * dx), tx(e[1] + j * dx)
              local R, G, B = rgba(zr[j])
              if R and xa and xb then
                xa, xb = max(X0, min(X1, xa)), max(X0, min(X1, xb))
                if xa > xb then xa, xb = xb, xa end
                if xb > xa and yb > ya then
                  g[#g + 1] = fmt('<rect x="%s" y="%s" width="%s" height="%s" fill="%s"/>',
                                  num(xa), num(ya), num(xb - xa), num(yb - ya), hexcolor(R, G, B))
                end
              end
            end
          end
        end
        g[#g + 1] = '</g>'
        out[#out + 1] = concat(g)
      end
    elseif a.kind == 'text' then
      local qx, qy
      if a.coords == 'axes' then qx, qy = X0 + a.x * w, Y1 - a.y * h
      else qx, qy = tx(a.x), ty(a.y) end
      if qx and qy and qx >= cx and qx <= cx + cw and qy >= cy and qy <= cy + ch then
        local tw, sz = textw(a.s, a.size or fs), a.size or fs
        local tx0 = a.anchor == 'start' and qx or a.anchor == 'middle' and qx - tw / 2 or qx - tw
        geom.rects[#geom.rects + 1] = { tx0, qy - sz, tx0 + tw, qy + sz * 0.3 }  -- keep the legend off it
        out[#out + 1] = fmt('<text class="text" x="%s" y="%s" text-anchor="%s"'
            .. ' fill="%s" font-size="%s">%s</text>',
                            num(qx), num(qy), a.anchor, a.color, num(a.size or fs), esc(a.s))
      end
    end
  end

  -- frame, ticks, labels
  out[#out + 1] = fmt('<rect class="frame" x="%s" y="%s" width="%s" height="%s"'
      .. ' fill="none" stroke="#333333" stroke-width="0.8"/>',
                      num(X0), num(Y0), num(w), num(h))
  local tk = { '<g class="ticks" stroke="#333333" stroke-width="0.8">' }
  local lab = { fmt('<g class="tick-labels" font-size="%s" fill="#222222">', num(tfs)) }
  for i, v in ipairs(xt) do
    local p = tx(v)
    if p and p >= X0 - 0.5 and p <= X1 + 0.5 then
      tk[#tk + 1] = fmt('<line x1="%s" y1="%s" x2="%s" y2="%s"/>', num(p), num(Y1), num(p), num(Y1 + 4.5))
      lab[#lab + 1] = fmt('<text class="xtick" x="%s" y="%s" text-anchor="middle">%s</text>',
                          num(p), num(Y1 + 6 + tfs), esc(xl[i]))
    end
  end
  for _, v in ipairs(xm) do
    local p = tx(v)
    if p and p >= X0 and p <= X1 then
      tk[#tk + 1] = fmt('<line x1="%s" y1="%s" x2="%s" y2="%s"/>', num(p), num(Y1), num(p), num(Y1 + 2.5))
    end
  end
  for i, v in ipairs(yt) do
    local p = ty(v)
    if p and p >= Y0 - 0.5 and p <= Y1 + 0.5 then
      tk[#tk + 1] = fmt('<line x1="%s" y1="%s" x2="%s" y2="%s"/>', num(X0 - 4.5), num(p), num(X0), num(p))
      lab[#lab + 1] = fmt('<text class="ytick" x="%s" y="%s" text-anchor="end">%s</text>',
                          num(X0 - 7), num(p + tfs * 0.35), esc(yl[i]))
    end
  end
  for _, v in ipairs(ym) do
    local p = ty(v)
    if p and p >= Y0 and p <= Y1 then
      tk[#tk + 1] = fmt('<line x1="%s" y1="%s" x2="%s" y2="%s"/>', num(X0 - 2.5), num(p), num(X0), num(p))
    end
  end
  tk[#tk + 1] = '</g>'
  lab[#lab + 1] = '</g>'
  out[#out + 1] = concat(tk)
  out[#out + 1] = concat(lab)
  if self._xlabel then
    out[#out + 1] = fmt('<text class="xlabel" x="%s" y="%s" text-anchor="middle">%s</text>',
                        num(X0 + w / 2), num(Y1 + 8 + tfs + 4 + fs * 1.1), esc(self._xlabel))
  end
  if self._ylabel then
    local lx, ly = cx + 6 + fs * 0.9, Y0 + h / 2
    out[#out + 1] = fmt('<text class="ylabel" x="%s" y="%s" text-anchor="middle"'
        .. ' transform="rotate(-90 %s %s)">%s</text>',
                        num(lx), num(ly), num(lx), num(ly), esc(self._ylabel))
  end
  if self._title then
    out[#out + 1] = fmt('<text class="panel-title" x="%s" y="%s"'
        .. ' text-anchor="middle" font-size="%s">%s</text>',
                        num(X0 + w / 2), num(Y0 - 7), num(fs * 1.1), esc(self._title))
  end

  -- colour bar: a gradient, its own ticks on the right, the label further right
  if cbar then
    local bx = X1 + 10
    local gid = fmt('%s-cbar-%d', ids, self.index)
    local stops = {}
    for k = 0, 32 do
      local R, G, B = cbar.cmap(k / 32)
      stops[#stops + 1] = fmt('<stop offset="%s" stop-color="%s"/>', num(k / 32), hexcolor(R, G, B))
    end
    out[#out + 1] = fmt('<g class="colorbar"><linearGradient id="%s" x1="0"'
        .. ' y1="1" x2="0" y2="0">%s</linearGradient>',
                        gid, concat(stops))
    out[#out + 1] = fmt('<rect x="%s" y="%s" width="12" height="%s"'
        .. ' fill="url(#%s)" stroke="#333333" stroke-width="0.8"/>',
                        num(bx), num(Y0), num(h), gid)
    local ct = make_transform(cbar.vmin, cbar.vmax, false, Y1, Y0)
    local wmax = 0
    for i, v in ipairs(cbt) do
      local p = ct(v)
      if p then
        out[#out + 1] = fmt('<line x1="%s" y1="%s" x2="%s" y2="%s"'
            .. ' stroke="#333333" stroke-width="0.8"/>',
                            num(bx + 12), num(p), num(bx + 16), num(p))
        out[#out + 1] = fmt('<text class="cbtick" x="%s" y="%s"'
            .. ' font-size="%s" fill="#222222">%s</text>',
                            num(bx + 19), num(p + tfs * 0.35), num(tfs), esc(cbl[i]))
        wmax = max(wmax, textw(cbl[i], tfs))
      end
    end
    if cbar.colorbar_label then
      local lx, ly = bx + 19 + wmax + 6 + fs * 0.8, Y0 + h / 2
      out[#out + 1] = fmt('<text class="colorbar-label" x="%s" y="%s"'
          .. ' text-anchor="middle" transform="rotate(-90 %s %s)">%s</text>',
                          num(lx), num(ly), num(lx), num(ly), esc(cbar.colorbar_label))
    end
    out[#out + 1] = '</g>'
  end

  -- legend
  local entries = {}
  for _, a in ipairs(self.artists) do
    if a.label ~= nil and a.kind ~= 'image' and a.kind ~= 'text' then entries[#entries + 1] = a end
  end
  if #entries > 0 and self._legend.show ~= false then
    local lfs = self._legend.font_size or fs * 0.9
    local row = lfs * 1.45
    local tw = 0
    for _, a in ipairs(entries) do tw = max(tw, textw(tostring(a.label), lfs)) end
    local bw, bh = 8 + 22 + 6 + tw + 8, #entries * row + 8
    local inset = 6
    local spots = {
      ['upper right'] = { X1 - inset - bw, Y0 + inset }, ['upper left'] = { X0 + inset, Y0 + inset },
      ['lower left'] = { X0 + inset, Y1 - inset - bh }, ['lower right'] = { X1 - inset - bw, Y1 - inset - bh },
      ['upper center'] = { X0 + (w - bw) / 2, Y0 + inset }, ['lower center'] = { X0 + (w - bw) / 2, Y1 - inset - bh },
      ['center left'] = { X0 + inset, Y0 + (h - bh) / 2 }, ['center right'] = { X1 - inset - bw, Y0 + (h - bh) / 2 },
      center = { X0 + (w - bw) / 2, Y0 + (h - bh) / 2 },
    }
    local loc = self._legend.loc
    if loc == 'best' then
      -- the spot overlapping the fewest drawn segments, markers and bars (ties: first listed)
      local best, bestbad = nil, huge
      for _, name in ipairs({ 'upper right', 'upper left', 'lower left', 'lower right', 'center right',
                              'center left', 'lower center', 'upper center', 'center' }) do
        local lx, ly = spots[name][1], spots[name][2]
        local rx, ry = lx + bw, ly + bh
        local bad = 0
        for _, s in ipairs(geom.segs) do
          if clip_segment(s[1], s[2], s[3], s[4], lx, ly, rx, ry) then bad = bad + 1 end
        end
        for _, p in ipairs(geom.pts) do
          if p[1] >= lx and p[1] <= rx and p[2] >= ly and p[2] <= ry then bad = bad + 1 end
        end
        for _, r in ipairs(geom.rects) do
          if r[1] < rx and r[3] > lx and r[2] < ry and r[4] > ly then bad = bad + 1 end
        end
        if bad < bestbad then best, bestbad = name, bad end
        if bad == 0 then break end
      end
      loc = best
    end
    self._legend_loc = loc                   -- where it went (specs, curious users)
    local lx, ly = spots[loc][1], spots[loc][2]
    out[#out + 1] = fmt('<g class="legend" font-size="%s"><rect x="%s"'
        .. ' y="%s" width="%s" height="%s" rx="3" fill="white" fill-opacity="0.85"'
        .. ' stroke="#bbbbbb" stroke-width="0.8"/>',
                        num(lfs), num(lx), num(ly), num(bw), num(bh))
    for k, a in ipairs(entries) do
      local yc = ly + 4 + (k - 0.5) * row
      local sx = lx + 8
      local g = { '<g class="legend-entry">' }
      if a.kind == 'hist' and a.histtype == 'bar' then
        g[#g + 1] = fmt('<rect x="%s" y="%s" width="22" height="%s" fill="%s" fill-opacity="%s"/>',
                        num(sx), num(yc - lfs * 0.4), num(lfs * 0.8), a.color, num(a.alpha))
      elseif a.kind == 'scatter' then
        g[#g + 1] = fmt('<circle cx="%s" cy="%s" r="%s" fill="%s" fill-opacity="%s"/>',
                        num(sx + 11), num(yc), num(max(2.5, a.size)), a.color, num(a.alpha))
      else
        local sw = a.kind == 'hist' and { color = a.color, width = 1.5 } or a
        g[#g + 1] = fmt('<line x1="%s" y1="%s" x2="%s" y2="%s" %s/>', num(sx), num(yc), num(sx + 22), num(yc),
                        stroke_attrs(sw))
      end
      g[#g + 1] = fmt('<text x="%s" y="%s" fill="#222222">%s</text>', num(sx + 28), num(yc + lfs * 0.35),
                      esc(a.label))
      g[#g + 1] = '</g>'
      out[#out + 1] = concat(g)
    end
    out[#out + 1] = '</g>'
  end
  out[#out + 1] = '</g>'
end

local function fig_size(fig)
  local fs = fig.font_size
  local title_h = fig._title and fs * 2.4 or 0
  local W = fig._width or fig.cols * 320
  local H = fig._height or (fig.rows * 260 + title_h)
  return W, H, title_h
end

--- fig:svg() --> the figure as an SVG document (a string)
function Figure.svg(fig)
  local W, H, title_h = fig_size(fig)
  local fs = fig.font_size
  local ids = 'dfig' .. fig.serial
  local out = {
    '<?xml version="1.0" encoding="UTF-8"?>',
    fmt('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        .. 'version="1.1" width="%s" height="%s" viewBox="0 0 %s %s" '
        .. 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="%s">',
        num(W), num(H), num(W), num(H), num(fs)),
    fmt('<rect class="background" width="%s" height="%s" fill="%s"/>', num(W), num(H), esc(fig.background)),
  }
  if fig._title then
    out[#out + 1] = fmt('<text class="figure-title" x="%s" y="%s" text-anchor="middle"'
        .. ' font-size="%s" font-weight="bold">%s</text>',
                        num(W / 2), num(fs * 1.7), num(fs * 1.3), esc(fig._title))
  end
  local cw, ch = W / fig.cols, (H - title_h) / fig.rows
  for _, p in ipairs(fig.panels) do
    render_panel(p, out, (p.col - 1) * cw, title_h + (p.row - 1) * ch, cw, ch, ids)
  end
  out[#out + 1] = '</svg>'
  return concat(out, '\n') .. '\n'
end

--- fig:save(path) --> path (writes the SVG)
function Figure.save(fig, path)
  if type(path) ~= 'string' then error('diffuse.plot.save: path must be a string', 2) end
  local s = fig:svg()
  local f, err = io.open(path, 'wb')
  if not f then error('diffuse.plot.save: ' .. tostring(err), 2) end
  local ok, werr = f:write(s)
  f:close()
  if not ok then error('diffuse.plot.save: ' .. tostring(werr), 2) end
  return path
end

-- ---- terminal histogram ------------------------------------------------------------------------

local BLOCKS = { '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█' }
local TERM_OPTS = { bins = true, width = true, height = true, range = true, density = true,
                    curve = true, title = true, print = true }

--- diffuse.plot.terminal(x, {bins = width, width = 60, height = 12, range = {lo, hi},
---                           density = (curve given), curve = function(x) --> density,
---                           title, print = true}) --> nothing, or the text with print = false
--- A Unicode histogram: bars of eighth blocks, the curve (if given) as '•' over them, the
--- count or density scale on the left, the range below. Printed to stdout unless print = false,
--- which returns it instead.
--- Lines: 1 header + height + axis + range labels; none wider than the header's width.
function M.terminal(x, opts)
  local fname = 'diffuse.plot.terminal'
  opts = check_opts(opts, TERM_OPTS, fname)
  local xs = to_list(x, fname, 'x')
  local width = check_count(opts.width, 60, fname, 'width', 1000)
  local height = check_count(opts.height, 12, fname, 'height', 1000)
  if opts.curve ~= nil and type(opts.curve) ~= 'function' then error(fname .. ': curve must be a function', 2) end
  local bins = check_count(opts.bins, width, fname, 'bins', 1000)
  bins = min(bins, width)
  local vals = {}
  for i = 1, #xs do if finite(xs[i]) then vals[#vals + 1] = xs[i] end end
  local density = opts.density
  if density == nil then density = opts.curve ~= nil end

  local text
  if #vals == 0 then
    text = fmt('%s (no finite values to plot)\n', opts.title or 'histogram')
  else
    local lo, hi
    if opts.range then
      if type(opts.range) ~= 'table' then error(fname .. ': range must be {lo, hi}', 2) end
      lo, hi = opts.range[1], opts.range[2]
      if not finite(lo) or not finite(hi) or lo >= hi then error(fname .. ': range must be {lo, hi}, lo < hi', 2) end
    else
      lo, hi = huge, -huge
      for _, v in ipairs(vals) do if v < lo then lo = v end; if v > hi then hi = v end end
      if lo == hi then lo, hi = lo - 0.5, hi + 0.5 end
    end
    local counts, total = {}, 0
    for b = 1, bins do counts[b] = 0 end
    for _, v in ipairs(vals) do
      if v >= lo and v <= hi then
        local b = min(bins, floor((v - lo) / (hi - lo) * bins) + 1)
        counts[b] = counts[b] + 1
        total = total + 1
      end
    end
    local bw = (hi - lo) / bins
    local hv = {}
    for b = 1, bins do hv[b] = density and (total > 0 and counts[b] / (total * bw) or 0) or counts[b] end
    -- per column: its bin and, with a curve, the curve at the column's centre
    local colbin, colcurve = {}, {}
    local top = 0
    for b = 1, bins do top = max(top, hv[b]) end
    for c = 1, width do
      colbin[c] = min(bins, floor((c - 1) * bins / width) + 1)
      if opts.curve then
        local ok, v = pcall(opts.curve, lo + (c - 0.5) * (hi - lo) / width)
        if not ok then error(fname .. ': curve raised an error: ' .. tostring(v), 2) end
        if finite(v) then colcurve[c] = v; top = max(top, v) end
      end
    end
    if top <= 0 then top = 1 end
    local grid = {}
    for r = 1, height do grid[r] = {} end    -- r = 1 is the top row
    for c = 1, width do
      local eighths = floor(hv[colbin[c]] / top * height * 8 + 0.5)
      for r = 1, height do
        local level = eighths - (height - r) * 8
        grid[r][c] = level >= 8 and BLOCKS[8] or level <= 0 and ' ' or BLOCKS[level]
      end
      local v = colcurve[c]
      local level = v and v / top * height
      if level and level >= 0.25 then          -- a curve at ~0 would only clutter the baseline
        grid[height - min(height - 1, floor(level))][c] = '•'
      end
    end
    local ytop, ymid = gfmt(top, 3), gfmt(top / 2, 3)
    local gut = max(#ytop, #ymid, 1) + 1
    local lines = {}
    local header = fmt('%s  n=%d  bins=%d  %s', opts.title or (density and 'density' or 'count'),
                       #vals, bins, opts.curve and '(• curve)' or '')
    header = header:gsub('%s+$', '')
    local full = gut + 1 + width
    if utf8.len(header) > full then header = header:sub(1, utf8.offset(header, full + 1) - 1) end
    lines[1] = header
    local mid = floor(height / 2) + 1
    for r = 1, height do
      local label, axis = '', '│'
      if r == 1 then label, axis = ytop, '┤'
      elseif r == mid and height >= 4 then label, axis = ymid, '┤' end
      lines[#lines + 1] = fmt('%' .. (gut - 1) .. 's %s%s', label, axis, concat(grid[r]))
    end
    lines[#lines + 1] = string.rep(' ', gut - 1) .. '0└' .. string.rep('─', width)
    local l, rlab = gfmt(lo, 4), gfmt(hi, 4)
    local pad = max(1, width + 1 - #l - #rlab)
    lines[#lines + 1] = string.rep(' ', gut) .. l .. string.rep(' ', pad) .. rlab
    if utf8.len(lines[#lines]) > full then lines[#lines] = string.rep(' ', gut) .. l .. ' ' .. rlab end
    text = concat(lines, '\n') .. '\n'
  end
  if opts.print == false then return text end
  io.write(text); io.flush() -- and nothing returned, so the REPL does not echo it a second time
end

return M
