-- Run on 2 ranks by tests/dist/test_mixed_precision.lua: 30 steps of minGPT
-- with the given gather / reduce dtypes; with f16 a 1e30 loss seed at step
-- 10 overflows the f16 gradient reduction on purpose. Prints one JSON line
-- per step on rank 0.
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local mingpt = require 'models.mingpt'
local AdamW = require 'optim.adamw'
local clip = require 'optim.clip'
local LossScaler = require 'optim.loss_scaler'
local pdtype, rdtype = arg[1], arg[2]

dist.init()
local source = fsdp.data.open(fsdp.root .. '/data/tinyshakespeare.txt')
local loader = fsdp.data.loader {source = source, batch_size = 4, seq_len = 32, seed = 1, rank = dist.rank, world = dist.world_size}
local model = mingpt.GPT {preset = 'gpt-nano', vocab_size = 256, block_size = 32}
local sharded = fsdp.shard(model, {strategy = 'full', seed = 1, param_dtype = pdtype, reduce_dtype = rdtype})
local opt = AdamW.new(sharded, {lr = 3e-3})
local scaler = (pdtype == 'f16' or rdtype == 'f16') and LossScaler.new {init_scale = 1024} or nil
for step = 1, 30 do
   local x, y = loader:next()
   local seed = scaler and scaler.scale or 1
   if scaler and step == 10 then seed = 1e30 end -- injected overflow
   local loss = fsdp.backward(model:loss(x, y), seed)
   loss = dist.sum_number(loss) / dist.world_size
   local norm = clip.global_norm(sharded)
   local take, unscale = true, 1
   if scaler then take, unscale = scaler:update(norm) end
   local before = sharded.units[2].shard:ptr()[0]
   if take then opt:step(3e-3, clip.clip_factor(norm * unscale, 1.0) * unscale) end
   local changed = sharded.units[2].shard:ptr()[0] ~= before
   sharded:zero_grad()
   if dist.rank == 0 then
      print('MP ' .. fsdp.json.encode {step = step, loss = loss, took = take, changed = changed,
                                       scale = scaler and scaler.scale or 1})
   end
end
return 0
