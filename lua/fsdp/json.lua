-- fsdp.json: a small JSON encoder/decoder for configs, indexes and metrics.
-- Objects encode with sorted keys so files are stable; decode errors give
-- the byte position.
--
-- Floats stay floats. Lua has one number type, but Python (transformers)
-- tells 1000000.0 from 1000000 and refuses an int where a config field is a
-- float. The decoder remembers, per object or array, which members were
-- written as floats (a '.', an 'e' or an 'E' in the text); the encoder
-- writes those as floats again (0.0, 1000000.0). json.copy keeps the
-- marks; code that builds a table mark its float members with
-- json.set_float(t, key). A number never marked is written as an integer
-- when it has no fraction, as before.
local M = {}

-- container -> {key -> true} for members that are floats
local float_marks = setmetatable({}, {__mode = 'k'})

-- marks t[key] as a float (yes = false removes the mark); returns t
function M.set_float(t, key, yes)
   local m = float_marks[t]
   if yes == false then
      if m then m[key] = nil end
      return t
   end
   if not m then m = {}; float_marks[t] = m end
   m[key] = true
   return t
end

-- whether t[key] is marked as a float
function M.is_float(t, key)
   local m = float_marks[t]
   return m ~= nil and m[key] == true
end

local escapes = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                 ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}

local function encode_string(s)
   return '"' .. s:gsub('[%c"\\]', function(c)
      return escapes[c] or string.format('\\u%04x', c:byte())
   end) .. '"'
end

-- a table is an array when its keys are exactly 1..n (empty tables: object
-- unless marked with M.array)
local array_mark = setmetatable({}, {__mode = 'k'})
function M.array(t) array_mark[t] = true; return t end

-- a deep copy of a decoded value: tables are copied with their array and
-- float marks; json.null stays json.null
function M.copy(v)
   if type(v) ~= 'table' or v == M.null then return v end
   local out = {}
   for k, x in pairs(v) do out[k] = M.copy(x) end
   if array_mark[v] then array_mark[out] = true end
   local m = float_marks[v]
   if m then
      local c = {}
      for k in pairs(m) do c[k] = true end
      float_marks[out] = c
   end
   return out
end

local function is_array(t)
   if array_mark[t] then return true end
   local n = 0
   for _ in pairs(t) do n = n + 1 end
   if n == 0 then return false end
   for i = 1, n do if t[i] == nil then return false end end
   return true
end

-- as_float: v is a member marked as a float
local function encode(v, indent, depth, out, as_float)
   local kind = type(v)
   if v == nil or v == M.null then out[#out + 1] = 'null'
   elseif kind == 'boolean' then out[#out + 1] = tostring(v)
   elseif kind == 'number' then
      if v ~= v or v == math.huge or v == -math.huge then out[#out + 1] = 'null'
      elseif as_float and v == math.floor(v) and math.abs(v) < 1e15 then
         out[#out + 1] = string.format('%.1f', v) -- 0.0, 1000000.0 (larger ones get an exponent below)
      elseif v == math.floor(v) and math.abs(v) < 2^53 and not as_float then out[#out + 1] = string.format('%d', v)
      else
         local txt = string.format('%.15g', v) -- shortest of 15..17 digits that reads back exactly
         if tonumber(txt) ~= v then txt = string.format('%.16g', v) end
         if tonumber(txt) ~= v then txt = string.format('%.17g', v) end
         if as_float and not txt:find('[.eEn]') then txt = txt .. '.0' end
         out[#out + 1] = txt
      end
   elseif kind == 'string' then out[#out + 1] = encode_string(v)
   elseif kind == 'table' then
      local nl = indent and ('\n' .. string.rep(indent, depth + 1)) or ''
      local close = indent and ('\n' .. string.rep(indent, depth)) or ''
      local marks = float_marks[v]
      if is_array(v) then
         out[#out + 1] = '['
         for i = 1, #v do
            out[#out + 1] = (i > 1 and ',' or '') .. nl
            encode(v[i], indent, depth + 1, out, marks ~= nil and marks[i])
         end
         out[#out + 1] = (#v > 0 and close or '') .. ']'
      else
         local keys = {}
         for k in pairs(v) do
            if type(k) ~= 'string' and type(k) ~= 'number' then error('json: object key of type ' .. type(k), 0) end
            keys[#keys + 1] = tostring(k)
         end
         table.sort(keys)
         out[#out + 1] = '{'
         for i, k in ipairs(keys) do
            local val, key = v[k], k
            if val == nil then key = tonumber(k); val = v[key] end
            out[#out + 1] = (i > 1 and ',' or '') .. nl .. encode_string(k) .. (indent and ': ' or ':')
            encode(val, indent, depth + 1, out, marks ~= nil and marks[key])
         end
         out[#out + 1] = (#keys > 0 and close or '') .. '}'
      end
   else
      error('json: cannot encode a ' .. kind, 0)
   end
end

M.null = setmetatable({}, {__tostring = function() return 'null' end})

function M.encode(v, indent)
   local out = {}
   encode(v, indent, 0, out)
   return table.concat(out)
end

-- decoding
local function decode_error(s, pos, what)
   local line, col = 1, 1
   for i = 1, pos - 1 do
      if s:sub(i, i) == '\n' then line, col = line + 1, 1 else col = col + 1 end
   end
   error(string.format('json: %s at line %d column %d', what, line, col), 0)
end

local function skip(s, pos)
   return s:find('[^ \t\r\n]', pos) or #s + 1
end

local decode_value

local function decode_string(s, pos)
   local out, i = {}, pos + 1
   while true do
      local c = s:sub(i, i)
      if c == '' then decode_error(s, pos, 'unterminated string') end
      if c == '"' then return table.concat(out), i + 1 end
      if c == '\\' then
         local e = s:sub(i + 1, i + 1)
         local map = {b = '\b', f = '\f', n = '\n', r = '\r', t = '\t', ['"'] = '"', ['\\'] = '\\', ['/'] = '/'}
         if map[e] then out[#out + 1] = map[e]; i = i + 2
         elseif e == 'u' then
            local hex = s:sub(i + 2, i + 5)
            if not hex:match('^%x%x%x%x$') then decode_error(s, i, 'bad \\u escape') end
            local cp = tonumber(hex, 16)
            i = i + 6
            if cp >= 0xD800 and cp <= 0xDBFF and s:sub(i, i + 1) == '\\u' then
               local lo = tonumber(s:sub(i + 2, i + 5), 16)
               if lo and lo >= 0xDC00 and lo <= 0xDFFF then
                  cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
                  i = i + 6
               end
            end
            if cp >= 0xD800 and cp <= 0xDFFF then decode_error(s, i - 6, 'a lone UTF-16 surrogate in a \\u escape') end
            if cp < 0x80 then out[#out + 1] = string.char(cp)
            elseif cp < 0x800 then out[#out + 1] = string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
            elseif cp < 0x10000 then
               out[#out + 1] = string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
            else
               out[#out + 1] = string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                                           0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
            end
         else decode_error(s, i, 'bad escape') end
      else
         local j = s:find('["\\%z\1-\31]', i)
         if not j then decode_error(s, pos, 'unterminated string') end
         if s:byte(j) < 32 then decode_error(s, j, 'a control character inside a string (write it as an escape)') end
         out[#out + 1] = s:sub(i, j - 1)
         i = j
      end
   end
end

local MAX_DEPTH = 512
local depth = 0

local function decode_object(s, pos)
   local obj = {}
   pos = skip(s, pos + 1)
   if s:sub(pos, pos) == '}' then return obj, pos + 1 end
   while true do
      if s:sub(pos, pos) ~= '"' then decode_error(s, pos, 'expected a string key') end
      local k
      k, pos = decode_string(s, pos)
      pos = skip(s, pos)
      if s:sub(pos, pos) ~= ':' then decode_error(s, pos, "expected ':'") end
      local is_float
      obj[k], pos, is_float = decode_value(s, pos + 1)
      if is_float then M.set_float(obj, k) end
      pos = skip(s, pos)
      local d = s:sub(pos, pos)
      if d == '}' then return obj, pos + 1 end
      if d ~= ',' then decode_error(s, pos, "expected ',' or '}'") end
      pos = skip(s, pos + 1)
   end
end

local function decode_array(s, pos)
   local arr = M.array({})
   pos = skip(s, pos + 1)
   if s:sub(pos, pos) == ']' then return arr, pos + 1 end
   while true do
      local i, is_float = #arr + 1
      arr[i], pos, is_float = decode_value(s, pos)
      if is_float then M.set_float(arr, i) end
      pos = skip(s, pos)
      local d = s:sub(pos, pos)
      if d == ']' then return arr, pos + 1 end
      if d ~= ',' then decode_error(s, pos, "expected ',' or ']'") end
      pos = pos + 1
   end
end

decode_value = function(s, pos)
   pos = skip(s, pos)
   local c = s:sub(pos, pos)
   if c == '{' or c == '[' then
      depth = depth + 1
      if depth > MAX_DEPTH then decode_error(s, pos, string.format('nested deeper than %d levels', MAX_DEPTH)) end
      local v, after = (c == '{' and decode_object or decode_array)(s, pos)
      depth = depth - 1
      return v, after
   elseif c == '"' then return decode_string(s, pos)
   elseif s:sub(pos, pos + 3) == 'true' then return true, pos + 4
   elseif s:sub(pos, pos + 4) == 'false' then return false, pos + 5
   elseif s:sub(pos, pos + 3) == 'null' then return M.null, pos + 4
   end
   -- JSON's number grammar exactly: -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?
   local int = s:match('^-?0', pos) or s:match('^-?[1-9]%d*', pos)
   if not int then decode_error(s, pos, c == '' and 'unexpected end of input' or 'unexpected character') end
   local j = pos + #int
   if s:sub(j, j):match('%d') then decode_error(s, pos, 'a number with a leading zero') end
   local frac = s:match('^%.%d+', j)
   if not frac and s:sub(j, j) == '.' then decode_error(s, j, 'a number with no digits after its point') end
   j = j + (frac and #frac or 0)
   local exp = s:match('^[eE][-+]?%d+', j)
   if not exp and s:sub(j, j):match('[eE]') then decode_error(s, j, 'a number with no digits in its exponent') end
   j = j + (exp and #exp or 0)
   return tonumber(s:sub(pos, j - 1)), j, (frac or exp) ~= nil
end

function M.decode(s)
   if type(s) ~= 'string' then error('json: decode wants a string', 0) end
   depth = 0
   local v, pos = decode_value(s, 1)
   pos = skip(s, pos)
   if pos <= #s then decode_error(s, pos, 'trailing characters') end
   return v
end

-- read and decode a file; errors name the file
function M.read_file(path)
   local f, err = io.open(path, 'rb')
   if not f then return nil, err end
   local s = f:read('*a')
   f:close()
   local ok, v = pcall(M.decode, s)
   if not ok then return nil, path .. ': ' .. v end
   return v
end

return M
