-- Jobs started by torchrun alone: every rank a plain `fsdp-lua RECIPE`
-- process with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR
-- and MASTER_PORT in its env and no MPI launcher, as `torchrun --no-python`
-- starts them; the collectives then run over the tcp backend
-- (engine/comm_tcp.c) on MASTER_PORT + 1.
--   * tests/dist/tcp_probe.lua: fsdp.dist on the tcp world (backend, local
--     rank, numbers and strings), and Group:split refused clearly
--   * minGPT for 5 steps on 2 such ranks: the per-step losses of the same job
--     under `fsdp-lua --nproc-per-node 2` (MPI) bit for bit (2-rank sums do
--     not depend on the order), and of 1 rank within 1e-5 relative
--   * the same with --device cuda on the emulated CUDA backend, whose NCCL
--     runs over the tcp comm: the MPI job's losses, and the CPU's
--   * a hybrid strategy: both ranks stop with the "MPI launcher" message
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'
local device = require 'fsdp.device'

local dir = D.tmpdir()
local corpus = fsdp.root .. '/data/tinyshakespeare.txt'
if not require('fsdp.fs').exists(corpus) then corpus = '/usr/share/games/fortunes/cookie' end
local args = 'recipes/train_mingpt.lua --preset gpt-nano --max-steps 5 --batch-size 4 --seq-len 16 ' ..
             '--sample-tokens 0 --eval-every 0 --threads 1 --data ' .. corpus
-- the MPI launchers' env, which would make a plain process an MPI rank
local no_mpi = 'env -u PMI_RANK -u PMI_SIZE -u PMI_FD -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK -u SLURM_PROCID ' ..
               '-u FSDP_TCP_PORT'
math.randomseed(os.time() + math.floor(os.clock() * 1e6))

-- n processes the way torchrun starts them; returns {exit code per rank},
-- and the output of every rank (rank 0 first)
local function torchrun(n, cmd, env)
   local port = math.random(20000, 60000)
   local sh = {}
   for r = 0, n - 1 do
      sh[#sh + 1] = string.format('%s RANK=%d WORLD_SIZE=%d LOCAL_RANK=%d LOCAL_WORLD_SIZE=%d MASTER_ADDR=127.0.0.1 ' ..
                                  'MASTER_PORT=%d OMP_NUM_THREADS=1 FSDP_COMM_TIMEOUT=60 %s timeout 300 %s %s ' ..
                                  '> %s/rank%d.log 2>&1 & p%d=$!', no_mpi, r, n, r, n, port, env or '', D.bin, cmd,
                                  dir, r, r)
   end
   for r = 0, n - 1 do sh[#sh + 1] = string.format('wait $p%d; echo "rank %d exit $?"', r, r) end
   local _, out = t.sh(table.concat(sh, '\n'))
   local codes = {}
   for r, code in out:gmatch('rank (%d+) exit (%d+)') do codes[tonumber(r) + 1] = tonumber(code) end
   local logs = {}
   for r = 0, n - 1 do
      local f = io.open(dir .. '/rank' .. r .. '.log')
      logs[#logs + 1] = f and f:read('*a') or ''
      if f then f:close() end
   end
   return codes, table.concat(logs, '\n----\n')
end

local function all_zero(codes, n)
   for r = 1, n do if codes[r] ~= 0 then return false end end
   return true
end

-- the recipe under torchrun's env (n ranks), MPI (n ranks) or alone (n = 1)
local function losses(how, n, extra, env)
   local run_dir = string.format('%s/%s_%d%s.run', dir, how, n, (extra or ''):gsub('[^%w]', ''))
   local cmd = args .. ' --run-dir ' .. run_dir .. ' ' .. (extra or '')
   if how == 'torchrun' then
      local codes, out = torchrun(n, cmd, env)
      t.check(all_zero(codes, n), 'torchrun-style %d ranks %s: exit codes %s\n%s', n, extra or '',
              table.concat(codes, ' '), out)
   else
      local launch = n > 1 and ' --nproc-per-node ' .. n .. ' ' or ' '
      local status, out = t.sh((env or '') .. ' OMP_NUM_THREADS=1 timeout 300 ' .. D.bin .. launch .. cmd)
      t.check(status == 0, '%s %d ranks %s: exit %d\n%s', how, n, extra or '', status, out)
   end
   return D.losses(run_dir .. '/metrics.jsonl')
end

local function compare(name, a, b, rel)
   local worst = 0
   for step = 1, 5 do
      if not a[step] or not b[step] then worst = math.huge; break end
      worst = math.max(worst, math.abs(a[step] - b[step]) / math.abs(b[step]))
   end
   t.check(worst <= rel, '%s: losses differ by %.3g relative (allowed %g)', name, worst, rel)
   print(string.format('%-34s loss rel diff %.2e', name, worst))
end

-- fsdp.dist on the tcp world
do
   local codes, out = torchrun(2, 'tests/dist/tcp_probe.lua')
   t.check(all_zero(codes, 2) and out:find('probe ok rank 0', 1, true) and out:find('probe ok rank 1', 1, true),
           'tcp probe: exit codes %s\n%s', table.concat(codes, ' '), out)
end

-- the recipe on the CPU
local one = losses('one', 1)
local mpi = losses('mpi', 2)
local tcp = losses('torchrun', 2)
compare('torchrun env vs MPI, 2 ranks', tcp, mpi, 0)
compare('torchrun env, 2 ranks vs 1 rank', tcp, one, 1e-5)

-- the emulated GPU: its NCCL runs over whatever host comm it is given
-- (a smaller model: the emulation runs kernels as fibers on the CPU)
do
   local emu = 'FSDP_CUDA_LIB=' .. device.emulated_library_path()
   local small = '--n-layer 1 --n-embd 16 --n-head 2 --eval-batches 1 '
   local cpu = losses('one', 1, small)
   local mpi_cuda = losses('mpi', 2, small .. '--device cuda', emu)
   local tcp_cuda = losses('torchrun', 2, small .. '--device cuda', emu)
   compare('cuda (emulated): torchrun env vs MPI', tcp_cuda, mpi_cuda, 0)
   compare('cuda (emulated): torchrun env vs cpu', tcp_cuda, cpu, 1e-3)
end

-- hybrid strategies need sub-groups, which only MPI gives
do
   local codes, out = torchrun(2, args .. ' --strategy hybrid_full --run-dir ' .. dir .. '/hybrid.run')
   t.check(codes[1] ~= 0 and codes[2] ~= 0 and codes[1] ~= 124 and codes[2] ~= 124,
           'hybrid under torchrun env: want both ranks to fail without hanging, got %s', table.concat(codes, ' '))
   t.check(out:find('hybrid strategies need an MPI launcher', 1, true), 'hybrid refusal message:\n%s', out)
end

os.execute('rm -rf ' .. dir)
return t.done()
