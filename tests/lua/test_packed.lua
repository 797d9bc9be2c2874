-- Packed samples: several samples in one row with positions restarting at
-- 0 (Hugging Face's position_ids packing) attend only within their own
-- sample, and RoPE / learned positions restart with them. For every model
-- family: each sample's logits in the packed batch equal its logits run
-- alone (within 1e-5), and the loss over the packed batch (its sum divided
-- by the count of targets) has the gradients of the same loss summed over
-- the samples run alone (within 1e-5 of the largest gradient element).
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'

fsdp.set_num_threads(1)

local V = 41
local rows = {{5, 7, 4}, {9, 7}} -- sample lengths of each row of 16
local T_ = 16
local function token(i) return (i * 13 + 7) % V end

local families = require('tests.lua.tiny_families')(V)

-- the packed batch: tokens, targets (the next token within the sample,
-- -100 at a sample's last token), positions; and each sample alone
local ids, tgt, pos, samples = {}, {}, {}, {}
local n_targets = 0
do
   local k = 0
   for r, lens in ipairs(rows) do
      local col = 0
      for _, n in ipairs(lens) do
         local s = {row = r, first = col, n = n, ids = {}, tgt = {}}
         for i = 0, n - 1 do
            k = k + 1
            s.ids[i + 1] = token(k)
         end
         for i = 1, n do
            s.tgt[i] = i < n and s.ids[i + 1] or -100
            if i < n then n_targets = n_targets + 1 end
            local at = (r - 1) * T_ + col + i
            ids[at], tgt[at], pos[at] = s.ids[i], s.tgt[i], i - 1
         end
         col = col + n
         samples[#samples + 1] = s
      end
   end
end

local function grads(model)
   local out = {}
   for _, np in ipairs(model:named_parameters()) do
      out[np[1]] = np[2].grad and np[2].grad:totable() or {}
   end
   return out
end

for _, f in ipairs(families) do
   local name, make = f[1], f[2]
   local model = make():materialize(5)
   local x = fsdp.from_table(ids, {#rows, T_}, 'i32')
   local y = fsdp.from_table(tgt, {#rows, T_}, 'i32')
   local p = fsdp.from_table(pos, {#rows, T_}, 'i32')
   -- 1. logits
   local packed = fsdp.no_grad(function() return model(x, {positions = p}) end):totable()
   fsdp.autograd.reset()
   local worst = 0
   for _, s in ipairs(samples) do
      local alone = fsdp.no_grad(function() return model(fsdp.from_table(s.ids, {1, s.n}, 'i32')) end):totable()
      fsdp.autograd.reset()
      for i = 0, s.n - 1 do
         for v = 1, V do
            local a = packed[((s.row - 1) * T_ + s.first + i) * V + v]
            local e = alone[i * V + v]
            worst = math.max(worst, math.abs(a - e) / math.max(1e-2, math.abs(e)))
         end
      end
   end
   t.check(worst <= 1e-5, '%s: a packed sample\'s logits differ from the sample alone by %.3g', name, worst)
   -- 2. the normalised loss and its gradients
   model:zero_grad()
   local l_packed = fsdp.backward(model:loss(x, y, {positions = p, denominator = n_targets}))
   local g_packed = grads(model)
   model:zero_grad()
   local l_alone = 0
   for _, s in ipairs(samples) do
      l_alone = l_alone + fsdp.backward(model:loss(fsdp.from_table(s.ids, {1, s.n}, 'i32'),
                                                   fsdp.from_table(s.tgt, {1, s.n}, 'i32'),
                                                   {denominator = n_targets, share = s.n / (#rows * T_)}))
   end
   local g_alone = grads(model)
   if name ~= 'Mixtral' then -- its router's auxiliary loss is over the batch, not a sum over samples
      t.check(math.abs(l_packed - l_alone) <= 1e-5 * math.abs(l_alone), '%s: packed loss %.9g, summed alone %.9g',
              name, l_packed, l_alone)
      -- relative to the largest gradient element of the model (a key bias's
      -- gradient is zero in exact arithmetic: both sides hold rounding noise)
      local scale = 0
      for _, ga in pairs(g_alone) do for i = 1, #ga do scale = math.max(scale, math.abs(ga[i])) end end
      local gworst, gname = 0, nil
      for k, ga in pairs(g_alone) do
         local gp = g_packed[k]
         for i = 1, #ga do
            local e = math.abs(gp[i] - ga[i]) / scale
            if e > gworst then gworst, gname = e, k end
         end
      end
      t.check(scale > 0 and gworst <= 1e-5, '%s: gradient of %s differs by %.3g of the largest gradient element',
              name, tostring(gname), gworst)
   end
end

-- positions that do not restart at 0 within a row are refused
do
   local model = families[2][2]():materialize(1)
   local bad = {}
   for i = 1, #pos do bad[i] = pos[i] end
   bad[4] = 9
   t.raises(function()
      model(fsdp.from_table(ids, {#rows, T_}, 'i32'), {positions = fsdp.from_table(bad, {#rows, T_}, 'i32')})
   end, {'positions[0, 3] = 9'}, 'positions that do not count within samples')
   fsdp.autograd.reset()
end
return t.done()
