-- Health checks: a NaN injected into a parameter at step 3 makes that
-- step's loss non-finite; run.health catches it at step 3: policy 'skip'
-- leaves the parameters as they were and training continues, policy 'stop'
-- raises an error naming the step.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local run = require 'fsdp.run'
local mingpt = require 'models.mingpt'
local AdamW = require 'optim.adamw'
local clip = require 'optim.clip'

local function train(policy)
   local model = mingpt.GPT {preset = 'gpt-nano', vocab_size = 64, block_size = 16}
   local sharded = fsdp.shard(model, {strategy = 'none', seed = 3})
   local opt = AdamW.new(sharded, {lr = 1e-3})
   local x, y = fsdp.empty({2, 16}, 'i32'), fsdp.empty({2, 16}, 'i32')
   for i = 0, 31 do x:ptr()[i] = i % 64; y:ptr()[i] = (i + 1) % 64 end
   local caught = {}
   local w = sharded.units[2].shard:ptr()
   for step = 1, 5 do
      local saved
      if step == 3 then saved = w[7]; w[7] = 0 / 0 end -- inject
      local loss = fsdp.backward(model:loss(x, y))
      local norm = clip.global_norm(sharded)
      if step == 3 then w[7] = saved end                  -- the bad value came from outside
      local before = sharded.units[3].shard:ptr()[0]
      local verdict = run.health(step, loss, norm, policy)
      if verdict == 'ok' then opt:step(1e-3) else caught[#caught + 1] = step end
      t.check(verdict ~= 'skip' or sharded.units[3].shard:ptr()[0] == before, 'a skipped step changes nothing')
      sharded:zero_grad()
   end
   return caught
end

local caught = train('skip')
t.check(#caught == 1 and caught[1] == 3, 'skip: the NaN should be caught at step 3 only, caught at {%s}', table.concat(caught, ','))
t.raises(function() train('stop') end, {'step 3', 'loss is nan', '--on-nan stop'}, 'stop policy')
return t.done()
