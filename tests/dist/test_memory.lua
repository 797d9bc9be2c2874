-- Memory: on N ranks each rank holds 1/N of the parameters, gradients and
-- AdamW state (4 fp32 copies: 16 bytes per parameter, plus padding), and its
-- peak never reaches what holding the full flat model would take.
--   state(N) <= 16 P / N + 16 * N (padding: < N elements per unit)     [exact accounting]
--   peak(N)  <= state(N) + (5 + 2/N) blocks + the gathered root's params and grads
--               + activations(1 rank) + 64 KiB of small temporaries; the blocks: the
--               current block's params and grads, the next block's prefetched
--               params, and two reductions in flight (each its gathered grads and a
--               1/N result slice)
--   peak(N)  <  state(N) + 4 P  (a full f32 copy of the model was never allocated)
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local D = require 'tests.dist.common'

local function probe(n, strategy)
   local status, out = D.run(n, 'tests/dist/mem_probe.lua ' .. strategy)
   t.check(status == 0, 'probe on %d rank(s) failed:\n%s', n, out)
   local rows = {}
   for json in out:gmatch('MEM (%b{})') do
      local m = fsdp.json.decode(json)
      rows[m.rank + 1] = m
   end
   t.check(#rows == n, '%d rank(s) should report, %d did:\n%s', n, #rows, out)
   return rows
end

local one = probe(1, 'none')[1]
local P = one.params
local act = one.peak - one.state -- activations and temporaries of one rank's step
print(string.format('1 rank: %d parameters, state %s, peak %s', P, fsdp.log.bytes(one.state), fsdp.log.bytes(one.peak)))
t.check(one.state >= 16 * P and one.state <= 16 * P + 4096, 'one rank holds 16 bytes per parameter (%d for %d)', one.state, P)

local n_units = 13
for _, n in ipairs({2, 4}) do
   for _, r in ipairs(probe(n, 'full')) do
      local bound = 16 * P / n + 16 * n * n_units
      print(string.format('%d ranks, rank %d: state %s (bound %s), peak %s', n, r.rank, fsdp.log.bytes(r.state),
                          fsdp.log.bytes(bound), fsdp.log.bytes(r.peak)))
      t.check(r.state <= bound, '%d ranks, rank %d: state %d bytes exceeds 16P/N + padding = %d', n, r.rank, r.state, bound)
      t.check(r.build_peak <= bound + 4096, '%d ranks, rank %d: building the model peaked at %d bytes (> %d): ' ..
              'something materialized more than the shard', n, r.rank, r.build_peak, bound)
      local gathered = (5 + 2 / n) * 4 * r.max_unit + 2 * 4 * r.root_unit + 65536
      t.check(r.peak <= r.state + gathered + act, '%d ranks, rank %d: peak %d > state + gathered units + activations = %d',
              n, r.rank, r.peak, r.state + gathered + act)
      t.check(r.peak < r.state + 4 * P, '%d ranks, rank %d: peak %d would fit a full copy of the model', n, r.rank, r.peak)
   end
end
return t.done()
