-- docs/reference.md is what tools/gen_reference.lua makes from the code
-- today: regenerating it gives the same text, so a renamed or added option,
-- flag or function fails here until the reference is regenerated. And every
-- option of every recipe is in it, in that recipe's own section (or, for a
-- recipe built on train_lm.lua with the same options, in train_lm's).
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local gen = require 'tools.gen_reference'

local path = fsdp.root .. '/docs/reference.md'
local have = fs.read(path)
t.check(have ~= nil, '%s is missing: run build/fsdp-lua tools/gen_reference.lua', path)
have = have or ''
local want = gen.generate()

if have ~= want then
   -- the first differing line, to say what changed
   local a, b = {}, {}
   for l in (have .. '\n'):gmatch('(.-)\n') do a[#a + 1] = l end
   for l in (want .. '\n'):gmatch('(.-)\n') do b[#b + 1] = l end
   local i = 1
   while a[i] == b[i] and i <= math.max(#a, #b) do i = i + 1 end
   t.check(false, 'docs/reference.md is out of date (first difference at line %d):\n  in the file: %s\n  ' ..
           'from the code: %s\nregenerate it: build/fsdp-lua tools/gen_reference.lua', i, tostring(a[i]), tostring(b[i]))
end

-- the text of a `### heading` section (up to the next ## or ### heading)
local function section(text, heading)
   local start = text:find('\n### ' .. heading .. '\n', 1, true)
   if not start then return nil end
   local rest = text:sub(start + 1)
   local stop = rest:find('\n##', 2, true)
   return stop and rest:sub(1, stop) or rest
end

local recipes = gen.recipes()
t.check(#recipes >= 2, 'found %d recipes under lua/recipes', #recipes)
local base = section(have, 'recipes/train_lm.lua')
local base_names = {}
for _, r in ipairs(recipes) do
   if r.file == 'train_lm.lua' then for _, s in ipairs(r.specs) do base_names[s[1]] = true end end
end
local n = 0
for _, r in ipairs(recipes) do
   local sec = section(have, 'recipes/' .. r.file)
   t.check(sec ~= nil, 'docs/reference.md has no section for recipes/%s', r.file)
   if sec then
      local derived = sec:find(gen.RECIPE_MARKER, 1, true) ~= nil
      for _, s in ipairs(r.specs) do
         local f = '`' .. gen.flag(s[1]) .. '`'
         local found = sec:find(f, 1, true) or (derived and base_names[s[1]] and base and base:find(f, 1, true))
         t.check(found, 'recipes/%s: option %s is not in docs/reference.md', r.file, gen.flag(s[1]))
         n = n + 1
      end
   end
end
print(string.format('%d recipes, %d options checked; reference %d lines', #recipes, n,
                    select(2, have:gsub('\n', ''))))
return t.done()
