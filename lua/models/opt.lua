-- OPT (Meta's Open Pre-trained Transformers): learned positions (stored
-- with an offset of 2), LayerNorm, ReLU MLP, tied input/output embeddings.
-- do_layer_norm_before picks pre-norm blocks (most sizes; then a final
-- layer norm follows the blocks) or post-norm blocks (the 350m shape). When
-- word_embed_proj_dim differs from hidden_size the embeddings are narrower
-- and project_in / project_out map to and from the blocks' width.
--
-- Parameter names are Hugging Face OPTForCausalLM's (model.decoder.*);
-- checkpoints saved from OPTModel (decoder.*) map too (see hf_names).
-- Single-device code: the sharding is applied from outside (fsdp.shard).
local nn = require 'fsdp.nn'
local ops = require 'fsdp.ops'
local T = require 'fsdp.tensor'
local json = require 'fsdp.json'
local llama = require 'models.llama'

local M = {}

-- transformers' OPTConfig defaults for the fields used here
M.defaults = {
   vocab_size = 50272, hidden_size = 768, num_hidden_layers = 12, ffn_dim = 3072, max_position_embeddings = 2048,
   do_layer_norm_before = true, _remove_final_layer_norm = false, word_embed_proj_dim = nil,
   num_attention_heads = 12, activation_function = 'relu', layer_norm_elementwise_affine = true,
   enable_bias = true, pad_token_id = 1, tie_word_embeddings = true, init_std = 0.02,
}

-- Published shapes (`--size opt-1.3b`): facebook/opt-1.3b's and
-- opt-6.7b's config.json, built through from_hf (1.32B and 6.66B parameters)
M.published = {
   ['opt-1.3b'] = {architectures = {'OPTForCausalLM'}, model_type = 'opt', vocab_size = 50272, hidden_size = 2048,
                   ffn_dim = 8192, num_hidden_layers = 24, num_attention_heads = 32, max_position_embeddings = 2048,
                   word_embed_proj_dim = 2048, do_layer_norm_before = true, activation_function = 'relu',
                   enable_bias = true, layer_norm_elementwise_affine = true, pad_token_id = 1, bos_token_id = 2,
                   eos_token_id = 2},
   ['opt-6.7b'] = {architectures = {'OPTForCausalLM'}, model_type = 'opt', vocab_size = 50272, hidden_size = 4096,
                   ffn_dim = 16384, num_hidden_layers = 32, num_attention_heads = 32, max_position_embeddings = 2048,
                   word_embed_proj_dim = 4096, do_layer_norm_before = true, activation_function = 'relu',
                   enable_bias = true, layer_norm_elementwise_affine = true, pad_token_id = 1, bos_token_id = 2,
                   eos_token_id = 2},
}

local OFFSET = 2 -- OPT's position table starts 2 rows in

function M.config(cfg)
   local out = {}
   for k, v in pairs(M.defaults) do out[k] = v end
   for k, v in pairs(cfg or {}) do out[k] = v end
   out.word_embed_proj_dim = out.word_embed_proj_dim or out.hidden_size
   local function need(ok, fmt, ...) if not ok then error('opt: ' .. string.format(fmt, ...), 0) end end
   for _, k in ipairs({'vocab_size', 'hidden_size', 'num_hidden_layers', 'ffn_dim', 'max_position_embeddings',
                       'num_attention_heads', 'word_embed_proj_dim'}) do
      local v = out[k]
      need(type(v) == 'number' and v >= 1 and v == math.floor(v), '%s must be a positive integer, got %s', k, tostring(v))
   end
   need(out.hidden_size % out.num_attention_heads == 0, 'hidden_size %d is not divisible by num_attention_heads %d',
        out.hidden_size, out.num_attention_heads)
   need(out.activation_function == 'relu', "activation_function '%s' is not supported (relu)",
        tostring(out.activation_function))
   need(out.layer_norm_elementwise_affine ~= false, 'layer_norm_elementwise_affine = false is not supported')
   return out
end

-- multi-head attention with OPT's names (q_proj, k_proj, v_proj, out_proj)
local Attention = nn.class('OPTAttention')
M.Attention = Attention
function Attention.new(cfg)
   local self = nn.Module.instance(Attention)
   local C, bias, std = cfg.hidden_size, cfg.enable_bias, cfg.init_std
   self.n_head, self.head_dim = cfg.num_attention_heads, C / cfg.num_attention_heads
   self:add('k_proj', nn.Linear(C, C, {bias = bias, std = std}))
   self:add('v_proj', nn.Linear(C, C, {bias = bias, std = std}))
   self:add('q_proj', nn.Linear(C, C, {bias = bias, std = std}))
   self:add('out_proj', nn.Linear(C, C, {bias = bias, std = std}))
   return self
end
-- x [B, T, C]; ctx: the model's forward context (nn.forward_context)
function Attention:forward(x, ctx)
   local cache, positions = nn.forward_context(ctx)
   local a = ops.attention(self.q_proj(x), self.k_proj(x), self.v_proj(x),
                           {n_head = self.n_head, cache = cache, layer = self, positions = positions})
   return self.out_proj(a)
end
function Attention:activation_elems(N, B, T_)
   return nn.attention_activation_elems(N, B, T_, self.n_head, self.head_dim)
end

-- one block: pre-norm  x + attn(ln(x)), then + fc2(relu(fc1(ln(x))))
--            post-norm ln(x + attn(x)), then ln(x + fc2(relu(fc1(x))))
local Layer = nn.class('OPTDecoderLayer')
M.DecoderLayer = Layer
function Layer.new(cfg)
   local self = nn.Module.instance(Layer)
   local C, bias, std = cfg.hidden_size, cfg.enable_bias, cfg.init_std
   self.pre_norm, self.n_embd, self.ffn_dim = cfg.do_layer_norm_before, C, cfg.ffn_dim
   self:add('self_attn', Attention(cfg))
   self:add('self_attn_layer_norm', nn.LayerNorm(C))
   self:add('fc1', nn.Linear(C, cfg.ffn_dim, {bias = bias, std = std}))
   self:add('fc2', nn.Linear(cfg.ffn_dim, C, {bias = bias, std = std}))
   self:add('final_layer_norm', nn.LayerNorm(C))
   return self
end
function Layer:forward(x, ctx)
   local pre = self.pre_norm
   local h = pre and self.self_attn_layer_norm(x) or x
   x = ops.add(x, self.self_attn(h, ctx))
   if not pre then x = self.self_attn_layer_norm(x) end
   h = pre and self.final_layer_norm(x) or x
   x = ops.add(x, self.fc2(ops.relu(self.fc1(h))))
   if not pre then x = self.final_layer_norm(x) end
   return x
end
-- the two residual sums and the ReLU's output
function Layer:activation_elems(N) return 2 * N * self.n_embd + N * self.ffn_dim end

local Body = nn.class('OPTModel')
local Decoder = nn.class('OPTDecoder')

local OPT = nn.class('OPT')
M.OPT = OPT
function OPT.new(cfg)
   cfg = M.config(cfg)
   local self = nn.Module.instance(OPT)
   self.config = cfg
   local C, P, V = cfg.hidden_size, cfg.word_embed_proj_dim, cfg.vocab_size
   local std = cfg.init_std
   local body = self:add('model', nn.Module.instance(Body))
   local dec = body:add('decoder', nn.Module.instance(Decoder))
   dec:add('embed_tokens', nn.PaddedEmbedding(V, P, llama.padding_idx(cfg.pad_token_id, V), {std = std}))
   dec:add('embed_positions', nn.Embedding(cfg.max_position_embeddings + OFFSET, C, {std = std}))
   if P ~= C then
      dec:add('project_out', nn.Linear(C, P, {bias = false, std = std}))
      dec:add('project_in', nn.Linear(P, C, {bias = false, std = std}))
   end
   if cfg.do_layer_norm_before and not cfg._remove_final_layer_norm then
      dec:add('final_layer_norm', nn.LayerNorm(C))
   end
   local layers = dec:add('layers', nn.ModuleList())
   for _ = 1, cfg.num_hidden_layers do layers:append(Layer(cfg)) end
   if not cfg.tie_word_embeddings then self:add('lm_head', nn.Linear(P, V, {bias = false, std = std})) end
   self.positions = {} -- 'BxT' -> i32 [B, T] position rows, cached
   return self
end

function OPT:units()
   local out, layers = {}, self.model.decoder.layers
   for i = 1, layers.n do out[i] = layers[i] end
   return out
end

-- position rows for tokens at positions off .. off+T-1 (off > 0 only while
-- decoding with a KV cache)
local function positions(self, B, T_, off, dev)
   local key = B .. 'x' .. T_ .. '+' .. off .. '@' .. dev
   local p = self.positions[key]
   if not p then
      p = T.empty({B, T_}, 'i32')
      local ptr = p:ptr()
      for b = 0, B - 1 do for t = 0, T_ - 1 do ptr[b * T_ + t] = off + t + OFFSET end end
      if dev >= 0 then local d = p:to_device(dev); p:free(); p = d end
      self.positions[key] = p
   end
   return p
end

-- the rows of the position table for packed samples: OPT's table starts
-- OFFSET rows in (made on the host, moved where the model runs)
local function packed_rows(pos)
   local h = pos:cpu()
   local rows = T.empty(pos.shape, 'i32')
   local src, dst = h:ptr(), rows:ptr()
   for i = 0, pos:numel() - 1 do dst[i] = src[i] + OFFSET end
   if h ~= pos then h:free() end
   local d = rows:to_device(pos.device)
   if d ~= rows then rows:free() end
   return T.adopt(d) -- a temporary of the step
end

-- idx: i32 [B, T] token ids -> logits [B, T, vocab]. ctx (optional): a KV
-- cache when decoding (idx holds the positions from cache.pos on), or
-- {positions = i32 [B, T]} for packed samples (see nn.forward_context)
function OPT:forward(idx, ctx, targets)
   llama.check_input(self, idx)
   local cache, pos = nn.forward_context(ctx)
   local cfg, dec = self.config, self.model.decoder
   local B, T_ = idx.shape[1], idx.shape[2]
   local off = cache and cache.pos or 0
   if off + T_ > cfg.max_position_embeddings then
      error(string.format('OPT: sequence length %d exceeds max_position_embeddings %d', off + T_,
                          cfg.max_position_embeddings), 0)
   end
   if cache then cache:check(B, T_) end
   local x = dec.embed_tokens(idx)
   if dec.project_in then x = dec.project_in(x) end
   x = ops.add(x, dec.embed_positions(pos and packed_rows(pos) or positions(self, B, T_, off, idx.device)))
   for i = 1, dec.layers.n do x = dec.layers[i](x, ctx) end
   if dec.final_layer_norm then x = dec.final_layer_norm(x) end
   if dec.project_out then x = dec.project_out(x) end
   if cache then cache:advance(T_) end
   return llama.head(x, self.lm_head, dec.embed_tokens.weight, targets, ctx)
end

-- cross-entropy over targets that are not -100: their mean, or their sum
-- over ctx.denominator when given (the head's logits never whole:
-- llama.head)
function OPT:loss(idx, targets, ctx)
   return self(idx, ctx, targets)
end

-- checkpoint names for one of our parameters: OPTForCausalLM's, then
-- OPTModel's (without the leading 'model.')
function OPT:hf_names(name)
   local short = name:match('^model%.(.*)$')
   return {name, short}
end

M.hf_fields = {'vocab_size', 'hidden_size', 'num_hidden_layers', 'ffn_dim', 'max_position_embeddings',
               'do_layer_norm_before', '_remove_final_layer_norm', 'word_embed_proj_dim', 'num_attention_heads',
               'activation_function', 'layer_norm_elementwise_affine', 'enable_bias', 'pad_token_id',
               'tie_word_embeddings', 'init_std'}

-- config.json keys by what they do here (see llama.config_keys)
M.config_keys = {
   used = M.hf_fields,
   inert = {'use_cache', 'bos_token_id', 'eos_token_id'},
   dropout = {'dropout', 'attention_dropout', 'layerdrop', 'activation_dropout'},
}

-- a model from a config.json table (transformers' OPTConfig fields)
function M.from_hf(hf)
   local cfg = llama.pick(hf, M.hf_fields, M.defaults)
   if hf.pad_token_id == json.null then cfg.pad_token_id = false end -- None: no padding row
   local model = OPT(cfg)
   model.hf_config = hf
   return model
end

-- the config.json of an export: the one the model was read from, else the
-- model's configuration (OPTConfig's fields; no dropout)
function M.to_hf_config(model)
   local out
   if model.hf_config then
      out = json.copy(model.hf_config)
      -- fields transformers declares float are written as floats
      for _, k in ipairs({'init_std', 'dropout', 'attention_dropout', 'layerdrop'}) do
         if type(out[k]) == 'number' then json.set_float(out, k) end
      end
   else
      out = {model_type = 'opt', dropout = 0.0, attention_dropout = 0.0, layerdrop = 0.0}
      for _, k in ipairs({'dropout', 'attention_dropout', 'layerdrop'}) do json.set_float(out, k) end
      for _, k in ipairs(M.hf_fields) do
         local v = model.config[k]
         if v == nil or v == false and k == 'pad_token_id' then v = json.null end
         out[k] = v
      end
      json.set_float(out, 'init_std')
   end
   out.architectures = json.array({'OPTForCausalLM'})
   return out
end

M.family = {
   architectures = {'OPTForCausalLM'},
   model_types = {'opt'},
   from_hf = M.from_hf,
   to_hf_config = M.to_hf_config,
   config_keys = M.config_keys,
   lora_targets = {'q_proj', 'v_proj'}, -- fsdp.lora's default targets (PEFT's for this family)
}
OPT.family = M.family

return M
