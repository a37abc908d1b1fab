-- LuaRocks build of diffuse from this checkout: `luarocks --lua-version=5.4 make`
package = "diffuse"
version = "scm-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "Score-based diffusion experiments in Lua on a native C core with a CUDA backend",
  detailed = [[
diffuse gives researchers tensors, diffusers, score sources, samplers and score networks as
userdata, with a C core (float32, CPU reference backend) and an optional CUDA backend (cuBLAS),
so that diffusion experiments with a known answer (the Euclidean heat kernel, Gaussian
mixtures) are short Lua scripts.]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4",
}
build = {
  type = "make",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    LUA = "$(LUA)",
  },
  install_variables = {
    LUADIR = "$(LUADIR)",
    LIBDIR = "$(LIBDIR)",
  },
}
