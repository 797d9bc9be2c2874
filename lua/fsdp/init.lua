-- fsdp: the library a recipe loads. It gathers the pieces:
--   tensors (fsdp.zeros, fsdp.empty, ...), ops, autograd, nn, the options
--   parser, data, checkpoints and logging.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'

local M = {}

M.C = bind.C
M.ffi = bind.ffi
M.root = bind.root
M.Tensor = T.Tensor
M.empty, M.zeros, M.full, M.from_table, M.mmap = T.empty, T.zeros, T.full, T.from_table, T.mmap
M.is_tensor = T.is_tensor
M.memory_stats, M.reset_peak_memory, M.empty_cache = T.memory_stats, T.reset_peak_memory, T.empty_cache
M.end_step = T.end_step

M.ops = require 'fsdp.ops'
M.autograd = require 'fsdp.autograd'
M.nn = require 'fsdp.nn'
M.json = require 'fsdp.json'
M.cli = require 'fsdp.cli'
M.log = require 'fsdp.log'
M.data = require 'fsdp.data'
M.checkpoint = require 'fsdp.checkpoint'
M.shard = require('fsdp.shard').shard
M.lora = function(model, opts) return require('fsdp.lora').apply(model, opts) end

M.backward = M.autograd.backward
M.no_grad = M.autograd.no_grad

-- the process's place in the job (a world of one until fsdp.dist starts)
M.rank, M.world_size = 0, 1

function M.set_num_threads(n) bind.C.fsdp_set_num_threads(n) end
function M.get_num_threads() return bind.C.fsdp_get_num_threads() end

-- wall clock in seconds (monotonic, sub-microsecond)
M.clock = require('fsdp.run').now
local ffi = bind.ffi

-- RNG state as text (checkpoints) and back
function M.rng(seed)
   local r = ffi.new('fsdp_rng')
   bind.C.fsdp_rng_seed(r, seed or 0)
   return r
end
function M.rng_state(r)
   local parts = {}
   for i = 0, 3 do parts[i + 1] = string.format('%016x', r.s[i]) end
   return table.concat(parts, ':')
end
function M.rng_restore(r, text)
   local i = 0
   for hex in tostring(text):gmatch('%x+') do
      if i > 3 then break end
      r.s[i] = tonumber(hex:sub(1, 8), 16) * 2ULL^32 + tonumber(hex:sub(9, 16), 16)
      i = i + 1
   end
   if i ~= 4 then error('rng_restore: malformed state ' .. tostring(text), 2) end
end

-- recipe options: fsdp.options(name, specs, arg) -> table (and `given`:
-- the options the command line set, with their spelling). Every value is
-- checked against its spec (fsdp.cli: types, ranges, choices, conflicts)
-- before the recipe goes on; a bad one is an error naming the option, the
-- value and what is accepted. --help prints the options, with the header
-- comment of the script (arg[0]) as its description, and exits the
-- process with status 0.
function M.options(name, specs, args)
   args = args or {}
   M.cli.check_defaults(name, specs)
   local opt, given = M.cli.parse(name, specs, args, specs.description or M.cli.description(args[0]))
   if not opt then
      print(given)
      os.exit(0)
   end
   M.last_options, M.last_given = opt, given
   return opt, given
end

return M
