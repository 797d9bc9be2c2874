-- models: the registry of model families. Each file of lua/models/ that
-- declares `M.family` is one family; the library (fsdp.hf, fsdp.export,
-- checkpoints) finds families here and never names one. Adding a family is
-- adding one file here (plus its fixtures and tests).
--
-- A family declares:
--   name           its name in checkpoints when it is not a Hugging Face
--                  architecture ('mingpt'); HF families use their
--                  architecture name
--   architectures  config.json "architectures" it reads (LlamaForCausalLM)
--   model_types    config.json "model_type" values, when "architectures" is absent
--   from_hf(cfg)   a model (built, not materialized) from a config.json table
--   to_hf_config(model [, layout])   the config.json table of an export of
--                  `model`, in transformers' '4' or '5' layout (nil: the
--                  layout the model came in)
--   lora_targets   optional: the layers fsdp.lora wraps by default ({'q_proj', 'v_proj'})
--   config_keys    optional: {used, inert, dropout} lists of config.json
--                  keys (fsdp.hf reports every other key, see hf.check_keys)
--   unknown_keys(model)   optional: keys inside config values nothing read
--   saved(model)   optional: name, config a checkpoint stores (default: the
--                  architecture and to_hf_config(model))
--   from_saved(name, cfg) optional: the inverse of saved (default: from_hf)
-- and its model class answers model:hf_names(name) -> {checkpoint names},
-- transposed, when its parameter names differ from the checkpoint's.
--
--   local models = require 'models'
--   local family, arch = models.for_hf(config_table, 'dir/config.json')
--   local desc = models.describe(model)       -- {name, config} for an index
--   local model = models.build(desc)          -- the same model again
local M = {}

local families, by_name, by_arch, by_type = {}, {}, {}, {}
local loaded = false

local function register(f, file)
   if type(f) ~= 'table' or type(f.from_hf) ~= 'function' or type(f.to_hf_config) ~= 'function' then
      error(string.format('models: %s declares a family without from_hf and to_hf_config', file), 0)
   end
   families[#families + 1] = f
   f.module = file
   if f.name then by_name[f.name] = f end
   for _, a in ipairs(f.architectures or {}) do
      if by_arch[a] then
         error(string.format('models: architecture %s is claimed by both %s and %s', a, by_arch[a].module, file), 0)
      end
      by_arch[a] = f
   end
   for _, t in ipairs(f.model_types or {}) do by_type[t] = f.architectures[1] end
end

-- requires every module of lua/models/ once; those with a family register it
local function load_all()
   if loaded then return end
   loaded = true
   local root = FSDP_ROOT or require('fsdp.ffi').root
   local names = {}
   local p = io.popen('ls "' .. root .. '/lua/models" 2>/dev/null')
   if p then
      for line in p:lines() do
         local n = line:match('^([%w_]+)%.lua$')
         if n and n ~= 'init' then names[#names + 1] = n end
      end
      p:close()
   end
   table.sort(names)
   for _, n in ipairs(names) do
      local mod = require('models.' .. n)
      if type(mod) == 'table' and mod.family then register(mod.family, 'models.' .. n) end
   end
end

-- every family, in file order
function M.families()
   load_all()
   return families
end

-- the supported architectures, sorted, as text
function M.supported()
   load_all()
   local names = {}
   for a in pairs(by_arch) do names[#names + 1] = a end
   table.sort(names)
   return table.concat(names, ', ')
end

-- the family of a config.json table and the architecture it names; `where`
-- (the file) is named in errors
function M.for_hf(cfg, where)
   load_all()
   where = where or 'config.json'
   local arch
   local archs = cfg.architectures
   if type(archs) == 'table' and type(archs[1]) == 'string' then
      arch = archs[1]
   elseif type(cfg.model_type) == 'string' then
      arch = by_type[cfg.model_type]
      if not arch then
         error(string.format("%s: model_type '%s' is not supported (supported architectures: %s)", where,
                             cfg.model_type, M.supported()), 0)
      end
   else
      error(string.format('%s: neither "architectures" nor "model_type" says what model this is (supported: %s)',
                          where, M.supported()), 0)
   end
   local f = by_arch[arch]
   if not f then error(string.format("%s: architecture '%s' is not supported (supported: %s)", where, arch,
                                     M.supported()), 0) end
   return f, arch
end

-- the family registered under a checkpoint name (an architecture or a family name)
function M.get(name)
   load_all()
   return by_arch[name] or by_name[name]
end

-- the family a model was built by (its class carries it)
function M.family_of(model)
   local f = model.family
   if not f then error(string.format('models: %s belongs to no registered family', tostring(model.__name)), 0) end
   return f
end

-- what a checkpoint index stores of a model: {name = ..., config = ...}
function M.describe(model)
   local f = M.family_of(model)
   if f.saved then
      local name, config = f.saved(model)
      return {name = name, config = config}
   end
   return {name = f.architectures[1], config = f.to_hf_config(model)}
end

-- the model a description names (not materialized); `where` is named in errors
function M.build(desc, where)
   where = where or 'checkpoint'
   if type(desc) ~= 'table' or type(desc.name) ~= 'string' or type(desc.config) ~= 'table' then
      error(where .. ': does not say which model it holds (model.name / model.config)', 0)
   end
   local f = M.get(desc.name)
   if not f then
      error(string.format("%s: holds a '%s' model, which no family in lua/models reads (supported: %s)", where,
                          desc.name, M.supported()), 0)
   end
   if f.from_saved then return f.from_saved(desc.name, desc.config) end
   -- a copy that keeps the JSON float marks (an export writes them back)
   return f.from_hf(require('fsdp.json').copy(desc.config))
end

return M
