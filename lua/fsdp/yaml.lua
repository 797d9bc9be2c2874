-- fsdp.yaml: the YAML that data files hold, read strictly.
--
-- Block mappings and sequences, plain / single-quoted / double-quoted
-- scalars (multi-line too), literal and folded block scalars (| > with
-- chomping and indentation indicators), single-line or multi-line flow
-- collections ([a, b], {k: v}), comments, and several documents (--- / ...).
-- Plain scalars resolve by YAML 1.2's core schema (null, true/false,
-- integers, floats); quoted ones are strings. What is not valid YAML, or is
-- YAML this reader does not take (anchors, aliases, tags, directives,
-- complex keys), is an error "FILE line N: what", never a guess: a file
-- that PyYAML refuses is refused (tests/golden/yaml holds the cases).
--
--   yaml.decode(text, name) -> list of documents; a mapping is
--   {kind = 'map', keys = {...}, values = {...}} (keys in file order), a
--   sequence {kind = 'seq', ...items}, null is yaml.null
--   yaml.strings(doc, emit) calls emit(s) for every string value in file
--   order (mapping keys are not values)
local M = {}

M.null = setmetatable({}, {__tostring = function() return 'null' end})

local Parser = {}
Parser.__index = Parser
local MAX_DEPTH = 512 -- nesting, in blocks and in flow collections

function Parser:fail(no, fmt, ...)
   error(string.format('%s line %d: %s', self.name, no, string.format(fmt, ...)), 0)
end

-- the lines: {no, indent, text (after the indentation, right-trimmed), raw}
local function split_lines(p, text)
   local lines = {}
   local no = 0
   for raw in (text .. '\n'):gmatch('(.-)\r?\n') do
      no = no + 1
      local lead = raw:match('^[ \t]*')
      local rest = raw:sub(#lead + 1)
      local indent = #(raw:match('^ *'))
      if rest ~= '' and rest:sub(1, 1) ~= '#' and lead:find('\t', 1, true) and lead:sub(1, indent + 1):find('\t', 1, true) == indent + 1 then
         p:fail(no, 'a tab in the indentation (YAML indents with spaces)')
      end
      lines[#lines + 1] = {no = no, indent = indent, text = raw:sub(indent + 1):gsub('%s+$', ''), raw = raw}
   end
   if lines[#lines] and lines[#lines].raw == '' then lines[#lines] = nil end
   return lines
end

local function blank(l) return l.text == '' or l.text:sub(1, 1) == '#' end
local function doc_marker(l)
   return l.indent == 0 and (l.text == '---' or l.text:match('^%-%-%-%s') or l.text == '...' or l.text:match('^%.%.%.%s'))
end

-- the next line that holds content, or nil at the end of the document
function Parser:peek()
   while self.i <= #self.lines do
      local l = self.lines[self.i]
      if doc_marker(l) then return nil end
      if not blank(l) then return l end
      self.i = self.i + 1
   end
   return nil
end

-- text without a trailing comment (a # after a space, outside quotes)
local function strip_comment(s)
   local q
   local i = 1
   while i <= #s do
      local c = s:sub(i, i)
      if q then
         if q == '"' and c == '\\' then i = i + 1
         elseif c == q then
            if q == "'" and s:sub(i + 1, i + 1) == "'" then i = i + 1 else q = nil end
         end
      elseif c == '"' or c == "'" then
         if i == 1 or s:sub(i - 1, i - 1):match('[%s%[{,:]') then q = c end
      elseif c == '#' and (i == 1 or s:sub(i - 1, i - 1):match('%s')) then
         return (s:sub(1, i - 1):gsub('%s+$', ''))
      end
      i = i + 1
   end
   return s
end

-- YAML 1.2 core schema for plain scalars
local function resolve(s)
   if s == '' or s == '~' or s == 'null' or s == 'Null' or s == 'NULL' then return M.null end
   if s == 'true' or s == 'True' or s == 'TRUE' then return true end
   if s == 'false' or s == 'False' or s == 'FALSE' then return false end
   if s:match('^[-+]?%d+$') then return tonumber(s) end
   if s:match('^0o[0-7]+$') then return tonumber(s:sub(3), 8) end
   if s:match('^0x%x+$') then return tonumber(s:sub(3), 16) end
   if s:match('^[-+]?%.%d+$') or s:match('^[-+]?%d+%.%d*$') or s:match('^[-+]?%.?%d+[eE][-+]?%d+$')
      or s:match('^[-+]?%d+%.%d*[eE][-+]?%d+$') or s:match('^[-+]?%.%d+[eE][-+]?%d+$') then
      return tonumber(s)
   end
   if s:match('^[-+]?%.[iI][nN][fF]$') then return s:sub(1, 1) == '-' and -math.huge or math.huge end
   if s == '.nan' or s == '.NaN' or s == '.NAN' then return 0 / 0 end
   return s
end

-- a key at the start of text: key, rest after ':' (and spaces), or nil
function Parser:split_key(text, no)
   local c = text:sub(1, 1)
   if c == '"' or c == "'" then
      local ok, key, after = pcall(self.quoted_inline, self, text, no)
      if not ok then return nil end
      local rest = text:sub(after):match('^%s*:%s+(.*)$') or (text:sub(after):match('^%s*:$') and '')
      if rest then return key, rest end
      return nil
   end
   if c == '[' or c == '{' or c == '-' and text:sub(2, 2):match('^%s?$') then return nil end
   local s = strip_comment(text)
   local a = s:find(':%s') or (s:sub(-1) == ':' and #s)
   if not a then return nil end
   local key = s:sub(1, a - 1):gsub('%s+$', '')
   if key == '' then return nil end
   if key:match('^[?&*!|>%%@`]') then
      self:fail(no, "'%s' starts a complex key, anchor, alias or tag, which this reader does not take", key:sub(1, 1))
   end
   if key:match('^[%]},#]') then self:fail(no, "a key cannot start with '%s'", key:sub(1, 1)) end
   return key, text:sub(a + 1):gsub('^%s+', '')
end

-- a quoted scalar that starts at text's first character and ends on the
-- same line: value, position after the closing quote
function Parser:quoted_inline(text, no)
   local q = text:sub(1, 1)
   local out, i = {}, 2
   while i <= #text do
      local c = text:sub(i, i)
      if c == q then
         if q == "'" and text:sub(i + 1, i + 1) == "'" then out[#out + 1] = "'"; i = i + 2
         else return table.concat(out), i + 1 end
      elseif q == '"' and c == '\\' then
         local e, n = self:escape(text, i, no)
         out[#out + 1] = e
         i = i + n
      else
         out[#out + 1] = c
         i = i + 1
      end
   end
   error('unterminated', 0)
end

local ESC = {['0'] = '\0', a = '\a', b = '\b', t = '\t', ['\t'] = '\t', n = '\n', v = '\v', f = '\f', r = '\r', e = '\27',
             [' '] = ' ', ['"'] = '"', ['/'] = '/', ['\\'] = '\\', N = '\194\133', _ = '\194\160',
             L = '\226\128\168', P = '\226\128\169'}

local function utf8(cp)
   if cp < 0x80 then return string.char(cp) end
   if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
   if cp < 0x10000 then
      return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
   end
   return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                      0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

-- the escape at text[i] == '\\': its value and its length
function Parser:escape(text, i, no)
   local e = text:sub(i + 1, i + 1)
   if ESC[e] then return ESC[e], 2 end
   local width = ({x = 2, u = 4, U = 8})[e]
   if width then
      local hex = text:sub(i + 2, i + 1 + width)
      if #hex ~= width or not hex:match('^%x+$') then self:fail(no, 'bad escape \\%s%s in a double-quoted string', e, hex) end
      local cp = tonumber(hex, 16)
      if cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then self:fail(no, 'escape \\%s%s is not a character', e, hex) end
      return utf8(cp), 2 + width
   end
   if e == '' then return nil, 1 end
   self:fail(no, 'unknown escape \\%s in a double-quoted string', e)
end

-- a quoted scalar starting at column `col` of the current line, possibly
-- over several lines (folded: a line break is a space, an empty line a
-- newline); returns the string and leaves the parser after it, checking
-- that nothing but a comment follows the closing quote
function Parser:quoted(text, min_indent)
   local l = self.lines[self.i]
   local start = l.no
   local q = text:sub(1, 1)
   local out = {}
   local pos = 2
   local line = text
   while true do
      local i = pos
      while i <= #line do
         local c = line:sub(i, i)
         if c == q then
            if q == "'" and line:sub(i + 1, i + 1) == "'" then out[#out + 1] = "'"; i = i + 2
            else
               local after = line:sub(i + 1)
               if after ~= '' and not after:match('^%s') and not after:match('^%s*#') then
                  self:fail(self.lines[self.i].no, "unexpected '%s' after a quoted string", after:sub(1, 10))
               end
               if strip_comment(after):match('%S') then
                  self:fail(self.lines[self.i].no, "unexpected '%s' after a quoted string", strip_comment(after):match('%S.*'):sub(1, 20))
               end
               self.i = self.i + 1
               return table.concat(out)
            end
         elseif q == '"' and c == '\\' then
            if i == #line then -- an escaped line break: joined without a space
               i = i + 1
               out.escaped_break = true
            else
               local e, n = self:escape(line, i, self.lines[self.i].no)
               out[#out + 1] = e
               i = i + n
            end
         else
            out[#out + 1] = c
            i = i + 1
         end
      end
      -- the string goes on to the next line
      local escaped = out.escaped_break
      out.escaped_break = nil
      if not escaped then
         local n = #out
         while n > 0 and (out[n] == ' ' or out[n] == '\t') do out[n] = nil; n = n - 1 end
      end
      self.i = self.i + 1
      local breaks = 0
      while self.i <= #self.lines and self.lines[self.i].text == '' do breaks = breaks + 1; self.i = self.i + 1 end
      local nl = self.lines[self.i]
      if not nl or doc_marker(nl) then self:fail(start, 'unterminated %s-quoted string', q == '"' and 'double' or 'single') end
      if nl.indent < min_indent then
         self:fail(nl.no, 'the quoted string from line %d goes on less indented than it started', start)
      end
      if not escaped then out[#out + 1] = breaks > 0 and string.rep('\n', breaks) or ' ' end
      line = nl.text
      pos = 1
   end
end

-- a flow collection ([...] or {...}) starting the current line's text,
-- possibly over several lines
function Parser:flow(text, min_indent)
   local start = self.lines[self.i].no
   -- join lines until the brackets close (outside quotes)
   local buf, depth, q = text, 0, nil
   local function scan(s)
      local i = 1
      while i <= #s do
         local c = s:sub(i, i)
         if q then
            if q == '"' and c == '\\' then i = i + 1
            elseif c == q then
               if q == "'" and s:sub(i + 1, i + 1) == "'" then i = i + 1 else q = nil end
            end
         elseif c == '"' or c == "'" then q = c
         elseif c == '[' or c == '{' then depth = depth + 1
         elseif c == ']' or c == '}' then depth = depth - 1
         elseif c == '#' and (i == 1 or s:sub(i - 1, i - 1):match('%s')) then return s:sub(1, i - 1) end
         i = i + 1
      end
      return s
   end
   buf = scan(text)
   while depth > 0 do
      self.i = self.i + 1
      local nl = self.lines[self.i]
      if not nl or doc_marker(nl) then self:fail(start, 'unterminated flow collection (a %s without its closing bracket)', text:sub(1, 1)) end
      if nl.text ~= '' and nl.indent < min_indent then
         self:fail(nl.no, 'the flow collection from line %d goes on less indented than it started', start)
      end
      buf = buf .. ' ' .. scan(nl.text)
   end
   self.i = self.i + 1
   local pos = 1
   local function ws() pos = buf:find('[^%s]', pos) or #buf + 1 end
   local value
   local function scalar(stop)
      ws()
      local c = buf:sub(pos, pos)
      if c == '"' or c == "'" then
         local ok, v, after = pcall(self.quoted_inline, self, buf:sub(pos), start)
         if not ok then self:fail(start, 'unterminated quoted string in a flow collection') end
         pos = pos + after - 1
         return v
      end
      if c == '[' or c == '{' then return value() end
      if c:match('[&*!|>%%@`]') then self:fail(start, "'%s' in a flow collection: anchors, aliases and tags are not taken", c) end
      local j = pos
      while j <= #buf do
         local d = buf:sub(j, j)
         if d == ',' or d == ']' or d == '}' or stop and d == ':' and buf:sub(j + 1, j + 1):match('^[%s,%]}]?$') then break end
         j = j + 1
      end
      local s = buf:sub(pos, j - 1):gsub('%s+$', '')
      pos = j
      return resolve(s)
   end
   local depth = 0
   local collection
   value = function()
      ws()
      depth = depth + 1
      if depth > MAX_DEPTH then self:fail(start, 'a flow collection nested deeper than %d levels', MAX_DEPTH) end
      local v = collection(buf:sub(pos, pos))
      depth = depth - 1
      return v
   end
   collection = function(c)
      if c == '[' then
         pos = pos + 1
         local seq = {kind = 'seq'}
         ws()
         if buf:sub(pos, pos) == ']' then pos = pos + 1; return seq end
         while true do
            seq[#seq + 1] = scalar(true)
            ws()
            local d = buf:sub(pos, pos)
            if d == ':' then self:fail(start, 'a mapping inside a flow sequence is not taken') end
            pos = pos + 1
            if d == ']' then return seq end
            if d ~= ',' then self:fail(start, "expected ',' or ']' in a flow sequence, got '%s'", d == '' and 'the end' or d) end
            ws()
            if buf:sub(pos, pos) == ']' then pos = pos + 1; return seq end
         end
      elseif c == '{' then
         pos = pos + 1
         local map = {kind = 'map', keys = {}, values = {}}
         ws()
         if buf:sub(pos, pos) == '}' then pos = pos + 1; return map end
         while true do
            local k = scalar(true)
            ws()
            local v = M.null
            if buf:sub(pos, pos) == ':' then pos = pos + 1; v = scalar(true) end
            if type(k) ~= 'string' and type(k) ~= 'number' and type(k) ~= 'boolean' then
               self:fail(start, 'a flow mapping key must be a scalar')
            end
            map.keys[#map.keys + 1] = k
            map.values[#map.values + 1] = v
            ws()
            local d = buf:sub(pos, pos)
            pos = pos + 1
            if d == '}' then return map end
            if d ~= ',' then self:fail(start, "expected ',' or '}' in a flow mapping, got '%s'", d == '' and 'the end' or d) end
            ws()
            if buf:sub(pos, pos) == '}' then pos = pos + 1; return map end
         end
      end
      self:fail(start, 'expected a flow collection')
   end
   local v = value()
   ws()
   if pos <= #buf then self:fail(start, "unexpected '%s' after a flow collection", buf:sub(pos, pos + 10)) end
   return v
end

-- a literal (|) or folded (>) block scalar whose header is `header`, in a
-- node at indentation `parent` (libyaml's rules for breaks and folding)
function Parser:block_scalar(header, parent)
   local no = self.lines[self.i].no
   parent = math.max(parent, 0) -- top-level content is indented by one at least
   local folded = header:sub(1, 1) == '>'
   local ind, chomp = nil, 'clip'
   for c in header:sub(2):gmatch('.') do
      if c == '-' and chomp == 'clip' then chomp = 'strip'
      elseif c == '+' and chomp == 'clip' then chomp = 'keep'
      elseif c:match('%d') and c ~= '0' and not ind then ind = tonumber(c)
      else self:fail(no, "bad block scalar header '%s'", header) end
   end
   self.i = self.i + 1
   local content = ind and parent + ind
   -- the lines: {text after the indentation, empty, has_break}
   local lines = {}
   while self.i <= #self.lines do
      local l = self.lines[self.i]
      if doc_marker(l) then break end
      local spaces = #l.raw:match('^ *')
      local empty = l.raw:match('^ *$') ~= nil
      if not content and not empty then
         if spaces <= parent then break end
         content = spaces
      end
      if not empty and spaces < content then
         if l.raw:match('^%s*#') == nil and spaces > parent then
            self:fail(l.no, 'a block scalar line less indented than its first line (%d spaces, not %d)', spaces, content)
         end
         break
      end
      if empty and content and spaces > content then empty = false end
      if not empty and l.raw:sub(1, content):find('\t', 1, true) then
         self:fail(l.no, 'a tab in the indentation of a block scalar')
      end
      lines[#lines + 1] = {text = empty and '' or l.raw:sub(content + 1), empty = empty,
                           has_break = self.i < #self.lines or self.final_newline}
      self.i = self.i + 1
   end
   local out, leading_break, trailing, leading_blank = {}, '', {}, false
   local k = 1
   while k <= #lines and lines[k].empty do trailing[#trailing + 1] = '\n'; k = k + 1 end
   while k <= #lines do
      local l = lines[k]
      local trailing_blank = l.text:match('^[ \t]') ~= nil
      if folded and leading_break == '\n' and not leading_blank and not trailing_blank then
         if #trailing == 0 then out[#out + 1] = ' ' end
      else
         out[#out + 1] = leading_break
      end
      leading_break = ''
      out[#out + 1] = table.concat(trailing)
      trailing = {}
      leading_blank = trailing_blank
      out[#out + 1] = l.text
      leading_break = l.has_break and '\n' or ''
      k = k + 1
      while k <= #lines and lines[k].empty do
         trailing[#trailing + 1] = lines[k].has_break and '\n' or ''
         k = k + 1
      end
   end
   if chomp ~= 'strip' then out[#out + 1] = leading_break end
   if chomp == 'keep' then out[#out + 1] = table.concat(trailing) end
   return table.concat(out)
end

-- a plain scalar that starts with `text` on the current line and may go on
-- over more-indented lines (folded); resolved by the core schema
function Parser:plain(text, parent)
   local l = self.lines[self.i]
   local function check(s, no)
      if s:find(':%s') or s:sub(-1) == ':' then self:fail(no, "a ': ' inside a plain value (a mapping is not allowed here; quote the value)") end
      if s:match('^[&*!%%@`|>%]},]') or s:match('^[?:]%s') or s == '?' then
         self:fail(no, "a value starting with '%s' (an anchor, alias, tag or reserved character this reader does not take; quote it)", s:sub(1, 1))
      end
   end
   local s = strip_comment(text)
   check(s, l.no)
   local parts = {s}
   local commented = s ~= text
   self.i = self.i + 1
   local breaks = 0
   while not commented and self.i <= #self.lines do
      local nl = self.lines[self.i]
      if doc_marker(nl) then break end
      if nl.text == '' then breaks = breaks + 1; self.i = self.i + 1
      elseif nl.text:sub(1, 1) == '#' then break
      elseif nl.indent > parent then
         local t = strip_comment(nl.text)
         if t:match('^%- ') or t == '-' then break end
         check(t, nl.no)
         parts[#parts + 1] = breaks > 0 and string.rep('\n', breaks) or ' '
         parts[#parts + 1] = t
         breaks = 0
         commented = t ~= nl.text
         self.i = self.i + 1
      else break end
   end
   if #parts == 1 then return resolve(s) end
   return table.concat(parts)
end

-- the value that starts with `text` (the rest of a "key:" or "- " line)
function Parser:inline(text, parent)
   local c = text:sub(1, 1)
   if c == '"' or c == "'" then return self:quoted(text, parent + 1) end
   if c == '[' or c == '{' then return self:flow(text, parent + 1) end
   if c == '|' or c == '>' then return self:block_scalar(strip_comment(text), parent) end
   return self:plain(text, parent)
end

-- the node at the current line, indented by min_indent at least, in a
-- block at indentation `parent` (default min_indent - 1)
function Parser:block(min_indent, parent)
   local l = self:peek()
   if not l or l.indent < min_indent then return M.null end
   self.depth = (self.depth or 0) + 1
   if self.depth > MAX_DEPTH then self:fail(l.no, 'nested deeper than %d levels', MAX_DEPTH) end
   local v = self:block_node(l, min_indent, parent)
   self.depth = self.depth - 1
   return v
end

function Parser:block_node(l, min_indent, parent)
   local text = l.text
   if text == '-' or text:match('^%-%s') then return self:sequence(l.indent) end
   if self:split_key(text, l.no) then return self:mapping(l.indent) end
   local v = self:inline(text, parent or min_indent - 1)
   local after = self:peek()
   if after and after.indent >= min_indent then
      self:fail(after.no, 'unexpected content after a value (bad indentation?)')
   end
   return v
end

function Parser:sequence(indent)
   local seq = {kind = 'seq'}
   while true do
      local l = self:peek()
      if not l or l.indent < indent then break end
      if l.indent > indent then self:fail(l.no, 'bad indentation: %d spaces where the sequence has %d', l.indent, indent) end
      if not (l.text == '-' or l.text:match('^%-%s')) then
         -- a mapping key at the level of the sequence ends it ("key:\n- a\nnext: b")
         break
      end
      local rest = l.text:sub(2):gsub('^%s+', '')
      if rest == '' or rest:sub(1, 1) == '#' then
         self.i = self.i + 1
         seq[#seq + 1] = self:block(indent + 1)
      else
         -- the item starts on this line: read it as if it began a line at
         -- its own column
         local col = indent + #l.text - #rest
         self.lines[self.i] = {no = l.no, indent = col, text = rest, raw = string.rep(' ', col) .. rest}
         seq[#seq + 1] = self:block(col, indent)
      end
   end
   return seq
end

function Parser:mapping(indent)
   local map = {kind = 'map', keys = {}, values = {}}
   local seen = {}
   while true do
      local l = self:peek()
      if not l or l.indent < indent then break end
      if l.indent > indent then self:fail(l.no, 'bad indentation: %d spaces where the mapping has %d', l.indent, indent) end
      if l.text == '-' or l.text:match('^%-%s') then
         self:fail(l.no, 'a sequence item where the mapping expects a key')
      end
      local key, rest = self:split_key(l.text, l.no)
      if not key then self:fail(l.no, "expected 'key: value' (a mapping at %d spaces)", indent) end
      if seen[key] then self:fail(l.no, "duplicate key '%s' (first on line %d)", key, seen[key]) end
      seen[key] = l.no
      local value
      if rest == '' or rest:sub(1, 1) == '#' then
         self.i = self.i + 1
         local nl = self:peek()
         if nl and nl.indent == indent and (nl.text == '-' or nl.text:match('^%-%s')) then
            value = self:sequence(indent)
         else
            value = self:block(indent + 1)
         end
      else
         local col = indent + #l.text - #rest
         if rest:match('^%-%s') or rest == '-' then self:fail(l.no, 'a sequence cannot start on the line of its key') end
         if self:split_key(rest, l.no) and not rest:match('^["\']') then
            self:fail(l.no, "a mapping cannot start on the line of its key ('%s')", rest:sub(1, 30))
         end
         self.lines[self.i] = {no = l.no, indent = col, text = rest, raw = string.rep(' ', col) .. rest}
         value = self:inline(rest, indent)
      end
      map.keys[#map.keys + 1] = key
      map.values[#map.values + 1] = value
   end
   return map
end

-- text -> list of documents; errors "NAME line N: ..."
function M.decode(text, name)
   local p = setmetatable({name = name or 'yaml', i = 1}, Parser)
   if text:sub(1, 3) == '\239\187\191' then text = text:sub(4) end
   p.lines = split_lines(p, text)
   p.final_newline = text:sub(-1) == '\n' 
   local docs = {}
   while p.i <= #p.lines do
      local l = p.lines[p.i]
      if l.text:match('^%%') and l.indent == 0 then p:fail(l.no, 'YAML directives (%%) are not taken') end
      local parsed = true
      if doc_marker(l) and l.text:sub(1, 3) == '...' then
         p.i = p.i + 1
         parsed = false
         local nl = p:peek()
         if nl then p:fail(nl.no, "content after '...' without a '---' to start its document") end
         while p.i <= #p.lines and not doc_marker(p.lines[p.i]) and blank(p.lines[p.i]) do p.i = p.i + 1 end
      elseif doc_marker(l) then
         local rest = l.text:sub(4):gsub('^%s+', '')
         if rest ~= '' and rest:sub(1, 1) ~= '#' then
            p.lines[p.i] = {no = l.no, indent = 4, text = rest, raw = '    ' .. rest}
            docs[#docs + 1] = p:inline(rest, -1)
         else
            p.i = p.i + 1
            docs[#docs + 1] = p:block(0)
         end
      elseif blank(l) then
         p.i = p.i + 1
         parsed = false
      else
         docs[#docs + 1] = p:block(0)
      end
      local after = parsed and p:peek()
      if after then p:fail(after.no, 'unexpected content (bad indentation, or a second top-level value)') end
   end
   return docs
end

-- every string value of a document, in file order
function M.strings(v, emit)
   if type(v) == 'string' then emit(v)
   elseif type(v) == 'table' and v.kind == 'seq' then
      for _, x in ipairs(v) do M.strings(x, emit) end
   elseif type(v) == 'table' and v.kind == 'map' then
      for _, x in ipairs(v.values) do M.strings(x, emit) end
   end
end

return M
