-- fsdp.threads, the one thread policy: the count it picks from --threads,
-- OMP_NUM_THREADS and the cores per local rank (1 and 2 ranks), the
-- oversubscription and OPENBLAS_NUM_THREADS warnings, the OpenMP wait
-- policy main.lua sets before libfsdp loads (and leaves alone when the
-- environment chose one), and a bad --threads as a clear error.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local threads = require 'fsdp.threads'

local bin = fsdp.root .. '/build/fsdp-lua'
local cores = tonumber(fsdp.C.fsdp_get_num_cores())
t.check(cores >= 1, 'fsdp_get_num_cores gave %d', cores)

-- the pure choice
do
   local n, src = threads.choose(3, 8, 2)
   t.check(n == 3 and src == '--threads', '--threads 3: got %d from %s', n, src)
   if not os.getenv('OMP_NUM_THREADS') then
      n, src = threads.choose(0, 8, 2)
      t.check(n == 4 and src == 'cores / local ranks', '8 cores, 2 ranks: got %d from %s', n, src)
      n = threads.choose(0, 2, 4)
      t.check(n == 1, '2 cores, 4 ranks: got %d threads, want at least 1', n)
   end
   t.raises(function() threads.choose(-1, 8, 1) end, {'--threads', '-1'}, 'negative --threads')
   t.raises(function() threads.choose(1.5, 8, 1) end, {'--threads', '1.5'}, 'fractional --threads')
end

-- a script that applies the policy and reports what it got
local script = os.tmpname() .. '.lua'
local f = assert(io.open(script, 'w'))
f:write([[
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
dist.init()
local n = require('fsdp.threads').setup(tonumber(arg[1] or '0'))
print(string.format('THREADS rank=%d n=%d omp=%d policy=%s spin=%s', dist.rank, n, fsdp.get_num_threads(),
                    tostring(os.getenv('OMP_WAIT_POLICY')), tostring(os.getenv('GOMP_SPINCOUNT'))))
print(string.format('BLAS env=%s core=%s', tostring(os.getenv('OPENBLAS_CORETYPE')),
                    require('ffi').string(fsdp.C.fsdp_blas_core())))
]])
f:close()

local function run(env, args, nproc)
   local launch = nproc and (' --nproc-per-node ' .. nproc) or ''
   -- the environment the test itself runs in must not leak into the cases
   local cmd = string.format('env -u OMP_NUM_THREADS -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u OPENBLAS_NUM_THREADS '
                             .. '-u OPENBLAS_CORETYPE '
                             .. '%s timeout 120 %s%s %s %s 2>&1', env, bin, launch, script, args or '')
   local p = io.popen(cmd)
   local out = p:read('*a')
   p:close()
   return out
end
local function got(out, rank)
   local n, omp, pol, spin = out:match('THREADS rank=' .. (rank or 0) .. ' n=(%d+) omp=(%d+) policy=(%S+) spin=(%S+)')
   return tonumber(n), tonumber(omp), pol, spin
end

do -- defaults: every core, spin then sleep
   local out = run('', '')
   local n, omp, pol, spin = got(out)
   t.check(n == cores and omp == cores, 'default: %s threads (OpenMP %s), want the %d cores\n%s', tostring(n),
           tostring(omp), cores, out)
   t.check(pol == 'nil' and spin == tostring(threads.SPIN_COUNT),
           'default: wait policy %s, spin count %s, want no policy and %d spins\n%s', tostring(pol), tostring(spin),
           threads.SPIN_COUNT, out)
   t.check(not out:find('warning'), 'default: unexpected warning\n%s', out)
end
do -- --threads wins over OMP_NUM_THREADS
   local n, omp = got(run('OMP_NUM_THREADS=3', '1'))
   t.check(n == 1 and omp == 1, '--threads 1 with OMP_NUM_THREADS=3: got %s', tostring(n))
end
do -- OMP_NUM_THREADS is taken; more than the cores is warned about
   local want = cores + 2
   local out = run('OMP_NUM_THREADS=' .. want, '')
   local n = got(out)
   t.check(n == want, 'OMP_NUM_THREADS=%d: got %s\n%s', want, tostring(n), out)
   t.check(out:find('oversubscribed', 1, true) and out:find('OMP_NUM_THREADS', 1, true),
           'OMP_NUM_THREADS=%d on %d cores: no oversubscription warning naming it\n%s', want, cores, out)
end
do -- OPENBLAS_NUM_THREADS cannot pick a count of its own
   local out = run('OPENBLAS_NUM_THREADS=7', '1')
   t.check(out:find('OPENBLAS_NUM_THREADS=7 is overridden', 1, true), 'no OPENBLAS_NUM_THREADS warning\n%s', out)
end
do -- a wait policy or spin count in the environment is left alone
   local _, _, pol, spin = got(run('OMP_WAIT_POLICY=active', ''))
   t.check(pol == 'active' and spin == 'nil', 'OMP_WAIT_POLICY=active became %s, spin count %s', tostring(pol),
           tostring(spin))
   _, _, pol, spin = got(run('GOMP_SPINCOUNT=1000', ''))
   t.check(pol == 'nil' and spin == '1000', 'GOMP_SPINCOUNT=1000 became policy %s, spin count %s', tostring(pol),
           tostring(spin))
end
do -- 2 local ranks share the cores
   local out = run('', '', 2)
   local want = math.max(1, math.floor(cores / 2))
   for r = 0, 1 do
      local n = got(out, r)
      t.check(n == want, '2 ranks: rank %d got %s threads, want %d\n%s', r, tostring(n), want, out)
   end
   t.check(cores < 2 or not out:find('oversubscribed'), '2 ranks on %d cores: unexpected warning\n%s', cores, out)
end
do -- OpenBLAS's kernels follow the instruction sets the CPU reports
   local function set(list)
      local f = {}
      for w in list:gmatch('%S+') do f[w] = true end
      return f
   end
   local cases = {
      {'sse sse2 sse3 avx avx2 fma avx512f avx512cd avx512dq avx512bw avx512vl avx512_bf16', 'SkylakeX'},
      {'sse sse2 avx avx2 fma avx512f', 'Haswell'}, -- AVX-512 F alone (Knights Landing) is not SkylakeX's set
      {'sse sse2 avx avx2 fma', 'Haswell'}, {'sse sse2 avx', 'Sandybridge'}, {'sse sse2 sse3', nil}, {'', nil},
   }
   for _, c in ipairs(cases) do
      t.check(threads.blas_coretype(set(c[1])) == c[2], 'flags {%s}: %s, want %s', c[1],
              tostring(threads.blas_coretype(set(c[1]))), tostring(c[2]))
   end
   local want = threads.blas_coretype(threads.cpu_flags())
   local out = run('', '')
   local env, core = out:match('BLAS env=(%S+) core=(%S+)')
   t.check(env == tostring(want), 'this machine: OPENBLAS_CORETYPE=%s, want %s\n%s', tostring(env), tostring(want), out)
   t.check(not want or core == want, 'OpenBLAS took the %s kernels, want %s\n%s', tostring(core), tostring(want), out)
   env, core = run('OPENBLAS_CORETYPE=Prescott', ''):match('BLAS env=(%S+) core=(%S+)')
   t.check(env == 'Prescott' and core == 'Prescott', 'OPENBLAS_CORETYPE=Prescott in the environment: %s, core %s',
           tostring(env), tostring(core))
end
do -- a bad --threads is an error naming the option
   local out = run('', '-2')
   t.check(out:find('--threads must be a whole number', 1, true), '--threads -2 gave no clear error\n%s', out)
end
os.remove(script)

return t.done()
