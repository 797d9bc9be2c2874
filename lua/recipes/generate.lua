-- Sample text from a model: a Hugging Face directory (--model) or an
-- fsdp-lua checkpoint (--checkpoint, any world size), with temperature,
-- top-k and top-p (nucleus) filtering. Runs on every rank of the job (the
-- units are sharded), rank 0 prints.
--
--   fsdp-lua recipes/generate.lua --model /models/Llama-2-7b-hf --prompt "The meaning of life" --top-p 0.9
--   fsdp-lua recipes/generate.lua --checkpoint ckpt/ --tokenizer /models/Llama-2-7b-hf
--
-- With the KV cache (the default) the prompt runs once and each new token
-- costs one position; --no-kv-cache re-runs the whole context window per
-- token (the reference the cache is tested against).
local fsdp = require 'fsdp'
local dist = require 'fsdp.dist'
local sample = require 'fsdp.sample'

local opt = fsdp.options('recipes/generate.lua', {
   {'model', '', 'a Hugging Face model directory', type = 'path', exists = 'dir',
    aliases = {'hf_model', 'model_name_or_path'}, conflicts = {'checkpoint'}},
   {'checkpoint', '', 'an fsdp-lua checkpoint directory (its latest) or step directory', type = 'path',
    exists = 'dir', aliases = {'checkpoint_dir'}},
   {'adapter', '', 'a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) on top of --model',
    type = 'path', exists = 'dir'},
   {'tokenizer', '', "tokenizer.json or its directory, or 'bytes' (default: the model's, else the checkpoint's, else bytes)",
    check = fsdp.cli.checks.tokenizer},
   {'prompt', '', 'text to continue (default: the tokenizer\'s BOS, or a newline)'},
   {'max_new_tokens', 100, 'tokens to generate', type = 'integer', min = 0},
   {'temperature', 0.8, 'softmax temperature (0: greedy)', type = 'number', min = 0},
   {'top_k', 50, 'sample among the k most likely tokens (0: all)', type = 'integer', min = 0},
   {'top_p', 1.0, 'sample from the smallest set holding this probability mass', type = 'number', above = 0, max = 1},
   {'context', 1024, 'longest context fed to the model', type = 'integer', min = 1},
   {'kv_cache', true, 'keep keys and values across steps (batch of one)'},
   {'strategy', 'full', 'sharding over the ranks', choices = {'full', 'grad_op', 'none'}},
   {'seed', 1337, 'random seed', type = 'integer', min = 0},
   {'device', 'cpu', 'where the model runs: cpu, cuda (cuda:<local rank>), cuda:N or auto',
    check = fsdp.cli.checks.device},
   require('fsdp.threads').option,
   require('fsdp.export').unshard_option,
}, arg)

dist.init()
require('fsdp.threads').setup(opt.threads)
local dev = require('fsdp.device').get(opt.device, dist.local_rank, dist.rank)
local device = dev.index
local model, tok = require('fsdp.export').load_trained(opt.model, opt.checkpoint, opt.tokenizer, opt.strategy,
                                                       device, {generation = true, adapter = opt.adapter, unshard = opt.unshard, dev = dev})
-- the end-of-sequence ids (generation_config.json's, else the tokenizer's) stop it
local eos = {}
for _, id in ipairs(tok.eos_ids or {tok.eos_id}) do eos[id] = true end

-- logits of the last position for token ids ctx (a Lua list), on the host;
-- with a KV cache, ctx are the positions after the cached ones
local function next_logits(ctx, cache)
   local hx = fsdp.empty({1, #ctx}, 'i32')
   for i = 1, #ctx do hx:ptr()[i - 1] = ctx[i] end
   local x = hx:to_device(device)
   local logits = fsdp.no_grad(function() return model(x, cache) end)
   local last = logits:view({model.config.vocab_size}, {1}, (#ctx - 1) * model.config.vocab_size):cpu()
   fsdp.autograd.reset()
   if x ~= hx then x:free() end
   hx:free()
   return last
end

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
local limit = model.config.block_size or model.config.max_position_embeddings or opt.context
if opt.kv_cache and n_prompt + opt.max_new_tokens <= math.min(limit, opt.context) then
   -- the prompt once, then one position per token
   local cache = require('fsdp.kv_cache').new {max_positions = n_prompt + opt.max_new_tokens, device = device}
   local feed = ids
   for _ = 1, opt.max_new_tokens do
      local logits = next_logits(feed, cache)
      ids[#ids + 1] = sample.pick(logits:ptr(), V, opt.temperature, opt.top_k, rng, opt.top_p)
      logits:free()
      feed = {ids[#ids]}
      if eos[ids[#ids]] then break end
   end
   cache:free()
   opt.max_new_tokens = 0
end
for _ = 1, opt.max_new_tokens do
   local n = math.min(#ids, opt.context, limit)
   local ctx = {}
   for i = 1, n do ctx[i] = ids[#ids - n + i] end
   local logits = next_logits(ctx)
   ids[#ids + 1] = sample.pick(logits:ptr(), V, opt.temperature, opt.top_k, rng, opt.top_p)
   logits:free()
   if eos[ids[#ids]] then break end
end
if dist.rank == 0 then
   io.write(tok:decode(ids), '\n')
   io.stderr:write(string.format('[%d prompt tokens, %d generated]\n', n_prompt, #ids - n_prompt))
end
return 0
