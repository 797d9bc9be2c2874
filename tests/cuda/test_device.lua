-- tests/cuda/test_device.lua: --device selection (lua/fsdp/device.lua). Runs
-- on every machine: without a GPU, `cuda` must fail with a clear reason and
-- `auto` must fall back to the CPU saying why; with one, both pick cuda:0.
local t = require 'tests.lua.harness'
local device = require 'fsdp.device'

local cpu = device.get('cpu')
t.check(cpu.kind == 'cpu', 'cpu: got %s', cpu.kind)

t.raises(function() device.get('tpu') end, {'--device tpu', 'expected auto, cpu, cuda'}, 'bad name')

local n, why = device.cuda_device_count()
local auto = device.get('auto')
print('auto: ' .. device.describe(auto))
if n and n > 0 then
   t.check(auto.kind == 'cuda' and auto.index == 0, 'auto with a GPU: got %s', auto.kind)
   local dev = device.get('cuda')
   t.check(dev.name ~= '' and dev.info.sm_count > 0, 'cuda device info is empty')
   t.raises(function() device.get('cuda:' .. n) end, {'only ' .. n .. ' GPU'}, 'index past the end')
else
   t.check(auto.kind == 'cpu' and auto.why, 'auto without a GPU must fall back with a reason')
   local msg = t.raises(function() device.get('cuda') end, {'--device cuda'}, 'cuda without a GPU')
   print('cuda: ' .. tostring(msg))
   t.check(why and #why > 0, 'no reason given for the missing GPU')
end
return t.done()
