-- `fsdp-lua prepare`: text, JSON, JSONL(.gz) and YAML files -> token shards.
--
--   fsdp-lua prepare --tokenizer DIR --input PATH --output DIR [--field text]
--                    [--val-fraction 0.01] [--workers N] [--start-index I --end-index J]
--
-- Documents: a .txt file is one document; every string value of a .json
-- file (recursively) is one; each line of a .jsonl / .jsonl.gz file gives
-- its --field; every string scalar of a .yaml / .yml file is one. Files are
-- visited in sorted path order and documents numbered from 0 in that order;
-- --start-index / --end-index keep a range of them. A share --val-fraction
-- of them (every k-th when k = 1 / val-fraction is whole) goes to the
-- validation split. Every option is range-checked first; YAML and JSON are
-- read strictly (errors name the file and line). Workers tokenize in
-- parallel (one process each); the shards are written in document order,
-- so the output does not depend on the number of workers:
--   DIR/train_000000.bin ...  DIR/val_000000.bin  DIR/meta.json
-- (token files: 256 int32 header, uint16 or uint32 tokens; the data loader
-- and llm.c read them). The tokenizer's end-of-text token separates documents.
local ffi = require 'ffi'
local bind = require 'fsdp.ffi'
local json = require 'fsdp.json'
local yaml = require 'fsdp.yaml'
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
      for line in (text .. '\n'):gmatch('(.-)\r?\n') do
         n = n + 1 -- every line counts, so the numbers are the file's
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
      local ok, docs = pcall(yaml.decode, text, path)
      if not ok then error('prepare: ' .. docs, 0) end
      for _, d in ipairs(docs) do yaml.strings(d, emit) end
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
   local f, err = io.open(path, 'wb')
   if not f then error('prepare: cannot create ' .. path .. ': ' .. tostring(err), 0) end
   local len = ffi.new('uint32_t[1]')
   for _, d in ipairs(docs) do
      if #d >= 2 ^ 32 then error(string.format('prepare: a document of %d bytes is too long (4 GiB at most)', #d), 0) end
      len[0] = #d
      local ok, werr = f:write(ffi.string(len, 4), d)
      if not ok then f:close(); error('prepare: writing ' .. path .. ': ' .. tostring(werr), 0) end
   end
   local ok, cerr = f:close()
   if not ok then error('prepare: writing ' .. path .. ': ' .. tostring(cerr), 0) end
end

-- The work of `workers` processes: each split's records (lists = {{name,
-- records}, ...}, in order) in contiguous blocks, one per worker, each
-- written by write_chunk(path, block) to WORK/<split>_<w>.chunk. Returns
-- the jobs {name (the path without .chunk), split, n}.
function M.worker_jobs(work, workers, lists, write_chunk_fn)
   local jobs = {}
   for _, l in ipairs(lists) do
      local split_name, recs = l[1], l[2]
      local per = math.ceil(#recs / workers)
      for w = 0, workers - 1 do
         local block = {}
         for i = w * per + 1, math.min(#recs, (w + 1) * per) do block[#block + 1] = recs[i] end
         if #block > 0 then
            local name = string.format('%s/%s_%03d', work, split_name, w)
            write_chunk_fn(name .. '.chunk', block)
            jobs[#jobs + 1] = {name = name, split = split_name, n = #block}
         end
      end
   end
   return jobs
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
   local f, err = io.open(opt.out, 'wb')
   if not f then error('prepare: cannot create ' .. opt.out .. ': ' .. tostring(err), 0) end
   local function put(s)
      local ok, e = f:write(s)
      if not ok then error('prepare: writing ' .. opt.out .. ': ' .. tostring(e), 0) end
   end
   local eos = ffi.new('int32_t[1]', opt.eos)
   local last = os.clock()
   for i, d in ipairs(docs) do
      local ids = tok:encode(d)
      put(ffi.string(ids:cdata().data, ids:numel() * 4))
      ids:free()
      if opt.eos >= 0 then put(ffi.string(eos, 4)) end
      if os.clock() - last > 0.2 or i == #docs then
         local pf = io.open(opt.out .. '.progress', 'w')
         pf:write(i, '\n')
         pf:close()
         last = os.clock()
      end
   end
   local ok, cerr = f:close()
   if not ok then error('prepare: writing ' .. opt.out .. ': ' .. tostring(cerr), 0) end
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

local function is_int(v) return v == math.floor(v) and math.abs(v) < 2 ^ 53 end

-- every option in range before anything is read or written; errors name the
-- option, the value and what is accepted
function M.check_options(opt)
   local function bad(name, v, want)
      error(string.format('prepare: --%s %s: %s', name:gsub('_', '-'), tostring(v), want), 0)
   end
   if opt.input == '' or opt.output == '' then error('prepare: --input and --output are required', 0) end
   if opt.tokenizer == '' then bad('tokenizer', "''", "wants a tokenizer.json, its directory, or 'bytes'") end
   if opt.field == '' then bad('field', "''", 'wants the name of the JSONL field that holds the text') end
   if not (opt.val_fraction >= 0 and opt.val_fraction < 1) then
      bad('val_fraction', opt.val_fraction, 'must be in [0, 1) (the share of documents held out)')
   end
   if not (is_int(opt.workers) and opt.workers >= 0 and opt.workers <= 1024) then
      bad('workers', opt.workers, 'must be an integer in [0, 1024] (0: one per core)')
   end
   if not (is_int(opt.start_index) and opt.start_index >= 0) then bad('start_index', opt.start_index, 'must be an integer >= 0') end
   if not (is_int(opt.end_index) and (opt.end_index == -1 or opt.end_index > opt.start_index)) then
      bad('end_index', opt.end_index, string.format('must be -1 (all) or an integer > --start-index %d', opt.start_index))
   end
   if not (is_int(opt.shard_tokens) and opt.shard_tokens >= 1 and opt.shard_tokens < 2 ^ 40) then
      bad('shard_tokens', opt.shard_tokens, 'must be an integer >= 1 (tokens per training shard)')
   end
   -- the output inside the input would read its own meta.json next time
   local function abs(p)
      local h = io.popen('realpath -m ' .. fs.quote(p) .. ' 2>/dev/null')
      local r = h:read('*l')
      h:close()
      return r or p
   end
   local ai, ao = abs(opt.input), abs(opt.output)
   if fs.is_dir(opt.input) and (ao == ai or ao:sub(1, #ai + 1) == ai .. '/') then
      bad('output', opt.output, 'is inside --input ' .. opt.input .. ' (its files would be read as input next time)')
   end
end

-- document i (from 0) of the kept range goes to validation when the count
-- of validation documents, i * f rounded down, steps up at it: exactly f of
-- them over any long run, every 1/f-th when 1/f is a whole number
local function is_val(i, f)
   if f <= 0 then return false end
   return math.floor((i + 1) * f + 1e-9) > math.floor(i * f + 1e-9)
end
M.is_val = is_val

function M.main(args)
   -- --format sft: supervised fine-tuning data (lua/fsdp/prepare_sft.lua)
   for i, a in ipairs(args) do
      if (a == '--format' and args[i + 1] == 'sft') or a == '--format=sft' then return require('fsdp.prepare_sft').main(args) end
   end
   if args[1] == '--worker' then return M.worker({unpack(args, 2)}) end
   local opt, help = cli.parse('prepare', M.options, args)
   if not opt then print(help); return 0 end
   M.check_options(opt)
   local tok = load_tokenizer(opt.tokenizer)
   local eos = -1
   if opt.append_eos and tok.eos_id and tok.eos_id >= 0 then eos = tok.eos_id end
   local workers = opt.workers > 0 and opt.workers or tonumber(C.fsdp_get_num_threads())
   local files, skipped = M.list_files(opt.input)
   if #files == 0 then error('prepare: no .txt, .json, .jsonl(.gz) or .yaml files under ' .. opt.input, 0) end

   -- documents in order, the kept range, the validation share
   local train_docs, val_docs, index, bytes = {}, {}, 0, 0
   for _, path in ipairs(files) do
      M.documents(path, opt.field, function(d)
         if index >= opt.start_index and (opt.end_index < 0 or index < opt.end_index) then
            local kept = index - opt.start_index
            if is_val(kept, opt.val_fraction) then val_docs[#val_docs + 1] = d
            else train_docs[#train_docs + 1] = d end
            bytes = bytes + #d
         end
         index = index + 1
      end)
   end
   local total = #train_docs + #val_docs
   if total == 0 then error(string.format('prepare: no documents in range %d..%d (found %d)', opt.start_index, opt.end_index, index), 0) end
   local n_train = #train_docs
   fs.mkdirs(opt.output)
   -- the shards of an earlier prepare into the same directory would be read
   -- along with the new ones: they go first, said
   local old = {}
   for _, name in ipairs(fs.list(opt.output)) do
      if name:match('^train_%d+%.bin$') or name:match('^val_%d+%.bin$') or name == 'meta.json' then old[#old + 1] = name end
   end
   if #old > 0 then
      print(string.format('prepare: replacing %d file(s) of an earlier prepare in %s', #old, opt.output))
      for _, name in ipairs(old) do os.remove(opt.output .. '/' .. name) end
   end
   local work = opt.output .. '/.work-' .. fs.pid()
   fs.mkdirs(work)

   -- contiguous blocks of documents per worker, train then val
   local jobs = M.worker_jobs(work, workers, {{'train', train_docs}, {'val', val_docs}}, write_chunk)
   train_docs, val_docs = nil, nil

   local exe = require('fsdp.ffi').root .. '/build/fsdp-lua'
   local t0 = os.time()
   for _, j in ipairs(jobs) do
      -- the status is written under another name and renamed, so a reader
      -- never sees it half-written; the subshell's pid tells a worker that
      -- died without a status from one still running
      local cmd = string.format('%s prepare --worker --chunk %s --out %s --tokenizer %s --eos %d; echo $? > %s.status.tmp; mv %s.status.tmp %s.status',
                                fs.quote(exe), fs.quote(j.name .. '.chunk'), fs.quote(j.name .. '.tokens'),
                                fs.quote(opt.tokenizer), eos, fs.quote(j.name), fs.quote(j.name), fs.quote(j.name))
      local h = io.popen('(OMP_NUM_THREADS=1 ' .. cmd .. ') >' .. fs.quote(j.name .. '.log') .. ' 2>&1 & echo $!')
      j.pid = tonumber(h:read('*l'))
      h:close()
   end
   -- wait, drawing progress
   while true do
      local done, finished = 0, 0
      for _, j in ipairs(jobs) do
         local p = fs.read(j.name .. '.tokens.progress')
         done = done + (tonumber(p and p:match('%d+')) or 0)
         local st = fs.read(j.name .. '.status')
         if not st and j.pid and C.fsdp_pid_alive(j.pid) == 0 then
            st = fs.read(j.name .. '.status') or 'died'
         end
         if st then
            finished = finished + 1
            if tonumber(st) ~= 0 then
               local log = fs.read(j.name .. '.log') or ''
               fs.remove_tree(work)
               error(string.format('prepare: a tokenizing worker (%s) failed (%s): %s', j.name:match('[^/]+$'),
                                   st == 'died' and 'it died without a status' or ('exit ' .. st:gsub('%s+$', '')), log), 0)
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
      for _, j in ipairs(jobs) do
         if j.split == split_name then
            local part = fs.read(j.name .. '.tokens')
            if not part or #part % 4 ~= 0 then
               fs.remove_tree(work)
               error(string.format('prepare: the worker output %s.tokens is %s', j.name, part and 'not whole tokens' or 'missing'), 0)
            end
            parts[#parts + 1] = part
         end
      end
      local all = table.concat(parts)
      if split_name == 'train' and #all == 0 then
         fs.remove_tree(work)
         error(string.format('prepare: the %d training document(s) hold no tokens (empty texts%s)', n_train,
                             eos < 0 and ', no end-of-text token' or ''), 0)
      end
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
