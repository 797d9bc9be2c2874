-- tests/lua/gradcheck.lua: finite-difference checks through the autograd.
-- L = sum(f() .* R) for a fixed random R; for each tensor in `wrt`, sampled
-- elements of dL/dx from backward are compared with central differences of
-- L (f32, eps 1e-2 with Richardson extrapolation). The tolerance, 2% of the largest gradient of that
-- tensor, is loose for f32 noise and tight against a wrong sign, a missing
-- term or a factor of two (each changes some gradient by 100%).
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local ops, AG = fsdp.ops, fsdp.autograd

local M = {}
local rng = fsdp.rng(42)

function M.randn(shape, std)
   local x = fsdp.empty(shape, 'f32')
   fsdp.C.fsdp_rng_fill_normal(rng, x:ptr(), x:numel(), 0, std or 1)
   return x
end

-- f: function() -> output tensor; wrt: list of {label, tensor}
function M.check(name, f, wrt, opts)
   opts = opts or {}
   for _, lx in ipairs(wrt) do
      local x = lx[2]
      x.requires_grad = true
      if x.grad then x.grad:zero() end
   end
   local out = f()
   local R = M.randn(out.shape)
   fsdp.backward(ops.sum(ops.mul(out, R)))
   local eps = opts.eps or 1e-2
   local function L()
      return fsdp.no_grad(function()
         local o = f()
         local s, op, rp = 0, o:ptr(), R:ptr()
         for i = 0, o:numel() - 1 do s = s + op[i] * rp[i] end
         AG.reset()
         return s
      end)
   end
   for _, lx in ipairs(wrt) do
      local label, x = lx[1], lx[2]
      local g = x.grad
      t.check(g ~= nil, '%s: %s got no gradient', name, label)
      if g then
         local p, gp, n = x:ptr(), g:ptr(), x:numel()
         local gmax = 0
         for i = 0, n - 1 do gmax = math.max(gmax, math.abs(gp[i])) end
         local worst, worst_i, want = 0, -1, 0
         local stride = math.max(1, math.floor(n / (opts.samples or 40)))
         for i = (opts.offset or 0) % stride, n - 1, stride do
            -- central differences at eps and eps/2, combined (Richardson) so
            -- the curvature term cancels: error O(eps^4) instead of O(eps^2)
            local v = p[i]
            local function D(h)
               p[i] = v + h; local lp = L()
               p[i] = v - h; local lm = L()
               p[i] = v
               return (lp - lm) / (2 * h)
            end
            local num = (4 * D(eps / 2) - D(eps)) / 3
            local err = math.abs(num - gp[i])
            if err > worst then worst, worst_i, want = err, i, num end
         end
         -- f32 rounding of L is ~1e-7 relative; over 2*eps that is an absolute
         -- noise of a few 1e-5 on the numeric derivative, hence the floor
         t.check(worst <= (opts.tol or 2e-2) * gmax + (opts.atol or 1e-4),
                 '%s: %s: element %d: analytic %.6g vs numeric %.6g (max |g| %.4g)',
                 name, label, worst_i, worst_i >= 0 and gp[worst_i] or 0, want, gmax)
      end
   end
   R:free()
end

return M
