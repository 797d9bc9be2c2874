-- Mistral: Llama (models/llama.lua) with sliding-window attention: query t
-- attends to keys t - sliding_window + 1 .. t. Parameter names are Hugging
-- Face MistralForCausalLM's (the same as Llama's). Single-device code.
local nn = require 'fsdp.nn'
local llama = require 'models.llama'
local json = require 'fsdp.json'

local M = {}

-- transformers' MistralConfig defaults for the fields used here
M.defaults = {}
for k, v in pairs(llama.defaults) do M.defaults[k] = v end
M.defaults.intermediate_size = 14336
M.defaults.num_key_value_heads = 8
M.defaults.max_position_embeddings = 4096 * 32
M.defaults.sliding_window = 4096

-- Published shape (`--size mistral-7b`): mistralai/Mistral-7B-v0.1's
-- config.json, built through from_hf (7.24B parameters)
M.published = {
   ['mistral-7b'] = {architectures = {'MistralForCausalLM'}, model_type = 'mistral', vocab_size = 32000,
                     hidden_size = 4096, intermediate_size = 14336, num_hidden_layers = 32, num_attention_heads = 32,
                     num_key_value_heads = 8, max_position_embeddings = 32768, rms_norm_eps = 1e-5,
                     rope_theta = 10000.0, sliding_window = 4096, tie_word_embeddings = false, hidden_act = 'silu',
                     bos_token_id = 1, eos_token_id = 2},
}

local Mistral = nn.class('Mistral', llama.Llama)
M.Mistral = Mistral

-- cfg: Llama's fields plus sliding_window (0: full causal attention)
function Mistral.new(cfg)
   local c = llama.config(cfg, M.defaults, 'mistral')
   local w = c.sliding_window
   if w ~= nil and (type(w) ~= 'number' or w < 0 or w ~= math.floor(w)) then
      error('mistral: sliding_window must be a non-negative integer, got ' .. tostring(w), 0)
   end
   return llama.build(nn.Module.instance(Mistral), c)
end

M.hf_fields = {'sliding_window'}
for _, k in ipairs(llama.hf_fields) do M.hf_fields[#M.hf_fields + 1] = k end
M.config_keys = llama.extend_keys(llama.config_keys, {used = {'sliding_window'}})

-- a model from a config.json table (transformers' MistralConfig fields, 4.x
-- or 5.x layout); a null sliding_window means full attention
function M.from_hf(hf)
   local cfg = llama.pick(hf, M.hf_fields, M.defaults)
   cfg.sliding_window = cfg.sliding_window or 0
   local model = Mistral(cfg)
   model.hf_config = hf
   return model
end

-- the config.json of an export (see llama.hf_config); sliding_window 0
-- (full attention) is written as null
function M.to_hf_config(model, layout)
   local fields = {'sliding_window'}
   for _, k in ipairs(llama.scratch_fields) do fields[#fields + 1] = k end
   local out = llama.hf_config(model, 'MistralForCausalLM', 'mistral', layout, fields)
   if out.sliding_window == 0 then out.sliding_window = json.null end
   return out
end

M.family = {
   architectures = {'MistralForCausalLM'},
   model_types = {'mistral'},
   from_hf = M.from_hf,
   to_hf_config = M.to_hf_config,
   config_keys = M.config_keys,
   lora_targets = {'q_proj', 'v_proj'}, -- fsdp.lora's default targets (PEFT's for this family)
   unknown_keys = function(model) return model.config.rope_unknown end,
}
Mistral.family = M.family

return M
