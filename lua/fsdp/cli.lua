-- fsdp.cli: recipe options. A recipe declares its options with defaults and
-- help; the command line overrides them (--batch-size 8 sets batch_size).
--
--   local opt = fsdp.options('train_mingpt', {
--      {'data', '', 'text or token file to train on'},
--      {'max_steps', 1000, 'optimizer steps'},
--   }, arg)
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

function M.closest(name, candidates)
   local best, best_d
   for _, c in ipairs(candidates) do
      local d = distance(name, c)
      if not best_d or d < best_d then best, best_d = c, d end
   end
   return best, best_d
end

local function convert(spec, text)
   local name, default = spec[1], spec[2]
   local kind = spec.type or type(default)
   if kind == 'number' then
      local v = tonumber(text)
      if not v then error(string.format("option %s wants a number, got '%s'", flag(name), text), 0) end
      return v
   elseif kind == 'boolean' then
      if text == 'true' or text == '1' or text == 'yes' then return true end
      if text == 'false' or text == '0' or text == 'no' then return false end
      error(string.format("option %s wants true or false, got '%s'", flag(name), text), 0)
   end
   if spec.choices then
      for _, c in ipairs(spec.choices) do if c == text then return text end end
      error(string.format("option %s must be one of %s, got '%s'", flag(name),
                          table.concat(spec.choices, ', '), text), 0)
   end
   return text
end

function M.help(recipe, specs)
   local lines = {'usage: fsdp-lua ' .. recipe .. ' [options]', '', 'options (default in brackets):'}
   for _, s in ipairs(specs) do
      local d = s[2]
      if type(d) == 'string' then d = d == '' and "''" or d end
      lines[#lines + 1] = string.format('  %-26s %s [%s]', flag(s[1]), s[3] or '', tostring(d))
   end
   return table.concat(lines, '\n')
end

-- parses args (a list of strings) against specs; returns the options table
-- (every option set, defaults filled in) or raises a clear error.
-- '--help' returns nil, helptext.
function M.parse(recipe, specs, args)
   local by_name, names = {}, {}
   local opt = {}
   for _, s in ipairs(specs) do
      by_name[s[1]] = s
      names[#names + 1] = s[1]
      opt[s[1]] = s[2]
   end
   local i = 1
   while i <= #args do
      local a = args[i]
      if a == '--help' or a == '-h' then return nil, M.help(recipe, specs) end
      local key, value = a:match('^%-%-([%w%-_]+)=(.*)$')
      if not key then key = a:match('^%-%-([%w%-_]+)$') end
      if not key then
         error(string.format("%s: unexpected argument '%s' (options look like --name value)", recipe, a), 0)
      end
      local name = key:gsub('-', '_')
      local negated = false
      if not by_name[name] and name:sub(1, 3) == 'no_' and by_name[name:sub(4)]
         and type(by_name[name:sub(4)][2]) == 'boolean' then
         name, negated = name:sub(4), true
      end
      local spec = by_name[name]
      if not spec then
         local best = M.closest(name, names)
         error(string.format("%s: unknown option --%s%s", recipe, key,
                             best and ('; did you mean ' .. flag(best) .. '?') or ''), 0)
      end
      if negated then
         opt[name] = false
      elseif value then
         opt[name] = convert(spec, value)
      elseif type(spec[2]) == 'boolean' and (args[i + 1] == nil or args[i + 1]:sub(1, 2) == '--') then
         opt[name] = true
      else
         if args[i + 1] == nil then error(string.format('%s: option %s needs a value', recipe, flag(name)), 0) end
         opt[name] = convert(spec, args[i + 1])
         i = i + 1
      end
      i = i + 1
   end
   return opt
end

return M
