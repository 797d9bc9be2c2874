-- Bad input, one table: every checkpoint, data, prepare and run input of
-- issue 15 and the classes around them. Each case is a command (with an
-- optional setup that damages a copy of something good) and what must come
-- of it: exit status 1 and a message naming the problem (every pattern
-- must appear), or exit 0 and a check of the result, so that nothing exits 0
-- with a wrong result. Every command runs under a timeout, so a hang fails.
--
-- Adding a case is adding a row:
--   {name = 'lr nan', cmd = train('--lr nan'), exit = 1, match = {'--lr', 'nan'}}
-- train(extra) is a tiny minGPT run; prepare(extra) and tool(extra) run the
-- sub-commands; setup(dir) prepares files in the case's own directory (DIR
-- in a command is replaced by it); check(out, dir) returns true or false, why.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local json = fsdp.json
local ffi = fsdp.ffi
local C = fsdp.C

local TIMEOUT = 120
local bin = fsdp.root .. '/build/fsdp-lua'
local root = os.tmpname()
os.remove(root)
fs.mkdirs(root)
local corpus = fsdp.root .. '/data/tinyshakespeare.txt'

local function write(path, s)
   local f = assert(io.open(path, 'wb'))
   f:write(s)
   f:close()
end
local function sh(cmd) return os.execute(cmd) == 0 end

local SMALL = '--preset gpt-nano --n-layer 1 --batch-size 2 --seq-len 16 --max-steps 2 --warmup-steps 1 --sample-tokens 0 ' ..
              '--eval-every 0 --log-every 1 --eval-batches 1 '
local function train(extra, data)
   return string.format('OMP_NUM_THREADS=1 %s recipes/train_mingpt.lua %s--data %s --run-dir DIR/run %s', bin, SMALL,
                        data or corpus, extra or '')
end
local function prepare(extra) return bin .. ' prepare --output DIR/out ' .. extra end
local function tool(extra) return bin .. ' ' .. extra end

-- a good checkpoint (steps 2 and 4) that cases copy and damage
local base = root .. '/base'
do
   local cmd = train('--max-steps 4 --checkpoint-every 2 --checkpoint-dir ' .. base .. '/ck'):gsub('DIR', base)
   local f = io.popen(cmd .. ' 2>&1; echo "status $?"')
   local out = f:read('*a')
   f:close()
   assert(out:match('status 0'), 'making the base checkpoint failed:\n' .. out)
end
local STEP = 'DIR/ck/step_00000004'
local RESUME = '--max-steps 5 --checkpoint-dir DIR/ck'

-- copy of the base checkpoint in dir, then fn(step_dir) edits it
local function with_ckpt(fn)
   return function(dir)
      sh('cp -r ' .. base .. '/ck ' .. dir .. '/ck')
      if fn then fn(dir .. '/ck/step_00000004', dir .. '/ck') end
   end
end
-- a JSON file of a step edited; resign: the manifest rewritten to match (as
-- a tool that edits consistently would leave it), so only the field checks
-- stand between the edit and a load
local function edit_json(step, name, fn, resign)
   local doc = json.decode(fs.read(step .. '/' .. name))
   local raw = fn(doc)
   local text = raw or json.encode(doc, ' ')
   write(step .. '/' .. name, text)
   if resign then
      local m = json.decode(fs.read(step .. '/manifest.json'))
      m.files[name] = {bytes = #text, crc32 = tonumber(C.fsdp_crc32(0, text, #text))}
      m.step = json.decode(fs.read(step .. '/index.json')).step
      m.checksum = nil
      local canon = json.encode(m)
      m.checksum = tonumber(C.fsdp_crc32(0, canon, #canon))
      write(step .. '/manifest.json', json.encode(m, ' '))
   end
end
local function index_edit(fn, resign) return with_ckpt(function(s) edit_json(s, 'index.json', fn, resign) end) end
local function trainer_edit(fn, resign) return with_ckpt(function(s) edit_json(s, 'trainer_state.json', fn, resign) end) end

-- token files by hand: header ints, then uint16 or uint32 tokens
local function token_file(path, head, tokens, width)
   local h = ffi.new('int32_t[256]')
   for i, v in ipairs(head) do h[i - 1] = v end
   local body = ffi.new(width == 4 and 'uint32_t[?]' or 'uint16_t[?]', math.max(#tokens, 1))
   for i, v in ipairs(tokens) do body[i - 1] = v end
   write(path, ffi.string(h, 1024) .. ffi.string(body, #tokens * (width or 2)))
end
local function some_tokens(n, vocab)
   local out = {}
   for i = 1, n do out[i] = (i * 7919) % vocab end
   return out
end

local function lines_whole(path)
   local s = fs.read(path)
   if not s then return false, path .. ' is missing' end
   if s ~= '' and s:sub(-1) ~= '\n' then return false, path .. ' ends with half a line' end
   local n = 0
   for line in s:gmatch('[^\n]+') do
      local ok = pcall(json.decode, line)
      if not ok then return false, 'a line of ' .. path .. ' is not JSON: ' .. line end
      n = n + 1
   end
   return true, n
end

local GOOD_TOKENIZER = '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}, "merges": ["a b"]}}'

local cases = {
   ---------------------------------------------------------------- checkpoints
   {name = 'index world_size 0', setup = index_edit(function(d) d.world_size = 0 end, true), cmd = train(RESUME),
    exit = 1, match = {'step_00000004/index.json', "field 'world_size' is 0"}},
   {name = 'index world_size -1', setup = index_edit(function(d) d.world_size = -1 end, true), cmd = train(RESUME),
    exit = 1, match = {'index.json', "field 'world_size' is -1"}},
   {name = 'index world_size 0, not re-signed', setup = index_edit(function(d) d.world_size = 0 end), cmd = train(RESUME),
    exit = 1, match = {'index.json', "field 'world_size'", 'manifest.json'}},
   {name = 'index world_size 2 (files of 1)', setup = index_edit(function(d) d.world_size = 2; d.ranks = 2 end, true),
    cmd = train(RESUME), exit = 1, match = {'index.json', 'rank_00001.safetensors'}},
   {name = 'index step differs from trainer step', setup = index_edit(function(d) d.step = 3 end, true), cmd = train(RESUME),
    exit = 1, match = {'trainer_state.json', "field 'step' is 4 but index.json says step 3"}},
   {name = 'trainer step', setup = trainer_edit(function(d) d.step = 9 end, true), cmd = train(RESUME),
    exit = 1, match = {'trainer_state.json', "field 'step' is 9"}},
   {name = 'trainer step unsigned', setup = trainer_edit(function(d) d.step = 9 end), cmd = train(RESUME),
    exit = 1, match = {'trainer_state.json', "field 'step'", 'checksum'}},
   {name = 'data cursor 1e15', setup = trainer_edit(function(d) d.data.cursor = 1e15 end, true), cmd = train(RESUME),
    exit = 1, match = {'trainer_state.json', "field 'data.cursor' is 1000000000000000"}},
   {name = 'data cursor -7', setup = trainer_edit(function(d) d.data.cursor = -7 end, true), cmd = train(RESUME),
    exit = 1, match = {'trainer_state.json', "field 'data.cursor' is -7"}},
   {name = 'data cursor 2.5', setup = trainer_edit(function(d) d.data.cursor = 2.5 end, true), cmd = train(RESUME),
    exit = 1, match = {'trainer_state.json', "field 'data.cursor' is 2.5"}},
   {name = 'data cursor a string', setup = trainer_edit(function(d) d.data.cursor = 'x' end, true), cmd = train(RESUME),
    exit = 1, match = {"field 'data.cursor'"}},
   {name = 'optimizer step -1', setup = trainer_edit(function(d) d.optimizer_t = -1 end, true), cmd = train(RESUME),
    exit = 1, match = {"field 'optimizer_t' is -1"}},
   {name = 'optimizer step beyond the step', setup = trainer_edit(function(d) d.optimizer_t = 50 end, true),
    cmd = train(RESUME), exit = 1, match = {"field 'optimizer_t' is 50"}},
   {name = 'trainer number 1e999', setup = trainer_edit(function(d) d.data.seed = '@@' ; return json.encode(d, ' '):gsub('"@@"', '1e999') end, true),
    cmd = train(RESUME), exit = 1, match = {"field 'data.seed'"}},
   {name = 'trainer_state.json not JSON', setup = with_ckpt(function(s) write(s .. '/trainer_state.json', '{"step": 4,') end),
    cmd = train(RESUME), exit = 1, match = {'trainer_state.json', 'json:', 'line 1'}},
   {name = 'manifest edited', setup = with_ckpt(function(s) edit_json(s, 'manifest.json', function(d) d.step = 5 end) end),
    cmd = train(RESUME), exit = 1, match = {'manifest.json', 'checksum'}},
   {name = 'manifest missing', setup = with_ckpt(function(s) os.remove(s .. '/manifest.json') end), cmd = train(RESUME),
    exit = 1, match = {'manifest.json is missing'}},
   {name = 'rank file byte flipped', setup = with_ckpt(function(s)
       local p = s .. '/rank_00000.safetensors'
       local b = fs.read(p)
       write(p, b:sub(1, 5000) .. string.char((b:byte(5001) + 1) % 256) .. b:sub(5002))
    end), cmd = train(RESUME), exit = 1, match = {'rank_00000.safetensors', 'crc32'}},
   {name = 'rank file truncated', setup = with_ckpt(function(s)
       local p = s .. '/rank_00000.safetensors'
       write(p, fs.read(p):sub(1, 3000))
    end), cmd = train(RESUME), exit = 1, match = {'rank_00000.safetensors', 'bytes'}},
   {name = 'ckpt info refuses what resume refuses', setup = index_edit(function(d) d.world_size = 0 end, true),
    cmd = tool('ckpt info DIR/ck'), exit = 1, match = {'index.json', "field 'world_size' is 0"}},
   {name = 'ckpt verify refuses what resume refuses', setup = trainer_edit(function(d) d.data.cursor = -7 end, true),
    cmd = tool('ckpt verify DIR/ck'), exit = 1, match = {"field 'data.cursor' is -7"}},
   {name = 'ckpt verify of a good checkpoint', setup = with_ckpt(), cmd = tool('ckpt verify DIR/ck'), exit = 0,
    match = {'resume would load DIR/ck/step_00000004 (step 4, named by latest)'}},
   {name = 'latest missing: the newest complete step', setup = with_ckpt(function(_, ck) os.remove(ck .. '/latest') end),
    cmd = train(RESUME), exit = 0, match = {'latest is missing: resuming from the newest complete step, step_00000004',
                                            'resumed from DIR/ck/step_00000004 (step 4'}},
   {name = 'latest missing, newest step damaged', setup = with_ckpt(function(s, ck)
       os.remove(ck .. '/latest')
       os.remove(s .. '/rank_00000.safetensors')
    end), cmd = train(RESUME .. ' --checkpoint-every 1'), exit = 0,
    match = {'resuming from the newest complete step, step_00000002', 'skipped step_00000004', 'rank_00000.safetensors is missing',
             'also holds later steps (step_00000004)', 'replacing DIR/ck/step_00000004', 'resumed from DIR/ck/step_00000002'},
    check = function(_, dir)
       local ok, err = pcall(require('fsdp.checkpoint').verify, dir .. '/ck/step_00000004')
       return ok, 'the re-saved step 4 does not verify: ' .. tostring(err)
    end},
   {name = 'latest missing, every step damaged', setup = with_ckpt(function(s, ck)
       os.remove(ck .. '/latest')
       os.remove(s .. '/index.json')
       os.remove(ck .. '/step_00000002/trainer_state.json')
    end), cmd = train(RESUME), exit = 1, match = {'none of them is complete', 'refusing to start from scratch'},
    check = function(_, dir) return fs.exists(dir .. '/ck/step_00000002/index.json'), 'a step was touched' end},
   {name = 'latest garbled', setup = with_ckpt(function(_, ck) write(ck .. '/latest', 'the fourth step\n') end), cmd = train(RESUME),
    exit = 1, match = {'latest does not name a step'}},
   {name = 'latest dangling', setup = with_ckpt(function(_, ck) write(ck .. '/latest', 'step_4\n') end), cmd = train(RESUME),
    exit = 1, match = {'latest names step_4, which does not exist'}},
   {name = 'stale temporaries pruned', setup = with_ckpt(function(_, ck)
       sh('cp -r ' .. ck .. '/step_00000004 ' .. ck .. '/.step_00000005.tmp-otherhost-1-1')
       sh('touch -d "3 hours ago" ' .. ck .. '/.step_00000005.tmp-otherhost-1-1 ' .. ck .. '/.step_00000005.tmp-otherhost-1-1/*')
       sh('cp -r ' .. ck .. '/step_00000004 ' .. ck .. '/.step_00000005.tmp-' .. require('fsdp.checkpoint').hostname() .. '-999999-1')
       sh('mkdir ' .. ck .. '/.step_00000005.tmp-otherhost-1-' .. os.time())
    end), cmd = train(RESUME), exit = 0, match = {'removing the stale temporary', 'untouched for', 'pid 999999 on this host, is gone'},
    check = function(_, dir)
       local left = {}
       for _, n in ipairs(fs.list(dir .. '/ck', true)) do if n:match('^%.') then left[#left + 1] = n end end
       -- the fresh one of another host (a live writer for all we know) stays
       return #left == 1 and left[1]:match('otherhost%-1%-%d%d%d%d%d'), 'left: ' .. table.concat(left, ' ')
    end},
   {name = 'checkpoint of another model shape', setup = with_ckpt(), cmd = train(RESUME .. ' --n-layer 2'), exit = 1,
    match = {'checkpoint', 'step_00000004 was saved from a model with 2 units, this one has 3'}},

   ---------------------------------------------------------------- data
   {name = '.bin with a wrong magic', setup = function(dir) token_file(dir .. '/d.bin', {20240521, 1, 100}, some_tokens(100, 256)) end,
    cmd = train('', 'DIR/d.bin'), exit = 1, match = {'DIR/d.bin', 'bad magic 20240521'}},
   {name = '.bin of text', setup = function(dir) write(dir .. '/d.bin', string.rep('to be or not to be ', 100)) end,
    cmd = train('', 'DIR/d.bin'), exit = 1, match = {'DIR/d.bin', 'bad magic'}},
   {name = '.bin with version 3', setup = function(dir) token_file(dir .. '/d.bin', {20240520, 3, 100}, some_tokens(100, 256)) end,
    cmd = train('', 'DIR/d.bin'), exit = 1, match = {'bad version'}},
   {name = '.bin with a huge count (v2)', setup = function(dir) token_file(dir .. '/d.bin', {20240520, 2, 2147483647, 1073741823}, {}, 4) end,
    cmd = train('', 'DIR/d.bin'), exit = 1, match = {'size mismatch', '2305843009213693951 tokens'}},
   {name = '.bin with an id beyond its vocab', setup = function(dir)
       local tok = some_tokens(2000, 200)
       tok[1500] = 250
       token_file(dir .. '/d.bin', {20240520, 1, 2000, 0, 200}, tok)
    end, cmd = train('', 'DIR/d.bin'), exit = 1, match = {'token 250 at position 1499 is not below the vocab size 200'}},
   {name = '.bin (llm.c, no vocab) with ids beyond the model', setup = function(dir)
       local tok = some_tokens(2000, 256)
       tok[1999] = 300
       token_file(dir .. '/d.bin', {20240520, 1, 2000}, tok)
    end, cmd = train('--vocab-size 256', 'DIR/d.bin'), exit = 1, match = {'vocabulary of 301 tokens but the model has 256'}},
   {name = '.bin good', setup = function(dir) token_file(dir .. '/d.bin', {20240520, 1, 2000, 0, 256}, some_tokens(2000, 256)) end,
    cmd = train('', 'DIR/d.bin'), exit = 0, match = {'final: step 2'}},
   {name = 'val_fraction 2', cmd = train('--val-fraction 2'), exit = 1, match = {'--val-fraction', '(0, 1)', 'got 2'}},
   {name = 'val_fraction -1', cmd = train('--val-fraction -1'), exit = 1, match = {'--val-fraction', 'got -1'}},

   ---------------------------------------------------------------- prepare
   {name = 'jsonl.gz cut at a line boundary', setup = function(dir)
       local lines = {}
       for i = 1, 300 do lines[i] = string.format('{"text": "document %d of the corpus"}', i) end
       write(dir .. '/in.jsonl', table.concat(lines, '\n') .. '\n')
       sh('gzip ' .. dir .. '/in.jsonl')
       local gz = fs.read(dir .. '/in.jsonl.gz')
       write(dir .. '/in.jsonl.gz', gz:sub(1, #gz - 8)) -- the trailer (crc, size) gone: every line is whole
    end, cmd = prepare('--input DIR/in.jsonl.gz'), exit = 1, match = {'in.jsonl.gz', 'gzip stream is incomplete', 'truncated'}},
   {name = 'jsonl.gz that is not gzip', setup = function(dir) write(dir .. '/in.jsonl.gz', '{"text": "plain"}\n') end,
    cmd = prepare('--input DIR/in.jsonl.gz'), exit = 1, match = {'not gzip'}},
   {name = 'jsonl.gz good', setup = function(dir)
       write(dir .. '/in.jsonl', '{"text": "one"}\n\n{"text": "two"}\n')
       sh('gzip ' .. dir .. '/in.jsonl')
    end, cmd = prepare('--input DIR/in.jsonl.gz --val-fraction 0'), exit = 0, match = {'prepared 2 documents'}},
   {name = 'jsonl bad line (numbered with blank lines)', setup = function(dir) write(dir .. '/in.jsonl', '{"text": "a"}\n\n{"text": b}\n') end,
    cmd = prepare('--input DIR/in.jsonl'), exit = 1, match = {'in.jsonl line 3'}},
   {name = 'json with a leading-zero number', setup = function(dir) write(dir .. '/in.json', '{"a": "x",\n "n": 01}') end,
    cmd = prepare('--input DIR/in.json'), exit = 1, match = {'in.json', 'leading zero', 'line 2'}},
   {name = 'yaml bad indentation', setup = function(dir) write(dir .. '/in.yaml', 'a: one\n   b: two\n') end,
    cmd = prepare('--input DIR/in.yaml'), exit = 1, match = {'in.yaml line 2'}},
   {name = 'yaml unclosed quote', setup = function(dir) write(dir .. '/in.yaml', 'a: "one\n  b: two\n') end,
    cmd = prepare('--input DIR/in.yaml'), exit = 1, match = {'in.yaml line 1', 'unterminated'}},
   {name = 'yaml key: value: value', setup = function(dir) write(dir .. '/in.yaml', 'text: a: b\n') end,
    cmd = prepare('--input DIR/in.yaml'), exit = 1, match = {'in.yaml line 1'}},
   {name = 'yaml tab indentation', setup = function(dir) write(dir .. '/in.yaml', 'a:\n\tb: c\n') end,
    cmd = prepare('--input DIR/in.yaml'), exit = 1, match = {'in.yaml line 2', 'tab'}},
   {name = 'yaml good', setup = function(dir) write(dir .. '/in.yaml', 'a: |\n  one\n  two\nb: [x, "y"]\n') end,
    cmd = prepare('--input DIR/in.yaml --val-fraction 0'), exit = 0, match = {'prepared 3 documents'}},
   {name = 'prepare --val-fraction 2', setup = function(dir) write(dir .. '/in.txt', 'text') end,
    cmd = prepare('--input DIR/in.txt --val-fraction 2'), exit = 1, match = {'--val-fraction', '[0, 1)', 'got 2'}},
   {name = 'prepare --val-fraction -1', setup = function(dir) write(dir .. '/in.txt', 'text') end,
    cmd = prepare('--input DIR/in.txt --val-fraction -1'), exit = 1, match = {'--val-fraction', 'got -1'}},
   {name = 'prepare --val-fraction nan', setup = function(dir) write(dir .. '/in.txt', 'text') end,
    cmd = prepare('--input DIR/in.txt --val-fraction nan'), exit = 1, match = {'--val-fraction', 'got nan'}},
   {name = 'prepare --shard-tokens 0', setup = function(dir) write(dir .. '/in.txt', 'text') end,
    cmd = prepare('--input DIR/in.txt --shard-tokens 0'), exit = 1, match = {'--shard-tokens', '>= 1', 'got 0'}},
   {name = 'prepare --shard-tokens 2.5', setup = function(dir) write(dir .. '/in.txt', 'text') end,
    cmd = prepare('--input DIR/in.txt --shard-tokens 2.5'), exit = 1, match = {'--shard-tokens', 'integer', 'got 2.5'}},
   {name = 'prepare --workers -2', setup = function(dir) write(dir .. '/in.txt', 'text') end,
    cmd = prepare('--input DIR/in.txt --workers -2'), exit = 1, match = {'--workers', 'got -2'}},
   {name = 'prepare --end-index before --start-index', setup = function(dir) write(dir .. '/in.txt', 'text') end,
    cmd = prepare('--input DIR/in.txt --start-index 3 --end-index 2'), exit = 1, match = {'--end-index 2'}},
   {name = 'prepare output inside input', setup = function(dir) fs.mkdirs(dir .. '/in'); write(dir .. '/in/a.txt', 'text') end,
    cmd = bin .. ' prepare --input DIR/in --output DIR/in/out', exit = 1, match = {'--output', 'inside --input'}},
   {name = 'prepare --shard-tokens 1: progress, no empty shard', setup = function(dir) write(dir .. '/in.txt', 'abcdefghij') end,
    cmd = prepare('--input DIR/in.txt --shard-tokens 1 --val-fraction 0 --append-eos false'), exit = 0,
    check = function(_, dir)
       local n = 0
       for _, name in ipairs(fs.list(dir .. '/out')) do
          if name:match('^train_') then
             n = n + 1
             if #fs.read(dir .. '/out/' .. name) ~= 1024 + 2 then return false, name .. ' is not one token' end
          end
       end
       return n == 10, n .. ' shards, want 10'
    end},
   {name = 'tokenizer.json without merges', setup = function(dir)
       write(dir .. '/tok.json', '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}')
       write(dir .. '/in.txt', 'ab')
    end, cmd = prepare('--input DIR/in.txt --tokenizer DIR/tok.json'), exit = 1, match = {'tok.json', 'model.merges', 'missing'}},
   {name = 'tokenizer id 1e9', setup = function(dir)
       write(dir .. '/tok.json', '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1000000000}, "merges": []}}')
       write(dir .. '/in.txt', 'ab')
    end, cmd = prepare('--input DIR/in.txt --tokenizer DIR/tok.json'), exit = 1, match = {'tok.json', 'id 1000000000', 'dense'}},
   {name = 'tokenizer good', setup = function(dir)
       write(dir .. '/tok.json', GOOD_TOKENIZER)
       write(dir .. '/in.txt', 'abab')
    end, cmd = prepare('--input DIR/in.txt --tokenizer DIR/tok.json --val-fraction 0'), exit = 0,
    check = function(_, dir)
       local s = fs.read(dir .. '/out/train_000000.bin')
       local body = s and s:sub(1025) or ''
       return body == '\2\0\2\0\3\0', 'tokens ' .. body:gsub('.', function(c) return c:byte() .. ' ' end)
    end},

   ---------------------------------------------------------------- run
   {name = 'metrics.jsonl on a full disk', setup = function(dir)
       fs.mkdirs(dir .. '/run')
       sh('ln -s /dev/full ' .. dir .. '/run/metrics.jsonl')
    end, cmd = train(), exit = 1, match = {'DIR/run/metrics.jsonl', 'No space left on device', '--metrics-best-effort'}},
   {name = 'metrics.jsonl on a full disk, best effort', setup = function(dir)
       fs.mkdirs(dir .. '/run')
       sh('ln -s /dev/full ' .. dir .. '/run/metrics.jsonl')
    end, cmd = train('--metrics-best-effort'), exit = 0, match = {'TRAINING GOES ON WITHOUT DIR/run/metrics.jsonl', 'final: step 2'},
    check = function(out)
       local _, n = out:gsub('No space left on device', '')
       return n == 1, 'the warning should come once, came ' .. n .. ' times'
    end},
   -- (the output goes through a pipe: the limit is on regular files)
   {name = 'file size limit while writing metrics',
    cmd = '( trap "" XFSZ; ulimit -f 2; ' .. train('--max-steps 60') .. ' ) 2>&1 | cat; exit ${PIPESTATUS[0]}', exit = 1,
    match = {'DIR/run/metrics.jsonl'},
    -- the limit refuses a whole write (EFBIG) or cuts one short, as the
    -- line lengths (the numbers in them) fall: either is named
    check = function(out, dir)
       if not (out:find('File too large', 1, true) or out:find('the write was cut short', 1, true)) then
          return false, 'the error names neither EFBIG (File too large) nor a write cut short:\n' .. out
       end
       return lines_whole(dir .. '/run/metrics.jsonl')
    end},
   {name = 'half a metrics line from an earlier run', setup = function(dir)
       fs.mkdirs(dir .. '/run')
       write(dir .. '/run/metrics.jsonl', '{"step":1,"loss":5.5}\n{"step":2,"lo')
    end, cmd = train(), exit = 0, match = {'metrics.jsonl ended with an incomplete line', 'cut off'},
    check = function(_, dir)
       local ok, n = lines_whole(dir .. '/run/metrics.jsonl')
       return ok and n >= 3, tostring(n)
    end},
}

local failed_names = {}
for i, c in ipairs(cases) do
   local dir = string.format('%s/case%02d', root, i)
   fs.mkdirs(dir)
   local ok, err = true, nil
   if c.setup then ok, err = pcall(c.setup, dir) end
   if t.check(ok, '%s: setup failed: %s', c.name, tostring(err)) then
      local cmd = c.cmd:gsub('DIR', dir)
      local t0 = os.time()
      local status, out = t.sh('timeout ' .. TIMEOUT .. ' bash -c ' .. fs.quote(cmd))
      local good = t.check(status ~= 124, '%s: timed out after %d s', c.name, TIMEOUT)
      good = t.check(status == c.exit, '%s: exit status %d, want %d:\n%s', c.name, status, c.exit, out) and good
      for _, p in ipairs(c.match or {}) do
         p = p:gsub('DIR', dir)
         good = t.check(out:find(p, 1, true), '%s: the output lacks %q:\n%s', c.name, p, out) and good
      end
      if c.check then
         local cok, why = c.check(out, dir)
         good = t.check(cok, '%s: %s', c.name, tostring(why)) and good
      end
      if not good then failed_names[#failed_names + 1] = c.name end
      print(string.format('%-4s %-55s exit %d  %ds', good and 'ok' or 'FAIL', c.name, status, os.time() - t0))
   end
end
print(string.format('%d cases, %d failed%s', #cases, #failed_names,
                    #failed_names > 0 and (': ' .. table.concat(failed_names, '; ')) or ''))
if t.failures == 0 then os.execute('rm -rf ' .. root) else print('kept ' .. root) end
return t.done()
