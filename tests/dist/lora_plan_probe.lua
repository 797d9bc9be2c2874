-- Run by tests/dist/test_lora_plan.lua on 1 or 2 ranks: the planner's
-- per-rank peak for a minGPT step with LoRA on its attention projection
-- (every other parameter frozen) vs the peak the allocator measured, and
-- the planned model state vs the measured one.
-- arguments: strategy, 'ac' (activation checkpointing) or '-', gather dtype
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local mingpt = require 'models.mingpt'
local AdamW = require 'optim.adamw'
local plan = require 'fsdp.plan'
local strategy, ac = arg[1] or 'full', arg[2] == 'ac'
local dtype = arg[3] or 'f32' -- the gather (param) dtype; reduce in the same

dist.init()
local cfg = {vocab_size = 256, block_size = 64, n_layer = 6, n_head = 4, n_embd = 128}
local B, T_ = 8, 64
local function build()
   local m = mingpt.GPT(cfg)
   fsdp.lora(m, {targets = {'c_attn'}, r = 8, alpha = 16})
   return m
end
local predicted = plan.compute(build(), {world_size = dist.world_size, strategy = strategy, batch = B, seq_len = T_,
                                         activation_checkpointing = ac, vocab = 256, width = 128,
                                         param_dtype = dtype, reduce_dtype = dtype})
fsdp.empty_cache()
local base = fsdp.memory_stats().current
fsdp.reset_peak_memory()
local model = build()
if ac then fsdp.nn.checkpoint_units(model) end
local sharded = fsdp.shard(model, {strategy = strategy, seed = 1, param_dtype = dtype, reduce_dtype = dtype})
local opt = AdamW.new(sharded, {lr = 1e-3, weight_decay = 0.1})
local state = fsdp.memory_stats().current - base
local x, y = fsdp.empty({B, T_}, 'i32'), fsdp.empty({B, T_}, 'i32')
for i = 0, B * T_ - 1 do x:ptr()[i] = (i * 7) % 256; y:ptr()[i] = (i * 3) % 256 end
for _ = 1, 2 do
   fsdp.backward(model:loss(x, y))
   opt:step(1e-3)
   sharded:zero_grad()
end
local measured = fsdp.memory_stats().peak - base - 2 * B * T_ * 4 -- less the input batch itself
print('PLAN ' .. fsdp.json.encode {rank = dist.rank, predicted = predicted.total, measured = measured,
                                   predicted_state = predicted.state, measured_state = state,
                                   frozen = predicted.frozen_parameters, trainable = predicted.trainable_parameters,
                                   sharded_trainable = sharded:num_trainable_parameters()})
return 0
