-- Run by tests/dist/test_grad_norm.lua on N ranks: the gradient's sum of
-- squares that clipping reads (each unit's share, taken where its gradient
-- slice was finalised) against a pass over every slice now, to the bit,
-- after a backward, after a second backward that accumulates without
-- zero_grad, after two micro-batches (set_sync false, then true), and 0
-- after zero_grad. args: strategy [hybrid group size] [reduce dtype].
-- Prints "NORM rank=r ok=true|false ..." per rank.
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local mingpt = require 'models.mingpt'
local strategy, group, rdtype = arg[1], tonumber(arg[2] or ''), arg[3] or 'f32'

dist.init()
fsdp.set_num_threads(1)
local model = mingpt.GPT {preset = 'gpt-nano', vocab_size = 64, block_size = 16}
local sharded = fsdp.shard(model, {strategy = strategy, seed = 3, hybrid_group_size = group, reduce_dtype = rdtype})
local x, y = fsdp.empty({2, 16}, 'i32'), fsdp.empty({2, 16}, 'i32')
local rng = fsdp.rng(11 + dist.rank)
local function batch()
   for i = 0, 31 do
      x:ptr()[i] = tonumber(fsdp.C.fsdp_rng_next(rng) % 64)
      y:ptr()[i] = tonumber(fsdp.C.fsdp_rng_next(rng) % 64)
   end
end

-- the shares' sum, and a fresh pass over every slice
local function both()
   local cached = sharded:grad_sumsq()
   local kept = {}
   for i, u in ipairs(sharded.units) do kept[i], u.grad_sq = u.grad_sq, nil end
   local fresh = sharded:grad_sumsq()
   for i, u in ipairs(sharded.units) do u.grad_sq = kept[i] end
   local shares = 0
   for _, u in ipairs(sharded.units) do if u.grad_sq then shares = shares + 1 end end
   return cached, fresh, shares
end

local ok, report = true, {}
local function expect(label)
   local cached, fresh, shares = both()
   local same = cached == fresh and fresh > 0
   ok = ok and same
   report[#report + 1] = string.format('%s %.17g/%.17g shares=%d', label, cached, fresh, shares)
end
batch(); fsdp.backward(model:loss(x, y)); expect('backward')
batch(); fsdp.backward(model:loss(x, y)); expect('accumulated')
sharded:set_sync(false); batch(); fsdp.backward(model:loss(x, y))
sharded:set_sync(true); batch(); fsdp.backward(model:loss(x, y)); expect('micro-batches')
sharded:zero_grad()
local z = sharded:grad_sumsq()
ok = ok and z == 0
report[#report + 1] = 'zero_grad ' .. z
print(string.format('NORM rank=%d ok=%s %s', dist.rank, tostring(ok), table.concat(report, '; ')))
return 0
