-- What libfsdp exports (it is built with -fvisibility=hidden): every
-- function engine/include/fsdp.h declares (the cdefs Lua reads) is exported
-- by build/libfsdp.so or, for the CUDA section, by the CUDA library; the
-- only other exports are the backend interface that libfsdp_cuda links
-- against (the `visibility push(default)` regions of engine/comm_ops.h and
-- engine/internal.h); every export is fsdp_-prefixed; and every fsdp_
-- symbol the CUDA libraries need from libfsdp is exported. Read with nm.
local fsdp = require 'fsdp'
local t = require 'tests.lua.harness'

local root = fsdp.root

local function read(path)
   local f = assert(io.open(path, 'rb'), 'cannot open ' .. path)
   local s = f:read('*a')
   f:close()
   return s
end

local function exists(path)
   local f = io.open(path, 'rb')
   if f then f:close() end
   return f ~= nil
end

-- symbols of a shared library: nm -D, defined (T/W/...) or undefined (U)
local function symbols(path, undefined)
   local p = io.popen('nm -D ' .. (undefined and '--undefined-only ' or '--defined-only ') .. path .. ' 2>&1')
   local out = {}
   local n = 0
   for line in p:lines() do
      local name = line:match('%s(%S+)$')
      if name and not name:match('^_') then out[name] = true; n = n + 1 end
   end
   p:close()
   return out, n
end

-- names of functions declared in C text: "name(" after a type
local function declared(text)
   local out = {}
   text = text:gsub('/%*.-%*/', ''):gsub('//[^\n]*', '')
   for name in text:gmatch('[%s%*](fsdp_[%w_]+)%s*%(') do out[name] = true end
   return out
end

-- the declarations inside the visibility push(default) regions of a header
local function exported_regions(path)
   local text = read(path)
   local out = {}
   for region in text:gmatch('#pragma GCC visibility push%(default%)(.-)#pragma GCC visibility pop') do
      for k in pairs(declared(region)) do out[k] = true end
   end
   return out
end

local public = declared(read(root .. '/build/fsdp_cdef.h'))
local backend = {}
for _, h in ipairs({'engine/comm_ops.h', 'engine/internal.h'}) do
   for k in pairs(exported_regions(root .. '/' .. h)) do backend[k] = true end
end
local n_public, n_backend = 0, 0
for _ in pairs(public) do n_public = n_public + 1 end
for _ in pairs(backend) do n_backend = n_backend + 1 end
t.check(n_public > 150, 'only %d functions found in build/fsdp_cdef.h', n_public)
t.check(backend.fsdp_error and backend.fsdp_comm_ext_new and backend.fsdp_set_device_ops,
        'the backend interface (fsdp_error, fsdp_comm_ext_new, fsdp_set_device_ops) was not found in the headers')

local lib = root .. '/build/libfsdp.so'
local exported, n_exported = symbols(lib)
t.check(n_exported > 100, 'nm found only %d symbols in %s', n_exported, lib)

-- nothing but fsdp.h and the backend interface
for name in pairs(exported) do
   t.check(name:match('^fsdp_'), '%s exports %s, which lacks the fsdp_ prefix', lib, name)
   t.check(public[name] or backend[name], '%s exports %s, which is neither in fsdp.h nor in the backend interface',
           lib, name)
end
-- internals stay hidden (names that exist in the objects)
for _, name in ipairs({'fsdp_mem_alloc', 'fsdp_tcp_listen', 'fsdp_reduce_combine', 'fsdp_comm_mpi_world',
                       'fsdp_comm_self_new'}) do
   t.check(not exported[name], '%s exports the internal %s', lib, name)
end
-- the backend interface is there for libfsdp_cuda
for name in pairs(backend) do t.check(exported[name], '%s does not export %s (backend interface)', lib, name) end

-- every function of fsdp.h is exported by libfsdp or by a CUDA library
local cuda_libs = {}
for _, name in ipairs({'libfsdp_cuda_emu.so', 'libfsdp_cuda.so'}) do
   local path = root .. '/build/' .. name
   if exists(path) then cuda_libs[#cuda_libs + 1] = path end
end
t.check(#cuda_libs > 0, 'no CUDA library in build/ (make all builds libfsdp_cuda_emu.so)')
local cuda_exported = {}
for _, path in ipairs(cuda_libs) do
   for name in pairs(symbols(path)) do cuda_exported[name] = true end
end
for name in pairs(public) do
   t.check(exported[name] or cuda_exported[name], 'fsdp.h declares %s, but no library exports it', name)
end

-- what the CUDA libraries take from libfsdp is exported
for _, path in ipairs(cuda_libs) do
   for name in pairs(symbols(path, true)) do
      if name:match('^fsdp_') and not cuda_exported[name] then
         t.check(exported[name], '%s needs %s, which %s does not export', path, name, lib)
      end
   end
end

print(string.format('%d exports: %d functions of fsdp.h, %d of the backend interface', n_exported, n_public,
                    n_backend))
return t.done()
