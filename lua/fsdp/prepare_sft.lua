-- `fsdp-lua prepare --format sft`: supervised fine-tuning data -> token
-- shards with a loss mask and sample boundaries (fsdp.sft_data reads them).
--
--   fsdp-lua prepare --format sft --tokenizer MODEL_DIR --input data.jsonl --output DIR
--                    [--max-length 2048 --overlong truncate|drop] [--val-fraction 0.01] [--workers N]
--
-- Input: .jsonl / .jsonl.gz files (a file or a directory walked in sorted
-- order; .json files holding a list of records too), one record per line:
--
--   {"prompt": "...", "completion": "..."}       plain text; the tokens of the
--                                                 completion are learned
--   {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
--                                                 chat, rendered with the model's
--                                                 chat template; the assistant
--                                                 messages are learned
--   {"prompt": [messages...], "completion": [messages...]}
--                                                 chat; the completion's messages
--                                                 are learned
--
-- (--prompt-field, --completion-field, --messages-field, --tools-field
-- rename the fields; a record's "tools" list is passed to the template.)
--
-- Chat records are rendered as transformers' apply_chat_template renders them
-- and tokenized in one piece; the loss mask marks the tokens of the learned
-- messages as fsdp.chat_template's encode() describes ({% generation %}
-- blocks when the template has them and the assistant messages are learned,
-- else prefix rendering; --mask picks).
-- Plain records are tokenized as prompt .. completion with the tokenizer's
-- special tokens (--add-special), the end-of-text token appended
-- (--append-eos, learned), and the completion's tokens marked.
--
-- Samples longer than --max-length tokens are truncated (their first
-- max-length tokens kept) or dropped (--overlong); both are counted and
-- reported, as are samples left without a learned token. Every k-th record
-- (k = 1 / --val-fraction) goes to the validation split. Output:
--   DIR/train_000000.bin ...         tokens (llm.c format, uint16 / uint32)
--   DIR/train_000000.mask.bin ...    one u8 per token, 1 = learned
--   DIR/train_000000.docs.bin ...    the start of every sample in the shard (int64)
--   DIR/val_000000.{bin,mask.bin,docs.bin}  DIR/meta.json ("format": "sft")
-- A shard never cuts a sample; the output does not depend on --workers.
-- Bad input (invalid JSON, missing fields, wrong types, unknown roles, empty
-- completions, template errors) is an error naming the file and the line.
local ffi = require 'ffi'
local bind = require 'fsdp.ffi'
local json = require 'fsdp.json'
local fs = require 'fsdp.fs'
local cli = require 'fsdp.cli'
local ct = require 'fsdp.chat_template'
local sft = require 'fsdp.sft_data'
local C, check = bind.C, bind.check

local M = {}

M.options = {
   {'format', 'sft', "'sft' here ('text' is fsdp-lua prepare's documents)", choices = {'sft'}},
   {'tokenizer', '', "a model or tokenizer directory (tokenizer.json; the chat template from chat_template.jinja or tokenizer_config.json), or 'bytes' for plain prompt/completion data"},
   {'input', '', 'a .jsonl(.gz) / .json file or a directory walked recursively'},
   {'output', '', 'the directory the shards go to'},
   {'prompt_field', 'prompt', 'the field holding the prompt'},
   {'completion_field', 'completion', 'the field holding the completion'},
   {'messages_field', 'messages', 'the field holding a chat (a list of {role, content})'},
   {'tools_field', 'tools', "the field holding a record's tool definitions (passed to the template as tools)"},
   {'chat_template', '', "a .jinja file or tokenizer_config.json to use instead of the tokenizer directory's template"},
   {'template_name', 'default', 'which of several named chat templates'},
   {'mask', 'auto', "loss mask of chat data: 'generation' ({% generation %} blocks), 'prefix' (prefix rendering) or 'auto'", choices = {'auto', 'generation', 'prefix'}},
   {'learn_roles', 'assistant', 'comma-separated roles whose messages are learned'},
   {'max_length', 0, 'longest sample in tokens (0: no limit)'},
   {'overlong', 'truncate', "a sample longer than --max-length: 'truncate' or 'drop'", choices = {'truncate', 'drop'}},
   {'append_eos', true, "plain prompt/completion: end the completion with the tokenizer's end-of-text token (learned)"},
   {'add_special', true, "plain prompt/completion: the tokenizer's special tokens around the text (Llama 2's <s>)"},
   {'val_fraction', 0.01, 'share of records held out for validation'},
   {'workers', 0, 'tokenizing processes (0: one per core)'},
   {'start_index', 0, 'first record kept'},
   {'end_index', -1, 'one past the last record kept (-1: all)'},
   {'shard_tokens', 100000000, 'tokens per training shard (shards end at sample boundaries)'},
}

-- the roles a chat message may have
M.ROLES = {system = true, developer = true, user = true, assistant = true, tool = true, ipython = true, ['function'] = true}
local ROLE_LIST = 'system, developer, user, assistant, tool, ipython, function'

local function fail(where, fmt, ...)
   error('prepare: ' .. where .. ': ' .. string.format(fmt, ...), 0)
end

local function kind_name(v)
   if v == json.null then return 'null' end
   if ct.is_object(v) then return 'an object' end
   if ct.is_number(v) then return 'a number' end
   if type(v) == 'table' then return 'a list' end
   if type(v) == 'string' then return 'a string' end
   return 'a ' .. type(v)
end

local function is_list(v) return type(v) == 'table' and not ct.is_object(v) and not ct.is_number(v) end

---------------------------------------------------------------------------
-- records

-- checks a chat (a list of messages) named `what`; learned: set of indexes or nil (by role)
local function check_messages(msgs, what, where, roles, learned)
   if not is_list(msgs) then fail(where, "'%s' must be a list of messages, got %s", what, kind_name(msgs)) end
   if #msgs == 0 then fail(where, "'%s' is an empty list", what) end
   local n_learned = 0
   for i, m in ipairs(msgs) do
      local w = string.format('%s[%d]', what, i - 1)
      if not ct.is_object(m) then fail(where, '%s must be an object with role and content, got %s', w, kind_name(m)) end
      local role, content = m:get('role'), m:get('content')
      if role == nil then fail(where, "%s has no 'role'", w) end
      if type(role) ~= 'string' then fail(where, '%s.role must be a string, got %s', w, kind_name(role)) end
      if not M.ROLES[role] then fail(where, "%s: unknown role '%s' (known: %s)", w, role, ROLE_LIST) end
      local calls = m:get('tool_calls')
      local has_calls = is_list(calls) and #calls > 0
      if content == nil or content == json.null then
         if not has_calls then fail(where, "%s has no 'content'", w) end
      elseif type(content) ~= 'string' then
         fail(where, '%s.content must be a string, got %s', w, kind_name(content))
      end
      local learn
      if learned then learn = learned[i] else learn = roles[role] end
      if learn then
         if (type(content) ~= 'string' or content == '') and not has_calls then
            fail(where, '%s is an empty completion (a %s message without content)', w, role)
         end
         n_learned = n_learned + 1
      end
   end
   return n_learned
end

-- a decoded record -> a sample description {kind = 'text'|'chat', ...}; errors name where
function M.read_record(rec, opt, where)
   if not ct.is_object(rec) then fail(where, 'a record must be a JSON object, got %s', kind_name(rec)) end
   local roles = {}
   for r in opt.learn_roles:gmatch('[^,%s]+') do roles[r] = true end
   local tools = rec:get(opt.tools_field)
   if tools == json.null then tools = nil end
   if tools ~= nil and not is_list(tools) then fail(where, "'%s' must be a list of tool definitions, got %s", opt.tools_field, kind_name(tools)) end
   local msgs = rec:get(opt.messages_field)
   if msgs ~= nil then
      if check_messages(msgs, opt.messages_field, where, roles) == 0 then
         fail(where, "'%s' has no message to learn (roles learned: %s)", opt.messages_field, opt.learn_roles)
      end
      return {kind = 'chat', messages = msgs, tools = tools}
   end
   local p, c = rec:get(opt.prompt_field), rec:get(opt.completion_field)
   if p == nil or c == nil then
      fail(where, "the record has no '%s' field, nor '%s' and '%s' (use --messages-field, --prompt-field, --completion-field)",
           opt.messages_field, opt.prompt_field, opt.completion_field)
   end
   if type(p) == 'string' then
      if type(c) ~= 'string' then fail(where, "'%s' must be a string like '%s', got %s", opt.completion_field, opt.prompt_field, kind_name(c)) end
      if c == '' then fail(where, "'%s' is an empty completion", opt.completion_field) end
      return {kind = 'text', prompt = p, completion = c}
   end
   if is_list(p) then
      if not is_list(c) then fail(where, "'%s' must be a list of messages like '%s', got %s", opt.completion_field, opt.prompt_field, kind_name(c)) end
      check_messages(p, opt.prompt_field, where, roles, {})
      local all = {}
      for i = 1, #c do all[i] = true end
      check_messages(c, opt.completion_field, where, roles, all)
      local messages, learn = json.array({}), {}
      for _, m in ipairs(p) do messages[#messages + 1] = m end
      for _, m in ipairs(c) do messages[#messages + 1] = m; learn[#learn + 1] = #messages end
      return {kind = 'chat', messages = messages, learn = learn, tools = tools}
   end
   fail(where, "'%s' must be a string or a list of messages, got %s", opt.prompt_field, kind_name(p))
end

-- the byte offset (1-based) of the first invalid UTF-8 sequence, or nil
local function bad_utf8(s)
   local i, n = 1, #s
   while i <= n do
      local c = s:byte(i)
      local len = c < 0x80 and 1 or (c >= 0xc2 and c < 0xe0) and 2 or (c >= 0xe0 and c < 0xf0) and 3
                  or (c >= 0xf0 and c < 0xf5) and 4 or 0
      if len == 0 or i + len - 1 > n then return i end
      for k = 1, len - 1 do
         local d = s:byte(i + k)
         if d < 0x80 or d > 0xbf then return i end
      end
      i = i + len
   end
   return nil
end

-- calls emit(text, file, line) for every record of a file
function M.records(path, emit)
   local out, len = ffi.new('char*[1]'), ffi.new('int64_t[1]')
   check(C.fsdp_file_read_all(path, out, len), 'prepare')
   local text = ffi.string(out[0], len[0])
   C.fsdp_free(out[0])
   if path:gsub('%.gz$', ''):match('%.json$') then
      local bad = bad_utf8(text)
      if bad then fail(path, 'invalid UTF-8 at byte %d', bad) end
      local ok, v = pcall(ct.decode_json, text)
      if not ok then fail(path, 'invalid JSON: %s', v) end
      if not is_list(v) then fail(path, 'a .json file must hold a list of records, got %s', kind_name(v)) end
      for i, rec in ipairs(v) do emit(ct.encode_json(rec), path, i, 'record') end
      return
   end
   local n = 0
   for line in (text .. (text:sub(-1) == '\n' and '' or '\n')):gmatch('(.-)\n') do
      n = n + 1
      line = line:gsub('\r$', '')
      if line:match('%S') then
         local bad = bad_utf8(line)
         if bad then fail(string.format('%s line %d', path, n), 'invalid UTF-8 at byte %d of the line', bad) end
         emit(line, path, n, 'line')
      end
   end
end

---------------------------------------------------------------------------
-- one sample: ids and mask

local function load_tokenizer(spec)
   if spec == 'bytes' then return require('fsdp.data').ByteTokenizer.new() end
   return require('fsdp.tokenizer').load(spec)
end

-- what turning records into tokens needs, built once per process
function M.context(opt)
   local cx = {opt = opt, tok = load_tokenizer(opt.tokenizer)}
   cx.roles = {}
   for r in opt.learn_roles:gmatch('[^,%s]+') do cx.roles[#cx.roles + 1] = r end
   return cx
end

function M.chat(cx)
   if cx.chat then return cx.chat end
   local opt = cx.opt
   if opt.chat_template ~= '' then
      cx.chat = ct.load(opt.chat_template, opt.template_name)
      if opt.chat_template:match('%.jinja$') and opt.tokenizer ~= 'bytes' and fs.is_dir(opt.tokenizer) and not next(cx.chat.tokens) then
         cx.chat.tokens = ct.special_tokens(opt.tokenizer)
      end
   elseif opt.tokenizer == 'bytes' then
      error('prepare: chat data needs --tokenizer DIR with a chat template (or --chat-template FILE)', 0)
   else
      cx.chat = ct.load(opt.tokenizer, opt.template_name)
   end
   return cx.chat
end

local function list_of(t)
   local n = t:numel()
   local p = t:ptr()
   local out = {}
   for i = 0, n - 1 do out[i + 1] = p[i] end
   if t.free then t:free() end
   return out
end

-- a sample description -> ids, mask (Lua lists)
function M.encode(cx, s, where)
   if s.kind == 'chat' then
      local chat = M.chat(cx)
      local ok, ids, mask = pcall(chat.encode, chat, cx.tok, s.messages,
                                  {tools = s.tools, method = cx.opt.mask, roles = cx.roles, learn = s.learn})
      if not ok then fail(where, 'the chat template: %s', ids) end
      return ids, mask
   end
   local tok, opt = cx.tok, cx.opt
   local ids = list_of(tok:encode(s.prompt .. s.completion, opt.add_special))
   local pids = list_of(tok:encode(s.prompt, opt.add_special))
   -- the prompt's tokens are the ones the whole text shares with the prompt alone;
   -- tokens the tokenizer puts after the text (n_after) are not the prompt's
   local keep = #pids - (opt.add_special and (tok.n_after or 0) or 0)
   local k = 0
   while k < keep and k < #ids and ids[k + 1] == pids[k + 1] do k = k + 1 end
   local mask = {}
   for i = 1, #ids do mask[i] = i > k and 1 or 0 end
   if opt.append_eos and tok.eos_id and ids[#ids] ~= tok.eos_id then
      ids[#ids + 1] = tok.eos_id
      mask[#mask + 1] = 1
   end
   return ids, mask
end

---------------------------------------------------------------------------
-- chunks handed to workers: [u32 file][u32 line][u32 length][bytes] per record

local u32 = ffi.new('uint32_t[3]')

local function write_chunk(path, recs)
   local f = assert(io.open(path, 'wb'))
   for _, r in ipairs(recs) do
      u32[0], u32[1], u32[2] = r.file, r.line, #r.text
      f:write(ffi.string(u32, 12), r.text)
   end
   f:close()
end

local function read_chunk(path)
   local s = fs.read(path)
   local recs, pos = {}, 1
   while pos <= #s do
      local h = ffi.cast('const uint32_t*', ffi.cast('const char*', s) + pos - 1)
      local n = h[2]
      recs[#recs + 1] = {file = h[0], line = h[1], text = s:sub(pos + 12, pos + 11 + n)}
      pos = pos + 12 + n
   end
   return recs
end

local function where_of(files, r)
   local f = files[r.file]
   return string.format('%s %s %d', f.path, f.unit, r.line)
end

-- worker: a chunk -> OUT.tokens (int32), OUT.mask (u8), OUT.lens (int32 per
-- sample), OUT.stats (JSON); OUT.error on failure
function M.worker(args)
   local specs = {{'chunk', ''}, {'out', ''}, {'files', ''}}
   for _, s in ipairs(M.options) do specs[#specs + 1] = s end
   local opt = cli.parse('prepare --format sft --worker', specs, args)
   local ok, err = pcall(function()
      local files = json.decode(fs.read(opt.files))
      local cx = M.context(opt)
      local recs = read_chunk(opt.chunk)
      local ft, fm, fl = assert(io.open(opt.out .. '.tokens', 'wb')), assert(io.open(opt.out .. '.mask', 'wb')),
                         assert(io.open(opt.out .. '.lens', 'wb'))
      local stats = {samples = 0, truncated = 0, dropped_overlong = 0, dropped_no_targets = 0, tokens = 0, learned = 0}
      local last = os.clock()
      for i, r in ipairs(recs) do
         local where = where_of(files, r)
         local rec = ct.decode_json(r.text)
         local ok2, ids, mask = pcall(M.encode, cx, M.read_record(rec, opt, where), where)
         if not ok2 then
            if tostring(ids):find(where, 1, true) then error(ids, 0) end
            fail(where, '%s', tostring(ids))
         end
         local n = #ids
         local keep = true
         if opt.max_length > 0 and n > opt.max_length then
            if opt.overlong == 'drop' then keep = false; stats.dropped_overlong = stats.dropped_overlong + 1
            else n = opt.max_length; stats.truncated = stats.truncated + 1 end
         end
         local targets = 0
         for k = 2, n do targets = targets + mask[k] end
         if keep and targets == 0 then keep = false; stats.dropped_no_targets = stats.dropped_no_targets + 1 end
         if keep then
            local tb, mb = ffi.new('int32_t[?]', n), ffi.new('uint8_t[?]', n)
            for k = 1, n do tb[k - 1], mb[k - 1] = ids[k], mask[k] end
            ft:write(ffi.string(tb, n * 4))
            fm:write(ffi.string(mb, n))
            u32[0] = n
            fl:write(ffi.string(u32, 4))
            stats.samples = stats.samples + 1
            stats.tokens = stats.tokens + n
            stats.learned = stats.learned + targets
         end
         if os.clock() - last > 0.2 or i == #recs then
            local pf = io.open(opt.out .. '.progress', 'w')
            pf:write(i, '\n')
            pf:close()
            last = os.clock()
         end
      end
      ft:close(); fm:close(); fl:close()
      local sf = io.open(opt.out .. '.stats', 'w')
      sf:write(json.encode(stats))
      sf:close()
   end)
   if not ok then
      local f = io.open(opt.out .. '.error', 'w')
      f:write(tostring(err))
      f:close()
      return 1
   end
   return 0
end

---------------------------------------------------------------------------

local function progress(done, total, t0)
   local frac = total > 0 and done / total or 1
   local fill = math.floor(frac * 30)
   io.stdout:write(string.format('\r[%s%s] %d/%d records %.0fs', string.rep('#', fill), string.rep('.', 30 - fill),
                                 done, total, os.time() - t0))
   io.stdout:flush()
end

local function worker_args(opt)
   local out = {}
   for _, s in ipairs(M.options) do
      local v = opt[s[1]]
      out[#out + 1] = '--' .. s[1]:gsub('_', '-') .. '=' .. fs.quote(tostring(v))
   end
   return table.concat(out, ' ')
end

function M.main(args)
   for i, a in ipairs(args) do
      if a == '--worker' then
         local rest = {}
         for k, b in ipairs(args) do if k ~= i then rest[#rest + 1] = b end end
         return M.worker(rest)
      end
   end
   local opt, help = cli.parse('prepare --format sft', M.options, args)
   if not opt then print(help); return 0 end
   if opt.input == '' or opt.output == '' or opt.tokenizer == '' then
      error('prepare: --input, --output and --tokenizer are required', 0)
   end
   if opt.max_length < 0 then error('prepare: --max-length must be >= 0', 0) end
   local cx = M.context(opt) -- the tokenizer loads (or fails) before any work
   local all, skipped = require('fsdp.prepare').list_files(opt.input)
   local files = {}
   for _, path in ipairs(all) do
      local p = path:gsub('%.gz$', '')
      if p:match('%.jsonl$') or p:match('%.json$') then files[#files + 1] = path else skipped = skipped + 1 end
   end
   if #files == 0 then error('prepare: no .jsonl, .jsonl.gz or .json files under ' .. opt.input, 0) end

   -- every record, checked here so that bad input stops before any work
   local every = opt.val_fraction > 0 and math.max(2, math.floor(1 / opt.val_fraction + 0.5)) or 0
   local splits = {train = {}, val = {}}
   local file_info, index, kinds = {}, 0, {chat = 0, text = 0}
   for fi, path in ipairs(files) do
      M.records(path, function(text, _, line, unit)
         file_info[fi] = {path = path, unit = unit}
         if index >= opt.start_index and (opt.end_index < 0 or index < opt.end_index) then
            local where = string.format('%s %s %d', path, unit, line)
            local ok, rec = pcall(ct.decode_json, text)
            if not ok then fail(where, 'invalid JSON: %s', rec) end
            local s = M.read_record(rec, opt, where)
            kinds[s.kind] = kinds[s.kind] + 1
            local kept = index - opt.start_index
            local split = (every > 0 and kept % every == every - 1) and 'val' or 'train'
            table.insert(splits[split], {file = fi, line = line, text = text})
         end
         index = index + 1
      end)
      file_info[fi] = file_info[fi] or {path = path, unit = 'line'}
   end
   local total = #splits.train + #splits.val
   if total == 0 then error(string.format('prepare: no records in range %d..%d (found %d)', opt.start_index, opt.end_index, index), 0) end
   if kinds.chat > 0 then M.chat(cx) end -- the template compiles (or fails) before the workers start

   fs.mkdirs(opt.output)
   local work = opt.output .. '/.work-' .. fs.pid()
   fs.mkdirs(work)
   local files_json = work .. '/files.json'
   local fj = assert(io.open(files_json, 'w'))
   fj:write(json.encode(file_info))
   fj:close()
   local workers = opt.workers > 0 and opt.workers or tonumber(C.fsdp_get_num_threads())
   local jobs = require('fsdp.prepare').worker_jobs(work, workers, {{'train', splits.train}, {'val', splits.val}},
                                                    write_chunk)
   splits = nil

   local exe = bind.root .. '/build/fsdp-lua'
   local t0 = os.time()
   for _, j in ipairs(jobs) do
      local cmd = string.format('%s prepare --format sft --worker --chunk %s --out %s --files %s %s; echo $? > %s.status',
                                fs.quote(exe), fs.quote(j.name .. '.chunk'), fs.quote(j.name), fs.quote(files_json),
                                worker_args(opt), fs.quote(j.name))
      os.execute('(OMP_NUM_THREADS=1 ' .. cmd .. ') >' .. fs.quote(j.name .. '.log') .. ' 2>&1 &')
   end
   while true do
      local done, finished = 0, 0
      for _, j in ipairs(jobs) do
         local p = fs.read(j.name .. '.progress')
         done = done + (tonumber(p and p:match('%d+')) or 0)
         local st = fs.read(j.name .. '.status')
         if st then
            finished = finished + 1
            if tonumber(st) ~= 0 then
               -- let the others finish their file writes, then report the first error
               local msg = fs.read(j.name .. '.error') or ('a tokenizing worker failed: ' .. (fs.read(j.name .. '.log') or ''))
               os.execute('sleep 0.3')
               fs.remove_tree(work)
               error(msg, 0)
            end
         end
      end
      progress(done, total, t0)
      if finished == #jobs then break end
      os.execute('sleep 0.2')
   end
   io.stdout:write('\n')

   -- shards in record order, cut at sample boundaries
   local tok = cx.tok
   local width = tok.vocab_size <= 65536 and 2 or 4
   local stats = {train = {}, val = {}}
   local shards = {train = {}, val = {}}
   local totals = {truncated = 0, dropped_overlong = 0, dropped_no_targets = 0}
   for _, split in ipairs({'train', 'val'}) do
      local tparts, mparts, lens = {}, {}, {}
      local st = {samples = 0, tokens = 0, learned = 0}
      for _, j in ipairs(jobs) do
         if j.split == split then
            tparts[#tparts + 1] = fs.read(j.name .. '.tokens')
            mparts[#mparts + 1] = fs.read(j.name .. '.mask')
            local l = fs.read(j.name .. '.lens')
            local p = ffi.cast('const int32_t*', l)
            for i = 0, #l / 4 - 1 do lens[#lens + 1] = p[i] end
            local s = json.decode(fs.read(j.name .. '.stats'))
            for k in pairs(totals) do totals[k] = totals[k] + s[k] end
            st.learned = st.learned + s.learned
         end
      end
      local tokens, masks = table.concat(tparts), table.concat(mparts)
      tparts, mparts = nil, nil
      local base = ffi.cast('const int32_t*', tokens)
      local cap = split == 'train' and opt.shard_tokens or math.huge
      local first, at = 1, 0 -- first sample of the shard, its token offset
      while first <= #lens do
         local last, n = first, lens[first]
         while last < #lens and n + lens[last + 1] <= cap do last = last + 1; n = n + lens[last] end
         local name = string.format('%s_%06d', split, #shards[split])
         local starts = ffi.new('int64_t[?]', last - first + 1)
         local off = 0
         for i = first, last do starts[i - first] = off; off = off + lens[i] end
         check(C.fsdp_tokens_write(opt.output .. '/' .. name .. '.bin', base + at, n, width, tok.vocab_size), 'prepare')
         sft.write_mask(opt.output .. '/' .. name .. '.mask.bin', masks:sub(at + 1, at + n))
         sft.write_docs(opt.output .. '/' .. name .. '.docs.bin', starts, last - first + 1)
         shards[split][#shards[split] + 1] = name .. '.bin'
         st.samples = st.samples + (last - first + 1)
         st.tokens = st.tokens + n
         at, first = at + n, last + 1
      end
      stats[split] = st
   end
   fs.remove_tree(work)
   local chat = cx.chat
   local meta = {format = 'sft', tokenizer = opt.tokenizer, vocab_size = tok.vocab_size, token_bytes = width,
                 records = total, chat_records = kinds.chat, text_records = kinds.text,
                 train_samples = stats.train.samples, val_samples = stats.val.samples,
                 train_tokens = stats.train.tokens, val_tokens = stats.val.tokens,
                 train_learned_tokens = stats.train.learned, val_learned_tokens = stats.val.learned,
                 truncated = totals.truncated, dropped_overlong = totals.dropped_overlong,
                 dropped_no_targets = totals.dropped_no_targets, max_length = opt.max_length, overlong = opt.overlong,
                 mask = opt.mask, template_has_generation = chat and chat.template.has_generation or false,
                 chat_template = chat and chat.origin or json.null, learn_roles = opt.learn_roles,
                 train = json.array(shards.train), val = json.array(shards.val), input = opt.input,
                 files = #files, skipped_files = skipped,
                 bos_id = tok.bos_id or json.null, eos_id = tok.eos_id or json.null, pad_id = tok.pad_id or json.null}
   local text = json.encode(meta, ' ')
   check(C.fsdp_file_write_atomic(opt.output .. '/meta.json', text, #text), 'prepare')
   print(string.format('prepared %d records (%d chat, %d prompt/completion; %d files, %d skipped) in %ds',
                       total, kinds.chat, kinds.text, #files, skipped, os.time() - t0))
   print(string.format('  train: %d samples, %d tokens (%d learned) in %d shard(s); val: %d samples, %d tokens (%d learned)',
                       stats.train.samples, stats.train.tokens, stats.train.learned, #shards.train,
                       stats.val.samples, stats.val.tokens, stats.val.learned))
   print(string.format('  over --max-length %d: %d truncated, %d dropped; %d dropped without a learned token',
                       opt.max_length, totals.truncated, totals.dropped_overlong, totals.dropped_no_targets))
   return 0
end

return M
