-- diffuse: score-based diffusion experiments as short Lua scripts on a native C core (CPU) with
-- an optional CUDA backend. This file gathers the native module (diffuse.core), loads the CUDA
-- backend when it was built, and loads the pure-Lua parts (plot, metrics, ...) on first use.
local core = require 'diffuse.core'

local diffuse = {}
for k, v in pairs(core) do diffuse[k] = v end
diffuse.core = core
diffuse.version = '0.1.0'

-- The CUDA backend is its own shared object; it registers itself with the core when it loads.
-- Loading works without a GPU or driver: only set_device('cuda') then reports why not.
local cuda_error
do
  local ok, mod = pcall(require, 'diffuse.cuda')
  if ok then
    diffuse.cuda = mod
  elseif tostring(mod):find("module 'diffuse.cuda' not found", 1, true) then
    cuda_error = 'diffuse was built without CUDA (no nvcc at build time, or CUDA=0)'
  else
    cuda_error = 'diffuse.cuda failed to load: ' .. tostring(mod)
  end
  if cuda_error then debug.getregistry()['diffuse.cuda_error'] = cuda_error end
end

--- diffuse.cuda_available() --> true, or false and the reason
function diffuse.cuda_available()
  if not diffuse.cuda then return false, cuda_error end
  return diffuse.cuda.available()
end

-- Lua submodules, loaded on first use: diffuse.plot, diffuse.metrics, ...
local submodules = { plot = true, metrics = true, progress = true }

return setmetatable(diffuse, {
  __index = function(t, k)
    if submodules[k] then
      local m = require('diffuse.' .. k)
      rawset(t, k, m)
      return m
    end
  end,
})
