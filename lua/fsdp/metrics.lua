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
local fs = require 'fsdp.fs'
local json = require 'fsdp.json'
local tensorboard = require 'fsdp.tensorboard'

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

   local ok, err = pcall(fs.mkdirs, run_dir)
   if not ok then return nil, 'metrics: ' .. tostring(err) end
   self.jsonl_path = run_dir .. '/metrics.jsonl'
   self.jsonl, err = io.open(self.jsonl_path, 'a')
   if not self.jsonl then return nil, 'metrics: cannot open ' .. self.jsonl_path .. ': ' .. tostring(err) end
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
   if not self.jsonl then error('metrics:log: ' .. self.run_dir .. ' is closed', 2) end

   wall_time = wall_time or tensorboard.wall_time()
   local line = {step = step, wall_time = wall_time}
   local numbers = {}
   for k, v in pairs(scalars) do
      if type(k) ~= 'string' then error('metrics:log: metric names must be strings, got ' .. tostring(k), 2) end
      if k ~= 'step' then line[k], numbers[k] = v, v end
   end
   local ok, err = self.jsonl:write(json.encode(line), '\n')
   if ok then ok, err = self.jsonl:flush() end
   if not ok then return nil, 'metrics: writing ' .. self.jsonl_path .. ': ' .. tostring(err) end
   if self.tb then return self.tb:add_scalars(step, numbers, wall_time) end
   return true
end

-- where the files are (nil on ranks that do not write)
function Metrics:paths()
   if not self.active then return nil end
   return {jsonl = self.jsonl_path, tensorboard = self.tb and self.tb.path}
end

function Metrics:close()
   if self.jsonl then self.jsonl:close(); self.jsonl = nil end
   if self.tb then self.tb:close(); self.tb = nil end
end

return M
