-- Run on every rank by tests/dist/test_lora_dist.lua: LoRA on a tiny Llama
-- (fsdp.lora on q/k/v/o, block 0 wholly frozen, so that nothing below it
-- takes a gradient), sharded, trained with AdamW (weight decay on, a
-- parameter group for lora_B) on a global batch that every world size
-- splits over its ranks. Arguments, key=value:
--   strategy (full), steps (6), ac (0/1: activation checkpointing), dtype
--   (f32/bf16: the gather dtype), save_at + save_dir (an adapter checkpoint
--   after that step), resume (a checkpoint directory to resume from),
--   base_seed (the frozen base's init seed, 7), accum (micro-batches, 1),
--   lora (1; 0: the same model fully trained, no adapters, nothing frozen)
--   out: the file rank 0 writes its JSON to: losses by step, the adapter
-- weights at the end, whether every frozen weight is bitwise unchanged, how
-- often block 0 (wholly frozen, no gradient below) and block 1 were
-- gathered per step, this rank's model state bytes and peak.
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local ckpt = require 'fsdp.checkpoint'
local AdamW = require 'optim.adamw'

local opt = {strategy = 'full', steps = '6', ac = '0', dtype = 'f32', save_at = '0', save_dir = '', resume = '',
             base_seed = '7', accum = '1', out = '', lora = '1'}
for _, a in ipairs(arg) do
   local k, v = a:match('^([%w_]+)=(.*)$')
   if not k or opt[k] == nil then error('lora_probe: bad argument ' .. a, 0) end
   opt[k] = v
end
local steps, accum = tonumber(opt.steps), tonumber(opt.accum)

dist.init()
fsdp.set_num_threads(1)
local W, rank = dist.world_size, dist.rank
fsdp.empty_cache()
local mem0 = fsdp.memory_stats().current
fsdp.reset_peak_memory()

local V, B, T_ = 40, 12, 10 -- global batch B sequences of T_ tokens
local model = require('models.llama').Llama {vocab_size = V, hidden_size = 32, intermediate_size = 48,
                                             num_hidden_layers = 3, num_attention_heads = 4,
                                             num_key_value_heads = 2}
if opt.lora == '1' then
   fsdp.lora(model, {targets = {'q_proj', 'k_proj', 'v_proj', 'o_proj'}, r = 4, alpha = 8})
   model:freeze('^model%.layers%.0%.') -- block 0: no adapter trains, and nothing below it does
end
if opt.ac == '1' then fsdp.nn.checkpoint_units(model) end
-- adapters start from the same values whatever the base seed (B non-zero,
-- so both move from the first step)
for _, s in ipairs(model:parameter_specs()) do
   for _, p in ipairs(s.module._params) do
      if p.name == s.key and s.name:match('lora_B') then p.init = {'const', 0.03}
      elseif p.name == s.key and s.name:match('lora_A') then p.init = {'uniform', -0.2, 0.2} end
   end
end
local sharded = fsdp.shard(model, {strategy = opt.strategy, seed = tonumber(opt.base_seed), param_dtype = opt.dtype,
                                   reduce_dtype = opt.dtype, hybrid_group_size = 2})
local state_bytes = fsdp.memory_stats().current - mem0
local optimizer = AdamW.new(sharded, {lr = 1e-2, betas = {0.9, 0.95}, weight_decay = 0.1,
                                      groups = opt.lora == '1' and {{params = 'lora_B', lr = 2e-2, weight_decay = 0.05}}
                                         or nil})
local lora = require 'fsdp.lora'
local state = {optimizer = optimizer, lora = opt.lora == '1' and lora.state(model) or nil}
local start = 0
if opt.resume ~= '' then
   local saved = ckpt.resume(opt.resume, sharded, state, 'tiny-llama seed ' .. opt.base_seed)
   start = saved.step
end

local function frozen_values()
   local out = {}
   for name, t in pairs(sharded:full_state_dict()) do
      if not lora.is_adapter(name) or name:match('^model%.layers%.0%.') then out[name] = t
      else t:free() end
   end
   return out
end
local before = frozen_values()

-- counts gathers of block 0 (unit1) and block 1 (unit2)
local gathers = {0, 0}
for i = 1, 2 do
   local u = sharded.units[i + 1]
   local g = u.gather
   u.gather = function(self, async)
      if not self.gathered and not self.pending_gather then gathers[i] = gathers[i] + 1 end
      return g(self, async)
   end
end

local function batch(step, micro)
   local rows = B / W / accum
   local x, y = fsdp.empty({rows, T_}, 'i32'), fsdp.empty({rows, T_}, 'i32')
   for r = 0, rows - 1 do
      local g = rank * (B / W) + (micro - 1) * rows + r -- the global row
      for i = 0, T_ - 1 do
         local v = (step * 13 + g * 7 + i * i * 3 + g * i) % V
         x:ptr()[r * T_ + i] = v
         y:ptr()[r * T_ + i] = (v * 5 + 3 + g) % V
      end
   end
   return x, y
end

local losses, pinned = {}, 0
for step = start + 1, steps do
   local sum = 0
   for micro = 1, accum do
      sharded:set_sync(micro == accum)
      local x, y = batch(step, micro)
      sum = sum + fsdp.backward(model:loss(x, y), 1 / accum)
      x:free(); y:free()
      -- after a backward no sharded unit stays gathered
      for _, u in ipairs(sharded.units) do if u.gathered and not u.resident then pinned = pinned + 1 end end
   end
   losses[tostring(step)] = dist.sum_number(sum / accum) / W
   optimizer:step(1e-2)
   sharded:zero_grad()
   if tonumber(opt.save_at) == step and opt.save_dir ~= '' then
      ckpt.save(opt.save_dir, {step = step, sharded = sharded, state = state, model_name = 'tiny-llama',
                               base = 'tiny-llama seed ' .. opt.base_seed, comm = dist.checkpoint_comm()})
   end
end

local after = frozen_values()
local frozen_same, n_frozen = true, 0
for name, t in pairs(before) do
   n_frozen = n_frozen + 1
   local a, b = t:ptr(), after[name]:ptr()
   for i = 0, t:numel() - 1 do
      if a[i] ~= b[i] then frozen_same = false; break end
   end
end
local adapters = {}
for name, t in pairs(sharded:full_state_dict()) do
   if lora.is_adapter(name) and not name:match('^model%.layers%.0%.') then adapters[name] = t:totable() end
   t:free()
end
if rank == 0 then
   local f = assert(io.open(opt.out, 'w'))
   f:write(fsdp.json.encode {world = W, losses = losses, adapters = adapters, frozen_same = frozen_same,
                                      n_frozen = n_frozen, gathers = gathers, steps = steps - start, pinned = pinned,
                                      state_bytes = state_bytes, peak = fsdp.memory_stats().peak - mem0,
                                      trainable = sharded:num_trainable_parameters(),
                                      params = sharded:num_parameters()})
   f:close()
end
return 0
