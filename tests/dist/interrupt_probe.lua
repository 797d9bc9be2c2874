-- Run on 2 and 3 ranks by tests/dist/test_interrupt.lua: the Lua side of
-- the interrupt protocol (fsdp.dist: interrupt, interrupted, resync).
--  1. rank 0 sets its flag and enters a blocking all_reduce no one else
--     joins: it raises "interrupted while waiting in all_reduce of 4000
--     bytes"; the others see dist.interrupted() at their next check.
--  2. the last rank sets its flag while the others wait on an async
--     all_gather: their wait raises, naming another rank.
--  3. a sharded model's forward on rank 0 interrupted in a gather: after
--     the resync a training step works and every rank agrees.
-- After each, every rank calls dist.resync() and the next collectives must
-- give the right results. Prints "interrupt probe ok" on every rank that
-- passed.
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

-- (the barrier last: no rank sets its flag for the next scene before every
-- rank has checked its own here)
local function in_step(what)
   check(not dist.interrupted(), '%s: still interrupted after resync', what)
   local y = fsdp.full({1000}, rank + 1)
   dist.all_reduce(y, 'sum')
   check(y:get(999) == W * (W + 1) / 2, '%s: all_reduce after resync gave %s', what, tostring(y:get(999)))
   dist.barrier()
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

-- 3. a sharded model: rank 0 is interrupted in its forward, waiting for a
-- gather rank 1 never starts; after the resync both run a training step
-- and get the same loss and gradient norm as each other
local mingpt = require 'models.mingpt'
local AG = require 'fsdp.autograd'
local model = mingpt.GPT {preset = 'gpt-nano', vocab_size = 64, block_size = 16}
local sharded = fsdp.shard(model, {strategy = 'full', seed = 1})
local x, y = fsdp.zeros({2, 16}, 'i32'), fsdp.zeros({2, 16}, 'i32')
for i = 0, 31 do x:ptr()[i] = (i * 7) % 64; y:ptr()[i] = (i * 5 + 1) % 64 end
if rank == 0 then
   dist.interrupt()
   local ok, err = pcall(function() return model:loss(x, y) end)
   check(not ok and tostring(err):find('interrupted while waiting in all_gather', 1, true),
         'sharded forward: %s', tostring(err))
else
   check(wait_heard(), 'scene 3: never heard of rank 0\'s interrupt')
end
dist.resync()
AG.reset()
fsdp.end_step()
local loss = model:loss(x, y)
local l = loss:item()
fsdp.backward(loss)
local norm = math.sqrt(sharded:grad_sumsq())
check(dist.max_number(l) == dist.sum_number(l) / W and dist.max_number(norm) == norm,
      'scene 3: ranks disagree after the resync (loss %s, norm %s)', tostring(l), tostring(norm))
check(l == l and norm == norm and norm > 0, 'scene 3: loss %s norm %s', tostring(l), tostring(norm))

if failures == 0 then print(string.format('rank %d: interrupt probe ok', rank)) end
return failures == 0 and 0 or 1
