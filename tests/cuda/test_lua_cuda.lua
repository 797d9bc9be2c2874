-- tests/cuda/test_lua_cuda.lua: the Lua CUDA path on a real GPU. It runs
-- tests/lua/test_cuda_emu.lua (every op forward and backward vs the CPU,
-- minGPT / Llama / Mixtral training steps vs the CPU, a checkpoint across
-- devices, device memory stats, the recipe with --device cuda) against
-- build/libfsdp_cuda.so instead of the emulated backend. Exits 77 (skipped,
-- not passed) when no GPU is usable.
local device = require 'fsdp.device'
local n, why = device.cuda_device_count()
if not n or n == 0 then
   print('skipped: no GPU (' .. tostring(why or 'none visible') .. ')')
   os.exit(77)
end
REAL_GPU = true
local rc = dofile(require('fsdp.ffi').root .. '/tests/lua/test_cuda_emu.lua')
os.exit(rc)
