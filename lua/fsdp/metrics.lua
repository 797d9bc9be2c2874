-- fsdp.metrics: a run directory's metrics, written by rank 0.
--
--   local m = metrics.open(opt.run_dir, {rank = dist.rank})
--   m:log(step, {loss = 2.31, lr = 3e-4, tokens_per_s = 41000})
--   m:close()
--
-- Each :log appends one JSON line {"loss":..,"lr":..,"step":..,"wall_time":..}
-- to RUN_DIR/metrics.jsonl (appended to, so a resumed run continues it) and
-- writes the same numbers as one TensorBoard event to a new event file under
-- RUN_DIR/tb/. Both are flushed at every :log. Values that are not numbers
-- (flags, names) go to the JSON line only. On other ranks every method is a
-- no-op, so the loop can call them unconditionally.
--
-- A write that fails (a full disk, a file size limit) is an error naming the
-- file, and what it left half-written is cut off, so metrics.jsonl only ever
-- holds whole lines. With {best_effort = true} (the recipes'
-- --metrics-best-effort) it is instead one loud warning, and the run goes on
-- without that file. A line cut short by an earlier run (killed, or out of
-- disk) is cut off when the file is opened again, with a warning.
local ffi = require 'ffi'
local fs = require 'fsdp.fs'
local json = require 'fsdp.json'
local log = require 'fsdp.log'
local tensorboard = require 'fsdp.tensorboard'

pcall(ffi.cdef, 'int truncate(const char *path, long length);')

local M = {}

local Metrics = {}
Metrics.__index = Metrics
M.Metrics = Metrics

-- metrics.open(run_dir, {rank = r, tensorboard = true}) -> Metrics, or
-- nil, err when the directory or its files cannot be created
function M.open(run_dir, opts)
   opts = opts or {}
   if type(run_dir) ~= 'string' or run_dir == '' then
      error('metrics.open: wants a run directory, got ' .. tostring(run_dir), 2)
   end
   local rank = opts.rank or 0
   local self = setmetatable({run_dir = run_dir, rank = rank, active = rank == 0}, Metrics)
   if not self.active then return self end

   self.best_effort = opts.best_effort and true or false
   local ok, err = pcall(fs.mkdirs, run_dir)
   if not ok then return nil, 'metrics: ' .. tostring(err) end
   self.jsonl_path = run_dir .. '/metrics.jsonl'
   ok, err = M.repair(self.jsonl_path)
   if not ok then return nil, err end
   self.jsonl, err = io.open(self.jsonl_path, 'a')
   if not self.jsonl then return nil, 'metrics: cannot open ' .. self.jsonl_path .. ': ' .. tostring(err) end
   self.jsonl_good = self.jsonl:seek('end') -- the size up to the last whole line
   if opts.tensorboard ~= false then
      ok, err = pcall(fs.mkdirs, run_dir .. '/tb')
      if not ok then self.jsonl:close(); return nil, 'metrics: ' .. tostring(err) end
      self.tb, err = tensorboard.open(run_dir .. '/tb')
      if not self.tb then self.jsonl:close(); return nil, 'metrics: ' .. err end
   end
   return self
end

-- one step's metrics; `wall_time` (seconds since the epoch) defaults to now.
-- A `step` among the metrics is allowed when it equals the step argument.
function Metrics:log(step, scalars, wall_time)
   if type(step) ~= 'number' or step ~= math.floor(step) then
      error('metrics:log: wants an integer step, got ' .. tostring(step), 2)
   end
   if type(scalars) ~= 'table' then error('metrics:log: wants a table of metrics, got ' .. type(scalars), 2) end
   if (scalars.step ~= nil and scalars.step ~= step) or scalars.wall_time ~= nil then
      error(string.format('metrics:log: step and wall_time are filled in by log itself (step %s, metrics hold step %s%s)',
                          tostring(step), tostring(scalars.step), scalars.wall_time and ' and a wall_time' or ''), 2)
   end
   if not self.active then return true end
   if self.closed then error('metrics:log: ' .. self.run_dir .. ' is closed', 2) end

   wall_time = wall_time or tensorboard.wall_time()
   local line = {step = step, wall_time = wall_time}
   local numbers = {}
   for k, v in pairs(scalars) do
      if type(k) ~= 'string' then error('metrics:log: metric names must be strings, got ' .. tostring(k), 2) end
      if k ~= 'step' then line[k], numbers[k] = v, v end
   end
   if self.jsonl then
      local text = json.encode(line) .. '\n'
      local ok, err = self.jsonl:write(text)
      if ok then ok, err = self.jsonl:flush() end
      -- stdio does not always report a write the kernel refused (seen with
      -- a file size limit: fflush returned 0 after an EFBIG), so the file's
      -- position must show the whole line as well
      if ok then
         local at = self.jsonl:seek('cur')
         if at ~= self.jsonl_good + #text then
            ok, err = nil, string.format('the file is at byte %s after the line, not %d: the write was cut short', tostring(at),
                                         self.jsonl_good + #text)
         end
      end
      if ok then self.jsonl_good = self.jsonl_good + #text
      else self:failed('jsonl', err) end
   end
   if self.tb then
      local ok, err = self.tb:add_scalars(step, numbers, wall_time)
      if not ok then self:failed('tb', err) end
   end
   return true
end

-- a sink failed: cut off what it half wrote, then stop the run, or (best
-- effort) say so once, loudly, and go on without it
function Metrics:failed(which, err)
   local path, note
   if which == 'jsonl' then
      path = self.jsonl_path
      pcall(self.jsonl.close, self.jsonl)
      self.jsonl = nil
      if ffi.C.truncate(path, self.jsonl_good) == 0 then
         note = string.format('the line it was writing is cut off; %s holds %d bytes of whole lines', path, self.jsonl_good)
      else
         note = string.format('its last line may be cut short (cutting it off failed too): %s', path)
      end
   else
      path = self.tb.path
      note = self.tb.note or ''
      pcall(self.tb.close, self.tb)
      self.tb = nil
   end
   local why = tostring(err):gsub('^metrics: ', ''):gsub('^tensorboard: ', '')
   local msg = string.format('metrics: writing %s failed: %s; %s', path, why, note)
   if not self.best_effort then
      error(msg .. ' (the run stops here: pass --metrics-best-effort to train on without the file)', 0)
   end
   log.warn('%s\n*** --metrics-best-effort: TRAINING GOES ON WITHOUT %s ***', msg, path)
end

-- cuts off a last line that was cut short (no final newline) by an earlier
-- run, with a warning; true, or nil and an error
function M.repair(path)
   local f = io.open(path, 'rb')
   if not f then return true end
   local size = f:seek('end')
   if size == 0 then f:close(); return true end
   local back = math.min(size, 65536)
   f:seek('set', size - back)
   local tail = f:read(back)
   f:close()
   if tail:sub(-1) == '\n' then return true end
   local last_nl = tail:match('.*()\n')
   local keep = last_nl and (size - back + last_nl) or (back == size and 0 or nil)
   if not keep then return nil, 'metrics: ' .. path .. ' ends with a line longer than 64 KiB without a newline: not a metrics file?' end
   if ffi.C.truncate(path, keep) ~= 0 then return nil, 'metrics: cannot cut the incomplete last line off ' .. path end
   log.warn('metrics: %s ended with an incomplete line (%d bytes, from a run that stopped mid-write): cut off', path, size - keep)
   return true
end

-- where the files are (nil on ranks that do not write)
function Metrics:paths()
   if not self.active then return nil end
   return {jsonl = self.jsonl_path, tensorboard = self.tb and self.tb.path}
end

function Metrics:close()
   self.closed = true
   if self.jsonl then
      local ok, err = self.jsonl:close()
      self.jsonl = nil
      if not ok then
         self.jsonl = {close = function() end}
         self:failed('jsonl', err)
      end
   end
   if self.tb then self.tb:close(); self.tb = nil end
end

return M
