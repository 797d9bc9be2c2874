-- Metrics of a run directory: scalars logged through fsdp.metrics are read
-- back from the TensorBoard event file by a reader written here (record
-- framing, both masked CRC-32Cs, the protobuf Event) and from metrics.jsonl;
-- `fsdp-lua plot` draws them; a corrupted byte is caught.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'
local fs = require 'fsdp.fs'
local json = require 'fsdp.json'
local metrics = require 'fsdp.metrics'
local tensorboard = require 'fsdp.tensorboard'
local ffi = require 'ffi'
local bit = require 'bit'

local bin = fsdp.root .. '/build/fsdp-lua'
local tmp = os.tmpname()
os.remove(tmp)
fs.mkdirs(tmp)

-- the reader: its own CRC-32C (bit by bit, no table) --------------------------
local function crc32c(s)
   local c = 0xFFFFFFFF
   for i = 1, #s do
      c = bit.bxor(c, s:byte(i))
      for _ = 1, 8 do
         local low = bit.band(c, 1)
         c = bit.rshift(c, 1)
         if low == 1 then c = bit.bxor(c, 0x82F63B78) end
      end
   end
   return bit.bxor(c, 0xFFFFFFFF) % 2^32
end

local function unmask(m)
   local x = (m - 0xa282ead8) % 2^32
   return bit.rol(x, 15) % 2^32 -- undo the rotate right by 15
end

local function le(s, i, n)
   local v = 0
   for k = n - 1, 0, -1 do v = v * 256 + s:byte(i + k) end
   return v
end

-- protobuf wire format: a list of {field, wire, value} (value: number for
-- varints, the raw bytes for fixed and length-delimited fields)
local function pb_fields(s)
   local out, i = {}, 1
   local function varint()
      local v, mul = 0, 1
      repeat
         local b = s:byte(i)
         if not b then error('truncated varint') end
         v = v + (b % 128) * mul
         mul = mul * 128
         i = i + 1
      until b < 128
      return v
   end
   while i <= #s do
      local k = varint()
      local field, wire = math.floor(k / 8), k % 8
      local v
      if wire == 0 then v = varint()
      elseif wire == 1 then v = s:sub(i, i + 7); i = i + 8
      elseif wire == 5 then v = s:sub(i, i + 3); i = i + 4
      elseif wire == 2 then
         local n = varint()
         v = s:sub(i, i + n - 1); i = i + n
      else error('wire type ' .. wire) end
      if i > #s + 1 then error('truncated field ' .. field) end
      out[#out + 1] = {field, wire, v}
   end
   return out
end

local function as_double(b) local d = ffi.new('double[1]'); ffi.copy(d, b, 8); return d[0] end
local function as_float(b) local f = ffi.new('float[1]'); ffi.copy(f, b, 4); return tonumber(f[0]) end

local function decode_event(data)
   local ev = {step = 0, values = {}}
   for _, f in ipairs(pb_fields(data)) do
      local field, wire, v = f[1], f[2], f[3]
      if field == 1 and wire == 1 then ev.wall_time = as_double(v)
      elseif field == 2 and wire == 0 then ev.step = v
      elseif field == 3 and wire == 2 then ev.file_version = v
      elseif field == 5 and wire == 2 then
         for _, sv in ipairs(pb_fields(v)) do
            if sv[1] ~= 1 or sv[2] ~= 2 then error('summary: unexpected field ' .. sv[1]) end
            local val = {}
            for _, vf in ipairs(pb_fields(sv[3])) do
               if vf[1] == 1 and vf[2] == 2 then val.tag = vf[3]
               elseif vf[1] == 2 and vf[2] == 5 then val.simple_value = as_float(vf[3])
               else error('value: unexpected field ' .. vf[1]) end
            end
            ev.values[#ev.values + 1] = val
         end
      else error('event: unexpected field ' .. field) end
   end
   return ev
end

-- the events of a file, or nil and what is wrong
local function read_events(bytes)
   local events, i = {}, 1
   while i <= #bytes do
      if i + 11 > #bytes then return nil, 'truncated record header at byte ' .. (i - 1) end
      local len_bytes = bytes:sub(i, i + 7)
      if unmask(le(bytes, i + 8, 4)) ~= crc32c(len_bytes) then
         return nil, 'length crc mismatch at byte ' .. (i - 1)
      end
      local n = le(bytes, i, 8)
      local data = bytes:sub(i + 12, i + 11 + n)
      if #data ~= n or i + 15 + n > #bytes then return nil, 'truncated record at byte ' .. (i - 1) end
      if unmask(le(bytes, i + 12 + n, 4)) ~= crc32c(data) then
         return nil, 'data crc mismatch at byte ' .. (i - 1)
      end
      local ok, ev = pcall(decode_event, data)
      if not ok then return nil, 'bad event at byte ' .. (i - 1) .. ': ' .. ev end
      events[#events + 1] = ev
      i = i + 16 + n
   end
   return events
end

-- CRC-32C check value, both implementations; the mask round trip ---------------
t.check(crc32c('123456789') == 0xE3069283, 'test crc32c("123456789") = %08x', crc32c('123456789'))
t.check(tensorboard.crc32c('123456789') == 0xE3069283, 'crc32c("123456789") = %08x', tensorboard.crc32c('123456789'))
t.check(tensorboard.crc32c('') == 0, 'crc32c of nothing is 0')
for _, c in ipairs({0, 1, 0xE3069283, 0xFFFFFFFF, 0x80000000}) do
   t.check(unmask(tensorboard.mask(c)) == c, 'mask round trip of %08x', c)
end
do -- a longer string, every byte value: table version against bitwise version
   local all = {}
   for b = 0, 255 do all[#all + 1] = string.char(b, 255 - b) end
   local s = table.concat(all)
   t.check(tensorboard.crc32c(s) == crc32c(s), 'crc32c over all byte values differs from the bitwise reference')
end

-- log a run ---------------------------------------------------------------------
local run = tmp .. '/run'
local logged = {}
local m = assert(metrics.open(run, {rank = 0}))
local t0 = 1.7e9 + 0.25
for step = 0, 40 do
   local s = {loss = 4 * math.exp(-step / 15) + 0.01 * math.sin(step), lr = step < 5 and 1e-3 * (step + 1) / 5 or 1e-3 * (1 - step / 50),
              tokens_per_s = 40000 + 500 * math.cos(step), grad_norm = 1 / (step + 1)}
   if step % 10 == 0 and step > 0 then s = {val_loss = 4 * math.exp(-step / 15) + 0.2} end
   if step == 7 then s.skipped = true end -- not a number: JSON only
   local wall = t0 + step * 0.5
   t.check(m:log(step, s, wall) == true, 'log step %d', step)
   logged[#logged + 1] = {step = step, wall_time = wall, scalars = s}
end
local tb_path = m:paths().tensorboard
m:close()
t.raises(function() m:log(1, {loss = 1}) end, {'closed'}, 'log after close')
t.raises(function() m:log('x', {loss = 1}) end, {'integer step'}, 'a step that is not a number')
t.raises(function() m:log(1, {step = 2}) end, {'step and wall_time'}, 'a different step among the metrics')
t.raises(function() m:log(1, {wall_time = 2}) end, {'step and wall_time'}, 'a wall_time among the metrics')

-- other ranks write nothing
local quiet = metrics.open(tmp .. '/rank1', {rank = 1})
t.check(quiet:log(3, {loss = 1}) == true, 'a rank other than 0 logs as a no-op')
quiet:close()
t.check(not fs.exists(tmp .. '/rank1'), 'rank 1 created its run directory')

-- (a) the event file holds exactly the logged scalars, in order
local names = fs.list(run .. '/tb')
t.check(#names == 1 and names[1]:match('^events%.out%.tfevents%.%d+%.') ~= nil, 'tb/ holds %s', table.concat(names, ' '))
t.check(tb_path == run .. '/tb/' .. names[1], 'paths() names %s', tostring(tb_path))
local bytes = assert(fs.read(tb_path))
local events, err = read_events(bytes)
t.check(events ~= nil, 'reading the event file: %s', tostring(err))
events = events or {}
t.check(#events == #logged + 1, '%d events for %d logged steps (+1 version event)', #events, #logged)
t.check(events[1] and events[1].file_version == 'brain.Event:2', 'the first event names the file version')
t.check(events[1] and type(events[1].wall_time) == 'number' and math.abs(events[1].wall_time - os.time()) < 3600,
        'the version event has a current wall time')
for i, want in ipairs(logged) do
   local ev = events[i + 1] or {values = {}}
   t.check(ev.step == want.step, 'event %d: step %s, want %d', i, tostring(ev.step), want.step)
   t.check(ev.wall_time == want.wall_time, 'event %d: wall time %s, want %s', i, tostring(ev.wall_time), want.wall_time)
   local tags = {}
   for k, v in pairs(want.scalars) do if type(v) == 'number' then tags[#tags + 1] = k end end
   table.sort(tags)
   t.check(#ev.values == #tags, 'step %d: %d values, want %d', want.step, #ev.values, #tags)
   for j, tag in ipairs(tags) do
      local v = ev.values[j] or {}
      t.check(v.tag == tag, 'step %d value %d: tag %s, want %s', want.step, j, tostring(v.tag), tag)
      local f = tonumber(ffi.new('float', want.scalars[tag]))
      t.check(v.simple_value == f, 'step %d %s: %s, want %s (as float)', want.step, tag, tostring(v.simple_value), f)
   end
end

-- (b) the JSON lines match
local lines = {}
for line in io.lines(run .. '/metrics.jsonl') do lines[#lines + 1] = json.decode(line) end
t.check(#lines == #logged, '%d JSON lines for %d logged steps', #lines, #logged)
for i, want in ipairs(logged) do
   local got = lines[i] or {}
   t.check(got.step == want.step and got.wall_time == want.wall_time, 'line %d: step %s wall %s', i, tostring(got.step), tostring(got.wall_time))
   local n = 0
   for k, v in pairs(want.scalars) do
      n = n + 1
      t.check(got[k] == v, 'line %d: %s = %s, want %s', i, k, tostring(got[k]), tostring(v))
   end
   local m_keys = 0
   for _ in pairs(got) do m_keys = m_keys + 1 end
   t.check(m_keys == n + 2, 'line %d: %d keys, want %d', i, m_keys, n + 2)
end

-- a second open appends to the JSONL and starts a new event file
do
   local m2 = assert(metrics.open(run, {rank = 0}))
   m2:log(41, {step = 41, loss = 0.5}) -- the same step among the metrics is fine
   local second = m2:paths().tensorboard
   m2:close()
   local count, last = 0, nil
   for line in io.lines(run .. '/metrics.jsonl') do count, last = count + 1, json.decode(line) end
   t.check(count == #logged + 1 and last.step == 41 and last.loss == 0.5, 'reopening appends: %d lines', count)
   local evs = read_events(fs.read(second) or '') or {}
   t.check(second ~= tb_path and #evs == 2 and evs[2].step == 41 and #evs[2].values == 1 and evs[2].values[1].tag == 'loss',
           'the second event file %s holds the version event and step 41 (loss only)', tostring(second))
end

-- (c) fsdp-lua plot
do
   local status, out = t.sh(bin .. ' plot ' .. run)
   t.check(status == 0, 'plot failed (%d): %s', status, out)
   local svg = fs.read(run .. '/plot.svg') or ''
   t.check(#svg > 1000, 'plot.svg has %d bytes', #svg)
   t.check(svg:match('^<svg[ >]') ~= nil, 'plot.svg does not start with <svg')
   t.check(svg:match('</svg>%s*$') ~= nil, 'plot.svg does not end with </svg>')
   for _, key in ipairs({'loss', 'val_loss', 'lr', 'tokens_per_s'}) do
      t.check(svg:find('<polyline[^>]*data%-key="' .. key .. '"') ~= nil, 'no polyline for %s', key)
   end
   for _, label in ipairs({'training loss', 'validation loss', 'learning rate', 'tokens/s', '>step<'}) do
      t.check(svg:find(label, 1, true) ~= nil, 'plot.svg lacks the label %q', label)
   end
   local opened, closed = select(2, svg:gsub('<g[ >]', '')), select(2, svg:gsub('</g>', ''))
   t.check(opened == closed and opened > 0, '%d <g> opened, %d closed', opened, closed)

   status, out = t.sh(bin .. ' plot ' .. run .. ' --out ' .. tmp .. '/other.svg')
   t.check(status == 0 and fs.exists(tmp .. '/other.svg'), '--out: %s', out)
end

-- plot errors name what is missing
do
   local status, out = t.sh(bin .. ' plot ' .. tmp .. '/nowhere')
   t.check(status == 1 and out:find(tmp .. '/nowhere does not exist', 1, true), 'missing run dir (%d): %s', status, out)
   fs.mkdirs(tmp .. '/bare')
   status, out = t.sh(bin .. ' plot ' .. tmp .. '/bare')
   t.check(status == 1 and out:find(tmp .. '/bare/metrics.jsonl does not exist', 1, true), 'no metrics file (%d): %s', status, out)
   io.open(tmp .. '/bare/metrics.jsonl', 'w'):close()
   status, out = t.sh(bin .. ' plot ' .. tmp .. '/bare')
   t.check(status == 1 and out:find(tmp .. '/bare/metrics.jsonl is empty', 1, true), 'empty metrics file (%d): %s', status, out)
   local f = io.open(tmp .. '/bare/metrics.jsonl', 'w')
   f:write('{"step": 1, "loss": 2}\n{"step": 2, "loss": \n{"step": 3, "loss": 1}\n')
   f:close()
   status, out = t.sh(bin .. ' plot ' .. tmp .. '/bare')
   t.check(status == 1 and out:find(tmp .. '/bare/metrics.jsonl line 2', 1, true), 'a malformed line (%d): %s', status, out)
   status, out = t.sh(bin .. ' plot')
   t.check(status == 1 and out:find('usage: fsdp-lua plot', 1, true), 'no run dir (%d): %s', status, out)
   status, out = t.sh(bin .. ' --help')
   t.check(out:find('fsdp-lua plot RUN_DIR', 1, true) ~= nil, '--help lacks plot: %s', out)
end

-- (d) the reader catches one corrupted byte, in the data and in a length
do
   local first_len = le(bytes, 1, 8)
   local at = 16 + first_len + 12 + 5 -- inside the second record's data
   local flipped = bytes:sub(1, at - 1) .. string.char(bit.bxor(bytes:byte(at), 0x40)) .. bytes:sub(at + 1)
   local ev, e = read_events(flipped)
   t.check(ev == nil and e and e:find('data crc mismatch', 1, true), 'a flipped data byte went unnoticed: %s', tostring(e))
   flipped = string.char(bit.bxor(bytes:byte(1), 1)) .. bytes:sub(2)
   ev, e = read_events(flipped)
   t.check(ev == nil and e and e:find('length crc mismatch', 1, true), 'a flipped length byte went unnoticed: %s', tostring(e))
   ev, e = read_events(bytes:sub(1, -2))
   t.check(ev == nil and e and e:find('truncated', 1, true), 'a truncated file went unnoticed: %s', tostring(e))
end

os.execute('rm -rf ' .. fs.quote(tmp))
return t.done()
