-- AdamW over flat parameter shards (torch.optim.AdamW's update): one fused
-- kernel call per unit slice, reading each element's gradient, parameter
-- and moments once (fsdp_adamw_runs_*: the slice's decayed runs take weight
-- decay, the others none). State: exp_avg / exp_avg_sq shards, allocated
-- once; the step count.
--
-- Parameter groups, as torch.optim's param_groups: opts.groups is a list of
-- {params = a Lua pattern matched against parameter names (or a function
-- (name, shape) -> bool), lr, lr_scale, weight_decay, betas, eps, no_decay};
-- a parameter belongs to the first group that matches, else to the default
-- group (the top-level options). A group's `lr` is its peak rate: each step
-- scales it by the factor the schedule gives the base rate (step's lr /
-- opts.lr), as torch's LR schedulers scale every group's initial lr;
-- `lr_scale` = k means lr = k * opts.lr. Weight decay: by default every
-- parameter with two or more dimensions decays and the others (norm
-- weights, biases) do not, which is the HF Trainer's split for the models
-- here (it excludes biases and norm weights by name); `no_decay` (a list of
-- Lua patterns, top level or per group) exempts parameters by name as well.
-- Frozen parameters are not in the flats the optimizer sees, so nothing
-- here ever moves them.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local kernels = require 'fsdp.kernels'
local ffi, check = bind.ffi, bind.check

local AdamW = {}
AdamW.__index = AdamW

local function fail(fmt, ...) error('adamw: ' .. string.format(fmt, ...), 3) end

local function matches(sel, name, shape)
   if type(sel) == 'function' then return sel(name, shape) and true or false end
   return name:match(sel) ~= nil
end

-- runs [start, end) as an int64 array, neighbours merged
local function run_array(list)
   local runs = {}
   for _, r in ipairs(list) do
      local last = runs[#runs]
      if last and last[2] == r[1] then last[2] = r[2] else runs[#runs + 1] = {r[1], r[2]} end
   end
   local arr = ffi.new('int64_t[?]', math.max(1, 2 * #runs))
   for i, r in ipairs(runs) do arr[2 * i - 2], arr[2 * i - 1] = r[1], r[2] end
   return arr, #runs
end

-- checks one group's hyperparameters (where: 'opts' or 'groups[i]')
local function check_hyper(g, where)
   local function num(k, lo, below)
      local v = g[k]
      if v == nil then return end
      if type(v) ~= 'number' or v ~= v or v < lo or (below and v >= below) or v == math.huge then
         fail('%s.%s must be a number >= %g%s, got %s', where, k, lo, below and (' and < ' .. below) or '', tostring(v))
      end
   end
   num('lr', 0); num('lr_scale', 0); num('weight_decay', 0); num('eps', 0); num('beta1', 0, 1); num('beta2', 0, 1)
   if g.betas ~= nil then
      if type(g.betas) ~= 'table' or #g.betas ~= 2 then fail('%s.betas must be {beta1, beta2}', where) end
      for i = 1, 2 do
         local b = g.betas[i]
         if type(b) ~= 'number' or not (b >= 0 and b < 1) then fail('%s.betas[%d] must be in [0, 1), got %s', where, i, tostring(b)) end
      end
   end
   if g.lr ~= nil and g.lr_scale ~= nil then fail('%s: give lr or lr_scale, not both', where) end
   if g.no_decay ~= nil and type(g.no_decay) ~= 'table' then fail('%s.no_decay must be a list of name patterns', where) end
end

-- sharded: the result of fsdp.shard; opts: lr, betas, eps, weight_decay,
-- no_decay, groups (see the top of the file)
function AdamW.new(sharded, opts)
   opts = opts or {}
   check_hyper(opts, 'opts')
   local self = setmetatable({
      lr = opts.lr or 1e-3,
      beta1 = (opts.betas and opts.betas[1]) or opts.beta1 or 0.9,
      beta2 = (opts.betas and opts.betas[2]) or opts.beta2 or 0.95,
      eps = opts.eps or 1e-8,
      weight_decay = opts.weight_decay or 0.0,
      no_decay = opts.no_decay,
      t = 0,
      groups = {},      -- one per unit: its moments (the name is older than parameter groups)
      param_groups = {}, -- the parameter groups, the default one first
   }, AdamW)
   -- the parameter groups: the default, then opts.groups in order
   local default = {name = 'default', lr = self.lr, beta1 = self.beta1, beta2 = self.beta2, eps = self.eps,
                    weight_decay = self.weight_decay, no_decay = self.no_decay, members = 0}
   self.param_groups[1] = default
   for i, g in ipairs(opts.groups or {}) do
      local where = string.format('groups[%d]', i)
      if type(g) ~= 'table' then fail('%s must be a table', where) end
      check_hyper(g, where)
      if type(g.params) ~= 'string' and type(g.params) ~= 'function' then
         fail('%s.params must be a Lua pattern for parameter names (or a function of name, shape)', where)
      end
      self.param_groups[#self.param_groups + 1] = {
         name = g.name or (type(g.params) == 'string' and g.params or where), params = g.params,
         lr = g.lr or (g.lr_scale and g.lr_scale * self.lr) or self.lr, own_lr = g.lr ~= nil or g.lr_scale ~= nil,
         beta1 = (g.betas and g.betas[1]) or g.beta1 or self.beta1,
         beta2 = (g.betas and g.betas[2]) or g.beta2 or self.beta2,
         eps = g.eps or self.eps, weight_decay = g.weight_decay or self.weight_decay,
         no_decay = g.no_decay or self.no_decay, members = 0,
      }
   end
   -- which group each parameter is in, and whether it decays
   local function group_of(s)
      for i = 2, #self.param_groups do
         if matches(self.param_groups[i].params, s.name, s.shape) then return i end
      end
      return 1
   end
   local function decays(pg, s)
      if #s.shape < 2 then return false end
      for _, pat in ipairs(pg.no_decay or {}) do if s.name:match(pat) then return false end end
      return true
   end
   self.single = #self.param_groups == 1
   for _, u in ipairs(sharded.units) do
      local entry = {unit = u, exp_avg = T.zeros({u.shard_size}, 'f32', nil, u.shard.device),
                     exp_avg_sq = T.zeros({u.shard_size}, 'f32', nil, u.shard.device)}
      for _, s in ipairs(u.specs) do -- membership counts every parameter, on every rank
         self.param_groups[group_of(s)].members = self.param_groups[group_of(s)].members + 1
      end
      if self.single then
         -- one call over the whole slice, the decayed runs inside it
         local runs = {}
         for _, seg in ipairs(u:segments()) do
            if seg.decay and decays(default, seg) then runs[#runs + 1] = {seg.offset, seg.offset + seg.numel} end
         end
         entry.decay, entry.ndecay = run_array(runs)
      else
         -- one call per stretch of the slice held by one group (neighbouring
         -- parameters of a group merged), its decayed runs relative to it
         entry.spans = {}
         for _, seg in ipairs(u:segments()) do
            local gi = group_of({name = seg.name, shape = seg.shape})
            local last = entry.spans[#entry.spans]
            if not (last and last.group == gi and last.stop == seg.offset) then
               last = {group = gi, start = seg.offset, stop = seg.offset, runs = {}}
               entry.spans[#entry.spans + 1] = last
            end
            if decays(self.param_groups[gi], seg) then
               last.runs[#last.runs + 1] = {seg.offset - last.start, seg.offset + seg.numel - last.start}
            end
            last.stop = seg.offset + seg.numel
         end
         for _, sp in ipairs(entry.spans) do sp.decay, sp.ndecay = run_array(sp.runs) end
      end
      self.groups[#self.groups + 1] = entry
   end
   for i = 2, #self.param_groups do
      local pg = self.param_groups[i]
      if pg.members == 0 then
         fail("groups[%d] ('%s') matches no trainable parameter: check its params pattern", i - 1, pg.name)
      end
   end
   return self
end

-- one step at learning rate lr (default self.lr: the schedule's value for
-- the default group; the other groups' rates scale with it); grads are
-- multiplied by grad_scale first (clipping, loss-scale unscaling,
-- accumulation averaging)
function AdamW:step(lr, grad_scale)
   lr = lr or self.lr
   self.t = self.t + 1
   for _, g in ipairs(self.groups) do
      local u = g.unit
      local K = kernels.of(u.shard)
      if self.single then
         check(K.adamw_runs(u.shard:ptr(), g.exp_avg:ptr(), g.exp_avg_sq:ptr(), u.grad_shard:ptr(), u.shard_size,
                            g.decay, g.ndecay, lr, self.beta1, self.beta2, self.eps, self.weight_decay,
                            grad_scale or 1, self.t), 'adamw')
      else
         for _, sp in ipairs(g.spans) do
            local pg = self.param_groups[sp.group]
            local glr = lr
            if pg.own_lr then glr = self.lr > 0 and pg.lr * (lr / self.lr) or pg.lr end
            local o = sp.start
            check(K.adamw_runs(u.shard:ptr() + o, g.exp_avg:ptr() + o, g.exp_avg_sq:ptr() + o, u.grad_shard:ptr() + o,
                               sp.stop - sp.start, sp.decay, sp.ndecay, glr, pg.beta1, pg.beta2, pg.eps,
                               pg.weight_decay, grad_scale or 1, self.t), 'adamw')
         end
      end
   end
end

-- the groups' hyperparameters (for checkpoint indexes and logs)
function AdamW:describe_groups()
   local out = {}
   for i, pg in ipairs(self.param_groups) do
      out[i] = {name = pg.name, lr = pg.lr, beta1 = pg.beta1, beta2 = pg.beta2, eps = pg.eps,
                weight_decay = pg.weight_decay, tensors = pg.members}
   end
   return out
end

-- tensors by name for checkpoints, plus scalar state
function AdamW:state_dict()
   local tensors = {}
   for _, g in ipairs(self.groups) do
      tensors[g.unit.name .. '.exp_avg'] = g.exp_avg
      tensors[g.unit.name .. '.exp_avg_sq'] = g.exp_avg_sq
   end
   local hyper = {lr = self.lr, beta1 = self.beta1, beta2 = self.beta2, eps = self.eps,
                  weight_decay = self.weight_decay}
   if not self.single then hyper.groups = self:describe_groups() end
   return {t = self.t, tensors = tensors, hyper = hyper}
end

function AdamW:load_state_dict(sd)
   if type(sd.t) ~= 'number' or sd.t < 0 or sd.t ~= math.floor(sd.t) then
      error('optimizer state: step count t must be a non-negative integer, got ' .. tostring(sd.t), 0)
   end
   self.t = sd.t
   for _, g in ipairs(self.groups) do
      for _, key in ipairs({'exp_avg', 'exp_avg_sq'}) do
         local src = sd.tensors[g.unit.name .. '.' .. key]
         if not src then error('optimizer state: ' .. g.unit.name .. '.' .. key .. ' is missing', 0) end
         if src ~= g[key] then g[key]:copy(src) end
      end
   end
end

return AdamW
