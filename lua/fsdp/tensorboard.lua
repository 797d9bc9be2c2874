-- fsdp.tensorboard: TensorBoard event files (scalars), written without
-- TensorFlow or Python.
--
-- An event file is a sequence of records:
--   uint64 length (little endian)
--   uint32 masked CRC-32C of the 8 length bytes
--   bytes  data[length]           a serialized tensorflow.Event
--   uint32 masked CRC-32C of the data
-- where masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32).
-- The first record holds Event{wall_time, file_version = "brain.Event:2"};
-- each later one holds Event{wall_time = 1, step = 2, summary = 5} with
-- Summary{repeated value = 1} and Value{tag = 1, simple_value = 2 (float)}.
--
--   local w = tensorboard.open('run/tb')
--   w:add_scalars(100, {loss = 2.31, lr = 3e-4})   -- one Event, flushed
--   w:close()
local ffi = require 'ffi'
local bit = require 'bit'
local fs = require 'fsdp.fs'
local band, bor, bxor, bnot, rshift, ror = bit.band, bit.bor, bit.bxor, bit.bnot, bit.rshift, bit.ror

pcall(ffi.cdef, 'int truncate(const char *path, long length);')
pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_usec; } fsdp_tb_timeval;
int gettimeofday(fsdp_tb_timeval *tv, void *tz);
int gethostname(char *name, size_t len);
]])

local M = {}

local TWO32 = 4294967296

-- CRC-32C (Castagnoli): reflected polynomial 0x82F63B78, one table lookup
-- per byte
local crc_table = {}
for i = 0, 255 do
   local c = i
   for _ = 1, 8 do
      if band(c, 1) ~= 0 then c = bxor(rshift(c, 1), 0x82F63B78) else c = rshift(c, 1) end
   end
   crc_table[i] = c
end

-- crc32c(s) -> the CRC as a number in [0, 2^32); pass a previous result as
-- `crc` to continue over more bytes
function M.crc32c(s, crc)
   local c = bnot(crc or 0)
   for i = 1, #s do
      c = bxor(crc_table[band(bxor(c, s:byte(i)), 0xff)], rshift(c, 8))
   end
   return bnot(c) % TWO32
end

-- the masked form stored in the file (a CRC of data that holds CRCs is weak)
function M.mask(crc)
   return (ror(crc, 15) % TWO32 + 0xa282ead8) % TWO32
end

local function u32le(x)
   return string.char(x % 256, math.floor(x / 256) % 256, math.floor(x / 65536) % 256, math.floor(x / 16777216) % 256)
end

local function u64le(x)
   return u32le(x % TWO32) .. u32le(math.floor(x / TWO32))
end

-- one record: framing and both masked CRCs around the data
function M.record(data)
   local len = u64le(#data)
   return len .. u32le(M.mask(M.crc32c(len))) .. data .. u32le(M.mask(M.crc32c(data)))
end

-- protobuf wire format: tag = field << 3 | wire type (0 varint, 1 fixed64,
-- 2 length-delimited, 5 fixed32)
local little = ffi.abi('le')
local f64, f32 = ffi.new('double[1]'), ffi.new('float[1]')

local function varint(v)
   local out = {}
   if v >= 0 and v < 2^53 then
      while v >= 128 do
         out[#out + 1] = string.char(v % 128 + 128)
         v = math.floor(v / 128)
      end
      out[#out + 1] = string.char(v)
   else -- negative int64 (ten bytes, two's complement) or beyond 2^53
      local u = ffi.cast('uint64_t', ffi.new('int64_t', v))
      while u >= 128 do
         out[#out + 1] = string.char(tonumber(u % 128) + 128)
         u = u / 128
      end
      out[#out + 1] = string.char(tonumber(u))
   end
   return table.concat(out)
end

local function key(field, wire) return varint(field * 8 + wire) end

local function bytes_le(buf, n)
   local s = ffi.string(buf, n)
   return little and s or s:reverse()
end

local function pb_double(field, v)
   f64[0] = v
   return key(field, 1) .. bytes_le(f64, 8)
end

local function pb_float(field, v)
   f32[0] = v
   return key(field, 5) .. bytes_le(f32, 4)
end

local function pb_bytes(field, s) return key(field, 2) .. varint(#s) .. s end

local function pb_int(field, v)
   if v == 0 then return '' end -- proto3 leaves defaults out
   return key(field, 0) .. varint(v)
end

-- Event{wall_time, file_version}
function M.encode_version_event(wall_time, version)
   return pb_double(1, wall_time) .. pb_bytes(3, version or 'brain.Event:2')
end

-- Event{wall_time, step, summary{value{tag, simple_value}...}}; `values` is
-- a list of {tag, number}, written in that order
function M.encode_scalar_event(wall_time, step, values)
   local summary = {}
   for i, tv in ipairs(values) do
      summary[i] = pb_bytes(1, pb_bytes(1, tv[1]) .. pb_float(2, tv[2]))
   end
   return pb_double(1, wall_time) .. pb_int(2, step) .. pb_bytes(5, table.concat(summary))
end

-- seconds since the epoch, with microseconds
local tv = ffi.new('fsdp_tb_timeval')
function M.wall_time()
   local ok, rc = pcall(function() return ffi.C.gettimeofday(tv, nil) end)
   if ok and rc == 0 then return tonumber(tv.tv_sec) + tonumber(tv.tv_usec) * 1e-6 end
   return os.time()
end

function M.hostname()
   local buf = ffi.new('char[256]')
   local ok, rc = pcall(function() return ffi.C.gethostname(buf, 255) end)
   local name = (ok and rc == 0) and ffi.string(buf) or os.getenv('HOSTNAME') or 'localhost'
   return (name:gsub('[^%w%.%-_]', '_'))
end

local Writer = {}
Writer.__index = Writer
M.Writer = Writer

-- tensorboard.open(dir [, {wall_time = t, pid = n}]) -> a writer of a new
-- file dir/events.out.tfevents.<unix time>.<hostname>.<pid> (.1, .2, ...
-- when that name is taken), or nil, err. The directory must exist.
function M.open(dir, opts)
   opts = opts or {}
   local t = opts.wall_time or M.wall_time()
   local base = string.format('%s/events.out.tfevents.%d.%s.%d', dir, math.floor(t), M.hostname(), opts.pid or fs.pid())
   local path, k = base, 0
   while fs.exists(path) do -- a second writer within the same second
      k = k + 1
      path = base .. '.' .. k
   end
   local f, err = io.open(path, 'wb')
   if not f then return nil, 'tensorboard: cannot create ' .. path .. ': ' .. tostring(err) end
   local w = setmetatable({path = path, file = f, good = 0}, Writer)
   local ok, werr = w:write_event(M.encode_version_event(t))
   if not ok then return nil, werr end
   return w
end

-- one record, flushed; on a failed write the file is cut back to its last
-- whole record (self.note says how that went) and nil, err is returned
function Writer:write_event(data)
   if not self.file then error('tensorboard: ' .. self.path .. ' is closed', 2) end
   local record = M.record(data)
   local ok, err = self.file:write(record)
   if ok then ok, err = self.file:flush() end
   -- stdio may miss a refused write (an EFBIG under a file size limit): the
   -- position must show the whole record
   if ok and self.file:seek('cur') ~= (self.good or 0) + #record then
      ok, err = nil, 'the write was cut short'
   end
   if not ok then
      pcall(self.file.close, self.file)
      self.file = nil
      if ffi.C.truncate(self.path, self.good or 0) == 0 then
         self.note = string.format('the record it was writing is cut off (%d bytes of whole records kept)', self.good or 0)
      else
         self.note = 'its last record may be cut short'
      end
      return nil, 'tensorboard: writing ' .. self.path .. ': ' .. tostring(err)
   end
   self.good = (self.good or 0) + #record
   return true
end

-- one step's scalars as one Event, flushed. `scalars` is {tag = number}
-- (written in tag order) or a list of {tag, number}; non-numbers are skipped.
function Writer:add_scalars(step, scalars, wall_time)
   if type(step) ~= 'number' or step ~= math.floor(step) then
      error('tensorboard: add_scalars wants an integer step, got ' .. tostring(step), 2)
   end
   if type(scalars) ~= 'table' then error('tensorboard: add_scalars wants a table of scalars', 2) end
   local values = {}
   if #scalars > 0 then
      for _, tv in ipairs(scalars) do
         if type(tv[2]) == 'number' then values[#values + 1] = {tostring(tv[1]), tv[2]} end
      end
   else
      local tags = {}
      for k, v in pairs(scalars) do
         if type(v) == 'number' then tags[#tags + 1] = tostring(k) end
      end
      table.sort(tags)
      for i, k in ipairs(tags) do values[i] = {k, scalars[k]} end
   end
   if #values == 0 then return true end
   return self:write_event(M.encode_scalar_event(wall_time or M.wall_time(), step, values))
end

function Writer:add_scalar(tag, value, step, wall_time)
   return self:add_scalars(step, {{tag, value}}, wall_time)
end

function Writer:close()
   if self.file then self.file:close(); self.file = nil end
end

return M
