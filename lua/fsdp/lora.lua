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

-- whether layer l is named by target t: its last name component (q_proj),
-- or, as PEFT matches a list of target_modules, a dotted suffix of its path
-- (attn.c_proj) or the whole path
local function matches(l, t)
   return l.name == t or l.path == t or l.path:sub(-#t - 1) == '.' .. t
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

-- opts: targets (names of linear layers: {'q_proj', 'k_proj', ...}, default
-- the family's lora_targets in the model registry; or
-- 'all-linear': every linear layer but an output head; a target names a
-- layer by its last name component or a dotted suffix of its path), r,
-- alpha, dropout, rslora (scale alpha / sqrt(r), not alpha / r), seed (the
-- dropout masks' seed). Returns the model, with model.lora =
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
   -- rank-stabilised LoRA (PEFT's use_rslora): scale alpha / sqrt(r)
   local scale = opts.rslora and alpha / math.sqrt(r) or alpha / r
   need(type(dropout) == 'number' and dropout >= 0 and dropout < 1, 'dropout must be in [0, 1), got %s',
        tostring(dropout))
   local targets = opts.targets or (model.family and model.family.lora_targets) or M.defaults.targets
   if opts.rslora ~= nil and type(opts.rslora) ~= 'boolean' then need(false, 'rslora must be a boolean') end
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
      for t in pairs(wanted) do
         if matches(l, t) then found[t] = true end
      end
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
      local hit = false
      for t in pairs(wanted) do hit = hit or matches(l, t) end
      if hit then
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
         m.lora = {r = r, alpha = alpha, scale = scale, dropout = dropout, shared = shared,
                   seed = require('fsdp.nn').param_seed(seed, l.path)}
         m.forward = lora_forward
         paths[#paths + 1] = l.path
      end
   end
   model.lora = {r = r, alpha = alpha, dropout = dropout, rslora = opts.rslora or false, scale = scale,
                 layers = paths, shared = shared,
                 targets = targets}
   -- a training forward of the model advances the dropout step (evaluation
   -- under no_grad does not; a checkpointed unit's recompute is inside it)
   local forward = model.forward
   model.forward = function(self, ...)
      if AG.training() then shared.step = shared.step + 1 end
      return forward(self, ...)
   end
   return model
end

-- The adapters' settings and the dropout step as a stateful part of a run
-- (checkpoint.save's state, kept in trainer_state.json as `lora`): an
-- export (fsdp-lua export --adapter / --merge) rebuilds the adapters from
-- it; a resume checks the run's settings are the checkpoint's.
function M.settings(model)
   local json = require 'fsdp.json'
   local l = model.lora
   local targets = l.targets
   if type(targets) == 'string' and targets ~= 'all-linear' then
      local list = {}
      for n in targets:gmatch('[^,%s]+') do list[#list + 1] = n end
      targets = list
   end
   local out = {r = l.r, alpha = l.alpha, dropout = l.dropout, rslora = l.rslora or false,
                targets = type(targets) == 'table' and json.array(targets) or targets,
                layers = json.array(l.layers), base = l.base or json.null}
   json.set_float(out, 'dropout')
   json.set_float(out, 'alpha')
   return out
end

function M.state(model)
   local shared = model.lora.shared
   return {state_dict = function()
              local s = M.settings(model)
              s.step = shared.step
              return s
           end,
           load_state_dict = function(_, v)
              local step = type(v) == 'table' and v.step or v
              if type(step) ~= 'number' or step < 0 or step ~= math.floor(step) then
                 error('lora: the saved dropout step must be a non-negative integer, got ' .. tostring(step), 0)
              end
              if type(v) == 'table' then
                 local l = model.lora
                 local same = v.r == l.r and v.alpha == l.alpha and (v.rslora or false) == (l.rslora or false)
                    and type(v.layers) == 'table' and #v.layers == #l.layers
                 for i = 1, same and #l.layers or 0 do same = same and v.layers[i] == l.layers[i] end
                 if not same then
                    error(string.format('lora: the checkpoint holds adapters with r %s, alpha %s%s on %d layer(s); ' ..
                                        'this run has r %d, alpha %g%s on %d layer(s)', tostring(v.r), tostring(v.alpha),
                                        v.rslora and ' (rslora)' or '', type(v.layers) == 'table' and #v.layers or 0,
                                        l.r, l.alpha, l.rslora and ' (rslora)' or '', #l.layers), 0)
                 end
              end
              shared.step = step
           end}
end

-- the adapter parameters' names (and which layer each belongs to)
function M.is_adapter(name) return name:match('%.lora_[AB]%.weight$') ~= nil end

---------------------------------------------------------------------------
-- PEFT's adapter_config.json

-- keys that change nothing here: where the adapter came from, how PEFT
-- initialised it (the weights are read), inference flags
local CONFIG_INERT = {base_model_name_or_path = true, revision = true, inference_mode = true, peft_version = true,
                      auto_mapping = true, task_type = true, init_lora_weights = true, megatron_core = true,
                      qalora_group_size = true, layers_pattern = true, peft_type = true}
-- keys read (the others must be absent, null, false or empty: a value that
-- would change PEFT's math is refused by name)
local CONFIG_USED = {r = true, lora_alpha = true, target_modules = true, lora_dropout = true, bias = true,
                     fan_in_fan_out = true, use_rslora = true, modules_to_save = true}

local function neutral(v)
   local json = require 'fsdp.json'
   return v == nil or v == json.null or v == false or (type(v) == 'table' and next(v) == nil)
end

-- Reads DIR/adapter_config.json: the options of M.apply ({r, alpha,
-- dropout, targets, rslora}) for a LoRA adapter PEFT saved. Every key that
-- changes the adapter's math is used (r, lora_alpha, target_modules,
-- lora_dropout, use_rslora) or refused with an error naming it and the file
-- (bias other than "none", modules_to_save, use_dora, rank_pattern,
-- alpha_pattern, layers_to_transform, target_modules as a regular
-- expression, ...). fan_in_fan_out is PEFT's flag for weights stored [in,
-- out] (GPT-2's Conv1D); PEFT sets it from the layer type whatever the file
-- says, and so do the families here (their hf_names' transposes).
function M.read_config(dir)
   local json = require 'fsdp.json'
   local path = dir .. '/adapter_config.json'
   local cfg, err = json.read_file(path)
   if not cfg then error('lora: ' .. tostring(err), 0) end
   local function bad(fmt, ...) error('lora: ' .. path .. ': ' .. string.format(fmt, ...), 0) end
   if type(cfg) ~= 'table' then bad('not a JSON object') end
   if cfg.peft_type ~= nil and cfg.peft_type ~= 'LORA' then
      bad("peft_type is '%s': only LoRA adapters (LORA) are read", tostring(cfg.peft_type))
   end
   if cfg.task_type ~= nil and not neutral(cfg.task_type) and cfg.task_type ~= 'CAUSAL_LM' then
      bad("task_type is '%s': only CAUSAL_LM adapters are read", tostring(cfg.task_type))
   end
   local r, alpha = cfg.r, cfg.lora_alpha
   if type(r) ~= 'number' or r < 1 or r ~= math.floor(r) then bad('r must be a positive integer, got %s', tostring(r)) end
   if alpha == nil or neutral(alpha) then alpha = 8 end -- PEFT's default
   if type(alpha) ~= 'number' or alpha <= 0 then bad('lora_alpha must be a positive number, got %s', tostring(alpha)) end
   local dropout = cfg.lora_dropout
   if neutral(dropout) then dropout = 0 end
   if type(dropout) ~= 'number' or dropout < 0 or dropout >= 1 then
      bad('lora_dropout must be in [0, 1), got %s', tostring(dropout))
   end
   local bias = cfg.bias
   if not neutral(bias) and bias ~= 'none' then
      bad("bias is '%s': adapters that train biases are not supported (bias must be \"none\")", tostring(bias))
   end
   if not neutral(cfg.modules_to_save) then
      bad('modules_to_save lists %s: adapters that train whole modules are not supported', json.encode(cfg.modules_to_save))
   end
   local rslora = cfg.use_rslora
   if neutral(rslora) then rslora = false end
   if type(rslora) ~= 'boolean' then bad('use_rslora must be true or false, got %s', tostring(rslora)) end
   if not neutral(cfg.fan_in_fan_out) and type(cfg.fan_in_fan_out) ~= 'boolean' then
      bad('fan_in_fan_out must be true or false, got %s', tostring(cfg.fan_in_fan_out))
   end
   local targets = cfg.target_modules
   if targets == 'all-linear' then
      targets = 'all-linear'
   elseif type(targets) == 'string' then
      bad("target_modules is the regular expression '%s': give a list of module names", targets)
   elseif type(targets) ~= 'table' or #targets == 0 then
      bad('target_modules must be a non-empty list of module names')
   else
      local list = {}
      for i, t in ipairs(targets) do
         if type(t) ~= 'string' or t == '' then bad('target_modules[%d] is not a module name', i) end
         list[#list + 1] = t
      end
      table.sort(list)
      targets = list
   end
   local keys = {}
   for k in pairs(cfg) do keys[#keys + 1] = k end
   table.sort(keys)
   for _, k in ipairs(keys) do
      if not CONFIG_USED[k] and not CONFIG_INERT[k] and not neutral(cfg[k]) then
         bad("'%s' = %s changes the adapter and is not supported", k, json.encode(cfg[k]))
      end
   end
   return {r = r, alpha = alpha, dropout = dropout, targets = targets, rslora = rslora, path = path}
end

-- the name PEFT saves an adapter tensor of ours under
-- (base_model.model.<the layer's checkpoint path>.lora_A.weight), from the
-- model's checkpoint names of the layer's weight (model:hf_names)
function M.peft_names(model, name)
   local layer, which = name:match('^(.*)%.(lora_[AB])%.weight$')
   if not layer then return nil end
   local cands = {layer .. '.weight'}
   if model.hf_names then cands = model:hf_names(layer .. '.weight') end
   local out = {}
   for _, c in ipairs(cands) do
      out[#out + 1] = 'base_model.model.' .. c:gsub('%.weight$', '') .. '.' .. which .. '.weight'
   end
   return out
end

-- the adapter_config.json PEFT reads for a model with adapters (M.apply's
-- settings); base: base_model_name_or_path
function M.peft_config(model, base)
   local json = require 'fsdp.json'
   local l = model.lora
   local targets = l.targets
   if type(targets) == 'string' and targets ~= 'all-linear' then
      local list = {}
      for n in targets:gmatch('[^,%s]+') do list[#list + 1] = n end
      targets = list
   end
   if targets == 'all-linear' then
      -- the names of the layers wrapped, not PEFT's own reading of all-linear
      local seen, list = {}, {}
      for _, path in ipairs(l.layers) do
         local n = path:match('([^.]+)$')
         if not seen[n] then seen[n] = true; list[#list + 1] = n end
      end
      table.sort(list)
      targets = list
   end
   local fan_in_fan_out = false
   if model.hf_names then
      for _, path in ipairs(l.layers) do
         local _, transposed = model:hf_names(path .. '.weight')
         fan_in_fan_out = fan_in_fan_out or transposed or false
      end
   end
   local cfg = {peft_type = 'LORA', task_type = 'CAUSAL_LM', base_model_name_or_path = base or json.null,
                r = l.r, lora_alpha = l.alpha, lora_dropout = l.dropout, bias = 'none',
                target_modules = type(targets) == 'table' and json.array(targets) or targets,
                fan_in_fan_out = fan_in_fan_out, use_rslora = l.rslora or false, modules_to_save = json.null,
                inference_mode = true, init_lora_weights = true}
   json.set_float(cfg, 'lora_dropout')
   return cfg
end

return M
