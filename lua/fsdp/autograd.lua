-- fsdp.autograd: a tape of backward closures, recorded by ops in forward
-- order and run in reverse by backward(). Gradients accumulate into t.grad,
-- which is created (zero) on first use, or left unfilled when the op's
-- kernel writes all of it (write_grad); op results are step temporaries and
-- so are their grads.
--
-- Activation checkpointing: checkpoint(fn, x) runs fn without recording and
-- keeps only its output; in backward it runs fn again with a tape of its own
-- and backpropagates through that.
local T = require 'fsdp.tensor'

local M = {}

local tape, outs, n = {}, {}, 0
local enabled = true
local checkpointing = 0 -- depth of activation-checkpointed forwards running unrecorded
local end_hooks = {}

-- fn() runs after every successful backward, before temporaries are freed
-- (fsdp.shard waits for its gradient reductions there)
function M.on_backward_end(fn) end_hooks[#end_hooks + 1] = fn end

function M.is_enabled() return enabled end

-- true while a training forward runs: recording, or the unrecorded first
-- pass of an activation-checkpointed unit (which backward re-runs); false
-- under no_grad (evaluation, generation). Dropout-like ops act only then.
function M.training() return enabled or checkpointing > 0 end

-- runs fn(...) with recording off; errors pass through with recording restored
function M.no_grad(fn, ...)
   local prev = enabled
   enabled = false
   local res = {pcall(fn, ...)}
   enabled = prev
   if not res[1] then error(res[2], 0) end
   return unpack(res, 2, table.maxn(res))
end

-- checkpointed forwards in progress (innermost last): {kept = {...}} while
-- a unit's forward runs unrecorded, {kept = ..., replay = true, next = n}
-- while backward recomputes it
local regions = {}

-- true when an op with these inputs must record its backward (while a
-- checkpointed unit runs unrecorded, it notes that its backward is wanted)
function M.needs_grad(a, b, c, d)
   local any = (a and a.requires_grad) or (b and b.requires_grad) or (c and c.requires_grad)
       or (d and d.requires_grad) or false
   if not enabled then
      if any and checkpointing > 0 then regions[#regions].wanted = true end
      return false
   end
   return any
end

-- fn: the backward of an op; out (optional): the tensor the op made.
-- Once fn has run, nothing reads out or its gradient again (every op that
-- read out was recorded after it, so its backward ran before), so both are
-- freed then when they are temporaries of the step: backward holds the
-- activations not yet reached and the gradients in flight, not every
-- gradient of the step (that was the peak: the activations twice).
function M.record(fn, out)
   n = n + 1
   tape[n] = fn
   outs[n] = out or false
end

function M.tape_length() return n end

-- the gradient buffer of t, zero-filled on first use
function M.grad_of(t)
   local g = t.grad
   if not g then
      g = T.zeros(t.shape, 'f32', t._temp ~= nil, t.device)
      t.grad = g
   end
   return g
end

-- the gradient buffer of t for a kernel that writes every element of it:
-- when t has none yet it is allocated without the zero fill and the kernel
-- writes (accumulate = 0), else it adds into t's buffer (accumulate = 1).
-- f(ptr, accumulate) runs the kernel and returns its status; a fresh buffer
-- is dropped again when it fails. Returns the status.
function M.write_grad(t, f)
   local g = t.grad
   if g then return f(g:ptr(), 1) end
   g = T.empty(t.shape, 'f32', t._temp ~= nil, t.device)
   t.grad = g
   local rc = f(g:ptr(), 0)
   if rc ~= 0 then t.grad = nil; g:free() end
   return rc
end

-- pointer to t's grad when t requires grad, else nil (kernels skip NULL)
function M.grad_ptr(t)
   if t and t.requires_grad then return M.grad_of(t):ptr() end
   return nil
end

local function run_tape(from)
   for i = n, from, -1 do
      local f, out = tape[i], outs[i]
      tape[i], outs[i] = nil, nil
      n = i - 1
      f()
      if out then
         local g = out.grad
         if g and g._temp then out.grad = nil; g:free() end
         if out._temp then out:free() end
      end
   end
end

local function want_scalar(loss)
   if loss:numel() ~= 1 then
      error(string.format('backward: the loss must have one element, it has %d', loss:numel()), 3)
   end
end

-- Backpropagates from a scalar loss (seeded with `scale`, default 1), then
-- ends the step: every temporary (activations, their grads, the loss) is
-- freed. Returns the loss value. Parameter grads stay.
function M.backward(loss, scale)
   want_scalar(loss)
   local value = loss:item()
   M.backward_no_read(loss, scale)
   return value
end

-- backward without reading the loss: on a GPU, reading it is a host
-- synchronisation, and a step needs none until it reads its numbers for
-- the log (add the loss into a tensor kept across the step first, and read
-- it with the gradient norm: kernels.sumsq_many)
function M.backward_no_read(loss, scale)
   want_scalar(loss)
   if loss.requires_grad then
      M.grad_of(loss):fill(scale or 1)
      local ok, err = pcall(function()
         run_tape(1)
         for _, h in ipairs(end_hooks) do h() end
      end)
      if not ok then
         tape, outs, n = {}, {}, 0
         T.end_step()
         error(err, 0)
      end
   end
   tape, outs, n = {}, {}, 0
   T.end_step()
end

-- Drops the tape and frees the step's temporaries without a backward
-- (evaluation, or abandoning a step).
function M.reset()
   tape, outs, n = {}, {}, 0
   T.end_step()
end

-- Activation checkpointing of one unit: y = fn(x) is computed without
-- keeping fn's intermediate activations; backward recomputes them. Tensors
-- fn declares with side_output are kept too, and the gradients they
-- receive flow into the recomputation.
function M.checkpoint(fn, x)
   if not enabled then return fn(x) end
   local mark = T.temp_mark()
   local region = {kept = {}}
   regions[#regions + 1] = region
   enabled = false
   checkpointing = checkpointing + 1
   local ok, y = pcall(fn, x)
   checkpointing = checkpointing - 1
   enabled = true
   regions[#regions] = nil
   if not ok then error(y, 0) end
   local kept = region.kept
   for _, t in ipairs(kept) do t:keep() end -- out of the list release_since frees
   T.release_since(mark, y)
   for _, t in ipairs(kept) do T.adopt(t) end -- temporaries of the step again
   -- no op of fn had an input that takes a gradient (x does not, and fn's
   -- parameters are frozen): nothing to recompute, no gradient flows back
   if not region.wanted then return y end
   y.requires_grad = true
   M.record(function()
      local wanted = y.grad ~= nil
      for _, t in ipairs(kept) do wanted = wanted or t.grad ~= nil end
      if not wanted then return end
      if x.requires_grad then M.grad_of(x) end -- x's grad belongs to the outer step
      local mark2 = T.temp_mark()
      local from = n + 1
      regions[#regions + 1] = {kept = kept, replay = true, next = 0}
      local ok2, y2 = pcall(fn, x)
      regions[#regions] = nil
      if not ok2 then error(y2, 0) end
      y2.grad = y.grad
      run_tape(from)
      y2.grad = nil
      T.release_since(mark2)
   end)
   return y
end

-- Declares t, made inside a unit's forward, as read outside the unit as
-- well (Mixtral's router logits, which the auxiliary loss reads after the
-- forward). Under activation checkpointing the unit's forward keeps t
-- (f32: as needing a gradient); when backward recomputes the unit, the
-- recomputed twin of t takes the gradient t received. Returns t; without
-- checkpointing it does nothing. A unit must declare the same tensors, in
-- the same order, every time it runs.
function M.side_output(t)
   local r = regions[#regions]
   if not r then return t end
   if r.replay then
      r.next = r.next + 1
      local first = r.kept[r.next]
      if not first or first.dtype ~= t.dtype then
         error('autograd: a checkpointed unit declared other side outputs when it was recomputed', 0)
      end
      if first.grad then t.grad = first.grad end
      return t
   end
   r.kept[#r.kept + 1] = t
   if t.dtype == 'f32' then t.requires_grad = true end
   return t
end

return M
