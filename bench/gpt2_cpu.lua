-- Training throughput on the CPU (issues 2 and 17): the GPT-2 124M shape or
-- a Llama-style ~100M model, on one rank or several.
--
--   fsdp-lua bench/gpt2_cpu.lua --batch-size 4 --seq-len 64 [--peak 155]
--   fsdp-lua bench/gpt2_cpu.lua --model llama --batch-size 4 --seq-len 256
--   fsdp-lua --nproc-per-node 2 bench/gpt2_cpu.lua --strategy full --threads 1
--
-- Models:
--   gpt2   models.mingpt's GPT (vocab 50257, 12 layers, 12 heads, width 768,
--          block_size 1024)
--   llama  models.llama's Llama at the issue-17 shape: 8 layers, width 768,
--          12 heads with 4 kv heads (GQA), SwiGLU 2048, vocab 32000, untied
--          head, RMSNorm eps 1e-5, RoPE theta 10000 (99.5M parameters)
-- fsdp.shard(model, {strategy}) (default none: on one rank that is plain
-- training), optim.adamw (weight decay 0.1 on matrices). Every step is a
-- real one on seeded random tokens: forward, cross-entropy, backward,
-- global-norm clipping, AdamW, zero_grad. --batch-size counts the sequences
-- of all ranks. After the warmup steps the timed steps give tokens/s and
-- the achieved rate:
--
--   FLOPs per token = 6 * N + 12 * n_layer * n_embd * T
--
-- N is the parameter count without the position embeddings (the tied token
-- embedding counts once, as the lm_head matmul); 12 * L * C * T is the
-- attention score and value products, forward and backward (the PaLM /
-- nanoGPT convention, full T x T, not halved for the causal mask). With
-- --peak (GFLOP/s, from bench/sgemm_peak.lua in the same run) it also
-- prints the fraction of that peak. Peak RSS is the process's VmHWM (the
-- largest over the ranks). The last line is for bench/run.sh:
--   RESULT fsdp-lua B=4 T=64 tok_s=... gflops=... step_ms=... best_ms=... steps_ms=a,b rss_mib=...
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local AdamW = require 'optim.adamw'
local clip = require 'optim.clip'
local C = fsdp.C

local opt = fsdp.options('bench/gpt2_cpu.lua', {
   {'model', 'gpt2', 'model shape', choices = {'gpt2', 'llama'}},
   {'batch_size', 4, 'sequences per step over all ranks'},
   {'seq_len', 64, 'tokens per sequence'},
   {'warmup', 2, 'untimed steps first'},
   {'steps', 5, 'timed steps'},
   {'strategy', 'none', 'sharding strategy', choices = {'full', 'grad_op', 'none'}},
   require('fsdp.threads').option,
   {'peak', 0, 'sgemm peak in GFLOP/s to compare with (0: do not)'},
   {'seed', 1337, 'seed of the init and of the token data'},
   {'label', 'fsdp-lua', 'name in the RESULT line'},
}, arg)

dist.init()
require('fsdp.threads').setup(opt.threads)
local world, rank = dist.world_size, dist.rank
if opt.batch_size % world ~= 0 then
   error(string.format('--batch-size %d does not split over %d ranks', opt.batch_size, world), 0)
end
local B, T = opt.batch_size / world, opt.seq_len

local model, L, width, n_pos
if opt.model == 'gpt2' then
   model = require('models.mingpt').GPT {vocab_size = 50257, n_layer = 12, n_head = 12, n_embd = 768, block_size = 1024}
   L, width, n_pos = 12, 768, 1024 * 768
else
   model = require('models.llama').Llama {vocab_size = 32000, hidden_size = 768, intermediate_size = 2048,
                                          num_hidden_layers = 8, num_attention_heads = 12, num_key_value_heads = 4,
                                          max_position_embeddings = 2048, rms_norm_eps = 1e-5, rope_theta = 10000.0,
                                          tie_word_embeddings = false}
   L, width, n_pos = 8, 768, 0
end
local V = model.config.vocab_size
local sharded = fsdp.shard(model, {strategy = opt.strategy, seed = opt.seed})
local optimizer = AdamW.new(sharded, {lr = 3e-4, betas = {0.9, 0.95}, eps = 1e-8, weight_decay = 0.1})

-- parameter count without the position table (its lookup is no matmul)
local n_params = sharded:num_parameters()
local flops_per_token = 6 * (n_params - n_pos) + 12 * L * width * T

-- one batch of random tokens per step, from a seeded generator per rank
local x, y = fsdp.empty({B, T}, 'i32'), fsdp.empty({B, T}, 'i32')
local rng = fsdp.rng(opt.seed + rank)
local function next_batch()
   local px, py = x:ptr(), y:ptr()
   for i = 0, B * T - 1 do
      px[i] = tonumber(C.fsdp_rng_next(rng) % V)
      py[i] = tonumber(C.fsdp_rng_next(rng) % V)
   end
end

local function step()
   next_batch()
   local loss = fsdp.backward(model:loss(x, y))
   local norm = clip.global_norm(sharded)
   optimizer:step(nil, clip.clip_factor(norm, 1.0))
   sharded:zero_grad()
   if world > 1 then dist.barrier() end
   return loss
end

-- the process's peak resident set in MiB (VmHWM)
local function peak_rss_mib()
   local f = io.open('/proc/self/status')
   if not f then return 0 end
   local s = f:read('*a')
   f:close()
   return (tonumber(s:match('VmHWM:%s*(%d+)')) or 0) / 1024
end

local function say(...) if rank == 0 then print(string.format(...)) end end
say('%s %s: %.2fM parameters (%.2fM without position table), %d rank(s) x %d thread(s), strategy %s, B=%d T=%d',
    opt.label, opt.model, n_params / 1e6, (n_params - n_pos) / 1e6, world, fsdp.get_num_threads(), opt.strategy,
    opt.batch_size, T)

for i = 1, opt.warmup do
   local t0 = fsdp.clock()
   local loss = step()
   say('  warmup %d: loss %.4f, %.0f ms', i, loss, (fsdp.clock() - t0) * 1e3)
end

local total, best, times = 0, math.huge, {}
for i = 1, opt.steps do
   local t0 = fsdp.clock()
   local loss = step()
   local dt = fsdp.clock() - t0
   total, best = total + dt, math.min(best, dt)
   times[i] = string.format('%.1f', dt * 1e3)
   say('  step %d: loss %.4f, %.0f ms', i, loss, dt * 1e3)
end

local tok_s = opt.batch_size * T * opt.steps / total
local gflops = tok_s * flops_per_token / 1e9
local mem = fsdp.memory_stats()
local rss = peak_rss_mib()
if world > 1 then rss = dist.max_number(rss) end
local line = string.format('%s B=%d T=%d: %.1f tokens/s, %.1f GFLOP/s (%.0f MFLOP/token), '
                           .. 'mean step %.0f ms, best %.0f ms, peak memory %s (pool), peak RSS %.0f MiB',
                           opt.label, opt.batch_size, T, tok_s, gflops, flops_per_token / 1e6, total / opt.steps * 1e3,
                           best * 1e3, fsdp.log.bytes(mem.peak), rss)
if opt.peak > 0 then line = line .. string.format(', %.1f%% of the %.0f GFLOP/s sgemm peak', 100 * gflops / opt.peak, opt.peak) end
say('%s', line)
say('RESULT %s B=%d T=%d tok_s=%.2f gflops=%.2f step_ms=%.1f best_ms=%.1f steps_ms=%s rss_mib=%.0f', opt.label,
    opt.batch_size, T, tok_s, gflops, total / opt.steps * 1e3, best * 1e3, table.concat(times, ','), rss)
