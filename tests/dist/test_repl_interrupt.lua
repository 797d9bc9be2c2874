-- Ctrl-C in the REPL under the launcher, on 2 and 3 ranks, through a
-- pseudo-terminal: interrupting (a) a compute loop on every rank, (b) a
-- loop of all-reduces, (c) a barrier rank 0 alone entered, (d) a barrier
-- the last rank alone entered returns to the prompt within 2 s, every time
-- of TRIES, and the next collective statement gives the right answer (so
-- the communicators are in step again). Ctrl-C at the prompt does nothing
-- to the session, and Ctrl-D then ends every rank with status 0.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local pty = require 'tests.dist.pty'

local TRIES = tonumber(os.getenv('REPL_INTERRUPT_TRIES') or '') or 20

for _, n in ipairs({2, 3}) do
   local s = pty.spawn({fsdp.root .. '/build/fsdp-lua', '--nproc-per-node', tostring(n), '-i'},
                       {OMP_NUM_THREADS = '1'})
   local ok, text = s:expect('fsdp> ', 60)
   t.check(ok, '%d ranks: no prompt; the terminal shows:\n%s', n, text)
   local function run(line, want, what)
      s:send(line .. '\n')
      local out, more = s:expect('fsdp> ', 30)
      t.check(out and out:find(want, 1, true), '%d ranks: %s: %q should print %q; the terminal shows:\n%s', n, what,
              line, want, out or more)
      return out
   end
   run('x = fsdp.full({3}, dist.rank + 1)', 'fsdp> ', 'a tensor on every rank')
   run('x:get(1)', '1', 'rank 0 prints its tensor')
   local cases = {
      {'a compute loop', 'local y = 0 while true do y = y + 1 end'},
      {'a loop of all-reduces', 'while true do dist.all_reduce(x, "max") end'},
      {'rank 0 alone in a barrier', 'if dist.rank == 0 then dist.barrier() end'},
      {'the last rank alone in a barrier', 'if dist.rank == dist.world_size - 1 then dist.barrier() end'},
   }
   for _, case in ipairs(cases) do
      local worst, failures = 0, 0
      for i = 1, TRIES do
         s:send(case[2] .. '\n')
         s:expect(case[2], 10) -- the echo: the statement reached the terminal
         os.execute('sleep 0.2')
         s:send('\3')
         local out, dt = s:expect('fsdp> ', 10)
         if not (out and out:find('interrupted', 1, true)) then
            failures = failures + 1
            t.check(false, '%d ranks, %s, try %d: Ctrl-C should print interrupted and the prompt; got:\n%s', n,
                    case[1], i, out or dt)
            break
         end
         worst = math.max(worst, dt)
         -- the next collective: the sum of 1 over the ranks
         s:send('dist.sum_number(1)\n')
         local after = s:expect('fsdp> ', 10)
         if not (after and after:find('\n' .. n .. '\r', 1, true)) then
            failures = failures + 1
            t.check(false, '%d ranks, %s, try %d: the next all-reduce should give %d; got:\n%s', n, case[1], i, n,
                    after or '(nothing)')
            break
         end
      end
      t.check(failures == 0 and worst < 2, '%d ranks, %s: %d tries, worst return to the prompt %.2f s (want < 2 s)',
              n, case[1], TRIES, worst)
      print(string.format('%d ranks, %-34s %d tries, worst %.2f s', n, case[1] .. ':', TRIES, worst))
   end
   -- Ctrl-C at the prompt: nothing happens to the session
   s:send('\3')
   os.execute('sleep 0.3')
   run('x:get(1) + 0', tostring(n), 'a statement after Ctrl-C at the prompt (x was all-reduced with max)')
   s:send('\4')
   local status = s:wait(30)
   t.check(status == 0, '%d ranks: Ctrl-D should end the job with status 0, got %s', n, tostring(status))
   s:kill()
end
return t.done()
