-- Hugging Face models end to end: every fixture of tests/golden/hf (made by
-- tests/golden/make_hf_fixtures.py with transformers 4.49) and of
-- tests/golden/hf5 (make_hf5_fixtures.py, transformers 5: its config
-- layout, other shapes, every rope_type; each rope case also with its
-- config in the 4.x layout) is imported with fsdp.hf and must give
-- transformers' logits, loss and every parameter gradient within 1e-4
-- relative (max |ours - theirs| / max |theirs|, per tensor), and, sharded
-- with strategy 'none', the losses of 5 AdamW steps within 1e-5 relative. The sharded and bf16 copies of the llama fixture
-- load the same values. Then malformed directories: each a clear error
-- naming the file and the tensor or field, never a crash.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local hf = require 'fsdp.hf'
local st = require 'fsdp.safetensors'
local nn = require 'fsdp.nn'
local fs = require 'fsdp.fs'
local json = require 'fsdp.json'
local AdamW = require 'optim.adamw'
local ffi = fsdp.ffi

fsdp.set_num_threads(1) -- tiny models: more threads only spin

local GOLDEN = fsdp.root .. '/tests/golden/hf/'
local GOLDEN5 = fsdp.root .. '/tests/golden/hf5/'

-- a fixture's directory: 'llama' (tests/golden/hf) or 'hf5/llama'
local function fixture(name)
   local five = name:match('^hf5/(.*)$')
   return five and (GOLDEN5 .. five) or (GOLDEN .. name)
end

-- case, the fixture whose expected.safetensors it uses
local CASES = {
   {'llama', 'llama'}, {'llama_sharded', 'llama'}, {'llama_bf16', 'llama'},
   {'llama3', 'llama3'}, {'codellama', 'codellama'}, {'mistral', 'mistral'}, {'mixtral', 'mixtral'},
   {'opt', 'opt'}, {'opt_postnorm', 'opt_postnorm'}, {'gpt2', 'gpt2'}, {'qwen2', 'qwen2'}, {'gemma2', 'gemma2'},
}
local HF5 = {'llama', 'llama_linear', 'llama_dynamic', 'llama_yarn', 'llama_llama3', 'llama_longrope', 'mistral',
             'mixtral', 'opt', 'gpt2', 'qwen2', 'qwen2_tied', 'qwen3', 'qwen3_tied', 'gemma2'}
for _, n in ipairs(HF5) do CASES[#CASES + 1] = {'hf5/' .. n, 'hf5/' .. n} end

-- max |a - b| and max |b| over n floats (b read at b_index(i) when given)
local function diff_scale(a, b, n, b_index)
   local diff, scale = 0, 0
   for i = 0, n - 1 do
      local bi = b_index and b[b_index(i)] or b[i]
      diff = math.max(diff, math.abs(a[i] - bi))
      scale = math.max(scale, math.abs(bi))
   end
   return diff, scale
end

-- max |a - b| / max |b|
local function rel_diff(a, b, n)
   local diff, scale = diff_scale(a, b, n)
   return scale == 0 and diff or diff / scale
end

local function tmpdir()
   local d = os.tmpname()
   os.remove(d)
   fs.mkdirs(d)
   return d
end

local function copy_dir(from, to)
   os.execute('mkdir -p ' .. fs.quote(to) .. ' && cp ' .. fs.quote(from) .. '/* ' .. fs.quote(to) .. '/')
end

local summary = {}

---------------------------------------------------------------------------
-- parity with transformers

local function check_case(name, ename, dir)
   dir = dir or fixture(name)
   t.check(not fs.exists(dir .. '/tokenizer.json') and not fs.exists(dir .. '/tokenizer.model'),
           '%s: fixtures carry no tokenizer (import must not need one)', name)
   local ex = st.open(fixture(ename) .. '/expected.safetensors')
   local ids, targets = ex:tensor('input_ids'), ex:tensor('targets')
   local want_logits = ex:tensor('logits')
   local want_loss = ex:tensor('loss'):item()

   local model = hf.load(dir):materialize()
   -- logits (no grad)
   local logits = fsdp.no_grad(function() return model(ids) end)
   local lrel = rel_diff(logits:ptr(), want_logits:ptr(), want_logits:numel())
   t.check(#logits.shape == 3 and logits:numel() == want_logits:numel(), '%s: logits shape', name)
   t.check(lrel <= 1e-4, '%s: logits differ from transformers by %.3g relative', name, lrel)
   fsdp.autograd.reset()
   -- loss and gradients
   local loss = fsdp.backward(model:loss(ids, targets))
   local loss_rel = math.abs(loss - want_loss) / math.abs(want_loss)
   t.check(loss_rel <= 1e-4, '%s: loss %.7f vs transformers %.7f', name, loss, want_loss)
   -- per tensor: max |ours - theirs| / max |theirs|, the denominator floored
   -- at 1e-3 of the model's largest gradient: a gradient that is zero in
   -- exact arithmetic (attention key biases without RoPE: softmax ignores a
   -- per-query constant) is float noise in both, and is compared on that floor
   local rows_ = {}
   local global, matched = 0, 0
   for _, np in ipairs(model:named_parameters()) do
      local pname, p = np[1], np[2]
      local names, transposed = {pname}, false
      if model.hf_names then names, transposed = model:hf_names(pname) end
      local gname
      for _, n in ipairs(names) do if ex:has('grad.' .. n) then gname = 'grad.' .. n; break end end
      t.check(gname ~= nil, '%s: the fixture has no gradient for %s', name, pname)
      if gname then
         matched = matched + 1
         local want = ex:tensor(gname)
         local g = p.grad and p.grad:ptr() or ffi.new('float[?]', p:numel())
         local diff, scale
         if transposed then -- ours [out, in], theirs [in, out]
            local rows, cols = p.shape[1], p.shape[2]
            diff, scale = diff_scale(g, want:ptr(), p:numel(), function(i) return (i % cols) * rows + math.floor(i / cols) end)
         else
            t.check(want:numel() == p:numel(), '%s: %s has %d gradient elements, the fixture %d', name, pname,
                    p:numel(), want:numel())
            diff, scale = diff_scale(g, want:ptr(), math.min(p:numel(), want:numel()))
         end
         rows_[#rows_ + 1] = {pname, diff, scale}
         global = math.max(global, scale)
         want:free()
      end
   end
   local grad_worst, worst_name = 0, ''
   for _, r in ipairs(rows_) do
      local rel = r[2] / math.max(r[3], 1e-3 * global, 1e-30)
      if rel > grad_worst then grad_worst, worst_name = rel, r[1] end
   end
   local n_grads = 0
   for _, k in ipairs(ex:names()) do if k:sub(1, 5) == 'grad.' then n_grads = n_grads + 1 end end
   t.check(matched == n_grads, '%s: %d parameters matched %d fixture gradients', name, matched, n_grads)
   t.check(grad_worst <= 1e-4, '%s: gradient of %s differs by %.3g relative', name, worst_name, grad_worst)
   -- Mixtral's router auxiliary loss on its own
   if ex:has('aux_loss') then
      local want_aux = ex:tensor('aux_loss'):item()
      local aux = fsdp.no_grad(function() model(ids); return model:router_aux_loss():item() end)
      fsdp.autograd.reset()
      t.close(aux, want_aux, 1e-5, 0, '%s: router aux loss', name)
   end
   hf.close(model)

   -- 5 AdamW steps through fsdp.shard (strategy none)
   local m2 = hf.load(dir)
   local sharded = fsdp.shard(m2, {strategy = 'none'})
   local opt = AdamW.new(sharded, {lr = 1e-3, betas = {0.9, 0.95}, eps = 1e-8, weight_decay = 0.1})
   local want_steps = ex:tensor('adamw_losses'):totable()
   local step_worst = 0
   for s = 1, #want_steps do
      sharded:zero_grad()
      local l = fsdp.backward(m2:loss(ids, targets))
      opt:step()
      step_worst = math.max(step_worst, math.abs(l - want_steps[s]) / math.abs(want_steps[s]))
   end
   t.check(step_worst <= 1e-5, '%s: AdamW losses differ from torch by %.3g relative', name, step_worst)
   hf.close(m2)
   ex:close()
   summary[#summary + 1] = string.format('%-22s logits %.1e  loss %.1e  grads %.1e  adamw(5) %.1e', name, lrel,
                                         loss_rel, grad_worst, step_worst)
end

for _, c in ipairs(CASES) do
   local ok, err = pcall(check_case, c[1], c[2])
   t.check(ok, '%s: %s', c[1], tostring(err))
   fsdp.autograd.reset()
end

-- the transformers 5 fixtures with their config.json in the 4.x layout
-- (rope_theta, rope_scaling, torch_dtype; config_v4.json, which the
-- fixture script checked gives transformers 5 the same model)
local v4_root = tmpdir()
local n_v4 = 0
for _, n in ipairs(HF5) do
   if fs.exists(GOLDEN5 .. n .. '/config_v4.json') then
      local d = v4_root .. '/' .. n
      copy_dir(GOLDEN5 .. n, d)
      os.execute('mv ' .. fs.quote(d .. '/config_v4.json') .. ' ' .. fs.quote(d .. '/config.json'))
      local cfg = json.read_file(d .. '/config.json')
      t.check(cfg.rope_parameters == nil and cfg.rope_theta ~= nil and cfg.torch_dtype ~= nil,
              '%s: config_v4.json is in the 4.x layout', n)
      local ok, err = pcall(check_case, 'hf5/' .. n .. '@4.x', 'hf5/' .. n, d)
      t.check(ok, '%s (4.x layout): %s', n, tostring(err))
      fsdp.autograd.reset()
      n_v4 = n_v4 + 1
   end
end
t.check(n_v4 >= 8, 'only %d transformers 5 fixtures have a 4.x-layout config', n_v4)
fs.remove_tree(v4_root)
for _, line in ipairs(summary) do print(line) end

---------------------------------------------------------------------------
-- the 'load' initializer reads exactly the requested element range
-- (a sharded rank asks for slices), transposed GPT-2 weights included

do
   local model = hf.load(GOLDEN .. 'gpt2')
   local full = hf.load(GOLDEN .. 'gpt2'):materialize()
   local values = {}
   for _, np in ipairs(full:named_parameters()) do values[np[1]] = np[2] end
   local bad = 0
   for _, spec in ipairs(model:parameter_specs()) do
      local n_all = values[spec.name]:numel()
      for _, range in ipairs({{0, n_all}, {37, math.min(100, n_all - 37)}, {n_all - 5, 5}, {math.floor(n_all / 2) + 3, 1}}) do
         local first, n = range[1], range[2]
         if n > 0 and first >= 0 and first + n <= n_all then
            local buf = ffi.new('float[?]', n)
            nn.init_values(spec, buf, n, first, 0)
            local p = values[spec.name]:ptr()
            for i = 0, n - 1 do if buf[i] ~= p[first + i] then bad = bad + 1 end end
         end
      end
   end
   t.check(bad == 0, 'gpt2: %d elements of partial loads differ from the full load', bad)
end

---------------------------------------------------------------------------
-- the checks can fail: a model without the sliding window, or without the
-- llama3 rope scaling, does not match

local function logits_rel(model, ename)
   local ex = st.open(fixture(ename) .. '/expected.safetensors')
   local ids, want = ex:tensor('input_ids'), ex:tensor('logits')
   local got = fsdp.no_grad(function() return model(ids) end)
   local r = rel_diff(got:ptr(), want:ptr(), want:numel())
   fsdp.autograd.reset()
   ex:close()
   return r
end

do
   local dir = tmpdir()
   copy_dir(GOLDEN .. 'mistral', dir .. '/m')
   local cfg = json.read_file(dir .. '/m/config.json')
   cfg.sliding_window = json.null
   local f = io.open(dir .. '/m/config.json', 'w'); f:write(json.encode(cfg)); f:close()
   local r = logits_rel(hf.load(dir .. '/m'):materialize(), 'mistral')
   t.check(r > 1e-3, 'mistral without its sliding window should not match (rel %.3g)', r)
   copy_dir(GOLDEN .. 'llama3', dir .. '/l')
   cfg = json.read_file(dir .. '/l/config.json')
   cfg.rope_scaling = json.null
   f = io.open(dir .. '/l/config.json', 'w'); f:write(json.encode(cfg)); f:close()
   r = logits_rel(hf.load(dir .. '/l'):materialize(), 'llama3')
   t.check(r > 1e-3, 'llama3 without its rope scaling should not match (rel %.3g)', r)
   -- each transformers 5 rope case as plain RoPE (same theta); the windows of
   -- the transformers 5 Mistral and Mixtral removed
   for _, n in ipairs({'llama_linear', 'llama_dynamic', 'llama_yarn', 'llama_llama3', 'llama_longrope', 'mistral',
                       'mixtral'}) do
      copy_dir(GOLDEN5 .. n, dir .. '/' .. n)
      local path = dir .. '/' .. n .. '/config.json'
      cfg = json.read_file(path)
      if cfg.sliding_window ~= nil then cfg.sliding_window = json.null
      else cfg.rope_parameters = {rope_type = 'default', rope_theta = cfg.rope_parameters.rope_theta} end
      f = io.open(path, 'w'); f:write(json.encode(cfg)); f:close()
      r = logits_rel(hf.load(dir .. '/' .. n):materialize(), 'hf5/' .. n)
      t.check(r > 1e-3, 'hf5/%s without its %s should not match (rel %.3g)', n,
              cfg.sliding_window ~= nil and 'window' or 'rope scaling', r)
   end
   -- Qwen: the windows of the transformers 5 Qwen2 and Qwen3 (layer_types
   -- all full) and of the 4.49 Qwen2 (use_sliding_window off) removed
   for _, n in ipairs({'hf5/qwen2', 'hf5/qwen3', 'hf/qwen2'}) do
      copy_dir(fsdp.root .. '/tests/golden/' .. n, dir .. '/' .. n)
      local path = dir .. '/' .. n .. '/config.json'
      cfg = json.read_file(path)
      if cfg.layer_types then
         for i = 1, #cfg.layer_types do cfg.layer_types[i] = 'full_attention' end
      else
         cfg.use_sliding_window, cfg.sliding_window = false, json.null
      end
      f = io.open(path, 'w'); f:write(json.encode(cfg)); f:close()
      r = logits_rel(hf.load(dir .. '/' .. n):materialize(), n:gsub('^hf/', ''), nil)
      t.check(r > 1e-3, '%s without its windows should not match (rel %.3g)', n, r)
   end
   -- Gemma 2 without each of its soft-caps, and without its windows
   for _, v in ipairs({{'attn_logit_softcapping', json.null}, {'final_logit_softcapping', json.null},
                       {'layer_types', json.array({'full_attention', 'full_attention', 'full_attention'})}}) do
      local d = dir .. '/gemma2_' .. v[1]
      copy_dir(GOLDEN5 .. 'gemma2', d)
      cfg = json.read_file(d .. '/config.json')
      cfg[v[1]] = v[2]
      f = io.open(d .. '/config.json', 'w'); f:write(json.encode(cfg)); f:close()
      r = logits_rel(hf.load(d):materialize(), 'hf5/gemma2')
      t.check(r > 1e-3, 'hf5/gemma2 without its %s should not match (rel %.3g)', v[1], r)
   end
   fs.remove_tree(dir)
end

---------------------------------------------------------------------------
-- Mixtral under activation checkpointing, with its router auxiliary loss
-- on: the same loss and every gradient, bit for bit, as without
-- checkpointing (the router logits leave each checkpointed block, and
-- their gradient flows into the recomputed block); also sharded

local function same_grads(label, ma, mb)
   local pa, pb, worst, first = ma:named_parameters(), mb:named_parameters(), 0, nil
   for i = 1, #pa do
      local x, y = pa[i][2].grad, pb[i][2].grad
      t.check((x == nil) == (y == nil), '%s: %s grad presence differs', label, pa[i][1])
      if x and y then
         for j = 0, x:numel() - 1 do
            local d = math.abs(x:ptr()[j] - y:ptr()[j])
            if d > worst then worst, first = d, pa[i][1] end
         end
      end
   end
   t.check(worst == 0, '%s: gradients differ (by %g in %s)', label, worst, tostring(first))
end

for _, fixture in ipairs({'mixtral', 'hf5/mixtral'}) do
   local dir = fixture:find('/') and (fsdp.root .. '/tests/golden/' .. fixture) or (GOLDEN .. fixture)
   local ex = st.open(dir .. '/expected.safetensors')
   local ids, targets = ex:tensor('input_ids'), ex:tensor('targets')
   local plain = hf.load(dir):materialize()
   local ckpt = nn.checkpoint_units(hf.load(dir):materialize())
   t.check(plain.config.output_router_logits == true, '%s: the fixture has the auxiliary loss on', fixture)
   local b = fsdp.backward(plain:loss(ids, targets))
   local a = fsdp.backward(ckpt:loss(ids, targets))
   t.check(a == b, '%s checkpointed: loss %.9g vs %.9g', fixture, a, b)
   t.close(a, ex:tensor('loss'):item(), 1e-5, 0, '%s checkpointed: loss vs transformers', fixture)
   same_grads(fixture .. ' checkpointed', ckpt, plain)
   -- checkpointed and sharded (world of one, strategy full) through AdamW
   -- steps: the losses of the unsharded plain model
   local m1 = nn.checkpoint_units(hf.load(dir))
   local s1 = fsdp.shard(m1, {strategy = 'full'})
   local m2 = hf.load(dir)
   local s2 = fsdp.shard(m2, {strategy = 'full'})
   local o1 = AdamW.new(s1, {lr = 1e-3, betas = {0.9, 0.95}, weight_decay = 0.1})
   local o2 = AdamW.new(s2, {lr = 1e-3, betas = {0.9, 0.95}, weight_decay = 0.1})
   local same = true
   for _ = 1, 3 do
      s1:zero_grad(); s2:zero_grad()
      local l1 = fsdp.backward(m1:loss(ids, targets))
      local l2 = fsdp.backward(m2:loss(ids, targets))
      same = same and l1 == l2
      o1:step(); o2:step()
   end
   t.check(same, '%s: checkpointed + sharded AdamW steps differ from plain ones', fixture)
   ex:close()
end

---------------------------------------------------------------------------
-- bad input: clear errors naming the file and the tensor or field

local function write(path, text)
   local f = assert(io.open(path, 'wb'))
   f:write(text)
   f:close()
end

local function read(path)
   local f = assert(io.open(path, 'rb'))
   local s = f:read('*a')
   f:close()
   return s
end

local function edit_config(path, fn)
   local cfg = json.read_file(path)
   fn(cfg)
   write(path, json.encode(cfg))
end

-- rewrites a safetensors file's header through fn(header table)
local function edit_header(path, fn)
   local bytes = read(path)
   local n = 0
   for i = 8, 1, -1 do n = n * 256 + bytes:byte(i) end
   local header = json.decode(bytes:sub(9, 8 + n))
   fn(header)
   local text = json.encode(header)
   text = text .. string.rep(' ', (8 - #text % 8) % 8)
   local len = #text
   local le = {}
   for i = 1, 8 do le[i] = string.char(len % 256); len = math.floor(len / 256) end
   write(path, table.concat(le) .. text .. bytes:sub(9 + n))
end

-- t.raises, printing the message when SHOW_ERRORS is set
local function raises(fn, patterns, label)
   local msg = t.raises(fn, patterns, label)
   if os.getenv('SHOW_ERRORS') then print(string.format('  %-26s %s', label, tostring(msg))) end
end

local function load_all(dir) return hf.load(dir):materialize() end

do
   local root = tmpdir()
   local function case(name, from)
      local d = root .. '/' .. name
      if from then copy_dir(GOLDEN .. from, d) else fs.mkdirs(d) end
      return d
   end

   -- unsupported architecture: the message lists the supported ones
   local d = case('bert')
   write(d .. '/config.json', '{"architectures": ["BertForMaskedLM"], "model_type": "bert"}')
   raises(function() hf.build(d) end, {d .. '/config.json', "'BertForMaskedLM' is not supported", 'GPT2LMHeadModel',
            'LlamaForCausalLM', 'MistralForCausalLM', 'MixtralForCausalLM', 'OPTForCausalLM'}, 'unsupported architecture')
   d = case('bert_type')
   write(d .. '/config.json', '{"model_type": "bert"}')
   raises(function() hf.build(d) end, {"model_type 'bert' is not supported", 'LlamaForCausalLM'}, 'unsupported model_type')
   -- model_type alone is enough for a supported one
   d = case('by_type', 'llama')
   edit_config(d .. '/config.json', function(c) c.architectures = nil end)
   t.check(hf.load_config(d).arch == 'LlamaForCausalLM', 'model_type llama -> LlamaForCausalLM')
   -- no config, bad config
   d = case('empty')
   raises(function() hf.build(d) end, {d, 'no config.json'}, 'missing config.json')
   write(d .. '/config.json', '{"architectures": ["LlamaForCausalLM"], ')
   raises(function() hf.build(d) end, {d .. '/config.json', 'json'}, 'malformed config.json')
   -- no weights at all
   d = case('no_weights')
   write(d .. '/config.json', read(GOLDEN .. 'llama/config.json'))
   raises(function() load_all(d) end, {d, 'no model.safetensors'}, 'no weights')
   -- unsupported config values
   d = case('unknown_rope', 'llama')
   edit_config(d .. '/config.json', function(c) c.rope_scaling = {type = 'proportional', factor = 2} end)
   raises(function() hf.build(d) end, {d .. '/config.json', "rope_scaling.rope_type 'proportional' is not supported",
            'default, linear, dynamic, yarn, llama3, longrope'}, 'unsupported rope type')
   d = case('gpt2_relu', 'gpt2')
   edit_config(d .. '/config.json', function(c) c.activation_function = 'relu' end)
   raises(function() hf.build(d) end, {d .. '/config.json', "activation_function 'relu'"}, 'gpt2 activation')

   -- checkpoints saved from the base classes (GPT2Model: no 'transformer.';
   -- OPTModel: 'decoder.' without 'model.') load the same
   for _, v in ipairs({{'gpt2', '^transformer%.'}, {'opt_postnorm', '^model%.'}}) do
      d = case('base_names_' .. v[1], v[1])
      edit_header(d .. '/model.safetensors', function(h)
         local renamed = {}
         for k, e in pairs(h) do renamed[(k:gsub(v[2], ''))] = e end
         for k in pairs(h) do h[k] = nil end
         for k, e in pairs(renamed) do h[k] = e end
      end)
      t.check(not read(d .. '/model.safetensors'):sub(1, 2000):find('"transformer.wte', 1, true),
              '%s: the names were rewritten', v[1])
      local r = logits_rel(load_all(d), v[1])
      t.check(r <= 1e-4, '%s with base-class names: logits differ by %.3g', v[1], r)
   end
   -- loading after hf.close is an error, not a read of unmapped memory
   d = case('closed', 'llama')
   local m = hf.load(d)
   hf.close(m)
   raises(function() m:materialize() end, {d .. '/model.safetensors', 'closed'}, 'load after close')

   -- a missing shard file
   d = case('missing_shard', 'llama_sharded')
   os.remove(d .. '/model-00002-of-00004.safetensors')
   raises(function() load_all(d) end, {d .. '/model.safetensors.index.json', 'model-00002-of-00004.safetensors',
            'is missing', "tensor '"}, 'missing shard file')
   -- an index that puts a tensor in the wrong shard
   d = case('wrong_shard', 'llama_sharded')
   edit_config(d .. '/model.safetensors.index.json', function(c)
      local first = c.weight_map['model.norm.weight']
      c.weight_map['model.norm.weight'] = first == 'model-00001-of-00004.safetensors' and
         'model-00002-of-00004.safetensors' or 'model-00001-of-00004.safetensors'
   end)
   raises(function() load_all(d) end, {'model.safetensors.index.json', "'model.norm.weight'", 'no such tensor'},
            'index names the wrong shard')
   -- a tensor the config needs is not there (llama3 is tied: no lm_head)
   d = case('untied', 'llama3')
   edit_config(d .. '/config.json', function(c) c.tie_word_embeddings = false end)
   raises(function() load_all(d) end, {d .. '/model.safetensors', "'lm_head.weight' is missing"}, 'missing tensor')
   -- config and weights disagree on a shape
   d = case('shape', 'llama')
   edit_config(d .. '/config.json', function(c) c.intermediate_size = 128 end)
   raises(function() load_all(d) end, {d .. '/model.safetensors', "'model.layers.0.mlp.gate_proj.weight'",
            '[96, 64]', '[128, 64]', 'config.json'}, 'shape mismatch')
   d = case('shape_gpt2', 'gpt2')
   edit_config(d .. '/config.json', function(c) c.n_embd = 32 end)
   raises(function() load_all(d) end, {d .. '/model.safetensors', 'transformer.', 'config.json'}, 'gpt2 shape mismatch')
   -- a dtype we do not read (F64, same byte size as the F32 tensor it replaces)
   d = case('f64', 'llama')
   edit_header(d .. '/model.safetensors', function(h)
      local e = h['model.norm.weight']
      e.dtype, e.shape = 'F64', {e.shape[1] / 2}
   end)
   raises(function() load_all(d) end, {d .. '/model.safetensors', "'model.norm.weight'", 'dtype F64'}, 'unknown dtype')
   -- truncated file: the header's byte ranges run past its end
   d = case('truncated', 'llama')
   local bytes = read(d .. '/model.safetensors')
   write(d .. '/model.safetensors', bytes:sub(1, math.floor(#bytes / 2)))
   raises(function() load_all(d) end, {d .. '/model.safetensors'}, 'truncated safetensors')
   -- a header length that lies
   d = case('lying_length', 'llama')
   bytes = read(d .. '/model.safetensors')
   write(d .. '/model.safetensors', '\255\255\255\0\0\0\0\0' .. bytes:sub(9))
   raises(function() load_all(d) end, {d .. '/model.safetensors', 'header length'}, 'lying header length')
   -- a header whose offsets lie (a tensor claims bytes beyond the file)
   d = case('lying_offsets', 'llama')
   edit_header(d .. '/model.safetensors', function(h)
      local e = h['model.norm.weight']
      e.data_offsets = {e.data_offsets[1] + 10 ^ 6, e.data_offsets[2] + 10 ^ 6}
   end)
   raises(function() load_all(d) end, {d .. '/model.safetensors', 'model.norm.weight'}, 'lying offsets')
   -- not a safetensors file at all
   d = case('garbage', 'llama')
   write(d .. '/model.safetensors', 'not a safetensors file')
   raises(function() load_all(d) end, {d .. '/model.safetensors'}, 'garbage file')

   fs.remove_tree(root)
end

return t.done()
