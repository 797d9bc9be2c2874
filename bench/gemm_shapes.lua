-- The GEMMs of a GPT-2 124M training step, one shape at a time, against a
-- square sgemm of this machine in the same run (interleaved repetitions).
-- For each linear layer [rows, K] @ [N, K]^T (PyTorch's layout) the three
-- products of a step: forward (NT), the input's gradient (NN) and the
-- weight's gradient (TN), through fsdp_matmul_forward_cpu, as ops.linear
-- runs them.
--
--   fsdp-lua bench/gemm_shapes.lua [--rows 4096] [--reps 5] [--threads 0] [--bias true]
--
-- rows = batch x sequence (4 x 1024 = 4096, 4 x 64 = 256). Prints GFLOP/s
-- (best and median) and the share of the square sgemm's best.
local fsdp = require 'fsdp'
local C = fsdp.C

local opt = fsdp.options('bench/gemm_shapes.lua', {
   {'rows', 4096, 'rows of the activations (batch x sequence)'},
   {'reps', 5, 'interleaved repetitions'},
   {'threads', 0, 'threads (0: the library default)'},
   {'bias', true, 'forward with the layer\'s bias, as GPT-2 has'},
   {'layers', 'c_attn,attn.c_proj,c_fc,mlp.c_proj,lm_head', 'which layers to time'},
   {'both_bias', false, 'time each forward with and without its bias'},
   {'clock', 'wall', 'wall time, or cpu: the CPU time of the process (all threads; less disturbed by other '
                     .. 'jobs on a shared machine, the rates are then per CPU-second)', choices = {'wall', 'cpu'}},
}, arg)
if opt.threads > 0 then fsdp.set_num_threads(opt.threads) end
local M = opt.rows
require 'fsdp.run' -- declares clock_gettime with its fsdp_run_timespec
local ts = fsdp.ffi.new('fsdp_run_timespec')
local function now()
   if opt.clock == 'wall' then return fsdp.clock() end
   fsdp.ffi.C.clock_gettime(2, ts) -- CLOCK_PROCESS_CPUTIME_ID
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- GPT-2 124M: c_attn, attn c_proj, c_fc, mlp c_proj, the tied head
local layers = {{'c_attn', 768, 2304}, {'attn.c_proj', 768, 768}, {'c_fc', 768, 3072},
                {'mlp.c_proj', 3072, 768}, {'lm_head', 768, 50257, nobias = true}}
local rng = fsdp.rng(5)
local function rand(n)
   local t = fsdp.empty({n})
   C.fsdp_rng_fill_uniform(rng, t:ptr(), n, -1, 1)
   return t
end

local cases = {}
local sq = 2048
do
   local a, b, o = rand(sq * sq), rand(sq * sq), fsdp.empty({sq * sq})
   cases[#cases + 1] = {name = 'square 2048^3', flops = 2 * sq ^ 3, f = function()
      return C.fsdp_matmul_forward_cpu(o:ptr(), a:ptr(), b:ptr(), nil, sq, sq, sq, 0, 0, 0)
   end}
end
local wanted = {}
for w in opt.layers:gmatch('[^,]+') do wanted[w] = true end
for _, l in ipairs(layers) do
   local name, K, N = l[1], l[2], l[3]
   if not wanted[name] then goto continue end
   local x, w, bias = rand(M * K), rand(N * K), rand(N)
   local y, dy, dx, dw = fsdp.empty({M * N}), rand(M * N), fsdp.empty({M * K}), fsdp.empty({N * K})
   local bp = (opt.bias and not l.nobias) and bias:ptr() or nil
   local fl = 2 * M * N * K
   cases[#cases + 1] = {name = name .. ' fwd (NT)', flops = fl, f = function()
      return C.fsdp_matmul_forward_cpu(y:ptr(), x:ptr(), w:ptr(), bp, M, N, K, 0, 1, 0)
   end}
   cases[#cases + 1] = {name = name .. ' dx (NN)', flops = fl, f = function()
      return C.fsdp_matmul_forward_cpu(dx:ptr(), dy:ptr(), w:ptr(), nil, M, K, N, 0, 0, 0)
   end}
   cases[#cases + 1] = {name = name .. ' dw (TN)', flops = fl, f = function()
      return C.fsdp_matmul_forward_cpu(dw:ptr(), dy:ptr(), x:ptr(), nil, N, K, M, 1, 0, 1)
   end}
   if opt.both_bias and not l.nobias then
      cases[#cases + 1] = {name = name .. ' fwd (NT) ' .. (bp and 'no bias' or 'bias'), flops = fl, f = function()
         return C.fsdp_matmul_forward_cpu(y:ptr(), x:ptr(), w:ptr(), bp == nil and bias:ptr() or nil, M, N, K, 0, 1, 0)
      end}
   end
   ::continue::
end

for _, c in ipairs(cases) do assert(c.f() == 0, fsdp.ffi.string(C.fsdp_last_error())); c.t = {} end
for _ = 1, opt.reps do
   for _, c in ipairs(cases) do
      local t0 = now()
      c.f()
      c.t[#c.t + 1] = now() - t0
   end
end
local function best_med(list)
   local s = {unpack(list)}
   table.sort(s)
   return s[1], s[math.floor((#s + 1) / 2)]
end
local peak = 0
for _, c in ipairs(cases) do
   c.best, c.med = best_med(c.t)
   if c.name:match('^square') then peak = c.flops / c.best end
end
print(string.format('GEMMs of a GPT-2 124M step at %d rows, %d threads, %d reps%s, %s clock', M,
                    fsdp.get_num_threads(), opt.reps, opt.bias and ' (forward with bias)' or '', opt.clock))
print(string.format('  %-24s %9s %9s %9s %8s', 'product', 'ms (best)', 'GFLOP/s', 'median', '% peak'))
for _, c in ipairs(cases) do
   print(string.format('  %-24s %9.2f %9.1f %9.1f %7.1f%%', c.name, c.best * 1e3, c.flops / c.best / 1e9,
                       c.flops / c.med / 1e9, 100 * c.flops / c.best / peak))
end
