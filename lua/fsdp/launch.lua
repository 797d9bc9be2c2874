-- fsdp.launch: `fsdp-lua --nproc-per-node N RECIPE ...` starts N local ranks.
-- MPICH's process manager (hydra's mpiexec) does the work: it starts the
-- ranks with PMI in their environment (which fsdp.dist joins), prefixes each
-- line of output with its rank, and when one rank dies it takes the others
-- down and exits non-zero. This process becomes mpiexec (exec), so signals
-- reach the job directly.
local ffi = require 'ffi'
local fs = require 'fsdp.fs'

local M = {}

pcall(ffi.cdef, 'int execvp(const char *file, char *const argv[]);')

-- launcher flags (before the recipe); returns a table or nil when absent
function M.parse(args)
   local opts, i = {}, 1
   local known = {['--nproc-per-node'] = 'nproc', ['--nnodes'] = 'nnodes', ['--node-rank'] = 'node_rank',
                  ['--master-addr'] = 'master_addr', ['--master-port'] = 'master_port', ['--hosts'] = 'hosts',
                  ['--max-restarts'] = 'max_restarts'}
   while args[i] and known[args[i]:match('^[^=]+')] do
      local k, v = args[i]:match('^([^=]+)=(.*)$')
      if not k then k, v = args[i], args[i + 1]; i = i + 1 end
      if v == nil then error('launcher: ' .. k .. ' needs a value', 0) end
      opts[known[k]] = v
      i = i + 1
   end
   if not next(opts) then return nil end
   -- torchrun's environment fills in what the flags leave out
   for flag, env in pairs({nnodes = 'NNODES', node_rank = 'NODE_RANK', master_addr = 'MASTER_ADDR',
                           master_port = 'MASTER_PORT'}) do
      if opts[flag] == nil and os.getenv(env) then opts[flag] = os.getenv(env) end
   end
   local rest = {}
   for j = i, #args do rest[#rest + 1] = args[j] end
   return opts, rest
end

local function which(prog)
   local p = io.popen('command -v ' .. prog .. ' 2>/dev/null')
   local out = p:read('*l')
   p:close()
   return out
end

function M.exec(opts, rest, self_exe)
   local n = tonumber(opts.nproc or '1')
   if not n or n < 1 or n ~= math.floor(n) then error('launcher: --nproc-per-node wants a positive integer', 0) end
   if #rest == 0 then error('launcher: no recipe given after the launcher flags', 0) end
   local nnodes = tonumber(opts.nnodes or '1')
   local mpiexec = which('mpiexec.hydra') or which('mpiexec')
   if not mpiexec then error('launcher: mpiexec (MPICH) is not installed: run make deps', 0) end
   local argv = {mpiexec}
   local function add(...) for _, a in ipairs({...}) do argv[#argv + 1] = a end end
   if nnodes > 1 and not opts.hosts then
      return M.per_node(opts, rest, self_exe, mpiexec, n, nnodes)
   end
   if nnodes > 1 then
      -- several machines from this one: hydra logs in to every host over ssh
      add('-hosts', opts.hosts, '-ppn', tostring(n), '-n', tostring(n * nnodes))
   else
      add('-n', tostring(n))
   end
   if rest[1] ~= '-i' then add('-prepend-pattern', '[rank %r] ') end -- the REPL prints on rank 0 only
   add('-genv', 'LOCAL_WORLD_SIZE', tostring(n))
   if opts.master_addr then add('-genv', 'MASTER_ADDR', opts.master_addr) end
   if opts.master_port then add('-genv', 'MASTER_PORT', opts.master_port) end
   add(self_exe)
   for _, a in ipairs(rest) do add(a) end
   io.stdout:flush()
   local restarts = tonumber(opts.max_restarts or '0') or 0
   if restarts > 0 then return M.supervise(argv, restarts) end
   local cargv = ffi.new('char*[?]', #argv + 1)
   local keep = {}
   for i, a in ipairs(argv) do
      keep[i] = ffi.new('char[?]', #a + 1, a)
      cargv[i - 1] = keep[i]
   end
   cargv[#argv] = nil
   ffi.C.execvp(argv[1], cargv)
   error('launcher: cannot run ' .. argv[1], 0)
end

-- The torchrun way: the same command on every node, with --nnodes N
-- --node-rank K --master-addr A --master-port P. Node 0 runs hydra's mpiexec
-- with its manual launcher, which prints one proxy command per node instead
-- of logging in anywhere; node 0 starts proxy 0 itself and hands proxy k to
-- node k over A:P (engine/rendezvous.c); the proxies then connect back to
-- mpiexec on A and start the ranks, which join as one MPI job.
function M.per_node(opts, rest, self_exe, mpiexec, n, nnodes)
   local C = require('fsdp.ffi').C
   local k = tonumber(opts.node_rank or '')
   if not k or k < 0 or k >= nnodes then
      error(string.format('launcher: --nnodes %d needs --node-rank 0..%d (or --hosts to start every node from here)', nnodes, nnodes - 1), 0)
   end
   local addr = opts.master_addr
   if not addr then error('launcher: --nnodes > 1 needs --master-addr (the address of node 0)', 0) end
   local port = tonumber(opts.master_port or '29500')
   local timeout = tonumber(os.getenv('FSDP_RENDEZVOUS_TIMEOUT') or '600')
   if k > 0 then
      local buf = ffi.new('char[8192]')
      if C.fsdp_rendezvous_fetch(addr, port, k, buf, 8192, timeout) ~= 0 then
         error('launcher: node ' .. k .. ': ' .. require('fsdp.ffi').last_error(), 0)
      end
      local line = ffi.string(buf)
      io.stdout:flush()
      local raw = os.execute(line)
      return raw > 255 and math.floor(raw / 256) or raw
   end
   local names = {}
   for i = 0, nnodes - 1 do names[#names + 1] = 'fsdp-node' .. i end
   local argv = {mpiexec, '-launcher', 'manual', '-localhost', addr, '-hosts', table.concat(names, ','),
                 '-ppn', tostring(n), '-n', tostring(n * nnodes), '-prepend-pattern', '[rank %r] ',
                 '-genv', 'LOCAL_WORLD_SIZE', tostring(n), self_exe}
   for _, a in ipairs(rest) do argv[#argv + 1] = a end
   local quoted = {}
   for i, a in ipairs(argv) do quoted[i] = fs.quote(a) end
   local status_file = os.tmpname()
   local p = io.popen('(' .. table.concat(quoted, ' ') .. ' 2>&1 & echo FSDP_MPIEXEC_PID $!; wait $!; echo $? > ' ..
                      fs.quote(status_file) .. ')')
   local lines, pid = {}, nil
   for line in p:lines() do
      local cmd = line:match('^HYDRA_LAUNCH: (.*)$')
      if line:match('^FSDP_MPIEXEC_PID ') then pid = line:match('%d+')
      elseif cmd then lines[#lines + 1] = cmd
      elseif line == 'HYDRA_LAUNCH_END' then break
      else io.write(line, '\n') end
   end
   if #lines ~= nnodes then error(string.format('launcher: mpiexec offered %d node commands, not %d', #lines, nnodes), 0) end
   os.execute(lines[1] .. ' &')
   local cl = ffi.new('const char*[?]', nnodes)
   for i = 1, nnodes do cl[i - 1] = lines[i] end
   if C.fsdp_rendezvous_serve(port, cl, nnodes, timeout) ~= 0 then
      -- not every node came: stop the job rather than wait for them forever
      io.stderr:write('fsdp-lua launcher: ' .. require('fsdp.ffi').last_error() .. '; stopping the job\n')
      local control = lines[1]:match('%-%-control%-port (%S+)')
      if pid then os.execute('kill -9 ' .. pid .. ' 2>/dev/null') end
      if control then os.execute("pkill -9 -f -- '--control-port " .. control .. "' 2>/dev/null") end
      p:close()
      os.remove(status_file)
      return 1
   end
   for line in p:lines() do io.write(line, '\n'); io.stdout:flush() end
   p:close()
   local status = tonumber((fs.read(status_file) or ''):match('%d+')) or 1
   os.remove(status_file)
   return status
end

-- --max-restarts K: runs the job, and when it fails (a rank died or
-- raised), runs it again, up to K times; the recipe resumes from its
-- checkpoint directory's `latest`. A job that ends with status 0 (done, or
-- preempted with a checkpoint) is not restarted.
function M.supervise(argv, restarts)
   local quoted = {}
   for i, a in ipairs(argv) do quoted[i] = fs.quote(a) end
   local cmd = table.concat(quoted, ' ')
   local attempt = 0
   while true do
      local raw = os.execute(cmd)
      local status = raw > 255 and math.floor(raw / 256) or raw
      if status == 0 then return 0 end
      if attempt >= restarts then
         io.stderr:write(string.format('fsdp-lua launcher: the job failed (exit %d) and %d restart(s) are used up\n',
                                       status, restarts))
         return status
      end
      attempt = attempt + 1
      io.stderr:write(string.format('fsdp-lua launcher: the job failed (exit %d); restarting it (%d of %d)\n',
                                    status, attempt, restarts))
   end
end

return M
