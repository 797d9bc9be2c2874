-- fsdp.autograd: a tape of backward closures, recorded by ops in forward
-- order and run in reverse by backward(). Gradients accumulate into t.grad,
-- which is created (zero) on first use; op results are step temporaries and
-- so are their grads.
--
-- Activation checkpointing: checkpoint(fn, x) runs fn without recording and
-- keeps only its output; in backward it runs fn again with a tape of its own
-- and backpropagates through that.
local T = require 'fsdp.tensor'

local M = {}

local tape, n = {}, 0
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

-- true when an op with these inputs must record its backward
function M.needs_grad(a, b, c, d)
   if not enabled then return false end
   return (a and a.requires_grad) or (b and b.requires_grad) or (c and c.requires_grad)
       or (d and d.requires_grad) or false
end

function M.record(fn)
   n = n + 1
   tape[n] = fn
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

-- pointer to t's grad when t requires grad, else nil (kernels skip NULL)
function M.grad_ptr(t)
   if t and t.requires_grad then return M.grad_of(t):ptr() end
   return nil
end

local function run_tape(from)
   for i = n, from, -1 do
      local f = tape[i]
      tape[i] = nil
      n = i - 1
      f()
   end
end

-- Backpropagates from a scalar loss (seeded with `scale`, default 1), then
-- ends the step: every temporary (activations, their grads, the loss) is
-- freed. Returns the loss value. Parameter grads stay.
function M.backward(loss, scale)
   if loss:numel() ~= 1 then
      error(string.format('backward: the loss must have one element, it has %d', loss:numel()), 2)
   end
   local value = loss:item()
   if loss.requires_grad then
      M.grad_of(loss):fill(scale or 1)
      local ok, err = pcall(function()
         run_tape(1)
         for _, h in ipairs(end_hooks) do h() end
      end)
      if not ok then
         tape, n = {}, 0
         T.end_step()
         error(err, 0)
      end
   end
   tape, n = {}, 0
   T.end_step()
   return value
end

-- Drops the tape and frees the step's temporaries without a backward
-- (evaluation, or abandoning a step).
function M.reset()
   tape, n = {}, 0
   T.end_step()
end

-- Activation checkpointing of one unit: y = fn(x) is computed without
-- keeping fn's intermediate activations; backward recomputes them.
function M.checkpoint(fn, x)
   if not enabled then return fn(x) end
   local mark = T.temp_mark()
   enabled = false
   checkpointing = checkpointing + 1
   local ok, y = pcall(fn, x)
   checkpointing = checkpointing - 1
   enabled = true
   if not ok then error(y, 0) end
   T.release_since(mark, y)
   y.requires_grad = true
   M.record(function()
      if not y.grad then return end
      if x.requires_grad then M.grad_of(x) end -- x's grad belongs to the outer step
      local mark2 = T.temp_mark()
      local from = n + 1
      local y2 = fn(x)
      y2.grad = y.grad
      run_tape(from)
      y2.grad = nil
      T.release_since(mark2)
   end)
   return y
end

return M
