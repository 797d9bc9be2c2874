-- Exports every Hugging Face fixture (tests/golden/hf: transformers 4.49;
-- tests/golden/hf5: transformers 5) the way a run does: import, shard,
-- save an fsdp-lua checkpoint, `fsdp-lua export` it; each in the layout it
-- came in and in both explicit layouts (--config-layout 4 and 5). Writes
-- into OUT (argument 1) the exported directories, the logits fsdp-lua
-- computes for the fixture's input_ids (<name>.expected.safetensors) and
-- manifest.json, which tests/interop/check_export.py reads with each
-- transformers version. Run by `make test-interop`, not by `make test`.
local fsdp = require 'fsdp'
local fs = require 'fsdp.fs'
local hf = require 'fsdp.hf'
local json = require 'fsdp.json'
local st = require 'fsdp.safetensors'
local ckpt = require 'fsdp.checkpoint'
local export = require 'fsdp.export'
local models = require 'models'

local out = arg and arg[1]
if not out or out == '' then error('usage: fsdp-lua tests/interop/export_fixtures.lua OUT_DIR', 0) end
fs.mkdirs(out)
local golden = fsdp.root .. '/tests/golden/'

local FIXTURES = {
   'hf/llama', 'hf/llama3', 'hf/codellama', 'hf/mistral', 'hf/mixtral', 'hf/opt', 'hf/opt_postnorm', 'hf/gpt2',
   'hf5/llama', 'hf5/llama_linear', 'hf5/llama_dynamic', 'hf5/llama_yarn', 'hf5/llama_llama3', 'hf5/llama_longrope',
   'hf5/mistral', 'hf5/mixtral', 'hf5/opt', 'hf5/gpt2', 'hf/qwen2', 'hf5/qwen2', 'hf5/qwen2_tied', 'hf5/qwen3',
   'hf5/qwen3_tied', 'hf/gemma2', 'hf5/gemma2',
}

local manifest = {}
for _, name in ipairs(FIXTURES) do
   local dir = golden .. name
   local base = name:gsub('/', '_')
   local ex = st.open(dir .. '/expected.safetensors')
   local ids = ex:tensor('input_ids')
   local model = hf.load(dir)
   local rope = model.config.rope and model.config.rope.rope_type or json.null
   local theta = model.config.rope and model.config.rope.rope_theta or json.null
   local came = hf.config_layout(hf.load_config(dir).config)
   local sharded = fsdp.shard(model, {strategy = 'none'})
   hf.close(model)
   local logits = fsdp.no_grad(function() return model(ids):clone() end)
   fsdp.autograd.reset()
   local ids64 = fsdp.empty(ids.shape, 'i64')
   for i = 0, ids:numel() - 1 do ids64:ptr()[i] = ids:ptr()[i] end
   st.write(out .. '/' .. base .. '.expected.safetensors', {{'logits', logits}, {'input_ids', ids64}})
   local desc = models.describe(model)
   local ck = out .. '/' .. base .. '.ckpt'
   local step = ckpt.save(ck, {step = 1, sharded = sharded, model_name = desc.name, model_config = desc.config})
   for _, layout in ipairs({'auto', '4', '5'}) do
      local dest = out .. '/' .. base .. '.' .. layout
      export.export(step, dest, {config_layout = layout})
      manifest[#manifest + 1] = {name = base .. '.' .. layout, dir = dest,
                                 expected = out .. '/' .. base .. '.expected.safetensors', fixture = name,
                                 layout = layout == 'auto' and came or layout, rope_type = rope, rope_theta = theta,
                                 arch = hf.load_config(dest).arch,
                                 windows = model.config.windows and json.array(model.config.windows) or json.null}
   end
   ex:close()
end
local f = assert(io.open(out .. '/manifest.json', 'w'))
f:write(json.encode(json.array(manifest), '  '))
f:close()
print(string.format('exported %d fixtures in 3 layouts each to %s', #FIXTURES, out))
return 0
