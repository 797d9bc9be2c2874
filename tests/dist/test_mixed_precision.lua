-- Mixed precision on 2 ranks: gathering parameters in bf16 and reducing in
-- f32 tracks the f32 run closely (bf16 keeps 8 bits of mantissa: the
-- losses stay within 2% over 30 steps); f16 with the dynamic loss scaler
-- survives an injected overflow: that step is skipped (parameters
-- unchanged), the scale halves, and training goes on with finite losses.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'

local function probe(p, r)
   local status, out = D.run(2, 'tests/dist/mp_probe.lua ' .. p .. ' ' .. r)
   t.check(status == 0, '%s/%s failed:\n%s', p, r, out)
   local rows = {}
   for json in out:gmatch('MP (%b{})') do
      local m = fsdp.json.decode(json)
      rows[m.step] = m
   end
   t.check(#rows == 30, '%s/%s: %d steps reported', p, r, #rows)
   return rows
end

local f32 = probe('f32', 'f32')
local bf16 = probe('bf16', 'f32')
local worst = 0
for s = 1, 30 do
   if f32[s] and bf16[s] then worst = math.max(worst, math.abs(bf16[s].loss - f32[s].loss) / f32[s].loss) end
end
print(string.format('bf16 gather / f32 reduce: worst loss deviation from f32 %.3g (final %.4f vs %.4f)', worst,
                    bf16[30] and bf16[30].loss or -1, f32[30] and f32[30].loss or -1))
t.check(worst < 0.02, 'bf16 gather drifts from f32 by %.3g relative', worst)
t.check(worst > 0, 'bf16 gather should not be bitwise f32 (is the dtype applied?)')
t.check(f32[30] and f32[30].loss < f32[1].loss - 0.5, 'f32 run should learn')

local f16 = probe('f16', 'f16')
local s10, s11 = f16[10], f16[11]
t.check(s10 and s10.took == false and s10.changed == false, 'the overflowing step 10 must be skipped with parameters unchanged')
t.check(s10 and s10.scale == 512, 'the scale halves after an overflow (1024 -> 512), got %s', s10 and s10.scale)
local finite, skipped = true, 0
for s = 1, 30 do
   local r = f16[s]
   if r then
      finite = finite and r.loss == r.loss and r.loss < math.huge
      if not r.took then skipped = skipped + 1 end
   end
end
t.check(finite, 'every f16 loss stays finite')
t.check(skipped == 1, 'exactly the injected step is skipped, %d were', skipped)
t.check(s11 and s11.took and s11.changed, 'training goes on after the skipped step')
t.check(f16[30] and math.abs(f16[30].loss - f32[30].loss) / f32[30].loss < 0.05,
        'f16 tracks f32 (final %.4f vs %.4f)', f16[30] and f16[30].loss or -1, f32[30] and f32[30].loss or -1)
return t.done()
