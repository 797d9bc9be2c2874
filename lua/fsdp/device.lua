-- fsdp.device: chooses where the work runs (--device auto|cpu|cuda[:N]) and
-- loads the CUDA backend, build/libfsdp_cuda.so, when a GPU is wanted.
--
-- libfsdp never needs CUDA; the CUDA backend is a second library that links
-- it (so fsdp_last_error and the memory stats are shared) and is loaded here
-- only when asked for. Its functions are declared by the same generated cdefs
-- (the CUDA section of engine/include/fsdp.h), so nothing is hand-copied.
--
--   local device = require 'fsdp.device'
--   local dev = device.get(opts.device)       -- raises a clear error
--   local dev, err = device.select('auto')    -- nil, err on failure
--   dev.kind ('cpu' or 'cuda'), dev.index, dev.name, dev.cuda (the library
--   namespace, nil on cpu), dev.info (fsdp_cuda_device_info), dev.why (auto:
--   why it fell back to the CPU)
local fsdp_ffi = require 'fsdp.ffi'
local ffi = fsdp_ffi.ffi

local M = {}

local cuda_lib, cuda_err -- cached outcome of the first load

-- path of the CUDA backend: FSDP_CUDA_LIB, else <root>/build/libfsdp_cuda.so
function M.cuda_library_path()
   return os.getenv('FSDP_CUDA_LIB') or (fsdp_ffi.root .. '/build/libfsdp_cuda.so')
end

local function file_exists(path)
   local f = io.open(path, 'rb')
   if f then f:close() end
   return f ~= nil
end

-- the CUDA backend's namespace, or nil and why it cannot be had
function M.load_cuda()
   if cuda_lib or cuda_err then return cuda_lib, cuda_err end
   local path = M.cuda_library_path()
   if not file_exists(path) then
      cuda_err = path .. ' is missing: build the CUDA backend with `make cuda` (needs the CUDA toolkit)'
      return nil, cuda_err
   end
   local ok, lib = pcall(ffi.load, path)
   if not ok then
      cuda_err = 'cannot load ' .. path .. ': ' .. tostring(lib) ..
         ' (are the CUDA runtime, cuBLASLt, cuDNN and NCCL libraries installed?)'
      return nil, cuda_err
   end
   local expect, got = ffi.sizeof('fsdp_cuda_device_info'),
      tonumber(lib.fsdp_cuda_struct_size('fsdp_cuda_device_info'))
   if expect ~= got then
      cuda_err = string.format('%s: struct fsdp_cuda_device_info is %d bytes there but %d in the ' ..
                               'cdefs: rebuild (make cuda)', path, got, expect)
      return nil, cuda_err
   end
   cuda_lib = lib
   return cuda_lib
end

-- number of GPUs, or nil and the driver's reason
function M.cuda_device_count()
   local lib, err = M.load_cuda()
   if not lib then return nil, err end
   local n = ffi.new('int[1]')
   if lib.fsdp_cuda_device_count(n) ~= 0 then return nil, fsdp_ffi.last_error() end
   return n[0]
end

local function cpu_device(why)
   return {kind = 'cpu', index = -1, name = 'cpu', why = why}
end

-- parses 'auto', 'cpu', 'cuda', 'cuda:N'; returns a device table, or nil and
-- an error naming what was asked for and why it cannot be had
function M.select(want)
   want = want or 'auto'
   if want == 'cpu' then return cpu_device() end
   local kind, index = want:match('^(cuda):?(%d*)$')
   if want ~= 'auto' and not kind then
      return nil, string.format("--device %s: expected auto, cpu, cuda or cuda:N", want)
   end
   index = tonumber(index) or 0
   local n, err = M.cuda_device_count()
   if n and n <= index then
      err = n == 0 and 'no GPU is visible (CUDA_VISIBLE_DEVICES?)'
         or string.format('cuda:%d asked for, but only %d GPU(s) are visible', index, n)
   end
   if err then
      if want == 'auto' then return cpu_device(err) end
      return nil, '--device ' .. want .. ': ' .. err
   end
   local lib = cuda_lib
   if lib.fsdp_cuda_set_device(index) ~= 0 then
      local e = fsdp_ffi.last_error()
      if want == 'auto' then return cpu_device(e) end
      return nil, '--device ' .. want .. ': ' .. e
   end
   local info = ffi.new('fsdp_cuda_device_info')
   if lib.fsdp_cuda_get_device_info(index, info) ~= 0 then
      return nil, '--device ' .. want .. ': ' .. fsdp_ffi.last_error()
   end
   return {kind = 'cuda', index = index, name = ffi.string(info.name), cuda = lib, info = info}
end

-- like select, but raises the error (for the command line)
function M.get(want)
   local dev, err = M.select(want)
   if not dev then error('fsdp.device: ' .. err, 0) end
   return dev
end

-- one line for logs: "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, 132 SMs)" or
-- "cpu (no GPU: <reason>)" when auto fell back
function M.describe(dev)
   if dev.kind == 'cpu' then return dev.why and ('cpu (no GPU: ' .. dev.why .. ')') or 'cpu' end
   return string.format('cuda:%d (%s, sm_%d%d, %d SMs)', dev.index, dev.name, dev.info.major,
                        dev.info.minor, dev.info.sm_count)
end

return M
