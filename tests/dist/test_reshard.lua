-- Checkpoints reshard: a run saved at 4 ranks after 10 steps resumes at 2
-- and at 3 ranks, and the next 10 steps match an uninterrupted 4-rank run
-- (losses and final parameters within 1e-5 relative, as in the parity
-- test; data position and optimizer state carry over too).
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'

local dir = D.tmpdir()
local args = 'recipes/train_mingpt.lua --max-steps 20 --batch-size 12 --seq-len 32 --warmup-steps 5 ' ..
             '--eval-every 0 --log-every 5 --sample-tokens 0 --preset gpt-nano --strategy full '

local function job(n, name, extra)
   local status, out = D.run(n, args .. '--checkpoint-dir ' .. dir .. '/' .. name .. ' --run-dir ' ..
                                dir .. '/' .. name .. '.run ' .. (extra or ''))
   t.check(status == 0, '%s on %d ranks: exit %d\n%s', name, n, status, out)
   return out
end

job(4, 'straight')
job(4, 'saved', '--stop-after 10')
local ref = D.losses(dir .. '/straight.run/metrics.jsonl')
local ref_params = D.flat(dir .. '/straight/step_00000020')
local ref_m = D.flat(dir .. '/straight/step_00000020', 'exp_avg')

for _, n in ipairs({2, 3}) do
   local name = 'to' .. n
   os.execute('cp -r ' .. dir .. '/saved ' .. dir .. '/' .. name)
   local out = job(n, name)
   t.check(out:find('resumed from ' .. dir .. '/' .. name .. '/step_00000010 (step 10, saved by 4 rank(s))', 1, true),
           '%d ranks: should say it resumed from step 10 saved by 4 ranks:\n%s', n, out)
   local losses = D.losses(dir .. '/' .. name .. '.run/metrics.jsonl')
   local worst = 0
   for step = 11, 20 do
      if not losses[step] then worst = math.huge; break end
      worst = math.max(worst, math.abs(losses[step] - ref[step]) / math.abs(ref[step]))
   end
   t.check(worst <= 1e-5, 'resumed at %d ranks: losses of steps 11-20 differ by %.3g relative', n, worst)
   local rel, where = D.max_rel_diff(D.flat(dir .. '/' .. name .. '/step_00000020'), ref_params)
   t.check(rel <= 1e-5, 'resumed at %d ranks: final parameters differ by %.3g (in %s)', n, rel, where)
   local relm = D.max_rel_diff(D.flat(dir .. '/' .. name .. '/step_00000020', 'exp_avg'), ref_m)
   t.check(relm <= 1e-4, 'resumed at %d ranks: final exp_avg differs by %.3g', n, relm)
   print(string.format('4 -> %d ranks: losses %.2e, params %.2e, exp_avg %.2e relative', n, worst, rel, relm))
end
-- the index tool reads any of them
local st, info = t.sh(D.bin .. ' ckpt info ' .. dir .. '/saved')
t.check(st == 0 and info:find('step 10', 1, true) and info:find('saved by 4 rank(s) as 4 slice(s), strategy full', 1, true)
        and info:find('rank_00003.safetensors', 1, true), 'ckpt info output:\n%s', info)
local st2, info2 = t.sh(D.bin .. ' ckpt info ' .. dir .. '/nothing_here')
t.check(st2 == 1 and info2:find('not a checkpoint', 1, true), 'ckpt info on a non-checkpoint:\n%s', info2)

os.execute('rm -rf ' .. dir)
return t.done()
