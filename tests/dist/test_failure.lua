-- A failed rank never leaves the others hanging:
--  * a rank that raises: the job stops within 60 s, non-zero, and the error
--    names the rank;
--  * a rank killed with SIGKILL mid-run: the job exits non-zero within 60 s;
--  * the job killed while it writes checkpoints: `latest` still names a
--    complete, valid step, and the same command resumes from it.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'
local ckpt = require 'fsdp.checkpoint'

local dir = D.tmpdir()

do -- a rank raises
   local t0 = os.time()
   local status, out = D.run(3, 'tests/dist/raise_probe.lua')
   local took = os.time() - t0
   t.check(status ~= 0, 'the job should fail, exit %d', status)
   t.check(took <= 60, 'the job took %d s to stop', took)
   t.check(out:find('rank 1: error: injected failure on this rank', 1, true), 'the error names rank 1:\n%s', out)
end

-- a training job in the background; returns a function that waits for it
-- and gives (status, seconds from the kill to its end)
local corpus = fsdp.root .. '/data/tinyshakespeare.txt'
local function background(name, extra)
   local marker = dir .. '/' .. name
   local cmd = string.format('OMP_NUM_THREADS=1 %s --nproc-per-node 3 recipes/train_mingpt.lua --max-steps 100000 ' ..
                             '--batch-size 6 --seq-len 32 --eval-every 0 --log-every 1 --sample-tokens 0 ' ..
                             '--run-dir %s.run %s > %s.log 2>&1; echo $? > %s.status',
                             D.bin, marker, extra or '', marker, marker)
   os.execute('(' .. cmd .. ') &')
   return marker
end

local function wait_for(path, pattern, seconds)
   for _ = 1, seconds * 10 do
      local f = io.open(path)
      if f then
         local s = f:read('*a')
         f:close()
         if s:find(pattern, 1, true) then return true end
      end
      os.execute('sleep 0.1')
   end
   return false
end

local function rank_pids(marker)
   -- the ranks: processes named fsdp-lua (the launcher became mpiexec) whose
   -- command line carries this job's marker
   local p = io.popen("for p in $(pgrep -x fsdp-lua); do grep -q -a -- '" .. marker ..
                      ".run' /proc/$p/cmdline 2>/dev/null && echo $p; done | sort -n")
   local pids = {}
   for line in p:lines() do pids[#pids + 1] = line end
   p:close()
   return pids
end

do -- kill -9 one rank mid-run
   local m = background('killed')
   t.check(wait_for(m .. '.run/metrics.jsonl', '"step":5,', 60), 'the job did not reach step 5')
   local pids = rank_pids(m)
   t.check(#pids == 3, 'found %d ranks of the job, want 3', #pids)
   os.execute('kill -9 ' .. pids[#pids])
   local t0 = os.time()
   local ended = wait_for(m .. '.status', '\n', 60)
   t.check(ended, 'the job was still running 60 s after a rank was killed')
   local status = tonumber((require('fsdp.fs').read(m .. '.status') or ''):match('%d+'))
   t.check(status and status ~= 0, 'the job should exit non-zero, got %s', tostring(status))
   print(string.format('killed rank: job ended %d s after the kill with status %s', os.time() - t0, tostring(status)))
end

do -- killed while checkpointing every step
   local m = background('saving', '--checkpoint-every 1 --checkpoint-dir ' .. dir .. '/ck')
   os.execute('sleep 0.05')
   t.check(wait_for(m .. '.run/metrics.jsonl', '"step":8,', 60), 'the saving job did not reach step 8')
   for _, pid in ipairs(rank_pids(m)) do os.execute('kill -9 ' .. pid .. ' 2>/dev/null') end
   wait_for(m .. '.status', '\n', 60)
   local latest = ckpt.latest(dir .. '/ck')
   t.check(latest ~= nil, 'no latest after the kill')
   local ok, index = pcall(ckpt.read_index, latest)
   t.check(ok, 'latest names a damaged step: %s', tostring(index))
   local status, out = D.run(2, 'recipes/train_mingpt.lua --batch-size 6 --seq-len 32 --eval-every 0 --sample-tokens 0 ' ..
                             '--checkpoint-dir ' .. dir .. '/ck --max-steps ' .. ((ok and index.step or 0) + 2))
   t.check(status == 0 and out:find('resumed from ' .. latest, 1, true), 'resuming after the kill failed:\n%s', out)
end

-- whatever happened above, leave no rank of these jobs running
for _, name in ipairs({'killed', 'saving'}) do
   for _, pid in ipairs(rank_pids(dir .. '/' .. name)) do os.execute('kill -9 ' .. pid .. ' 2>/dev/null') end
end
os.execute('rm -rf ' .. dir)
return t.done()
