-- fsdp.cli: recipe options. A recipe declares its options with defaults and
-- help; the command line overrides them (--batch-size 8 sets batch_size).
--
--   local opt = fsdp.options('train_mingpt', {
--      {'data', '', 'text or token file to train on'},
--      {'max_steps', 1000, 'optimizer steps', type = 'integer', min = 1},
--   }, arg)
--
-- A spec is {name, default, help} plus optional fields, all checked before
-- the recipe goes on (so before any model is built):
--   type       'integer', 'number', 'string', 'boolean', 'enum', 'path' or
--              'size' (80GiB, 512MiB, 40GB -> bytes); by default the
--              default's Lua type ('enum' when choices are given). Numbers
--              are always finite: nan and inf are refused.
--   min, max   inclusive bounds; above, below: exclusive ones
--   choices    the values of an enum; `values = {bfloat16 = 'bf16'}` maps
--              other spellings onto them (matching ignores case)
--   exists     a path must exist when given ('file', 'dir' or true)
--   check      function(value, opt) -> nil, or the reason it is refused
--   aliases    other names of the same option: 'max_lr', or {'bf16', 'bf16'}
--              for a switch that sets the option to a value (--bf16 is
--              --param-dtype bf16). Two spellings given different values
--              are an error, not a silent pick.
--   conflicts  options that cannot be given with this one: 'size' or
--              {'size', 'why'}
-- The spec list may carry `checks = {function(opt, given) ... end}` for
-- rules across options (return nil or the reason). An unknown option is an
-- error naming the closest one, knowing the spellings PyTorch scripts and
-- the Hugging Face Trainer use (--learning-rate, --grad-clip, --warmup-ratio).
local M = {}

-- Levenshtein distance, for "did you mean"
local function distance(a, b)
   local prev = {}
   for j = 0, #b do prev[j] = j end
   for i = 1, #a do
      local cur = {[0] = i}
      for j = 1, #b do
         local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
         cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      end
      prev = cur
   end
   return prev[#b]
end
M.distance = distance

local function flag(name) return '--' .. name:gsub('_', '-') end
M.flag = flag

-- how far apart two option names are: the edit distance, or fewer when
-- their words match (sequence_len ~ seq_len: seq is a prefix of sequence)
local function words(s)
   local out = {}
   for w in s:gmatch('[^_]+') do out[#out + 1] = w end
   return out
end
local function word_match(a, b)
   if a == b then return true end
   local n = math.min(#a, #b)
   return n >= 2 and a:sub(1, n) == b:sub(1, n)
end
local function name_distance(a, b)
   local d = distance(a, b)
   local wa, wb = words(a), words(b)
   local missing_a, used = 0, {}
   for _, x in ipairs(wa) do
      local hit = false
      for j, y in ipairs(wb) do
         if not used[j] and word_match(x, y) then used[j], hit = true, true; break end
      end
      if not hit then missing_a = missing_a + 1 end
   end
   local missing_b = 0
   for j = 1, #wb do if not used[j] then missing_b = missing_b + 1 end end
   return math.min(d, 2 * missing_a + missing_b)
end

function M.closest(name, candidates)
   local best, best_d
   for _, c in ipairs(candidates) do
      local d = name_distance(name, c)
      if not best_d or d < best_d then best, best_d = c, d end
   end
   return best, best_d
end

---------------------------------------------------------------------------
-- spellings from other tools, for suggestions: names in one group mean the
-- same thing (a suggestion names whichever the recipe has), and HINTS say
-- how a spelling whose meaning differs maps onto an option here

local SYNONYMS = {
   {'lr', 'learning_rate', 'max_lr', 'peak_lr', 'base_lr'},
   {'min_lr', 'final_lr', 'lr_min', 'end_lr'},
   {'max_grad_norm', 'grad_clip', 'clip_grad_norm', 'gradient_clipping', 'clip_grad', 'max_norm', 'grad_norm_clip'},
   {'warmup_steps', 'warmup', 'warmup_iters', 'num_warmup_steps', 'lr_warmup_steps'},
   {'checkpoint_dir', 'save_dir', 'ckpt_dir', 'checkpoint_path', 'save_path'},
   {'checkpoint_every', 'save_steps', 'save_every', 'checkpoint_interval', 'ckpt_freq', 'save_interval',
    'checkpoint_freq', 'save_freq'},
   {'keep_last', 'save_total_limit', 'keep_latest_k', 'keep_last_n'},
   {'batch_size', 'train_batch_size', 'global_batch_size', 'total_batch_size'},
   {'grad_accum_steps', 'gradient_accumulation_steps', 'accum_steps', 'grad_accum', 'gradient_accumulation',
    'accumulate_grad_batches'},
   {'log_every', 'logging_steps', 'log_interval', 'log_freq', 'log_steps'},
   {'eval_every', 'eval_steps', 'eval_interval', 'val_every', 'validation_freq', 'eval_freq', 'val_check_interval'},
   {'eval_batches', 'eval_iters', 'val_steps', 'eval_batch_count'},
   {'seq_len', 'block_size', 'max_seq_length', 'seq_length', 'sequence_length', 'context_length', 'max_seq_len',
    'ctx_len', 'max_length'},
   {'max_steps', 'max_iters', 'num_steps', 'train_steps', 'total_steps', 'max_train_steps'},
   {'param_dtype', 'bf16', 'fp16', 'mixed_precision', 'half'},
   {'activation_checkpointing', 'gradient_checkpointing', 'activation_checkpoints', 'grad_checkpointing',
    'checkpoint_activations'},
   {'model', 'model_name_or_path', 'hf_model', 'model_path', 'model_name', 'model_dir', 'pretrained_model_name_or_path'},
   {'data', 'dataset', 'train_file', 'data_path', 'dataset_path', 'train_data', 'data_dir', 'dataset_name'},
   {'weight_decay', 'wd'},
   {'beta1', 'adam_beta1'},
   {'beta2', 'adam_beta2'},
   {'seed', 'random_seed'},
   {'decay', 'lr_scheduler_type', 'lr_schedule', 'scheduler', 'lr_scheduler', 'lr_decay_style'},
   {'run_dir', 'logging_dir', 'log_dir', 'tensorboard_dir', 'tb_dir'},
   {'threads', 'num_threads', 'omp_num_threads', 'nthreads'},
   {'size', 'model_size'},
   {'max_new_tokens', 'num_tokens', 'max_tokens', 'n_tokens', 'gen_length', 'num_new_tokens'},
   {'cpu_offload', 'offload', 'offload_params', 'offload_optimizer'},
   {'strategy', 'sharding_strategy', 'sharding', 'zero_stage'},
   {'export_dir', 'final_dir', 'hf_export_dir'},
   {'vocab_size', 'n_vocab'},
   {'n_layer', 'num_layers', 'n_layers', 'num_hidden_layers', 'layers'},
   {'n_head', 'num_heads', 'n_heads', 'num_attention_heads', 'heads'},
   {'n_embd', 'hidden_size', 'embed_size', 'd_model', 'hidden_width', 'n_embed', 'embed_dim', 'dim'},
   {'world_size', 'num_ranks', 'n_ranks', 'nproc', 'num_gpus', 'gpus', 'ngpus'},
   {'memory_per_rank', 'memory', 'gpu_memory', 'mem_per_rank', 'memory_limit'},
   {'temperature', 'temp'},
   {'top_k', 'topk'},
   {'top_p', 'topp', 'nucleus'},
}
local synonym_group = {}
for _, g in ipairs(SYNONYMS) do for _, n in ipairs(g) do synonym_group[n] = g end end

local EPOCHS = 'there are no epochs: count optimizer steps with --max-steps (steps x --batch-size x --seq-len tokens)'
local HINTS = {
   warmup_ratio = {'warmup_steps', 'it counts steps, not a share: a ratio r of --max-steps N is --warmup-steps r*N'},
   warmup_fraction = {'warmup_steps', 'it counts steps, not a share: a ratio r of --max-steps N is --warmup-steps r*N'},
   resume = {'checkpoint_dir', 'resuming needs no flag: run the same command again with the same --checkpoint-dir ' ..
             'and it continues from DIR/latest'},
   resume_from_checkpoint = {'checkpoint_dir', 'resuming needs no flag: run the same command again with the same ' ..
                             '--checkpoint-dir and it continues from DIR/latest'},
   output_dir = {'checkpoint_dir', 'checkpoints go to --checkpoint-dir; --export-dir writes the final model as a ' ..
                 'Hugging Face directory'},
   out_dir = {'checkpoint_dir', 'checkpoints go to --checkpoint-dir; --export-dir writes the final model as a ' ..
              'Hugging Face directory'},
   per_device_train_batch_size = {'batch_size', '--batch-size is the global batch over all ranks: the per-device ' ..
                                  'batch times the number of ranks'},
   per_device_eval_batch_size = {'batch_size', '--batch-size is the global batch over all ranks: the per-device ' ..
                                 'batch times the number of ranks'},
   micro_batch_size = {'batch_size', '--batch-size is the global batch over all ranks: the per-device batch times ' ..
                       'the number of ranks'},
   train_micro_batch_size_per_gpu = {'batch_size', '--batch-size is the global batch over all ranks: the ' ..
                                     'per-device batch times the number of ranks'},
   num_train_epochs = {'max_steps', EPOCHS}, epochs = {'max_steps', EPOCHS}, num_epochs = {'max_steps', EPOCHS},
   max_epochs = {'max_steps', EPOCHS},
   precision = {'param_dtype', 'the dtype parameters are gathered and multiplied in: --param-dtype bf16'},
   dtype = {'param_dtype', 'the dtype parameters are gathered and multiplied in: --param-dtype bf16'},
   fsdp = {'strategy', 'every run is sharded; --strategy picks full (FULL_SHARD), grad_op, none, hybrid_full, ' ..
           'hybrid_grad_op'},
}

---------------------------------------------------------------------------
-- sizes

local SIZE_UNITS = {[''] = 1, b = 1, k = 1024, kb = 1e3, kib = 1024, m = 2 ^ 20, mb = 1e6, mib = 2 ^ 20,
                    g = 2 ^ 30, gb = 1e9, gib = 2 ^ 30, t = 2 ^ 40, tb = 1e12, tib = 2 ^ 40}

-- '80GiB', '512MiB', '40GB', '1T', '1.5g' or a number -> bytes; nil, why
function M.parse_size(s)
   if type(s) == 'number' then
      if s ~= s or s < 0 or s == math.huge then return nil, 'not a size' end
      return s
   end
   local n, unit = tostring(s):match('^%s*([%d%.]+)%s*(%a*)%s*$')
   local v = n and tonumber(n)
   local mult = unit and SIZE_UNITS[unit:lower()]
   if not v or not mult then return nil, 'not a size (examples: 80GiB, 512MiB, 40GB, 1T)' end
   return v * mult
end

---------------------------------------------------------------------------
-- checking one value

local function kind_of(spec)
   if spec.type then return spec.type end
   if spec.choices then return 'enum' end
   local t = type(spec[2])
   if t == 'number' or t == 'boolean' then return t end
   return 'string'
end
M.kind_of = kind_of

local function fmt_num(x)
   if x == math.floor(x) and math.abs(x) < 1e15 then return string.format('%d', x) end
   return string.format('%.10g', x)
end

-- what a spec accepts, as text: "an integer >= 1", "a number in [0, 1)"
function M.accepts(spec)
   local kind = kind_of(spec)
   if kind == 'boolean' then return 'true or false' end
   if kind == 'enum' then
      return 'one of ' .. table.concat(spec.choices, ', ') .. (spec[2] == '' and " (or '' for none)" or '')
   end
   if kind == 'size' then return 'a size such as 80GiB, 512MiB or 40GB' end
   if kind == 'path' then return 'a path' .. (spec.exists and ' that exists' or '') end
   if kind ~= 'integer' and kind ~= 'number' then return 'text' end
   local what = kind == 'integer' and 'an integer' or 'a finite number'
   local lo = spec.min ~= nil and {'[', spec.min} or (spec.above ~= nil and {'(', spec.above}) or nil
   local hi = spec.max ~= nil and {']', spec.max} or (spec.below ~= nil and {')', spec.below}) or nil
   if lo and hi then return string.format('%s in %s%s, %s%s', what, lo[1], fmt_num(lo[2]), fmt_num(hi[2]), hi[1]) end
   if lo then return string.format('%s %s %s', what, lo[1] == '[' and '>=' or '>', fmt_num(lo[2])) end
   if hi then return string.format('%s %s %s', what, hi[1] == ']' and '<=' or '<', fmt_num(hi[2])) end
   return what
end

local function exists(path)
   local f = io.open(path, 'r')
   if f then f:close() return true end
   return false
end
local function is_dir(path) return exists(path .. '/.') end

-- the value of text for spec; raises "option --x wants ..., got 'text'"
local function convert(recipe, spec, text, spelled)
   local name = spelled or flag(spec[1])
   local kind = kind_of(spec)
   local function refuse(got)
      error(string.format("%s: option %s wants %s, got %s", recipe, name, M.accepts(spec), got), 0)
   end
   if kind == 'number' or kind == 'integer' then
      local v = tonumber(text)
      if not v then
         error(string.format("%s: option %s wants a number (%s), got '%s'", recipe, name, M.accepts(spec), text), 0)
      end
      if v ~= v or v == math.huge or v == -math.huge then refuse(text) end
      if kind == 'integer' and v ~= math.floor(v) then refuse(text) end
      if (spec.min ~= nil and v < spec.min) or (spec.max ~= nil and v > spec.max)
         or (spec.above ~= nil and v <= spec.above) or (spec.below ~= nil and v >= spec.below) then
         refuse(text)
      end
      return v
   elseif kind == 'boolean' then
      local l = text:lower()
      if l == 'true' or l == '1' or l == 'yes' or l == 'on' then return true end
      if l == 'false' or l == '0' or l == 'no' or l == 'off' then return false end
      error(string.format("%s: option %s wants true or false, got '%s'", recipe, name, text), 0)
   elseif kind == 'enum' then
      if text == '' and spec[2] == '' then return '' end
      for _, c in ipairs(spec.choices) do if c == text then return c end end
      local l = text:lower()
      for _, c in ipairs(spec.choices) do if c:lower() == l then return c end end
      for k, v in pairs(spec.values or {}) do if k:lower() == l then return v end end
      error(string.format("%s: option %s must be one of %s, got '%s'", recipe, name,
                          table.concat(spec.choices, ', '), text), 0)
   elseif kind == 'size' then
      if text == '' and spec[2] == '' then return '' end
      local v = M.parse_size(text)
      if not v then refuse("'" .. text .. "'") end
      if (spec.min ~= nil and v < spec.min) or (spec.above ~= nil and v <= spec.above) then
         error(string.format("%s: option %s wants a size above %s, got '%s'", recipe, name,
                             fmt_num(spec.above or spec.min), text), 0)
      end
      return v
   elseif kind == 'path' then
      if text ~= '' and spec.exists then
         if not exists(text) then
            error(string.format("%s: option %s: cannot open '%s': it does not exist", recipe, name, text), 0)
         end
         if spec.exists == 'dir' and not is_dir(text) then
            error(string.format("%s: option %s: cannot open '%s': it is not a directory", recipe, name, text), 0)
         end
      end
      return text
   end
   return text
end

---------------------------------------------------------------------------
-- help

-- the comment block at the top of a Lua file, as text (a recipe's description)
function M.description(path)
   local f = path and io.open(path, 'r')
   if not f then return nil end
   local out = {}
   for line in f:lines() do
      local body = line:match('^%s*%-%-(.*)$')
      if not body then break end
      out[#out + 1] = body:sub(1, 1) == ' ' and body:sub(2) or body
   end
   f:close()
   while out[#out] == '' do out[#out] = nil end
   if #out == 0 then return nil end
   return table.concat(out, '\n')
end

local function alias_names(spec)
   local out = {}
   for _, a in ipairs(spec.aliases or {}) do
      if type(a) == 'table' then out[#out + 1] = flag(a[1]) .. ' (= ' .. flag(spec[1]) .. ' ' .. tostring(a[2]) .. ')'
      else out[#out + 1] = flag(a) end
   end
   return out
end
M.alias_names = alias_names

-- the --help text of an option table; description: text shown above the options
function M.help(recipe, specs, description)
   local lines = {'usage: fsdp-lua ' .. recipe .. ' [options]'}
   if description then lines[#lines + 1] = ''; lines[#lines + 1] = description end
   lines[#lines + 1] = ''
   lines[#lines + 1] = 'options (default in brackets):'
   for _, s in ipairs(specs) do
      local d = s[2]
      if type(d) == 'string' then d = d == '' and "''" or d end
      local kind = kind_of(s)
      local extra = {}
      if kind == 'enum' then extra[#extra + 1] = 'one of: ' .. table.concat(s.choices, ', ')
      elseif kind == 'integer' or kind == 'number' or kind == 'size' then
         local a = M.accepts(s)
         if a ~= 'an integer' and a ~= 'a finite number' then extra[#extra + 1] = a end
      end
      local al = alias_names(s)
      if #al > 0 then extra[#extra + 1] = 'also ' .. table.concat(al, ', ') end
      local text = s[3] or ''
      if #extra > 0 then text = text .. ' (' .. table.concat(extra, '; ') .. ')' end
      if kind == 'size' and type(d) == 'number' then d = fmt_num(d) end
      lines[#lines + 1] = string.format('  %-26s %s [%s]', flag(s[1]), text, tostring(d))
   end
   return table.concat(lines, '\n')
end

-- checks shared by option tables (spec.check)
M.checks = {}
-- where a model runs: cpu, cuda, cuda:N or auto
function M.checks.device(v)
   if v == 'cpu' or v == 'cuda' or v == 'auto' or v:match('^cuda:%d+$') then return nil end
   return 'wants cpu, cuda, cuda:N or auto'
end
-- a tokenizer: 'bytes', '' (the default) or an existing file or directory
function M.checks.tokenizer(v)
   if v == 'bytes' or v == '' or exists(v) then return nil end
   return "no such file or directory (give a tokenizer.json, its directory, or 'bytes')"
end

---------------------------------------------------------------------------
-- parsing

-- every name an option can be given by: {name -> {spec, value (switch
-- aliases), canonical}}; raises when two specs claim one name
local function index_specs(recipe, specs)
   local by, names = {}, {}
   local function claim(n, entry)
      if by[n] then
         error(string.format("%s: the option tables give '%s' twice", recipe, flag(n)), 0)
      end
      by[n] = entry
      names[#names + 1] = n
   end
   for _, s in ipairs(specs) do
      claim(s[1], {spec = s})
      for _, a in ipairs(s.aliases or {}) do
         if type(a) == 'table' then claim(a[1], {spec = s, switch = a[2]})
         else claim(a, {spec = s}) end
      end
   end
   return by, names
end

-- "did you mean" for an unknown option name (underscored)
function M.suggest(name, by, names)
   local function show(n)
      local e = by[n]
      if not e then return flag(n) end
      if e.switch ~= nil then return flag(n) end
      return flag(e.spec[1])
   end
   local hint = HINTS[name]
   if hint and by[hint[1]] then return 'did you mean ' .. show(hint[1]) .. '? ' .. hint[2] end
   local g = synonym_group[name]
   if g then
      for _, n in ipairs(g) do if by[n] then return 'did you mean ' .. show(n) .. '?' end end
   end
   local best, d = M.closest(name, names)
   if best and d <= math.max(2, math.floor(#name / 3)) then return 'did you mean ' .. show(best) .. '?' end
   return nil
end

local function unset(v) return v == '' or v == false or v == nil end
local BOOL_WORDS = {['true'] = true, ['false'] = true, ['1'] = true, ['0'] = true, yes = true, no = true, on = true,
                    off = true}

-- parses args (a list of strings) against specs; returns the options table
-- (every option set, defaults filled in) and `given` (name -> the spelling
-- and value the command line used), or raises a clear error. '--help'
-- returns nil, helptext; description: shown by --help above the options
function M.parse(recipe, specs, args, description)
   local by, names = index_specs(recipe, specs)
   local opt, given = {}, {}
   for _, s in ipairs(specs) do opt[s[1]] = s[2] end
   local function set(spec, value, spelled, switch)
      local n = spec[1]
      local g = given[n]
      local shown = switch and spelled or (spelled .. ' ' .. tostring(value))
      if g and g.flag ~= spelled and g.value ~= value then
         error(string.format('%s: %s and %s disagree (both set %s): give one', recipe, g.shown, shown, flag(n)), 0)
      end
      opt[n] = value
      given[n] = {flag = spelled, value = value, text = tostring(value), shown = shown}
   end
   local i = 1
   while i <= #args do
      local a = args[i]
      if a == '--help' or a == '-h' then return nil, M.help(recipe, specs, description) end
      local key, value = a:match('^%-%-([%w%-_%.]+)=(.*)$')
      if not key then key = a:match('^%-%-([%w%-_%.]+)$') end
      if not key then
         error(string.format("%s: unexpected argument '%s' (options look like --name value)", recipe, a), 0)
      end
      local name = key:gsub('-', '_')
      local spelled = '--' .. key
      local negated = false
      local entry = by[name]
      if not entry and name:sub(1, 3) == 'no_' and by[name:sub(4)] then
         local e = by[name:sub(4)]
         if e.switch ~= nil or kind_of(e.spec) == 'boolean' then entry, negated = e, true end
      end
      if not entry then
         local s = M.suggest(name, by, names)
         error(string.format('%s: unknown option --%s%s', recipe, key,
                             s and ('; ' .. s) or ' (--help lists the options)'), 0)
      end
      local spec = entry.spec
      local is_switch = entry.switch ~= nil or kind_of(spec) == 'boolean'
      if negated and value then
         error(string.format("%s: %s takes no value (got '%s')", recipe, spelled, value), 0)
      end
      local on -- a switch's state: --x, --x=false, --x true, --no-x
      if negated then on = false
      elseif is_switch and value then on = convert(recipe, {spelled, false, type = 'boolean'}, value, spelled)
      elseif is_switch then
         local nxt = args[i + 1]
         if nxt and BOOL_WORDS[nxt:lower()] then
            on = convert(recipe, {spelled, false, type = 'boolean'}, nxt, spelled)
            i = i + 1
         else
            on = true
         end
      end
      if entry.switch ~= nil then
         -- --bf16 is --param-dtype bf16; --no-bf16 / --bf16 false leave it alone
         if on then set(spec, entry.switch, spelled, true) end
      elseif is_switch then
         set(spec, on, spelled)
      else
         if value == nil then
            value = args[i + 1]
            if value == nil or (value:sub(1, 2) == '--' and not tonumber(value)) then
               error(string.format('%s: option %s needs a value (%s)', recipe, spelled, M.accepts(spec)), 0)
            end
            i = i + 1
         end
         set(spec, convert(recipe, spec, value, spelled), spelled)
      end
      i = i + 1
   end
   -- per-option checks, then declared conflicts, then rules across options
   for _, s in ipairs(specs) do
      if s.check and given[s[1]] then
         local why = s.check(opt[s[1]], opt)
         if why then error(string.format('%s: option %s %s: %s', recipe, given[s[1]].flag, given[s[1]].text, why), 0) end
      end
   end
   for _, s in ipairs(specs) do
      for _, c in ipairs(s.conflicts or {}) do
         local other, why = c, nil
         if type(c) == 'table' then other, why = c[1], c[2] end
         local ga, gb = given[s[1]], given[other]
         if ga and gb and not unset(opt[s[1]]) and not unset(opt[other]) then
            error(string.format('%s: %s and %s cannot be given together%s', recipe, ga.flag, gb.flag,
                                why and (': ' .. why) or ''), 0)
         end
      end
   end
   for _, rule in ipairs(specs.checks or {}) do
      local why = rule(opt, given)
      if why then error(recipe .. ': ' .. why, 0) end
   end
   return opt, given
end

-- checks that every default satisfies its own spec (a recipe's defaults
-- are options too); raises naming the option
function M.check_defaults(recipe, specs)
   for _, s in ipairs(specs) do
      local kind, d = kind_of(s), s[2]
      local text = tostring(d)
      if kind == 'integer' or kind == 'number' then
         if type(d) ~= 'number' then error(string.format('%s: the default of %s is not a number', recipe, flag(s[1])), 0) end
         text = fmt_num(d)
      end
      if kind ~= 'path' and kind ~= 'boolean' and not (kind == 'size' and type(d) == 'number') then
         local ok, err = pcall(convert, recipe, s, text, flag(s[1]))
         if not ok then
            error(string.format('%s: the default of %s (%s) is refused by its own spec: %s', recipe, flag(s[1]),
                                text, tostring(err)), 0)
         end
      end
   end
end

return M
