-- AdamW parameter groups: two steps of a small minGPT with three groups
-- (their own lr / lr_scale, weight decay, betas, eps, a no_decay pattern)
-- against torch.optim.AdamW's update written out in double precision here
-- (p *= 1 - lr wd; m, v; p -= lr m^ / (sqrt(v^) + eps)), the schedule's
-- factor scaling every group's rate; norms and biases take no weight
-- decay by default; one group is the old single-call path, bit for bit;
-- bad groups are errors naming the group.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local AdamW = require 'optim.adamw'

fsdp.set_num_threads(1)

local function build()
   local model = require('models.mingpt').GPT {vocab_size = 32, block_size = 8, n_layer = 2, n_head = 2, n_embd = 8}
   local sharded = fsdp.shard(model, {strategy = 'none', seed = 3})
   return model, sharded
end

-- a deterministic gradient in every slice
local function set_grads(sharded, k)
   for ui, u in ipairs(sharded.units) do
      local g = u.grad_shard:ptr()
      for i = 0, u.shard_size - 1 do g[i] = math.sin(i * 0.37 + ui * 1.3 + k) * 0.01 end
   end
end

local function snapshot(sharded)
   local out = {}
   for ui, u in ipairs(sharded.units) do
      local v, p = {}, u.shard:ptr()
      for i = 0, u.shard_size - 1 do v[i] = p[i] end
      out[ui] = v
   end
   return out
end

local base = {lr = 1e-3, betas = {0.9, 0.95}, eps = 1e-8, weight_decay = 0.1, no_decay = {'wpe'}}
local groups = {
   {params = 'c_attn%.weight$', lr = 3e-3, weight_decay = 0.5, betas = {0.8, 0.9}},
   {params = function(name) return name:match('^transformer%.ln_f%.') ~= nil end, lr_scale = 2, eps = 1e-6,
    name = 'final norm'},
   {params = 'c_fc%.', weight_decay = 0, no_decay = {}},
}
local opts = {groups = groups}
for k, v in pairs(base) do opts[k] = v end

local model, sharded = build()
local opt = AdamW.new(sharded, opts)
-- the reference: each element's group hyperparameters, from its parameter
local hyper = {} -- [unit][i] = {lr, b1, b2, eps, wd}
for ui, u in ipairs(sharded.units) do
   hyper[ui] = {}
   for _, s in ipairs(u.specs) do
      local h = {lr = 1e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1}
      if s.name:match('c_attn%.weight$') then h = {lr = 3e-3, b1 = 0.8, b2 = 0.9, eps = 1e-8, wd = 0.5}
      elseif s.name:match('^transformer%.ln_f%.') then h = {lr = 2e-3, b1 = 0.9, b2 = 0.95, eps = 1e-6, wd = 0.1}
      elseif s.name:match('c_fc%.') then h.wd = 0 end
      if #s.shape < 2 or s.name:match('wpe') then h.wd = 0 end -- no_decay: norms, biases, and the pattern
      for i = s.offset, s.offset + s.numel - 1 do hyper[ui][i] = h end
   end
end
local p0 = snapshot(sharded)
local m, v = {}, {}
for ui = 1, #p0 do m[ui], v[ui] = {}, {} end
local ref = p0
for step, lr in ipairs({1e-3, 5e-4}) do -- the schedule halves the rate: every group's halves
   set_grads(sharded, step)
   local grads = snapshot({units = (function()
      local us = {}
      for i, u in ipairs(sharded.units) do us[i] = {shard = u.grad_shard, shard_size = u.shard_size} end
      return us
   end)()})
   opt:step(lr)
   local nxt = {}
   for ui, u in ipairs(sharded.units) do
      nxt[ui] = {}
      for i = 0, u.numel - 1 do
         local h = hyper[ui][i]
         local glr = h.lr * lr / 1e-3
         local g = grads[ui][i]
         m[ui][i] = h.b1 * (m[ui][i] or 0) + (1 - h.b1) * g
         v[ui][i] = h.b2 * (v[ui][i] or 0) + (1 - h.b2) * g * g
         local mh, vh = m[ui][i] / (1 - h.b1 ^ step), v[ui][i] / (1 - h.b2 ^ step)
         local p = ref[ui][i] * (1 - glr * h.wd)
         nxt[ui][i] = p - glr * mh / (math.sqrt(vh) + h.eps)
      end
   end
   ref = nxt
end
local got = snapshot(sharded)
local worst, moved_default = 0, 0
for ui, u in ipairs(sharded.units) do
   for i = 0, u.numel - 1 do
      local d = math.abs(got[ui][i] - ref[ui][i]) / math.max(math.abs(ref[ui][i]), 1e-3)
      worst = math.max(worst, d)
      if got[ui][i] ~= p0[ui][i] then moved_default = moved_default + 1 end
   end
end
t.check(worst < 1e-5, 'parameter groups: worst relative difference from the reference update %.3g', worst)
t.check(moved_default > 0, 'nothing moved')
local desc = opt:state_dict().hyper.groups
t.check(desc and #desc == 4 and desc[3].name == 'final norm' and desc[2].lr == 3e-3 and desc[3].lr == 2e-3,
        'the groups are described for the checkpoint index: %s', fsdp.json.encode(desc or {}))

-- one group: the single-call path, the same bits as before groups existed
do
   local _, s1 = build()
   local _, s2 = build()
   local o1 = AdamW.new(s1, {lr = 1e-3, weight_decay = 0.1})
   -- the same hyperparameters through a group that takes every parameter
   local o2 = AdamW.new(s2, {lr = 1e-3, weight_decay = 0.1, groups = {{params = '.', lr = 1e-3}}})
   for step = 1, 2 do
      set_grads(s1, step); set_grads(s2, step)
      o1:step(1e-3 / step); o2:step(1e-3 / step)
   end
   local a, b = snapshot(s1), snapshot(s2)
   local same = true
   for ui = 1, #a do for i = 0, #a[ui] do same = same and a[ui][i] == b[ui][i] end end
   t.check(same, 'one group covering everything gives the single-call update bit for bit')
end

-- bad groups
local _, s3 = build()
t.raises(function() AdamW.new(s3, {groups = {{params = 'no_such_param'}}}) end,
         {'groups[1]', 'no_such_param', 'matches no trainable parameter'}, 'a group that matches nothing')
t.raises(function() AdamW.new(s3, {groups = {{params = 'c_fc', betas = {0.9, 1.5}}}}) end,
         {'groups[1].betas[2]', '1.5'}, 'a beta >= 1')
t.raises(function() AdamW.new(s3, {groups = {{params = 'c_fc', lr = 1, lr_scale = 2}}}) end,
         {'groups[1]', 'lr or lr_scale'}, 'lr and lr_scale')
t.raises(function() AdamW.new(s3, {groups = {{lr = 1}}}) end, {'groups[1].params'}, 'no params')
t.raises(function() AdamW.new(s3, {weight_decay = -1}) end, {'opts.weight_decay'}, 'negative weight decay')
return t.done()
