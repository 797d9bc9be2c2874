-- Train or fine-tune a causal language model on every rank of the job (a
-- world of one when started alone). The model is one of:
--   --model DIR     a Hugging Face directory (Llama, Mistral, Mixtral, OPT, GPT-2):
--                   config.json + safetensors, each rank reading only its slices
--   --size NAME     a Llama-style model from scratch (350M, 1B, 3B, 7B, 13B, 30B, 70B)
--   --preset NAME   minGPT / GPT-2 shapes from scratch (gpt-micro, gpt2, ...)
-- The data is a text file (tokenized with --tokenizer, the model's own
-- tokenizer.json, or bytes), a token file, or a directory made by
-- `fsdp-lua prepare`. Re-running the same command resumes from
-- --checkpoint-dir's latest, at any number of ranks; --export-dir writes a
-- Hugging Face directory at the end.
--
-- The recipes finetune_llama2.lua, finetune_mistral.lua, finetune_opt.lua,
-- pretrain.lua and train_mingpt.lua are this loop with other defaults.
local fsdp = require 'fsdp'
local mingpt = require 'models.mingpt'
local llama = require 'models.llama'
local hf = require 'fsdp.hf'
local AdamW = require 'optim.adamw'
local schedule = require 'optim.schedule'
local clip = require 'optim.clip'
local LossScaler = require 'optim.loss_scaler'
local dist = require 'fsdp.dist'
local fs = require 'fsdp.fs'
local log, data, ckpt = fsdp.log, fsdp.data, fsdp.checkpoint
local run = require 'fsdp.run'

-- the default corpus: tiny Shakespeare beside the checkout, else the
-- `fortunes` Debian package (installed by `make deps`)
local function default_corpus()
   for _, p in ipairs({fsdp.root .. '/data/tinyshakespeare.txt',
                       '/usr/share/games/fortunes/cookie'}) do
      if fs.exists(p) then return p end
   end
   return ''
end

local specs = {
   {'data', default_corpus(), 'text file, token file (.bin) or prepared directory to train on'},
   {'model', '', 'a Hugging Face model directory to start from (alias: --hf-model)'},
   {'hf_model', '', 'same as --model'},
   {'size', '', 'a Llama-style model from scratch: 350M, 1B, 3B, 7B, 13B, 30B, 70B (alias: --model-size)'},
   {'model_size', '', 'same as --size'},
   {'vocab_size', 0, 'vocabulary of a from-scratch model (0: the tokenizer\'s)'},
   {'tokenizer', '', "tokenizer.json or its directory for text data, or 'bytes' (default: the model's, else bytes)"},
   {'preset', 'gpt-micro', 'minGPT shape when neither --model nor --size is given: gpt-nano, gpt-micro, gpt-mini, gpt2, ...'},
   {'n_layer', 0, 'layers (0: from the preset or size)'},
   {'n_head', 0, 'attention heads (0: from the preset or size)'},
   {'n_embd', 0, 'width (0: from the preset or size)'},
   {'seq_len', 64, 'tokens per sequence'},
   {'batch_size', 16, 'sequences per micro-batch, over all ranks'},
   {'grad_accum_steps', 1, 'micro-batches per optimizer step'},
   {'max_steps', 1000, 'optimizer steps'},
   {'lr', 1e-3, 'peak learning rate'},
   {'max_lr', 0, 'same as --lr'},
   {'min_lr', 1e-4, 'final learning rate'},
   {'warmup_steps', 50, 'linear warmup steps'},
   {'decay', 'cosine', 'decay after warmup', choices = {'cosine', 'linear', 'constant'}},
   {'weight_decay', 0.1, 'AdamW weight decay (matrices only)'},
   {'beta1', 0.9, 'AdamW beta1'},
   {'beta2', 0.95, 'AdamW beta2'},
   {'max_grad_norm', 1.0, 'clip the global gradient norm (0: off)'},
   {'strategy', 'full', 'sharding', choices = {'full', 'grad_op', 'none', 'hybrid_full', 'hybrid_grad_op'}},
   {'hybrid_group_size', 0, 'ranks per shard group for hybrid strategies (0: ranks per node)'},
   {'param_dtype', 'f32', 'dtype parameters are gathered in (on a GPU also the dtype of GEMMs and attention)', choices = {'f32', 'bf16', 'f16'}},
   {'mixed_precision', false, 'gather parameters in bf16 (same as --param-dtype bf16)'},
   {'from_scratch', false, 'accepted for the FSDP scripts\' habit: --size already means from scratch'},
   {'reduce_dtype', 'f32', 'dtype gradients are reduced in', choices = {'f32', 'bf16', 'f16'}},
   {'activation_checkpointing', false, 'recompute each block in backward'},
   {'val_fraction', 0.1, 'share of the corpus held out for validation'},
   {'eval_every', 100, 'steps between validation runs (0: only at the end)'},
   {'eval_batches', 8, 'validation batches per run'},
   {'log_every', 10, 'steps between log lines'},
   {'checkpoint_dir', '', 'where checkpoints go ("" = none); resumes from its latest'},
   {'checkpoint_every', 0, 'steps between checkpoints (0: only at the end)'},
   {'keep_last', 0, 'checkpoints to keep (0: all)'},
   {'stop_after', 0, 'stop this run after N steps, with a checkpoint (0: run to max_steps)'},
   {'run_dir', 'runs/train_lm', 'metrics.jsonl and TensorBoard events (tb/) go here'},
   {'on_nan', 'skip', 'a non-finite loss or gradient norm: skip the step or stop', choices = {'skip', 'stop'}},
   {'peak_flops', 0, 'FLOP/s that MFU is measured against (0: the GPU\'s bf16 peak, or this host\'s sgemm rate)'},
   {'sample_tokens', 200, 'tokens to sample at the end'},
   {'temperature', 0.8, 'sampling temperature'},
   {'top_k', 40, 'sample among the k most likely tokens'},
   {'export_dir', '', 'write a Hugging Face directory of the final model here'},
   {'seed', 1337, 'random seed (init, data order, sampling)'},
   {'threads', 0, 'threads per rank (0: cores / ranks on this node)'},
   {'cpu_offload', false, 'on a GPU: keep parameter shards, gradients and optimizer state in pinned host memory (AdamW on the CPU)'},
   {'tf32', false, 'on a GPU: f32 matmuls on TF32 tensor cores (torch\'s allow_tf32)'},
   {'device', 'cpu', 'where the model runs: cpu, cuda (cuda:<local rank>), cuda:N or auto (cuda when a GPU is usable)'},
}
-- a recipe built on this one sets RECIPE_DEFAULTS before running it
local defaults = rawget(_G, 'RECIPE_DEFAULTS') or {}
for _, s in ipairs(specs) do
   if defaults[s[1]] ~= nil then s[2] = defaults[s[1]] end
end
local opt = fsdp.options(defaults.name or 'recipes/train_lm.lua', specs, arg)
if opt.hf_model ~= '' then opt.model = opt.hf_model end
if opt.model_size ~= '' then opt.size = opt.model_size end
if opt.max_lr > 0 then opt.lr = opt.max_lr end
if opt.mixed_precision then opt.param_dtype = 'bf16' end
if opt.model ~= '' and opt.size ~= '' then error('give --model DIR (fine-tune) or --size NAME (from scratch), not both', 0) end

dist.init()
local rank, world = dist.rank, dist.world_size
require('fsdp.threads').setup(opt.threads)
-- `fsdp-lua plan` runs this recipe without allocating: no device to open
local planning = require('fsdp.shard').plan_hook ~= nil
local dev = planning and {kind = 'cpu', index = -1} or require('fsdp.device').get(opt.device, dist.local_rank, rank)
local device = dev.index -- -1: the host
-- PyTorch FSDP's MixedPrecision(param_dtype=bf16) computes in bf16: so do the
-- GPU's GEMMs and attention here (the CPU computes in f32 whatever it gathers)
if dev.cuda and opt.param_dtype ~= 'f32' then require('fsdp.kernels').set_compute_dtype(opt.param_dtype) end
if opt.tf32 then
   if not dev.cuda then error('--tf32 needs --device cuda', 0) end
   dev.cuda.fsdp_cuda_set_tf32(1)
end
if opt.data == '' then error('no corpus found: pass --data FILE', 0) end
if opt.batch_size % world ~= 0 then
   error(string.format('--batch-size %d does not split over %d ranks', opt.batch_size, world), 0)
end
local local_batch = opt.batch_size / world

-- tokenizer: --tokenizer, else the model directory's, else bytes
local tokenizer, tokenizer_dir
if opt.tokenizer ~= '' then tokenizer_dir = opt.tokenizer
elseif opt.model ~= '' and fs.exists(opt.model .. '/tokenizer.json') then tokenizer_dir = opt.model end
if tokenizer_dir == 'bytes' then tokenizer_dir = nil end
if tokenizer_dir then tokenizer = require('fsdp.tokenizer').load(tokenizer_dir)
else tokenizer = data.ByteTokenizer.new() end

-- data: rank r reads rows [r*B, (r+1)*B) of every global batch
local source = data.open(opt.data, tokenizer)
local train = data.loader {source = source, batch_size = local_batch, seq_len = opt.seq_len, seed = opt.seed,
                           split = 'train', val_fraction = opt.val_fraction, rank = rank, world = world,
                           device = device}
local function val_loader()
   return data.loader {source = source, batch_size = local_batch, seq_len = opt.seq_len, seed = opt.seed,
                       split = 'val', val_fraction = opt.val_fraction, rank = rank, world = world,
                       device = device}
end
val_loader() -- fail now, not at the first evaluation, if the split is too small

-- model, sharded from outside: activation checkpointing first, then sharding
local data_vocab = source.vocab_size or 0 -- a token file's header, or the tokenizer's for text
local model, model_name, model_config
if opt.model ~= '' then
   model = hf.load(opt.model)
   model_name, model_config = model.hf.arch, model.hf.config
elseif opt.size ~= '' then
   local vocab = opt.vocab_size > 0 and opt.vocab_size or data_vocab
   local cfg = {preset = opt.size, vocab_size = vocab, max_position_embeddings = math.max(opt.seq_len, 4096)}
   -- the minGPT shape options shrink a preset too (tests, experiments)
   if opt.n_layer > 0 then cfg.num_hidden_layers = opt.n_layer end
   if opt.n_head > 0 then cfg.num_attention_heads, cfg.num_key_value_heads = opt.n_head, opt.n_head end
   if opt.n_embd > 0 then cfg.hidden_size, cfg.intermediate_size = opt.n_embd, 4 * opt.n_embd end
   model = llama.Llama(cfg)
   model_name, model_config = 'LlamaForCausalLM', {}
   for k, v in pairs(model.config) do if k ~= 'preset' and k ~= 'size' then model_config[k] = v end end
   model_config.model_type = 'llama'
else
   local cfg = {preset = opt.preset, vocab_size = opt.vocab_size > 0 and opt.vocab_size or (data_vocab > 0 and data_vocab or 256),
                block_size = opt.seq_len}
   for _, k in ipairs({'n_layer', 'n_head', 'n_embd'}) do
      if opt[k] > 0 then cfg[k] = opt[k] end
   end
   model = mingpt.GPT(cfg)
   model_name, model_config = 'mingpt', model.config
end
local V = model.config.vocab_size
if data_vocab > V then
   error(string.format('the data uses a vocabulary of %d tokens but the model has %d (%s)', data_vocab, V,
                       tokenizer_dir or 'byte tokens'), 0)
end
if opt.activation_checkpointing then fsdp.nn.checkpoint_units(model) end
local sharded = fsdp.shard(model, {strategy = opt.strategy, seed = opt.seed, param_dtype = opt.param_dtype,
                                   reduce_dtype = opt.reduce_dtype, device = device,
                                   cpu_offload = opt.cpu_offload,
                                   hybrid_group_size = opt.hybrid_group_size > 0 and opt.hybrid_group_size or nil})
if model.hf_source then hf.close(model) end
local optimizer = AdamW.new(sharded, {lr = opt.lr, betas = {opt.beta1, opt.beta2}, weight_decay = opt.weight_decay})
local lr_at = schedule.new {lr = opt.lr, min_lr = opt.min_lr, warmup = opt.warmup_steps,
                            total = opt.max_steps, decay = opt.decay}
local scaler = (opt.param_dtype == 'f16' or opt.reduce_dtype == 'f16') and LossScaler.new() or nil
local sample_rng = fsdp.rng(opt.seed)

log.info('model: %s%s, %d units, vocab %d, %.2fM parameters; %d rank(s), strategy %s, %d thread(s) each',
         model_name, opt.model ~= '' and (' from ' .. opt.model) or (opt.size ~= '' and (' ' .. opt.size) or ''),
         #sharded.units, V, sharded:num_parameters() / 1e6, world, opt.strategy, fsdp.get_num_threads())
log.info('device: %s', require('fsdp.device').describe(dev))
log.info('data: %s, %d tokens, %d training sequences of %d', opt.data, source.n, train:num_sequences(), opt.seq_len)

-- resume
local start_step = 0
if opt.checkpoint_dir ~= '' then
   local latest = ckpt.latest(opt.checkpoint_dir)
   if latest then
      local state, index = ckpt.load(latest, sharded, optimizer)
      start_step = state.step
      train:load_state_dict(state.data)
      optimizer.t = state.optimizer_t
      fsdp.rng_restore(sample_rng, state.rng)
      if scaler and state.scaler then scaler:load_state_dict(state.scaler) end
      log.info('resumed from %s (step %d, saved by %d rank(s))', latest, start_step, index.ranks or index.world_size)
   end
end

local function save(step)
   local path = ckpt.save(opt.checkpoint_dir, {
      step = step, sharded = sharded, optimizer = optimizer, model_name = model_name, model_config = model_config,
      tokenizer_dir = tokenizer_dir,
      keep_last = opt.keep_last, comm = dist.checkpoint_comm(),
      trainer = {step = step, data = train:state_dict(), rng = fsdp.rng_state(sample_rng),
                 scaler = scaler and scaler:state_dict() or nil,
                 schedule = {lr = opt.lr, min_lr = opt.min_lr, warmup = opt.warmup_steps,
                             total = opt.max_steps, decay = opt.decay}},
   })
   log.info('saved checkpoint %s', path)
end

local function evaluate()
   local loader, total = val_loader(), 0
   local n = math.max(1, math.min(opt.eval_batches, math.floor(loader:num_sequences() / opt.batch_size)))
   for _ = 1, n do
      local x, y = loader:next()
      total = total + fsdp.no_grad(function() return model:loss(x, y):item() end)
      fsdp.autograd.reset()
   end
   return dist.sum_number(total / n) / world
end

local metrics = assert(require('fsdp.metrics').open(opt.run_dir, {rank = rank}))
local function record(t) metrics:log(t.step, t) end

-- training loop
local last_step = opt.max_steps
if opt.stop_after > 0 then last_step = math.min(opt.max_steps, start_step + opt.stop_after) end
local tokens_per_step = opt.batch_size * opt.seq_len * opt.grad_accum_steps
local n_layer = #model:units()
local width = model.config.n_embd or model.config.hidden_size or 0
local flops_per_token = run.flops_per_token(sharded:num_parameters(), n_layer, width, opt.seq_len)
-- MFU against the device's dense bf16 peak on a GPU, the sgemm rate on the CPU
local peak = opt.peak_flops > 0 and opt.peak_flops
   or (dev.kind == 'cuda' and dev.info.peak_bf16_tflops > 0 and dev.info.peak_bf16_tflops * 1e12 * world)
   or run.cpu_peak_flops() * world
local preempt = run.preemption()
local timer = run.timer()
local console = run.console {total = opt.max_steps, start = start_step}
local t_last, steps_since = fsdp.clock(), 0
local last_loss, stopped_by
for step = start_step, last_step - 1 do
   local lr = lr_at(step)
   local loss_sum = 0
   local seed_scale = (scaler and scaler.scale or 1) / opt.grad_accum_steps
   local comm0 = sharded.comm_wait
   for micro = 1, opt.grad_accum_steps do
      sharded:set_sync(micro == opt.grad_accum_steps) -- reduce only on the last micro-batch
      timer:start('data')
      local x, y = train:next()
      timer:stop('data'); timer:start('forward')
      local loss_t = model:loss(x, y)
      timer:stop('forward'); timer:start('backward')
      loss_sum = loss_sum + fsdp.backward(loss_t, seed_scale)
      timer:stop('backward')
   end
   timer:start('optimizer')
   local loss = dist.sum_number(loss_sum / opt.grad_accum_steps) / world
   local norm = clip.global_norm(sharded)
   local take, unscale = true, 1
   if scaler then
      take, unscale = scaler:update(norm)
      norm = norm * unscale
      if not take then console:say('step %d: gradients overflowed in f16; step skipped, loss scale now %g', step + 1, scaler.scale) end
   end
   if take and run.health(step + 1, loss, norm, opt.on_nan) == 'skip' then take = false end
   if take then optimizer:step(lr, clip.clip_factor(norm, opt.max_grad_norm) * unscale) end
   sharded:zero_grad()
   timer:stop('optimizer')
   timer:add('comm_wait', sharded.comm_wait - comm0)
   last_loss = loss
   steps_since = steps_since + 1
   record {step = step + 1, loss = loss, lr = lr, grad_norm = norm, skipped = not take or nil}

   local done = step + 1
   if done % opt.log_every == 0 or done == last_step then
      local now = fsdp.clock()
      local mem = fsdp.memory_stats(device)
      local tps = steps_since * tokens_per_step / (now - t_last)
      local times = timer:take()
      for k, v in pairs(times) do times[k] = v / steps_since end
      console:step {step = done, loss = loss, lr = lr, grad_norm = norm, tokens_per_s = tps,
                    mfu = tps * flops_per_token / peak, mem_current = mem.current, mem_peak = mem.peak, times = times}
      record {step = done, tokens_per_s = tps, mfu = tps * flops_per_token / peak, mem_peak = mem.peak}
      t_last, steps_since = now, 0
   end
   if opt.eval_every > 0 and done % opt.eval_every == 0 and done ~= opt.max_steps then
      local vl = evaluate()
      record {step = done, val_loss = vl}
      console:say('step %5d | val loss %.4f', done, vl)
   end
   local stop, signal = preempt:requested(dist.world)
   if opt.checkpoint_dir ~= '' and ((opt.checkpoint_every > 0 and done % opt.checkpoint_every == 0) or stop) then
      save(done)
   end
   if stop then stopped_by, last_step = signal, done; break end
end
console:finish()

-- RUN_DIR/preempted tells a batch script to requeue (launch/slurm.sbatch)
local preempted_marker = opt.run_dir .. '/preempted'
if stopped_by then -- preempted: the checkpoint is written, leave cleanly
   if rank == 0 then
      local f = io.open(preempted_marker, 'w')
      if f then f:write(string.format('%s at step %d\n', stopped_by, last_step)); f:close() end
   end
   log.info('%s received: stopped after step %d%s; run the same command to resume', stopped_by, last_step,
            opt.checkpoint_dir ~= '' and (', checkpoint in ' .. opt.checkpoint_dir) or ' (no --checkpoint-dir: nothing saved)')
   return 0
end

if last_step < opt.max_steps then -- stopped early on request: save and leave
   if opt.checkpoint_dir ~= '' and last_step > start_step and
      not (opt.checkpoint_every > 0 and last_step % opt.checkpoint_every == 0) then save(last_step) end
   log.info('stopped after step %d of %d as asked (--stop-after %d)', last_step, opt.max_steps, opt.stop_after)
   return 0
end

if rank == 0 then os.remove(preempted_marker) end
local val_loss = evaluate()
record {step = opt.max_steps, val_loss = val_loss}
log.info('final: step %d | train loss %s | val loss %.4f', opt.max_steps, tostring(last_loss), val_loss)
if opt.checkpoint_dir ~= '' and (opt.checkpoint_every == 0 or opt.max_steps % opt.checkpoint_every ~= 0)
   and start_step < opt.max_steps then
   save(opt.max_steps)
end
metrics:close()

if opt.export_dir ~= '' then
   if opt.checkpoint_dir == '' then error('--export-dir needs --checkpoint-dir (the export reads the final checkpoint)', 0) end
   if rank == 0 then
      local r = require('fsdp.export').export(ckpt.latest(opt.checkpoint_dir), opt.export_dir)
      log.info('exported step %d to %s (%d tensors, %d tokenizer files)', r.step, opt.export_dir, r.tensors, r.tokenizer_files)
   end
   dist.barrier()
end

-- sample a few lines (every rank runs the model: its units are sharded)
if opt.sample_tokens > 0 then
   local sample = require 'fsdp.sample'
   local ids = {}
   if tokenizer.bos_id then ids[1] = tokenizer.bos_id
   else
      local nl = tokenizer:encode('\n')
      ids[1] = nl:numel() > 0 and nl:ptr()[nl:numel() - 1] or 0
      nl:free()
   end
   local first = #ids
   for _ = 1, opt.sample_tokens do
      local ctx_len = math.min(#ids, opt.seq_len)
      local hx = fsdp.empty({1, ctx_len}, 'i32')
      for i = 1, ctx_len do hx:ptr()[i - 1] = ids[#ids - ctx_len + i] end
      local x = hx:to_device(device)
      local logits = fsdp.no_grad(function() return model(x) end):cpu()
      ids[#ids + 1] = sample.pick(logits:ptr() + (ctx_len - 1) * V, V, opt.temperature, opt.top_k, sample_rng)
      fsdp.autograd.reset()
      if logits.device ~= device then logits:free() end
      if x ~= hx then x:free() end
      hx:free()
      if tokenizer.eos_id and ids[#ids] == tokenizer.eos_id then break end
   end
   log.info('sample:\n%s', tokenizer:decode(ids))
end
return 0
