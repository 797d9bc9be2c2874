-- Training throughput of the GPT-2 124M shape on the CPU (issue 2).
--
--   fsdp-lua bench/gpt2_cpu.lua --batch-size 4 --seq-len 64 [--peak 155]
--
-- models.mingpt's GPT (vocab 50257, 12 layers, 12 heads, width 768,
-- block_size 1024), fsdp.shard(model, {strategy = 'none'}), optim.adamw.
-- Every step is a real one on seeded random tokens: forward, cross-entropy,
-- backward, global-norm clipping, AdamW, zero_grad. After the warmup steps
-- the timed steps give tokens/s and the achieved rate:
--
--   FLOPs per token = 6 * N + 12 * n_layer * n_embd * T
--
-- N is the parameter count without the position embeddings (the tied token
-- embedding counts once, as the lm_head matmul); 12 * L * C * T is the
-- attention score and value products, forward and backward (the PaLM /
-- nanoGPT convention, full T x T, not halved for the causal mask). With
-- --peak (GFLOP/s, from bench/sgemm_peak.lua in the same run) it also
-- prints the fraction of that peak. The last line is for bench/run.sh:
--   RESULT fsdp-lua B=4 T=64 tok_s=... gflops=... step_ms=... best_ms=...
local fsdp = require 'fsdp'
local mingpt = require 'models.mingpt'
local AdamW = require 'optim.adamw'
local clip = require 'optim.clip'
local C = fsdp.C

local opt = fsdp.options('bench/gpt2_cpu.lua', {
   {'batch_size', 4, 'sequences per step'},
   {'seq_len', 64, 'tokens per sequence'},
   {'warmup', 2, 'untimed steps first'},
   {'steps', 5, 'timed steps'},
   {'threads', 0, 'threads (0: the library default, all cores)'},
   {'peak', 0, 'sgemm peak in GFLOP/s to compare with (0: do not)'},
   {'seed', 1337, 'seed of the init and of the token data'},
   {'vocab_size', 50257, 'vocabulary'},
   {'n_layer', 12, 'layers'},
   {'n_head', 12, 'heads'},
   {'n_embd', 768, 'width'},
   {'block_size', 1024, 'position table length'},
}, arg)

if opt.threads > 0 then fsdp.set_num_threads(opt.threads) end
local B, T = opt.batch_size, opt.seq_len

local model = mingpt.GPT {vocab_size = opt.vocab_size, n_layer = opt.n_layer, n_head = opt.n_head,
                          n_embd = opt.n_embd, block_size = opt.block_size}
local sharded = fsdp.shard(model, {strategy = 'none', seed = opt.seed})
local optimizer = AdamW.new(sharded, {lr = 3e-4, betas = {0.9, 0.95}, eps = 1e-8, weight_decay = 0.1})
local cfg = model.config

-- parameter count without the position table (its lookup is no matmul)
local n_params = sharded:num_parameters()
local n_flop_params = n_params - cfg.block_size * cfg.n_embd
local flops_per_token = 6 * n_flop_params + 12 * cfg.n_layer * cfg.n_embd * T

-- one batch of random tokens per step, from a seeded generator
local x, y = fsdp.empty({B, T}, 'i32'), fsdp.empty({B, T}, 'i32')
local rng = fsdp.rng(opt.seed)
local function next_batch()
   local px, py = x:ptr(), y:ptr()
   for i = 0, B * T - 1 do
      px[i] = tonumber(C.fsdp_rng_next(rng) % cfg.vocab_size)
      py[i] = tonumber(C.fsdp_rng_next(rng) % cfg.vocab_size)
   end
end

local function step()
   next_batch()
   local loss = fsdp.backward(model:loss(x, y))
   local norm = clip.global_norm(sharded)
   optimizer:step(nil, clip.clip_factor(norm, 1.0))
   sharded:zero_grad()
   return loss
end

print(string.format('fsdp-lua GPT-2: %d layers, width %d, vocab %d, %.2fM parameters (%.2fM without wpe), '
                    .. '%d threads, B=%d T=%d',
                    cfg.n_layer, cfg.n_embd, cfg.vocab_size, n_params / 1e6, n_flop_params / 1e6,
                    fsdp.get_num_threads(), B, T))

for i = 1, opt.warmup do
   local t0 = fsdp.clock()
   local loss = step()
   print(string.format('  warmup %d: loss %.4f, %.0f ms', i, loss, (fsdp.clock() - t0) * 1e3))
end

local total, best = 0, math.huge
for i = 1, opt.steps do
   local t0 = fsdp.clock()
   local loss = step()
   local dt = fsdp.clock() - t0
   total, best = total + dt, math.min(best, dt)
   print(string.format('  step %d: loss %.4f, %.0f ms', i, loss, dt * 1e3))
end

local tok_s = B * T * opt.steps / total
local gflops = tok_s * flops_per_token / 1e9
local mem = fsdp.memory_stats()
local line = string.format('fsdp-lua B=%d T=%d: %.1f tokens/s, %.1f GFLOP/s (%.0f MFLOP/token), '
                           .. 'mean step %.0f ms, best %.0f ms, peak memory %s',
                           B, T, tok_s, gflops, flops_per_token / 1e6, total / opt.steps * 1e3, best * 1e3,
                           fsdp.log.bytes(mem.peak))
if opt.peak > 0 then line = line .. string.format(', %.1f%% of the %.0f GFLOP/s sgemm peak', 100 * gflops / opt.peak, opt.peak) end
print(line)
print(string.format('RESULT fsdp-lua B=%d T=%d tok_s=%.2f gflops=%.2f step_ms=%.1f best_ms=%.1f', B, T, tok_s,
                    gflops, total / opt.steps * 1e3, best * 1e3))
