-- nn modules and minGPT: a Jacobian spot check of every parameter and the
-- input (finite differences through the autograd), a save/load round trip
-- giving identical outputs, and the module path in errors.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local G = require 'tests.lua.gradcheck'
local nn, ops = fsdp.nn, fsdp.ops
local mingpt = require 'models.mingpt'

fsdp.set_num_threads(1)
local tmp = os.tmpname()
os.remove(tmp)
os.execute('mkdir -p ' .. tmp)

-- a rotary table provider for llama-style attention
local Rope = {}
Rope.__index = Rope
local function rope(head_dim)
   local self = setmetatable({hd = head_dim}, Rope)
   return self
end
function Rope:tables(T_)
   if not self.cos then
      local hd = self.hd
      local inv = fsdp.empty({hd / 2}, 'f32')
      for i = 0, hd / 2 - 1 do inv:ptr()[i] = 1 / (10000 ^ (2 * i / hd)) end
      self.cos, self.sin = fsdp.empty({64, hd / 2}, 'f32'), fsdp.empty({64, hd / 2}, 'f32')
      fsdp.C.fsdp_rope_table_cpu(self.cos:ptr(), self.sin:ptr(), inv:ptr(), 0, 64, hd)
   end
   return self.cos, self.sin
end

local function wrt_all(m, x)
   local wrt = {}
   if x then wrt[1] = {'input', x} end
   for _, np in ipairs(m:named_parameters()) do wrt[#wrt + 1] = {np[1], np[2]} end
   return wrt
end

-- gradient spot check, then save -> load into a differently seeded twin ->
-- identical outputs
local function module_case(name, make, input)
   local m = make():materialize(7)
   local x = input()
   G.check(name, function() return m(x) end, wrt_all(m, x.dtype == 'f32' and x or nil), {samples = 12, eps = 5e-2})
   local path = tmp .. '/' .. name:gsub('%W', '_') .. '.safetensors'
   m:save(path)
   local twin = make():materialize(8)
   for _, p in ipairs(twin:parameters()) do -- constant inits (norms) must differ too
      local r = G.randn(p.shape)
      p:copy(r)
      r:free()
   end
   local before = fsdp.no_grad(function() return twin(x):totable() end)
   fsdp.autograd.reset()
   twin:load(path)
   local a = fsdp.no_grad(function() return m(x):totable() end)
   local b = fsdp.no_grad(function() return twin(x):totable() end)
   fsdp.autograd.reset()
   local same, differed = #a == #b, false
   for i = 1, #a do
      same = same and a[i] == b[i]
      differed = differed or a[i] ~= before[i]
   end
   t.check(same, '%s: outputs differ after a save/load round trip', name)
   t.check(differed, '%s: the twin should differ before loading (seeds 7 vs 8)', name)
end

local function randn(shape) return function() return G.randn(shape) end end

module_case('Linear', function() return nn.Linear(6, 4) end, randn({2, 3, 6}))
module_case('Embedding', function() return nn.Embedding(10, 4) end,
            function() return fsdp.from_table({1, 9, 0, 4}, {2, 2}, 'i32') end)
module_case('LayerNorm', function() return nn.LayerNorm(6) end, randn({3, 6}))
module_case('RMSNorm', function() return nn.RMSNorm(6) end, randn({3, 6}))
-- the attention modules, MLPs and blocks of the model files
local llama = require 'models.llama'
local opt_model = require 'models.opt'
local gpt_cfg = {n_embd = 8, n_head = 2, bias = true, layer_norm_eps = 1e-5, proj_std = 0.02}
module_case('minGPT MLP', function() return mingpt.MLP {n_embd = 6, n_inner = 8, bias = true} end, randn({2, 3, 6}))
module_case('minGPT attention', function() return mingpt.Attention(gpt_cfg) end, randn({2, 5, 8}))
module_case('minGPT block', function() return mingpt.Block(gpt_cfg) end, randn({2, 4, 8}))
local llama_cfg = {hidden_size = 8, intermediate_size = 12, num_attention_heads = 4, num_key_value_heads = 2,
                   head_dim = 2, sliding_window = 3, rms_norm_eps = 1e-6, initializer_range = 0.02}
module_case('Llama MLP', function() return llama.MLP(llama_cfg) end, randn({2, 3, 8}))
module_case('Llama attention gqa rope window', function() return llama.Attention(llama_cfg, rope(2)) end,
            randn({2, 5, 8}))
module_case('Llama decoder layer', function()
   local cfg = {hidden_size = 8, intermediate_size = 12, num_attention_heads = 2, num_key_value_heads = 1,
                head_dim = 4, rms_norm_eps = 1e-6, initializer_range = 0.02}
   return llama.DecoderLayer(cfg, rope(4))
end, randn({2, 4, 8}))
module_case('OPT attention', function()
   return opt_model.Attention {hidden_size = 8, num_attention_heads = 2, enable_bias = true, init_std = 0.02}
end, randn({2, 4, 8}))

-- the model: gradient spot check of every parameter through the loss
do
   local cfg = {vocab_size = 11, block_size = 8, n_layer = 2, n_head = 2, n_embd = 8}
   local model = mingpt.GPT(cfg):materialize(3)
   local x = fsdp.from_table({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1}, {2, 6}, 'i32')
   local y = fsdp.from_table({2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2}, {2, 6}, 'i32')
   G.check('GPT loss', function() return model:loss(x, y) end, wrt_all(model), {samples = 6})
   G.check('GPT logits', function() return model(x) end, wrt_all(model), {samples = 6, offset = 1})
   -- save/load round trip gives identical logits
   local path = tmp .. '/gpt.safetensors'
   model:save(path)
   local twin = mingpt.GPT(cfg):materialize(4)
   twin:load(path)
   local a = fsdp.no_grad(function() return model(x):totable() end)
   local b = fsdp.no_grad(function() return twin(x):totable() end)
   fsdp.autograd.reset()
   local same = true
   for i = 1, #a do same = same and a[i] == b[i] end
   t.check(same, 'GPT: logits differ after save/load')

   -- activation checkpointing of the blocks: same loss and gradients, bitwise
   local function grads(m)
      m:zero_grad()
      local loss = fsdp.backward(m:loss(x, y))
      local g = {}
      for _, p in ipairs(m:parameters()) do g[#g + 1] = p.grad:totable() end
      return loss, g
   end
   local plain = mingpt.GPT(cfg):materialize(5)
   local ckpt = nn.checkpoint_units(mingpt.GPT(cfg):materialize(5))
   local l1, g1 = grads(plain)
   local l2, g2 = grads(ckpt)
   t.check(l1 == l2, 'checkpointed GPT: loss %.9g vs %.9g', l1, l2)
   local same_g = #g1 == #g2
   for i = 1, #g1 do for j = 1, #g1[i] do same_g = same_g and g1[i][j] == g2[i][j] end end
   t.check(same_g, 'checkpointed GPT: gradients differ')
end

-- a user-built module with wrong shapes: the error names the module path
do
   local Net = nn.class('Net')
   function Net.new()
      local self = nn.Module.instance(Net)
      self:add('encoder', nn.Linear(8, 16))
      self:add('decoder', nn.Linear(32, 8)) -- wrong: takes 32, gets 16
      return self
   end
   function Net:forward(x) return self.decoder(self.encoder(x)) end
   local net = Net():materialize(0)
   t.raises(function() net(G.randn({2, 8})) end,
            {'in Net.decoder (Linear)', 'linear', '16 features', '[8, 32]'}, 'wrong shapes in a user module')
   local model = mingpt.GPT {vocab_size = 11, block_size = 8, n_layer = 2, n_head = 2, n_embd = 8}:materialize(0)
   t.raises(function() model(fsdp.from_table({1, 2, 30}, {1, 3}, 'i32')) end,
            {'in GPT.transformer.wte (Embedding)', '30'}, 'token id outside the vocabulary')
   t.raises(function() model(fsdp.empty({1, 9}, 'i32'):fill(0)) end, {'block_size 8'}, 'sequence too long')
   t.raises(function() mingpt.GPT {vocab_size = 11, block_size = 8, n_layer = 1, n_head = 3, n_embd = 10} end,
            {'not divisible'}, 'bad head count')
   local wider = mingpt.GPT {vocab_size = 11, block_size = 8, n_layer = 2, n_head = 2, n_embd = 16}:materialize(0)
   t.raises(function() wider:load(tmp .. '/gpt.safetensors') end,
            {'gpt.safetensors', 'transformer.wte.weight', '[11, 8]', '[11, 16]'}, 'loading a differently shaped model')
   fsdp.autograd.reset()
end

os.execute('rm -rf ' .. tmp)
return t.done()
