-- fsdp.checkpoint: sharded checkpoints that reshard.
--
--   DIR/latest                    name of the newest complete step, written last
--   DIR/step_00000030/index.json  format, step, world size, strategy, model
--                                 config, the flat layout of every unit, and
--                                 each rank file's size and crc32
--   DIR/step_00000030/rank_00000.safetensors
--                                 slice r of each unit: <unit>.param,
--                                 <unit>.exp_avg, <unit>.exp_avg_sq (one file
--                                 per slice of the shard group; replicas of a
--                                 slice are written once)
--   DIR/step_00000030/trainer_state.json
--                                 step, data cursor, RNG, schedule, extra
--   DIR/step_00000030/manifest.json
--                                 size and crc32 of every other file of the
--                                 step, and a checksum of itself
--
-- A step is written under a temporary name and renamed into place when it is
-- complete; `latest` is replaced atomically after that. A half-written step
-- is never named by `latest`, so it is never loaded. Loading at a different
-- world size reads, for each unit, the byte ranges of the old rank files that
-- overlap this rank's new slice.
--
-- Loading refuses, naming the file and the field, anything it cannot trust:
-- every field of index.json and trainer_state.json is checked for type and
-- range and against the other (the step of both, the files of the world
-- size, the layout against itself and against the model), then every file
-- against the manifest. The step a run resumes from (M.find_resume; what
-- `fsdp-lua ckpt info` and `ckpt verify` report, through M.plan) is the one
-- `latest` names; without it, the newest step that verifies, said in a log
-- line; with step directories but none complete, it refuses rather than
-- start over them. Before that rank 0 removes the temporaries of saves that
-- died (M.prune_stale).
--
-- Adapter checkpoints. A model with frozen parameters (Module:freeze,
-- fsdp.lora) is saved as its trainable parameters and their optimizer
-- state only: fsdp.shard keeps the frozen ones apart, so the units' layout
-- in index.json lists the trainable ones, and the rank files hold their
-- slices. index.json's `frozen` field records the base they were trained
-- on: {base = a name (the --model directory, else the model's name),
-- parameters, tensors, fingerprint = 16 hex digits}, the fingerprint being
-- the frozen values' (Sharded:fingerprint_frozen: the same at any world
-- size, strategy or gather dtype). Resuming gets the frozen values from
-- where the run gets them (its --model directory, or its initializer) and
-- refuses a base whose fingerprint differs, naming both.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local json = require 'fsdp.json'
local fs = require 'fsdp.fs'
local log = require 'fsdp.log'
local ffi, C, check = bind.ffi, bind.C, bind.check

pcall(ffi.cdef, 'int gethostname(char *name, size_t len);')

local M = {}
M.FORMAT, M.VERSION = 'fsdp-lua-checkpoint', 2
M.MANIFEST_FORMAT = 'fsdp-lua-manifest'
-- a temporary untouched this long is stale even when its writer's pid runs
M.STALE_SECONDS = tonumber(os.getenv('FSDP_CKPT_STALE_SECONDS') or '') or 3600

local function step_name(step) return string.format('step_%08d', step) end
local function rank_file(r) return string.format('rank_%05d.safetensors', r) end
M.step_name, M.rank_file = step_name, rank_file


local function fail(fmt, ...) error('checkpoint: ' .. string.format(fmt, ...), 0) end
local check_base -- (path, index.frozen, sharded, base): defined with the loading code

local function write_text(path, text)
   check(C.fsdp_file_write_atomic(path, text, #text), 'checkpoint')
end

local function crc_of(s) return tonumber(C.fsdp_crc32(0, s, #s)) end

local function hostname()
   local buf = ffi.new('char[256]')
   local ok, rc = pcall(function() return ffi.C.gethostname(buf, 255) end)
   local name = (ok and rc == 0) and ffi.string(buf) or os.getenv('HOSTNAME') or 'localhost'
   return (name:gsub('[^%w%.]', '_'))
end

M.hostname = hostname

---------------------------------------------------------------------------
-- the manifest: {format, version, files = {name = {bytes, crc32}}, checksum},
-- the checksum being the crc32 of the canonical JSON (sorted keys, no
-- spaces) of everything else in it

local function manifest_checksum(m)
   local rest = {}
   for k, v in pairs(m) do if k ~= 'checksum' then rest[k] = v end end
   return crc_of(json.encode(rest))
end

local function file_entry(path)
   local f = io.open(path, 'rb')
   if not f then fail('%s was not written', path) end
   local size = f:seek('end')
   f:close()
   local crc = tonumber(C.fsdp_file_crc32(path))
   if crc < 0 then fail('%s', bind.last_error()) end
   return {bytes = size, crc32 = crc}
end

-- this rank's tensors: unit shards and optimizer state
local function rank_tensors(sharded, optimizer)
   local list = {}
   for _, u in ipairs(sharded.units) do list[#list + 1] = {u.name .. '.param', u.shard} end
   if optimizer then
      local sd = optimizer:state_dict()
      for _, u in ipairs(sharded.units) do
         for _, k in ipairs({'exp_avg', 'exp_avg_sq'}) do
            local name = u.name .. '.' .. k
            if sd.tensors[name] then list[#list + 1] = {name, sd.tensors[name]} end
         end
      end
   end
   return list
end

-- the record of a sharded model's frozen parameters an index keeps, or nil
function M.frozen_record(sharded, base)
   local r = sharded.frozen_record
   if not r then return nil end
   return {base = base and tostring(base) or nil, parameters = r.parameters, tensors = r.tensors,
           fingerprint = r.fingerprint}
end

local function write_rank_file(path, tensors, meta)
   local w = C.fsdp_st_writer_new()
   if w == nil then error('checkpoint: ' .. bind.last_error(), 0) end
   w = ffi.gc(w, C.fsdp_st_writer_free)
   local shape = ffi.new('int64_t[8]')
   local staged = {} -- host copies of device tensors, alive until the file is saved
   for _, nt in ipairs(tensors) do
      local t = nt[2]
      if t.device >= 0 then
         t = t:cpu()
         staged[#staged + 1] = t
      end
      for i, d in ipairs(t.shape) do shape[i - 1] = d end
      check(C.fsdp_st_writer_add(w, nt[1], T.DTYPES[t.dtype], #t.shape, shape, t:cdata().data), 'checkpoint')
   end
   local keys = {} -- in sorted order, so equal states give equal bytes
   for k in pairs(meta or {}) do keys[#keys + 1] = k end
   table.sort(keys)
   for _, k in ipairs(keys) do check(C.fsdp_st_writer_set_metadata(w, k, tostring(meta[k])), 'checkpoint') end
   local ok, err = pcall(check, C.fsdp_st_writer_save(w, path), 'checkpoint')
   for _, t in ipairs(staged) do t:free() end
   if not ok then error(err, 0) end
end

-- state: {step, sharded, state = {name -> stateful}, trainer = table (json),
-- model_config, model_name, base (what the frozen parameters come from, for
-- messages: the --model directory; default model_name), keep_last, comm
-- (optional: rank, world_size, barrier, broadcast_string)}. Collective: every rank calls it. One replica
-- of each slice is written (sharded.writes_checkpoint), as rank_<shard rank>.
-- Every stateful part (the loader, RNG, loss scaler: anything with
-- state_dict / load_state_dict) is saved under its name in
-- trainer_state.json; state.optimizer's tensors go to the rank files and its
-- step count to trainer_state (optimizer_t). (`optimizer = ...` at the top
-- level of `state` is the older spelling of state.state.optimizer.)
function M.save(dir, state)
   if state.state then
      state.optimizer = state.state.optimizer
      local trainer = state.trainer or {}
      for k, obj in pairs(state.state) do
         if k ~= 'optimizer' then trainer[k] = obj:state_dict() end
      end
      trainer.step = state.step
      state.trainer = trainer
   end
   local comm = state.comm
   local rank = comm and comm.rank or 0
   local sh = state.sharded
   local slices = sh.shard_count or 1
   local name = step_name(state.step)
   local final = dir .. '/' .. name
   -- rank 0 picks the temporary name (host, pid and time: M.prune_stale
   -- tells a dead writer's from a live one's) and tells the others
   local tmp = string.format('%s/.%s.tmp-%s-%d-%d', dir, name, hostname(), fs.pid(), os.time())
   if comm and comm.broadcast_string then tmp = comm.broadcast_string(tmp) end
   if rank == 0 then fs.mkdirs(tmp) end
   if comm and comm.barrier then comm.barrier() end
   if sh.writes_checkpoint ~= false then
      write_rank_file(tmp .. '/' .. rank_file(sh.shard_rank or 0), rank_tensors(sh, state.optimizer),
                      {rank = sh.shard_rank or 0, world_size = slices, step = state.step})
   end
   if comm and comm.barrier then comm.barrier() end
   if rank == 0 then
      local files = {}
      for r = 0, slices - 1 do files[rank_file(r)] = file_entry(tmp .. '/' .. rank_file(r)) end
      local trainer = state.trainer or {}
      trainer.step = trainer.step or state.step -- the step is checked against the index's on load
      if state.optimizer then trainer.optimizer_t = state.optimizer.t end
      local index = {
         format = M.FORMAT, version = M.VERSION, step = state.step, world_size = slices,
         ranks = comm and comm.world_size or 1,
         strategy = sh.strategy, model = {name = state.model_name, config = state.model_config},
         units = sh:layout(), files = files, tokenizer_dir = state.tokenizer_dir,
         optimizer = state.optimizer and state.optimizer:state_dict().hyper or json.null,
         frozen = M.frozen_record(sh, state.base or state.model_name) or nil,
      }
      local trainer_text, index_text = json.encode(trainer, ' '), json.encode(index, ' ')
      write_text(tmp .. '/trainer_state.json', trainer_text)
      write_text(tmp .. '/index.json', index_text)
      local listed = {['index.json'] = {bytes = #index_text, crc32 = crc_of(index_text)},
                      ['trainer_state.json'] = {bytes = #trainer_text, crc32 = crc_of(trainer_text)}}
      for k, v in pairs(files) do listed[k] = v end
      local manifest = {format = M.MANIFEST_FORMAT, version = 1, step = state.step, files = listed}
      manifest.checksum = manifest_checksum(manifest)
      write_text(tmp .. '/manifest.json', json.encode(manifest, ' '))
      if fs.exists(final) then
         -- re-saving a step (a run resumed from an older one): swapped in one
         -- step, so a reader sees the old or the new one, never neither
         log.info('checkpoint: replacing %s, written by an earlier run that went further', final)
         check(C.fsdp_dir_replace(tmp, final), 'checkpoint')
         fs.remove_tree(tmp) -- now the old step
      else
         check(C.fsdp_dir_commit(tmp, final), 'checkpoint')
      end
      write_text(dir .. '/latest', name .. '\n')
      if state.keep_last and state.keep_last > 0 then M.prune(dir, state.keep_last, state.step) end
   end
   if comm and comm.barrier then comm.barrier() end
   return final
end

local function list_steps(dir)
   local steps = {}
   for _, n in ipairs(fs.list(dir)) do
      local k = n:match('^step_(%d+)$')
      if k and fs.is_dir(dir .. '/' .. n) then steps[#steps + 1] = {name = n, step = tonumber(k)} end
   end
   table.sort(steps, function(a, b) return a.step < b.step end)
   return steps
end

-- removes all but the newest `keep` complete steps up to `upto` (default:
-- all); steps beyond it, left by a run that went further before this one
-- resumed from an earlier step, are kept until this run replaces them
function M.prune(dir, keep, upto)
   local steps = {}
   for _, s in ipairs(list_steps(dir)) do
      if not upto or s.step <= upto then steps[#steps + 1] = s end
   end
   for i = 1, #steps - keep do fs.remove_tree(dir .. '/' .. steps[i].name) end
end

---------------------------------------------------------------------------
-- stale temporaries: .step_N.tmp-HOST-PID-TIME (a save that died before its
-- rename) and .step_N.old-PID (a step moved aside by a replace on a file
-- system without RENAME_EXCHANGE)

-- why the temporary `name` is stale, or nil while it may still be written
local function stale_reason(dir, name, now)
   local host, pid = name:match('%.tmp%-(.+)%-(%d+)%-%d+$')
   if not host then pid = name:match('%.tmp%-(%d+)%-%d+$') or name:match('%.old%-(%d+)$') end
   host = host or hostname()
   pid = tonumber(pid)
   local mtime = tonumber(C.fsdp_path_newest_mtime(dir .. '/' .. name))
   local age = mtime >= 0 and now - mtime or math.huge
   if host == hostname() and pid and pid ~= fs.pid() and C.fsdp_pid_alive(pid) == 0 then
      return string.format('its writer, pid %d on this host, is gone', pid)
   end
   if age > M.STALE_SECONDS then
      return string.format('untouched for %d s (FSDP_CKPT_STALE_SECONDS %d)', age, M.STALE_SECONDS)
   end
   return nil
end

-- what M.prune_stale would do: a list of {name, action = 'remove' |
-- 'restore', why}; changes nothing
function M.stale(dir)
   local out, now = {}, os.time()
   for _, n in ipairs(fs.list(dir, true)) do
      local step = n:match('^%.(step_%d+)%.tmp%-') or n:match('^%.(step_%d+)%.old%-')
      if step and fs.is_dir(dir .. '/' .. n) then
         local why = stale_reason(dir, n, now)
         if why then
            local restore = n:match('%.old%-') and not fs.exists(dir .. '/' .. step)
            out[#out + 1] = {name = n, step = step, action = restore and 'restore' or 'remove', why = why}
         end
      elseif n == 'latest.tmp' then -- a `latest` whose write died before its rename
         out[#out + 1] = {name = n, action = 'remove', why = 'a write of latest that never finished'}
      end
   end
   return out
end

-- removes the stale temporaries of dir (rank 0, at start), and puts back a
-- step that was moved aside and never replaced
function M.prune_stale(dir)
   for _, s in ipairs(M.stale(dir)) do
      if s.action == 'restore' then
         log.info('checkpoint: restoring %s/%s from %s (%s)', dir, s.step, s.name, s.why)
         check(C.fsdp_dir_commit(dir .. '/' .. s.name, dir .. '/' .. s.step), 'checkpoint')
      else
         log.info('checkpoint: removing the stale temporary %s/%s (%s)', dir, s.name, s.why)
         fs.remove_tree(dir .. '/' .. s.name)
      end
   end
end

---------------------------------------------------------------------------
-- validation

local MAX_INT = 2 ^ 53

local function is_int(v) return type(v) == 'number' and v == math.floor(v) and math.abs(v) < MAX_INT end

local function show(v)
   if type(v) == 'string' then return string.format('%q', #v > 40 and v:sub(1, 40) .. '...' or v) end
   if v == json.null then return 'null' end
   if type(v) == 'table' then
      local n = 0
      for _ in pairs(v) do n = n + 1 end
      return n == #v and n > 0 and 'an array' or 'an object'
   end
   if type(v) == 'number' then return string.format('%.17g', v) end
   return tostring(v)
end

-- a checker bound to one file: bad(field, fmt, ...) raises
-- "checkpoint: FILE: field 'F' ...", with a note when the file also fails
-- its checksum (edited after it was saved)
local function checker(fpath, note)
   local c = {}
   function c.bad(field, fmt, ...)
      fail("%s: field '%s' %s%s", fpath, field, string.format(fmt, ...),
           note and (' (and ' .. note .. ')') or '')
   end
   function c.int(field, v, lo, hi)
      if not is_int(v) or (lo and v < lo) or (hi and v > hi) then
         c.bad(field, 'is %s, expected an integer%s%s', v == nil and 'missing' or show(v),
               lo and (' >= ' .. string.format('%d', lo)) or '', hi and (' <= ' .. string.format('%d', hi)) or '')
      end
      return v
   end
   function c.num(field, v, lo)
      if type(v) ~= 'number' or v ~= v or v == math.huge or v == -math.huge or (lo and v < lo) then
         c.bad(field, 'is %s, expected a finite number%s', v == nil and 'missing' or show(v), lo and (' >= ' .. lo) or '')
      end
      return v
   end
   function c.kind(field, v, kind, optional)
      if optional and (v == nil or v == json.null) then return nil end
      if type(v) ~= kind then c.bad(field, 'is %s, expected a%s %s', v == nil and 'missing' or show(v),
                                    kind == 'table' and 'n' or '', kind == 'table' and 'object or array' or kind) end
      return v
   end
   -- every number in a value is finite (JSON has no NaN, but 1e999 reads as inf)
   function c.finite(field, v)
      if type(v) == 'number' then c.num(field, v)
      elseif type(v) == 'table' then
         for k, x in pairs(v) do
            c.finite(type(k) == 'number' and (field .. '[' .. k .. ']') or (field == '' and k or (field .. '.' .. k)), x)
         end
      end
   end
   return c
end

local function is_list(t)
   if type(t) ~= 'table' then return false end
   local n = 0
   for _ in pairs(t) do n = n + 1 end
   return n == #t
end

local function check_manifest(path, m, fpath)
   local c = checker(fpath)
   if type(m) ~= 'table' then fail('%s is not a JSON object', fpath) end
   if m.format ~= M.MANIFEST_FORMAT then c.bad('format', "is %s, expected '%s'", show(m.format), M.MANIFEST_FORMAT) end
   if m.checksum ~= manifest_checksum(m) then
      fail('%s: its checksum %s does not match its contents (%d): the manifest was edited or damaged', fpath,
           show(m.checksum), manifest_checksum(m))
   end
   c.kind('files', m.files, 'table')
   for k, e in pairs(m.files) do
      c.kind('files.' .. k, e, 'table')
      c.int('files.' .. k .. '.bytes', e.bytes, 0)
      c.int('files.' .. k .. '.crc32', e.crc32, 0, 2 ^ 32 - 1)
   end
end

local STRATEGIES = {full = true, grad_op = true, none = true, hybrid_full = true, hybrid_grad_op = true}

local function check_index(index, fpath, note)
   local c = checker(fpath, note)
   if index.format ~= M.FORMAT then c.bad('format', "is %s, expected '%s'", show(index.format), M.FORMAT) end
   local version = c.int('version', index.version, 1)
   if version > M.VERSION then
      c.bad('version', 'is %d: written by a newer fsdp-lua (this one reads up to %d)', version, M.VERSION)
   end
   c.int('step', index.step, 0)
   local ws = c.int('world_size', index.world_size, 1, 2 ^ 24)
   if index.ranks ~= nil then
      c.int('ranks', index.ranks, 1, 2 ^ 24)
      if index.ranks % ws ~= 0 then c.bad('ranks', 'is %d, not a multiple of world_size %d', index.ranks, ws) end
   end
   if index.strategy ~= nil and not STRATEGIES[index.strategy] then
      c.bad('strategy', 'is %s, not one of full, grad_op, none, hybrid_full, hybrid_grad_op', show(index.strategy))
   end
   c.kind('model', index.model, 'table')
   c.kind('model.name', index.model.name, 'string', true)
   c.kind('model.config', index.model.config, 'table', true)
   c.kind('tokenizer_dir', index.tokenizer_dir, 'string', true)
   c.kind('optimizer', index.optimizer, 'table', true)
   c.finite('optimizer', index.optimizer)
   if c.kind('frozen', index.frozen, 'table', true) then
      local f = index.frozen
      c.kind('frozen.base', f.base, 'string', true)
      c.int('frozen.parameters', f.parameters, 1)
      c.int('frozen.tensors', f.tensors, 1)
      if type(f.fingerprint) ~= 'string' or not f.fingerprint:match('^%x+$') or #f.fingerprint ~= 16 then
         c.bad('frozen.fingerprint', 'is %s, expected 16 hexadecimal digits', show(f.fingerprint))
      end
   end
   -- the layout: contiguous parameters, padding a multiple of world_size
   if not is_list(index.units) or #index.units == 0 then c.bad('units', 'is %s, expected a non-empty array', show(index.units)) end
   local seen = {}
   for i, u in ipairs(index.units) do
      local f = string.format('units[%d]', i)
      c.kind(f, u, 'table')
      c.kind(f .. '.name', u.name, 'string')
      if u.name == '' or seen[u.name] then c.bad(f .. '.name', 'is %s: empty or repeated', show(u.name)) end
      seen[u.name] = true
      local numel = c.int(f .. '.numel', u.numel, 0)
      local padded = c.int(f .. '.padded', u.padded, math.max(numel, 1))
      if padded % ws ~= 0 then c.bad(f .. '.padded', 'is %d, not a multiple of world_size %d', padded, ws) end
      if not is_list(u.params) then c.bad(f .. '.params', 'is %s, expected an array', show(u.params)) end
      local offset = 0
      for j, p in ipairs(u.params) do
         local g = string.format('%s.params[%d]', f, j)
         c.kind(g, p, 'table')
         c.kind(g .. '.name', p.name, 'string')
         if not is_list(p.shape) then c.bad(g .. '.shape', 'is %s, expected an array', show(p.shape)) end
         local n = 1
         for k, d in ipairs(p.shape) do n = n * c.int(string.format('%s.shape[%d]', g, k), d, 0, 2 ^ 40) end
         if c.int(g .. '.numel', p.numel, 0) ~= n then c.bad(g .. '.numel', 'is %d but its shape holds %d', p.numel, n) end
         if c.int(g .. '.offset', p.offset, 0) ~= offset then
            c.bad(g .. '.offset', 'is %d, expected %d (right after the previous parameter)', p.offset, offset)
         end
         offset = offset + n
      end
      if offset ~= numel then c.bad(f .. '.numel', 'is %d but its parameters hold %d', numel, offset) end
   end
   c.kind('files', index.files, 'table')
   for k in pairs(index.files) do
      local r = tostring(k):match('^rank_(%d+)%.safetensors$')
      if not r or tonumber(r) >= ws then c.bad('files', "lists '%s', which world_size %d has no place for", k, ws) end
   end
   for r = 0, ws - 1 do
      local k = 'files.' .. rank_file(r)
      local e = c.kind(k, index.files[rank_file(r)], 'table')
      c.int(k .. '.bytes', e.bytes, 0)
      c.int(k .. '.crc32', e.crc32, 0, 2 ^ 32 - 1)
   end
end

-- the trainer state the recipes write: {step, optimizer_t, data = {cursor,
-- seed, split, batches, rows}, rng, scaler = {scale, good_steps, skipped},
-- schedule = {...}}; other fields only need finite numbers
local function check_trainer(tr, fpath, note, index)
   local c = checker(fpath, note)
   c.finite('', tr)
   local step = c.int('step', tr.step, 0)
   if step ~= index.step then c.bad('step', 'is %d but index.json says step %d', step, index.step) end
   if tr.optimizer_t ~= nil then c.int('optimizer_t', tr.optimizer_t, 0, step) end
   if tr.data ~= nil then
      local d = c.kind('data', tr.data, 'table')
      local cursor = c.int('data.cursor', d.cursor, 0)
      if d.seed ~= nil then c.int('data.seed', d.seed) end
      if d.split ~= nil and d.split ~= 'train' and d.split ~= 'val' then c.bad('data.split', 'is %s', show(d.split)) end
      if d.batches ~= nil or d.rows ~= nil then
         local batches = c.int('data.batches', d.batches, step)
         local rows = c.int('data.rows', d.rows, 1, 2 ^ 31)
         if cursor > batches * rows then
            c.bad('data.cursor', 'is %d, more than the %d batches of at most %d sequences served so far (%d)',
                  cursor, batches, rows, batches * rows)
         end
      end
   end
   if tr.rng ~= nil and not (type(tr.rng) == 'string' and tr.rng:match('^%x+:%x+:%x+:%x+$')) then
      c.bad('rng', 'is %s, expected four hexadecimal words a:b:c:d', show(tr.rng))
   end
   if tr.scaler ~= nil and tr.scaler ~= json.null then
      local s = c.kind('scaler', tr.scaler, 'table')
      if not (type(s.scale) == 'number' and s.scale > 0) then c.bad('scaler.scale', 'is %s, expected a positive number', show(s.scale)) end
      c.int('scaler.good_steps', s.good_steps, 0)
      if s.skipped ~= nil then c.int('scaler.skipped', s.skipped, 0, step) end
   end
   if tr.schedule ~= nil then
      local s = c.kind('schedule', tr.schedule, 'table')
      for _, k in ipairs({'lr', 'min_lr'}) do if s[k] ~= nil then c.num('schedule.' .. k, s[k], 0) end end
      for _, k in ipairs({'warmup', 'total'}) do if s[k] ~= nil then c.int('schedule.' .. k, s[k], 0) end end
   end
end

-- "FILE has N bytes and crc32 X but manifest.json says ..." or nil
local function mismatch(text_or_entry, want, what)
   local got = type(text_or_entry) == 'string' and {bytes = #text_or_entry, crc32 = crc_of(text_or_entry)} or text_or_entry
   if got.bytes == want.bytes and got.crc32 == want.crc32 then return nil end
   if got.bytes ~= want.bytes then
      return string.format('it has %d bytes but %s says %d: truncated or replaced', got.bytes, what, want.bytes)
   end
   return string.format('its crc32 %08x does not match %s (%08x): the file was changed after it was saved',
                        got.crc32, what, want.crc32)
end

local function decode_text(fpath, text, note)
   local ok, v = pcall(json.decode, text)
   if not ok then fail('%s: %s%s', fpath, v, note and (' (and ' .. note .. ')') or '') end
   if type(v) ~= 'table' or is_list(v) and next(v) ~= nil then fail('%s is not a JSON object', fpath) end
   return v
end

-- the checks of index.json and trainer_state.json on their texts alone (no
-- files, no manifest; what the fuzz target runs); errors name dir/file
function M.check_texts(index_text, trainer_text, dir)
   dir = dir or '.'
   local index = decode_text(dir .. '/index.json', index_text)
   check_index(index, dir .. '/index.json')
   local trainer
   if trainer_text then
      trainer = decode_text(dir .. '/trainer_state.json', trainer_text)
      check_trainer(trainer, dir .. '/trainer_state.json', nil, index)
   end
   return index, trainer
end

local function decode_file(fpath, note)
   local text = fs.read(fpath)
   if not text then fail('%s is missing', fpath) end
   local ok, v = pcall(json.decode, text)
   if not ok then fail('%s: %s%s', fpath, v, note and (' (and ' .. note .. ')') or '') end
   if type(v) ~= 'table' or is_list(v) and next(v) ~= nil then fail('%s is not a JSON object', fpath) end
   return v, text
end

-- reads and validates a step: manifest, index.json, trainer_state.json and
-- the rank files' sizes and checksums; returns index, trainer state
function M.read_index(path)
   local mpath = path .. '/manifest.json'
   local manifest
   if fs.exists(mpath) then
      manifest = decode_file(mpath)
      check_manifest(path, manifest, mpath)
   end
   local function note_for(name, text)
      if not manifest then return nil end
      local e = manifest.files[name]
      if not e then fail("%s: lists no '%s'", mpath, name) end
      local m = mismatch(text, e, 'manifest.json')
      return m and ('the file fails its checksum: ' .. m) or nil
   end
   local ipath = path .. '/index.json'
   local itext = fs.read(ipath)
   if not itext then fail('%s is missing', ipath) end
   local inote = note_for('index.json', itext)
   local index = decode_file(ipath, inote)
   check_index(index, ipath, inote)
   if not manifest and index.version >= 2 then
      fail('%s is missing (a version %d step has one): the step is incomplete', mpath, index.version)
   end
   if manifest and manifest.step ~= nil and manifest.step ~= index.step then
      fail("%s: field 'step' is %s but index.json says step %d", mpath, show(manifest.step), index.step)
   end
   local tpath = path .. '/trainer_state.json'
   local ttext = fs.read(tpath)
   if not ttext then fail('%s is missing', tpath) end
   local tnote = note_for('trainer_state.json', ttext)
   local trainer = decode_file(tpath, tnote)
   check_trainer(trainer, tpath, tnote, index)
   -- the fields are sound; a checksum that fails is the error by itself
   if inote then fail('%s: %s', ipath, inote:gsub('^the file fails its checksum: ', '')) end
   if tnote then fail('%s: %s', tpath, tnote:gsub('^the file fails its checksum: ', '')) end
   for r = 0, index.world_size - 1 do
      local fname = rank_file(r)
      local fpath = path .. '/' .. fname
      local info = index.files[fname]
      if manifest then
         local e = manifest.files[fname]
         if not e then fail("%s: lists no '%s'", mpath, fname) end
         if e.bytes ~= info.bytes or e.crc32 ~= info.crc32 then
            fail("%s: field 'files.%s' does not match manifest.json: edited after it was saved", ipath, fname)
         end
      end
      if not fs.exists(fpath) then fail('%s is missing', fpath) end
      local m = mismatch(file_entry(fpath), info, 'the index')
      if m then fail('%s: %s', fpath, m:gsub('the file was changed', 'the file is corrupted')) end
   end
   if not manifest then
      log.warn('checkpoint: %s has no manifest.json (a version 1 step): index.json and trainer_state.json are not checksummed', path)
   end
   return index, trainer
end

-- every rank file holds every unit's tensors, f32, of one slice each
local function check_rank_files(path, index, get_file, with_optimizer)
   local info = ffi.new('fsdp_st_info')
   for r = 0, index.world_size - 1 do
      local f = get_file(r)
      for _, u in ipairs(index.units) do
         local S = u.padded / index.world_size
         for _, key in ipairs(with_optimizer and {'param', 'exp_avg', 'exp_avg_sq'} or {'param'}) do
            local name = u.name .. '.' .. key
            local i = C.fsdp_st_find(f, name)
            if i < 0 then
               fail("%s/%s has no tensor '%s'%s", path, rank_file(r), name,
                    key ~= 'param' and ' (saved without optimizer state?)' or '')
            end
            C.fsdp_st_get_info(f, i, info)
            if info.dtype ~= 0 or tonumber(info.nbytes) ~= S * 4 then
               fail("%s/%s: tensor '%s' should be f32 of %d elements (index.json's layout)", path, rank_file(r), name, S)
            end
         end
      end
   end
end

---------------------------------------------------------------------------
-- which step to resume from

-- What resuming from dir does, changing nothing: {path = the step
-- directory or nil, step = N, how = 'latest' | 'newest' | 'none', notes =
-- {lines}, stale = M.stale(dir)}; raises what resuming would raise.
-- opts.verify (default true): read and check the step `latest` names (a
-- step found without `latest` is always checked, to know it is complete).
function M.plan(dir, opts)
   opts = opts or {}
   local plan = {how = 'none', notes = {}, stale = {}}
   if not fs.is_dir(dir) then return plan end
   plan.stale = M.stale(dir)
   local restoring = {}
   for _, s in ipairs(plan.stale) do
      if s.action == 'restore' then restoring[s.step] = dir .. '/' .. s.name end
   end
   local function where(name) return restoring[name] or (dir .. '/' .. name) end
   local steps = list_steps(dir)
   for name in pairs(restoring) do
      local k = tonumber(name:match('%d+'))
      steps[#steps + 1] = {name = name, step = k}
   end
   table.sort(steps, function(a, b) return a.step < b.step end)

   local text = fs.read(dir .. '/latest')
   if text then
      local name = text:match('^%s*(step_%d+)%s*$')
      if not name then fail("%s/latest does not name a step (contents: %q)", dir, text:sub(1, 60)) end
      local path = where(name)
      if not fs.is_dir(path) then fail('%s/latest names %s, which does not exist', dir, name) end
      if opts.verify ~= false then
         local ok, err = pcall(M.read_index, path)
         if not ok then
            error(err .. string.format(' [%s/latest names this step; move `latest` away to resume from the newest complete step instead]', dir), 0)
         end
      end
      plan.path, plan.how, plan.name = dir .. '/' .. name, 'latest', name
      plan.step = tonumber(name:match('%d+'))
   else
      local skipped = {}
      for i = #steps, 1, -1 do
         local ok, err = pcall(M.read_index, where(steps[i].name))
         if ok then
            plan.path, plan.how, plan.name, plan.step = dir .. '/' .. steps[i].name, 'newest', steps[i].name, steps[i].step
            break
         end
         skipped[#skipped + 1] = steps[i].name .. ': ' .. tostring(err):gsub('^checkpoint: ', '')
      end
      if not plan.path and #steps > 0 then
         fail('%s has step directories but no `latest`, and none of them is complete (%s); refusing to start from scratch over them: move them away to start anew',
              dir, table.concat(skipped, '; '))
      end
      if plan.path then
         plan.notes[#plan.notes + 1] = string.format('%s/latest is missing: resuming from the newest complete step, %s', dir, plan.name)
         for _, s in ipairs(skipped) do plan.notes[#plan.notes + 1] = '  skipped ' .. s end
      end
   end
   if plan.path then
      local newer = {}
      for _, s in ipairs(steps) do if s.step > plan.step then newer[#newer + 1] = s.name end end
      if #newer > 0 then
         plan.notes[#plan.notes + 1] = string.format('%s also holds later steps (%s): this run replaces each when it saves that step',
                                                     dir, table.concat(newer, ', '))
      end
   end
   return plan
end

-- the step directory `latest` names, else the newest complete step (with a
-- log line), or nil when there is none; not collective, changes nothing
function M.latest(dir)
   local plan = M.plan(dir, {verify = false})
   for _, line in ipairs(plan.notes) do log.info('checkpoint: %s', line) end
   return plan.path
end

-- The step directory to resume from, or nil: collective, every rank calls
-- it and gets the same answer or the same error. Rank 0 prunes stale
-- temporaries first, then picks and verifies the step (M.plan), saying in
-- log lines what it chose and why.
function M.find_resume(dir, comm)
   local rank = comm and comm.rank or 0
   local answer = ''
   if rank == 0 then
      local ok, res = pcall(function()
         if fs.is_dir(dir) then M.prune_stale(dir) end
         local plan = M.plan(dir)
         for _, line in ipairs(plan.notes) do log.info('checkpoint: %s', line) end
         return plan.path or ''
      end)
      answer = (ok and 'ok\n' or 'error\n') .. tostring(res)
   end
   if comm and comm.broadcast_string and (comm.world_size or 1) > 1 then answer = comm.broadcast_string(answer) end
   local kind, rest = answer:match('^(%a+)\n(.*)$')
   if kind ~= 'ok' then error(rest, 0) end
   return rest ~= '' and rest or nil
end

---------------------------------------------------------------------------
-- loading

-- opens the old rank files lazily
local function opener(path)
   local files = {}
   return function(r)
      if not files[r] then
         local fpath = path .. '/' .. rank_file(r)
         local f = C.fsdp_st_open(fpath)
         if f == nil then error('checkpoint: ' .. bind.last_error(), 0) end
         files[r] = ffi.gc(f, C.fsdp_st_close)
      end
      return files[r]
   end
end

-- copies flat elements [lo, hi) of tensor `key` of unit into dst (float*),
-- reading the overlapping slices of the old world's rank files
local function gather_range(get_file, old_world, old_unit, key, lo, hi, dst)
   local S = old_unit.padded / old_world
   for r = math.floor(lo / S), math.min(old_world - 1, math.floor((hi - 1) / S)) do
      local f = get_file(r)
      local src = ffi.cast('const float*', C.fsdp_st_data(f, C.fsdp_st_find(f, old_unit.name .. '.' .. key)))
      local a, b = math.max(lo, r * S), math.min(hi, (r + 1) * S)
      ffi.copy(dst + (a - lo), src + (a - r * S), (b - a) * 4)
   end
end

-- compares the saved layout with the model's; errors name the first mismatch
local function check_layout(path, saved, current)
   if #saved ~= #current then
      error(string.format('checkpoint: %s was saved from a model with %d units, this one has %d', path, #saved, #current), 0)
   end
   for i, u in ipairs(current) do
      local s = saved[i]
      if s.name ~= u.name or s.numel ~= u.numel or #s.params ~= #u.params then
         error(string.format("checkpoint: %s: unit %d is '%s' with %d elements, the model's is '%s' with %d",
                             path, i, tostring(s.name), s.numel or -1, u.name, u.numel), 0)
      end
      for j, p in ipairs(u.params) do
         local sp = s.params[j]
         if sp.name ~= p.name or sp.offset ~= p.offset or table.concat(sp.shape, 'x') ~= table.concat(p.shape, 'x') then
            error(string.format("checkpoint: %s: parameter %d of unit '%s' is '%s' %s, the model has '%s' %s",
                                path, j, u.name, tostring(sp.name), table.concat(sp.shape or {}, 'x'),
                                p.name, table.concat(p.shape, 'x')), 0)
         end
      end
   end
end

-- the saved frozen base against the model's: an adapter checkpoint resumes
-- only onto the base it was trained on, a full one only onto a model
-- without frozen parameters
local function describe_base(f)
   return string.format("'%s' (%d frozen parameters in %d tensors, fingerprint %s)", f.base or '?', f.parameters,
                        f.tensors, f.fingerprint)
end
check_base = function(path, saved, sharded, base)
   if saved == json.null then saved = nil end
   local mine = sharded.frozen_record
   if not saved and not mine then return end
   if saved and not mine then
      error(string.format('checkpoint: %s holds trainable parameters only, trained over the frozen base %s; this ' ..
                          'model freezes nothing (apply the same freezing / fsdp.lora before fsdp.shard)', path,
                          describe_base(saved)), 0)
   end
   if mine and not saved then
      error(string.format('checkpoint: %s is a full checkpoint (every parameter trainable), but this model freezes ' ..
                          '%d parameters in %d tensors', path, mine.parameters, mine.tensors), 0)
   end
   if saved.fingerprint ~= mine.fingerprint or saved.parameters ~= mine.parameters or saved.tensors ~= mine.tensors then
      error(string.format('checkpoint: %s was trained over the frozen base %s, but this run\'s frozen base is %s: ' ..
                          'resume with the base model it was trained on', path, describe_base(saved),
                          describe_base({base = base, parameters = mine.parameters,
                                         tensors = mine.tensors, fingerprint = mine.fingerprint})), 0)
   end
end

-- checks a step as loading would, without a model: index, trainer state,
-- manifest, rank files and their tensors; returns index, trainer state
function M.verify(path)
   local index, state = M.read_index(path)
   check_rank_files(path, index, opener(path), index.optimizer ~= nil and index.optimizer ~= json.null)
   return index, state
end

-- loads a step directory into sharded (+ optimizer; base as in M.resume);
-- returns the trainer state table and the index. Works for any saved world size. Everything is
-- checked before anything is copied.
function M.load(path, sharded, optimizer, base)
   local index, state = M.read_index(path)
   check_base(path, index.frozen, sharded, base)
   check_layout(path, index.units, sharded:layout())
   local get_file = opener(path)
   check_rank_files(path, index, get_file, optimizer ~= nil)
   local opt_sd = optimizer and optimizer:state_dict()
   -- reads the saved range into dst (through a host buffer when dst is on a GPU)
   local function load_into(dst, old, key, lo, hi)
      local h = dst.device >= 0 and T.zeros(dst.shape, dst.dtype) or dst:zero()
      if hi > lo then gather_range(get_file, index.world_size, old, key, lo, hi, h:ptr()) end
      if h ~= dst then dst:copy(h); h:free() end
   end
   for i, u in ipairs(sharded.units) do
      local old = index.units[i]
      local lo = u.shard_offset
      local hi = math.min(u.shard_offset + u.shard_size, u.numel)
      load_into(u.shard, old, 'param', lo, hi)
      if opt_sd then
         for _, k in ipairs({'exp_avg', 'exp_avg_sq'}) do load_into(opt_sd.tensors[u.name .. '.' .. k], old, k, lo, hi) end
      end
   end
   return state, index
end

-- the inverse of save with state = {name -> stateful}: loads the step
-- directory into sharded and restores every stateful part through its own
-- load_state_dict (the optimizer: moments from the rank files, its step
-- count from trainer_state). base: what this run's frozen parameters come
-- from (named when an adapter checkpoint's base differs). Returns the
-- trainer state and the index.
function M.resume(path, sharded, state, base)
   local saved, index = M.load(path, sharded, state.optimizer, base)
   if state.optimizer then
      local sd = state.optimizer:state_dict()
      sd.t = saved.optimizer_t
      state.optimizer:load_state_dict(sd)
   end
   for k, obj in pairs(state) do
      if k ~= 'optimizer' and saved[k] ~= nil then obj:load_state_dict(saved[k]) end
   end
   return saved, index
end

return M
