-- AdamW + global-norm clipping of the GPT-2 124M shape against this
-- machine's memory bandwidth (issue 17, item 1), measured in one run with
-- interleaved repetitions.
--
--   fsdp-lua bench/adamw.lua [--reps 7] [--threads 0]
--
-- The optimizer step reads a gradient, a parameter and two moments per
-- element and writes the last three: 28 bytes per f32 element. Its bound is
-- those bytes at the copy bandwidth of this machine, measured here on the
-- same cores with the library's own OpenMP kernels over buffers of the
-- model's size:
--   copy     out = x             (fsdp_scale_cpu, a fresh output; STREAM's
--                                 "copy", counted as 8 bytes per element)
--   update   x = x               (in place: every written line was read, as
--                                 in AdamW; 8 bytes per element)
-- The bandwidth is the faster of the two. Timed:
--   adamw          optimizer:step over every unit slice (one fused pass)
--   norm (shares)  clip.global_norm as training runs it: each slice's sum of
--                  squares was taken when its gradient was finalised
--                  (fsdp.shard), so it adds up per-unit numbers
--   norm (pass)    the same norm with a pass over every gradient (what it
--                  costs where no share was taken: DDP on several ranks, GPUs)
--   finalise       the share itself, fsdp_axpy_sumsq_cpu (the reduction's
--                  add plus the squares) against fsdp_axpy_cpu alone
-- Prints min and median of each and, from the medians, AdamW against the
-- bound of its 28 bytes, and AdamW + clip against the bound of their bytes:
-- on one rank the norm is a read of every gradient (32 bytes in all); when
-- sharded the share comes with the reduce-scatter's add (28). Target: 1.2
-- or less. The last line is for scripts:
--   RESULT adamw n=... adamw_ms=... norm_pass_ms=... bound28_ms=... ratio_adamw=... ratio_one_rank=...
local fsdp = require 'fsdp'
local mingpt = require 'models.mingpt'
local AdamW = require 'optim.adamw'
local clip = require 'optim.clip'
local C = fsdp.C

local opt = fsdp.options('bench/adamw.lua', {
   {'reps', 7, 'interleaved repetitions; min and median reported'},
   {'threads', 0, 'threads (0: the library default)'},
   {'clock', 'wall', 'wall time, or cpu: the CPU time of the process (all threads; less disturbed by other '
                     .. 'jobs on a shared machine)', choices = {'wall', 'cpu'}},
}, arg)
require 'fsdp.run' -- declares clock_gettime with its fsdp_run_timespec
local ts = fsdp.ffi.new('fsdp_run_timespec')
local function now()
   if opt.clock == 'wall' then return fsdp.clock() end
   fsdp.ffi.C.clock_gettime(2, ts) -- CLOCK_PROCESS_CPUTIME_ID
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
if opt.threads > 0 then fsdp.set_num_threads(opt.threads) end

local model = mingpt.GPT {vocab_size = 50257, n_layer = 12, n_head = 12, n_embd = 768, block_size = 1024}
local sharded = fsdp.shard(model, {strategy = 'none', seed = 1})
local optimizer = AdamW.new(sharded, {lr = 3e-4, betas = {0.9, 0.95}, eps = 1e-8, weight_decay = 0.1})
local n = 0
local rng = fsdp.rng(7)
for _, u in ipairs(sharded.units) do
   n = n + u.shard_size
   C.fsdp_rng_fill_normal(rng, u.grad_shard:ptr(), u.shard_size, 0, 1e-3)
end
-- the shares the backward would have left
local function take_shares()
   for _, u in ipairs(sharded.units) do u.grad_sq = u.grad_shard:sumsq() end
end

local a, b = fsdp.empty({n}), fsdp.empty({n})
C.fsdp_rng_fill_uniform(rng, a:ptr(), n, -1, 1)
b:zero()
-- one unit-sized pair for the finalise comparison (the largest unit: the root)
local big = sharded.units[1].shard_size
local y, x = fsdp.empty({big}), fsdp.empty({big})
C.fsdp_rng_fill_uniform(rng, y:ptr(), big, -1, 1)
C.fsdp_rng_fill_uniform(rng, x:ptr(), big, -1, 1)
local sq = fsdp.ffi.new('double[1]')

local function timed(f)
   local t0 = now()
   f()
   return now() - t0
end
local cases = {
   {'copy', function() assert(C.fsdp_scale_cpu(b:ptr(), 1, a:ptr(), n) == 0) end},
   {'update', function() assert(C.fsdp_scale_cpu(a:ptr(), 1, a:ptr(), n) == 0) end},
   {'adamw', function() optimizer:step(nil, 0.5) end},
   {'norm (shares)', function() take_shares(); return clip.global_norm(sharded) end, true},
   {'norm (pass)', function() for _, u in ipairs(sharded.units) do u.grad_sq = nil end; clip.global_norm(sharded) end},
   {'axpy (root unit)', function() assert(C.fsdp_axpy_cpu(y:ptr(), 1e-9, x:ptr(), big) == 0) end},
   {'axpy+sumsq (root unit)', function() assert(C.fsdp_axpy_sumsq_cpu(sq, y:ptr(), 1e-9, x:ptr(), big) == 0) end},
}
local times = {}
for _, c in ipairs(cases) do times[c[1]] = {} end
for _, c in ipairs(cases) do c[2]() end -- warm: pages touched, threads up
for _ = 1, opt.reps do
   for _, c in ipairs(cases) do
      local t
      if c[3] then -- the shares are taken outside the timing
         take_shares()
         t = timed(function() clip.global_norm(sharded) end)
      else
         t = timed(c[2])
      end
      table.insert(times[c[1]], t)
   end
end

local function stats(list)
   local s = {unpack(list)}
   table.sort(s)
   return s[1], s[math.floor((#s + 1) / 2)]
end
local function ms(t) return t * 1e3 end
local bytes = {copy = 8 * n, update = 8 * n, adamw = 28 * n, ['norm (pass)'] = 4 * n,
               ['axpy (root unit)'] = 12 * big, ['axpy+sumsq (root unit)'] = 12 * big}
print(string.format('AdamW + clip over %.2fM f32 elements (GPT-2 124M, %d units), %d threads, %d reps, %s clock',
                    n / 1e6, #sharded.units, fsdp.get_num_threads(), opt.reps, opt.clock))
print(string.format('  %-24s %10s %10s %12s', 'pass', 'min ms', 'median ms', 'GB/s (min)'))
local med = {}
for _, c in ipairs(cases) do
   local lo, mid = stats(times[c[1]])
   med[c[1]] = mid
   local bw = bytes[c[1]] and string.format('%.1f', bytes[c[1]] / lo / 1e9) or '-'
   print(string.format('  %-24s %10.2f %10.2f %12s', c[1], ms(lo), ms(mid), bw))
end
local bw = math.max(8 * n / med.copy, 8 * n / med.update)
local bound28, bound32 = 28 * n / bw, 32 * n / bw
local adamw, pass, shares = med.adamw, med['norm (pass)'], med['norm (shares)']
print(string.format('copy bandwidth: %.1f GB/s (the faster copy, medians)', bw / 1e9))
print(string.format('AdamW alone: %.1f ms = %.2fx its bound (28 bytes x %.2fM = %.1f ms)', ms(adamw), adamw / bound28,
                    n / 1e6, ms(bound28)))
print(string.format('AdamW + clip, one rank (the norm is one read of every gradient, taken when backward finalises '
                    .. 'each unit): %.1f + %.1f ms = %.2fx the bound of their 32 bytes (%.1f ms; target <= 1.2)',
                    ms(adamw), ms(pass), (adamw + pass) / bound32, ms(bound32)))
print(string.format('AdamW + clip, sharded (the norm\'s share comes with the reduce-scatter\'s add, no extra read): '
                    .. '%.1f + %.2f ms = %.2fx the bound of 28 bytes', ms(adamw), ms(shares), (adamw + shares) / bound28))
print(string.format('the share at finalisation: axpy+sumsq %.2f ms vs axpy %.2f ms over the root unit (%.1fM)',
                    ms(med['axpy+sumsq (root unit)']), ms(med['axpy (root unit)']), big / 1e6))
print(string.format('RESULT adamw n=%d adamw_ms=%.2f norm_pass_ms=%.2f bound28_ms=%.2f bound32_ms=%.2f '
                    .. 'ratio_adamw=%.3f ratio_one_rank=%.3f', n, ms(adamw), ms(pass), ms(bound28), ms(bound32),
                    adamw / bound28, (adamw + pass) / bound32))
