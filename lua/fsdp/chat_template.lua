-- fsdp.chat_template: Hugging Face chat templates (Jinja2) rendered by the
-- C core (engine/template.c) as transformers' apply_chat_template renders
-- them, and chat data turned into token ids with a loss mask.
--
--   local ct = require 'fsdp.chat_template'
--   local chat = ct.load('models/Llama-2-7b-chat-hf')   -- chat_template.jinja or tokenizer_config.json
--   local text, spans = chat:render(messages, {add_generation_prompt = true})
--   local ids, mask = chat:encode(tokenizer, messages)  -- mask[i] = 1: a learned (assistant) token
--
--   local t = ct.compile('{{ bos_token }}{% for m in messages %}...')  -- a template alone
--   local text, spans = t:render({messages = {...}, bos_token = '<s>'})
--
-- Messages are lists of objects with role and content. They are passed to
-- the template as JSON; ct.decode_json keeps the key order and the number
-- literals of a JSON text (so `tojson` prints them as Python would), and
-- plain Lua tables work too (object keys then sorted).
--
-- What the template sees, as in transformers 5: messages (keys whose value
-- is null dropped; a reasoning field copied to `thinking` and
-- `reasoning_content`), tools and documents (none unless given),
-- add_generation_prompt, the named special tokens of tokenizer_config.json
-- (bos_token, eos_token, unk_token, sep_token, pad_token, cls_token,
-- mask_token) and any other keyword given in opts.kwargs.
--
-- Loss masks (encode): the rendered conversation is tokenized in one piece
-- without added special tokens (what apply_chat_template(tokenize=True)
-- gives); a token is learned when it overlaps text that an assistant
-- message produced:
--   'generation'  templates with {% generation %} blocks: the text of those
--                 blocks (transformers' return_assistant_tokens_mask)
--   'prefix'      other templates: for every assistant message i, the text
--                 between render(messages[:i], add_generation_prompt=true)
--                 and render(messages[:i+1]) (the reply and the template's
--                 end-of-turn text). Both renderings must be prefixes of the
--                 whole conversation's; a template for which they are not
--                 is an error that names the message.
-- Text positions map to tokens by tokenizing the pieces between them (when
-- those tokens concatenate to the whole text's, each position is a token
-- boundary), else by tokenizing the text up to each position: the first
-- token that differs from the whole text's is the one the position falls in.
local bind = require 'fsdp.ffi'
local fs = require 'fsdp.fs'
local json = require 'fsdp.json'
local ffi, C = bind.ffi, bind.C

local M = {}

---------------------------------------------------------------------------
-- JSON that keeps object key order and number literals

local Object = {}
Object.__index = Object
M.Object = Object

function M.object() return setmetatable({keys = {}, map = {}}, Object) end
function M.is_object(v) return getmetatable(v) == Object end
function Object:get(k) return self.map[k] end
function Object:has(k) return self.map[k] ~= nil end
function Object:set(k, v)
   if self.map[k] == nil then self.keys[#self.keys + 1] = k end
   self.map[k] = v
end
function Object:delete(k)
   if self.map[k] == nil then return end
   self.map[k] = nil
   for i, key in ipairs(self.keys) do
      if key == k then table.remove(self.keys, i); break end
   end
end

local Number = {}
Number.__index = Number
Number.__tostring = function(n) return n.text end
M.Number = Number
function M.is_number(v) return getmetatable(v) == Number end

local function jerr(s, pos, what)
   local line, col = 1, 1
   for i = 1, pos - 1 do
      if s:byte(i) == 10 then line, col = line + 1, 1 else col = col + 1 end
   end
   error(string.format('json: %s at line %d column %d', what, line, col), 0)
end

local function skip(s, pos) return s:find('[^ \t\r\n]', pos) or #s + 1 end

local ESC = {b = '\b', f = '\f', n = '\n', r = '\r', t = '\t', ['"'] = '"', ['\\'] = '\\', ['/'] = '/'}

local function utf8_char(cp)
   if cp < 0x80 then return string.char(cp)
   elseif cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
   elseif cp < 0x10000 then
      return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
   end
   return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                      0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

local function dstring(s, pos)
   local out, i = {}, pos + 1
   while true do
      local j = s:find('["\\%c]', i)
      if not j then jerr(s, pos, 'unterminated string') end
      out[#out + 1] = s:sub(i, j - 1)
      local c = s:sub(j, j)
      if c == '"' then return table.concat(out), j + 1 end
      if c ~= '\\' then jerr(s, j, 'control character in a string') end
      local e = s:sub(j + 1, j + 1)
      if ESC[e] then out[#out + 1] = ESC[e]; i = j + 2
      elseif e == 'u' then
         local hex = s:sub(j + 2, j + 5)
         if not hex:match('^%x%x%x%x$') then jerr(s, j, 'bad \\u escape') end
         local cp = tonumber(hex, 16)
         i = j + 6
         if cp >= 0xD800 and cp <= 0xDBFF and s:sub(i, i + 1) == '\\u' then
            local lo = tonumber(s:sub(i + 2, i + 5), 16)
            if lo and lo >= 0xDC00 and lo <= 0xDFFF then
               cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
               i = i + 6
            end
         end
         out[#out + 1] = utf8_char(cp)
      else jerr(s, j, 'bad escape') end
   end
end

local dvalue
dvalue = function(s, pos, depth)
   if depth > 200 then jerr(s, pos, 'nesting deeper than 200') end
   pos = skip(s, pos)
   local c = s:sub(pos, pos)
   if c == '{' then
      local obj = M.object()
      pos = skip(s, pos + 1)
      if s:sub(pos, pos) == '}' then return obj, pos + 1 end
      while true do
         if s:sub(pos, pos) ~= '"' then jerr(s, pos, 'expected a string key') end
         local k, v
         k, pos = dstring(s, pos)
         pos = skip(s, pos)
         if s:sub(pos, pos) ~= ':' then jerr(s, pos, "expected ':'") end
         v, pos = dvalue(s, pos + 1, depth + 1)
         obj:set(k, v)
         pos = skip(s, pos)
         local d = s:sub(pos, pos)
         if d == '}' then return obj, pos + 1 end
         if d ~= ',' then jerr(s, pos, "expected ',' or '}'") end
         pos = skip(s, pos + 1)
      end
   elseif c == '[' then
      local arr = json.array({})
      pos = skip(s, pos + 1)
      if s:sub(pos, pos) == ']' then return arr, pos + 1 end
      while true do
         arr[#arr + 1], pos = dvalue(s, pos, depth + 1)
         pos = skip(s, pos)
         local d = s:sub(pos, pos)
         if d == ']' then return arr, pos + 1 end
         if d ~= ',' then jerr(s, pos, "expected ',' or ']'") end
         pos = pos + 1
      end
   elseif c == '"' then return dstring(s, pos)
   elseif s:sub(pos, pos + 3) == 'true' then return true, pos + 4
   elseif s:sub(pos, pos + 4) == 'false' then return false, pos + 5
   elseif s:sub(pos, pos + 3) == 'null' then return json.null, pos + 4
   end
   local num = s:match('^-?%d+%.?%d*[eE]?[-+]?%d*', pos)
   if not num or not tonumber(num) or num:match('^-?0%d') or num:match('%.$') or num:match('%.[eE]') then
      jerr(s, pos, 'unexpected character')
   end
   return setmetatable({text = num}, Number), pos + #num
end

-- a JSON text -> values: objects as ct.Object (ordered), numbers as ct.Number
-- (their literal), arrays as Lua sequences, null as json.null
function M.decode_json(s)
   if type(s) ~= 'string' then error('json: decode wants a string', 0) end
   local v, pos = dvalue(s, 1, 0)
   if skip(s, pos) <= #s then jerr(s, skip(s, pos), 'trailing characters') end
   return v
end

local function estring(s)
   return '"' .. s:gsub('[%c"\\]', function(c)
      local e = ({['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t', ['\b'] = '\\b', ['\f'] = '\\f'})[c]
      return e or string.format('\\u%04x', c:byte())
   end) .. '"'
end

local function encode(v, out)
   local kind = type(v)
   if v == nil or v == json.null then out[#out + 1] = 'null'
   elseif kind == 'boolean' then out[#out + 1] = tostring(v)
   elseif kind == 'string' then out[#out + 1] = estring(v)
   elseif kind == 'number' then
      if v ~= v or v == math.huge or v == -math.huge then error('json: cannot encode ' .. tostring(v), 0) end
      out[#out + 1] = (v == math.floor(v) and math.abs(v) < 2 ^ 53) and string.format('%d', v) or string.format('%.17g', v)
   elseif getmetatable(v) == Number then out[#out + 1] = v.text
   elseif getmetatable(v) == Object then
      out[#out + 1] = '{'
      for i, k in ipairs(v.keys) do
         out[#out + 1] = (i > 1 and ',' or '') .. estring(k) .. ':'
         encode(v.map[k], out)
      end
      out[#out + 1] = '}'
   elseif kind == 'table' then
      local n = 0
      for _ in pairs(v) do n = n + 1 end
      if n == #v then -- a sequence (an empty table is an empty list; use ct.object() for {})
         out[#out + 1] = '['
         for i = 1, n do
            if i > 1 then out[#out + 1] = ',' end
            encode(v[i], out)
         end
         out[#out + 1] = ']'
      else
         local keys = {}
         for k in pairs(v) do
            if type(k) ~= 'string' then error('json: object key of type ' .. type(k), 0) end
            keys[#keys + 1] = k
         end
         table.sort(keys)
         out[#out + 1] = '{'
         for i, k in ipairs(keys) do
            out[#out + 1] = (i > 1 and ',' or '') .. estring(k) .. ':'
            encode(v[k], out)
         end
         out[#out + 1] = '}'
      end
   else
      error('json: cannot encode a ' .. kind, 0)
   end
end

-- values (ordered or plain Lua) -> JSON text
function M.encode_json(v)
   local out = {}
   encode(v, out)
   return table.concat(out)
end

-- field of an ordered object or a plain table
local function field(v, k)
   if getmetatable(v) == Object then return v.map[k] end
   if type(v) == 'table' then return v[k] end
   return nil
end
M.field = field

---------------------------------------------------------------------------
-- compiled templates

local Template = {}
Template.__index = Template
M.Template = Template

local out_p, out_n = ffi.new('char*[1]'), ffi.new('int64_t[1]')
local span_p, span_n = ffi.new('int64_t*[1]'), ffi.new('int64_t[1]')

-- source: the template text; name: for messages (a file name)
function M.compile(source, name)
   if type(source) ~= 'string' then error('chat_template: compile wants a string, got ' .. type(source), 2) end
   local c = C.fsdp_template_new(source, #source)
   if c == nil then error((name and name .. ': ' or '') .. bind.last_error(), 0) end
   return setmetatable({_c = ffi.gc(c, C.fsdp_template_free), source = source, name = name,
                        has_generation = C.fsdp_template_has_generation(c) ~= 0}, Template)
end

-- vars: a table (see encode_json) or a JSON object text -> text, spans
-- (spans: {{start, end}, ...} byte offsets, 0-based, end exclusive, of the
-- {% generation %} blocks' output)
function Template:render(vars)
   local text = vars
   if type(vars) ~= 'string' then
      if vars == nil then vars = M.object() end
      if type(vars) == 'table' and not M.is_object(vars) then -- a plain table of variables
         local o, keys = M.object(), {}
         for k in pairs(vars) do keys[#keys + 1] = k end
         table.sort(keys)
         for _, k in ipairs(keys) do o:set(k, vars[k]) end
         vars = o
      end
      text = M.encode_json(vars)
   end
   local rc = C.fsdp_template_render(self._c, text, #text, out_p, out_n, span_p, span_n)
   if rc ~= 0 then error((self.name and self.name .. ': ' or '') .. bind.last_error(), 0) end
   local s = ffi.string(out_p[0], out_n[0])
   C.fsdp_free(out_p[0])
   local spans = {}
   for i = 0, tonumber(span_n[0]) - 1 do
      spans[#spans + 1] = {tonumber(span_p[0][2 * i]), tonumber(span_p[0][2 * i + 1])}
   end
   if span_p[0] ~= nil then C.fsdp_free(span_p[0]) end
   return s, spans
end

---------------------------------------------------------------------------
-- a model's chat template with its special tokens

local Chat = {}
Chat.__index = Chat
M.Chat = Chat

M.SPECIAL_TOKENS = {'bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'}

local function token_string(v)
   if type(v) == 'string' then return v end
   local c = field(v, 'content')
   if type(c) == 'string' then return c end
   return nil
end

local function read(path)
   local f = io.open(path, 'rb')
   if not f then return nil end
   local s = f:read('*a')
   f:close()
   return s
end

local function read_config(config_path)
   local text = read(config_path)
   if not text then return M.object() end
   local ok, v = pcall(M.decode_json, text)
   if not ok then error('chat_template: ' .. config_path .. ': ' .. v, 0) end
   if not M.is_object(v) then error('chat_template: ' .. config_path .. ' is not a JSON object', 0) end
   return v
end

-- the named special tokens of a tokenizer_config.json (a directory or the
-- file): {bos_token = '<s>', ...}; {} when there is none
function M.special_tokens(path)
   local config_path = fs.is_dir(path) and (path:gsub('/+$', '') .. '/tokenizer_config.json') or path
   local config = read_config(config_path)
   local tokens = {}
   for _, k in ipairs(M.SPECIAL_TOKENS) do
      local s = token_string(config:get(k))
      if s then tokens[k] = s end
   end
   return tokens
end

-- path: a model directory (chat_template.jinja, else tokenizer_config.json's
-- chat_template), a tokenizer_config.json, or a .jinja file (special tokens
-- then from the tokenizer_config.json beside it); name picks one of several
-- named templates (default 'default')
function M.load(path, name)
   local dir, config_path = path, nil
   if fs.is_dir(path) then
      dir = path:gsub('/+$', '')
      config_path = dir .. '/tokenizer_config.json'
   else
      dir = path:match('^(.*)/[^/]*$') or '.'
      config_path = path:match('%.jinja$') and dir .. '/tokenizer_config.json' or path
   end
   if not fs.exists(path) then error('chat_template: ' .. path .. ' does not exist', 0) end
   local config = read_config(config_path)
   local source, origin
   local jinja = fs.is_dir(path) and dir .. '/chat_template.jinja' or path
   if jinja:match('%.jinja$') and fs.exists(jinja) then
      source, origin = read(jinja), jinja
   else
      local t = config:get('chat_template')
      origin = config_path .. ' (chat_template)'
      if type(t) == 'string' then source = t
      elseif type(t) == 'table' and not M.is_object(t) then
         -- [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
         local want, names = name or 'default', {}
         for i, entry in ipairs(t) do
            local n, s = field(entry, 'name'), field(entry, 'template')
            if type(n) ~= 'string' or type(s) ~= 'string' then
               error(string.format('chat_template: %s: chat_template[%d] lacks a string name and template', config_path, i - 1), 0)
            end
            names[#names + 1] = n
            if n == want then source = s end
         end
         if not source then
            error(string.format("chat_template: %s has no chat template named '%s' (it has: %s)", config_path, want,
                                table.concat(names, ', ')), 0)
         end
         origin = config_path .. ' (chat_template ' .. want .. ')'
      elseif t ~= nil then
         error('chat_template: ' .. config_path .. ': chat_template is neither a string nor a list of named templates', 0)
      end
   end
   if not source then
      error('chat_template: no chat template in ' .. path .. ' (neither chat_template.jinja nor a chat_template in tokenizer_config.json)', 0)
   end
   local self = setmetatable({template = M.compile(source, origin), origin = origin, tokens = {}}, Chat)
   for _, k in ipairs(M.SPECIAL_TOKENS) do
      local s = token_string(config:get(k))
      if s then self.tokens[k] = s end
   end
   return self
end

-- a Chat from a template text and special tokens ({bos_token = '<s>', ...})
function M.new(source, tokens, name)
   return setmetatable({template = M.compile(source, name), origin = name, tokens = tokens or {}}, Chat)
end

local REASONING = {'reasoning_content', 'thinking', 'reasoning'}

-- transformers' normalisation: keys whose value is null dropped; the first
-- reasoning field copied to `thinking` (first) and `reasoning_content` (last)
local function normalize(msg)
   local o = M.object()
   if M.is_object(msg) then
      for _, k in ipairs(msg.keys) do
         if msg.map[k] ~= json.null then o:set(k, msg.map[k]) end
      end
   elseif type(msg) == 'table' then
      local keys = {}
      for k in pairs(msg) do keys[#keys + 1] = k end
      table.sort(keys)
      for _, k in ipairs(keys) do if msg[k] ~= json.null then o:set(k, msg[k]) end end
   else
      error('chat_template: a message is a ' .. type(msg) .. ', not an object', 0)
   end
   local r
   for _, k in ipairs(REASONING) do
      if o:get(k) ~= nil then r = o:get(k); break end
   end
   if r ~= nil then
      local out = M.object()
      out:set('thinking', r)
      for _, k in ipairs(o.keys) do out:set(k, o.map[k]) end
      out:set('reasoning_content', r)
      o = out
   end
   return o
end

-- the variables of one rendering: messages (a list), opts: add_generation_prompt,
-- tools, documents, kwargs (a table of other variables)
function Chat:variables(messages, opts)
   opts = opts or {}
   local msgs = json.array({})
   for i, m in ipairs(messages) do msgs[i] = normalize(m) end
   local vars = M.object()
   for _, k in ipairs(M.SPECIAL_TOKENS) do
      if self.tokens[k] then vars:set(k, self.tokens[k]) end
   end
   if opts.kwargs then
      local keys = {}
      if M.is_object(opts.kwargs) then keys = opts.kwargs.keys
      else for k in pairs(opts.kwargs) do keys[#keys + 1] = k end; table.sort(keys) end
      for _, k in ipairs(keys) do vars:set(k, field(opts.kwargs, k)) end
   end
   vars:set('messages', msgs)
   vars:set('tools', opts.tools == nil and json.null or opts.tools)
   vars:set('documents', opts.documents == nil and json.null or opts.documents)
   vars:set('add_generation_prompt', opts.add_generation_prompt and true or false)
   return vars
end

-- messages -> text, spans (see Template:render)
function Chat:render(messages, opts)
   return self.template:render(self:variables(messages, opts))
end

---------------------------------------------------------------------------
-- tokens and the loss mask

local function tokens_of(tok, text)
   local t = tok:encode(text, false)
   local n = t:numel()
   local p = t:ptr()
   local ids = {}
   for i = 0, n - 1 do ids[i + 1] = p[i] end
   t:free()
   return ids
end

-- number of leading ids a and b share
local function common_prefix(a, b)
   local n = math.min(#a, #b)
   for i = 1, n do
      if a[i] ~= b[i] then return i - 1 end
   end
   return n
end

-- token index (0-based) where text position pos falls: the first token of
-- the whole text's tokens that the text up to pos does not reproduce;
-- as_end: the count of tokens starting before pos
local function token_at(tok, text, ids, pos, as_end, cache)
   if pos <= 0 then return 0 end
   if pos >= #text then return #ids end
   local key = pos
   local prefix = cache[key]
   if not prefix then
      prefix = tokens_of(tok, text:sub(1, pos))
      cache[key] = prefix
   end
   local k = common_prefix(prefix, ids)
   if as_end and k < #prefix then k = k + 1 end
   return k
end

local function is_learned_role(role, roles)
   for _, r in ipairs(roles) do if r == role then return true end end
   return false
end

-- messages -> ids, mask (Lua lists of equal length), info
-- opts: as render (add_generation_prompt is not used), plus
--   method = 'auto' | 'generation' | 'prefix' (auto: generation when the
--            template has the blocks and the assistant messages are learned)
--   roles  = the roles whose messages are learned (default {'assistant'})
--   learn  = a list of message indexes (1-based) to learn instead of roles
function Chat:encode(tok, messages, opts)
   opts = opts or {}
   local method = opts.method or 'auto'
   if method == 'auto' then
      -- {% generation %} blocks mark what the template's author meant to be
      -- learned: the assistant messages. Another choice of messages (a
      -- prompt/completion split, other roles) needs the prefix method.
      local default_roles = not opts.roles or (#opts.roles == 1 and opts.roles[1] == 'assistant')
      method = (self.template.has_generation and not opts.learn and default_roles) and 'generation' or 'prefix'
   end
   if method == 'generation' and not self.template.has_generation then
      error('chat_template: mask method generation needs {% generation %} blocks in ' .. tostring(self.origin), 0)
   end
   if method ~= 'generation' and method ~= 'prefix' then
      error("chat_template: mask method must be 'auto', 'generation' or 'prefix', got " .. tostring(method), 0)
   end
   local base = {tools = opts.tools, documents = opts.documents, kwargs = opts.kwargs}
   local text, spans = self:render(messages, base)
   local ids = tokens_of(tok, text)
   local mask = {}
   for i = 1, #ids do mask[i] = 0 end
   local cache = {}
   local char_spans = {}
   if method == 'generation' then
      char_spans = spans
   else
      local learn = {}
      if opts.learn then for _, i in ipairs(opts.learn) do learn[i] = true end
      else
         local roles = opts.roles or {'assistant'}
         for i, m in ipairs(messages) do
            if is_learned_role(field(m, 'role'), roles) then learn[i] = true end
         end
      end
      for i = 1, #messages do
         if learn[i] then
            local head = {}
            for k = 1, i - 1 do head[k] = messages[k] end
            local with = {}
            for k = 1, i do with[k] = messages[k] end
            local ok1, before = pcall(self.render, self, head, {tools = base.tools, documents = base.documents,
                                                                kwargs = base.kwargs, add_generation_prompt = true})
            if not ok1 then error(string.format('rendering the messages before message %d: %s', i, before), 0) end
            local ok2, upto = pcall(self.render, self, with, base)
            if not ok2 then error(string.format('rendering the messages up to message %d: %s', i, upto), 0) end
            if text:sub(1, #before) ~= before or text:sub(1, #upto) ~= upto or #upto < #before then
               error(string.format('the chat template does not render message %d as a continuation of the messages before it '
                                   .. '(the rendering of the first %d messages is not a prefix of the whole); '
                                   .. 'use a template with {%% generation %%} blocks', i, i - 1), 0)
            end
            char_spans[#char_spans + 1] = {#before, #upto}
         end
      end
   end
   -- text positions -> token indexes. Cheap way first: tokenize the pieces
   -- between the positions; when they concatenate to the whole text's
   -- tokens, every position is a token boundary at the running count.
   -- Otherwise the text up to each position is tokenized (token_at).
   local cuts = {}
   for _, s in ipairs(char_spans) do
      if s[2] > s[1] then
         for k = 1, 2 do if s[k] > 0 and s[k] < #text then cuts[#cuts + 1] = s[k] end end
      end
   end
   table.sort(cuts)
   local at, pieces_ok = {}, #cuts > 0
   if pieces_ok then
      local count, prev = 0, 0
      for k = 1, #cuts + 1 do
         local c = cuts[k] or #text
         if c > prev then
            local piece = tokens_of(tok, text:sub(prev + 1, c))
            for j = 1, #piece do
               if ids[count + j] ~= piece[j] then pieces_ok = false; break end
            end
            if not pieces_ok then break end
            count = count + #piece
         end
         at[c] = count
         prev = c
      end
      pieces_ok = pieces_ok and count == #ids
   end
   local function index(pos, as_end)
      if pos <= 0 then return 0 end
      if pos >= #text then return #ids end
      if pieces_ok then return at[pos] end
      return token_at(tok, text, ids, pos, as_end, cache)
   end
   for _, s in ipairs(char_spans) do
      if s[2] > s[1] then
         local a, b = index(s[1], false), index(s[2], true)
         for i = a + 1, b do mask[i] = 1 end
      end
   end
   return ids, mask, {text = text, spans = char_spans, method = method}
end

return M
