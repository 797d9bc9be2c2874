-- Supervised fine-tuning end to end (issue 14):
--  1. the masked loss and every gradient of a chat sample (labels -100 on
--     everything but the assistant replies) equal transformers' (the
--     tests/golden/sft_chat fixture, made with transformers 5), within 1e-5;
--  2. chat data prepared with `prepare --format sft` (samples of very
--     different lengths, packed) fine-tuned by recipes/finetune_llama2.lua
--     gives the same per-step losses (within 1e-5 relative) on 1 rank, with
--     gradient accumulation, and on 2, 3 and 4 ranks with the full, grad_op
--     and none strategies: the loss is normalised by the global count of
--     learned tokens, not per rank or micro-batch;
--  3. eval.lua reports the masked loss, the same on 1 and 2 ranks.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'
local hf = require 'fsdp.hf'
local st = require 'fsdp.safetensors'
local fs = require 'fsdp.fs'

local FIX = fsdp.root .. '/tests/golden/sft_chat'

-- 1. parity with transformers
do
   fsdp.set_num_threads(1)
   local model = hf.load(FIX):materialize()
   hf.close(model)
   local e = st.open(FIX .. '/expected.safetensors')
   local x, y = e:tensor('input_ids', 'i32'), e:tensor('targets', 'i32')
   local want = e:tensor('loss', 'f32'):item()
   local got = fsdp.backward(model:loss(x, y))
   t.check(math.abs(got - want) <= 1e-5 * math.abs(want), 'masked loss %.8f, transformers %.8f', got, want)
   local worst, where = 0, nil
   for _, np in ipairs(model:named_parameters()) do
      local g, w = np[2].grad:totable(), e:tensor('grad.' .. np[1], 'f32'):totable()
      local d, s = 0, 0
      for i = 1, #w do d = math.max(d, math.abs(g[i] - w[i])); s = math.max(s, math.abs(w[i])) end
      if s > 0 and d / s > worst then worst, where = d / s, np[1] end
   end
   t.check(worst <= 1e-5, 'gradient of %s off by %.3g relative to transformers', tostring(where), worst)
   print(string.format('masked loss %.6f (transformers %.6f), worst gradient %.2g (%s)', got, want, worst, where))
   e:close()
end

-- 2. the same losses at every world size and accumulation split
local dir = D.tmpdir()
do
   -- chat records with replies of very different lengths
   local words = {'the', 'a', 'cat', 'dog', 'sat', 'on', 'mat', 'and', 'ran', 'far', 'away', 'to', 'see', 'what',
                  'was', 'there', 'in', 'hill', 'town', 'river'}
   local f = assert(io.open(dir .. '/chat.jsonl', 'w'))
   local k = 0
   local function phrase(n)
      local w = {}
      for i = 1, n do k = k + 1; w[i] = words[(k * 7) % #words + 1] end
      return table.concat(w, ' ')
   end
   for i = 1, 160 do
      local msgs = {}
      if i % 3 == 0 then msgs[#msgs + 1] = {role = 'system', content = 'be brief'} end
      msgs[#msgs + 1] = {role = 'user', content = phrase(1 + i % 6)}
      msgs[#msgs + 1] = {role = 'assistant', content = phrase(({1, 2, 4, 9, 18})[i % 5 + 1])}
      f:write(fsdp.json.encode({messages = msgs}), '\n')
   end
   f:close()
   local st_, out = t.sh(D.bin .. ' prepare --format sft --tokenizer ' .. FIX .. ' --input ' .. dir ..
                         '/chat.jsonl --output ' .. dir .. '/prep --val-fraction 0.1 --workers 1')
   t.check(st_ == 0, 'prepare --format sft failed:\n%s', out)
end

local runs = {
   {1, 4, 1, 'full'}, {1, 2, 2, 'full'}, {1, 1, 4, 'full'}, {2, 4, 1, 'full'}, {2, 2, 2, 'grad_op'},
   {4, 4, 1, 'grad_op'}, {2, 4, 1, 'none'}, {3, 6, 1, 'full'}, {1, 6, 1, 'full'}, {1, 3, 2, 'full'},
}
local losses = {}
for i, r in ipairs(runs) do
   local n, bs, acc, strategy = r[1], r[2], r[3], r[4]
   local rd = dir .. '/run' .. i
   local st_, out = D.run(n, 'recipes/finetune_llama2.lua --model ' .. FIX .. ' --data ' .. dir .. '/prep ' ..
                          '--seq-len 96 --batch-size ' .. bs .. ' --grad-accum-steps ' .. acc .. ' --strategy ' ..
                          strategy .. ' --max-steps 4 --lr 1e-3 --warmup-steps 1 --eval-every 0 --param-dtype f32 ' ..
                          '--checkpoint-every 0 --log-every 1 --run-dir ' .. rd)
   t.check(st_ == 0, 'run %d (%d ranks, batch %d x %d, %s) failed:\n%s', i, n, bs, acc, strategy, out)
   losses[i] = st_ == 0 and D.losses(rd .. '/metrics.jsonl') or {}
end
local function same(a, b, what)
   local worst = 0
   for s = 1, 4 do
      if not (losses[a][s] and losses[b][s]) then worst = math.huge break end
      worst = math.max(worst, math.abs(losses[a][s] - losses[b][s]) / math.abs(losses[b][s]))
   end
   t.check(worst <= 1e-5, '%s: losses differ by %.3g relative:\n%s\n%s', what, worst,
           table.concat(losses[a], ' '), table.concat(losses[b], ' '))
   print(string.format('%-48s worst relative difference %.2g', what, worst))
end
for i = 2, 7 do
   same(i, 1, string.format('%d rank(s), batch %d x %d, %s vs 1 rank', runs[i][1], runs[i][2], runs[i][3],
                            runs[i][4]))
end
same(8, 9, '3 ranks, batch 6 vs 1 rank')
same(10, 9, '1 rank, batch 3 x 2 vs 6 x 1')
t.check(losses[1][4] and losses[1][4] < losses[1][1], 'the loss falls: %s', table.concat(losses[1], ' '))

-- 3. eval.lua: the masked loss, the same on 1 and 2 ranks
do
   local l = {}
   for _, n in ipairs({1, 2}) do
      local st_, out = D.run(n, 'recipes/eval.lua --model ' .. FIX .. ' --data ' .. dir .. '/prep --seq-len 96 ' ..
                             '--batch-size 4 --batches 3')
      local v = out:match('learned tokens%): loss ([%d.]+)')
      t.check(st_ == 0 and v, 'eval on %d rank(s):\n%s', n, out)
      l[n] = tonumber(v)
   end
   t.check(l[1] and l[2] and math.abs(l[1] - l[2]) <= 1e-4, 'masked eval loss %s on 1 rank, %s on 2', tostring(l[1]),
           tostring(l[2]))
end
fs.remove_tree(dir)
return t.done()
