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
--
-- A step is written under a temporary name and renamed into place when it is
-- complete; `latest` is replaced atomically after that. A half-written step
-- is never named by `latest`, so it is never loaded. Loading at a different
-- world size reads, for each unit, the byte ranges of the old rank files that
-- overlap this rank's new slice.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local json = require 'fsdp.json'
local fs = require 'fsdp.fs'
local ffi, C, check = bind.ffi, bind.C, bind.check

local M = {}
M.FORMAT, M.VERSION = 'fsdp-lua-checkpoint', 1

local function step_name(step) return string.format('step_%08d', step) end
local function rank_file(r) return string.format('rank_%05d.safetensors', r) end
M.step_name, M.rank_file = step_name, rank_file

local function write_text(path, text)
   check(C.fsdp_file_write_atomic(path, text, #text), 'checkpoint')
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
   for k, v in pairs(meta or {}) do check(C.fsdp_st_writer_set_metadata(w, k, tostring(v)), 'checkpoint') end
   local ok, err = pcall(check, C.fsdp_st_writer_save(w, path), 'checkpoint')
   for _, t in ipairs(staged) do t:free() end
   if not ok then error(err, 0) end
end

-- state: {step, sharded, state = {name -> stateful}, trainer = table (json),
-- model_config, model_name, keep_last, comm (optional: rank, world_size,
-- barrier, broadcast_string)}. Collective: every rank calls it. One replica
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
   -- rank 0 picks the temporary name and tells the others
   local tmp = dir .. '/.' .. name .. '.tmp-' .. fs.pid() .. '-' .. os.time()
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
      for r = 0, slices - 1 do
         local path = tmp .. '/' .. rank_file(r)
         local f = io.open(path, 'rb')
         if not f then error('checkpoint: ' .. path .. ' was not written', 0) end
         local size = f:seek('end')
         f:close()
         files[rank_file(r)] = {bytes = size, crc32 = tonumber(C.fsdp_file_crc32(path))}
      end
      local trainer = state.trainer or {}
      if state.optimizer then trainer.optimizer_t = state.optimizer.t end
      local index = {
         format = M.FORMAT, version = M.VERSION, step = state.step, world_size = slices,
         ranks = comm and comm.world_size or 1,
         strategy = sh.strategy, model = {name = state.model_name, config = state.model_config},
         units = sh:layout(), files = files, tokenizer_dir = state.tokenizer_dir,
         optimizer = state.optimizer and state.optimizer:state_dict().hyper or json.null,
      }
      write_text(tmp .. '/trainer_state.json', json.encode(trainer, ' '))
      write_text(tmp .. '/index.json', json.encode(index, ' '))
      local old
      if fs.exists(final) then -- re-saving a step: keep the old one until the new one is in place
         old = dir .. '/.' .. name .. '.old-' .. fs.pid()
         os.rename(final, old)
      end
      check(C.fsdp_dir_commit(tmp, final), 'checkpoint')
      write_text(dir .. '/latest', name .. '\n')
      if old then fs.remove_tree(old) end
      if state.keep_last and state.keep_last > 0 then M.prune(dir, state.keep_last) end
   end
   if comm and comm.barrier then comm.barrier() end
   return final
end

-- removes all but the newest `keep` complete steps and stale temporaries
function M.prune(dir, keep)
   local steps = {}
   for _, n in ipairs(fs.list(dir)) do
      if n:match('^step_%d+$') then steps[#steps + 1] = n end
   end
   for i = 1, #steps - keep do fs.remove_tree(dir .. '/' .. steps[i]) end
end

-- the directory `latest` names, or nil when there is no checkpoint
function M.latest(dir)
   local s = fs.read(dir .. '/latest')
   if not s then return nil end
   local name = s:match('^%s*(step_%d+)%s*$')
   if not name then
      error(string.format("checkpoint: %s/latest does not name a step (contents: %q)", dir, s:sub(1, 60)), 0)
   end
   local path = dir .. '/' .. name
   if not fs.is_dir(path) then
      error(string.format('checkpoint: %s/latest names %s, which does not exist', dir, name), 0)
   end
   return path
end

local function field(index, path, key, kind)
   local v = index[key]
   if type(v) ~= kind then
      error(string.format("checkpoint: %s/index.json: field '%s' should be a %s, got %s", path, key, kind, type(v)), 0)
   end
   return v
end

-- reads and validates index.json and the rank files' sizes and checksums
function M.read_index(path)
   local text = fs.read(path .. '/index.json')
   if not text then error('checkpoint: ' .. path .. '/index.json is missing', 0) end
   local ok, index = pcall(json.decode, text)
   if not ok then error('checkpoint: ' .. path .. '/index.json: ' .. index, 0) end
   if type(index) ~= 'table' then error('checkpoint: ' .. path .. '/index.json is not an object', 0) end
   if index.format ~= M.FORMAT then
      error(string.format("checkpoint: %s/index.json: format is '%s', expected '%s'", path, tostring(index.format), M.FORMAT), 0)
   end
   field(index, path, 'step', 'number')
   field(index, path, 'world_size', 'number')
   field(index, path, 'units', 'table')
   field(index, path, 'files', 'table')
   for r = 0, index.world_size - 1 do
      local fname = rank_file(r)
      local info = index.files[fname]
      if type(info) ~= 'table' then
         error(string.format("checkpoint: %s/index.json: files lacks '%s'", path, fname), 0)
      end
      local fpath = path .. '/' .. fname
      local f = io.open(fpath, 'rb')
      if not f then error('checkpoint: ' .. fpath .. ' is missing', 0) end
      local size = f:seek('end')
      f:close()
      if size ~= info.bytes then
         error(string.format('checkpoint: %s has %d bytes but the index says %d (truncated or replaced)', fpath, size, info.bytes), 0)
      end
      local crc = tonumber(C.fsdp_file_crc32(fpath))
      if crc ~= info.crc32 then
         error(string.format('checkpoint: %s: crc32 %d does not match the index (%d): the file is corrupted', fpath, crc, info.crc32), 0)
      end
   end
   return index
end

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
local function gather_range(get_file, path, old_world, old_unit, key, lo, hi, dst)
   local S = old_unit.padded / old_world
   local info = ffi.new('fsdp_st_info')
   for r = math.floor(lo / S), math.min(old_world - 1, math.floor((hi - 1) / S)) do
      local f = get_file(r)
      local name = old_unit.name .. '.' .. key
      local i = C.fsdp_st_find(f, name)
      if i < 0 then error(string.format("checkpoint: %s/%s has no tensor '%s'", path, rank_file(r), name), 0) end
      C.fsdp_st_get_info(f, i, info)
      if info.dtype ~= 0 or tonumber(info.nbytes) ~= S * 4 then
         error(string.format("checkpoint: %s/%s: tensor '%s' should be f32 of %d elements", path, rank_file(r), name, S), 0)
      end
      local src = ffi.cast('const float*', C.fsdp_st_data(f, i))
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

-- loads a step directory into sharded (+ optimizer); returns the trainer
-- state table and the index. Works for any saved world size.
function M.load(path, sharded, optimizer)
   local index = M.read_index(path)
   check_layout(path, index.units, sharded:layout())
   local get_file = opener(path)
   local opt_sd = optimizer and optimizer:state_dict()
   -- reads the saved range into dst (through a host buffer when dst is on a GPU)
   local function load_into(dst, old, key, lo, hi)
      local h = dst.device >= 0 and T.zeros(dst.shape, dst.dtype) or dst:zero()
      if hi > lo then gather_range(get_file, path, index.world_size, old, key, lo, hi, h:ptr()) end
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
   local trainer = fs.read(path .. '/trainer_state.json')
   if not trainer then error('checkpoint: ' .. path .. '/trainer_state.json is missing', 0) end
   local ok, state = pcall(json.decode, trainer)
   if not ok then error('checkpoint: ' .. path .. '/trainer_state.json: ' .. state, 0) end
   return state, index
end

-- the inverse of save with state = {name -> stateful}: loads the step
-- directory into sharded and restores every stateful part through its own
-- load_state_dict (the optimizer: moments from the rank files, its step
-- count from trainer_state). Returns the trainer state and the index.
function M.resume(path, sharded, state)
   local saved, index = M.load(path, sharded, state.optimizer)
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
