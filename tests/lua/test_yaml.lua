-- lua/fsdp/yaml.lua against PyYAML (tests/golden/yaml/cases.json, made by
-- tests/golden/make_yaml_fixtures.py): every valid case gives PyYAML's
-- string values in file order; every case PyYAML refuses is refused with a
-- "line N" message, as are the ones fsdp-lua refuses on purpose (anchors,
-- tags, duplicate keys, directives); and no input, however damaged, makes
-- the reader fail other than with such a message.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local yaml = require 'fsdp.yaml'

local cases = fsdp.json.decode(assert(require('fsdp.fs').read(fsdp.root .. '/tests/golden/yaml/cases.json')))
t.check(#cases > 40, 'only %d cases', #cases)

local function all_strings(text)
   local out = fsdp.json.array({})
   for _, d in ipairs(yaml.decode(text, 'case.yaml')) do yaml.strings(d, function(s) out[#out + 1] = s end) end
   return out
end

local accepted, refused, strict = 0, 0, 0
for _, c in ipairs(cases) do
   local ok, res = pcall(all_strings, c.yaml)
   if c.error or c.refuse then
      if t.check(not ok, '%s: accepted (%s), but %s', c.name, ok and fsdp.json.encode(res) or '',
                 c.refuse and ('fsdp-lua refuses ' .. c.refuse) or ('PyYAML says: ' .. tostring(c.error))) then
         refused = refused + 1
         t.check(tostring(res):match('^case%.yaml line %d+: .+'), '%s: the message should name the file and line: %s', c.name, tostring(res))
      end
   elseif c.mutant then -- PyYAML reads it: the same strings, or a refusal
      if ok then
         accepted = accepted + 1
         t.check(fsdp.json.encode(res) == fsdp.json.encode(fsdp.json.array(c.strings)),
                 '%s: got %s, PyYAML %s', c.name, fsdp.json.encode(res), fsdp.json.encode(c.strings))
      else
         refused = refused + 1
         strict = strict + 1
         t.check(tostring(res):match('^case%.yaml line %d+: .+'), '%s: the message should name the file and line: %s', c.name, tostring(res))
      end
   else
      if t.check(ok, '%s: refused: %s', c.name, tostring(res)) then
         accepted = accepted + 1
         t.check(fsdp.json.encode(res) == fsdp.json.encode(fsdp.json.array(c.strings)),
                 '%s: got %s, PyYAML %s', c.name, fsdp.json.encode(res), fsdp.json.encode(c.strings))
      end
   end
end
print(string.format('%d cases: %d accepted as PyYAML reads them, %d refused (%d of them damaged ones PyYAML reads)', #cases,
                    accepted, refused, strict))

-- damaged inputs: every prefix of every case and single-byte changes never
-- raise anything but a "line N" message
local bad = 0
for _, c in ipairs(cases) do
   local s = c.yaml
   for cut = 0, #s do
      local ok, err = pcall(all_strings, s:sub(1, cut))
      if not ok and not tostring(err):match('^case%.yaml line %d+: ') then bad = bad + 1; print(c.name, cut, err) end
   end
   for pos = 1, #s do
      for _, ch in ipairs({'"', "'", ':', '-', ' ', '\t', '[', '|', '#', '\n'}) do
         local ok, err = pcall(all_strings, s:sub(1, pos - 1) .. ch .. s:sub(pos + 1))
         if not ok and not tostring(err):match('^case%.yaml line %d+: ') then bad = bad + 1; print(c.name, pos, ch, err) end
      end
   end
end
t.check(bad == 0, '%d damaged inputs failed without a file-and-line message', bad)

-- nesting beyond 512 levels is refused with a message, not a stack overflow
for _, deep in ipairs({string.rep('- ', 100000) .. 'x', 'a: ' .. string.rep('[', 100000) .. string.rep(']', 100000)}) do
   local ok, err = pcall(all_strings, deep)
   t.check(not ok and tostring(err):match('^case%.yaml line 1: .*nested deeper than 512'), 'deep nesting: %s', tostring(err))
end
return t.done()
