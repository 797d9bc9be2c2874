-- fsdp.safetensors: reading and writing safetensors files from Lua, over
-- the C core's validating reader (mmap) and atomic writer.
local bind = require 'fsdp.ffi'
local T = require 'fsdp.tensor'
local ffi, C, check = bind.ffi, bind.C, bind.check

local M = {}

local File = {}
File.__index = File

-- opens and validates; raises an error naming the file and the problem
function M.open(path)
   local f = C.fsdp_st_open(path)
   if f == nil then error(bind.last_error(), 0) end
   local self = setmetatable({path = path, f = ffi.gc(f, C.fsdp_st_close)}, File)
   self.info = ffi.new('fsdp_st_info')
   return self
end

function File:names()
   local out = {}
   for i = 0, C.fsdp_st_count(self.f) - 1 do out[#out + 1] = ffi.string(C.fsdp_st_name(self.f, i)) end
   return out
end

function File:has(name) return C.fsdp_st_find(self.f, name) >= 0 end

-- {dtype = 'f32', shape = {...}, nbytes, index} or nil
function File:describe(name)
   local i = C.fsdp_st_find(self.f, name)
   if i < 0 then return nil end
   check(C.fsdp_st_get_info(self.f, i, self.info), self.path)
   local shape = {}
   for d = 1, self.info.ndim do shape[d] = tonumber(self.info.shape[d - 1]) end
   return {dtype = T.DTYPE_NAMES[self.info.dtype], shape = shape, nbytes = tonumber(self.info.nbytes), index = i,
           dtype_string = ffi.string(C.fsdp_st_dtype_string(self.f, i))}
end

-- pointer to the mapped bytes of a tensor
function File:data(name)
   local d = self:describe(name)
   if not d then error(string.format("%s: no tensor '%s'", self.path, name), 2) end
   return C.fsdp_st_data(self.f, d.index), d
end

-- a copy as a Tensor (in its stored dtype, or converted to `dtype`)
function File:tensor(name, dtype)
   local ptr, d = self:data(name)
   if not d.dtype then
      error(string.format("%s: tensor '%s' has dtype %s, which fsdp-lua does not handle", self.path, name, d.dtype_string), 2)
   end
   local t = T.empty(d.shape, d.dtype)
   ffi.copy(t:cdata().data, ptr, d.nbytes)
   if dtype and dtype ~= d.dtype then
      local c = t:clone(dtype)
      t:free()
      return c
   end
   return t
end

function File:metadata(key)
   local v = C.fsdp_st_metadata(self.f, key)
   if v == nil then return nil end
   return ffi.string(v)
end

function File:close()
   if self.f then C.fsdp_st_close(ffi.gc(self.f, nil)); self.f = nil end
end

-- writes {{name, tensor}, ...} (tensors contiguous) atomically
function M.write(path, list, metadata)
   local w = C.fsdp_st_writer_new()
   if w == nil then error(bind.last_error(), 0) end
   w = ffi.gc(w, C.fsdp_st_writer_free)
   local shape = ffi.new('int64_t[8]')
   local keep = {}
   for _, nt in ipairs(list) do
      local t = nt[2]
      if not t:is_contiguous() then t = t:clone(); keep[#keep + 1] = t end
      for i, d in ipairs(t.shape) do shape[i - 1] = d end
      check(C.fsdp_st_writer_add(w, nt[1], T.DTYPES[t.dtype], #t.shape, shape, t:cdata().data), path)
   end
   for k, v in pairs(metadata or {}) do check(C.fsdp_st_writer_set_metadata(w, k, tostring(v)), path) end
   check(C.fsdp_st_writer_save(w, path), path)
   for _, t in ipairs(keep) do t:free() end
end

return M
