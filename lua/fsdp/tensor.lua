-- fsdp.tensor: the Lua Tensor over the C core's fsdp_tensor.
--
-- Ownership. A Tensor made by the user (fsdp.zeros, fsdp.empty, ...) lives
-- until t:free() or until the Lua GC collects it. A Tensor made by an op
-- during a step is a *temporary*: it belongs to the step and is freed when
-- the step ends (autograd.backward, or fsdp.end_step()), so activations go
-- back to the caching pool every step instead of waiting for the GC. Call
-- t:keep() to take a temporary out of the step. Touching a freed tensor is an
-- error that says so, never a crash.
--
-- Devices. t.device is -1 for host memory and N for cuda:N (once the CUDA
-- backend is loaded, fsdp.device). empty/zeros/full take the device last;
-- op results live where their inputs do. t:ptr() of a cuda tensor is a
-- device address: host code must not read it; get/set/item/totable/sumsq
-- go through a copy, t:to_device(d) / t:cpu() move data.
local bind = require 'fsdp.ffi'
local ffi, C, check = bind.ffi, bind.C, bind.check

local M = {}

local Tensor = {}
Tensor.__index = Tensor
M.Tensor = Tensor

-- dtype codes and names come from the C core (fsdp.h's enum, fsdp_dtype_name)
local DTYPES, DTYPE_NAMES, dtype_list = {}, {}, {}
for code = 0, C.FSDP_NUM_DTYPES - 1 do
   local name = ffi.string(C.fsdp_dtype_name(code))
   DTYPES[name], DTYPE_NAMES[code] = code, name
   dtype_list[#dtype_list + 1] = name
end
dtype_list = table.concat(dtype_list, ', ')
local HOST = C.FSDP_CPU -- device code of host memory
local PTR_TYPES = {f32 = 'float*', bf16 = 'uint16_t*', f16 = 'uint16_t*', i32 = 'int32_t*',
                   i64 = 'int64_t*', u16 = 'uint16_t*', u8 = 'uint8_t*'}
M.DTYPES, M.DTYPE_NAMES = DTYPES, DTYPE_NAMES

local shape_buf = ffi.new('int64_t[8]')
local stride_buf = ffi.new('int64_t[8]')

local function dtype_code(dtype)
   local code = DTYPES[dtype or 'f32']
   if not code then
      error(string.format("unknown dtype '%s' (expected one of %s)", tostring(dtype), dtype_list), 3)
   end
   return code
end

local function fill_shape(shape)
   if type(shape) ~= 'table' then error('shape must be a table of sizes, got ' .. type(shape), 3) end
   if #shape > 8 then error('at most 8 dimensions, got ' .. #shape, 3) end
   for i, n in ipairs(shape) do
      if type(n) ~= 'number' or n < 0 or n ~= math.floor(n) then
         error(string.format('shape[%d] = %s is not a non-negative integer', i, tostring(n)), 3)
      end
      shape_buf[i - 1] = n
   end
   return #shape
end

-- the step's temporaries
local temporaries = {}
local n_temporaries = 0

-- wraps an owned fsdp_tensor* in a Tensor
local function wrap(cptr, temporary)
   if cptr == nil then error(bind.last_error(), 3) end
   local c = ffi.gc(cptr, C.fsdp_tensor_free)
   local nd = cptr.ndim
   local shape = {}
   for i = 1, nd do shape[i] = tonumber(cptr.shape[i - 1]) end
   local t = setmetatable({_c = c, shape = shape, dtype = DTYPE_NAMES[cptr.dtype], device = cptr.device},
                          Tensor)
   if temporary then M.adopt(t) end
   return t
end
M.wrap = wrap

-- device: -1 (default) for the host, N for cuda:N
function M.empty(shape, dtype, temporary, device)
   local nd = fill_shape(shape)
   return wrap(C.fsdp_tensor_new(dtype_code(dtype), device or HOST, nd, shape_buf), temporary)
end

function M.zeros(shape, dtype, temporary, device)
   local nd = fill_shape(shape)
   return wrap(C.fsdp_tensor_zeros(dtype_code(dtype), device or HOST, nd, shape_buf), temporary)
end

function M.full(shape, value, dtype, device)
   local t = M.empty(shape, dtype, nil, device)
   t:fill(value)
   return t
end

-- a zero-filled host tensor in page-locked memory (CPU offload on a GPU:
-- copies to and from the device run at full speed); needs the CUDA backend
function M.pinned(shape, dtype)
   local nd = fill_shape(shape)
   return wrap(C.fsdp_tensor_new_pinned(dtype_code(dtype), nd, shape_buf))
end

-- 'cpu' or 'cuda:N'
function M.device_name(device)
   return (device or HOST) < 0 and 'cpu' or ('cuda:' .. device)
end

-- a tensor from a (nested or flat) Lua table of numbers
function M.from_table(values, shape, dtype)
   local flat = {}
   local function walk(v)
      if type(v) == 'table' then for _, x in ipairs(v) do walk(x) end
      else flat[#flat + 1] = v end
   end
   walk(values)
   shape = shape or {#flat}
   local t = M.empty(shape, dtype)
   if t:numel() ~= #flat then
      error(string.format('from_table: %d values for a shape of %d elements', #flat, t:numel()), 2)
   end
   for i = 1, #flat do t:set_flat(i - 1, flat[i]) end
   return t
end

-- memory-mapped read-only tensor over a file range
function M.mmap(path, byte_offset, dtype, shape)
   local nd = fill_shape(shape)
   return wrap(C.fsdp_tensor_mmap(path, byte_offset, dtype_code(dtype), nd, shape_buf))
end

-- makes t a temporary of the step (freed at its end); returns t
function M.adopt(t)
   if not t._temp then
      n_temporaries = n_temporaries + 1
      temporaries[n_temporaries] = t
      t._temp = n_temporaries
   end
   return t
end

-- frees every temporary of the step (except those :keep() took out)
function M.end_step()
   for i = 1, n_temporaries do
      local t = temporaries[i]
      if t then t:free() end
      temporaries[i] = nil
   end
   n_temporaries = 0
end

function M.n_temporaries() return n_temporaries end

-- position in the temporaries list, for release_since
function M.temp_mark() return n_temporaries end

-- frees the temporaries made after mark, except `keep`, which stays a
-- temporary of the step
function M.release_since(mark, keep)
   for i = mark + 1, n_temporaries do
      local t = temporaries[i]
      if t and t ~= keep then t:free() end
      temporaries[i] = nil
   end
   n_temporaries = mark
   if keep and keep._temp and keep._temp > mark then
      n_temporaries = mark + 1
      temporaries[n_temporaries] = keep
      keep._temp = n_temporaries
   end
end

---------------------------------------------------------------------------
-- Tensor methods

local function live(t)
   local c = t._c
   if c == nil then
      error('tensor ' .. (t.name and ("'" .. t.name .. "' ") or '') ..
            'was freed' .. (t._freed_by and (' (' .. t._freed_by .. ')') or '') ..
            '; op results live until the end of the step unless :keep() is called', 3)
   end
   return c
end

function Tensor:cdata() return live(self) end
function Tensor:is_freed() return self._c == nil end

-- typed pointer to the first element
function Tensor:ptr()
   return ffi.cast(PTR_TYPES[self.dtype], live(self).data)
end

function Tensor:numel() return tonumber(live(self).numel) end
function Tensor:dim() return #self.shape end
function Tensor:size(d)
   if d == nil then return self.shape end
   if d < 0 then d = #self.shape + 1 + d end
   return self.shape[d]
end
function Tensor:nbytes() return tonumber(C.fsdp_tensor_nbytes(live(self))) end
function Tensor:is_contiguous() return C.fsdp_tensor_is_contiguous(live(self)) == 1 end

function Tensor:free()
   local c = self._c
   if c ~= nil then
      ffi.gc(c, nil)
      C.fsdp_tensor_free(c)
      self._c = nil
   end
   if self._temp then
      temporaries[self._temp] = false
      self._temp = nil
   end
end

-- takes a temporary out of the step so it survives end_step
function Tensor:keep()
   if self._temp then
      temporaries[self._temp] = false
      self._temp = nil
   end
   return self
end

local function shape_str(shape)
   return '[' .. table.concat(shape, ', ') .. ']'
end
M.shape_str = shape_str

-- view with a new shape (contiguous tensors), or an explicit strided view:
-- t:view(shape [, strides, offset_elems]); -1 in shape is inferred
function Tensor:view(shape, strides, offset, temporary)
   local c = live(self)
   shape = {unpack(shape)}
   local infer, known = nil, 1
   for i, n in ipairs(shape) do
      if n == -1 then
         if infer then error('view: only one dimension can be -1', 2) end
         infer = i
      else known = known * n end
   end
   if infer then
      if known == 0 or self:numel() % known ~= 0 then
         error(string.format('view: cannot infer -1 in %s for %d elements', shape_str(shape), self:numel()), 2)
      end
      shape[infer] = self:numel() / known
   end
   local nd = fill_shape(shape)
   local sp = nil
   if strides then
      for i = 1, nd do stride_buf[i - 1] = strides[i] end
      sp = stride_buf
   else
      if not self:is_contiguous() then error('view: tensor is not contiguous; give strides', 2) end
      local n = 1
      for i = 1, nd do n = n * shape[i] end
      if n ~= self:numel() and not offset then
         error(string.format('view: shape %s has %d elements but the tensor %s has %d',
                             shape_str(shape), n, shape_str(self.shape), self:numel()), 2)
      end
   end
   local v = wrap(C.fsdp_tensor_view(c, nd, shape_buf, sp, offset or 0), temporary)
   return v
end

-- 1-D view of n elements starting at element offset (of a contiguous tensor)
function Tensor:flat_view(offset, n, temporary)
   return self:view({n}, {1}, offset, temporary)
end

-- rows [first, first+count) along dimension 1 (0-based first)
function Tensor:narrow_rows(first, count)
   local shape = {unpack(self.shape)}
   local row = self:numel() / shape[1]
   shape[1] = count
   local strides = {}
   local s = 1
   for i = #shape, 1, -1 do strides[i] = s; s = s * shape[i] end
   return self:view(shape, strides, first * row)
end

function Tensor:copy(src)
   check(C.fsdp_tensor_copy(live(self), live(src)), 'copy')
   return self
end

function Tensor:fill(value)
   check(C.fsdp_tensor_fill(live(self), value), 'fill')
   return self
end

function Tensor:zero() return self:fill(0) end

-- a copy on the same device (or on `device`)
function Tensor:clone(dtype, device)
   local t = M.empty(self.shape, dtype or self.dtype, nil, device or self.device)
   return t:copy(self)
end

function Tensor:is_cuda() return self.device >= 0 end
function Tensor:is_pinned() return bit.band(live(self).flags, 2) ~= 0 end

-- a copy on device (-1: the host); self when it is there already
function Tensor:to_device(device)
   if device == self.device then return self end
   local src = self:is_contiguous() and self or self:clone()
   local t = M.empty(self.shape, self.dtype, nil, device)
   t:copy(src)
   if src ~= self then src:free() end
   return t
end

-- the host copy (self for a host tensor)
function Tensor:cpu() return self:to_device(HOST) end

function Tensor:to(dtype)
   if dtype == self.dtype then return self end
   return self:clone(dtype)
end

local function element_offset(t, i)
   -- i is a 0-based linear index into the logical shape
   local c = t._c
   local off = 0
   for d = #t.shape, 1, -1 do
      local n = t.shape[d]
      off = off + (i % n) * tonumber(c.strides[d - 1])
      i = math.floor(i / n)
   end
   return off
end

function Tensor:get_flat(i)
   local c = live(self)
   if i < 0 or i >= self:numel() then
      error(string.format('index %d out of range for %d elements', i, self:numel()), 2)
   end
   local off = self:is_contiguous() and i or element_offset(self, i)
   if self.device >= 0 then
      local one = self:view({1}, {1}, off)
      local h = one:cpu()
      local v = h:get_flat(0)
      h:free(); one:free()
      return v
   end
   local p = ffi.cast(PTR_TYPES[self.dtype], c.data)
   if self.dtype == 'bf16' or self.dtype == 'f16' then
      -- half types: convert through the C core's rounding-exact copy
      local src = self:view({1}, {1}, off)
      local tmp = M.empty({1}, 'f32'):copy(src)
      local v = tonumber(tmp:ptr()[0])
      tmp:free(); src:free()
      return v
   end
   return tonumber(p[off])
end

function Tensor:set_flat(i, v)
   local c = live(self)
   if i < 0 or i >= self:numel() then
      error(string.format('index %d out of range for %d elements', i, self:numel()), 2)
   end
   local off = self:is_contiguous() and i or element_offset(self, i)
   if self.device >= 0 then
      local h = M.full({1}, v, self.dtype)
      local one = self:view({1}, {1}, off)
      one:copy(h)
      h:free(); one:free()
      return
   end
   if self.dtype == 'bf16' or self.dtype == 'f16' then
      local one = M.full({1}, v, 'f32')
      local dst = self:view({1}, {1}, off)
      dst:copy(one)
      one:free(); dst:free()
      return
   end
   ffi.cast(PTR_TYPES[self.dtype], c.data)[off] = v
end

-- t:get(i, j, ...) with 1-based indices, like Torch7
function Tensor:get(...)
   local idx = {...}
   if #idx ~= #self.shape then
      error(string.format('get: %d indices for a %d-d tensor', #idx, #self.shape), 2)
   end
   local lin = 0
   for d = 1, #idx do
      if idx[d] < 1 or idx[d] > self.shape[d] then
         error(string.format('get: index %d of dimension %d is outside 1..%d', idx[d], d, self.shape[d]), 2)
      end
      lin = lin * self.shape[d] + (idx[d] - 1)
   end
   return self:get_flat(lin)
end

function Tensor:item()
   if self:numel() ~= 1 then
      error(string.format('item: tensor has %d elements, not 1', self:numel()), 2)
   end
   return self:get_flat(0)
end

-- flat Lua table of the values (small tensors)
function Tensor:totable()
   if self.device >= 0 then
      local h = self:cpu()
      local out = h:totable()
      h:free()
      return out
   end
   local out = {}
   for i = 0, self:numel() - 1 do out[i + 1] = self:get_flat(i) end
   return out
end

-- sum of squares over all elements (f32), in double
function Tensor:sumsq()
   local x = self:is_contiguous() and self or self:clone()
   local r = require('fsdp.kernels').sumsq(x)
   if x ~= self then x:free() end
   return r
end

function Tensor:__tostring()
   if self._c == nil then return 'Tensor(freed)' end
   local s = string.format('Tensor(%s, %s', shape_str(self.shape), self.dtype)
   if self.device >= 0 then s = s .. ', ' .. M.device_name(self.device) end
   if self:numel() <= 16 then
      local vals = {}
      for i, v in ipairs(self:totable()) do vals[i] = string.format('%.6g', v) end
      s = s .. ', {' .. table.concat(vals, ', ') .. '}'
   end
   return s .. ')'
end

function M.is_tensor(x) return getmetatable(x) == Tensor end

-- memory statistics of the host allocator (bytes), or of cuda:device's
local stats = ffi.new('fsdp_mem_stats')
function M.memory_stats(device)
   check(C.fsdp_mem_get_stats(device or HOST, stats), 'memory_stats')
   return {current = tonumber(stats.current), peak = tonumber(stats.peak),
           reserved = tonumber(stats.reserved), n_allocs = tonumber(stats.n_allocs),
           n_misses = tonumber(stats.n_misses)}
end
function M.reset_peak_memory(device) C.fsdp_mem_reset_peak(device or HOST) end
function M.empty_cache(device) C.fsdp_mem_empty_cache(device or HOST) end

return M
