-- Every differentiable op: its backward, run through the autograd tape,
-- against central finite differences of its forward (f32, eps 1e-2; the
-- tolerance of 2% of the largest gradient catches a wrong sign, a missing
-- term or a factor of two, which change a gradient by 100%).
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local ops, AG = fsdp.ops, fsdp.autograd

local G = require 'tests.lua.gradcheck'
fsdp.set_num_threads(1)
local randn = G.randn

-- checks d sum(f(inputs) .* R) / d input for every input
local function gradcheck(name, f, inputs, opts)
   local wrt = {}
   for k, x in ipairs(inputs) do wrt[k] = {'input ' .. k, x} end
   G.check(name, function() return f(unpack(inputs)) end, wrt, opts)
   for _, x in ipairs(inputs) do x:free() end
end

gradcheck('linear', function(x, w, b) return ops.linear(x, w, b) end,
          {randn({2, 3, 5}), randn({4, 5}), randn({4})})
gradcheck('linear no bias', function(x, w) return ops.linear(x, w) end, {randn({3, 5}), randn({6, 5})})
for _, ta in ipairs({false, true}) do
   for _, tb in ipairs({false, true}) do
      local a = ta and randn({4, 3}) or randn({3, 4})
      local b = tb and randn({5, 4}) or randn({4, 5})
      gradcheck(string.format('matmul ta=%s tb=%s', ta, tb), function(x, y) return ops.matmul(x, y, ta, tb) end, {a, b})
   end
end

do
   local idx = fsdp.from_table({1, 3, 3, 0, 6, 2}, {2, 3}, 'i32')
   gradcheck('embedding', function(w) return ops.embedding(idx, w) end, {randn({7, 5})})
end
gradcheck('layernorm', function(x, w, b) return ops.layernorm(x, w, b, 1e-5) end,
          {randn({3, 7}), randn({7}), randn({7})}, {eps = 1e-2})
gradcheck('rmsnorm', function(x, w) return ops.rmsnorm(x, w, 1e-6) end, {randn({3, 7}), randn({7})})
gradcheck('gelu', function(x) return ops.gelu(x) end, {randn({4, 6})})
gradcheck('silu', function(x) return ops.silu(x) end, {randn({4, 6})})
do -- relu: keep inputs away from the kink
   local x = randn({4, 6})
   local p = x:ptr()
   for i = 0, x:numel() - 1 do if math.abs(p[i]) < 0.05 then p[i] = 0.5 end end
   gradcheck('relu', function(y) return ops.relu(y) end, {x})
end
gradcheck('swiglu', function(g, u) return ops.swiglu(g, u) end, {randn({3, 5}), randn({3, 5})})
gradcheck('add', function(a, b) return ops.add(a, b) end, {randn({3, 4}), randn({3, 4})})
gradcheck('mul', function(a, b) return ops.mul(a, b) end, {randn({3, 4}), randn({3, 4})})
gradcheck('scale', function(a) return ops.scale(a, -2.5) end, {randn({3, 4})})
gradcheck('reshape', function(a) return ops.gelu(ops.reshape(a, {4, 3})) end, {randn({3, 4})})
gradcheck('mean', function(a) return ops.mean(ops.mul(a, a)) end, {randn({3, 4})})

-- attention: MHA, GQA and MQA, with and without a sliding window
for _, case in ipairs({{4, 4, 0}, {4, 2, 0}, {4, 1, 3}, {2, 2, 2}}) do
   local NH, NKV, W = case[1], case[2], case[3]
   local HD, B, T_ = 4, 2, 6
   gradcheck(string.format('attention NH=%d NKV=%d window=%d', NH, NKV, W),
             function(q, k, v) return ops.attention(q, k, v, {n_head = NH, n_kv_head = NKV, window = W}) end,
             {randn({B, T_, NH * HD}), randn({B, T_, NKV * HD}), randn({B, T_, NKV * HD})})
end
gradcheck('attention fused qkv', function(qkv) return ops.attention(qkv, nil, nil, {n_head = 2}) end,
          {randn({2, 5, 3 * 8})})
-- soft-capped scores (Gemma 2), scaled up so the cap of 1.5 bends them
for _, W in ipairs({0, 3}) do
   gradcheck(string.format('attention softcap window=%d', W),
             function(q, k, v) return ops.attention(q, k, v, {n_head = 4, n_kv_head = 2, window = W, scale = 0.9,
                                                               softcap = 1.5}) end,
             {randn({2, 6, 16}), randn({2, 6, 8}), randn({2, 6, 8})})
end
do -- softcap's forward: cap * tanh(x / cap) (values to 2.5 cap), and a bad cap
   local x = randn({4, 6})
   for i = 0, x:numel() - 1 do x:ptr()[i] = x:ptr()[i] * 2.5 end
   local y = fsdp.no_grad(function() return ops.softcap(x, 1.7) end)
   local worst = 0
   for i = 0, x:numel() - 1 do
      local want = 1.7 * math.tanh(x:ptr()[i] / 1.7)
      worst = math.max(worst, math.abs(y:ptr()[i] - want))
   end
   t.check(worst < 1e-6, 'softcap forward differs from cap * tanh(x / cap) by %g', worst)
   t.raises(function() ops.softcap(x, 0) end, {'softcap', 'cap must be a positive number'}, 'softcap 0')
   t.raises(function() ops.attention(randn({1, 2, 12}), nil, nil, {n_head = 1, softcap = -1}) end,
            {'attention', 'softcap must be 0 (none) or a positive number'}, 'attention softcap -1')
   gradcheck('softcap', function(z) return ops.softcap(z, 1.7) end, {x})
end

do -- rope with tables from the C helper
   local HD, T_ = 8, 5
   local inv = fsdp.empty({HD / 2}, 'f32')
   for i = 0, HD / 2 - 1 do inv:ptr()[i] = 1 / (10000 ^ (2 * i / HD)) end
   local cos, sin = fsdp.empty({T_, HD / 2}, 'f32'), fsdp.empty({T_, HD / 2}, 'f32')
   fsdp.C.fsdp_rope_table_cpu(cos:ptr(), sin:ptr(), inv:ptr(), 0, T_, HD)
   gradcheck('rope', function(x) return ops.rope(x, cos, sin, 3) end, {randn({2, T_, 3 * HD})})
end

do -- cross-entropy with an ignored row
   local targets = fsdp.from_table({2, -100, 0, 4, 1, 3}, {2, 3}, 'i32')
   gradcheck('cross_entropy', function(l) return ops.cross_entropy(l, targets) end, {randn({2, 3, 5})})
   local logits = randn({2, 3, 5})
   local loss = fsdp.no_grad(function() return ops.cross_entropy(logits, targets):item() end)
   -- reference in Lua: mean over the 5 counted rows
   local p, total = logits:ptr(), 0
   for r = 0, 5 do
      local tg = targets:ptr()[r]
      if tg ~= -100 then
         local m, s = -math.huge, 0
         for v = 0, 4 do m = math.max(m, p[r * 5 + v]) end
         for v = 0, 4 do s = s + math.exp(p[r * 5 + v] - m) end
         total = total + (m + math.log(s) - p[r * 5 + tg])
      end
   end
   t.close(loss, total / 5, 1e-5, 1e-6, 'cross_entropy value vs a Lua reference')
   AG.reset()
end

-- a tensor used twice sums both gradients (x*x -> 2x)
do
   local x = randn({5})
   x.requires_grad = true
   fsdp.backward(ops.sum(ops.mul(x, x)))
   local ok = true
   for i = 0, 4 do ok = ok and math.abs(x.grad:ptr()[i] - 2 * x:ptr()[i]) < 1e-5 end
   t.check(ok, 'x*x: gradient should be 2x')
end

-- activation checkpointing gives the same gradients, bitwise
do
   local w1, w2 = randn({8, 8}), randn({8, 8})
   local x = randn({3, 8})
   local function unit(y) return ops.linear(ops.gelu(ops.linear(y, w1)), w2) end
   local grads = {}
   for run = 1, 2 do
      w1.requires_grad, w2.requires_grad, x.requires_grad = true, true, true
      w1.grad, w2.grad, x.grad = nil, nil, nil
      local y = run == 1 and unit(x) or AG.checkpoint(unit, x)
      fsdp.backward(ops.sum(ops.mul(y, y)))
      grads[run] = {w1.grad:totable(), w2.grad:totable(), x.grad:totable()}
   end
   local same = true
   for k = 1, 3 do for i, v in ipairs(grads[1][k]) do same = same and v == grads[2][k][i] end end
   t.check(same, 'checkpointed unit: gradients differ from the plain run')
end

-- temporaries are freed at the end of the step; using one after is an error
do
   local a = randn({4})
   local b = ops.scale(a, 2)
   fsdp.end_step()
   t.raises(function() return b:item() end, 'was freed', 'temporary after end_step')
end

-- backward frees each op's output and its gradient once the op's backward
-- ran: a chain of 20 ops on 1 MiB tensors peaks in backward at what the
-- forward left plus a few tensors in flight, not at 20 more gradients; the
-- gradient of the input is right and parameters' gradients stay
do
   local n = 256 * 1024
   local x = randn({n})
   x.requires_grad = true
   x.grad = nil
   local h = x
   for _ = 1, 20 do h = ops.gelu(h) end
   local loss = ops.sum(h)
   fsdp.reset_peak_memory()
   local after_forward = fsdp.memory_stats().current
   AG.backward(loss)
   local peak = fsdp.memory_stats().peak
   local extra = (peak - after_forward) / (4 * n)
   t.check(extra <= 4, 'backward of a 20-op chain held %.1f tensors beyond the forward (want <= 4)', extra)
   t.check(x.grad and x.grad:numel() == n and x.grad:sumsq() > 0, 'the input has its gradient after backward')
   x.grad:free(); x.grad = nil
end

-- op argument errors name the op and the shapes
t.raises(function() ops.linear(randn({2, 5}), randn({4, 6})) end, {'linear', '[2, 5]', '[4, 6]'}, 'linear shapes')
t.raises(function() ops.add(randn({2, 5}), randn({5, 2})) end, {'add', 'shapes differ'}, 'add shapes')
t.raises(function() ops.embedding(fsdp.from_table({9}, {1}, 'i32'), randn({4, 3})) end, {'embedding'}, 'embedding range')
t.raises(function() ops.cross_entropy(randn({2, 5}), fsdp.from_table({7, 1}, {2}, 'i32')) end,
         {'cross_entropy', '7'}, 'target out of range')
AG.reset()

return t.done()
