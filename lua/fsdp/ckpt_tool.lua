-- `fsdp-lua ckpt info DIR` / `fsdp-lua ckpt verify DIR`: what resuming from
-- DIR would do, found the way the recipes' resume finds it (checkpoint.plan),
-- and refused where resume would refuse (exit status 1, the same message).
-- DIR is a checkpoint directory (its `latest` is followed; without one, the
-- newest complete step) or one step directory. `verify` checks everything a
-- load checks without a model (index, trainer state, manifest, rank files
-- and their tensors) and prints the decision; `info` prints what the step
-- holds as well. Neither changes anything: the stale temporaries a run
-- would remove are listed.
local ckpt = require 'fsdp.checkpoint'
local fs = require 'fsdp.fs'
local log = require 'fsdp.log'

local M = {}

local function usage()
   return 'usage: fsdp-lua ckpt info|verify DIR   (DIR: a checkpoint directory or one of its step_* directories)'
end

-- {lines}, step path (nil when a run would start from scratch), index
local function decide(dir)
   local lines = {}
   local function say(fmt, ...) lines[#lines + 1] = string.format(fmt, ...) end
   if fs.exists(dir .. '/index.json') then
      local index, trainer = ckpt.verify(dir)
      say('step directory %s: step %d verifies (index, trainer state, manifest, %d rank file(s))', dir, index.step,
          index.world_size)
      return lines, dir, index, trainer
   end
   if not fs.exists(dir) then
      error(string.format('ckpt: %s does not exist: not a checkpoint (a run with --checkpoint-dir %s would start from step 0)',
                          dir, dir), 0)
   end
   if not fs.is_dir(dir) then error('ckpt: ' .. dir .. ' is not a directory', 0) end
   local plan = ckpt.plan(dir)
   for _, s in ipairs(plan.stale) do
      say('a run would %s the stale temporary %s/%s (%s)', s.action == 'restore' and ('restore ' .. s.step .. ' from') or 'remove',
          dir, s.name, s.why)
   end
   for _, n in ipairs(plan.notes) do say('%s', n) end
   if not plan.path then
      say('no checkpoint in %s: a run would start from step 0', dir)
      return lines
   end
   local path = plan.path
   for _, s in ipairs(plan.stale) do
      if s.action == 'restore' and s.step == plan.name then path = dir .. '/' .. s.name end
   end
   local index, trainer = ckpt.verify(path)
   say('resume would load %s (step %d, %s), saved by %s rank(s) as %d slice(s): it verifies',
       plan.path, index.step, plan.how == 'latest' and 'named by latest' or 'the newest complete step',
       tostring(index.ranks or index.world_size), index.world_size)
   return lines, path, index, trainer
end

function M.verify(dir)
   local lines = decide(dir)
   return table.concat(lines, '\n')
end

function M.info(dir)
   local lines, path, index, trainer = decide(dir)
   if not path then return table.concat(lines, '\n') end
   local function say(fmt, ...) lines[#lines + 1] = string.format(fmt, ...) end
   say('checkpoint %s', path)
   say('  format %s v%s, step %d', index.format, tostring(index.version), index.step)
   say('  saved by %s rank(s) as %d slice(s), strategy %s', tostring(index.ranks or index.world_size),
       index.world_size, tostring(index.strategy))
   if type(index.model) == 'table' then
      local cfg = {}
      if type(index.model.config) == 'table' then
         for k, v in pairs(index.model.config) do cfg[#cfg + 1] = k .. '=' .. tostring(v) end
      end
      table.sort(cfg)
      say('  model %s: %s', tostring(index.model.name), table.concat(cfg, ' '))
   end
   if type(trainer.data) == 'table' then
      say('  trainer state: step %d, optimizer step %s, data cursor %s (%s batches)', trainer.step,
          tostring(trainer.optimizer_t), tostring(trainer.data.cursor), tostring(trainer.data.batches))
   end
   local total = 0
   for _, u in ipairs(index.units) do total = total + u.numel end
   say('  %d units, %d parameters (%.2fM)', #index.units, total, total / 1e6)
   for _, u in ipairs(index.units) do
      say('    %-8s %10d elements (padded %d), %d tensors: %s%s', u.name, u.numel, u.padded, #u.params,
          u.params[1] and u.params[1].name or '', #u.params > 1 and ', ...' or '')
   end
   if type(index.frozen) == 'table' then
      local f = index.frozen
      say('  adapter checkpoint: trainable parameters only; %d frozen parameters in %d tensors come from base %s ' ..
          '(fingerprint %s), needed to resume, evaluate or export --merge', f.parameters, f.tensors,
          tostring(f.base), tostring(f.fingerprint))
   end
   local names = {}
   for k in pairs(index.files) do names[#names + 1] = k end
   table.sort(names)
   for _, k in ipairs(names) do
      say('  %s  %s  crc32 %08x  ok', k, log.bytes(index.files[k].bytes), index.files[k].crc32)
   end
   return table.concat(lines, '\n')
end

function M.main(args)
   local cmd, dir = args[1], args[2]
   if (cmd ~= 'info' and cmd ~= 'verify') or not dir or args[3] then error(usage(), 0) end
   dir = dir:gsub('(.)/+$', '%1')
   print(M[cmd](dir))
   return 0
end

return M
