-- Train or fine-tune a causal language model on every rank of the job (a
-- world of one when started alone). The model is one of:
--   --model DIR     a Hugging Face directory (any family in lua/models):
--                   config.json + safetensors, each rank reading only its slices
--   --size NAME     a Llama-style model from scratch (350M, 1B, 3B, 7B, 13B, 30B, 70B)
--   --preset NAME   minGPT / GPT-2 shapes from scratch (gpt-micro, gpt2, ...)
-- The data is a text file (tokenized with --tokenizer, the model's own
-- tokenizer.json, or bytes), a token file, or a directory made by
-- `fsdp-lua prepare`. Re-running the same command resumes from
-- --checkpoint-dir's latest, at any number of ranks; --export-dir writes a
-- Hugging Face directory at the end.
--
-- This file returns a function of the recipe's defaults; the recipes
-- finetune_llama2.lua, finetune_mistral.lua, finetune_opt.lua,
-- finetune_qwen.lua, pretrain.lua and train_mingpt.lua call it with theirs:
--
--   return dofile(FSDP_ROOT .. '/lua/recipes/train_lm.lua') {lr = 2e-5, ...}
--
-- The result is the recipe: R.main(args) trains; R.options(args),
-- R.model(opt) and R.shard_options(opt) are what `fsdp-lua plan` asks for.
local fsdp = require 'fsdp'
local models = require 'models'
local hf = require 'fsdp.hf'
local AdamW = require 'optim.adamw'
local schedule = require 'optim.schedule'
local clip = require 'optim.clip'
local LossScaler = require 'optim.loss_scaler'
local dist = require 'fsdp.dist'
local fs = require 'fsdp.fs'
local run = require 'fsdp.run'
local log, data, ckpt = fsdp.log, fsdp.data, fsdp.checkpoint

-- the default corpus: tiny Shakespeare, shipped in data/
local function default_corpus()
   for _, p in ipairs({fsdp.root .. '/data/tinyshakespeare.txt', '/usr/share/games/fortunes/cookie'}) do
      if fs.exists(p) then return p end
   end
   return ''
end

-- the sizes --size takes: the from-scratch Llama-style presets and the
-- published shapes of every family (llama2-7b, mistral-7b, ...)
local function size_choices()
   local out = {}
   for k in pairs(require('models.llama').presets) do out[#out + 1] = k end
   table.sort(out, function(x, y) return tonumber(x:match('[%d.]+')) * (x:find('B') and 1000 or 1)
                                        < tonumber(y:match('[%d.]+')) * (y:find('B') and 1000 or 1) end)
   for _, k in ipairs(require('fsdp.plan').published_names()) do out[#out + 1] = k end
   return out
end
local function sorted_keys(t)
   local out = {}
   for k in pairs(t) do out[#out + 1] = k end
   table.sort(out)
   return out
end

local DTYPES = {'f32', 'bf16', 'f16'}
local DTYPE_SPELLINGS = {bfloat16 = 'bf16', float16 = 'f16', fp16 = 'f16', half = 'f16', float32 = 'f32',
                         fp32 = 'f32', float = 'f32'}
local SIZE_HELP = 'a Llama-style model from scratch: 350M ... 70B, or a published shape (llama2-7b, ' ..
                  'llama3-8b, mistral-7b, mixtral-8x7b, opt-1.3b, ...)'

local SPECS = {
   {'data', default_corpus(), 'text file, token file (.bin) or prepared directory to train on', type = 'path',
    exists = true, aliases = {'train_file', 'data_path'}},
   {'model', '', 'a Hugging Face model directory to start from', type = 'path', exists = 'dir',
    aliases = {'hf_model', 'model_name_or_path'},
    conflicts = {{'size', 'give --model DIR (fine-tune) or --size NAME (from scratch), not both'},
                 {'from_scratch', '--from-scratch builds a model from --size; --model DIR starts from its weights'}}},
   {'size', '', SIZE_HELP, type = 'enum', choices = size_choices(), aliases = {'model_size'}},
   {'vocab_size', 0, 'vocabulary of a from-scratch model (0: the tokenizer\'s)', type = 'integer', min = 0},
   {'tokenizer', '', "tokenizer.json or its directory for text data, or 'bytes' (default: the model's, else bytes)",
    check = fsdp.cli.checks.tokenizer},
   {'preset', 'gpt-micro', 'minGPT shape when neither --model nor --size is given', type = 'enum',
    choices = sorted_keys(require('models.mingpt').presets)},
   {'n_layer', 0, 'layers (0: from the preset or size)', type = 'integer', min = 0},
   {'n_head', 0, 'attention heads (0: from the preset or size)', type = 'integer', min = 0},
   {'n_embd', 0, 'width (0: from the preset or size)', type = 'integer', min = 0},
   {'seq_len', 64, 'tokens per sequence', type = 'integer', min = 1,
    aliases = {'block_size', 'seq_length', 'max_seq_length'}},
   {'batch_size', 16, 'sequences per micro-batch, over all ranks', type = 'integer', min = 1},
   {'packing', true, 'SFT data (prepare --format sft): pack whole samples into each row, attending only within a sample (false: one sample per row, padded)'},
   {'grad_accum_steps', 1, 'micro-batches per optimizer step', type = 'integer', min = 1,
    aliases = {'gradient_accumulation_steps', 'accum_steps'}},
   {'max_steps', 1000, 'optimizer steps', type = 'integer', min = 1, aliases = {'max_iters'}},
   {'lr', 1e-3, 'peak learning rate', type = 'number', min = 0, aliases = {'max_lr', 'learning_rate'}},
   {'min_lr', 1e-4, 'final learning rate', type = 'number', min = 0},
   {'warmup_steps', 50, 'linear warmup steps', type = 'integer', min = 0,
    aliases = {'warmup', 'warmup_iters', 'num_warmup_steps'}},
   {'decay', 'cosine', 'decay after warmup', choices = {'cosine', 'linear', 'constant'},
    values = {constant_with_warmup = 'constant'}, aliases = {'lr_scheduler_type'}},
   {'weight_decay', 0.1, 'AdamW weight decay (matrices only)', type = 'number', min = 0},
   {'beta1', 0.9, 'AdamW beta1', type = 'number', min = 0, below = 1, aliases = {'adam_beta1'}},
   {'beta2', 0.95, 'AdamW beta2', type = 'number', min = 0, below = 1, aliases = {'adam_beta2'}},
   {'max_grad_norm', 1.0, 'clip the global gradient norm (0: off)', type = 'number', min = 0,
    aliases = {'grad_clip', 'clip_grad_norm', 'gradient_clipping'}},
   {'strategy', 'full', 'sharding', choices = {'full', 'grad_op', 'none', 'hybrid_full', 'hybrid_grad_op'},
    values = {full_shard = 'full', shard_grad_op = 'grad_op', no_shard = 'none', hybrid_shard = 'hybrid_full',
              _hybrid_shard_zero2 = 'hybrid_grad_op'}, aliases = {'sharding_strategy'}},
   {'hybrid_group_size', 0, 'ranks per shard group for hybrid strategies (0: ranks per node)', type = 'integer',
    min = 0},
   {'param_dtype', 'f32', 'dtype parameters are gathered in (on a GPU also the dtype of GEMMs and attention)',
    choices = DTYPES, values = DTYPE_SPELLINGS,
    aliases = {{'mixed_precision', 'bf16'}, {'bf16', 'bf16'}, {'fp16', 'f16'}}},
   {'from_scratch', false, 'accepted for the FSDP scripts\' habit: --size already means from scratch'},
   {'reduce_dtype', 'f32', 'dtype gradients are reduced in', choices = DTYPES, values = DTYPE_SPELLINGS},
   {'activation_checkpointing', false, 'recompute each block in backward',
    aliases = {'gradient_checkpointing', 'activation_checkpoints'}},
   {'val_fraction', 0.1, 'share of the corpus held out for validation', type = 'number', above = 0, below = 1},
   {'eval_every', 100, 'steps between validation runs (0: only at the end)', type = 'integer', min = 0,
    aliases = {'eval_steps', 'eval_interval'}},
   {'eval_batches', 8, 'validation batches per run', type = 'integer', min = 1, aliases = {'eval_iters'}},
   {'log_every', 10, 'steps between log lines', type = 'integer', min = 1, aliases = {'logging_steps', 'log_interval'}},
   {'checkpoint_dir', '', 'where checkpoints go ("" = none); resumes from its latest', type = 'path',
    aliases = {'save_dir'}},
   {'checkpoint_every', 0, 'steps between checkpoints (0: only at the end)', type = 'integer', min = 0,
    aliases = {'save_steps', 'save_every', 'checkpoint_interval'}},
   {'keep_last', 0, 'checkpoints to keep (0: all)', type = 'integer', min = 0, aliases = {'save_total_limit'}},
   {'stop_after', 0, 'stop this run after N steps, with a checkpoint (0: run to max_steps)', type = 'integer', min = 0},
   {'run_dir', 'runs/train_lm', 'metrics.jsonl and TensorBoard events (tb/) go here', type = 'path',
    aliases = {'logging_dir'}},
   {'metrics_best_effort', false, 'a failed write of metrics.jsonl or the TensorBoard events is one loud warning, not an error'},
   {'on_nan', 'skip', 'a non-finite loss or gradient norm: skip the step or stop', choices = {'skip', 'stop'}},
   {'peak_flops', 0, 'FLOP/s that MFU is measured against (0: the GPU\'s bf16 peak, or this host\'s sgemm rate)',
    type = 'number', min = 0},
   {'sample_tokens', 200, 'tokens to sample at the end', type = 'integer', min = 0},
   {'temperature', 0.8, 'sampling temperature (0: greedy)', type = 'number', min = 0},
   {'top_k', 40, 'sample among the k most likely tokens (0: all)', type = 'integer', min = 0},
   {'export_dir', '', 'write a Hugging Face directory of the final model here', type = 'path'},
   {'seed', 1337, 'random seed (init, data order, sampling)', type = 'integer', min = 0},
   {'threads', 0, 'threads per rank (0: cores / ranks on this node)', type = 'integer', min = 0,
    aliases = {'num_threads'}},
   {'cpu_offload', false, 'on a GPU: keep parameter shards, gradients and optimizer state in pinned host memory (AdamW on the CPU)'},
   {'tf32', false, 'on a GPU: f32 matmuls on TF32 tensor cores (torch\'s allow_tf32)'},
   {'device', 'cpu', 'where the model runs: cpu, cuda (cuda:<local rank>), cuda:N or auto (cuda when a GPU is usable)',
    check = fsdp.cli.checks.device},
   {'force', false, 'start even when the memory plan says the run does not fit this machine'},
   -- LoRA (fsdp.lora): adapters on some linear layers, every other weight frozen
   {'lora_r', 0, 'LoRA: train adapters of this rank on --lora-targets, every other weight frozen (0: no LoRA)',
    type = 'integer', min = 0},
   {'lora_alpha', 16, 'LoRA: the adapters\' output is scaled by alpha / r', type = 'number', above = 0},
   {'lora_dropout', 0.0, 'LoRA: dropout rate of the adapters\' input while training', type = 'number', min = 0,
    below = 1},
   {'lora_targets', '', 'LoRA: comma list of linear layers to adapt (q_proj,v_proj), or all-linear ' ..
    '(default: the model family\'s: q_proj,v_proj for Llama, Mistral, Mixtral, OPT; c_attn for GPT-2)'},
   {'adapter', '', 'a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) to go on ' ..
    'training, on top of --model', type = 'path', exists = 'dir'},
   checks = {
      function(opt, given)
         if opt.min_lr > opt.lr then
            return string.format('--min-lr %g%s is above --lr %g: the schedule would rise; give a --min-lr <= --lr',
                                 opt.min_lr, given.min_lr and '' or ' (the default)', opt.lr)
         end
      end,
      function(opt, given)
         local set = {}
         for _, k in ipairs({'lora_alpha', 'lora_dropout', 'lora_targets'}) do
            if given[k] then set[#set + 1] = '--' .. k:gsub('_', '-') end
         end
         if opt.adapter ~= '' then
            if opt.model == '' then return '--adapter DIR needs --model DIR: the base model the adapter was trained on' end
            if given.lora_r then set[#set + 1] = '--lora-r' end
            if #set > 0 then
               return string.format('--adapter takes r, alpha, dropout and targets from its adapter_config.json: ' ..
                                    'drop %s', table.concat(set, ', '))
            end
         elseif opt.lora_r == 0 and #set > 0 then
            return string.format('%s without --lora-r: give --lora-r N (N > 0) to train LoRA adapters',
                                 table.concat(set, ', '))
         end
      end,
      function(opt)
         if opt.export_dir ~= '' and opt.checkpoint_dir == '' then
            return '--export-dir needs --checkpoint-dir (the export reads the final checkpoint)'
         end
      end,
   },
}

-- the recipe with `defaults` over SPECS' (name: the recipe's path in messages)
local function recipe(defaults)
   defaults = defaults or {}
   local R = {name = defaults.name or 'recipes/train_lm.lua'}
   local specs = {}
   for i, s in ipairs(SPECS) do
      local c = {}
      for k, v in pairs(s) do c[k] = v end
      if defaults[s[1]] ~= nil then c[2] = defaults[s[1]] end
      specs[i] = c
   end
   specs.checks = SPECS.checks
   for k in pairs(defaults) do
      local known = k == 'name'
      for _, s in ipairs(SPECS) do known = known or s[1] == k end
      if not known then error(string.format("%s: default for an unknown option '%s'", R.name, k), 0) end
   end
   R.specs = specs

   -- the options from the command line; aliases (--max-lr, --hf-model,
   -- --mixed-precision, ...) and conflicts are declared in SPECS and
   -- resolved by fsdp.cli
   function R.options(args)
      return (fsdp.options(R.name, specs, args))
   end

   -- the tokenizer: --tokenizer, else the model directory's, else bytes;
   -- returns it and its directory (nil for bytes)
   function R.tokenizer(opt)
      local dir
      if opt.tokenizer ~= '' then dir = opt.tokenizer
      elseif opt.model ~= '' and fs.exists(opt.model .. '/tokenizer.json') then dir = opt.model end
      if dir == 'bytes' then dir = nil end
      if dir then return require('fsdp.tokenizer').load(dir), dir end
      return data.ByteTokenizer.new(), nil
   end

   -- the model, built and not materialized (a Hugging Face model's weights
   -- are attached by run); vocab: of the data, for a model from scratch
   function R.model(opt, vocab)
      vocab = opt.vocab_size > 0 and opt.vocab_size or vocab
      if opt.model ~= '' then return hf.build(opt.model) end
      local published = opt.size ~= '' and require('fsdp.plan').published(opt.size)
      if published then -- a released shape (llama2-7b, ...): its config.json, built by its family
         if opt.vocab_size > 0 then published.vocab_size = opt.vocab_size end
         if opt.n_layer > 0 then published.num_hidden_layers = opt.n_layer end
         return models.for_hf(published, '--size ' .. opt.size).from_hf(published)
      end
      if opt.size ~= '' then
         local cfg = {preset = opt.size, vocab_size = vocab, max_position_embeddings = math.max(opt.seq_len, 4096)}
         -- the minGPT shape options shrink a preset too (tests, experiments)
         if opt.n_layer > 0 then cfg.num_hidden_layers = opt.n_layer end
         if opt.n_head > 0 then cfg.num_attention_heads, cfg.num_key_value_heads = opt.n_head, opt.n_head end
         if opt.n_embd > 0 then cfg.hidden_size, cfg.intermediate_size = opt.n_embd, 4 * opt.n_embd end
         return require('models.llama').Llama(cfg)
      end
      local cfg = {preset = opt.preset, vocab_size = (vocab and vocab > 0) and vocab or 256, block_size = opt.seq_len}
      for _, k in ipairs({'n_layer', 'n_head', 'n_embd'}) do
         if opt[k] > 0 then cfg[k] = opt[k] end
      end
      return require('models.mingpt').GPT(cfg)
   end

   -- LoRA (--lora-r, or a PEFT adapter by --adapter): adapters on the
   -- model, every other weight frozen; before the base weights are attached
   -- (they skip the adapters). `fsdp-lua plan` calls it after R.model too.
   function R.adapters(model, opt)
      if opt.adapter ~= '' then
         hf.load_adapter(model, opt.adapter)
      elseif opt.lora_r > 0 then
         local ok, err = pcall(fsdp.lora, model, {r = opt.lora_r, alpha = opt.lora_alpha, dropout = opt.lora_dropout,
                                                  seed = opt.seed,
                                                  targets = opt.lora_targets ~= '' and opt.lora_targets or nil})
         if not ok then -- the options' fault: named without a source position
            error(string.format('%s: --lora-r %d --lora-targets %s: %s', R.name, opt.lora_r,
                                opt.lora_targets ~= '' and opt.lora_targets or '(the family\'s)',
                                (tostring(err):gsub('^[^:]*:%d+: ', ''))), 0)
         end
      end
      if model.lora then model.lora.base = opt.model ~= '' and opt.model or nil end
      return model
   end

   -- what fsdp.shard is given (device: -1 for the host)
   function R.shard_options(opt, device)
      return {strategy = opt.strategy, seed = opt.seed, param_dtype = opt.param_dtype,
              reduce_dtype = opt.reduce_dtype, device = device or -1, cpu_offload = opt.cpu_offload,
              hybrid_group_size = opt.hybrid_group_size > 0 and opt.hybrid_group_size or nil}
   end

   function R.run(opt)
      dist.init()
      local rank, world = dist.rank, dist.world_size
      require('fsdp.threads').setup(opt.threads)
      local dev = require('fsdp.device').get(opt.device, dist.local_rank, rank)
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
      local tokenizer, tokenizer_dir = R.tokenizer(opt)

      -- data: rank r reads rows [r*B, (r+1)*B) of every global batch
      local source = data.open(opt.data, tokenizer)
      local function loader(split)
         return data.loader {source = source, batch_size = local_batch, seq_len = opt.seq_len, seed = opt.seed,
                             split = split, val_fraction = opt.val_fraction, rank = rank, world = world,
                             device = device, packing = opt.packing}
      end
      local train = loader('train')
      loader('val') -- fail now, not at the first evaluation, if the split is too small

      -- model, sharded from outside: activation checkpointing first, then sharding
      local data_vocab = source.vocab_size or 0 -- a token file's header, or the tokenizer's for text
      local model = R.model(opt, data_vocab)
      R.adapters(model, opt)
      if opt.model ~= '' then hf.attach_weights(model, opt.model) end
      local V = model.config.vocab_size
      if data_vocab > V then
         error(string.format('the data uses a vocabulary of %d tokens but the model has %d (%s)', data_vocab, V,
                             tokenizer_dir or 'byte tokens'), 0)
      end
      if opt.activation_checkpointing then fsdp.nn.checkpoint_units(model) end
      require('fsdp.plan').guard(model, opt, {world = world, local_world = dist.local_world_size, dev = dev})
      local sharded = fsdp.shard(model, R.shard_options(opt, device))
      if model.hf_source then hf.close(model) end
      local optimizer = AdamW.new(sharded, {lr = opt.lr, betas = {opt.beta1, opt.beta2},
                                            weight_decay = opt.weight_decay})
      local lr_at = schedule.new {lr = opt.lr, min_lr = opt.min_lr, warmup = opt.warmup_steps,
                                  total = opt.max_steps, decay = opt.decay}
      local scaler = (opt.param_dtype == 'f16' or opt.reduce_dtype == 'f16') and LossScaler.new() or nil
      local sample_rng = fsdp.rng(opt.seed)
      local desc = models.describe(model)

      log.info('model: %s%s, %d units, vocab %d, %.2fM parameters; %d rank(s), strategy %s, %d thread(s) each',
               desc.name, opt.model ~= '' and (' from ' .. opt.model) or (opt.size ~= '' and (' ' .. opt.size) or ''),
               #sharded.units, V, sharded:num_parameters() / 1e6, world, opt.strategy, fsdp.get_num_threads())
      log.info('device: %s', require('fsdp.device').describe(dev))
      log.info('data: %s, %d tokens, %d training sequences of %d', opt.data, source.n, train:num_sequences(),
               opt.seq_len)

      -- every stateful part of the run, saved and restored together
      local state = {
         optimizer = optimizer, data = train, scaler = scaler,
         rng = {state_dict = function() return fsdp.rng_state(sample_rng) end,
                load_state_dict = function(_, s) fsdp.rng_restore(sample_rng, s) end},
      }
      if model.lora then
         state.lora = require('fsdp.lora').state(model) -- the adapters' settings, the dropout step
         log.info('LoRA: r %d, alpha %g, dropout %g on %d layers; %.3fM trainable parameters', model.lora.r,
                  model.lora.alpha, model.lora.dropout, #model.lora.layers, model:num_trainable_parameters() / 1e6)
      end
      local start_step = 0
      if opt.checkpoint_dir ~= '' then
         local latest = ckpt.find_resume(opt.checkpoint_dir, dist.checkpoint_comm())
         if latest then
            local saved, index = ckpt.resume(latest, sharded, state, opt.model ~= '' and opt.model or desc.name)
            start_step = saved.step
            log.info('resumed from %s (step %d, saved by %d rank(s))', latest, start_step,
                     index.ranks or index.world_size)
         end
      end
      local last_saved = start_step

      local function save(step)
         if opt.checkpoint_dir == '' or step == last_saved then return end
         local path = ckpt.save(opt.checkpoint_dir, {
            step = step, sharded = sharded, state = state, model_name = desc.name, model_config = desc.config,
            base = opt.model ~= '' and opt.model or nil, -- names an adapter checkpoint's frozen base
            tokenizer_dir = tokenizer_dir, keep_last = opt.keep_last, comm = dist.checkpoint_comm(),
            trainer = {schedule = {lr = opt.lr, min_lr = opt.min_lr, warmup = opt.warmup_steps,
                                   total = opt.max_steps, decay = opt.decay}},
         })
         last_saved = step
         log.info('saved checkpoint %s', path)
      end

      -- the validation loss: the mean over every target of eval_batches
      -- global batches (SFT data: the learned tokens only, summed over the
      -- ranks and divided by their global count)
      local function evaluate()
         local val, total, count = loader('val'), 0, 0
         local n = math.max(1, math.min(opt.eval_batches, math.floor(val:num_sequences() / opt.batch_size)))
         for _ = 1, n do
            local targets = val.peek_targets and val:peek_targets(1)
            local x, y, extra = val:next()
            if extra then
               -- this rank's sum of the losses (denominator 1); the count is global
               total = total + fsdp.no_grad(function()
                  return model:loss(x, y, {positions = extra.positions, denominator = 1}):item()
               end)
               count = count + targets
            else
               total = total + fsdp.no_grad(function() return model:loss(x, y):item() end)
            end
            fsdp.autograd.reset()
         end
         if val.peek_targets then return dist.sum_number(total) / math.max(count, 1) end
         return dist.sum_number(total / n) / world
      end

      local metrics = assert(require('fsdp.metrics').open(opt.run_dir, {rank = rank, best_effort = opt.metrics_best_effort}))

      -- one optimizer step (grad_accum_steps micro-batches); returns the
      -- mean loss, the gradient norm and whether the update was taken
      local timer = run.timer()
      local console = run.console {total = opt.max_steps, start = start_step}
      -- With SFT data the loss is the sum over the step's learned tokens
      -- (every rank, every micro-batch) divided by their global count, known
      -- before the step runs (peek_targets): the same loss and gradients at
      -- any world size and any split into micro-batches. Each rank's
      -- micro-batch loss is its sum over count / world, as the gradient
      -- reduction averages over the ranks.
      local masked = train.peek_targets ~= nil
      local function train_step(step)
         local loss_sum = 0
         local seed_scale = (scaler and scaler.scale or 1) / (masked and 1 or opt.grad_accum_steps)
         local comm0 = sharded.comm_wait
         local targets = masked and train:peek_targets(opt.grad_accum_steps)
         for micro = 1, opt.grad_accum_steps do
            sharded:set_sync(micro == opt.grad_accum_steps) -- reduce only on the last micro-batch
            timer:start('data')
            local x, y, extra = train:next()
            timer:stop('data'); timer:start('forward')
            local ctx = extra and {positions = extra.positions, denominator = math.max(targets, 1) / world,
                                   share = 1 / opt.grad_accum_steps}
            local loss_t = model:loss(x, y, ctx)
            timer:stop('forward'); timer:start('backward')
            loss_sum = loss_sum + fsdp.backward(loss_t, seed_scale)
            timer:stop('backward')
         end
         timer:start('optimizer')
         local loss = dist.sum_number(loss_sum / (masked and 1 or opt.grad_accum_steps)) / world
         if masked and targets == 0 then
            sharded:zero_grad()
            timer:stop('optimizer')
            console:say('step %d: no learned token in the global batch; step skipped', step + 1)
            return loss, 0, false
         end
         local norm = clip.global_norm(sharded)
         local take, unscale = true, 1
         if scaler then
            take, unscale = scaler:update(norm)
            norm = norm * unscale
            if not take then
               console:say('step %d: gradients overflowed in f16; step skipped, loss scale now %g', step + 1, scaler.scale)
            end
         end
         if take and run.health(step + 1, loss, norm, opt.on_nan) == 'skip' then take = false end
         if take then optimizer:step(lr_at(step), clip.clip_factor(norm, opt.max_grad_norm) * unscale) end
         sharded:zero_grad()
         timer:stop('optimizer')
         timer:add('comm_wait', sharded.comm_wait - comm0)
         return loss, norm, take
      end

      -- the loop: one metrics row per step (train, throughput and val fields)
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
      local t_last, steps_since = fsdp.clock(), 0
      local last_loss, stopped_by, final_val
      for step = start_step, last_step - 1 do
         local lr = lr_at(step)
         local loss, norm, take = train_step(step)
         local done = step + 1
         last_loss = loss
         steps_since = steps_since + 1
         local row = {step = done, loss = loss, lr = lr, grad_norm = norm, skipped = not take or nil}
         if done % opt.log_every == 0 or done == last_step then
            local now = fsdp.clock()
            local mem = fsdp.memory_stats(device)
            local tps = steps_since * tokens_per_step / (now - t_last)
            local times = timer:take()
            for k, v in pairs(times) do times[k] = v / steps_since end
            console:step {step = done, loss = loss, lr = lr, grad_norm = norm, tokens_per_s = tps,
                          mfu = tps * flops_per_token / peak, mem_current = mem.current, mem_peak = mem.peak,
                          times = times}
            row.tokens_per_s, row.mfu, row.mem_peak = tps, tps * flops_per_token / peak, mem.peak
            t_last, steps_since = now, 0
         end
         if opt.eval_every > 0 and done % opt.eval_every == 0 and done ~= opt.max_steps then
            row.val_loss = evaluate()
            console:say('step %5d | val loss %.4f', done, row.val_loss)
         end
         if done == opt.max_steps then -- the final validation loss belongs to the last row
            row.val_loss = evaluate()
            final_val = row.val_loss
         end
         local stop, signal = preempt:requested(dist.world)
         metrics:log(done, row)
         if (opt.checkpoint_every > 0 and done % opt.checkpoint_every == 0) or stop then save(done) end
         if stop then stopped_by, last_step = signal, done; break end
      end
      console:finish()

      -- RUN_DIR/preempted tells a batch script to requeue (launch/slurm.sbatch)
      local preempted_marker = opt.run_dir .. '/preempted'
      if stopped_by then -- preempted: the checkpoint is written, leave cleanly
         metrics:close()
         if rank == 0 then
            local f = io.open(preempted_marker, 'w')
            if f then f:write(string.format('%s at step %d\n', stopped_by, last_step)); f:close() end
         end
         log.info('%s received: stopped after step %d%s; run the same command to resume', stopped_by, last_step,
                  opt.checkpoint_dir ~= '' and (', checkpoint in ' .. opt.checkpoint_dir)
                  or ' (no --checkpoint-dir: nothing saved)')
         return 0
      end
      save(last_step) -- the end of this run: --stop-after or max_steps
      metrics:close()
      if last_step < opt.max_steps then
         log.info('stopped after step %d of %d as asked (--stop-after %d)', last_step, opt.max_steps, opt.stop_after)
         return 0
      end

      if rank == 0 then os.remove(preempted_marker) end
      log.info('final: step %d | train loss %s | val loss %.4f', opt.max_steps, tostring(last_loss),
               final_val or evaluate())

      if opt.export_dir ~= '' then
         if opt.checkpoint_dir == '' then
            error('--export-dir needs --checkpoint-dir (the export reads the final checkpoint)', 0)
         end
         if rank == 0 then
            -- a LoRA run exports its adapter in PEFT's format
            local r = require('fsdp.export').export(ckpt.latest(opt.checkpoint_dir), opt.export_dir,
                                                    {adapter = model.lora ~= nil})
            log.info('exported step %d to %s (%d tensors, %d tokenizer files)', r.step, opt.export_dir, r.tensors,
                     r.tokenizer_files)
         end
         dist.barrier()
      end

      if opt.sample_tokens > 0 then
         R.sample(model, tokenizer, opt, device, sample_rng)
      end
      -- what `fsdp-lua -i RECIPE` puts in scope after the run
      R.session = {opt = opt, model = model, sharded = sharded, optimizer = optimizer, tokenizer = tokenizer,
                   train = train_step, evaluate = evaluate, save = save, loader = train, metrics = metrics}
      return 0
   end

   -- samples opt.sample_tokens tokens and logs them (every rank runs the
   -- model: its units are sharded)
   function R.sample(model, tokenizer, opt, device, rng)
      local sample = require 'fsdp.sample'
      local V = model.config.vocab_size
      local ids = {}
      if tokenizer.bos_id then ids[1] = tokenizer.bos_id
      else
         local nl = tokenizer:encode('\n')
         ids[1] = nl:numel() > 0 and nl:ptr()[nl:numel() - 1] or 0
         nl:free()
      end
      for _ = 1, opt.sample_tokens do
         local ctx_len = math.min(#ids, opt.seq_len)
         local hx = fsdp.empty({1, ctx_len}, 'i32')
         for i = 1, ctx_len do hx:ptr()[i - 1] = ids[#ids - ctx_len + i] end
         local x = hx:to_device(device)
         local logits = fsdp.no_grad(function() return model(x) end):cpu()
         ids[#ids + 1] = sample.pick(logits:ptr() + (ctx_len - 1) * V, V, opt.temperature, opt.top_k, rng)
         fsdp.autograd.reset()
         if logits.device ~= device then logits:free() end
         if x ~= hx then x:free() end
         hx:free()
         if tokenizer.eos_id and ids[#ids] == tokenizer.eos_id then break end
      end
      log.info('sample:\n%s', tokenizer:decode(ids))
   end

   function R.main(args) return R.run(R.options(args)) end
   return R
end

return recipe
