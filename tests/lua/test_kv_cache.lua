-- The explicit KV cache: for every model family, a batch of two sequences
-- decoded with a cache (a prompt of 5 positions, then one token at a time,
-- then a chunk of 2) gives at every position the logits of the whole
-- sequence run at once (within 1e-4 relative), and the cache refuses what it cannot
-- do: another batch size, positions past its end, a gradient, a freed cache.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local kv_cache = require 'fsdp.kv_cache'

fsdp.set_num_threads(1)

local V, T_, B = 37, 10, 2
local ids = {}
for i = 1, B * T_ do ids[i] = (i * 7 + 3) % V end
local function batch(from, to) -- columns from .. to (1-based) of the two sequences
   local out = {}
   for b = 0, B - 1 do for c = from, to do out[#out + 1] = ids[b * T_ + c] end end
   return fsdp.from_table(out, {B, to - from + 1}, 'i32')
end

local families = require('tests.lua.tiny_families')(V)

for _, f in ipairs(families) do
   local name, make = f[1], f[2]
   local model = make():materialize(11)
   local full = fsdp.no_grad(function() return model(batch(1, T_)) end):totable()
   fsdp.autograd.reset()
   local cache = kv_cache.new {max_positions = 12, batch = B}
   local pos, worst = 0, 0
   for _, n in ipairs({5, 1, 1, 1, 2}) do
      local got = fsdp.no_grad(function() return model(batch(pos + 1, pos + n), cache) end):totable()
      fsdp.autograd.reset()
      for b = 0, B - 1 do
         for i = 0, n - 1 do
            for v = 1, V do
               local a = got[(b * n + i) * V + v]
               local e = full[(b * T_ + pos + i) * V + v]
               worst = math.max(worst, math.abs(a - e) / math.max(1e-3, math.abs(e)))
            end
         end
      end
      pos = pos + n
      t.check(cache.pos == pos, '%s: the cache is at %d after %d positions', name, cache.pos, pos)
   end
   t.check(worst <= 1e-4, '%s: cached decoding differs from the whole sequence by %.3g relative', name, worst)
   t.raises(function() fsdp.no_grad(function() return model(batch(1, 3), cache) end) end,
            {'positions 10 .. 12 exceed the cache of 12'}, name .. ': past the end of the cache')
   t.raises(function() fsdp.no_grad(function() return model(fsdp.from_table({1}, {1, 1}, 'i32'), cache) end) end,
            {'a batch of 1 sequences, but the cache holds 2'}, name .. ': another batch size')
   cache:reset()
   t.raises(function() model(batch(1, 2), cache) end, {'no backward', 'fsdp.no_grad'},
            name .. ': a cache while recording gradients')
   fsdp.autograd.reset()
   cache:free()
   t.raises(function() fsdp.no_grad(function() return model(batch(1, 2), cache) end) end, {'freed'},
            name .. ': a freed cache')
   fsdp.autograd.reset()
end

t.raises(function() kv_cache.new {max_positions = 0} end, {'max_positions must be a positive integer'}, 'empty cache')
t.raises(function() kv_cache.new {max_positions = 4, batch = 1.5} end, {'batch must be a positive integer'}, 'bad batch')
return t.done()
