-- Writes the seed corpora of the fuzz targets, tests/fuzz/seeds/<target>/:
-- small valid inputs of each format (made with our own writers, copied from
-- tests/golden, or written out here) for the fuzzers to mutate.
--   build/fsdp-lua tests/fuzz/make_seeds.lua
local fsdp = require 'fsdp'
local fs = require 'fsdp.fs'
local json = fsdp.json
local ffi, C = fsdp.ffi, fsdp.C

local out = fsdp.root .. '/tests/fuzz/seeds'
local function put(target, name, data)
   fs.mkdirs(out .. '/' .. target)
   local f = assert(io.open(out .. '/' .. target .. '/' .. name, 'wb'))
   f:write(data)
   f:close()
end
local function copy(target, name, path) put(target, name, assert(fs.read(fsdp.root .. '/' .. path), path)) end
local scratch = os.tmpname()

-- safetensors: our writer, a few dtypes and shapes, metadata
do
   local st = require 'fsdp.safetensors'
   local a = fsdp.full({2, 3}, 1.5)
   local b = fsdp.full({4}, 2, 'bf16')
   local c = fsdp.full({1}, 7, 'i64')
   st.write(scratch, {{'a.weight', a}, {'b', b}, {'c.count', c}}, {format = 'pt', step = '3'})
   put('safetensors', 'three_tensors.safetensors', fs.read(scratch))
   st.write(scratch, {{'only', fsdp.full({1}, 0)}})
   put('safetensors', 'one.safetensors', fs.read(scratch))
   local h = '{"__metadata__":{"x":"y"},"t":{"dtype":"F16","shape":[0],"data_offsets":[0,0]}}'
   put('safetensors', 'empty_tensor.safetensors', string.char(#h, 0, 0, 0, 0, 0, 0, 0) .. h)
end

-- tokenizer.json: two golden ones and hand-made ones with each component
do
   copy('tokenizer', 'ignore_merges_on.json', 'tests/golden/tokenizers/variants/ignore_merges_on/tokenizer.json')
   copy('tokenizer', 'digits_individual.json', 'tests/golden/tokenizers/variants/digits_individual/tokenizer.json')
   local vocab = {['<unk>'] = 0, ['<s>'] = 1, ['</s>'] = 2, ['▁'] = 3, a = 4, b = 5, ab = 6, ['▁a'] = 7, ['<0x41>'] = 8,
                  ['Ġ'] = 9, ['Ġa'] = 10}
   local merges = json.array({'a b', '▁ a', 'Ġ a'})
   local function tok(extra)
      local t = {version = '1.0', model = {type = 'BPE', vocab = vocab, merges = merges, unk_token = '<unk>',
                                            byte_fallback = true},
                 added_tokens = json.array({{id = 1, content = '<s>', special = true}, {id = 2, content = '</s>', special = true}})}
      for k, v in pairs(extra) do t[k] = v end
      return json.encode(t)
   end
   put('tokenizer', 'sentencepiece.json', tok({
      normalizer = {type = 'Sequence', normalizers = json.array({{type = 'Prepend', prepend = '▁'},
                                                                 {type = 'Replace', pattern = {String = ' '}, content = '▁'}})},
      decoder = {type = 'Sequence', decoders = json.array({{type = 'Replace', pattern = {String = '▁'}, content = ' '},
                                                          {type = 'ByteFallback'}, {type = 'Fuse'},
                                                          {type = 'Strip', content = ' ', start = 1, stop = 0}})},
      post_processor = {type = 'TemplateProcessing', single = json.array({{SpecialToken = {id = '<s>', type_id = 0}},
                                                                         {Sequence = {id = 'A', type_id = 0}}}),
                        special_tokens = {['<s>'] = {id = '<s>', ids = json.array({1}), tokens = json.array({'<s>'})}}}}))
   put('tokenizer', 'bytelevel.json', tok({
      pre_tokenizer = {type = 'Sequence', pretokenizers = json.array({
         {type = 'Split', pattern = {Regex = '\\p{N}{1,3}'}, behavior = 'Isolated', invert = false},
         {type = 'ByteLevel', add_prefix_space = false, use_regex = true}})},
      decoder = {type = 'ByteLevel'}, post_processor = {type = 'ByteLevel'}}))
   put('tokenizer', 'metaspace.json', tok({
      pre_tokenizer = {type = 'Metaspace', replacement = '▁', prepend_scheme = 'first', split = true},
      normalizer = {type = 'Strip', strip_left = true, strip_right = true},
      decoder = {type = 'Metaspace', replacement = '▁', prepend_scheme = 'first'},
      post_processor = {type = 'RobertaProcessing', cls = json.array({'<s>', 1}), sep = json.array({'</s>', 2})}}))
end

-- token files: ours at both widths, llm.c's layout, an empty one
do
   local function tokens(n, vocab)
      local a = ffi.new('int32_t[?]', n)
      for i = 0, n - 1 do a[i] = (i * 7919) % vocab end
      return a
   end
   assert(C.fsdp_tokens_write(scratch, tokens(40, 256), 40, 2, 256) == 0)
   put('tokens', 'u16.bin', fs.read(scratch))
   assert(C.fsdp_tokens_write(scratch, tokens(30, 100000), 30, 4, 100000) == 0)
   put('tokens', 'u32.bin', fs.read(scratch))
   assert(C.fsdp_tokens_write(scratch, tokens(20, 65536), 20, 2, 0) == 0)
   put('tokens', 'llmc.bin', fs.read(scratch))
   assert(C.fsdp_tokens_write(scratch, nil, 0, 4, 5) == 0)
   put('tokens', 'empty.bin', fs.read(scratch))
end

-- prepare's reader: gzip and plain
do
   local lines = '{"text": "one"}\n{"text": "two", "id": 2}\n\n{"text": "three \\u00e9"}\n'
   local f = assert(io.open(scratch, 'wb')); f:write(lines); f:close()
   os.execute('gzip -c -n ' .. scratch .. ' > ' .. scratch .. '.gz')
   put('gzip', 'lines.jsonl.gz', fs.read(scratch .. '.gz'))
   put('gzip', 'plain.jsonl', lines)
   os.remove(scratch .. '.gz')
end

-- JSON: configs of every family, and our own files
for _, fam in ipairs({'llama', 'gpt2', 'opt', 'mixtral', 'mistral'}) do
   copy('json', fam .. '_config.json', 'tests/golden/hf/' .. fam .. '/config.json')
   copy('config', fam .. '.json', 'tests/golden/hf/' .. fam .. '/config.json')
end
put('json', 'escapes.json', '{"s": "a\\"b\\\\c\\u00e9\\ud83d\\ude00\\n", "n": [0, -1.5e-3, 12345678901234567, true, false, null], "o": {}}')
put('json', 'metrics.json', '{"grad_norm":4.78,"loss":5.55,"lr":6e-05,"step":3,"wall_time":1796284301.50584}')

-- checkpoint index.json + NUL + trainer_state.json of a tiny run
do
   local dir = scratch .. '.ck'
   local cmd = string.format('OMP_NUM_THREADS=1 %s/build/fsdp-lua recipes/train_mingpt.lua --preset gpt-nano --n-layer 1 ' ..
                             '--batch-size 2 --seq-len 8 --max-steps 1 --sample-tokens 0 --eval-every 0 --eval-batches 1 ' ..
                             '--checkpoint-dir %s --run-dir %s.run > /dev/null 2>&1', fsdp.root, dir, dir)
   assert(os.execute(cmd) == 0, 'the tiny run failed')
   local step = dir .. '/step_00000001'
   put('ckpt', 'step.json', fs.read(step .. '/index.json') .. '\0' .. fs.read(step .. '/trainer_state.json'))
   put('json', 'manifest.json', fs.read(step .. '/manifest.json'))
   os.execute('rm -rf ' .. dir .. ' ' .. dir .. '.run')
end

-- YAML: the valid cases of tests/golden/yaml
do
   local cases = json.decode(fs.read(fsdp.root .. '/tests/golden/yaml/cases.json'))
   local n = 0
   for _, c in ipairs(cases) do
      if c.strings and not c.mutant and #c.yaml > 0 then
         n = n + 1
         put('yaml', string.format('case%02d.yaml', n), c.yaml)
         if n <= 6 then put('prepare', string.format('yaml%02d', n), string.char(3) .. c.yaml) end
      end
   end
end

-- prepare: the kind byte (0 txt, 1 json, 2 jsonl, 3 yaml), then the file
put('prepare', 'txt', '\0' .. 'Plain text.\nTwo lines.')
put('prepare', 'json', '\1' .. '{"z": "last", "a": ["first", {"b": "nested"}], "n": 3}')
put('prepare', 'jsonl', '\2' .. '{"text": "one"}\n\n{"text": "two", "id": 2}\r\n')

os.remove(scratch)
print('seeds written to ' .. out)
