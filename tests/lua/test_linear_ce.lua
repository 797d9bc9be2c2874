-- ops.linear_cross_entropy, the LM head and its loss in chunks of rows:
-- loss and gradients against ops.cross_entropy(ops.linear(...)) (1e-6
-- relative to the largest value) for chunk sizes that divide the rows, that
-- leave a ragged last chunk and that hold everything in one, with and
-- without a denominator (a sum over it instead of the mean); finite
-- differences; a loss seeded with another scale; an input that also has
-- another use (both orders on the tape); no-grad evaluation; every row
-- ignored; argument errors; and the peak memory against the unfused ops.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local G = require 'tests.lua.gradcheck'
local ops, AG = fsdp.ops, fsdp.autograd
fsdp.set_num_threads(1)
local randn = G.randn

local IGN = -100
local B, T_, Cc, V = 2, 7, 16, 37
local rows = B * T_
local targets = fsdp.empty({B, T_}, 'i32')
do
   local rng = fsdp.rng(3)
   for i = 0, rows - 1 do targets:ptr()[i] = tonumber(fsdp.C.fsdp_rng_next(rng) % V) end
   targets:ptr()[2], targets:ptr()[9], targets:ptr()[13] = IGN, IGN, IGN
end

-- largest |a - b| over the largest |b|
local function rel(a, b)
   local pa, pb, d, m = a:ptr(), b:ptr(), 0, 0
   for i = 0, a:numel() - 1 do
      d = math.max(d, math.abs(pa[i] - pb[i]))
      m = math.max(m, math.abs(pb[i]))
   end
   return d / math.max(m, 1e-30)
end

local x0, w = randn({B, T_, Cc}), randn({V, Cc}, 0.5)

-- loss and gradients of x0 and w through `head`; `extra` adds sum(h .* h)
-- before (order 1) or after (order 2) the head on the tape; `seed` scales
-- the loss
local function run(head, opts)
   opts = opts or {}
   local x = x0:clone()
   x.requires_grad, w.requires_grad = true, true
   x.grad, w.grad = nil, nil
   -- h: a step temporary (what a model hands the head)
   local h = ops.scale(x, 1)
   local loss
   if opts.extra == 1 then
      local e = ops.sum(ops.mul(h, h))
      loss = ops.add(head(h), ops.scale(e, 0.01))
   elseif opts.extra == 2 then
      local l = head(h)
      loss = ops.add(l, ops.scale(ops.sum(ops.mul(h, h)), 0.01))
   else
      loss = head(h)
   end
   if opts.seed then loss = ops.scale(loss, opts.seed) end
   local value = fsdp.backward(loss)
   local gx, gw = x.grad:clone(), w.grad:clone()
   return value, gx, gw
end

local function unfused(h, denominator) return ops.cross_entropy(ops.linear(h, w), targets, IGN, denominator) end

for _, case in ipairs({{chunk = 1}, {chunk = 3}, {chunk = 7}, {chunk = 14}, {chunk = 100}, {},
                       {chunk = 5, seed = -2.5}, {chunk = 4, extra = 1}, {chunk = 4, extra = 2},
                       {chunk = 3, denominator = 40}, {chunk = 6, denominator = 2.5, seed = 3}}) do
   local label = string.format('chunk_rows %s%s%s%s', tostring(case.chunk),
                               case.seed and (' seed ' .. case.seed) or '',
                               case.extra and (' with another use of the input (order ' .. case.extra .. ')') or '',
                               case.denominator and (' denominator ' .. case.denominator) or '')
   local lr, gxr, gwr = run(function(h) return unfused(h, case.denominator) end, case)
   local lf, gxf, gwf = run(function(h)
      return ops.linear_cross_entropy(h, w, targets, IGN, {chunk_rows = case.chunk, denominator = case.denominator})
   end, case)
   t.close(lf, lr, 1e-6, 0, 'linear_cross_entropy %s: loss', label)
   local dx, dw = rel(gxf, gxr), rel(gwf, gwr)
   t.check(dx <= 1e-6, 'linear_cross_entropy %s: dx differs by %.3g (relative)', label, dx)
   t.check(dw <= 1e-6, 'linear_cross_entropy %s: dweight differs by %.3g (relative)', label, dw)
   for _, g in ipairs({gxr, gwr, gxf, gwf}) do g:free() end
end

-- finite differences (ragged chunks of 4 over 14 rows)
do
   local x = randn({B, T_, Cc})
   G.check('linear_cross_entropy', function()
      return ops.linear_cross_entropy(x, w, targets, IGN, {chunk_rows = 4})
   end, {{'input', x}, {'weight', w}})
end

-- no gradient wanted: the loss alone, the same number
do
   local want = fsdp.no_grad(function() return unfused(x0):item() end)
   AG.reset()
   local got = fsdp.no_grad(function() return ops.linear_cross_entropy(x0, w, targets, IGN, {chunk_rows = 3}):item() end)
   AG.reset()
   t.close(got, want, 1e-6, 0, 'linear_cross_entropy without a gradient')
end

-- every row ignored: loss 0 and no gradient
do
   local none = fsdp.full({B, T_}, IGN, 'i32')
   local x = x0:clone()
   x.requires_grad, w.requires_grad = true, true
   x.grad, w.grad = nil, nil
   local v = fsdp.backward(ops.linear_cross_entropy(x, w, none, IGN, {chunk_rows = 5}))
   t.check(v == 0, 'every row ignored: loss %g, want 0', v)
   local gsum = x.grad and x.grad:sumsq() or 0
   t.check(gsum == 0, 'every row ignored: the input got a gradient (sum of squares %g)', gsum)
end

-- argument errors name the op and what is wrong
t.raises(function() ops.linear_cross_entropy(x0, randn({V, Cc + 1}), targets) end,
         {'linear_cross_entropy', '16 features'}, 'weight width')
t.raises(function() ops.linear_cross_entropy(x0, w, fsdp.empty({rows - 1}, 'i32')) end,
         {'linear_cross_entropy', '14 rows', '13'}, 'target count')
do
   local bad = targets:clone()
   bad:ptr()[5] = V
   t.raises(function() ops.linear_cross_entropy(x0, w, bad, IGN) end,
            {'linear_cross_entropy', 'targets[5] = 37', 'outside [0, 37)'}, 'target out of range')
end
t.raises(function() ops.linear_cross_entropy(x0, w, targets, IGN, {chunk_rows = 0}) end,
         {'linear_cross_entropy', 'chunk_rows'}, 'chunk_rows 0')
t.raises(function() ops.linear_cross_entropy(x0, w, targets, IGN, {denominator = 0}) end,
         {'linear_cross_entropy', 'denominator', 'positive'}, 'denominator 0')
t.raises(function() ops.linear_cross_entropy(x0, w, fsdp.empty({B, T_}, 'f32')) end,
         {'linear_cross_entropy', 'i32'}, 'f32 targets')
AG.reset()

-- memory: the logits (and their gradient) never exist whole. 2048 rows x
-- 4096 classes are 32 MiB of logits; in chunks of 128 rows a chunk is 2 MiB.
do
   local N2, V2, C2 = 2048, 4096, 32
   local xb, wb = randn({N2, C2}), randn({V2, C2}, 0.1)
   local tb = fsdp.empty({N2}, 'i32')
   for i = 0, N2 - 1 do tb:ptr()[i] = (i * 7919) % V2 end
   local function peak(f)
      xb.requires_grad, wb.requires_grad = true, true
      xb.grad, wb.grad = nil, nil
      local h = ops.scale(xb, 1)
      fsdp.reset_peak_memory()
      local base = fsdp.memory_stats().current
      fsdp.backward(f(h))
      return fsdp.memory_stats().peak - base
   end
   local p_unfused = peak(function(h) return ops.cross_entropy(ops.linear(h, wb), tb) end)
   local p_fused = peak(function(h) return ops.linear_cross_entropy(h, wb, tb, -100, {chunk_rows = 128}) end)
   local logits = N2 * V2 * 4
   t.check(p_unfused >= logits, 'unfused peak %.1f MiB should hold the %.1f MiB of logits', p_unfused / 2^20, logits / 2^20)
   t.check(p_fused < logits / 4, 'fused peak %.1f MiB, want well under the %.1f MiB of logits (unfused %.1f MiB)',
           p_fused / 2^20, logits / 2^20, p_unfused / 2^20)
   print(string.format('peak above the inputs: unfused %.1f MiB, chunked %.1f MiB', p_unfused / 2^20, p_fused / 2^20))
end

return t.done()
