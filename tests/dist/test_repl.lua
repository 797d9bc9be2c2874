-- The REPL through a pseudo-terminal with 2 ranks (what a person at a
-- terminal gets): define a tensor on every rank, all-reduce it and read the
-- sum on rank 0; an error raised on rank 1 only is shown with its rank and
-- the next statement still works; Ctrl-D ends every process.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local pty = require 'tests.dist.pty'

local session = pty.spawn({fsdp.root .. '/build/fsdp-lua', '--nproc-per-node', '2', '-i'}, {OMP_NUM_THREADS = '1'})
local function expect(pattern, seconds)
   local out = session:expect(pattern, seconds)
   return out ~= nil
end
local function step(line, want, label)
   session:send(line .. '\n')
   local out, more = session:expect(want, 30)
   t.check(out, '%s: expected %q after sending %q; the terminal shows:\n%s', label, want, line, more)
   if want ~= 'fsdp> ' and want ~= '>> ' then session:expect('fsdp> ', 30) end
end
local function send(s) session:send(s) end

t.check(expect('fsdp> ', 60), 'no prompt; the terminal shows:\n%s', session.seen)
step('x = fsdp.full({3}, dist.rank + 1)', 'fsdp> ', 'define a tensor')
step('dist.all_reduce(x, "sum")', 'fsdp> ', 'all-reduce')
step('x:get(2)', '3', 'read the sum on rank 0')
step('if dist.rank == 1 then error("only on one") end', '[rank 1] error: stdin:1: only on one', 'error on rank 1')
step('x:get(1) * 10', '30', 'the next statement after the error')
step('for i = 1,', '>> ', 'a statement over two lines')
step('2 do print("line", i) end', 'line\t2', 'its second line')

-- what the prompt prints: tensors as torch does, models as a tree, help
step('fsdp.from_table({1, 2, 3, 4, 5, 6}, {2, 3})', 'tensor([[1.0000, 2.0000, 3.0000],', 'a tensor prints its values')
step('fsdp.zeros({3000})', '0.0000, ..., 0.0000', 'a long tensor is summarized')
step('fsdp.zeros({3000})', 'shape=(3000,), dtype=f32)', 'with its shape and dtype')
step('m = require("models.llama").Llama{vocab_size = 31, hidden_size = 16, intermediate_size = 24, ' ..
     'num_hidden_layers = 3, num_attention_heads = 4, num_key_value_heads = 2}', 'fsdp> ', 'a model')
step('m', '0-2: LlamaDecoderLayer  x3', 'a model prints as a tree with repeated blocks counted')
step('m', 'k_proj: Linear [weight(8, 16)]', 'with its parameter shapes')
step('m', '6.9K parameters (6864)', 'and its parameter count')
step('help(dist.resync)', 'brings every host group back in step', 'help(function) prints its reference text')
step('help("kv_cache")', 'KVCache:advance(T_)', 'help("name") lists a module\'s entries')
step('help()', 'Ctrl-C interrupts a statement on every rank', 'help() prints the overview')
-- tab completion (rank 0 reads the terminal itself, through readline)
step('x:nu\t() + 0', '\n3\r', 'Tab completes x:nu to x:numel')
step('fsdp.zer\t({2}):numel()', '\n2\r', 'Tab completes fsdp.zer to fsdp.zeros')

-- Ctrl-C interrupts a running statement on every rank; the session goes on
-- (tests/dist/test_repl_interrupt.lua tries it many times in many places)
do
   send('while true do end\n')
   os.execute('sleep 1')
   send('\3')
   local out, more = session:expect('interrupted', 30)
   t.check(out, 'Ctrl-C should interrupt the loop; the terminal shows:\n%s', more)
   session:expect('fsdp> ', 30)
   step('x:get(3) + 1', '4', 'a statement after the interrupt')
end

-- Ctrl-D ends every rank
send('\4')
local status = session:wait(30)
t.check(status ~= nil, 'Ctrl-D should end the job; still running after 30 s')
t.check(status == 0, 'the job should exit 0 after Ctrl-D, status %s', tostring(status))
session:kill()
local left
for _ = 1, 50 do -- the ranks end right after the launcher
   _, left = t.sh("pgrep -x fsdp-lua -a | grep -- ' -i$' || true")
   if left == '' then break end
   os.execute('sleep 0.1')
end
t.check(left == '', 'ranks left running 5 s after Ctrl-D:\n%s', left)
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
