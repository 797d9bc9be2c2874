-- The memory planner agrees with what the engine allocates: for minGPT
-- (6 layers, 128 wide, 8 x 64 tokens per rank) on 1 rank (none), 2 ranks
-- (full, grad_op) and with activation checkpointing, the planned per-rank
-- peak is within 10% of the allocator's measured peak. And it answers the
-- question it exists for: Llama-2-70B-shaped training at batch 4 does not
-- fit 8 ranks of 80 GiB.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'

for _, c in ipairs({{1, 'none'}, {2, 'full'}, {2, 'grad_op'}, {2, 'full', 'ac'}, {1, 'none', 'ac'}}) do
   local st, out = D.run(c[1], 'tests/dist/plan_probe.lua ' .. c[2] .. ' ' .. (c[3] or ''))
   t.check(st == 0, 'probe failed:\n%s', out)
   for json in out:gmatch('PLAN (%b{})') do
      local m = fsdp.json.decode(json)
      local err = math.abs(m.predicted - m.measured) / m.measured
      print(string.format('%d rank(s) %-8s %-3s rank %d: planned %s, measured %s (%.1f%%)', c[1], c[2], c[3] or '', m.rank,
                          fsdp.log.bytes(m.predicted), fsdp.log.bytes(m.measured), err * 100))
      t.check(err <= 0.10, '%d ranks %s %s: planned %d vs measured %d bytes (%.1f%% off)', c[1], c[2], c[3] or '',
              m.predicted, m.measured, err * 100)
   end
end

local st, out = t.sh(D.bin .. ' plan recipes/train_mingpt.lua --world-size 8 --memory-per-rank 80GiB ' ..
                     '--n-layer 80 --n-embd 8192 --n-head 64 --seq-len 4096 --batch-size 32')
t.check(st == 0 and out:find('DOES NOT FIT in 80.00 GiB per rank', 1, true), 'a 70B-sized plan on 8 x 80 GiB:\n%s', out)
print(out)
return t.done()
