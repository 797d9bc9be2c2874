-- `fsdp-lua prepare`: text, JSON, JSONL(.gz) and YAML files -> token shards.
--
--   fsdp-lua prepare --tokenizer DIR --input PATH --output DIR [--field text]
--                    [--val-fraction 0.01] [--workers N] [--start-index I --end-index J]
--
-- Documents: a .txt file is one document; every string value of a .json
-- file (recursively) is one; each line of a .jsonl / .jsonl.gz file gives
-- its --field; every string scalar of a .yaml / .yml file is one. Files are
-- visited in sorted path order and documents numbered from 0 in that order;
-- --start-index / --end-index keep a range of them. Every k-th document
-- (k = 1 / val-fraction) goes to the validation split. Workers tokenize in
-- parallel (one process each); the shards are written in document order,
-- so the output does not depend on the number of workers:
--   DIR/train_000000.bin ...  DIR/val_000000.bin  DIR/meta.json
-- (token files: 256 int32 header, uint16 or uint32 tokens; the data loader
-- and llm.c read them). The tokenizer's end-of-text token separates documents.
local ffi = require 'ffi'
local bind = require 'fsdp.ffi'
local json = require 'fsdp.json'
local fs = require 'fsdp.fs'
local cli = require 'fsdp.cli'
local T = require 'fsdp.tensor'
local C, check = bind.C, bind.check

local M = {}

M.options = {
   {'tokenizer', 'bytes', "a tokenizer.json or its directory, or 'bytes' (one token per byte)",
    check = cli.checks.tokenizer},
   {'input', '', 'a file or a directory walked recursively', type = 'path', exists = true},
   {'output', '', 'the directory the shards go to', type = 'path'},
   {'field', 'text', 'the JSONL field holding the text'},
   {'val_fraction', 0.01, 'share of documents held out for validation (0: none)', type = 'number', min = 0, below = 1},
   {'workers', 0, 'tokenizing processes (0: one per core)', type = 'integer', min = 0},
   {'start_index', 0, 'first document kept', type = 'integer', min = 0},
   {'end_index', -1, 'one past the last document kept (-1: all)', type = 'integer', min = -1},
   {'shard_tokens', 100000000, 'tokens per training shard', type = 'integer', min = 1},
   {'append_eos', true, "separate documents with the tokenizer's end-of-text token"},
   {'format', 'text', "'text' (documents), or 'sft' (prompt/completion or chat data: fsdp-lua prepare --format sft --help)", choices = {'text', 'sft'}},
   checks = {function(o)
      if o.end_index >= 0 and o.end_index <= o.start_index then
         return string.format('--end-index %d must be above --start-index %d (or -1 for all)', o.end_index,
                              o.start_index)
      end
   end},
}

local function load_tokenizer(spec)
   if spec == 'bytes' then return require('fsdp.data').ByteTokenizer.new() end
   return require('fsdp.tokenizer').load(spec)
end

---------------------------------------------------------------------------
-- reading documents

local function read_file(path)
   local out, len = ffi.new('char*[1]'), ffi.new('int64_t[1]')
   check(C.fsdp_file_read_all(path, out, len), 'prepare')
   local s = ffi.string(out[0], len[0])
   C.fsdp_free(out[0])
   return s
end

local function strings_of(v, emit)
   if type(v) == 'string' then emit(v)
   elseif type(v) == 'table' then
      -- arrays in order, objects by sorted key, so the order is stable
      if #v > 0 then for _, x in ipairs(v) do strings_of(x, emit) end
      else
         local keys = {}
         for k in pairs(v) do keys[#keys + 1] = k end
         table.sort(keys)
         for _, k in ipairs(keys) do strings_of(v[k], emit) end
      end
   end
end

-- the string scalars of a YAML document: plain, quoted and block (| >) values
local function yaml_strings(text, emit)
   local lines = {}
   for line in (text .. '\n'):gmatch('(.-)\r?\n') do lines[#lines + 1] = line end
   local i = 1
   while i <= #lines do
      local line = lines[i]
      local indent = #line:match('^ *')
      local value = line:match('^%s*%-?%s*[^:#]-:%s+(.*)$') or line:match('^%s*%-%s+(.*)$')
      if value and not line:match('^%s*#') then
         value = value:gsub('%s+#.*$', '')
         if value:match('^[|>][-+]?%s*$') then
            local folded, block = value:sub(1, 1) == '>', {}
            i = i + 1
            while i <= #lines and (lines[i]:match('^%s*$') or #lines[i]:match('^ *') > indent) do
               block[#block + 1] = lines[i]:gsub('^%s+', '')
               i = i + 1
            end
            local s = table.concat(block, folded and ' ' or '\n')
            if s:match('%S') then emit(s) end
            i = i - 1
         elseif value:match('^".*"$') then emit((value:sub(2, -2):gsub('\\n', '\n'):gsub('\\"', '"')))
         elseif value:match("^'.*'$") then emit((value:sub(2, -2):gsub("''", "'")))
         elseif value ~= '' and not value:match('^[%[{&*!]') and not tonumber(value)
            and value ~= 'true' and value ~= 'false' and value ~= 'null' and value ~= '~' then
            emit(value)
         end
      end
      i = i + 1
   end
end

local KINDS = {txt = 'txt', json = 'json', jsonl = 'jsonl', yaml = 'yaml', yml = 'yaml'}

local function kind_of(path)
   local p = path:gsub('%.gz$', '')
   return KINDS[p:match('%.([%w]+)$') or '']
end

-- calls emit(doc) for every document of a file
function M.documents(path, field, emit)
   local kind = kind_of(path)
   local text = read_file(path)
   if kind == 'txt' then
      if #text > 0 then emit(text) end
   elseif kind == 'json' then
      local ok, v = pcall(json.decode, text)
      if not ok then error('prepare: ' .. path .. ': ' .. v, 0) end
      strings_of(v, emit)
   elseif kind == 'jsonl' then
      local n = 0
      for line in text:gmatch('[^\n]+') do
         n = n + 1
         if line:match('%S') then
            local ok, v = pcall(json.decode, line)
            if not ok then error(string.format('prepare: %s line %d: %s', path, n, v), 0) end
            local s = type(v) == 'table' and v[field]
            if type(s) ~= 'string' then
               error(string.format("prepare: %s line %d has no string field '%s' (use --field)", path, n, field), 0)
            end
            emit(s)
         end
      end
   elseif kind == 'yaml' then
      yaml_strings(text, emit)
   end
end

function M.list_files(input)
   if not fs.exists(input) then error('prepare: ' .. input .. ' does not exist', 0) end
   if not fs.is_dir(input) then return {input}, 0 end
   local files, skipped = {}, 0
   local p = io.popen('find -L ' .. fs.quote(input) .. ' -type f 2>/dev/null | LC_ALL=C sort')
   for line in p:lines() do
      if kind_of(line) then files[#files + 1] = line else skipped = skipped + 1 end
   end
   p:close()
   return files, skipped
end

---------------------------------------------------------------------------
-- chunk files handed to workers: [uint32 length][bytes] per document

local function write_chunk(path, docs)
   local f = assert(io.open(path, 'wb'))
   local len = ffi.new('uint32_t[1]')
   for _, d in ipairs(docs) do
      len[0] = #d
      f:write(ffi.string(len, 4), d)
   end
   f:close()
end

local function read_chunk(path)
   local s = fs.read(path)
   local docs, pos = {}, 1
   while pos <= #s do
      local n = ffi.cast('const uint32_t*', ffi.cast('const char*', s) + pos - 1)[0]
      docs[#docs + 1] = s:sub(pos + 4, pos + 3 + n)
      pos = pos + 4 + n
   end
   return docs
end

-- worker: tokenizes a chunk into raw int32 tokens (OUT) and reports
-- progress (documents done) in OUT.progress
function M.worker(args)
   local opt = cli.parse('prepare --worker', {{'chunk', ''}, {'out', ''}, {'tokenizer', 'bytes'}, {'eos', -1}}, args)
   local tok = load_tokenizer(opt.tokenizer)
   local docs = read_chunk(opt.chunk)
   local f = assert(io.open(opt.out, 'wb'))
   local eos = ffi.new('int32_t[1]', opt.eos)
   local last = os.clock()
   for i, d in ipairs(docs) do
      local ids = tok:encode(d)
      f:write(ffi.string(ids:cdata().data, ids:numel() * 4))
      ids:free()
      if opt.eos >= 0 then f:write(ffi.string(eos, 4)) end
      if os.clock() - last > 0.2 or i == #docs then
         local pf = io.open(opt.out .. '.progress', 'w')
         pf:write(i, '\n')
         pf:close()
         last = os.clock()
      end
   end
   f:close()
   return 0
end

---------------------------------------------------------------------------

local function progress(done, total, t0)
   local frac = total > 0 and done / total or 1
   local width = 30
   local fill = math.floor(frac * width)
   io.stdout:write(string.format('\r[%s%s] %d/%d documents %.0fs', string.rep('#', fill), string.rep('.', width - fill),
                                 done, total, os.time() - t0))
   io.stdout:flush()
end

function M.main(args)
   -- --format sft: supervised fine-tuning data (lua/fsdp/prepare_sft.lua)
   for i, a in ipairs(args) do
      if (a == '--format' and args[i + 1] == 'sft') or a == '--format=sft' then return require('fsdp.prepare_sft').main(args) end
   end
   if args[1] == '--worker' then return M.worker({unpack(args, 2)}) end
   local opt, help = cli.parse('prepare', M.options, args)
   if not opt then print(help); return 0 end
   if opt.input == '' or opt.output == '' then error('prepare: --input and --output are required', 0) end
   local tok = load_tokenizer(opt.tokenizer)
   local eos = -1
   if opt.append_eos and tok.eos_id and tok.eos_id >= 0 then eos = tok.eos_id end
   local workers = opt.workers > 0 and opt.workers or tonumber(C.fsdp_get_num_threads())
   local files, skipped = M.list_files(opt.input)
   if #files == 0 then error('prepare: no .txt, .json, .jsonl(.gz) or .yaml files under ' .. opt.input, 0) end

   -- documents in order, the kept range, the validation share
   local every = opt.val_fraction > 0 and math.max(2, math.floor(1 / opt.val_fraction + 0.5)) or 0
   local train_docs, val_docs, index, bytes = {}, {}, 0, 0
   for _, path in ipairs(files) do
      M.documents(path, opt.field, function(d)
         if index >= opt.start_index and (opt.end_index < 0 or index < opt.end_index) then
            local kept = index - opt.start_index
            if every > 0 and kept % every == every - 1 then val_docs[#val_docs + 1] = d
            else train_docs[#train_docs + 1] = d end
            bytes = bytes + #d
         end
         index = index + 1
      end)
   end
   local total = #train_docs + #val_docs
   if total == 0 then error(string.format('prepare: no documents in range %d..%d (found %d)', opt.start_index, opt.end_index, index), 0) end
   fs.mkdirs(opt.output)
   local work = opt.output .. '/.work-' .. fs.pid()
   fs.mkdirs(work)

   -- contiguous blocks of documents per worker, train then val
   local jobs = {}
   local function split(docs, split_name)
      local per = math.ceil(#docs / workers)
      for w = 0, workers - 1 do
         local block = {}
         for i = w * per + 1, math.min(#docs, (w + 1) * per) do block[#block + 1] = docs[i] end
         if #block > 0 then
            local name = string.format('%s/%s_%03d', work, split_name, w)
            write_chunk(name .. '.chunk', block)
            jobs[#jobs + 1] = {name = name, split = split_name, n = #block}
         end
      end
   end
   split(train_docs, 'train')
   split(val_docs, 'val')
   train_docs, val_docs = nil, nil

   local exe = require('fsdp.ffi').root .. '/build/fsdp-lua'
   local t0 = os.time()
   local running = {}
   for _, j in ipairs(jobs) do
      local cmd = string.format('%s prepare --worker --chunk %s --out %s --tokenizer %s --eos %d; echo $? > %s.status',
                                fs.quote(exe), fs.quote(j.name .. '.chunk'), fs.quote(j.name .. '.tokens'),
                                fs.quote(opt.tokenizer), eos, fs.quote(j.name))
      running[#running + 1] = j
      os.execute('(OMP_NUM_THREADS=1 ' .. cmd .. ') >' .. fs.quote(j.name .. '.log') .. ' 2>&1 &')
   end
   -- wait, drawing progress
   while true do
      local done, finished = 0, 0
      for _, j in ipairs(jobs) do
         local p = fs.read(j.name .. '.tokens.progress')
         done = done + (tonumber(p and p:match('%d+')) or 0)
         local st = fs.read(j.name .. '.status')
         if st then
            finished = finished + 1
            if tonumber(st) ~= 0 then
               local log = fs.read(j.name .. '.log') or ''
               fs.remove_tree(work)
               error('prepare: a tokenizing worker failed: ' .. log, 0)
            end
         end
      end
      progress(done, total, t0)
      if finished == #jobs then break end
      os.execute('sleep 0.2')
   end
   io.stdout:write('\n')

   -- concatenate in document order into shards
   local width = tok.vocab_size <= 65536 and 2 or 4
   local counts = {train = 0, val = 0}
   local shards = {train = {}, val = {}}
   local function flush(split_name, buf, n)
      if n == 0 then return end
      local name = string.format('%s_%06d.bin', split_name, #shards[split_name])
      check(C.fsdp_tokens_write(opt.output .. '/' .. name, buf, n, width, tok.vocab_size), 'prepare')
      shards[split_name][#shards[split_name] + 1] = name
      counts[split_name] = counts[split_name] + n
   end
   for _, split_name in ipairs({'train', 'val'}) do
      local cap = split_name == 'train' and opt.shard_tokens or math.huge
      local parts = {}
      for _, j in ipairs(jobs) do if j.split == split_name then parts[#parts + 1] = fs.read(j.name .. '.tokens') end end
      local all = table.concat(parts)
      local n = #all / 4
      local base = ffi.cast('const int32_t*', all)
      local first = 0
      while first < n do
         local m = math.min(cap, n - first)
         flush(split_name, base + first, m)
         first = first + m
      end
   end
   fs.remove_tree(work)
   local meta = {tokenizer = opt.tokenizer, vocab_size = tok.vocab_size, token_bytes = width, documents = total,
                 train_tokens = counts.train, val_tokens = counts.val, train = json.array(shards.train),
                 val = json.array(shards.val), input = opt.input, start_index = opt.start_index,
                 end_index = opt.end_index, files = #files, skipped_files = skipped, text_bytes = bytes,
                 eos_id = eos >= 0 and eos or json.null}
   local text = json.encode(meta, ' ')
   check(C.fsdp_file_write_atomic(opt.output .. '/meta.json', text, #text), 'prepare')
   print(string.format('prepared %d documents (%d files, %d skipped) -> %d train tokens in %d shard(s), %d val tokens; %.1f MB/s',
                       total, #files, skipped, counts.train, #shards.train, counts.val,
                       bytes / 1e6 / math.max(1, os.time() - t0)))
   return 0
end

return M
