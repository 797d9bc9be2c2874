-- A program on a pseudo-terminal, as a person at a terminal runs it:
-- spawn(argv, env, cols) starts it (cols: the terminal's width); s:expect(pattern, seconds) reads until the plain
-- text appears after the last match; s:send(text) types; s:wait(seconds)
-- waits for the exit status; s:kill() ends it.
local ffi = require 'ffi'

pcall(ffi.cdef, [[
int forkpty(int *amaster, char *name, void *termp, void *winp);
int execvp(const char *file, char *const argv[]);
int setenv(const char *name, const char *value, int overwrite);
long read(int fd, void *buf, unsigned long n);
long write(int fd, const void *buf, unsigned long n);
int waitpid(int pid, int *status, int options);
int kill(int pid, int sig);
void _exit(int code);
int close(int fd);
struct fsdp_pollfd { int fd; short events; short revents; };
int poll(struct fsdp_pollfd *fds, unsigned long n, int timeout);
struct fsdp_pty_winsize { unsigned short ws_row, ws_col, ws_xpixel, ws_ypixel; };
]])
-- forkpty lives in libc since glibc 2.34, in libutil before
local util = pcall(function() return ffi.C.forkpty end) and ffi.C or ffi.load('libutil.so.1')
local clock = require('fsdp.run').now

local M = {}
local Session = {}
Session.__index = Session

function M.spawn(argv_strs, env, cols)
   for k, v in pairs(env or {}) do ffi.C.setenv(k, v, 1) end
   local ws = cols and ffi.new('struct fsdp_pty_winsize', {24, cols, 0, 0}) or nil
   local argv = ffi.new('char*[?]', #argv_strs + 1)
   local keep = {}
   for i, s in ipairs(argv_strs) do keep[i] = ffi.new('char[?]', #s + 1, s); argv[i - 1] = keep[i] end
   argv[#argv_strs] = nil
   local master = ffi.new('int[1]')
   local pid = util.forkpty(master, nil, nil, ws)
   if pid == 0 then
      ffi.C.execvp(argv[0], argv)
      ffi.C._exit(127)
   end
   assert(pid > 0, 'forkpty failed')
   return setmetatable({pid = pid, fd = master[0], seen = '', mark = 1, buf = ffi.new('char[4096]'),
                        pfd = ffi.new('struct fsdp_pollfd[1]'), keep = keep}, Session)
end

-- reads what the program wrote for up to ms milliseconds
function Session:pump(ms)
   self.pfd[0].fd, self.pfd[0].events = self.fd, 1
   if ffi.C.poll(self.pfd, 1, ms) > 0 then
      local n = ffi.C.read(self.fd, self.buf, 4096)
      if n > 0 then self.seen = self.seen .. ffi.string(self.buf, n); return true end
      return false
   end
   return true
end

-- the position after `pattern` once it appears after the last match (nil
-- on timeout); the text since the last match is returned too
function Session:expect(pattern, seconds)
   local t0 = clock()
   while true do
      local a, b = self.seen:find(pattern, self.mark, true)
      if a then
         local text = self.seen:sub(self.mark, b)
         self.mark = b + 1
         return text, clock() - t0
      end
      if clock() - t0 >= seconds then return nil, self.seen:sub(self.mark) end
      if not self:pump(50) then return nil, self.seen:sub(self.mark) end
   end
end

function Session:send(s) ffi.C.write(self.fd, s, #s) end

-- the exit status (waitpid's) within seconds, or nil
function Session:wait(seconds)
   local status = ffi.new('int[1]')
   local t0 = clock()
   while clock() - t0 < seconds do
      self:pump(100)
      if ffi.C.waitpid(self.pid, status, 1) == self.pid then self.status = status[0]; return status[0] end
   end
   return nil
end

-- everything it writes until it ends (or seconds pass), and its exit code
function Session:read_all(seconds)
   local t0 = clock()
   while clock() - t0 < seconds and self:pump(200) do end
   local status = self:wait(5)
   return self.seen, status and math.floor(status / 256) % 256
end

function Session:kill()
   if not self.status then ffi.C.kill(self.pid, 9); ffi.C.waitpid(self.pid, ffi.new('int[1]'), 0) end
   ffi.C.close(self.fd)
end

return M
