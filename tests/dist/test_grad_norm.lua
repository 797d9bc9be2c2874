-- The global norm's sum of squares is taken where each gradient slice is
-- finalised (the reduce-scatter's completion, the end of an unsharded
-- unit's backward) and must be the same bits as a pass over the slices at
-- clipping time: tests/dist/norm_probe.lua on 1, 2 and 4 ranks, every
-- strategy, a bf16 reduction, accumulation with and without set_sync.
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'

for _, c in ipairs({{1, 'none'}, {2, 'full'}, {2, 'grad_op'}, {2, 'none'}, {2, 'full', '0 bf16'},
                    {4, 'hybrid_full', '2'}}) do
   local n, strategy, extra = c[1], c[2], c[3] or ''
   local status, out = D.run(n, 'tests/dist/norm_probe.lua ' .. strategy .. ' ' .. extra)
   local label = string.format('%d rank(s), %s %s', n, strategy, extra)
   t.check(status == 0, '%s: exit %d\n%s', label, status, out)
   local seen = 0
   for rank, okv, rest in out:gmatch('NORM rank=(%d+) ok=(%a+) (.-zero_grad [%d.e+-]+)') do
      seen = seen + 1
      t.check(okv == 'true', '%s, rank %s: the shares differ from a fresh pass: %s', label, rank, rest)
      -- every unit (root + 3 blocks) has its share, except with DDP on
      -- several ranks (the all-reduce lands after backward: a pass then)
      local want = (strategy == 'none' and n > 1) and 0 or 4
      t.check(rest:match('^backward %S+ shares=(%d+)') == tostring(want),
              '%s, rank %s: want %d units with a share after backward: %s', label, rank, want, rest)
   end
   t.check(seen == n, '%s: %d of %d ranks reported\n%s', label, seen, n, out)
end
return t.done()
