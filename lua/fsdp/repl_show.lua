-- fsdp.repl_show: what the REPL prints and offers. show(v) renders a value
-- the way the prompt prints it (tensors as torch prints them, modules as a
-- tree with their parameter shapes and counts); help(x) prints the
-- reference text (docs/reference.md) of a function, module or name;
-- complete(env, text) lists the completions of a Lua expression's prefix.
local T = require 'fsdp.tensor'

local M = {}

local function fmt_number(v, int)
   if int then return string.format('%d', v) end
   if v ~= v then return 'nan' end
   if v == math.huge then return 'inf' elseif v == -math.huge then return '-inf' end
   return string.format('%.4f', v)
end

-- a tensor as torch prints one: its values with at most `edge` entries at
-- each end of each dimension (the rest as ...), then shape, dtype, device
function M.tensor(t, edge)
   edge = edge or 3
   if t:is_freed() then return 'tensor(<freed>)' end
   local h = t.device >= 0 and t:cpu() or t
   if not h:is_contiguous() then h = h:clone() end
   local int = t.dtype == 'i32' or t.dtype == 'i64' or t.dtype == 'u8'
   local vals = h:totable()
   local shape, n = t.shape, #t.shape
   local strides, s = {}, 1
   for d = n, 1, -1 do strides[d] = s; s = s * shape[d] end
   local summarize = t:numel() > 1000
   local function rec(d, base, indent)
      if d > n then return fmt_number(vals[base + 1], int) end
      local parts, len = {}, shape[d]
      for i = 0, len - 1 do
         if summarize and len > 2 * edge and i == edge then
            parts[#parts + 1] = '...'
         end
         if not (summarize and len > 2 * edge and i >= edge and i < len - edge) then
            parts[#parts + 1] = rec(d + 1, base + i * strides[d], indent .. ' ')
         end
      end
      local sep = d == n and ', ' or (',' .. string.rep('\n', n - d) .. indent .. ' ')
      return '[' .. table.concat(parts, sep) .. ']'
   end
   local body = n == 0 and fmt_number(vals[1], int) or rec(1, 0, '       ')
   if h ~= t then h:free() end
   local extras = {}
   extras[#extras + 1] = 'shape=(' .. table.concat(shape, ', ') .. (n == 1 and ',)' or ')')
   extras[#extras + 1] = 'dtype=' .. t.dtype
   if t.device >= 0 then extras[#extras + 1] = "device='" .. T.device_name(t.device) .. "'" end
   if t.requires_grad then extras[#extras + 1] = 'requires_grad=True' end
   return 'tensor(' .. body .. ', ' .. table.concat(extras, ', ') .. ')'
end

local function count_str(n)
   if n >= 1e9 then return string.format('%.2fB', n / 1e9) end
   if n >= 1e6 then return string.format('%.2fM', n / 1e6) end
   if n >= 1e3 then return string.format('%.1fK', n / 1e3) end
   return tostring(n)
end

local function numel(shape)
   local n = 1
   for _, d in ipairs(shape) do n = n * d end
   return n
end

-- a module as a tree: each child on its own line with its parameters'
-- shapes; a ModuleList of identical blocks prints the first and a count
function M.module(m)
   local lines = {}
   local function params_of(mod)
      local out = {}
      for _, s in ipairs(mod:parameter_specs()) do
         if not s.name:find('.', 1, true) then
            out[#out + 1] = string.format('%s%s', s.name, '(' .. table.concat(s.shape, ', ') .. ')' ..
                                          (s.frozen and ' frozen' or ''))
         end
      end
      return out
   end
   local function signature(mod)
      local parts = {}
      for _, c in ipairs(mod._children or {}) do parts[#parts + 1] = c.name .. ':' .. tostring(c.module.__name) end
      for _, p in ipairs(params_of(mod)) do parts[#parts + 1] = p end
      return table.concat(parts, ';')
   end
   local function rec(mod, name, indent)
      local own = params_of(mod)
      local head = indent .. (name and (name .. ': ') or '') .. tostring(mod.__name or 'Module')
      if #own > 0 then head = head .. ' [' .. table.concat(own, ', ') .. ']' end
      lines[#lines + 1] = head
      local kids = mod._children or {}
      local i = 1
      while i <= #kids do
         local c = kids[i]
         -- a run of children with the same structure: the first and a count
         local j = i
         while j < #kids and kids[j + 1].module.__name == c.module.__name and
            signature(kids[j + 1].module) == signature(c.module) and tonumber(c.name) do j = j + 1 end
         if j > i + 1 then
            local at = #lines + 1
            rec(c.module, c.name .. '-' .. kids[j].name, indent .. '  ')
            lines[at] = lines[at] .. string.format('  x%d', j - i + 1)
            i = j + 1
         else
            rec(c.module, c.name, indent .. '  ')
            i = i + 1
         end
      end
   end
   rec(m, nil, '')
   local total, trainable = 0, 0
   for _, s in ipairs(m:parameter_specs()) do
      local k = numel(s.shape)
      total = total + k
      if not s.frozen then trainable = trainable + k end
   end
   lines[#lines + 1] = string.format('%s parameters (%d)%s', count_str(total), total,
                                     trainable ~= total and string.format(', %s trainable', count_str(trainable)) or '')
   -- a module's children are also listed after a model's own lines when it
   -- holds them in fields only (no _children): nothing more to print then
   return table.concat(lines, '\n')
end

local function is_module(v)
   return type(v) == 'table' and type(v.parameter_specs) == 'function' and v._children ~= nil
end

-- a value as the prompt prints it
function M.show(v)
   if T.is_tensor(v) then return M.tensor(v) end
   if is_module(v) then
      local ok, s = pcall(M.module, v)
      if ok then return s end
   end
   if type(v) == 'string' then return string.format('%q', v) end
   if type(v) == 'table' and not getmetatable(v) then
      local parts, n = {}, 0
      for k, x in pairs(v) do
         n = n + 1
         if n > 8 then parts[#parts + 1] = '...'; break end
         local ks = type(k) == 'string' and k:match('^[%a_][%w_]*$') and k or ('[' .. tostring(k) .. ']')
         parts[#parts + 1] = ks .. ' = ' .. (type(x) == 'string' and string.format('%q', x) or tostring(x))
      end
      return '{' .. table.concat(parts, ', ') .. '}'
   end
   return tostring(v)
end

---------------------------------------------------------------------------
-- help: the reference text

local reference -- {sections = {{title, level, text}}}

local function load_reference()
   if reference then return reference end
   local root = require('fsdp').root
   local f = io.open(root .. '/docs/reference.md', 'r')
   reference = {sections = {}}
   if not f then return reference end
   local cur
   for line in f:lines() do
      local hashes, title = line:match('^(#+)%s+(.*)$')
      if hashes then
         cur = {title = title:gsub('`', ''), level = #hashes, lines = {line}}
         reference.sections[#reference.sections + 1] = cur
      elseif cur then
         cur.lines[#cur.lines + 1] = line
      end
   end
   f:close()
   return reference
end

-- the qualified name of a value among the loaded fsdp/models/optim modules
local function name_of(v)
   local best
   for mod, t in pairs(package.loaded) do
      if type(mod) == 'string' and type(t) == 'table' and (mod == 'fsdp' or mod:match('^fsdp%.') or
         mod:match('^models') or mod:match('^optim')) then
         if t == v and (not best or #mod < #best) then best = mod end
         for k, x in pairs(t) do
            if x == v and type(k) == 'string' then
               local full = mod .. '.' .. k
               if not best or #full < #best then best = full end
            end
         end
      end
   end
   return best
end

-- the section (and, for a module, its entries) whose title names `name`
local function sections_for(name)
   local ref = load_reference()
   local out = {}
   local short = name:gsub('^fsdp%.', '')
   for i, s in ipairs(ref.sections) do
      local t = s.title
      local head = t:match('^([^%(]+)') or t
      if head == name or head == 'fsdp.' .. short or head:match('%.' .. short:gsub('%p', '%%%0') .. '$') or
         head:match(':' .. short:gsub('%p', '%%%0') .. '$') then
         out[#out + 1] = {i, s}
      end
   end
   return out
end

local function section_text(s, with_entries)
   local ref = load_reference()
   local lines = {table.concat(s[2].lines, '\n')}
   if with_entries then
      local entries = {}
      for j = s[1] + 1, #ref.sections do
         local e = ref.sections[j]
         if e.level <= s[2].level then break end
         entries[#entries + 1] = '  ' .. e.title
      end
      if #entries > 0 then lines[#lines + 1] = 'Entries:\n' .. table.concat(entries, '\n') end
   end
   return (table.concat(lines, '\n'):gsub('\n+$', ''))
end

-- the help text for x (a value or a name), or the overview for nil
function M.help_text(x)
   if x == nil then
      return table.concat({
         'Every statement runs on every rank; rank 0 prints. Ctrl-C interrupts a statement on every rank,',
         'Ctrl-D leaves. Tab completes names and fields (on a terminal).',
         '  help(fsdp.ops)          a module: its reference section and entries',
         '  help(fsdp.ops.linear)   a function (or help("ops.linear"), help("attention"))',
         '  help(model), help(t)    a model: its tree; a tensor: the Tensor methods',
         'In scope: fsdp, dist, and what the recipe left (opt, model, sharded, optimizer, ...).',
         'The reference: docs/reference.md.'}, '\n')
   end
   if T.is_tensor(x) then x = 'fsdp.tensor' end
   if is_module(x) then return M.module(x) .. '\n\n' .. (M.help_text(tostring(x.__name)) or '') end
   local name = type(x) == 'string' and x or name_of(x)
   if not name then return 'help: no reference entry for this ' .. type(x) .. ' (try help("name"))' end
   local found = sections_for(name)
   if #found == 0 and type(x) ~= 'string' then
      found = sections_for(name:match('([^%.]+)$'))
   end
   if #found == 0 then return 'help: nothing in docs/reference.md names ' .. name end
   local parts = {}
   for i, s in ipairs(found) do
      if i > 6 then parts[#parts + 1] = string.format('(%d more: help("%s") narrows it)', #found - 6, name); break end
      parts[#parts + 1] = section_text(s, s[2].level <= 3)
   end
   return table.concat(parts, '\n\n')
end

---------------------------------------------------------------------------
-- completion

local function fields(v, out, seen)
   seen = seen or {}
   if seen[v] then return out end
   seen[v] = true
   if type(v) == 'table' then
      for k in pairs(v) do if type(k) == 'string' then out[k] = true end end
   end
   local mt = getmetatable(v)
   if type(mt) == 'table' and type(mt.__index) == 'table' then fields(mt.__index, out, seen) end
   if type(v) == 'table' and type(v.__index) == 'table' and v.__index ~= v then fields(v.__index, out, seen) end
   return out
end

-- completions of the identifier path at the end of text ('fsdp.op' ->
-- 'fsdp.ops', 'x:nu' -> 'x:numel'), each the whole of text with it completed
function M.complete(env, text)
   local before, path = text:match('^(.-)([%w_%.:]*)$')
   local base, sep, partial = path:match('^(.*)([%.:])([%w_]*)$')
   local scope
   if base then
      scope = env
      for part in base:gmatch('[^%.:]+') do
         local ok, v = pcall(function() return scope[part] end)
         if not ok or v == nil then return {} end
         scope = v
      end
   else
      partial, scope, sep, base = path, env, '', ''
   end
   local names = {}
   if base == '' then
      fields(env, names)
      for _, kw in ipairs({'and', 'break', 'do', 'else', 'elseif', 'end', 'false', 'for', 'function', 'if', 'in',
                           'local', 'nil', 'not', 'or', 'repeat', 'return', 'then', 'true', 'until', 'while'}) do
         names[kw] = true
      end
   else
      fields(scope, names)
   end
   local out = {}
   for k in pairs(names) do
      if k:sub(1, #partial) == partial and k:match('^[%a_][%w_]*$') and not (sep == ':' and k:match('^__')) then
         out[#out + 1] = before .. base .. sep .. k
      end
   end
   table.sort(out)
   return out
end

return M
