-- The progress bar through a pseudo-terminal (what a person at a terminal
-- sees), 80 and 100 columns wide, for one process and under the launcher
-- with 2 ranks (rank 0's output goes through mpiexec, which tells it that
-- its lines reach a terminal): rank 0 draws one line that it redraws in
-- place ('\r'), every state of it fits the width (fields abbreviated or
-- left out, never wrapping), and log lines written while it is up start on
-- a line of their own. Written to a pipe, the same run prints plain lines.
local ffi = require 'ffi'
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local pty = require 'tests.dist.pty'


local tmp = os.tmpname()
os.remove(tmp)
fs.mkdirs(tmp)
local bin = fsdp.root .. '/build/fsdp-lua'
local recipe = {'recipes/train_mingpt.lua', '--preset', 'gpt-nano', '--max-steps', '12', '--log-every', '1',
                '--batch-size', '4', '--seq-len', '16', '--sample-tokens', '0', '--eval-every', '6',
                '--eval-batches', '1', '--checkpoint-dir', tmp .. '/ck', '--checkpoint-every', '6',
                '--run-dir', tmp .. '/run'}

-- runs argv in a pseudo-terminal `cols` wide; returns everything it wrote
-- and its exit status
local function run_pty(argv_strs, cols)
   local session = pty.spawn(argv_strs, {OMP_NUM_THREADS = '1', TERM = 'xterm'}, cols)
   local out, status = session:read_all(300)
   session:kill()
   return out, status
end

-- what the terminal shows: the text between carriage returns and newlines,
-- escape sequences removed
local function segments(text)
   local out = {}
   text = text:gsub('\27%[[%d;]*%a', '')
   for seg in (text .. '\n'):gmatch('([^\r\n]*)[\r\n]') do out[#out + 1] = seg end
   return out
end

for _, launcher in ipairs({false, true}) do
   for _, cols in ipairs({80, 100}) do
      fs.remove_tree(tmp .. '/ck')
      local argv = {bin}
      if launcher then argv[#argv + 1] = '--nproc-per-node'; argv[#argv + 1] = '2' end
      for _, a in ipairs(recipe) do argv[#argv + 1] = a end
      local out, status = run_pty(argv, cols)
      local label = string.format('%s, %d columns', launcher and '2 ranks under the launcher' or '1 process', cols)
      t.check(status == 0, '%s: exit status %d:\n%s', label, status, out)
      local bars, longest = 0, 0
      for _, seg in ipairs(segments(out)) do
         if seg:find('%d+%%') and seg:find('12', 1, true) and (seg:find('step', 1, true) or seg:find('/12', 1, true)) then
            bars = bars + 1
            longest = math.max(longest, #seg)
            t.check(#seg <= cols, '%s: a bar of %d characters:\n%s', label, #seg, seg)
            -- a log line never runs on after the bar
            t.check(not seg:find('%] %a') or seg:find('^%[[#%.]+%]'), '%s: text ran on after the bar: %q', label, seg)
         end
      end
      t.check(bars >= 10, '%s: %d states of the bar seen:\n%s', label, bars, out)
      t.check(out:find('\r', 1, true) ~= nil, '%s: the bar is not redrawn in place', label)
      -- messages written while the bar is up (validation, checkpoints) start at column 0
      local said = 0
      for _, seg in ipairs(segments(out)) do
         if seg:find('val loss', 1, true) or seg:find('saved checkpoint', 1, true) then
            said = said + 1
            t.check(seg:match('^%[%d%d:%d%d:%d%d%]') or seg:match('^%[rank 0%] %[%d%d:'),
                    '%s: a message does not start its own line: %q', label, seg)
         end
      end
      t.check(said >= 2, '%s: %d messages seen', label, said)
      print(string.format('%s: %d bar states, the widest %d characters', label, bars, longest))
   end
end

-- into a pipe: plain timestamped lines, no carriage returns
fs.remove_tree(tmp .. '/ck')
local st, out = t.sh('OMP_NUM_THREADS=1 ' .. bin .. ' ' .. table.concat(recipe, ' '))
t.check(st == 0 and not out:find('\r', 1, true) and out:find('step    12/12 | loss', 1, true),
        'written to a pipe: plain lines:\n%s', out)
fs.remove_tree(tmp)
return t.done()
