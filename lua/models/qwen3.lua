-- Qwen3 (Hugging Face Qwen3ForCausalLM): Qwen2 (models/qwen2.lua) with an
-- RMSNorm over each head of q and of k before RoPE (q_norm, k_norm), an
-- explicit head_dim (128 by default, not hidden_size / heads), and
-- attention_bias on all four projections (off by default). Sliding windows
-- per layer as Qwen2's. Parameter names are transformers' Qwen3's.
-- Single-device code.
local nn = require 'fsdp.nn'
local ops = require 'fsdp.ops'
local llama = require 'models.llama'
local qwen2 = require 'models.qwen2'
local json = require 'fsdp.json'

local M = {}

-- transformers' Qwen3Config defaults for the fields used here
M.defaults = {}
for k, v in pairs(qwen2.defaults) do M.defaults[k] = v end
M.defaults.head_dim = 128
M.defaults.attention_bias = false

-- Qwen3's attention: q_proj, k_proj, v_proj (biases when attention_bias),
-- then an RMSNorm over every head of q (q_norm) and of k (k_norm), RoPE,
-- causal attention (layer `window`), o_proj
local Attention = nn.class('Qwen3Attention', llama.Attention)
M.Attention = Attention
function Attention.new(cfg, rope, window)
   local self = nn.Module.instance(Attention)
   local C, NH, NKV, HD = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
   local bias = cfg.attention_bias == true
   self.n_head, self.n_kv_head, self.head_dim = NH, NKV, HD
   self.rope, self.window = rope, window
   self:add('q_proj', nn.Linear(C, NH * HD, {bias = bias}))
   self:add('k_proj', nn.Linear(C, NKV * HD, {bias = bias}))
   self:add('v_proj', nn.Linear(C, NKV * HD, {bias = bias}))
   self:add('o_proj', nn.Linear(NH * HD, C, {bias = bias, std = cfg.initializer_range}))
   self:add('q_norm', nn.RMSNorm(HD, {eps = cfg.rms_norm_eps}))
   self:add('k_norm', nn.RMSNorm(HD, {eps = cfg.rms_norm_eps}))
   return self
end

-- the per-head RMSNorm of x [B, T, heads*HD]: x seen as [B, T, heads, HD]
local function head_norm(norm, x, heads, HD)
   local B, T_ = x.shape[1], x.shape[2]
   return ops.reshape(norm(ops.reshape(x, {B, T_, heads, HD})), {B, T_, heads * HD})
end

-- x [B, T, C]; ctx as llama.Attention's
function Attention:forward(x, ctx)
   local cache, positions = nn.forward_context(ctx)
   local NH, NKV, HD = self.n_head, self.n_kv_head, self.head_dim
   local q = head_norm(self.q_norm, self.q_proj(x), NH, HD)
   local k = head_norm(self.k_norm, self.k_proj(x), NKV, HD)
   local v = self.v_proj(x)
   local T_, off = x.shape[2], cache and cache.pos or 0
   local cos, sin = self.rope:tables(off + T_, x.device)
   if off > 0 then cos, sin = cos:narrow_rows(off, T_), sin:narrow_rows(off, T_) end
   q = ops.rope(q, cos, sin, NH, positions)
   k = ops.rope(k, cos, sin, NKV, positions)
   local y = ops.attention(q, k, v, {n_head = NH, n_kv_head = NKV, window = self.window, cache = cache,
                                     layer = self, positions = positions})
   return self.o_proj(y)
end
function Attention:activation_elems(N, B, T_)
   -- Llama's, plus the normed q and k
   return llama.Attention.activation_elems(self, N, B, T_) + N * (self.n_head + self.n_kv_head) * self.head_dim
end

local Qwen3 = nn.class('Qwen3', llama.Llama)
M.Qwen3 = Qwen3

-- cfg: Qwen2's fields plus head_dim and attention_bias (transformers' names);
-- from_4x as in Qwen2.new
function Qwen3.new(cfg, from_4x)
   local c = llama.config(cfg, M.defaults, 'qwen3')
   c.windows = qwen2.layer_windows(c, 'qwen3', from_4x)
   return llama.build(nn.Module.instance(Qwen3), c, nil,
                      function(cf, rope, i) return Attention(cf, rope, cf.windows[i]) end)
end

-- the config.json fields read (transformers' Qwen3Config)
M.hf_fields = {'attention_bias'}
for _, k in ipairs(qwen2.hf_fields) do M.hf_fields[#M.hf_fields + 1] = k end
M.config_keys = llama.extend_keys(qwen2.config_keys, {used = {'attention_bias'}})

local function is_set(v) return v ~= nil and v ~= json.null end

-- a model from a config.json table (4.x or 5.x layout)
function M.from_hf(hf)
   local model = Qwen3(llama.pick(hf, M.hf_fields, M.defaults), not is_set(hf.layer_types))
   model.hf_config = hf
   return model
end

-- the config.json of an export (see qwen2.to_hf_config)
function M.to_hf_config(model, layout)
   return qwen2.hf_config(model, 'Qwen3ForCausalLM', 'qwen3', layout, {'attention_bias'})
end

M.family = {
   architectures = {'Qwen3ForCausalLM'},
   model_types = {'qwen3'},
   from_hf = M.from_hf,
   to_hf_config = M.to_hf_config,
   config_keys = M.config_keys,
   unknown_keys = function(model) return model.config.rope_unknown end,
}
Qwen3.family = M.family

return M
