-- The torchrun-style launch: the same command on two "nodes" (here two
-- launchers on this machine), --nnodes 2 --node-rank 0|1 --master-addr
-- --master-port, one rank each, forms one 2-rank job whose losses equal a
-- --nproc-per-node 2 run's bitwise. A node that never shows up makes node 0
-- fail with a message saying so.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'
local fs = require 'fsdp.fs'

local dir = D.tmpdir()
local args = 'recipes/train_mingpt.lua --preset gpt-nano --max-steps 12 --batch-size 4 --seq-len 32 ' ..
             '--eval-every 0 --log-every 4 --sample-tokens 0 --strategy full '
local port = 20000 + (fs.pid() % 20000)

local st, out = D.run(2, args .. '--run-dir ' .. dir .. '/local')
t.check(st == 0, 'the local 2-rank run failed:\n%s', out)

local function node(k, p, run)
   local m = dir .. '/node' .. k
   os.execute(string.format('(OMP_NUM_THREADS=1 FSDP_RENDEZVOUS_TIMEOUT=60 timeout 200 %s --nnodes 2 --node-rank %d ' ..
                            '--master-addr 127.0.0.1 --master-port %d --nproc-per-node 1 %s --run-dir %s > %s.log 2>&1; ' ..
                            'echo $? > %s.status) &', D.bin, k, p, args, run, m, m))
   return m
end
local n0 = node(0, port, dir .. '/multi')
local n1 = node(1, port, dir .. '/multi')
local function wait_status(m, seconds)
   for _ = 1, seconds * 10 do
      local s = fs.read(m .. '.status')
      if s then return tonumber(s:match('%d+')) end
      os.execute('sleep 0.1')
   end
end
local s0, s1 = wait_status(n0, 200), wait_status(n1, 30)
t.check(s0 == 0 and s1 == 0, 'node 0 exit %s, node 1 exit %s:\n%s\n%s', tostring(s0), tostring(s1),
        fs.read(n0 .. '.log') or '', fs.read(n1 .. '.log') or '')
local log0 = fs.read(n0 .. '.log') or ''
t.check(log0:find('2 rank(s)', 1, true), 'the two nodes form one 2-rank job:\n%s', log0)
local a, b = D.losses(dir .. '/local/metrics.jsonl'), D.losses(dir .. '/multi/metrics.jsonl')
local same = true
for s = 1, 12 do same = same and a[s] ~= nil and a[s] == b[s] end
t.check(same, 'losses of the two-node run differ from the local 2-rank run')

-- node 1 never comes: node 0 says so (short timeout)
local m = dir .. '/lonely'
local st2, out2 = t.sh(string.format('OMP_NUM_THREADS=1 FSDP_RENDEZVOUS_TIMEOUT=3 timeout 60 %s --nnodes 2 --node-rank 0 ' ..
                                     '--master-addr 127.0.0.1 --master-port %d --nproc-per-node 1 %s --run-dir %s',
                                     D.bin, port + 1, args, m))
t.check(st2 ~= 0 and st2 ~= 124 and out2:find('only 1 of 2 nodes joined', 1, true),
        'a missing node is reported and node 0 stops (exit %d):\n%s', st2, out2)
os.execute("pkill -f 'hydra_pmi_proxy.*" .. (port + 1) .. "' 2>/dev/null; pkill -f -- '" .. m .. "' 2>/dev/null")
os.execute('rm -rf ' .. dir)
return t.done()
