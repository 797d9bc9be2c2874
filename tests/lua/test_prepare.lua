-- Data preparation: a folder of .txt, .json, .jsonl, .jsonl.gz and .yaml
-- files becomes token shards plus a validation split; documents come in
-- sorted file order, the output is the same for 1 and 3 workers, example
-- ranges slice it, the loader trains from the directory, and bad input names
-- the file and line.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local ffi = fsdp.ffi

local dir = os.tmpname()
os.remove(dir)
local src = dir .. '/in'
fs.mkdirs(src .. '/sub')
local function write(path, s) local f = assert(io.open(path, 'wb')); f:write(s); f:close() end
write(src .. '/a.txt', 'First document, plain text.\nTwo lines.')
write(src .. '/sub/b.jsonl', '{"text": "jsonl one"}\n{"text": "jsonl two", "id": 2}\n')
write(src .. '/d.json', '{"z": "last key", "a": ["first", {"b": "nested"}], "n": 3}')
write(src .. '/e.yaml', 'title: a yaml title\nbody: |\n  block one\n  block two\nlist:\n  - "quoted item"\n  - 42\n')
write(src .. '/notes.md', 'skipped: not a known extension')
os.execute('gzip -c ' .. src .. '/sub/b.jsonl > ' .. src .. '/sub/c.jsonl.gz')
-- the expected documents in order: a.txt, d.json (keys sorted: a..., n, z), e.yaml, sub/b.jsonl, sub/c.jsonl.gz
local docs = {'First document, plain text.\nTwo lines.', 'first', 'nested', 'last key',
              'a yaml title', 'block one\nblock two\n', 'quoted item',
              'jsonl one', 'jsonl two', 'jsonl one', 'jsonl two'}

local bin = fsdp.root .. '/build/fsdp-lua'
local function prepare(out, extra)
   return t.sh(bin .. ' prepare --input ' .. src .. ' --output ' .. out .. ' --val-fraction 0.25 ' .. (extra or ''))
end

local function tokens_of(path)
   local tf = ffi.new('fsdp_token_file')
   assert(fsdp.C.fsdp_tokens_open(tf, path) == 0, fsdp.ffi.string(fsdp.C.fsdp_last_error()))
   local n = tonumber(tf.n_tokens)
   local buf = ffi.new('int32_t[?]', math.max(n, 1))
   fsdp.C.fsdp_tokens_read(tf, buf, 0, n)
   local chars = {}
   for i = 0, n - 1 do chars[#chars + 1] = string.char(buf[i]) end
   fsdp.C.fsdp_tokens_close(tf)
   return table.concat(chars)
end

local st, out = prepare(dir .. '/one', '--workers 1')
t.check(st == 0, 'prepare failed:\n%s', out)
local meta = fsdp.json.read_file(dir .. '/one/meta.json')
t.check(meta and meta.documents == #docs, 'documents: %s, want %d', meta and meta.documents, #docs)
t.check(meta and meta.skipped_files == 1, 'the .md file is skipped')
-- every 4th document (index 3, 7) is validation
local want_train, want_val = {}, {}
for i, d in ipairs(docs) do
   if (i - 1) % 4 == 3 then want_val[#want_val + 1] = d else want_train[#want_train + 1] = d end
end
t.check(tokens_of(dir .. '/one/train_000000.bin') == table.concat(want_train), 'train tokens are the train documents in order')
t.check(tokens_of(dir .. '/one/val_000000.bin') == table.concat(want_val), 'val tokens are every 4th document')

-- 3 workers: identical files
st, out = prepare(dir .. '/three', '--workers 3')
t.check(st == 0, 'prepare with 3 workers failed:\n%s', out)
for _, name in ipairs({'train_000000.bin', 'val_000000.bin'}) do
   t.check(fs.read(dir .. '/one/' .. name) == fs.read(dir .. '/three/' .. name), '%s differs between 1 and 3 workers', name)
end

-- example range and sharding
st, out = prepare(dir .. '/range', '--start-index 1 --end-index 5 --val-fraction 0 --shard-tokens 10')
t.check(st == 0, 'prepare with a range failed:\n%s', out)
local joined = ''
for _, name in ipairs(fs.list(dir .. '/range')) do
   if name:match('^train_') then joined = joined .. tokens_of(dir .. '/range/' .. name) end
end
t.check(joined == table.concat({docs[2], docs[3], docs[4], docs[5]}), 'range 1..5 keeps documents 1-4: got %q', joined)
t.check(#fs.list(dir .. '/range') > 3, 'shards of 10 tokens make several files')

-- training reads the directory (train shards, val shards as the split)
local big = dir .. '/big'
fs.mkdirs(big)
os.execute('cp ' .. fsdp.root .. '/data/tinyshakespeare.txt ' .. big .. '/play.txt 2>/dev/null || cp /usr/share/games/fortunes/cookie ' .. big .. '/play.txt')
for i = 1, 40 do write(string.format('%s/scene%02d.txt', big, i), string.rep('Enter a player. ', 20 + i)) end
st, out = t.sh(bin .. ' prepare --input ' .. big .. ' --output ' .. dir .. '/bigout --val-fraction 0.05')
t.check(st == 0, 'prepare big failed:\n%s', out)
st, out = t.sh(bin .. ' recipes/train_mingpt.lua --data ' .. dir .. '/bigout --max-steps 3 --batch-size 2 --seq-len 16 ' ..
               '--preset gpt-nano --sample-tokens 0 --log-every 1 --run-dir ' .. dir .. '/run')
t.check(st == 0 and out:find('val loss', 1, true), 'training from a prepared directory failed:\n%s', out)

-- bad input
write(src .. '/sub/bad.jsonl', '{"text": "fine"}\n{"text": broken}\n')
st, out = prepare(dir .. '/bad')
t.check(st == 1 and out:find('bad.jsonl line 2', 1, true), 'a malformed JSONL line names file and line:\n%s', out)
os.remove(src .. '/sub/bad.jsonl')
write(src .. '/sub/nofield.jsonl', '{"body": "no text field"}\n')
st, out = prepare(dir .. '/bad2')
t.check(st == 1 and out:find("nofield.jsonl line 1 has no string field 'text'", 1, true), 'a missing field is named:\n%s', out)
st, out = t.sh(bin .. ' prepare --input ' .. dir .. '/nowhere --output ' .. dir .. '/x')
t.check(st == 1 and out:find('does not exist', 1, true), 'a missing input is reported:\n%s', out)

os.execute('rm -rf ' .. dir)
return t.done()
