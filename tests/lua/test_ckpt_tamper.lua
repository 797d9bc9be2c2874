-- Tampering with any file of a checkpoint step ends in a clear refusal that
-- names the file (and the field, where a field is wrong), or in a correct
-- resume; never in a load of wrong values.
--
--  * every field of index.json, trainer_state.json and manifest.json is
--    changed in several ways (+1, 0, -1, 1e15, 2.5, a string, deleted, an
--    empty object): checkpoint.verify, which resume runs, refuses each;
--  * the same field changes with the manifest re-signed (what a tool that
--    rewrites the files consistently would leave): the range and cross
--    checks alone refuse the ones that matter, naming the field (world size
--    0 / -1, a step that differs between the files, a data cursor of 1e15 /
--    -7 / 2.5, an optimizer step beyond the step, a broken layout ...), and a
--    harmless one is accepted;
--  * a byte flipped in each region of a rank file (header length, header
--    JSON, every tensor's first, middle and last bytes), the file cut short
--    or grown: refused, naming the rank file;
--  * `latest` garbled, dangling, or naming the older step;
--  * end to end: the recipe refuses with the message `ckpt verify` prints,
--    and resumes correctly from the step an edited `latest` names.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local json = fsdp.json
local ckpt = require 'fsdp.checkpoint'
local log = require 'fsdp.log'
log.quiet = true

local bin = fsdp.root .. '/build/fsdp-lua'
local tmp = os.tmpname()
os.remove(tmp)
fs.mkdirs(tmp)
local corpus = fsdp.root .. '/data/tinyshakespeare.txt'
local recipe = 'OMP_NUM_THREADS=1 ' .. bin .. ' recipes/train_mingpt.lua --preset gpt-nano --batch-size 2 --seq-len 16 ' ..
               '--sample-tokens 0 --eval-every 0 --log-every 1 --checkpoint-every 2 --data ' .. corpus .. ' '
local ck = tmp .. '/ck'
local status, out = t.sh(recipe .. '--max-steps 6 --stop-after 4 --checkpoint-dir ' .. ck .. ' --run-dir ' .. tmp .. '/run0')
t.check(status == 0, 'making the checkpoint failed: %s', out)
local step = ck .. '/step_00000004'
local work = tmp .. '/work'
os.execute('cp -r ' .. step .. ' ' .. work)
t.check(pcall(ckpt.verify, work), 'the untouched copy should verify')

local originals = {}
for _, name in ipairs({'index.json', 'trainer_state.json', 'manifest.json', 'rank_00000.safetensors'}) do
   originals[name] = fs.read(work .. '/' .. name)
end
local function put(name, text)
   local f = assert(io.open(work .. '/' .. name, 'wb'))
   f:write(text)
   f:close()
end
local function restore()
   for name, text in pairs(originals) do put(name, text) end
end

-- every path to a value in a decoded JSON document
local function paths(v)
   local out = {}
   local function walk(x, p)
      if #p > 0 then out[#out + 1] = p end
      if type(x) == 'table' and x ~= json.null then
         for k, y in pairs(x) do
            local q = {unpack(p)}
            q[#q + 1] = k
            walk(y, q)
         end
      end
   end
   walk(v, {})
   return out
end

local function get(doc, p)
   local x = doc
   for _, k in ipairs(p) do x = x[k] end
   return x
end
local function set(doc, p, v)
   local x = doc
   for i = 1, #p - 1 do x = x[p[i]] end
   x[p[#p]] = v
end
local function label(p)
   local s = {}
   for _, k in ipairs(p) do s[#s + 1] = type(k) == 'number' and ('[' .. k .. ']') or ('.' .. k) end
   return table.concat(s):gsub('^%.', '')
end

local DELETE = {}
local function mutations(v)
   if type(v) == 'number' then return {v + 1, 0, -1, 1e15, v + 0.5, 'x', DELETE} end
   if type(v) == 'string' then return {v .. 'x', '', 5, DELETE} end
   if type(v) == 'boolean' then return {not v, 1} end
   if v == json.null then return {0, 'x'} end
   return {json.array({}), {}, 7, DELETE}
end

-- the manifest rewritten to match the current files, as a consistent
-- rewrite would leave it
local function resign()
   local m = json.decode(fs.read(work .. '/manifest.json'))
   for _, name in ipairs({'index.json', 'trainer_state.json'}) do
      local text = fs.read(work .. '/' .. name)
      m.files[name] = {bytes = #text, crc32 = tonumber(fsdp.C.fsdp_crc32(0, text, #text))}
   end
   m.step = json.decode(fs.read(work .. '/index.json')).step
   m.checksum = nil
   m.checksum = tonumber(fsdp.C.fsdp_crc32(0, json.encode(m), #json.encode(m)))
   put('manifest.json', json.encode(m, ' '))
end

-- 1. every field of the two JSON files and the manifest, unsigned
local refused, tried = 0, 0
for _, name in ipairs({'index.json', 'trainer_state.json', 'manifest.json'}) do
   local doc0 = json.decode(originals[name])
   for _, p in ipairs(paths(doc0)) do
      for _, m in ipairs(mutations(get(doc0, p))) do
         local doc = json.decode(originals[name])
         set(doc, p, m ~= DELETE and m or nil)
         local text = json.encode(doc, ' ')
         if text ~= originals[name] then
            put(name, text)
            tried = tried + 1
            local ok, err = pcall(ckpt.verify, work)
            if t.check(not ok, '%s %s = %s was accepted', name, label(p), tostring(m == DELETE and 'deleted' or json.encode(m))) then
               refused = refused + 1
               t.check(tostring(err):find(work .. '/' .. name, 1, true) or (name ~= 'manifest.json' and
                       tostring(err):find('manifest.json', 1, true)),
                       '%s %s: the refusal does not name the file: %s', name, label(p), tostring(err))
            end
            restore()
         end
      end
   end
end
print(string.format('unsigned field changes: %d tried, %d refused', tried, refused))

-- 2. re-signed: the checks on the fields themselves
local RAW_INF = {} -- written as the number 1e999 (json.encode would write null)
local function resigned(name, p, v, patterns)
   local doc = json.decode(originals[name])
   set(doc, p, v == RAW_INF and '@@inf@@' or v ~= DELETE and v or nil)
   put(name, (json.encode(doc, ' '):gsub('"@@inf@@"', '1e999')))
   resign()
   local ok, err = pcall(ckpt.verify, work)
   if patterns then
      if t.check(not ok, 're-signed %s %s = %s was accepted', name, label(p), json.encode(v)) then
         for _, pat in ipairs(patterns) do
            t.check(tostring(err):find(pat, 1, true), 're-signed %s %s: %q lacks %q', name, label(p), tostring(err), pat)
         end
      end
   else
      t.check(ok, 're-signed %s %s = %s (harmless) was refused: %s', name, label(p), v == RAW_INF and "1e999" or json.encode(v), tostring(err))
   end
   restore()
end
local I, TS = 'index.json', 'trainer_state.json'
for _, v in ipairs({0, -1, 1.5, 'one', DELETE}) do resigned(I, {'world_size'}, v, {work .. '/' .. I, "field 'world_size'"}) end
resigned(I, {'world_size'}, 2, {work .. '/' .. I, "world_size 2"})
resigned(I, {'step'}, 5, {work .. '/' .. TS, "field 'step' is 4 but index.json says step 5"})
resigned(I, {'version'}, 99, {"field 'version'", 'newer'})
resigned(I, {'format'}, 'other', {"field 'format'"})
resigned(I, {'ranks'}, 0, {"field 'ranks'"})
resigned(I, {'strategy'}, 'sideways', {"field 'strategy'"})
resigned(I, {'units', 2, 'numel'}, 28273, {"field 'units[2]."})
resigned(I, {'units', 2, 'padded'}, 10, {"field 'units[2].padded'"})
resigned(I, {'units', 2, 'params', 3, 'offset'}, 7, {"field 'units[2].params[3].offset'"})
resigned(I, {'units', 2, 'params', 3, 'shape', 1}, -48, {"field 'units[2].params[3].shape[1]'"})
resigned(I, {'units', 2, 'name'}, 'root', {"field 'units[2].name'"})
resigned(I, {'files', 'rank_00000.safetensors', 'crc32'}, 12345, {work .. '/' .. I, 'files.rank_00000.safetensors'})
resigned(I, {'optimizer', 'lr'}, RAW_INF, {"field 'optimizer.lr'"})
for _, v in ipairs({1e15, -7, 2.5, 'x', DELETE}) do resigned(TS, {'data', 'cursor'}, v, {work .. '/' .. TS, "field 'data.cursor'"}) end
resigned(TS, {'data', 'batches'}, 1, {"field 'data.batches'"})
resigned(TS, {'step'}, 3, {"field 'step' is 3 but index.json says step 4"})
for _, v in ipairs({-1, 2.5, 99}) do resigned(TS, {'optimizer_t'}, v, {"field 'optimizer_t'"}) end
resigned(TS, {'rng'}, 'zz', {"field 'rng'"})
resigned(TS, {'schedule', 'warmup'}, -3, {"field 'schedule.warmup'"})
resigned(TS, {'schedule', 'lr'}, RAW_INF, {"field 'schedule.lr'"})
resigned(TS, {'schedule', 'lr'}, 0.5, nil) -- the schedule comes from the options; recorded only
resigned(TS, {'extra_note'}, 'hello', nil)

-- 3. rank file bytes: every region
do
   local rank = originals['rank_00000.safetensors']
   local hlen = rank:byte(1) + rank:byte(2) * 256 + rank:byte(3) * 65536
   local positions = {1, 4, 8, 9, 10, math.floor(hlen / 2), 8 + hlen}
   for name, e in pairs(json.decode(rank:sub(9, 8 + hlen))) do
      if name ~= '__metadata__' then
         local a, b = e.data_offsets[1] + 9 + hlen, e.data_offsets[2] + 8 + hlen
         for _, pos in ipairs({a, math.floor((a + b) / 2), b}) do positions[#positions + 1] = pos end
      end
   end
   local n = 0
   for _, pos in ipairs(positions) do
      put('rank_00000.safetensors', rank:sub(1, pos - 1) .. string.char((rank:byte(pos) + 1) % 256) .. rank:sub(pos + 1))
      local ok, err = pcall(ckpt.verify, work)
      if t.check(not ok, 'byte %d of the rank file changed: accepted', pos) then
         t.check(tostring(err):find('rank_00000.safetensors', 1, true) and tostring(err):find('crc32', 1, true),
                 'byte %d: %s', pos, tostring(err))
         n = n + 1
      end
   end
   put('rank_00000.safetensors', rank:sub(1, #rank - 1))
   t.check(not pcall(ckpt.verify, work), 'a rank file one byte short was accepted')
   put('rank_00000.safetensors', rank .. '\0')
   local ok, err = pcall(ckpt.verify, work)
   t.check(not ok and tostring(err):find('bytes', 1, true), 'a rank file one byte long: %s', tostring(err))
   restore()
   print(string.format('rank file: %d regions changed, %d refused', #positions, n))
end
for _, name in ipairs({'index.json', 'trainer_state.json', 'rank_00000.safetensors'}) do
   os.remove(work .. '/' .. name)
   local ok, err = pcall(ckpt.verify, work)
   t.check(not ok and tostring(err):find(name .. ' is missing', 1, true), 'without %s: %s', name, tostring(err))
   restore()
end
os.remove(work .. '/manifest.json')
local ok_nm, err_nm = pcall(ckpt.verify, work)
t.check(not ok_nm and tostring(err_nm):find('manifest.json is missing', 1, true), 'without the manifest: %s', tostring(err_nm))
restore()

-- 4. latest
local function plan_err(text)
   local d = tmp .. '/latest_case'
   os.execute('rm -rf ' .. d .. ' && cp -r ' .. ck .. ' ' .. d)
   local f = io.open(d .. '/latest', 'w'); f:write(text); f:close()
   local ok, res = pcall(ckpt.plan, d)
   return ok, res, d
end
do
   local ok, err = plan_err('garbage')
   t.check(not ok and tostring(err):find('latest does not name a step', 1, true), 'garbled latest: %s', tostring(err))
   ok, err = plan_err('step_00000099\n')
   t.check(not ok and tostring(err):find('step_00000099, which does not exist', 1, true), 'dangling latest: %s', tostring(err))
   local res, d
   ok, res, d = plan_err('step_00000002\n')
   t.check(ok and res.path == d .. '/step_00000002' and res.notes[1] and res.notes[1]:find('step_00000004', 1, true),
           'latest naming the older step: resume from it, saying a later one exists: %s', ok and json.encode(res) or tostring(res))
end

-- 5. end to end: the recipe refuses as `ckpt verify` does; a resume from
-- the step an edited `latest` names continues as an untouched run would
do
   local d = tmp .. '/e2e'
   os.execute('cp -r ' .. ck .. ' ' .. d)
   local idx = json.decode(fs.read(d .. '/step_00000004/index.json'))
   idx.world_size = 0
   local text = json.encode(idx, ' ')
   local f = io.open(d .. '/step_00000004/index.json', 'wb'); f:write(text); f:close()
   local s1, o1 = t.sh(bin .. ' ckpt verify ' .. d)
   local s2, o2 = t.sh(recipe .. '--max-steps 6 --checkpoint-dir ' .. d .. ' --run-dir ' .. tmp .. '/run1')
   local msg = o1:match('error: ([^\n]+)')
   t.check(s1 == 1 and msg and msg:find("field 'world_size' is 0", 1, true), 'ckpt verify: %d %s', s1, o1)
   t.check(s2 == 1 and msg and o2:find(msg, 1, true), 'the recipe should refuse as ckpt verify does (%d):\n%s', s2, o2)
   t.check(not fs.exists(d .. '/step_00000006'), 'nothing may be saved after a refusal')

   -- latest -> step 2: the run continues from step 2 and ends where an
   -- untouched run from step 2 ends, bitwise
   local a, b = tmp .. '/from2a', tmp .. '/from2b'
   os.execute('cp -r ' .. ck .. ' ' .. a .. ' && cp -r ' .. ck .. ' ' .. b)
   os.execute('rm -rf ' .. a .. '/step_00000004 && echo step_00000002 > ' .. a .. '/latest')
   os.execute('echo step_00000002 > ' .. b .. '/latest')
   local sa, oa = t.sh(recipe .. '--max-steps 6 --checkpoint-dir ' .. a .. ' --run-dir ' .. tmp .. '/runa')
   local sb, ob = t.sh(recipe .. '--max-steps 6 --checkpoint-dir ' .. b .. ' --run-dir ' .. tmp .. '/runb')
   t.check(sa == 0 and sb == 0, 'resumes from step 2 failed:\n%s\n%s', oa, ob)
   t.check(ob:find('also holds later steps (step_00000004)', 1, true) and ob:find('replacing ' .. b .. '/step_00000004', 1, true),
           'replacing an existing step must be said:\n%s', ob)
   local ia, ib = ckpt.read_index(a .. '/step_00000006'), ckpt.read_index(b .. '/step_00000006')
   t.check(ia.files['rank_00000.safetensors'].crc32 == ib.files['rank_00000.safetensors'].crc32,
           'the two resumes from step 2 differ')
   local ir = ckpt.read_index(ck .. '/step_00000004')
   local i4 = ckpt.read_index(b .. '/step_00000004')
   t.check(ir.files['rank_00000.safetensors'].crc32 == i4.files['rank_00000.safetensors'].crc32,
           'step 4 re-saved after a resume from step 2 differs from the original step 4')
end

if t.failures == 0 then os.execute("rm -rf " .. tmp) else print("kept " .. tmp) end
return t.done()
