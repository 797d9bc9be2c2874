-- Resume is exact: 60 steps straight equal 30 steps, stop, resume, 30 more,
-- bitwise: every logged loss and the final checkpoint's parameters and
-- optimizer state.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local st = require 'fsdp.safetensors'
local json = fsdp.json

local tmp = os.tmpname()
os.remove(tmp)
local common = fsdp.root .. '/build/fsdp-lua recipes/train_mingpt.lua --max-steps 60 --batch-size 8 --seq-len 32 ' ..
               '--warmup-steps 10 --eval-every 0 --log-every 10 --sample-tokens 0 --checkpoint-every 30 '

local function run(dir, extra)
   local status, out = t.sh(common .. '--checkpoint-dir ' .. dir .. ' --run-dir ' .. dir .. '.run ' .. (extra or ''))
   t.check(status == 0, 'run failed (%d): %s', status, out)
   return out
end

local function losses(path)
   local out = {}
   for line in io.lines(path) do
      local m = json.decode(line)
      if m.loss then out[m.step] = m.loss end
   end
   return out
end

os.execute('mkdir -p ' .. tmp)
run(tmp .. '/straight')
run(tmp .. '/split', '--stop-after 30')
local resumed = run(tmp .. '/split')
t.check(resumed:find('resumed from ' .. tmp .. '/split/step_00000030 (step 30,', 1, true),
        'the resumed run should say which checkpoint and step: %s', resumed)

local a, b = losses(tmp .. '/straight.run/metrics.jsonl'), losses(tmp .. '/split.run/metrics.jsonl')
local n = 0
for step = 1, 60 do
   t.check(a[step] ~= nil and a[step] == b[step], 'step %d: loss %s straight vs %s resumed', step, tostring(a[step]), tostring(b[step]))
   n = n + 1
end

-- final parameters and optimizer state, tensor by tensor, bitwise
local fa = st.open(tmp .. '/straight/step_00000060/rank_00000.safetensors')
local fb = st.open(tmp .. '/split/step_00000060/rank_00000.safetensors')
local names = fa:names()
t.check(#names > 0 and #names == #fb:names(), 'the final checkpoints hold different tensors')
for _, name in ipairs(names) do
   local pa, da = fa:data(name)
   local pb, db = fb:data(name)
   local same = da.nbytes == db.nbytes
   local ua, ub = fsdp.ffi.cast('const uint8_t*', pa), fsdp.ffi.cast('const uint8_t*', pb)
   for i = 0, da.nbytes - 1 do if ua[i] ~= ub[i] then same = false; break end end
   t.check(same, '%s differs between the straight and the resumed run', name)
end
os.execute('rm -rf ' .. tmp)
return t.done()
