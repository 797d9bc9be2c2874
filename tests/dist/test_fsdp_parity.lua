-- Sharding is exact up to float rounding: 20 steps of minGPT (f32, global
-- batch 12, 2 micro-batches of gradient accumulation, clipping at 1.0) on
-- 2, 3 and 4 ranks with every strategy (hybrid as 2 groups of 2) give the
-- losses and final parameters of one rank, within 1e-5 relative.
-- Why not bitwise: the ranks' gradients are averaged by the collective
-- (sum then divide, in a different order than one rank's batch sums), and
-- the row blocks each rank's GEMMs see differ, so sums round differently.
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'

local dir = D.tmpdir()
local args = 'recipes/train_mingpt.lua --max-steps 20 --batch-size 12 --grad-accum-steps 2 --seq-len 32 --warmup-steps 5 ' ..
             '--max-grad-norm 1.0 --eval-every 0 --log-every 10 --sample-tokens 0 --preset gpt-nano '

local function job(name, n, extra)
   local status, out = D.run(n, args .. (extra or '') .. ' --checkpoint-dir ' .. dir .. '/' .. name ..
                                ' --run-dir ' .. dir .. '/' .. name .. '.run')
   t.check(status == 0, '%s: exit %d\n%s', name, status, out)
   return out
end

job('one', 1, '--strategy none')
local ref_losses = D.losses(dir .. '/one.run/metrics.jsonl')
local ref_params = D.flat(dir .. '/one/step_00000020')
t.check(ref_losses[20] ~= nil, 'the one-rank run logged 20 steps')

local cases = {
   {2, 'full'}, {2, 'grad_op'}, {2, 'none'},
   {3, 'full'}, {3, 'grad_op'}, {3, 'none'},
   {4, 'full'}, {4, 'grad_op'}, {4, 'none'},
   {4, 'hybrid_full', '--hybrid-group-size 2'}, {4, 'hybrid_grad_op', '--hybrid-group-size 2'},
}
for _, c in ipairs(cases) do
   local n, strategy = c[1], c[2]
   local name = n .. '_' .. strategy
   job(name, n, '--strategy ' .. strategy .. ' ' .. (c[3] or ''))
   local losses = D.losses(dir .. '/' .. name .. '.run/metrics.jsonl')
   local worst = 0
   for step = 1, 20 do
      local a, b = losses[step], ref_losses[step]
      if not a then worst = math.huge; break end
      worst = math.max(worst, math.abs(a - b) / math.abs(b))
   end
   t.check(worst <= 1e-5, '%s: losses differ from one rank by %.3g relative', name, worst)
   local rel, where = D.max_rel_diff(D.flat(dir .. '/' .. name .. '/step_00000020'), ref_params)
   t.check(rel <= 1e-5, '%s: final parameters differ from one rank by %.3g relative (in %s)', name, rel, where)
   print(string.format('%-18s loss rel diff %.2e, params rel diff %.2e', name, worst, rel))
end

os.execute('rm -rf ' .. dir)
return t.done()
