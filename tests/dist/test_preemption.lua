-- Preemption and restarts on 2 ranks:
--  * SIGTERM (what SLURM sends) during a run: every rank finishes its step,
--    a checkpoint is written, the job exits 0 saying so; the same command
--    resumes and its losses continue exactly as an uninterrupted run's;
--  * Ctrl-C (SIGINT through mpiexec) likewise: checkpoint, exit 0, how to
--    resume; two Ctrl-C in a row end a one-process run at once;
--  * --max-restarts 1 with a rank killed mid-run: the launcher restarts the
--    job, it resumes from `latest` and completes, and its final parameters
--    equal the uninterrupted run's.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'
local fs = require 'fsdp.fs'

local dir = D.tmpdir()
local common = 'recipes/train_mingpt.lua --preset gpt-nano --max-steps 120 --batch-size 8 --seq-len 32 --checkpoint-every 20 ' ..
               '--eval-every 0 --log-every 1 --sample-tokens 0 --warmup-steps 5 '

-- the reference: uninterrupted
local st, out = D.run(2, common .. '--checkpoint-dir ' .. dir .. '/ref --run-dir ' .. dir .. '/ref.run')
t.check(st == 0, 'reference run failed:\n%s', out)
local ref = D.losses(dir .. '/ref.run/metrics.jsonl')

local function pids(pattern)
   local p = io.popen("pgrep -f -- '" .. pattern .. "'")
   local out_ = {}
   for l in p:lines() do out_[#out_ + 1] = l end
   p:close()
   return out_
end

local function wait_for(path, pattern, seconds)
   for _ = 1, seconds * 20 do
      local s = fs.read(path)
      if s and s:find(pattern, 1, true) then return s end
      os.execute('sleep 0.05')
   end
end

-- start a job in the background; returns the paths of its log and status
local function background(name, launcher_flags)
   local m = dir .. '/' .. name
   os.execute(string.format('(OMP_NUM_THREADS=1 %s %s %s --checkpoint-dir %s --run-dir %s.run > %s.log 2>&1; ' ..
                            'echo $? > %s.status) &', D.bin, launcher_flags, common, m, m, m, m))
   return m
end

do -- SIGTERM
   local m = background('term', '--nproc-per-node 2')
   t.check(wait_for(m .. '.run/metrics.jsonl', '"step":30,', 120), 'the job did not reach step 30')
   for _, pid in ipairs(pids('mpiexec.*' .. m .. '.run')) do os.execute('kill -TERM ' .. pid) end
   local status = wait_for(m .. '.status', '\n', 60)
   t.check(status and tonumber(status) == 0, 'a preempted job exits 0, got %s', tostring(status))
   local log = fs.read(m .. '.log') or ''
   local stopped = tonumber(log:match('SIGTERM received: stopped after step (%d+)'))
   t.check(stopped ~= nil, 'the job should say it stopped on SIGTERM:\n%s', log)
   t.check(stopped and fs.is_dir(string.format('%s/step_%08d', m, stopped)), 'a checkpoint of step %s exists', tostring(stopped))
   t.check(fs.exists(m .. '.run/preempted'), 'the run directory says it was preempted (for the batch script to requeue)')
   -- the same command resumes and finishes; losses equal the reference
   local st2, out2 = D.run(2, common .. '--checkpoint-dir ' .. m .. ' --run-dir ' .. m .. '.run')
   t.check(st2 == 0 and out2:find(string.format('(step %d,', stopped or -1), 1, true), 'resuming failed:\n%s', out2)
   t.check(not fs.exists(m .. '.run/preempted'), 'a finished run clears the preempted marker')
   local got = D.losses(m .. '.run/metrics.jsonl')
   local same = true
   for s = 1, 120 do if got[s] ~= ref[s] then same = false; print('step', s, got[s], ref[s]) break end end
   t.check(same, 'losses after the preemption differ from the uninterrupted run')
end

do -- Ctrl-C: mpiexec passes the first to every rank; the run stops as on SIGTERM
   local m = background('int', '--nproc-per-node 2')
   t.check(wait_for(m .. '.run/metrics.jsonl', '"step":30,', 120), 'the job did not reach step 30')
   for _, pid in ipairs(pids('mpiexec.*' .. m .. '.run')) do os.execute('kill -INT ' .. pid) end
   local status = wait_for(m .. '.status', '\n', 60)
   t.check(status and tonumber(status) == 0, 'a job stopped by Ctrl-C exits 0, got %s', tostring(status))
   local log = fs.read(m .. '.log') or ''
   local stopped = tonumber(log:match('SIGINT received: stopped after step (%d+)'))
   t.check(stopped ~= nil, 'the job should say it stopped on Ctrl-C (SIGINT):\n%s', log)
   t.check(stopped and fs.is_dir(string.format('%s/step_%08d', m, stopped)), 'a checkpoint of step %s exists',
           tostring(stopped))
   t.check(log:find('run the same command to resume', 1, true), 'the job says how to resume:\n%s', log)
end

do -- a second Ctrl-C ends a run at once (one process, no launcher)
   local m = dir .. '/int2'
   os.execute(string.format('(OMP_NUM_THREADS=1 %s %s --max-steps 100000 --checkpoint-dir %s --run-dir %s.run > %s.log 2>&1; ' ..
                            'echo $? > %s.status) &', D.bin, 'recipes/train_mingpt.lua --preset gpt-mini --batch-size 16 --seq-len 256 --eval-every 0 --log-every 1 ' ..
                            '--sample-tokens 0 --max-steps 100000', m, m, m, m))
   t.check(wait_for(m .. '.run/metrics.jsonl', '"step":2,', 120), 'the one-process job did not reach step 2')
   local ps = pids('train_mingpt.*' .. m .. '.run')
   for _, pid in ipairs(ps) do os.execute('kill -INT ' .. pid .. '; sleep 0.3; kill -INT ' .. pid) end
   local status = wait_for(m .. '.status', '\n', 30)
   t.check(status and tonumber(status) == 130, 'two Ctrl-C end the process at once (exit 130), got %s', tostring(status))
   local log = fs.read(m .. '.log') or ''
   t.check(not log:find('stopped after step', 1, true), 'the second Ctrl-C should not wait for the checkpoint:\n%s', log)
end

do -- a killed rank with --max-restarts 1
   local m = background('restart', '--max-restarts 1 --nproc-per-node 2')
   -- checkpoints come from --checkpoint-every; kill a rank after the first one
   os.execute('sleep 0')
   t.check(wait_for(m .. '.run/metrics.jsonl', '"step":45,', 120), 'the job did not reach step 45')
   local ranks = {}
   for p in io.popen("for p in $(pgrep -x fsdp-lua); do grep -q -a -- '" .. m .. ".run' /proc/$p/cmdline 2>/dev/null && echo $p; done"):lines() do
      ranks[#ranks + 1] = p
   end
   t.check(#ranks >= 2, 'found %d ranks', #ranks)
   if ranks[#ranks] then os.execute('kill -9 ' .. ranks[#ranks]) end
   local status = wait_for(m .. '.status', '\n', 180)
   t.check(status and tonumber(status) == 0, 'the restarted job should complete with 0, got %s\n%s', tostring(status),
           fs.read(m .. '.log') or '')
   local log = fs.read(m .. '.log') or ''
   t.check(log:find('restarting it (1 of 1)', 1, true), 'the launcher should say it restarted:\n%s', log)
   local rel = D.max_rel_diff(D.flat(m .. '/step_00000120'), D.flat(dir .. '/ref/step_00000120'))
   t.check(rel == 0, 'final parameters differ from the uninterrupted run by %.3g relative', rel)
end

for _, p in ipairs(pids(dir)) do os.execute('kill -9 ' .. p .. ' 2>/dev/null') end
os.execute('rm -rf ' .. dir)
return t.done()
