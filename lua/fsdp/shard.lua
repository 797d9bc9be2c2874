-- fsdp.shard: flat parameters. fsdp.shard(model, opts) groups the model's
-- parameters into units (each of model:units(), then the rest as the root
-- unit), concatenates each unit's tensors into one flat f32 buffer padded to
-- a multiple of the shard group size, and gives this rank its contiguous
-- slice as the fp32 master copy, with its gradient and (in the optimizer)
-- its state. Parameters are initialized slice by slice with counter-based
-- random numbers, so no rank ever materializes a tensor it does not own and
-- every world size starts from the same values.
--
-- In a world of one the slice is the whole unit and the parameters are
-- views into it. (Gathering and reduce-scattering across ranks plug in at
-- FlatParam:gather / :reduce_grads.)
local T = require 'fsdp.tensor'
local nn = require 'fsdp.nn'

local M = {}

local FlatParam = {}
FlatParam.__index = FlatParam
M.FlatParam = FlatParam

local function numel_of(shape)
   local n = 1
   for _, d in ipairs(shape) do n = n * d end
   return n
end

-- specs: parameter specs of one unit (from Module:parameter_specs)
function FlatParam.new(name, specs, group_size, group_rank)
   local self = setmetatable({name = name, specs = {}, group_size = group_size, group_rank = group_rank}, FlatParam)
   local offset = 0
   for _, s in ipairs(specs) do
      local n = numel_of(s.shape)
      self.specs[#self.specs + 1] = {name = s.name, module = s.module, key = s.key, shape = s.shape,
                                     init = s.init, offset = offset, numel = n}
      offset = offset + n
   end
   self.numel = offset
   self.padded = math.ceil(offset / group_size) * group_size
   self.shard_size = self.padded / group_size
   self.shard_offset = group_rank * self.shard_size -- first flat element this rank owns
   return self
end

-- allocate and initialize this rank's slice
function FlatParam:materialize(seed)
   self.shard = T.zeros({self.shard_size}, 'f32')
   self.grad_shard = T.zeros({self.shard_size}, 'f32')
   local lo, hi = self.shard_offset, self.shard_offset + self.shard_size
   local p = self.shard:ptr()
   for _, s in ipairs(self.specs) do
      local a, b = math.max(lo, s.offset), math.min(hi, s.offset + s.numel)
      if a < b then nn.init_values(s, p + (a - lo), b - a, a - s.offset, seed) end
   end
   if self.group_size == 1 then self:bind(self.shard, self.grad_shard) end
end

-- points every parameter (and its .grad) at its place in full / full_grad,
-- keeping the Lua Tensor objects stable so recorded closures see the change
function FlatParam:bind(full, full_grad)
   for _, s in ipairs(self.specs) do
      local p = s.module[s.key]
      local v = full:view(s.shape, nil, s.offset)
      local g = full_grad and full_grad:view(s.shape, nil, s.offset) or nil
      if p then
         if p._c ~= nil then p:free() end
         p._c = v._c
         v._c = nil
         if p.grad and g then
            if p.grad._c ~= nil then p.grad:free() end
            p.grad._c = g._c
            g._c = nil
         elseif g then p.grad = g end
      else
         v.requires_grad = true
         v.name = s.name
         v.grad = g
         s.module[s.key] = v
      end
   end
end

-- weight decay applies to matrices (dim >= 2), not to norms and biases
function FlatParam:segments()
   local out = {}
   local lo, hi = self.shard_offset, self.shard_offset + self.shard_size
   for _, s in ipairs(self.specs) do
      local a, b = math.max(lo, s.offset), math.min(hi, s.offset + s.numel)
      if a < b then
         out[#out + 1] = {offset = a - lo, numel = b - a, decay = #s.shape >= 2, name = s.name}
      end
   end
   return out
end

---------------------------------------------------------------------------

local Sharded = {}
Sharded.__index = Sharded
M.Sharded = Sharded

-- opts: strategy ('none' | 'full' | 'grad_op' | ...), seed, group_size, group_rank
function M.shard(model, opts)
   opts = opts or {}
   local group_size, group_rank = opts.group_size or 1, opts.group_rank or 0
   local self = setmetatable({model = model, strategy = opts.strategy or 'full', units = {},
                              group_size = group_size, group_rank = group_rank}, Sharded)
   -- parameters of each unit, then everything else as the root unit
   local taken = {}
   local all = model:parameter_specs()
   local unit_modules = model:units()
   local prefix_of = {}
   for _, s in ipairs(all) do prefix_of[s.module] = prefix_of[s.module] or s.name:sub(1, #s.name - #s.key) end
   for i, unit in ipairs(unit_modules) do
      local specs = {}
      for _, s in ipairs(unit:parameter_specs()) do
         -- find the full name of this parameter in the model
         local full = prefix_of[s.module] .. s.key
         taken[full] = true
         specs[#specs + 1] = {name = full, module = s.module, key = s.key, shape = s.shape, init = s.init}
      end
      self.units[#self.units + 1] = FlatParam.new('unit' .. i, specs, group_size, group_rank)
   end
   local rest = {}
   for _, s in ipairs(all) do if not taken[s.name] then rest[#rest + 1] = s end end
   if #rest > 0 then table.insert(self.units, 1, FlatParam.new('root', rest, group_size, group_rank)) end
   for _, u in ipairs(self.units) do u:materialize(opts.seed or 0) end
   model._sharded = self
   return self
end

function Sharded:zero_grad()
   for _, u in ipairs(self.units) do u.grad_shard:zero() end
end

-- sum of squares of this rank's gradient slices (the caller all-reduces)
function Sharded:grad_sumsq()
   local s = 0
   for _, u in ipairs(self.units) do s = s + u.grad_shard:sumsq() end
   return s
end

function Sharded:num_parameters()
   local n = 0
   for _, u in ipairs(self.units) do n = n + u.numel end
   return n
end

-- layout for checkpoint indexes
function Sharded:layout()
   local units = {}
   for i, u in ipairs(self.units) do
      local params = {}
      for j, s in ipairs(u.specs) do
         params[j] = {name = s.name, shape = s.shape, offset = s.offset, numel = s.numel}
      end
      units[i] = {name = u.name, numel = u.numel, padded = u.padded, params = params}
   end
   return units
end

return M
