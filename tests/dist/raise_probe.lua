-- Run on 3 ranks by tests/dist/test_failure.lua: rank 1 raises a Lua error
-- while the others wait in an all-reduce.
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
dist.init()
dist.barrier()
if dist.rank == 1 then error('injected failure on this rank', 0) end
local x = fsdp.full({4}, 1)
dist.all_reduce(x, 'sum')
return 0
