-- fsdp.run: the pieces of a training loop that are not the math:
--   Timer        wall time split into named phases (data, forward, ...)
--   Preemption   SIGTERM / SIGUSR1 (SLURM's warning) -> every rank stops
--                at the same step boundary
--   health       a non-finite loss or gradient norm is caught at its step
--                and handled by policy ('skip' the step or 'stop')
--   Console      rank-0 step lines with timestamps, or a progress bar with
--                ETA when stdout is a terminal
-- A recipe uses what it wants; none of it is needed to train.
local ffi = require 'ffi'
local bind = require 'fsdp.ffi'
local log = require 'fsdp.log'
local C = bind.C

local M = {}

pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } fsdp_run_timespec;
int clock_gettime(int clk, fsdp_run_timespec *ts);
int isatty(int fd);
]])
local ts = ffi.new('fsdp_run_timespec')
local function now()
   ffi.C.clock_gettime(1, ts)
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
M.now = now

---------------------------------------------------------------------------
-- Timer: t:start('forward') ... t:stop('forward'); t:take() -> {phase -> s}

local Timer = {}
Timer.__index = Timer
function M.timer() return setmetatable({acc = {}, open = {}}, Timer) end
function Timer:start(name) self.open[name] = now() end
function Timer:stop(name)
   local t0 = self.open[name]
   if t0 then self.acc[name] = (self.acc[name] or 0) + now() - t0; self.open[name] = nil end
end
function Timer:add(name, seconds) self.acc[name] = (self.acc[name] or 0) + seconds end
-- the totals since the last take, and a reset
function Timer:take()
   local out = self.acc
   self.acc = {}
   return out
end

---------------------------------------------------------------------------
-- Preemption

local SIGNALS = {SIGTERM = 15, SIGUSR1 = 10, SIGINT = 2}
local SIGNAL_NAMES = {[15] = 'SIGTERM', [10] = 'SIGUSR1', [2] = 'SIGINT'}

local Preemption = {}
Preemption.__index = Preemption

-- watches the given signals (default SIGTERM and SIGUSR1)
function M.preemption(names)
   for _, n in ipairs(names or {'SIGTERM', 'SIGUSR1'}) do
      bind.check(C.fsdp_signal_watch(SIGNALS[n]), 'preemption')
   end
   return setmetatable({}, Preemption)
end

-- collective: true (and the signal's name) when any rank got a signal, so
-- every rank stops after the same step
function Preemption:requested(group)
   local s = C.fsdp_signal_pending(0)
   local any = group and group:max_number(s) or s
   if any > 0 then return true, SIGNAL_NAMES[any] or ('signal ' .. any) end
   return false
end

---------------------------------------------------------------------------
-- health

local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end
M.finite = finite

-- returns 'ok' or 'skip'; raises for policy 'stop'
function M.health(step, loss, grad_norm, policy)
   if finite(loss) and finite(grad_norm) then return 'ok' end
   local what = not finite(loss) and string.format('loss is %s', tostring(loss))
                or string.format('gradient norm is %s', tostring(grad_norm))
   if policy == 'stop' then
      error(string.format('step %d: %s; stopping (--on-nan stop)', step, what), 0)
   end
   log.warn('step %d: %s; step skipped, parameters unchanged (--on-nan skip)', step, what)
   return 'skip'
end

---------------------------------------------------------------------------
-- Console

local Console = {}
Console.__index = Console

-- opts: total steps, tty (default: isatty(stdout))
function M.console(opts)
   local tty = opts.tty
   if tty == nil then tty = ffi.C.isatty(1) == 1 and os.getenv('TERM') ~= 'dumb' end
   return setmetatable({total = opts.total, tty = tty and log.rank == 0, t0 = now(), first_step = opts.start or 0}, Console)
end

local function duration(s)
   if s ~= s or s == math.huge then return '?' end
   s = math.floor(s)
   if s >= 3600 then return string.format('%dh%02dm', math.floor(s / 3600), math.floor(s / 60) % 60) end
   if s >= 60 then return string.format('%dm%02ds', math.floor(s / 60), s % 60) end
   return s .. 's'
end

-- m: step, loss, lr, grad_norm, tokens_per_s, mfu, mem_current, mem_peak, times
function Console:step(m)
   local times = {}
   for _, k in ipairs({'data', 'forward', 'backward', 'optimizer', 'comm_wait'}) do
      if m.times and m.times[k] then times[#times + 1] = string.format('%s %.0fms', k, m.times[k] * 1000) end
   end
   local line = string.format('step %5d/%d | loss %.4f | lr %.2e | norm %.3f | %.0f tok/s | mfu %.1f%% | mem %s (peak %s)%s',
                              m.step, self.total, m.loss, m.lr, m.grad_norm, m.tokens_per_s, (m.mfu or 0) * 100,
                              log.bytes(m.mem_current), log.bytes(m.mem_peak),
                              #times > 0 and (' | ' .. table.concat(times, ' ')) or '')
   if self.tty then
      local done = (m.step - self.first_step) / math.max(1, self.total - self.first_step)
      local eta = (now() - self.t0) / math.max(done, 1e-9) * (1 - done)
      local width = 24
      local fill = math.floor(done * width + 0.5)
      io.stdout:write(string.format('\r\27[K[%s%s] %3d%% ETA %s | %s', string.rep('#', fill), string.rep('.', width - fill),
                                    math.floor(done * 100), duration(eta), line))
      io.stdout:flush()
   else
      log.info('%s', line)
   end
end

-- a message that must not be overwritten by the bar
function Console:say(fmt, ...)
   if self.tty then io.stdout:write('\r\27[K') end
   log.info(fmt, ...)
end

function Console:finish()
   if self.tty then io.stdout:write('\n'); io.stdout:flush() end
end

---------------------------------------------------------------------------
-- throughput and model FLOPs utilization

-- FLOPs per token of a decoder (PaLM / nanoGPT convention): 6 N for the
-- matmuls of forward + backward, plus 12 L C T for attention scores
function M.flops_per_token(n_params, n_layer, width, seq_len)
   return 6 * n_params + 12 * n_layer * width * seq_len
end

-- the host's sgemm rate on this rank's threads (FLOP/s), from three
-- 1024^3 products: the CPU peak MFU is measured against by default
function M.cpu_peak_flops()
   local T = require 'fsdp.tensor'
   local n = 1024
   local a, b, c = T.empty({n, n}), T.empty({n, n}), T.empty({n, n})
   a:fill(0.5); b:fill(0.25)
   local best = math.huge
   for _ = 1, 3 do
      local t0 = now()
      C.fsdp_matmul_forward_cpu(c:ptr(), a:ptr(), b:ptr(), nil, n, n, n, 0, 0, 0)
      best = math.min(best, now() - t0)
   end
   a:free(); b:free(); c:free()
   return 2 * n * n * n / best
end

return M
