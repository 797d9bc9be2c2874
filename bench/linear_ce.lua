-- The LM head and its loss at GPT-2's shape, forward + backward: the
-- unfused ops (ops.linear -> [rows, vocab] logits -> ops.cross_entropy)
-- against ops.linear_cross_entropy in chunks of rows, in one run with
-- interleaved repetitions. Prints time (min, median), the share of the
-- square sgemm's rate the head's 3 GEMMs reach, and the peak memory above
-- the inputs (the allocator's own count).
--
--   fsdp-lua bench/linear_ce.lua [--rows 4096] [--vocab 50257] [--width 768] [--reps 3]
--                                [--chunks 0,256,1024] [--threads 0]
--
-- chunk 0 is the op's default (LINEAR_CE_CHUNK_BYTES of logits per chunk).
-- The last line is for scripts: RESULT linear_ce rows=... unfused_ms=... ...
local fsdp = require 'fsdp'
local ops = fsdp.ops
local C = fsdp.C

local opt = fsdp.options('bench/linear_ce.lua', {
   {'rows', 4096, 'tokens (batch x sequence)'},
   {'vocab', 50257, 'vocabulary'},
   {'width', 768, 'hidden size'},
   {'reps', 3, 'interleaved repetitions'},
   {'chunks', '0,256,1024', 'chunk sizes in rows to time (0: the default)'},
   {'threads', 0, 'threads (0: the library default)'},
}, arg)
if opt.threads > 0 then fsdp.set_num_threads(opt.threads) end
local N, V, W = opt.rows, opt.vocab, opt.width

local rng = fsdp.rng(11)
local x0, w = fsdp.empty({N, W}), fsdp.empty({V, W})
C.fsdp_rng_fill_normal(rng, x0:ptr(), N * W, 0, 1)
C.fsdp_rng_fill_normal(rng, w:ptr(), V * W, 0, 0.02)
local y = fsdp.empty({N}, 'i32')
for i = 0, N - 1 do y:ptr()[i] = tonumber(C.fsdp_rng_next(rng) % V) end
w.requires_grad = true
w.grad = fsdp.zeros({V, W}) -- a parameter's gradient exists before the step, as under fsdp.shard

local function step(head)
   x0.requires_grad = true
   x0.grad = nil
   local h = ops.scale(x0, 1) -- the hidden state is a step temporary, as in a model
   fsdp.reset_peak_memory()
   local base = fsdp.memory_stats().current
   local t0 = fsdp.clock()
   local loss = fsdp.backward(head(h))
   local dt = fsdp.clock() - t0
   return dt, fsdp.memory_stats().peak - base, loss
end

local variants = {{name = 'unfused', f = function(h) return ops.cross_entropy(ops.linear(h, w), y) end}}
for c in opt.chunks:gmatch('[^,]+') do
   local rows = tonumber(c)
   variants[#variants + 1] = {
      name = rows == 0 and string.format('chunked (default %d rows)',
                                         math.floor(ops.LINEAR_CE_CHUNK_BYTES / (4 * V)))
             or string.format('chunked %d rows', rows),
      f = function(h) return ops.linear_cross_entropy(h, w, y, -100, {chunk_rows = rows > 0 and rows or nil}) end}
end

-- the square sgemm rate, for the share of peak
local sq = 2048
local a, b, o = fsdp.empty({sq * sq}), fsdp.empty({sq * sq}), fsdp.empty({sq * sq})
C.fsdp_rng_fill_uniform(rng, a:ptr(), sq * sq, -1, 1)
C.fsdp_rng_fill_uniform(rng, b:ptr(), sq * sq, -1, 1)
local peak = 0
local function square()
   local t0 = fsdp.clock()
   C.fsdp_matmul_forward_cpu(o:ptr(), a:ptr(), b:ptr(), nil, sq, sq, sq, 0, 0, 0)
   peak = math.max(peak, 2 * sq ^ 3 / (fsdp.clock() - t0))
end

for _, v in ipairs(variants) do v.t, v.loss = {}, nil; step(v.f) end -- warm
for _ = 1, opt.reps do
   square(); square()
   for _, v in ipairs(variants) do
      local dt, mem, loss = step(v.f)
      v.t[#v.t + 1], v.mem, v.loss = dt, mem, loss
   end
end

local flops = 3 * 2 * N * V * W
print(string.format('LM head + loss, forward and backward: %d rows, width %d, vocab %d, %d threads, %d reps; '
                    .. 'logits %.0f MiB; square sgemm best %.1f GFLOP/s', N, W, V, fsdp.get_num_threads(), opt.reps,
                    N * V * 4 / 2^20, peak / 1e9))
print(string.format('  %-28s %9s %9s %8s %12s %10s', 'variant', 'min ms', 'median ms', '% peak', 'peak MiB', 'loss'))
local res = {}
for _, v in ipairs(variants) do
   table.sort(v.t)
   local lo, mid = v.t[1], v.t[math.floor((#v.t + 1) / 2)]
   res[#res + 1] = string.format('%s_ms=%.1f', v.name:gsub('[^%w]+', '_'), mid * 1e3)
   print(string.format('  %-28s %9.1f %9.1f %7.1f%% %12.1f %10.6f', v.name, lo * 1e3, mid * 1e3,
                       100 * flops / lo / peak, v.mem / 2^20, v.loss))
end
print('RESULT linear_ce rows=' .. N .. ' ' .. table.concat(res, ' '))
