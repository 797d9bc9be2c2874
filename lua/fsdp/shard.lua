-- fsdp.shard: fully sharded data parallelism, applied to a model from
-- outside (the torchtitan way): fsdp.shard(model, opts).
--
-- Units. Each of model:units() (the transformer blocks) and the root unit
-- (every other parameter: embeddings, final norm, head) becomes a FlatParam:
-- its tensors concatenated into one flat f32 buffer, padded to a multiple of
-- the shard group size; rank r of the group owns elements [r*S, (r+1)*S) as
-- its fp32 master copy, with its gradient and (in the optimizer) its state.
-- Parameters are initialized slice by slice with counter-based random
-- numbers: no rank ever materializes a tensor it does not own, and every
-- world size starts from the same values.
--
-- Strategies (the shard group shards, the replicate group averages):
--   full            ZeRO-3: gather before forward, free after; gather again for backward
--   grad_op         ZeRO-2: gather before forward, keep until the unit's backward ends
--   none            DDP: every rank holds everything; gradients all-reduced
--   hybrid_full     full inside groups of G ranks, replicated across groups
--   hybrid_grad_op  grad_op inside groups of G ranks, replicated across groups
--
-- Hooks. A unit's forward is wrapped: gather (waiting for the prefetch
-- started by the previous unit), start the next unit's gather, run, free.
-- On the autograd tape it leaves a pre-backward entry (gather again, bind
-- gradient views, prefetch the unit before it) and a post-backward entry
-- (reduce-scatter its gradients, non-blocking, as soon as its backward ends).
-- backward() waits for the outstanding reductions before it returns.
--
-- Mixed precision: gather in param_dtype (f32/bf16/f16), reduce in
-- reduce_dtype, keep fp32 masters; CPU kernels compute in f32 on the
-- gathered values converted back (bf16/f16 are storage on this CPU).
--
-- Frozen parameters (Module:freeze, fsdp.lora) cost only their values: a
-- unit keeps them in a second flat of its own (padded and sliced the same
-- way), whose slice is stored in the gather dtype (param_dtype) with no fp32
-- master, no gradient, no optimizer state and no reduce-scatter. The unit's
-- first flat (u.shard, u.grad_shard, u.specs: what the optimizer and
-- checkpoints see) holds its trainable parameters only. A unit whose forward
-- recorded no backward op (nothing in it takes a gradient and none flows
-- through it) is freed right after its forward and not gathered again.
local T = require 'fsdp.tensor'
local nn = require 'fsdp.nn'
local AG = require 'fsdp.autograd'
local dist = require 'fsdp.dist'
local kernels = require 'fsdp.kernels'
local check = require('fsdp.ffi').check
local ffi, C = require('fsdp.ffi').ffi, require('fsdp.ffi').C

local M = {}

M.STRATEGIES = {full = true, grad_op = true, none = true, hybrid_full = true, hybrid_grad_op = true}

local FlatParam = {}
FlatParam.__index = FlatParam
M.FlatParam = FlatParam

local bind -- (specs, full): points parameters at their places in a flat buffer

local function numel_of(shape)
   local n = 1
   for _, d in ipairs(shape) do n = n * d end
   return n
end

-- lays specs end to end into `flat` (specs, numel, padded to a multiple of
-- G, shard_size, shard_offset: the first element rank r owns)
local function lay_out(flat, specs, G, r)
   flat.specs = {}
   local offset = 0
   for _, s in ipairs(specs) do
      local n = numel_of(s.shape)
      flat.specs[#flat.specs + 1] = {name = s.name, module = s.module, key = s.key, shape = s.shape,
                                     init = s.init, offset = offset, numel = n, frozen = s.frozen}
      offset = offset + n
   end
   flat.numel = offset
   flat.padded = math.ceil(math.max(offset, 1) / G) * G
   flat.shard_size = flat.padded / G
   flat.shard_offset = r * flat.shard_size
   return flat
end

-- specs: {name, module, key, shape, init, frozen} of one unit; owner: the
-- Sharded. The unit itself is the flat of its trainable parameters;
-- self.frozen (when it has frozen ones) the flat of the others.
function FlatParam.new(owner, name, index, specs)
   local G = owner.shard_group and owner.shard_group.size or 1
   local r = owner.shard_group and owner.shard_group.rank or 0
   local self = setmetatable({owner = owner, name = name, index = index, group_size = G}, FlatParam)
   local train, frozen = {}, {}
   for _, s in ipairs(specs) do
      if s.frozen then frozen[#frozen + 1] = s else train[#train + 1] = s end
   end
   lay_out(self, train, G, r)
   if #frozen > 0 then self.frozen = lay_out({frozen = true, name = name}, frozen, G, r) end
   -- the flats gathered for compute: the trainable one unless it is empty
   self.parts = {}
   if self.numel > 0 or not self.frozen then self.parts[1] = self end
   self.parts[#self.parts + 1] = self.frozen
   self.trainable = self.numel > 0
   return self
end

-- allocate and initialize this rank's slice (and nothing else)
function FlatParam:materialize(seed)
   local o = self.owner
   local dev = o.device
   -- initialized on the host, then moved (the init functions are host code);
   -- offloaded shards stay on the host, in page-locked memory
   local host = o.offload and T.pinned({self.shard_size}, 'f32') or T.zeros({self.shard_size}, 'f32')
   local lo, hi = self.shard_offset, self.shard_offset + self.shard_size
   local p = host:ptr()
   for _, s in ipairs(self.specs) do
      local a, b = math.max(lo, s.offset), math.min(hi, s.offset + s.numel)
      if a < b then nn.init_values(s, p + (a - lo), b - a, a - s.offset, seed) end
   end
   if o.offload then
      self.shard, self.grad_shard = host, T.pinned({self.shard_size}, 'f32')
   else
      self.shard = host:to_device(dev)
      if self.shard ~= host then host:free() end
      self.grad_shard = T.zeros({self.shard_size}, 'f32', nil, dev)
   end
   -- resident: one shard holds the whole unit where it computes
   self.resident = self.group_size == 1 and not o.offload
   if self.frozen then self:materialize_frozen(seed) end
   if self.resident then
      -- unsharded: the parameters live in the shard itself, for good
      self:bind_params(self.shard)
      self:bind_grads(self.grad_shard)
      self.gathered = true
   end
end

-- the frozen flat's slice: initialized in f32 on the host (its fingerprint,
-- which checkpoints compare, is taken there), then stored in the gather
-- dtype where it is gathered (f32 where the unit is resident: it computes
-- on the slice itself)
function FlatParam:materialize_frozen(seed)
   local o, f = self.owner, self.frozen
   local host = T.zeros({f.shard_size}, 'f32')
   local lo, hi = f.shard_offset, f.shard_offset + f.shard_size
   local p = host:ptr()
   for _, s in ipairs(f.specs) do
      local a, b = math.max(lo, s.offset), math.min(hi, s.offset + s.numel)
      if a < b then
         nn.init_values(s, p + (a - lo), b - a, a - s.offset, seed)
         o.frozen_print = o.frozen_print + C.fsdp_fingerprint_f32(p + (a - lo), b - a, nn.param_seed(0, s.name),
                                                                   a - s.offset)
      end
   end
   f.dtype = self.resident and 'f32' or o.param_dtype
   local h = host
   if f.dtype ~= 'f32' then h = host:clone(f.dtype); host:free() end -- cast on the host
   if o.offload then
      f.shard = T.pinned({f.shard_size}, f.dtype):copy(h)
      h:free()
   else
      f.shard = h:to_device(o.device)
      if f.shard ~= h then h:free() end
   end
   if self.resident then bind(f.specs, f.shard) end
end

-- points each parameter at its place in `full`, keeping the Lua Tensor
-- objects (which recorded closures hold) and swapping their storage
bind = function(specs, full)
   for _, s in ipairs(specs) do
      local v = full:view(s.shape, nil, s.offset)
      local p = s.module[s.key]
      if p then
         if p._c ~= nil then p:free() end
         p._c, v._c = v._c, nil
      else
         v.requires_grad = not s.frozen
         v.name = s.name
         s.module[s.key] = v
      end
   end
end

function FlatParam:bind_params(full) bind(self.specs, full) end

function FlatParam:bind_grads(full_grad)
   for _, s in ipairs(self.specs) do
      local p = s.module[s.key]
      local g = full_grad:view(s.shape, nil, s.offset)
      if p.grad then
         if p.grad._c ~= nil then p.grad:free() end
         p.grad._c, g._c = g._c, nil
      else
         p.grad = g
      end
   end
end

local function unbind(flat, field)
   for _, s in ipairs(flat.specs) do
      local p = s.module[s.key]
      local t = field == 'grad' and p and p.grad or p
      if t and t._c ~= nil then
         t:free()
         t._freed_by = 'unit ' .. flat.name .. ' is not gathered now'
      end
   end
end

-- starts the all-gather of one flat (the trainable one, or the frozen one)
-- into a new f32 buffer, in the gather dtype (param_dtype: the trainable
-- flat's f32 slice is cast for it, the frozen one is stored in it); returns
-- the request (nil when it completed); on_done runs when it has
local function gather_flat(o, flat, async, on_done)
   local dev = o.device
   local full = T.empty({flat.padded}, 'f32', nil, dev)
   -- an offloaded shard is copied up first
   local src = o.offload and flat.shard:to_device(dev) or flat.shard
   local function done()
      if src ~= flat.shard then src:free() end
      flat.full = full
      bind(flat.specs, full)
      on_done()
   end
   if not o.shard_group then -- offloaded and unsharded: the copy was the gather
      full:copy(src)
      done()
      return nil
   end
   local gdt = o.param_dtype
   if gdt == 'f32' and src.dtype == 'f32' then return o.shard_group:all_gather(full, src, async, done) end
   local send = src.dtype == gdt and src or T.empty({flat.shard_size}, gdt, nil, dev):copy(src)
   local recv = T.empty({flat.padded}, gdt, nil, dev)
   return o.shard_group:all_gather(recv, send, async, function()
      full:copy(recv)
      if send ~= src then send:free() end
      recv:free()
      done()
   end)
end

-- starts (or finishes, when not async) the all-gather of the full unit:
-- each of its flats (self.parts) not gathered yet
function FlatParam:gather(async)
   if self.gathered or self.pending_gather then return end
   local o = self.owner
   local todo = {}
   for _, f in ipairs(self.parts) do if not f.full then todo[#todo + 1] = f end end
   local left = #todo
   local function one_done()
      left = left - 1
      if left == 0 then self.gathered = true; self.pending_gather = nil end
   end
   local pending = {}
   for _, f in ipairs(todo) do
      local req = gather_flat(o, f, async, one_done)
      if req and async then pending[#pending + 1] = req end
   end
   if left == 0 then self.gathered = true end
   self.pending_gather = (async and left > 0 and #pending > 0) and pending or nil
end

local clock = require('fsdp.run').now
local sq_out = require('fsdp.ffi').ffi.new('double[1]') -- fsdp_axpy_sumsq_cpu's result

-- waits for a collective, adding the time to the owner's comm_wait
local function timed_wait(owner, pending)
   local t0 = clock()
   pending:wait()
   owner.comm_wait = owner.comm_wait + clock() - t0
end

function FlatParam:wait_gather()
   local p = self.pending_gather
   if p then
      for _, req in ipairs(p) do timed_wait(self.owner, req) end
      -- (done() clears it too; a gather cancelled by dist.resync() after an
      -- interrupt has no done() left to run, so gather again below)
      self.pending_gather = nil
   end
   if not self.gathered then self:gather(false) end
end

-- frees the gathered parameters (sharded or offloaded units only; not
-- while the owner holds them: Sharded:unshard)
function FlatParam:free_full()
   if self.resident or not self.gathered or self.owner.held then return end
   for _, f in ipairs(self.parts) do
      unbind(f, 'param')
      f.full:free()
      f.full = nil
   end
   self.gathered = false
end

-- before the unit's backward: parameters gathered, gradient views bound
function FlatParam:pre_backward()
   self:wait_gather()
   if self.resident then self.grad_sq = nil end -- its gradient changes now
   if not self.resident and not self.full_grad and self.trainable then
      self.full_grad = T.zeros({self.padded}, 'f32', nil, self.owner.device)
      self:bind_grads(self.full_grad)
   end
end

-- after the unit's backward: reduce its gradients into grad_shard
function FlatParam:post_backward()
   local o = self.owner
   self:free_full()
   if not self.trainable then return end -- frozen: nothing to reduce
   if not o.sync then return end -- accumulating: keep full_grad for the next micro-batch
   -- the gradient slice's share of the global norm, taken where the slice
   -- is final (clipping then reads grad_sq instead of passing over it again)
   if self.resident and not o.replicate_group and self.grad_shard.device < 0 then
      self.grad_sq = self.grad_shard:sumsq()
   end
   if self.group_size == 1 and o.offload then
      -- unsharded and offloaded: the gradient comes down and is added on the host
      local full_grad = self.full_grad
      self.full_grad = nil
      unbind(self, 'grad')
      local h = full_grad:cpu()
      check(kernels.cpu.axpy_sumsq(sq_out, self.grad_shard:ptr(), 1, h:ptr(), self.shard_size), 'offload')
      if not o.replicate_group then self.grad_sq = sq_out[0] end
      h:free(); full_grad:free()
   end
   if self.group_size == 1 then
      if o.replicate_group then
         o.pending[#o.pending + 1] = o.replicate_group:all_reduce(self.grad_shard, 'avg', o.async_reduce)
      end
      return
   end
   local full_grad = self.full_grad
   self.full_grad = nil
   unbind(self, 'grad')
   local rd = o.reduce_dtype
   local send = full_grad
   local dev = o.device
   if rd ~= 'f32' then send = T.empty({self.padded}, rd, nil, dev):copy(full_grad); full_grad:free() end
   local recv = T.empty({self.shard_size}, rd, nil, dev)
   -- at most two reductions in flight: their gathered gradients are freed
   -- as they complete, so memory holds two units' gradients, not all
   while #o.pending >= 2 do timed_wait(o, table.remove(o.pending, 1)) end
   o.pending[#o.pending + 1] = o.shard_group:reduce_scatter(recv, send, 'avg', o.async_reduce, function()
      local K = kernels.for_device(self.grad_shard.device)
      local r = rd == 'f32' and recv or recv:clone('f32')
      local h = r:to_device(self.grad_shard.device) -- offloaded: the slice comes down
      if h.device < 0 then -- on the host: add and take the norm's share in one pass
         check(kernels.cpu.axpy_sumsq(sq_out, self.grad_shard:ptr(), 1, h:ptr(), self.shard_size), 'reduce-scatter')
         self.grad_sq = sq_out[0]
      else
         check(K.axpy(self.grad_shard:ptr(), 1, h:ptr(), self.shard_size), 'reduce-scatter')
      end
      if h ~= r then h:free() end
      if r ~= recv then r:free() end
      send:free(); recv:free()
      if o.replicate_group then
         o.replicate_group:all_reduce(self.grad_shard, 'avg')
         self.grad_sq = h.device < 0 and self.grad_shard:sumsq() or nil
      end
   end)
end

-- the runs of this rank's slice the optimizer updates: every trainable
-- parameter's part of it (frozen ones are in the frozen flat, never here);
-- decay: whether weight decay applies by default (matrices, dim >= 2; not
-- norms and biases)
function FlatParam:segments()
   local out = {}
   local lo, hi = self.shard_offset, self.shard_offset + self.shard_size
   for _, s in ipairs(self.specs) do
      local a, b = math.max(lo, s.offset), math.min(hi, s.offset + s.numel)
      if a < b and not s.frozen then
         out[#out + 1] = {offset = a - lo, numel = b - a, decay = #s.shape >= 2, name = s.name, shape = s.shape}
      end
   end
   return out
end

---------------------------------------------------------------------------

local Sharded = {}
Sharded.__index = Sharded
M.Sharded = Sharded

local function wrap_forward(self, module, fp, is_root)
   local inner = module.forward
   module.forward = function(m, ...)
      local units = self.units
      fp:wait_gather()
      -- prefetch the next `prefetch` blocks in forward order (units[i + 1]
      -- is block i; the root, units[1], runs first)
      local first = is_root and 2 or fp.index + 2
      for i = first, math.min(first + self.prefetch - 1, #units) do units[i]:gather(true) end
      local recording = AG.is_enabled()
      if recording and self.held then
         error('shard: the weights are held gathered by unshard() for inference; run the forward under '
               .. 'fsdp.no_grad, or call reshard() before training', 2)
      end
      -- needed: the unit's forward recorded a backward op (something in it
      -- takes a gradient, or one flows through it to what lies below); a
      -- unit that recorded none is not gathered again, nor its hooks run
      local needed, mark = false, nil
      if recording then
         AG.record(function() if needed then fp:post_backward() end end)
         mark = AG.tape_length()
      end
      local a, b, c = inner(m, ...)
      if recording then
         needed = AG.tape_length() > mark
         fp.needs_backward = needed
         if needed then
            AG.record(function()
               fp:pre_backward()
               -- prefetch the blocks whose backward comes next (the ones
               -- before) if their backward will gather them
               for i = fp.index, math.max(fp.index - self.prefetch + 1, 2), -1 do
                  if units[i].needs_backward and not units[i].gathered then units[i]:gather(true) end
               end
            end)
         end
      end
      -- ZeRO-3 frees a block right away; the root stays until its backward
      if not needed or (self.reshard_after_forward and not is_root) then fp:free_full() end
      return a, b, c
   end
end

-- the flat layout of a model's units over a shard group of G ranks, from
-- the parameter shapes alone (nothing is allocated): the root unit (every
-- parameter outside model:units(): embeddings, final norm, head) first,
-- then one unit per block. Each entry: {name = 'root' | 'unitN', module =
-- the model or the block, specs = {{name, module, key, shape, init,
-- frozen}...} (all of them), numel, padded (a multiple of G), shard_size
-- (padded / G): of the trainable parameters (the unit's first flat), and
-- frozen = {numel, padded, shard_size} of the frozen ones (numel 0 when
-- none)}. fsdp.shard builds its flat parameters from it; fsdp.plan costs it.
function M.layout(model, G)
   G = G or 1
   local all = model:parameter_specs()
   local prefix_of = {}
   for _, s in ipairs(all) do prefix_of[s.module] = prefix_of[s.module] or s.name:sub(1, #s.name - #s.key) end
   local taken, out = {}, {}
   local function entry(name, module, specs)
      local n, nf = 0, 0
      for _, s in ipairs(specs) do
         if s.frozen then nf = nf + numel_of(s.shape) else n = n + numel_of(s.shape) end
      end
      local padded = math.ceil(math.max(n, 1) / G) * G
      local fpadded = nf > 0 and math.ceil(nf / G) * G or 0
      return {name = name, module = module, specs = specs, numel = n, padded = padded, shard_size = padded / G,
              frozen = {numel = nf, padded = fpadded, shard_size = fpadded / G}}
   end
   for i, unit in ipairs(model:units()) do
      local specs = {}
      for _, s in ipairs(unit:parameter_specs()) do
         local full = prefix_of[s.module] .. s.key
         taken[full] = true
         specs[#specs + 1] = {name = full, module = s.module, key = s.key, shape = s.shape, init = s.init,
                              frozen = s.frozen}
      end
      out[i + 1] = entry('unit' .. i, unit, specs)
   end
   local rest = {}
   for _, s in ipairs(all) do if not taken[s.name] then rest[#rest + 1] = s end end
   out[1] = entry('root', model, rest)
   return out
end

-- the size of the shard group for a strategy on a world of W ranks
-- (hybrid: group, default the ranks of one node)
function M.group_size(strategy, W, group)
   if strategy == 'none' then return 1 end
   if strategy == 'hybrid_full' or strategy == 'hybrid_grad_op' then return group or W end
   return W
end

-- opts.prefetch as a depth: nil/true 1, false 0, else a whole number >= 0
function M.prefetch_depth(p)
   if p == nil or p == true then return 1 end
   if p == false then return 0 end
   if type(p) ~= 'number' or p < 0 or p ~= math.floor(p) then
      error(string.format('shard: prefetch must be a whole number of blocks >= 0 (or true/false), got %s',
                          tostring(p)), 3)
   end
   return p
end

-- opts: strategy, param_dtype, reduce_dtype, seed, hybrid_group_size,
-- device (-1: the host, N: cuda:N, whose backend fsdp.device loaded),
-- prefetch (how many blocks ahead to gather while one computes, in forward
-- and backward: default 1; 0 or false: none; each holds one more gathered
-- block), async_reduce (default true), cpu_offload (keep shards and
-- optimizer state in host memory: what the CPU backend always does; the
-- CUDA backend honours it)
function M.shard(model, opts)
   opts = opts or {}
   dist.init()
   local strategy = opts.strategy or 'full'
   if not M.STRATEGIES[strategy] then
      error(string.format("shard: unknown strategy '%s' (full, grad_op, none, hybrid_full, hybrid_grad_op)", tostring(strategy)), 2)
   end
   for _, k in ipairs({'param_dtype', 'reduce_dtype'}) do
      local d = opts[k] or 'f32'
      if d ~= 'f32' and d ~= 'bf16' and d ~= 'f16' then
         error(string.format("shard: %s must be f32, bf16 or f16, got '%s'", k, tostring(d)), 2)
      end
   end
   if M.refusal then error(M.refusal, 0) end -- fsdp-lua plan of a script that is not a recipe table
   local world = dist.world
   local self = setmetatable({
      model = model, strategy = strategy, units = {}, sync = true, pending = {}, comm_wait = 0,
      param_dtype = opts.param_dtype or 'f32', reduce_dtype = opts.reduce_dtype or 'f32',
      prefetch = M.prefetch_depth(opts.prefetch), async_reduce = opts.async_reduce ~= false,
      reshard_after_forward = strategy == 'full' or strategy == 'hybrid_full',
      cpu_offload = opts.cpu_offload or false, device = opts.device or -1,
      frozen_print = ffi.new('uint64_t', 0), -- this rank's share of the frozen values' fingerprint
   }, Sharded)
   -- on a GPU, cpu_offload keeps shards, gradients and optimizer state in
   -- host memory: gathers copy up, reductions come down, AdamW runs on the CPU
   self.offload = self.cpu_offload and self.device >= 0
   -- groups
   if strategy == 'full' or strategy == 'grad_op' then
      self.shard_group = world
   elseif strategy == 'none' then
      self.shard_group = nil
      self.replicate_group = world.size > 1 and world or nil
   else
      local G = opts.hybrid_group_size or dist.local_world_size
      if G < 1 or world.size % G ~= 0 then
         error(string.format('shard: hybrid group size %d does not divide the world of %d ranks', G, world.size), 2)
      end
      self.shard_group = world:split(math.floor(world.rank / G), world.rank % G, 'shard')
      local rep = world:split(world.rank % G, math.floor(world.rank / G), 'replicate')
      self.replicate_group = rep.size > 1 and rep or nil
   end
   if self.shard_group and self.shard_group.size == 1 then self.shard_group = nil end
   -- on a GPU the tensors travel over NCCL twins of the groups
   if self.device >= 0 then
      if self.shard_group then self.shard_group = self.shard_group:on_device(self.device) end
      if self.replicate_group and not self.offload then
         self.replicate_group = self.replicate_group:on_device(self.device)
      end
   end
   self.shard_rank = self.shard_group and self.shard_group.rank or 0
   self.shard_count = self.shard_group and self.shard_group.size or 1
   -- the ranks whose slices a checkpoint needs: one replica of each slice
   self.writes_checkpoint = not self.replicate_group or self.replicate_group.rank == 0

   -- units: the root (everything outside model:units()) first, then the blocks
   for i, u in ipairs(M.layout(model, self.shard_count)) do
      self.units[i] = FlatParam.new(self, u.name, i - 1, u.specs)
   end
   for _, u in ipairs(self.units) do u:materialize(opts.seed or 0) end
   self:fingerprint_frozen()

   -- hooks (unsharded units only use the post-backward all-reduce of DDP)
   wrap_forward(self, model, self.units[1], true)
   for i, unit in ipairs(model:units()) do wrap_forward(self, unit, self.units[i + 1], false) end
   AG.on_backward_end(function() self:finish_backward() end)
   model._sharded = self
   return self
end

-- PyTorch FSDP2's unshard()/reshard(), for inference: unshard() gathers
-- every unit now and keeps the weights through forward calls until
-- reshard(), so generating a token or evaluating a batch costs no
-- all-gather. The price is the whole model's f32 weights on every rank
-- (full_bytes()). Forward calls while held must run without gradients (an
-- optimizer step would leave the gathered copies stale).
function Sharded:unshard()
   for _, u in ipairs(self.units) do u:gather(false) end
   self.held = true
end

function Sharded:reshard()
   self.held = false
   for _, u in ipairs(self.units) do u:free_full() end
end

-- bytes of every unit's gathered (f32) weights: what unshard() holds
function Sharded:full_bytes()
   local n = 0
   for _, u in ipairs(self.units) do
      for _, f in ipairs(u.parts) do n = n + 4 * f.padded end
   end
   return n
end

-- waits for every outstanding gradient reduction (run at the end of backward)
function Sharded:finish_backward()
   local pending = self.pending
   self.pending = {}
   for _, p in ipairs(pending) do if p then timed_wait(self, p) end end
   -- on a GPU: free the collectives the compute stream waited for
   for _, g in ipairs({self.shard_group, self.replicate_group}) do
      if g and g.drain then
         local t0 = clock()
         g:drain()
         self.comm_wait = self.comm_wait + clock() - t0
      end
   end
end

-- gradient accumulation: while sync is false, backward accumulates into the
-- gathered gradients and skips the reduction
function Sharded:set_sync(flag) self.sync = flag end

function Sharded:zero_grad()
   for _, u in ipairs(self.units) do u.grad_shard:zero(); u.grad_sq = nil end
end

-- sum of squares of the whole model's gradient (over the shard group); on
-- a GPU the units' sums come back in one read (kernels.sumsq_many)
function Sharded:grad_sumsq()
   -- a unit's share is mostly taken where its gradient was finalised
   -- (grad_sq); the others' come in one call (one read on a GPU)
   local s, grads = 0, {}
   for _, u in ipairs(self.units) do
      if u.grad_sq then s = s + u.grad_sq else grads[#grads + 1] = u.grad_shard end
   end
   if #grads > 0 then
      local sums = kernels.sumsq_many(grads)
      for i = 1, #grads do s = s + sums[i] end
   end
   if self.shard_group then s = self.shard_group:sum_number(s) end
   return s
end

-- every parameter, frozen or not
function Sharded:num_parameters()
   local n = 0
   for _, u in ipairs(self.units) do n = n + u.numel + (u.frozen and u.frozen.numel or 0) end
   return n
end

-- the parameters that take a gradient
function Sharded:num_trainable_parameters()
   local n = 0
   for _, u in ipairs(self.units) do n = n + u.numel end
   return n
end

-- bytes this rank holds for parameters and gradients (master shards and
-- the frozen flats' slices)
function Sharded:shard_bytes()
   local n = 0
   for _, u in ipairs(self.units) do
      n = n + u.shard:nbytes() + u.grad_shard:nbytes() + (u.frozen and u.frozen.shard:nbytes() or 0)
   end
   return n
end

-- The frozen parameters' fingerprint, the same at any world size, strategy
-- and gather dtype (taken from the f32 values each rank initialized, summed
-- over the shard group; collective, run by fsdp.shard). self.frozen_record:
-- nil without frozen parameters, else {parameters, tensors, fingerprint =
-- 16 hex digits}; a checkpoint of trainable parameters only keeps it, to
-- know the base model it was trained on.
function Sharded:fingerprint_frozen()
   local n, k = 0, 0
   for _, u in ipairs(self.units) do
      if u.frozen then n, k = n + u.frozen.numel, k + #u.frozen.specs end
   end
   if n == 0 then self.frozen_record = nil; return end
   local total = self.frozen_print
   if self.shard_group then
      -- every rank's share as two exact 32-bit halves, added in uint64
      local lo = tonumber(total % 4294967296ULL)
      local hi = tonumber(total / 4294967296ULL)
      local los, his = self.shard_group:gather_numbers(lo), self.shard_group:gather_numbers(hi)
      total = ffi.new('uint64_t', 0)
      for i = 1, #los do total = total + ffi.new('uint64_t', los[i]) + ffi.new('uint64_t', his[i]) * 4294967296ULL end
   end
   self.frozen_record = {parameters = n, tensors = k, fingerprint = string.format('%016x', total)}
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

-- gathers every parameter's full value onto this rank (for export and
-- tests): {name -> f32 host tensor}; collective, every rank must call it
function Sharded:full_state_dict()
   local out = {}
   for _, u in ipairs(self.units) do
      for _, f in ipairs({u, u.frozen}) do
         local full = T.empty({f.padded}, f.shard.dtype, nil, self.device)
         if self.shard_group then self.shard_group:all_gather(full, f.shard) else full:copy(f.shard) end
         for _, s in ipairs(f.specs) do
            local v = full:view(s.shape, nil, s.offset)
            local h = v:clone(nil, -1)
            if h.dtype ~= 'f32' then local c = h:clone('f32'); h:free(); h = c end
            out[s.name] = h
            v:free()
         end
         full:free()
      end
   end
   return out
end

return M
