-- bench/collectives.lua: milliseconds per collective on this machine's ranks
-- for the sizes of one GPT-2 124M block (7.09M f32 parameters, 28 MB), run
-- by bench/dist.sh under --nproc-per-node 2 with the shared-memory path
-- (default) and with MPI alone (FSDP_COMM_SHM=0). Prints one BENCH line on
-- rank 0.
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
dist.init()
local W = dist.world_size
local reps = tonumber(arg and arg[1]) or 20
local n = math.floor(7087872 / W)
local send, recv = fsdp.full({n}, 1), fsdp.empty({n * W})
local big, rs = fsdp.full({n * W}, 1), fsdp.empty({n})
local function timed(f)
   for _ = 1, 2 do f() end
   dist.barrier()
   local t0 = fsdp.clock()
   for _ = 1, reps do f() end
   dist.barrier()
   return (fsdp.clock() - t0) / reps * 1000
end
local ag = timed(function() dist.world:all_gather(recv, send) end)
local rsc = timed(function() dist.world:reduce_scatter(rs, big, 'avg') end)
local ar = timed(function() dist.world:all_reduce(big, 'sum') end)
local bar = timed(function() dist.world:barrier() end)
if dist.rank == 0 then
   print('BENCH ' .. fsdp.json.encode {ranks = W, bytes = n * W * 4, all_gather_ms = ag, reduce_scatter_ms = rsc,
                                       all_reduce_ms = ar, barrier_ms = bar, shm = os.getenv('FSDP_COMM_SHM') ~= '0'})
end
return 0
