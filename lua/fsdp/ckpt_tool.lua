-- `fsdp-lua ckpt info DIR`: what a checkpoint holds. DIR is a checkpoint
-- directory (its `latest` is followed) or one step directory. The index and
-- every rank file are validated on the way (sizes, crc32).
local ckpt = require 'fsdp.checkpoint'
local fs = require 'fsdp.fs'
local log = require 'fsdp.log'

local M = {}

local function usage()
   return 'usage: fsdp-lua ckpt info DIR   (DIR: a checkpoint directory or one of its step_* directories)'
end

function M.info(dir)
   local path = dir
   if not fs.exists(dir .. '/index.json') then
      path = ckpt.latest(dir)
      if not path then error('ckpt: ' .. dir .. ' has no latest and no index.json: not a checkpoint', 0) end
   end
   local index = ckpt.read_index(path)
   local lines = {}
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
   local total = 0
   for _, u in ipairs(index.units) do total = total + u.numel end
   say('  %d units, %d parameters (%.2fM)', #index.units, total, total / 1e6)
   for _, u in ipairs(index.units) do
      say('    %-8s %10d elements (padded %d), %d tensors: %s%s', u.name, u.numel, u.padded, #u.params,
          u.params[1] and u.params[1].name or '', #u.params > 1 and ', ...' or '')
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
   if args[1] ~= 'info' or not args[2] then error(usage(), 0) end
   print(M.info(args[2]))
   return 0
end

return M
