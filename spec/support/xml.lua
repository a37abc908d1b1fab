-- spec/support/xml.lua: a small XML 1.0 well-formedness checker that also builds a tree, for the
-- SVG specs: one root, balanced tags, quoted and unique attributes, valid names, entities and
-- character references, valid UTF-8, no stray '<', '&' or ']]>'. No DTDs (SVG output has none).
--
--   local root = xml.parse(s)          -- raises "xml: <reason> at line L" when not well-formed
--   xml.find_all(root, 'rect', function(n) return n.attrs.class == 'bar' end)
--   xml.text(node)                     -- all text below node, entities decoded
local X = {}

local NAME = '^[A-Za-z_:][A-Za-z0-9_:%.%-]*'
local PREDEF = { amp = '&', lt = '<', gt = '>', quot = '"', apos = "'" }

local function fail(s, pos, msg)
  local line = 1
  for _ in s:sub(1, pos):gmatch('\n') do line = line + 1 end
  error(('xml: %s at line %d (byte %d)'):format(msg, line, pos), 0)
end

-- Decode character data, checking every '&' starts a valid reference and no '<' appears.
local function decode(s, raw, pos, what)
  if raw:find('<', 1, true) then fail(s, pos, "'<' in " .. what) end
  return (raw:gsub('&([^;]*);?', function(ref)
    local full = raw  -- (only for messages)
    local c
    if ref:match('^#x%x+$') then c = tonumber(ref:sub(3), 16)
    elseif ref:match('^#%d+$') then c = tonumber(ref:sub(2))
    elseif PREDEF[ref] then return PREDEF[ref]
    else fail(s, pos, ("invalid entity '&%s' in %s (%s)"):format(ref, what, full:sub(1, 60))) end
    if not c or c == 0 or c > 0x10FFFF or (c >= 0xD800 and c <= 0xDFFF)
       or (c < 32 and c ~= 9 and c ~= 10 and c ~= 13) then
      fail(s, pos, ('invalid character reference &%s; in %s'):format(ref, what))
    end
    return utf8.char(c)
  end))
end

local function check_chars(s)
  if not utf8.len(s) then
    local _, bad = utf8.len(s)
    fail(s, bad or 1, 'invalid UTF-8')
  end
  local bad = s:find('[%z\1-\8\11\12\14-\31]')
  if bad then fail(s, bad, 'control character not allowed in XML') end
end

--- xml.parse(s) --> root node {tag, attrs, children, parent}; text pieces are children
--- {text = '...'}. Raises an error naming the problem when s is not well-formed.
function X.parse(s)
  assert(type(s) == 'string', 'xml.parse: expected a string')
  check_chars(s)
  local pos, n = 1, #s
  local root, stack = nil, {}
  local function skip_misc()
    while true do
      local a, b = s:find('^%s+', pos)
      if a then pos = b + 1 end
      if s:sub(pos, pos + 3) == '<!--' then
        local e = s:find('-->', pos + 4, true)
        if not e then fail(s, pos, 'unterminated comment') end
        if s:sub(pos + 4, e - 1):find('--', 1, true) then fail(s, pos, "'--' inside a comment") end
        pos = e + 3
      elseif s:sub(pos, pos + 1) == '<?' then
        local e = s:find('?>', pos + 2, true)
        if not e then fail(s, pos, 'unterminated processing instruction') end
        pos = e + 2
      else
        return
      end
    end
  end
  -- prolog
  if s:sub(1, 5) == '<?xml' then
    local e = s:find('?>', 1, true)
    if not e then fail(s, 1, 'unterminated XML declaration') end
    pos = e + 2
  end
  skip_misc()
  if s:sub(pos, pos + 8) == '<!DOCTYPE' then fail(s, pos, 'DOCTYPE not supported by this checker') end
  while pos <= n do
    local top = stack[#stack]
    if not top then
      if root then
        skip_misc()
        if pos <= n then fail(s, pos, 'content after the root element') end
        break
      end
      skip_misc()
      if s:sub(pos, pos) ~= '<' then fail(s, pos, 'expected the root element') end
    end
    if s:sub(pos, pos) == '<' then
      if s:sub(pos, pos + 3) == '<!--' then
        local e = s:find('-->', pos + 4, true)
        if not e then fail(s, pos, 'unterminated comment') end
        if s:sub(pos + 4, e - 1):find('--', 1, true) then fail(s, pos, "'--' inside a comment") end
        pos = e + 3
      elseif s:sub(pos, pos + 8) == '<![CDATA[' then
        if not top then fail(s, pos, 'CDATA outside the root') end
        local e = s:find(']]>', pos + 9, true)
        if not e then fail(s, pos, 'unterminated CDATA') end
        top.children[#top.children + 1] = { text = s:sub(pos + 9, e - 1) }
        pos = e + 3
      elseif s:sub(pos, pos + 1) == '<?' then
        local e = s:find('?>', pos + 2, true)
        if not e then fail(s, pos, 'unterminated processing instruction') end
        pos = e + 2
      elseif s:sub(pos, pos + 1) == '</' then
        local name = s:match(NAME, pos + 2)
        if not name then fail(s, pos, 'bad end tag') end
        local e = s:find('^%s*>', pos + 2 + #name)
        if not e then fail(s, pos, 'bad end tag </' .. name) end
        if not top then fail(s, pos, 'end tag </' .. name .. '> without a start tag') end
        if top.tag ~= name then
          fail(s, pos, ('end tag </%s> does not match <%s>'):format(name, top.tag))
        end
        stack[#stack] = nil
        pos = s:find('>', pos, true) + 1
      else
        local name = s:match(NAME, pos + 1)
        if not name then fail(s, pos, "'<' not followed by a name") end
        local node = { tag = name, attrs = {}, children = {}, parent = top, order = {} }
        local p = pos + 1 + #name
        while true do
          local ws = s:match('^%s*', p)
          p = p + #ws
          local c = s:sub(p, p)
          if c == '>' then p = p + 1; break end
          if s:sub(p, p + 1) == '/>' then p = p + 2; node.empty = true; break end
          if c == '' then fail(s, pos, 'unterminated start tag <' .. name) end
          if #ws == 0 then fail(s, p, 'attributes must be separated by white space in <' .. name) end
          local an = s:match(NAME, p)
          if not an then fail(s, p, 'bad attribute name in <' .. name) end
          p = p + #an
          local eq = s:match('^%s*=%s*', p)
          if not eq then fail(s, p, ("attribute '%s' in <%s> has no '='"):format(an, name)) end
          p = p + #eq
          local q = s:sub(p, p)
          if q ~= '"' and q ~= "'" then fail(s, p, ("attribute '%s' in <%s> is not quoted"):format(an, name)) end
          local e = s:find(q, p + 1, true)
          if not e then fail(s, p, ("unterminated value of '%s'"):format(an)) end
          if node.attrs[an] ~= nil then fail(s, p, ("duplicate attribute '%s' in <%s>"):format(an, name)) end
          node.attrs[an] = decode(s, s:sub(p + 1, e - 1), p, ("attribute '%s'"):format(an))
          node.order[#node.order + 1] = an
          p = e + 1
        end
        if top then top.children[#top.children + 1] = node else root = node end
        if not node.empty then stack[#stack + 1] = node end
        pos = p
      end
    else
      local e = s:find('<', pos, true) or (n + 1)
      local raw = s:sub(pos, e - 1)
      if raw:find(']]>', 1, true) then fail(s, pos, "']]>' in text") end
      if top then
        top.children[#top.children + 1] = { text = decode(s, raw, pos, 'text') }
      elseif raw:find('%S') then
        fail(s, pos, 'text outside the root element')
      end
      pos = e
    end
  end
  if #stack > 0 then fail(s, n, ('element <%s> is not closed'):format(stack[#stack].tag)) end
  if not root then fail(s, 1, 'no root element') end
  return root
end

--- xml.find_all(node, tag [, pred]) --> the elements below node (node included) named tag
--- ('*' for any) for which pred(element) is true, in document order
function X.find_all(node, tag, pred, out)
  out = out or {}
  if node.tag and (tag == '*' or node.tag == tag) and (not pred or pred(node)) then out[#out + 1] = node end
  for _, c in ipairs(node.children or {}) do
    if c.tag then X.find_all(c, tag, pred, out) end
  end
  return out
end

--- xml.has_class(node, class) --> whether class is one of node's classes
function X.has_class(node, class)
  local cl = node.attrs and node.attrs.class
  if not cl then return false end
  for w in cl:gmatch('%S+') do if w == class then return true end end
  return false
end

--- xml.by_class(node, class [, tag]) --> elements (of tag, or any) with that class
function X.by_class(node, class, tag)
  return X.find_all(node, tag or '*', function(e) return X.has_class(e, class) end)
end

--- xml.text(node) --> the text of node and its descendants, concatenated
function X.text(node)
  if node.text then return node.text end
  local t = {}
  for _, c in ipairs(node.children or {}) do t[#t + 1] = X.text(c) end
  return table.concat(t)
end

--- xml.ancestor(node, pred) --> the nearest ancestor for which pred is true
function X.ancestor(node, pred)
  local p = node.parent
  while p do
    if pred(p) then return p end
    p = p.parent
  end
end

return X
