-- LoRA parity with transformers + PEFT: for each adapter of
-- tests/golden/lora (made by tests/golden/make_lora_fixtures.py with peft
-- on the tiny transformers 5 models of tests/golden/hf5: Llama, Mistral with
-- use_rslora, OPT, GPT-2's Conv1D c_attn/c_fc), the adapter loaded with
-- hf.load_adapter (what --adapter DIR does) gives PEFT's logits within 1e-5
-- relative, and 10 AdamW steps of the adapter alone (sharded, strategy
-- none) give PEFT's loss at every step within 1e-5 relative and its final
-- adapter tensors within 1e-5 relative. The trained run, checkpointed,
-- exported with --adapter (PEFT's format) and --merge (a full HF model),
-- loads back to its logits (the Python side, peft and transformers loading
-- those exports, is tests/interop/check_lora.py in `make test-interop`:
-- FSDP_EXPORT_TEST_DIR set, the exports and logits are written there).
-- recipes/finetune_lora.lua goes on training a PEFT adapter (--adapter),
-- checkpoints, resumes and exports; eval.lua and generate.lua take
-- --adapter. Then malformed adapters: each a clear error naming the file
-- and the field or tensor.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local ckpt = require 'fsdp.checkpoint'
local export = require 'fsdp.export'
local models = require 'models'
local hf = require 'fsdp.hf'
local st = require 'fsdp.safetensors'
local fs = require 'fsdp.fs'
local json = require 'fsdp.json'
local lora = require 'fsdp.lora'
local AdamW = require 'optim.adamw'

fsdp.set_num_threads(1)

local ROOT = fsdp.root .. '/tests/golden/'
local CASES = {'llama', 'mistral', 'opt', 'gpt2'}
local TOL = 1e-5

-- max |a - b| / max |b| over two Lua arrays
local function rel(a, b)
   local d, s = 0, 0
   for i = 1, #b do
      d = math.max(d, math.abs(a[i] - b[i]))
      s = math.max(s, math.abs(b[i]))
   end
   return s == 0 and d or d / s
end

local function tmpdir()
   local d = os.tmpname()
   os.remove(d)
   fs.mkdirs(d)
   return d
end
local work = tmpdir()
local interop = os.getenv('FSDP_EXPORT_TEST_DIR')
interop = interop and interop ~= '' and (interop .. '/lora') or nil
if interop then fs.mkdirs(interop) end
local manifest = {}

local function logits_of(model, ids)
   local l = fsdp.no_grad(function() return model(ids):totable() end)
   fsdp.autograd.reset()
   return l
end

local summary = {}
local function check_case(name)
   local dir = ROOT .. 'lora/' .. name
   local ex = st.open(dir .. '/expected.safetensors')
   local base = ROOT .. ex:metadata('base')
   local adamw = json.decode(ex:metadata('adamw'))
   local steps = tonumber(ex:metadata('steps'))
   local ids, targets = ex:tensor('input_ids'), ex:tensor('targets')

   local model = hf.load_adapter(hf.load(base), dir)
   t.check(#model.lora.layers > 0, '%s: the adapter wraps layers', name)
   local sharded = fsdp.shard(model, {strategy = 'none'})
   local logits = fsdp.no_grad(function() return model(ids):totable() end)
   local lrel = rel(logits, ex:tensor('logits'):totable())
   t.check(lrel <= TOL, '%s: logits differ from PEFT by %.3g relative', name, lrel)

   local opt = AdamW.new(sharded, {lr = adamw.lr, betas = adamw.betas, eps = adamw.eps,
                                   weight_decay = adamw.weight_decay})
   local want = ex:tensor('losses'):totable()
   t.check(#want == steps, '%s: %d reference losses', name, #want)
   local worst = 0
   for s = 1, steps do
      sharded:zero_grad()
      local l = fsdp.backward(model:loss(ids, targets))
      opt:step()
      worst = math.max(worst, math.abs(l - want[s]) / math.abs(want[s]))
   end
   t.check(worst <= TOL, '%s: LoRA AdamW losses differ from PEFT by %.3g relative', name, worst)

   local full = sharded:full_state_dict()
   local n, wworst = 0, 0
   for pname, v in pairs(full) do
      if lora.is_adapter(pname) then
         local key = 'final.' .. lora.peft_names(model, pname)[1]
         t.check(ex:has(key), '%s: the fixture has %s', name, key)
         if ex:has(key) then
            wworst = math.max(wworst, rel(v:totable(), ex:tensor(key):totable()))
            n = n + 1
         end
      end
   end
   local n_ref = 0
   for _, k in ipairs(ex:names()) do if k:sub(1, 6) == 'final.' then n_ref = n_ref + 1 end end
   t.check(n == n_ref and n > 0, '%s: %d adapter tensors matched %d of PEFT', name, n, n_ref)
   t.check(wworst <= TOL, '%s: the trained adapter differs from PEFT by %.3g relative', name, wworst)
   for _, v in pairs(full) do v:free() end

   -- the trained run: checkpoint, export --adapter and --merge, load back
   local trained = logits_of(model, ids)
   model.lora.base = base
   local desc = models.describe(model)
   local step = ckpt.save(work .. '/' .. name .. '.ckpt', {step = steps, sharded = sharded, state = {lora = lora.state(model)},
                                                            model_name = desc.name, model_config = desc.config,
                                                            base = base})
   local out = interop or work
   local adir, mdir = out .. '/' .. name .. '.adapter', out .. '/' .. name .. '.merged'
   local ra = export.export(step, adir, {adapter = true})
   t.check(ra.tensors == n_ref and fs.exists(adir .. '/adapter_config.json'), '%s: --adapter wrote %d tensors', name,
           ra.tensors)
   export.export(step, mdir, {merge = true})
   t.raises(function() export.export(step, work .. '/' .. name .. '.plain', {}) end, {'is a LoRA run', '--adapter',
            '--merge'}, name .. ': a LoRA checkpoint exported without --adapter or --merge')
   local cfg = json.read_file(adir .. '/adapter_config.json')
   t.check(cfg.r == model.lora.r and cfg.lora_alpha == model.lora.alpha and cfg.base_model_name_or_path == base and
           (cfg.use_rslora or false) == model.lora.rslora, '%s: adapter_config.json holds r, lora_alpha, the base', name)
   local saved = st.open(adir .. '/adapter_model.safetensors')
   local names_ok = true
   for _, k in ipairs(saved:names()) do names_ok = names_ok and ex:has('final.' .. k) end
   saved:close()
   t.check(names_ok, '%s: the exported tensors have the names PEFT saves', name)
   local again = hf.load_adapter(hf.load(base), adir)
   fsdp.shard(again, {strategy = 'none'})
   hf.close(again)
   local arel = rel(logits_of(again, ids), trained)
   t.check(arel <= TOL, '%s: the exported adapter gives other logits (%.3g relative)', name, arel)
   local merged = hf.load(mdir)
   fsdp.shard(merged, {strategy = 'none'})
   hf.close(merged)
   local mrel = rel(logits_of(merged, ids), trained)
   t.check(mrel <= TOL, '%s: the merged export gives other logits (%.3g relative)', name, mrel)
   if interop then
      local lt = fsdp.from_table(trained, ex:tensor('logits').shape)
      local ids64 = fsdp.empty(ids.shape, 'i64')
      for i = 0, ids:numel() - 1 do ids64:ptr()[i] = ids:ptr()[i] end
      st.write(out .. '/' .. name .. '.expected.safetensors', {{'logits', lt}, {'input_ids', ids64}})
      manifest[#manifest + 1] = {name = name, base = base, adapter = adir, merged = mdir,
                                 expected = out .. '/' .. name .. '.expected.safetensors'}
   end
   hf.close(model)
   ex:close()
   summary[#summary + 1] = string.format('%-8s %2d layers  logits %.1e  losses(%d) %.1e  adapter %.1e  ' ..
                                         'export: adapter %.1e merged %.1e', name, #model.lora.layers, lrel, steps,
                                         worst, wworst, arel, mrel)
end

for _, c in ipairs(CASES) do
   local ok, err = pcall(check_case, c)
   t.check(ok, '%s: %s', c, tostring(err))
   fsdp.autograd.reset()
end
for _, line in ipairs(summary) do print(line) end
if interop then
   local f = assert(io.open(interop .. '/manifest.json', 'w'))
   f:write(json.encode(json.array(manifest), '  '))
   f:close()
   t.check(#manifest == #CASES, 'the interop manifest lists %d of %d cases', #manifest, #CASES)
end

---------------------------------------------------------------------------
-- malformed adapters: a copy of the llama adapter with one thing changed

local function with_config(change)
   local d = tmpdir()
   local src = ROOT .. 'lora/llama/'
   local cfg = json.read_file(src .. 'adapter_config.json')
   change(cfg)
   local f = assert(io.open(d .. '/adapter_config.json', 'w'))
   f:write(json.encode(cfg))
   f:close()
   os.execute('cp ' .. fs.quote(src .. 'adapter_model.safetensors') .. ' ' .. fs.quote(d))
   return d
end

local function load(d) return hf.load_adapter(hf.load(ROOT .. 'hf5/llama'), d) end

local bad = {
   {function(c) c.use_dora = true end, {"'use_dora' = true", 'adapter_config.json'}},
   {function(c) c.bias = 'all' end, {"bias is 'all'"}},
   {function(c) c.modules_to_save = {'lm_head'} end, {'modules_to_save'}},
   {function(c) c.rank_pattern = {q_proj = 2} end, {"'rank_pattern'"}},
   {function(c) c.layers_to_transform = {0} end, {"'layers_to_transform'"}},
   {function(c) c.target_modules = '.*q_proj' end, {'regular expression'}},
   {function(c) c.target_modules = {'q_proj', 'qkv'} end, {"named 'qkv'"}},
   {function(c) c.target_modules = {'q_proj', 'v_proj', 'k_proj'} end, {'k_proj.lora_A.weight', 'is missing'}},
   {function(c) c.target_modules = {'q_proj'} end, {'v_proj.lora_A.weight', 'belongs to no adapter'}},
   {function(c) c.r = 3 end, {'has shape [4, 48]', 'r = 3'}},
   {function(c) c.r = 0 end, {'r must be a positive integer'}},
   {function(c) c.lora_dropout = 1.5 end, {'lora_dropout must be in [0, 1)'}},
   {function(c) c.peft_type = 'IA3' end, {"peft_type is 'IA3'"}},
}
for i, b in ipairs(bad) do
   local d = with_config(b[1])
   t.raises(function() load(d) end, b[2], 'bad adapter ' .. i)
   fs.remove_tree(d)
end
do
   local d = tmpdir()
   t.raises(function() load(d) end, {'no adapter_config.json'}, 'no adapter')
   os.execute('cp ' .. fs.quote(ROOT .. 'lora/llama/adapter_config.json') .. ' ' .. fs.quote(d))
   t.raises(function() load(d) end, {'no adapter_model.safetensors'}, 'no adapter weights')
   fs.remove_tree(d)
end

---------------------------------------------------------------------------
-- recipes/finetune_lora.lua: going on training PEFT's GPT-2 adapter
-- (--adapter), stopped and resumed, equals one straight run; its export is
-- the adapter; `fsdp-lua export --merge`; eval.lua and generate.lua with
-- --adapter equal the merged model's. A fresh --lora-r run takes the
-- family's default targets.

do
   local bin = fsdp.root .. '/build/fsdp-lua'
   local bind = require 'fsdp.ffi'
   local C = bind.C
   local data = work .. '/data'
   fs.mkdirs(data)
   local n = 40 * 12 + 1
   local tok = fsdp.empty({n}, 'i32')
   for i = 0, n - 1 do tok:ptr()[i] = (i * 31 + math.floor(i / 7)) % 97 end
   bind.check(C.fsdp_tokens_write(data .. '/train_000000.bin', tok:ptr(), n, 2, 97), 'train tokens')
   bind.check(C.fsdp_tokens_write(data .. '/val_000000.bin', tok:ptr(), 4 * 12 + 1, 2, 97), 'val tokens')
   local base, adapter = ROOT .. 'hf5/gpt2', ROOT .. 'lora/gpt2'
   local common = string.format('%s recipes/finetune_lora.lua --model %s --adapter %s --data %s --batch-size 2 ' ..
                                '--seq-len 12 --max-steps 4 --warmup-steps 1 --lr 1e-2 --eval-every 0 --log-every 1 ' ..
                                '--threads 1', bin, base, adapter, data)
   local function run(extra)
      return t.sh(common .. ' ' .. extra)
   end
   local st1, out1 = run('--checkpoint-dir ' .. work .. '/ck_a --export-dir ' .. work .. '/exp_a --run-dir ' .. work .. '/run_a')
   t.check(st1 == 0 and out1:find('LoRA: r 4, alpha 16', 1, true), 'finetune_lora --adapter failed:\n%s', out1)
   -- ckpt info names the base an adapter checkpoint needs
   local sti, info = t.sh(fsdp.root .. '/build/fsdp-lua ckpt info ' .. work .. '/ck_a')
   t.check(sti == 0 and info:find('adapter checkpoint: trainable parameters only', 1, true)
           and info:find('come from base ' .. base, 1, true) and info:find('fingerprint %x+'),
           'ckpt info of the adapter checkpoint does not name its base:\n%s', info)
   local st2, out2 = run('--stop-after 2 --checkpoint-dir ' .. work .. '/ck_b --export-dir ' .. work ..
                         '/exp_b --run-dir ' .. work .. '/run_b')
   local st3, out3 = run('--checkpoint-dir ' .. work .. '/ck_b --export-dir ' .. work .. '/exp_b --run-dir ' .. work .. '/run_b')
   t.check(st2 == 0 and st3 == 0 and out3:find('resumed from', 1, true), 'stop + resume failed:\n%s\n%s', out2, out3)
   local function tensors(path)
      local f = st.open(path)
      local out = {}
      for _, k in ipairs(f:names()) do out[k] = f:tensor(k):totable() end
      f:close()
      return out
   end
   if st1 == 0 and st3 == 0 then
      local a, b = tensors(work .. '/exp_a/adapter_model.safetensors'), tensors(work .. '/exp_b/adapter_model.safetensors')
      local same, count = true, 0
      for k, v in pairs(a) do
         count = count + 1
         same = same and b[k] ~= nil and rel(b[k], v) == 0
      end
      t.check(count == 8 and same, 'resumed LoRA run: %d adapter tensors, equal to the straight run: %s', count,
              tostring(same))
      local moved = rel(a['base_model.model.transformer.h.0.attn.c_attn.lora_A.weight'],
                        tensors(adapter .. '/adapter_model.safetensors')['base_model.model.transformer.h.0.attn.c_attn.lora_A.weight'])
      t.check(moved > 0, 'the adapter trained')
   end
   local st4, out4 = t.sh(string.format('%s export %s %s --merge', bin, work .. '/ck_a', work .. '/merged_a'))
   t.check(st4 == 0 and fs.exists(work .. '/merged_a/model.safetensors'), 'export --merge failed:\n%s', out4)
   local st5, out5 = t.sh(string.format('%s export %s %s', bin, work .. '/ck_a', work .. '/plain_a'))
   t.check(st5 ~= 0 and out5:find('is a LoRA run', 1, true), 'export of a LoRA run without --adapter/--merge:\n%s', out5)
   local function eval(args)
      local s, o = t.sh(string.format('%s recipes/eval.lua %s --data %s --seq-len 12 --batch-size 2 --batches 2 --threads 1',
                                      bin, args, data))
      return s, o, tonumber(o:match('loss ([%d%.]+)'))
   end
   local se1, oe1, l1 = eval('--model ' .. base .. ' --adapter ' .. work .. '/exp_a')
   local se2, oe2, l2 = eval('--model ' .. work .. '/merged_a')
   local _, _, l0 = eval('--model ' .. base)
   local _, oe3, l3 = eval('--checkpoint ' .. work .. '/ck_a --tokenizer bytes')
   t.check(l3 and l1 and math.abs(l3 - l1) <= 1e-4 * l1, 'eval --checkpoint of the LoRA run (%s) equals --adapter (%s):\n%s',
           tostring(l3), tostring(l1), oe3)
   t.check(se1 == 0 and se2 == 0 and l1 and l2 and math.abs(l1 - l2) <= 1e-4 * l2 and l0 and l0 ~= l1,
           'eval --adapter (%s) equals the merged model (%s), not the base (%s):\n%s\n%s', tostring(l1), tostring(l2),
           tostring(l0), oe1, oe2)
   local function gen(args)
      local s, o = t.sh(string.format('%s recipes/generate.lua %s --tokenizer bytes --prompt \'!#\' --max-new-tokens 6 ' ..
                                      '--temperature 0 --threads 1 2>/dev/null', bin, args))
      return s, o
   end
   local sg1, og1 = gen('--model ' .. base .. ' --adapter ' .. work .. '/exp_a')
   local sg2, og2 = gen('--model ' .. work .. '/merged_a')
   t.check(sg1 == 0 and #og1 > 2 and og1 == og2, 'generate --adapter equals the merged model:\n%s\n%s', og1, og2)
   -- a fresh run: the family's default targets, dropout on
   local st6, out6 = t.sh(string.format('%s recipes/finetune_lora.lua --model %s --data %s --batch-size 2 --seq-len 12 ' ..
                                        '--max-steps 2 --eval-every 0 --threads 1 --lora-r 2 --lora-dropout 0.1 --run-dir %s',
                                        bin, ROOT .. 'hf5/llama', data, work .. '/run_c'))
   t.check(st6 == 0 and out6:find('LoRA: r 2, alpha 16, dropout 0.1 on 4 layers', 1, true),
           'a fresh LoRA run on q_proj,v_proj of 2 layers:\n%s', out6)
   local st7, out7 = t.sh(string.format('%s recipes/finetune_lora.lua --model %s --adapter %s --lora-r 4 --data %s',
                                        bin, base, adapter, data))
   t.check(st7 ~= 0 and out7:find('drop --lora-r', 1, true), '--adapter with --lora-r:\n%s', out7)
end

-- all-linear: exported as the list of the layer names wrapped (the head is not)
do
   local m = fsdp.lora(hf.build(ROOT .. 'hf5/llama'), {targets = 'all-linear', r = 2})
   local cfg = lora.peft_config(m, 'base')
   t.check(table.concat(cfg.target_modules, ',') == 'down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj' and
           #m.lora.layers == 14, 'all-linear exports as %s (%d layers)', table.concat(cfg.target_modules, ','),
           #m.lora.layers)
end

fs.remove_tree(work)
return t.done()
