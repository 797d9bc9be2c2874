-- Run on every rank by tests/dist/test_memory.lua: builds a parameter-heavy
-- minGPT (12 layers, 192 wide, short sequences), shards it, trains 3 steps
-- and prints one JSON line with this rank's memory figures (bytes, from the
-- engine's allocator statistics).
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local mingpt = require 'models.mingpt'
local AdamW = require 'optim.adamw'
local strategy = arg[1] or 'full'

dist.init()
fsdp.empty_cache()
local base = fsdp.memory_stats().current
fsdp.reset_peak_memory()
local model = mingpt.GPT {vocab_size = 256, block_size = 8, n_layer = 12, n_head = 4, n_embd = 192}
local sharded = fsdp.shard(model, {strategy = strategy, seed = 1})
local opt = AdamW.new(sharded, {lr = 1e-3})
local state = fsdp.memory_stats().current - base
local build_peak = fsdp.memory_stats().peak - base

local x, y = fsdp.empty({2, 8}, 'i32'), fsdp.empty({2, 8}, 'i32')
for i = 0, 15 do x:ptr()[i] = (i * 7 + dist.rank) % 256; y:ptr()[i] = (i * 5) % 256 end
for _ = 1, 3 do
   fsdp.backward(model:loss(x, y))
   opt:step(1e-3)
   sharded:zero_grad()
end
local peak = fsdp.memory_stats().peak - base
local max_unit = 0
for i = 2, #sharded.units do max_unit = math.max(max_unit, sharded.units[i].padded) end
print('MEM ' .. fsdp.json.encode {rank = dist.rank, world = dist.world_size, params = sharded:num_parameters(),
                                   state = state, build_peak = build_peak, peak = peak, max_unit = max_unit,
                                   root_unit = sharded.units[1].padded})
return 0
