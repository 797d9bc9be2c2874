-- minGPT: the GPT-2 architecture (learned positions, pre-LayerNorm blocks,
-- GELU MLP, tied input/output embeddings). Parameter names are Hugging Face
-- GPT-2's, so a GPT-2 checkpoint maps one to one. Single-device code: the
-- sharding is applied from outside (fsdp.shard).
local nn = require 'fsdp.nn'
local ops = require 'fsdp.ops'
local T = require 'fsdp.tensor'

local M = {}

-- named shapes; any field can be overridden
M.presets = {
   ['gpt2']        = {n_layer = 12, n_head = 12, n_embd = 768},   -- 124M
   ['gpt2-medium'] = {n_layer = 24, n_head = 16, n_embd = 1024},  -- 350M
   ['gpt2-large']  = {n_layer = 36, n_head = 20, n_embd = 1280},  -- 774M
   ['gpt2-xl']     = {n_layer = 48, n_head = 25, n_embd = 1600},  -- 1558M
   ['gpt-mini']    = {n_layer = 6, n_head = 6, n_embd = 192},
   ['gpt-micro']   = {n_layer = 4, n_head = 4, n_embd = 128},
   ['gpt-nano']    = {n_layer = 3, n_head = 3, n_embd = 48},
}

local defaults = {vocab_size = 50257, block_size = 1024, n_layer = 12, n_head = 12, n_embd = 768,
                  layer_norm_eps = 1e-5, bias = true}

function M.config(cfg)
   local out = {}
   for k, v in pairs(defaults) do out[k] = v end
   if cfg and cfg.preset then
      local p = M.presets[cfg.preset]
      if not p then error("mingpt: unknown preset '" .. tostring(cfg.preset) .. "'", 2) end
      for k, v in pairs(p) do out[k] = v end
   end
   for k, v in pairs(cfg or {}) do out[k] = v end
   return out
end

---------------------------------------------------------------------------
-- the block: pre-LayerNorm, causal self-attention with a fused qkv
-- projection, a GELU MLP

-- c_attn makes q, k and v side by side [B, T, 3C]; c_proj maps the heads back
local Attention = nn.class('CausalSelfAttention')
M.Attention = Attention
function Attention.new(cfg)
   local self = nn.Module.instance(Attention)
   local C = cfg.n_embd
   self.n_head, self.head_dim = cfg.n_head, C / cfg.n_head
   self:add('c_attn', nn.Linear(C, 3 * C, {bias = cfg.bias}))
   self:add('c_proj', nn.Linear(C, C, {bias = cfg.bias, std = cfg.proj_std}))
   return self
end
-- x [B, T, C]; ctx: the model's forward context (nn.forward_context: a KV
-- cache while decoding, packed positions)
function Attention:forward(x, ctx)
   local cache, positions = nn.forward_context(ctx)
   local y = ops.attention(self.c_attn(x), nil, nil, {n_head = self.n_head, cache = cache, layer = self,
                                                       positions = positions})
   return self.c_proj(y)
end
function Attention:activation_elems(N, B, T_)
   return nn.attention_activation_elems(N, B, T_, self.n_head, self.head_dim)
end

-- c_proj(gelu(c_fc(x))), the tanh approximation of GELU
local MLP = nn.class('MLP')
M.MLP = MLP
function MLP.new(cfg)
   local self = nn.Module.instance(MLP)
   local C = cfg.n_embd
   self.hidden = cfg.n_inner or 4 * C
   self:add('c_fc', nn.Linear(C, self.hidden, {bias = cfg.bias}))
   self:add('c_proj', nn.Linear(self.hidden, C, {bias = cfg.bias, std = cfg.proj_std}))
   return self
end
function MLP:forward(x) return self.c_proj(ops.gelu(self.c_fc(x))) end
function MLP:activation_elems(N) return N * self.hidden end -- the GELU's output

-- x + attn(ln_1(x)), then + mlp(ln_2(x))
local Block = nn.class('Block')
M.Block = Block
function Block.new(cfg)
   local self = nn.Module.instance(Block)
   local C = cfg.n_embd
   self.n_embd = C
   self:add('ln_1', nn.LayerNorm(C, {eps = cfg.layer_norm_eps}))
   self:add('attn', Attention(cfg))
   self:add('ln_2', nn.LayerNorm(C, {eps = cfg.layer_norm_eps}))
   self:add('mlp', MLP(cfg))
   return self
end
function Block:forward(x, ctx)
   x = ops.add(x, self.attn(self.ln_1(x), ctx))
   return ops.add(x, self.mlp(self.ln_2(x)))
end
function Block:activation_elems(N) return 2 * N * self.n_embd end -- the two residual sums

---------------------------------------------------------------------------
-- the model

local GPT = nn.class('GPT')
M.GPT = GPT

function GPT.new(cfg)
   cfg = M.config(cfg)
   local self = nn.Module.instance(GPT)
   self.config = cfg
   local C = cfg.n_embd
   if C % cfg.n_head ~= 0 then
      error(string.format('GPT: n_embd %d is not divisible by n_head %d', C, cfg.n_head), 2)
   end
   -- GPT-2 scales the init of the projections into the residual stream
   local block_cfg = {n_embd = C, n_head = cfg.n_head, bias = cfg.bias, n_inner = cfg.n_inner,
                      layer_norm_eps = cfg.layer_norm_eps, proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)}
   local tr = nn.Module.instance(nn.class('Transformer'))
   self:add('transformer', tr)
   tr:add('wte', nn.Embedding(cfg.vocab_size, C))
   tr:add('wpe', nn.Embedding(cfg.block_size, C))
   local h = tr:add('h', nn.ModuleList())
   for _ = 1, cfg.n_layer do h:append(Block(block_cfg)) end
   tr:add('ln_f', nn.LayerNorm(C, {eps = cfg.layer_norm_eps}))
   self.positions = {} -- 'BxT+off@dev' -> i32 [B, T] position ids, cached
   return self
end

function GPT:units()
   local out = {}
   for i = 1, self.transformer.h.n do out[i] = self.transformer.h[i] end
   return out
end

-- position ids off .. off+T-1 (off > 0 only while decoding with a KV cache)
local function positions(self, B, T_, off, dev)
   local key = B .. 'x' .. T_ .. '+' .. off .. '@' .. dev
   local p = self.positions[key]
   if not p then
      p = T.empty({B, T_}, 'i32')
      local ptr = p:ptr()
      for b = 0, B - 1 do for t = 0, T_ - 1 do ptr[b * T_ + t] = off + t end end
      if dev >= 0 then local d = p:to_device(dev); p:free(); p = d end
      self.positions[key] = p
   end
   return p
end

-- idx: i32 [B, T] token ids -> logits [B, T, vocab]; with targets (i32
-- [B, T]) the loss instead (GPT:loss). ctx (optional): a KV
-- cache when decoding (idx holds the positions from cache.pos on), or
-- {positions = i32 [B, T]} for packed samples (see nn.forward_context)
function GPT:forward(idx, ctx, targets)
   local cfg, tr = self.config, self.transformer
   if idx.dtype ~= 'i32' or #idx.shape ~= 2 then
      error('GPT: input must be i32 token ids [batch, time], got ' .. idx.dtype .. ' ' .. T.shape_str(idx.shape), 0)
   end
   local cache, pos = nn.forward_context(ctx)
   local B, T_ = idx.shape[1], idx.shape[2]
   local off = cache and cache.pos or 0
   if off + T_ > cfg.block_size then
      error(string.format('GPT: sequence length %d exceeds block_size %d', off + T_, cfg.block_size), 0)
   end
   if cache then cache:check(B, T_) end
   local x = ops.add(tr.wte(idx), tr.wpe(pos or positions(self, B, T_, off, idx.device)))
   for i = 1, tr.h.n do x = tr.h[i](x, ctx) end
   x = tr.ln_f(x)
   if cache then cache:advance(T_) end
   if targets then -- the loss, without the [tokens, vocab] logits whole
      local denominator = type(ctx) == 'table' and ctx.denominator or nil
      return ops.lm_loss(x, tr.wte.weight, targets, -100, denominator)
   end
   return ops.linear(x, tr.wte.weight) -- tied head
end

-- cross-entropy of next-token prediction over the targets that are not
-- -100: their mean, or their sum over ctx.denominator when given
function GPT:loss(idx, targets, ctx)
   return self(idx, ctx, targets)
end

---------------------------------------------------------------------------
-- Hugging Face GPT-2 (GPT2LMHeadModel)

-- HF GPT-2 keeps these weights in Conv1D layout [in, out]; ours are [out, in]
local conv1d = {['attn.c_attn.weight'] = true, ['attn.c_proj.weight'] = true,
                ['mlp.c_fc.weight'] = true, ['mlp.c_proj.weight'] = true}

-- checkpoint names for one of our parameters (GPT2LMHeadModel's, then
-- GPT2Model's without 'transformer.') and whether it is stored transposed
function GPT:hf_names(name)
   local short = name:match('^transformer%.(.*)$')
   local transposed = conv1d[name:match('([^.]+%.[^.]+%.[^.]+)$') or ''] or false
   return {name, short}, transposed
end

-- a model from a GPT-2 config.json table (transformers' GPT2Config fields)
function M.from_hf(hf)
   local null = require('fsdp.json').null
   local function get(k, default)
      local v = hf[k]
      if v == nil or v == null then return default end
      return v
   end
   local act = get('activation_function', 'gelu_new')
   if act ~= 'gelu_new' and act ~= 'gelu_pytorch_tanh' then
      error("gpt2: activation_function '" .. tostring(act) .. "' is not supported (gelu_new: the tanh approximation)", 0)
   end
   if get('scale_attn_by_inverse_layer_idx', false) then
      error('gpt2: scale_attn_by_inverse_layer_idx is not supported', 0)
   end
   if get('scale_attn_weights', true) ~= true then error('gpt2: scale_attn_weights = false is not supported', 0) end
   if get('tie_word_embeddings', true) ~= true then error('gpt2: an untied lm_head is not supported', 0) end
   local model = GPT {
      vocab_size = get('vocab_size', 50257),
      block_size = get('n_positions', get('n_ctx', 1024)),
      n_embd = get('n_embd', 768), n_layer = get('n_layer', 12), n_head = get('n_head', 12),
      n_inner = get('n_inner', nil),
      layer_norm_eps = get('layer_norm_epsilon', 1e-5),
   }
   model.hf_config = hf
   return model
end

-- the GPT2LMHeadModel config.json of an export: the one the model was read
-- from (its keys kept, floats still floats), else one made from the minGPT
-- configuration (no dropout)
function M.to_hf_config(model)
   local json = require 'fsdp.json'
   local out
   if model.hf_config then
      out = json.copy(model.hf_config)
      -- fields transformers declares float are written as floats
      for _, k in ipairs({'layer_norm_epsilon', 'resid_pdrop', 'embd_pdrop', 'attn_pdrop', 'initializer_range'}) do
         if type(out[k]) == 'number' then json.set_float(out, k) end
      end
   else
      local c = model.config
      if c.bias == false then error('gpt2: a minGPT model without biases has no GPT2LMHeadModel export', 0) end
      out = {model_type = 'gpt2', vocab_size = c.vocab_size, n_positions = c.block_size, n_ctx = c.block_size,
             n_embd = c.n_embd, n_layer = c.n_layer, n_head = c.n_head, n_inner = c.n_inner or json.null,
             layer_norm_epsilon = c.layer_norm_eps, activation_function = 'gelu_new', tie_word_embeddings = true,
             resid_pdrop = 0.0, embd_pdrop = 0.0, attn_pdrop = 0.0, initializer_range = 0.02}
      for _, k in ipairs({'layer_norm_epsilon', 'resid_pdrop', 'embd_pdrop', 'attn_pdrop', 'initializer_range'}) do
         json.set_float(out, k)
      end
   end
   out.architectures = json.array({'GPT2LMHeadModel'})
   return out
end

-- config.json keys by what they do here (see models/llama.lua's config_keys)
M.config_keys = {
   used = {'vocab_size', 'n_positions', 'n_ctx', 'n_embd', 'n_layer', 'n_head', 'n_inner', 'activation_function',
           'layer_norm_epsilon', 'tie_word_embeddings', 'scale_attn_weights', 'scale_attn_by_inverse_layer_idx'},
   -- reorder_and_upcast_attn only upcasts to f32, where fsdp-lua computes
   -- anyway; summary_* configure GPT2DoubleHeadsModel's head
   inert = {'use_cache', 'bos_token_id', 'eos_token_id', 'pad_token_id', 'initializer_range',
            'reorder_and_upcast_attn', 'summary_type', 'summary_use_proj', 'summary_activation',
            'summary_proj_to_labels', 'summary_first_dropout'},
   dropout = {'resid_pdrop', 'embd_pdrop', 'attn_pdrop'},
}

-- the family in the model registry (lua/models/init.lua). A model from
-- scratch is saved in checkpoints as 'mingpt' with its own configuration; a
-- model read from a GPT-2 directory keeps its config.json.
M.family = {
   name = 'mingpt',
   architectures = {'GPT2LMHeadModel'},
   model_types = {'gpt2'},
   from_hf = M.from_hf,
   to_hf_config = M.to_hf_config,
   config_keys = M.config_keys,
   lora_targets = {'c_attn'}, -- fsdp.lora's default targets (PEFT's for GPT-2)
   saved = function(model)
      if model.hf_config then return 'GPT2LMHeadModel', M.to_hf_config(model) end
      return 'mingpt', model.config
   end,
   from_saved = function(name, cfg)
      if name == 'mingpt' then return GPT(cfg) end
      return M.from_hf(cfg)
   end,
}
GPT.family = M.family

return M
