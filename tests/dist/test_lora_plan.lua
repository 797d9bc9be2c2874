-- The memory planner accounts for frozen and LoRA parameters: for minGPT
-- (6 layers, 128 wide, 8 x 64 tokens per rank) with LoRA r=8 on c_attn and
-- everything else frozen, on 1 rank (none) and 2 ranks (full, grad_op, bf16
-- gathers, activation checkpointing), the planned model state equals what
-- the engine allocates (frozen slices in the gather dtype, nothing else for
-- them) and the planned per-rank peak is within 10% of the measured one;
-- the report lists the frozen slice apart.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'

for _, c in ipairs({{1, 'none'}, {2, 'full'}, {2, 'grad_op'}, {2, 'full', 'ac'}, {1, 'none', 'ac'},
                    {2, 'full', '-', 'bf16'}, {2, 'grad_op', '-', 'bf16'}}) do
   local st, out = D.run(c[1], 'tests/dist/lora_plan_probe.lua ' .. c[2] .. ' ' .. (c[3] or '-') .. ' ' .. (c[4] or 'f32'))
   t.check(st == 0, 'probe failed:\n%s', out)
   local n = 0
   for json in out:gmatch('PLAN (%b{})') do
      n = n + 1
      local m = fsdp.json.decode(json)
      local err = math.abs(m.predicted - m.measured) / m.measured
      print(string.format('%d rank(s) %-8s %-3s %-4s rank %d: state planned %s, measured %s; peak planned %s, ' ..
                          'measured %s (%.1f%%)', c[1], c[2], c[3] or '', c[4] or 'f32', m.rank,
                          fsdp.log.bytes(m.predicted_state), fsdp.log.bytes(m.measured_state),
                          fsdp.log.bytes(m.predicted), fsdp.log.bytes(m.measured), err * 100))
      t.check(m.predicted_state == m.measured_state, '%d ranks %s %s: planned state %d vs allocated %d bytes', c[1],
              c[2], c[4] or 'f32', m.predicted_state, m.measured_state)
      t.check(m.trainable == m.sharded_trainable, 'the plan counts %d trainable parameters, fsdp.shard %d',
              m.trainable, m.sharded_trainable)
      t.check(err <= 0.10, '%d ranks %s %s: planned %d vs measured %d bytes (%.1f%% off)', c[1], c[2], c[3] or '',
              m.predicted, m.measured, err * 100)
   end
   t.check(n == c[1], '%d rank(s) should report, %d did', c[1], n)
end

-- the report: trainable and frozen apart, the frozen slice in bf16
local model = require('models.mingpt').GPT {vocab_size = 256, block_size = 64, n_layer = 6, n_head = 4, n_embd = 128}
fsdp.lora(model, {targets = {'c_attn'}, r = 8, alpha = 16})
local plan = require 'fsdp.plan'
local r = plan.compute(model, {world_size = 4, strategy = 'full', batch = 2, seq_len = 64, vocab = 256, width = 128,
                               param_dtype = 'bf16'})
local text = plan.report(r)
print(text)
t.check(text:find('trainable, ', 1, true) and text:find('frozen params (bf16 slice)', 1, true),
        'the report shows the frozen parameters apart:\n%s', text)
t.check(r.optimizer == 8 * r.grads / 4 and r.grads < 4 * r.trainable_parameters / 4 + 4 * 4 * 7 + 1,
        'no gradient or optimizer state for frozen parameters: grads %d, optimizer %d bytes', r.grads, r.optimizer)

-- `fsdp-lua plan` of the LoRA recipe adds the adapters (and freezes the base) as the run would
do
   local st, out = t.sh(fsdp.root .. '/build/fsdp-lua plan recipes/finetune_lora.lua --model ' .. fsdp.root ..
                        '/tests/golden/hf5/llama --lora-r 8 --world-size 2 2>&1')
   local trainable, frozen = out:match('%(([%d%.]+)M trainable, ([%d%.]+)M frozen%)')
   t.check(st == 0 and trainable and frozen and tonumber(frozen) > tonumber(trainable) and
           out:find('frozen params (f32 slice)', 1, true),
           'plan of finetune_lora --lora-r 8 counts the adapters as trainable and the base as frozen:\n%s', out)
end
return t.done()
