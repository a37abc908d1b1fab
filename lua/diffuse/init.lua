-- diffuse: score-based diffusion experiments as short Lua scripts on a native C core (CPU) with
-- an optional CUDA backend. This file gathers the native module (diffuse.core), and loads the
-- CUDA backend (when it was built) and the pure-Lua parts (plot, metrics, ...) on first use.
local core = require 'diffuse.core'

local diffuse = {}
for k, v in pairs(core) do diffuse[k] = v end
diffuse.core = core
diffuse.version = '0.1.0'

-- networks users compose: the builder traces a Lua forward into a graph the core runs
local graph = require 'diffuse.graph'
local core_graph = core.nn.from_graph
--- diffuse.nn.net{dim = 1, forward = function(x, t) ... end [, output = 'scaled']}
function diffuse.nn.net(o)
  local net = graph.net(o, core_graph) -- (not a tail call: its errors name the caller's line)
  return net
end
diffuse.nn.linear, diffuse.nn.cat, diffuse.nn.fourier = graph.linear, graph.cat, graph.fourier

-- samplers and likelihoods on groups (group = G): a thin layer over the native ones
local groups = require 'diffuse.groups'
groups.reverse_sde = core.group.reverse_sde
diffuse.sampler = groups.wrap_sampler(core.sampler)
diffuse.likelihood = groups.wrap_likelihood(core.likelihood)

-- The CUDA backend is its own shared object; it registers itself with the core when it loads.
-- It is loaded on first need (diffuse.cuda, cuda_available, or a 'cuda' device named anywhere:
-- the core calls the loader registered below), since cuBLAS and the CUDA runtime take a tenth of
-- a second to map and a CPU session never needs them. Loading works without a GPU or driver:
-- only set_device('cuda') then reports why not.
local cuda_error
local function load_cuda()
  local mod = rawget(diffuse, 'cuda')
  if mod or cuda_error then return mod end
  local ok
  ok, mod = pcall(require, 'diffuse.cuda')
  if ok then
    rawset(diffuse, 'cuda', mod)
    return mod
  elseif tostring(mod):find("module 'diffuse.cuda' not found", 1, true) then
    cuda_error = 'diffuse was built without CUDA (no nvcc at build time, or CUDA=0)'
  else
    cuda_error = 'diffuse.cuda failed to load: ' .. tostring(mod)
  end
  debug.getregistry()['diffuse.cuda_error'] = cuda_error
end
debug.getregistry()['diffuse.cuda_load'] = load_cuda

--- diffuse.cuda_available() --> true, or false and the reason
function diffuse.cuda_available()
  local cuda = load_cuda()
  if not cuda then return false, cuda_error end
  return cuda.available()
end

--- diffuse.train{net, diffuser, data, steps = 1000, lr = 1e-3, batch = #data, tol = 1e-5,
---                progress = false, optimizer = nil, weighting = 'sigma2', clip = nil,
---                schedule = nil, ema = nil} --> losses [steps], optimizer, ema network
-- The whole loop (draw t and noise, forward, loss, backward, clipping, Adam, the EMA) runs in one
-- native call; Lua only draws the progress bar a few times a second. With more data rows than
-- batch, each step draws batch rows at random; with as many, it uses them all (the seed's zeros).
-- Pass the optimizer returned by an earlier call (or loaded from a checkpoint) to resume: its lr
-- schedule and its EMA (opt.ema) come with it, so a resumed run is bitwise the uninterrupted one.
-- weighting: lambda(t) of |s_net - s|^2: 'sigma2' (the seed's), 'likelihood' (g(t)^2), 'none'.
-- clip: the gradients' global norm at most clip (before Adam). schedule: {warmup = n, decay =
-- 'cosine' | 'linear' | 'none', min_lr = 0, steps = optimizer steps so far + steps}: the lr over
-- the optimizer's steps. ema: a decay (0.999): the weights' moving average, a network that
-- samples like any other (returned third; saved with net:save(path, opt)).
-- a userdata's class ('diffuse.net', 'diffuse.tensor', ...), else the Lua type
local function kind_of(v)
  local mt = getmetatable(v)
  return type(mt) == 'table' and type(mt.__name) == 'string' and mt.__name or type(v)
end

local train_options = { net = true, diffuser = true, data = true, steps = true, lr = true,
                        batch = true, tol = true, progress = true, optimizer = true,
                        weighting = true, clip = true, schedule = true, ema = true, group = true }
function diffuse.train(o)
  local fname = 'diffuse.train: '
  if type(o) ~= 'table' then error(fname .. 'expected {net = ..., diffuser = ..., data = ...}', 2) end
  for k in pairs(o) do
    if not train_options[k] then error(fname .. "unknown option '" .. tostring(k) .. "'", 2) end
  end
  for _, k in ipairs{ 'net', 'diffuser', 'data' } do
    if o[k] == nil then error(fname .. k .. ' is required', 2) end
  end
  local steps = o.steps or 1000
  if type(steps) ~= 'number' or steps ~= math.floor(steps) or steps < 0 or steps > 2 ^ 53 then
    error(fname .. 'steps must be a whole number from 0 to 2^53 (got ' .. tostring(steps) .. ')', 2)
  end
  -- (net, optimizer and data are checked natively, by name; only what is used here first is
  -- looked at before)
  if kind_of(o.net) ~= 'diffuse.net' then
    error(fname .. 'net must be a network (got ' .. kind_of(o.net) .. ')', 2)
  end
  if o.clip ~= nil and (type(o.clip) ~= 'number' or not (o.clip > 0)) then
    error(fname .. 'clip must be a positive number (got ' .. tostring(o.clip) .. ')', 2)
  end
  if o.ema ~= nil and (type(o.ema) ~= 'number' or not (o.ema > 0 and o.ema < 1)) then
    error(fname .. 'ema must be a decay between 0 and 1, such as 0.999 (got ' .. tostring(o.ema) .. ')', 2)
  end
  if o.schedule ~= nil and type(o.schedule) ~= 'table' then
    error(fname .. "schedule must be a table {warmup = ..., decay = 'cosine', min_lr = ...}", 2)
  end
  local opt = o.optimizer
  -- an error of a native piece under its own name, said as diffuse.train's
  local function rethrow(err, from)
    error(fname .. tostring(err):gsub('^' .. from:gsub('%.', '%%.') .. ': ', ''), 3)
  end
  if opt == nil then
    local ok, made = pcall(diffuse.optim.adam, o.net, { lr = o.lr or 1e-3 })
    if not ok then rethrow(made, 'diffuse.optim.adam') end
    opt = made
  elseif kind_of(opt) ~= 'diffuse.optim' then
    error(fname .. 'optimizer must be an optimizer from diffuse.optim (got ' .. kind_of(opt) .. ')', 2)
  elseif o.lr ~= nil then
    local ok, err = pcall(function() opt.lr = o.lr end)
    if not ok then error(fname .. tostring(err):gsub('^.-diffuse%.optim: ', ''), 2) end
  end
  if o.schedule ~= nil then
    local sc = {}
    for k, v in pairs(o.schedule) do sc[k] = v end
    if sc.steps == nil and sc.decay ~= nil and sc.decay ~= 'none' then sc.steps = opt.t + steps end
    local ok, err = pcall(opt.set_schedule, opt, sc)
    if not ok then rethrow(err, 'diffuse.optim.set_schedule') end
  end
  if o.ema ~= nil then
    local ok, err = pcall(opt.set_ema, opt, o.ema)
    if not ok then rethrow(err, 'diffuse.optim.set_ema') end
  end
  local fn, bar
  if o.progress == true then
    bar = diffuse.progress.new{ total = steps, label = 'train' }
    fn = function(step, _, loss) bar:update(step, { loss = loss }) end
  elseif type(o.progress) == 'function' then
    fn = o.progress
  elseif o.progress ~= nil and o.progress ~= false then
    error(fname .. 'progress must be true, false or a function(step, total, loss)', 2)
  end
  local ok, losses
  if o.group ~= nil then
    -- denoising score matching with group noise (group_train.c)
    ok, losses = pcall(core.group_train, o.net, opt, o.group, o.diffuser, o.data, steps, o.batch,
                       o.tol or 1e-5, fn, { weighting = o.weighting, clip = o.clip })
  else
    ok, losses = pcall(core.train, o.net, opt, o.diffuser, o.data, steps, o.batch,
                       o.tol or 1e-5, fn, nil, { weighting = o.weighting, clip = o.clip })
  end
  if not ok then
    if bar and bar.tty and bar.last_len > 0 then io.stderr:write('\n') end -- (leave its line)
    -- (raised under pcall, the native messages have no position: they get the caller's)
    if type(losses) == 'string' and losses:find('^diffuse%.train: ') then error(losses, 2) end
    error(losses, 0)
  end
  if bar then bar:finish() end
  return losses, opt, opt.ema
end

-- Lua submodules, loaded on first use: diffuse.plot, diffuse.metrics, ...
local submodules = { plot = true, metrics = true, progress = true, cli = true }

return setmetatable(diffuse, {
  __index = function(t, k)
    if k == 'cuda' then return load_cuda() end
    if submodules[k] then
      local m = require('diffuse.' .. k)
      rawset(t, k, m)
      return m
    end
  end,
})
