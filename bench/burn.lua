-- A competing process for busy-machine measurements (bench/threads.sh,
-- issue 17's "a busy machine does not halve throughput"): square sgemms on
-- --threads threads in a loop until --seconds have passed.
--
--   fsdp-lua bench/burn.lua [--threads 2] [--seconds 3600] [--size 1024]
local fsdp = require 'fsdp'
local C = fsdp.C
local opt = fsdp.options('bench/burn.lua', {
   {'threads', 2, 'threads the load uses'},
   {'seconds', 3600, 'stop after this long'},
   {'size', 1024, 'M = N = K of the products'},
}, arg)
fsdp.set_num_threads(opt.threads)
local n = opt.size
local a, b, o = fsdp.empty({n, n}), fsdp.empty({n, n}), fsdp.empty({n, n})
local rng = fsdp.rng(1)
C.fsdp_rng_fill_uniform(rng, a:ptr(), n * n, -1, 1)
C.fsdp_rng_fill_uniform(rng, b:ptr(), n * n, -1, 1)
local t0, count = fsdp.clock(), 0
while fsdp.clock() - t0 < opt.seconds do
   assert(C.fsdp_matmul_forward_cpu(o:ptr(), a:ptr(), b:ptr(), nil, n, n, n, 0, 0, 0) == 0)
   count = count + 1
end
print(string.format('burn: %d products of %d^3 in %.0f s', count, n, fsdp.clock() - t0))
