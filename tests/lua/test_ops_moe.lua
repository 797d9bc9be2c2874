-- The mixture-of-experts routing ops (kernels/moe_cpu.c): gather rows,
-- scatter-add rows, row softmax, per-row scale, top-k, and the padded
-- embedding. Each backward against finite differences of its forward
-- (tests/lua/gradcheck.lua), forward values against plain Lua, the same
-- results for 1 and 2 threads (bitwise), and bad arguments as clear errors.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local G = require 'tests.lua.gradcheck'
local ops, AG = fsdp.ops, fsdp.autograd
local randn = G.randn

fsdp.set_num_threads(1)

local function wrt(list)
   local out = {}
   for i, x in ipairs(list) do out[i] = {'input ' .. i, x} end
   return out
end

local function i32(values, shape) return fsdp.from_table(values, shape, 'i32') end

---------------------------------------------------------------------------
-- gradients vs finite differences

do
   local x = randn({5, 6})
   local idx = i32({4, 0, 4, 2, 4, 1, 0}) -- repeats: their gradients sum
   G.check('gather_rows', function() return ops.gather_rows(x, idx) end, wrt({x}))
end
do
   local base, src = randn({5, 3}), randn({6, 3})
   local idx = i32({2, 0, 2, 4, 2, 1})
   G.check('scatter_add_rows', function() return ops.scatter_add_rows(base, idx, src) end, wrt({base, src}))
end
do
   local x = randn({4, 7}, 2)
   G.check('softmax', function() return ops.softmax(x) end, wrt({x}))
   local y = randn({2, 3, 5})
   G.check('softmax 3-d', function() return ops.softmax(y) end, wrt({y}))
end
do
   local x, s = randn({4, 6}), randn({4, 1})
   G.check('row_scale', function() return ops.row_scale(x, s) end, wrt({x, s}))
end
do
   -- distinct values, spaced well beyond the finite-difference step, so the
   -- selection does not change while an element is perturbed
   local x = fsdp.empty({3, 6}, 'f32')
   local perm = {3, 0, 5, 1, 4, 2, 1, 4, 0, 5, 2, 3, 5, 4, 3, 2, 1, 0}
   for i = 0, 17 do x:ptr()[i] = perm[i + 1] * 0.5 - 1.2 end
   G.check('topk', function() local v = ops.topk(x, 2); return v end, wrt({x}))
   G.check('topk k=C', function() local v = ops.topk(x, 6); return v end, wrt({x}))
end
do
   -- the composed router: softmax over the top-k logits, gathered per slot
   local logits = fsdp.empty({4, 5}, 'f32')
   for i = 0, 19 do logits:ptr()[i] = ((i * 7) % 20) * 0.3 - 2 end
   local slots = i32({0, 3, 5, 6, 1})
   G.check('router', function()
      local v = ops.topk(logits, 2)
      local w = ops.reshape(ops.softmax(v), {8, 1})
      return ops.gather_rows(w, slots)
   end, wrt({logits}))
end
do
   local tbl = randn({6, 4})
   local idx = i32({1, 0, 3, 1, 5, 1}, {2, 3})
   G.check('embedding_padded', function() return ops.embedding_padded(idx, tbl, 2) end, wrt({tbl}))
   -- the padding row (1 here) gets no gradient from the lookup
   tbl.grad:zero()
   local out = ops.embedding_padded(idx, tbl, 1)
   fsdp.backward(ops.sum(out))
   local g = tbl.grad:totable()
   local pad_zero, other = true, true
   for j = 1, 4 do
      pad_zero = pad_zero and g[1 * 4 + j] == 0
      other = other and g[0 * 4 + j] == 1 and g[3 * 4 + j] == 1 and g[5 * 4 + j] == 1
   end
   t.check(pad_zero, 'embedding_padded: the padding row got a gradient')
   t.check(other, 'embedding_padded: the other rows should get one per use')
end

---------------------------------------------------------------------------
-- forward values against plain Lua

do
   local x = fsdp.from_table({1, 5, 3, 5, -1, 0 / 0, 2, 7, 7, 7, 1, 2}, {2, 6})
   local v, ix = fsdp.no_grad(function() return ops.topk(x, 3) end)
   local vt, it = v:totable(), ix:totable()
   -- row 1: 5 (col 1) and 5 (col 3) tie: the lower column first; NaN ranks first
   t.check(it[1] == 5 and vt[1] ~= vt[1], 'topk: NaN should rank first, got col %d', it[1])
   t.check(it[2] == 1 and it[3] == 3 and vt[2] == 5 and vt[3] == 5, 'topk: ties in column order (%d, %d)', it[2], it[3])
   t.check(it[4] == 1 and it[5] == 2 and it[6] == 3, 'topk: row 2 picks columns 1, 2, 3 (got %d, %d, %d)', it[4], it[5], it[6])
   AG.reset()
end
do
   local x = fsdp.from_table({1, 2, 3, 1000, 1000, -1000}, {2, 3})
   local y = fsdp.no_grad(function() return ops.softmax(x) end):totable()
   local e = {math.exp(1), math.exp(2), math.exp(3)}
   local s = e[1] + e[2] + e[3]
   for i = 1, 3 do t.close(y[i], e[i] / s, 1e-6, 0, 'softmax[%d]', i) end
   t.close(y[4], 0.5, 1e-6, 0, 'softmax of large logits'); t.close(y[6], 0, 0, 1e-30, 'softmax underflow')
   local src = fsdp.from_table({1, 2, 10, 20, 100, 200}, {3, 2})
   local base = fsdp.from_table({0.5, 0.5, 0, 0}, {2, 2})
   local out = fsdp.no_grad(function() return ops.scatter_add_rows(base, i32({1, 0, 1}), src) end):totable()
   local want = {10.5, 20.5, 101, 202}
   for i = 1, 4 do t.check(out[i] == want[i], 'scatter_add_rows[%d] = %g, want %g', i, out[i], want[i]) end
   local g = fsdp.no_grad(function() return ops.gather_rows(src, i32({2, 2, 0})) end):totable()
   local gw = {100, 200, 100, 200, 1, 2}
   for i = 1, 6 do t.check(g[i] == gw[i], 'gather_rows[%d] = %g, want %g', i, g[i], gw[i]) end
   local r = fsdp.no_grad(function() return ops.row_scale(src, fsdp.from_table({2, -1, 0.5})) end):totable()
   local rw = {2, 4, -10, -20, 50, 100}
   for i = 1, 6 do t.check(r[i] == rw[i], 'row_scale[%d] = %g, want %g', i, r[i], rw[i]) end
   AG.reset()
end

---------------------------------------------------------------------------
-- determinism: 1 and 2 threads give the same bits (large enough to go parallel)

do
   local N, Cc, M = 300, 130, 900
   local x = randn({N, Cc})
   local idx = fsdp.empty({M}, 'i32')
   for i = 0, M - 1 do idx:ptr()[i] = (i * 37) % N end
   local first = fsdp.empty({M}, 'i32') -- slot 0 of each row's top-3
   for i = 0, M - 1 do first:ptr()[i] = 3 * i end
   local function run(threads)
      fsdp.set_num_threads(threads)
      x.grad = nil
      x.requires_grad = true
      local g = ops.gather_rows(x, idx)
      local w = ops.softmax(ops.topk(g, 3))
      local w1 = ops.gather_rows(ops.reshape(w, {M * 3, 1}), first)
      local y = ops.scatter_add_rows(fsdp.zeros({N, Cc}, 'f32'), idx, ops.row_scale(ops.softmax(g), w1))
      local out = y:totable()
      fsdp.backward(ops.sum(ops.mul(y, y)))
      return out, x.grad:totable()
   end
   AG.reset()
   local y1, g1 = run(1)
   local y2, g2 = run(2)
   local same = #y1 == #y2 and #g1 == #g2
   for i = 1, #y1 do same = same and y1[i] == y2[i] end
   for i = 1, #g1 do same = same and g1[i] == g2[i] end
   t.check(same, 'moe ops: 1 and 2 threads differ')
   fsdp.set_num_threads(1)
end

---------------------------------------------------------------------------
-- bad arguments: clear errors, no crash

do
   local x = randn({4, 3})
   t.raises(function() ops.gather_rows(x, i32({0, 4})) end, {'gather_rows', 'indices[1] = 4', '[0, 4)'}, 'index out of range')
   t.raises(function() ops.gather_rows(x, fsdp.from_table({0, 1})) end, {'gather_rows', 'i32'}, 'f32 indices')
   t.raises(function() ops.scatter_add_rows(x, i32({0}), randn({2, 3})) end, {'scatter_add_rows', '1 indices for 2 rows'},
            'index count')
   t.raises(function() ops.scatter_add_rows(x, i32({0}), randn({1, 5})) end, {'scatter_add_rows', 'rows of 5'}, 'row width')
   t.raises(function() ops.row_scale(x, randn({3})) end, {'row_scale', '3 elements for the 4 rows'}, 'scale size')
   t.raises(function() ops.topk(x, 4) end, {'topk', 'k = 4', '[1, 3]'}, 'k too large')
   t.raises(function() ops.topk(x, 0) end, {'topk', 'k = 0'}, 'k zero')
   t.raises(function() ops.embedding_padded(i32({0}), x, 9) end, {'embedding', 'padding_idx 9'}, 'padding_idx range')
   local C = fsdp.C
   local f = fsdp.empty({4}, 'f32')
   local bad = fsdp.from_table({0, 7}, {2}, 'i32')
   t.check(C.fsdp_gather_rows_forward_cpu(f:ptr(), f:ptr(), bad:ptr(), 2, 2, 2) ~= 0, 'C: gather index checked')
   t.check(fsdp.ffi.string(C.fsdp_last_error()):find('idx[1] = 7', 1, true) ~= nil, 'C: the error names the index')
   t.check(C.fsdp_topk_forward_cpu(f:ptr(), bad:ptr(), f:ptr(), 1, 4, 5) ~= 0, 'C: topk K > C rejected')
   t.check(C.fsdp_softmax_forward_cpu(f:ptr(), f:ptr(), 0, 4) ~= 0, 'C: softmax N = 0 rejected')
   t.check(C.fsdp_topk_backward_cpu(f:ptr(), f:ptr(), bad:ptr(), 1, 2, 2) ~= 0, 'C: topk backward index checked')
   AG.reset()
end

return t.done()
