-- fsdp.hf: Hugging Face model directories (config.json + safetensors) in.
--
--   local hf = require 'fsdp.hf'
--   local model = hf.load('/models/Llama-2-7b-hf')   -- build + attach_weights
--   fsdp.shard(model, {strategy = 'full'})           -- or model:materialize()
--
-- Nothing is read at build time but config.json and the safetensors
-- headers. attach_weights gives every parameter a {'load', fn} initializer
-- that fills an element range [first, first + n) of the parameter straight
-- from the memory-mapped file, converting f32/bf16/f16 to f32, so under
-- fsdp.shard each rank touches only the bytes of its own slices and no
-- rank ever allocates a whole tensor it does not own.
--
-- Every problem is an error naming the directory or file and the tensor:
-- an unsupported architecture (the message lists the supported ones), a
-- missing weights file or shard, a missing tensor, a shape that disagrees
-- with config.json, a dtype other than F32/BF16/F16. A tokenizer is not
-- needed. PyTorch .bin checkpoints are not read (safetensors only).
local bind = require 'fsdp.ffi'
local json = require 'fsdp.json'
local fs = require 'fsdp.fs'
local st = require 'fsdp.safetensors'
local T = require 'fsdp.tensor'
local ffi, C = bind.ffi, bind.C

local M = {}

local function fail(fmt, ...) error('hf: ' .. string.format(fmt, ...), 0) end

local function shape_str(s) return T.shape_str(s) end

---------------------------------------------------------------------------
-- config

-- Keys every transformers config may carry that do not change the model's
-- math: bookkeeping, the heads of other tasks, and the generation settings
-- old configs kept in config.json (generation_config.json is read by
-- read_generation_config).
local COMMON_INERT = {
   'architectures', 'model_type', 'transformers_version', 'torch_dtype', 'dtype', '_name_or_path', '_commit_hash',
   '_attn_implementation', '_attn_implementation_autoset', 'use_cache', 'output_hidden_states', 'output_attentions',
   'return_dict', 'id2label', 'label2id', 'num_labels', 'problem_type', 'tokenizer_class', 'prefix',
   'task_specific_params', 'finetuning_task', 'torchscript', 'use_bfloat16', 'tf_legacy_loss',
   'chunk_size_feed_forward', 'is_decoder', 'cross_attention_hidden_size', 'tie_encoder_decoder', 'sep_token_id',
   'decoder_start_token_id', 'max_length', 'min_length', 'do_sample', 'early_stopping', 'num_beams',
   'num_beam_groups', 'diversity_penalty', 'temperature', 'top_k', 'top_p', 'typical_p', 'repetition_penalty',
   'length_penalty', 'no_repeat_ngram_size', 'encoder_no_repeat_ngram_size', 'bad_words_ids',
   'num_return_sequences', 'output_scores', 'return_dict_in_generate', 'forced_bos_token_id', 'forced_eos_token_id',
   'remove_invalid_values', 'exponential_decay_length_penalty', 'suppress_tokens', 'begin_suppress_tokens',
}

local function is_set(v) return v ~= nil and v ~= json.null end
local function empty(v) return not is_set(v) or (type(v) == 'table' and next(v) == nil) end

-- Keys of any config that change the model and are read only with the
-- value that does not: key -> {test(value) -> ok, what is supported}
local COMMON_FIXED = {
   is_encoder_decoder = {function(v) return not is_set(v) or v == false end, 'false (a decoder-only model)'},
   add_cross_attention = {function(v) return not is_set(v) or v == false end, 'false'},
   pruned_heads = {empty, 'none pruned'},
   quantization_config = {function(v) return not is_set(v) end, 'none: quantized weights are not read'},
   auto_map = {function(v) return not is_set(v) end, 'none: the model would run code of its own'},
}

local function set_of(list)
   local s = {}
   for _, k in ipairs(list or {}) do s[k] = true end
   return s
end
local common_inert = set_of(COMMON_INERT)

local function show(v)
   if type(v) == 'table' then return json.encode(v) end
   return tostring(v)
end

-- Every key of config table `cfg` (read from `path`) against what the
-- family declares (family.config_keys: used, inert, dropout) and the keys
-- of every config: a key that changes the model with a value fsdp-lua does
-- not support is an error naming it and the file. Returns the keys nothing
-- knows (sorted) and the dropout rates that are not 0 ("key value").
function M.check_keys(cfg, family, path)
   local keys = family.config_keys or {}
   local used, inert, dropout = set_of(keys.used), set_of(keys.inert), set_of(keys.dropout)
   local unknown, rates = {}, {}
   local names = {}
   for k in pairs(cfg) do names[#names + 1] = k end
   table.sort(names)
   for _, k in ipairs(names) do
      local v = cfg[k]
      local fixed = COMMON_FIXED[k]
      if used[k] then -- the family reads and checks it
      elseif fixed then
         if not fixed[1](v) then
            fail("%s: '%s' = %s changes the model and is not supported (supported: %s)", path, k, show(v), fixed[2])
         end
      elseif dropout[k] then
         if is_set(v) and v ~= 0 then rates[#rates + 1] = k .. ' ' .. show(v) end
      elseif not (inert[k] or common_inert[k]) then
         unknown[#unknown + 1] = k
      end
   end
   return unknown, rates
end

-- {arch = 'LlamaForCausalLM', family = <the registry's family>, config =
-- <config.json as a table; JSON nulls are fsdp.json.null>, dir = dir}
function M.load_config(dir)
   local path = dir .. '/config.json'
   if not fs.exists(path) then fail('%s: no config.json (is this a Hugging Face model directory?)', dir) end
   local cfg, err = json.read_file(path)
   if not cfg then fail('%s', tostring(err):find(path, 1, true) and err or (path .. ': ' .. tostring(err))) end
   if type(cfg) ~= 'table' then fail('%s: not a JSON object', path) end
   local ok, family, arch = pcall(require('models').for_hf, cfg, path)
   if not ok then fail('%s', tostring(family)) end
   return {arch = arch, family = family, config = cfg, dir = dir, path = path}
end

-- which transformers layout a config.json is in: '5' (rope_parameters,
-- dtype) or '4' (rope_theta / rope_scaling, torch_dtype)
function M.config_layout(cfg)
   if is_set(cfg.rope_parameters) then return '5' end
   if is_set(cfg.rope_theta) or is_set(cfg.rope_scaling) then return '4' end
   if cfg.dtype ~= nil and cfg.torch_dtype == nil then return '5' end
   if cfg.torch_dtype ~= nil then return '4' end
   local v = cfg.transformers_version
   if type(v) == 'string' and tonumber(v:match('^(%d+)%.')) and tonumber(v:match('^(%d+)%.')) < 5 then return '4' end
   return '5'
end

-- The model of a directory, built from its config.json, not materialized.
-- Keys nothing reads are reported on rank 0 in one warning line; dropout
-- rates, which fine-tuning here does not apply, in one line (both on
-- stderr).
function M.build(dir)
   local c = M.load_config(dir)
   local unknown, rates = M.check_keys(c.config, c.family, c.path)
   local ok, model = pcall(c.family.from_hf, c.config)
   if not ok then fail('%s: %s', c.path, tostring(model)) end
   if c.family.unknown_keys then
      for _, k in ipairs(c.family.unknown_keys(model) or {}) do unknown[#unknown + 1] = k end
   end
   model.hf = {arch = c.arch, dir = dir, config = c.config, unknown = unknown, layout = M.config_layout(c.config)}
   local log = require 'fsdp.log'
   if #unknown > 0 and log.rank == 0 and not log.quiet then
      log.warn('%s: keys fsdp-lua does not know were ignored (they must not change the model): %s', c.path,
               table.concat(unknown, ', '))
   end
   if #rates > 0 and log.rank == 0 and not log.quiet then -- on stderr: generate.lua's stdout is its text
      io.stderr:write(string.format('[%s] %s: fine-tuning here applies no dropout (%s)\n', log.stamp(), c.path,
                                    table.concat(rates, ', ')))
   end
   return model
end

---------------------------------------------------------------------------
-- generation_config.json

-- generation_config.json keys: token ids (read), sampling settings
-- (recipes/generate.lua's options decide them), inert ones, and settings
-- that change what is generated, which are read only with the value that
-- changes nothing (key -> that value; nil: absent or null)
local GEN_IDS = {bos_token_id = true, eos_token_id = true, pad_token_id = true}
local GEN_SAMPLING = {do_sample = true, temperature = true, top_k = true, top_p = true}
local GEN_INERT = {transformers_version = true, _from_model_config = true, use_cache = true, max_length = true,
                   max_new_tokens = true, cache_implementation = true, output_attentions = true,
                   output_hidden_states = true, output_scores = true, output_logits = true,
                   return_dict_in_generate = true, num_return_sequences = true, decoder_start_token_id = true,
                   length_penalty = true, early_stopping = true}
local GEN_FIXED = {num_beams = 1, num_beam_groups = 1, repetition_penalty = 1, no_repeat_ngram_size = 0,
                   encoder_no_repeat_ngram_size = 0, diversity_penalty = 0, typical_p = 1, epsilon_cutoff = 0,
                   eta_cutoff = 0, min_new_tokens = 0, min_length = 0, penalty_alpha = false, min_p = false,
                   bad_words_ids = false, force_words_ids = false, suppress_tokens = false,
                   begin_suppress_tokens = false, forced_bos_token_id = false, forced_eos_token_id = false,
                   sequence_bias = false, guidance_scale = false, exponential_decay_length_penalty = false,
                   renormalize_logits = false, constraints = false, watermarking_config = false,
                   assistant_model = false, prompt_lookup_num_tokens = false}

-- Reads DIR/generation_config.json (nil when there is none): {eos_ids =
-- {...}, bos_id, pad_id, sampling = {key -> value}, unknown = {...}}. A
-- setting that changes what transformers' generate() gives and that
-- recipes/generate.lua does not implement (beams, repetition penalties,
-- forced or suppressed tokens, ...) is an error naming it and the file.
function M.read_generation_config(dir)
   local path = dir .. '/generation_config.json'
   if not fs.exists(path) then return nil end
   local cfg, err = json.read_file(path)
   if not cfg then fail('%s', tostring(err)) end
   if type(cfg) ~= 'table' then fail('%s: not a JSON object', path) end
   local out = {eos_ids = {}, sampling = {}, unknown = {}, path = path}
   local names = {}
   for k in pairs(cfg) do names[#names + 1] = k end
   table.sort(names)
   for _, k in ipairs(names) do
      local v = cfg[k]
      if GEN_IDS[k] then
         local list = type(v) == 'table' and v or {v}
         for _, id in ipairs(list) do
            if is_set(id) and (type(id) ~= 'number' or id < 0 or id ~= math.floor(id)) then
               fail('%s: %s must be token ids, got %s', path, k, show(v))
            end
         end
         if k == 'eos_token_id' then
            for _, id in ipairs(list) do if is_set(id) then out.eos_ids[#out.eos_ids + 1] = id end end
         elseif is_set(v) then
            out[k == 'bos_token_id' and 'bos_id' or 'pad_id'] = list[1]
         end
      elseif GEN_SAMPLING[k] then
         if is_set(v) then out.sampling[k] = v end
      elseif GEN_FIXED[k] ~= nil then
         local neutral = GEN_FIXED[k]
         local ok = not is_set(v) or (neutral ~= false and v == neutral) or (type(v) == 'table' and next(v) == nil)
         if not ok then
            fail("%s: '%s' = %s changes what is generated and recipes/generate.lua does not implement it%s", path, k,
                 show(v), neutral ~= false and (' (supported: ' .. tostring(neutral) .. ')') or '')
         end
      elseif not GEN_INERT[k] then
         out.unknown[#out.unknown + 1] = k
      end
   end
   local log = require 'fsdp.log'
   if #out.unknown > 0 and log.rank == 0 and not log.quiet then
      log.warn('%s: keys fsdp-lua does not know were ignored: %s', path, table.concat(out.unknown, ', '))
   end
   return out
end

---------------------------------------------------------------------------
-- weights

local SUPPORTED_DTYPES = {f32 = true, bf16 = true, f16 = true}

-- where a model's tensors are: a single model.safetensors or the shards an
-- index names. Files open (mmap + header check) on first use and stay open.
local Source = {}
Source.__index = Source

local function open_source(dir)
   local self = setmetatable({dir = dir, files = {}}, Source)
   local index_path = dir .. '/model.safetensors.index.json'
   local single = dir .. '/model.safetensors'
   if fs.exists(index_path) then
      local idx, err = json.read_file(index_path)
      if not idx then fail('%s', tostring(err):find(index_path, 1, true) and err or (index_path .. ': ' .. tostring(err))) end
      if type(idx) ~= 'table' or type(idx.weight_map) ~= 'table' then
         fail('%s: no "weight_map" object', index_path)
      end
      self.index_path, self.weight_map = index_path, idx.weight_map
   elseif fs.exists(single) then
      self.single = 'model.safetensors'
   else
      local other = fs.exists(dir .. '/pytorch_model.bin') and ' (pytorch_model.bin is not read: convert it to safetensors)' or ''
      fail('%s: no model.safetensors or model.safetensors.index.json%s', dir, other)
   end
   return self
end

-- the opened file that holds `name` (nil when no file lists it)
function Source:file_of(name)
   local fname = self.single
   if self.weight_map then
      fname = self.weight_map[name]
      if fname == nil then return nil end
      if type(fname) ~= 'string' or fname:find('/', 1, true) or fname == '..' then
         fail("%s: weight_map entry for '%s' is not a file name", self.index_path, name)
      end
   end
   local f = self.files[fname]
   if not f then
      local path = self.dir .. '/' .. fname
      if not fs.exists(path) then
         fail("%s: shard file %s (holding tensor '%s') is missing", self.index_path or self.dir, path, name)
      end
      local ok, opened = pcall(st.open, path)
      if not ok then fail('%s', tostring(opened)) end
      f = opened
      self.files[fname] = f
   end
   if not f:has(name) then
      if self.weight_map then
         fail("%s: the index puts tensor '%s' in %s, but that file has no such tensor", self.index_path, name, f.path)
      end
      return nil
   end
   return f
end

function Source:where()
   return self.index_path or (self.dir .. '/' .. self.single)
end

function Source:close()
   for k, f in pairs(self.files) do f:close(); self.files[k] = nil end
end

local elem_size = {f32 = 4, bf16 = 2, f16 = 2}

-- the 'load' function of one tensor: fills out[0 .. n) with elements
-- first .. first+n of our (row-major) layout, reading only those bytes
local function loader(file, name, d, transposed, our_shape)
   local code = T.DTYPES[d.dtype]
   local es = elem_size[d.dtype]
   -- the mapped bytes, looked up per call so a closed file is an error
   local function bytes()
      if not file.f then
         fail("%s: the file was closed (hf.close) before tensor '%s' was loaded", file.path, name)
      end
      return ffi.cast('const uint8_t *', (file:data(name)))
   end
   if not transposed then
      return function(_, out, n, first)
         if n <= 0 then return end
         bind.check(C.fsdp_cast_cpu(out, 0, bytes() + first * es, code, n), file.path .. ': ' .. name)
      end
   end
   -- stored [in, out] (GPT-2's Conv1D); we want [out, in]. For each stored
   -- row, convert just the columns our range needs, then scatter them.
   local rows_out, cols_in = our_shape[1], our_shape[2]
   return function(_, out, n, first)
      if n <= 0 then return end
      local base = bytes()
      local o_lo, o_hi = math.floor(first / cols_in), math.floor((first + n - 1) / cols_in)
      local width = o_hi - o_lo + 1
      local tmp = ffi.new('float[?]', width)
      local last = first + n
      for i = 0, cols_in - 1 do
         bind.check(C.fsdp_cast_cpu(tmp, 0, base + (i * rows_out + o_lo) * es, code, width), file.path .. ': ' .. name)
         for o = o_lo, o_hi do
            local e = o * cols_in + i
            if e >= first and e < last then out[e - first] = tmp[o - o_lo] end
         end
      end
   end
end

local function same_shape(a, b)
   if #a ~= #b then return false end
   for i = 1, #a do if a[i] ~= b[i] then return false end end
   return true
end

-- Sets every parameter's initializer to read its values from the model
-- directory's safetensors. Checks now (headers only) that every tensor is
-- there with the shape config.json implies and a float dtype. Returns model.
function M.attach_weights(model, dir)
   dir = dir or (model.hf and model.hf.dir)
   if not dir then fail('attach_weights: no directory given') end
   local src = open_source(dir)
   local config_path = dir .. '/config.json'
   local lora = model.lora and require('fsdp.lora')
   for _, spec in ipairs(model:parameter_specs()) do
      -- adapters (fsdp.lora before the weights) keep their own initializers
      if lora and lora.is_adapter(spec.name) then goto continue end
      local names, transposed = {spec.name}, false
      if model.hf_names then names, transposed = model:hf_names(spec.name) end
      local file, name
      for _, cand in ipairs(names) do
         file = src:file_of(cand)
         if file then name = cand; break end
      end
      if not file then
         fail("%s: tensor '%s' is missing (the %s model of %s needs it)", src:where(), spec.name,
              model.__name or 'model', config_path)
      end
      local d = file:describe(name)
      if not d.dtype or not SUPPORTED_DTYPES[d.dtype] then
         fail("%s: tensor '%s' has dtype %s; F32, BF16 or F16 are read", file.path, name, d.dtype_string)
      end
      local want = spec.shape
      if transposed then want = {spec.shape[2], spec.shape[1]} end
      if not same_shape(d.shape, want) then
         fail("%s: tensor '%s' has shape %s but %s makes it %s", file.path, name, shape_str(d.shape),
              config_path, shape_str(want))
      end
      local fn = loader(file, name, d, transposed, spec.shape)
      -- the initializer lives in the module's own parameter list
      for _, p in ipairs(spec.module._params) do
         if p.name == spec.key then p.init = {'load', fn} end
      end
      ::continue::
   end
   model.hf_source = src
   return model
end

-- build + attach_weights: a model ready for fsdp.shard or :materialize()
function M.load(dir)
   return M.attach_weights(M.build(dir), dir)
end


---------------------------------------------------------------------------
-- PEFT LoRA adapters

-- Puts the LoRA adapter PEFT saved in DIR (adapter_config.json +
-- adapter_model.safetensors) on a model built here (hf.load, not yet
-- materialized or sharded): fsdp.lora with the file's settings, then the
-- adapter parameters' initializers read the saved tensors (PEFT's names:
-- base_model.model.<layer>.lora_A.weight, through the family's hf_names).
-- Every saved tensor must find its parameter and every parameter its
-- tensor, with PEFT's shapes (A [r, in], B [out, r]). Returns model.
function M.load_adapter(model, dir)
   local lora = require 'fsdp.lora'
   if type(dir) ~= 'string' or dir == '' then fail('load_adapter: an adapter directory is needed') end
   if not fs.exists(dir .. '/adapter_config.json') then
      fail('%s: no adapter_config.json (a PEFT adapter directory has adapter_config.json and adapter_model.safetensors)', dir)
   end
   local opts = lora.read_config(dir)
   local wpath = dir .. '/adapter_model.safetensors'
   if not fs.exists(wpath) then
      local other = fs.exists(dir .. '/adapter_model.bin') and ' (adapter_model.bin is not read: save with safetensors)' or ''
      fail('%s: no adapter_model.safetensors%s', dir, other)
   end
   local ok, err = pcall(lora.apply, model, opts)
   if not ok then fail('%s: %s', opts.path, tostring(err)) end
   local ok2, file = pcall(st.open, wpath)
   if not ok2 then fail('%s', tostring(file)) end
   local used = {}
   for _, spec in ipairs(model:parameter_specs()) do
      if lora.is_adapter(spec.name) then
         local name
         for _, cand in ipairs(lora.peft_names(model, spec.name)) do
            if file:has(cand) then name = cand; break end
         end
         if not name then
            file:close()
            fail("%s: tensor '%s' is missing (the adapter of %s, target_modules of %s)", wpath,
                 lora.peft_names(model, spec.name)[1], spec.name, opts.path)
         end
         local d = file:describe(name)
         if not d.dtype or not SUPPORTED_DTYPES[d.dtype] then
            file:close()
            fail("%s: tensor '%s' has dtype %s; F32, BF16 or F16 are read", wpath, name, d.dtype_string)
         end
         if not same_shape(d.shape, spec.shape) then
            file:close()
            fail("%s: tensor '%s' has shape %s but r = %d and the layer make it %s", wpath, name, shape_str(d.shape),
                 opts.r, shape_str(spec.shape))
         end
         used[name] = true
         local fn = loader(file, name, d, false, spec.shape)
         for _, p in ipairs(spec.module._params) do
            if p.name == spec.key then p.init = {'load', fn} end
         end
      end
   end
   for _, n in ipairs(file:names()) do
      if not used[n] then
         file:close()
         fail("%s: tensor '%s' belongs to no adapter of this model (target_modules %s of %s)", wpath, n,
              type(opts.targets) == 'table' and table.concat(opts.targets, ',') or tostring(opts.targets), opts.path)
      end
   end
   model.lora.adapter_file = file
   model.lora.adapter_dir = dir
   return model
end

-- closes the model's weight files (after materializing, to unmap them)
function M.close(model)
   if model.hf_source then model.hf_source:close() end
   if model.lora and model.lora.adapter_file then model.lora.adapter_file:close(); model.lora.adapter_file = nil end
end

return M
