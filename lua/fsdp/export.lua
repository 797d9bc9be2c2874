-- fsdp.export: a checkpoint (any world size) -> a consolidated Hugging Face
-- directory that transformers loads with from_pretrained:
--   config.json, model.safetensors (or model-0000K-of-0000N.safetensors and
--   model.safetensors.index.json past --max-shard-size), and the tokenizer
--   files of the model the run started from.
--
--   fsdp-lua export CKPT_DIR OUT_DIR [--dtype f32|bf16|f16] [--max-shard-size 5GB] [--config-layout auto|4|5]
--
-- CKPT_DIR is a checkpoint directory (its `latest` is followed) or a step
-- directory. config.json keeps the keys and the layout of the model's own
-- (transformers 4.x: rope_theta, rope_scaling, torch_dtype; 5.x:
-- rope_parameters, dtype) unless --config-layout says otherwise; a model
-- from scratch is written in 5.x's layout. Floats stay floats. The values are read slice by slice from the rank files, so the
-- export needs one copy of the model in memory, not one per old rank.
local bind = require 'fsdp.ffi'
local ckpt = require 'fsdp.checkpoint'
local json = require 'fsdp.json'
local fs = require 'fsdp.fs'
local st = require 'fsdp.safetensors'
local T = require 'fsdp.tensor'
local cli = require 'fsdp.cli'
local ffi, C = bind.ffi, bind.C

local M = {}

M.options = {
   {'dtype', 'f32', 'dtype of the exported weights', choices = {'f32', 'bf16', 'f16'},
    values = {bfloat16 = 'bf16', float16 = 'f16', fp16 = 'f16', float32 = 'f32', fp32 = 'f32'}},
   {'max_shard_size', '5GB', 'split model.safetensors into shards of at most this size', type = 'size', min = 1},
   {'config_layout', 'auto', "config.json as transformers '4' (rope_theta, rope_scaling, torch_dtype) or '5' " ..
    "(rope_parameters, dtype) writes it; auto: the layout the model came in, 5 for a model from scratch",
    choices = {'auto', '4', '5'}},
   require('fsdp.threads').option,
}

local TOKENIZER_FILES = {'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model',
                         'generation_config.json', 'vocab.json', 'merges.txt'}

-- the transformers layout ('4' or '5') an export of `model` is written in:
-- `layout` when it is not 'auto', else the layout of the config.json the
-- model was read from, else 5 (today's transformers)
function M.layout_for(model, layout)
   if layout and layout ~= 'auto' then return layout end
   if model.hf_config then return require('fsdp.hf').config_layout(model.hf_config) end
   return '5'
end

-- the model a checkpoint index describes (built, not materialized) and the
-- config.json of its export in `layout` ('4', '5', or 'auto'); the family
-- comes from the model registry. The dtype key is the one the layout uses:
-- torch_dtype (4) or dtype (5), never both.
function M.model_of(index, where, layout, dtype)
   local models = require 'models'
   local model = models.build(index.model, 'export: ' .. where .. '/index.json')
   layout = M.layout_for(model, layout)
   local config = models.family_of(model).to_hf_config(model, layout)
   config.torch_dtype, config.dtype = nil, nil
   local name = ({f32 = 'float32', bf16 = 'bfloat16', f16 = 'float16'})[dtype or 'f32']
   if layout == '4' then config.torch_dtype = name else config.dtype = name end
   return model, config
end

-- A model from scratch has no token ids of its own: its config.json takes
-- bos/eos/pad from the run's tokenizer, null where it has none (left out,
-- transformers would put in its defaults, GPT-2's 50256 for instance)
function M.set_token_ids(config, tokenizer_dir)
   local tok
   if type(tokenizer_dir) == 'string' and fs.exists(tokenizer_dir) then
      local ok, t = pcall(require('fsdp.tokenizer').load, tokenizer_dir)
      if ok then tok = t end
   end
   for key, field in pairs({bos_token_id = 'bos_id', eos_token_id = 'eos_id', pad_token_id = 'pad_id'}) do
      if config[key] == nil or config[key] == json.null then
         config[key] = tok and tok[field] or json.null
      end
   end
   if tok then tok:free() end
end

-- every unit's flat parameters from the rank files: {unit name -> float*}
local function read_units(path, index)
   local out, keep = {}, {}
   for _, u in ipairs(index.units) do
      local full = T.empty({math.max(u.numel, 1)}, 'f32')
      local S = u.padded / index.world_size
      for r = 0, index.world_size - 1 do
         local lo, hi = r * S, math.min((r + 1) * S, u.numel)
         if hi > lo then
            local f = st.open(path .. '/' .. ckpt.rank_file(r))
            local p = ffi.cast('const float*', (f:data(u.name .. '.param')))
            ffi.copy(full:ptr() + lo, p, (hi - lo) * 4)
            f:close()
         end
      end
      out[u.name] = full
      keep[#keep + 1] = full
   end
   return out, keep
end

local function parse_size(s)
   local n, unit = tostring(s):match('^([%d%.]+)%s*(%a*)$')
   local mult = {[''] = 1, B = 1, KB = 1e3, MB = 1e6, GB = 1e9, KiB = 1024, MiB = 2 ^ 20, GiB = 2 ^ 30}
   if not n or not mult[unit] then error("export: cannot read a size from '" .. tostring(s) .. "'", 0) end
   return tonumber(n) * mult[unit]
end

-- step_dir: a complete step directory; out: the directory to write
function M.export(step_dir, out, opts)
   opts = opts or {}
   local index = ckpt.read_index(step_dir)
   local model, hf_config = M.model_of(index, step_dir, opts.config_layout, opts.dtype)
   if not model.hf_config then M.set_token_ids(hf_config, index.tokenizer_dir) end
   local units = read_units(step_dir, index)
   -- our parameter name -> (unit, offset) from the saved layout
   local where = {}
   for _, u in ipairs(index.units) do
      for _, p in ipairs(u.params) do where[p.name] = {unit = u.name, offset = p.offset, shape = p.shape} end
   end
   local tensors = {}
   for _, spec in ipairs(model:parameter_specs()) do
      local w = where[spec.name]
      if not w then error(string.format("export: %s has no parameter '%s' for the %s model", step_dir, spec.name, index.model.name), 0) end
      local n = 1
      for _, d in ipairs(spec.shape) do n = n * d end
      local src = units[w.unit]:view(spec.shape, nil, w.offset)
      local hf_name, transposed = spec.name, false
      if model.hf_names then
         local names
         names, transposed = model:hf_names(spec.name)
         hf_name = names[1]
      end
      local t
      if transposed then -- stored [in, out] by the checkpoint (a Conv1D layout)
         local rows, cols = spec.shape[1], spec.shape[2]
         t = T.empty({cols, rows}, 'f32')
         local a, b = src:ptr(), t:ptr()
         for i = 0, rows - 1 do for j = 0, cols - 1 do b[j * rows + i] = a[i * cols + j] end end
      else
         t = src:clone()
      end
      src:free()
      if opts.dtype and opts.dtype ~= 'f32' then
         local c = t:clone(opts.dtype)
         t:free()
         t = c
      end
      tensors[#tensors + 1] = {hf_name, t}
   end
   for _, full in pairs(units) do full:free() end

   fs.mkdirs(out)
   -- shards of at most max_shard_size bytes, in parameter order
   local limit = parse_size(opts.max_shard_size or '5GB')
   local shards, cur, size, total = {}, {}, 0, 0
   for _, nt in ipairs(tensors) do
      local b = nt[2]:nbytes()
      if #cur > 0 and size + b > limit then shards[#shards + 1] = cur; cur, size = {}, 0 end
      cur[#cur + 1] = nt
      size, total = size + b, total + b
   end
   if #cur > 0 then shards[#shards + 1] = cur end
   local meta = {format = 'pt'}
   if #shards == 1 then
      st.write(out .. '/model.safetensors', shards[1], meta)
   else
      local weight_map = {}
      for k, shard in ipairs(shards) do
         local name = string.format('model-%05d-of-%05d.safetensors', k, #shards)
         st.write(out .. '/' .. name, shard, meta)
         for _, nt in ipairs(shard) do weight_map[nt[1]] = name end
      end
      local text = json.encode({metadata = {total_size = total}, weight_map = weight_map}, '  ')
      bind.check(C.fsdp_file_write_atomic(out .. '/model.safetensors.index.json', text, #text), 'export')
   end
   for _, nt in ipairs(tensors) do nt[2]:free() end
   local text = json.encode(hf_config, '  ')
   bind.check(C.fsdp_file_write_atomic(out .. '/config.json', text, #text), 'export')
   -- tokenizer files of the model the run started from
   local tok_dir = index.tokenizer_dir
   local copied = 0
   if type(tok_dir) == 'string' and fs.is_dir(tok_dir) then
      for _, name in ipairs(TOKENIZER_FILES) do
         if fs.exists(tok_dir .. '/' .. name) then
            os.execute('cp ' .. fs.quote(tok_dir .. '/' .. name) .. ' ' .. fs.quote(out .. '/' .. name))
            copied = copied + 1
         end
      end
   end
   return {shards = #shards, tensors = #tensors, bytes = total, tokenizer_files = copied, step = index.step}
end

-- a trained model ready to run, sharded over the job's ranks, and its
-- tokenizer: from a Hugging Face directory (model_dir) or an fsdp-lua
-- checkpoint (checkpoint: its latest, or a step directory). tokenizer:
-- a tokenizer.json or its directory, 'bytes', or '' for the model's own.
-- device: -1 (default) for the host, N for cuda:N (fsdp.device loaded it).
-- opts.generation: also read generation_config.json (returned third)
function M.load_trained(model_dir, checkpoint, tokenizer, strategy, device, opts)
   local fsdp = require 'fsdp'
   if (model_dir == '') == (checkpoint == '') then error('give --model DIR or --checkpoint DIR', 0) end
   local model, tokenizer_dir
   if model_dir ~= '' then
      local hf = require 'fsdp.hf'
      model = hf.load(model_dir)
      tokenizer_dir = fs.exists(model_dir .. '/tokenizer.json') and model_dir or nil
      fsdp.shard(model, {strategy = strategy, device = device})
      hf.close(model)
   else
      local step = fs.exists(checkpoint .. '/index.json') and checkpoint or ckpt.latest(checkpoint)
      if not step then error(checkpoint .. ' is not a checkpoint (no latest, no index.json)', 0) end
      local index = ckpt.read_index(step)
      model = M.model_of(index, step)
      tokenizer_dir = type(index.tokenizer_dir) == 'string' and index.tokenizer_dir or nil
      ckpt.load(step, fsdp.shard(model, {strategy = strategy, device = device}))
   end
   if tokenizer ~= '' then tokenizer_dir = tokenizer ~= 'bytes' and tokenizer or nil end
   local tok = tokenizer_dir and require('fsdp.tokenizer').load(tokenizer_dir) or fsdp.data.ByteTokenizer.new()
   -- for generation (opts.generation): generation_config.json's
   -- end-of-sequence ids stop it, as in transformers (tok.eos_ids); settings
   -- recipes/generate.lua cannot honour are errors
   local gen_dir = model_dir ~= '' and model_dir or tokenizer_dir
   local gen = opts and opts.generation and gen_dir and require('fsdp.hf').read_generation_config(gen_dir)
   if gen then
      if #gen.eos_ids > 0 then tok.eos_ids, tok.eos_id = gen.eos_ids, gen.eos_ids[1] end
      tok.bos_id = gen.bos_id or tok.bos_id
   end
   return model, tok, gen
end

function M.main(args)
   local positional, rest = {}, {}
   for _, a in ipairs(args) do
      if #rest == 0 and a:sub(1, 2) ~= '--' then positional[#positional + 1] = a else rest[#rest + 1] = a end
   end
   local opt, help = cli.parse('export', M.options, rest)
   if not opt then print('usage: fsdp-lua export CKPT_DIR OUT_DIR [options]\n' .. help); return 0 end
   if #positional ~= 2 then
      error('usage: fsdp-lua export CKPT_DIR OUT_DIR [--dtype f32|bf16|f16] [--max-shard-size 5GB] [--config-layout auto|4|5]', 0)
   end
   require('fsdp.threads').setup(opt.threads)
   local dir, out = positional[1], positional[2]
   local step_dir = fs.exists(dir .. '/index.json') and dir or ckpt.latest(dir)
   if not step_dir then error('export: ' .. dir .. ' has no latest and no index.json: not a checkpoint', 0) end
   local r = M.export(step_dir, out, opt)
   print(string.format('exported step %d of %s to %s: %d tensors, %.1f MB in %d file(s), %d tokenizer file(s)',
                       r.step, step_dir, out, r.tensors, r.bytes / 1e6, r.shards, r.tokenizer_files))
   return 0
end

return M
