-- Run as 2 processes with torchrun's env (no MPI) by tests/dist/test_torchrun.lua:
-- fsdp.dist joins the tcp world, reads LOCAL_RANK / LOCAL_WORLD_SIZE, runs
-- the collectives the trainer uses, and refuses sub-groups (hybrid
-- strategies) with a clear message. Prints "probe ok rank R" per rank.
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
dist.init()
local function want(cond, msg, ...)
   if not cond then error(string.format('rank %d: ' .. msg, dist.rank, ...), 0) end
end
want(dist.backend == 'tcp', 'backend %s, want tcp', tostring(dist.backend))
want(dist.world_size == tonumber(os.getenv('WORLD_SIZE')), 'world size %d', dist.world_size)
want(dist.rank == tonumber(os.getenv('RANK')), 'rank %d', dist.rank)
want(dist.local_rank == tonumber(os.getenv('LOCAL_RANK')), 'local rank %d', dist.local_rank)
want(dist.local_world_size == tonumber(os.getenv('LOCAL_WORLD_SIZE')), 'local world size %d', dist.local_world_size)
local n = dist.world_size
want(dist.sum_number(dist.rank + 0.5) == n * (n - 1) / 2 + 0.5 * n, 'sum_number')
want(dist.max_number(dist.rank) == n - 1, 'max_number')
want(dist.broadcast_string(dist.rank == 0 and 'from rank 0' or '') == 'from rank 0', 'broadcast_string')
local x = fsdp.full({5}, dist.rank + 1)
dist.all_reduce(x, 'sum')
for i = 0, 4 do want(x:get_flat(i) == n * (n + 1) / 2, 'all_reduce element %d: %g', i, x:get_flat(i)) end
local ok, err = pcall(function() return dist.world:split(0, dist.rank, 'shard') end)
want(not ok and tostring(err):find('hybrid strategies need an MPI launcher', 1, true),
     'split: %s', tostring(err))
dist.barrier()
print('probe ok rank ' .. dist.rank)
return 0
