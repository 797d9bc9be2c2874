-- Bad input gives a clear error (what was wrong, which file or field) and a
-- non-zero exit, never a crash: unknown options, missing or empty data,
-- corrupted or truncated checkpoints, a dangling `latest`.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'

local bin = fsdp.root .. '/build/fsdp-lua'
local tmp = os.tmpname()
os.remove(tmp)
fs.mkdirs(tmp)

-- runs fsdp-lua with args; expects exit status 1 (an error, not a signal)
-- and every pattern in the output
local function fails(args, patterns, label)
   local status, out = t.sh(bin .. ' ' .. args)
   t.check(status == 1, '%s: exit status %d (want 1: a reported error, not a crash):\n%s', label, status, out)
   for _, p in ipairs(patterns) do
      t.check(out:find(p, 1, true), '%s: output lacks %q:\n%s', label, p, out)
   end
   return out
end

local small = '--max-steps 4 --batch-size 2 --seq-len 16 --sample-tokens 0 --eval-every 0 --log-every 2 '

-- options
fails('recipes/train_mingpt.lua --max-step 10', {'unknown option --max-step', 'did you mean --max-steps'}, 'misspelt option')
fails('recipes/train_mingpt.lua --batch-size many', {'--batch-size wants a number', 'many'}, 'non-numeric value')
fails('recipes/train_mingpt.lua --decay sideways', {'--decay must be one of cosine, linear, constant'}, 'bad choice')
fails('recipes/no_such_recipe.lua', {"no recipe or script 'recipes/no_such_recipe.lua'", 'recipes/train_mingpt.lua'}, 'unknown recipe')
do
   local status, out = t.sh(bin .. ' recipes/train_mingpt.lua --help')
   t.check(status == 0 and out:find('--max-steps', 1, true) and out:find('--checkpoint-dir', 1, true),
           '--help should list the options:\n%s', out)
end

-- data
fails('recipes/train_mingpt.lua ' .. small .. '--data ' .. tmp .. '/missing.txt', {'cannot open', tmp .. '/missing.txt'}, 'missing data file')
local empty = tmp .. '/empty.txt'
io.open(empty, 'w'):close()
fails('recipes/train_mingpt.lua ' .. small .. '--data ' .. empty, {empty, 'is empty'}, 'empty corpus')
local tiny = tmp .. '/tiny.txt'
local f = io.open(tiny, 'w'); f:write('to be or not'); f:close()
fails('recipes/train_mingpt.lua ' .. small .. '--data ' .. tiny, {tiny, 'fewer than one sequence'}, 'corpus shorter than a sequence')
local badtok = tmp .. '/bad.bin'
f = io.open(badtok, 'wb')
f:write(string.char(0x28, 0xEB, 0x34, 0x01)) -- the magic 20240520, then a truncated header
f:close()
fails('recipes/train_mingpt.lua ' .. small .. '--data ' .. badtok, {badtok}, 'truncated token file')

-- checkpoints: make a good one, then damage copies of it
local corpus = fsdp.root .. '/data/tinyshakespeare.txt'
if not fs.exists(corpus) then corpus = '/usr/share/games/fortunes/cookie' end
local ck = tmp .. '/ck'
local status, out = t.sh(bin .. ' recipes/train_mingpt.lua ' .. small .. '--data ' .. corpus .. ' --checkpoint-dir ' .. ck)
t.check(status == 0, 'making a checkpoint failed: %s', out)
local step = ck .. '/step_00000004'
local rankfile = step .. '/rank_00000.safetensors'
local good = fs.read(rankfile)

local function with_damage(label, damage, patterns)
   local copy = tmp .. '/' .. label:gsub('%W', '_')
   os.execute('cp -r ' .. ck .. ' ' .. copy)
   damage(copy .. '/step_00000004')
   fails('recipes/train_mingpt.lua ' .. small:gsub('max%-steps 4', 'max-steps 8') .. '--data ' .. corpus ..
         ' --checkpoint-dir ' .. copy, patterns, label)
end

with_damage('truncated rank file', function(dir)
   local w = io.open(dir .. '/rank_00000.safetensors', 'wb'); w:write(good:sub(1, #good - 1000)); w:close()
end, {'rank_00000.safetensors', 'truncated'})
with_damage('flipped byte', function(dir)
   local pos = math.floor(#good / 2)
   local b = good:byte(pos)
   local w = io.open(dir .. '/rank_00000.safetensors', 'wb')
   w:write(good:sub(1, pos - 1), string.char((b + 1) % 256), good:sub(pos + 1)); w:close()
end, {'rank_00000.safetensors', 'crc32', 'corrupted'})
with_damage('broken index', function(dir)
   local idx = fs.read(dir .. '/index.json')
   local w = io.open(dir .. '/index.json', 'wb'); w:write(idx:sub(1, 200)); w:close()
end, {'index.json', 'json'})
with_damage('index field', function(dir)
   local idx = fs.read(dir .. '/index.json'):gsub('"world_size": 1', '"world_size": "one"')
   local w = io.open(dir .. '/index.json', 'wb'); w:write(idx); w:close()
end, {'index.json', "field 'world_size'"})
with_damage('missing rank file', function(dir) os.remove(dir .. '/rank_00000.safetensors') end,
            {'rank_00000.safetensors', 'missing'})
with_damage('dangling latest', function(dir)
   local w = io.open(dir .. '/../latest', 'w'); w:write('step_00000099\n'); w:close()
end, {'latest', 'step_00000099', 'does not exist'})
-- a checkpoint of a different model shape
fails('recipes/train_mingpt.lua ' .. small .. '--n-embd 64 --data ' .. corpus .. ' --checkpoint-dir ' .. ck,
      {'checkpoint', 'unit'}, 'checkpoint of another model shape')

-- a half-written step (no rename happened) is not picked up: only `latest` counts
do
   local copy = tmp .. '/half'
   os.execute('cp -r ' .. ck .. ' ' .. copy)
   os.execute('cp -r ' .. copy .. '/step_00000004 ' .. copy .. '/.step_00000006.tmp-1-1')
   os.execute('truncate -s 100 ' .. copy .. '/.step_00000006.tmp-1-1/rank_00000.safetensors')
   local st, o = t.sh(bin .. ' recipes/train_mingpt.lua ' .. small:gsub('max%-steps 4', 'max-steps 6') ..
                      '--data ' .. corpus .. ' --checkpoint-dir ' .. copy)
   t.check(st == 0 and o:find('resumed from ' .. copy .. '/step_00000004 (step 4,', 1, true),
           'a temporary step directory must be ignored: %s', o)
end

os.execute('rm -rf ' .. tmp)
return t.done()
