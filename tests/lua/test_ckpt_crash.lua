-- kill -9 at random points of a run that checkpoints every step, 20 times:
-- after each kill `ckpt verify` accepts what is on disk (a complete step or
-- none: a crash never leaves a step that resume refuses), and running the
-- same command again finishes the run with the final checkpoint bitwise
-- equal to an uninterrupted run's (parameters, optimizer state and trainer
-- state). Stale temporaries left by the kills are removed by the resumes.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local ckpt = require 'fsdp.checkpoint'

local TRIALS = tonumber(os.getenv('FSDP_CRASH_TRIALS') or '') or 20
local bin = fsdp.root .. '/build/fsdp-lua'
local tmp = os.tmpname()
os.remove(tmp)
fs.mkdirs(tmp)
local cmd = 'OMP_NUM_THREADS=1 exec ' .. bin .. ' recipes/train_mingpt.lua --preset gpt-nano --n-layer 1 --batch-size 2 ' ..
            '--seq-len 16 --max-steps 8 --warmup-steps 2 --sample-tokens 0 --eval-every 0 --log-every 1 --checkpoint-every 1 ' ..
            '--keep-last 2 --data ' .. fsdp.root .. '/data/tinyshakespeare.txt '

local function now()
   local p = io.popen('date +%s.%N')
   local s = tonumber(p:read('*l'))
   p:close()
   return s
end

local function final_state(dir)
   local step = dir .. '/step_00000008'
   local ok, index = pcall(ckpt.read_index, step)
   if not ok then return nil, index end
   return {rank = index.files['rank_00000.safetensors'].crc32, trainer = fs.read(step .. '/trainer_state.json')}
end

-- the reference: one run without interruption
local t0 = now()
local status, out = t.sh(cmd .. '--checkpoint-dir ' .. tmp .. '/ref --run-dir ' .. tmp .. '/ref.run')
local duration = now() - t0
t.check(status == 0, 'the reference run failed: %s', out)
local ref = final_state(tmp .. '/ref')
t.check(ref ~= nil, 'the reference run left no step 8')

-- a deterministic sequence of kill times over the run's length
local seed = 12345
local function rand()
   seed = (seed * 1103515245 + 12345) % 2147483648
   return seed / 2147483648
end

local kills, resumed_from, starts, mid_save = 0, {}, {}, 0
for trial = 1, TRIALS do
   local dir = string.format('%s/t%02d', tmp, trial)
   local delay = 0.05 + rand() * duration * 0.85 -- from the start to the last saves of a run
   local p = io.popen('(' .. cmd .. '--checkpoint-dir ' .. dir .. ' --run-dir ' .. dir .. '.run > ' .. dir .. '.log 2>&1) & echo $!')
   local pid = p:read('*l')
   p:close()
   os.execute(string.format('sleep %.3f', delay))
   if os.execute('kill -9 ' .. pid .. ' 2>/dev/null') == 0 then kills = kills + 1 end
   while os.execute('kill -0 ' .. pid .. ' 2>/dev/null') == 0 do os.execute('sleep 0.02') end
   -- what the kill left: something resume accepts (nothing at all when the
   -- kill came before the first save made the directory)
   for _, n in ipairs(fs.list(dir, true)) do
      if n:match('^%.step_.*%.tmp%-') or n == 'latest.tmp' then mid_save = mid_save + 1; break end
   end
   local vs, vo = 0, 'no directory'
   if fs.exists(dir) then vs, vo = t.sh(bin .. ' ckpt verify ' .. dir) end
   t.check(vs == 0, 'trial %d (kill at %.2f s): ckpt verify refuses what the kill left:\n%s', trial, delay, vo)
   local from = vo:match('resume would load %S+/(step_%d+)') or 'scratch'
   resumed_from[#resumed_from + 1] = from
   -- the same command again finishes the run, exactly
   local rs, ro = t.sh(cmd .. '--checkpoint-dir ' .. dir .. ' --run-dir ' .. dir .. '.run')
   t.check(rs == 0, 'trial %d: the rerun failed:\n%s', trial, ro)
   if from ~= 'scratch' then
      t.check(ro:find('resumed from ' .. dir .. '/' .. from, 1, true), 'trial %d: should resume from %s:\n%s', trial, from, ro)
   end
   local got, err = final_state(dir)
   t.check(got and got.rank == ref.rank, 'trial %d (kill at %.2f s, resumed from %s): the final parameters and optimizer state differ from the uninterrupted run (%s)',
           trial, delay, from, tostring(err))
   t.check(got and got.trainer == ref.trainer, 'trial %d: the final trainer state differs:\n%s\nvs\n%s', trial,
           got and got.trainer or '', ref.trainer)
   local left = {}
   for _, n in ipairs(fs.list(dir, true)) do if n:match('^%.') then left[#left + 1] = n end end
   t.check(#left == 0, 'trial %d: temporaries left after the rerun: %s', trial, table.concat(left, ' '))
   starts[#starts + 1] = string.format('%.2f', delay)
end
print(string.format('%d trials (%d killed mid-run, %d of them inside a save), run length %.2f s; kill times %s; resumed from: %s',
                    TRIALS, kills, mid_save, duration, table.concat(starts, ' '), table.concat(resumed_from, ' ')))

if t.failures == 0 then os.execute('rm -rf ' .. tmp) else print('kept ' .. tmp) end
return t.done()
