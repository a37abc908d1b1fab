-- spec/support/helpers.lua: shared helpers for the tensor specs. Expected values are computed in
-- plain Lua (double precision) and rounded to float32 here, so a spec states the exact result
-- an IEEE float32 operation must give, or a tolerance derived from float32's epsilon.
local H = {}

local spack, sunpack = string.pack, string.unpack

H.EPS32 = 2.0 ^ -23          -- float32 machine epsilon (ulp of 1)
H.FLT_MAX = sunpack('<f', spack('<I4', 0x7f7fffff))
H.FLT_MIN = 2.0 ^ -126       -- smallest normal float32
H.FLT_TRUE_MIN = 2.0 ^ -149  -- smallest subnormal float32
H.nan = 0 / 0
H.inf = math.huge

--- x rounded to the nearest float32 (round-to-nearest-even, overflow to +-inf)
function H.f32(x)
  return (sunpack('<f', spack('<f', x)))
end

--- the 32-bit pattern of float32(x)
function H.bits32(x)
  return (sunpack('<I4', spack('<f', x)))
end

--- the float32 with bit pattern u
function H.from_bits32(u)
  return (sunpack('<f', spack('<I4', u)))
end

function H.isnan(x) return x ~= x end

--- ulp of the float32 value v: distance from |v| to the next float32 away from zero
function H.ulp32(v)
  v = math.abs(H.f32(v))
  if v ~= v then return H.nan end
  if v == math.huge or v >= H.FLT_MAX then return 2.0 ^ 104 end -- ulp at the top binade
  local u = H.bits32(v)
  return H.from_bits32(u + 1) - v
end

--- error of a float32 result y against a (double) reference, in ulps of the correctly rounded
--- reference f32(ref); inf/nan must match exactly (0 if they do, math.huge if not)
function H.ulp_err(y, ref)
  if ref ~= ref or y ~= y then return (ref ~= ref and y ~= y) and 0 or math.huge end
  local r32 = H.f32(ref)
  if math.abs(r32) == math.huge or math.abs(y) == math.huge then
    return y == r32 and 0 or math.huge
  end
  return math.abs(y - ref) / H.ulp32(r32)
end

--- ulp distance between two float32 numbers (count of representable floats between them)
function H.ulp_dist(a, b)
  if a ~= a or b ~= b then return (a ~= a and b ~= b) and 0 or math.huge end
  local function ord(x) -- monotone integer key of a float32
    local u = H.bits32(x)
    if u >= 0x80000000 then return -(u - 0x80000000) end
    return u
  end
  return math.abs(ord(a) - ord(b))
end

--- the shape of a nested table (as tensor.new reads it)
function H.shape_of(t)
  local s = {}
  while type(t) == 'table' do
    s[#s + 1] = #t
    t = t[1]
  end
  return s
end

--- flatten a nested table, row-major
function H.flatten(t, out)
  out = out or {}
  if type(t) ~= 'table' then
    out[#out + 1] = t
    return out
  end
  for i = 1, #t do H.flatten(t[i], out) end
  return out
end

--- build a nested table of shape `shape` from a flat list (row-major)
function H.unflatten(flat, shape)
  local pos = 0
  local function build(d)
    local t = {}
    for i = 1, shape[d] do
      if d == #shape then
        pos = pos + 1
        t[i] = flat[pos]
      else
        t[i] = build(d + 1)
      end
    end
    return t
  end
  return build(1)
end

--- a nested table of shape `shape` whose element at (flat index i, 1-based) is f(i, idx)
--- where idx is the list of 1-based indices
function H.make(shape, f)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  local flat = {}
  for i = 1, n do
    local idx, rem = {}, i - 1
    for d = #shape, 1, -1 do
      idx[d] = rem % shape[d] + 1
      rem = rem // shape[d]
    end
    flat[i] = f(i, idx)
  end
  return H.unflatten(flat, shape), flat
end

--- deep compare: `actual` and `expected` nested tables (or numbers) agree in shape and every
--- number is within tol(expected_value) (a number, or a function of the expected value);
--- NaN matches only NaN, infinities match only themselves. Returns true or false, message.
function H.compare(actual, expected, tol, path)
  path = path or ''
  if type(expected) == 'table' then
    if type(actual) ~= 'table' then
      return false, ('at %s: expected a table, got %s'):format(path ~= '' and path or 'top', type(actual))
    end
    if #actual ~= #expected then
      return false, ('at %s: expected %d items, got %d'):format(path ~= '' and path or 'top', #expected, #actual)
    end
    for i = 1, #expected do
      local ok, msg = H.compare(actual[i], expected[i], tol, path .. '[' .. i .. ']')
      if not ok then return false, msg end
    end
    return true
  end
  if type(actual) ~= 'number' then
    return false, ('at %s: expected a number, got %s'):format(path, type(actual))
  end
  local e, a = expected, actual
  local ok
  if e ~= e then
    ok = a ~= a
  elseif math.abs(e) == math.huge then
    ok = a == e
  else
    local t = type(tol) == 'function' and tol(e) or (tol or 0)
    ok = a == a and math.abs(a - e) <= t
  end
  if not ok then
    return false, ('at %s: expected %.9g, got %.9g'):format(path, e, a)
  end
  return true
end

--- assert the nested tables agree (see compare)
function H.assert_close(actual, expected, tol, what)
  local ok, msg = H.compare(actual, expected, tol)
  if not ok then error((what and (what .. ': ') or '') .. msg, 2) end
end

--- naive matmul of nested tables a (m x k) and b (k x n), in double
function H.matmul(a, b)
  local m, k, n = #a, #b, #b[1]
  assert(#a[1] == k)
  local c = {}
  for i = 1, m do
    local row = {}
    for j = 1, n do
      local s = 0
      for p = 1, k do s = s + a[i][p] * b[p][j] end
      row[j] = s
    end
    c[i] = row
  end
  return c
end

--- same loop for sum |a||b| (for tolerances)
function H.matmul_abs(a, b)
  local m, k, n = #a, #b, #b[1]
  local c = {}
  for i = 1, m do
    local row = {}
    for j = 1, n do
      local s = 0
      for p = 1, k do s = s + math.abs(a[i][p] * b[p][j]) end
      row[j] = s
    end
    c[i] = row
  end
  return c
end

--- an error message without the "chunk:line: " position that luaL_error prepends when the
--- caller of the C function is a Lua function
function H.strip_where(msg)
  msg = tostring(msg)
  return (msg:gsub('^[^\n:]+:%d+: ', '', 1))
end

--- call f(...) expecting an error whose message (position stripped, see strip_where) matches
--- the Lua pattern; returns the message
function H.assert_error(pattern, f, ...)
  local ok, err = pcall(f, ...)
  if ok then error(('expected an error matching %q, but the call succeeded'):format(pattern), 2) end
  err = H.strip_where(err)
  if not err:find(pattern) then
    error(('expected an error matching %q, got %q'):format(pattern, err), 2)
  end
  return err
end

--- same with a plain (non-pattern) substring
function H.assert_error_plain(text, f, ...)
  local ok, err = pcall(f, ...)
  if ok then error(('expected an error containing %q, but the call succeeded'):format(text), 2) end
  err = H.strip_where(err)
  if not err:find(text, 1, true) then
    error(('expected an error containing %q, got %q'):format(text, err), 2)
  end
  return err
end

--- a small deterministic generator (xorshift64*) for test data, independent of diffuse's RNG
function H.lcg(seed)
  local s = seed or 88172645463325252
  if s == 0 then s = 1 end
  return function()
    s = s ~ (s << 13)
    s = s ~ (s >> 7)
    s = s ~ (s << 17)
    return ((s >> 11) & ((1 << 53) - 1)) / 2.0 ^ 53 -- uniform in [0, 1)
  end
end

--- list of n float32 values uniform in [lo, hi) from generator g
function H.uniform_list(g, n, lo, hi)
  local t = {}
  for i = 1, n do t[i] = H.f32(lo + (hi - lo) * g()) end
  return t
end

--- shape as "3x2"
function H.shape_str(s)
  return table.concat(s, 'x')
end

return H
