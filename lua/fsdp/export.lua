-- fsdp.export: a checkpoint (any world size) -> a consolidated Hugging Face
-- directory that transformers loads with from_pretrained:
--   config.json, model.safetensors (or model-0000K-of-0000N.safetensors and
--   model.safetensors.index.json past --max-shard-size), and the tokenizer
--   files of the model the run started from.
--
--   fsdp-lua export CKPT_DIR OUT_DIR [--dtype f32|bf16|f16] [--max-shard-size 5GB] [--config-layout auto|4|5]
--   fsdp-lua export CKPT_DIR OUT_DIR --adapter     a LoRA run: its adapter in PEFT's format
--   fsdp-lua export CKPT_DIR OUT_DIR --merge       a LoRA run: the full model, W + scale B A
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
   {'adapter', false, 'a LoRA run: write only its adapter in PEFT\'s format (adapter_config.json + ' ..
    'adapter_model.safetensors) that peft.PeftModel.from_pretrained loads',
    conflicts = {{'merge', '--adapter writes the adapter alone, --merge the model with the adapter merged: pick one'}}},
   {'merge', false, 'a LoRA run: write the full model with each adapter merged into its weight (W + scale B A)'},
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


---------------------------------------------------------------------------
-- LoRA runs: their adapters alone in PEFT's format, or merged

-- the LoRA settings a step saved (trainer_state.json's lora, written by
-- lora.state), nil for a run without adapters
function M.lora_of(step_dir)
   local path = step_dir .. '/trainer_state.json'
   if not fs.exists(path) then return nil end
   local tr, err = json.read_file(path)
   if not tr then error('export: ' .. tostring(err), 0) end
   local l = type(tr) == 'table' and tr.lora
   if l == nil or l == json.null or type(l) == 'number' then
      if type(l) == 'number' then
         error('export: ' .. path .. ': lora holds only a dropout step (a checkpoint older than the adapter ' ..
               'settings): its adapters cannot be rebuilt', 0)
      end
      return nil
   end
   if type(l) ~= 'table' or type(l.layers) ~= 'table' or type(l.r) ~= 'number' or type(l.alpha) ~= 'number' then
      error('export: ' .. path .. ': lora must hold r, alpha and layers', 0)
   end
   return l
end

-- the adapters of `settings` on a model built from an index, on exactly
-- the saved layers
function M.apply_lora(model, settings, where)
   local lora = require 'fsdp.lora'
   local ok, err = pcall(lora.apply, model, {r = settings.r, alpha = settings.alpha, dropout = settings.dropout or 0,
                                             rslora = settings.rslora or false, targets = settings.targets})
   if not ok then error('export: ' .. where .. ': ' .. tostring(err), 0) end
   local got, want = model.lora.layers, settings.layers
   local same = #got == #want
   for i = 1, same and #got or 0 do same = same and got[i] == want[i] end
   if not same then
      error(string.format('export: %s: the saved adapters are on %d layers (%s, ...) but targets %s give %d', where,
                          #want, tostring(want[1]), json.encode(settings.targets), #got), 0)
   end
   model.lora.base = settings.base ~= json.null and settings.base or nil
end

-- merged (a clone of the saved weight [out, in] of the LoRA layer at
-- `path`) += scale B A, B [out, r] and A [r, in] read by saved(name, shape)
function M.merge_into(merged, path, module, saved)
   local N, K, R = merged.shape[1], merged.shape[2], module.lora.r
   local A = saved(path .. '.lora_A.weight', {R, K})
   local B = saved(path .. '.lora_B.weight', {N, R})
   local w, a, b, s = merged:ptr(), A:ptr(), B:ptr(), module.lora.scale
   for o = 0, N - 1 do
      for k = 0, R - 1 do
         local bo = s * b[o * R + k]
         if bo ~= 0 then
            local row, arow = o * K, k * K
            for i = 0, K - 1 do w[row + i] = w[row + i] + bo * a[arow + i] end
         end
      end
   end
   A:free()
   B:free()
end

-- writes adapter_config.json + adapter_model.safetensors (PEFT's names,
-- f32 or opts.dtype) of the model's adapters, read by saved(name, shape)
function M.write_adapter(model, saved, out, opts, settings)
   local lora = require 'fsdp.lora'
   local tensors = {}
   for _, spec in ipairs(model:parameter_specs()) do
      if lora.is_adapter(spec.name) then
         local src = saved(spec.name, spec.shape)
         local t = src:clone(opts.dtype and opts.dtype ~= 'f32' and opts.dtype or nil)
         src:free()
         tensors[#tensors + 1] = {lora.peft_names(model, spec.name)[1], t}
      end
   end
   fs.mkdirs(out)
   local bytes = 0
   for _, nt in ipairs(tensors) do bytes = bytes + nt[2]:nbytes() end
   st.write(out .. '/adapter_model.safetensors', tensors, {format = 'pt'})
   for _, nt in ipairs(tensors) do nt[2]:free() end
   local cfg = lora.peft_config(model, settings.base ~= json.null and settings.base or nil)
   local text = json.encode(cfg, '  ')
   bind.check(C.fsdp_file_write_atomic(out .. '/adapter_config.json', text, #text), 'export')
   return {shards = 1, tensors = #tensors, bytes = bytes, tokenizer_files = 0}
end

-- the Hugging Face directory an adapter checkpoint's frozen parameters
-- come from (index.frozen.base, else the adapters' own record of their
-- base); an error saying why (`need`) when it is not there
function M.frozen_base(index, lora_settings, step_dir, need)
   local base = index.frozen.base
   if (type(base) ~= 'string' or not fs.exists(base .. '/config.json')) and lora_settings and
      type(lora_settings.base) == 'string' then
      base = lora_settings.base
   end
   if type(base) ~= 'string' or not fs.exists(base .. '/config.json') then
      error(string.format('%s holds only the trainable parameters of a run over the frozen base %s, which is not ' ..
                          'there: %s', step_dir, tostring(base), need), 0)
   end
   return base
end

-- step_dir: a complete step directory; out: the directory to write
function M.export(step_dir, out, opts)
   opts = opts or {}
   local index = ckpt.read_index(step_dir)
   local model, hf_config = M.model_of(index, step_dir, opts.config_layout, opts.dtype)
   if not model.hf_config then M.set_token_ids(hf_config, index.tokenizer_dir) end
   local lora_settings = M.lora_of(step_dir)
   if lora_settings then
      if not opts.adapter and not opts.merge then
         error(string.format('export: %s is a LoRA run (adapters on %d layers): export it with --adapter ' ..
                             '(PEFT\'s adapter format) or --merge (the full model with the adapters merged)',
                             step_dir, #lora_settings.layers), 0)
      end
      M.apply_lora(model, lora_settings, step_dir)
   elseif opts.adapter or opts.merge then
      error(string.format('export: %s has no LoRA adapters (its trainer_state.json has no lora entry): ' ..
                          '--%s is for LoRA runs', step_dir, opts.adapter and 'adapter' or 'merge'), 0)
   end
   local units = read_units(step_dir, index)
   -- our parameter name -> (unit, offset) from the saved layout
   local where = {}
   for _, u in ipairs(index.units) do
      for _, p in ipairs(u.params) do where[p.name] = {unit = u.name, offset = p.offset, shape = p.shape} end
   end
   -- An adapter checkpoint (index.frozen) holds the trainable parameters
   -- only: the frozen ones come from the base model the run was trained
   -- over, whose values must be the ones it saw (the fingerprint; checked
   -- before anything is written). --adapter needs none of them.
   local base_spec, base_print, base_seen = {}, ffi.new('uint64_t', 0), 0
   if index.frozen and not opts.adapter then
      require('fsdp.hf').attach_weights(model, M.frozen_base(index, lora_settings, step_dir,
                                                            'the merged model needs its weights (--adapter ' ..
                                                            'writes the adapter alone)'))
      for _, spec in ipairs(model:parameter_specs()) do base_spec[spec.name] = spec end
   end
   local function saved(name, shape)
      local w = where[name]
      if not w and base_spec[name] then
         local spec = base_spec[name]
         local t = T.empty(shape, 'f32')
         for _, p in ipairs(spec.module._params) do
            if p.name == spec.key and type(p.init) == 'table' and p.init[1] == 'load' then p.init[2](nil, t:ptr(), t:numel(), 0) end
         end
         base_print = base_print + C.fsdp_fingerprint_f32(t:ptr(), t:numel(), require('fsdp.nn').param_seed(0, name), 0)
         base_seen = base_seen + 1
         return t
      end
      if not w then error(string.format("export: %s has no parameter '%s' for the %s model", step_dir, name, index.model.name), 0) end
      return units[w.unit]:view(shape, nil, w.offset)
   end
   if opts.adapter then
      local r = M.write_adapter(model, saved, out, opts, lora_settings)
      for _, full in pairs(units) do full:free() end
      r.step = index.step
      return r
   end
   local lora = require 'fsdp.lora'
   local tensors = {}
   for _, spec in ipairs(model:parameter_specs()) do
      local src = saved(spec.name, spec.shape)
      if lora.is_adapter(spec.name) then src:free(); goto continue end
      if lora_settings and spec.key == 'weight' and spec.module.lora then -- --merge: W + scale B A
         local merged = src:clone()
         src:free()
         M.merge_into(merged, spec.name:sub(1, -8), spec.module, saved)
         src = merged
      end
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
      ::continue::
   end
   for _, full in pairs(units) do full:free() end
   if index.frozen and not opts.adapter then
      require('fsdp.hf').close(model)
      local got = string.format('%016x', base_print)
      if base_seen ~= index.frozen.tensors or got ~= index.frozen.fingerprint then
         for _, nt in ipairs(tensors) do nt[2]:free() end
         error(string.format('export: %s was trained over the frozen base %s (%d tensors, fingerprint %s), but that ' ..
                             'directory now holds other weights (%d tensors, fingerprint %s): nothing written',
                             step_dir, index.frozen.base, index.frozen.tensors, index.frozen.fingerprint, base_seen,
                             got), 0)
      end
   end

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

-- the option of recipes that only run a model forward (generate, eval)
M.unshard_option = {'unshard', 'auto', "gather the sharded weights once and keep them (FSDP2's unshard()): no "
                    .. "all-gather per token or batch; auto: when the whole model's weights take under a quarter of "
                    .. "this rank's share of host memory (of the GPU's on a GPU)", choices = {'auto', 'yes', 'no'}}

-- keeps a sharded model's weights gathered for a run of forward calls
-- (Sharded:unshard) when mode is 'yes', or 'auto' and they fit (see
-- unshard_option; dev: fsdp.device's table, nil for the host). Every rank
-- of the shard group takes the same decision (a rank that kept them while
-- another gathered per call would wait forever). Returns whether it did.
function M.unshard_for_inference(model, mode, dev)
   local s = model._sharded
   if mode == 'no' or not s or not s.shard_group then return false end
   local ok = true
   if mode == 'auto' then
      local budget
      if dev and dev.kind == 'cuda' then budget = tonumber(dev.info.total_mem)
      else
         local host = require('fsdp.plan').host_available()
         budget = host and host / require('fsdp.dist').local_world_size
      end
      ok = budget ~= nil and 4 * s:full_bytes() <= budget
      local votes = s.shard_group:gather_numbers(ok and 1 or 0)
      for _, v in ipairs(votes) do ok = ok and v == 1 end
   end
   if ok then s:unshard() end
   return ok
end

-- a trained model ready to run, sharded over the job's ranks, and its
-- tokenizer: from a Hugging Face directory (model_dir) or an fsdp-lua
-- checkpoint (checkpoint: its latest, or a step directory). tokenizer:
-- a tokenizer.json or its directory, 'bytes', or '' for the model's own.
-- device: -1 (default) for the host, N for cuda:N (fsdp.device loaded it).
-- opts.generation: also read generation_config.json (returned third);
-- opts.adapter: a PEFT LoRA adapter directory put on the model of model_dir.
-- opts.unshard ('auto', 'yes', 'no'; default 'no') and opts.dev (fsdp.device's
-- table): M.unshard_for_inference. A checkpoint of a LoRA run comes with
-- its adapters.
function M.load_trained(model_dir, checkpoint, tokenizer, strategy, device, opts)
   local fsdp = require 'fsdp'
   if (model_dir == '') == (checkpoint == '') then error('give --model DIR or --checkpoint DIR', 0) end
   local adapter = opts and opts.adapter or ''
   if adapter ~= '' and model_dir == '' then
      error('--adapter DIR needs --model DIR (the base model the adapter was trained on)', 0)
   end
   local model, tokenizer_dir
   if model_dir ~= '' then
      local hf = require 'fsdp.hf'
      model = hf.build(model_dir)
      if adapter ~= '' then hf.load_adapter(model, adapter) end
      hf.attach_weights(model, model_dir)
      tokenizer_dir = fs.exists(model_dir .. '/tokenizer.json') and model_dir or nil
      fsdp.shard(model, {strategy = strategy, device = device})
      hf.close(model)
   else
      local step = fs.exists(checkpoint .. '/index.json') and checkpoint or ckpt.latest(checkpoint)
      if not step then error(checkpoint .. ' is not a checkpoint (no latest, no index.json)', 0) end
      local index = ckpt.read_index(step)
      model = M.model_of(index, step)
      local settings = M.lora_of(step)
      if settings then M.apply_lora(model, settings, step) end
      tokenizer_dir = type(index.tokenizer_dir) == 'string' and index.tokenizer_dir or nil
      local base
      if index.frozen then -- an adapter checkpoint: the frozen weights come from its base
         base = M.frozen_base(index, settings, step, 'its weights are needed to run the model')
         require('fsdp.hf').attach_weights(model, base)
      end
      ckpt.load(step, fsdp.shard(model, {strategy = strategy, device = device}), nil, base)
      if base then require('fsdp.hf').close(model) end
   end
   M.unshard_for_inference(model, opts and opts.unshard or 'no', opts and opts.dev)
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
      error('usage: fsdp-lua export CKPT_DIR OUT_DIR [--dtype f32|bf16|f16] [--max-shard-size 5GB] [--config-layout auto|4|5] [--adapter | --merge]', 0)
   end
   require('fsdp.threads').setup(opt.threads)
   local dir, out = positional[1], positional[2]
   local step_dir = fs.exists(dir .. '/index.json') and dir or ckpt.latest(dir)
   if not step_dir then error('export: ' .. dir .. ' has no latest and no index.json: not a checkpoint', 0) end
   local r = M.export(step_dir, out, opt)
   if opt.adapter then
      print(string.format('exported the LoRA adapter of step %d of %s to %s: %d tensors, %.3f MB (PEFT format)', r.step,
                          step_dir, out, r.tensors, r.bytes / 1e6))
      return 0
   end
   print(string.format('exported step %d of %s to %s: %d tensors, %.1f MB in %d file(s), %d tokenizer file(s)',
                       r.step, step_dir, out, r.tensors, r.bytes / 1e6, r.shards, r.tokenizer_files))
   return 0
end

return M
