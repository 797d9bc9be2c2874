-- Validation loss and perplexity of a model on a data set: a Hugging Face
-- directory (--model) or an fsdp-lua checkpoint (--checkpoint), over the
-- validation split of --data (a prepared directory's val shards, or the
-- last --val-fraction of a text or token file). Every rank takes its share
-- of the batches; rank 0 prints the mean.
--
--   fsdp-lua recipes/eval.lua --model out/llama2-ft --data prepared/ --batches 50
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'

local opt = fsdp.options('recipes/eval.lua', {
   {'model', '', 'a Hugging Face model directory', type = 'path', exists = 'dir',
    aliases = {'hf_model', 'model_name_or_path'}, conflicts = {'checkpoint'}},
   {'checkpoint', '', 'an fsdp-lua checkpoint directory (its latest) or step directory', type = 'path',
    exists = 'dir', aliases = {'checkpoint_dir'}},
   {'adapter', '', 'a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) on top of --model',
    type = 'path', exists = 'dir'},
   {'data', '', 'text file, token file or prepared directory', type = 'path', exists = true},
   {'tokenizer', '', "tokenizer for text data, or 'bytes' (default: the model's or checkpoint's)",
    check = fsdp.cli.checks.tokenizer},
   {'split', 'val', 'which split to evaluate', choices = {'val', 'train'}},
   {'val_fraction', 0.1, 'held-out share of a single file', type = 'number', above = 0, below = 1},
   {'seq_len', 256, 'tokens per sequence', type = 'integer', min = 1, aliases = {'block_size', 'seq_length'}},
   {'batch_size', 4, 'sequences per batch over all ranks', type = 'integer', min = 1},
   {'batches', 20, 'batches to evaluate (at most the split)', type = 'integer', min = 1},
   {'strategy', 'full', 'sharding over the ranks', choices = {'full', 'grad_op', 'none'}},
   {'device', 'cpu', 'where the model runs: cpu, cuda (cuda:<local rank>), cuda:N or auto',
    check = fsdp.cli.checks.device},
   require('fsdp.threads').option,
   require('fsdp.export').unshard_option,
}, arg)

dist.init()
require('fsdp.threads').setup(opt.threads)
local dev = require('fsdp.device').get(opt.device, dist.local_rank, dist.rank)
local device = dev.index
if opt.data == '' then error('give --data', 0) end
local model, tok = require('fsdp.export').load_trained(opt.model, opt.checkpoint, opt.tokenizer, opt.strategy,
                                                       device, {adapter = opt.adapter, unshard = opt.unshard, dev = dev})
if opt.batch_size % dist.world_size ~= 0 then
   error(string.format('--batch-size %d does not split over %d ranks', opt.batch_size, dist.world_size), 0)
end
local source = fsdp.data.open(opt.data, tok)
if (source.vocab_size or 0) > model.config.vocab_size then
   error(string.format('the data uses %d token ids but the model has %d', source.vocab_size, model.config.vocab_size), 0)
end
local loader = fsdp.data.loader {source = source, batch_size = opt.batch_size / dist.world_size, seq_len = opt.seq_len,
                                 split = opt.split, val_fraction = opt.val_fraction, shuffle = false,
                                 rank = dist.rank, world = dist.world_size, device = device}
local n = math.max(1, math.min(opt.batches, math.floor(loader:num_sequences() / opt.batch_size)))
-- SFT data (prepare --format sft): the loss over the learned tokens only,
-- summed over the ranks and divided by their count; plain data: the mean of
-- the batches' mean losses
local masked = loader.peek_targets ~= nil
local total, count = 0, 0
for _ = 1, n do
   local targets = masked and loader:peek_targets(1)
   local x, y, extra = loader:next()
   if extra then
      total = total + fsdp.no_grad(function()
         return model:loss(x, y, {positions = extra.positions, denominator = 1}):item()
      end)
      count = count + targets
   else
      total = total + fsdp.no_grad(function() return model:loss(x, y):item() end)
   end
   fsdp.autograd.reset()
end
local loss
if masked then loss = dist.sum_number(total) / math.max(count, 1)
else loss = dist.sum_number(total / n) / dist.world_size end
if dist.rank == 0 then
   print(string.format('%s split of %s: %d batches of %d x %d tokens%s: loss %.4f, perplexity %.3f',
                       opt.split, opt.data, n, opt.batch_size, opt.seq_len,
                       masked and string.format(' (%d learned tokens)', count) or '', loss, math.exp(loss)))
end
return 0
