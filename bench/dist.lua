-- bench/dist.lua: one rank's view of sharded training throughput, run by
-- bench/dist.sh at 1 and 2 ranks. Prints one JSON line on rank 0:
-- tokens/s, bytes this rank sent per step (from the comm layer's counters),
-- the theoretical volume of the strategy, the peak memory per rank, and
-- where a step goes (ms per step: forward, backward, clip, optimizer,
-- zero_grad, and comm_wait: the part of forward + backward spent waiting
-- for collectives).
--   build/fsdp-lua --nproc-per-node 2 bench/dist.lua --preset gpt2 --strategy full
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local mingpt = require 'models.mingpt'
local AdamW = require 'optim.adamw'
local clip = require 'optim.clip'

local opt = fsdp.options('bench/dist.lua', {
   {'preset', 'gpt-micro', 'model shape'},
   {'vocab', 50257, 'vocabulary'},
   {'batch_size', 4, 'sequences per step over all ranks'},
   {'seq_len', 64, 'tokens per sequence'},
   {'strategy', 'full', 'sharding strategy'},
   {'prefetch', 1, 'blocks gathered ahead (fsdp.shard prefetch depth)'},
   {'warmup', 2, 'untimed steps'},
   {'steps', 5, 'timed steps'},
}, arg)

dist.init()
local W = dist.world_size
local model = mingpt.GPT {preset = opt.preset, vocab_size = opt.vocab, block_size = opt.seq_len}
local sharded = fsdp.shard(model, {strategy = opt.strategy, seed = 1, prefetch = opt.prefetch})
local optimizer = AdamW.new(sharded, {lr = 1e-4})
local B = opt.batch_size / W
local x, y = fsdp.empty({B, opt.seq_len}, 'i32'), fsdp.empty({B, opt.seq_len}, 'i32')
local rng = fsdp.rng(dist.rank + 7)
for i = 0, B * opt.seq_len - 1 do
   x:ptr()[i] = tonumber(fsdp.C.fsdp_rng_next(rng) % opt.vocab)
   y:ptr()[i] = tonumber(fsdp.C.fsdp_rng_next(rng) % opt.vocab)
end

-- per-phase seconds of the timed steps (forward, backward, clip, optimizer,
-- zero_grad) and the time spent waiting for collectives (sharded.comm_wait)
local phase = {forward = 0, backward = 0, clip = 0, optimizer = 0, zero_grad = 0}
local function step()
   local t0 = fsdp.clock()
   local loss = model:loss(x, y)
   local t1 = fsdp.clock()
   fsdp.backward(loss)
   local t2 = fsdp.clock()
   local norm = clip.global_norm(sharded)
   local t3 = fsdp.clock()
   optimizer:step(1e-4, clip.clip_factor(norm, 1.0))
   local t4 = fsdp.clock()
   sharded:zero_grad()
   local t5 = fsdp.clock()
   phase.forward = phase.forward + t1 - t0
   phase.backward = phase.backward + t2 - t1
   phase.clip = phase.clip + t3 - t2
   phase.optimizer = phase.optimizer + t4 - t3
   phase.zero_grad = phase.zero_grad + t5 - t4
end

for _ = 1, opt.warmup do step() end
local function sent()
   local s = dist.world:bytes_sent()
   if sharded.shard_group and sharded.shard_group ~= dist.world then s = s + sharded.shard_group:bytes_sent() end
   if sharded.replicate_group and sharded.replicate_group ~= dist.world then s = s + sharded.replicate_group:bytes_sent() end
   return s
end
dist.barrier()
fsdp.reset_peak_memory()
for k in pairs(phase) do phase[k] = 0 end
local wait0 = sharded.comm_wait
local s0, t0 = sent(), fsdp.clock()
for _ = 1, opt.steps do step() end
dist.barrier()
local elapsed = fsdp.clock() - t0
local per_step = (sent() - s0) / opt.steps

-- theoretical bytes one rank sends per step (f32, ring accounting):
--   full: each block gathered twice (forward, backward), the root once, every unit reduce-scattered
--   grad_op: every unit gathered once and reduce-scattered
--   none: one all-reduce of all gradients: 2 (W-1)/W of them
local G = sharded.shard_count
local theory = 0
for i, u in ipairs(sharded.units) do
   local piece = (G - 1) * u.shard_size * 4
   if opt.strategy == 'full' then theory = theory + piece * (i == 1 and 2 or 3)
   elseif opt.strategy == 'grad_op' then theory = theory + piece * 2
   elseif opt.strategy == 'none' then theory = theory + 2 * (W - 1) / W * u.padded * 4 end
end
if dist.rank == 0 then
   print('BENCH ' .. fsdp.json.encode {
      preset = opt.preset, ranks = W, threads = fsdp.get_num_threads(), strategy = opt.strategy,
      tokens_per_s = opt.steps * opt.batch_size * opt.seq_len / elapsed, bytes_per_step = per_step,
      theory_bytes_per_step = theory, peak_bytes = fsdp.memory_stats().peak, params = sharded:num_parameters(),
      step_ms = 1000 * elapsed / opt.steps, forward_ms = 1000 * phase.forward / opt.steps,
      backward_ms = 1000 * phase.backward / opt.steps, clip_ms = 1000 * phase.clip / opt.steps,
      optimizer_ms = 1000 * phase.optimizer / opt.steps, zero_grad_ms = 1000 * phase.zero_grad / opt.steps,
      comm_wait_ms = 1000 * (sharded.comm_wait - wait0) / opt.steps})
end
return 0
