-- Chat templates (engine/template.c through fsdp.chat_template) against
-- transformers' apply_chat_template, from the fixtures that
-- tests/golden/make_template_fixtures.py wrote:
--   * conformance.json: ~110 small templates render as transformers' Jinja
--     environment renders them (text equal), or fail where it fails;
--   * every chat-template style (ChatML, Llama 2, Llama 3, Llama 3.1 with
--     tools, Mistral, Zephyr, Gemma, Qwen 2.5 with tools, ChatML with
--     {% generation %}): for each conversation, with and without
--     add_generation_prompt, the text and the token ids equal
--     apply_chat_template's, the loss mask equals the reference (transformers'
--     assistant mask for generation templates, the offset-based prefix
--     method for the others), and conversations the template refuses fail;
--   * constructs outside the supported set are errors naming them, with the
--     line and column; runaway templates stop with an error.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local ct = require 'fsdp.chat_template'
local tokenizer = require 'fsdp.tokenizer'
local fs = require 'fsdp.fs'

local root = fsdp.root .. '/tests/golden/templates'

local function read(path)
   local f = assert(io.open(path, 'rb'))
   local s = f:read('*a')
   f:close()
   return s
end

local function list_eq(a, b)
   if #a ~= #b then return false end
   for i = 1, #a do if a[i] ~= tonumber(tostring(b[i])) then return false end end
   return true
end

local function show(list)
   local out = {}
   for i = 1, math.min(#list, 60) do out[i] = tostring(list[i]) end
   return table.concat(out, ',') .. (#list > 60 and ',...' or '')
end

---------------------------------------------------------------------------
-- conformance

do
   local exp = ct.decode_json(read(root .. '/conformance.json'))
   local n_text, n_err = 0, 0
   for i, c in ipairs(exp:get('cases')) do
      local src, vars = c:get('template'), ct.encode_json(c:get('vars'))
      local ok, out = pcall(function() return (ct.compile(src, 'case ' .. i)):render(vars) end)
      local want = c:get('text')
      if want then
         n_text = n_text + 1
         t.check(ok and out == want, 'conformance %d %q:\n  want %q\n  got  %q', i, src, want, tostring(out))
      else
         n_err = n_err + 1
         t.check(not ok, 'conformance %d %q: transformers fails (%s), we rendered %q', i, src, c:get('error'), tostring(out))
         t.check(not ok and out:find('line %d+ col %d+') ~= nil, 'conformance %d: the error names line and column: %s', i, tostring(out))
      end
   end
   t.check(n_text > 80 and n_err > 20, 'conformance: %d rendered and %d failing cases', n_text, n_err)
   -- the message raise_exception was given reaches the error
   t.raises(function() ct.compile("{{ raise_exception('Roles must alternate') }}"):render({}) end,
            {'line 1 col', 'Roles must alternate'}, 'raise_exception')
end

---------------------------------------------------------------------------
-- outside the supported set: a clear error naming the construct and where

local unsupported = {
   {'{% macro f() %}x{% endmacro %}', {"tag 'macro' is not supported", 'line 1 col 4'}},
   {'line\n{% call f() %}x{% endcall %}', {"tag 'call' is not supported", 'line 2 col 4'}},
   {'{% filter upper %}x{% endfilter %}', {"tag 'filter' is not supported"}},
   {'{% with a = 1 %}{{ a }}{% endwith %}', {"tag 'with' is not supported"}},
   {"{% extends 'base' %}", {"tag 'extends' is not supported"}},
   {'{% for x in y recursive %}{% endfor %}', {'recursive for loops are not supported'}},
   {'{{ x | wordwrap }}', {"unknown filter 'wordwrap'", 'line 1 col 8'}},
   {'{{ f(*args) }}', {'*args and **kwargs'}},
   {'{% set x | upper %}a{% endset %}', {'filters on {% set %} blocks'}},
   {'{{ "\\N{DASH}" }}', {'\\N{...} escapes'}},
   {'{{ x is == 1 }}', {"expected a test name after 'is'"}},
}
for _, u in ipairs(unsupported) do
   t.raises(function() ct.compile(u[1]) end, u[2], u[1])
end
-- at render time: unsupported methods, % formatting
t.raises(function() ct.compile("{{ 'abc'.casefold() }}"):render({}) end, {"str method 'casefold' is not supported"}, 'casefold')
t.raises(function() ct.compile("{{ '%s' % 1 }}"):render({}) end, {'string formatting with % is not supported'}, '% format')
-- runaway templates stop
t.raises(function() ct.compile('{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}'):render({}) end,
         {'more than', 'steps'}, 'nested loops')
t.raises(function() ct.compile('{{ ' .. string.rep('(', 300) .. '1' .. string.rep(')', 300) .. ' }}') end,
         {'nested', 'line 1 col'}, 'deep nesting')
t.raises(function() ct.compile('{{ ' .. string.rep('not ', 400) .. '1 }}') end, {'nested more than'}, 'deep not')
-- bad variables and sources
t.raises(function() ct.compile('x'):render('{"messages": [') end, {'invalid JSON'}, 'bad vars')
t.raises(function() ct.compile('x'):render('[1]') end, {'not an object'}, 'vars not an object')
t.raises(function() ct.compile('ok\n\255') end, {'line 2', 'invalid UTF-8'}, 'invalid UTF-8')
-- generation spans: byte offsets of the blocks' output
do
   local text, spans = ct.compile('a{% generation %}bé{% endgeneration %}c{% for x in [1, 2] %}{% generation %}{{ x }}{% endgeneration %}{% endfor %}'):render({})
   t.check(text == 'abéc12' and #spans == 3 and spans[1][1] == 1 and spans[1][2] == 4 and spans[2][1] == 5 and spans[3][2] == 7,
           'generation spans: %q %s', text, #spans)
end

---------------------------------------------------------------------------
-- the chat-template styles with their tokenizers

local styles = {'chatml', 'chatml_generation', 'llama2', 'llama3', 'llama31_tools', 'mistral', 'zephyr', 'gemma', 'qwen25'}
local n_ids, n_masks, n_refused = 0, 0, 0
for _, name in ipairs(styles) do
   local dir = root .. '/' .. name
   local chat = ct.load(dir)
   local tok = tokenizer.load(dir)
   t.check(chat.template.has_generation == (name == 'chatml_generation'), '%s: has_generation', name)
   local exp = ct.decode_json(read(dir .. '/expected.json'))
   for _, c in ipairs(exp:get('cases')) do
      local label = string.format('%s/%s agp=%s', name, c:get('conversation'), tostring(c:get('add_generation_prompt')))
      local opts = {add_generation_prompt = c:get('add_generation_prompt'), tools = c:get('tools')}
      local messages = c:get('messages')
      local ok, text = pcall(chat.render, chat, messages, opts)
      if c:get('text') then
         t.check(ok and text == c:get('text'), '%s: text\n  want %q\n  got  %q', label, c:get('text'), tostring(text))
         if ok then
            local ids = tok:encode(text, false)
            local got = {}
            for i = 0, ids:numel() - 1 do got[#got + 1] = ids:ptr()[i] end
            ids:free()
            t.check(list_eq(got, c:get('ids')), '%s: ids\n  want %s\n  got  %s', label, show(c:get('ids')), show(got))
            n_ids = n_ids + 1
         end
         if c:get('mask') or c:get('mask_error') then
            local ok2, ids, mask = pcall(chat.encode, chat, tok, messages, {tools = opts.tools})
            if c:get('mask') then
               t.check(ok2 and list_eq(ids, c:get('ids')), '%s: encode ids', label)
               t.check(ok2 and list_eq(mask, c:get('mask')), '%s: mask (%s)\n  want %s\n  got  %s', label,
                       tostring(c:get('mask_method')), show(c:get('mask')), ok2 and show(mask) or tostring(ids))
               n_masks = n_masks + 1
            else
               t.check(not ok2, '%s: the reference could not mask (%s), we did', label, c:get('mask_error'))
            end
         end
      else
         n_refused = n_refused + 1
         t.check(not ok, '%s: transformers fails (%s), we rendered %q', label, c:get('error'), tostring(text))
         local want_msg = c:get('error'):match('^TemplateError: (.*)$')
         if want_msg and not ok then
            t.check(text:find(want_msg, 1, true) ~= nil, '%s: error %q lacks %q', label, text, want_msg)
         end
      end
   end
   tok:free()
end
t.check(n_ids >= 100 and n_masks >= 40 and n_refused >= 10, 'styles: %d texts with ids, %d masks, %d refused', n_ids, n_masks, n_refused)

-- the prefix method names a template that does not render prefix-consistently
do
   local chat = ct.new("{% for m in messages %}{{ m.content }}{% if loop.last %}<last>{% endif %}{% endfor %}", {}, 'inline')
   local tok = tokenizer.load(root .. '/chatml')
   t.raises(function() chat:encode(tok, {{role = 'user', content = 'a'}, {role = 'assistant', content = 'b'}, {role = 'user', content = 'c'}}) end,
            {'message 2', 'generation'}, 'not prefix-consistent')
   tok:free()
end

-- loading: chat_template.jinja wins; named templates; missing template
do
   local dir = os.tmpname()
   os.remove(dir)
   fs.mkdirs(dir)
   local function write(path, s) local f = assert(io.open(path, 'wb')); f:write(s); f:close() end
   write(dir .. '/tokenizer_config.json', '{"bos_token": {"content": "<s>", "special": true}, "chat_template": [{"name": "default", "template": "D{{ bos_token }}"}, {"name": "tool_use", "template": "T"}]}')
   t.check((ct.load(dir):render({})) == 'D<s>', 'the default of named templates, AddedToken-style bos_token')
   t.check((ct.load(dir, 'tool_use'):render({})) == 'T', 'a named template')
   t.raises(function() ct.load(dir, 'rag') end, {"no chat template named 'rag'", 'default, tool_use'}, 'unknown name')
   write(dir .. '/chat_template.jinja', 'J\n')
   t.check((ct.load(dir):render({})) == 'J', 'chat_template.jinja wins')
   write(dir .. '/tokenizer_config.json', '{}')
   os.remove(dir .. '/chat_template.jinja')
   t.raises(function() ct.load(dir) end, {'no chat template in'}, 'no template')
   write(dir .. '/tokenizer_config.json', '{"chat_template": "{% if %}"}')
   t.raises(function() ct.load(dir) end, {'tokenizer_config.json (chat_template)', 'line 1 col'}, 'bad template names the file')
   fs.remove_tree(dir)
end

return t.done()
