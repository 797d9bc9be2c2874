-- fsdp.nn: modules. A module declares its parameters (shape + init) when it
-- is built and owns no memory until it is materialized: model:materialize()
-- on one device, or fsdp.shard(model), which gives each rank only its slice.
-- Forward errors are prefixed with the module path:
--   in GPT.transformer.h.3.attn (CausalSelfAttention): linear: input [...] ...
-- The layers here are the ones every family shares (Linear, Embedding,
-- LayerNorm, RMSNorm, ModuleList); attention, MLPs and blocks are written in
-- each model's own file (lua/models/), calling ops.attention.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local ops = require 'fsdp.ops'
local AG = require 'fsdp.autograd'
local C, ffi = bind.C, bind.ffi

local M = {}

---------------------------------------------------------------------------
-- errors carrying a module path

local ModuleError = {}
ModuleError.__index = ModuleError
ModuleError.__tostring = function(e)
   return 'in ' .. table.concat(e.path, '.') .. ' (' .. e.kind .. '): ' .. e.msg
end
M.ModuleError = ModuleError

---------------------------------------------------------------------------
-- Module

local Module = {}
Module.__index = Module
Module.__name = 'Module'
M.Module = Module

-- the module's dotted path from the root of its model: GPT.transformer.h.3
function Module:path()
   local parts, m = {}, self
   while m do
      table.insert(parts, 1, m._label or m.__name)
      m = m._parent
   end
   return table.concat(parts, '.')
end

-- forward with errors located: the innermost module that fails stamps its
-- path and kind on the message; outer modules pass it through
local function call(self, ...)
   local ok, a, b, c = pcall(self.forward, self, ...)
   if ok then return a, b, c end
   local e = a
   if getmetatable(e) ~= ModuleError then
      e = setmetatable({path = {self:path()}, kind = self.__name, msg = tostring(e)}, ModuleError)
   end
   error(e, 0)
end

-- a new module class; instances are made with Class.new(...) or Class(...)
function M.class(name, parent)
   parent = parent or Module
   local cls = setmetatable({}, {__index = parent, __call = function(c, ...) return c.new(...) end})
   cls.__index = cls
   cls.__name = name
   cls.__call = call
   cls.__tostring = function(m) return m.__name end
   return cls
end

function Module.init(self)
   self._params = {}
   self._children = {}
   return self
end

function Module.instance(cls)
   return Module.init(setmetatable({}, cls))
end

-- declares parameter `name` with `shape` and an initializer:
--   {'normal', std [, mean]}, {'uniform', lo, hi}, 'zeros', 'ones',
--   {'load', fn} (fn(spec, out_ptr, n, first) reads elements first..first+n)
function Module:param(name, shape, init)
   for i, n in ipairs(shape) do
      if type(n) ~= 'number' or n < 1 or n ~= math.floor(n) then
         error(string.format("%s: parameter '%s' has bad size %s in dimension %d",
                             self.__name, name, tostring(n), i), 2)
      end
   end
   self._params[#self._params + 1] = {name = name, shape = shape, init = init}
end

function Module:add(name, child)
   if type(child) ~= 'table' or not child._params then
      error(string.format("%s: child '%s' is not a module", self.__name, tostring(name)), 2)
   end
   child._label = tostring(name)
   child._parent = self
   self._children[#self._children + 1] = {name = tostring(name), module = child}
   self[name] = child
   return child
end

-- every parameter, depth first in declaration order:
-- {name = 'h.0.attn.c_attn.weight', module = m, key = 'weight', shape, init,
-- frozen = true when it takes no gradient (Module:freeze)}
function Module:parameter_specs(prefix, out)
   out = out or {}
   prefix = prefix or ''
   for _, p in ipairs(self._params) do
      out[#out + 1] = {name = prefix .. p.name, module = self, key = p.name, shape = p.shape, init = p.init,
                       frozen = p.frozen or nil}
   end
   for _, c in ipairs(self._children) do
      c.module:parameter_specs(prefix .. c.name .. '.', out)
   end
   return out
end

-- Frozen parameters take no gradient (PyTorch's requires_grad_(False)): the
-- autograd computes none for them (gradients still flow through them to
-- what lies below), fsdp.shard keeps no gradient or optimizer state for
-- them, and the optimizer never moves them. freeze(pattern) freezes every
-- parameter whose full name matches the Lua pattern (all when nil);
-- unfreeze likewise. Call them before materialize / fsdp.shard. Returns the
-- number of parameters changed.
local function set_frozen(self, pattern, frozen)
   if self._materialized then
      error(self.__name .. ': freeze/unfreeze before materialize or fsdp.shard (the model is already allocated)', 3)
   end
   local n = 0
   for _, s in ipairs(self:parameter_specs()) do
      if pattern == nil or s.name:match(pattern) then
         for _, p in ipairs(s.module._params) do
            if p.name == s.key and (p.frozen or false) ~= frozen then p.frozen = frozen or nil; n = n + 1 end
         end
      end
   end
   return n
end
function Module:freeze(pattern) return set_frozen(self, pattern, true) end
function Module:unfreeze(pattern) return set_frozen(self, pattern, false) end

-- the number of parameter elements that take a gradient
function Module:num_trainable_parameters()
   local n = 0
   for _, s in ipairs(self:parameter_specs()) do
      if not s.frozen then
         local k = 1
         for _, d in ipairs(s.shape) do k = k * d end
         n = n + k
      end
   end
   return n
end

function Module:named_parameters()
   local out = {}
   for _, s in ipairs(self:parameter_specs()) do
      local t = s.module[s.key]
      if not t then error(self.__name .. ': parameters are not materialized (call :materialize() or fsdp.shard)', 2) end
      out[#out + 1] = {s.name, t}
   end
   return out
end

function Module:parameters()
   local out = {}
   for i, np in ipairs(self:named_parameters()) do out[i] = np[2] end
   return out
end

function Module:num_parameters()
   local n = 0
   for _, s in ipairs(self:parameter_specs()) do
      local k = 1
      for _, d in ipairs(s.shape) do k = k * d end
      n = n + k
   end
   return n
end

-- seed of one parameter: a pure function of the run seed and its name
function M.param_seed(seed, name)
   return C.fsdp_hash64(name, #name, seed)
end

-- fills out[0 .. n) with elements first .. first+n of the parameter's init
function M.init_values(spec, out_ptr, n, first, seed)
   local init = spec.init
   local kind = type(init) == 'table' and init[1] or init
   if kind == 'zeros' then ffi.fill(out_ptr, n * 4, 0)
   elseif kind == 'ones' or kind == 'const' then
      local v = kind == 'ones' and 1 or init[2]
      for i = 0, n - 1 do out_ptr[i] = v end
   elseif kind == 'normal' then
      C.fsdp_init_normal(out_ptr, n, M.param_seed(seed, spec.name), first, init[3] or 0, init[2])
   elseif kind == 'uniform' then
      C.fsdp_init_uniform(out_ptr, n, M.param_seed(seed, spec.name), first, init[2], init[3])
   elseif kind == 'load' then
      -- values from a file: init[2](spec, out_ptr, n, first) fills elements
      -- first .. first+n of the parameter (row-major), reading only those
      init[2](spec, out_ptr, n, first)
   else
      error(string.format("parameter '%s': unknown init '%s'", spec.name, tostring(kind)), 0)
   end
end

-- gives every parameter its own storage, initialized from `seed`
function Module:materialize(seed)
   seed = seed or 0
   for _, s in ipairs(self:parameter_specs()) do
      local t = T.empty(s.shape, 'f32')
      M.init_values(s, t:ptr(), t:numel(), 0, seed)
      t.requires_grad = not s.frozen
      t.name = s.name
      s.module[s.key] = t
   end
   self._materialized = true
   return self
end

function Module:zero_grad()
   for _, p in ipairs(self:parameters()) do
      if p.grad then p.grad:zero() end
   end
end

-- {name -> tensor}
function Module:state_dict()
   local sd = {}
   for _, np in ipairs(self:named_parameters()) do sd[np[1]] = np[2] end
   return sd
end

-- copies values in; every parameter must be present with its shape
function Module:load_state_dict(sd, source)
   source = source or 'state dict'
   for _, np in ipairs(self:named_parameters()) do
      local name, p = np[1], np[2]
      local v = sd[name]
      if not v then error(string.format("%s: parameter '%s' is missing", source, name), 2) end
      if v:numel() ~= p:numel() or #v.shape ~= #p.shape then
         error(string.format("%s: parameter '%s' has shape %s, the model wants %s", source, name,
                             T.shape_str(v.shape), T.shape_str(p.shape)), 2)
      end
      for i = 1, #p.shape do
         if v.shape[i] ~= p.shape[i] then
            error(string.format("%s: parameter '%s' has shape %s, the model wants %s", source, name,
                                T.shape_str(v.shape), T.shape_str(p.shape)), 2)
         end
      end
      p:copy(v)
   end
end

-- saves the parameters to a safetensors file (names as in named_parameters)
function Module:save(path, metadata)
   require('fsdp.safetensors').write(path, self:named_parameters(), metadata)
end

-- loads parameters saved by :save (or any safetensors file with the names)
function Module:load(path)
   local st = require('fsdp.safetensors').open(path)
   local sd = {}
   for _, np in ipairs(self:named_parameters()) do
      if st:has(np[1]) then sd[np[1]] = st:tensor(np[1], 'f32') end
   end
   self:load_state_dict(sd, path)
   for _, t in pairs(sd) do t:free() end
   st:close()
end

-- the units the model is sharded and checkpointed by (blocks); default none
function Module:units() return {} end

---------------------------------------------------------------------------
-- containers

local ModuleList = M.class('ModuleList')
M.ModuleList = ModuleList
function ModuleList.new(list)
   local self = Module.instance(ModuleList)
   self.n = 0
   for _, m in ipairs(list or {}) do self:append(m) end
   return self
end
-- items are named '0', '1', ... (as in PyTorch) and indexed 1..n from Lua
function ModuleList:append(m)
   self:add(tostring(self.n), m)
   self.n = self.n + 1
   self[self.n] = m
   return m
end
function ModuleList:forward() error('ModuleList is a container; call its items', 0) end

---------------------------------------------------------------------------
-- layers

local Linear = M.class('Linear')
M.Linear = Linear
-- opts: bias (default true), std (default 0.02)
function Linear.new(n_in, n_out, opts)
   opts = opts or {}
   local self = Module.instance(Linear)
   self.n_in, self.n_out = n_in, n_out
   self:param('weight', {n_out, n_in}, {'normal', opts.std or 0.02})
   if opts.bias ~= false then self:param('bias', {n_out}, 'zeros') end
   return self
end
function Linear:forward(x) return ops.linear(x, self.weight, self.bias) end
-- elements its forward keeps for backward (the planner's activation estimate)
function Linear:activation_elems(N) return N * self.n_out end

local Embedding = M.class('Embedding')
M.Embedding = Embedding
function Embedding.new(n_vocab, dim, opts)
   opts = opts or {}
   local self = Module.instance(Embedding)
   self.n_vocab, self.dim = n_vocab, dim
   self:param('weight', {n_vocab, dim}, {'normal', opts.std or 0.02})
   return self
end
function Embedding:forward(idx) return ops.embedding(idx, self.weight) end
-- elements its forward keeps for backward (the planner's activation estimate)
function Embedding:activation_elems(N) return N * self.dim end

local LayerNorm = M.class('LayerNorm')
M.LayerNorm = LayerNorm
function LayerNorm.new(dim, opts)
   opts = opts or {}
   local self = Module.instance(LayerNorm)
   self.eps = opts.eps or 1e-5
   self.weight_dim = dim
   self:param('weight', {dim}, 'ones')
   if opts.bias ~= false then self:param('bias', {dim}, 'zeros') end
   return self
end
function LayerNorm:forward(x) return ops.layernorm(x, self.weight, self.bias, self.eps) end
-- elements its forward keeps for backward (the planner's activation estimate)
function LayerNorm:activation_elems(N) return N * self.weight_dim + 2 * N end

local RMSNorm = M.class('RMSNorm')
M.RMSNorm = RMSNorm
function RMSNorm.new(dim, opts)
   opts = opts or {}
   local self = Module.instance(RMSNorm)
   self.eps = opts.eps or 1e-6
   self.weight_dim = dim
   self:param('weight', {dim}, 'ones')
   return self
end
function RMSNorm:forward(x) return ops.rmsnorm(x, self.weight, self.eps) end
-- elements its forward keeps for backward (the planner's activation estimate)
function RMSNorm:activation_elems(N) return N * self.weight_dim + N end

-- The second argument of a model's forward call, as its modules read it:
--   nil                       a batch of whole sequences
--   an fsdp.kv_cache object   decoding: the new positions start at cache.pos
--   {positions = i32 [B, T]}  packed samples: each token's position in its
--                             own sample (0 at a sample's start); attention
--                             stays within a sample, positions restart
-- returns cache, positions
function M.forward_context(ctx)
   if ctx == nil then return nil, nil end
   if require('fsdp.kv_cache').is_cache(ctx) then return ctx, nil end
   if type(ctx) ~= 'table' then
      error('forward: the second argument must be a KV cache or a table {positions = ...}, got ' .. type(ctx), 0)
   end
   if ctx.cache and ctx.positions then error('forward: packed positions and a KV cache do not go together', 0) end
   return ctx.cache, ctx.positions
end

-- what ops.attention keeps for backward per call (its output and the
-- log-sum-exp of each query row), for the attention modules' own
-- activation_elems: N tokens in B sequences of T, n_head heads of head_dim
function M.attention_activation_elems(N, B, T_, n_head, head_dim)
   return N * n_head * head_dim + B * n_head * T_
end

---------------------------------------------------------------------------
-- activation checkpointing, applied from outside the model

-- wraps the forward of each unit (model:units()) in autograd.checkpoint;
-- the unit's first argument is the checkpointed input, the others (a KV
-- cache, positions) ride along
function M.checkpoint_units(model)
   for _, unit in ipairs(model:units()) do
      local forward = unit.forward
      unit.forward = function(self, x, ...)
         local n, rest = select('#', ...), {...}
         return AG.checkpoint(function(y) return forward(self, y, unpack(rest, 1, n)) end, x)
      end
   end
   return model
end


---------------------------------------------------------------------------
-- more layers

-- Embedding whose row padding_idx gets no gradient from the lookup (torch's
-- nn.Embedding(padding_idx=...), as Hugging Face's Llama/Mistral/Mixtral/OPT
-- build theirs); padding_idx nil behaves as Embedding
local PaddedEmbedding = M.class('PaddedEmbedding', Embedding)
M.PaddedEmbedding = PaddedEmbedding
function PaddedEmbedding.new(n_vocab, dim, padding_idx, opts)
   local self = Embedding.new(n_vocab, dim, opts)
   setmetatable(self, PaddedEmbedding)
   if padding_idx ~= nil and (padding_idx < 0 or padding_idx >= n_vocab) then
      error(string.format('PaddedEmbedding: padding_idx %d is outside [0, %d)', padding_idx, n_vocab), 2)
   end
   self.padding_idx = padding_idx
   return self
end
function PaddedEmbedding:forward(idx) return ops.embedding_padded(idx, self.weight, self.padding_idx) end

return M
