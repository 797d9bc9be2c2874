-- Hugging Face configuration files, read and written:
--  1. fsdp.json keeps floats floats (0.0, 1000000.0) through decode, copy
--     and encode;
--  2. an export keeps every key of the config.json it came from, with its
--     value and float-ness, in the layout it came in; --config-layout turns
--     4.x (rope_theta, rope_scaling, torch_dtype) into 5.x (rope_parameters,
--     dtype) and back, and the model read back is the same model;
--  3. a model from scratch writes transformers 5's layout with its floats
--     as floats;
--  4. RoPE settings that cannot be read are errors naming the key;
--     dynamic and longrope tables switch with the sequence length;
--  5. tokenizer_config.json (bos/eos/unk/pad tokens, add_bos_token) and
--     generation_config.json are read; what cannot be honoured is said;
--  6. Qwen's sliding windows per layer as transformers 5 computes them
--     (layer_types, or use_sliding_window and max_window_layers); a config
--     without layer_types on which 4.x and 5 window different layers is an
--     error naming the keys; a Qwen model from scratch writes layer_types;
--  7. Gemma 2's windows and soft-caps: errors name the key; a model from
--     scratch writes transformers 5's keys and reads back the same.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local json = require 'fsdp.json'
local hf = require 'fsdp.hf'
local st = require 'fsdp.safetensors'
local ckpt = require 'fsdp.checkpoint'
local export = require 'fsdp.export'
local models = require 'models'
local llama = require 'models.llama'

fsdp.set_num_threads(1)
local golden = fsdp.root .. '/tests/golden/'
local tmp = os.tmpname()
os.remove(tmp)
fs.mkdirs(tmp)

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

---------------------------------------------------------------------------
-- 1. floats stay floats

do
   local text = '{"a":0.0,"b":1000000.0,"c":3,"d":[1.0,2,1e-05,1000.0],"e":{"x":8.0,"y":8},"f":-0.5}'
   local v = json.decode(text)
   t.check(json.encode(v) == text, 'decode/encode round trip: %s', json.encode(v))
   local c = json.copy(v)
   c.b = 500000
   c.e.y = 9
   t.check(json.encode(c) == '{"a":0.0,"b":500000.0,"c":3,"d":[1.0,2,1e-05,1000.0],"e":{"x":8.0,"y":9},"f":-0.5}',
           'a copy keeps the marks: %s', json.encode(c))
   t.check(json.encode(v) == text, 'the copy is deep')
   local m = json.set_float({theta = 10000, n = 4}, 'theta')
   t.check(json.encode(m) == '{"n":4,"theta":10000.0}', 'set_float: %s', json.encode(m))
   t.check(json.encode(json.set_float({x = 1e20}, 'x')) == '{"x":1e+20}', 'a large float keeps an exponent')
   t.check(json.is_float(v, 'a') and not json.is_float(v, 'c'), 'is_float')
end

---------------------------------------------------------------------------
-- 2. exports keep the config they came from

-- the fixture's model through a checkpoint into an export; returns the
-- exported directory
local n_export = 0
local function export_of(fixture, layout)
   n_export = n_export + 1
   local model = hf.load(golden .. fixture)
   local sharded = fsdp.shard(model, {strategy = 'none'})
   hf.close(model)
   local desc = models.describe(model)
   local step = ckpt.save(tmp .. '/ck' .. n_export, {step = 1, sharded = sharded, model_name = desc.name,
                                                     model_config = desc.config})
   local out = tmp .. '/export' .. n_export
   export.export(step, out, {config_layout = layout})
   return out
end

-- the JSON text of each member, floats marked as written
local function members(cfg)
   local out = {}
   for k, v in pairs(cfg) do out[k] = json.encode(json.set_float({v = v}, 'v', json.is_float(cfg, k))) end
   return out
end

local function logits_of(dir, ids)
   local m = hf.load(dir):materialize()
   hf.close(m)
   local l = fsdp.no_grad(function() return m(ids):totable() end)
   fsdp.autograd.reset()
   return l
end

local function same_list(a, b)
   if #a ~= #b then return false end
   for i = 1, #a do if a[i] ~= b[i] then return false end end
   return true
end

for _, fixture in ipairs({'hf/llama3', 'hf/codellama', 'hf/mixtral', 'hf/opt', 'hf/gpt2', 'hf5/llama_yarn',
                          'hf5/llama_longrope', 'hf5/mixtral', 'hf5/gpt2', 'hf/qwen2', 'hf5/qwen2', 'hf5/qwen3_tied',
                          'hf/gemma2', 'hf5/gemma2'}) do
   local orig = json.read_file(golden .. fixture .. '/config.json')
   local came = hf.config_layout(orig)
   local dir = export_of(fixture, 'auto')
   local text = read(dir .. '/config.json')
   local got = json.decode(text)
   local a, b = members(orig), members(got)
   for k, v in pairs(a) do
      t.check(b[k] == v, '%s: export changed %s: %s -> %s', fixture, k, v, tostring(b[k]))
   end
   for k, v in pairs(b) do
      t.check(a[k] ~= nil, '%s: export added %s = %s', fixture, k, v)
   end
   t.check(not (got.torch_dtype and got.dtype), '%s: both torch_dtype and dtype', fixture)
   if fixture:find('mixtral') then
      t.check(text:find('"router_jitter_noise": 0.0', 1, true), '%s: router_jitter_noise stays a float', fixture)
   end
   -- the other layout, and back: the same model
   local other = came == '4' and '5' or '4'
   local dir2 = export_of(fixture, other)
   local conv = json.read_file(dir2 .. '/config.json')
   t.check(hf.config_layout(conv) == other or not (orig.rope_theta or orig.rope_parameters),
           '%s: --config-layout %s gave layout %s', fixture, other, hf.config_layout(conv))
   if other == '5' then
      t.check(conv.dtype == 'float32' and conv.torch_dtype == nil and conv.rope_theta == nil and conv.rope_scaling == nil,
              '%s: the 5.x layout has dtype and no rope_theta / rope_scaling', fixture)
   else
      t.check(conv.torch_dtype == 'float32' and conv.dtype == nil and conv.rope_parameters == nil,
              '%s: the 4.x layout has torch_dtype and no rope_parameters', fixture)
   end
   if orig.rope_theta or orig.rope_parameters then
      local rp = conv.rope_parameters or conv.rope_scaling
      local theta = conv.rope_parameters and conv.rope_parameters.rope_theta or conv.rope_theta
      t.check(theta and (conv.rope_parameters and json.is_float(conv.rope_parameters, 'rope_theta')
                         or json.is_float(conv, 'rope_theta')), '%s: rope_theta is a float', fixture)
      if rp ~= json.null and rp.factor then t.check(json.is_float(rp, 'factor'), '%s: factor is a float', fixture) end
   end
   local ex = st.open(golden .. fixture .. '/expected.safetensors')
   local ids = ex:tensor('input_ids')
   local l0, l1, l2 = logits_of(golden .. fixture, ids), logits_of(dir, ids), logits_of(dir2, ids)
   t.check(same_list(l0, l1) and same_list(l0, l2), '%s: the exports read back as another model', fixture)
   ex:close()
end

---------------------------------------------------------------------------
-- 3. a model from scratch: transformers 5's layout, floats as floats

do
   local m = llama.Llama {vocab_size = 64, hidden_size = 32, intermediate_size = 48, num_hidden_layers = 1,
                         num_attention_heads = 4, num_key_value_heads = 2, rope_theta = 500000,
                         rope_scaling = {rope_type = 'llama3', factor = 8, low_freq_factor = 1, high_freq_factor = 4,
                                         original_max_position_embeddings = 64}}
   local cfg = models.family_of(m).to_hf_config(m)
   local text = json.encode(cfg)
   for _, want in ipairs({'"rms_norm_eps":1e-06', '"initializer_range":0.02', '"attention_dropout":0.0',
                          '"rope_theta":500000.0', '"factor":8.0', '"low_freq_factor":1.0',
                          '"original_max_position_embeddings":64', '"rope_type":"llama3"'}) do
      t.check(text:find(want, 1, true), 'from scratch: %s not in %s', want, text)
   end
   t.check(cfg.rope_theta == nil and cfg.rope_scaling == nil and cfg.rope_parameters, 'from scratch: 5.x layout')
   local back = models.family_of(m).from_hf(json.decode(text))
   t.check(same_list(llama.inv_freq(back.config), llama.inv_freq(m.config)), 'from scratch: read back, other RoPE')
   local cfg4 = models.family_of(m).to_hf_config(m, '4')
   t.check(json.encode(cfg4):find('"rope_theta":500000.0', 1, true) and cfg4.rope_scaling.rope_type == 'llama3',
           'from scratch in the 4.x layout: %s', json.encode(cfg4))
   local mx = require('models.mixtral').Mixtral {vocab_size = 64, hidden_size = 32, intermediate_size = 16,
                                                 num_hidden_layers = 1, num_attention_heads = 4, num_key_value_heads = 2,
                                                 num_local_experts = 2, num_experts_per_tok = 1}
   text = json.encode(models.family_of(mx).to_hf_config(mx))
   for _, want in ipairs({'"router_jitter_noise":0.0', '"router_aux_loss_coef":0.001', '"rope_theta":1000000.0',
                          '"sliding_window":null'}) do
      t.check(text:find(want, 1, true), 'mixtral from scratch: %s not in %s', want, text)
   end
end

---------------------------------------------------------------------------
-- 4. RoPE settings: errors name the key; length-dependent tables

do
   local base = {vocab_size = 16, hidden_size = 16, intermediate_size = 16, num_hidden_layers = 1,
                 num_attention_heads = 2, max_position_embeddings = 8}
   local function with(fields)
      local c = {}
      for k, v in pairs(base) do c[k] = v end
      for k, v in pairs(fields) do c[k] = v end
      return c
   end
   local cases = {
      {{rope_parameters = {rope_type = 'linear', factor = 2}, rope_scaling = {rope_type = 'linear', factor = 2}},
       {'rope_parameters', 'rope_scaling', 'keep one'}},
      {{rope_scaling = {rope_type = 'linear', type = 'dynamic', factor = 2}}, {'rope_type', 'disagree'}},
      {{rope_parameters = {rope_type = 'su'}}, {"rope_parameters.rope_type 'su'", 'longrope'}},
      {{rope_parameters = {rope_type = 'linear'}}, {"needs 'factor'"}},
      {{rope_parameters = {rope_type = 'llama3', factor = 8, low_freq_factor = 4, high_freq_factor = 1}},
       {'high_freq_factor'}},
      {{rope_parameters = {rope_type = 'longrope', short_factor = {1, 1, 1}, long_factor = {1, 1, 1, 1}}},
       {'short_factor', 'head_dim/2 = 4'}},
      {{partial_rotary_factor = 0.5}, {'partial_rotary_factor'}},
      {{rope_parameters = {rope_type = 'yarn', factor = 2, truncate = 'yes'}}, {'truncate'}},
   }
   for i, c in ipairs(cases) do
      t.raises(function() llama.Llama(with(c[1])) end, c[2], 'rope case ' .. i)
   end
   local _, unknown = llama.rope_parameters(with({rope_parameters = {rope_type = 'linear', factor = 2, foo = 1}}))
   t.check(#unknown == 1 and unknown[1] == 'rope_parameters.foo', 'unknown rope keys are reported')

   -- dynamic: past max_position_embeddings the tables follow the length
   local m = llama.Llama(with({rope_parameters = {rope_type = 'dynamic', factor = 2}}))
   local rope = m.rope
   local c8 = rope:tables(8):totable()
   local c13 = rope:tables(13):totable()
   local c5 = rope:tables(5):totable()
   local c8b = rope:tables(8):totable()
   local function row(tab, pos, half) local r = {} for i = 1, half do r[i] = tab[pos * half + i] end return r end
   t.check(same_list(row(c8, 3, 4), row(c5, 3, 4)) and same_list(c8, c8b), 'dynamic: short lengths use the base')
   t.check(not same_list(row(c8, 3, 4), row(c13, 3, 4)), 'dynamic: 13 positions change the frequencies')
   -- longrope: long factors past original_max_position_embeddings
   m = llama.Llama(with({max_position_embeddings = 32, rope_parameters = {rope_type = 'longrope',
      original_max_position_embeddings = 8, short_factor = {1, 1, 1, 1}, long_factor = {2, 2, 2, 2}}}))
   local i8, s8 = llama.inv_freq(m.config, 8)
   local i9, s9 = llama.inv_freq(m.config, 9)
   t.check(i9[2] < i8[2] and s8 == s9 and s8 > 1, 'longrope: long factors past 8 positions, one attention factor')
end

---------------------------------------------------------------------------
-- 5. tokenizer_config.json and generation_config.json

do
   local d = tmp .. '/tok'
   fs.mkdirs(d)
   os.execute('cp ' .. fs.quote(golden .. 'tokenizers/llama2like/tokenizer.json') .. ' ' .. fs.quote(d) .. '/')
   local tok = require('fsdp.tokenizer').load(d)
   local bos, eos, unk = tok.bos_id, tok.eos_id, tok.unk_id
   t.check(tok.add_bos and bos and eos and unk, 'llama2like: adds <s>, has bos/eos/unk')
   tok:free()
   write(d .. '/tokenizer_config.json', json.encode({bos_token = {content = '<s>'}, eos_token = '</s>',
      unk_token = {content = '<unk>', lstrip = false}, pad_token = '</s>', add_bos_token = false,
      add_eos_token = false}))
   tok = require('fsdp.tokenizer').load(d)
   t.check(tok.unk_id == unk and tok.pad_id == eos and tok.bos_id == bos, 'tokenizer_config names unk and pad')
   local notes = table.concat(tok.config_notes or {}, '; ')
   t.check(notes:find('add_bos_token is false', 1, true) and not notes:find('add_eos_token', 1, true),
           'add_bos_token false against tokenizer.json is reported: %s', notes)
   local ids = tok:encode('hello', true)
   t.check(ids:ptr()[0] == bos, 'encode follows tokenizer.json (as transformers 5)')
   tok:free()
   write(d .. '/tokenizer_config.json', json.encode({unk_token = '<nope>'}))
   tok = require('fsdp.tokenizer').load(d)
   t.check(tok.unk_id == unk and (tok.config_notes[1] or ''):find("unk_token '<nope>'", 1, true),
           'a token missing from the vocabulary is reported')
   tok:free()

   -- generation_config.json
   local g = tmp .. '/gen'
   fs.mkdirs(g)
   write(g .. '/generation_config.json', '{"bos_token_id": 1, "eos_token_id": [2, 7], "do_sample": true, ' ..
         '"temperature": 0.6, "top_p": 0.9, "transformers_version": "4.49.0", "some_new_knob": 1}')
   local gen = hf.read_generation_config(g)
   t.check(gen.bos_id == 1 and same_list(gen.eos_ids, {2, 7}) and gen.sampling.temperature == 0.6 and
           #gen.unknown == 1 and gen.unknown[1] == 'some_new_knob', 'generation_config.json read')
   t.check(hf.read_generation_config(tmp) == nil, 'no generation_config.json: nil')
   write(g .. '/generation_config.json', '{"eos_token_id": 2, "repetition_penalty": 1.1}')
   t.raises(function() hf.read_generation_config(g) end, {g .. '/generation_config.json', "'repetition_penalty'",
            'does not implement'}, 'unsupported generation setting')
   write(g .. '/generation_config.json', '{"eos_token_id": 2, "repetition_penalty": 1.0, "num_beams": 1}')
   t.check(hf.read_generation_config(g).eos_ids[1] == 2, 'neutral values are fine')
end

---------------------------------------------------------------------------
-- 6. Qwen's sliding windows

do
   local qwen2, qwen3 = require 'models.qwen2', require 'models.qwen3'
   local base = {num_hidden_layers = 3, max_position_embeddings = 64, max_window_layers = 1,
                 use_sliding_window = true, sliding_window = 5}
   local function with(fields)
      local c = {}
      for k, v in pairs(base) do c[k] = v end
      for k, v in pairs(fields) do c[k] = v end
      if c.sliding_window == json.null then c.sliding_window = nil end
      return c
   end
   local function windows(fields, from_4x)
      return table.concat(qwen2.layer_windows(with(fields), 'qwen2', from_4x), ',')
   end
   local full, slide = 'full_attention', 'sliding_attention'
   for _, c in ipairs({
      {{}, false, '0,5,5'},
      {{use_sliding_window = false}, false, '0,0,0'},
      {{max_window_layers = 5}, false, '0,0,0'},
      {{layer_types = {slide, full, slide}}, false, '5,0,5'},
      {{layer_types = {slide, full, slide}}, true, '5,0,5'}, -- layer_types: written by transformers 5
      {{max_window_layers = 0}, true, '5,5,5'},             -- 4.x and 5 agree: every layer
      {{use_sliding_window = false, sliding_window = 64}, true, '0,0,0'}, -- a window that cannot bind
      {{use_sliding_window = false, sliding_window = json.null}, true, '0,0,0'},
   }) do
      local got = windows(c[1], c[2])
      t.check(got == c[3], 'qwen windows %s (from 4.x: %s): %s, want %s', json.encode(c[1]), tostring(c[2]), got, c[3])
   end
   for _, c in ipairs({
      {{}, true, {'sliding_window 5', 'max_position_embeddings 64', 'use_sliding_window true', 'max_window_layers 1',
                  'layer 0', 'layer_types'}},
      {{use_sliding_window = false, sliding_window = 32}, true, {'sliding_window 32', 'use_sliding_window false'}},
      {{layer_types = {full, slide}}, false, {'layer_types must list the 3 layers'}},
      {{layer_types = {full, 'chunked_attention', slide}}, false, {"layer_types[1] = chunked_attention"}},
      {{layer_types = {full, full, slide}, use_sliding_window = false}, false,
       {"layer_types[2] is 'sliding_attention'", 'use_sliding_window is false'}},
      {{sliding_window = 0}, false, {'sliding_window must be a positive integer'}},
      {{sliding_window = 2.5}, false, {'sliding_window must be a positive integer'}},
      {{use_sliding_window = 'yes'}, false, {'use_sliding_window must be true or false'}},
      {{max_window_layers = -1}, false, {'max_window_layers'}},
   }) do
      t.raises(function() windows(c[1], c[2]) end, c[3], 'qwen windows ' .. json.encode(c[1]))
   end

   -- through config.json: the transformers 5 fixture in the 4.x layout
   -- without its layer_types is the config 4.x would have written, and 4.x
   -- windows its first layer: refused, naming the file and the keys
   local d = tmp .. '/qwen2_no_types'
   fs.mkdirs(d)
   os.execute('cp ' .. fs.quote(golden .. 'hf5/qwen2') .. '/model.safetensors ' .. fs.quote(d) .. '/')
   local cfg = json.read_file(golden .. 'hf5/qwen2/config_v4.json')
   cfg.layer_types = nil
   write(d .. '/config.json', json.encode(cfg))
   t.raises(function() hf.build(d) end, {d .. '/config.json', 'sliding_window 5', 'max_window_layers 1',
                                         'layer_types'}, 'qwen2 4.x config whose windows 4.x and 5 disagree on')
   cfg = json.read_file(golden .. 'hf5/qwen3/config.json')
   cfg.hidden_act = 'gelu'
   write(d .. '/config.json', json.encode(cfg))
   t.raises(function() hf.build(d) end, {d .. '/config.json', "hidden_act 'gelu'"}, 'qwen3 activation')

   -- from scratch: transformers 5's keys (layer_types, sliding_window null
   -- without use_sliding_window), and read back to the same windows
   for _, v in ipairs({
      {qwen2.Qwen2, {use_sliding_window = true, sliding_window = 4, max_window_layers = 1}, '0,4', 'Qwen2ForCausalLM'},
      {qwen3.Qwen3, {head_dim = 12}, '0,0', 'Qwen3ForCausalLM'},
   }) do
      local c = {vocab_size = 64, hidden_size = 32, intermediate_size = 48, num_hidden_layers = 2,
                 num_attention_heads = 4, num_key_value_heads = 2, max_position_embeddings = 64}
      for k, x in pairs(v[2]) do c[k] = x end
      local m = v[1](c)
      local out = models.family_of(m).to_hf_config(m)
      local text = json.encode(out)
      t.check(out.architectures[1] == v[4] and out.layer_types and #out.layer_types == 2, '%s from scratch: %s', v[4],
              text)
      t.check(out.use_sliding_window or out.sliding_window == json.null, '%s from scratch: sliding_window null: %s',
              v[4], text)
      t.check(out.attention_bias == nil or v[4] == 'Qwen3ForCausalLM', 'qwen2 has no attention_bias key')
      local back = models.family_of(m).from_hf(json.decode(text))
      t.check(table.concat(back.config.windows, ',') == v[3] and table.concat(m.config.windows, ',') == v[3],
              '%s from scratch: windows %s, read back %s, want %s', v[4], table.concat(m.config.windows, ','),
              table.concat(back.config.windows, ','), v[3])
      t.check(back.config.head_dim == m.config.head_dim, '%s: head_dim read back', v[4])
   end
end

---------------------------------------------------------------------------
-- 7. Gemma 2

do
   local gemma2 = require 'models.gemma2'
   local function windows(fields)
      local c = {num_hidden_layers = 4, sliding_window = 6}
      for k, v in pairs(fields) do c[k] = v end
      if c.sliding_window == json.null then c.sliding_window = nil end
      return table.concat(gemma2.layer_windows(c, 'gemma2'), ',')
   end
   t.check(windows({}) == '6,0,6,0', 'gemma2: even layers windowed by default, got %s', windows({}))
   t.check(windows({layer_types = {'full_attention', 'sliding_attention', 'full_attention', 'full_attention'}})
           == '0,6,0,0', 'gemma2: layer_types decide')
   for _, c in ipairs({
      {{sliding_window = json.null}, {"layer_types[0] is 'sliding_attention' but sliding_window is null"}},
      {{layer_types = {'full_attention'}}, {'layer_types must list the 4 layers'}},
      {{sliding_window = -3}, {'sliding_window must be a positive integer'}},
   }) do
      t.raises(function() windows(c[1]) end, c[2], 'gemma2 windows ' .. json.encode(c[1]))
   end
   local base = {vocab_size = 64, hidden_size = 32, intermediate_size = 48, num_hidden_layers = 2,
                 num_attention_heads = 4, num_key_value_heads = 2, head_dim = 8, max_position_embeddings = 64,
                 query_pre_attn_scalar = 8, sliding_window = 4}
   local function with(fields)
      local c = {}
      for k, v in pairs(base) do c[k] = v end
      for k, v in pairs(fields) do c[k] = v end
      return c
   end
   for _, c in ipairs({
      {{hidden_activation = 'gelu'}, {"hidden_activation 'gelu' is not supported (gelu_pytorch_tanh)"}},
      {{attn_logit_softcapping = -1}, {'attn_logit_softcapping must be a positive number or null'}},
      {{final_logit_softcapping = 0}, {'final_logit_softcapping must be a positive number or null'}},
      {{query_pre_attn_scalar = 0}, {'query_pre_attn_scalar must be a positive number'}},
      {{use_bidirectional_attention = true}, {'use_bidirectional_attention true is not supported'}},
   }) do
      t.raises(function() gemma2.Gemma2(with(c[1])) end, c[2], 'gemma2 config ' .. json.encode(c[1]))
   end
   -- from scratch: transformers 5's keys, floats as floats, and read back
   local m = gemma2.Gemma2(with({}))
   local out = models.family_of(m).to_hf_config(m)
   local text = json.encode(out)
   for _, want in ipairs({'"architectures":["Gemma2ForCausalLM"]', '"attn_logit_softcapping":50.0',
                          '"final_logit_softcapping":30.0', '"hidden_activation":"gelu_pytorch_tanh"',
                          '"layer_types":["sliding_attention","full_attention"]', '"rope_parameters"'}) do
      t.check(text:find(want, 1, true), 'gemma2 from scratch: %s not in %s', want, text)
   end
   t.check(out.hidden_act == nil and out.mlp_bias == nil, 'gemma2 from scratch writes no Llama-only keys: %s', text)
   -- keys published Gemma 2 configs carry that transformers does not read
   local unknown = hf.check_keys({sliding_window_size = 4096, hidden_act = 'gelu_pytorch_tanh',
                                  cache_implementation = 'hybrid', something_new = 1}, models.family_of(m), 'config.json')
   t.check(#unknown == 1 and unknown[1] == 'something_new', 'gemma2 unknown keys: %s', table.concat(unknown, ', '))
   local back = models.family_of(m).from_hf(json.decode(text))
   t.check(table.concat(back.config.windows, ',') == '4,0' and back.config.attn_logit_softcapping == 50 and
           back.config.final_logit_softcapping == 30, 'gemma2 from scratch read back: %s', text)
end

os.execute('rm -rf ' .. fs.quote(tmp))
return t.done()
