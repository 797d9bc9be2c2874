-- Where a GPT-2 124M training step spends its time, kernel by kernel: the
-- step of bench/gpt2_cpu.lua with every C function the Lua layer calls
-- wrapped in a timer. Prints per step: forward / backward / clip+AdamW /
-- zero_grad, each kernel's time and call count, the time outside kernels,
-- and how many allocations missed the caching pool.
--
--   fsdp-lua bench/gpt2_profile.lua [B] [T] [steps] [clock]
--
-- clock: 1 = wall time (default), 2 = CPU time of the process (all threads;
-- less disturbed by other jobs on a shared machine). The wrappers cost a
-- little per call, so the step is a bit slower than in gpt2_cpu.lua.
local bind = require 'fsdp.ffi'
local ffi = bind.ffi

local B, T = tonumber(arg[1] or 4), tonumber(arg[2] or 64)
local steps, clock_id = tonumber(arg[3] or 3), tonumber(arg[4] or 1)

pcall(ffi.cdef, 'typedef struct { long tv_sec; long tv_nsec; } prof_timespec;'
                .. 'int clock_gettime(int, prof_timespec *);')
local ts = ffi.new('prof_timespec')
local function now()
   ffi.C.clock_gettime(clock_id, ts)
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- the timing proxy goes in before any module caches bind.C
local real, spent, calls, timing = bind.C, {}, {}, false
bind.C = setmetatable({}, {__index = function(proxy, name)
   local f = real[name]
   if type(f) ~= 'cdata' then return f end
   local function timed(...)
      if not timing then return f(...) end
      local t0 = now()
      local a, b = f(...)
      spent[name] = (spent[name] or 0) + now() - t0
      calls[name] = (calls[name] or 0) + 1
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
   local loss = model:loss(x, y)
   local t1 = now()
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
