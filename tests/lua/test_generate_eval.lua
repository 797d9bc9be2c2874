-- generate.lua and eval.lua: from a checkpoint and from its Hugging Face
-- export they see the same model (same validation loss, same greedy text);
-- generate continues the prompt with the asked number of tokens.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'

local dir = os.tmpname()
os.remove(dir)
local bin = fsdp.root .. '/build/fsdp-lua'
local corpus = fsdp.root .. '/data/tinyshakespeare.txt'
if not require('fsdp.fs').exists(corpus) then corpus = '/usr/share/games/fortunes/cookie' end
local st, out = t.sh(bin .. ' recipes/train_mingpt.lua --preset gpt-nano --data ' .. corpus .. ' --max-steps 20 --batch-size 4 ' ..
                     '--seq-len 32 --eval-every 0 --sample-tokens 0 --checkpoint-dir ' .. dir .. '/ck --export-dir ' ..
                     dir .. '/hf --run-dir ' .. dir .. '/run')
t.check(st == 0, 'training failed:\n%s', out)

local function loss_of(src)
   local s, o = t.sh(bin .. ' recipes/eval.lua ' .. src .. ' --data ' .. corpus .. ' --seq-len 32 --batches 5')
   t.check(s == 0, 'eval failed:\n%s', o)
   return tonumber(o:match('loss ([%d.]+)')), o
end
local a = loss_of('--checkpoint ' .. dir .. '/ck')
local b = loss_of('--model ' .. dir .. '/hf')
t.check(a and a == b, 'eval: checkpoint loss %s vs export loss %s', tostring(a), tostring(b))
t.check(a and a < math.log(256), 'the trained model beats uniform guessing (%s < 5.55)', tostring(a))

local function gen(src)
   local s, o = t.sh(bin .. ' recipes/generate.lua ' .. src .. ' --prompt "ROMEO:" --max-new-tokens 25 --temperature 0 2>/dev/null')
   t.check(s == 0, 'generate failed:\n%s', o)
   return o
end
local g1, g2 = gen('--checkpoint ' .. dir .. '/ck'), gen('--model ' .. dir .. '/hf')
t.check(g1:sub(1, 6) == 'ROMEO:' and #g1 >= 6 + 25, 'generate continues the prompt by 25 tokens: %q', g1)
t.check(g1 == g2, 'greedy text differs between checkpoint and export:\n%q\n%q', g1, g2)
st, out = t.sh(bin .. ' recipes/generate.lua --max-new-tokens 3')
t.check(st == 1 and out:find('give --model DIR or --checkpoint DIR', 1, true), 'generate without a model:\n%s', out)
-- the KV cache decodes exactly what re-running the whole context decodes,
-- for every architecture (greedy, 25 tokens: past Mistral's window of 5)
for _, m in ipairs({'llama', 'llama3', 'mistral', 'mixtral', 'opt', 'opt_postnorm', 'gpt2'}) do
   local base = bin .. ' recipes/generate.lua --model ' .. fsdp.root .. '/tests/golden/hf/' .. m ..
                ' --tokenizer bytes --max-new-tokens 25 --temperature 0'
   local s1, cached = t.sh(base .. ' 2>/dev/null')
   local s2, plain = t.sh(base .. ' --no-kv-cache 2>/dev/null')
   t.check(s1 == 0 and s2 == 0 and #cached > 25, '%s: generate failed:\n%s\n%s', m, cached, plain)
   t.check(cached == plain, '%s: KV-cache decoding differs from full recompute:\n%q\n%q', m, cached, plain)
end
t.check(g1 == gen('--checkpoint ' .. dir .. '/ck --no-kv-cache'), 'minGPT: KV cache vs recompute')

-- on 2 ranks the sharded model decodes the same text, whether it gathers
-- per token (--unshard no) or once (yes; auto decides the same on each
-- rank), and evaluates the same loss
do
   -- (the random weights of a fixture give varied text; 20 steps of
   -- training above give mostly spaces)
   local g = ' recipes/generate.lua --model ' .. fsdp.root .. '/tests/golden/hf/llama --tokenizer bytes --prompt "ROMEO:" '
             .. '--max-new-tokens 30 --temperature 0 2>/dev/null'
   local _, one = t.sh(bin .. g)
   t.check(#one > 30, 'generate on 1 rank: %q', one)
   for _, u in ipairs({'no', 'yes', 'auto'}) do
      local s, o = t.sh(bin .. ' --nproc-per-node 2' .. g:gsub(' 2>', ' --unshard ' .. u .. ' 2>'))
      o = o:gsub('%[rank %d+%] ', '')
      t.check(s == 0 and o == one, '2 ranks, --unshard %s: greedy text differs from 1 rank:\n%q\n%q', u, o, one)
      local e = loss_of('--checkpoint ' .. dir .. '/ck --unshard ' .. u)
      local s2, o2 = t.sh(bin .. ' --nproc-per-node 2 recipes/eval.lua --checkpoint ' .. dir .. '/ck --data ' .. corpus
                          .. ' --seq-len 32 --batches 5 --unshard ' .. u)
      local e2 = tonumber(o2:match('loss ([%d.]+)'))
      t.check(s2 == 0 and e2 and math.abs(e2 - e) <= 1e-4 * e, '2 ranks, --unshard %s: eval loss %s vs 1 rank %s\n%s', u,
              tostring(e2), tostring(e), o2)
   end
end
-- weights held by unshard() are for inference: a forward that records
-- gradients is refused, and reshard() ends the hold
do
   local mingpt = require 'models.mingpt'
   local model = mingpt.GPT {vocab_size = 32, n_layer = 1, n_head = 2, n_embd = 8, block_size = 8}
   local sharded = fsdp.shard(model, {strategy = 'full', seed = 1})
   local x = fsdp.empty({1, 4}, 'i32')
   for i = 0, 3 do x:ptr()[i] = i end
   sharded:unshard()
   t.raises(function() model(x) end, {'unshard()', 'no_grad', 'reshard()'}, 'a forward with gradients while held')
   fsdp.autograd.reset()
   sharded:reshard()
   t.check(pcall(function() model(x) end), 'after reshard() a forward with gradients runs')
   fsdp.autograd.reset()
end
os.execute('rm -rf ' .. dir)
return t.done()
