-- Frozen parameters on the (emulated) CUDA device, with and without CPU
-- offload, f32 and bf16 gathers: a tiny Llama with everything frozen but
-- block 1's MLP and the final norm (block 0 wholly frozen, nothing below it
-- trains) trains to the CPU run's losses; the frozen flats hold no gradient
-- and, offloaded, live in pinned host memory in the gather dtype; every
-- frozen weight is bitwise unchanged after AdamW with weight decay. (LoRA
-- itself waits for the CUDA twin of its kernel.)
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local T = require 'fsdp.tensor'
local device = require 'fsdp.device'
local AdamW = require 'optim.adamw'
fsdp.set_num_threads(1)

device.set_library(device.emulated_library_path())
local dev = device.get('cuda')
t.check(dev.kind == 'cuda', 'the emulated backend did not load: %s', device.describe(dev))
local D = dev.index

local V = 29
local function make()
   local m = require('models.llama').Llama {vocab_size = V, hidden_size = 16, intermediate_size = 24,
                                            num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2}
   m:freeze()
   m:unfreeze('^model%.layers%.1%.mlp%.')
   m:unfreeze('^model%.norm%.')
   return m
end

local function batch(s)
   local x, y = T.empty({2, 8}, 'i32'), T.empty({2, 8}, 'i32')
   for i = 0, 15 do x:ptr()[i] = (i * 7 + s * 3) % V; y:ptr()[i] = (i * 5 + s) % V end
   return x, y
end

local function train(where, offload, dtype)
   local model = make()
   local sharded = fsdp.shard(model, {seed = 5, device = where, cpu_offload = offload, param_dtype = dtype})
   local before = sharded:full_state_dict()
   local opt = AdamW.new(sharded, {lr = 1e-2, weight_decay = 0.1})
   local losses = {}
   for s = 1, 3 do
      local x, y = batch(s)
      local dx, dy = x:to_device(where), y:to_device(where)
      losses[s] = fsdp.backward(model:loss(dx, dy))
      opt:step()
      sharded:zero_grad()
      if dx ~= x then dx:free(); dy:free() end
      x:free(); y:free()
   end
   local after = sharded:full_state_dict()
   local same = true
   for name, v in pairs(before) do
      if not name:match('^model%.layers%.1%.mlp%.') and not name:match('^model%.norm%.') then
         local a, b = v:totable(), after[name]:totable()
         for i = 1, #a do same = same and a[i] == b[i] end
      end
   end
   return losses, sharded, same
end

local ref = train(-1, false, 'f32')
for _, c in ipairs({{false, 'f32'}, {true, 'f32'}, {true, 'bf16'}}) do
   local offload, dtype = c[1], c[2]
   local name = string.format('device%s, %s gathers', offload and ' + CPU offload' or '', dtype)
   local losses, sh, same = train(D, offload, dtype)
   for s = 1, 3 do
      t.close(losses[s], ref[s], dtype == 'f32' and 1e-5 or 1e-2, 0, '%s: loss at step %d', name, s)
   end
   t.check(same, '%s: a frozen weight moved', name)
   local f = sh.units[2].frozen -- block 0: wholly frozen
   t.check(sh.units[2].numel == 0 and sh.units[3].numel > 0, '%s: block 0 has no trainable parameter', name)
   t.check(f and f.full == nil and f.shard.dtype == (offload and dtype or 'f32'),
           '%s: the frozen flat should be a %s slice, gathered only while used (dtype %s)', name,
           offload and dtype or 'f32', f and f.shard.dtype or '?')
   if offload then
      t.check(f.shard.device == -1 and f.shard:is_pinned(), '%s: the offloaded frozen slice is pinned host memory', name)
   else
      t.check(f.shard.device == D, '%s: the frozen slice lives on the device', name)
   end
   for _, s in ipairs(f.specs) do
      local p = s.module[s.key]
      t.check(not p or p._c == nil or not p.grad, '%s: frozen %s has a gradient', name, s.name)
   end
   print(string.format('%-36s losses %s', name, table.concat(losses, ' ')))
end
return t.done()
