-- `fsdp-lua prepare --format sft`: chat records (messages, and prompt /
-- completion as message lists) rendered with the model's chat template and
-- plain prompt / completion records become token shards, loss masks and
-- sample starts that equal what fsdp.chat_template gives for each record
-- (and, for a fixture conversation, transformers' ids and mask); the output
-- is the same for 1 and 3 workers; shards never cut a sample; --max-length
-- truncates or drops, counted in meta.json; the validation split takes every
-- k-th record; the loader trains from the directory; and every kind of bad
-- input is an error naming the file and the line.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local ct = require 'fsdp.chat_template'
local sft = require 'fsdp.sft_data'
local data = require 'fsdp.data'
local ffi, C = fsdp.ffi, fsdp.C

local golden = fsdp.root .. '/tests/golden/templates'
local CHATML = golden .. '/chatml'
local bin = fsdp.root .. '/build/fsdp-lua'

local dir = os.tmpname()
os.remove(dir)
fs.mkdirs(dir .. '/in')
local function write(path, s) local f = assert(io.open(path, 'wb')); f:write(s); f:close() end
local function read(path) local f = assert(io.open(path, 'rb')); local s = f:read('*a'); f:close(); return s end

local function prepare(input, out, extra, tokenizer)
   return t.sh(string.format('%s prepare --format sft --tokenizer %s --input %s --output %s %s', bin,
                             tokenizer or CHATML, input, out, extra or ''))
end

-- the samples of a prepared split: {{ids = {...}, mask = {...}}, ...} in order
local function samples_of(out, split)
   local ds = sft.open(out)
   local sp = ds[split]
   local res = {}
   if not sp then return res end
   for i = 0, sp.n_samples - 1 do
      local n = sp.len[i]
      local tok, mask = ffi.new('int32_t[?]', n), ffi.new('uint8_t[?]', n)
      sp:read(i, 0, n, tok, mask)
      local s = {ids = {}, mask = {}}
      for k = 0, n - 1 do s.ids[k + 1], s.mask[k + 1] = tok[k], mask[k] end
      res[#res + 1] = s
   end
   return res
end

local function same(a, b)
   if #a ~= #b then return false end
   for i = 1, #a do if a[i] ~= b[i] then return false end end
   return true
end

---------------------------------------------------------------------------
-- a mixed file: chat, conversational prompt/completion, plain text

local records = {
   '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]}',
   '{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}',
   '{"prompt": "Translate: cat ->", "completion": " chat"}',
   '{"prompt": [{"role": "user", "content": "Q?"}], "completion": [{"role": "assistant", "content": "A."}]}',
   '{"messages": [{"role": "user", "content": "caf\\u00e9 \\ud83d\\ude00"}, {"role": "assistant", "content": "ok", "weight": 1.0}], "tools": [{"name": "f"}]}',
}
local lines = {}
for i = 1, 12 do lines[i] = records[(i - 1) % #records + 1] end
write(dir .. '/in/a.jsonl', table.concat(lines, '\n', 1, 7) .. '\n\n')          -- a blank line is skipped
write(dir .. '/in/b.jsonl', table.concat(lines, '\r\n', 8, 12))                 -- CRLF, no final newline
os.execute('gzip -c ' .. dir .. '/in/b.jsonl > ' .. dir .. '/in/c.jsonl.gz')
write(dir .. '/in/notes.txt', 'skipped')

local st, out = prepare(dir .. '/in', dir .. '/one', '--workers 1 --val-fraction 0.25')
t.check(st == 0, 'prepare failed:\n%s', out)
local st3, out3 = prepare(dir .. '/in', dir .. '/three', '--workers 3 --val-fraction 0.25')
t.check(st3 == 0, 'prepare with 3 workers failed:\n%s', out3)
for _, name in ipairs(fs.list(dir .. '/one')) do
   if name:match('%.bin$') then
      t.check(read(dir .. '/one/' .. name) == read(dir .. '/three/' .. name), '%s differs between 1 and 3 workers', name)
   end
end
local meta = fsdp.json.read_file(dir .. '/one/meta.json')
-- 17 records (7 + 5 + 5): every 4th to val
t.check(meta.format == 'sft' and meta.records == 17 and meta.train_samples == 13 and meta.val_samples == 4,
        'meta counts: %s records, %s train, %s val', meta.records, meta.train_samples, meta.val_samples)
t.check(meta.chat_records == 14 and meta.text_records == 3 and meta.skipped_files == 1 and meta.mask == 'auto'
        and meta.template_has_generation == false,
        'meta kinds: %s chat %s text %s skipped %s', meta.chat_records, meta.text_records, meta.skipped_files, meta.mask)

-- each sample equals chat_template's encoding of its record
do
   local chat = ct.load(CHATML)
   local tok = require('fsdp.tokenizer').load(CHATML)
   local order = {}
   for i = 1, 7 do order[#order + 1] = lines[i] end
   for _ = 1, 2 do for i = 8, 12 do order[#order + 1] = lines[i] end end -- b.jsonl, then c.jsonl.gz
   local want = {train = {}, val = {}}
   for i, line in ipairs(order) do
      local rec = ct.decode_json(line)
      local ids, mask
      if rec:get('messages') then
         ids, mask = chat:encode(tok, rec:get('messages'), {tools = rec:get('tools')})
      elseif type(rec:get('prompt')) == 'string' then
         local all = tok:encode(rec:get('prompt') .. rec:get('completion'), true)
         local p = tok:encode(rec:get('prompt'), true)
         ids, mask = {}, {}
         local shared = true
         for k = 0, all:numel() - 1 do
            ids[k + 1] = all:ptr()[k]
            shared = shared and k < p:numel() and p:ptr()[k] == ids[k + 1]
            mask[k + 1] = shared and 0 or 1
         end
         all:free(); p:free()
         ids[#ids + 1], mask[#mask + 1] = tok.eos_id, 1 -- --append-eos
      else
         local msgs = {rec:get('prompt')[1], rec:get('completion')[1]}
         ids, mask = chat:encode(tok, msgs, {learn = {2}})
      end
      table.insert(want[(i % 4 == 0) and 'val' or 'train'], {ids = ids, mask = mask})
   end
   for _, split in ipairs({'train', 'val'}) do
      local got = samples_of(dir .. '/one', split)
      t.check(#got == #want[split], '%s: %d samples, want %d', split, #got, #want[split])
      for i = 1, math.min(#got, #want[split]) do
         t.check(same(got[i].ids, want[split][i].ids), '%s sample %d: ids differ', split, i)
         t.check(same(got[i].mask, want[split][i].mask), '%s sample %d: mask differs', split, i)
      end
   end
   tok:free()
end

-- a fixture conversation through prepare equals transformers' ids and mask
for _, style in ipairs({'chatml_generation', 'llama2', 'qwen25'}) do
   local exp = ct.decode_json(read(golden .. '/' .. style .. '/expected.json'))
   local recs, want = {}, {}
   for _, c in ipairs(exp:get('cases')) do
      local learned = false
      for _, m in ipairs(c:get('mask') or {}) do learned = learned or tostring(m) == '1' end
      if learned then -- (prepare refuses conversations with nothing to learn)
         local rec = ct.object()
         rec:set('messages', c:get('messages'))
         if c:get('tools') then rec:set('tools', c:get('tools')) end
         recs[#recs + 1] = ct.encode_json(rec)
         want[#want + 1] = c
      end
   end
   fs.mkdirs(dir .. '/fx_' .. style)
   write(dir .. '/fx_' .. style .. '/x.jsonl', table.concat(recs, '\n'))
   local s2, o2 = prepare(dir .. '/fx_' .. style, dir .. '/fxout_' .. style, '--val-fraction 0', golden .. '/' .. style)
   t.check(s2 == 0, '%s: prepare failed:\n%s', style, o2)
   local got = samples_of(dir .. '/fxout_' .. style, 'train')
   local n_ok = 0
   for i, c in ipairs(want) do
      local ids, mask = {}, {}
      for k, v in ipairs(c:get('ids')) do ids[k] = tonumber(tostring(v)) end
      for k, v in ipairs(c:get('mask')) do mask[k] = tonumber(tostring(v)) end
      if got[i] and same(got[i].ids, ids) and same(got[i].mask, mask) then n_ok = n_ok + 1 end
   end
   t.check(#want >= 3 and n_ok == #want, '%s: %d of %d prepared samples equal transformers\' ids and mask', style, n_ok, #want)
end

---------------------------------------------------------------------------
-- plain prompt / completion with byte tokens: the mask is exact

do
   fs.mkdirs(dir .. '/plain')
   write(dir .. '/plain/p.jsonl', '{"q": "abc", "a": "de"}\n{"q": "", "a": "xyz"}\n{"q": "12345678", "a": "90"}\n{"q": "1234567", "a": "89"}\n')
   local s2, o2 = prepare(dir .. '/plain', dir .. '/plainout',
                          '--val-fraction 0 --prompt-field q --completion-field a --max-length 8', 'bytes')
   t.check(s2 == 0, 'plain prepare failed:\n%s', o2)
   local got = samples_of(dir .. '/plainout', 'train')
   local m = fsdp.json.read_file(dir .. '/plainout/meta.json')
   -- "12345678"+"90" is 10 bytes: truncated to 8, nothing learned left: dropped; "1234567"+"89" cut to 8: kept
   t.check(#got == 3 and m.truncated == 2 and m.dropped_no_targets == 1 and m.dropped_overlong == 0,
           'plain: %d samples, %s truncated, %s without targets', #got, m.truncated, m.dropped_no_targets)
   t.check(got[1] and same(got[1].ids, {97, 98, 99, 100, 101}) and same(got[1].mask, {0, 0, 0, 1, 1}), 'abc|de mask')
   t.check(got[2] and same(got[2].mask, {1, 1, 1}), 'an empty prompt: everything learned')
   t.check(got[3] and #got[3].ids == 8 and same(got[3].mask, {0, 0, 0, 0, 0, 0, 0, 1}), 'a truncated sample keeps its head')
   local s3, o3 = prepare(dir .. '/plain', dir .. '/plaindrop',
                          '--val-fraction 0 --prompt-field q --completion-field a --max-length 8 --overlong drop', 'bytes')
   local md = fsdp.json.read_file(dir .. '/plaindrop/meta.json')
   t.check(s3 == 0 and md.dropped_overlong == 2 and md.train_samples == 2 and md.truncated == 0,
           'drop: %s dropped, %s kept\n%s', md and md.dropped_overlong, md and md.train_samples, o3)
   t.check(o3:find('2 dropped', 1, true) ~= nil, 'the report says what was dropped:\n%s', o3)
end

-- a Llama 2 style tokenizer (tests/golden/tokenizers/llama2like): <s> first, </s> appended and learned
do
   fs.mkdirs(dir .. '/sp')
   write(dir .. '/sp/p.jsonl', '{"prompt": "The king", "completion": " is dead."}\n')
   local s2, o2 = prepare(dir .. '/sp', dir .. '/spout', '--val-fraction 0', fsdp.root .. '/tests/golden/tokenizers/llama2like')
   t.check(s2 == 0, 'sp prepare failed:\n%s', o2)
   local got = samples_of(dir .. '/spout', 'train')[1]
   t.check(got and got.ids[1] == 1 and got.mask[1] == 0 and got.ids[#got.ids] == 2 and got.mask[#got.mask] == 1,
           'llama2 plain sample: <s> ... </s> (learned)')
end

---------------------------------------------------------------------------
-- the loader trains from the directory: targets are learned tokens

do
   local ds = data.open(dir .. '/one')
   t.check(ds.sft == true, 'data.open recognises an SFT directory')
   local L = data.loader({source = ds, batch_size = 2, seq_len = 64, seed = 1})
   local x, y, extra = L:next()
   t.check(extra and extra.n_targets > 0 and extra.doc_ids and extra.positions, 'the loader yields targets and packing info')
   local v = data.loader({source = ds, batch_size = 1, seq_len = 64, split = 'val'})
   t.check(v:num_sequences() >= 1, 'the val split has rows')
end

---------------------------------------------------------------------------
-- bad input: an error naming the file and the line, never a crash

local bad = {
   {'invalid JSON', '{"messages": [', 'invalid JSON'},
   {'not an object', '[1, 2]', 'must be a JSON object'},
   {'no fields', '{"text": "x"}', "no 'messages' field, nor 'prompt' and 'completion'"},
   {'messages a string', '{"messages": "hi"}', "'messages' must be a list of messages, got a string"},
   {'messages empty', '{"messages": []}', "'messages' is an empty list"},
   {'message not object', '{"messages": ["hi"]}', 'messages[0] must be an object'},
   {'no role', '{"messages": [{"content": "x"}]}', "messages[0] has no 'role'"},
   {'role number', '{"messages": [{"role": 1, "content": "x"}]}', 'messages[0].role must be a string, got a number'},
   {'unknown role', '{"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}', "messages[1]: unknown role 'bot'"},
   {'content number', '{"messages": [{"role": "user", "content": 5}]}', 'messages[0].content must be a string, got a number'},
   {'no content', '{"messages": [{"role": "user"}]}', "messages[0] has no 'content'"},
   {'empty assistant', '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}', 'messages[1] is an empty completion'},
   {'nothing to learn', '{"messages": [{"role": "user", "content": "q"}]}', 'no message to learn'},
   {'empty completion', '{"prompt": "q", "completion": ""}', "'completion' is an empty completion"},
   {'completion type', '{"prompt": "q", "completion": 3}', "'completion' must be a string like 'prompt', got a number"},
   {'prompt type', '{"prompt": true, "completion": "a"}', "'prompt' must be a string or a list of messages, got a boolean"},
   {'invalid UTF-8', '{"prompt": "caf\233", "completion": "x"}', 'invalid UTF-8 at byte 16'},
   {'tools type', '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": "x"}', "'tools' must be a list"},
}
for i, b in ipairs(bad) do
   local d = string.format('%s/bad%02d', dir, i)
   fs.mkdirs(d)
   write(d .. '/data.jsonl', '{"prompt": "fine", "completion": "record"}\n' .. b[2] .. '\n')
   local s2, o2 = prepare(d, d .. '/out')
   t.check(s2 ~= 0 and o2:find('data.jsonl line 2: ', 1, true) and o2:find(b[3], 1, true),
           '%s: want an error with "data.jsonl line 2: ... %s", got status %s:\n%s', b[1], b[3], s2, o2)
   t.check(not o2:find('traceback', 1, true) and not o2:find('Segmentation', 1, true), '%s: no crash', b[1])
end
-- a template error (Llama 2 refuses roles that do not alternate) names the line, from a worker
do
   local d = dir .. '/badtemplate'
   fs.mkdirs(d)
   write(d .. '/t.jsonl', '{"prompt": "fine", "completion": "x"}\n\n{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}\n')
   local s2, o2 = prepare(d, d .. '/out', '--workers 2', golden .. '/llama2')
   t.check(s2 ~= 0 and o2:find('t.jsonl line 3: the chat template', 1, true) and o2:find('Conversation roles must alternate', 1, true),
           'template error: %s', o2)
   -- chat data without a template
   write(d .. '/t.jsonl', '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]}\n')
   local s3, o3 = prepare(d, d .. '/out2', '', 'bytes')
   t.check(s3 ~= 0 and o3:find('chat data needs --tokenizer DIR with a chat template', 1, true), 'bytes + chat: %s', o3)
   -- a .json file must hold a list
   write(d .. '/t.jsonl', '')
   write(d .. '/x.json', '{"messages": []}')
   local s4, o4 = prepare(d, d .. '/out3')
   t.check(s4 ~= 0 and o4:find('x.json: a .json file must hold a list of records', 1, true), '.json object: %s', o4)
   write(d .. '/x.json', '[{"prompt": "a", "completion": "b"}, {"prompt": "a"}]')
   local s5, o5 = prepare(d, d .. '/out4')
   t.check(s5 ~= 0 and o5:find('x.json record 2:', 1, true), '.json record: %s', o5)
   local s6, o6 = prepare(d, d .. '/out5', '--mask genration')
   t.check(s6 ~= 0 and o6:find('--mask must be one of', 1, true), 'bad option value: %s', o6)
end

fs.remove_tree(dir)
return t.done()
