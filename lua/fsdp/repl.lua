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

local function line_reader()
   if ffi.C.isatty(0) == 1 then
      local ok, rl = pcall(ffi.load, 'readline')
      if not ok then ok, rl = pcall(ffi.load, 'libreadline.so.8') end
      if ok then
         return function(prompt)
            local p = rl.readline(prompt)
            if p == nil then return nil end
            local s = ffi.string(p)
            ffi.C.free(p)
            if s:match('%S') then rl.add_history(s) end
            return s
         end
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
   for i = 2, n do parts[#parts + 1] = tostring(res[i]) end
   return table.concat(parts, '\t')
end

-- runs the prompt until Ctrl-D; env: the environment statements run in
function M.run(env)
   dist.init()
   local rank = dist.rank
   bind.check(C.fsdp_signal_watch(2), 'repl') -- SIGINT interrupts a statement
   env = env or setmetatable({}, {__index = _G})
   local read = rank == 0 and line_reader() or nil
   if rank == 0 then
      print(string.format('fsdp-lua %s: %d rank(s); every statement runs on every rank. Ctrl-D to leave.',
                          'REPL', dist.world_size))
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
      -- every rank runs it; the hook turns Ctrl-C into an error
      local outcome
      local f, err = compile(src)
      if not f then
         outcome = 'E' .. tostring(err)
      else
         setfenv(f, env)
         jit.off(f, true) -- interpreted, so the count hook below sees loops typed at the prompt
         C.fsdp_signal_pending(1)
         debug.sethook(function()
            if C.fsdp_signal_pending(0) == 2 then
               C.fsdp_signal_pending(1)
               error('interrupted', 2)
            end
         end, '', 10000)
         local res = {xpcall(f, function(e) return tostring(e) end)}
         debug.sethook()
         local n = table.maxn(res)
         if res[1] then outcome = 'V' .. (n > 1 and format_values(res, n) or '')
         else outcome = 'E' .. tostring(res[2]) end
      end
      -- rank 0 prints its values and everyone's errors
      T.end_step()
      local all = gather_strings(outcome)
      if rank == 0 then
         for r, o in ipairs(all) do
            if o:sub(1, 1) == 'E' then
               io.stdout:write(string.format('[rank %d] error: %s\n', r - 1, o:sub(2)))
            elseif r == 1 and #o > 1 then
               io.stdout:write(o:sub(2), '\n')
            end
         end
         io.stdout:flush()
      end
   end
   return 0
end

return M
