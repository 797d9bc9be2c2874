-- The recipes on Hugging Face models against a plain PyTorch user, for every
-- fixture of tests/golden/hf (transformers 4.49) and tests/golden/hf5
-- (transformers 5; each rope_type):
--  1. a 15-step AdamW fine-tune through the family's recipe (with its own
--     defaults: activation checkpointing for Mistral/Mixtral/OPT, and so
--     Mixtral's router auxiliary loss under checkpointing) on the fixture's
--     tokens: every step's loss within 1e-5 relative of the same loop in
--     torch (tests/golden/hf_reference.py; the fixture also holds how far
--     torch's own float32 drifts from float64, which is far below that);
--  2. recipes/generate.lua --temperature 0 gives transformers' greedy
--     generate() token for token, with the KV cache and without
--     (--no-kv-cache; these differ where transformers' differ: longrope);
--     recipes/eval.lua's loss on the validation tokens is the model's;
--  3. config.json keys nothing reads make one warning line and the run
--     goes on; a key that would change the model is an error naming it.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local json = require 'fsdp.json'
local st = require 'fsdp.safetensors'
local hf = require 'fsdp.hf'
local bind = require 'fsdp.ffi'
local ffi, C = bind.ffi, bind.C

-- one thread per run: the models are tiny, and OpenMP's spinning threads
-- only slow them down on a busy machine
local bin = 'OMP_NUM_THREADS=1 ' .. fsdp.root .. '/build/fsdp-lua'
local golden = fsdp.root .. '/tests/golden/'

-- fixture, recipe
local CASES = {
   {'hf/llama', 'finetune_llama2'}, {'hf/llama3', 'finetune_llama2'}, {'hf/codellama', 'finetune_llama2'},
   {'hf/mistral', 'finetune_mistral'}, {'hf/mixtral', 'finetune_mistral'}, {'hf/opt', 'finetune_opt'},
   {'hf/opt_postnorm', 'finetune_opt'}, {'hf/gpt2', 'train_mingpt'},
   {'hf5/llama', 'finetune_llama2'}, {'hf5/llama_linear', 'finetune_llama2'}, {'hf5/llama_dynamic', 'finetune_llama2'},
   {'hf5/llama_yarn', 'finetune_llama2'}, {'hf5/llama_llama3', 'finetune_llama2'},
   {'hf5/llama_longrope', 'finetune_llama2'}, {'hf5/mistral', 'finetune_mistral'},
   {'hf5/mixtral', 'finetune_mistral'}, {'hf5/opt', 'finetune_opt'}, {'hf5/gpt2', 'train_mingpt'},
   {'hf/qwen2', 'finetune_qwen'}, {'hf5/qwen2', 'finetune_qwen'}, {'hf5/qwen2_tied', 'finetune_qwen'},
   {'hf5/qwen3', 'finetune_qwen'}, {'hf5/qwen3_tied', 'finetune_qwen'},
   {'hf/gemma2', 'finetune_llama2'}, {'hf5/gemma2', 'finetune_llama2'},
}

local tmp = os.tmpname()
os.remove(tmp)
fs.mkdirs(tmp)

local function read(path)
   local f = io.open(path, 'rb')
   if not f then return nil end
   local s = f:read('*a')
   f:close()
   return s
end

-- runs cmd; returns its exit status, stdout and stderr apart
local function run(cmd)
   local out, err = tmp .. '/stdout', tmp .. '/stderr'
   local status = os.execute('(' .. cmd .. ') > ' .. out .. ' 2> ' .. err)
   if type(status) ~= 'number' then status = status and 0 or 1 end -- LuaJIT with 5.2 compat gives true/false
   return status, read(out) or '', read(err) or ''
end

-- a float64 tensor of a safetensors file as a Lua list
local function f64_list(ex, name)
   local d = ex:describe(name)
   local n = 1
   for _, s in ipairs(d.shape) do n = n * s end
   local p = ffi.cast('const double *', (ex:data(name)))
   local out = {}
   for i = 0, n - 1 do out[i + 1] = p[i] end
   return out
end

-- the fixture's tokens as a prepared data directory: B*T+1 training tokens
-- (exactly B sequences) and T+1 validation tokens
local function write_data(dir, tokens, B, T_, vocab)
   fs.mkdirs(dir)
   local p = tokens:ptr()
   local n_train = B * T_ + 1
   t.check(tokens:numel() == n_train + T_ + 1, 'fixture tokens: %d, want %d', tokens:numel(), n_train + T_ + 1)
   bind.check(C.fsdp_tokens_write(dir .. '/train_000000.bin', p, n_train, 2, vocab), 'write train tokens')
   bind.check(C.fsdp_tokens_write(dir .. '/val_000000.bin', p + n_train, T_ + 1, 2, vocab), 'write val tokens')
end

local summary = {}

local function check_case(name, recipe)
   local dir = golden .. name
   local ex = st.open(dir .. '/expected.safetensors')
   local hp = json.decode(ex:metadata('finetune'))
   local B, T_ = tonumber(ex:metadata('B')), tonumber(ex:metadata('T'))
   local vocab = json.read_file(dir .. '/config.json').vocab_size
   local work = tmp .. '/' .. name:gsub('/', '_')
   write_data(work .. '/data', ex:tensor('finetune_tokens'), B, T_, vocab)

   -- 1. the fine-tune, with the recipe's defaults but f32 and these
   -- hyperparameters
   local cmd = string.format('%s recipes/%s.lua --model %s --data %s/data --batch-size %d --seq-len %d ' ..
      '--grad-accum-steps 1 --max-steps %d --lr %.17g --min-lr %.17g --warmup-steps %d --decay cosine ' ..
      '--weight-decay %.17g --beta1 %.17g --beta2 %.17g --max-grad-norm %.17g --param-dtype f32 --eval-every 0 ' ..
      '--log-every 5 --sample-tokens 0 --checkpoint-dir "" --run-dir %s/run',
      bin, recipe, dir, work, B, T_, hp.steps, hp.lr, hp.min_lr, hp.warmup, hp.weight_decay, hp.betas[1],
      hp.betas[2], hp.max_grad_norm, work)
   local status, out, err = run(cmd)
   t.check(status == 0, '%s: %s failed:\n%s%s', name, recipe, out, err)
   local want, drift = f64_list(ex, 'finetune_losses'), f64_list(ex, 'finetune_drift')
   local got = {}
   for line in (read(work .. '/run/metrics.jsonl') or ''):gmatch('[^\n]+') do
      local row = json.decode(line)
      if row.step and row.loss then got[row.step] = row.loss end
   end
   local worst, worst_tol, n = 0, 0, 0
   for s = 1, #want do
      local tol = math.max(1e-5, 10 * drift[s])
      if got[s] then
         n = n + 1
         local rel = math.abs(got[s] - want[s]) / math.abs(want[s])
         t.check(rel <= tol, '%s: step %d loss %.9g vs torch %.9g (rel %.2g > %.2g)', name, s, got[s], want[s], rel, tol)
         if rel > worst then worst, worst_tol = rel, tol end
      end
   end
   t.check(n == #want and #want == 15, '%s: %d of %d step losses in the metrics', name, n, #want)
   t.check(got[#want] and got[#want] < 0.8 * want[1], '%s: the fine-tune did not learn', name)

   -- 2. greedy generation, with and without the KV cache
   local gen_worst = 0
   for _, v in ipairs({{'gen_ids', ''}, {'gen_ids_nocache', ' --no-kv-cache'}}) do
      local ids = ex:tensor(v[1])
      local n_prompt = 5
      local prompt, want_text = {}, {}
      for i = 0, ids:numel() - 1 do
         local c = string.char(ids:ptr()[i])
         if i < n_prompt then prompt[#prompt + 1] = c end
         want_text[#want_text + 1] = c
      end
      local g_status, g_out, g_err = run(string.format(
         "%s recipes/generate.lua --model %s --tokenizer bytes --prompt '%s' --max-new-tokens %d --temperature 0%s",
         bin, dir, table.concat(prompt), ids:numel() - n_prompt, v[2]))
      t.check(g_status == 0, '%s: generate%s failed:\n%s', name, v[2], g_err)
      local text = table.concat(want_text)
      local ok = g_out == text .. '\n'
      if not ok then gen_worst = gen_worst + 1 end
      local shown = {}
      for i = 1, #g_out do shown[i] = g_out:byte(i) end
      t.check(ok, '%s: generate.lua%s gives %s, transformers %s', name, v[2], table.concat(shown, ','),
              table.concat(ids:totable(), ','))
   end
   -- 3. recipes/eval.lua on the validation tokens: the loss of the model
   -- computed here (eval prints 4 decimals)
   local toks = ex:tensor('finetune_tokens')
   local vx, vy = fsdp.empty({1, T_}, 'i32'), fsdp.empty({1, T_}, 'i32')
   for i = 0, T_ - 1 do
      vx:ptr()[i] = toks:ptr()[B * T_ + 1 + i]
      vy:ptr()[i] = toks:ptr()[B * T_ + 2 + i]
   end
   local model = hf.load(dir):materialize()
   local want_eval = fsdp.no_grad(function() return model:loss(vx, vy):item() end)
   fsdp.autograd.reset()
   hf.close(model)
   local e_status, e_out, e_err = run(string.format('%s recipes/eval.lua --model %s --data %s/data --seq-len %d ' ..
                                                    '--batch-size 1 --batches 1', bin, dir, work, T_))
   local got_eval = tonumber(e_out:match('loss (%d+%.%d+)'))
   t.check(e_status == 0 and got_eval and math.abs(got_eval - want_eval) <= 6e-5,
           '%s: eval.lua gives loss %s, the model here %.5f:\n%s%s', name, tostring(got_eval), want_eval, e_out, e_err)
   ex:close()
   summary[#summary + 1] = string.format('%-20s %-17s 15 steps: worst rel %.1e (tolerance %.0e); greedy %s; eval %s',
                                         name, recipe, worst, worst_tol,
                                         gen_worst == 0 and 'equal (cache, no cache)' or 'DIFFERS',
                                         got_eval and string.format('%.4f', got_eval) or 'FAILED')
end

for _, c in ipairs(CASES) do
   local ok, e = pcall(check_case, c[1], c[2])
   t.check(ok, '%s: %s', c[1], tostring(e))
end
for _, line in ipairs(summary) do print(line) end

---------------------------------------------------------------------------
-- config keys: unknown ones are one warning line and the run goes on; one
-- that changes the model is an error naming it and the file

do
   local base = golden .. 'hf5/llama'
   local function variant(name, edit)
      local d = tmp .. '/keys_' .. name
      os.execute('mkdir -p ' .. fs.quote(d) .. ' && cp ' .. fs.quote(base) .. '/config.json ' .. fs.quote(base) ..
                 '/model.safetensors ' .. fs.quote(d) .. '/')
      local cfg = json.read_file(d .. '/config.json')
      edit(cfg)
      local f = io.open(d .. '/config.json', 'w')
      f:write(json.encode(cfg, '  '))
      f:close()
      return d
   end
   local ex = st.open(base .. '/expected.safetensors')
   local data = tmp .. '/keys_data'
   write_data(data, ex:tensor('finetune_tokens'), 2, 13, 97)
   ex:close()
   local n_runs = 0
   local function train(d)
      n_runs = n_runs + 1
      return run(string.format('%s recipes/finetune_llama2.lua --model %s --data %s --batch-size 2 --seq-len 13 ' ..
                               '--grad-accum-steps 1 --max-steps 2 --param-dtype f32 --eval-every 0 --sample-tokens 0 ' ..
                               '--run-dir %s/run%d', bin, d, data, tmp, n_runs))
   end
   local d = variant('unknown', function(c)
      c.my_custom_flag = true
      c.some_future_setting = 3
      c.rope_parameters.mystery_knob = 2.0
   end)
   local status, out, err = train(d)
   t.check(status == 0, 'unknown keys: the run failed:\n%s%s', out, err)
   local lines = 0
   for line in (out .. err):gmatch('[^\n]+') do
      if line:find('warning', 1, true) then
         lines = lines + 1
         t.check(line:find(d .. '/config.json', 1, true) and line:find('my_custom_flag', 1, true) and
                 line:find('some_future_setting', 1, true) and line:find('rope_parameters.mystery_knob', 1, true),
                 'the warning names the file and every unknown key: %s', line)
      end
   end
   t.check(lines == 1, 'unknown keys: %d warning lines, want one:\n%s%s', lines, out, err)
   -- the same run without them prints no warning
   status, out, err = train(base)
   t.check(status == 0 and not (out .. err):find('warning', 1, true), 'the fixture itself warns:\n%s%s', out, err)

   for _, v in ipairs({
      {'partial_rotary', function(c) c.partial_rotary_factor = 0.5 end, 'partial_rotary_factor'},
      {'pruned', function(c) c.pruned_heads = {['0'] = json.array({1})} end, "'pruned_heads'"},
      {'quantized', function(c) c.quantization_config = {quant_method = 'bitsandbytes'} end, "'quantization_config'"},
      {'rope_kind', function(c) c.rope_parameters.rope_type = 'proportional' end, "rope_type 'proportional'"},
      {'yarn_factor', function(c) c.rope_parameters = {rope_type = 'yarn', rope_theta = 10000.0} end, "'factor'"},
      {'act', function(c) c.hidden_act = 'gelu' end, "hidden_act 'gelu'"},
   }) do
      d = variant(v[1], v[2])
      status, out, err = train(d)
      t.check(status ~= 0 and err:find(d .. '/config.json', 1, true) and err:find(v[3], 1, true),
              '%s: want an error naming %s and the file, got status %s:\n%s', v[1], v[3], tostring(status), err)
   end
end

---------------------------------------------------------------------------
-- generation_config.json: its end-of-sequence ids stop generate.lua where
-- they stop transformers' generate() (the token is kept); a setting
-- generate.lua cannot honour is an error naming it

do
   local base = golden .. 'hf5/llama'
   local ex = st.open(base .. '/expected.safetensors')
   local ids = ex:tensor('gen_ids'):totable()
   ex:close()
   local d = tmp .. '/gen_eos'
   os.execute('mkdir -p ' .. fs.quote(d) .. ' && cp ' .. fs.quote(base) .. '/config.json ' .. fs.quote(base) ..
              '/model.safetensors ' .. fs.quote(d) .. '/')
   -- stop at the 4th generated token (any of the listed ids)
   local stop_at = ids[9]
   local first = 9
   for i = 6, 9 do if ids[i] == stop_at then first = i; break end end
   local f = io.open(d .. '/generation_config.json', 'w')
   f:write(string.format('{"eos_token_id": [96, %d], "transformers_version": "5.24.0"}', stop_at))
   f:close()
   local want = {}
   for i = 1, first do want[i] = string.char(ids[i]) end
   local status, out, err = run(string.format(
      "%s recipes/generate.lua --model %s --tokenizer bytes --prompt 'HELLO' --max-new-tokens 8 --temperature 0",
      bin, d))
   t.check(status == 0 and out == table.concat(want) .. '\n', 'generation_config eos: got %q, want %q\n%s', out,
           table.concat(want), err)
   f = io.open(d .. '/generation_config.json', 'w')
   f:write('{"eos_token_id": 2, "num_beams": 4}')
   f:close()
   status, out, err = run(string.format("%s recipes/generate.lua --model %s --tokenizer bytes --prompt 'HELLO' " ..
                                        "--max-new-tokens 2 --temperature 0", bin, d))
   t.check(status ~= 0 and err:find(d .. '/generation_config.json', 1, true) and err:find("'num_beams'", 1, true),
           'generation_config num_beams: want an error naming it, got %s:\n%s', tostring(status), err)
   -- eval reads no generation settings
   status, out, err = run(string.format('%s recipes/eval.lua --model %s --data %s --tokenizer bytes --seq-len 8 ' ..
                                        '--batch-size 1 --batches 1', bin, d, tmp .. '/keys_data'))
   t.check(status == 0, 'eval with a generation_config.json it does not need:\n%s%s', out, err)
end

os.execute('rm -rf ' .. fs.quote(tmp))
return t.done()
