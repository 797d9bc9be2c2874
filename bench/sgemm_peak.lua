-- The CPU ceiling the training benchmarks are measured against: the best
-- sgemm rate of this machine through the library's own matmul entry point
-- (fsdp_matmul_forward_cpu -> OpenBLAS), on square matrices, with the thread
-- count the training run uses.
--
--   fsdp-lua bench/sgemm_peak.lua [--size 2048] [--reps 5] [--threads 0]
--
-- Prints a human line and a machine line: "RESULT sgemm gflops=<best> ...".
local fsdp = require 'fsdp'
local C = fsdp.C

local opt = fsdp.options('bench/sgemm_peak.lua', {
   {'size', 2048, 'M = N = K of the square product'},
   {'reps', 10, 'timed products; the best one counts'},
   {'threads', 0, 'threads (0: the library default, all cores)'},
}, arg)

if opt.threads > 0 then fsdp.set_num_threads(opt.threads) end
local n = opt.size

local a, b, out = fsdp.empty({n, n}), fsdp.empty({n, n}), fsdp.empty({n, n})
local rng = fsdp.rng(1)
C.fsdp_rng_fill_uniform(rng, a:ptr(), n * n, -1, 1)
C.fsdp_rng_fill_uniform(rng, b:ptr(), n * n, -1, 1)

local function product()
   assert(C.fsdp_matmul_forward_cpu(out:ptr(), a:ptr(), b:ptr(), nil, n, n, n, 0, 0, 0) == 0)
end

-- warm: pages faulted, OpenBLAS's buffers and threads up, the clocks ramped
for _ = 1, 3 do product() end
local flops = 2 * n * n * n
local best, total = math.huge, 0
for _ = 1, opt.reps do
   local t0 = fsdp.clock()
   product()
   local dt = fsdp.clock() - t0
   total = total + dt
   best = math.min(best, dt)
end

local gflops = flops / best / 1e9
local core = fsdp.ffi.string(C.fsdp_blas_core())
print(string.format('sgemm %dx%dx%d, %d threads, OpenBLAS %s kernels: best %.1f GFLOP/s, mean %.1f GFLOP/s over %d reps',
                    n, n, n, fsdp.get_num_threads(), core, gflops, flops * opt.reps / total / 1e9, opt.reps))
print(string.format('RESULT sgemm gflops=%.2f threads=%d size=%d core=%s', gflops, fsdp.get_num_threads(), n, core))
a:free(); b:free(); out:free()
