-- fsdp.threads: the one thread policy of every recipe and sub-command.
--
--   threads.before_load()      main.lua, before libfsdp (and OpenMP) is loaded:
--                              the OpenMP wait policy
--   threads.option             the option spec a recipe lists: --threads N
--   threads.setup(n)           after dist.init(): this rank's thread count,
--                              applied to OpenMP and OpenBLAS; returns it
--
-- The count. --threads N when given (N > 0), else OMP_NUM_THREADS when set,
-- else the cores this process may use (its affinity mask) divided among the
-- ranks on this node, at least 1. OpenBLAS is Debian's OpenMP build, so our
-- kernels and its GEMMs share one pool of that size. When the node's ranks
-- ask for more threads than it has cores, rank 0 of the node warns: threads
-- that wait for each other at every kernel while the scheduler rotates them
-- through too few cores make a step many times slower.
--
-- The wait policy: spin, then sleep. A thread that finished its share of a
-- kernel waits for the next one. Sleeping at once (OMP_WAIT_POLICY=passive)
-- makes every kernel pay a futex wake-up of the sleeping thread: on the
-- virtual machines measured here, 50-100 us per parallel region (a 16k-float
-- loop went from 5 us to 85 us), which is most of a small model's step.
-- Spinning forever (active, or libgomp's default 300,000 spins) takes the
-- time slices other processes on a busy machine need. So a thread spins
-- about as long as a wake-up costs, GOMP_SPINCOUNT=10000 (~100 us), then
-- sleeps: the classic spin-then-block bound, never more than twice the
-- better of the two. Between a step's kernels the gap is a few
-- microseconds, so they find the team awake; on a busy machine a waiting
-- thread gives its core up within ~100 us. (Measured with bench/threads.sh
-- and bench/run.sh; issue 17.) OMP_WAIT_POLICY or GOMP_SPINCOUNT in the
-- environment take precedence. libgomp reads these when it is loaded, which
-- is why main.lua sets them before anything loads libfsdp.
--
-- OpenBLAS's kernels. Debian's OpenBLAS is built for every x86 generation
-- (DYNAMIC_ARCH) and picks its kernels at load from the CPU's family and
-- model numbers; a model newer than its table gets the oldest kernels. On
-- the VMs this project runs on (Xeon family 6 model 207; OpenBLAS 0.3.21)
-- that was Prescott (SSE3): sgemm at 32 GFLOP/s per core where the AVX-512
-- kernels reach 161. So before OpenBLAS loads, OPENBLAS_CORETYPE is set from
-- the instruction sets the CPU reports (/proc/cpuinfo flags): AVX-512
-- (F/CD/DQ/BW/VL) -> SkylakeX, AVX2 + FMA -> Haswell, AVX -> Sandybridge,
-- the kernel families OpenBLAS itself uses for the CPUs it knows. An
-- OPENBLAS_CORETYPE in the environment is left alone; fsdp_blas_core()
-- names what OpenBLAS took.
local M = {}

M.SPIN_COUNT = 10000

M.option = {'threads', 0, 'threads per rank (0: OMP_NUM_THREADS, else the cores of this node / its ranks)',
            type = 'integer', min = 0, aliases = {'num_threads'}}

-- the OpenBLAS kernel family for a CPU with these /proc/cpuinfo flags
-- (a set: flags.avx2 == true), or nil to leave OpenBLAS's choice
function M.blas_coretype(flags)
   local avx512 = true
   for _, f in ipairs({'avx512f', 'avx512cd', 'avx512dq', 'avx512bw', 'avx512vl'}) do
      avx512 = avx512 and flags[f] == true
   end
   if avx512 then return 'SkylakeX' end
   if flags.avx2 and flags.fma then return 'Haswell' end
   if flags.avx then return 'Sandybridge' end
   return nil
end

-- the flags of this machine's first CPU (empty where /proc/cpuinfo has none)
function M.cpu_flags(path)
   local flags = {}
   local f = io.open(path or '/proc/cpuinfo', 'r')
   if not f then return flags end
   for line in f:lines() do
      local list = line:match('^flags%s*:%s*(.*)$')
      if list then
         for w in list:gmatch('%S+') do flags[w] = true end
         break
      end
   end
   f:close()
   return flags
end

-- sets the OpenMP spin count (unless the environment chose a wait policy
-- or a count) and OpenBLAS's kernels (unless OPENBLAS_CORETYPE is set) for
-- this process and the ranks it launches; must run before libfsdp is loaded
function M.before_load()
   local ffi = require 'ffi'
   pcall(ffi.cdef, 'int setenv(const char *name, const char *value, int overwrite);')
   if not (os.getenv('OMP_WAIT_POLICY') or os.getenv('GOMP_SPINCOUNT')) then
      ffi.C.setenv('GOMP_SPINCOUNT', tostring(M.SPIN_COUNT), 0)
   end
   if not os.getenv('OPENBLAS_CORETYPE') then
      local core = M.blas_coretype(M.cpu_flags())
      if core then ffi.C.setenv('OPENBLAS_CORETYPE', core, 0) end
   end
end

local function env_int(name)
   local v = tonumber(os.getenv(name) or '')
   if v and v >= 1 and v == math.floor(v) then return v end
   return nil
end

-- the thread count for `requested` (the --threads value; 0 or nil: choose)
-- on a node with `cores` cores and `ranks` local ranks: n and where it came from
function M.choose(requested, cores, ranks)
   requested = tonumber(requested) or 0
   if requested < 0 or requested ~= math.floor(requested) then
      error(string.format('--threads must be a whole number >= 0 (0: automatic), got %s', tostring(requested)), 0)
   end
   if requested > 0 then return requested, '--threads' end
   local env = env_int('OMP_NUM_THREADS')
   if env then return env, 'OMP_NUM_THREADS' end
   return math.max(1, math.floor(cores / math.max(1, ranks))), 'cores / local ranks'
end

-- applies the policy to this rank; returns the thread count. opts.quiet:
-- no warning (tests)
function M.setup(requested, opts)
   opts = opts or {}
   local bind = require 'fsdp.ffi'
   local C = bind.C
   local dist = package.loaded['fsdp.dist']
   local ranks, local_rank = 1, 0
   if dist and dist.world then ranks, local_rank = dist.local_world_size, dist.local_rank end
   local cores = tonumber(C.fsdp_get_num_cores())
   local n, source = M.choose(requested, cores, ranks)
   C.fsdp_set_num_threads(n)
   M.threads, M.source, M.cores, M.ranks = n, source, cores, ranks
   if local_rank == 0 and not opts.quiet then
      local log = require 'fsdp.log'
      if n * ranks > cores then
         log.warn('%d rank(s) x %d thread(s) (%s) on %d core(s): the cores are oversubscribed and every kernel '
                  .. 'waits for descheduled threads; use --threads %d', ranks, n, source, cores,
                  math.max(1, math.floor(cores / ranks)))
      end
      local blas = os.getenv('OPENBLAS_NUM_THREADS')
      if blas and tonumber(blas) ~= n then
         log.warn('OPENBLAS_NUM_THREADS=%s is overridden: OpenBLAS shares the %d OpenMP thread(s) of %s', blas, n,
                  source)
      end
   end
   return n
end

return M
