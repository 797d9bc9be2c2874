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
-- The bound is 28 bytes per element at the faster of the two. Timed:
--   adamw          optimizer:step over every unit slice (one fused pass)
--   norm (shares)  clip.global_norm as training runs it: each slice's sum of
--                  squares was taken when its gradient was finalised
--                  (fsdp.shard), so it adds up per-unit numbers
--   norm (pass)    the same norm with a pass over every gradient (what it
--                  costs where no share was taken: DDP on several ranks, GPUs)
--   finalise       the share itself, fsdp_axpy_sumsq_cpu (the reduction's
--                  add plus the squares) against fsdp_axpy_cpu alone
-- Prints min and median of each and the ratio of AdamW + clip to the bound
-- (target: 1.2 or less). The last line is for scripts:
--   RESULT adamw n=... adamw_ms=... bound_ms=... ratio=...
local fsdp = require 'fsdp'
local mingpt = require 'models.mingpt'
local AdamW = require 'optim.adamw'
local clip = require 'optim.clip'
local C = fsdp.C

local opt = fsdp.options('bench/adamw.lua', {
   {'reps', 7, 'interleaved repetitions; min and median reported'},
   {'threads', 0, 'threads (0: the library default)'},
}, arg)
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
   local t0 = fsdp.clock()
   f()
   return fsdp.clock() - t0
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
print(string.format('AdamW + clip over %.2fM f32 elements (GPT-2 124M, %d units), %d threads, %d reps',
                    n / 1e6, #sharded.units, fsdp.get_num_threads(), opt.reps))
print(string.format('  %-24s %10s %10s %12s', 'pass', 'min ms', 'median ms', 'GB/s (min)'))
local med = {}
for _, c in ipairs(cases) do
   local lo, mid = stats(times[c[1]])
   med[c[1]] = mid
   local bw = bytes[c[1]] and string.format('%.1f', bytes[c[1]] / lo / 1e9) or '-'
   print(string.format('  %-24s %10.2f %10.2f %12s', c[1], ms(lo), ms(mid), bw))
end
local bw = math.max(8 * n / med.copy, 8 * n / med.update)
local bound = 28 * n / bw
local step = med.adamw + med['norm (shares)']
print(string.format('bound: 28 bytes x %.2fM elements at %.1f GB/s (the faster copy, medians) = %.1f ms',
                    n / 1e6, bw / 1e9, ms(bound)))
print(string.format('AdamW + clip (norm from the shares): %.1f ms = %.2fx the bound (target <= 1.2)',
                    ms(step), step / bound))
print(string.format('AdamW + clip (norm by a pass):       %.1f ms = %.2fx the bound',
                    ms(med.adamw + med['norm (pass)']), (med.adamw + med['norm (pass)']) / bound))
print(string.format('the share at finalisation: axpy+sumsq %.2f ms vs axpy %.2f ms over the root unit (%.1fM)',
                    ms(med['axpy+sumsq (root unit)']), ms(med['axpy (root unit)']), big / 1e6))
print(string.format('RESULT adamw n=%d adamw_ms=%.2f norm_ms=%.2f bound_ms=%.2f ratio=%.3f', n, ms(med.adamw),
                    ms(med['norm (shares)']), ms(bound), step / bound))
