-- Gemma 2 (Hugging Face Gemma2ForCausalLM): a decoder with
--   - token embeddings scaled by sqrt(hidden_size), rounded to f32 as
--     transformers rounds it in the model dtype;
--   - RMSNorms whose weight is an offset from one: x / rms(x) * (1 + w);
--   - four norms per layer: before and after the attention, before and
--     after the feed-forward (both sub-blocks add their normed output to
--     the residual);
--   - a GELU (tanh) gated feed-forward: down(gelu(gate(x)) * up(x));
--   - attention scaled by query_pre_attn_scalar^-1/2 with its scores
--     soft-capped (attn_logit_softcapping: cap * tanh(s / cap)), sliding
--     windows on the layers layer_types names (every other one by default);
--   - final logits soft-capped (final_logit_softcapping), a tied head.
-- Parameter names are transformers' Gemma2's. Rotary embeddings, the GQA
-- attention and the head are Llama's (models/llama.lua). Single-device code.
local ffi = require 'ffi'
local nn = require 'fsdp.nn'
local ops = require 'fsdp.ops'
local T = require 'fsdp.tensor'
local json = require 'fsdp.json'
local llama = require 'models.llama'

local M = {}

-- transformers' Gemma2Config defaults for the fields used here
M.defaults = {}
for k, v in pairs(llama.defaults) do M.defaults[k] = v end
for k, v in pairs({vocab_size = 256000, hidden_size = 2304, intermediate_size = 9216, num_hidden_layers = 26,
                   num_attention_heads = 8, num_key_value_heads = 4, head_dim = 256,
                   hidden_activation = 'gelu_pytorch_tanh', max_position_embeddings = 8192, pad_token_id = 0,
                   tie_word_embeddings = true, query_pre_attn_scalar = 256, sliding_window = 4096,
                   final_logit_softcapping = 30.0, attn_logit_softcapping = 50.0}) do
   M.defaults[k] = v
end
M.defaults.hidden_act, M.defaults.mlp_bias = nil, nil -- Gemma 2 reads hidden_activation, has no mlp_bias

local f32buf = ffi.new('float[1]')
local function f32(x) f32buf[0] = x; return f32buf[0] end

-- Gemma's RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + weight), weight from zeros
local RMSNorm = nn.class('Gemma2RMSNorm')
M.RMSNorm = RMSNorm
function RMSNorm.new(dim, eps)
   local self = nn.Module.instance(RMSNorm)
   self.dim, self.eps, self.ones = dim, eps, {}
   self:param('weight', {dim}, 'zeros')
   return self
end
function RMSNorm:forward(x)
   local dev = x.device
   if not self.ones[dev] then self.ones[dev] = T.full({self.dim}, 1.0, 'f32', dev) end
   return ops.rmsnorm(x, ops.add(self.weight, self.ones[dev]), self.eps)
end

-- Gemma 2's attention: Llama's projections (biases when attention_bias),
-- RoPE and GQA, scaled by query_pre_attn_scalar^-1/2, scores soft-capped,
-- a sliding window of its own (0: full causal attention)
local Attention = nn.class('Gemma2Attention', llama.Attention)
M.Attention = Attention
function Attention.new(cfg, rope, window)
   local self = nn.Module.instance(Attention)
   local C, NH, NKV, HD = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
   local bias = cfg.attention_bias == true
   self.n_head, self.n_kv_head, self.head_dim = NH, NKV, HD
   self.rope, self.window = rope, window
   self.scale = f32(cfg.query_pre_attn_scalar ^ -0.5)
   self.softcap = cfg.attn_logit_softcapping or 0
   self:add('q_proj', nn.Linear(C, NH * HD, {bias = bias}))
   self:add('k_proj', nn.Linear(C, NKV * HD, {bias = bias}))
   self:add('v_proj', nn.Linear(C, NKV * HD, {bias = bias}))
   self:add('o_proj', nn.Linear(NH * HD, C, {bias = bias, std = cfg.initializer_range}))
   return self
end
-- (forward: llama.Attention's, with self.scale and self.softcap)

-- the GELU (tanh) gated feed-forward
local MLP = nn.class('Gemma2MLP')
M.MLP = MLP
function MLP.new(cfg)
   local self = nn.Module.instance(MLP)
   local C, H = cfg.hidden_size, cfg.intermediate_size
   self.hidden = H
   self:add('gate_proj', nn.Linear(C, H, {bias = false}))
   self:add('up_proj', nn.Linear(C, H, {bias = false}))
   self:add('down_proj', nn.Linear(H, C, {bias = false, std = cfg.initializer_range}))
   return self
end
function MLP:forward(x) return self.down_proj(ops.mul(ops.gelu(self.gate_proj(x)), self.up_proj(x))) end
function MLP:activation_elems(N) return 3 * N * self.hidden end -- gelu(gate), the product, and gate

-- x + post_attention_layernorm(attn(input_layernorm(x))), then
-- + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))
local DecoderLayer = nn.class('Gemma2DecoderLayer')
M.DecoderLayer = DecoderLayer
function DecoderLayer.new(cfg, rope, window)
   local self = nn.Module.instance(DecoderLayer)
   local C, eps = cfg.hidden_size, cfg.rms_norm_eps
   self.n_embd = C
   self:add('input_layernorm', RMSNorm(C, eps))
   self:add('self_attn', Attention(cfg, rope, window))
   self:add('post_attention_layernorm', RMSNorm(C, eps))
   self:add('pre_feedforward_layernorm', RMSNorm(C, eps))
   self:add('mlp', MLP(cfg))
   self:add('post_feedforward_layernorm', RMSNorm(C, eps))
   return self
end
function DecoderLayer:forward(x, ctx)
   x = ops.add(x, self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), ctx)))
   return ops.add(x, self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))))
end
function DecoderLayer:activation_elems(N) return 6 * N * self.n_embd end -- the norms' outputs and the sums

local function is_set(v) return v ~= nil and v ~= json.null end

-- the sliding window of every layer (0: none): the layers layer_types calls
-- 'sliding_attention' (by default the even ones, 0, 2, ..., as both
-- transformers 4.x and 5 compute them) get sliding_window
function M.layer_windows(c, who)
   local function need(ok, fmt, ...) if not ok then error(who .. ': ' .. string.format(fmt, ...), 0) end end
   local n, W, types = c.num_hidden_layers, c.sliding_window, c.layer_types
   need(W == nil or (type(W) == 'number' and W >= 1 and W == math.floor(W)),
        'sliding_window must be a positive integer or null, got %s', tostring(W))
   need(types == nil or (type(types) == 'table' and #types == n), 'layer_types must list the %d layers, got %s', n,
        type(types) == 'table' and json.encode(types) or tostring(types))
   local out = {}
   for i = 1, n do
      local kind = types and types[i] or (i % 2 == 1 and 'sliding_attention' or 'full_attention')
      need(kind == 'full_attention' or kind == 'sliding_attention',
           "layer_types[%d] = %s is not supported ('full_attention', 'sliding_attention')", i - 1, tostring(kind))
      need(kind == 'full_attention' or W ~= nil, "layer_types[%d] is 'sliding_attention' but sliding_window is null",
           i - 1)
      out[i] = kind == 'sliding_attention' and W or 0
   end
   return out
end

-- a full configuration: Llama's checks, then Gemma 2's own fields
function M.config(cfg)
   local c = llama.config(cfg, M.defaults, 'gemma2',
                          {key = 'hidden_activation', allowed = {gelu_pytorch_tanh = true}})
   local function need(ok, fmt, ...) if not ok then error('gemma2: ' .. string.format(fmt, ...), 0) end end
   local s = c.query_pre_attn_scalar
   need(type(s) == 'number' and s > 0, 'query_pre_attn_scalar must be a positive number, got %s', tostring(s))
   for _, k in ipairs({'attn_logit_softcapping', 'final_logit_softcapping'}) do
      local v = c[k]
      need(v == nil or (type(v) == 'number' and v > 0 and v < math.huge), '%s must be a positive number or null, got %s',
           k, tostring(v))
   end
   need(not c.use_bidirectional_attention, 'use_bidirectional_attention %s is not supported (causal attention only)',
        tostring(c.use_bidirectional_attention))
   c.windows = M.layer_windows(c, 'gemma2')
   return c
end

local Body = nn.class('Gemma2Model')

local Gemma2 = nn.class('Gemma2', llama.Llama)
M.Gemma2 = Gemma2
-- the loss is taken on the whole soft-capped logits (fsdp.plan counts them)
Gemma2.whole_logits = true

function Gemma2.new(cfg)
   local self = nn.Module.instance(Gemma2)
   local c = M.config(cfg)
   self.config = c
   local C, V = c.hidden_size, c.vocab_size
   self.rope = llama.rope(c)
   self.normalizer = f32(math.sqrt(C)) -- torch.tensor(hidden_size ** 0.5, dtype=float32)
   local body = self:add('model', nn.Module.instance(Body))
   body:add('embed_tokens', nn.PaddedEmbedding(V, C, llama.padding_idx(c.pad_token_id, V), {std = c.initializer_range}))
   local layers = body:add('layers', nn.ModuleList())
   for i = 1, c.num_hidden_layers do layers:append(DecoderLayer(c, self.rope, c.windows[i])) end
   body:add('norm', RMSNorm(C, c.rms_norm_eps))
   if not c.tie_word_embeddings then
      self:add('lm_head', nn.Linear(C, V, {bias = false, std = c.initializer_range}))
   end
   return self
end

-- idx: i32 [B, T] token ids -> logits [B, T, vocab]; ctx and targets as
-- llama.Llama's (the soft-capped logits exist whole: the loss is taken on
-- them)
function Gemma2:forward(idx, ctx, targets)
   llama.check_input(self, idx)
   local cache = nn.forward_context(ctx)
   if cache then cache:check(idx.shape[1], idx.shape[2]) end
   local body = self.model
   local x = ops.scale(body.embed_tokens(idx), self.normalizer)
   for i = 1, body.layers.n do x = body.layers[i](x, ctx) end
   x = body.norm(x)
   if cache then cache:advance(idx.shape[2]) end
   local logits = self.lm_head and self.lm_head(x) or ops.linear(x, body.embed_tokens.weight)
   local cap = self.config.final_logit_softcapping
   if cap then logits = ops.softcap(logits, cap) end
   if targets then
      return ops.cross_entropy(logits, targets, -100, type(ctx) == 'table' and ctx.denominator or nil)
   end
   return logits
end

-- the config.json fields read (transformers' Gemma2Config)
M.hf_fields = {'hidden_activation', 'query_pre_attn_scalar', 'sliding_window', 'layer_types',
               'final_logit_softcapping', 'attn_logit_softcapping', 'use_bidirectional_attention'}
for _, k in ipairs(llama.hf_fields) do
   if k ~= 'hidden_act' and k ~= 'mlp_bias' then M.hf_fields[#M.hf_fields + 1] = k end
end
-- hidden_act and sliding_window_size: published Gemma 2 configs carry them
-- beside hidden_activation and sliding_window, the ones transformers reads
M.config_keys = {used = M.hf_fields,
                 inert = {'use_cache', 'bos_token_id', 'eos_token_id', 'cache_implementation', 'hidden_act',
                          'sliding_window_size'},
                 dropout = {'attention_dropout'}}

-- a model from a config.json table (4.x or 5.x layout)
function M.from_hf(hf)
   local model = Gemma2(llama.pick(hf, M.hf_fields, M.defaults))
   model.hf_config = hf
   return model
end

-- the config.json of an export (see llama.hf_config); a model from scratch
-- writes its layer_types, as transformers 5 does
function M.to_hf_config(model, layout)
   local fields = {'hidden_activation', 'query_pre_attn_scalar', 'sliding_window', 'final_logit_softcapping',
                   'attn_logit_softcapping'}
   for _, k in ipairs(llama.scratch_fields) do
      if k ~= 'hidden_act' and k ~= 'mlp_bias' then fields[#fields + 1] = k end
   end
   local out = llama.hf_config(model, 'Gemma2ForCausalLM', 'gemma2', layout, fields)
   if not model.hf_config then
      local types = {}
      for i, w in ipairs(model.config.windows) do types[i] = w > 0 and 'sliding_attention' or 'full_attention' end
      out.layer_types = json.array(types)
      for _, k in ipairs({'final_logit_softcapping', 'attn_logit_softcapping'}) do
         if type(out[k]) == 'number' then json.set_float(out, k) end
      end
   end
   return out
end

M.family = {
   architectures = {'Gemma2ForCausalLM'},
   model_types = {'gemma2'},
   from_hf = M.from_hf,
   to_hf_config = M.to_hf_config,
   config_keys = M.config_keys,
   unknown_keys = function(model) return model.config.rope_unknown end,
}
Gemma2.family = M.family

return M
