-- AdamW over flat parameter shards (torch.optim.AdamW's update): one fused
-- kernel call per unit slice, reading each element's gradient, parameter
-- and moments once (fsdp_adamw_runs_*: the slice's matrices take weight
-- decay, its norms and biases none). State: exp_avg / exp_avg_sq shards,
-- allocated once; the step count.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local kernels = require 'fsdp.kernels'
local ffi, check = bind.ffi, bind.check

local AdamW = {}
AdamW.__index = AdamW

-- the slice's weight-decay runs as int64 pairs [start, end), neighbours merged
local function decay_runs(u)
   local runs = {}
   for _, s in ipairs(u:segments()) do
      if s.decay then
         local last = runs[#runs]
         if last and last[2] == s.offset then last[2] = s.offset + s.numel
         else runs[#runs + 1] = {s.offset, s.offset + s.numel} end
      end
   end
   local arr = ffi.new('int64_t[?]', math.max(1, 2 * #runs))
   for i, r in ipairs(runs) do arr[2 * i - 2], arr[2 * i - 1] = r[1], r[2] end
   return arr, #runs
end

-- sharded: the result of fsdp.shard; opts: lr, betas, eps, weight_decay
function AdamW.new(sharded, opts)
   opts = opts or {}
   local self = setmetatable({
      lr = opts.lr or 1e-3,
      beta1 = (opts.betas and opts.betas[1]) or opts.beta1 or 0.9,
      beta2 = (opts.betas and opts.betas[2]) or opts.beta2 or 0.95,
      eps = opts.eps or 1e-8,
      weight_decay = opts.weight_decay or 0.0,
      t = 0,
      groups = {},
   }, AdamW)
   for _, u in ipairs(sharded.units) do
      local decay, ndecay = decay_runs(u)
      self.groups[#self.groups + 1] = {
         unit = u, decay = decay, ndecay = ndecay,
         exp_avg = T.zeros({u.shard_size}, 'f32', nil, u.shard.device),
         exp_avg_sq = T.zeros({u.shard_size}, 'f32', nil, u.shard.device),
      }
   end
   return self
end

-- one step at learning rate lr (default self.lr); grads are multiplied by
-- grad_scale first (clipping, loss-scale unscaling, accumulation averaging)
function AdamW:step(lr, grad_scale)
   lr = lr or self.lr
   self.t = self.t + 1
   for _, g in ipairs(self.groups) do
      local u = g.unit
      check(kernels.of(u.shard).adamw_runs(u.shard:ptr(), g.exp_avg:ptr(), g.exp_avg_sq:ptr(),
                                           u.grad_shard:ptr(), u.shard_size, g.decay, g.ndecay, lr,
                                           self.beta1, self.beta2, self.eps, self.weight_decay,
                                           grad_scale or 1, self.t), 'adamw')
   end
end

-- tensors by name for checkpoints, plus scalar state
function AdamW:state_dict()
   local tensors = {}
   for _, g in ipairs(self.groups) do
      tensors[g.unit.name .. '.exp_avg'] = g.exp_avg
      tensors[g.unit.name .. '.exp_avg_sq'] = g.exp_avg_sq
   end
   return {t = self.t, tensors = tensors,
           hyper = {lr = self.lr, beta1 = self.beta1, beta2 = self.beta2, eps = self.eps,
                    weight_decay = self.weight_decay}}
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
