-- fsdp.repl: `fsdp-lua -i`, an interactive Lua prompt on rank 0 whose
-- statements every rank executes, in order (SPMD). Rank 0 reads a complete
-- statement (line editing and history through readline when stdin is a
-- terminal), broadcasts it, every rank runs it in one shared environment,
-- and rank 0 prints the results and every rank's error, named by rank. An
-- error leaves the session and the ranks in step. Ctrl-C interrupts a
-- running statement; Ctrl-D ends every rank.
local ffi = require 'ffi'
local bind = require 'fsdp.ffi'
local dist = require 'fsdp.dist'
local T = require 'fsdp.tensor'
local C = bind.C

local M = {}

pcall(ffi.cdef, [[
char *readline(const char *prompt);
void add_history(const char *line);
void free(void *p);
int isatty(int fd);
]])

local show = require 'fsdp.repl_show'

pcall(ffi.cdef, [[
typedef char *fsdp_rl_compentry(const char *text, int state);
char *strdup(const char *s);
]])

-- readline on a terminal (line editing, history, tab completion over the
-- names in env and their fields); plain reads otherwise
local function line_reader(env)
   if ffi.C.isatty(0) == 1 then
      local ok, rl = pcall(ffi.load, 'readline')
      if not ok then ok, rl = pcall(ffi.load, 'libreadline.so.8') end
      if ok then
         pcall(ffi.cdef, [[
         extern fsdp_rl_compentry *rl_completion_entry_function;
         extern const char *rl_basic_word_break_characters;
         extern int rl_completion_append_character;
         ]])
         local matches = {}
         -- readline asks for match `state` (0 first); strings it frees
         local entry = ffi.cast('fsdp_rl_compentry *', function(text, state)
            if state == 0 then
               rl.rl_completion_append_character = 0 -- readline resets it before each completion
               local okc, list = pcall(show.complete, env, ffi.string(text))
               matches = okc and list or {}
            end
            local m = matches[state + 1]
            if not m then return nil end
            return ffi.C.strdup(m)
         end)
         M._keep_entry = entry
         pcall(function()
            pcall(ffi.cdef, 'int rl_variable_bind(const char *variable, const char *value);')
            rl.rl_variable_bind('enable-bracketed-paste', 'off')
            rl.rl_completion_entry_function = entry
            M._breaks = ffi.new('char[?]', 32, ' \t\n"\'><=;|&{(,+-*/%^#~[]')
            rl.rl_basic_word_break_characters = M._breaks
            rl.rl_completion_append_character = 0
         end)
         local function read(prompt)
            local p = rl.readline(prompt)
            if p == nil then return nil end
            local s = ffi.string(p)
            ffi.C.free(p)
            if s:match('%S') then rl.add_history(s) end
            return s
         end
         -- readline calls back into Lua (tab completion): LuaJIT allows that
         -- only from a C call made by the interpreter, never from compiled
         -- code ("bad callback", a PANIC), so this function is never compiled
         jit.off(read)
         return read
      end
   end
   return function(prompt)
      io.stdout:write(prompt)
      io.stdout:flush()
      return io.read('*l')
   end
end

-- compiles a chunk: as an expression first (so `x + 1` prints), then as a
-- statement; returns fn or nil, err, incomplete
local function compile(src)
   local f = loadstring('return ' .. src, '=stdin')
   if f then return f end
   local err
   f, err = loadstring(src, '=stdin')
   if f then return f end
   return nil, err, err:match("'<eof>'$") ~= nil
end

-- all ranks' strings on every rank (lengths first, then padded bytes)
local function gather_strings(s)
   local g = dist.world
   if g.size == 1 then return {s} end
   local len = T.empty({1}, 'i64')
   local lens = T.empty({g.size}, 'i64')
   len:ptr()[0] = #s
   g:all_gather(lens, len)
   local max = 1
   for r = 0, g.size - 1 do max = math.max(max, tonumber(lens:ptr()[r])) end
   local send, recv = T.zeros({max}, 'u8'), T.empty({max * g.size}, 'u8')
   ffi.copy(send:cdata().data, s, #s)
   g:all_gather(recv, send)
   local out = {}
   local base = ffi.cast('const char*', recv:cdata().data)
   for r = 0, g.size - 1 do out[r + 1] = ffi.string(base + r * max, tonumber(lens:ptr()[r])) end
   len:free(); lens:free(); send:free(); recv:free()
   return out
end

local function format_values(res, n)
   local parts = {}
   for i = 2, n do
      local ok, s = pcall(show.show, res[i])
      parts[#parts + 1] = ok and s or tostring(res[i])
   end
   return table.concat(parts, '\t')
end

-- help() and show() at the prompt (rank 0 prints)
function M.install_helpers(env)
   if rawget(env, 'help') == nil then
      rawset(env, 'help', function(x)
         if dist.rank == 0 then print(show.help_text(x)) end
      end)
   end
   if rawget(env, 'show') == nil then rawset(env, 'show', function(x) return show.show(x) end) end
end

-- an outcome that the interrupt caused
local function interrupt_error(e)
   e = tostring(e)
   return e == 'interrupted' or e:find('interrupted while waiting', 1, true) ~= nil
      or e:find('cancelled by fsdp_comm_resync', 1, true) ~= nil
end

-- Ctrl-C. The launcher sends it to rank 0 alone (its pid goes to
-- FSDP_REPL_PIDFILE); without the launcher, mpiexec sends it to every rank.
-- While a statement runs the handler also sets the collectives' interrupt
-- flag (fsdp_signal_interrupts): a wait on peers gives up within 50 ms,
-- the other ranks hear of it (fsdp.dist.interrupted) at their next wait or
-- at the count hook below, and every rank leaves the statement. Then:
--   1. settle: a barrier on the REPL's own group (interruptible, so a rank
--      stuck in a collective its peers never join is freed by Ctrl-C);
--   2. resync, always (collective, never interrupted): the collectives the
--      interrupt left running end, every group is in step again and the
--      flag is cleared on every rank;
--   3. the outcomes are gathered and rank 0 prints them.
-- At the prompt Ctrl-C only clears the line being read.
local function arm(on) C.fsdp_signal_interrupts(on and 2 or 0) end

-- the hook raises only while the statement itself runs (inside): it stays
-- set for a few instructions around the protected call, where an error
-- would escape the REPL
local inside = false
local function hook()
   if inside and C.fsdp_comm_interrupted() ~= 0 then inside = false; error('interrupted', 2) end
end
local function pack(...) return {n = select('#', ...), ...} end

-- runs the prompt until Ctrl-D; env: the environment statements run in
function M.run(env)
   dist.init()
   local rank = dist.rank
   bind.check(C.fsdp_signal_watch(2), 'repl')
   local pidfile = os.getenv('FSDP_REPL_PIDFILE')
   if rank == 0 and pidfile then
      pcall(ffi.cdef, 'int getpid(void);')
      local f = io.open(pidfile, 'w')
      if f then f:write(tostring(ffi.C.getpid()), '\n'); f:close() end
   end
   -- under the launcher on a terminal, rank 0 takes the terminal itself
   -- (mpiexec passes only pipes): readline works, and its output stays in
   -- order with the prompt
   local tty = os.getenv('FSDP_REPL_TTY')
   if rank == 0 and tty and ffi.C.isatty(0) ~= 1 then
      pcall(ffi.cdef, 'int open(const char *path, int flags, ...); int dup2(int oldfd, int newfd); int close(int fd);')
      local fd = ffi.C.open(tty, 2 + 256) -- O_RDWR | O_NOCTTY
      if fd >= 0 then
         io.stdout:flush()
         ffi.C.dup2(fd, 0)
         ffi.C.dup2(fd, 1)
         ffi.C.close(fd)
      end
   end
   -- the REPL's own group: its settle barrier never meets a statement's collectives
   local ctl = dist.world_size > 1 and dist.world:split(0, rank, 'repl') or nil
   env = env or setmetatable({}, {__index = _G})
   M.install_helpers(env)
   local read = rank == 0 and line_reader(env) or nil
   if rank == 0 then
      print(string.format('fsdp-lua %s: %d rank(s); every statement runs on every rank. help() for help, ' ..
                          'Ctrl-C interrupts, Ctrl-D leaves.', 'REPL', dist.world_size))
   end
   while true do
      -- rank 0 reads one complete statement
      local src = ''
      if rank == 0 then
         local prompt = 'fsdp> '
         while true do
            local line = read(prompt)
            if line == nil then src = nil; break end
            src = src == '' and line or (src .. '\n' .. line)
            local f, err, incomplete = compile(src)
            if f or not incomplete then break end
            prompt = '   >> '
         end
         if src == nil then io.stdout:write('\n') end
      end
      local msg = dist.broadcast_string(src == nil and '\0exit' or ('\0run' .. src))
      if msg == '\0exit' then break end
      src = msg:sub(5)
      -- every rank runs it; Ctrl-C (or a peer's notice) makes it an error
      local outcome
      local f, err = compile(src)
      C.fsdp_signal_watch(2) -- again: a recipe run at the prompt may have changed it
      C.fsdp_signal_pending(1)
      arm(true)
      if not f then
         outcome = 'E' .. tostring(err)
      else
         setfenv(f, env)
         jit.off(f, true) -- interpreted, so the count hook sees loops typed at the prompt
         debug.sethook(hook, '', 10000)
         local res = {xpcall(function()
            inside = true
            local r = pack(f())
            inside = false
            return unpack(r, 1, r.n)
         end, function(e) inside = false; return tostring(e) end)}
         inside = false
         debug.sethook()
         local n = table.maxn(res)
         if res[1] then outcome = 'V' .. (n > 1 and format_values(res, n) or '')
         elseif C.fsdp_comm_interrupted() ~= 0 or interrupt_error(res[2]) then outcome = 'I' .. tostring(res[2])
         else outcome = 'E' .. tostring(res[2]) end
      end
      if ctl then pcall(ctl.barrier, ctl) end
      arm(false)
      dist.resync()
      C.fsdp_signal_pending(1)
      -- rank 0 prints its values and everyone's errors
      T.end_step()
      local all = gather_strings(outcome)
      if rank == 0 then
         local interrupted = false
         for r, o in ipairs(all) do
            local kind = o:sub(1, 1)
            if kind == 'I' then interrupted = true
            elseif kind == 'E' then
               io.stdout:write(string.format('[rank %d] error: %s\n', r - 1, o:sub(2)))
            elseif r == 1 and #o > 1 then
               io.stdout:write(o:sub(2), '\n')
            end
         end
         if interrupted then io.stdout:write('interrupted\n') end
         io.stdout:flush()
      end
   end
   return 0
end

return M
