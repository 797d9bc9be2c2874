-- fsdp.tokenizer against the `tokenizers` library's own answers
-- (tests/golden/tokenizers, made by tests/golden/make_tokenizer_fixtures.py):
-- ids with and without special tokens, decoded strings, special ids, a
-- directory with a tokenizer_config.json, use as a data source, errors.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local Tokenizer = require 'fsdp.tokenizer'
local json = require 'fsdp.json'
local fs = require 'fsdp.fs'
local data = require 'fsdp.data'

local golden = fsdp.root .. '/tests/golden/tokenizers'
local tmp = os.tmpname()
os.remove(tmp)
fs.mkdirs(tmp)

local function same(a, b)
   if #a ~= #b then return false end
   for i = 1, #a do if a[i] ~= b[i] then return false end end
   return true
end

local function ids_of(tensor)
   local out = {}
   for i = 1, tensor:numel() do out[i] = tensor:get_flat(i - 1) end
   return out
end

-- every 3rd torture case of each fixture (the C test covers them all)
for _, name in ipairs({'gpt2like', 'llama3like', 'llama2like'}) do
   local dir = golden .. '/' .. name
   local exp = assert(json.read_file(dir .. '/expected.json'))
   local tok = Tokenizer.load(dir)                        -- a directory
   local tok2 = Tokenizer.load(dir .. '/tokenizer.json')  -- the file itself
   t.check(tok.vocab_size == exp.vocab_size and tok2.vocab_size == exp.vocab_size,
           '%s: vocab_size %d, want %d', name, tok.vocab_size, exp.vocab_size)
   local sp = exp.special
   t.check(tok.bos_id == sp.bos and tok.eos_id == sp.eos and tok.pad_id == nil,
           '%s: bos %s eos %s pad %s', name, tostring(tok.bos_id), tostring(tok.eos_id), tostring(tok.pad_id))
   t.check(tok.add_bos == (sp.n_prefix > 0) and tok.add_eos == (sp.n_suffix > 0), '%s: add_bos / add_eos', name)
   for i = 1, #exp.cases, 3 do
      local c = exp.cases[i]
      local ids = tok:encode(c.text)
      local got = ids_of(ids)
      t.check(ids.dtype == 'i32' and same(got, c.ids), '%s case %d (%q): ids {%s}, want {%s}', name, i,
              c.text:sub(1, 40), table.concat(got, ','), table.concat(c.ids, ','))
      local sp_ids = tok:encode(c.text, true)
      t.check(same(ids_of(sp_ids), c.ids_special), '%s case %d: ids with special tokens', name, i)
      t.check(tok:decode(sp_ids) == c.decoded, '%s case %d: decode(tensor) %q, want %q', name, i,
              tok:decode(sp_ids), c.decoded)
      t.check(tok:decode(c.ids_special, true) == c.decoded_skip, '%s case %d: decode(table, skip_special)', name, i)
      t.check(tok2:decode(c.ids) == c.decoded_plain, '%s case %d: decode without special tokens', name, i)
   end
   for _, pair in ipairs(exp.tokens) do
      t.check(tok:id_to_token(pair[1]) == pair[2] and tok:token_to_id(pair[2]) == pair[1],
              '%s: token %d <-> %q', name, pair[1], pair[2])
   end
   t.check(tok:token_to_id('no such token here') == nil and tok:id_to_token(tok.vocab_size) == nil,
           '%s: unknown tokens give nil', name)
   -- a long text goes through the retry path of the output buffer untouched
   local long = string.rep('a b ', 5000)
   t.check(tok:decode(tok:encode(long)) == long, '%s: long text round trip', name)
   tok:free()
   t.raises(function() tok:encode('x') end, 'used after :free()', name .. ': use after free')
end

-- tokenizer_config.json in the directory names eos / pad
do
   local dir = tmp .. '/llama3'
   fs.mkdirs(dir)
   os.execute(string.format('cp %s/llama3like/tokenizer.json %s/', golden, dir))
   local f = io.open(dir .. '/tokenizer_config.json', 'w')
   f:write('{"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>", "special": true},',
           ' "pad_token": null, "chat_template": "{{ messages }}"}')
   f:close()
   local tok = Tokenizer.load(dir)
   t.check(tok.eos_id == tok:token_to_id('<|eot_id|>') and tok.eos_id ~= nil and tok.bos_id == 0 and tok.pad_id == nil,
           'tokenizer_config.json: eos %s bos %s', tostring(tok.eos_id), tostring(tok.bos_id))
   t.check(tok:is_special(tok.eos_id) and not tok:is_special(tok:encode('the'):get_flat(0)), 'is_special')
end

-- as a data source, like data.ByteTokenizer
do
   local path = tmp .. '/text.txt'
   local text = string.rep('First Citizen:\nBefore we proceed any further, hear me speak.\n\n', 20)
   local f = io.open(path, 'w'); f:write(text); f:close()
   local tok = Tokenizer.load(golden .. '/gpt2like')
   local src = data.open(path, tok)
   t.check(src.vocab_size == tok.vocab_size and src.n == tok:encode(text):numel() and src.n < #text / 2,
           'data.open with a tokenizer: %d tokens', src.n)
end

-- errors
t.raises(function() Tokenizer.load(tmp .. '/nowhere') end, {'cannot open', tmp .. '/nowhere'}, 'missing file')
do
   local bad = tmp .. '/bad.json'
   local f = io.open(bad, 'w'); f:write('{"model": {"type": "BPE",\n "vocab": {"a": 0,}}}'); f:close()
   t.raises(function() Tokenizer.load(bad) end, {bad, 'invalid JSON', 'line 2'}, 'malformed JSON')
   f = io.open(bad, 'w')
   f:write('{"pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}')
   f:close()
   t.raises(function() Tokenizer.load(bad) end, {'pre_tokenizer.type', 'Whitespace', 'supported: ByteLevel'},
            'unsupported pre-tokenizer')
end
local tok = Tokenizer.load(golden .. '/llama2like')
t.raises(function() tok:encode(42) end, 'encode wants a string', 'encode of a number')
t.raises(function() tok:encode('ok \255 not') end, 'not valid UTF-8 at byte 3', 'invalid UTF-8')
t.raises(function() tok:decode({1, 2, 100000}) end, 'outside the vocabulary', 'decode of a bad id')
t.raises(function() tok:decode('1 2') end, 'decode wants a table of ids or a tensor', 'decode of a string')
t.check(tok:decode(fsdp.from_table({1, 393, 499}, {3}, 'i64'), true) == tok:decode({393, 499}),
        'decode of an i64 tensor')

fs.remove_tree(tmp)
return t.done()
