-- Hugging Face round trip without leaving fsdp-lua:
--  1. pretrain a tiny Llama from scratch (checkpoint + --export-dir),
--  2. fine-tune that export as a Hugging Face directory with
--     finetune_llama2.lua (one command; it carries the tokenizer over),
--  3. re-import the fine-tuned export and check its logits equal those of
--     the final checkpoint loaded into the engine, bitwise (f32 export),
--  4. the same for minGPT exported as GPT2LMHeadModel (Conv1D transposes),
--     a bf16 export (values within bf16 rounding) and a sharded export (index).
-- Loading the exports into transformers is `make test-interop`.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local hf = require 'fsdp.hf'
local ckpt = require 'fsdp.checkpoint'
local export = require 'fsdp.export'

local dir = os.getenv('FSDP_EXPORT_TEST_DIR')
local keep = dir ~= nil
if not dir then dir = os.tmpname(); os.remove(dir) end
fs.mkdirs(dir)
local bin = fsdp.root .. '/build/fsdp-lua'
local corpus = fsdp.root .. '/data/tinyshakespeare.txt'
if not fs.exists(corpus) then corpus = '/usr/share/games/fortunes/cookie' end
local tok = fsdp.root .. '/tests/golden/tokenizers/llama2like'
local small = ' --batch-size 4 --seq-len 32 --eval-every 0 --log-every 5 --sample-tokens 0 --param-dtype f32 '

local st, out = t.sh(bin .. ' recipes/pretrain.lua --size 350M --n-layer 2 --n-head 4 --n-embd 64 --tokenizer ' .. tok ..
                     ' --data ' .. corpus .. ' --max-steps 10 --warmup-steps 2 --lr 3e-3' .. small ..
                     ' --checkpoint-dir ' .. dir .. '/pre_ck --export-dir ' .. dir .. '/pre_hf --run-dir ' .. dir .. '/run1')
t.check(st == 0, 'pretrain + export failed:\n%s', out)
t.check(fs.exists(dir .. '/pre_hf/config.json') and fs.exists(dir .. '/pre_hf/model.safetensors') and
        fs.exists(dir .. '/pre_hf/tokenizer.json'), 'the export holds config.json, model.safetensors, tokenizer.json')

st, out = t.sh(bin .. ' recipes/finetune_llama2.lua --model ' .. dir .. '/pre_hf --data ' .. corpus ..
               ' --max-steps 5 --warmup-steps 1' .. small .. '--grad-accum-steps 1 --checkpoint-dir ' .. dir ..
               '/ft_ck --export-dir ' .. dir .. '/ft_hf --run-dir ' .. dir .. '/run2')
t.check(st == 0 and out:find('LlamaForCausalLM from ' .. dir .. '/pre_hf', 1, true), 'fine-tuning the export failed:\n%s', out)

local x = fsdp.empty({2, 16}, 'i32')
for i = 0, 31 do x:ptr()[i] = (i * 37) % 1000 end

-- logits of a model holding a checkpoint's values
local function logits_from_checkpoint(step_dir)
   local index = ckpt.read_index(step_dir)
   local model = export.model_of(index, step_dir)
   local sharded = fsdp.shard(model, {strategy = 'none'})
   ckpt.load(step_dir, sharded)
   local l = fsdp.no_grad(function() return model(x):totable() end)
   fsdp.autograd.reset()
   return l
end
local function logits_from_hf(path)
   local model = hf.load(path):materialize()
   hf.close(model)
   local l = fsdp.no_grad(function() return model(x):totable() end)
   fsdp.autograd.reset()
   return l
end
local function max_diff(a, b)
   if #a ~= #b or #a == 0 then return math.huge end
   local d = 0
   for i = 1, #a do d = math.max(d, math.abs(a[i] - b[i])) end
   return d
end

local want = logits_from_checkpoint(ckpt.latest(dir .. '/ft_ck'))
local got = logits_from_hf(dir .. '/ft_hf')
t.check(max_diff(got, want) == 0, 'fine-tuned export: logits differ from the checkpoint by %g', max_diff(got, want))
local before = logits_from_hf(dir .. '/pre_hf')
t.check(max_diff(before, want) > 0, 'fine-tuning should have changed the model')

-- minGPT -> GPT2LMHeadModel
st, out = t.sh(bin .. ' recipes/train_mingpt.lua --preset gpt-nano --data ' .. corpus .. ' --max-steps 5' .. small ..
               '--checkpoint-dir ' .. dir .. '/gpt_ck --export-dir ' .. dir .. '/gpt_hf --run-dir ' .. dir .. '/run3')
t.check(st == 0, 'minGPT export failed:\n%s', out)
for i = 0, 31 do x:ptr()[i] = (i * 37) % 256 end
local g_want = logits_from_checkpoint(ckpt.latest(dir .. '/gpt_ck'))
local g_got = logits_from_hf(dir .. '/gpt_hf')
t.check(max_diff(g_got, g_want) == 0, 'GPT-2 export: logits differ by %g', max_diff(g_got, g_want))

-- bf16 and sharded exports
st, out = t.sh(bin .. ' export ' .. dir .. '/gpt_ck ' .. dir .. '/gpt_bf16 --dtype bf16')
t.check(st == 0, 'bf16 export failed:\n%s', out)
local f = require('fsdp.safetensors').open(dir .. '/gpt_bf16/model.safetensors')
t.check(f:describe('transformer.wte.weight').dtype == 'bf16', 'bf16 export stores bf16')
f:close()
local b_got = logits_from_hf(dir .. '/gpt_bf16')
local scale = 0
for _, v in ipairs(g_want) do scale = math.max(scale, math.abs(v)) end
t.check(max_diff(b_got, g_want) < 0.05 * scale, 'bf16 export: logits drift %g (scale %g)', max_diff(b_got, g_want), scale)
st, out = t.sh(bin .. ' export ' .. dir .. '/gpt_ck ' .. dir .. '/gpt_sharded --max-shard-size 20KB')
t.check(st == 0 and fs.exists(dir .. '/gpt_sharded/model.safetensors.index.json'), 'sharded export:\n%s', out)
local s_got = logits_from_hf(dir .. '/gpt_sharded')
t.check(max_diff(s_got, g_want) == 0, 'sharded export: logits differ by %g', max_diff(s_got, g_want))

-- errors
st, out = t.sh(bin .. ' export ' .. dir .. '/nothing ' .. dir .. '/x')
t.check(st == 1 and out:find('not a checkpoint', 1, true), 'export of a non-checkpoint:\n%s', out)

-- expected logits for the transformers check (make test-interop)
if keep then
   local st_ = require 'fsdp.safetensors'
   local function save(name, vals, shape)
      local tt = fsdp.from_table(vals, shape)
      local ids = fsdp.empty({2, 16}, 'i64')
      for i = 0, 31 do ids:ptr()[i] = x:ptr()[i] end
      st_.write(dir .. '/' .. name, {{'logits', tt}, {'input_ids', ids}})
   end
   for i = 0, 31 do x:ptr()[i] = (i * 37) % 1000 end
   save('ft_hf.expected.safetensors', want, {2, 16, #want / 32})
   for i = 0, 31 do x:ptr()[i] = (i * 37) % 256 end
   save('gpt_hf.expected.safetensors', g_want, {2, 16, #g_want / 32})
else
   os.execute('rm -rf ' .. dir)
end
return t.done()
