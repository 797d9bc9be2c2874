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

-- Hugging Face LlamaConfig's defaults for the fields used here. RoPE
-- settings come as transformers 4.x writes them (rope_theta, rope_scaling)
-- or as 5.x does (rope_parameters: rope_type, rope_theta, factor, ...);
-- config() turns either into one table, cfg.rope.
M.defaults = {
   vocab_size = 32000, hidden_size = 4096, intermediate_size = 11008, num_hidden_layers = 32,
   num_attention_heads = 32, num_key_value_heads = nil, head_dim = nil, max_position_embeddings = 2048,
   rms_norm_eps = 1e-6, rope_theta = 10000.0, rope_scaling = nil, rope_parameters = nil, tie_word_embeddings = false,
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
-- then every field of cfg; checked. cfg.rope is the RoPE table
-- (M.rope_parameters) made from rope_parameters, or rope_theta and
-- rope_scaling; cfg.rope_unknown the keys in it that nothing reads.
-- act: the activation key and the values allowed (default {key =
-- 'hidden_act', allowed = {silu = true}}).
function M.config(cfg, defaults, who, act)
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
                       'num_key_value_heads', 'head_dim', 'max_position_embeddings'}) do
      local v = out[k]
      need(type(v) == 'number' and v >= 1 and v == math.floor(v), '%s must be a positive integer, got %s', k, tostring(v))
   end
   need(out.num_attention_heads % out.num_key_value_heads == 0,
        'num_attention_heads %d is not a multiple of num_key_value_heads %d', out.num_attention_heads,
        out.num_key_value_heads)
   need(out.head_dim % 2 == 0, 'head_dim %d must be even for rotary embeddings', out.head_dim)
   act = act or {key = 'hidden_act', allowed = {silu = true}}
   if not act.allowed[out[act.key]] then
      local names = {}
      for k in pairs(act.allowed) do names[#names + 1] = k end
      table.sort(names)
      need(false, "%s '%s' is not supported (%s)", act.key, tostring(out[act.key]), table.concat(names, ', '))
   end
   need(type(out.rms_norm_eps) == 'number' and out.rms_norm_eps > 0, 'rms_norm_eps must be a positive number, got %s',
        tostring(out.rms_norm_eps))
   out.rope, out.rope_unknown = M.rope_parameters(out, who)
   return out
end

---------------------------------------------------------------------------
-- rotary embeddings (transformers' LlamaRotaryEmbedding and the rope init
-- functions of its modeling_rope_utils.py)

-- the rope_types read, and per type the parameters transformers reads for
-- it (true: required)
M.rope_types = {'default', 'linear', 'dynamic', 'yarn', 'llama3', 'longrope'}
local ROPE_KEYS = {
   default = {},
   linear = {factor = true},
   dynamic = {factor = true},
   yarn = {factor = true, original_max_position_embeddings = false, attention_factor = false, beta_fast = false,
           beta_slow = false, mscale = false, mscale_all_dim = false, truncate = false},
   llama3 = {factor = true, low_freq_factor = true, high_freq_factor = true, original_max_position_embeddings = false},
   longrope = {short_factor = true, long_factor = true, factor = false, attention_factor = false,
               original_max_position_embeddings = false},
}
local ROPE_COMMON = {rope_type = true, type = true, rope_theta = true, partial_rotary_factor = true}

local function is_set(v) return v ~= nil and v ~= json.null end

-- The RoPE settings of a configuration c (a config.json table or a model
-- configuration) in transformers 5's form: {rope_type, rope_theta, and the
-- parameters of that type}, read from c.rope_parameters (5.x) or from
-- c.rope_theta and c.rope_scaling (4.x), the way transformers 5
-- standardizes them: rope_theta inside the table wins over the top-level
-- one, 'type' is the old name of 'rope_type', original_max_position_embeddings
-- defaults to max_position_embeddings and a top-level one wins (Phi-3's
-- convention). Errors name the key; returns the table and the keys in it
-- that no rope_type reads (the caller reports them).
function M.rope_parameters(c, who)
   who = who or 'llama'
   local function fail(fmt, ...) error(who .. ': ' .. string.format(fmt, ...), 0) end
   local rp_in, rs_in = c.rope_parameters, c.rope_scaling
   if not is_set(rp_in) then rp_in = nil end
   if not is_set(rs_in) then rs_in = nil end
   if rp_in ~= nil and type(rp_in) ~= 'table' then fail('rope_parameters must be an object, got %s', tostring(rp_in)) end
   if rs_in ~= nil and type(rs_in) ~= 'table' then fail('rope_scaling must be an object, got %s', tostring(rs_in)) end
   if rp_in and rs_in then
      fail('both rope_parameters (transformers 5) and rope_scaling (4.x) are set: keep one')
   end
   local src = rp_in or rs_in or {}
   local key = rs_in and 'rope_scaling' or 'rope_parameters'
   local kind = src.rope_type
   if is_set(src.type) then
      if is_set(kind) and kind ~= src.type then
         fail("%s.rope_type '%s' and %s.type '%s' disagree", key, tostring(kind), key, tostring(src.type))
      end
      kind = src.type
   end
   if not is_set(kind) then kind = 'default' end
   local allowed = ROPE_KEYS[kind]
   if not allowed then
      fail("%s.rope_type '%s' is not supported (%s)", key, tostring(kind), table.concat(M.rope_types, ', '))
   end
   local rp, unknown = {rope_type = kind}, {}
   local theta = src.rope_theta
   if not is_set(theta) then theta = c.rope_theta end
   if not is_set(theta) then theta = 10000.0 end
   if type(theta) ~= 'number' or theta <= 1 then fail('rope_theta must be a number > 1, got %s', tostring(theta)) end
   rp.rope_theta = theta
   local partial = src.partial_rotary_factor
   if not is_set(partial) then partial = c.partial_rotary_factor end
   if is_set(partial) and partial ~= 1 then
      fail('partial_rotary_factor %s is not supported (rotary embeddings over the whole head, 1.0)', tostring(partial))
   end
   for k, v in pairs(src) do
      if not ROPE_COMMON[k] then
         if allowed[k] == nil then unknown[#unknown + 1] = key .. '.' .. k
         elseif is_set(v) then rp[k] = v end
      end
   end
   table.sort(unknown)
   if (kind == 'yarn' or kind == 'llama3' or kind == 'longrope') then
      if is_set(c.original_max_position_embeddings) then
         rp.original_max_position_embeddings = c.original_max_position_embeddings
      elseif rp.original_max_position_embeddings == nil then
         rp.original_max_position_embeddings = c.max_position_embeddings
      end
   end
   for k, required in pairs(allowed) do
      if required and rp[k] == nil then fail("%s: rope_type '%s' needs '%s'", key, kind, k) end
   end
   local function number(k, positive)
      local v = rp[k]
      if v ~= nil and (type(v) ~= 'number' or (positive and v <= 0)) then
         fail('%s.%s must be a %snumber, got %s', key, k, positive and 'positive ' or '', tostring(v))
      end
   end
   for _, k in ipairs({'factor', 'low_freq_factor', 'high_freq_factor', 'attention_factor', 'mscale', 'mscale_all_dim'}) do
      number(k, k ~= 'mscale' and k ~= 'mscale_all_dim')
   end
   number('beta_fast'); number('beta_slow')
   local omp = rp.original_max_position_embeddings
   if omp ~= nil and (type(omp) ~= 'number' or omp < 1 or omp ~= math.floor(omp)) then
      fail('%s.original_max_position_embeddings must be a positive integer, got %s', key, tostring(omp))
   end
   if rp.truncate ~= nil and type(rp.truncate) ~= 'boolean' then
      fail('%s.truncate must be true or false, got %s', key, tostring(rp.truncate))
   end
   if kind == 'llama3' and rp.high_freq_factor <= rp.low_freq_factor then
      fail('%s.high_freq_factor %s must be larger than low_freq_factor %s', key, tostring(rp.high_freq_factor),
           tostring(rp.low_freq_factor))
   end
   if kind == 'longrope' then
      for _, k in ipairs({'short_factor', 'long_factor'}) do
         local v = rp[k]
         local ok = type(v) == 'table' and #v == c.head_dim / 2
         for i = 1, ok and #v or 0 do ok = ok and type(v[i]) == 'number' and v[i] > 0 end
         if not ok then
            fail('%s.%s must be a list of head_dim/2 = %d positive numbers', key, k, c.head_dim / 2)
         end
      end
   end
   return rp, unknown
end

local f32buf = ffi.new('float[1]')
-- rounds a Lua number to the nearest f32, as a torch float32 op would
local function f32(x)
   f32buf[0] = x
   return f32buf[0]
end

-- RoPE's plain inverse frequencies in float32, as torch computes
-- 1.0 / (base ** (arange(0, dim, 2).float() / dim))
local function plain_inv_freq(dim, base)
   local inv, fb = {}, f32(base)
   for i = 0, dim / 2 - 1 do
      local e = f32(f32(2 * i) / f32(dim))
      inv[i + 1] = f32(1 / f32(fb ^ e))
   end
   return inv
end

-- the length past which a rope_type switches frequencies (dynamic, longrope)
local function switch_length(cfg)
   local rp = cfg.rope
   if rp.rope_type == 'dynamic' then return cfg.max_position_embeddings end
   if rp.rope_type == 'longrope' then return rp.original_max_position_embeddings end
   return math.huge
end

-- inv_freq[i], i < head_dim/2, and the attention scaling that multiplies
-- cos and sin, for a sequence of seq_len positions (only 'dynamic' and
-- 'longrope' depend on it), computed as transformers' rope init functions
-- do: in float32 where torch does (every tensor op rounded to f32), in
-- double where Python does.
function M.inv_freq(cfg, seq_len)
   local rp = cfg.rope or M.rope_parameters(cfg)
   local dim, base, kind = cfg.head_dim, rp.rope_theta, rp.rope_type
   local mp = cfg.max_position_embeddings
   if kind == 'default' then return plain_inv_freq(dim, base), 1 end
   if kind == 'linear' then
      local inv, ff = plain_inv_freq(dim, base), f32(rp.factor)
      for i = 1, #inv do inv[i] = f32(inv[i] / ff) end
      return inv, 1
   end
   if kind == 'dynamic' then
      -- NTK-aware: past max_position_embeddings the base grows with the
      -- length (transformers recomputes it from a length tensor, in f32)
      local factor = rp.factor
      if seq_len and seq_len > mp then
         local x = f32(f32(factor) * f32(seq_len))
         x = f32(x / f32(mp))
         x = f32(x - f32(factor - 1))
         x = f32(x ^ f32(dim / (dim - 2)))
         base = f32(f32(base) * x)
      else
         base = base * ((factor * mp / mp) - (factor - 1)) ^ (dim / (dim - 2))
      end
      return plain_inv_freq(dim, base), 1
   end
   if kind == 'llama3' then
      -- long wavelengths divided by factor, short ones kept, the band
      -- between blended smoothly
      local inv = plain_inv_freq(dim, base)
      local factor, lo, hi = rp.factor, rp.low_freq_factor, rp.high_freq_factor
      local old = rp.original_max_position_embeddings
      local lo_wavelen, hi_wavelen = f32(old / lo), f32(old / hi)
      local ff = f32(factor)
      for i = 1, #inv do
         local f = inv[i]
         local wavelen = f32(f32(1 / f) * f32(2 * math.pi))
         local g = wavelen > lo_wavelen and f32(f / ff) or f
         if not (wavelen < hi_wavelen) and not (wavelen > lo_wavelen) then
            local smooth = f32(f32(f32(f32(1 / wavelen) * f32(old)) - f32(lo)) / f32(hi - lo))
            g = f32(f32(f32(f32(1 - smooth) * g) / ff) + f32(smooth * g))
         end
         inv[i] = g
      end
      return inv, 1
   end
   if kind == 'yarn' then
      -- interpolated (divided by factor) low frequencies, extrapolated high
      -- ones, a linear ramp between the correction dimensions; cos and sin
      -- scaled by the attention factor
      local orig = rp.original_max_position_embeddings
      local factor = rp.factor
      local function mscale(s, m)
         if s <= 1 then return 1.0 end
         return 0.1 * m * math.log(s) + 1.0
      end
      local att = rp.attention_factor
      if att == nil then
         if (rp.mscale or 0) ~= 0 and (rp.mscale_all_dim or 0) ~= 0 then
            att = mscale(factor, rp.mscale) / mscale(factor, rp.mscale_all_dim)
         else
            att = mscale(factor, 1)
         end
      end
      local beta_fast = (rp.beta_fast and rp.beta_fast ~= 0) and rp.beta_fast or 32
      local beta_slow = (rp.beta_slow and rp.beta_slow ~= 0) and rp.beta_slow or 1
      local function correction_dim(rotations)
         return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))
      end
      local low, high = correction_dim(beta_fast), correction_dim(beta_slow)
      if rp.truncate ~= false then low, high = math.floor(low), math.ceil(high) end
      low, high = math.max(low, 0), math.min(high, dim - 1)
      if low == high then high = high + 0.001 end
      local inv, fb, ff = {}, f32(base), f32(factor)
      for i = 0, dim / 2 - 1 do
         local pos_freq = f32(fb ^ f32(f32(2 * i) / f32(dim)))
         local extrapolation = f32(1 / pos_freq)
         local interpolation = f32(1 / f32(ff * pos_freq))
         local ramp = f32(f32(f32(i) - f32(low)) / f32(high - low))
         ramp = math.min(1, math.max(0, ramp))
         local extra = f32(1 - ramp)
         inv[i + 1] = f32(f32(interpolation * f32(1 - extra)) + f32(extrapolation * extra))
      end
      return inv, att
   end
   if kind == 'longrope' then
      -- per-frequency factors: the long ones once the sequence is longer
      -- than original_max_position_embeddings, else the short ones
      local orig = rp.original_max_position_embeddings
      local factor = rp.factor or mp / orig
      local att = rp.attention_factor
      if att == nil then att = factor <= 1 and 1.0 or math.sqrt(1 + math.log(factor) / math.log(orig)) end
      local ext = (seq_len and seq_len > orig) and rp.long_factor or rp.short_factor
      local inv, fb = {}, f32(base)
      for i = 0, dim / 2 - 1 do
         local p = f32(fb ^ f32(f32(2 * i) / f32(dim)))
         inv[i + 1] = f32(1 / f32(f32(ext[i + 1]) * p))
      end
      return inv, att
   end
   error(string.format("llama: rope_type '%s' is not supported (%s)", tostring(kind), table.concat(M.rope_types, ', ')), 0)
end

local Rope = {}
Rope.__index = Rope
M.Rope = Rope

function M.rope(cfg)
   if not cfg.rope then cfg.rope = M.rope_parameters(cfg) end
   return setmetatable({cfg = cfg, half = cfg.head_dim / 2, n = 0, version = 0}, Rope)
end

-- which frequency set a sequence of n positions uses ('base', or the
-- length itself for dynamic past max_position_embeddings, 'long' for
-- longrope past original_max_position_embeddings)
function Rope:frequency_key(n)
   if n <= switch_length(self.cfg) then return 'base' end
   if self.cfg.rope.rope_type == 'dynamic' then return n end
   return 'long'
end

-- cos, sin [n, head_dim/2] with n >= T_: rows are positions 0 .. n-1, for
-- a sequence of T_ positions; the angle pos * inv_freq is rounded to f32
-- before cos/sin, and cos/sin are multiplied by the attention scaling
-- (yarn, longrope), as transformers does. dev: where they are wanted (-1,
-- the host, by default; copies are cached)
function Rope:tables(T_, dev)
   if dev and dev >= 0 then
      local host_cos, host_sin = self:tables(T_)
      local d = self.on_device
      if not d or d.dev ~= dev or d.version ~= self.version then
         if d then d.cos:free(); d.sin:free() end
         d = {dev = dev, cos = host_cos:to_device(dev), sin = host_sin:to_device(dev), version = self.version}
         self.on_device = d
      end
      return d.cos, d.sin
   end
   local key = self:frequency_key(T_)
   if T_ > self.n or key ~= self.key then
      if self.cos then self.cos:free(); self.sin:free() end
      local half = self.half
      local inv, scale = M.inv_freq(self.cfg, T_)
      self.inv, self.scale = inv, scale
      self.cos, self.sin = T.empty({T_, half}, 'f32'), T.empty({T_, half}, 'f32')
      local c, s = self.cos:ptr(), self.sin:ptr()
      local fs = f32(scale)
      for pos = 0, T_ - 1 do
         for i = 0, half - 1 do
            local angle = f32(pos * inv[i + 1])
            local cv, sv = math.cos(angle), math.sin(angle)
            if scale ~= 1 then cv, sv = f32(cv) * fs, f32(sv) * fs end
            c[pos * half + i] = cv
            s[pos * half + i] = sv
         end
      end
      self.n, self.key, self.version = T_, key, self.version + 1
   end
   return self.cos, self.sin
end

---------------------------------------------------------------------------
-- modules

-- rotary grouped-query attention: q_proj / k_proj / v_proj, RoPE on q and
-- k, causal attention (a sliding window for Mistral), o_proj. A family's
-- subclass may set self.scale (default 1/sqrt(head_dim)) and self.softcap.
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
                                     scale = self.scale, softcap = self.softcap, cache = cache, layer = self,
                                     positions = positions})
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
-- feed-forward is given (a SwiGLU MLP, or Mixtral's experts) with its
-- name, and the attention may be (a family's own, e.g. Qwen2's)
local DecoderLayer = nn.class('LlamaDecoderLayer')
M.DecoderLayer = DecoderLayer
function DecoderLayer.new(cfg, rope, mlp, mlp_name, attn)
   local self = nn.Module.instance(DecoderLayer)
   local C = cfg.hidden_size
   self.mlp_name = mlp_name or 'mlp'
   self.n_embd = C
   self:add('input_layernorm', nn.RMSNorm(C, {eps = cfg.rms_norm_eps}))
   self:add('self_attn', attn or Attention(cfg, rope))
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
-- make_mlp(cfg, i) gives layer i's feed-forward and its name,
-- make_attn(cfg, rope, i) layer i's attention (default: Attention)
function M.build(self, cfg, make_mlp, make_attn)
   self.config = cfg
   local C, V = cfg.hidden_size, cfg.vocab_size
   self.rope = M.rope(cfg)
   local body = self:add('model', nn.Module.instance(Body))
   body:add('embed_tokens', nn.PaddedEmbedding(V, C, M.padding_idx(cfg.pad_token_id, V), {std = cfg.initializer_range}))
   local layers = body:add('layers', nn.ModuleList())
   for i = 1, cfg.num_hidden_layers do
      local mlp, name = nil, 'mlp'
      if make_mlp then mlp, name = make_mlp(cfg, i) end
      layers:append(DecoderLayer(cfg, self.rope, mlp, name, make_attn and make_attn(cfg, self.rope, i)))
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

-- The head's logits, or with targets the loss (see Llama:loss): the head
-- module `head` (nil: tied, `weight` is the embedding's) on x. The loss runs
-- as ops.lm_loss, so on the host the [tokens, vocab] logits never exist
-- whole; a head with adapters (LoRA on lm_head) or a bias runs as its module.
-- Called inside the model's forward: under fsdp.shard the head's gradient
-- is bound only while the model's own unit runs.
function M.head(x, head, weight, targets, ctx)
   if not targets then return head and head(x) or ops.linear(x, weight) end
   local denominator = type(ctx) == 'table' and ctx.denominator or nil
   if head and (head.lora or head.bias) then return ops.cross_entropy(head(x), targets, -100, denominator) end
   return ops.lm_loss(x, head and head.weight or weight, targets, -100, denominator)
end

-- idx: i32 [B, T] token ids -> logits [B, T, vocab]; with targets (i32
-- [B, T]) the loss instead (Llama:loss). ctx (optional): a KV cache when
-- decoding (idx holds the positions from cache.pos on), or {positions =
-- i32 [B, T]} for packed samples (see nn.forward_context)
function Llama:forward(idx, ctx, targets)
   check_input(self, idx)
   local cache = nn.forward_context(ctx)
   if cache then cache:check(idx.shape[1], idx.shape[2]) end
   local body = self.model
   local x = body.embed_tokens(idx)
   for i = 1, body.layers.n do x = body.layers[i](x, ctx) end
   x = body.norm(x)
   if cache then cache:advance(idx.shape[2]) end
   return M.head(x, self.lm_head, body.embed_tokens.weight, targets, ctx)
end

-- cross-entropy over targets that are not -100 (targets[b, t] is the token
-- after idx[b, t]): their mean, or their sum over ctx.denominator when given
function Llama:loss(idx, targets, ctx)
   return self(idx, ctx, targets)
end

---------------------------------------------------------------------------
-- Hugging Face config.json

-- the fields of a LlamaConfig-like table this model reads
M.hf_fields = {'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
               'num_key_value_heads', 'head_dim', 'max_position_embeddings', 'rms_norm_eps', 'rope_theta',
               'rope_scaling', 'rope_parameters', 'original_max_position_embeddings', 'partial_rotary_factor',
               'tie_word_embeddings', 'attention_bias', 'mlp_bias', 'hidden_act', 'pad_token_id', 'initializer_range'}

-- config.json keys by what they do here (fsdp.hf checks every key of a
-- config against these and the keys every transformers config has):
-- used: read; inert: known not to change the model's math; dropout:
-- training-time dropout rates, which fsdp-lua does not apply
M.config_keys = {
   used = M.hf_fields,
   inert = {'pretraining_tp', 'use_cache', 'bos_token_id', 'eos_token_id'},
   dropout = {'attention_dropout'},
}

-- the keys of a family's config_keys plus `more` (lists of names)
function M.extend_keys(base, more)
   local out = {}
   for part, names in pairs(base) do
      out[part] = {}
      for _, k in ipairs(names) do out[part][#out[part] + 1] = k end
   end
   for part, names in pairs(more) do
      out[part] = out[part] or {}
      for _, k in ipairs(names) do out[part][#out[part] + 1] = k end
   end
   return out
end

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

-- a model from a config.json table (transformers' LlamaConfig fields, 4.x
-- or 5.x layout)
function M.from_hf(hf)
   local model = Llama(M.pick(hf, M.hf_fields, M.defaults))
   model.hf_config = hf
   return model
end

-- the float members of the configurations written here (transformers 5
-- refuses an int where its config declares a float)
local FLOATS = {'rms_norm_eps', 'initializer_range', 'attention_dropout', 'router_aux_loss_coef',
                'router_jitter_noise', 'rope_theta'}
local ROPE_INTS = {original_max_position_embeddings = true, truncate = true}

-- rope table (M.rope_parameters) -> a JSON object, its numbers floats
local function rope_json(rp)
   local out = {}
   for k, v in pairs(rp) do
      if type(v) == 'table' then
         local list = json.array({})
         for i, x in ipairs(v) do list[i] = x; json.set_float(list, i) end
         out[k] = list
      else
         out[k] = v
         if type(v) == 'number' and not ROPE_INTS[k] then json.set_float(out, k) end
      end
   end
   return out
end

-- Rewrites the RoPE keys of config table `out` (a copy) into `layout`:
-- '5' rope_parameters (transformers 5); '4' rope_theta and rope_scaling
-- (4.x). The values are the model's (cfg.rope).
function M.set_rope_layout(out, rope, layout)
   local rp = rope_json(rope)
   out.rope_theta, out.rope_scaling, out.rope_parameters, out.partial_rotary_factor = nil, nil, nil, nil
   if out.original_max_position_embeddings ~= nil then
      out.original_max_position_embeddings = nil -- now inside the rope table
   end
   if layout == '4' then
      out.rope_theta = rp.rope_theta
      json.set_float(out, 'rope_theta')
      rp.rope_theta = nil
      if rp.rope_type == 'default' then out.rope_scaling = json.null else out.rope_scaling = rp end
   else
      out.rope_parameters = rp
   end
   return out
end

-- the config.json of an export in `layout` ('4' or '5'; nil: the layout the
-- model came in): the one the model was read from (its keys kept, floats
-- still floats), else the model's own configuration written in full (a
-- model from scratch; nil layout: transformers 5's). `fields` names what a
-- configuration from scratch writes besides the RoPE keys.
function M.hf_config(model, arch, model_type, layout, fields)
   local out
   if model.hf_config then
      out = json.copy(model.hf_config)
      local came = (is_set(out.rope_theta) or is_set(out.rope_scaling)) and not is_set(out.rope_parameters)
                   and '4' or '5'
      if layout and layout ~= came and model.config.rope then M.set_rope_layout(out, model.config.rope, layout) end
      -- fields transformers declares float are written as floats even when
      -- the config had an int (or came from an older fsdp-lua checkpoint)
      for _, k in ipairs(FLOATS) do if type(out[k]) == 'number' then json.set_float(out, k) end end
   else
      local c = model.config
      out = {model_type = model_type}
      for _, k in ipairs(fields or M.scratch_fields) do
         local v = c[k]
         if v == nil then v = json.null end
         out[k] = v
      end
      out.attention_dropout = 0.0
      for _, k in ipairs(FLOATS) do if type(out[k]) == 'number' then json.set_float(out, k) end end
      M.set_rope_layout(out, c.rope, layout or '5')
   end
   out.architectures = json.array({arch})
   return out
end

-- what a Llama from scratch writes (besides RoPE)
M.scratch_fields = {'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
                    'num_key_value_heads', 'head_dim', 'max_position_embeddings', 'rms_norm_eps',
                    'tie_word_embeddings', 'attention_bias', 'mlp_bias', 'hidden_act', 'pad_token_id',
                    'initializer_range'}

-- the family in the model registry (lua/models/init.lua)
M.family = {
   architectures = {'LlamaForCausalLM'},
   model_types = {'llama'},
   from_hf = M.from_hf,
   to_hf_config = function(model, layout) return M.hf_config(model, 'LlamaForCausalLM', 'llama', layout) end,
   config_keys = M.config_keys,
   lora_targets = {'q_proj', 'v_proj'}, -- fsdp.lora's default targets (PEFT's for this family)
   unknown_keys = function(model) return model.config.rope_unknown end,
}
Llama.family = M.family

return M
