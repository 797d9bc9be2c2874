-- Training works: minGPT (4 layers, 128 wide, byte tokens) trained for 300
-- steps of 16 x 64 tokens on tiny Shakespeare reaches a validation loss well
-- below the unigram baseline (the entropy of the byte distribution of the
-- training split, what a model that ignores context can reach).
-- Measured here: unigram 3.30 nats, val loss 2.38 after 300 steps (~35 s on
-- 2 cores). The bar: at least 0.6 nats under the unigram entropy.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local json = fsdp.json

local corpus = fsdp.root .. '/data/tinyshakespeare.txt'
if not require('fsdp.fs').exists(corpus) then corpus = '/usr/share/games/fortunes/cookie' end

-- unigram entropy of the training split (the first 90%)
local f = assert(io.open(corpus, 'rb'))
local text = f:read('*a')
f:close()
local n_train = math.floor(#text * 0.9)
local counts = {}
for i = 1, n_train do
   local b = text:byte(i)
   counts[b] = (counts[b] or 0) + 1
end
local unigram = 0
for _, c in pairs(counts) do
   local p = c / n_train
   unigram = unigram - p * math.log(p)
end

local run_dir = os.tmpname()
os.remove(run_dir)
local metrics = run_dir .. '/metrics.jsonl'
local status, out = t.sh(string.format(
   '%s/build/fsdp-lua recipes/train_mingpt.lua --data %s --max-steps 300 --warmup-steps 20 --batch-size 16 ' ..
   '--seq-len 64 --eval-every 100 --log-every 50 --sample-tokens 0 --run-dir %s',
   fsdp.root, corpus, run_dir))
t.check(status == 0, 'training run failed (%d):\n%s', status, out)
io.write(out)

local first_loss, val_loss
for line in io.lines(metrics) do
   local m = json.decode(line)
   if m.loss and not first_loss then first_loss = m.loss end
   if m.val_loss then val_loss = m.val_loss end
end
os.execute('rm -rf ' .. run_dir)
print(string.format('unigram entropy %.3f nats, first loss %.3f, final val loss %.3f', unigram, first_loss or -1, val_loss or -1))
t.check(first_loss and math.abs(first_loss - math.log(256)) < 0.3, 'the first loss should be near ln(256) = 5.55, got %s', tostring(first_loss))
t.check(val_loss and val_loss < unigram - 0.6, 'val loss %s is not clearly below the unigram baseline %.3f', tostring(val_loss), unigram)

return t.done()
