-- LoRA: the fused op against its composition and finite differences; the
-- adapters fsdp.lora adds (names, inits, a model unchanged at the start);
-- training moves only the adapters (frozen weights bitwise unchanged with
-- weight decay on); dropout masks equal under activation checkpointing;
-- a target that names no layer is an error listing the layers.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local G = require 'tests.lua.gradcheck'
local ops = fsdp.ops
local AdamW = require 'optim.adamw'

fsdp.set_num_threads(1)

-- 1. the op
do
   local x, w, b = G.randn({2, 3, 6}), G.randn({5, 6}), G.randn({5})
   local a, bb = G.randn({2, 6}), G.randn({5, 2})
   local fused = fsdp.no_grad(function() return ops.lora_linear(x, w, b, a, bb, {scale = 1.5}):totable() end)
   local comp = fsdp.no_grad(function()
      return ops.add(ops.linear(x, w, b), ops.scale(ops.linear(ops.linear(x, a), bb), 1.5)):totable()
   end)
   fsdp.autograd.reset()
   local worst = 0
   for i = 1, #fused do worst = math.max(worst, math.abs(fused[i] - comp[i])) end
   t.check(worst < 1e-5, 'lora_linear differs from its composition by %g', worst)
   G.check('lora_linear', function() return ops.lora_linear(x, w, b, a, bb, {scale = 1.5}) end,
           {{'x', x}, {'w', w}, {'b', b}, {'a', a}, {'bb', bb}})
end

local function tiny()
   return require('models.llama').Llama {vocab_size = 31, hidden_size = 16, intermediate_size = 24,
                                         num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2}
end
local ids = {}
for i = 1, 2 * 12 do ids[i] = (i * 5 + 1) % 31 end
local x = fsdp.from_table(ids, {2, 12}, 'i32')
local ys = {}
for i = 1, 2 * 12 do ys[i] = (i * 5 + 6) % 31 end
local y = fsdp.from_table(ys, {2, 12}, 'i32')

-- 2. the adapters
do
   local model = tiny()
   fsdp.lora(model, {targets = {'q_proj', 'k_proj', 'v_proj', 'o_proj'}, r = 4, alpha = 8})
   local names, trainable = {}, 0
   for _, s in ipairs(model:parameter_specs()) do
      names[s.name] = s
      if not s.frozen then trainable = trainable + 1 end
   end
   t.check(names['model.layers.0.self_attn.q_proj.lora_A.weight'] and
           names['model.layers.1.self_attn.o_proj.lora_B.weight'], 'the adapters are named as PEFT names them')
   t.check(trainable == 2 * 4 * 2, '%d trainable tensors, want 16 (A and B of 4 layers of 2 blocks)', trainable)
   t.check(names['model.layers.0.self_attn.q_proj.weight'].frozen and names['model.embed_tokens.weight'].frozen,
           'the base weights are frozen')
   local A = names['model.layers.0.self_attn.q_proj.lora_A.weight']
   t.check(A.shape[1] == 4 and A.shape[2] == 16 and A.init[1] == 'uniform' and math.abs(A.init[3] - 0.25) < 1e-12,
           'lora_A [r, in] is U(-1/sqrt(in), 1/sqrt(in))')
   -- at the start the model computes what the base model does (B = 0)
   model:materialize(3)
   local base = tiny():materialize(3)
   local l1 = fsdp.no_grad(function() return model(x):totable() end)
   local l2 = fsdp.no_grad(function() return base(x):totable() end)
   fsdp.autograd.reset()
   local same = #l1 == #l2
   for i = 1, #l1 do same = same and l1[i] == l2[i] end
   t.check(same, 'with lora_B zero the logits equal the base model\'s')
   t.raises(function() fsdp.lora(tiny(), {targets = {'q_proj', 'qkv'}}) end,
            {"no linear layer", "'qkv'", 'q_proj', 'gate_proj'}, 'a target that names nothing')
   t.raises(function() fsdp.lora(tiny(), {r = 0}) end, {'r must be a positive integer'}, 'r = 0')
end

-- 3. training: sharded on this rank, AdamW with weight decay, with and
-- without activation checkpointing (dropout on: the recompute must draw
-- the same masks)
local function train(ac)
   local model = tiny()
   fsdp.lora(model, {targets = {'q_proj', 'v_proj', 'gate_proj'}, r = 2, alpha = 4, dropout = 0.2, seed = 5})
   if ac then fsdp.nn.checkpoint_units(model) end
   local sharded = fsdp.shard(model, {seed = 9})
   -- a non-zero B so the first steps move both adapters
   for _, np in ipairs(model:named_parameters()) do
      if np[1]:match('lora_B') then np[2]:fill(0.05) end
   end
   local before = sharded:full_state_dict()
   local opt = AdamW.new(sharded, {lr = 1e-2, weight_decay = 0.1})
   local losses = {}
   for s = 1, 4 do
      losses[s] = fsdp.backward(model:loss(x, y))
      opt:step()
      sharded:zero_grad()
   end
   return losses, before, sharded:full_state_dict()
end
do
   local l1, before, after = train(false)
   local l2 = train(true)
   t.check(l1[4] < l1[1], 'LoRA training lowers the loss: %s', table.concat(l1, ' '))
   local same = true
   for i = 1, 4 do same = same and l1[i] == l2[i] end
   t.check(same, 'activation checkpointing gives other losses (dropout masks differ?): %s vs %s',
           table.concat(l1, ' '), table.concat(l2, ' '))
   local moved, frozen_same = 0, true
   for name, v in pairs(before) do
      local a, b = v:totable(), after[name]:totable()
      local eq = true
      for i = 1, #a do eq = eq and a[i] == b[i] end
      if name:match('lora_[AB]') then
         if not eq then moved = moved + 1 end
      else
         frozen_same = frozen_same and eq
      end
   end
   t.check(frozen_same, 'a frozen weight moved (weight decay 0.1)')
   t.check(moved == 2 * 3 * 2, '%d of 12 adapter tensors moved', moved)
end
return t.done()
