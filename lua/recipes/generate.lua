-- Sample text from a model: a Hugging Face directory (--model) or an
-- fsdp-lua checkpoint (--checkpoint, any world size), with temperature,
-- top-k and top-p (nucleus) filtering. Runs on every rank of the job (the
-- units are sharded), rank 0 prints.
--
--   fsdp-lua recipes/generate.lua --model /models/Llama-2-7b-hf --prompt "The meaning of life" --top-p 0.9
--   fsdp-lua recipes/generate.lua --checkpoint ckpt/ --tokenizer /models/Llama-2-7b-hf
--
-- Each new token re-runs the model over the context window (no KV cache
-- yet): fine for checking a fine-tune, slow for long outputs of big models.
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local hf = require 'fsdp.hf'
local ckpt = require 'fsdp.checkpoint'
local sample = require 'fsdp.sample'
local fs = require 'fsdp.fs'

local opt = fsdp.options('recipes/generate.lua', {
   {'model', '', 'a Hugging Face model directory'},
   {'checkpoint', '', 'an fsdp-lua checkpoint directory (its latest) or step directory'},
   {'tokenizer', '', "tokenizer.json or its directory, or 'bytes' (default: the model's, else the checkpoint's, else bytes)"},
   {'prompt', '', 'text to continue (default: the tokenizer\'s BOS, or a newline)'},
   {'max_new_tokens', 100, 'tokens to generate'},
   {'temperature', 0.8, 'softmax temperature (0: greedy)'},
   {'top_k', 50, 'sample among the k most likely tokens (0: all)'},
   {'top_p', 1.0, 'sample from the smallest set holding this probability mass'},
   {'context', 1024, 'longest context fed to the model'},
   {'strategy', 'full', 'sharding over the ranks', choices = {'full', 'grad_op', 'none'}},
   {'seed', 1337, 'random seed'},
}, arg)

dist.init()
if (opt.model == '') == (opt.checkpoint == '') then error('give --model DIR or --checkpoint DIR', 0) end
local model, tokenizer_dir
if opt.model ~= '' then
   model = hf.load(opt.model)
   tokenizer_dir = fs.exists(opt.model .. '/tokenizer.json') and opt.model or nil
   fsdp.shard(model, {strategy = opt.strategy})
   hf.close(model)
else
   local step = fs.exists(opt.checkpoint .. '/index.json') and opt.checkpoint or ckpt.latest(opt.checkpoint)
   if not step then error(opt.checkpoint .. ' is not a checkpoint (no latest, no index.json)', 0) end
   local index = ckpt.read_index(step)
   model = require('fsdp.export').model_of(index, step)
   tokenizer_dir = type(index.tokenizer_dir) == 'string' and index.tokenizer_dir or nil
   ckpt.load(step, fsdp.shard(model, {strategy = opt.strategy}))
end
if opt.tokenizer ~= '' then tokenizer_dir = opt.tokenizer ~= 'bytes' and opt.tokenizer or nil end
local tok = tokenizer_dir and require('fsdp.tokenizer').load(tokenizer_dir) or fsdp.data.ByteTokenizer.new()

local ids = {}
if opt.prompt ~= '' then
   local p = tok:encode(opt.prompt, true)
   for i = 0, p:numel() - 1 do ids[#ids + 1] = p:ptr()[i] end
   p:free()
else
   ids[1] = tok.bos_id or 10
end
local V = model.config.vocab_size
local rng = fsdp.rng(opt.seed)
local n_prompt = #ids
for _ = 1, opt.max_new_tokens do
   local ctx = math.min(#ids, opt.context)
   local x = fsdp.empty({1, ctx}, 'i32')
   for i = 1, ctx do x:ptr()[i - 1] = ids[#ids - ctx + i] end
   local logits = fsdp.no_grad(function() return model(x) end)
   ids[#ids + 1] = sample.pick(logits:ptr() + (ctx - 1) * V, V, opt.temperature, opt.top_k, rng, opt.top_p)
   fsdp.autograd.reset()
   x:free()
   if tok.eos_id and ids[#ids] == tok.eos_id then break end
end
if dist.rank == 0 then
   io.write(tok:decode(ids), '\n')
   io.stderr:write(string.format('[%d prompt tokens, %d generated]\n', n_prompt, #ids - n_prompt))
end
return 0
