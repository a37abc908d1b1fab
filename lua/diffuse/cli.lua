-- diffuse.cli: the small command-line parser the example scripts share: --name value and
-- --name=value options typed by their defaults, --help, and setup (device, seed, output folder).
--
--   local opts = diffuse.cli.parse(arg, { out = 'out', device = 'cpu', seed = 0,
--                                         steps = { 1000, 'training steps' } }, 'what it does')
--   local path = diffuse.cli.setup(opts)      -- path('loss.svg') --> 'out/loss.svg'
local M = {}

-- help for the options every example has, so scripts need not repeat it
local COMMON = {
  out = 'output folder (created if missing)',
  device = 'cpu or cuda[:N]',
  seed = 'random seed',
}

-- name -> {value = default, help = text}; a default is a plain value or {value, 'help'}.
-- Bad defaults are the script's bug: a plain error, with its traceback.
local function specs_of(defaults, fname)
  if type(defaults) ~= 'table' then error(fname .. ': defaults must be a table', 3) end
  local specs, names = {}, {}
  for name, d in pairs(defaults) do
    if type(name) ~= 'string' or not name:match('^[%a_][%w_]*$') then
      error(('%s: option names must be identifiers (got %s)'):format(fname, tostring(name)), 3)
    end
    local value, help = d, COMMON[name]
    if type(d) == 'table' then value, help = d[1], d[2] or help end
    local tp = type(value)
    if tp ~= 'number' and tp ~= 'string' and tp ~= 'boolean' then
      error(("%s: the default of '%s' must be a number, a string or a boolean"):format(fname, name), 3)
    end
    specs[name] = { value = value, help = help }
    names[#names + 1] = name
  end
  table.sort(names)
  return specs, names
end

local function flag(name) return '--' .. name:gsub('_', '-') end

-- the script's name for messages
local function prog() return tostring(arg and arg[0] or 'script') end

local function help_text(specs, names, about)
  local lines = { ('usage: lua5.4 %s [--name value | --name=value ...]'):format(prog()), 'options:' }
  if about then table.insert(lines, 1, about) end
  local left, width = {}, 6
  for _, n in ipairs(names) do
    local v = specs[n].value
    left[n] = type(v) == 'boolean' and flag(n) or flag(n) .. ' ' .. (v == '' and "''" or tostring(v))
    width = math.max(width, #left[n])
  end
  local fmt = '  %-' .. width .. 's  %s'
  for _, n in ipairs(names) do
    local help = specs[n].help or ''
    if type(specs[n].value) == 'boolean' then
      help = help .. (help ~= '' and ' ' or '') .. '(a flag; --no-' .. n:gsub('_', '-') .. ' turns it off)'
    end
    lines[#lines + 1] = (fmt:format(left[n], help):gsub('%s+$', ''))
  end
  lines[#lines + 1] = fmt:format('--help', 'this text')
  return table.concat(lines, '\n') .. '\n'
end

-- a value given on the command line, converted to the default's type --> value | nil, message
local function convert(name, raw, default)
  local tp = type(default)
  if tp == 'string' then return raw end
  if tp == 'boolean' then
    if raw == 'true' or raw == '1' or raw == 'yes' then return true end
    if raw == 'false' or raw == '0' or raw == 'no' then return false end
    return nil, ('%s takes true or false (got %s)'):format(flag(name), raw)
  end
  local v = tonumber(raw)
  if v == nil or v ~= v or v == math.huge or v == -math.huge then -- ('1e999' reads as inf)
    return nil, ('%s takes a finite number (got %s)'):format(flag(name), raw)
  end
  if math.type(default) == 'integer' then
    local i = math.tointeger(v)
    if not i then return nil, ('%s takes an integer (got %s)'):format(flag(name), raw) end
    return i
  end
  return v + 0.0
end

--- diffuse.cli.read(argv, defaults) --> options | nil, message
-- argv: the script's `arg`; defaults: {name = value} or {name = {value, 'help'}}: the options
-- and their types (a number default takes numbers, an integer default integers, a boolean one
-- is a flag: --name, --no-name, --name=false). Underscores in names may be written as dashes.
-- An unknown option, a missing or ill-typed value, or a stray argument gives nil and a message
-- naming it; --help (or -h) gives nil, 'help'.
function M.read(argv, defaults)
  local specs = specs_of(defaults, 'diffuse.cli.read')
  local opts = {}
  for name, s in pairs(specs) do opts[name] = s.value end
  argv = argv or {}
  if type(argv) ~= 'table' then
    error('diffuse.cli.read: argv must be a table of strings (got ' .. type(argv) .. ')', 2)
  end
  for k = 1, #argv do -- (arg holds strings; a number would pass for one, anything else is a slip)
    if type(argv[k]) ~= 'string' and type(argv[k]) ~= 'number' then
      error(('diffuse.cli.read: argv[%d] must be a string (got %s)'):format(k, type(argv[k])), 2)
    end
  end
  local i = 1
  while i <= #argv do
    local a = tostring(argv[i])
    if a == '--help' or a == '-h' then return nil, 'help' end
    local body = a:match('^%-%-(.+)$')
    if not body then return nil, ("unexpected argument '%s' (options are --name value; try --help)"):format(a) end
    local name, value = body:match('^([^=]+)=(.*)$')
    name = (name or body):gsub('-', '_')
    local negated = name:match('^no_(.+)$')
    local spec = specs[name]
    if not spec and not value and negated and specs[negated] and type(specs[negated].value) == 'boolean' then
      opts[negated] = false
    elseif not spec then
      return nil, ("unknown option '%s' (try --help)"):format(flag(name))
    elseif type(spec.value) == 'boolean' and not value then
      opts[name] = true
    else
      if not value then   -- --name value: the next argument, unless it is an option (-1 is a value)
        value = argv[i + 1] and tostring(argv[i + 1])
        if value == nil or (value:match('^%-%-') and not tonumber(value)) then
          return nil, flag(name) .. ' needs a value'
        end
        i = i + 1
      end
      local v, err = convert(name, value, spec.value)
      if v == nil then return nil, err end
      opts[name] = v
    end
    i = i + 1
  end
  return opts
end

--- diffuse.cli.parse(argv, defaults [, about]) --> options
-- As read, for scripts: --help prints about (a line saying what the script does), the usage,
-- the options with their defaults and help, and exits 0; a bad command line prints its message
-- and exits 2, as command-line tools do (no Lua traceback for a typo).
function M.parse(argv, defaults, about)
  local opts, msg = M.read(argv, defaults)
  if opts then return opts end
  if msg == 'help' then
    local specs, names = specs_of(defaults, 'diffuse.cli.parse')
    io.write(help_text(specs, names, about))
    os.exit(0)
  end
  io.stderr:write(prog(), ': ', msg, '\n')
  os.exit(2)
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- diffuse.cli.setup(opts) --> path: function(name) --> opts.out .. '/' .. name
-- Sets the device (opts.device, when given: a missing GPU prints the reason and exits 1),
-- seeds the random streams (opts.seed, when given), creates the output folder opts.out
-- (default '.'), and prints the device summary line.
function M.setup(opts)
  local diffuse = require 'diffuse'
  if type(opts) ~= 'table' then error('diffuse.cli.setup: expected the table diffuse.cli.parse returned', 2) end
  if opts.device ~= nil then
    local ok, err = pcall(diffuse.set_device, opts.device)
    if not ok then   -- the machine's situation, not a bug in the script: no traceback
      io.stderr:write(prog(), ': ', tostring(err), '\n')
      os.exit(1)
    end
  end
  if opts.seed ~= nil then diffuse.seed(opts.seed) end
  local out = opts.out or '.'
  if type(out) ~= 'string' or out == '' then error('diffuse.cli.setup: out must be a folder name', 2) end
  if not os.execute('mkdir -p ' .. shell_quote(out)) then
    error(("diffuse.cli.setup: cannot create the output folder '%s'"):format(out), 2)
  end
  print(diffuse.summary())
  out = out:gsub('/+$', '')
  return function(name) return out .. '/' .. name end
end

return M
