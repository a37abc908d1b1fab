-- diffuse.groups: samplers and likelihoods on U(1) and SU(N) (`group = G`). The native sampler
-- runs unchanged on eigenangles (the flow of a class-function density moves eigenangles only,
-- and a group score's divergence is the (N-1)-dimensional one); this layer sets the Haar prior
-- for log q, checks the points, and hands back canonical representatives. No Lua runs per step.
local M = {}

local function is_group(v)
  local mt = getmetatable(v)
  return type(mt) == 'table' and mt.__name == 'diffuse.group'
end
M.is_group = is_group

-- methods whose steps add Gaussian noise in R^N: on a group the noise and its drift differ
local stochastic = { pc = true }

local GroupSampler = {}
GroupSampler.__index = GroupSampler
GroupSampler.__name = 'diffuse.group_sampler'

function GroupSampler.__tostring(s)
  return tostring(s.native):gsub('^diffuse%.sampler', 'diffuse.sampler on ' .. s.group.name)
end

--- s:run(x1, score [, {record, logq, prior, divergence, ...}]) --> x0 (canonical), path, logq
-- log q is the density of eigenangles (against d theta_1 .. d theta_{N-1}); the prior defaults
-- to Haar's (G:haar_log_density), so log q compares directly with target:log_density.
function GroupSampler:run(x1, score, opts)
  local G = self.group
  local ok, err = pcall(G.check, G, x1)
  if not ok then error('diffuse.sampler.run: x1 ' .. tostring(err):gsub('^diffuse%.group%.check: ', ''), 2) end
  local o = {}
  if opts ~= nil then
    if type(opts) ~= 'table' then error('diffuse.sampler.run: options must be a table (got ' .. type(opts) .. ')', 2) end
    for k, v in pairs(opts) do o[k] = v end
  end
  if self.method == 'euler_maruyama' then
    -- the reverse SDE with the group's own noise, as matrices (native, per row)
    for k in pairs(o) do
      if k ~= 'record' then error("diffuse.sampler.run: option '" .. tostring(k) .. "' is not available for the reverse SDE on a group", 2) end
    end
    if o.record then error('diffuse.sampler.run: record is not available for the reverse SDE on a group', 2) end
    local ok, x0 = pcall(self.sde, x1, score, self.native:times())
    if not ok then error(tostring(x0):gsub('^diffuse%.group%.reverse_sde', 'diffuse.sampler.run'), 2) end
    return x0
  end
  if o.logq and o.prior == nil then o.prior = function(x) return G:haar_log_density(x) end end
  if o.logq and G.n > 1 and o.tangent == nil then o.tangent = true end -- (N - 1 dimensions)
  local x0, path, logq = self.native:run(x1, score, o)
  return G:canonical(x0), path, logq
end

function GroupSampler:times() return self.native:times() end

function M.wrap_sampler(native_sampler)
  return function(o)
    if type(o) ~= 'table' or o.group == nil then return native_sampler(o) end
    if not is_group(o.group) then
      error('diffuse.sampler: group must be a group (diffuse.group.su(2), ...), got ' .. type(o.group), 2)
    end
    local m = o.method or 'euler'
    if stochastic[m] or ((o.S_churn or 0) > 0) then
      error("diffuse.sampler: method '" .. tostring(m) .. "' adds Euclidean noise; on a group use a "
            .. "deterministic method or 'euler_maruyama' (the reverse SDE with the group's drift)", 2)
    end
    local copy = {}
    for k, v in pairs(o) do if k ~= 'group' then copy[k] = v end end
    local ok, s = pcall(native_sampler, copy)
    if not ok then error(s, 2) end
    return setmetatable({ native = s, group = o.group, method = m, sde = M.reverse_sde }, GroupSampler)
  end
end

--- diffuse.likelihood{..., group = G}: the data checked on G, the Haar prior by default
function M.wrap_likelihood(native_likelihood)
  return function(o)
    if type(o) ~= 'table' or o.group == nil then return native_likelihood(o) end
    local G = o.group
    if not is_group(G) then
      error('diffuse.likelihood: group must be a group (diffuse.group.su(2), ...), got ' .. type(G), 2)
    end
    if o.x ~= nil then
      local ok, err = pcall(G.check, G, o.x)
      if not ok then error('diffuse.likelihood: x ' .. tostring(err):gsub('^diffuse%.group%.check: ', ''), 2) end
    end
    local copy = {}
    for k, v in pairs(o) do if k ~= 'group' then copy[k] = v end end
    if copy.prior == nil then copy.prior = function(x) return G:haar_log_density(x) end end
    if G.n > 1 and copy.tangent == nil then copy.tangent = true end
    local ok, logp, info = pcall(native_likelihood, copy)
    if not ok then error(logp, 2) end
    if info and info.x1 then info.x1 = G:canonical(info.x1) end
    return logp, info
  end
end

return M
