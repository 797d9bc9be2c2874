-- The Lua fuzz targets (tests/fuzz/fuzz_lua.c runs one per binary): each
-- takes the fuzzer's bytes and either accepts them or refuses them with an
-- error of ours; an error that is a Lua runtime error, or a broken property
-- (raised as "FUZZ BUG: ..."), is a finding.
local json = require 'fsdp.json'
local T = {}

local function bug(fmt, ...) error('FUZZ BUG: ' .. string.format(fmt, ...), 0) end

-- what every JSON reader of ours parses with: configs, indexes, metrics
function T.json(data)
   local v = json.decode(data)
   -- what decodes re-encodes to text that decodes to the same encoding
   local a = json.encode(v)
   local b = json.encode(json.decode(a))
   if a ~= b then bug('json round trip: %s vs %s', a:sub(1, 200), b:sub(1, 200)) end
end

function T.yaml(data)
   local yaml = require 'fsdp.yaml'
   local n = 0
   for _, d in ipairs(yaml.decode(data, 'fuzz.yaml')) do
      yaml.strings(d, function(s)
         if type(s) ~= 'string' then bug('yaml.strings gave a %s', type(s)) end
         n = n + 1
      end)
   end
end

-- index.json and trainer_state.json, split at the first NUL byte
function T.ckpt(data)
   local ckpt = require 'fsdp.checkpoint'
   local cut = data:find('\0', 1, true)
   local index_text = cut and data:sub(1, cut - 1) or data
   local trainer_text = cut and data:sub(cut + 1) or nil
   local index = ckpt.check_texts(index_text, trainer_text, 'fuzz/step_00000001')
   -- what passes is a layout a load could use without going out of bounds
   for _, u in ipairs(index.units) do
      if u.padded % index.world_size ~= 0 or u.numel > u.padded then bug('unit %s passed with a bad size', tostring(u.name)) end
   end
end

-- prepare's readers on a file whose kind the first byte picks
local KINDS = {'txt', 'json', 'jsonl', 'yaml'}
local scratch = string.format('/tmp/fsdp-fuzz-%d', require('fsdp.fs').pid())
function T.prepare(data)
   local prepare = require 'fsdp.prepare'
   if #data == 0 then return end
   local kind = KINDS[data:byte(1) % #KINDS + 1]
   local path = scratch .. '.' .. kind
   local f = assert(io.open(path, 'wb'))
   f:write(data:sub(2))
   f:close()
   prepare.documents(path, 'text', function(d)
      if type(d) ~= 'string' then bug('a %s document', type(d)) end
   end)
end

-- a Hugging Face config.json: read, the architecture found, the model built
-- (not materialized)
function T.config(data)
   local hf = require 'fsdp.hf'
   local dir = scratch .. '-model'
   require('fsdp.fs').mkdirs(dir)
   local f = assert(io.open(dir .. '/config.json', 'wb'))
   f:write(data)
   f:close()
   hf.build(dir)
end

return T
