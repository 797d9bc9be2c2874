-- Every rank's error reaches the console before the job is torn down: a
-- 2-rank job in which every rank raises at once, 60 times; each time both
-- messages are in the output and the job exits 1. (Before main.lua waited
-- for its pipes to drain and gave the other ranks a grace period, MPI_Abort
-- from the first rank lost the second rank's message, and sometimes its own,
-- in about half of the runs here.)
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'

local RUNS = tonumber(os.getenv('FSDP_FATAL_RUNS') or '') or 60
local lost, bad_status = 0, 0
for i = 1, RUNS do
   local status, out = D.run(2, 'tests/dist/raise_all_probe.lua')
   local missing = {}
   for r = 0, 1 do
      if not out:find(string.format('rank %d: error: injected failure on rank %d of 2', r, r), 1, true) then
         missing[#missing + 1] = r
      end
   end
   if #missing > 0 then
      lost = lost + 1
      io.stderr:write(string.format('run %d: no message from rank(s) %s:\n%s\n', i, table.concat(missing, ', '), out))
   end
   if status ~= 1 then bad_status = bad_status + 1 end
end
t.check(lost == 0, '%d of %d runs lost a rank\'s error message', lost, RUNS)
t.check(bad_status == 0, '%d of %d runs did not exit 1', bad_status, RUNS)
print(string.format('%d runs of a 2-rank job failing on every rank: %d lost a message', RUNS, lost))
return t.done()
