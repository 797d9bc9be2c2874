-- Llama (1, 2, 3, 3.1) and CodeLlama: pre-RMSNorm decoder blocks with
-- rotary grouped-query attention and a SwiGLU MLP. Parameter names are
-- Hugging Face LlamaForCausalLM's, so a checkpoint maps one to one; the
-- configuration uses config.json's field names. Single-device code: the
-- sharding is applied from outside (fsdp.shard).
--
--   local llama = require 'models.llama'
--   local model = llama.Llama {preset = '7B'}            -- from scratch
--   local model = llama.from_hf(hf_config_table)          -- a config.json
--
-- Mistral (models/mistral.lua) and Mixtral (models/mixtral.lua) are built
-- on this file.
local ffi = require 'ffi'
local nn = require 'fsdp.nn'
local ops = require 'fsdp.ops'
local T = require 'fsdp.tensor'
local json = require 'fsdp.json'

local M = {}

-- Hugging Face LlamaConfig's defaults for the fields used here
M.defaults = {
   vocab_size = 32000, hidden_size = 4096, intermediate_size = 11008, num_hidden_layers = 32,
   num_attention_heads = 32, num_key_value_heads = nil, head_dim = nil, max_position_embeddings = 2048,
   rms_norm_eps = 1e-6, rope_theta = 10000.0, rope_scaling = nil, tie_word_embeddings = false,
   attention_bias = false, mlp_bias = false, hidden_act = 'silu', pad_token_id = nil,
   sliding_window = nil, initializer_range = 0.02,
}

-- From-scratch shapes (recipes' --size). Layers, width and heads are the
-- size table the project was asked for. Every size uses grouped-query
-- attention (head_dim 64 or 128; 4 or 8 kv heads as the head count divides)
-- and a SwiGLU FFN sized the Llama way: below 7B Llama 2's 8/3 x width
-- rounded up to a multiple of 256; from 7B on Llama 3's 8/3 x width x 1.3
-- rounded to a multiple of 1024 (the 1.3 spends what GQA saves; 13B takes
-- one 1024 step less to stay at its name). Vocabulary 32000 (Llama 2's
-- tokenizer), RoPE theta 10000, context 4096, untied head. Parameters:
--   350M 0.34B  1B 1.21B  3B 3.02B  7B 7.24B  13B 13.5B  30B 34.4B  70B 69.0B
M.presets = {
   ['350M'] = {num_hidden_layers = 24, hidden_size = 1024, num_attention_heads = 16, num_key_value_heads = 4,
               intermediate_size = 2816},
   ['1B']   = {num_hidden_layers = 24, hidden_size = 2048, num_attention_heads = 16, num_key_value_heads = 4,
               intermediate_size = 5632},
   ['3B']   = {num_hidden_layers = 28, hidden_size = 3072, num_attention_heads = 24, num_key_value_heads = 8,
               intermediate_size = 8192},
   ['7B']   = {num_hidden_layers = 32, hidden_size = 4096, num_attention_heads = 32, num_key_value_heads = 8,
               intermediate_size = 14336},
   ['13B']  = {num_hidden_layers = 40, hidden_size = 5120, num_attention_heads = 40, num_key_value_heads = 8,
               intermediate_size = 17408},
   ['30B']  = {num_hidden_layers = 60, hidden_size = 6656, num_attention_heads = 52, num_key_value_heads = 4,
               intermediate_size = 23552},
   ['70B']  = {num_hidden_layers = 80, hidden_size = 8192, num_attention_heads = 64, num_key_value_heads = 8,
               intermediate_size = 28672},
}
-- Published shapes (`--size llama2-7b`): the config.json fields of the
-- released checkpoints (meta-llama/Llama-2-*-hf, Meta-Llama-3-*), built by
-- this family through from_hf. Parameters: llama2-7b 6.74B, llama2-13b
-- 13.02B, llama2-70b 68.98B, llama3-8b 8.03B, llama3-70b 70.55B.
M.published = {
   ['llama2-7b'] = {architectures = {'LlamaForCausalLM'}, model_type = 'llama', vocab_size = 32000,
                    hidden_size = 4096, intermediate_size = 11008, num_hidden_layers = 32, num_attention_heads = 32,
                    num_key_value_heads = 32, max_position_embeddings = 4096, rms_norm_eps = 1e-5,
                    rope_theta = 10000.0, tie_word_embeddings = false, hidden_act = 'silu', bos_token_id = 1,
                    eos_token_id = 2},
   ['llama2-13b'] = {architectures = {'LlamaForCausalLM'}, model_type = 'llama', vocab_size = 32000,
                     hidden_size = 5120, intermediate_size = 13824, num_hidden_layers = 40, num_attention_heads = 40,
                     num_key_value_heads = 40, max_position_embeddings = 4096, rms_norm_eps = 1e-5,
                     rope_theta = 10000.0, tie_word_embeddings = false, hidden_act = 'silu', bos_token_id = 1,
                     eos_token_id = 2},
   ['llama2-70b'] = {architectures = {'LlamaForCausalLM'}, model_type = 'llama', vocab_size = 32000,
                     hidden_size = 8192, intermediate_size = 28672, num_hidden_layers = 80, num_attention_heads = 64,
                     num_key_value_heads = 8, max_position_embeddings = 4096, rms_norm_eps = 1e-5,
                     rope_theta = 10000.0, tie_word_embeddings = false, hidden_act = 'silu', bos_token_id = 1,
                     eos_token_id = 2},
   ['llama3-8b'] = {architectures = {'LlamaForCausalLM'}, model_type = 'llama', vocab_size = 128256,
                    hidden_size = 4096, intermediate_size = 14336, num_hidden_layers = 32, num_attention_heads = 32,
                    num_key_value_heads = 8, max_position_embeddings = 8192, rms_norm_eps = 1e-5,
                    rope_theta = 500000.0, tie_word_embeddings = false, hidden_act = 'silu', bos_token_id = 128000,
                    eos_token_id = 128001},
   ['llama3-70b'] = {architectures = {'LlamaForCausalLM'}, model_type = 'llama', vocab_size = 128256,
                     hidden_size = 8192, intermediate_size = 28672, num_hidden_layers = 80, num_attention_heads = 64,
                     num_key_value_heads = 8, max_position_embeddings = 8192, rms_norm_eps = 1e-5,
                     rope_theta = 500000.0, tie_word_embeddings = false, hidden_act = 'silu', bos_token_id = 128000,
                     eos_token_id = 128001},
}
local preset_base = {vocab_size = 32000, max_position_embeddings = 4096, rms_norm_eps = 1e-5, rope_theta = 10000.0,
                     tie_word_embeddings = false}

local function preset_names()
   local names = {}
   for k in pairs(M.presets) do names[#names + 1] = k end
   table.sort(names, function(a, b) return tonumber(a:match('[%d.]+')) * (a:find('B') and 1000 or 1)
                                           < tonumber(b:match('[%d.]+')) * (b:find('B') and 1000 or 1) end)
   return table.concat(names, ', ')
end

-- a full configuration: defaults, then the preset (cfg.preset or cfg.size),
-- then every field of cfg; checked
function M.config(cfg, defaults, who)
   who = who or 'llama'
   cfg = cfg or {}
   local out = {}
   for k, v in pairs(defaults or M.defaults) do out[k] = v end
   local name = cfg.preset or cfg.size
   if name then
      local p = M.presets[name] or M.presets[tostring(name):upper()]
      if not p then error(string.format("%s: unknown size '%s' (%s)", who, tostring(name), preset_names()), 0) end
      for k, v in pairs(preset_base) do out[k] = v end
      for k, v in pairs(p) do out[k] = v end
   end
   for k, v in pairs(cfg) do out[k] = v end
   out.preset, out.size = nil, nil
   out.num_key_value_heads = out.num_key_value_heads or out.num_attention_heads
   out.head_dim = out.head_dim or out.hidden_size / out.num_attention_heads
   local function need(ok, fmt, ...) if not ok then error(who .. ': ' .. string.format(fmt, ...), 0) end end
   for _, k in ipairs({'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
                       'num_key_value_heads', 'head_dim'}) do
      local v = out[k]
      need(type(v) == 'number' and v >= 1 and v == math.floor(v), '%s must be a positive integer, got %s', k, tostring(v))
   end
   need(out.num_attention_heads % out.num_key_value_heads == 0,
        'num_attention_heads %d is not a multiple of num_key_value_heads %d', out.num_attention_heads,
        out.num_key_value_heads)
   need(out.head_dim % 2 == 0, 'head_dim %d must be even for rotary embeddings', out.head_dim)
   need(out.hidden_act == 'silu', "hidden_act '%s' is not supported (silu)", tostring(out.hidden_act))
   return out
end

---------------------------------------------------------------------------
-- rotary embedding tables (transformers' LlamaRotaryEmbedding)

local f32buf = ffi.new('float[1]')
-- rounds a Lua number to the nearest f32, as a torch float32 op would
local function f32(x)
   f32buf[0] = x
   return f32buf[0]
end

-- inv_freq[i], i < head_dim/2, computed the way transformers computes it:
-- in float32 (exponent, power, reciprocal each rounded to f32), then the
-- rope_scaling of the config ('linear' divides by factor; 'llama3' divides
-- the long wavelengths by factor and blends the middle band smoothly)
function M.inv_freq(cfg)
   local dim = cfg.head_dim
   local base = cfg.rope_theta or 10000.0
   local inv = {}
   for i = 0, dim / 2 - 1 do
      local e = f32(f32(2 * i) / f32(dim))
      inv[i + 1] = f32(1 / f32(f32(base) ^ e))
   end
   local rs = cfg.rope_scaling
   if rs == nil then return inv end
   local kind = rs.rope_type or rs.type
   if kind == 'default' then return inv end
   if kind == 'linear' then
      for i = 1, #inv do inv[i] = f32(inv[i] / rs.factor) end
      return inv
   end
   if kind == 'llama3' then
      local factor, lo, hi = rs.factor, rs.low_freq_factor, rs.high_freq_factor
      local old = rs.original_max_position_embeddings
      local lo_wavelen, hi_wavelen = old / lo, old / hi
      for i = 1, #inv do
         local f = inv[i]
         local wavelen = f32(f32(1 / f) * f32(2 * math.pi))
         local g = wavelen > lo_wavelen and f32(f / factor) or f
         if not (wavelen < hi_wavelen) and not (wavelen > lo_wavelen) then
            local smooth = f32(f32(f32(f32(1 / wavelen) * old) - lo) / (hi - lo))
            g = f32(f32(f32(f32(1 - smooth) * g) / factor) + f32(smooth * g))
         end
         inv[i] = g
      end
      return inv
   end
   error(string.format("llama: rope_scaling type '%s' is not supported (linear, llama3)", tostring(kind)), 0)
end

local Rope = {}
Rope.__index = Rope
M.Rope = Rope

function M.rope(cfg)
   return setmetatable({inv = M.inv_freq(cfg), half = cfg.head_dim / 2, n = 0}, Rope)
end

-- cos, sin [n, head_dim/2] with n >= T_: rows are positions 0 .. n-1; the
-- angle pos * inv_freq is rounded to f32 before cos/sin, as transformers does.
-- dev: where they are wanted (-1, the host, by default; copies are cached)
function Rope:tables(T_, dev)
   if dev and dev >= 0 then
      local host_cos, host_sin = self:tables(T_)
      local d = self.on_device
      if not d or d.dev ~= dev or d.cos.shape[1] ~= host_cos.shape[1] then
         if d then d.cos:free(); d.sin:free() end
         d = {dev = dev, cos = host_cos:to_device(dev), sin = host_sin:to_device(dev)}
         self.on_device = d
      end
      return d.cos, d.sin
   end
   if T_ > self.n then
      if self.cos then self.cos:free(); self.sin:free() end
      local half = self.half
      self.cos, self.sin = T.empty({T_, half}, 'f32'), T.empty({T_, half}, 'f32')
      local c, s = self.cos:ptr(), self.sin:ptr()
      for pos = 0, T_ - 1 do
         for i = 0, half - 1 do
            local angle = f32(pos * self.inv[i + 1])
            c[pos * half + i] = math.cos(angle)
            s[pos * half + i] = math.sin(angle)
         end
      end
      self.n = T_
   end
   return self.cos, self.sin
end

---------------------------------------------------------------------------
-- modules

-- rotary grouped-query attention: q_proj / k_proj / v_proj, RoPE on q and
-- k, causal attention (a sliding window for Mistral), o_proj
local Attention = nn.class('LlamaAttention')
M.Attention = Attention
function Attention.new(cfg, rope)
   local self = nn.Module.instance(Attention)
   local C, NH, NKV, HD = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
   self.n_head, self.n_kv_head, self.head_dim = NH, NKV, HD
   self.rope, self.window = rope, cfg.sliding_window or 0
   local bias = cfg.attention_bias == true
   self:add('q_proj', nn.Linear(C, NH * HD, {bias = bias}))
   self:add('k_proj', nn.Linear(C, NKV * HD, {bias = bias}))
   self:add('v_proj', nn.Linear(C, NKV * HD, {bias = bias}))
   self:add('o_proj', nn.Linear(NH * HD, C, {bias = bias, std = cfg.initializer_range}))
   return self
end
-- x [B, T, C]; ctx: the model's forward context (nn.forward_context: a KV
-- cache while decoding, x then holding the positions from cache.pos on;
-- packed positions)
function Attention:forward(x, ctx)
   local cache, positions = nn.forward_context(ctx)
   local q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
   -- the rotation of positions off .. off+T-1 (packed: of each token's own position)
   local T_, off = x.shape[2], cache and cache.pos or 0
   local cos, sin = self.rope:tables(off + T_, x.device)
   if off > 0 then cos, sin = cos:narrow_rows(off, T_), sin:narrow_rows(off, T_) end
   q = ops.rope(q, cos, sin, self.n_head, positions)
   k = ops.rope(k, cos, sin, self.n_kv_head, positions)
   local y = ops.attention(q, k, v, {n_head = self.n_head, n_kv_head = self.n_kv_head, window = self.window,
                                     cache = cache, layer = self, positions = positions})
   return self.o_proj(y)
end
function Attention:activation_elems(N, B, T_)
   return nn.attention_activation_elems(N, B, T_, self.n_head, self.head_dim)
      + N * (self.n_head + self.n_kv_head) * self.head_dim -- the rotated q and k
end

-- the SwiGLU feed-forward: down_proj(silu(gate_proj(x)) * up_proj(x))
local MLP = nn.class('LlamaMLP')
M.MLP = MLP
function MLP.new(cfg)
   local self = nn.Module.instance(MLP)
   local C, H, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias == true
   self.hidden = H
   self:add('gate_proj', nn.Linear(C, H, {bias = bias}))
   self:add('up_proj', nn.Linear(C, H, {bias = bias}))
   self:add('down_proj', nn.Linear(H, C, {bias = bias, std = cfg.initializer_range}))
   return self
end
function MLP:forward(x) return self.down_proj(ops.swiglu(self.gate_proj(x), self.up_proj(x))) end
function MLP:activation_elems(N) return N * self.hidden end -- the SwiGLU's output
function M.mlp(cfg) return MLP(cfg) end

-- pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(x)); the
-- feed-forward is given (a SwiGLU MLP, or Mixtral's experts) with its name
local DecoderLayer = nn.class('LlamaDecoderLayer')
M.DecoderLayer = DecoderLayer
function DecoderLayer.new(cfg, rope, mlp, mlp_name)
   local self = nn.Module.instance(DecoderLayer)
   local C = cfg.hidden_size
   self.mlp_name = mlp_name or 'mlp'
   self.n_embd = C
   self:add('input_layernorm', nn.RMSNorm(C, {eps = cfg.rms_norm_eps}))
   self:add('self_attn', Attention(cfg, rope))
   self:add('post_attention_layernorm', nn.RMSNorm(C, {eps = cfg.rms_norm_eps}))
   self:add(self.mlp_name, mlp or MLP(cfg))
   return self
end
function DecoderLayer:forward(x, ctx)
   x = ops.add(x, self.self_attn(self.input_layernorm(x), ctx))
   return ops.add(x, self[self.mlp_name](self.post_attention_layernorm(x)))
end
function DecoderLayer:activation_elems(N) return 2 * N * self.n_embd end -- the two residual sums

-- torch's padding_idx: negative counts from the end of the vocabulary
function M.padding_idx(pad, V)
   if not pad then return nil end
   if pad < 0 then pad = V + pad end
   return pad
end

local Body = nn.class('LlamaModel')

local Llama = nn.class('Llama')
M.Llama = Llama

-- builds the model into `self` (subclasses call it with their own instance);
-- make_mlp(cfg, i) gives layer i's feed-forward and its name
function M.build(self, cfg, make_mlp)
   self.config = cfg
   local C, V = cfg.hidden_size, cfg.vocab_size
   self.rope = M.rope(cfg)
   local body = self:add('model', nn.Module.instance(Body))
   body:add('embed_tokens', nn.PaddedEmbedding(V, C, M.padding_idx(cfg.pad_token_id, V), {std = cfg.initializer_range}))
   local layers = body:add('layers', nn.ModuleList())
   for i = 1, cfg.num_hidden_layers do
      local mlp, name = nil, 'mlp'
      if make_mlp then mlp, name = make_mlp(cfg, i) end
      layers:append(DecoderLayer(cfg, self.rope, mlp, name))
   end
   body:add('norm', nn.RMSNorm(C, {eps = cfg.rms_norm_eps}))
   if not cfg.tie_word_embeddings then
      self:add('lm_head', nn.Linear(C, V, {bias = false, std = cfg.initializer_range}))
   end
   return self
end

function Llama.new(cfg)
   return M.build(nn.Module.instance(Llama), M.config(cfg))
end

function Llama:units()
   local out, layers = {}, self.model.layers
   for i = 1, layers.n do out[i] = layers[i] end
   return out
end

local function check_input(self, idx)
   if not (idx and idx.dtype == 'i32' and #idx.shape == 2) then
      error(string.format('%s: input must be i32 token ids [batch, time], got %s %s', self.__name,
                          idx and idx.dtype or type(idx), idx and idx.shape and T.shape_str(idx.shape) or ''), 0)
   end
end
M.check_input = check_input

-- idx: i32 [B, T] token ids -> logits [B, T, vocab]. ctx (optional): a KV
-- cache when decoding (idx holds the positions from cache.pos on), or
-- {positions = i32 [B, T]} for packed samples (see nn.forward_context)
function Llama:forward(idx, ctx)
   check_input(self, idx)
   local cache = nn.forward_context(ctx)
   if cache then cache:check(idx.shape[1], idx.shape[2]) end
   local body = self.model
   local x = body.embed_tokens(idx)
   for i = 1, body.layers.n do x = body.layers[i](x, ctx) end
   x = body.norm(x)
   if cache then cache:advance(idx.shape[2]) end
   if self.lm_head then return self.lm_head(x) end
   return ops.linear(x, body.embed_tokens.weight) -- tied head
end

-- cross-entropy over targets that are not -100 (targets[b, t] is the token
-- after idx[b, t]): their mean, or their sum over ctx.denominator when given
function Llama:loss(idx, targets, ctx)
   return ops.cross_entropy(self(idx, ctx), targets, -100, ctx and ctx.denominator)
end

---------------------------------------------------------------------------
-- Hugging Face config.json

-- the fields of a LlamaConfig-like table this model reads
M.hf_fields = {'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
               'num_key_value_heads', 'head_dim', 'max_position_embeddings', 'rms_norm_eps', 'rope_theta',
               'rope_scaling', 'tie_word_embeddings', 'attention_bias', 'mlp_bias', 'hidden_act', 'pad_token_id',
               'initializer_range'}

-- picks `fields` out of an HF config table over `defaults`: an absent field
-- takes the default, a JSON null is Python's None (nil here)
function M.pick(hf, fields, defaults)
   local null = json.null
   local cfg = {}
   for k, v in pairs(defaults) do cfg[k] = v end
   for _, k in ipairs(fields) do
      if hf[k] == null then cfg[k] = nil
      elseif hf[k] ~= nil then cfg[k] = hf[k] end
   end
   return cfg
end

-- checks a rope_scaling table (nil, linear or llama3)
function M.check_rope_scaling(rs, who)
   if rs == nil then return end
   local kind = rs.rope_type or rs.type
   if kind == 'default' then return end
   local function need(k)
      if type(rs[k]) ~= 'number' then
         error(string.format("%s: rope_scaling '%s' needs a number '%s'", who, tostring(kind), k), 0)
      end
   end
   if kind == 'linear' then need('factor')
   elseif kind == 'llama3' then
      for _, k in ipairs({'factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'}) do need(k) end
   else
      error(string.format("%s: rope_scaling type '%s' is not supported (linear, llama3)", who, tostring(kind)), 0)
   end
end

-- a model from a config.json table (transformers' LlamaConfig fields)
function M.from_hf(hf)
   local cfg = M.pick(hf, M.hf_fields, M.defaults)
   M.check_rope_scaling(cfg.rope_scaling, 'llama')
   local model = Llama(cfg)
   model.hf_config = hf
   return model
end

-- the config.json of an export: the one the model was read from (its keys
-- and layout kept), else the model's own configuration (a model from scratch)
function M.hf_config(model, arch, model_type)
   local out = {}
   if model.hf_config then
      for k, v in pairs(model.hf_config) do out[k] = v end
   else
      for k, v in pairs(model.config) do out[k] = v end
      out.model_type = model_type
   end
   out.architectures = json.array({arch})
   return out
end

-- the family in the model registry (lua/models/init.lua)
M.family = {
   architectures = {'LlamaForCausalLM'},
   model_types = {'llama'},
   from_hf = M.from_hf,
   to_hf_config = function(model) return M.hf_config(model, 'LlamaForCausalLM', 'llama') end,
}
Llama.family = M.family

return M
