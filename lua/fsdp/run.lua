-- fsdp.run: the pieces of a training loop that are not the math:
--   Timer        wall time split into named phases (data, forward, ...)
--   Preemption   SIGTERM / SIGUSR1 (SLURM's warning) -> every rank stops
--                at the same step boundary
--   health       a non-finite loss or gradient norm is caught at its step
--                and handled by policy ('skip' the step or 'stop')
--   Console      rank-0 step lines with timestamps, or a one-line progress
--                bar with ETA, fitted to the width, when rank 0's output
--                reaches a terminal (also under the launcher)
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

-- watches the given signals (default SIGTERM and SIGUSR1, SLURM's, and
-- SIGINT: Ctrl-C stops a run as SIGTERM does, at the same step on every
-- rank, with a checkpoint; a second Ctrl-C ends the process at once)
function M.preemption(names)
   for _, n in ipairs(names or {'SIGTERM', 'SIGUSR1', 'SIGINT'}) do
      if n == 'SIGINT' then bind.check(C.fsdp_signal_watch_once(SIGNALS[n]), 'preemption')
      else bind.check(C.fsdp_signal_watch(SIGNALS[n]), 'preemption') end
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

pcall(ffi.cdef, [[
struct fsdp_winsize { unsigned short ws_row, ws_col, ws_xpixel, ws_ypixel; };
int ioctl(int fd, unsigned long request, ...);
]])

-- the width of the terminal on fd, or nil when fd is no terminal
function M.terminal_width(fd)
   fd = fd or 1
   if ffi.C.isatty(fd) ~= 1 then return nil end
   local ws = ffi.new('struct fsdp_winsize')
   if ffi.C.ioctl(fd, 0x5413, ws) == 0 and ws.ws_col > 0 then return tonumber(ws.ws_col) end -- TIOCGWINSZ
   return tonumber(os.getenv('COLUMNS') or '') or 80
end

-- where rank 0's lines end up: the terminal's width, or nil for a file or
-- pipe. Under the launcher (mpiexec) stdout is a pipe to mpiexec, which
-- passes the lines on: the launcher says in FSDP_TTY_COLUMNS that its own
-- stdout is a terminal, and how wide.
function M.console_width()
   if os.getenv('TERM') == 'dumb' then return nil end
   return M.terminal_width(1) or tonumber(os.getenv('FSDP_TTY_COLUMNS') or '')
end

local function duration(s)
   if s ~= s or s == math.huge or s < 0 then return '?' end
   s = math.floor(s)
   if s >= 3600 then return string.format('%dh%02dm', math.floor(s / 3600), math.floor(s / 60) % 60) end
   if s >= 60 then return string.format('%dm%02ds', math.floor(s / 60), s % 60) end
   return s .. 's'
end

local function short_bytes(n)
   local units = {'B', 'K', 'M', 'G', 'T'}
   local i = 1
   while n >= 1024 and i < #units do n = n / 1024; i = i + 1 end
   return string.format(n >= 100 and '%.0f%s' or '%.1f%s', n, units[i])
end

local PHASES = {{'data', 'data'}, {'forward', 'fwd'}, {'backward', 'bwd'}, {'optimizer', 'opt'}, {'comm_wait', 'comm'}}

-- the status line as fields, each with its spellings from longest to
-- shortest, in the order shown, with a priority (1 is kept longest)
local function fields(m, total, done, eta)
   local out = {}
   local function add(prio, ...) out[#out + 1] = {prio = prio, forms = {...}, at = 1} end
   if done then
      local pct = math.floor(done * 100)
      local function bar(w)
         local fill = math.floor(done * w + 0.5)
         return string.format('[%s%s] %3d%%', string.rep('#', fill), string.rep('.', w - fill), pct)
      end
      add(2, bar(24), bar(16), bar(10), string.format('%d%%', pct))
      add(3, 'ETA ' .. duration(eta), duration(eta))
   end
   add(1, string.format('step %5d/%d', m.step, total), string.format('step %d/%d', m.step, total),
       string.format('%d/%d', m.step, total))
   add(4, string.format('loss %.4f', m.loss), string.format('loss %.3f', m.loss))
   add(7, string.format('lr %.2e', m.lr), string.format('lr %.1e', m.lr))
   add(9, string.format('norm %.3f', m.grad_norm), string.format('norm %.2f', m.grad_norm))
   add(5, string.format('%.0f tok/s', m.tokens_per_s), string.format('%s tok/s', m.tokens_per_s >= 1e4 and
       string.format('%.0fk', m.tokens_per_s / 1e3) or string.format('%.0f', m.tokens_per_s)))
   add(8, string.format('mfu %.1f%%', (m.mfu or 0) * 100), string.format('mfu %.0f%%', (m.mfu or 0) * 100))
   if m.mem_peak then
      add(6, string.format('mem %s (peak %s)', log.bytes(m.mem_current or 0), log.bytes(m.mem_peak)),
          string.format('mem %s/%s', short_bytes(m.mem_current or 0), short_bytes(m.mem_peak)),
          string.format('peak %s', short_bytes(m.mem_peak)))
   end
   if m.times then
      local long, short = {}, {}
      for _, k in ipairs(PHASES) do
         local v = m.times[k[1]]
         if v then
            long[#long + 1] = string.format('%s %.0fms', k[1], v * 1000)
            short[#short + 1] = string.format('%s %.0f', k[2], v * 1000)
         end
      end
      if #long > 0 then add(10, table.concat(long, ' '), table.concat(short, ' ') .. ' ms') end
   end
   return out
end

local function join(fs, sep)
   local parts = {}
   for _, f in ipairs(fs) do if not f.dropped then parts[#parts + 1] = f.forms[f.at] end end
   return table.concat(parts, sep)
end

-- one status line of at most `width` characters: the least important
-- fields are abbreviated first, then dropped; (m: as Console:step takes;
-- done: the share of the run done, for the bar and the ETA, or nil)
function M.status_line(m, total, width, done, eta)
   local fs = fields(m, total, done, eta)
   local sep = ' | '
   local line = join(fs, sep)
   if not width then return line end
   local order = {}
   for i = 1, #fs do order[i] = fs[i] end
   table.sort(order, function(a, b) return a.prio > b.prio end)
   -- first every field one notch shorter, least important first; then,
   -- least important first, each field as short as it goes, then gone
   for _, f in ipairs(order) do
      if #line <= width then break end
      if f.at < #f.forms then f.at = f.at + 1; line = join(fs, sep) end
   end
   for _, f in ipairs(order) do
      while #line > width and f.at < #f.forms do f.at = f.at + 1; line = join(fs, sep) end
      if #line <= width then break end
      if f.prio > 1 then f.dropped = true; line = join(fs, sep) end
   end
   return line:sub(1, width)
end

local Console = {}
Console.__index = Console

-- opts: total steps, start (the first step of this run), tty (default: rank
-- 0 writes to a terminal, see console_width), width (default the terminal's)
function M.console(opts)
   local width = opts.width
   local tty = opts.tty
   if tty == nil then
      width = width or M.console_width()
      tty = width ~= nil
   end
   tty = tty and log.rank == 0
   return setmetatable({total = opts.total, tty = tty, width = width or 80, t0 = now(), first_step = opts.start or 0,
                        drawn = false}, Console)
end

-- m: step, loss, lr, grad_norm, tokens_per_s, mfu, mem_current, mem_peak,
-- times (seconds per step of each phase). On a terminal: one line redrawn
-- in place, never wider than the terminal; otherwise a timestamped line.
function Console:step(m)
   if not self.tty then
      log.info('%s', M.status_line(m, self.total))
      return
   end
   local done = (m.step - self.first_step) / math.max(1, self.total - self.first_step)
   local eta = (now() - self.t0) / math.max(done, 1e-9) * (1 - done)
   -- one column spare: a line that fills the last column makes some terminals wrap
   local line = M.status_line(m, self.total, self.width - 1, done, eta)
   io.stdout:write('\r\27[K' .. line)
   io.stdout:flush()
   if not self.drawn then
      self.drawn = true
      -- a log line from elsewhere first clears the bar, so it does not run on after it
      log.before_line = function()
         if self.drawn then io.stdout:write('\r\27[K'); self.drawn = false end
      end
   end
end

-- a message that must not be overwritten by the bar
function Console:say(fmt, ...)
   if self.tty and self.drawn then io.stdout:write('\r\27[K'); self.drawn = false end
   log.info(fmt, ...)
end

function Console:finish()
   if self.tty and self.drawn then io.stdout:write('\n'); io.stdout:flush() end
   self.drawn = false
   log.before_line = nil
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
