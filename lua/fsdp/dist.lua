-- fsdp.dist: the job's ranks and their collectives, over the C core's comm
-- interface (MPI between processes, `tcp` between processes started by
-- torchrun alone, `self` for a world of one). dist.backend names it.
--
--   local dist = require 'fsdp.dist'
--   dist.init()                         -- idempotent; rank and size from the launcher's env
--   dist.rank, dist.world_size
--   dist.all_reduce(tensor, 'avg')      -- in place
--   dist.sum_number(x)                  -- exact, same order on every rank
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local ffi, C, check = bind.ffi, bind.C, bind.check

local M = {rank = 0, world_size = 1, local_rank = 0, local_world_size = 1}

local OPS = {sum = C.FSDP_REDUCE_SUM, avg = C.FSDP_REDUCE_AVG, max = C.FSDP_REDUCE_MAX}

local function op_code(op, fn)
   local code = OPS[op or 'sum']
   if not code then error(string.format("%s: unknown reduce op '%s' (sum, avg, max)", fn, tostring(op)), 3) end
   return code
end

local Group = {}
Group.__index = Group
M.Group = Group

-- every group made here, for resync (weak: a freed group drops out); groups
-- are made collectively, so their serial numbers agree across ranks
local groups = setmetatable({}, {__mode = 'k'})
local n_groups = 0

local function wrap_group(c, name)
   n_groups = n_groups + 1
   local g = setmetatable({c = c, name = name, rank = C.fsdp_comm_rank(c), size = C.fsdp_comm_size(c),
                           serial = n_groups}, Group)
   groups[g] = true
   return g
end

local function env_int(...)
   for _, k in ipairs({...}) do
      local v = tonumber(os.getenv(k) or '')
      if v then return v end
   end
end

-- joins the job (MPI when launched by mpiexec / srun / fsdp-lua --nproc-per-node)
function M.init()
   if M.world then return M end
   local c = C.fsdp_comm_world()
   if c == nil then error('rank ' .. (os.getenv('RANK') or '?') .. ': ' .. bind.last_error(), 0) end
   M.world = wrap_group(c, 'world')
   M.rank, M.world_size = M.world.rank, M.world.size
   M.backend = ffi.string(C.fsdp_comm_backend(c))
   M.local_rank = env_int('LOCAL_RANK', 'MPI_LOCALRANKID', 'SLURM_LOCALID', 'OMPI_COMM_WORLD_LOCAL_RANK') or M.rank
   M.local_world_size = env_int('LOCAL_WORLD_SIZE', 'MPI_LOCALNRANKS', 'SLURM_NTASKS_PER_NODE',
                                'OMPI_COMM_WORLD_LOCAL_SIZE') or M.world_size
   local log = require 'fsdp.log'
   log.rank = M.rank
   return M
end

-- sub-groups: ranks with the same color, ordered by key
function Group:split(color, key, name)
   local c = C.fsdp_comm_split(self.c, color, key or self.rank)
   if c == nil then error(string.format('rank %d: %s', M.rank, bind.last_error()), 0) end
   return wrap_group(ffi.gc(c, C.fsdp_comm_free), name)
end

-- The group's twin for tensors on cuda:device: the same ranks over NCCL
-- (fsdp_comm_nccl_new, bootstrapped over this group), so all_gather /
-- reduce_scatter / all_reduce / broadcast take device tensors. Numbers and
-- strings (sum_number, broadcast_string, ...) still travel over this host
-- group. Made once per device and kept.
function Group:on_device(device)
   if device < 0 then return self end
   self.device_groups = self.device_groups or {}
   local g = self.device_groups[device]
   if g then return g end
   local cuda = require('fsdp.kernels').cuda()
   if not cuda then error(string.format('rank %d: cuda:%d group, but no CUDA backend is loaded', M.rank, device), 0) end
   local c = cuda.lib.fsdp_comm_nccl_new(self.c, device)
   if c == nil then error(bind.last_error(), 0) end
   g = wrap_group(ffi.gc(c, C.fsdp_comm_free), (self.name or 'group') .. '@cuda:' .. device)
   g.host, g.device, g.outstanding = self, device, {}
   for _, k in ipairs({'gather_numbers', 'sum_number', 'max_number', 'broadcast_string', 'barrier', 'split'}) do
      g[k] = function(_, ...) return self[k](self, ...) end
   end
   self.device_groups[device] = g
   return g
end

-- Collectives an interrupt left running: their buffers (tensors) and
-- requests must live until dist.resync() (see Interrupts below).
local in_flight = {}

-- the C core's comm errors already name the rank; keep: what an
-- interrupted collective still uses
local function fail(status, ...)
   if status == C.FSDP_ERR_INTERRUPTED then in_flight[#in_flight + 1] = {...} end
   error(bind.last_error(), 0)
end

-- a pending collective; :wait() finishes it (and runs its completion).
-- On a device group the host does not block: the compute stream is made to
-- wait for the collective (fsdp_cuda_stream_wait_request), so kernels queued
-- from here on, the completion's included, run after it while the host goes
-- on queueing; the request is kept and freed by Group:drain (end of
-- backward), which also catches timeouts and NCCL errors.
local Pending = {}
Pending.__index = Pending
function Pending:wait()
   if self.req ~= nil then
      local req = self.req
      self.req = nil
      local g = self.group
      if g and g.device then
         local lib = require('fsdp.kernels').cuda().lib
         if lib.fsdp_cuda_stream_wait_request(nil, req) ~= 0 then fail() end
         g.outstanding[#g.outstanding + 1] = req
         if #g.outstanding > 16 then g:reap() end -- forward-only loops never reach drain
      else
         local status = C.fsdp_comm_wait(req, 0)
         if status ~= 0 then
            -- still running after an interrupt (or a timeout): the request
            -- stays valid, and so must what it writes into
            if status == C.FSDP_ERR_INTERRUPTED then self.req = req end
            fail(status, self)
         end
      end
   end
   if self.done then local f = self.done; self.done = nil; f() end
end

-- frees the outstanding requests that are complete, without blocking
local done_flag = ffi.new('int[1]')
function Group:reap()
   local keep, err = {}, nil
   for _, req in ipairs(self.outstanding) do
      -- a failed test ends (and frees) its request; the error is raised after the sweep
      if C.fsdp_comm_test(req, done_flag) ~= 0 then err = err or bind.last_error()
      elseif done_flag[0] == 0 then keep[#keep + 1] = req end
   end
   self.outstanding = keep
   if err then
      self:drain()
      error(err, 0)
   end
end

-- frees the requests whose completion the compute stream already waits for
-- (blocking until the device has finished them); errors name the rank
function Group:drain()
   local out = self.outstanding
   if not out or #out == 0 then return end
   self.outstanding = {}
   for i, req in ipairs(out) do
      if C.fsdp_comm_wait(req, 0) ~= 0 then
         for j = i + 1, #out do C.fsdp_comm_wait(out[j], 0) end
         fail()
      end
   end
end

local reqp = ffi.new('fsdp_comm_request*[1]')

local function start(async)
   reqp[0] = nil
   return async and reqp or nil
end

local function pending(async, done, group)
   if not async then if done then done() end return nil end
   return setmetatable({req = reqp[0], done = done, group = group}, Pending)
end

-- recv [size * count] <- every rank's send [count]
function Group:all_gather(recv, send, async, done)
   local n = send:numel()
   if recv:numel() ~= n * self.size or recv.dtype ~= send.dtype then
      error(string.format('all_gather: recv has %d %s elements, want %d %s', recv:numel(), recv.dtype, n * self.size, send.dtype), 2)
   end
   local status = C.fsdp_comm_all_gather(self.c, recv:cdata().data, send:cdata().data, n, T.DTYPES[send.dtype],
                                         start(async))
   if status ~= 0 then fail(status, recv, send) end
   return pending(async, done, self)
end

-- recv [count] <- reduction of every rank's send [rank*count .. +count]
function Group:reduce_scatter(recv, send, op, async, done)
   local n = recv:numel()
   if send:numel() ~= n * self.size or recv.dtype ~= send.dtype then
      error(string.format('reduce_scatter: send has %d %s elements, want %d %s', send:numel(), send.dtype, n * self.size, recv.dtype), 2)
   end
   local status = C.fsdp_comm_reduce_scatter(self.c, recv:cdata().data, send:cdata().data, n, T.DTYPES[send.dtype],
                                             op_code(op, 'reduce_scatter'), start(async))
   if status ~= 0 then fail(status, recv, send) end
   return pending(async, done, self)
end

function Group:all_reduce(buf, op, async, done)
   local status = C.fsdp_comm_all_reduce(self.c, buf:cdata().data, buf:numel(), T.DTYPES[buf.dtype],
                                         op_code(op, 'all_reduce'), start(async))
   if status ~= 0 then fail(status, buf) end
   return pending(async, done, self)
end

function Group:broadcast(buf, root, async)
   local status = C.fsdp_comm_broadcast(self.c, buf:cdata().data, buf:numel(), T.DTYPES[buf.dtype], root or 0,
                                        start(async))
   if status ~= 0 then fail(status, buf) end
   return pending(async)
end

function Group:barrier()
   local status = C.fsdp_comm_barrier(self.c)
   if status ~= 0 then fail(status) end
end

function Group:bytes_sent() return tonumber(C.fsdp_comm_bytes_sent(self.c)) end

-- one double from every rank, in rank order (through an all-gather of
-- their bytes: exact, and identical on every rank)
local dbl = ffi.new('double[1]')
function Group:gather_numbers(x)
   if self.size == 1 then return {x} end
   local send = T.empty({8}, 'u8')
   local recv = T.empty({8 * self.size}, 'u8')
   dbl[0] = x
   ffi.copy(send:cdata().data, dbl, 8)
   self:all_gather(recv, send)
   local vals = ffi.cast('double*', recv:cdata().data)
   local out = {}
   for r = 0, self.size - 1 do out[r + 1] = vals[r] end
   send:free(); recv:free()
   return out
end

-- the sum over ranks, added in rank order (unlike a float all-reduce, the
-- same bits on every rank whatever the algorithm)
function Group:sum_number(x)
   local s = 0
   for _, v in ipairs(self:gather_numbers(x)) do s = s + v end
   return s
end

-- the largest over ranks (NaN wins, so a NaN anywhere is seen everywhere)
function Group:max_number(x)
   local vals = self:gather_numbers(x)
   local m = vals[1]
   for i = 2, #vals do if vals[i] > m or vals[i] ~= vals[i] then m = vals[i] end end
   return m
end

-- rank 0's string on every rank
function Group:broadcast_string(s)
   if self.size == 1 then return s end
   local len = T.empty({1}, 'i64')
   len:ptr()[0] = self.rank == 0 and #s or 0
   self:broadcast(len, 0)
   local n = tonumber(len:ptr()[0])
   local buf = T.empty({math.max(n, 1)}, 'u8')
   if self.rank == 0 then ffi.copy(buf:cdata().data, s, n) end
   self:broadcast(buf, 0)
   local out = ffi.string(buf:cdata().data, n)
   len:free(); buf:free()
   return out
end

-- module-level shortcuts on the world
function M.barrier() M.init(); M.world:barrier() end
function M.sum_number(x) M.init(); return M.world:sum_number(x) end
function M.max_number(x) M.init(); return M.world:max_number(x) end
function M.broadcast_string(s) M.init(); return M.world:broadcast_string(s) end
function M.all_reduce(t, op) M.init(); return M.world:all_reduce(t, op) end

-- the checkpoint module's view of the world
function M.checkpoint_comm()
   M.init()
   return {rank = M.rank, world_size = M.world_size, barrier = M.barrier,
           broadcast_string = M.broadcast_string}
end

-- Interrupts (the protocol is in engine/include/fsdp.h). dist.interrupt()
-- sets this rank's flag (a SIGINT handler in C may too); a collective
-- waiting on peers then raises "rank R: interrupted while waiting in ...",
-- and on MPI every other rank hears of it: its waits raise the same, and
-- dist.interrupted() says true at its next check. Once every rank has
-- stopped, every rank calls dist.resync(): the collectives the interrupt
-- left running end (their tensors were kept alive until then), the groups
-- are in step again and the flag is cleared everywhere. Device (NCCL)
-- groups cannot resync.
function M.interrupt() C.fsdp_comm_interrupt() end

-- true when this rank's flag is set or another rank's notice came (a loop
-- polls it between ops)
function M.interrupted() return C.fsdp_comm_interrupted() ~= 0 end

-- collective over every rank: brings every host group back in step after an
-- interrupt and clears the flag (timeout_s: FSDP_COMM_TIMEOUT by default)
function M.resync(timeout_s)
   M.init()
   -- sub-groups first, the world last (its resync clears the flag)
   local list = {}
   for g in pairs(groups) do if g ~= M.world and not g.device then list[#list + 1] = g end end
   table.sort(list, function(a, b) return a.serial < b.serial end)
   list[#list + 1] = M.world
   for _, g in ipairs(list) do
      if C.fsdp_comm_resync(g.c, timeout_s or 0) ~= 0 then error(bind.last_error(), 0) end
   end
   -- the requests an interrupt left are over now: free them (they say cancelled)
   for _, kept in ipairs(in_flight) do
      local p = kept[1]
      if getmetatable(p) == Pending and p.req ~= nil then
         C.fsdp_comm_wait(p.req, 0)
         p.req, p.done = nil, nil
      end
   end
   in_flight = {}
end

function M.abort(code) C.fsdp_comm_abort(code or 1) end
function M.finalize() if M.world then C.fsdp_comm_finalize() end end

return M
