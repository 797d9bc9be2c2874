-- Interrupts from Lua (fsdp.dist.interrupt / interrupted / resync) on 2 and
-- 3 ranks: tests/dist/interrupt_probe.lua on every rank. The C side (a
-- barrier interrupted by a signal handler within 1 s, sub-groups, tcp) is
-- tests/c/dist_interrupt.c, run by test_comm.sh.
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'

for _, n in ipairs({2, 3}) do
   local status, out = D.run(n, 'tests/dist/interrupt_probe.lua')
   t.check(status == 0, '%d ranks: exit %d:\n%s', n, status, out)
   local oks = 0
   for _ in out:gmatch('interrupt probe ok') do oks = oks + 1 end
   t.check(oks == n, '%d ranks: %d said ok:\n%s', n, oks, out)
end
return t.done()
