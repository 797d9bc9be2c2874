-- Run on every rank by tests/dist/test_hf_sharded.lua: imports a Hugging
-- Face directory into fsdp.shard (strategy 'full': each rank reads only
-- its own slices), runs a forward without gradients and one training step,
-- and prints one JSON line: a crc32 of the logits' bytes, their relative
-- difference from transformers' (when an expected file is given), the loss,
-- and this rank's memory figures (bytes, from the engine's allocator).
--   fsdp-lua --nproc-per-node N tests/dist/hf_probe.lua DIR [EXPECTED.safetensors]
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local hf = require 'fsdp.hf'
local st = require 'fsdp.safetensors'
local ops = fsdp.ops
local dir, expected = arg[1], arg[2]

dist.init()
fsdp.empty_cache()
local base = fsdp.memory_stats().current
fsdp.reset_peak_memory()
local model = hf.load(dir)
local full_bytes = model:num_parameters() * 4
local sharded = fsdp.shard(model, {strategy = 'full'})
local load_peak = fsdp.memory_stats().peak - base
local shard_bytes, grad_bytes = 0, 0
for _, u in ipairs(sharded.units) do
   shard_bytes = shard_bytes + u.shard:nbytes()
   grad_bytes = grad_bytes + u.grad_shard:nbytes()
end

-- the batch: the fixture's, else a fixed one
local ids, targets, want
if expected then
   local ex = st.open(expected)
   ids, targets, want = ex:tensor('input_ids'), ex:tensor('targets'), ex:tensor('logits')
else
   local V = model.config.vocab_size
   ids, targets = fsdp.empty({2, 16}, 'i32'), fsdp.empty({2, 16}, 'i32')
   for i = 0, 31 do ids:ptr()[i] = (i * 7 + 3) % V; targets:ptr()[i] = (i * 5 + 1) % V end
end

-- forward without gradients: the memory figure and the logits
fsdp.reset_peak_memory()
local logits = fsdp.no_grad(function() return model(ids) end)
local forward_peak = fsdp.memory_stats().peak - base
local crc = tonumber(fsdp.C.fsdp_crc32(0, logits:ptr(), logits:nbytes()))
local rel = -1
if want then
   local a, b, diff, scale = logits:ptr(), want:ptr(), 0, 0
   for i = 0, want:numel() - 1 do
      diff = math.max(diff, math.abs(a[i] - b[i]))
      scale = math.max(scale, math.abs(b[i]))
   end
   rel = diff / scale
end
fsdp.autograd.reset()

-- one step's loss and gradient norm
local loss = fsdp.backward(model:loss(ids, targets))
local grad_norm = math.sqrt(sharded:grad_sumsq())

print('HF ' .. fsdp.json.encode {rank = dist.rank, world = dist.world_size, crc = crc, rel = rel, loss = loss,
                                  grad_norm = grad_norm, full_bytes = full_bytes, load_peak = load_peak,
                                  forward_peak = forward_peak, shard_bytes = shard_bytes, grad_bytes = grad_bytes,
                                  units = #sharded.units})
return 0
