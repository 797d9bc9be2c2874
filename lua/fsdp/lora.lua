-- fsdp.lora: low-rank adapters (LoRA, Hu et al. 2021) applied to a model
-- from outside, as fsdp.shard is, the way PEFT's get_peft_model does it:
--
--   local model = hf.build(dir)                        -- or any model of lua/models
--   fsdp.lora(model, {targets = {'q_proj', 'v_proj'}, r = 16, alpha = 32, dropout = 0.05})
--   fsdp.shard(model, ...)                              -- then as usual
--
-- Every linear layer whose name (its last path component) is one of
-- `targets` gets two parameters beside its weight, named as PEFT names them:
--   <layer>.lora_A.weight [r, in]   kaiming-uniform (PEFT's init: U(-1/sqrt(in), 1/sqrt(in)))
--   <layer>.lora_B.weight [out, r]  zeros, so the model starts unchanged
-- and computes x W^T + b + (alpha / r) (dropout(x) A^T) B^T in one fused op
-- (ops.lora_linear). Every other parameter of the model is frozen: no
-- gradient, no optimizer state, never moved. The layer's weight keeps its
-- name, so the base model's weights load as before.
local nn = require 'fsdp.nn'
local ops = require 'fsdp.ops'
local AG = require 'fsdp.autograd'

local M = {}

M.defaults = {r = 8, alpha = 8, dropout = 0, targets = {'q_proj', 'v_proj'}}

-- linear layers (a `weight` [out, in] and n_in / n_out), by path, in order
local function linears(module, prefix, out)
   out = out or {}
   prefix = prefix or ''
   if module.n_in and module.n_out and module.forward == nn.Linear.forward then
      out[#out + 1] = {path = prefix:sub(1, -2), module = module, name = module._label}
   end
   for _, c in ipairs(module._children) do linears(c.module, prefix .. c.name .. '.', out) end
   return out
end

-- the dropout seed of a layer at the model's current training forward: the
-- layer's own seed mixed with the count of training forwards (model.lora.step,
-- advanced by the model's forward while training, checkpointed by the
-- recipes), so each forward draws new masks, a checkpointed recompute the same
local function layer_seed(l)
   local C, ffi = require('fsdp.ffi').C, require('ffi')
   return C.fsdp_hash64(ffi.new('uint64_t[1]', l.shared.step), 8, l.seed)
end

local function lora_forward(self, x)
   local l = self.lora
   return ops.lora_linear(x, self.weight, self.bias, self.lora_A.weight, self.lora_B.weight,
                          {scale = l.scale, dropout = l.dropout, seed = l.dropout > 0 and layer_seed(l) or 0})
end

-- opts: targets (names of linear layers: {'q_proj', 'k_proj', ...}; or
-- 'all-linear': every linear layer but an output head), r, alpha, dropout,
-- seed (the dropout masks' seed). Returns the model, with model.lora =
-- {r, alpha, dropout, targets, layers = {paths}} for the adapter's export.
function M.apply(model, opts)
   opts = opts or {}
   if model.lora then error('lora: the model already has adapters', 2) end
   local r, alpha = opts.r or M.defaults.r, opts.alpha or M.defaults.alpha
   local dropout = opts.dropout or M.defaults.dropout
   local function need(ok, fmt, ...) if not ok then error('lora: ' .. string.format(fmt, ...), 3) end end
   need(type(r) == 'number' and r >= 1 and r == math.floor(r), 'r must be a positive integer, got %s', tostring(r))
   need(type(alpha) == 'number' and alpha > 0 and alpha < math.huge, 'alpha must be a positive number, got %s',
        tostring(alpha))
   need(type(dropout) == 'number' and dropout >= 0 and dropout < 1, 'dropout must be in [0, 1), got %s',
        tostring(dropout))
   local targets = opts.targets or M.defaults.targets
   if type(targets) == 'string' and targets ~= 'all-linear' then
      local list = {}
      for name in targets:gmatch('[^,%s]+') do list[#list + 1] = name end
      targets = list
   end
   local all = linears(model)
   local wanted = {}
   if targets == 'all-linear' then
      for _, l in ipairs(all) do
         if not l.path:match('lm_head$') then wanted[l.name] = true end
      end
   else
      need(type(targets) == 'table' and #targets > 0, 'targets must be a list of layer names')
      for _, t in ipairs(targets) do wanted[t] = true end
   end
   -- check every target names some layer: a typo must not train nothing
   local found, names = {}, {}
   for _, l in ipairs(all) do
      names[l.name] = true
      if wanted[l.name] then found[l.name] = true end
   end
   if targets ~= 'all-linear' then
      for _, t in ipairs(targets) do
         if not found[t] then
            local avail = {}
            for n in pairs(names) do avail[#avail + 1] = n end
            table.sort(avail)
            need(false, "no linear layer of %s is named '%s' (its linear layers: %s)", tostring(model.__name), t,
                 table.concat(avail, ', '))
         end
      end
   end
   local seed = opts.seed or 0
   local paths = {}
   local shared = {step = 0}
   model:freeze()
   for _, l in ipairs(all) do
      if wanted[l.name] then
         local m = l.module
         need(r <= math.min(m.n_in, m.n_out), 'r %d is larger than %s (%d -> %d)', r, l.path, m.n_in, m.n_out)
         local bound = 1 / math.sqrt(m.n_in)
         local A = m:add('lora_A', nn.Linear(m.n_in, r, {bias = false}))
         local B = m:add('lora_B', nn.Linear(r, m.n_out, {bias = false}))
         A._params[1].init = {'uniform', -bound, bound}
         B._params[1].init = 'zeros'
         -- the fused op keeps x A^T ([N, r], lora_A's declared share) and the
         -- layer's output (the layer's): B makes no tensor of its own
         B.activation_elems = function() return 0 end
         m.lora = {r = r, alpha = alpha, scale = alpha / r, dropout = dropout, shared = shared,
                   seed = require('fsdp.nn').param_seed(seed, l.path)}
         m.forward = lora_forward
         paths[#paths + 1] = l.path
      end
   end
   model.lora = {r = r, alpha = alpha, dropout = dropout, layers = paths, shared = shared,
                 targets = targets == 'all-linear' and 'all-linear' or opts.targets or M.defaults.targets}
   -- a training forward of the model advances the dropout step (evaluation
   -- under no_grad does not; a checkpointed unit's recompute is inside it)
   local forward = model.forward
   model.forward = function(self, ...)
      if AG.training() then shared.step = shared.step + 1 end
      return forward(self, ...)
   end
   return model
end

-- the dropout step as a stateful part of a run (checkpoint.save's state)
function M.state(model)
   local shared = model.lora.shared
   return {state_dict = function() return shared.step end,
           load_state_dict = function(_, v)
              if type(v) ~= 'number' or v < 0 or v ~= math.floor(v) then
                 error('lora: the saved dropout step must be a non-negative integer, got ' .. tostring(v), 0)
              end
              shared.step = v
           end}
end

-- the adapter parameters' names (and which layer each belongs to)
function M.is_adapter(name) return name:match('%.lora_[AB]%.weight$') ~= nil end

return M
