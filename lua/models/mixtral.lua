-- Mixtral: Mistral/Llama blocks whose feed-forward is a sparse mixture of
-- experts. Per token: router logits = gate(x) over E experts; the top k
-- (num_experts_per_tok) experts by softmax probability are chosen and their
-- probabilities renormalized to sum to one; the output is the weighted sum
-- of the chosen experts' SwiGLU MLPs (w2(silu(w1 x) * w3 x)). With
-- output_router_logits on, the loss adds router_aux_loss_coef times the
-- Switch-Transformer load-balancing loss over all layers (as transformers'
-- load_balancing_loss_func computes it).
--
-- Parameter names are Hugging Face MixtralForCausalLM's:
--   model.layers.N.block_sparse_moe.gate.weight            [E, C]
--   model.layers.N.block_sparse_moe.experts.M.w1.weight    [F, C]  (gate)
--   model.layers.N.block_sparse_moe.experts.M.w3.weight    [F, C]  (up)
--   model.layers.N.block_sparse_moe.experts.M.w2.weight    [C, F]  (down)
-- Single-device code: the sharding is applied from outside (fsdp.shard).
local nn = require 'fsdp.nn'
local ops = require 'fsdp.ops'
local T = require 'fsdp.tensor'
local AG = require 'fsdp.autograd'
local llama = require 'models.llama'
local json = require 'fsdp.json'

local M = {}

-- transformers' MixtralConfig defaults for the fields used here
M.defaults = {}
for k, v in pairs(llama.defaults) do M.defaults[k] = v end
M.defaults.intermediate_size = 14336
M.defaults.num_key_value_heads = 8
M.defaults.max_position_embeddings = 4096 * 32
M.defaults.rope_theta = 1e6
M.defaults.rms_norm_eps = 1e-5
M.defaults.num_local_experts = 8
M.defaults.num_experts_per_tok = 2
M.defaults.output_router_logits = false
M.defaults.router_aux_loss_coef = 0.001

-- Published shape (`--size mixtral-8x7b`): mistralai/Mixtral-8x7B-v0.1's
-- config.json, built through from_hf (46.70B parameters, 12.9B active)
M.published = {
   ['mixtral-8x7b'] = {architectures = {'MixtralForCausalLM'}, model_type = 'mixtral', vocab_size = 32000,
                       hidden_size = 4096, intermediate_size = 14336, num_hidden_layers = 32,
                       num_attention_heads = 32, num_key_value_heads = 8, max_position_embeddings = 32768,
                       rms_norm_eps = 1e-5, rope_theta = 1e6, num_local_experts = 8, num_experts_per_tok = 2,
                       router_aux_loss_coef = 0.02, output_router_logits = false, tie_word_embeddings = false,
                       hidden_act = 'silu', bos_token_id = 1, eos_token_id = 2},
}

-- one expert: a SwiGLU MLP with Mixtral's names
local Expert = nn.class('MixtralBlockSparseTop2MLP')
M.Expert = Expert
function Expert.new(C, F, std)
   local self = nn.Module.instance(Expert)
   self:add('w1', nn.Linear(C, F, {bias = false, std = std}))
   self:add('w2', nn.Linear(F, C, {bias = false, std = std}))
   self:add('w3', nn.Linear(C, F, {bias = false, std = std}))
   return self
end
function Expert:forward(x) return self.w2(ops.swiglu(self.w1(x), self.w3(x))) end

-- the sparse mixture of experts; `sink`, when given, collects each forward's
-- router logits and chosen experts at sink[layer] (the model's auxiliary
-- loss reads them)
local MoE = nn.class('MixtralSparseMoeBlock')
M.MoE = MoE
function MoE.new(cfg, sink, layer)
   local self = nn.Module.instance(MoE)
   local C, E = cfg.hidden_size, cfg.num_local_experts
   self.n_experts, self.top_k, self.sink, self.layer = E, cfg.num_experts_per_tok, sink, layer
   self:add('gate', nn.Linear(C, E, {bias = false, std = cfg.initializer_range}))
   local experts = self:add('experts', nn.ModuleList())
   for _ = 1, E do experts:append(Expert(C, cfg.intermediate_size, cfg.initializer_range)) end
   return self
end

-- x [B, T, C] -> [B, T, C]
function MoE:forward(x)
   local shape = x.shape
   local C = shape[#shape]
   local N = x:numel() / C
   local E, K = self.n_experts, self.top_k
   local x2 = ops.reshape(x, {N, C})
   -- the router logits leave the block for the auxiliary loss: declared, so
   -- that activation checkpointing keeps them and their gradient
   local logits = AG.side_output(self.gate(x2)) -- [N, E]
   -- the top-k experts per token; softmax is monotonic, so the k largest
   -- logits are the k most probable experts, and the softmax of the chosen
   -- logits equals their probabilities renormalized to sum to one
   local top, chosen = ops.topk(logits, K)
   chosen = AG.side_output(chosen)
   local weights = ops.reshape(ops.softmax(top), {N * K, 1})
   -- routing lists: per expert, the tokens (in order) and their slots n*K+j,
   -- made on the host (from a copy of the choices when x is on a GPU)
   local dev = x.device
   local chosen_h = chosen:cpu()
   local cp = chosen_h:ptr()
   local count = {}
   for e = 0, E - 1 do count[e] = 0 end
   for i = 0, N * K - 1 do count[cp[i]] = count[cp[i]] + 1 end
   local tok, slot, tp, sp, fill = {}, {}, {}, {}, {}
   for e = 0, E - 1 do
      if count[e] > 0 then
         tok[e], slot[e] = T.empty({count[e]}, 'i32', true), T.empty({count[e]}, 'i32', true)
         tp[e], sp[e], fill[e] = tok[e]:ptr(), slot[e]:ptr(), 0
      end
   end
   for i = 0, N * K - 1 do
      local e = cp[i]
      local f = fill[e]
      tp[e][f] = math.floor(i / K)
      sp[e][f] = i
      fill[e] = f + 1
   end
   if chosen_h ~= chosen then chosen_h:free() end
   if dev >= 0 then
      for e = 0, E - 1 do
         if count[e] > 0 then
            local t, s_ = tok[e]:to_device(dev), slot[e]:to_device(dev)
            tok[e]:free(); slot[e]:free()
            tok[e], slot[e] = t, s_
            T.adopt(t); T.adopt(s_)
         end
      end
   end
   -- each expert on its tokens, weighted, added back in expert order
   local out = T.zeros({N, C}, 'f32', true, dev)
   for e = 0, E - 1 do
      if count[e] > 0 then
         local h = self.experts[e + 1](ops.gather_rows(x2, tok[e]))
         h = ops.row_scale(h, ops.gather_rows(weights, slot[e]))
         out = ops.scatter_add_rows(out, tok[e], h)
      end
   end
   if self.sink then self.sink[self.layer or #self.sink + 1] = {logits = logits, chosen = chosen} end
   return ops.reshape(out, shape)
end

local Mixtral = nn.class('Mixtral', llama.Llama)
M.Mixtral = Mixtral

-- cfg: Llama's fields plus sliding_window, num_local_experts,
-- num_experts_per_tok, output_router_logits, router_aux_loss_coef
function Mixtral.new(cfg)
   local c = llama.config(cfg, M.defaults, 'mixtral')
   local E, K = c.num_local_experts, c.num_experts_per_tok
   if type(E) ~= 'number' or E < 1 or E ~= math.floor(E) then
      error('mixtral: num_local_experts must be a positive integer, got ' .. tostring(E), 0)
   end
   if type(K) ~= 'number' or K < 1 or K > E or K ~= math.floor(K) then
      error(string.format('mixtral: num_experts_per_tok %s must be an integer in [1, %d]', tostring(K), E), 0)
   end
   local self = nn.Module.instance(Mixtral)
   self.router = {} -- {logits, chosen} of every layer in the last forward
   local sink = self.router
   return llama.build(self, c, function(cfg_, i) return MoE(cfg_, sink, i), 'block_sparse_moe' end)
end

function Mixtral:forward(idx, ctx, targets)
   for i = #self.router, 1, -1 do self.router[i] = nil end
   return llama.Llama.forward(self, idx, ctx, targets)
end

-- transformers' load_balancing_loss_func over the last forward's layers:
-- E * sum_e f_e * P_e, where f_e is the share of (token, slot) choices that
-- went to expert e and P_e the mean router probability of e, both over the
-- tokens of every layer together. The choices carry no gradient.
function Mixtral:router_aux_loss()
   local E, K = self.config.num_local_experts, self.config.num_experts_per_tok
   local layers = self.router
   if #layers == 0 then error('Mixtral: no router logits: run a forward first', 2) end
   local count, rows = {}, 0
   for e = 0, E - 1 do count[e] = 0 end
   for _, l in ipairs(layers) do
      if l.logits:is_freed() then
         error('Mixtral: the router logits of the last forward are gone (the step ended): run a forward first', 0)
      end
      local n = l.chosen:numel()
      local h = l.chosen:cpu()
      local p = h:ptr()
      for i = 0, n - 1 do count[p[i]] = count[p[i]] + 1 end
      if h ~= l.chosen then h:free() end
      rows = rows + n / K
   end
   -- d aux / d P[row, e] = E * f_e / rows, the same for every row
   local coef = T.empty({1, E}, 'f32', true)
   for e = 0, E - 1 do coef:ptr()[e] = E * (count[e] / rows) / rows end
   local dev = layers[1].logits.device
   if dev >= 0 then
      local d = coef:to_device(dev)
      coef:free()
      coef = T.adopt(d)
   end
   local total
   for _, l in ipairs(layers) do
      local s = ops.sum(ops.linear(ops.softmax(l.logits), coef))
      total = total and ops.add(total, s) or s
   end
   return total
end

-- mean cross-entropy over targets that are not -100, plus the router's
-- auxiliary loss times router_aux_loss_coef when output_router_logits is on
-- the cross-entropy (as Llama's: ctx.denominator normalises over a global
-- batch) plus the router's auxiliary loss, weighted by ctx.share (this
-- micro-batch's share of the step) when the cross-entropy is normalised so
function Mixtral:loss(idx, targets, ctx)
   local loss = self(idx, ctx, targets)
   if self.config.output_router_logits then
      local w = self.config.router_aux_loss_coef * (ctx and ctx.share or 1)
      loss = ops.add(loss, ops.scale(self:router_aux_loss(), w))
   end
   return loss
end

M.hf_fields = {'sliding_window', 'num_local_experts', 'num_experts_per_tok', 'output_router_logits',
               'router_aux_loss_coef'}
for _, k in ipairs(llama.hf_fields) do M.hf_fields[#M.hf_fields + 1] = k end
M.config_keys = llama.extend_keys(llama.config_keys, {used = {'sliding_window', 'num_local_experts',
   'num_experts_per_tok', 'output_router_logits', 'router_aux_loss_coef', 'router_jitter_noise'}})

-- a model from a config.json table (transformers' MixtralConfig fields, 4.x
-- or 5.x layout). router_jitter_noise (training-time noise on the router
-- input) is not implemented and must be 0.
function M.from_hf(hf)
   local cfg = llama.pick(hf, M.hf_fields, M.defaults)
   cfg.sliding_window = cfg.sliding_window or 0
   local jitter = hf.router_jitter_noise
   if jitter ~= nil and jitter ~= json.null and jitter ~= 0 then
      error(string.format('mixtral: router_jitter_noise %s is not supported (0)', tostring(jitter)), 0)
   end
   local model = Mixtral(cfg)
   model.hf_config = hf
   return model
end

-- the config.json of an export (see llama.hf_config)
function M.to_hf_config(model, layout)
   local fields = {'sliding_window', 'num_local_experts', 'num_experts_per_tok', 'output_router_logits',
                   'router_aux_loss_coef'}
   for _, k in ipairs(llama.scratch_fields) do fields[#fields + 1] = k end
   local out = llama.hf_config(model, 'MixtralForCausalLM', 'mixtral', layout, fields)
   if not model.hf_config then
      out.router_jitter_noise = 0.0
      json.set_float(out, 'router_jitter_noise')
      if out.sliding_window == 0 then out.sliding_window = json.null end
   end
   return out
end

M.family = {
   architectures = {'MixtralForCausalLM'},
   model_types = {'mixtral'},
   from_hf = M.from_hf,
   to_hf_config = M.to_hf_config,
   config_keys = M.config_keys,
   lora_targets = {'q_proj', 'v_proj'}, -- fsdp.lora's default targets (PEFT's for this family)
   unknown_keys = function(model) return model.config.rope_unknown end,
}
Mixtral.family = M.family

return M
