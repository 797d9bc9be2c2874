-- Where a GPT-2 124M training step spends its time, kernel by kernel: the
-- step of bench/gpt2_cpu.lua with every C function the Lua layer calls
-- wrapped in a timer. Prints per step: forward / backward / clip+AdamW /
-- zero_grad, each kernel's time and call count, the time outside kernels,
-- and how many allocations missed the caching pool.
--
--   fsdp-lua bench/gpt2_profile.lua [B] [T] [steps] [clock] [peak]
--
-- clock: 1 = wall time (default), 2 = CPU time of the process (all threads;
-- less disturbed by other jobs on a shared machine). The wrappers cost a
-- little per call, so the step is a bit slower than in gpt2_cpu.lua. Then
-- the GEMMs by phase and shape with their rates (peak: GFLOP/s to show
-- them against, e.g. bench/sgemm_peak.lua's with the same clock).
local bind = require 'fsdp.ffi'
local ffi = bind.ffi

local B, T = tonumber(arg[1] or 4), tonumber(arg[2] or 64)
local steps, clock_id = tonumber(arg[3] or 3), tonumber(arg[4] or 1)

pcall(ffi.cdef, 'typedef struct { long tv_sec; long tv_nsec; } prof_timespec;'
                .. 'int clock_gettime(int, prof_timespec *);')
local ts = ffi.new('prof_timespec')
local function clock(id)
   ffi.C.clock_gettime(id, ts)
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local function now() return clock(clock_id) end

-- the timing proxy goes in before any module caches bind.C
local real, spent, calls, timing = bind.C, {}, {}, false
-- GEMMs by phase and shape: {time, flops, calls, wall time, CPU time}
local phase, gemms = 'forward', {}
local function gemm_flops(name, ...)
   local args = {...}
   if name == 'fsdp_matmul_forward_cpu' then
      local M, N, K = args[5], args[6], args[7]
      return 2 * M * N * K, string.format('%s %dx%dx%d%s%s', phase, M, N, K, args[8] ~= 0 and ' ta' or '',
                                           args[9] ~= 0 and ' tb' or '')
   elseif name == 'fsdp_matmul_backward_cpu' then
      local M, N, K = args[7], args[8], args[9]
      local n = (args[1] ~= nil and 1 or 0) + (args[2] ~= nil and 1 or 0)
      return 2 * M * N * K * n, string.format('%s bwd %dx%dx%d', phase, M, N, K)
   end
end
bind.C = setmetatable({}, {__index = function(proxy, name)
   local f = real[name]
   if type(f) ~= 'cdata' then return f end
   local function timed(...)
      if not timing then return f(...) end
      local t0, w0, c0 = now(), clock(1), clock(2)
      local a, b = f(...)
      local dt = now() - t0
      local dw, dc = clock(1) - w0, clock(2) - c0
      spent[name] = (spent[name] or 0) + dt
      calls[name] = (calls[name] or 0) + 1
      local fl, key = gemm_flops(name, ...)
      if fl and fl > 0 then
         local g = gemms[key] or {0, 0, 0, 0, 0}
         gemms[key] = g
         g[1], g[2], g[3], g[4], g[5] = g[1] + dt, g[2] + fl, g[3] + 1, g[4] + dw, g[5] + dc
      end
      return a, b
   end
   rawset(proxy, name, timed)
   return timed
end})

local fsdp = require 'fsdp'
local mingpt = require 'models.mingpt'
local AdamW = require 'optim.adamw'
local clip = require 'optim.clip'

local model = mingpt.GPT {vocab_size = 50257, n_layer = 12, n_head = 12, n_embd = 768, block_size = 1024}
local sharded = fsdp.shard(model, {strategy = 'none', seed = 1337})
local optimizer = AdamW.new(sharded, {lr = 3e-4, betas = {0.9, 0.95}, weight_decay = 0.1})
local x, y = fsdp.empty({B, T}, 'i32'), fsdp.empty({B, T}, 'i32')
local rng = fsdp.rng(1337)
for i = 0, B * T - 1 do
   x:ptr()[i] = tonumber(real.fsdp_rng_next(rng) % 50257)
   y:ptr()[i] = tonumber(real.fsdp_rng_next(rng) % 50257)
end

local phases = {0, 0, 0, 0}
local function step()
   local t0 = now()
   phase = 'forward'
   local loss = model:loss(x, y)
   local t1 = now()
   phase = 'backward'
   fsdp.backward(loss)
   local t2 = now()
   optimizer:step(nil, clip.clip_factor(clip.global_norm(sharded), 1.0))
   local t3 = now()
   sharded:zero_grad()
   local t4 = now()
   if timing then
      phases[1], phases[2] = phases[1] + t1 - t0, phases[2] + t2 - t1
      phases[3], phases[4] = phases[3] + t3 - t2, phases[4] + t4 - t3
   end
end

step(); step() -- warm: the pool holds every buffer a step needs
local m0 = fsdp.memory_stats()
timing = true
local t0 = now()
for _ = 1, steps do step() end
local total = now() - t0
timing = false
local m1 = fsdp.memory_stats()

local function ms(s) return s / steps * 1e3 end
print(string.format('B=%d T=%d, %s clock: step %.1f ms (forward %.1f, backward %.1f, clip+AdamW %.1f, '
                    .. 'zero_grad %.1f), %.1f tokens/s, pool misses per step %.1f',
                    B, T, clock_id == 2 and 'CPU' or 'wall', ms(total), ms(phases[1]), ms(phases[2]),
                    ms(phases[3]), ms(phases[4]), B * T * steps / total, (m1.n_misses - m0.n_misses) / steps))
local names, inside = {}, 0
for name, s in pairs(spent) do names[#names + 1] = name; inside = inside + s end
table.sort(names, function(a, b) return spent[a] > spent[b] end)
for _, name in ipairs(names) do
   print(string.format('  %-36s %8.1f ms %6.1f%%  x%d', name, ms(spent[name]), 100 * spent[name] / total,
                       calls[name] / steps))
end
print(string.format('  %-36s %8.1f ms %6.1f%%', '(outside kernels)', ms(total - inside), 100 * (total - inside) / total))

-- GEMM rates by phase and shape (against --peak / the square sgemm when given)
local peak = tonumber(arg[5] or 0)
local keys = {}
for k in pairs(gemms) do keys[#keys + 1] = k end
table.sort(keys, function(a, b) return gemms[a][1] > gemms[b][1] end)
local by_phase = {}
print('GEMMs by phase and shape (M x N x K as the kernel gets them):')
for _, k in ipairs(keys) do
   local g = gemms[k]
   local ph = k:match('^%a+')
   local p = by_phase[ph] or {0, 0, 0, 0}
   by_phase[ph] = p
   p[1], p[2], p[3], p[4] = p[1] + g[1], p[2] + g[2], p[3] + g[4], p[4] + g[5]
   print(string.format('  %-36s %8.1f ms %8.1f GFLOP/s%s  x%d, %.2f threads busy (CPU / wall time)', k, ms(g[1]),
                       g[2] / g[1] / 1e9, peak > 0 and string.format(' %5.1f%%', 100 * g[2] / g[1] / 1e9 / peak) or '',
                       g[3] / steps, g[5] / g[4]))
end
for _, ph in ipairs({'forward', 'backward'}) do
   local p = by_phase[ph]
   if p then
      print(string.format('  all %-8s GEMMs: %.1f ms, %.1f GFLOP/s%s, %.2f threads busy', ph, ms(p[1]),
                          p[2] / p[1] / 1e9, peak > 0 and string.format(' (%.1f%% of %.0f)', 100 * p[2] / p[1] / 1e9 / peak,
                                                                      peak) or '', p[4] / p[3]))
   end
end
