-- fsdp.launch: `fsdp-lua --nproc-per-node N RECIPE ...` starts N local ranks.
-- MPICH's process manager (hydra's mpiexec) does the work: it starts the
-- ranks with PMI in their environment (which fsdp.dist joins), prefixes each
-- line of output with its rank, and when one rank dies it takes the others
-- down and exits non-zero. This process becomes mpiexec (exec), so signals
-- reach the job directly.
local ffi = require 'ffi'
local fs = require 'fsdp.fs'

local M = {}

-- what mpiexec writes before each rank's output
local RANK_PREFIX = '[rank %r] '

pcall(ffi.cdef, 'int execvp(const char *file, char *const argv[]);')
pcall(ffi.cdef, [[
int fork(void);
int waitpid(int pid, int *status, int options);
int kill(int pid, int sig);
int usleep(unsigned int usec);
void _exit(int status);
int isatty(int fd);
char *ttyname(int fd);
int open(const char *path, int flags, ...);
int dup2(int oldfd, int newfd);
int close(int fd);
]])

-- The launcher's flags, before the recipe, with torchrun's spellings:
-- underscores or dashes (--nproc_per_node), `--flag value` or `--flag=value`.
-- {flag, field, takes a value, meaning}
M.FLAGS = {
   {'--nproc-per-node', 'nproc', true, 'ranks to start on each machine (default 1); gpu: one per GPU; auto: one per ' ..
    'GPU, else one per core; cpu: one per core (torchrun\'s values)'},
   {'--nnodes', 'nnodes', true, 'machines (default 1); with --node-rank and --master-addr each machine runs the ' ..
    'same command (torchrun\'s way), with --hosts this one starts them all over ssh; an elastic range (1:4) is refused'},
   {'--node-rank', 'node_rank', true, 'this machine\'s place 0..nnodes-1 when every machine runs the command ' ..
    '(node 0 hands the others their part of the job over --master-addr:--master-port)'},
   {'--master-addr', 'master_addr', true, 'node 0\'s address for --nnodes > 1 (also exported to the ranks as ' ..
    'MASTER_ADDR)'},
   {'--master-port', 'master_port', true, 'the port node 0 listens on for the other nodes (default 29500; also ' ..
    'exported as MASTER_PORT)'},
   {'--rdzv-endpoint', 'rdzv_endpoint', true, 'HOST[:PORT]: torchrun\'s spelling of --master-addr and --master-port'},
   {'--rdzv-backend', 'rdzv_backend', true, 'accepted for torchrun commands (c10d, static) and not needed: node 0 ' ..
    'is the rendezvous'},
   {'--rdzv-id', 'rdzv_id', true, 'accepted for torchrun commands and not needed (one job per command)'},
   {'--standalone', 'standalone', false, 'one machine with a local rendezvous, as torchrun\'s --standalone (the ' ..
    'default; refused with --nnodes > 1)'},
   {'--hosts', 'hosts', true, 'comma-separated host names for --nnodes > 1 started from this machine (passed to ' ..
    'mpiexec -hosts; hydra logs in over ssh)'},
   {'--max-restarts', 'max_restarts', true, 'run the whole job again when it fails, up to K times (it resumes from ' ..
    'its checkpoint)'},
   {'--no-python', 'no_python', false, 'accepted for torchrun commands (fsdp-lua is no Python program)'},
}
local by_flag = {}
for _, f in ipairs(M.FLAGS) do by_flag[f[1]] = f end

-- a launcher flag's canonical spelling: --nproc_per_node=4 -> --nproc-per-node
local function canonical(a)
   local name = a:match('^(%-%-[^=]+)')
   return name and name:gsub('_', '-') or nil
end

-- true when args[1] is meant for the launcher (any --flag before the recipe)
function M.handles(a)
   return a ~= nil and a:sub(1, 2) == '--' and a ~= '--help'
end

function M.usage()
   local lines = {'usage: fsdp-lua [launcher flags] RECIPE [options]   (or -i [SCRIPT] for the REPL)',
                  '', 'launcher flags (torchrun\'s spellings work too: --nproc_per_node 4, --nnodes=2):'}
   for _, f in ipairs(M.FLAGS) do
      lines[#lines + 1] = string.format('  %-18s %s', f[1] .. (f[3] and ' V' or ''), f[4])
   end
   return table.concat(lines, '\n')
end

local function all_flags()
   local out = {}
   for _, f in ipairs(M.FLAGS) do out[#out + 1] = f[1] end
   return table.concat(out, ', ')
end

-- launcher flags (before the recipe); returns the options and the rest (the
-- recipe and its arguments), or nil, usage text for --help. Raises for an
-- unknown flag, naming every flag.
function M.parse(args)
   local opts, i = {}, 1
   while args[i] and args[i]:sub(1, 2) == '--' do
      local a = args[i]
      if a == '--help' or a == '-h' then return nil, M.usage() end
      local name = canonical(a)
      local f = by_flag[name]
      if not f then
         local names = {}
         for _, g in ipairs(M.FLAGS) do names[#names + 1] = g[1]:sub(3):gsub('-', '_') end
         local best, d = require('fsdp.cli').closest(name:sub(3):gsub('-', '_'), names)
         local hint = best and d <= math.max(2, math.floor(#name / 3)) and ('did you mean --' .. best:gsub('_', '-') ..
                      '? ') or ''
         error(string.format('launcher: unknown flag %s before the recipe; %slauncher flags: %s (recipe options ' ..
                             'go after the recipe)', name, hint, all_flags()), 0)
      end
      local v = a:match('^[^=]+=(.*)$')
      if f[3] then
         if v == nil then
            v = args[i + 1]
            i = i + 1
            if v == nil then error('launcher: ' .. f[1] .. ' needs a value', 0) end
         end
      else
         if v ~= nil then error('launcher: ' .. f[1] .. ' takes no value (got ' .. v .. ')', 0) end
         v = true
      end
      opts[f[2]] = v
      i = i + 1
   end
   if not next(opts) then return nil end
   -- torchrun's spellings onto ours
   if opts.rdzv_endpoint then
      local host, port = tostring(opts.rdzv_endpoint):match('^%[?([^%]]-)%]?:(%d+)$')
      host = host or opts.rdzv_endpoint
      opts.master_addr = opts.master_addr or host
      opts.master_port = opts.master_port or port
   end
   if opts.nnodes and tostring(opts.nnodes):find(':', 1, true) then
      error(string.format('launcher: --nnodes %s is an elastic range; fsdp-lua runs a fixed number of machines: ' ..
                          'give one number', opts.nnodes), 0)
   end
   -- torchrun's environment fills in what the flags leave out
   for flag, env in pairs({nnodes = 'NNODES', node_rank = 'NODE_RANK', master_addr = 'MASTER_ADDR',
                           master_port = 'MASTER_PORT'}) do
      if opts[flag] == nil and os.getenv(env) then opts[flag] = os.getenv(env) end
   end
   if opts.standalone and opts.nnodes and tonumber(opts.nnodes) ~= 1 then
      error('launcher: --standalone is one machine; it cannot go with --nnodes ' .. opts.nnodes, 0)
   end
   local rest = {}
   for j = i, #args do rest[#rest + 1] = args[j] end
   return opts, rest
end

-- the number of cores of this machine
local function cores()
   local p = io.popen('env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null') -- nproc heeds them
   local n = p and tonumber(p:read('*l') or '')
   if p then p:close() end
   return n or 1
end

-- --nproc-per-node's value as a number: N, gpu, auto or cpu (torchrun's)
function M.nproc(v)
   v = tostring(v or '1')
   if v == 'gpu' or v == 'auto' then
      local n, why = require('fsdp.device').cuda_device_count()
      if n and n > 0 then return n end
      if v == 'gpu' then
         error('launcher: --nproc-per-node gpu: no GPU is usable here (' .. tostring(why or 'none found') ..
               '); give a number', 0)
      end
      return cores()
   end
   if v == 'cpu' then return cores() end
   local n = tonumber(v)
   if not n or n < 1 or n ~= math.floor(n) then
      error(string.format("launcher: --nproc-per-node wants a positive integer, gpu, auto or cpu, got '%s'", v), 0)
   end
   return n
end

local function which(prog)
   local p = io.popen('command -v ' .. prog .. ' 2>/dev/null')
   local out = p:read('*l')
   p:close()
   return out
end

function M.exec(opts, rest, self_exe)
   local n = M.nproc(opts.nproc)
   if #rest == 0 then error('launcher: no recipe given after the launcher flags', 0) end
   local nnodes = tonumber(opts.nnodes or '1')
   if not nnodes or nnodes < 1 or nnodes ~= math.floor(nnodes) then
      error(string.format("launcher: --nnodes wants a positive integer, got '%s'", tostring(opts.nnodes)), 0)
   end
   local restarts = tonumber(opts.max_restarts or '0')
   if not restarts or restarts < 0 or restarts ~= math.floor(restarts) then
      error(string.format("launcher: --max-restarts wants an integer >= 0, got '%s'", tostring(opts.max_restarts)), 0)
   end
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
   if rest[1] ~= '-i' then add('-prepend-pattern', RANK_PREFIX) end -- the REPL prints on rank 0 only
   local pidfile
   if rest[1] == '-i' then -- rank 0 says where Ctrl-C should go (M.repl_job)
      pidfile = os.tmpname()
      add('-genv', 'FSDP_REPL_PIDFILE', pidfile)
   end
   add('-genv', 'LOCAL_WORLD_SIZE', tostring(n))
   -- rank 0 draws a progress bar when this terminal is where its lines go
   -- (through mpiexec its stdout is a pipe): tell it, with the width it
   -- may use. mpiexec writes '[rank 0] ' before each piece of output it
   -- passes on, so before each redraw, right after the bar: leave room.
   local width = require('fsdp.run').terminal_width(1)
   if width and rest[1] ~= '-i' then
      local prefix = RANK_PREFIX:gsub('%%r', '0')
      add('-genv', 'FSDP_TTY_COLUMNS', tostring(math.max(20, width - #prefix)))
   end
   if opts.master_addr then add('-genv', 'MASTER_ADDR', opts.master_addr) end
   if opts.master_port then add('-genv', 'MASTER_PORT', opts.master_port) end
   add(self_exe)
   for _, a in ipairs(rest) do add(a) end
   io.stdout:flush()
   if restarts > 0 then return M.supervise(argv, restarts) end
   if pidfile then return M.repl_job(argv, pidfile) end
   local cargv, keep = M.c_argv(argv)
   local _ = keep
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
-- argv as a NULL-terminated char*[] (and what keeps its strings alive)
function M.c_argv(argv)
   local cargv = ffi.new('char*[?]', #argv + 1)
   local keep = {}
   for i, a in ipairs(argv) do
      keep[i] = ffi.new('char[?]', #a + 1, a)
      cargv[i - 1] = keep[i]
   end
   cargv[#argv] = nil
   return cargv, keep
end

-- The REPL under the launcher. mpiexec (hydra) forwards the first Ctrl-C
-- to the ranks and aborts the job on the second, which would end a session
-- at the second interrupted statement. So this process stays: mpiexec runs
-- as its child with SIGINT blocked (the mask survives exec; a rank
-- unblocks it when it watches it), and each Ctrl-C this process receives
-- goes to rank 0 alone (its pid is in pidfile), where it becomes the
-- collective interrupt every rank observes (fsdp.repl). SIGTERM still ends
-- the job: it goes to mpiexec, which passes it on.
function M.repl_job(argv, pidfile)
   local C = require('fsdp.ffi').C
   -- on a terminal, rank 0 reads and writes it directly (line editing,
   -- history, tab completion) and mpiexec reads nothing
   local tty = ffi.C.isatty(0) == 1 and ffi.C.ttyname(0) ~= nil and ffi.string(ffi.C.ttyname(0)) or nil
   if tty then table.insert(argv, 2, '-genv'); table.insert(argv, 3, 'FSDP_REPL_TTY'); table.insert(argv, 4, tty) end
   local saved = tty and io.popen('stty -g 2>/dev/null'):read('*l')
   local cargv, keep = M.c_argv(argv)
   io.stdout:flush()
   local pid = ffi.C.fork()
   if pid < 0 then error('launcher: cannot fork to start ' .. argv[1], 0) end
   if pid == 0 then
      C.fsdp_signal_block(2, 1)
      if tty then
         local null = ffi.C.open('/dev/null', 0)
         if null >= 0 then ffi.C.dup2(null, 0); ffi.C.close(null) end
      end
      ffi.C.execvp(argv[1], cargv)
      ffi.C._exit(127)
   end
   local _ = keep
   C.fsdp_signal_watch(2)
   C.fsdp_signal_watch(15)
   local status = ffi.new('int[1]')
   local rank0
   while true do
      local done = ffi.C.waitpid(pid, status, 1) -- WNOHANG
      if done == pid then break end
      local sig = C.fsdp_signal_pending(1)
      if sig == 15 then ffi.C.kill(pid, 15)
      elseif sig == 2 then
         if not rank0 then
            local f = io.open(pidfile, 'r')
            rank0 = f and tonumber(f:read('*l') or '')
            if f then f:close() end
         end
         if rank0 then ffi.C.kill(rank0, 2) end
      end
      ffi.C.usleep(20000)
   end
   os.remove(pidfile)
   -- a rank that ended inside readline may have left the terminal raw
   if saved and saved ~= '' then os.execute('stty ' .. saved .. ' 2>/dev/null') end
   local st = status[0]
   if st % 128 ~= 0 then return 128 + st % 128 end -- killed by a signal
   return math.floor(st / 256) % 256
end

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
