-- Run on 2 ranks by tests/dist/test_fatal_messages.lua: every rank raises at
-- once, right after the job has formed.
local dist = require 'fsdp.dist'
dist.init()
error(string.format('injected failure on rank %d of %d', dist.rank, dist.world_size), 0)
