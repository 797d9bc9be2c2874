-- Qwen2 and Qwen2.5 (Hugging Face Qwen2ForCausalLM): Llama (models/llama.lua)
-- with biases on the q, k and v projections (none on o_proj) and sliding
-- windows on some layers. Parameter names are transformers' Qwen2's (the
-- same as Llama's). Single-device code.
local nn = require 'fsdp.nn'
local llama = require 'models.llama'
local json = require 'fsdp.json'

local M = {}

-- transformers' Qwen2Config defaults for the fields used here
M.defaults = {}
for k, v in pairs(llama.defaults) do M.defaults[k] = v end
M.defaults.vocab_size = 151936
M.defaults.intermediate_size = 22016
M.defaults.max_position_embeddings = 32768
M.defaults.use_sliding_window = false
M.defaults.sliding_window = 4096
M.defaults.max_window_layers = 28
M.defaults.attention_bias, M.defaults.mlp_bias = nil, nil -- Qwen2 has no such keys

-- Qwen2's attention: Llama's, with biases on q_proj, k_proj and v_proj
-- only, and a sliding window of its own (0: full causal attention)
local Attention = nn.class('Qwen2Attention', llama.Attention)
M.Attention = Attention
function Attention.new(cfg, rope, window)
   local self = nn.Module.instance(Attention)
   local C, NH, NKV, HD = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
   self.n_head, self.n_kv_head, self.head_dim = NH, NKV, HD
   self.rope, self.window = rope, window
   self:add('q_proj', nn.Linear(C, NH * HD, {bias = true}))
   self:add('k_proj', nn.Linear(C, NKV * HD, {bias = true}))
   self:add('v_proj', nn.Linear(C, NKV * HD, {bias = true}))
   self:add('o_proj', nn.Linear(NH * HD, C, {bias = false, std = cfg.initializer_range}))
   return self
end
-- (forward: llama.Attention's)

local function is_set(v) return v ~= nil and v ~= json.null end

-- The sliding window of every layer (0: none) of configuration c, as
-- transformers 5 computes them: the layers layer_types calls
-- 'sliding_attention', else those from max_window_layers on, get
-- sliding_window, and only when use_sliding_window is true. A config
-- without layer_types (`from_4x`: written by transformers 4.x) is read so
-- only where 4.x's eager and SDPA attention agree: they window every layer
-- whenever sliding_window is set, so a window shorter than
-- max_position_embeddings (one that can bind) on a layer transformers 5
-- leaves whole is an error naming the keys. `who` prefixes errors.
function M.layer_windows(c, who, from_4x)
   local function need(ok, fmt, ...) if not ok then error(who .. ': ' .. string.format(fmt, ...), 0) end end
   local n, W, types = c.num_hidden_layers, c.sliding_window, c.layer_types
   need(type(c.use_sliding_window) == 'boolean', 'use_sliding_window must be true or false, got %s',
        tostring(c.use_sliding_window))
   need(W == nil or (type(W) == 'number' and W >= 1 and W == math.floor(W)),
        'sliding_window must be a positive integer or null, got %s', tostring(W))
   local mwl = c.max_window_layers
   need(type(mwl) == 'number' and mwl >= 0 and mwl == math.floor(mwl),
        'max_window_layers must be a non-negative integer, got %s', tostring(mwl))
   local w = c.use_sliding_window and W or nil
   if types ~= nil then
      need(type(types) == 'table' and #types == n, 'layer_types must list the %d layers, got %s', n,
           type(types) == 'table' and json.encode(types) or tostring(types))
   end
   local out = {}
   for i = 1, n do
      local kind = types and types[i] or ((w and i - 1 >= mwl) and 'sliding_attention' or 'full_attention')
      need(kind == 'full_attention' or kind == 'sliding_attention',
           "layer_types[%d] = %s is not supported ('full_attention', 'sliding_attention')", i - 1, tostring(kind))
      need(kind == 'full_attention' or w ~= nil, "layer_types[%d] is 'sliding_attention' but %s", i - 1,
           W and 'use_sliding_window is false' or 'sliding_window is null')
      out[i] = kind == 'sliding_attention' and w or 0
      need(not from_4x or types ~= nil or W == nil or W >= c.max_position_embeddings or out[i] == W,
           'sliding_window %d (shorter than max_position_embeddings %d) with use_sliding_window %s and ' ..
           'max_window_layers %d: transformers 4.x windows layer %d, transformers 5 does not; say which layers ' ..
           'are windowed with layer_types', W or 0, c.max_position_embeddings, tostring(c.use_sliding_window), mwl,
           i - 1)
   end
   return out
end

local Qwen2 = nn.class('Qwen2', llama.Llama)
M.Qwen2 = Qwen2

-- cfg: Llama's fields plus use_sliding_window, sliding_window,
-- max_window_layers and layer_types (transformers' names)
-- (from_4x: a config.json without layer_types, see M.layer_windows)
function Qwen2.new(cfg, from_4x)
   local c = llama.config(cfg, M.defaults, 'qwen2')
   c.windows = M.layer_windows(c, 'qwen2', from_4x)
   return llama.build(nn.Module.instance(Qwen2), c, nil,
                      function(cf, rope, i) return Attention(cf, rope, cf.windows[i]) end)
end

-- the config.json fields read (transformers' Qwen2Config)
M.hf_fields = {'use_sliding_window', 'sliding_window', 'max_window_layers', 'layer_types'}
for _, k in ipairs(llama.hf_fields) do
   if k ~= 'attention_bias' and k ~= 'mlp_bias' then M.hf_fields[#M.hf_fields + 1] = k end
end
M.config_keys = {used = M.hf_fields, inert = {'use_cache', 'bos_token_id', 'eos_token_id'},
                 dropout = {'attention_dropout'}}

-- a model from a config.json table (4.x or 5.x layout)
function M.from_hf(hf)
   local model = Qwen2(llama.pick(hf, M.hf_fields, M.defaults), not is_set(hf.layer_types))
   model.hf_config = hf
   return model
end

-- the config.json of an export (see llama.hf_config) of a Qwen-like model
-- (`more`: fields a model from scratch writes besides Qwen2's); a model
-- from scratch writes its layer_types, as transformers 5 does
function M.hf_config(model, arch, model_type, layout, more)
   local fields = {'use_sliding_window', 'sliding_window', 'max_window_layers'}
   for _, k in ipairs(llama.scratch_fields) do
      if k ~= 'attention_bias' and k ~= 'mlp_bias' then fields[#fields + 1] = k end
   end
   for _, k in ipairs(more or {}) do fields[#fields + 1] = k end
   local out = llama.hf_config(model, arch, model_type, layout, fields)
   if not model.hf_config then
      if not model.config.use_sliding_window then out.sliding_window = json.null end
      local types = {}
      for i, w in ipairs(model.config.windows) do types[i] = w > 0 and 'sliding_attention' or 'full_attention' end
      out.layer_types = json.array(types)
   end
   return out
end

function M.to_hf_config(model, layout) return M.hf_config(model, 'Qwen2ForCausalLM', 'qwen2', layout) end

-- the family in the model registry (lua/models/init.lua)
M.family = {
   architectures = {'Qwen2ForCausalLM'},
   model_types = {'qwen2'},
   from_hf = M.from_hf,
   to_hf_config = M.to_hf_config,
   config_keys = M.config_keys,
   unknown_keys = function(model) return model.config.rope_unknown end,
}
Qwen2.family = M.family

return M
