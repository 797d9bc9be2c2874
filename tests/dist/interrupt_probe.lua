-- Run on 2 and 3 ranks by tests/dist/test_interrupt.lua: the Lua side of
-- the interrupt protocol (fsdp.dist: interrupt, interrupted, resync).
--  1. rank 0 sets its flag and enters a blocking all_reduce no one else
--     joins: it raises "interrupted while waiting in all_reduce of 4000
--     bytes"; the others see dist.interrupted() at their next check.
--  2. the last rank sets its flag while the others wait on an async
--     all_gather: their wait raises, naming another rank.
-- After each, every rank calls dist.resync() and an all_reduce must give
-- the right sum. Prints "interrupt probe ok" on every rank that passed.
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local ffi = require 'ffi'
ffi.cdef 'int usleep(unsigned int usec);'
dist.init()
local rank, W = dist.rank, dist.world_size
local failures = 0
local function check(cond, msg, ...)
   if not cond then
      failures = failures + 1
      io.stderr:write(string.format('rank %d: FAIL: ' .. msg .. '\n', rank, ...))
   end
end

local function wait_heard()
   for _ = 1, 5000 do
      if dist.interrupted() then return true end
      ffi.C.usleep(2000)
   end
   return false
end

local function in_step(what)
   local y = fsdp.full({1000}, rank + 1)
   dist.all_reduce(y, 'sum')
   check(y:get(999) == W * (W + 1) / 2, '%s: all_reduce after resync gave %s', what, tostring(y:get(999)))
   check(not dist.interrupted(), '%s: still interrupted after resync', what)
end

-- 1
dist.barrier()
if rank == 0 then
   local x = fsdp.full({1000}, 1)
   dist.interrupt()
   local ok, err = pcall(function() dist.all_reduce(x, 'sum') end)
   check(not ok and err:find('rank 0: interrupted while waiting in all_reduce of 4000 bytes', 1, true),
         'blocking all_reduce: %s', tostring(err))
   x = nil
   collectgarbage() -- the tensor is kept for MPI until the resync
else
   check(wait_heard(), 'scene 1: never heard of rank 0\'s interrupt')
end
dist.resync()
in_step('scene 1')

-- 2
local p
if rank < W - 1 then
   local send, recv = fsdp.full({100}, rank), fsdp.empty({100 * W})
   p = dist.world:all_gather(recv, send, true)
   local ok, err = pcall(function() p:wait() end)
   check(not ok and err:find('interrupted while waiting in all_gather', 1, true) and
         err:find('by another rank', 1, true), 'async wait: %s', tostring(err))
else
   ffi.C.usleep(200000)
   dist.interrupt()
   check(dist.interrupted(), 'own interrupt not seen')
end
dist.resync()
check(not p or p.req == nil, 'scene 2: the request survived the resync')
in_step('scene 2')

if failures == 0 then print(string.format('rank %d: interrupt probe ok', rank)) end
return failures == 0 and 0 or 1
