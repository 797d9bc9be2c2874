-- The REPL through a pseudo-terminal with 2 ranks (what a person at a
-- terminal gets): define a tensor on every rank, all-reduce it and read the
-- sum on rank 0; an error raised on rank 1 only is shown with its rank and
-- the next statement still works; Ctrl-D ends every process.
local ffi = require 'ffi'
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'

ffi.cdef [[
int forkpty(int *amaster, char *name, void *termp, void *winp);
int execvp(const char *file, char *const argv[]);
int setenv(const char *name, const char *value, int overwrite);
long read(int fd, void *buf, unsigned long n);
long write(int fd, const void *buf, unsigned long n);
int waitpid(int pid, int *status, int options);
int kill(int pid, int sig);
void _exit(int code);
struct fsdp_pollfd { int fd; short events; short revents; };
int poll(struct fsdp_pollfd *fds, unsigned long n, int timeout);
]]
-- forkpty lives in libc since glibc 2.34, in libutil before
local util = pcall(function() return ffi.C.forkpty end) and ffi.C or ffi.load('libutil.so.1')

ffi.C.setenv('OMP_NUM_THREADS', '1', 1)
local argv_strs = {fsdp.root .. '/build/fsdp-lua', '--nproc-per-node', '2', '-i'}
local argv = ffi.new('char*[?]', #argv_strs + 1)
local keep = {}
for i, s in ipairs(argv_strs) do keep[i] = ffi.new('char[?]', #s + 1, s); argv[i - 1] = keep[i] end
argv[#argv_strs] = nil

local master = ffi.new('int[1]')
local pid = util.forkpty(master, nil, nil, nil)
if pid == 0 then
   ffi.C.execvp(argv[0], argv)
   ffi.C._exit(127)
end
t.check(pid > 0, 'forkpty failed')
local fd = master[0]

local seen = ''
local buf = ffi.new('char[4096]')
local pfd = ffi.new('struct fsdp_pollfd[1]')
-- reads until `pattern` appears in the output after `from`, or the timeout
local function expect(pattern, seconds, from)
   local clock = require('fsdp.run').now
   local t0 = clock()
   while clock() - t0 < seconds do
      local pos = seen:find(pattern, from or 1, true)
      if pos then return pos end
      pfd[0].fd, pfd[0].events = fd, 1
      if ffi.C.poll(pfd, 1, 100) > 0 then
         local n = ffi.C.read(fd, buf, 4096)
         if n <= 0 then break end
         seen = seen .. ffi.string(buf, n)
      end
   end
   return seen:find(pattern, from or 1, true)
end
local function send(s) ffi.C.write(fd, s, #s) end

local function step(line, want, label)
   local mark = #seen + 1
   send(line .. '\n')
   local ok = expect(want, 30, mark)
   t.check(ok, '%s: expected %q after sending %q; the terminal shows:\n%s', label, want, line, seen:sub(mark))
   expect('fsdp> ', 30, (ok or mark))
end

t.check(expect('fsdp> ', 60), 'no prompt; the terminal shows:\n%s', seen)
step('x = fsdp.full({3}, dist.rank + 1)', 'fsdp> ', 'define a tensor')
step('dist.all_reduce(x, "sum")', 'fsdp> ', 'all-reduce')
step('x:get(2)', '3', 'read the sum on rank 0')
step('if dist.rank == 1 then error("only on one") end', '[rank 1] error: stdin:1: only on one', 'error on rank 1')
step('x:get(1) * 10', '30', 'the next statement after the error')
step('for i = 1,', '>> ', 'a statement over two lines')
step('2 do print("line", i) end', 'line\t2', 'its second line')

-- Ctrl-C interrupts a running statement on every rank; the session goes on
do
   local mark = #seen + 1
   send('while true do end\n')
   os.execute('sleep 1')
   send('\3')
   local ok = expect('interrupted', 30, mark)
   t.check(ok, 'Ctrl-C should interrupt the loop; the terminal shows:\n%s', seen:sub(mark))
   expect('fsdp> ', 30, ok or mark)
   step('x:get(3) + 1', '4', 'a statement after the interrupt')
end

-- Ctrl-D ends every rank
send('\4')
local status = ffi.new('int[1]')
local ended = false
local clock = require('fsdp.run').now
local t0 = clock()
while clock() - t0 < 30 do
   expect('\0', 0.2)
   if ffi.C.waitpid(pid, status, 1) == pid then ended = true; break end -- WNOHANG
end
t.check(ended, 'Ctrl-D should end the job; still running after 30 s')
if ended then t.check(status[0] == 0, 'the job should exit 0 after Ctrl-D, status %d', status[0]) end
if not ended then ffi.C.kill(pid, 9) end
local _, left = t.sh("pgrep -x fsdp-lua -a | grep -c -- ' -i$' || true")
t.check(tonumber(left) == 0, 'ranks left running after Ctrl-D: %s', left)
-- fsdp-lua -i RECIPE: the recipe runs first and its variables are in scope
do
   local rd = os.tmpname()
   os.remove(rd)
   local st, out = t.sh("printf 'opt.max_steps * 10\\nsharded:num_parameters() > 0\\n' | " .. fsdp.root ..
                        '/build/fsdp-lua -i recipes/train_mingpt.lua --max-steps 2 --sample-tokens 0 --eval-every 0 ' ..
                        '--preset gpt-nano --batch-size 2 --seq-len 16 --run-dir ' .. rd)
   os.execute('rm -rf ' .. rd)
   t.check(st == 0 and out:find('fsdp> 20', 1, true) and out:find('fsdp> true', 1, true),
           'the recipe\'s locals should be in scope at the prompt:\n%s', out)
end
return t.done()
